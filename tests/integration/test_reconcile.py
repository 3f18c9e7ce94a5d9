"""Reconciliation against a real MariaDB: window alignment in SQL, too-late events subtracted,
mismatches reported and stored, fresh and out-of-bound windows left alone, least privilege.

Rows are written as the platform writes them (customers through the CDC trigger, counts and
too-late events as the stream's sink would), through root, into a fresh database."""

from __future__ import annotations

import itertools
from datetime import datetime, timedelta

import MySQLdb
import pytest
from regstream.reconcile import ReconciliationMismatch, run_from_settings

from tests.conftest import role_conn

pytestmark = pytest.mark.integration

_event_ids = itertools.count(1_000_000)


def utc_now(cur) -> datetime:
    cur.execute("SELECT UTC_TIMESTAMP()")
    return cur.fetchone()[0]


def add_customers(cur, store: int, create_date: datetime, n: int = 1) -> None:
    for _ in range(n):
        cur.execute(
            "INSERT INTO customer (store_id, first_name, last_name, email, address_id, active, "
            "create_date) VALUES (%s, 'Rec', 'Oncile', 'rec@example.org', 1, 1, %s)",
            (store, create_date),
        )


def settle_captures(cur) -> None:
    """As if every change event had been captured an hour ago (past the settle time)."""
    cur.execute("UPDATE users_change_events SET captured_at = captured_at - INTERVAL 1 HOUR")


def set_count(cur, window_start: datetime, store: int, n: int, length_s: int = 60) -> None:
    cur.execute(
        "INSERT INTO registrations_per_window (window_start, window_end, store_id, "
        "registrations, batch_id) VALUES (%s, %s, %s, %s, 1) "
        "ON DUPLICATE KEY UPDATE registrations = VALUES(registrations)",
        (window_start, window_start + timedelta(seconds=length_s), store, n),
    )


def add_late_event(cur, store: int, create_date: datetime) -> None:
    cur.execute(
        "INSERT INTO stream_late_events (event_id, store_id, create_date, event_watermark, "
        "reason, topic, kafka_partition, kafka_offset, batch_id) VALUES "
        "(%s, %s, %s, %s, 'older than the watermark', 't', 0, 0, 1)",
        (next(_event_ids), store, create_date, create_date + timedelta(days=1)),
    )


@pytest.fixture
def day_ago(cur) -> datetime:
    """A whole minute one day ago: windows well inside the lateness and settled."""
    return utc_now(cur).replace(second=0) - timedelta(days=1)


def test_counts_equal_to_source_minus_late_events_match(cur, day_ago) -> None:
    add_customers(cur, 1, day_ago + timedelta(seconds=5), 3)
    add_customers(cur, 2, day_ago + timedelta(seconds=59), 2)
    add_late_event(cur, 2, day_ago + timedelta(seconds=59))  # one of store 2's came too late
    # a customer on a window boundary belongs to the window it starts
    add_customers(cur, 1, day_ago + timedelta(minutes=1))
    settle_captures(cur)
    set_count(cur, day_ago, 1, 3)
    set_count(cur, day_ago, 2, 1)
    set_count(cur, day_ago + timedelta(minutes=1), 1, 1)

    result = run_from_settings(None, "manual__match")

    assert result.mismatches == [] and result.matched == 3
    cur.execute(
        "SELECT windows_checked, windows_matched, source_events, late_events, counted, "
        "window_seconds, airflow_run_id FROM stream_reconciliation_runs"
    )
    assert cur.fetchall() == ((3, 3, 6, 1, 5, 60, "manual__match"),)


def test_a_wrong_count_is_reported_with_its_window_and_difference(cur, day_ago) -> None:
    add_customers(cur, 1, day_ago + timedelta(seconds=30), 4)
    add_customers(cur, 2, day_ago + timedelta(minutes=3), 2)  # the stream has no row for it
    settle_captures(cur)
    set_count(cur, day_ago, 1, 9)

    with pytest.raises(ReconciliationMismatch) as caught:
        run_from_settings(None, "manual__corrupt")

    text = str(caught.value)
    start = day_ago.strftime("%Y-%m-%d %H:%M:%S")
    assert "2 of 2 windows differ" in text
    assert f"window {start}-{day_ago + timedelta(minutes=1):%H:%M:%S} store 1: counted 9" in text
    assert "difference +5" in text and "counted no row, expected 2" in text
    cur.execute(
        "SELECT window_start, store_id, source_count, late_count, expected, counted, difference "
        "FROM stream_reconciliation_mismatches ORDER BY window_start"
    )
    assert cur.fetchall() == (
        (day_ago, 1, 4, 0, 4, 9, 5),
        (day_ago + timedelta(minutes=3), 2, 2, 0, 2, None, -2),
    )
    cur.execute("SELECT windows_checked, windows_matched FROM stream_reconciliation_runs")
    assert cur.fetchall() == ((2, 0),)


def test_a_count_for_events_that_were_only_late_is_a_mismatch(cur, day_ago) -> None:
    add_customers(cur, 1, day_ago, 2)
    add_late_event(cur, 1, day_ago)
    add_late_event(cur, 1, day_ago)
    settle_captures(cur)
    set_count(cur, day_ago, 1, 2)  # counted although recorded as too late: counted twice

    with pytest.raises(ReconciliationMismatch, match=r"expected 0 \(source 2 - too late 2\)"):
        run_from_settings(None, None)


def test_fresh_and_out_of_bound_windows_are_left_alone(cur, day_ago) -> None:
    now = utc_now(cur)
    add_customers(cur, 1, day_ago)  # backfilled just now: captured within the settle time
    add_customers(cur, 1, now - timedelta(days=8))  # beyond the lateness: never counted
    add_customers(cur, 2, now)  # the current window, still open

    fresh = run_from_settings(120, None)
    assert fresh.checks == [] and fresh.skipped_fresh == 1

    with pytest.raises(ReconciliationMismatch, match="1 of 1 windows differ"):
        run_from_settings(0, None)  # settled on demand: now it is checked, and not counted


def test_sliding_or_other_length_windows_are_not_compared(cur, day_ago) -> None:
    add_customers(cur, 1, day_ago, 2)
    settle_captures(cur)
    set_count(cur, day_ago, 1, 2)
    set_count(cur, day_ago, 1, 7, length_s=300)  # an older run's 5-minute windows
    set_count(cur, day_ago + timedelta(seconds=30), 1, 7)  # a sliding window, not aligned

    assert run_from_settings(None, None).matched == 1


def test_the_reconcile_role_reads_no_customer_names(stack, fresh_db) -> None:
    conn = role_conn(stack, "reconcile", fresh_db)
    cur = conn.cursor()
    cur.execute("SELECT customer_id, store_id, create_date FROM customer LIMIT 1")
    for sql in (
        "SELECT first_name FROM customer",
        "SELECT email FROM users_change_events",
        "UPDATE registrations_per_window SET registrations = 0",
        "DELETE FROM stream_reconciliation_runs",
    ):
        with pytest.raises(MySQLdb.OperationalError, match="denied"):
            cur.execute(sql)
    conn.close()
