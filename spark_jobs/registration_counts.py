"""Registrations per store per event-time window, from the CDC topic into MySQL.

Usage:
  spark-submit --master local[2] --jars "$REGSTREAM_SPARK_JARS" \\
      spark_jobs/registration_counts.py \\
      --bootstrap 127.0.0.1:9092 --topic customer_registrations \\
      --checkpoint-dir .state/local/spark/checkpoints \\
      [--window "1 minute"] [--slide "30 seconds"] [--lateness "7 days"] \\
      [--trigger "1 second"] [--max-offsets-per-trigger 500000] [--min-partitions N] \\
      [--sink-conn-env AIRFLOW_CONN_MYSQL_STREAM] [--progress-retention-days 7]

What it does with each micro-batch (one query, `Sink.write_batch`), in one MySQL transaction:
  valid events on time   -> added to their (window, store) in registrations_per_window
  valid events too late  -> stream_late_events, one row per event_id, with the watermark
  not valid events       -> stream_quarantine, with the raw value and the reason
  offsets and watermark  -> stream_sink_commits
Event time is the customer's registration time (`create_date`). The watermark is the newest
event time counted before the batch minus --lateness; an event older than it is not counted.

How the counts stay exact without a dedup state (why the cost does not grow with history):
- No copies at the source. The publisher commits the events and its watermark in one Kafka
  transaction (regstream.publish); this job reads with isolation.level=read_committed, so what
  a publisher killed before its commit produced is never seen, and each event_id is in the
  committed log once. Earlier versions dropped copies here with dropDuplicatesWithinWatermark
  over 7 days, a state of every event id of the week that each micro-batch scanned.
- No batch applied twice. The offsets a batch reached are committed with its counts
  (stream_sink_commits), and each batch counts only its rows at or after them (a batch with
  rows below them is read twice, see batch_result): a batch replayed
  after a crash (the driver killed after the MySQL commit, before Spark's), or a new checkpoint
  starting earlier, adds nothing. A new checkpoint starts where the sink stopped.
- Late events are recorded by event_id in the same transaction: a killed batch records them
  once, with its counts, or not at all (and is replayed).
So the job holds no state in Spark: a batch costs what its rows cost, and a window's count
lives in MySQL (stream_count, added to once per batch; `registrations` is set from it, so a
corrupted `registrations` is rewritten the next time the window changes).

Speed on 2 cores (benchmarks/bench_stream.py): one pass over the batch (a summary per Kafka
partition, store and slide bucket, a few hundred rows) whose plan is the same in every batch
(the bounds, that is the offsets, the watermark and the clock, are checked on the summary;
see batch_result),
offset ranges split into at least as many tasks as cores (--min-partitions), Spark's built-in
ISO timestamp parser, ParallelGC.

The MySQL sink's credentials come from an environment variable holding an Airflow connection
(JSON or URI), never from the command line.

Stopping: SIGTERM or SIGINT to the driver's Python process, or touching <checkpoint-dir>/STOP
(`make stream-stop`), stops the query and exits 0; a restart resumes from the checkpoint.
A query that fails makes the job exit non-zero.
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
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
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
from regstream.intervals import parse_interval

# Named, not __name__: run by spark-submit the module is __main__.
log = logging.getLogger("registration_counts")

SCHEMA_VERSION = 1
EVENT_TYPE = "customer_registered"
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
# An event time this far past the micro-batch's clock is quarantined: counted, it would move
# the watermark years ahead and make every real event too late.
MAX_AHEAD = timedelta(hours=1)
TOO_NEW = (
    f"create_date more than {MAX_AHEAD // timedelta(minutes=1)} minutes ahead of the stream's clock"
)


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
            parsed["event_type"].isNotNull() & (parsed["event_type"] != EVENT_TYPE),
            F.concat(F.lit("unsupported event_type "), parsed["event_type"]),
        )
    )
    checks.append(
        F.when(
            parsed["schema_version"].isNotNull() & (parsed["schema_version"] != SCHEMA_VERSION),
            F.concat(F.lit("unsupported schema_version "), parsed["schema_version"].cast("string")),
        )
    )
    detailed = F.concat_ws("; ", *checks)
    ok = (parsed["schema_version"] == SCHEMA_VERSION) & (parsed["event_type"] == EVENT_TYPE)
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


@dataclass(frozen=True)
class Windows:
    """Event-time windows of `length` starting every `slide` (tumbling: slide == length),
    aligned to the epoch like Spark's window()."""

    length: timedelta
    slide: timedelta

    @classmethod
    def parse(cls, window: str, slide: str | None = None) -> Windows:
        length = parse_interval(window)
        step = parse_interval(slide) if slide else length
        if step < timedelta(seconds=1) or step % timedelta(seconds=1):
            # window_start/window_end are DATETIME: whole seconds
            raise ValueError(f"the slide ({slide or window}) must be whole seconds")
        if length % step:
            raise ValueError(f"the window ({window}) must be a multiple of the slide ({slide})")
        return cls(length, step)

    @property
    def bucket_us(self) -> int:
        return self.slide // timedelta(microseconds=1)

    def of_bucket(self, bucket_us: int) -> list[tuple[datetime, datetime]]:
        """Every window holding the events of the slide-long bucket starting at bucket_us."""
        start = EPOCH + timedelta(microseconds=bucket_us)
        n = self.length // self.slide
        return [(start - k * self.slide, start - k * self.slide + self.length) for k in range(n)]


