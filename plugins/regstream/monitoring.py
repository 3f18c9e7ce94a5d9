"""How far behind the pipeline is: the figures behind the Prometheus endpoint
(`GET /regstream/metrics`) and the lag alert (`monitor_pipeline_lag` DAG).

Lag is defined so that an idle pipeline is not late:
- publish delay: age of the oldest CDC event above the watermark (0 when nothing waits);
- stream delay: age of the oldest published event captured after the stream's last
  micro-batch with input (or its sink's last commit) finished, 0 when there is none. Only
  published events count (ids at or below the watermark, not in a pending gap), and nothing
  else: a watermark write that only settles gaps, or an idle stream, is not lag. (Measured from
  the capture, it includes the time the event took to be published: an upper bound.)
Reads through the reader role only (no customer rows: ids and times), one connection per
side: source and sink may be two servers (regstream.connections, docs/sink.md). The queries
are in queries/monitoring.sql.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from datetime import datetime
from typing import Any

from regstream import settings
from regstream.db import named_queries
from regstream.watermark import gaps_from_json

QUERY = "registration_counts"


def queries() -> dict[str, str]:
    return named_queries("monitoring.sql")


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
    late_events_total: int
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
                f"stream behind: an event published {self.stream_delay_s:.0f}s ago is not "
                f"counted yet (bound {max_stream_delay_s:.0f}s); is stream_registration_counts "
                "running?"
            )
        return out


def _age(now: datetime, ts: datetime | None) -> float:
    return max(0.0, (now - ts).total_seconds()) if ts else 0.0


def _stream_waiting_since(cur: Any, last_id: int, gaps: tuple, taken_until: Any) -> Any:
    """Capture time of the oldest published event newer than what the stream last took."""
    gap_sql = "".join(" AND event_id NOT BETWEEN %s AND %s" for _ in gaps)
    args: list[Any] = [last_id]
    for g in gaps:
        args += [g.first, g.last]
    since = ""
    if taken_until is not None:
        since = " AND captured_at > %s"
        args.append(taken_until)
    cur.execute(
        f"SELECT MIN(captured_at) FROM users_change_events WHERE event_id <= %s{gap_sql}{since}",
        args,
    )
    return cur.fetchone()[0]


@dataclass(frozen=True)
class SinkProgress:
    """What the stream recorded on the sink."""

    taken_until: datetime | None  # the end of its last batch with input, or its last commit
    last_batch: tuple  # (rows per second, duration ms, event-time watermark) of the last batch
    late_events: int
    quarantined: int


def read_sink_progress(sink: Any) -> SinkProgress:
    cur = sink.cursor()
    try:
        cur.execute(queries()["last_input_batch"], {"q": QUERY})
        last_input_batch = cur.fetchone()[0]
        cur.execute(queries()["last_commit"], {"q": QUERY})
        last_commit = cur.fetchone()[0]
        cur.execute(queries()["last_batch"], {"q": QUERY})
        batch = cur.fetchone() or (None, None, None)
        cur.execute(queries()["late_events"])
        late_events = int(cur.fetchone()[0])
        cur.execute(queries()["quarantined"])
        quarantined = int(cur.fetchone()[0])
    finally:
        cur.close()
    taken_until = max((t for t in (last_input_batch, last_commit) if t), default=None)
    return SinkProgress(taken_until, tuple(batch), late_events, quarantined)


def read_lag(source: Any, pipeline: str, sink: Any | None = None) -> Lag:
    """The lag figures: the publisher's side from `source` (watermark, change events), the
    stream's from `sink` (its progress and records); `sink` None: both on `source`'s
    connection (one database). Ages are measured on the source's clock; the sink's batch
    times are compared with capture times, so the two servers' clocks must agree (NTP)."""
    progress = read_sink_progress(source if sink is None else sink)
    cur = source.cursor()
    try:
        cur.execute(queries()["now"])
        now = cur.fetchone()[0]
        cur.execute(queries()["watermark"], {"pipeline": pipeline})
        wm = cur.fetchone() or (0, None, None)
        gaps = gaps_from_json(wm[2] or "[]")
        cur.execute(queries()["backlog"], {"last_id": wm[0]})
        backlog, oldest = cur.fetchone()
        waiting_since = _stream_waiting_since(cur, int(wm[0] or 0), gaps, progress.taken_until)
    finally:
        cur.close()
    batch = progress.last_batch
    return Lag(
        backlog_events=int(backlog),
        oldest_unpublished_age_s=_age(now, oldest),
        pending_gaps=len(gaps),
        publish_delay_s=_age(now, oldest),
        stream_delay_s=_age(now, waiting_since),
        last_batch_input_rows_per_s=float(batch[0] or 0.0),
        last_batch_duration_s=(batch[1] or 0) / 1000.0,
        event_time_watermark_epoch_s=(batch[2] - datetime(1970, 1, 1)).total_seconds()
        if batch[2]
        else 0.0,
        late_events_total=progress.late_events,
        quarantined_total=progress.quarantined,
    )


