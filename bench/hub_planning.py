"""P7 (issue 11): the hub at N = 100, 1,000, 2,000 and 10,000 stations, each with 100 daily
items for all (10 audio files), stations enrolled straight into the hub's store (no fleet:
what is measured is the hub's planning and publishing).

`loaxa hub serve` runs as its own process on a real mosquitto; one observer subscribes to every
station's bundle topic and stamps each bundle as it arrives. Per N:

- first plan: from `hub serve` starting to the observer holding every station's version 1;
- idle: the hub's CPU over an idle window with nothing changing (its periodic replan included);
- one new item for all: from the item's commit (as `loaxa hub announce` makes it) to the
  observer holding every station's new version, and the hub's CPU for it;
- baseline, same run: one MQTT client publishing N retained QoS 1 messages of the bundle's size
  to the same observer (what any per-station bundle costs the broker and the wire).

Targets: the change at every one of 10,000 stations within 5 s; idle hub CPU ≤ 2 % of a core.
"""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

from bench.common import add_communes
from bench.p1_alert import _cpu_s

ROOT = Path(__file__).resolve().parents[1]
SIZES = tuple(int(n) for n in os.environ.get("LOAXA_P7_SIZES", "100,1000,2000,10000").split(","))
ITEMS = 100
TARGET_CHANGE_S = 5.0
TARGET_IDLE_CPU = 0.02
# stations that have connected once said they take compressed bundles (every current agent
# does); LOAXA_P7_PLAIN=1 measures plain bundles, as for stations never heard from
COMPRESSED = not os.environ.get("LOAXA_P7_PLAIN")


class Observer:
    """One MQTT client on ``<prefix>/station/+/bundle`` (or another pattern): when each
    station's bundle of each version arrived."""

    def __init__(self, port: int, pattern: str) -> None:
        from protocol.mqtt import BrokerConfig, MqttLink
        self.seen: dict[tuple[str, int], float] = {}
        self.want: set[tuple[str, int]] = set()
        self.cond = threading.Condition()
        self.link = MqttLink(client_id=f"p7-observer-{os.getpid()}-{len(pattern)}",
                             broker=BrokerConfig(port=port, keepalive=60),
                             subscriptions=[pattern], on_inbound=self._on)
        self.link.start()
        if not self.link.connected.wait(30):
            raise RuntimeError("the observer did not connect")

    def _on(self, m) -> None:
        from protocol.envelope import unpack
        at = time.monotonic()
        raw = unpack(m.payload)
        i = raw.rfind(b'"seq":')
        version = int(raw[i + 6:raw.index(b",", i)]) if i >= 0 else 0
        key = (m.topic.split("/")[-2], version)
        with self.cond:
            self.seen.setdefault(key, at)
            if key in self.want:
                self.want.discard(key)
                if not self.want:
                    self.cond.notify_all()

    def expect(self, keys: list[tuple[str, int]]) -> None:
        """Say what ``wait`` will wait for (before it can arrive)."""
        with self.cond:
            self.want = {k for k in keys if k not in self.seen}

    def wait(self, keys: list[tuple[str, int]], limit_s: float) -> list[float]:
        """Arrival instants of ``keys`` (monotonic), or fewer if the limit passed first."""
        deadline = time.monotonic() + limit_s
        with self.cond:
            while self.want and time.monotonic() < deadline:
                self.cond.wait(0.5)
            return sorted(self.seen[k] for k in keys if k in self.seen)

    def stop(self) -> None:
        self.link.stop()


def _template(home: Path, work: Path) -> None:
    """A hub with the programme and no stations (its audio prepared once for every N)."""
    from bench.web_console import tone
    from hub import config as hubconfig
    from hub.admin import add_content_file, announce, init_hub
    from hub.store import HubStore
    from schedules import Priority
    init_hub(home, broker_host="127.0.0.1", broker_port=1)
    store = HubStore(hubconfig.load(home).db_path)
    now = datetime.now(timezone.utc)
    contents = [add_content_file(store, tone(work / f"t{k}.wav", 1 + k), title=f"Bản tin {k}",
                                 now=now) for k in range(10)]
    for j in range(ITEMS):
        announce(store, content=contents[j % 10], when=now + timedelta(minutes=10 + j),
                 priority=Priority.THONG_THUONG, target="all", every="FREQ=DAILY", now=now,
                 title=f"Bản tin thời sự số {j}")
    store.close()


def _build(template: Path, home: Path, n: int, port: int) -> None:
    """The template with N stations in communes of 100, on the broker at ``port``."""
    from hub import config as hubconfig
    from hub.store import HubStore
    from protocol.clock import iso
    from protocol.storage import write
    shutil.copytree(template, home)
    toml = home / "hub.toml"
    toml.write_text(toml.read_text().replace("port = 1\n", f"port = {port}\n"))
    store = HubStore(hubconfig.load(home).db_path)
    now = datetime.now(timezone.utc)
    with store.lock, write(store.db):
        for sid in add_communes(store, n, iso(now)):
            # what a station's first birth records: it takes its bundle compressed
            store.db.execute("INSERT INTO station_state(station_id, accepts) VALUES (?, ?)",
                             [sid, "zlib" if COMPRESSED else None])
    store.close()


