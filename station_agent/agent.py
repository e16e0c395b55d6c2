"""The station process: one place that wires store, link, board, player and runner.

Messages arrive on paho's thread and are handed over through the link's inbox; everything
else happens on the agent's own thread in ``step()``, so the store is used from one thread.
"""
from __future__ import annotations

import collections
import errno
import json
import logging
import os
import queue
import shutil
import threading
from datetime import timedelta
from pathlib import Path
from typing import Any, Callable

from hardware import Wiring, open_board
from audio import AlsaPlayer, AudioError, check_device
from protocol import chunks
from protocol.clock import Clock, iso, make_clock, parse_iso
from protocol import hubkeys
from protocol.envelope import (ACCEPTS, KeyRing, Reason, Refused, Signer, parse,
                               public_from_text, seal, seal_encoded, unpack, verify)
from protocol.mqtt import Inbound, MqttLink, Will
from protocol.sdnotify import Notifier
from protocol.storage import write
from protocol.topics import Topics
from schedules import Item, occurrences

from . import controls
from . import health as probes
from . import presence
from .clocktrust import ClockTrust
from .commands import Commands, HubTime, stream_of
from .config import StationConfig
from .runner import BUSY_TURN_S, Runner
from .reports import Reports, encode_report
from .store import StationStore
from .transfer import PROGRAMME_PUSH_GRACE_S, PUSH_GRACE_S, Transfers
from .update import Updater

log = logging.getLogger("loaxa.agent")
STATE_TTL = timedelta(days=30)
REPORT_TTL = timedelta(days=30)
TRUST_SAVE_EVERY_S = 60.0
TIME_ASK_EVERY_S = 10.0     # while the clock is not trusted
TIME_CHECK_EVERY_S = 60.0   # while it is
LINK_GRACE_S = 30.0         # a link not up this long after start is an alarm (not at once)
REFUSAL_REPORT_EVERY_S = 10.0  # a flood of one refusal is counted in full, reported sparingly
SWITCH_CLEAR_S = 120         # an update switches only with no scheduled start this close
NEXT_EVERY_S = 10.0         # how often the status file's "what plays next" is worked out
# alarms the agent raises itself (health.* come from probes): 2 = fault, 1 = degraded
ALARM_SEVERITY = {"clock": 2, "audio_device": 2, "audio_corrupt": 2, "amplifier": 2, "relay": 2,
                  "disk_full": 2, "no_sound": 2, "emergency_message": 1}
SIM_FAULTS = "sim-faults.json"   # `loaxa agent fault` writes it; simulated boards only
ACTIONS_DIR = "actions"          # the station console's actions (station_agent/console.py)
_CONNECTED = Inbound("$local/connected", b"", False)
IDLE_WAKE_S = 1.0  # the longest an idle agent sleeps (P3: 50 ms polling cost 3.8 % of a core)
TRIM_EVERY_S = 60.0  # an idle agent hands freed memory back to the system this often


def _give_back_memory() -> None:
    """Collect, then return the C heap's free pages to the system (glibc's ``malloc_trim``):
    start-up, a bundle's parsing and a transfer leave megabytes freed but kept by the
    allocator, and a Pi Zero-class station has little to spare (P3). Elsewhere: collect."""
    import ctypes
    import gc
    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


class _WakingQueue(queue.Queue):
    """A queue that wakes the agent's loop when something is put in it."""

    def __init__(self, wake: threading.Event) -> None:
        super().__init__()
        self._wake_event = wake

    def _put(self, item: Any) -> None:
        super()._put(item)
        self._wake_event.set()


