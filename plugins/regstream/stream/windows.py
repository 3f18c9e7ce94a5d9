"""Event-time windows, the event-time watermark's bounds, and what a micro-batch adds, from
the rows of its summary. Pure Python: no pyspark, no MySQLdb (unit-tested without either)."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from regstream.intervals import parse_interval

EPOCH = datetime(1970, 1, 1)
OK, LATE, BAD = "ok", "late", "bad"
# An event time this far past the micro-batch's clock is quarantined: counted, it would move
# the event-time watermark years ahead and make every real event too late.
MAX_AHEAD = timedelta(hours=1)
TOO_NEW = (
    f"create_date more than {MAX_AHEAD // timedelta(minutes=1)} minutes ahead of the stream's clock"
)


@dataclass(frozen=True)
class Windows:
    """Event-time windows of `length` starting every `slide` (tumbling: slide == length),
    aligned to the epoch like Spark's window()."""

    length: timedelta
    slide: timedelta

    @classmethod
    def parse(cls, window: str, slide: str | None = None) -> Windows:
        length = parse_interval(window)
        step = parse_interval(slide) if slide else length
        if step < timedelta(seconds=1) or step % timedelta(seconds=1):
            # window_start/window_end are DATETIME: whole seconds
            raise ValueError(f"the slide ({slide or window}) must be whole seconds")
        if length % step:
            raise ValueError(f"the window ({window}) must be a multiple of the slide ({slide})")
        return cls(length, step)

    @property
    def bucket_us(self) -> int:
        return self.slide // timedelta(microseconds=1)

    def of_bucket(self, bucket_us: int) -> list[tuple[datetime, datetime]]:
        """Every window holding the events of the slide-long bucket starting at bucket_us."""
        start = EPOCH + timedelta(microseconds=bucket_us)
        n = self.length // self.slide
        return [(start - k * self.slide, start - k * self.slide + self.length) for k in range(n)]


def from_micros(us: int | None) -> datetime | None:
    """Epoch microseconds -> naive UTC datetime."""
    return None if us is None else EPOCH + timedelta(microseconds=us)


def micros(t: datetime) -> int:
    """Naive UTC datetime -> epoch microseconds."""
    return (t - EPOCH) // timedelta(microseconds=1)


@dataclass
class BatchResult:
    """What a micro-batch adds, from the rows of `summarize`."""

    counts: dict[tuple[datetime, datetime, int], int] = field(default_factory=dict)
    rows: Counter[str] = field(default_factory=Counter)
    next_offsets: dict[int, int] = field(default_factory=dict)
    newest: datetime | None = None
    passes: int = 1

    @classmethod
    def of(cls, summary: Iterable[Any], windows: Windows) -> BatchResult:
        r = cls()
        for row in summary:
            r.rows[row.kind] += row.n
            p = int(row.partition)
            r.next_offsets[p] = max(r.next_offsets.get(p, 0), int(row.last_offset) + 1)
            if row.kind != OK:
                continue
            newest = EPOCH + timedelta(microseconds=row.newest_us)
            r.newest = newest if r.newest is None else max(r.newest, newest)
            for start, end in windows.of_bucket(row.bucket_us):
                key = (start, end, int(row.store_id))
                r.counts[key] = r.counts.get(key, 0) + int(row.n)
        return r


def out_of_bounds(
    summary: Iterable[Any],
    applied: dict[int, int],
    event_time_watermark: datetime | None,
    clock: datetime,
) -> bool:
    """Whether the summary of a pass without bounds shows rows the bounds act on: any row
    below the offsets the sink has applied, or a valid event older than the event-time watermark or
    more than MAX_AHEAD past the clock. On the raw numbers: an event time past year 9999 is
    a Spark timestamp but not a Python datetime."""
    wm_us = micros(event_time_watermark) if event_time_watermark is not None else None
    limit_us = micros(clock + MAX_AHEAD)
    return any(
        row.first_offset < applied.get(row.partition, 0)
        or (
            row.kind == OK
            and ((wm_us is not None and row.oldest_us < wm_us) or row.newest_us > limit_us)
        )
        for row in summary
    )
