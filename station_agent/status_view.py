"""`loaxa agent status`: the station's own state file (data/status.json) in Vietnamese, for the
commune staff on duty: what plays now, what plays next, and why nothing plays if that is so."""
from __future__ import annotations

import os
from typing import Any

from protocol.clock import parse_iso
from protocol.vi import ALARMS_VI
from schedules import TZ

HEALTH_VI = {"ok": "tốt", "degraded": "suy giảm", "fault": "LỖI"}
PRIORITY_VI = {1: "thông thường", 2: "ưu tiên", 3: "khẩn cấp"}
BLOCKED_VI = {
    "clock": "đồng hồ chưa được tin cậy, nên không phát theo lịch",
    "live_mic": "micro trực tiếp đang giữ sóng; lịch phát chờ",
    "no_programme": "chưa có chương trình phát nào",
    "pending": "chương trình mới đang chờ tải âm thanh",
    "next_audio_missing": "chưa có tệp âm thanh của bản tin sắp tới",
    "alarm.amplifier": "tăng âm lỗi",
    "alarm.relay": "rơ-le lỗi",
    "alarm.audio_device": "thiết bị âm thanh lỗi",
    "alarm.disk_full": "bộ nhớ đầy, không tải được âm thanh mới",
}


def _show(value: str | None) -> str:
    if not value:
        return "—"
    return parse_iso(value).astimezone(TZ).strftime("%d/%m/%Y %H:%M:%S")


def _alive(pid: Any) -> bool:
    try:
        if int(pid) <= 0:
            return False
        os.kill(int(pid), 0)
        return True
    except (OSError, TypeError, ValueError):
        return False


def render(st: dict[str, Any]) -> str:
    lines = [f"Trạm {st.get('station')}"]
    if not _alive(st.get("pid")):
        lines.append(f"  Tác tử KHÔNG chạy; trạng thái dưới đây ghi lúc {_show(st.get('at'))}")
    else:
        lines.append(f"  Cập nhật lúc {_show(st.get('at'))}")
    f = st.get("link_failure")
    link = "đã kết nối" if st.get("connected") else (
        f"mất kết nối ({f['cause']}: {f['detail']})" if f else "mất kết nối")
    lines.append(f"  Kết nối hub: {link}")
    lines.append(f"  Sức khỏe: {HEALTH_VI.get(st.get('health'), st.get('health'))}"
                 f"; đồng hồ {'đúng' if st.get('clock_trusted') else 'CHƯA TIN CẬY'}")
    lines.append(f"  Chương trình: đang dùng v{st.get('active_version') or 0}"
                 + (f", chờ v{st['pending_version']}" if st.get("pending_version") else "")
                 + f"; thiếu {st.get('audio_missing', 0)} tệp âm thanh"
                 + f"; chờ gửi {st.get('outbox', 0)} bản ghi")
    if st.get("live_mic"):
        lines.append("  Micro trực tiếp: ĐANG MỞ")
    if st.get("mic_preempted_by"):
        lines.append(f"  Tin khẩn cấp đã ngắt micro: {st['mic_preempted_by']}")
    if st.get("playing"):
        lines.append(f"  Đang phát: {st['playing']}")
    elif st.get("starting"):
        lines.append(f"  Đang bật tăng âm cho: {st['starting']}")
    else:
        lines.append("  Đang phát: không")
    nxt = st.get("next")
    if nxt:
        lines.append(f"  Sắp phát: {nxt.get('title') or nxt['key']} lúc {_show(nxt['start'])} "
                     f"({PRIORITY_VI.get(nxt.get('priority'), '?')})")
    else:
        lines.append("  Sắp phát: không có gì trong 2 ngày tới")
    for b in st.get("blocked") or []:
        text = BLOCKED_VI.get(b["code"], b["code"])
        lines.append(f"  Vì sao chưa phát: {text}" + (f" ({b['detail']})" if b.get("detail") else ""))
    alarms = st.get("alarms") or {}
    for code, detail in sorted(alarms.items()):
        lines.append(f"  Cảnh báo: {ALARMS_VI.get(code, code)}" + (f": {detail}" if detail else ""))
    if not alarms:
        lines.append("  Cảnh báo: không có")
    return "\n".join(lines)
