"""The Spark job against real Kafka and MariaDB: exact counts, faults, repeats, late data,
poison messages, stopping and restarting, a new checkpoint, a real standalone cluster; and the
live view's reading of the job's windows.

Most tests share one database, topic and job (a Spark start costs ~20 s on 2 cores). Each test
loads its own interval, checks its own windows, and compares the whole table with the SQL
ground truth, so the tests pass in any order and alone; a test that stops the job leaves it
to the next test's fixture to start again.
"""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
from regstream import db, ingest, liveview, publish
from regstream.intervals import parse_interval
from regstream.stream import mysql as stream_mysql
from regstream.stream import sink as stream_sink
from regstream.stream import windows as stream_windows

from stackctl import services
from tests.conftest import (
    ARTIFACTS,
    event_ids_in_topic,
    point_connections_at,
    role_conn,
    root_conn,
    wait_for,
)
from tests.support.publisher import killed_at_ack
from tests.support.streamjob import (
    create_topic,
    kill_job,
    query_ids,
    start_job,
    stop_job,
    wait_counts_match,
    wait_started,
)

pytestmark = pytest.mark.integration

DAY = datetime(2026, 11, 20, 9, 0, tzinfo=timezone.utc)


def load(interval_start: datetime, minutes: int, n: int, dag: str = "stream_test") -> None:
    conn = db.connect("mysql_ingest", autocommit=False)
    try:
        ingest.run_ingest(conn, dag, interval_start, interval_start + timedelta(minutes=minutes), n)
    finally:
        conn.close()


def naive(t: datetime) -> datetime:
    return t.replace(tzinfo=None)


def total_between(counts: dict[tuple, int], start: datetime, end: datetime) -> int:
    return sum(n for (ws, _store), n in counts.items() if naive(start) <= ws < naive(end))


@pytest.fixture(scope="module")
def shared(stack, tmp_path_factory) -> Iterator[dict[str, Any]]:
    """The module's database, topic and job; the job is killed at the end whatever happened."""
    topic = f"s_{uuid.uuid4().hex[:8]}"
    state: dict[str, Any] = {
        "db": f"s_{uuid.uuid4().hex[:8]}",
        "topic": topic,
        "ck": tmp_path_factory.mktemp("spark") / "checkpoints",
        "log": ARTIFACTS / f"stream-{topic}.log",
        "proc": None,
    }
    with pytest.MonkeyPatch.context() as mp:
        try:
            services.apply_schema(stack, database=state["db"])
            point_connections_at(stack, state["db"], mp)
            mp.setenv("REGSTREAM_TOPIC", topic)
            create_topic(stack, topic)
            yield state
        finally:
            if state["proc"] is not None:
                kill_job(state["proc"])


@pytest.fixture
def env(stack, shared) -> dict[str, Any]:
    """The shared job, started if it is not running (first test, or a test stopped it)."""
    if shared["proc"] is None or shared["proc"].poll() is not None:
        starts = len(query_ids(shared["log"])) if shared["log"].exists() else 0
        shared["proc"] = start_job(stack, shared["topic"], shared["ck"], shared["log"])
        wait_started(shared["proc"], shared["log"], starts)
    return shared


def test_counts_equal_sql_ground_truth(stack, env) -> None:
    for i in range(3):
        load(DAY + timedelta(minutes=10 * i), 10, 400, dag="counts")
    publish.run_publish(topic=env["topic"])
    got = wait_counts_match(stack, env["db"], env["proc"])
    mine = {k: n for k, n in got.items() if naive(DAY) <= k[0] < naive(DAY + timedelta(minutes=30))}
    assert sum(mine.values()) == 1200 and len(mine) > 40


