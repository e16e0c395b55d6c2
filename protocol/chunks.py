"""Binary audio chunks.

Audio is addressed by the SHA-256 of the whole file, which the signed bundle names, so the
bytes themselves need no signature. A chunk is::

    b"LXA1" | uint32 big-endian header length | header (canonical JSON) | data

with header ``{"sha": <file sha256 hex>, "offset": int, "total": int, "chunk_sha": <sha256
hex of data>}``. A receiver appends chunks in order, checks each chunk's hash, and checks the
whole file's hash before it keeps the file.
"""
from __future__ import annotations

import hashlib
import json
import re
import struct
from dataclasses import dataclass

from .envelope import Reason, Refused, canonical

MAGIC = b"LXA1"
CHUNK_SIZE = 16 * 1024  # small, so a chunk repeated after a lost ack costs little
SHA_RE = re.compile(r"^[0-9a-f]{64}$")


@dataclass(frozen=True)
class Chunk:
    sha: str
    offset: int
    total: int
    data: bytes


def encode(sha: str, offset: int, total: int, data: bytes) -> bytes:
    header = canonical({"sha": sha, "offset": offset, "total": total,
                        "chunk_sha": hashlib.sha256(data).hexdigest()})
    return MAGIC + struct.pack(">I", len(header)) + header + data


def decode(raw: bytes) -> Chunk:
    if len(raw) < 8 or raw[:4] != MAGIC:
        raise Refused(Reason.MALFORMED, "not an audio chunk")
    (hlen,) = struct.unpack(">I", raw[4:8])
    if hlen > 1024 or 8 + hlen > len(raw):
        raise Refused(Reason.MALFORMED, "bad chunk header length")
    try:
        h = json.loads(raw[8:8 + hlen].decode("utf-8"))
        sha, offset, total, chunk_sha = h["sha"], h["offset"], h["total"], h["chunk_sha"]
    except (ValueError, KeyError, TypeError, UnicodeDecodeError):
        raise Refused(Reason.MALFORMED, "bad chunk header") from None
    data = raw[8 + hlen:]
    if not (isinstance(sha, str) and SHA_RE.match(sha) and isinstance(offset, int)
            and isinstance(total, int) and 0 <= offset and offset + len(data) <= total):
        raise Refused(Reason.MALFORMED, "chunk header out of range")
    if hashlib.sha256(data).hexdigest() != chunk_sha:
        raise Refused(Reason.BAD_AUDIO, f"chunk at {offset} of {sha[:12]} is corrupt")
    return Chunk(sha, offset, total, data)


def iter_chunks(sha: str, blob: bytes, start: int = 0, size: int = CHUNK_SIZE,
                stop: int | None = None):
    """Chunks covering [start, stop) of ``blob`` (to its end by default)."""
    total = len(blob)
    end = total if stop is None else min(stop, total)
    for off in range(start, max(end, 1), size):
        yield encode(sha, off, total, blob[off:min(off + size, end) if total else 0])
