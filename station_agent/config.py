"""station.toml: typed, validated at load with every error reported at once.

Paths are relative to the file's folder. Secrets (the broker password) are read from files
and never printed.
"""
from __future__ import annotations

import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from protocol.envelope import public_from_text
from protocol.mqtt import BrokerConfig
from protocol.topics import ID_RE


class ConfigError(Exception):
    pass


@dataclass(frozen=True)
class StationConfig:
    station_id: str
    name: str
    groups: tuple[str, ...]
    data_dir: Path
    station_key: Path
    hub_public: str
    hub_sender: str
    prefix: str
    broker: BrokerConfig
    clock: str = "system"
    audio_device: str = "default"
    alsa_config: str | None = None
    stream_ca: str | None = None
    warmup_ms: int = 500
    power_good_timeout_ms: int = 3000
    hardware_backend: str = "simulated"
    wiring: dict[str, Any] = field(default_factory=dict)
    sim: dict[str, Any] = field(default_factory=dict)
    fetch_retry_s: int = 15
    report_retry_s: int = 30  # 10 s made a 2,000-station storm resend a third (docs/protocol.md)
    min_free_bytes: int = 64 * 2**20
    report_batch: int = 100
    volume: float = 1.0
    stream_stall_s: float = 5.0
    amp_hold_ms: int = 2000
    heartbeat_s: int = 60
    selftest_at: str | None = "04:30"
    live_mic_timeout_s: int = 900
    health_every_s: float = 5.0
    clock_max_step_s: float = 30.0
    clock_max_skew_s: float = 60.0
    release_public: str | None = None  # the hub's release key: signs software updates
    preroll: bool = True  # relay, power-good and warm-up before a scheduled instant


def _get(d: dict, key: str, typ: type | tuple, errors: list[str], where: str, default=...):
    if key not in d:
        if default is ...:
            errors.append(f"[{where}] {key} is required")
            return None
        return default
    v = d[key]
    if not isinstance(v, typ) or (typ is int and isinstance(v, bool)):
        errors.append(f"[{where}] {key} = {v!r} has the wrong type")
        return default if default is not ... else None
    return v


