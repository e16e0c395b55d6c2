"""The hub's store and planner on a real SQLite file."""
import json
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

from hub import planner
from hub.admin import announce, init_hub, add_station
from hub import config as hubconfig
from hub.store import HubStore, migrations
from protocol.envelope import KeyRing, verify
from schedules import Priority

NOW = datetime(2030, 1, 1, 1, 0, tzinfo=timezone.utc)
SHA = "b" * 64


@pytest.fixture
def hub(tmp_path):
    signer = init_hub(tmp_path / "hub", broker_host="127.0.0.1", broker_port=1883)
    cfg = hubconfig.load(tmp_path / "hub")
    for sid, groups in (("a", ["g1"]), ("b", ["g2"])):
        add_station(cfg, sid, name=f"Xã {sid}", groups=groups, out=tmp_path / sid)
    store = HubStore(cfg.db_path)
    store.add_content(sha=SHA, data=b"x" * 10, title="t", source="s", text="", engine="upload",
                      codec="opus", duration_ms=2000, now=NOW)
    yield store, signer
    store.close()


def test_migrations_run_once(tmp_path):
    s = HubStore(tmp_path / "h.db")
    assert migrations.apply(s.db) == []  # already applied at open
    s.close()
    s = HubStore(tmp_path / "h.db")
    assert [r["name"] for r in s.q("SELECT name FROM _migrations")] == \
        ["m001_initial", "m002_live_state_and_alarms", "m003_stream_items",
         "m004_health_and_heightened", "m005_live_mic", "m006_commands", "m007_console", "m008_play_days", "m009_certificates", "m010_key_rotation", "m011_releases",
         "m012_shared_programmes", "m013_playbacks_by_station_only", "m014_station_audio",
         "m015_refusals_by_time"]
    s.close()


def test_events_are_stored_once_per_station_and_sequence(hub):
    store, _ = hub
    ev = [{"seq": 1, "kind": "playback", "at": "2030-01-01T01:00:00.000Z",
           "data": {"occurrence": "i@x", "outcome": "played"}},
          {"seq": 2, "kind": "refused", "at": "2030-01-01T01:00:01.000Z", "data": {}}]
    assert [e["seq"] for e in store.store_events("a", ev, NOW)] == [1, 2]
    assert store.store_events("a", ev, NOW) == []  # a resend stores nothing new
    assert [e["seq"] for e in store.store_events("b", ev[:1], NOW)] == [1]
    assert len(store.q("SELECT * FROM events")) == 3
    assert len(store.q("SELECT * FROM playbacks WHERE station_id = 'a'")) == 1


def test_planner_versions_only_on_change_and_targets_groups(hub):
    store, signer = hub
    ring = KeyRing()
    ring.add(signer.public, "hub")
    assert planner.plan_station(store, signer, "a", NOW, None) is not None  # empty v1
    assert planner.plan_station(store, signer, "a", NOW, None) is None       # unchanged
    content = store.content(SHA)
    announce(store, content=content, when=NOW + timedelta(hours=1), priority=Priority.UU_TIEN,
             target="group:g1", every=None, now=NOW)
    raw = planner.plan_station(store, signer, "a", NOW, None)
    env = verify(raw, ring, now=NOW, kind="bundle")
    assert env.seq == 2 and env.body["version"] == 2 and env.body["station"] == "a"
    assert [i["priority"] for i in env.body["items"]] == [2]
    assert list(env.body["content"]) == [SHA]
    b = verify(planner.plan_station(store, signer, "b", NOW, None), ring, now=NOW)
    assert b.body["items"] == []  # b is not in g1
    # re-signed before it expires, even without a change
    later = NOW + planner.BUNDLE_TTL - timedelta(days=6)
    assert verify(planner.plan_station(store, signer, "a", later, None), ring, now=later).seq == 3


def test_past_one_off_items_leave_the_bundle(hub):
    store, signer = hub
    announce(store, content=store.content(SHA), when=NOW, priority=Priority.THONG_THUONG,
             target="all", every=None, now=NOW)
    assert len(planner.programme(store, "a", NOW, None)["items"]) == 1
    assert planner.programme(store, "a", NOW + timedelta(days=2), None)["items"] == []


