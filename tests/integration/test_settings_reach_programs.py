"""A platform setting the user sets reaches every supervised Airflow program unchanged: the
test profile is started the way `make up` starts it (supervisord from this process's
environment, `stackctl exec` per component) with every REGSTREAM_* of the table set to a value
that is not its default; then each program's real environment (/proc/<pid>/environ) is read,
and the stream DAG, parsed in the scheduler's environment, submits the job with that window."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from stackctl import config, services, supervisor
from tests.conftest import export_profile_env, stop_profile, wipe_profile
from tests.support.settings_values import NON_DEFAULTS

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]


USER = NON_DEFAULTS


def _environ(pid: int) -> dict[str, str]:
    """The real environment of a program: its main process's, or, when that process wrote its
    title over its environ area (setproctitle: Airflow's do), the first of its processes
    whose environ is intact (they all start from the same one)."""
    for p in services.descendants(pid):
        try:
            raw = Path(f"/proc/{p}/environ").read_bytes().decode(errors="replace")
        except OSError:
            continue
        env = dict(item.split("=", 1) for item in raw.split("\0") if "=" in item)
        if services.MARK in env:
            return env
    raise AssertionError(f"no process of pid {pid}'s tree has an intact environment")


@pytest.fixture(scope="module")
def started(stack: config.Settings) -> Iterator[config.Settings]:
    """The test profile's Airflow under supervisord, started with the user's settings; then
    the session's data services again, as the `stack` fixture left them for later tests."""
    settings = stack
    wipe_profile(settings)
    saved = {name: os.environ.get(name) for name in USER}
    os.environ.update(USER)
    try:
        services.start_supervisor(settings)
        services.start_airflow(settings)
        yield settings
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
        stop_profile(settings)
        wipe_profile(settings)
        services.start_data_services(settings)
        export_profile_env(settings)


def test_every_setting_reaches_every_airflow_program_unchanged(started) -> None:
    components = services.airflow_components(started)
    assert {"scheduler", "api-server", "dag-processor", "triggerer"} <= set(components)
    for component in components:
        pid = supervisor.pid_of(started, f"airflow-{component}")
        assert pid, component
        env = _environ(pid)
        for name, value in USER.items():
            assert env.get(name) == value, (component, name, env.get(name))


def test_the_stream_dag_submits_the_users_window(started) -> None:
    """The DAG file, parsed in the scheduler's own environment, starts the job with
    --window '5 minutes' (what SparkSubmitOperator puts on spark-submit's command line)."""
    env = _environ(supervisor.pid_of(started, "airflow-scheduler"))
    script = """
import json, sys
from airflow.dag_processing.dagbag import DagBag
bag = DagBag(dag_folder=sys.argv[1])
task = bag.get_dag("stream_registration_counts").get_task("run_streaming_job")
print(json.dumps(task.application_args))
"""
    dag_file = str(ROOT / "dags" / "stream_registration_counts.py")
    res = subprocess.run(
        [sys.executable, "-c", script, dag_file],
        env=env,
        capture_output=True,
        text=True,
        cwd=started.run,
    )
    assert res.returncode == 0, res.stderr[-3000:]
    args = json.loads(res.stdout.strip().splitlines()[-1])
    assert args[args.index("--window") + 1] == "5 minutes"
    assert args[args.index("--topic") + 1] == USER["REGSTREAM_TOPIC"]
    assert args[args.index("--bootstrap") + 1] == USER["REGSTREAM_KAFKA_BOOTSTRAP"]
