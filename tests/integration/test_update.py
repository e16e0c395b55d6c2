"""Issue 12: updates with rollback. Real releases (loaxa's wheel built from this tree with a new
version, some with a defect put in), signed with the hub's release key, sent by `hub update`
over a real mosquitto, fetched through the chunked transfer, installed into a slot and
switched by the launcher (`agent launch`, as systemd runs it), with power cuts (SIGKILL of
the launcher and the agent together) at every step of the way."""
from __future__ import annotations

import os
import shutil
import subprocess
from datetime import datetime, timedelta
from pathlib import Path

import pytest

from conftest import ROOT, wait_for
from fleet import Fleet
from hub.admin import issue_command
from hub.releases import make_release, update_body
from protocol.envelope import Signer, seal
from schedules import TZ
from station_agent.slots import Slots

T = datetime(2030, 5, 4, 8, 0, tzinfo=TZ)
SID = "xa-a"
PACKAGES = ("protocol", "schedules", "audio", "hardware", "station_agent", "hub", "deploy",
            "bench")


def _uv() -> str:
    uv = shutil.which("uv") or str(Path.home() / ".local" / "bin" / "uv")
    if not Path(uv).exists():
        pytest.fail("uv is needed to build a release (deploy/setup.sh installs it)")
    return uv


def build_release(tmp: Path, version: str, patch: dict[str, tuple[str, str]] | None = None
                  ) -> Path:
    """loaxa's wheel as `make dist` builds it, from a copy of this tree with ``version`` and
    ``patch`` ({file: (old, new)}: the defect a bad release carries)."""
    src = tmp / f"src-{version}"
    for pkg in PACKAGES:
        shutil.copytree(ROOT / pkg, src / pkg, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "README.md", src / "README.md")
    text = (ROOT / "pyproject.toml").read_text()
    (src / "pyproject.toml").write_text(text.replace('version = "0.1.0"',
                                                     f'version = "{version}"', 1))
    for rel, (old, new) in (patch or {}).items():
        f = src / rel
        body = f.read_text()
        assert old in body, f"{rel}: the defect's anchor {old!r} is gone"
        f.write_text(body.replace(old, new, 1))
    out = tmp / f"wheels-{version}"
    subprocess.run([_uv(), "build", "--wheel", "--quiet", "--offline", "--out-dir", str(out),
                    str(src)], check=True, env=dict(os.environ, UV_NO_PROGRESS="1"))
    return next(out.glob("loaxa-*.whl"))


@pytest.fixture
def fleet(tmp_path, mosquitto):
    f = Fleet(tmp_path, mosquitto, [SID], start=T)
    f.start_hub()
    yield f
    f.stop()


def slots(fleet) -> Slots:
    return Slots(fleet.station_dir(SID) / "data" / "slots")


def launch(fleet, kill_at: str | None = None) -> None:
    fleet.start_station(SID, launch=True,
                        env={"LOAXA_UPDATE_KILL_AT": kill_at} if kill_at else {})


def power_cut_at(fleet, point: str) -> None:
    """Wait for the simulated power cut at ``point`` (the whole process group gets SIGKILL)."""
    proc = fleet.procs[SID]
    wait_for(lambda: proc.poll() is not None, 90, f"the power cut at {point}")
    assert proc.returncode == -9, (point, proc.returncode, fleet.log(SID)[-3000:])


def give_update(fleet, release: dict, health_s: int = 120) -> str:
    return issue_command(fleet.cfg, fleet.store, "update", f"station:{SID}",
                         update_body(release, health_s=health_s), now=fleet.clock.now(),
                         ttl_s=3600)["id"]


def target(fleet, cid: str) -> dict:
    return {t["station_id"]: t for t in fleet.store.command_targets(cid)}[SID]


def running(fleet) -> str | None:
    return (fleet.store.state(SID) or {}).get("software_version")


