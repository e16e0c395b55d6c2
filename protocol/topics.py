"""MQTT topic layout under a configurable prefix.

Every name below is relative to ``prefix`` (default ``loaxa``). Station and group ids are
restricted to ``[A-Za-z0-9_-]`` so they can never contain MQTT separators or wildcards.
"""
from __future__ import annotations

import re
from dataclasses import dataclass

ID_RE = re.compile(r"^[A-Za-z0-9_-]{1,64}$")


class BadIdentifier(ValueError):
    pass


def check_id(value: str, what: str = "id") -> str:
    if not isinstance(value, str) or not ID_RE.match(value):
        raise BadIdentifier(
            f"{what} {value!r} must be 1-64 characters of letters, digits, '-' or '_'"
        )
    return value


@dataclass(frozen=True)
class Topics:
    prefix: str = "loaxa"

    def __post_init__(self) -> None:
        if not self.prefix or any(c in self.prefix for c in "#+") or self.prefix.endswith("/"):
            raise BadIdentifier(f"topic prefix {self.prefix!r} is not usable")

    # hub -> stations
    def hub_state(self) -> str:
        return f"{self.prefix}/hub/state"

    def hub_key(self) -> str:
        """The hub's signing key rotation (retained; protocol/hubkeys.py)."""
        return f"{self.prefix}/hub/key"

    def bundle(self, station: str) -> str:
        return f"{self.prefix}/station/{check_id(station, 'station')}/bundle"

    def command(self, station: str) -> str:
        return f"{self.prefix}/station/{check_id(station, 'station')}/cmd"

    def group_command(self, group: str) -> str:
        return f"{self.prefix}/group/{check_id(group, 'group')}/cmd"

    def all_command(self) -> str:
        return f"{self.prefix}/all/cmd"

    def audio(self, station: str) -> str:
        return f"{self.prefix}/station/{check_id(station, 'station')}/audio"

    def target_audio(self, target: str) -> str:
        """Where audio pushed with a command goes: once to all, a group, or one station."""
        kind, _, name = target.partition(":")
        if target == "all":
            return f"{self.prefix}/all/audio"
        if kind == "group":
            return f"{self.prefix}/group/{check_id(name, 'group')}/audio"
        return self.audio(name)

    def target_command(self, target: str) -> str:
        kind, _, name = target.partition(":")
        return (self.all_command() if target == "all" else
                self.group_command(name) if kind == "group" else self.command(name))

    def ack(self, station: str) -> str:
        return f"{self.prefix}/station/{check_id(station, 'station')}/ack"

    # stations -> hub
    def state(self, station: str) -> str:
        return f"{self.prefix}/station/{check_id(station, 'station')}/state"

    def events(self, station: str) -> str:
        return f"{self.prefix}/station/{check_id(station, 'station')}/events"

    def health(self, station: str) -> str:
        return f"{self.prefix}/station/{check_id(station, 'station')}/health"

    def fetch(self, station: str) -> str:
        return f"{self.prefix}/station/{check_id(station, 'station')}/fetch"

    # subscriptions the hub makes
    def hub_subscriptions(self) -> list[str]:
        return [f"{self.prefix}/station/+/{leaf}" for leaf in ("state", "events", "health", "fetch")]

    def station_subscriptions(self, station: str, groups: tuple[str, ...] = ()) -> list[str]:
        subs = [  # the key rotation first: its retained message comes before what it signs
            self.hub_key(),
            self.bundle(station), self.command(station), self.audio(station), self.ack(station),
            self.all_command(), self.target_audio("all"), self.hub_state(),
        ]
        subs += [self.group_command(g) for g in groups]
        subs += [self.target_audio(f"group:{g}") for g in groups]
        return subs

    def parse_station_topic(self, topic: str) -> tuple[str, str] | None:
        """``prefix/station/<id>/<leaf>`` -> (id, leaf), or None if it is not one."""
        head = f"{self.prefix}/station/"
        if not topic.startswith(head):
            return None
        rest = topic[len(head):].split("/")
        if len(rest) != 2 or not ID_RE.match(rest[0]):
            return None
        return rest[0], rest[1]
