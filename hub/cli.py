"""`loaxa hub …`: a few lines per command over the hub's library."""
from __future__ import annotations

import argparse
import json
import logging
import signal
import sys
import threading
import uuid
from pathlib import Path

from audio import AudioError, prepare, synthesize
from protocol.clock import iso, make_clock
from protocol.envelope import Signer, public_to_text
from protocol.storage import write
from protocol.topics import BadIdentifier, Topics, check_id
from schedules import Priority
from schedules.model import ScheduleError

from . import config as hubconfig
from .config import HubError
from .link import HubLink
from .store import HubStore
from .display import outcome_vi, parse_date, parse_when, show

# the reference station of docs/hardware.md
REFERENCE_WIRING = [
    'amp_relay = "GPIO17"', 'amp_power_good = "GPIO27"', 'amp_fault = "GPIO5"',
    'amp_feedback = "GPIO6"', 'zone_relays = ["GPIO23", "GPIO24"]',
    'zone_feedback = ["GPIO13", "GPIO19"]', 'mains_ok = "GPIO12"', 'ups_battery_low = "GPIO16"',
    'audio_sense = "GPIO22"', 'button_stop = "GPIO20"', 'button_emergency = "GPIO21"',
    'button_live_mic = "GPIO26"', 'led_link = "GPIO18"', 'led_health = "GPIO25"',
    'led_on_air = "GPIO8"', "amp_hold_ms = 2000",
]
EVERY = {"hourly": "FREQ=HOURLY", "daily": "FREQ=DAILY", "weekly": "FREQ=WEEKLY",
         "weekdays": "FREQ=WEEKLY;BYDAY=MO,TU,WE,TH,FR"}


def init_hub(home: Path, *, broker_host: str, broker_port: int, prefix: str = "loaxa",
             protocol: str = "5", quiet: str | None = None, clock: str = "system") -> Signer:
    home.mkdir(parents=True, exist_ok=True)
    if (home / "hub.toml").exists() or (home / "hub.key").exists():
        raise HubError(f"{home} already holds a hub; choose another --home")
    if quiet:
        hubconfig.parse_quiet(quiet)
    hubconfig.write_config(home, broker_host=broker_host, broker_port=broker_port,
                           prefix=prefix, protocol=protocol, quiet=quiet, clock=clock)
    signer = Signer.generate("hub")
    signer.save(home / "hub.key")
    HubStore(home / "hub.db").close()
    return signer


def add_station(cfg: hubconfig.HubConfig, sid: str, *, name: str, groups: list[str],
                out: Path, audio_device: str = "default", alsa_config: str | None = None,
                clock: str = "system") -> Path:
    """Register a station and write its enrolment folder: station.toml and station.key."""
    try:
        check_id(sid, "station")
        for g in groups:
            check_id(g, "group")
    except BadIdentifier as exc:
        raise HubError(str(exc)) from None
    hub = Signer.load(cfg.key_path, cfg.hub_id)
    station = Signer.generate(f"station:{sid}")
    store = HubStore(cfg.db_path)
    try:
        try:
            store.add_station(sid, name, public_to_text(station.public), groups,
                              make_clock(cfg.clock).now())
        except ValueError as exc:
            raise HubError(str(exc)) from None
    finally:
        store.close()
    out.mkdir(parents=True, exist_ok=True)
    station.save(out / "station.key")
    b = cfg.broker
    text = "\n".join([
        "[station]", f"id = {json.dumps(sid)}", f"name = {json.dumps(name, ensure_ascii=False)}",
        f"groups = {json.dumps(groups)}", 'data_dir = "data"', f"clock = {json.dumps(clock)}", "",
        "[broker]", f"host = {json.dumps(b.host)}", f"port = {b.port}",
        f'protocol = "{b.protocol}"', f"prefix = {json.dumps(cfg.prefix)}", "",
        "[keys]", f'hub_public = "{public_to_text(hub.public)}"',
        f"hub_sender = {json.dumps(cfg.hub_id)}", 'station_key = "station.key"', "",
        "[audio]", f"device = {json.dumps(audio_device)}", "warmup_ms = 500",
        *([f"alsa_config = {json.dumps(alsa_config)}"] if alsa_config else []), "",
        "[hardware]", 'backend = "simulated"', *REFERENCE_WIRING, "",
    ])
    (out / "station.toml").write_text(text, encoding="utf-8")
    return out / "station.toml"


