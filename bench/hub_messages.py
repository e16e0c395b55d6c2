"""Issue 13: what one station message costs the hub, beside verify + one UPDATE.

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
    return {"name": "hub_heartbeat", "stations": STATIONS, "rounds": ROUNDS,
            "baseline_verify_plus_update_per_s": round(base),
            "hub_heartbeats_per_s": round(mine), "ratio_to_baseline": round(mine / base, 3),
            "refused_or_errors": refused, "target_ratio": 0.6,
            "meets_targets": mine / base >= 0.6 and refused == 0}


if __name__ == "__main__":
    print(json.dumps(run(), indent=1))
