"""The one place that talks to paho-mqtt. Everything else sees ``Inbound`` and ``MqttLink``.

Manners (docs/protocol.md, "Sessions"): MQTT v5, ``clean_start=False`` with a session expiry
so the broker keeps our subscriptions and queued QoS 1 messages across reconnects; the last
will is re-armed before every connection attempt with a fresh birth/death sequence
(Sparkplug's bdSeq) so a stale will can be told from a fresh one; on every connect we
re-subscribe, then the owner publishes its birth message.

paho's network thread never touches the owner's database: the bdseq of each attempt is
``epoch * 2**20 + attempt``, where the owner persists a new ``epoch`` once per process start
on its own thread. When a connection cannot be made, ``failure`` names the cause (TLS
expected, certificate refused, not authorised, unreachable) instead of paho's "Unspecified
error".
"""
from __future__ import annotations

import errno
import fcntl
import logging
import queue
import socket
import ssl
import struct
import termios
import threading
from dataclasses import dataclass, field
from typing import Callable

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.subscribeoptions import SubscribeOptions

log = logging.getLogger("loaxa.mqtt")
MAX_IN_FLIGHT = 60_000  # unacknowledged QoS 1 messages one client may hold (ids: 1..65535)


@dataclass(frozen=True)
class Inbound:
    topic: str
    payload: bytes
    retain: bool
    # under a metered SharedLoop: when the message was read, on the reading link's own
    # clock (station_agent/simfleet.py, StationClocks); else None
    ready_at: float | None = field(default=None, compare=False)
    # ... and when its last bytes reached this host (the kernel's receive timestamp)
    arrived_at: float | None = field(default=None, compare=False)


class Sent:
    def __init__(self, info: "paho.MQTTMessageInfo") -> None:
        self._info = info

    @property
    def acknowledged(self) -> bool:
        return self._info.is_published()


@dataclass(frozen=True)
class Will:
    topic: str
    payload: bytes
    qos: int = 1
    retain: bool = True


@dataclass(frozen=True)
class BrokerConfig:
    host: str = "127.0.0.1"
    port: int = 1883
    keepalive: int = 30
    session_expiry: int = 7 * 24 * 3600
    protocol: str = "5"  # "5" or "3.1.1" (the embedded demo broker speaks only 3.1.1)
    tls_ca: str | None = None
    tls_cert: str | None = None
    tls_key: str | None = None
    username: str | None = None
    password: str | None = None

    def __repr__(self) -> str:  # the password never reaches a log
        pw = "***" if self.password else None
        return (f"BrokerConfig(host={self.host!r}, port={self.port}, protocol={self.protocol!r}, "
                f"tls={'on' if self.tls_ca else 'off'}, username={self.username!r}, password={pw})")


BDSEQ_ATTEMPTS = 2 ** 20  # connection attempts per process start before the epoch must grow


@dataclass(frozen=True)
class Failure:
    """Why the link is not (fully) up. ``cause`` is one of ``CAUSES``; ``detail`` for people."""

    cause: str
    detail: str

    def __str__(self) -> str:
        return f"{self.cause}: {self.detail}"


CAUSES = ("unreachable", "tls_expected", "tls_unexpected", "certificate_refused",
          "broker_untrusted", "not_authorised", "refused", "lost")


class _Client(paho.Client):
    """paho's client, keeping the reason a connection attempt failed: paho swallows it and
    reports only "connection failed" to its callbacks."""

    last_socket_error: BaseException | None = None

    def _create_socket(self):  # paho 2.x: the one place a connection is opened
        try:
            sock = super()._create_socket()
        except BaseException as exc:
            self.last_socket_error = exc
            raise
        self.last_socket_error = None
        return sock


