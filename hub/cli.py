"""`loaxa hub …`: a few lines per command over the hub's library."""
from __future__ import annotations

import argparse
import json
import logging
import signal
import sys
import threading
from contextlib import contextmanager
from datetime import time as dtime
from pathlib import Path

from protocol.clock import iso, make_clock
from protocol.envelope import Signer
from protocol.storage import write
from protocol.topics import Topics
from schedules import Item, Priority
from schedules.model import ScheduleError

from . import config as hubconfig
from .admin import (EVERY, NOT_SERVING, add_content_file, add_content_text, add_station,
                    announce, check_target, find_content, first_start, hub_view, init_hub,
                    is_serving, parse_duration, serving, set_station_key, status_rows)
from .config import HubError
from .display import ALARMS_VI, parse_date, parse_when, render_hub, render_status, show
from .link import HubLink
from .store import HubStore


# -- argparse wiring -------------------------------------------------------------------------

_HOME = argparse.ArgumentParser(add_help=False)
_HOME.add_argument("--home", type=Path, default=argparse.SUPPRESS,
                   help="hub folder (also accepted before the subcommand)")


def _leaf(subparsers, name: str, **kw) -> argparse.ArgumentParser:
    """A subcommand that accepts ``--home`` after its name as well as before it."""
    return subparsers.add_parser(name, parents=[_HOME], **kw)


def register(sub: argparse._SubParsersAction) -> None:
    hub = sub.add_parser("hub", help="the district/province hub")
    hub.add_argument("--home", type=Path, default=hubconfig.default_home(),
                     help="hub folder (default $LOAXA_HUB_HOME or ~/.local/share/loaxa/hub)")
    hs = hub.add_subparsers(dest="hub_cmd", required=True)

    p = _leaf(hs, "init", help="create the database and the hub's signing key")
    p.add_argument("--broker-host", default="127.0.0.1")
    p.add_argument("--broker-port", type=int, default=1883)
    p.add_argument("--prefix", default="loaxa")
    p.add_argument("--quiet-hours", help="HH:MM-HH:MM in which only khẩn cấp plays")
    p.set_defaults(fn=cmd_init)

    p = _leaf(hs, "station", help="stations")
    ss = p.add_subparsers(dest="station_cmd", required=True)
    a = _leaf(ss, "add", help="register a station and write its enrolment folder")
    a.add_argument("id")
    a.add_argument("--name", required=True)
    a.add_argument("--group", action="append", default=[])
    a.add_argument("--out", type=Path, help="enrolment folder (default HOME/stations/ID)")
    a.add_argument("--public-key", help="the station's public key (`loaxa agent keygen`), "
                   "if it already has one")
    a.set_defaults(fn=cmd_station_add)
    a = _leaf(ss, "key", help="record the public key a station made (`loaxa agent keygen`)")
    a.add_argument("id")
    a.add_argument("public_key")
    a.set_defaults(fn=cmd_station_key)

    p = _leaf(hs, "content", help="audio content")
    cs = p.add_subparsers(dest="content_cmd", required=True)
    a = _leaf(cs, "add", help="prepare an audio file and store it by SHA-256")
    a.add_argument("file", type=Path)
    a.add_argument("--title")
    a.set_defaults(fn=cmd_content_add)

    p = _leaf(hs, "announce", help="schedule content or spoken text")
    what = p.add_mutually_exclusive_group(required=True)
    what.add_argument("--content", help="content SHA-256 (a unique prefix is enough)")
    what.add_argument("--text", help="Vietnamese text, spoken by TTS")
    p.add_argument("--at", default="+1m", help="dd/mm/yyyy HH:MM, HH:MM, +30s, now")
    p.add_argument("--every", help="hourly, daily, weekly, weekdays or an RFC 5545 RRULE")
    p.add_argument("--from", dest="valid_from", help="campaign start, dd/mm/yyyy")
    p.add_argument("--until", dest="valid_until", help="campaign end (inclusive), dd/mm/yyyy")
    p.add_argument("--priority", default="thong-thuong",
                   help="thong-thuong, uu-tien or khan-cap")
    p.add_argument("--to", default="all", help="all, group:ID or station:ID")
    p.add_argument("--late-start", type=int, default=300, help="seconds it may still start late")
    p.add_argument("--title", default="")
    p.add_argument("--tts", default="auto", choices=["auto", "gtts", "espeak-ng"])
    p.add_argument("--stream", help="relay (tiếp âm) this http(s) URL; the content or text "
                   "is the fallback if the stream fails")
    p.add_argument("--for", dest="duration", help="how long to relay: 90s, 15m, 2h")
    p.set_defaults(fn=cmd_announce)

    p = _leaf(hs, "status", help="every station's state")
    p.add_argument("--json", action="store_true")
    p.set_defaults(fn=cmd_status)

    p = _leaf(hs, "serve", help="run the hub")
    p.set_defaults(fn=cmd_serve)

    p = _leaf(hs, "acl", help="print the broker's ACL for this hub's topic prefix")
    p.set_defaults(fn=cmd_acl)

    p = _leaf(hs, "alarm", help="alarms: list, acknowledge")
    al = p.add_subparsers(dest="alarm_cmd", required=True)
    a = _leaf(al, "list", help="open alarms (--all: with the cleared ones)")
    a.add_argument("--all", action="store_true")
    a.set_defaults(fn=cmd_alarm_list)
    a = _leaf(al, "ack", help="acknowledge an alarm with a note")
    a.add_argument("id", type=int)
    a.add_argument("--by", required=True, help="who acknowledges (the duty officer)")
    a.add_argument("--note", required=True)
    a.set_defaults(fn=cmd_alarm_ack)

    p = _leaf(hs, "heightened", help="a heightened period (election, holiday, storm)")
    p.add_argument("--to", required=True, help="all, group:ID or station:ID")
    p.add_argument("--from", dest="start", required=True, help="dd/mm/yyyy HH:MM")
    p.add_argument("--until", dest="end", required=True, help="dd/mm/yyyy HH:MM")
    p.add_argument("--reason", required=True)
    p.add_argument("--heartbeat", type=int, default=15, help="heartbeat seconds (default 15)")
    p.add_argument("--selftest", default="05:00", help="daily self-test time (default 05:00)")
    p.set_defaults(fn=cmd_heightened)

    p = _leaf(hs, "emergency", help="the message a station's emergency button plays")
    p.add_argument("--to", default="all", help="all or station:ID")
    what = p.add_mutually_exclusive_group(required=True)
    what.add_argument("--content")
    what.add_argument("--text")
    p.set_defaults(fn=cmd_emergency)


