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

from . import accounts
from . import config as hubconfig
from .admin import (COMMAND_STATES_VI, EVERY, NOT_SERVING, add_content_file,
                    add_content_text, add_station, announce, cancel_item, check_target,
                    command_progress, find_content, first_start, hub_view, init_hub,
                    is_serving, issue_command, parse_duration, play_body, serving, wake_line,
                    set_station_key, status_rows)
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

    p = _leaf(hs, "pki", help="the broker's TLS certificates (the hub's own CA)")
    ks = p.add_subparsers(dest="pki_cmd", required=True)
    a = _leaf(ks, "init", help="create the CA, the broker's and the hub's certificates")
    a.add_argument("--host", action="append", default=[], required=True,
                   help="a name or address stations reach the broker by (repeatable)")
    a.set_defaults(fn=cmd_pki_init)

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
    a = _leaf(ss, "revoke", help="cut a station off: its certificate on the broker's CRL, "
              "its key forgotten")
    a.add_argument("id")
    a.set_defaults(fn=cmd_station_revoke)
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
    p.add_argument("--web", metavar="ADDR", help="also serve the web console on HOST:PORT")
    p.set_defaults(fn=cmd_serve)

    p = _leaf(hs, "acl", help="print the broker's ACL for this hub's topic prefix")
    p.set_defaults(fn=cmd_acl)
    p = _leaf(hs, "bridge", help="print the bridge section for a commune or district broker "
              "that its stations connect to, toward this hub's broker (docs/scale.md)")
    p.add_argument("name", help="the edge broker's name (letters, digits, - and _)")
    p.add_argument("--host", help="the hub's broker as the edge reaches it (default: hub.toml)")
    p.add_argument("--port", type=int, help="its port (default: hub.toml)")
    p.add_argument("--group", help="the group whose stations connect to the edge broker "
                   "(default: every station)")
    p.add_argument("--cert-dir", default="/etc/loaxa",
                   help="where the bridge's certificate files go on the edge machine "
                   "(default /etc/loaxa)")
    p.set_defaults(fn=cmd_bridge)

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

    # -- commands: act now, on stations that are online (docs/protocol.md, "Commands") ----
    def command_args(p, *, to_default=None, to=True):
        if to:
            p.add_argument("--to", required=to_default is None, default=to_default,
                           help="all, group:ID or station:ID")
        p.add_argument("--ttl", default="5m", help="how long the command stays valid (5m)")
        p.add_argument("--by", default="", help="who gives it (recorded)")
        p.add_argument("--no-wait", action="store_true",
                       help="return once it is stored; do not show its progress")
        p.add_argument("--wait", type=float, default=120.0,
                       help="how long to show progress, seconds (120)")

    for name, help_ in (("play", "play content now (as a command)"),
                        ("alert", "khẩn cấp: play now on every targeted station, with live "
                                  "progress")):
        p = _leaf(hs, name, help=help_)
        what = p.add_mutually_exclusive_group(required=True)
        what.add_argument("--content", help="content SHA-256 (a unique prefix is enough)")
        what.add_argument("--text", help="Vietnamese text, spoken by TTS")
        p.add_argument("--repeat", type=int, default=1, help="how many times (1-10)")
        p.add_argument("--gap", default="0s", help="pause between repeats: 30s, 5m")
        p.add_argument("--title", default="")
        p.add_argument("--tts", default="auto", choices=["auto", "gtts", "espeak-ng"])
        if name == "play":
            p.add_argument("--priority", default="uu-tien",
                           help="thong-thuong, uu-tien or khan-cap")
        command_args(p, to_default="all" if name == "alert" else None)
        p.set_defaults(fn=cmd_play, alert=name == "alert")
    p = _leaf(hs, "stop", help="stop what is on air (or one item, or up to a priority)")
    p.add_argument("--item", help="only this item (schedule item id or command id)")
    p.add_argument("--priority", help="everything at or below this priority")
    command_args(p)
    p.set_defaults(fn=cmd_stop)
    p = _leaf(hs, "cancel", help="cancel a schedule item: gone from every bundle, stopped "
              "where it is on air")
    p.add_argument("item")
    command_args(p, to=False)
    p.set_defaults(fn=cmd_cancel)
    p = _leaf(hs, "volume", help="set the volume (0-100, 100 = as prepared); remembered")
    p.add_argument("level", type=int)
    command_args(p)
    p.set_defaults(fn=cmd_simple, action="volume")
    for name in ("selftest", "zone-test", "report"):
        p = _leaf(hs, name, help={"selftest": "run the silent self-test now",
                                  "zone-test": "exercise the amplifier and every zone relay now",
                                  "report": "send state and health now"}[name])
        command_args(p)
        p.set_defaults(fn=cmd_simple, action=name.replace("-", "_"))
    p = _leaf(hs, "key", help="the hub's signing key: rotate it, see who trusts the new one")
    ks2 = p.add_subparsers(dest="key_cmd", required=True)
    a = _leaf(ks2, "rotate", help="a new key, endorsed by the current one; the old one is "
              "retired once every station has confirmed")
    a.set_defaults(fn=cmd_key_rotate)
    a = _leaf(ks2, "status", help="stations that confirmed the new key; retired keys")
    a.set_defaults(fn=cmd_key_status)

    p = _leaf(hs, "backup", help="database (online), keys, content and configuration into "
              "a folder, with a manifest of hashes; while the hub runs")
    p.add_argument("dest", type=Path)
    p.set_defaults(fn=cmd_backup)
    p = _leaf(hs, "restore", help="a hub into --home from a backup folder (hashes checked; "
              "versions and sequences moved past the lost hub's)")
    p.add_argument("src", type=Path)
    p.set_defaults(fn=cmd_restore)

    p = _leaf(hs, "web", help="the culture center's web console (Vietnamese)")
    p.add_argument("--addr", default="127.0.0.1:8080", help="HOST:PORT to listen on")
    p.add_argument("--secure-cookies", action="store_true",
                   help="mark cookies Secure (behind a TLS reverse proxy: docs/web.md)")
    p.set_defaults(fn=cmd_web)

    p = _leaf(hs, "user", help="console accounts")
    us = p.add_subparsers(dest="user_cmd", required=True)
    a = _leaf(us, "add", help="a new account; prints a one-time password")
    a.add_argument("id")
    a.add_argument("--role", required=True, choices=sorted(accounts.ROLES))
    a.add_argument("--name", default="")
    a.add_argument("--commune", action="append", default=[],
                   help="for --role commune: a commune (group) it acts on (repeatable)")
    a.set_defaults(fn=cmd_user_add)
    a = _leaf(us, "list", help="accounts, roles and locks")
    a.set_defaults(fn=cmd_user_list)
    a = _leaf(us, "reset", help="a new one-time password (also unlocks)")
    a.add_argument("id")
    a.set_defaults(fn=cmd_user_reset)
    a = _leaf(us, "unlock", help="unlock an account locked by wrong passwords")
    a.add_argument("id")
    a.set_defaults(fn=cmd_user_unlock)

    p = _leaf(hs, "release", help="software releases for the stations, signed with the "
              "release key (docs/update.md)")
    rs = p.add_subparsers(dest="release_cmd", required=True)
    a = _leaf(rs, "add", help="sign a release made of wheels (one of them loaxa's)")
    a.add_argument("wheels", nargs="+", type=Path)
    a.add_argument("--notes", default="")
    a.add_argument("--by", default="")
    a.set_defaults(fn=cmd_release_add)
    a = _leaf(rs, "list", help="releases, and how many stations run each version")
    a.set_defaults(fn=cmd_release_list)
    p = _leaf(hs, "update", help="install a release on stations: fetched, installed beside the "
              "running version, switched, and rolled back unless its health check passes")
    p.add_argument("version")
    p.add_argument("--to", required=True, help="station:ID, group:ID or all")
    p.add_argument("--health-s", type=int, default=300,
                   help="seconds the new version has to pass its health check (300)")
    p.add_argument("--ttl", default="1h", help="how long the command stays valid (1h)")
    p.add_argument("--downgrade", action="store_true", help="allow an older version")
    p.add_argument("--by", default="")
    p.set_defaults(fn=cmd_update)

    p = _leaf(hs, "command", help="commands given and how far each got")
    cs = p.add_subparsers(dest="command_cmd", required=True)
    a = _leaf(cs, "list", help="recent commands with their delivery counts")
    a.add_argument("--limit", type=int, default=20)
    a.set_defaults(fn=cmd_command_list)
    a = _leaf(cs, "show", help="one command, station by station")
    a.add_argument("id")
    a.add_argument("--json", action="store_true")
    a.set_defaults(fn=cmd_command_show)


