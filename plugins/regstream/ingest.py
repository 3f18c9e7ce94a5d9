"""Fake customer registrations: seeded generation and an idempotent, multi-row load.

The people of a run are a pure function of (DAG id, data interval): the same interval always
yields the same customers, and the ledger table `ingest_batches` makes the load happen once.
"""

from __future__ import annotations

import hashlib
import logging
import random
import time
from collections import Counter
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Any

from faker import Faker

log = logging.getLogger(__name__)

DEFAULT_CUSTOMERS_PER_RUN = 20
MAX_CUSTOMERS_PER_RUN = 1_000_000
CHUNK_ROWS = 2000
# Below this many people, every person gets their own Faker values; above it, values come
# from pools of this size (Faker costs ~100 us a person, too slow for bulk loads).
POOL_SIZE = 2000

_ID_MAX = {
    "tinyint": 255,
    "smallint": 65_535,
    "mediumint": 16_777_215,
    "int": 4_294_967_295,
    "bigint": 18_446_744_073_709_551_615,
}


class IngestError(RuntimeError):
    """A run that cannot load; the message says what to fix. Nothing was written."""


@dataclass(frozen=True)
class Customer:
    store_id: int
    first_name: str
    last_name: str
    email: str
    address: str
    district: str
    city_id: int
    postal_code: str
    phone: str
    create_date: datetime  # naive UTC, whole seconds
    lon: float
    lat: float


@dataclass(frozen=True)
class LoadResult:
    batch_key: str
    inserted: int
    first_customer_id: int | None
    last_customer_id: int | None
    per_store: dict[int, int]
    already_loaded: bool
    seconds: float


def validate_count(value: Any, maximum: int = MAX_CUSTOMERS_PER_RUN) -> int:
    """The customers-per-run parameter as an int, or a clear error (before any DB work)."""
    if isinstance(value, bool):
        raise IngestError(f"customers must be a whole number, got {value!r}")
    if isinstance(value, str):
        value = value.strip()
    try:
        n = int(value)
    except (TypeError, ValueError):
        raise IngestError(f"customers must be a whole number, got {value!r}") from None
    if isinstance(value, float) and value != n:
        raise IngestError(f"customers must be a whole number, got {value!r}")
    if n <= 0:
        raise IngestError(f"customers must be at least 1, got {n}")
    if n > maximum:
        raise IngestError(
            f"customers must be at most {maximum:,} per run, got {n:,}; "
            "split the load over more runs (trigger several, or backfill more intervals)"
        )
    return n


EMAIL_MAX = 50  # customer.email is VARCHAR(50)


def email_for(first: str, last: str, tag: str) -> str:
    """sakila's e-mail style, FIRST.LAST.tag@sakilacustomer.org, cut to fit the column."""
    suffix = f".{tag}@sakilacustomer.org"
    local = f"{first}.{last}".replace(" ", "").upper()
    return local[: EMAIL_MAX - len(suffix)] + suffix


def _utc_naive(ts: datetime) -> datetime:
    if ts.tzinfo is not None:
        ts = ts.astimezone(timezone.utc).replace(tzinfo=None)
    return ts


def batch_key(dag_id: str, start: datetime, end: datetime) -> str:
    return f"{dag_id}|{_utc_naive(start).isoformat()}|{_utc_naive(end).isoformat()}"


def batch_seed(key: str) -> int:
    return int.from_bytes(hashlib.sha256(key.encode()).digest()[:8], "big") >> 1


