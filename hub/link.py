"""`loaxa hub serve`: publishes bundles, serves audio, ingests and acknowledges reports.

paho's thread only queues messages; the hub's own thread does everything else.
"""
from __future__ import annotations

import json
import logging
import os
import queue
import threading
from datetime import timedelta
from pathlib import Path
from typing import Any

from protocol import chunks
from protocol.clock import Clock, iso, parse_iso
from protocol.envelope import (ACCEPTS, KeyRing, Reason, Refused, Signer, pack, public_from_text,
                               seal, verify)
from protocol.mqtt import BrokerConfig, Inbound, MqttLink, Will
from protocol.sdnotify import Notifier
from protocol.storage import write
from protocol.topics import Topics
from schedules.model import QuietHours

from . import planner
from .store import HubStore

log = logging.getLogger("loaxa.hub")
MAX_EVENTS_PER_REPORT = 500
REPLAN_EVERY_S = 30.0
WATCH_EVERY_S = 5.0  # presence alarms and the serving heartbeat
CERTS_EVERY_S = 3600.0      # certificates expiring within 30 days: an alarm
TURN_MESSAGES = 500  # messages handled in one turn (one transaction of reports)
PUSH_AGAIN_S = 600.0  # a file pushed on a shared topic is not pushed there again sooner
# a command's audio goes to each station that lacks it while they are at most this share of
# its targets (the broker writes the file only to them), else once on the shared topic
PUSH_EACH_UPTO = 0.25
BLOB_CACHE_BYTES = 64 * 2**20
RESEND_AFTER_S = 3.0  # a chunk sent this recently is not sent again for the same station
# a station's refusals of one reason are stored (and logged) at most this often; every one
# is counted (``counters``, in ``hub status``): a flood of forged messages must not turn
# into one committed row (an fsync) and one log line each
REFUSAL_ROW_EVERY_S = 10.0
REFUSALS_KEPT = timedelta(days=90)
PRUNE_REFUSALS_EVERY_S = 3600.0
_CONNECTED = Inbound("$local/connected", b"", False)
_WAKE = Inbound("$local/wake", b"", False)  # the CLI or the web stored a command


