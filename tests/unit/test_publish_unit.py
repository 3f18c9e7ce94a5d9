"""The publisher's run, Kafka side and message contract, without MariaDB or a Kafka broker."""

from __future__ import annotations

import json
import logging
import sqlite3
import time
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import Future
from types import SimpleNamespace
from typing import Any

import pytest
from confluent_kafka import KafkaError, KafkaException, Producer
from regstream import kafka_io
from regstream.cdc_source import Row, events_query
from regstream.messages import contract_errors
from regstream.publish import (
    Acked,
    PublisherBusy,
    PublishError,
    messages,
    producer_config,
    publish_events,
)
from regstream.watermark import Gap, ReadPlan, Run, Watermark, gaps_from_json, gaps_to_json

# ------------------------------------------------------------------ fakes


def value_of(event_id: int, store_id: int) -> bytes:
    return json.dumps(
        {
            "schema_version": 1,
            "event_id": event_id,
            "event_type": "customer_registered",
            "customer_id": event_id,
            "store_id": store_id,
            "create_date": "2026-11-01T00:00:00Z",
            "captured_at": "2026-11-01T00:00:00.000001Z",
        }
    ).encode()


class FakeEvents:
    """EventSource over an in-memory table: ids taken at insert, visible at commit."""

    def __init__(self) -> None:
        self.next_id = 1
        self.committed: dict[int, int] = {}  # event_id -> store_id
        self.open: dict[str, list[int]] = {}
        self.stored: dict[str, tuple[int, str, int]] = {}  # the MySQL copy, as its row holds it
        self.locks: set[str] = set()

    def insert(self, trx: str | None = None) -> int:
        event_id, self.next_id = self.next_id, self.next_id + 1
        if trx is None:
            self.committed[event_id] = 1 + event_id % 2
        else:
            self.open.setdefault(trx, []).append(event_id)
        return event_id

    def commit(self, trx: str) -> None:
        for event_id in self.open.pop(trx):
            self.committed[event_id] = 1 + event_id % 2

    def watermark(self, pipeline: str) -> Watermark:
        last, gaps, published = self.stored.get(pipeline, (0, "[]", 0))
        return Watermark(
            last, f"captured {last}" if last else None, gaps_from_json(gaps), published
        )

    # EventSource
    def check_schema(self) -> None:
        pass

    def try_lock(self, name: str) -> bool:
        if name in self.locks:
            return False
        self.locks.add(name)
        return True

    def release_lock(self, name: str) -> None:
        self.locks.discard(name)

    def read_watermark(self, pipeline: str) -> Watermark:
        return self.watermark(pipeline)

    def open_transactions(self, not_before: float | None = None) -> set[str]:
        return set(self.open)

    def read_events(self, plan: ReadPlan) -> Iterator[list[Row]]:
        ids = sorted(
            i for i in self.committed if i > plan.above or any(a <= i <= b for a, b in plan.gaps)
        )[: plan.limit]
        rows = [(i, self.committed[i], value_of(i, self.committed[i])) for i in ids]
        for i in range(0, len(rows), 3):
            yield rows[i : i + 3]

    def captured_at(self, event_id: int) -> Any:
        return f"captured {event_id}"

    def write_watermark(self, pipeline: str, state: Watermark) -> None:
        self.stored[pipeline] = (
            state.last_event_id,
            gaps_to_json(state.gaps),
            state.events_published,
        )

    def backlog(self, above: int) -> int:
        return sum(1 for i in self.committed if i > above)


class FakeKafka:
    """A transactional producer and its state topic (kafka_io.Transactions): flush()
    acknowledges (or fails) messages like librdkafka; what a transaction produced is seen by
    read_committed consumers only once it commits."""

    def __init__(self) -> None:
        self.producer = self
        self.queued: list[tuple[bytes, bytes, Any]] = []
        self.log: list[
            tuple[int, int, bytes, bytes, int]
        ] = []  # partition, offset, key, value, txn
        self.txn = 0
        self.committed_txns: set[int] = set()
        self.state: Watermark | None = None
        self.state_records = 0
        self.fenced = False
        self.fail_next_flush = False

    # Transactions
    def fence(self) -> None:
        self.fenced = True

    def read_state(self) -> Watermark | None:
        return self.state

    def begin(self) -> None:
        self.txn += 1

    def commit(self, state: Watermark) -> None:
        assert not self.queued, "commit flushes first"
        self.committed_txns.add(self.txn)
        self.state = state
        self.state_records += 1

    def abort(self, forget: bool = True) -> None:
        self.queued = []

    # Producer
    def produce(self, topic: str, value: bytes, key: bytes, on_delivery: Any) -> None:
        self.queued.append((key, value, on_delivery))

    def poll(self, timeout: float = 0) -> int:
        return 0

    def flush(self, timeout: float = 0) -> int:
        queued, self.queued = self.queued, []
        for key, value, on_delivery in queued:
            if self.fail_next_flush:
                on_delivery(KafkaError(KafkaError._MSG_TIMED_OUT), None)
                continue
            partition = int(key) % 2
            offset = sum(1 for p, *_ in self.log if p == partition)
            self.log.append((partition, offset, key, value, self.txn))
            msg = SimpleNamespace(partition=lambda p=partition: p, offset=lambda o=offset: o)
            on_delivery(None, msg)
        self.fail_next_flush = False
        return 0

    def event_ids(self, committed_only: bool = True) -> list[int]:
        """What a read_committed consumer sees (or, with False, read_uncommitted)."""
        return [
            json.loads(value)["event_id"]
            for *_, value, txn in self.log
            if txn in self.committed_txns or not committed_only
        ]


