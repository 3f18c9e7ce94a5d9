"""The analysts' live view: a FastAPI app the Airflow API server mounts at /regstream.

  GET /regstream/                     the page (chart + table + pipeline health, self-refreshing)
  GET /regstream/api/counts?window=5  registrations per store per window (minutes): the stream's
                                      windows summed when that is exact (they tile time and
                                      the window is a whole number of them), else the
                                      stream's own windows, with a note saying so
  GET /regstream/api/health           watermark age, events waiting, stream lag, last batch

Every route requires an authenticated Airflow user allowed to see plugin views, through
Airflow's own auth manager and the same FastAPI security dependency its core API uses: the
UI's session cookie or an `Authorization: Bearer` token from `/auth/token`. Airflow does not
authenticate the apps that plugins mount; this dependency does. Anonymous requests get 401.

Reads MySQL only through the reader role (connection `mysql_reader`), which cannot read
customer rows.
"""

from __future__ import annotations

import logging
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

from fastapi import Depends, FastAPI, HTTPException, Query
from fastapi.responses import HTMLResponse

from regstream import settings

log = logging.getLogger(__name__)

WINDOW_CHOICES = (1, 5, 15, 60, 1440)
PAGE = Path(__file__).resolve().parent / "static" / "liveview.html"


def _requires_plugin_view_access() -> Any:
    from airflow.api_fastapi.auth.managers.models.resource_details import AccessView
    from airflow.api_fastapi.core_api.security import requires_access_view

    return Depends(requires_access_view(AccessView.PLUGINS))


app = FastAPI(title="Registrations live view", dependencies=[_requires_plugin_view_access()])


def _conn() -> Any:
    from regstream.db import connect

    return connect(settings.MYSQL_READER_CONN_ID)


WINDOW_LENGTH = "TIMESTAMPDIFF(SECOND, window_start, window_end)"
# Windows of one length that all start at a multiple of it never overlap: they tile time.
# Spark's tumbling windows do (they start at multiples of their length since the epoch);
# sliding windows don't.
CURRENT_LENGTH = (
    f"SELECT {WINDOW_LENGTH} FROM registrations_per_window ORDER BY last_updated DESC LIMIT 1"
)
OVERLAPPING = (
    "SELECT EXISTS (SELECT 1 FROM registrations_per_window "
    f"WHERE {WINDOW_LENGTH} = %s AND MOD(UNIX_TIMESTAMP(window_start), %s) <> 0)"
)
ROLLED_UP = (
    "SELECT FROM_UNIXTIME(FLOOR(UNIX_TIMESTAMP(window_start) / %s) * %s) AS ws, store_id, "
    "SUM(registrations), MAX(last_updated) FROM registrations_per_window "
    f"WHERE {WINDOW_LENGTH} = %s GROUP BY ws, store_id ORDER BY ws DESC, store_id"
)
AS_THEY_ARE = (
    "SELECT window_start, store_id, registrations, last_updated FROM registrations_per_window "
    f"WHERE {WINDOW_LENGTH} = %s ORDER BY window_start DESC, store_id"
)


def job_windows(cur: Any) -> tuple[int, bool] | None:
    """The length (s) of the windows the stream writes now, those of its latest update (an
    earlier run may have used another length), and whether they tile time."""
    cur.execute(CURRENT_LENGTH)
    row = cur.fetchone()
    if row is None:
        return None
    length = int(row[0])
    cur.execute(OVERLAPPING, (length, length))
    return length, not cur.fetchone()[0]


def rollup_seconds(length_s: int, tiles: bool, window_minutes: int) -> int | None:
    """The bucket to sum the job's windows into, or None when no sum is exact: the requested
    window is not a whole number of the job's windows, or they overlap (an event would count
    once per window it falls in)."""
    bucket = window_minutes * 60
    return bucket if tiles and bucket % length_s == 0 else None


def _span(seconds: int) -> str:
    """90 -> '90-second', 300 -> '5-minute', 86400 -> '1-day'."""
    for unit, size in (("day", 86400), ("hour", 3600), ("minute", 60)):
        if seconds % size == 0:
            return f"{seconds // size}-{unit}"
    return f"{seconds}-second"


def _note(length_s: int, tiles: bool, window_minutes: int, bucket: int | None) -> str:
    if bucket == length_s:
        return ""
    if bucket is not None:
        return f"each row sums the stream's {_span(length_s)} windows"
    if not tiles:
        return (
            f"the stream's {_span(length_s)} windows overlap (sliding windows): shown as they "
            "are, since a sum would count an event once per window it falls in"
        )
    return (
        f"{_span(window_minutes * 60)} windows cannot be made of the stream's "
        f"{_span(length_s)} windows: shown as they are"
    )


