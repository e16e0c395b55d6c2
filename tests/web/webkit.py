"""A hub with a province, two communes, stations, audio and one account per role, and a
client that logs in like a browser (cookie, CSRF token from the page)."""
from __future__ import annotations

import re
import subprocess
from datetime import datetime, timezone
from pathlib import Path

from fastapi.testclient import TestClient

from hub import accounts, console
from hub import config as hubconfig
from hub.admin import add_content_file, add_station, init_hub
from hub.store import HubStore
from hub.web.app import create_app

PASSWORD = "một mật khẩu dài 2026"
ROLES = ("admin", "editor", "approver", "duty", "commune", "viewer")
TOKEN = re.compile(r'name="csrftoken" value="([^"]+)"')


def tone(path: Path, seconds: float = 2.0, freq: int = 440) -> Path:
    subprocess.run(["ffmpeg", "-v", "error", "-y", "-f", "lavfi", "-i",
                    f"sine=frequency={freq}:duration={seconds}", str(path)], check=True)
    return path


def make_hub(tmp: Path, *, broker_port: int = 1) -> tuple[Path, HubStore, dict]:
    home = tmp / "hub"
    init_hub(home, broker_host="127.0.0.1", broker_port=broker_port)
    cfg = hubconfig.load(home)
    store = HubStore(cfg.db_path)
    now = datetime.now(timezone.utc)
    console.set_group_kind(store, "tinh-hb", "province", name="Tỉnh Hòa Bình")
    for commune, name in (("xa-a", "Xã An Lạc"), ("xa-b", "Xã Bình Minh")):
        console.set_group_kind(store, commune, "commune", parent="tinh-hb", name=name)
    for sid, commune in (("tram-a1", "xa-a"), ("tram-a2", "xa-a"), ("tram-b1", "xa-b")):
        add_station(cfg, sid, name=f"Trạm {sid[-2:].upper()}", groups=[commune, "tinh-hb"],
                    out=tmp / "enrol" / sid)
    content = add_content_file(store, tone(tmp / "tone.wav"), title="Thông báo thử", now=now)
    for role in ROLES:
        pw = accounts.add_user(store, role, name=f"Người {role}", role=role, now=now,
                               communes=("xa-a",) if role == "commune" else ())
        store.db.execute("UPDATE users SET hash = ?, must_change = 0 WHERE id = ?",
                         [accounts._hasher.hash(PASSWORD), role])
        assert pw
    return home, store, content


class Browser:
    """A TestClient that logs in through the form and posts forms with the page's token."""

    def __init__(self, app, user: str | None = None, password: str = PASSWORD) -> None:
        self.c = TestClient(app, follow_redirects=False)
        if user:
            r = self.login(user, password)
            assert r.status_code == 303, r.text

    def token(self) -> str:
        cookie = self.c.cookies.get("csrftoken")
        if cookie:
            return cookie
        return TOKEN.search(self.c.get("/login").text).group(1)

    def login(self, user: str, password: str):
        return self.c.post("/login", data={"csrftoken": self.token(), "user": user,
                                           "password": password})

    def get(self, path: str, **kw):
        return self.c.get(path, **kw)

    def post(self, path: str, data: dict | None = None, *, files=None, csrf: bool = True, **kw):
        data = dict(data or {})
        if csrf:
            data = {"csrftoken": self.token(), **data}
        return self.c.post(path, data=data, files=files, **kw)
