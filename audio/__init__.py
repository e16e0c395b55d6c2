"""Everything that touches sound: preparing content, speech synthesis, playing.

Only this package runs ffmpeg, ffprobe, espeak-ng or gTTS.
"""
from .errors import AudioError
from .prepare import Prepared, prepare, probe
from .player import AlsaPlayer, Playback, check_device
from .tts import Speech, synthesize

__all__ = ["AlsaPlayer", "AudioError", "Playback", "check_device", "Prepared", "Speech", "prepare", "probe",
           "synthesize"]
