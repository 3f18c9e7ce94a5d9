"""Lag as the live view and the alert define it, against a real MariaDB: an idle pipeline, and a
watermark write that only settles id gaps, are not late; a published event the stream has not
taken is. Read through the reader role, as the API server and the lag monitor read it."""

from __future__ import annotations

import pytest
from regstream.monitoring import health_cards, read_lag

from stackctl import config
from tests.conftest import role_conn

pytestmark = pytest.mark.integration

PIPELINE = config.TOPIC


def capture(cur, seconds_ago: float) -> int:
    """A registration captured `seconds_ago`; its event id."""
    cur.execute(
        "INSERT INTO customer (store_id, first_name, last_name, email, address_id, active, "
        "create_date) VALUES (1, 'Lag', 'Test', 'lag@example.org', 1, 1, UTC_TIMESTAMP())"
    )
    cur.execute(
        "UPDATE users_change_events SET captured_at = UTC_TIMESTAMP(6) - INTERVAL %s SECOND "
        "WHERE event_id = LAST_INSERT_ID()",
        (seconds_ago,),
    )
    cur.execute("SELECT MAX(event_id) FROM users_change_events")
    return int(cur.fetchone()[0])


def publish_up_to(cur, event_id: int, gaps: str = "[]") -> None:
    cur.execute(
        "INSERT INTO latest_cdc_timestamp (pipeline, last_event_id, pending_gaps) "
        "VALUES (%s, %s, %s) ON DUPLICATE KEY UPDATE last_event_id = VALUES(last_event_id), "
        "pending_gaps = VALUES(pending_gaps), updated_at = UTC_TIMESTAMP(6)",
        (PIPELINE, event_id, gaps),
    )


def batch_finished(cur, batch_id: int, seconds_ago: float, rows: int = 1) -> None:
    cur.execute(
        "INSERT INTO stream_progress (query_name, batch_id, input_rows, finished_at) "
        "VALUES ('registration_counts', %s, %s, UTC_TIMESTAMP(6) - INTERVAL %s SECOND)",
        (batch_id, rows, seconds_ago),
    )


@pytest.fixture
def lag(stack, fresh_db):
    reader = role_conn(stack, "reader", fresh_db)
    yield lambda: read_lag(reader, PIPELINE)
    reader.close()


def test_an_idle_pipeline_and_a_gap_only_watermark_write_are_not_late(cur, lag) -> None:
    first = capture(cur, 600)
    publish_up_to(cur, first)
    batch_finished(cur, 1, 590)
    idle = lag()
    assert idle.publish_delay_s == 0 and idle.stream_delay_s == 0
    # ten minutes later the publisher settles a gap (no new event): the watermark row is
    # rewritten now, long after the last batch; nothing waits for the stream
    publish_up_to(cur, first, f'[{{"from": {first - 1}, "to": {first - 1}, "trx": ["7"]}}]')
    after_gap = lag()
    assert after_gap.stream_delay_s == 0
    assert after_gap.late(60, 60) == []


def test_a_published_event_no_batch_took_is_stream_lag(cur, lag) -> None:
    first = capture(cur, 600)
    batch_finished(cur, 1, 590)
    waiting = capture(cur, 90)
    publish_up_to(cur, waiting)
    late = lag()
    assert 85 < late.stream_delay_s < 120
    assert any("stream behind" in p for p in late.late(60, 60))
    batch_finished(cur, 2, 1)
    assert lag().stream_delay_s == 0
    assert first < waiting


def test_an_unpublished_event_is_publish_lag_not_stream_lag(cur, lag) -> None:
    first = capture(cur, 600)
    publish_up_to(cur, first)
    batch_finished(cur, 1, 590)
    capture(cur, 75)
    got = lag()
    assert got.backlog_events == 1 and 70 < got.publish_delay_s < 110
    assert got.stream_delay_s == 0
    cards = {
        c.key: c
        for c in health_cards(got, None, None, {"late": 0, "quarantined": 0}, (60, 60), "7 days")
    }
    assert cards["publish lag"].status == "bad" and cards["stream lag"].status == "ok"
    assert cards["reconciliation"].status == "warn"
    assert "1 CDC events waiting" in cards["publish lag"].detail