def cmd_key_rotate(args) -> int:
    from .admin import rotate_hub_key
    cfg = hubconfig.load(args.home)
    r = rotate_hub_key(cfg, now=make_clock(cfg.clock).now())
    print(f"Khóa ký mới / new signing key {r['new']} (lần xoay / rotation {r['seq']}), "
          f"khóa cũ / old key {r['old']} giữ tại / kept at {r['archive']}")
    print("Hub đang chạy sẽ dùng khóa mới trong vài giây và ngừng tin khóa cũ khi mọi trạm đã "
          "xác nhận / the running hub takes it within seconds and retires the old key once "
          f"every station has confirmed: loaxa hub --home {args.home} key status")
    return 0


def cmd_key_status(args) -> int:
    from .admin import key_status
    with _open(args) as (cfg, store, now):
        st = key_status(store)
    if not st["kid"]:
        print("Chưa xoay khóa / no rotation yet")
        return 0
    print(f"Khóa / key {st['kid']} (lần / rotation {st['seq']}): {st['confirmed']}/"
          f"{st['stations']} trạm đã xác nhận / stations confirmed")
    if st["waiting"]:
        print("Chưa xác nhận / waiting: " + ", ".join(st["waiting"][:50]))
    print(f"Khóa đã ngừng tin / retired: {st['retired'] or 'chưa / not yet'}")
    return 0


