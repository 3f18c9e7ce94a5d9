"""The streaming job's pieces without Kafka or MySQL: parsing, quarantine reasons, counting on
small static DataFrames, the message contract, and the sink's connections per thread."""

from __future__ import annotations

import json
import logging
import os
import signal
import threading
import time
from collections import Counter
from collections.abc import Iterator
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pytest
from pyspark import SparkContext
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql.types import (
    BinaryType,
    IntegerType,
    LongType,
    StringType,
    StructField,
    StructType,
    TimestampType,
)
from regstream.intervals import parse_interval
from regstream.stream import contract as stream_contract
from regstream.stream import lifecycle as stream_lifecycle
from regstream.stream import parse as stream_parse
from regstream.stream import sink as stream_sink
from regstream.stream import windows as stream_windows

ROOT = Path(__file__).resolve().parents[2]
CONTRACT = ROOT / "plugins" / "regstream" / "schemas" / "customer_registered.v1.json"

KAFKA_ROW = StructType(
    [
        StructField("key", BinaryType()),
        StructField("value", BinaryType()),
        StructField("topic", StringType()),
        StructField("partition", IntegerType()),
        StructField("offset", LongType()),
        StructField("timestamp", TimestampType()),
    ]
)


@pytest.fixture(scope="module")
def spark() -> Iterator[SparkSession]:
    session = (
        SparkSession.builder.master("local[1]")
        .appName("test_stream_unit")
        .config("spark.ui.enabled", "false")
        .config("spark.sql.shuffle.partitions", "1")
        .config("spark.sql.session.timeZone", "UTC")
        .getOrCreate()
    )
    gateway = SparkContext._gateway
    try:
        yield session
    finally:
        session.stop()
        # and the JVM: it would otherwise idle until the whole test run ends
        SparkContext._gateway = SparkContext._jvm = None
        gateway.shutdown()
        gateway.proc.stdin.close()  # the JVM exits when its stdin closes
        gateway.proc.wait(timeout=60)


def event(event_id: int = 1, **changes: Any) -> dict[str, Any]:
    """A message value as the publisher writes it."""
    value = {
        "schema_version": 1,
        "event_id": event_id,
        "event_type": "customer_registered",
        "customer_id": 500 + event_id,
        "store_id": 1,
        "first_name": "ANA",
        "last_name": "LIMA",
        "email": None,
        "address_id": 900 + event_id,
        "create_date": "2026-11-20T09:00:10Z",
        "captured_at": "2026-11-20T09:00:10.123456Z",
    }
    value.update(changes)
    return value


def kafka_rows(spark: SparkSession, values: list[bytes | dict | None]) -> DataFrame:
    rows = [
        (
            b"1",
            json.dumps(v).encode() if isinstance(v, dict) else v,
            "t",
            0,
            offset,
            datetime(2026, 11, 20, 9, 0, 0),
        )
        for offset, v in enumerate(values)
    ]
    return spark.createDataFrame(rows, KAFKA_ROW)


def reasons(spark: SparkSession, values: list[bytes | dict | None]) -> list[str | None]:
    parsed = stream_parse.classify(
        stream_parse.parse_events(kafka_rows(spark, values)),
        clock=datetime.now(timezone.utc).replace(tzinfo=None),
    )
    return [r.reason for r in parsed.orderBy("offset").collect()]


# ---------------------------------------------------------------- parse_events


def test_a_valid_event_is_parsed_with_its_kafka_position(spark) -> None:
    (row,) = stream_parse.parse_events(kafka_rows(spark, [event(7, store_id=2)])).collect()
    assert row.reason is None
    assert (row.event_id, row.store_id, row.customer_id) == (7, 2, 507)
    assert row.create_date == datetime(2026, 11, 20, 9, 0, 10)
    assert (row.topic, row.partition, row.offset, row.raw_key) == ("t", 0, 0, b"1")
    assert json.loads(row.raw_value)["event_id"] == 7


