"""Issue 13: what one station message costs the hub, beside verify + one UPDATE; and what one
fetch of a file costs it as thousands fetch at once (``fetch_cost``).

Heartbeats from 1,000 stations (signed with their own keys, bodies as the agent sends them)
handed to ``HubLink.handle`` one by one and flushed every 500, as the hub's loop does: the
rate in messages per second. Baseline in the same run on the same messages: Ed25519 verification and one
``UPDATE station_state`` committed per message, raw sqlite3 (the least a hub could do and
still check and keep each heartbeat). Target: ≥ 60 % of the baseline's rate.
"""
from __future__ import annotations

import json
import sqlite3
import tempfile
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

STATIONS, ROUNDS = 1000, 3


def _messages(home: Path, n: int):
    from protocol.envelope import Signer, public_to_text, seal
    from protocol.mqtt import Inbound
    from protocol.topics import Topics
    now = datetime.now(timezone.utc)
    probes = {name: {"status": "ok", "value": 1, "detail": ""} for name in
              ("mains", "ups_battery", "cpu_temperature", "disk", "memory", "link", "relays",
               "amplifier")}
    topics, out, keys = Topics(), [], {}
    for i in range(n):
        sid = f"hb-{i:05d}"
        signer = Signer.generate(f"station:{sid}")
        keys[sid] = public_to_text(signer.public)
        body = {"status": "ok", "probes": probes, "on_air": False, "relay": False,
                "heightened": False, "interval_s": 60}
        raw = seal("heartbeat", body, signer=signer, seq=0, now=now, ttl=timedelta(minutes=10))
        out.append(Inbound(topics.health(sid), raw, False))
    return out, keys


def run() -> dict:
    from hub.link import HubLink
    from hub.store import HubStore
    from protocol.clock import SystemClock, iso
    from protocol.envelope import KeyRing, Signer, public_from_text, verify
    from protocol.mqtt import BrokerConfig
    from protocol.topics import Topics
    with tempfile.TemporaryDirectory(prefix="loaxa-bench-hb-") as d:
        home = Path(d)
        msgs, keys = _messages(home, STATIONS)
        store = HubStore(home / "hub.db")
        now = iso(datetime.now(timezone.utc))
        with store.lock:
            for sid, pub in keys.items():
                store.db.execute("INSERT INTO stations VALUES (?, ?, ?, ?)", [sid, sid, pub, now])
                store.db.execute("INSERT INTO station_state(station_id) VALUES (?)", [sid])
        hub = HubLink(store=store, signer=Signer.generate("hub"), topics=Topics(),
                      broker=BrokerConfig(port=1), clock=SystemClock())
        for m in msgs:  # the first pass fills the key rings, as a running hub has them
            hub.handle(m)
        hub.flush()

        # baseline: verify + one committed UPDATE, raw sqlite3 on the same database file
        rings = {}
        for sid, pub in keys.items():
            r = KeyRing()
            r.add(public_from_text(pub), f"station:{sid}")
            rings[sid] = r
        conn = sqlite3.connect(home / "hub.db", isolation_level=None)
        conn.execute("PRAGMA synchronous=FULL")
        sids = list(keys)
        rates_base, rates_hub = [], []
        for _ in range(ROUNDS):
            t0 = time.perf_counter()
            for sid, m in zip(sids, msgs):
                env = verify(m.payload, rings[sid], now=None)
                conn.execute("UPDATE station_state SET last_heartbeat = ?, health = ? "
                             "WHERE station_id = ?", [now, env.body["status"], sid])
            rates_base.append(len(msgs) / (time.perf_counter() - t0))
            t0 = time.perf_counter()
            for k, m in enumerate(msgs, 1):
                hub.handle(m)
                if k % 500 == 0:  # the hub's loop handles up to 500 messages a turn
                    hub.flush()
            hub.flush()
            rates_hub.append(len(msgs) / (time.perf_counter() - t0))
        conn.close()
        refused = sum(v for k, v in hub.counters.items() if k.startswith(("refused", "errors")))
        store.close()
    base, mine = max(rates_base), max(rates_hub)
    return {"also": [fetch_cost()], "name": "hub_heartbeat", "stations": STATIONS, "rounds": ROUNDS,
            "baseline_verify_plus_update_per_s": round(base),
            "hub_heartbeats_per_s": round(mine), "ratio_to_baseline": round(mine / base, 3),
            "refused_or_errors": refused, "target_ratio": 0.6,
            "meets_targets": mine / base >= 0.6 and refused == 0}


FETCHING = 5000


