"""One suite, two players: the real ALSA player into a file sink, and the test double."""
import subprocess
import time

import pytest

from audio import AlsaPlayer, prepare
from audio_check import pcm
from dummy_player import DummyPlayer


@pytest.fixture(scope="module")
def clip(tmp_path_factory):
    d = tmp_path_factory.mktemp("clip")
    subprocess.run(["ffmpeg", "-v", "error", "-f", "lavfi", "-i", "sine=frequency=330:duration=2",
                    str(d / "t.wav")], check=True)
    p = prepare(d / "t.wav")
    (d / "t.opus").write_bytes(p.data)
    return d / "t.opus"


@pytest.fixture(params=["alsa", "dummy"])
def player(request, sink):
    if request.param == "alsa":
        p = AlsaPlayer("loaxa_sink", alsa_config=str(sink[0]))
        p.broken = lambda: AlsaPlayer("no_such_pcm", alsa_config=str(sink[0]))
    else:
        p = DummyPlayer()

        def broken():
            d = DummyPlayer()
            d.trigger_failure("cannot open audio device no_such_pcm")
            return d
        p.broken = broken
    p.kind = request.param
    return p


def test_plays_to_the_end(player, clip, sink):
    pb = player.start(clip)
    assert pb.poll() is None  # returns at once, while the sound goes out
    out = pb.wait(10)
    assert out.ok and not out.stopped
    if player.kind == "alsa":
        assert pcm(sink[1]) == pcm(clip)


def test_stop_takes_under_100_ms(player, clip):
    pb = player.start(clip)
    time.sleep(0.3)  # let it be mid-sound
    t0 = time.monotonic()
    out = pb.stop()
    took = time.monotonic() - t0
    assert out.stopped and not out.ok
    assert took < 0.1, took


def test_a_missing_device_is_a_failure_with_its_reason(player, clip):
    out = player.broken().start(clip).wait(10)
    assert not out.ok and "no_such_pcm" in out.stderr


def test_volume_scales_what_goes_out(clip, sink):
    AlsaPlayer("loaxa_sink", alsa_config=str(sink[0]), volume=0.5).start(clip).wait(10)
    import array
    half = array.array("h", pcm(sink[1]))
    full = array.array("h", pcm(clip))
    assert 0.45 < max(map(abs, half)) / max(map(abs, full)) < 0.55
