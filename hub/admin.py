"""The hub's library of administrative actions: create a hub, enrol stations, add content,
schedule, report status. The CLI (`hub/cli.py`), the demo and the tests call these."""
from __future__ import annotations

import fcntl
import json
import os
import stat
import tempfile
import uuid
from contextlib import contextmanager
from datetime import timedelta
from pathlib import Path
from typing import Callable, Iterator

from audio import AudioError, prepare, synthesize
from protocol.clock import iso, make_clock, parse_iso
from protocol.envelope import Signer, public_from_text, public_to_text, seal
from protocol.storage import write
from protocol.topics import BadIdentifier, check_id
from schedules import Item, Priority, next_start
from schedules.model import ScheduleError

from . import config as hubconfig
from .config import HubError
from .store import HubStore, target_query


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
    from .releases import RELEASE_SENDER
    Signer.generate(RELEASE_SENDER).save(home / "release.key")  # signs software updates
    HubStore(home / "hub.db").close()
    return signer


def _check_public(text: str) -> str:
    try:
        return public_to_text(public_from_text(text))
    except ValueError as exc:
        raise HubError(f"khóa công khai không hợp lệ / bad public key: {exc}") from None


def add_station(cfg: hubconfig.HubConfig, sid: str, *, name: str, groups: list[str],
                out: Path, audio_device: str = "default", alsa_config: str | None = None,
                clock: str = "system", public_key: str | None = None) -> Path:
    """Register a station and write its enrolment folder (station.toml). The station makes
    its own signing key (`loaxa agent keygen`); the hub records only the public key, given
    here or later with ``set_station_key``. Until then the hub refuses its messages."""
    try:
        check_id(sid, "station")
        for g in groups:
            check_id(g, "group")
    except BadIdentifier as exc:
        raise HubError(str(exc)) from None
    public = _check_public(public_key) if public_key else None
    hub = Signer.load(cfg.key_path, cfg.hub_id)
    from .releases import release_public
    store = HubStore(cfg.db_path)
    try:
        try:
            store.add_station(sid, name, public, groups, make_clock(cfg.clock).now())
        except ValueError as exc:
            raise HubError(str(exc)) from None
    finally:
        store.close()
    out.mkdir(parents=True, exist_ok=True)
    b = cfg.broker
    tls: list[str] = []
    if pki_exists(cfg.home):
        # its client certificate (CN = station id: the broker's ACL confines it by that
        # name) beside the station's configuration; used when the hub's broker is TLS
        from deploy.pki import issue
        ca = _pki_ca(cfg.home)
        cert = issue(ca, out, sid, name="client")
        _record_certificate(cfg, cert.cert, sid, "station")
        (out / "broker-ca.crt").write_bytes(ca.cert.read_bytes())
        if b.tls_ca:
            tls = ['tls_ca = "broker-ca.crt"', 'tls_cert = "client.crt"',
                   'tls_key = "client.key"']
    text = "\n".join([
        "[station]", f"id = {json.dumps(sid)}", f"name = {json.dumps(name, ensure_ascii=False)}",
        f"groups = {json.dumps(groups)}", 'data_dir = "data"', f"clock = {json.dumps(clock)}", "",
        "[broker]", f"host = {json.dumps(b.host)}", f"port = {b.port}",
        f'protocol = "{b.protocol}"', f"prefix = {json.dumps(cfg.prefix)}", *tls, "",
        "[keys]", f'hub_public = "{public_to_text(hub.public)}"',
        f'release_public = "{release_public(cfg)}"',
        f"hub_sender = {json.dumps(cfg.hub_id)}", 'station_key = "station.key"', "",
        "[audio]", f"device = {json.dumps(audio_device)}", "warmup_ms = 500",
        *([f"alsa_config = {json.dumps(alsa_config)}"] if alsa_config else []), "",
        "[hardware]", 'backend = "simulated"', *REFERENCE_WIRING, "",
    ])
    (out / "station.toml").write_text(text, encoding="utf-8")
    _pack(out)
    return out / "station.toml"


