"""`make bench`: run every benchmark in one go and write the table (markdown and JSON).

Each script prints JSON lines ({"benchmark": ...}) and a human line; this collects the JSON
into benchmarks/results.json and benchmarks/results.md with the machine's description.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from datetime import datetime, timezone

from benchmarks.common import ROOT, machine

SCRIPTS = [
    "benchmarks.bench_ingest",
    "benchmarks.bench_publish",
    "benchmarks.bench_stream",
    "benchmarks.bench_freshness_direct",
    "benchmarks.bench_idle",
]

ROWS = [  # (benchmark, label, figure, baseline figure, target)
    (
        "idle_cpu",
        "idle: publisher + stream CPU (% of one core)",
        "total_pct_of_core",
        None,
        "<= 5 %",
    ),
    (
        "ingest",
        "ingest 200k customers (customers/s)",
        "customers_per_s",
        "baseline_customers_per_s",
        ">= 10,000 and >= 0.5 x baseline",
    ),
    (
        "publish",
        "publish 1M CDC events (events/s)",
        "events_per_s",
        "baseline_events_per_s",
        ">= 100,000 and >= 0.5 x baseline",
    ),
    ("publish", "publish peak memory (MiB)", "max_rss_mib", "baseline_max_rss_mib", "bounded"),
    (
        "stream_throughput",
        "stream 2M events, sustained (events/s); baseline: one Python consumer",
        "events_per_s",
        "baseline_events_per_s",
        ">= 150,000",
    ),
    ("stream_throughput", "stream cold first batch (ms)", "cold_first_batch_ms", None, ""),
    ("stream_throughput", "stream job RSS (MiB)", "job_rss_mib", None, "bounded"),
    (
        "stream_history",
        "stream 1M new events after 10M vs none: throughput ratio",
        "throughput_ratio",
        None,
        ">= 0.8",
    ),
    (
        "stream_history",
        "stream 1M new events after 10M vs none: batch p95 ratio",
        "batch_p95_ratio",
        None,
        "<= 1.25",
    ),
    (
        "stream_throughput",
        "stream 2M events, incl. cold first batch (events/s)",
        "events_per_s_with_cold_start",
        None,
        "",
    ),
    (
        "publish",
        "publish 1M, long-running loop, 50k-event transactions (events/s)",
        "loop_events_per_s",
        None,
        "within 10% of the single-transaction run",
    ),
    (
        "freshness_direct",
        "direct INSERT -> counted p50 / p95 / p99 (s)",
        None,
        None,
        "single rows p95 <= 1.0 s, p99 <= 2.0 s; 100 rows/s p95 <= 1.5 s",
    ),
]


def main() -> None:
    """All benchmarks, or `--only <module> ...`: those, merged into the results of the others
    (each result keeps the date it was measured)."""
    only = sys.argv[sys.argv.index("--only") + 1 :] if "--only" in sys.argv else None
    results: dict = {}
    if only:
        results = json.loads((ROOT / "benchmarks" / "results.json").read_text())["results"]
    env = dict(os.environ)
    t0 = time.monotonic()
    today = datetime.now(timezone.utc).date().isoformat()
    for script in only or SCRIPTS:
        res = subprocess.run(
            [sys.executable, "-m", script], cwd=ROOT, capture_output=True, text=True, env=env
        )
        for line in res.stdout.splitlines():
            if line.startswith("{") and '"benchmark"' in line:
                d = json.loads(line)
                results[d["benchmark"]] = {**d, "measured_on": today}
            elif ": " in line and not line.startswith("{"):
                print(line)
        if res.returncode != 0:
            print(f"{script} FAILED:\n{res.stderr[-3000:]}", file=sys.stderr)
    if "freshness_direct" in results:  # the figure, where it looks for it
        results["publish_runs_per_day"] = results["freshness_direct"]["publish_runs_per_day"]
    write(results, round(time.monotonic() - t0))


HAND_MARKER = "<!-- figures measured by hand below: make bench keeps them -->"


def write(results: dict, seconds: int) -> None:
    """results.json and the results.md table (also used to merge a single benchmark's run)."""
    out = {
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "machine": machine(),
        "seconds": seconds,
        "results": results,
    }
    (ROOT / "benchmarks" / "results.json").write_text(json.dumps(out, indent=2) + "\n")
    m = out["machine"]
    lines = [
        "# Benchmark results",
        "",
        f"Measured {out['date']} on {m['cpus']} cores, {m['memory_gib']} GiB, {m['cpu']}, "
        f"Python {m['python']}.",
        "",
        "| benchmark | result | baseline | target | measured on |",
        "|---|---|---|---|---|",
    ]
    for bench, label, key, base, target in ROWS:
        r = results.get(bench)
        if r is None:
            lines.append(f"| {label} | not run | | {target} | |")
            continue
        if bench.startswith("freshness"):
            mode = r.get("mode", "long-running publisher, single rows at ~1/s")
            val = f"{r['p50_s']} / {r['p95_s']} / {r['p99_s']} ({mode})"
        else:
            val = f"{r[key]:,}"
        baseline = f"{r[base]:,}" if base and base in r else ""
        when = r.get("measured_on", "before 2026-11-26")
        lines.append(f"| {label} | {val} | {baseline} | {target} | {when} |")
    md = ROOT / "benchmarks" / "results.md"
    # The figures measured by hand (fresh-clone suite, faults, memory) follow the marker and
    # are kept: only the generated table above it is rewritten.
    kept = md.read_text().partition(HAND_MARKER)[2] if md.exists() else ""
    md.write_text("\n".join(lines) + "\n\n" + HAND_MARKER + kept)
    print("\n".join(lines))


if __name__ == "__main__":
    main()
