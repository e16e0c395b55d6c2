"""The console walked through in a real browser (Debian's chromium driven by Playwright) over
a real hub, mosquitto and two station agents sharing a file clock: log in, upload audio,
draft a daily broadcast for a group, approve it as another user, watch the stations play it
on the board, acknowledge an alarm raised with `loaxa agent fault`, export the compliance
report as XLSX and check its rows. A screenshot of each page is saved in the test's folder."""
from __future__ import annotations

import io
import shutil
import socket
import subprocess
import sys
import threading
from datetime import datetime, timedelta

import pytest
from openpyxl import load_workbook

from conftest import ROOT, wait_for
from fleet import Fleet
from hub import accounts
from hub.admin import serving
from hub.web.app import create_app
from schedules import TZ

from .webkit import PASSWORD, tone

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
T = datetime(2030, 3, 2, 6, 0, tzinfo=TZ)
IDS = ["xa-dong", "xa-tay"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def site(tmp_path, mosquitto):
    import uvicorn
    fleet = Fleet(tmp_path, mosquitto, IDS, start=T - timedelta(hours=1),
                  station={"station": {"health_every_s": 1},
                           "hardware": {"power_good_timeout_ms": 1000, "amp_hold_ms": 0}})
    for role in ("editor", "approver", "duty"):
        accounts.add_user(fleet.store, role, name=f"Cán bộ {role}", role=role,
                          now=fleet.clock.now())
        fleet.store.db.execute("UPDATE users SET hash = ?, must_change = 0 WHERE id = ?",
                               [accounts._hasher.hash(PASSWORD), role])
    lock = serving(fleet.cfg.db_path)  # as `hub serve` holds it: presence is live, not stale
    lock.__enter__()
    fleet.start()
    fleet.wait_online()
    port = _free_port()
    server = uvicorn.Server(uvicorn.Config(create_app(fleet.home, clock=fleet.clock),
                                           host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    wait_for(lambda: server.started, 10, "the console to listen")
    yield fleet, f"http://127.0.0.1:{port}"
    server.should_exit = True
    thread.join(10)
    fleet.stop()
    lock.__exit__(None, None, None)


@pytest.mark.skipif(CHROMIUM is None, reason="chromium is installed by `make test` (apt)")
def test_console_walk_through(site, tmp_path):
    from playwright.sync_api import expect, sync_playwright
    fleet, base = site
    shots = tmp_path / "screenshots"
    shots.mkdir()
    audio = tone(tmp_path / "ban-tin.wav", 3, 520)

    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        page = browser.new_page(viewport={"width": 1280, "height": 900}, accept_downloads=True)
        errors: list[str] = []
        page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)

        def shot(name: str) -> None:
            page.screenshot(path=str(shots / f"{name}.png"), full_page=True)

        def login(user: str) -> None:
            page.goto(f"{base}/login")
            page.fill("input[name=user]", user)
            page.fill("input[name=password]", PASSWORD)
            page.click("button[type=submit]")
            expect(page.locator("header.top")).to_contain_text(f"Cán bộ {user}")

        def logout() -> None:
            page.click("text=Đăng xuất")
            expect(page.locator("h1")).to_contain_text("Đăng nhập")

        # 1. the editor logs in and uploads audio
        page.goto(f"{base}/")
        expect(page).to_have_url(f"{base}/login?next=%2F")
        shot("01-dang-nhap")
        login("editor")
        shot("02-tong-quan")
        page.click("nav >> text=Nội dung")
        page.fill("#upload input[name=title]", "Bản tin sáng")
        page.set_input_files("#upload input[name=file]", str(audio))
        page.click("#upload button[type=submit]")
        expect(page.locator("#result")).to_contain_text("Đã thêm “Bản tin sáng”")
        expect(page.locator("#result")).to_contain_text("LUFS")
        shot("03-noi-dung")

        # 2. a daily broadcast for the group, as a draft
        page.click("text=Lên lịch phát nội dung này")
        page.select_option("select[name=target]", "group:g1")
        page.fill("input[name=day]", T.strftime("%d/%m/%Y"))
        page.fill("input[name=time]", "06:00")
        page.select_option("select[name=every]", "daily")
        shot("04-them-lich")
        page.click("button:text-is('Lưu')")
        expect(page.locator(".flash")).to_contain_text("chờ phê duyệt")
        expect(page.locator("table")).to_contain_text("chờ duyệt")
        shot("05-lich-phat")
        assert not fleet.store.items()  # nothing on air before approval
        logout()

        # 3. another user approves it
        login("approver")
        page.click("nav >> text=Duyệt")
        expect(page.locator("main")).to_contain_text("Bản tin sáng")
        shot("06-duyet")
        page.fill("input[name=note]", "Đồng ý phát")
        page.click("button:text-is('Phê duyệt')")
        expect(page.locator(".flash")).to_contain_text("Đã phê duyệt")
        item = fleet.store.items()[0]
        assert item["approved_by"] == "approver" and item["drafted_by"] == "editor"

        # 4. the stations take the new programme, the hour comes, and the board shows it
        version = lambda sid: (fleet.store.latest_bundle(sid) or {}).get("version")  # noqa
        wait_for(lambda: all(fleet.status(s).get("active_version") == version(s)
                             and fleet.status(s).get("audio_missing") == 0
                             and item["id"] in str(fleet.station_db(s, "SELECT raw FROM bundles"))
                             for s in IDS), 30, "the approved programme on both stations")
        fleet.pass_time(T)
        wait_for(lambda: len([p for p in fleet.playbacks() if p["item_id"] == item["id"]
                              and p["outcome"] == "played"]) == 2, 30, "both plays reported")
        page.click("nav >> text=Trạm")
        expect(page.locator("#board")).to_contain_text("đã phát", timeout=15000)  # htmx poll
        expect(page.locator("#board tbody tr")).to_have_count(2)
        expect(page.locator("#board")).to_contain_text("đang kết nối")
        shot("07-bang-tram")
        page.click(f"text=Đài xã {IDS[0]}")
        expect(page.locator("main")).to_contain_text("Nhật ký phát")
        expect(page.locator("main")).to_contain_text("Bản tin sáng")
        shot("08-tram")
        logout()

        # 5. a fault at a station raises an alarm; the duty officer acknowledges it
        cfg = fleet.station_dir(IDS[1]) / "station.toml"
        subprocess.run([sys.executable, "-m", "deploy.cli", "agent", "fault", "--config",
                        str(cfg), "inject", "mains_lost"], check=True, cwd=ROOT,
                       capture_output=True)
        wait_for(lambda: [a for a in fleet.store.open_alarms(IDS[1])
                          if a["code"] == "health.mains"], 20, "the mains alarm at the hub")
        login("duty")
        page.click("nav >> text=Cảnh báo")
        row = page.locator("tr", has_text="mất điện lưới")
        expect(row).to_have_count(1)
        shot("09-canh-bao")
        row.locator("input[name=note]").fill("Đã gọi xã, đang chạy máy phát")
        row.locator("button:text-is('Xác nhận')").click()
        expect(page.locator(".flash")).to_contain_text("Đã xác nhận")
        alarm = [a for a in fleet.store.open_alarms(IDS[1]) if a["code"] == "health.mains"][0]
        assert alarm["acked_by"] == "duty" and "máy phát" in alarm["ack_note"]
        page.click("nav >> text=Khẩn cấp")
        shot("10-khan-cap")

        # 6. the compliance report, exported as XLSX
        page.goto(f"{base}/reports?d1={T:%d/%m/%Y}&d2={T:%d/%m/%Y}")
        expect(page.locator("#compliance")).to_contain_text(f"Đài xã {IDS[0]}")
        shot("11-bao-cao")
        with page.expect_download() as dl:
            page.click("#export-xlsx")
        data = open(dl.value.path(), "rb").read()
        rows = {r[0]: r for r in load_workbook(io.BytesIO(data))["Theo trạm"]
                .iter_rows(min_row=3, values_only=True)}
        for sid in IDS:
            assert rows[sid][3:6] == (1, 1, 0), rows[sid]  # scheduled, played, missed
        for path, name in (("/readiness", "12-san-sang"), ("/schedule", "13-lich-tuan"),
                           ("/schedule?view=month", "14-lich-thang"), ("/", "15-tong-quan")):
            page.goto(base + path)
            shot(name)
        page.set_viewport_size({"width": 390, "height": 844})  # a phone, at night
        page.goto(f"{base}/alarms?all=1")
        shot("16-dien-thoai-canh-bao")
        browser.close()
    assert not [e for e in errors if "Content Security Policy" in e], errors
    print(f"screenshots: {shots}")
