"""What the hub sends a station to keep: signed programmes (bundles) and the audio they and
commands name. A bundle is verified, checked and stored (it becomes active once all its audio
is held); audio comes pushed or fetched window by window, bound to what a signed bundle or
command names and of the size it states, hash-checked whole, then kept. The decisions of a
transfer are ``transfer.Transfers``'; this part does what they say with the store and the
link, and nothing else of the agent.
"""
from __future__ import annotations

import errno
import logging
import shutil
from typing import Any, Callable

from protocol import chunks
from protocol.clock import Clock
from protocol.envelope import KeyRing, Reason, Refused, verify
from schedules import Item

from .alarms import Alarms
from .commands import Commands
from .store import StationStore
from .transfer import PROGRAMME_PUSH_GRACE_S, PUSH_GRACE_S, Transfers

log = logging.getLogger("loaxa.agent")


class Intake:
    def __init__(self, *, station_id: str, store: StationStore, clock: Clock,
                 transfers: Transfers, commands: Commands, alarms: Alarms,
                 keys: Callable[[], KeyRing], connected: Callable[[], bool],
                 ask: Callable[[dict], bool], saw_hub: Callable[[Any], None],
                 min_free_bytes: int) -> None:
        """``keys``: the hub keys trusted now (they change with a rotation); ``ask``: seal and
        publish a fetch request with this body, True if it went; ``saw_hub``: a verified hub
        time."""
        self.id = station_id
        self.store = store
        self.clock = clock
        self.transfers = transfers
        self.commands = commands
        self.alarms = alarms
        self._keys = keys
        self._connected = connected
        self._ask = ask
        self._saw_hub = saw_hub
        self.min_free_bytes = min_free_bytes

    # -- programmes -------------------------------------------------------------------------
    def on_bundle(self, raw: bytes, retained: bool = False) -> None:
        held = self.store.held_bundle()
        env = verify(raw, self._keys(), now=self.clock.now(), kind="bundle",
                     min_seq=held[0] if held else None)
        if held and env.seq == held[0]:
            if env.id == held[1]:
                return  # the same bundle delivered again (retained, reconnect): nothing to do
            raise Refused(Reason.REPLAYED, f"a different bundle with held version {env.seq}")
        body = env.body
        if body.get("station") != self.id or body.get("version") != env.seq:
            raise Refused(Reason.MALFORMED, "bundle is for another station or version")
        content = body.get("content")
        if not isinstance(content, dict) or not all(
                isinstance(k, str) and chunks.SHA_RE.match(k) for k in content):
            raise Refused(Reason.MALFORMED, "bundle content map is not by SHA-256")
        try:
            items = [Item.from_wire(d) for d in body.get("items", [])]
        except ValueError as exc:
            raise Refused(Reason.MALFORMED, str(exc)) from None
        if any(i.content not in content for i in items):
            raise Refused(Reason.MALFORMED, "an item names audio the bundle does not list")
        self._saw_hub(env.iat)
        self.store.save_bundle(env.seq, env.id, raw, body, self.clock.now())
        log.info("bundle %d stored (%d items)", env.seq, len(items))
        # the hub sends these once to all that need them, right after the bundles; a bundle
        # delivered from the broker's retained store (on connecting) came after its push
        for sha, meta in content.items():
            if not retained and isinstance(meta, dict) and meta.get("push"):
                self.expect_push(sha, int(meta.get("size") or 0), PROGRAMME_PUSH_GRACE_S)
        self.transfers.look_now()  # what else it lacks is asked for at once
        self.try_activate()

    def try_activate(self) -> None:
        version = self.store.activate_if_complete(self.clock.now())
        if version is not None:
            log.info("bundle %d active", version)

    def bundle_verifies(self) -> tuple[bool, str]:
        """For an update's health check: the held bundle verified again by this version's
        code and keys, and what was found."""
        held = self.store.held_bundle()
        if not held:
            return True, "no bundle held yet"
        raw = self.store.bundle_raw(held[0])
        try:
            env = verify(raw, self._keys(), now=None, kind="bundle")
        except Refused as r:
            return False, f"bundle {held[0]}: {r}"
        return True, f"bundle {env.seq} verified"

    # -- audio ------------------------------------------------------------------------------
    @property
    def receiving(self) -> bool:
        """Audio on its way (pushed or fetched)."""
        return self.transfers.active

    def request_due_at(self) -> float:
        """The monotonic instant ``request_audio`` next has something to ask (a push that
        stopped, a fetch to retry); infinity when no audio is on its way."""
        return self.transfers.due_at()

    def wanted_content(self) -> dict[str, Any]:
        """Audio the station should hold, by SHA-256, with the size the signed bundle states:
        the pending programme's, else the active one's, and what commands need (a file
        dropped as corrupt is fetched again)."""
        b = self.store.pending_bundle() or self.store.active_bundle()
        return {**self.commands.wanted(), **(b[1].get("content", {}) if b else {})}

    def wanted_meta(self, sha: str) -> dict[str, Any] | None:
        """``wanted_content().get(sha)`` without building the whole map (asked per chunk)."""
        meta = self.commands.wanted_meta(sha)
        for b in (self.store.pending_bundle(), self.store.active_bundle()):
            if b is not None:
                return b[1].get("content", {}).get(sha, meta)
        return meta

    def expect_push(self, sha: str, size: int, grace_s: float = PUSH_GRACE_S) -> None:
        """Audio the hub pushes with a command or a programme (once, to all of its targets):
        its chunks are taken as they come; it is asked for only if they stop coming."""
        if not self.store.has_audio(sha):
            self.transfers.expect_push(sha, size, self.clock.monotonic(), grace_s)

    def request_audio(self) -> None:
        if not self._connected():
            return
        mono = self.clock.monotonic()
        if not self.transfers.look(mono):
            return
        content = self.wanted_content()
        if not content:
            return
        missing = self.store.missing_audio(list(content))
        need = sum(int(content[s].get("size") or 0) - self.store.part_size(s) for s in missing)
        if missing and not self.room_for(need):
            return
        for sha in self.transfers.to_ask(missing, mono):
            self._ask_window(sha, mono)

    def room_for(self, need: int) -> bool:
        """Whether ``need`` more bytes of audio leave the free-space reserve; if not, the
        disk_full alarm (cleared when there is room again)."""
        free = shutil.disk_usage(self.store.audio_dir).free
        if free - need < self.min_free_bytes:
            self.alarms.set("disk_full", True, f"{free // 2**20} MiB free, {need // 2**20} MiB "
                            f"of audio wanted, {self.min_free_bytes // 2**20} MiB kept in "
                            "reserve")
            return False
        if "disk_full" in self.alarms.held():
            self.alarms.set("disk_full", False, f"{free // 2**20} MiB free")
        return True

    def _ask_window(self, sha: str, mono: float) -> None:
        offset = self.store.part_size(sha)
        if self._ask({"sha": sha, "offset": offset, "length": self.transfers.window}):
            self.transfers.asked(sha, offset, mono)

    def on_chunk(self, raw: bytes) -> None:
        self.store.bump("audio.bytes_received", len(raw), lazy=True)
        c = chunks.decode(raw, verify=False)  # raises Refused on a malformed chunk
        # bound to the signed bundle or command: only audio it names, of the size it states
        meta = self.wanted_meta(c.sha)
        if meta is None:  # not stored, so it costs nothing: audio this station already has,
            self.store.bump("ignored.chunk_unwanted", lazy=True)  # or an old programme's
            return
        size = int(meta.get("size") or 0)
        if c.total != size:
            raise Refused(Reason.BAD_AUDIO, f"chunk of {c.sha[:12]} claims {c.total} bytes; "
                          f"the signed programme says {size}")
        if not self.transfers.expects(c.sha) or self.store.has_audio(c.sha):
            self.store.bump("ignored.chunk", lazy=True)
            return
        have = self.store.part_size(c.sha)
        if self.transfers.chunk(c.sha, c.offset, have) != "take":  # a gap is asked for again
            self.store.bump("ignored.chunk", lazy=True)
            return
        if have == 0 and not self.room_for(c.total):
            # a pushed file is not asked for, so the reserve is checked as it starts
            self.store.bump("ignored.chunk_disk_full", lazy=True)
            return
        whole = c.offset == 0 and len(c.data) == c.total
        if not whole:  # a whole file in one chunk is checked once, against its own name
            chunks.check(raw, c)  # corrupt data: refused (bad_audio)
        try:
            size = self.store.append_part(c.sha, c.data)
        except OSError as exc:
            if exc.errno != errno.ENOSPC:
                raise
            self.store.discard_part(c.sha)
            self.transfers.done(c.sha)
            self.alarms.set("disk_full", True, f"no space left while storing {c.sha[:12]}")
            return
        mono = self.clock.monotonic()
        if self.transfers.appended(c.sha, size, c.total, mono):
            self._ask_window(c.sha, mono)
        if size < c.total:
            return
        digest = self.store.part_digest(c.sha)
        if digest != c.sha:
            self.store.discard_part(c.sha)
            raise Refused(Reason.BAD_AUDIO, f"audio {c.sha[:12]} arrived with hash {digest[:12]}")
        activated = self.store.keep_audio(c.sha, self.clock.now(), hashed=True)
        if activated is not None:
            log.info("bundle %d active", activated)
        if "audio_corrupt" in self.alarms.held():
            self.alarms.set("audio_corrupt", False, f"audio {c.sha[:12]} fetched again")
        self.transfers.done(c.sha)
