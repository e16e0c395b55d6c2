"""`sudo loaxa agent enrol ENROLMENT`: a blank Raspberry Pi OS system becomes this station.

From the enrolment the hub wrote (`loaxa hub station add`: a folder, or its ``.tar.gz``):
- the ``loaxa`` user, in the ``gpio`` and ``audio`` groups (a sysusers.d file, applied with
  ``systemd-sysusers``);
- ``/etc/loaxa/``: ``station.toml`` (data in ``/var/lib/loaxa``, the pin factory for this
  board model, the sound device), the broker's CA and the station's client certificate, and
  the station's own signing key, made here (0600, the hub never sees it: its public half is
  printed for `loaxa hub station key`);
- ``/etc/loaxa/agent.env`` (``GPIOZERO_PIN_FACTORY``), the systemd unit, and a chrony
  configuration that trusts the hub's NTP server beside the pool.
``root`` lets the whole thing be written into a scratch directory (the tests do).
"""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
from dataclasses import dataclass
from pathlib import Path

from . import config

ETC = Path("etc/loaxa")
DATA = Path("var/lib/loaxa")
UNIT = Path("etc/systemd/system/loaxa-agent.service")
SYSUSERS = Path("etc/sysusers.d/loaxa.conf")
CHRONY = Path("etc/chrony/conf.d/loaxa.conf")
MODEL_FILES = ("proc/device-tree/model", "sys/firmware/devicetree/base/model")
SECRET_FILES = {"client.key", "station.key"}


class EnrolError(config.ConfigError):
    """Enrolment refused; nothing on the system was changed before the check that failed."""


@dataclass(frozen=True)
class Enrolled:
    station_id: str
    public_key: str
    backend: str
    model: str
    config: Path
    unit: Path
    users_created: bool


def board_backend(model: str) -> str:
    """The GPIO library for a board: lgpio on a Pi 5 (RPi.GPIO cannot drive its RP1 chip),
    RPi.GPIO on earlier Pis; simulated when this is not a Raspberry Pi."""
    if not model.startswith("Raspberry Pi"):
        return "simulated"
    return "lgpio" if re.match(r"Raspberry Pi 5", model) else "rpigpio"


def read_model(root: Path) -> str:
    for rel in MODEL_FILES:
        try:
            return (root / rel).read_bytes().rstrip(b"\0").decode("utf-8", "replace").strip()
        except OSError:
            continue
    return ""


def set_toml(text: str, section: str, key: str, value) -> str:
    """``key = value`` in ``[section]`` of a TOML text (added if missing)."""
    lines = text.splitlines()
    rendered = f"{key} = {json.dumps(value, ensure_ascii=False)}"
    start = lines.index(f"[{section}]")
    end = next((i for i in range(start + 1, len(lines)) if lines[i].startswith("[")),
               len(lines))
    for i in range(start + 1, end):
        if lines[i].split("=")[0].strip() == key:
            lines[i] = rendered
            break
    else:
        lines.insert(start + 1, rendered)
    return "\n".join(lines) + "\n"


def _unpack(source: Path, into: Path) -> Path:
    if source.is_dir():
        return source
    if not tarfile.is_tarfile(source):
        raise EnrolError(f"{source}: không phải gói đăng ký / not an enrolment (a folder or "
                         f".tar.gz from `loaxa hub station add`)")
    with tarfile.open(source) as tar:
        tar.extractall(into, filter="data")  # no links out, no devices, no absolute paths
    found = [p.parent for p in into.rglob("station.toml")]
    if len(found) != 1:
        raise EnrolError(f"{source}: cần đúng một station.toml / needs one station.toml")
    return found[0]


def _ids(root: Path, user: str, groups: tuple[str, ...]) -> tuple[int, dict[str, int]] | None:
    """uid and group ids from ROOT's own /etc/passwd and /etc/group (None if absent)."""
    try:
        passwd = (root / "etc/passwd").read_text().splitlines()
        group = (root / "etc/group").read_text().splitlines()
    except OSError:
        return None
    uid = next((int(f.split(":")[2]) for f in passwd if f.split(":")[0] == user), None)
    gids = {g.split(":")[0]: int(g.split(":")[2]) for g in group if g.count(":") >= 3}
    if uid is None or user not in gids:
        return None
    return uid, gids


