"""The web console's routes, roles, security and forms (httpx TestClient, real SQLite files,
real ffmpeg for audio). The browser walk-through is in test_web_browser.py."""
from __future__ import annotations

import hashlib
import io
import json
import shutil
import sqlite3
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
from openpyxl import load_workbook

from hub import accounts, console
from hub import config as hubconfig
from hub.planner import issue_bundle
from hub.store import HubStore
from hub.web.app import create_app
from protocol.envelope import Signer
from schedules import TZ

from .webkit import PASSWORD, ROLES, Browser, make_hub, tone

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def template(tmp_path_factory):
    """One hub built once (keys, stations, prepared audio, six accounts: seconds of work);
    each test gets its own copy of the folder."""
    base = tmp_path_factory.mktemp("template")
    home, store, content = make_hub(base)
    store.db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    store.close()
    return base, content


@pytest.fixture
def hub(template, tmp_path):
    base, content = template
    shutil.copytree(base, tmp_path / "copy")
    home = tmp_path / "copy" / "hub"
    store = HubStore(hubconfig.load(home).db_path)
    app = create_app(home)
    yield home, store, content, app
    store.close()


def _tomorrow(hh: str = "06:30") -> dict:
    d = (datetime.now(TZ) + timedelta(days=1)).strftime("%d/%m/%Y")
    return {"day": d, "time": hh}


def _draft(b: Browser, content: dict, **extra):
    return b.post("/schedule/new", {"content": content["sha"], "title": "Bản tin sáng",
                                    "target": "group:xa-a", "every": "daily", "priority": "1",
                                    "late": "5", "confirm": "1", **_tomorrow(), **extra})


# -- pages -----------------------------------------------------------------------------------

PAGES = ["/", "/stations", "/stations/tram-a1", "/readiness", "/content", "/schedule",
         "/schedule?view=month", "/approvals", "/alarms", "/alarms?all=1", "/reports",
         "/reports?print=1"]


def test_every_page_renders_in_vietnamese_for_every_role(hub):
    home, store, content, app = hub
    for role in ROLES:
        b = Browser(app, role)
        for path in PAGES:
            r = b.get(path)
            assert r.status_code == 200, (role, path, r.text[:300])
            assert '<html lang="vi">' in r.text
        assert b.get(f"/content/{content['sha']}").status_code == 200
        assert b.get(f"/content/{content['sha']}/audio").content[:4] == b"OggS"


def test_not_logged_in_goes_to_login_and_comes_back(hub):
    app = hub[3]
    b = Browser(app)
    r = b.get("/stations")
    assert r.status_code == 303 and r.headers["location"].startswith("/login?next=%2Fstations")
    r = b.c.post("/login", data={"csrftoken": b.token(), "user": "viewer",
                                 "password": PASSWORD, "next": "/stations"})
    assert r.headers["location"] == "/stations"
    r = b.c.post("/login", data={"csrftoken": b.token(), "user": "viewer",
                                 "password": PASSWORD, "next": "//evil.example/"})
    assert r.headers["location"] == "/"  # no open redirect


# -- the role matrix -------------------------------------------------------------------------

def _actions(content: dict) -> list[tuple[str, str, dict, set[str]]]:
    """(method, path, form, roles allowed) for each action that changes state."""
    return [
        ("post", "/content/tts", {"title": "x", "text": "Xin chào bà con", "engine": "espeak-ng"},
         {"editor"}),
        ("post", "/schedule/new", {"content": content["sha"], "title": "m", "target": "all",
                                   "every": "daily", "priority": "1", "late": "5",
                                   "confirm": "1", **_tomorrow("07:15")}, {"editor"}),
        ("post", "/alert", {"content": content["sha"], "target": "all", "repeat": "1",
                            "gap": "0"}, {"duty", "approver"}),
        ("post", "/stations/tram-a1/command", {"action": "stop"}, {"duty", "commune"}),
        ("post", "/users", {"id": "moi", "name": "Mới", "role": "viewer"}, {"admin"}),
        ("post", "/settings/approval", {"required": "1"}, {"admin"}),
        ("get", "/users", {}, {"admin"}),
        ("get", "/audit", {}, {"admin", "approver"}),
        ("get", "/alert", {}, {"duty", "approver"}),
        ("get", "/schedule/new", {}, {"editor"}),
        ("get", "/reports/export.csv", {}, set(ROLES)),
    ]


