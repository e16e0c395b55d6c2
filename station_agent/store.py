"""The station's local state: programme bundles, the audio cache, the outbox, play records.

Every event goes to the outbox in the same transaction as the state change it describes and
leaves it only when the hub has acknowledged storing it.
"""
from __future__ import annotations

import hashlib
import json
import os
import threading
import time
from datetime import datetime
from pathlib import Path
from typing import Any

from protocol.clock import iso
from protocol.envelope import canonical, check_wire
from protocol.storage import Migrations, open_db, write

migrations = Migrations("station")
LAZY_COUNTERS_S = 5.0
# a file hashed this recently, and unchanged since by its inode's record (size, times,
# inode), is not hashed again before it goes on air: audio pushed with a khẩn cấp command is
# verified as it is stored, a second or two before it plays
VERIFIED_FRESH_S = 60.0


@migrations
def m001_initial(db) -> None:
    db["meta"].create({"key": str, "value": str}, pk="key")
    db["bundles"].create({"version": int, "msg_id": str, "raw": str, "body": str,
                          "received_at": str, "state": str}, pk="version")
    db["audio"].create({"sha": str, "size": int, "stored_at": str}, pk="sha")
    db["outbox"].create({"seq": int, "kind": str, "at": str, "data": str}, pk="seq")
    db["plays"].create({"key": str, "item": str, "content": str, "scheduled_at": str,
                        "started_at": str, "ended_at": str, "outcome": str, "detail": str},
                       pk="key")


@migrations
def m002_commands(db) -> None:
    db["commands"].create({"id": str, "stream": str, "seq": int, "action": str, "body": str,
                           "expires_at": str, "received_at": str, "state": str,
                           "detail": str}, pk="id")


@migrations
def m003_canonical_outbox(db) -> None:
    """Queued events' data in canonical JSON (sorted keys, no spaces), as they are now
    written: a report is put together from the stored text without decoding and
    re-encoding every event (``pending_encoded``)."""
    rows = db.execute("SELECT seq, data FROM outbox").fetchall()
    db.conn.executemany("UPDATE outbox SET data = ? WHERE seq = ?",
                        [(canonical(json.loads(d)).decode("utf-8"), s) for s, d in rows])


