"""The profile's services: MariaDB, PostgreSQL, Kafka (KRaft), Spark, Redis and Airflow's
components, one module each behind one shape (common.Service: prepare, programs, ready,
start).

Each runs as a supervisord program (stackctl/supervisor.py), which restarts it when it dies.
Every process carries REGSTREAM_RUN_DIR in its environment, so `down` can sweep up a stray
child (a Spark driver whose task runner died) after supervisord stopped. This module keeps
the profile-wide part (order, start, stop) and re-exports what callers use as
`services.<name>`.
"""

from __future__ import annotations

import logging
import os
import signal
import time
from collections.abc import Set

from stackctl import procs, supervisor
from stackctl.config import Settings
from stackctl.services import airflow, kafka, mariadb, postgres, redis, spark
from stackctl.services.airflow import (
    AIRFLOW_COMPONENTS,
    COMPONENT_CONNECTIONS,
    TASK_CONNECTIONS,
    airflow_components,
    airflow_env,
    airflow_health,
    airflow_healthy,
    exec_component,
    settings_env,
    start_airflow,
)
from stackctl.services.common import (
    MARK,
    Service,
    ServiceError,
    base_env,
    check_ports_free,
    port_open,
    wait_until,
)
from stackctl.services.kafka import (
    _kafka_properties,
    init_kafka,
    kafka_node_names,
    kafka_ready,
    start_kafka,
)
from stackctl.services.mariadb import (
    LOCAL_ACCOUNT_HOST,
    apply_schema,
    init_mariadb,
    mysql_cli,
    mysql_ready,
    sql_files,
    start_mariadb,
)
from stackctl.services.postgres import init_postgres, start_postgres
from stackctl.services.redis import start_redis
from stackctl.services.spark import spark_master_status, spark_worker_names, start_spark
from stackctl.supervisor import Program

__all__ = [
    "AIRFLOW_COMPONENTS",
    "COMPONENT_CONNECTIONS",
    "LOCAL_ACCOUNT_HOST",
    "MARK",
    "SERVICES",
    "TASK_CONNECTIONS",
    "Service",
    "ServiceError",
    "_kafka_properties",
    "airflow_components",
    "airflow_env",
    "airflow_health",
    "airflow_healthy",
    "apply_schema",
    "base_env",
    "check_ports_free",
    "descendants",
    "exec_component",
    "init_kafka",
    "init_mariadb",
    "init_postgres",
    "kafka_node_names",
    "kafka_ready",
    "kill_program",
    "marked_pids",
    "mysql_cli",
    "mysql_ready",
    "port_open",
    "profile_pids",
    "programs",
    "settings_env",
    "spark_master_status",
    "spark_worker_names",
    "sql_files",
    "start_airflow",
    "start_data_services",
    "start_kafka",
    "start_mariadb",
    "start_postgres",
    "start_redis",
    "start_spark",
    "start_supervisor",
    "stop_all",
    "stop_program",
    "wait_until",
]

log = logging.getLogger(__name__)

# In start order: a program's dependencies come before it.
SERVICES: tuple[Service, ...] = (
    mariadb.SERVICE,
    postgres.SERVICE,
    redis.SERVICE,
    kafka.SERVICE,
    spark.SERVICE,
    airflow.SERVICE,
)

descendants = procs.descendants


def marked_pids(s: Settings, groups: Set[int] = frozenset()) -> list[int]:
    """Every live process of this profile: its environment mark, its working directory (every
    program starts in the profile's run folder, and children inherit it), or its process
    group (`groups`: the supervisord programs' pids). Several marks, because Airflow's
    processes rewrite their environ area with setproctitle and a process can leave its
    group; none of them can match another profile's processes."""
    return procs.marked(f"{MARK}={s.run}", s.run, groups)


def profile_pids(s: Settings) -> list[int]:
    """The live processes of this profile (supervisord's tree and strays): what fault tests
    may signal, and nothing of another profile."""
    groups = {st.pid for st in supervisor.states(s).values() if st.pid}
    daemon = supervisor.daemon_pid(s)
    tree = set(descendants(daemon)) if daemon else set()
    return sorted(tree | set(marked_pids(s, groups)))


def programs(s: Settings) -> list[Program]:
    return [program for service in SERVICES for program in service.programs(s)]


def start_data_services(s: Settings) -> None:
    """supervisord, MariaDB with the schema, and Kafka: what the integration tests and the
    benchmarks need (Airflow and Spark come on top with start_airflow / start_spark)."""
    start_supervisor(s)
    start_mariadb(s)
    apply_schema(s)
    start_kafka(s)


def start_supervisor(s: Settings) -> None:
    s.run.mkdir(parents=True, exist_ok=True)
    supervisor.start_daemon(s, programs(s), base_env(s))


def stop_all(s: Settings, timeout: float = 30) -> list[int]:
    """Stop supervisord and its programs, then any stray process of this profile."""
    groups = {st.pid for st in supervisor.states(s).values() if st.pid}
    daemon = supervisor.daemon_pid(s)
    stopped = set(marked_pids(s, groups)) | (set(descendants(daemon)) if daemon else set())
    supervisor.shutdown(s)
    for sig, wait in ((signal.SIGTERM, timeout), (signal.SIGKILL, 10)):
        pids = marked_pids(s, groups)
        if not pids:
            break
        log.info("stopping %d stray processes of %s with %s", len(pids), s.profile, sig.name)
        for pid in pids:
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline and marked_pids(s, groups):
            time.sleep(0.2)
    left = marked_pids(s, groups)
    if left:
        raise ServiceError(f"processes still running after SIGKILL: {left}")
    return sorted(stopped)


def kill_program(s: Settings, name: str, sig: int = signal.SIGKILL) -> int:
    """Signal one program's main process (fault tests); returns the pid signalled."""
    pid = supervisor.pid_of(s, name)
    if not pid:
        raise ServiceError(f"{name} is not running")
    os.kill(pid, sig)
    return pid


def stop_program(s: Settings, name: str) -> None:
    supervisor.ctl(s, "stop", name)
