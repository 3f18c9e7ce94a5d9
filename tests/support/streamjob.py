"""Run the Spark job as its own process (spark-submit), as the Airflow task does."""

from __future__ import annotations

import os
import re
import signal
import subprocess
from pathlib import Path
from typing import Any

from regstream import settings
from regstream.intervals import interval_seconds

from stackctl import config, procs
from stackctl.sparkjob import JOB, kill_job, spark_env, start_job  # noqa: F401 - shared here
from tests.conftest import root_conn, wait_for


def driver_pid(proc: subprocess.Popen, timeout: float = 60) -> int:
    """The job's Python driver: the child of spark-submit's JVM that runs JOB."""

    def find() -> int | None:
        children = procs.children(procs.all_pids(), {proc.pid})
        return next((p for p in children if str(JOB) in procs.argv(p)), None)

    return wait_for("the job's Python driver process", find, timeout)


def wait_started(
    proc: subprocess.Popen, log: Path, starts_before: int, timeout: float = 180
) -> None:
    """Until the job logs that its query runs (its start after `starts_before` others)."""

    def started() -> bool:
        if proc.poll() is not None:
            raise AssertionError(f"the streaming job exited with {proc.returncode}; see {log}")
        return len(query_ids(log)) > starts_before

    wait_for("the streaming job to start its queries", started, timeout, 0.5)


def create_topic(s: config.Settings, topic: str, partitions: int = 2, timeout: float = 30) -> None:
    """The topic, as the publisher makes it, before a job subscribes: a job that finds no topic
    fails (Airflow retries it), and a producer's auto-create would race the job's start."""
    from confluent_kafka.admin import AdminClient, NewTopic

    admin = AdminClient({"bootstrap.servers": s.kafka_bootstrap})
    new = NewTopic(topic, num_partitions=partitions, replication_factor=1)
    admin.create_topics([new])[topic].result(timeout)

    def ready() -> bool:
        meta = admin.list_topics(topic, timeout=5).topics.get(topic)
        return (
            meta is not None
            and meta.error is None
            and len(meta.partitions) == partitions
            and all(p.leader >= 0 for p in meta.partitions.values())
        )

    wait_for(f"every partition of {topic} to have a leader", ready, timeout)


def stop_job(proc: subprocess.Popen, sig: int = signal.SIGTERM, timeout: float = 120) -> int:
    """Signal the Python driver as an operator would; spark-submit's exit code."""
    os.kill(driver_pid(proc), sig)
    return proc.wait(timeout=timeout)


def query_ids(log: Path) -> list[str]:
    """The counts query's id at each start of the job, in order (it lives in the checkpoint)."""
    return re.findall(r"started: topic .*\(query id ([0-9a-f-]+)\)", log.read_text())


def ground_truth(
    s: config.Settings, database: str, window_s: int | None = None
) -> dict[tuple, int]:
    """Committed customers per window and store, but those the stream recorded as too late.
    Windows are the configured REGSTREAM_WINDOW unless `window_s` says otherwise."""
    if window_s is None:
        window_s = interval_seconds(settings.setting("REGSTREAM_WINDOW"))
    cur = root_conn(s, database).cursor()
    cur.execute(
        "SELECT FROM_UNIXTIME(FLOOR(UNIX_TIMESTAMP(create_date) / %s) * %s) AS ws, store_id, "
        "COUNT(*) FROM customer c WHERE NOT EXISTS (SELECT 1 FROM stream_late_events l "
        "WHERE l.customer_id = c.customer_id) GROUP BY ws, store_id",
        (window_s, window_s),
    )
    return {(ws, store): n for ws, store, n in cur.fetchall()}


def stream_counts(s: config.Settings, database: str) -> dict[tuple, int]:
    cur = root_conn(s, database).cursor()
    cur.execute("SELECT window_start, store_id, registrations FROM registrations_per_window")
    return {(ws, store): n for ws, store, n in cur.fetchall()}


def wait_counts_match(
    s: config.Settings, database: str, proc: subprocess.Popen | None = None, timeout: float = 180
) -> dict[tuple, int]:
    truth = ground_truth(s, database)

    def check() -> Any:
        if proc is not None and proc.poll() is not None:
            raise AssertionError(f"the streaming job exited with {proc.returncode}")
        got = stream_counts(s, database)
        return got if got == truth else None

    try:
        return wait_for("stream counts to equal the SQL ground truth", check, timeout, 0.5)
    except AssertionError:
        got = stream_counts(s, database)
        diff = {
            k: (truth.get(k), got.get(k))
            for k in set(truth) | set(got)
            if truth.get(k) != got.get(k)
        }
        raise AssertionError(
            f"{len(diff)} windows differ (truth, stream): {dict(list(diff.items())[:10])}"
        ) from None
