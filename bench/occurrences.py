"""Issue 13: a runner step's schedule work must not grow with the programme's age.

Per step (50 ms of schedule time, as the runner takes it) the runner asks
``schedules.overdue`` (what closed since the last step) and ``schedules.startable_at`` (what
may begin now). Measured for 10 daily and 3 hourly items whose rules first started three
years ago, beside the same items started two days ago (the baseline), both asked about the
same instants. CPU time (process_time), median of 5 runs of 2,000 steps each.
Target: old ≤ 1.2 × fresh.
"""
from __future__ import annotations

import statistics
import time
from datetime import datetime, timedelta, timezone

from schedules import Item, overdue, startable_at

NOW = datetime(2029, 6, 1, 1, 0, tzinfo=timezone.utc)
STEPS, RUNS, STEP = 2000, 5, timedelta(milliseconds=50)


def _programme(first: datetime) -> list[Item]:
    daily = [Item(f"d{i}", "a" * 64, 60_000, 1, first + timedelta(minutes=37 * i),
                  rrule="FREQ=DAILY") for i in range(10)]
    hourly = [Item(f"h{i}", "b" * 64, 30_000, 1, first + timedelta(minutes=11 + 13 * i),
                   rrule="FREQ=HOURLY") for i in range(3)]
    return daily + hourly


def _per_step_us(items: list[Item]) -> float:
    times = []
    for _ in range(RUNS):
        t, since = NOW, NOW - STEP
        c0 = time.process_time()
        for _ in range(STEPS):
            overdue(items, since, t)
            startable_at(items, t)
            since, t = t, t + STEP
        times.append((time.process_time() - c0) / STEPS * 1e6)
    return statistics.median(times)


def run() -> dict:
    old = _programme(NOW - timedelta(days=3 * 365))
    fresh = _programme(NOW - timedelta(days=2))
    fresh_us, old_us = _per_step_us(fresh), _per_step_us(old)
    ratio = old_us / fresh_us
    return {"name": "occurrence_step", "items": "10 daily + 3 hourly",
            "step_ms": 50, "steps": STEPS, "runs": RUNS,
            "baseline_fresh_programme_us_per_step": round(fresh_us, 1),
            "three_year_old_programme_us_per_step": round(old_us, 1),
            "ratio_to_baseline": round(ratio, 3), "target_ratio": 1.2,
            "meets_targets": ratio <= 1.2}


if __name__ == "__main__":
    import json
    print(json.dumps(run(), indent=1))
