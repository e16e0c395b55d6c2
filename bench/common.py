"""What the benchmarks that run real processes share."""
from __future__ import annotations

import shutil
import subprocess
from pathlib import Path


def teardown(procs: list[subprocess.Popen], broker, *dirs: Path) -> None:
    """Whatever is still running killed, the broker stopped, the work folders removed."""
    for p in procs:
        if p.poll() is None:
            p.kill()
            p.wait()
    broker.stop()
    for d in dirs:
        shutil.rmtree(d, ignore_errors=True)


def hub_on_broker(prefix: str) -> tuple[Path, object, Path, object]:
    """A work folder, a mosquitto on a free port and a new hub home on it: (work, broker,
    home, the hub's configuration)."""
    import tempfile
    from deploy.broker import Mosquitto
    from hub import config as hubconfig
    from hub.admin import init_hub
    work = Path(tempfile.mkdtemp(prefix=prefix))
    broker = Mosquitto(work / "broker").start()
    home = work / "hub"
    try:
        init_hub(home, broker_host="127.0.0.1", broker_port=broker.port)
    except BaseException:
        teardown([], broker, work)
        raise
    return work, broker, home, hubconfig.load(home)
