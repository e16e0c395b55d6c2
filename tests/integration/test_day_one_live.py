"""Issue 8 with real brokers and agents: each test is named after the failure it proves fixed."""
from __future__ import annotations

import json
import subprocess
import sys
import threading
from dataclasses import replace
from datetime import datetime, timedelta

import pytest

from conftest import ROOT, wait_for
from fleet import Fleet, patch_toml
from hub import planner
from hub.admin import hub_view
from hub.display import render_hub
from hub.link import HubLink
from hub.store import HubStore
from production_broker import ProductionBroker, assert_gets_in
from protocol import chunks
from protocol.clock import SystemClock
from protocol.envelope import Signer
from protocol.mqtt import BrokerConfig, MqttLink
from protocol.topics import Topics
from schedules import TZ, Priority
from station_agent import config as station_config
from station_agent.cli import write_faults

T = datetime(2030, 3, 2, 8, 0, tzinfo=TZ)


@pytest.fixture
def production(tmp_path):
    b = ProductionBroker(tmp_path / "prod").start()
    yield b
    b.close()


def test_debian_stock_mosquitto_loads_our_hub_conf(production):
    """`Duplicate persistence_location value` stopped a stock Debian mosquitto; now it loads,
    and a client with our CA's certificate for the hub's CN gets in over TLS."""
    assert production.proc.poll() is None
    cert = production.hub_cert()
    assert_gets_in(BrokerConfig(port=production.port, tls_ca=str(production.ca.cert),
                                tls_cert=str(cert.cert), tls_key=str(cert.key)),
                   "hub-probe", ["loaxa/station/+/state"], "loaxa/hub/state")


def _hub_link(tmp_path, broker: BrokerConfig) -> tuple[HubLink, HubStore]:
    store = HubStore(tmp_path / f"hub-{broker.port}-{id(broker)}.db")
    return HubLink(store=store, signer=Signer.generate("hub"), topics=Topics(),
                   broker=broker, clock=SystemClock()), store


@pytest.mark.parametrize("case, cause, words", [
    ("no_tls", "tls_expected", "broker đòi TLS"),
    ("other_ca", "certificate_refused", "broker từ chối chứng chỉ"),
    ("wrong_cn", "not_authorised", "không được phép (ACL của broker)"),
    ("untrusted_broker", "broker_untrusted", "chứng chỉ của broker không được tin cậy"),
    ("nobody_there", "unreachable", "không tới được broker"),
])
def test_broker_connection_failures_name_their_cause(tmp_path, production, case, cause, words):
    """A hub whose broker needs TLS logged "tls=off" and "Unspecified error" for ever. Now
    the cause is named, kept, and shown by `hub status`."""
    from deploy.broker import free_port
    p = production
    ca = str(p.ca.cert)
    if case == "no_tls":
        broker = BrokerConfig(port=p.port)
    elif case == "other_ca":
        from deploy.pki import make_ca
        stranger = p.client("loaxa-hub", ca=make_ca(tmp_path / "stranger"))
        broker = BrokerConfig(port=p.port, tls_ca=ca, tls_cert=str(stranger.cert),
                              tls_key=str(stranger.key))
    elif case == "wrong_cn":
        c = p.client("hub-of-another-name")
        broker = BrokerConfig(port=p.port, tls_ca=ca, tls_cert=str(c.cert), tls_key=str(c.key))
    elif case == "untrusted_broker":
        from deploy.pki import make_ca
        c = p.hub_cert()
        broker = BrokerConfig(port=p.port, tls_ca=str(make_ca(tmp_path / "x").cert),
                              tls_cert=str(c.cert), tls_key=str(c.key))
    else:
        broker = BrokerConfig(port=free_port())
    hub, store = _hub_link(tmp_path, broker)
    stop = threading.Event()
    serve = threading.Thread(target=hub.run, args=(stop,))
    serve.start()
    try:
        wait_for(lambda: hub.link.failure is not None and hub.link.failure.cause == cause, 20,
                 f"the cause {cause} (got {hub.link.failure})")
        hub.watch()
        view = hub_view(store, SystemClock().now())
        assert view["link_failure"]["cause"] == cause
        assert words in render_hub(view)
        assert "Unspecified error" not in view["link_failure"]["detail"]
    finally:
        stop.set()
        serve.join(10)
        store.close()


