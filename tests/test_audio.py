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


def test_vietnamese_text_is_read_in_words():
    from audio.vntext import normalize, number_words, sentences
    assert number_words(105) == "một trăm lẻ năm"
    assert number_words(21) == "hai mươi mốt" and number_words(25) == "hai mươi lăm"
    assert number_words(1_005_000) == "một triệu không trăm lẻ năm nghìn"
    assert normalize("UBND xã họp lúc 7h30 ngày 01/4/2030.") == (
        "Ủy ban nhân dân xã họp lúc bảy giờ ba mươi phút ngày một tháng tư năm hai nghìn "
        "không trăm ba mươi.")
    assert normalize("Sở TT&TT: mưa 120mm, tăng 2,5%.") == (
        "Sở Thông tin và Truyền thông: mưa một trăm hai mươi mi-li-mét, tăng hai phẩy năm "
        "phần trăm.")
    text = "Câu một. " * 100
    assert all(len(p) <= 400 for p in sentences(text)) and "".join(sentences(text))


def test_speech_is_cached_per_piece(tmp_path, monkeypatch):
    import audio.tts as tts
    calls = []
    real = tts._espeak
    monkeypatch.setattr(tts, "_espeak", lambda *a: calls.append(a) or real(*a))
    a = synthesize("Thông báo một. Thông báo hai.", engine="espeak-ng", cache_dir=tmp_path)
    b = synthesize("Thông báo một. Thông báo hai.", engine="espeak-ng", cache_dir=tmp_path)
    assert len(calls) == 2 and a.data == b.data  # two pieces, synthesised once each


@pytest.mark.parametrize("kind", ["speech", "tone", "quiet_speech", "chime", "mp3",
                                  "dense_speech"])
def test_prepared_audio_meets_the_loudness_target(tmp_path, kind):
    """Within ±1 LU of -16 LUFS and at most -1 dBTP, measured by ffmpeg (ebur128)."""
    from audio.prepare import measure
    if kind == "dense_speech":  # limited hard: the encoder overshoots most here
        src = tmp_path / "d.wav"
        src.write_bytes(synthesize("Thông báo số 15: " + "nội dung dài. " * 30,
                                   engine="espeak-ng").data)
    elif kind in ("speech", "quiet_speech", "chime", "mp3"):
        src = tmp_path / "s.wav"
        src.write_bytes(synthesize("Ủy ban nhân dân xã thông báo lịch tiêm chủng. " * 3,
                                   engine="espeak-ng").data)
        if kind == "quiet_speech":
            q = tmp_path / "q.wav"
            subprocess.run(["ffmpeg", "-v", "error", "-i", str(src), "-af", "volume=-25dB",
                            str(q)], check=True)
            src = q
    else:
        src = tone(tmp_path / "t.wav", 5)
    kw = {"chime": "default"} if kind == "chime" else {"codec": "mp3"} if kind == "mp3" else {}
    p = prepare(src, **kw)
    out = tmp_path / "out"
    out.write_bytes(p.data)
    m = measure(out)
    assert abs(m.integrated - (-16.0)) <= 1.0, m
    assert m.true_peak <= -1.0, m


def test_silent_and_clipped_uploads_are_refused_by_name(tmp_path):
    silent = tmp_path / "im-lang.wav"
    subprocess.run(["ffmpeg", "-v", "error", "-f", "lavfi", "-i", "anullsrc=r=16000:cl=mono",
                    "-t", "3", str(silent)], check=True)
    with pytest.raises(AudioError, match="im-lang.wav: im lặng, không có tiếng / silent"):
        prepare(silent)
    clipped = tmp_path / "meo-tieng.wav"
    subprocess.run(["ffmpeg", "-v", "error", "-f", "lavfi", "-i", "sine=frequency=200:duration=2",
                    "-af", "volume=20dB", str(clipped)], check=True)
    with pytest.raises(AudioError, match="meo-tieng.wav: bị méo do quá tải / clipped"):
        prepare(clipped)
    assert prepare(clipped, allow_clipped=True).warnings


def test_audio_cli(tmp_path, capsys):
    from deploy.cli import main
    out = tmp_path / "say.wav"
    assert main(["audio", "say", "Xin chào 2030", "-o", str(out), "--engine", "espeak-ng"]) == 0
    assert "hai nghìn không trăm ba mươi" in capsys.readouterr().out
    assert main(["audio", "prepare", str(out), "-o", str(tmp_path / "p.opus")]) == 0
    assert "LUFS" in capsys.readouterr().out
    assert main(["audio", "probe", str(tmp_path / "p.opus"), "--json"]) == 0
    import json
    assert json.loads(capsys.readouterr().out)["codec"] == "opus"
    assert main(["audio", "probe", str(tmp_path / "nothing.wav")]) == 2
