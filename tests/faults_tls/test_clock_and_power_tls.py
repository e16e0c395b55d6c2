"""test_clock_and_power, over TLS (tests/faults_tls/conftest.py)."""
from faults.test_clock_and_power import *  # noqa: F401,F403
