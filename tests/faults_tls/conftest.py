"""The fault suite again, over TLS on mosquitto's production configuration (issue 12): each
file here imports the tests of its namesake in tests/faults, and the `mosquitto` fixture they
take is a ProductionBroker, so every Fleet in them runs with hub-made certificates (`hub pki
init`), client certificates per station and the ACL. Brokers killed and brought back come
back the same (``again``). Left on the plain loopback broker: the one fault test that makes a
persistent broker of its own (`test_command_faults`: killed mid-alert)."""
from __future__ import annotations

import pytest

from production_broker import ProductionBroker


@pytest.fixture
def mosquitto(tmp_path):
    broker = ProductionBroker(tmp_path / "production-broker")  # started by the Fleet on it
    yield broker
    broker.close()
