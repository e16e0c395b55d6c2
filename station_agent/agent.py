"""The station process: one place that wires store, link, board, player and runner.

Messages arrive on paho's thread and are handed over through the link's inbox; everything
else happens on the agent's own thread in ``step()``, so the store is used from one thread.
"""
from __future__ import annotations

import errno
import hashlib
import json
import logging
import os
import shutil
import threading
from datetime import timedelta
from pathlib import Path
from typing import Any

from hardware import Wiring, open_board
from audio import AlsaPlayer
from protocol import chunks
from protocol.clock import Clock, iso, make_clock, parse_iso
from protocol.envelope import KeyRing, Reason, Refused, Signer, public_from_text, seal, verify
from protocol.mqtt import Inbound, MqttLink, Will
from protocol.storage import write
from protocol.topics import Topics
from schedules import Item

from . import health as probes
from .clocktrust import ClockTrust
from .config import StationConfig
from .runner import Runner
from .store import StationStore

log = logging.getLogger("loaxa.agent")
STATE_TTL = timedelta(days=30)
REPORT_TTL = timedelta(days=30)
FETCH_WINDOW = 256 * 1024   # bytes asked for at a time: a re-request repeats at most this
TRUST_SAVE_EVERY_S = 60.0
TIME_ASK_EVERY_S = 10.0     # while the clock is not trusted
TIME_CHECK_EVERY_S = 60.0   # while it is
SIM_FAULTS = "sim-faults.json"   # `loaxa agent fault` writes it; simulated boards only
_CONNECTED = Inbound("$local/connected", b"", False)


