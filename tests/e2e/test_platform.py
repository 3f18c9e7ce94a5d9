"""The whole platform driven as a user drives it: Airflow's REST API and CLI only.

Starts the test profile's Airflow (api-server, scheduler, dag-processor, triggerer on
PostgreSQL, under supervisord) beside MariaDB and Kafka, unpauses the DAGs, and checks results
against the SQL ground truth. Each test triggers what it needs; the fault test prints its
figures. No call is retried: a 5xx fails the test.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import threading
import time
from collections.abc import Callable
from datetime import datetime, timedelta, timezone

import pytest

from stackctl import config, procs, services, supervisor
from stackctl.airflow_api import AirflowAPIError
from tests.conftest import ARTIFACTS, root_conn, wait_for
from tests.e2e.conftest import (
    counts_match,
    profile_pids_matching,
    running_task_log,
    task_runner_pids,
    wait_restarted,
)
from tests.support.streamjob import stream_counts

pytestmark = pytest.mark.e2e

DB = config.DATABASE
NOW = datetime.now(timezone.utc).replace(second=0, microsecond=0)
BASE = NOW.replace(minute=NOW.minute - NOW.minute % 5) - timedelta(days=2)


def stream_running(stack) -> bool:
    cur = root_conn(stack, DB).cursor()
    cur.execute(
        "SELECT COUNT(*) FROM stream_progress WHERE query_name = 'registration_counts' "
        "AND finished_at > UTC_TIMESTAMP(6) - INTERVAL 20 SECOND"
    )
    return cur.fetchone()[0] > 0


def test_triggered_runs_flow_into_window_counts(stack, platform) -> None:
    wait_for(
        "the streaming job (submitted by Airflow) to run batches",
        lambda: stream_running(stack),
        timeout=240,
        every=2,
    )
    runs = [
        platform.trigger("ingest_fake_customers", BASE + timedelta(minutes=5 * k))
        for k in range(1, 4)
    ]
    for run in runs:
        assert platform.wait_run("ingest_fake_customers", run) == "success"
    counts_match(stack)
    got = stream_counts(stack, DB)
    assert sum(got.values()) >= 60


def test_task_logs_say_what_happened(stack, platform) -> None:
    run = platform.trigger("ingest_fake_customers", BASE + timedelta(minutes=40))
    assert platform.wait_run("ingest_fake_customers", run) == "success"
    counts_match(stack)
    text = platform.log("ingest_fake_customers", run, "insert_fake_customers")
    assert "inserted 20 customers, ids" in text and "per store" in text

    def summary() -> str | None:
        text = running_task_log(platform, "publish_cdc_events", "publish_new_events")
        return text if re.search(r"published \d+ events in \d+ transactions", text) else None

    # the long-running publisher's summary line (every REGSTREAM_PUBLISH_SUMMARY_S, 5 s here)
    text = wait_for("a publisher summary line with events", summary, 90, 1)
    assert "publishing continuously for" in text and "probe every 100 ms" in text
    assert re.search(r"watermark \d+ -> \d+", text) and "capture->acked p50" in text
    assert '"level": "error"' not in text


def test_backfill_fills_past_intervals_once(stack, platform) -> None:
    start = BASE - timedelta(days=1)
    end = start + timedelta(minutes=10)  # three runs: start, +5, +10
    env = services.airflow_env(stack)
    cmd = [
        str(stack.venv / "bin" / "airflow"),
        "backfill",
        "create",
        "--dag-id",
        "ingest_fake_customers",
        "--from-date",
        start.isoformat(),
        "--to-date",
        end.isoformat(),
    ]
    res = subprocess.run(cmd, env=env, capture_output=True, text=True, cwd=stack.run)
    assert res.returncode == 0, res.stderr[-2000:]
    cur = root_conn(stack, DB).cursor()
    # runs' logical dates (interval starts) span from..to: intervals [from, to + 5 min)
    lo, hi = start.replace(tzinfo=None), (end + timedelta(minutes=5)).replace(tzinfo=None)

    def landed() -> bool:
        cur.execute(
            "SELECT COUNT(*) FROM ingest_batches WHERE interval_start >= %s AND interval_end <= %s",
            (lo, hi),
        )
        return cur.fetchone()[0] == 3

    wait_for("three backfilled intervals", landed, timeout=240, every=1)
    cur.execute(
        "SELECT COUNT(*) FROM customer WHERE create_date >= %s AND create_date < %s", (lo, hi)
    )
    assert cur.fetchone()[0] == 60
    cur.execute(
        "SELECT MIN(c.create_date) >= b.interval_start AND MAX(c.create_date) < "
        "b.interval_end FROM ingest_batches b JOIN customer c ON c.customer_id BETWEEN "
        "b.first_customer_id AND b.last_customer_id WHERE b.interval_start >= %s "
        "AND b.interval_end <= %s GROUP BY b.batch_key",
        (lo, hi),
    )
    assert [r[0] for r in cur.fetchall()] == [1, 1, 1]
    # the same backfill again adds nothing: Airflow refuses it (its runs exist) or reruns them
    again = subprocess.run(cmd, env=env, capture_output=True, text=True, cwd=stack.run)
    assert again.returncode == 0 or "already" in (again.stdout + again.stderr).lower(), (
        again.stderr[-2000:]
    )
    counts_match(stack)
    cur.execute(
        "SELECT COUNT(*) FROM customer WHERE create_date >= %s AND create_date < %s", (lo, hi)
    )
    assert cur.fetchone()[0] == 60
    past = {k: v for k, v in stream_counts(stack, DB).items() if lo <= k[0] < hi}
    assert sum(past.values()) == 60


def test_clearing_a_run_doubles_nothing(stack, platform) -> None:
    first = platform.trigger("ingest_fake_customers", BASE + timedelta(minutes=50))
    assert platform.wait_run("ingest_fake_customers", first) == "success"
    cur = root_conn(stack, DB).cursor()
    cur.execute("SELECT COUNT(*) FROM customer")
    before = cur.fetchone()[0]
    run = {"dag_run_id": first}
    platform.call(
        "POST",
        "/dags/ingest_fake_customers/clearTaskInstances",
        {
            "dry_run": False,
            "dag_run_id": run["dag_run_id"],
            "only_failed": False,
            "reset_dag_runs": True,
        },
    )
    wait_for(
        "the cleared run to run again",
        lambda: (
            platform.run_state("ingest_fake_customers", run["dag_run_id"]) in ("queued", "running")
        ),
        60,
        0.5,
    )
    assert platform.wait_run("ingest_fake_customers", run["dag_run_id"]) == "success"
    text = platform.log("ingest_fake_customers", run["dag_run_id"], "insert_fake_customers", 2)
    assert "already loaded" in text and "inserted 0" in text
    cur.execute("SELECT COUNT(*) FROM customer")
    assert cur.fetchone()[0] == before
    counts_match(stack)


class Load:
    """Ingest runs triggered every few seconds from a daemon thread, stopped in `finally`."""

    def __init__(self, platform, slots) -> None:
        self.platform, self.slots = platform, slots
        self.triggered: list[str] = []
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self.stop.is_set():
            when = BASE - timedelta(days=3) + timedelta(minutes=5 * next(self.slots))
            try:
                run = self.platform.trigger("ingest_fake_customers", when, {"customers": 50})
                self.triggered.append(run)
            except (AirflowAPIError, OSError):
                pass  # the API server may be restarting: the next round tries again
            self.stop.wait(3)

    def __enter__(self) -> Load:
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop.set()
        self.thread.join(timeout=30)


def _kill_program(stack, program: str, check: Callable[[], bool]) -> Callable[[], dict]:
    def action() -> dict:
        pid = services.kill_program(stack, program, signal.SIGKILL)
        back = wait_restarted(stack, program, pid)
        wait_for(f"{program} to serve again", check, 120, 0.2)
        return {"killed_pid": pid, "restarted_s": round(back, 1)}

    return action


def _started(pids: list[int]) -> dict[int, str]:
    """pid -> start time, to tell a process from a later one with the same pid."""
    out = {}
    for pid in pids:
        try:
            out[pid] = procs.stat_fields(pid)[19]
        except (OSError, IndexError):
            continue
    return out


def _alive(started: dict[int, str]) -> list[int]:
    now = _started(list(started))
    return [p for p, t in started.items() if now.get(p) == t]


def _drivers(stack, under: int | None = None) -> list[int]:
    """The stream job's driver processes; with `under`, only those below that process."""
    pids = profile_pids_matching(stack, "registration_counts.py")
    if under is None:
        return pids
    below = set(services.descendants(under))
    return [p for p in pids if p in below]


