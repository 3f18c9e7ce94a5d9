"""
### Monitor pipeline lag

Every minute, checks that the platform keeps up: the oldest unpublished CDC event must be
younger than `max_publish_delay_s`, and events published must be counted by the stream within
`max_stream_delay_s` (defaults from `REGSTREAM_MAX_PUBLISH_DELAY_S` /
`REGSTREAM_MAX_STREAM_DELAY_S`, 60 s each). An idle pipeline is not late.

When a bound is passed, `check_pipeline_lag` **fails** with a line per problem (what is late,
by how much, what to look at): a red run in the UI, and Airflow's failure callbacks/alerts
fire. It clears by itself: the next run succeeds once the pipeline caught up. The same
figures are served to Prometheus at `/regstream/metrics`. Reads through the reader role on
each side: `mysql_reader_source` (watermark, change events' ids and times) and `mysql_reader`
(the stream's progress); without `mysql_reader_source`, both are `mysql_reader` (one database;
docs/sink.md).
"""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

from airflow.sdk import Param, dag, task
from regstream.settings import max_publish_delay_s, max_stream_delay_s


@dag(
    dag_id="monitor_pipeline_lag",
    schedule="* * * * *",
    start_date=datetime(2026, 1, 1, tzinfo=timezone.utc),
    catchup=False,
    max_active_runs=1,
    default_args={"retries": 1, "retry_delay": timedelta(seconds=5)},
    params={
        "max_publish_delay_s": Param(max_publish_delay_s(), type="integer", minimum=1),
        "max_stream_delay_s": Param(max_stream_delay_s(), type="integer", minimum=1),
    },
    doc_md=__doc__,
    tags=["regstream", "monitoring"],
)
def monitor_pipeline_lag() -> None:
    @task
    def check_pipeline_lag(params: dict | None = None) -> dict:
        import logging
        from dataclasses import asdict

        from regstream.monitoring import read_lag_from_settings
        from regstream.settings import topic

        lag = read_lag_from_settings(topic())
        p = params or {}
        problems = lag.late(p["max_publish_delay_s"], p["max_stream_delay_s"])
        logging.getLogger(__name__).info(
            "backlog %d events, publish delay %.1fs, stream delay %.1fs, pending gaps %d",
            lag.backlog_events,
            lag.publish_delay_s,
            lag.stream_delay_s,
            lag.pending_gaps,
        )
        if problems:
            raise RuntimeError("pipeline lagging: " + "; ".join(problems))
        return asdict(lag)

    check_pipeline_lag()


monitor_pipeline_lag()
