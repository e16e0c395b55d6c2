"""Signed commands from the hub: play, stop, volume, selftest, zone_test, report
(docs/protocol.md, "Commands").

``parse`` and ``check_fresh`` are plain decisions over an envelope that has already passed its
signature check; ``Commands`` carries a command out against the runner and the store and
reports each step as a ``command`` event (accepted, refused, started, done, failed). A command
is recorded, with its sequence, before anything is done: it runs at most once, whatever
crashes, and a redelivery of the same id changes nothing.
"""
from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Callable

from protocol import chunks
from protocol.clock import iso
from protocol.envelope import Envelope, Reason, Refused
from protocol.topics import Topics
from schedules import Item, Priority

from .update import UpdateRefused, check_body

log = logging.getLogger("loaxa.commands")
ACTIONS = ("play", "stop", "volume", "selftest", "zone_test", "report", "update")
ID_RE = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
MAX_REPEAT = 10
MAX_GAP_S = 24 * 3600
MAX_DURATION_MS = 4 * 3600 * 1000


@dataclass(frozen=True)
class Command:
    id: str
    stream: str    # its target ("station:S", "group:G", "all"), whose sequence it follows
    seq: int
    action: str
    body: dict[str, Any]
    iat: datetime
    exp: datetime


def stream_of(topics: Topics, topic: str, station: str, groups: tuple[str, ...]) -> str | None:
    """The target a command topic addresses, if it is one this station listens to."""
    if topic == topics.command(station):
        return f"station:{station}"
    if topic == topics.all_command():
        return "all"
    for g in groups:
        if topic == topics.group_command(g):
            return f"group:{g}"
    return None


def _int(b: dict, key: str, lo: int, hi: int, default: int | None = None) -> int:
    v = b.get(key, default)
    if not isinstance(v, int) or isinstance(v, bool) or not lo <= v <= hi:
        raise Refused(Reason.MALFORMED, f"command field {key!r} must be an integer {lo}-{hi}")
    return v


def parse(env: Envelope, stream: str) -> Command:
    """A verified ``command`` envelope -> Command, or Refused (malformed; ``wrong_station``
    when its target is not the topic it came on: a command moved to another topic)."""
    b = env.body
    cid = b.get("id")
    if not isinstance(cid, str) or not ID_RE.match(cid):
        raise Refused(Reason.MALFORMED, "command without a valid id")
    if b.get("target") != stream:
        raise Refused(Reason.WRONG_STATION, f"command for {b.get('target')!r} arrived on the "
                      f"topic of {stream!r}")
    action = b.get("action")
    if action not in ACTIONS:
        raise Refused(Reason.MALFORMED, f"unknown command action {action!r}")
    if action == "play":
        url = b.get("stream")
        if url is not None and not (isinstance(url, str) and url.startswith("https://")):
            raise Refused(Reason.MALFORMED, "a relayed stream must be an https:// URL")
        sha = b.get("content")
        if not (isinstance(sha, str) and chunks.SHA_RE.match(sha)):
            raise Refused(Reason.MALFORMED, "play without content (SHA-256)")
        _int(b, "size", 1, 1 << 40)
        _int(b, "duration_ms", 1, MAX_DURATION_MS)
        _int(b, "priority", 1, 3)
        _int(b, "repeat", 1, MAX_REPEAT, 1)
        _int(b, "gap_s", 0, MAX_GAP_S, 0)
    elif action == "stop":
        scope = b.get("scope", "current")
        if scope not in ("current", "item", "priority"):
            raise Refused(Reason.MALFORMED, f"unknown stop scope {scope!r}")
        if scope == "item" and not (isinstance(b.get("item"), str) and ID_RE.match(b["item"])):
            raise Refused(Reason.MALFORMED, "stop of an item without its id")
        if scope == "priority":
            _int(b, "priority", 1, 3)
    elif action == "volume":
        _int(b, "level", 0, 100)
    elif action == "update":
        try:
            check_body(b)
        except ValueError as exc:
            raise Refused(Reason.MALFORMED, str(exc)) from None
    return Command(cid, stream, env.seq, action, b, env.iat, env.exp)


def check_fresh(cmd: Command, *, trusted: bool, now: datetime,
                hub_now: datetime | None) -> None:
    """Expired commands are refused. The station's own clock judges when it is trusted;
    otherwise the newest hub time it has verified, moved on by its monotonic clock
    (``HubTime``); with neither (a new station at 1970 that has never heard the hub) a command
    is taken on its signature and sequence alone. Replays are refused by sequence and id in
    every case (docs/protocol.md, "Whose clock")."""
    judge = now if trusted else hub_now
    if judge is not None and cmd.exp <= judge:
        raise Refused(Reason.EXPIRED, f"command {cmd.id} expired {iso(cmd.exp)}, "
                      f"{'now' if trusted else 'hub time about'} {iso(judge)}")


