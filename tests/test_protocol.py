import json
from datetime import datetime, timedelta, timezone

import pytest

from protocol import chunks
from protocol.envelope import (
    MAX_MESSAGE_BYTES, KeyRing, Reason, Refused, Signer, canonical, public_from_text,
    public_to_text, seal, verify,
)
from protocol.topics import BadIdentifier, Topics

NOW = datetime(2026, 11, 24, 3, 0, tzinfo=timezone.utc)


@pytest.fixture
def hub():
    return Signer.generate("hub")


@pytest.fixture
def ring(hub):
    r = KeyRing()
    r.add(hub.public, "hub")
    return r


def sealed(hub, body=None, *, seq=1, now=NOW, ttl=timedelta(hours=1), kind="bundle"):
    return seal(kind, body or {"station": "A", "note": "Thông báo khẩn cấp"}, signer=hub,
                seq=seq, now=now, ttl=ttl)


def refused(raw, ring, **kw) -> Reason:
    with pytest.raises(Refused) as exc:
        verify(raw, ring, now=kw.pop("now", NOW), **kw)
    return exc.value.reason


def test_round_trip_keeps_vietnamese_text(hub, ring):
    env = verify(sealed(hub), ring, now=NOW, kind="bundle", min_seq=1)
    assert env.body["note"] == "Thông báo khẩn cấp"
    assert env.sender == "hub" and env.seq == 1 and env.kid == hub.kid


def test_canonical_encoding_is_sorted_compact_utf8():
    assert canonical({"b": 1, "a": "ệ"}) == '{"a":"ệ","b":1}'.encode("utf-8")


def test_forged_signature(hub, ring):
    doc = json.loads(sealed(hub))
    doc["body"]["note"] = "Nội dung giả mạo"
    assert refused(canonical(doc), ring) is Reason.BAD_SIGNATURE


def test_a_message_as_sealed_is_checked_over_its_own_bytes_not_encoded_again(hub, ring,
                                                                              monkeypatch):
    from protocol import envelope
    raw = sealed(hub, {"station": "A", "items": [{"n": i, "t": "Tiếng \"Việt\""}
                                                for i in range(50)]})

    def not_again(obj):
        raise AssertionError("encoded again")
    monkeypatch.setattr(envelope, "canonical", not_again)
    assert verify(raw, ring, now=NOW).body["items"][49]["t"] == 'Tiếng "Việt"'


def test_a_message_laid_out_otherwise_still_verifies_by_its_canonical_form(hub, ring):
    raw = json.dumps(json.loads(sealed(hub)), indent=1, ensure_ascii=True).encode()
    assert verify(raw, ring, now=NOW).body["note"] == "Thông báo khẩn cấp"


def test_a_second_sig_member_in_the_body_does_not_make_a_forgery_pass(hub, ring):
    """The signed bytes are found by cutting the last ``,"sig":"…"`` out: a body that carries
    one too is a changed body, refused."""
    doc = json.loads(sealed(hub))
    doc["body"]["z"] = {"a": 1, "sig": doc["sig"]}
    raw = canonical(doc)
    assert raw.count(b',"sig":"' + doc["sig"].encode() + b'"') == 2
    assert refused(raw, ring) is Reason.BAD_SIGNATURE
    doc = json.loads(sealed(hub))
    tampered = canonical(doc).replace(b'"v":1', b'"v":1,"sig2":0')  # an added member
    assert refused(tampered, ring) is Reason.MALFORMED


def test_signed_by_another_key_claiming_the_hubs_id(hub, ring):
    mallory = Signer.generate("hub")
    doc = json.loads(sealed(mallory))
    doc["kid"] = hub.kid
    assert refused(canonical(doc), ring) is Reason.BAD_SIGNATURE


def test_unknown_key(ring):
    assert refused(sealed(Signer.generate("hub")), ring) is Reason.UNKNOWN_KEY


