"""The MySQL sink: each micro-batch applied in one transaction (counts, too-late events,
quarantined messages, and the Kafka offsets and event-time watermark the batch reached), so
a replayed batch adds nothing. The SQL is in regstream/queries/stream_sink.sql."""

from __future__ import annotations

import json
import logging
import threading
import time
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Any

import MySQLdb
from pyspark.sql import DataFrame
from pyspark.sql import functions as F

from regstream.db import named_queries
from regstream.stream import LOG_NAME
from regstream.stream.lifecycle import InstanceLock, inject_fault
from regstream.stream.mysql import mysql_connect
from regstream.stream.parse import SummaryColumns, events_result, summary_columns
from regstream.stream.report import PeriodReport
from regstream.stream.windows import BAD, LATE, OK, BatchResult, Windows, from_micros

log = logging.getLogger(LOG_NAME)

COUNTS_QUERY = "registration_counts"
SQL = named_queries("stream_sink.sql")
COUNTS = SQL["counts"]
LATE_EVENTS = SQL["late_events"]
QUARANTINE = SQL["quarantine"]
SINK_STATE = SQL["sink_state"]
COMMIT = SQL["commit"]
PROGRESS = SQL["progress"]
PRUNE_PROGRESS = SQL["prune_progress"]
ORPHAN_COUNTS = SQL["orphan_counts"]
REQUIRED_SCHEMA = SQL["required_schema"]
# While idle the job writes no batch rows: this one row (batch -1) says it is alive.
HEARTBEAT_BATCH_ID = -1
PRUNE_EVERY_S = 3600.0
# What a lost connection looks like: server gone (2006), lost mid-query (2013), cannot connect
# (2002 socket, 2003 TCP), server shutting down (1053), connection killed (1927), closed for
# inactivity (4031); InterfaceError: a call on a connection already closed.
CONNECTION_LOST = {1053, 1927, 2002, 2003, 2006, 2013, 2055, 4031}
RECONNECT_FIRST_DELAY_S = 0.25
RECONNECT_MAX_DELAY_S = 2.0


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
        reconnect_max_s: float = 120.0,
        lock: InstanceLock | None = None,
        report: PeriodReport | None = None,
    ) -> None:
        self.params = params
        self.reconnect_max_s = reconnect_max_s
        self.lock = lock
        self.report = report
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
        self._columns: SummaryColumns | None = None

    # -- connections

    def _conn(self) -> Any:
        """This thread's connection (made on first use). No ping before each use: a lost
        connection fails its statement, and the batch is retried (`write_batch`)."""
        conn = getattr(self._local, "conn", None)
        if conn is None:
            conn = mysql_connect(self.params)
            self._local.conn = conn
            with self._conns_lock:
                self._conns.append(conn)
        return conn

    def _drop_conn(self) -> None:
        conn = getattr(self._local, "conn", None)
        self._local.conn = None
        if conn is not None:
            self._forget(conn)

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
        """The event-time watermark: the newest event time counted minus the lateness."""
        return state.max_event_time - self.lateness if state.max_event_time else None

    # -- the batch

    def write_batch(self, batch: DataFrame, batch_id: int) -> None:
        """foreachBatch: one pass over the batch for the summary (two for a batch with rows
        out of bounds, see batch_result); the rare bad and too-late rows are read again for
        their details; then one MySQL transaction.

        A MySQL connection lost on the way (the server restarted, say) does not fail the
        job: the sink reconnects with a growing pause, for up to `reconnect_max_s` in all,
        takes the job's lock again, and runs the whole batch again from the offsets MySQL
        holds: its transaction either committed with its offsets (the rerun adds nothing)
        or not at all."""
        t0 = time.monotonic()
        lost_at: float | None = None
        while True:
            try:
                self._write_batch(batch, batch_id, t0)
                return
            except (MySQLdb.OperationalError, MySQLdb.InterfaceError) as exc:
                if not connection_lost(exc):
                    raise
                lost_at = lost_at or time.monotonic()
                self._reconnect(batch_id, exc, lost_at)

    def _write_batch(self, batch: DataFrame, batch_id: int, t0: float) -> None:
        query_id = self.query_id(COUNTS_QUERY)
        state = self.state()
        watermark = self.watermark(state)
        clock = datetime.now(timezone.utc).replace(tzinfo=None)
        result, events = events_result(
            batch, self.windows, state.offsets, watermark, clock, self._summary_columns()
        )
        late = self._details(events, LATE, LATE_COLUMNS) if result.rows[LATE] else []
        bad = self._details(events, BAD, BAD_COLUMNS) if result.rows[BAD] else []
        self.commit(batch_id, query_id, state, result, late, bad, t0)

    def _reconnect(self, batch_id: int, exc: Exception, lost_at: float) -> None:
        """A new connection (and the job's lock again), with a growing pause between tries;
        SinkUnreachable once `reconnect_max_s` have passed since the connection was lost."""
        self._drop_conn()
        delay = RECONNECT_FIRST_DELAY_S
        while True:
            waited = time.monotonic() - lost_at
            if waited >= self.reconnect_max_s:
                raise SinkUnreachable(
                    f"batch {batch_id}: MySQL unreachable for {waited:.0f} s "
                    f"(REGSTREAM_SINK_RECONNECT_MAX_S={self.reconnect_max_s:.0f}): {exc}"
                ) from exc
            pause = min(delay, self.reconnect_max_s - waited)
            log.warning(
                "batch %d: MySQL connection lost (%s); reconnecting in %.2f s "
                "(%.1f s of at most %.0f s)",
                batch_id,
                exc,
                pause,
                waited,
                self.reconnect_max_s,
            )
            time.sleep(pause)
            delay = min(delay * 2, RECONNECT_MAX_DELAY_S)
            try:
                self._conn()
                if self.lock is not None:
                    self.lock.ensure()
            except (MySQLdb.OperationalError, MySQLdb.InterfaceError) as again:
                if not connection_lost(again):
                    raise
                self._drop_conn()
                exc = again
                continue
            log.warning(
                "batch %d: MySQL reachable again after %.1f s: running the batch again",
                batch_id,
                time.monotonic() - lost_at,
            )
            return

    def _summary_columns(self) -> SummaryColumns:
        """Built at the first batch (the JVM is up by then), reused by every batch."""
        if self._columns is None:
            self._columns = summary_columns(self.windows)
        return self._columns

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
        if self.lock is not None:
            self.lock.ensure()
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
            if result.rows[OK]:
                inject_fault("before-commit", batch_id)
            conn.commit()
        except BaseException:
            rollback(conn)
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
        """Into the period's summary line (regstream.stream.report); a batch that quarantines
        or drops too-late events also gets a line of its own."""
        if self.report is not None:
            rows = sum(result.rows.values())
            self.report.batch(rows, result.rows[OK], late, bad, ms, watermark, end_offsets)
        if bad:
            log.warning(
                "batch %d: %d messages quarantined (see stream_quarantine); offsets %s",
                batch_id,
                bad,
                end_offsets,
            )
        if late:
            log.warning(
                "batch %d: %d events older than the watermark %s were not counted "
                "(see stream_late_events)",
                batch_id,
                late,
                watermark,
            )

    def heartbeat(self) -> None:
        """The listener's idle tick: the job is alive and has nothing to do. Also keeps the
        job's lock (taken again after a MariaDB restart) and ends the log's period."""
        if self.report is not None:
            self.report.maybe_log()
        try:
            if self.lock is not None:
                self.lock.ensure()
            cur = self._conn().cursor()
            cur.execute(PROGRESS, (COUNTS_QUERY, HEARTBEAT_BATCH_ID, 0, 0.0, 0, None, 0, None))
            cur.close()
        except MySQLdb.Error:
            self._drop_conn()  # the next tick connects again
            raise

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


class SinkUnreachable(RuntimeError):
    """MySQL stayed unreachable for longer than the sink keeps trying."""


def connection_lost(exc: Exception) -> bool:
    """Whether a MySQLdb error means the connection is gone (not a bad statement)."""
    if isinstance(exc, MySQLdb.InterfaceError):
        return True
    code = exc.args[0] if exc.args else None
    return isinstance(exc, MySQLdb.OperationalError) and code in CONNECTION_LOST


def rollback(conn: Any) -> None:
    """Roll back, unless the connection is gone (then the server has rolled back)."""
    try:
        conn.rollback()
    except (MySQLdb.OperationalError, MySQLdb.InterfaceError) as exc:
        if not connection_lost(exc):
            raise
