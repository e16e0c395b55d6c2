"""Issue 12: the hub's signing key rotated while a station is offline. The new key is
announced signed by the old one; the online station trusts it at once, takes the re-signed
programme and a command signed by it; the offline station takes it when it returns; once both
have confirmed, the old key is retired and a message signed by it is refused."""
from __future__ import annotations

import json
import stat
from datetime import datetime, timedelta

from conftest import wait_for
from deploy.cli import main
from fleet import Fleet
from hub.admin import key_status
from protocol.envelope import Signer, seal
from schedules import TZ

T = datetime(2030, 3, 2, 8, 0, tzinfo=TZ)
IDS = ["xa-on", "xa-off"]


def test_rotation_with_a_station_offline(tmp_path, mosquitto, capsys):
    fleet = Fleet(tmp_path, mosquitto, IDS, start=T - timedelta(hours=1))
    try:
        fleet.start()
        fleet.wait_online()
        fleet.schedule(fleet.content("Bản tin trước khi đổi khóa."), T)
        fleet.wait_active(2)
        old = Signer.load(fleet.cfg.key_path, "hub")
        fleet.procs["xa-off"].terminate()
        fleet.procs["xa-off"].wait(10)
        assert main(["hub", "--home", str(fleet.home), "key", "rotate"]) == 0
        out = capsys.readouterr().out
        assert "PRIVATE" not in out
        new = Signer.load(fleet.cfg.key_path, "hub")
        assert new.kid != old.kid
        archive = fleet.home / f"hub.key.{old.kid}"
        assert stat.S_IMODE(archive.stat().st_mode) == 0o600
        # the running hub takes the new key, re-signs the programme: the online station
        # trusts it and activates the re-signed bundle
        wait_for(lambda: fleet.hub.signer.kid == new.kid, 15, "the hub to sign with the new key")
        wait_for(lambda: fleet.status("xa-on").get("active_version") == 3, 30,
                 "the re-signed programme on the online station")
        bundle = json.loads(fleet.store.latest_bundle("xa-on")["raw"])
        assert bundle["kid"] == new.kid
        cid = fleet.give("volume", "station:xa-on", {"level": 60})
        wait_for(lambda: fleet.command_states(cid) == {"xa-on": "done"}, 30,
                 "a command signed by the new key")
        st = key_status(fleet.store)
        wait_for(lambda: key_status(fleet.store)["confirmed"] == 1, 20, "xa-on confirms")
        assert key_status(fleet.store)["waiting"] == ["xa-off"]
        assert not fleet.store.setting("hubkey.retired")  # not while a station has not
        # the offline station returns: it learns the key from the retained announcement
        fleet.start_station("xa-off")
        wait_for(lambda: fleet.status("xa-off").get("active_version") == 3, 30,
                 "the re-signed programme on the returning station")
        wait_for(lambda: fleet.store.setting("hubkey.retired") == old.kid, 30,
                 "the old key retired once both confirmed")
        for sid in IDS:
            wait_for(lambda: old.kid not in json.loads(fleet.station_db(
                sid, "SELECT value FROM meta WHERE key = 'hub.keys'")[0][0]), 20,
                f"{sid} to drop the old key")
        # a command signed with the retired key is refused as from an unknown key
        forged = seal("command", {"id": "old-key", "target": "station:xa-on",
                                  "action": "volume", "level": 5},
                      signer=old, seq=10_000, now=fleet.clock.now(), ttl=timedelta(minutes=5),
                      msg_id="old-key")
        def unknown() -> int:
            rows = fleet.station_db("xa-on", "SELECT value FROM meta WHERE key = "
                                             "'count.refused.unknown_key'")
            return int(rows[0][0]) if rows else 0
        before = unknown()
        fleet.hub.link.publish(fleet.hub.topics.command("xa-on"), forged)
        wait_for(lambda: unknown() == before + 1, 20, "the retired key's command refused")
        assert fleet.status("xa-on").get("volume") == 60
        assert main(["hub", "--home", str(fleet.home), "key", "status"]) == 0
        assert "2/2" in capsys.readouterr().out
        # the play still happens, reported to the hub
        fleet.pass_time(T)
        wait_for(lambda: len([p for p in fleet.playbacks() if p["outcome"] == "played"]) == 2,
                 30, "both plays")
    finally:
        fleet.stop()
