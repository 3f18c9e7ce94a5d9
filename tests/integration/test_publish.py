"""The watermark-gated publisher against real MariaDB and Kafka: nothing lost, nothing doubled."""

from __future__ import annotations

import json
import random
import re
import threading
import time
from collections import Counter
from datetime import datetime, timedelta, timezone

import pytest
from regstream import db, ingest, publish
from regstream.messages import contract_errors
from regstream.publish_errors import PublishError

from stackctl import services
from tests.conftest import (
    event_ids_in_topic,
    role_conn,
    root_conn,
    topic_messages,
    wait_for,
)
from tests.support.publisher import killed_at_ack, run_script

pytestmark = pytest.mark.integration


def table_ids(stack, database: str) -> set[int]:
    cur = root_conn(stack, database).cursor()
    cur.execute("SELECT event_id FROM users_change_events")
    return {r[0] for r in cur.fetchall()}


def watermark(stack, database: str, topic: str) -> tuple:
    cur = root_conn(stack, database).cursor()
    cur.execute(
        "SELECT last_event_id, pending_gaps, events_published FROM "
        "latest_cdc_timestamp WHERE pipeline = %s",
        (topic,),
    )
    return cur.fetchone()


def drain(stack, database: str, topic: str, timeout: float = 60) -> None:
    """Publish until nothing is new and no gap is pending."""

    def settled() -> bool:
        publish.run_publish(topic=topic)
        conn = db.connect("mysql_publisher")
        work, _ = publish.has_work(conn, topic)
        conn.close()
        return not work and json.loads(watermark(stack, database, topic)[1]) == []

    wait_for("the publisher to settle", settled, timeout=timeout, every=0.3)


def insert_customer(cur, store_id: int, when: datetime) -> None:
    cur.execute(
        "INSERT INTO address (address, district, city_id, phone) "
        "VALUES ('1 Test Street', 'Test', 1, '555')"
    )
    cur.execute(
        "INSERT INTO customer (store_id, first_name, last_name, email, address_id, "
        "create_date) VALUES (%s, 'CONC', 'WRITER', 'c@example.org', "
        "LAST_INSERT_ID(), %s)",
        (store_id, when),
    )


def test_gate_skips_when_nothing_is_new(stack, fresh_db, topic) -> None:
    conn = db.connect("mysql_publisher")
    work, why = publish.has_work(conn, topic)
    assert not work and "nothing new above watermark 0" in why
    cur = role_conn(stack, "ingest", fresh_db).cursor()
    insert_customer(cur, 1, datetime(2026, 11, 1, 9, 0))
    work, why = publish.has_work(conn, topic)
    assert work and "1 new events" in why


def test_published_messages_follow_the_contract(stack, fresh_db, topic) -> None:
    """Every message read back from Kafka validates against the JSON Schema and carries the
    row's values."""
    conn = db.connect("mysql_ingest", autocommit=False)
    ingest.run_ingest(
        conn,
        "ingest_fake_customers",
        datetime(2026, 11, 3, tzinfo=timezone.utc),
        datetime(2026, 11, 3, 0, 5, tzinfo=timezone.utc),
        30,
    )
    result = publish.run_publish(topic=topic)
    assert result.published == 30 and result.after.last_event_id == max(table_ids(stack, fresh_db))
    msgs = topic_messages(stack, topic)
    assert len(msgs) == 30
    cur = root_conn(stack, fresh_db).cursor()
    for m in msgs:
        assert contract_errors(m.key(), m.value()) == [], m.value()
        v = json.loads(m.value())
        assert m.key() == str(v["store_id"]).encode()
        assert v["schema_version"] == 1 and v["event_type"] == "customer_registered"
        assert v["create_date"].endswith("Z") and v["captured_at"].endswith("Z")
        cur.execute(
            "SELECT customer_id, store_id, email, DATE_FORMAT(create_date, "
            "'%%Y-%%m-%%dT%%H:%%i:%%sZ') FROM users_change_events WHERE event_id = %s",
            (v["event_id"],),
        )
        assert cur.fetchone() == (v["customer_id"], v["store_id"], v["email"], v["create_date"])
    # each store's events sit in one partition, in event_id order
    by_store: dict[int, list[tuple[int, int, int]]] = {}
    for m in msgs:
        v = json.loads(m.value())
        by_store.setdefault(v["store_id"], []).append((m.partition(), m.offset(), v["event_id"]))
    for events in by_store.values():
        assert len({p for p, _, _ in events}) == 1
        ordered = sorted(events, key=lambda e: e[1])
        assert [e[2] for e in ordered] == sorted(e[2] for e in events)
    # the Java client's partitioner: sakila's two stores use both partitions of the topic
    assert {events[0][0] for events in by_store.values()} == {0, 1}