def test_late_events_are_historical_and_alarms_keep_their_history(hub):
    store, _ = hub
    sent = NOW + timedelta(hours=3)
    ev = [{"seq": 1, "kind": "alarm", "at": "2030-01-01T01:00:00.000Z",
           "data": {"code": "clock", "active": True, "detail": "jumped"}},
          {"seq": 2, "kind": "alarm", "at": "2030-01-01T04:00:00.000Z",
           "data": {"code": "clock", "active": False, "detail": ""}}]
    new = store.store_events("a", ev, sent, sent_at=sent)
    assert [e["historical"] for e in new] == [1, 0]
    [row] = store.q("SELECT * FROM alarms")
    assert row["code"] == "clock" and row["cleared_at"] == "2030-01-01T04:00:00.000Z"
    assert store.open_alarms("a") == []


def test_a_relay_item_carries_its_stream_and_duration(hub):
    store, signer = hub
    announce(store, content=store.content(SHA), when=NOW + timedelta(hours=1),
             priority=Priority.UU_TIEN, target="all", every="daily", now=NOW,
             stream="https://radio.example/vov1", duration_ms=30 * 60_000)
    [item] = planner.programme(store, "a", NOW, None)["items"]
    assert item["stream"] == "https://radio.example/vov1"
    assert item["duration_ms"] == 1_800_000 and item["content"] == SHA


def test_heartbeats_are_kept_in_one_commit_per_turn_newest_first_and_bad_ones_refused(tmp_path):
    """Heartbeats are state: the hub keeps the newest per station and writes a turn's worth
    in one transaction; a forged one among them is refused and counted, and changes nothing."""
    from hub.link import HubLink
    from protocol.clock import SystemClock
    from protocol.envelope import Signer, public_to_text, seal
    from protocol.mqtt import BrokerConfig, Inbound
    from protocol.topics import Topics
    store = HubStore(tmp_path / "h.db")
    keys = {sid: Signer.generate(f"station:{sid}") for sid in ("s1", "s2")}
    for sid, k in keys.items():
        store.db.execute("INSERT INTO stations VALUES (?, ?, ?, ?)",
                         [sid, sid, public_to_text(k.public), "2030-01-01T00:00:00Z"])
    hub = HubLink(store=store, signer=Signer.generate("hub"), topics=Topics(),
                  broker=BrokerConfig(port=1), clock=SystemClock())
    t = Topics()

    def beat(sid, status, signer=None):
        raw = seal("heartbeat", {"status": status, "probes": {"disk": {"status": status}},
                                 "interval_s": 60}, signer=signer or keys[sid], seq=0,
                   now=datetime.now(timezone.utc), ttl=timedelta(minutes=10))
        return Inbound(t.health(sid), raw, False)
    statements = []
    store.db.conn.set_trace_callback(statements.append)
    for m in (beat("s1", "ok"), beat("s2", "warning"), beat("s1", "fault"),
              beat("s2", "ok", signer=Signer.generate("station:s2"))):  # forged: not s2's key
        hub.handle(m)
    assert store.state("s1") is None  # nothing written before the turn ends
    assert hub.flush() == 2
    commits = [s for s in statements if s.strip().upper() == "COMMIT"]
    assert len(commits) == 2  # the refusal's record, and the one batch of heartbeats
    assert store.state("s1")["health"] == "fault" and store.state("s2")["health"] == "warning"
    assert hub.counters.get("refused.unknown_key") == 1
    assert store.q("SELECT reason FROM refusals") == [{"reason": "unknown_key"}]
    store.close()