def test_role_matrix(hub):
    home, store, content, app = hub
    seen = []
    for role in ROLES:
        b = Browser(app, role)
        for method, path, form, allowed in _actions(content):
            r = b.post(path, form) if method == "post" else b.get(path)
            ok = r.status_code != 403
            seen.append((role, method, path, r.status_code))
            assert ok == (role in allowed), (role, method, path, r.status_code, r.text[:300])
            if role in allowed:
                assert r.status_code in (200, 303), (role, path, r.status_code, r.text[:500])
    # the approval action and the acknowledgement need their objects
    editor = Browser(app, "editor")
    assert _draft(editor, content).status_code == 303
    draft_id = store.q("SELECT id FROM schedule_items WHERE state = 'draft' AND title = "
                       "'Bản tin sáng'")[0]["id"]
    for role in ROLES:
        r = Browser(app, role).post(f"/approvals/{draft_id}", {"decision": "reject",
                                                               "note": "thử"})
        assert (r.status_code != 403) == (role == "approver"), role
    print("\n".join(f"{r:<9} {m:<4} {p:<32} {s}" for r, m, p, s in seen))


def test_commune_operator_sees_and_acts_only_on_its_communes(hub):
    home, store, content, app = hub
    b = Browser(app, "commune")
    assert b.get("/stations/tram-a1").status_code == 200
    assert b.get("/stations/tram-b1").status_code == 403  # another commune's, by URL
    assert b.post("/stations/tram-b1/command", {"action": "stop"}).status_code == 403
    board = b.get("/stations").text
    assert "tram-a1" in board and "tram-b1" not in board
    r = b.post("/stations/tram-a2/command", {"action": "volume", "level": "70"})
    assert r.status_code == 303
    cmd = store.q("SELECT * FROM commands ORDER BY issued_at DESC LIMIT 1")[0]
    assert cmd["target"] == "station:tram-a2" and cmd["by"] == "commune"
    # an alarm of another commune's station cannot be acknowledged by id
    store.db["alarms"].insert({"station_id": "tram-b1", "code": "amplifier", "detail": "x",
                               "raised_at": "2026-12-01T00:00:00Z", "historical": 0})
    aid = store.q("SELECT id FROM alarms WHERE station_id = 'tram-b1'")[0]["id"]
    assert b.post(f"/alarms/{aid}/ack", {"note": "ok"}).status_code == 403
    assert store.q("SELECT acked_at FROM alarms WHERE id = ?", [aid])[0]["acked_at"] is None


# -- security --------------------------------------------------------------------------------

def test_a_form_without_its_csrf_token_is_refused_and_changes_nothing(hub):
    home, store, content, app = hub
    b = Browser(app, "admin")
    before = len(accounts.users(store))
    r = b.post("/users", {"id": "khach", "name": "K", "role": "viewer"}, csrf=False)
    assert r.status_code == 403
    r = b.post("/users", {"csrftoken": "giả", "id": "khach", "name": "K", "role": "viewer"},
               csrf=False)
    assert r.status_code == 403
    assert len(accounts.users(store)) == before
    # the login form is protected too, even without a session
    fresh = Browser(app)
    fresh.c.get("/login")
    r = fresh.c.post("/login", data={"user": "admin", "password": PASSWORD})
    assert r.status_code == 403


