"""Issue 8, "day one as a real user": each test is named after the failure it proves fixed.
These need no broker; the ones that do are in tests/integration/test_day_one_live.py."""
from __future__ import annotations

import json
import subprocess
import sys
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

from conftest import ROOT
from deploy.cli import main
from hub.admin import hub_view, serving, status_rows
from hub.display import parse_when, render_hub, render_status
from hub.store import HubStore
from protocol.clock import iso
from schedules import TZ


def run(*args):
    return main([str(a) for a in args])


@pytest.fixture
def home(tmp_path):
    h = tmp_path / "hub"
    assert run("hub", "--home", h, "init", "--broker-port", "18830") == 0
    assert run("hub", "--home", h, "station", "add", "xa-1", "--name", "Đài xã Một") == 0
    return h


def _nothing_stored(home):
    s = HubStore(home / "hub.db")
    try:
        assert s.items() == [] and s.q("SELECT * FROM content") == []
    finally:
        s.close()


# -- failures that look like success ---------------------------------------------------------

def test_announce_without_hub_serve_says_nothing_will_be_sent(home, capsys):
    assert run("hub", "--home", home, "announce", "--text", "Xin chào bà con.", "--tts",
               "espeak-ng", "--at", "+5m") == 0
    io = capsys.readouterr()
    assert "Đã lên lịch" in io.out
    assert "hub chưa chạy" in io.err and "nothing is sent" in io.err
    # with `hub serve` holding its lock, no such warning
    with serving(home / "hub.db"):
        assert run("hub", "--home", home, "announce", "--text", "Xin chào bà con.", "--tts",
                   "espeak-ng", "--at", "+5m") == 0
        assert "hub chưa chạy" not in capsys.readouterr().err


def test_status_shows_how_old_its_data_is_and_unknown_presence_when_not_serving(home):
    s = HubStore(home / "hub.db")
    now = datetime(2030, 1, 1, 3, 0, tzinfo=timezone.utc)
    s.set_state("xa-1", online=1, since=iso(now - timedelta(hours=5)))
    s.set_setting("serve.alive_at", iso(now - timedelta(hours=2)))
    try:
        view = hub_view(s, now)
        [row] = status_rows(s, now, view)
        assert not view["serving"] and row["presence"] == "unknown"
        text = render_hub(view) + "\n" + render_status([row])
        assert "KHÔNG CHẠY" in text and "01/01/2030 08:00:00" in text and "2 giờ trước" in text
        assert "không rõ" in text and "trực tuyến" not in text
        with serving(home / "hub.db"):  # serving, but its heartbeat is 2 h old: still unknown
            assert status_rows(s, now)[0]["presence"] == "unknown"
            s.set_setting("serve.alive_at", iso(now - timedelta(seconds=3)))
            assert status_rows(s, now)[0]["presence"] == "online"
    finally:
        s.close()


@pytest.mark.parametrize("at", ["01/01/2025 08:00", "past-this-morning"])
def test_a_start_time_in_the_past_is_refused(home, capsys, at):
    if at == "past-this-morning":  # today, an hour ago, in Vietnamese time
        at = (datetime.now(TZ) - timedelta(hours=1)).strftime("%d/%m/%Y %H:%M")
    assert run("hub", "--home", home, "announce", "--text", "Họp tổ dân phố.", "--tts",
               "espeak-ng", "--at", at) == 2
    assert "đã qua" in capsys.readouterr().err
    _nothing_stored(home)


def test_a_recurring_item_that_started_in_the_past_says_when_it_first_plays(home, capsys):
    assert run("hub", "--home", home, "announce", "--text", "Bản tin sáng.", "--tts",
               "espeak-ng", "--at", "01/01/2025 06:00", "--every", "daily") == 0
    out = capsys.readouterr().out
    first = out.split("first occurrence: ")[1].strip()
    when = datetime.strptime(first, "%d/%m/%Y %H:%M:%S").replace(tzinfo=TZ)
    assert when > datetime.now(TZ) and when.hour == 6 and when.minute == 0
    # a campaign that has ended never plays: refused
    assert run("hub", "--home", home, "announce", "--text", "Bản tin.", "--tts", "espeak-ng",
               "--at", "01/01/2025 06:00", "--every", "daily", "--until", "31/01/2025") == 2
    assert "không còn lần phát" in capsys.readouterr().err


# -- messages a person reads -----------------------------------------------------------------

