"""Turn any audio file into broadcast content: checked, loudness-normalised (EBU R128),
optionally framed by a chime, encoded for transfer (mono Opus by default, MP3 as an option),
named by its SHA-256.

The input is decoded once, to a 48 kHz mono float working signal (raw, in a temporary
folder), in the same pass that measures it; the gain search, the encoder and nothing else
read the input again. The encoded result is decoded once more to check its true peak.
"""
from __future__ import annotations

import hashlib
import json
import os
import re
import subprocess
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from ._run import ffmpeg_pass, run, tool
from .errors import AudioError

Progress = Callable[[str, float], None]  # (phase, fraction done) for long preparations

TARGET_LUFS = -16.0
TRUE_PEAK_DB = -1.0          # the limit: prepared audio never peaks above it
CEILING_MARGIN_DB = 2.5      # limiter ceiling below the limit (encoder and inter-sample peaks)
BITRATE = {"opus": "24k", "mp3": "48k"}
MIN_DURATION_MS = 200
MAX_DURATION_MS = 4 * 3600 * 1000
MIN_SAMPLE_RATE = 8000
SILENT_BELOW_LUFS = -60.0
CLIPPED_FRACTION = 0.001     # more than 0.1 % of samples at full scale


@dataclass(frozen=True)
class Prepared:
    data: bytes
    sha256: str
    duration_ms: int
    codec: str = "opus"
    loudness_lufs: float | None = None
    true_peak_db: float | None = None
    warnings: tuple[str, ...] = field(default=())

    @property
    def size(self) -> int:
        return len(self.data)


@dataclass(frozen=True)
class Probe:
    duration_ms: int
    codec: str
    sample_rate: int
    channels: int


@dataclass(frozen=True)
class Loudness:
    integrated: float         # LUFS (EBU R128)
    true_peak: float | None   # dBTP, when measured
    at_full_scale: float      # fraction of samples at full scale (clipping)
    duration_ms: int = 0      # of the input, as ffmpeg read it
    sample_rate: int = 0


def probe(path: str | os.PathLike[str]) -> Probe:
    """What an audio file holds; a clear AudioError naming the file if it holds no audio."""
    name = os.fspath(path)
    out = run(["ffprobe", "-v", "error", "-print_format", "json", "-show_format",
               "-show_streams", "-select_streams", "a:0", name], what=f"probe {name}")
    try:
        info = json.loads(out)
        stream = info["streams"][0]
        duration = float(stream.get("duration") or info["format"]["duration"])
    except (ValueError, KeyError, IndexError, TypeError):
        raise AudioError(f"{name}: no audio stream found (not an audio file?)") from None
    return Probe(int(round(duration * 1000)), stream.get("codec_name", "?"),
                 int(stream.get("sample_rate") or 0), int(stream.get("channels") or 0))


_I = re.compile(r"^\s+I:\s+(-?[\d.]+|-inf) LUFS", re.M)
_PEAK = re.compile(r"^\s+Peak:\s+(-?[\d.]+|-inf) dBFS", re.M)


# the working signal, decoded once: 48 kHz mono 32-bit float, raw
PCM_FORMAT = ["-f", "f32le", "-ar", "48000", "-ac", "1"]
TO_PCM = "aresample=48000,aformat=channel_layouts=mono"


def _ebur128(name: str, pre: str = "", *, true_peak: bool = False,
             clipping: bool = False, label: str | None = None, duration_ms: int = 0,
             progress: Callable[[float], None] | None = None, pcm_in: bool = False,
             pcm_out: str | None = None) -> Loudness:
    """One ffmpeg pass: EBU R128 integrated loudness (and true peak, and clipping of the
    input as decoded). ``pcm_in``: ``name`` is the raw working signal; ``pcm_out``: also
    write what the chain makes there as the raw working signal."""
    label = label or name
    chain = []
    if clipping:
        chain.append("astats=measure_perchannel=none:measure_overall="
                     "Peak_level+Peak_count+Number_of_samples")
    chain += [f for f in (pre,) if f]
    chain.append("ebur128" + ("=peak=true" if true_peak else ""))
    out = (["-c:a", "pcm_f32le", "-f", "f32le", "-y", pcm_out] if pcm_out else
           ["-f", "null", "-"])
    rc, stderr = ffmpeg_pass([*(PCM_FORMAT if pcm_in else []), "-i", name, "-vn", "-map",
                              "0:a:0", "-af", ",".join(chain), *out],
                             duration_ms=duration_ms, progress=progress, timeout=3600)
    if rc != 0:
        last = [ln for ln in stderr.strip().splitlines() if ln.strip()][-1:]
        raise AudioError(f"{label}: không giải mã được / cannot be decoded ({' '.join(last)})")
    return _loudness(stderr, label, true_peak=true_peak, clipping=clipping)


