"""Freshness for every writer: rows INSERTed straight into MySQL (no Airflow run triggered by
hand), on the default `make up` configuration (the long-running publisher, the stream job).

Measures commit -> count visible in `registrations_per_window`:
- single rows, one commit at a time at about 1/s (`--singles`, default 120);
- 100 rows/s, one row per commit, for `--rate-seconds` (default 30);
- bursts of 1,000 rows in one transaction (`--bursts`, default 3), each row's latency being
  the time until the whole burst is counted.
And, per single row, where the time goes: commit -> visible in Kafka (a read_committed
consumer of the topic), Kafka -> start of the micro-batch that counted it, that batch's
duration up to its MySQL commit (both from `stream_progress`), and the rest (this script's
10 ms poll). Also the publisher's Airflow runs: created during the benchmark, and per day.

Usage: python -m benchmarks.bench_freshness_direct [--singles 120] [--rate-seconds 30]
"""

from __future__ import annotations

import argparse
import json
import statistics
import threading
import time
from datetime import datetime, timezone
from typing import Any

from benchmarks.common import report, whole_platform
from stackctl import config
from stackctl.db import root_conn

INSERT = (
    "INSERT INTO customer (store_id, first_name, last_name, email, address_id, active, "
    "create_date) VALUES (%s, 'Bench', 'Direct', 'bench@example.org', 1, 1, UTC_TIMESTAMP())"
)
POLL_S = 0.01


def counted(cur: Any) -> int:
    cur.execute("SELECT COALESCE(SUM(registrations), 0) FROM registrations_per_window")
    return int(cur.fetchone()[0])


class Counts:
    """A thread polling the total count every 10 ms: (time, total) whenever it grows."""

    def __init__(self, s: config.Settings) -> None:
        self.cur = root_conn(s, config.DATABASE).cursor()
        self.samples: list[tuple[float, int]] = [(time.time(), counted(self.cur))]
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while not self.stop.is_set():
            n = counted(self.cur)
            if n != self.samples[-1][1]:
                self.samples.append((time.time(), n))
            time.sleep(POLL_S)

    def total(self) -> int:
        return self.samples[-1][1]

    def when_reached(self, target: int, timeout: float = 120) -> float:
        deadline = time.time() + timeout
        while time.time() < deadline:
            for t, n in self.samples:
                if n >= target:
                    return t
            time.sleep(POLL_S)
        raise SystemExit(f"the count did not reach {target} within {timeout:.0f}s")


class KafkaArrivals:
    """A read_committed consumer recording when each event id becomes visible."""

    def __init__(self, s: config.Settings) -> None:
        from confluent_kafka import Consumer

        self.seen: dict[int, float] = {}
        self.consumer = Consumer(
            {
                "bootstrap.servers": s.kafka_bootstrap,
                "group.id": f"bench-freshness-{time.time()}",
                "isolation.level": "read_committed",
                "auto.offset.reset": "latest",
                "enable.auto.commit": False,
                "fetch.wait.max.ms": 10,
            }
        )
        self.consumer.subscribe([config.TOPIC])
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while not self.stop.is_set():
            msg = self.consumer.poll(0.05)
            if msg is not None and not msg.error():
                self.seen[int(json.loads(msg.value())["event_id"])] = time.time()
        self.consumer.close()


def quantiles(xs: list[float]) -> dict[str, float]:
    q = statistics.quantiles(xs, n=100, method="inclusive") if len(xs) > 1 else [xs[0]] * 99
    return {
        "p50_s": round(q[49], 3),
        "p95_s": round(q[94], 3),
        "p99_s": round(q[98], 3),
        "max_s": round(max(xs), 3),
        "samples": len(xs),
    }


def commit_one(cur: Any, store: int) -> tuple[int, float]:
    cur.execute(INSERT, (store,))
    return int(cur.lastrowid), time.time()


def event_id_of(cur: Any, customer_id: int) -> int:
    cur.execute("SELECT event_id FROM users_change_events WHERE customer_id = %s", (customer_id,))
    return int(cur.fetchone()[0])


def batches(s: config.Settings, since: float) -> list[tuple[float, float]]:
    """(start, MySQL commit) of every non-empty micro-batch since `since`, epoch seconds."""
    cur = root_conn(s, config.DATABASE).cursor()
    cur.execute(
        "SELECT UNIX_TIMESTAMP(finished_at), duration_ms FROM stream_progress WHERE "
        "query_name = 'registration_counts' AND input_rows > 0 AND finished_at >= "
        "FROM_UNIXTIME(%s) ORDER BY finished_at",
        (since,),
    )
    return [(float(end) - (ms or 0) / 1000, float(end)) for end, ms in cur.fetchall()]


