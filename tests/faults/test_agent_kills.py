"""Fault 2: the agent killed with SIGKILL at random points, 30 times: mid-download,
mid-playback, mid-commit. Each time it restarts, its database opens clean, an interrupted
playback is recorded once with its true outcome, and no audio plays twice."""
import random
import re
import signal
import sqlite3
import time
from collections import Counter
from datetime import datetime, timedelta

from conftest import wait_for
from fleet import Fleet
from hub.admin import announce
from schedules import TZ, Priority

T = datetime(2030, 3, 2, 8, 0, tzinfo=TZ)
SID = "xa-a"
KILLS = 30
EVERY_S = 3
COUNT = 60


def test_thirty_sigkills_lose_and_repeat_nothing(tmp_path, mosquitto, figures):
    rnd = random.Random(20301)
    fleet = Fleet(tmp_path, mosquitto, [SID], start=T - timedelta(seconds=8),
                  station={"station": {"report_batch": 5}})
    try:
        short = fleet.content("Xin chào bà con.")
        announce(fleet.store, content=short, when=T, priority=Priority.THONG_THUONG,
                 target="all", every=f"FREQ=SECONDLY;INTERVAL={EVERY_S};COUNT={COUNT}",
                 late_start_s=2, now=fleet.clock.now())
        fleet.start()
        fleet.wait_active(1)
        modes = Counter()
        for i in range(KILLS):
            proc = fleet.procs[SID]
            if i % 10 == 5:  # mid-download: a new programme, killed while its audio arrives
                extra = fleet.content(f"Thông báo số {i}: " + "nội dung dài. " * 30)
                fleet.schedule(extra, fleet.clock.now() + timedelta(hours=1))
                wait_for(lambda: any((fleet.station_dir(SID) / "data" / "audio").glob("*.part"))
                         or fleet.status(SID).get("audio_missing") == 0, 10, "download")
                modes["download"] += 1
            elif i % 3 == 0:  # mid-playback
                wait_for(lambda: fleet.status(SID).get("pid") == proc.pid
                         and fleet.status(SID).get("playing"), 15, "a playback")
                time.sleep(rnd.uniform(0.0, 0.8))  # a random point within the playback
                modes["playback"] += 1
            else:  # anywhere: start-up, recovery, commits, idle
                time.sleep(rnd.uniform(0.05, 2.5))
                modes["random"] += 1
            proc.send_signal(signal.SIGKILL)
            proc.wait()
            fleet.start_station(SID)
        # left alone, the last process plays normally again
        wait_for(lambda: ("played",) in fleet.station_db(SID, "SELECT outcome FROM plays"),
                 20, "a normal playback after the kills")
        # the rest of the programme goes by; the last process runs to the end cleanly
        fleet.pass_time(T + timedelta(seconds=EVERY_S * COUNT + 10))
        # (the outbox is read from the station's database, in the same read as the plays: the
        # status file is rewritten every 0.2 s, and on a loaded machine an "outbox 0" written
        # just before the last plays were recorded let the test stop the station too early)
        wait_for(lambda: fleet.station_db(
            SID, "SELECT (SELECT count(*) FROM plays), (SELECT count(*) FROM outbox)")[0]
            == (COUNT, 0) and fleet.status(SID).get("pid") == fleet.procs[SID].pid, 60,
            "every occurrence recorded and acknowledged")
        fleet.procs[SID].send_signal(signal.SIGTERM)
        fleet.procs[SID].wait(10)
        db = fleet.station_dir(SID) / "data" / "station.db"
        assert sqlite3.connect(db).execute("PRAGMA integrity_check").fetchone() == ("ok",)
        plays = fleet.station_db(SID, "SELECT key, outcome FROM plays")
        outcomes = Counter(o for _, o in plays)
        assert len(plays) == COUNT and "started" not in outcomes
        # every record reached the hub once
        hub = fleet.store.q("SELECT occurrence, outcome FROM playbacks WHERE station_id = ?",
                            [SID])
        assert sorted((r["occurrence"], r["outcome"]) for r in hub) == sorted(plays)
        # no occurrence went on air twice, across all 31 processes' logs
        starts = Counter(re.findall(r"on air soon: (\S+)", fleet.log(SID)))
        assert starts and max(starts.values()) == 1
        assert outcomes["interrupted"] >= 1
        figures("F2 agent SIGKILLs", KILLS, "kills")
        for mode, n in sorted(modes.items()):
            figures(f"F2 kills {mode}", n, "kills")
        for outcome, n in sorted(outcomes.items()):
            figures(f"F2 occurrences {outcome} (of {COUNT})", n, "occurrences")
    finally:
        fleet.stop()