def test_session_cookie_is_httponly_and_samesite(hub):
    b = Browser(hub[3])
    r = b.login("viewer", PASSWORD)
    cookie = [v for k, v in r.headers.multi_items() if k == "set-cookie"
              and v.startswith("loaxa_session=")][0].lower()
    assert "httponly" in cookie and "samesite=strict" in cookie
    assert "password" not in cookie and "hash" not in cookie
    r = b.get("/")
    assert r.headers["x-frame-options"] == "DENY"
    assert "script-src 'self'" in r.headers["content-security-policy"]


def test_lockout_after_five_wrong_passwords_stays_locked(hub):
    home, store, content, app = hub
    b = Browser(app)
    for i in range(4):
        r = b.login("duty", "sai mật khẩu")
        assert r.status_code == 401 and "sai tên đăng nhập hoặc mật khẩu" in r.text
    r = b.login("duty", "sai mật khẩu")
    assert r.status_code == 401 and "đã bị khóa" in r.text
    r = b.login("duty", PASSWORD)  # the right password does not open a locked account
    assert r.status_code == 401 and "đang bị khóa" in r.text
    assert accounts.users(store)[[u["id"] for u in accounts.users(store)].index("duty")][
        "locked_at"]
    admin = Browser(app, "admin")
    assert admin.post("/users/duty/unlock").status_code == 303
    assert Browser(app).login("duty", PASSWORD).status_code == 303
    actions = [r["action"] for r in accounts.audit_rows(store, user="duty")]
    assert "user.locked" in actions and "login.refused_locked" in actions


def test_an_address_with_many_failures_is_throttled(hub):
    b = Browser(hub[3])
    codes = [b.login(f"khong-co-{i}", "x").status_code for i in range(11)]
    assert codes[:10] == [401] * 10 and codes[10] == 429
    assert b.login("viewer", PASSWORD).status_code == 429  # even the right one, for a while


def test_a_locked_account_loses_its_open_session(hub):
    home, store, content, app = hub
    b = Browser(app, "editor")
    assert b.get("/content").status_code == 200
    Browser(app, "admin").post("/users/editor/lock")
    r = b.get("/content")
    assert r.status_code == 303 and r.headers["location"].startswith("/login")


def test_first_login_must_change_the_generated_password(hub):
    home, store, content, app = hub
    admin = Browser(app, "admin")
    r = admin.post("/users", {"id": "canbo", "name": "Cán bộ Hà", "role": "viewer"})
    password = r.text.split('id="new-password">')[1].split("<")[0]
    b = Browser(app)
    assert b.login("canbo", password).headers["location"] == "/password"
    assert b.get("/stations").headers["location"] == "/password"
    r = b.post("/password", {"old": password, "new": "ngắn", "again": "ngắn"})
    assert r.status_code == 400 and "ít nhất 10 ký tự" in r.text
    r = b.post("/password", {"old": password, "new": "mùa lũ năm nay 2026",
                             "again": "mùa lũ năm nay 2026"})
    assert r.status_code == 303
    assert b.get("/stations").status_code == 200


def test_templates_escape_user_text(hub):
    home, store, content, app = hub
    editor = Browser(app, "editor")
    evil = '<script>alert("x")</script>'
    r = editor.post("/content/upload", {"title": evil, "tags": evil},
                    files={"file": ("a.wav", tone(home / "b.wav", 1, 600).read_bytes(),
                                    "audio/wav")})
    assert r.status_code == 200, r.text[:500]
    page = editor.get("/content").text
    assert evil not in page and "&lt;script&gt;alert(" in page


def test_audit_log_records_changes_and_is_append_only(hub):
    home, store, content, app = hub
    editor = Browser(app, "editor")
    _draft(editor, content)
    item = store.q("SELECT id FROM schedule_items WHERE state = 'draft'")[0]["id"]
    Browser(app, "approver").post(f"/approvals/{item}", {"decision": "approve", "note": ""})
    rows = accounts.audit_rows(store)
    got = {(r["user"], r["action"]) for r in rows}
    assert {("editor", "schedule.draft"), ("approver", "schedule.approve")} <= got
    assert all(r["ip"] for r in rows if r["action"].startswith("schedule"))
    with pytest.raises(sqlite3.DatabaseError, match="append-only"):
        store.db.execute("UPDATE audit SET user = 'ai đó'")
    with pytest.raises(sqlite3.DatabaseError, match="append-only"):
        store.db.execute("DELETE FROM audit")
    page = Browser(app, "admin").get("/audit?q=schedule").text
    assert "schedule.approve" in page
    csv = Browser(app, "admin").get("/audit/export.csv?q=schedule").content.decode("utf-8-sig")
    assert "schedule.draft" in csv and "editor" in csv


