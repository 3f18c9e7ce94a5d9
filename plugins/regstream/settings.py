"""The platform's settings: one typed object, one prefix (`REGSTREAM_`), one table of defaults.

Every setting is an environment variable named `REGSTREAM_<FIELD>`; unset or blank means its
default from `SPECS`. `load()` reads and checks them all at once and names the variable to fix.
Whoever deploys the platform (stackctl for the local stack, docker-compose) adds only what
depends on the machine: ports (the bootstrap servers) and paths (`REGSTREAM_STATE_DIR`,
`REGSTREAM_SPARK_JARS`). This module imports nothing of stackctl: the product does not depend
on its dev tool (tests/unit/test_settings.py proves it).

The small functions below (`setting`, `env_int`, `topic`, ...) are the API the DAGs and tasks
call; each reads the environment at call time (tests and tasks change it).
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from regstream.intervals import parse_interval

PREFIX = "REGSTREAM_"


class SettingsError(ValueError):
    """A setting with a value the platform cannot use; the message says what to write."""


@dataclass(frozen=True)
class Spec:
    """One setting: its variable, default (text, as a user writes it), kind and doc."""

    name: str
    default: str
    kind: str  # "str", "int" (with `minimum`), "interval", "memory" or "cron"
    doc: str
    readers: str
    minimum: int = 0

    @property
    def field(self) -> str:
        return self.name.removeprefix(PREFIX).lower()


# The one table of defaults (docs/settings.md is checked against it, docker-compose.yaml
# interpolates the same values, stackctl passes them to every Airflow program).
SPECS: tuple[Spec, ...] = (
    Spec("REGSTREAM_TOPIC", "customer_registrations", "str",
         "Kafka topic of the registration events, and the pipeline's name in MySQL",
         "publisher, stream job, lag monitor, live view", 0),
    Spec("REGSTREAM_TOPIC_PARTITIONS", "2", "int",
         "partitions of the topic when the publisher creates it",
         "publisher", 1),
    Spec("REGSTREAM_TOPIC_REPLICATION", "1", "int",
         "replication factor of the topic when the publisher creates it (stackctl: min(3, "
         "Kafka nodes) unless set)", "publisher", 1),
    Spec("REGSTREAM_KAFKA_BOOTSTRAP", "127.0.0.1:9092", "str",
         "Kafka bootstrap servers of the stream job (stackctl: the profile's brokers unless "
         "set)", "stream job", 0),
    Spec("REGSTREAM_WINDOW", "1 minute", "interval",
         "length of the event-time windows that are counted",
         "stream job, reconciliation", 0),
    Spec("REGSTREAM_LATENESS", "7 days", "interval",
         "how late an event may arrive and still be counted (the stream's watermark delay)",
         "stream job, reconciliation", 0),
    Spec("REGSTREAM_TRIGGER", "500 milliseconds", "interval",
         "processing-time trigger of the stream's micro-batches", "stream job", 0),
    Spec("REGSTREAM_PROGRESS_RETENTION_DAYS", "7", "int",
         "days of stream_progress rows kept", "stream job", 1),
    Spec("REGSTREAM_STREAM_LOG_EVERY_S", "60", "int",
         "the stream job logs one summary line of its batches per this many seconds",
         "stream job", 1),
    Spec("REGSTREAM_SINK_RECONNECT_MAX_S", "120", "int",
         "seconds the stream's MySQL sink keeps reconnecting (the batch then runs again) "
         "before the job fails", "stream job", 1),
    Spec("REGSTREAM_GAP_MAX_WAIT_S", "0", "int",
         "seconds the publisher waits for an id gap to fill before skipping it; 0 = forever",
         "publisher", 0),
    Spec("REGSTREAM_PUBLISH_PROBE_MS", "100", "int",
         "the long-running publisher probes for new rows (two primary-key lookups) this often",
         "publisher", 10),
    Spec("REGSTREAM_PUBLISH_TXN_MAX_EVENTS", "50000", "int",
         "most events in one Kafka transaction of the publisher (a catch-up is many)",
         "publisher", 1),
    Spec("REGSTREAM_PUBLISH_TXN_MAX_S", "5", "int",
         "the publisher stops reading into a transaction after this many seconds",
         "publisher", 1),
    Spec("REGSTREAM_PUBLISH_TXN_TIMEOUT_S", "30", "int",
         "Kafka transaction.timeout.ms (in s): how long a dead publisher's open transaction "
         "can hold back readers if no new publisher aborts it", "publisher", 10),
    Spec("REGSTREAM_PUBLISH_RUN_S", "3600", "int",
         "a publisher task ends cleanly after this many seconds and the next run starts at "
         "once (bounds each task log; 24 runs a day)", "publisher", 5),
    Spec("REGSTREAM_PUBLISH_SUMMARY_S", "60", "int",
         "the publisher logs one summary line (events, transactions, watermark, latency) "
         "per this many seconds", "publisher", 1),
    Spec("REGSTREAM_PUBLISH_OUTAGE_S", "300", "int",
         "the publisher task fails (Airflow retries it with backoff) after Kafka or MySQL "
         "has been unreachable this long; shorter outages it rides out", "publisher", 1),
    Spec("REGSTREAM_MAX_PUBLISH_DELAY_S", "60", "int",
         "lag alert: oldest unpublished event older than this many seconds",
         "lag monitor, live view, metrics", 0),
    Spec("REGSTREAM_MAX_STREAM_DELAY_S", "60", "int",
         "lag alert: events published this many seconds ago not yet counted",
         "lag monitor, live view, metrics", 0),
    Spec("REGSTREAM_SPARK_SHUFFLE_PARTITIONS", "2", "int",
         "spark.sql.shuffle.partitions of the stream job", "stream DAG (spark-submit)", 1),
    Spec("REGSTREAM_SPARK_DRIVER_MEMORY", "2g", "memory",
         "spark.driver.memory of the stream job", "stream DAG (spark-submit)", 0),
    Spec("REGSTREAM_SPARK_EXECUTOR_MEMORY", "", "memory",
         "spark.executor.memory on a standalone cluster; blank = Spark's default",
         "stream DAG (spark-submit)", 0),
    Spec("REGSTREAM_SPARK_CORES_MAX", "", "int",
         "spark.cores.max on a standalone cluster; blank = all", "stream DAG (spark-submit)", 1),
    Spec("REGSTREAM_RECONCILE_SETTLE_S", "120", "int",
         "reconciliation leaves windows that ended less than this many seconds ago",
         "reconcile DAG", 0),
    Spec("REGSTREAM_RECONCILE_SCHEDULE", "*/5 * * * *", "cron",
         "cron schedule of the reconcile DAG", "reconcile DAG", 0),
    Spec("REGSTREAM_RECONCILE_STALE_S", "900", "int",
         "health: the last reconciliation is stale when older than this many seconds",
         "monitoring (health cards)", 1),
    Spec("REGSTREAM_CSV_MAX_ROWS", "100000", "int",
         "most windows one CSV download of the live view may hold (more: 413)",
         "live view (API server)", 1),
)  # fmt: skip
SPEC_BY_NAME: dict[str, Spec] = {spec.name: spec for spec in SPECS}
DEFAULTS: dict[str, str] = {spec.name: spec.default for spec in SPECS}

# Set by the deployment, never defaulted here: where this machine keeps state and jars.
PATH_SETTINGS = ("REGSTREAM_STATE_DIR", "REGSTREAM_SPARK_JARS")


@dataclass(frozen=True)
class Settings:
    """The checked settings. Intervals stay text (Spark reads the same words) and have a
    `*_seconds` view; optional ones are None when blank."""

    topic: str
    topic_partitions: int
    topic_replication: int
    kafka_bootstrap: str
    window: str
    lateness: str
    trigger: str
    progress_retention_days: int
    stream_log_every_s: int
    sink_reconnect_max_s: int
    gap_max_wait_s: int
    publish_probe_ms: int
    publish_txn_max_events: int
    publish_txn_max_s: int
    publish_txn_timeout_s: int
    publish_run_s: int
    publish_summary_s: int
    publish_outage_s: int
    max_publish_delay_s: int
    max_stream_delay_s: int
    spark_shuffle_partitions: int
    spark_driver_memory: str
    spark_executor_memory: str | None
    spark_cores_max: int | None
    reconcile_settle_s: int
    reconcile_schedule: str
    reconcile_stale_s: int
    csv_max_rows: int

    @property
    def window_seconds(self) -> int:
        return int(parse_interval(self.window).total_seconds())

    @property
    def lateness_seconds(self) -> int:
        return int(parse_interval(self.lateness).total_seconds())

    def env(self) -> dict[str, str]:
        """The `REGSTREAM_*` variables under which `load()` returns these settings."""
        out = {}
        for spec in SPECS:
            value = getattr(self, spec.field)
            out[spec.name] = "" if value is None else str(value)
        return out


def _check(spec: Spec, raw: str) -> Any:
    def bad(why: str, example: str) -> SettingsError:
        return SettingsError(
            f"{spec.name}={raw!r}: {why}; write e.g. {spec.name}={example!r} "
            f"(or leave it unset for the default {spec.default!r})"
        )

    if spec.kind == "int":
        try:
            value = int(raw)
        except ValueError:
            raise bad("not an integer", spec.default or "2") from None
        if value < spec.minimum:
            raise bad(f"must be at least {spec.minimum}", spec.default or str(spec.minimum))
        return value
    if spec.kind == "interval":
        try:
            parse_interval(raw)
        except ValueError as exc:
            raise bad(str(exc), "5 minutes") from None
        return raw
    if spec.kind == "memory":
        number, unit = raw[:-1], raw[-1:].lower()
        if not (number.isdigit() and unit in "kmgt"):
            raise bad("not a JVM memory size", "2g")
        return raw
    if spec.kind == "cron" and len(raw.split()) != 5 and not raw.startswith("@"):
        raise bad("not a cron expression of 5 fields", "*/5 * * * *")
    return raw


def load(environ: Mapping[str, str] | None = None) -> Settings:
    """The settings of `environ` (default: os.environ), each checked; a SettingsError naming
    the first variable to fix otherwise."""
    env = os.environ if environ is None else environ
    values: dict[str, Any] = {}
    for spec in SPECS:
        raw = env.get(spec.name, "").strip() or spec.default
        values[spec.field] = _check(spec, raw) if raw else None
    return Settings(**values)


def defaults() -> Settings:
    return load({})


def current() -> Settings:
    """The settings of this process's environment now."""
    return load(os.environ)


