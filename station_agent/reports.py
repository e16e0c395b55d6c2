"""What a station sends of its outbox, and when: plain decisions over (state, event, now), no
broker or store of their own (tests/test_reports.py). The agent reads the outbox when told to,
sends what is chosen, and reports what the hub acknowledged.

Reports are sent once and sent again only if not acknowledged within ``retry_s``; each resend
doubles the wait (up to ``max_s``), so an overloaded hub is not sent the same reports every
10 s by thousands of stations at once. Any acknowledgement, a new connection of ours and the
hub coming back set the wait back to its start and let everything unacknowledged go at once.
"""
from __future__ import annotations

from typing import Any

from protocol.envelope import canonical, canonical_value, check_wire

RETRY_MAX_S = 160.0  # the longest wait before an unacknowledged report goes again


class Reports:
    def __init__(self, retry_s: float, *, max_s: float = RETRY_MAX_S) -> None:
        self.start_s = float(retry_s)
        self.max_s = max_s
        self.retry_s = self.start_s
        self.sent: dict[int, float] = {}  # outbox seq -> monotonic time last sent
        self._seen = -1                   # the outbox's append count when it was last read

    def should_read(self, appended: int, mono: float) -> bool:
        """Whether to read the outbox now: something was added since it was last read, or a
        report sent is due again. If so, the read is recorded."""
        if appended == self._seen and (not self.sent or
                                       mono - min(self.sent.values()) < self.retry_s):
            return False
        self._seen = appended
        return True

    def choose(self, pending: list[dict[str, Any]], mono: float) -> list[dict[str, Any]]:
        """Of the events pending (oldest first), those to send now: never sent, or sent
        ``retry_s`` ago. A batch that resends anything makes the next wait twice as long."""
        batch = [e for e in pending if mono - self.sent.get(e["seq"], -1e9) >= self.retry_s]
        if any(e["seq"] in self.sent for e in batch):
            self.retry_s = min(self.retry_s * 2, self.max_s)
        return batch

    def in_flight(self, batch: list[dict[str, Any]]) -> int:
        """Events on their way with ``batch``: it and what earlier reports carry unacknowledged."""
        seqs = {e["seq"] for e in batch}
        return len(seqs) + sum(1 for s in self.sent if s not in seqs)

    def published(self, batch: list[dict[str, Any]], mono: float) -> None:
        for e in batch:
            self.sent[e["seq"]] = mono

    def acknowledged(self, seqs: list[int]) -> None:
        """The hub stored these: the wait starts again, and what the batch held back may go."""
        for s in seqs:
            self.sent.pop(s, None)
        self.retry_s = self.start_s
        self._seen = -1

    def resend_all(self) -> None:
        """A new connection, or the hub back: whatever it has not acknowledged goes now."""
        self.sent.clear()
        self.retry_s = self.start_s
        self._seen = -1


def encode_report(events: list[dict[str, Any]], sent_at: str, state: dict[str, Any]) -> bytes:
    """The canonical bytes of a report body ``{"events": [...], "sent_at": …, "state": …}``
    from events whose data is already canonical JSON text (``StationStore.pending_encoded``),
    without decoding and encoding each event again. Equal to ``canonical`` of the same body
    (tests/test_reports.py), which is what the hub verifies the signature against."""
    check_wire(state, "report state")
    parts = [b'{"at":%s,"data":%s,"kind":%s,"seq":%d}' % (
        canonical_value(e["at"]), e["json"].encode("utf-8"), canonical_value(e["kind"]),
        int(e["seq"])) for e in events]
    return b'{"events":[' + b",".join(parts) + b'],"sent_at":' + canonical_value(sent_at) + \
        b',"state":' + canonical(state) + b"}"