def cmd_backup(args) -> int:
    from .backup import backup
    cfg = hubconfig.load(args.home)
    m = backup(args.home, args.dest, now=make_clock(cfg.clock).now())
    c = m["counts"]
    print(f"Đã sao lưu hub vào {args.dest} / backed up: {c['stations']} trạm / stations, "
          f"{c['content']} tệp âm thanh / audio files, {c['schedule_items']} mục lịch / items, "
          f"{len(m['files'])} tệp / files (khóa mode 0600 / keys 0600)")
    print("Giữ bản sao lưu như giữ khóa ký của hub / keep it as safe as the hub's signing key")
    return 0


def cmd_restore(args) -> int:
    from .backup import restore
    m = restore(args.src, args.home, now=make_clock(None).now())
    print(f"Đã khôi phục hub vào {args.home} từ bản sao lưu {show(m['created_at'])} / restored "
          f"from the backup of {m['created_at']}")
    print(f"Bản phát mới bắt đầu từ phiên bản {m['bundle_min_version']} để các trạm nhận / "
          f"programmes continue from version {m['bundle_min_version']} so stations accept them; "
          f"then: loaxa hub --home {args.home} serve")
    return 0


def _web_thread(home: Path, addr: str):
    """The console beside `hub serve`, on its own thread (uvicorn leaves signals to us)."""
    import uvicorn
    from .web.app import create_app
    host, _, port = addr.rpartition(":")
    server = uvicorn.Server(uvicorn.Config(create_app(home), host=host or "127.0.0.1",
                                           port=int(port), log_level="warning"))
    threading.Thread(target=server.run, name="web", daemon=True).start()
    print(f"Bảng điều khiển / console: http://{addr}/", flush=True)
    return server


def cmd_web(args) -> int:
    from .web.app import serve as serve_web
    hubconfig.load(args.home)  # a clear error if the hub is not initialised
    print(f"Bảng điều khiển / console: http://{args.addr}/", flush=True)
    serve_web(args.home, args.addr, secure_cookies=args.secure_cookies)
    return 0