def test_every_quarantine_reason(spark) -> None:
    missing = {k: v for k, v in event(3).items() if k != "create_date"}
    got = reasons(
        spark,
        [
            None,
            b"this is not json",
            b"[1, 2, 3]",
            missing,
            event(4, store_id="north"),
            event(5, create_date="yesterday"),
            event(6, schema_version=9),
            {**event(7), "event_id": "seven", "customer_id": None},
            event(8, event_type="customer_deleted"),
            event(9, create_date="2099-01-01T00:00:00Z"),
        ],
    )
    assert got == [
        "empty value",
        "not a JSON object",
        "not a JSON object",
        "missing field create_date",
        "wrong type for store_id",
        "wrong type for create_date",
        "unsupported schema_version 9",
        "wrong type for event_id; missing field customer_id",
        "unsupported event_type customer_deleted",
        "create_date more than 60 minutes ahead of the stream's clock",
    ]


@pytest.mark.parametrize("field", stream_parse.REQUIRED)
def test_each_required_field_missing_is_named(spark, field: str) -> None:
    value = {k: v for k, v in event().items() if k != field}
    (reason,) = reasons(spark, [value])
    assert f"missing field {field}" in reason


def test_optional_fields_may_be_absent_or_of_any_type(spark) -> None:
    # The job reads only the required fields; the others are the consumers' business.
    value = {k: v for k, v in event().items() if k not in ("first_name", "email", "captured_at")}
    assert reasons(spark, [value, event(2, address_id="n/a")]) == [None, None]


# ---------------------------------------------------------------- build_counts


def summary(
    spark: SparkSession, values: list[dict | bytes], **kwargs: Any
) -> stream_windows.BatchResult:
    return batch(spark, values, **kwargs)[0]


def batch(
    spark: SparkSession,
    values: list[dict | bytes],
    window: str = "1 minute",
    slide: str | None = None,
    watermark: datetime | None = None,
    applied: dict[int, int] | None = None,
) -> tuple[stream_windows.BatchResult, DataFrame]:
    """batch_result at a clock of 2026-11-20 10:00."""
    windows = stream_windows.Windows.parse(window, slide)
    clock = datetime(2026, 11, 20, 10, 0)
    return stream_parse.batch_result(
        kafka_rows(spark, values), windows, applied or {}, watermark, clock
    )


def counts(spark: SparkSession, values: list[dict | bytes], **kwargs: Any) -> dict[tuple, int]:
    return {
        (start.strftime("%H:%M"), end.strftime("%H:%M"), store): n
        for (start, end, store), n in summary(spark, values, **kwargs).counts.items()
    }


def test_counts_per_store_per_tumbling_window_bad_rows_never(spark) -> None:
    values = [
        event(1, create_date="2026-11-20T09:00:10Z"),
        event(2, create_date="2026-11-20T09:00:59Z"),
        event(3, create_date="2026-11-20T09:01:00Z"),
        event(4, create_date="2026-11-20T09:00:30Z", store_id=2),
        event(5, create_date="2026-11-20T09:00:30Z", schema_version=99),  # no schema: quarantined
        b"not json",
    ]
    assert counts(spark, values) == {
        ("09:00", "09:01", 1): 2,
        ("09:01", "09:02", 1): 1,
        ("09:00", "09:01", 2): 1,
    }


def test_counts_in_longer_tumbling_windows(spark) -> None:
    values = [event(i, create_date=f"2026-11-20T09:{m:02d}:00Z") for i, m in enumerate([1, 4, 5])]
    assert counts(spark, values, window="5 minutes") == {
        ("09:00", "09:05", 1): 2,
        ("09:05", "09:10", 1): 1,
    }


def test_sliding_windows_count_an_event_in_every_window_it_falls_in(spark) -> None:
    values = [
        event(1, create_date="2026-11-20T09:07:00Z"),
        event(2, create_date="2026-11-20T09:04:59Z"),
    ]
    assert counts(spark, values, window="10 minutes", slide="5 minutes") == {
        ("08:55", "09:05", 1): 1,
        ("09:00", "09:10", 1): 2,
        ("09:05", "09:15", 1): 1,
    }


