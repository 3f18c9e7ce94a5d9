"""The job's log over weeks: one summary line per period instead of a line per micro-batch.
Pure Python (no pyspark, no MySQLdb): unit-tested with a fake clock.

The task log of a job that runs for weeks under one Airflow task must stay readable: at one
batch a second, a line per batch is 600,000 lines a week. A batch that quarantines messages
or drops too-late events, and every error and retry, still gets its own line (the sink's)."""

from __future__ import annotations

import math
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

# Spark's phases of a micro-batch (StreamingQueryProgress.durationMs) shown in the summary.
PHASES = ("latestOffset", "queryPlanning", "addBatch", "walCommit", "commitOffsets")


@dataclass
class Period:
    """What the batches of one period did."""

    batches: int = 0
    input_rows: int = 0
    counted: int = 0
    late: int = 0
    quarantined: int = 0
    batch_ms: list[int] = field(default_factory=list)
    trigger_ms: list[int] = field(default_factory=list)
    phase_ms: dict[str, list[int]] = field(default_factory=dict)
    watermark: datetime | None = None
    offsets: str = ""


def percentile(values: list[int], q: float) -> int:
    """The q-quantile (0 < q < 1) of `values`, nearest rank; 0 for none."""
    if not values:
        return 0
    ranked = sorted(values)
    return ranked[max(0, math.ceil(q * len(ranked)) - 1)]


class PeriodReport:
    """Collects each batch (from the sink's thread) and Spark's progress of each trigger
    (from the listener's thread) and logs one line per `every_s` seconds with batches in
    them: nothing while the job is idle (stream_progress holds its heartbeat)."""

    def __init__(
        self, every_s: float, log: Callable[..., None], clock: Callable[[], float]
    ) -> None:
        self.every_s = every_s
        self.log = log
        self.clock = clock
        self._lock = threading.Lock()
        self._period = Period()
        self._started = clock()

    def batch(
        self,
        input_rows: int,
        counted: int,
        late: int,
        quarantined: int,
        ms: int,
        watermark: datetime | None,
        offsets: str,
    ) -> None:
        with self._lock:
            p = self._period
            p.batches += 1
            p.input_rows += input_rows
            p.counted += counted
            p.late += late
            p.quarantined += quarantined
            p.batch_ms.append(ms)
            p.watermark = watermark
            p.offsets = offsets
        self.maybe_log()

    def progress(self, duration_ms: dict[str, Any], input_rows: int) -> None:
        """Spark's durations of a trigger that read rows (an empty trigger only asked Kafka)."""
        if not input_rows:
            return
        with self._lock:
            p = self._period
            p.trigger_ms.append(int(duration_ms.get("triggerExecution", 0)))
            for phase in PHASES:
                p.phase_ms.setdefault(phase, []).append(int(duration_ms.get(phase, 0)))

    def maybe_log(self) -> None:
        """Log the period if it is over (called after each batch and at each idle tick)."""
        now = self.clock()
        with self._lock:
            elapsed = now - self._started
            if elapsed < self.every_s:
                return
            period, self._period, self._started = self._period, Period(), now
        if period.batches:
            self.log(*summary_line(period, elapsed))

    def flush(self) -> None:
        """Log what the current period holds (the job is stopping)."""
        with self._lock:
            period, self._period = self._period, Period()
            elapsed = self.clock() - self._started
        if period.batches:
            self.log(*summary_line(period, elapsed))


def summary_line(p: Period, seconds: float) -> tuple[Any, ...]:
    """A lazy %-style log call's arguments: (format, *values)."""
    phases = ", ".join(f"{name} {percentile(p.phase_ms.get(name, []), 0.5)}" for name in PHASES)
    return (
        "last %.0f s: %d batches, %d input rows, %d events counted, %d too late, "
        "%d quarantined; batch ms p50 %d, p95 %d, max %d (Spark trigger p50 %d: %s); "
        "watermark %s; offsets %s",
        seconds,
        p.batches,
        p.input_rows,
        p.counted,
        p.late,
        p.quarantined,
        percentile(p.batch_ms, 0.5),
        percentile(p.batch_ms, 0.95),
        max(p.batch_ms, default=0),
        percentile(p.trigger_ms, 0.5),
        phases,
        p.watermark,
        p.offsets,
    )
