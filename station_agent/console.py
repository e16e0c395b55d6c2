"""`loaxa agent console`: the station's own web page for the commune staff on duty.

LAN only, Vietnamese, and independent of the hub: it reads what the agent writes on the Pi
(``status.json``, the station's database, read-only) and hands the agent its actions (stop,
local emergency message, live microphone, volume) as files in ``data/actions/``, which the
agent applies, records and reports like a press of the button they stand for. Its own
process: a fault here never touches the agent's loop. Behind a PIN set with
`loaxa agent pin` (argon2-hashed in ``console.pin`` beside station.toml); five wrong PINs lock
it for five minutes; sessions are signed, HttpOnly, SameSite=Strict cookies; every form
carries a CSRF token.
"""
from __future__ import annotations

import json
import os
import secrets
import sqlite3
import time
import uuid
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from fastapi import FastAPI, HTTPException, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from fastapi.templating import Jinja2Templates
from starlette.middleware.sessions import SessionMiddleware

from . import config

PIN_FILE = "console.pin"
MAX_FAILURES = 5
LOCK_S = 300
PIN_LEN = (4, 12)


def pin_path(cfg_path: Path) -> Path:
    return Path(cfg_path).parent / PIN_FILE


def check_pin(pin: str) -> None:
    if not (pin.isdigit() and PIN_LEN[0] <= len(pin) <= PIN_LEN[1]):
        raise config.ConfigError(f"mã PIN {PIN_LEN[0]}-{PIN_LEN[1]} chữ số / the PIN is "
                                 f"{PIN_LEN[0]}-{PIN_LEN[1]} digits")
    if len(set(pin)) == 1 or pin in "0123456789" or pin in "9876543210":
        raise config.ConfigError("mã PIN quá dễ đoán / the PIN is too easy to guess")


def set_pin(cfg_path: Path, pin: str) -> Path:
    from argon2 import PasswordHasher
    check_pin(pin)
    path = pin_path(cfg_path)
    tmp = path.with_suffix(".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o640)
    with os.fdopen(fd, "w") as f:
        f.write(PasswordHasher().hash(pin))
    os.replace(tmp, path)
    return path


class Gate:
    """The PIN and its throttle: the count of wrong PINs and the lock survive a restart of
    the console (a file in the data folder), so restarting it does not reset the count."""

    def __init__(self, cfg_path: Path, data_dir: Path, clock=time.time) -> None:
        self.pin_file = pin_path(cfg_path)
        self.state_file = data_dir / "console-throttle.json"
        self.clock = clock

    def _state(self) -> dict[str, float]:
        try:
            return json.loads(self.state_file.read_text())
        except (OSError, ValueError):
            return {"failures": 0, "until": 0}

    def locked_for(self) -> float:
        return max(0.0, self._state().get("until", 0) - self.clock())

    def check(self, pin: str) -> bool:
        from argon2 import PasswordHasher
        from argon2.exceptions import InvalidHashError, VerificationError
        if self.locked_for() > 0:
            return False
        try:
            ok = PasswordHasher().verify(self.pin_file.read_text().strip(), pin or "")
        except (OSError, VerificationError, InvalidHashError):
            ok = False
        st = self._state()
        st["failures"] = 0 if ok else st.get("failures", 0) + 1
        if st["failures"] >= MAX_FAILURES:
            st["until"], st["failures"] = self.clock() + LOCK_S, 0
        self.state_file.write_text(json.dumps(st))
        return ok


def _ro(db: Path) -> sqlite3.Connection:
    return sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5)


def today_view(cfg: config.StationConfig, now: datetime) -> dict[str, Any]:
    """Today's programme (local day) from the active bundle, and the plays recorded today."""
    from schedules import TZ, Item, occurrences
    from schedules.model import QuietHours
    start = datetime.combine(now.astimezone(TZ).date(), datetime.min.time(), TZ)
    end = start + timedelta(days=1)
    db = cfg.data_dir / "station.db"
    entries: list[dict[str, Any]] = []
    plays: list[dict[str, Any]] = []
    if db.exists():
        conn = _ro(db)
        try:
            row = conn.execute("SELECT version, body FROM bundles WHERE state = 'active'"
                               ).fetchone()
            if row:
                body = json.loads(row[1])
                items = [Item.from_wire(d) for d in body.get("items", [])]
                quiet = QuietHours.from_wire(body["quiet_hours"]) if body.get(
                    "quiet_hours") else None
                entries = [{"start": o.start, "title": o.item.title,
                            "priority": int(o.item.priority)}
                           for o in occurrences(items, start, end, quiet=quiet)]
            plays = [dict(zip(("key", "scheduled_at", "started_at", "outcome", "detail"), r))
                     for r in conn.execute(
                         "SELECT key, scheduled_at, started_at, outcome, detail FROM plays "
                         "ORDER BY coalesce(started_at, scheduled_at) DESC LIMIT 20")]
        finally:
            conn.close()
    return {"programme": entries, "plays": plays}


