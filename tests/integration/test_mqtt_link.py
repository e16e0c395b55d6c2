"""The MQTT link against a real mosquitto: what paho would lose without a word."""
import os
import signal
import time

from protocol.mqtt import BrokerConfig, MqttLink
from tests.conftest import wait_for


def test_a_publish_that_would_reuse_an_unacknowledged_message_id_is_refused_not_lost(mosquitto):
    """paho numbers QoS 1 messages 1..65535 and wraps without looking: a new message on an
    id still unacknowledged replaces the old one in paho's table, which is then never sent
    again. The link refuses that publish (the caller keeps it, as when not connected) and
    counts it; the old message still arrives."""
    broker = BrokerConfig(port=mosquitto.port, keepalive=30)
    got = []
    sub = MqttLink(client_id="sub", broker=broker, subscriptions=["t/#"])
    sub.start()
    pub = MqttLink(client_id="pub", broker=broker, subscriptions=[])
    pub.start()
    try:
        wait_for(lambda: sub.connected.is_set() and pub.connected.is_set(), what="connected")
        os.kill(mosquitto.proc.pid, signal.SIGSTOP)  # no PUBACK while the broker is stopped
        try:
            first = pub.publish("t/old", b"the first message")
            assert first is not None and not first.acknowledged
            pub._client._last_mid = 65535 if first._info.mid == 1 else first._info.mid - 1
            assert pub.publish("t/new", b"would take the first one's id") is None
            assert pub.refused_full == 1
        finally:
            os.kill(mosquitto.proc.pid, signal.SIGCONT)
        wait_for(lambda: first.acknowledged, what="the first message acknowledged")
        msg = sub.inbox.get(timeout=10)
        while msg.topic != "t/old":
            msg = sub.inbox.get(timeout=10)
        assert msg.payload == b"the first message"
        assert pub.publish("t/new", b"now there is room") is not None
    finally:
        pub.stop()
        sub.stop()
