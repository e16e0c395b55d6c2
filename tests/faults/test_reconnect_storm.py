"""Fault 10 (issue 11, P2 at the scale of a test): a reconnect storm. Simulated stations, each
with a week of playback records queued in its outbox, all connect at once to a hub on a real
mosquitto; the broker is killed and restarted as the first reports are in flight. Every record reaches
the hub exactly once and every outbox empties (`make bench` runs it at 2,000 stations:
bench/reconnect_storm.py)."""
from __future__ import annotations

import threading
import time
from datetime import datetime, timedelta, timezone

from bench.reconnect_storm import _fill
from hub import config as hubconfig
from hub.admin import init_hub
from hub.link import HubLink
from hub.store import HubStore
from protocol.clock import SystemClock
from protocol.envelope import Signer
from protocol.topics import Topics
from station_agent.simfleet import SimFleet, enrol

N = 80


def test_reconnect_storm_with_a_broker_kill_loses_and_doubles_nothing(tmp_path, mosquitto,
                                                                      figures):
    home = tmp_path / "hub"
    init_hub(home, broker_host="127.0.0.1", broker_port=mosquitto.port)
    cfg = hubconfig.load(home)
    configs = enrol(home, N, tmp_path / "sim")
    queued = _fill(configs, datetime.now(timezone.utc) - timedelta(days=7))
    store = HubStore(cfg.db_path)
    hub = HubLink(store=HubStore(cfg.db_path), signer=Signer.load(cfg.key_path, "hub"),
                  topics=Topics(), broker=cfg.broker, clock=SystemClock())
    stop = threading.Event()
    threading.Thread(target=hub.run, args=(stop,), daemon=True).start()
    assert hub.link.wait_connected(10)
    fleet = SimFleet(configs, play_s=0.5)
    restarted = []
    try:
        fleet.start()
        t0 = time.monotonic()
        stored = lambda: store.q("SELECT count(*) AS n FROM playbacks")[0]["n"]  # noqa: E731
        killed_at = None
        while stored() < queued:
            assert time.monotonic() - t0 < 120, f"{stored()}/{queued} stored"
            fleet.step()
            if killed_at is None and any(a.reports.sent for a in fleet.agents):
                killed_at = stored()  # reports in flight: the broker dies and comes back
                mosquitto.stop(kill=True)
                restarted.append(mosquitto.again(tmp_path / "broker-2").start())
        drain_s = time.monotonic() - t0
        left = lambda: sum(s.outbox_size() for s in (a.store for a in fleet.agents))  # noqa
        while left():
            assert time.monotonic() - t0 < 180, f"{left()} records not acknowledged"
            fleet.step()
    finally:
        fleet.close()
        stop.set()
        for b in restarted:
            b.stop()
    rows = store.q("SELECT station_id, count(*) AS n, count(DISTINCT occurrence) AS d "
                   "FROM playbacks GROUP BY station_id")
    store.close()
    assert killed_at is not None and killed_at < queued
    assert len(rows) == N and all(r["n"] == r["d"] == queued // N for r in rows)
    figures(f"F10 reconnect storm: {queued} records from {N} stations, broker killed with "
            f"{killed_at} stored", drain_s, "s")
