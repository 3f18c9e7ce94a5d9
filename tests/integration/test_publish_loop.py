"""The long-running publisher (regstream.publish_loop) in its own process against real MariaDB
and Kafka: SIGKILLed at the acknowledgement and between transactions, Kafka and MariaDB killed
under it, a zombie beside it. After each: every committed id in the topic exactly once."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime, timedelta
from pathlib import Path

import pytest
from regstream.kafka_io import state_topic

from stackctl import services, supervisor
from tests.conftest import event_ids_in_topic, role_conn, root_conn, topic_messages, wait_for

pytestmark = pytest.mark.integration


class LoopProcess:
    """`python -m regstream.publish --loop` with the test's connections and topic."""

    def __init__(self, log: Path, **env: str) -> None:
        self.log = log
        out = log.open("ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "regstream.publish", "--loop"],
            env={**os.environ, "REGSTREAM_PUBLISH_SUMMARY_S": "2", **env},
            stdout=out,
            stderr=subprocess.STDOUT,
        )
        out.close()

    def text(self) -> str:
        return self.log.read_text()

    def alive(self) -> bool:
        return self.proc.poll() is None

    def kill(self) -> None:
        if self.alive():
            self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(30)


@contextmanager
def loop(tmp_path: Path, name: str = "loop", **env: str) -> Iterator[LoopProcess]:
    p = LoopProcess(tmp_path / f"{name}.log", **env)
    try:
        yield p
    finally:
        p.kill()


class Writer:
    def __init__(self, stack, database: str) -> None:
        self.cur = role_conn(stack, "ingest", database).cursor()
        self.n = 0

    def insert(self, rows: int, one_transaction: bool = False) -> None:
        """`rows` commits, or one commit of `rows` rows."""
        if one_transaction:
            self.cur.execute("START TRANSACTION")
        for _ in range(rows):
            self.n += 1
            when = datetime(2026, 11, 20) + timedelta(seconds=self.n)
            self.cur.execute(
                "INSERT INTO customer (store_id, first_name, last_name, email, address_id, "
                "create_date) VALUES (%s, 'LOOP', 'WRITER', 'l@example.org', 1, %s)",
                (1 + self.n % 2, when),
            )
        if one_transaction:
            self.cur.execute("COMMIT")


def table_ids(stack, database: str) -> set[int]:
    cur = root_conn(stack, database).cursor()
    cur.execute("SELECT event_id FROM users_change_events")
    return {r[0] for r in cur.fetchall()}


def exactly_once(stack, database: str, topic: str, timeout: float = 60) -> Counter:
    """Wait until every committed id is in the topic; then each must be there once."""
    wait_for(
        "every committed id in the topic",
        lambda: table_ids(stack, database) <= set(event_ids_in_topic(stack, topic)),
        timeout,
        0.3,
    )
    seen = Counter(event_ids_in_topic(stack, topic))
    assert set(seen) == table_ids(stack, database)
    assert max(seen.values()) == 1, [i for i, n in seen.items() if n > 1][:10]
    return seen


def state_records(stack, topic: str) -> int:
    return len(topic_messages(stack, state_topic(topic)))


def test_rows_are_published_while_it_runs_and_idle_sends_nothing(
    stack, fresh_db, topic, tmp_path
) -> None:
    w = Writer(stack, fresh_db)
    with loop(tmp_path) as p:
        w.insert(5)
        exactly_once(stack, fresh_db, topic)
        for _ in range(3):  # three more commits, each published on its own
            w.insert(1)
            exactly_once(stack, fresh_db, topic)
        records = state_records(stack, topic)
        idle_lines = p.text().count(": idle,")
        # two more summary periods (2 s each here) with nothing written
        wait_for("two idle summary lines", lambda: p.text().count(": idle,") >= idle_lines + 2,
                 30, 0.2)  # fmt: skip
        assert state_records(stack, topic) == records, "an idle publisher wrote to Kafka"
        assert p.alive()
    text = p.text()
    assert "leading: holding lock" in text and "published" in text
    assert "ERROR" not in text


