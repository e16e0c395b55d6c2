"""The production broker's ACL for a hub's topic prefix (docs/deploy.md). The file shipped as
``deploy/mosquitto/loaxa.acl`` is this for the default prefix; `loaxa hub acl` prints it for
the prefix a hub is configured with."""
from __future__ import annotations

from protocol.topics import Topics

HUB_CN = "loaxa-hub"


def bridge_cn(name: str) -> str:
    """The CN (so the MQTT username) of an edge broker's bridge certificate."""
    return f"loaxa-bridge-{name}"


def render_acl(prefix: str = "loaxa", hub_cn: str = HUB_CN,
               bridges: dict[str, list[str] | None] | None = None) -> str:
    """``bridges``: edge brokers bridged to this one, by name, with the stations behind
    each (None: every station); each may carry those stations' topics and no others."""
    p = Topics(prefix).prefix  # validated: no wildcards, no trailing '/'
    # `pattern` lines apply to every client; `topic` lines before the first `user` would
    # apply only to anonymous clients, which this broker refuses (the first ACL shipped
    # had them there, and no station could read an alert for all: the security matrix
    # test found it)
    shared = [f"pattern read {p}/all/cmd", f"pattern read {p}/group/+/cmd",
              f"pattern read {p}/all/audio", f"pattern read {p}/group/+/audio",
              f"pattern read {p}/hub/state", f"pattern read {p}/hub/key"]
    station = [f"pattern read {p}/station/%u/{leaf}" for leaf in ("bundle", "cmd", "audio", "ack")]
    station += [f"pattern write {p}/station/%u/{leaf}"
                for leaf in ("state", "events", "health", "fetch")]
    return "\n".join([
        f"# mosquitto ACL for a loaxa hub with topic prefix {p!r} (`loaxa hub acl` makes it).",
        f'# The hub\'s certificate CN is "{hub_cn}".',
        f"user {hub_cn}",
        f"topic readwrite {p}/#",
        "",
        "# Every client (`pattern` lines apply to all; `topic` lines before the first `user`",
        "# would apply only to anonymous clients, which this broker refuses) may read what",
        "# the hub sends to all and to groups, the hub's presence and its key rotation:",
        *shared,
        "",
        "# Every other client is a station whose certificate CN is its station id (%u).",
        *station, "", *_bridge_acl(p, bridges or {})])


def _bridge_acl(p: str, bridges: dict[str, list[str] | None]) -> list[str]:
    """An edge broker's bridge speaks for the stations behind it: their own topics, each
    way as a station's own are, and nothing else (what is shared it reads as every client
    does). It cannot forge them: the hub checks each report's Ed25519 signature."""
    lines: list[str] = []
    for name, stations in sorted(bridges.items()):
        ids = ["+"] if stations is None else sorted(stations)
        lines += [f"# bridge {name!r}: " + ("every station" if stations is None else
                                          f"{len(ids)} station(s)"),
                  f"user {bridge_cn(name)}"]
        for sid in ids:
            lines += [f"topic read {p}/station/{sid}/{leaf}"
                      for leaf in ("bundle", "cmd", "audio", "ack")]
            lines += [f"topic write {p}/station/{sid}/{leaf}"
                      for leaf in ("state", "events", "health", "fetch")]
        lines.append("")
    return lines


# what crosses a bridge from a commune (edge) broker to the hub's broker, and back:
# (topic pattern under the prefix, direction seen from the edge broker)
BRIDGE_TOPICS = (
    ("station/+/state", "out"), ("station/+/events", "out"), ("station/+/health", "out"),
    ("station/+/fetch", "out"),
    ("station/+/bundle", "in"), ("station/+/cmd", "in"), ("station/+/audio", "in"),
    ("station/+/ack", "in"), ("all/#", "in"), ("group/#", "in"), ("hub/#", "in"),
)


def render_bridge(name: str, host: str, port: int, prefix: str = "loaxa", *,
                  restart_s: tuple[int, int] = (2, 30),
                  tls: tuple[str, str, str] | None = None) -> str:
    """A mosquitto bridge section for an edge broker the stations of a district or commune
    connect to, toward the hub's broker (docs/scale.md, "Beyond one broker"). Each topic goes
    one way only, so nothing can loop; QoS 1 and a persistent session on both sides, so what
    is published while the bridge is down waits for it (`max_queued_messages`). MQTT 3.1.1:
    mosquitto 2.0 has no session expiry for an MQTT 5 bridge, whose session at the hub's
    broker then ends with each cut (a command given meanwhile was lost: tests/faults/
    test_bridge.py found it); our messages carry no MQTT 5 properties, so nothing is lost in
    the translation, and `try_private` keeps the retained flag. ``tls``: (CA, certificate,
    key) paths on the edge machine: the bridge then connects over TLS with its own client
    certificate (CN ``loaxa-bridge-NAME``), checking the hub's broker against the CA."""
    p = Topics(prefix).prefix
    lines = [f"connection {name}", f"address {host}:{port}",
             "bridge_protocol_version mqttv311", f"remote_clientid {bridge_cn(name)}",
             "cleansession false", "local_cleansession false", "try_private true",
             "notifications false", f"restart_timeout {restart_s[0]} {restart_s[1]}"]
    if tls:
        ca, cert, key = tls
        lines += [f"bridge_cafile {ca}", f"bridge_certfile {cert}", f"bridge_keyfile {key}",
                  "bridge_insecure false"]
    lines += [f"topic {p}/{pattern} {direction} 1" for pattern, direction in BRIDGE_TOPICS]
    return "\n".join(lines) + "\n"
