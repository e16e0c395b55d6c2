from datetime import datetime, time, timedelta, timezone

import pytest
from hypothesis import example, given, settings, strategies as st

from schedules import Item, Priority, QuietHours, TZ, active_at, may_start, occurrences, playing_at
from schedules.model import ScheduleError

SHA = "a" * 64
BASE = datetime(2026, 11, 24, 0, 0, tzinfo=timezone.utc)


def item(i, start, *, prio=Priority.THONG_THUONG, dur_s=60, rrule=None, **kw):
    return Item(str(i), SHA, dur_s * 1000, prio, start, rrule=rrule, **kw)


def local(y, m, d, hh, mm):
    return datetime(y, m, d, hh, mm, tzinfo=TZ)


def test_daily_recurrence_stays_at_local_wall_time():
    it = item("news", local(2026, 11, 24, 6, 0), rrule="FREQ=DAILY")
    occ = occurrences([it], local(2026, 11, 24, 0, 0), local(2026, 11, 27, 0, 0))
    assert [o.start.astimezone(TZ).strftime("%d/%m %H:%M") for o in occ] == \
        ["24/11 06:00", "25/11 06:00", "26/11 06:00"]


def test_campaign_window_bounds_occurrences():
    it = item("c", local(2026, 4, 1, 17, 0), rrule="FREQ=DAILY",
              valid_from=local(2026, 4, 25, 0, 0), valid_until=local(2026, 5, 2, 0, 0))
    occ = occurrences([it], local(2026, 4, 1, 0, 0), local(2026, 6, 1, 0, 0))
    assert [o.start.astimezone(TZ).day for o in occ] == [25, 26, 27, 28, 29, 30, 1]


def test_quiet_hours_admit_only_khan_cap():
    quiet = QuietHours(time(22, 0), time(5, 0))
    t = local(2026, 11, 24, 23, 30)
    normal = item("n", t, prio=Priority.UU_TIEN)
    alarm = item("e", t, prio=Priority.KHAN_CAP)
    assert playing_at([normal], t + timedelta(seconds=1), quiet=quiet) is None
    assert playing_at([normal, alarm], t + timedelta(seconds=1), quiet=quiet).item.id == "e"
    assert playing_at([normal], t + timedelta(seconds=1)).item.id == "n"


def test_higher_priority_preempts_and_ties_go_to_the_earlier_start():
    a = item("a", BASE, dur_s=600)
    b = item("b", BASE + timedelta(minutes=1), dur_s=600)
    c = item("c", BASE + timedelta(minutes=2), prio=Priority.KHAN_CAP, dur_s=60)
    t = BASE + timedelta(minutes=2, seconds=5)
    assert playing_at([a, b, c], t).item.id == "c"
    assert playing_at([a, b], t).item.id == "a"


def test_late_start_window():
    it = item("x", BASE, late_start_s=30)
    o = occurrences([it], BASE, BASE + timedelta(minutes=1))[0]
    assert may_start(o, BASE + timedelta(seconds=30))
    assert not may_start(o, BASE + timedelta(seconds=31))
    assert not may_start(o, BASE - timedelta(seconds=1))


def test_bad_rules_are_refused_with_reasons():
    with pytest.raises(ScheduleError, match="RRULE"):
        item("r", BASE, rrule="FREQ=SOMETIMES")
    with pytest.raises(ScheduleError, match="aware"):
        item("r", datetime(2026, 1, 1))
    with pytest.raises(ScheduleError, match="campaign"):
        item("r", BASE, valid_from=BASE, valid_until=BASE)
    with pytest.raises(ScheduleError):
        Item.from_wire({"id": "x"})


def test_priority_names():
    assert Priority.parse("Khẩn cấp") is Priority.KHAN_CAP
    assert Priority.parse("uu-tien") is Priority.UU_TIEN
    assert Priority.parse("normal") is Priority.THONG_THUONG
    assert Priority.KHAN_CAP.label_vi == "khẩn cấp"
    with pytest.raises(ScheduleError):
        Priority.parse("urgent-ish")


def test_wire_round_trip():
    it = item("w", BASE, rrule="FREQ=WEEKLY;BYDAY=MO", valid_until=BASE + timedelta(days=30),
              title="Tuyên truyền bầu cử")
    assert Item.from_wire(it.to_wire()) == it


# -- properties ------------------------------------------------------------------------------

items_st = st.lists(
    st.builds(
        lambda i, off, dur, prio, rec: item(
            i, BASE + timedelta(minutes=off), dur_s=dur, prio=Priority(prio),
            rrule=["FREQ=HOURLY", "FREQ=DAILY", None][rec]),
        st.integers(0, 999).map(str), st.integers(0, 600), st.integers(1, 3600),
        st.integers(1, 3), st.integers(0, 2)),
    max_size=8, unique_by=lambda i: i.id)