def _check_fields_match_table() -> None:
    fields = [f.name for f in dataclasses.fields(Settings)]
    if fields != [spec.field for spec in SPECS]:  # a programming error, caught at import
        raise RuntimeError(f"Settings fields {fields} differ from SPECS")


_check_fields_match_table()


# ---------------------------------------------------------------- the functions tasks call


def setting(name: str) -> str:
    """A platform setting as text: the environment's value (checked), else its default."""
    spec = SPEC_BY_NAME[name]
    raw = os.environ.get(name, "").strip() or spec.default
    return str(_check(spec, raw)) if raw else ""


def env_int(name: str, default: int | None = None) -> int:
    """An integer setting (else `default` for a name outside the table), or a clear error."""
    if name in SPEC_BY_NAME and default is None:
        value = _check(SPEC_BY_NAME[name], setting(name))
        return int(value)
    raw = os.environ.get(name, "").strip()
    if raw == "":
        if default is None:
            raise SettingsError(f"{name} is not set and has no default: set it to an integer")
        return default
    try:
        return int(raw)
    except ValueError:
        raise SettingsError(f"environment variable {name}={raw!r} must be an integer") from None


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


def reconcile_stale_s() -> int:
    """The health check calls the last reconciliation stale past this age."""
    return env_int("REGSTREAM_RECONCILE_STALE_S")


