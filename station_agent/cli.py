"""`loaxa agent …`"""
from __future__ import annotations

import argparse
import logging
import signal
import threading
from pathlib import Path

from . import config


def register(sub: argparse._SubParsersAction) -> None:
    agent = sub.add_parser("agent", help="the station agent")
    sa = agent.add_subparsers(dest="agent_cmd", required=True)
    p = sa.add_parser("run", help="run the station")
    p.add_argument("--config", type=Path, required=True)
    p.set_defaults(fn=cmd_run)
    p = sa.add_parser("launch", help="run the station under the update launcher (what systemd "
                      "runs): the agent from the current slot, switched and rolled back as an "
                      "update goes (docs/update.md)")
    p.add_argument("--config", type=Path, required=True)
    p.set_defaults(fn=cmd_launch)
    p = sa.add_parser("check", help="validate station.toml and what it names (key, data "
                      "folder, TLS files, GPIO library, sound device) and exit")
    p.add_argument("--config", type=Path, required=True)
    p.add_argument("--user", help="the user the service runs as (default: you); checks that it "
                   "can read and write what it must")
    p.add_argument("--no-device", action="store_true",
                   help="do not open the sound device (it plays 20 ms of silence)")
    p.set_defaults(fn=cmd_check)
    p = sa.add_parser("keygen", help="make this station's signing key (once) and print its "
                      "public key for `loaxa hub station key`")
    p.add_argument("--config", type=Path, required=True)
    p.set_defaults(fn=cmd_keygen)
    p = sa.add_parser("enrol", help="make this system the station of an enrolment (as root): "
                      "user, /etc/loaxa, key, systemd unit, chrony")
    p.add_argument("enrolment", type=Path, help="the folder or .tar.gz `hub station add` wrote")
    p.add_argument("--root", type=Path, default=Path("/"),
                   help="write into this directory instead of the system (a scratch root)")
    p.add_argument("--audio-device", help="ALSA device (default: as the enrolment says)")
    p.add_argument("--hub-ntp", help="the hub's NTP server (default: the broker's host)")
    p.add_argument("--pin", help="the PIN of the station's web page (`agent console`)")
    p.set_defaults(fn=cmd_enrol)
    p = sa.add_parser("console", help="the station's own web page (LAN, Vietnamese, PIN)")
    p.add_argument("--config", type=Path, required=True)
    p.add_argument("--addr", default="0.0.0.0:8081", help="HOST:PORT (the station's LAN)")
    p.set_defaults(fn=cmd_console)
    p = sa.add_parser("pin", help="set the PIN of the station's web page")
    p.add_argument("--config", type=Path, required=True)
    p.add_argument("--pin", help="the PIN (asked for when not given)")
    p.set_defaults(fn=cmd_pin)
    p = sa.add_parser("status", help="this station's own state: what plays now and next, and "
                      "why something does not play")
    p.add_argument("--config", type=Path, required=True)
    p.add_argument("--json", action="store_true")
    p.set_defaults(fn=cmd_status)
    p = sa.add_parser("fault", help="inject or clear a fault on a running simulated station")
    p.add_argument("--config", type=Path, required=True)
    p.add_argument("action", choices=["inject", "clear", "list"])
    p.add_argument("fault", nargs="?", help="amp_dead, amp_protect, relay_stuck_open, "
                   "relay_stuck_closed, zone_stuck_open, mains_lost, ups_battery_low, silent")
    p.set_defaults(fn=cmd_fault)
    p = sa.add_parser("press", help="press a button on a running simulated station")
    p.add_argument("--config", type=Path, required=True)
    p.add_argument("button", choices=["stop", "emergency", "live_mic"])
    p.set_defaults(fn=cmd_press)


def cmd_check(args) -> int:
    from .preflight import check
    cfg = config.load(args.config)
    try:
        problems = check(cfg, user=args.user, device=not args.no_device)
    except ValueError as exc:
        raise config.ConfigError(str(exc)) from None
    if problems:
        raise config.ConfigError(f"{args.config}:\n  " + "\n  ".join(map(str, problems)))
    print(f"{args.config}: OK ({cfg.station_id}, broker {cfg.broker!r})")
    return 0


def cmd_enrol(args) -> int:
    import os
    from .enrol import enrol
    if args.root == Path("/") and os.geteuid() != 0:
        raise config.ConfigError("cần quyền root: sudo loaxa agent enrol … / run as root")
    e = enrol(args.enrolment, root=args.root, audio_device=args.audio_device,
              hub_ntp=args.hub_ntp, pin=args.pin)
    print(f"Đã đăng ký trạm {e.station_id} / enrolled: {e.config}")
    print(f"  bo mạch / board: {e.model or 'không rõ / unknown'} → {e.backend}")
    print(f"  người dùng loaxa / user: {'đã tạo / created' if e.users_created else 'xem / see'} "
          f"/etc/sysusers.d/loaxa.conf; dịch vụ / unit: {e.unit}")
    print(f"Khóa công khai / public key: {e.public_key}")
    print(f"Ở hub / at the hub: loaxa hub station key {e.station_id} {e.public_key}")
    print("Rồi / then: sudo systemctl enable --now loaxa-agent loaxa-console")
    return 0


