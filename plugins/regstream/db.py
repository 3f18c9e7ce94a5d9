"""MySQL connections through the Airflow provider's hook, with errors a person can act on."""

from __future__ import annotations

import logging
from typing import Any

log = logging.getLogger(__name__)


class DatabaseUnavailable(RuntimeError):
    """The MySQL server named by an Airflow connection cannot be reached."""


def connect(conn_id: str, *, autocommit: bool = True) -> Any:
    """A MySQLdb connection for an Airflow connection id, session clock in UTC."""
    import MySQLdb
    from airflow.providers.mysql.hooks.mysql import MySqlHook

    hook = MySqlHook(mysql_conn_id=conn_id)
    conn_info = hook.get_connection(conn_id)
    where = f"{conn_info.host}:{conn_info.port or 3306}"
    try:
        conn: Any = hook.get_conn()
    except MySQLdb.OperationalError as exc:
        raise DatabaseUnavailable(
            f"cannot connect to MySQL through connection '{conn_id}' at {where} "
            f"(database {conn_info.schema!r}, user {conn_info.login!r}): {exc}"
        ) from exc
    conn.autocommit(autocommit)
    cur = conn.cursor()
    cur.execute("SET time_zone = '+00:00'")
    cur.close()
    return conn


def table_exists(conn: Any, table: str) -> bool:
    cur = conn.cursor()
    cur.execute(
        "SELECT 1 FROM information_schema.TABLES WHERE TABLE_SCHEMA = DATABASE() "
        "AND TABLE_NAME = %s",
        (table,),
    )
    found = cur.fetchone() is not None
    cur.close()
    return found