def read_lag_from_settings(pipeline: str) -> Lag:
    """read_lag through the reader role's connection on each side (regstream.connections)."""
    from regstream.connections import MYSQL_READER_SOURCE_CONN_ID, connect_side
    from regstream.settings import MYSQL_READER_CONN_ID

    source = connect_side(MYSQL_READER_SOURCE_CONN_ID)
    try:
        sink = connect_side(MYSQL_READER_CONN_ID)
        try:
            return read_lag(source, pipeline, sink)
        finally:
            sink.close()
    finally:
        source.close()


def fmt_duration(seconds: float) -> str:
    """12.3 -> '12 s', 312 -> '5.2 min', 9000 -> '2.5 h', 200000 -> '2.3 d'."""
    if seconds < 10:
        return f"{seconds:.1f} s"
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.1f} min"
    if seconds < 172800:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 86400:.1f} d"


VERDICTS = {"ok": "Healthy", "warn": "Attention", "bad": "Problem"}
# the reconciliation runs every 5 minutes by default: three missed runs is stale
# (REGSTREAM_RECONCILE_STALE_S, 900 by default)


@dataclass(frozen=True)
class Card:
    """One health card of the live view: what, its value, a verdict in words and why."""

    key: str
    title: str
    value: str
    status: str  # ok | warn | bad
    verdict: str
    detail: str
    rule: str


def grade(value: float, bound: float) -> str:
    """Green up to half the alert bound, amber up to it, red past it (the alert fires)."""
    return "ok" if value <= bound / 2 else ("warn" if value <= bound else "bad")


def _delay_card(
    key: str, title: str, delay_s: float, bound: float, idle: bool, detail: str
) -> Card:
    status = grade(delay_s, bound)
    verdict = "Idle: nothing waiting" if idle else VERDICTS[status]
    rule = (
        f"green up to {fmt_duration(bound / 2)}, amber up to {fmt_duration(bound)}, "
        "red past it (monitor_pipeline_lag fails)"
    )
    return Card(key, title, fmt_duration(delay_s), status, verdict, detail, rule)


def _reconcile_card(recon: dict[str, Any] | None, now_age_s: float | None) -> Card:
    rule = "green: every settled window matches; red: a window differs; amber: no recent check"
    if recon is None:
        return Card(
            "reconciliation",
            "Reconciliation",
            "not run",
            "warn",
            "No check yet",
            "reconcile_counts has not run",
            rule,
        )
    differ = recon["windows_differing"]
    ago = f"checked {fmt_duration(now_age_s or 0)} ago"
    if differ:
        return Card(
            "reconciliation",
            "Reconciliation",
            f"{differ} differ",
            "bad",
            VERDICTS["bad"],
            f"{differ} of {recon['windows_checked']} windows differ from the source; {ago}",
            rule,
        )
    stale = (now_age_s or 0) > settings.reconcile_stale_s()
    return Card(
        "reconciliation",
        "Reconciliation",
        f"{recon['windows_matched']} match",
        "warn" if stale else "ok",
        "Last check is old" if stale else "Counts match the source",
        f"matched {recon['windows_matched']} (window, store) counts; {ago}",
        rule,
    )


def _listed_card(key: str, title: str, total: int, recent: int, what: str) -> Card:
    status = "warn" if recent else "ok"
    verdict = f"{recent} in the last 24 h" if recent else "None in the last 24 h"
    rule = "amber when any arrived in the last 24 h; each is listed below"
    return Card(key, title, str(total), status, verdict, what, rule)


def health_cards(
    lag: Lag,
    recon: dict[str, Any] | None,
    recon_age_s: float | None,
    recent: dict[str, int],
    bounds: tuple[float, float],
    lateness: str,
) -> list[Card]:
    """The live view's cards, each with a plain verdict and the rule behind its colour."""
    max_publish, max_stream = bounds
    return [
        _delay_card(
            "publish lag",
            "Publish lag",
            lag.publish_delay_s,
            max_publish,
            lag.backlog_events == 0,
            f"{lag.backlog_events} CDC events waiting, {lag.pending_gaps} id gaps pending; "
            "age of the oldest event not yet in Kafka",
        ),
        _delay_card(
            "stream lag",
            "Stream lag",
            lag.stream_delay_s,
            max_stream,
            lag.stream_delay_s == 0,
            "age of the oldest published event no micro-batch has taken yet",
        ),
        _reconcile_card(recon, recon_age_s),
        _listed_card(
            "too-late events",
            "Too-late events",
            lag.late_events_total,
            recent["late"],
            f"valid registrations older than the lateness bound ({lateness}): not counted",
        ),
        _listed_card(
            "quarantined",
            "Quarantined messages",
            lag.quarantined_total,
            recent["quarantined"],
            "messages the stream could not read (bad JSON, fields, types or schema version)",
        ),
    ]


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
    ("late_events_total", "counter", "Distinct events recorded as too late (not counted)"),
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

    metrics = FastAPI(
        title="Registrations pipeline metrics",
        dependencies=[Depends(requires_access_view(AccessView.PLUGINS))],
    )

    @metrics.get("/", response_class=PlainTextResponse)
    def scrape() -> str:
        lag = read_lag_from_settings(settings.topic())
        return prometheus_text(lag, settings.max_publish_delay_s(), settings.max_stream_delay_s())

    return metrics


app = _metrics_app()
