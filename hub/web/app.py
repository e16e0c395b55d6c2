"""`loaxa hub web`: the culture center's console, server-rendered in Vietnamese.

A thin layer over ``hub.console``, ``hub.accounts`` and ``hub.admin``: each route reads the
form, checks the role (``need``), calls one library function and renders a template. No SQL
and no business rule here. Sessions are Starlette's signed cookies (HttpOnly, SameSite=Strict,
Secure behind TLS); every POST carries a CSRF token checked by asgi-csrf; htmx (vendored, see
protocol/static/VENDORED.txt) refreshes the board and alert progress.
"""
from __future__ import annotations

import os
import secrets
import tempfile
import unicodedata
from datetime import date, datetime, timedelta
from pathlib import Path
from typing import Any, Callable
from urllib.parse import urlencode

from fastapi import FastAPI, HTTPException, Request
from fastapi.responses import (FileResponse, HTMLResponse, PlainTextResponse, RedirectResponse,
                               Response)
from fastapi.staticfiles import StaticFiles
from fastapi.templating import Jinja2Templates
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.middleware.sessions import SessionMiddleware

from protocol.clock import Clock, make_clock
from protocol.vi import ALARMS_VI, REFUSALS_VI
from protocol.web import STATIC, csrf_protected
from protocol.web import format_dt as _dt
from schedules import TZ, Priority
from schedules.model import ScheduleError

from .. import accounts, admin, console
from ..config import HubConfig, HubError
from ..config import load as load_config
from ..display import HEALTH_VI, OUTCOMES_VI
from ..store import HubStore

HERE = Path(__file__).parent
SESSION_HOURS = 12
EVERY_VI = {"": "Một lần", "daily": "Hằng ngày", "weekdays": "Các ngày trong tuần (T2–T6)",
            "weekly": "Hằng tuần", "custom": "Các thứ chọn dưới đây"}
WEEKDAYS = [("MO", "T2"), ("TU", "T3"), ("WE", "T4"), ("TH", "T5"), ("FR", "T6"), ("SA", "T7"),
            ("SU", "CN")]


PROBES_VI = {"relays": "rơ-le", "amplifier": "tăng âm", "mains": "điện lưới", "ups": "ắc quy UPS",
             "link": "kết nối", "disk": "bộ nhớ", "memory": "RAM", "cpu_temp": "nhiệt độ CPU",
             "modem": "sóng 4G", "clock": "đồng hồ", "audio_device": "thiết bị âm thanh"}
EVENTS_VI = {"playback": "lần phát", "alarm": "cảnh báo", "agent.started": "khởi động lại",
             "command": "lệnh", "refused": "từ chối tin không hợp lệ", "button": "nút bấm",
             "bundle": "nhận bản phát mới", "selftest": "tự kiểm tra"}


class Redirect(Exception):
    def __init__(self, url: str) -> None:
        self.url = url


def _secret(home: Path) -> str:
    """The cookie-signing secret, made once per hub (0600), never logged."""
    path = home / "web-secret"
    if not path.exists():
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(secrets.token_urlsafe(48))
    return path.read_text().strip()


# -- template filters ----------------------------------------------------------------------

def _num(n: Any) -> str:
    """1.873 as Vietnamese write thousands."""
    return f"{int(n or 0):,}".replace(",", ".")


def _parse_day(text: str | None, default: date) -> date:
    if not text:
        return default
    for fmt in ("%d/%m/%Y", "%Y-%m-%d"):
        try:
            return datetime.strptime(text.strip(), fmt).date()
        except ValueError:
            pass
    raise HubError(f"ngày {text!r}: dùng dd/mm/yyyy / date: use dd/mm/yyyy")


