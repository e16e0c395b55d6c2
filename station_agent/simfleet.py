"""`loaxa sim fleet`: many protocol-faithful stations in one process, on one thread.

Each simulated station is the real station agent: its own Ed25519 key and SQLite store, the
real verification, schedule, runner and command code, and a simulated board, with a null
player that records the instant each playback would start. Its link is driven by one shared
epoll loop (``protocol.mqtt.SharedLoop``) instead of a thread of its own: paho's threaded
loop fails silently past ~340 clients in a process. A station is stepped when it has
something to do (a message, a play in progress or queued, a download) and otherwise once every
``idle_every_s`` (reports, heartbeats, health), so an idle fleet costs little.

Stores go under a memory-backed folder when there is one (``/dev/shm``): two thousand real
stations each commit to their own SD card in parallel; one disk taking all their fsyncs in
turn would measure the disk, not the protocol.
"""
from __future__ import annotations

import gc
import json
import logging
import os
import time
import weakref
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable

from audio.player import Outcome
from protocol.clock import Clock, SystemClock, iso
from protocol.envelope import Signer, public_to_text
from protocol.mqtt import Meter, SharedLoop
from protocol.storage import write

from .agent import Agent
from .config import StationConfig

log = logging.getLogger("loaxa.sim")
PREFIX = "sim-"
SEND_EVERY_S = 0.02  # within a long turn, what stations published goes out this often


class SharedKey:
    """The hub's public key as every station of one fleet holds it: a signature over the
    same bytes is checked once for the whole process. On real stations each Pi checks it on
    its own CPU, in parallel; this process stands in for N CPUs with one, and would otherwise
    measure one core verifying N copies of the same message (171 µs each here). Only
    signatures that verified are remembered: a forged or altered message is checked, and
    refused, every time. Bounded: the memory is dropped when it grows past ``limit``."""

    def __init__(self, public: Any, limit: int = 4096) -> None:
        self.public = public
        self.limit = limit
        self._good: set[tuple[bytes, bytes]] = set()
        self.checked = 0  # real verifications done (tests read it)

    def verify(self, signature: bytes, data: bytes) -> None:
        key = (signature, data)
        if key in self._good:
            return
        self.checked += 1
        self.public.verify(signature, data)  # raises InvalidSignature
        if len(self._good) >= self.limit:
            self._good.clear()
        self._good.add(key)


class NullPlayback:
    def __init__(self, clock: Clock, seconds: float) -> None:
        self._clock = clock
        self._end = clock.monotonic() + seconds
        self.outcome: Outcome | None = None

    def poll(self) -> Outcome | None:
        if self.outcome is None and self._clock.monotonic() >= self._end:
            self.outcome = Outcome(True, 0, "", False)
        return self.outcome

    def stop(self, timeout: float = 0.08) -> Outcome:
        if self.outcome is None:
            self.outcome = Outcome(False, -15, "", True)
        return self.outcome


class NullPlayer:
    """Plays nothing; tells ``on_start`` the instant each playback would start. A playback
    lasts ``seconds`` (or until stopped)."""

    def __init__(self, clock: Clock, on_start: Callable[[str, datetime], None],
                 seconds: float = 2.0) -> None:
        self.clock = clock
        self.on_start = on_start
        self.seconds = seconds
        self.volume = 1.0

    def start(self, path: Any) -> NullPlayback:
        self.on_start(Path(path).stem, self.clock.now())
        return NullPlayback(self.clock, self.seconds)

    def start_stream(self, url: str, duration_s: float, *, stall_s: float = 5.0) -> NullPlayback:
        self.on_start(url, self.clock.now())
        return NullPlayback(self.clock, min(duration_s, self.seconds))


def default_root() -> Path:
    shm = Path("/dev/shm")
    return shm if shm.is_dir() and os.access(shm, os.W_OK) else Path("/tmp")


