"""The hub's database (SQLite through sqlite-utils, registered migrations)."""
from __future__ import annotations

import functools
import json
import os
import threading
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any, NamedTuple

from protocol.clock import iso, parse_iso
from protocol.storage import Migrations, open_db, write, write_file

from .display import show

migrations = Migrations("hub")


@migrations
def m001_initial(db) -> None:
    db["stations"].create({"id": str, "name": str, "public_key": str, "created_at": str},
                          pk="id")
    db["groups"].create({"id": str, "name": str}, pk="id")
    db["station_groups"].create({"station_id": str, "group_id": str},
                                pk=("station_id", "group_id"),
                                foreign_keys=[("station_id", "stations"), ("group_id", "groups")])
    db["content"].create({"sha": str, "title": str, "source": str, "text": str, "engine": str,
                          "codec": str, "size": int, "duration_ms": int, "created_at": str},
                         pk="sha")
    db["schedule_items"].create({
        "id": str, "content_sha": str, "title": str, "priority": int, "start": str,
        "rrule": str, "valid_from": str, "valid_until": str, "late_start_s": int,
        "target": str, "created_at": str, "cancelled_at": str,
    }, pk="id", foreign_keys=[("content_sha", "content")])
    db["bundles"].create({"station_id": str, "version": int, "digest": str, "issued_at": str,
                          "expires_at": str, "raw": str}, pk=("station_id", "version"))
    db["station_state"].create({
        "station_id": str, "online": int, "since": str, "bdseq": int, "held_version": int,
        "active_version": int, "missing": str, "last_seen": str, "station_clock": str,
    }, pk="station_id")
    db["events"].create({"station_id": str, "seq": int, "kind": str, "at": str, "data": str,
                         "received_at": str}, pk=("station_id", "seq"))
    db["playbacks"].create({
        "station_id": str, "seq": int, "occurrence": str, "item_id": str, "content_sha": str,
        "scheduled_at": str, "started_at": str, "ended_at": str, "outcome": str,
        "detail": str, "received_at": str,
    }, pk=("station_id", "seq"))
    db["playbacks"].create_index(["occurrence"])
    db["refusals"].create({"id": int, "at": str, "station_id": str, "topic": str,
                           "reason": str, "detail": str}, pk="id")
    db["settings"].create({"key": str, "value": str}, pk="key")


@migrations
def m002_live_state_and_alarms(db) -> None:
    db["events"].add_column("historical", int, not_null_default=0)
    db["playbacks"].add_column("historical", int, not_null_default=0)
    # "restarts" counts every start of the agent (agent.started events), the first included
    for col, typ in (("alarms", str), ("clock_trusted", int), ("outbox", int),
                     ("started_at", str), ("restarts", int), ("offline_count", int)):
        db["station_state"].add_column(col, typ)
    db["alarms"].create({"id": int, "station_id": str, "code": str, "detail": str,
                         "raised_at": str, "cleared_at": str, "historical": int,
                         "acked_at": str, "acked_by": str, "ack_note": str}, pk="id")
    db["alarms"].create_index(["station_id", "code", "cleared_at"])


@migrations
def m003_stream_items(db) -> None:
    db["schedule_items"].add_column("stream", str)
    db["schedule_items"].add_column("duration_ms", int)


@migrations
def m004_health_and_heightened(db) -> None:
    for col, typ in (("health", str), ("health_probes", str), ("last_heartbeat", str),
                     ("heartbeat_s", int)):
        db["station_state"].add_column(col, typ)
    db["heightened"].create({"id": int, "target": str, "start": str, "end": str,
                             "reason": str, "heartbeat_s": int, "selftest_at": str,
                             "created_at": str}, pk="id")


@migrations
def m005_live_mic(db) -> None:
    db["station_state"].add_column("live_mic", int)


@migrations
def m006_commands(db) -> None:
    db["commands"].create({"id": str, "action": str, "target": str, "seq": int, "body": str,
                           "raw": str, "issued_at": str, "expires_at": str,
                           "published_at": str, "by": str}, pk="id")
    db["command_targets"].create({"command_id": str, "station_id": str, "state": str,
                                  "at": str, "detail": str}, pk=("command_id", "station_id"))
    db["commands"].create_index(["published_at"])