def test_events_older_than_the_watermark_are_late_not_counted(spark) -> None:
    values = [
        event(1, create_date="2026-11-20T08:59:59Z"),  # late
        event(2, create_date="2026-11-20T09:00:00Z"),  # at the watermark: on time
        event(3, create_date="2026-11-20T09:30:00Z"),
        b"not json",
    ]
    r = summary(spark, values, watermark=datetime(2026, 11, 20, 9, 0))
    assert r.rows == {"ok": 2, "late": 1, "bad": 1}
    assert sorted(n for n in r.counts.values()) == [1, 1]
    assert r.newest == datetime(2026, 11, 20, 9, 30)
    assert r.next_offsets == {0: 4}  # every row consumed, bad and late ones too


def test_rows_below_the_applied_offsets_add_nothing(spark) -> None:
    values = [event(i, create_date="2026-11-20T09:00:10Z") for i in range(5)]
    assert summary(spark, values, applied={0: 3}).rows == {"ok": 2}
    assert summary(spark, values, applied={0: 5}).counts == {}
    assert summary(spark, values, applied={1: 5}).rows == {"ok": 5}  # another partition


def test_only_a_batch_with_rows_out_of_bounds_is_read_twice(spark) -> None:
    # The first pass has no per-batch bounds in its plan (see batch_result); the second
    # applies them, and must run whenever a row would be taken out.
    on_time = [event(i, create_date="2026-11-20T09:30:00Z") for i in range(3)]
    assert summary(spark, on_time, watermark=datetime(2026, 11, 20, 9, 0)).passes == 1
    assert summary(spark, on_time, applied={0: 0, 1: 9}).passes == 1
    assert summary(spark, on_time, applied={0: 1}).passes == 2  # a replay
    late = [*on_time, event(9, create_date="2026-11-20T08:00:00Z")]
    assert summary(spark, late, watermark=datetime(2026, 11, 20, 9, 0)).passes == 2
    assert summary(spark, [b"not json", *on_time], applied={0: 1}).passes == 2  # bad row only
    at_limit = [*on_time, event(9, create_date="2026-11-20T11:00:00Z")]  # clock 10:00 + 1 h
    assert (summary(spark, at_limit).passes, summary(spark, at_limit).rows) == (1, {"ok": 4})


@pytest.mark.parametrize("when", ["2026-11-20T11:00:01Z", "+10000-01-01T00:00:00Z"])
def test_an_event_from_the_future_is_quarantined_with_its_reason(spark, when: str) -> None:
    # Past year 9999 is a Spark timestamp but not a Python datetime: it must not crash the
    # batch (a poison message the job would replay forever).
    values = [event(1, create_date="2026-11-20T09:30:00Z"), event(2, create_date=when)]
    result, events = batch(spark, values)
    assert (result.passes, result.rows) == (2, {"ok": 1, "bad": 1})
    (bad,) = events.where("kind = 'bad'").select("event_id", "reason").collect()
    assert (bad.event_id, bad.reason) == (2, stream_windows.TOO_NEW)


def test_windows_must_be_a_multiple_of_the_slide_and_intervals_are_checked() -> None:
    assert stream_windows.Windows.parse("10 minutes", "5 minutes").bucket_us == 300_000_000
    assert parse_interval("7 days").days == 7
    with pytest.raises(ValueError, match="multiple of the slide"):
        stream_windows.Windows.parse("10 minutes", "3 minutes")
    with pytest.raises(ValueError, match="whole seconds"):
        stream_windows.Windows.parse("1 minute", "500 milliseconds")
    with pytest.raises(ValueError, match="not an interval"):
        parse_interval("soon")


# ---------------------------------------------------------------- the contract


