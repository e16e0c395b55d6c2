"""What the culture center's console shows and does, as library calls: the fleet board,
readiness for a day, the programme calendar, drafting and approving broadcasts, alarms,
alerts and reports. The web pages (``hub.web``) are a thin layer over this module and
``hub.admin``; every query here is bounded by what the user may see (a commune operator sees
only its communes' stations).
"""
from __future__ import annotations

import csv
import io
import json
from bisect import bisect_left
from dataclasses import dataclass
from datetime import date, datetime, time, timedelta
from typing import Any, Iterable

from protocol.clock import iso, parse_iso
from protocol.storage import write
from schedules import TZ, Item, Priority, occurrences
from schedules.model import QuietHours

from . import admin
from .accounts import User, audit
from .config import HubConfig, HubError
from .planner import item_from_row, targets
from .store import HubStore

PAGE = 200  # stations per page of the board


# -- who sees what -------------------------------------------------------------------------

def visible_stations(store: HubStore, user: User) -> set[str] | None:
    """The stations a user may see and act on: None for all; a commune operator's are those
    in its communes (a group or commune id), directly or through a province."""
    if user.role != "commune":
        return None
    if not user.communes:
        return set()
    marks = ",".join("?" * len(user.communes))
    rows = store.db.execute(
        f"SELECT station_id FROM station_groups WHERE group_id IN ({marks}) OR group_id IN "
        f"(SELECT id FROM groups WHERE parent IN ({marks}))",
        [*user.communes, *user.communes]).fetchall()
    return {r[0] for r in rows}


def may_station(store: HubStore, user: User, sid: str) -> bool:
    seen = visible_stations(store, user)
    return store.station(sid) is not None and (seen is None or sid in seen)


def target_visible(store: HubStore, user: User, target: str) -> bool:
    """Whether every station a target reaches is one the user may act on."""
    seen = visible_stations(store, user)
    if seen is None:
        return True
    reached = set(store.target_stations(target))
    return bool(reached) and reached <= seen


# -- the fleet board -----------------------------------------------------------------------

BOARD_SQL = """
SELECT s.id, s.name, st.online, st.since, st.active_version, st.held_version, st.missing,
       st.on_air,
       st.clock_trusted, st.health, st.health_probes, st.last_heartbeat, st.heartbeat_s,
       st.restarts, st.started_at, st.last_seen, st.live_mic, st.outbox, st.software_version,
       (SELECT max(version) FROM bundles b WHERE b.station_id = s.id) AS desired,
       (SELECT count(*) FROM alarms a WHERE a.station_id = s.id AND a.cleared_at IS NULL)
         AS open_alarms,
       (SELECT group_concat(group_id, ',') FROM station_groups g WHERE g.station_id = s.id)
         AS groups,
       (SELECT p.outcome || '|' || coalesce(p.started_at, p.scheduled_at, '')
          FROM playbacks p WHERE p.station_id = s.id ORDER BY p.seq DESC LIMIT 1) AS last_play
FROM stations s LEFT JOIN station_state st ON st.station_id = s.id
"""

STATES = {"online": "đang kết nối", "offline": "mất kết nối", "alarm": "có cảnh báo",
          "behind": "chưa nhận bản phát mới", "missing": "thiếu âm thanh",
          "clock": "đồng hồ sai"}


def _board_filter(store: HubStore, user: User, *, state: str = "", group: str = "",
                  text: str = "") -> tuple[str, list[Any]]:
    where, args = ["1 = 1"], []
    seen = visible_stations(store, user)
    if seen is not None:
        where.append(f"s.id IN ({','.join('?' * len(seen))})" if seen else "0")
        args += sorted(seen)
    if group:
        where.append("s.id IN (SELECT station_id FROM station_groups WHERE group_id = ? OR "
                     "group_id IN (SELECT id FROM groups WHERE parent = ?))")
        args += [group, group]
    if text:
        where.append("(s.id LIKE ? OR s.name LIKE ?)")
        args += [f"%{text}%"] * 2
    if state == "online":
        where.append("st.online = 1")
    elif state == "offline":
        where.append("coalesce(st.online, 0) = 0")
    elif state == "alarm":
        where.append("EXISTS (SELECT 1 FROM alarms a WHERE a.station_id = s.id AND "
                     "a.cleared_at IS NULL)")
    elif state == "behind":
        where.append("coalesce(st.active_version, 0) < "
                     "coalesce((SELECT max(version) FROM bundles b WHERE b.station_id = s.id), 0)")
    elif state == "missing":
        where.append("coalesce(st.missing, '') != ''")
    elif state == "clock":
        where.append("st.clock_trusted = 0")
    return " AND ".join(where), args


