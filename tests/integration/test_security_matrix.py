"""Issue 12's security matrix, against mosquitto running the production configuration
(deploy/mosquitto/hub.conf and loaxa.acl on Debian's stock mosquitto.conf, TLS with client
certificates from the hub's CA). Each row names the threat it answers; the test prints the
matrix, and docs/security.md carries the same rows.

MQTT v5 reason codes are read from the broker's own answers: PUBACK for a QoS 1 publish,
SUBACK for a subscription, CONNACK (or the connection closed) for a client."""
from __future__ import annotations

import ssl
import threading
import time
import uuid

import paho.mqtt.client as paho
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from deploy.mosquitto_conf import HUB_CN
from deploy.pki import make_ca
from production_broker import ProductionBroker

NOT_AUTHORISED = 0x87
ACCEPTED = (0x00, 0x10)  # success, or success with no matching subscribers
ROWS: list[tuple[str, str, str]] = []  # (what is tried, what the broker did, threat answered)


class Client:
    """A raw paho v5 client that keeps the broker's answers (no retries, no reconnects)."""

    def __init__(self, port: int, *, cert=None, ca=None, tls: bool = True,
                 cid: str | None = None) -> None:
        self.c = paho.Client(CallbackAPIVersion.VERSION2, client_id=cid or uuid.uuid4().hex,
                             protocol=paho.MQTTv5)
        if tls:
            ctx = ssl.create_default_context(cafile=str(ca))
            if cert is not None:
                ctx.load_cert_chain(str(cert.cert), str(cert.key))
            self.c.tls_set_context(ctx)
        self.connack: int | None = None
        self.closed = threading.Event()
        self.ready = threading.Event()
        self.acks: dict[int, int] = {}
        self.subacks: dict[int, list[int]] = {}
        self.got: list[tuple[str, bytes, bool]] = []
        self.c.on_connect = self._on_connect
        self.disconnect_rc: int | None = None
        self.c.on_disconnect = self._on_disconnect
        self.c.on_publish = lambda c, u, mid, rc, p: self.acks.__setitem__(mid, rc.value)
        self.c.on_subscribe = lambda c, u, mid, rcs, p: self.subacks.__setitem__(
            mid, [r.value for r in rcs])
        self.c.on_message = lambda c, u, m: self.got.append((m.topic, m.payload, m.retain))
        self.port = port

    def _on_disconnect(self, client, userdata, flags, rc, props) -> None:
        self.disconnect_rc = rc.value
        self.ready.clear()
        self.closed.set()

    def _on_connect(self, client, userdata, flags, rc, props) -> None:
        self.connack = rc.value
        if not rc.is_failure:
            self.ready.set()

    def connect(self, timeout: float = 10.0) -> bool:
        try:
            self.c.connect("127.0.0.1", self.port, keepalive=30)
        except (ssl.SSLError, OSError):
            return False
        self.c.loop_start()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.ready.is_set():
                return True
            if self.closed.is_set() or (self.connack is not None and self.connack >= 0x80):
                return False
            time.sleep(0.02)
        return False

    def publish(self, topic: str, payload: bytes, *, retain: bool = False) -> int | None:
        """The PUBACK's reason code (0x00, or 0x10 when nobody subscribes, = accepted; 0x80
        and above = refused), None if none came."""
        info = self.c.publish(topic, payload, qos=1, retain=retain)
        deadline = time.monotonic() + 5
        while info.mid not in self.acks and time.monotonic() < deadline:
            time.sleep(0.01)
        return self.acks.get(info.mid)

    def subscribe(self, topic: str) -> list[int] | None:
        _, mid = self.c.subscribe(topic, qos=1)
        deadline = time.monotonic() + 5
        while mid not in self.subacks and time.monotonic() < deadline:
            time.sleep(0.01)
        return self.subacks.get(mid)

    def close(self) -> None:
        self.c.disconnect()
        self.c.loop_stop()