def test_the_fields_the_job_reads_agree_with_the_message_schema() -> None:
    contract = json.loads(CONTRACT.read_text())["value"]
    props = contract["properties"]

    def json_types(spec: dict[str, Any]) -> set[str]:
        if "const" in spec:
            return {"integer" if isinstance(spec["const"], int) else "string"}
        types = spec["type"]
        return set(types if isinstance(types, list) else [types]) - {"null"}

    spark_to_json = {
        IntegerType(): ({"integer"}, None),
        LongType(): ({"integer"}, None),
        StringType(): ({"string"}, None),
        TimestampType(): ({"string"}, "date-time"),
    }
    assert set(stream_parse.REQUIRED) <= set(contract["required"])
    assert {f.name for f in stream_parse.PARSE_SCHEMA.fields} == set(stream_parse.REQUIRED)
    for field in stream_parse.EVENT_SCHEMA.fields:
        assert field.name in props, f"{field.name} is not in the contract"
        spec = props[field.name]
        want_types, want_format = spark_to_json[field.dataType]
        assert json_types(spec) == want_types, (field.name, spec)
        if want_format:
            assert spec.get("format") == want_format, (field.name, spec)
    assert props["schema_version"]["const"] == stream_contract.known_versions()[0]


def test_the_contract_example_value_parses_as_a_valid_event(spark) -> None:
    contract = json.loads(CONTRACT.read_text())["value"]
    value = event(9)
    assert set(contract["required"]) <= set(value)
    assert reasons(spark, [value]) == [None]


# ---------------------------------------------------------------- sink connections


class FakeCursor:
    def __init__(self, conn: FakeConn) -> None:
        self.conn = conn
        self.rowcount = 0
        self.result: list[tuple] = []

    def _use(self) -> None:
        self.conn.threads.add(threading.current_thread().name)

    def execute(self, sql: str, params: Any = None) -> None:
        self._use()
        self.conn.statements.append(sql)
        self.result = [self.conn.sink_row] if sql.startswith(stream_sink.SINK_STATE) else []
        if sql.startswith("INSERT INTO stream_sink_commits"):
            self.conn.pending.append(params)

    def executemany(self, sql: str, rows: list) -> None:
        self._use()
        self.conn.statements.append(sql)
        self.conn.pending.extend(rows)

    def fetchone(self) -> Any:
        return self.result[0] if self.result and self.result[0] is not None else None

    def close(self) -> None:
        pass


class FakeConn:
    def __init__(self) -> None:
        self.threads: set[str] = set()
        self.statements: list[str] = []
        self.pending: list[tuple] = []
        self.rows: list[tuple] = []  # committed
        self.sink_row: tuple | None = None
        self.closed = False

    def cursor(self) -> FakeCursor:
        return FakeCursor(self)

    def commit(self) -> None:
        self.rows += self.pending
        self.pending = []

    def rollback(self) -> None:
        self.pending = []

    def ping(self) -> None:
        pass

    def close(self) -> None:
        self.closed = True


WINDOW = (datetime(2026, 11, 20, 9, 0), datetime(2026, 11, 20, 9, 1), 1)


def batch_result(n: int = 3) -> stream_windows.BatchResult:
    return stream_windows.BatchResult(
        counts={WINDOW: n},
        rows=Counter(ok=n),
        next_offsets={0: 10},
        newest=datetime(2026, 11, 20, 9, 0, 30),
    )


def new_sink(**kwargs: Any) -> stream_sink.Sink:
    windows = stream_windows.Windows.parse("1 minute")
    return stream_sink.Sink({}, "t", windows, parse_interval("7 days"), **kwargs)


@pytest.fixture
def fake_mysql(monkeypatch: pytest.MonkeyPatch) -> list[FakeConn]:
    made: list[FakeConn] = []

    def connect(params: dict[str, Any]) -> FakeConn:
        made.append(FakeConn())
        return made[-1]

    monkeypatch.setattr(stream_sink, "mysql_connect", connect)
    return made


