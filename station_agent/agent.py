"""The station process: one place that wires store, link, board, player and runner.

Messages arrive on paho's thread and are handed over through the link's inbox; everything
else happens on the agent's own thread in ``step()``, so the store is used from one thread.
"""
from __future__ import annotations

import collections
import json
import logging
import os
import queue
import threading
from datetime import timedelta
from pathlib import Path
from typing import Any, Callable

from hardware import Wiring, open_board
from audio import AlsaPlayer, AudioError, check_device
from protocol.clock import Clock, iso, make_clock, parse_iso
from protocol import hubkeys
from protocol.envelope import (ACCEPTS, KeyRing, Reason, Refused, Signer, parse,
                               public_from_text, seal, seal_encoded, unpack, verify)
from protocol.mqtt import Inbound, MqttLink, Will
from protocol.sdnotify import Notifier
from protocol.storage import write
from protocol.topics import Topics
from schedules import occurrences

from . import health as probes
from . import presence
from .alarms import Alarms, recheck_after_restart
from .clocktrust import ClockTrust
from .commands import Commands, HubTime, stream_of
from .config import StationConfig
from .runner import BUSY_TURN_S, Runner
from .reports import Reports, encode_report
from .intake import Intake
from .panel import Panel
from .status_file import Outlook, StatusFile
from .store import StationStore
from .transfer import Transfers
from .update import Updater

