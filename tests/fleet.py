"""A hub (in this process, on its own thread) and station agents (real subprocesses) on one
real mosquitto, sharing a settable clock file so tests move time instead of sleeping."""
from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import threading
from datetime import datetime, timedelta
from pathlib import Path

from audio.player import file_sink_config
from hub import config as hubconfig
from deploy.local import add_local_station
from hub.admin import add_content_text, announce, init_hub
from hub.link import HubLink
from hub.store import HubStore
from protocol.clock import FileClock
from protocol.envelope import Signer
from protocol.topics import Topics
from schedules import Priority

from conftest import ROOT, wait_for


def patch_toml(path: Path, section: str, key: str, value) -> None:
    """Set ``key = value`` in ``[section]`` of a TOML file written by `station add`."""
    from station_agent.enrol import set_toml
    path.write_text(set_toml(path.read_text(), section, key, value))


# a message that plays for several seconds (stop, preempt, kill it while it plays)
LONG = ("Thông báo của Ủy ban nhân dân xã về lịch tiêm chủng mở rộng cho trẻ em dưới năm tuổi, "
        "đề nghị các gia đình đưa trẻ đến trạm y tế xã đúng giờ và mang theo sổ tiêm chủng. ")


class Fleet:
    def __init__(self, tmp: Path, broker, station_ids: list[str], *, start: datetime,
                 station: dict | None = None, tls: bool = False) -> None:
        """``station``: extra settings for every station.toml, {section: {key: value}}.
        ``tls``: ``broker`` is a ProductionBroker (not started): the hub makes its CA
        (`hub pki init`), the broker is given its certificates as docs/deploy.md says and
        started, and the hub and every station connect with their own certificates."""
        tls = tls or getattr(broker, "production", False)  # tests/faults_tls: over TLS
        self.tmp = tmp
        self.broker = broker
        self.clock_file = tmp / "clock"
        self.clock_files = [self.clock_file] + [tmp / f"clock-{sid}" for sid in station_ids]
        for f in self.clock_files:
            FileClock.set_time(f, start)
        self.clock = FileClock(self.clock_file)
        self.home = tmp / "hub"
        self.signer = init_hub(self.home, broker_host="127.0.0.1", broker_port=broker.port,
                               clock=f"file:{self.clock_file}")
        if tls:
            self._tls(broker)
        self.cfg = hubconfig.load(self.home)
        self.ids = station_ids
        self.procs: dict[str, subprocess.Popen] = {}
        for sid in station_ids:
            d = self.station_dir(sid)
            d.mkdir(parents=True)
            (d / "sink.conf").write_text(file_sink_config(d / "sink.wav"))
            add_local_station(self.cfg, sid, name=f"Đài xã {sid}", groups=["g1"], out=d,
                              audio_device="loaxa_sink", alsa_config="sink.conf",
                              clock=f"file:{tmp / f'clock-{sid}'}")
            # the daily self-test off unless a test asks for it: it would add its own record
            settings = {"station": {"selftest_at": ""}}
            for section, values in (station or {}).items():
                settings.setdefault(section, {}).update(values)
            for section, values in settings.items():
                for k, v in values.items():
                    patch_toml(d / "station.toml", section, k, v)
        self.store = HubStore(self.cfg.db_path)
        self.hub: HubLink | None = None
        self._hub_stop = threading.Event()
        self._hub_thread: threading.Thread | None = None

    def _tls(self, broker) -> None:
        from hub.admin import pki_init
        pki = pki_init(self.home, hosts=("127.0.0.1", "localhost"))
        broker.use_hub_pki(pki["ca"].parent)
        broker.start()
        for key, value in (("tls_ca", "pki/ca.crt"), ("tls_cert", "pki/hub.crt"),
                           ("tls_key", "pki/hub.key")):
            patch_toml(self.home / "hub.toml", "broker", key, value)

    # -- parts -----------------------------------------------------------------------------
    def station_dir(self, sid: str) -> Path:
        return self.tmp / "stations" / sid

    def route(self, sid: str, port: int) -> None:
        """Point a station at another port (a LinkProxy in front of the broker)."""
        patch_toml(self.station_dir(sid) / "station.toml", "broker", "port", port)

    def start_hub_process(self) -> None:
        """`loaxa hub serve` as its own process, so a test can SIGKILL it."""
        log = open(self.tmp / "hub.log", "ab")
        self.hub_proc = subprocess.Popen(
            [sys.executable, "-m", "deploy.cli", "hub", "--home", str(self.home), "serve"],
            stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            env=dict(os.environ, PYTHONPATH=str(ROOT)), cwd=ROOT)
        log.close()

    def start_hub(self) -> None:
        # its own connection, like `loaxa hub serve` beside the CLI: commits made through
        # self.store are seen as changes (PRAGMA data_version)
        self._hub_store = HubStore(self.cfg.db_path)
        self.hub = HubLink(store=self._hub_store, signer=Signer.load(self.cfg.key_path, "hub"),
                              topics=Topics(self.cfg.prefix), broker=self.cfg.broker,
                              clock=self.clock, key_path=self.cfg.key_path)
        self._hub_stop.clear()
        self._hub_thread = threading.Thread(target=self.hub.run, args=(self._hub_stop,),
                                            daemon=True)
        self._hub_thread.start()
        assert self.hub.link.wait_connected(10), "hub did not connect"

    def stop_hub(self) -> None:
        self._hub_stop.set()
        if self._hub_thread:
            self._hub_thread.join(10)
            self._hub_thread = None
            self._hub_store.close()

    def start_station(self, sid: str, *, launch: bool = False,
                      env: dict[str, str] | None = None) -> None:
        """``launch``: under `agent launch` (the update launcher, as systemd runs it), in a
        session of its own so that a simulated power cut (LOAXA_UPDATE_KILL_AT) takes the
        launcher and its agent together and nothing else."""
        log = open(self.station_dir(sid) / "agent.log", "ab")
        env = dict(os.environ, PYTHONPATH=str(ROOT), **(env or {}))
        self.procs[sid] = subprocess.Popen(
            [sys.executable, "-m", "deploy.cli", "agent", "launch" if launch else "run",
             "--config", str(self.station_dir(sid) / "station.toml")],
            stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env, cwd=ROOT,
            start_new_session=launch)
        log.close()

    def start(self) -> "Fleet":
        self.start_hub()
        for sid in self.ids:
            self.start_station(sid)
        return self

    def stop(self) -> None:
        for p in self.procs.values():
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        for p in self.procs.values():
            try:
                p.wait(10)
            except subprocess.TimeoutExpired:
                p.kill()
        self.stop_hub()
        if getattr(self, "hub_proc", None) and self.hub_proc.poll() is None:
            self.hub_proc.kill()
            self.hub_proc.wait()
        self.store.close()

    def log(self, sid: str) -> str:
        return (self.station_dir(sid) / "agent.log").read_text(errors="replace")

    # -- actions ---------------------------------------------------------------------------
    def pass_time(self, until: datetime) -> None:
        """Time goes by until ``until`` (hub time) for the hub and every station, each clock
        keeping its own error (no sleeping)."""
        delta = (until - self.clock.now()).total_seconds()
        for f in self.clock_files:
            FileClock.pass_time(f, FileClock(f).now() + timedelta(seconds=delta))

    def step_clock(self, sid: str, when: datetime) -> None:
        """Set one station's wall clock (as after a power cut or a bad NTP answer)."""
        FileClock.set_time(self.tmp / f"clock-{sid}", when)

    def content(self, text: str) -> dict:
        return add_content_text(self.store, text, title=text[:40], now=self.clock.now(),
                                engine="espeak-ng")

    def schedule(self, content: dict, when: datetime, *, priority=Priority.THONG_THUONG,
                 target: str = "all", late_start_s: int = 300) -> str:
        return announce(self.store, content=content, when=when, priority=priority,
                        target=target, every=None, late_start_s=late_start_s,
                        now=self.clock.now())

    def give(self, action: str, target: str, body: dict, ttl_s: int = 300) -> str:
        """A signed command, stored as `loaxa hub …` stores it; the hub publishes it."""
        from hub.admin import issue_command
        return issue_command(self.cfg, self.store, action, target, body, now=self.clock.now(),
                             ttl_s=ttl_s)["id"]

    def command_states(self, cid: str) -> dict[str, str]:
        return {t["station_id"]: t["state"] for t in self.store.command_targets(cid)}

    def wait_online(self, ids=None) -> None:
        for sid in ids or self.ids:
            wait_for(lambda: (self.store.state(sid) or {}).get("online") == 1, 30,
                     f"{sid} online")

    # -- observations ----------------------------------------------------------------------
    def status(self, sid: str) -> dict:
        try:
            return json.loads((self.station_dir(sid) / "data" / "status.json").read_text())
        except (OSError, ValueError):
            return {}

    def station_db(self, sid: str, sql: str, params=()) -> list[tuple]:
        path = self.station_dir(sid) / "data" / "station.db"
        conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=10)
        try:
            return conn.execute(sql, params).fetchall()
        finally:
            conn.close()

    def wait_active(self, version: int, timeout: float = 30.0, ids=None) -> None:
        for sid in ids or self.ids:
            wait_for(lambda: self.status(sid).get("active_version") == version, timeout,
                     f"{sid} to activate bundle {version}\n{self.log(sid)[-2000:]}")

    def playbacks(self, sid: str | None = None) -> list[dict]:
        if sid:
            return self.store.q("SELECT * FROM playbacks WHERE station_id = ? ORDER BY seq", [sid])
        return self.store.q("SELECT * FROM playbacks ORDER BY station_id, seq")

    def hub_events(self, sid: str, kind: str) -> list[dict]:
        rows = self.store.q("SELECT * FROM events WHERE station_id = ? AND kind = ? ORDER BY seq",
                            [sid, kind])
        for r in rows:
            r["data"] = json.loads(r["data"])
        return rows
