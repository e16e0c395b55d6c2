"""Two program slots on the station, and the state of an update between them (docs/update.md).

Standard library only: the launcher (``station_agent/launcher.py``) imports this module from
the factory install, whatever a release in a slot holds, so a broken release can never break
the code that switches back from it.

Layout, under the station's data folder (the only place the sandboxed service may write)::

    slots/<version>/site/    the release's wheels, unpacked (first on the agent's sys.path)
    slots/<version>/release.json   the signed release manifest it came from
    slots/current -> <version>     the slot the launcher starts (absent: the factory install)
    slots/update.json              the update in progress, if any

Every change is a write-then-rename (fsync'd), so a power cut leaves either the old or the
new state, never half of one: the phases below are resumed from where they stopped.
"""
from __future__ import annotations

import functools
import hashlib
import io
import json
import os
import re
import shutil
import signal
import tarfile
import zipfile
from pathlib import Path
from typing import Any

BASE = "base"          # the factory install (`make dist`'s install.sh), never replaced
VERSION_RE = re.compile(r"^[0-9]+(\.[0-9]+){0,3}([a-z]+[0-9]*)?$")
WHEEL_RE = re.compile(r"^[A-Za-z0-9_.]+-[A-Za-z0-9_.!+]+(-[0-9][^-]*)?-[^-]+-[^-]+-[^-]+\.whl$")
MAX_WHEEL_BYTES = 64 * 2**20
MAX_FILES = 20000
MAX_TRIAL_STARTS = 3   # started this often without confirming (power cuts, hangs): rolled back

# phases of update.json; "idle" (no file) between updates
FETCHING = "fetching"      # the old version fetches the artefact
SWITCH = "switch"          # installed in its slot: the launcher switches at the next start
TRIAL = "trial"            # the new version runs, unconfirmed; the launcher keeps the time
CONFIRMED = "confirmed"    # its health check passed: it stays
ROLLBACK = "rollback"      # it asked to go back (health check failed), or the launcher decided
ROLLED_BACK = "rolled_back"  # back on the old version, which reports why


class InstallError(Exception):
    """A release that cannot be installed: says which file and why."""


def version_key(v: str) -> tuple:
    """Numeric order of "1.2.10" vs "1.2.9" (a pre-release sorts before its release)."""
    m = re.match(r"^([0-9.]+)([a-z]+[0-9]*)?$", v)
    if not m:
        return (0,)
    nums = tuple(int(x) for x in m.group(1).strip(".").split(".") if x)
    return nums + ((0, m.group(2)) if m.group(2) else (1, ""),)


@functools.lru_cache(maxsize=1)
def running_version() -> str:
    from importlib.metadata import PackageNotFoundError, version
    try:
        return version("loaxa")
    except PackageNotFoundError:
        return "0+unknown"


