"""The agent's half of an update (docs/update.md): take the signed `update` command, fetch the
release over the audio transfer (chunked, hash-checked), install it into its slot, hand over
to the launcher; in the new version, check health and confirm; in the old one after a
rollback, report why.

The launcher (station_agent/launcher.py) does the switching; this side only writes the
``switch`` and ``rollback`` requests and the ``confirmed`` result (station_agent/slots.py).
"""
from __future__ import annotations

import logging
import os
from typing import Any, Callable

from protocol import chunks
from protocol.envelope import KeyRing, Refused, public_from_text, verify

from . import slots as S

log = logging.getLogger("loaxa.update")
RELEASE_SENDER = "release"
HEALTH_S = (30, 3600)  # bounds of the time a new version has to prove itself


class UpdateRefused(Exception):
    pass


def check_body(b: dict[str, Any]) -> None:
    """Shape of an `update` command (its release is checked against the release key later)."""
    if not isinstance(b.get("release"), str) or len(b["release"]) > 64 * 1024:
        raise ValueError("update without a signed release manifest")
    if not (isinstance(b.get("content"), str) and chunks.SHA_RE.match(b["content"])):
        raise ValueError("update without the release's SHA-256")
    for key, (lo, hi) in (("size", (1, 1 << 31)), ("health_s", HEALTH_S)):
        v = b.get(key)
        if not isinstance(v, int) or isinstance(v, bool) or not lo <= v <= hi:
            raise ValueError(f"update field {key!r} must be an integer {lo}-{hi}")


def read_release(raw: str, release_public: str | None) -> dict[str, Any]:
    """The manifest, once its signature by the hub's release key checks out."""
    if not release_public:
        raise UpdateRefused("this station trusts no release key ([keys] release_public in "
                            "station.toml): enrol it again from the hub")
    ring = KeyRing()
    ring.add(public_from_text(release_public), RELEASE_SENDER)
    try:
        env = verify(raw.encode("utf-8"), ring, now=None, kind="release", sender=RELEASE_SENDER)
    except Refused as r:
        raise UpdateRefused(f"the release is not signed by the hub's release key: {r}") from None
    m = env.body
    wheels = m.get("wheels")
    if not (isinstance(m.get("version"), str) and S.VERSION_RE.match(m["version"])
            and isinstance(m.get("sha"), str) and isinstance(m.get("size"), int)
            and isinstance(wheels, list) and wheels
            and all(isinstance(w, dict) and isinstance(w.get("name"), str)
                    and S.WHEEL_RE.match(w["name"]) and isinstance(w.get("sha256"), str)
                    and chunks.SHA_RE.match(w["sha256"]) for w in wheels)):
        raise UpdateRefused("the signed release manifest is malformed")
    return m


