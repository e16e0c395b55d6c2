"""Software releases for the stations, signed with the hub's release key (docs/update.md).

A release is one uncompressed tar of wheels (loaxa's, and any dependency it changes) named by
its SHA-256, plus a manifest signed with ``release.key``: version, the tar's SHA-256 and size,
and each wheel's name and SHA-256. `hub update` sends it as an `update` command; the tar
travels like audio (pushed once to the targets, fetched in hash-checked chunks by those that
miss some), and the station installs only what the signed manifest names.

The release key is not the programme key (``hub.key``): a stolen programme key cannot put
code on the stations, and a release key rotates with an enrolment, not on air.
"""
from __future__ import annotations

import hashlib
import io
import json
import re
import tarfile
from datetime import timedelta
from pathlib import Path
from typing import Any

from protocol.clock import iso
from protocol.envelope import Signer, public_to_text, seal
from protocol.storage import write, write_file

from . import config as hubconfig
from .config import HubError
from .store import HubStore

RELEASE_SENDER = "release"
RELEASE_TTL = timedelta(days=3650)  # judged by version and the command's own expiry
LOAXA_WHEEL = re.compile(r"^loaxa-([0-9][0-9a-z.]*)-py3-none-any\.whl$")
MAX_RELEASE_BYTES = 200 * 2**20
HEALTH_S = 300


def release_key_path(cfg: hubconfig.HubConfig) -> Path:
    return cfg.home / "release.key"


def release_signer(cfg: hubconfig.HubConfig, *, create: bool = True) -> Signer:
    """The hub's release key, made on first use (0600, like hub.key)."""
    path = release_key_path(cfg)
    if not path.exists():
        if not create:
            raise HubError(f"no release key at {path}")
        Signer.generate(RELEASE_SENDER).save(path)
    return Signer.load(path, RELEASE_SENDER)


def release_public(cfg: hubconfig.HubConfig) -> str:
    return public_to_text(release_signer(cfg).public)


def make_release(cfg: hubconfig.HubConfig, store: HubStore, wheels: list[Path], *, now,
                 notes: str = "", by: str = "") -> dict[str, Any]:
    """Pack ``wheels`` (exactly one of them loaxa's: it names the version), sign the manifest,
    keep both. The same wheels again are the same release."""
    if not wheels:
        raise HubError("a release needs wheels (`make dist` or `uv build --wheel`)")
    versions = [m.group(1) for w in wheels if (m := LOAXA_WHEEL.match(w.name))]
    if len(versions) != 1:
        raise HubError("a release holds exactly one loaxa wheel (loaxa-<version>-py3-none-any."
                       f"whl); given {[w.name for w in wheels]}")
    version = versions[0]
    if len({w.name for w in wheels}) != len(wheels):
        raise HubError("two wheels with the same name")
    buf = io.BytesIO()
    listed = []
    with tarfile.open(fileobj=buf, mode="w:", format=tarfile.PAX_FORMAT) as tar:
        for w in sorted(wheels, key=lambda p: p.name):
            try:
                data = w.read_bytes()
            except OSError as exc:
                raise HubError(f"{w}: {exc.strerror}") from None
            info = tarfile.TarInfo(w.name)
            info.size, info.mode, info.mtime = len(data), 0o644, 0
            tar.addfile(info, io.BytesIO(data))
            listed.append({"name": w.name, "sha256": hashlib.sha256(data).hexdigest()})
    blob = buf.getvalue()
    if len(blob) > MAX_RELEASE_BYTES:
        raise HubError(f"release of {len(blob) // 2**20} MiB: over {MAX_RELEASE_BYTES // 2**20}")
    sha = hashlib.sha256(blob).hexdigest()
    existing = store.q("SELECT * FROM releases WHERE version = ?", [version])
    if existing:
        if existing[0]["sha"] != sha:
            raise HubError(f"release {version} exists with other wheels: give the new build "
                           "a new version")
        return existing[0]
    path = store.release_path(sha)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_file(path, blob)
    manifest = {"version": version, "sha": sha, "size": len(blob), "wheels": listed,
                "notes": notes[:500]}
    raw = seal("release", manifest, signer=release_signer(cfg), seq=0, now=now,
               ttl=RELEASE_TTL).decode("utf-8")
    row = {"version": version, "sha": sha, "size": len(blob),
           "wheels": json.dumps([w["name"] for w in listed]), "manifest": raw,
           "notes": notes[:500], "created_at": iso(now), "by": by}
    with store.lock, write(store.db):
        store.db["releases"].insert(row)
    return row


def releases(store: HubStore) -> list[dict[str, Any]]:
    return store.q("SELECT * FROM releases ORDER BY created_at DESC")


def find_release(store: HubStore, version: str) -> dict[str, Any]:
    rows = store.q("SELECT * FROM releases WHERE version = ?", [version])
    if not rows:
        raise HubError(f"không có bản phát hành {version} / no release {version} "
                       "(`loaxa hub release add WHEEL…`)")
    return rows[0]


def update_body(release: dict[str, Any], *, health_s: int = HEALTH_S,
                downgrade: bool = False) -> dict[str, Any]:
    if not 30 <= health_s <= 3600:
        raise HubError("thời gian kiểm tra 30-3600 giây / --health-s must be 30-3600")
    body = {"release": release["manifest"], "content": release["sha"],
            "size": release["size"], "health_s": health_s, "push": True,
            "version": release["version"]}
    if downgrade:
        body["downgrade"] = True
    return body