def test_concurrent_out_of_order_commits_lose_nothing(stack, fresh_db, topic) -> None:
    """Writers commit out of id order, hold transactions open, roll some back, while the
    publisher runs again and again. Afterwards the topic holds exactly the table's ids."""
    stop = threading.Event()
    errors: list[BaseException] = []
    stats = Counter()

    def writer(seed: int) -> None:
        rng = random.Random(seed)
        try:
            conn = role_conn(stack, "ingest", fresh_db)
            conn.autocommit(False)
            cur = conn.cursor()
            base = datetime(2026, 11, 5, 12, 0)
            for _ in range(60):
                for _ in range(rng.randint(1, 4)):
                    insert_customer(
                        cur, rng.choice([1, 2]), base + timedelta(seconds=rng.randrange(3600))
                    )
                # Hold some transactions open while others (later ids) commit.
                time.sleep(rng.choice([0, 0, 0, 0.01, 0.05, 0.3]))
                if rng.random() < 0.2:
                    conn.rollback()
                    stats["rolled_back"] += 1
                else:
                    conn.commit()
                    stats["committed"] += 1
            conn.close()
        except BaseException as exc:  # noqa: BLE001 - reported by the main thread
            errors.append(exc)

    def publisher() -> None:
        try:
            while not stop.is_set():
                r = publish.run_publish(topic=topic)
                stats["runs"] += 1
                stats["max_gaps"] = max(stats["max_gaps"], len(r.after.gaps))
        except BaseException as exc:  # noqa: BLE001
            errors.append(exc)

    writers = [threading.Thread(target=writer, args=(i,)) for i in range(6)]
    pub = threading.Thread(target=publisher)
    pub.start()
    for w in writers:
        w.start()
    for w in writers:
        w.join(timeout=300)
    stop.set()
    pub.join(timeout=120)
    assert not errors, errors
    drain(stack, fresh_db, topic)
    in_table = table_ids(stack, fresh_db)
    in_topic = event_ids_in_topic(stack, topic)
    print(f"concurrency: {stats}, {len(in_table)} events, {len(in_topic)} messages")
    assert stats["rolled_back"] > 0 and stats["runs"] > 3 and stats["max_gaps"] > 0
    assert set(in_topic) == in_table
    assert len(in_topic) == len(in_table)  # no crash here, so no repeats either


def test_open_transaction_holds_only_its_own_gap(stack, fresh_db, topic) -> None:
    holder = role_conn(stack, "ingest", fresh_db)
    holder.autocommit(False)
    insert_customer(holder.cursor(), 1, datetime(2026, 11, 6, 1, 0))  # takes event id 1
    other = role_conn(stack, "ingest", fresh_db).cursor()
    insert_customer(other, 2, datetime(2026, 11, 6, 1, 1))  # id 2, committed
    r = publish.run_publish(topic=topic)
    assert r.published == 1 and r.after.last_event_id == 2
    assert [(g.first, g.last) for g in r.after.gaps] == [(1, 1)]
    r = publish.run_publish(topic=topic)  # still open: the gap waits, nothing repeats
    assert r.published == 0 and [(g.first, g.last) for g in r.after.gaps] == [(1, 1)]
    holder.commit()
    r = publish.run_publish(topic=topic)
    assert r.published == 1 and r.after.gaps == ()
    assert sorted(event_ids_in_topic(stack, topic)) == [1, 2]