def test_a_publisher_killed_after_the_ack_is_counted_once(stack, env) -> None:
    """The copies a publisher makes when it dies between Kafka's acknowledgement and its
    watermark write are in the log, aborted: the stream never counts them."""
    load(DAY + timedelta(hours=1), 5, 300, dag="repeats")
    before, after, acked = killed_at_ack(10_000)
    assert acked == 300 and after > before
    copies = [
        i for i in event_ids_in_topic(stack, env["topic"], committed_only=False) if i > before
    ]
    assert len(copies) == 300  # the kill landed after Kafka held all 300
    publish.run_publish(topic=env["topic"])
    got = wait_counts_match(stack, env["db"], env["proc"])
    assert total_between(got, DAY + timedelta(hours=1), DAY + timedelta(hours=1, minutes=5)) == 300
    assert len([i for i in event_ids_in_topic(stack, env["topic"]) if i > before]) == 300


def test_backfilled_past_windows_are_counted(stack, env) -> None:
    past = DAY - timedelta(days=3)
    load(past, 5, 60, dag="backfill")
    publish.run_publish(topic=env["topic"])
    got = wait_counts_match(stack, env["db"], env["proc"])
    assert total_between(got, past, past + timedelta(minutes=5)) == 60


def _raw(topic: str, stack, values: list[bytes]) -> None:
    from confluent_kafka import Producer

    p = Producer({"bootstrap.servers": stack.kafka_bootstrap})
    for v in values:
        p.produce(topic, v, b"1")
    assert p.flush(30) == 0


def good_event(event_id: int, create_date: str = "2026-11-20T10:30:00Z") -> dict[str, Any]:
    return {
        "schema_version": 1,
        "event_id": event_id,
        "event_type": "customer_registered",
        "customer_id": event_id,
        "store_id": 1,
        "first_name": "ANA",
        "last_name": "LIMA",
        "email": None,
        "address_id": 1,
        "create_date": create_date,
        "captured_at": "2026-11-20T10:30:00.000001Z",
    }


def test_poison_messages_are_quarantined_and_the_job_keeps_running(stack, env) -> None:
    good = good_event(999_000)
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

    def quarantined() -> dict[bytes, str] | None:
        cur.execute("SELECT raw_value, reason FROM stream_quarantine")
        rows = {bytes(v): r for v, r in cur.fetchall() if bytes(v) in poison}
        return rows if len(rows) == len(poison) else None

    reasons = wait_for("poison messages in quarantine", quarantined, timeout=120, every=0.5)
    assert reasons[b"this is not json"] == "not a JSON object"
    assert "missing field store_id" in reasons[poison[1]]
    assert reasons[poison[2]] == "wrong type for store_id"
    assert reasons[poison[3]] == "wrong type for create_date"
    assert reasons[poison[4]] == "unsupported schema_version 9"
    assert reasons[b"[1, 2, 3]"] == "not a JSON object"
    # still running, and still counting
    load(DAY + timedelta(hours=1, minutes=30), 5, 40, dag="poison")
    publish.run_publish(topic=env["topic"])
    wait_counts_match(stack, env["db"], env["proc"])


def late_events(cur: Any) -> dict[int, tuple]:
    cur.execute("SELECT event_id, store_id, create_date, batch_id FROM stream_late_events")
    return {r[0]: r[1:] for r in cur.fetchall()}


def test_too_late_events_are_recorded_one_by_one_not_counted(stack, env) -> None:
    cur = root_conn(stack, env["db"]).cursor()
    # events of this week first: they move the watermark past January
    load(DAY + timedelta(hours=1, minutes=45), 5, 20, dag="late")
    publish.run_publish(topic=env["topic"])
    wait_counts_match(stack, env["db"], env["proc"])
    ancient = [good_event(5_000_001 + i, create_date="2026-01-01T00:00:00Z") for i in range(2)]
    _raw(env["topic"], stack, [json.dumps(e).encode() for e in ancient])
    got = wait_for(
        "the late events in stream_late_events",
        lambda: {k: v for k, v in late_events(cur).items() if k > 5_000_000} or None,
        timeout=120,
    )
    assert sorted(got) == [5_000_001, 5_000_002]
    assert {v[:2] for v in got.values()} == {(1, datetime(2026, 1, 1))}
    cur.execute("SELECT COUNT(*) FROM registrations_per_window WHERE window_start < '2026-02-01'")
    assert cur.fetchone()[0] == 0