def cmd_user_add(args) -> int:
    with _open(args) as (cfg, store, now):
        try:
            password = accounts.add_user(store, args.id, name=args.name, role=args.role,
                                         communes=tuple(args.commune), now=now, by="cli")
        except accounts.AccountError as exc:
            raise HubError(str(exc)) from None
    print(f"Đã tạo tài khoản {args.id} ({accounts.ROLES[args.role][0]}).")
    print(f"Mật khẩu dùng một lần / one-time password: {password}")
    print("Đổi mật khẩu khi đăng nhập lần đầu / to be changed at first login.")
    return 0


def cmd_user_list(args) -> int:
    with _open(args) as (cfg, store, now):
        for u in accounts.users(store):
            state = "bị khóa / locked" if u["locked_at"] else \
                "chưa đổi mật khẩu / first login pending" if u["must_change"] else "hoạt động / active"
            print(f"{u['id']:<20} {accounts.ROLES[u['role']][0]:<10} {u['communes'] or '':<20} "
                  f"{state}")
    return 0


def cmd_user_reset(args) -> int:
    with _open(args) as (cfg, store, now):
        try:
            password = accounts.reset_password(store, args.id, now=now, by="cli")
        except accounts.AccountError as exc:
            raise HubError(str(exc)) from None
    print(f"Mật khẩu dùng một lần mới / new one-time password: {password}")
    return 0


def cmd_user_unlock(args) -> int:
    with _open(args) as (cfg, store, now):
        try:
            accounts.set_locked(store, args.id, False, now=now, by="cli")
        except accounts.AccountError as exc:
            raise HubError(str(exc)) from None
    print(f"Đã mở khóa {args.id} / unlocked")
    return 0


def cmd_init(args) -> int:
    init_hub(args.home, broker_host=args.broker_host, broker_port=args.broker_port,
             prefix=args.prefix, quiet=args.quiet_hours)
    print(f"Đã tạo hub tại {args.home} / hub created (key {args.home / 'hub.key'}, mode 0600)")
    return 0


def cmd_pki_init(args) -> int:
    from .admin import pki_init
    cfg = hubconfig.load(args.home)
    out = pki_init(cfg.home, hosts=tuple(args.host))
    print(f"Đã tạo CA và chứng chỉ / CA and certificates created in {out['ca'].parent} "
          "(khóa riêng mode 0600 / private keys mode 0600)")
    print(f"Broker (mosquitto): cafile {out['ca']}\n  certfile {out['broker_cert']}\n"
          f"  keyfile {out['broker_key']}  (docs/deploy.md: copy to /etc/loaxa/, owned by "
          "mosquitto)")
    print(f"Hub, trong / in hub.toml [broker]: port = 8883, tls_ca = \"{out['ca']}\", "
          f"tls_cert = \"{out['hub_cert']}\", tls_key = \"{out['hub_key']}\"")
    print("Trạm thêm sau đó nhận chứng chỉ trong gói đăng ký / stations added from now on get "
          "their certificate in their enrolment folder")
    return 0


def cmd_station_add(args) -> int:
    cfg = hubconfig.load(args.home)
    out = args.out or args.home / "stations" / args.id
    path = add_station(cfg, args.id, name=args.name, groups=args.group, out=out,
                       public_key=args.public_key)
    print(f"Đã thêm trạm {args.id}; gói đăng ký / enrolment: {path.parent}")
    print(f"Tệp đăng ký / enrolment file: {path.parent.parent / (path.parent.name + '.tar.gz')} "
          f"(0600)")
    if not args.public_key:
        print(f"Trên trạm chạy / on the station run: sudo loaxa agent enrol {args.id}.tar.gz\n"
              f"rồi ở hub / then here: loaxa hub station key {args.id} <khóa công khai / "
              f"public key>")
    return 0