def test_sigkill_between_kafka_ack_and_watermark_write_then_clean_run(
    stack, fresh_db, topic
) -> None:
    conn = db.connect("mysql_ingest", autocommit=False)
    start = datetime(2026, 11, 7, tzinfo=timezone.utc)
    for i in range(3):
        ingest.run_ingest(
            conn, "kill_test", start + timedelta(hours=i), start + timedelta(hours=i + 1), 4000
        )
    conn.close()
    ids = sorted(table_ids(stack, fresh_db))
    assert len(ids) == 12_000

    # Killed once Kafka holds the first 5000: the watermark stays at 0, and the 5000 are in
    # the log in a transaction that never commits: a read_committed consumer sees none.
    assert killed_at_ack(5000) == (0, ids[4999], 5000)
    assert watermark(stack, fresh_db, topic)[0] == 0
    assert sorted(event_ids_in_topic(stack, topic, committed_only=False)) == ids[:5000]
    assert event_ids_in_topic(stack, topic) == []
    # A clean run sends those 5000 again and moves the watermark past them.
    r = publish.run_publish(topic=topic, max_events=5000)
    assert (r.published, r.after.last_event_id) == (5000, ids[4999])
    # Killed again at the same point, one batch further.
    assert killed_at_ack(5000) == (ids[4999], ids[9999], 5000)
    assert watermark(stack, fresh_db, topic)[0] == ids[4999]

    drain(stack, fresh_db, topic, timeout=120)
    last, gaps, _ = watermark(stack, fresh_db, topic)
    assert last == ids[-1] and json.loads(gaps) == []
    # What the stream reads: every committed id exactly once.
    assert sorted(event_ids_in_topic(stack, topic)) == ids
    # The log also holds the two killed runs' copies, aborted: the kills landed after the ack.
    msgs = topic_messages(stack, topic, committed_only=False)
    counts = Counter(json.loads(m.value())["event_id"] for m in msgs)
    assert {i for i, n in counts.items() if n == 2} == set(ids[:10_000])
    assert max(counts.values()) == 2
    first_value: dict[int, bytes] = {}
    for m in msgs:  # a copy is the same event: same event_id, same bytes
        v = json.loads(m.value())
        assert first_value.setdefault(v["event_id"], m.value()) == m.value()
    print(f"kill test: {len(ids)} events, {len(msgs) - len(ids)} aborted copies, none visible")


# Publishes once and reports every log record (after Airflow's own logging set-up).
PUBLISH_AND_REPORT = """
import json, logging
import airflow.providers.apache.kafka.hooks.produce  # Airflow configures logging on import
records = []

class Keep(logging.Handler):
    def emit(self, record):
        records.append([record.levelname, record.name, record.getMessage()])

logging.getLogger().addHandler(Keep())
logging.getLogger().setLevel(logging.INFO)
from regstream.publish import run_publish

published = run_publish().published
print("REPORT " + json.dumps({"published": published, "records": records}))
"""


def test_first_publish_on_a_new_topic_logs_no_error(stack, fresh_db, topic) -> None:
    """A broker that just started has no producer ids yet: its first idempotent producer is
    told "Coordinator load in progress" and retries. Airflow shows a task's stderr as ERROR,
    so librdkafka must not write there; its lines go through logging at their own level."""
    services.stop_program(stack, "kafka")
    services.start_kafka(stack)
    cur = role_conn(stack, "ingest", fresh_db).cursor()
    for i in range(3):
        insert_customer(cur, 1 + i % 2, datetime(2026, 11, 9, 0, i))
    proc = run_script(PUBLISH_AND_REPORT)
    assert proc.returncode == 0, proc.stdout + proc.stderr[-3000:]
    (line,) = [x for x in proc.stdout.splitlines() if x.startswith("REPORT ")]
    report = json.loads(line.removeprefix("REPORT "))
    assert report["published"] == 3
    assert [x for x in proc.stderr.splitlines() if re.match(r"%\d\|", x)] == []
    errors = [r for r in report["records"] if r[0] in ("ERROR", "CRITICAL")]
    assert errors == []
    librdkafka = [r for r in report["records"] if r[1] == "regstream.librdkafka"]
    assert all(r[0] == "WARNING" for r in librdkafka if "Coordinator load" in r[2])
    assert any(r[1] == "regstream.kafka_io" and "created topic" in r[2] for r in report["records"])
    print(f"new topic: librdkafka said {librdkafka}")


