"""The station's intake of programmes and audio (station_agent/intake.py) without a broker:
a real store, the real command book, an injected clock, and the link reduced to what it is
asked to send. Bad input is refused and leaves the store as it was."""
import hashlib
import os
from datetime import timedelta

import pytest

from protocol import chunks
from protocol.envelope import KeyRing, Reason, Refused, Signer, seal
from station_agent.intake import Intake
from station_agent.transfer import PROGRAMME_PUSH_GRACE_S, Transfers
from station_parts import Parts, parts_fixture

HUB = "hub:test"


class Station(Parts):
    def __init__(self, tmp, *, min_free_bytes=0):
        super().__init__(tmp)
        self.hub = Signer.generate(HUB)
        self.keys = KeyRing()
        self.keys.add(self.hub.public, HUB)
        self.asked: list[dict] = []
        self.connected = True
        self.transfers = Transfers(30.0)
        self.intake = Intake(station_id="s1", store=self.store, clock=self.clock,
                             transfers=self.transfers, commands=self.commands,
                             alarms=self.alarms,
                             keys=lambda: self.keys, connected=lambda: self.connected,
                             ask=self._ask, saw_hub=lambda t: None,
                             min_free_bytes=min_free_bytes)

    def _ask(self, body):
        self.asked.append(body)
        return True

    def bundle(self, version, audio: bytes, *, push=True, signer=None, station="s1"):
        sha = hashlib.sha256(audio).hexdigest()
        body = {"station": station, "version": version, "quiet_hours": None,
                "items": [{"id": "i1", "content": sha, "duration_ms": 1000, "priority": 1,
                           "start": "2030-01-01T02:00:00Z", "late_start_s": 60}],
                "content": {sha: {"size": len(audio), "push": push}}}
        return seal("bundle", body, signer=signer or self.hub, seq=version,
                    now=self.clock.now(), ttl=timedelta(days=1)), sha

    def state(self):
        """What the store holds, for comparing before and after a refusal."""
        return (self.store.held_bundle(), self.store.active_bundle(),
                self.store.missing_audio([]), sorted(os.listdir(self.store.audio_dir)))


st = pytest.fixture(parts_fixture(Station))


def test_a_pushed_programme_is_taken_whole_and_becomes_active(st):
    audio = os.urandom(40_000)
    raw, sha = st.bundle(1, audio)
    st.intake.on_bundle(raw)
    assert st.store.held_bundle()[0] == 1 and st.store.active_bundle() is None
    assert st.intake.receiving and st.asked == []  # pushed: not asked for
    st.intake.on_chunk(chunks.encode(sha, 0, len(audio), audio))
    assert st.store.has_audio(sha) and st.store.active_bundle()[0] == 1
    assert not st.intake.receiving
    # the same chunk again (a QoS 1 resend) is ignored, and counted
    st.intake.on_chunk(chunks.encode(sha, 0, len(audio), audio))
    assert st.store.counters()["ignored.chunk"] == 1


def test_a_push_that_stops_is_asked_for_from_where_it_stands(st):
    audio = os.urandom(3 * chunks.CHUNK_SIZE)
    raw, sha = st.bundle(1, audio)
    st.intake.on_bundle(raw)
    first = audio[:chunks.CHUNK_SIZE]
    st.intake.on_chunk(chunks.encode(sha, 0, len(audio), first))
    st.intake.request_audio()
    assert st.asked == []  # progressing: nothing asked
    st.clock.advance(st.transfers.retry_s + 1)
    st.intake.request_audio()
    assert st.asked == [{"sha": sha, "offset": len(first), "length": st.transfers.window}]
    # offline: nothing is asked (it would be lost), and the transfer waits
    st.connected = False
    st.clock.advance(st.transfers.retry_s + 1)
    st.intake.request_audio()
    assert len(st.asked) == 1


