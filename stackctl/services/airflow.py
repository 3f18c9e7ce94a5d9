"""Airflow's components: their environment, programs and start."""

from __future__ import annotations

import json
import os
import subprocess
import urllib.error
import urllib.request
from functools import partial
from pathlib import Path

from stackctl import supervisor
from stackctl.config import ENV_VARS, ROOT, Settings, connection_env, secrets_for, write_private
from stackctl.services.common import Service, ServiceError, base_env, check_ports_free, wait_until
from stackctl.services.postgres import start_postgres
from stackctl.services.redis import start_redis
from stackctl.supervisor import Program

AIRFLOW_COMPONENTS = ("api-server", "scheduler", "dag-processor", "triggerer")
TASK_CONNECTIONS = (
    "MYSQL_INGEST",
    "MYSQL_PUBLISHER",
    "MYSQL_STREAM",
    "MYSQL_READER",
    "MYSQL_RECONCILE",
    "KAFKA_DEFAULT",
    "SPARK_DEFAULT",
)


# Which Airflow connections each component's processes receive (issue: least privilege).
# The scheduler runs the tasks (LocalExecutor forks them), so it holds the roles the tasks
# use (the lag monitor reads through the reader role); the API server serves the live view,
# which reads through the reader role only; the triggerer runs none of our code.
COMPONENT_CONNECTIONS: dict[str, tuple[str, ...]] = {
    "api-server": ("MYSQL_READER",),
    "scheduler": TASK_CONNECTIONS,
    "dag-processor": (),
    "triggerer": (),
    "celery-worker": TASK_CONNECTIONS,
}


def airflow_components(s: Settings) -> list[str]:
    """The Airflow processes of a profile: with Celery, N workers run the tasks."""
    workers = [f"celery-worker-{n}" for n in range(1, s.celery_workers + 1)]
    return [*AIRFLOW_COMPONENTS, *(workers if s.executor == "CeleryExecutor" else [])]


def _connections_of(s: Settings, component: str) -> tuple[str, ...]:
    if component.startswith("celery-worker"):
        return COMPONENT_CONNECTIONS["celery-worker"]
    if component == "scheduler" and s.executor == "CeleryExecutor":
        return ()  # tasks run on the Celery workers, not under the scheduler
    return COMPONENT_CONNECTIONS[component]


def _airflow_db_url(s: Settings) -> str:
    pw = secrets_for(s)["AIRFLOW_DB_PASSWORD"]
    return f"postgresql+psycopg2://airflow:{pw}@127.0.0.1:{s.pg_port}/airflow"


def airflow_env(s: Settings, component: str | None = None) -> dict[str, str]:
    """Airflow's environment. With a component, only the connections it uses; without one
    (CLI, tests), all of them."""
    env = base_env(s)
    home = s.airflow_home
    pw = secrets_for(s)
    conns = connection_env(s)
    if component is not None:
        keep = {f"AIRFLOW_CONN_{c}" for c in _connections_of(s, component)}
        conns = {k: v for k, v in conns.items() if not k.startswith("AIRFLOW_CONN_") or k in keep}
    env.update(conns)
    env.update(
        {
            "AIRFLOW_HOME": str(home),
            "AIRFLOW__CORE__DAGS_FOLDER": str(ROOT / "dags"),
            "AIRFLOW__CORE__PLUGINS_FOLDER": str(ROOT / "plugins"),
            "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
            "AIRFLOW__CORE__EXECUTOR": s.executor,
            "AIRFLOW__CORE__PARALLELISM": str(s.airflow_parallelism),
            "AIRFLOW__CORE__MAX_ACTIVE_TASKS_PER_DAG": str(s.airflow_parallelism),
            "AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION": "True",
            "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS": "admin:admin",
            "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE": str(
                home / "simple_auth_manager_passwords.json"
            ),
            "AIRFLOW__CORE__DEFAULT_TIMEZONE": "utc",
            "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": _airflow_db_url(s),
            "AIRFLOW__API__PORT": str(s.airflow_port),
            "AIRFLOW__API__HOST": "127.0.0.1",
            "AIRFLOW__API__BASE_URL": s.airflow_url,
            "AIRFLOW__API__WORKERS": str(s.airflow_api_workers),
            "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"{s.airflow_url}/execution/",
            "AIRFLOW__DAG_PROCESSOR__REFRESH_INTERVAL": "30",
            "AIRFLOW__DAG_PROCESSOR__MIN_FILE_PROCESS_INTERVAL": "30",
            "AIRFLOW__SCHEDULER__ENABLE_HEALTH_CHECK": "False",
            # A task whose worker died (SIGKILL of a Celery worker) is failed and retried
            # after this many seconds without a heartbeat (tasks beat every 5 s), checked
            # every 5 s: the publisher is back within a minute.
            "AIRFLOW__SCHEDULER__TASK_INSTANCE_HEARTBEAT_TIMEOUT": "30",
            "AIRFLOW__SCHEDULER__TASK_INSTANCE_HEARTBEAT_TIMEOUT_DETECTION_INTERVAL": "5",
            # LocalExecutor runs tasks as the scheduler's children, so a scheduler that dies
            # takes its running tasks along; its successor resets them for a retry after this
            # check (default 300 s), once the dead scheduler missed its health threshold.
            "AIRFLOW__SCHEDULER__ORPHANED_TASKS_CHECK_INTERVAL": "20",
            "AIRFLOW__SCHEDULER__SCHEDULER_HEALTH_CHECK_THRESHOLD": "20",
            "AIRFLOW__LOGGING__LOGGING_LEVEL": "INFO",
            "AIRFLOW__API_AUTH__JWT_SECRET": pw["AIRFLOW_JWT_SECRET"],
            "AIRFLOW__CORE__FERNET_KEY": pw["AIRFLOW_FERNET_KEY"],
        }
    )
    if s.executor == "CeleryExecutor":
        env.update(
            {
                "AIRFLOW__CELERY__BROKER_URL": (
                    f"redis://:{pw['REDIS_PASSWORD']}@127.0.0.1:{s.redis_port}/0"
                ),
                "AIRFLOW__CELERY__RESULT_BACKEND": "db+" + _airflow_db_url(s),
                "AIRFLOW__CELERY__WORKER_CONCURRENCY": "3",
            }
        )
    return env