class Crash(BaseException):
    """The process dies here (BaseException: no `except Exception` may swallow it)."""


# ------------------------------------------------------------------ the run


def test_crash_between_kafka_ack_and_watermark_write_then_clean_run() -> None:
    events, kafka = FakeEvents(), FakeKafka()
    for _ in range(5):
        events.insert()
    slow = events.insert("slow")  # id 6, committed only later
    for _ in range(4):
        events.insert()  # 7-10
    r = publish_events(events, kafka, "t", gap_max_wait_s=0)
    assert r.published == 9 and r.after.last_event_id == 10
    assert [(g.first, g.last, g.trx) for g in r.after.gaps] == [(6, 6, ("slow",))]
    events.commit("slow")
    for _ in range(3):
        events.insert()  # 11-13
    seen: list[Acked] = []

    def crash(acked: Acked) -> None:
        seen.append(acked)
        # Kafka acknowledged every message of this run; the watermark is still the old one.
        assert kafka.event_ids(committed_only=False)[9:] == [slow, 11, 12, 13]
        assert not kafka.queued and kafka.state == r.after
        raise Crash

    with pytest.raises(Crash):
        publish_events(events, kafka, "t", gap_max_wait_s=0, on_acked=crash)
    assert seen[0].decision.state.last_event_id == 13 and seen[0].decision.state.gaps == ()
    assert kafka.state == r.after and events.watermark("t") == r.after and events.locks == set()
    assert sorted(kafka.event_ids()) == sorted(set(events.committed) - {slow, 11, 12, 13})
    clean = publish_events(events, kafka, "t", gap_max_wait_s=0)
    assert clean.before == r.after and clean.published == 4
    assert clean.after == Watermark(13, "captured 13", (), 13)
    assert kafka.state == clean.after and events.watermark("t") == clean.after
    # read_committed: every committed event once; the crashed run's copies only uncommitted
    assert sorted(kafka.event_ids()) == sorted(events.committed)
    repeats = Counter(kafka.event_ids(committed_only=False))
    assert {i for i, n in repeats.items() if n > 1} == {slow, 11, 12, 13}


def test_a_crash_after_the_commit_leaves_only_the_mysql_copy_behind() -> None:
    events, kafka = FakeEvents(), FakeKafka()
    for _ in range(3):
        events.insert()
    real_write = events.write_watermark

    def die(pipeline: str, state: Watermark) -> None:
        raise Crash

    events.write_watermark = die  # type: ignore[method-assign]
    with pytest.raises(Crash):
        publish_events(events, kafka, "t", gap_max_wait_s=0)
    assert kafka.state is not None and kafka.state.last_event_id == 3
    assert events.watermark("t") == Watermark()  # the copy is behind
    events.write_watermark = real_write  # type: ignore[method-assign]
    r = publish_events(events, kafka, "t", gap_max_wait_s=0)
    assert r.before == kafka.state and r.published == 0  # Kafka's watermark wins: no repeat
    assert events.watermark("t").last_event_id == 3
    assert sorted(kafka.event_ids()) == [1, 2, 3]


def test_failed_delivery_keeps_the_watermark_and_the_next_run_resends() -> None:
    events, kafka = FakeEvents(), FakeKafka()
    for _ in range(4):
        events.insert()
    kafka.fail_next_flush = True
    with pytest.raises(PublishError, match=r"acknowledged 0 of 4 .* watermark was not moved"):
        publish_events(events, kafka, "t", bootstrap="k:9", gap_max_wait_s=0)
    assert events.watermark("t") == Watermark() and events.locks == set()
    assert kafka.state is None
    r = publish_events(events, kafka, "t", gap_max_wait_s=0)
    assert r.published == 4 and r.after.last_event_id == 4
    assert sorted(kafka.event_ids()) == [1, 2, 3, 4]
    assert r.partitions == {0: (0, 1), 1: (0, 1)}


