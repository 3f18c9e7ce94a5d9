"""Source and sink on two MariaDB servers (docs/sink.md): the test profile's server holds the
source (customers, change events, watermark), a second mariadbd started here holds the sink
(the stream's counts and records, the reconciliation's results), each role's connection
points at its side. End to end through the real publisher and Spark job: the counts on the
sink equal the customers on the source, the reconciliation (which joins the two in Python)
is green and finds a corrupted count, the lag monitor reads both sides."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from datetime import datetime, timedelta
from typing import Any

import MySQLdb
import pytest
from regstream import db, ingest, publish
from regstream.connections import MYSQL_RECONCILE_SINK_CONN_ID, SINK_CONN_IDS, SOURCE_CONN_IDS
from regstream.monitoring import read_lag_from_settings
from regstream.reconcile import ReconciliationMismatch, run_from_settings

from stackctl import config
from tests.conftest import ARTIFACTS, root_conn, wait_for
from tests.support.mariadb import (
    SINK_SQL,
    SOURCE_SQL,
    Server,
    create_sink,
    create_source,
    second_server,
)
from tests.support.streamjob import create_topic, kill_job, start_job, wait_started

pytestmark = pytest.mark.integration

CUSTOMERS = 300


def test_every_sql_file_is_on_one_side() -> None:
    numbered = sorted(p.name for p in config.ROOT.joinpath("sql").glob("[0-9][0-9]_*.sql"))
    assert sorted(SOURCE_SQL + SINK_SQL) == numbered
    assert not set(SOURCE_SQL) & set(SINK_SQL)
    assert not set(SOURCE_CONN_IDS) & set(SINK_CONN_IDS)


def source_truth(s: config.Settings, database: str, since: datetime) -> dict[tuple, int]:
    """Customers per 1-minute window and store, computed on the source server."""
    cur = root_conn(s, database).cursor()
    cur.execute(
        "SELECT FROM_UNIXTIME(FLOOR(UNIX_TIMESTAMP(create_date) / 60) * 60) AS ws, store_id, "
        "COUNT(*) FROM customer WHERE create_date >= %s GROUP BY ws, store_id",
        (since,),
    )
    return {(ws, store): n for ws, store, n in cur.fetchall()}


def sink_counts(server: Server, database: str, since: datetime) -> dict[tuple, int]:
    cur = server.root(database).cursor()
    cur.execute(
        "SELECT window_start, store_id, registrations FROM registrations_per_window "
        "WHERE window_start >= %s",
        (since,),
    )
    return {(ws, store): n for ws, store, n in cur.fetchall()}


def tables(conn: Any) -> set[str]:
    cur = conn.cursor()
    cur.execute("SHOW TABLES")
    return {r[0] for r in cur.fetchall()}


@pytest.fixture(scope="module")
def split(stack: config.Settings) -> Iterator[dict[str, Any]]:
    """Source on the profile's server, sink on a second one, every connection on its side;
    customers loaded, published and counted by the real job (killed at the end)."""
    tag = uuid.uuid4().hex[:8]
    topic, src_db, sink_db = f"two_{tag}", f"src_{tag}", f"sink_{tag}"
    proc = None
    with second_server() as server, pytest.MonkeyPatch.context() as mp:
        conns = {**create_source(stack, src_db), **create_sink(server, sink_db)}
        assert set(conns) == set(SOURCE_CONN_IDS) | set(SINK_CONN_IDS)
        for conn_id, value in conns.items():
            mp.setenv(f"AIRFLOW_CONN_{conn_id.upper()}", value)
        mp.setenv("REGSTREAM_TOPIC", topic)
        mp.setenv("REGSTREAM_WINDOW", "1 minute")
        try:
            create_topic(stack, topic)
            log = ARTIFACTS / f"stream-{topic}.log"
            proc = start_job(stack, topic, server.datadir.parent / "checkpoints", log)
            wait_started(proc, log, 0)
            cur = root_conn(stack, src_db).cursor()
            cur.execute("SELECT UTC_TIMESTAMP()")
            since = cur.fetchone()[0].replace(second=0) - timedelta(hours=1)
            conn = db.connect("mysql_ingest", autocommit=False)
            try:
                ingest.run_ingest(
                    conn, "two_servers", since, since + timedelta(minutes=20), CUSTOMERS
                )
            finally:
                conn.close()

            def published() -> bool:
                publish.run_publish(topic=topic)
                cur.execute(
                    "SELECT last_event_id, pending_gaps FROM latest_cdc_timestamp "
                    "WHERE pipeline = %s",
                    (topic,),
                )
                row = cur.fetchone()
                cur.execute("SELECT MAX(event_id) FROM users_change_events")
                return bool(row) and row[0] == cur.fetchone()[0] and json.loads(row[1]) == []

            wait_for("every event to be published", published, 60, 0.3)
            truth = source_truth(stack, src_db, since)
            assert sum(truth.values()) == CUSTOMERS

            def counted() -> bool:
                if proc is not None and proc.poll() is not None:
                    raise AssertionError(f"the streaming job exited with {proc.returncode}")
                return sink_counts(server, sink_db, since) == truth

            wait_for("the sink's counts to equal the source's customers", counted, 240, 0.5)
            yield {
                "server": server,
                "topic": topic,
                "src_db": src_db,
                "sink_db": sink_db,
                "since": since,
                "truth": truth,
            }
        finally:
            if proc is not None:
                kill_job(proc)
            root_conn(stack).cursor().execute(f"DROP DATABASE IF EXISTS `{src_db}`")


def test_each_side_holds_only_its_tables(stack: config.Settings, split: dict[str, Any]) -> None:
    source = tables(root_conn(stack, split["src_db"]))
    sink = tables(split["server"].root(split["sink_db"]))
    assert {"customer", "users_change_events", "latest_cdc_timestamp"} <= source
    assert {"registrations_per_window", "stream_reconciliation_runs"} <= sink
    assert not source & sink


def test_counts_on_the_sink_server_reconcile_with_the_source_server(
    stack: config.Settings, split: dict[str, Any]
) -> None:
    assert sink_counts(split["server"], split["sink_db"], split["since"]) == split["truth"]

    result = run_from_settings(0, "manual__two_servers")

    assert result.mismatches == []
    mine = [c for c in result.checks if c.window_start >= split["since"]]
    assert {(c.window_start, c.store_id): c.counted for c in mine} == split["truth"]
    cur = split["server"].root(split["sink_db"]).cursor()
    cur.execute(
        "SELECT windows_matched, source_events, counted FROM stream_reconciliation_runs "
        "WHERE airflow_run_id = 'manual__two_servers'"
    )
    assert cur.fetchall() == ((len(split["truth"]), CUSTOMERS, CUSTOMERS),)


def test_a_corrupted_count_on_the_sink_server_is_reported(
    stack: config.Settings, split: dict[str, Any]
) -> None:
    (ws, store), n = min(split["truth"].items())
    cur = split["server"].root(split["sink_db"]).cursor()
    cur.execute(
        "UPDATE registrations_per_window SET registrations = registrations + 1 "
        "WHERE window_start = %s AND store_id = %s",
        (ws, store),
    )
    try:
        with pytest.raises(ReconciliationMismatch) as caught:
            run_from_settings(0, "manual__two_servers_corrupt")
    finally:
        cur.execute(
            "UPDATE registrations_per_window SET registrations = registrations - 1 "
            "WHERE window_start = %s AND store_id = %s",
            (ws, store),
        )
    text = str(caught.value)
    assert "1 of" in text and f"window {ws:%Y-%m-%d %H:%M:%S}" in text
    assert f"store {store}: counted {n + 1}, expected {n}" in text and "difference +1" in text
    cur.execute(
        "SELECT window_start, store_id, source_count, counted, difference "
        "FROM stream_reconciliation_mismatches"
    )
    assert cur.fetchall() == ((ws, store, n, n + 1, 1),)


def test_the_lag_monitor_reads_each_side(stack: config.Settings, split: dict[str, Any]) -> None:
    caught_up = read_lag_from_settings(split["topic"])
    assert caught_up.backlog_events == 0 and caught_up.pending_gaps == 0
    assert caught_up.publish_delay_s == 0 and caught_up.stream_delay_s == 0
    assert caught_up.late_events_total == 0 and caught_up.quarantined_total == 0
    # the job's event-time watermark: the newest registration minus the lateness (7 days)
    newest = max(ws for ws, _ in split["truth"]) + timedelta(minutes=1)
    watermark = datetime(1970, 1, 1) + timedelta(seconds=caught_up.event_time_watermark_epoch_s)
    assert timedelta(days=7) <= newest - watermark <= timedelta(days=7, minutes=1)

    # one registration not published yet (a month old: outside the reconciliation's range)
    conn = db.connect("mysql_ingest", autocommit=False)
    try:
        old = split["since"] - timedelta(days=30)
        ingest.run_ingest(conn, "two_servers_old", old, old + timedelta(minutes=1), 1)
    finally:
        conn.close()
    waiting = read_lag_from_settings(split["topic"])
    assert waiting.backlog_events == 1 and waiting.stream_delay_s == 0


def test_without_a_sink_connection_the_reconciliation_looks_in_the_source(
    split: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The one-database default: undefined, mysql_reconcile_sink is mysql_reconcile, which
    here is the source server: it has no sink tables, and the error says so."""
    monkeypatch.delenv(f"AIRFLOW_CONN_{MYSQL_RECONCILE_SINK_CONN_ID.upper()}")
    with pytest.raises(MySQLdb.MySQLError, match="registrations_per_window|stream_late_events"):
        run_from_settings(0, None)
