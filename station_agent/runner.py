"""What plays now: amplifier relay on -> power-good -> warm-up -> play -> relay off.

Driven by ``tick()``; the clock is injected, so tests move time instead of sleeping. The
decision of *what* should be on air is ``schedules.playing_at``; this module only carries it
out against the board and the player and records every outcome.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, replace
from datetime import datetime, time, timedelta
from typing import Any, Callable

from protocol.clock import Clock, iso, parse_iso
from schedules import (TZ, Item, Occurrence, Priority, QuietHours, overdue, startable_at,
                       starting_within)

from .store import StationStore

BUSY_TURN_S = 0.05  # the turn while a sequence or a play is in progress
QUIET_HORIZON_S = 60.0  # how far ahead an idle turn looks for the next start
log = logging.getLogger("loaxa.runner")
MISSED_LOOKBACK = timedelta(days=1)
ZONE_SETTLE_S = 0.03  # relay contacts settle in ~10 ms; feedback is read after this
CHECKPOINT_EVERY_S = 60.0
PREROLL_MARGIN_S = 0.25   # pre-roll this much more than the sequence is expected to take
POWER_GOOD_GUESS_S = 1.0  # the amplifier's power-good delay until one has been measured


@dataclass
class _Current:
    occ: Occurrence
    relay_on_at: datetime
    relay_on_mono: float
    power_good_at: datetime | None = None
    power_good_mono: float | None = None
    zones_on_at: datetime | None = None
    zones_on_mono: float | None = None
    playback: Any = None
    play_mono: float | None = None      # when the current player started
    sense_samples: int = 0              # audio-sense readings during playback
    sense_sound: int = 0                # ... of which heard sound
    stream_failure: str | None = None   # why a relay fell back to its fallback content
    selftest: bool = False              # a silent self-test: the sequence without audio
    key: str | None = None              # the record's key, if not the occurrence's
    preroll: bool = False               # begun before its instant; no sound until then
    armed: Any = None                   # its player made ready during the pre-roll


@dataclass
class Queued:
    """A play the hub commanded (``play``): it starts when it is the best thing to play, judged
    by priority exactly as a scheduled item, from ``not_before`` until ``deadline``
    (monotonic seconds: a command must play even while the wall clock is not trusted)."""

    item: Item          # id "cmd-<command id>-<n>"; its start is set when it starts
    not_before: float
    deadline: float


class Runner:
    def __init__(self, *, store: StationStore, board: Any, player: Any, clock: Clock,
                 warmup_ms: int = 500, power_good_timeout_ms: int = 3000,
                 alarm: Callable[[str, bool, str], None] | None = None,
                 stream_stall_s: float = 5.0, hold_ms: int = 0, preroll: bool = True,
                 selftest_at: str | None = None) -> None:
        self.store = store
        self.board = board
        self.player = player
        self.clock = clock
        self.warmup_s = warmup_ms / 1000
        self.pg_timeout_s = power_good_timeout_ms / 1000
        self.current: _Current | None = None
        self.alarm = alarm or (lambda code, active, detail: None)
        self.stream_stall_s = stream_stall_s
        self.hold_s = hold_ms / 1000
        self._amp_off_at: float | None = None   # monotonic time the held amplifier goes off
        self.selftest_at = time.fromisoformat(selftest_at) if selftest_at else None
        self.live_mic_until: float | None = None  # monotonic end of live-microphone mode
        self.mic_preempted: str | None = None     # the khẩn cấp occurrence that took the air
        self._programme_version: int | None = None
        self._idle: tuple[tuple, datetime, datetime] | None = None  # see _note_idle
        self._items: list[Item] = []
        self._quiet: QuietHours | None = None
        self._checked_until: datetime | None = None
        self._checked_saved = -1e9
        self.queued: list[Queued] = []
        self.preroll = preroll
        self._pg_delay_s = POWER_GOOD_GUESS_S  # the last power-good delay measured
        # told of every record (key, item id, outcome, detail): commands follow their plays
        self.on_record: Callable[[str, str, str, str], None] = lambda *a: None

    # -- programme -------------------------------------------------------------------------
    def programme(self) -> tuple[list[Item], QuietHours | None]:
        active = self.store.active_bundle()
        version = active[0] if active else None
        if version != self._programme_version:
            self._programme_version = version
            body = active[1] if active else {}
            self._items = [Item.from_wire(d) for d in body.get("items", [])]
            q = body.get("quiet_hours")
            self._quiet = QuietHours.from_wire(q) if q else None
        return self._items, self._quiet

    # -- lifecycle -------------------------------------------------------------------------
    def recover(self) -> int:
        """After a restart: the amplifier off, and any playback cut by the crash recorded once
        as interrupted (never replayed). Returns how many."""
        self.board.zones_off()
        self.board.amp_off()
        now = self.clock.now()
        keys = self.store.interrupted_plays(now)
        for key in keys:
            self.store.finish_play(key, "interrupted", "agent restarted during playback", now)
        return len(keys)

    def shutdown(self) -> None:
        if self.current:
            self._end(self.clock.now(), "interrupted", "agent stopped", stop_player=True)
        self.board.zones_off()
        self.board.amp_off()

    # -- the loop --------------------------------------------------------------------------
    def tick(self, timed: bool = True, at: tuple[datetime, float] | None = None) -> None:
        """``timed=False`` while the clock is not trusted: what plays finishes, nothing timed
        starts and nothing is declared missed on the strength of a wrong clock; commanded
        plays, judged by the monotonic clock, still start. ``at``: (wall, monotonic) as the
        caller read them to judge ``timed``."""
        now, mono = at or (self.clock.now(), self.clock.monotonic())
        if self.current is None and self._amp_off_at is not None and mono >= self._amp_off_at:
            self.board.amp_off()  # the hold after the last item is over
            self._amp_off_at = None
        best = self._best_queued(now, mono)
        if timed:
            items, quiet = self.programme()
            if best is None and self.current is None and self.live_mic_until is None and \
                    self._idle_at(now):
                return  # nothing can start, pre-roll or be missed before the quiet ends
            self._sweep_missed(items, quiet, now)
            scheduled = next((o for o in startable_at(items, now, quiet=quiet)
                              if self.store.play_state(o.key) is None), None)
            if scheduled is not None and (best is None or
                                          scheduled.item.priority >= best.item.priority):
                best = scheduled
        if best is not None and best.item.id.startswith("cmd-") and self._may_take_air(best):
            # a commanded play starts on this tick: it leaves the queue
            self.queued = [q for q in self.queued if q.item.id != best.item.id]
        if best is not None or self.current is not None or self.live_mic_until is not None:
            self._idle = None  # worked out again after it (a play measures power-good anew)
        if self.live_mic_until is not None:  # the microphone holds the air; the schedule waits
            if best is not None and best.item.priority >= Priority.KHAN_CAP:
                # ... except for khẩn cấp, which takes the air from the microphone
                self._live_mic_off(now, "preempted", by=best.key, keep_relay=True)
                self.mic_preempted = best.key
                self._start(best, now, relay_already_on=True)
            elif self.clock.monotonic() >= self.live_mic_until:
                self._live_mic_off(now, "timed out")
            return
        if self.mic_preempted is not None and (self.current is None or
                                               self.current.occ.key != self.mic_preempted):
            self.mic_preempted = None  # the emergency that took the microphone's air is over
        cur = self.current
        if cur is None and best is None:
            if timed and not self._maybe_preroll(items, quiet, now) and \
                    not self._maybe_selftest(now):
                self._note_idle(items, quiet, now)
            return
        if cur is not None:
            if best is not None and best.item.priority > cur.occ.item.priority:
                self._end(now, "preempted", f"preempted by {best.key}", stop_player=True,
                          keep_relay=True)
                self._start(best, now, relay_already_on=True)
            else:
                self._advance(now)
        elif best is not None:
            self._start(best, now)

    # -- pre-roll ---------------------------------------------------------------------------
    @property
    def preroll_s(self) -> float:
        """How long before its instant a scheduled item's sequence begins: power-good (as last
        measured), warm-up, the zones' settling, and a margin."""
        return self._pg_delay_s + self.warmup_s + ZONE_SETTLE_S + PREROLL_MARGIN_S

    def _maybe_preroll(self, items: list[Item], quiet: QuietHours | None,
                       now: datetime) -> bool:
        """Close the relay and warm the amplifier up ahead of the next scheduled start, so its
        first sound leaves at the instant (docs/hardware.md, "Pre-roll")."""
        if not self.preroll or not items:
            return False
        for o in starting_within(items, now, self.preroll_s, quiet=quiet):
            if self.store.play_state(o.key) is not None:
                continue
            if not o.item.stream and not self.store.has_audio(o.item.content):
                continue  # recorded missed at its instant, as without pre-roll
            self._begin(o, now, preroll=True)
            return True
        return False

    def due_in(self) -> float | None:
        """Seconds until a pre-rolled item's instant (its sound waits for it), for a loop that
        would otherwise sleep past it; None when nothing waits."""
        cur = self.current
        if cur is None or not cur.preroll or cur.playback is not None:
            return None
        return max(0.0, (cur.occ.start - self.clock.now()).total_seconds())

    def _note_idle(self, items: list[Item], quiet: QuietHours | None, now: datetime) -> None:
        """After an idle turn: until when nothing can start, pre-roll or be missed (no
        late-start window open now, the next start's pre-roll, the next self-test), so the
        turns before it skip the schedule's questions (P3: they were most of an idle
        agent's CPU)."""
        self._idle = None
        if startable_at(items, now, quiet=quiet):
            return  # a window is open (played, or waiting for its audio): asked every turn
        lead = self.preroll_s if self.preroll else 0.0
        soon = starting_within(items, now, lead + QUIET_HORIZON_S, quiet=quiet)
        until = soon[0].start - timedelta(seconds=lead) if soon else \
            now + timedelta(seconds=QUIET_HORIZON_S)
        if self.selftest_at is not None:
            local = now.astimezone(TZ)
            day = local.date() if local.time() < self.selftest_at else \
                local.date() + timedelta(days=1)
            until = min(until, datetime.combine(day, self.selftest_at, TZ))
        if until > now:
            self._idle = ((self._programme_version, self.selftest_at), now, until)

    def _idle_at(self, now: datetime) -> bool:
        q = self._idle
        return q is not None and q[0] == (self._programme_version, self.selftest_at) and \
            q[1] <= now < q[2]

    def wake_in(self, cap: float) -> float:
        """How long the agent may sleep as far as the runner is concerned: a short turn while
        anything is in progress (a sequence, a play, a queued command, the amplifier's hold,
        the live microphone); otherwise until the next scheduled start's pre-roll begins (or
        its instant, without pre-roll), at most ``cap``."""
        if self.busy or self.live_mic_until is not None:
            return BUSY_TURN_S
        items, quiet = self.programme()
        if not items:
            return cap
        now = self.clock.now()
        if self._idle_at(now):
            return min(cap, (self._idle[2] - now).total_seconds())
        lead = self.preroll_s if self.preroll else 0.0
        soon = starting_within(items, now, lead + cap, quiet=quiet)
        if not soon:
            return cap
        return max(0.0, min(cap, (soon[0].start - now).total_seconds() - lead))

    @property
    def busy(self) -> bool:
        """A play in its sequence or on air, one queued, or the amplifier's hold running."""
        return self.current is not None or bool(self.queued) or self._amp_off_at is not None

    def _may_take_air(self, best: Occurrence) -> bool:
        """Whether ``best`` starts (or preempts) on this tick."""
        if self.live_mic_until is not None:
            return best.item.priority >= Priority.KHAN_CAP
        return self.current is None or best.item.priority > self.current.occ.item.priority

    # -- commanded plays -------------------------------------------------------------------
    def queue(self, item: Item, *, after_s: float = 0.0, within_s: float) -> None:
        mono = self.clock.monotonic()
        self.queued.append(Queued(item, mono + after_s, mono + after_s + within_s))

    def _best_queued(self, now: datetime, mono: float) -> Occurrence | None:
        """The best commanded play that may start now; one whose deadline passed without its
        audio (or without the air) is recorded missed, once."""
        for q in [q for q in self.queued if mono > q.deadline]:
            self.queued.remove(q)
            occ = Occurrence(now, replace(q.item, start=now))
            reason = ("audio not present before the command expired"
                      if not self.store.has_audio(q.item.content) else
                      "not started before the command expired")
            self.store.record_missed(occ.key, q.item.id, q.item.content, now, reason, now)
            self.on_record(occ.key, q.item.id, "missed", reason)
        ready = [q for q in self.queued if q.not_before <= mono
                 and (q.item.stream or self.store.has_audio(q.item.content))]
        if not ready:
            return None
        q = min(ready, key=lambda q: (-int(q.item.priority), q.not_before, q.item.id))
        return Occurrence(now, replace(q.item, start=now))

    def stop_where(self, match: Callable[[Item], bool], reason: str) -> list[str]:
        """A ``stop`` command: what is on air (if it matches) ends now, recorded ``stopped``;
        commanded plays that match and have not started never will. Returns what it stopped."""
        now = self.clock.now()
        stopped = []
        for q in [q for q in self.queued if match(q.item)]:
            self.queued.remove(q)
            occ = Occurrence(now, replace(q.item, start=now))
            self.store.record_missed(occ.key, q.item.id, q.item.content, now, reason, now,
                                     outcome="stopped")
            self.on_record(occ.key, q.item.id, "stopped", reason)
            stopped.append(occ.key)
        cur = self.current
        if cur is not None and not cur.selftest and match(cur.occ.item):
            stopped.append(cur.key or cur.occ.key)
            self._end(now, "stopped", reason, stop_player=True)
        return stopped

    # -- local controls and the self-test -------------------------------------------------
    def stop(self, reason: str) -> bool:
        """The stop button: the current item ends now, recorded with the reason."""
        if self.current is None:
            return False
        self._end(self.clock.now(), "stopped", reason, stop_player=True)
        return True

    def play_now(self, content: str, reason: str) -> None:
        """Play stored content at once, as khẩn cấp (the local emergency button)."""
        now = self.clock.now()
        active = self.store.active_bundle()
        meta = (active[1] if active else {}).get("content", {}).get(content, {})
        item = Item("local", content, int(meta.get("duration_ms") or 1000), Priority.KHAN_CAP,
                    now, late_start_s=60, title=reason)
        if self.live_mic_until is not None:
            # the release would switch the amplifier off under the emergency message
            self._live_mic_off(now, "preempted", by=reason, keep_relay=True)
            self.mic_preempted = Occurrence(now, item).key
        if self.current is not None:
            self._end(now, "preempted", f"preempted by {reason}", stop_player=True,
                      keep_relay=True)
        self._begin(Occurrence(now, item), now)

    def toggle_live_mic(self, timeout_s: float) -> None:
        now = self.clock.now()
        if self.live_mic_until is not None:
            self._live_mic_off(now, "released")
            return
        if self.current is not None:
            self._end(now, "interrupted", "live microphone at the station", stop_player=True,
                      keep_relay=True)
        self.board.amp_on()
        self.board.zones_on()
        self._amp_off_at = None
        self.live_mic_until = self.clock.monotonic() + timeout_s
        self.store.event("live_mic", {"on": True, "timeout_s": int(timeout_s)}, now)

    def _live_mic_off(self, now: datetime, how: str, *, by: str | None = None,
                      keep_relay: bool = False) -> None:
        self.live_mic_until = None
        if not keep_relay:
            self.board.zones_off()
            self.board.amp_off()
        data: dict[str, Any] = {"on": False, "how": how}
        if by:
            data["by"] = by
        self.store.event("live_mic", data, now)
        if by:
            log.warning("live microphone preempted by khẩn cấp %s", by)

    def _maybe_selftest(self, now: datetime) -> bool:
        """Once a day at ``selftest_at`` (local): relay, amplifier and zones exercised with no
        audio, recorded like a playback (item ``selftest``)."""
        if self.selftest_at is None:
            return False
        local = now.astimezone(TZ)
        if local.time() < self.selftest_at:
            return False
        key = f"selftest@{local:%Y%m%d}"
        if self.store.play_state(key) is not None:
            return False
        self._selftest(key, datetime.combine(local.date(), self.selftest_at, TZ), now,
                       "silent self-test")
        return True

    def selftest_now(self, why: str, item_id: str = "selftest") -> bool:
        """A silent self-test at once (after a restart with a relay or amplifier alarm held,
        or commanded), unless the air is busy."""
        if self.current is not None or self.live_mic_until is not None:
            return False
        now = self.clock.now()
        self._selftest(f"selftest@{now:%Y%m%dT%H%M%S%fZ}", now, now, f"silent self-test: {why}",
                       item_id)
        return True

    def _selftest(self, key: str, start: datetime, now: datetime, title: str,
                  item_id: str = "selftest") -> None:
        item = Item(item_id, "", 1000, Priority.THONG_THUONG, start, title=title)
        self.store.start_play(key, item_id, "", start, now)
        self.on_record(key, item_id, "started", "")
        self._amp_off_at = None
        if not self.board.amp_relay_on:
            self.board.amp_on()
        self.current = _Current(Occurrence(start, item), now, self.clock.monotonic(),
                                selftest=True, key=key)

    def _sweep_missed(self, items: list[Item], quiet: QuietHours | None, now: datetime) -> None:
        """Record once, as missed, every occurrence whose late-start window closed without it
        starting (the agent was down, the amplifier busy with a longer item, …)."""
        if self._checked_until is None:
            mark = self.store.get("programme.since")
            self._checked_until = parse_iso(mark) if mark else now
        since = max(min(self._checked_until, now), now - MISSED_LOOKBACK)
        for o in overdue(items, since, now, quiet=quiet):
            if self.store.play_state(o.key) is None and (self.current is None
                                                         or self.current.occ.key != o.key):
                self.store.record_missed(o.key, o.item.id, o.item.content, o.start,
                                         f"not started within its {o.item.late_start_s}s "
                                         f"late-start window", now)
        self._checked_until = now
        # persisted now and then, not every tick (SD cards): a sweep repeated after a restart
        # finds the same occurrences already recorded and records nothing twice
        mono = self.clock.monotonic()
        if mono - self._checked_saved >= CHECKPOINT_EVERY_S:
            self.store.put("programme.since", iso(now))
            self._checked_saved = mono

    def _start(self, occ: Occurrence, now: datetime, relay_already_on: bool = False) -> None:
        if not occ.item.stream and not self.store.has_audio(occ.item.content):
            self.store.record_missed(occ.key, occ.item.id, occ.item.content, occ.start,
                                     "audio not present", now)
            self.on_record(occ.key, occ.item.id, "missed", "audio not present")
            if relay_already_on:
                self.board.amp_off()
            return
        self._begin(occ, now, relay_already_on)

    def _begin(self, occ: Occurrence, now: datetime, relay_already_on: bool = False,
               preroll: bool = False) -> None:
        bad = None if occ.item.stream else self.store.verify_audio(occ.item.content, now)
        if bad:  # changed on disk since it was verified: never put it on air
            self.store.start_play(occ.key, occ.item.id, occ.item.content, occ.start, now)
            self.current = _Current(occ, now, self.clock.monotonic())
            self._fail(now, "audio", bad, "audio_corrupt")
            return
        self.store.start_play(occ.key, occ.item.id, occ.item.content, occ.start, now,
                              state="preroll" if preroll else "started")
        mono = self.clock.monotonic()
        self._amp_off_at = None
        if not self.board.amp_relay_on:
            self.board.amp_on()
        self.current = _Current(occ, now, mono, preroll=preroll)
        if preroll:  # ("on air soon" is logged when its sound starts)
            log.info("pre-roll: %s (%s), %.2f s ahead", occ.key, occ.item.title,
                     (occ.start - now).total_seconds())
        else:
            log.info("on air soon: %s (%s)", occ.key, occ.item.title)
        self._advance(now)
        if not preroll:
            # the relay first (and the sound, when nothing has to warm up), then the report
            self.on_record(occ.key, occ.item.id, "started", "")

    def _fail(self, now: datetime, step: str, reason: str, alarm: str) -> None:
        """Abort cleanly at ``step``: zones and amplifier off, the outcome and an alarm."""
        self.alarm(alarm, True, f"{step}: {reason}")
        self._end(now, "failed", f"step {step}: {reason}", hold=False,
                  extra={"step": step, "reason": reason})

    def _advance(self, now: datetime) -> None:
        cur = self.current
        assert cur is not None
        mono = self.clock.monotonic()
        if cur.playback is None:
            if cur.power_good_mono is None:  # 1. amplifier relay closed: wait for power-good
                if self.board.amp_fault:
                    self._fail(now, "amplifier", "amplifier reports a fault (protection)",
                               "amplifier")
                    return
                if self.board.amp_power_good:
                    cur.power_good_at, cur.power_good_mono = now, mono
                    self._pg_delay_s = min(mono - cur.relay_on_mono, self.pg_timeout_s)
                    mismatch = self.board.feedback_mismatch()
                    if mismatch:
                        self._fail(now, "amp_relay", "; ".join(mismatch), "relay")
                        return
                    self.alarm("amplifier", False, "")
                elif mono - cur.relay_on_mono >= self.pg_timeout_s:
                    mismatch = self.board.feedback_mismatch()
                    if mismatch:
                        self._fail(now, "amp_relay", "; ".join(mismatch), "relay")
                    else:
                        self._fail(now, "power_good", f"no power-good within "
                                   f"{self.pg_timeout_s:.1f}s of the relay closing", "amplifier")
                    return
                else:
                    return
            if mono - cur.power_good_mono < self.warmup_s:  # 2. warm-up
                return
            if cur.zones_on_mono is None:  # 3. speaker zones on
                self.board.zones_on()
                cur.zones_on_at, cur.zones_on_mono = now, mono
                if self.board.zone_count:
                    return  # their contacts settle before their feedback is read
            elif mono - cur.zones_on_mono < ZONE_SETTLE_S:
                return
            mismatch = self.board.feedback_mismatch()
            if mismatch:
                self._fail(now, "zones", "; ".join(mismatch), "relay")
                return
            self.alarm("relay", False, "")
            if cur.selftest:
                self._end(now, "passed", "relay, amplifier and zones answered; no audio",
                          hold=False)
                return
            item = cur.occ.item  # 4. play
            if cur.preroll and now < cur.occ.start:
                # pre-rolled: relay closed, amplifier warm; the player made ready (started
                # and waiting for its input); the sound waits its instant
                if cur.armed is None and not item.stream and hasattr(self.player, "arm"):
                    try:
                        cur.armed = self.player.arm(self.store.audio_path(item.content))
                    except Exception as exc:  # started the usual way at the instant
                        log.warning("%s: player not made ready: %s", cur.occ.key, exc)
                        cur.armed = False
                return
            try:
                if item.stream:
                    cur.playback = self.player.start_stream(
                        item.stream, item.duration_ms / 1000, stall_s=self.stream_stall_s)
                elif cur.armed and cur.armed.volume == getattr(self.player, "volume", None):
                    cur.playback, cur.armed = cur.armed.fire(), None
                else:  # not made ready, or the volume changed since
                    if cur.armed:
                        cur.armed.cancel()
                        cur.armed = None
                    cur.playback = self.player.start(self.store.audio_path(item.content))
                cur.play_mono = mono
                self.board.audio_signal(True)
                if cur.preroll:  # after the sound started: the row already holds it
                    log.info("on air soon: %s (%s), pre-rolled", cur.occ.key, item.title)
                    self.store.on_air(cur.occ.key, now)
                    self.on_record(cur.occ.key, cur.occ.item.id, "started", "")
            except Exception as exc:  # the device or ffmpeg is missing
                self.alarm("audio_device", True, f"player did not start: {exc}")
                self._end(now, "failed", f"player did not start: {exc}")
            return
        outcome = cur.playback.poll()
        if outcome is None:
            heard = self.board.sound_present
            if heard is not None:
                cur.sense_samples += 1
                cur.sense_sound += heard
        if outcome is not None and cur.occ.item.stream and cur.stream_failure is None:
            ran = mono - (cur.play_mono or mono)
            if outcome.ok and ran >= cur.occ.item.duration_ms / 1000 - 0.5:
                self._end(now, "played", "", extra={"stream": cur.occ.item.stream})
                return
            cur.stream_failure = (f"stream failed after {ran:.1f}s: "
                                  f"{outcome.stderr or 'it ended early'}")
            log.warning("%s: %s; playing the fallback", cur.occ.key, cur.stream_failure)
            cur.playback = self.player.start(self.store.audio_path(cur.occ.item.content))
            cur.play_mono = mono
            return
        if outcome is not None and cur.stream_failure is not None:
            self._end(now, "fallback" if outcome.ok else "failed", cur.stream_failure,
                      extra={"stream": cur.occ.item.stream, "fallback": cur.occ.item.content})
            return
        if outcome is not None:
            if outcome.ok:
                self.alarm("audio_device", False, "")
                self._end(now, "played", "")
            else:
                detail = f"player exited {outcome.returncode}: {outcome.stderr}"
                self.alarm("audio_device", True, detail)
                self._end(now, "failed", detail)

    def _end(self, now: datetime, outcome: str, detail: str, *, stop_player: bool = False,
             keep_relay: bool = False, hold: bool = True,
             extra: dict[str, Any] | None = None) -> None:
        """5. zones off, then the amplifier off after the hold (or at once on a failure)."""
        cur = self.current
        assert cur is not None
        if cur.armed:  # made ready and never fired: ended unheard
            cur.armed.cancel()
            cur.armed = None
        if cur.preroll and cur.playback is None and outcome in ("preempted", "interrupted"):
            # given up before its instant: no sound went out, so it is not recorded; it may
            # still start in its own window (after what preempted it)
            self.current = None
            if not keep_relay:
                self.board.zones_off()
                self.board.amp_off()
            self.store.abandon_preroll(cur.occ.key)
            log.info("%s: pre-roll given up (%s)", cur.occ.key, detail)
            return
        if stop_player and cur.playback is not None:
            cur.playback.stop()
        if cur.playback is not None:
            self.board.audio_signal(False)
        if not keep_relay:
            self.board.zones_off()
            if hold and self.hold_s > 0:
                self._amp_off_at = self.clock.monotonic() + self.hold_s
            else:
                self.board.amp_off()
        self.current = None
        # proof of play: did the amplifier's output carry sound while we played?
        sound_out = None if not cur.sense_samples else cur.sense_sound > 0
        if outcome in ("played", "fallback") and sound_out is not None:
            self.alarm("no_sound", not sound_out, "" if sound_out else
                       f"amplifier output silent throughout {cur.occ.key}")
        record = {"sound_out": sound_out,
                  "sound_percent": round(100 * cur.sense_sound / cur.sense_samples)
                  if cur.sense_samples else None,
                  "relay_on": iso(cur.relay_on_at),
                  "power_good": iso(cur.power_good_at) if cur.power_good_at else None,
                  "zones_on": iso(cur.zones_on_at) if cur.zones_on_at else None,
                  "zones_off": None if keep_relay else iso(now),
                  "relay_off": iso(now) if not keep_relay and self._amp_off_at is None else None,
                  **(extra or {})}
        self.store.finish_play(cur.key or cur.occ.key, outcome, detail, now, record)
        log.info("%s: %s %s", cur.key or cur.occ.key, outcome, detail)
        self.on_record(cur.key or cur.occ.key, cur.occ.item.id, outcome, detail)

    def status(self) -> dict[str, Any]:
        cur = self.current
        return {
            "programme_version": self._programme_version,
            "live_mic": self.live_mic_until is not None,
            "mic_preempted_by": self.mic_preempted,
            "relay": self.board.amp_relay_on, "power_good": self.board.amp_power_good,
            "on_air": cur is not None and cur.playback is not None,
            "playing": cur.occ.key if cur and cur.playback is not None else None,
            "starting": cur.occ.key if cur and cur.playback is None else None,
        }
