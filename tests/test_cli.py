"""`loaxa` as a user runs it: clear errors, exit 2, nothing half-written."""
import json
import subprocess
import sys

import pytest

from deploy.cli import main
from station_agent import config as station_config


def run(*args):
    return main([str(a) for a in args])


@pytest.fixture
def home(tmp_path):
    h = tmp_path / "hub"
    assert run("hub", "--home", h, "init", "--broker-port", "18830",
               "--quiet-hours", "22:00-05:00") == 0
    return h


def test_hub_commands_end_to_end(home, tmp_path, capsys):
    assert run("hub", "--home", home, "station", "add", "xa-1", "--name", "Đài xã Một",
               "--group", "huyen-a") == 0
    assert run("hub", "--home", home, "announce", "--text", "Xin chào bà con.", "--tts",
               "espeak-ng", "--at", "25/12/2030 06:30", "--every", "daily", "--until",
               "31/12/2030", "--priority", "ưu tiên", "--to", "group:huyen-a") == 0
    out = capsys.readouterr().out
    assert "25/12/2030 06:30:00 (ưu tiên) → group:huyen-a" in out
    assert run("hub", "--home", home, "status", "--json") == 0
    view = json.loads(capsys.readouterr().out)
    assert view["hub"]["serving"] is False
    rows = view["stations"]
    assert rows[0]["id"] == "xa-1" and rows[0]["online"] is False
    assert rows[0]["presence"] == "unknown" and rows[0]["key"] is False
    cfg = station_config.load(home / "stations" / "xa-1" / "station.toml")
    assert cfg.station_id == "xa-1" and cfg.groups == ("huyen-a",)


def test_the_station_makes_its_own_key_and_the_hub_keeps_only_the_public_half(home, capsys):
    from hub.store import HubStore
    assert run("hub", "--home", home, "station", "add", "xa-k", "--name", "Đài xã K") == 0
    folder = home / "stations" / "xa-k"
    assert not (folder / "station.key").exists()  # the hub never made or kept it
    assert "sudo loaxa agent enrol xa-k.tar.gz" in capsys.readouterr().out
    assert run("agent", "keygen", "--config", folder / "station.toml") == 0
    out = capsys.readouterr().out
    public = out.split("public key: ")[1].split()[0]
    assert (folder / "station.key").stat().st_mode & 0o077 == 0
    assert run("agent", "keygen", "--config", folder / "station.toml") == 0  # idempotent
    assert public in capsys.readouterr().out
    s = HubStore(home / "hub.db")
    assert s.station("xa-k")["public_key"] is None
    s.close()
    assert run("hub", "--home", home, "station", "key", "xa-k", "not-a-key") == 2
    assert run("hub", "station", "key", "--home", home, "xa-k", public) == 0
    s = HubStore(home / "hub.db")
    assert s.station("xa-k")["public_key"] == public
    assert b"PRIVATE" not in (home / "hub.db").read_bytes()
    s.close()
    assert not list(home.rglob("*.key")) == [] and all(
        p.name in ("hub.key", "release.key") or p.parent == folder for p in home.rglob("*.key"))


@pytest.mark.parametrize("args, message", [
    (["announce", "--content", "ffff", "--at", "now"], "not found"),
    (["announce", "--text", "x", "--tts", "espeak-ng", "--at", "32/13/2030 25:00"], "bad time"),
    (["announce", "--text", "x", "--tts", "espeak-ng", "--to", "group:nope"], "unknown target"),
    (["announce", "--text", "x", "--tts", "espeak-ng", "--priority", "gấp"], "unknown priority"),
    (["announce", "--text", "x", "--tts", "espeak-ng", "--every", "FREQ=NEVER"], "RRULE"),
    (["station", "add", "bad/id", "--name", "x"], "station"),
    (["announce", "--text", "x", "--tts", "espeak-ng", "--stream", "http://vov.vn/live"],
     "needs a duration"),
    (["announce", "--text", "x", "--tts", "espeak-ng", "--stream", "ftp://x", "--for", "5m"],
     "http(s) URL"),
    (["content", "add", "/no/such.wav"], "no such file"),
])
def test_user_errors_are_clear_and_change_nothing(home, capsys, args, message):
    from hub.store import HubStore
    assert run("hub", "--home", home, *args) == 2
    assert message in capsys.readouterr().err
    s = HubStore(home / "hub.db")
    assert s.items() == [] and s.stations() == []
    assert s.q("SELECT * FROM content") == []  # nothing synthesised or stored either
    s.close()


