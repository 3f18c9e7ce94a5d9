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
(JSON or URI), never from the command line.

Stopping: SIGTERM or SIGINT to the driver's Python process, or touching <checkpoint-dir>/STOP
(`make stream-stop`), stops both queries and exits 0; a restart resumes from the checkpoint.
A query that fails stops the other one and the job exits non-zero.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import sys
import threading
import time
import urllib.parse
from collections.abc import Sequence
from pathlib import Path
from types import FrameType
from typing import Any

import MySQLdb
from pyspark.errors import StreamingQueryException
from pyspark.sql import Column, DataFrame, SparkSession
from pyspark.sql import functions as F
from pyspark.sql.streaming import StreamingQuery
from pyspark.sql.types import (
    IntegerType,
    LongType,
    MapType,
    StringType,
    StructField,
    StructType,
    TimestampType,
)

# Named, not __name__: run by spark-submit the module is __main__.
log = logging.getLogger("registration_counts")

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
    if valid.isStreaming:
        deduped = valid.withWatermark("create_date", lateness).dropDuplicatesWithinWatermark(
            ["event_id"]
        )
    else:
        # A static frame (unit tests) holds every event at once: a plain dedup is the same.
        deduped = valid.dropDuplicates(["event_id"])
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
    conn = MySQLdb.connect(**params, autocommit=True)
    cur = conn.cursor()
    cur.execute("SET time_zone = '+00:00'")
    cur.close()
    return conn


UPSERT = (
    "INSERT INTO registrations_per_window (window_start, window_end, store_id, registrations, "
    "batch_id, query_id) VALUES (%s, %s, %s, %s, %s, %s) ON DUPLICATE KEY UPDATE "
    # Set, never add: a replayed batch writes the same numbers. Within one checkpoint (one
    # query id) a stale batch never overwrites a newer one. A new checkpoint (batch ids start
    # again at 0, counts recomputed from the topic) takes the window over. The assignments run
    # left to right, each seeing the ones before: query_id is assigned last, so both tests
    # compare with the row's old query_id.
    "registrations = IF(query_id <=> VALUES(query_id) AND VALUES(batch_id) < batch_id, "
    "registrations, VALUES(registrations)), "
    "batch_id = IF(query_id <=> VALUES(query_id), GREATEST(batch_id, VALUES(batch_id)), "
    "VALUES(batch_id)), "
    "query_id = VALUES(query_id)"
)
# For a table from before sql/20_stream.sql added query_id: batch ids only, so after a new
# checkpoint existing windows keep their counts until batch ids catch up (logged at start).
UPSERT_WITHOUT_QUERY_ID = (
    "INSERT INTO registrations_per_window (window_start, window_end, store_id, registrations, "
    "batch_id) VALUES (%s, %s, %s, %s, %s) ON DUPLICATE KEY UPDATE "
    "registrations = IF(VALUES(batch_id) >= batch_id, VALUES(registrations), registrations), "
    "batch_id = GREATEST(batch_id, VALUES(batch_id))"
)
HAS_QUERY_ID = (
    "SELECT 1 FROM information_schema.COLUMNS WHERE TABLE_SCHEMA = DATABASE() "
    "AND TABLE_NAME = 'registrations_per_window' AND COLUMN_NAME = 'query_id'"
)
QUARANTINE = (
    "INSERT IGNORE INTO stream_quarantine (topic, kafka_partition, kafka_offset, "
    "kafka_timestamp, raw_key, raw_value, reason) VALUES (%s, %s, %s, %s, %s, %s, %s)"
)
PROGRESS = (
    "INSERT INTO stream_progress (query_name, batch_id, input_rows, rows_per_second, "
    "duration_ms, event_watermark, late_rows_dropped, kafka_end_offsets) "
    "VALUES (%s, %s, %s, %s, %s, %s, %s, %s) ON DUPLICATE KEY UPDATE "
    "input_rows = VALUES(input_rows), rows_per_second = VALUES(rows_per_second), "
    "duration_ms = VALUES(duration_ms), event_watermark = VALUES(event_watermark), "
    "late_rows_dropped = VALUES(late_rows_dropped), "
    "kafka_end_offsets = VALUES(kafka_end_offsets), finished_at = CURRENT_TIMESTAMP(6)"
)
PRUNE_PROGRESS = (
    # Rows that recorded dropped late events are kept: they are the record of what was lost.
    "DELETE FROM stream_progress WHERE finished_at < NOW(6) - INTERVAL %s DAY "
    "AND late_rows_dropped = 0 LIMIT 100000"
)
PRUNE_EVERY_S = 3600.0