@migrations
def m007_console(db) -> None:
    """The web console: accounts, the audit log (append-only: triggers refuse UPDATE and
    DELETE), login attempts (throttling), approval of schedule items, review of alerts, and
    the province → commune tree on groups."""
    db["users"].create({"id": str, "name": str, "role": str, "communes": str, "hash": str,
                        "must_change": int, "failures": int, "locked_at": str,
                        "disabled": int, "created_at": str, "password_at": str}, pk="id")
    db["audit"].create({"id": int, "at": str, "user": str, "action": str, "target": str,
                        "detail": str, "ip": str}, pk="id")
    db["audit"].create_index(["at"])
    db.execute("CREATE TRIGGER audit_no_update BEFORE UPDATE ON audit "
               "BEGIN SELECT RAISE(ABORT, 'audit log is append-only'); END")
    db.execute("CREATE TRIGGER audit_no_delete BEFORE DELETE ON audit "
               "BEGIN SELECT RAISE(ABORT, 'audit log is append-only'); END")
    db["login_attempts"].create({"id": int, "at": str, "ip": str, "user": str, "ok": int},
                                pk="id")
    db["login_attempts"].create_index(["ip", "at"])
    db["login_attempts"].create_index(["at"])  # pruned after a day (hub.accounts.login)
    for col, typ in (("state", str), ("drafted_by", str), ("approved_by", str),
                     ("approved_at", str), ("decided_by", str), ("decision_note", str),
                     ("replaces", str)):  # an edit: the item it takes the place of
        db["schedule_items"].add_column(col, typ)
    db.execute("UPDATE schedule_items SET state = 'approved' WHERE state IS NULL")
    for col, typ in (("review", str), ("reviewed_by", str), ("reviewed_at", str)):
        db["commands"].add_column(col, typ)
    db["groups"].add_column("kind", str)      # province / commune / group
    db["groups"].add_column("parent", str)    # a commune's province
    db["content"].add_column("tags", str)
    db["content"].add_column("added_by", str)
    db["playbacks"].create_index(["started_at"])
    db["playbacks"].create_index(["scheduled_at"])


def play_day(scheduled: str | None, started: str | None) -> str | None:
    """The local (Asia/Ho_Chi_Minh) day a scheduled play belongs to, dd as YYYY-MM-DD."""
    at = scheduled or started
    if not at:
        return None
    try:
        t = datetime.fromisoformat(at.replace("Z", "+00:00"))
    except (ValueError, AttributeError):
        return None
    if not t.tzinfo:
        return None
    # Vietnam's day changes on the hour: one conversion per hour (and offset; to the minute
    # for an offset that is not whole hours), not one per record
    offset = t.utcoffset()
    minute = t.minute if offset % timedelta(hours=1) else 0
    return _local_day(t.year, t.month, t.day, t.hour, minute, offset)


@functools.lru_cache(maxsize=4096)
def _local_day(year: int, month: int, day: int, hour: int, minute: int,
               offset: timedelta) -> str:
    from schedules import TZ
    return datetime(year, month, day, hour, minute, tzinfo=timezone(offset)).astimezone(TZ) \
        .strftime("%Y-%m-%d")


def scheduled_play(item_id: str | None) -> bool:
    """A play of the programme (not a command's play-now, not a self-test)."""
    return bool(item_id) and item_id != "selftest" and not item_id.startswith("cmd-")


PLAYED_OUTCOMES = ("played", "fallback")


@migrations
def m008_play_days(db) -> None:
    """Per station and local day: plays of the programme played and missed, and the reasons
    for the missed ones; written with each playback record (the compliance report reads
    thousands of these, not hundreds of thousands of records)."""
    db["station_state"].add_column("on_air", int)  # from the latest heartbeat
    db["play_days"].create({"station_id": str, "day": str, "played": int, "missed": int},
                           pk=("station_id", "day"))
    db["play_reasons"].create({"station_id": str, "day": str, "reason": str, "n": int},
                              pk=("station_id", "day", "reason"))
    # covering: the report's range scans (per day, per station) never touch the table
    db.execute("CREATE INDEX play_days_by_day ON play_days(day, station_id, played, missed)")
    by_station: dict[str, list[tuple]] = {}
    for sid, *play in db.execute(
            "SELECT station_id, item_id, scheduled_at, started_at, outcome, detail "
            "FROM playbacks").fetchall():
        by_station.setdefault(sid, []).append(tuple(play))
    for sid, plays in by_station.items():
        _count_plays(db, sid, plays)


def _count_plays(db, sid: str, plays: list[tuple]) -> None:
    """The day roll-up of a station's plays, (item, scheduled, started, outcome, detail)
    each: one upsert per day and per reason, however many plays a report carries."""
    days: dict[str, list[int]] = {}
    reasons: dict[tuple[str, str], int] = {}
    for item, scheduled, started, outcome, detail in plays:
        day = play_day(scheduled, started)
        if day is None or not scheduled_play(item) or outcome == "started":
            continue
        ok = outcome in PLAYED_OUTCOMES
        tally = days.setdefault(day, [0, 0])
        tally[0 if ok else 1] += 1
        if not ok:
            reason = (outcome or "?") + (f": {detail[:60]}" if detail else "")
            reasons[(day, reason)] = reasons.get((day, reason), 0) + 1
    db.conn.executemany(
        "INSERT INTO play_days VALUES (?, ?, ?, ?) ON CONFLICT(station_id, day) DO UPDATE SET "
        "played = played + excluded.played, missed = missed + excluded.missed",
        [(sid, day, p, m) for day, (p, m) in days.items()])
    db.conn.executemany(
        "INSERT INTO play_reasons VALUES (?, ?, ?, ?) ON CONFLICT(station_id, day, reason) "
        "DO UPDATE SET n = n + excluded.n",
        [(sid, day, reason, n) for (day, reason), n in reasons.items()])


