"""`loaxa audio …`: prepare, say, probe."""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from .prepare import measure, prepare, probe
from .tts import synthesize


def register(sub: argparse._SubParsersAction) -> None:
    audio = sub.add_parser("audio", help="prepare, synthesise and inspect audio")
    aa = audio.add_subparsers(dest="audio_cmd", required=True)
    p = aa.add_parser("prepare", help="check, normalise (EBU R128) and encode a file")
    p.add_argument("file", type=Path)
    p.add_argument("-o", "--out", type=Path, required=True)
    p.add_argument("--codec", choices=["opus", "mp3"], default="opus")
    p.add_argument("--target", type=float, default=-16.0, help="loudness, LUFS")
    p.add_argument("--chime", help="'default' or a file to play before and after")
    p.add_argument("--allow-clipped", action="store_true")
    p.set_defaults(fn=cmd_prepare)
    p = aa.add_parser("say", help="Vietnamese text to speech")
    p.add_argument("text")
    p.add_argument("-o", "--out", type=Path, required=True)
    p.add_argument("--engine", choices=["auto", "gtts", "espeak-ng"], default="auto")
    p.add_argument("--speed", type=float, default=1.0)
    p.add_argument("--voice", default="vi", help="espeak-ng voice: vi, vi-vn-x-central, "
                   "vi-vn-x-south")
    p.set_defaults(fn=cmd_say)
    p = aa.add_parser("probe", help="duration, format, loudness and peak of a file")
    p.add_argument("file", type=Path)
    p.add_argument("--json", action="store_true")
    p.set_defaults(fn=cmd_probe)


def cmd_prepare(args) -> int:
    p = prepare(args.file, target_lufs=args.target, codec=args.codec, chime=args.chime,
                allow_clipped=args.allow_clipped)
    args.out.write_bytes(p.data)
    for w in p.warnings:
        print(f"cảnh báo / warning: {w}")
    print(f"{args.out}: {p.duration_ms / 1000:.1f} s, {p.size} B, {p.loudness_lufs:.1f} LUFS, "
          f"{p.true_peak_db:.1f} dBTP, sha256 {p.sha256}")
    return 0


def cmd_say(args) -> int:
    s = synthesize(args.text, engine=args.engine, speed=args.speed, voice=args.voice)
    args.out.write_bytes(s.data)
    print(f"{args.out}: {s.engine}, {s.fmt}, {len(s.data)} B; đọc / spoken: {s.spoken}")
    return 0


def cmd_probe(args) -> int:
    info, loud = probe(args.file), measure(args.file)
    d = {"file": str(args.file), "duration_s": info.duration_ms / 1000, "codec": info.codec,
         "sample_rate": info.sample_rate, "channels": info.channels,
         "loudness_lufs": loud.integrated, "true_peak_dbtp": loud.true_peak,
         "clipped_fraction": loud.at_full_scale}
    if args.json:
        print(json.dumps(d))
    else:
        print(f"{d['file']}: {d['duration_s']:.2f} s, {d['codec']}, {d['sample_rate']} Hz, "
              f"{d['channels']} ch, {d['loudness_lufs']:.1f} LUFS, "
              f"{d['true_peak_dbtp']:.1f} dBTP")
    return 0
