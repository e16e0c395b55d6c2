"""Schedule items -> one signed programme bundle per station.

A bundle holds every rule that concerns the station (recurrences stay rules; the station
expands them with the same ``schedules`` code) and the audio they need, by SHA-256. A new
version is issued only when the station's programme changes, or when the signed bundle is
about to expire. A fleet's programmes are worked out once per class of stations that share
one (``Snapshot``); docs/architecture.md, "Planning a province".
"""
from __future__ import annotations

import hashlib
import logging
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Iterator

from protocol.clock import iso, parse_iso
from protocol.envelope import (Packer, Signer, canonical, canonical_value, check_wire, pack,
                               seal_many)
from schedules import Item, Priority
from schedules.model import QuietHours

from .store import HubStore, NewBundle

log = logging.getLogger("loaxa.planner")
BUNDLE_TTL = timedelta(days=30)
REISSUE_BEFORE = timedelta(days=7)
KEEP_PAST = timedelta(days=1)
# Ed25519 over a 35 KB bundle lets other threads run while it hashes: two signers on two
# cores took 10,000 signatures from 1.3 s to ~0.9 s of wall time
SIGNING_THREADS = 2


def item_from_row(r: dict[str, Any], duration_ms: int) -> Item:
    """A stored item; a relay (``stream``) lasts its own duration, its content is the
    fallback."""
    return Item(
        id=r["id"], content=r["content_sha"],
        duration_ms=r.get("duration_ms") or duration_ms if r.get("stream") else duration_ms,
        stream=r.get("stream") or None,
        priority=Priority(r["priority"]), start=parse_iso(r["start"]), rrule=r["rrule"] or None,
        valid_from=parse_iso(r["valid_from"]) if r["valid_from"] else None,
        valid_until=parse_iso(r["valid_until"]) if r["valid_until"] else None,
        late_start_s=r["late_start_s"], title=r["title"] or "",
        approval=f"{r['approved_by']}@{r['approved_at']}" if r.get("approved_by") else "",
    )


def targets(target: str, sid: str, groups: list[str]) -> bool:
    kind, _, name = target.partition(":")
    return (target == "all" or (kind == "station" and name == sid)
            or (kind == "group" and name in groups))


def _shared_target(target: str, already: str | None) -> str | None:
    """Where the hub pushes audio once for every station that needs it (``push`` in the
    bundle's content map): ``all`` if any item using it targets all, else the first group.
    Audio for single stations is fetched by each."""
    if already == "all" or target == "all":
        return "all"
    return already or (target if target.startswith("group:") else None)


def still_relevant(item: Item, now: datetime) -> bool:
    if item.valid_until and item.valid_until < now - KEEP_PAST:
        return False
    if item.rrule:
        return True
    return item.start + item.duration + timedelta(seconds=item.late_start_s) > now - KEEP_PAST


