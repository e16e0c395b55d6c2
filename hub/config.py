"""The hub's home folder: hub.toml, hub.key, hub.db, content/, stations/."""
from __future__ import annotations

import os
import tomllib
from dataclasses import dataclass
from pathlib import Path

from protocol.mqtt import BrokerConfig
from schedules.model import QuietHours


class HubError(Exception):
    """A user error at the hub: says what is wrong and what to do."""


def default_home() -> Path:
    env = os.environ.get("LOAXA_HUB_HOME")
    if env:
        return Path(env)
    base = os.environ.get("XDG_DATA_HOME") or os.path.join(os.path.expanduser("~"), ".local/share")
    return Path(base) / "loaxa" / "hub"


@dataclass(frozen=True)
class HubConfig:
    home: Path
    hub_id: str
    prefix: str
    clock: str
    broker: BrokerConfig
    quiet: QuietHours | None

    @property
    def db_path(self) -> Path:
        return self.home / "hub.db"

    @property
    def key_path(self) -> Path:
        return self.home / "hub.key"


def write_config(home: Path, *, broker_host: str, broker_port: int, prefix: str,
                 protocol: str = "5", quiet: str | None = None, clock: str = "system") -> None:
    lines = ["[hub]", 'id = "hub"', f'prefix = "{prefix}"', f'clock = "{clock}"']
    if quiet:
        lines.append(f'quiet_hours = "{quiet}"')
    lines += ["", "[broker]", f'host = "{broker_host}"', f"port = {broker_port}",
              f'protocol = "{protocol}"', ""]
    (home / "hub.toml").write_text("\n".join(lines), encoding="utf-8")


def parse_quiet(text: str) -> QuietHours:
    try:
        a, b = text.split("-")
        return QuietHours.from_wire({"start": a.strip(), "end": b.strip()})
    except ValueError:
        raise HubError(f"quiet hours {text!r}: write them as HH:MM-HH:MM, e.g. 22:00-05:00") from None


def load(home: Path) -> HubConfig:
    path = home / "hub.toml"
    if not path.exists():
        raise HubError(f"no hub at {home}: run `loaxa hub init --home {home}` first")
    try:
        doc = tomllib.loads(path.read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as exc:
        raise HubError(f"{path}: {exc}") from None
    hub, br = doc.get("hub", {}), doc.get("broker", {})
    clock = hub.get("clock", "system")
    if clock.startswith("file:") and not os.path.isabs(clock[5:]):
        clock = "file:" + str(home / clock[5:])
    pw = None
    if br.get("password_file"):
        pw = (home / br["password_file"]).read_text().strip()
    broker = BrokerConfig(host=br.get("host", "127.0.0.1"), port=int(br.get("port", 1883)),
                          keepalive=int(br.get("keepalive", 30)),
                          protocol=str(br.get("protocol", "5")),
                          tls_ca=br.get("tls_ca"), tls_cert=br.get("tls_cert"),
                          tls_key=br.get("tls_key"), username=br.get("username"), password=pw)
    quiet = parse_quiet(hub["quiet_hours"]) if hub.get("quiet_hours") else None
    return HubConfig(home, hub.get("id", "hub"), hub.get("prefix", "loaxa"), clock, broker, quiet)