@pytest.fixture
def fleet(tmp_path, mosquitto):
    f = Fleet(tmp_path, mosquitto, ["xa-a", "xa-b"], start=T - timedelta(minutes=5),
              station={"station": {"health_every_s": 1}, "hardware": {"amp_hold_ms": 0}})
    yield f
    f.stop()


def alarm_codes(fleet, sid):
    return sorted(a["code"] for a in fleet.store.open_alarms(sid))


def test_a_station_on_a_tls_broker_without_tls_raises_a_link_alarm_naming_the_cause(
        tmp_path, production, mosquitto):
    (tmp_path / "f").mkdir()
    f = Fleet(tmp_path / "f", mosquitto, ["xa-t"], start=T,
              station={"station": {"health_every_s": 1}})
    try:
        f.route("xa-t", production.port)  # the station points at the TLS broker, no TLS
        f.start_station("xa-t")
        wait_for(lambda: f.status("xa-t").get("link_failure"), 20, "the station to see why")
        assert f.status("xa-t")["link_failure"]["cause"] == "tls_expected"
        # a definite cause is an alarm at once (an unreachable broker gets a grace at start)
        wait_for(lambda: "health.link" in f.status("xa-t").get("alarms", {}), 20, "the alarm")
        assert "TLS" in f.status("xa-t")["alarms"]["health.link"]
    finally:
        f.stop()


def test_an_agent_start_raises_no_link_alarm_and_shows_no_unexplained_degradation(fleet):
    fleet.start()
    for sid in fleet.ids:
        wait_for(lambda: (fleet.store.state(sid) or {}).get("online") == 1, 20, f"{sid} online")
    fleet.pass_time(T - timedelta(minutes=4))  # health samples go by
    for sid in fleet.ids:
        wait_for(lambda: fleet.status(sid).get("probes", {}).get("link"), 20, "a link reading")
        wait_for(lambda: fleet.status(sid).get("outbox") == 0, 20, "reports delivered")
        wait_for(lambda: (fleet.store.state(sid) or {}).get("outbox") == 0, 20, "hub in step")
        st = fleet.status(sid)
        assert st["health"] == "ok", st  # nothing degraded that no alarm explains
        events = fleet.hub_events(sid, "alarm")
        assert not [e for e in events if e["data"]["code"] == "health.link"], events
        assert alarm_codes(fleet, sid) == []
        # "Chờ gửi" at the hub agrees with the station's own outbox
        assert fleet.store.state(sid)["outbox"] == st["outbox"] == 0


def test_an_alarm_held_over_a_restart_is_cleared_when_its_condition_is_gone(fleet):
    fleet.start()
    sid = "xa-a"
    data = fleet.station_dir(sid) / "data"
    write_faults(data, ["mains_lost"])
    wait_for(lambda: "health.mains" in alarm_codes(fleet, sid), 30, "the mains alarm")
    fleet.procs[sid].terminate()
    fleet.procs[sid].wait(10)
    write_faults(data, [])  # power came back while the agent was down
    fleet.start_station(sid)
    wait_for(lambda: "health.mains" not in alarm_codes(fleet, sid), 30,
             f"the alarm cleared after the restart\n{fleet.log(sid)[-1500:]}")
    assert fleet.status(sid)["alarms"] == {}


