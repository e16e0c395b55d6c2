"""Signed message envelopes (see docs/protocol.md).

An envelope is a JSON object::

    {"v": 1, "id": "<uuid4 hex>", "kind": "bundle", "sender": "hub", "kid": "<key id>",
     "iat": "2026-11-24T10:00:00.000Z", "exp": "2026-11-25T10:00:00.000Z", "seq": 7,
     "body": {...}, "sig": "<base64url Ed25519 signature>"}

The signature covers the canonical encoding of every field except ``sig``: UTF-8 JSON with
sorted keys, no insignificant white space, non-ASCII characters as themselves. Floats are
not allowed anywhere (their text form differs between languages): use integers
(milliseconds, bytes).
"""
from __future__ import annotations

import base64
import binascii
import hashlib
import json
import os
import uuid
import zlib
from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import Enum
from pathlib import Path
from typing import Any, Callable, Mapping

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from .clock import iso, parse_iso

SCHEMA_VERSION = 1
MAX_MESSAGE_BYTES = 256 * 1024
FIELDS = {"v", "id", "kind", "sender", "kid", "iat", "exp", "seq", "body", "sig"}


class Reason(str, Enum):
    OVERSIZE = "oversize"
    MALFORMED = "malformed"
    UNSUPPORTED_VERSION = "unsupported_version"
    UNKNOWN_KEY = "unknown_key"
    BAD_SIGNATURE = "bad_signature"
    EXPIRED = "expired"
    REPLAYED = "replayed"
    WRONG_KIND = "wrong_kind"
    WRONG_SENDER = "wrong_sender"
    WRONG_STATION = "wrong_station"
    BAD_AUDIO = "bad_audio"


class Refused(Exception):
    """A message was not accepted. ``reason`` is one of ``Reason``; ``detail`` is for people."""

    def __init__(self, reason: Reason, detail: str) -> None:
        super().__init__(f"{reason.value}: {detail}")
        self.reason = reason
        self.detail = detail


# -- keys ------------------------------------------------------------------------------------

def key_id(public: Ed25519PublicKey) -> str:
    raw = public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return hashlib.sha256(raw).hexdigest()[:16]


def public_to_text(public: Ed25519PublicKey) -> str:
    raw = public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return base64.b64encode(raw).decode("ascii")


def public_from_text(text: str) -> Ed25519PublicKey:
    try:
        raw = base64.b64decode(text.strip(), validate=True)
        return Ed25519PublicKey.from_public_bytes(raw)
    except (binascii.Error, ValueError) as exc:
        raise ValueError(f"not an Ed25519 public key: {exc}") from None


