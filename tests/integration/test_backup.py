"""Issue 12: the hub backed up while it runs, lost, and restored onto a new home: the stations
carry on with the restored hub (its bundles and commands accepted, not refused as replays,
although the lost hub issued newer ones after the backup), and their plays reach it."""
from __future__ import annotations

import json
import os
import stat
from datetime import datetime, timedelta

import pytest

from conftest import wait_for
from deploy.cli import main
from fleet import Fleet
from hub import config as hubconfig
from hub.backup import BUNDLE_JUMP, COMMAND_JUMP
from hub.store import HubStore
from schedules import TZ

T = datetime(2030, 3, 2, 8, 0, tzinfo=TZ)
IDS = ["xa-a", "xa-b"]


def run(*args) -> int:
    return main([str(a) for a in args])


def test_backup_restore_drill(tmp_path, mosquitto, capsys):
    fleet = Fleet(tmp_path, mosquitto, IDS, start=T - timedelta(hours=1))
    try:
        fleet.start()
        fleet.wait_online()
        first = fleet.content("Bản tin thứ nhất.")
        fleet.schedule(first, T)
        fleet.wait_active(2)
        # backed up while the hub runs
        dest = tmp_path / "backup"
        assert run("hub", "--home", fleet.home, "backup", dest) == 0
        assert "khóa mode 0600" in capsys.readouterr().out
        manifest = json.loads((dest / "manifest.json").read_text())
        assert manifest["counts"]["stations"] == 2 and manifest["counts"]["content"] == 1
        assert stat.S_IMODE(dest.stat().st_mode) == 0o700
        assert stat.S_IMODE((dest / "hub.key").stat().st_mode) == 0o600
        assert stat.S_IMODE((dest / "release.key").stat().st_mode) == 0o600
        # the lost hub goes on after the backup: a new programme (v3) and a command
        second = fleet.content("Bản tin thứ hai, sau khi sao lưu.")
        fleet.schedule(second, T + timedelta(hours=1))
        fleet.wait_active(3)
        cid = fleet.give("volume", "all", {"level": 70})
        wait_for(lambda: set(fleet.command_states(cid).values()) == {"done"}, 30,
                 "the lost hub's command done")
        fleet.stop_hub()  # the hub's machine is lost
        fleet.store.close()

        # a damaged backup restores nothing
        bad = tmp_path / "bad-copy"
        import shutil
        shutil.copytree(dest, bad)
        (bad / "hub.toml").write_text((bad / "hub.toml").read_text() + "\n# changed\n")
        assert run("hub", "--home", tmp_path / "nowhere", "restore", bad) == 2
        assert "hỏng hoặc thiếu" in capsys.readouterr().err
        assert not (tmp_path / "nowhere" / "hub.db").exists()

        home2 = tmp_path / "hub2"
        assert run("hub", "--home", home2, "restore", dest) == 0
        assert run("hub", "--home", home2, "restore", dest) == 2  # never over a hub
        assert stat.S_IMODE((home2 / "hub.key").stat().st_mode) == 0o600
        assert (home2 / "release.key").read_bytes() == (fleet.home / "release.key").read_bytes()
        fleet.home, fleet.cfg = home2, hubconfig.load(home2)
        fleet.store = HubStore(fleet.cfg.db_path)
        fleet.start_hub()
        # the stations take the restored hub's programme, above what the lost hub issued
        version = 2 + BUNDLE_JUMP
        fleet.wait_active(version)
        assert fleet.store.latest_bundle("xa-a")["version"] == version
        # its commands too: their sequence continues past the lost hub's
        cid2 = fleet.give("volume", "all", {"level": 40})
        wait_for(lambda: set(fleet.command_states(cid2).values()) == {"done"}, 30,
                 "the restored hub's command done")
        seq = fleet.store.command(cid2)["seq"]
        assert seq == COMMAND_JUMP + 1, seq  # the backup held no command yet
        # the programme restored is the backup's: the first item plays and is reported
        fleet.pass_time(T)
        wait_for(lambda: len([p for p in fleet.playbacks() if p["outcome"] == "played"]) == 2,
                 30, "both plays at the restored hub")
        # nothing the restored hub sent was refused: no bundle, no command (a time reply
        # queued for the lost hub's session may arrive late and is refused as stale: benign)
        for sid in IDS:
            refused = [json.loads(d) for (d,) in fleet.station_db(
                sid, "SELECT data FROM outbox WHERE kind = 'refused'")]
            refused += [e["data"] for e in fleet.hub_events(sid, "refused")]
            assert not [r for r in refused if r["topic"].endswith(("/bundle", "/cmd"))], \
                (sid, refused)
    finally:
        fleet.stop()