def test_a_driver_killed_right_after_a_batch_with_late_events_records_each_once(
    stack, env, tmp_path
) -> None:
    """The job SIGKILLs itself right after the MySQL commit of a batch that holds too-late
    events, before Spark records the batch: the restart replays it, and adds nothing."""
    cur = root_conn(stack, env["db"]).cursor()
    load(DAY + timedelta(hours=3), 5, 20, dag="late-kill-warm-up")
    publish.run_publish(topic=env["topic"])
    wait_counts_match(stack, env["db"], env["proc"])
    stop_job(env["proc"])
    log = tmp_path / "dying.log"
    env["proc"] = start_job(stack, env["topic"], env["ck"], log, fault="kill-after-late-commit")
    wait_started(env["proc"], log, 0)
    old = DAY - timedelta(days=9)  # 9 days before the newest event: past the 7-day lateness
    load(old, 10, 40, dag="late-kill")
    publish.run_publish(topic=env["topic"])
    assert env["proc"].wait(timeout=180) == -signal.SIGKILL
    cur.execute("SELECT batch_id, late_events FROM stream_sink_commits")
    killed_batch, late_total = cur.fetchone()  # the batch committed to MySQL, then killed
    assert late_total >= 40
    env["proc"] = start_job(stack, env["topic"], env["ck"], env["log"])
    got = wait_counts_match(stack, env["db"], env["proc"])  # ground truth minus late events
    cur.execute("SELECT customer_id FROM customer WHERE create_date < %s", (naive(DAY),))
    old_customers = {r[0] for r in cur.fetchall()}
    cur.execute(
        "SELECT customer_id, COUNT(*) FROM stream_late_events WHERE create_date < %s "
        "GROUP BY customer_id",
        (naive(old + timedelta(days=1)),),
    )
    recorded = dict(cur.fetchall())
    late_ids = {c for c in old_customers if c in recorded}
    assert len(late_ids) == 40 and set(recorded.values()) == {1}
    assert total_between(got, old, old + timedelta(minutes=10)) == 0

    # the replay: the restarted job ran the killed batch again and found nothing to add
    # (its progress row, written by the killed run with its rows, rewritten with none)
    def replayed() -> bool:
        cur.execute(
            "SELECT input_rows FROM stream_progress WHERE query_name = %s AND batch_id = %s",
            (stream_sink.COUNTS_QUERY, killed_batch),
        )
        return cur.fetchone() == (0,)

    wait_for(f"the restarted job to replay batch {killed_batch}", replayed, timeout=180)
    assert wait_counts_match(stack, env["db"], env["proc"]) == got


def test_sigkill_mid_batch_then_restart_gives_the_same_counts(stack, env) -> None:
    # a small interval first: the job is up and polling when the big one arrives
    load(DAY + timedelta(hours=2), 1, 20, dag="sigkill-warm-up")
    publish.run_publish(topic=env["topic"])
    wait_counts_match(stack, env["db"], env["proc"])
    load(DAY + timedelta(hours=2), 60, 30_000, dag="sigkill")
    publish.run_publish(topic=env["topic"])
    # the job picks the 30,000 up within a trigger (500 ms) and needs seconds to count them
    kill_job(env["proc"])
    env["proc"] = start_job(stack, env["topic"], env["ck"], env["log"])
    got = wait_counts_match(stack, env["db"], env["proc"], timeout=240)
    assert total_between(got, DAY + timedelta(hours=2), DAY + timedelta(hours=3)) == 30_020