# Each component skips its log server: every process shares one log folder on this machine,
# and the API server reads task logs from it (no socket to open).
_COMPONENT_ARGS = {
    "api-server": [],
    "scheduler": ["--skip-serve-logs"],
    "dag-processor": [],
    "triggerer": ["--skip-serve-logs"],
}


def _component_argv(component: str) -> list[str]:
    if component.startswith("celery-worker"):
        # each worker its own Celery name; logs are read from the shared folder
        return [
            "celery",
            "worker",
            "--celery-hostname",
            f"{component}@127.0.0.1",
            "--skip-serve-logs",
        ]
    return [component, *_COMPONENT_ARGS[component]]


def exec_component(s: Settings, component: str) -> None:
    """Replace this process with an Airflow component (supervisord's command for it)."""
    if component not in airflow_components(s):
        raise ServiceError(f"{component} is not a component of profile {s.profile}")
    env = airflow_env(s, component)
    airflow = str(s.venv / "bin" / "airflow")
    os.chdir(s.run)
    if _owns_log(s, component):
        _log_to_file(s.logs / f"airflow-{component}.log")
    os.execve(airflow, [airflow, *_component_argv(component)], env)


def _owns_log(s: Settings, component: str) -> bool:
    """The LocalExecutor's scheduler writes its log itself: its task processes (children,
    sharing its stdout) must keep a working stdout after it dies, long enough to stop their
    task cleanly (supervisord closes a dead program's pipe: they would die of EPIPE, exit 125,
    leaving the Spark driver running with no task around it)."""
    return component == "scheduler" and s.executor == "LocalExecutor"


def _log_to_file(path: Path, max_bytes: int = 50 << 20, backups: int = 2) -> None:
    """stdout and stderr -> `path` (appended), rotated at start when over `max_bytes`."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.exists() and path.stat().st_size > max_bytes:
        for n in range(backups, 0, -1):
            older = path.with_name(f"{path.name}.{n - 1}") if n > 1 else path
            if older.exists():
                older.replace(path.with_name(f"{path.name}.{n}"))
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    os.close(fd)


def settings_env(s: Settings) -> dict[str, str]:
    """The REG_* variables under which `config.load(s.profile)` returns `s`."""
    # base_env drops every REG_* variable, so without them a component of a profile started on
    # other ports or another state folder would read the default ones (seen: an API server on
    # REG_PG_PORT=5463 connecting to 5443). None of them is a secret.
    return {var: str(getattr(s, field)) for field, var in ENV_VARS.items()}


def _airflow_programs(s: Settings) -> list[Program]:
    python = str(s.venv / "bin" / "python")
    return [
        Program(
            f"airflow-{c}",
            [python, "-m", "stackctl", "--profile", s.profile, "exec", c],
            ROOT,
            startsecs=5,
            env=settings_env(s),
            # a component that dies takes its processes along (LocalExecutor: its tasks);
            # a Celery worker's task is failed by Airflow's heartbeat timeout and retried
            stop_leftovers=not c.startswith("celery-worker"),
            own_log=_owns_log(s, c),
        )
        for c in airflow_components(s)
    ]


def airflow_health(s: Settings) -> dict | None:
    try:
        with urllib.request.urlopen(f"{s.airflow_url}/api/v2/monitor/health", timeout=2) as r:
            return json.load(r)
    except (urllib.error.URLError, OSError, ValueError):
        return None


def airflow_healthy(s: Settings) -> bool:
    health = airflow_health(s)
    if not health:
        return False
    parts = ("metadatabase", "scheduler", "dag_processor", "triggerer")
    return all(health.get(p, {}).get("status") == "healthy" for p in parts)


def start_airflow(s: Settings) -> None:
    """PostgreSQL (and Redis for Celery), `airflow db migrate`, then the components."""
    start_postgres(s)
    start_redis(s)
    components = airflow_components(s)
    if all(supervisor.pid_of(s, f"airflow-{c}") for c in components) and airflow_healthy(s):
        return
    check_ports_free(s, "airflow-api-server", s.airflow_port)
    prepare_airflow(s)
    for c in components:
        supervisor.start(s, f"airflow-{c}")
    wait_until("Airflow", partial(airflow_healthy, s), 180, s.logs / "airflow-api-server.log")


def prepare_airflow(s: Settings) -> None:
    """Airflow's home with the admin's password file (0600), and `airflow db migrate`."""
    home = s.airflow_home
    home.mkdir(parents=True, exist_ok=True)
    write_private(
        home / "simple_auth_manager_passwords.json",
        json.dumps({"admin": secrets_for(s)["AIRFLOW_ADMIN_PASSWORD"]}),
    )
    res = subprocess.run(
        [str(s.venv / "bin" / "airflow"), "db", "migrate"],
        env=airflow_env(s, "scheduler"),
        capture_output=True,
        text=True,
        cwd=str(s.run),
    )
    if res.returncode != 0:
        raise ServiceError(f"airflow db migrate failed:\n{res.stdout[-2000:]}{res.stderr[-2000:]}")


SERVICE = Service("airflow", prepare_airflow, _airflow_programs, airflow_healthy, start_airflow)