def _loudness(stderr: str, label: str, *, true_peak: bool, clipping: bool) -> Loudness:
    """What an ``ebur128`` (and ``astats``) pass printed."""
    found = _I.findall(stderr)
    if not found:
        raise AudioError(f"{label}: không đo được độ lớn / loudness could not be measured")
    integrated = float(found[-1]) if found[-1] != "-inf" else -200.0
    tp = None
    if true_peak:
        peaks = _PEAK.findall(stderr)
        tp = float(peaks[-1]) if peaks and peaks[-1] != "-inf" else -200.0
    at_full = 0.0
    if clipping:
        peak = re.search(r"Peak level dB:\s*(-?[\d.]+|-inf)", stderr)
        count = re.search(r"Peak count:\s*([\d.]+)", stderr)
        n = re.search(r"Number of samples:\s*([\d.]+)", stderr)
        if peak and count and n and peak.group(1) != "-inf" and float(peak.group(1)) > -0.01:
            at_full = float(count.group(1)) / max(float(n.group(1)), 1.0)
    dur = re.search(r"Duration: (\d+):(\d+):([\d.]+)", stderr)
    rate = re.search(r"Audio: [^,]+, (\d+) Hz", stderr)
    duration_ms = int(round((int(dur.group(1)) * 3600 + int(dur.group(2)) * 60
                             + float(dur.group(3))) * 1000)) if dur else 0
    return Loudness(integrated, tp, at_full, duration_ms, int(rate.group(1)) if rate else 0)


def measure(path: str | os.PathLike[str]) -> Loudness:
    """Integrated loudness, true peak and clipping of a file, as ffmpeg measures them."""
    return _ebur128(os.fspath(path), true_peak=True, clipping=True)


def _chain(gain_db: float, ceiling_db: float) -> str:
    """On the working signal: gain to the target, then a limiter a margin below the
    true-peak limit (the encoder and inter-sample peaks add up to ~1.5 dB over the sample
    peak)."""
    return (f"volume={gain_db:.2f}dB,"
            f"alimiter=limit={10 ** (ceiling_db / 20):.5f}:level=false:attack=2:release=60")


LOUDNESS_TOLERANCE_LU = 0.5  # of the encoded result (EBU R128 allows ±1 LU)
SECOND_GAIN_DB = 2.0  # the second gain measured beside the first (see _solve_gain)
ENCODER_LOSS_LU = 0.3  # Opus at speech bit rates reads ~0.3 LU quieter than its input


def _solve_gain(name: str, target: float, start: Loudness, ceiling_db: float,
                tick: Callable[[float], None] | None = None) -> float:
    """The gain that lands the limited signal on ``target`` LUFS. The limiter makes loudness
    grow less than the gain, so two gains are measured at once (one ebur128 pass each, one
    per core), the straight line through them gives the answer, and it is returned
    unmeasured: the encoded result is measured anyway, and corrected if it missed."""
    from concurrent.futures import ThreadPoolExecutor
    aim = target + ENCODER_LOSS_LU
    low = aim - start.integrated
    gains = (low, low + SECOND_GAIN_DB)
    done = [0.0, 0.0]

    def level(k: int) -> float:
        def seen(f: float) -> None:
            done[k] = f
            if tick:
                tick(sum(done) / 2)
        return _ebur128(name, _chain(gains[k], ceiling_db), duration_ms=start.duration_ms,
                        progress=seen, pcm_in=True).integrated
    with ThreadPoolExecutor(2) as pool:  # two ffmpeg processes: the threads only wait
        got = list(pool.map(level, (0, 1)))
    if tick:
        tick(1.0)
    best = min((0, 1), key=lambda k: abs(got[k] - aim))
    if abs(got[best] - aim) <= 0.25:
        return gains[best]
    slope = min(max((got[1] - got[0]) / SECOND_GAIN_DB, 0.1), 1.0)
    return gains[best] + (aim - got[best]) / slope