def cmd_init(args) -> int:
    init_hub(args.home, broker_host=args.broker_host, broker_port=args.broker_port,
             prefix=args.prefix, quiet=args.quiet_hours)
    print(f"Đã tạo hub tại {args.home} / hub created (key {args.home / 'hub.key'}, mode 0600)")
    return 0


def cmd_station_add(args) -> int:
    cfg = hubconfig.load(args.home)
    out = args.out or args.home / "stations" / args.id
    path = add_station(cfg, args.id, name=args.name, groups=args.group, out=out,
                       public_key=args.public_key)
    print(f"Đã thêm trạm {args.id}; gói đăng ký / enrolment: {path.parent}")
    if not args.public_key:
        print(f"Trên trạm chạy / on the station run: loaxa agent keygen --config station.toml\n"
              f"rồi ở hub / then here: loaxa hub station key {args.id} <khóa công khai / "
              f"public key>")
    return 0


def cmd_station_key(args) -> int:
    set_station_key(hubconfig.load(args.home), args.id, args.public_key)
    print(f"Đã ghi khóa công khai của trạm {args.id} / public key recorded")
    return 0


def _warn_if_not_serving(store: HubStore) -> None:
    if not is_serving(store.path):
        print(NOT_SERVING, file=sys.stderr)


@contextmanager
def _open(args):
    """The hub of ``--home``: its configuration, its database, and its clock's now."""
    cfg = hubconfig.load(args.home)
    store = HubStore(cfg.db_path)
    try:
        yield cfg, store, make_clock(cfg.clock).now()
    finally:
        store.close()


def cmd_content_add(args) -> int:
    with _open(args) as (cfg, store, now):
        c = add_content_file(store, args.file, title=args.title or args.file.stem,
                             now=now, progress=progress_printer())
    print(f"{c['sha']}  {c['duration_ms'] / 1000:.1f} s  {c['size']} B  {c['title']}")
    return 0


def cmd_announce(args) -> int:
    with _open(args) as (cfg, store, now):
        # every argument is checked before anything is synthesised or stored
        try:
            priority = Priority.parse(args.priority)
        except ScheduleError as exc:
            raise HubError(str(exc)) from None
        target = check_target(store, args.to)
        when = parse_when(args.at, now)
        vf = parse_date(args.valid_from) if args.valid_from else None
        vu = parse_date(args.valid_until, end=True) if args.valid_until else None
        if args.stream and not args.duration:
            raise HubError("tiếp âm cần thời lượng / a relay needs a duration (--for 30m)")
        duration = parse_duration(args.duration) if args.stream else None
        try:  # the rule itself, with the station's own code, before any content exists
            Item("check", "0" * 64, duration or 1000, priority, when,
                 rrule=EVERY.get(args.every, args.every) if args.every else None,
                 valid_from=vf, valid_until=vu, late_start_s=args.late_start,
                 stream=args.stream)
        except ScheduleError as exc:
            raise HubError(str(exc)) from None
        rrule = EVERY.get(args.every, args.every) if args.every else None
        first = first_start(when, rrule=rrule, valid_from=vf, valid_until=vu,
                            late_start_s=args.late_start, now=now)
        if args.text is not None:
            if not args.text.strip():
                raise HubError("văn bản trống: không có gì để đọc / the text is empty")
            content = add_content_text(store, args.text, title=args.title or args.text[:60],
                                       now=now, engine=args.tts, progress=progress_printer())
        else:
            content = find_content(store, args.content)
        item = announce(store, content=content, when=when, priority=priority, target=target,
                        every=args.every, valid_from=vf, valid_until=vu,
                        late_start_s=args.late_start, title=args.title, now=now,
                        stream=args.stream, duration_ms=duration)
        print(f"Đã lên lịch {item}: {show(when)} ({priority.label_vi}) → {target}")
        if rrule and first != when:
            print(f"Lần phát đầu tiên / first occurrence: {show(first)}")
        _warn_if_not_serving(store)
    return 0


