"""SQLite opening and registered migrations, shared by the hub's and the station's stores."""
from __future__ import annotations

import os
from contextlib import contextmanager
from datetime import datetime, timezone
from typing import Callable, Iterator

import sqlite_utils

Migration = Callable[[sqlite_utils.Database], None]


def open_db(path: str | os.PathLike[str]) -> sqlite_utils.Database:
    """WAL journal and synchronous=FULL: a committed schedule or acknowledged report survives
    a power cut. ``check_same_thread`` is off because paho's thread hands work to ours; each
    store serialises its own access."""
    import sqlite3
    conn = sqlite3.connect(os.fspath(path), check_same_thread=False, timeout=10,
                           isolation_level=None)
    db = sqlite_utils.Database(conn)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("PRAGMA synchronous=FULL")
    db.execute("PRAGMA foreign_keys=ON")
    db.execute("PRAGMA busy_timeout=10000")
    return db


def write_file(path: str | os.PathLike[str], data: bytes) -> None:
    """``data`` at ``path`` whole or not at all: written beside, fsync'd, renamed."""
    tmp = f"{os.fspath(path)}.tmp"
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


@contextmanager
def write(db: sqlite_utils.Database) -> Iterator[sqlite_utils.Database]:
    """A write transaction that takes the write lock at BEGIN (IMMEDIATE), so it waits for
    another writer (busy_timeout) instead of failing when a read-then-write transaction
    cannot be upgraded; nested, a savepoint."""
    if db.conn.in_transaction:
        with db.atomic():
            yield db
        return
    db.execute("BEGIN IMMEDIATE")
    try:
        yield db
    except BaseException:
        if db.conn.in_transaction:
            db.execute("ROLLBACK")
        raise
    db.execute("COMMIT")


class Migrations:
    """Ordered, named schema steps; each runs once, in its own transaction."""

    def __init__(self, scope: str) -> None:
        self.scope = scope
        self.steps: list[tuple[str, Migration]] = []

    def __call__(self, fn: Migration) -> Migration:
        self.steps.append((fn.__name__, fn))
        return fn

    def apply(self, db: sqlite_utils.Database) -> list[str]:
        db.execute("CREATE TABLE IF NOT EXISTS _migrations "
                   "(scope TEXT, name TEXT, applied_at TEXT, PRIMARY KEY (scope, name))")
        done = {r[0] for r in db.execute(
            "SELECT name FROM _migrations WHERE scope = ?", [self.scope]).fetchall()}
        applied = []
        for name, fn in self.steps:
            if name in done:
                continue
            with write(db):
                fn(db)
                db.execute("INSERT INTO _migrations VALUES (?, ?, ?)",
                           [self.scope, name, datetime.now(timezone.utc).isoformat()])
            applied.append(name)
        return applied