def test_old_progress_rows_are_pruned(stack, env) -> None:
    cur = root_conn(stack, env["db"]).cursor()
    cur.executemany(
        "INSERT INTO stream_progress (query_name, batch_id, input_rows, late_rows_dropped, "
        "finished_at) VALUES ('old_query', %s, 10, %s, NOW(6) - INTERVAL %s DAY)",
        [(1, 0, 30), (2, 3, 30), (3, 0, 1)],
    )
    # the job prunes when it starts and hourly: restart it
    kill_job(env["proc"])
    env["proc"] = start_job(stack, env["topic"], env["ck"], env["log"])
    load(DAY + timedelta(hours=5), 5, 20, dag="prune")
    publish.run_publish(topic=env["topic"])
    wait_counts_match(stack, env["db"], env["proc"])

    def kept() -> list | None:
        cur.execute("SELECT batch_id FROM stream_progress WHERE query_name = 'old_query'")
        ids = sorted(r[0] for r in cur.fetchall())
        return ids if ids == [3] else None

    # batches 1 and 2 (30 days old) pruned, batch 3 (1 day) kept; late events have their
    # own table (stream_late_events), never pruned
    wait_for("old progress rows to be pruned", kept, timeout=60)
    assert "pruned 2 stream_progress rows older than 7 days" in env["log"].read_text()


def test_second_instance_refuses_to_start(stack, env, tmp_path) -> None:
    log = tmp_path / "second.log"
    proc = start_job(stack, env["topic"], env["ck"], log, extra=["--lock-timeout", "1"])
    try:
        assert proc.wait(timeout=120) != 0
    finally:
        kill_job(proc)
    assert "another instance holds lock" in log.read_text()
    assert env["proc"].poll() is None


def test_sigterm_stops_cleanly_and_a_restart_resumes_from_the_checkpoint(stack, env) -> None:
    load(DAY + timedelta(hours=6), 5, 50, dag="sigterm")
    publish.run_publish(topic=env["topic"])
    wait_counts_match(stack, env["db"], env["proc"])
    assert stop_job(env["proc"]) == 0
    assert "stopped cleanly (SIGTERM)" in env["log"].read_text()
    env["proc"] = start_job(stack, env["topic"], env["ck"], env["log"])
    load(DAY + timedelta(hours=6, minutes=10), 5, 50, dag="sigterm")
    publish.run_publish(topic=env["topic"])
    got = wait_counts_match(stack, env["db"], env["proc"])
    assert total_between(got, DAY + timedelta(hours=6), DAY + timedelta(hours=6, minutes=15)) == 100
    started = query_ids(env["log"])
    assert len(started) >= 2 and started[-1] == started[-2]  # the same checkpoint


def test_a_new_checkpoint_starts_where_the_sink_stopped(stack, fresh_db, topic, tmp_path) -> None:
    """A job of its own: the checkpoint deleted, the next job starts at the offsets the sink
    committed, and the windows it shares with the old checkpoint's batches add up."""
    window = DAY + timedelta(hours=7)
    ck, log = tmp_path / "checkpoints", ARTIFACTS / f"stream-{topic}.log"
    create_topic(stack, topic)
    procs = [start_job(stack, topic, ck, log)]
    try:
        for i in range(3):  # a batch each
            load(window, 1, 20, dag=f"checkpoint-{i}")
            publish.run_publish(topic=topic)
            wait_counts_match(stack, fresh_db, procs[-1])
        assert stop_job(procs[-1]) == 0
        shutil.rmtree(ck)
        procs.append(start_job(stack, topic, ck, log))
        load(window, 1, 20, dag="checkpoint-new")
        publish.run_publish(topic=topic)
        got = wait_counts_match(stack, fresh_db, procs[-1])
        assert total_between(got, window, window + timedelta(minutes=1)) == 80
        started = query_ids(log)
        assert len(started) == 2 and started[0] != started[1]
        assert f'a new checkpoint would start at {{"{topic}": {{"0": ' in log.read_text()
    finally:
        for proc in procs:
            kill_job(proc)


# ---------------------------------------------------------------- the sink's transaction


