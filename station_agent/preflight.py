"""What `loaxa agent check` checks and `loaxa agent run` refuses to start without: the things
a valid station.toml can still get wrong on a real Pi (a key or data folder the service user
cannot read, TLS files that are not there, a GPIO library that is not installed, a sound
device that does not exist). Each problem is one line a person can act on.
"""
from __future__ import annotations

import grp
import importlib.util
import os
import pwd
import stat
from dataclasses import dataclass
from pathlib import Path

from protocol.envelope import Signer, public_to_text

from .config import StationConfig

GPIO_LIBRARIES = {"rpigpio": ("RPi.GPIO", "RPi.GPIO"), "lgpio": ("lgpio", "lgpio")}


@dataclass(frozen=True)
class Problem:
    what: str
    detail: str

    def __str__(self) -> str:
        return f"{self.what}: {self.detail}"


@dataclass(frozen=True)
class Who:
    """The user the service runs as (``User=`` in the unit), for permission checks."""

    name: str
    uid: int
    gids: frozenset[int]

    @classmethod
    def named(cls, name: str | None) -> "Who":
        if name is None:
            return cls(pwd.getpwuid(os.geteuid()).pw_name, os.geteuid(),
                       frozenset(os.getgroups()) | {os.getegid()})
        try:
            pw = pwd.getpwnam(name)
        except KeyError:
            raise ValueError(f"no user {name!r} on this machine") from None
        gids = {g.gr_gid for g in grp.getgrall() if name in g.gr_mem} | {pw.pw_gid}
        return cls(name, pw.pw_uid, frozenset(gids))

    def may(self, path: Path, mode: str) -> bool:
        """Whether this user may read ('r'), write ('w') or enter/list ('x') ``path``, by
        its permission bits (root may do anything)."""
        if self.uid == 0:
            return True
        st = path.stat()
        bits = {"r": (stat.S_IRUSR, stat.S_IRGRP, stat.S_IROTH),
                "w": (stat.S_IWUSR, stat.S_IWGRP, stat.S_IWOTH),
                "x": (stat.S_IXUSR, stat.S_IXGRP, stat.S_IXOTH)}[mode]
        if st.st_uid == self.uid:
            return bool(st.st_mode & bits[0])
        if st.st_gid in self.gids:
            return bool(st.st_mode & bits[1])
        return bool(st.st_mode & bits[2])

    def reaches(self, path: Path) -> bool:
        """Every folder above ``path`` can be entered."""
        return all(self.may(p, "x") for p in path.parents if p.exists())


def _readable(who: Who, path: Path, what: str, hint: str = "") -> list[Problem]:
    if not path.exists():
        return [Problem(what, f"{path} không có / does not exist{hint}")]
    if not path.is_file():
        return [Problem(what, f"{path} không phải tệp / is not a file")]
    if not (who.reaches(path) and who.may(path, "r")):
        return [Problem(what, f"người dùng {who.name} không đọc được {path} / user {who.name} "
                              f"cannot read it (chown or chmod it)")]
    return []


def check(cfg: StationConfig, *, user: str | None = None, device: bool = True) -> list[Problem]:
    """Every problem found, at once. ``device`` opens the sound device (writes 20 ms of
    silence to it)."""
    who = Who.named(user)
    found: list[Problem] = []
    key_problems = _readable(who, cfg.station_key, "[keys] station_key",
                             " — run `loaxa agent keygen --config station.toml`")
    found += key_problems
    if not key_problems:
        try:
            Signer.load(cfg.station_key, f"station:{cfg.station_id}")
        except (ValueError, TypeError, OSError) as exc:
            found.append(Problem("[keys] station_key", f"{cfg.station_key}: not a usable "
                                 f"Ed25519 key ({exc})"))
    d = Path(cfg.data_dir)
    probe = d if d.exists() else next((p for p in d.parents if p.exists()), Path("/"))
    if d.exists() and not d.is_dir():
        found.append(Problem("[station] data_dir", f"{d} không phải thư mục / is not a folder"))
    elif not (who.reaches(probe) and who.may(probe, "w") and who.may(probe, "x")):
        found.append(Problem("[station] data_dir", f"người dùng {who.name} không ghi được vào "
                             f"{probe} / user {who.name} cannot write there"))
    else:
        db = d / "station.db"
        if db.exists() and not (who.may(db, "r") and who.may(db, "w")):
            found.append(Problem("[station] data_dir", f"người dùng {who.name} không ghi được "
                                 f"{db} / user {who.name} cannot write it"))
    b = cfg.broker
    for name in ("tls_ca", "tls_cert", "tls_key"):
        value = getattr(b, name)
        if value:
            found += _readable(who, Path(value), f"[broker] {name}")
    if (b.tls_cert is None) != (b.tls_key is None):
        found.append(Problem("[broker] tls_cert", "tls_cert và tls_key đi cùng nhau / "
                             "tls_cert and tls_key go together"))
    if (b.tls_cert or b.tls_key) and not b.tls_ca:
        found.append(Problem("[broker] tls_ca", "a client certificate needs tls_ca (the "
                             "broker's CA)"))
    lib = GPIO_LIBRARIES.get(cfg.hardware_backend)
    if lib and importlib.util.find_spec(lib[0].split(".")[0]) is None:
        found.append(Problem("[hardware] backend", f"{cfg.hardware_backend} cần thư viện "
                             f"{lib[1]}, chưa được cài / needs {lib[1]}, which is not installed: "
                             f"pip install 'loaxa[pi]'"))
    if cfg.alsa_config:
        found += _readable(who, Path(cfg.alsa_config), "[audio] alsa_config")
    if device and not any(p.what.startswith("[audio]") for p in found):
        from audio import AudioError, check_device
        try:
            check_device(cfg.audio_device, alsa_config=cfg.alsa_config)
        except AudioError as exc:
            found.append(Problem("[audio] device", str(exc)))
    return found


def keygen(cfg: StationConfig) -> tuple[Path, str, bool]:
    """The station's own signing key: made here, never sent anywhere; only its public half
    goes to the hub. Returns (path, public key, whether it was created now)."""
    path = Path(cfg.station_key)
    if path.exists():
        signer = Signer.load(path, f"station:{cfg.station_id}")
        return path, public_to_text(signer.public), False
    path.parent.mkdir(parents=True, exist_ok=True)
    signer = Signer.generate(f"station:{cfg.station_id}")
    signer.save(path)
    return path, public_to_text(signer.public), True
