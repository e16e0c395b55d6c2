"""A player double that keeps the audio.player contract without a sound device: it 'plays'
for the file's real duration and can be told to fail like a broken device."""
from __future__ import annotations

import os
import time

from audio.player import Outcome
from audio.prepare import probe


class DummyPlayback:
    def __init__(self, duration_s: float, fail: str | None) -> None:
        self._end = time.monotonic() + (0.05 if fail else duration_s)
        self._fail = fail
        self.outcome: Outcome | None = None

    def poll(self) -> Outcome | None:
        if self.outcome is None and time.monotonic() >= self._end:
            self.outcome = Outcome(not self._fail, 1 if self._fail else 0, self._fail or "",
                                   False)
        return self.outcome

    def stop(self) -> Outcome:
        if self.outcome is None:
            self.outcome = Outcome(False, -15, "", True)
        return self.outcome

    def wait(self, timeout: float | None = None) -> Outcome:
        while self.poll() is None:
            time.sleep(0.01)
        return self.outcome


class DummyPlayer:
    def __init__(self, device: str = "dummy") -> None:
        self.device = device
        self.failing: str | None = None
        self.started: list[str] = []

    def trigger_failure(self, reason: str) -> None:
        self.failing = reason

    def start(self, path: str | os.PathLike[str]) -> DummyPlayback:
        self.started.append(os.fspath(path))
        return DummyPlayback(probe(path).duration_ms / 1000, self.failing)
