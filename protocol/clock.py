"""Clocks. Everything that needs the time takes one of these; nothing reads the time itself.

- ``SystemClock``: the machine's clock.
- ``ManualClock``: in-process tests move it by hand.
- ``FileClock``: the machine's clock plus an offset kept in a file, so a drill, the demo or a
  test can set the time of a running hub or station process (like setting a Pi's clock)
  without sleeping. The offset file holds seconds as text; a missing file means offset 0.
"""
from __future__ import annotations

import os
import threading
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Protocol


class Clock(Protocol):
    def now(self) -> datetime:  # aware, UTC
        ...

    def monotonic(self) -> float:
        ...


class SystemClock:
    def now(self) -> datetime:
        return datetime.now(timezone.utc)

    def monotonic(self) -> float:
        return time.monotonic()


class ManualClock:
    def __init__(self, start: datetime) -> None:
        if start.tzinfo is None:
            raise ValueError("ManualClock needs an aware datetime")
        self._now = start.astimezone(timezone.utc)
        self._mono = 1000.0
        self._lock = threading.Lock()

    def now(self) -> datetime:
        with self._lock:
            return self._now

    def monotonic(self) -> float:
        with self._lock:
            return self._mono

    def advance(self, seconds: float) -> None:
        with self._lock:
            self._now += timedelta(seconds=seconds)
            self._mono += max(seconds, 0.0)

    def set(self, when: datetime) -> None:
        with self._lock:
            self._now = when.astimezone(timezone.utc)


class FileClock:
    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self._cached: tuple[float, float] | None = None  # (mtime_ns, offset)

    def offset(self) -> float:
        try:
            st = self.path.stat()
        except FileNotFoundError:
            return 0.0
        if self._cached and self._cached[0] == st.st_mtime_ns:
            return self._cached[1]
        try:
            value = float(self.path.read_text().strip() or 0)
        except (OSError, ValueError):
            value = self._cached[1] if self._cached else 0.0
        self._cached = (st.st_mtime_ns, value)
        return value

    def now(self) -> datetime:
        return datetime.now(timezone.utc) + timedelta(seconds=self.offset())

    def monotonic(self) -> float:
        return time.monotonic()

    @staticmethod
    def set_time(path: str | os.PathLike[str], when: datetime) -> None:
        """Make every FileClock on ``path`` read ``when`` from now on (atomic replace)."""
        offset = when.timestamp() - time.time()
        p = Path(path)
        tmp = p.with_suffix(p.suffix + ".tmp")
        tmp.write_text(f"{offset:.6f}\n")
        os.replace(tmp, p)


def make_clock(spec: str | None) -> Clock:
    """``None``/``"system"`` -> SystemClock; ``"file:PATH"`` -> FileClock."""
    if not spec or spec == "system":
        return SystemClock()
    if spec.startswith("file:"):
        return FileClock(spec[5:])
    raise ValueError(f"unknown clock {spec!r}: use 'system' or 'file:PATH'")


def iso(dt: datetime) -> str:
    """UTC, millisecond precision, 'Z' suffix: the only time format on the wire."""
    if dt.tzinfo is None:
        raise ValueError("naive datetime")
    return dt.astimezone(timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def parse_iso(text: str) -> datetime:
    if not isinstance(text, str) or not text.endswith("Z"):
        raise ValueError(f"not a UTC timestamp: {text!r}")
    dt = datetime.fromisoformat(text[:-1] + "+00:00")
    return dt.astimezone(timezone.utc)
