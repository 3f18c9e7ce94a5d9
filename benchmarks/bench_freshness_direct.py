"""Freshness for every writer: rows INSERTed straight into MySQL (no Airflow run triggered by
hand), on the default `make up` configuration (event-driven publisher, 1 s stream trigger).

Measures commit -> count visible in `registrations_per_window`:
- single inserts, one at a time at about 1/s (`--singles`, default 200);
- bursts of 1,000 rows in one transaction (`--bursts`, default 3), each row's latency being
  the time until the whole burst is counted.
And, per single insert, where the time goes, from Airflow's own timestamps: commit -> run
queued (trigger probe + scheduler), queued -> task start (executor), task (publish), and task
end -> visible (Kafka, micro-batch, upsert).

Usage: python -m benchmarks.bench_freshness_direct [--singles 200] [--bursts 3]
"""

from __future__ import annotations

import argparse
import statistics
import time
from datetime import datetime
from typing import Any

from benchmarks.common import report, whole_platform
from stackctl import config
from stackctl.airflow_api import Airflow
from stackctl.db import root_conn

INSERT = (
    "INSERT INTO customer (store_id, first_name, last_name, email, address_id, active, "
    "create_date) VALUES (%s, 'Bench', 'Direct', 'bench@example.org', 1, 1, UTC_TIMESTAMP())"
)


def _ts(iso: str | None) -> float | None:
    return datetime.fromisoformat(iso.replace("Z", "+00:00")).timestamp() if iso else None


def counted(cur: Any) -> int:
    cur.execute("SELECT COALESCE(SUM(registrations), 0) FROM registrations_per_window")
    return int(cur.fetchone()[0])


def wait_count(cur: Any, target: int, timeout: float = 120) -> float:
    deadline = time.time() + timeout
    while counted(cur) < target:
        if time.time() > deadline:
            raise SystemExit(f"count did not reach {target} within {timeout:.0f}s")
        time.sleep(0.02)
    return time.time()


def quantiles(xs: list[float]) -> dict[str, float]:
    q = statistics.quantiles(xs, n=100) if len(xs) > 1 else [xs[0]] * 99
    return {
        "p50_s": round(q[49], 2),
        "p95_s": round(q[94], 2),
        "p99_s": round(q[98], 2),
        "max_s": round(max(xs), 2),
        "samples": len(xs),
    }


def breakdown(af: Airflow, commits: list[float]) -> dict[str, float]:
    """Median of each stage, matching each commit to the first publish run queued after it."""
    runs = af.call("GET", "/dags/publish_cdc_events/dagRuns?limit=1000&order_by=run_after")[
        "dag_runs"
    ]
    runs.sort(key=lambda r: _ts(r.get("queued_at")) or 0)
    stages: dict[str, list[float]] = {"to_queued": [], "to_task_start": [], "task": []}
    for c in commits:
        run = next((r for r in runs if (_ts(r.get("queued_at")) or 0) >= c), None)
        if not run:
            continue
        ti = af.call(
            "GET",
            f"/dags/publish_cdc_events/dagRuns/{run['dag_run_id']}/taskInstances/publish_new_events",
        )
        queued, start, end = _ts(run["queued_at"]), _ts(ti["start_date"]), _ts(ti["end_date"])
        if None in (queued, start, end):
            continue
        stages["to_queued"].append(queued - c)
        stages["to_task_start"].append(start - queued)
        stages["task"].append(end - start)
    return {k: round(statistics.median(v), 2) for k, v in stages.items() if v}


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--singles", type=int, default=200)
    p.add_argument("--bursts", type=int, default=3)
    args = p.parse_args()
    s, af = whole_platform()
    cur = root_conn(s, config.DATABASE).cursor()
    base = counted(cur)
    cur.execute(
        "INSERT INTO customer (store_id, first_name, last_name, address_id, create_date)"
        " VALUES (1, 'Warm', 'Up', 1, UTC_TIMESTAMP())"
    )
    wait_count(cur, base + 1, timeout=300)  # the stream runs and the trigger is armed
    singles: list[float] = []
    commits: list[float] = []
    for k in range(args.singles):
        n = counted(cur)
        cur.execute(INSERT, (1 + k % 2,))
        commit = time.time()
        seen = wait_count(cur, n + 1)
        singles.append(seen - commit)
        commits.append(commit)
        if k % 20 == 0:
            print(f"single {k}: visible {singles[-1]:.2f}s after commit", flush=True)
        time.sleep(max(0.0, 1.0 - (time.time() - commit)))
    stages = breakdown(af, commits)
    bursts = []
    for b in range(args.bursts):
        n = counted(cur)
        cur.execute("START TRANSACTION")
        cur.executemany(INSERT, [(1 + i % 2,) for i in range(1000)])
        cur.execute("COMMIT")
        commit = time.time()
        took = wait_count(cur, n + 1000) - commit
        bursts += [took] * 1000
        print(f"burst {b}: 1,000 rows visible {took:.2f}s after commit", flush=True)
    single_q = quantiles(singles)
    burst_q = quantiles(bursts)
    report(
        "freshness_direct",
        {**single_q, "bursts": burst_q, "stages_median_s": stages, "target_p95_s": 5.0},
        f"direct INSERTs, {len(singles)} single rows at ~1/s: commit -> visible p50 "
        f"{single_q['p50_s']} s, p95 {single_q['p95_s']} s, p99 {single_q['p99_s']} s, max "
        f"{single_q['max_s']} s; {args.bursts} bursts of 1,000: p50 {burst_q['p50_s']} s, "
        f"max {burst_q['max_s']} s; median stages {stages}",
    )


if __name__ == "__main__":
    main()