def test_a_full_turn_handles_every_message_it_takes(tmp_path):
    """The hub handles at most TURN_MESSAGES a turn. It took one more from the inbox and
    dropped it: in a reconnect storm one report in every 500 messages vanished and waited
    for its station's resend (bench/reconnect_storm.py). Every message is handled once."""
    from hub.link import TURN_MESSAGES, HubLink
    from protocol.clock import SystemClock
    from protocol.envelope import Signer
    from protocol.mqtt import BrokerConfig, Inbound
    from protocol.topics import Topics
    store = HubStore(tmp_path / "h.db")
    hub = HubLink(store=store, signer=Signer.generate("hub"), topics=Topics(),
                  broker=BrokerConfig(port=1), clock=SystemClock())
    handled = []
    hub.handle = handled.append  # what the turn hands over, in order
    sent = [Inbound(f"loaxa/station/s{i}/events", b"", False)
            for i in range(2 * TURN_MESSAGES + 3)]
    for m in sent:
        hub.link.inbox.put(m)
    hub.step()
    assert handled == sent[:TURN_MESSAGES] and hub.link.inbox.qsize() == len(sent) - TURN_MESSAGES
    hub.step()
    hub.step()
    assert handled == sent and hub.link.inbox.empty()
    store.close()


@pytest.mark.parametrize("at, day", [
    ("2030-03-04T16:59:59.000Z", "2030-03-04"),   # 23:59:59 in Hà Nội
    ("2030-03-04T17:00:00.000Z", "2030-03-05"),   # midnight
    ("2030-03-04T23:30:00+07:00", "2030-03-04"),
    ("2030-03-04T22:45:00+05:30", "2030-03-05"),  # 00:15 in Hà Nội: not truncated to 22:00
    ("2030-03-04T10:00:00", None),                # no offset: no day
    ("không phải giờ", None),
])
def test_a_play_belongs_to_its_local_day(at, day):
    from hub.store import play_day
    assert play_day(at, None) == day


def test_a_birth_behind_gets_its_bundle_again_only_if_the_broker_may_not_hold_it(hub):
    """A station back from an outage sends its birth before it has read the retained bundle
    the broker hands it on subscribing: the hub sent the bundle again as well, so every
    returning station got its programme twice. Now only when this connection of the hub has
    not published it (a new connection: the broker may have restarted without it)."""
    from hub.link import _CONNECTED, HubLink
    from protocol.clock import SystemClock
    from protocol.envelope import Signer, public_to_text, seal
    from protocol.mqtt import BrokerConfig, Inbound
    from protocol.topics import Topics
    store, signer = hub
    key = Signer.generate("station:a")
    with store.lock:
        store.db.execute("UPDATE stations SET public_key = ? WHERE id = 'a'",
                         [public_to_text(key.public)])
        store.db.conn.commit()
    announce(store, content=store.content(SHA), when=NOW + timedelta(hours=1),
             priority=Priority.THONG_THUONG, target="all", every=None, now=NOW)
    link = HubLink(store=store, signer=signer, topics=Topics(), broker=BrokerConfig(port=1),
                   clock=SystemClock())
    sent = []
    link.link.publish = lambda topic, payload, **kw: sent.append(topic) or object()
    assert link.replan_if_changed(force=True) == 2  # both stations' bundles, retained
    bdseq = [10]

    def birth() -> Inbound:
        bdseq[0] += 1
        return Inbound(Topics().state("a"), seal(
            "state", {"online": True, "bdseq": bdseq[0], "held_version": 0,
                      "active_version": 0}, signer=key, seq=bdseq[0],
            now=datetime.now(timezone.utc), ttl=timedelta(minutes=5)), True)
    sent.clear()
    link.handle(birth())
    link._commit_reports()
    assert sent == [] and link.counters.get("reconciled.retained") == 1
    assert store.state("a")["online"] == 1  # the birth itself is kept
    link.handle(_CONNECTED)  # a new connection of the hub's own
    sent.clear()
    link.handle(birth())
    link._commit_reports()
    assert Topics().bundle("a") in sent and link.counters.get("reconciled") == 1


