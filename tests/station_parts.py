"""A station's parts for tests without a broker: a real store, alarm book, simulated board,
runner and command book, on an injected clock, with the fleet's null player (it records
nothing and plays on that clock, so nothing here waits on real time)."""
from __future__ import annotations

from datetime import datetime, timezone

from hardware import Wiring, open_board
from protocol.clock import ManualClock
from station_agent.alarms import Alarms
from station_agent.commands import Commands
from station_agent.runner import Runner
from station_agent.simfleet import NullPlayer
from station_agent.store import StationStore

T0 = datetime(2030, 1, 1, 1, 0, tzinfo=timezone.utc)


class Parts:
    def __init__(self, tmp, wiring: Wiring | None = None) -> None:
        self.clock = ManualClock(T0)
        self.store = StationStore(tmp / "s")
        self.alarms = Alarms(self.store, self.clock)
        self.board = open_board("simulated", wiring or Wiring(), clock=self.clock)
        self.player = NullPlayer(self.clock, lambda content, at: None)
        self.runner = Runner(store=self.store, board=self.board, player=self.player,
                             clock=self.clock, warmup_ms=0, power_good_timeout_ms=1000,
                             alarm=self.alarms.set)
        self.commands = Commands(store=self.store, runner=self.runner, clock=self.clock,
                                 player=self.player, report_now=lambda: None)

    def close(self) -> None:
        self.board.close()
        self.store.close()


def parts_fixture(make):
    """A pytest fixture body: ``make(tmp_path)`` built, yielded, closed."""
    def fixture(tmp_path):
        p = make(tmp_path)
        yield p
        p.close()
    return fixture
