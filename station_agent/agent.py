"""The station process: one place that wires store, link, board, player and runner.

Messages arrive on paho's thread and are handed over through the link's inbox; everything
else happens on the agent's own thread in ``step()``, so the store is used from one thread.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import threading
import time
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from hardware import Wiring, open_board
from audio import AlsaPlayer
from protocol import chunks
from protocol.clock import Clock, iso, make_clock
from protocol.envelope import KeyRing, Reason, Refused, Signer, public_from_text, seal, verify
from protocol.mqtt import Inbound, MqttLink, Will
from protocol.topics import Topics
from schedules import Item

from .config import StationConfig
from .runner import Runner
from .store import StationStore

log = logging.getLogger("loaxa.agent")
REPORT_BATCH = 100
STATE_TTL = timedelta(days=30)
REPORT_TTL = timedelta(days=30)
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
        self.player = player or AlsaPlayer(cfg.audio_device, alsa_config=cfg.alsa_config)
        self.runner = Runner(store=self.store, board=self.board, player=self.player,
                             clock=self.clock, warmup_ms=cfg.warmup_ms,
                             power_good_timeout_ms=cfg.power_good_timeout_ms)
        self.link = MqttLink(
            client_id=f"station-{self.id}", broker=cfg.broker,
            subscriptions=self.topics.station_subscriptions(self.id, cfg.groups),
            will=self._will, next_bdseq=self.store.next_bdseq,
            on_connected=lambda bdseq: self.link.inbox.put(_CONNECTED),
        )
        self._sent: dict[int, float] = {}        # outbox seq -> monotonic time last sent
        self._fetching: dict[str, float] = {}    # sha -> monotonic time of last progress
        self._status_path = Path(cfg.data_dir) / "status.json"
        self._last_status: dict[str, Any] | None = None

    # -- lifecycle -------------------------------------------------------------------------
    def start(self) -> None:
        self.runner.recover()
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
        for _ in range(200):
            try:
                msg = self.link.inbox.get_nowait()
            except Exception:
                break
            self.handle(msg)
        self._try_activate()
        self.runner.tick()
        self._request_audio()
        self._flush_reports()
        self._write_status()

    # -- outgoing --------------------------------------------------------------------------
    def _seal(self, kind: str, body: dict, ttl: timedelta, seq: int = 0) -> bytes:
        return seal(kind, body, signer=self.signer, seq=seq, now=self.clock.now(), ttl=ttl)

    def _will(self, bdseq: int) -> Will:
        return Will(self.topics.state(self.id),
                    self._seal("state", {"online": False, "bdseq": bdseq}, STATE_TTL, bdseq))

    def _birth(self) -> None:
        held = self.store.held_bundle()
        active = self.store.active_bundle()
        pending = self.store.pending_bundle()
        wanted = list((pending or active or (0, {}))[1].get("content", {}))
        body = {"online": True, "bdseq": self.link.bdseq, "name": self.cfg.name,
                "held_version": held[0] if held else 0,
                "active_version": active[0] if active else 0,
                "missing": self.store.missing_audio(wanted), "clock": iso(self.clock.now())}
        self.link.publish(self.topics.state(self.id),
                          self._seal("state", body, STATE_TTL, self.link.bdseq), retain=True)
        self._sent.clear()  # resend anything unacknowledged on the new connection
        for sha in list(self._fetching):
            self._fetching[sha] = 0.0

    def _flush_reports(self) -> None:
        if not self.link.connected.is_set():
            return
        mono = self.clock.monotonic()
        batch = [e for e in self.store.pending_events(REPORT_BATCH)
                 if mono - self._sent.get(e["seq"], -1e9) >= self.cfg.report_retry_s]
        if not batch:
            return
        raw = self._seal("report", {"events": batch}, REPORT_TTL, batch[-1]["seq"])
        if self.link.publish(self.topics.events(self.id), raw):
            for e in batch:
                self._sent[e["seq"]] = mono

    def _request_audio(self) -> None:
        pending = self.store.pending_bundle()
        if not pending or not self.link.connected.is_set():
            return
        mono = self.clock.monotonic()
        for sha in self.store.missing_audio(list(pending[1].get("content", {}))):
            last = self._fetching.get(sha)
            if last is not None and mono - last < self.cfg.fetch_retry_s:
                continue
            offset = self.store.part_size(sha)
            raw = self._seal("fetch", {"sha": sha, "offset": offset}, timedelta(minutes=10))
            if self.link.publish(self.topics.fetch(self.id), raw):
                self._fetching[sha] = mono

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
                env = verify(msg.payload, self.hub_keys, now=self.clock.now(), kind="ack")
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
        c = chunks.decode(raw)  # raises Refused on a malformed or corrupt chunk
        if c.sha not in self._fetching or self.store.has_audio(c.sha):
            self.store.bump("ignored.chunk")
            return
        have = self.store.part_size(c.sha)
        if c.offset != have:
            if c.offset > have:  # a gap: ask again from where we are
                self._fetching[c.sha] = 0.0
            return
        size = self.store.append_part(c.sha, c.data)
        self._fetching[c.sha] = self.clock.monotonic()
        if size < c.total:
            return
        digest = _sha256_file(self.store.part_path(c.sha))
        if digest != c.sha:
            self.store.discard_part(c.sha)
            raise Refused(Reason.BAD_AUDIO, f"audio {c.sha[:12]} arrived with hash {digest[:12]}")
        self.store.keep_audio(c.sha, self.clock.now())
        self._fetching.pop(c.sha, None)
        self._try_activate()

    # -- local status (read by the demo and the local console) ----------------------------
    def _write_status(self) -> None:
        active = self.store.active_bundle()
        pending = self.store.pending_bundle()
        wanted = list((pending or active or (0, {}))[1].get("content", {}))
        st = {"station": self.id, "connected": self.link.connected.is_set(),
              "active_version": active[0] if active else 0,
              "pending_version": pending[0] if pending else None,
              "audio_missing": len(self.store.missing_audio(wanted)),
              "outbox": self.store.outbox_size(), **self.runner.status()}
        if st != self._last_status:
            tmp = self._status_path.with_suffix(".tmp")
            tmp.write_text(json.dumps({**st, "at": iso(self.clock.now())}))
            os.replace(tmp, self._status_path)
            self._last_status = st


def _sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 16), b""):
            h.update(block)
    return h.hexdigest()