class Updater:
    def __init__(self, *, cfg: Any, store: Any, clock: Any, runner: Any, commands: Any,
                 connected: Callable[[], bool], bundle_ok: Callable[[], tuple[bool, str]],
                 expect_push: Callable[[str, int], None], exit_for_switch: Callable[[], None],
                 air_free: Callable[[], bool] = lambda: True):
        self.cfg, self.store, self.clock, self.runner = cfg, store, clock, runner
        self.commands = commands
        self.slots = S.Slots(cfg.data_dir / "slots")
        self.version = S.running_version()
        self.slot = os.environ.get("LOAXA_SLOT", S.BASE)
        self.launched = os.environ.get("LOAXA_LAUNCHER") == "1"
        self.connected, self.bundle_ok = connected, bundle_ok
        self.expect_push, self.exit_for_switch = expect_push, exit_for_switch
        self.air_free = air_free
        self.st: dict[str, Any] = self.slots.state() if self.slots.root.is_dir() else {}
        self._selftest: str | None = None   # None: not started; "running"; or its outcome
        self._selftest_detail = ""
        self._bundle: str | None = None
        prev = runner.on_record

        def on_record(key: str, item_id: str, outcome: str, detail: str) -> None:
            prev(key, item_id, outcome, detail)
            if item_id == self._selftest_item and outcome != "started":
                self._selftest, self._selftest_detail = outcome, detail
        runner.on_record = on_record

    @property
    def _selftest_item(self) -> str:
        return f"upd-{self.st.get('cmd', '')}"

    @property
    def in_progress(self) -> bool:
        return bool(self.st.get("phase"))

    def start(self) -> None:
        """After a (re)start: a fetch in progress goes on (the rest resumes in ``step``)."""
        if self.st.get("phase") == S.FETCHING:
            self.commands.extra_wanted[self.st["sha"]] = {"size": self.st["size"]}

    # -- the command ------------------------------------------------------------------------
    def begin(self, cid: str, body: dict[str, Any]) -> tuple[bool, str]:
        """An accepted `update` command: (done already, what it started), or UpdateRefused
        with why not."""
        if not self.launched:
            raise UpdateRefused("this agent is not run by `loaxa agent launch` (the systemd "
                                "unit does that): it cannot switch versions")
        m = read_release(body["release"], self.cfg.release_public)
        if m["sha"] != body["content"] or m["size"] != body["size"]:
            raise UpdateRefused("the command names other bytes than its signed release")
        v = m["version"]
        if v == self.version:
            return True, f"already running {v}"
        if S.version_key(v) < S.version_key(self.version) and not body.get("downgrade"):
            raise UpdateRefused(f"{v} is older than the running {self.version} (a downgrade "
                                "must be asked for: `hub update --downgrade`)")
        if self.st.get("phase") == S.FETCHING:  # not switched yet: the newer command wins
            self.commands.extra_wanted.pop(self.st["sha"], None)
            self.store.command_progress(self.st["cmd"], "failed", f"superseded by the update "
                                        f"to {v} ({cid})", self.clock.now())
            self.st = {}
        if self.in_progress:
            raise UpdateRefused(f"an update to {self.st.get('version')} is in progress "
                                f"({self.st.get('phase')})")
        self.st = {"phase": S.FETCHING, "cmd": cid, "version": v, "from": self.slot,
                   "sha": m["sha"], "size": m["size"], "health_s": body["health_s"],
                   "release": body["release"]}
        self.slots.write_state(self.st)
        self.commands.extra_wanted[m["sha"]] = {"size": m["size"]}
        if body.get("push"):
            self.expect_push(m["sha"], m["size"])
        return False, f"fetching {v} ({m['size']} bytes)"

    # -- each turn --------------------------------------------------------------------------
    def step(self) -> None:
        phase = self.st.get("phase")
        if not phase:
            return
        if phase == S.FETCHING:
            # the switch restarts the agent: never while something is on air or about to be
            have = self.slots.installed(self.st["version"]) or \
                self.store.has_audio(self.st["sha"])
            if have and self.air_free():
                self._install()
        elif phase == S.TRIAL and self.slot == self.st.get("version"):
            self._check_health()
        elif phase == S.ROLLED_BACK and self.slot != self.st.get("version"):
            self._report_rollback()
        elif phase == S.CONFIRMED and self.slot == self.st.get("version"):
            self._finish()

    def _install(self) -> None:
        st = self.st
        S.fault_point("fetched")
        try:
            m = read_release(st["release"], self.cfg.release_public)
            self.slots.install(st["version"], self.store.audio_path(st["sha"]), m,
                               st["release"].encode("utf-8"))
        except (S.InstallError, UpdateRefused) as exc:
            self._fail(f"install of {st['version']} failed: {exc}")
            return
        S.fault_point("installed")
        self.commands.extra_wanted.pop(st["sha"], None)
        self.st = self.slots.update_state(phase=S.SWITCH)
        self.store.command_progress(st["cmd"], "started", f"{st['version']} installed; "
                                    "switching", self.clock.now(), {"step": "switch"})
        S.fault_point("switch-written")
        log.info("release %s installed in its slot; handing over to the launcher",
                 st["version"])
        self.exit_for_switch()

    def _check_health(self) -> None:
        st = self.st
        if self.store.command_state(st["cmd"]) == "done":  # confirmed before a power cut
            self._confirm()
            return
        if self._bundle is None:
            ok, self._bundle = self.bundle_ok()
            if not ok:
                self._ask_rollback(f"the held bundle does not verify: {self._bundle}")
                return
        if self._selftest is None:
            if self.runner.selftest_now(f"update to {st['version']}",
                                        item_id=self._selftest_item):
                self._selftest = "running"
            return
        if self._selftest == "running":
            return
        if self._selftest != "passed":
            self._ask_rollback(f"silent self-test {self._selftest}: {self._selftest_detail}")
            return
        if not self.connected():
            return  # the launcher's deadline decides if the broker is never reached
        self.store.command_progress(
            st["cmd"], "done", f"updated {st.get('from')} -> {st['version']}; broker reached, "
            f"{self._bundle}, silent self-test passed", self.clock.now(),
            {"version": st["version"], "from": st.get("from")})
        S.fault_point("healthy")
        self._confirm()

    def _confirm(self) -> None:
        self.st = self.slots.update_state(phase=S.CONFIRMED)
        log.info("version %s confirmed", self.st["version"])
        self._finish()

    def _finish(self) -> None:
        keep = {self.st["version"], self.st.get("from") or S.BASE}
        self.store.forget_audio(self.st["sha"], self.clock.now(), "unpacked")  # unpacked in its slot: the tar is not kept
        self.slots.write_state(None)
        self.st = {}
        self.slots.prune(keep)

    def _ask_rollback(self, reason: str) -> None:
        log.error("update health check failed: %s", reason)
        self.st = self.slots.update_state(phase=S.ROLLBACK, reason=reason)
        # the launcher stops this process and starts the old version

    def _report_rollback(self) -> None:
        st = self.st  # (no command or tar named when the state file was unreadable)
        if st.get("cmd") and self.store.command_state(st["cmd"]) not in ("failed", None):
            self.store.command_progress(st["cmd"], "failed", f"rolled back to "
                                        f"{st.get('from')}: {st.get('reason')}",
                                        self.clock.now(), {"version": st["version"],
                                                           "step": "rollback"})
        if st.get("sha"):
            self.store.forget_audio(st["sha"], self.clock.now(), "rolled back")
        self.slots.write_state(None)
        self.slots.prune({self.slot})
        self.st = {}

    def _fail(self, reason: str) -> None:
        st = self.st
        log.error("%s", reason)
        self.commands.extra_wanted.pop(st.get("sha"), None)
        self.store.command_progress(st["cmd"], "failed", reason, self.clock.now(),
                                    {"step": st.get("phase")})
        self.slots.write_state(None)
        self.st = {}
