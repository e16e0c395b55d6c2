"""Playing prepared content through ALSA with ffmpeg as a subprocess.

An explicit device is always named and the exit code is always checked: a missing or failing
device is an error the caller records, never a silent success. In tests and the demo the
device is an ALSA ``file`` PCM, so what was played can be read back.
"""
from __future__ import annotations

import os
import subprocess
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from ._run import tool
from .errors import AudioError

SYSTEM_ALSA_CONF = "/usr/share/alsa/alsa.conf"


@dataclass
class Outcome:
    ok: bool
    returncode: int
    stderr: str
    stopped: bool


class Playback:
    def __init__(self, proc: subprocess.Popen[bytes]) -> None:
        self._proc = proc
        self._stopped = False
        self.outcome: Outcome | None = None

    def poll(self) -> Outcome | None:
        if self.outcome is None and self._proc.poll() is not None:
            self._finish()
        return self.outcome

    def stop(self, timeout: float = 0.08) -> Outcome:
        """SIGTERM (ffmpeg closes the device cleanly), SIGKILL if it is not gone in 80 ms."""
        if self.outcome is None:
            self._stopped = True
            self._proc.terminate()
            try:
                self._proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()
            self._finish()
        assert self.outcome is not None
        return self.outcome

    def wait(self, timeout: float | None = None) -> Outcome:
        self._proc.wait(timeout)
        return self.poll()  # type: ignore[return-value]

    def _finish(self) -> None:
        err = self._proc.stderr.read().decode("utf-8", "replace") if self._proc.stderr else ""
        if self._proc.stderr:
            self._proc.stderr.close()
        rc = self._proc.returncode
        lines = [ln for ln in err.strip().splitlines() if ln.strip()]
        self.outcome = Outcome(rc == 0 and not self._stopped, rc, " | ".join(lines[-3:])[:500],
                               self._stopped)


class Armed:
    """A playback made ready ahead of its instant: ffmpeg started, linked and its decoder
    waiting on its input, so that at the instant only the audio has to flow (starting
    ffmpeg takes ~0.1 s). ``fire`` hands it the file and returns the ``Playback``; ``cancel``
    ends it unheard (it has not opened the device)."""

    def __init__(self, proc: subprocess.Popen[bytes], data: bytes, volume: float) -> None:
        self._proc = proc
        self._data = data
        self.volume = volume  # the gain it was started with
        self._writer: threading.Thread | None = None

    def fire(self) -> Playback:
        def feed() -> None:
            try:
                assert self._proc.stdin is not None
                self._proc.stdin.write(self._data)
                self._proc.stdin.close()
            except (BrokenPipeError, OSError, ValueError):
                pass  # ffmpeg ended (stopped, or failed: its exit code says which)
        self._writer = threading.Thread(target=feed, name="player-feed", daemon=True)
        self._writer.start()
        return Playback(self._proc)

    def cancel(self) -> None:
        if self._proc.poll() is None:
            self._proc.kill()
        self._proc.wait()
        for f in (self._proc.stdin, self._proc.stderr):
            if f is not None:
                try:
                    f.close()
                except OSError:
                    pass


class Player(Protocol):
    """The contract every player keeps (the ALSA one here, the double in the tests):
    ``start`` returns at once with a ``Playback``; ``poll`` is None while sound goes out and
    an ``Outcome`` after; ``stop`` ends it within 100 ms; a missing or failing device is an
    outcome with ``ok=False`` and the reason, never a silent success."""

    def start(self, path: str | os.PathLike[str]) -> Playback: ...