instant_st = st.integers(0, 3 * 24 * 3600).map(lambda s: BASE + timedelta(seconds=s))
quiet_st = st.one_of(st.none(), st.builds(
    lambda a, b: QuietHours(time(a), time(b)), st.integers(0, 23), st.integers(0, 23)))


@settings(max_examples=300, deadline=None)
@given(items_st, instant_st, quiet_st)
def test_winner_is_active_with_the_highest_priority(items, t, quiet):
    active = active_at(items, t, quiet=quiet)
    winner = playing_at(items, t, quiet=quiet)
    if not active:
        assert winner is None
        return
    assert winner in active
    assert winner.start <= t < winner.end
    assert winner.item.priority == max(o.item.priority for o in active)
    same = [o for o in active if o.item.priority == winner.item.priority]
    assert winner.start == min(o.start for o in same)


@settings(max_examples=200, deadline=None)
@given(items_st, instant_st, quiet_st)
def test_quiet_hours_never_start_anything_but_khan_cap(items, t, quiet):
    winner = playing_at(items, t, quiet=quiet)
    if winner and quiet and quiet.contains(winner.start):
        assert winner.item.priority is Priority.KHAN_CAP


@settings(max_examples=200, deadline=None)
@given(items_st, instant_st, instant_st)
def test_occurrences_are_sorted_and_overlap_the_window(items, a, b):
    lo, hi = min(a, b), max(a, b) + timedelta(seconds=1)
    occ = occurrences(items, lo, hi)
    assert occ == sorted(occ, key=lambda o: (o.start, o.item.id))
    assert all(o.start < hi and o.end > lo for o in occ)
    assert len({o.key for o in occ}) == len(occ)


@settings(max_examples=200, deadline=None)
@given(items_st, instant_st, st.integers(1, 3))
def test_adding_a_lower_priority_item_never_displaces_the_winner(items, t, prio):
    before = playing_at(items, t)
    extra = item("zz-extra", t - timedelta(seconds=1), prio=Priority(1), dur_s=10)
    after = playing_at(items + [extra], t)
    if before is not None and before.item.priority > Priority(1):
        assert after == before


def test_a_short_item_may_still_start_late_inside_its_window():
    from schedules import startable_at
    it = item("short", BASE, dur_s=5, late_start_s=60)
    assert [o.item.id for o in startable_at([it], BASE + timedelta(seconds=30))] == ["short"]
    assert startable_at([it], BASE + timedelta(seconds=61)) == []


def test_overdue_lists_each_closed_window_once():
    from schedules import overdue
    it = item("h", BASE, dur_s=5, rrule="FREQ=HOURLY", late_start_s=60)
    a = overdue([it], BASE, BASE + timedelta(hours=2))
    b = overdue([it], BASE + timedelta(hours=2), BASE + timedelta(hours=3))
    assert [o.start for o in a] == [BASE, BASE + timedelta(hours=1)]
    assert [o.start for o in b] == [BASE + timedelta(hours=2)]


@settings(max_examples=150, deadline=None)
@given(items_st, instant_st, st.integers(1, 7200))
def test_overdue_windows_partition_time(items, a, gap):
    """Sweeping [a, b) then [b, c) finds exactly what sweeping [a, c) finds."""
    from schedules import overdue
    b, c = a + timedelta(seconds=gap), a + timedelta(seconds=2 * gap)
    keys = lambda occ: [o.key for o in occ]
    assert sorted(keys(overdue(items, a, b)) + keys(overdue(items, b, c))) == \
        sorted(keys(overdue(items, a, c)))


# --- occurrence queries cost the same on day 1 and day 1,000 (issue 13) ---------------------

_FREQS = ["YEARLY", "MONTHLY", "WEEKLY", "DAILY", "HOURLY", "MINUTELY"]
_DAYS = ["MO", "TU", "WE", "TH", "FR", "SA", "SU"]


@st.composite
def rules_st(draw):
    freq = draw(st.sampled_from(_FREQS))
    parts = [f"FREQ={freq}", f"INTERVAL={draw(st.integers(1, 5))}"]
    if freq in ("WEEKLY", "DAILY", "MONTHLY", "YEARLY") and draw(st.booleans()):
        parts.append("BYDAY=" + ",".join(draw(st.sets(st.sampled_from(_DAYS), min_size=1))))
    if freq in ("MONTHLY", "YEARLY") and draw(st.booleans()):
        days = draw(st.sets(st.sampled_from([1, 15, 28, 29, 30, 31, -1]), min_size=1))
        parts.append("BYMONTHDAY=" + ",".join(map(str, sorted(days))))
    if freq == "YEARLY" and draw(st.booleans()):
        parts.append("BYMONTH=" + ",".join(map(str, sorted(draw(
            st.sets(st.integers(1, 12), min_size=1, max_size=3))))))
    if freq in ("DAILY", "WEEKLY", "HOURLY") and draw(st.booleans()):
        parts.append("BYHOUR=" + ",".join(map(str, sorted(draw(
            st.sets(st.integers(0, 23), min_size=1, max_size=4))))))
    if freq in ("MONTHLY", "WEEKLY") and "BYDAY" in parts[-1] and draw(st.booleans()):
        parts.append(f"BYSETPOS={draw(st.sampled_from([1, -1, 2]))}")
    if draw(st.integers(0, 4)) == 0:
        parts.append(f"COUNT={draw(st.integers(1, 400))}")
    return ";".join(parts)