def test_faults_during_steady_load_recover_to_ground_truth(stack, platform) -> None:
    """SIGKILL each part while ingest runs arrive every 3 s; supervisord (or Airflow, for a
    task or the Spark job) brings it back, and the counts end equal to the SQL truth."""
    slots = iter(range(100, 10_000))
    figures = []

    def fault(name: str, action: Callable[[], dict]) -> None:
        with Load(platform, slots) as load:
            wait_for("steady load", lambda: len(load.triggered) >= 2, 60)
            n0 = len(load.triggered)
            t0 = time.monotonic()
            info = action()
            wait_for("more load after the fault", lambda: len(load.triggered) >= n0 + 3, 180)
        for run in list(load.triggered):
            platform.wait_run("ingest_fake_customers", run, timeout=300)
        counts_match(stack, timeout=420)
        figures.append({"fault": name, **info, "recovery_s": round(time.monotonic() - t0, 1)})
        print(f"FAULT {figures[-1]}")

    def sigkill_once_found(what: str, find: Callable[[], list[int]], every: float) -> dict:
        pids = wait_for(what, find, 120, every)
        for pid in pids:
            os.kill(pid, signal.SIGKILL)
        return {"killed_pid": pids}

    def kill_publisher() -> dict:
        return sigkill_once_found(
            "a running publish task", lambda: task_runner_pids(stack, "publish_new_events"), 0.05
        )

    def kill_spark_driver() -> dict:
        return sigkill_once_found(
            "the Spark driver", lambda: profile_pids_matching(stack, "registration_counts.py"), 0.5
        )

    def health_ok() -> bool:
        return services.airflow_healthy(stack)

    def kill_scheduler() -> dict:
        """LocalExecutor: the tasks (the Spark driver among them) are the scheduler's
        children. None of them may run on without it (the orphaned driver held the stream's
        lock and no retry could start), and the stream must run again as an Airflow task."""
        wait_for("the Spark driver", lambda: _drivers(stack), 240, 0.5)
        old = supervisor.pid_of(stack, "airflow-scheduler")
        assert old
        tree = _started(services.descendants(old))
        info = _kill_program(stack, "airflow-scheduler", health_ok)()
        t0 = time.monotonic()
        wait_for("the killed scheduler's processes to end", lambda: not _alive(tree), 60, 0.5)
        left_s = time.monotonic() - t0
        wait_for(
            "a Spark driver started by the new scheduler's task",
            lambda: _drivers(stack, under=supervisor.pid_of(stack, "airflow-scheduler")),
            240,
            0.5,
        )
        return {**info, "its_processes": len(tree), "they_ended_s": round(left_s, 1)}

    fault("kill publisher task", kill_publisher)
    fault("SIGKILL scheduler", kill_scheduler)
    fault("SIGKILL triggerer", _kill_program(stack, "airflow-triggerer", health_ok))
    fault(
        "SIGKILL Kafka", _kill_program(stack, "kafka", lambda: services.port_open(stack.kafka_port))
    )
    fault("SIGKILL MariaDB", _kill_program(stack, "mariadb", lambda: services.mysql_ready(stack)))
    fault("SIGKILL Spark driver", kill_spark_driver)
    ARTIFACTS.mkdir(exist_ok=True)
    (ARTIFACTS / "faults.json").write_text(json.dumps(figures, indent=2))
    assert len(figures) == 6
    assert all(supervisor.pid_of(stack, p.name) for p in services.programs(stack))


