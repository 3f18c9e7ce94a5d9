"""The analysts' live view: a FastAPI app the Airflow API server mounts at /regstream.

  GET /regstream/                     the page (chart + table + pipeline health, self-refreshing)
  GET /regstream/api/counts?window=5  registrations per store per window (minutes): the stream's
                                      windows summed when that is exact (they tile time and
                                      the window is a whole number of them), else the
                                      stream's own windows, with a note saying so
  GET /regstream/api/series?window=5&hours=3   each store's counts over the last hours (chart)
  GET /regstream/api/health           health cards (publish and stream lag, reconciliation,
                                      too-late and quarantined events) with verdicts and
                                      thresholds, the latest reconciliation, the too-late
                                      events and quarantined messages (latest first)
  GET /regstream/static/NAME          the page's script, style and the vendored uPlot

Every route requires an authenticated Airflow user allowed to see plugin views, through
Airflow's own auth manager and the same FastAPI security dependency its core API uses: the
UI's session cookie or an `Authorization: Bearer` token from `/auth/token`. Airflow does not
authenticate the apps that plugins mount; this dependency does. Anonymous requests get 401.

Reads MySQL only through the reader role (connection `mysql_reader`), which cannot read
customer rows.
"""

from __future__ import annotations

import logging
from dataclasses import asdict
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from fastapi import Depends, FastAPI, HTTPException, Query
from fastapi.responses import HTMLResponse, Response

from regstream import settings
from regstream.monitoring import QUERY, health_cards, read_lag
from regstream.reconcile import latest_run

log = logging.getLogger(__name__)