def add_content_file(store: HubStore, path: Path, *, title: str, now, text: str = "",
                     engine: str = "upload") -> dict:
    try:
        p = prepare(path)
    except AudioError as exc:
        raise HubError(str(exc)) from None
    store.add_content(sha=p.sha256, data=p.data, title=title, source=path.name, text=text,
                      engine=engine, codec=p.codec, duration_ms=p.duration_ms, now=now)
    return store.content(p.sha256)


def add_content_text(store: HubStore, text: str, *, title: str, now, engine: str = "auto",
                     timeout: float = 10.0) -> dict:
    import tempfile
    try:
        speech = synthesize(text, engine=engine, timeout=timeout,
                            cache_dir=store.path.parent / "tts-cache")
    except AudioError as exc:
        raise HubError(str(exc)) from None
    with tempfile.NamedTemporaryFile(suffix=f".{speech.fmt}") as f:
        f.write(speech.data)
        f.flush()
        return add_content_file(store, Path(f.name), title=title, now=now, text=speech.text,
                                engine=speech.engine)


def find_content(store: HubStore, ref: str) -> dict:
    rows = store.q("SELECT * FROM content WHERE sha LIKE ?", [ref.lower() + "%"])
    if len(rows) != 1:
        raise HubError(f"nội dung {ref!r}: {'không có' if not rows else 'không rõ'} / "
                       f"content {ref!r}: {'not found' if not rows else 'ambiguous'}")
    return rows[0]


def check_target(store: HubStore, to: str) -> str:
    if to == "all":
        return to
    kind, _, name = to.partition(":")
    if not name:
        kind, name = "station", to
    if kind == "station" and store.station(name):
        return f"station:{name}"
    if kind == "group" and store.group_exists(name):
        return f"group:{name}"
    raise HubError(f"đích {to!r} không tồn tại / unknown target: use all, group:ID or station:ID")


def announce(store: HubStore, *, content: dict, when, priority: Priority, target: str,
             every: str | None, valid_from=None, valid_until=None, late_start_s: int = 300,
             title: str = "", now, stream: str | None = None,
             duration_ms: int | None = None) -> str:
    """Schedule ``content``; with ``stream``, relay that URL for ``duration_ms`` and play
    ``content`` if the stream fails."""
    from schedules import Item
    rrule = EVERY.get(every, every) if every else None
    item_id = uuid.uuid4().hex[:12]
    if stream and not duration_ms:
        raise HubError("tiếp âm cần thời lượng / a relay needs a duration (--for 30m)")
    try:  # validate with the same code the station runs
        Item(item_id, content["sha"], duration_ms if stream else content["duration_ms"],
             priority, when, rrule=rrule, valid_from=valid_from, valid_until=valid_until,
             late_start_s=late_start_s, stream=stream)
    except ScheduleError as exc:
        raise HubError(str(exc)) from None
    store.add_item({"id": item_id, "content_sha": content["sha"], "title": title or content["title"],
                    "priority": int(priority), "start": iso(when), "rrule": rrule,
                    "valid_from": iso(valid_from) if valid_from else None,
                    "valid_until": iso(valid_until) if valid_until else None,
                    "late_start_s": late_start_s, "target": target, "created_at": iso(now),
                    "cancelled_at": None, "stream": stream,
                    "duration_ms": duration_ms if stream else None})
    return item_id


def parse_duration(text: str) -> int:
    """``90s``, ``15m``, ``2h`` -> milliseconds."""
    import re
    m = re.fullmatch(r"\s*(\d+)\s*([smh])\s*", text or "")
    if not m:
        raise HubError(f"thời lượng {text!r} / duration: use 90s, 15m or 2h")
    return int(m.group(1)) * {"s": 1, "m": 60, "h": 3600}[m.group(2)] * 1000


