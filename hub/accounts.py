"""Console accounts: roles and what each may do, argon2 passwords, login throttling and
lockout, and the append-only audit log. The web console and `loaxa hub user` both use it;
neither holds a rule of its own.
"""
from __future__ import annotations

import hashlib
import re
import secrets
import unicodedata
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError

from protocol.clock import iso
from protocol.storage import write

from .store import HubStore

ROLES = {  # id -> Vietnamese name, English name
    "admin": ("Quản trị", "administrator"),
    "editor": ("Biên tập", "editor"),
    "approver": ("Phê duyệt", "approver"),
    "duty": ("Trực ban", "duty officer"),
    "commune": ("Xã", "commune operator"),
    "viewer": ("Xem", "read only"),
}

# action -> roles allowed. A commune operator's actions are further bound to the stations of
# its communes (``may_station``).
PERMISSIONS: dict[str, frozenset[str]] = {k: frozenset(v) for k, v in {
    "view": ROLES,                                   # every page, within a commune's stations
    "content.add": {"editor"},
    "schedule.draft": {"editor"},
    "schedule.approve": {"approver"},
    "schedule.cancel": {"approver", "duty"},
    "alert.send": {"duty", "approver"},
    "alert.review": {"approver"},
    "station.command": {"duty", "commune"},          # play now, stop, volume, self-test
    "alarm.ack": {"duty", "commune"},
    "report.export": ROLES,
    "users.manage": {"admin"},
    "settings.manage": {"admin"},
    "audit.view": {"admin", "approver"},
}.items()}

MAX_FAILURES = 5                 # consecutive wrong passwords that lock an account
THROTTLE_WINDOW = timedelta(minutes=5)
THROTTLE_PER_IP = 10             # failed logins from one address in the window
MIN_PASSWORD = 10
USER_RE = re.compile(r"^[a-z0-9][a-z0-9._-]{1,31}$")
_hasher = PasswordHasher()


class AccountError(Exception):
    """A refused account operation; the message is Vietnamese first, then English."""


@dataclass(frozen=True)
class User:
    id: str
    name: str
    role: str
    communes: tuple[str, ...]
    must_change: bool

    def may(self, action: str) -> bool:
        return self.role in PERMISSIONS[action]

    @property
    def role_vi(self) -> str:
        return ROLES[self.role][0]


def _user(row: dict[str, Any]) -> User:
    return User(row["id"], row["name"], row["role"],
                tuple(c for c in (row["communes"] or "").split(",") if c),
                bool(row["must_change"]))


def generate_password() -> str:
    """A password to hand over once: 16 characters from an alphabet without look-alikes."""
    alphabet = "abcdefghijkmnpqrstuvwxyzABCDEFGHJKLMNPQRSTUVWXYZ23456789"
    return "".join(secrets.choice(alphabet) for _ in range(16))


def get_user(store: HubStore, uid: str) -> User | None:
    rows = store.q("SELECT * FROM users WHERE id = ? AND coalesce(disabled, 0) = 0", [uid])
    return _user(rows[0]) if rows else None


def session_stamp(store: HubStore, uid: str) -> str:
    """What a session cookie carries besides the user id: a digest of the password hash, so
    changing or resetting the password ends every other session (nothing secret leaks)."""
    rows = store.q("SELECT hash FROM users WHERE id = ?", [uid])
    return _stamp(rows[0]["hash"]) if rows else ""


def _stamp(hashed: str) -> str:
    return hashlib.sha256(hashed.encode()).hexdigest()[:16]


def session_user(store: HubStore, uid: str | None, stamp: str | None) -> User | None:
    """The user a session belongs to, or None: unknown, disabled, locked, or a session from
    before a password change."""
    if not uid:
        return None
    rows = store.q("SELECT * FROM users WHERE id = ?", [uid])
    if not rows or rows[0]["disabled"] or rows[0]["locked_at"]:
        return None
    if stamp != _stamp(rows[0]["hash"]):
        return None
    return _user(rows[0])


def users(store: HubStore) -> list[dict[str, Any]]:
    return store.q("SELECT id, name, role, communes, must_change, failures, locked_at, "
                   "disabled, created_at FROM users ORDER BY id")