def counts(conn: Any, window_minutes: int, limit_windows: int = 48) -> dict[str, Any]:
    """Per-store counts per window, newest windows first: the stream's windows summed into
    `window_minutes` when that is exact, otherwise the stream's own windows."""
    if window_minutes not in WINDOW_CHOICES:
        raise ValueError(f"window must be one of {WINDOW_CHOICES} minutes")
    cur = conn.cursor()
    shape = job_windows(cur)
    if shape is None:
        cur.close()
        return {
            "window_minutes": window_minutes,
            "window_seconds": window_minutes * 60,
            "stream_window_seconds": None,
            "rolled_up": True,
            "note": "",
            "windows": [],
        }
    length, tiles = shape
    bucket = rollup_seconds(length, tiles, window_minutes)
    if bucket is None:
        cur.execute(AS_THEY_ARE, (length,))
    else:
        cur.execute(ROLLED_UP, (bucket, bucket, length))
    span = timedelta(seconds=bucket or length)
    rows: dict[datetime, dict[str, Any]] = {}
    for ws, store, n, updated in cur.fetchall():
        if ws not in rows:
            if len(rows) >= limit_windows:
                break
            rows[ws] = {
                "window_start": ws.isoformat() + "Z",
                "window_end": (ws + span).isoformat() + "Z",
                "stores": {},
                "total": 0,
                "updated": updated.isoformat() + "Z",
            }
        rows[ws]["stores"][str(store)] = int(n)
        rows[ws]["total"] += int(n)
    cur.close()
    return {
        "window_minutes": window_minutes,
        "window_seconds": bucket or length,
        "stream_window_seconds": length,
        "rolled_up": bucket is not None,
        "note": _note(length, tiles, window_minutes, bucket),
        "windows": list(rows.values()),
    }


def health(conn: Any, topic: str) -> dict[str, Any]:
    cur = conn.cursor()
    cur.execute(
        "SELECT last_event_id, updated_at, pending_gaps FROM latest_cdc_timestamp "
        "WHERE pipeline = %s",
        (topic,),
    )
    wm = cur.fetchone()
    last_id = int(wm[0]) if wm else 0
    cur.execute(
        "SELECT COUNT(*), MIN(captured_at) FROM users_change_events WHERE event_id > %s", (last_id,)
    )
    waiting, oldest_waiting = cur.fetchone()
    cur.execute(
        "SELECT batch_id, finished_at, event_watermark, late_rows_dropped FROM "
        "stream_progress WHERE query_name = 'registration_counts' "
        "ORDER BY finished_at DESC LIMIT 1"
    )
    batch = cur.fetchone()
    cur.execute("SELECT COALESCE(SUM(late_rows_dropped), 0) FROM stream_progress")
    late_total = int(cur.fetchone()[0])
    cur.execute("SELECT COUNT(*) FROM stream_quarantine")
    quarantined = int(cur.fetchone()[0])
    cur.execute("SELECT MAX(last_updated) FROM registrations_per_window")
    last_result = cur.fetchone()[0]
    cur.close()
    now = datetime.now(timezone.utc).replace(tzinfo=None)

    def age(ts: datetime | None) -> float | None:
        return round((now - ts).total_seconds(), 1) if ts else None

    return {
        "now": now.isoformat() + "Z",
        "watermark_event_id": last_id,
        "watermark_age_s": age(wm[1]) if wm else None,
        "events_waiting": int(waiting),
        "oldest_waiting_age_s": age(oldest_waiting),
        "stream_lag_s": age(last_result),
        "last_batch_id": batch[0] if batch else None,
        "last_batch_age_s": age(batch[1]) if batch else None,
        "event_time_watermark": batch[2].isoformat() + "Z" if batch and batch[2] else None,
        "late_rows_dropped": late_total,
        "quarantined": quarantined,
    }


@app.get("/", response_class=HTMLResponse)
def page() -> str:
    return PAGE.read_text()


@app.get("/api/counts")
def api_counts(window: int = Query(5, description="window length in minutes")) -> dict:
    if window not in WINDOW_CHOICES:
        raise HTTPException(400, f"window must be one of {list(WINDOW_CHOICES)} minutes")
    conn = _conn()
    try:
        return counts(conn, window)
    finally:
        conn.close()


@app.get("/api/health")
def api_health() -> dict:
    conn = _conn()
    try:
        return health(conn, settings.topic())
    finally:
        conn.close()
