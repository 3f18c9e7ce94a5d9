"""Shared set-up for the benchmarks: the test profile's real MariaDB and Kafka, a fresh
database and topic per run, and one way to print figures (JSON plus a human line)."""

from __future__ import annotations

import json
import os
import platform
import uuid
from pathlib import Path
from typing import Any

from stackctl import config, services

ROOT = Path(__file__).resolve().parent.parent


def stack() -> config.Settings:
    s = config.load(os.environ.get("REG_PROFILE", "test"))
    services.start_data_services(s)
    os.environ.update(services.airflow_env(s))
    return s


def whole_platform() -> tuple[config.Settings, Any]:
    """The whole test-profile platform, DAGs unpaused, as `make up` runs it."""
    from stackctl import __main__ as ctl
    from stackctl.airflow_api import Airflow

    s = stack()
    services.start_airflow(s)
    ctl.unpause_dags(s)
    return s, Airflow(s)


def fresh(s: config.Settings) -> tuple[str, str]:
    """A new database (pointed at by every role connection) and topic name."""
    name = f"bench_{uuid.uuid4().hex[:8]}"
    services.apply_schema(s, database=name)
    for role in config.ROLES:
        os.environ[f"AIRFLOW_CONN_MYSQL_{role.upper()}"] = config.mysql_conn_json(s, role, name)
    os.environ["REGSTREAM_TOPIC"] = name
    return name, name


def root_conn(s: config.Settings, database: str | None = None) -> Any:
    import MySQLdb

    conn = MySQLdb.connect(
        unix_socket=str(s.mysql_socket),
        user="root",
        password=config.secrets_for(s)["MYSQL_ROOT_PASSWORD"],
        database=database or "",
        autocommit=True,
        charset="utf8mb4",
    )
    conn.cursor().execute("SET time_zone = '+00:00'")
    return conn


def drop(s: config.Settings, database: str) -> None:
    root_conn(s).cursor().execute(f"DROP DATABASE IF EXISTS `{database}`")


def machine() -> dict[str, Any]:
    mem_kb = next(
        int(line.split()[1]) for line in open("/proc/meminfo") if line.startswith("MemTotal")
    )
    cpu = next(
        (
            line.split(":", 1)[1].strip()
            for line in open("/proc/cpuinfo")
            if line.startswith("model name")
        ),
        platform.processor(),
    )
    return {
        "cpus": os.cpu_count(),
        "memory_gib": round(mem_kb / 2**20, 1),
        "cpu": cpu,
        "os": platform.platform(),
        "python": platform.python_version(),
    }


def report(name: str, figures: dict[str, Any], human: str) -> None:
    print(json.dumps({"benchmark": name, **figures}))
    print(f"{name}: {human}")
