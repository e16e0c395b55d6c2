"""Issue 12, updates: the parts that need no broker. A release's wheels are unpacked into a
slot only when each matches the signed manifest, and never outside the slot; the hub signs
releases with a key of their own; the update command's shape is checked."""
from __future__ import annotations

import hashlib
import io
import tarfile
import zipfile
from datetime import datetime, timezone
from pathlib import Path

import pytest

from hub import config as hubconfig
from hub.admin import add_station, init_hub
from hub.config import HubError
from hub.releases import make_release, update_body
from hub.store import HubStore
from station_agent import config as station_config
from station_agent.slots import InstallError, Slots, version_key
from station_agent.update import UpdateRefused, check_body, read_release

NOW = datetime(2030, 1, 1, tzinfo=timezone.utc)


def wheel(path: Path, files: dict[str, bytes]) -> Path:
    with zipfile.ZipFile(path, "w") as z:
        for name, data in files.items():
            z.writestr(name, data)
    return path


def release_tar(path: Path, wheels: list[Path]) -> tuple[Path, dict]:
    with tarfile.open(path, "w:") as tar:
        for w in wheels:
            tar.add(w, arcname=w.name)
    return path, {"wheels": [{"name": w.name, "sha256": hashlib.sha256(w.read_bytes())
                              .hexdigest()} for w in wheels]}


GOOD = {"station_agent/__init__.py": b"", "loaxa-0.2.0.dist-info/METADATA": b"Version: 0.2.0",
        "loaxa-0.2.0.data/purelib/extra.py": b"X = 1", "loaxa-0.2.0.data/scripts/loaxa": b"#"}


def test_install_unpacks_only_what_the_manifest_names(tmp_path):
    w = wheel(tmp_path / "loaxa-0.2.0-py3-none-any.whl", GOOD)
    tar, manifest = release_tar(tmp_path / "r.tar", [w])
    slots = Slots(tmp_path / "slots")
    slot = slots.install("0.2.0", tar, manifest, b"{}")
    site = slot / "site"
    assert (site / "station_agent" / "__init__.py").is_file()
    assert (site / "extra.py").read_text() == "X = 1"  # .data/purelib goes to the top
    assert not (site / "loaxa").exists()                # scripts are not needed
    assert slots.installed("0.2.0") and slots.current() == "base"
    slots.point_at("0.2.0")
    assert slots.current() == "0.2.0"
    slots.point_at("base")
    assert slots.current() == "base"


@pytest.mark.parametrize("case", ["hash", "zip-slip", "absolute", "extra-member", "missing"])
def test_install_refuses_a_tampered_release_and_leaves_nothing(tmp_path, case):
    w = wheel(tmp_path / "loaxa-0.2.0-py3-none-any.whl", GOOD)
    tar, manifest = release_tar(tmp_path / "r.tar", [w])
    if case == "hash":
        manifest["wheels"][0]["sha256"] = "0" * 64
    elif case in ("zip-slip", "absolute"):
        name = "../../evil.py" if case == "zip-slip" else "/tmp/evil.py"
        bad = wheel(tmp_path / "loaxa-0.2.0-py3-none-any.whl", {**GOOD, name: b"boom"})
        tar, manifest = release_tar(tmp_path / "r.tar", [bad])
    elif case == "extra-member":
        other = wheel(tmp_path / "other-1.0-py3-none-any.whl", {"other.py": b""})
        tar, _ = release_tar(tmp_path / "r.tar", [w, other])
    elif case == "missing":
        manifest["wheels"].append({"name": "dep-1.0-py3-none-any.whl", "sha256": "1" * 64})
    slots = Slots(tmp_path / "slots")
    with pytest.raises(InstallError):
        slots.install("0.2.0", tar, manifest, b"{}")
    assert not slots.installed("0.2.0")
    assert [p.name for p in slots.root.iterdir()] == []  # no partial slot left behind
    assert not (tmp_path / "evil.py").exists() and not Path("/tmp/evil.py").exists()


def test_versions_order_numerically():
    assert version_key("0.1.10") > version_key("0.1.9") > version_key("0.1.9rc1")
    assert version_key("1.0") > version_key("0.99.99")


@pytest.fixture
def hub(tmp_path):
    init_hub(tmp_path / "hub", broker_host="127.0.0.1", broker_port=1883)
    cfg = hubconfig.load(tmp_path / "hub")
    store = HubStore(cfg.db_path)
    yield cfg, store
    store.close()


