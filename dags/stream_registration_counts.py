"""
### Stream registration counts

Submits `spark_jobs/registration_counts.py` (Spark Structured Streaming) with the apache-spark
provider and keeps it alive: the DAG is `@continuous` with one active run, so when the job dies
the task fails, retries after 5-10 s (then doubling, at most 10 min apart), and a new run
starts as soon as one ends. The job restarts
from its checkpoint (offsets) and a MySQL lock keeps one job per sink database.
Under LocalExecutor the task is a child of the scheduler: a scheduler that dies takes it along
(stackctl's `leftover-reaper` sends SIGTERM; `on_kill` stops spark-submit and the driver ends,
releasing the lock), Airflow records the try as failed and the new scheduler retries it.

The task log stays readable over weeks: one summary line per `REGSTREAM_STREAM_LOG_EVERY_S`
(60 s) with batches, input rows, events counted, too-late and quarantined events, batch ms
p50/p95/max, the watermark and the Kafka offsets reached; a batch that quarantines or drops
too-late events, and every MySQL reconnect, gets its own line. A MariaDB restart does not
fail the task: the job reconnects (for up to `REGSTREAM_SINK_RECONNECT_MAX_S`) and runs the
batch again. Counts land in `registrations_per_window`, too-late events in
`stream_late_events`; every batch also writes a row of `stream_progress`.

Stop on purpose: `make stream-stop` pauses this DAG and touches the job's STOP file (seen within
2 s; SIGTERM/SIGINT to the driver's Python process do the same): the running micro-batch
finishes, the job stops its queries cleanly and the task succeeds. Connection `spark_default` picks the master:
`local[2]` by default, `spark://host:7077` for a cluster.
"""

from __future__ import annotations

import os
from datetime import datetime, timedelta, timezone
from pathlib import Path

from airflow.providers.apache.spark.operators.spark_submit import SparkSubmitOperator
from airflow.sdk import dag
from regstream.settings import (
    MYSQL_STREAM_CONN_ID,
    SPARK_CONN_ID,
    keep_only_connections,
    spark_submit_conf,
    state_dir,
    stream_job_args,
)

JOB = Path(__file__).resolve().parent.parent / "spark_jobs" / "registration_counts.py"
CHECKPOINTS = state_dir() / "spark" / "checkpoints"


# Worst case with tries that fail at once: 5+10+20+40+80 s of waits per run, about 23 runs an
# hour (tests/unit/test_dags_and_env.py checks the bound); a MySQL restart is ridden out
# inside the run (REGSTREAM_SINK_RECONNECT_MAX_S).
RETRIES = {
    "retries": 5,
    "retry_delay": timedelta(seconds=5),
    "retry_exponential_backoff": 2.0,
    "max_retry_delay": timedelta(minutes=10),
}


@dag(
    dag_id="stream_registration_counts",
    schedule="@continuous",
    start_date=datetime(2026, 1, 1, tzinfo=timezone.utc),
    catchup=False,
    max_active_runs=1,
    default_args=RETRIES,
    doc_md=__doc__,
    tags=["regstream", "stream"],
)
def stream_registration_counts() -> None:
    SparkSubmitOperator(
        task_id="run_streaming_job",
        conn_id=SPARK_CONN_ID,
        application=str(JOB),
        name="registration_counts",
        jars=os.environ.get("REGSTREAM_SPARK_JARS", ""),  # set by stackctl / compose
        conf=spark_submit_conf(),
        application_args=stream_job_args(CHECKPOINTS),
        verbose=False,
        # the Spark driver gets the stream role's credentials and nothing else
        pre_execute=keep_only_connections(MYSQL_STREAM_CONN_ID, SPARK_CONN_ID),
    )


stream_registration_counts()
