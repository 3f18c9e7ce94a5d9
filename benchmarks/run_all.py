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
    "benchmarks.bench_freshness_asset",
    "benchmarks.bench_freshness_direct",
]

ROWS = [  # (benchmark, label, figure, baseline figure, target)
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
        "stream 2M events, sustained (events/s)",
        "events_per_s",
        None,
        ">= 50,000",
    ),
    (
        "stream_throughput",
        "stream 2M events, incl. cold first batch (events/s)",
        "events_per_s_with_cold_start",
        None,
        "",
    ),
    ("freshness", "commit -> visible p50 / p95 / p99 (s)", None, None, "p95 < 3 s"),
    ("freshness_asset", "commit -> visible p50 / p95 / p99 (s)", None, None, "p95 < 10 s"),
    (
        "freshness_direct",
        "direct INSERT -> visible p50 / p95 / p99 (s)",
        None,
        None,
        "p95 <= 5 s (stretch 3 s)",
    ),
]


def main() -> None:
    results: dict[str, dict] = {}
    env = dict(os.environ)
    t0 = time.monotonic()
    for script in SCRIPTS:
        res = subprocess.run(
            [sys.executable, "-m", script], cwd=ROOT, capture_output=True, text=True, env=env
        )
        for line in res.stdout.splitlines():
            if line.startswith("{") and '"benchmark"' in line:
                d = json.loads(line)
                results[d["benchmark"]] = d
            elif ": " in line and not line.startswith("{"):
                print(line)
        if res.returncode != 0:
            print(f"{script} FAILED:\n{res.stderr[-3000:]}", file=sys.stderr)
    write(results, round(time.monotonic() - t0))


def write(results: dict[str, dict], seconds: int) -> None:
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
        f"Measured {out['date']} on {m['cpus']} cores, {m['memory_gib']} GiB, {m['cpu']}, "
        f"Python {m['python']}.",
        "",
        "| benchmark | result | baseline | target |",
        "|---|---|---|---|",
    ]
    for bench, label, key, base, target in ROWS:
        r = results.get(bench)
        if r is None:
            lines.append(f"| {label} | not run | | {target} |")
            continue
        if bench.startswith("freshness"):
            mode = r.get("mode", "event-driven publisher, single rows at ~1/s")
            val = f"{r['p50_s']} / {r['p95_s']} / {r['p99_s']} ({mode})"
        else:
            val = f"{r[key]:,}"
        lines.append(f"| {label} | {val} | {f'{r[base]:,}' if base else ''} | {target} |")
    (ROOT / "benchmarks" / "results.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