def cmd_station_revoke(args) -> int:
    from .admin import revoke_station
    cfg = hubconfig.load(args.home)
    crl = revoke_station(cfg, args.id, now=make_clock(cfg.clock).now())
    print(f"Đã thu hồi trạm {args.id}: hub từ chối mọi tin của trạm / station revoked: the hub "
          f"refuses whatever it sends")
    print(f"Danh sách thu hồi / revocation list: {crl}\n  cp {crl} /etc/loaxa/crl.pem && "
          f"systemctl reload mosquitto   (broker refuses its certificate from then on; "
          f"`restart` also cuts a connection still open: docs/security.md)")
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
        content = _content_of(args, store, now)
        item = announce(store, content=content, when=when, priority=priority, target=target,
                        every=args.every, valid_from=vf, valid_until=vu,
                        late_start_s=args.late_start, title=args.title, now=now,
                        stream=args.stream, duration_ms=duration)
        print(f"Đã lên lịch {item}: {show(when)} ({priority.label_vi}) → {target}")
        if rrule and first != when:
            print(f"Lần phát đầu tiên / first occurrence: {show(first)}")
        _warn_if_not_serving(store)
    return 0


def _content_of(args, store: HubStore, now) -> dict:
    """--text (spoken, prepared and stored) or --content (a stored SHA-256 or its prefix)."""
    if args.text is None:
        return find_content(store, args.content)
    if not args.text.strip():
        raise HubError("văn bản trống: không có gì để đọc / the text is empty")
    return add_content_text(store, args.text, title=args.title or args.text[:60], now=now,
                            engine=args.tts, progress=progress_printer())


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


def cmd_bridge(args) -> int:
    from deploy.mosquitto_conf import render_bridge
    from protocol.topics import ID_RE
    from .admin import bridge_certificate, pki_exists
    if not ID_RE.match(args.name):
        raise HubError(f"tên {args.name!r} không hợp lệ / bad name: letters, digits, - and _")
    cfg = hubconfig.load(args.home)
    host, port = args.host or cfg.broker.host, args.port or cfg.broker.port
    if not pki_exists(cfg.home):  # a broker without TLS (a closed network, the demo)
        print("# không mã hóa (chưa có `loaxa hub pki init`) / plain TCP: no CA yet\n"
              + render_bridge(args.name, host, port, cfg.prefix), end="")
        return 0
    files = bridge_certificate(cfg, args.name, args.group)
    d = args.cert_dir.rstrip("/")
    on_edge = {"ca": f"{d}/ca.crt", "cert": f"{d}/bridge-{args.name}.crt",
               "key": f"{d}/bridge-{args.name}.key"}
    print("\n".join(
        ["# chép lên máy của broker biên / copy to the edge broker's machine "
         "(the key readable by mosquitto only):"]
        + [f"#   {files[k]} -> {on_edge[k]}" for k in ("ca", "cert", "key")]
        + ["# rồi trên hub / then on the hub: loaxa hub acl > /etc/mosquitto/loaxa.acl && "
           "systemctl reload mosquitto", ""])
        + render_bridge(args.name, host, port, cfg.prefix,
                        tls=(on_edge["ca"], on_edge["cert"], on_edge["key"])), end="")
    return 0


def cmd_acl(args) -> int:
    from deploy.mosquitto_conf import render_acl
    from .admin import bridges
    cfg = hubconfig.load(args.home)
    store = HubStore(cfg.db_path)
    try:
        print(render_acl(cfg.prefix, bridges=bridges(store)), end="")
    finally:
        store.close()
    return 0


def cmd_serve(args) -> int:
    with _open(args) as (cfg, store, _):
        with serving(cfg.db_path):
            svc = HubLink(store=store, signer=Signer.load(cfg.key_path, cfg.hub_id),
                          topics=Topics(cfg.prefix), broker=cfg.broker,
                          clock=make_clock(cfg.clock), quiet=cfg.quiet,
                          offline_alarm_s=cfg.offline_alarm_s, key_path=cfg.key_path)
            svc.listen_for_wakes(wake_line(cfg.db_path))  # a command goes out at once
            stop = threading.Event()
            for sig in (signal.SIGTERM, signal.SIGINT):
                signal.signal(sig, lambda *_: stop.set())
            logging.getLogger("loaxa").info("hub serving %s on %r", args.home, cfg.broker)
            web = _web_thread(args.home, args.web) if getattr(args, "web", None) else None
            try:
                svc.run(stop)
            finally:
                if web is not None:
                    web.should_exit = True
    return 0



