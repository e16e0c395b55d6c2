"""The `loaxa` command: one entry point, each room registers its own subcommands."""
from __future__ import annotations

import argparse
import logging
import os
import sys

from audio import AudioError


def build() -> argparse.ArgumentParser:
    from audio import cli as audio_cli
    from hub import cli as hub_cli
    from station_agent import cli as agent_cli
    from station_agent import simfleet
    from . import demo

    parser = argparse.ArgumentParser(prog="loaxa", description="loaxa: loa xã, the commune "
                                     "loudspeaker: offline-first broadcast for commune radio")
    parser.add_argument("-v", "--verbose", action="store_true")
    parser.add_argument("--version", action="version", version=f"loaxa {version()}")
    sub = parser.add_subparsers(dest="cmd", required=True)
    hub_cli.register(sub)
    agent_cli.register(sub)
    audio_cli.register(sub)
    demo.register(sub)
    simfleet.register(sub)
    return parser


def version() -> str:
    from importlib.metadata import PackageNotFoundError, version as dist_version
    try:
        return dist_version("loaxa")
    except PackageNotFoundError:  # run from a source tree that is not installed
        return "0+source"


def main(argv: list[str] | None = None) -> int:
    from hub.config import HubError
    from station_agent.config import ConfigError

    args = build().parse_args(argv)
    level = logging.DEBUG if args.verbose else getattr(
        logging, os.environ.get("LOAXA_LOG", "INFO").upper(), logging.INFO)
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        return int(args.fn(args) or 0)
    except (HubError, ConfigError, AudioError) as exc:
        print(f"loaxa: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
