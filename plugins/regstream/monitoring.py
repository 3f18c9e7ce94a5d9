"""How far behind the pipeline is: the figures behind the Prometheus endpoint
(`GET /regstream/metrics`) and the lag alert (`monitor_pipeline_lag` DAG).

Lag is defined so that an idle pipeline is not late:
- publish delay: age of the oldest event above the watermark (0 when nothing waits);
- stream delay: time since events were published that no micro-batch with input has taken yet
  (0 when the last batch with input finished after the last publish).
Reads through the reader role only (no customer rows: ids and times).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from datetime import datetime
from typing import Any

from regstream.watermark import gaps_from_json

QUERY = "registration_counts"


@dataclass(frozen=True)
class Lag:
    backlog_events: int
    oldest_unpublished_age_s: float
    pending_gaps: int
    publish_delay_s: float
    stream_delay_s: float
    last_batch_input_rows_per_s: float
    last_batch_duration_s: float
    event_time_watermark_epoch_s: float
    late_rows_dropped_total: int
    quarantined_total: int

    def late(self, max_publish_delay_s: float, max_stream_delay_s: float) -> list[str]:
        """What is behind its bound, in words a person can act on; empty when healthy."""
        out = []
        if self.publish_delay_s > max_publish_delay_s:
            out.append(
                f"publisher behind: oldest unpublished event is {self.publish_delay_s:.0f}s old "
                f"(bound {max_publish_delay_s:.0f}s), {self.backlog_events} events waiting; "
                "is publish_cdc_events paused or failing?"
            )
        if self.stream_delay_s > max_stream_delay_s:
            out.append(
                f"stream behind: events published {self.stream_delay_s:.0f}s ago are not "
                f"counted yet (bound {max_stream_delay_s:.0f}s); is stream_registration_counts "
                "running?"
            )
        return out


def _age(now: datetime, ts: datetime | None) -> float:
    return max(0.0, (now - ts).total_seconds()) if ts else 0.0


def read_lag(conn: Any, pipeline: str) -> Lag:
    cur = conn.cursor()
    cur.execute("SELECT UTC_TIMESTAMP(6)")
    now = cur.fetchone()[0]
    cur.execute(
        "SELECT last_event_id, updated_at, pending_gaps FROM latest_cdc_timestamp "
        "WHERE pipeline = %s",
        (pipeline,),
    )
    wm = cur.fetchone() or (0, None, None)
    cur.execute(
        "SELECT COUNT(*), MIN(captured_at) FROM users_change_events WHERE event_id > %s",
        (wm[0],),
    )
    backlog, oldest = cur.fetchone()
    cur.execute(
        "SELECT MAX(finished_at) FROM stream_progress WHERE query_name = %s AND input_rows > 0",
        (QUERY,),
    )
    last_input_batch = cur.fetchone()[0]
    cur.execute(
        "SELECT rows_per_second, duration_ms, event_watermark FROM stream_progress "
        "WHERE query_name = %s ORDER BY finished_at DESC LIMIT 1",
        (QUERY,),
    )
    batch = cur.fetchone() or (None, None, None)
    cur.execute("SELECT COALESCE(SUM(late_rows_dropped), 0) FROM stream_progress")
    late = int(cur.fetchone()[0])
    cur.execute("SELECT COUNT(*) FROM stream_quarantine")
    quarantined = int(cur.fetchone()[0])
    cur.close()
    published_at = wm[1] if int(wm[0] or 0) > 0 else None
    stream_waiting = published_at and (not last_input_batch or last_input_batch < published_at)
    return Lag(
        backlog_events=int(backlog),
        oldest_unpublished_age_s=_age(now, oldest),
        pending_gaps=len(gaps_from_json(wm[2] or "[]")),
        publish_delay_s=_age(now, oldest),
        stream_delay_s=_age(now, published_at) if stream_waiting else 0.0,
        last_batch_input_rows_per_s=float(batch[0] or 0.0),
        last_batch_duration_s=(batch[1] or 0) / 1000.0,
        event_time_watermark_epoch_s=(batch[2] - datetime(1970, 1, 1)).total_seconds()
        if batch[2]
        else 0.0,
        late_rows_dropped_total=late,
        quarantined_total=quarantined,
    )


# name, type, help; values come from the Lag field of the same name
METRICS = [
    ("backlog_events", "gauge", "CDC events above the publisher's watermark"),
    ("oldest_unpublished_age_s", "gauge", "Age of the oldest unpublished CDC event, seconds"),
    ("pending_gaps", "gauge", "Id gaps waiting on open transactions"),
    ("publish_delay_s", "gauge", "Publish delay (0 when nothing waits), seconds"),
    ("stream_delay_s", "gauge", "Published but not yet counted, for this many seconds"),
    ("last_batch_input_rows_per_s", "gauge", "Input rate of the last micro-batch, rows/s"),
    ("last_batch_duration_s", "gauge", "Duration of the last micro-batch, seconds"),
    ("event_time_watermark_epoch_s", "gauge", "The stream's event-time watermark, epoch s"),
    ("late_rows_dropped_total", "counter", "Rows dropped as later than the allowed lateness"),
    ("quarantined_total", "counter", "Messages quarantined as malformed"),
]


def prometheus_text(lag: Lag, max_publish_delay_s: float, max_stream_delay_s: float) -> str:
    values = asdict(lag)
    lines = []
    for name, kind, help_text in METRICS:
        lines += [
            f"# HELP regstream_{name} {help_text}",
            f"# TYPE regstream_{name} {kind}",
            f"regstream_{name} {values[name]}",
        ]
    lines += [
        "# HELP regstream_lagging 1 when a delay is past its bound (the alert)",
        "# TYPE regstream_lagging gauge",
        f"regstream_lagging {int(bool(lag.late(max_publish_delay_s, max_stream_delay_s)))}",
    ]
    return "\n".join(lines) + "\n"


def _metrics_app() -> Any:
    """`GET /regstream/metrics`: Prometheus text format, for an authenticated Airflow user
    (scrape with `authorization: {credentials_file: ...}` holding a token from /auth/token)."""
    from airflow.api_fastapi.auth.managers.models.resource_details import AccessView
    from airflow.api_fastapi.core_api.security import requires_access_view
    from fastapi import Depends, FastAPI
    from fastapi.responses import PlainTextResponse

    from regstream import settings
    from regstream.db import connect

    metrics = FastAPI(
        title="Registrations pipeline metrics",
        dependencies=[Depends(requires_access_view(AccessView.PLUGINS))],
    )

    @metrics.get("/", response_class=PlainTextResponse)
    def scrape() -> str:
        conn = connect(settings.MYSQL_READER_CONN_ID)
        try:
            lag = read_lag(conn, settings.topic())
        finally:
            conn.close()
        return prometheus_text(lag, settings.max_publish_delay_s(), settings.max_stream_delay_s())

    return metrics


app = _metrics_app()
