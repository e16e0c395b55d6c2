"""Audio on its way to a station, pushed by the hub or fetched window by window: the decisions
of a download as plain functions of (state, event, now), with no broker, store or clock of
their own. The agent does what they say (asks for a window, appends a chunk, keeps the file)
and tells them what happened; tests drive them with numbers (tests/test_transfer.py).

A file is *expected* from the moment the station knows it needs it and will take it: a
programme or a command that pushes it (its chunks are taken as they come, and the station asks
for it itself only if they stop coming for a grace period), or a window asked for. Each chunk
that lands is progress; a file that makes no progress for ``retry_s`` is asked for again from
where it stands; a gap (a chunk beyond what the station holds, a new connection) asks at once.
"""
from __future__ import annotations

FETCH_WINDOW = 256 * 1024  # bytes asked for at a time: a re-request repeats at most this
REQUEST_EVERY_S = 0.5      # how often missing audio is looked over while a transfer runs
IDLE_LOOK_S = 10.0         # ... and with nothing on its way (a new programme or command
                           # asks for a look at once: this finds a file lost on disk)
PUSH_GRACE_S = 3.0         # a pushed file that makes no progress this long is fetched
PROGRAMME_PUSH_GRACE_S = 10.0  # ... for a programme's audio, which is not needed this minute
AT_ONCE = -1e9             # "last progress" of a file to be asked for at the next look


class Transfers:
    def __init__(self, retry_s: float, *, window: int = FETCH_WINDOW,
                 look_every_s: float = REQUEST_EVERY_S) -> None:
        self.retry_s = float(retry_s)
        self.window = window
        self.look_every_s = look_every_s
        self.progress: dict[str, float] = {}   # sha -> monotonic time of its last progress
        self.window_end: dict[str, int] = {}   # sha -> end of the window asked for
        self.looked_at = AT_ONCE               # when missing audio was last looked over

    # -- what the agent asks --------------------------------------------------------------
    @property
    def active(self) -> bool:
        """Audio on its way (pushed or fetched)."""
        return bool(self.progress)

    def expects(self, sha: str) -> bool:
        return sha in self.progress

    def due_at(self) -> float:
        """The monotonic instant the next look has something to ask (a push that stopped, a
        fetch to retry): -inf for a gap, inf with nothing on its way."""
        if not self.progress:
            return float("inf")
        oldest = min(self.progress.values())
        if oldest <= AT_ONCE / 10:
            return float("-inf")
        return max(oldest + self.retry_s, self.looked_at + self.look_every_s)

    def look(self, mono: float) -> bool:
        """Whether to look over the missing audio now (decisions on the scale of seconds: not
        every step of a transfer, unless a gap asked for it); if so, the look is recorded."""
        every = self.look_every_s if self.progress else max(self.look_every_s, IDLE_LOOK_S)
        if mono - self.looked_at < every and \
                not any(v <= AT_ONCE / 10 for v in self.progress.values()):
            return False
        self.looked_at = mono
        return True

    def to_ask(self, missing: list[str], mono: float) -> list[str]:
        """Of the files missing, those to ask a window of now: not on their way, or with no
        progress for ``retry_s``."""
        return [sha for sha in missing
                if (last := self.progress.get(sha)) is None or mono - last >= self.retry_s]

    def chunk(self, sha: str, offset: int, have: int) -> str:
        """A chunk of ``sha`` at ``offset`` while ``have`` bytes are held: ``"take"`` (append
        it), ``"unexpected"`` (not on its way: ignored), ``"gap"`` (beyond what is held: it
        is asked for again from there at the next look) or ``"again"`` (already held)."""
        if sha not in self.progress:
            return "unexpected"
        if offset > have:
            self.progress[sha] = AT_ONCE
            return "gap"
        return "again" if offset < have else "take"

    # -- what the agent tells ---------------------------------------------------------------
    def expect_push(self, sha: str, size: int, mono: float, grace_s: float = PUSH_GRACE_S) -> None:
        """The hub pushes ``sha`` (``size`` bytes) to all of its targets: its chunks are taken
        as they come; asked for only after ``grace_s`` without progress. No window is asked
        while the push progresses."""
        if sha in self.progress:
            return
        self.progress[sha] = mono - self.retry_s + grace_s
        self.window_end[sha] = size

    def look_now(self) -> None:
        """Something new may need audio (a programme, a command): look at the next step."""
        self.looked_at = AT_ONCE

    def reconnected(self) -> None:
        """A new connection: what was on its way may have been lost with the old one."""
        for sha in self.progress:
            self.progress[sha] = AT_ONCE

    def asked(self, sha: str, offset: int, mono: float) -> None:
        """A window from ``offset`` was asked for."""
        self.progress[sha] = mono
        self.window_end[sha] = offset + self.window

    def appended(self, sha: str, size: int, total: int, mono: float) -> bool:
        """A chunk was appended; ``size`` bytes of ``total`` held. True: ask the next window
        now (the one asked for is in)."""
        self.progress[sha] = mono
        return size < total and size >= self.window_end.get(sha, 0)

    def done(self, sha: str) -> None:
        """Held whole and verified, or given up (no room): nothing more on its way."""
        self.progress.pop(sha, None)
        self.window_end.pop(sha, None)