class Sink:
    """Writes from the driver; results per batch are small (only the windows it touched).

    Each query's foreachBatch and the progress listener call in from their own thread, and a
    MySQLdb connection is not thread-safe: every thread gets its own connection."""

    def __init__(
        self,
        params: dict[str, Any],
        progress_retention_days: int = 7,
        query_id_timeout_s: float = 120.0,
    ) -> None:
        self.params = params
        self.progress_retention_days = progress_retention_days
        self.query_id_timeout_s = query_id_timeout_s
        self._pruned_at: float | None = None
        self._local = threading.local()
        self._conns: list[Any] = []
        self._conns_lock = threading.Lock()
        self._query_ids: dict[str, str] = {}
        self._query_started = threading.Condition()
        self._upsert: str | None = None

    # -- connections

    def _cursor(self) -> Any:
        conn = getattr(self._local, "conn", None)
        if conn is not None:
            try:
                conn.ping()
            except MySQLdb.Error as exc:
                log.warning("MySQL connection lost (%s): reconnecting", exc)
                self._forget(conn)
                conn = None
        if conn is None:
            conn = mysql_connect(self.params)
            self._local.conn = conn
            with self._conns_lock:
                self._conns.append(conn)
        return conn.cursor()

    def _forget(self, conn: Any) -> None:
        with self._conns_lock:
            if conn in self._conns:
                self._conns.remove(conn)
        try:
            conn.close()
        except MySQLdb.Error:
            pass  # already broken: the server has dropped it

    def close(self) -> None:
        """Close every thread's connection (once the queries and the listener are stopped)."""
        with self._conns_lock:
            conns, self._conns = self._conns, []
        for conn in conns:
            conn.close()

    # -- the query id: which checkpoint a batch belongs to

    def set_query_id(self, query_name: str, query_id: str) -> None:
        """Spark keeps a query's id in its checkpoint; known once the query has started."""
        with self._query_started:
            self._query_ids[query_name] = query_id
            self._query_started.notify_all()

    def query_id(self, query_name: str) -> str:
        with self._query_started:
            known = self._query_started.wait_for(
                lambda: query_name in self._query_ids, self.query_id_timeout_s
            )
            if not known:
                raise RuntimeError(
                    f"the query id of {query_name} is still unknown after "
                    f"{self.query_id_timeout_s:.0f}s: start queries with start_queries(), which "
                    "hands each id to the sink"
                )
            return self._query_ids[query_name]

    # -- writes

    def write_counts(self, batch: DataFrame, batch_id: int) -> None:
        query_id = self.query_id(COUNTS_QUERY)
        rows = [
            (r.window_start, r.window_end, r.store_id, r.registrations, batch_id, query_id)
            for r in batch.collect()
        ]
        if rows:
            self.upsert_counts(rows)

    def upsert_counts(self, rows: Sequence[tuple]) -> None:
        """Rows of (window_start, window_end, store_id, registrations, batch_id, query_id)."""
        cur = self._cursor()
        if self._upsert is None:
            cur.execute(HAS_QUERY_ID)
            self._upsert = UPSERT if cur.fetchone() else UPSERT_WITHOUT_QUERY_ID
            if self._upsert is UPSERT_WITHOUT_QUERY_ID:
                log.warning(
                    "registrations_per_window has no query_id column: apply sql/20_stream.sql. "
                    "Until then, after a new checkpoint existing windows are not updated until "
                    "its batch ids pass the old ones"
                )
        if self._upsert is UPSERT_WITHOUT_QUERY_ID:
            rows = [r[:5] for r in rows]
        cur.executemany(self._upsert, rows)
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
            log.info(
                "quarantine batch %d: %d messages quarantined, first reason: %s",
                batch_id,
                len(rows),
                rows[0][6],
            )

    def write_progress(self, p: dict[str, Any]) -> None:
        cur = self._cursor()
        cur.execute(
            PROGRESS,
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
            log.info(
                "pruned %d stream_progress rows older than %d days",
                cur.rowcount,
                self.progress_retention_days,
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
            log.info("query %s started (id %s, run %s)", event.name, event.id, event.runId)

        def onQueryProgress(self, event: Any) -> None:
            p = progress_summary(event.progress)
            if p["input_rows"] or p["name"] == COUNTS_QUERY:
                log.info(
                    "%s batch %s: %s input rows, %s rows/s, %s ms, watermark %s, late rows "
                    "dropped %s, state rows updated %s, state memory %s MiB, offsets %s",
                    p["name"],
                    p["batch_id"],
                    p["input_rows"],
                    p["rows_per_second"],
                    p["duration_ms"],
                    p["watermark"],
                    p["late_rows_dropped"],
                    p["state_rows_updated"],
                    p["state_mib"],
                    p["end_offsets"],
                )
            try:
                sink.write_progress(p)
            except MySQLdb.Error as exc:  # progress rows must not kill the job
                log.warning("could not record the progress of %s: %s", p["name"], exc)

        def onQueryIdle(self, event: Any) -> None:
            pass

        def onQueryTerminated(self, event: Any) -> None:
            log.info("query %s terminated: %s", event.id, event.exception or "clean stop")

    return ProgressLogger()


# ------------------------------------------------------------------ stopping


BATCH_WAIT_S = 30.0


class Stopper:
    """Stops the queries once asked: SIGTERM or SIGINT, the STOP file, or a query that ended.

    The main thread waits inside a py4j call (awaitAnyTermination), where a signal handler
    must not make Spark calls of its own: the handler only records the request, and a helper
    thread stops the queries. Another thread looks for the STOP file every `poll_s`."""

    SIGNALS = (signal.SIGTERM, signal.SIGINT)

    def __init__(
        self, queries: Sequence[StreamingQuery], stop_file: Path, poll_s: float = 2.0
    ) -> None:
        self.queries = queries
        self.stop_file = stop_file
        self.poll_s = poll_s
        self.reason = ""
        self.requested = threading.Event()
        self._threads: list[threading.Thread] = []
        self._previous: dict[int, Any] = {}

    def request(self, reason: str) -> None:
        if not self.requested.is_set():
            self.reason = reason
            self.requested.set()

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        self.request(signal.Signals(signum).name)

    def __enter__(self) -> Stopper:
        for sig in self.SIGNALS:
            self._previous[sig] = signal.signal(sig, self._on_signal)
        for target, name in ((self._watch_stop_file, "stop-file"), (self._stop, "stopper")):
            self._threads.append(threading.Thread(target=target, name=name, daemon=True))
            self._threads[-1].start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.request("the job is ending")
        for t in self._threads:
            t.join()
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)

    def _watch_stop_file(self) -> None:
        while not self.requested.wait(self.poll_s):
            if self.stop_file.exists():
                self.request(f"stop file {self.stop_file}")

    def _stop(self) -> None:
        self.requested.wait()
        log.info("stopping the queries: %s", self.reason)
        for q in self.queries:
            try:
                self._wait_between_batches(q)
                q.stop()
            except Exception as exc:  # noqa: BLE001 - stop the others whatever this one does
                log.error("query %s did not stop cleanly: %s", q.name, exc)

    def _wait_between_batches(self, q: StreamingQuery) -> None:
        """stop() interrupts a running micro-batch: safe (it is replayed at restart, and the
        upsert is idempotent) but noisy in the log. Let the running batch finish first, for up
        to BATCH_WAIT_S; a batch may still start just before stop()."""
        deadline = time.monotonic() + BATCH_WAIT_S
        while q.isActive and q.status["isTriggerActive"] and time.monotonic() < deadline:
            time.sleep(0.05)


def run_until_stopped(
    spark: SparkSession,
    queries: Sequence[StreamingQuery],
    stop_file: Path,
    stop_file_poll_s: float = 2.0,
) -> int:
    """Wait on the queries until a stop is asked for (0) or one of them ends by itself (1)."""
    stop_file.unlink(missing_ok=True)
    with Stopper(queries, stop_file, stop_file_poll_s) as stopper:
        try:
            spark.streams.awaitAnyTermination()
        except StreamingQueryException:
            pass  # reported below, with the query's name
        asked, reason = stopper.requested.is_set(), stopper.reason
    failed = [(q.name, q.exception()) for q in queries if q.exception() is not None]
    if failed or not asked:
        log.error(
            "query stopped without being asked to: %s",
            "; ".join(f"{name}: {exc}" for name, exc in failed) or "no error reported",
        )
        return 1
    stop_file.unlink(missing_ok=True)
    log.info("stopped cleanly (%s); a restart resumes from the checkpoint", reason)
    return 0


# ------------------------------------------------------------------ wiring


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    from regstream.settings import kafka_bootstrap, setting, topic

    p = argparse.ArgumentParser(description="per-store registration counts per window")
    # defaults: the platform's settings (stackctl.config.DEFAULTS, or the environment)
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


def configure_logging() -> None:
    logging.basicConfig(
        stream=sys.stdout,
        level=logging.INFO,
        format="%(asctime)s %(levelname)s [%(name)s] %(message)s",
    )
    logging.getLogger("py4j").setLevel(logging.WARNING)


def spark_session() -> SparkSession:
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
    return spark


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


def start_queries(
    spark: SparkSession, args: argparse.Namespace, sink: Sink, checkpoints: Path
) -> list[StreamingQuery]:
    """Both queries, each with its own checkpoint; the sink learns the counts query's id."""
    counts = build_counts(
        parse_events(kafka_source(spark, args)), args.window, args.slide, args.lateness
    )
    q_counts = (
        counts.writeStream.queryName(COUNTS_QUERY)
        .outputMode("update")
        .foreachBatch(sink.write_counts)
        .option("checkpointLocation", str(checkpoints / COUNTS_QUERY))
        .trigger(processingTime=args.trigger)
        .start()
    )
    sink.set_query_id(COUNTS_QUERY, str(q_counts.id))
    bad = parse_events(kafka_source(spark, args)).where(F.col("reason").isNotNull())
    q_bad = (
        bad.writeStream.queryName(QUARANTINE_QUERY)
        .foreachBatch(sink.write_quarantine)
        .option("checkpointLocation", str(checkpoints / QUARANTINE_QUERY))
        .trigger(processingTime=args.trigger)
        .start()
    )
    log.info(
        "started: topic %s at %s, window %s, slide %s, lateness %s, trigger %s, checkpoints %s "
        "(query id %s); SIGTERM the driver or touch %s to stop",
        args.topic,
        args.bootstrap,
        args.window,
        args.slide or "tumbling",
        args.lateness,
        args.trigger,
        checkpoints,
        q_counts.id,
        checkpoints / "STOP",
    )
    return [q_counts, q_bad]


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
    configure_logging()
    params = mysql_params(args.sink_conn_env)
    checkpoints = Path(args.checkpoint_dir).resolve()
    lock = acquire_instance_lock(params, f"regstream_stream:{checkpoints}"[-64:], args.lock_timeout)
    sink = Sink(params, args.progress_retention_days)
    try:
        spark = spark_session()
        try:
            spark.streams.addListener(progress_listener(sink))
            queries = start_queries(spark, args, sink, checkpoints)
            return run_until_stopped(spark, queries, checkpoints / "STOP")
        finally:
            spark.stop()
    finally:
        sink.close()
        lock.close()


if __name__ == "__main__":
    sys.exit(main())
