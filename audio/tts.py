"""Vietnamese speech: gTTS when the hub is online, espeak-ng (-v vi) when it is not.

Text is normalised first (NFC; numbers, dates, times and official abbreviations in words:
``vntext``), split at sentence boundaries, and each piece is synthesised once and cached by
(text, engine, voice, speed). gTTS always has a timeout and a bounded number of tries, and
its output is checked: it writes an empty file without raising when the service answers with
no audio. One announcement is spoken by one engine throughout.
"""
from __future__ import annotations

import hashlib
import io
import logging
import os
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from ._run import run
from .errors import AudioError
from .vntext import normalize, sentences, speakable

log = logging.getLogger("loaxa.tts")
ENGINES = ("auto", "gtts", "espeak-ng")
MAX_TEXT = 5000
PAUSE_MS = 250


@dataclass(frozen=True)
class Speech:
    data: bytes
    fmt: str       # container of ``data``: "mp3" or "wav"
    engine: str    # the engine that produced it
    text: str      # the text as given (NFC)
    spoken: str    # what was read aloud, after normalisation


def _gtts(text: str, timeout: float, tries: int) -> bytes:
    from gtts import gTTS  # imported here: it pulls in requests
    last = "no attempt"
    for attempt in range(tries):
        buf = io.BytesIO()
        try:
            gTTS(text, lang="vi", lang_check=False, timeout=timeout).write_to_fp(buf)
        except Exception as exc:  # gTTSError, requests' errors, socket errors
            last = str(exc)
        else:
            data = buf.getvalue()
            if len(data) >= 256:
                return data
            last = f"{len(data)} bytes of audio"
        if attempt + 1 < tries:
            time.sleep(0.5 * (attempt + 1))  # back off between tries of a web service
    raise AudioError(f"gTTS failed after {tries} tries: {last}")


def _espeak(text: str, voice: str, speed: float) -> bytes:
    data = run(["espeak-ng", "-v", voice, "-s", str(int(150 * speed)), "--stdout", "--stdin"],
               what="espeak-ng", input=text.encode("utf-8"), timeout=60)
    if len(data) < 1024:
        raise AudioError("espeak-ng produced no audio")
    return data


class _Cache:
    def __init__(self, root: Path | None) -> None:
        self.root = root

    def key(self, engine: str, voice: str, speed: float, text: str) -> str:
        return hashlib.sha256(f"{engine}\0{voice}\0{speed:.2f}\0{text}".encode()).hexdigest()

    def get(self, key: str) -> bytes | None:
        if self.root is None:
            return None
        p = self.root / key
        return p.read_bytes() if p.is_file() else None

    def put(self, key: str, data: bytes) -> None:
        if self.root is None:
            return
        self.root.mkdir(parents=True, exist_ok=True)
        tmp = self.root / f".{key}.tmp"
        tmp.write_bytes(data)
        os.replace(tmp, self.root / key)


def _pieces(engine: str, pieces: list[str], *, voice: str, speed: float, timeout: float,
            tries: int, cache: _Cache) -> list[bytes]:
    out = []
    for p in pieces:
        k = cache.key(engine, voice if engine == "espeak-ng" else "vi", speed, p)
        data = cache.get(k)
        if data is None:
            data = _gtts(p, timeout, tries) if engine == "gtts" else _espeak(p, voice, speed)
            cache.put(k, data)
        out.append(data)
    return out


def _join(parts: list[bytes], fmt: str, speed: float, engine: str) -> bytes:
    """One WAV from the pieces, a short pause between them; gTTS's speed by tempo."""
    if len(parts) == 1 and (engine != "gtts" or speed == 1.0):
        return parts[0]
    with tempfile.TemporaryDirectory(prefix="loaxa-tts-") as tmp:
        args: list[str] = []
        for i, data in enumerate(parts):
            f = Path(tmp) / f"{i}.{fmt}"
            f.write_bytes(data)
            args += ["-i", str(f)]
        n = len(parts)
        pad = f"apad=pad_dur={PAUSE_MS / 1000}"
        chains = [f"[{i}:a]aresample=24000,aformat=channel_layouts=mono,{pad}[p{i}]"
                  for i in range(n)]
        tempo = f",atempo={speed}" if engine == "gtts" and speed != 1.0 else ""
        graph = ";".join(chains) + ";" + "".join(f"[p{i}]" for i in range(n)) + \
            f"concat=n={n}:v=0:a=1{tempo}[out]"
        return run(["ffmpeg", "-nostdin", "-v", "error", *args, "-filter_complex", graph,
                    "-map", "[out]", "-f", "wav", "-"], what="join speech")


def synthesize(text: str, *, engine: str = "auto", timeout: float = 10.0, tries: int = 2,
               voice: str = "vi", speed: float = 1.0,
               cache_dir: str | os.PathLike[str] | None = None) -> Speech:
    if engine not in ENGINES:
        raise AudioError(f"unknown TTS engine {engine!r}: use one of {', '.join(ENGINES)}")
    if not 0.5 <= speed <= 2.0:
        raise AudioError(f"speed {speed} is outside 0.5-2.0")
    text = __import__("unicodedata").normalize("NFC", text).strip()
    if not text:
        raise AudioError("văn bản trống: không có gì để đọc / nothing to say: the text is empty")
    if len(text) > MAX_TEXT:
        raise AudioError(f"văn bản dài {len(text)} ký tự, tối đa {MAX_TEXT} / text is "
                         f"{len(text)} characters, limit {MAX_TEXT}")
    spoken = normalize(text)
    if not speakable(spoken):
        raise AudioError("văn bản không có chữ nào đọc được (chỉ có biểu tượng hoặc dấu câu) / "
                         "nothing in the text can be read aloud")
    pieces = sentences(spoken)
    cache = _Cache(Path(cache_dir) if cache_dir else None)
    kw = dict(voice=voice, speed=speed, timeout=timeout, tries=tries, cache=cache)
    if engine in ("auto", "gtts"):
        try:
            parts = _pieces("gtts", pieces, **kw)
            data = _join(parts, "mp3", speed, "gtts")
            return Speech(data, "mp3" if data is parts[0] else "wav", "gtts", text, spoken)
        except AudioError as exc:
            if engine == "gtts":
                raise
            log.warning("%s; falling back to espeak-ng", exc)
    parts = _pieces("espeak-ng", pieces, **kw)
    return Speech(_join(parts, "wav", speed, "espeak-ng"), "wav", "espeak-ng", text, spoken)
