"""test_agent_kills, over TLS (tests/faults_tls/conftest.py)."""
from faults.test_agent_kills import *  # noqa: F401,F403
