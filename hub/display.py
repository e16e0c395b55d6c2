"""How times are read from and shown to Vietnamese users: dd/mm/yyyy, 24 h, Asia/Ho_Chi_Minh."""
from __future__ import annotations

import re
from datetime import datetime, timedelta

from protocol.clock import parse_iso
from protocol.vi import ALARMS_VI, OUTCOMES_VI, REFUSALS_VI  # noqa: F401 (re-exported)
from schedules import TZ

from .config import HubError

_REL = re.compile(r"^\+(\d+)\s*([smh])$")
_HOUR_H = re.compile(r"(\d{1,2})\s*[hg]\s*(\d{2})?$")  # 6h30, 6h, 6g30: as Vietnamese write
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
    # "6h30" and "6:30" are the same time
    t = _HOUR_H.sub(lambda m: f"{int(m.group(1)):02d}:{m.group(2) or '00'}", t)
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
    raise HubError(f"thời điểm {text!r} không hợp lệ: dùng dd/mm/yyyy HH:MM, HH:MM, 6h30 hoặc +30s"
                   f" / bad time: use dd/mm/yyyy HH:MM, HH:MM, 6h30 or +30s")


def parse_date(text: str, *, end: bool = False) -> datetime:
    try:
        d = datetime.strptime(text.strip(), "%d/%m/%Y").replace(tzinfo=TZ)
    except ValueError:
        raise HubError(f"ngày {text!r} không hợp lệ / bad date: use dd/mm/yyyy") from None
    return d + timedelta(days=1) if end else d



CAUSES_VI = {"unreachable": "không tới được broker", "tls_expected": "broker đòi TLS",
             "tls_unexpected": "broker không dùng TLS ở cổng này",
             "certificate_refused": "broker từ chối chứng chỉ",
             "broker_untrusted": "chứng chỉ của broker không được tin cậy",
             "not_authorised": "không được phép (ACL của broker)",
             "refused": "broker từ chối kết nối", "lost": "mất kết nối tới broker"}


def render_hub(view: dict) -> str:
    """The first line of `hub status`: is the hub serving, how fresh is what it shows."""
    if not view["serving"]:
        when = (f"dữ liệu cập nhật lần cuối {show(view['alive_at'])} "
                f"({_ago(view['age_s'])} trước)" if view["alive_at"] else "chưa từng chạy")
        line = (f"Hub: KHÔNG CHẠY (`loaxa hub serve`) — {when}; trạng thái kết nối của các trạm "
                f"không rõ. / The hub is not serving: presence below is unknown.")
    elif not view["fresh"]:
        line = (f"Hub: đang chạy nhưng không cập nhật từ {show(view['alive_at'])} "
                f"({_ago(view['age_s'])}) — trạng thái trạm không rõ. / stale")
    else:
        line = "Hub: đang chạy / serving"
    f = view.get("link_failure")
    if f:
        line += (f"\nBroker: {CAUSES_VI.get(f['cause'], f['cause'])} từ {show(f['since'])} — "
                 f"{f['detail']}")
    refused = view.get("refused_24h") or []
    if refused:
        line += ("\nTin bị từ chối trong 24 giờ qua / refused in the last 24 h: " +
                 "; ".join(f"{REFUSALS_VI.get(r['reason'], r['reason'])} {r['n']} "
                           f"({r['stations']} trạm, gần nhất {show(r['last'])})"
                           for r in refused))
    counters = view.get("counters") or {}
    trouble = [(trouble_vi(k), v) for k, v in sorted((counters.get("counts") or {}).items())
               if v and trouble_vi(k)]
    if trouble:
        line += (f"\nTừ khi hub chạy ({show(counters.get('since'))}) / since the hub started: " +
                 "; ".join(f"{name} {v}" for name, v in trouble))
    return line


# the hub's counters that mean something went wrong (hub/link.py), besides refusals
TROUBLE_VI = {"errors": "lỗi khi xử lý tin", "audio.push_interrupted": "lần đẩy âm thanh bị ngắt",
              "audio.chunks_not_sent": "đoạn âm thanh chưa gửi được"}


def trouble_vi(counter: str) -> str | None:
    """A hub counter's name for people if it means something went wrong: refusals by reason
    (not ``refused.not_stored``, the repeats not stored), the rest by TROUBLE_VI."""
    if counter.startswith("refused."):
        reason = counter.split(".", 1)[1]
        return None if reason == "not_stored" else f"từ chối: {REFUSALS_VI.get(reason, reason)}"
    return TROUBLE_VI.get(counter)


def _ago(seconds: float | None) -> str:
    if seconds is None:
        return "?"
    s = int(seconds)
    if s < 120:
        return f"{s} giây"
    if s < 7200:
        return f"{s // 60} phút"
    if s < 172800:
        return f"{s // 3600} giờ"
    return f"{s // 86400} ngày"


PRESENCE_VI = {"online": "trực tuyến", "offline": "mất kết nối", "unknown": "không rõ"}


def outcome_vi(outcome: str | None) -> str:
    return OUTCOMES_VI.get(outcome or "", outcome or "—")


def render_status(rows: list[dict]) -> str:
    head = ["Trạm", "Tên", "Kết nối", "Từ lúc", "Sức khỏe", "Bản phát (hub/trạm)",
            "Thiếu âm thanh", "Đồng hồ", "Chờ gửi", "Số lần khởi động", "Lần phát gần nhất"]
    table = [head]
    for r in rows:
        lp = r["last_play"]
        table.append([
            r["id"], r["name"], PRESENCE_VI[r["presence"]] + (" · micro" if r["live_mic"] else "")
            + ("" if r["key"] else " · chưa có khóa"), show(r["since"]),
            HEALTH_VI.get(r["health"] or "", "—"),
            f"{r['desired']}/{r['active']}", str(len(r["missing"])),
            "đúng" if r["clock_trusted"] else "SAI", str(r["outbox"]),
            f"{r['starts']} (gần nhất {show(r['started_at'])})" if r["started_at"] else "—",
            f"{outcome_vi(lp['outcome'])} {show(lp['started_at'] or lp['scheduled_at'])}"
            if lp else "—",
        ])
    widths = [max(len(row[i]) for row in table) for i in range(len(head))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(row, widths)) for row in table]
    missing = [(r["id"], r["missing"]) for r in rows if r["missing"]]
    if missing:
        lines += ["", "Âm thanh còn thiếu / audio still missing:"]
        lines += [f"  {sid}  " + ", ".join(m[:12] for m in shas) for sid, shas in missing]
    alarms = [(r["id"], a) for r in rows for a in r["alarms"]]
    if alarms:
        lines += ["", "Cảnh báo đang mở / open alarms:"]
        lines += [f"  {sid}  {ALARMS_VI.get(a['code'], a['code'])} từ {show(a['since'])}: "
                  f"{a['detail']}" for sid, a in alarms]
    return "\n".join(lines)


HEALTH_VI = {"ok": "tốt", "degraded": "suy giảm", "fault": "LỖI",
             "silent": "im lặng (mất nhịp tim)"}


