from __future__ import annotations

from bisect import bisect_left
from datetime import datetime, timedelta, timezone
from itertools import islice
from typing import Iterable, Iterator

from dateutil.rrule import DAILY, HOURLY, MINUTELY, SECONDLY, WEEKLY, YEARLY, rrule

from .model import Item, Occurrence, Priority, QuietHours, TZ

MAX_OCCURRENCES_PER_ITEM = 10_000  # guards against FREQ=SECONDLY over a long window


def _starts(item: Item, lo: datetime, hi: datetime) -> list[datetime]:
    """Start instants of ``item`` in [lo, hi), UTC.

    A recurring item keeps the starts of a window around the last query (an hour back, a day
    ahead) and answers from it by bisection while queries fall inside it: a runner step asks
    about the same few minutes twenty times a second."""
    if item._rule is None:
        return [item.start] if lo <= item.start < hi else []
    window = item._memo.get("window")
    if window is None or not (window[0] <= lo and hi <= window[1]):
        w_lo, w_hi = lo - _WINDOW_BACK, max(hi, lo + _WINDOW_AHEAD)
        starts: list[datetime] = []
        for u in _from(item, w_lo):
            if u >= w_hi:
                break
            if len(starts) >= _WINDOW_LIMIT:  # a dense rule: no window, answer directly
                return _walk(item, lo, hi)
            starts.append(u)
        window = item._memo["window"] = (w_lo, w_hi, starts)
    starts = window[2]
    return starts[bisect_left(starts, lo):bisect_left(starts, hi)][:MAX_OCCURRENCES_PER_ITEM]


_WINDOW_BACK, _WINDOW_AHEAD, _WINDOW_LIMIT = timedelta(hours=1), timedelta(days=1), 2_000


def _walk(item: Item, lo: datetime, hi: datetime) -> list[datetime]:
    out: list[datetime] = []
    for u in _from(item, lo):
        if u >= hi or len(out) >= MAX_OCCURRENCES_PER_ITEM:
            break
        out.append(u)
    return out


def _from(item: Item, lo: datetime) -> Iterator[datetime]:
    """Start instants of a recurring ``item`` at or after ``lo``, UTC, in order.

    The cost does not depend on how long ago the rule first started: the walk begins at an
    anchor near ``lo`` (see ``_near``), not at the rule's first start. Rules with COUNT are
    expanded once (their occurrences are numbered from the first start) and bisected."""
    rule = item._rule
    if not isinstance(rule, rrule):  # an rruleset (EXDATE lines): walk it as it is
        return (d.astimezone(timezone.utc) for d in rule.xafter(lo.astimezone(TZ), inc=True))
    if rule._count is not None:
        expanded = item._memo.get("expanded")
        if expanded is None:
            expanded = [d.astimezone(timezone.utc)
                        for d in islice(rule, _EXPAND_LIMIT + 1)]
            item._memo["expanded"] = expanded
        if len(expanded) <= _EXPAND_LIMIT:
            return iter(expanded[bisect_left(expanded, lo):])
        return (d.astimezone(timezone.utc) for d in rule.xafter(lo.astimezone(TZ), inc=True))
    near = _near(item, rule, lo.astimezone(TZ))
    return (d.astimezone(timezone.utc) for d in near.xafter(lo.astimezone(TZ), inc=True))


_EXPAND_LIMIT = 100_000
_STEP = {DAILY: timedelta(days=1), WEEKLY: timedelta(days=7), HOURLY: timedelta(hours=1),
         MINUTELY: timedelta(minutes=1), SECONDLY: timedelta(seconds=1)}


def _near(item: Item, rule: rrule, lo: datetime) -> rrule:
    """The same rule restarted at the latest instant ``d0 + k·period`` (k ≥ 0, whole periods
    of the rule's frequency × interval) not after ``lo``.

    Why this is the same set of occurrences from ``lo`` on: a shift by whole periods keeps the
    interval's phase (which weeks, months, hours count), and keeps every field dateutil fills
    in from the start (time of day, weekday, day of month, month), because the shifted start
    has the same ones. dateutil does not force the start itself into the set, and what the
    restarted rule leaves out lies before its start, hence before ``lo``. Asia/Ho_Chi_Minh
    has kept one UTC offset since 1975, so wall-time periods are fixed lengths.
    The property test in tests/test_schedules.py holds this against a walk from the start."""
    d0 = rule._dtstart
    if lo <= d0:
        return rule
    freq, n = rule._freq, rule._interval
    anchor = None
    if freq in _STEP:
        step = _STEP[freq] * n
        anchor = d0 + step * ((lo - d0) // step)
    else:
        months = 12 if freq == YEARLY else 1
        elapsed = (lo.year - d0.year) * 12 + lo.month - d0.month
        k = elapsed // (months * n)
        for _ in range(64):  # a 31st or a 29 February is at most a few periods back
            if k <= 0:
                return rule
            total = d0.month - 1 + k * months * n
            try:
                candidate = d0.replace(year=d0.year + total // 12, month=total % 12 + 1)
            except ValueError:  # that month has no such day: one period earlier
                k -= 1
                continue
            if candidate <= lo:
                anchor = candidate
                break
            k -= 1
        if anchor is None:
            return rule
    cached = item._memo.get("near")
    if cached is not None and cached[0] == anchor:
        return cached[1]
    near = rule.replace(dtstart=anchor)
    item._memo["near"] = (anchor, near)
    return near


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


def starting_within(items: Iterable[Item], t: datetime, seconds: float, *,
                    quiet: QuietHours | None = None) -> list[Occurrence]:
    """Occurrences that start after ``t`` and at most ``seconds`` later, earliest first (then
    best): what a station pre-rolls for (relay, power-good, warm-up before the instant)."""
    out = [Occurrence(s, item) for item in items
           for s in _starts(item, t + _EPS, t + timedelta(seconds=seconds) + _EPS)
           if s > t and _allowed(item, s, quiet)]
    out.sort(key=lambda o: (o.start, _rank(o)))
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
    for n, u in enumerate(_from(item, lo)):
        if item.valid_until and u >= item.valid_until or n >= limit:
            return None
        if _allowed(item, u, quiet):
            return u
    return None


_EPS = timedelta(microseconds=1)
