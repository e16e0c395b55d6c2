"""`loaxa agent launch`: starts the agent from the current slot and keeps an update honest.

systemd runs this (deploy/systemd/loaxa-agent.service); it runs the agent as its child, from
the slot ``slots/current`` names (or the factory install), and is the only code that switches
slots. Standard library only, from the factory install: a release cannot break it.

An update goes (docs/update.md): the old version fetches and installs the release, writes
``switch`` and exits; the launcher points ``current`` at the new slot, writes ``trial`` and
starts it. The new version checks its own health (broker reached, bundle verified, silent
self-test passed) and writes ``confirmed``. If instead it exits, asks to go back, does not
confirm within the release's time, or is started ``MAX_TRIAL_STARTS`` times without
confirming (power cuts, hangs killed by the watchdog), the launcher points ``current`` back,
writes ``rolled_back`` with the reason and starts the old version, which reports it.
"""
from __future__ import annotations

import collections
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

from . import slots as S

STOP_GRACE_S = 10.0
POLL_S = 0.2


class Launcher:
    def __init__(self, config: Path, slots_dir: Path) -> None:
        self.config = Path(config)
        self.slots = S.Slots(slots_dir)
        self.child: subprocess.Popen | None = None
        self.stopping = False
        self._tail: collections.deque[str] = collections.deque(maxlen=8)

    def log(self, text: str) -> None:
        print(f"launcher: {text}", file=sys.stderr, flush=True)

    # -- decisions at start ----------------------------------------------------------------
    def settle(self) -> None:
        """Act on the update state before starting a child (after a planned exit, a crash or
        a power cut at any step)."""
        st = self.slots.state()
        phase = st.get("phase")
        if phase == S.SWITCH:
            to = st["version"]
            if not self.slots.installed(to):
                self.rollback(st, f"slot {to} is not installed")
                return
            self.slots.point_at(to)
            S.fault_point("switched")
            st = self.slots.update_state(phase=S.TRIAL, starts=0)
            self.log(f"switched {st.get('from')} -> {to}; on trial for {st.get('health_s')} s")
            phase = S.TRIAL
        if phase == S.TRIAL:
            if st.get("starts", 0) >= S.MAX_TRIAL_STARTS:
                self.rollback(st, f"version {st.get('version')} started {st.get('starts')} times "
                              "without passing its health check (crash, hang or power cut)")
                return
            self.slots.update_state(starts=st.get("starts", 0) + 1)
            if self.slots.current() != st.get("version"):  # a cut between link and state
                self.slots.point_at(st["version"])
        elif phase == S.ROLLBACK:
            self.rollback(st, st.get("reason") or "asked to go back")

    def rollback(self, st: dict, reason: str) -> None:
        back = st.get("from") or S.BASE
        self.slots.point_at(back)
        S.fault_point("rolled-back-link")
        self.slots.write_state({**st, "phase": S.ROLLED_BACK, "reason": reason[:500]})
        self.log(f"rolled back {st.get('version')} -> {back}: {reason}")

    # -- the child -------------------------------------------------------------------------
    def spawn(self) -> subprocess.Popen:
        version = self.slots.current()
        env = dict(os.environ, LOAXA_LAUNCHER="1", LOAXA_SLOT=version)
        site = self.slots.site(version)
        if site is not None:  # the slot's packages before the factory install's
            env["PYTHONPATH"] = os.pathsep.join(
                [str(site)] + [p for p in [os.environ.get("PYTHONPATH")] if p])
        # -P: no current directory on sys.path, so nothing shadows the slot
        argv = [sys.executable, "-P", "-c", "import sys; from deploy.cli import main; "
                "sys.exit(main())", "agent", "run", "--config", str(self.config)]
        self.log(f"starting the agent, version {version}")
        self._tail.clear()
        child = subprocess.Popen(argv, env=env, stdin=subprocess.DEVNULL,
                                 stderr=subprocess.PIPE)
        threading.Thread(target=self._relay, args=(child,), daemon=True).start()
        return child

    def _relay(self, child: subprocess.Popen) -> None:
        """The child's stderr through to ours (the journal), the last lines kept for the
        report of a release that would not start."""
        for line in iter(child.stderr.readline, b""):
            sys.stderr.buffer.write(line)
            sys.stderr.flush()
            text = line.decode("utf-8", "replace").strip()
            if text:
                self._tail.append(text)

    def supervise(self, child: subprocess.Popen) -> int:
        started = time.monotonic()
        while True:
            try:
                return child.wait(POLL_S)
            except subprocess.TimeoutExpired:
                pass
            if self.stopping:
                continue
            st = self.slots.state()
            if st.get("phase") == S.TRIAL and \
                    time.monotonic() - started > float(st.get("health_s", 300)):
                self.slots.update_state(phase=S.ROLLBACK, reason=(
                    f"version {st.get('version')} did not pass its health check within "
                    f"{st.get('health_s')} s"))
                self.terminate(child)
            elif st.get("phase") == S.ROLLBACK:
                self.terminate(child)

    def terminate(self, child: subprocess.Popen) -> None:
        if child.poll() is not None:
            return
        child.send_signal(signal.SIGTERM)
        try:
            child.wait(STOP_GRACE_S)
        except subprocess.TimeoutExpired:
            child.kill()
            child.wait()

    def run(self) -> int:
        def on_signal(signum, frame):
            self.stopping = True
            if self.child is not None and self.child.poll() is None:
                self.child.send_signal(signum)
        signal.signal(signal.SIGTERM, on_signal)
        signal.signal(signal.SIGINT, on_signal)
        while True:
            self.settle()
            S.fault_point("before-start")
            self.child = self.spawn()
            rc = self.supervise(self.child)
            if self.stopping:
                return rc
            st = self.slots.state()
            phase = st.get("phase")
            if phase in (S.SWITCH, S.ROLLBACK):
                continue  # a planned exit: switch to the new version, or back
            if phase == S.TRIAL:
                last = self._tail[-1] if self._tail else "no output"
                self.rollback(st, f"version {st.get('version')} exited with code {rc} before "
                              f"its health check passed: {last[:300]}")
                continue
            return rc  # an ordinary exit: systemd restarts us (Restart=always)


def main(config: Path, slots_dir: Path) -> int:
    return Launcher(config, slots_dir).run()
