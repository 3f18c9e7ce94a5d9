"""The analysts' read API, the live view's CSV and the analysts' SQL views on the real MariaDB:
the notebook's numbers are the live view's, the views' sums are the API's, and a download
too wide for the row cap is refused with a message that says how to narrow it."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

import pytest
from fastapi import HTTPException
from regstream import analytics, liveview

from tests.conftest import role_conn, root_conn

pytestmark = pytest.mark.integration


def put_windows(stack: Any, database: str, rows: list[tuple[datetime, int, int, int]]) -> None:
    """(window_start, length_s, store, registrations) rows, as the stream's sink writes them."""
    cur = root_conn(stack, database).cursor()
    for ws, length, store, n in rows:
        cur.execute(
            "INSERT INTO registrations_per_window (window_start, window_end, store_id, "
            "registrations, batch_id, last_updated) VALUES (%s, %s, %s, %s, 0, NOW(6))",
            (ws, ws + timedelta(seconds=length), store, n),
        )


def db_now(stack: Any, database: str) -> datetime:
    cur = root_conn(stack, database).cursor()
    cur.execute("SELECT UTC_TIMESTAMP()")
    return cur.fetchone()[0]


T0 = datetime(2026, 11, 30, 9, 0)
MINUTES = [(T0 + timedelta(minutes=m), 60, store, m + store) for m in range(30) for store in (1, 2)]


def test_the_notebooks_numbers_are_the_live_views(stack, fresh_db) -> None:
    put_windows(stack, fresh_db, MINUTES)
    conn = role_conn(stack, "reader", fresh_db)
    try:
        df = analytics.counts(T0, T0 + timedelta(hours=1), "15 minutes", conn=conn)
        page = liveview.counts(conn, 15)
    finally:
        conn.close()
    assert (
        df.attrs["rolled_up"] and df.attrs["note"] == "each row sums the stream's 1-minute windows"
    )
    table = analytics.table(df)
    assert [
        (r.window_start.isoformat().replace("+00:00", "Z"), r._3, r._4, r.total)
        for r in table.itertuples()
    ] == [
        (w["window_start"], w["stores"]["1"], w["stores"]["2"], w["total"])
        for w in reversed(page["windows"])
    ]
    assert table["store 1"].tolist() == [sum(m + 1 for m in range(15)), sum(range(16, 31))]


def test_the_range_is_half_open(stack, fresh_db) -> None:
    put_windows(stack, fresh_db, MINUTES)
    conn = role_conn(stack, "reader", fresh_db)
    try:
        df = analytics.counts("2026-11-30T09:10:00Z", "2026-11-30T09:12:00Z", 1, conn=conn)
    finally:
        conn.close()
    assert df["window_start"].dt.strftime("%H:%M").unique().tolist() == ["09:10", "09:11"]


def test_the_analysts_views_sum_as_the_api_does(stack, fresh_db) -> None:
    put_windows(stack, fresh_db, MINUTES)
    conn = role_conn(stack, "analyst", fresh_db)
    cur = conn.cursor()
    cur.execute(
        "SELECT window_start, store_id, registrations, stream_window_seconds "
        "FROM analyst_registrations_15_minutes ORDER BY window_start, store_id"
    )
    got = cur.fetchall()
    conn.close()
    reader = role_conn(stack, "reader", fresh_db)
    try:
        df = analytics.counts(None, None, "15 minutes", conn=reader)
    finally:
        reader.close()
    assert [(ws, s, int(n)) for ws, s, n, _ in got] == [
        (r.window_start.tz_localize(None).to_pydatetime(), r.store_id, r.registrations)
        for r in df.itertuples()
    ]
    assert {length for *_, length in got} == {60}


def test_the_analysts_account_has_a_statement_time_limit(stack, fresh_db) -> None:
    cur = root_conn(stack, fresh_db).cursor()
    cur.execute("SELECT host, max_statement_time FROM mysql.user WHERE user = 'reg_analyst'")
    assert [(h, float(t)) for h, t in cur.fetchall()] == [("127.0.0.1", 30.0)]
    conn = role_conn(stack, "analyst", fresh_db)  # stackctl's password replaced the throwaway
    sess = conn.cursor()
    sess.execute("SELECT @@max_statement_time")
    assert float(sess.fetchone()[0]) == 30.0
    conn.close()


def test_a_csv_past_the_row_cap_is_refused_with_how_to_narrow_it(
    stack, fresh_db, monkeypatch
) -> None:
    start = db_now(stack, fresh_db).replace(second=0, microsecond=0) - timedelta(minutes=20)
    put_windows(stack, fresh_db, [(start + timedelta(minutes=m), 60, 1, 1) for m in range(10)])
    monkeypatch.setenv("REGSTREAM_CSV_MAX_ROWS", "9")
    with pytest.raises(HTTPException) as refused:
        liveview.api_counts_csv(window=1, hours=1)
    assert refused.value.status_code == 413
    assert "10 windows" in refused.value.detail
    assert "shorter range or a longer window" in refused.value.detail
    monkeypatch.setenv("REGSTREAM_CSV_MAX_ROWS", "10")
    body = liveview.api_counts_csv(window=1, hours=1).body.decode()
    lines = body.splitlines()
    assert lines[0] == "window_start_utc,window_end_utc,store_1,total"
    assert len(lines) == 11 and lines[1].endswith("Z,1,1")
    # five-minute windows of the same range fit
    monkeypatch.setenv("REGSTREAM_CSV_MAX_ROWS", "9")
    assert liveview.api_counts_csv(window=5, hours=1).status_code == 200
