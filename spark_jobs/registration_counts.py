"""Registrations per store per event-time window, from the CDC topic into MySQL.

Usage:
  spark-submit --master local[2] --jars "$REGSTREAM_SPARK_JARS" \\
      spark_jobs/registration_counts.py \\
      --bootstrap 127.0.0.1:9092 --topic customer_registrations \\
      --checkpoint-dir .state/local/spark/checkpoints \\
      [--window "1 minute"] [--slide "30 seconds"] [--lateness "7 days"] \\
      [--trigger "1 second"] [--max-offsets-per-trigger 500000] [--min-partitions N] \\
      [--sink-conn-env AIRFLOW_CONN_MYSQL_STREAM] [--progress-retention-days 7]

Speed on 2 cores (benchmarks/bench_stream.py): Kafka offset ranges split into at least as many
tasks as cores (--min-partitions), Spark's built-in ISO timestamp parser, RocksDB state without
a total-row count (a read per write), ParallelGC (regstream.settings.spark_submit_conf).

Two queries share the application:
  registration_counts      valid events -> dedup by event_id -> count per (window, store)
                           -> idempotent upsert into registrations_per_window
  registration_quarantine  messages that are not valid events -> stream_quarantine, with the
                           raw value and the reason
Event time is the customer's registration time (`create_date`). Events older than the
watermark (newest event time seen minus --lateness) are dropped by Spark and counted per
micro-batch in stream_progress.late_rows_dropped (and the log), never silently.
The MySQL sink's credentials come from an environment variable holding an Airflow connection
(JSON or URI), never from the command line. Touch <checkpoint-dir>/STOP for a clean stop.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import urllib.parse
from pathlib import Path
from typing import Any

from pyspark.sql import Column, DataFrame, SparkSession
from pyspark.sql import functions as F
from pyspark.sql.types import (
    IntegerType,
    LongType,
    MapType,
    StringType,
    StructField,
    StructType,
    TimestampType,
)

SCHEMA_VERSION = 1
EVENT_SCHEMA = StructType(
    [
        StructField("schema_version", IntegerType()),
        StructField("event_id", LongType()),
        StructField("event_type", StringType()),
        StructField("customer_id", LongType()),
        StructField("store_id", IntegerType()),
        StructField("first_name", StringType()),
        StructField("last_name", StringType()),
        StructField("email", StringType()),
        StructField("address_id", LongType()),
        StructField("create_date", TimestampType()),
        StructField("captured_at", TimestampType()),
    ]
)
REQUIRED = ("schema_version", "event_id", "event_type", "customer_id", "store_id", "create_date")
# What the job reads of each message: the required fields only. The parser skips the rest
# (names, email, captured_at) cheaply; converting them costs a third of the throughput.
PARSE_SCHEMA = StructType([f for f in EVENT_SCHEMA.fields if f.name in REQUIRED])
# No timestampFormat: Spark's built-in ISO 8601 parser (2026-11-25T17:22:14[.ffffff]Z) is
# a fifth faster than a pattern and rejects what is not a timestamp ("yesterday") the same.
JSON_OPTIONS = {"mode": "PERMISSIVE"}

COUNTS_QUERY = "registration_counts"
QUARANTINE_QUERY = "registration_quarantine"


def _reason(raw: Column, parsed: Column) -> Column:
    """Why a message is not a usable event; null when it is."""
    obj = F.from_json(raw, MapType(StringType(), StringType()))
    checks = [
        F.when(raw.isNull(), F.lit("empty value")),
        F.when(raw.isNotNull() & obj.isNull(), F.lit("not a JSON object")),
    ]
    for name in REQUIRED:
        present = obj.getItem(name).isNotNull()
        checks.append(F.when(obj.isNotNull() & ~present, F.lit(f"missing field {name}")))
        checks.append(
            F.when(
                obj.isNotNull() & present & parsed[name].isNull(), F.lit(f"wrong type for {name}")
            )
        )
    checks.append(
        F.when(
            parsed["schema_version"].isNotNull() & (parsed["schema_version"] != SCHEMA_VERSION),
            F.concat(F.lit("unsupported schema_version "), parsed["schema_version"].cast("string")),
        )
    )
    detailed = F.concat_ws("; ", *checks)
    ok = parsed["schema_version"] == SCHEMA_VERSION
    for name in REQUIRED:
        ok = ok & parsed[name].isNotNull()
    # The detailed (second) parse runs only for bad messages.
    return F.when(ok, F.lit(None).cast("string")).otherwise(
        F.when(detailed == "", F.lit("invalid event")).otherwise(detailed)
    )


def parse_events(kafka_rows: DataFrame) -> DataFrame:
    """Kafka rows -> event columns plus `reason` (null for a valid event) and Kafka position."""
    raw = F.col("value").cast("string")
    parsed = F.from_json(raw, PARSE_SCHEMA, JSON_OPTIONS)
    return (
        kafka_rows.select(
            raw.alias("raw_value"),
            F.col("key").alias("raw_key"),
            "topic",
            "partition",
            "offset",
            F.col("timestamp").alias("kafka_timestamp"),
            parsed.alias("e"),
        )
        .withColumn("reason", _reason(F.col("raw_value"), F.col("e")))
        .select(
            "e.*",
            "reason",
            "raw_value",
            "raw_key",
            "topic",
            "partition",
            "offset",
            "kafka_timestamp",
        )
    )


def build_counts(
    events: DataFrame, window: str = "1 minute", slide: str | None = None, lateness: str = "7 days"
) -> DataFrame:
    """Valid events -> registrations per (window, store), repeats of an event_id counted once."""
    # Only the three columns the count needs: dedup state and both shuffles carry whole
    # rows otherwise (raw JSON included), several times the bytes.
    valid = events.where(F.col("reason").isNull()).select("event_id", "store_id", "create_date")
    deduped = valid.withWatermark("create_date", lateness).dropDuplicatesWithinWatermark(
        ["event_id"]
    )
    win = F.window("create_date", window, slide) if slide else F.window("create_date", window)
    return (
        deduped.groupBy(win.alias("w"), F.col("store_id"))
        .agg(F.count(F.lit(1)).alias("registrations"))
        .select(
            F.col("w.start").alias("window_start"),
            F.col("w.end").alias("window_end"),
            "store_id",
            "registrations",
        )
    )


# ------------------------------------------------------------------ MySQL sink


def mysql_params(conn_env: str) -> dict[str, Any]:
    """Connection parameters from an Airflow connection in an environment variable."""
    raw = os.environ.get(conn_env)
    if not raw:
        raise SystemExit(f"environment variable {conn_env} (the MySQL sink connection) is not set")
    if raw.lstrip().startswith("{"):
        c = json.loads(raw)
        host, port, user = c.get("host"), c.get("port"), c.get("login")
        password, db = c.get("password"), c.get("schema")
    else:
        u = urllib.parse.urlsplit(raw)
        host, port, db = u.hostname, u.port, u.path.lstrip("/")
        user = urllib.parse.unquote(u.username or "")
        password = urllib.parse.unquote(u.password or "")
    return {
        "host": host or "127.0.0.1",
        "port": int(port or 3306),
        "user": user,
        "password": password or "",
        "database": db,
        "charset": "utf8mb4",
    }


def mysql_connect(params: dict[str, Any]) -> Any:
    import MySQLdb

    conn = MySQLdb.connect(**params, autocommit=True)
    conn.cursor().execute("SET time_zone = '+00:00'")
    return conn


UPSERT = (
    "INSERT INTO registrations_per_window (window_start, window_end, store_id, registrations, "
    "batch_id) VALUES (%s, %s, %s, %s, %s) ON DUPLICATE KEY UPDATE "
    # Set, never add: a replayed batch writes the same numbers. A stale batch never
    # overwrites a newer one.
    "registrations = IF(VALUES(batch_id) >= batch_id, VALUES(registrations), registrations), "
    "batch_id = GREATEST(batch_id, VALUES(batch_id))"
)
QUARANTINE = (
    "INSERT IGNORE INTO stream_quarantine (topic, kafka_partition, kafka_offset, "
    "kafka_timestamp, raw_key, raw_value, reason) VALUES (%s, %s, %s, %s, %s, %s, %s)"
)


PRUNE_PROGRESS = (
    # Rows that recorded dropped late events are kept: they are the record of what was lost.
    "DELETE FROM stream_progress WHERE finished_at < NOW(6) - INTERVAL %s DAY "
    "AND late_rows_dropped = 0 LIMIT 100000"
)
PRUNE_EVERY_S = 3600.0


class Sink:
    """Writes from the driver; results per batch are small (only the windows it touched)."""

    def __init__(self, params: dict[str, Any], progress_retention_days: int = 7) -> None:
        self.params = params
        self.conn: Any = None
        self.progress_retention_days = progress_retention_days
        self._pruned_at: float | None = None

    def _cursor(self) -> Any:
        if self.conn is None:
            self.conn = mysql_connect(self.params)
        try:
            self.conn.ping()
        except Exception:  # noqa: BLE001 - reconnect on any dropped connection
            self.conn = mysql_connect(self.params)
        return self.conn.cursor()

    def write_counts(self, batch: DataFrame, batch_id: int) -> None:
        rows = [
            (r.window_start, r.window_end, r.store_id, r.registrations, batch_id)
            for r in batch.collect()
        ]
        if rows:
            cur = self._cursor()
            cur.executemany(UPSERT, rows)
            cur.close()

    def write_quarantine(self, batch: DataFrame, batch_id: int) -> None:
        rows = [
            (
                r.topic,
                r.partition,
                r.offset,
                r.kafka_timestamp,
                r.raw_key,
                r.raw_value.encode() if r.raw_value is not None else None,
                r.reason[:500],
            )
            for r in batch.select(
                "topic", "partition", "offset", "kafka_timestamp", "raw_key", "raw_value", "reason"
            ).collect()
        ]
        if rows:
            cur = self._cursor()
            cur.executemany(QUARANTINE, rows)
            cur.close()
            print(
                f"[quarantine] batch {batch_id}: {len(rows)} messages quarantined, "
                f"first reason: {rows[0][6]}",
                flush=True,
            )

    def write_progress(self, p: dict[str, Any]) -> None:
        cur = self._cursor()
        cur.execute(
            "INSERT INTO stream_progress (query_name, batch_id, input_rows, rows_per_second, "
            "duration_ms, event_watermark, late_rows_dropped, kafka_end_offsets) "
            "VALUES (%s, %s, %s, %s, %s, %s, %s, %s) ON DUPLICATE KEY UPDATE "
            "input_rows = VALUES(input_rows), rows_per_second = VALUES(rows_per_second), "
            "duration_ms = VALUES(duration_ms), event_watermark = VALUES(event_watermark), "
            "late_rows_dropped = VALUES(late_rows_dropped), "
            "kafka_end_offsets = VALUES(kafka_end_offsets), finished_at = CURRENT_TIMESTAMP(6)",
            (
                p["name"],
                p["batch_id"],
                p["input_rows"],
                p["rows_per_second"],
                p["duration_ms"],
                p["watermark"],
                p["late_rows_dropped"],
                p["end_offsets"],
            ),
        )
        self._prune_progress(cur)
        cur.close()

    def _prune_progress(self, cur: Any) -> None:
        """stream_progress gets a row per micro-batch: prune old ones at start and hourly."""
        now = time.monotonic()
        if self.progress_retention_days <= 0 or (
            self._pruned_at is not None and now - self._pruned_at < PRUNE_EVERY_S
        ):
            return
        self._pruned_at = now
        cur.execute(PRUNE_PROGRESS, (self.progress_retention_days,))
        if cur.rowcount:
            print(
                f"[progress] pruned {cur.rowcount} stream_progress rows older than "
                f"{self.progress_retention_days} days",
                flush=True,
            )


def progress_summary(progress: Any) -> dict[str, Any]:
    """The fields of a StreamingQueryProgress that a person acts on."""
    d = json.loads(progress.json) if hasattr(progress, "json") else progress
    ops = d.get("stateOperators") or []
    wm = (d.get("eventTime") or {}).get("watermark")
    if wm and wm.startswith("1970-01-01"):
        wm = None
    sources = d.get("sources") or [{}]
    return {
        "name": d.get("name"),
        "batch_id": d.get("batchId"),
        "input_rows": d.get("numInputRows", 0),
        "rows_per_second": round(d.get("processedRowsPerSecond") or 0.0, 1),
        "duration_ms": (d.get("durationMs") or {}).get("triggerExecution"),
        "watermark": wm.replace("T", " ").rstrip("Z")[:23] if wm else None,
        "late_rows_dropped": sum(int(o.get("numRowsDroppedByWatermark", 0)) for o in ops),
        # The state's total rows are not tracked (trackTotalNumberOfRows=false: a read per
        # write); the rows written this batch and the state's memory are.
        "state_rows_updated": sum(int(o.get("numRowsUpdated", 0)) for o in ops),
        "state_mib": round(sum(int(o.get("memoryUsedBytes", 0)) for o in ops) / 2**20, 1),
        "end_offsets": json.dumps(sources[0].get("endOffset")),
    }


def progress_listener(sink: Sink) -> Any:
    from pyspark.sql.streaming import StreamingQueryListener

    class ProgressLogger(StreamingQueryListener):
        def onQueryStarted(self, event: Any) -> None:
            print(
                f"[progress] query {event.name} started (id {event.id}, run {event.runId})",
                flush=True,
            )

        def onQueryProgress(self, event: Any) -> None:
            p = progress_summary(event.progress)
            if p["input_rows"] or p["name"] == COUNTS_QUERY:
                print(
                    f"[progress] {p['name']} batch {p['batch_id']}: {p['input_rows']} input "
                    f"rows, {p['rows_per_second']} rows/s, {p['duration_ms']} ms, watermark "
                    f"{p['watermark']}, late rows dropped {p['late_rows_dropped']}, state rows "
                    f"updated {p['state_rows_updated']}, state memory {p['state_mib']} MiB, "
                    f"offsets {p['end_offsets']}",
                    flush=True,
                )
            try:
                sink.write_progress(p)
            except Exception as exc:  # noqa: BLE001 - progress rows must not kill the job
                print(f"[progress] could not record progress: {exc}", flush=True)

        def onQueryIdle(self, event: Any) -> None:
            pass

        def onQueryTerminated(self, event: Any) -> None:
            print(
                f"[progress] query {event.id} terminated: {event.exception or 'clean stop'}",
                flush=True,
            )

    return ProgressLogger()


# ------------------------------------------------------------------ wiring


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description="per-store registration counts per window")
    p.add_argument(
        "--bootstrap", default=os.environ.get("REGSTREAM_KAFKA_BOOTSTRAP", "127.0.0.1:9092")
    )
    p.add_argument("--topic", default=os.environ.get("REGSTREAM_TOPIC", "customer_registrations"))
    p.add_argument("--checkpoint-dir", required=True)
    p.add_argument("--window", default="1 minute", help="window length (default 1 minute)")
    p.add_argument("--slide", default=None, help="slide for sliding windows (default: tumbling)")
    p.add_argument("--lateness", default="7 days", help="allowed lateness (default 7 days)")
    p.add_argument("--trigger", default="1 second", help="micro-batch interval (default 1 s)")
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
        default=7,
        help="keep stream_progress rows this long, 0 = forever (default 7; rows that "
        "recorded dropped late events are always kept)",
    )
    p.add_argument(
        "--lock-timeout",
        type=int,
        default=60,
        help="seconds to wait for another instance to release the job lock",
    )
    return p.parse_args(argv)


def kafka_source(spark: SparkSession, args: argparse.Namespace) -> DataFrame:
    return (
        spark.readStream.format("kafka")
        .option("kafka.bootstrap.servers", args.bootstrap)
        .option("subscribe", args.topic)
        .option("startingOffsets", args.starting_offsets)
        .option("maxOffsetsPerTrigger", args.max_offsets_per_trigger)
        # Offset ranges are split into at least this many tasks: the topic's partitions can
        # be fewer than the cores, or one can hold most of the events.
        .option("minPartitions", args.min_partitions or spark.sparkContext.defaultParallelism)
        .load()
    )


def acquire_instance_lock(params: dict[str, Any], name: str, timeout: int) -> Any:
    """Exactly one instance per checkpoint: a MySQL named lock held for the driver's life
    (released by the server the moment the driver's connection dies)."""
    conn = mysql_connect(params)
    cur = conn.cursor()
    cur.execute("SELECT GET_LOCK(%s, %s)", (name, timeout))
    if cur.fetchone()[0] != 1:
        raise SystemExit(f"another instance holds lock {name!r}; not starting a second one")
    return conn


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    params = mysql_params(args.sink_conn_env)
    checkpoints = Path(args.checkpoint_dir).resolve()
    lock_name = f"regstream_stream:{checkpoints}"[-64:]
    lock_conn = acquire_instance_lock(params, lock_name, args.lock_timeout)
    stop_file = checkpoints / "STOP"
    stop_file.unlink(missing_ok=True)

    spark = (
        SparkSession.builder.appName("registration_counts")
        .config("spark.sql.session.timeZone", "UTC")
        .config(
            "spark.sql.streaming.stateStore.providerClass",
            "org.apache.spark.sql.execution.streaming.state.RocksDBStateStoreProvider",
        )
        .config("spark.sql.streaming.stateStore.rocksdb.changelogCheckpointing.enabled", "true")
        .config("spark.sql.streaming.stateStore.rocksdb.trackTotalNumberOfRows", "false")
        .getOrCreate()
    )
    spark.sparkContext.setLogLevel("WARN")
    sink = Sink(params, args.progress_retention_days)
    spark.streams.addListener(progress_listener(sink))

    events = parse_events(kafka_source(spark, args))
    counts = build_counts(events, args.window, args.slide, args.lateness)
    q_counts = (
        counts.writeStream.queryName(COUNTS_QUERY)
        .outputMode("update")
        .foreachBatch(sink.write_counts)
        .option("checkpointLocation", str(checkpoints / COUNTS_QUERY))
        .trigger(processingTime=args.trigger)
        .start()
    )
    bad = parse_events(kafka_source(spark, args)).where(F.col("reason").isNotNull())
    q_bad = (
        bad.writeStream.queryName(QUARANTINE_QUERY)
        .foreachBatch(sink.write_quarantine)
        .option("checkpointLocation", str(checkpoints / QUARANTINE_QUERY))
        .trigger(processingTime=args.trigger)
        .start()
    )
    print(
        f"[job] started: topic {args.topic} at {args.bootstrap}, window {args.window}, "
        f"slide {args.slide or 'tumbling'}, lateness {args.lateness}, trigger {args.trigger}, "
        f"checkpoints {checkpoints}; touch {stop_file} to stop",
        flush=True,
    )
    try:
        while True:
            for q in (q_counts, q_bad):
                if not q.isActive:
                    exc = q.exception()
                    raise SystemExit(f"query {q.name} stopped: {exc}")
            if stop_file.exists():
                print("[job] stop file found: stopping the queries", flush=True)
                q_counts.stop()
                q_bad.stop()
                stop_file.unlink(missing_ok=True)
                return 0
            q_counts.awaitTermination(1)
    finally:
        spark.stop()
        lock_conn.close()


if __name__ == "__main__":
    sys.exit(main())