def test_broker_down_fails_and_keeps_the_watermark(stack, fresh_db, topic) -> None:
    cur = role_conn(stack, "ingest", fresh_db).cursor()
    for i in range(10):
        insert_customer(cur, 1 + i % 2, datetime(2026, 11, 8, 0, i))
    publish.run_publish(topic=topic)
    for i in range(10):
        insert_customer(cur, 1 + i % 2, datetime(2026, 11, 8, 1, i))
    before = watermark(stack, fresh_db, topic)
    services.stop_program(stack, "kafka")
    try:
        t0 = time.monotonic()
        with pytest.raises(publish.PublishError, match=stack.kafka_bootstrap.replace(".", r"\.")):
            publish.run_publish(topic=topic)
        print(f"broker down detected in {time.monotonic() - t0:.1f}s")
        assert watermark(stack, fresh_db, topic) == before
    finally:
        services.start_kafka(stack)
    r = publish.run_publish(topic=topic)
    assert r.published == 10
    assert sorted(event_ids_in_topic(stack, topic)) == sorted(table_ids(stack, fresh_db))


def test_missing_cdc_table_says_to_run_the_schema_step(stack, fresh_db, topic) -> None:
    root_conn(stack, fresh_db).cursor().execute("DROP TABLE users_change_events")
    with pytest.raises(publish.SchemaMissing, match="run the schema step"):
        publish.run_publish(topic=topic)


def test_mysql_down_names_the_connection(stack, topic, monkeypatch) -> None:
    monkeypatch.setenv(
        "AIRFLOW_CONN_MYSQL_PUBLISHER",
        json.dumps(
            {
                "conn_type": "mysql",
                "host": "127.0.0.1",
                "port": 1,
                "login": "reg_publisher",
                "password": "x",
                "schema": "sakila",
            }
        ),
    )
    with pytest.raises(db.DatabaseUnavailable, match="mysql_publisher"):
        publish.run_publish(topic=topic)


def test_a_zombie_publisher_is_fenced_and_cannot_commit(stack, fresh_db, topic) -> None:
    """Two publishers of one topic (an Airflow task thought dead, and its replacement): the
    one that registered last wins; the older one's next run fails and publishes nothing."""
    conn = db.connect("mysql_ingest", autocommit=False)
    start = datetime(2026, 11, 8, tzinfo=timezone.utc)
    ingest.run_ingest(conn, "zombie", start, start + timedelta(hours=1), 50)
    zombie = publish.HookedPublisher(topic=topic)
    try:
        assert zombie.run().published == 50
        ingest.run_ingest(
            conn, "zombie", start + timedelta(hours=1), start + timedelta(hours=2), 30
        )
        conn.close()
        assert publish.run_publish(topic=topic).published == 30  # registers: fences the zombie
        ingest_more = db.connect("mysql_ingest", autocommit=False)
        ingest.run_ingest(
            ingest_more, "zombie", start + timedelta(hours=2), start + timedelta(hours=3), 20
        )
        ingest_more.close()
        with pytest.raises(PublishError, match="fenced it"):
            zombie.run()
    finally:
        zombie.close()
    assert publish.run_publish(topic=topic).published == 20
    assert sorted(event_ids_in_topic(stack, topic)) == sorted(table_ids(stack, fresh_db))