def fault_point(name: str) -> None:
    """A power cut at ``name`` for the tests (``LOAXA_UPDATE_KILL_AT``): SIGKILL to the whole
    process group, the launcher and the agent together, as when the mains go."""
    if os.environ.get("LOAXA_UPDATE_KILL_AT") == name:
        os.killpg(os.getpgrp(), signal.SIGKILL)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class Slots:
    def __init__(self, root: Path) -> None:
        self.root = Path(root)

    @property
    def state_path(self) -> Path:
        return self.root / "update.json"

    @property
    def current_link(self) -> Path:
        return self.root / "current"

    # -- state -----------------------------------------------------------------------------
    def state(self) -> dict[str, Any]:
        try:
            st = json.loads(self.state_path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return {}
        except (OSError, ValueError):  # unreadable: back to the version it came from
            return {"phase": ROLLBACK, "reason": "update state unreadable"}
        return st if isinstance(st, dict) else {}

    def write_state(self, st: dict[str, Any] | None) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        if not st:
            self.state_path.unlink(missing_ok=True)
            _fsync_dir(self.root)
            return
        tmp = self.state_path.with_suffix(".tmp")
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump(st, f, ensure_ascii=False)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self.state_path)
        _fsync_dir(self.root)

    def update_state(self, **changes: Any) -> dict[str, Any]:
        st = {**self.state(), **changes}
        self.write_state(st)
        return st

    # -- slots -----------------------------------------------------------------------------
    def current(self) -> str:
        """The version the launcher starts: a slot's, or ``base``."""
        try:
            name = os.readlink(self.current_link)
        except OSError:
            return BASE
        return name if (self.root / name / "site").is_dir() else BASE

    def site(self, version: str) -> Path | None:
        return None if version == BASE else self.root / version / "site"

    def point_at(self, version: str) -> None:
        """``current`` -> ``version`` in one rename (``base``: no link)."""
        self.root.mkdir(parents=True, exist_ok=True)
        if version == BASE:
            self.current_link.unlink(missing_ok=True)
        else:
            tmp = self.root / "current.tmp"
            tmp.unlink(missing_ok=True)
            os.symlink(version, tmp)
            os.replace(tmp, self.current_link)
        _fsync_dir(self.root)

    def installed(self, version: str) -> bool:
        return (self.root / version / "site").is_dir()

    def prune(self, keep: set[str]) -> list[str]:
        """Slots other than ``keep`` (the running one and the one to go back to) removed."""
        gone = []
        for p in self.root.iterdir() if self.root.is_dir() else []:
            if p.is_dir() and not p.is_symlink() and p.name not in keep:
                shutil.rmtree(p, ignore_errors=True)
                gone.append(p.name)
        return gone

    def install(self, version: str, artefact: Path, manifest: dict[str, Any],
                manifest_raw: bytes) -> Path:
        """Unpack the release's wheels into ``slots/<version>/site``. Every wheel is checked
        against the signed manifest's SHA-256 before a byte of it is unpacked; paths that
        would leave the slot are refused. Written beside, then renamed into place."""
        if not VERSION_RE.match(version):
            raise InstallError(f"version {version!r} is not a release version")
        final = self.root / version
        if (final / "site").is_dir():
            return final  # installed before a power cut: the rename was the last step
        wanted = {w["name"]: w["sha256"] for w in manifest.get("wheels", [])}
        if not wanted:
            raise InstallError("the manifest lists no wheels")
        work = self.root / f".{version}.partial"
        shutil.rmtree(work, ignore_errors=True)
        (work / "site").mkdir(parents=True)
        seen: set[str] = set()
        files = 0
        try:
            with tarfile.open(artefact, mode="r:") as tar:
                for m in tar:
                    if not m.isfile() or "/" in m.name or m.name not in wanted:
                        raise InstallError(f"unexpected member {m.name!r} in the release")
                    if m.size > MAX_WHEEL_BYTES:
                        raise InstallError(f"{m.name}: {m.size} bytes, over the limit")
                    data = tar.extractfile(m).read()
                    if hashlib.sha256(data).hexdigest() != wanted[m.name]:
                        raise InstallError(f"{m.name}: its SHA-256 is not the signed one")
                    files += _unpack_wheel(m.name, data, work / "site")
                    if files > MAX_FILES:
                        raise InstallError("too many files in the release")
                    seen.add(m.name)
        except (tarfile.TarError, zipfile.BadZipFile, OSError) as exc:
            shutil.rmtree(work, ignore_errors=True)
            raise InstallError(f"the release does not unpack: {exc}") from None
        except InstallError:
            shutil.rmtree(work, ignore_errors=True)
            raise
        if seen != set(wanted):
            shutil.rmtree(work, ignore_errors=True)
            raise InstallError(f"wheels missing from the release: {sorted(set(wanted) - seen)}")
        (work / "release.json").write_bytes(manifest_raw)
        for dirpath, _, names in os.walk(work):  # on the card before the rename says so
            for n in names:
                fd = os.open(os.path.join(dirpath, n), os.O_RDONLY)
                try:
                    os.fsync(fd)
                finally:
                    os.close(fd)
        shutil.rmtree(final, ignore_errors=True)
        os.replace(work, final)
        _fsync_dir(self.root)
        return final


def _unpack_wheel(name: str, data: bytes, site: Path) -> int:
    """A wheel's files into ``site`` (what pip does for a wheel's purelib and platlib; its
    scripts and data are not needed by the agent). Returns the number of files."""
    n = 0
    with zipfile.ZipFile(io.BytesIO(data)) as z:
        for info in z.infolist():
            if info.is_dir():
                continue
            parts = info.filename.split("/")
            if info.filename.startswith("/") or "\\" in info.filename or ".." in parts \
                    or any(p == "" for p in parts):
                raise InstallError(f"{name}: unsafe path {info.filename!r}")
            if parts[0].endswith(".data"):
                if len(parts) < 3 or parts[1] not in ("purelib", "platlib"):
                    continue
                parts = parts[2:]
            dest = site.joinpath(*parts)
            dest.parent.mkdir(parents=True, exist_ok=True)
            with z.open(info) as src, open(dest, "wb") as out:
                shutil.copyfileobj(src, out)
            n += 1
    return n