def test_hub_signs_releases_with_its_release_key(hub, tmp_path):
    cfg, store = hub
    assert (cfg.home / "release.key").stat().st_mode & 0o777 == 0o600
    w = wheel(tmp_path / "loaxa-0.2.0-py3-none-any.whl", GOOD)
    r = make_release(cfg, store, [w], now=NOW, notes="sửa lỗi")
    assert make_release(cfg, store, [w], now=NOW)["sha"] == r["sha"]  # same wheels: same
    # a station enrolled from this hub trusts the release key, and only it
    add_station(cfg, "a", name="Xã A", groups=[], out=tmp_path / "a")
    st = station_config.load(tmp_path / "a" / "station.toml")
    m = read_release(r["manifest"], st.release_public)
    assert (m["version"], m["sha"], m["size"]) == ("0.2.0", r["sha"], r["size"])
    with pytest.raises(UpdateRefused, match="release key"):
        read_release(r["manifest"], st.hub_public)  # the programme key does not sign code
    with pytest.raises(UpdateRefused, match="trusts no release key"):
        read_release(r["manifest"], None)
    tampered = r["manifest"].replace('"0.2.0"', '"9.9.9"')
    with pytest.raises(UpdateRefused):
        read_release(tampered, st.release_public)
    check_body(update_body(r))
    with pytest.raises(ValueError):
        check_body({**update_body(r), "health_s": 5})
    with pytest.raises(ValueError):
        check_body({**update_body(r), "content": "not-a-sha"})


def test_hub_refuses_a_release_it_cannot_name(hub, tmp_path):
    cfg, store = hub
    other = wheel(tmp_path / "other-1.0-py3-none-any.whl", {"other.py": b""})
    with pytest.raises(HubError, match="exactly one loaxa wheel"):
        make_release(cfg, store, [other], now=NOW)
    w = wheel(tmp_path / "loaxa-0.2.0-py3-none-any.whl", GOOD)
    make_release(cfg, store, [w], now=NOW)
    w2 = wheel(tmp_path / "x" / "loaxa-0.2.0-py3-none-any.whl"
               if (tmp_path / "x").mkdir() is None else None, {**GOOD, "new.py": b""})
    with pytest.raises(HubError, match="new version"):
        make_release(cfg, store, [w2], now=NOW)
    with pytest.raises(HubError, match="30-3600"):
        update_body(store.q("SELECT * FROM releases")[0], health_s=10)


def test_release_and_update_from_the_command_line(tmp_path, capsys):
    from deploy.cli import main
    home = tmp_path / "hub"
    assert main(["hub", "--home", str(home), "init"]) == 0
    assert main(["hub", "--home", str(home), "station", "add", "a", "--name", "Xã A",
                 "--out", str(tmp_path / "a")]) == 0
    w = wheel(tmp_path / "loaxa-0.2.0-py3-none-any.whl", GOOD)
    capsys.readouterr()
    assert main(["hub", "--home", str(home), "release", "add", str(w), "--notes", "thử"]) == 0
    assert "0.2.0" in capsys.readouterr().out
    assert main(["hub", "--home", str(home), "release", "list"]) == 0
    assert "0.2.0" in capsys.readouterr().out
    assert main(["hub", "--home", str(home), "update", "0.2.0", "--to", "station:a"]) == 0
    out = capsys.readouterr()
    assert "command show" in out.out and "hub serve" in out.err  # stored, not yet sent
    store = HubStore(home / "hub.db")
    cmd = store.q("SELECT * FROM commands")[0]
    store.close()
    assert cmd["action"] == "update" and cmd["target"] == "station:a"
    assert main(["hub", "--home", str(home), "update", "9.9.9", "--to", "all"]) == 2
    assert "no release 9.9.9" in capsys.readouterr().err


def test_launcher_rolls_back_a_version_started_too_often_without_confirming(tmp_path):
    """Power cuts or watchdog kills during the trial: the third start without a confirmation
    is the last; the launcher points back before it starts anything."""
    from station_agent.launcher import Launcher
    from station_agent.slots import MAX_TRIAL_STARTS
    w = wheel(tmp_path / "loaxa-0.2.0-py3-none-any.whl", GOOD)
    tar, manifest = release_tar(tmp_path / "r.tar", [w])
    launcher = Launcher(tmp_path / "station.toml", tmp_path / "slots")
    s = launcher.slots
    s.install("0.2.0", tar, manifest, b"{}")
    s.write_state({"phase": "switch", "cmd": "c1", "version": "0.2.0", "from": "base",
                   "health_s": 60})
    for n in range(1, MAX_TRIAL_STARTS + 1):
        launcher.settle()
        assert (s.state()["phase"], s.state()["starts"], s.current()) == ("trial", n, "0.2.0")
    launcher.settle()
    st = s.state()
    assert st["phase"] == "rolled_back" and s.current() == "base"
    assert f"started {MAX_TRIAL_STARTS} times" in st["reason"]
    # a slot that vanished (a card error) is not switched to
    s.write_state({"phase": "switch", "cmd": "c2", "version": "0.3.0", "from": "base",
                   "health_s": 60})
    launcher.settle()
    assert s.state()["phase"] == "rolled_back" and "not installed" in s.state()["reason"]
