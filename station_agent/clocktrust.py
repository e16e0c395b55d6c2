"""Whether the station may trust its own clock (a Pi has no battery clock).

Plain decisions over observations: the wall clock against the monotonic clock (a step
backwards or a jump), against a floor (a clock that restarted at 1970), against the last
time the station trusted (kept across restarts), and against the hub's time learned from its
messages. Only the hub's time, agreeing within a bound, restores trust.
"""
from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timezone

FLOOR = datetime(2025, 1, 1, tzinfo=timezone.utc)


@dataclass(frozen=True)
class Change:
    trusted: bool
    detail: str


class ClockTrust:
    def __init__(self, *, max_step_s: float = 30.0, max_hub_skew_s: float = 60.0,
                 floor: datetime = FLOOR) -> None:
        self.max_step_s = max_step_s
        self.max_hub_skew_s = max_hub_skew_s
        self.floor = floor
        self.trusted = True
        self.detail = ""
        self._last: tuple[datetime, float] | None = None

    def _set(self, trusted: bool, detail: str) -> Change | None:
        """A Change on every transition, and on each new anomaly while untrusted (so the
        station asks the hub's time again)."""
        if trusted == self.trusted:
            if not trusted and detail != self.detail:
                self.detail = detail
                return Change(False, detail)
            return None
        self.trusted, self.detail = trusted, detail
        return Change(trusted, detail)

    def start(self, wall: datetime, mono: float, last_trusted: datetime | None) -> Change | None:
        """At process start: before the floor, or behind the last trusted time, is untrusted."""
        self._last = (wall, mono)
        if wall < self.floor:
            return self._set(False, f"clock reads {wall:%Y-%m-%d}, before {self.floor:%Y}: not set")
        if last_trusted and (last_trusted - wall).total_seconds() > self.max_step_s:
            behind = (last_trusted - wall).total_seconds()
            return self._set(False, f"clock is {behind:.0f}s behind the last trusted time")
        return None

    def distrust(self, detail: str) -> Change | None:
        """Untrusted until the hub's time says otherwise (a clock alarm held over a restart)."""
        return self._set(False, detail)

    def observe(self, wall: datetime, mono: float) -> Change | None:
        """Each tick: the wall clock must move with the monotonic clock."""
        last, self._last = self._last, (wall, mono)
        if wall < self.floor:
            return self._set(False, f"clock reads {wall:%Y-%m-%d}: not set")
        if last is None:
            return None
        drift = (wall - last[0]).total_seconds() - (mono - last[1])
        if drift < -self.max_step_s:
            return self._set(False, f"clock went back {-drift:.0f}s")
        if drift > self.max_step_s:
            return self._set(False, f"clock jumped forward {drift:.0f}s")
        return None

    def observe_hub(self, hub_time: datetime, wall: datetime) -> Change | None:
        """A fresh message from the hub, signed at ``hub_time``."""
        skew = (wall - hub_time).total_seconds()
        if abs(skew) > self.max_hub_skew_s:
            return self._set(False, f"clock differs from the hub's by {skew:+.0f}s")
        return self._set(True, f"agrees with the hub ({skew:+.1f}s)")
