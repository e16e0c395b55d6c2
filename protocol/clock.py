"""Clocks. Everything that needs the time takes one of these; nothing reads the time itself.

- ``SystemClock``: the machine's clock.
- ``ManualClock``: in-process tests move it by hand.
- ``FileClock``: the machine's clocks plus offsets kept in a file, so a drill or a test can
  step the clock of a running hub or station (like setting a Pi's clock) or let time pass,
  without sleeping. A missing file means no offset.
"""
from __future__ import annotations

import os
import threading
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Callable, Protocol


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
        self._watchers: list[Callable[[], None]] = []

    def watch(self, fn: Callable[[], None]) -> None:
        """Call ``fn`` whenever the clock moves (a simulated amplifier warming up on it)."""
        self._watchers.append(fn)

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
        for fn in list(self._watchers):
            fn()

    def set(self, when: datetime) -> None:
        with self._lock:
            self._now = when.astimezone(timezone.utc)


class FileClock:
    """System time plus offsets kept in a file: ``"<wall offset s> <monotonic offset s>"``.

    ``set_time`` steps the wall clock only, as ``date -s`` or a Pi booting at 1970 does;
    ``pass_time`` makes time go by (wall and monotonic together), as if the process had been
    running all along. Clock-trust checks can tell the two apart, as on real hardware.
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self._cached: tuple[int, tuple[float, float]] | None = None

    def offsets(self) -> tuple[float, float]:
        try:
            st = self.path.stat()
        except FileNotFoundError:
            return (0.0, 0.0)
        if self._cached and self._cached[0] == st.st_mtime_ns:
            return self._cached[1]
        value = _read_offsets(self.path, self._cached[1] if self._cached else (0.0, 0.0))
        self._cached = (st.st_mtime_ns, value)
        return value

    def now(self) -> datetime:
        return datetime.now(timezone.utc) + timedelta(seconds=self.offsets()[0])

    def monotonic(self) -> float:
        return time.monotonic() + self.offsets()[1]

    @staticmethod
    def set_time(path: str | os.PathLike[str], when: datetime) -> None:
        """Step the wall clock to ``when`` (monotonic time does not move)."""
        _, mono = _read_offsets(Path(path), (0.0, 0.0))
        _write_offsets(Path(path), when.timestamp() - time.time(), mono)

    @staticmethod
    def pass_time(path: str | os.PathLike[str], until: datetime) -> None:
        """Let time pass until ``until``: wall and monotonic clocks move forward together."""
        wall, mono = _read_offsets(Path(path), (0.0, 0.0))
        delta = until.timestamp() - (time.time() + wall)
        if delta < 0:
            raise ValueError("time does not pass backwards; use set_time to step a clock")
        _write_offsets(Path(path), wall + delta, mono + delta)


def _read_offsets(path: Path, default: tuple[float, float]) -> tuple[float, float]:
    try:
        parts = path.read_text().split()
        return (float(parts[0]), float(parts[1]) if len(parts) > 1 else 0.0)
    except FileNotFoundError:
        return (0.0, 0.0)
    except (OSError, ValueError, IndexError):
        return default


def _write_offsets(path: Path, wall: float, mono: float) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(f"{wall:.6f} {mono:.6f}\n")
    os.replace(tmp, path)


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
