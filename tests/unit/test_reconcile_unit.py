"""Reconciliation's pure parts: intervals, window alignment, which windows are checked, what a
mismatch says. The SQL runs against MariaDB in tests/integration/test_reconcile.py."""

from __future__ import annotations

from datetime import datetime

import pytest
from regstream.intervals import interval_seconds
from regstream.reconcile import (
    Bounds,
    Result,
    WindowCheck,
    bounds,
    ceil_window,
    floor_window,
    queries,
)


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("1 minute", 60),
        ("7 days", 604800),
        ("30 seconds", 30),
        ("1 hour 30 minutes", 5400),
        ("90 s", 90),
        ("2 weeks", 1209600),
    ],
)
def test_spark_intervals_in_seconds(text: str, seconds: int) -> None:
    assert interval_seconds(text) == seconds


@pytest.mark.parametrize("text", ["", "minute", "5 fortnights", "1 minute and then"])
def test_unreadable_intervals_say_so(text: str) -> None:
    with pytest.raises(ValueError, match="interval"):
        interval_seconds(text)


def test_windows_align_to_the_epoch_like_spark() -> None:
    ts = datetime(2026, 11, 24, 10, 7, 42, 500000)
    assert floor_window(ts, 60) == datetime(2026, 11, 24, 10, 7)
    assert floor_window(ts, 300) == datetime(2026, 11, 24, 10, 5)
    assert floor_window(ts, 86400) == datetime(2026, 11, 24)
    # 7-minute windows: aligned to 1970-01-01 00:00, not to the hour
    assert (floor_window(ts, 420) - datetime(1970, 1, 1)).total_seconds() % 420 == 0
    assert floor_window(ts, 420) == datetime(2026, 11, 24, 10, 5)  # 10:00 is not aligned
    assert ceil_window(datetime(2026, 11, 24, 10, 5), 300) == datetime(2026, 11, 24, 10, 5)
    assert ceil_window(ts, 300) == datetime(2026, 11, 24, 10, 10)


def test_bounds_keep_whole_windows_inside_lateness_and_settle() -> None:
    now = datetime(2026, 11, 24, 10, 7, 42)
    b = bounds(now, window_s=60, lateness_s=7 * 86400, settle_s=120)
    assert b.start == datetime(2026, 11, 17, 10, 8)  # first whole window inside the lateness
    assert b.end == datetime(2026, 11, 24, 10, 5)  # last window ended before now - 120 s
    assert b.settled_before == datetime(2026, 11, 24, 10, 5, 42)
    tight = bounds(now, window_s=3600, lateness_s=3600, settle_s=0)
    assert tight.start == tight.end == datetime(2026, 11, 24, 10)  # nothing to check


def test_a_mismatch_says_window_store_and_difference() -> None:
    over = WindowCheck(datetime(2026, 11, 24, 10, 5), datetime(2026, 11, 24, 10, 6), 2, 8, 1, 12)
    assert over.expected == 7 and over.difference == 5
    assert over.describe() == (
        "window 2026-11-24 10:05:00-10:06:00 store 2: counted 12, expected 7 "
        "(source 8 - too late 1), difference +5"
    )
    missing = WindowCheck(over.window_start, over.window_end, 1, 3, 0, None)
    assert missing.difference == -3 and "counted no row" in missing.describe()
    all_late = WindowCheck(over.window_start, over.window_end, 1, 2, 2, None)
    assert all_late.difference == 0
    b = Bounds(60, over.window_start, over.window_end, over.window_end)
    result = Result(b, [over, missing, all_late])
    assert result.matched == 1 and result.mismatches == [over, missing]
    assert "3 (window, store) pairs" in result.summary() and "2 differ" in result.summary()


def test_every_query_is_named_and_has_no_comment_lines() -> None:
    q = queries()
    assert set(q) == {
        "now",
        "source_windows",
        "sink_windows",
        "insert_run",
        "insert_mismatch",
        "latest_run",
        "run_mismatches",
    }
    assert all("--" not in body and body and not body.endswith(";") for body in q.values())


def test_an_undefined_second_side_connection_is_the_same_role_on_one_database(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from regstream.connections import (
        MYSQL_READER_SOURCE_CONN_ID,
        MYSQL_RECONCILE_CONN_ID,
        MYSQL_RECONCILE_SINK_CONN_ID,
        resolve,
    )

    monkeypatch.delenv("AIRFLOW_CONN_MYSQL_RECONCILE_SINK", raising=False)
    monkeypatch.delenv("AIRFLOW_CONN_MYSQL_READER_SOURCE", raising=False)
    assert resolve(MYSQL_RECONCILE_SINK_CONN_ID) == MYSQL_RECONCILE_CONN_ID
    assert resolve(MYSQL_READER_SOURCE_CONN_ID) == "mysql_reader"
    monkeypatch.setenv(
        "AIRFLOW_CONN_MYSQL_RECONCILE_SINK", '{"conn_type": "mysql", "host": "sink.example"}'
    )
    assert resolve(MYSQL_RECONCILE_SINK_CONN_ID) == MYSQL_RECONCILE_SINK_CONN_ID
    assert resolve("mysql_ingest") == "mysql_ingest"  # a first-side id is never replaced