def test_a_station_down_longer_than_the_grace_is_an_alarm_cleared_when_it_returns(fleet, capsys):
    fleet.start()
    fleet.hub.offline_alarm_s = 60
    sid = "xa-b"
    wait_for(lambda: (fleet.store.state(sid) or {}).get("online") == 1, 20, "online")
    fleet.procs[sid].kill()
    fleet.procs[sid].wait()
    wait_for(lambda: fleet.store.state(sid)["online"] == 0, 20, "offline at the hub")
    fleet.pass_time(T - timedelta(minutes=4, seconds=30))  # 30 s: inside the grace
    fleet.hub.watch()
    assert "offline" not in alarm_codes(fleet, sid)
    fleet.pass_time(T - timedelta(minutes=3))  # past the grace
    wait_for(lambda: "offline" in alarm_codes(fleet, sid), 20, "the offline alarm")
    from deploy.cli import main
    assert main(["hub", "--home", str(fleet.home), "alarm", "list"]) == 0
    assert "xa-b  trạm mất kết nối" in capsys.readouterr().out
    assert alarm_codes(fleet, "xa-a") == []
    fleet.start_station(sid)
    wait_for(lambda: "offline" not in alarm_codes(fleet, sid), 30, "cleared on return")


def test_the_live_microphone_shows_at_the_hub_and_khan_cap_takes_the_air_from_it(fleet):
    sid = "xa-a"
    fleet.schedule(fleet.content("Bão số ba đổ bộ, bà con sơ tán ngay."), T,
                   priority=Priority.KHAN_CAP, target=f"station:{sid}")
    fleet.start()
    fleet.wait_active(1, ids=[sid])
    data = fleet.station_dir(sid) / "data"
    write_faults(data, [], press=["live_mic"])
    wait_for(lambda: fleet.store.state(sid).get("live_mic") == 1, 20, "the mic at the hub")
    from hub.admin import status_rows
    row = [r for r in status_rows(fleet.store) if r["id"] == sid][0]
    assert row["live_mic"] is True
    # `loaxa agent status` (what the commune operator reads) says what comes next
    out = subprocess.run([sys.executable, "-m", "deploy.cli", "agent", "status", "--config",
                          str(fleet.station_dir(sid) / "station.toml")], capture_output=True,
                         text=True, cwd=ROOT).stdout
    assert "Micro trực tiếp: ĐANG MỞ" in out and "Sắp phát: Bão số ba" in out, out
    fleet.pass_time(T)
    wait_for(lambda: fleet.playbacks(sid), 30, "the khẩn cấp item to play")
    mic = [e["data"] for e in fleet.hub_events(sid, "live_mic")]
    assert mic[-1]["how"] == "preempted" and mic[-1]["by"].startswith(
        fleet.playbacks(sid)[0]["item_id"])
    wait_for(lambda: fleet.playbacks(sid)[0]["outcome"] == "played", 30, "played to the end")
    wait_for(lambda: fleet.store.state(sid).get("live_mic") == 0, 20, "mic no longer live")


def test_chunks_are_bound_to_the_signed_size_and_hash(fleet):
    """Anyone able to publish on a station's audio topic could fill its disk: a chunk whose
    total is not the size the signed bundle states is refused and not stored."""
    sid = "xa-a"
    c = fleet.content("Thông báo về lịch tiêm chủng.")
    fleet.schedule(c, T + timedelta(hours=1), target=f"station:{sid}")
    # the bundle reaches the station, but no hub serves its audio yet
    raw = planner.plan_station(fleet.store, fleet.signer, sid, fleet.clock.now(), None)
    attacker = MqttLink(client_id="attacker", broker=fleet.cfg.broker, subscriptions=[])
    attacker.start()
    try:
        assert attacker.wait_connected(10)
        assert attacker.publish_wait(Topics().bundle(sid), raw, retain=True)
        fleet.start_station(sid)
        wait_for(lambda: fleet.status(sid).get("pending_version") == 1, 20, "pending")
        for total in (c["size"] * 1000, 2**40):
            forged = chunks.encode(c["sha"], 0, total, b"\0" * chunks.CHUNK_SIZE)
            assert attacker.publish_wait(Topics().audio(sid), forged)
        wait_for(lambda: fleet.status(sid).get("counters", {}).get("refused.bad_audio") == 2,
                 20, "both refused")
        part = fleet.station_dir(sid) / "data" / "audio" / f"{c['sha']}.part"
        assert not part.exists() or part.stat().st_size == 0
    finally:
        attacker.stop()
    fleet.start_hub()  # the real audio still arrives, hash-checked, and the bundle activates
    fleet.wait_active(1, ids=[sid])
    refused = [e["data"] for e in fleet.hub_events(sid, "refused")]
    assert [r["reason"] for r in refused] == ["bad_audio"] and refused[0]["count"] >= 1