def explain_socket_error(exc: BaseException, *, tls: bool) -> Failure:
    """The cause of a failed connection attempt, in words an administrator can act on."""
    text = str(exc) or type(exc).__name__
    if isinstance(exc, ssl.SSLCertVerificationError):
        return Failure("broker_untrusted", f"the broker's certificate is not trusted by tls_ca "
                       f"({exc.verify_message or text})")
    if isinstance(exc, ssl.SSLError):
        low = text.lower()
        if "wrong version number" in low or "record layer failure" in low \
                or "packet length too long" in low:
            return Failure("tls_unexpected", f"the broker does not speak TLS on this port ({text})")
        if isinstance(exc, ssl.SSLEOFError) or "unexpected_eof" in low or "eof occurred" in low:
            # the TCP connection ended mid-handshake: a link that dropped (a proxy, a 4G cell)
            # says nothing about our certificate, which a broker refuses after the handshake
            # (TLS 1.3) or with an alert (TLS 1.2)
            return Failure("unreachable", f"the link closed during the TLS handshake ({text})")
        return Failure("certificate_refused", f"the broker refused our certificate ({text})")
    if isinstance(exc, (socket.gaierror, ConnectionRefusedError, TimeoutError, socket.timeout)) \
            or getattr(exc, "errno", None) in (errno.EHOSTUNREACH, errno.ENETUNREACH,
                                                errno.ECONNREFUSED, errno.ETIMEDOUT):
        return Failure("unreachable", f"broker unreachable ({text})")
    if isinstance(exc, (ConnectionResetError, BrokenPipeError)):
        return Failure("tls_expected" if not tls else "certificate_refused",
                       "the broker closed the connection at once: " + (
                           "it probably expects TLS (set tls_ca, tls_cert and tls_key)"
                           if not tls else "it refused our certificate"))
    return Failure("unreachable", f"cannot connect ({type(exc).__name__}: {text})")


