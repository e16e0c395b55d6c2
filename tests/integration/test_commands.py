"""Issue 9, signed commands with a real mosquitto and agent processes: play now, stop while
playing, cancel, volume, the refusals, and khẩn cấp on a station whose clock is wrong."""
from __future__ import annotations

import json
import subprocess
import sys
from datetime import datetime, timedelta

import pytest

from audio_check import pcm
from conftest import ROOT, wait_for
from fleet import LONG, Fleet
from hub.admin import cancel_item, command_progress, play_body
from protocol.clock import parse_iso
from protocol.envelope import Signer, seal
from protocol.mqtt import MqttLink
from protocol.topics import Topics
from schedules import TZ, Priority

T = datetime(2030, 3, 2, 8, 0, tzinfo=TZ)


@pytest.fixture
def fleet(tmp_path, mosquitto):
    f = Fleet(tmp_path, mosquitto, ["xa-a", "xa-b"], start=T,
              station={"hardware": {"amp_hold_ms": 0}})
    yield f
    f.stop()


def command_events(fleet, sid, cid):
    return [e["data"] for e in fleet.hub_events(sid, "command") if e["data"]["id"] == cid]


def sink_seconds(fleet, sid) -> float:
    """How much sound went out: the sink's data (mono 48 kHz 16-bit, after its 44-byte
    header), by size, so a header the player had no time to finish does not matter."""
    sink = fleet.station_dir(sid) / "sink.wav"
    if not sink.exists():  # stopped before the player had opened the device: nothing went out
        return 0.0
    return (sink.stat().st_size - 44) / (48000 * 2)


def test_play_now_reaches_every_station_and_is_reported_step_by_step(fleet):
    fleet.start()
    fleet.wait_online()
    c = fleet.content("Thông báo khẩn: nước lên nhanh.")  # the stations do not hold it yet
    cid = fleet.give("play", "all", play_body(c, priority=Priority.KHAN_CAP))
    for sid in fleet.ids:
        wait_for(lambda: fleet.command_states(cid)[sid] == "done", 40, f"{sid} done")
        assert [e["state"] for e in command_events(fleet, sid, cid)] == \
            ["accepted", "started", "done"]
        [rec] = fleet.playbacks(sid)
        assert rec["outcome"] == "played" and rec["item_id"] == f"cmd-{cid}-0"
        assert pcm(fleet.station_dir(sid) / "sink.wav") == pcm(fleet.store.content_path(c["sha"]))
    p = command_progress(fleet.store, cid, fleet.clock.now())
    assert p["started"] == p["total"] == 2 and p["settled"]
    # both reported holding the file: the same alert again is the command alone
    pushed = fleet.hub.counters.get("audio.chunks_pushed", 0)
    assert pushed >= 1
    again = fleet.give("play", "all", play_body(c, priority=Priority.KHAN_CAP))
    for sid in fleet.ids:
        wait_for(lambda: fleet.command_states(again)[sid] == "done", 40, f"{sid} done again")
    assert fleet.hub.counters.get("audio.push_not_needed") == 1
    assert fleet.hub.counters.get("audio.chunks_pushed", 0) == pushed
    assert fleet.hub.counters.get("audio.chunks_sent", 0) == 0  # and nobody fetched it


def test_stop_while_playing_cuts_the_sound_within_100_ms(fleet):
    fleet.start()
    fleet.wait_online()
    c = fleet.content(LONG)
    assert c["duration_ms"] > 8000
    cid = fleet.give("play", "station:xa-a", play_body(c, priority=Priority.UU_TIEN))
    wait_for(lambda: fleet.status("xa-a").get("playing"), 40, "playing")
    stop = fleet.give("stop", "station:xa-a", {"scope": "current"})
    wait_for(lambda: fleet.command_states(stop)["xa-a"] == "done", 20, "the stop done")
    wait_for(lambda: fleet.command_states(cid)["xa-a"] == "failed", 20, "the play recorded stopped")
    [rec] = fleet.playbacks("xa-a")
    assert rec["outcome"] == "stopped" and stop in rec["detail"]
    [accepted] = [e for e in fleet.hub_events("xa-a", "command")
                  if e["data"]["id"] == stop and e["data"]["state"] == "accepted"]
    # what went out: from the play's start to the stop's arrival, and at most 100 ms more
    played = sink_seconds(fleet, "xa-a")
    window = (parse_iso(accepted["at"]) - parse_iso(rec["started_at"])).total_seconds()
    assert played <= window + 0.1, (played, window)
    assert played < c["duration_ms"] / 1000 - 2