# how far into a rule's life a query may lie, so that the reference walk stays affordable
_REACH_S = {"YEARLY": 30 * 365 * 86400, "MONTHLY": 10 * 365 * 86400, "WEEKLY": 3 * 365 * 86400,
            "DAILY": 3 * 365 * 86400, "HOURLY": 120 * 86400, "MINUTELY": 3 * 86400}


_ANCHOR_TRAPS = [  # rules whose defaults come from the start: an anchor must keep them
    ("FREQ=MONTHLY", 14 * 1440 + 360, 400, 40 * 86400),             # day 15 of each month
    ("FREQ=MONTHLY;INTERVAL=2", 30 * 1440 + 360, 700, 90 * 86400),  # the 31st, every 2 months
    ("FREQ=YEARLY", 59 * 1440, 900, 400 * 86400),                   # 29 February
    ("FREQ=WEEKLY;INTERVAL=3;BYDAY=MO,TH", 3 * 1440, 500, 30 * 86400),
    ("FREQ=HOURLY;INTERVAL=5;BYHOUR=1,6,11", 17, 777, 5 * 86400),
    ("FREQ=DAILY;INTERVAL=3;BYHOUR=6,18", 18 * 60 + 5, 321, 20 * 86400),
]


@settings(max_examples=500, deadline=None)
@given(rules_st(),
       st.integers(0, 3 * 365 * 24 * 60), st.integers(0, 1000), st.integers(1, 40 * 24 * 3600))
@example(*_ANCHOR_TRAPS[0])
@example(*_ANCHOR_TRAPS[1])
@example(*_ANCHOR_TRAPS[2])
@example(*_ANCHOR_TRAPS[3])
@example(*_ANCHOR_TRAPS[4])
@example(*_ANCHOR_TRAPS[5])
def test_fast_occurrences_match_a_walk_from_the_first_start(rule, start, later, span):
    """The occurrence queries start near the window, not at the rule's first start; this holds
    them against dateutil walking the whole rule from its first start."""
    from hypothesis import assume
    from dateutil.rrule import rrulestr
    from schedules.evaluate import _starts, next_start
    try:
        it = item("p", datetime(2024, 1, 1, tzinfo=TZ) + timedelta(minutes=start), rrule=rule)
    except ScheduleError:  # a rule with no occurrence at all is refused when it is made
        assume(False)
    lo = it.start + timedelta(seconds=int(later / 1000 * _REACH_S[rule.split(";")[0][5:]]))
    hi = lo + timedelta(seconds=span)
    walk = []
    for d in rrulestr(rule, dtstart=it.start.astimezone(TZ)):
        u = d.astimezone(timezone.utc)
        if u >= hi or len(walk) >= 2000:
            break
        if u >= lo:
            walk.append(u)
    fast = _starts(it, lo, hi)
    assert fast[:len(walk)] == walk and (len(walk) == 2000 or fast == walk)
    first = next(iter(walk), None)
    if first is not None:
        assert next_start(it, lo + timedelta(seconds=it.late_start_s)) == first
    # the same item asked again, earlier and later, answers the same (the anchor is a cache)
    assert _starts(it, lo, hi) == fast


def test_a_three_year_old_programme_costs_what_a_fresh_one_does():
    """Work, not time: the number of occurrences dateutil generates for one runner step."""
    from schedules import startable_at
    from dateutil import rrule as rr
    made = []
    real = rr.rrule._iter

    def counting(self):
        for d in real(self):
            made.append(d)
            yield d
    now = BASE + timedelta(days=3 * 365)
    old = [item(f"o{i}", BASE + timedelta(minutes=7 * i), rrule="FREQ=HOURLY") for i in range(3)]
    fresh = [item(f"f{i}", now - timedelta(hours=2) + timedelta(minutes=7 * i), rrule="FREQ=HOURLY")
             for i in range(3)]
    counts = []
    for items in (old, fresh):
        startable_at(items, now)  # the first query of a bundle sets its anchors
        made.clear()
        rr.rrule._iter = counting
        try:
            for s in range(200):  # 50 hours: the kept windows are rebuilt on the way
                startable_at(items, now + timedelta(minutes=15 * s))
        finally:
            rr.rrule._iter = real
        counts.append(len(made))
    assert 0 < counts[0] <= counts[1] * 1.2, counts