def test_a_second_publisher_is_refused_and_changes_nothing() -> None:
    events, kafka = FakeEvents(), FakeKafka()
    events.insert()
    events.locks.add("regstream_publish:t")
    with pytest.raises(PublisherBusy, match="another publisher for topic t"):
        publish_events(events, kafka, "t", gap_max_wait_s=0)
    # not even fenced: the running publisher's transaction is left alone
    assert kafka.log == [] and events.stored == {} and not kafka.fenced


def test_a_run_with_nothing_new_writes_nothing() -> None:
    events, kafka = FakeEvents(), FakeKafka()
    events.insert()
    publish_events(events, kafka, "t", gap_max_wait_s=0)
    stored = dict(events.stored)
    events.write_watermark = None  # type: ignore[assignment,method-assign]  # must not be called
    records = kafka.state_records
    r = publish_events(events, kafka, "t", gap_max_wait_s=0)
    assert r.published == 0 and events.stored == stored and r.backlog == 0
    assert kafka.state_records == records  # and no new watermark record in Kafka


# ------------------------------------------------------------------ the message contract


def mysql_json_quote(text: str | None) -> str | None:
    return None if text is None else json.dumps(text, ensure_ascii=False)


def mysql_concat(*parts: Any) -> str | None:
    return None if any(p is None for p in parts) else "".join(str(p) for p in parts)


def in_sqlite(sql: str) -> str:
    """MySQLdb's placeholders and MySQL's byte-string type, in SQLite's words."""
    assert sql.count(" AS BINARY)") == 1
    return sql.replace("%s", "?").replace(" AS BINARY)", " AS BLOB)")


def sqlite_as_mysql() -> sqlite3.Connection:
    """SQLite with MySQL's CONCAT (NULL if any part is) and JSON_QUOTE, and the event table
    holding dates as MySQL's CAST(... AS CHAR) prints them."""
    db = sqlite3.connect(":memory:")
    db.create_function("CONCAT", -1, mysql_concat, deterministic=True)
    db.create_function("JSON_QUOTE", 1, mysql_json_quote, deterministic=True)
    db.execute(
        "CREATE TABLE users_change_events (event_id INTEGER PRIMARY KEY, event_type TEXT, "
        "customer_id INTEGER, store_id INTEGER, first_name TEXT, last_name TEXT, email TEXT, "
        "address_id INTEGER, create_date TEXT, captured_at TEXT)"
    )
    return db


PEOPLE = [
    ("MARY", "SMITH", "MARY.SMITH@sakilacustomer.org"),
    ('Ann "The Hammer"', "O'Brien", None),
    ("Zoë", "Back\\slash\tTab", "zoe@example.org"),
    ("Line\nBreak", "Ünïcødé 東京", "x@example.org"),
]


def test_messages_built_by_the_publishers_query_match_the_contract() -> None:
    db = sqlite_as_mysql()
    for i, (first, last, email) in enumerate(PEOPLE * 2, start=1):
        db.execute(
            "INSERT INTO users_change_events VALUES (?, 'customer_registered', ?, ?, ?, ?, ?, "
            "?, ?, ?)",
            (
                i,
                100 + i,
                1 + i % 2,
                first,
                last,
                email,
                200 + i,
                "2026-11-01 09:00:0" + str(i % 10),
                f"2026-11-26 06:51:16.10950{i % 10}",
            ),
        )
    run = Run(Watermark(4, None, (Gap(2, 2, (), 0.0),)), frozenset(), 100)
    sql, params = events_query(run.plan)
    rows = list(db.execute(in_sqlite(sql), params))
    produced = list(messages([rows[:2], rows[2:]], run))
    assert [json.loads(v)["event_id"] for _, v in produced] == [2, 5, 6, 7, 8]
    assert run.top == 8 and run.rows == 5
    for key, value in produced:
        assert contract_errors(key, value) == [], value
        v = json.loads(value)
        assert key == str(v["store_id"]).encode()
        first, last, email = PEOPLE[(v["event_id"] - 1) % 4]
        assert (v["first_name"], v["last_name"], v["email"]) == (first, last, email)
        assert v["create_date"] == f"2026-11-01T09:00:0{v['event_id'] % 10}Z"
        assert v["captured_at"] == f"2026-11-26T06:51:16.10950{v['event_id'] % 10}Z"


@pytest.mark.parametrize(
    ("change", "error"),
    [
        (lambda v: v.pop("event_id"), "'event_id' is a required property"),
        (lambda v: v.update(schema_version=2), "1 was expected"),
        (lambda v: v.update(store_id="1"), "'1' is not of type 'integer'"),
        (lambda v: v.update(create_date="2026-11-01 09:00:00"), "is not a 'date-time'"),
        (lambda v: v.update(captured_at="2026-11-01T09:00:00"), "does not match 'Z$'"),
        (lambda v: v.update(email="x" * 51), "is too long"),
    ],
)
def test_the_contract_rejects_broken_messages(change: Any, error: str) -> None:
    value = json.loads(value_of(7, 2))
    change(value)
    errors = contract_errors(b"2", json.dumps(value).encode())
    assert any(error in e for e in errors), errors