EPOCH = datetime(1970, 1, 1)


def from_micros(us: int | None) -> datetime | None:
    """Epoch microseconds -> naive UTC datetime."""
    return None if us is None else EPOCH + timedelta(microseconds=us)


OK, LATE, BAD = "ok", "late", "bad"


def micros(t: datetime) -> int:
    """Naive UTC datetime -> epoch microseconds."""
    return (t - EPOCH) // timedelta(microseconds=1)


def classify(
    events: DataFrame, watermark: datetime | None = None, clock: datetime | None = None
) -> DataFrame:
    """Adds `kind`: bad (not a usable event, or with a clock: an event time more than
    MAX_AHEAD past it), late (older than the watermark: not counted, recorded by event_id)
    or ok."""
    if clock is not None:
        too_new = F.col("reason").isNull() & (
            F.unix_micros("create_date") > F.lit(micros(clock + MAX_AHEAD))
        )
        events = events.withColumn(
            "reason", F.when(too_new, F.lit(TOO_NEW)).otherwise(F.col("reason"))
        )
    kind = F.when(F.col("reason").isNotNull(), F.lit(BAD))
    if watermark is not None:
        kind = kind.when(F.unix_micros("create_date") < F.lit(micros(watermark)), F.lit(LATE))
    return events.withColumn("kind", kind.otherwise(F.lit(OK)))


def summarize(events: DataFrame, windows: Windows) -> DataFrame:
    """One small row per (kind, Kafka partition, store, slide bucket): how many rows, the
    first and last offsets, the oldest and newest event times. Every row falls in exactly one
    bucket, so the counts per window, the rows consumed and the offsets all come from this one
    pass over the batch."""
    bucket = F.floor(F.unix_micros("create_date") / windows.bucket_us) * windows.bucket_us
    return events.groupBy(
        "kind", "partition", "store_id", bucket.cast("long").alias("bucket_us")
    ).agg(
        F.count(F.lit(1)).alias("n"),
        F.min("offset").alias("first_offset"),
        F.max("offset").alias("last_offset"),
        F.min(F.unix_micros("create_date")).alias("oldest_us"),
        F.max(F.unix_micros("create_date")).alias("newest_us"),
    )


