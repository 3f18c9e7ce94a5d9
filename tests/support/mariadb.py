"""A second MariaDB server for tests that split source and sink over two servers, and the
project's schema applied one side at a time (docs/sink.md).

The server is throwaway: its own data directory, socket and free port, root without a
password over the socket only (the data directory is private to the test), stopped at the
end."""

from __future__ import annotations

import getpass
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from regstream.connections import (
    MYSQL_READER_SOURCE_CONN_ID,
    MYSQL_RECONCILE_CONN_ID,
    MYSQL_RECONCILE_SINK_CONN_ID,
)
from regstream.settings import (
    MYSQL_INGEST_CONN_ID,
    MYSQL_PUBLISHER_CONN_ID,
    MYSQL_READER_CONN_ID,
    MYSQL_STREAM_CONN_ID,
)

from stackctl import config
from tests.conftest import wait_for

SQL = config.ROOT / "sql"
# Which sql/ files build which side; every numbered file is on exactly one side (a unit-free
# check in tests/integration/test_two_servers.py keeps this in step with sql/).
SOURCE_SQL = (
    "01_sakila_core.sql",
    "02_seed.sql",
    "10_cdc.sql",
    "11_customer_create_date.sql",
    "50_source_grants.sql",
)
SINK_SQL = ("20_stream.sql", "30_analysts.sql", "30_reconcile.sql", "51_sink_grants.sql")
# The roles whose accounts live on each side (the reader and reconcile roles are on both), and
# the connection id each is reached through there (regstream.connections).
SOURCE_CONNS = {
    "ingest": MYSQL_INGEST_CONN_ID,
    "publisher": MYSQL_PUBLISHER_CONN_ID,
    "reader": MYSQL_READER_SOURCE_CONN_ID,
    "reconcile": MYSQL_RECONCILE_CONN_ID,
}
SINK_CONNS = {
    "stream": MYSQL_STREAM_CONN_ID,
    "reader": MYSQL_READER_CONN_ID,
    "reconcile": MYSQL_RECONCILE_SINK_CONN_ID,
}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class Server:
    """A running mariadbd of a test."""

    datadir: Path
    socket: Path
    port: int
    proc: subprocess.Popen
    log: Path

    def root(self, database: str | None = None) -> Any:
        """root over the socket (autocommit, UTC)."""
        import MySQLdb

        where = {"database": database} if database else {}
        conn = MySQLdb.connect(
            unix_socket=str(self.socket), user="root", autocommit=True, charset="utf8mb4", **where
        )
        conn.cursor().execute("SET time_zone = '+00:00'")
        return conn

    def ready(self) -> bool:
        if self.proc.poll() is not None:
            raise AssertionError(f"mariadbd exited with {self.proc.returncode}; see {self.log}")
        if not self.socket.exists():
            return False
        try:
            self.root().close()
        except Exception:  # noqa: BLE001 - not accepting connections yet: poll again
            return False
        return True


def run_sql(sock: Path, statements: str, database: str = "", password: str = "") -> None:
    """SQL as root through the mariadb client over `sock` (statements on stdin, the password
    in MYSQL_PWD: never on a command line)."""
    argv = ["mariadb", "--no-defaults", f"--socket={sock}", "-uroot"]
    if database:
        argv.append(database)
    env = {k: v for k, v in os.environ.items() if k != "MYSQL_PWD"}
    if password:
        env["MYSQL_PWD"] = password
    res = subprocess.run(argv, input=statements.encode(), env=env, capture_output=True)
    if res.returncode != 0:
        raise AssertionError(f"SQL failed on {database or sock}: {res.stderr.decode().strip()}")


def apply_files(sock: Path, database: str, names: tuple[str, ...], password: str = "") -> None:
    """A new `database` with the sql/ files `names`, in order."""
    run_sql(sock, f"CREATE DATABASE `{database}` CHARACTER SET utf8mb4", password=password)
    for name in names:
        try:
            run_sql(sock, (SQL / name).read_text(), database, password)
        except AssertionError as exc:
            raise AssertionError(f"{name}: {exc}") from None


@contextmanager
def second_server(timeout: float = 120) -> Iterator[Server]:
    """mariadbd on a free port, as stackctl runs the profile's; stopped and deleted after."""
    # under /tmp: a socket path must stay under 108 bytes
    base = Path(tempfile.mkdtemp(prefix="regstream-db2-"))
    datadir, sock, log = base / "data", base / "mysqld.sock", base / "mariadbd.log"
    user = getpass.getuser()
    subprocess.run(
        [
            "mariadb-install-db",
            "--no-defaults",
            f"--datadir={datadir}",
            f"--user={user}",
            "--auth-root-authentication-method=socket",
            "--skip-test-db",
        ],
        check=True,
        capture_output=True,
    )
    port = free_port()
    with log.open("ab") as out:
        proc = subprocess.Popen(
            [
                "mariadbd",
                "--no-defaults",
                f"--datadir={datadir}",
                f"--socket={sock}",
                f"--port={port}",
                "--bind-address=127.0.0.1",
                f"--user={user}",
                f"--pid-file={base / 'mariadbd.pid'}",
                "--default-time-zone=+00:00",
                "--character-set-server=utf8mb4",
                "--collation-server=utf8mb4_unicode_ci",
                "--innodb-buffer-pool-size=64M",
                "--log-bin-trust-function-creators=1",
                "--skip-name-resolve",
            ],
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    server = Server(datadir, sock, port, proc, log)
    try:
        wait_for("the second MariaDB server to accept connections", server.ready, timeout, 0.3)
        yield server
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=30)
        shutil.rmtree(base, ignore_errors=True)


def create_sink(server: Server, database: str) -> dict[str, str]:
    """The sink's schema and grants in `database` on `server`, and an account per sink role
    (loopback only, a password made for this test); the role accounts' connections (JSON
    form, as AIRFLOW_CONN_* takes them), by connection id."""
    apply_files(server.socket, database, SINK_SQL)
    cur = server.root().cursor()
    conns = {}
    for role in SINK_CONNS:
        user, password = config.ROLES[role], secrets.token_urlsafe(18)
        account = f"'{user}'@'127.0.0.1'"
        cur.execute(f"CREATE USER IF NOT EXISTS {account} IDENTIFIED BY %s", (password,))
        cur.execute(f"ALTER USER {account} IDENTIFIED BY %s", (password,))
        cur.execute(f"GRANT {user}_role TO {account}")
        cur.execute(f"SET DEFAULT ROLE {user}_role FOR {account}")
        conns[SINK_CONNS[role]] = json.dumps(
            {
                "conn_type": "mysql",
                "host": "127.0.0.1",
                "port": server.port,
                "login": user,
                "password": password,
                "schema": database,
            }
        )
    cur.connection.close()
    return conns


def create_source(s: config.Settings, database: str) -> dict[str, str]:
    """The source's schema and grants only, in a new `database` on the profile's server
    (whose role accounts exist already); the source roles' connections (JSON), by
    connection id."""
    password = config.secrets_for(s)["MYSQL_ROOT_PASSWORD"]
    apply_files(s.mysql_socket, database, SOURCE_SQL, password)
    return {
        conn_id: config.mysql_conn_json(s, role, database) for role, conn_id in SOURCE_CONNS.items()
    }
