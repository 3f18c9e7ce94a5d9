"""CDC publish: 1,000,000 events from users_change_events to Kafka, against a baseline.

Usage: .state/venv/bin/python -m benchmarks.bench_publish [--events 1000000]

Measured, each in its own process so peak memory (max RSS) is its own:
  publish   the task's path (regstream.publish.HookedPublisher.run): fence, read the watermark
            from Kafka, streamed read (server-side cursor), produce in one Kafka transaction,
            flush, every delivery acknowledged, commit with the watermark, MySQL copy.
  loop      the long-running publisher's path (regstream.publish_loop.Loop) catching up on the
            same rows in transactions of REGSTREAM_PUBLISH_TXN_MAX_EVENTS (default 50,000).
  baseline  the same payloads, read into memory first (not timed), produced with the same
            producer settings (acks=all, idempotence, lz4) and flushed: the producer's ceiling.
Target: >= 100,000 events/s and >= half the baseline's rate, memory bounded.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time

from benchmarks.common import drop, fresh, report, stack
from stackctl.db import root_conn


def fill(s, database: str, n: int) -> None:
    """n CDC rows, written directly (the trigger path is measured by bench_ingest)."""
    cur = root_conn(s, database).cursor()
    cur.execute(
        "INSERT INTO users_change_events (event_type, customer_id, store_id, first_name, "
        "last_name, email, address_id, create_date, captured_at) VALUES "
        + ", ".join(
            f"('customer_registered', {i}, {1 + i % 2}, 'MARY', 'SMITH', "
            f"'MARY.SMITH.{i:06x}@sakilacustomer.org', {i}, "
            f"'2026-11-01 00:00:00' + INTERVAL {i % 86400} SECOND, UTC_TIMESTAMP(6))"
            for i in range(1, 1001)
        )
    )
    have = 1000
    while have < n:
        take = min(have, n - have)
        cur.execute(
            "INSERT INTO users_change_events (event_type, customer_id, store_id, first_name, "
            "last_name, email, address_id, create_date, captured_at) SELECT event_type, "
            f"customer_id + {have}, store_id, first_name, last_name, email, address_id + {have}, "
            f"create_date, captured_at FROM users_change_events ORDER BY event_id LIMIT {take}"
        )
        have += take


def child(mode: str, n: int) -> None:
    from confluent_kafka import Producer
    from regstream import db, publish, settings
    from regstream.messages import SELECT_EVENTS, message_key

    conn = db.connect("mysql_publisher")
    bootstrap = json.loads(__import__("os").environ["AIRFLOW_CONN_KAFKA_DEFAULT"])["extra"][
        "bootstrap.servers"
    ]
    topic = settings.topic() + ("" if mode == "publish" else f"_{mode}")
    from confluent_kafka.admin import AdminClient

    publish.ensure_topic(AdminClient({"bootstrap.servers": bootstrap}), topic, 2, 1, bootstrap)
    if mode == "publish":  # the task's path: one Kafka transaction with the watermark
        pub = publish.HookedPublisher(topic=topic)
        t0 = time.monotonic()
        r = pub.run(max_events=n)
        secs = time.monotonic() - t0
        pub.close()
        sent = r.published
    elif mode == "loop":
        from regstream.publish_loop import Loop, LoopSettings

        loop = Loop(LoopSettings.current(), connect=lambda: publish.HookedPublisher(topic=topic))
        t0 = time.monotonic()
        sent = transactions = 0
        while sent < n:
            if time.monotonic() - t0 > 600:
                raise SystemExit(f"loop published {sent} of {n} events in 600 s")
            step = loop.step()
            sent += step.published if step else 0
            transactions += 1 if step and step.published else 0
        secs = time.monotonic() - t0
        loop.drop()
    else:
        producer = Producer(publish.producer_config(bootstrap))
        cur = conn.cursor()
        cur.execute(SELECT_EVENTS + " ORDER BY event_id")
        rows = [(message_key(store), value) for _, store, value in cur.fetchall()]
        d = publish.Deliveries()
        t0 = time.monotonic()
        sent = publish.produce_all(producer, topic, rows, d)
        publish.flush_or_fail(producer, sent, d, bootstrap, 120)
        secs = time.monotonic() - t0
    rss_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps({"sent": sent, "seconds": secs, "max_rss_mib": rss_mib}))


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        child(sys.argv[2], int(sys.argv[3]))
        return
    p = argparse.ArgumentParser()
    p.add_argument("--events", type=int, default=1_000_000)
    n = p.parse_args().events
    s = stack()
    database, topic = fresh(s)
    t0 = time.monotonic()
    fill(s, database, n)
    fill_s = time.monotonic() - t0
    out = {}
    for mode in ("publish", "loop", "baseline"):
        res = subprocess.run(
            [sys.executable, "-m", "benchmarks.bench_publish", "--child", mode, str(n)],
            capture_output=True,
            text=True,
        )
        if res.returncode != 0:
            raise SystemExit(f"{mode} failed:\n{res.stderr[-3000:]}")
        out[mode] = json.loads(res.stdout.strip().splitlines()[-1])
    drop(s, database)
    pub, loop, base = out["publish"], out["loop"], out["baseline"]
    assert pub["sent"] == n and loop["sent"] == n and base["sent"] == n, out
    rate, base_rate = n / pub["seconds"], n / base["seconds"]
    loop_rate = n / loop["seconds"]
    report(
        "publish",
        {
            "events": n,
            "seconds": round(pub["seconds"], 2),
            "events_per_s": round(rate),
            "max_rss_mib": round(pub["max_rss_mib"]),
            "baseline_seconds": round(base["seconds"], 2),
            "baseline_events_per_s": round(base_rate),
            "baseline_max_rss_mib": round(base["max_rss_mib"]),
            "ratio_to_baseline": round(rate / base_rate, 2),
            "loop_seconds": round(loop["seconds"], 2),
            "loop_events_per_s": round(loop_rate),
            "loop_max_rss_mib": round(loop["max_rss_mib"]),
            "fill_seconds": round(fill_s, 1),
            "target_events_per_s": 100_000,
            "target_ratio": 0.5,
        },
        f"{n:,} events in {pub['seconds']:.1f}s = {rate:,.0f}/s, max RSS "
        f"{pub['max_rss_mib']:.0f} MiB; baseline from memory {base_rate:,.0f}/s "
        f"({base['max_rss_mib']:.0f} MiB); ratio {rate / base_rate:.2f}; long-running loop "
        f"(bounded transactions) {loop_rate:,.0f}/s, {loop['max_rss_mib']:.0f} MiB",
    )


if __name__ == "__main__":
    main()