@migrations
def m009_certificates(db) -> None:
    """Every TLS certificate the hub's CA issued: for revocation (the broker's CRL) and for
    the alarm 30 days before one expires."""
    db["certificates"].create({"serial": str, "cn": str, "kind": str, "not_after": str,
                               "issued_at": str, "revoked_at": str}, pk="serial")
    db["certificates"].create_index(["cn"])


@migrations
def m010_key_rotation(db) -> None:
    """Which hub key signed each bundle (a rotation re-signs them) and which hub key each
    station last confirmed it trusts."""
    db["bundles"].add_column("kid", str)
    db["station_state"].add_column("hub_kid", str)


@migrations
def m011_releases(db) -> None:
    """Signed software releases (hub/releases.py) and the version each station runs."""
    db["releases"].create({"version": str, "sha": str, "size": int, "wheels": str,
                           "manifest": str, "notes": str, "created_at": str, "by": str},
                          pk="version")
    db["station_state"].add_column("software_version", str)


@migrations
def m012_shared_programmes(db) -> None:
    """A programme shared by many stations is stored once (``programmes``); a bundle keeps
    only what is its own (``tail``: its station and version; ``envelope``: the signed
    envelope's other fields): 10,000 stations' copies of one 34 KB programme were 340 MB
    written for every change. Older bundles keep their ``raw``."""
    db["programmes"].create({"sha": str, "prefix": str}, pk="sha")
    db["bundles"].add_column("programme", str)
    db["bundles"].add_column("tail", str)
    db["bundles"].add_column("envelope", str)
    db["station_state"].add_column("accepts", str)  # e.g. "zlib": compressed bundles


@migrations
def m013_playbacks_by_station_only(db) -> None:
    """Playback records are read by station and sequence (the primary key) and summed per
    day in ``play_days``: the indexes on occurrence, start and scheduled time served no
    query and cost each record three more B-tree inserts (a reconnect storm stores 200,000
    records at once)."""
    for index in ("idx_playbacks_occurrence", "idx_playbacks_started_at",
                  "idx_playbacks_scheduled_at"):
        db.execute(f"DROP INDEX IF EXISTS {index}")


@migrations
def m014_station_audio(db) -> None:
    """What audio each station holds, from its ``audio.stored`` events (and, from now on,
    ``audio.dropped``): the hub pushes a command's audio only to stations that lack it."""
    # by file first: "who lacks this file" is the question asked (at 2,000 stations with a
    # hundred files each, a scan would read 200,000 rows for every commanded play)
    db.execute("CREATE TABLE station_audio (station_id TEXT NOT NULL, sha TEXT NOT NULL, "
               "PRIMARY KEY (sha, station_id)) WITHOUT ROWID")
    db.execute("INSERT OR IGNORE INTO station_audio SELECT station_id, "
               "json_extract(data, '$.sha') FROM events WHERE kind = 'audio.stored' AND "
               "json_extract(data, '$.sha') IS NOT NULL")


@migrations
def m015_refusals_by_time(db) -> None:
    """Refusals are summed over the last day (`hub status`, the overview) and pruned by age."""
    db.execute("CREATE INDEX IF NOT EXISTS refusals_at ON refusals(at)")


CERT_WARN = timedelta(days=30)


def target_query(target: str) -> tuple[str, list[str]]:
    """SQL selecting the ids of the stations ``target`` names (as ``planner.targets``)."""
    kind, _, name = target.partition(":")
    if target == "all":
        return "SELECT id FROM stations", []
    if kind == "station":
        return "SELECT id FROM stations WHERE id = ?", [name]
    if kind == "group":
        return ("SELECT station_id AS id FROM station_groups WHERE group_id = ? AND "
                "station_id IN (SELECT id FROM stations)", [name])
    raise ValueError(f"not a target: {target!r}")


# a station's command moves forward only: a late "accepted" never hides a "done"
COMMAND_STATES = {"targeted": 0, "accepted": 1, "started": 2, "done": 3, "failed": 3,
                  "refused": 3}


_to_json = json.JSONEncoder(ensure_ascii=False).encode  # one encoder, not one per record
HISTORICAL_AFTER_S = 60  # an event sent this long after it happened is history, not news


KEEP_BUNDLE_VERSIONS = 2  # per station: the latest and the one before
_BODY = b'{"body":'


class NewBundle(NamedTuple):
    sid: str
    version: int
    digest: str
    issued: datetime
    expires: datetime
    raw: bytes            # the signed bundle
    kid: str
    # the shared part of its body (sha, bytes) and the rest of the body (its station, version)
    programme: tuple[str, bytes, bytes] | None = None