def _health(s: dict, now) -> str | None:
    """The station's last reported health, or 'silent' if its heartbeat is more than three
    intervals late (tighter in a heightened period, when heartbeats are faster)."""
    from protocol.clock import parse_iso
    if not s.get("online") or not s.get("last_heartbeat"):
        return s.get("health")
    late = (now - parse_iso(s["last_heartbeat"])).total_seconds()
    return "silent" if late > 3 * (s.get("heartbeat_s") or 60) else s.get("health")


def status_rows(store: HubStore, now=None) -> list[dict]:
    from protocol.clock import SystemClock
    now = now or SystemClock().now()
    rows = []
    for st in store.stations():
        s = store.state(st["id"]) or {}
        latest = store.latest_bundle(st["id"])
        last = store.q("SELECT * FROM playbacks WHERE station_id = ? ORDER BY seq DESC LIMIT 1",
                       [st["id"]])
        rows.append({"id": st["id"], "name": st["name"], "online": bool(s.get("online")),
                     "since": s.get("since"), "desired": latest["version"] if latest else 0,
                     "active": s.get("active_version") or 0,
                     "missing": [m for m in (s.get("missing") or "").split(",") if m],
                     "clock_trusted": s.get("clock_trusted") != 0,
                     "health": _health(s, now),
                     "outbox": s.get("outbox") or 0, "starts": s.get("restarts") or 0,
                     "started_at": s.get("started_at"),
                     "alarms": [{"code": a["code"], "detail": a["detail"],
                                 "since": a["raised_at"]} for a in store.open_alarms(st["id"])],
                     "last_seen": s.get("last_seen"), "last_play": last[0] if last else None})
    return rows


def render_status(rows: list[dict]) -> str:
    head = ["Trạm", "Tên", "Kết nối", "Từ lúc", "Sức khỏe", "Bản phát (hub/trạm)",
            "Thiếu âm thanh", "Đồng hồ", "Chờ gửi", "Số lần khởi động", "Lần phát gần nhất"]
    table = [head]
    for r in rows:
        lp = r["last_play"]
        table.append([
            r["id"], r["name"], "trực tuyến" if r["online"] else "mất kết nối", show(r["since"]),
            HEALTH_VI.get(r["health"] or "", "—"),
            f"{r['desired']}/{r['active']}", str(len(r["missing"])),
            "đúng" if r["clock_trusted"] else "SAI", str(r["outbox"]),
            f"{r['starts']} (gần nhất {show(r['started_at'])})" if r["started_at"] else "—",
            f"{outcome_vi(lp['outcome'])} {show(lp['started_at'] or lp['scheduled_at'])}"
            if lp else "—",
        ])
    widths = [max(len(row[i]) for row in table) for i in range(len(head))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(row, widths)) for row in table]
    missing = [(r["id"], r["missing"]) for r in rows if r["missing"]]
    if missing:
        lines += ["", "Âm thanh còn thiếu / audio still missing:"]
        lines += [f"  {sid}  " + ", ".join(m[:12] for m in shas) for sid, shas in missing]
    alarms = [(r["id"], a) for r in rows for a in r["alarms"]]
    if alarms:
        lines += ["", "Cảnh báo đang mở / open alarms:"]
        lines += [f"  {sid}  {ALARMS_VI.get(a['code'], a['code'])} từ {show(a['since'])}: "
                  f"{a['detail']}" for sid, a in alarms]
    return "\n".join(lines)


HEALTH_VI = {"ok": "tốt", "degraded": "suy giảm", "fault": "LỖI",
             "silent": "im lặng (mất nhịp tim)"}
ALARMS_VI = {"clock": "đồng hồ sai", "disk_full": "đầy bộ nhớ",
             "audio_device": "lỗi thiết bị âm thanh", "no_sound": "loa không ra tiếng",
             "amplifier": "lỗi tăng âm", "relay": "lỗi rơ-le",
             "health.relays": "rơ-le sai trạng thái", "health.amplifier": "tăng âm bất thường",
             "health.mains": "mất điện lưới", "health.ups": "ắc quy UPS yếu",
             "health.disk": "sắp đầy bộ nhớ", "health.memory": "thiếu bộ nhớ",
             "health.cpu_temp": "CPU quá nóng", "health.link": "mất kết nối",
             "health.clock": "đồng hồ sai", "health.audio_device": "lỗi thiết bị âm thanh",
             "health.modem": "sóng 4G yếu", "emergency_message": "chưa có tin khẩn cấp"}


