"""Issue 12: the station's own web page, beside a running agent: behind a PIN (argon2,
throttled), it shows the station's state and today's programme from the Pi alone (also with
the hub gone), and its stop and volume reach the agent, which records and reports them like a
button press."""
from __future__ import annotations

import json
import re
import stat
from datetime import datetime, timedelta

import pytest
from fastapi.testclient import TestClient

from conftest import wait_for
from deploy.cli import main
from fleet import LONG, Fleet
from schedules import TZ
from station_agent.console import create_console

T = datetime(2030, 3, 2, 8, 0, tzinfo=TZ)
SID = "xa-pin"
TOKEN = re.compile(r'name="csrftoken" value="([^"]+)"')


def _post(c: TestClient, path: str, data: dict):
    token = c.cookies.get("csrftoken") or TOKEN.search(c.get("/").text).group(1)
    return c.post(path, data={"csrftoken": token, **data})


@pytest.fixture
def station(tmp_path, mosquitto):
    fleet = Fleet(tmp_path, mosquitto, [SID], start=T - timedelta(minutes=10))
    fleet.start()
    fleet.wait_online()
    yield fleet
    fleet.stop()


def test_station_console(station, capsys):
    fleet = station
    cfg = fleet.station_dir(SID) / "station.toml"
    assert main(["agent", "pin", "--config", str(cfg), "--pin", "1111"]) == 2  # too easy
    assert main(["agent", "pin", "--config", str(cfg), "--pin", "2468"]) == 0
    pin = cfg.parent / "console.pin"
    assert pin.read_text().startswith("$argon2") and stat.S_IMODE(pin.stat().st_mode) == 0o640
    item = fleet.schedule(fleet.content(LONG), T)
    fleet.wait_active(2)
    c = TestClient(create_console(cfg, clock=fleet.clock), follow_redirects=False)
    assert "Nhập mã PIN" in c.get("/").text
    # five wrong PINs lock it; the right one is refused while locked; time unlocks it
    codes = [_post(c, "/pin", {"pin": "0000"}).status_code for _ in range(5)]
    assert codes == [401] * 4 + [429]
    r = _post(c, "/pin", {"pin": "2468"})
    assert r.status_code == 429 and "khóa" in r.text
    fleet.pass_time(T - timedelta(minutes=4))
    assert _post(c, "/pin", {"pin": "2468"}).status_code == 303
    page = c.get("/").text
    assert "Đài xã xa-pin" in page and "08:00" in page and "Có</b> kết nối" in page
    # a form without its token changes nothing
    assert c.post("/action", data={"action": "stop"}).status_code == 403
    # the item plays; the console's stop ends it, recorded as a press from the console
    fleet.pass_time(T)
    wait_for(lambda: fleet.status(SID).get("playing"), 20, "the item on air")
    assert _post(c, "/action", {"action": "stop"}).status_code == 303
    wait_for(lambda: [p for p in fleet.playbacks(SID) if p["item_id"] == item], 30,
             "the stopped play at the hub")
    assert fleet.playbacks(SID)[-1]["outcome"] == "stopped"
    presses = [e["data"] for e in fleet.hub_events(SID, "button")]
    assert {"button": "stop", "pressed": True, "source": "console", "by": "console"} in presses
    # with the hub gone the page still works and the volume still reaches the agent
    fleet.stop_hub()
    assert _post(c, "/action", {"action": "volume", "level": "35"}).status_code == 303
    wait_for(lambda: fleet.status(SID).get("volume") == 35, 20, "volume 35 at the agent")
    r = c.get("/")
    assert r.status_code == 200 and "35</b> âm lượng" in r.text
    assert _post(c, "/action", {"action": "volume", "level": "150"}).status_code == 303
    assert "Âm lượng từ 0 đến 100" in c.get("/").text
    assert _post(c, "/action", {"action": "reboot"}).status_code == 400
    actions = fleet.station_dir(SID) / "data" / "actions"
    wait_for(lambda: not list(actions.glob("*.json")), 10, "the agent to take every action")
