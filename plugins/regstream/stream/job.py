"""The wiring: arguments, the Spark session, the Kafka source and the query. See the entry
point, spark_jobs/registration_counts.py, for usage."""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path
from typing import Any

import MySQLdb
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql.streaming import StreamingQuery

from regstream.intervals import parse_interval
from regstream.stream import LOG_NAME
from regstream.stream.lifecycle import acquire_instance_lock, run_until_stopped
from regstream.stream.mysql import mysql_params
from regstream.stream.parse import classified
from regstream.stream.report import PeriodReport
from regstream.stream.sink import COUNTS_QUERY, Sink, SinkState
from regstream.stream.windows import Windows

log = logging.getLogger(LOG_NAME)

KAFKA_FETCH_MAX_WAIT_MS = 10


def progress_listener(sink: Sink, report: PeriodReport) -> Any:
    from pyspark.sql.streaming import StreamingQueryListener

    class ProgressListener(StreamingQueryListener):
        def onQueryStarted(self, event: Any) -> None:
            log.info("query %s started (id %s, run %s)", event.name, event.id, event.runId)

        def onQueryProgress(self, event: Any) -> None:
            # into the period's summary line: a line per batch would flood the task log
            d = json.loads(event.progress.json)
            report.progress(d.get("durationMs") or {}, d.get("numInputRows", 0))

        def onQueryIdle(self, event: Any) -> None:
            try:
                sink.heartbeat()
            except MySQLdb.Error as exc:  # a missed heartbeat must not kill the job
                log.warning("could not record the heartbeat: %s", exc)

        def onQueryTerminated(self, event: Any) -> None:
            report.flush()
            log.info("query %s terminated: %s", event.id, event.exception or "clean stop")

    return ProgressListener()


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    from regstream.settings import kafka_bootstrap, setting, topic

    p = argparse.ArgumentParser(description="per-store registration counts per window")
    # defaults: the platform's settings (regstream.settings: the environment, else defaults)
    p.add_argument("--bootstrap", default=kafka_bootstrap())
    p.add_argument("--topic", default=topic())
    p.add_argument("--checkpoint-dir", required=True)
    p.add_argument("--window", default=setting("REGSTREAM_WINDOW"), help="window length")
    p.add_argument("--slide", default=None, help="slide for sliding windows (default: tumbling)")
    p.add_argument("--lateness", default=setting("REGSTREAM_LATENESS"), help="allowed lateness")
    p.add_argument("--trigger", default=setting("REGSTREAM_TRIGGER"), help="micro-batch interval")
    p.add_argument("--max-offsets-per-trigger", type=int, default=500_000)
    p.add_argument("--starting-offsets", default="earliest")
    p.add_argument(
        "--min-partitions",
        type=int,
        default=0,
        help="Spark tasks per micro-batch at least (default: the cores Spark has)",
    )
    p.add_argument(
        "--sink-conn-env",
        default="AIRFLOW_CONN_MYSQL_STREAM",
        help="env var holding the MySQL sink connection (Airflow JSON or URI)",
    )
    p.add_argument(
        "--progress-retention-days",
        type=int,
        default=int(setting("REGSTREAM_PROGRESS_RETENTION_DAYS")),
        help="keep stream_progress rows this long, 0 = forever (default 7)",
    )
    p.add_argument(
        "--log-every-s",
        type=int,
        default=int(setting("REGSTREAM_STREAM_LOG_EVERY_S")),
        help="one summary line of the batches per this many seconds (default 60)",
    )
    p.add_argument(
        "--reconnect-max-s",
        type=int,
        default=int(setting("REGSTREAM_SINK_RECONNECT_MAX_S")),
        help="seconds the sink keeps reconnecting to MySQL before the job fails (default 120)",
    )
    p.add_argument(
        "--lock-timeout",
        type=int,
        default=60,
        help="seconds to wait for another instance to release the job lock",
    )
    return p.parse_args(argv)


def configure_logging() -> None:
    logging.basicConfig(
        stream=sys.stdout,
        level=logging.INFO,
        format="%(asctime)s %(levelname)s [%(name)s] %(message)s",
    )
    logging.getLogger("py4j").setLevel(logging.WARNING)


# Logs "Current batch is falling behind" at WARN each time a batch outlasts the trigger:
# every batch of a backlog, which is no fault. The summary line shows batch times instead.
QUIET_LOGGERS = ("org.apache.spark.sql.execution.streaming.runtime.ProcessingTimeExecutor",)


