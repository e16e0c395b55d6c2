"""`make bench`: performance figures, each beside its baseline measured in the same run.

p1_alert — a khẩn cấp alert to 2,000 simulated stations (`loaxa sim fleet`) beside raw
mosquitto fan-out of one message of the same size (bench/p1_alert.py).

occurrence_step — a runner step's schedule queries for a three-year-old programme beside a
fresh one (bench/occurrences.py); issue 13's target: at most 1.2 ×.

hub_heartbeat — heartbeats from 1,000 stations through the hub's handler, beside verify +
one UPDATE per message (bench/hub_messages.py); issue 13's target: at least 60 %. With it,
hub_fetch: 5,000 stations fetching one file each from a hub on a real mosquitto, the hub's
time per fetch over the first and the last 500, beside a bare paho client's publishes of the
same chunks; target: flat (at most 1.5 ×).

reconnect_storm — P2 (issue 11): 2,000 simulated stations with 100 queued playback records
each connect at once; the hub's drain rate beside sqlite-utils insert_all of the same rows,
nothing lost or doubled (bench/reconnect_storm.py); target: at least 25 %.

hub_planning — P7 (issue 11): `hub serve` at 100, 1,000, 2,000 and 10,000 stations: the first
plan, the idle hub's CPU, one new item for all until every station's bundle is at an observer,
beside N raw publishes of the same size (bench/hub_planning.py); targets: ≤ 5 s at 10,000,
idle ≤ 2 % of a core.

agent_idle — P3 (issue 11): one agent idle for 5 minutes with a 100-item bundle: its CPU and
RSS beside a bare paho + cryptography process (bench/agent_idle.py); targets: RSS ≤ 1.4 ×,
CPU ≤ 0.5 % of a core.

start_accuracy — P4 (issue 11): 50 scheduled starts through the runner and the ALSA file sink:
first audio sample in the sink minus the instant, beside the player's own spawn-to-first-sample
(bench/start_accuracy.py); targets: median ≤ 10 ms, p99 ≤ 50 ms.

offline_return — P5 (issue 11): 2,000 simulated stations offline while ~1 MB of new audio and
a new programme for all are prepared, then back: until every station holds the file with its
programme active (one thread and own CPUs), and the audio bytes received beside what was
lacked (bench/offline_return.py); targets: ≤ 60 s, ≤ 1.05 ×.

audio_prepare — a 60-second Vietnamese announcement (speech synthesised once, beforehand,
not timed; also quiet at 44.1 kHz stereo, and as MP3) prepared by audio.prepare, against the
raw ffmpeg decode + Opus encode of the same input. Median of 5 runs each. Targets (issues 4
and 11): under 2 s, at most 2 × the raw decode + encode, at most 250 KB.
"""
from __future__ import annotations

import json
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

from audio import prepare, probe, synthesize

RESULTS = Path(__file__).resolve().parent / "results"
RUNS = 5


def _announcement(tmp: Path, seconds: int = 60) -> Path:
    text = ("Ủy ban nhân dân xã thông báo: ngày 25/12/2030, lúc 7h30, tại nhà văn hóa thôn, "
            "trạm y tế xã tổ chức tiêm chủng cho trẻ em dưới 5 tuổi. Đề nghị bà con đưa trẻ "
            "đến đúng giờ và mang theo sổ tiêm chủng. ")
    src = tmp / "announcement.wav"
    speech = synthesize(text * 2, engine="espeak-ng")
    src.write_bytes(speech.data)
    # pad or trim to exactly 60 s so runs compare
    out = tmp / f"a{seconds}.wav"
    subprocess.run(["ffmpeg", "-v", "error", "-stream_loop", "-1", "-i", str(src), "-t",
                    str(seconds), str(out)], check=True)
    return out


def _median_time(fn, runs: int = RUNS) -> tuple[float, object]:
    times, result = [], None
    for _ in range(runs):
        t0 = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times), result