def _encode_checked(encode: list[str], out: Path, label: str, duration_ms: int,
                    progress: Callable[[float], None] | None) -> Loudness:
    """Encode to ``out`` and measure what was encoded (true peak, loudness) at the same
    time: the encoder's stream goes to the file and into a second ffmpeg that decodes it, so
    the check costs little time of its own on a machine with two cores. Returns the check's
    measurement, with the file's duration."""
    with tempfile.TemporaryFile() as err1, tempfile.TemporaryFile() as err2, \
            open(out, "wb") as f:
        enc = subprocess.Popen([tool("ffmpeg"), "-nostdin", "-hide_banner", *encode, "pipe:1"],
                               stdout=subprocess.PIPE, stderr=err1, stdin=subprocess.DEVNULL)
        chk = subprocess.Popen([tool("ffmpeg"), "-nostdin", "-hide_banner", "-nostats", "-i",
                                "pipe:0", "-af", "ebur128=peak=true", "-f", "null", "-"],
                               stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=err2)
        assert enc.stdout is not None and chk.stdin is not None
        expected = max(duration_ms, 1) * 24_000 / 8000  # bytes at the nominal bit rate
        written = 0
        try:
            for block in iter(lambda: enc.stdout.read(1 << 16), b""):
                f.write(block)
                try:
                    chk.stdin.write(block)
                except BrokenPipeError:
                    pass  # the check failed: its exit code says so below
                written += len(block)
                if progress:
                    progress(min(1.0, written / expected))
            try:
                chk.stdin.close()
            except BrokenPipeError:
                pass
            rc_enc, rc_chk = enc.wait(3600), chk.wait(3600)
        except subprocess.TimeoutExpired:
            for proc in (enc, chk):
                proc.kill()
                proc.wait()
            raise AudioError(f"{label}: ffmpeg took longer than 3600s") from None
        finally:
            enc.stdout.close()
        err1.seek(0)
        err2.seek(0)
        e1, e2 = (e.read().decode("utf-8", "replace") for e in (err1, err2))
    if rc_enc != 0:
        raise AudioError(f"{label}: không mã hóa được / encoding failed: "
                         f"{' | '.join(e1.strip().splitlines()[-3:])}")
    if rc_chk != 0:
        raise AudioError(f"{label}: bản mã hóa không đọc lại được / the encoded audio cannot be "
                         f"read back: {' | '.join(e2.strip().splitlines()[-3:])}")
    got = _loudness(e2, label, true_peak=True, clipping=False)
    return Loudness(got.integrated, got.true_peak, 0.0, probe(out).duration_ms, 48000)


def default_chime(path: Path) -> Path:
    """Two soft tones (G5, C6), the familiar call to attention before an announcement."""
    run(["ffmpeg", "-nostdin", "-v", "error", "-f", "lavfi", "-i",
         "sine=frequency=784:duration=0.35", "-f", "lavfi", "-i",
         "sine=frequency=1047:duration=0.6", "-filter_complex",
         "[0]afade=t=out:st=0.25:d=0.1[a];[1]afade=t=out:st=0.2:d=0.4[b];"
         "[a][b]concat=n=2:v=0:a=1,volume=0.5", str(path)], what="make chime")
    return path