@pytest.fixture(scope="module")
def prod(tmp_path_factory):
    b = ProductionBroker(tmp_path_factory.mktemp("prod")).start()
    yield b
    b.close()
    print("\nSecurity matrix (mosquitto, production configuration):")
    w0 = max((len(r[0]) for r in ROWS), default=0)
    w1 = max((len(r[1]) for r in ROWS), default=0)
    for tried, result, threat in ROWS:
        print(f"  {tried:<{w0}}  {result:<{w1}}  {threat}")


def _connect(prod, cn: str) -> Client:
    c = Client(prod.port, cert=prod.client(cn), ca=prod.ca.cert)
    assert c.connect(), f"{cn} could not connect (CONNACK {c.connack})"
    return c


def row(tried: str, result: str, threat: str) -> None:
    ROWS.append((tried, result, threat))


def test_no_certificate_is_refused(prod):
    c = Client(prod.port, ca=prod.ca.cert)
    assert not c.connect(), "a client without a certificate was let in"
    c.close()
    row("connect without a client certificate", "refused (TLS handshake)",
        "anonymous control of the speakers")


def test_plain_tcp_is_refused(prod):
    c = Client(prod.port, tls=False)
    assert not c.connect(timeout=5), "plain MQTT was let in"
    c.close()
    row("connect over plain TCP", "refused (no TLS, no CONNACK)",
        "eavesdropping, forging on the wire")


def test_a_certificate_from_another_ca_is_refused(prod, tmp_path):
    stranger = prod.client("xa-a", ca=make_ca(tmp_path / "stranger"))
    c = Client(prod.port, cert=stranger, ca=prod.ca.cert)
    assert not c.connect(), "a certificate from another CA was let in"
    c.close()
    row("connect with another CA's certificate", "refused (TLS handshake)",
        "a home-made certificate for a real station id")


def test_a_revoked_certificate_is_refused(prod, tmp_path):
    """The CA's revocation list (what `loaxa hub station revoke` writes), reloaded by the
    broker on SIGHUP: the revoked certificate is refused, the others still get in."""
    import time
    from datetime import datetime, timezone
    from deploy.pki import serial_of, write_crl
    gone = prod.client("xa-revoked")
    c = Client(prod.port, cert=gone, ca=prod.ca.cert)
    assert c.connect(), "the certificate was refused before its revocation"
    c.close()
    crl = write_crl(prod.ca, tmp_path / "crl.pem",
                    [(serial_of(gone.cert), datetime.now(timezone.utc))])
    prod.install_crl(crl)
    deadline = time.monotonic() + 10
    while True:  # the reload is asynchronous to the signal
        c = Client(prod.port, cert=gone, ca=prod.ca.cert)
        ok = c.connect()
        c.close()
        if not ok:
            break
        assert time.monotonic() < deadline, "the revoked certificate is still let in"
        time.sleep(0.2)
    _connect(prod, "xa-a").close()
    row("connect with a revoked station's certificate", "refused (TLS handshake, CRL)",
        "a stolen or decommissioned station box")


