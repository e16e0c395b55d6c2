from __future__ import annotations

import unicodedata
from dataclasses import dataclass, field
from datetime import datetime, time, timedelta, timezone
from enum import IntEnum
from typing import Any
from zoneinfo import ZoneInfo

from dateutil.rrule import rrulestr

TZ = ZoneInfo("Asia/Ho_Chi_Minh")


class ScheduleError(ValueError):
    pass


class Priority(IntEnum):
    """The three bulletin levels of Thông tư 39/2020/TT-BTTTT."""

    THONG_THUONG = 1  # normal
    UU_TIEN = 2       # priority
    KHAN_CAP = 3      # emergency: disasters, fire, epidemics; plays even in quiet hours

    @property
    def label_vi(self) -> str:
        return {1: "thông thường", 2: "ưu tiên", 3: "khẩn cấp"}[self.value]

    @property
    def label_en(self) -> str:
        return {1: "normal", 2: "priority", 3: "emergency"}[self.value]

    @classmethod
    def parse(cls, text: str | int) -> "Priority":
        if isinstance(text, int):
            return cls(text)
        folded = _fold(text)
        for p in cls:
            names = {_fold(p.label_vi), p.label_en, str(p.value), p.name.lower()}
            names |= {n.replace(" ", "-") for n in names} | {n.replace(" ", "_") for n in names}
            if folded in names:
                return p
        raise ScheduleError(
            f"mức ưu tiên {text!r} không có: dùng thong-thuong, uu-tien hoặc khan-cap / "
            f"unknown priority {text!r}: use thong-thuong, uu-tien or khan-cap (1, 2, 3)")


def _fold(text: str) -> str:
    """Lower case without diacritics, so 'Khẩn cấp' and 'khan-cap' both match."""
    decomposed = unicodedata.normalize("NFD", text.strip().lower().replace("đ", "d"))
    return "".join(c for c in decomposed if unicodedata.category(c) != "Mn")


@dataclass(frozen=True)
class QuietHours:
    """A local-time window in which only khẩn cấp items may start (may cross midnight)."""

    start: time
    end: time

    def contains(self, when: datetime) -> bool:
        t = when.astimezone(TZ).time()
        if self.start <= self.end:
            return self.start <= t < self.end
        return t >= self.start or t < self.end

    def to_wire(self) -> dict[str, str]:
        return {"start": self.start.strftime("%H:%M"), "end": self.end.strftime("%H:%M")}

    @classmethod
    def from_wire(cls, d: dict[str, str]) -> "QuietHours":
        try:
            return cls(time.fromisoformat(d["start"]), time.fromisoformat(d["end"]))
        except (KeyError, TypeError, ValueError) as exc:
            raise ScheduleError(f"bad quiet hours {d!r}: {exc}") from None


@dataclass(frozen=True)
class Item:
    """One schedule rule.

    ``start`` is the first (or only) occurrence, an aware UTC instant. ``rrule`` is an RFC 5545
    RRULE evaluated in Asia/Ho_Chi_Minh wall time from ``start`` (so "every day at 06:00" stays
    at 06:00 local). ``valid_from``/``valid_until`` bound a campaign. ``late_start_s`` is how long
    after its start an occurrence may still begin (after an outage or a preemption).
    """

    id: str
    content: str
    duration_ms: int
    priority: Priority
    start: datetime
    rrule: str | None = None
    valid_from: datetime | None = None
    valid_until: datetime | None = None
    late_start_s: int = 300
    title: str = ""
    stream: str | None = None  # live relay (tiếp âm): play this URL; ``content`` is the fallback
    approval: str = ""  # who approved it and when ("user@2026-09-01T02:00:00Z"), for the record
    _rule: Any = field(default=None, init=False, repr=False, compare=False, hash=False)
    # what schedules.evaluate derives from the rule once (an anchor near the last query)
    _memo: dict = field(default_factory=dict, init=False, repr=False, compare=False, hash=False)

    def __post_init__(self) -> None:
        if self.start.tzinfo is None:
            raise ScheduleError(f"item {self.id}: start must be timezone-aware")
        if self.duration_ms <= 0:
            raise ScheduleError(f"item {self.id}: duration must be positive")
        if self.late_start_s < 0:
            raise ScheduleError(f"item {self.id}: late-start window must not be negative")
        if self.valid_from and self.valid_until and self.valid_until <= self.valid_from:
            raise ScheduleError(f"item {self.id}: campaign ends before it starts")
        if self.stream is not None and not (isinstance(self.stream, str) and
                                            self.stream.startswith("https://")):
            # only the URL is signed: over plain http anyone on the path could put audio on
            # air, so the station accepts only TLS streams whose certificate it verifies
            raise ScheduleError(f"item {self.id}: luồng tiếp âm phải là https:// / a stream must "
                                f"be an https:// URL (http(s) URL over TLS only)")
        object.__setattr__(self, "priority", Priority(self.priority))
        object.__setattr__(self, "start", self.start.astimezone(timezone.utc))
        if self.rrule:
            body = self.rrule.removeprefix("RRULE:")
            try:
                rule = rrulestr(body, dtstart=self.start.astimezone(TZ))
            except (ValueError, TypeError):
                # dateutil's own text ("not enough values to unpack") helps nobody
                raise ScheduleError(
                    f"lịch lặp {self.rrule!r} không hợp lệ: dùng hourly, daily, weekly, weekdays "
                    f"hoặc một RRULE như FREQ=DAILY / not a valid repetition (RRULE): use "
                    f"hourly, daily, weekly, weekdays or e.g. FREQ=WEEKLY;BYDAY=MO") from None
            object.__setattr__(self, "_rule", rule)

    @property
    def duration(self) -> timedelta:
        return timedelta(milliseconds=self.duration_ms)

    def to_wire(self) -> dict[str, Any]:
        from protocol.clock import iso
        return {
            "id": self.id, "content": self.content, "duration_ms": self.duration_ms,
            "priority": int(self.priority), "start": iso(self.start), "rrule": self.rrule,
            "valid_from": iso(self.valid_from) if self.valid_from else None,
            "valid_until": iso(self.valid_until) if self.valid_until else None,
            "late_start_s": self.late_start_s, "title": self.title, "stream": self.stream,
            **({"approval": self.approval} if self.approval else {}),
        }

    @classmethod
    def from_wire(cls, d: dict[str, Any]) -> "Item":
        from protocol.clock import parse_iso
        try:
            return cls(
                id=str(d["id"]), content=str(d["content"]), duration_ms=int(d["duration_ms"]),
                priority=Priority(int(d["priority"])), start=parse_iso(d["start"]),
                rrule=d.get("rrule") or None,
                valid_from=parse_iso(d["valid_from"]) if d.get("valid_from") else None,
                valid_until=parse_iso(d["valid_until"]) if d.get("valid_until") else None,
                late_start_s=int(d.get("late_start_s", 300)), title=str(d.get("title", "")),
                stream=d.get("stream") or None, approval=str(d.get("approval") or ""),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise ScheduleError(f"bad schedule item: {exc}") from None


@dataclass(frozen=True)
class Occurrence:
    start: datetime
    item: Item

    @property
    def end(self) -> datetime:
        return self.start + self.item.duration

    @property
    def key(self) -> str:
        """Stable identity of one occurrence: what a station records as played or missed."""
        return f"{self.item.id}@{self.start.strftime('%Y%m%dT%H%M%SZ')}"
