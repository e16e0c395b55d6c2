"""Schedule items -> one signed programme bundle per station.

A bundle holds every rule that concerns the station (recurrences stay rules; the station
expands them with the same ``schedules`` code) and the audio they need, by SHA-256. A new
version is issued only when the station's programme changes, or when the signed bundle is
about to expire.
"""
from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from protocol.clock import iso, parse_iso
from protocol.envelope import Signer, canonical, seal
from schedules import Item, Priority
from schedules.model import QuietHours

from .store import HubStore

log = logging.getLogger("loaxa.planner")
BUNDLE_TTL = timedelta(days=30)
REISSUE_BEFORE = timedelta(days=7)
KEEP_PAST = timedelta(days=1)


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


def programme(store: HubStore, sid: str, now: datetime,
              quiet: QuietHours | None) -> dict[str, Any]:
    """The desired programme of one station (unsigned, without version)."""
    groups = store.station_groups(sid)
    items, content = [], {}
    for r in store.items():
        if not targets(r["target"], sid, groups):
            continue
        c = store.content(r["content_sha"])
        if c is None:
            continue
        item = item_from_row(r, c["duration_ms"])
        if not still_relevant(item, now):
            continue
        items.append(item.to_wire())
        entry = content.setdefault(c["sha"], {"size": c["size"], "duration_ms": c["duration_ms"],
                                              "codec": c["codec"]})
        shared = _shared_target(r["target"], entry.get("push"))
        if shared:
            entry["push"] = shared
    items.sort(key=lambda d: (d["start"], d["id"]))
    emergency = store.setting(f"emergency:{sid}") or store.setting("emergency:all")
    if emergency and store.content(emergency):
        c = store.content(emergency)
        entry = content.setdefault(emergency, {"size": c["size"], "duration_ms": c["duration_ms"],
                                               "codec": c["codec"]})
        if store.setting("emergency:all") == emergency:
            entry["push"] = "all"
    heightened = None
    for h in store.q("SELECT * FROM heightened WHERE end > ? ORDER BY start", [iso(now)]):
        if targets(h["target"], sid, groups):
            heightened = {"start": h["start"], "end": h["end"], "reason": h["reason"],
                          "heartbeat_s": h["heartbeat_s"], "selftest_at": h["selftest_at"]}
            break
    return {"station": sid, "items": items, "content": content,
            "quiet_hours": quiet.to_wire() if quiet else None, "tz": "Asia/Ho_Chi_Minh",
            "emergency": emergency if emergency in content else None,
            "heightened": heightened}


@dataclass(frozen=True)
class Issued:
    raw: bytes                       # the signed bundle, as published
    content: dict[str, dict[str, Any]]  # its audio, by SHA-256 (with ``push`` where shared)


def plan_station(store: HubStore, signer: Signer, sid: str, now: datetime,
                 quiet: QuietHours | None) -> bytes | None:
    """Issue a new bundle for ``sid`` if its programme changed; return it, else None."""
    issued = issue_bundle(store, signer, sid, now, quiet)
    return issued.raw if issued else None


def restore_floor(store: HubStore) -> int:
    """The lowest version a hub restored from a backup may issue (hub/backup.py), else 0."""
    return int(store.setting("bundle.min_version", "0") or 0)


def issue_bundle(store: HubStore, signer: Signer, sid: str, now: datetime,
                 quiet: QuietHours | None, *, above: int = 0,
                 min_version: int | None = None) -> Issued | None:
    """``plan_station``, with the programme's audio beside the signed bytes (the hub pushes
    shared audio after the bundles without parsing them again). The version is above both
    ``above`` (what the station says it holds, when that is more than this hub knows) and the
    floor a restore sets (``hub.backup``): a station refuses a version it has seen."""
    prog = programme(store, sid, now, quiet)
    digest = hashlib.sha256(canonical(prog)).hexdigest()
    latest = store.latest_bundle(sid)
    if min_version is None:  # a replan of the whole fleet reads it once and passes it
        min_version = restore_floor(store)
    floor = max(min_version, above + 1)
    have = latest["version"] if latest else 0
    if latest and latest["digest"] == digest and have >= floor and \
            latest.get("kid") in (None, signer.kid) and \
            parse_iso(latest["expires_at"]) - now > REISSUE_BEFORE:
        return None  # unchanged, signed by the current key, not about to expire
    version = max(have + 1, floor)
    body = {**prog, "version": version}
    raw = seal("bundle", body, signer=signer, seq=version, now=now, ttl=BUNDLE_TTL)
    store.add_bundle(sid, version, digest, now, now + BUNDLE_TTL, raw, signer.kid)
    log.info("bundle %s v%d: %d items", sid, version, len(prog["items"]))
    return Issued(raw, prog["content"])
