"""How times are read from and shown to Vietnamese users: dd/mm/yyyy, 24 h, Asia/Ho_Chi_Minh."""
from __future__ import annotations

import re
from datetime import datetime, timedelta

from protocol.clock import parse_iso
from schedules import TZ

from .config import HubError

_REL = re.compile(r"^\+(\d+)\s*([smh])$")
_UNITS = {"s": 1, "m": 60, "h": 3600}


def show(value: str | datetime | None, *, seconds: bool = True) -> str:
    if not value:
        return "—"
    dt = parse_iso(value) if isinstance(value, str) else value
    return dt.astimezone(TZ).strftime("%d/%m/%Y %H:%M:%S" if seconds else "%d/%m/%Y %H:%M")


def parse_when(text: str, now: datetime) -> datetime:
    """``dd/mm/yyyy HH:MM[:SS]``, ``HH:MM`` (the next such time), ``+30s``/``+5m``/``+2h``,
    or ``now``; local time (Asia/Ho_Chi_Minh)."""
    t = text.strip()
    if t == "now":
        return now
    m = _REL.match(t)
    if m:
        return now + timedelta(seconds=int(m.group(1)) * _UNITS[m.group(2)])
    for fmt in ("%d/%m/%Y %H:%M:%S", "%d/%m/%Y %H:%M"):
        try:
            return datetime.strptime(t, fmt).replace(tzinfo=TZ)
        except ValueError:
            pass
    for fmt in ("%H:%M:%S", "%H:%M"):
        try:
            tm = datetime.strptime(t, fmt).time()
        except ValueError:
            continue
        local = now.astimezone(TZ)
        cand = local.replace(hour=tm.hour, minute=tm.minute, second=tm.second, microsecond=0)
        return cand if cand > local else cand + timedelta(days=1)
    raise HubError(f"thời điểm {text!r} không hợp lệ / bad time: use dd/mm/yyyy HH:MM, HH:MM "
                   f"or +30s")


def parse_date(text: str, *, end: bool = False) -> datetime:
    try:
        d = datetime.strptime(text.strip(), "%d/%m/%Y").replace(tzinfo=TZ)
    except ValueError:
        raise HubError(f"ngày {text!r} không hợp lệ / bad date: use dd/mm/yyyy") from None
    return d + timedelta(days=1) if end else d


OUTCOMES_VI = {"played": "đã phát", "failed": "lỗi phát", "missed": "bỏ lỡ",
               "preempted": "bị ngắt (ưu tiên cao hơn)", "interrupted": "bị gián đoạn",
               "started": "đang phát", "fallback": "phát dự phòng (tiếp âm lỗi)"}


def outcome_vi(outcome: str | None) -> str:
    return OUTCOMES_VI.get(outcome or "", outcome or "—")