@dataclass(frozen=True)
class Signer:
    """A private key with the identity it signs as."""

    private: Ed25519PrivateKey
    sender: str

    @property
    def public(self) -> Ed25519PublicKey:
        return self.private.public_key()

    @property
    def kid(self) -> str:
        return key_id(self.public)

    def cached(self) -> "Signer":
        """The same key with its key id worked out once (a fleet's replan signs thousands)."""
        return _CachedSigner(self.private, self.sender, key_id(self.public))

    @classmethod
    def generate(cls, sender: str) -> "Signer":
        return cls(Ed25519PrivateKey.generate(), sender)

    def save(self, path: str | os.PathLike[str]) -> None:
        """Write the private key as PKCS#8 PEM, readable by the owner only."""
        pem = self.private.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        p = Path(path)
        fd = os.open(p, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(pem)

    @classmethod
    def load(cls, path: str | os.PathLike[str], sender: str) -> "Signer":
        key = serialization.load_pem_private_key(Path(path).read_bytes(), password=None)
        if not isinstance(key, Ed25519PrivateKey):
            raise ValueError(f"{path}: not an Ed25519 private key")
        return cls(key, sender)

    def __repr__(self) -> str:  # never print key material
        return f"Signer(sender={self.sender!r}, kid={self.kid!r})"


@dataclass(frozen=True)
class _CachedSigner(Signer):
    key_kid: str = ""

    @property
    def kid(self) -> str:
        return self.key_kid


class KeyRing:
    """Public keys a verifier trusts, by key id, each bound to the sender it may sign as."""

    def __init__(self) -> None:
        self._keys: dict[str, tuple[Ed25519PublicKey, str]] = {}

    def add(self, public: Ed25519PublicKey, sender: str) -> str:
        kid = key_id(public)
        self._keys[kid] = (public, sender)
        return kid

    def get(self, kid: str) -> tuple[Ed25519PublicKey, str] | None:
        return self._keys.get(kid)

    def remove(self, kid: str) -> None:
        self._keys.pop(kid, None)

    def kids(self) -> list[str]:
        return list(self._keys)

    def copy(self) -> "KeyRing":
        ring = KeyRing()
        ring._keys = dict(self._keys)
        return ring

    def wrap(self, fn: Callable[[str, Ed25519PublicKey], Any]) -> None:
        """Replace each key by ``fn(kid, key)``, an object with the same ``verify`` (the
        simulated fleet shares one checked signature among its stations)."""
        self._keys = {kid: (fn(kid, pub), sender) for kid, (pub, sender) in self._keys.items()}


# -- encoding --------------------------------------------------------------------------------

def check_wire(value: Any, path: str = "$") -> None:
    """Raise TypeError if ``value`` cannot go on the wire (floats, non-string keys)."""
    _reject_floats(value, path)


_PLAIN = (str, int, bool, type(None))


def _unsafe(value: Any) -> bool:
    """Whether ``value`` holds a float or a non-string key anywhere: a walk with no path
    strings and the leaves tested inline (a report of 100 events is ~3,000 nodes, sealed by
    every station of a reconnect storm); ``_reject_floats`` then says where."""
    t = type(value)
    if t is dict:
        for k, v in value.items():
            if type(k) is not str:
                return True
            tv = type(v)
            if tv is not str and tv is not int and v is not None and tv is not bool \
                    and _unsafe(v):
                return True
        return False
    if t is list or t is tuple:
        for v in value:
            tv = type(v)
            if tv is not str and tv is not int and v is not None and tv is not bool \
                    and _unsafe(v):
                return True
        return False
    if t in _PLAIN:
        return False
    return True  # a float, or another type: the slow walk decides and explains


def _reject_floats(value: Any, path: str = "$") -> None:
    if path == "$" and not _unsafe(value):
        return
    if type(value) in _PLAIN:  # the common case, without the slower abstract checks below
        return
    if isinstance(value, float):
        raise TypeError(f"float at {path}: use integers on the wire")
    if isinstance(value, Mapping):
        for k, v in value.items():
            if not isinstance(k, str):
                raise TypeError(f"non-string key at {path}")
            _reject_floats(v, f"{path}.{k}")
    elif isinstance(value, (list, tuple)):
        for i, v in enumerate(value):
            _reject_floats(v, f"{path}[{i}]")


def canonical(obj: Mapping[str, Any]) -> bytes:
    return json.dumps(
        obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False
    ).encode("utf-8")


@dataclass(frozen=True)
class Envelope:
    v: int
    id: str
    kind: str
    sender: str
    kid: str
    iat: datetime
    exp: datetime
    seq: int
    body: dict[str, Any]


def seal(
    kind: str, body: Mapping[str, Any], *, signer: Signer, seq: int, now: datetime,
    ttl: timedelta, msg_id: str | None = None,
) -> bytes:
    _reject_floats(body)
    return seal_encoded(kind, canonical(body), signer=signer, seq=seq, now=now, ttl=ttl,
                        msg_id=msg_id)


def canonical_value(value: str | int | bool | None) -> bytes:
    """One plain value as ``canonical`` writes it inside a document."""
    return json.dumps(value, ensure_ascii=False).encode("utf-8")


def seal_encoded(
    kind: str, body: bytes, *, signer: Signer, seq: int, now: datetime, ttl: timedelta,
    msg_id: str | None = None,
) -> bytes:
    """``seal`` for a body already in canonical form (checked for floats by whoever encoded
    it): the hub encodes one programme once for every station that shares it."""
    return seal_many(kind, [(body, seq)], signer=signer, now=now, ttl=ttl,
                     msg_ids=[msg_id] if msg_id else None)[0]


def seal_many(
    kind: str, bodies: list[tuple[bytes, int]], *, signer: Signer, now: datetime,
    ttl: timedelta, msg_ids: list[str] | None = None, sign_map: Callable = map,
) -> list[bytes]:
    """``seal_encoded`` for many ``(body, seq)`` at one instant, signed through ``sign_map``
    (``map``, or an executor's: Ed25519 signing of a long message lets other threads run).
    ``body`` is the first key of the envelope in canonical order, so each document is its body
    followed by the other fields."""
    iat, exp, kid = iso(now), iso(now + ttl), signer.kid
    heads, rests = [], []
    for i, (body, seq) in enumerate(bodies):
        rests.append({"v": SCHEMA_VERSION, "id": msg_ids[i] if msg_ids else uuid.uuid4().hex,
                      "kind": kind, "sender": signer.sender, "kid": kid, "iat": iat,
                      "exp": exp, "seq": int(seq)})
        heads.append(b'{"body":' + body + b",")
    sigs = sign_map(signer.private.sign, [h + canonical(r)[1:] for h, r in zip(heads, rests)])
    out = []
    for head, rest, sig in zip(heads, rests, sigs):
        rest["sig"] = base64.urlsafe_b64encode(sig).decode("ascii")
        raw = head + canonical(rest)[1:]
        if len(raw) > MAX_MESSAGE_BYTES:
            raise ValueError(f"{kind} message is {len(raw)} bytes, over {MAX_MESSAGE_BYTES}")
        out.append(raw)
    return out


# -- compressed bundles ----------------------------------------------------------------------
# A programme of 100 items is ~35 KB of JSON and ~3 KB compressed; a province's hub sends one
# to each of 10,000 stations for every change. A station that says it accepts "zlib" (its
# state summary's ``accepts``) gets its bundle as ``ZLIB_MAGIC`` + a zlib stream of the signed
# bytes; the signature is over the JSON, as ever. JSON never starts with "Z".
ZLIB_MAGIC = b"Z1"
ACCEPTS = ("zlib",)


def pack(raw: bytes) -> bytes:
    return ZLIB_MAGIC + zlib.compress(raw, 1)


def unpack(payload: bytes) -> bytes:
    """The signed bytes of a message as it came off the wire: plain JSON as it is, a
    compressed one inflated to at most ``MAX_MESSAGE_BYTES`` (a stream that would inflate
    further is refused before it does: no decompression bomb gets memory)."""
    if not payload.startswith(ZLIB_MAGIC):
        return payload
    d = zlib.decompressobj()
    try:
        raw = d.decompress(payload[len(ZLIB_MAGIC):], MAX_MESSAGE_BYTES + 1)
    except zlib.error as exc:
        raise Refused(Reason.MALFORMED, f"not a zlib stream: {exc}") from None
    if len(raw) > MAX_MESSAGE_BYTES or d.unconsumed_tail:
        raise Refused(Reason.OVERSIZE, f"inflates past {MAX_MESSAGE_BYTES} bytes")
    if not d.eof or d.unused_data:
        raise Refused(Reason.MALFORMED, "a truncated or padded zlib stream")
    return raw


class Packer:
    """``pack`` for many messages that share a long beginning: the beginning is compressed
    once and each message continues from a copy of the compressor (a fleet's bundles share
    their programme)."""

    def __init__(self, head: bytes) -> None:
        self._c = zlib.compressobj(1)
        self._head = ZLIB_MAGIC + self._c.compress(head)
        self._raw_head = head
        self.head_len = len(head)

    def pack(self, raw: bytes) -> bytes:
        if not raw.startswith(self._raw_head):
            raise ValueError("the message does not begin with the packer's head")
        c = self._c.copy()
        return self._head + c.compress(raw[self.head_len:]) + c.flush()


def _no_duplicate_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in pairs:
        if k in out:
            raise ValueError(f"duplicate key {k!r}")
        out[k] = v
    return out


def parse(raw: bytes) -> dict[str, Any]:
    """Size and shape checks only (no signature): a dict with every envelope field typed."""
    if len(raw) > MAX_MESSAGE_BYTES:
        raise Refused(Reason.OVERSIZE, f"{len(raw)} bytes, limit {MAX_MESSAGE_BYTES}")
    try:
        doc = json.loads(raw.decode("utf-8"), object_pairs_hook=_no_duplicate_keys,
                         parse_float=_float_refused)
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise Refused(Reason.MALFORMED, f"not JSON: {exc}") from None
    if not isinstance(doc, dict):
        raise Refused(Reason.MALFORMED, "not a JSON object")
    if set(doc) != FIELDS:
        missing, extra = FIELDS - set(doc), set(doc) - FIELDS
        raise Refused(Reason.MALFORMED, f"fields missing {sorted(missing)} extra {sorted(extra)}")
    types = {"v": int, "id": str, "kind": str, "sender": str, "kid": str, "iat": str,
             "exp": str, "seq": int, "body": dict, "sig": str}
    for name, typ in types.items():
        if not isinstance(doc[name], typ) or isinstance(doc[name], bool) and typ is int:
            raise Refused(Reason.MALFORMED, f"field {name!r} must be {typ.__name__}")
    if doc["v"] != SCHEMA_VERSION:
        raise Refused(Reason.UNSUPPORTED_VERSION, f"schema version {doc['v']}")
    return doc


def _without_sig(raw: bytes, sig: str) -> bytes:
    """The bytes ``seal`` signed: ``raw`` without its top-level ``,"sig":"…"`` member (the
    last one: the body comes first), so a message is not encoded again to be checked (a
    station's 37 KB report, a 27 KB bundle). If the signature checks out over these bytes,
    they are what the signer signed, and ``raw`` is them with that one member added at the
    top level (the parser saw exactly one ``sig``, the value searched for): the same
    document. Anything else falls back to the canonical form."""
    seg = b',"sig":"' + sig.encode("ascii", "replace") + b'"'
    i = raw.rfind(seg)
    return raw if i < 0 else raw[:i] + raw[i + len(seg):]


def _float_refused(text: str) -> float:
    raise ValueError(f"float {text} not allowed")


def verify(
    raw: bytes, keys: KeyRing, *, now: datetime | None, kind: str | None = None,
    sender: str | None = None, min_seq: int | None = None,
) -> Envelope:
    """Return the envelope or raise ``Refused`` with the first reason it fails.

    Order: oversize, malformed, version, unknown key, bad signature, kind/sender, expired,
    replayed (``seq < min_seq``). A message's own claims are trusted only after its
    signature checks out. ``now=None`` skips the expiry check, for messages judged by
    sequence or nonce because the signer's clock may be wrong (docs/protocol.md).
    """
    doc = parse(raw)
    entry = keys.get(doc["kid"])
    if entry is None:
        raise Refused(Reason.UNKNOWN_KEY, f"key {doc['kid'][:16]!r} is not trusted")
    public, bound_sender = entry
    try:
        sig = base64.urlsafe_b64decode(doc["sig"].encode("ascii"))
    except (binascii.Error, ValueError, UnicodeEncodeError):
        raise Refused(Reason.MALFORMED, "signature is not base64url") from None
    try:
        public.verify(sig, _without_sig(raw, doc["sig"]))
    except InvalidSignature:
        # laid out otherwise than ``seal`` writes it (re-serialised on its way): the
        # signature is over the canonical form of the same document
        signed = {k: v for k, v in doc.items() if k != "sig"}
        try:
            public.verify(sig, canonical(signed))
        except InvalidSignature:
            raise Refused(Reason.BAD_SIGNATURE,
                          f"{doc['kind']} from {doc['sender']!r}") from None
    if doc["sender"] != bound_sender or (sender is not None and doc["sender"] != sender):
        raise Refused(Reason.WRONG_SENDER, f"signed as {doc['sender']!r}")
    if kind is not None and doc["kind"] != kind:
        raise Refused(Reason.WRONG_KIND, f"expected {kind}, got {doc['kind']}")
    try:
        iat, exp = parse_iso(doc["iat"]), parse_iso(doc["exp"])
    except ValueError as exc:
        raise Refused(Reason.MALFORMED, str(exc)) from None
    if now is not None and exp <= now:
        raise Refused(Reason.EXPIRED, f"expired {doc['exp']}, now {iso(now)}")
    if min_seq is not None and doc["seq"] < min_seq:
        raise Refused(Reason.REPLAYED, f"seq {doc['seq']} older than {min_seq}")
    return Envelope(doc["v"], doc["id"], doc["kind"], doc["sender"], doc["kid"], iat, exp,
                    doc["seq"], doc["body"])