def test_cancel_takes_the_item_out_of_every_bundle_and_stops_it_where_on_air(fleet):
    c = fleet.content(LONG)
    item = fleet.schedule(c, T + timedelta(minutes=1), late_start_s=600)
    fleet.start_hub()
    fleet.start_station("xa-a")  # xa-b is offline through the cancel
    fleet.wait_active(1, ids=["xa-a"])
    fleet.pass_time(T + timedelta(minutes=1))
    wait_for(lambda: fleet.status("xa-a").get("playing"), 30, "on air at xa-a")
    _, cmd = cancel_item(fleet.cfg, fleet.store, item, now=fleet.clock.now())
    wait_for(lambda: fleet.playbacks("xa-a"), 20, "xa-a's record")
    assert fleet.playbacks("xa-a")[0]["outcome"] == "stopped"
    wait_for(lambda: fleet.status("xa-a").get("active_version") == 2, 20, "the new bundle")
    assert item not in json.dumps(json.loads(fleet.store.latest_bundle("xa-b")["raw"])["body"])
    # the offline station returns inside the item's window: it never plays it
    fleet.start_station("xa-b")
    wait_for(lambda: fleet.status("xa-b").get("active_version") == 2, 30, "xa-b up to date")
    fleet.pass_time(T + timedelta(minutes=5))
    wait_for(lambda: fleet.status("xa-b").get("outbox") == 0, 20, "xa-b reported")
    assert fleet.playbacks("xa-b") == []
    assert command_progress(fleet.store, cmd["id"], fleet.clock.now())["counts"].get("done")


def test_volume_is_applied_and_remembered_across_a_restart(fleet):
    fleet.start()
    fleet.wait_online()
    cid = fleet.give("volume", "group:g1", {"level": 40})
    for sid in fleet.ids:
        wait_for(lambda: fleet.command_states(cid)[sid] == "done", 20, f"{sid} volume")
        wait_for(lambda: fleet.status(sid).get("volume") == 40, 20, "applied")
    fleet.procs["xa-a"].terminate()
    fleet.procs["xa-a"].wait(10)
    fleet.start_station("xa-a")
    wait_for(lambda: fleet.status("xa-a").get("pid") == fleet.procs["xa-a"].pid, 20, "restarted")
    assert fleet.status("xa-a")["volume"] == 40


def test_refused_commands_change_nothing_and_are_reported(fleet):
    fleet.start()
    fleet.wait_online()
    c = fleet.content("Xin chào.")
    t = Topics()
    attacker = MqttLink(client_id="attacker", broker=fleet.cfg.broker, subscriptions=[])
    attacker.start()
    assert attacker.wait_connected(10)

    def refused(sid, reason):
        return fleet.status(sid).get("counters", {}).get(f"refused.{reason}", 0)

    def send(topic, raw, sid, reason):
        n = refused(sid, reason)
        assert attacker.publish_wait(topic, raw)
        wait_for(lambda: refused(sid, reason) == n + 1, 20, f"{sid}: a {reason} refusal")

    body = {"id": "forged1", "target": "station:xa-a", "action": "play",
            **play_body(c, priority=Priority.KHAN_CAP)}
    now = fleet.clock.now()
    send(t.command("xa-a"), seal("command", body, signer=Signer.generate("hub"), seq=99,
                                 now=now, ttl=timedelta(minutes=5)), "xa-a", "unknown_key")
    # a genuine command with its body changed on the way
    genuine = json.loads(fleet.store.command(fleet.give("volume", "station:xa-b",
                                                  {"level": 20}))["raw"])
    genuine["body"].update(target="station:xa-a", level=100)
    send(t.command("xa-a"), json.dumps(genuine).encode(), "xa-a", "bad_signature")
    send(t.command("xa-a"), b"{not json", "xa-a", "malformed")
    send(t.command("xa-a"), b"x" * 300_000, "xa-a", "oversize")
    # for station B, moved onto A's topic: refused by A, reported under its id
    cid_b = fleet.give("volume", "station:xa-b", {"level": 10})
    raw_b = fleet.store.command(cid_b)["raw"].encode()
    send(t.command("xa-a"), raw_b, "xa-a", "wrong_station")
    # expired: signed by the hub, but its time has passed
    hub = Signer.load(fleet.cfg.key_path, "hub")
    old = seal("command", {**body, "id": "late1"}, signer=hub, seq=1000, now=now - timedelta(
        minutes=10), ttl=timedelta(minutes=5))
    send(t.command("xa-a"), old, "xa-a", "expired")
    # replayed: a genuine command of a stream, then one with an older sequence
    cid = fleet.give("volume", "station:xa-a", {"level": 70})
    wait_for(lambda: fleet.command_states(cid)["xa-a"] == "done", 20, "a genuine command")
    stale = seal("command", {**body, "id": "stale1"}, signer=hub, seq=1, now=now,
                 ttl=timedelta(minutes=5))
    send(t.command("xa-a"), stale, "xa-a", "replayed")
    # the genuine one again (a redelivery): executed once only
    assert attacker.publish_wait(t.command("xa-a"), fleet.store.command(cid)["raw"].encode())
    wait_for(lambda: fleet.status("xa-a").get("counters", {}).get(
        "ignored.command_again") == 1, 20, "the repeat ignored")
    attacker.stop()
    assert fleet.playbacks("xa-a") == []  # nothing went on air
    assert fleet.status("xa-a")["volume"] == 70
    assert [e["state"] for e in command_events(fleet, "xa-a", cid)] == ["accepted", "done"]
    wait_for(lambda: {"expired", "replayed"} <= {
        e["data"].get("reason") for e in fleet.hub_events("xa-a", "command")}, 20,
        "refusals reported under their ids")
    assert fleet.procs["xa-a"].poll() is None  # still running


