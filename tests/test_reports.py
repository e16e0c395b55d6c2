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


def _random_value(rnd, depth=0):
    """A JSON value as events carry them: no floats (refused on the wire)."""
    kinds = ["str", "int", "bool", "none"] + (["dict", "list"] if depth < 3 else [])
    k = rnd.choice(kinds)
    if k == "str":
        return "".join(rnd.choice('aăâđêôơưÀỹ "\\/\n\t\x01\u2028😀{}:,') for _ in
                       range(rnd.randint(0, 12)))
    if k == "int":
        return rnd.choice([0, -1, 7, 2**53 + 1, -(2**63), rnd.randint(-10**6, 10**6)])
    if k == "bool":
        return rnd.random() < 0.5
    if k == "none":
        return None
    if k == "list":
        return [_random_value(rnd, depth + 1) for _ in range(rnd.randint(0, 4))]
    return {rnd.choice(["k", "K", "ư", "\"", "\\", ""]) + str(rnd.randint(0, 20)):
            _random_value(rnd, depth + 1) for _ in range(rnd.randint(0, 5))}


def test_a_report_put_together_from_stored_text_is_the_canonical_report(tmp_path):
    """The agent no longer decodes and re-encodes every queued event to report it: the
    bytes it signs must be exactly ``canonical`` of the same body, or the hub refuses it."""
    import random
    from datetime import datetime, timedelta, timezone

    from protocol.envelope import canonical
    from station_agent.reports import encode_report
    from station_agent.store import StationStore
    rnd = random.Random(20261205)
    store = StationStore(tmp_path / "data")
    t0 = datetime(2030, 1, 1, tzinfo=timezone.utc)
    for i in range(300):
        data = {f"f{j}": _random_value(rnd) for j in range(rnd.randint(0, 6))}
        store.event(rnd.choice(["playback", "alarm", "command", "lịch \"phát\""]), data,
                    t0 + timedelta(seconds=i, microseconds=rnd.randint(0, 999999)))
    state = {"outbox": 3, "missing": ["a" * 64], "alarms": {"clock": "lệch \"1 ngày\""},
             "pending_version": None, "live_mic": False}
    for limit in (1, 7, 100, 500):
        encoded, decoded = store.pending_encoded(limit), store.pending_events(limit)
        assert [e["seq"] for e in encoded] == [e["seq"] for e in decoded]
        assert encode_report(encoded, "2030-01-01T00:00:00.5Z", state) == canonical(
            {"events": decoded, "sent_at": "2030-01-01T00:00:00.5Z", "state": state})
    store.close()


def test_events_queued_before_the_upgrade_are_stored_again_in_canonical_form(tmp_path):
    import json

    from protocol.envelope import canonical
    from station_agent.store import StationStore, m003_canonical_outbox
    store = StationStore(tmp_path / "data")
    old = {"outcome": "played", "detail": "Xã An Bình", "n": {"b": 1, "a": [None, True]}}
    store.db.execute("INSERT INTO outbox(seq, kind, at, data) VALUES (1, 'playback', "
                     "'2030-01-01T00:00:00Z', ?)", [json.dumps(old, ensure_ascii=False)])
    m003_canonical_outbox(store.db)
    [row] = store.pending_encoded()
    assert row["json"].encode("utf-8") == canonical(old)
    assert store.pending_events() == [{"seq": 1, "kind": "playback",
                                       "at": "2030-01-01T00:00:00Z", "data": old}]
    store.close()
