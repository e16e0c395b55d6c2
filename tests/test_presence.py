"""When a station says it is alive (station_agent/presence.py): plain decisions over (the
programme, now), no link or store."""
from datetime import datetime, timedelta, timezone

from station_agent.presence import Heartbeats, heartbeat_interval, heightened

T = datetime(2030, 9, 1, 6, 0, tzinfo=timezone.utc)
STORM = {"heightened": {"start": "2030-09-01T00:00:00.000Z", "end": "2030-09-02T00:00:00.000Z",
                        "heartbeat_s": 15, "selftest_at": "05:00"}}


def test_a_heightened_period_applies_while_it_lasts_and_only_then():
    assert heightened(STORM, T)["heartbeat_s"] == 15
    assert heightened(STORM, T + timedelta(days=1)) == {}       # over (its end excluded)
    assert heightened(STORM, T - timedelta(hours=7)) == {}      # not begun
    assert heightened(None, T) == {} and heightened({}, T) == {}
    assert heightened({"heightened": {"start": "yesterday"}}, T) == {}  # unreadable: none
    assert heartbeat_interval(heightened(STORM, T), 60) == 15.0
    assert heartbeat_interval({}, 60) == 60.0


def test_heartbeats_go_at_their_interval_while_connected_and_at_once_when_asked():
    h = Heartbeats()
    assert h.due(100.0, 60, connected=False) is False  # nobody to tell
    assert h.due(100.0, 60, connected=True) is True
    assert h.due(130.0, 60, connected=True) is False
    assert h.due(130.0, 15, connected=True) is True    # a heightened period began
    h.now()                                            # a `report` command
    assert h.due(131.0, 60, connected=True) is True