def test_counts_without_a_record_of_their_batches_are_refused(stack, fresh_db, topic, tmp_path):
    """Counts an earlier version of the job left (no stream_sink_commits row): adding the
    topic to them again would double them, so the job refuses to start and says why."""
    cur = root_conn(stack, fresh_db).cursor()
    cur.execute(
        "INSERT INTO registrations_per_window (window_start, window_end, store_id, "
        "registrations, stream_count, batch_id) VALUES ('2026-11-20 09:00', "
        "'2026-11-20 09:01', 1, 5, 5, 7)"
    )
    log = tmp_path / "refused.log"
    proc = start_job(stack, topic, tmp_path / "ck", log)
    try:
        assert proc.wait(timeout=120) != 0
    finally:
        kill_job(proc)
    assert "stream_sink_commits has no record of the batches" in log.read_text()


def count_of(cur: Any, window: tuple) -> tuple[int, int]:
    cur.execute(
        "SELECT registrations, stream_count FROM registrations_per_window "
        "WHERE window_start = %s AND window_end = %s AND store_id = %s",
        window,
    )
    return cur.fetchone()


def test_a_corrupted_count_is_rewritten_by_the_next_batch_of_its_window(stack, fresh_db) -> None:
    sink = stream_sink.Sink(
        stream_mysql.mysql_params("AIRFLOW_CONN_MYSQL_STREAM"),  # the stream role
        "t",
        stream_windows.Windows.parse("1 minute"),
        parse_interval("7 days"),
    )
    cur = root_conn(stack, fresh_db).cursor()
    w = (datetime(2026, 11, 20, 9, 0), datetime(2026, 11, 20, 9, 1), 1)

    def batch(batch_id: int, n: int, next_offset: int) -> None:
        result = stream_windows.BatchResult(
            counts={w: n}, rows=Counter(ok=n), next_offsets={0: next_offset}, newest=w[0]
        )
        sink.commit(batch_id, "run-a", sink.state(), result, [], [], time.monotonic())

    try:
        batch(0, 3, 3)
        assert count_of(cur, w) == (3, 3)
        cur.execute("UPDATE registrations_per_window SET registrations = 99")
        batch(1, 2, 5)
        assert count_of(cur, w) == (5, 5)
        cur.execute("SELECT kafka_end_offsets, events_counted FROM stream_sink_commits")
        assert cur.fetchone() == ('{"t": {"0": 5}}', 5)
    finally:
        sink.close()


# ---------------------------------------------------------------- the live view


def put_windows(
    stack, database: str, rows: list[tuple[str, int, int, int]], age_s: int = 0
) -> None:
    """Rows of (window start 'HH:MM[:SS]' on DAY, length s, store, count), as the job writes."""
    cur = root_conn(stack, database).cursor()
    for start, length, store, n in rows:
        ws = datetime.combine(DAY.date(), datetime.strptime(start, "%H:%M:%S").time())
        cur.execute(
            "INSERT INTO registrations_per_window (window_start, window_end, store_id, "
            "registrations, batch_id, last_updated) VALUES (%s, %s, %s, %s, 0, "
            "NOW(6) - INTERVAL %s SECOND)",
            (ws, ws + timedelta(seconds=length), store, n, age_s),
        )


def view(stack, database: str, minutes: int) -> dict[str, Any]:
    conn = role_conn(stack, "reader", database)  # the live view's own role
    try:
        return liveview.counts(conn, minutes)
    finally:
        conn.close()


def table(result: dict[str, Any]) -> list[tuple[str, str, dict[str, int]]]:
    return [
        (w["window_start"][11:19], w["window_end"][11:19], w["stores"]) for w in result["windows"]
    ]


def test_live_view_sums_one_minute_windows_exactly(stack, fresh_db) -> None:
    put_windows(
        stack,
        fresh_db,
        [(f"09:{m:02d}:00", 60, store, m + store) for m in range(10) for store in (1, 2)],
    )
    five = view(stack, fresh_db, 5)
    assert five["rolled_up"] and five["note"] == "each row sums the stream's 1-minute windows"
    assert table(five) == [
        ("09:05:00", "09:10:00", {"1": 40, "2": 45}),
        ("09:00:00", "09:05:00", {"1": 15, "2": 20}),
    ]
    one = view(stack, fresh_db, 1)
    assert one["rolled_up"] and one["note"] == "" and len(one["windows"]) == 10


