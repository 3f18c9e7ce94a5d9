"""A topic holding v1 and v2 messages (a publisher upgraded while old messages are still in the
topic) is counted exactly by the real job; a version it has no schema for is quarantined.
The rule and the deploy order: docs/contract.md."""

from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone
from typing import Any

import pytest
from regstream import ingest, messages
from regstream.stream import contract

from tests.conftest import ARTIFACTS, role_conn, root_conn, wait_for
from tests.support.streamjob import create_topic, kill_job, start_job, wait_counts_match

pytestmark = pytest.mark.integration

WINDOW = datetime(2026, 11, 21, 9, 0, tzinfo=timezone.utc)


def produce(stack, topic: str, messages_: list[tuple[bytes, bytes]]) -> None:
    from confluent_kafka import Producer

    p = Producer({"bootstrap.servers": stack.kafka_bootstrap})
    for key, value in messages_:
        p.produce(topic, value, key)
    assert p.flush(30) == 0


def captured_values(stack, database: str) -> list[tuple[int, dict[str, Any]]]:
    """Every captured event as the publisher's SQL builds it (v1 today)."""
    cur = root_conn(stack, database).cursor()
    cur.execute("SET time_zone = '+00:00'")
    cur.execute(messages.SELECT_EVENTS + " ORDER BY event_id")
    return [(store, json.loads(value)) for _id, store, value in cur.fetchall()]


def test_a_topic_of_v1_and_v2_messages_is_counted_exactly(stack, fresh_db, topic) -> None:
    assert contract.known_versions() == (1, 2)
    conn = role_conn(stack, "ingest", fresh_db)
    try:
        ingest.run_ingest(conn, "versions", WINDOW, WINDOW + timedelta(minutes=5), 60)
    finally:
        conn.close()
    events = captured_values(stack, fresh_db)
    assert len(events) == 60 and all(e["schema_version"] == 1 for _s, e in events)
    batch: list[tuple[bytes, bytes]] = []
    for i, (store, value) in enumerate(events):
        if i % 2:  # every other event as a v2 message: the same fields plus city_id
            value = {**value, "schema_version": 2, "city_id": 300 + i}
        batch.append((messages.message_key(store), json.dumps(value).encode()))
    unknown = {**events[0][1], "schema_version": 99, "event_id": 10_000_000}
    batch.append((b"1", json.dumps(unknown).encode()))
    create_topic(stack, topic)
    produce(stack, topic, batch)
    log = ARTIFACTS / f"stream-{topic}.log"
    proc = start_job(stack, topic, ARTIFACTS / f"ck-{topic}", log)
    try:
        got = wait_counts_match(stack, fresh_db, proc)
        assert sum(got.values()) == 60
        cur = root_conn(stack, fresh_db).cursor()

        def quarantined() -> list[str]:
            cur.execute("SELECT reason FROM stream_quarantine")
            return [r for (r,) in cur.fetchall()]

        assert wait_for("the v99 message in quarantine", quarantined, timeout=60) == [
            "unsupported schema_version 99"
        ]
    finally:
        kill_job(proc)
