"""MySQL connections through the Airflow provider's hook, with errors a person can act on."""

from __future__ import annotations

import logging
import re
from functools import cache
from importlib import resources
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


@cache
def named_queries(filename: str) -> dict[str, str]:
    """The queries of plugins/regstream/queries/<filename>, each after a `-- name: NAME`
    line, comment lines left out."""
    text = resources.files("regstream").joinpath("queries", filename).read_text()
    named: dict[str, str] = {}
    for block in re.split(r"^-- name: ", text, flags=re.M)[1:]:
        name, _, body = block.partition("\n")
        lines = [ln for ln in body.splitlines() if not ln.lstrip().startswith("--")]
        named[name.strip()] = "\n".join(lines).strip().rstrip(";")
    return named
