"""Turn any audio file into broadcast content: mono Opus, loudness-normalised, hashed.

The output is what the hub stores, ships to stations and what they play. Its SHA-256 is
its name everywhere.
"""
from __future__ import annotations

import hashlib
import json
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

from ._run import run
from .errors import AudioError

TARGET_LUFS = -16.0
TRUE_PEAK_DB = -1.5
BITRATE = "24k"
MIN_DURATION_MS = 200
MAX_DURATION_MS = 4 * 3600 * 1000


@dataclass(frozen=True)
class Prepared:
    data: bytes
    sha256: str
    duration_ms: int
    codec: str = "opus"

    @property
    def size(self) -> int:
        return len(self.data)


@dataclass(frozen=True)
class Probe:
    duration_ms: int
    codec: str
    sample_rate: int
    channels: int


def probe(path: str | os.PathLike[str]) -> Probe:
    """What an audio file holds; a clear AudioError naming the file if it holds no audio."""
    name = os.fspath(path)
    out = run(["ffprobe", "-v", "error", "-print_format", "json", "-show_format",
               "-show_streams", "-select_streams", "a:0", name], what=f"probe {name}")
    try:
        info = json.loads(out)
        stream = info["streams"][0]
        duration = float(stream.get("duration") or info["format"]["duration"])
    except (ValueError, KeyError, IndexError, TypeError):
        raise AudioError(f"{name}: no audio stream found (not an audio file?)") from None
    return Probe(int(round(duration * 1000)), stream.get("codec_name", "?"),
                 int(stream.get("sample_rate") or 0), int(stream.get("channels") or 0))


def prepare(src: str | os.PathLike[str], *, target_lufs: float = TARGET_LUFS,
            true_peak_db: float = TRUE_PEAK_DB, bitrate: str = BITRATE) -> Prepared:
    name = os.fspath(src)
    if not Path(name).is_file():
        raise AudioError(f"{name}: no such file")
    info = probe(name)
    if info.duration_ms < MIN_DURATION_MS:
        raise AudioError(f"{name}: only {info.duration_ms} ms of audio")
    if info.duration_ms > MAX_DURATION_MS:
        raise AudioError(f"{name}: {info.duration_ms / 3600000:.1f} h is longer than 4 h")
    with tempfile.TemporaryDirectory(prefix="loaxa-prep-") as tmp:
        out = Path(tmp) / "out.opus"
        run(["ffmpeg", "-nostdin", "-v", "error", "-i", name, "-vn", "-map", "0:a:0",
             "-af", f"loudnorm=I={target_lufs}:TP={true_peak_db}:LRA=11",
             "-ac", "1", "-ar", "48000", "-c:a", "libopus", "-b:a", bitrate, "-vbr", "constrained",
             "-application", "voip", "-fflags", "+bitexact", "-flags:a", "+bitexact",
             "-f", "ogg", str(out)], what=f"prepare {name}")
        data = out.read_bytes()
        duration = probe(out).duration_ms
    return Prepared(data, hashlib.sha256(data).hexdigest(), duration)