def add_user(store: HubStore, uid: str, *, name: str, role: str, now: datetime,
             communes: tuple[str, ...] = (), by: str = "cli", ip: str = "") -> str:
    """A new account with a generated password, to be changed at first login; returns it."""
    uid = uid.strip().lower()
    if not USER_RE.match(uid):
        raise AccountError("tên đăng nhập 2-32 ký tự a-z, 0-9, . _ - / user name: 2-32 "
                           "characters a-z, 0-9, . _ -")
    if role not in ROLES:
        raise AccountError(f"vai trò {role!r} không có / unknown role (use "
                           f"{', '.join(ROLES)})")
    if role == "commune" and not communes:
        raise AccountError("tài khoản xã cần ít nhất một xã / a commune account needs its "
                           "communes")
    for c in communes:
        if not store.group_exists(c):
            raise AccountError(f"xã {c!r} không có / no commune or group {c!r}")
    name = unicodedata.normalize("NFC", name.strip()) or uid
    password = generate_password()
    with store.lock, write(store.db):
        if store.q("SELECT 1 FROM users WHERE id = ?", [uid]):
            raise AccountError(f"tài khoản {uid!r} đã có / user {uid!r} already exists")
        store.db["users"].insert({"id": uid, "name": name, "role": role,
                                  "communes": ",".join(communes),
                                  "hash": _hasher.hash(password), "must_change": 1,
                                  "failures": 0, "locked_at": None, "disabled": 0,
                                  "created_at": iso(now), "password_at": None})
        audit(store, by, "user.add", uid, f"{role} {','.join(communes)}".strip(), ip, now)
    return password


def reset_password(store: HubStore, uid: str, *, now: datetime, by: str, ip: str = "") -> str:
    """A new generated password (to change at next login); also unlocks the account."""
    password = generate_password()
    with store.lock, write(store.db):
        n = store.db.execute("UPDATE users SET hash = ?, must_change = 1, failures = 0, "
                             "locked_at = NULL WHERE id = ?",
                             [_hasher.hash(password), uid]).rowcount
        if not n:
            raise AccountError(f"tài khoản {uid!r} không có / no user {uid!r}")
        audit(store, by, "user.reset_password", uid, "", ip, now)
    return password


def set_locked(store: HubStore, uid: str, locked: bool, *, now: datetime, by: str,
               ip: str = "") -> None:
    with store.lock, write(store.db):
        n = store.db.execute("UPDATE users SET locked_at = ?, failures = 0 WHERE id = ?",
                             [iso(now) if locked else None, uid]).rowcount
        if not n:
            raise AccountError(f"tài khoản {uid!r} không có / no user {uid!r}")
        audit(store, by, "user.lock" if locked else "user.unlock", uid, "", ip, now)


def check_password_rules(password: str, uid: str) -> None:
    if len(password) < MIN_PASSWORD:
        raise AccountError(f"mật khẩu cần ít nhất {MIN_PASSWORD} ký tự / a password needs at "
                           f"least {MIN_PASSWORD} characters")
    if uid.lower() in password.lower():
        raise AccountError("mật khẩu không được chứa tên đăng nhập / the password must not "
                           "contain the user name")


def change_password(store: HubStore, uid: str, old: str, new: str, *, now: datetime,
                    ip: str = "") -> None:
    rows = store.q("SELECT hash FROM users WHERE id = ?", [uid])
    if not rows or not _verify(rows[0]["hash"], old):
        raise AccountError("mật khẩu hiện tại không đúng / the current password is wrong")
    if new == old:
        raise AccountError("mật khẩu mới phải khác mật khẩu cũ / the new password must differ")
    check_password_rules(new, uid)
    with store.lock, write(store.db):
        store.db.execute("UPDATE users SET hash = ?, must_change = 0, password_at = ? "
                         "WHERE id = ?", [_hasher.hash(new), iso(now), uid])
        audit(store, uid, "user.change_password", uid, "", ip, now)


def _verify(hashed: str, password: str) -> bool:
    try:
        return _hasher.verify(hashed, password)
    except (VerifyMismatchError, VerificationError, InvalidHashError):
        return False