def create_console(cfg_path: Path, *, clock=None, secure_cookies: bool = False) -> Any:

    from fastapi.staticfiles import StaticFiles

    from protocol.vi import OUTCOMES_VI
    from protocol.web import STATIC, csrf_protected, format_dt
    from protocol.clock import make_clock
    from protocol.vi import ALARMS_VI

    cfg_path = Path(cfg_path)
    cfg = config.load(cfg_path)
    clock = clock or make_clock(cfg.clock)
    gate = Gate(cfg_path, cfg.data_dir, clock=lambda: clock.now().timestamp())
    secret_file = cfg.data_dir / "console-secret"
    if not secret_file.exists():
        fd = os.open(secret_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(secrets.token_urlsafe(48))
    secret = secret_file.read_text().strip()
    templates = Jinja2Templates(directory=str(Path(__file__).parent / "templates"))
    templates.env.filters["dt"] = format_dt
    templates.env.globals.update(ALARMS_VI=ALARMS_VI, OUTCOMES_VI=OUTCOMES_VI)
    app = FastAPI(docs_url=None, redoc_url=None, openapi_url=None)
    app.mount("/static", StaticFiles(directory=str(STATIC)), name="static")

    def status() -> dict[str, Any]:
        try:
            return json.loads((cfg.data_dir / "status.json").read_text())
        except (OSError, ValueError):
            return {}

    def page(request: Request, name: str, status_code: int = 200, **ctx) -> HTMLResponse:
        return templates.TemplateResponse(request, name, {
            "csrftoken": request.scope["csrftoken"](), "station": cfg.name or cfg.station_id,
            "now": clock.now(), "flash": request.session.pop("flash", None), **ctx},
            status_code=status_code)

    @app.middleware("http")
    async def headers(request: Request, call_next):
        resp = await call_next(request)
        resp.headers.setdefault("X-Frame-Options", "DENY")
        resp.headers.setdefault("Content-Security-Policy", "default-src 'self'; "
                                "style-src 'self'; script-src 'self'")
        resp.headers.setdefault("Cache-Control", "no-store")
        return resp

    @app.get("/", response_class=HTMLResponse)
    async def home(request: Request) -> Response:
        if not request.session.get("ok"):
            return page(request, "console_pin.html", error=None,
                        locked=round(gate.locked_for()), has_pin=gate.pin_file.exists())
        return page(request, "console.html", st=status(), **today_view(cfg, clock.now()))

    @app.post("/pin")
    async def pin(request: Request) -> Response:
        form = await request.form()
        if gate.check(str(form.get("pin", ""))):
            request.session.clear()
            request.session["ok"] = True
            return RedirectResponse("/", status_code=303)
        locked = round(gate.locked_for())
        return page(request, "console_pin.html", status_code=429 if locked else 401,
                    error=("Nhập sai nhiều lần: khóa {} phút".format(max(1, locked // 60))
                           if locked else "Mã PIN không đúng"), locked=locked,
                    has_pin=gate.pin_file.exists())

    @app.post("/action")
    async def action(request: Request) -> Response:
        if not request.session.get("ok"):
            raise HTTPException(403)
        form = await request.form()
        name = str(form.get("action", ""))
        body: dict[str, Any] = {"action": name, "by": "console",
                                "at": clock.now().isoformat()}
        if name == "volume":
            try:
                body["level"] = int(str(form.get("level", "")))
                if not 0 <= body["level"] <= 100:
                    raise ValueError
            except ValueError:
                request.session["flash"] = "Âm lượng từ 0 đến 100"
                return RedirectResponse("/", status_code=303)
        elif name not in ("stop", "emergency", "live_mic"):
            raise HTTPException(400)
        folder = cfg.data_dir / "actions"
        folder.mkdir(exist_ok=True)
        stem = f"{time.time_ns():020d}-{uuid.uuid4().hex[:6]}"
        tmp = folder / f"{stem}.tmp"
        tmp.write_text(json.dumps(body))
        os.replace(tmp, folder / f"{stem}.json")  # the agent sees it whole or not at all
        request.session["flash"] = {"stop": "Đã gửi lệnh dừng phát",
                                    "emergency": "Đã gửi lệnh phát tin khẩn cấp",
                                    "live_mic": "Đã bật/tắt micro trực tiếp",
                                    "volume": f"Đã đặt âm lượng {body.get('level')}"}[name]
        return RedirectResponse("/", status_code=303)

    @app.post("/logout")
    async def logout(request: Request) -> Response:
        request.session.clear()
        return RedirectResponse("/", status_code=303)

    inner = SessionMiddleware(app, secret_key=secret, session_cookie="loaxa_station",
                              max_age=8 * 3600, same_site="strict", https_only=secure_cookies)
    return csrf_protected(inner, secret + ":csrf", secure=secure_cookies, always={"/pin"})