@pytest.mark.parametrize("args, message", [
    (["announce", "--text", ""], "văn bản trống"),
    (["announce", "--text", "🙂🙂🙂", "--tts", "espeak-ng"], "không có chữ nào đọc được"),
    (["announce", "--text", "...!!!", "--tts", "espeak-ng"], "không có chữ nào đọc được"),
    (["announce", "--text", "x", "--tts", "espeak-ng", "--every", "sometimes"],
     "lịch lặp 'sometimes' không hợp lệ"),
    (["announce", "--text", "x", "--tts", "espeak-ng", "--priority", "gấp"],
     "mức ưu tiên 'gấp' không có"),
    (["content", "add", "/no/such.wav"], "không có tệp /no/such.wav"),
    (["content", "add", "{folder}"], "là một thư mục, không phải tệp âm thanh"),
])
def test_user_errors_are_one_clear_vietnamese_line(home, capsys, args, message):
    args = [a.replace("{folder}", str(home)) for a in args]
    assert run("hub", "--home", home, *args) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err and "unpack" not in err
    assert len(err.strip().splitlines()) == 1
    _nothing_stored(home)


def test_silent_speech_is_named_as_speech_not_as_a_temporary_file(home, tmp_path):
    from audio import prepare
    from audio.errors import AudioError
    silent = tmp_path / "tmpab12cd.wav"
    subprocess.run(["ffmpeg", "-v", "error", "-f", "lavfi", "-i", "anullsrc=r=16000:cl=mono",
                    "-t", "2", str(silent)], check=True)
    with pytest.raises(AudioError) as exc:
        prepare(silent, label="giọng đọc espeak-ng / speech from espeak-ng")
    assert "tmpab12cd" not in str(exc.value) and "giọng đọc espeak-ng" in str(exc.value)


@pytest.mark.parametrize("text", ["6h30", "6:30", "06:30", "6g30"])
def test_6h30_and_6_30_are_the_same_time(text):
    now = datetime(2030, 1, 1, 0, 0, tzinfo=TZ)  # midnight local
    assert parse_when(text, now) == datetime(2030, 1, 1, 6, 30, tzinfo=TZ)
    assert parse_when(f"02/01/2030 {text}", now) == datetime(2030, 1, 2, 6, 30, tzinfo=TZ)


def test_outcomes_such_as_passed_and_stopped_are_shown_in_vietnamese():
    from hub.display import outcome_vi
    assert outcome_vi("passed") == "tự kiểm tra đạt" and outcome_vi("stopped") == "đã dừng"


def test_long_preparation_shows_progress(tmp_path):
    from audio import prepare
    src = tmp_path / "long.wav"
    subprocess.run(["ffmpeg", "-v", "error", "-f", "lavfi", "-i",
                    "sine=frequency=300:duration=20", str(src)], check=True)
    seen: list[tuple[str, float]] = []
    prepare(src, progress=lambda phase, f: seen.append((phase, f)))
    phases = list(dict.fromkeys(p for p, _ in seen))
    assert phases[0].startswith("đo độ lớn") and any(p.startswith("mã hóa") for p in phases)
    for phase in phases:  # each phase moves forward and gets (near) the end
        fs = [f for p, f in seen if p == phase]
        assert fs == sorted(fs) and fs[-1] >= 0.9, (phase, fs)


def test_content_add_prints_progress_on_stderr(home, tmp_path, capsys):
    src = tmp_path / "ban-tin.wav"
    subprocess.run(["ffmpeg", "-v", "error", "-f", "lavfi", "-i",
                    "sine=frequency=300:duration=5", str(src)], check=True)
    assert run("hub", "--home", home, "content", "add", src) == 0
    err = capsys.readouterr().err
    assert "đo độ lớn / measuring" in err and "mã hóa / encoding" in err


# -- text read as an announcer reads it -------------------------------------------------------