def enrol(hub_home: Path, n: int, root: Path, *, group_size: int = 100) -> list[StationConfig]:
    """N simulated stations: keys and folders under ``root``, registered straight into the
    hub's store (public keys only) in one transaction; groups of ``group_size``. Stations
    already enrolled keep their keys."""
    from hub import config as hubconfig
    from hub.store import HubStore
    cfg = hubconfig.load(hub_home)
    hub_public = public_to_text(Signer.load(cfg.key_path, cfg.hub_id).public)
    store = HubStore(cfg.db_path)
    out, rows = [], []
    now = iso(datetime.now(timezone.utc))
    try:
        known = {r["id"] for r in store.q("SELECT id FROM stations WHERE id LIKE ?",
                                          [PREFIX + "%"])}
        for i in range(n):
            sid, group = f"{PREFIX}{i:05d}", f"{PREFIX}g{i // group_size:03d}"
            d = root / sid
            d.mkdir(parents=True, exist_ok=True)
            key = d / "station.key"
            signer = Signer.load(key, f"station:{sid}") if key.exists() else None
            if signer is None:
                signer = Signer.generate(f"station:{sid}")
                signer.save(key)
            if sid not in known:
                rows.append((sid, group, public_to_text(signer.public)))
            out.append(station_config(sid, (group,), d, key, hub_public, cfg))
        with store.lock, write(store.db):
            for sid, group, public in rows:
                store.db.execute("INSERT INTO stations VALUES (?, ?, ?, ?)",
                                 [sid, f"Trạm mô phỏng {sid}", public, now])
                store.db.execute("INSERT OR IGNORE INTO groups(id, name) VALUES (?, ?)",
                                 [group, group])
                store.db.execute("INSERT INTO station_groups VALUES (?, ?)", [sid, group])
    finally:
        store.close()
    return out


def station_config(sid: str, groups: tuple[str, ...], data: Path, key: Path, hub_public: str,
                   hub: Any) -> StationConfig:
    return StationConfig(
        station_id=sid, name=sid, groups=groups, data_dir=data, station_key=key,
        hub_public=hub_public, hub_sender=hub.hub_id, prefix=hub.prefix, broker=hub.broker,
        audio_device="null", warmup_ms=0, hardware_backend="simulated", wiring={},
        sim={"amp_warmup_ms": 0}, amp_hold_ms=0, heartbeat_s=60, selftest_at=None,
        health_every_s=60.0, min_free_bytes=0)


@dataclass
class Start:
    station: str
    content: str
    at: datetime
    # the same start on a station with a CPU of its own (StationClocks), seconds since the
    # epoch; None when it was not metered
    own_cpu_at: float | None = None
    event: str = "start"  # or "stored": the station holds the verified audio ``content``
    # when the last message the station had taken by then (for a stored file, its last
    # chunk) reached this host, seconds since the epoch (the kernel's receive timestamp):
    # the broker's delivery, told from the station's own work
    arrived_at: float | None = None


_cpu = time.thread_time  # CLOCK_THREAD_CPUTIME_ID
_collections: "weakref.WeakSet[StationClocks]" = weakref.WeakSet()


def _on_collection(phase: str, info: dict) -> None:
    for clocks in list(_collections):
        clocks.collecting(phase == "start")


