"""PostgreSQL: Airflow's metadata database."""

from __future__ import annotations

import getpass
import os
import pwd
import subprocess
from pathlib import Path

from stackctl import supervisor
from stackctl.config import Settings, secrets_for
from stackctl.services.common import Service, ServiceError, check_ports_free, wait_until
from stackctl.supervisor import Program


def _pg_bin(name: str) -> str:
    found = sorted(Path("/usr/lib/postgresql").glob(f"*/bin/{name}"))
    if not found:
        raise ServiceError(f"PostgreSQL's {name} not found: `make up` installs `postgresql`")
    return str(found[-1])


def _pg_user() -> str | None:
    """PostgreSQL refuses to run as root: then it runs as the `postgres` user the Debian
    package creates; otherwise as the current user."""
    return "postgres" if os.geteuid() == 0 else None


def _as_pg_user(argv: list[str]) -> list[str]:
    user = _pg_user()
    return ["runuser", "-u", user, "--", *argv] if user else argv


def _psql(s: Settings, sql: str, database: str = "postgres") -> str:
    user = _pg_user() or getpass.getuser()
    res = subprocess.run(
        _as_pg_user(
            [
                _pg_bin("psql"),
                "-h",
                str(s.pg_socket_dir),
                "-p",
                str(s.pg_port),
                "-U",
                user,
                "-d",
                database,
                "-v",
                "ON_ERROR_STOP=1",
                "-qAt",
            ]
        ),
        input=sql.encode(),
        capture_output=True,
    )
    if res.returncode != 0:
        raise ServiceError(f"psql failed: {res.stderr.decode().strip()}")
    return res.stdout.decode().strip()


def init_postgres(s: Settings) -> None:
    """initdb once: the data directory belongs to the server's user; local socket logins by
    the OS user (peer), TCP logins by password (scram-sha-256)."""
    data = s.pg_dir / "data"
    s.pg_socket_dir.mkdir(parents=True, exist_ok=True)
    user = _pg_user()
    if user:
        ent = pwd.getpwnam(user)
        for path in (s.pg_dir, s.pg_socket_dir):
            os.chown(path, ent.pw_uid, ent.pw_gid)
    if (data / "PG_VERSION").exists():
        return
    s.pg_dir.chmod(0o700)
    subprocess.run(
        _as_pg_user(
            [
                _pg_bin("initdb"),
                "-D",
                str(data),
                "-U",
                user or getpass.getuser(),
                "--auth-local=peer",
                "--auth-host=scram-sha-256",
                "-E",
                "UTF8",
                "--no-locale",
            ]
        ),
        check=True,
        capture_output=True,
    )


def _postgres_program(s: Settings) -> Program:
    return Program(
        "postgres",
        [
            _pg_bin("postgres"),
            "-D",
            str(s.pg_dir / "data"),
            "-c",
            "listen_addresses=127.0.0.1",
            "-c",
            f"port={s.pg_port}",
            "-c",
            f"unix_socket_directories={s.pg_socket_dir}",
            "-c",
            "max_connections=200",
            "-c",
            "shared_buffers=128MB",
            "-c",
            "log_min_messages=warning",
        ],
        s.pg_dir,
        user=_pg_user(),
        # SIGINT: PostgreSQL's "fast" shutdown (SIGTERM waits for every client to leave)
        stopsignal="INT",
        stopwaitsecs=60,
    )


def _pg_ready(s: Settings) -> bool:
    try:
        return _psql(s, "SELECT 1") == "1"
    except ServiceError:
        return False


def start_postgres(s: Settings) -> None:
    """Airflow's metadata database: role and database `airflow`, password from secrets."""
    if not (supervisor.pid_of(s, "postgres") and _pg_ready(s)):
        check_ports_free(s, "postgres", s.pg_port)
        init_postgres(s)
        supervisor.start(s, "postgres")
        wait_until("PostgreSQL", lambda: _pg_ready(s), 60, s.logs / "postgres.log")
    pw = secrets_for(s)["AIRFLOW_DB_PASSWORD"]
    if _psql(s, "SELECT 1 FROM pg_roles WHERE rolname = 'airflow'") != "1":
        _psql(s, "CREATE ROLE airflow LOGIN")
    _psql(s, f"ALTER ROLE airflow PASSWORD '{pw}'")
    if _psql(s, "SELECT 1 FROM pg_database WHERE datname = 'airflow'") != "1":
        _psql(s, "CREATE DATABASE airflow OWNER airflow")


def _postgres_programs(s: Settings) -> list[Program]:
    return [_postgres_program(s)]


SERVICE = Service("postgres", init_postgres, _postgres_programs, _pg_ready, start_postgres)