# -- commands -------------------------------------------------------------------------------

def _give(args, cfg, store, now, action: str, body: dict, target: str) -> int:
    ttl = parse_duration(args.ttl) // 1000
    cmd = issue_command(cfg, store, action, target, body, now=now, ttl_s=ttl, by=args.by)
    print(f"Lệnh {action} {cmd['id']} → {target}, hiệu lực tới {show(cmd['expires_at'])} / "
          f"command stored")
    return _follow(args, cfg, store, cmd["id"])


def _follow(args, cfg, store: HubStore, cid: str) -> int:
    """After a command is stored: say so if `hub serve` will not publish it, else show its
    progress (unless --no-wait)."""
    if not is_serving(store.path):
        print(NOT_SERVING, file=sys.stderr)
        return 0
    if not args.no_wait:
        return watch(store, cid, args.wait, clock=make_clock(cfg.clock))
    return 0


def watch(store: HubStore, cid: str, limit_s: float, *, clock, every_s: float = 0.5) -> int:
    """Live progress of a command until every targeted station has started (or finished),
    failed, refused it or is known unreachable; exit 0 if every station started."""
    import time
    deadline = time.monotonic() + limit_s
    shown = None
    published = False
    while True:
        p = command_progress(store, cid, clock.now())
        if not published and p["command"]["published_at"]:
            published = True
            print(f"Đã gửi lúc {show(p['command']['published_at'])} / published", flush=True)
        line = render_progress(p)
        if line != shown:
            print(line, flush=True)
            shown = line
        if p["settled"] or time.monotonic() >= deadline:
            return 0 if p["started"] == p["total"] else 1
        time.sleep(every_s)  # polling what `hub serve` writes, not waiting on a schedule


def render_progress(p: dict) -> str:
    c = p["counts"]
    verb = "đã phát" if p["command"]["action"] == "play" else "đã thực hiện"
    parts = [f"{COMMAND_STATES_VI[k]} {c[k]}" for k in ("accepted", "failed", "refused",
                                                      "unreachable", "targeted") if c.get(k)]
    return (f"{verb} {p['started']:,}/{p['total']:,} trạm".replace(",", ".")
            + (f" ({', '.join(parts)})" if parts else ""))


def cmd_play(args) -> int:
    with _open(args) as (cfg, store, now):
        target = check_target(store, args.to)
        if args.alert:
            priority = Priority.KHAN_CAP
        else:
            try:
                priority = Priority.parse(args.priority)
            except ScheduleError as exc:
                raise HubError(str(exc)) from None
        gap = parse_duration(args.gap) // 1000 if args.gap not in ("0", "0s") else 0
        content = _content_of(args, store, now)
        body = play_body(content, priority=priority, repeat=args.repeat, gap_s=gap,
                         title=args.title)
        return _give(args, cfg, store, now, "play", body, target)


def cmd_stop(args) -> int:
    with _open(args) as (cfg, store, now):
        target = check_target(store, args.to)
        if args.item and args.priority:
            raise HubError("--item hoặc --priority, không cả hai / --item or --priority")
        if args.item:
            body = {"scope": "item", "item": args.item}
        elif args.priority:
            try:
                body = {"scope": "priority", "priority": int(Priority.parse(args.priority))}
            except ScheduleError as exc:
                raise HubError(str(exc)) from None
        else:
            body = {"scope": "current"}
        return _give(args, cfg, store, now, "stop", body, target)


def cmd_cancel(args) -> int:
    with _open(args) as (cfg, store, now):
        item, cmd = cancel_item(cfg, store, args.item, now=now, by=args.by)
        print(f"Đã hủy {item['id']} ({item['title']}): bỏ khỏi mọi chương trình; lệnh dừng "
              f"{cmd['id']} → {item['target']} / cancelled")
        return _follow(args, cfg, store, cmd["id"])


