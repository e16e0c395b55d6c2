"""test_links, over TLS (tests/faults_tls/conftest.py)."""
from faults.test_links import *  # noqa: F401,F403
