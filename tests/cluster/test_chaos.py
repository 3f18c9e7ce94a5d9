"""Chaos under load on the cluster profile: nodes of each distributed engine SIGKILLed while
writers insert customers (concurrent, some held open, some rolled back) and the DAGs run.
After each fault, with no manual step: every committed event id is in the topic, the counts
equal the SQL ground truth, and the stream job runs. Recovery times go to
artifacts/cluster_faults.json."""

from __future__ import annotations

import json
import os
import signal
import time
from collections.abc import Callable

import pytest

from stackctl import config, procs, services, supervisor
from stackctl.airflow_api import Airflow
from tests.cluster.conftest import Writers
from tests.conftest import (
    ARTIFACTS,
    event_ids_in_topic,
    root_conn,
    task_log_holders,
    wait_for,
)
from tests.e2e.conftest import running_task_log, running_try
from tests.support.streamjob import ground_truth, stream_counts

pytestmark = [pytest.mark.cluster, pytest.mark.e2e]

DB = config.DATABASE


def committed_ids(s: config.Settings) -> set[int]:
    cur = root_conn(s, DB).cursor()
    cur.execute("SELECT event_id FROM users_change_events")
    return {r[0] for r in cur.fetchall()}


def watermark(s: config.Settings) -> int:
    cur = root_conn(s, DB).cursor()
    cur.execute(
        "SELECT last_event_id FROM latest_cdc_timestamp WHERE pipeline = %s", (config.TOPIC,)
    )
    row = cur.fetchone()
    return int(row[0]) if row else 0


def stream_running(s: config.Settings) -> bool:
    cur = root_conn(s, DB).cursor()
    cur.execute(
        "SELECT COUNT(*) FROM stream_progress WHERE query_name = 'registration_counts' "
        "AND finished_at > UTC_TIMESTAMP(6) - INTERVAL 30 SECOND"
    )
    return cur.fetchone()[0] > 0


def converged(s: config.Settings, timeout: float = 420) -> None:
    """Every committed id in the topic, counts exact, the stream running."""
    wait_for(
        "every committed event id in the topic",
        lambda: committed_ids(s) <= set(event_ids_in_topic(s, config.TOPIC)),
        timeout,
        2,
    )
    wait_for(
        "counts == SQL ground truth",
        lambda: stream_counts(s, DB) == ground_truth(s, DB),
        timeout,
        1,
    )
    wait_for("the stream job running", lambda: stream_running(s), 120, 1)


def partition_leader(s: config.Settings, partition: int) -> str:
    from confluent_kafka.admin import AdminClient

    admin = AdminClient({"bootstrap.servers": s.kafka_bootstrap})
    meta = admin.list_topics(config.TOPIC, timeout=10).topics[config.TOPIC]
    return f"kafka-{meta.partitions[partition].leader}"


def running_tis(af: Airflow, dag_id: str, task_id: str) -> list[dict]:
    tis = af.call("GET", f"/dags/{dag_id}/dagRuns/~/taskInstances?state=running&limit=50")
    return [t for t in tis["task_instances"] if t["task_id"] == task_id]


def worker_running(s: config.Settings, task_id: str) -> str | None:
    """The Celery worker program whose processes hold the running task's log open."""
    for c in services.airflow_components(s):
        pid = supervisor.pid_of(s, f"airflow-{c}") if c.startswith("celery-worker") else None
        if pid and task_log_holders(services.descendants(pid), task_id):
            return f"airflow-{c}"
    return None


def sigkill_group(s: config.Settings, program: str) -> int:
    """A node's death: the program and every process in its group."""
    pid = supervisor.pid_of(s, program)
    assert pid, f"{program} is not running"
    os.killpg(pid, signal.SIGKILL)
    return pid


def sigkill_node(s: config.Settings, program: str) -> int:
    """A worker machine's death: the program's group and every process below it, including
    the task runners Airflow starts in process groups of their own (they would survive a
    kill of the worker's group alone, and a surviving publisher is not a dead one)."""
    pid = supervisor.pid_of(s, program)
    assert pid, f"{program} is not running"
    groups = {os.getpgid(p) for p in [pid, *services.descendants(pid)] if procs.alive(p)}
    for group in groups:
        os.killpg(group, signal.SIGKILL)
    return pid