class StationClocks(Meter):
    """Each station's own clocks, as if it had a CPU of its own (real stations do): this
    process runs N stations' work in turn on one thread, so a station's recorded start waits
    for the work of every station stepped before it, which no real station does.

    A station has two clocks, as a real agent has two threads: its link's (reads and writes)
    and its agent's (its turns). Each advances by the work done on it, measured here, and
    never runs ahead of its input: a read moves the link's clock up to the kernel's receive
    timestamp of the bytes it returned (``SharedLoop.meter``); the agent's turn taking a
    message moves the agent's clock up to when its link read it (``Inbound.ready_at``). So
    a commanded start's ``own_cpu_at`` is when the command (and any audio it needed)
    reached this host through the real broker plus the station's own measured work on it:
    never earlier than was physically possible, and ``at`` at the latest.

    Work is this thread's CPU time (``_cpu``), not the wall clock: on two cores shared with
    the broker, the hub and the benchmark, the OS takes the CPU from this thread in the
    middle of a station's work now and then (one station in 2,000 was charged 50-90 ms for
    a file that costs 1.6 ms), which a station with a CPU of its own does not suffer. The
    stations store on tmpfs, so no storage wait goes uncounted.

    Nor is a garbage collection charged to any station (``uncharged_gc_s`` adds them up):
    this process's collections walk 2,000 stations' objects, and a full one (50-100 ms
    measured) landed on whichever station allocated next; a station's own agent collects
    a heap 2,000 times smaller."""

    def __init__(self) -> None:
        self.link: dict[Any, float] = {}
        self.agent: dict[Any, float] = {}
        self.received: dict[Any, float] = {}  # each link's newest kernel receive timestamp read
        self.current: Any = None
        self._clocks = self.link
        self._since = 0.0
        self.uncharged_gc_s = 0.0
        self._gc_from = 0.0
        _collections.add(self)
        if _on_collection not in gc.callbacks:
            gc.callbacks.append(_on_collection)

    def collecting(self, started: bool) -> None:
        """A garbage collection starts or ends: its time is moved out of the current
        station's interval."""
        now = _cpu()
        if started:
            self._gc_from = now
            return
        spent = now - self._gc_from
        self.uncharged_gc_s += spent
        self._since += spent

    def begin(self, station: Any) -> None:
        """Its link's reads and writes."""
        self.current, self._clocks, self._since = station, self.link, _cpu()

    def begin_turn(self, station: Any) -> None:
        """Its agent's turn."""
        self.current, self._clocks, self._since = station, self.agent, _cpu()

    def arrived(self, at: float) -> None:
        """Nothing that follows happens before ``at`` on the current clock."""
        now = _cpu()
        c, clocks = self.current, self._clocks
        if clocks is self.link:
            self.received[c] = at
        clocks[c] = max(clocks.get(c, 0.0) + now - self._since, at)
        self._since = now

    def end(self) -> None:
        c, clocks = self.current, self._clocks
        clocks[c] = clocks.get(c, 0.0) + _cpu() - self._since
        self.current = None

    def now(self, station: Any) -> float | None:
        """The station's current clock now, if it is the one at work (else None)."""
        if station is None or station is not self.current:
            return None
        return self._clocks.get(station, 0.0) + _cpu() - self._since

    def arrival(self, station: Any) -> float | None:
        """When the newest bytes its link has read reached this host."""
        return self.received.get(station)


