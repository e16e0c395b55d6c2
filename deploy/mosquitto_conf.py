"""The production broker's ACL for a hub's topic prefix (docs/deploy.md). The file shipped as
``deploy/mosquitto/loaxa.acl`` is this for the default prefix; `loaxa hub acl` prints it for
the prefix a hub is configured with."""
from __future__ import annotations

from protocol.topics import Topics

HUB_CN = "loaxa-hub"


def render_acl(prefix: str = "loaxa", hub_cn: str = HUB_CN) -> str:
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
        *station, ""])
