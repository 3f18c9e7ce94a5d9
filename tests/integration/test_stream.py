"""The Spark job against real Kafka and MariaDB: exact counts, faults, repeats, late data,
poison messages, and a real standalone cluster."""

from __future__ import annotations

import json
import subprocess
import uuid
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
from regstream import db, ingest, publish

from stackctl import services
from tests.conftest import (
    ARTIFACTS,
    point_connections_at,
    root_conn,
    topic_messages,
    wait_for,
)
from tests.integration.streamjob import kill_job, start_job, stream_counts, wait_counts_match

pytestmark = pytest.mark.integration

DAY = datetime(2026, 11, 20, 9, 0, tzinfo=timezone.utc)


def load(interval_start: datetime, minutes: int, n: int, dag: str = "stream_test") -> None:
    conn = db.connect("mysql_ingest", autocommit=False)
    ingest.run_ingest(conn, dag, interval_start, interval_start + timedelta(minutes=minutes), n)
    conn.close()


@pytest.fixture(scope="module")
def env(stack, tmp_path_factory):
    """One database, topic and job for the module's tests, run in file order."""
    mp = pytest.MonkeyPatch()
    database = f"s_{uuid.uuid4().hex[:8]}"
    topic = f"s_{uuid.uuid4().hex[:8]}"
    services.apply_schema(stack, database=database)
    point_connections_at(stack, database, mp)
    mp.setenv("REGSTREAM_TOPIC", topic)
    ck = tmp_path_factory.mktemp("spark") / "checkpoints"
    state = {"db": database, "topic": topic, "ck": ck, "log": ARTIFACTS / f"stream-{topic}.log"}
    state["proc"] = start_job(stack, topic, ck, state["log"])
    yield state
    kill_job(state["proc"])
    mp.undo()


def test_counts_equal_sql_ground_truth(stack, env) -> None:
    for i in range(3):
        load(DAY + timedelta(minutes=10 * i), 10, 400)
    publish.run_publish(topic=env["topic"])
    got = wait_counts_match(stack, env["db"], env["proc"])
    assert sum(got.values()) == 1200 and len(got) > 40


def test_repeated_events_are_counted_once(stack, env) -> None:
    from confluent_kafka import Producer

    before = stream_counts(stack, env["db"])
    msgs = topic_messages(stack, env["topic"])[:300]
    p = Producer({"bootstrap.servers": stack.kafka_bootstrap})
    for m in msgs:
        p.produce(env["topic"], m.value(), m.key())
    assert p.flush(30) == 0
    # then one new interval, to know the repeats were processed before it
    load(DAY + timedelta(minutes=40), 5, 50)
    publish.run_publish(topic=env["topic"])
    got = wait_counts_match(stack, env["db"], env["proc"])
    assert sum(got.values()) == sum(before.values()) + 50


def test_backfilled_past_windows_are_counted(stack, env) -> None:
    load(DAY - timedelta(days=3), 5, 60, dag="backfill")
    publish.run_publish(topic=env["topic"])
    got = wait_counts_match(stack, env["db"], env["proc"])
    past = {k: v for k, v in got.items() if k[0] < (DAY - timedelta(days=2)).replace(tzinfo=None)}
    assert sum(past.values()) == 60


def _raw(topic: str, stack, values: list[bytes]) -> None:
    from confluent_kafka import Producer

    p = Producer({"bootstrap.servers": stack.kafka_bootstrap})
    for v in values:
        p.produce(topic, v, b"1")
    assert p.flush(30) == 0


def test_poison_messages_are_quarantined_and_the_job_keeps_running(stack, env) -> None:
    good = json.loads(topic_messages(stack, env["topic"])[0].value())
    poison = [
        b"this is not json",
        json.dumps({"event_id": 999999}).encode(),
        json.dumps({**good, "event_id": 888888, "store_id": "north"}).encode(),
        json.dumps({**good, "event_id": 777777, "create_date": "yesterday"}).encode(),
        json.dumps({**good, "event_id": 666666, "schema_version": 9}).encode(),
        b"[1, 2, 3]",
    ]
    _raw(env["topic"], stack, poison)
    cur = root_conn(stack, env["db"]).cursor()

    def quarantined():
        cur.execute("SELECT raw_value, reason FROM stream_quarantine ORDER BY kafka_offset")
        rows = cur.fetchall()
        return rows if len(rows) == len(poison) else None

    rows = wait_for("poison messages in quarantine", quarantined, timeout=120, every=0.5)
    reasons = {bytes(v): r for v, r in rows}
    assert reasons[b"this is not json"] == "not a JSON object"
    assert "missing field store_id" in reasons[poison[1]]
    assert reasons[poison[2]] == "wrong type for store_id"
    assert reasons[poison[3]] == "wrong type for create_date"
    assert reasons[poison[4]] == "unsupported schema_version 9"
    assert reasons[b"[1, 2, 3]"] == "not a JSON object"
    # still running, and still counting
    load(DAY + timedelta(minutes=50), 5, 40)
    publish.run_publish(topic=env["topic"])
    wait_counts_match(stack, env["db"], env["proc"])


