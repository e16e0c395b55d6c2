"""The fleet planner (hub/planner.py) builds one programme per class of stations and splices
each station's id and version into its encoding. These tests hold its bundles byte for byte
against a plain per-station encoding, and show the store keeps a shared programme once."""
import hashlib
import json
import random
import zlib
from datetime import datetime, timedelta, timezone

import pytest

from hub import planner
from hub.admin import announce, init_hub
from hub import config as hubconfig
from hub.store import HubStore
from protocol.clock import iso
from protocol.envelope import (ZLIB_MAGIC, KeyRing, Reason, Refused, Signer, canonical, pack,
                               seal, seal_encoded, unpack, verify)
from schedules import Priority

NOW = datetime(2030, 1, 1, 1, 0, tzinfo=timezone.utc)


def oracle(store: HubStore, sid: str, now: datetime) -> dict:
    """One station's programme worked out on its own, straight from the tables (what the
    planner did per station before it grouped them)."""
    groups = [r["group_id"] for r in store.q(
        "SELECT group_id FROM station_groups WHERE station_id = ?", [sid])]
    items, content = [], {}
    for r in store.items():
        if not planner.targets(r["target"], sid, groups):
            continue
        c = store.content(r["content_sha"])
        item = planner.item_from_row(r, c["duration_ms"])
        if not planner.still_relevant(item, now):
            continue
        items.append(item.to_wire())
        e = content.setdefault(c["sha"], {"size": c["size"], "duration_ms": c["duration_ms"],
                                          "codec": c["codec"]})
        if r["target"] == "all" or e.get("push") == "all":
            e["push"] = "all"
        elif r["target"].startswith("group:") and not e.get("push"):
            e["push"] = r["target"]
    items.sort(key=lambda d: (d["start"], d["id"]))
    emergency = store.setting(f"emergency:{sid}") or store.setting("emergency:all")
    if emergency:
        c = store.content(emergency)
        e = content.setdefault(emergency, {"size": c["size"], "duration_ms": c["duration_ms"],
                                           "codec": c["codec"]})
        if store.setting("emergency:all") == emergency:
            e["push"] = "all"
    heightened = None
    for h in store.q("SELECT * FROM heightened WHERE end > ? ORDER BY start", [iso(now)]):
        if planner.targets(h["target"], sid, groups):
            heightened = {k: h[k] for k in ("start", "end", "reason", "heartbeat_s",
                                            "selftest_at")}
            break
    return {"station": sid, "items": items, "content": content, "quiet_hours": None,
            "tz": "Asia/Ho_Chi_Minh", "emergency": emergency, "heightened": heightened}


@pytest.fixture
def fleet(tmp_path):
    signer = init_hub(tmp_path / "hub", broker_host="127.0.0.1", broker_port=1883)
    store = HubStore(hubconfig.load(tmp_path / "hub").db_path)
    yield store, signer
    store.close()


def _content(store: HubStore, n: int) -> dict:
    sha = hashlib.sha256(f"audio {n}".encode()).hexdigest()
    store.add_content(sha=sha, data=f"audio {n}".encode(), title=f"Bản tin {n}", source="s",
                      text="", engine="upload", codec="opus", duration_ms=1000 * (n + 1),
                      now=NOW)
    return store.content(sha)


def _one_commune(store: HubStore, sids: list[str], items: int, title: str) -> dict:
    """Stations in one group and ``items`` daily items for all, on one audio file."""
    with store.lock:
        for sid in sids:
            store.add_station(sid, "t", None, ["xa-1"], NOW)
    c = _content(store, 1)
    for n in range(items):
        announce(store, content=c, when=NOW + timedelta(minutes=5 + n),
                 priority=Priority.THONG_THUONG, target="all", every="FREQ=DAILY", now=NOW,
                 title=title)
    return c