def commit(
    sink: stream_sink.Sink, batch_id: int, result: stream_windows.BatchResult | None = None
) -> None:
    state = sink.state()
    sink.commit(batch_id, "q-1", state, result or batch_result(), [], [], time.monotonic())


def test_each_thread_writes_through_its_own_connection(fake_mysql) -> None:
    """foreachBatch and the listener's heartbeat run on their own threads; a MySQLdb
    connection must never be shared between them."""
    sink = new_sink(progress_retention_days=0)
    writes = [("batch", lambda: commit(sink, 0)), ("listener", sink.heartbeat)]
    done = threading.Event()
    threads = []
    try:
        for name, write in writes:
            # each thread stays alive until all have written: a finished thread's
            # connection could otherwise be handed on without anyone sharing it
            wrote = threading.Event()

            def run(write: Any = write, wrote: threading.Event = wrote) -> None:
                write()
                wrote.set()
                done.wait(30)

            t = threading.Thread(target=run, name=name)
            t.start()
            threads.append(t)
            assert wrote.wait(30)
        assert all(len(c.threads) == 1 for c in fake_mysql), [c.threads for c in fake_mysql]
        assert sorted(t for c in fake_mysql for t in c.threads) == sorted(n for n, _ in writes)
    finally:
        done.set()
        for t in threads:
            t.join(30)
    sink.close()
    assert all(c.closed for c in fake_mysql)


def test_a_thread_keeps_its_connection_across_batches(fake_mysql) -> None:
    sink = new_sink(progress_retention_days=0)
    for batch_id in range(3):
        commit(sink, batch_id)
    assert len(fake_mysql) == 1
    sink.close()


def test_a_batch_adds_its_counts_and_records_its_offsets_in_one_transaction(fake_mysql) -> None:
    sink = new_sink(progress_retention_days=0)
    commit(sink, 4)
    (conn,) = fake_mysql
    assert (*WINDOW, 3, 3, 4, "q-1") in conn.rows
    (record,) = [r for r in conn.rows if r[0] == stream_sink.COUNTS_QUERY and len(r) == 8]
    assert record[:4] == (stream_sink.COUNTS_QUERY, "q-1", 4, '{"t": {"0": 10}}')
    assert "stream_count = stream_count + VALUES(stream_count)" in stream_sink.COUNTS
    sink.close()


def test_a_batch_is_refused_when_the_sink_moved_under_it(fake_mysql) -> None:
    sink = new_sink(progress_retention_days=0)
    state = sink.state()
    (conn,) = fake_mysql
    conn.sink_row = ('{"t": {"0": 99}}', None)  # another writer got there first
    with pytest.raises(RuntimeError, match="second job"):
        sink.commit(1, "q-1", state, batch_result(), [], [], time.monotonic())
    assert conn.rows == [] and conn.pending == []
    sink.close()


def test_a_batch_waits_for_its_query_id_and_fails_clearly_without_it(fake_mysql) -> None:
    sink = new_sink(query_id_timeout_s=0.1)
    with pytest.raises(RuntimeError, match="query id of registration_counts"):
        sink.query_id(stream_sink.COUNTS_QUERY)
    sink.close()


# ---------------------------------------------------------------- stopping


class FakeStreams:
    def __init__(self) -> None:
        self.terminated = threading.Event()

    def awaitAnyTermination(self) -> None:
        assert self.terminated.wait(30), "no query terminated"


class FakeSpark:
    def __init__(self) -> None:
        self.streams = FakeStreams()


class FakeQuery:
    def __init__(self, name: str, spark: FakeSpark, error: str | None = None) -> None:
        self.name = name
        self.spark = spark
        self.error = error
        self.stopped = False

    @property
    def isActive(self) -> bool:
        return not self.stopped

    @property
    def status(self) -> dict[str, Any]:
        return {"isTriggerActive": False}

    def stop(self) -> None:
        self.stopped = True
        self.spark.streams.terminated.set()

    def exception(self) -> str | None:
        return self.error