def _with_raw(row: dict[str, Any]) -> dict[str, Any]:
    """A bundle row with its signed bytes whole: stored whole (older rows) or rebuilt from
    the shared programme, the station's tail and the envelope's other fields."""
    if row.get("raw") is None and row.get("prefix") is not None:
        row["raw"] = '{"body":' + row["prefix"] + row["tail"] + "," + row["envelope"][1:]
    row.pop("prefix", None)
    return row


class HubStore:
    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self.content_dir = self.path.parent / "content"
        self.content_dir.mkdir(parents=True, exist_ok=True)
        self.db = open_db(self.path)
        migrations.apply(self.db)
        self.lock = threading.RLock()
        self._state_columns: frozenset[str] | None = None

    def close(self) -> None:
        self.db.close()

    def programme_stamp(self) -> tuple:
        """Changes whenever something a bundle is made of changes (items, stations, groups,
        content, heightened periods, emergency messages); one cheap query."""
        return tuple(self.db.execute(
            "SELECT (SELECT count(*) || ':' || coalesce(max(created_at), '') || ':' || "
            "count(cancelled_at) || ':' || coalesce(max(cancelled_at), '') || ':' || "
            "count(approved_at) || ':' || coalesce(max(approved_at), '') "
            "FROM schedule_items), "
            "(SELECT count(*) FROM stations), (SELECT count(*) FROM station_groups), "
            "(SELECT count(*) FROM content), "
            "(SELECT count(*) || ':' || coalesce(max(created_at), '') FROM heightened), "
            "(SELECT group_concat(key || '=' || value) FROM settings "
            " WHERE key LIKE 'emergency:%')").fetchone())

    def data_version(self) -> int:
        """Changes whenever another connection commits (cheap change detection)."""
        return self.db.execute("PRAGMA data_version").fetchone()[0]

    def q(self, sql: str, params: list | tuple = ()) -> list[dict[str, Any]]:
        cur = self.db.execute(sql, list(params))
        cols = [c[0] for c in cur.description]
        return [dict(zip(cols, r)) for r in cur.fetchall()]

    # -- settings --------------------------------------------------------------------------
    def setting(self, key: str, default: str | None = None) -> str | None:
        row = self.db.execute("SELECT value FROM settings WHERE key = ?", [key]).fetchone()
        return row[0] if row else default

    def set_setting(self, key: str, value: str) -> None:
        with write(self.db):
            self.db["settings"].upsert({"key": key, "value": value}, pk="key")

    def next_bdseq_epoch(self) -> int:
        """Once per `hub serve` start (see protocol/mqtt.py): the hub's birth/death sequence
        keeps growing across restarts."""
        with self.lock, write(self.db):
            n = int(self.setting("bdseq.epoch", "0") or 0) + 1
            self.db["settings"].upsert({"key": "bdseq.epoch", "value": str(n)}, pk="key")
            return n

    # -- stations and groups ---------------------------------------------------------------
    def add_station(self, sid: str, name: str, public_key: str | None, groups: list[str],
                    now: datetime) -> None:
        with self.lock, write(self.db):
            if self.db.execute("SELECT 1 FROM stations WHERE id = ?", [sid]).fetchone():
                raise ValueError(f"station {sid} already exists")
            self.db["stations"].insert({"id": sid, "name": name, "public_key": public_key,
                                        "created_at": iso(now)})
            for g in groups:
                self.db["groups"].insert({"id": g, "name": g}, ignore=True)
                self.db["station_groups"].insert({"station_id": sid, "group_id": g})

    def set_station_key(self, sid: str, public_key: str) -> None:
        """A new key is a new device or a new store: what the old one held is not known."""
        with self.lock, write(self.db):
            self.db.execute("UPDATE stations SET public_key = ? WHERE id = ?", [public_key, sid])
            self.db.execute("DELETE FROM station_audio WHERE station_id = ?", [sid])

    def station(self, sid: str) -> dict[str, Any] | None:
        rows = self.q("SELECT * FROM stations WHERE id = ?", [sid])
        return rows[0] if rows else None

    def stations(self) -> list[dict[str, Any]]:
        return self.q("SELECT * FROM stations ORDER BY id")

    def station_groups(self, sid: str) -> list[str]:
        return [r["group_id"] for r in self.q(
            "SELECT group_id FROM station_groups WHERE station_id = ?", [sid])]

    def group_exists(self, gid: str) -> bool:
        return bool(self.q("SELECT 1 FROM groups WHERE id = ?", [gid]))

    # -- content ---------------------------------------------------------------------------
    def content_path(self, sha: str) -> Path:
        return self.content_dir / f"{sha}.opus"

    def add_content(self, *, sha: str, data: bytes, title: str, source: str, text: str,
                    engine: str, codec: str, duration_ms: int, now: datetime) -> bool:
        """Store prepared audio (crash-safe) and its record; False if it was already there."""
        path = self.content_path(sha)
        if not path.exists():
            write_file(path, data)
        with self.lock, write(self.db):
            if self.q("SELECT 1 FROM content WHERE sha = ?", [sha]):
                return False
            self.db["content"].insert({"sha": sha, "title": title, "source": source,
                                       "text": text, "engine": engine, "codec": codec,
                                       "size": len(data), "duration_ms": duration_ms,
                                       "created_at": iso(now)})
            return True

    def release_path(self, sha: str) -> Path:
        """Where the tar of a release (hub/releases.py) is kept, named by its SHA-256."""
        return self.path.parent / "releases" / f"{sha}.tar"

    def release_file(self, sha: str) -> Path | None:
        """A known release's tar, which stations fetch like audio."""
        if not self.q("SELECT 1 FROM releases WHERE sha = ?", [sha]):
            return None
        return self.release_path(sha)

    def content(self, sha: str) -> dict[str, Any] | None:
        rows = self.q("SELECT * FROM content WHERE sha = ?", [sha])
        return rows[0] if rows else None

    # -- schedule items --------------------------------------------------------------------
    def add_item(self, row: dict[str, Any]) -> None:
        with self.lock, write(self.db):
            self.db["schedule_items"].insert(row)

    def items(self) -> list[dict[str, Any]]:
        """What goes into bundles: approved and not cancelled (drafts wait for approval)."""
        return self.q("SELECT * FROM schedule_items WHERE cancelled_at IS NULL "
                      "AND state = 'approved' ORDER BY start")

    # -- bundles ---------------------------------------------------------------------------
    def latest_bundle(self, sid: str) -> dict[str, Any] | None:
        """The station's latest bundle with its signed bytes in ``raw``."""
        rows = self.q("SELECT b.*, p.prefix FROM bundles b LEFT JOIN programmes p "
                      "ON p.sha = b.programme WHERE station_id = ? ORDER BY version DESC LIMIT 1",
                      [sid])
        return _with_raw(rows[0]) if rows else None

    def bundle_raw(self, sid: str, version: int) -> bytes | None:
        rows = self.q("SELECT b.*, p.prefix FROM bundles b LEFT JOIN programmes p "
                      "ON p.sha = b.programme WHERE station_id = ? AND version = ?",
                      [sid, version])
        return _with_raw(rows[0])["raw"].encode("utf-8") if rows else None

    def latest_bundles(self) -> dict[str, dict[str, Any]]:
        """Every station's latest version, without its bytes (a fleet's replan reads them
        once)."""
        cur = self.db.execute("SELECT station_id, max(version), digest, kid, expires_at "
                              "FROM bundles GROUP BY station_id")
        return {r[0]: {"version": r[1], "digest": r[2], "kid": r[3], "expires_at": r[4]}
                for r in cur}

    def accepting(self, what: str) -> set[str]:
        """Stations whose last state summary said they accept ``what`` (``zlib``)."""
        return {r[0] for r in self.db.execute(
            "SELECT station_id FROM station_state WHERE ',' || accepts || ',' LIKE ?",
            [f"%,{what},%"])}

    def station_ids(self) -> list[str]:
        return [r[0] for r in self.db.execute("SELECT id FROM stations ORDER BY id")]

    def add_bundles(self, rows: list[NewBundle]) -> None:
        """New versions in one transaction, with only the version before each kept besides
        (what a station may still be activating): bundles are re-signed for every change,
        and a fleet's history of them would grow without end. A bundle whose programme is
        shared is stored as that programme (once) and its own parts."""
        programmes, inserts = {}, []
        for b in rows:
            if b.programme is None:
                inserts.append((b.sid, b.version, b.digest, iso(b.issued), iso(b.expires),
                                b.raw.decode("utf-8"), b.kid, None, None, None))
                continue
            sha, prefix, tail = b.programme
            programmes[sha] = prefix
            end = len(_BODY) + len(prefix) + len(tail)
            if b.raw[:end + 1] != _BODY + prefix + tail + b",":
                raise ValueError(f"bundle for {b.sid} is not programme {sha} and its tail")
            inserts.append((b.sid, b.version, b.digest, iso(b.issued), iso(b.expires), None,
                            b.kid, sha, tail.decode("utf-8"),
                            "{" + b.raw[end + 1:].decode("utf-8")))
        with self.lock, write(self.db):
            self.db.conn.executemany(
                "INSERT OR IGNORE INTO programmes(sha, prefix) VALUES (?, ?)",
                [(sha, prefix.decode("utf-8")) for sha, prefix in programmes.items()])
            self.db.conn.executemany(
                "INSERT INTO bundles(station_id, version, digest, issued_at, expires_at, raw, "
                "kid, programme, tail, envelope) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)", inserts)
            self.db.conn.executemany(
                "DELETE FROM bundles WHERE station_id = ? AND version < ?",
                [(b.sid, b.version - KEEP_BUNDLE_VERSIONS + 1) for b in rows])
            if programmes:  # those no bundle holds any more
                self.db.execute("DELETE FROM programmes WHERE sha NOT IN "
                                "(SELECT programme FROM bundles WHERE programme IS NOT NULL)")

    # -- reports ---------------------------------------------------------------------------
    def store_events(self, sid: str, events: list[dict[str, Any]], now: datetime,
                     sent_at: datetime | None = None) -> list[dict[str, Any]]:
        """Insert a station's events once each (dedup on (station, seq)) in one transaction.
        An event sent long after it happened (by the station's own clock) is marked
        historical. Returns the events that were new, each with its ``historical`` flag."""
        new: list[dict[str, Any]] = []
        received = iso(now)
        with self.lock, write(self.db):
            # in bulk: one statement per table for the whole report (a reconnect storm is
            # 2,000 stations' queued reports at once)
            seqs = [e["seq"] for e in events]
            held = {r[0] for r in self.db.execute(
                f"SELECT seq FROM events WHERE station_id = ? AND seq IN "
                f"({', '.join('?' * len(seqs))})", [sid, *seqs]).fetchall()}
            for e in events:
                if e["seq"] in held:
                    continue
                held.add(e["seq"])  # a seq twice in one report: the first one counts
                historical = 0
                if sent_at is not None:
                    try:
                        lag = (sent_at - parse_iso(e["at"])).total_seconds()
                        historical = int(lag > HISTORICAL_AFTER_S)
                    except ValueError:
                        historical = 1
                new.append({**e, "historical": historical})
            self.db.conn.executemany(
                "INSERT INTO events(station_id, seq, kind, at, data, received_at, historical) "
                "VALUES (?, ?, ?, ?, ?, ?, ?)",
                [(sid, e["seq"], e["kind"], e["at"], _to_json(e["data"]),
                  received, e["historical"]) for e in new])
            plays = [(e["seq"], e["historical"], e["data"]) for e in new
                     if e["kind"] == "playback"]
            if plays:
                self.db.conn.executemany(
                    "INSERT INTO playbacks VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    [(sid, seq, d.get("occurrence"), d.get("item"), d.get("content"),
                      d.get("scheduled"), d.get("started"), d.get("ended"), d.get("outcome"),
                      d.get("detail", ""), received, h) for seq, h, d in plays])
                _count_plays(self.db, sid, [(d.get("item"), d.get("scheduled"),
                                             d.get("started"), d.get("outcome"),
                                             d.get("detail", "")) for _, _, d in plays])
            for e in new:
                d = e["data"]
                if e["kind"] == "alarm" and isinstance(d.get("code"), str):
                    self._alarm_history(sid, d, e["at"], e["historical"])
                elif e["kind"] == "command" and isinstance(d.get("id"), str):
                    self._command_progress(sid, d, e["at"])
                elif e["kind"] == "audio.stored" and isinstance(d.get("sha"), str):
                    self.db.execute("INSERT OR IGNORE INTO station_audio VALUES (?, ?)",
                                    [sid, d["sha"][:64]])
                elif e["kind"] == "audio.dropped" and isinstance(d.get("sha"), str):
                    self.db.execute("DELETE FROM station_audio WHERE station_id = ? AND sha = ?",
                                    [sid, d["sha"][:64]])
                elif e["kind"] == "hubkey" and isinstance(d.get("kid"), str):
                    self.db.execute("UPDATE station_state SET hub_kid = ? WHERE station_id = ?",
                                    [d["kid"][:32], sid])
            self.db.execute("UPDATE station_state SET last_seen = ? WHERE station_id = ?",
                            [iso(now), sid])
        return new

    def _alarm_history(self, sid: str, d: dict[str, Any], at: str, historical: int) -> None:
        open_row = self.db.execute(
            "SELECT id FROM alarms WHERE station_id = ? AND code = ? AND cleared_at IS NULL",
            [sid, d["code"]]).fetchone()
        if d.get("active"):
            if open_row is None:
                self.db["alarms"].insert({"station_id": sid, "code": d["code"],
                                          "detail": str(d.get("detail", ""))[:500],
                                          "raised_at": at, "historical": historical})
        elif open_row is not None:
            self.db.execute("UPDATE alarms SET cleared_at = ? WHERE id = ?", [at, open_row[0]])

    def sync_offline_alarms(self, now: datetime, grace_s: float) -> None:
        """A station offline for longer than ``grace_s`` has an open ``offline`` alarm (raised
        at the end of the grace); one that is back online has none. Two set queries, not
        two per station: the hub runs this every few seconds over the whole fleet."""
        with self.lock, write(self.db):
            self.db.execute(
                "UPDATE alarms SET cleared_at = ? WHERE code = 'offline' AND cleared_at IS NULL "
                "AND station_id IN (SELECT station_id FROM station_state WHERE online = 1)",
                [iso(now)])
            for sid, since in self.db.execute(
                    "SELECT st.station_id, st.since FROM station_state st "
                    "JOIN stations s ON s.id = st.station_id "
                    "WHERE st.online = 0 AND st.since IS NOT NULL AND st.since <= ? "
                    "AND NOT EXISTS (SELECT 1 FROM alarms a WHERE a.station_id = st.station_id "
                    "AND a.code = 'offline' AND a.cleared_at IS NULL)",
                    [iso(now - timedelta(seconds=grace_s))]).fetchall():
                self.db["alarms"].insert({
                    "station_id": sid, "code": "offline",
                    "detail": f"mất kết nối từ {show(since)} (offline since {since})",
                    "raised_at": iso(parse_iso(since) + timedelta(seconds=grace_s)),
                    "historical": 0})

    def add_certificate(self, serial: int, cn: str, kind: str, not_after: datetime,
                        now: datetime) -> None:
        with self.lock, write(self.db):
            self.db.execute("INSERT OR REPLACE INTO certificates VALUES (?, ?, ?, ?, ?, NULL)",
                            [str(serial), cn, kind, iso(not_after), iso(now)])

    def sync_certificate_alarms(self, now: datetime) -> None:
        """A ``cert_expiry`` alarm for every certificate in use that expires within 30 days
        (on the station it belongs to; the CA's, the broker's and the hub's on ``hub``),
        cleared once no such certificate is left (renewed or revoked)."""
        due: dict[str, list[str]] = {}
        for cn, kind, not_after in self.db.execute(
                "SELECT cn, kind, not_after FROM certificates WHERE revoked_at IS NULL AND "
                "not_after <= ? AND serial NOT IN (SELECT c2.serial FROM certificates c2 "
                "WHERE EXISTS (SELECT 1 FROM certificates c3 WHERE c3.cn = c2.cn AND "
                "c3.kind = c2.kind AND c3.revoked_at IS NULL AND c3.not_after > ?))",
                [iso(now + CERT_WARN), iso(now + CERT_WARN)]).fetchall():
            owner = cn if kind == "station" else "hub"
            due.setdefault(owner, []).append(
                f"chứng chỉ {kind} {cn} hết hạn {show(not_after)} (expires {not_after})")
        with self.lock, write(self.db):
            for sid, code_detail in due.items():
                if not self.db.execute("SELECT 1 FROM alarms WHERE station_id = ? AND code = "
                                       "'cert_expiry' AND cleared_at IS NULL", [sid]).fetchone():
                    self.db["alarms"].insert({"station_id": sid, "code": "cert_expiry",
                                              "detail": "; ".join(code_detail)[:500],
                                              "raised_at": iso(now), "historical": 0})
            still = ",".join("?" * len(due)) or "''"
            self.db.execute(f"UPDATE alarms SET cleared_at = ? WHERE code = 'cert_expiry' AND "
                            f"cleared_at IS NULL AND station_id NOT IN ({still})",
                            [iso(now), *due])

    def _command_progress(self, sid: str, d: dict[str, Any], at: str) -> None:
        state = d.get("state")
        if state not in COMMAND_STATES:
            return
        row = self.db.execute("SELECT state FROM command_targets WHERE command_id = ? AND "
                              "station_id = ?", [d["id"], sid]).fetchone()
        if row is None:  # not a command of ours for this station (or an unknown id)
            return
        if COMMAND_STATES[state] < COMMAND_STATES.get(row[0], 0) or row[0] in (
                "done", "failed", "refused"):
            return
        detail = str(d.get("reason") or "") + (": " if d.get("reason") else "") + \
            str(d.get("detail") or "")
        self.db.execute("UPDATE command_targets SET state = ?, at = ?, detail = ? WHERE "
                        "command_id = ? AND station_id = ?",
                        [state, at, detail[:300], d["id"], sid])

    # -- commands --------------------------------------------------------------------------
    def target_stations(self, target: str) -> list[str]:
        """The stations ``target`` names (all, group:G, station:S), in id order; none for
        what is not a target."""
        try:
            sql, params = target_query(target)
        except ValueError:
            return []
        return [r[0] for r in self.db.execute(f"{sql} ORDER BY 1", params).fetchall()]

    def add_command(self, row: dict[str, Any]) -> int:
        """Within the caller's transaction: the command and a ``targeted`` delivery row for
        every station of its target, written by SQLite from the stations table (a khẩn cấp
        alert to a province waits for this: 2,000 rows from Python took 2.7 ms). Returns
        how many stations it targets."""
        cols = ("id", "action", "target", "seq", "body", "raw", "issued_at", "expires_at",
                "published_at", "by")
        self.db.execute(f"INSERT INTO commands ({', '.join(f'[{c}]' for c in cols)}) "
                        f"VALUES ({', '.join('?' * len(cols))})", [row[c] for c in cols])
        sql, params = target_query(row["target"])
        return self.db.execute(
            "INSERT INTO command_targets (command_id, station_id, state, at, detail) "
            f"SELECT ?, id, 'targeted', ?, '' FROM ({sql})",
            [row["id"], row["issued_at"], *params]).rowcount

    def lacking(self, target: str, sha: str) -> list[str]:
        """The stations of ``target`` not known to hold ``sha`` (none of their
        ``audio.stored`` events named it, or an ``audio.dropped`` one did since), in id
        order."""
        sql, params = target_query(target)
        return [r[0] for r in self.db.execute(
            f"SELECT id FROM ({sql}) WHERE id NOT IN "
            "(SELECT station_id FROM station_audio WHERE sha = ?) ORDER BY id",
            [*params, sha]).fetchall()]

    def next_command_seq(self, stream: str) -> int:
        """Within the caller's transaction: the next sequence number of a command stream."""
        key = f"cmdseq.{stream}"
        # a restored hub continues above what the lost one may have issued (hub.backup)
        n = max(int(self.setting(key, "0") or 0), int(self.setting("cmdseq.floor", "0") or 0)) + 1
        self.db.execute("INSERT INTO settings (key, value) VALUES (?, ?) ON CONFLICT (key) "
                        "DO UPDATE SET value = excluded.value", [key, str(n)])
        return n

    def unpublished_commands(self, now: datetime) -> list[dict[str, Any]]:
        return self.q("SELECT * FROM commands WHERE published_at IS NULL AND expires_at > ? "
                      "ORDER BY issued_at", [iso(now)])

    def mark_published(self, cid: str, at: datetime) -> None:
        with self.lock, write(self.db):
            self.db.execute("UPDATE commands SET published_at = ? WHERE id = ?", [iso(at), cid])

    def command(self, cid: str) -> dict[str, Any] | None:
        rows = self.q("SELECT * FROM commands WHERE id LIKE ?", [cid + "%"])
        return rows[0] if len(rows) == 1 else None

    def command_targets(self, cid: str) -> list[dict[str, Any]]:
        return self.q("SELECT t.*, st.online FROM command_targets t LEFT JOIN station_state st "
                      "ON st.station_id = t.station_id WHERE command_id = ? "
                      "ORDER BY t.station_id", [cid])

    def ack_alarm(self, alarm_id: int, by: str, note: str, now: datetime) -> bool:
        with self.lock, write(self.db):
            return self.db.execute(
                "UPDATE alarms SET acked_at = ?, acked_by = ?, ack_note = ? WHERE id = ? AND "
                "acked_at IS NULL", [iso(now), by, note, alarm_id]).rowcount == 1

    def open_alarms(self, sid: str | None = None) -> list[dict[str, Any]]:
        sql = "SELECT * FROM alarms WHERE cleared_at IS NULL"
        return self.q(sql + (" AND station_id = ?" if sid else "") + " ORDER BY raised_at",
                      [sid] if sid else [])

    def record_refusal(self, now: datetime, sid: str | None, topic: str, reason: str,
                       detail: str) -> None:
        with self.lock, write(self.db):
            self.db["refusals"].insert({"at": iso(now), "station_id": sid, "topic": topic,
                                        "reason": reason, "detail": detail[:500]})

    def refusal_summary(self, since: datetime) -> list[dict[str, Any]]:
        """Refused messages stored since ``since``, by reason: how many rows, from how many
        stations, the latest (a station's repeats within seconds are one row: hub/link.py)."""
        return self.q("SELECT reason, count(*) AS n, count(DISTINCT station_id) AS stations, "
                      "max(at) AS last FROM refusals WHERE at >= ? GROUP BY reason "
                      "ORDER BY n DESC, reason", [iso(since)])

    def prune_refusals(self, before: datetime) -> int:
        with self.lock, write(self.db):
            return self.db.execute("DELETE FROM refusals WHERE at < ?", [iso(before)]).rowcount

    def state(self, sid: str) -> dict[str, Any] | None:
        rows = self.q("SELECT * FROM station_state WHERE station_id = ?", [sid])
        return rows[0] if rows else None

    def set_states(self, states: dict[str, dict[str, Any]]) -> None:
        """Several stations' state in one transaction."""
        with self.lock, write(self.db):
            for sid, fields in states.items():
                self.set_state(sid, **fields)

    def set_state(self, sid: str, **fields: Any) -> None:
        """One statement (sqlite-utils' upsert inspects the table first: 14 statements a
        heartbeat). Column names are checked against the table's, never interpolated raw."""
        cols = self._state_columns
        if cols is None:
            cols = self._state_columns = frozenset(
                r[1] for r in self.db.execute("PRAGMA table_info(station_state)").fetchall())
        unknown = set(fields) - cols
        if unknown:
            raise KeyError(f"station_state has no column {sorted(unknown)}")
        names = ["station_id", *fields]
        sql = (f"INSERT INTO station_state({', '.join(names)}) VALUES "
               f"({', '.join('?' * len(names))}) ON CONFLICT(station_id) DO "
               + ("UPDATE SET " + ", ".join(f"{n} = excluded.{n}" for n in fields)
                  if fields else "NOTHING"))
        with self.lock, write(self.db):
            self.db.execute(sql, [sid, *fields.values()])