def board(store: HubStore, user: User, now: datetime, *, state: str = "", group: str = "",
          text: str = "", page: int = 1) -> dict[str, Any]:
    """One page of the fleet board, with counts over every station the user sees."""
    where, args = _board_filter(store, user, state=state, group=group, text=text)
    fresh = admin.hub_view(store, now)["fresh"]
    total = store.db.execute(f"SELECT count(*) FROM stations s LEFT JOIN station_state st ON "
                             f"st.station_id = s.id WHERE {where}", args).fetchone()[0]
    page = max(1, min(page, (total + PAGE - 1) // PAGE or 1))
    rows = store.q(f"{BOARD_SQL} WHERE {where} ORDER BY s.id LIMIT ? OFFSET ?",
                   [*args, PAGE, (page - 1) * PAGE])
    for r in rows:
        r["presence"] = ("online" if r["online"] else "offline") if fresh else "unknown"
        r["health_now"] = admin._health(r, now)
        r["probes"] = json.loads(r["health_probes"] or "{}")
        r["missing"] = [m for m in (r["missing"] or "").split(",") if m]
        r["behind"] = (r["active_version"] or 0) < (r["desired"] or 0)
        outcome, _, at = (r["last_play"] or "").partition("|")
        r["last_play"] = {"outcome": outcome, "at": at} if r["last_play"] else None
    where_all, args_all = _board_filter(store, user)
    counts = dict(zip(("total", "online", "alarm", "behind", "on_air"), store.db.execute(
        f"SELECT count(*), sum(coalesce(st.online, 0)), "
        f"sum(EXISTS (SELECT 1 FROM alarms a WHERE a.station_id = s.id AND "
        f"a.cleared_at IS NULL)), "
        f"sum(coalesce(st.active_version, 0) < coalesce((SELECT max(version) FROM bundles b "
        f"WHERE b.station_id = s.id), 0)), "
        f"sum(coalesce(st.online, 0) AND coalesce(st.on_air, 0)) "
        f"FROM stations s LEFT JOIN station_state st ON st.station_id = s.id "
        f"WHERE {where_all}", args_all).fetchone()))
    counts = {k: v or 0 for k, v in counts.items()}
    return {"rows": rows, "page": page, "pages": (total + PAGE - 1) // PAGE or 1,
            "matching": total, "counts": counts, "fresh": fresh}


def station_detail(store: HubStore, user: User, sid: str, now: datetime) -> dict[str, Any]:
    if not may_station(store, user, sid):
        raise PermissionError(sid)
    row = store.q(f"{BOARD_SQL} WHERE s.id = ?", [sid])[0]
    fresh = admin.hub_view(store, now)["fresh"]
    row["presence"] = ("online" if row["online"] else "offline") if fresh else "unknown"
    row["health_now"] = admin._health(row, now)
    row["probes"] = json.loads(row["health_probes"] or "{}")
    row["missing"] = [m for m in (row["missing"] or "").split(",") if m]
    return {
        "station": row,
        "alarms": store.q("SELECT * FROM alarms WHERE station_id = ? ORDER BY raised_at DESC "
                          "LIMIT 50", [sid]),
        "plays": store.q("SELECT p.*, c.title FROM playbacks p LEFT JOIN content c ON "
                         "c.sha = p.content_sha WHERE p.station_id = ? ORDER BY p.seq DESC "
                         "LIMIT 100", [sid]),
        "events": store.q("SELECT kind, at, data FROM events WHERE station_id = ? ORDER BY seq "
                          "DESC LIMIT 50", [sid]),
        "commands": store.q("SELECT c.id, c.action, c.issued_at, c.by, t.state, t.detail FROM "
                            "command_targets t JOIN commands c ON c.id = t.command_id WHERE "
                            "t.station_id = ? ORDER BY c.issued_at DESC LIMIT 20", [sid]),
    }


def groups_tree(store: HubStore) -> list[dict[str, Any]]:
    """Provinces with their communes, then the other groups, each with its station count."""
    rows = store.q("SELECT g.id, g.name, coalesce(g.kind, 'group') AS kind, g.parent, "
                   "(SELECT count(*) FROM station_groups sg WHERE sg.group_id = g.id) AS n "
                   "FROM groups g ORDER BY g.id")
    by_parent: dict[str | None, list[dict[str, Any]]] = {}
    for r in rows:
        by_parent.setdefault(r["parent"], []).append(r)
    out = []
    for r in rows:
        if r["parent"] is None:
            out.append({**r, "children": by_parent.get(r["id"], [])})
    return out


def set_group_kind(store: HubStore, gid: str, kind: str, parent: str | None = None,
                   name: str | None = None) -> None:
    """Mark a group as a province or commune (a commune under its province)."""
    if kind not in ("province", "commune", "group"):
        raise HubError(f"loại nhóm {kind!r} / kind must be province, commune or group")
    with store.lock, write(store.db):
        store.db["groups"].insert({"id": gid, "name": name or gid}, ignore=True)
        store.db.execute("UPDATE groups SET kind = ?, parent = ?, name = coalesce(?, name) "
                         "WHERE id = ?", [kind, parent, name, gid])


# -- programme -----------------------------------------------------------------------------

def local_day(d: date) -> tuple[datetime, datetime]:
    start = datetime.combine(d, time(0), TZ)
    return start, start + timedelta(days=1)


def today(now: datetime) -> date:
    return now.astimezone(TZ).date()


def _item_rows(store: HubStore, *, states: Iterable[str] = ("approved",)) -> list[dict]:
    marks = ",".join("?" * len(tuple(states)))
    return store.q(f"SELECT i.*, c.duration_ms AS content_ms, c.title AS content_title FROM "
                   f"schedule_items i JOIN content c ON c.sha = i.content_sha WHERE "
                   f"i.cancelled_at IS NULL AND i.state IN ({marks}) ORDER BY i.start",
                   list(states))


def _visible_target(store: HubStore, user: User, target: str, seen: set[str] | None) -> bool:
    if seen is None:
        return True
    return any(targets(target, sid, store.station_groups(sid)) for sid in seen)


def calendar(store: HubStore, user: User, start: date, days: int,
             quiet: QuietHours | None = None) -> list[dict[str, Any]]:
    """Each local day from ``start``: the occurrences of approved items (and, marked, of
    drafts) that concern stations the user sees, in order."""
    seen = visible_stations(store, user)
    rows = [r for r in _item_rows(store, states=("approved", "draft"))
            if _visible_target(store, user, r["target"], seen)]
    items = {r["id"]: (item_from_row(r, r["content_ms"]), r) for r in rows}
    lo, _ = local_day(start)
    hi = lo + timedelta(days=days)
    by_day: dict[date, list[dict[str, Any]]] = {start + timedelta(days=i): [] for i in range(days)}
    for o in occurrences([i for i, _ in items.values()], lo, hi, quiet=quiet):
        r = items[o.item.id][1]
        d = o.start.astimezone(TZ).date()
        if d in by_day:
            by_day[d].append({"start": o.start, "end": o.end, "item": r,
                              "draft": r["state"] == "draft"})
    return [{"day": d, "entries": v} for d, v in by_day.items()]


def items_list(store: HubStore, user: User, *, state: str = "") -> list[dict[str, Any]]:
    seen = visible_stations(store, user)
    where = "i.cancelled_at IS NULL" + (" AND i.state = ?" if state else "")
    rows = store.q(f"SELECT i.*, c.title AS content_title, c.duration_ms AS content_ms FROM "
                   f"schedule_items i JOIN content c ON c.sha = i.content_sha WHERE {where} "
                   f"ORDER BY i.created_at DESC", [state] if state else [])
    return [r for r in rows if _visible_target(store, user, r["target"], seen)]


@dataclass
class Draft:
    content_sha: str
    title: str
    target: str
    when: datetime
    rrule: str | None
    valid_from: datetime | None
    valid_until: datetime | None
    priority: Priority
    late_start_s: int


def approval_required(store: HubStore) -> bool:
    return store.setting("approval.required", "1") == "1"


def set_approval_required(store: HubStore, on: bool, *, by: str, ip: str, now: datetime) -> None:
    with store.lock, write(store.db):
        store.set_setting("approval.required", "1" if on else "0")
        audit(store, by, "settings.approval", "approval.required", "bật" if on else "tắt", ip,
              now)


def warnings(store: HubStore, d: Draft, now: datetime, quiet: QuietHours | None) -> list[str]:
    """What the person drafting should know: overlaps with other items on the same stations
    (and which one yields), and occurrences in quiet hours (only khẩn cấp plays then)."""
    content = store.content(d.content_sha)
    if content is None:
        return []
    new = Item("new", d.content_sha, content["duration_ms"], d.priority, d.when, rrule=d.rrule,
               valid_from=d.valid_from, valid_until=d.valid_until, late_start_s=d.late_start_s)
    horizon = now + timedelta(days=14)
    mine = occurrences([new], now, horizon)
    reached = set(store.target_stations(d.target))
    out: list[str] = []
    for r in _item_rows(store, states=("approved", "draft")):
        other_st = set(store.target_stations(r["target"]))
        common = reached & other_st
        if not common:
            continue
        other = item_from_row(r, r["content_ms"])
        theirs = occurrences([other], now, horizon)
        clash = next(((a, b) for a in mine for b in theirs
                      if a.start < b.end and b.start < a.end), None)
        if clash:
            a, b = clash
            who = ("mục mới sẽ bị ngắt" if other.priority > d.priority else
                   f"“{r['title']}” sẽ bị ngắt" if other.priority < d.priority else
                   "cùng mức ưu tiên: mục bắt đầu sau phải chờ")
            out.append(f"Trùng giờ với “{r['title']}” lúc {_hm(b.start)} ngày {_dmy(b.start)} "
                       f"trên {len(common)} trạm ({who}).")
    if quiet and d.priority < Priority.KHAN_CAP:
        in_quiet = [o for o in mine if quiet.contains(o.start)]
        if in_quiet:
            out.append(f"{len(in_quiet)} lần phát rơi vào giờ yên tĩnh "
                       f"{quiet.start:%H:%M}–{quiet.end:%H:%M} và sẽ không phát (chỉ tin khẩn "
                       f"cấp được phát).")
    return out


def _hm(t: datetime) -> str:
    return t.astimezone(TZ).strftime("%H:%M")


def _dmy(t: datetime) -> str:
    return t.astimezone(TZ).strftime("%d/%m/%Y")


def draft(store: HubStore, d: Draft, *, user: User, ip: str, now: datetime,
          replaces: str | None = None) -> dict[str, Any]:
    """A broadcast from the console: a draft waiting for approval, or on air at once when
    approval is off. Validated by the same code as `hub announce`. ``replaces``: an edit of
    that item; a draft being edited is withdrawn at once, an approved one stays on air until
    its replacement is approved (``decide``), so an edit never leaves a gap."""
    if not target_visible(store, user, d.target):
        raise PermissionError(d.target)
    content = store.content(d.content_sha)
    if content is None:
        raise HubError("nội dung không có / no such content")
    old = None
    if replaces is not None:
        rows = store.q("SELECT * FROM schedule_items WHERE id = ? AND cancelled_at IS NULL",
                       [replaces])
        if not rows:
            raise HubError("mục lịch không có hoặc đã hủy / no such item, or cancelled")
        old = rows[0]
        if not target_visible(store, user, old["target"]):
            raise PermissionError(replaces)
    approved = not approval_required(store)
    with store.lock, write(store.db):
        item_id = admin.announce(store, content=content, when=d.when, priority=d.priority,
                                 target=d.target, every=d.rrule, valid_from=d.valid_from,
                                 valid_until=d.valid_until, late_start_s=d.late_start_s,
                                 title=d.title, now=now, by=user.id, approved=approved)
        if old is not None:
            store.db.execute("UPDATE schedule_items SET replaces = ? WHERE id = ?",
                             [old["id"], item_id])
            if approved or old["state"] != "approved":
                _retire(store, old["id"], now)
        action = ("schedule.edit" if old else "schedule.draft") if not approved else \
            ("schedule.edit_live" if old else "schedule.add")
        audit(store, user.id, action, item_id,
              f"{d.title} → {d.target}" + (f" (thay {old['id']})" if old else ""), ip, now)
    return store.q("SELECT * FROM schedule_items WHERE id = ?", [item_id])[0]


def _retire(store: HubStore, item_id: str, now: datetime) -> None:
    """An item replaced by its edit leaves every bundle (what is on air plays on)."""
    store.db.execute("UPDATE schedule_items SET cancelled_at = ? WHERE id = ? AND "
                     "cancelled_at IS NULL", [iso(now), item_id])


def draft_form_values(row: dict[str, Any]) -> dict[str, str]:
    """A stored item as the schedule form's fields (for editing it)."""
    start = parse_iso(row["start"]).astimezone(TZ)
    rule = dict(part.split("=", 1) for part in (row["rrule"] or "").split(";") if "=" in part)
    freq, byday = rule.get("FREQ"), rule.get("BYDAY")
    every = {None: "", "DAILY": "daily"}.get(freq, "custom")
    if freq == "WEEKLY":
        every = "weekly" if not byday else \
            "weekdays" if byday == "MO,TU,WE,TH,FR" else "custom"
    values = {"content": row["content_sha"], "title": row["title"] or "",
              "target": row["target"], "day": start.strftime("%d/%m/%Y"),
              "time": start.strftime("%H:%M"), "every": every,
              "priority": str(row["priority"]), "late": str((row["late_start_s"] or 0) // 60),
              "until": parse_iso(row["valid_until"]).astimezone(TZ).strftime("%d/%m/%Y")
              if row["valid_until"] else ""}
    if every == "custom" and byday:
        values.update({f"wd_{d}": "1" for d in byday.split(",")})
    if rule.get("BYHOUR"):
        minute = int(rule.get("BYMINUTE", start.minute))
        values["times"] = ", ".join(f"{int(h):02d}:{minute:02d}" for h in
                                    rule["BYHOUR"].split(",") if int(h) != start.hour)
    return values


def decide(store: HubStore, item_id: str, approve: bool, note: str, *, user: User, ip: str,
           now: datetime) -> dict[str, Any]:
    """Approve (it goes on air: the approver and the time travel in the signed bundle) or
    reject (with a reason) one draft. Nobody approves their own draft."""
    rows = store.q("SELECT * FROM schedule_items WHERE id = ?", [item_id])
    if not rows or rows[0]["cancelled_at"]:
        raise HubError("mục lịch không có / no such schedule item")
    row = rows[0]
    if row["state"] != "draft":
        raise HubError("mục này đã được quyết định / this item was already decided")
    if row["drafted_by"] == user.id:
        raise HubError("không tự duyệt bản nháp của mình / nobody approves their own draft")
    if not approve and not note.strip():
        raise HubError("cần lý do từ chối / a rejection needs a reason")
    if approve:  # it must still be able to play
        admin.first_start(parse_iso(row["start"]), rrule=row["rrule"],
                          valid_from=parse_iso(row["valid_from"]) if row["valid_from"] else None,
                          valid_until=parse_iso(row["valid_until"]) if row["valid_until"]
                          else None, late_start_s=row["late_start_s"], now=now)
    with store.lock, write(store.db):
        n = store.db.execute(
            "UPDATE schedule_items SET state = ?, decided_by = ?, decision_note = ?, "
            "approved_by = ?, approved_at = ? WHERE id = ? AND state = 'draft'",
            ["approved" if approve else "rejected", user.id, note.strip()[:500],
             user.id if approve else None, iso(now) if approve else None, item_id]).rowcount
        if n != 1:
            raise HubError("mục này đã được quyết định / this item was already decided")
        if approve and row.get("replaces"):  # an edit: the old version leaves with it
            _retire(store, row["replaces"], now)
        audit(store, user.id, "schedule.approve" if approve else "schedule.reject", item_id,
              note.strip()[:500], ip, now)
    return store.q("SELECT * FROM schedule_items WHERE id = ?", [item_id])[0]


def may_cancel(store: HubStore, user: User, item_id: str) -> bool:
    """Approvers and duty officers cancel; an author may withdraw their own draft."""
    if user.may("schedule.cancel"):
        return True
    rows = store.q("SELECT state, drafted_by FROM schedule_items WHERE id = ?", [item_id])
    return bool(rows) and rows[0]["state"] != "approved" and rows[0]["drafted_by"] == user.id \
        and user.may("schedule.draft")


def cancel(cfg: HubConfig, store: HubStore, item_id: str, *, user: User, ip: str,
           now: datetime) -> dict[str, Any]:
    """A draft is withdrawn; an approved item leaves every bundle and is stopped where it is
    on air (``hub.admin.cancel_item``)."""
    rows = store.q("SELECT * FROM schedule_items WHERE id = ? AND cancelled_at IS NULL",
                   [item_id])
    if not rows:
        raise HubError("mục lịch không có hoặc đã hủy / no such item, or already cancelled")
    row = rows[0]
    if not may_cancel(store, user, item_id) or not target_visible(store, user, row["target"]):
        raise PermissionError(item_id)
    with store.lock, write(store.db):
        if row["state"] == "approved":
            admin.cancel_item(cfg, store, item_id, now=now, by=user.id)
        else:
            store.db.execute("UPDATE schedule_items SET cancelled_at = ? WHERE id = ?",
                             [iso(now), item_id])
        audit(store, user.id, "schedule.cancel", item_id, row["title"], ip, now)
    return row


# -- readiness -----------------------------------------------------------------------------

def readiness(store: HubStore, user: User, day_from: date, day_to: date,
              now: datetime, quiet: QuietHours | None = None) -> dict[str, Any]:
    """For each station with something to play in [day_from, day_to]: whether it holds the
    latest programme version and all the audio those items need, and its health. Stations
    that are not ready come first: the list to phone."""
    lo, _ = local_day(day_from)
    _, hi = local_day(day_to)
    seen = visible_stations(store, user)
    rows = _item_rows(store)
    by_station: dict[str, dict[str, Any]] = {}
    station_groups: dict[str, list[str]] = {}
    for sid, gid in store.db.execute("SELECT station_id, group_id FROM station_groups"):
        station_groups.setdefault(sid, []).append(gid)
    all_ids = [r[0] for r in store.db.execute("SELECT id FROM stations ORDER BY id")]
    for r in rows:
        item = item_from_row(r, r["content_ms"])
        n = len(occurrences([item], lo, hi, quiet=quiet))
        if not n:
            continue
        for sid in all_ids:
            if seen is not None and sid not in seen:
                continue
            if targets(r["target"], sid, station_groups.get(sid, [])):
                e = by_station.setdefault(sid, {"plays": 0, "content": set(), "items": []})
                e["plays"] += n
                e["content"].add(r["content_sha"])
                e["items"].append(r["title"])
    out = []
    fresh = admin.hub_view(store, now)["fresh"]
    for sid, e in sorted(by_station.items()):
        st = store.q(f"{BOARD_SQL} WHERE s.id = ?", [sid])[0]
        missing_all = set(m for m in (st["missing"] or "").split(",") if m)
        behind = (st["active_version"] or 0) < (st["desired"] or 0)
        missing = sorted(e["content"] & missing_all)
        health = admin._health(st, now)
        problems = []
        if not st["online"] or not fresh:
            problems.append("mất kết nối" if fresh else "không rõ (hub không chạy)")
        if behind:
            problems.append(f"chưa có bản phát mới (trạm v{st['active_version'] or 0}, "
                            f"hub v{st['desired'] or 0})")
        if missing:
            problems.append(f"thiếu {len(missing)} tệp âm thanh")
        if health in ("fault", "degraded", "silent"):
            problems.append({"fault": "thiết bị lỗi", "degraded": "thiết bị suy giảm",
                             "silent": "mất nhịp tim"}[health])
        if st["clock_trusted"] == 0:
            problems.append("đồng hồ sai")
        if st["open_alarms"]:
            problems.append(f"{st['open_alarms']} cảnh báo đang mở")
        out.append({"id": sid, "name": st["name"], "plays": e["plays"],
                    "items": sorted(set(e["items"])), "online": bool(st["online"]),
                    "version": (st["active_version"] or 0, st["desired"] or 0),
                    "missing": missing, "health": health, "problems": problems,
                    "ready": not problems})
    out.sort(key=lambda r: (r["ready"], r["id"]))
    return {"stations": out, "ready": sum(r["ready"] for r in out), "total": len(out)}


# -- alarms --------------------------------------------------------------------------------

def alarms(store: HubStore, user: User, *, open_only: bool = True,
           unacked: bool = False) -> list[dict[str, Any]]:
    seen = visible_stations(store, user)
    where = ["1 = 1"]
    args: list[Any] = []
    if open_only:
        where.append("a.cleared_at IS NULL")
    if unacked:
        where.append("a.acked_at IS NULL")
    if seen is not None:
        where.append(f"a.station_id IN ({','.join('?' * len(seen))})" if seen else "0")
        args += sorted(seen)
    # the hub's own alarms (its certificates) have no station: shown as "Hub"
    return store.q(f"SELECT a.*, coalesce(s.name, 'Hub') AS name FROM alarms a LEFT JOIN "
                   f"stations s ON s.id = a.station_id WHERE {' AND '.join(where)} "
                   f"ORDER BY a.raised_at DESC LIMIT 500", args)


def ack_alarm(store: HubStore, alarm_id: int, note: str, *, user: User, ip: str,
              now: datetime) -> None:
    rows = store.q("SELECT * FROM alarms WHERE id = ?", [alarm_id])
    if not rows:
        raise HubError("cảnh báo không có / no such alarm")
    sid = rows[0]["station_id"]
    own = may_station(store, user, sid) if store.station(sid) else \
        visible_stations(store, user) is None  # the hub's own alarms: not a commune's
    if not own:
        raise PermissionError(sid)
    with store.lock, write(store.db):
        if not store.ack_alarm(alarm_id, user.id, note.strip()[:500], now):
            raise HubError("cảnh báo đã được xác nhận / the alarm was already acknowledged")
        audit(store, user.id, "alarm.ack", f"{rows[0]['station_id']}:{rows[0]['code']}",
              note.strip()[:500], ip, now)


# -- commands and alerts -------------------------------------------------------------------

def station_command(cfg: HubConfig, store: HubStore, sid: str, action: str, body: dict, *,
                    user: User, ip: str, now: datetime) -> dict[str, Any]:
    if not may_station(store, user, sid):
        raise PermissionError(sid)
    with store.lock, write(store.db):
        cmd = admin.issue_command(cfg, store, action, f"station:{sid}", body, now=now,
                                  by=user.id)
        audit(store, user.id, f"command.{action}", sid, json.dumps(body, ensure_ascii=False),
              ip, now)
    return cmd


def send_alert(cfg: HubConfig, store: HubStore, content: dict, target: str, *, user: User,
               ip: str, now: datetime, repeat: int = 1, gap_s: int = 0) -> dict[str, Any]:
    """A khẩn cấp play to ``target``, sent at once and flagged for review afterwards."""
    if not target_visible(store, user, target):
        raise PermissionError(target)
    body = admin.play_body(content, priority=Priority.KHAN_CAP, repeat=repeat, gap_s=gap_s)
    with store.lock, write(store.db):
        cmd = admin.issue_command(cfg, store, "play", target, body, now=now, by=user.id)
        store.db.execute("UPDATE commands SET review = 'pending' WHERE id = ?", [cmd["id"]])
        audit(store, user.id, "alert.send", target, f"{content['title']} ×{repeat}", ip, now)
    return store.command(cmd["id"])


def recent_plays(store: HubStore, limit: int = 10) -> list[dict[str, Any]]:
    return store.q("SELECT * FROM commands WHERE action = 'play' ORDER BY issued_at DESC "
                   "LIMIT ?", [limit])


def alerts_to_review(store: HubStore) -> list[dict[str, Any]]:
    return store.q("SELECT * FROM commands WHERE review = 'pending' ORDER BY issued_at DESC")


def review_alert(store: HubStore, cid: str, *, user: User, ip: str, now: datetime,
                 note: str = "") -> None:
    with store.lock, write(store.db):
        n = store.db.execute("UPDATE commands SET review = 'reviewed', reviewed_by = ?, "
                             "reviewed_at = ? WHERE id = ? AND review = 'pending'",
                             [user.id, iso(now), cid]).rowcount
        if n != 1:
            raise HubError("không có tin khẩn cấp chờ xem lại / no alert waiting for review")
        audit(store, user.id, "alert.review", cid, note[:500], ip, now)


# -- reports -------------------------------------------------------------------------------



def compliance(store: HubStore, user: User, day_from: date, day_to: date, now: datetime,
               quiet: QuietHours | None = None) -> dict[str, Any]:
    """Per station and commune for [day_from, day_to] (local days): occurrences scheduled
    (from the approved items, while the station was enrolled), played, missed with reasons,
    and not reported; uptime (the share of the period without an open ``offline`` alarm);
    incidents with how fast they were acknowledged; plays per day for the chart."""
    lo, _ = local_day(day_from)
    _, hi = local_day(day_to)
    hi = min(hi, max(now, lo))
    seen = visible_stations(store, user)
    stations = [s for s in store.q("SELECT id, name, created_at FROM stations ORDER BY id")
                if seen is None or s["id"] in seen]
    groups: dict[str, list[str]] = {}
    for sid, gid in store.db.execute("SELECT station_id, group_id FROM station_groups"):
        groups.setdefault(sid, []).append(gid)
    communes = {r["id"]: r["name"] for r in store.q(
        "SELECT id, name FROM groups WHERE kind = 'commune'")}
    # scheduled: each item's occurrences once, then counted for every station it targets
    per_item = []
    for r in _item_rows(store):
        item = item_from_row(r, r["content_ms"])
        starts = sorted(o.start for o in occurrences([item], lo, hi, quiet=quiet)
                        if o.start < hi)
        if starts:
            per_item.append((r["target"], starts))
    # played and missed from the per-day roll-up (local days), aggregated in SQL
    d_from, d_to = day_from.isoformat(), min(day_to, today(now)).isoformat()
    stats: dict[str, dict[str, Any]] = {}
    for sid, played, missed in store.db.execute(
            "SELECT station_id, sum(played), sum(missed) FROM play_days WHERE day >= ? AND "
            "day <= ? GROUP BY station_id", [d_from, d_to]):
        stats[sid] = {"played": played, "missed": missed, "reasons": {}}
    for sid, reason, n in store.db.execute(
            "SELECT station_id, reason, sum(n) FROM play_reasons WHERE day >= ? AND day <= ? "
            "GROUP BY station_id, reason", [d_from, d_to]):
        if sid in stats:
            stats[sid]["reasons"][reason] = n
    if seen is not None:
        stats = {k: v for k, v in stats.items() if k in seen}
        marks = ",".join("?" * len(seen)) or "''"
        daily_rows = store.db.execute(
            f"SELECT day, sum(played), sum(missed) FROM play_days WHERE day >= ? AND day <= ? "
            f"AND station_id IN ({marks}) GROUP BY day ORDER BY day", [d_from, d_to, *sorted(seen)])
    else:
        daily_rows = store.db.execute(
            "SELECT day, sum(played), sum(missed) FROM play_days WHERE day >= ? AND day <= ? "
            "GROUP BY day ORDER BY day", [d_from, d_to])
    daily = {day: {"played": p, "missed": m} for day, p, m in daily_rows}
    offline = _offline_seconds(store, lo, hi)
    span = max(1.0, (hi - lo).total_seconds())
    out_rows = []
    for st in stations:
        sid = st["id"]
        enrolled = parse_iso(st["created_at"])
        scheduled = sum(len(starts) - bisect_left(starts, enrolled)
                        for target, starts in per_item
                        if targets(target, sid, groups.get(sid, [])))
        s = stats.get(sid, {"played": 0, "missed": 0, "reasons": {}})
        commune = next((g for g in groups.get(sid, []) if g in communes), "")
        own_span = max(1.0, (hi - max(lo, enrolled)).total_seconds())
        out_rows.append({
            "id": sid, "name": st["name"], "commune": communes.get(commune, commune),
            "scheduled": scheduled, "played": s["played"], "missed": s["missed"],
            "unreported": max(0, scheduled - s["played"] - s["missed"]),
            "reasons": s["reasons"],
            "rate": round(100 * s["played"] / scheduled, 1) if scheduled else None,
            "uptime": round(100 * max(0.0, 1 - offline.get(sid, 0.0) / min(span, own_span)), 1)})
    by_commune: dict[str, dict[str, Any]] = {}
    for r in out_rows:
        c = by_commune.setdefault(r["commune"] or "—", {"commune": r["commune"] or "—",
                                                        "stations": 0, "scheduled": 0,
                                                        "played": 0, "missed": 0})
        c["stations"] += 1
        for k in ("scheduled", "played", "missed"):
            c[k] += r[k]
    incidents = [a for a in store.q(
        "SELECT a.*, s.name FROM alarms a JOIN stations s ON s.id = a.station_id WHERE "
        "a.raised_at >= ? AND a.raised_at < ? ORDER BY a.raised_at", [iso(lo), iso(hi)])
        if seen is None or a["station_id"] in seen]
    for a in incidents:
        a["ack_after_s"] = ((parse_iso(a["acked_at"]) - parse_iso(a["raised_at"]))
                            .total_seconds() if a["acked_at"] else None)
    return {"from": day_from, "to": day_to, "stations": out_rows,
            "communes": sorted(by_commune.values(), key=lambda c: c["commune"]),
            "incidents": incidents, "daily": sorted(daily.items())}


def _offline_seconds(store: HubStore, lo: datetime, hi: datetime) -> dict[str, float]:
    out: dict[str, float] = {}
    for sid, raised, cleared in store.db.execute(
            "SELECT station_id, raised_at, cleared_at FROM alarms WHERE code = 'offline' AND "
            "raised_at < ? AND (cleared_at IS NULL OR cleared_at > ?)", [iso(hi), iso(lo)]):
        a = max(lo, parse_iso(raised))
        b = min(hi, parse_iso(cleared)) if cleared else hi
        out[sid] = out.get(sid, 0.0) + max(0.0, (b - a).total_seconds())
    return out


COMPLIANCE_COLUMNS = [("id", "Mã trạm"), ("name", "Tên trạm"), ("commune", "Xã"),
                      ("scheduled", "Theo lịch"), ("played", "Đã phát"), ("missed", "Bỏ lỡ/lỗi"),
                      ("unreported", "Chưa báo cáo"), ("rate", "Tỷ lệ phát (%)"),
                      ("uptime", "Thời gian hoạt động (%)"), ("reasons", "Lý do")]


def _cell(r: dict[str, Any], key: str) -> Any:
    v = r[key]
    if key == "reasons":
        return "; ".join(f"{k} ×{n}" for k, n in sorted(v.items()))
    return "" if v is None else v


def compliance_csv(report: dict[str, Any]) -> bytes:
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow([label for _, label in COMPLIANCE_COLUMNS])
    for r in report["stations"]:
        w.writerow([_cell(r, k) for k, _ in COMPLIANCE_COLUMNS])
    return ("\ufeff" + buf.getvalue()).encode("utf-8")  # BOM: Excel opens it as UTF-8


def compliance_xlsx(report: dict[str, Any]) -> bytes:
    from openpyxl import Workbook
    from openpyxl.styles import Font
    wb = Workbook()
    ws = wb.active
    ws.title = "Theo trạm"
    ws.append([f"Báo cáo phát thanh từ {report['from']:%d/%m/%Y} đến {report['to']:%d/%m/%Y}"])
    ws.append([label for _, label in COMPLIANCE_COLUMNS])
    for c in ws[2]:
        c.font = Font(bold=True)
    for r in report["stations"]:
        ws.append([_cell(r, k) for k, _ in COMPLIANCE_COLUMNS])
    wc = wb.create_sheet("Theo xã")
    wc.append(["Xã", "Số trạm", "Theo lịch", "Đã phát", "Bỏ lỡ/lỗi"])
    for c in report["communes"]:
        wc.append([c["commune"], c["stations"], c["scheduled"], c["played"], c["missed"]])
    wi = wb.create_sheet("Sự cố")
    wi.append(["Trạm", "Cảnh báo", "Chi tiết", "Bắt đầu", "Kết thúc", "Xác nhận bởi",
               "Xác nhận sau (phút)"])
    for a in report["incidents"]:
        wi.append([a["station_id"], a["code"], a["detail"], _local(a["raised_at"]),
                   _local(a["cleared_at"]), a["acked_by"] or "",
                   round(a["ack_after_s"] / 60, 1) if a["ack_after_s"] is not None else ""])
    buf = io.BytesIO()
    wb.save(buf)
    return buf.getvalue()


def _local(value: str | None) -> str:
    return parse_iso(value).astimezone(TZ).strftime("%d/%m/%Y %H:%M") if value else ""


def overview(store: HubStore, user: User, now: datetime,
             quiet: QuietHours | None = None) -> dict[str, Any]:
    """Tổng quan: the fleet at a glance, open alarms, today's programme, and the readiness of
    the next heightened period (the next big day) if one is set."""
    b = board(store, user, now)
    cal = calendar(store, user, today(now), 1, quiet)[0]["entries"]
    nxt = store.q("SELECT * FROM heightened WHERE end > ? ORDER BY start LIMIT 1", [iso(now)])
    ready = None
    if nxt:
        h = nxt[0]
        d0 = parse_iso(h["start"]).astimezone(TZ).date()
        d1 = parse_iso(h["end"]).astimezone(TZ).date()
        r = readiness(store, user, d0, d1, now, quiet)
        ready = {"period": h, "from": d0, "to": d1, "ready": r["ready"], "total": r["total"]}
    return {"counts": b["counts"], "fresh": b["fresh"],
            "alarms": alarms(store, user)[:20], "today": cal, "next": ready,
            # province-wide, so not for a user who sees only some communes
            "refused": [] if user.communes else store.refusal_summary(now - timedelta(days=1))}


# -- content -------------------------------------------------------------------------------

MAX_UPLOAD = 50 * 2**20


def add_upload(store: HubStore, path, *, filename: str, title: str, tags: str, user: User,
               ip: str, now: datetime) -> dict[str, Any]:
    """An uploaded file: its type sniffed by ffprobe (a file without audio is refused with a
    clear message), prepared (loudness, Opus), stored; the preparation's measurements and
    warnings are returned for the page."""
    from audio import AudioError
    from audio.prepare import probe
    try:
        probe(path)
    except AudioError:
        raise HubError(f"tệp “{filename}” không phải âm thanh hoặc đã hỏng / “{filename}” is "
                       f"not an audio file, or it is corrupt") from None
    c = admin.add_content_file(store, path, title=title, now=now)
    _tag(store, c["sha"], tags, user, ip, now, "content.upload", filename)
    return c


def add_speech(store: HubStore, text: str, *, title: str, tags: str, engine: str, user: User,
               ip: str, now: datetime) -> dict[str, Any]:
    c = admin.add_content_text(store, text, title=title, now=now, engine=engine)
    _tag(store, c["sha"], tags, user, ip, now, "content.tts", c.get("engine", engine))
    return c


def _tag(store: HubStore, sha: str, tags: str, user: User, ip: str, now: datetime,
         action: str, detail: str) -> None:
    clean = ",".join(t.strip() for t in tags.split(",") if t.strip())[:300]
    with store.lock, write(store.db):
        store.db.execute("UPDATE content SET tags = coalesce(?, tags), added_by = coalesce("
                         "added_by, ?) WHERE sha = ?", [clean or None, user.id, sha])
        audit(store, user.id, action, sha[:12], detail, ip, now)


def content_list(store: HubStore, text: str = "") -> list[dict[str, Any]]:
    where, args = "1 = 1", []
    if text:
        where = "(c.title LIKE ? OR c.tags LIKE ? OR c.text LIKE ? OR c.sha LIKE ?)"
        args = [f"%{text}%"] * 3 + [f"{text.lower()}%"]
    return store.q(f"SELECT c.*, (SELECT count(*) FROM schedule_items i WHERE i.content_sha = "
                   f"c.sha AND i.cancelled_at IS NULL) AS uses FROM content c WHERE {where} "
                   f"ORDER BY c.created_at DESC LIMIT 300", args)


def content_uses(store: HubStore, sha: str) -> list[dict[str, Any]]:
    return store.q("SELECT id, title, target, state, start, rrule FROM schedule_items WHERE "
                   "content_sha = ? AND cancelled_at IS NULL ORDER BY start", [sha])