class MqttLink:
    def __init__(
        self, *, client_id: str, broker: BrokerConfig, subscriptions: list[str],
        will: Callable[[int], Will] | None = None, bdseq_epoch: int = 0,
        on_connected: Callable[[int], None] | None = None,
        loop: "SharedLoop | None" = None,
        on_inbound: Callable[[Inbound], None] | None = None,
    ) -> None:
        """``loop``: drive this link from a ``SharedLoop`` (one thread, many links: the
        simulated fleet) instead of paho's own thread. ``on_inbound``: told of each message
        as it is read, on the network thread (benchmarks stamp arrivals with it)."""
        self.broker = broker
        self._loop = loop
        self._on_inbound = on_inbound
        self.subscriptions = list(subscriptions)
        self.inbox: "queue.Queue[Inbound]" = queue.Queue()
        self.connected = threading.Event()
        self.epoch = int(bdseq_epoch)
        self.attempts = 0
        self.bdseq = 0
        self.failure: Failure | None = None
        self.refused_full = 0  # publishes refused because paho's message ids are all taken
        self._make_will = will
        self._on_connected = on_connected
        self._v5 = broker.protocol == "5"
        self._tls = bool(broker.tls_ca)
        self._connack = False  # whether the current connection got its CONNACK
        if broker.protocol not in ("5", "3.1.1"):
            raise ValueError(f"MQTT protocol {broker.protocol!r}: use '5' or '3.1.1'")
        self._client = _Client(
            callback_api_version=CallbackAPIVersion.VERSION2, client_id=client_id,
            protocol=paho.MQTTv5 if self._v5 else paho.MQTTv311,
            clean_session=None if self._v5 else False,
        )
        self._client.reconnect_delay_set(min_delay=1, max_delay=15)
        self._client.max_queued_messages_set(0)
        if broker.tls_ca:
            self._client.tls_set(ca_certs=broker.tls_ca, certfile=broker.tls_cert,
                                 keyfile=broker.tls_key, tls_version=ssl.PROTOCOL_TLS_CLIENT)
        if broker.username:
            self._client.username_pw_set(broker.username, broker.password)
        self._client.on_connect = self._handle_connect
        self._client.on_connect_fail = self._handle_connect_fail
        self._client.on_disconnect = self._handle_disconnect
        self._client.on_message = self._handle_message
        self._client.on_subscribe = self._handle_subscribe
        self._client.on_publish = self._handle_publish
        self._sub_mid: int | None = None

    # -- lifecycle -------------------------------------------------------------------------
    def _connect_kwargs(self) -> dict:
        if not self._v5:
            return {}
        props = Properties(PacketTypes.CONNECT)
        props.SessionExpiryInterval = self.broker.session_expiry
        return {"clean_start": False, "properties": props}

    def start(self) -> None:
        self._arm_will()
        self._client.connect_async(self.broker.host, self.broker.port,
                                   keepalive=self.broker.keepalive, **self._connect_kwargs())
        if self._loop is not None:
            self._loop.attach(self)
        else:
            self._client.loop_start()

    def _reconnect(self) -> bool:
        """One connection attempt from the shared loop; False (and the cause kept) if the
        socket could not be opened."""
        try:
            self._client.reconnect()
            return True
        except OSError:
            self._handle_connect_fail(self._client, None)
            self._arm_will()
            return False

    def stop(self, *, send_will: bool = False) -> None:
        """Disconnect. With ``send_will`` (v5) the broker still publishes the last will."""
        try:
            if send_will and self._v5 and self.connected.is_set():
                self._client.disconnect(reasoncode=paho.ReasonCode(PacketTypes.DISCONNECT, identifier=4))
            else:
                self._client.disconnect()
        finally:
            if self._loop is not None:
                self._loop.detach(self)
            else:
                self._client.loop_stop()
            self.connected.clear()

    def wait_connected(self, timeout: float) -> bool:
        return self.connected.wait(timeout)

    # -- traffic ---------------------------------------------------------------------------
    def publish(self, topic: str, payload: bytes, *, qos: int = 1,
                retain: bool = False) -> "Sent | None":
        """Hand a message to paho; None if we are not connected (the caller keeps it). The
        returned handle says whether the broker has acknowledged it: until then paho holds it
        and re-sends it after a reconnect."""
        if not self.connected.is_set():
            return None
        if qos and self._mid_busy():
            self.refused_full += 1
            return None
        info = self._client.publish(topic, payload, qos=qos, retain=retain)
        return Sent(info) if info.rc == paho.MQTT_ERR_SUCCESS else None

    def _mid_busy(self) -> bool:
        """Whether paho's next message id still belongs to a message the broker has not
        acknowledged. paho numbers messages 1..65535 and wraps without looking: the new
        message would replace the old one in its table and the old one would be lost
        without a word (a hub fanning out audio to thousands can have that many in flight).
        The caller keeps the message, as when not connected."""
        c = self._client
        out = c._out_messages  # paho's table of unacknowledged messages, by id
        if len(out) >= MAX_IN_FLIGHT:
            return True
        return (c._last_mid % 65535) + 1 in out

    def publish_wait(self, topic: str, payload: bytes, *, qos: int = 1, retain: bool = False,
                     timeout: float = 5.0) -> bool:
        """Publish and wait for the broker's acknowledgement (PUBACK for QoS 1)."""
        if not self.connected.is_set():
            return False
        info = self._client.publish(topic, payload, qos=qos, retain=retain)
        try:
            info.wait_for_publish(timeout)
        except (RuntimeError, ValueError) as exc:
            log.warning("publish to %s not confirmed: %s", topic, exc)
            return False
        if not info.is_published():
            log.warning("publish to %s timed out after %.1fs", topic, timeout)
            return False
        return True

    # -- paho callbacks (paho's thread) ----------------------------------------------------
    def _fail(self, failure: Failure) -> None:
        if failure != self.failure:
            log.error("broker %s:%s: %s", self.broker.host, self.broker.port, failure)
        self.failure = failure

    def _handle_connect_fail(self, client, userdata) -> None:
        exc = self._client.last_socket_error
        self._fail(explain_socket_error(exc, tls=self._tls) if exc else
                   Failure("unreachable", "connection failed"))

    def _handle_publish(self, client, userdata, mid, reason_code, properties) -> None:
        code = getattr(reason_code, "value", 0)
        if code in (0x87, 0x86):  # 135 Not authorized
            self._fail(Failure("not_authorised", "the broker's ACL refuses what we publish "
                               "(is the certificate's CN the name the ACL expects?)"))
        elif code == 0 and self.failure is not None and self.failure.cause == "not_authorised":
            self.failure = None  # the ACL lets us publish again

    def _arm_will(self) -> None:
        self.attempts += 1
        self.bdseq = self.epoch * BDSEQ_ATTEMPTS + min(self.attempts, BDSEQ_ATTEMPTS - 1)
        if self._make_will:
            w = self._make_will(self.bdseq)
            self._client.will_set(w.topic, w.payload, qos=w.qos, retain=w.retain)

    def _handle_connect(self, client, userdata, flags, reason_code, properties) -> None:
        if reason_code.is_failure:
            code = getattr(reason_code, "value", 0)
            if code in (0x86, 0x87, 0x8C, 4, 5):  # bad user/password, not authorised
                self._fail(Failure("not_authorised", f"the broker refused us: {reason_code}"))
            else:
                self._fail(Failure("refused", f"the broker refused the connection: {reason_code}"))
            return
        self._connack = True
        if self.subscriptions:
            # ready only once the broker has granted the subscriptions (SUBACK)
            _, self._sub_mid = client.subscribe(
                [(t, SubscribeOptions(qos=1)) if self._v5 else (t, 1) for t in self.subscriptions])
        else:
            self._ready()

    def _handle_subscribe(self, client, userdata, mid, reason_codes, properties) -> None:
        if mid != self._sub_mid:
            return
        bad = [rc for rc in reason_codes if rc.is_failure]
        if bad:
            self._fail(Failure("not_authorised", f"the broker refused our subscriptions: {bad}"))
        self._ready()

    def _ready(self) -> None:
        if self._loop is not None:
            self._loop._retry.pop(self, None)  # back-off starts afresh at the next drop
        if self.failure is not None and self.failure.cause != "not_authorised":
            log.info("broker %s:%s reached again", self.broker.host, self.broker.port)
            self.failure = None
        self.connected.set()
        log.info("connected to %s:%s (bdseq %d)", self.broker.host, self.broker.port, self.bdseq)
        if self._on_connected:
            try:
                self._on_connected(self.bdseq)
            except Exception:  # never let an owner's bug kill paho's thread
                log.exception("on_connected failed")

    def _handle_disconnect(self, client, userdata, flags, reason_code, properties) -> None:
        was = self.connected.is_set()
        self.connected.clear()
        if not self._connack and reason_code.is_failure:
            # closed before the broker answered our CONNECT: a TLS listener reading plain
            # MQTT, or a broker that dropped our certificate after the handshake
            self._fail(Failure("certificate_refused", "the broker closed the connection before "
                               "answering: it refused our certificate") if self._tls else
                       Failure("tls_expected", "the broker closed the connection before "
                               "answering: it probably expects TLS (set tls_ca, tls_cert and "
                               "tls_key under [broker])"))
        elif was:
            (log.warning if reason_code.is_failure else log.info)(
                "disconnected from broker: %s", reason_code)
            if reason_code.is_failure and (self.failure is None or
                                           self.failure.cause != "not_authorised"):
                # (a broker may drop a client it has just refused: the refusal is the cause)
                self.failure = Failure("lost", f"connection lost: {reason_code}")
        self._connack = False
        self._arm_will()  # the next attempt carries a new bdseq
        if self._loop is not None and reason_code.is_failure:
            self._loop.reconnect_later(self)

    def _handle_message(self, client, userdata, msg) -> None:
        meter = self._loop.meter if self._loop is not None else None
        m = Inbound(msg.topic, bytes(msg.payload), bool(msg.retain),
                    *((meter.now(self), meter.arrival(self)) if meter is not None else ()))
        if self._on_inbound is not None:
            self._on_inbound(m)
        self.inbox.put(m)