def test_a_station_cannot_write_as_another_station_or_the_hub(prod):
    hub = _connect(prod, HUB_CN)
    a = _connect(prod, "xa-a")
    try:
        # B's retained birth and the hub's bundle for B, as they are before A tries
        assert hub.publish("loaxa/station/xa-b/state", b"b-birth", retain=True) in ACCEPTED
        assert hub.publish("loaxa/station/xa-b/bundle", b"b-bundle", retain=True) in ACCEPTED
        assert hub.publish("loaxa/hub/state", b"hub-online", retain=True) in ACCEPTED
        for leaf in ("state", "events", "health", "fetch"):
            rc = a.publish(f"loaxa/station/xa-b/{leaf}", b"forged", retain=leaf == "state")
            assert rc == NOT_AUTHORISED, (leaf, rc)
        row("station A publishes on B's state/events/health/fetch",
            f"PUBACK 0x{NOT_AUTHORISED:02X} not authorised", "one station speaking for another")
        for topic in ("loaxa/station/xa-a/bundle", "loaxa/station/xa-b/bundle",
                      "loaxa/all/cmd", "loaxa/group/g1/cmd", "loaxa/station/xa-b/cmd",
                      "loaxa/all/audio", "loaxa/station/xa-a/ack", "loaxa/hub/state",
                      "loaxa/hub/key"):
            rc = a.publish(topic, b"forged", retain=True)
            assert rc == NOT_AUTHORISED, (topic, rc)
        row("station A publishes as the hub (bundles, commands, audio, acks, hub state, "
            "key rotation)",
            f"PUBACK 0x{NOT_AUTHORISED:02X} not authorised", "a captured station taking the fleet")
        # nothing A tried changed what a newcomer reads
        probe = _connect(prod, HUB_CN)
        try:
            assert probe.subscribe("loaxa/station/xa-b/#") == [1]
            assert probe.subscribe("loaxa/hub/state") == [1]
            time.sleep(0.5)  # retained messages arrive right after the SUBACK
            retained = {t: p for t, p, r in probe.got if r}
            assert retained == {"loaxa/station/xa-b/state": b"b-birth",
                                "loaxa/station/xa-b/bundle": b"b-bundle",
                                "loaxa/hub/state": b"hub-online"}, retained
        finally:
            probe.close()
        row("station A overwrites B's or the hub's retained messages",
            "refused; the retained copies unchanged", "a wrong programme left for B to fetch")
    finally:
        a.close()
        hub.close()


def test_a_station_cannot_read_another_stations_commands_or_audio(prod):
    hub = _connect(prod, HUB_CN)
    a = _connect(prod, "xa-a")
    try:
        granted = {t: a.subscribe(t) for t in ("loaxa/station/xa-b/cmd",
                                                "loaxa/station/xa-b/audio",
                                                "loaxa/station/xa-b/bundle",
                                                "loaxa/station/xa-b/ack",
                                                "loaxa/station/+/cmd")}
        own = a.subscribe("loaxa/station/xa-a/cmd")
        assert own == [1]
        for topic in ("loaxa/station/xa-b/cmd", "loaxa/station/xa-b/audio",
                      "loaxa/station/xa-b/bundle", "loaxa/station/xa-b/ack"):
            assert hub.publish(topic, b"for b only") in ACCEPTED
        assert hub.publish("loaxa/station/xa-a/cmd", b"for a") in ACCEPTED
        deadline = time.monotonic() + 5
        while not a.got and time.monotonic() < deadline:
            time.sleep(0.02)
        time.sleep(0.3)  # anything for B would have come with A's own
        # (its own command may come twice: once for each of its matching subscriptions)
        assert {(t, p) for t, p, _ in a.got} == {("loaxa/station/xa-a/cmd", b"for a")}, a.got
        codes = sorted({c for v in granted.values() for c in (v or [])})
        row("station A subscribes to B's cmd/audio/bundle/ack",
            f"SUBACK {', '.join(f'0x{c:02X}' for c in codes)}; nothing delivered",
            "reading another commune's orders and audio")
    finally:
        a.close()
        hub.close()


def test_after_a_refusal_a_station_still_uses_its_own_topics(prod):
    """A refused publish is answered (0x87). mosquitto 2.0 then closes the connection ("Bad
    socket read/write" in its log), so the link reconnects (as MqttLink does) and the
    station's own topics work again; the matrix records which happened."""
    a = _connect(prod, "xa-a")
    try:
        assert a.publish("loaxa/station/xa-b/events", b"forged") == NOT_AUTHORISED
        time.sleep(0.5)
        dropped = a.closed.is_set()
        assert a.ready.wait(15)  # paho's loop reconnects by itself
        rc = None
        deadline = time.monotonic() + 15
        while rc not in ACCEPTED and time.monotonic() < deadline:
            rc = a.publish("loaxa/station/xa-a/events", b"mine")
        assert rc in ACCEPTED, rc
    finally:
        a.close()
    row("after a refusal, station A on its own topics",
        "PUBACK 0x87, connection closed; own topics accepted after reconnect" if dropped
        else "PUBACK 0x87, still connected; own topics accepted",
        "a refusal knocking a station off the air for good")