def test_vendored_htmx_matches_its_recorded_checksum(hub):
    static = ROOT / "protocol" / "static"
    recorded = (static / "VENDORED.txt").read_text()
    digest = hashlib.sha256((static / "htmx.min.js").read_bytes()).hexdigest()
    assert f"htmx.min.js sha256      {digest}" in recorded
    r = Browser(hub[3]).get("/static/htmx.min.js")
    assert r.status_code == 200 and len(r.content) > 40000


# -- approval --------------------------------------------------------------------------------

def test_a_draft_goes_on_air_only_once_approved_and_carries_its_approval(hub):
    home, store, content, app = hub
    cfg = hubconfig.load(home)
    signer = Signer.load(cfg.key_path, cfg.hub_id)
    editor, approver = Browser(app, "editor"), Browser(app, "approver")
    assert _draft(editor, content).status_code == 303
    row = store.q("SELECT * FROM schedule_items WHERE title = 'Bản tin sáng'")[0]
    assert row["state"] == "draft" and not store.items()
    now = datetime.now(timezone.utc)
    bundle = issue_bundle(store, signer, "tram-a1", now, None)
    assert json.loads(bundle.raw)["body"]["items"] == []  # a draft plays nowhere
    # nobody approves their own draft; a rejection needs a reason
    with pytest.raises(console.HubError, match="tự duyệt"):
        console.decide(store, row["id"], True, "", user=accounts.get_user(store, "editor"),
                       ip="", now=now)
    approver.post(f"/approvals/{row['id']}", {"decision": "reject", "note": ""})
    assert store.q("SELECT state FROM schedule_items")[0]["state"] == "draft"
    r = approver.post(f"/approvals/{row['id']}", {"decision": "approve", "note": "đồng ý"})
    assert r.status_code == 303
    row = store.q("SELECT * FROM schedule_items")[0]
    assert row["state"] == "approved" and row["approved_by"] == "approver"
    bundle = issue_bundle(store, signer, "tram-a1", datetime.now(timezone.utc), None)
    items = json.loads(bundle.raw)["body"]["items"]
    assert len(items) == 1 and items[0]["approval"].startswith("approver@")
    other = issue_bundle(store, signer, "tram-b1", datetime.now(timezone.utc), None)
    assert json.loads(other.raw)["body"]["items"] == []  # another commune's station


def test_with_approval_off_a_draft_goes_on_air_at_once(hub):
    home, store, content, app = hub
    Browser(app, "admin").post("/settings/approval", {"required": "0"})
    assert _draft(Browser(app, "editor"), content).status_code == 303
    assert store.items()[0]["approved_by"] == "editor"


def test_cancel_stops_and_withdraws(hub):
    home, store, content, app = hub
    Browser(app, "admin").post("/settings/approval", {"required": "0"})
    _draft(Browser(app, "editor"), content)
    item = store.items()[0]["id"]
    assert Browser(app, "viewer").post(f"/schedule/{item}/cancel").status_code == 403
    assert Browser(app, "duty").post(f"/schedule/{item}/cancel").status_code == 303
    assert not store.items()
    stop = store.q("SELECT * FROM commands WHERE action = 'stop'")[0]
    assert json.loads(stop["body"])["item"] == item and stop["by"] == "duty"


# -- forms keep what was typed and name the field --------------------------------------------