@dataclass
class BatchResult:
    """What a micro-batch adds, from the rows of `summarize`."""

    counts: dict[tuple[datetime, datetime, int], int] = field(default_factory=dict)
    rows: Counter[str] = field(default_factory=Counter)
    next_offsets: dict[int, int] = field(default_factory=dict)
    newest: datetime | None = None
    passes: int = 1

    @classmethod
    def of(cls, summary: Iterable[Any], windows: Windows) -> BatchResult:
        r = cls()
        for row in summary:
            r.rows[row.kind] += row.n
            p = int(row.partition)
            r.next_offsets[p] = max(r.next_offsets.get(p, 0), int(row.last_offset) + 1)
            if row.kind != OK:
                continue
            newest = EPOCH + timedelta(microseconds=row.newest_us)
            r.newest = newest if r.newest is None else max(r.newest, newest)
            for start, end in windows.of_bucket(row.bucket_us):
                key = (start, end, int(row.store_id))
                r.counts[key] = r.counts.get(key, 0) + int(row.n)
        return r


def out_of_bounds(
    summary: Iterable[Any], applied: dict[int, int], watermark: datetime | None, clock: datetime
) -> bool:
    """Whether the summary of a pass without bounds shows rows the bounds act on: any row
    below the offsets the sink has applied, or a valid event older than the watermark or
    more than MAX_AHEAD past the clock. On the raw numbers: an event time past year 9999 is
    a Spark timestamp but not a Python datetime."""
    wm_us = micros(watermark) if watermark is not None else None
    limit_us = micros(clock + MAX_AHEAD)
    return any(
        row.first_offset < applied.get(row.partition, 0)
        or (
            row.kind == OK
            and ((wm_us is not None and row.oldest_us < wm_us) or row.newest_us > limit_us)
        )
        for row in summary
    )


def batch_result(
    batch: DataFrame,
    windows: Windows,
    applied: dict[int, int],
    watermark: datetime | None,
    clock: datetime,
) -> tuple[BatchResult, DataFrame]:
    """What the batch adds, and its classified events (for the details of late and bad rows).

    The first pass applies no bounds: its plan, and so the Java code Spark generates for it,
    is the same in every batch, and the JIT-compiled code of one batch serves the next.
    (Spark writes a number or a time literal into the generated source, so a plan holding
    this batch's offsets, watermark or clock compiles new classes that start cold each
    batch; that cost about a sixth of the throughput.) Only a batch with rows the bounds act
    on (a replay, late events, events from the future) is read a second time, with them:
    rows below the applied offsets dropped, late and too-new events classified."""
    events = classify(parse_events(batch))
    summary = summarize(events, windows).collect()
    passes = 1
    if out_of_bounds(summary, applied, watermark, clock):
        events = classify(parse_events(batch.where(offsets_filter(applied))), watermark, clock)
        summary = summarize(events, windows).collect()
        passes = 2
    result = BatchResult.of(summary, windows)
    result.passes = passes
    return result, events


def offsets_filter(applied: dict[int, int]) -> Column:
    """Rows at or after the offsets the sink has applied (all rows of a partition it has
    not seen): a replayed batch, or a new checkpoint starting earlier, adds nothing twice."""
    start: Column = F.lit(0)
    for partition, offset in applied.items():
        start = F.when(F.col("partition") == partition, F.lit(offset)).otherwise(start)
    return F.col("offset") >= start


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


