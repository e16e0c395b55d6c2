"""When a station tells the hub it is alive, and how often: plain decisions over (the
programme, now), with no link or store of their own (tests/test_presence.py).

A programme may carry a heightened period (a storm, an election: `loaxa hub heightened`):
while it lasts, heartbeats come at its own interval and its self-test time applies.
"""
from __future__ import annotations

from datetime import datetime
from typing import Any

from protocol.clock import parse_iso


def heightened(programme: dict[str, Any] | None, now: datetime) -> dict[str, Any]:
    """The heightened period of ``programme`` (an active bundle's body) in force at ``now``,
    or {} (none, over, not begun, or unreadable)."""
    h = (programme or {}).get("heightened") or {}
    try:
        return h if parse_iso(h["start"]) <= now < parse_iso(h["end"]) else {}
    except (KeyError, TypeError, ValueError):
        return {}


def heartbeat_interval(period: dict[str, Any], default_s: float) -> float:
    """Seconds between heartbeats: the heightened period's, else the station's own."""
    return float(period.get("heartbeat_s", default_s)) if period else float(default_s)


class Heartbeats:
    def __init__(self) -> None:
        self.sent_at = -1e9  # monotonic

    def due(self, mono: float, interval_s: float, connected: bool) -> bool:
        """Whether a heartbeat goes now; if so, it is counted as sent."""
        if not connected or mono - self.sent_at < interval_s:
            return False
        self.sent_at = mono
        return True

    def now(self) -> None:
        """The next look sends one (a `report` command)."""
        self.sent_at = -1e9