def test_a_station_reads_what_the_hub_sends_to_all_and_to_groups(prod):
    """The first ACL shipped gave these reads with `topic` lines before the first `user`,
    which mosquitto applies to anonymous clients only: no station under the production
    configuration would have heard an alert for all, a pushed file or the hub's presence."""
    hub = _connect(prod, HUB_CN)
    a = _connect(prod, "xa-a")
    shared = ["loaxa/all/cmd", "loaxa/all/audio", "loaxa/group/g1/cmd", "loaxa/group/g1/audio",
              "loaxa/hub/state", "loaxa/hub/key", "loaxa/station/xa-a/cmd",
              "loaxa/station/xa-a/audio",
              "loaxa/station/xa-a/bundle", "loaxa/station/xa-a/ack"]
    try:
        for t in shared:
            assert a.subscribe(t) == [1], t
        for t in shared:
            assert hub.publish(t, b"to a") in ACCEPTED, t
        deadline = time.monotonic() + 5
        while len({t for t, _, _ in a.got}) < len(shared) and time.monotonic() < deadline:
            time.sleep(0.02)
        assert {t for t, _, _ in a.got} == set(shared)
    finally:
        a.close()
        hub.close()
    row("station A reads all/group commands and audio, the hub's state and key rotation, "
        "its own topics",
        "delivered", "a silent station in an emergency (reads refused)")


def test_an_edge_brokers_bridge_speaks_for_its_own_stations_only(prod):
    """A commune's edge broker bridged to the hub's (`loaxa hub bridge xa --group G`): its
    certificate's CN is loaxa-bridge-xa, and `loaxa hub acl` lets it carry its group's
    stations' topics (here xa-a's) and nothing else."""
    from deploy.mosquitto_conf import bridge_cn, render_acl
    prod.install_acl(render_acl("loaxa", bridges={"xa": ["xa-a"]}))
    hub = _connect(prod, HUB_CN)
    try:
        deadline = time.monotonic() + 10
        while True:  # the broker reloads its ACL after SIGHUP, not before
            bridge = _connect(prod, bridge_cn("xa"))
            if bridge.publish("loaxa/station/xa-a/state", b"a-birth") in ACCEPTED:
                break
            bridge.close()
            assert time.monotonic() < deadline, "the bridge's ACL was not loaded"
            time.sleep(0.2)
        for leaf in ("events", "health", "fetch"):
            assert bridge.publish(f"loaxa/station/xa-a/{leaf}", b"x") in ACCEPTED, leaf
        assert bridge.subscribe("loaxa/station/+/cmd") == [1]
        assert hub.publish("loaxa/station/xa-b/cmd", b"for b") in ACCEPTED
        assert hub.publish("loaxa/station/xa-a/cmd", b"for a") in ACCEPTED
        wait = time.monotonic() + 5
        while not bridge.got and time.monotonic() < wait:
            time.sleep(0.02)
        time.sleep(0.3)  # anything for B would have come with A's own
        assert {(t, p) for t, p, _ in bridge.got} == {("loaxa/station/xa-a/cmd", b"for a")}
        bridge.close()
        for topic in ("loaxa/station/xa-b/state", "loaxa/station/xa-b/events",
                      "loaxa/station/xa-a/bundle", "loaxa/all/cmd", "loaxa/hub/state"):
            bridge = _connect(prod, bridge_cn("xa"))  # mosquitto 2.0 closes after a refusal
            assert bridge.publish(topic, b"forged") == NOT_AUTHORISED, topic
            bridge.close()
        row("an edge broker's bridge carries its group's stations, publishes as another "
            "station or as the hub",
            f"own group accepted; PUBACK 0x{NOT_AUTHORISED:02X} otherwise, others' topics "
            "not delivered", "one commune's broker speaking or listening for another")
    finally:
        hub.close()
