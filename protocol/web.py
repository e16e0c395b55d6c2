"""What the hub's console (hub/web) and the station's own page (station_agent/console.py)
share: the static files (``STATIC``: htmx vendored, the stylesheet), dates as Vietnamese read
them, and CSRF protection."""
from __future__ import annotations

from datetime import date, datetime
from pathlib import Path
from typing import Any

from asgi_csrf import asgi_csrf

from schedules import TZ

from .clock import parse_iso

STATIC = Path(__file__).parent / "static"  # VENDORED.txt records htmx's version and sums


def format_dt(value: Any, fmt: str = "%d/%m/%Y %H:%M") -> str:
    """A stored instant or date as shown: dd/mm/yyyy, 24 h, Asia/Ho_Chi_Minh; "—" if none."""
    if not value:
        return "—"
    if isinstance(value, str):
        try:
            value = parse_iso(value)
        except ValueError:
            return value
    if isinstance(value, datetime):
        return value.astimezone(TZ).strftime(fmt)
    if isinstance(value, date):
        return value.strftime("%d/%m/%Y")
    return str(value)


def csrf_protected(app: Any, secret: str, *, secure: bool, always: set[str]) -> Any:
    """asgi-csrf (a double-submit token on every POST; ``always`` protected even without a
    cookie), with one repair."""
    wrapped = asgi_csrf(app, signing_secret=secret, always_protect=always,
                        cookie_secure=secure, cookie_samesite="Strict")

    async def guarded(scope, receive, send) -> None:
        """asgi-csrf compares tokens with ``secrets.compare_digest``, which raises TypeError
        on a non-ASCII token: a forged form would be a 500. It is a refusal like any other."""
        started = False

        async def watch(event) -> None:
            nonlocal started
            started = started or event["type"] == "http.response.start"
            await send(event)
        try:
            await wrapped(scope, receive, watch)
        except TypeError as exc:
            if started or "non-ASCII" not in str(exc):
                raise
            await send({"type": "http.response.start", "status": 403,
                        "headers": [(b"content-type", b"text/plain; charset=utf-8")]})
            await send({"type": "http.response.body",
                        "body": "Mã CSRF không hợp lệ / CSRF token invalid".encode()})
    return guarded