def test_an_item_added_while_the_hub_plans_is_planned_at_the_next_step(hub, monkeypatch):
    """The hub read the data version again after planning, so an item another connection (the
    web, the CLI) committed after the planner had read the items was taken as planned: its
    bundle waited REPLAN_EVERY_S (30 s; a test waiting 30 s for it failed under load)."""
    from hub import link as hublink
    from protocol.clock import SystemClock
    from protocol.mqtt import BrokerConfig
    from protocol.topics import Topics
    store, signer = hub
    path = store.db.execute("PRAGMA database_list").fetchone()[2]
    link = hublink.HubLink(store=store, signer=signer, topics=Topics(),
                           broker=BrokerConfig(port=1), clock=SystemClock())
    link.link.publish = lambda topic, payload, **kw: object()
    assert link.replan_if_changed() == 2  # both stations' first bundles
    other = HubStore(Path(path))
    real = hublink.planner.replan

    def planned_then_someone_commits(*args, **kw):
        yield from real(*args, **kw)  # the planner has read the items
        announce(other, content=other.content(SHA), when=NOW + timedelta(hours=2),
                 priority=Priority.THONG_THUONG, target="all", every=None, now=NOW)
    monkeypatch.setattr(hublink.planner, "replan", planned_then_someone_commits)
    announce(other, content=other.content(SHA), when=NOW + timedelta(hours=1),
             priority=Priority.THONG_THUONG, target="all", every=None, now=NOW)
    assert link.replan_if_changed() == 2  # the first item; the second lands meanwhile
    monkeypatch.setattr(hublink.planner, "replan", real)
    assert link.replan_if_changed() == 2  # the item committed meanwhile: planned now
    assert len(json.loads(store.latest_bundle("a")["raw"])["body"]["items"]) == 2
    other.close()


def test_a_commands_audio_goes_only_where_the_stations_reports_say_it_is_lacking(hub, tmp_path):
    """A khẩn cấp alert used to push its file behind the command to every target, also to
    stations that held it: 2,000 copies crossed the links, and mosquitto delivered the
    command itself later. The hub now knows what each station holds from its
    ``audio.stored`` and ``audio.dropped`` events."""
    from hub.admin import issue_command, play_body
    from hub.link import HubLink
    from protocol.clock import SystemClock
    from protocol.mqtt import BrokerConfig
    from protocol.topics import Topics
    store, signer = hub
    cfg = hubconfig.load(tmp_path / "hub")
    for sid in "cdefgh":
        store.add_station(sid, f"Xã {sid}", None, [], NOW)
    link = HubLink(store=store, signer=signer, topics=Topics(), broker=BrokerConfig(port=1),
                   clock=SystemClock())
    sent: list[str] = []
    link.link.publish = lambda topic, payload, **kw: sent.append(topic) or object()
    link.link.connected.set()
    audio = {Topics().target_audio(t) for t in ("all", *(f"station:{s}" for s in "abcdefgh"))}

    def alert() -> list[str]:
        sent.clear()
        issue_command(cfg, store, "play", "all", play_body(store.content(SHA),
                      priority=Priority.KHAN_CAP), now=datetime.now(timezone.utc))
        assert link.publish_commands() == 1
        assert sent[0] == Topics().target_command("all")
        return [t for t in sent if t in audio]

    assert alert() == [Topics().target_audio("all")]  # nobody is known to hold it: once, shared
    seq = iter(range(1, 100))

    def event(sid: str, kind: str) -> None:
        store.store_events(sid, [{"seq": next(seq), "kind": kind, "at": "2030-01-01T01:00:00Z",
                                  "data": {"sha": SHA, "size": 10}}], NOW)
    for sid in "abcdefgh":
        event(sid, "audio.stored")
    assert alert() == [] and link.counters["audio.push_not_needed"] == 1  # all hold it
    event("c", "audio.dropped")  # changed on disk: dropped
    assert alert() == [Topics().target_audio("station:c")]  # only where it is lacking
    for sid in "defg":
        event(sid, "audio.dropped")
    assert alert() == [Topics().target_audio("all")]  # most lack it: once for all again
    store.set_station_key("a", "new key")  # a new device: what the old one held is unknown
    assert store.lacking("all", SHA) == ["a", "c", "d", "e", "f", "g"]
    assert store.lacking("group:g2", SHA) == []  # b