class AlsaPlayer:
    def __init__(self, device: str = "default", *, alsa_config: str | None = None,
                 volume: float = 1.0, stream_ca: str | None = None) -> None:
        if not device:
            raise AudioError("an ALSA device must be named")
        if not 0.0 <= volume <= 2.0:
            raise AudioError(f"volume {volume} is outside 0.0-2.0")
        self.device = device
        self.alsa_config = alsa_config
        self.volume = volume
        self.stream_ca = stream_ca  # CA file for relay streams; else the system's trust store

    def start(self, path: str | os.PathLike[str]) -> Playback:
        env = dict(os.environ)
        if self.alsa_config:
            env["ALSA_CONFIG_PATH"] = f"{SYSTEM_ALSA_CONF}:{self.alsa_config}"
        vol = [] if self.volume == 1.0 else ["-af", f"volume={self.volume:.3f}"]
        cmd = [tool("ffmpeg"), "-nostdin", "-hide_banner", "-loglevel", "error", "-re",
               "-i", os.fspath(path), *vol, "-ac", "1", "-ar", "48000", "-f", "alsa",
               self.device]
        return self._spawn(cmd, env)

    def arm(self, path: str | os.PathLike[str]) -> Armed:
        """``start`` in two halves: ffmpeg now, reading the file from a pipe that stays empty
        until ``Armed.fire``."""
        env = dict(os.environ)
        if self.alsa_config:
            env["ALSA_CONFIG_PATH"] = f"{SYSTEM_ALSA_CONF}:{self.alsa_config}"
        data = Path(path).read_bytes()
        fmt = ["-f", "ogg"] if data[:4] == b"OggS" else []
        vol = [] if self.volume == 1.0 else ["-af", f"volume={self.volume:.3f}"]
        cmd = [tool("ffmpeg"), "-nostdin", "-hide_banner", "-loglevel", "error", "-re", *fmt,
               "-i", "pipe:0", *vol, "-ac", "1", "-ar", "48000", "-f", "alsa", self.device]
        proc = subprocess.Popen(cmd, env=env, stdin=subprocess.PIPE,
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        return Armed(proc, data, self.volume)

    def start_stream(self, url: str, duration_s: float, *, stall_s: float = 5.0) -> Playback:
        """Relay a live stream (VOV, the provincial station) for ``duration_s``. If no data
        arrives for ``stall_s`` the relay ends with an error, so the caller can fall back.
        Only ``https://`` is relayed, and the server's certificate is verified (ffmpeg does
        not verify by default): the signed bundle names the URL, TLS vouches for the bytes."""
        if not url.startswith("https://"):
            raise AudioError(f"relay {url!r}: only https:// streams are played")
        env = dict(os.environ)
        if self.alsa_config:
            env["ALSA_CONFIG_PATH"] = f"{SYSTEM_ALSA_CONF}:{self.alsa_config}"
        vol = [] if self.volume == 1.0 else ["-af", f"volume={self.volume:.3f}"]
        tls = ["-tls_verify", "1", *(["-ca_file", self.stream_ca] if self.stream_ca else [])]
        cmd = [tool("ffmpeg"), "-nostdin", "-hide_banner", "-loglevel", "error",
               "-rw_timeout", str(int(stall_s * 1e6)), *tls, "-re", "-i", url, "-t", f"{duration_s:.3f}",
               *vol, "-ac", "1", "-ar", "48000", "-f", "alsa", self.device]
        return self._spawn(cmd, env)

    @staticmethod
    def _spawn(cmd: list[str], env: dict[str, str]) -> Playback:
        proc = subprocess.Popen(cmd, env=env, stdin=subprocess.DEVNULL,
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        return Playback(proc)


def check_device(device: str, *, alsa_config: str | None = None) -> None:
    """Open the ALSA device as playback does and write 20 ms of silence to it; an AudioError
    naming the device if it cannot be opened (`loaxa agent check`)."""
    env = dict(os.environ)
    if alsa_config:
        env["ALSA_CONFIG_PATH"] = f"{SYSTEM_ALSA_CONF}:{alsa_config}"
    proc = subprocess.run([tool("ffmpeg"), "-nostdin", "-hide_banner", "-loglevel", "error",
                           "-f", "lavfi", "-i", "anullsrc=r=48000:cl=mono", "-t", "0.02",
                           "-f", "alsa", device], env=env, stdin=subprocess.DEVNULL,
                          capture_output=True, timeout=20)
    if proc.returncode != 0:
        err = " | ".join(ln for ln in proc.stderr.decode("utf-8", "replace").splitlines()
                         if ln.strip())[-300:]
        raise AudioError(f"thiết bị âm thanh ALSA {device!r} không mở được / cannot open ALSA "
                         f"device {device!r}: {err or 'ffmpeg exited ' + str(proc.returncode)}"
                         f" (list devices with `aplay -L`; name the card, e.g. "
                         f"plughw:CARD=Headphones)")


def file_sink_config(sink_path: str | os.PathLike[str], name: str = "loaxa_sink") -> str:
    """ALSA configuration text for a PCM named ``name`` that writes what is played to a WAV."""
    return (f'pcm.{name} {{\n  type file\n  slave.pcm "null"\n'
            f'  file "{os.fspath(sink_path)}"\n  format "wav"\n}}\n')
