"""P3 (issue 11): one station agent (`loaxa agent run`, its own process, the simulated board
and the ALSA file sink) holding a bundle of 100 daily items, idle for 5 minutes (nothing due in
the window), connected to `hub serve` on a real mosquitto. Measured from /proc: its CPU over
the window as a share of one core, and its resident memory at the end.

Baseline in the same run: a bare process that imports paho and cryptography, loads the same
station key and holds one MQTT connection to the same broker (its RSS and CPU over the same
window). Targets: the agent's RSS ≤ 1.4 × the baseline's; its CPU ≤ 0.5 % of a core.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

from bench.common import hub_on_broker, teardown
from bench.p1_alert import _cpu_s

ROOT = Path(__file__).resolve().parents[1]
SECONDS = float(os.environ.get("LOAXA_P3_SECONDS", "300"))
ITEMS = 100
TARGET_RSS_RATIO = 1.4
TARGET_CPU = 0.005

BARE = """
import sys, time
import paho.mqtt.client as mqtt
from cryptography.hazmat.primitives import serialization
key = serialization.load_pem_private_key(open(sys.argv[1], "rb").read(), password=None)
c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="p3-bare",
                protocol=mqtt.MQTTv5)
c.connect("127.0.0.1", int(sys.argv[2]), keepalive=60)
c.loop_start()
print("ready", flush=True)
while True:
    time.sleep(3600)
"""


def _rss_kb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def run() -> dict:
    from bench.web_console import tone
    from deploy.local import add_local_station
    from hub.admin import add_content_file, announce
    from hub.store import HubStore
    from audio.player import file_sink_config
    from schedules import Priority
    work, broker, home, cfg = hub_on_broker("loaxa-p3-")
    procs: list[subprocess.Popen] = []
    try:
        d = work / "station"
        d.mkdir()
        (d / "sink.conf").write_text(file_sink_config(d / "sink.wav"))
        toml = add_local_station(cfg, "xa-p3", name="Đài xã đo tải", groups=["g1"], out=d,
                                 audio_device="loaxa_sink", alsa_config="sink.conf")
        store = HubStore(cfg.db_path)
        now = datetime.now(timezone.utc)
        contents = [add_content_file(store, tone(work / f"t{k}.wav", 1 + k),
                                     title=f"Bản tin {k}", now=now) for k in range(10)]
        # 100 daily items, none due in the window: they start 2 h from now, a minute apart
        for j in range(ITEMS):
            announce(store, content=contents[j % 10],
                     when=now + timedelta(hours=2, minutes=j), priority=Priority.THONG_THUONG,
                     target="all", every="FREQ=DAILY", now=now, title=f"Bản tin số {j}")
        env = dict(os.environ, PYTHONPATH=str(ROOT), LOAXA_LOG="WARNING")
        procs.append(subprocess.Popen(
            [sys.executable, "-m", "deploy.cli", "hub", "--home", str(home), "serve"],
            stdout=open(work / "hub.log", "w"), stderr=subprocess.STDOUT, env=env, cwd=ROOT))
        prof = os.environ.get("LOAXA_P3_PROFILE")  # a developer's cProfile of the agent
        agent = subprocess.Popen(
            [sys.executable, *(["-m", "cProfile", "-o", prof] if prof else []),
             "-m", "deploy.cli", "agent", "run", "--config", str(toml)],
            stdout=open(work / "agent.log", "w"), stderr=subprocess.STDOUT, env=env, cwd=ROOT)
        procs.append(agent)
        bare = subprocess.Popen([sys.executable, "-c", BARE, str(d / "station.key"),
                                 str(broker.port)], stdout=subprocess.PIPE, env=env, cwd=ROOT)
        procs.append(bare)
        assert bare.stdout is not None and bare.stdout.readline().strip() == b"ready"
        deadline = time.monotonic() + 120
        active = 0
        while active != 1 and time.monotonic() < deadline:
            time.sleep(0.5)  # polling the hub's view of the station, not waiting on a schedule
            st = store.state("xa-p3") or {}
            active = st.get("active_version") or 0
        if active != 1:
            raise RuntimeError("the station did not activate its programme")
        time.sleep(10)  # the start-up's audio writes and first reports settle
        c0, b0, t0 = _cpu_s(agent.pid), _cpu_s(bare.pid), time.monotonic()
        time.sleep(SECONDS)  # the idle window itself: wall time is what is measured
        elapsed = time.monotonic() - t0
        cpu = (_cpu_s(agent.pid) - c0) / elapsed
        bare_cpu = (_cpu_s(bare.pid) - b0) / elapsed
        rss, bare_rss = _rss_kb(agent.pid), _rss_kb(bare.pid)
        items = len(json.loads(store.latest_bundle("xa-p3")["raw"])["body"]["items"])
        store.close()
        for p in procs[::-1]:
            p.send_signal(signal.SIGTERM)
            p.wait(60)
        ratio = rss / bare_rss
        return {"name": "agent_idle", "window_s": round(elapsed, 1), "bundle_items": items,
                "agent_cpu_of_a_core": round(cpu, 5), "agent_rss_kb": rss,
                "baseline_bare_paho_cryptography_rss_kb": bare_rss,
                "baseline_cpu_of_a_core": round(bare_cpu, 5),
                "rss_ratio_to_baseline": round(ratio, 2),
                "targets": {"rss_ratio": TARGET_RSS_RATIO, "cpu_of_a_core": TARGET_CPU},
                "meets_targets": ratio <= TARGET_RSS_RATIO and cpu <= TARGET_CPU}
    finally:
        teardown(procs, broker, work)


if __name__ == "__main__":
    print(json.dumps(run(), indent=1))
