"""Read back what an ALSA file sink holds and what a content file decodes to."""
from __future__ import annotations

import subprocess
from pathlib import Path


def pcm(path: Path) -> bytes:
    """Mono 48 kHz s16le PCM, decoded by ffmpeg: the format the player sends to ALSA."""
    return subprocess.run(["ffmpeg", "-v", "error", "-i", str(path), "-ac", "1", "-ar", "48000",
                           "-f", "s16le", "-"], capture_output=True, check=True).stdout
