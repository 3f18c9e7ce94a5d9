"""The sink's MySQL connection, from an Airflow connection held in an environment variable
(JSON or URI): never from the command line."""

from __future__ import annotations

import json
import os
import urllib.parse
from typing import Any

import MySQLdb


def mysql_params(conn_env: str) -> dict[str, Any]:
    """Connection parameters from an Airflow connection in an environment variable."""
    raw = os.environ.get(conn_env)
    if not raw:
        raise SystemExit(f"environment variable {conn_env} (the MySQL sink connection) is not set")
    if raw.lstrip().startswith("{"):
        c = json.loads(raw)
        host, port, user = c.get("host"), c.get("port"), c.get("login")
        password, db = c.get("password"), c.get("schema")
    else:
        u = urllib.parse.urlsplit(raw)
        host, port, db = u.hostname, u.port, u.path.lstrip("/")
        user = urllib.parse.unquote(u.username or "")
        password = urllib.parse.unquote(u.password or "")
    return {
        "host": host or "127.0.0.1",
        "port": int(port or 3306),
        "user": user,
        "password": password or "",
        "database": db,
        "charset": "utf8mb4",
    }


def mysql_connect(params: dict[str, Any]) -> Any:
    conn = MySQLdb.connect(**params, autocommit=True)
    cur = conn.cursor()
    cur.execute("SET time_zone = '+00:00'")
    cur.close()
    return conn
