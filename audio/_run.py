from __future__ import annotations

import shutil
import subprocess
import tempfile
from typing import Callable

from .errors import AudioError


def tool(name: str) -> str:
    path = shutil.which(name)
    if not path:
        raise AudioError(f"{name} is not installed (Debian: apt-get install "
                         f"{'ffmpeg' if name.startswith('ff') else name})")
    return path


def run(cmd: list[str], *, what: str, input: bytes | None = None, timeout: float = 120) -> bytes:
    """Run a tool, return its stdout; a non-zero exit becomes an AudioError with its stderr."""
    try:
        proc = subprocess.run([tool(cmd[0]), *cmd[1:]], input=input, capture_output=True,
                              timeout=timeout, check=False)
    except subprocess.TimeoutExpired:
        raise AudioError(f"{what}: {cmd[0]} took longer than {timeout:.0f}s") from None
    if proc.returncode != 0:
        err = proc.stderr.decode("utf-8", "replace").strip().splitlines()
        raise AudioError(f"{what}: {cmd[0]} exited {proc.returncode}: "
                         f"{' | '.join(err[-3:]) or 'no message'}")
    return proc.stdout


def ffmpeg_pass(args: list[str], *, duration_ms: int = 0,
                progress: Callable[[float], None] | None = None,
                timeout: float = 3600) -> tuple[int, str]:
    """One ffmpeg run (``args`` without the program name) that reports how far it has got
    (0.0-1.0 of ``duration_ms``) through ``-progress``; returns (exit code, stderr)."""
    cmd = [tool("ffmpeg"), "-nostdin", "-hide_banner", "-nostats", "-progress", "pipe:1", *args]
    with tempfile.TemporaryFile() as err:
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=err,
                                stdin=subprocess.DEVNULL)
        assert proc.stdout is not None
        try:
            for line in proc.stdout:
                if progress and duration_ms and line.startswith(b"out_time_us="):
                    try:
                        done = int(line.split(b"=", 1)[1]) / 1000
                    except ValueError:
                        continue
                    progress(max(0.0, min(1.0, done / duration_ms)))
            rc = proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
            raise AudioError(f"ffmpeg took longer than {timeout:.0f}s") from None
        finally:
            proc.stdout.close()
        err.seek(0)
        return rc, err.read().decode("utf-8", "replace")