# -- argparse wiring -------------------------------------------------------------------------

def register(sub: argparse._SubParsersAction) -> None:
    hub = sub.add_parser("hub", help="the district/province hub")
    hub.add_argument("--home", type=Path, default=hubconfig.default_home(),
                     help="hub folder (default $LOAXA_HUB_HOME or ~/.local/share/loaxa/hub)")
    hs = hub.add_subparsers(dest="hub_cmd", required=True)

    p = hs.add_parser("init", help="create the database and the hub's signing key")
    p.add_argument("--broker-host", default="127.0.0.1")
    p.add_argument("--broker-port", type=int, default=1883)
    p.add_argument("--prefix", default="loaxa")
    p.add_argument("--quiet-hours", help="HH:MM-HH:MM in which only khẩn cấp plays")
    p.set_defaults(fn=cmd_init)

    p = hs.add_parser("station", help="stations")
    ss = p.add_subparsers(dest="station_cmd", required=True)
    a = ss.add_parser("add", help="register a station and write its enrolment folder")
    a.add_argument("id")
    a.add_argument("--name", required=True)
    a.add_argument("--group", action="append", default=[])
    a.add_argument("--out", type=Path, help="enrolment folder (default HOME/stations/ID)")
    a.set_defaults(fn=cmd_station_add)

    p = hs.add_parser("content", help="audio content")
    cs = p.add_subparsers(dest="content_cmd", required=True)
    a = cs.add_parser("add", help="prepare an audio file and store it by SHA-256")
    a.add_argument("file", type=Path)
    a.add_argument("--title")
    a.set_defaults(fn=cmd_content_add)

    p = hs.add_parser("announce", help="schedule content or spoken text")
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

    p = hs.add_parser("status", help="every station's state")
    p.add_argument("--json", action="store_true")
    p.set_defaults(fn=cmd_status)

    p = hs.add_parser("serve", help="run the hub")
    p.set_defaults(fn=cmd_serve)

    p = hs.add_parser("alarm", help="alarms: list, acknowledge")
    al = p.add_subparsers(dest="alarm_cmd", required=True)
    a = al.add_parser("list", help="open alarms (--all: with the cleared ones)")
    a.add_argument("--all", action="store_true")
    a.set_defaults(fn=cmd_alarm_list)
    a = al.add_parser("ack", help="acknowledge an alarm with a note")
    a.add_argument("id", type=int)
    a.add_argument("--by", required=True, help="who acknowledges (the duty officer)")
    a.add_argument("--note", required=True)
    a.set_defaults(fn=cmd_alarm_ack)

    p = hs.add_parser("heightened", help="a heightened period (election, holiday, storm)")
    p.add_argument("--to", required=True, help="all, group:ID or station:ID")
    p.add_argument("--from", dest="start", required=True, help="dd/mm/yyyy HH:MM")
    p.add_argument("--until", dest="end", required=True, help="dd/mm/yyyy HH:MM")
    p.add_argument("--reason", required=True)
    p.add_argument("--heartbeat", type=int, default=15, help="heartbeat seconds (default 15)")
    p.add_argument("--selftest", default="05:00", help="daily self-test time (default 05:00)")
    p.set_defaults(fn=cmd_heightened)

    p = hs.add_parser("emergency", help="the message a station's emergency button plays")
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
    path = add_station(cfg, args.id, name=args.name, groups=args.group, out=out)
    print(f"Đã thêm trạm {args.id}; gói đăng ký / enrolment: {path.parent}")
    return 0


def _store(args) -> tuple[hubconfig.HubConfig, HubStore]:
    cfg = hubconfig.load(args.home)
    return cfg, HubStore(cfg.db_path)


