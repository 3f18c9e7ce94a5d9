"""Reconciliation and the live view, driven as a person drives them: the reconcile_counts DAG
through Airflow's REST API, the page in Chromium through Airflow's login.

A deliberately corrupted count is caught (the task fails, its log names the window and the
difference, the page shows it); once the stream rewrites that window, a new run passes. The
page, with two stores' registrations over the last hour, one too-late event and one
quarantined message, is screenshotted to artifacts/liveview_health.png.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import datetime, timedelta

import pytest

from stackctl import config
from tests.conftest import ARTIFACTS, root_conn, wait_for
from tests.e2e.conftest import counts_match

pytestmark = pytest.mark.e2e

DB = config.DATABASE
DAG = "reconcile_counts"
TASK = "reconcile_window_counts"


@pytest.fixture
def ingest_paused(platform) -> Iterator[None]:
    """No scheduled ingest run lands in the middle of a check."""
    platform.call("PATCH", "/dags/ingest_fake_customers", {"is_paused": True})
    yield
    platform.call("PATCH", "/dags/ingest_fake_customers", {"is_paused": False})


def db_now(cur) -> datetime:
    cur.execute("SELECT UTC_TIMESTAMP()")
    return cur.fetchone()[0]


def insert_customer(cur, store: int, create_date: datetime) -> None:
    cur.execute(
        "INSERT INTO customer (store_id, first_name, last_name, email, address_id, active, "
        "create_date) VALUES (%s, 'Live', 'View', 'live@example.org', 1, 1, %s)",
        (store, create_date),
    )


def stream_count(cur, window_start: datetime, store: int) -> int | None:
    cur.execute(
        "SELECT registrations FROM registrations_per_window WHERE window_start = %s "
        "AND store_id = %s AND TIMESTAMPDIFF(SECOND, window_start, window_end) = 60",
        (window_start, store),
    )
    row = cur.fetchone()
    return None if row is None else int(row[0])


def reconcile(platform) -> tuple[str, str]:
    """One on-demand run (settle 0: every finished window); its state and its task's log."""
    run = platform.trigger(DAG, None, {"settle_s": 0})
    state = platform.wait_run(DAG, run, timeout=180)
    return state, platform.log(DAG, run, TASK)


def open_live_view(stack, page) -> None:
    page.goto(f"{stack.airflow_url}/regstream/")
    page.wait_for_selector(".card[data-metric='reconciliation']", timeout=30_000)


def test_a_corrupted_count_is_caught_shown_and_cleared(stack, platform, ingest_paused) -> None:
    from tests.support.browser import logged_in_page

    cur = root_conn(stack, DB).cursor()
    window = db_now(cur).replace(second=0) - timedelta(days=2)
    for _ in range(3):
        insert_customer(cur, 1, window + timedelta(seconds=10))
    counts_match(stack, 300)
    assert stream_count(cur, window, 1) == 3
    cur.execute(
        "UPDATE registrations_per_window SET registrations = registrations + 4 "
        "WHERE window_start = %s AND store_id = 1",
        (window,),
    )

    state, log = reconcile(platform)
    assert state == "failed"
    line = (
        f"window {window:%Y-%m-%d %H:%M:%S}-{window + timedelta(minutes=1):%H:%M:%S} store 1: "
        "counted 7, expected 3 (source 3 - too late 0), difference +4"
    )
    assert line in log, log[-3000:]
    assert "1 of " in log and "windows differ" in log

    with logged_in_page(stack) as page:
        open_live_view(stack, page)
        row = page.wait_for_selector(f"tr[data-mismatch='{window.isoformat()}Z|1']", timeout=30_000)
        assert "+4" in row.inner_text()
        card = page.query_selector(".card[data-metric='reconciliation']")
        assert card.get_attribute("data-status") == "bad" and "differ" in card.inner_text()

    # one more registration in that window: the stream rewrites it from its state (3 + 1)
    insert_customer(cur, 1, window + timedelta(seconds=20))
    wait_for("the stream to rewrite the window", lambda: stream_count(cur, window, 1) == 4, 120)
    state, log = reconcile(platform)
    assert state == "success", log[-3000:]
    assert " 0 differ" in log

    with logged_in_page(stack) as page:
        open_live_view(stack, page)
        page.wait_for_selector(".card[data-metric='reconciliation'][data-status='ok']")
        assert "matched" in page.inner_text("#recon-pill")
        assert page.query_selector("tr[data-mismatch]") is None


def add_an_hour_of_two_stores(cur) -> None:
    """Registrations of stores 1 and 2 every two minutes over the last hour, in waves."""
    start = db_now(cur) - timedelta(hours=1)
    for k in range(30):
        at = start + timedelta(minutes=2 * k)
        for _ in range(1 + k % 4):
            insert_customer(cur, 1, at)
        for _ in range(1 + (k // 5) % 3):
            insert_customer(cur, 2, at + timedelta(seconds=30))


def add_a_late_event_and_a_quarantined_message(cur) -> None:
    """As the stream's sink records them (the stream's own tests produce real ones)."""
    now = db_now(cur)
    cur.execute(
        "INSERT INTO stream_late_events (event_id, customer_id, store_id, create_date, "
        "event_watermark, reason, topic, kafka_partition, kafka_offset, batch_id) VALUES "
        "(990001, NULL, 2, %s, %s, 'event time older than the watermark (lateness 7 days)', "
        "%s, 1, 4711, 42)",
        (now - timedelta(days=9), now - timedelta(days=7), config.TOPIC),
    )
    cur.execute(
        "INSERT INTO stream_quarantine (topic, kafka_partition, kafka_offset, kafka_timestamp, "
        "raw_key, raw_value, reason) VALUES (%s, 0, 4712, %s, '1', '{\"schema_version\": 9}', "
        "'unknown schema_version 9')",
        (config.TOPIC, now),
    )


def test_the_live_view_explains_itself(stack, platform, ingest_paused) -> None:
    from tests.support.browser import logged_in_page

    cur = root_conn(stack, DB).cursor()
    add_an_hour_of_two_stores(cur)
    add_a_late_event_and_a_quarantined_message(cur)
    counts_match(stack, 300)
    state, log = reconcile(platform)
    assert state == "success", log[-3000:]

    with logged_in_page(stack) as page:
        open_live_view(stack, page)
        page.wait_for_selector("#chart canvas", timeout=30_000)
        page.wait_for_selector("tr[data-late-event='990001']")
        page.wait_for_selector("tr[data-quarantined]")
        page.wait_for_selector("tr[data-window]")
        cards = {
            c.get_attribute("data-metric"): c.inner_text() for c in page.query_selector_all(".card")
        }
        assert set(cards) == {
            "publish lag",
            "stream lag",
            "reconciliation",
            "too-late events",
            "quarantined",
        }
        assert "Counts match the source" in cards["reconciliation"]
        assert "Idle" in cards["publish lag"] and "Idle" in cards["stream lag"]
        assert "1 in the last 24 h" in cards["too-late events"]
        assert "unknown schema_version 9" in page.inner_text("#quarantine")
        assert "lateness 7 days" in page.inner_text("#late")
        legend = page.inner_text("#chart")
        assert "store 1" in legend and "store 2" in legend
        ARTIFACTS.mkdir(exist_ok=True)
        shot = ARTIFACTS / "liveview_health.png"
        page.screenshot(path=str(shot), full_page=True)
        assert shot.stat().st_size > 30_000
