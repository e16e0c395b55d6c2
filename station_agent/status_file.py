"""The station's own state file, ``data/status.json``, read by `loaxa agent status`, the demo
and the station's local console: written at most every ``EVERY_S``, only when it changed, and
whole (a reader never sees half of it). ``outlook`` works out what plays next and why nothing
plays now, if that is so.
"""
from __future__ import annotations

import json
import os
from datetime import timedelta
from pathlib import Path
from typing import Any

from protocol.clock import Clock, iso
from schedules import occurrences

from .runner import Runner
from .store import StationStore

EVERY_S = 1.0        # the file is built (and written if it changed) at most this often:
                     # building it is the largest part of an idle agent's step (P3)
NEXT_EVERY_S = 10.0  # how often "what plays next" is worked out again
BLOCKING_ALARMS = ("amplifier", "relay", "audio_device", "disk_full")


class StatusFile:
    def __init__(self, path: Path, clock: Clock) -> None:
        self.path = path
        self.clock = clock
        self._last: dict[str, Any] | None = None
        self._written = -1e9

    def due(self) -> bool:
        """Whether the file may be written now (and it is taken as written)."""
        mono = self.clock.monotonic()
        if mono - self._written < EVERY_S:
            return False
        self._written = mono
        return True

    def write(self, st: dict[str, Any]) -> None:
        if st == self._last:
            return
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps({**st, "pid": os.getpid(), "at": iso(self.clock.now())}))
        os.replace(tmp, self.path)
        self._last = st


class Outlook:
    """What plays next (worked out every ``NEXT_EVERY_S`` or when the programme changes) and
    the reasons nothing may play."""

    def __init__(self, store: StationStore, runner: Runner, clock: Clock) -> None:
        self.store = store
        self.runner = runner
        self.clock = clock
        self._next: tuple[float, dict[str, Any] | None] = (-1e9, None)
        self._version: int | None = None

    def __call__(self, *, trusted: bool, trust_detail: str,
                 alarms: dict[str, str]) -> dict[str, Any]:
        now, mono = self.clock.now(), self.clock.monotonic()
        active = self.store.active_bundle()
        version = active[0] if active else None
        if mono - self._next[0] >= NEXT_EVERY_S or version != self._version:
            self._next, self._version = (mono, None), version
            if active:
                items, quiet = self.runner.programme()
                o = next((o for o in occurrences(items, now, now + timedelta(days=2),
                                                 quiet=quiet)
                          if o.start >= now and self.store.play_state(o.key) is None), None)
                if o is not None:
                    self._next = (mono, {"key": o.key, "title": o.item.title,
                                         "start": iso(o.start), "priority": int(o.item.priority),
                                         "content": o.item.content,
                                         "audio_present": self.store.has_audio(o.item.content)})
        why: list[dict[str, str]] = []
        if not trusted:
            why.append({"code": "clock", "detail": trust_detail})
        if self.runner.live_mic_until is not None:
            why.append({"code": "live_mic", "detail": ""})
        pending = self.store.pending_bundle()
        if not active:
            why.append({"code": "no_programme", "detail": ""})
        if pending:
            missing = self.store.missing_audio(list(pending[1].get("content", {})))
            why.append({"code": "pending", "detail": f"v{pending[0]}: {len(missing)}"})
        nxt = self._next[1]
        if nxt and not nxt["audio_present"]:
            why.append({"code": "next_audio_missing", "detail": nxt["content"][:12]})
        for code in BLOCKING_ALARMS:
            detail = alarms.get(code)
            if detail is not None:
                why.append({"code": f"alarm.{code}", "detail": detail})
        return {"next": nxt, "blocked": why}