def test_khan_cap_command_plays_on_a_station_whose_clock_is_wrong(fleet):
    fleet.start()
    fleet.wait_online()
    for sid in fleet.ids:
        wait_for(lambda: fleet.status(sid).get("outbox") == 0, 20, "settled")
    c = fleet.content("Báo động lũ quét.")
    fleet.step_clock("xa-a", datetime(1970, 1, 1, tzinfo=TZ))  # a Pi that lost its clock
    wait_for(lambda: fleet.status("xa-a").get("clock_trusted") is False, 20, "untrusted")
    cid = fleet.give("play", "all", play_body(c, priority=Priority.KHAN_CAP))
    wait_for(lambda: fleet.command_states(cid)["xa-a"] == "done", 40, "played despite the clock")
    assert fleet.playbacks("xa-a")[0]["outcome"] == "played"
    # the same command again, and an expired one: refused even so (hub time, sequence)
    hub = Signer.load(fleet.cfg.key_path, "hub")
    body = json.loads(fleet.store.command(cid)["body"])
    old = seal("command", {**body, "id": "late2", "target": "station:xa-a"}, signer=hub,
               seq=1000, now=fleet.clock.now() - timedelta(minutes=10), ttl=timedelta(minutes=5))
    link = MqttLink(client_id="replayer", broker=fleet.cfg.broker, subscriptions=[])
    link.start()
    assert link.wait_connected(10) and link.publish_wait(Topics().command("xa-a"), old)
    wait_for(lambda: fleet.status("xa-a").get("counters", {}).get("refused.expired"), 20,
             "the expired command refused by hub time")
    link.stop()
    assert len(fleet.playbacks("xa-a")) == 1


def test_alert_from_the_cli_shows_progress_and_ends_with_every_station(tmp_path, mosquitto):
    f = Fleet(tmp_path, mosquitto, ["xa-a", "xa-b", "xa-c"], start=T)
    try:
        f.start_hub_process()
        for sid in f.ids:
            f.start_station(sid)
        for sid in f.ids:
            wait_for(lambda: (f.store.state(sid) or {}).get("online") == 1, 30, f"{sid} online")
        out = subprocess.run(
            [sys.executable, "-m", "deploy.cli", "hub", "--home", str(f.home), "alert",
             "--text", "Bão số ba sắp đổ bộ, bà con khẩn trương sơ tán.", "--tts", "espeak-ng",
             "--to", "all", "--wait", "90"], capture_output=True, text=True, cwd=ROOT,
            timeout=150)
        assert out.returncode == 0, out.stdout + out.stderr
        lines = out.stdout.splitlines()
        assert any(ln.startswith("Đã gửi lúc") for ln in lines), out.stdout
        assert lines[-1].startswith("đã phát 3/3 trạm"), out.stdout
        assert len([ln for ln in lines if ln.startswith("đã phát")]) >= 2  # live, not one shot
    finally:
        f.stop()
