"""Fault 9 (issue 11, "beyond one machine"): the stations on a commune's own mosquitto, bridged to
the hub's (deploy/mosquitto_conf.py `render_bridge`). Bundles, audio, commands and reports
cross the bridge; the bridge is cut (a TCP proxy between the two brokers) while the stations
play and report and the hub changes the programme and gives a command; once it is restored
everything arrives, exactly once."""
from __future__ import annotations

import time
from collections import Counter
from datetime import datetime, timedelta

import pytest

from conftest import wait_for
from deploy.broker import Mosquitto
from deploy.mosquitto_conf import render_bridge
from fleet import Fleet
from hub.admin import announce
from netproxy import LinkProxy
from schedules import TZ, Priority

T0 = datetime(2030, 6, 3, 7, 0, tzinfo=TZ)
IDS = ["xa-a", "xa-b"]
EVERY_MIN = 10


@pytest.fixture
def bridged(tmp_path, mosquitto):
    """The hub on ``mosquitto``; the stations on an edge broker bridged to it through a
    proxy the test can cut."""
    proxy = LinkProxy(mosquitto.port)
    edge = Mosquitto(tmp_path / "edge", extra=render_bridge(
        "xa", "127.0.0.1", proxy.port, restart_s=(1, 2))).start()
    fleet = Fleet(tmp_path, mosquitto, IDS, start=T0 - timedelta(minutes=5))
    for sid in IDS:
        fleet.route(sid, edge.port)
    yield fleet, proxy, edge
    fleet.stop()
    edge.stop()
    proxy.close()


def plays_at_hub(fleet, sid: str) -> list[str]:
    return [r["occurrence"] for r in fleet.playbacks(sid)]


def test_bridge_cut_and_restored_loses_and_duplicates_nothing(bridged, figures):
    fleet, proxy, edge = bridged
    news = fleet.content("Bản tin sáng của xã.")
    announce(fleet.store, content=news, when=T0, priority=Priority.THONG_THUONG, target="all",
             every=f"FREQ=MINUTELY;INTERVAL={EVERY_MIN}", now=fleet.clock.now())
    fleet.start()
    fleet.wait_online()
    fleet.wait_active(1)  # bundle and audio came across the bridge
    fleet.pass_time(T0)
    for sid in IDS:
        wait_for(lambda: len(plays_at_hub(fleet, sid)) == 1, 30, f"{sid}'s first play at the hub")

    proxy.cut()
    # the stations play on and report into their own broker; the hub's side changes
    fleet.pass_time(T0 + timedelta(minutes=EVERY_MIN))
    for sid in IDS:
        wait_for(lambda: fleet.station_db(sid, "SELECT count(*) FROM plays")[0][0] == 2, 30,
                 f"{sid}'s second play during the cut")
    notice = fleet.content("Thông báo họp dân lúc 14 giờ.")
    fleet.schedule(notice, T0 + timedelta(hours=5))
    for sid in IDS:
        wait_for(lambda: (fleet.store.latest_bundle(sid) or {}).get("version") == 2, 30,
                 f"bundle 2 for {sid} signed at the hub")
    cid = fleet.give("volume", "all", {"level": 40}, ttl_s=600)
    wait_for(lambda: fleet.store.command(cid)["published_at"], 20, "the command published")
    assert all(len(plays_at_hub(fleet, sid)) == 1 for sid in IDS)  # nothing crossed
    assert all(fleet.status(sid).get("active_version") == 1 for sid in IDS)

    proxy.restore()
    t0 = time.monotonic()
    for sid in IDS:
        wait_for(lambda: fleet.status(sid).get("active_version") == 2
                 and fleet.status(sid).get("audio_missing") == 0, 60,
                 f"{sid} on bundle 2 with its audio after the bridge came back")
    wait_for(lambda: set(fleet.command_states(cid).values()) == {"done"}, 60,
             "the volume command done on both")
    assert all(fleet.status(sid).get("volume") == 40 for sid in IDS)
    for sid in IDS:
        wait_for(lambda: len(plays_at_hub(fleet, sid)) == 2, 60, f"{sid}'s plays at the hub")
        wait_for(lambda: fleet.station_db(sid, "SELECT count(*) FROM outbox")[0][0] == 0, 60,
                 f"{sid}'s outbox acknowledged across the bridge")
        occ = plays_at_hub(fleet, sid)
        assert sorted(occ) == sorted(r[0] for r in fleet.station_db(sid, "SELECT key FROM plays"))
        seqs = Counter(e["seq"] for e in fleet.store.q(
            "SELECT seq FROM events WHERE station_id = ?", [sid]))
        assert seqs and max(seqs.values()) == 1  # no event stored twice
    figures("F9 bridge restored to both stations converged and reported", time.monotonic() - t0,
            "s")
    # the bridge came back by itself: it is the edge broker that reconnects
    assert "Connecting bridge" in (edge.dir / "mosquitto.log").read_text()
