"""`loaxa demo --once` as a user runs it: exit 0 once every station's record is at the hub."""
import subprocess
import sys
import time

import pytest

from conftest import ROOT


@pytest.mark.parametrize("broker", ["mosquitto", "embedded"])
def test_demo_once_exits_zero_with_three_records(tmp_path, broker):
    """With mosquitto, and with the embedded amqtt fallback used when it is not installed."""
    t0 = time.monotonic()
    proc = subprocess.run([sys.executable, "-m", "deploy.cli", "demo", "--once", "--lead", "5",
                           "--broker", broker, "--workdir", str(tmp_path / "demo")],
                          capture_output=True, text=True, timeout=90, cwd=ROOT)
    took = time.monotonic() - t0
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "xong / done" in proc.stdout
    assert f"(MQTT {'5' if broker == 'mosquitto' else '3.1.1'})" in proc.stdout
    assert proc.stdout.count("đã phát") >= 3
    assert took < 60
    for sink in (tmp_path / "demo" / "stations").glob("*/sink.wav"):
        assert sink.stat().st_size > 10_000
    assert len(list((tmp_path / "demo" / "stations").glob("*/sink.wav"))) == 3