class Agent:
    def __init__(self, cfg: StationConfig, *, clock: Clock | None = None, board: Any = None,
                 player: Any = None) -> None:
        self.cfg = cfg
        self.id = cfg.station_id
        self.clock = clock or make_clock(cfg.clock)
        self.topics = Topics(cfg.prefix)
        self.store = StationStore(cfg.data_dir)
        self.signer = Signer.load(cfg.station_key, f"station:{self.id}")
        self.hub_keys = KeyRing()
        self.hub_keys.add(public_from_text(cfg.hub_public), cfg.hub_sender)
        self.board = board or open_board(cfg.hardware_backend, Wiring.from_dict(cfg.wiring),
                                         sim=cfg.sim)
        self.player = player or AlsaPlayer(cfg.audio_device, alsa_config=cfg.alsa_config,
                                           volume=cfg.volume)
        self.runner = Runner(store=self.store, board=self.board, player=self.player,
                             clock=self.clock, warmup_ms=cfg.warmup_ms,
                             power_good_timeout_ms=cfg.power_good_timeout_ms,
                             alarm=self.alarm, stream_stall_s=cfg.stream_stall_s,
                             hold_ms=cfg.amp_hold_ms, selftest_at=cfg.selftest_at)
        self.link = MqttLink(
            client_id=f"station-{self.id}", broker=cfg.broker,
            subscriptions=self.topics.station_subscriptions(self.id, cfg.groups),
            will=self._will, next_bdseq=self.store.next_bdseq,
            on_connected=lambda bdseq: self.link.inbox.put(_CONNECTED),
        )
        self._sent: dict[int, float] = {}        # outbox seq -> monotonic time last sent
        self._fetching: dict[str, float] = {}    # sha -> monotonic time of last progress
        self._window_end: dict[str, int] = {}    # sha -> end of the window asked for
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
                f"health.{name}", status in ("degraded", "fault"), detail))
        self._health_at = -1e9
        self._heartbeat_at = -1e9
        self._faults_seen: bytes | None = None
        self._presses_seen: dict[str, int] = {}

    # -- lifecycle -------------------------------------------------------------------------
    def start(self) -> None:
        now, mono = self.clock.now(), self.clock.monotonic()
        interrupted = self.runner.recover()
        last = self.store.get("clock.last_trusted")
        change = self.trust.start(now, mono, parse_iso(last) if last else None)
        self.store.event("agent.started", {"interrupted": interrupted,
                                           "clock": iso(now)}, now)
        if change:
            self._clock_changed(change)
        self.link.start()

    def stop(self) -> None:
        self.runner.shutdown()
        self.link.stop(send_will=True)
        self.board.close()
        self.store.close()

    def run(self, stop: threading.Event) -> None:
        self.start()
        try:
            while not stop.is_set():
                self.step()
                stop.wait(0.05)
        finally:
            self.stop()

    def step(self) -> None:
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
        for _ in range(200):
            try:
                msg = self.link.inbox.get_nowait()
            except Exception:
                break
            self.handle(msg)
        # each phase on its own: a bug in one (logged, counted) never stops the others,
        # above all never the runner
        for phase in (self._sim_faults, self._buttons, self._try_activate,
                      lambda: self.runner.tick(timed=self.trust.trusted), self._request_audio,
                      self._flush_reports, self._sample_health, self._heartbeat, self._leds,
                      self._write_status):
            try:
                phase()
            except Exception:
                log.exception("agent step failed")
                self.store.bump("errors.step")

    # -- health, heartbeat, local controls ------------------------------------------------
    def _sample_health(self) -> None:
        mono = self.clock.monotonic()
        if mono - self._health_at < self.cfg.health_every_s:
            return
        self._health_at = mono
        b = self.board
        found = [*probes.power(b), probes.cpu_temperature(), probes.disk(self.store.dir),
                 probes.memory(),
                 probes.Probe("clock", "ok" if self.trust.trusted else "fault",
                              self.trust.trusted, "" if self.trust.trusted else self.trust.detail),
                 probes.Probe("link", "ok" if self.link.connected.is_set() else "degraded",
                              self.link_rtt_ms if self.link.connected.is_set() else None,
                              "" if self.link.connected.is_set() else "no broker connection"),
                 probes.Probe("audio_device", "fault" if self.store.get("alarm.audio_device")
                              is not None else "ok", None,
                              self.store.get("alarm.audio_device") or "")]
        if self.runner.current is None:  # relays and amplifier mean something only at rest
            found += [probes.relays(b), probes.amplifier(b)]
        m = probes.modem()
        if m is not None:
            found.append(m)
        self.health.update(found)

    def heartbeat_interval(self) -> float:
        period = self._heightened()
        return float(period.get("heartbeat_s", self.cfg.heartbeat_s)) if period \
            else float(self.cfg.heartbeat_s)

    def _heightened(self) -> dict:
        """The heightened period in force now, from the active programme, or {}."""
        active = self.store.active_bundle()
        h = (active[1] if active else {}).get("heightened") or {}
        try:
            now = self.clock.now()
            return h if parse_iso(h["start"]) <= now < parse_iso(h["end"]) else {}
        except (KeyError, TypeError, ValueError):
            return {}

    def _heartbeat(self) -> None:
        period = self._heightened()  # a heightened period's self-test time applies while it lasts
        self.runner.selftest_at = _hhmm(period.get("selftest_at")) or _hhmm(self.cfg.selftest_at)
        mono = self.clock.monotonic()
        if not self.link.connected.is_set() or \
                mono - self._heartbeat_at < self.heartbeat_interval():
            return
        self._heartbeat_at = mono
        st = self.runner.status()
        body = {"status": self.health.status, "probes": self.health.summary(),
                "on_air": st["on_air"], "relay": st["relay"],
                "heightened": bool(self._heightened()),
                "interval_s": int(self.heartbeat_interval())}
        self.link.publish(self.topics.health(self.id),
                          self._seal("heartbeat", body, timedelta(minutes=10)))

    def _leds(self) -> None:
        b, st = self.board, self.health.status
        b.led("link", "on" if self.link.connected.is_set() else "blink")
        b.led("health", {"ok": "on", "degraded": "blink"}.get(st, "off"))
        b.led("on_air", "on" if self.runner.current is not None else "off")

    def _buttons(self) -> None:
        while True:
            try:
                name, pressed = self.board.presses.get_nowait()
            except Exception:
                return
            now = self.clock.now()
            self.store.event("button", {"button": name, "pressed": pressed}, now)
            if not pressed:
                continue
            if name == "stop":
                self.runner.stop("stopped with the stop button at the station")
            elif name == "emergency":
                active = self.store.active_bundle()
                sha = (active[1] if active else {}).get("emergency")
                if sha and self.store.has_audio(sha):
                    self.runner.play_now(sha, "local emergency message (button)")
                else:
                    self.alarm("emergency_message", True, "no stored emergency message")
            elif name == "live_mic":
                self.runner.toggle_live_mic(self.cfg.live_mic_timeout_s)

    def _sim_faults(self) -> None:
        """A running simulated station takes the faults `loaxa agent fault` writes."""
        eq = getattr(self.board, "equipment", None)
        if eq is None:
            return
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
        log.warning("simulated faults now: %s", sorted(names) or "none")

    # -- alarms and clock ------------------------------------------------------------------
    def alarm(self, code: str, active: bool, detail: str = "") -> None:
        """Raise or clear an alarm: once per transition, as an event, remembered across
        restarts so every birth and report says which alarms stand."""
        key = f"alarm.{code}"
        if (self.store.get(key) is not None) == active:
            return
        now = self.clock.now()
        with write(self.store.db):
            if active:
                self.store.put(key, detail)
            else:
                self.store.db.execute("DELETE FROM meta WHERE key = ?", [key])
            self.store.event("alarm", {"code": code, "active": active, "detail": detail}, now)
        (log.warning if active else log.info)("alarm %s %s: %s", code,
                                              "raised" if active else "cleared", detail)

    def alarms(self) -> dict[str, str]:
        rows = self.store.db.execute("SELECT key, value FROM meta WHERE key LIKE 'alarm.%'")
        return {k[6:]: v for k, v in rows.fetchall()}

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

    def summary(self) -> dict[str, Any]:
        """The station's live state, sent with every birth and every report."""
        held = self.store.held_bundle()
        active = self.store.active_bundle()
        pending = self.store.pending_bundle()
        wanted = list((pending or active or (0, {}))[1].get("content", {}))
        return {"held_version": held[0] if held else 0,
                "active_version": active[0] if active else 0,
                "pending_version": pending[0] if pending else None,
                "missing": self.store.missing_audio(wanted), "alarms": self.alarms(),
                "clock": iso(self.clock.now()), "clock_trusted": self.trust.trusted,
                "outbox": self.store.outbox_size()}

    def _birth(self) -> None:
        body = {"online": True, "bdseq": self.link.bdseq, "name": self.cfg.name,
                **self.summary()}
        self.link.publish(self.topics.state(self.id),
                          self._seal("state", body, STATE_TTL, self.link.bdseq), retain=True)
        self._ask_time()
        self._sent.clear()  # resend anything unacknowledged on the new connection
        for sha in list(self._fetching):
            self._fetching[sha] = -1e9

    def _flush_reports(self) -> None:
        if not self.link.connected.is_set():
            return
        mono = self.clock.monotonic()
        batch = [e for e in self.store.pending_events(self.cfg.report_batch)
                 if mono - self._sent.get(e["seq"], -1e9) >= self.cfg.report_retry_s]
        if not batch:
            return
        body = {"events": batch, "sent_at": iso(self.clock.now()), "state": self.summary()}
        raw = self._seal("report", body, REPORT_TTL, batch[-1]["seq"])
        if self.link.publish(self.topics.events(self.id), raw):
            for e in batch:
                self._sent[e["seq"]] = mono

    def _request_audio(self) -> None:
        pending = self.store.pending_bundle()
        if not pending or not self.link.connected.is_set():
            return
        mono = self.clock.monotonic()
        content = pending[1].get("content", {})
        missing = self.store.missing_audio(list(content))
        need = sum(int(content[s].get("size") or 0) - self.store.part_size(s) for s in missing)
        free = shutil.disk_usage(self.store.audio_dir).free
        if missing and free - need < self.cfg.min_free_bytes:
            self.alarm("disk_full", True, f"{free // 2**20} MiB free, {need // 2**20} MiB of "
                       f"audio wanted, {self.cfg.min_free_bytes // 2**20} MiB kept in reserve")
            return
        if self.store.get("alarm.disk_full") is not None:
            self.alarm("disk_full", False, f"{free // 2**20} MiB free")
        for sha in missing:
            last = self._fetching.get(sha)
            if last is not None and mono - last < self.cfg.fetch_retry_s:
                continue
            self._ask_window(sha, mono)

    def _ask_window(self, sha: str, mono: float) -> None:
        offset = self.store.part_size(sha)
        raw = self._seal("fetch", {"sha": sha, "offset": offset, "length": FETCH_WINDOW},
                         timedelta(minutes=10))
        if self.link.publish(self.topics.fetch(self.id), raw):
            self._fetching[sha] = mono
            self._window_end[sha] = offset + FETCH_WINDOW

    # -- incoming --------------------------------------------------------------------------
    def handle(self, msg: Inbound) -> None:
        if msg is _CONNECTED:
            self._birth()
            return
        t = self.topics
        try:
            if msg.topic == t.bundle(self.id):
                self._on_bundle(msg.payload)
            elif msg.topic == t.audio(self.id):
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
                    change = self.trust.observe_hub(env.iat, self.clock.now())
                    if change:
                        self._clock_changed(change)
                    return
                if env.kind != "ack":
                    raise Refused(Reason.WRONG_KIND, f"{env.kind} on the ack topic")
                seqs = env.body.get("seqs")
                if not isinstance(seqs, list) or not all(isinstance(s, int) for s in seqs):
                    raise Refused(Reason.MALFORMED, "ack without a list of sequence numbers")
                self.store.acknowledge(seqs)
                for s in seqs:
                    self._sent.pop(s, None)
            elif msg.topic == t.hub_state():
                pass  # the hub's presence; clock comparison comes with clock trust
            else:
                # commands (play-now, stop) are verified even before they do anything
                verify(msg.payload, self.hub_keys, now=self.clock.now())
                self.store.bump("ignored.command")
        except Refused as r:
            self._refuse(r, msg.topic)
        except Exception as exc:  # a bug must not stop the station; it is reported
            log.exception("handling %s failed", msg.topic)
            self._refuse(Refused(Reason.MALFORMED, f"{type(exc).__name__}: {exc}"), msg.topic)

    def _refuse(self, r: Refused, topic: str) -> None:
        log.warning("refused message on %s: %s", topic, r)
        self.store.bump(f"refused.{r.reason.value}")
        self.store.event("refused", {"reason": r.reason.value, "detail": r.detail[:300],
                                     "topic": topic}, self.clock.now())

    def _on_bundle(self, raw: bytes) -> None:
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
        self.store.save_bundle(env.seq, env.id, raw, body, self.clock.now())
        log.info("bundle %d stored (%d items)", env.seq, len(items))
        self._try_activate()

    def _try_activate(self) -> None:
        pending = self.store.pending_bundle()
        if pending and not self.store.missing_audio(list(pending[1].get("content", {}))):
            self.store.activate(pending[0], self.clock.now())
            log.info("bundle %d active", pending[0])

    def _on_chunk(self, raw: bytes) -> None:
        self.store.bump("audio.bytes_received", len(raw))
        c = chunks.decode(raw)  # raises Refused on a malformed or corrupt chunk
        if c.sha not in self._fetching or self.store.has_audio(c.sha):
            self.store.bump("ignored.chunk")
            return
        have = self.store.part_size(c.sha)
        if c.offset != have:
            self.store.bump("ignored.chunk")
            if c.offset > have:  # a gap: ask again from where we are
                self._fetching[c.sha] = -1e9
            return
        try:
            size = self.store.append_part(c.sha, c.data)
        except OSError as exc:
            if exc.errno != errno.ENOSPC:
                raise
            self.store.discard_part(c.sha)
            self._fetching.pop(c.sha, None)
            self.alarm("disk_full", True, f"no space left while storing {c.sha[:12]}")
            return
        mono = self.clock.monotonic()
        self._fetching[c.sha] = mono
        if size < c.total:
            if size >= self._window_end.get(c.sha, 0):
                self._ask_window(c.sha, mono)
            return
        digest = _sha256_file(self.store.part_path(c.sha))
        if digest != c.sha:
            self.store.discard_part(c.sha)
            raise Refused(Reason.BAD_AUDIO, f"audio {c.sha[:12]} arrived with hash {digest[:12]}")
        self.store.keep_audio(c.sha, self.clock.now())
        self._fetching.pop(c.sha, None)
        self._window_end.pop(c.sha, None)
        self._try_activate()

    # -- local status (read by the demo and the local console) ----------------------------
    def _write_status(self) -> None:
        mono = self.clock.monotonic()
        if mono - self._last_status_mono < 0.2:
            return
        self._last_status_mono = mono
        summary = self.summary()
        summary.pop("clock")  # changes every call; the file says "at"
        st = {"station": self.id, "connected": self.link.connected.is_set(), **summary,
              "audio_missing": len(summary["missing"]), "counters": self.store.counters(),
              "health": self.health.status,
              "leds": {n: self.board.led_state(n) for n in ("link", "health", "on_air")},
              **self.runner.status()}
        if st != self._last_status:
            tmp = self._status_path.with_suffix(".tmp")
            tmp.write_text(json.dumps({**st, "pid": os.getpid(), "at": iso(self.clock.now())}))
            os.replace(tmp, self._status_path)
            self._last_status = st


def _hhmm(text: str | None):
    from datetime import time as dtime
    try:
        return dtime.fromisoformat(text) if text else None
    except ValueError:
        return None


def _sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 16), b""):
            h.update(block)
    return h.hexdigest()