def cmd_console(args) -> int:
    import uvicorn
    from .console import create_console
    host, _, port = args.addr.rpartition(":")
    print(f"Trang tại trạm / station page: http://{args.addr}/", flush=True)
    uvicorn.run(create_console(args.config), host=host or "0.0.0.0", port=int(port),
                log_level="warning")
    return 0


def cmd_pin(args) -> int:
    import getpass
    from .console import set_pin
    config.load(args.config)
    pin = args.pin or getpass.getpass("Mã PIN mới / new PIN: ")
    path = set_pin(args.config, pin)
    print(f"Đã đặt mã PIN / PIN set ({path}, argon2)")
    return 0


def cmd_keygen(args) -> int:
    from .preflight import keygen
    cfg = config.load(args.config)
    path, public, created = keygen(cfg)
    print(("Đã tạo khóa / key created: " if created else "Khóa đã có / key exists: ") + str(path))
    print(f"Khóa công khai / public key: {public}")
    print(f"Ở hub / at the hub: loaxa hub station key {cfg.station_id} {public}")
    return 0


def cmd_launch(args) -> int:
    from .launcher import main
    cfg = config.load(args.config)
    return main(args.config, cfg.data_dir / "slots")


def cmd_run(args) -> int:
    """Problems that would stop the agent are one line each and exit 2 (under systemd's
    Restart=always a traceback would loop every few seconds, saying nothing useful). The
    sound device is not opened here: a station without sound still reports, and raises
    `audio_device` at its first play."""
    from hardware import BoardError
    from .agent import Agent
    from .preflight import check
    cfg = config.load(args.config)
    problems = check(cfg, device=False)
    if problems:
        raise config.ConfigError(f"{args.config}: cannot start:\n  "
                                 + "\n  ".join(map(str, problems)))
    try:
        agent = Agent(cfg)
    except (OSError, ValueError, BoardError) as exc:  # what the checks could not foresee
        raise config.ConfigError(f"{args.config}: cannot start: {type(exc).__name__}: {exc}") \
            from None
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: (stop.set(), agent.wake()))
    logging.getLogger("loaxa").info("station %s starting", cfg.station_id)
    agent.run(stop)
    return 0


def cmd_status(args) -> int:
    import json
    from .status_view import render
    cfg = config.load(args.config)
    path = Path(cfg.data_dir) / "status.json"
    try:
        st = json.loads(path.read_text())
    except (OSError, ValueError):
        raise config.ConfigError(f"chưa có trạng thái ({path}): trạm chưa từng chạy? / no status "
                                 f"yet: has the agent run?") from None
    print(json.dumps(st, ensure_ascii=False, indent=1) if args.json else render(st))
    return 0


def _sim_file(args) -> tuple[Path, dict]:
    import json
    from .panel import SIM_FAULTS
    cfg = config.load(args.config)
    if cfg.hardware_backend != "simulated":
        raise config.ConfigError(f"{cfg.station_id} has real hardware ({cfg.hardware_backend}):"
                                 f" faults are injected only into the simulated board")
    path = Path(cfg.data_dir) / SIM_FAULTS
    try:
        state = json.loads(path.read_text())
    except (OSError, ValueError):
        state = {}
    return path, state


def _write(path: Path, state: dict) -> None:
    """The faults in force and, per button, how many presses so far (a count, so presses
    written faster than the station reads are none of them lost)."""
    import json
    import os
    try:
        presses = dict(json.loads(path.read_text()).get("presses") or {})
    except (OSError, ValueError):
        presses = {}
    for button in state.pop("press", []):
        presses[button] = presses.get(button, 0) + 1
    state = {**state, "presses": presses}
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(state))
    os.replace(tmp, path)


def cmd_fault(args) -> int:
    from hardware import Fault
    path, state = _sim_file(args)
    faults = set(state.get("faults", []))
    if args.action != "list":
        try:
            name = Fault(args.fault).value
        except ValueError:
            raise config.ConfigError(f"unknown fault {args.fault!r}: "
                                     f"{', '.join(f.value for f in Fault)}") from None
        (faults.add if args.action == "inject" else faults.discard)(name)
        _write(path, {"faults": sorted(faults)})
    print("faults:", ", ".join(sorted(faults)) or "none")
    return 0


def write_faults(data_dir: Path, faults: list[str], press: list[str] | None = None) -> None:
    """What `loaxa agent fault` and `press` write (tests call it directly)."""
    from .panel import SIM_FAULTS
    _write(Path(data_dir) / SIM_FAULTS, {"faults": sorted(faults), "press": press or []})


def cmd_press(args) -> int:
    path, state = _sim_file(args)
    _write(path, {"faults": state.get("faults", []), "press": [args.button]})
    print(f"pressed {args.button}")
    return 0
