"""Acceptance 2 and 3 of the skeleton: the whole path with a real broker and three agent
processes, then the same with the broker gone at the scheduled instant."""
from datetime import datetime, timedelta

import pytest

from audio_check import pcm
from conftest import wait_for
from deploy.broker import Mosquitto
from fleet import Fleet
from protocol.clock import parse_iso
from schedules import TZ

T = datetime(2030, 3, 2, 8, 0, tzinfo=TZ)  # the scheduled instant, reached by moving the clock
STATIONS = ["xa-a", "xa-b", "xa-c"]


@pytest.fixture
def fleet(tmp_path, mosquitto):
    f = Fleet(tmp_path, mosquitto, STATIONS, start=T - timedelta(hours=1))
    yield f
    f.stop()


def _ready(fleet):
    content = fleet.content("Thông báo của Ủy ban nhân dân xã về lịch tiêm chủng.")
    fleet.schedule(content, T)
    fleet.start()
    fleet.wait_active(1)  # bundle verified, audio fetched and verified on every station
    return content


def _check_played_on_time(fleet, content, sid):
    [rec] = fleet.playbacks(sid)
    assert rec["outcome"] == "played", rec
    assert parse_iso(rec["scheduled_at"]) == T
    started = parse_iso(rec["started_at"])
    assert timedelta(0) <= started - T < timedelta(seconds=2), rec
    [ev] = fleet.hub_events(sid, "playback")
    d = ev["data"]
    relay_on, pg = parse_iso(d["relay_on"]), parse_iso(d["power_good"])
    zones_on, zones_off = parse_iso(d["zones_on"]), parse_iso(d["zones_off"])
    ended = parse_iso(d["ended"])
    # relay closed first, the amplifier reported power-good after its warm-up, the speaker
    # zones opened after it and closed when the audio had ended (the amplifier is held on
    # for amp_hold_ms after, in case another item follows)
    assert relay_on <= pg <= zones_on <= ended and zones_off == ended
    assert pg - relay_on >= timedelta(milliseconds=250)
    played_ms = (ended - started).total_seconds() * 1000
    assert played_ms >= content["duration_ms"] - 200
    # what went out through ALSA is exactly the scheduled audio
    sink = fleet.station_dir(sid) / "sink.wav"
    assert pcm(sink) == pcm(fleet.store.content_path(content["sha"]))


def test_scheduled_item_plays_on_every_station_and_is_recorded_once(fleet):
    content = _ready(fleet)
    for sid in STATIONS:
        assert not (fleet.station_dir(sid) / "sink.wav").exists()
    fleet.pass_time(T)
    wait_for(lambda: len(fleet.playbacks()) == 3, 30, "three playback records at the hub")
    for sid in STATIONS:
        _check_played_on_time(fleet, content, sid)
        # the hub acknowledged every report, so the outbox drains
        wait_for(lambda: fleet.status(sid).get("outbox") == 0, 20, f"{sid} outbox to drain")
    assert len(fleet.playbacks()) == 3  # exactly once, after all the acknowledgements


def test_stations_play_on_time_without_the_broker_and_report_after(fleet, tmp_path):
    content = _ready(fleet)
    port = fleet.broker.port
    fleet.broker.stop()
    for sid in STATIONS:
        wait_for(lambda: fleet.status(sid).get("connected") is False, 20, f"{sid} offline")
    fleet.pass_time(T)
    for sid in STATIONS:
        wait_for(lambda: fleet.station_db(sid, "SELECT outcome FROM plays") == [("played",)],
                 30, f"{sid} to play offline")
    assert fleet.playbacks() == []  # nothing could reach the hub yet
    broker = Mosquitto(tmp_path / "broker2", port=port).start()
    try:
        wait_for(lambda: len(fleet.playbacks()) == 3, 40, "records after the broker returns")
        for sid in STATIONS:
            _check_played_on_time(fleet, content, sid)
            wait_for(lambda: fleet.status(sid).get("outbox") == 0, 20, f"{sid} outbox to drain")
        assert len(fleet.playbacks()) == 3
    finally:
        fleet.stop()
        broker.stop()


def test_a_programmes_new_audio_goes_out_once_for_all_stations_not_once_per_station(fleet):
    """Issue 13: the hub pushes a new file for an item for all once, on the shared topic,
    right after the bundles; the stations take it from there and do not fetch it each."""
    from protocol import chunks
    fleet.start()
    fleet.wait_online()
    fleet.wait_active(1)  # an empty programme, received on connecting (retained)
    content = fleet.content("Thông báo: ngày mai cắt điện từ 7 giờ đến 11 giờ.")
    fleet.schedule(content, T)
    fleet.wait_active(2)
    n = -(-content["size"] // chunks.PUSH_CHUNK_SIZE)
    assert fleet.hub.counters.get("audio.chunks_pushed") == n
    assert fleet.hub.counters.get("audio.chunks_sent", 0) == 0  # no station fetched its own
    for sid in STATIONS:
        held = fleet.station_dir(sid) / "data" / "audio" / f"{content['sha']}.opus"
        assert held.read_bytes() == fleet.store.content_path(content["sha"]).read_bytes()