def test_the_contract_rejects_a_missing_key_and_a_value_that_is_not_json() -> None:
    assert contract_errors(None, value_of(1, 2)) == ["key: None is not of type 'string'"]
    assert contract_errors(b"2", b"{not json")[0].startswith("value is not JSON")


# ------------------------------------------------------------------ Kafka side


def test_the_producer_keeps_its_delivery_guarantees_over_the_connection_settings() -> None:
    config = producer_config(
        {"bootstrap.servers": "k:9", "acks": "1", "enable.idempotence": False, "client.id": "c"}
    )
    assert config["acks"] == "all" and config["enable.idempotence"] is True
    assert config["bootstrap.servers"] == "k:9" and config["client.id"] == "c"
    assert config["logger"] is logging.getLogger("regstream.librdkafka")


class FakeAdmin:
    """list_topics/create_topics of an AdminClient; leaders appear after `leaderless_polls`."""

    def __init__(
        self,
        create_error: KafkaError | None = None,
        leaderless_polls: int = 0,
        partition_error: KafkaError | None = None,
    ):
        self.create_error = create_error
        self.partition_error = partition_error
        self.leaderless_polls = leaderless_polls
        self.created: list[str] = []
        self.polls = 0

    def list_topics(self, topic: str | None = None, timeout: float = 0) -> Any:
        self.polls += 1
        if not self.created and self.create_error is None:
            return SimpleNamespace(topics={})
        leader = -1 if self.polls <= self.leaderless_polls else 0
        parts = {
            p: SimpleNamespace(id=p, leader=leader, error=self.partition_error) for p in (0, 1)
        }
        return SimpleNamespace(topics={"t": SimpleNamespace(error=None, partitions=parts)})

    def create_topics(self, new_topics: list[Any]) -> dict[str, Future]:
        future: Future = Future()
        if self.create_error is not None:
            future.set_exception(KafkaException(self.create_error))
        else:
            self.created += [t.topic for t in new_topics]
            future.set_result(None)
        return {new_topics[0].topic: future}


def test_a_topic_created_meanwhile_is_recognised_by_its_error_code() -> None:
    # The message text is no part of the decision: only the code is.
    exists = KafkaError(KafkaError.TOPIC_ALREADY_EXISTS, "something else entirely")
    kafka_io.create_topic(FakeAdmin(exists), "t", 2, 1, "k:9", timeout=1)
    other = KafkaError(KafkaError.INVALID_REPLICATION_FACTOR, "TOPIC_ALREADY_EXISTS")
    with pytest.raises(PublishError, match="cannot create topic t at k:9"):
        kafka_io.create_topic(FakeAdmin(other), "t", 2, 1, "k:9", timeout=1)


def test_a_new_topic_is_used_only_once_every_partition_has_a_leader() -> None:
    admin = FakeAdmin(leaderless_polls=3)
    kafka_io.ensure_topic(admin, "t", 2, 1, "k:9", timeout=5, every=0)
    assert admin.created == ["t"] and admin.polls == 4
    stuck = FakeAdmin(leaderless_polls=10**9)
    with pytest.raises(PublishError, match=r"Kafka at k:9: topic t has partitions \[0, 1\] with"):
        kafka_io.ensure_topic(stuck, "t", 2, 1, "k:9", timeout=0.05, every=0)
    # A replica down (KRaft: REPLICA_NOT_AVAILABLE) while the leaders serve: ready.
    degraded = FakeAdmin(partition_error=KafkaError(KafkaError.REPLICA_NOT_AVAILABLE))
    kafka_io.ensure_topic(degraded, "t", 2, 1, "k:9", timeout=0.05, every=0)
    assert degraded.polls == 2


def test_librdkafka_logs_go_through_python_logging_not_stderr(caplog, capfd) -> None:
    # Nothing listens on port 1: librdkafka logs the refused connection at once.
    caplog.set_level(logging.DEBUG, logger="regstream.librdkafka")
    producer = Producer(producer_config("127.0.0.1:1"))
    deadline = time.monotonic() + 20
    while not caplog.records and time.monotonic() < deadline:
        producer.poll(0.1)
    records = [r for r in caplog.records if r.name == "regstream.librdkafka"]
    assert records and any("Connection refused" in r.getMessage() for r in records)
    assert all(r.levelno == logging.ERROR for r in records if "refused" in r.getMessage())
    assert "%3|" not in capfd.readouterr().err
