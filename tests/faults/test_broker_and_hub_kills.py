"""Faults 1 and 3: the broker and the hub killed with SIGKILL mid-work. Nothing lost,
nothing duplicated at the hub."""
import os
import signal
import time
from datetime import datetime, timedelta

import pytest

from conftest import wait_for
from fleet import Fleet
from netproxy import LinkProxy
from schedules import TZ

T = datetime(2030, 3, 2, 8, 0, tzinfo=TZ)
STATIONS = ["xa-a", "xa-b", "xa-c"]
N_ITEMS = 30


def many_missed(fleet):
    """N items a minute apart with a 5 s late-start window: letting 31 minutes pass while
    the stations cannot report produces N 'missed' records per station at once."""
    content = fleet.content("Tin ngắn.")
    for i in range(N_ITEMS):
        fleet.schedule(content, T + timedelta(minutes=i), late_start_s=5)


def all_reported(fleet, sid):
    seqs = [r["seq"] for r in fleet.store.q(
        "SELECT seq FROM events WHERE station_id = ? ORDER BY seq", [sid])]
    local_next = int(fleet.station_db(sid, "SELECT value FROM meta WHERE key='next_seq'")[0][0])
    return seqs == list(range(1, local_next)) and fleet.status(sid).get("outbox") == 0


def check_exactly_once(fleet):
    for sid in STATIONS:
        wait_for(lambda: all_reported(fleet, sid), 60, f"{sid}: every event at the hub")
        local = fleet.station_db(sid, "SELECT key, outcome FROM plays ORDER BY key")
        hub = [(r["occurrence"], r["outcome"]) for r in fleet.store.q(
            "SELECT occurrence, outcome FROM playbacks WHERE station_id = ? ORDER BY occurrence",
            [sid])]
        assert hub == local and len(local) == N_ITEMS


@pytest.fixture
def fleet(tmp_path, mosquitto):
    f = Fleet(tmp_path, mosquitto, STATIONS, start=T - timedelta(hours=1),
              station={"station": {"report_batch": 3}})
    yield f
    f.stop()


def transferring(fleet, sid):
    return any((fleet.station_dir(sid) / "data" / "audio").glob("*.part"))


def test_broker_killed_during_bundle_delivery(fleet, tmp_path, figures):
    # ~40 s of speech, through a slow link so the transfer takes a few seconds
    content = fleet.content("Thông báo về lịch tiêm phòng cho trẻ em. " * 12)
    fleet.schedule(content, T)
    port = fleet.broker.port
    proxy = LinkProxy(port)
    proxy.delay_s = 0.15
    for sid in STATIONS:
        fleet.route(sid, proxy.port)
    fleet.start()
    wait_for(lambda: any(transferring(fleet, s) for s in STATIONS), 30, "a transfer under way")
    fleet.broker.stop(kill=True)
    killed_mid_transfer = [s for s in STATIONS if transferring(fleet, s)]
    t0 = time.monotonic()
    broker = fleet.broker.again(tmp_path / "broker-again").start()
    try:
        fleet.wait_active(1, 60)
        figures("F1 bundle+audio delivered after broker SIGKILL", time.monotonic() - t0, "s")
        fleet.pass_time(T)
        wait_for(lambda: len(fleet.playbacks()) == 3, 40, "three playbacks")
        for sid in STATIONS:
            [rec] = fleet.playbacks(sid)
            assert rec["outcome"] == "played"
            wait_for(lambda: all_reported(fleet, sid), 30, f"{sid} reported")
        assert len(fleet.playbacks()) == 3
        assert killed_mid_transfer, "the kill came too late to hit a transfer"
        figures("F1 stations cut mid-transfer by the broker kill", len(killed_mid_transfer),
                "stations")
        for sid in STATIONS:  # resumed, not restarted: little more than the file came down
            got = fleet.status(sid)["counters"]["audio.bytes_received"]
            assert got <= 1.05 * content["size"] + 4096, (got, content["size"])
        worst = max(fleet.status(s)["counters"]["audio.bytes_received"] for s in STATIONS)
        figures("F1 audio bytes received / audio size, worst station", worst / content["size"],
                "ratio", 1.05)
    finally:
        fleet.stop()
        broker.stop()
        proxy.close()


def test_broker_killed_during_report_flush(fleet, tmp_path, figures):
    many_missed(fleet)
    fleet.start()
    fleet.wait_active(1)
    fleet.broker.stop()
    fleet.pass_time(T + timedelta(minutes=N_ITEMS + 1))
    for sid in STATIONS:
        wait_for(lambda: fleet.station_db(sid, "SELECT count(*) FROM plays")[0][0] == N_ITEMS,
                 20, f"{sid} to record {N_ITEMS} missed")
    kills = 0
    brokers = []
    try:
        for _ in range(3):  # kill it again each time some, not all, reports are in
            b = fleet.broker.again(tmp_path / f"broker-{kills}").start()
            brokers.append(b)
            total = N_ITEMS * len(STATIONS)
            have = len(fleet.playbacks())
            wait_for(lambda: len(fleet.playbacks()) > have, 30, "some reports")
            if len(fleet.playbacks()) < total:
                b.stop(kill=True)
                kills += 1
        figures("F1 broker SIGKILLs during report flush", kills, "kills")
        if not brokers[-1].proc:
            brokers.append(fleet.broker.again(tmp_path / "broker-final").start())
        check_exactly_once(fleet)
        assert kills >= 1
    finally:
        fleet.stop()
        for b in brokers:
            b.stop()


def test_hub_killed_and_restarted_loses_no_acknowledged_report(tmp_path, mosquitto, figures):
    fleet = Fleet(tmp_path, mosquitto, STATIONS, start=T - timedelta(hours=1),
                  station={"station": {"report_batch": 2}})
    try:
        many_missed(fleet)
        fleet.start_hub_process()
        for sid in STATIONS:
            fleet.start_station(sid)
        fleet.wait_active(1)
        fleet.pass_time(T + timedelta(minutes=N_ITEMS + 1))
        kills = 0
        total = N_ITEMS * len(STATIONS)
        for _ in range(3):
            have = len(fleet.playbacks())
            wait_for(lambda: len(fleet.playbacks()) > have, 30, "reports arriving")
            if len(fleet.playbacks()) >= total:
                break
            os.kill(fleet.hub_proc.pid, signal.SIGKILL)
            fleet.hub_proc.wait()
            kills += 1
            fleet.start_hub_process()
        figures("F3 hub SIGKILLs during report ingestion", kills, "kills")
        check_exactly_once(fleet)
        assert kills >= 1
        # no acknowledged report lost: stations deleted only what the hub acknowledged, and
        # the hub holds every sequence number each station ever used
    finally:
        fleet.stop()