class SimFleet:
    def __init__(self, configs: list[StationConfig], *, clock: Clock | None = None,
                 play_s: float = 2.0, idle_every_s: float = 5.0,
                 on_start: Callable[[Start], None] | None = None,
                 on_stored: Callable[[Start], None] | None = None) -> None:
        self.clock = clock or SystemClock()
        self.loop = SharedLoop()
        self.idle_every_s = idle_every_s
        self.starts: list[Start] = []
        self._on_start = on_start
        self.work = StationClocks()
        self.loop.meter = self.work
        self._taken_arrived: dict[Agent, float | None] = {}  # the message each took last
        self.agents: list[Agent] = []
        self._by_id: dict[str, Agent] = {}
        for cfg in configs:
            player = NullPlayer(self.clock, self._recorder(cfg.station_id), play_s)
            self.agents.append(Agent(cfg, clock=self.clock, player=player, loop=self.loop,
                                     status_file=False))
            self._by_id[cfg.station_id] = self.agents[-1]
            self._meter_messages(self.agents[-1])
            if on_stored:
                self._record_stored(self.agents[-1], on_stored)
        shared: dict[str, SharedKey] = {}
        for a in self.agents:
            a.hub_keys.wrap(lambda kid, pub: shared.setdefault(kid, SharedKey(pub)))
        self._by_link = {a.link: a for a in self.agents}
        self._active: set[Agent] = set()   # stations with something to do: stepped each turn
        self._cursor = 0
        self._idle_at = time.monotonic()
        self._reports_at = self._idle_at  # when the fleet last let reports go
        self._to_report: set[Agent] = set()  # stepped since: their reports may be due
        self._to_settle: set[Agent] = set()  # stepped since: what they started to record
        self._settled_at = self._idle_at
        self._sent_at = self._idle_at

    def _meter_messages(self, a: Agent) -> None:
        """A message is taken no earlier than its link read it (StationClocks)."""
        handle, work = a.handle, self.work

        def taken(msg: Any) -> None:
            ready = getattr(msg, "ready_at", None)
            if ready is not None and work.current is a.link:
                work.arrived(ready)
            self._taken_arrived[a] = getattr(msg, "arrived_at", None)
            handle(msg)
        a.handle = taken

    def _record_stored(self, a: Agent, on_stored: Callable[[Start], None]) -> None:
        """``on_stored`` for each audio file the station comes to hold (benchmarks)."""
        keep = a.store.keep_audio

        def kept(sha: str, at: datetime, **kw: Any) -> int | None:
            out = keep(sha, at, **kw)
            on_stored(Start(a.id, sha, self.clock.now(), self._own_cpu_at(a.id), "stored",
                            self._taken_arrived.get(a)))
            return out
        a.store.keep_audio = kept

    def _recorder(self, sid: str) -> Callable[[str, datetime], None]:
        def record(content: str, at: datetime) -> None:
            a = self._by_id.get(sid)
            s = Start(sid, content, at, self._own_cpu_at(sid), "start",
                      self._taken_arrived.get(a) if a is not None else None)
            self.starts.append(s)
            if self._on_start:
                self._on_start(s)
        return record

    def _own_cpu_at(self, sid: str) -> float | None:
        a = self._by_id.get(sid)
        return self.work.now(a.link) if a is not None else None

    def start(self) -> None:
        for a in self.agents:
            a.start()
        # N stations' long-lived objects (stores, runners, links, keys: millions of them at
        # 2,000) would otherwise be traversed by every full garbage collection, a pause of
        # tens of milliseconds landing on whichever station allocates next
        gc.collect()
        gc.freeze()

    def connected(self) -> int:
        return sum(a.link.connected.is_set() for a in self.agents)

    def step(self, timeout: float = 0.01) -> None:
        """One turn: network events; then every station that had traffic or has something
        to do (a play, a queued command, a download), stepped until it has not; then a slice
        of the others, so each gets a step every ``idle_every_s``."""
        self.loop.poll(0 if self._active else timeout)
        touched, self.loop.touched = self.loop.touched, set()
        for link in touched:
            a = self._by_link.get(link)
            if a is not None:
                self._active.add(a)
        now = time.monotonic()
        # idle steps wait while stations have work (a command, a transfer), up to three
        # periods: on real stations each does its idle work on its own CPU, beside the
        # work at hand; here they would take turns with it on one
        behind = now - self._idle_at
        share = 0 if self._active and behind < 3 * self.idle_every_s else \
            int(len(self.agents) * behind / self.idle_every_s)
        full = set()
        if share:
            self._idle_at = now
            for _ in range(min(share, len(self.agents))):
                full.add(self.agents[self._cursor % len(self.agents)])
                self._cursor += 1
        # a station only waiting (for a push to go on, a fetch to be retried) is stepped
        # when it has a request to make, not every turn
        mono = self.clock.monotonic()
        stepped = [a for a in self._active | full
                   if a in full or a.link in touched or a.runner.busy
                   or not a.link.inbox.empty() or mono >= a.request_due_at()]
        work = self.work
        for a in stepped:
            work.begin_turn(a.link)
            try:
                a.step(light=a not in full, settle=False)
            finally:
                work.end()
            self._send_now()
        # what follows a start (its records), once no station had new traffic this turn
        # (or a second on): every station takes the air before any does its bookkeeping,
        # as separate CPUs would let them
        self._to_settle.update(stepped)
        if self._to_settle and (not touched or now - self._settled_at >= 1.0):
            self._settled_at = now
            for a in self._to_settle:
                work.begin_turn(a.link)
                try:
                    a.settle()
                finally:
                    work.end()
                self._send_now()
            self._to_settle = set()
        # reports after every busy station has had its turn, and while audio is arriving
        # at any station, after the transfers (up to three idle periods): a real station
        # sends them on its own CPU beside its transfer; here they would delay the others'
        self._to_report.update(a for a in stepped if a not in full)
        if not self._to_settle and (not any(a.receiving for a in self._active) or
                                    now - self._reports_at >= 3 * self.idle_every_s):
            self._reports_at = now
            left = set()
            for a in self._to_report:
                work.begin_turn(a.link)
                try:
                    if not a.flush_due():
                        left.add(a)  # sent less than half a second ago: next time
                finally:
                    work.end()
                self._send_now()
            self._to_report = left
        for a in stepped:
            if not a.busy:
                self._active.discard(a)
            elif a in full:
                self._active.add(a)

    def _send_now(self) -> None:
        """What the stations stepped so far published goes to the broker now, not at the
        end of the turn: a turn of 2,000 births took 4.8 s, and every station's messages
        waited for the last one's (a real station sends as it publishes). What arrived for
        any station is read now too (its link's work, not its agent's: the messages wait in
        its inbox for its next turn), as a station's own link thread reads as bytes come:
        left in the socket, a 200 KB chunk's last segment took the kernel receive time of
        whatever came after it (TCP merges a new segment into an unread one), and 751
        stations' files were stamped 0.33 s late by the hub's acknowledgements."""
        now = time.monotonic()
        if now - self._sent_at >= SEND_EVERY_S:
            self._sent_at = now
            self.loop.poll(0)

    def run(self, until: Callable[[], bool]) -> None:
        while not until():
            self.step()

    def audio_received(self) -> dict[str, int]:
        """Bytes of audio messages each station has received, over its store's life (its
        own counter)."""
        return {a.id: a.store.counters().get("audio.bytes_received", 0) for a in self.agents}

    def close(self) -> None:
        for a in self.agents:
            try:
                a.stop()
            except Exception:  # a station that fails to stop must not keep the others
                log.exception("stopping %s", a.id)