def test_expired(hub, ring):
    raw = sealed(hub, now=NOW - timedelta(days=2), ttl=timedelta(days=1))
    assert refused(raw, ring) is Reason.EXPIRED


def test_replayed_older_sequence(hub, ring):
    assert refused(sealed(hub, seq=3), ring, min_seq=4) is Reason.REPLAYED


@pytest.mark.parametrize("raw", [
    b"{not json", b"[]", b"\xff\xfe", b'{"v":1}', b"",
    b'{"v":1,"v":1,"id":"x","kind":"k","sender":"s","kid":"k","iat":"","exp":"","seq":1,'
    b'"body":{},"sig":""}',
])
def test_malformed(raw, ring):
    assert refused(raw, ring) is Reason.MALFORMED


def test_floats_are_refused_on_both_sides(hub, ring):
    with pytest.raises(TypeError):
        sealed(hub, {"volume": 0.5})
    doc = json.loads(sealed(hub))
    text = canonical(doc).replace(b'"seq":1', b'"seq":1.0')
    assert refused(text, ring) is Reason.MALFORMED


def test_wrong_schema_version(hub, ring):
    doc = json.loads(sealed(hub))
    doc["v"] = 2
    assert refused(canonical(doc), ring) is Reason.UNSUPPORTED_VERSION


def test_oversize(ring):
    assert refused(b"x" * (MAX_MESSAGE_BYTES + 1), ring) is Reason.OVERSIZE


def test_sender_is_bound_to_its_key(hub, ring):
    other = Signer(hub.private, "station:A")
    assert refused(sealed(other), ring) is Reason.WRONG_SENDER
    assert refused(sealed(hub), ring, kind="ack") is Reason.WRONG_KIND


def test_public_key_text_round_trip(hub):
    assert public_from_text(public_to_text(hub.public)).public_bytes_raw() == \
        hub.public.public_bytes_raw()
    with pytest.raises(ValueError):
        public_from_text("not-a-key")


def test_private_key_file_is_owner_only_and_not_in_repr(tmp_path, hub):
    hub.save(tmp_path / "hub.key")
    assert (tmp_path / "hub.key").stat().st_mode & 0o077 == 0
    assert Signer.load(tmp_path / "hub.key", "hub").kid == hub.kid
    assert "PRIVATE" not in repr(hub)


def test_chunks_round_trip_and_corruption():
    blob = bytes(range(256)) * 700
    sha = __import__("hashlib").sha256(blob).hexdigest()
    size = chunks.CHUNK_SIZE
    parts = [chunks.decode(chunks.encode(sha, off, len(blob), blob[off:off + size]))
             for off in range(0, len(blob), size)]
    assert b"".join(p.data for p in parts) == blob and parts[-1].total == len(blob)
    raw = bytearray(chunks.encode(sha, 0, len(blob), blob[:size]))
    raw[-1] ^= 0xFF
    with pytest.raises(Refused) as exc:
        chunks.decode(bytes(raw))
    assert exc.value.reason is Reason.BAD_AUDIO
    short = b"LXA2" + bytes(40)
    lying = chunks.HEADER.pack(b"LXA2", bytes(32), 10, 5, bytes(32)) + b"x"
    for bad in (b"", b"LXA2", b"XXXX" + bytes(100), short, lying):
        with pytest.raises(Refused):
            chunks.decode(bad)


def test_topics_refuse_wildcards():
    t = Topics("loaxa")
    assert t.bundle("xa-1") == "loaxa/station/xa-1/bundle"
    assert t.parse_station_topic("loaxa/station/xa-1/events") == ("xa-1", "events")
    assert t.parse_station_topic("loaxa/station/a/b/events") is None
    for bad in ("+", "#", "a/b", "", "x" * 65):
        with pytest.raises(BadIdentifier):
            t.bundle(bad)