def load(path: str | Path) -> StationConfig:
    path = Path(path)
    try:
        doc = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"{path}: không có tệp / no such file") from None
    except OSError as exc:  # unreadable for the service user, a folder, …
        raise ConfigError(f"{path}: {exc.strerror}") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from None
    base = path.parent
    errors: list[str] = []
    known = {"station", "broker", "keys", "audio", "hardware"}
    errors += [f"unknown section [{k}]" for k in doc if k not in known]
    st, br, keys = doc.get("station", {}), doc.get("broker", {}), doc.get("keys", {})
    au, hw = doc.get("audio", {}), doc.get("hardware", {})

    sid = _get(st, "id", str, errors, "station")
    if sid is not None and not ID_RE.match(sid):
        errors.append(f"[station] id = {sid!r}: letters, digits, '-' and '_' only")
    groups = _get(st, "groups", list, errors, "station", [])
    for g in groups or []:
        if not isinstance(g, str) or not ID_RE.match(g):
            errors.append(f"[station] groups: {g!r} is not a valid group id")
    data_dir = base / _get(st, "data_dir", str, errors, "station", "data")
    clock = _get(st, "clock", str, errors, "station", "system")
    if clock and not (clock == "system" or clock.startswith("file:")):
        errors.append(f"[station] clock = {clock!r}: use 'system' or 'file:PATH'")
    elif clock.startswith("file:"):
        clock = "file:" + str(base / clock[5:])

    password = None
    pw_file = _get(br, "password_file", str, errors, "broker", None)
    if pw_file:
        try:
            password = (base / pw_file).read_text().strip()
        except OSError as exc:
            errors.append(f"[broker] password_file: {exc.strerror}")
    protocol = str(_get(br, "protocol", str, errors, "broker", "5"))
    if protocol not in ("5", "3.1.1"):
        errors.append(f"[broker] protocol = {protocol!r}: use '5' or '3.1.1'")
    port = _get(br, "port", int, errors, "broker", 1883)
    if port is not None and not 0 < port < 65536:
        errors.append(f"[broker] port {port} is out of range")

    def rel(v: str | None) -> str | None:
        return str(base / v) if v else None

    broker = BrokerConfig(
        host=_get(br, "host", str, errors, "broker", "127.0.0.1"), port=port or 1883,
        keepalive=_get(br, "keepalive", int, errors, "broker", 30),
        session_expiry=_get(br, "session_expiry", int, errors, "broker", 7 * 24 * 3600),
        protocol=protocol, tls_ca=rel(_get(br, "tls_ca", str, errors, "broker", None)),
        tls_cert=rel(_get(br, "tls_cert", str, errors, "broker", None)),
        tls_key=rel(_get(br, "tls_key", str, errors, "broker", None)),
        username=_get(br, "username", str, errors, "broker", None), password=password,
    )
    hub_public = _get(keys, "hub_public", str, errors, "keys")
    if hub_public:
        try:
            public_from_text(hub_public)
        except ValueError as exc:
            errors.append(f"[keys] hub_public: {exc}")
    release_public = _get(keys, "release_public", str, errors, "keys", None)
    if release_public:
        try:
            public_from_text(release_public)
        except ValueError as exc:
            errors.append(f"[keys] release_public: {exc}")
    station_key = base / _get(keys, "station_key", str, errors, "keys", "station.key")
    backend = _get(hw, "backend", str, errors, "hardware", "simulated")
    if backend not in ("simulated", "rpigpio", "lgpio"):
        errors.append(f"[hardware] backend = {backend!r}: simulated, rpigpio or lgpio")
    wiring = {k: v for k, v in hw.items() if k not in ("backend", "simulated", "amp_hold_ms",
                                                        "power_good_timeout_ms")}
    try:
        from hardware import BoardError, Wiring
        Wiring.from_dict(wiring)
    except BoardError as exc:
        errors.append(f"[hardware] {exc}")
    values = dict(
        station_id=sid, name=_get(st, "name", str, errors, "station", sid), groups=tuple(groups),
        data_dir=data_dir, station_key=station_key, hub_public=hub_public,
        hub_sender=_get(keys, "hub_sender", str, errors, "keys", "hub"),
        release_public=release_public,
        prefix=_get(br, "prefix", str, errors, "broker", "loaxa"), broker=broker, clock=clock,
        audio_device=_get(au, "device", str, errors, "audio", "default"),
        alsa_config=rel(_get(au, "alsa_config", str, errors, "audio", None)),
        stream_ca=rel(_get(au, "stream_ca", str, errors, "audio", None)),
        warmup_ms=_get(au, "warmup_ms", int, errors, "audio", 500),
        volume=float(_get(au, "volume", (int, float), errors, "audio", 1.0) or 0.0),
        stream_stall_s=float(_get(au, "stream_stall_s", (int, float), errors, "audio", 5.0)),
        preroll=bool(_get(au, "preroll", bool, errors, "audio", True)),
        power_good_timeout_ms=_get(hw, "power_good_timeout_ms", int, errors, "hardware", 3000),
        amp_hold_ms=_get(hw, "amp_hold_ms", int, errors, "hardware", 2000),
        heartbeat_s=_get(st, "heartbeat_s", int, errors, "station", 60),
        selftest_at=_get(st, "selftest_at", str, errors, "station", "04:30") or None,
        live_mic_timeout_s=_get(au, "live_mic_timeout_s", int, errors, "audio", 900),
        health_every_s=float(_get(st, "health_every_s", (int, float), errors, "station", 5)),
        hardware_backend=backend, wiring=wiring, sim=dict(hw.get("simulated", {})),
        min_free_bytes=(_get(st, "min_free_mb", int, errors, "station", 64) or 0) * 2**20,
        report_batch=max(1, min(500, _get(st, "report_batch", int, errors, "station", 100) or 100)),
        clock_max_skew_s=float(_get(st, "clock_max_skew_s", int, errors, "station", 60) or 60),
    )
    if not 0.0 <= values["volume"] <= 2.0:
        errors.append(f"[audio] volume = {values['volume']}: 0.0 to 2.0 (1.0 = as prepared)")
    if errors:
        raise ConfigError(f"{path}:\n  " + "\n  ".join(errors))
    return StationConfig(**values)
