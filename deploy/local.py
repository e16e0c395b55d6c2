"""A station enrolled on this same machine (the demo, the tests): the hub writes the
enrolment folder, the station makes its own key there, and the hub records the public half,
the same three steps an administrator takes with a real Pi (docs/deploy.md)."""
from __future__ import annotations

from pathlib import Path
from typing import Any


def add_local_station(hub_cfg: Any, sid: str, *, out: Path, **kw: Any) -> Path:
    from hub.admin import add_station, set_station_key
    from station_agent import config as station_config
    from station_agent.preflight import keygen

    toml = add_station(hub_cfg, sid, out=out, **kw)
    _, public, _ = keygen(station_config.load(toml))
    set_station_key(hub_cfg, sid, public)
    return toml