def test_a_bad_schedule_form_names_the_field_and_keeps_the_input(hub):
    home, store, content, app = hub
    editor = Browser(app, "editor")
    r = editor.post("/schedule/new", {"content": content["sha"], "title": "Tin phòng chống bão",
                                      "target": "group:xa-a", "every": "daily",
                                      "priority": "1", "late": "5", "day": "31/02/2026",
                                      "time": "25:00"})
    assert r.status_code == 400
    assert "Ngày dd/mm/yyyy và giờ HH:MM" in r.text and 'value="Tin phòng chống bão"' in r.text
    r = editor.post("/schedule/new", {"content": content["sha"], "title": "Đã qua",
                                      "target": "all", "every": "", "priority": "1",
                                      "late": "5", "day": "01/01/2020", "time": "06:00",
                                      "confirm": "1"})
    assert r.status_code == 400 and "đã qua" in r.text
    r = editor.post("/schedule/new", {"content": "0" * 64, "target": "nowhere", "every": "x",
                                      "priority": "3", "late": "-1", **_tomorrow()})
    assert r.status_code == 400
    for msg in ("Chọn nội dung", "Chọn nơi phát", "Chọn cách lặp", "tin khẩn cấp gửi ở trang",
                "Số phút 0–240"):
        assert msg in r.text
    assert not store.q("SELECT * FROM schedule_items")


def test_overlaps_and_quiet_hours_are_warned_before_saving(hub):
    home, store, content, app = hub
    editor = Browser(app, "editor")
    Browser(app, "admin").post("/settings/approval", {"required": "0"})
    assert _draft(editor, content, title="Thứ nhất", priority="2").status_code == 303
    r = editor.post("/schedule/new", {"content": content["sha"], "title": "Thứ hai",
                                      "target": "station:tram-a1", "every": "daily",
                                      "priority": "1", "late": "5", **_tomorrow()})
    assert r.status_code == 200 and "Trùng giờ với “Thứ nhất”" in r.text
    assert "mục mới sẽ bị ngắt" in r.text and len(store.items()) == 1
    r = editor.post("/schedule/new", {"content": content["sha"], "title": "Thứ hai",
                                      "target": "station:tram-a1", "every": "daily",
                                      "priority": "1", "late": "5", "confirm": "1",
                                      **_tomorrow()})
    assert r.status_code == 303 and len(store.items()) == 2


def test_upload_refuses_a_corrupt_file_and_a_file_over_the_limit(hub, monkeypatch):
    home, store, content, app = hub
    editor = Browser(app, "editor")
    n = len(console.content_list(store))
    r = editor.post("/content/upload", {"title": "Hỏng", "tags": ""},
                    files={"file": ("hong.mp3", b"ID3" + b"\x00garbage" * 200, "audio/mpeg")})
    assert r.status_code == 400 and "không phải âm thanh hoặc đã hỏng" in r.text
    assert 'value="Hỏng"' in r.text
    monkeypatch.setattr(console, "MAX_UPLOAD", 10_000)
    r = editor.post("/content/upload", {"title": "Lớn", "tags": ""},
                    files={"file": ("lon.wav", tone(home / "l.wav", 3).read_bytes(),
                                    "audio/wav")})
    assert r.status_code == 400 and "lớn hơn" in r.text
    assert len(console.content_list(store)) == n


def test_upload_reports_the_preparation(hub):
    home, store, content, app = hub
    r = Browser(app, "editor").post("/content/upload", {"title": "Bản tin chiều", "tags": "tin"},
                                    files={"file": ("c.wav", tone(home / "c.wav", 3, 700)
                                                    .read_bytes(), "audio/wav")})
    assert r.status_code == 200 and "Đã thêm “Bản tin chiều”" in r.text
    assert "Thời lượng 0:03" in r.text and "LUFS" in r.text


# -- reports and readiness -------------------------------------------------------------------