COUNTS = (
    "INSERT INTO registrations_per_window (window_start, window_end, store_id, stream_count, "
    "registrations, batch_id, query_id) VALUES (%s, %s, %s, %s, %s, %s, %s) "
    # stream_count is the stream's running count (its state, added to once per batch);
    # registrations, what readers see, is set from it. Each assignment reads only the old
    # row, so the result does not depend on the order MySQL or MariaDB evaluate them in.
    "ON DUPLICATE KEY UPDATE registrations = stream_count + VALUES(stream_count), "
    "stream_count = stream_count + VALUES(stream_count), batch_id = VALUES(batch_id), "
    "query_id = VALUES(query_id)"
)
LATE_EVENTS = (
    "INSERT IGNORE INTO stream_late_events (event_id, customer_id, store_id, create_date, "
    "event_watermark, reason, topic, kafka_partition, kafka_offset, batch_id) "
    "VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s)"
)
QUARANTINE = (
    "INSERT IGNORE INTO stream_quarantine (topic, kafka_partition, kafka_offset, "
    "kafka_timestamp, raw_key, raw_value, reason) VALUES (%s, %s, %s, %s, %s, %s, %s)"
)
SINK_STATE = (
    "SELECT kafka_end_offsets, max_event_time FROM stream_sink_commits WHERE query_name = %s"
)
COMMIT = (
    "INSERT INTO stream_sink_commits (query_name, query_id, batch_id, kafka_end_offsets, "
    "max_event_time, event_watermark, events_counted, late_events) "
    "VALUES (%s, %s, %s, %s, %s, %s, %s, %s) ON DUPLICATE KEY UPDATE "
    "query_id = VALUES(query_id), batch_id = VALUES(batch_id), "
    "kafka_end_offsets = VALUES(kafka_end_offsets), max_event_time = VALUES(max_event_time), "
    "event_watermark = VALUES(event_watermark), "
    "events_counted = events_counted + VALUES(events_counted), "
    "late_events = late_events + VALUES(late_events)"
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
# While idle the job writes no batch rows: this one row (batch -1) says it is alive.
HEARTBEAT_BATCH_ID = -1
PRUNE_PROGRESS = (
    "DELETE FROM stream_progress WHERE finished_at < NOW(6) - INTERVAL %s DAY LIMIT 100000"
)
PRUNE_EVERY_S = 3600.0
ORPHAN_COUNTS = (
    "SELECT EXISTS (SELECT 1 FROM registrations_per_window) "
    "AND NOT EXISTS (SELECT 1 FROM stream_sink_commits)"
)
REQUIRED_SCHEMA = (
    "SELECT COUNT(*) FROM information_schema.COLUMNS WHERE TABLE_SCHEMA = DATABASE() AND "
    "((TABLE_NAME = 'registrations_per_window' AND COLUMN_NAME = 'stream_count') OR "
    "(TABLE_NAME = 'stream_sink_commits' AND COLUMN_NAME = 'kafka_end_offsets') OR "
    "(TABLE_NAME = 'stream_late_events' AND COLUMN_NAME = 'event_id'))"
)


@dataclass(frozen=True)
class SinkState:
    """What the sink has applied: the next Kafka offset per partition of the topic, and the
    newest event time counted (the watermark is that minus the lateness)."""

    offsets: dict[int, int]
    max_event_time: datetime | None

    @classmethod
    def of(cls, row: tuple | None, topic: str) -> SinkState:
        if row is None:
            return cls({}, None)
        offsets = json.loads(row[0] or "{}").get(topic, {})
        return cls({int(p): int(o) for p, o in offsets.items()}, row[1])


class Sink:
    """Applies each micro-batch to MySQL in one transaction: the counts, the too-late events,
    the quarantined messages, and the offsets and watermark the batch reached.

    The foreachBatch thread and the listener's thread each get their own connection
    (a MySQLdb connection is not thread-safe)."""

    def __init__(
        self,
        params: dict[str, Any],
        topic: str,
        windows: Windows,
        lateness: timedelta,
        progress_retention_days: int = 7,
        query_id_timeout_s: float = 120.0,
    ) -> None:
        self.params = params
        self.topic = topic
        self.windows = windows
        self.lateness = lateness
        self.progress_retention_days = progress_retention_days
        self.query_id_timeout_s = query_id_timeout_s
        self._pruned_at: float | None = None
        self._local = threading.local()
        self._conns: list[Any] = []
        self._conns_lock = threading.Lock()
        self._query_ids: dict[str, str] = {}
        self._query_started = threading.Condition()

    # -- connections

    def _conn(self) -> Any:
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
        return conn

    def _forget(self, conn: Any) -> None:
        with self._conns_lock:
            if conn in self._conns:
                self._conns.remove(conn)
        try:
            conn.close()
        except MySQLdb.Error:
            pass  # already broken: the server has dropped it

    def close(self) -> None:
        """Close every thread's connection (once the query and the listener are stopped)."""
        with self._conns_lock:
            conns, self._conns = self._conns, []
        for conn in conns:
            conn.close()

    def check_schema(self) -> None:
        cur = self._conn().cursor()
        cur.execute(REQUIRED_SCHEMA)
        if cur.fetchone()[0] != 3:
            raise SystemExit(
                "the sink tables are missing or old: apply sql/20_stream.sql (`make up` does) "
                "to the sink database"
            )
        cur.execute(ORPHAN_COUNTS)
        if cur.fetchone()[0]:
            raise SystemExit(
                "registrations_per_window holds counts but stream_sink_commits has no record "
                "of the batches that made them (counts of an earlier version of this job, or a "
                "restored table): counting on would add the topic to them again. Recount from "
                "the topic: delete the rows of registrations_per_window (or `make reset`)"
            )
        cur.close()

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
                    f"{self.query_id_timeout_s:.0f}s: start the query with start_query(), "
                    "which hands its id to the sink"
                )
            return self._query_ids[query_name]

    # -- reads

    def state(self) -> SinkState:
        cur = self._conn().cursor()
        cur.execute(SINK_STATE, (COUNTS_QUERY,))
        row = cur.fetchone()
        cur.close()
        return SinkState.of(row, self.topic)

    def watermark(self, state: SinkState) -> datetime | None:
        return state.max_event_time - self.lateness if state.max_event_time else None

    # -- the batch

    def write_batch(self, batch: DataFrame, batch_id: int) -> None:
        """foreachBatch: one pass over the batch for the summary (two for a batch with rows
        out of bounds, see batch_result); the rare bad and too-late rows are read again for
        their details; then one MySQL transaction."""
        t0 = time.monotonic()
        query_id = self.query_id(COUNTS_QUERY)
        state = self.state()
        watermark = self.watermark(state)
        clock = datetime.now(timezone.utc).replace(tzinfo=None)
        result, events = batch_result(batch, self.windows, state.offsets, watermark, clock)
        late = self._details(events, LATE, LATE_COLUMNS) if result.rows[LATE] else []
        bad = self._details(events, BAD, BAD_COLUMNS) if result.rows[BAD] else []
        self.commit(batch_id, query_id, state, result, late, bad, t0)

    @staticmethod
    def _details(events: DataFrame, kind: str, columns: tuple[str, ...]) -> list[Any]:
        # Times as epoch microseconds: PySpark turns a collected timestamp into the driver
        # process's local time, whatever the session time zone.
        return (
            events.where(F.col("kind") == kind)
            .withColumn("create_us", F.unix_micros("create_date"))
            .withColumn("kafka_us", F.unix_micros("kafka_timestamp"))
            .select(*columns)
            .collect()
        )

    def commit(
        self,
        batch_id: int,
        query_id: str,
        state: SinkState,
        result: BatchResult,
        late: list[Any],
        bad: list[Any],
        t0: float,
    ) -> None:
        """Everything the batch adds, with the offsets and watermark it reached, or nothing."""
        conn = self._conn()
        cur = conn.cursor()
        cur.execute("START TRANSACTION")
        try:
            cur.execute(SINK_STATE + " FOR UPDATE", (COUNTS_QUERY,))
            if SinkState.of(cur.fetchone(), self.topic) != state:
                raise RuntimeError(
                    "stream_sink_commits changed during the batch: is a second job writing "
                    "to this database?"
                )
            watermark = self.watermark(state)
            self._write_rows(cur, batch_id, query_id, result, watermark, late, bad)
            newest = max(filter(None, (state.max_event_time, result.newest)), default=None)
            offsets = {**state.offsets, **result.next_offsets}
            end_offsets = json.dumps({self.topic: {str(p): o for p, o in sorted(offsets.items())}})
            new_wm = newest - self.lateness if newest else None
            cur.execute(
                COMMIT,
                (
                    COUNTS_QUERY,
                    query_id,
                    batch_id,
                    end_offsets,
                    newest,
                    new_wm,
                    result.rows[OK],
                    len(late),
                ),
            )
            ms = int((time.monotonic() - t0) * 1000)
            rows = sum(result.rows.values())
            cur.execute(
                PROGRESS,
                (
                    COUNTS_QUERY,
                    batch_id,
                    rows,
                    round(rows / max(ms, 1) * 1000, 1),
                    ms,
                    new_wm,
                    len(late),
                    end_offsets,
                ),
            )
            conn.commit()
        except BaseException:
            conn.rollback()
            raise
        finally:
            cur.close()
        self._log_batch(batch_id, result, len(late), len(bad), new_wm, end_offsets, ms)
        if late:
            inject_fault("kill-after-late-commit", batch_id)
        self._prune_progress()

    def _write_rows(
        self,
        cur: Any,
        batch_id: int,
        query_id: str,
        result: BatchResult,
        watermark: datetime | None,
        late: list[Any],
        bad: list[Any],
    ) -> None:
        if result.counts:
            cur.executemany(
                COUNTS,
                [
                    (s, e, store, n, n, batch_id, query_id)
                    for (s, e, store), n in result.counts.items()
                ],
            )
        if late:
            reason = f"older than the watermark ({self.lateness} behind the newest event)"
            cur.executemany(
                LATE_EVENTS,
                [
                    (
                        r.event_id,
                        r.customer_id,
                        r.store_id,
                        from_micros(r.create_us),
                        watermark,
                        reason,
                        r.topic,
                        r.partition,
                        r.offset,
                        batch_id,
                    )
                    for r in late
                ],
            )
        if bad:
            cur.executemany(
                QUARANTINE,
                [
                    (
                        r.topic,
                        r.partition,
                        r.offset,
                        from_micros(r.kafka_us),
                        r.raw_key,
                        r.raw_value.encode() if r.raw_value is not None else None,
                        r.reason[:500],
                    )
                    for r in bad
                ],
            )

    def _log_batch(
        self,
        batch_id: int,
        result: BatchResult,
        late: int,
        bad: int,
        watermark: datetime | None,
        end_offsets: str,
        ms: int,
    ) -> None:
        log.info(
            "batch %d: %d rows in %d ms, read %d time(s); counted %d events into %d windows, "
            "too late %d, quarantined %d; watermark %s; offsets %s",
            batch_id,
            sum(result.rows.values()),
            ms,
            result.passes,
            result.rows[OK],
            len(result.counts),
            late,
            bad,
            watermark,
            end_offsets,
        )
        if bad:
            log.warning("batch %d: %d messages quarantined (see stream_quarantine)", batch_id, bad)
        if late:
            log.warning(
                "batch %d: %d events older than the watermark %s were not counted "
                "(see stream_late_events)",
                batch_id,
                late,
                watermark,
            )

    def heartbeat(self) -> None:
        """The listener's idle tick: the job is alive and has nothing to do."""
        cur = self._conn().cursor()
        cur.execute(PROGRESS, (COUNTS_QUERY, HEARTBEAT_BATCH_ID, 0, 0.0, 0, None, 0, None))
        cur.close()

    def _prune_progress(self) -> None:
        """stream_progress gets a row per micro-batch: prune old ones at start and hourly."""
        now = time.monotonic()
        if self.progress_retention_days <= 0 or (
            self._pruned_at is not None and now - self._pruned_at < PRUNE_EVERY_S
        ):
            return
        self._pruned_at = now
        cur = self._conn().cursor()
        cur.execute(PRUNE_PROGRESS, (self.progress_retention_days,))
        if cur.rowcount:
            log.info(
                "pruned %d stream_progress rows older than %d days",
                cur.rowcount,
                self.progress_retention_days,
            )
        cur.close()


