"""Shared set-up for the benchmarks: the test profile's real MariaDB and Kafka, a fresh
database and topic per run, and one way to print figures (JSON plus a human line)."""

from __future__ import annotations

import json
import os
import platform
from pathlib import Path
from typing import Any

from stackctl import config, db, procs, services

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
    name = db.create_database(s, "bench")
    os.environ.update(db.role_connections(s, name))
    os.environ["REGSTREAM_TOPIC"] = name
    return name, name


def drop(s: config.Settings, database: str) -> None:
    db.drop_database(s, database)


def machine() -> dict[str, Any]:
    mem_kb = procs.kib("meminfo", "MemTotal")
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
