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
    # a short announcement: what is checked is that every station's record reaches the hub,
    # not how long the demo's own text plays (8 s)
    proc = subprocess.run([sys.executable, "-m", "deploy.cli", "demo", "--once", "--lead", "5",
                           "--text", "Xin chào bà con, đây là thử nghiệm loa xã.",
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


def test_demo_starts_the_console_with_a_one_time_password(tmp_path):
    """`make demo` without --once: the console answers at the printed address, the printed
    password logs the administrator in once (it must be changed), and Ctrl-C ends it."""
    import re
    import signal
    import socket

    import httpx
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen([sys.executable, "-m", "deploy.cli", "demo", "--lead", "5",
                             "--text", "Xin chào bà con.",
                             "--web", f"127.0.0.1:{port}", "--workdir", str(tmp_path / "demo")],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=ROOT)
    try:
        lines = []
        for line in proc.stdout:
            lines.append(line)
            if "Ctrl-C" in line:
                break
        text = "".join(lines)
        m = re.search(r"web console: (http://\S+)/ .*one-time password: (\S+)", text)
        assert m, text
        url, password = m.groups()
        with httpx.Client(base_url=url, follow_redirects=False) as c:
            token = re.search(r'name="csrftoken" value="([^"]+)"', c.get("/login").text).group(1)
            r = c.post("/login", data={"csrftoken": token, "user": "admin",
                                       "password": password})
            assert r.status_code == 303 and r.headers["location"] == "/password"
            assert c.get("/stations").headers["location"] == "/password"
        proc.send_signal(signal.SIGINT)
        assert proc.wait(30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