# ParallelGC: the first micro-batch (JIT warm-up) runs ~20% faster than with G1 on 2 cores;
# with a 2 GiB heap its pauses stay far below the 1 s trigger.
SPARK_JAVA_OPTIONS = "-XX:+UseParallelGC"


def spark_submit_conf() -> dict[str, str]:
    """The --conf of the streaming job's spark-submit, sized for a small machine; one place
    for the Airflow DAG and the tests. On a standalone cluster the executors get
    REGSTREAM_SPARK_EXECUTOR_MEMORY each and REGSTREAM_SPARK_CORES_MAX cores in all."""
    s = current()
    conf = {
        "spark.sql.shuffle.partitions": str(s.spark_shuffle_partitions),
        "spark.driver.memory": s.spark_driver_memory,
        "spark.driver.extraJavaOptions": SPARK_JAVA_OPTIONS,
        "spark.executor.extraJavaOptions": SPARK_JAVA_OPTIONS,
        "spark.ui.enabled": "false",
    }
    if s.spark_executor_memory:
        conf["spark.executor.memory"] = s.spark_executor_memory
    if s.spark_cores_max:
        conf["spark.cores.max"] = str(s.spark_cores_max)
    return conf


def stream_job_args(checkpoints: Path) -> list[str]:
    """The streaming job's arguments (its `Usage:` docstring), from the settings."""
    s = current()
    return [
        "--bootstrap",
        s.kafka_bootstrap,
        "--topic",
        s.topic,
        "--checkpoint-dir",
        str(checkpoints),
        "--window",
        s.window,
        "--lateness",
        s.lateness,
        "--trigger",
        s.trigger,
        "--progress-retention-days",
        str(s.progress_retention_days),
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


def reference_table() -> str:
    """The settings as a Markdown table: docs/settings.md holds exactly this (a unit test)."""
    rows = ["| name | default | what it does | who reads it |", "|---|---|---|---|"]
    for spec in SPECS:
        default = f"`{spec.default}`" if spec.default else "(unset)"
        rows.append(f"| `{spec.name}` | {default} | {spec.doc} | {spec.readers} |")
    return "\n".join(rows) + "\n"