def prepare(src: str | os.PathLike[str], *, target_lufs: float = TARGET_LUFS,
            true_peak_db: float = TRUE_PEAK_DB, codec: str = "opus",
            chime: str | os.PathLike[str] | None = None,
            allow_clipped: bool = False, label: str | None = None,
            progress: Progress | None = None) -> Prepared:
    """``label`` names the input in messages (a temporary file's name means nothing to a
    person); ``progress(phase, fraction)`` hears how far a long preparation has got."""
    name = os.fspath(src)
    label = label or name
    if codec not in BITRATE:
        raise AudioError(f"codec {codec!r}: use opus or mp3")
    if Path(name).is_dir():
        raise AudioError(f"{label} là một thư mục, không phải tệp âm thanh / is a folder, not an "
                         f"audio file")
    if not Path(name).is_file():
        raise AudioError(f"không có tệp {label} / {label}: no such file")
    phase = (lambda what: (lambda f: progress(what, f))) if progress else (lambda what: None)
    with tempfile.TemporaryDirectory(prefix="loaxa-prep-") as tmp:
        source = Path(name)
        pcm = str(Path(tmp) / "work.f32")
        known = probe(name).duration_ms if progress else 0
        # one decoding pass: clipping, length and rate of the input, the working signal
        # (48 kHz mono) written once, and its loudness; every later pass reads that
        loud = _ebur128(name, TO_PCM, clipping=True, label=label, duration_ms=known,
                        progress=phase("đo độ lớn / measuring"), pcm_out=pcm)
        if loud.duration_ms < MIN_DURATION_MS:
            raise AudioError(f"{label}: chỉ có {loud.duration_ms} ms âm thanh, quá ngắn / only "
                             f"{loud.duration_ms} ms of audio")
        if loud.duration_ms > MAX_DURATION_MS:
            raise AudioError(f"{label}: {loud.duration_ms / 3600000:.1f} giờ, dài quá 4 giờ / "
                             f"longer than 4 h")
        if loud.sample_rate and loud.sample_rate < MIN_SAMPLE_RATE:
            raise AudioError(f"{label}: tần số lấy mẫu {loud.sample_rate} Hz dưới 8000 Hz / "
                             f"sample rate below 8000 Hz")
        if loud.integrated < SILENT_BELOW_LUFS:
            raise AudioError(f"{label}: im lặng, không có tiếng / silent "
                             f"({loud.integrated:.0f} LUFS)")
        warnings = []
        if loud.at_full_scale > CLIPPED_FRACTION:
            msg = (f"{label}: bị méo do quá tải / clipped ({loud.at_full_scale:.2%} of samples "
                   f"at full scale)")
            if not allow_clipped:
                raise AudioError(msg + "; fix the recording or allow it explicitly")
            warnings.append(msg)
        if chime is not None:
            bell = default_chime(Path(tmp) / "chime.wav") if chime == "default" else Path(chime)
            framed = Path(tmp) / "framed.wav"
            run(["ffmpeg", "-nostdin", "-v", "error", "-i", str(bell), "-i", name, "-i",
                 str(bell), "-filter_complex",
                 "[0]aresample=48000,aformat=channel_layouts=mono,apad=pad_dur=0.4[a];"
                 "[1]aresample=48000,aformat=channel_layouts=mono,apad=pad_dur=0.4[b];"
                 "[2]aresample=48000,aformat=channel_layouts=mono[c];"
                 "[a][b][c]concat=n=3:v=0:a=1", str(framed)], what=f"frame {name}")
            source = framed
            loud = _ebur128(str(source), TO_PCM, pcm_out=pcm)
        out = Path(tmp) / f"out.{codec}"
        enc = (["-c:a", "libopus", "-b:a", BITRATE["opus"], "-vbr", "constrained",
                "-application", "voip", "-f", "ogg"] if codec == "opus" else
               ["-c:a", "libmp3lame", "-b:a", BITRATE["mp3"], "-f", "mp3"])
        ceiling = true_peak_db - CEILING_MARGIN_DB
        gain = _solve_gain(pcm, target_lufs, loud, ceiling,
                           phase("cân chỉnh độ lớn / levelling"))
        for _ in range(4):
            encode = ["-v", "error", *PCM_FORMAT, "-i", pcm, "-af", _chain(gain, ceiling),
                      "-ac", "1", "-ar", "48000", *enc, "-fflags", "+bitexact", "-flags:a",
                      "+bitexact"]
            if codec == "opus":  # checked as it is encoded, on the other core
                result = _encode_checked(encode, out, label, loud.duration_ms,
                                         phase("mã hóa / encoding"))
            else:  # an MP3's header is rewritten at the end: the file, then its check
                rc, err = ffmpeg_pass([*encode, "-y", str(out)], duration_ms=loud.duration_ms,
                                      progress=phase("mã hóa / encoding"))
                if rc != 0:
                    raise AudioError(f"{label}: không mã hóa được / encoding failed: "
                                     f"{' | '.join(err.strip().splitlines()[-3:])}")
                result = _ebur128(str(out), true_peak=True, label=label,
                                  duration_ms=loud.duration_ms,
                                  progress=phase("kiểm tra / checking"))
            off = result.integrated - target_lufs
            if abs(off) > LOUDNESS_TOLERANCE_LU:  # the unmeasured last gain step missed
                gain -= off
                continue
            if result.true_peak is not None and result.true_peak <= true_peak_db:
                break
            # dense speech comes out of the encoder with more overshoot: lower the limiter's
            # ceiling at the same gain (costs ~0.5 LU per dB; the peak limit is absolute,
            # the loudness target has ±1 LU to give)
            ceiling -= result.true_peak - true_peak_db + 0.2
        else:
            raise AudioError(f"{label}: không đạt được độ lớn {target_lufs} LUFS với đỉnh dưới "
                             f"{true_peak_db} dBTP / could not reach {target_lufs} LUFS with "
                             f"peaks under {true_peak_db} dBTP in 4 encodings")
        data = out.read_bytes()
        duration = result.duration_ms
    return Prepared(data, hashlib.sha256(data).hexdigest(), duration, codec,
                    loudness_lufs=result.integrated, true_peak_db=result.true_peak,
                    warnings=tuple(warnings))