class StationStore:
    def __init__(self, data_dir: str | os.PathLike[str]) -> None:
        self.dir = Path(data_dir)
        self.audio_dir = self.dir / "audio"
        self.audio_dir.mkdir(parents=True, exist_ok=True)
        self.db = open_db(self.dir / "station.db")
        migrations.apply(self.db)
        self._lock = threading.RLock()
        self._parsed: dict[str, tuple[int, dict] | None] = {}
        self._present: set[str] | None = None  # audio recorded as held (see has_audio)
        self._parts: dict[str, int] = {}  # part files' sizes (see part_size)
        self._hashers: dict[str, Any] = {}  # running SHA-256 of part files (see part_digest)
        self._verified: dict[str, tuple[tuple[int, ...], float]] = {}  # sha -> (stat, when)
        self.appended = 0  # events appended by this process (see _event)
        self._lazy: dict[str, int] = {}
        self._lazy_at = time.monotonic()

    def close(self) -> None:
        if self._lazy:
            self.bump(next(iter(self._lazy)), 0)  # writes every pending lazy counter
        self.db.close()

    # -- meta and counters -----------------------------------------------------------------
    def get(self, key: str, default: str | None = None) -> str | None:
        row = self.db.execute("SELECT value FROM meta WHERE key = ?", [key]).fetchone()
        return row[0] if row else default

    def put(self, key: str, value: Any) -> None:
        self.db.execute("INSERT INTO meta(key, value) VALUES (?, ?) ON CONFLICT(key) "
                        "DO UPDATE SET value = excluded.value", [key, str(value)])

    def bump(self, counter: str, by: int = 1, *, lazy: bool = False) -> int:
        """Add to a counter. ``lazy``: for counters bumped per audio chunk, kept in memory and
        written with the next plain bump or every few seconds (a crash may lose a few seconds
        of them; what they count is never lost)."""
        if lazy:
            if not self._lazy:  # the first one not written yet: written within a few seconds
                self._lazy_at = time.monotonic()
            self._lazy[counter] = self._lazy.get(counter, 0) + by
            if time.monotonic() - self._lazy_at < LAZY_COUNTERS_S:
                return 0
        with self._lock, write(self.db):
            if not lazy:
                self._lazy[counter] = self._lazy.get(counter, 0) + by
            n = self._write_lazy().get(counter, 0)
            return n if not lazy else 0

    def _write_lazy(self) -> dict[str, int]:
        """Pending lazy counters into the transaction in progress (a plain bump's, or an
        event's, so they cost no commit of their own); their new totals."""
        pending, self._lazy = self._lazy, {}
        totals = {}
        for name, add in pending.items():
            totals[name] = int(self.get(f"count.{name}", "0")) + add
            self.put(f"count.{name}", totals[name])
        return totals

    def counters(self) -> dict[str, int]:
        rows = self.db.execute("SELECT key, value FROM meta WHERE key LIKE 'count.%'")
        out = {k[6:]: int(v) for k, v in rows.fetchall()}
        for name, add in self._lazy.items():
            out[name] = out.get(name, 0) + add
        return out

    def next_bdseq_epoch(self) -> int:
        """Once per process start, on the owning thread: the link numbers its connection
        attempts within this epoch, so bdseq grows across restarts without paho's thread
        ever writing here."""
        with self._lock, write(self.db):
            n = int(self.get("bdseq.epoch", "0")) + 1
            self.put("bdseq.epoch", n)
            return n

    # -- outbox ----------------------------------------------------------------------------
    def _event(self, kind: str, data: dict[str, Any], at: datetime) -> int:
        """Append an event; call inside a transaction with the state change it reports.
        What cannot go on the wire is refused here, before it could block the outbox."""
        check_wire(data, f"event {kind}")
        if self._lazy:
            self._write_lazy()
        self.appended += 1  # a hint for the reporter (one more than committed if rolled back)
        seq = int(self.get("next_seq", "1"))
        self.put("next_seq", seq + 1)
        self.db.execute("INSERT INTO outbox(seq, kind, at, data) VALUES (?, ?, ?, ?)",
                        [seq, kind, iso(at), canonical(data).decode("utf-8")])
        return seq

    def event(self, kind: str, data: dict[str, Any], at: datetime) -> int:
        with self._lock, write(self.db):
            return self._event(kind, data, at)

    def pending_events(self, limit: int = 100) -> list[dict[str, Any]]:
        """The oldest ``limit`` events of the outbox, their data decoded."""
        return [{"seq": e["seq"], "kind": e["kind"], "at": e["at"], "data": json.loads(e["json"])}
                for e in self.pending_encoded(limit)]

    def pending_encoded(self, limit: int = 100) -> list[dict[str, Any]]:
        """``pending_events`` with each event's data as the canonical JSON text it is stored
        in (``json``), for ``reports.encode_report``: a reconnect storm's 100-event reports
        were decoded and encoded again event by event."""
        rows = self.db.execute("SELECT seq, kind, at, data FROM outbox ORDER BY seq LIMIT ?",
                               [limit]).fetchall()
        return [{"seq": s, "kind": k, "at": a, "json": d} for s, k, a, d in rows]

    def outbox_size(self) -> int:
        return self.db.execute("SELECT count(*) FROM outbox").fetchone()[0]

    def acknowledge(self, seqs: list[int]) -> int:
        with self._lock, write(self.db):
            keys, n = [int(s) for s in seqs], 0
            for i in range(0, len(keys), 500):  # a statement per batch, not per event
                part = keys[i:i + 500]
                n += self.db.execute(f"DELETE FROM outbox WHERE seq IN "
                                     f"({','.join('?' * len(part))})", part).rowcount
            return n

    # -- bundles ---------------------------------------------------------------------------
    def held_bundle(self) -> tuple[int, str] | None:
        """(version, message id) of the newest bundle held, active or not."""
        row = self.db.execute("SELECT version, msg_id FROM bundles ORDER BY version DESC "
                              "LIMIT 1").fetchone()
        return (row[0], row[1]) if row else None

    def bundle_raw(self, version: int) -> bytes:
        row = self.db.execute("SELECT raw FROM bundles WHERE version = ?", [version]).fetchone()
        return row[0].encode("utf-8") if row else b""

    def save_bundle(self, version: int, msg_id: str, raw: bytes, body: dict, at: datetime) -> None:
        with self._lock, write(self.db):
            self.db.execute("INSERT INTO bundles VALUES (?, ?, ?, ?, ?, 'pending')",
                            [version, msg_id, raw.decode("utf-8"),
                             json.dumps(body, ensure_ascii=False), iso(at)])
            if self.get("programme.since") is None:  # misses are counted from here on
                self.put("programme.since", iso(at))
            self._event("bundle.received", {"version": version}, at)
        self._parsed.clear()

    def pending_bundle(self) -> tuple[int, dict] | None:
        return self._bundle("pending")

    def active_bundle(self) -> tuple[int, dict] | None:
        return self._bundle("active")

    def emergency_held(self) -> str | None:
        """The active programme's emergency message, if this station holds its audio (it is
        hash-checked again before it goes on air)."""
        active = self.active_bundle()
        sha = (active[1] if active else {}).get("emergency")
        return sha if sha and self.has_audio(sha) else None

    def _bundle(self, state: str) -> tuple[int, dict] | None:
        """Asked for many times a step: read once and kept until ``save_bundle`` or
        ``activate`` (this store is its database's only writer) changes it. Do not modify the
        returned dict."""
        if state not in self._parsed:
            row = self.db.execute("SELECT version, body FROM bundles WHERE state = ? "
                                  "ORDER BY version DESC LIMIT 1", [state]).fetchone()
            self._parsed[state] = (row[0], json.loads(row[1])) if row else None
        return self._parsed[state]

    def activate_if_complete(self, at: datetime) -> int | None:
        """The pending bundle becomes active if every audio file it names is held; the
        version activated, if one was (asked every step: a write only when it will do)."""
        pending = self.pending_bundle()
        if pending is None or self.missing_audio(list(pending[1].get("content", {}))):
            return None
        try:
            with self._lock, write(self.db):
                return self._activate_if_complete(at)
        except BaseException:
            self._parsed.clear()
            raise

    def _activate_if_complete(self, at: datetime, just_kept: str | None = None) -> int | None:
        """Inside a transaction; ``just_kept``: a file recorded in it (not yet in the
        in-memory view of what is held, which changes only once it commits)."""
        pending = self.pending_bundle()
        if pending is None or [s for s in pending[1].get("content", {})
                               if s != just_kept and not self.has_audio(s)]:
            return None
        self._activate(pending[0], at)
        self._parsed["active"], self._parsed["pending"] = pending, None
        return pending[0]

    def activate(self, version: int, at: datetime) -> None:
        """Make ``version`` the programme that plays; older bundles are dropped."""
        with self._lock, write(self.db):
            self._activate(version, at)
        self._parsed.clear()

    def _activate(self, version: int, at: datetime) -> None:
        self.db.execute("DELETE FROM bundles WHERE version < ?", [version])
        self.db.execute("UPDATE bundles SET state = 'active' WHERE version = ?", [version])
        self._event("bundle.activated", {"version": version}, at)

    # -- audio cache -----------------------------------------------------------------------
    def audio_path(self, sha: str) -> Path:
        return self.audio_dir / f"{sha}.opus"

    def part_path(self, sha: str) -> Path:
        return self.audio_dir / f"{sha}.part"

    def has_audio(self, sha: str) -> bool:
        """Recorded as held (read once, then kept in step by this store, its only writer)
        and its file still there."""
        if self._present is None:
            self._present = {r[0] for r in self.db.execute("SELECT sha FROM audio").fetchall()}
        return sha in self._present and self.audio_path(sha).is_file()

    def missing_audio(self, shas: list[str]) -> list[str]:
        return [s for s in shas if not self.has_audio(s)]

    def part_size(self, sha: str) -> int:
        """Bytes of ``sha`` received so far (kept in memory after the first look: asked for
        every chunk, and only this store writes part files)."""
        size = self._parts.get(sha)
        if size is None:
            try:
                size = self.part_path(sha).stat().st_size
            except FileNotFoundError:
                size = 0
            self._parts[sha] = size
        return size

    def append_part(self, sha: str, data: bytes) -> int:
        """Append a chunk. Not fsync'd: a power cut can only leave the part shorter (it
        resumes from its size) or, on a file system that does not order data before size,
        wrong (the whole file's hash refuses it, and it is fetched again); ``keep_audio``
        makes it durable once, whole."""
        before = self._parts.pop(sha, None)  # unknown until the write is done (disk full)
        hasher = self._hashers.pop(sha, None)
        with open(self.part_path(sha), "ab") as f:
            f.write(data)
            f.flush()
            size = self._parts[sha] = f.tell()
        # the file's hash as it grows, when this process saw it grow from nothing: the
        # complete file is then checked without reading it back
        if hasher is None and before == 0 and size == len(data):
            hasher = hashlib.sha256()
        if hasher is not None and size - len(data) == before:
            hasher.update(data)
            self._hashers[sha] = hasher
        return size

    def part_digest(self, sha: str) -> str:
        """SHA-256 of the part file: from the running hash of its appends when it covers
        them all, else read from disk."""
        hasher = self._hashers.get(sha)
        if hasher is not None and self._parts.get(sha) == self.part_size(sha):
            return hasher.hexdigest()
        h = hashlib.sha256()
        with open(self.part_path(sha), "rb") as f:
            for block in iter(lambda: f.read(1 << 16), b""):
                h.update(block)
        return h.hexdigest()

    def verify_audio(self, sha: str, at: datetime) -> str | None:
        """Check a stored file against its name before it goes on air; None if it is intact,
        else why not (the file is then dropped, so it is fetched again)."""
        h = hashlib.sha256()
        try:
            with open(self.audio_path(sha), "rb") as f:
                seen = _identity(os.fstat(f.fileno()))
                last = self._verified.get(sha)
                if last is not None and last[0] == seen and \
                        time.monotonic() - last[1] < VERIFIED_FRESH_S:
                    return None
                for block in iter(lambda: f.read(1 << 16), b""):
                    h.update(block)
        except OSError as exc:
            return f"audio {sha[:12]} cannot be read: {exc.strerror}"
        if h.hexdigest() == sha:
            self._verified[sha] = (seen, time.monotonic())
            return None
        self._verified.pop(sha, None)
        self.forget_audio(sha, at, "changed")
        return f"audio {sha[:12]} changed on disk (hash {h.hexdigest()[:12]}): dropped"

    def forget_audio(self, sha: str, at: datetime, reason: str) -> None:
        """A held file dropped: its record, then the file (a release's tar once unpacked).
        Reported (``audio.dropped``), so the hub pushes it again when a command needs it."""
        with self._lock, write(self.db):
            self.db.execute("DELETE FROM audio WHERE sha = ?", [sha])
            self._event("audio.dropped", {"sha": sha, "reason": reason}, at)
        if self._present is not None:
            self._present.discard(sha)
        self._verified.pop(sha, None)
        self.audio_path(sha).unlink(missing_ok=True)

    def discard_part(self, sha: str) -> None:
        self._parts.pop(sha, None)
        self._hashers.pop(sha, None)
        self.part_path(sha).unlink(missing_ok=True)

    def keep_audio(self, sha: str, at: datetime, *, hashed: bool = False) -> int | None:
        """The verified part file becomes the cached audio: fsync'd, renamed, then recorded;
        in the same transaction the pending bundle becomes active if this was the last file
        it lacked (the version activated is returned, if one was). ``hashed``: the caller
        has just checked the part's SHA-256 (``verify_audio`` need not read it again for
        ``VERIFIED_FRESH_S``)."""
        self._parts.pop(sha, None)
        self._hashers.pop(sha, None)
        part, final = self.part_path(sha), self.audio_path(sha)
        fd = os.open(part, os.O_RDONLY)
        try:
            os.fsync(fd)
            size = os.fstat(fd).st_size
        finally:
            os.close(fd)
        os.replace(part, final)
        if hashed:
            self._verified[sha] = (_identity(os.stat(final)), time.monotonic())
        dfd = os.open(self.audio_dir, os.O_RDONLY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)
        try:
            with self._lock, write(self.db):
                self.db.execute("INSERT OR REPLACE INTO audio VALUES (?, ?, ?)",
                                [sha, size, iso(at)])
                self._event("audio.stored", {"sha": sha, "size": size}, at)
                activated = self._activate_if_complete(at, just_kept=sha)
        except BaseException:
            self._parsed.clear()  # the activation, if any, rolled back with the rest
            raise
        if self._present is not None:
            self._present.add(sha)
        return activated

    # -- commands --------------------------------------------------------------------------
    def command_state(self, cid: str) -> str | None:
        row = self.db.execute("SELECT state FROM commands WHERE id = ?", [cid]).fetchone()
        return row[0] if row else None

    def last_command_seq(self, stream: str) -> int:
        return int(self.get(f"cmdseq.{stream}", "0") or 0)

    def accept_command(self, cid: str, stream: str, seq: int, action: str, body: dict,
                       expires: datetime, at: datetime) -> None:
        """Recorded before anything is done, with its sequence, in one transaction: a command
        is executed at most once, whatever crashes."""
        with self._lock, write(self.db):
            self.db.execute("INSERT INTO commands VALUES (?, ?, ?, ?, ?, ?, ?, 'accepted', '')",
                            [cid, stream, seq, action, json.dumps(body, ensure_ascii=False),
                             iso(expires), iso(at)])
            self.put(f"cmdseq.{stream}", seq)
            self._event("command", {"id": cid, "action": action, "state": "accepted"}, at)

    def command_progress(self, cid: str, state: str, detail: str, at: datetime,
                         extra: dict[str, Any] | None = None) -> None:
        with self._lock, write(self.db):
            row = self.db.execute("SELECT action FROM commands WHERE id = ?", [cid]).fetchone()
            self.db.execute("UPDATE commands SET state = ?, detail = ? WHERE id = ?",
                            [state, detail[:300], cid])
            self._event("command", {"id": cid, "action": row[0] if row else None,
                                    "state": state, "detail": detail[:300], **(extra or {})}, at)

    def refuse_command(self, cid: str, action: str, reason: str, detail: str,
                       at: datetime) -> None:
        """A verified command refused (expired, replayed, for another target): reported
        under its id, so the hub's delivery table shows it."""
        self.event("command", {"id": cid, "action": action, "state": "refused",
                               "reason": reason, "detail": detail[:300]}, at)

    def unfinished_commands(self) -> list[dict[str, Any]]:
        rows = self.db.execute("SELECT id, action, body, expires_at, state FROM commands "
                               "WHERE state IN ('accepted', 'started')").fetchall()
        return [{"id": i, "action": a, "body": json.loads(b), "expires_at": e, "state": st}
                for i, a, b, e, st in rows]

    # -- plays -----------------------------------------------------------------------------
    def play_state(self, key: str) -> str | None:
        row = self.db.execute("SELECT outcome FROM plays WHERE key = ?", [key]).fetchone()
        return row[0] if row else None

    def start_play(self, key: str, item: str, content: str, scheduled: datetime,
                   at: datetime, state: str = "started") -> None:
        """Recorded before the sound starts, so a crash never lets the same occurrence play
        twice. ``preroll``: its sequence runs ahead of its instant (relay, power-good,
        warm-up) and no sound has started; see ``interrupted_plays``."""
        with self._lock, write(self.db):
            self.db.execute("INSERT INTO plays VALUES (?, ?, ?, ?, ?, NULL, ?, '')",
                            [key, item, content, iso(scheduled), iso(at), state])

    def on_air(self, key: str, at: datetime) -> None:
        """A pre-rolled occurrence's sound started (written just after: the row already keeps
        it from starting twice)."""
        with self._lock, write(self.db):
            self.db.execute("UPDATE plays SET outcome = 'started', started_at = ? WHERE key = ? "
                            "AND outcome = 'preroll'", [iso(at), key])

    def abandon_preroll(self, key: str) -> None:
        """A pre-roll given up before its instant (preempted, the agent stopping): no sound
        went out, so the occurrence may still start in its own window."""
        with self._lock, write(self.db):
            self.db.execute("DELETE FROM plays WHERE key = ? AND outcome = 'preroll'", [key])

    def finish_play(self, key: str, outcome: str, detail: str, at: datetime,
                    extra: dict[str, Any] | None = None) -> int:
        with self._lock, write(self.db):
            row = self.db.execute("SELECT item, content, scheduled_at, started_at FROM plays "
                                  "WHERE key = ?", [key]).fetchone()
            if row is None:
                raise KeyError(key)
            self.db.execute("UPDATE plays SET ended_at = ?, outcome = ?, detail = ? "
                            "WHERE key = ?", [iso(at), outcome, detail, key])
            data = {"occurrence": key, "item": row[0], "content": row[1], "scheduled": row[2],
                    "started": row[3], "ended": iso(at), "outcome": outcome, "detail": detail}
            data.update(extra or {})
            return self._event("playback", data, at)

    def record_missed(self, key: str, item: str, content: str, scheduled: datetime,
                      reason: str, at: datetime, outcome: str = "missed") -> int:
        """An occurrence that never started: ``missed`` (or ``stopped`` before it started)."""
        with self._lock, write(self.db):
            self.db.execute("INSERT INTO plays VALUES (?, ?, ?, ?, NULL, ?, ?, ?)",
                            [key, item, content, iso(scheduled), iso(at), outcome, reason])
            return self._event("playback", {
                "occurrence": key, "item": item, "content": content, "scheduled": iso(scheduled),
                "started": None, "ended": None, "outcome": outcome, "detail": reason}, at)

    def interrupted_plays(self, now: datetime | None = None) -> list[str]:
        """After a crash: plays whose sound may have started. A pre-roll whose instant had not
        come is dropped instead (its sound never starts before the instant), so it still
        plays; one whose instant had passed counts as started (never twice)."""
        if now is not None:
            with self._lock, write(self.db):
                self.db.execute("DELETE FROM plays WHERE outcome = 'preroll' AND "
                                "scheduled_at > ?", [iso(now)])
        return [r[0] for r in self.db.execute(
            "SELECT key FROM plays WHERE outcome IN ('started', 'preroll')").fetchall()]


def _identity(st: os.stat_result) -> tuple[int, ...]:
    """What any write to a file changes: its size, modification and change times, inode."""
    return (st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino)