def cmd_content_add(args) -> int:
    cfg, store = _store(args)
    with as_closing(store):
        c = add_content_file(store, args.file, title=args.title or args.file.stem,
                             now=make_clock(cfg.clock).now())
    print(f"{c['sha']}  {c['duration_ms'] / 1000:.1f} s  {c['size']} B  {c['title']}")
    return 0


def cmd_announce(args) -> int:
    cfg, store = _store(args)
    with as_closing(store):
        now = make_clock(cfg.clock).now()
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
            from schedules import Item
            Item("check", "0" * 64, duration or 1000, priority, when,
                 rrule=EVERY.get(args.every, args.every) if args.every else None,
                 valid_from=vf, valid_until=vu, late_start_s=args.late_start,
                 stream=args.stream)
        except ScheduleError as exc:
            raise HubError(str(exc)) from None
        if args.text:
            content = add_content_text(store, args.text, title=args.title or args.text[:60],
                                       now=now, engine=args.tts)
        else:
            content = find_content(store, args.content)
        item = announce(store, content=content, when=when, priority=priority, target=target,
                        every=args.every, valid_from=vf, valid_until=vu,
                        late_start_s=args.late_start, title=args.title, now=now,
                        stream=args.stream, duration_ms=duration)
    print(f"Đã lên lịch {item}: {show(when)} ({priority.label_vi}) → {target}")
    return 0


def cmd_status(args) -> int:
    cfg, store = _store(args)
    with as_closing(store):
        rows = status_rows(store, make_clock(cfg.clock).now())
    if args.json:
        print(json.dumps(rows, ensure_ascii=False, indent=1))
    else:
        print(render_status(rows))
    return 0


def cmd_alarm_list(args) -> int:
    cfg, store = _store(args)
    with as_closing(store):
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
    cfg, store = _store(args)
    with as_closing(store):
        if not store.ack_alarm(args.id, args.by, args.note, make_clock(cfg.clock).now()):
            raise HubError(f"cảnh báo #{args.id} không có hoặc đã xác nhận / alarm #{args.id} "
                           f"does not exist or is already acknowledged")
    print(f"Đã xác nhận cảnh báo #{args.id} / acknowledged")
    return 0


def cmd_heightened(args) -> int:
    cfg, store = _store(args)
    with as_closing(store):
        now = make_clock(cfg.clock).now()
        target = check_target(store, args.to)
        start, end = parse_when(args.start, now), parse_when(args.end, now)
        if end <= start:
            raise HubError("thời gian kết thúc phải sau bắt đầu / the end must be after the start")
        if not 5 <= args.heartbeat <= 3600:
            raise HubError("nhịp tim 5-3600 giây / heartbeat must be 5-3600 s")
        from datetime import time as dtime
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
    return 0


def cmd_emergency(args) -> int:
    cfg, store = _store(args)
    with as_closing(store):
        now = make_clock(cfg.clock).now()
        target = check_target(store, args.to)
        if target.startswith("group:"):
            raise HubError("chỉ all hoặc station:ID / only all or station:ID")
        content = add_content_text(store, args.text, title="Tin khẩn cấp tại chỗ", now=now) \
            if args.text else find_content(store, args.content)
        key = "emergency:all" if target == "all" else f"emergency:{target.split(':', 1)[1]}"
        store.set_setting(key, content["sha"])
    print(f"Tin khẩn cấp tại chỗ / local emergency message for {target}: {content['sha'][:12]}")
    return 0


def cmd_serve(args) -> int:
    cfg, store = _store(args)
    signer = Signer.load(cfg.key_path, cfg.hub_id)
    svc = HubLink(store=store, signer=signer, topics=Topics(cfg.prefix), broker=cfg.broker,
                     clock=make_clock(cfg.clock), quiet=cfg.quiet)
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    logging.getLogger("loaxa").info("hub serving %s on %r", args.home, cfg.broker)
    try:
        svc.run(stop)
    finally:
        store.close()
    return 0


class as_closing:
    def __init__(self, store: HubStore) -> None:
        self.store = store

    def __enter__(self) -> HubStore:
        return self.store

    def __exit__(self, *exc) -> None:
        self.store.close()
