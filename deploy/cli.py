"""The `loaxa` command: one entry point, each room registers its own subcommands."""
from __future__ import annotations

import argparse
import logging
import os
import sys

from audio import AudioError


ROOMS = {"hub": "hub.cli", "agent": "station_agent.cli", "audio": "audio.cli",
         "demo": "deploy.demo", "sim": "station_agent.simfleet"}


def build(argv: list[str] | None = None) -> argparse.ArgumentParser:
    """The parser; given the command line, only the room it names is imported (a station's
    agent does not carry the hub's modules: P3 counts its memory), else all of them."""
    import importlib
    parser = argparse.ArgumentParser(prog="loaxa", description="loaxa: loa xã, the commune "
                                     "loudspeaker: offline-first broadcast for commune radio")
    parser.add_argument("-v", "--verbose", action="store_true")
    parser.add_argument("--version", action="version", version=f"loaxa {version()}")
    sub = parser.add_subparsers(dest="cmd", required=True)
    words = [a for a in (sys.argv[1:] if argv is None else argv) if not a.startswith("-")]
    room = words[0] if words and words[0] in ROOMS else None
    for name, module in ROOMS.items():
        if room is None or name == room:
            importlib.import_module(module).register(sub)
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

    args = build(argv).parse_args(argv)
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
