"""What the benchmarks that run real processes share."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path


# Which figure a target is judged on (docs/scale.md, "How the targets are judged"): the
# fleet runs N stations' work in turn on one thread, which no field deployment does; each
# result keeps the one-thread (or one-machine) verdict beside the judged one.
JUDGED_ON = "own_cpu"


def teardown(procs: list[subprocess.Popen], broker, *dirs: Path) -> None:
    """Whatever is still running killed, the broker stopped, the work folders removed."""
    for p in procs:
        if p.poll() is None:
            p.kill()
            p.wait()
    broker.stop()
    if os.environ.get("LOAXA_BENCH_KEEP"):  # a developer's look at the logs afterwards
        print("kept:", *dirs, file=sys.stderr)
        return
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


ROOT = Path(__file__).resolve().parents[1]


def bench_env() -> dict:
    """The environment of the processes a benchmark starts: this checkout, warnings only."""
    return dict(os.environ, PYTHONPATH=str(ROOT), LOAXA_LOG="WARNING")


def serve_hub(home: Path, log: Path) -> subprocess.Popen:
    """`loaxa hub serve` on ``home`` as its own process."""
    return subprocess.Popen([sys.executable, "-m", "deploy.cli", "hub", "--home", str(home),
                             "serve"], stdout=open(log, "w"), stderr=subprocess.STDOUT,
                            env=bench_env(), cwd=ROOT)


def sim_fleet(n: int, home: Path, root: Path, events: Path, log: Path) -> subprocess.Popen:
    """`loaxa sim fleet` of ``n`` stations under ``root``, recording starts and stored files
    in ``events``."""
    return subprocess.Popen([sys.executable, "-m", "deploy.cli", "sim", "fleet", "--stations",
                             str(n), "--hub-home", str(home), "--root", str(root), "--starts",
                             str(events), "--play-s", "1"], stdout=open(log, "w"),
                            stderr=subprocess.STDOUT, env=bench_env(), cwd=ROOT)


def wait_online(store, n: int, limit_s: float) -> int:
    """Until the hub counts ``n`` stations online (or ``limit_s``); how many it counts."""
    import time
    deadline = time.monotonic() + limit_s
    online = 0
    while online < n and time.monotonic() < deadline:
        time.sleep(1)  # polling the hub's view of presence
        online = store.q("SELECT count(*) AS n FROM station_state WHERE online = 1")[0]["n"]
    return online


def hub_and_fleet(work: Path, home: Path, root: Path, n: int, events: Path, store,
                  procs: list[subprocess.Popen], *, limit_s: float,
                  fleet_log: str = "fleet.log") -> tuple[subprocess.Popen, subprocess.Popen, int]:
    """`hub serve` and a fleet of ``n`` (logs under ``work/logs``, both added to ``procs``),
    waited for until the hub counts them online: (hub, fleet, how many are online)."""
    logs = work / "logs"
    logs.mkdir(exist_ok=True)
    hub = serve_hub(home, logs / "hub.log")
    procs.append(hub)
    fleet = sim_fleet(n, home, root, events, logs / fleet_log)
    procs.append(fleet)
    return hub, fleet, wait_online(store, n, limit_s)


def stop_gently(procs: list[subprocess.Popen], wait_s: float = 60) -> None:
    """SIGTERM to each (they flush and close), then a kill for whichever does not end."""
    import signal
    for p in procs:
        p.send_signal(signal.SIGTERM)
    for p in procs:
        try:
            p.wait(wait_s)
        except subprocess.TimeoutExpired:
            p.kill()


def json_lines(path: Path) -> list[dict]:
    """The records of a JSON-lines file another process is still appending to: whole lines
    only (its last line may be half written; reading it failed a run once)."""
    import json
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().split("\n")[:-1]]