log = logging.getLogger("loaxa.agent")
STATE_TTL = timedelta(days=30)
REPORT_TTL = timedelta(days=30)
TRUST_SAVE_EVERY_S = 60.0
TIME_ASK_EVERY_S = 10.0     # while the clock is not trusted
TIME_CHECK_EVERY_S = 60.0   # while it is
REFUSAL_REPORT_EVERY_S = 10.0  # a flood of one refusal is counted in full, reported sparingly
SWITCH_CLEAR_S = 120         # an update switches only with no scheduled start this close
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
        self.id = cfg.station_id
        self.clock = clock or make_clock(cfg.clock)
        self.topics = Topics(cfg.prefix)
        self.store = StationStore(cfg.data_dir)
        self.alarm_book = Alarms(self.store, self.clock)
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
                             alarm=self.alarm_book.set, stream_stall_s=cfg.stream_stall_s,
                             hold_ms=cfg.amp_hold_ms, selftest_at=cfg.selftest_at,
                             preroll=cfg.preroll)
        floor = self.store.get("hub.time_floor")
        self.hub_time = HubTime(parse_iso(floor) if floor else None)
        self._hub_time_saved = -1e9
        self._audio_topics = {self.topics.audio(self.id), self.topics.target_audio("all"),
                              *(self.topics.target_audio(f"group:{g}") for g in cfg.groups)}
        self.commands = Commands(store=self.store, runner=self.runner, clock=self.clock,
                                 player=self.player, report_now=lambda: self.report_now(),
                                 expect_push=lambda sha, size: self.intake.expect_push(sha, size))
        self.link = MqttLink(
            client_id=f"station-{self.id}", broker=cfg.broker,
            subscriptions=self.topics.station_subscriptions(self.id, cfg.groups),
            will=self._will, bdseq_epoch=self.store.next_bdseq_epoch(),
            on_connected=lambda bdseq: self.link.inbox.put(_CONNECTED), loop=loop,
        )
        connected = self.link.connected.is_set
        self.reports = Reports(cfg.report_retry_s)  # what of the outbox goes, and when
        self.transfers = Transfers(self.cfg.fetch_retry_s)  # audio on its way
        self.intake = Intake(station_id=self.id, store=self.store, clock=self.clock,
                             transfers=self.transfers, commands=self.commands,
                             alarms=self.alarm_book, keys=lambda: self.hub_keys,
                             connected=connected, ask=self._ask_fetch, saw_hub=self._saw_hub,
                             min_free_bytes=cfg.min_free_bytes)
        self._stop_event: threading.Event | None = None
        self.updater = Updater(cfg=cfg, store=self.store, clock=self.clock, runner=self.runner,
                               commands=self.commands, connected=connected,
                               bundle_ok=self.intake.bundle_verifies,
                               expect_push=lambda sha, size: self.intake.expect_push(sha, size),
                               exit_for_switch=self._exit_for_switch,
                               air_free=self._air_free_for_switch)
        self.commands.on_update = self.updater.begin
        self.panel = Panel(board=self.board, store=self.store, clock=self.clock,
                           runner=self.runner, commands=self.commands, alarms=self.alarm_book,
                           live_mic_timeout_s=cfg.live_mic_timeout_s, connected=connected,
                           health=self.health_status)
        self._wake = threading.Event()
        self._command_taken = False  # a command was accepted: the runner ticks at once
        self.status_file = StatusFile(Path(cfg.data_dir) / "status.json", self.clock) \
            if status_file else None
        self.outlook = Outlook(self.store, self.runner, self.clock)
        self.trust = ClockTrust(max_step_s=cfg.clock_max_step_s,
                                max_hub_skew_s=cfg.clock_max_skew_s)
        self._trust_saved = -1e9
        self._time_asked = -1e9
        self._time_nonce: str | None = None
        self.link_rtt_ms: int | None = None
        self.health = probes.HealthModel(
            debounce=2, on_change=lambda name, status, detail: self.alarm_book.set(
                f"health.{name}", status in ("degraded", "fault"), detail),
            held={code[7:] for code in self.alarm_book.held() if code.startswith("health.")})
        self.modem = probes.ModemProbe()
        self._started_mono = self.clock.monotonic()
        self._ever_connected = False
        self._refusals_reported: dict[tuple[str, str], float] = {}
        self._health_at = -1e9
        self.heartbeats = presence.Heartbeats()
        self._light_flush = -1e9

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
        if change is None and "clock" in self.alarm_book.held():
            # untrusted before the restart, and a restart does not set a clock: ask the hub
            change = self.trust.distrust("untrusted before the restart; waiting for the hub's "
                                         "time")
        if change:
            self._clock_changed(change)
        recheck_after_restart(self.alarm_book, store=self.store,
                              min_free_bytes=self.cfg.min_free_bytes,
                              device_ok=self._device_ok if isinstance(self.player, AlsaPlayer)
                              else None, selftest=self.runner.selftest_now)
        self.link.start()

    def _device_ok(self) -> str | None:
        """None if the audio device opens as a play would (20 ms of silence), else why not."""
        try:
            check_device(self.cfg.audio_device, alsa_config=self.cfg.alsa_config)
        except AudioError as exc:
            return str(exc)
        return None

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
            phases = [tick, self.intake.request_audio] if self.receiving else [tick]
        else:
            p = self.panel
            phases = [p.sim_faults, p.buttons, p.console_actions, self.intake.try_activate,
                      tick, self.intake.request_audio, self._flush_reports, self.updater.step,
                      self._sample_health, self._heartbeat, p.leds, self._write_status]
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

    # -- health, heartbeat, local controls ------------------------------------------------
    def _sample_health(self) -> None:
        mono = self.clock.monotonic()
        if mono - self._health_at < self.cfg.health_every_s:
            return
        self._health_at = mono
        b = self.board
        found = [*probes.power(b), probes.cpu_temperature(), probes.disk(self.store.dir),
                 probes.memory(),
                 probes.link(self.link.connected.is_set(), self.link.failure,
                             ever_connected=self._ever_connected,
                             since_start_s=mono - self._started_mono, rtt_ms=self.link_rtt_ms)]
        self._ever_connected = self._ever_connected or self.link.connected.is_set()
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
        return self.intake.receiving

    def request_due_at(self) -> float:
        return self.intake.request_due_at()

    def health_status(self) -> str:
        """ok / degraded / fault: the worst of the probes and the alarms the agent raises
        itself, so the status never says more than the alarms explain."""
        worst = self.alarm_book.worst(probes.ORDER[self.health.status])
        return {0: "ok", 1: "degraded", 2: "fault"}[worst]

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

    # -- alarms and clock ------------------------------------------------------------------
    def alarms(self) -> dict[str, str]:
        return self.alarm_book.copy()

    def _clock_changed(self, change) -> None:
        self.alarm_book.set("clock", not change.trusted, change.detail)
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

    def _ask_fetch(self, body: dict) -> bool:
        """A window of audio asked for (``intake``); True if it went out."""
        return self.link.publish(self.topics.fetch(self.id),
                                 self._seal("fetch", body, timedelta(minutes=10)))

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
                self.intake.on_bundle(unpack(msg.payload), retained=msg.retain)
            elif msg.topic in self._audio_topics:
                self.intake.on_chunk(msg.payload)
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

    # -- local status (read by the demo and the local console) ----------------------------
    def _write_status(self) -> None:
        if self.status_file is None or not self.status_file.due():
            return
        summary = self.summary()
        summary.pop("clock")  # changes every call; the file says "at"
        f = self.link.failure
        self.status_file.write({
            "station": self.id, "connected": self.link.connected.is_set(), **summary,
            "link_failure": {"cause": f.cause, "detail": f.detail} if f else None,
            "audio_missing": len(summary["missing"]), "counters": self.store.counters(),
            "health": self.health_status(), "probes": self.health.summary(),
            **self.outlook(trusted=self.trust.trusted, trust_detail=self.trust.detail,
                           alarms=self.alarm_book.held()),
            "leds": {n: self.board.led_state(n) for n in ("link", "health", "on_air")},
            "volume": round(getattr(self.player, "volume", 1.0) * 100),
            **self.runner.status()})


def _hhmm(text: str | None):
    from datetime import time as dtime
    try:
        return dtime.fromisoformat(text) if text else None
    except ValueError:
        return None