class LoginRefused(AccountError):
    def __init__(self, message: str, *, throttled: bool = False) -> None:
        super().__init__(message)
        self.throttled = throttled


def login(store: HubStore, uid: str, password: str, *, ip: str, now: datetime) -> User:
    """The user if the password is right. Refused: an unknown user or wrong password (one
    message for both), a locked or disabled account, or an address with too many recent
    failures (throttled: it must wait). Every attempt is recorded; the fifth wrong password
    in a row locks the account until an administrator unlocks it."""
    uid = (uid or "").strip().lower()
    since = iso(now - THROTTLE_WINDOW)
    recent = store.db.execute("SELECT count(*) FROM login_attempts WHERE ip = ? AND at >= ? "
                              "AND ok = 0", [ip, since]).fetchone()[0]
    if recent >= THROTTLE_PER_IP:
        raise LoginRefused("quá nhiều lần đăng nhập sai từ địa chỉ này; thử lại sau 5 phút / "
                           "too many failed logins from this address; try again in 5 minutes",
                           throttled=True)
    rows = store.q("SELECT * FROM users WHERE id = ?", [uid])
    row = rows[0] if rows else None
    ok = bool(row) and _verify(row["hash"], password or "")
    refusal = None
    # the attempt, the failure count and the audit line are committed before the refusal
    # is raised: a refusal inside the transaction would roll them back
    with store.lock, write(store.db):
        store.db.execute("DELETE FROM login_attempts WHERE at < ?",
                         [iso(now - timedelta(days=1))])  # the throttle looks back 5 minutes
        store.db["login_attempts"].insert({"at": iso(now), "ip": ip, "user": uid[:64],
                                           "ok": int(ok)})
        if row is None:
            refusal = "sai tên đăng nhập hoặc mật khẩu / wrong user name or password"
        elif row["disabled"]:
            refusal = "tài khoản đã bị vô hiệu / this account is disabled"
        elif row["locked_at"]:
            audit(store, uid, "login.refused_locked", uid, "", ip, now)
            refusal = ("tài khoản đang bị khóa; liên hệ quản trị / this account is locked; "
                       "ask an administrator")
        elif not ok:
            failures = (row["failures"] or 0) + 1
            locked = failures >= MAX_FAILURES
            store.db.execute("UPDATE users SET failures = ?, locked_at = ? WHERE id = ?",
                             [failures, iso(now) if locked else None, uid])
            if locked:
                audit(store, uid, "user.locked", uid, f"{failures} lần sai liên tiếp", ip, now)
                refusal = ("sai mật khẩu quá nhiều lần: tài khoản đã bị khóa / too many wrong "
                           "passwords: the account is now locked")
            else:
                refusal = "sai tên đăng nhập hoặc mật khẩu / wrong user name or password"
        else:
            store.db.execute("UPDATE users SET failures = 0 WHERE id = ?", [uid])
            audit(store, uid, "login", uid, "", ip, now)
    if refusal:
        raise LoginRefused(refusal)
    return _user(row)


# -- audit ----------------------------------------------------------------------------------

def audit(store: HubStore, user: str, action: str, target: str, detail: str, ip: str,
          now: datetime) -> None:
    """Append one line to the audit log (inside the caller's transaction when there is one,
    so an action and its record commit together)."""
    with store.lock, write(store.db):
        store.db.execute("INSERT INTO audit(at, user, action, target, detail, ip) "
                         "VALUES (?, ?, ?, ?, ?, ?)",
                         [iso(now), user, action, str(target)[:200], str(detail)[:1000], ip])


def audit_rows(store: HubStore, *, text: str = "", user: str = "", since: str | None = None,
               until: str | None = None, limit: int = 500) -> list[dict[str, Any]]:
    where, args = ["1 = 1"], []
    if text:
        where.append("(action LIKE ? OR target LIKE ? OR detail LIKE ?)")
        args += [f"%{text}%"] * 3
    if user:
        where.append("user = ?")
        args.append(user)
    if since:
        where.append("at >= ?")
        args.append(since)
    if until:
        where.append("at < ?")
        args.append(until)
    return store.q(f"SELECT * FROM audit WHERE {' AND '.join(where)} ORDER BY id DESC "
                   f"LIMIT ?", [*args, limit])
