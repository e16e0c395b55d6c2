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


def add_communes(store, n: int, created_at: str) -> list[str]:
    """N stations ``tram-00000``… straight into a hub's store, in communes (groups) of 100,
    inside the caller's transaction; their ids."""
    from hub import console
    for c in range((n + 99) // 100):
        console.set_group_kind(store, f"xa-{c:03d}", "commune", name=f"Xã {c:03d}")
    sids = [f"tram-{i:05d}" for i in range(n)]
    for i, sid in enumerate(sids):
        store.db.execute("INSERT INTO stations(id, name, public_key, created_at) "
                         "VALUES (?, ?, ?, ?)", [sid, f"Trạm {i:05d}", None, created_at])
        store.db.execute("INSERT INTO station_groups VALUES (?, ?)", [sid, f"xa-{i // 100:03d}"])
    return sids