def generate_customers(
    n: int, seed: int, start: datetime, end: datetime, city_ids: list[int], store_ids: list[int]
) -> list[Customer]:
    """n people, deterministic in seed; create_date spread over [start, end) in whole seconds."""
    start, end = _utc_naive(start), _utc_naive(end)
    span = int((end - start).total_seconds())
    if span <= 0:
        raise IngestError(
            f"empty data interval {start} - {end}: registration times must fall "
            "inside the run's interval (use a schedule with data intervals)"
        )
    if not city_ids or not store_ids:
        raise IngestError(
            "no cities or no stores in the database: run the schema step "
            "(sql/02_seed.sql) or load sakila first"
        )
    fake = Faker("en_US")
    fake.seed_instance(seed)
    rng = random.Random(seed)
    pool = min(n, POOL_SIZE)
    firsts = [fake.first_name()[:45] for _ in range(pool)]
    lasts = [fake.last_name()[:45] for _ in range(pool)]
    streets = [fake.street_address()[:50] for _ in range(pool)]
    districts = [fake.state()[:20] for _ in range(pool)]
    postcodes = [fake.postcode()[:10] for _ in range(pool)]
    phones = [fake.numerify("##########") for _ in range(pool)]
    offsets = sorted(rng.randrange(span) for _ in range(n))
    cities = sorted(city_ids)
    stores = sorted(store_ids)
    out = []
    for i in range(n):
        if n <= pool:
            f, la, st, di, po, ph = (
                firsts[i],
                lasts[i],
                streets[i],
                districts[i],
                postcodes[i],
                phones[i],
            )
        else:
            f, la = firsts[rng.randrange(pool)], lasts[rng.randrange(pool)]
            j = rng.randrange(pool)
            st, di, po, ph = streets[j], districts[j], postcodes[j], phones[rng.randrange(pool)]
        tag = format((seed + i) % 16**6, "06x")
        email = email_for(f, la, tag)
        out.append(
            Customer(
                store_id=rng.choice(stores),
                first_name=f.upper(),
                last_name=la.upper(),
                email=email,
                address=st,
                district=di,
                city_id=rng.choice(cities),
                postal_code=po,
                phone=ph,
                create_date=start + timedelta(seconds=offsets[i]),
                lon=round(rng.uniform(-180, 180), 6),
                lat=round(rng.uniform(-90, 90), 6),
            )
        )
    return out


def reference_ids(cur: Any) -> tuple[list[int], list[int]]:
    cur.execute("SELECT city_id FROM city ORDER BY city_id")
    cities = [r[0] for r in cur.fetchall()]
    cur.execute("SELECT store_id FROM store ORDER BY store_id")
    stores = [r[0] for r in cur.fetchall()]
    return cities, stores


def _column_info(cur: Any, table: str, column: str) -> tuple[str, str] | None:
    cur.execute(
        "SELECT DATA_TYPE, IS_NULLABLE FROM information_schema.COLUMNS "
        "WHERE TABLE_SCHEMA = DATABASE() AND TABLE_NAME = %s AND COLUMN_NAME = %s",
        (table, column),
    )
    row = cur.fetchone()
    return (str(row[0]).lower(), str(row[1])) if row else None


def check_id_space(cur: Any, n: int) -> None:
    """Refuse a load that would overflow sakila's SMALLINT ids, before writing anything."""
    for table, column in (("customer", "customer_id"), ("address", "address_id")):
        info = _column_info(cur, table, column)
        if info is None:
            raise IngestError(f"table {table} has no column {column}: is this a sakila schema?")
        limit = _ID_MAX.get(info[0])
        if limit is None:
            continue
        cur.execute(f"SELECT COALESCE(MAX({column}), 0) FROM {table}")  # noqa: S608
        used = int(cur.fetchone()[0])
        if used + n > limit:
            raise IngestError(
                f"{table}.{column} is {info[0].upper()} UNSIGNED (max {limit:,}); the highest id "
                f"is {used:,} and this run adds {n:,}. Widen the id columns (the project's "
                f"schema uses INT UNSIGNED) or load fewer rows"
            )


def _multi_row(cur: Any, sql: str, row_sql: str, rows: list[tuple]) -> None:
    """One INSERT ... VALUES (...), (...) statement for all rows (executemany would fall back
    to one statement per row for some queries, and splits at 64 KiB)."""
    stmt = sql + ", ".join([row_sql] * len(rows))
    cur.execute(stmt, [v for row in rows for v in row])
    if cur.rowcount != len(rows):
        raise IngestError(f"inserted {cur.rowcount} rows, expected {len(rows)}")


def _insert_chunk(cur: Any, sql: str, row_sql: str, rows: list[tuple], step: int) -> list[int]:
    _multi_row(cur, sql, row_sql, rows)
    # A multi-row INSERT ... VALUES ("simple insert") gets consecutive auto-increment values
    # in every innodb_autoinc_lock_mode, spaced by auto_increment_increment.
    cur.execute("SELECT LAST_INSERT_ID()")
    first = int(cur.fetchone()[0])
    return [first + k * step for k in range(len(rows))]


