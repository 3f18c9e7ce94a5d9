"""The package's settings: the environment (set by stackctl or docker-compose), else the
defaults, which live in one place: stackctl.config.DEFAULTS."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from stackctl.config import env_int, setting

# Airflow connection ids, one per MySQL role, plus Kafka and Spark.
MYSQL_INGEST_CONN_ID = "mysql_ingest"
MYSQL_PUBLISHER_CONN_ID = "mysql_publisher"
MYSQL_STREAM_CONN_ID = "mysql_stream"
MYSQL_READER_CONN_ID = "mysql_reader"
KAFKA_CONN_ID = "kafka_default"
SPARK_CONN_ID = "spark_default"


def topic() -> str:
    return setting("REGSTREAM_TOPIC")


def topic_partitions() -> int:
    return env_int("REGSTREAM_TOPIC_PARTITIONS")


def topic_replication() -> int:
    return env_int("REGSTREAM_TOPIC_REPLICATION")


def kafka_bootstrap() -> str:
    return setting("REGSTREAM_KAFKA_BOOTSTRAP")


def state_dir() -> Path:
    return Path(os.environ.get("REGSTREAM_STATE_DIR", Path.cwd() / ".state" / "local"))


def max_publish_delay_s() -> int:
    """Alert when the oldest unpublished event is older than this."""
    return env_int("REGSTREAM_MAX_PUBLISH_DELAY_S")


def max_stream_delay_s() -> int:
    """Alert when events published this long ago are not yet in a micro-batch."""
    return env_int("REGSTREAM_MAX_STREAM_DELAY_S")


def gap_max_wait_s() -> int:
    """0 = wait for open transactions forever (never skip an id that may still commit)."""
    return env_int("REGSTREAM_GAP_MAX_WAIT_S")


# ParallelGC: the first micro-batch (JIT warm-up) runs ~20% faster than with G1 on 2 cores;
# with a 2 GiB heap its pauses stay far below the 1 s trigger.
SPARK_JAVA_OPTIONS = "-XX:+UseParallelGC"


def spark_submit_conf() -> dict[str, str]:
    """The --conf of the streaming job's spark-submit, sized for a small machine; one place
    for the Airflow DAG and the tests. On a standalone cluster the executors get
    REGSTREAM_SPARK_EXECUTOR_MEMORY each and REGSTREAM_SPARK_CORES_MAX cores in all."""
    conf = {
        "spark.sql.shuffle.partitions": str(env_int("REGSTREAM_SPARK_SHUFFLE_PARTITIONS")),
        "spark.driver.memory": setting("REGSTREAM_SPARK_DRIVER_MEMORY"),
        "spark.driver.extraJavaOptions": SPARK_JAVA_OPTIONS,
        "spark.executor.extraJavaOptions": SPARK_JAVA_OPTIONS,
        "spark.ui.enabled": "false",
    }
    if os.environ.get("REGSTREAM_SPARK_EXECUTOR_MEMORY"):
        conf["spark.executor.memory"] = os.environ["REGSTREAM_SPARK_EXECUTOR_MEMORY"]
    if os.environ.get("REGSTREAM_SPARK_CORES_MAX"):
        conf["spark.cores.max"] = os.environ["REGSTREAM_SPARK_CORES_MAX"]
    return conf


def stream_job_args(checkpoints: Path) -> list[str]:
    """The streaming job's arguments (its `Usage:` docstring), from the settings."""
    return [
        "--bootstrap",
        kafka_bootstrap(),
        "--topic",
        topic(),
        "--checkpoint-dir",
        str(checkpoints),
        "--window",
        setting("REGSTREAM_WINDOW"),
        "--lateness",
        setting("REGSTREAM_LATENESS"),
        "--trigger",
        setting("REGSTREAM_TRIGGER"),
        "--progress-retention-days",
        setting("REGSTREAM_PROGRESS_RETENTION_DAYS"),
    ]


# Secrets of Airflow itself that a task's children never need.
AIRFLOW_SECRET_VARS = (
    "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN",
    "AIRFLOW__CELERY__RESULT_BACKEND",
    "AIRFLOW__CELERY__BROKER_URL",
    "AIRFLOW__API_AUTH__JWT_SECRET",
    "AIRFLOW__CORE__FERNET_KEY",
)


def keep_only_connections(*conn_ids: str) -> Callable[[Any], None]:
    """A `pre_execute` hook: drop from the task's environment every `AIRFLOW_CONN_*` but
    `conn_ids`, and Airflow's own secrets, so that what the task starts (spark-submit and the
    Spark driver) receives only the credentials it uses. LocalExecutor forks tasks from the
    scheduler, which holds the connections of every task; this narrows it per task."""
    keep = {f"AIRFLOW_CONN_{c.upper()}" for c in conn_ids}

    def scrub(context: Any) -> None:
        for name in list(os.environ):
            if (name.startswith("AIRFLOW_CONN_") and name not in keep) or (
                name in AIRFLOW_SECRET_VARS
            ):
                del os.environ[name]

    return scrub