@pytest.mark.parametrize("seed", range(6))
def test_every_bundle_is_the_plain_encoding_of_its_own_programme(fleet, seed):
    store, signer = fleet
    rnd = random.Random(seed)
    groups = ["xa-1", "xa-2", "huyen-a", "ven-bien"]
    sids = [f"tram-{i:02d}" for i in range(24)]
    with store.lock:
        for sid in sids:
            store.add_station(sid, sid, None, rnd.sample(groups, rnd.randint(0, 3)), NOW)
    contents = [_content(store, n) for n in range(5)]
    targets = ["all", *(f"group:{g}" for g in groups), *(f"station:{s}" for s in sids[:4])]
    for n in range(rnd.randint(3, 12)):
        when = NOW + timedelta(minutes=rnd.randint(5, 7))  # ties: ordered by id
        announce(store, content=rnd.choice(contents), when=when,
                 priority=rnd.choice(list(Priority)), target=rnd.choice(targets),
                 every=rnd.choice([None, "FREQ=DAILY"]), now=NOW, title=f"Tin số {n}")
    if rnd.random() < 0.5:
        store.set_setting("emergency:all", contents[0]["sha"])
    store.set_setting(f"emergency:{sids[1]}", contents[1]["sha"])
    store.db["heightened"].insert({"target": rnd.choice(targets), "start": iso(NOW),
                                   "end": iso(NOW + timedelta(days=2)), "reason": "Bão số 3",
                                   "heartbeat_s": 10, "selftest_at": None,
                                   "created_at": iso(NOW)})
    ring = KeyRing()
    ring.add(signer.public, "hub")
    issued = {sid: b for batch in planner.replan(store, signer, NOW, None, batch=7)
              for sid, b in batch}
    assert sorted(issued) == sids
    for sid in sids:
        prog = oracle(store, sid, NOW)
        latest = store.latest_bundle(sid)
        assert latest["digest"] == hashlib.sha256(canonical(prog)).hexdigest()
        env = verify(issued[sid].raw, ring, now=NOW, kind="bundle")
        assert env.body == {**prog, "version": 1}
        # byte for byte what sealing the station's own body gives, and what the store keeps
        assert issued[sid].raw == seal("bundle", env.body, signer=signer, seq=1, now=NOW,
                                       ttl=planner.BUNDLE_TTL, msg_id=env.id)
        assert latest["raw"].encode() == issued[sid].raw
    # nothing changed: nothing issued; one item more for all: every station, once
    assert list(planner.replan(store, signer, NOW, None)) == []
    announce(store, content=contents[2], when=NOW + timedelta(hours=3),
             priority=Priority.THONG_THUONG, target="all", every=None, now=NOW)
    again = [sid for batch in planner.replan(store, signer, NOW, None) for sid, _ in batch]
    assert sorted(again) == sids
    assert {store.latest_bundle(s)["version"] for s in sids} == {2}


def test_a_shared_programme_is_stored_once_and_dropped_with_its_last_bundle(fleet):
    store, signer = fleet
    c = _one_commune(store, [f"tram-{i:02d}" for i in range(50)], 20,
                     "Thông báo của Ủy ban nhân dân xã về lịch tiêm chủng")
    list(planner.replan(store, signer, NOW, None))
    [(n, size)] = store.db.execute("SELECT count(*), sum(length(prefix)) FROM programmes")
    stored = store.db.execute("SELECT sum(length(coalesce(raw, '')) + length(tail) + "
                              "length(envelope)) FROM bundles").fetchone()[0]
    assert n == 1 and size > 5000 and stored < 50 * 600  # per station: its tail and envelope
    for step in range(1, 4):  # each change replaces the programme; two versions are kept
        announce(store, content=c, when=NOW + timedelta(hours=step),
                 priority=Priority.THONG_THUONG, target="all", every=None, now=NOW)
        list(planner.replan(store, signer, NOW, None))
    assert store.db.execute("SELECT count(*) FROM programmes").fetchone()[0] == 2
    assert store.bundle_raw("tram-07", 4) == store.latest_bundle("tram-07")["raw"].encode()
    assert store.bundle_raw("tram-07", 2) is None  # dropped with the versions before


def test_sealing_an_encoded_body_is_sealing_the_body():
    signer = Signer.generate("hub")
    body = {"b": [1, "Thông báo", {"z": None, "a": True}], "a": "Xã Đông Hòa"}
    assert seal_encoded("bundle", canonical(body), signer=signer, seq=3, now=NOW,
                        ttl=timedelta(days=1), msg_id="m1") == \
        seal("bundle", body, signer=signer, seq=3, now=NOW, ttl=timedelta(days=1), msg_id="m1")
    assert json.loads(seal("bundle", body, signer=signer, seq=3, now=NOW,
                           ttl=timedelta(days=1)))["body"] == body


def test_compressed_bundles_inflate_to_the_signed_bytes_and_bombs_are_refused(fleet):
    store, signer = fleet
    _one_commune(store, [f"tram-{i}" for i in range(6)], 30,
                 "Lịch tiếp công dân của Ủy ban nhân dân xã")
    out = dict(b for batch in planner.replan(store, signer, NOW, None,
                                             compressed={"tram-1", "tram-4"}) for b in batch)
    for sid, issued in out.items():
        if sid in ("tram-1", "tram-4"):
            assert issued.payload.startswith(ZLIB_MAGIC)
            assert len(issued.payload) * 4 < len(issued.raw)
            assert unpack(issued.payload) == issued.raw == unpack(pack(issued.raw))
        else:
            assert issued.payload == issued.raw == unpack(issued.raw)
    with pytest.raises(Refused) as e:  # would inflate to 10 MB: stopped at the limit
        unpack(ZLIB_MAGIC + zlib.compress(b"{" + b" " * 10_000_000 + b"}", 9))
    assert e.value.reason == Reason.OVERSIZE
    for bad in (ZLIB_MAGIC + b"not zlib", pack(out["tram-1"].raw)[:-10],
                pack(out["tram-1"].raw) + b"extra"):
        with pytest.raises(Refused) as e:
            unpack(bad)
        assert e.value.reason == Reason.MALFORMED