def test_an_ack_names_its_station_and_is_refused_elsewhere(fleet):
    """Station A's ack replayed to station B deleted B's unsent events (only the ACL stood in
    the way). The hub's acks name their station; B refuses one that names A."""
    from protocol.envelope import seal
    fleet.start()
    seen: list[dict] = []
    spy = MqttLink(client_id="spy", broker=fleet.cfg.broker, subscriptions=[Topics().ack("xa-a")])
    spy.start()
    assert spy.wait_connected(10)

    def an_ack_for_a() -> bool:
        while not spy.inbox.empty():
            seen.append(json.loads(spy.inbox.get().payload))
        return any(m["kind"] == "ack" for m in seen)
    write_faults(fleet.station_dir("xa-a") / "data", [], press=["stop"])  # A reports, is acked
    wait_for(an_ack_for_a, 20, "an ack for A")
    assert next(m for m in seen if m["kind"] == "ack")["body"]["station"] == "xa-a"
    fleet.stop_hub()  # B's next events stay in its outbox
    write_faults(fleet.station_dir("xa-b") / "data", [], press=["stop", "stop"])
    wait_for(lambda: fleet.status("xa-b").get("outbox", 0) >= 4, 20, "B's events waiting")
    before = fleet.station_db("xa-b", "SELECT seq FROM outbox ORDER BY seq")
    # what the hub signs for A, naming seqs that B holds unsent
    replayed = seal("ack", {"station": "xa-a", "seqs": [r[0] for r in before]},
                    signer=fleet.signer, seq=0, now=fleet.clock.now(), ttl=timedelta(days=1))
    assert spy.publish_wait(Topics().ack("xa-b"), replayed)
    wait_for(lambda: fleet.status("xa-b").get("counters", {}).get("refused.wrong_station"), 20,
             "B refuses A's ack")
    after = fleet.station_db("xa-b", "SELECT seq FROM outbox WHERE seq <= ? ORDER BY seq",
                             [before[-1][0]])
    assert after == before  # nothing of B's was deleted
    spy.stop()


def test_paho_thread_never_touches_the_station_store(fleet, mosquitto):
    """An SQLite error on paho's network thread (it wrote next_bdseq while arming the will)
    killed the link for good. Every statement now runs on the agent's own thread, across
    reconnects."""
    from station_agent.agent import Agent
    sid = "xa-a"
    cfg = station_config.load(fleet.station_dir(sid) / "station.toml")
    cfg = replace(cfg, clock="system")
    agent = Agent(cfg)
    threads: set[str] = set()
    agent.store.db.conn.set_trace_callback(lambda _: threads.add(threading.current_thread().name))
    stop = threading.Event()
    owner = threading.Thread(target=agent.run, args=(stop,), name="agent-owner")
    owner.start()
    try:
        assert agent.link.wait_connected(10)
        first = agent.link.bdseq
        mosquitto.stop()
        wait_for(lambda: not agent.link.connected.is_set(), 10, "the link to drop")
        mosquitto.start()
        wait_for(lambda: agent.link.connected.is_set(), 30, "the link back")
        assert agent.link.bdseq > first
    finally:
        stop.set()
        owner.join(20)
    assert threads == {"agent-owner"}, threads
