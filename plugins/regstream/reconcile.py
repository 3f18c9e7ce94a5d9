"""Reconciliation: are the stream's counts right? (DAG `reconcile_counts`.)

Per (window, store), for the windows that are settled and still within the allowed lateness,
the stream's count in `registrations_per_window` must equal the committed customers of the
source whose `create_date` falls in the window, minus the events the stream recorded as too
late (`stream_late_events`):

    counted == source - late

Which windows: tumbling windows of `REGSTREAM_WINDOW`, aligned to the epoch as Spark's
`window()` aligns them, that start at or after `now - REGSTREAM_LATENESS` and end at or before
`now - REGSTREAM_RECONCILE_SETTLE_S` (the freshness bound: the stream is allowed that long to
count a registration). A window holding a customer captured by CDC within the settle time (a
backfilled registration, say) is left for the next run too, and reported as skipped.

Each run is stored (`stream_reconciliation_runs`, and one row per differing window in
`stream_reconciliation_mismatches`) for the live view. Reads through the reconcile role, one
connection per side (source and sink may be two servers: regstream.connections, docs/sink.md):
of a customer only id, store and registration time.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from regstream.connections import MYSQL_RECONCILE_CONN_ID
from regstream.db import named_queries
from regstream.intervals import interval_seconds

log = logging.getLogger(__name__)

EPOCH = datetime(1970, 1, 1)
# how many differing windows the log and the exception spell out (all are stored)
LOG_MISMATCHES = 50


class ReconciliationMismatch(RuntimeError):
    """Some windows' counts differ from the source."""


def queries() -> dict[str, str]:
    """The named queries of queries/reconcile.sql, comment lines left out."""
    return named_queries("reconcile.sql")


def floor_window(ts: datetime, window_s: int) -> datetime:
    """The start of the epoch-aligned window of `window_s` seconds holding `ts`."""
    return EPOCH + (ts - EPOCH) // timedelta(seconds=window_s) * timedelta(seconds=window_s)


def ceil_window(ts: datetime, window_s: int) -> datetime:
    start = floor_window(ts, window_s)
    return start if start == ts else start + timedelta(seconds=window_s)


@dataclass(frozen=True)
class Bounds:
    """Windows checked: those starting at or after `start` and ending at or before `end`."""

    window_s: int
    start: datetime
    end: datetime
    settled_before: datetime  # captures after this are too fresh


def bounds(now: datetime, window_s: int, lateness_s: int, settle_s: int) -> Bounds:
    settled = now - timedelta(seconds=settle_s)
    start = ceil_window(now - timedelta(seconds=lateness_s), window_s)
    end = max(start, floor_window(settled, window_s))
    return Bounds(window_s, start, end, settled)


@dataclass(frozen=True)
class WindowCheck:
    window_start: datetime
    window_end: datetime
    store_id: int
    source: int
    late: int
    counted: int | None  # None: the stream has no row for it

    @property
    def expected(self) -> int:
        return self.source - self.late

    @property
    def difference(self) -> int:
        return (self.counted or 0) - self.expected

    def describe(self) -> str:
        counted = "no row" if self.counted is None else str(self.counted)
        return (
            f"window {self.window_start:%Y-%m-%d %H:%M:%S}-{self.window_end:%H:%M:%S} "
            f"store {self.store_id}: counted {counted}, expected {self.expected} "
            f"(source {self.source} - too late {self.late}), difference {self.difference:+d}"
        )


@dataclass
class Result:
    bounds: Bounds
    checks: list[WindowCheck] = field(default_factory=list)
    skipped_fresh: int = 0
    run_id: int | None = None

    @property
    def mismatches(self) -> list[WindowCheck]:
        return [c for c in self.checks if c.difference != 0]

    @property
    def matched(self) -> int:
        return len(self.checks) - len(self.mismatches)

    def summary(self) -> str:
        b = self.bounds
        return (
            f"checked {len(self.checks)} (window, store) pairs of {b.window_s}s windows from "
            f"{b.start:%Y-%m-%d %H:%M:%S} to {b.end:%Y-%m-%d %H:%M:%S}: {self.matched} match, "
            f"{len(self.mismatches)} differ; {self.skipped_fresh} left to settle "
            f"(a capture after {b.settled_before:%H:%M:%S}); source "
            f"{sum(c.source for c in self.checks)}, too late "
            f"{sum(c.late for c in self.checks)}, counted "
            f"{sum(c.counted or 0 for c in self.checks)}"
        )


def _rows(conn: Any, name: str, b: Bounds) -> list[tuple]:
    cur = conn.cursor()
    try:
        cur.execute(queries()[name], {"w": b.window_s, "lo": b.start, "hi": b.end})
        return list(cur.fetchall())
    finally:
        cur.close()


def compare(source: Any, sink: Any, b: Bounds) -> Result:
    """Per (window, store) in the bounds: source and newest capture from the source, too-late
    and counted from the sink, joined here (the two may be different servers). Both sides
    arrive aggregated per (window, store), so memory grows with the windows checked (the
    lateness over the window length, times the stores), not with the customers."""
    source_rows = {
        (ws, int(st)): (int(n), newest) for ws, st, n, newest in _rows(source, "source_windows", b)
    }
    sink_rows = {
        (ws, int(st)): (int(late or 0), None if counted is None else int(counted))
        for ws, st, late, counted in _rows(sink, "sink_windows", b)
    }
    result = Result(b)
    span = timedelta(seconds=b.window_s)
    for ws, store_id in sorted(source_rows.keys() | sink_rows.keys()):
        n, newest_capture = source_rows.get((ws, store_id), (0, None))
        late, counted = sink_rows.get((ws, store_id), (0, None))
        if newest_capture is not None and newest_capture > b.settled_before:
            result.skipped_fresh += 1
            continue
        result.checks.append(WindowCheck(ws, ws + span, store_id, n, late, counted))
    return result