def _played(store, sid: str, seq: int, at: datetime, outcome: str = "played") -> None:
    store.store_events(sid, [{"seq": seq, "kind": "playback", "at": at.isoformat(),
                              "data": {"occurrence": f"x@{seq}", "item": "x",
                                       "content": "0" * 64, "scheduled": at.isoformat(),
                                       "started": at.isoformat(), "ended": at.isoformat(),
                                       "outcome": outcome, "detail": "" if outcome == "played"
                                       else "no_sound"}}], at)


def test_compliance_export_xlsx_has_the_rows(hub):
    home, store, content, app = hub
    at = datetime.now(timezone.utc) - timedelta(hours=1)
    _played(store, "tram-a1", 1, at)
    _played(store, "tram-a1", 2, at, "failed")
    _played(store, "tram-b1", 1, at)
    b = Browser(app, "viewer")
    r = b.get("/reports/export.xlsx")
    assert r.status_code == 200 and "attachment" in r.headers["content-disposition"]
    ws = load_workbook(io.BytesIO(r.content))["Theo trạm"]
    rows = {row[0]: row for row in ws.iter_rows(min_row=3, values_only=True)}
    assert rows["tram-a1"][4:6] == (1, 1) and rows["tram-b1"][4] == 1
    assert rows["tram-a1"][2] == "Xã An Lạc"
    assert "failed: no_sound ×1" in rows["tram-a1"][9]
    # a commune operator's report holds only its stations
    r = Browser(app, "commune").get("/reports/export.csv")
    text = r.content.decode("utf-8-sig")
    assert "tram-a1" in text and "tram-b1" not in text


def test_readiness_lists_the_stations_to_phone_first(hub):
    home, store, content, app = hub
    Browser(app, "admin").post("/settings/approval", {"required": "0"})
    _draft(Browser(app, "editor"), content)
    store.set_state("tram-a1", online=1, active_version=0, missing="")
    day = (datetime.now(TZ) + timedelta(days=1)).strftime("%d/%m/%Y")
    r = Browser(app, "duty").get(f"/readiness?d1={day}")
    assert r.status_code == 200
    assert "0/2" in r.text and "tram-a2" in r.text and "tram-b1" not in r.text


def test_alert_progress_and_review(hub):
    home, store, content, app = hub
    for sid in ("tram-a1", "tram-a2"):  # online: not yet "unreachable"
        store.set_state(sid, online=1)
    duty = Browser(app, "duty")
    r = duty.post("/alert", {"content": content["sha"], "target": "group:xa-a", "repeat": "2",
                             "gap": "5"})
    assert r.status_code == 303 and r.headers["location"].startswith("/alert/")
    cid = r.headers["location"].rsplit("/", 1)[1]
    cmd = store.command(cid)
    body = json.loads(cmd["body"])
    assert body["priority"] == 3 and body["repeat"] == 2 and body["gap_s"] == 300
    assert cmd["review"] == "pending" and cmd["by"] == "duty"
    page = duty.get(f"/alert/{cid}").text
    assert "đã phát 0/2 trạm" in page and 'hx-trigger="every 2s"' in page
    # a station reports it started: the progress line follows
    store.store_events("tram-a1", [{"seq": 1, "kind": "command", "at": "2026-12-01T00:00:00Z",
                                    "data": {"id": cid, "state": "started"}}],
                       datetime.now(timezone.utc))
    part = duty.get(f"/alert/{cid}", headers={"HX-Request": "true"}).text
    assert "đã phát 1/2 trạm" in part and "<html" not in part  # the fragment htmx swaps in
    # the commune operator sees only its own stations' rows
    assert "tram-b1" not in Browser(app, "commune").get(f"/alert/{cid}").text
    # an unknown alert, a bad form: refused with the field named, nothing sent
    assert duty.get("/alert/khongco").status_code == 404
    n = len(store.q("SELECT id FROM commands"))
    r = duty.post("/alert", {"target": "group:khong-co", "repeat": "0", "gap": "99"})
    assert r.status_code == 400
    for msg in ("Chọn nội dung hoặc nhập văn bản", "Chọn nơi phát", "Lặp 1–10 lần"):
        assert msg in r.text
    assert len(store.q("SELECT id FROM commands")) == n
    # reviewed afterwards by an approver, once
    approver = Browser(app, "approver")
    assert cid in approver.get("/approvals").text
    assert approver.post(f"/approvals/alerts/{cid}", {"note": "đúng quy trình"}).status_code == 303
    assert store.command(cid)["reviewed_by"] == "approver"
    approver.post(f"/approvals/alerts/{cid}", {"note": "lần hai"})
    assert "không có tin khẩn cấp chờ xem lại" in approver.get("/approvals").text
    assert [r["action"] for r in accounts.audit_rows(store, text=cid)] == ["alert.review"]