class HubTime:
    """The hub's time as far as this station knows it: the newest ``iat`` of a verified hub
    message and the monotonic instant it was seen. Kept as a floor across restarts."""

    def __init__(self, floor: datetime | None = None) -> None:
        self._at: tuple[datetime, float | None] | None = (floor, None) if floor else None

    def saw(self, hub_time: datetime, mono: float) -> bool:
        """Returns True when this moved the estimate forward (worth persisting)."""
        cur = self.estimate(mono)
        if cur is not None and hub_time <= cur:
            return False
        self._at = (hub_time, mono)
        return True

    def estimate(self, mono: float) -> datetime | None:
        if self._at is None:
            return None
        t, seen = self._at
        return t if seen is None else t + timedelta(seconds=max(0.0, mono - seen))


class Commands:
    def __init__(self, *, store: Any, runner: Any, clock: Any, player: Any,
                 report_now: Callable[[], None],
                 expect_push: Callable[[str, int], None] = lambda sha, size: None) -> None:
        self.store = store
        self.expect_push = expect_push
        self.runner = runner
        self.clock = clock
        self.player = player
        self.report_now = report_now
        self._plays: dict[str, dict[str, Any]] = {}   # command id -> its plays' progress
        self._unsettled: list[tuple[str, str, datetime]] = []  # started, not yet recorded
        self.content: dict[str, dict[str, int]] = {}  # audio commanded plays need, with size
        self.extra_wanted: dict[str, dict[str, int]] = {}  # a release being fetched (update)
        # station_agent/update.py: (done already, detail), or UpdateRefused
        self.on_update: Callable[[str, dict], tuple[bool, str]] | None = None
        runner.on_record = self._on_record
        level = store.get("volume.level")
        if level is not None and hasattr(player, "volume"):
            player.volume = int(level) / 100

    def recover(self) -> int:
        """After a restart: commands that were accepted or running when the agent stopped end
        as ``failed`` once (a play is never started twice, as with scheduled plays)."""
        now = self.clock.now()
        # an update outlives restarts by design: station_agent/update.py settles it
        rows = [r for r in self.store.unfinished_commands() if r["action"] != "update"]
        for r in rows:
            self.store.command_progress(r["id"], "failed", "agent restarted before the "
                                        "command finished", now, {"step": r["state"]})
        return len(rows)

    # -- intake ----------------------------------------------------------------------------
    def handle(self, env: Envelope, stream: str, *, trusted: bool,
               hub_now: datetime | None) -> str | None:
        """Take a verified command envelope. Returns None for a redelivery (QoS 1: nothing
        to do), else the command id. Raises Refused; a refusal of a command whose id is known
        is also reported under that id."""
        cmd = parse(env, stream)
        if self.store.command_state(cmd.id) is not None:
            self.store.bump("ignored.command_again")
            return None
        try:
            last = self.store.last_command_seq(stream)
            if cmd.seq <= last:
                raise Refused(Reason.REPLAYED, f"command {cmd.id} has seq {cmd.seq}, not after "
                              f"{last} on {stream}")
            check_fresh(cmd, trusted=trusted, now=self.clock.now(), hub_now=hub_now)
        except Refused as r:
            self.store.refuse_command(cmd.id, cmd.action, r.reason.value, r.detail,
                                      self.clock.now())
            raise
        self.store.accept_command(cmd.id, stream, cmd.seq, cmd.action, cmd.body, cmd.exp,
                                  self.clock.now())
        log.info("command %s %s accepted (%s)", cmd.action, cmd.id, stream)
        remaining = max(5.0, (cmd.exp - (self.clock.now() if trusted else
                                         (hub_now or cmd.iat))).total_seconds())
        getattr(self, f"_{cmd.action}")(cmd, remaining)
        return cmd.id

    # -- actions ---------------------------------------------------------------------------
    def _play(self, cmd: Command, remaining_s: float) -> None:
        b = cmd.body
        repeat, gap = int(b.get("repeat", 1)), int(b.get("gap_s", 0))
        self.content[b["content"]] = {"size": int(b["size"]), "duration_ms": b["duration_ms"]}
        if b.get("push"):
            self.expect_push(b["content"], int(b["size"]))
        self._plays[cmd.id] = {"total": repeat, "ended": [], "started": False,
                               "issued": cmd.iat}
        now = self.clock.now()
        for k in range(repeat):
            item = Item(f"cmd-{cmd.id}-{k}", b["content"], int(b["duration_ms"]),
                        Priority(int(b["priority"])), now, late_start_s=0,
                        title=str(b.get("title", ""))[:200], stream=b.get("stream"))
            self.runner.queue(item, after_s=k * (int(b["duration_ms"]) / 1000 + gap),
                              within_s=remaining_s)

    def _stop(self, cmd: Command, remaining_s: float) -> None:
        b = cmd.body
        scope = b.get("scope", "current")
        if scope == "current":
            cur = self.runner.current
            stopped = self.runner.stop_where(lambda it: cur is not None and it == cur.occ.item,
                                             f"stopped by command {cmd.id}")
        elif scope == "item":
            target = b["item"]
            stopped = self.runner.stop_where(
                lambda it: it.id == target or it.id.startswith(f"cmd-{target}-"),
                f"stopped by command {cmd.id}")
        else:
            p = int(b["priority"])
            stopped = self.runner.stop_where(lambda it: int(it.priority) <= p,
                                             f"stopped by command {cmd.id}")
        self.store.command_progress(cmd.id, "done", f"stopped {len(stopped)}",
                                    self.clock.now(), {"stopped": stopped})

    def set_volume(self, level: int) -> None:
        """0-100, remembered across restarts; the hub's `volume` and the station's own page."""
        self.player.volume = level / 100  # 100 = as prepared (loudness-normalised)
        self.store.put("volume.level", level)

    def _volume(self, cmd: Command, remaining_s: float) -> None:
        level = int(cmd.body["level"])
        self.set_volume(level)
        self.store.command_progress(cmd.id, "done", f"volume {level}", self.clock.now())

    def _selftest(self, cmd: Command, remaining_s: float) -> None:
        if not self.runner.selftest_now(f"command {cmd.id}", item_id=f"cmd-{cmd.id}-0"):
            self.store.command_progress(cmd.id, "failed", "the air is busy: try again after "
                                        "this item", self.clock.now(), {"step": "busy"})
            return
        self._plays[cmd.id] = {"total": 1, "ended": [], "started": False}

    _zone_test = _selftest  # the silent sequence checks every zone relay's feedback contact

    def _report(self, cmd: Command, remaining_s: float) -> None:
        self.report_now()
        self.store.command_progress(cmd.id, "done", "state and health sent", self.clock.now())

    def _update(self, cmd: Command, remaining_s: float) -> None:
        try:
            if self.on_update is None:
                raise UpdateRefused("this agent does not take updates")
            done, detail = self.on_update(cmd.id, cmd.body)
        except UpdateRefused as exc:
            self.store.command_progress(cmd.id, "failed", str(exc), self.clock.now(),
                                        {"step": "refused"})
            return
        self.store.command_progress(cmd.id, "done" if done else "started", detail,
                                    self.clock.now(), {"step": "fetch"})

    # -- progress --------------------------------------------------------------------------
    def _on_record(self, key: str, item_id: str, outcome: str, detail: str) -> None:
        """Every play record; those of commanded plays advance their command."""
        if not item_id.startswith("cmd-"):
            return
        cid = item_id[4:].rsplit("-", 1)[0]
        track = self._plays.get(cid)
        if track is None:
            return
        now = self.clock.now()
        if outcome == "started":
            if not track["started"]:
                # written after the sound has started, by settle(): the station's turn
                # ends with it (a fleet settles after every station's turn)
                track["started"] = True
                self._unsettled.append((cid, key, now))
            return
        self.settle()  # "started" before what follows it
        track["ended"].append(outcome)
        if len(track["ended"]) < track["total"]:
            return
        del self._plays[cid]
        ok = all(o in ("played", "fallback", "passed") for o in track["ended"])
        self.store.command_progress(cid, "done" if ok else "failed",
                                    detail or ", ".join(track["ended"]), now,
                                    {"outcomes": track["ended"]})

    def issued_at(self, item_id: str) -> datetime | None:
        """When the hub issued the command behind a commanded play in progress."""
        if not item_id.startswith("cmd-"):
            return None
        track = self._plays.get(item_id[4:].rsplit("-", 1)[0])
        return track.get("issued") if track else None

    def settle(self) -> bool:
        """Record the commanded plays that started since the last call (``started`` events:
        bookkeeping after the sound, not before it). True if there was any."""
        any_ = bool(self._unsettled)
        while self._unsettled:  # one at a time: a failed write is tried again next turn
            cid, key, at = self._unsettled[0]
            self.store.command_progress(cid, "started", key, at)
            self._unsettled.pop(0)
        return any_

    def wanted_meta(self, sha: str) -> dict[str, int] | None:
        """``wanted().get(sha)``, without copying the map."""
        if sha in self.extra_wanted:
            return self.extra_wanted[sha]
        if sha not in self.content:
            return None
        return self.wanted().get(sha)

    def wanted(self) -> dict[str, dict[str, int]]:
        """Audio still needed by commanded plays that may yet start."""
        need = {q.item.content for q in self.runner.queued}
        self.content = {s: m for s, m in self.content.items() if s in need}
        return {**self.content, **self.extra_wanted}
