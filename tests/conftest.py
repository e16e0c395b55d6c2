"""Shared fixtures: a real mosquitto per test, real SQLite files, an ALSA file sink."""
from __future__ import annotations

import time
from pathlib import Path
from typing import Callable

import pytest

from deploy.broker import Mosquitto

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def mosquitto(tmp_path):
    broker = Mosquitto(tmp_path / "broker").start()
    yield broker
    broker.stop()


def wait_for(pred: Callable[[], object], timeout: float = 20.0, what: str = "condition",
             interval: float = 0.05):
    """Poll until ``pred()`` is truthy: waiting for an event (a message, a record), never for
    a scheduled time; the schedule is reached by moving the clock."""
    deadline = time.monotonic() + timeout
    while True:
        value = pred()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)


@pytest.fixture
def sink(tmp_path):
    """An ALSA config naming a PCM 'loaxa_sink' that writes what is played to sink.wav."""
    from audio.player import file_sink_config
    conf = tmp_path / "sink.conf"
    wav = tmp_path / "sink.wav"
    conf.write_text(file_sink_config(wav))
    return conf, wav


_FIGURES_DIR = ROOT / "build" / "fault-figures.d"


# The longest files first (seconds each on 8 workers, 05/12/2026): with
# `--no-loadscope-reorder` (Makefile) the workers take files in collection order (xdist's
# default puts files with the most tests first, which left the one-test fault files, the
# longest, to run one after another at the end while the other workers idled: 4 min 7 s
# against 3 min 21 s). Only the order changes; a stale list costs balance, never a check.
LONGEST_FIRST = (  # seconds per file, 05/12/2026 afternoon (8 workers, make test)
    "faults_tls/test_links_tls.py",                 # 92
    "faults_tls/test_agent_kills_tls.py",           # 91
    "faults/test_links.py",                         # 87
    "faults/test_broker_and_hub_kills.py",          # 84
    "faults_tls/test_broker_and_hub_kills_tls.py",  # 84
    "faults/test_agent_kills.py",                   # 82
    "integration/test_commands.py",                 # 72
    "integration/test_update_timing.py",            # 65
    "web/test_web_console.py",                      # 64
    "integration/test_demo.py",                     # 59
    "integration/test_board_faults.py",             # 56
    "test_day_one.py",                              # 55
    "integration/test_day_one_live.py",             # 53
    "faults_tls/test_command_faults_tls.py",        # 52
    "faults/test_command_faults.py",                # 47
    "faults_tls/test_clock_and_power_tls.py",       # 47
    "faults/test_clock_and_power.py",               # 46
    "integration/test_end_to_end.py",               # 45
    "integration/test_update.py",                   # 37
    "integration/test_presence_and_controls.py",    # 36
    "test_audio.py",                                # 36
    "integration/test_security_matrix.py",          # 27
    "web/test_web_browser.py",                      # 26
)


def pytest_collection_modifyitems(session, config, items):
    tests = Path(__file__).resolve().parent
    rank = {name: i for i, name in enumerate(LONGEST_FIRST)}

    def key(pair):
        i, item = pair
        rel = Path(str(item.fspath)).resolve().relative_to(tests).as_posix()
        return (rank.get(rel, len(rank)), i)
    items[:] = [item for _, item in sorted(enumerate(items), key=key)]


def pytest_sessionstart(session):
    """The controller (or a run without workers) starts with no figures from earlier runs;
    each worker of a parallel run writes its own file there."""
    if not hasattr(session.config, "workerinput"):
        import shutil
        shutil.rmtree(_FIGURES_DIR, ignore_errors=True)
    _FIGURES_DIR.mkdir(parents=True, exist_ok=True)


@pytest.fixture
def figures(request):
    """Record a measured number: printed at the end of the run and written to
    build/fault-figures.json, where docs/reliability.md takes its figures from. Works with
    parallel workers (pytest-xdist): each writes its own file, the controller merges them."""
    import json
    worker = getattr(request.config, "workerinput", {}).get("workerid", "main")
    path = _FIGURES_DIR / f"{worker}.json"

    def record(name: str, value: float, unit: str, bound: float | None = None) -> None:
        got = json.loads(path.read_text()) if path.exists() else {}
        got[name] = {"value": round(value, 3), "unit": unit, "bound": bound,
                     "test": request.node.nodeid}
        path.write_text(json.dumps(got, ensure_ascii=False))
    return record


def pytest_terminal_summary(terminalreporter, config):
    import json
    if hasattr(config, "workerinput"):
        return
    found: dict[str, dict] = {}
    for f in sorted(_FIGURES_DIR.glob("*.json")):
        found.update(json.loads(f.read_text()))
    if not found:
        return
    out = ROOT / "build" / "fault-figures.json"
    old = json.loads(out.read_text()) if out.exists() else {}
    old.update(found)
    out.write_text(json.dumps(old, indent=1, ensure_ascii=False))
    terminalreporter.section("measured figures")
    for name, f in sorted(found.items()):
        bound = f" (bound {f['bound']} {f['unit']})" if f["bound"] is not None else ""
        terminalreporter.write_line(f"{name}: {f['value']} {f['unit']}{bound}")