def register(sub) -> None:
    sim = sub.add_parser("sim", help="simulated stations for load and scale tests")
    ss = sim.add_subparsers(dest="sim_cmd", required=True)
    p = ss.add_parser("fleet", help="N protocol-faithful stations in one process")
    p.add_argument("--stations", type=int, required=True)
    p.add_argument("--hub-home", type=Path, required=True)
    p.add_argument("--root", type=Path, help="where the stations' folders go "
                   "(default /dev/shm/loaxa-sim or /tmp/loaxa-sim)")
    p.add_argument("--play-s", type=float, default=2.0, help="how long a null playback lasts")
    p.add_argument("--starts", type=Path, help="append each recorded start, and each audio "
                   "file stored, here (JSON lines)")
    p.set_defaults(fn=cmd_fleet)


def cmd_fleet(args) -> int:
    import signal
    root = args.root or default_root() / "loaxa-sim"
    t0 = time.monotonic()
    configs = enrol(args.hub_home, args.stations, root)
    out = open(args.starts, "a", buffering=1) if args.starts else None

    def on_event(s: Start) -> None:
        if out:
            out.write(json.dumps({"event": s.event, "station": s.station,
                                  "content": s.content, "at": s.at.timestamp(),
                                  "own_cpu_at": s.own_cpu_at,
                                  "arrived_at": s.arrived_at}) + "\n")
    fleet = SimFleet(configs, play_s=args.play_s, on_start=on_event,
                     on_stored=on_event if out else None)
    stop = []
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.append(1))
    print(f"sim fleet: connecting {len(configs)} stations", flush=True)
    fleet.start()
    print(f"sim fleet: {len(configs)} stations under {root} (ready in "
          f"{time.monotonic() - t0:.1f} s)", flush=True)
    shown, looked = -1, 0.0
    try:
        def until() -> bool:
            nonlocal shown, looked
            if time.monotonic() - looked >= 1.0:  # counting 2,000 links is not free
                looked = time.monotonic()
                c = fleet.connected()
                if c != shown:
                    shown = c
                    print(f"sim fleet: {c}/{len(configs)} connected", flush=True)
            return bool(stop)
        # a developer's cProfile of the loop; with LOAXA_SIM_PROFILE_ON_SIGNAL, only between
        # SIGUSR1 and SIGUSR2 (one phase of a benchmark)
        profile = os.environ.get("LOAXA_SIM_PROFILE")
        if profile:
            import cProfile
            prof = cProfile.Profile()
            if os.environ.get("LOAXA_SIM_PROFILE_ON_SIGNAL"):
                signal.signal(signal.SIGUSR1, lambda *_: prof.enable())
                signal.signal(signal.SIGUSR2, lambda *_: prof.disable())
                try:
                    fleet.run(until)
                finally:
                    prof.disable()
                    prof.dump_stats(profile)
            else:
                try:
                    prof.runcall(fleet.run, until)
                finally:
                    prof.dump_stats(profile)
        else:
            fleet.run(until)
    finally:
        if out:  # what a benchmark compares with what the stations lacked
            for sid, n in sorted(fleet.audio_received().items()):
                out.write(json.dumps({"event": "audio_in", "station": sid, "bytes": n}) + "\n")
        fleet.close()
        print(f"sim fleet: stopped; {fleet.work.uncharged_gc_s:.2f} s of garbage collection "
              "charged to no station's own clock", flush=True)
        if out:
            out.close()
    return 0