def _baseline(port: int, n: int, size: int) -> float:
    """N retained QoS 1 messages of ``size`` bytes from one client: first publish to the
    observer holding the last."""
    from protocol.mqtt import BrokerConfig, MqttLink
    obs = Observer(port, "p7base/+/bundle")
    pub = MqttLink(client_id=f"p7-base-{os.getpid()}", broker=BrokerConfig(port=port),
                   subscriptions=[])
    pub.start()
    pub.connected.wait(30)
    body = b'{"seq":1,' + b"x" * max(0, size - 9)
    obs.expect([(f"b{i:05d}", 1) for i in range(n)])
    t0 = time.monotonic()
    for i in range(n):
        pub.publish(f"p7base/b{i:05d}/bundle", body, retain=True)
    got = obs.wait([(f"b{i:05d}", 1) for i in range(n)], 120)
    out = (got[-1] - t0) if len(got) == n else float("nan")
    pub.stop()
    obs.stop()
    return out


def _idle_cpu(pid: int, seconds: float) -> float:
    c0, t0 = _cpu_s(pid), time.monotonic()
    time.sleep(seconds)  # measuring an idle process over wall time, not waiting on a schedule
    return (_cpu_s(pid) - c0) / (time.monotonic() - t0)


def one(template: Path, n: int) -> dict:
    from deploy.broker import Mosquitto
    from hub import config as hubconfig
    from hub.admin import announce
    from hub.store import HubStore
    from protocol.envelope import pack
    from schedules import Priority
    work = Path(tempfile.mkdtemp(prefix="loaxa-p7-"))
    broker = Mosquitto(work / "broker").start()
    hub = None
    try:
        home = work / "hub"
        _build(template, home, n, broker.port)
        obs = Observer(broker.port, "loaxa/station/+/bundle")
        sids = [f"tram-{i:05d}" for i in range(n)]
        env = dict(os.environ, PYTHONPATH=str(ROOT), LOAXA_LOG="WARNING")
        obs.expect([(s, 1) for s in sids])
        t0 = time.monotonic()
        hub = subprocess.Popen([sys.executable, "-m", "deploy.cli", "hub", "--home", str(home),
                                "serve"], stdout=open(work / "hub.log", "w"),
                               stderr=subprocess.STDOUT, env=env, cwd=ROOT)
        first = obs.wait([(s, 1) for s in sids], 300)
        first_s = first[-1] - t0 if len(first) == n else None
        store = HubStore(hubconfig.load(home).db_path)
        raw = store.latest_bundle(sids[0])["raw"].encode()
        size = len(pack(raw)) if COMPRESSED else len(raw)
        time.sleep(3)  # let the first plan's publishing settle before the idle window
        idle_s = 60.0 if n >= 10_000 else 30.0
        idle = _idle_cpu(hub.pid, idle_s)
        cpu0 = _cpu_s(hub.pid)
        now = datetime.now(timezone.utc)
        obs.expect([(s, 2) for s in sids])
        t1 = time.monotonic()
        announce(store, content=store.q("SELECT * FROM content LIMIT 1")[0],
                 when=now + timedelta(hours=3), priority=Priority.THONG_THUONG, target="all",
                 every=None, now=now, title="Thông báo mới")
        got = obs.wait([(s, 2) for s in sids], 120)
        change_cpu = _cpu_s(hub.pid) - cpu0
        store.close()
        change = [g - t1 for g in got]
        obs.stop()
        baseline_s = _baseline(broker.port, n, size)
        hub.send_signal(signal.SIGTERM)
        hub.wait(60)
        return {"stations": n, "bundle_bytes": len(raw), "wire_bytes": size,
                "first_plan_all_s": round(first_s, 2) if first_s is not None else None,
                "idle_window_s": idle_s, "idle_cpu_of_a_core": round(idle, 4),
                "change_reached": len(change), "change_p50_s":
                    round(change[len(change) // 2], 2) if change else None,
                "change_all_s": round(change[-1], 2) if len(change) == n else None,
                "change_hub_cpu_s": round(change_cpu, 2),
                "baseline_raw_publish_all_s": round(baseline_s, 2)}
    finally:
        if hub is not None and hub.poll() is None:
            hub.kill()
            hub.wait()
        broker.stop()
        shutil.rmtree(work, ignore_errors=True)


def run() -> dict:
    with tempfile.TemporaryDirectory(prefix="loaxa-p7-template-") as d:
        _template(Path(d) / "hub", Path(d))
        rows = [one(Path(d) / "hub", n) for n in SIZES]
    top = max(rows, key=lambda r: r["stations"])
    meets = (top["stations"] >= 10_000 and top["change_all_s"] is not None
             and top["change_all_s"] <= TARGET_CHANGE_S
             and all(r["idle_cpu_of_a_core"] <= TARGET_IDLE_CPU for r in rows))
    return {"name": "hub_planning", "items_for_all": ITEMS, "compressed": COMPRESSED,
            "sizes": rows,
            "targets": {"change_all_s_at_10000": TARGET_CHANGE_S,
                        "idle_cpu_of_a_core": TARGET_IDLE_CPU},
            "meets_targets": meets}


if __name__ == "__main__":
    if len(sys.argv) > 1:
        SIZES = tuple(int(x) for x in sys.argv[1].split(","))
    print(json.dumps(run(), indent=1))
