"""Issue 12: `sudo loaxa agent enrol` into a scratch root, from the file `hub station add`
wrote: the loaxa user in the gpio and audio groups, /etc/loaxa with the right owners and
modes, the pin factory for the board model, the station's own key, the systemd unit (which
`systemd-analyze verify` accepts) and chrony trusting the hub."""
from __future__ import annotations

import shutil
import stat
import subprocess
import tomllib

import pytest

from deploy.cli import main
from station_agent.enrol import board_backend

ANALYZE = shutil.which("systemd-analyze")


def run(*args) -> int:
    return main([str(a) for a in args])


@pytest.fixture
def enrolment(tmp_path):
    home = tmp_path / "hub"
    assert run("hub", "--home", home, "init", "--broker-host", "hub.vanhoa.local",
               "--broker-port", "8883") == 0
    assert run("hub", "--home", home, "pki", "init", "--host", "hub.vanhoa.local") == 0
    toml = home / "hub.toml"  # the hub's broker on TLS, as docs/deploy.md says
    toml.write_text(toml.read_text().replace(
        "port = 8883", 'port = 8883\ntls_ca = "pki/ca.crt"\ntls_cert = "pki/hub.crt"\n'
        'tls_key = "pki/hub.key"'))
    assert run("hub", "--home", home, "station", "add", "xa-an-binh", "--name",
               "Đài xã An Bình", "--group", "huyen-a") == 0
    pack = home / "stations" / "xa-an-binh.tar.gz"
    assert stat.S_IMODE(pack.stat().st_mode) == 0o600  # it holds the TLS key
    return home, pack


def _root(tmp_path, model: bytes):
    root = tmp_path / "root"
    (root / "proc/device-tree").mkdir(parents=True)
    (root / "proc/device-tree/model").write_bytes(model)
    return root


def test_enrol_a_pi4_into_a_scratch_root(enrolment, tmp_path, capsys):
    home, pack = enrolment
    root = _root(tmp_path, b"Raspberry Pi 4 Model B Rev 1.4\0")
    capsys.readouterr()
    assert run("agent", "enrol", pack, "--root", root, "--audio-device", "plughw:CARD=Headphones",
               "--pin", "2580") == 0
    out = capsys.readouterr().out
    assert "loaxa hub station key xa-an-binh ed25519:" in out or "station key xa-an-binh" in out
    assert "PRIVATE" not in out
    etc = root / "etc/loaxa"
    doc = tomllib.loads((etc / "station.toml").read_text())
    assert doc["station"]["id"] == "xa-an-binh" and doc["station"]["groups"] == ["huyen-a"]
    assert doc["station"]["data_dir"] == "/var/lib/loaxa/data"
    assert doc["keys"]["station_key"] == "/etc/loaxa/station.key"
    assert doc["hardware"]["backend"] == "rpigpio"
    assert doc["audio"]["device"] == "plughw:CARD=Headphones"
    assert doc["broker"]["tls_cert"] == "/etc/loaxa/client.crt"
    assert (etc / "agent.env").read_text() == "GPIOZERO_PIN_FACTORY=rpigpio\n"
    modes = {p.name: stat.S_IMODE(p.stat().st_mode) for p in etc.iterdir()}
    assert modes["station.key"] == 0o600 and modes["client.key"] == 0o600
    assert modes["station.toml"] == 0o640 and stat.S_IMODE(etc.stat().st_mode) == 0o750
    # the service user, in gpio and audio, owning its key and data; root owning the rest
    sysusers = (root / "etc/sysusers.d/loaxa.conf").read_text()
    assert "m loaxa gpio" in sysusers and "m loaxa audio" in sysusers
    if shutil.which("systemd-sysusers"):
        passwd = (root / "etc/passwd").read_text()
        group = {g.split(":")[0]: g for g in (root / "etc/group").read_text().splitlines()}
        uid = int(next(p for p in passwd.splitlines() if p.startswith("loaxa:")).split(":")[2])
        assert "loaxa" in group["gpio"].split(":")[3] and "loaxa" in group["audio"].split(":")[3]
        gid = int(group["loaxa"].split(":")[2])
        assert (etc / "station.key").stat().st_uid == uid
        assert (etc / "station.toml").stat().st_uid == 0 and \
            (etc / "station.toml").stat().st_gid == gid
        assert (root / "var/lib/loaxa/data").stat().st_uid == uid
    chrony = (root / "etc/chrony/conf.d/loaxa.conf").read_text()
    assert "server hub.vanhoa.local iburst prefer" in chrony and "pool " in chrony
    unit = root / "etc/systemd/system/loaxa-agent.service"
    console = unit.with_name("loaxa-console.service")
    assert "Type=notify" in unit.read_text() and "agent console" in console.read_text()
    assert (etc / "console.pin").read_text().startswith("$argon2")
    assert "2580" not in (etc / "console.pin").read_text()
    if ANALYZE:
        r = subprocess.run([ANALYZE, "verify", str(unit), str(console)], capture_output=True,
                           text=True)
        assert r.returncode == 0 and not r.stderr.strip(), r.stderr
    # enrolling again over it is refused, and nothing is changed
    before = (etc / "station.key").read_bytes()
    assert run("agent", "enrol", pack, "--root", root) == 2
    assert "đã đăng ký" in capsys.readouterr().err
    assert (etc / "station.key").read_bytes() == before


def test_a_pi5_gets_lgpio_and_a_folder_works_too(enrolment, tmp_path):
    home, pack = enrolment
    root = _root(tmp_path, b"Raspberry Pi 5 Model B Rev 1.0\0")
    assert run("agent", "enrol", home / "stations" / "xa-an-binh", "--root", root) == 0
    assert (root / "etc/loaxa/agent.env").read_text() == "GPIOZERO_PIN_FACTORY=lgpio\n"
    assert board_backend("Raspberry Pi 3 Model B Plus Rev 1.3") == "rpigpio"
    assert board_backend("") == "simulated"


def test_a_broken_enrolment_is_refused_before_anything_is_written(tmp_path, capsys):
    bad = tmp_path / "bad.tar.gz"
    bad.write_bytes(b"not a tarball")
    root = tmp_path / "root"
    assert run("agent", "enrol", bad, "--root", root) == 2
    assert "không phải gói đăng ký" in capsys.readouterr().err
    folder = tmp_path / "half"
    folder.mkdir()
    (folder / "station.toml").write_text("[station]\nid = 'x y'\n")
    assert run("agent", "enrol", folder, "--root", root) == 2
    assert not (root / "etc").exists()