class Snapshot:
    """What every bundle is made of, read once for a replan of the whole fleet: the items
    (each parsed and put in wire form once), their audio, the groups, heightened periods and
    emergency messages. Stations whose programmes are the same apart from their id share one
    programme (an equivalence class: the items that target them, their emergency message,
    their heightened period), built, checked and encoded once; a station's bundle is that
    encoding with its id and version appended (``_Class.tail``), and its digest a copy of the
    class's hash state with the id added. The bytes and the digest are exactly what encoding
    the station's programme on its own gives (``tests/test_planner_scale.py``)."""

    def __init__(self, store: HubStore, now: datetime, quiet: QuietHours | None) -> None:
        self.now = now
        self.quiet = quiet.to_wire() if quiet else None
        contents = {r["sha"]: r for r in store.q("SELECT * FROM content")}
        self.contents = contents
        self.items: list[tuple[str, dict[str, Any], dict[str, Any]]] = []
        for r in store.items():  # ordered by start
            c = contents.get(r["content_sha"])
            if c is None:
                continue
            item = item_from_row(r, c["duration_ms"])
            if still_relevant(item, now):
                self.items.append((r["target"], item.to_wire(), c))
        self.groups: dict[str, list[str]] = {}
        for r in store.db.execute("SELECT station_id, group_id FROM station_groups"):
            self.groups.setdefault(r[0], []).append(r[1])
        self.emergency = {r[0]: r[1] for r in store.db.execute(
            "SELECT key, value FROM settings WHERE key LIKE 'emergency:%'")}
        self.heightened = store.q("SELECT * FROM heightened WHERE end > ? ORDER BY start",
                                  [iso(now)])
        self._classes: dict[tuple, _Class] = {}
        self._by_groups: dict[tuple[str, ...], _Class] = {}
        named = [t for t, _, _ in self.items] + [h["target"] for h in self.heightened]
        self._named = {t.partition(":")[2] for t in named if t.startswith("station:")} | \
            {key.partition(":")[2] for key in self.emergency if key != "emergency:all"}

    def klass(self, sid: str) -> _Class:
        """The station's programme class: found by its groups alone unless something names
        the station itself."""
        groups = self.groups.get(sid, [])
        if sid in self._named:
            return self._klass(sid, groups)
        key = tuple(sorted(groups))
        k = self._by_groups.get(key)
        if k is None:
            k = self._by_groups[key] = self._klass(sid, groups)
        return k

    def _klass(self, sid: str, groups: list[str]) -> _Class:
        chosen = tuple(i for i, (target, _, _) in enumerate(self.items)
                       if targets(target, sid, groups))
        emergency = self.emergency.get(f"emergency:{sid}") or self.emergency.get("emergency:all")
        height = next((i for i, h in enumerate(self.heightened)
                       if targets(h["target"], sid, groups)), None)
        key = (chosen, emergency, height)
        k = self._classes.get(key)
        if k is None:
            k = self._classes[key] = _Class(self._shared(chosen, emergency, height))
        return k

    def _shared(self, chosen: tuple[int, ...], emergency: str | None,
                height: int | None) -> dict[str, Any]:
        items, content = [], {}
        for i in chosen:
            target, wire, c = self.items[i]
            items.append(wire)
            entry = content.setdefault(c["sha"], {"size": c["size"],
                                                  "duration_ms": c["duration_ms"],
                                                  "codec": c["codec"]})
            shared = _shared_target(target, entry.get("push"))
            if shared:
                entry["push"] = shared
        items.sort(key=lambda d: (d["start"], d["id"]))
        c = self.contents.get(emergency) if emergency else None
        if c is not None:
            entry = content.setdefault(emergency, {"size": c["size"],
                                                   "duration_ms": c["duration_ms"],
                                                   "codec": c["codec"]})
            if self.emergency.get("emergency:all") == emergency:
                entry["push"] = "all"
        h = self.heightened[height] if height is not None else None
        return {"items": items, "content": content,
                "quiet_hours": self.quiet,
                "emergency": emergency if emergency in content else None,
                "heightened": {"start": h["start"], "end": h["end"], "reason": h["reason"],
                               "heartbeat_s": h["heartbeat_s"], "selftest_at": h["selftest_at"]}
                if h else None}

    def programme(self, sid: str) -> dict[str, Any]:
        return {**self.klass(sid).shared, "station": sid, "tz": TZ_NAME}


TZ_NAME = "Asia/Ho_Chi_Minh"
_TZ_TAIL = b',"tz":' + canonical_value(TZ_NAME)


class _Class:
    """One programme shared by stations, encoded once (see ``Snapshot``). A programme's keys
    in canonical (sorted) order are content, emergency, heightened, items, quiet_hours, then
    station, tz and version, so the shared part is a prefix."""

    def __init__(self, shared: dict[str, Any]) -> None:
        self.shared = shared
        check_wire(shared)
        self.prefix = canonical(shared)[:-1]  # without its closing brace
        self._hash = hashlib.sha256(self.prefix)
        self.sha = self._hash.hexdigest()  # the stored programme's key
        self.items = len(shared["items"])
        self._packer: Packer | None = None

    def pack(self, raw: bytes) -> bytes:
        """``protocol.envelope.pack(raw)``, the shared programme compressed once."""
        if self._packer is None:
            self._packer = Packer(b'{"body":' + self.prefix)
        return self._packer.pack(raw)

    def _tail(self, sid: str) -> bytes:
        return b',"station":' + canonical_value(sid) + _TZ_TAIL

    def digest(self, sid: str) -> str:
        """sha256 of the canonical programme without its version (as ``issue_bundle``)."""
        h = self._hash.copy()
        h.update(self._tail(sid) + b"}")
        return h.hexdigest()

    def tail(self, sid: str, version: int) -> bytes:
        """What follows ``prefix`` in the canonical bytes of the station's bundle body."""
        return self._tail(sid) + b',"version":' + str(int(version)).encode() + b"}"

    def bundle(self, signer: Signer, sid: str, version: int, digest: str,
               now: datetime) -> NewBundle:
        return self.bundles(signer, [(sid, version, digest)], now)[0]

    def bundles(self, signer: Signer, wanted: list[tuple[str, int, str]], now: datetime,
                sign_map=map) -> list[NewBundle]:
        """Signed bundles of this programme for ``(station, version, digest)``."""
        tails = [self.tail(sid, version) for sid, version, _ in wanted]
        raws = seal_many("bundle", [(self.prefix + t, v) for t, (_, v, _) in zip(tails, wanted)],
                         signer=signer, now=now, ttl=BUNDLE_TTL, sign_map=sign_map)
        return [NewBundle(sid, version, digest, now, now + BUNDLE_TTL, raw, signer.kid,
                          (self.sha, self.prefix, tail))
                for (sid, version, digest), tail, raw in zip(wanted, tails, raws)]


