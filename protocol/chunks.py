"""Binary audio chunks.

Audio is addressed by the SHA-256 of the whole file, which the signed bundle names, so the
bytes themselves need no signature. A chunk is a fixed 84-byte header and the data::

    b"LXA2" | file sha256 (32 bytes) | offset (uint64 BE) | total (uint64 BE)
            | sha256 of data (32 bytes) | data

A receiver appends chunks in order, checks each chunk's hash, and checks the whole file's
hash before it keeps the file.
"""
from __future__ import annotations

import hashlib
import re
import struct
from dataclasses import dataclass

from .envelope import Reason, Refused

MAGIC = b"LXA2"
HEADER = struct.Struct(">4s32sQQ32s")
CHUNK_SIZE = 16 * 1024  # small, so a chunk repeated after a lost ack costs little
# a push goes once to thousands: fewer, larger messages (each costs every receiver the same
# per-message work; a 60 s announcement is one); a receiver accepts chunks up to this size
PUSH_CHUNK_SIZE = 16 * CHUNK_SIZE
SHA_RE = re.compile(r"^[0-9a-f]{64}$")


@dataclass(frozen=True)
class Chunk:
    sha: str
    offset: int
    total: int
    data: bytes


def encode(sha: str, offset: int, total: int, data: bytes) -> bytes:
    return HEADER.pack(MAGIC, bytes.fromhex(sha), offset, total,
                       hashlib.sha256(data).digest()) + data


def decode(raw: bytes, *, verify: bool = True) -> Chunk:
    """The chunk, its data hash-checked (``verify=False`` reads the header only, for a
    receiver deciding whether it wants the chunk at all; ``check`` it before use)."""
    if len(raw) < HEADER.size or raw[:4] != MAGIC:
        raise Refused(Reason.MALFORMED, "not an audio chunk")
    _, sha, offset, total, chunk_sha = HEADER.unpack_from(raw)
    data = raw[HEADER.size:]
    if offset + len(data) > total or len(data) > PUSH_CHUNK_SIZE:
        raise Refused(Reason.MALFORMED, "chunk header out of range")
    c = Chunk(sha.hex(), offset, total, data)
    if verify:
        check(raw, c)
    return c


def check(raw: bytes, c: Chunk) -> None:
    if hashlib.sha256(c.data).digest() != raw[HEADER.size - 32:HEADER.size]:
        raise Refused(Reason.BAD_AUDIO, f"chunk at {c.offset} of {c.sha[:12]} is corrupt")