def cmd_simple(args) -> int:
    with _open(args) as (cfg, store, now):
        target = check_target(store, args.to)
        body = {}
        if args.action == "volume":
            if not 0 <= args.level <= 100:
                raise HubError("âm lượng 0-100 / volume must be 0-100")
            body = {"level": args.level}
        return _give(args, cfg, store, now, args.action, body, target)


def cmd_release_add(args) -> int:
    from .releases import make_release
    with _open(args) as (cfg, store, now):
        r = make_release(cfg, store, args.wheels, now=now, notes=args.notes, by=args.by)
    print(f"Bản phát hành / release {r['version']}: {r['size']} byte, sha256 {r['sha'][:16]}…, "
          f"đã ký bằng khóa phát hành / signed with the release key")
    print(f"Cập nhật / update: loaxa hub --home {args.home} update {r['version']} --to all")
    return 0


def cmd_release_list(args) -> int:
    from .releases import releases
    with _open(args) as (cfg, store, now):
        rows = releases(store)
        running = {r["software_version"]: r["n"] for r in store.q(
            "SELECT software_version, count(*) AS n FROM station_state GROUP BY 1")}
    if not rows:
        print("Chưa có bản phát hành / no releases")
    for r in rows:
        print(f"{r['version']:12} {show(r['created_at'])}  {r['size']:>10} byte  "
              f"{running.get(r['version'], 0)} trạm đang chạy / stations run it  {r['notes']}")
    others = {v: n for v, n in running.items() if v not in {r["version"] for r in rows}}
    for v, n in sorted(others.items(), key=lambda x: str(x[0])):
        print(f"{v or 'không rõ / unknown':12} (cài sẵn / factory install)  {n} trạm / stations")
    return 0


def cmd_update(args) -> int:
    from .releases import find_release, update_body
    with _open(args) as (cfg, store, now):
        target = check_target(store, args.to)
        body = update_body(find_release(store, args.version), health_s=args.health_s,
                           downgrade=args.downgrade)
        cmd = issue_command(cfg, store, "update", target, body, now=now,
                            ttl_s=parse_duration(args.ttl) // 1000, by=args.by)
        print(f"Lệnh cập nhật / update {cmd['id']}: {args.version} → {target}, hiệu lực tới "
              f"{show(cmd['expires_at'])}")
        print(f"Theo dõi / follow: loaxa hub --home {args.home} command show {cmd['id']}")
        if not is_serving(store.path):
            print(NOT_SERVING, file=sys.stderr)
    return 0


def cmd_command_list(args) -> int:
    with _open(args) as (cfg, store, now):
        rows = store.q("SELECT id FROM commands ORDER BY issued_at DESC LIMIT ?", [args.limit])
        if not rows:
            print("Chưa có lệnh nào / no commands")
        for r in rows:
            p = command_progress(store, r["id"], now)
            c = p["command"]
            print(f"{c['id']}  {show(c['issued_at'])}  {c['action']:9} → {c['target']}  "
                  f"{render_progress(p)}" + ("  (hết hạn)" if p["expired"] else ""))
    return 0


def cmd_command_show(args) -> int:
    with _open(args) as (cfg, store, now):
        p = command_progress(store, args.id, now)
    c = p["command"]
    if args.json:
        print(json.dumps(p, ensure_ascii=False, indent=1, default=str))
        return 0
    print(f"Lệnh {c['id']}: {c['action']} → {c['target']}; ra lệnh {show(c['issued_at'])}"
          f"{' bởi ' + c['by'] if c['by'] else ''}; gửi {show(c['published_at'])}; "
          f"hết hạn {show(c['expires_at'])}")
    print(render_progress(p))
    for t in p["targets"]:
        print(f"  {t['station_id']}  {COMMAND_STATES_VI.get(t['state'], t['state'])}  "
              f"{show(t['at'])}  {t['detail'] or ''}".rstrip())
    return 0