def test_good_release_survives_a_power_cut_at_every_step(fleet, tmp_path):
    wheel = build_release(tmp_path, "0.1.1")
    release = make_release(fleet.cfg, fleet.store, [wheel], now=fleet.clock.now())
    assert release["version"] == "0.1.1"
    # an agent not run by the launcher refuses: nothing could switch it back
    fleet.start_station(SID)
    fleet.wait_online()
    cid = give_update(fleet, release)
    wait_for(lambda: target(fleet, cid)["state"] == "failed", 30, "refused without launcher")
    assert "agent launch" in target(fleet, cid)["detail"]
    fleet.procs[SID].terminate()
    fleet.procs[SID].wait(10)

    # a release signed by another key is refused, and nothing is fetched or installed
    forged = dict(release, manifest=seal(
        "release", {"version": "0.1.1", "sha": release["sha"], "size": release["size"],
                    "wheels": [{"name": wheel.name, "sha256": "0" * 64}]},
        signer=Signer.generate("release"), seq=0, now=fleet.clock.now(),
        ttl=timedelta(days=1)).decode())
    launch(fleet)
    fleet.wait_online()
    assert running(fleet) == "0.1.0"
    bad = give_update(fleet, forged)
    wait_for(lambda: target(fleet, bad)["state"] == "failed", 30, "forged release refused")
    assert "not signed by the hub's release key" in target(fleet, bad)["detail"]
    assert not slots(fleet).state() and slots(fleet).current() == "base"
    fleet.procs[SID].terminate()
    fleet.procs[SID].wait(10)

    # the real one, with the power cut at each step in turn; each start resumes the last
    launch(fleet, "fetched")
    cid = give_update(fleet, release)
    power_cut_at(fleet, "fetched")
    assert slots(fleet).state()["phase"] == "fetching"
    for point, phase, current in (("installed", "fetching", "base"),
                                  ("switch-written", "switch", "base"),
                                  ("switched", "switch", "0.1.1"),
                                  ("before-start", "trial", "0.1.1"),
                                  ("healthy", "trial", "0.1.1")):
        launch(fleet, point)
        power_cut_at(fleet, point)
        st = slots(fleet)
        assert (st.state().get("phase"), st.current()) == (phase, current), point
    assert (slots(fleet).root / "0.1.1" / "site" / "station_agent" / "agent.py").is_file()
    launch(fleet)
    wait_for(lambda: target(fleet, cid)["state"] == "done" and running(fleet) == "0.1.1", 60,
             "the update confirmed and reported")
    detail = target(fleet, cid)["detail"]
    assert "0.1.1" in detail and "self-test passed" in detail and "broker reached" in detail
    wait_for(lambda: not slots(fleet).state(), 10, "the update's state cleared")
    assert slots(fleet).current() == "0.1.1"
    # the tar is not kept once unpacked; the slot gone back to (base) needs none
    assert not (fleet.station_dir(SID) / "data" / "audio" / f"{release['sha']}.opus").exists()
    assert sorted(p.name for p in slots(fleet).root.iterdir() if p.is_dir()
                  and not p.is_symlink()) == ["0.1.1"]
    # the station runs on: a command after the update is carried out by the new version
    rep = fleet.give("report", f"station:{SID}", {})
    wait_for(lambda: target(fleet, rep)["state"] == "done", 30, "a report after the update")
    # exactly one "done" for the update reached the hub (no step was repeated)
    events = fleet.store.q("SELECT data FROM events WHERE station_id = ? AND kind = 'command' "
                           "AND data LIKE ? AND data LIKE '%\"done\"%'", [SID, f"%{cid}%"])
    assert len(events) == 1, events


def test_release_that_fails_to_start_is_rolled_back(fleet, tmp_path):
    wheel = build_release(tmp_path, "0.1.2", {"station_agent/agent.py": (
        "class Agent:", "raise ImportError('a broken build')\n\n\nclass Agent:")})
    release = make_release(fleet.cfg, fleet.store, [wheel], now=fleet.clock.now())
    # a power cut just after the launcher pointed back: it resumes and ends the same way
    launch(fleet, "rolled-back-link")
    fleet.wait_online()
    cid = give_update(fleet, release)
    power_cut_at(fleet, "rolled-back-link")
    launch(fleet)
    wait_for(lambda: target(fleet, cid)["state"] == "failed", 90, "the rollback reported")
    detail = target(fleet, cid)["detail"]
    assert "rolled back to base" in detail and "a broken build" in detail, detail
    assert "exited with code 1" in detail
    wait_for(lambda: running(fleet) == "0.1.0" and not slots(fleet).state(), 30,
             "the old version running")
    assert slots(fleet).current() == "base" and not (slots(fleet).root / "0.1.2").exists()


def test_release_that_fails_its_health_check_is_rolled_back(fleet, tmp_path):
    # starts and connects, but its signature check is broken: the held bundle does not verify
    wheel = build_release(tmp_path, "0.1.3", {"station_agent/intake.py": (
        'env = verify(raw, self._keys(), now=None, kind="bundle")',
        'env = verify(raw, KeyRing(), now=None, kind="bundle")')})
    release = make_release(fleet.cfg, fleet.store, [wheel], now=fleet.clock.now())
    launch(fleet)
    fleet.wait_online()
    wait_for(lambda: fleet.status(SID).get("held_version"), 30, "a bundle held")
    cid = give_update(fleet, release)
    wait_for(lambda: target(fleet, cid)["state"] == "failed", 90, "the rollback reported")
    detail = target(fleet, cid)["detail"]
    assert "the held bundle does not verify" in detail and "rolled back to base" in detail, \
        detail
    wait_for(lambda: running(fleet) == "0.1.0", 30, "the old version reporting")
    assert fleet.procs[SID].poll() is None  # one launcher throughout, the old agent running
    assert slots(fleet).current() == "base"