def test_corrupt_upload_names_the_file(home, tmp_path, capsys):
    bad = tmp_path / "ban-tin.mp3"
    bad.write_bytes(b"ID3" + b"\x00garbage" * 50)
    assert run("hub", "--home", home, "content", "add", bad) == 2
    assert "ban-tin.mp3" in capsys.readouterr().err


def test_hub_init_refuses_to_overwrite(home, capsys):
    assert run("hub", "--home", home, "init") == 2
    assert "already holds a hub" in capsys.readouterr().err


def test_no_hub_yet(tmp_path, capsys):
    assert run("hub", "--home", tmp_path / "none", "status") == 2
    assert "loaxa hub init" in capsys.readouterr().err


def test_station_config_reports_every_error_at_once(tmp_path):
    p = tmp_path / "station.toml"
    p.write_text('[station]\nid = "a/b"\nclock = "ntp"\n[broker]\nport = 70000\n'
                 '[keys]\nhub_public = "xyz"\n[hardware]\nbackend = "arduino"\n[extra]\n')
    with pytest.raises(station_config.ConfigError) as exc:
        station_config.load(p)
    text = str(exc.value)
    for part in ("id = 'a/b'", "clock", "port 70000", "hub_public",
                 "arduino", "unknown section [extra]"):
        assert part in text


def test_console_script_runs():
    proc = subprocess.run([sys.executable, "-m", "deploy.cli", "--help"], capture_output=True,
                          text=True)
    assert proc.returncode == 0 and "hub" in proc.stdout and "demo" in proc.stdout


def test_agent_fault_and_press_commands(home, capsys):
    assert run("hub", "--home", home, "station", "add", "xa-2", "--name", "Đài xã Hai") == 0
    cfg = home / "stations" / "xa-2" / "station.toml"
    assert run("agent", "fault", "--config", cfg, "inject", "amp_dead") == 0
    assert run("agent", "fault", "--config", cfg, "inject", "mains_lost") == 0
    assert run("agent", "fault", "--config", cfg, "clear", "amp_dead") == 0
    assert run("agent", "press", "--config", cfg, "stop") == 0
    assert run("agent", "press", "--config", cfg, "stop") == 0
    capsys.readouterr()
    assert run("agent", "fault", "--config", cfg, "list") == 0
    assert "faults: mains_lost" in capsys.readouterr().out
    state = json.loads((home / "stations" / "xa-2" / "data" / "sim-faults.json").read_text())
    assert state["faults"] == ["mains_lost"] and state["presses"] == {"stop": 2}
    assert run("agent", "fault", "--config", cfg, "inject", "on_fire") == 2
    assert "unknown fault" in capsys.readouterr().err
    text = cfg.read_text().replace('backend = "simulated"', 'backend = "lgpio"')
    cfg.write_text(text)
    assert run("agent", "fault", "--config", cfg, "inject", "amp_dead") == 2
    assert "only into the simulated board" in capsys.readouterr().err


def test_alarm_ack_and_heightened_commands(home, capsys):
    from hub.store import HubStore
    assert run("hub", "--home", home, "station", "add", "xa-3", "--name", "Đài xã Ba",
               "--group", "bien") == 0
    s = HubStore(home / "hub.db")
    s.store_events("xa-3", [{"seq": 1, "kind": "alarm", "at": "2030-01-01T01:00:00.000Z",
                             "data": {"code": "health.mains", "active": True,
                                      "detail": "mains lost"}}], __import__("datetime")
                   .datetime(2030, 1, 1, 1, 1, tzinfo=__import__("datetime").timezone.utc))
    [alarm] = s.open_alarms()
    s.close()
    capsys.readouterr()
    assert run("hub", "--home", home, "alarm", "list") == 0
    out = capsys.readouterr().out
    assert f"#{alarm['id']}  xa-3  mất điện lưới  từ 01/01/2030 08:00:00" in out
    assert run("hub", "--home", home, "alarm", "ack", alarm["id"], "--by", "Trực ban Lan",
               "--note", "Đã gọi điện lực") == 0
    assert run("hub", "--home", home, "alarm", "ack", alarm["id"], "--by", "x", "--note",
               "y") == 2
    capsys.readouterr()
    assert run("hub", "--home", home, "alarm", "list") == 0
    assert "đã xác nhận bởi Trực ban Lan: Đã gọi điện lực" in capsys.readouterr().out
    assert run("hub", "--home", home, "heightened", "--to", "group:bien", "--from",
               "20/05/2030 00:00", "--until", "24/05/2030 00:00", "--reason", "Bầu cử") == 0
    assert "nhịp tim 15 s" in capsys.readouterr().out
    assert run("hub", "--home", home, "heightened", "--to", "group:bien", "--from",
               "24/05/2030 00:00", "--until", "20/05/2030 00:00", "--reason", "x") == 2


