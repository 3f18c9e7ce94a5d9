"""MariaDB: the sakila source and the stream's tables."""

from __future__ import annotations

import getpass
import os
import shutil
import subprocess
from pathlib import Path

from stackctl import supervisor
from stackctl.config import DATABASE, ROLES, ROOT, Settings, secrets_for
from stackctl.services.common import Service, ServiceError, check_ports_free, port_open, wait_until
from stackctl.supervisor import Program


def mysql_cli(
    s: Settings,
    sql: str | None = None,
    *,
    database: str | None = None,
    file: Path | None = None,
    check: bool = True,
) -> subprocess.CompletedProcess:
    """Run SQL as root over the socket. The SQL goes on stdin and the password in MYSQL_PWD,
    never on the command line (where any user could read it in /proc)."""
    pw = secrets_for(s)["MYSQL_ROOT_PASSWORD"]
    argv = ["mariadb", "--no-defaults", f"--socket={s.mysql_socket}", "-uroot", "-N", "-B"]
    env = dict(os.environ, MYSQL_PWD=pw)
    if database:
        argv.append(database)
    data = file.read_bytes() if file else (sql or "").encode()
    return subprocess.run(argv, env=env, input=data, capture_output=True, check=check)


def mysql_ready(s: Settings) -> bool:
    if not s.mysql_socket.exists():
        return False
    return mysql_cli(s, "SELECT 1", check=False).returncode == 0


def _mariadb_program(s: Settings) -> Program:
    data = s.run / "mysql" / "data"
    return Program(
        "mariadb",
        [
            "mariadbd",
            "--no-defaults",
            f"--datadir={data}",
            f"--socket={s.mysql_socket}",
            f"--port={s.mysql_port}",
            "--bind-address=127.0.0.1",
            f"--user={getpass.getuser()}",
            f"--pid-file={s.run / 'mysql' / 'mariadbd.pid'}",
            "--default-time-zone=+00:00",
            "--character-set-server=utf8mb4",
            "--collation-server=utf8mb4_unicode_ci",
            "--innodb-buffer-pool-size=512M",
            "--innodb-log-file-size=256M",
            # Local development durability: the OS cache survives a crash of mariadbd itself.
            "--innodb-flush-log-at-trx-commit=2",
            "--log-bin-trust-function-creators=1",
            "--max-connections=300",
            "--skip-name-resolve",
        ],
        s.run,
        stopwaitsecs=60,
    )


def init_mariadb(s: Settings) -> bool:
    """Create the data directory once; True when it is new (root has no password yet)."""
    data = s.run / "mysql" / "data"
    if (data / "mysql").exists():
        return False
    shutil.rmtree(data, ignore_errors=True)
    data.mkdir(parents=True)
    subprocess.run(
        [
            "mariadb-install-db",
            "--no-defaults",
            f"--datadir={data}",
            f"--user={getpass.getuser()}",
            "--auth-root-authentication-method=normal",
            "--skip-test-db",
        ],
        check=True,
        capture_output=True,
    )
    return True


def start_mariadb(s: Settings) -> None:
    logfile = s.logs / "mariadb.log"
    if supervisor.pid_of(s, "mariadb") and mysql_ready(s):
        return
    check_ports_free(s, "mariadb", s.mysql_port)
    fresh = init_mariadb(s)
    supervisor.start(s, "mariadb")
    if fresh:
        wait_until(
            "MariaDB", lambda: s.mysql_socket.exists() and port_open(s.mysql_port), 60, logfile
        )
        pw = secrets_for(s)["MYSQL_ROOT_PASSWORD"]
        subprocess.run(
            ["mariadb", "--no-defaults", f"--socket={s.mysql_socket}", "-uroot"],
            input=(
                f"ALTER USER 'root'@'localhost' IDENTIFIED BY '{pw}';"
                "DELETE FROM mysql.global_priv WHERE User='';FLUSH PRIVILEGES;"
            ).encode(),
            check=True,
            capture_output=True,
        )
    wait_until("MariaDB", lambda: mysql_ready(s), 60, logfile)


def sql_files() -> list[Path]:
    return sorted((ROOT / "sql").glob("[0-9][0-9]_*.sql"))


# Accounts of the local stack accept connections from loopback only.
LOCAL_ACCOUNT_HOST = "127.0.0.1"


def apply_schema(s: Settings, database: str = DATABASE) -> None:
    """Create the database and run sql/ in order, then create each role's account (password
    from secrets, loopback only) and give it the role that the grants files (sql/5x_*_grants.sql) defined."""
    pw = secrets_for(s)
    mysql_cli(s, f"CREATE DATABASE IF NOT EXISTS `{database}` CHARACTER SET utf8mb4")
    for path in sql_files():
        res = mysql_cli(s, database=database, file=path, check=False)
        if res.returncode != 0:
            raise ServiceError(f"{path.name} failed on {database}: {res.stderr.decode().strip()}")
    stmts = []
    for role, user in ROLES.items():
        secret = pw[f"REG_{role.upper()}_PASSWORD"]
        account = f"'{user}'@'{LOCAL_ACCOUNT_HOST}'"
        stmts += [
            f"CREATE USER IF NOT EXISTS {account} IDENTIFIED BY '{secret}'",
            f"ALTER USER {account} IDENTIFIED BY '{secret}'",
            f"GRANT {user}_role TO {account}",
            f"SET DEFAULT ROLE {user}_role FOR {account}",
        ]
    # mariadb-install-db also makes root@127.0.0.1, root@::1 and root@<host> without a
    # password: root logs in over the socket only
    stmts.append("DELETE FROM mysql.global_priv WHERE User = 'root' AND Host <> 'localhost'")
    stmts.append("FLUSH PRIVILEGES")
    res = mysql_cli(s, ";".join(stmts) + ";", check=False)
    if res.returncode != 0:
        raise ServiceError(f"creating the role accounts failed: {res.stderr.decode().strip()}")


def _mariadb_programs(s: Settings) -> list[Program]:
    return [_mariadb_program(s)]


SERVICE = Service("mariadb", init_mariadb, _mariadb_programs, mysql_ready, start_mariadb)
