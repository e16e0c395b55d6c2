"""`loaxa sim fleet` as a library: many real station agents on one thread, against a real
mosquitto and a hub, taking a khẩn cấp alert and refusing a forged one (issue 9)."""
from __future__ import annotations

import threading
import time
from datetime import timedelta

from hub import config as hubconfig
from hub.admin import add_content_text, init_hub, issue_command, play_body
from hub.link import HubLink
from hub.store import HubStore
from protocol.clock import SystemClock, parse_iso
from protocol.envelope import Signer, seal
from protocol.topics import Topics
from schedules import Priority
from station_agent.simfleet import SimFleet, enrol

N = 60


def test_a_simulated_fleet_runs_on_one_thread_and_takes_an_alert_once(tmp_path, mosquitto):
    home = tmp_path / "hub"
    init_hub(home, broker_host="127.0.0.1", broker_port=mosquitto.port)
    cfg = hubconfig.load(home)
    configs = enrol(home, N, tmp_path / "sim")
    assert len({c.station_id for c in configs}) == N
    assert len(enrol(home, N, tmp_path / "sim")) == N  # again: same stations, same keys
    store = HubStore(cfg.db_path)
    hub_store = HubStore(cfg.db_path)
    hub = HubLink(store=hub_store, signer=Signer.load(cfg.key_path, "hub"), topics=Topics(),
                  broker=cfg.broker, clock=SystemClock())
    stop = threading.Event()
    serve = threading.Thread(target=hub.run, args=(stop,), daemon=True)
    serve.start()
    threads_before = threading.active_count()
    fleet = SimFleet(configs, play_s=0.5)
    try:
        fleet.start()
        deadline = time.monotonic() + 60
        while fleet.connected() < N:
            assert time.monotonic() < deadline, f"{fleet.connected()}/{N} connected"
            fleet.step()
        # one thread for all of them: no paho thread per station
        assert threading.active_count() <= threads_before + 2
        online = lambda: store.q("SELECT count(*) AS n FROM station_state "  # noqa: E731
                                 "WHERE online = 1")[0]["n"]
        while online() < N:
            assert time.monotonic() < deadline, f"{online()}/{N} online at the hub"
            fleet.step()
        c = add_content_text(store, "Báo động lũ quét, bà con sơ tán ngay.", title="lũ",
                             now=SystemClock().now(), engine="espeak-ng")
        cmd = issue_command(cfg, store, "play", "all", play_body(c, priority=Priority.KHAN_CAP),
                            now=SystemClock().now())
        while len({s.station for s in fleet.starts}) < N:
            assert time.monotonic() < deadline + 60, f"{len(fleet.starts)}/{N} started"
            fleet.step()
        assert len(fleet.starts) == N  # each once
        assert all(s.content == c["sha"] for s in fleet.starts)
        # each start as on a CPU of its own (StationClocks): after the command was issued,
        # never later than the start this one thread recorded
        t_issue = parse_iso(cmd["issued_at"]).timestamp()
        for s in fleet.starts:
            assert s.own_cpu_at is not None
            assert t_issue <= s.own_cpu_at <= s.at.timestamp() + 0.001
        # a forged alert (someone else's key) is refused by every station, and plays nowhere
        forged = seal("command", {"id": "forged", "target": "all", "action": "play",
                                  **play_body(c, priority=Priority.KHAN_CAP)},
                      signer=Signer.generate("hub"), seq=10**6, now=SystemClock().now(),
                      ttl=timedelta(minutes=5))
        assert hub.link.publish(Topics().all_command(), forged)
        until = time.monotonic() + 30
        while sum(a.store.counters().get("refused.unknown_key", 0) for a in fleet.agents) < N:
            assert time.monotonic() < until, "not every station refused the forgery"
            fleet.step()
        assert len(fleet.starts) == N
        wait = time.monotonic() + 30
        while True:  # the delivery table at the hub fills in from the stations' reports
            done = sum(t["state"] == "done" for t in store.command_targets(cmd["id"]))
            if done == N:
                break
            assert time.monotonic() < wait, f"{done}/{N} done at the hub"
            fleet.step()
    finally:
        fleet.close()
        stop.set()
        serve.join(10)
        hub_store.close()
        store.close()
