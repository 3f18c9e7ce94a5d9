"""The read API of the counts, for code: the notebook (notebooks/registrations.ipynb) and the
live view (liveview.py) both read through it, so their numbers cannot disagree.

    from regstream import analytics
    conn = analytics.connect()                    # the reader role, from the environment
    df = analytics.counts("2026-12-01 09:00", "2026-12-01 12:00", "15 minutes", conn=conn)
    analytics.table(df)                            # one row per window, a column per store
    analytics.health(conn)                         # lag, too-late, quarantined, reconciliation

The stream writes windows of one length (REGSTREAM_WINDOW). A longer window is their sum
when that is exact: the windows tile time (each starts at a multiple of its length, as
Spark's tumbling windows do) and the longer window is a whole number of them. Otherwise the
stream's own windows are returned as they are, and `df.attrs["note"]` says why.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict
from datetime import datetime, timedelta, timezone
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote, urlsplit

from regstream.intervals import interval_seconds

if TYPE_CHECKING:
    import pandas as pd

# the window lengths (minutes) the live view offers and the notebook accepts
WINDOW_CHOICES = (1, 5, 15, 60, 1440)
READER_ENV = "AIRFLOW_CONN_MYSQL_READER"

WINDOW_LENGTH = "TIMESTAMPDIFF(SECOND, window_start, window_end)"
# Windows of one length that all start at a multiple of it never overlap: they tile time.
CURRENT_LENGTH = (
    f"SELECT {WINDOW_LENGTH} FROM registrations_per_window ORDER BY last_updated DESC LIMIT 1"
)
OVERLAPPING = (
    "SELECT EXISTS (SELECT 1 FROM registrations_per_window "
    f"WHERE {WINDOW_LENGTH} = %s AND MOD(UNIX_TIMESTAMP(window_start), %s) <> 0)"
)
BUCKET = "FROM_UNIXTIME(FLOOR(UNIX_TIMESTAMP(window_start) / %(bucket)s) * %(bucket)s)"
ROLLED_UP = (
    f"SELECT {BUCKET} AS ws, store_id, SUM(registrations), MAX(last_updated) "
    f"FROM registrations_per_window WHERE {WINDOW_LENGTH} = %(length)s{{where}} "
    "GROUP BY ws, store_id ORDER BY ws {order}, store_id"
)
AS_THEY_ARE = (
    "SELECT window_start AS ws, store_id, registrations, last_updated "
    f"FROM registrations_per_window WHERE {WINDOW_LENGTH} = %(length)s{{where}} "
    "ORDER BY ws {order}, store_id"
)
WINDOWS_IN_RANGE = (
    f"SELECT COUNT(DISTINCT {BUCKET}) FROM registrations_per_window "
    f"WHERE {WINDOW_LENGTH} = %(length)s{{where}}"
)


class ConnectionNotConfigured(RuntimeError):
    """The environment says nothing about how to reach the counts."""


def connect(env: str = READER_ENV) -> Any:
    """A MySQLdb connection (autocommit, UTC) from an Airflow connection in the environment:
    `AIRFLOW_CONN_MYSQL_READER` as stackctl writes it (JSON) or as docker-compose sets it (a
    mysql:// URI). No Airflow import: a notebook kernel starts in a second."""
    import MySQLdb

    raw = os.environ.get(env, "").strip()
    if not raw:
        raise ConnectionNotConfigured(
            f"{env} is not set: start Jupyter with `make notebook` (local stack), or run "
            '`eval "$(python3 -m stackctl env)"` first; with docker-compose, take it from the '
            "airflow services' environment"
        )
    if raw.startswith("{"):
        c = json.loads(raw)
        kw = {
            "host": c.get("host") or "127.0.0.1",
            "port": int(c.get("port") or 3306),
            "user": c.get("login") or "",
            "password": c.get("password") or "",
            "database": c.get("schema") or "",
        }
    else:
        u = urlsplit(raw)
        kw = {
            "host": u.hostname or "127.0.0.1",
            "port": u.port or 3306,
            "user": unquote(u.username or ""),
            "password": unquote(u.password or ""),
            "database": u.path.lstrip("/"),
        }
    conn = MySQLdb.connect(autocommit=True, charset="utf8mb4", **kw)
    cur = conn.cursor()
    cur.execute("SET time_zone = '+00:00'")
    cur.close()
    return conn


def window_minutes(window: str | int) -> int:
    """'15 minutes' or 15 -> 15, one of WINDOW_CHOICES; a clear error otherwise."""
    try:
        minutes = window if isinstance(window, int) else interval_seconds(window) / 60
    except ValueError as exc:
        raise ValueError(f"window {window!r}: {exc}") from None
    if minutes not in WINDOW_CHOICES:
        raise ValueError(
            f"window {window!r}: must be one of {', '.join(map(str, WINDOW_CHOICES))} minutes"
        )
    return int(minutes)


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


def note(length_s: int, tiles: bool, window_minutes: int, bucket: int | None) -> str:
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


def _naive_utc(ts: datetime | str | None) -> datetime | None:
    """A bound as MySQL compares it (naive UTC); aware datetimes are converted."""
    if ts is None:
        return None
    if isinstance(ts, str):
        ts = datetime.fromisoformat(ts.strip().replace("Z", "+00:00"))
    if ts.tzinfo is not None:
        ts = ts.astimezone(timezone.utc).replace(tzinfo=None)
    return ts


def shape(cur: Any, minutes: int) -> dict[str, Any]:
    """How `minutes` windows are made of the stream's: the fields both readers report."""
    found = job_windows(cur)
    if found is None:
        return {
            "window_minutes": minutes,
            "window_seconds": minutes * 60,
            "stream_window_seconds": None,
            "rolled_up": True,
            "note": "",
        }
    length, tiles = found
    bucket = rollup_seconds(length, tiles, minutes)
    return {
        "window_minutes": minutes,
        "window_seconds": bucket or length,
        "stream_window_seconds": length,
        "rolled_up": bucket is not None,
        "note": note(length, tiles, minutes, bucket),
    }


def _query(template: str, info: dict[str, Any], start: Any, end: Any, order: str) -> tuple:
    params: dict[str, Any] = {
        "length": info["stream_window_seconds"],
        "bucket": info["window_seconds"],
    }
    where = ""
    if start is not None:
        where += " AND window_start >= %(start)s"
        params["start"] = start
    if end is not None:
        where += " AND window_start < %(end)s"
        params["end"] = end
    return template.format(where=where, order=order), params


def window_rows(
    cur: Any, minutes: int, start: Any = None, end: Any = None, newest_first: bool = False
) -> tuple[dict[str, Any], list[tuple[datetime, int, int, datetime]]]:
    """(shape, [(window_start, store_id, registrations, last_updated)]) of the windows that
    start in [start, end) (either bound may be None), window starts naive UTC."""
    info = shape(cur, minutes)
    if info["stream_window_seconds"] is None:
        return info, []
    template = ROLLED_UP if info["rolled_up"] else AS_THEY_ARE
    sql, params = _query(
        template, info, _naive_utc(start), _naive_utc(end), "DESC" if newest_first else ""
    )
    cur.execute(sql, params)
    return info, [(ws, int(s), int(n), up) for ws, s, n, up in cur.fetchall()]


def windows_in_range(cur: Any, minutes: int, start: Any = None, end: Any = None) -> int:
    """How many windows (rows of the table) the range holds."""
    info = shape(cur, minutes)
    if info["stream_window_seconds"] is None:
        return 0
    if not info["rolled_up"]:
        info = {**info, "window_seconds": 1}  # every window start is its own row
    sql, params = _query(WINDOWS_IN_RANGE, info, _naive_utc(start), _naive_utc(end), "")
    cur.execute(sql, params)
    return int(cur.fetchone()[0])


def counts(
    start: datetime | str | None,
    end: datetime | str | None,
    window: str | int = "15 minutes",
    *,
    conn: Any = None,
) -> pd.DataFrame:
    """Registrations per store per window starting in [start, end), oldest first: columns
    window_start, window_end (UTC), store_id, registrations, last_updated (UTC). `attrs`
    holds the shape: window_seconds, stream_window_seconds, rolled_up, note."""
    import pandas as pd

    minutes = window_minutes(window)
    own = conn is None
    conn = connect() if own else conn
    try:
        cur = conn.cursor()
        info, rows = window_rows(cur, minutes, start, end)
        cur.close()
    finally:
        if own:
            conn.close()
    df = pd.DataFrame(rows, columns=["window_start", "store_id", "registrations", "last_updated"])
    df["window_start"] = pd.to_datetime(df["window_start"]).dt.tz_localize("UTC")
    df["last_updated"] = pd.to_datetime(df["last_updated"]).dt.tz_localize("UTC")
    df.insert(1, "window_end", df["window_start"] + timedelta(seconds=info["window_seconds"]))
    df = df.astype({"store_id": "int64", "registrations": "int64"})
    df.attrs.update(info)
    return df


def table(df: pd.DataFrame) -> pd.DataFrame:
    """The live view's table: one row per window (oldest first), a column per store (0 where
    a store had none), and the total."""
    if df.empty:
        import pandas as pd

        return pd.DataFrame(columns=["window_start", "window_end", "total"])
    wide = df.pivot_table(
        index=["window_start", "window_end"],
        columns="store_id",
        values="registrations",
        aggfunc="sum",
        fill_value=0,
    ).sort_index(axis=1)
    wide.columns = [f"store {s}" for s in wide.columns]
    wide["total"] = wide.sum(axis=1)
    return wide.reset_index()


# ---------------------------------------------------------------- the pipeline's health

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


def iso(ts: datetime | None) -> str | None:
    return ts.isoformat() + "Z" if ts else None


def listed_events(cur: Any, limit: int = 20) -> dict[str, list[dict[str, Any]]]:
    """Too-late events and quarantined messages, latest first, with their reasons (no raw
    message: it may hold a customer's name)."""
    cur.execute(LATE_EVENTS, (limit,))
    late = [
        {
            "event_id": int(eid),
            "store_id": int(store),
            "create_date": iso(created),
            "event_watermark": iso(wm),
            "reason": reason,
            "batch_id": int(batch),
            "seen_at": iso(seen),
        }
        for eid, store, created, wm, reason, batch, seen in cur.fetchall()
    ]
    cur.execute(QUARANTINED, (limit,))
    quarantined = [
        {
            "position": f"{topic}/{part}@{offset}",
            "kafka_timestamp": iso(ts),
            "reason": reason,
            "quarantined_at": iso(at),
        }
        for topic, part, offset, ts, reason, at in cur.fetchall()
    ]
    return {"too_late": late, "quarantine": quarantined}


def health(conn: Any, topic: str | None = None) -> dict[str, Any]:
    """Everything the live view shows besides the counts: its cards (with verdicts), the lag,
    too-late and quarantined counts, the latest reconciliation and the listed events."""
    from regstream import settings
    from regstream.monitoring import QUERY, health_cards, read_lag
    from regstream.reconcile import latest_run

    topic = topic or settings.topic()
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
        "now": iso(now),
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
        "event_time_watermark": iso(batch[2]),
        "stream_seen_age_s": age(batch[3]),
        "late_events": lag.late_events_total,
        "quarantined": lag.quarantined_total,
        "reconciliation": recon,
        **lists,
    }


def health_table(h: dict[str, Any]) -> pd.DataFrame:
    """The health cards as a small table (metric, status, value, verdict, rule)."""
    import pandas as pd

    return pd.DataFrame(
        [(c["title"], c["status"], c["value"], c["verdict"], c["rule"]) for c in h["cards"]],
        columns=["metric", "status", "value", "verdict", "rule"],
    )
