"""Schema, roles, CDC trigger and the ingest load against a real MariaDB."""

from __future__ import annotations

import json
import re
import uuid
from datetime import datetime, timedelta, timezone
from pathlib import Path

import MySQLdb
import pytest
from regstream import db, ingest

from stackctl import services
from stackctl.db import create_database, drop_database
from tests.conftest import point_connections_at, role_conn, root_conn

pytestmark = pytest.mark.integration

SAKILA = Path(__file__).resolve().parents[1] / "fixtures" / "sakila"
T0 = datetime(2026, 11, 2, 8, 0, tzinfo=timezone.utc)
T1 = T0 + timedelta(minutes=5)


def _run(database_conn_id: str, start: datetime, end: datetime, n: int) -> ingest.LoadResult:
    conn = db.connect(database_conn_id, autocommit=False)
    try:
        return ingest.run_ingest(conn, "ingest_fake_customers", start, end, n)
    finally:
        conn.close()


def test_each_role_can_do_only_what_it_was_granted(stack, fresh_db) -> None:
    denied = [
        (
            "publisher",
            "INSERT INTO customer (store_id, first_name, last_name, address_id, "
            "create_date) VALUES (1, 'A', 'B', 1, NOW())",
        ),
        ("publisher", "DELETE FROM users_change_events"),
        ("ingest", "SELECT * FROM users_change_events"),
        ("ingest", "UPDATE latest_cdc_timestamp SET last_event_id = 0"),
        ("stream", "SELECT * FROM customer"),
        ("reader", "SELECT * FROM customer"),
        ("reader", "SELECT email FROM users_change_events"),
        ("stream", "DELETE FROM registrations_per_window"),
        (
            "reader",
            "INSERT INTO registrations_per_window (window_start, window_end, store_id, "
            "registrations, batch_id) VALUES (NOW(), NOW(), 1, 1, 0)",
        ),
        ("reader", "UPDATE latest_cdc_timestamp SET last_event_id = 0"),
    ]
    for role, sql in denied:
        cur = role_conn(stack, role, fresh_db).cursor()
        with pytest.raises(MySQLdb.OperationalError) as err:
            cur.execute(sql)
        assert err.value.args[0] in (1142, 1143), (role, sql, err.value)
    allowed = [
        ("publisher", "SELECT COUNT(*) FROM users_change_events"),
        ("publisher", "SELECT COUNT(*) FROM information_schema.INNODB_TRX"),
        ("ingest", "SELECT COUNT(*) FROM city"),
        ("stream", "SELECT COUNT(*) FROM registrations_per_window"),
        ("reader", "SELECT COUNT(*) FROM registrations_per_window"),
    ]
    for role, sql in allowed:
        cur = role_conn(stack, role, fresh_db).cursor()
        cur.execute(sql)
        assert cur.fetchone() is not None


def test_trigger_rows_match_inserted_customers_one_to_one(stack, fresh_db) -> None:
    cur = root_conn(stack, fresh_db).cursor()
    cur.execute("SELECT UTC_TIMESTAMP(6)")
    before = cur.fetchone()[0]
    result = _run("mysql_ingest", T0, T1, 50)
    assert result.inserted == 50 and not result.already_loaded
    cur.execute(
        "SELECT c.customer_id, c.store_id, c.first_name, c.last_name, c.email, "
        "c.address_id, c.create_date FROM customer c ORDER BY c.customer_id"
    )
    customers = cur.fetchall()
    cur.execute(
        "SELECT customer_id, store_id, first_name, last_name, email, address_id, "
        "create_date FROM users_change_events ORDER BY customer_id"
    )
    events = cur.fetchall()
    assert len(customers) == 50
    assert events == customers
    cur.execute(
        "SELECT COUNT(DISTINCT event_id), MIN(event_type), MAX(event_type), "
        "MIN(captured_at), COUNT(captured_at) FROM users_change_events"
    )
    distinct, t_min, t_max, first_captured, n_captured = cur.fetchone()
    assert distinct == 50 and t_min == t_max == "customer_registered"
    # the trigger stamps each row with the commit-side UTC time, never NULL, never stale
    assert n_captured == 50 and first_captured >= before
    assert result.first_customer_id == customers[0][0]
    assert result.last_customer_id == customers[-1][0]


def test_foreign_keys_are_valid_and_dates_inside_interval(stack, fresh_db) -> None:
    _run("mysql_ingest", T0, T1, 200)
    cur = root_conn(stack, fresh_db).cursor()
    cur.execute(
        "SELECT COUNT(*) FROM customer c LEFT JOIN address a USING (address_id) "
        "LEFT JOIN store s ON s.store_id = c.store_id LEFT JOIN city ci "
        "ON ci.city_id = a.city_id WHERE a.address_id IS NULL OR s.store_id IS NULL "
        "OR ci.city_id IS NULL"
    )
    assert cur.fetchone()[0] == 0
    cur.execute("SELECT COUNT(*), COUNT(DISTINCT address_id) FROM customer")
    assert cur.fetchone() == (200, 200)  # a new address for every customer
    cur.execute("SELECT MIN(create_date), MAX(create_date), COUNT(DISTINCT store_id) FROM customer")
    lo, hi, stores = cur.fetchone()
    assert T0.replace(tzinfo=None) <= lo and hi < T1.replace(tzinfo=None)
    assert (hi - lo) > timedelta(minutes=3)  # spread across the interval
    assert stores == 2


