"""The analysts' live view: a FastAPI app the Airflow API server mounts at /regstream.

  GET /regstream/                     the page (chart + table + pipeline health, self-refreshing)
  GET /regstream/api/counts?window=5  registrations per store per window (minutes): the stream's
                                      windows summed when that is exact (they tile time and
                                      the window is a whole number of them), else the
                                      stream's own windows, with a note saying so
  GET /regstream/api/series?window=5&hours=3   each store's counts over the last hours (chart)
  GET /regstream/api/counts.csv?window=5&hours=3   the table of that window and range, all of
                                      its windows (newest first), as CSV with UTC times;
                                      413 past REGSTREAM_CSV_MAX_ROWS windows
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

import csv
import io
import logging
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from fastapi import Depends, FastAPI, HTTPException, Query
from fastapi.responses import HTMLResponse, Response

from regstream import analytics, settings
from regstream.analytics import WINDOW_CHOICES, job_windows, listed_events, rollup_seconds

__all__ = ["WINDOW_CHOICES", "app", "counts", "health", "job_windows", "listed_events"]
__all__ += ["rollup_seconds", "series", "csv_rows"]

log = logging.getLogger(__name__)

# The most rows (windows) one CSV download may hold; a wider range gets a 413 that says how
# to narrow it. Read at each request; its default is in the settings table.
CSV_MAX_ROWS_ENV = "REGSTREAM_CSV_MAX_ROWS"
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


def counts(
    conn: Any, window_minutes: int, limit_windows: int = 48, since: datetime | None = None
) -> dict[str, Any]:
    """Per-store counts per window, newest windows first (those starting at or after `since`
    when given): the stream's windows summed into `window_minutes` when that is exact,
    otherwise the stream's own windows."""
    if window_minutes not in WINDOW_CHOICES:
        raise ValueError(f"window must be one of {WINDOW_CHOICES} minutes")
    cur = conn.cursor()
    info, found = analytics.window_rows(cur, window_minutes, since, None, newest_first=True)
    cur.close()
    span = timedelta(seconds=info["window_seconds"])
    rows: dict[datetime, dict[str, Any]] = {}
    for ws, store, n, updated in found:
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
        rows[ws]["stores"][str(store)] = n
        rows[ws]["total"] += n
    return {**info, "windows": list(rows.values())}


def health(conn: Any, topic: str) -> dict[str, Any]:
    """Everything the page shows besides the counts: cards, facts, reconciliation, lists."""
    return analytics.health(conn, topic)


SERIES_HOURS = (1, 3, 6, 24, 168)


def series(conn: Any, window_minutes: int, hours: int) -> dict[str, Any]:
    """Each store's counts over the last `hours`, for the chart: x = window starts (epoch s),
    one y list per store, zero where a window has no registration (when windows tile)."""
    cur = conn.cursor()
    cur.execute("SELECT UTC_TIMESTAMP()")
    now = cur.fetchone()[0]
    out: dict[str, Any] = {"window_minutes": window_minutes, "hours": hours, "x": [], "stores": {}}
    since = now - timedelta(hours=hours)
    info, found = analytics.window_rows(cur, window_minutes, since)
    cur.close()
    if info["stream_window_seconds"] is None:
        return out
    step = info["window_seconds"]
    points: dict[str, dict[int, int]] = {}
    for ws, store, n, _updated in found:
        points.setdefault(str(store), {})[_epoch(ws)] = n
    if not info["rolled_up"]:
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


def _checked(window: int, hours: int | None) -> None:
    if window not in WINDOW_CHOICES or (hours is not None and hours not in SERIES_HOURS):
        raise HTTPException(
            400, f"window must be one of {list(WINDOW_CHOICES)}, hours of {list(SERIES_HOURS)}"
        )


def _since(conn: Any, hours: int | None) -> datetime | None:
    if hours is None:
        return None
    cur = conn.cursor()
    cur.execute("SELECT UTC_TIMESTAMP()")
    now: datetime = cur.fetchone()[0]
    cur.close()
    return now - timedelta(hours=hours)


@app.get("/api/counts")
def api_counts(
    window: int = Query(5, description="window length in minutes"),
    hours: int | None = Query(None, description="only windows of the last hours"),
) -> dict:
    _checked(window, hours)
    conn = _conn()
    try:
        return counts(conn, window, since=_since(conn, hours))
    finally:
        conn.close()


def csv_max_rows() -> int:
    """REGSTREAM_CSV_MAX_ROWS, read per request (the settings table holds its default)."""
    return settings.env_int(CSV_MAX_ROWS_ENV)


def csv_rows(result: dict[str, Any]) -> list[list[str]]:
    """The page's table as CSV rows: a header, then one row per window (newest first) with a
    column per store seen in the range (0 where a store had none) and the total."""
    stores = sorted({s for w in result["windows"] for s in w["stores"]}, key=int)
    out = [["window_start_utc", "window_end_utc", *[f"store_{s}" for s in stores], "total"]]
    for w in result["windows"]:
        cells = [str(w["stores"].get(s, 0)) for s in stores]
        out.append([w["window_start"], w["window_end"], *cells, str(w["total"])])
    return out


@app.get("/api/counts.csv")
def api_counts_csv(
    window: int = Query(5, description="window length in minutes"),
    hours: int = Query(3, description="how far back"),
) -> Response:
    _checked(window, hours)
    cap = csv_max_rows()
    conn = _conn()
    try:
        since = _since(conn, hours)
        cur = conn.cursor()
        n = analytics.windows_in_range(cur, window, since)
        cur.close()
        if n > cap:
            raise HTTPException(
                413,
                f"{n} windows of {window} minutes in the last {hours} h, more than the "
                f"{cap} rows one download may hold ({CSV_MAX_ROWS_ENV}): choose a shorter "
                "range or a longer window",
            )
        result = counts(conn, window, limit_windows=cap, since=since)
    finally:
        conn.close()
    buf = io.StringIO()
    csv.writer(buf, lineterminator="\n").writerows(csv_rows(result))
    name = f"registrations_{window}min_last_{hours}h.csv"
    log.info(
        "CSV download: %d windows of %d minutes, last %d h", len(result["windows"]), window, hours
    )
    return Response(
        buf.getvalue(),
        media_type="text/csv",
        headers={"Content-Disposition": f'attachment; filename="{name}"'},
    )


@app.get("/api/health")
def api_health() -> dict:
    conn = _conn()
    try:
        return health(conn, settings.topic())
    finally:
        conn.close()