def stages(
    commits: list[float], in_kafka: list[float | None], seen: list[float], bs: list[tuple]
) -> dict[str, dict[str, float]]:
    out: dict[str, list[float]] = {"commit_to_kafka": [], "kafka_to_batch_start": [],
                                   "batch_to_mysql_commit": [], "mysql_commit_to_seen": []}  # fmt: skip
    for c, k, v in zip(commits, in_kafka, seen, strict=True):
        batch = next((b for b in bs if b[1] >= (k or c) and b[1] <= v + 0.05), None)
        if k is None or batch is None:
            continue
        out["commit_to_kafka"].append(k - c)
        out["kafka_to_batch_start"].append(max(0.0, batch[0] - k))
        out["batch_to_mysql_commit"].append(batch[1] - max(batch[0], k))
        out["mysql_commit_to_seen"].append(max(0.0, v - batch[1]))
    return {name: quantiles(xs) for name, xs in out.items() if xs}


def singles(s: config.Settings, cur: Any, counts: Counts, n: int) -> tuple[dict, dict]:
    arrivals = KafkaArrivals(s)
    counts.when_reached(counts.total())  # warm
    t_start = time.time()
    commits, ids, seen = [], [], []
    for k in range(n):
        before = counts.total()
        customer, commit = commit_one(cur, 1 + k % 2)
        seen.append(counts.when_reached(before + 1))
        commits.append(commit)
        ids.append(event_id_of(cur, customer))
        if k % 20 == 0:
            print(f"single {k}: counted {seen[-1] - commit:.3f}s after commit", flush=True)
        time.sleep(max(0.0, 1.0 - (time.time() - commit)))
    arrivals.stop.set()
    arrivals.thread.join(5)
    in_kafka = [arrivals.seen.get(i) for i in ids]
    lat = [v - c for v, c in zip(seen, commits, strict=True)]
    return quantiles(lat), stages(commits, in_kafka, seen, batches(s, t_start - 1))


def at_rate(cur: Any, counts: Counts, rate: int, seconds: int) -> dict:
    base = counts.total()
    commits = []
    t0 = time.time()
    for k in range(rate * seconds):
        time.sleep(max(0.0, t0 + k / rate - time.time()))
        commits.append(commit_one(cur, 1 + k % 2)[1])
    lat = [counts.when_reached(base + k + 1) - c for k, c in enumerate(commits)]
    return quantiles(lat)


def bursts(cur: Any, counts: Counts, n: int) -> dict:
    lat: list[float] = []
    for b in range(n):
        before = counts.total()
        cur.execute("START TRANSACTION")
        cur.executemany(INSERT, [(1 + i % 2,) for i in range(1000)])
        cur.execute("COMMIT")
        commit = time.time()
        took = counts.when_reached(before + 1000) - commit
        lat += [took] * 1000
        print(f"burst {b}: 1,000 rows counted {took:.2f}s after commit", flush=True)
    return quantiles(lat)


def publish_runs(af: Any, since: datetime) -> int:
    runs = af.call("GET", "/dags/publish_cdc_events/dagRuns?limit=1000")["dag_runs"]
    return sum(
        1 for r in runs if datetime.fromisoformat(r["run_after"].replace("Z", "+00:00")) >= since
    )


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--singles", type=int, default=120)
    p.add_argument("--rate", type=int, default=100)
    p.add_argument("--rate-seconds", type=int, default=30)
    p.add_argument("--bursts", type=int, default=3)
    args = p.parse_args()
    s, af = whole_platform()
    af.call("PATCH", "/dags/ingest_fake_customers", {"is_paused": True})  # only our rows
    try:
        run(s, af, args)
    finally:
        af.call("PATCH", "/dags/ingest_fake_customers", {"is_paused": False})


def run(s: config.Settings, af: Any, args: argparse.Namespace) -> None:
    from regstream import settings

    cur = root_conn(s, config.DATABASE).cursor()
    counts = Counts(s)
    cur.execute(INSERT, (1,))
    counts.when_reached(counts.total() + 1, timeout=300)  # the stream runs and has caught up
    started = datetime.now(timezone.utc)
    t0 = time.time()
    single_q, stage_q = singles(s, cur, counts, args.singles)
    rate_q = at_rate(cur, counts, args.rate, args.rate_seconds)
    burst_q = bursts(cur, counts, args.bursts)
    window = time.time() - t0
    runs = publish_runs(af, started)
    per_day = round(86400 / settings.current().publish_run_s)
    counts.stop.set()
    report(
        "freshness_direct",
        {
            **single_q,
            "at_100_per_s": rate_q,
            "bursts": burst_q,
            "stages_s": stage_q,
            "publish_runs_during_bench": runs,
            "bench_seconds": round(window),
            "publish_runs_per_day": per_day,
            "target_p95_s": 1.0,
            "target_p99_s": 2.0,
            "target_at_100_per_s_p95_s": 1.5,
        },
        f"direct INSERTs, {single_q['samples']} single rows at ~1/s: commit -> counted p50 "
        f"{single_q['p50_s']} s, p95 {single_q['p95_s']} s, p99 {single_q['p99_s']} s, max "
        f"{single_q['max_s']} s; at {args.rate}/s p95 {rate_q['p95_s']} s; bursts of 1,000 "
        f"p50 {burst_q['p50_s']} s; stage p50s "
        + ", ".join(f"{k} {v['p50_s']} s" for k, v in stage_q.items())
        + f"; publish runs: {runs} in {window:.0f} s, {per_day} a day by design",
    )


if __name__ == "__main__":
    main()