def test_station_commands_from_the_station_page(hub):
    home, store, content, app = hub
    duty = Browser(app, "duty")
    for form, action in (({"action": "play", "content": content["sha"]}, "play"),
                         ({"action": "selftest"}, "selftest"), ({"action": "stop"}, "stop"),
                         ({"action": "volume", "level": "55"}, "volume")):
        assert duty.post("/stations/tram-b1/command", form).status_code == 303
        cmd = store.q("SELECT * FROM commands ORDER BY rowid DESC LIMIT 1")[0]
        assert cmd["action"] == action and cmd["target"] == "station:tram-b1"
    n = len(store.q("SELECT id FROM commands"))
    for bad in ({"action": "volume", "level": "150"}, {"action": "volume", "level": "x"},
                {"action": "reboot"}, {"action": "play", "content": "ffff"}):
        duty.post("/stations/tram-b1/command", bad)
    assert len(store.q("SELECT id FROM commands")) == n
    page = duty.get("/stations/tram-b1").text
    assert "Lệnh gần đây" in page and "volume" in page
    # the board's live part is a fragment for htmx, filtered like the page
    part = duty.get("/stations?group=xa-b", headers={"HX-Request": "true"}).text
    assert "<html" not in part and "tram-b1" in part and "tram-a1" not in part


def test_editing_a_broadcast_keeps_the_old_one_on_air_until_the_edit_is_approved(hub):
    home, store, content, app = hub
    editor, approver = Browser(app, "editor"), Browser(app, "approver")
    _draft(editor, content, every="custom", wd_MO="1", wd_TH="1", times="11:30, 17:30",
           **{"time": "06:30"})
    first = store.q("SELECT * FROM schedule_items")[0]
    assert first["rrule"] == "FREQ=WEEKLY;BYDAY=MO,TH;BYHOUR=6,11,17;BYMINUTE=30"
    form = editor.get(f"/schedule/{first['id']}/edit").text  # the form, filled in
    for field in ('value="06:30"', 'value="11:30, 17:30"', 'name="wd_MO" value="1" checked',
                  'name="wd_TH" value="1" checked', 'value="Bản tin sáng"'):
        assert field in form, field
    # editing a draft withdraws it at once
    r = editor.post(f"/schedule/{first['id']}/edit", {
        "content": content["sha"], "title": "Bản tin sáng (sửa)", "target": "group:xa-a",
        "every": "daily", "priority": "1", "late": "5", "confirm": "1", **_tomorrow("06:45")})
    assert r.status_code == 303, r.text[:500]
    live = store.q("SELECT * FROM schedule_items WHERE cancelled_at IS NULL")
    assert len(live) == 1 and live[0]["replaces"] == first["id"] and live[0]["state"] == "draft"
    approver.post(f"/approvals/{live[0]['id']}", {"decision": "approve", "note": ""})
    on_air = store.items()
    assert [i["title"] for i in on_air] == ["Bản tin sáng (sửa)"]
    # editing what is on air: the old version plays on until the edit is approved
    editor.post(f"/schedule/{on_air[0]['id']}/edit", {
        "content": content["sha"], "title": "Bản tin sáng 7 giờ", "target": "group:xa-a",
        "every": "daily", "priority": "1", "late": "5", "confirm": "1", **_tomorrow("07:00")})
    assert [i["title"] for i in store.items()] == ["Bản tin sáng (sửa)"]
    edit = store.q("SELECT * FROM schedule_items WHERE state = 'draft' AND cancelled_at IS NULL")[0]
    approver.post(f"/approvals/{edit['id']}", {"decision": "approve", "note": ""})
    assert [i["title"] for i in store.items()] == ["Bản tin sáng 7 giờ"]
    assert not store.q("SELECT * FROM commands WHERE action = 'stop'")  # nothing cut off
    assert "schedule.edit" in {r["action"] for r in accounts.audit_rows(store, user="editor")}
    # another commune's item cannot be edited by URL (a commune user cannot draft at all)
    assert Browser(app, "commune").get(f"/schedule/{edit['id']}/edit").status_code == 403