def test_hub_key_rotation_chain_forgery_and_replay():
    """protocol/hubkeys.py: a station that trusts only the first key follows two rotations;
    a forged endorsement, an older announcement and a malformed chain are refused."""
    from datetime import datetime, timezone

    from protocol import hubkeys
    from protocol.envelope import KeyRing, Reason, Refused, Signer
    now = datetime(2030, 1, 1, tzinfo=timezone.utc)
    k1, k2, k3 = (Signer.generate("hub") for _ in range(3))
    ring = KeyRing()
    ring.add(k1.public, "hub")
    chain = [hubkeys.endorse(k1, k2), hubkeys.endorse(k2, k3)]
    raw = hubkeys.announce(chain, [], signer=k3, seq=2, now=now)
    env, new = hubkeys.accept(raw, ring, "hub", min_seq=1)
    assert set(new.kids()) == {k1.kid, k2.kid, k3.kid} and env.kid == k3.kid
    retire = hubkeys.announce(chain, [k1.kid, k2.kid], signer=k3, seq=3, now=now)
    _, after = hubkeys.accept(retire, new, "hub", min_seq=3)
    assert after.kids() == [k3.kid]
    with pytest.raises(Refused) as e:  # the older announcement once a newer one is held
        hubkeys.accept(raw, after, "hub", min_seq=4)
    assert e.value.reason == Reason.REPLAYED
    mallory = Signer.generate("hub")
    forged = [{**hubkeys.endorse(mallory, k2), "by": k1.kid}]  # claims k1 endorsed it
    with pytest.raises(Refused) as e:
        hubkeys.accept(hubkeys.announce(forged, [], signer=k2, seq=5, now=now), ring, "hub",
                       min_seq=1)
    assert e.value.reason == Reason.BAD_SIGNATURE
    with pytest.raises(Refused) as e:  # a key endorsed by nothing this station trusts
        hubkeys.accept(hubkeys.announce([hubkeys.endorse(mallory, k2)], [], signer=k2, seq=5,
                                        now=now), ring, "hub", min_seq=1)
    assert e.value.reason == Reason.UNKNOWN_KEY
    with pytest.raises(Refused) as e:
        hubkeys.accept(hubkeys.announce("x", [], signer=k2, seq=5, now=now), ring, "hub",
                       min_seq=1)
    assert e.value.reason == Reason.MALFORMED
    assert ring.kids() == [k1.kid]  # nothing refused changed what the station trusts


def _handshake_error(answer: bytes | None) -> BaseException:
    """What a TLS client really gets from a peer that closes at once (``None``) or answers
    ``answer`` in plain bytes, on a loopback socket."""
    import socket
    import ssl
    import threading
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(1)

    def peer() -> None:
        conn, _ = server.accept()
        conn.recv(4096)
        if answer is not None:
            conn.sendall(answer)
        conn.close()
    t = threading.Thread(target=peer, daemon=True)
    t.start()
    ctx = ssl.create_default_context()
    ctx.check_hostname, ctx.verify_mode = False, ssl.CERT_NONE
    try:
        with socket.create_connection(server.getsockname(), timeout=5) as raw, \
                ctx.wrap_socket(raw) as tls:
            tls.recv(1)
    except (ssl.SSLError, OSError) as exc:
        return exc
    finally:
        t.join(5)
        server.close()
    raise AssertionError("the handshake succeeded")


def test_a_link_that_drops_mid_handshake_is_not_called_a_refused_certificate():
    """A link cut during the TLS handshake raised `certificate_refused` at once (seen when a
    proxy cut the link): an alarm naming the wrong fix. It is the link; a plain-MQTT port is
    still named as such."""
    from protocol.mqtt import explain_socket_error
    cut = explain_socket_error(_handshake_error(None), tls=True)
    assert cut.cause == "unreachable" and "handshake" in cut.detail, cut
    plain = explain_socket_error(_handshake_error(b"\x20\x02\x00\x00" * 4), tls=True)
    assert plain.cause == "tls_unexpected", plain
