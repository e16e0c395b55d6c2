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
    p = sa.add_parser("check", help="validate station.toml and exit")
    p.add_argument("--config", type=Path, required=True)
    p.set_defaults(fn=cmd_check)


def cmd_check(args) -> int:
    cfg = config.load(args.config)
    print(f"{args.config}: OK ({cfg.station_id}, broker {cfg.broker!r})")
    return 0


def cmd_run(args) -> int:
    from .agent import Agent
    cfg = config.load(args.config)
    agent = Agent(cfg)
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    logging.getLogger("loaxa").info("station %s starting", cfg.station_id)
    agent.run(stop)
    return 0
