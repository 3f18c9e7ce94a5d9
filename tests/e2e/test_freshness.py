"""Live for every writer: rows inserted straight into MySQL (no Airflow run triggered by hand)
are published by the long-running publisher and counted; a SIGKILLed publisher is replaced
and loses nothing; the lag alert fires and clears."""

from __future__ import annotations

import os
import signal
import time

import pytest
from regstream.monitoring import read_lag

from stackctl import config
from tests.conftest import role_conn, root_conn, wait_for
from tests.e2e.conftest import counts_match as wait_exact
from tests.e2e.conftest import (
    running_try,
    start_publisher,
    stop_publisher,
    task_runner_pids,
)
from tests.support.streamjob import stream_counts

pytestmark = pytest.mark.e2e

DB = config.DATABASE
# generous for a 2-core machine running the whole suite; `make bench` measures the real figure
DIRECT_INSERT_BOUND_S = 20


def insert_directly(stack, n: int = 1) -> None:
    cur = root_conn(stack, DB).cursor()
    for _ in range(n):
        cur.execute(
            "INSERT INTO customer (store_id, first_name, last_name, email, address_id, active, "
            "create_date) VALUES (2, 'Direct', 'Writer', 'direct@example.org', 1, 1, "
            "UTC_TIMESTAMP())"
        )


def counted(stack) -> int:
    return sum(stream_counts(stack, DB).values())


def test_a_direct_insert_is_counted_within_the_bound(stack, platform) -> None:
    wait_exact(stack, 240)  # the stream runs and has caught up
    before = counted(stack)
    t0 = time.monotonic()
    insert_directly(stack)
    wait_for("the direct insert counted", lambda: counted(stack) == before + 1, 120, 0.1)
    took = time.monotonic() - t0
    print(f"direct insert counted in {took:.1f}s")
    assert took <= DIRECT_INSERT_BOUND_S


# The bound for the local stack: an event committed 1 s after the publisher's SIGKILL
# is counted within 15 s (Airflow retries the task after 1-2 s; the new publisher aborts the
# dead one's open transaction when it registers).
AFTER_PUBLISHER_KILL_S = 15


def test_a_sigkilled_publisher_is_replaced_and_loses_nothing(stack, platform) -> None:
    wait_exact(stack, 240)
    insert_directly(stack, 3)
    (pid,) = wait_for(
        "the publisher task's process", lambda: task_runner_pids(stack, "publish_new_events"), 60
    )
    dead = running_try(platform, "publish_cdc_events", "publish_new_events")
    assert dead is not None
    os.kill(pid, signal.SIGKILL)
    killed = time.monotonic()
    time.sleep(max(0.0, 1.0 - (time.monotonic() - killed)))  # the scenario: commit 1 s later
    before = counted(stack)
    insert_directly(stack)
    t0 = time.monotonic()
    wait_for("the event counted", lambda: counted(stack) >= before + 1, 60, 0.1)
    took = time.monotonic() - t0
    print(f"event committed 1 s after the publisher's SIGKILL counted in {took:.1f}s")
    now = running_try(platform, "publish_cdc_events", "publish_new_events")
    assert now is not None and now != dead, "the killed publisher was not replaced"
    assert pid not in task_runner_pids(stack, "publish_new_events")
    wait_exact(stack, 240)
    assert took <= AFTER_PUBLISHER_KILL_S


def test_the_lag_alert_fires_when_publishing_stops_and_clears(stack, platform) -> None:
    wait_exact(stack, 240)
    conf = {"max_publish_delay_s": 5, "max_stream_delay_s": 60}
    stop_publisher(stack, platform)
    try:
        insert_directly(stack)
        reader = role_conn(stack, "reader", DB)
        wait_for(
            "the unpublished event to be older than the bound",
            lambda: read_lag(reader, config.TOPIC).publish_delay_s > 5,
            60,
            0.5,
        )
        run = platform.trigger("monitor_pipeline_lag", None, conf)
        assert platform.wait_run("monitor_pipeline_lag", run) == "failed"
        text = platform.log("monitor_pipeline_lag", run, "check_pipeline_lag")
        assert "publisher behind" in text and "1 events waiting" in text
    finally:
        start_publisher(platform)
    wait_exact(stack, 240)
    run = platform.trigger("monitor_pipeline_lag", None, conf)
    assert platform.wait_run("monitor_pipeline_lag", run) == "success"