def test_a_programmes_push_is_given_its_grace_before_it_is_fetched(st):
    audio = os.urandom(1000)
    raw, sha = st.bundle(1, audio)
    st.intake.on_bundle(raw)
    st.clock.advance(PROGRAMME_PUSH_GRACE_S - 1)
    st.intake.request_audio()
    assert st.asked == []
    st.clock.advance(2)
    st.intake.request_audio()
    assert [a["offset"] for a in st.asked] == [0]


def test_forged_replayed_and_foreign_bundles_are_refused_and_change_nothing(st):
    audio = os.urandom(1000)
    raw, sha = st.bundle(2, audio)
    st.intake.on_bundle(raw)
    before = st.state()
    forger = Signer.generate(HUB)
    for bad, reason in (
            (st.bundle(3, audio, signer=forger)[0], Reason.UNKNOWN_KEY),
            (st.bundle(1, audio)[0], Reason.REPLAYED),                 # older version
            (st.bundle(2, os.urandom(10))[0], Reason.REPLAYED),        # same version, new body
            (st.bundle(3, audio, station="s2")[0], Reason.MALFORMED),  # another station's
            (raw[:-20], None),                                         # cut short
    ):
        with pytest.raises(Refused) as e:
            st.intake.on_bundle(bad)
        if reason is not None:
            assert e.value.reason == reason
        assert st.state() == before
    st.intake.on_bundle(raw)  # the same bundle again: nothing to do
    assert st.state() == before


def test_bad_audio_is_refused_and_nothing_is_kept(st):
    audio = os.urandom(5000)
    raw, sha = st.bundle(1, audio)
    st.intake.on_bundle(raw)
    # a chunk claiming another size than the signed programme states
    with pytest.raises(Refused) as e:
        st.intake.on_chunk(chunks.encode(sha, 0, len(audio) + 1000, audio[:2000]))
    assert e.value.reason == Reason.BAD_AUDIO
    assert st.store.part_size(sha) == 0
    # the whole file in one chunk, but other bytes than its name
    wrong = bytes(len(audio))
    with pytest.raises(Refused) as e:
        st.intake.on_chunk(chunks.encode(sha, 0, len(audio), wrong))
    assert e.value.reason == Reason.BAD_AUDIO
    assert not st.store.has_audio(sha) and st.store.part_size(sha) == 0
    # a chunk whose data do not match its own header's hash
    half = chunks.encode(sha, 0, len(audio), audio[:2000])
    corrupt = half[:-1] + bytes([half[-1] ^ 1])
    with pytest.raises(Refused):
        st.intake.on_chunk(corrupt)
    assert st.store.part_size(sha) == 0
    with pytest.raises(Refused):
        st.intake.on_chunk(b"not a chunk at all")
    # audio no programme or command names is not stored
    other = os.urandom(100)
    osha = hashlib.sha256(other).hexdigest()
    st.intake.on_chunk(chunks.encode(osha, 0, len(other), other))
    assert not st.store.has_audio(osha) and st.store.counters()["ignored.chunk_unwanted"] == 1
    # and the real file still lands afterwards
    st.intake.on_chunk(chunks.encode(sha, 0, len(audio), audio))
    assert st.store.has_audio(sha) and st.store.active_bundle()[0] == 1


def test_audio_that_would_eat_the_reserve_raises_disk_full_until_there_is_room(tmp_path):
    st = Station(tmp_path, min_free_bytes=1 << 62)  # more than any disk has
    audio = os.urandom(1000)
    raw, sha = st.bundle(1, audio)
    st.intake.on_bundle(raw)
    st.intake.on_chunk(chunks.encode(sha, 0, len(audio), audio))
    assert not st.store.has_audio(sha)
    assert st.store.counters()["ignored.chunk_disk_full"] == 1
    assert "disk_full" in st.alarms.held()
    st.clock.advance(PROGRAMME_PUSH_GRACE_S + 1)
    st.intake.request_audio()
    assert st.asked == []  # no room: not asked for either
    st.intake.min_free_bytes = 0
    st.clock.advance(1)
    st.intake.request_audio()
    assert "disk_full" not in st.alarms.held()
    assert [a["sha"] for a in st.asked] == [sha]
    st.close()