def test_live_view_with_five_minute_tumbling_windows(stack, fresh_db) -> None:
    put_windows(
        stack, fresh_db, [("09:00:00", 300, 1, 3), ("09:05:00", 300, 1, 4), ("09:10:00", 300, 2, 5)]
    )
    assert table(view(stack, fresh_db, 5)) == [
        ("09:10:00", "09:15:00", {"2": 5}),
        ("09:05:00", "09:10:00", {"1": 4}),
        ("09:00:00", "09:05:00", {"1": 3}),
    ]
    assert table(view(stack, fresh_db, 15)) == [("09:00:00", "09:15:00", {"1": 7, "2": 5})]
    # a minute cannot be cut out of five: the stream's own windows, said so
    one = view(stack, fresh_db, 1)
    assert not one["rolled_up"] and one["window_seconds"] == 300
    assert len(one["windows"]) == 3 and "cannot be made of" in one["note"]


def test_live_view_shows_sliding_windows_as_they_are(stack, fresh_db) -> None:
    # 1-minute windows every 30 s: an event is in two of them, a sum would count it twice
    put_windows(
        stack,
        fresh_db,
        [("09:00:00", 60, 1, 2), ("09:00:30", 60, 1, 3), ("09:01:00", 60, 1, 1)],
    )
    for minutes in (1, 5, 60):
        got = view(stack, fresh_db, minutes)
        assert not got["rolled_up"] and "overlap" in got["note"]
        assert table(got) == [
            ("09:01:00", "09:02:00", {"1": 1}),
            ("09:00:30", "09:01:30", {"1": 3}),
            ("09:00:00", "09:01:00", {"1": 2}),
        ]


def test_live_view_follows_the_streams_current_window_length(stack, fresh_db) -> None:
    put_windows(stack, fresh_db, [("09:00:00", 60, 1, 2), ("09:01:00", 60, 1, 3)], age_s=3600)
    put_windows(stack, fresh_db, [("09:00:00", 300, 1, 5), ("09:05:00", 300, 1, 1)])
    assert table(view(stack, fresh_db, 15)) == [("09:00:00", "09:15:00", {"1": 6})]


def test_live_view_of_an_empty_table(stack, fresh_db) -> None:
    assert view(stack, fresh_db, 5)["windows"] == []


# ---------------------------------------------------------------- standalone cluster


def test_same_job_runs_on_a_standalone_cluster(stack, fresh_db, topic, tmp_path) -> None:
    spark_class = str(stack.venv / "bin" / "spark-class")
    from tests.support.streamjob import spark_env

    env = spark_env(stack)
    env["SPARK_WORKER_DIR"] = str(tmp_path / "work")
    logs = ARTIFACTS / "cluster"
    logs.mkdir(parents=True, exist_ok=True)
    procs: list[subprocess.Popen] = []
    try:
        with open(logs / "master.log", "wb") as out:
            procs.append(
                subprocess.Popen(
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
                    stdout=out,
                    stderr=subprocess.STDOUT,
                    env=env,
                    start_new_session=True,
                )
            )
        with open(logs / "worker.log", "wb") as out:
            procs.append(
                subprocess.Popen(
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
                    stdout=out,
                    stderr=subprocess.STDOUT,
                    env=env,
                    start_new_session=True,
                )
            )
        wait_for(
            "a registered worker",
            lambda: "Registering worker" in (logs / "master.log").read_text(),
            timeout=60,
        )
        load(DAY, 30, 300, dag="cluster")
        publish.run_publish(topic=topic)
        procs.append(
            start_job(
                stack,
                topic,
                tmp_path / "ck",
                logs / "stream_lifecycle.log",
                master="spark://127.0.0.1:7177",
            )
        )
        wait_counts_match(stack, fresh_db, procs[-1], timeout=240)
        assert "app-" in (logs / "master.log").read_text()  # ran as a cluster application
        assert list(Path(env["SPARK_WORKER_DIR"]).glob("app-*/*/stderr"))  # executors ran
    finally:
        for proc in reversed(procs):
            kill_job(proc)