def test_a_command_for_no_station_or_no_target_is_refused_and_issues_nothing(hub, tmp_path):
    from hub.admin import HubError, issue_command
    store, _ = hub
    cfg = hubconfig.load(tmp_path / "hub")
    for target in ("group:khong-co", "station:zz", "tinh", "all:x"):
        with pytest.raises(HubError):
            issue_command(cfg, store, "report", target, {}, now=NOW)
    assert store.q("SELECT * FROM commands") == [] and store.q("SELECT * FROM command_targets") == []
    assert store.setting("cmdseq.group:khong-co") is None  # the sequence was not used up
    c = issue_command(cfg, store, "report", "group:g1", {}, now=NOW)
    assert [r["station_id"] for r in store.command_targets(c["id"])] == ["a"]
    assert c["seq"] == 1


def test_a_flood_of_forged_messages_is_counted_stored_sparingly_and_shown(tmp_path):
    """A station (or someone with its certificate) sends 500 forged heartbeats: each is
    refused and counted, one row per reason and station per REFUSAL_ROW_EVERY_S is stored
    (not one fsync each), a good heartbeat still counts, and `hub status` shows the day's
    refusals and the counts since the hub started, in Vietnamese; old rows are pruned."""
    from hub.admin import hub_view
    from hub.display import render_hub
    from hub.link import REFUSAL_ROW_EVERY_S, REFUSALS_KEPT, HubLink
    from protocol.clock import ManualClock
    from protocol.envelope import Signer, public_to_text, seal
    from protocol.mqtt import BrokerConfig, Inbound
    from protocol.topics import Topics
    clock = ManualClock(datetime(2030, 5, 1, 3, 0, tzinfo=timezone.utc))
    store = HubStore(tmp_path / "h.db")
    key, forger = Signer.generate("station:s1"), Signer.generate("station:s1")
    store.db.execute("INSERT INTO stations VALUES (?, ?, ?, ?)",
                     ["s1", "s1", public_to_text(key.public), "2030-01-01T00:00:00Z"])
    hub = HubLink(store=store, signer=Signer.generate("hub"), topics=Topics(),
                  broker=BrokerConfig(port=1), clock=clock)

    def beat(signer):
        return Inbound(Topics().health("s1"), seal(
            "heartbeat", {"status": "ok", "probes": {}, "interval_s": 60}, signer=signer,
            seq=0, now=clock.now(), ttl=timedelta(minutes=10)), False)
    for i in range(500):
        hub.handle(beat(forger))
        if i == 249:
            clock.advance(REFUSAL_ROW_EVERY_S + 1)
    hub.handle(Inbound(Topics().health("s1"), b"\xff not an envelope", False))
    hub.handle(beat(key))
    assert hub.flush() == 1 and store.state("s1")["health"] == "ok"
    assert hub.counters["refused.unknown_key"] == 500
    assert hub.counters["refused.not_stored"] == 498
    assert store.q("SELECT reason, count(*) AS n FROM refusals GROUP BY reason "
                   "ORDER BY reason") == [{"reason": "malformed", "n": 1},
                                          {"reason": "unknown_key", "n": 2}]
    hub.watch()  # what `hub serve` writes every WATCH_EVERY_S
    text = render_hub(hub_view(store, clock.now()))
    assert "Tin bị từ chối trong 24 giờ qua" in text
    assert "khóa lạ 2 (1 trạm, gần nhất 01/05/2030 10:00:11)" in text
    assert "sai định dạng 1" in text
    assert "từ chối: khóa lạ 500" in text and "01/05/2030 10:00:00" in text
    assert "not_stored" not in text
    # a day later the summary is empty; past the keeping time the rows go
    clock.advance(86401)
    assert hub_view(store, clock.now())["refused_24h"] == []
    clock.advance(REFUSALS_KEPT.total_seconds())
    hub.watch()
    assert store.q("SELECT count(*) AS n FROM refusals")[0]["n"] == 0
    store.close()