WINDOW_CHOICES = (1, 5, 15, 60, 1440)
STATIC = Path(__file__).resolve().parent / "static"
PAGE = STATIC / "liveview.html"
# what /static/ serves (nothing else): the page's script and style, and the vendored uPlot
ASSETS = {
    "liveview.js": ("liveview.js", "text/javascript"),
    "liveview.css": ("liveview.css", "text/css"),
    "uPlot.iife.min.js": ("vendor/uPlot.iife.min.js", "text/javascript"),
    "uPlot.min.css": ("vendor/uPlot.min.css", "text/css"),
}


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
ROLLED_UP_SINCE = (
    "SELECT FROM_UNIXTIME(FLOOR(UNIX_TIMESTAMP(window_start) / %s) * %s) AS ws, store_id, "
    "SUM(registrations), MAX(last_updated) FROM registrations_per_window "
    f"WHERE {WINDOW_LENGTH} = %s AND window_start >= %s GROUP BY ws, store_id ORDER BY ws"
)
AS_THEY_ARE_SINCE = (
    "SELECT window_start, store_id, registrations, last_updated FROM registrations_per_window "
    f"WHERE {WINDOW_LENGTH} = %s AND window_start >= %s ORDER BY window_start"
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


LATE_EVENTS = (
    "SELECT event_id, store_id, create_date, event_watermark, reason, batch_id, seen_at "
    "FROM stream_late_events ORDER BY seen_at DESC, event_id DESC LIMIT %s"
)
QUARANTINED = (
    "SELECT topic, kafka_partition, kafka_offset, kafka_timestamp, reason, quarantined_at "
    "FROM stream_quarantine ORDER BY quarantined_at DESC, kafka_offset DESC LIMIT %s"
)
RECENT = (
    "SELECT (SELECT COUNT(*) FROM stream_late_events WHERE seen_at > %(since)s), "
    "(SELECT COUNT(*) FROM stream_quarantine WHERE quarantined_at > %(since)s)"
)
FACTS = (
    "SELECT (SELECT last_event_id FROM latest_cdc_timestamp WHERE pipeline = %(topic)s), "
    "(SELECT updated_at FROM latest_cdc_timestamp WHERE pipeline = %(topic)s), "
    "(SELECT MAX(last_updated) FROM registrations_per_window)"
)
# the sink's last applied micro-batch, and the job's last sign of life (its progress rows,
# including the idle heartbeat)
LAST_BATCH = (
    "SELECT batch_id, committed_at, event_watermark, "
    "(SELECT MAX(finished_at) FROM stream_progress WHERE query_name = %(q)s) "
    "FROM stream_sink_commits WHERE query_name = %(q)s"
)


def _iso(ts: datetime | None) -> str | None:
    return ts.isoformat() + "Z" if ts else None


def listed_events(cur: Any, limit: int = 20) -> dict[str, list[dict[str, Any]]]:
    """Too-late events and quarantined messages, latest first, with their reasons (no raw
    message: it may hold a customer's name)."""
    cur.execute(LATE_EVENTS, (limit,))
    late = [
        {
            "event_id": int(eid),
            "store_id": int(store),
            "create_date": _iso(created),
            "event_watermark": _iso(wm),
            "reason": reason,
            "batch_id": int(batch),
            "seen_at": _iso(seen),
        }
        for eid, store, created, wm, reason, batch, seen in cur.fetchall()
    ]
    cur.execute(QUARANTINED, (limit,))
    quarantined = [
        {
            "position": f"{topic}/{part}@{offset}",
            "kafka_timestamp": _iso(ts),
            "reason": reason,
            "quarantined_at": _iso(at),
        }
        for topic, part, offset, ts, reason, at in cur.fetchall()
    ]
    return {"too_late": late, "quarantine": quarantined}


def health(conn: Any, topic: str) -> dict[str, Any]:
    """Everything the page shows besides the counts: cards, facts, reconciliation, lists."""
    lag = read_lag(conn, topic)
    cur = conn.cursor()
    cur.execute("SELECT UTC_TIMESTAMP(6)")
    now = cur.fetchone()[0]

    def age(ts: datetime | None) -> float | None:
        return round(max(0.0, (now - ts).total_seconds()), 1) if ts else None

    cur.execute(RECENT, {"since": now - timedelta(days=1)})
    late_24h, quarantined_24h = (int(n) for n in cur.fetchone())
    cur.execute(FACTS, {"topic": topic})
    last_id, wm_updated, last_result = cur.fetchone()
    cur.execute(LAST_BATCH, {"q": QUERY})
    batch = cur.fetchone() or (None, None, None, None)
    lists = listed_events(cur)
    cur.close()
    recon = latest_run(conn)
    recon_at = datetime.fromisoformat(recon["checked_at"][:-1]) if recon else None
    cards = health_cards(
        lag,
        recon,
        age(recon_at),
        {"late": late_24h, "quarantined": quarantined_24h},
        (settings.max_publish_delay_s(), settings.max_stream_delay_s()),
        settings.setting("REGSTREAM_LATENESS"),
    )
    return {
        "now": _iso(now),
        "cards": [asdict(c) for c in cards],
        "watermark_event_id": int(last_id or 0),
        "watermark_age_s": age(wm_updated),
        "events_waiting": lag.backlog_events,
        "oldest_waiting_age_s": lag.publish_delay_s if lag.backlog_events else None,
        "publish_lag_s": lag.publish_delay_s,
        "stream_lag_s": lag.stream_delay_s,
        "last_result_age_s": age(last_result),
        "last_batch_id": batch[0],
        "last_batch_age_s": age(batch[1]),
        "event_time_watermark": _iso(batch[2]),
        "stream_seen_age_s": age(batch[3]),
        "late_events": lag.late_events_total,
        "quarantined": lag.quarantined_total,
        "reconciliation": recon,
        **lists,
    }


SERIES_HOURS = (1, 3, 6, 24, 168)


def series(conn: Any, window_minutes: int, hours: int) -> dict[str, Any]:
    """Each store's counts over the last `hours`, for the chart: x = window starts (epoch s),
    one y list per store, zero where a window has no registration (when windows tile)."""
    cur = conn.cursor()
    shape = job_windows(cur)
    cur.execute("SELECT UTC_TIMESTAMP()")
    now = cur.fetchone()[0]
    out: dict[str, Any] = {"window_minutes": window_minutes, "hours": hours, "x": [], "stores": {}}
    if shape is None:
        cur.close()
        return out
    length, tiles = shape
    bucket = rollup_seconds(length, tiles, window_minutes)
    step = bucket or length
    since = now - timedelta(hours=hours)
    if bucket is None:
        cur.execute(AS_THEY_ARE_SINCE, (length, since))
    else:
        cur.execute(ROLLED_UP_SINCE, (bucket, bucket, length, since))
    points: dict[str, dict[int, int]] = {}
    for ws, store, n, _updated in cur.fetchall():
        points.setdefault(str(store), {})[_epoch(ws)] = int(n)
    cur.close()
    if bucket is None:
        xs = sorted({x for p in points.values() for x in p})
    else:
        first = _epoch(since) // step * step
        xs = list(range(first, _epoch(now) // step * step + 1, step))
    out.update(
        window_seconds=step,
        x=xs,
        stores={s: [p.get(x, 0) for x in xs] for s, p in sorted(points.items())},
    )
    return out


def _epoch(ts: datetime) -> int:
    return int((ts - datetime(1970, 1, 1)).total_seconds())


@app.get("/", response_class=HTMLResponse)
def page() -> str:
    return PAGE.read_text()


@app.get("/static/{name}")
def static(name: str) -> Response:
    if name not in ASSETS:
        raise HTTPException(404, f"no static file {name!r}")
    path, media = ASSETS[name]
    return Response((STATIC / path).read_bytes(), media_type=media)


@app.get("/api/series")
def api_series(
    window: int = Query(5, description="window length in minutes"),
    hours: int = Query(3, description="how far back"),
) -> dict:
    if window not in WINDOW_CHOICES or hours not in SERIES_HOURS:
        raise HTTPException(
            400, f"window must be one of {list(WINDOW_CHOICES)}, hours of {list(SERIES_HOURS)}"
        )
    conn = _conn()
    try:
        return series(conn, window, hours)
    finally:
        conn.close()


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