@pytest.mark.parametrize("text, spoken", [
    ("Gọi 0912.345.678", "Gọi không chín một hai, ba bốn năm, sáu bảy tám"),
    ("Gọi 0912 345 678", "Gọi không chín một hai, ba bốn năm, sáu bảy tám"),
    ("Gọi 0912345678", "Gọi không chín một hai, ba bốn năm, sáu bảy tám"),
    ("Gọi +84 912 345 678", "Gọi cộng tám bốn, chín một hai, ba bốn năm, sáu bảy tám"),
    ("ĐT (024) 3825 1234", "điện thoại không hai bốn, ba tám hai năm, một hai ba bốn"),
    ("Họp lúc 6h30", "Họp lúc sáu giờ ba mươi phút"),
    ("Họp lúc 6:30", "Họp lúc sáu giờ ba mươi phút"),
    ("từ 7h đến 11h30", "từ bảy giờ đến mười một giờ ba mươi phút"),
    ("ngày 2/9", "ngày hai tháng chín"),
    ("Ngày 25/12/2030", "Ngày hai mươi lăm tháng mười hai năm hai nghìn không trăm ba mươi"),
    ("phí 50.000đ", "phí năm mươi nghìn đồng"),
    ("hỗ trợ 1.500.000 đồng", "hỗ trợ một triệu năm trăm nghìn đồng"),
    ("giá 2.000.000 VNĐ", "giá hai triệu đồng"),
    ("số nhà 12/3 đường Lê Lợi", "số nhà mười hai trên ba đường Lê Lợi"),
    ("hẻm 45/7/2", "hẻm bốn mươi lăm trên bảy trên hai"),
    ("mưa 2,5 mm", "mưa hai phẩy năm mi-li-mét"),
    ("lũ lên 1,25 m", "lũ lên một phẩy hai mươi lăm mét"),
    ("nhà số 45", "nhà số bốn mươi lăm"),
    ("Cảnh báo 🌀 bão", "Cảnh báo bão"),
])
def test_common_forms_are_read_as_a_vietnamese_announcer_reads_them(text, spoken):
    from audio.vntext import normalize
    assert normalize(text) == spoken


@pytest.mark.parametrize("text", ["🙂", "🙂🙂🙂", "...", "!!! ???", "— • —"])
def test_text_with_nothing_speakable_is_refused(text):
    from audio import synthesize
    from audio.errors import AudioError
    with pytest.raises(AudioError, match="không có chữ nào đọc được"):
        synthesize(text, engine="espeak-ng")


# -- the deployment the docs describe --------------------------------------------------------

def test_pi_gpio_libraries_are_an_extra_resolved_for_linux_on_arm():
    import tomllib
    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"][
        "optional-dependencies"]
    assert any(d.lower().startswith("rpi.gpio") for d in extras["pi"])
    assert any(d.lower().startswith("lgpio") for d in extras["pi"])
    lock = (ROOT / "requirements" / "lock.txt").read_text().lower()
    for name in ("rpi-gpio==", "lgpio=="):
        [line] = [ln for ln in lock.splitlines() if ln.startswith(name)]
        assert "platform_machine" in line and "aarch64" in line, line
    assert "http://" not in lock and "https://" not in lock  # no index URLs


def test_home_is_accepted_after_the_subcommand_too(tmp_path, capsys):
    h = tmp_path / "hub2"
    assert run("hub", "init", "--home", h) == 0  # as docs/usage.md shows it
    assert (h / "hub.toml").is_file()
    assert run("hub", "station", "add", "xa-9", "--name", "Xã 9", "--home", h) == 0
    assert run("hub", "status", "--json", "--home", h) == 0
    assert "xa-9" in capsys.readouterr().out


def test_version():
    proc = subprocess.run([sys.executable, "-m", "deploy.cli", "--version"], capture_output=True,
                          text=True, cwd=ROOT)
    assert proc.returncode == 0 and proc.stdout.startswith("loaxa ")


def test_the_acl_follows_the_prefix(capsys, tmp_path):
    """`loaxa.acl` hard-coded `loaxa/`: the shipped file is what `loaxa hub acl` renders for
    the default prefix, and another prefix gets its own."""
    from deploy.mosquitto_conf import render_acl
    shipped = (ROOT / "deploy" / "mosquitto" / "loaxa.acl").read_text()
    assert render_acl("loaxa") == shipped
    other = render_acl("tinh-lao-cai")
    assert "loaxa/" not in other and "pattern write tinh-lao-cai/station/%u/events" in other
    h = tmp_path / "hub3"
    assert run("hub", "--home", h, "init", "--prefix", "tinh-lao-cai") == 0
    capsys.readouterr()
    assert run("hub", "--home", h, "acl") == 0
    assert capsys.readouterr().out == other
    # the bridge of a commune broker carries the same prefix, each topic one way
    assert run("hub", "--home", h, "bridge", "xa-1", "--host", "hub.example.vn") == 0
    bridge = capsys.readouterr().out
    assert "connection xa-1\naddress hub.example.vn:1883\n" in bridge
    assert "topic tinh-lao-cai/station/+/events out 1" in bridge
    assert "topic tinh-lao-cai/all/# in 1" in bridge and " both " not in bridge
    assert run("hub", "--home", h, "bridge", "x y") == 2


# -- agent status -----------------------------------------------------------------------------