def fetch_cost(n: int = FETCHING) -> dict:
    """``n`` stations each fetch the whole of one 200 KB file (one window, 13 chunks) from a
    hub connected to a real mosquitto, one fetch after another with none acknowledged yet
    (the table of chunks in flight grows to 65,000): the hub's time per fetch over the first
    500 and the last 500. Before issue 13 each fetch read the whole file again and rebuilt
    the in-flight table: 0.8 ms per fetch at 500 fetching, 9 ms at 5,000. Baseline in the
    same run: the same 13 chunks, already encoded, published by a bare paho client. Target:
    flat (the last 500 at most 1.5 × the first 500)."""
    import paho.mqtt.client as paho
    from bench.__main__ import _announcement
    from deploy.broker import Mosquitto
    from hub.admin import add_content_file
    from hub.link import HubLink
    from hub.store import HubStore
    from protocol import chunks
    from protocol.clock import SystemClock, iso
    from protocol.envelope import Signer, public_to_text, seal
    from protocol.mqtt import BrokerConfig, Inbound
    from protocol.storage import write
    from protocol.topics import Topics
    with tempfile.TemporaryDirectory(prefix="loaxa-bench-fetch-") as d:
        home = Path(d)
        broker = Mosquitto(home / "broker").start()
        try:
            store = HubStore(home / "hub.db")
            now = datetime.now(timezone.utc)
            content = add_content_file(store, _announcement(home, seconds=64), title="fetch",
                                       now=now)
            sha, size = content["sha"], content["size"]
            topics, msgs = Topics(), []
            with store.lock, write(store.db):  # one transaction, not an fsync per station
                for i in range(n):
                    sid = f"f-{i:05d}"
                    signer = Signer.generate(f"station:{sid}")
                    store.db.execute("INSERT INTO stations VALUES (?, ?, ?, ?)",
                                     [sid, sid, public_to_text(signer.public), iso(now)])
                    msgs.append(Inbound(topics.fetch(sid), seal(
                        "fetch", {"sha": sha, "offset": 0, "length": 256 * 1024},
                        signer=signer, seq=0, now=now, ttl=timedelta(minutes=10)), False))
            hub = HubLink(store=store, signer=Signer.generate("hub"), topics=topics,
                          broker=BrokerConfig(port=broker.port), clock=SystemClock())
            hub.start()
            if not hub.link.connected.wait(10):
                raise RuntimeError("the hub did not connect to the benchmark's broker")
            times = []
            for m in msgs:
                t0 = time.perf_counter()
                hub.handle(m)
                times.append(time.perf_counter() - t0)
            sent = hub.counters.get("audio.chunks_sent", 0)
            not_sent = hub.counters.get("audio.chunks_not_sent", 0)
            hub.stop()
            store.close()
            # baseline: the same chunks, encoded once, by a bare paho client
            blob = Path(store.content_path(sha)).read_bytes()
            raws = [chunks.encode(sha, off, size, blob[off:off + chunks.CHUNK_SIZE])
                    for off in range(0, size, chunks.CHUNK_SIZE)]
            bare = paho.Client(paho.CallbackAPIVersion.VERSION2, client_id="bench-bare",
                               protocol=paho.MQTTv5)
            bare.max_queued_messages_set(0)  # paho's other defaults, as the hub's link has
            bare.connect("127.0.0.1", broker.port)
            bare.loop_start()
            base = []
            for i in range(n):
                t0 = time.perf_counter()
                for raw in raws:
                    bare.publish(f"loaxa/station/f-{i:05d}/audio", raw, qos=1)
                base.append(time.perf_counter() - t0)
            bare.loop_stop()
            bare.disconnect()
        finally:
            broker.stop()
    first, last = times[:500], times[-500:]

    def ms(xs: list[float]) -> float:
        return round(sum(xs) / len(xs) * 1000, 3)
    return {"name": "hub_fetch", "fetching": n, "file_bytes": size, "chunks_per_fetch": len(raws),
            "hub_ms_per_fetch_first_500": ms(first), "hub_ms_per_fetch_last_500": ms(last),
            "baseline_bare_publish_ms_per_fetch_first_500": ms(base[:500]),
            "baseline_bare_publish_ms_per_fetch_last_500": ms(base[-500:]),
            "chunks_sent": sent, "chunks_not_sent": not_sent,
            "target_last_over_first": 1.5,
            "last_over_first": round(ms(last) / ms(first), 2),
            "meets_targets": ms(last) <= 1.5 * ms(first) and not_sent == 0
            and sent == n * len(raws)}


if __name__ == "__main__":
    print(json.dumps(run(), indent=1))