def _variants(tmp: Path, src: Path) -> dict[str, Path]:
    """Issue 11's P6 inputs: the speech as synthesised, the same quiet (−14 dB) at 44.1 kHz
    stereo, and as a 128 kb/s MP3."""
    quiet, mp3 = tmp / "quiet44stereo.wav", tmp / "speech.mp3"
    subprocess.run(["ffmpeg", "-v", "error", "-i", str(src), "-af", "volume=-14dB", "-ar",
                    "44100", "-ac", "2", str(quiet)], check=True)
    subprocess.run(["ffmpeg", "-v", "error", "-i", str(src), "-ar", "44100", "-ac", "2",
                    "-b:a", "128k", str(mp3)], check=True)
    return {"speech": src, "quiet_44k1_stereo": quiet, "mp3": mp3}


def bench_audio_prepare() -> dict:
    with tempfile.TemporaryDirectory(prefix="loaxa-bench-") as d:
        tmp = Path(d)
        src = _announcement(tmp)
        raw_out = tmp / "raw.opus"
        inputs, ok = {}, True
        for name, path in _variants(tmp, src).items():
            baseline_s, _ = _median_time(lambda: subprocess.run(
                ["ffmpeg", "-v", "error", "-y", "-i", str(path), "-ac", "1", "-c:a", "libopus",
                 "-b:a", "24k", str(raw_out)], check=True))
            prep_s, p = _median_time(lambda: prepare(path))
            ratio = prep_s / baseline_s
            meets = prep_s < 2.0 and ratio <= 2.0 and p.size <= 250_000
            ok &= meets
            inputs[name] = {
                "prepare_median_s": round(prep_s, 3), "prepared_bytes": p.size,
                "prepared_loudness_lufs": p.loudness_lufs,
                "prepared_true_peak_dbtp": p.true_peak_db,
                "baseline_raw_ffmpeg_decode_encode_median_s": round(baseline_s, 3),
                "ratio_to_baseline": round(ratio, 2), "meets_targets": meets}
        return {
            "name": "audio_prepare", "input_duration_s": probe(src).duration_ms / 1000,
            "inputs": inputs,
            "targets": {"prepare_s": 2.0, "ratio_to_baseline": 2.0, "bytes": 250_000},
            "meets_targets": ok, "runs": RUNS,
        }


def main() -> int:
    RESULTS.mkdir(exist_ok=True)
    meta = {"at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "python": sys.version.split()[0], "machine": platform.machine(),
            "cpus": __import__("os").cpu_count()}
    ok = True
    from bench.hub_messages import run as bench_hub_heartbeat
    from bench.agent_idle import run as bench_agent_idle
    from bench.hub_planning import run as bench_hub_planning
    from bench.start_accuracy import run as bench_start_accuracy
    from bench.occurrences import run as bench_occurrences
    from bench.offline_return import run as bench_offline_return
    from bench.p1_alert import run as bench_p1_alert
    from bench.reconnect_storm import run as bench_reconnect_storm
    from bench.web_console import run as bench_web_console
    benches = {"occurrences": bench_occurrences, "hub_heartbeat": bench_hub_heartbeat,
               "audio_prepare": bench_audio_prepare, "p1_alert": bench_p1_alert,
               "web_console": bench_web_console, "reconnect_storm": bench_reconnect_storm,
               "hub_planning": bench_hub_planning, "agent_idle": bench_agent_idle,
               "start_accuracy": bench_start_accuracy, "offline_return": bench_offline_return}
    chosen = sys.argv[1:] or list(benches)  # `python -m bench p1_alert`: one of them
    unknown = [c for c in chosen if c not in benches]
    if unknown:
        print(f"unknown benchmark {', '.join(unknown)}; choose from {', '.join(benches)}",
              file=sys.stderr)
        return 2
    for name in chosen:
        out = benches[name]()
        for result in [out, *out.pop("also", [])]:  # a bench may measure more than one thing
            result = {**result, **meta}
            (RESULTS / f"{result['name']}.json").write_text(json.dumps(result, indent=1))
            print(json.dumps(result, indent=1))
            ok &= result.get("meets_targets", True)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