def _pack(folder: Path) -> Path:
    """The enrolment as one file to copy to the Pi (`sudo loaxa agent enrol ID.tar.gz`):
    0600, since it holds the station's TLS key."""
    import tarfile
    path = folder.parent / f"{folder.name}.tar.gz"
    tmp = path.with_suffix(".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f, tarfile.open(fileobj=f, mode="w:gz") as tar:
        for p in sorted(folder.iterdir()):
            if p.is_file() and p.suffix in (".toml", ".crt", ".key"):
                tar.add(p, arcname=f"{folder.name}/{p.name}")
    os.replace(tmp, path)
    return path


PKI_DIR = "pki"


def _pki_ca(home: Path):
    from deploy.pki import Issued
    return Issued(home / PKI_DIR / "ca.crt", home / PKI_DIR / "ca.key")


def pki_exists(home: Path) -> bool:
    return (home / PKI_DIR / "ca.key").is_file()


def pki_init(home: Path, *, hosts: tuple[str, ...], hub_cn: str | None = None) -> dict[str, Path]:
    """The hub's certificate authority for the broker's TLS, the broker's server certificate
    (for ``hosts``) and the hub's client certificate, under HOME/pki (keys 0600). Refuses to
    replace an existing CA: every station's certificate hangs on it."""
    from deploy.mosquitto_conf import HUB_CN
    from deploy.pki import issue, make_ca, write_crl
    if pki_exists(home):
        raise HubError(f"đã có CA tại {home / PKI_DIR}; không ghi đè / a CA already exists "
                       f"at {home / PKI_DIR}: not replaced (every station's certificate "
                       "depends on it)")
    if not hosts:
        raise HubError("cần ít nhất một --host của broker / at least one broker --host")
    folder = home / PKI_DIR
    folder.mkdir(parents=True, exist_ok=True)
    folder.chmod(0o700)
    ca = make_ca(folder, cn="loaxa CA")
    broker = issue(ca, folder, "broker", server=True, hosts=hosts, name="broker")
    hub = issue(ca, folder, hub_cn or HUB_CN, name="hub")
    write_crl(ca, folder / "crl.pem", [])  # the broker's crlfile: empty until a revocation
    cfg = hubconfig.load(home)
    for cert, cn, kind in ((ca.cert, "loaxa CA", "ca"), (broker.cert, "broker", "broker"),
                           (hub.cert, hub_cn or HUB_CN, "hub")):
        _record_certificate(cfg, cert, cn, kind)
    return {"ca": ca.cert, "broker_cert": broker.cert, "broker_key": broker.key,
            "hub_cert": hub.cert, "hub_key": hub.key, "crl": folder / "crl.pem"}


def bridge_certificate(cfg: hubconfig.HubConfig, name: str, group: str | None) -> dict[str, Path]:
    """An edge broker's bridge toward this hub's broker over TLS (docs/scale.md, "Beyond
    one broker"): its client certificate (CN ``loaxa-bridge-NAME``) and the CA under
    HOME/pki/bridges/NAME (key 0600), issued once; and the stations it may speak for
    recorded (``group``, or every station with None) for `loaxa hub acl`."""
    from deploy.mosquitto_conf import bridge_cn
    from deploy.pki import Issued, issue
    from protocol.topics import ID_RE
    if not ID_RE.match(name) or (group is not None and not ID_RE.match(group)):
        raise HubError(f"tên {name!r} / nhóm {group!r} không hợp lệ / bad name or group: "
                       "letters, digits, - and _")
    if not pki_exists(cfg.home):
        raise HubError("chưa có CA (`loaxa hub pki init`) / no CA yet: run `loaxa hub pki init`")
    folder = cfg.home / PKI_DIR / "bridges" / name
    store = HubStore(cfg.db_path)
    try:
        if group is not None and not store.group_exists(group):
            raise HubError(f"không có nhóm {group!r} / no group {group!r}")
        known = store.setting(f"bridge.{name}")
        served = json.loads(known).get("group") if known is not None else group
        if served != group:
            raise HubError(f"cầu nối {name!r} đã phục vụ nhóm khác / bridge {name!r} already "
                           f"serves {served or 'every station'}")
        store.set_setting(f"bridge.{name}", json.dumps({"group": group}))
    finally:
        store.close()
    out = Issued(folder / "bridge.crt", folder / "bridge.key")
    if not out.cert.is_file():
        folder.mkdir(parents=True, exist_ok=True)
        folder.chmod(0o700)
        out = issue(_pki_ca(cfg.home), folder, bridge_cn(name), name="bridge")
        _record_certificate(cfg, out.cert, bridge_cn(name), "bridge")
    (folder / "ca.crt").write_bytes(_pki_ca(cfg.home).cert.read_bytes())
    return {"ca": folder / "ca.crt", "cert": out.cert, "key": out.key}


def bridges(store: HubStore) -> dict[str, list[str] | None]:
    """Each recorded bridge's stations (None: every station), for the broker's ACL."""
    out: dict[str, list[str] | None] = {}
    for r in store.q("SELECT key, value FROM settings WHERE key LIKE 'bridge.%'"):
        group = json.loads(r["value"]).get("group")
        out[r["key"][len("bridge."):]] = None if group is None else [
            x["station_id"] for x in store.q(
                "SELECT station_id FROM station_groups WHERE group_id = ?", [group])]
    return out


def _record_certificate(cfg: hubconfig.HubConfig, cert: Path, cn: str, kind: str) -> None:
    from deploy.pki import not_after, serial_of
    store = HubStore(cfg.db_path)
    try:
        store.add_certificate(serial_of(cert), cn, kind, not_after(cert),
                              make_clock(cfg.clock).now())
    finally:
        store.close()


def revoke_station(cfg: hubconfig.HubConfig, sid: str, *, now) -> Path:
    """The station is cut off: every certificate issued to it goes on the CA's revocation
    list (HOME/pki/crl.pem, for the broker's ``crlfile``: the broker refuses it from its next
    reload), and its signing key is forgotten, so whatever it still sends is refused. Its
    enrolment can be made again with a new certificate and key."""
    from deploy.pki import write_crl
    if not pki_exists(cfg.home):
        raise HubError("chưa có CA (`loaxa hub pki init`) / no CA yet")
    store = HubStore(cfg.db_path)
    try:
        if store.station(sid) is None:
            raise HubError(f"trạm {sid!r} không có / no station {sid!r}")
        with store.lock, write(store.db):
            n = store.db.execute("UPDATE certificates SET revoked_at = ? WHERE cn = ? AND "
                                 "kind = 'station' AND revoked_at IS NULL",
                                 [iso(now), sid]).rowcount
            store.db.execute("UPDATE stations SET public_key = NULL WHERE id = ?", [sid])
            revoked = [(int(s), parse_iso(at)) for s, at in store.db.execute(
                "SELECT serial, revoked_at FROM certificates WHERE revoked_at IS NOT NULL")]
            if not n and not revoked:
                raise HubError(f"trạm {sid!r} chưa có chứng chỉ / {sid!r} has no certificate")
            path = write_crl(_pki_ca(cfg.home), cfg.home / PKI_DIR / "crl.pem", revoked,
                             now=now)
        return path
    finally:
        store.close()


def rotate_hub_key(cfg: hubconfig.HubConfig, *, now) -> dict:
    """A new signing key for the hub, endorsed by the current one (protocol/hubkeys.py). The
    old key is kept beside it (``hub.key.<kid>``, 0600) and the running hub takes the new one
    within seconds: it announces it (retained), re-signs every programme, and retires the old
    key once every station has confirmed the new one."""
    from protocol import hubkeys
    old = Signer.load(cfg.key_path, cfg.hub_id)
    new = Signer.generate(cfg.hub_id)
    store = HubStore(cfg.db_path)
    try:
        chain = json.loads(store.setting("hubkey.chain") or "[]")
        chain.append(hubkeys.endorse(old, new))
        seq = int(store.setting("hubkey.seq") or 0) + 1
        raw = hubkeys.announce(chain, [], signer=new, seq=seq, now=now)
        archive = cfg.key_path.with_name(f"hub.key.{old.kid}")
        if not archive.exists():
            os.link(cfg.key_path, archive)  # the old key kept (same file, same mode 0600)
        staged = cfg.key_path.with_name("hub.key.new")
        staged.unlink(missing_ok=True)
        new.save(staged)
        with store.lock, write(store.db):
            # bundles from before the signing key was recorded were signed by the old key
            store.db.execute("UPDATE bundles SET kid = ? WHERE kid IS NULL", [old.kid])
            for key, value in (("hubkey.chain", json.dumps(chain)), ("hubkey.seq", str(seq)),
                               ("hubkey.raw", raw.decode("utf-8")), ("hubkey.kid", new.kid),
                               ("hubkey.retired", "")):
                store.db["settings"].upsert({"key": key, "value": value}, pk="key")
        # then the key itself: the running hub takes it once file and announcement agree
        os.replace(staged, cfg.key_path)
        return {"old": old.kid, "new": new.kid, "seq": seq, "archive": archive}
    finally:
        store.close()


def key_status(store: HubStore) -> dict:
    """The current rotation: which stations confirmed the new key, and whether the old ones
    are retired."""
    kid = store.setting("hubkey.kid")
    rows = store.q("SELECT s.id, st.hub_kid FROM stations s LEFT JOIN station_state st ON "
                   "st.station_id = s.id WHERE s.public_key IS NOT NULL ORDER BY s.id")
    confirmed = [r["id"] for r in rows if kid and r["hub_kid"] == kid]
    return {"kid": kid, "seq": int(store.setting("hubkey.seq") or 0),
            "stations": len(rows), "confirmed": len(confirmed),
            "waiting": [r["id"] for r in rows if r["id"] not in confirmed],
            "retired": store.setting("hubkey.retired") or ""}


def set_station_key(cfg: hubconfig.HubConfig, sid: str, public_key: str) -> None:
    """Record the public key a station made for itself (`loaxa agent keygen`)."""
    public = _check_public(public_key)
    store = HubStore(cfg.db_path)
    try:
        if store.station(sid) is None:
            raise HubError(f"trạm {sid!r} không có / no station {sid!r}")
        store.set_station_key(sid, public)
    finally:
        store.close()


# -- is `hub serve` running? ----------------------------------------------------------------

def _lock_path(db_path: Path) -> Path:
    return Path(db_path).parent / "serve.lock"


@contextmanager
def serving(db_path: Path) -> Iterator[None]:
    """Held by `hub serve` while it runs, so the CLI can tell whether what it stores will be
    sent (an advisory lock: it goes away with the process, however that ends)."""
    fd = os.open(_lock_path(db_path), os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise HubError("hub đã đang chạy / this hub is already being served") from None
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        yield
    finally:
        os.close(fd)


def _wake_path(db_path: Path) -> Path:
    return Path(db_path).parent / "serve.wake"


def wake_line(db_path: Path) -> int:
    """`hub serve`'s end of its wake-up line (a FIFO beside the store, owner only): a command
    signed by the CLI or the web is published at once, not at the loop's next turn. Opened
    for reading and writing, so reads block instead of seeing end-of-file between writers."""
    path = _wake_path(db_path)
    try:
        os.mkfifo(path, 0o600)
    except FileExistsError:
        pass
    fd = os.open(path, os.O_RDWR | os.O_NOFOLLOW)
    if not stat.S_ISFIFO(os.fstat(fd).st_mode):
        os.close(fd)
        raise HubError(f"{path} không phải FIFO / is not a FIFO: remove it")
    return fd


def nudge(db_path: Path) -> bool:
    """Tell a serving hub that something waits for it (a command). Nothing happens, and
    False comes back, when no hub serves: it finds the command when it starts."""
    try:
        fd = os.open(_wake_path(db_path), os.O_WRONLY | os.O_NONBLOCK | os.O_NOFOLLOW)
    except OSError:  # ENXIO: no reader; ENOENT: never served
        return False
    try:
        if not stat.S_ISFIFO(os.fstat(fd).st_mode):
            return False
        os.write(fd, b"!")
    except BlockingIOError:
        pass  # the line is full: the hub has wake-ups waiting already
    finally:
        os.close(fd)
    return True


def is_serving(db_path: Path) -> bool:
    try:
        fd = os.open(_lock_path(db_path), os.O_RDONLY)
    except FileNotFoundError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        return False
    except BlockingIOError:
        return True
    finally:
        os.close(fd)


NOT_SERVING = ("Chú ý: hub chưa chạy (`loaxa hub serve`), nên chưa gửi gì tới các trạm. / "
               "Note: the hub is not serving, so nothing is sent to stations until "
               "`loaxa hub serve` runs.")


def add_content_file(store: HubStore, path: Path, *, title: str, now, text: str = "",
                     engine: str = "upload", label: str | None = None,
                     progress: Callable[[str, float], None] | None = None) -> dict:
    try:
        p = prepare(path, label=label, progress=progress)
    except AudioError as exc:
        raise HubError(str(exc)) from None
    store.add_content(sha=p.sha256, data=p.data, title=title, source=path.name, text=text,
                      engine=engine, codec=p.codec, duration_ms=p.duration_ms, now=now)
    # the preparation's measurements go back to whoever added it (not stored)
    return {**store.content(p.sha256), "loudness_lufs": p.loudness_lufs,
            "true_peak_db": p.true_peak_db, "warnings": list(p.warnings)}


def add_content_text(store: HubStore, text: str, *, title: str, now, engine: str = "auto",
                     timeout: float = 10.0,
                     progress: Callable[[str, float], None] | None = None) -> dict:
    try:
        speech = synthesize(text, engine=engine, timeout=timeout,
                            cache_dir=store.path.parent / "tts-cache")
    except AudioError as exc:
        raise HubError(str(exc)) from None
    with tempfile.NamedTemporaryFile(suffix=f".{speech.fmt}") as f:
        f.write(speech.data)
        f.flush()
        return add_content_file(store, Path(f.name), title=title, now=now, text=speech.text,
                                engine=speech.engine, progress=progress,
                                label=f"giọng đọc {speech.engine} / speech from {speech.engine}")


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
             duration_ms: int | None = None, by: str = "cli", approved: bool = True) -> str:
    """Schedule ``content``; with ``stream``, relay that URL for ``duration_ms`` and play
    ``content`` if the stream fails. ``approved``: it goes on air now (the command line, or
    the console with approval off or by an approver); otherwise a draft waiting for a
    *phê duyệt* (``hub.console.decide``). ``by`` is recorded as its author and approver."""
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
    first_start(when, rrule=rrule, valid_from=valid_from, valid_until=valid_until,
                late_start_s=late_start_s, now=now)  # refuses what could never play
    store.add_item({"id": item_id, "content_sha": content["sha"], "title": title or content["title"],
                    "priority": int(priority), "start": iso(when), "rrule": rrule,
                    "valid_from": iso(valid_from) if valid_from else None,
                    "valid_until": iso(valid_until) if valid_until else None,
                    "late_start_s": late_start_s, "target": target, "created_at": iso(now),
                    "cancelled_at": None, "stream": stream,
                    "duration_ms": duration_ms if stream else None,
                    "state": "approved" if approved else "draft", "drafted_by": by,
                    "approved_by": by if approved else None,
                    "approved_at": iso(now) if approved else None})
    return item_id


def first_start(when, *, rrule: str | None, now, valid_from=None, valid_until=None,
                late_start_s: int = 300):
    """When the item will first play; a HubError if it never can (a start time that has
    passed, a campaign that has ended)."""
    from .display import show
    item = Item("check", "0" * 64, 1000, Priority.THONG_THUONG, when, rrule=rrule,
                valid_from=valid_from, valid_until=valid_until, late_start_s=late_start_s)
    first = next_start(item, now)
    if first is None:
        if rrule:
            raise HubError(f"lịch lặp này không còn lần phát nào sau {show(now)} / this "
                           f"recurring item has no occurrence left")
        raise HubError(f"thời điểm {show(when)} đã qua (bây giờ là {show(now)}): không bao giờ "
                       f"phát / the start time has passed and would never play")
    return first


def parse_duration(text: str) -> int:
    """``90s``, ``15m``, ``2h`` -> milliseconds."""
    m = __import__("re").fullmatch(r"\s*(\d+)\s*([smh])\s*", text or "")
    if not m:
        raise HubError(f"thời lượng {text!r} / duration: use 90s, 15m or 2h")
    return int(m.group(1)) * {"s": 1, "m": 60, "h": 3600}[m.group(2)] * 1000


def _health(s: dict, now) -> str | None:
    """The station's last reported health, or 'silent' if its heartbeat is more than three
    intervals late (tighter in a heightened period, when heartbeats are faster)."""
    if not s.get("online") or not s.get("last_heartbeat"):
        return s.get("health")
    late = (now - parse_iso(s["last_heartbeat"])).total_seconds()
    return "silent" if late > 3 * (s.get("heartbeat_s") or 60) else s.get("health")


STALE_AFTER_S = 30  # the hub's heartbeat (`serve.alive_at`) is written every 5 s


def hub_view(store: HubStore, now) -> dict:
    """Whether `hub serve` runs, how old what it knows is, and why it cannot reach the broker
    if it cannot."""
    alive = store.setting("serve.alive_at")
    age = (now - parse_iso(alive)).total_seconds() if alive else None
    serving = is_serving(store.path)
    failure = json.loads(store.setting("link.failure") or "null")
    return {"serving": serving, "alive_at": alive, "age_s": age, "link_failure": failure,
            "fresh": serving and age is not None and age <= STALE_AFTER_S,
            # messages the hub refused over the last day (by reason), and its counters since
            # `hub serve` last started ({"since": …, "counts": {…}}: hub/link.py)
            "refused_24h": store.refusal_summary(now - timedelta(days=1)),
            "counters": json.loads(store.setting("serve.counters") or "null") or {}}


def status_rows(store: HubStore, now=None, view: dict | None = None) -> list[dict]:
    """Each station as the hub knows it. When the hub is not serving (or its data is stale)
    presence is ``unknown``: the last known state is shown, never passed off as live."""
    now = now or make_clock(None).now()
    view = view or hub_view(store, now)
    rows = []
    for st in store.stations():
        s = store.state(st["id"]) or {}
        presence = ("online" if s.get("online") else "offline") if view["fresh"] else "unknown"
        latest = store.latest_bundle(st["id"])
        last = store.q("SELECT * FROM playbacks WHERE station_id = ? ORDER BY seq DESC LIMIT 1",
                       [st["id"]])
        rows.append({"id": st["id"], "name": st["name"], "online": bool(s.get("online")),
                     "presence": presence, "key": bool(st.get("public_key")),
                     "live_mic": bool(s.get("live_mic")),
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


# -- commands (docs/protocol.md, "Commands") -------------------------------------------------

COMMAND_TTL_S = 300


def issue_command(cfg: hubconfig.HubConfig, store: HubStore, action: str, target: str,
                  body: dict, *, now, ttl_s: int = COMMAND_TTL_S, by: str = "") -> dict:
    """Sign a command for ``target`` with the hub's key, with the next sequence of that
    target's stream, and store it with one delivery row per targeted station; `hub serve`
    publishes it. Returns the stored command."""
    if not 10 <= ttl_s <= 24 * 3600:
        raise HubError("thời hạn lệnh 10 giây đến 24 giờ / a command's expiry must be 10 s-24 h")
    try:
        target_query(target)  # a target that is not one: refused before anything is signed
    except ValueError as exc:
        raise HubError(f"đích không hợp lệ / {exc}") from None
    signer = Signer.load(cfg.key_path, cfg.hub_id)
    cid = uuid.uuid4().hex[:16]
    with store.lock, write(store.db):
        seq = store.next_command_seq(target)
        full = {"id": cid, "target": target, "action": action, **body}
        raw = seal("command", full, signer=signer, seq=seq, now=now,
                   ttl=timedelta(seconds=ttl_s), msg_id=cid)
        if not store.add_command({"id": cid, "action": action, "target": target, "seq": seq,
                                  "body": json.dumps(full, ensure_ascii=False),
                                  "raw": raw.decode("utf-8"), "issued_at": iso(now),
                                  "expires_at": iso(now + timedelta(seconds=ttl_s)),
                                  "published_at": None, "by": by}):
            # (rolled back with the sequence: nothing was issued)
            raise HubError(f"không có trạm nào thuộc {target} / no station in {target}")
    nudge(store.path)
    return store.command(cid)


def play_body(content: dict, *, priority: Priority, repeat: int = 1, gap_s: int = 0,
              title: str = "", stream: str | None = None,
              duration_ms: int | None = None) -> dict:
    if not 1 <= repeat <= 10:
        raise HubError("số lần lặp 1-10 / --repeat must be 1-10")
    if stream and not stream.startswith("https://"):
        raise HubError("luồng tiếp âm phải là https:// / a stream must be an https:// URL")
    body = {"content": content["sha"], "size": content["size"],
            "duration_ms": duration_ms or content["duration_ms"], "priority": int(priority),
            "repeat": repeat, "gap_s": gap_s, "title": title or content["title"] or "",
            "push": True}  # the hub sends the audio once with it, to all its targets
    if stream:
        body["stream"] = stream
    return body


def cancel_item(cfg: hubconfig.HubConfig, store: HubStore, ref: str, *, now,
                by: str = "") -> tuple[dict, dict]:
    """The item leaves every bundle (desired state: a station offline now gets the bundle
    without it when it returns) and a ``stop`` goes to its targets, for where it is on air."""
    rows = store.q("SELECT * FROM schedule_items WHERE id LIKE ? AND cancelled_at IS NULL",
                   [ref + "%"])
    if len(rows) != 1:
        raise HubError(f"mục lịch {ref!r}: {'không có' if not rows else 'không rõ'} / schedule "
                       f"item {ref!r}: {'not found (or already cancelled)' if not rows else 'ambiguous'}")
    item = rows[0]
    with store.lock, write(store.db):
        store.db.execute("UPDATE schedule_items SET cancelled_at = ? WHERE id = ?",
                         [iso(now), item["id"]])
    cmd = issue_command(cfg, store, "stop", item["target"], {"scope": "item", "item": item["id"]},
                        now=now, by=by)
    return item, cmd


COMMAND_STATES_VI = {"targeted": "chưa nhận", "accepted": "đã nhận", "started": "đã phát",
                     "done": "xong", "failed": "lỗi", "refused": "từ chối",
                     "unreachable": "không tới kịp"}


def command_progress(store: HubStore, cid: str, now) -> dict:
    """Counts per state for one command. A station still ``targeted`` after the command
    expired, or offline now, is ``unreachable``: it will not act on it."""
    c = store.command(cid)
    if c is None:
        raise HubError(f"lệnh {cid!r} không có / no command {cid!r}")
    expired = parse_iso(c["expires_at"]) <= now
    rows = store.command_targets(c["id"])
    for r in rows:  # not reached: it expired first, or the station is offline now
        if r["state"] == "targeted" and (expired or not r["online"]):
            r["state"] = "unreachable"
    counts: dict[str, int] = {}
    for r in rows:
        counts[r["state"]] = counts.get(r["state"], 0) + 1
    started = sum(counts.get(k, 0) for k in ("started", "done"))
    settled = sum(counts.get(k, 0) for k in ("started", "done", "failed", "refused",
                                            "unreachable"))
    return {"command": c, "targets": rows, "counts": counts, "total": len(rows),
            "started": started, "settled": settled == len(rows), "expired": expired}
