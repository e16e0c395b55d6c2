"""Acceptance 4: what a station refuses. Each refusal reaches the hub as an event, none
changes what the station plays, and the agent keeps running."""
import json
import zlib
from datetime import datetime, timedelta

import pytest

from audio_check import pcm
from conftest import wait_for
from fleet import Fleet
from protocol.envelope import MAX_MESSAGE_BYTES, ZLIB_MAGIC, Signer, canonical, pack, seal, unpack
from protocol.mqtt import MqttLink
from protocol.topics import Topics
from schedules import TZ

T = datetime(2030, 3, 2, 8, 0, tzinfo=TZ)
SID = "xa-a"


@pytest.fixture
def fleet(tmp_path, mosquitto):
    f = Fleet(tmp_path, mosquitto, [SID], start=T - timedelta(hours=1))
    yield f
    f.stop()


@pytest.fixture
def attacker(fleet):
    link = MqttLink(client_id="attacker", broker=fleet.cfg.broker, subscriptions=[])
    link.start()
    assert link.wait_connected(10)
    yield link
    link.stop()


def refusals(fleet):
    return [e["data"]["reason"] for e in fleet.hub_events(SID, "refused")]


def test_refused_messages_change_nothing_and_are_reported(fleet, attacker):
    first = fleet.content("Bản tin sáng.")
    fleet.schedule(first, T + timedelta(hours=5))
    fleet.start()
    fleet.wait_active(1)
    second = fleet.content("Thông báo lịch họp tổ dân phố.")
    fleet.schedule(second, T)
    fleet.wait_active(2)
    topic = Topics(fleet.cfg.prefix).bundle(SID)
    hub_key = Signer.load(fleet.cfg.key_path, "hub")
    good = json.loads(fleet.store.latest_bundle(SID)["raw"])

    def send(raw: bytes, reason: str) -> None:
        n = refusals(fleet).count(reason)
        assert attacker.publish_wait(topic, raw)
        wait_for(lambda: refusals(fleet).count(reason) == n + 1, 20, f"a {reason} refusal")

    # forged: a bundle v9 with the hub's key id but someone else's signature
    forged = json.loads(seal("bundle", {**good["body"], "version": 9},
                             signer=Signer.generate("hub"), seq=9, now=fleet.clock.now(),
                             ttl=timedelta(days=1)))
    forged["kid"] = hub_key.kid
    send(canonical(forged), "bad_signature")
    # expired: signed by the hub but long past its expiry
    send(seal("bundle", {**good["body"], "version": 10}, signer=hub_key, seq=10,
              now=fleet.clock.now() - timedelta(days=40), ttl=timedelta(days=1)), "expired")
    # replayed: the hub's own genuine version 1, after version 2 is active
    send(fleet.store.bundle_raw(SID, 1), "replayed")
    # malformed
    send(b'{"v": 1, "kind": "bundle", ', "malformed")
    # compressed (the station said it accepts zlib, so its programme 2 came compressed):
    # a stream that would inflate past the message limit is refused before it does, a cut
    # one is malformed, and a forged bundle is as forged compressed
    assert fleet.store.state(SID)["accepts"] == "zlib"
    retained: list[bytes] = []
    watch = MqttLink(client_id="watch", broker=fleet.cfg.broker, subscriptions=[topic],
                     on_inbound=lambda m: retained.append(m.payload))
    watch.start()
    wait_for(lambda: retained, 10, "the retained bundle")
    watch.stop()
    assert retained[0].startswith(ZLIB_MAGIC) and unpack(retained[0]) == \
        fleet.store.latest_bundle(SID)["raw"].encode()
    def counted(raw: bytes, reason: str) -> None:  # reported once per reason every few s
        def count() -> int:
            rows = fleet.station_db(SID, "SELECT value FROM meta WHERE key = ?",
                                    [f"count.refused.{reason}"])
            return int(rows[0][0]) if rows else 0
        n = count()
        assert attacker.publish_wait(topic, raw)
        wait_for(lambda: count() == n + 1, 20, f"a {reason} refusal counted")

    send(ZLIB_MAGIC + zlib.compress(b"{" + b" " * (MAX_MESSAGE_BYTES * 40) + b"}", 9),
         "oversize")
    counted(pack(fleet.store.latest_bundle(SID)["raw"].encode())[:-40], "malformed")
    counted(pack(canonical(forged)), "bad_signature")
    # audio whose bytes do not match its hash: corrupt the hub's stored file for new content
    third = fleet.content("Nội dung này sẽ bị hỏng trên đường truyền.")
    path = fleet.store.content_path(third["sha"])
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))
    fleet.schedule(third, T + timedelta(minutes=30))
    wait_for(lambda: "bad_audio" in refusals(fleet), 30, "a bad_audio refusal")
    wait_for(lambda: fleet.status(SID).get("pending_version") == 3, 5, "status to show v3")
    assert fleet.status(SID)["active_version"] == 2
    assert not (fleet.station_dir(SID) / "data" / "audio" / f"{third['sha']}.opus").exists()

    # still running, and still playing programme 2, unchanged
    assert fleet.procs[SID].poll() is None
    fleet.pass_time(T)
    wait_for(lambda: fleet.playbacks(SID), 30, "the playback of programme 2")
    [rec] = fleet.playbacks(SID)
    assert rec["outcome"] == "played" and rec["content_sha"] == second["sha"]
    assert pcm(fleet.station_dir(SID) / "sink.wav") == pcm(fleet.store.content_path(second["sha"]))
    counts = dict(fleet.station_db(SID, "SELECT key, value FROM meta WHERE key LIKE 'count.%'"))
    for reason in ("bad_signature", "expired", "replayed", "malformed", "bad_audio", "oversize"):
        assert int(counts[f"count.refused.{reason}"]) >= 1


def test_hub_refuses_reports_from_unknown_or_forged_stations(fleet, attacker):
    fleet.start()
    topics = Topics(fleet.cfg.prefix)
    mallory = Signer.generate(f"station:{SID}")
    raw = seal("report", {"events": [{"seq": 1, "kind": "playback", "at": "2030-03-02T01:00:00.000Z",
                                      "data": {"outcome": "played"}}]},
               signer=mallory, seq=1, now=fleet.clock.now(), ttl=timedelta(hours=1))
    assert attacker.publish_wait(topics.events(SID), raw)
    assert attacker.publish_wait(topics.events("xa-khong-co"), raw)
    assert attacker.publish_wait(topics.events(SID), b"\x00garbage")
    wait_for(lambda: len(fleet.store.q("SELECT * FROM refusals")) >= 3, 20, "hub refusals")
    reasons = sorted(r["reason"] for r in fleet.store.q("SELECT reason FROM refusals"))
    assert reasons == ["malformed", "unknown_key", "unknown_key"]
    assert fleet.playbacks() == []