def enrol(source: Path, *, root: Path = Path("/"), audio_device: str | None = None,
          hub_ntp: str | None = None, exe: str | None = None, pin: str | None = None
          ) -> Enrolled:
    with tempfile.TemporaryDirectory() as tmp:
        folder = _unpack(source, Path(tmp))
        cfg = config.load(folder / "station.toml")  # refuses a broken enrolment before writing
        if pin is not None:
            from .console import check_pin
            check_pin(pin)
        text = (folder / "station.toml").read_text(encoding="utf-8")
        model = read_model(root)
        backend = board_backend(model)
        etc, data = root / ETC, root / DATA
        if (etc / "station.toml").exists():
            raise EnrolError(f"{etc / 'station.toml'} đã có: trạm này đã đăng ký / this system "
                             f"is already enrolled (remove /etc/loaxa to enrol again)")
        text = set_toml(text, "station", "data_dir", f"/{DATA}/data")
        text = set_toml(text, "keys", "station_key", f"/{ETC}/station.key")
        text = set_toml(text, "hardware", "backend", backend)
        if audio_device:
            text = set_toml(text, "audio", "device", audio_device)
        for key in ("tls_ca", "tls_cert", "tls_key"):
            m = re.search(rf'^{key} = "([^"/]+)"$', text, re.M)
            if m:  # the certificates move with the configuration
                text = set_toml(text, "broker", key, f"/{ETC}/{m.group(1)}")
        etc.mkdir(parents=True, exist_ok=True)
        etc.chmod(0o750)
        (data / "data").mkdir(parents=True, exist_ok=True)
        data.chmod(0o750)
        for f in folder.iterdir():
            if f.is_file() and f.suffix in (".crt", ".key", ".pem"):
                shutil.copyfile(f, etc / f.name)
                (etc / f.name).chmod(0o600 if f.name in SECRET_FILES else 0o640)
        (etc / "station.toml").write_text(text, encoding="utf-8")
        (etc / "station.toml").chmod(0o640)
    from protocol.envelope import Signer, public_to_text
    key = etc / "station.key"
    signer = Signer.generate(f"station:{cfg.station_id}")
    signer.save(key)
    key.chmod(0o600)
    factory = {"lgpio": "lgpio", "rpigpio": "rpigpio"}.get(backend)
    (etc / "agent.env").write_text(f"GPIOZERO_PIN_FACTORY={factory}\n" if factory else
                                   "# not a Raspberry Pi: simulated board\n")
    # the service user, in the gpio and audio groups
    (root / SYSUSERS).parent.mkdir(parents=True, exist_ok=True)
    (root / SYSUSERS).write_text(
        "# loaxa station agent (written by `loaxa agent enrol`)\n"
        "g gpio -\ng audio -\n"
        f'u loaxa - "loaxa station agent" /{DATA}\n'
        "m loaxa gpio\nm loaxa audio\n")
    users_created = False
    sysusers = shutil.which("systemd-sysusers")
    if sysusers:
        args = [sysusers] + ([f"--root={root}"] if root != Path("/") else []) + \
            [str(root / SYSUSERS)]
        users_created = subprocess.run(args, capture_output=True).returncode == 0
    ids = _ids(root, "loaxa", ("gpio", "audio"))
    if ids and os.geteuid() == 0:
        uid, gids = ids
        gid = gids["loaxa"]
        for p in [etc, *etc.iterdir()]:
            os.chown(p, 0, gid)  # root's, readable by the service's group
        os.chown(key, uid, gid)  # the agent's own key: its own
        for p in [data, *data.rglob("*")]:
            os.chown(p, uid, gid)
    if pin is not None:  # the station console's PIN (argon2), readable by the service
        from .console import set_pin
        set_pin(etc / "station.toml", pin)
        if ids and os.geteuid() == 0:
            os.chown(etc / "console.pin", 0, ids[1]["loaxa"])
    # the units, pointing at this installation's `loaxa`
    exe = exe or str(Path(sys.executable).parent / "loaxa")
    (root / UNIT).parent.mkdir(parents=True, exist_ok=True)
    for name in ("loaxa-agent.service", "loaxa-console.service"):
        text = (Path(__file__).resolve().parents[1] / "deploy" / "systemd" / name).read_text()
        (root / UNIT).with_name(name).write_text(text.replace("/opt/loaxa/.venv/bin/loaxa", exe))
    # time: the hub's NTP first (reachable when the Internet is not), the pool besides
    ntp = hub_ntp or cfg.broker.host
    (root / CHRONY).parent.mkdir(parents=True, exist_ok=True)
    (root / CHRONY).write_text(
        "# written by `loaxa agent enrol`: the hub keeps time for its stations when the\n"
        "# Internet is out of reach (docs/deploy.md); the pool when the hub is\n"
        f"server {ntp} iburst prefer\npool 2.debian.pool.ntp.org iburst\n")
    return Enrolled(cfg.station_id, public_to_text(signer.public), backend, model,
                    etc / "station.toml", root / UNIT, users_created)
