"""P5 (issue 11): 2,000 simulated stations go offline; while they are away the hub prepares
~1 MB of new audio and a new programme for all; then they come back. Measured: from their
return (the fleet connecting again) to every station holding the new file with the programme
it completes active, on one thread and on CPUs of their own (station_agent/simfleet.py,
StationClocks); and the audio bytes the stations received beside what they lacked (one copy
each). Targets: all ready ≤ 60 s; bytes ≤ 1.05 × what was lacked.

The stations' broker sessions outlive the outage (MQTT 5 session expiry, QoS 1), so the
bundle and the audio the hub pushed once for all wait for each station in mosquitto; a
station that misses them fetches the rest, which the byte count would show.

    python -m bench.offline_return [N]
"""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

AUDIO_S = 330  # ~1 MB once prepared (Opus, speech)


def _wait_line(log: Path, text: str, limit_s: float) -> float:
    """When ``text`` appeared in the fleet's output (polling its log, not a schedule)."""
    t0 = time.monotonic()
    while time.monotonic() - t0 < limit_s:
        if text in log.read_text():
            return time.time()
        time.sleep(0.05)
    raise TimeoutError(f"{text!r} not in {log}")


def _events(path: Path, kind: str) -> list[dict]:
    from bench.common import json_lines
    return [d for d in json_lines(path) if d.get("event") == kind]


def run(n: int = int(os.environ.get("LOAXA_P5_STATIONS", "2000"))) -> dict:
    from bench.__main__ import _announcement
    from bench.common import JUDGED_ON, hub_and_fleet, hub_on_broker, sim_fleet, stop_gently, teardown
    from bench.p1_alert import _cpu_s, _quiet
    from hub.admin import add_content_file, announce
    from hub.store import HubStore
    from protocol.clock import SystemClock
    from schedules import Priority
    from station_agent.simfleet import default_root, enrol

    work, broker, home, cfg = hub_on_broker("loaxa-p5-")
    root = default_root() / f"loaxa-p5-{os.getpid()}"
    procs: list[subprocess.Popen] = []
    t_start = time.monotonic()
    try:
        store = HubStore(cfg.db_path)
        enrol(home, n, root)
        first = work / "first.jsonl"
        hub, fleet, online = hub_and_fleet(work, home, root, n, first, store, procs,
                                           limit_s=240, fleet_log="fleet1.log")
        logs = work / "logs"
        _quiet([hub.pid, fleet.pid])
        # the outage
        fleet.send_signal(signal.SIGTERM)
        fleet.wait(120)
        procs.remove(fleet)
        now = SystemClock().now()
        src = _announcement(work, seconds=AUDIO_S)
        t_prep = time.monotonic()
        content = add_content_file(store, src, title="P5 1 MB", now=now)
        announce(store, content=content, when=now + timedelta(hours=6), priority=Priority(1),
                 target="all", every=None, title="P5 while offline", now=now)
        planned = 0
        while planned < n and time.monotonic() - t_prep < 120:
            time.sleep(0.5)  # polling the hub's store for the new programmes
            planned = store.q("SELECT count(DISTINCT station_id) AS n FROM bundles "
                              "WHERE version >= 2")[0]["n"]
        prepared_s = round(time.monotonic() - t_prep, 1)
        _quiet([hub.pid])  # the hub has published the bundles and pushed the file
        # the return
        events = work / "back.jsonl"
        cpu0 = _cpu_s(hub.pid)
        fleet = sim_fleet(n, home, root, events, logs / "fleet2.log")
        procs.append(fleet)
        # back: the moment the stations start connecting (their stores and keys loaded)
        t_back = _wait_line(logs / "fleet2.log", "sim fleet: connecting", 240)
        held: list[dict] = []
        while len(held) < n and time.time() - t_back < 180:
            time.sleep(0.5)  # polling the fleet's record of stored files
            held = [d for d in _events(events, "stored") if d["content"] == content["sha"]]
        hub_cpu = round(_cpu_s(hub.pid) - cpu0, 2)
        _quiet([hub.pid, fleet.pid])  # anything fetched late is counted too
        fleet.send_signal(signal.SIGTERM)
        fleet.wait(120)
        procs.remove(fleet)
        # the stations' own counters, over their stores' lives: less what they had before
        received = sum(d["bytes"] for d in _events(events, "audio_in")) - \
            sum(d["bytes"] for d in _events(first, "audio_in"))
        lacked = n * content["size"]
        stations = {d["station"] for d in held}
        ready = sorted(d["at"] - t_back for d in held)
        own = sorted(d["own_cpu_at"] - t_back for d in held if d.get("own_cpu_at"))
        out = {
            "name": "offline_return", "stations": n, "online_before": online,
            "audio_bytes": content["size"], "audio_s": content["duration_ms"] / 1000,
            "programmes_prepared_s": prepared_s, "programmes_planned_for": planned,
            "ready": {"stations": len(stations), "of": n,
                      "all_ready_s": round(ready[-1], 2) if len(stations) == n else None,
                      "half_ready_s": round(ready[len(ready) // 2], 2) if ready else None},
            "ready_own_cpu": {"all_ready_s": round(own[-1], 2)
                              if len(own) == len(ready) == n else None},
            "audio_bytes_received": received, "audio_bytes_lacked": lacked,
            "bytes_ratio": round(received / lacked, 3) if lacked else None,
            "hub_cpu_s": hub_cpu,
            "targets": {"all_ready_s": 60, "bytes_ratio": 1.05},
            "total_s": round(time.monotonic() - t_start, 1),
        }
        out["judged_on"] = JUDGED_ON
        out["meets_targets"] = bool(out["ready_own_cpu"]["all_ready_s"] is not None
                                    and out["ready_own_cpu"]["all_ready_s"] <= 60
                                    and received <= 1.05 * lacked)
        out["meets_targets_one_thread"] = bool(len(stations) == n and ready[-1] <= 60
                                               and received <= 1.05 * lacked)
        store.close()
        return out
    finally:
        stop_gently(procs)
        teardown([], broker, work)
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 2000
    r = {**run(n), "at": datetime.now(timezone.utc).isoformat(timespec="seconds")}
    print(json.dumps(r, indent=1, ensure_ascii=False))
