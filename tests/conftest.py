"""Shared fixtures: a real mosquitto per test, real SQLite files, an ALSA file sink."""
from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Callable

import pytest

from deploy.broker import Mosquitto

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def mosquitto(tmp_path):
    broker = Mosquitto(tmp_path / "broker").start()
    yield broker
    broker.stop()


def wait_for(pred: Callable[[], object], timeout: float = 20.0, what: str = "condition",
             interval: float = 0.05):
    """Poll until ``pred()`` is truthy: waiting for an event (a message, a record), never for
    a scheduled time; the schedule is reached by moving the clock."""
    deadline = time.monotonic() + timeout
    while True:
        value = pred()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)


@pytest.fixture
def sink(tmp_path):
    """An ALSA config naming a PCM 'loaxa_sink' that writes what is played to sink.wav."""
    from audio.player import file_sink_config
    conf = tmp_path / "sink.conf"
    wav = tmp_path / "sink.wav"
    conf.write_text(file_sink_config(wav))
    return conf, wav
