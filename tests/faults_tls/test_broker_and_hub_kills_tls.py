"""test_broker_and_hub_kills, over TLS (tests/faults_tls/conftest.py)."""
from faults.test_broker_and_hub_kills import *  # noqa: F401,F403
