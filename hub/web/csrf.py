"""CSRF protection for the console and the station's own page: asgi-csrf (double-submit
token on every POST, the given paths protected even without a cookie), with one repair."""
from __future__ import annotations

from typing import Any

from asgi_csrf import asgi_csrf


def csrf_protected(app: Any, secret: str, *, secure: bool, always: set[str]) -> Any:
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