def test_a_catch_up_is_many_bounded_transactions(stack, fresh_db, topic, tmp_path) -> None:
    Writer(stack, fresh_db).insert(3000)
    with loop(tmp_path, REGSTREAM_PUBLISH_TXN_MAX_EVENTS="500"):
        exactly_once(stack, fresh_db, topic)
    assert state_records(stack, topic) >= 6  # one watermark record per transaction


def test_sigkill_at_the_acknowledgement_then_a_new_loop_publishes_once(
    stack, fresh_db, topic, tmp_path
) -> None:
    w = Writer(stack, fresh_db)
    w.insert(10)
    with loop(tmp_path, "dying", REGSTREAM_PUBLISH_FAULT="kill-at-ack:2") as p:
        exactly_once(stack, fresh_db, topic)  # the first transaction commits
        w.insert(10, one_transaction=True)  # the second: killed at its acknowledgement
        p.proc.wait(60)
        assert p.proc.returncode == -signal.SIGKILL, p.text()[-2000:]
    assert len(set(event_ids_in_topic(stack, topic))) == 10  # the open one is invisible
    assert len(topic_messages(stack, topic, committed_only=False)) == 20
    w.insert(1)  # committed after the kill
    t0 = time.monotonic()
    with loop(tmp_path, "next"):
        exactly_once(stack, fresh_db, topic)
    print(f"restarted loop published the 11 rows left in {time.monotonic() - t0:.1f}s")


def test_sigkill_between_transactions_then_a_new_loop_publishes_once(
    stack, fresh_db, topic, tmp_path
) -> None:
    w = Writer(stack, fresh_db)
    with loop(tmp_path, "first") as p:
        w.insert(10)
        exactly_once(stack, fresh_db, topic)
        p.kill()
    w.insert(10)
    with loop(tmp_path, "second"):
        exactly_once(stack, fresh_db, topic)


def test_kafka_down_under_it_is_ridden_out_in_the_same_process(
    stack, fresh_db, topic, tmp_path
) -> None:
    w = Writer(stack, fresh_db)
    with loop(tmp_path) as p:
        w.insert(10)
        exactly_once(stack, fresh_db, topic)
        services.stop_program(stack, "kafka")
        try:
            w.insert(10)
            wait_for("a logged retry", lambda: "publish failed" in p.text(), 120, 0.5)
        finally:
            services.start_kafka(stack)
        exactly_once(stack, fresh_db, topic, timeout=120)
        assert p.alive()
        wait_for("the recovery line", lambda: "publishing again after" in p.text(), 30, 0.2)


def test_mariadb_killed_under_it_is_ridden_out_in_the_same_process(
    stack, fresh_db, topic, tmp_path
) -> None:
    w = Writer(stack, fresh_db)
    with loop(tmp_path) as p:
        w.insert(10)
        exactly_once(stack, fresh_db, topic)
        old = services.kill_program(stack, "mariadb", signal.SIGKILL)
        wait_for(
            "MariaDB back under a new pid",
            lambda: supervisor.pid_of(stack, "mariadb") not in (None, old),
            60,
            0.2,
        )
        wait_for("MariaDB to answer", lambda: services.mysql_ready(stack), 60, 0.2)
        w = Writer(stack, fresh_db)
        w.n = 100
        w.insert(10)
        exactly_once(stack, fresh_db, topic, timeout=120)
        assert p.alive()


def test_a_second_publisher_stands_by_until_the_first_is_gone(
    stack, fresh_db, topic, tmp_path
) -> None:
    """A zombie (a try Airflow thinks dead) and its replacement side by side: the one holding
    the topic's MySQL lock publishes, the other stands by without registering (so neither
    fences the other), and takes over when the first dies. Nothing lost, nothing doubled."""
    w = Writer(stack, fresh_db)
    with loop(tmp_path, "zombie") as zombie:
        w.insert(10)
        exactly_once(stack, fresh_db, topic)
        with loop(tmp_path, "new") as new:
            wait_for("the standby line", lambda: "standby: MySQL connection" in new.text(), 30)
            for _ in range(3):
                w.insert(10)
                exactly_once(stack, fresh_db, topic)
            assert "leading" not in new.text()
            zombie.kill()
            w.insert(10)
            exactly_once(stack, fresh_db, topic)
            assert "leading: holding lock" in new.text() and new.alive()
