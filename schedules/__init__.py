"""Pure schedule logic: rules -> occurrences -> what plays at instant t.

No I/O and no clock of its own: callers pass the time. The hub previews with the same code
the station executes with.
"""
from .model import Item, Occurrence, Priority, QuietHours, TZ
from .evaluate import (active_at, may_start, next_start, occurrences, overdue, playing_at,
                       startable_at, starting_within)

__all__ = ["Item", "Occurrence", "Priority", "QuietHours", "TZ", "active_at", "may_start",
           "next_start", "occurrences", "overdue", "playing_at", "startable_at",
           "starting_within"]
