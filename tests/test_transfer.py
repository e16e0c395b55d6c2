"""The download decisions (station_agent/transfer.py) as plain functions of (state, event,
now): no broker, no store, no sleeping."""
from station_agent.transfer import FETCH_WINDOW, Transfers

SHA = "ab" * 32
MB = 1_000_000


def test_a_pushed_file_is_taken_as_it_comes_and_fetched_only_when_it_stops():
    t = Transfers(retry_s=15)
    assert not t.active and t.due_at() == float("inf")
    t.expect_push(SHA, MB, mono=100.0, grace_s=3.0)
    assert t.active and t.expects(SHA)
    assert t.to_ask([SHA], 101.0) == []           # within the grace: not asked for
    assert t.due_at() == 103.0                    # when the grace runs out
    assert t.chunk(SHA, 0, have=0) == "take"
    assert t.appended(SHA, 256 * 1024, MB, mono=101.5) is False  # a push asks no windows
    assert t.to_ask([SHA], 110.0) == []           # progress: not asked for
    assert t.to_ask([SHA], 116.6) == [SHA]        # stalled retry_s: asked for from where it is
    t.asked(SHA, 256 * 1024, 116.6)
    assert t.window_end[SHA] == 256 * 1024 + FETCH_WINDOW
    t.expect_push(SHA, MB, mono=117.0)            # a second push of it changes nothing
    assert t.progress[SHA] == 116.6


def test_a_fetch_asks_the_next_window_as_the_last_one_completes():
    t = Transfers(retry_s=15, window=100)
    assert t.to_ask([SHA], 0.0) == [SHA]          # missing and not on its way
    t.asked(SHA, 0, 0.0)
    assert t.chunk(SHA, 0, have=0) == "take"
    assert t.appended(SHA, 60, 250, 0.1) is False  # the window is not in yet
    assert t.chunk(SHA, 60, have=60) == "take"
    assert t.appended(SHA, 100, 250, 0.2) is True  # it is: ask the next one
    t.asked(SHA, 100, 0.2)
    assert t.chunk(SHA, 100, have=100) == "take"
    assert t.appended(SHA, 250, 250, 0.3) is False  # whole: nothing more to ask
    t.done(SHA)
    assert not t.active and t.due_at() == float("inf")


def test_chunks_out_of_order_or_unasked_change_nothing_but_a_gap_asks_at_once():
    t = Transfers(retry_s=15)
    assert t.chunk(SHA, 0, have=0) == "unexpected"  # nobody asked for it
    assert not t.active
    t.asked(SHA, 0, 10.0)
    assert t.chunk(SHA, 0, have=500) == "again"     # held already
    assert t.progress[SHA] == 10.0
    assert t.chunk(SHA, 900, have=500) == "gap"     # a chunk was lost on the way
    assert t.due_at() == float("-inf")
    assert t.look(10.1) is True                     # looked at at once, whatever the pace
    assert t.to_ask([SHA], 10.1) == [SHA]


def test_looks_are_paced_and_a_new_connection_asks_again_for_everything_on_its_way():
    t = Transfers(retry_s=15, look_every_s=0.5)
    t.asked(SHA, 0, 50.0)
    assert t.look(50.0) is True
    assert t.look(50.2) is False                    # paced
    assert t.look(50.6) is True
    t.look_now()                                    # a programme or a command came
    assert t.look(50.7) is True
    t.reconnected()
    assert t.due_at() == float("-inf")
    assert t.to_ask([SHA], 50.8) == [SHA]


def test_with_nothing_on_its_way_missing_audio_is_looked_over_seldom_but_at_once_when_told():
    """An idle agent steps about once a second; looking over every file of a 100-item
    programme each time was a tenth of its idle CPU (P3)."""
    from station_agent.transfer import IDLE_LOOK_S
    t = Transfers(retry_s=15, look_every_s=0.5)
    assert t.look(100.0) is True
    assert t.look(100.6) is False                   # idle: not every step
    assert t.look(100.0 + IDLE_LOOK_S) is True      # a file lost on disk is found
    t.look_now()                                    # a new programme or command
    assert t.look(100.1 + IDLE_LOOK_S) is True
    t.asked(SHA, 0, 111.0)                          # on its way: the transfer's pace
    assert t.look(111.0) is True and t.look(111.6) is True
