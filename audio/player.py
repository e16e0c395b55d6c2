"""Playing prepared content through ALSA with ffmpeg as a subprocess.

An explicit device is always named and the exit code is always checked: a missing or failing
device is an error the caller records, never a silent success. In tests and the demo the
device is an ALSA ``file`` PCM, so what was played can be read back.
"""
from __future__ import annotations

import os
import subprocess
from dataclasses import dataclass

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

    def stop(self, timeout: float = 1.0) -> Outcome:
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


class AlsaPlayer:
    def __init__(self, device: str = "default", *, alsa_config: str | None = None) -> None:
        if not device:
            raise AudioError("an ALSA device must be named")
        self.device = device
        self.alsa_config = alsa_config

    def start(self, path: str | os.PathLike[str]) -> Playback:
        env = dict(os.environ)
        if self.alsa_config:
            env["ALSA_CONFIG_PATH"] = f"{SYSTEM_ALSA_CONF}:{self.alsa_config}"
        cmd = [tool("ffmpeg"), "-nostdin", "-hide_banner", "-loglevel", "error", "-re",
               "-i", os.fspath(path), "-ac", "1", "-ar", "48000", "-f", "alsa", self.device]
        proc = subprocess.Popen(cmd, env=env, stdin=subprocess.DEVNULL,
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        return Playback(proc)


def file_sink_config(sink_path: str | os.PathLike[str], name: str = "loaxa_sink") -> str:
    """ALSA configuration text for a PCM named ``name`` that writes what is played to a WAV."""
    return (f'pcm.{name} {{\n  type file\n  slave.pcm "null"\n'
            f'  file "{os.fspath(sink_path)}"\n  format "wav"\n}}\n')
