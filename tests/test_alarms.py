"""The station's alarm book and state file (station_agent/alarms.py, status_file.py) on a
real store and an injected clock: an alarm is one event per transition and survives a
restart; a restart judges held alarms again; the state file is written whole, only when it
changed, at most every EVERY_S."""
import json
from datetime import datetime, timezone

from protocol.clock import ManualClock
from station_agent.alarms import Alarms, recheck_after_restart
from station_agent.health import link as link_probe
from station_agent.status_file import EVERY_S, StatusFile
from station_agent.store import StationStore

T0 = datetime(2030, 1, 1, 1, 0, tzinfo=timezone.utc)


def _alarm_events(store):
    return [(e["data"]["code"], e["data"]["active"]) for e in store.pending_events(1000)
            if e["kind"] == "alarm"]


def test_an_alarm_is_one_event_per_transition_and_survives_a_restart(tmp_path):
    clock = ManualClock(T0)
    store = StationStore(tmp_path / "s")
    book = Alarms(store, clock)
    book.set("relay", True, "stuck")
    book.set("relay", True, "stuck again")  # already raised: nothing
    book.set("health.link", True, "down")
    assert book.held() == {"relay": "stuck", "health.link": "down"}
    assert book.worst(0) == 2  # relay: a fault; health.* are judged by the probes
    store.close()
    store = StationStore(tmp_path / "s")
    again = Alarms(store, clock)
    assert again.copy() == {"relay": "stuck", "health.link": "down"}
    again.set("relay", False)
    again.set("relay", False)
    assert again.held() == {"health.link": "down"} and again.worst(1) == 1
    assert _alarm_events(store) == [("relay", True), ("health.link", True), ("relay", False)]
    store.close()


def test_a_restart_clears_what_went_away_and_rechecks_the_rest(tmp_path):
    clock = ManualClock(T0)
    store = StationStore(tmp_path / "s")
    book = Alarms(store, clock)
    for code in ("disk_full", "audio_corrupt", "audio_device", "amplifier", "no_sound"):
        book.set(code, True, "before the restart")
    selftests = []
    recheck_after_restart(book, store=store, min_free_bytes=0,
                          device_ok=lambda: "still no device", selftest=selftests.append)
    # room again, the corrupt file refetched; the device still fails; no_sound needs a play
    assert set(book.held()) == {"audio_device", "amplifier", "no_sound"}
    assert selftests == ["re-check after restart"]
    recheck_after_restart(book, store=store, min_free_bytes=0, device_ok=lambda: None,
                          selftest=selftests.append)
    assert set(book.held()) == {"amplifier", "no_sound"}
    store.close()


def test_the_link_probe_waits_only_for_causes_that_waiting_cures():
    class Failure:
        def __init__(self, cause):
            self.cause = cause

        def __str__(self):
            return f"failure: {self.cause}"

    assert link_probe(True, None, ever_connected=True, since_start_s=1, rtt_ms=12).value == 12
    assert link_probe(False, Failure("unreachable"), ever_connected=False,
                      since_start_s=5, rtt_ms=None).status == "unknown"
    assert link_probe(False, Failure("unreachable"), ever_connected=False,
                      since_start_s=31, rtt_ms=None).status == "degraded"
    assert link_probe(False, Failure("certificate_refused"), ever_connected=False,
                      since_start_s=5, rtt_ms=None).status == "degraded"
    assert link_probe(False, Failure("lost"), ever_connected=True,
                      since_start_s=5, rtt_ms=None).status == "degraded"
    p = link_probe(True, Failure("not_authorised"), ever_connected=True, since_start_s=5,
                   rtt_ms=None)
    assert (p.status, p.value) == ("degraded", "not_authorised")


def test_the_state_file_is_written_whole_only_when_it_changed_and_not_too_often(tmp_path):
    clock = ManualClock(T0)
    path = tmp_path / "status.json"
    f = StatusFile(path, clock)
    assert f.due()
    f.write({"on_air": None})
    first = path.stat().st_mtime_ns, json.loads(path.read_text())
    assert first[1]["on_air"] is None and first[1]["at"] == "2030-01-01T01:00:00.000Z"
    assert not f.due()  # within EVERY_S of the last write
    clock.advance(EVERY_S)
    assert f.due()
    f.write({"on_air": None})  # unchanged: not written again
    assert (path.stat().st_mtime_ns, json.loads(path.read_text())) == first
    f.write({"on_air": "i1"})
    assert json.loads(path.read_text())["on_air"] == "i1"
    assert [p.name for p in tmp_path.iterdir()] == ["status.json"]  # no temporary left
