"""MySQL access outside Airflow for the tests and the benchmarks: root over the profile's
socket, role accounts over TCP, and throwaway databases with the project's schema."""

from __future__ import annotations

import uuid
from typing import Any

from stackctl import config, services


def _connect(**kwargs: Any) -> Any:
    import MySQLdb

    conn = MySQLdb.connect(autocommit=True, charset="utf8mb4", **kwargs)
    conn.cursor().execute("SET time_zone = '+00:00'")
    return conn


def root_conn(s: config.Settings, database: str | None = None) -> Any:
    """root over the profile's socket (autocommit, UTC), in `database` if given."""
    where = {"database": database} if database else {}
    return _connect(
        unix_socket=str(s.mysql_socket),
        user="root",
        password=config.secrets_for(s)["MYSQL_ROOT_PASSWORD"],
        **where,
    )


def role_conn(s: config.Settings, role: str, database: str) -> Any:
    """One of config.ROLES' accounts, over loopback TCP as the tasks connect."""
    return _connect(
        host="127.0.0.1",
        port=s.mysql_port,
        user=config.ROLES[role],
        password=config.secrets_for(s)[f"REG_{role.upper()}_PASSWORD"],
        database=database,
    )


def role_connections(s: config.Settings, database: str) -> dict[str, str]:
    """AIRFLOW_CONN_MYSQL_<ROLE> of every role, pointed at `database` (how the hooks find it)."""
    return {
        f"AIRFLOW_CONN_MYSQL_{role.upper()}": config.mysql_conn_json(s, role, database)
        for role in config.ROLES
    }


def create_database(s: config.Settings, prefix: str) -> str:
    """A new database `<prefix>_<random>` with the project's schema and role grants."""
    name = f"{prefix}_{uuid.uuid4().hex[:10]}"
    services.apply_schema(s, database=name)
    return name


def drop_database(s: config.Settings, name: str) -> None:
    cur = root_conn(s).cursor()
    cur.execute("SET SESSION lock_wait_timeout = 60")  # a test's open transaction may linger
    cur.execute(f"DROP DATABASE IF EXISTS `{name}`")
