"""test_command_faults, over TLS (tests/faults_tls/conftest.py)."""
from faults.test_command_faults import *  # noqa: F401,F403