class Agent:
    def __init__(self, cfg: StationConfig, *, clock: Clock | None = None, board: Any = None,
                 player: Any = None, loop: Any = None, status_file: bool = True) -> None:
        """``loop``: a ``protocol.mqtt.SharedLoop`` driving this station's link (the simulated
        fleet runs many stations on one thread); ``status_file``: write data/status.json."""
        self.cfg = cfg
        self._status_file = status_file
        self._alarm_cache: dict[str, str] | None = None
        self.id = cfg.station_id
        self.clock = clock or make_clock(cfg.clock)
        self.topics = Topics(cfg.prefix)
        self.store = StationStore(cfg.data_dir)
        self.signer = Signer.load(cfg.station_key, f"station:{self.id}").cached()  # kid once
        self.hub_keys = self._load_hub_keys()
        self._parked: collections.deque = collections.deque(maxlen=20)  # signed by a key
        # not known yet (before its rotation's announcement): handled again once it is
        self.board = board or open_board(cfg.hardware_backend, Wiring.from_dict(cfg.wiring),
                                         sim=cfg.sim, clock=self.clock)
        self.player = player or AlsaPlayer(cfg.audio_device, alsa_config=cfg.alsa_config,
                                           volume=cfg.volume, stream_ca=cfg.stream_ca)
        self.runner = Runner(store=self.store, board=self.board, player=self.player,
                             clock=self.clock, warmup_ms=cfg.warmup_ms,
                             power_good_timeout_ms=cfg.power_good_timeout_ms,
                             alarm=self.alarm, stream_stall_s=cfg.stream_stall_s,
                             hold_ms=cfg.amp_hold_ms, selftest_at=cfg.selftest_at,
                             preroll=cfg.preroll)
        floor = self.store.get("hub.time_floor")
        self.hub_time = HubTime(parse_iso(floor) if floor else None)
        self._hub_time_saved = -1e9
        self._audio_topics = {self.topics.audio(self.id), self.topics.target_audio("all"),
                              *(self.topics.target_audio(f"group:{g}") for g in cfg.groups)}
        self.commands = Commands(store=self.store, runner=self.runner, clock=self.clock,
                                 player=self.player, report_now=lambda: self.report_now(),
                                 expect_push=lambda sha, size: self.expect_push(sha, size))
        self._stop_event: threading.Event | None = None
        self.updater = Updater(cfg=cfg, store=self.store, clock=self.clock, runner=self.runner,
                               commands=self.commands,
                               connected=lambda: self.link.connected.is_set(),
                               bundle_ok=self._bundle_verifies,
                               expect_push=lambda sha, size: self.expect_push(sha, size),
                               exit_for_switch=self._exit_for_switch,
                               air_free=self._air_free_for_switch)
        self.commands.on_update = self.updater.begin
        self.link = MqttLink(
            client_id=f"station-{self.id}", broker=cfg.broker,
            subscriptions=self.topics.station_subscriptions(self.id, cfg.groups),
            will=self._will, bdseq_epoch=self.store.next_bdseq_epoch(),
            on_connected=lambda bdseq: self.link.inbox.put(_CONNECTED), loop=loop,
        )
        self.reports = Reports(cfg.report_retry_s)  # what of the outbox goes, and when
        self.transfers = Transfers(self.cfg.fetch_retry_s)  # audio on its way
        self._wake = threading.Event()
        self._command_taken = False  # a command was accepted: the runner ticks at once
        self._status_path = Path(cfg.data_dir) / "status.json"
        self._last_status: dict[str, Any] | None = None
        self._last_status_mono = -1e9
        self.trust = ClockTrust(max_step_s=cfg.clock_max_step_s,
                                max_hub_skew_s=cfg.clock_max_skew_s)
        self._trust_saved = -1e9
        self._time_asked = -1e9
        self._time_nonce: str | None = None
        self.link_rtt_ms: int | None = None
        self.health = probes.HealthModel(
            debounce=2, on_change=lambda name, status, detail: self.alarm(
                f"health.{name}", status in ("degraded", "fault"), detail),
            held={code[7:] for code in self.alarms() if code.startswith("health.")})
        self.modem = probes.ModemProbe()
        self._started_mono = self.clock.monotonic()
        self._ever_connected = False
        self._refusals_reported: dict[tuple[str, str], float] = {}
        self._next: tuple[float, dict[str, Any] | None] = (-1e9, None)
        self._next_version: int | None = None
        self._health_at = -1e9
        self.heartbeats = presence.Heartbeats()
        self._faults_seen: bytes | None = None
        self._faults_read = -1e9
        self._actions_read = -1e9
        self._faults_logged = False
        self._light_flush = -1e9
        self._presses_seen: dict[str, int] = {}

    def _load_hub_keys(self) -> KeyRing:
        """The hub keys this station trusts: the one its enrolment names, and those learnt
        from key rotations since (protocol/hubkeys.py), less those retired."""
        ring = KeyRing()
        stored = self.store.get("hub.keys")
        if stored:
            for text in json.loads(stored).values():
                ring.add(public_from_text(text), self.cfg.hub_sender)
        else:
            ring.add(public_from_text(self.cfg.hub_public), self.cfg.hub_sender)
        return ring

    def _on_hubkey(self, raw: bytes) -> None:
        seq = int(self.store.get("hub.keys_seq") or 0)
        if self.store.get("hub.keys_id") and parse(raw).get("id") == self.store.get("hub.keys_id"):
            return  # the same announcement again (retained, reconnect)
        env, ring = hubkeys.accept(raw, self.hub_keys, self.cfg.hub_sender, min_seq=seq + 1)
        with write(self.store.db):
            self.store.put("hub.keys", json.dumps(hubkeys.ring_state(ring)))
            self.store.put("hub.keys_seq", str(env.seq))
            self.store.put("hub.keys_id", env.id)
            self.store.event("hubkey", {"kid": env.kid, "seq": env.seq,
                                        "trusted": sorted(ring.kids())}, self.clock.now())
        self.hub_keys = ring
        log.info("hub key %s trusted (rotation %d); %d keys", env.kid, env.seq, len(ring.kids()))
        parked, self._parked = list(self._parked), collections.deque(maxlen=20)
        for msg in parked:  # what arrived signed by the new key before its announcement
            self.handle(msg)

    # -- lifecycle -------------------------------------------------------------------------
    def start(self) -> None:
        now, mono = self.clock.now(), self.clock.monotonic()
        interrupted = self.runner.recover()
        self.commands.recover()
        self.updater.start()
        last = self.store.get("clock.last_trusted")
        change = self.trust.start(now, mono, parse_iso(last) if last else None)
        self.store.event("agent.started", {"interrupted": interrupted,
                                           "clock": iso(now)}, now)
        if change is None and "clock" in self._held_alarms():
            # untrusted before the restart, and a restart does not set a clock: ask the hub
            change = self.trust.distrust("untrusted before the restart; waiting for the hub's "
                                         "time")
        if change:
            self._clock_changed(change)
        self._reevaluate_alarms()
        self.link.start()

    def _reevaluate_alarms(self) -> None:
        """Every alarm held from before a restart is judged again: a condition that went away
        while the agent was down is cleared now, not never. Health probes clear through their
        first reading (``held``), the clock through the hub's time, the rest here; only
        ``no_sound`` waits for the next play (it needs sound to judge)."""
        held = self.alarms()
        if "disk_full" in held:
            free = shutil.disk_usage(self.store.audio_dir).free
            if free >= self.cfg.min_free_bytes:
                self.alarm("disk_full", False, f"{free // 2**20} MiB free")
        if "emergency_message" in held:
            active = self.store.active_bundle()
            sha = (active[1] if active else {}).get("emergency")
            if sha and self.store.has_audio(sha):
                self.alarm("emergency_message", False, "")
        if "audio_device" in held and isinstance(self.player, AlsaPlayer):
            try:  # opens the device as a play would (20 ms of silence)
                check_device(self.cfg.audio_device, alsa_config=self.cfg.alsa_config)
            except AudioError as exc:
                log.warning("audio device still failing: %s", exc)
            else:
                self.alarm("audio_device", False, "the device opens again")
        if "audio_corrupt" in held:
            self.alarm("audio_corrupt", False, "")  # the corrupt file was dropped and refetched
        if {"amplifier", "relay"} & set(held):
            # relays and amplifier are judged again by the silent self-test, now
            self.runner.selftest_now("re-check after restart")

    def stop(self) -> None:
        self.settle()  # what started is recorded before the runner ends it
        self.runner.shutdown()
        self.link.stop(send_will=True)
        self.board.close()
        self.store.close()

    def run(self, stop: threading.Event) -> None:
        """The agent's own loop, under systemd ``Type=notify``: ready once started, then a
        watchdog ping from this loop only, so a hung step stops the pings and systemd
        restarts the agent (``WatchdogSec`` in deploy/systemd/loaxa-agent.service)."""
        notify = Notifier()
        self._stop_event = stop
        # no polling tick: the loop sleeps until the next instant it has to act on, or until a
        # message, a button or a stop wakes it (each queue sets the event as it is filled)
        self.link.inbox = _WakingQueue(self._wake)
        self.board.presses = _WakingQueue(self._wake)
        self.start()
        notify.ready(f"station {self.id}")
        trimmed = self.clock.monotonic()
        try:
            while not stop.is_set():
                self._wake.clear()
                self.step()
                notify.watchdog()
                if self.clock.monotonic() - trimmed >= TRIM_EVERY_S and not self.busy:
                    trimmed = self.clock.monotonic()
                    _give_back_memory()
                sleep = self.sleep_s()
                if notify.every_s is not None:  # systemd's watchdog hears from every turn
                    sleep = min(sleep, notify.every_s)
                self._wake.wait(sleep)
        finally:
            notify.stopping()
            self.stop()

    def step(self, *, light: bool = False, settle: bool = True) -> None:
        """One turn of the station. ``light``: only what a play or a transfer in progress
        needs (messages, the runner, audio requests, reports at most twice a second), for a
        fleet that steps thousands of stations on one thread; a full step does the rest.
        ``settle=False``: the bookkeeping of what started this turn waits for ``settle()``
        (a fleet lets every station start first, as separate CPUs would)."""
        now, mono = self.clock.now(), self.clock.monotonic()
        change = self.trust.observe(now, mono)
        if change:
            self._clock_changed(change)
        elif self.trust.trusted and mono - self._trust_saved >= TRUST_SAVE_EVERY_S:
            self.store.put("clock.last_trusted", iso(now))
            self._trust_saved = mono
        if mono - self._time_asked >= (TIME_ASK_EVERY_S if not self.trust.trusted
                                       else TIME_CHECK_EVERY_S):
            self._ask_time()  # clock check against the hub, and the link's round trip
        def tick() -> None:
            # the runner reads the clock again: if the wall clock moved unlike the monotonic
            # one since the trust above was judged (a step between the two readings), nothing
            # timed this turn; the next turn's trust judges the step (a day's step was taken
            # once, under load, as trusted: the day's items were declared missed)
            at = (self.clock.now(), self.clock.monotonic())
            drift = (at[0] - now).total_seconds() - (at[1] - mono)
            self.runner.tick(timed=self.trust.trusted and abs(drift) < 1.0, at=at)
        for _ in range(200):
            try:
                msg = self.link.inbox.get_nowait()
            except Exception:
                break
            self.handle(msg)
            if self._command_taken:
                # a play (a khẩn cấp alert) starts now, not after the messages behind it
                # (the audio pushed with it, a backlog after a reconnect)
                self._command_taken = False
                self._guarded(tick)
        # each phase on its own: a bug in one (logged, counted) never stops the others,
        # above all never the runner
        if light:  # reports: flush_due(), after the fleet has stepped every busy station
            phases = [tick, self._request_audio] if self.transfers.active else [tick]
        else:
            phases = [self._sim_faults, self._buttons, self._console_actions, self._try_activate,
                      tick,
                      self._request_audio, self._flush_reports, self.updater.step,
                      self._sample_health,
                      self._heartbeat, self._leds, self._write_status]
        if settle:
            phases.append(self.settle)
        for phase in phases:
            self._guarded(phase)

    def _guarded(self, phase: Callable[[], None]) -> None:
        """One phase of a turn: a bug in it is logged and counted, and the turn goes on."""
        try:
            phase()
        except Exception:
            log.exception("agent step failed")
            self.store.bump("errors.step")

    def settle(self) -> None:
        """What follows a start: its ``started`` records (a failure is logged and counted;
        what was not written is tried again next time)."""
        try:
            self.commands.settle()
        except Exception:
            log.exception("recording started commands failed")
            self.store.bump("errors.step")

    def _exit_for_switch(self) -> None:
        """A release is installed: this version stops (reports flushed first) so that the
        launcher starts the new one."""
        self._flush_reports()
        if self._stop_event is not None:
            self._stop_event.set()
            self._wake.set()

    def _air_free_for_switch(self) -> bool:
        """Nothing on air, queued or live, and no scheduled start within SWITCH_CLEAR_S: the
        few seconds of a switch (and of a rollback after it) fall in a silence."""
        if self.runner.busy or self.runner.live_mic_until is not None:
            return False
        now = self.clock.now()
        items, quiet = self.runner.programme()
        return not any(self.store.play_state(o.key) is None for o in occurrences(
            items, now - timedelta(seconds=60), now + timedelta(seconds=SWITCH_CLEAR_S),
            quiet=quiet))

    def _bundle_verifies(self) -> tuple[bool, str]:
        """For an update's health check: the held bundle verified again by this version's
        code and keys, and what was found."""
        held = self.store.held_bundle()
        if not held:
            return True, "no bundle held yet"
        raw = self.store.bundle_raw(held[0])
        try:
            env = verify(raw, self.hub_keys, now=None, kind="bundle")
        except Refused as r:
            return False, f"bundle {held[0]}: {r}"
        return True, f"bundle {env.seq} verified"

    # -- health, heartbeat, local controls ------------------------------------------------
    def _sample_health(self) -> None:
        mono = self.clock.monotonic()
        if mono - self._health_at < self.cfg.health_every_s:
            return
        self._health_at = mono
        b = self.board
        found = [*probes.power(b), probes.cpu_temperature(), probes.disk(self.store.dir),
                 probes.memory(), self._link_probe(mono)]
        if self.runner.current is None and self.runner.live_mic_until is None:
            found += [probes.relays(b), probes.amplifier(b)]  # they mean something only at rest
        m = self.modem.latest()  # never waits for mmcli (up to 5 s on a 4G station)
        if m is not None:
            found.append(m)
        self.health.update(found)

    def wake(self) -> None:
        """End the loop's sleep now (a stop signal)."""
        self._wake.set()

    def sleep_s(self) -> float:
        """How long the loop may sleep after a step: a short turn while a play, a sequence or
        a transfer is in progress; otherwise until the runner's next instant (a
        scheduled start's pre-roll), at most ``IDLE_WAKE_S``, which bounds what is checked
        on a timer (health probes, heartbeats, reports to resend, clock checks, the station
        console's actions)."""
        if not self.link.inbox.empty():
            return 0.0  # more arrived than one turn takes
        if self.receiving:
            return BUSY_TURN_S
        due = self.runner.due_in()  # a pre-rolled item's sound starts at its instant
        sleep = self.runner.wake_in(IDLE_WAKE_S)
        return sleep if due is None else min(sleep, due)

    @property
    def busy(self) -> bool:
        """Something to do before the next idle step: messages, a play, a transfer."""
        return not self.link.inbox.empty() or self.runner.busy or self.receiving

    @property
    def receiving(self) -> bool:
        """Audio on its way (pushed or fetched)."""
        return self.transfers.active

    def request_due_at(self) -> float:
        """The monotonic instant ``_request_audio`` next has something to ask (a push that
        stopped, a fetch to retry); infinity when no audio is on its way."""
        return self.transfers.due_at()

    def health_status(self) -> str:
        """ok / degraded / fault: the worst of the probes and the alarms the agent raises
        itself, so the status never says more than the alarms explain."""
        worst = probes.ORDER[self.health.status]
        for code in self._held_alarms():
            if not code.startswith("health."):
                worst = max(worst, ALARM_SEVERITY.get(code, 1))
        return {0: "ok", 1: "degraded", 2: "fault"}[worst]

    def _link_probe(self, mono: float) -> probes.Probe:
        """The link, with the reason it is down; unknown in the first seconds after a start,
        so a station that is still connecting raises no alarm."""
        if self.link.connected.is_set():
            self._ever_connected = True
            f = self.link.failure
            if f is not None and f.cause == "not_authorised":
                return probes.Probe("link", "degraded", f.cause, str(f))
            return probes.Probe("link", "ok", self.link_rtt_ms)
        f = self.link.failure
        transient = f is None or f.cause in ("unreachable", "lost", "refused")
        if not self._ever_connected and transient and mono - self._started_mono < LINK_GRACE_S:
            # a network that comes up after the agent (4G at boot) is not an alarm; a
            # definite cause (TLS, certificate, ACL) will not go away by waiting
            return probes.Probe("link", "unknown", None, "connecting")
        return probes.Probe("link", "degraded", f.cause if f else None,
                            str(f) if f else "no broker connection")

    def _heightened(self) -> dict:
        """The heightened period in force now, from the active programme, or {}."""
        active = self.store.active_bundle()
        return presence.heightened(active[1] if active else None, self.clock.now())

    def _heartbeat(self) -> None:
        period = self._heightened()  # a heightened period's self-test time applies while it lasts
        self.runner.selftest_at = _hhmm(period.get("selftest_at")) or _hhmm(self.cfg.selftest_at)
        interval = presence.heartbeat_interval(period, self.cfg.heartbeat_s)
        if not self.heartbeats.due(self.clock.monotonic(), interval,
                                   self.link.connected.is_set()):
            return
        st = self.runner.status()
        body = {"status": self.health_status(), "probes": self.health.summary(),
                "on_air": st["on_air"], "relay": st["relay"],
                "heightened": bool(period), "interval_s": int(interval)}
        self.link.publish(self.topics.health(self.id),
                          self._seal("heartbeat", body, timedelta(minutes=10)))

    def _leds(self) -> None:
        b, st, r = self.board, self.health_status(), self.runner
        b.led("link", "on" if self.link.connected.is_set() else "blink")
        b.led("health", {"ok": "on", "degraded": "blink"}.get(st, "off"))
        # on air: steady while something plays or the microphone is live; blinking while a
        # khẩn cấp message has taken the air from the operator's microphone
        b.led("on_air", "blink" if r.mic_preempted else
              "on" if r.current is not None or r.live_mic_until is not None else "off")

    def _buttons(self) -> None:
        while True:
            try:
                name, pressed = self.board.presses.get_nowait()
            except Exception:
                return
            self._press(name, pressed, "button")

    def _console_actions(self) -> None:
        """Actions from the station's own web console (`loaxa agent console`): files it drops
        in ``data/actions/``, applied in order and recorded and reported like a press of the
        button they stand for (``source``: console), then removed."""
        mono = self.clock.monotonic()
        if mono - self._actions_read < 0.25:
            return
        self._actions_read = mono
        folder = self.store.dir / ACTIONS_DIR
        try:
            names = sorted(n for n in os.listdir(folder) if n.endswith(".json"))
        except FileNotFoundError:
            return
        for name in names:
            path = folder / name
            try:
                a = controls.console_action(json.loads(path.read_text()))
                if a.kind == "volume":
                    self.commands.set_volume(a.level)
                    self.store.event("button", {"button": "volume", "pressed": True,
                                                "level": a.level, "source": "console",
                                                "by": a.by}, self.clock.now())
                else:
                    self._press(a.kind, True, "console", a.by)
            except (OSError, ValueError, KeyError, TypeError) as exc:
                log.warning("console action %s refused: %s", name, exc)
                self.store.bump("refused.console_action")
            path.unlink(missing_ok=True)

    def _press(self, name: str, pressed: bool, source: str, by: str = "") -> None:
        now = self.clock.now()
        data = {"button": name, "pressed": pressed}
        if source != "button":
            data.update(source=source, by=by)
        self.store.event("button", data, now)
        held = self._emergency_held() if pressed and name == "emergency" else None
        e = controls.press(name, pressed, source, held)
        if e.kind == "stop":
            self.runner.stop(e.reason)
        elif e.kind == "emergency":
            self.runner.play_now(e.sha, e.reason)
        elif e.kind == "no_message":
            self.alarm("emergency_message", True, e.reason)
        elif e.kind == "live_mic":
            self.runner.toggle_live_mic(self.cfg.live_mic_timeout_s)

    def _emergency_held(self) -> str | None:
        """The active programme's emergency message, if the station holds it (it is
        hash-checked again before it goes on air)."""
        active = self.store.active_bundle()
        sha = (active[1] if active else {}).get("emergency")
        return sha if sha and self.store.has_audio(sha) else None

    def _sim_faults(self) -> None:
        """A running simulated station takes the faults `loaxa agent fault` writes."""
        eq = getattr(self.board, "equipment", None)
        mono = self.clock.monotonic()
        if eq is None or mono - self._faults_read < 0.25:
            return
        self._faults_read = mono
        path = self.store.dir / SIM_FAULTS
        try:
            raw = path.read_bytes()  # a few bytes; each write carries a new counter
        except FileNotFoundError:
            raw = b""
        if raw == self._faults_seen:
            return
        self._faults_seen = raw
        from hardware import Fault
        state = json.loads(raw) if raw else {}
        names = state.get("faults", [])
        eq.set_faults({Fault(n) for n in names})
        for button, count in (state.get("presses") or {}).items():  # cumulative counts
            for _ in range(int(count) - self._presses_seen.get(button, 0)):
                eq.press(button, True)
                eq.press(button, False)
            self._presses_seen[button] = int(count)
        if names or self._faults_logged:
            log.warning("simulated faults now: %s", sorted(names) or "none")
        self._faults_logged = bool(names)

    # -- alarms and clock ------------------------------------------------------------------
    def alarm(self, code: str, active: bool, detail: str = "") -> None:
        """Raise or clear an alarm: once per transition, as an event, remembered across
        restarts so every birth and report says which alarms stand."""
        key = f"alarm.{code}"
        held = self._held_alarms()
        if (code in held) == active:
            return
        now = self.clock.now()
        with write(self.store.db):
            if active:
                self.store.put(key, detail)
            else:
                self.store.db.execute("DELETE FROM meta WHERE key = ?", [key])
            self.store.event("alarm", {"code": code, "active": active, "detail": detail}, now)
        if active:
            held[code] = detail
        else:
            held.pop(code, None)
        (log.warning if active else log.info)("alarm %s %s: %s", code,
                                              "raised" if active else "cleared", detail)

    def _held_alarms(self) -> dict[str, str]:
        """The alarms that stand, read from the store once and kept in step by ``alarm``,
        their only writer (they are asked for several times a step)."""
        if self._alarm_cache is None:
            rows = self.store.db.execute("SELECT key, value FROM meta WHERE key LIKE 'alarm.%'")
            self._alarm_cache = {k[6:]: v for k, v in rows.fetchall()}
        return self._alarm_cache

    def alarms(self) -> dict[str, str]:
        return dict(self._held_alarms())

    def _clock_changed(self, change) -> None:
        self.alarm("clock", not change.trusted, change.detail)
        if not change.trusted:
            self._ask_time()
        else:
            self.store.put("clock.last_trusted", iso(self.clock.now()))

    def _ask_time(self) -> None:
        self._time_asked = self.clock.monotonic()
        self._time_nonce = os.urandom(12).hex()
        raw = self._seal("time", {"clock": iso(self.clock.now()), "nonce": self._time_nonce},
                         timedelta(minutes=5))
        self.link.publish(self.topics.fetch(self.id), raw)

    # -- outgoing --------------------------------------------------------------------------
    def _seal(self, kind: str, body: dict, ttl: timedelta, seq: int = 0) -> bytes:
        return seal(kind, body, signer=self.signer, seq=seq, now=self.clock.now(), ttl=ttl)

    def _will(self, bdseq: int) -> Will:
        return Will(self.topics.state(self.id),
                    self._seal("state", {"online": False, "bdseq": bdseq}, STATE_TTL, bdseq))

    def summary(self, in_flight: int = 0) -> dict[str, Any]:
        """The station's live state, sent with every birth and every report. ``outbox`` is what
        waits to be sent after the ``in_flight`` events that travel with this summary."""
        held = self.store.held_bundle()
        active = self.store.active_bundle()
        pending = self.store.pending_bundle()
        wanted = list((pending or active or (0, {}))[1].get("content", {}))
        return {"held_version": held[0] if held else 0,
                "active_version": active[0] if active else 0,
                "pending_version": pending[0] if pending else None,
                "missing": self.store.missing_audio(wanted), "alarms": self.alarms(),
                "clock": iso(self.clock.now()), "clock_trusted": self.trust.trusted,
                "outbox": max(0, self.store.outbox_size() - in_flight),
                "bdseq": self.link.bdseq,
                "live_mic": self.runner.live_mic_until is not None,
                "version": self.updater.version, "accepts": list(ACCEPTS)}

    def _publish_state(self) -> None:
        """The birth: online, this connection's bdseq, the live summary (retained)."""
        body = {"online": True, "bdseq": self.link.bdseq, "name": self.cfg.name,
                **self.summary()}
        self.link.publish(self.topics.state(self.id),
                          self._seal("state", body, STATE_TTL, self.link.bdseq), retain=True)

    def _birth(self) -> None:
        self._publish_state()
        self._ask_time()
        self.reports.resend_all()  # anything unacknowledged, on the new connection
        self.transfers.reconnected()

    def flush_due(self, every_s: float = 0.5) -> bool:
        """Send reports now if the last light flush is ``every_s`` old (the simulated fleet
        calls it after a turn of light steps); False if it was not due yet."""
        mono = self.clock.monotonic()
        if mono - self._light_flush < every_s:
            return False
        self._light_flush = mono
        self._flush_reports()
        return True

    def _flush_reports(self) -> None:
        if not self.link.connected.is_set():
            return
        mono = self.clock.monotonic()
        # the outbox is read only when there is something new or a report is due again
        # (this process is its only writer)
        if not self.reports.should_read(self.store.appended, mono):
            return
        batch = self.reports.choose(self.store.pending_encoded(self.cfg.report_batch), mono)
        if not batch:
            return
        now = self.clock.now()
        state = self.summary(in_flight=self.reports.in_flight(batch))
        body = encode_report(batch, iso(now), state)
        raw = seal_encoded("report", body, signer=self.signer, seq=batch[-1]["seq"], now=now,
                           ttl=REPORT_TTL)
        if self.link.publish(self.topics.events(self.id), raw):
            self.reports.published(batch, mono)

    def _wanted_content(self) -> dict[str, Any]:
        """Audio the station should hold, by SHA-256, with the size the signed bundle states:
        the pending programme's, else the active one's (a file dropped as corrupt is fetched
        again)."""
        b = self.store.pending_bundle() or self.store.active_bundle()
        return {**self.commands.wanted(), **(b[1].get("content", {}) if b else {})}

    def _wanted_meta(self, sha: str) -> dict[str, Any] | None:
        """``_wanted_content().get(sha)`` without building the whole map (asked per chunk)."""
        meta = self.commands.wanted_meta(sha)
        for b in (self.store.pending_bundle(), self.store.active_bundle()):
            if b is not None:
                return b[1].get("content", {}).get(sha, meta)
        return meta

    def expect_push(self, sha: str, size: int, grace_s: float = PUSH_GRACE_S) -> None:
        """Audio the hub pushes with a command or a programme (once, to all of its targets): take its
        chunks as they come and ask for it ourselves only if they stop coming."""
        if not self.store.has_audio(sha):
            self.transfers.expect_push(sha, size, self.clock.monotonic(), grace_s)

    def _request_audio(self) -> None:
        if not self.link.connected.is_set():
            return
        mono = self.clock.monotonic()
        if not self.transfers.look(mono):
            return
        content = self._wanted_content()
        if not content:
            return
        missing = self.store.missing_audio(list(content))
        need = sum(int(content[s].get("size") or 0) - self.store.part_size(s) for s in missing)
        if missing and not self._room_for(need):
            return
        for sha in self.transfers.to_ask(missing, mono):
            self._ask_window(sha, mono)

    def _room_for(self, need: int) -> bool:
        """Whether ``need`` more bytes of audio leave the free-space reserve; if not, the
        disk_full alarm (cleared when there is room again)."""
        free = shutil.disk_usage(self.store.audio_dir).free
        if free - need < self.cfg.min_free_bytes:
            self.alarm("disk_full", True, f"{free // 2**20} MiB free, {need // 2**20} MiB of "
                       f"audio wanted, {self.cfg.min_free_bytes // 2**20} MiB kept in reserve")
            return False
        if "disk_full" in self._held_alarms():
            self.alarm("disk_full", False, f"{free // 2**20} MiB free")
        return True

    def _ask_window(self, sha: str, mono: float) -> None:
        offset = self.store.part_size(sha)
        raw = self._seal("fetch", {"sha": sha, "offset": offset,
                                   "length": self.transfers.window}, timedelta(minutes=10))
        if self.link.publish(self.topics.fetch(self.id), raw):
            self.transfers.asked(sha, offset, mono)

    # -- incoming --------------------------------------------------------------------------
    def handle(self, msg: Inbound) -> None:
        if msg is _CONNECTED:
            self._birth()
            return
        t = self.topics
        try:
            if msg.topic == t.hub_key():
                if msg.payload:
                    self._on_hubkey(msg.payload)
                return
            if msg.topic == t.bundle(self.id):
                self._on_bundle(unpack(msg.payload), retained=msg.retain)
            elif msg.topic in self._audio_topics:
                self._on_chunk(msg.payload)
            elif msg.topic == t.ack(self.id):
                # acks are idempotent and time replies carry our nonce: neither is judged
                # by our own clock, which may be the very thing that is wrong
                env = verify(msg.payload, self.hub_keys, now=None)
                if env.kind == "time":
                    if env.body.get("nonce") != self._time_nonce:
                        raise Refused(Reason.REPLAYED, "time reply to no question of ours")
                    self._time_nonce = None
                    self.link_rtt_ms = round((self.clock.monotonic() - self._time_asked) * 1000)
                    self._saw_hub(env.iat)
                    change = self.trust.observe_hub(env.iat, self.clock.now())
                    if change:
                        self._clock_changed(change)
                    return
                if env.kind != "ack":
                    raise Refused(Reason.WRONG_KIND, f"{env.kind} on the ack topic")
                if env.body.get("station") != self.id:
                    raise Refused(Reason.WRONG_STATION, f"ack for station "
                                  f"{env.body.get('station')!r}, not {self.id!r}")
                if self.trust.trusted and env.exp <= self.clock.now():
                    raise Refused(Reason.EXPIRED, f"ack expired {iso(env.exp)}")
                seqs = env.body.get("seqs")
                if not isinstance(seqs, list) or not all(isinstance(s, int) for s in seqs):
                    raise Refused(Reason.MALFORMED, "ack without a list of sequence numbers")
                self.store.acknowledge(seqs)
                self.reports.acknowledged(seqs)  # the hub keeps up again
            elif msg.topic == t.hub_state():
                if msg.payload:  # the hub's presence: its signed time is a floor for ours
                    env = verify(msg.payload, self.hub_keys, now=None)
                    self._saw_hub(env.iat)
                    if env.body.get("online") is True and not msg.retain:
                        # the hub (re)connected: what it has not acknowledged goes now,
                        # whatever the resend back-off had grown to
                        self.reports.resend_all()
            else:
                self._on_command(msg)
        except Refused as r:
            if r.reason == Reason.UNKNOWN_KEY and msg.topic != t.hub_key():
                self._parked.append(msg)  # a key rotation's announcement may follow
            self._refuse(r, msg.topic)
        except Exception as exc:  # a bug must not stop the station; it is reported
            log.exception("handling %s failed", msg.topic)
            self._refuse(Refused(Reason.MALFORMED, f"{type(exc).__name__}: {exc}"), msg.topic)

    def _on_command(self, msg: Inbound) -> None:
        stream = stream_of(self.topics, msg.topic, self.id, self.cfg.groups)
        if stream is None:
            raise Refused(Reason.WRONG_STATION, "a command topic this station does not serve")
        # expiry is judged by check_fresh: the station's clock may be the thing that is wrong
        env = verify(msg.payload, self.hub_keys, now=None, kind="command")
        hub_now = self.hub_time.estimate(self.clock.monotonic())
        self._command_taken = self.commands.handle(env, stream, trusted=self.trust.trusted,
                                                   hub_now=hub_now) is not None
        self.transfers.look_now()  # a play of audio not held: asked for at once
        self._saw_hub(env.iat)

    def _saw_hub(self, hub_time) -> None:
        """A verified hub time: commands are judged by it while our clock is not trusted."""
        if self.hub_time.saw(hub_time, self.clock.monotonic()):
            mono = self.clock.monotonic()
            if mono - self._hub_time_saved >= TRUST_SAVE_EVERY_S:
                self.store.put("hub.time_floor", iso(hub_time))
                self._hub_time_saved = mono

    def report_now(self) -> None:
        """A `report` command: state (a birth) and health (a heartbeat) at once."""
        self._publish_state()
        self.heartbeats.now()
        self._health_at = -1e9

    def _refuse(self, r: Refused, topic: str) -> None:
        """Every refusal is counted; it is reported (an outbox event) at most once per
        reason and topic every few seconds, so a flood cannot fill the outbox."""
        n = self.store.bump(f"refused.{r.reason.value}")
        mono = self.clock.monotonic()
        key = (r.reason.value, topic)
        last = self._refusals_reported.get(key)
        if last is not None and mono - last < REFUSAL_REPORT_EVERY_S:
            return
        log.warning("refused message on %s: %s", topic, r)
        self._refusals_reported[key] = mono
        self.store.event("refused", {"reason": r.reason.value, "detail": r.detail[:300],
                                     "topic": topic, "count": n}, self.clock.now())

    def _on_bundle(self, raw: bytes, retained: bool = False) -> None:
        held = self.store.held_bundle()
        env = verify(raw, self.hub_keys, now=self.clock.now(), kind="bundle",
                     min_seq=held[0] if held else None)
        if held and env.seq == held[0]:
            if env.id == held[1]:
                return  # the same bundle delivered again (retained, reconnect): nothing to do
            raise Refused(Reason.REPLAYED, f"a different bundle with held version {env.seq}")
        body = env.body
        if body.get("station") != self.id or body.get("version") != env.seq:
            raise Refused(Reason.MALFORMED, "bundle is for another station or version")
        content = body.get("content")
        if not isinstance(content, dict) or not all(
                isinstance(k, str) and chunks.SHA_RE.match(k) for k in content):
            raise Refused(Reason.MALFORMED, "bundle content map is not by SHA-256")
        try:
            items = [Item.from_wire(d) for d in body.get("items", [])]
        except ValueError as exc:
            raise Refused(Reason.MALFORMED, str(exc)) from None
        if any(i.content not in content for i in items):
            raise Refused(Reason.MALFORMED, "an item names audio the bundle does not list")
        self._saw_hub(env.iat)
        self.store.save_bundle(env.seq, env.id, raw, body, self.clock.now())
        log.info("bundle %d stored (%d items)", env.seq, len(items))
        # the hub sends these once to all that need them, right after the bundles; a bundle
        # delivered from the broker's retained store (on connecting) came after its push
        for sha, meta in content.items():
            if not retained and isinstance(meta, dict) and meta.get("push"):
                self.expect_push(sha, int(meta.get("size") or 0), PROGRAMME_PUSH_GRACE_S)
        self.transfers.look_now()  # what else it lacks is asked for at once
        self._try_activate()

    def _try_activate(self) -> None:
        version = self.store.activate_if_complete(self.clock.now())
        if version is not None:
            log.info("bundle %d active", version)

    def _on_chunk(self, raw: bytes) -> None:
        self.store.bump("audio.bytes_received", len(raw), lazy=True)
        c = chunks.decode(raw, verify=False)  # raises Refused on a malformed chunk
        # bound to the signed bundle or command: only audio it names, of the size it states
        meta = self._wanted_meta(c.sha)
        if meta is None:  # not stored, so it costs nothing: audio this station already has,
            self.store.bump("ignored.chunk_unwanted", lazy=True)  # or an old programme's
            return
        size = int(meta.get("size") or 0)
        if c.total != size:
            raise Refused(Reason.BAD_AUDIO, f"chunk of {c.sha[:12]} claims {c.total} bytes; "
                          f"the signed programme says {size}")
        if not self.transfers.expects(c.sha) or self.store.has_audio(c.sha):
            self.store.bump("ignored.chunk", lazy=True)
            return
        have = self.store.part_size(c.sha)
        if self.transfers.chunk(c.sha, c.offset, have) != "take":  # a gap is asked for again
            self.store.bump("ignored.chunk", lazy=True)
            return
        if have == 0 and not self._room_for(c.total):
            # a pushed file is not asked for, so the reserve is checked as it starts
            self.store.bump("ignored.chunk_disk_full", lazy=True)
            return
        whole = c.offset == 0 and len(c.data) == c.total
        if not whole:  # a whole file in one chunk is checked once, against its own name
            chunks.check(raw, c)  # corrupt data: refused (bad_audio)
        try:
            size = self.store.append_part(c.sha, c.data)
        except OSError as exc:
            if exc.errno != errno.ENOSPC:
                raise
            self.store.discard_part(c.sha)
            self.transfers.done(c.sha)
            self.alarm("disk_full", True, f"no space left while storing {c.sha[:12]}")
            return
        mono = self.clock.monotonic()
        if self.transfers.appended(c.sha, size, c.total, mono):
            self._ask_window(c.sha, mono)
        if size < c.total:
            return
        digest = self.store.part_digest(c.sha)
        if digest != c.sha:
            self.store.discard_part(c.sha)
            raise Refused(Reason.BAD_AUDIO, f"audio {c.sha[:12]} arrived with hash {digest[:12]}")
        activated = self.store.keep_audio(c.sha, self.clock.now(), hashed=True)
        if activated is not None:
            log.info("bundle %d active", activated)
        if "audio_corrupt" in self._held_alarms():
            self.alarm("audio_corrupt", False, f"audio {c.sha[:12]} fetched again")
        self.transfers.done(c.sha)

    # -- local status (read by the demo and the local console) ----------------------------
    def _write_status(self) -> None:
        mono = self.clock.monotonic()
        if not self._status_file or mono - self._last_status_mono < 0.2:
            return
        self._last_status_mono = mono
        summary = self.summary()
        summary.pop("clock")  # changes every call; the file says "at"
        f = self.link.failure
        st = {"station": self.id, "connected": self.link.connected.is_set(), **summary,
              "link_failure": {"cause": f.cause, "detail": f.detail} if f else None,
              "audio_missing": len(summary["missing"]), "counters": self.store.counters(),
              "health": self.health_status(), "probes": self.health.summary(),
              **self._outlook(mono),
              "leds": {n: self.board.led_state(n) for n in ("link", "health", "on_air")},
              "volume": round(getattr(self.player, "volume", 1.0) * 100),
              **self.runner.status()}
        if st != self._last_status:
            tmp = self._status_path.with_suffix(".tmp")
            tmp.write_text(json.dumps({**st, "pid": os.getpid(), "at": iso(self.clock.now())}))
            os.replace(tmp, self._status_path)
            self._last_status = st

    def _outlook(self, mono: float) -> dict[str, Any]:
        """What plays next, and why nothing plays now if that is so: for `loaxa agent status`
        and the local console."""
        now = self.clock.now()
        active = self.store.active_bundle()
        version = active[0] if active else None
        if mono - self._next[0] >= NEXT_EVERY_S or version != self._next_version:
            self._next, self._next_version = (mono, None), version
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
        if not self.trust.trusted:
            why.append({"code": "clock", "detail": self.trust.detail})
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
        for code in ("amplifier", "relay", "audio_device", "disk_full"):
            detail = self._held_alarms().get(code)
            if detail is not None:
                why.append({"code": f"alarm.{code}", "detail": detail})
        return {"next": nxt, "blocked": why}


def _hhmm(text: str | None):
    from datetime import time as dtime
    try:
        return dtime.fromisoformat(text) if text else None
    except ValueError:
        return None
