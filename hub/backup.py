"""`loaxa hub backup DIR` and `loaxa hub restore DIR --home NEW`.

A backup is a folder (0700) holding the database (SQLite's online backup: consistent while
`hub serve` writes), the hub's signing key, the web console's secret, the CA and TLS keys
(0600), the configuration, the prepared audio, and ``manifest.json`` with the SHA-256 of each
file. ``restore`` checks every hash before writing anything, refuses a home that already holds
a hub, and moves the sequences the stations judge by past anything the lost hub may have
issued after the backup: every programme bundle is re-issued at ``BUNDLE_JUMP`` versions
above the backup's newest, and every command stream continues ``COMMAND_JUMP`` above the
backup's highest command number. Stations refuse an older version or sequence as a replay; these jumps are what
let them accept the restored hub's (``tests/integration/test_backup.py``, the drill).
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import sqlite3
from datetime import datetime
from pathlib import Path
from typing import Any

from protocol.clock import iso
from protocol.storage import write

from . import config as hubconfig
from .config import HubError
from .store import HubStore

FORMAT = 1
BUNDLE_JUMP = 1000      # versions a lost hub may have issued to one station after the backup
COMMAND_JUMP = 100_000  # commands a lost hub may have issued on one stream after the backup
SECRET = {"hub.key", "web-secret"}  # files kept 0600 (and every *.key)
TOP_FILES = ("hub.toml", "hub.key", "release.key", "web-secret")


def _sha(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _secret(rel: str) -> bool:
    return rel in SECRET or rel.endswith(".key")


def _copy(src: Path, dst: Path, rel: str) -> None:
    dst.parent.mkdir(parents=True, exist_ok=True)
    if _secret(rel):
        fd = os.open(dst, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as out, open(src, "rb") as f:
            shutil.copyfileobj(f, out)
    else:
        shutil.copyfile(src, dst)


def backup(home: Path, dest: Path, *, now: datetime) -> dict[str, Any]:
    """Everything needed to run this hub again, into ``dest`` (new or empty)."""
    cfg = hubconfig.load(home)
    if dest.exists() and any(dest.iterdir()):
        raise HubError(f"{dest} không trống / is not empty")
    dest.mkdir(parents=True, exist_ok=True)
    dest.chmod(0o700)
    files: dict[str, str] = {}
    # the database first: content added meanwhile is in the content folder already
    src = sqlite3.connect(cfg.db_path)
    dst = sqlite3.connect(dest / "hub.db")
    try:
        src.backup(dst)  # SQLite's online backup: a consistent copy while the hub writes
    finally:
        dst.close()
        src.close()
    files["hub.db"] = _sha(dest / "hub.db")
    rels = [r for r in TOP_FILES if (home / r).is_file()]
    rels += [f"pki/{p.name}" for p in sorted((home / "pki").glob("*")) if p.is_file()] \
        if (home / "pki").is_dir() else []
    rels += [f"content/{p.name}" for p in sorted((home / "content").glob("*.opus"))]
    rels += [f"releases/{p.name}" for p in sorted((home / "releases").glob("*.tar"))]
    for rel in rels:
        if rel.startswith("pki/"):
            (dest / "pki").mkdir(mode=0o700, exist_ok=True)
        _copy(home / rel, dest / rel, rel)
        files[rel] = _sha(dest / rel)
    store = HubStore(dest / "hub.db")
    try:
        counts = {t: store.db.execute(f"SELECT count(*) FROM {t}").fetchone()[0]
                  for t in ("stations", "content", "schedule_items", "bundles", "playbacks")}
    finally:
        store.close()
    manifest = {"format": FORMAT, "created_at": iso(now), "hub_id": cfg.hub_id,
                "counts": counts, "files": files}
    (dest / "manifest.json").write_text(json.dumps(manifest, indent=1, ensure_ascii=False))
    return manifest


def restore(src: Path, home: Path, *, now: datetime) -> dict[str, Any]:
    """A hub from a backup, into ``home`` (new or empty); every file's hash is checked first."""
    try:
        manifest = json.loads((src / "manifest.json").read_text())
    except (OSError, ValueError):
        raise HubError(f"{src}: không phải bản sao lưu / not a backup (no manifest)") from None
    if manifest.get("format") != FORMAT:
        raise HubError(f"{src}: định dạng {manifest.get('format')!r} / unknown format")
    for rel, sha in manifest["files"].items():
        p = src / rel
        if ".." in Path(rel).parts or Path(rel).is_absolute():
            raise HubError(f"{rel}: đường dẫn không hợp lệ / bad path in the manifest")
        if not p.is_file() or _sha(p) != sha:
            raise HubError(f"{rel}: hỏng hoặc thiếu / damaged or missing: nothing restored")
    if (home / "hub.db").exists() or (home / "hub.toml").exists():
        raise HubError(f"{home} đã có hub / already holds a hub: not overwritten")
    home.mkdir(parents=True, exist_ok=True)
    for rel in manifest["files"]:
        if rel.startswith("pki/"):
            (home / "pki").mkdir(mode=0o700, exist_ok=True)
        _copy(src / rel, home / rel, rel)
    store = HubStore(home / "hub.db")
    try:
        with store.lock, write(store.db):
            top = store.db.execute("SELECT max(version) FROM bundles").fetchone()[0] or 0
            store.db["settings"].upsert({"key": "bundle.min_version",
                                         "value": str(top + BUNDLE_JUMP)}, pk="key")
            last = store.db.execute("SELECT max(CAST(value AS INTEGER)) FROM settings WHERE "
                                    "key LIKE 'cmdseq.%' AND key != 'cmdseq.floor'"
                                    ).fetchone()[0] or 0
            store.db["settings"].upsert({"key": "cmdseq.floor",
                                         "value": str(last + COMMAND_JUMP)}, pk="key")
            store.db.execute("UPDATE station_state SET online = 0")  # heard again when live
            store.db["settings"].upsert({"key": "restored.from", "value": json.dumps(
                {"backup": manifest["created_at"], "at": iso(now)})}, pk="key")
    finally:
        store.close()
    hubconfig.load(home)  # a clear error now if the configuration does not load
    return {**manifest, "bundle_min_version": top + BUNDLE_JUMP}