def send_when_handled(sig: int, failures: list[str]) -> threading.Thread:
    """Send `sig` to this process once the job's handler is installed (never before: the
    default action would end the test run)."""
    default = signal.getsignal(sig)

    def send() -> None:
        deadline = time.monotonic() + 30
        while signal.getsignal(sig) == default:
            if time.monotonic() > deadline:
                failures.append(f"no handler for {sig!r} was installed")
                return
            time.sleep(0.01)
        os.kill(os.getpid(), sig)

    t = threading.Thread(target=send)
    t.start()
    return t


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_a_signal_stops_both_queries_and_the_job_exits_0(tmp_path, caplog, sig) -> None:
    spark = FakeSpark()
    queries = [FakeQuery(stream_sink.COUNTS_QUERY, spark), FakeQuery("other", spark)]
    before = signal.getsignal(sig)
    failures: list[str] = []
    sender = send_when_handled(sig, failures)
    caplog.set_level(logging.INFO, logger="registration_counts")
    try:
        assert stream_lifecycle.run_until_stopped(spark, queries, tmp_path / "STOP") == 0
    finally:
        sender.join(30)
    assert not failures
    assert all(q.stopped for q in queries)
    assert signal.getsignal(sig) == before  # handlers restored
    assert f"stopped cleanly ({signal.Signals(sig).name})" in caplog.text


def test_the_stop_file_stops_the_job_and_is_removed(tmp_path) -> None:
    spark = FakeSpark()
    queries = [FakeQuery(stream_sink.COUNTS_QUERY, spark), FakeQuery("other", spark)]
    stop = tmp_path / "STOP"
    toucher = threading.Timer(0.2, stop.touch)
    toucher.start()
    try:
        assert stream_lifecycle.run_until_stopped(spark, queries, stop, stop_file_poll_s=0.05) == 0
    finally:
        toucher.cancel()
    assert all(q.stopped for q in queries)
    assert not stop.exists()


def test_a_stale_stop_file_does_not_stop_a_new_job(tmp_path) -> None:
    spark = FakeSpark()
    queries = [FakeQuery(stream_sink.COUNTS_QUERY, spark)]
    stop = tmp_path / "STOP"
    stop.touch()
    stopper = threading.Timer(0.5, queries[0].stop)  # stands in for a failing query
    stopper.start()
    try:
        assert stream_lifecycle.run_until_stopped(spark, queries, stop, stop_file_poll_s=0.05) == 1
    finally:
        stopper.cancel()


def test_a_failed_query_stops_the_other_and_the_job_exits_1(tmp_path, caplog) -> None:
    spark = FakeSpark()
    failed = FakeQuery(stream_sink.COUNTS_QUERY, spark, error="Kafka topic deleted")
    other = FakeQuery("other", spark)
    spark.streams.terminated.set()
    assert stream_lifecycle.run_until_stopped(spark, [failed, other], tmp_path / "STOP") == 1
    assert other.stopped
    assert "registration_counts: Kafka topic deleted" in caplog.text


def test_a_running_batch_is_let_finish_before_its_query_is_stopped(tmp_path) -> None:
    class BusyQuery(FakeQuery):
        checks = 0

        @property
        def status(self) -> dict[str, Any]:
            self.checks += 1
            return {"isTriggerActive": self.checks < 3}

        def stop(self) -> None:
            assert self.checks == 3, "stopped in the middle of a batch"
            super().stop()

    spark = FakeSpark()
    busy = BusyQuery(stream_sink.COUNTS_QUERY, spark)
    stop = tmp_path / "STOP"
    toucher = threading.Timer(0.1, stop.touch)
    toucher.start()
    try:
        assert stream_lifecycle.run_until_stopped(spark, [busy], stop, stop_file_poll_s=0.05) == 0
    finally:
        toucher.cancel()
    assert busy.stopped
