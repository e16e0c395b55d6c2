"""audio/: preparation with real ffmpeg, espeak-ng for real, gTTS's HTTP layer stubbed."""
import base64
import json
import subprocess

import pytest
import responses

from audio import AudioError, prepare, probe, synthesize


def tone(path, secs=2.0):
    subprocess.run(["ffmpeg", "-v", "error", "-f", "lavfi", "-i",
                    f"sine=frequency=500:duration={secs}", str(path)], check=True)
    return path


def test_prepare_makes_small_mono_opus_named_by_its_hash(tmp_path):
    p = prepare(tone(tmp_path / "t.wav", 3))
    import hashlib
    assert p.sha256 == hashlib.sha256(p.data).hexdigest()
    assert abs(p.duration_ms - 3000) < 100
    out = tmp_path / "o.opus"
    out.write_bytes(p.data)
    info = probe(out)
    assert info.codec == "opus" and info.channels == 1 and info.sample_rate == 48000
    assert p.size * 8 / 3.0 < 33_000  # under 250 KB a minute, the transfer budget


def test_prepare_refuses_what_is_not_audio(tmp_path):
    bad = tmp_path / "thong-bao.wav"
    bad.write_bytes(b"RIFF\x00\x00\x00\x00WAVEjunk")
    with pytest.raises(AudioError, match="thong-bao.wav"):
        prepare(bad)
    with pytest.raises(AudioError, match="only"):
        prepare(tone(tmp_path / "blip.wav", 0.05))


def test_espeak_speaks_vietnamese_nfc():
    s = synthesize("Xin chào bà con", engine="espeak-ng")  # decomposed input, NFC out
    assert s.engine == "espeak-ng" and s.fmt == "wav" and s.data[:4] == b"RIFF"
    assert s.text == "Xin chào bà con"
    with pytest.raises(AudioError, match="empty"):
        synthesize("   ", engine="espeak-ng")


GTTS_URL = "https://translate.google.com/_/TranslateWebserverUi/data/batchexecute"


def _gtts_reply(audio: bytes) -> str:
    inner = json.dumps([base64.b64encode(audio).decode()])
    return ")]}'\n\n" + json.dumps([["wrb.fr", "jQ1olc", inner]], separators=(",", ":")) + "\n"


@responses.activate
def test_gtts_audio_is_used_when_the_service_answers(tmp_path):
    mp3 = tmp_path / "x.mp3"
    subprocess.run(["ffmpeg", "-v", "error", "-f", "lavfi", "-i", "sine=duration=1",
                    "-c:a", "libmp3lame", str(mp3)], check=True)
    responses.add(responses.POST, GTTS_URL, body=_gtts_reply(mp3.read_bytes()))
    s = synthesize("Thông báo", engine="gtts")
    assert s.engine == "gtts" and s.data == mp3.read_bytes()


@responses.activate
def test_gtts_empty_answer_falls_back_to_espeak():
    responses.add(responses.POST, GTTS_URL, body=")]}'\n\n[]\n")
    with pytest.raises(AudioError, match="gTTS"):
        synthesize("Thông báo", engine="gtts")
    assert synthesize("Thông báo", engine="auto").engine == "espeak-ng"
