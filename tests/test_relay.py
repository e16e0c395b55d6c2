"""Live relay (tiếp âm) from a local HTTPS server that streams a file in real time and then
stalls: the station falls back to the item's fallback content and the record says so. Only
https:// is relayed, with the server's certificate verified."""
import ssl
import subprocess
import threading
import time
from datetime import datetime, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from audio import AlsaPlayer, prepare
from deploy.pki import issue, make_ca
from schedules.model import ScheduleError
from audio_check import pcm
from hardware import Wiring, open_board
from protocol.clock import ManualClock
from schedules import Item, Priority
from station_agent.runner import Runner
from station_agent.store import StationStore

T0 = datetime(2030, 1, 1, 1, 0, tzinfo=timezone.utc)
BYTES_PER_S = 6000  # 48 kb/s MP3


@pytest.fixture(scope="module")
def media(tmp_path_factory):
    d = tmp_path_factory.mktemp("media")
    subprocess.run(["ffmpeg", "-v", "error", "-f", "lavfi", "-i", "sine=frequency=500:duration=20",
                    "-c:a", "libmp3lame", "-b:a", "48k", "-ac", "1", str(d / "radio.mp3")],
                   check=True)
    subprocess.run(["ffmpeg", "-v", "error", "-f", "lavfi", "-i", "sine=frequency=900:duration=1",
                    str(d / "fallback.wav")], check=True)
    return d


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    d = tmp_path_factory.mktemp("pki")
    ca = make_ca(d / "ca")
    return ca, issue(ca, d, "127.0.0.1", server=True, name="radio"), make_ca(d / "other")


def radio_server(path, stall_after_s, cert=None):
    """Streams ``path`` at its bit rate over TLS, then holds the connection open and sends
    nothing."""
    data = path.read_bytes()
    stop = threading.Event()

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self):
            self.send_response(200)
            self.send_header("Content-Type", "audio/mpeg")
            self.end_headers()
            sent, t0 = 0, time.monotonic()
            while sent < len(data) and not stop.is_set():
                if stall_after_s is not None and time.monotonic() - t0 >= stall_after_s:
                    stop.wait(30)  # the stall: connection open, no data (bounded)
                    return
                self.wfile.write(data[sent:sent + 1500])
                sent += 1500
                time.sleep(1500 / BYTES_PER_S)

        def log_message(self, *a):
            pass

    srv = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    if cert is not None:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(cert.cert, cert.key)
        srv.socket = ctx.wrap_socket(srv.socket, server_side=True)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    return srv, stop


def test_a_plain_http_stream_is_refused():
    with pytest.raises(ScheduleError, match="https://"):
        Item("vov", "a" * 64, 1000, Priority.UU_TIEN, T0, stream="http://vov.vn/live")
    with pytest.raises(Exception, match="https://"):
        AlsaPlayer("null").start_stream("http://127.0.0.1:1/live", 1.0)


@pytest.mark.parametrize("stall_after, duration_ms, trusted", [
    (1.0, 8000, True), (None, 3000, True), (None, 3000, False)])
def test_relay_falls_back_when_the_stream_stalls(tmp_path, media, sink, stall_after,
                                                 duration_ms, trusted, pki, figures):
    """A stream that stalls, plays through, or whose certificate the station does not trust
    (someone else's server on the path): only the first two relay; the last plays the
    fallback at once."""
    ca, cert, other_ca = pki
    srv, stop = radio_server(media / "radio.mp3", stall_after, cert)
    store = StationStore(tmp_path / "data")
    fb = prepare(media / "fallback.wav")
    store.append_part(fb.sha256, fb.data)
    store.keep_audio(fb.sha256, T0)
    item = Item("vov", fb.sha256, duration_ms, Priority.UU_TIEN, T0,
                stream=f"https://127.0.0.1:{srv.server_port}/vov1.mp3")
    body = {"station": "s", "version": 1, "items": [item.to_wire()],
            "content": {fb.sha256: {}}, "quiet_hours": None}
    store.save_bundle(1, "m", b"{}", body, T0)
    store.activate(1, T0)
    clock = ManualClock(T0)
    board = open_board("simulated", Wiring(), sim={"amp_warmup_ms": 50})
    runner = Runner(store=store, board=board, clock=clock, warmup_ms=0,
                    player=AlsaPlayer("loaxa_sink", alsa_config=str(sink[0]),
                                      stream_ca=str((ca if trusted else other_ca).cert)),
                    stream_stall_s=2)
    try:
        t0 = time.monotonic()
        while not [e for e in store.pending_events(100) if e["kind"] == "playback"]:
            assert time.monotonic() - t0 < 30
            runner.tick()
            time.sleep(0.05)
            clock.advance(0.05)
        [rec] = [e["data"] for e in store.pending_events(100) if e["kind"] == "playback"]
        if not trusted:
            assert rec["outcome"] == "fallback", rec
            assert "stream failed after" in rec["detail"]
            ran = float(rec["detail"].split("after ")[1].split("s")[0])
            assert ran < 2.0, rec  # refused at the handshake, not after playing some of it
            assert pcm(sink[1]) == pcm(store.audio_path(fb.sha256))
        elif stall_after is None:
            assert rec["outcome"] == "played" and rec["stream"].endswith("vov1.mp3")
        else:
            assert rec["outcome"] == "fallback", rec
            assert "stream failed after" in rec["detail"] and rec["fallback"] == fb.sha256
            ran = float(rec["detail"].split("after ")[1].split("s")[0])
            # noticed within the stall bound (2 s) after the data stopped
            assert stall_after <= ran <= stall_after + 2 + 1.5, ran
            figures("relay stall noticed after the stream stopped (stall bound 2 s)",
                    ran - stall_after, "s", 3.5)
            assert pcm(sink[1]) == pcm(store.audio_path(fb.sha256))  # the fallback went out
    finally:
        stop.set()
        srv.shutdown()
        board.close()
        store.close()
