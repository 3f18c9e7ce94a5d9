"""The streaming job rides out a MariaDB restart: MariaDB SIGKILLed while a batch's MySQL
transaction is open (supervisord brings it back within seconds), the same driver reconnects,
takes its lock again, runs the batch again and counts on; the counts equal the SQL ground
truth. And if another instance took the lock meanwhile, the job stops: never two writers.

Each test runs its own job with REGSTREAM_FAULT=pause-before-commit: the first batch with
events stops inside its transaction, just before the COMMIT, until the test has killed
MariaDB (lifecycle.inject_fault), so the kill lands mid-batch every time.
"""

from __future__ import annotations

import signal
import subprocess
import time
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import MySQLdb
import pytest
from regstream import db, ingest, publish

from stackctl import services, supervisor
from tests.conftest import ARTIFACTS, root_conn, wait_for
from tests.support.streamjob import (
    create_topic,
    driver_pid,
    kill_job,
    query_ids,
    start_job,
    wait_counts_match,
    wait_started,
)

pytestmark = pytest.mark.integration

DAY = datetime(2026, 11, 21, 9, 0, tzinfo=timezone.utc)
# the test's promise: counting resumes this soon after MariaDB accepts connections again
RESUME_WITHIN_S = 10.0


def load(start: datetime, minutes: int, n: int, dag: str) -> None:
    conn = db.connect("mysql_ingest", autocommit=False)
    try:
        ingest.run_ingest(conn, dag, start, start + timedelta(minutes=minutes), n)
    finally:
        conn.close()


def accepting(stack) -> bool:
    """MariaDB answers a query on a new connection (as the job's reconnect makes one)."""
    try:
        conn = root_conn(stack)
    except MySQLdb.Error:
        return False
    try:
        cur = conn.cursor()
        cur.execute("SELECT 1")
        return cur.fetchone() == (1,)
    except MySQLdb.Error:
        return False
    finally:
        conn.close()


def restart_mariadb(stack, resume: Path | None = None) -> float:
    """SIGKILL MariaDB (and at once let the paused batch go on, if `resume`: its COMMIT meets
    a dead server); once supervisord has it back and it accepts connections, the monotonic
    time of that moment."""
    old = services.kill_program(stack, "mariadb", signal.SIGKILL)
    if resume is not None:
        resume.touch()
    wait_for(
        "mariadb restarted under a new pid",
        lambda: (p := supervisor.pid_of(stack, "mariadb")) and p != old,
        60,
        0.05,
    )
    wait_for("mariadb to accept connections", lambda: accepting(stack), 120, 0.05)
    return time.monotonic()


@pytest.fixture
def paused_job(
    stack, fresh_db, topic, tmp_path, monkeypatch
) -> Iterator[tuple[subprocess.Popen, Path, Path]]:
    """The job, started with a pause before the MySQL commit of its first batch with events;
    killed at the end whatever happened. (job, its log, the fault folder)."""
    faults = tmp_path / "faults"
    faults.mkdir()
    monkeypatch.setenv("REGSTREAM_FAULT_DIR", str(faults))
    log = ARTIFACTS / f"stream-db-restart-{topic}.log"
    create_topic(stack, topic)
    proc = start_job(stack, topic, tmp_path / "ck", log, fault="pause-before-commit")
    try:
        wait_started(proc, log, 0)
        yield proc, log, faults
    finally:
        kill_job(proc)


def paused_batch(proc: subprocess.Popen, faults: Path) -> int:
    def paused() -> Any:
        if proc.poll() is not None:
            raise AssertionError(f"the streaming job exited with {proc.returncode}")
        return (faults / "paused").exists()

    wait_for("a batch paused before its MySQL commit", paused, 120, 0.05)
    return int((faults / "paused").read_text())


def test_the_job_rides_out_a_mariadb_restart_mid_batch(stack, fresh_db, topic, paused_job):
    proc, log, faults = paused_job
    driver = driver_pid(proc)
    load(DAY, 10, 200, dag="db-restart")
    publish.run_publish(topic=topic)
    batch = paused_batch(proc, faults)
    back = restart_mariadb(stack, resume=faults / "resume")
    got = wait_counts_match(stack, fresh_db, proc, timeout=60)
    resumed_s = time.monotonic() - back
    assert resumed_s <= RESUME_WITHIN_S, f"counting resumed {resumed_s:.1f} s after MariaDB"
    assert sum(got.values()) == 200
    # the same driver, the same query run: no restart, no task retry
    assert proc.poll() is None and driver_pid(proc) == driver
    assert len(query_ids(log)) == 1
    text = log.read_text()
    assert f"batch {batch}: MySQL connection lost" in text
    assert f"batch {batch}: MySQL reachable again" in text
    assert "took the job's MySQL lock" in text
    assert "query stopped without being asked to" not in text
    # it counts on, and holds its lock again
    load(DAY + timedelta(minutes=30), 5, 40, dag="db-restart-after")
    publish.run_publish(topic=topic)
    got = wait_counts_match(stack, fresh_db, proc, timeout=60)
    assert sum(got.values()) == 240
    cur = root_conn(stack, fresh_db).cursor()
    cur.execute("SELECT IS_USED_LOCK(%s) IS NOT NULL", (f"regstream_stream:{fresh_db}",))
    assert cur.fetchone() == (1,)


def test_a_job_whose_lock_was_taken_during_the_restart_stops(
    stack, fresh_db, topic, paused_job
) -> None:
    """Another instance got the lock while MariaDB was down: the job must not write."""
    proc, log, faults = paused_job
    load(DAY + timedelta(hours=1), 5, 30, dag="db-restart-lock")
    publish.run_publish(topic=topic)
    paused_batch(proc, faults)
    restart_mariadb(stack)
    other = root_conn(stack, fresh_db)  # the other instance
    try:
        cur = other.cursor()
        cur.execute("SELECT GET_LOCK(%s, 0)", (f"regstream_stream:{fresh_db}",))
        assert cur.fetchone() == (1,)
        (faults / "resume").touch()
        assert proc.wait(timeout=120) != 0
        assert "another instance took lock" in log.read_text()
        cur.execute("SELECT COUNT(*) FROM registrations_per_window")
        assert cur.fetchone() == (0,)  # the paused batch's transaction died with the server
        cur.execute("SELECT COUNT(*) FROM stream_sink_commits")
        assert cur.fetchone() == (0,)
    finally:
        other.close()
