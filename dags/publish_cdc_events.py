"""
### Publish CDC events

One long-running task publishes the rows of `users_change_events` above the CDC watermark to
the Kafka topic. It probes MySQL every 100 ms (`REGSTREAM_PUBLISH_PROBE_MS`; two primary-key
lookups) and sends each batch of new rows in one Kafka transaction together with the new
watermark (in the compacted `<topic>-publisher-state` topic), then copies the watermark to
`latest_cdc_timestamp`. Idle, it sends nothing. A publisher killed before a commit leaves
nothing a `read_committed` reader sees; the next one aborts that transaction when it starts
and sends the events once. Rows of any writer are published, not only the ingest DAG's.

**Bounded**: the task ends cleanly after an hour (`REGSTREAM_PUBLISH_RUN_S`) and, the DAG
being `@continuous` with one active run, the next run starts at once: 24 runs a day. Its log
has one summary line a minute (events, transactions, watermark, capture -> acknowledged
latency), one line per gap decision and one per error. Kafka or MySQL outages shorter than
`REGSTREAM_PUBLISH_OUTAGE_S` (5 min) are retried inside the run; longer ones fail the task,
and its retries back off exponentially (1 s doubling, at most 10 min apart), so a failing
publisher makes a handful of runs an hour, not thousands.

Stop it: pause the DAG, then mark the running run failed (Airflow sends SIGTERM; the task
stops between two transactions). A second publisher beside a running one stands by until the
topic's MySQL lock is free.
"""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

from airflow.sdk import dag, task

# Worst case with tries that fail at once: 1+2+4+...+128 s of waits per run, about 14 runs
# an hour (tests/unit/test_dags_and_env.py checks the bound).
RETRIES = {
    "retries": 8,
    "retry_delay": timedelta(seconds=1),
    "retry_exponential_backoff": 2.0,
    "max_retry_delay": timedelta(minutes=10),
}


@dag(
    dag_id="publish_cdc_events",
    schedule="@continuous",
    start_date=datetime(2026, 1, 1, tzinfo=timezone.utc),
    catchup=False,
    max_active_runs=1,
    default_args=RETRIES,
    doc_md=__doc__,
    tags=["regstream", "cdc"],
)
def publish_cdc_events() -> None:
    @task
    def publish_new_events() -> dict:
        from regstream.publish_loop import run_task

        return run_task()

    publish_new_events()


publish_cdc_events()