SO_TIMESTAMPNS = getattr(socket, "SO_TIMESTAMPNS", 35)  # Linux; SCM_TIMESTAMPNS is the same


METERED_RCVBUF = 512 * 1024  # the kernel doubles it


class Meter:
    """What a ``SharedLoop`` tells about its links' work (see ``SharedLoop.meter``)."""

    def begin(self, link: MqttLink) -> None: ...
    def end(self) -> None: ...
    def arrived(self, at: float) -> None: ...
    def now(self, link: MqttLink) -> float | None: ...
    def arrival(self, link: MqttLink) -> float | None: ...


def _stamped_recv(c: paho.Client, bufsize: int, meter: Meter) -> bytes:
    """paho's socket read, with the kernel's receive timestamp of the last bytes returned
    (TCP reports the newest segment a read consumed) passed to ``meter.arrived``."""
    sock = c._sock
    if sock is None or not hasattr(sock, "recvmsg") or isinstance(sock, ssl.SSLSocket):
        return paho.Client._sock_recv(c, bufsize)
    data, anc, _, _ = sock.recvmsg(bufsize, 64)  # BlockingIOError as recv() raises it
    for level, kind, raw in anc:
        if level == socket.SOL_SOCKET and kind == SO_TIMESTAMPNS and len(raw) >= 16:
            sec, nsec = struct.unpack("qq", raw[:16])
            meter.arrived(sec + nsec / 1e9)
    return data


