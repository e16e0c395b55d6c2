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
    offline_alarm_s: int = 300  # a station offline longer than this is an alarm

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
        try:
            pw = (home / br["password_file"]).read_text().strip()
        except OSError as exc:
            raise HubError(f"{path}: [broker] password_file: {exc.strerror}") from None
    tls = {}
    for k in ("tls_ca", "tls_cert", "tls_key"):  # relative to the hub's folder
        if br.get(k):
            f = home / br[k]
            if not f.is_file():
                raise HubError(f"{path}: [broker] {k} = {br[k]!r}: không có tệp / no such file")
            tls[k] = str(f)
    if (tls.get("tls_cert") is None) != (tls.get("tls_key") is None) or \
            (tls.get("tls_cert") and not tls.get("tls_ca")):
        raise HubError(f"{path}: [broker] tls_cert and tls_key go together, with tls_ca")
    broker = BrokerConfig(host=br.get("host", "127.0.0.1"), port=int(br.get("port", 1883)),
                          keepalive=int(br.get("keepalive", 30)),
                          protocol=str(br.get("protocol", "5")),
                          username=br.get("username"), password=pw, **tls)
    quiet = parse_quiet(hub["quiet_hours"]) if hub.get("quiet_hours") else None
    grace = hub.get("offline_alarm_s", 300)
    if not isinstance(grace, int) or grace < 10:
        raise HubError(f"{path}: [hub] offline_alarm_s = {grace!r}: whole seconds, at least 10")
    return HubConfig(home, hub.get("id", "hub"), hub.get("prefix", "loaxa"), clock, broker, quiet,
                     grace)
