from datetime import datetime, timedelta, timezone

from station_agent.clocktrust import ClockTrust

T = datetime(2030, 3, 2, 1, 0, tzinfo=timezone.utc)


def test_time_passing_normally_stays_trusted():
    c = ClockTrust()
    c.start(T, 100.0, T - timedelta(minutes=5))
    for i in range(1, 100):
        assert c.observe(T + timedelta(seconds=i), 100.0 + i) is None
    assert c.trusted


def test_steps_back_forward_and_1970_are_untrusted_until_the_hub_agrees():
    for wall, words in ((T - timedelta(hours=1), "went back 3600s"),
                        (T + timedelta(days=1), "jumped forward 86400s"),
                        (datetime(1970, 1, 1, tzinfo=timezone.utc), "not set")):
        c = ClockTrust()
        c.start(T, 0.0, None)
        change = c.observe(wall, 0.0)  # the wall clock steps; no time passes
        assert change and not change.trusted and words in change.detail, change
        assert c.observe(wall + timedelta(seconds=1), 1.0) is None  # the same anomaly: quiet
        assert not c.trusted
        # the hub says the real time is T: still wrong, still untrusted (a new finding)
        again = c.observe_hub(T, wall)
        assert again and not again.trusted and "differs from the hub" in again.detail
        # fixed (NTP, an operator) and confirmed by the hub
        back = c.observe_hub(T + timedelta(seconds=5), T + timedelta(seconds=5.5))
        assert back and back.trusted


def test_restart_behind_the_last_trusted_time():
    c = ClockTrust()
    change = c.start(T - timedelta(hours=1), 0.0, T)
    assert change and not change.trusted and "behind the last trusted" in change.detail
    c2 = ClockTrust()
    assert c2.start(datetime(1970, 1, 1, tzinfo=timezone.utc), 0.0, None).trusted is False


def test_disagreeing_with_the_hub():
    c = ClockTrust(max_hub_skew_s=60)
    assert c.observe_hub(T, T + timedelta(seconds=59)) is None and c.trusted
    change = c.observe_hub(T, T + timedelta(seconds=61))
    assert change and not change.trusted and "+61s" in change.detail