def _readable(sock) -> bool:
    """Whether bytes are waiting on ``sock`` (kernel buffer, or TLS's own)."""
    if sock is None:
        return False
    pending = getattr(sock, "pending", None)
    if pending is not None and pending():
        return True
    try:
        return struct.unpack("i", fcntl.ioctl(sock.fileno(), termios.FIONREAD,
                                               b"\0\0\0\0"))[0] > 0
    except OSError:
        return False


class SharedLoop:
    """Many links on one thread (the simulated fleet, load tests): paho's external-loop
    interface (socket callbacks, ``loop_read`` / ``loop_write`` / ``loop_misc``) driven by one
    selector (epoll). paho's own threaded loop uses ``select()`` and fails silently past ~340
    clients in one process; this costs a few KiB per link. Reconnects back off 1 s to 15 s."""

    MISC_EVERY_S = 1.0

    def __init__(self) -> None:
        import selectors
        self._selectors = selectors
        self.sel = selectors.DefaultSelector()
        self.links: set[MqttLink] = set()
        self._retry: dict[MqttLink, tuple[float, float]] = {}  # link -> (due, delay)
        self._misc_at = 0.0
        self.touched: set[MqttLink] = set()  # links that had traffic since the owner looked
        self._writes: set[MqttLink] = set()  # paho has bytes queued for these
        self._polled_writes: set[MqttLink] = set()  # ... and waits for epoll to say writable
        # set before links attach: told of each link's reads and writes (begin(link), end())
        # and of when the bytes each read returns reached this host (arrived(seconds since
        # the epoch, the kernel's receive timestamp)); a fleet meters its stations' work
        # with it (station_agent/simfleet.py, StationClocks)
        self.meter: Meter | None = None

    def attach(self, link: MqttLink) -> None:
        c = link._client
        if self.meter is not None:
            c._sock_recv = lambda bufsize: _stamped_recv(c, bufsize, self.meter)
        c.on_socket_open = lambda client, ud, sock: self._register(sock, link)
        c.on_socket_close = lambda client, ud, sock: self._unregister(sock)
        c.on_socket_register_write = lambda client, ud, sock: self._want(sock, link, True)
        c.on_socket_unregister_write = lambda client, ud, sock: self._want(sock, link, False)
        self.links.add(link)
        if not link._reconnect():
            self.reconnect_later(link)

    def detach(self, link: MqttLink) -> None:
        c = link._client
        if c.socket() is not None:
            try:
                c.loop_write()  # the DISCONNECT packet
            except OSError:
                pass
            sock = c.socket()
            if sock is not None:
                self._unregister(sock)
                sock.close()
        self.links.discard(link)
        self._retry.pop(link, None)
        self._writes.discard(link)
        self._polled_writes.discard(link)

    def reconnect_later(self, link: MqttLink) -> None:
        import time
        _, delay = self._retry.get(link, (0.0, 0.5))
        delay = min(delay * 2, 15.0)
        self._retry[link] = (time.monotonic() + delay, delay)

    def _register(self, sock, link: MqttLink) -> None:
        if self.meter is not None:
            try:  # each read then says when its bytes arrived
                sock.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)
                # room for what the broker sends while this one thread reads other links
                # (a client on a CPU of its own keeps its buffer drained), so that when
                # bytes arrived measures the broker, not this loop's turn
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, METERED_RCVBUF)
            except OSError:
                pass
        try:
            self.sel.register(sock, self._selectors.EVENT_READ, link)
        except (KeyError, ValueError):
            pass

    def _unregister(self, sock) -> None:
        try:
            key = self.sel.get_map().get(sock)
        except ValueError:  # already closed
            key = None
        if key is not None:
            self._writes.discard(key.data)
            self._polled_writes.discard(key.data)
        try:
            self.sel.unregister(sock)
        except (KeyError, ValueError):
            pass

    def _want(self, sock, link: MqttLink, write: bool) -> None:
        """paho has bytes to send (or no more). They are written at the next poll without
        asking epoll; only a socket whose buffer is full waits for EVENT_WRITE (two
        epoll_ctl calls per packet were a tenth of a fleet's turn)."""
        if write:
            self._writes.add(link)
            return
        self._writes.discard(link)
        if link in self._polled_writes:
            self._polled_writes.discard(link)
            self._modify(sock, link, self._selectors.EVENT_READ)

    def _modify(self, sock, link: MqttLink, events: int) -> None:
        try:
            self.sel.modify(sock, events, link)
        except (KeyError, ValueError):
            pass

    def flush_writes(self) -> None:
        """Hand the sockets what paho queued (an owner's long turn calls it as it goes)."""
        meter = self.meter
        for link in list(self._writes - self._polled_writes):
            c = link._client
            sock = c.socket()
            if sock is None:
                self._writes.discard(link)
                continue
            if meter:
                meter.begin(link)
            try:
                c.loop_write()  # calls _want(False) once all is sent
            finally:
                if meter:
                    meter.end()
            if link in self._writes and c.socket() is sock:  # the socket's buffer is full
                self._polled_writes.add(link)
                self._modify(sock, link, self._selectors.EVENT_READ |
                             self._selectors.EVENT_WRITE)

    READS_PER_TURN = 16

    def poll(self, timeout: float) -> int:
        """Wait up to ``timeout`` for network events and handle them; returns how many."""
        import time
        self.flush_writes()  # what the owner queued since the last turn
        events = self.sel.select(timeout) if self.sel.get_map() else []
        meter = self.meter
        for key, mask in events:
            c = key.data._client
            if meter:
                meter.begin(key.data)
            try:
                if mask & self._selectors.EVENT_READ:
                    # what has arrived for this link, not one packet a turn: a station's
                    # command and the audio pushed behind it are taken together, instead of
                    # one message per turn of the whole fleet
                    for _ in range(self.READS_PER_TURN):
                        c.loop_read()
                        if not _readable(c.socket()):
                            break
                    self.touched.add(key.data)
                if mask & self._selectors.EVENT_WRITE and c.socket() is not None:
                    c.loop_write()
            finally:
                if meter:
                    meter.end()
        self.flush_writes()  # acknowledgements of what was just read
        now = time.monotonic()
        if now - self._misc_at >= self.MISC_EVERY_S:
            self._misc_at = now
            for link in list(self.links):
                link._client.loop_misc()
        for link, (due, delay) in list(self._retry.items()):
            if now >= due and link in self.links:
                self.touched.add(link)
                if link._reconnect():
                    self._retry[link] = (float("inf"), delay)  # until a disconnect again
                else:
                    self.reconnect_later(link)
        return len(events)