def test_same_interval_twice_gives_one_copy_of_the_same_people(
    stack, fresh_db, monkeypatch
) -> None:
    first = _run("mysql_ingest", T0, T1, 20)
    again = _run("mysql_ingest", T0, T1, 20)
    assert again.already_loaded and again.inserted == 0
    cur = root_conn(stack, fresh_db).cursor()
    cur.execute(
        "SELECT first_name, last_name, email, store_id, create_date FROM customer "
        "ORDER BY customer_id"
    )
    people = cur.fetchall()
    assert len(people) == 20 and first.inserted == 20
    cur.execute("SELECT COUNT(*) FROM users_change_events")
    assert cur.fetchone()[0] == 20
    # Same interval in another database: the same people.
    other = create_database(stack, "t")
    point_connections_at(stack, other, monkeypatch)
    _run("mysql_ingest", T0, T1, 20)
    cur2 = root_conn(stack, other).cursor()
    cur2.execute(
        "SELECT first_name, last_name, email, store_id, create_date FROM customer "
        "ORDER BY customer_id"
    )
    assert cur2.fetchall() == people
    drop_database(stack, other)


def test_failed_load_leaves_nothing_behind(stack, fresh_db) -> None:
    conn = db.connect("mysql_ingest", autocommit=False)
    people = ingest.generate_customers(10, 1, T0, T1, [1, 2], [1, 2])
    bad = people[:5] + [people[5].__class__(**{**people[5].__dict__, "store_id": 99})]
    with pytest.raises(MySQLdb.IntegrityError):
        ingest.load_customers(conn, "k1", 1, T0, T1, bad)
    cur = root_conn(stack, fresh_db).cursor()
    for table in ("customer", "address", "users_change_events", "ingest_batches"):
        cur.execute(
            f"SELECT COUNT(*) FROM {table} WHERE 1 = 1"
            + (" AND address_id > 4" if table == "address" else "")
        )
        assert cur.fetchone()[0] == 0, table


def test_unreachable_database_names_connection_and_host(monkeypatch) -> None:
    monkeypatch.setenv(
        "AIRFLOW_CONN_MYSQL_BROKEN",
        json.dumps(
            {
                "conn_type": "mysql",
                "host": "127.0.0.1",
                "port": 1,
                "login": "x",
                "password": "y",
                "schema": "sakila",
            }
        ),
    )
    with pytest.raises(db.DatabaseUnavailable, match=r"'mysql_broken' at 127\.0\.0\.1:1"):
        db.connect("mysql_broken")


def _load_stock_sakila(stack, name: str) -> None:
    for part in ("sakila-schema.sql", "sakila-data.sql"):
        text = (SAKILA / part).read_text()
        text = re.sub(
            r"\b(DROP SCHEMA IF EXISTS|CREATE SCHEMA|USE) sakila;",
            lambda m: f"{m.group(1)} `{name}`;",
            text,
        )
        text = re.sub(r"\bsakila\.", f"`{name}`.", text)
        tmp = stack.run / f"{name}-{part}"
        tmp.write_text(text)
        res = services.mysql_cli(stack, file=tmp, check=False)
        assert res.returncode == 0, res.stderr.decode()[-500:]


def _checksums(stack, name: str) -> dict[str, int]:
    cur = root_conn(stack, name).cursor()
    cur.execute("CHECKSUM TABLE customer, address, store, city, country, staff, payment, rental")
    return {row[0]: row[1] for row in cur.fetchall()}


def test_stock_sakila_keeps_its_data_and_gains_cdc(stack, monkeypatch) -> None:
    if not SAKILA.exists():
        pytest.fail(f"stock sakila not found at {SAKILA}")
    name = f"stock_{uuid.uuid4().hex[:8]}"
    _load_stock_sakila(stack, name)
    before = _checksums(stack, name)
    services.apply_schema(stack, database=name)
    services.apply_schema(stack, database=name)  # re-running changes nothing
    assert _checksums(stack, name) == before
    cur = root_conn(stack, name).cursor()
    cur.execute("SELECT COUNT(*) FROM customer")
    assert cur.fetchone()[0] == 599
    cur.execute(
        "SELECT COUNT(*) FROM information_schema.TRIGGERS WHERE TRIGGER_SCHEMA = %s "
        "AND EVENT_OBJECT_TABLE = 'customer'",
        (name,),
    )
    assert cur.fetchone()[0] == 2  # sakila's create_date trigger (kept) + the CDC trigger

    point_connections_at(stack, name, monkeypatch)
    result = _run("mysql_ingest", T0, T1, 25)
    assert result.inserted == 25 and result.first_customer_id == 600
    cur.execute(
        "SELECT COUNT(*), MIN(create_date) >= %s, MAX(create_date) < %s FROM customer "
        "WHERE customer_id >= 600",
        (T0.replace(tzinfo=None), T1.replace(tzinfo=None)),
    )
    assert cur.fetchone() == (25, 1, 1)  # backfilled dates survive sakila's trigger
    cur.execute("SELECT COUNT(*) FROM users_change_events")
    assert cur.fetchone()[0] == 25
    cur.execute(
        "SELECT COUNT(*) FROM customer c JOIN address a USING (address_id) "
        "JOIN city USING (city_id) WHERE c.customer_id >= 600"
    )
    assert cur.fetchone()[0] == 25
    # SMALLINT ids: a load past 65,535 fails before writing anything.
    conn = db.connect("mysql_ingest", autocommit=False)
    with pytest.raises(ingest.IngestError, match=r"SMALLINT UNSIGNED \(max 65,535\)"):
        ingest.run_ingest(conn, "ingest_fake_customers", T1, T1 + timedelta(minutes=5), 70_000)
    conn.close()
    cur.execute("SELECT COUNT(*) FROM customer")
    assert cur.fetchone()[0] == 624
    drop_database(stack, name)
