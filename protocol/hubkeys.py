"""Rotating the hub's signing key (docs/protocol.md, "Key rotation").

The hub announces a new key in one retained message on ``{prefix}/hub/key``, signed by the
new key and carrying the chain of endorsements since the first key: each link is a key and
the previous key's signature over it. A station that trusts any key of the chain walks it
forward, so a station offline through several rotations still comes to trust the newest. The
message also names the keys retired (once every station has confirmed the new one); a station
drops them. It is judged by its sequence, never by the station's clock.
"""
from __future__ import annotations

import base64
from datetime import datetime, timedelta
from typing import Any

from cryptography.exceptions import InvalidSignature

from .envelope import (Envelope, KeyRing, Reason, Refused, Signer, canonical, key_id, parse,
                       public_from_text, public_to_text, seal, verify)

KIND = "hubkey"
TTL = timedelta(days=3650)  # judged by sequence: stations' clocks may be wrong


def _endorsed(key_text: str, sender: str) -> bytes:
    return canonical({"key": key_text, "sender": sender})


def endorse(old: Signer, new: Signer) -> dict[str, str]:
    """A link of the chain: the new public key, signed by the old key."""
    text = public_to_text(new.public)
    sig = old.private.sign(_endorsed(text, new.sender))
    return {"key": text, "by": old.kid,
            "endorsement": base64.urlsafe_b64encode(sig).decode("ascii")}


def announce(chain: list[dict[str, str]], retire: list[str], *, signer: Signer, seq: int,
             now: datetime) -> bytes:
    return seal(KIND, {"chain": chain, "retire": retire}, signer=signer, seq=seq, now=now,
                ttl=TTL)


def accept(raw: bytes, ring: KeyRing, sender: str, *, min_seq: int) -> tuple[Envelope, KeyRing]:
    """The announcement verified against ``ring`` (walking the chain from a trusted key), and
    the ring the station trusts from now on. ``Refused`` if no link starts from a trusted key,
    an endorsement is forged, or the sequence is older than ``min_seq``."""
    doc = parse(raw)
    body = doc["body"]
    chain, retire = body.get("chain"), body.get("retire")
    if not isinstance(chain, list) or not isinstance(retire, list) or \
            not all(isinstance(k, str) for k in retire):
        raise Refused(Reason.MALFORMED, "hubkey without chain and retire lists")
    new = ring.copy()
    for link in chain:
        if not isinstance(link, dict) or not all(isinstance(link.get(k), str)
                                                 for k in ("key", "by", "endorsement")):
            raise Refused(Reason.MALFORMED, "a link of the key chain is malformed")
        try:
            public = public_from_text(link["key"])
        except ValueError as exc:
            raise Refused(Reason.MALFORMED, str(exc)) from None
        if new.get(key_id(public)) is not None:
            continue
        by = new.get(link["by"])
        if by is None:
            continue  # a link from a key this station never held: a later one may connect
        try:
            sig = base64.urlsafe_b64decode(link["endorsement"].encode("ascii"))
            by[0].verify(sig, _endorsed(link["key"], sender))
        except (InvalidSignature, ValueError):
            raise Refused(Reason.BAD_SIGNATURE, f"endorsement of {key_id(public)} by "
                          f"{link['by']} does not verify") from None
        new.add(public, sender)
    env = verify(raw, new, now=None, kind=KIND, sender=sender, min_seq=min_seq)
    for kid in retire:
        if kid != env.kid:
            new.remove(kid)
    return env, new


def ring_state(ring: KeyRing) -> dict[str, Any]:
    """What a station persists of its trusted hub keys."""
    return {kid: public_to_text(getattr(pub, "public", pub))  # a fleet's SharedKey wraps it
            for kid, (pub, _) in ring._keys.items()}