def _insert_customers(
    cur: Any, customers: list[Customer], location: Any, step: int, chunk_rows: int
) -> tuple[int | None, int | None]:
    """Addresses then customers, in chunks; the first and last customer id inserted."""
    if location is not None:
        addr_sql = (
            "INSERT INTO address (address, district, city_id, postal_code, phone, location) VALUES "
        )
        addr_row = "(%s, %s, %s, %s, %s, ST_GeomFromText(%s))"
    else:
        addr_sql = "INSERT INTO address (address, district, city_id, postal_code, phone) VALUES "
        addr_row = "(%s, %s, %s, %s, %s)"
    cust_sql = (
        "INSERT INTO customer (store_id, first_name, last_name, email, address_id, "
        "active, create_date) VALUES "
    )
    cust_row = "(%s, %s, %s, %s, %s, 1, %s)"
    ids: list[int] = []
    for i in range(0, len(customers), chunk_rows):
        part = customers[i : i + chunk_rows]
        addr_rows = [
            (c.address, c.district, c.city_id, c.postal_code, c.phone)
            + ((f"POINT({c.lon} {c.lat})",) if location is not None else ())
            for c in part
        ]
        addr_ids = _insert_chunk(cur, addr_sql, addr_row, addr_rows, step)
        cust_rows = [
            (c.store_id, c.first_name, c.last_name, c.email, a, c.create_date)
            for c, a in zip(part, addr_ids, strict=True)
        ]
        _multi_row(cur, cust_sql, cust_row, cust_rows)
        # Customer ids by their (new, unique) addresses: on a table with an insert
        # trigger, LAST_INSERT_ID() reports the trigger's id on MariaDB, not ours.
        cur.execute(
            "SELECT MIN(customer_id), MAX(customer_id), COUNT(*) FROM customer "
            "WHERE address_id BETWEEN %s AND %s",
            (addr_ids[0], addr_ids[-1]),
        )
        lo, hi, count = cur.fetchone()
        if count != len(part):
            raise IngestError(
                f"expected {len(part)} customers for addresses "
                f"{addr_ids[0]}-{addr_ids[-1]}, found {count}"
            )
        ids += [int(lo), int(hi)]
    return (min(ids), max(ids)) if ids else (None, None)


def load_customers(
    conn: Any,
    key: str,
    seed: int,
    start: datetime,
    end: datetime,
    customers: list[Customer],
    chunk_rows: int = CHUNK_ROWS,
) -> LoadResult:
    """Insert customers and their addresses in one transaction, once per batch key."""
    t0 = time.monotonic()
    cur = conn.cursor()
    conn.autocommit(False)
    try:
        cur.execute("SET time_zone = '+00:00'")
        cur.execute("SELECT @@auto_increment_increment")
        step = int(cur.fetchone()[0])
        location = _column_info(cur, "address", "location")
        check_id_space(cur, len(customers))
        cur.execute(
            "SELECT customers, first_customer_id, last_customer_id FROM ingest_batches "
            "WHERE batch_key = %s",
            (key,),
        )
        done = cur.fetchone()
        if done:
            conn.rollback()
            return LoadResult(key, 0, done[1], done[2], {}, True, time.monotonic() - t0)
        # The ledger row first: a concurrent run of the same interval blocks here, then fails
        # on the primary key and rolls back, so exactly one copy lands.
        cur.execute(
            "INSERT INTO ingest_batches (batch_key, interval_start, interval_end, seed, customers)"
            " VALUES (%s, %s, %s, %s, %s)",
            (key, _utc_naive(start), _utc_naive(end), seed, len(customers)),
        )
        first, last = _insert_customers(cur, customers, location, step, chunk_rows)
        cur.execute(
            "UPDATE ingest_batches SET first_customer_id = %s, last_customer_id = %s "
            "WHERE batch_key = %s",
            (first, last, key),
        )
        conn.commit()
    except Exception:
        conn.rollback()
        raise
    per_store = dict(sorted(Counter(c.store_id for c in customers).items()))
    return LoadResult(key, len(customers), first, last, per_store, False, time.monotonic() - t0)


def run_ingest(conn: Any, dag_id: str, start: datetime, end: datetime, n: int) -> LoadResult:
    """The ingest task: generate the interval's people and load them once."""
    key = batch_key(dag_id, start, end)
    seed = batch_seed(key)
    cur = conn.cursor()
    cities, stores = reference_ids(cur)
    t0 = time.monotonic()
    people = generate_customers(n, seed, start, end, cities, stores)
    gen_s = time.monotonic() - t0
    result = load_customers(conn, key, seed, start, end, people)
    if result.already_loaded:
        log.info(
            "interval %s - %s already loaded (batch %s, customer ids %s-%s): inserted 0",
            start,
            end,
            key,
            result.first_customer_id,
            result.last_customer_id,
        )
    else:
        log.info(
            "inserted %d customers, ids %s-%s, per store %s, interval %s - %s, "
            "generated in %.2fs, loaded in %.2fs (%.0f customers/s)",
            result.inserted,
            result.first_customer_id,
            result.last_customer_id,
            result.per_store,
            start,
            end,
            gen_s,
            result.seconds,
            result.inserted / max(result.seconds, 1e-9),
        )
    return result