class HubLink:
    def __init__(self, *, store: HubStore, signer: Signer, topics: Topics, broker: BrokerConfig,
                 clock: Clock, quiet: QuietHours | None = None,
                 offline_alarm_s: float = 300.0, key_path: Path | None = None) -> None:
        """``key_path``: where `hub key rotate` puts a new signing key for this hub to take."""
        self.store = store
        self.key_path = key_path
        self._key_kid = store.setting("hubkey.kid")
        self.offline_alarm_s = offline_alarm_s
        self._watched = -1e9
        self._failure_shown: object = ()
        self.signer = signer.cached()  # its key id worked out once, not per message
        self.topics = topics
        self.clock = clock
        self.quiet = quiet
        self.counters: dict[str, int] = {}
        self.started_at = iso(clock.now())
        self._counters_shown: dict[str, int] = {}
        self._refusal_rows: dict[tuple[str | None, str], float] = {}  # -> when last stored
        self._refusals_pruned = -1e9
        self._rings: dict[str, KeyRing] = {}
        self._heartbeats: dict[str, dict[str, Any]] = {}  # kept by handle, written by flush
        # reports of one turn share one transaction (one fsync); their acks go after it
        self._report_tx = False
        self._acks: list[tuple[str, list[int]]] = []
        self._certs_checked = -1e9  # certificate expiry: at start, then hourly
        # chunks handed to paho and not yet acknowledged, by (station, sha, offset): paho
        # re-sends them after a reconnect, so a repeated fetch must not send them again
        self._in_flight: dict[tuple[str, str, int], Any] = {}
        self._pruned = -1e9
        # stations whose latest bundle this connection published retained (see _reconcile)
        self._retained: set[str] = set()
        self._pushed: dict[tuple[str, str], float] = {}  # (target, sha) -> when last pushed
        self._known: set[str] | None = None  # audio the programme has used (see replan)
        self._blobs: dict[str, bytes] = {}  # content read once (BLOB_CACHE_BYTES at most)
        self._data_version: int | None = None
        self._stamp: tuple | None = None
        self._last_plan = -1e9
        self.link = MqttLink(
            client_id=f"hub-{signer.sender}", broker=broker,
            subscriptions=topics.hub_subscriptions(), will=self._will,
            bdseq_epoch=store.next_bdseq_epoch(),
            on_connected=lambda _: self.link.inbox.put(_CONNECTED),
        )

    def _seal(self, kind: str, body: dict[str, Any], ttl: timedelta, seq: int = 0) -> bytes:
        return seal(kind, body, signer=self.signer, seq=seq, now=self.clock.now(), ttl=ttl)

    def _will(self, bdseq: int) -> Will:
        return Will(self.topics.hub_state(),
                    self._seal("hub_state", {"online": False}, timedelta(days=30), bdseq))

    # -- lifecycle -------------------------------------------------------------------------
    def start(self) -> None:
        self.link.start()

    def stop(self) -> None:
        self._commit_reports()
        self.link.stop()

    def run(self, stop: threading.Event) -> None:
        """Under systemd ``Type=notify``: ready once started, a watchdog ping from this loop
        (deploy/systemd/loaxa-hub.service)."""
        notify = Notifier()
        self.start()
        notify.ready("hub serving")
        try:
            while not stop.is_set():
                self.step(wait=0.1)
                notify.watchdog()
        finally:
            notify.stopping()
            self.stop()

    def step(self, wait: float = 0.0) -> None:
        try:
            msg = self.link.inbox.get(timeout=wait) if wait else self.link.inbox.get_nowait()
        except queue.Empty:
            msg = None
        # at most TURN_MESSAGES, then the turn's commit and acks; a message is taken from
        # the inbox only to be handled (one taken past the limit was dropped without a word:
        # a reconnect storm lost a report every 500 messages until its 30 s resend)
        n = 0
        while msg is not None:
            self.handle(msg)
            n += 1
            if n >= TURN_MESSAGES:
                break
            try:
                msg = self.link.inbox.get_nowait()
            except queue.Empty:
                msg = None
        self.flush()
        self._commit_reports()
        self.publish_commands()  # first: a command must not wait for a fleet's replanning
        self.replan_if_changed()
        if self.clock.monotonic() - self._watched >= WATCH_EVERY_S:
            self.watch()

    def watch(self) -> None:
        """What the hub knows without being told: whether it reaches the broker (and if not,
        why), that it is serving (for the CLI), and which stations have been offline longer
        than the grace (an alarm, cleared when they return)."""
        self._watched = self.clock.monotonic()
        now = self.clock.now()
        f = self.link.failure
        shown = (f.cause, f.detail) if f else None
        if shown != self._failure_shown:
            self._failure_shown = shown
            self.store.set_setting("link.failure", json.dumps(
                {"cause": f.cause, "detail": f.detail, "since": iso(now)} if f else None))
        self.store.set_setting("serve.alive_at", iso(now))
        if self.counters != self._counters_shown:  # for `hub status`: since this start
            self._counters_shown = dict(self.counters)
            self.store.set_setting("serve.counters", json.dumps(
                {"since": self.started_at, "counts": self._counters_shown}))
        if self._watched - self._refusals_pruned >= PRUNE_REFUSALS_EVERY_S:
            self._refusals_pruned = self._watched
            self.store.prune_refusals(now - REFUSALS_KEPT)
        self.store.sync_offline_alarms(now, self.offline_alarm_s)
        self._follow_key_rotation(now)
        if self._watched - self._certs_checked >= CERTS_EVERY_S:
            self._certs_checked = self._watched
            self.store.sync_certificate_alarms(now)

    def _follow_key_rotation(self, now) -> None:
        """`hub key rotate` ran: sign with the new key from now on, announce it (retained),
        and re-sign every programme. Once every station has confirmed it, retire the old
        keys: a new announcement that names them (stations drop them)."""
        kid = self.store.setting("hubkey.kid")
        if kid and kid != self._key_kid and self.key_path is not None:
            signer = Signer.load(self.key_path, self.signer.sender)
            if signer.kid != kid:
                return  # the key file and its announcement are not both in place yet
            self.signer, self._key_kid = signer.cached(), kid
            self.link.publish(self.topics.hub_key(),
                              self.store.setting("hubkey.raw").encode("utf-8"), retain=True)
            log.info("signing with the new hub key %s", kid)
            self.replan_if_changed(force=True)
        if kid and kid == self._key_kid and not self.store.setting("hubkey.retired"):
            from .admin import key_status
            st = key_status(self.store)
            if st["stations"] and not st["waiting"]:
                from protocol import hubkeys
                chain = json.loads(self.store.setting("hubkey.chain") or "[]")
                old = sorted({link["by"] for link in chain} - {kid})
                seq = st["seq"] + 1
                raw = hubkeys.announce(chain, old, signer=self.signer, seq=seq, now=now)
                with self.store.lock, write(self.store.db):
                    for key, value in (("hubkey.raw", raw.decode("utf-8")),
                                       ("hubkey.seq", str(seq)),
                                       ("hubkey.retired", ",".join(old))):
                        self.store.db["settings"].upsert({"key": key, "value": value}, pk="key")
                self.link.publish(self.topics.hub_key(), raw, retain=True)
                log.info("every station trusts hub key %s: retired %s", kid, old)

    # -- planning --------------------------------------------------------------------------
    def replan_if_changed(self, force: bool = False) -> int:
        dv = self.store.data_version()
        mono = self.clock.monotonic()
        if not force and dv == self._data_version and mono - self._last_plan < REPLAN_EVERY_S:
            return 0
        self._data_version = dv
        stamp = self.store.programme_stamp()
        if not force and stamp == self._stamp and mono - self._last_plan < REPLAN_EVERY_S:
            return 0  # another process wrote, but nothing a bundle is made of (a command)
        self._stamp, self._last_plan = stamp, mono
        issued = 0
        now = self.clock.now()
        if self._known is None:  # what the programme used when this hub started: not new
            self._known = {r["content_sha"] for r in self.store.items()}
        shared: dict[tuple[str, str], None] = {}  # (target, sha), in the order first named
        for batch in planner.replan(self.store, self.signer, now, self.quiet,
                                    compressed=self.store.accepting("zlib")):
            for sid, bundle in batch:
                issued += 1
                self._publish_bundle(sid, bundle.payload)
                for sha, meta in bundle.content.items():
                    if meta.get("push"):
                        shared.setdefault((meta["push"], sha), None)
            self.publish_commands()  # a khẩn cấp command waits for one batch at most
        # (the data version is not read again here: a commit by another connection while
        # this plan ran, after the planner had read the items, was taken as planned and
        # waited REPLAN_EVERY_S; the hub's own writes do not move it)
        # after the bundles (a station learns it should expect the audio before it comes):
        # each new file once per shared topic, not once per station that fetches it
        # (only files new to the programme: a bundle re-signed before it expires names the
        # same files, which the stations hold)
        for target, sha in shared:
            last = self._pushed.get((target, sha))
            if sha not in self._known and (last is None or mono - last >= PUSH_AGAIN_S):
                self._pushed[(target, sha)] = mono
                self._push(target, sha)
        self._known.update(sha for _, sha in shared)
        return issued

    def publish_commands(self) -> int:
        """Commands the CLI (or the web) signed and stored: published once each, on the
        topic of their target, while they have not expired."""
        if not self.link.connected.is_set():
            return 0
        n = 0
        for c in self.store.unpublished_commands(self.clock.now()):
            if self.link.publish(self.topics.target_command(c["target"]),
                                 c["raw"].encode("utf-8")) is None:
                break  # not connected after all: the rest wait for the next step
            self.store.mark_published(c["id"], self.clock.now())
            self._count("commands.published")
            body = json.loads(c["body"])
            if c["action"] in ("play", "update") and body.get("push"):
                self._push_command_audio(c, body["content"])
            n += 1
        return n

    def _push_command_audio(self, c: dict, sha: str) -> None:
        """Audio pushed with a command goes only where it is lacking, as far as the stations'
        ``audio.stored`` reports tell: a khẩn cấp alert to stations that all hold its file is
        the command alone (pushing 185 KB behind it made mosquitto deliver the command to the
        median station 30 ms later, and 2,000 copies of a file they hold crossed the links).
        A station wrongly taken to hold it fetches it after ``PUSH_GRACE_S``."""
        lacking = self.store.lacking(c["target"], sha)
        if not lacking:
            self._count("audio.push_not_needed")
            return
        if c["target"].startswith("station:") or \
                len(lacking) > PUSH_EACH_UPTO * len(self.store.target_stations(c["target"])):
            self._push(c["target"], sha)
            return
        for sid in lacking:
            self._push(f"station:{sid}", sha)

    def _push(self, target: str, sha: str) -> None:
        """Audio once to all of a command's or a programme's targets (the broker fans it
        out): stations that hold it ignore it, the others take it without asking, and one
        that misses chunks asks for the rest with an ordinary fetch."""
        blob = self._blob(sha)
        if blob is None:
            return
        topic = self.topics.target_audio(target)
        for off in range(0, len(blob), chunks.PUSH_CHUNK_SIZE):
            raw = chunks.encode(sha, off, len(blob), blob[off:off + chunks.PUSH_CHUNK_SIZE])
            if self.link.publish(topic, raw) is None:
                # not silent: the stations fetch what the push did not bring
                self._count("audio.push_interrupted")
                log.warning("push of %s to %s stopped at %d of %d bytes (not connected or "
                            "paho full); stations fetch the rest", sha[:12], target, off,
                            len(blob))
                return
            self._count("audio.chunks_pushed")

    def _blob(self, sha: str) -> bytes | None:
        """A content file's bytes, read once and kept while it is asked for (bounded)."""
        blob = self._blobs.pop(sha, None)
        if blob is None:
            path = self.store.content_path(sha)
            if not path.exists():  # a release's tar (hub/releases.py)
                path = self.store.release_file(sha) or path
            try:
                blob = path.read_bytes()
            except OSError:
                log.error("content %s: its file is missing", sha[:12])
                return None
        self._blobs[sha] = blob  # most recently used last
        while sum(len(b) for b in self._blobs.values()) > BLOB_CACHE_BYTES and len(self._blobs) > 1:
            self._blobs.pop(next(iter(self._blobs)))
        return blob

    def _announce(self) -> None:
        """On every connect, the hub's birth. Bundles are not published again wholesale (N
        messages on every reconnect): every station's birth, retained or fresh, arrives on
        subscribing and names the version it holds, and ``_reconcile`` sends the current
        one to each station behind it, also when the broker lost its retained copies."""
        self.link.publish(self.topics.hub_state(), self._seal(
            "hub_state", {"online": True, "time": iso(self.clock.now())}, timedelta(days=30),
            self.link.bdseq), retain=True)
        raw = self.store.setting("hubkey.raw")
        if raw:  # the key rotation, for stations that connect later (a broker may lose it)
            self.link.publish(self.topics.hub_key(), raw.encode("utf-8"), retain=True)

    # -- incoming --------------------------------------------------------------------------
    def _ring(self, sid: str) -> KeyRing | None:
        ring = self._rings.get(sid)
        if ring is None:
            st = self.store.station(sid)
            if st is None:
                return None
            if not st["public_key"]:
                raise Refused(Reason.UNKNOWN_KEY, f"station {sid!r} has no key yet "
                              f"(`loaxa hub station key {sid} …`)")
            ring = KeyRing()
            ring.add(public_from_text(st["public_key"]), f"station:{sid}")
            self._rings[sid] = ring
        return ring

    def flush(self) -> int:
        """Write what ``handle`` kept for one commit (the turn's heartbeats)."""
        pending, self._heartbeats = self._heartbeats, {}
        if pending:
            self.store.set_states(pending)
        return len(pending)

    def _count(self, name: str) -> None:
        self.counters[name] = self.counters.get(name, 0) + 1

    def listen_for_wakes(self, fd: int) -> None:
        """Wake the loop whenever a byte arrives on ``fd`` (hub.admin.wake_line): its next
        turn publishes what was stored."""
        def listen() -> None:
            while True:
                try:
                    if not os.read(fd, 512):
                        return
                except OSError:
                    return  # closed: the hub is stopping
                self.link.inbox.put(_WAKE)
        threading.Thread(target=listen, name="hub-wake", daemon=True).start()

    def handle(self, msg: Inbound) -> None:
        if msg is _WAKE:
            return
        if msg is _CONNECTED:
            # a new connection of ours: what the old broker acknowledged may never have
            # reached a station, so nothing counts as recently sent any more
            self._in_flight = {k: v for k, v in self._in_flight.items()
                               if not v[0].acknowledged}
            self._retained.clear()
            self._announce()
            return
        parsed = self.topics.parse_station_topic(msg.topic)
        if parsed is None:
            self._count("ignored.topic")
            return
        sid, leaf = parsed
        if leaf not in ("events", "health", "state"):
            self._commit_reports()  # the other handlers commit (and publish) on their own
        now = self.clock.now()
        try:
            ring = self._ring(sid)
            if ring is None:
                raise Refused(Reason.UNKNOWN_KEY, f"unknown station {sid!r}")
            if leaf == "state":
                # presence joins the turn's transaction: 2,000 births after an outage were
                # 2,000 commits of their own (each with a savepoint: a bad one undoes itself)
                self._begin_reports()
                with self.store.lock, write(self.store.db):
                    self._on_state(sid, msg.payload, ring)
                return
            # a station's clock may be wrong (that is what its clock alarm is about): its
            # messages are judged by sequence (reports), by content (fetch) or answered
            # (time), never refused for the station's idea of the time
            env = verify(msg.payload, ring, now=None, sender=f"station:{sid}")
            if leaf == "events" and env.kind == "report":
                self._on_report(sid, env.body)
            elif leaf == "fetch" and env.kind == "fetch":
                self._on_fetch(sid, env.body)
            elif leaf == "health" and env.kind == "heartbeat":
                b = env.body
                if not isinstance(b.get("status"), str) or not isinstance(b.get("probes"), dict):
                    raise Refused(Reason.MALFORMED, "heartbeat without status and probes")
                # the latest health is state, not an event: a batch of heartbeats is kept
                # in one commit at the end of the turn (flush), the newest per station
                self._heartbeats[sid] = {
                    "health": b["status"][:16], "last_heartbeat": iso(now),
                    "health_probes": json.dumps(b["probes"], ensure_ascii=False),
                    "heartbeat_s": int(b.get("interval_s") or 0),
                    "on_air": int(bool(b.get("on_air")))}
            elif leaf == "fetch" and env.kind == "time":
                nonce = env.body.get("nonce")
                if not isinstance(nonce, str) or len(nonce) > 64:
                    raise Refused(Reason.MALFORMED, "time request without a nonce")
                self.link.publish(self.topics.ack(sid), self._seal(
                    "time", {"time": iso(self.clock.now()), "nonce": nonce},
                    timedelta(minutes=5)))
            else:
                raise Refused(Reason.WRONG_KIND, f"{env.kind} on {leaf}")
        except Refused as r:
            self._count(f"refused.{r.reason.value}")
            if self._refusal_row_due(sid, r.reason.value):
                log.warning("refused %s from %s: %s", leaf, sid, r)
                self.store.record_refusal(now, sid, msg.topic, r.reason.value, r.detail)
        except Exception as exc:
            self._count("errors")
            if self._refusal_row_due(sid, "error"):  # a message that trips a bug, repeated
                log.exception("handling %s failed", msg.topic)
                self.store.record_refusal(now, sid, msg.topic, "error",
                                          f"{type(exc).__name__}: {exc}")

    def _refusal_row_due(self, sid: str | None, reason: str) -> bool:
        mono = self.clock.monotonic()
        last = self._refusal_rows.get((sid, reason))
        if last is not None and mono - last < REFUSAL_ROW_EVERY_S:
            self._count("refused.not_stored")
            return False
        if len(self._refusal_rows) > 10_000:  # forged station ids must not grow it unbounded
            self._refusal_rows = {k: v for k, v in self._refusal_rows.items()
                                  if mono - v < REFUSAL_ROW_EVERY_S}
        self._refusal_rows[(sid, reason)] = mono
        return True

    def _on_state(self, sid: str, raw: bytes, ring: KeyRing) -> None:
        if not raw:  # a cleared retained message
            return
        # judged by bdseq, not by the station's clock (a will is signed when it connects)
        env = verify(raw, ring, now=None, kind="state", sender=f"station:{sid}")
        now = self.clock.now()
        cur = self.store.state(sid) or {}
        cur_bdseq = cur.get("bdseq") or 0
        body = env.body
        if body.get("online") is True:
            if env.seq < cur_bdseq:
                self._count("stale.birth")
                return
            since = cur.get("since") if cur.get("online") and env.seq == cur_bdseq else iso(now)
            self.store.set_state(sid, online=1, since=since, bdseq=env.seq, last_seen=iso(now))
            self._apply_summary(sid, body)
            self._reconcile(sid, body)
        else:
            if env.seq < cur_bdseq:  # the will of an older connection, after a fresh birth
                self._count("stale.will")
                log.info("ignored stale will of %s (bdseq %d < %d)", sid, env.seq, cur_bdseq)
                return
            if cur.get("online") or not cur:
                self.store.set_state(sid, online=0, since=iso(now), bdseq=env.seq,
                                     offline_count=(cur.get("offline_count") or 0) + 1)

    def _apply_summary(self, sid: str, s: dict[str, Any]) -> None:
        """The station's live state as it says it now (births and every report)."""
        try:
            self.store.set_state(
                sid, held_version=int(s.get("held_version") or 0),
                active_version=int(s.get("active_version") or 0),
                missing=",".join(str(m) for m in s.get("missing") or []),
                alarms=json.dumps(s.get("alarms") or {}, ensure_ascii=False),
                clock_trusted=int(bool(s.get("clock_trusted", True))),
                station_clock=str(s.get("clock") or ""), outbox=int(s.get("outbox") or 0),
                live_mic=int(bool(s.get("live_mic"))),
                software_version=str(s.get("version") or "")[:40] or None,
                accepts=",".join(a for a in s.get("accepts") or [] if a in ACCEPTS) or None)
        except (TypeError, ValueError):
            raise Refused(Reason.MALFORMED, "bad station state summary") from None

    def _alive(self, sid: str, bdseq: Any) -> None:
        """A report is a sign of life from the connection it names: a station the hub does not
        hold online (its birth missed: seen under load) is online again, unless a newer
        connection's death has been heard since."""
        if not isinstance(bdseq, int) or isinstance(bdseq, bool):
            return
        cur = self.store.state(sid) or {}
        if cur.get("online") != 1 and bdseq > (cur.get("bdseq") or 0):
            self.store.set_state(sid, online=1, since=iso(self.clock.now()), bdseq=bdseq,
                                 last_seen=iso(self.clock.now()))
            self._count("presence.from_report")

    def _reconcile(self, sid: str, summary: dict[str, Any]) -> None:
        """Desired state: a station holding an older programme gets the current one again
        (the broker may have lost the retained copy)."""
        latest = self.store.latest_bundle(sid)
        held = int(summary.get("held_version") or 0)
        if latest and held < latest["version"]:
            if sid in self._retained:
                # published retained on this connection: the broker hands it to the station
                # as it subscribes, right behind this birth (the birth is sent before the
                # station has read it); sending it again doubled every returning station's
                # bundle (2,000 births, 2,000 bundles twice)
                self._count("reconciled.retained")
                return
            self._publish_latest(sid, latest)
            self._count("reconciled")
        elif held > (latest["version"] if latest else 0) and \
                self.store.station(sid) is not None:
            # the station holds a version this hub never issued or issued as something else
            # (a hub restored from a backup): a new one above it
            issued = planner.issue_bundle(self.store, self.signer, sid, self.clock.now(),
                                          self.quiet, above=held,
                                          compressed=self._compressed(sid))
            if issued is not None:
                self._publish_bundle(sid, issued.payload)
                self._count("reconciled.ahead")

    def _publish_latest(self, sid: str, latest: dict[str, Any] | None = None) -> None:
        latest = latest or self.store.latest_bundle(sid)
        # a hub restored from a backup never sends what it held then (a station may hold a
        # newer one from the lost hub): the replan issues above the restore's floor
        if latest and latest["version"] >= planner.restore_floor(self.store):
            raw = latest["raw"].encode("utf-8")
            self._publish_bundle(sid, pack(raw) if self._compressed(sid) else raw)

    def _publish_bundle(self, sid: str, payload: bytes) -> None:
        """A station's latest bundle, retained; remembered as held by the broker for the
        rest of this connection (a new connection forgets: a restarted broker may not)."""
        if self.link.publish(self.topics.bundle(sid), payload, retain=True) is None:
            self._retained.discard(sid)
        else:
            self._retained.add(sid)

    def _compressed(self, sid: str) -> bool:
        """Whether the station said it takes its bundle compressed."""
        return "zlib" in ((self.store.state(sid) or {}).get("accepts") or "").split(",")

    def _on_report(self, sid: str, body: dict[str, Any]) -> None:
        events = body.get("events")
        if not isinstance(events, list) or not 0 < len(events) <= MAX_EVENTS_PER_REPORT:
            raise Refused(Reason.MALFORMED, "report without 1-500 events")
        for e in events:
            if not (isinstance(e, dict) and isinstance(e.get("seq"), int) and e["seq"] > 0
                    and isinstance(e.get("kind"), str) and isinstance(e.get("at"), str)
                    and isinstance(e.get("data"), dict)):
                raise Refused(Reason.MALFORMED, "an event lacks seq, kind, at or data")
        try:
            sent_at = parse_iso(body["sent_at"]) if body.get("sent_at") else None
        except ValueError:
            raise Refused(Reason.MALFORMED, "bad sent_at") from None
        self._begin_reports()
        with self.store.lock, write(self.store.db):  # events and live state: a savepoint
            new = self.store.store_events(sid, events, self.clock.now(), sent_at)
            if isinstance(body.get("state"), dict):
                self._apply_summary(sid, body["state"])
                self._alive(sid, body["state"].get("bdseq"))
            for e in new:
                if e["kind"] == "agent.started" and not e["historical"]:
                    cur = self.store.state(sid) or {}
                    self.store.set_state(sid, started_at=e["at"],
                                         restarts=(cur.get("restarts") or 0) + 1)
        # acknowledged only after the turn's commit (_commit_reports): every seq stored
        self._acks.append((sid, [e["seq"] for e in events]))

    def _begin_reports(self) -> None:
        """The turn's reports and presence in one transaction: a commit (an fsync) per
        report made a reconnect storm of 2,000 stations wait on the disk
        (bench/reconnect_storm.py)."""
        if not self._report_tx:
            self.store.lock.acquire()
            try:
                self.store.db.execute("BEGIN IMMEDIATE")
            except BaseException:
                self.store.lock.release()
                raise
            self._report_tx = True

    def _commit_reports(self) -> None:
        """Commit the turn's reports, then acknowledge them (never before: an ack is the
        station's licence to forget). A failed commit acknowledges nothing: the stations
        send again."""
        if not self._report_tx:
            return
        acks, self._acks = self._acks, []
        try:
            self.store.db.execute("COMMIT")
        except BaseException:
            if self.store.db.conn.in_transaction:
                self.store.db.execute("ROLLBACK")
            log.exception("committing %d reports failed; the stations send them again",
                          len(acks))
            acks = []
        finally:
            self._report_tx = False
            self.store.lock.release()
        for sid, seqs in acks:
            self.link.publish(self.topics.ack(sid), self._seal(
                "ack", {"station": sid, "seqs": seqs}, timedelta(days=1)))

    def _on_fetch(self, sid: str, body: dict[str, Any]) -> None:
        sha, offset = body.get("sha"), body.get("offset", 0)
        length = body.get("length", 1 << 40)
        if not (isinstance(sha, str) and chunks.SHA_RE.match(sha) and isinstance(offset, int)
                and offset >= 0 and isinstance(length, int) and length > 0):
            raise Refused(Reason.MALFORMED, "fetch needs a sha, an offset and a length")
        if self.store.content(sha) is None and self.store.release_file(sha) is None:
            raise Refused(Reason.MALFORMED, f"no content {sha[:12]}")
        blob = self._blob(sha)
        if blob is None:
            raise Refused(Reason.MALFORMED, f"content {sha[:12]} has no file")
        start = min(offset, len(blob))
        mono = self.clock.monotonic()
        if mono - self._pruned >= 1.0:  # not on every fetch: 5,000 fetching made it O(N²)
            self._pruned = mono
            self._in_flight = {k: v for k, v in self._in_flight.items()
                               if _still_held(v, mono)}
        for off in range(start, max(min(start + length, len(blob)), 1), chunks.CHUNK_SIZE):
            held = self._in_flight.get((sid, sha, off))
            if held is not None and _still_held(held, mono):
                # paho still holds it, or the broker took it a moment ago: a station that
                # reconnected twice in quick succession asks twice (seen under load: every
                # file came down twice); a chunk really lost is asked for again later
                self._count("audio.chunks_already_in_flight")
                continue
            raw = chunks.encode(sha, off, len(blob),
                                blob[off:min(off + chunks.CHUNK_SIZE, start + length)])
            sent = self.link.publish(self.topics.audio(sid), raw)
            if sent is None:  # not silent: counted, and the station asks again
                self._count("audio.chunks_not_sent")
                log.warning("fetch of %s by %s: chunk at %d not handed to paho (not connected "
                            "or paho full); the station asks again", sha[:12], sid, off)
                return
            self._in_flight[(sid, sha, off)] = (sent, mono)
            self._count("audio.chunks_sent")


def _still_held(entry: tuple[Any, float], mono: float) -> bool:
    """A chunk paho still holds, or that the broker took a moment ago: not sent again."""
    sent, at = entry
    return not sent.acknowledged or mono - at < RESEND_AFTER_S