def test_agent_status_shows_the_stations_own_state_in_vietnamese(tmp_path):
    from station_agent.status_view import render
    st = {"station": "xa-1", "pid": 0, "at": "2030-01-01T00:00:00.000Z", "connected": False,
          "link_failure": {"cause": "tls_expected", "detail": "the broker expects TLS"},
          "health": "degraded", "clock_trusted": True, "active_version": 3,
          "pending_version": 4, "audio_missing": 2, "outbox": 5, "live_mic": True,
          "playing": None, "starting": None,
          "next": {"key": "a@x", "title": "Bản tin sáng", "start": "2030-01-01T23:00:00.000Z",
                   "priority": 2},
          "blocked": [{"code": "live_mic", "detail": ""}, {"code": "pending", "detail": "v4: 2"}],
          "alarms": {"health.link": "tls_expected: the broker expects TLS"}}
    text = render(st)
    for part in ("Tác tử KHÔNG chạy", "mất kết nối (tls_expected", "suy giảm",
                 "đang dùng v3, chờ v4", "Micro trực tiếp: ĐANG MỞ",
                 "Sắp phát: Bản tin sáng lúc 02/01/2030 06:00:00 (ưu tiên)",
                 "micro trực tiếp đang giữ sóng", "chương trình mới đang chờ tải âm thanh",
                 "Cảnh báo: mất kết nối"):
        assert part in text, (part, text)


# -- a Pi that will not start ----------------------------------------------------------------

def _agent(*args):
    return subprocess.run([sys.executable, "-m", "deploy.cli", "agent", *map(str, args)],
                          capture_output=True, text=True, cwd=ROOT, timeout=60)


@pytest.fixture
def station_toml(home):
    from fleet import patch_toml
    toml = home / "stations" / "xa-1" / "station.toml"
    patch_toml(toml, "station", "selftest_at", "")
    return toml


def _patched(toml, section, key, value):
    from fleet import patch_toml
    patch_toml(toml, section, key, value)
    return toml


@pytest.mark.parametrize("fault, words", [
    ("no_key", "loaxa agent keygen"),
    ("device", "[audio] device"),
    ("tls_cert", "[broker] tls_cert"),
    ("gpio", "[hardware] backend"),
    ("data_dir", "[station] data_dir"),
])
def test_agent_check_catches_what_agent_run_would_crash_on(station_toml, fault, words):
    """Each of these passed `agent check` and then crashed `agent run` with a traceback (every
    2 s under Restart=always). Now `check` names it and `run` says it in one line, exit 2."""
    if fault != "no_key":
        assert _agent("keygen", "--config", station_toml).returncode == 0
    if fault == "device":
        pass  # the enrolment folder names "default": no such device on this machine
    else:
        (station_toml.parent / "sink.conf").write_text(
            'pcm.ok { type null }\n')
        _patched(station_toml, "audio", "alsa_config", "sink.conf")
        _patched(station_toml, "audio", "device", "ok")
    if fault == "tls_cert":
        _patched(station_toml, "broker", "tls_ca", "ca.crt")
        (station_toml.parent / "ca.crt").write_text("x")
        _patched(station_toml, "broker", "tls_cert", "station.crt")
        _patched(station_toml, "broker", "tls_key", "station.tls.key")
    if fault == "gpio":
        _patched(station_toml, "hardware", "backend", "rpigpio")
    if fault == "data_dir":
        (station_toml.parent / "blocked").write_text("a file where the data folder goes")
        _patched(station_toml, "station", "data_dir", "blocked")
    check = _agent("check", "--config", station_toml)
    assert check.returncode == 2 and words in check.stderr, check.stderr
    assert "Traceback" not in check.stderr
    if fault == "device":  # run does not open the device: it reports `audio_device` instead
        return
    run_ = _agent("run", "--config", station_toml)
    assert run_.returncode == 2, run_.stderr[-2000:]
    assert "Traceback" not in run_.stderr and words in run_.stderr, run_.stderr[-2000:]
    assert "cannot start" in run_.stderr


def test_agent_check_judges_permissions_as_the_service_user(station_toml):
    """A key or data folder the service user cannot read: checked for `--user`, by the
    permission bits, even when `check` itself runs as root."""
    assert _agent("keygen", "--config", station_toml).returncode == 0
    (station_toml.parent / "sink.conf").write_text('pcm.ok { type null }\n')
    _patched(station_toml, "audio", "alsa_config", "sink.conf")
    _patched(station_toml, "audio", "device", "ok")
    assert _agent("check", "--config", station_toml).returncode == 0
    bad = _agent("check", "--config", station_toml, "--user", "nobody")
    assert bad.returncode == 2
    assert "[keys] station_key" in bad.stderr and "nobody" in bad.stderr
    assert "[station] data_dir" in bad.stderr
    assert "Traceback" not in bad.stderr