def create_app(home: Path, *, clock: Clock | None = None, secure_cookies: bool = False) -> Any:
    cfg: HubConfig = load_config(home)
    store = HubStore(cfg.db_path)
    clock = clock or make_clock(cfg.clock)
    templates = Jinja2Templates(directory=str(HERE / "templates"))
    env = templates.env
    env.filters.update(dt=_dt, num=_num)
    env.globals.update(ROLES=accounts.ROLES, ALARMS_VI=ALARMS_VI, HEALTH_VI=HEALTH_VI,
                       REFUSALS_VI=REFUSALS_VI, OUTCOMES_VI=OUTCOMES_VI,
                       STATES=console.STATES, Priority=Priority, EVERY_VI=EVERY_VI,
                       WEEKDAYS=WEEKDAYS,
                       COMMAND_STATES_VI=admin.COMMAND_STATES_VI, PROBES_VI=PROBES_VI,
                       EVENTS_VI=EVENTS_VI)
    app = FastAPI(title="loaxa", docs_url=None, redoc_url=None, openapi_url=None)
    app.state.store = store
    app.state.cfg = cfg
    app.mount("/static", StaticFiles(directory=str(STATIC)), name="static")

    def now() -> datetime:
        return clock.now()

    def ip(request: Request) -> str:
        return request.client.host if request.client else ""

    def user_of(request: Request) -> accounts.User:
        u = accounts.session_user(store, request.session.get("uid"), request.session.get("pw"))
        if u is None:
            request.session.clear()
            raise Redirect("/login?" + urlencode({"next": request.url.path}))
        if u.must_change and request.url.path not in ("/password", "/logout"):
            raise Redirect("/password")
        return u

    def need(request: Request, action: str) -> accounts.User:
        u = user_of(request)
        if not u.may(action):
            raise HTTPException(403, "Bạn không có quyền làm việc này / not allowed")
        return u

    def render(request: Request, name: str, user: accounts.User | None, status: int = 200,
               **ctx: Any) -> HTMLResponse:
        return templates.TemplateResponse(request, name, {
            "user": user, "csrftoken": request.scope["csrftoken"](), "now": now(),
            "flash": request.session.pop("flash", None), "path": request.url.path, **ctx},
            status_code=status)

    def flash(request: Request, text: str) -> None:
        request.session["flash"] = text

    async def off_loop(fn: Callable, *args: Any, **kw: Any) -> Any:
        """Seconds of ffmpeg (preparing an upload, speech) on a worker thread with its own
        database connection, so the other pages keep answering meanwhile."""
        def work() -> Any:
            own = HubStore(cfg.db_path)
            try:
                return fn(own, *args, **kw)
            finally:
                own.close()
        return await run_in_threadpool(work)

    async def form(request: Request) -> dict[str, str]:
        f = await request.form()
        return {k: unicodedata.normalize("NFC", v) if isinstance(v, str) else v
                for k, v in f.items()}

    @app.exception_handler(Redirect)
    async def _redirect(request: Request, exc: Redirect) -> Response:
        if request.headers.get("hx-request"):
            return Response(status_code=204, headers={"HX-Redirect": exc.url})
        return RedirectResponse(exc.url, status_code=303)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException) -> Response:
        text = {403: "Bạn không có quyền làm việc này / not allowed",
                404: "Không tìm thấy / not found"}.get(exc.status_code, str(exc.detail))
        return HTMLResponse(f"<!doctype html><html lang=\"vi\"><meta charset=\"utf-8\">"
                            f"<title>{exc.status_code}</title><h1>{exc.status_code}</h1>"
                            f"<p>{text}</p><p><a href=\"/\">Về trang chính</a></p></html>",
                            status_code=exc.status_code)

    @app.exception_handler(PermissionError)
    async def _forbidden_station(request: Request, exc: PermissionError) -> Response:
        return HTMLResponse("<h1>403</h1><p>Trạm hoặc đích này không thuộc quyền của bạn / "
                            "not one of your stations</p>", status_code=403)

    @app.middleware("http")
    async def _headers(request: Request, call_next: Callable) -> Response:
        resp = await call_next(request)
        resp.headers.setdefault("X-Frame-Options", "DENY")
        resp.headers.setdefault("X-Content-Type-Options", "nosniff")
        resp.headers.setdefault("Referrer-Policy", "same-origin")
        resp.headers.setdefault("Content-Security-Policy",
                                "default-src 'self'; img-src 'self' data:; "
                                "style-src 'self'; script-src 'self'; media-src 'self'")
        if request.url.path != "/static/htmx.min.js":
            resp.headers.setdefault("Cache-Control", "no-store")
        return resp

    # -- login ---------------------------------------------------------------------------
    @app.get("/login", response_class=HTMLResponse)
    async def login_page(request: Request, next: str = "/") -> HTMLResponse:
        return render(request, "login.html", None, next=next, error=None, uid="")

    @app.post("/login")
    async def login_post(request: Request) -> Response:
        f = await form(request)
        nxt = f.get("next") or "/"
        if not nxt.startswith("/") or nxt.startswith("//"):
            nxt = "/"
        try:
            u = accounts.login(store, f.get("user", ""), f.get("password", ""), ip=ip(request),
                               now=now())
        except accounts.LoginRefused as exc:
            return render(request, "login.html", None, status=429 if exc.throttled else 401,
                          next=nxt, error=str(exc), uid=f.get("user", ""))
        request.session.clear()
        request.session.update(uid=u.id, pw=accounts.session_stamp(store, u.id))
        return RedirectResponse("/password" if u.must_change else nxt, status_code=303)

    @app.post("/logout")
    async def logout(request: Request) -> Response:
        request.session.clear()
        return RedirectResponse("/login", status_code=303)

    @app.get("/password", response_class=HTMLResponse)
    async def password_page(request: Request) -> HTMLResponse:
        u = user_of(request)
        return render(request, "password.html", u, error=None)

    @app.post("/password")
    async def password_post(request: Request) -> Response:
        u = user_of(request)
        f = await form(request)
        if f.get("new") != f.get("again"):
            return render(request, "password.html", u, status=400,
                          error="Hai lần nhập mật khẩu mới không khớp / the new passwords differ")
        try:
            accounts.change_password(store, u.id, f.get("old", ""), f.get("new", ""), now=now(),
                                     ip=ip(request))
        except accounts.AccountError as exc:
            return render(request, "password.html", u, status=400, error=str(exc))
        request.session.update(pw=accounts.session_stamp(store, u.id))
        flash(request, "Đã đổi mật khẩu.")
        return RedirectResponse("/", status_code=303)

    # -- overview and fleet ----------------------------------------------------------------
    @app.get("/", response_class=HTMLResponse)
    async def overview(request: Request) -> HTMLResponse:
        u = need(request, "view")
        return render(request, "overview.html", u, o=console.overview(store, u, now(), cfg.quiet))

    @app.get("/stations", response_class=HTMLResponse)
    async def stations(request: Request, state: str = "", group: str = "", q: str = "",
                       page: int = 1) -> HTMLResponse:
        u = need(request, "view")
        b = console.board(store, u, now(), state=state, group=group, text=q, page=page)
        name = "board_rows.html" if request.headers.get("hx-request") else "board.html"
        return render(request, name, u, b=b, state=state, group=group, q=q,
                      tree=console.groups_tree(store),
                      query=urlencode({"state": state, "group": group, "q": q, "page": b["page"]}))

    @app.get("/stations/{sid}", response_class=HTMLResponse)
    async def station(request: Request, sid: str) -> HTMLResponse:
        u = need(request, "view")
        d = console.station_detail(store, u, sid, now())
        return render(request, "station.html", u, d=d, content=console.content_list(store)[:100])

    @app.post("/stations/{sid}/command")
    async def station_command(request: Request, sid: str) -> Response:
        u = need(request, "station.command")
        f = await form(request)
        action = f.get("action", "")
        try:
            if action == "play":
                c = admin.find_content(store, f.get("content", ""))
                body = admin.play_body(c, priority=Priority.UU_TIEN)
            elif action == "stop":
                body = {"scope": "current"}
            elif action == "volume":
                level = int(f.get("level", ""))
                if not 0 <= level <= 100:
                    raise ValueError
                body = {"level": level}
            elif action in ("selftest", "report"):
                body = {}
            else:
                raise HubError("lệnh không có / unknown command")
            console.station_command(cfg, store, sid, action, body, user=u, ip=ip(request),
                                    now=now())
            flash(request, f"Đã gửi lệnh “{action}” tới trạm {sid}.")
        except ValueError:
            flash(request, "Âm lượng phải là số từ 0 đến 100 / volume must be 0-100")
        except HubError as exc:
            flash(request, str(exc))
        return RedirectResponse(f"/stations/{sid}", status_code=303)

    @app.get("/readiness", response_class=HTMLResponse)
    async def readiness(request: Request, d1: str = "", d2: str = "") -> HTMLResponse:
        u = need(request, "view")
        try:
            a = _parse_day(d1, console.today(now()) + timedelta(days=1))
            b = _parse_day(d2, a)
            error = None
        except HubError as exc:
            a = b = console.today(now()) + timedelta(days=1)
            error = str(exc)
        if b < a:
            a, b = b, a
        r = console.readiness(store, u, a, b, now(), cfg.quiet)
        return render(request, "readiness.html", u, r=r, d1=a, d2=b, error=error)

    # -- content ---------------------------------------------------------------------------
    @app.get("/content", response_class=HTMLResponse)
    async def content(request: Request, q: str = "") -> HTMLResponse:
        u = need(request, "view")
        return render(request, "content.html", u, items=console.content_list(store, q), q=q,
                      result=None, errors={}, values={})

    @app.post("/content/upload")
    async def upload(request: Request) -> Response:
        u = need(request, "content.add")
        f = await request.form(max_part_size=console.MAX_UPLOAD)
        title = unicodedata.normalize("NFC", str(f.get("title", ""))).strip()
        tags = unicodedata.normalize("NFC", str(f.get("tags", "")))
        up = f.get("file")
        errors: dict[str, str] = {}
        if not title:
            errors["title"] = "Cần tên nội dung / a title is needed"
        if up is None or not getattr(up, "filename", ""):
            errors["file"] = "Chọn một tệp âm thanh / choose an audio file"
        result = None
        if not errors:
            with tempfile.TemporaryDirectory() as tmp:
                path = Path(tmp) / "upload"
                size = 0
                with open(path, "wb") as out:
                    while chunk := await up.read(1 << 20):
                        size += len(chunk)
                        if size > console.MAX_UPLOAD:
                            break
                        out.write(chunk)
                if size > console.MAX_UPLOAD:
                    errors["file"] = (f"Tệp lớn hơn {console.MAX_UPLOAD // 2**20} MB / the file "
                                      f"is over the limit")
                else:
                    try:
                        result = await off_loop(console.add_upload, path, filename=up.filename,
                                                title=title, tags=tags, user=u,
                                                ip=ip(request), now=now())
                    except HubError as exc:
                        errors["file"] = str(exc)
        status = 400 if errors else 200
        return render(request, "content.html", u, status=status,
                      items=console.content_list(store), q="", result=result, errors=errors,
                      values={"title": title, "tags": tags})

    @app.post("/content/tts")
    async def tts(request: Request) -> Response:
        u = need(request, "content.add")
        f = await form(request)
        values = {k: f.get(k, "") for k in ("title", "text", "tags", "engine")}
        errors: dict[str, str] = {}
        if not values["title"].strip():
            errors["tts_title"] = "Cần tên nội dung / a title is needed"
        if not values["text"].strip():
            errors["text"] = "Cần văn bản để đọc / text is needed"
        if values["engine"] not in ("auto", "gtts", "espeak-ng"):
            errors["engine"] = "Giọng đọc không có / unknown engine"
        result = None
        if not errors:
            try:
                result = await off_loop(console.add_speech, values["text"],
                                        title=values["title"].strip(), tags=values["tags"],
                                        engine=values["engine"], user=u, ip=ip(request),
                                        now=now())
            except HubError as exc:
                errors["text"] = str(exc)
        return render(request, "content.html", u, status=400 if errors else 200,
                      items=console.content_list(store), q="", result=result, errors=errors,
                      values=values)

    @app.get("/content/{sha}/audio")
    async def audio(request: Request, sha: str) -> Response:
        need(request, "view")
        if not store.content(sha):
            raise HTTPException(404)
        return FileResponse(store.content_path(sha), media_type="audio/ogg")

    @app.get("/content/{sha}", response_class=HTMLResponse)
    async def content_item(request: Request, sha: str) -> HTMLResponse:
        u = need(request, "view")
        c = store.content(sha)
        if not c:
            raise HTTPException(404)
        return render(request, "content_item.html", u, c=c, uses=console.content_uses(store, sha))

    # -- schedule --------------------------------------------------------------------------
    @app.get("/schedule", response_class=HTMLResponse)
    async def schedule(request: Request, start: str = "", view: str = "week") -> HTMLResponse:
        u = need(request, "view")
        try:
            d0 = _parse_day(start, console.today(now()))
        except HubError:
            d0 = console.today(now())
        if view == "month":
            d0 = d0.replace(day=1)
            days = ((d0.replace(day=28) + timedelta(days=4)).replace(day=1) - d0).days
        else:
            view, d0, days = "week", d0 - timedelta(days=d0.weekday()), 7
        return render(request, "schedule.html", u, view=view, start=d0,
                      prev=(d0 - timedelta(days=1 if view == "month" else 7)),
                      next=(d0 + timedelta(days=days)),
                      cal=console.calendar(store, u, d0, days, cfg.quiet),
                      items=console.items_list(store, u))

    def _draft_form(request: Request, u, values: dict, errors: dict, warns: list[str],
                    status: int = 200, editing: dict | None = None) -> HTMLResponse:
        return render(request, "schedule_new.html", u, status=status, values=values,
                      editing=editing,
                      errors=errors, warns=warns, content=console.content_list(store),
                      tree=console.groups_tree(store), stations=store.stations(),
                      approval=console.approval_required(store))

    @app.get("/schedule/new", response_class=HTMLResponse)
    async def schedule_new(request: Request, content: str = "") -> HTMLResponse:
        u = need(request, "schedule.draft")
        return _draft_form(request, u, {"content": content, "priority": "1", "late": "5",
                                        "every": "daily", "target": "all"}, {}, [])

    def _read_draft(f: dict[str, str]) -> tuple[console.Draft | None, dict[str, str]]:
        errors: dict[str, str] = {}
        c = store.content(f.get("content", ""))
        if c is None:
            errors["content"] = "Chọn nội dung / choose the content"
        target = f.get("target", "")
        try:
            target = admin.check_target(store, target)
        except HubError:
            errors["target"] = "Chọn nơi phát / choose where it plays"
        when = None
        try:
            day = _parse_day(f.get("day", ""), date.min)
            if day == date.min:
                raise HubError("")
            hh, mm = (int(x) for x in f.get("time", "").split(":"))
            when = datetime(day.year, day.month, day.day, hh, mm, tzinfo=TZ)
        except (HubError, ValueError):
            errors["when"] = "Ngày dd/mm/yyyy và giờ HH:MM (24 giờ) / date and time"
        every = f.get("every", "")
        rrule = {"": None, "daily": "FREQ=DAILY", "weekdays": "FREQ=WEEKLY;BYDAY=MO,TU,WE,TH,FR",
                 "weekly": "FREQ=WEEKLY"}.get(every, "?")
        if every == "custom":
            days = [d for d, _ in WEEKDAYS if f.get(f"wd_{d}")]
            rrule = f"FREQ=WEEKLY;BYDAY={','.join(days)}" if days else "?"
            if not days:
                errors["every"] = "Chọn ít nhất một thứ / choose at least one weekday"
        times = [t.strip() for t in f.get("times", "").split(",") if t.strip()]
        if rrule and rrule != "?" and times:
            try:
                hours = sorted({int(t.split(":")[0]) for t in times} | {when.hour if when else 0})
                mins = {int(t.split(":")[1]) for t in times} | {when.minute if when else 0}
                if len(mins) != 1:
                    raise ValueError
                rrule += f";BYHOUR={','.join(map(str, hours))};BYMINUTE={mins.pop()}"
            except (ValueError, IndexError):
                errors["times"] = ("Các giờ thêm cùng phút với giờ chính, dạng 11:00, 17:00 / "
                                   "extra times share the minute: 11:00, 17:00")
        if rrule == "?" and "every" not in errors:
            errors["every"] = "Chọn cách lặp / choose a repetition"
        until = None
        if f.get("until"):
            try:
                until = datetime.combine(_parse_day(f["until"], date.max), datetime.max.time(), TZ)
            except HubError:
                errors["until"] = "Ngày kết thúc dd/mm/yyyy / end date"
        try:
            priority = Priority(int(f.get("priority", "1")))
            if priority == Priority.KHAN_CAP:
                raise ValueError
        except ValueError:
            errors["priority"] = ("Chọn thông thường hoặc ưu tiên; tin khẩn cấp gửi ở trang Khẩn "
                                  "cấp / normal or priority; alerts go through Khẩn cấp")
            priority = Priority.THONG_THUONG
        try:
            late = int(f.get("late", "5"))
            if not 0 <= late <= 240:
                raise ValueError
        except ValueError:
            errors["late"] = "Số phút 0–240 / minutes 0-240"
            late = 5
        title = f.get("title", "").strip() or (c["title"] if c else "")
        if errors:
            return None, errors
        return console.Draft(c["sha"], title, target, when, rrule if rrule != "?" else None,
                             None, until, priority, late * 60), errors

    @app.post("/schedule/new")
    async def schedule_create(request: Request) -> Response:
        return await _save_draft(request)

    async def _save_draft(request: Request, replaces: str | None = None) -> Response:
        u = need(request, "schedule.draft")
        f = await form(request)
        editing = None
        if replaces is not None:
            editing = next((i for i in console.items_list(store, u) if i["id"] == replaces),
                           None)
            if editing is None:
                raise HTTPException(404)
        d, errors = _read_draft(f)
        warns: list[str] = []
        if d is not None:
            warns = [w for w in console.warnings(store, d, now(), cfg.quiet)
                     if not (editing and f"“{editing['title']}”" in w)]  # not with itself
            if f.get("check") or (warns and not f.get("confirm")):
                return _draft_form(request, u, {**f, "confirm": "1" if warns else ""}, {}, warns,
                                   editing=editing)
            try:
                row = console.draft(store, d, user=u, ip=ip(request), now=now(),
                                    replaces=replaces)
            except (HubError, ScheduleError) as exc:
                errors["when"] = str(exc)
            else:
                flash(request, "Đã lưu bản nháp, chờ phê duyệt." if row["state"] == "draft"
                      else "Đã lên lịch.")
                return RedirectResponse("/schedule", status_code=303)
        return _draft_form(request, u, f, errors, warns, status=400, editing=editing)

    @app.get("/schedule/{item_id}/edit", response_class=HTMLResponse)
    async def schedule_edit(request: Request, item_id: str) -> HTMLResponse:
        u = need(request, "schedule.draft")
        rows = [i for i in console.items_list(store, u) if i["id"] == item_id]
        if not rows:
            raise HTTPException(404)
        return _draft_form(request, u, console.draft_form_values(rows[0]), {}, [],
                           editing=rows[0])

    @app.post("/schedule/{item_id}/edit")
    async def schedule_update(request: Request, item_id: str) -> Response:
        return await _save_draft(request, replaces=item_id)

    @app.post("/schedule/{item_id}/cancel")
    async def schedule_cancel(request: Request, item_id: str) -> Response:
        u = user_of(request)
        if not console.may_cancel(store, u, item_id):
            raise HTTPException(403, "Bạn không có quyền hủy / not allowed")
        try:
            console.cancel(cfg, store, item_id, user=u, ip=ip(request), now=now())
            flash(request, "Đã hủy mục lịch; trạm nào đang phát sẽ dừng.")
        except HubError as exc:
            flash(request, str(exc))
        return RedirectResponse("/schedule", status_code=303)

    # -- approvals -------------------------------------------------------------------------
    @app.get("/approvals", response_class=HTMLResponse)
    async def approvals(request: Request) -> HTMLResponse:
        u = need(request, "view")
        return render(request, "approvals.html", u,
                      drafts=console.items_list(store, u, state="draft"),
                      alerts=console.alerts_to_review(store), error=None)

    @app.post("/approvals/{item_id}")
    async def approve(request: Request, item_id: str) -> Response:
        u = need(request, "schedule.approve")
        f = await form(request)
        try:
            console.decide(store, item_id, f.get("decision") == "approve", f.get("note", ""),
                           user=u, ip=ip(request), now=now())
            flash(request, "Đã phê duyệt." if f.get("decision") == "approve" else "Đã từ chối.")
        except HubError as exc:
            flash(request, str(exc))
        return RedirectResponse("/approvals", status_code=303)

    @app.post("/approvals/alerts/{cid}")
    async def review(request: Request, cid: str) -> Response:
        u = need(request, "alert.review")
        f = await form(request)
        try:
            console.review_alert(store, cid, user=u, ip=ip(request), now=now(),
                                 note=f.get("note", ""))
            flash(request, "Đã xem lại tin khẩn cấp.")
        except HubError as exc:
            flash(request, str(exc))
        return RedirectResponse("/approvals", status_code=303)

    # -- alarms and alerts -----------------------------------------------------------------
    @app.get("/alarms", response_class=HTMLResponse)
    async def alarms_page(request: Request, all: int = 0) -> HTMLResponse:
        u = need(request, "view")
        return render(request, "alarms.html", u, alarms=console.alarms(store, u, open_only=not all),
                      show_all=bool(all))

    @app.post("/alarms/{alarm_id}/ack")
    async def ack(request: Request, alarm_id: int) -> Response:
        u = need(request, "alarm.ack")
        f = await form(request)
        try:
            console.ack_alarm(store, alarm_id, f.get("note", ""), user=u, ip=ip(request),
                              now=now())
            flash(request, "Đã xác nhận cảnh báo.")
        except HubError as exc:
            flash(request, str(exc))
        return RedirectResponse(f.get("back") if str(f.get("back", "")).startswith("/")
                                else "/alarms", status_code=303)

    @app.get("/alert", response_class=HTMLResponse)
    async def alert_page(request: Request) -> HTMLResponse:
        u = need(request, "alert.send")
        return render(request, "alert.html", u, values={"target": "all", "repeat": "1",
                                                        "gap": "5"}, errors={},
                      content=console.content_list(store), tree=console.groups_tree(store),
                      recent=console.recent_plays(store))

    @app.post("/alert")
    async def alert_send(request: Request) -> Response:
        u = need(request, "alert.send")
        f = await form(request)
        errors: dict[str, str] = {}
        c = None
        try:
            if f.get("text", "").strip():
                c = console.add_speech(store, f["text"], title=f.get("title", "").strip()
                                       or "Tin khẩn cấp", tags="khẩn cấp", engine="auto", user=u,
                                       ip=ip(request), now=now())
            elif f.get("content"):
                c = admin.find_content(store, f["content"])
            else:
                errors["content"] = "Chọn nội dung hoặc nhập văn bản / content or text"
        except HubError as exc:
            errors["content"] = str(exc)
        try:
            target = admin.check_target(store, f.get("target", ""))
        except HubError:
            errors["target"] = "Chọn nơi phát / choose where"
        try:
            repeat, gap = int(f.get("repeat", "1")), int(f.get("gap", "0"))
            if not (1 <= repeat <= 10 and 0 <= gap <= 60):
                raise ValueError
        except ValueError:
            errors["repeat"] = "Lặp 1–10 lần, cách 0–60 phút / repeat 1-10, gap 0-60 min"
        if not errors:
            try:
                cmd = console.send_alert(cfg, store, c, target, user=u, ip=ip(request),
                                         now=now(), repeat=repeat, gap_s=gap * 60)
                return RedirectResponse(f"/alert/{cmd['id']}", status_code=303)
            except HubError as exc:
                errors["target"] = str(exc)
        return render(request, "alert.html", u, status=400, values=f, errors=errors,
                      content=console.content_list(store), tree=console.groups_tree(store),
                      recent=[])

    @app.get("/alert/{cid}", response_class=HTMLResponse)
    async def alert_progress(request: Request, cid: str) -> HTMLResponse:
        u = need(request, "view")
        try:
            p = admin.command_progress(store, cid, now())
        except HubError:
            raise HTTPException(404) from None
        seen = console.visible_stations(store, u)
        if seen is not None:
            p["targets"] = [t for t in p["targets"] if t["station_id"] in seen]
        name = "alert_rows.html" if request.headers.get("hx-request") else "alert_progress.html"
        return render(request, name, u, p=p)

    # -- reports ---------------------------------------------------------------------------
    def _period(d1: str, d2: str) -> tuple[date, date]:
        t = console.today(now())
        a = _parse_day(d1, t - timedelta(days=29))
        b = _parse_day(d2, t)
        return (a, b) if a <= b else (b, a)

    @app.get("/reports", response_class=HTMLResponse)
    async def reports(request: Request, d1: str = "", d2: str = "", print: int = 0,
                      page: int = 1) -> HTMLResponse:
        u = need(request, "view")
        try:
            a, b = _period(d1, d2)
            error = None
        except HubError as exc:
            a, b = _period("", "")
            error = str(exc)
        r = console.compliance(store, u, a, b, now(), cfg.quiet)
        peak = max([v["played"] + v["missed"] for _, v in r["daily"]] or [1])
        # on screen, the stations that played least come first, a page at a time; the print
        # view and the exports hold them all
        rows = sorted(r["stations"], key=lambda s: (s["rate"] is None, s["rate"] or 0, s["id"]))
        pages = max(1, (len(rows) + console.PAGE - 1) // console.PAGE)
        page = max(1, min(page, pages))
        shown = rows if print else rows[(page - 1) * console.PAGE:page * console.PAGE]
        return render(request, "reports.html", u, r=r, d1=a, d2=b, error=error, printing=print,
                      peak=peak, query=urlencode({"d1": _dt(a), "d2": _dt(b)}), shown=shown,
                      page=page, pages=1 if print else pages)

    @app.get("/reports/export.{fmt}")
    async def export(request: Request, fmt: str, d1: str = "", d2: str = "") -> Response:
        u = need(request, "report.export")
        a, b = _period(d1, d2)
        r = console.compliance(store, u, a, b, now(), cfg.quiet)
        name = f"bao-cao-{a:%Y%m%d}-{b:%Y%m%d}"
        accounts.audit(store, u.id, "report.export", fmt, f"{a}..{b}", ip(request), now())
        if fmt == "csv":
            return Response(console.compliance_csv(r), media_type="text/csv; charset=utf-8",
                            headers={"Content-Disposition": f'attachment; filename="{name}.csv"'})
        if fmt == "xlsx":
            return Response(console.compliance_xlsx(r), media_type="application/vnd."
                            "openxmlformats-officedocument.spreadsheetml.sheet",
                            headers={"Content-Disposition": f'attachment; filename="{name}.xlsx"'})
        raise HTTPException(404)

    # -- users, settings, audit ------------------------------------------------------------
    @app.get("/users", response_class=HTMLResponse)
    async def users_page(request: Request) -> HTMLResponse:
        u = need(request, "users.manage")
        return render(request, "users.html", u, users=accounts.users(store), errors={},
                      values={}, created=None, tree=console.groups_tree(store),
                      approval=console.approval_required(store))

    @app.post("/users")
    async def users_add(request: Request) -> Response:
        u = need(request, "users.manage")
        f = await form(request)
        communes = tuple(c.strip() for c in f.get("communes", "").split(",") if c.strip())
        try:
            password = accounts.add_user(store, f.get("id", ""), name=f.get("name", ""),
                                         role=f.get("role", ""), communes=communes,
                                         now=now(), by=u.id, ip=ip(request))
        except accounts.AccountError as exc:
            return render(request, "users.html", u, status=400, users=accounts.users(store),
                          errors={"id": str(exc)}, values=f, created=None,
                          tree=console.groups_tree(store),
                          approval=console.approval_required(store))
        return render(request, "users.html", u, users=accounts.users(store), errors={},
                      values={}, created=(f.get("id", "").strip().lower(), password),
                      tree=console.groups_tree(store), approval=console.approval_required(store))

    @app.post("/users/{uid}/{what}")
    async def users_change(request: Request, uid: str, what: str) -> Response:
        u = need(request, "users.manage")
        try:
            if what == "lock":
                accounts.set_locked(store, uid, True, now=now(), by=u.id, ip=ip(request))
            elif what == "unlock":
                accounts.set_locked(store, uid, False, now=now(), by=u.id, ip=ip(request))
            elif what == "reset":
                password = accounts.reset_password(store, uid, now=now(), by=u.id,
                                                   ip=ip(request))
                return render(request, "users.html", u, users=accounts.users(store), errors={},
                              values={}, created=(uid, password),
                              tree=console.groups_tree(store),
                              approval=console.approval_required(store))
            else:
                raise HTTPException(404)
        except accounts.AccountError as exc:
            flash(request, str(exc))
        return RedirectResponse("/users", status_code=303)

    @app.post("/settings/approval")
    async def settings_approval(request: Request) -> Response:
        u = need(request, "settings.manage")
        f = await form(request)
        console.set_approval_required(store, f.get("required") == "1", by=u.id, ip=ip(request),
                                      now=now())
        flash(request, "Đã lưu cài đặt phê duyệt.")
        return RedirectResponse("/users", status_code=303)

    @app.get("/audit", response_class=HTMLResponse)
    async def audit_page(request: Request, q: str = "", who: str = "") -> HTMLResponse:
        u = need(request, "audit.view")
        return render(request, "audit.html", u, rows=accounts.audit_rows(store, text=q, user=who),
                      q=q, who=who)

    @app.get("/audit/export.csv")
    async def audit_csv(request: Request, q: str = "", who: str = "") -> Response:
        u = need(request, "audit.view")
        import csv
        import io
        buf = io.StringIO()
        w = csv.writer(buf)
        w.writerow(["Thời điểm", "Người dùng", "Hành động", "Đối tượng", "Chi tiết", "Địa chỉ"])
        for r in accounts.audit_rows(store, text=q, user=who, limit=100000):
            w.writerow([_dt(r["at"], "%d/%m/%Y %H:%M:%S"), r["user"], r["action"], r["target"],
                        r["detail"], r["ip"]])
        accounts.audit(store, u.id, "audit.export", "csv", q, ip(request), now())
        return Response(("\ufeff" + buf.getvalue()).encode(), media_type="text/csv; charset=utf-8",
                        headers={"Content-Disposition": 'attachment; filename="nhat-ky.csv"'})

    @app.get("/healthz", response_class=PlainTextResponse)
    async def healthz() -> str:
        return "ok"

    # sessions: signed cookie, HttpOnly (Starlette always), SameSite=Strict, Secure with TLS
    inner: Any = SessionMiddleware(app, secret_key=_secret(home), session_cookie="loaxa_session",
                                   max_age=SESSION_HOURS * 3600, same_site="strict",
                                   https_only=secure_cookies)
    guarded = csrf_protected(inner, _secret(home) + ":csrf", secure=secure_cookies,
                             always={"/login", "/logout"})
    guarded.state = app.state  # type: ignore[attr-defined]  # tests reach the store
    return guarded


def serve(home: Path, addr: str, *, secure_cookies: bool = False) -> None:
    import uvicorn
    host, _, port = addr.rpartition(":")
    uvicorn.run(create_app(home, secure_cookies=secure_cookies), host=host or "127.0.0.1",
                port=int(port), log_level="warning", proxy_headers=True,
                forwarded_allow_ips=os.environ.get("LOAXA_WEB_PROXIES", "127.0.0.1"))