def test_overview_counts_what_the_heartbeats_say(hub):
    home, store, content, app = hub
    store.set_state("tram-a1", online=1, on_air=1)
    store.set_state("tram-a2", online=1, on_air=0)
    store.set_state("tram-b1", online=0, on_air=1)  # offline: its last word is not "now"
    page = Browser(app, "viewer").get("/").text
    assert "<b>1</b> đang phát" in page and "<b>2</b> đang kết nối" in page
    commune = Browser(app, "commune").get("/").text  # its communes only: a1, a2
    assert "<b>2</b> trạm" in commune and "<b>1</b> đang phát" in commune


def test_other_forms_name_the_field_and_keep_the_input(hub):
    home, store, content, app = hub
    n = len(console.content_list(store))
    r = Browser(app, "editor").post("/content/tts", {"title": "Tin bão số 3", "text": " ",
                                                     "engine": "siri"})
    assert r.status_code == 400 and "Cần văn bản để đọc" in r.text
    assert "Giọng đọc không có" in r.text and 'value="Tin bão số 3"' in r.text
    assert len(console.content_list(store)) == n
    admin = Browser(app, "admin")
    r = admin.post("/users", {"id": "Ông Ba!", "name": "Ông Ba", "role": "viewer"})
    assert r.status_code == 400 and "tên đăng nhập 2-32 ký tự" in r.text
    assert 'value="Ông Ba"' in r.text
    r = admin.post("/users", {"id": "ba", "name": "Ông Ba", "role": "vua"})
    assert r.status_code == 400 and "vai trò" in r.text
    assert "ba" not in {u["id"] for u in accounts.users(store)}
    r = Browser(app, "viewer").get("/readiness?d1=32/13/2026")
    assert r.status_code == 200 and "dùng dd/mm/yyyy" in r.text
    r = Browser(app, "viewer").get("/reports?d1=hôm qua")
    assert r.status_code == 200 and "dùng dd/mm/yyyy" in r.text
    r = Browser(app, "editor").post("/password", {"old": "sai", "new": "mật khẩu mới dài",
                                                  "again": "khác hẳn"})
    assert r.status_code == 400 and "không khớp" in r.text


def test_the_overview_shows_the_days_refused_messages_to_the_province_not_a_commune(hub):
    home, store, content, app = hub
    assert "Tin bị từ chối" not in Browser(app, "viewer").get("/").text  # none: no card
    now = datetime.now(timezone.utc)
    for sid, reason in (("tram-a1", "bad_signature"), ("tram-a2", "bad_signature"),
                        ("tram-b1", "replayed")):
        store.record_refusal(now, sid, f"loaxa/station/{sid}/events", reason, "test")
    store.record_refusal(now - timedelta(days=2), "tram-a1", "x", "expired", "old")
    page = Browser(app, "viewer").get("/").text
    assert "Tin bị từ chối trong 24 giờ qua" in page
    assert "<td>chữ ký sai</td><td>2</td><td>2</td>" in page
    assert "<td>tin cũ gửi lại</td><td>1</td><td>1</td>" in page
    assert "<td>hết hạn</td>" not in page  # two days old
    assert "Tin bị từ chối" not in Browser(app, "commune").get("/").text