def test_live_view_shows_the_right_numbers(stack, platform) -> None:
    """A user logged in through Airflow's own login form opens the page from Airflow's
    navigation; every number in its table equals the SQL ground truth."""
    from tests.support.browser import logged_in_page

    platform.call("PATCH", "/dags/ingest_fake_customers", {"is_paused": True})
    try:
        counts_match(stack)
        cur = root_conn(stack, DB).cursor()
        cur.execute(
            "SELECT FROM_UNIXTIME(FLOOR(UNIX_TIMESTAMP(create_date) / 300) * 300) AS ws, "
            "store_id, COUNT(*) FROM customer GROUP BY ws, store_id ORDER BY ws DESC"
        )
        truth = {(ws.isoformat() + "Z", str(store)): n for ws, store, n in cur.fetchall()}
        with logged_in_page(stack) as page:
            # from Airflow's navigation, as a user finds it (exact: the home page's asset
            # links, present once assets have events, have names that contain the word)
            page.get_by_test_id("nav-sidebar").get_by_role(
                "link", name="Registrations", exact=True
            ).click()
            page.wait_for_url("**/plugin/registrations")
            frame = page.wait_for_selector(
                "iframe[src*='/regstream/']", timeout=60_000
            ).content_frame()
            frame.wait_for_selector("tr[data-window]", timeout=30_000)
            rows = frame.eval_on_selector_all(
                "tr[data-window]",
                "trs => trs.map(tr => [tr.dataset.window, [...tr.querySelectorAll("
                "'td[data-store]')].map(td => [td.dataset.store, td.textContent])])",
            )
            assert rows
            for window, cells in rows:
                for store, value in cells:
                    assert int(value) == truth.get((window, store), 0), (window, store)
            html = frame.content()
            assert 'data-metric="watermark age"' in html and 'data-metric="stream lag"' in html
            ARTIFACTS.mkdir(exist_ok=True)
            shot = ARTIFACTS / "liveview.png"
            page.screenshot(path=str(shot), full_page=True)
            assert shot.stat().st_size > 10_000
    finally:
        platform.call("PATCH", "/dags/ingest_fake_customers", {"is_paused": False})
