from __future__ import annotations

from datetime import datetime, timedelta, timezone
from typing import Iterable

from .model import Item, Occurrence, Priority, QuietHours, TZ

MAX_OCCURRENCES_PER_ITEM = 10_000  # guards against FREQ=SECONDLY over a long window


def _starts(item: Item, lo: datetime, hi: datetime) -> list[datetime]:
    """Start instants of ``item`` in [lo, hi), UTC."""
    if item._rule is None:
        return [item.start] if lo <= item.start < hi else []
    out: list[datetime] = []
    for dt in item._rule.xafter(lo.astimezone(TZ), inc=True):
        u = dt.astimezone(timezone.utc)
        if u >= hi or len(out) >= MAX_OCCURRENCES_PER_ITEM:
            break
        out.append(u)
    return out


def _allowed(item: Item, start: datetime, quiet: QuietHours | None) -> bool:
    if item.valid_from and start < item.valid_from:
        return False
    if item.valid_until and start >= item.valid_until:
        return False
    if quiet and item.priority < Priority.KHAN_CAP and quiet.contains(start):
        return False
    return True


def occurrences(items: Iterable[Item], start: datetime, end: datetime, *,
                quiet: QuietHours | None = None) -> list[Occurrence]:
    """Every occurrence that overlaps [start, end), in order of start (then item id)."""
    out: list[Occurrence] = []
    for item in items:
        for s in _starts(item, start - item.duration + timedelta(microseconds=1), end):
            if _allowed(item, s, quiet):
                out.append(Occurrence(s, item))
    out.sort(key=lambda o: (o.start, o.item.id))
    return out


def active_at(items: Iterable[Item], t: datetime, *,
              quiet: QuietHours | None = None) -> list[Occurrence]:
    """Occurrences whose scheduled interval [start, end) contains ``t``."""
    return [o for o in occurrences(items, t, t + timedelta(microseconds=1), quiet=quiet)
            if o.start <= t < o.end]


def _rank(o: Occurrence) -> tuple:
    return (-int(o.item.priority), o.start, o.item.id)


def playing_at(items: Iterable[Item], t: datetime, *,
               quiet: QuietHours | None = None) -> Occurrence | None:
    """What should be on air at ``t``: the highest priority active occurrence; among equals the
    one that started first (then the lower item id, so the answer is deterministic)."""
    active = active_at(items, t, quiet=quiet)
    return min(active, key=_rank) if active else None


def may_start(o: Occurrence, t: datetime) -> bool:
    """Whether ``o`` may still begin at ``t`` (inside its late-start window)."""
    return o.start <= t <= o.start + timedelta(seconds=o.item.late_start_s)


def startable_at(items: Iterable[Item], t: datetime, *,
                 quiet: QuietHours | None = None) -> list[Occurrence]:
    """Occurrences that may begin at ``t`` (inside their late-start window), best first:
    highest priority, then earliest start. A short item missed by a few seconds still starts
    while its window is open."""
    out = [Occurrence(s, item) for item in items
           for s in _starts(item, t - timedelta(seconds=item.late_start_s), t + _EPS)
           if _allowed(item, s, quiet)]
    out.sort(key=_rank)
    return out


def overdue(items: Iterable[Item], since: datetime, t: datetime, *,
            quiet: QuietHours | None = None) -> list[Occurrence]:
    """Occurrences whose late-start window closed in [since, t): if they have not started by
    now they never will, and are to be recorded as missed."""
    out = [Occurrence(s, item) for item in items
           for s in _starts(item, since - timedelta(seconds=item.late_start_s),
                            t - timedelta(seconds=item.late_start_s))
           if _allowed(item, s, quiet)]
    out.sort(key=lambda o: (o.start, o.item.id))
    return out


def next_start(item: Item, t: datetime, *, quiet: QuietHours | None = None,
               limit: int = MAX_OCCURRENCES_PER_ITEM) -> datetime | None:
    """The first occurrence of ``item`` that can still begin at or after ``t`` (its late-start
    window not yet closed), or None if there is none: a one-off whose time has passed, a
    campaign that has ended."""
    lo = t - timedelta(seconds=item.late_start_s)
    if item._rule is None:
        return item.start if item.start >= lo and _allowed(item, item.start, quiet) else None
    for n, dt in enumerate(item._rule.xafter(lo.astimezone(TZ), inc=True)):
        u = dt.astimezone(timezone.utc)
        if item.valid_until and u >= item.valid_until or n >= limit:
            return None
        if _allowed(item, u, quiet):
            return u
    return None


_EPS = timedelta(microseconds=1)
