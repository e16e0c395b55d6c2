"""`loaxa demo`: broker, hub and three simulated stations on this machine, one announcement.

Everything is real: mosquitto on a free loopback port, the hub and each station as their own
processes with their own SQLite files, speech synthesised and prepared with ffmpeg, signed
bundles, audio fetched by hash and played through ALSA into a file sink per station.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from datetime import timedelta
from pathlib import Path

from audio.player import file_sink_config
from hub.display import outcome_vi, show
from protocol.clock import SystemClock

from .broker import BrokerError, EmbeddedBroker, Mosquitto, start_broker

ANNOUNCEMENT = ("Thông báo của Ủy ban nhân dân xã. Đây là bản tin thử nghiệm của hệ thống "
                "loa xã. Xin cảm ơn bà con.")
STATIONS = [("xa-an-binh", "Đài truyền thanh xã An Bình"),
            ("xa-tan-phu", "Đài truyền thanh xã Tân Phú"),
            ("xa-hoa-loc", "Đài truyền thanh xã Hòa Lộc")]


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("demo", help="broker, hub and three simulated stations, one announcement")
    p.add_argument("--once", action="store_true",
                   help="plain output; exit 0 once every station's playback is stored at the hub")
    p.add_argument("--lead", type=float, default=8.0, help="seconds until the announcement")
    p.add_argument("--timeout", type=float, default=60.0)
    p.add_argument("--workdir", type=Path, help="keep everything here (default: a temp folder)")
    p.add_argument("--text", default=ANNOUNCEMENT)
    p.add_argument("--broker", choices=["auto", "mosquitto", "embedded"], default="auto",
                   help="auto: mosquitto if installed, else the embedded amqtt broker")
    p.add_argument("--web", metavar="ADDR",
                   help="the web console's HOST:PORT (default 127.0.0.1:8080, none with "
                   "--once; `--web none`: no console); without --once the demo keeps "
                   "running for it until Ctrl-C")
    p.set_defaults(fn=cmd_demo)


def _spawn(args: list[str], log: Path) -> subprocess.Popen:
    f = open(log, "ab")
    try:
        return subprocess.Popen([sys.executable, "-m", "deploy.cli", *args], stdout=f,
                                stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    finally:
        f.close()


def _read_status(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


def cmd_demo(args) -> int:
    from hub import config as hubconfig
    from hub.admin import add_content_text, announce, init_hub
    from .local import add_local_station
    from hub.store import HubStore
    from schedules import Priority

    work = args.workdir or Path(tempfile.mkdtemp(prefix="loaxa-demo-"))
    work.mkdir(parents=True, exist_ok=True)
    logs = work / "logs"
    logs.mkdir(exist_ok=True)
    clock = SystemClock()
    t0 = time.monotonic()
    procs: list[subprocess.Popen] = []
    try:
        broker = {"auto": start_broker, "mosquitto": lambda d: Mosquitto(d).start(),
                  "embedded": lambda d: EmbeddedBroker(d).start()}[args.broker](work / "broker")
    except BrokerError as exc:
        print(f"loaxa demo: {exc}", file=sys.stderr)
        return 3
    try:
        home = work / "hub"
        init_hub(home, broker_host="127.0.0.1", broker_port=broker.port,
                 protocol=broker.protocol)
        cfg = hubconfig.load(home)
        for sid, name in STATIONS:
            sdir = work / "stations" / sid
            sdir.mkdir(parents=True, exist_ok=True)
            (sdir / "sink.conf").write_text(file_sink_config(sdir / "sink.wav"))
            add_local_station(cfg, sid, name=name, groups=["demo"], out=sdir,
                              audio_device="loaxa_sink", alsa_config="sink.conf")
        store = HubStore(cfg.db_path)
        if args.web is None:
            args.web = "none" if args.once else "127.0.0.1:8080"
        web = None if args.web == "none" else args.web
        password = None
        if web:
            from hub import accounts, console
            console.set_group_kind(store, "demo", "commune", name="Các xã demo")
            password = accounts.add_user(store, "admin", name="Quản trị demo", role="admin",
                                         now=clock.now(), by="demo")
        content = add_content_text(store, args.text, title="Bản tin thử nghiệm",
                                   now=clock.now(), timeout=3.0)
        when = clock.now() + timedelta(seconds=args.lead)
        announce(store, content=content, when=when, priority=Priority.UU_TIEN, target="all",
                 every=None, now=clock.now())
        print(f"loaxa demo: thư mục / folder {work}")
        print(f"  broker {type(broker).__name__.lower()} 127.0.0.1:{broker.port} "
              f"(MQTT {broker.protocol}); giọng đọc / voice "
              f"{content['engine']}, {content['duration_ms'] / 1000:.1f} s, {content['size']} B")
        print(f"  phát lúc / plays at {show(when)} (Asia/Ho_Chi_Minh)")
        procs.append(_spawn(["hub", "--home", str(home), "serve",
                             *(["--web", web] if web else [])], logs / "hub.log"))
        if web:
            print(f"  bảng điều khiển / web console: http://{web}/  tài khoản / user: admin  "
                  f"mật khẩu dùng một lần / one-time password: {password}")
            print(f"  (thêm người dùng / more users: loaxa hub --home {home} user add NAME "
                  f"--role editor|approver|duty|commune|viewer)")
        for sid, _ in STATIONS:
            procs.append(_spawn(["agent", "run", "--config",
                                 str(work / "stations" / sid / "station.toml")],
                                logs / f"{sid}.log"))
        return _watch(args, store, work, procs, t0)
    finally:
        for p in procs:
            p.terminate()
        for p in procs:
            try:
                p.wait(5)
            except subprocess.TimeoutExpired:
                p.kill()
        broker.stop()


def _watch(args, store, work: Path, procs, t0: float) -> int:
    live = not args.once and sys.stdout.isatty()
    last_text = ""
    deadline = t0 + args.timeout
    while True:
        rows = []
        done = 0
        for sid, _ in STATIONS:
            st = _read_status(work / "stations" / sid / "data" / "status.json")
            pb = store.q("SELECT outcome, started_at FROM playbacks WHERE station_id = ? "
                         "AND item_id != 'selftest' ORDER BY seq DESC LIMIT 1", [sid])
            hub_state = store.state(sid) or {}
            done += bool(pb)
            rows.append([sid, "có" if hub_state.get("online") else "không",
                         str(st.get("active_version", "—")),
                         "đủ" if st and st.get("audio_missing") == 0 and st.get("active_version")
                         else "chưa",
                         "BẬT" if st.get("relay") else "tắt",
                         "đang phát" if st.get("playing") else "—",
                         f"{outcome_vi(pb[0]['outcome'])} {show(pb[0]['started_at'])}" if pb else "chưa"])
        head = ["Trạm", "Kết nối", "Bản phát", "Âm thanh", "Rơ-le", "Phát", "Báo cáo tại hub"]
        table = [head] + rows
        widths = [max(len(r[i]) for r in table) for i in range(len(head))]
        text = "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths)) for r in table)
        if live:
            print("\033[H\033[J" + text, flush=True)
        elif text != last_text:
            print(f"[{time.monotonic() - t0:5.1f}s]\n{text}", flush=True)
        last_text = text
        if done == len(STATIONS):
            outcomes = [store.q("SELECT outcome FROM playbacks WHERE station_id = ? AND "
                                "item_id != 'selftest'", [sid]) for sid, _ in STATIONS]
            ok = all(o and o[-1]["outcome"] == "played" for o in outcomes)
            print(f"loaxa demo: {'xong' if ok else 'LỖI'} / {'done' if ok else 'FAILED'} after "
                  f"{time.monotonic() - t0:.1f}s; âm thanh đã phát / played audio: "
                  f"{work}/stations/*/sink.wav")
            if ok and args.web != "none" and not args.once:
                print("loaxa demo: bảng điều khiển vẫn chạy; Ctrl-C để dừng / the console "
                      "keeps running; Ctrl-C to stop", flush=True)
                try:
                    while all(p.poll() is None for p in procs):
                        time.sleep(1)  # waiting for Ctrl-C, not for a schedule
                except KeyboardInterrupt:
                    return 0
                print(f"loaxa demo: a process exited (see {work}/logs)", file=sys.stderr)
                return 1
            return 0 if ok else 1
        dead = [p for p in procs if p.poll() is not None]
        if dead:
            print(f"loaxa demo: a process exited early (see {work}/logs)", file=sys.stderr)
            return 1
        if time.monotonic() > deadline:
            print(f"loaxa demo: only {done}/{len(STATIONS)} playback records reached the hub "
                  f"within {args.timeout:.0f}s (see {work}/logs)", file=sys.stderr)
            return 1
        time.sleep(0.5)  # redraw interval of a live display
