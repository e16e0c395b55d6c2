from __future__ import annotations

import shutil
import subprocess

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
