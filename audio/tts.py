"""Vietnamese speech: gTTS when the hub is online, espeak-ng (-v vi) when it is not.

gTTS is always given a timeout and its output is checked: it writes an empty file without
raising when the service answers with no audio.
"""
from __future__ import annotations

import io
import logging
import unicodedata
from dataclasses import dataclass

from ._run import run
from .errors import AudioError

log = logging.getLogger("loaxa.tts")
ENGINES = ("auto", "gtts", "espeak-ng")
MAX_TEXT = 5000


@dataclass(frozen=True)
class Speech:
    data: bytes
    fmt: str       # "mp3" or "wav"
    engine: str    # the engine that produced it
    text: str      # the NFC text that was spoken


def _gtts(text: str, timeout: float) -> bytes:
    from gtts import gTTS  # imported here: it pulls in requests
    buf = io.BytesIO()
    try:
        gTTS(text, lang="vi", lang_check=False, timeout=timeout).write_to_fp(buf)
    except Exception as exc:  # gTTSError, requests' errors, socket errors
        raise AudioError(f"gTTS failed: {exc}") from None
    data = buf.getvalue()
    if len(data) < 256:
        raise AudioError(f"gTTS returned {len(data)} bytes of audio")
    return data


def _espeak(text: str, voice: str, speed_wpm: int) -> bytes:
    data = run(["espeak-ng", "-v", voice, "-s", str(speed_wpm), "--stdout", "--stdin"],
               what="espeak-ng", input=text.encode("utf-8"), timeout=60)
    if len(data) < 1024:
        raise AudioError("espeak-ng produced no audio")
    return data


def synthesize(text: str, *, engine: str = "auto", timeout: float = 10.0,
               espeak_voice: str = "vi", espeak_speed_wpm: int = 150) -> Speech:
    if engine not in ENGINES:
        raise AudioError(f"unknown TTS engine {engine!r}: use one of {', '.join(ENGINES)}")
    text = unicodedata.normalize("NFC", text).strip()
    if not text:
        raise AudioError("nothing to say: the text is empty")
    if len(text) > MAX_TEXT:
        raise AudioError(f"text is {len(text)} characters, limit {MAX_TEXT}")
    if engine in ("auto", "gtts"):
        try:
            return Speech(_gtts(text, timeout), "mp3", "gtts", text)
        except AudioError as exc:
            if engine == "gtts":
                raise
            log.warning("%s; falling back to espeak-ng", exc)
    return Speech(_espeak(text, espeak_voice, espeak_speed_wpm), "wav", "espeak-ng", text)
