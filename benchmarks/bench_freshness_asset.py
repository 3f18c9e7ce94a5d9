"""Freshness with the publisher triggered by the ingest asset (the default DAG wiring).

Usage: .state/venv/bin/python -m benchmarks.bench_freshness_asset [--runs 12]

Starts the test profile's Airflow beside MariaDB and Kafka, unpauses the DAGs, waits for the
streaming job, then triggers ingest runs (20 customers each, each run its own past interval)
one at a time. For every customer: latency = the time its count is visible in
registrations_per_window minus its insert's commit (the ingest task's end, read back from
Airflow's REST API). Target: p95 < 10 s.
"""

from __future__ import annotations

import argparse
import statistics
import time
from datetime import datetime, timedelta, timezone

from benchmarks.common import report, whole_platform
from stackctl import config
from stackctl.db import root_conn


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--runs", type=int, default=12)
    args = p.parse_args()
    s, af = whole_platform()
    cur = root_conn(s, config.DATABASE).cursor()
    deadline = time.monotonic() + 300
    while True:
        cur.execute(
            "SELECT COUNT(*) FROM stream_progress WHERE query_name = "
            "'registration_counts' AND finished_at > UTC_TIMESTAMP(6) - INTERVAL 30 "
            "SECOND"
        )
        if cur.fetchone()[0]:
            break
        if time.monotonic() > deadline:
            raise SystemExit("the streaming job did not start")
        time.sleep(1)
    # Past intervals within the allowed lateness, not loaded before (runs are idempotent).
    now = datetime.now(timezone.utc).replace(second=0, microsecond=0)
    slot = now.replace(minute=now.minute - now.minute % 5) - timedelta(days=1)
    cur.execute("SELECT interval_end FROM ingest_batches")
    used = {r[0] for r in cur.fetchall()}
    ends = []
    while len(ends) < args.runs:
        slot -= timedelta(minutes=5)
        if slot.replace(tzinfo=None) not in used:
            ends.append(slot)
    latencies: list[float] = []
    for k, end in enumerate(ends):
        start = end - timedelta(minutes=5)
        run = af.trigger("ingest_fake_customers", end)
        assert af.wait_run("ingest_fake_customers", run) == "success"
        ti = af.call(
            "GET", f"/dags/ingest_fake_customers/dagRuns/{run}/taskInstances/insert_fake_customers"
        )
        committed = datetime.fromisoformat(ti["end_date"].replace("Z", "+00:00")).timestamp()
        while True:
            cur.execute(
                "SELECT COALESCE(SUM(registrations), 0) FROM registrations_per_window "
                "WHERE window_start >= %s AND window_start < %s",
                (start.replace(tzinfo=None), end.replace(tzinfo=None)),
            )
            if cur.fetchone()[0] >= 20:
                break
            if time.time() - committed > 120:
                raise SystemExit(f"run {run}: not visible 120 s after commit")
            time.sleep(0.1)
        latencies += [time.time() - committed] * 20
        print(f"run {k}: visible {latencies[-1]:.1f} s after commit", flush=True)
    q = statistics.quantiles(latencies, n=100)
    report(
        "freshness_asset",
        {
            "runs": args.runs,
            "customers": len(latencies),
            "p50_s": round(q[49], 2),
            "p95_s": round(q[94], 2),
            "p99_s": round(q[98], 2),
            "max_s": round(max(latencies), 2),
            "mode": "publisher on the ingest asset (Airflow scheduler)",
            "target_p95_s": 10.0,
        },
        f"{len(latencies)} customers in {args.runs} runs: commit -> visible p50 {q[49]:.1f} s, "
        f"p95 {q[94]:.1f} s, p99 {q[98]:.1f} s (publisher triggered by the ingest asset)",
    )


if __name__ == "__main__":
    main()
