"""The test profile's whole platform (Airflow on PostgreSQL under supervisord, beside MariaDB
and Kafka), started once per session, and helpers that only ever touch this profile's
processes."""

from __future__ import annotations

import os
import time
from collections.abc import Iterator

import pytest

from stackctl import __main__ as ctl
from stackctl import config, procs, services, supervisor
from stackctl.airflow_api import Airflow
from tests.conftest import task_log_holders, wait_for


@pytest.fixture(scope="session")
def platform(stack: config.Settings) -> Iterator[Airflow]:
    t0 = time.monotonic()
    services.start_airflow(stack)
    ctl.unpause_dags(stack)
    af = Airflow(stack)
    af.login()
    print(f"airflow up and DAGs unpaused in {time.monotonic() - t0:.0f}s")
    yield af


def counts_match(s: config.Settings, timeout: float = 240) -> float:
    """Seconds until the stream's counts equal the SQL ground truth for every window."""
    from tests.support.streamjob import ground_truth, stream_counts

    t0 = time.monotonic()
    wait_for(
        "stream counts == SQL ground truth for every window",
        lambda: stream_counts(s, config.DATABASE) == ground_truth(s, config.DATABASE),
        timeout,
        0.2,
    )
    return time.monotonic() - t0


def profile_pids_matching(s: config.Settings, pattern: str) -> list[int]:
    """This profile's processes whose command line holds `pattern` (never another profile's:
    `make test` runs beside a user's `make up`)."""
    return [p for p in services.profile_pids(s) if pattern in procs.cmdline(p) and p != os.getpid()]


def task_runner_pids(s: config.Settings, task_id: str) -> list[int]:
    """The task runner of a running task of this profile: the child of the process holding
    the task's log file open (its supervisor). Airflow 3 titles them by the TI's uuid."""
    mine = services.profile_pids(s)
    return procs.children(mine, set(task_log_holders(mine, task_id)))


def wait_restarted(s: config.Settings, program: str, old_pid: int, timeout: float = 60) -> float:
    """Seconds until supervisord has started `program` again under a new pid."""
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        st = supervisor.states(s).get(program)
        if st and st.pid and st.pid != old_pid and st.state in ("STARTING", "RUNNING"):
            return time.monotonic() - t0
        time.sleep(0.1)
    raise AssertionError(f"{program} (pid {old_pid} killed) not restarted in {timeout:.0f}s")


def running_run(af: Airflow, dag_id: str) -> dict | None:
    runs = af.call("GET", f"/dags/{dag_id}/dagRuns?state=running&limit=5")["dag_runs"]
    return runs[0] if runs else None


def stop_publisher(s: config.Settings, af: Airflow) -> None:
    """What an operator does to stop the long-running publisher: pause its DAG, then mark its
    running run failed (Airflow stops the task at its next heartbeat)."""
    af.call("PATCH", "/dags/publish_cdc_events", {"is_paused": True})
    run = running_run(af, "publish_cdc_events")
    if run is not None:
        af.call(
            "PATCH", f"/dags/publish_cdc_events/dagRuns/{run['dag_run_id']}", {"state": "failed"}
        )
    wait_for("no publisher running", lambda: running_run(af, "publish_cdc_events") is None, 60)
    wait_for(
        "the publisher task's processes gone",
        lambda: not task_runner_pids(s, "publish_new_events"),
        60,
        0.2,
    )


def start_publisher(af: Airflow) -> None:
    af.call("PATCH", "/dags/publish_cdc_events", {"is_paused": False})


def running_try(af: Airflow, dag_id: str, task_id: str) -> tuple[str, int] | None:
    """(run id, try number) of the running try of a task, None while none runs."""
    import urllib.parse

    run = running_run(af, dag_id)
    if run is None:
        return None
    q = urllib.parse.quote(run["dag_run_id"], safe="")
    ti = af.call("GET", f"/dags/{dag_id}/dagRuns/{q}/taskInstances/{task_id}")
    return (run["dag_run_id"], ti["try_number"]) if ti["state"] == "running" else None


def running_task_log(af: Airflow, dag_id: str, task_id: str) -> str:
    """The log of the running try of a long-running task ('' while none runs)."""
    current = running_try(af, dag_id, task_id)
    return "" if current is None else af.log(dag_id, current[0], task_id, current[1])
