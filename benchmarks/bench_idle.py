"""Idle cost of the live path: with nothing written, the CPU the long-running publisher and the
stream job (its spark-submit, driver JVM and Python) use, from /proc (utime + stime) over
`--seconds` (default 60), as a share of one core. Target: both together at most 5 %.

Usage: python -m benchmarks.bench_idle [--seconds 60]
"""

from __future__ import annotations

import argparse
import os
import time

from benchmarks.common import report, whole_platform
from stackctl import config, procs, services
from stackctl.db import root_conn

TICKS = os.sysconf("SC_CLK_TCK")


def cpu_s(pids: list[int]) -> float:
    total = 0
    for pid in pids:
        try:
            f = procs.stat_fields(pid)
        except OSError:
            continue  # ended meanwhile
        total += int(f[11]) + int(f[12])  # utime, stime (fields 14, 15 of /proc/PID/stat)
    return total / TICKS


def task_tree(s: config.Settings, task_id: str) -> list[int]:
    """The processes of a running task: its supervisor (holding the log open) and below."""
    mine = services.profile_pids(s)
    holders = procs.holding(mine, f"task_id={task_id}/")
    return sorted({p for h in holders for p in [h, *procs.descendants(h)]})


def wait_idle(s: config.Settings, quiet_s: float = 10) -> None:
    """Until no event arrived for `quiet_s` and both tasks run."""
    cur = root_conn(s, config.DATABASE).cursor()
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline:
        cur.execute("SELECT TIMESTAMPDIFF(SECOND, MAX(captured_at), UTC_TIMESTAMP(6)) FROM "
                    "users_change_events")  # fmt: skip
        age = cur.fetchone()[0]
        running = task_tree(s, "publish_new_events") and task_tree(s, "run_streaming_job")
        if running and (age is None or age >= quiet_s):
            return
        time.sleep(1)
    raise SystemExit("the platform did not settle into idle within 10 minutes")


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--seconds", type=float, default=60)
    args = p.parse_args()
    s, af = whole_platform()
    af.call("PATCH", "/dags/ingest_fake_customers", {"is_paused": True})
    try:
        wait_idle(s)
        pub, stream = task_tree(s, "publish_new_events"), task_tree(s, "run_streaming_job")
        before = (cpu_s(pub), cpu_s(stream))
        t0 = time.monotonic()
        time.sleep(args.seconds)  # the measurement window itself
        took = time.monotonic() - t0
        after = (cpu_s(pub), cpu_s(stream))
    finally:
        af.call("PATCH", "/dags/ingest_fake_customers", {"is_paused": False})
    pub_pct = 100 * (after[0] - before[0]) / took
    stream_pct = 100 * (after[1] - before[1]) / took
    report(
        "idle_cpu",
        {
            "seconds": round(took),
            "publisher_pct_of_core": round(pub_pct, 2),
            "stream_pct_of_core": round(stream_pct, 2),
            "total_pct_of_core": round(pub_pct + stream_pct, 2),
            "publisher_processes": len(pub),
            "stream_processes": len(stream),
            "target_total_pct": 5.0,
        },
        f"idle for {took:.0f}s: publisher {pub_pct:.2f}% + stream {stream_pct:.2f}% = "
        f"{pub_pct + stream_pct:.2f}% of one core (target <= 5%)",
    )


if __name__ == "__main__":
    main()