def spark_session() -> SparkSession:
    # No state store: the job keeps no state of its own in Spark (see the module docstring).
    spark = (
        SparkSession.builder.appName("registration_counts")
        .config("spark.sql.session.timeZone", "UTC")
        # the listener's idle tick (the heartbeat row) while no data comes
        .config("spark.sql.streaming.noDataProgressEventInterval", "5000")
        # A batch's summary is a few hundred rows: adaptive execution only adds a Spark job
        # per batch (its shuffle map stage, run on its own) and a second planning.
        .config("spark.sql.adaptive.enabled", "false")
        .getOrCreate()
    )
    spark.sparkContext.setLogLevel("WARN")
    quiet_spark_loggers(spark)
    return spark


def quiet_spark_loggers(spark: SparkSession) -> None:
    jvm = spark.sparkContext._jvm
    assert jvm is not None  # a running session has its gateway
    log4j = jvm.org.apache.logging.log4j
    for name in QUIET_LOGGERS:
        log4j.core.config.Configurator.setLevel(name, log4j.Level.ERROR)


def starting_offsets(args: argparse.Namespace, state: SinkState) -> str:
    """Where a new checkpoint starts: where the sink stopped (every partition of the topic
    named; Spark requires all), else --starting-offsets. An existing checkpoint resumes
    from its own offsets and ignores this."""
    if not state.offsets:
        return args.starting_offsets
    from confluent_kafka.admin import AdminClient

    meta = AdminClient({"bootstrap.servers": args.bootstrap}).list_topics(args.topic, timeout=30)
    partitions = sorted(meta.topics[args.topic].partitions)
    # -2: earliest, for a partition the sink has not seen yet
    offsets = {str(p): state.offsets.get(p, -2) for p in partitions}
    return json.dumps({args.topic: offsets})


def kafka_source(spark: SparkSession, args: argparse.Namespace, starting: str) -> DataFrame:
    return (
        spark.readStream.format("kafka")
        .option("kafka.bootstrap.servers", args.bootstrap)
        .option("subscribe", args.topic)
        # only committed transactions of the publisher: what it produced before a crash and
        # aborted is never seen (regstream.publish)
        .option("kafka.isolation.level", "read_committed")
        .option("startingOffsets", starting)
        # The broker holds a fetch that finds no data this long. The consumer sends one
        # ahead when a poll returns, so a small batch's read first waited for that one:
        # 500 ms (Kafka's default) of every small batch.
        .option("kafka.fetch.max.wait.ms", KAFKA_FETCH_MAX_WAIT_MS)
        .option("maxOffsetsPerTrigger", args.max_offsets_per_trigger)
        # Offset ranges are split into at least this many tasks: the topic's partitions can
        # be fewer than the cores, or one can hold most of the events.
        .option("minPartitions", args.min_partitions or spark.sparkContext.defaultParallelism)
        .load()
    )


def start_query(
    spark: SparkSession, args: argparse.Namespace, sink: Sink, checkpoints: Path
) -> StreamingQuery:
    """The query; the sink learns its id (which checkpoint the batch ids belong to)."""
    state = sink.state()
    starting = starting_offsets(args, state)
    query = (
        classified(kafka_source(spark, args, starting))
        .writeStream.queryName(COUNTS_QUERY)
        .foreachBatch(sink.write_batch)
        .option("checkpointLocation", str(checkpoints / COUNTS_QUERY))
        .trigger(processingTime=args.trigger)
        .start()
    )
    sink.set_query_id(COUNTS_QUERY, str(query.id))
    log.info(
        "started: topic %s at %s, window %s, slide %s, lateness %s, trigger %s, checkpoints %s "
        "(query id %s), sink offsets %s, watermark %s, a new checkpoint would start at %s; "
        "SIGTERM the driver or touch %s to stop",
        args.topic,
        args.bootstrap,
        args.window,
        args.slide or "tumbling",
        args.lateness,
        args.trigger,
        checkpoints,
        query.id,
        state.offsets,
        sink.watermark(state),
        starting,
        checkpoints / "STOP",
    )
    return query


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    configure_logging()
    params = mysql_params(args.sink_conn_env)
    checkpoints = Path(args.checkpoint_dir).resolve()
    # One job per sink database: the sink's offsets and watermark are per database.
    lock = acquire_instance_lock(
        params, f"regstream_stream:{params['database']}", args.lock_timeout
    )
    report = PeriodReport(args.log_every_s, log.info, time.monotonic)
    sink = Sink(
        params,
        args.topic,
        Windows.parse(args.window, args.slide),
        parse_interval(args.lateness),
        args.progress_retention_days,
        reconnect_max_s=args.reconnect_max_s,
        lock=lock,
        report=report,
    )
    try:
        sink.check_schema()
        spark = spark_session()
        try:
            spark.streams.addListener(progress_listener(sink, report))
            query = start_query(spark, args, sink, checkpoints)
            return run_until_stopped(spark, [query], checkpoints / "STOP")
        finally:
            spark.stop()
    finally:
        sink.close()
        lock.close()