def kafka_leader_down_then_two_down(s: config.Settings, af: Airflow) -> dict:
    wait_for(
        "a publish run",
        lambda: running_tis(af, "publish_cdc_events", "publish_new_events"),
        120,
        0.2,
    )
    first = partition_leader(s, 0)
    sigkill_group(s, first)
    supervisor.ctl(s, "stop", first)  # keep it down: supervisord would restart it at once
    before = watermark(s)
    wait_for("publishing to go on with one node down", lambda: watermark(s) >= before + 5, 240, 1)
    second = next(n for n in services.kafka_node_names(s) if n != first)
    supervisor.ctl(s, "stop", second)
    held = watermark(s)

    def retrying() -> str | None:
        text = running_task_log(af, "publish_cdc_events", "publish_new_events")
        return text if "publish failed" in text else None

    # the long-running publisher rides the outage out inside its run, logging each retry
    text = wait_for("the publisher logging a Kafka retry", retrying, 300, 2)
    # which step meets the outage first varies: registering the transactional producer (its
    # coordinator's log needs 2 in-sync replicas), the brokers, or the acknowledgements
    assert "Kafka" in text and any(
        why in text.lower() for why in ("acknowledg", "unreachable", "replicas", "coordinator")
    )
    assert watermark(s) == held
    supervisor.start(s, first)
    supervisor.start(s, second)
    wait_for(
        "Kafka nodes back",
        lambda: all(services.kafka_ready(s, n) for n in (first, second)),
        120,
        0.5,
    )
    return {"killed": first, "then_stopped": second, "watermark_held_at": held}


def kill_spark_worker(s: config.Settings, af: Airflow) -> dict:
    wait_for("micro-batches running", lambda: stream_running(s), 240, 1)
    name = services.spark_worker_names(s)[0]
    pid = sigkill_group(s, name)
    return {"killed": name, "pid": pid}


def kill_celery_worker_running_publish(s: config.Settings, af: Airflow) -> dict:
    name = wait_for(
        "a Celery worker running the publish task",
        lambda: worker_running(s, "publish_new_events"),
        180,
        0.05,
    )
    before = running_try(af, "publish_cdc_events", "publish_new_events")
    pid = sigkill_node(s, name)
    t0 = time.monotonic()
    # the dead try is failed by Airflow's heartbeat timeout (30 s) and retried on a live worker
    wait_for(
        "a new publisher try running",
        lambda: running_try(af, "publish_cdc_events", "publish_new_events") not in (None, before),
        120,
        1,
    )
    return {"killed": name, "pid": pid, "publisher_back_s": round(time.monotonic() - t0, 1)}


def kill_scheduler(s: config.Settings, af: Airflow) -> dict:
    pid = services.kill_program(s, "airflow-scheduler", signal.SIGKILL)
    return {"killed": "airflow-scheduler", "pid": pid}


FAULTS: list[tuple[str, Callable[[config.Settings, Airflow], dict]]] = [
    (
        "SIGKILL the Kafka node leading p0 during a publish; then a second node down",
        kafka_leader_down_then_two_down,
    ),
    ("SIGKILL a Spark worker during micro-batches", kill_spark_worker),
    (
        "SIGKILL the Celery worker running the publish task, with its task processes",
        kill_celery_worker_running_publish,
    ),
    ("SIGKILL the scheduler", kill_scheduler),
]


def test_every_fault_recovers_to_the_ground_truth(cluster) -> None:
    s, af = cluster
    wait_for("the stream job on the Spark cluster", lambda: stream_running(s), 300, 2)
    figures = []
    for name, fault in FAULTS:
        with Writers(s) as writers:
            wait_for("writers committing", lambda w=writers: w.committed >= 5, 60, 0.2)
            t0 = time.monotonic()
            info = fault(s, af)
            n = writers.committed
            wait_for(
                "more commits after the fault",
                lambda w=writers, n=n: w.committed >= n + 5,
                120,
                0.2,
            )
        converged(s)
        figures.append(
            {
                "fault": name,
                **info,
                "recovery_s": round(time.monotonic() - t0, 1),
                "committed": writers.committed,
                "rolled_back": writers.rolled_back,
            }
        )
        print(f"CLUSTER FAULT {figures[-1]}")
    ARTIFACTS.mkdir(exist_ok=True)
    (ARTIFACTS / "cluster_faults.json").write_text(json.dumps(figures, indent=2))
    assert len(figures) == len(FAULTS)
    assert all(supervisor.pid_of(s, p.name) for p in services.programs(s))
