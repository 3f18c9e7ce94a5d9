"""Bulk ingest: 200,000 fake customers into a fresh database, against a baseline.

Usage: .state/venv/bin/python -m benchmarks.bench_ingest [--customers 200000]

Measured: the ingest path (seeded Faker generation + multi-row inserts of addresses and
customers, the CDC trigger firing for every row, one transaction) and, in the same run on
another fresh database, the baseline: the same multi-row INSERTs of pre-generated rows (the
cost floor without Faker). Target: >= 10,000 customers/s and >= half the baseline's rate.
"""

from __future__ import annotations

import argparse
import time
from datetime import datetime, timedelta, timezone

from regstream import db, ingest

from benchmarks.common import drop, fresh, report, stack
from stackctl.db import root_conn

START = datetime(2026, 1, 1, tzinfo=timezone.utc)


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--customers", type=int, default=200_000)
    n = p.parse_args().customers
    s = stack()

    # Baseline: rows generated before the clock starts.
    base_db, _ = fresh(s)
    conn = db.connect("mysql_ingest", autocommit=False)
    people = ingest.generate_customers(
        n, 1, START, START + timedelta(days=1), list(range(1, 21)), [1, 2]
    )
    t0 = time.monotonic()
    ingest.load_customers(conn, "baseline", 1, START, START + timedelta(days=1), people)
    base_s = time.monotonic() - t0
    conn.close()
    drop(s, base_db)

    # The ingest path: generation + load, as run_ingest does.
    path_db, _ = fresh(s)
    conn = db.connect("mysql_ingest", autocommit=False)
    t0 = time.monotonic()
    result = ingest.run_ingest(conn, "bench", START, START + timedelta(days=1), n)
    path_s = time.monotonic() - t0
    conn.close()
    cur = root_conn(s, path_db).cursor()
    cur.execute("SELECT COUNT(*) FROM users_change_events")
    events = cur.fetchone()[0]
    drop(s, path_db)
    assert result.inserted == n and events == n, (result.inserted, events)

    rate, base_rate = n / path_s, n / base_s
    report(
        "ingest",
        {
            "customers": n,
            "seconds": round(path_s, 2),
            "customers_per_s": round(rate),
            "baseline_seconds": round(base_s, 2),
            "baseline_customers_per_s": round(base_rate),
            "ratio_to_baseline": round(rate / base_rate, 2),
            "cdc_events": events,
            "target_customers_per_s": 10_000,
            "target_ratio": 0.5,
        },
        f"{n:,} customers in {path_s:.1f}s = {rate:,.0f}/s (trigger included); baseline "
        f"{base_rate:,.0f}/s; ratio {rate / base_rate:.2f}",
    )


if __name__ == "__main__":
    main()