def programme(store: HubStore, sid: str, now: datetime,
              quiet: QuietHours | None) -> dict[str, Any]:
    """The desired programme of one station (unsigned, without version)."""
    return Snapshot(store, now, quiet).programme(sid)


@dataclass(frozen=True)
class Issued:
    raw: bytes                       # the signed bundle
    content: dict[str, dict[str, Any]]  # its audio, by SHA-256 (with ``push`` where shared)
    wire: bytes = b""                # as published: compressed for a station that accepts it

    @property
    def payload(self) -> bytes:
        return self.wire or self.raw


def plan_station(store: HubStore, signer: Signer, sid: str, now: datetime,
                 quiet: QuietHours | None) -> bytes | None:
    """Issue a new bundle for ``sid`` if its programme changed; return it, else None."""
    issued = issue_bundle(store, signer, sid, now, quiet)
    return issued.raw if issued else None


def restore_floor(store: HubStore) -> int:
    """The lowest version a hub restored from a backup may issue (hub/backup.py), else 0."""
    return int(store.setting("bundle.min_version", "0") or 0)


def _version(latest: dict[str, Any] | None, digest: str, floor: int, kid: str,
             now: datetime) -> int | None:
    """The version to issue, or None when the station's latest bundle is still right: the
    same programme, at or above ``floor``, signed by the current key, not about to expire."""
    have = latest["version"] if latest else 0
    if latest and latest["digest"] == digest and have >= floor and \
            latest.get("kid") in (None, kid) and \
            parse_iso(latest["expires_at"]) - now > REISSUE_BEFORE:
        return None
    return max(have + 1, floor)


def issue_bundle(store: HubStore, signer: Signer, sid: str, now: datetime,
                 quiet: QuietHours | None, *, above: int = 0,
                 compressed: bool = False) -> Issued | None:
    """``plan_station``, with the programme's audio beside the signed bytes. The version is
    above both ``above`` (what the station says it holds, when that is more than this hub
    knows) and the floor a restore sets (``hub.backup``): a station refuses a version it has
    seen."""
    k = Snapshot(store, now, quiet).klass(sid)
    digest = k.digest(sid)
    version = _version(store.latest_bundle(sid), digest,
                       max(restore_floor(store), above + 1), signer.kid, now)
    if version is None:
        return None
    b = k.bundle(signer, sid, version, digest, now)
    store.add_bundles([b])
    log.info("bundle %s v%d: %d items", sid, version, k.items)
    return Issued(b.raw, k.shared["content"], pack(b.raw) if compressed else b"")


def replan(store: HubStore, signer: Signer, now: datetime, quiet: QuietHours | None,
           *, batch: int = 500, compressed: frozenset[str] | set[str] = frozenset()
           ) -> Iterator[list[tuple[str, Issued]]]:
    """Every station whose programme changed (or whose bundle is about to expire) gets a new
    version; yields them in batches, each stored in one transaction before it is yielded
    (the caller publishes it, and may do other work between batches). An unchanged fleet costs
    one read of what bundles are made of, one query of the latest versions and a hash per
    station. Stations in ``compressed`` get their bundle's ``wire`` form compressed."""
    snap = Snapshot(store, now, quiet)
    floor = restore_floor(store)
    latest = store.latest_bundles()
    kid_signer = signer.cached()  # its key id computed once, not per bundle
    total = 0
    wanted: dict[_Class, list[tuple[str, int, str]]] = {}  # a batch, by programme
    with ThreadPoolExecutor(SIGNING_THREADS) as pool:
        def flush() -> list[tuple[str, Issued]]:
            rows: list[NewBundle] = []
            out: list[tuple[str, Issued]] = []
            for k, these in wanted.items():
                for b in k.bundles(kid_signer, these, now, sign_map=pool.map):
                    rows.append(b)
                    out.append((b.sid, Issued(b.raw, k.shared["content"],
                                              k.pack(b.raw) if b.sid in compressed else b"")))
            store.add_bundles(rows)
            wanted.clear()
            return out
        n = 0
        for sid in store.station_ids():
            k = snap.klass(sid)
            digest = k.digest(sid)
            version = _version(latest.get(sid), digest, floor, kid_signer.kid, now)
            if version is None:
                continue
            wanted.setdefault(k, []).append((sid, version, digest))
            n += 1
            if n % batch == 0:
                total += batch
                yield flush()
        if wanted:
            total += n % batch
            yield flush()
    if total:
        log.info("%d bundles issued (%d programmes)", total, len(snap._classes))