def store(conn: Any, result: Result, airflow_run_id: str | None) -> int:
    """The run and its mismatches, in one transaction; returns the run id."""
    b = result.bounds
    cur = conn.cursor()
    try:
        cur.execute(
            queries()["insert_run"],
            (
                b.window_s,
                b.start,
                b.end,
                len(result.checks),
                result.matched,
                sum(c.source for c in result.checks),
                sum(c.late for c in result.checks),
                sum(c.counted or 0 for c in result.checks),
                airflow_run_id,
            ),
        )
        run_id = int(cur.lastrowid)
        rows = [
            (run_id, c.window_start, c.window_end, c.store_id, c.source, c.late)
            + (c.expected, c.counted, c.difference)
            for c in result.mismatches
        ]
        if rows:
            cur.executemany(queries()["insert_mismatch"], rows)
        conn.commit()
    except Exception:
        conn.rollback()
        raise
    finally:
        cur.close()
    result.run_id = run_id
    return run_id


def reconcile(
    source: Any,
    sink: Any,
    *,
    window_s: int,
    lateness_s: int,
    settle_s: int,
    airflow_run_id: str | None = None,
    now: datetime | None = None,
) -> Result:
    """Compare, store, log; raise ReconciliationMismatch listing the windows that differ.
    `source` reads customers and change events; `sink` reads the counts and too-late events
    and stores the run. `sink` must not autocommit (the run and its mismatches land
    together). `now` defaults to the source's clock, which the capture times are from."""
    if now is None:
        cur = source.cursor()
        cur.execute(queries()["now"])
        now = cur.fetchone()[0]
        cur.close()
    result = compare(source, sink, bounds(now, window_s, lateness_s, settle_s))
    run_id = store(sink, result, airflow_run_id)
    log.info("reconciliation run %d: %s", run_id, result.summary())
    bad = result.mismatches
    if not bad:
        return result
    lines = [c.describe() for c in bad[:LOG_MISMATCHES]]
    if len(bad) > LOG_MISMATCHES:
        lines.append(f"... and {len(bad) - LOG_MISMATCHES} more (stream_reconciliation_mismatches)")
    for line in lines:
        log.error("mismatch: %s", line)
    raise ReconciliationMismatch(
        f"{len(bad)} of {len(result.checks)} windows differ from the source "
        f"(reconciliation run {run_id}):\n" + "\n".join(lines)
    )


def run_from_settings(settle_s: int | None, airflow_run_id: str | None) -> Result:
    """What the DAG's task runs: the platform settings, the reconcile role's connection on
    each side (regstream.connections)."""
    from regstream.connections import MYSQL_RECONCILE_SINK_CONN_ID, connect_side
    from regstream.settings import env_int, setting

    source = connect_side(MYSQL_RECONCILE_CONN_ID)
    try:
        sink = connect_side(MYSQL_RECONCILE_SINK_CONN_ID, autocommit=False)
        try:
            return reconcile(
                source,
                sink,
                window_s=interval_seconds(setting("REGSTREAM_WINDOW")),
                lateness_s=interval_seconds(setting("REGSTREAM_LATENESS")),
                settle_s=env_int("REGSTREAM_RECONCILE_SETTLE_S") if settle_s is None else settle_s,
                airflow_run_id=airflow_run_id,
            )
        finally:
            sink.close()
    finally:
        source.close()


def _iso(ts: datetime | None) -> str | None:
    return ts.isoformat() + "Z" if ts else None


def latest_run(conn: Any, max_mismatches: int = 20) -> dict[str, Any] | None:
    """The newest reconciliation run and its first differing windows (the live view's)."""
    cur = conn.cursor()
    cur.execute(queries()["latest_run"])
    row = cur.fetchone()
    if row is None:
        cur.close()
        return None
    run_id, checked_at, window_s, start, end, checked, matched = row[:7]
    source, late, counted, airflow_run_id = row[7:]
    cur.execute(queries()["run_mismatches"], (run_id, max_mismatches))
    mismatches = [
        {
            "window_start": _iso(ws),
            "window_end": _iso(we),
            "store_id": int(store),
            "source": int(src),
            "late": int(lt),
            "expected": int(exp),
            "counted": None if cnt is None else int(cnt),
            "difference": int(diff),
        }
        for ws, we, store, src, lt, exp, cnt, diff in cur.fetchall()
    ]
    cur.close()
    return {
        "run_id": int(run_id),
        "checked_at": _iso(checked_at),
        "window_seconds": int(window_s),
        "range_start": _iso(start),
        "range_end": _iso(end),
        "windows_checked": int(checked),
        "windows_matched": int(matched),
        "windows_differing": int(checked) - int(matched),
        "source_events": int(source),
        "late_events": int(late),
        "counted": int(counted),
        "airflow_run_id": airflow_run_id,
        "mismatches": mismatches,
    }
