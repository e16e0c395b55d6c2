"""Issue 10: the console's fleet board and a 30-day compliance report at 2,000 stations with
90 days of play records (written with the hub store's own writer, ``store_events``), each the
p95 of 20 requests through the whole application (routing, session, CSRF middleware, the
library, Jinja2), beside the bare SQL query that feeds it, in the same run."""
from __future__ import annotations

import os
import shutil
import tempfile
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

N = int(os.environ.get("LOAXA_WEB_STATIONS", "2000"))
DAYS = 90
PLAYS_PER_DAY = 3
REQUESTS = 20


def _p95(values: list[float]) -> float:
    s = sorted(values)
    return round(s[min(len(s) - 1, int(round(0.95 * (len(s) - 1))))] * 1000, 1)


def _timed(fn, n: int = REQUESTS) -> list[float]:
    out = []
    for _ in range(n):
        t0 = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t0)
    return out


PASSWORD = "mật khẩu của phép đo 2026"


def tone(path: Path, seconds: float) -> Path:
    import subprocess
    subprocess.run(["ffmpeg", "-v", "error", "-y", "-f", "lavfi", "-i",
                    f"sine=frequency=440:duration={seconds}", str(path)], check=True)
    return path


def run() -> dict:
    work = Path(tempfile.mkdtemp(prefix="loaxa-webbench-"))
    try:
        home = work / "hub"
        setup_s = build(home, work)
        return {**measure(home), "setup_s": setup_s}
    finally:
        shutil.rmtree(work, ignore_errors=True)


def build(home: Path, work: Path) -> float:
    """N stations in communes of 100, three daily items for all, and 90 days of their plays
    (one in 23 failed) written through the hub store's own writer; seconds taken."""
    from bench.common import add_communes
    from hub import console
    from hub import config as hubconfig
    from hub.admin import add_content_file, announce, init_hub
    from hub.store import HubStore
    from protocol.clock import iso
    from protocol.storage import write
    from schedules import Priority
    init_hub(home, broker_host="127.0.0.1", broker_port=1)
    store = HubStore(hubconfig.load(home).db_path)
    now = datetime.now(timezone.utc)
    first = datetime.combine((now - timedelta(days=DAYS)).astimezone(console.TZ).date(),
                             datetime.min.time(), console.TZ)
    t0 = time.monotonic()
    with store.lock, write(store.db):
        for i, sid in enumerate(add_communes(store, N, iso(first))):
            store.set_state(sid, online=int(i % 17 != 0), since=iso(now), active_version=1,
                            held_version=1, missing="", clock_trusted=1, health="ok", restarts=1)
    content = add_content_file(store, tone(work / "t.wav", 2), title="Bản tin", now=first)
    hours = (6, 11, 17)
    items = [announce(store, content=content, when=first + timedelta(hours=h),
                      priority=Priority.THONG_THUONG, target="all", every="FREQ=DAILY",
                      now=first, title=f"Bản tin {h} giờ") for h in hours]
    for i in range(N):
        sid = f"tram-{i:05d}"
        events = []
        for d in range(DAYS):
            for k, (item, h) in enumerate(zip(items, hours)):
                at = iso(first + timedelta(days=d, hours=h))
                seq = d * len(hours) + k + 1
                outcome = "played" if (seq + i) % 23 else "failed"
                events.append({"seq": seq, "kind": "playback", "at": at, "data": {
                    "occurrence": f"{item}@{seq}", "item": item, "content": content["sha"],
                    "scheduled": at, "started": at, "ended": at, "outcome": outcome,
                    "detail": "" if outcome == "played" else "no_sound"}})
        store.store_events(sid, events, now)
    store.close()
    return round(time.monotonic() - t0, 1)


def measure(home: Path) -> dict:
    """The board's first page and a 30-day report, each beside the query that feeds it."""
    from fastapi.testclient import TestClient
    from hub import accounts, console
    from hub import config as hubconfig
    from hub.store import HubStore
    from hub.web.app import create_app
    store = HubStore(hubconfig.load(home).db_path)
    now = datetime.now(timezone.utc)
    if not accounts.get_user(store, "xem"):
        accounts.add_user(store, "xem", name="Xem", role="viewer", now=now)
    store.db.execute("UPDATE users SET hash = ?, must_change = 0, failures = 0 WHERE id = 'xem'",
                     [accounts._hasher.hash(PASSWORD)])
    client = TestClient(create_app(home), follow_redirects=False)
    client.get("/login")
    r = client.post("/login", data={"csrftoken": client.cookies["csrftoken"], "user": "xem",
                                    "password": PASSWORD})
    assert r.status_code == 303, r.text
    d1 = (now - timedelta(days=29)).astimezone(console.TZ)
    user = accounts.get_user(store, "xem")
    where, args = console._board_filter(store, user)

    def board() -> None:
        assert client.get("/stations").status_code == 200

    def report() -> None:
        assert client.get(f"/reports?d1={d1:%d/%m/%Y}").status_code == 200

    def board_sql() -> None:
        store.db.execute(f"{console.BOARD_SQL} WHERE {where} ORDER BY s.id LIMIT ?",
                         [*args, console.PAGE]).fetchall()

    def report_sql() -> None:  # what the report reads: the per-day roll-up, per station
        store.db.execute("SELECT station_id, sum(played), sum(missed) FROM play_days "
                         "WHERE day >= ? GROUP BY station_id", [f"{d1:%Y-%m-%d}"]).fetchall()
    board(), report()  # warm
    res = {"board_page_p95_ms": _p95(_timed(board)),
           "board_bare_sql_p95_ms": _p95(_timed(board_sql)),
           "report_30d_p95_ms": _p95(_timed(report)),
           "report_bare_sql_p95_ms": _p95(_timed(report_sql))}
    rows = store.db.execute("SELECT count(*) FROM playbacks").fetchone()[0]
    store.close()
    return {"name": "web_console", "stations": N, "days": DAYS, "play_records": rows,
            "board_page_size": console.PAGE, "requests_each": REQUESTS, **res,
            "target_ms": 300,
            "meets_targets": res["board_page_p95_ms"] <= 300 and res["report_30d_p95_ms"] <= 300}