def test_too_late_events_are_counted_as_dropped_not_silently(stack, env) -> None:
    good = json.loads(topic_messages(stack, env["topic"])[0].value())
    ancient = {**good, "event_id": 5_000_001, "create_date": "2026-01-01T00:00:00Z"}
    _raw(env["topic"], stack, [json.dumps(ancient).encode()])
    cur = root_conn(stack, env["db"]).cursor()

    def dropped():
        cur.execute(
            "SELECT COALESCE(SUM(late_rows_dropped), 0) FROM stream_progress "
            "WHERE query_name = 'registration_counts'"
        )
        return cur.fetchone()[0] >= 1

    wait_for("the late row in stream_progress.late_rows_dropped", dropped, timeout=120)
    cur.execute("SELECT COUNT(*) FROM registrations_per_window WHERE window_start < '2026-02-01'")
    assert cur.fetchone()[0] == 0


def test_sigkill_mid_batch_then_restart_gives_the_same_counts(stack, env) -> None:
    load(DAY + timedelta(hours=2), 60, 30_000)
    publish.run_publish(topic=env["topic"])
    cur = root_conn(stack, env["db"]).cursor()

    def batch_running() -> bool:
        # progress rows exist only for finished batches: the batch after the last one is live
        cur.execute(
            "SELECT COALESCE(SUM(input_rows), 0) FROM stream_progress WHERE "
            "query_name = 'registration_counts'"
        )
        return cur.fetchone()[0] > 0

    wait_for("the job to be in its batches", batch_running, timeout=60)
    kill_job(env["proc"])
    env["proc"] = start_job(stack, env["topic"], env["ck"], env["log"])
    got = wait_counts_match(stack, env["db"], env["proc"], timeout=240)
    assert sum(got.values()) == ground_total(stack, env["db"])


def ground_total(stack, database: str) -> int:
    cur = root_conn(stack, database).cursor()
    cur.execute("SELECT COUNT(*) FROM customer")
    return cur.fetchone()[0]


def test_old_progress_rows_are_pruned_but_late_drop_records_kept(stack, env) -> None:
    cur = root_conn(stack, env["db"]).cursor()
    cur.executemany(
        "INSERT INTO stream_progress (query_name, batch_id, input_rows, late_rows_dropped, "
        "finished_at) VALUES ('old_query', %s, 10, %s, NOW(6) - INTERVAL %s DAY)",
        [(1, 0, 30), (2, 3, 30), (3, 0, 1)],
    )
    # the job prunes when it starts and hourly: restart it
    kill_job(env["proc"])
    env["proc"] = start_job(stack, env["topic"], env["ck"], env["log"])
    load(DAY + timedelta(hours=5), 5, 20)
    publish.run_publish(topic=env["topic"])
    wait_counts_match(stack, env["db"], env["proc"])

    def kept() -> list | None:
        cur.execute("SELECT batch_id FROM stream_progress WHERE query_name = 'old_query'")
        ids = sorted(r[0] for r in cur.fetchall())
        return ids if ids == [2, 3] else None

    # batch 1 (30 days old) pruned; batch 2 (it dropped late rows) and batch 3 (1 day) kept
    wait_for("old progress rows to be pruned", kept, timeout=60)
    assert "pruned 1 stream_progress rows older than 7 days" in env["log"].read_text()


def test_second_instance_refuses_to_start(stack, env, tmp_path) -> None:
    log = tmp_path / "second.log"
    proc = start_job(stack, env["topic"], env["ck"], log, extra=["--lock-timeout", "1"])
    assert proc.wait(timeout=120) != 0
    assert "another instance holds lock" in log.read_text()
    assert env["proc"].poll() is None


# ---------------------------------------------------------------- standalone cluster


def test_same_job_runs_on_a_standalone_cluster(stack, fresh_db, topic, tmp_path) -> None:
    spark_class = str(stack.venv / "bin" / "spark-class")
    from tests.integration.streamjob import spark_env

    env = spark_env(stack)
    env["SPARK_WORKER_DIR"] = str(tmp_path / "work")
    logs = ARTIFACTS / "cluster"
    logs.mkdir(parents=True, exist_ok=True)
    master = subprocess.Popen(
        [
            spark_class,
            "org.apache.spark.deploy.master.Master",
            "--host",
            "127.0.0.1",
            "--port",
            "7177",
            "--webui-port",
            "8177",
        ],
        stdout=open(logs / "master.log", "wb"),
        stderr=subprocess.STDOUT,
        env=env,
        start_new_session=True,
    )
    worker = subprocess.Popen(
        [
            spark_class,
            "org.apache.spark.deploy.worker.Worker",
            "spark://127.0.0.1:7177",
            "--host",
            "127.0.0.1",
            "--cores",
            "2",
            "--memory",
            "1g",
            "--webui-port",
            "8178",
        ],
        stdout=open(logs / "worker.log", "wb"),
        stderr=subprocess.STDOUT,
        env=env,
        start_new_session=True,
    )
    job = None
    try:
        wait_for(
            "a registered worker",
            lambda: "Registering worker" in (logs / "master.log").read_text(),
            timeout=60,
        )
        load(DAY, 30, 300, dag="cluster")
        publish.run_publish(topic=topic)
        job = start_job(
            stack,
            topic,
            tmp_path / "ck",
            logs / "job.log",
            master="spark://127.0.0.1:7177",
            extra=[],
        )
        wait_counts_match(stack, fresh_db, job, timeout=240)
        assert "app-" in (logs / "master.log").read_text()  # ran as a cluster application
        assert list(Path(env["SPARK_WORKER_DIR"]).glob("app-*/*/stderr"))  # executors ran
    finally:
        for proc in (job, worker, master):
            if proc is not None:
                kill_job(proc)