def inject_fault(point: str, batch_id: int) -> None:
    """Tests only: REGSTREAM_FAULT=<point> SIGKILLs the whole job (driver and JVM) at `point`,
    e.g. right after the MySQL commit of a batch and before Spark records it."""
    if os.environ.get("REGSTREAM_FAULT") == point:
        log.warning("fault injected after batch %d: %s", batch_id, point)
        for handler in logging.getLogger().handlers:
            handler.flush()
        os.killpg(os.getpgid(0), signal.SIGKILL)


LATE_COLUMNS = (
    "event_id",
    "customer_id",
    "store_id",
    "create_us",
    "topic",
    "partition",
    "offset",
)
BAD_COLUMNS = ("topic", "partition", "offset", "kafka_us", "raw_key", "raw_value", "reason")


def progress_listener(sink: Sink) -> Any:
    from pyspark.sql.streaming import StreamingQueryListener

    class ProgressLogger(StreamingQueryListener):
        def onQueryStarted(self, event: Any) -> None:
            log.info("query %s started (id %s, run %s)", event.name, event.id, event.runId)

        def onQueryProgress(self, event: Any) -> None:
            d = json.loads(event.progress.json)
            log.info(
                "%s batch %s: %s input rows, %.0f rows/s, durations %s",
                d.get("name"),
                d.get("batchId"),
                d.get("numInputRows", 0),
                d.get("processedRowsPerSecond") or 0.0,
                d.get("durationMs"),
            )

        def onQueryIdle(self, event: Any) -> None:
            try:
                sink.heartbeat()
            except MySQLdb.Error as exc:  # a missed heartbeat must not kill the job
                log.warning("could not record the heartbeat: %s", exc)

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
        sink applies each batch once) but noisy in the log. Let the running batch finish first, for up
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
        help="keep stream_progress rows this long, 0 = forever (default 7)",
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
    # No state store: the job keeps no state of its own in Spark (see the module docstring).
    spark = (
        SparkSession.builder.appName("registration_counts")
        .config("spark.sql.session.timeZone", "UTC")
        # the listener's idle tick (the heartbeat row) while no data comes
        .config("spark.sql.streaming.noDataProgressEventInterval", "5000")
        .getOrCreate()
    )
    spark.sparkContext.setLogLevel("WARN")
    return spark


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
        kafka_source(spark, args, starting)
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


def acquire_instance_lock(params: dict[str, Any], name: str, timeout: int) -> Any:
    """One job per sink database: a MySQL named lock held for the driver's life (released by
    the server the moment the driver's connection dies, and not taken again if MariaDB
    restarts: then the check in `Sink.commit` stops a second job at its first batch)."""
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
    # One job per sink database: the sink's offsets and watermark are per database.
    lock = acquire_instance_lock(
        params, f"regstream_stream:{params['database']}", args.lock_timeout
    )
    sink = Sink(
        params,
        args.topic,
        Windows.parse(args.window, args.slide),
        parse_interval(args.lateness),
        args.progress_retention_days,
    )
    try:
        sink.check_schema()
        spark = spark_session()
        try:
            spark.streams.addListener(progress_listener(sink))
            query = start_query(spark, args, sink, checkpoints)
            return run_until_stopped(spark, [query], checkpoints / "STOP")
        finally:
            spark.stop()
    finally:
        sink.close()
        lock.close()


if __name__ == "__main__":
    sys.exit(main())
