"""The outbox's send decisions (station_agent/reports.py) as plain functions of (state, event,
now): no broker, no store, no sleeping."""
from station_agent.reports import Reports


def events(*seqs):
    return [{"seq": s, "kind": "playback", "at": "", "data": {}} for s in seqs]


def test_reports_go_once_then_again_with_a_doubling_wait_until_acknowledged():
    r = Reports(retry_s=10, max_s=40)
    assert r.should_read(appended=2, mono=0.0)
    batch = r.choose(events(1, 2), 0.0)
    assert [e["seq"] for e in batch] == [1, 2] and r.retry_s == 10
    r.published(batch, 0.0)
    assert not r.should_read(appended=2, mono=5.0)   # nothing new, nothing due
    assert r.should_read(appended=2, mono=10.0)      # due again
    again = r.choose(events(1, 2), 10.0)
    assert [e["seq"] for e in again] == [1, 2] and r.retry_s == 20  # a resend: wait longer
    r.published(again, 10.0)
    assert r.choose(events(1, 2), 25.0) == []         # 15 s < 20 s
    r.published(r.choose(events(1, 2), 30.0), 30.0)
    assert r.retry_s == 40
    r.published(r.choose(events(1, 2), 70.0), 70.0)
    assert r.retry_s == 40                           # capped
    r.acknowledged([1, 2])
    assert r.retry_s == 10 and r.sent == {}


def test_new_events_go_beside_the_ones_in_flight_and_are_counted_with_them():
    r = Reports(retry_s=10)
    r.should_read(1, 0.0)
    r.published(r.choose(events(1), 0.0), 0.0)
    assert r.should_read(appended=2, mono=1.0)       # something was added
    batch = r.choose(events(1, 2), 1.0)
    assert [e["seq"] for e in batch] == [2]          # 1 is in flight, not due
    assert r.in_flight(batch) == 2
    assert r.retry_s == 10                           # nothing was resent


def test_an_ack_or_a_new_connection_lets_everything_unacknowledged_go_at_once():
    r = Reports(retry_s=10)
    r.should_read(3, 0.0)
    r.published(r.choose(events(1, 2, 3), 0.0), 0.0)
    r.published(r.choose(events(1, 2, 3), 10.0), 10.0)  # resent: the wait doubled
    r.acknowledged([1])
    assert r.should_read(appended=3, mono=10.5)       # the ack reopens the outbox
    assert [e["seq"] for e in r.choose(events(2, 3), 10.5)] == []  # 2 and 3 sent 0.5 s ago
    r.resend_all()
    assert r.should_read(appended=3, mono=11.0)
    assert [e["seq"] for e in r.choose(events(2, 3), 11.0)] == [2, 3]