def test_hub_user_commands(home, capsys):
    """No default password: `user add` prints a generated one, to change at first login."""
    from hub import accounts, config as hubconfig
    from hub.store import HubStore
    assert run("hub", "--home", home, "user", "add", "admin", "--role", "admin",
               "--name", "Nguyễn Văn An") == 0
    out = capsys.readouterr().out
    password = out.split("one-time password: ")[1].split()[0]
    assert len(password) == 16 and "Quản trị" in out
    store = HubStore(hubconfig.load(home).db_path)
    try:
        from datetime import datetime, timezone
        u = accounts.login(store, "admin", password, ip="cli-test",
                           now=datetime.now(timezone.utc))
        assert u.must_change and u.role == "admin"
        assert run("hub", "--home", home, "user", "add", "admin", "--role", "admin") == 2
        assert "đã có" in capsys.readouterr().err
        assert run("hub", "--home", home, "user", "add", "xa", "--role", "commune") == 2
        assert "cần ít nhất một xã" in capsys.readouterr().err
        assert run("hub", "--home", home, "user", "reset", "admin") == 0
        new = capsys.readouterr().out.split("one-time password: ")[1].split()[0]
        assert new != password
        assert run("hub", "--home", home, "user", "unlock", "ai-do") == 2
        assert run("hub", "--home", home, "user", "list") == 0
        assert "admin" in capsys.readouterr().out
    finally:
        store.close()


def test_hub_bridge_issues_the_edge_brokers_certificate_and_the_acl_follows(home, capsys):
    """`loaxa hub bridge`: without a CA, a plain section saying so; with one, a certificate
    for the bridge (once), a TLS section pointing at where its files go on the edge, and an
    ACL entry for its group's stations. A wrong group or name is refused, nothing changed."""
    assert run("hub", "--home", home, "station", "add", "xa-1", "--name", "Đài xã Một",
               "--group", "huyen-a") == 0
    assert run("hub", "--home", home, "station", "add", "xa-2", "--name", "Đài xã Hai",
               "--group", "huyen-b") == 0
    capsys.readouterr()
    assert run("hub", "--home", home, "bridge", "xa", "--group", "huyen-a") == 0
    out = capsys.readouterr().out
    assert "plain TCP" in out and "bridge_certfile" not in out and "connection xa" in out
    assert run("hub", "--home", home, "pki", "init", "--host", "127.0.0.1") == 0
    capsys.readouterr()
    assert run("hub", "--home", home, "bridge", "xa", "--group", "huyen-a", "--host",
               "hub.example.vn", "--port", "8883") == 0
    out = capsys.readouterr().out
    assert "address hub.example.vn:8883" in out and "remote_clientid loaxa-bridge-xa" in out
    assert "bridge_certfile /etc/loaxa/bridge-xa.crt" in out
    assert "bridge_keyfile /etc/loaxa/bridge-xa.key" in out and "bridge_insecure false" in out
    folder = home / "pki" / "bridges" / "xa"
    cert = (folder / "bridge.crt").read_bytes()
    assert (folder / "bridge.key").stat().st_mode & 0o077 == 0
    assert run("hub", "--home", home, "bridge", "xa", "--group", "huyen-a") == 0  # again
    assert (folder / "bridge.crt").read_bytes() == cert  # issued once
    capsys.readouterr()
    assert run("hub", "--home", home, "bridge", "xa", "--group", "huyen-b") == 2
    assert run("hub", "--home", home, "bridge", "xb", "--group", "no-such-group") == 2
    assert run("hub", "--home", home, "bridge", "bad/name") == 2
    assert not (home / "pki" / "bridges" / "xb").exists()
    capsys.readouterr()
    assert run("hub", "--home", home, "acl") == 0
    acl = capsys.readouterr().out
    assert "user loaxa-bridge-xa\ntopic read loaxa/station/xa-1/bundle" in acl
    assert "topic write loaxa/station/xa-1/events" in acl
    assert "xa-2" not in acl  # another group's station: not this bridge's