def progress_printer():
    """Long work says how far it has got, on stderr (a 2-hour recording takes minutes)."""
    last: list = [None]

    def show_progress(phase: str, fraction: float) -> None:
        pct = int(fraction * 100)
        if (phase, pct // 10) != last[0]:
            last[0] = (phase, pct // 10)
            print(f"  {phase}: {pct}%", file=sys.stderr, flush=True)
    return show_progress


def cmd_status(args) -> int:
    with _open(args) as (cfg, store, now):
        view = hub_view(store, now)
        rows = status_rows(store, now, view)
    if args.json:
        print(json.dumps({"hub": view, "stations": rows}, ensure_ascii=False, indent=1))
    else:
        print(render_hub(view))
        print(render_status(rows))
    return 0


def cmd_alarm_list(args) -> int:
    with _open(args) as (cfg, store, now):
        rows = store.q("SELECT * FROM alarms " + ("" if args.all else "WHERE cleared_at IS NULL ")
                       + "ORDER BY raised_at")
    if not rows:
        print("Không có cảnh báo / no alarms")
    for a in rows:
        state = f"đã hết {show(a['cleared_at'])}" if a["cleared_at"] else "đang mở"
        ack = f"; đã xác nhận bởi {a['acked_by']}: {a['ack_note']}" if a["acked_at"] else ""
        print(f"#{a['id']}  {a['station_id']}  {ALARMS_VI.get(a['code'], a['code'])}  "
              f"từ {show(a['raised_at'])}  {state}  {a['detail']}{ack}")
    return 0


def cmd_alarm_ack(args) -> int:
    with _open(args) as (cfg, store, now):
        if not store.ack_alarm(args.id, args.by, args.note, now):
            raise HubError(f"cảnh báo #{args.id} không có hoặc đã xác nhận / alarm #{args.id} "
                           f"does not exist or is already acknowledged")
    print(f"Đã xác nhận cảnh báo #{args.id} / acknowledged")
    return 0


def cmd_heightened(args) -> int:
    with _open(args) as (cfg, store, now):
        target = check_target(store, args.to)
        start, end = parse_when(args.start, now), parse_when(args.end, now)
        if end <= start:
            raise HubError("thời gian kết thúc phải sau bắt đầu / the end must be after the start")
        if not 5 <= args.heartbeat <= 3600:
            raise HubError("nhịp tim 5-3600 giây / heartbeat must be 5-3600 s")
        try:
            dtime.fromisoformat(args.selftest)
        except ValueError:
            raise HubError(f"giờ tự kiểm tra {args.selftest!r} / self-test time: HH:MM") from None
        with write(store.db):
            store.db["heightened"].insert({"target": target, "start": iso(start),
                                           "end": iso(end), "reason": args.reason,
                                           "heartbeat_s": args.heartbeat,
                                           "selftest_at": args.selftest,
                                           "created_at": iso(now)})
        print(f"Giai đoạn cao điểm / heightened: {target} {show(start)} → {show(end)} "
              f"({args.reason}); nhịp tim {args.heartbeat} s, tự kiểm tra {args.selftest}")
        _warn_if_not_serving(store)
    return 0


def cmd_emergency(args) -> int:
    with _open(args) as (cfg, store, now):
        target = check_target(store, args.to)
        if target.startswith("group:"):
            raise HubError("chỉ all hoặc station:ID / only all or station:ID")
        content = add_content_text(store, args.text, title="Tin khẩn cấp tại chỗ", now=now) \
            if args.text else find_content(store, args.content)
        key = "emergency:all" if target == "all" else f"emergency:{target.split(':', 1)[1]}"
        store.set_setting(key, content["sha"])
        print(f"Tin khẩn cấp tại chỗ / local emergency message for {target}: "
              f"{content['sha'][:12]}")
        _warn_if_not_serving(store)
    return 0


def cmd_acl(args) -> int:
    from deploy.mosquitto_conf import render_acl
    print(render_acl(hubconfig.load(args.home).prefix), end="")
    return 0


def cmd_serve(args) -> int:
    with _open(args) as (cfg, store, _):
        with serving(cfg.db_path):
            svc = HubLink(store=store, signer=Signer.load(cfg.key_path, cfg.hub_id),
                          topics=Topics(cfg.prefix), broker=cfg.broker,
                          clock=make_clock(cfg.clock), quiet=cfg.quiet,
                          offline_alarm_s=cfg.offline_alarm_s)
            stop = threading.Event()
            for sig in (signal.SIGTERM, signal.SIGINT):
                signal.signal(sig, lambda *_: stop.set())
            logging.getLogger("loaxa").info("hub serving %s on %r", args.home, cfg.broker)
            svc.run(stop)
    return 0

