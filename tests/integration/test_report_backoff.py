"""A report the hub does not acknowledge is sent again after 30 s, then 60 s, then 120 s (the
wait doubles, up to 160 s), so an overloaded or absent hub is not sent the same reports every
few seconds by every station at once; when the hub comes back, it has them. The station's clock is
moved, not waited for."""
from __future__ import annotations

import json
import time
from datetime import datetime, timedelta

from conftest import wait_for
from deploy.cli import main
from fleet import Fleet
from protocol.mqtt import BrokerConfig, MqttLink
from protocol.topics import Topics
from schedules import TZ

T = datetime(2030, 7, 1, 9, 0, tzinfo=TZ)
SID = "xa-a"


def test_unacknowledged_reports_are_resent_with_a_doubling_wait(tmp_path, mosquitto):
    fleet = Fleet(tmp_path, mosquitto, [SID], start=T)
    sends: list[float] = []
    sniff = None
    try:
        fleet.start()
        fleet.wait_online()
        wait_for(lambda: fleet.station_db(SID, "SELECT count(*) FROM outbox")[0][0] == 0, 30,
                 "the start-up reports acknowledged")
        fleet.stop_hub()
        def on_report(m) -> None:
            events = json.loads(m.payload)["body"]["events"]
            if any(e["kind"] == "button" and e["data"].get("button") == "stop"
                   for e in events):
                sends.append(time.monotonic())
        sniff = MqttLink(client_id="sniff", broker=BrokerConfig(port=mosquitto.port),
                         subscriptions=[Topics().events(SID)], on_inbound=on_report)
        sniff.start()
        assert sniff.wait_connected(10)
        # something to report while no hub listens: the stop button pressed
        assert main(["agent", "press", "--config", str(fleet.station_dir(SID) / "station.toml"),
                     "stop"]) == 0
        wait_for(lambda: len(sends) == 1, 30, "the report of the button")

        def after(seconds: float, expected: int) -> None:
            fleet.pass_time(fleet.clock.now() + timedelta(seconds=seconds))
            if len(sends) < expected:
                wait_for(lambda: len(sends) == expected, 10, f"send {expected}")
            else:  # no resend: the agent has had many turns on the moved clock
                time.sleep(1.0)
                assert len(sends) == expected, (seconds, len(sends))

        after(31, 2)    # 30 s: sent again
        after(31, 2)    # now it waits 60 s
        after(30, 3)
        after(90, 3)    # then 120 s
        after(31, 4)
        # the hub comes back: the reports the broker kept for its session reach it, and it
        # acknowledges them (a hub whose session was lost makes the station resend at once:
        # its presence resets the wait)
        fleet.start_hub()
        wait_for(lambda: fleet.station_db(SID, "SELECT count(*) FROM outbox")[0][0] == 0, 30,
                 "acknowledged")
        assert fleet.hub_events(SID, "button")  # stored at the hub once it was back
    finally:
        if sniff is not None:
            sniff.stop()
        fleet.stop()
