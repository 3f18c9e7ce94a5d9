"""Start, check and stop the local services: MariaDB, Kafka (KRaft) and Airflow standalone.

Every process started here carries REGSTREAM_RUN_DIR in its environment, and so do all
of its children (Airflow's LocalExecutor workers, spark-submit and its JVM): `down` finds
them all by that mark in /proc, so nothing survives it whatever process group it is in.
"""

from __future__ import annotations

import getpass
import json
import logging
import os
import shutil
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path

from stackctl.config import DATABASE, ROLES, ROOT, Settings, connection_env, secrets_for

log = logging.getLogger(__name__)

MARK = "REGSTREAM_RUN_DIR"


class ServiceError(RuntimeError):
    pass


def wait_until(what: str, check: Callable[[], bool], timeout: float, logfile: Path) -> None:
    deadline = time.monotonic() + timeout
    delay = 0.05
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(delay)
        delay = min(delay * 1.5, 1.0)
    tail = ""
    if logfile.exists():
        tail = "\n".join(logfile.read_text(errors="replace").splitlines()[-20:])
    raise ServiceError(f"{what} did not become ready in {timeout:.0f}s; see {logfile}\n{tail}")


def port_open(port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(0.5)
        return sock.connect_ex(("127.0.0.1", port)) == 0


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        return stat.rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def read_pid(path: Path) -> int | None:
    try:
        pid = int(path.read_text().strip())
    except (OSError, ValueError):
        return None
    return pid if _pid_alive(pid) else None


def _session_leaders(s: Settings) -> set[int]:
    leaders = set()
    for name in ("mariadb", "kafka", "airflow"):
        try:
            leaders.add(int((s.run / f"{name}.pid").read_text().strip()))
        except (OSError, ValueError):
            pass
    return leaders


def marked_pids(s: Settings) -> list[int]:
    """Every live process started by this profile: found by its environment mark, or by its
    session (each service starts a new one). Both, because Airflow's workers rewrite their
    environ area with setproctitle, and a process may leave the session."""
    needle = f"{MARK}={s.run}".encode()
    leaders = _session_leaders(s)
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            env = (entry / "environ").read_bytes()
            sid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[3])
        except (OSError, ValueError, IndexError):
            continue
        if (needle + b"\0" in env + b"\0" or sid in leaders) and _pid_alive(int(entry.name)):
            pids.append(int(entry.name))
    return pids


def base_env(s: Settings) -> dict[str, str]:
    env = dict(os.environ)
    env[MARK] = str(s.run)
    env["PATH"] = f"{s.venv / 'bin'}:{env.get('PATH', '')}"
    env["TZ"] = "UTC"
    env["SPARK_LOCAL_IP"] = "127.0.0.1"
    return env


def _spawn(s: Settings, name: str, argv: list[str], env: dict[str, str] | None = None) -> int:
    s.logs.mkdir(parents=True, exist_ok=True)
    logfile = s.logs / f"{name}.log"
    with open(logfile, "ab") as out:
        proc = subprocess.Popen(
            argv,
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=env or base_env(s),
            start_new_session=True,
            cwd=str(s.run),
        )
    (s.run / f"{name}.pid").write_text(str(proc.pid))
    return proc.pid


# ---------------------------------------------------------------- MariaDB


def mysql_cli(
    s: Settings,
    sql: str | None = None,
    *,
    database: str | None = None,
    file: Path | None = None,
    check: bool = True,
) -> subprocess.CompletedProcess:
    pw = secrets_for(s)["MYSQL_ROOT_PASSWORD"]
    argv = ["mariadb", "--no-defaults", f"--socket={s.mysql_socket}", "-uroot", "-N", "-B"]
    env = dict(os.environ, MYSQL_PWD=pw)
    if database:
        argv.append(database)
    if sql is not None:
        argv += ["-e", sql]
    stdin = open(file, "rb") if file else subprocess.DEVNULL
    try:
        return subprocess.run(argv, env=env, stdin=stdin, capture_output=True, check=check)
    finally:
        if file:
            stdin.close()


def _mysql_ready(s: Settings) -> bool:
    if not s.mysql_socket.exists():
        return False
    return mysql_cli(s, "SELECT 1", check=False).returncode == 0


def start_mariadb(s: Settings) -> None:
    data = s.run / "mysql" / "data"
    logfile = s.logs / "mariadb.log"
    pidfile = s.run / "mariadb.pid"
    if read_pid(pidfile) and _mysql_ready(s):
        return
    if port_open(s.mysql_port):
        raise ServiceError(
            f"port {s.mysql_port} is taken by another program: set REG_MYSQL_PORT to a free port"
        )
    fresh = not (data / "mysql").exists()
    if fresh:
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
    argv = [
        "mariadbd",
        "--no-defaults",
        f"--datadir={data}",
        f"--socket={s.mysql_socket}",
        f"--port={s.mysql_port}",
        "--bind-address=127.0.0.1",
        f"--user={getpass.getuser()}",
        f"--pid-file={s.run / 'mysql' / 'mariadbd.pid'}",
        f"--log-error={logfile}",
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
    ]
    _spawn(s, "mariadb", argv)
    # The socket appears first; a query proves it.
    if fresh:
        wait_until(
            "MariaDB", lambda: s.mysql_socket.exists() and port_open(s.mysql_port), 60, logfile
        )
        pw = secrets_for(s)["MYSQL_ROOT_PASSWORD"]
        subprocess.run(
            [
                "mariadb",
                "--no-defaults",
                f"--socket={s.mysql_socket}",
                "-uroot",
                "-e",
                f"ALTER USER 'root'@'localhost' IDENTIFIED BY '{pw}';"
                "DELETE FROM mysql.global_priv WHERE User='';FLUSH PRIVILEGES;",
            ],
            check=True,
            capture_output=True,
        )
    wait_until("MariaDB", lambda: _mysql_ready(s), 60, logfile)


def sql_files() -> list[Path]:
    return sorted((ROOT / "sql").glob("[0-9][0-9]_*.sql"))


def apply_schema(s: Settings, database: str = DATABASE) -> None:
    """Create the database, the role users (passwords from secrets) and run sql/ in order."""
    pw = secrets_for(s)
    stmts = [f"CREATE DATABASE IF NOT EXISTS `{database}` CHARACTER SET utf8mb4"]
    for role, user in ROLES.items():
        secret = pw[f"REG_{role.upper()}_PASSWORD"]
        stmts.append(f"CREATE USER IF NOT EXISTS '{user}'@'%' IDENTIFIED BY '{secret}'")
        stmts.append(f"ALTER USER '{user}'@'%' IDENTIFIED BY '{secret}'")
    mysql_cli(s, ";".join(stmts))
    for path in sql_files():
        res = mysql_cli(s, database=database, file=path, check=False)
        if res.returncode != 0:
            raise ServiceError(f"{path.name} failed on {database}: {res.stderr.decode().strip()}")


# ---------------------------------------------------------------- Kafka


def _kafka_properties(s: Settings) -> str:
    return "\n".join(
        [
            "process.roles=broker,controller",
            "node.id=1",
            f"controller.quorum.bootstrap.servers=127.0.0.1:{s.kafka_controller_port}",
            f"listeners=PLAINTEXT://127.0.0.1:{s.kafka_port},"
            f"CONTROLLER://127.0.0.1:{s.kafka_controller_port}",
            f"advertised.listeners=PLAINTEXT://127.0.0.1:{s.kafka_port},"
            f"CONTROLLER://127.0.0.1:{s.kafka_controller_port}",
            "controller.listener.names=CONTROLLER",
            "inter.broker.listener.name=PLAINTEXT",
            "listener.security.protocol.map=CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT",
            f"log.dirs={s.run / 'kafka' / 'data'}",
            "num.partitions=2",
            "offsets.topic.replication.factor=1",
            "transaction.state.log.replication.factor=1",
            "transaction.state.log.min.isr=1",
            "share.coordinator.state.topic.replication.factor=1",
            "share.coordinator.state.topic.min.isr=1",
            "group.initial.rebalance.delay.ms=0",
            "auto.create.topics.enable=false",
            "log.retention.hours=336",
            "",
        ]
    )


def _kafka_java(s: Settings, cls: str, *args: str, heap: bool = False) -> list[str]:
    argv = ["java"]
    if heap:
        argv += [
            f"-Xms{min(256, s.kafka_heap_mb)}m",
            f"-Xmx{s.kafka_heap_mb}m",
            "-XX:+UseG1GC",
            "-Djava.awt.headless=true",
        ]
    log4j = s.run / "kafka" / "log4j2.yaml"
    argv += [
        f"-Dlog4j2.configurationFile={log4j}",
        "-cp",
        f"{s.jars / 'kafka-broker'}/*",
        cls,
        *args,
    ]
    return argv


LOG4J2 = """Configuration:
  Appenders:
    Console:
      name: STDOUT
      PatternLayout:
        pattern: "[%d] %p %m (%c)%n"
  Loggers:
    Root:
      level: INFO
      AppenderRef:
        - ref: STDOUT
    Logger:
      - name: kafka.request.logger
        level: WARN
      - name: org.apache.kafka.controller
        level: WARN
"""


def kafka_ready(s: Settings, since: int = 0) -> bool:
    logfile = s.logs / "kafka.log"
    if not port_open(s.kafka_port):
        return False
    try:
        with open(logfile, "rb") as fh:
            fh.seek(since)
            return b"Kafka Server started" in fh.read()
    except OSError:
        return False


def start_kafka(s: Settings) -> None:
    kdir = s.run / "kafka"
    pidfile = s.run / "kafka.pid"
    logfile = s.logs / "kafka.log"
    if read_pid(pidfile) and port_open(s.kafka_port):
        return
    for port in (s.kafka_port, s.kafka_controller_port):
        if port_open(port):
            raise ServiceError(
                f"port {port} is taken by another program: set "
                "REG_KAFKA_PORT / REG_KAFKA_CONTROLLER_PORT to free ports"
            )
    kdir.mkdir(parents=True, exist_ok=True)
    props = kdir / "server.properties"
    props.write_text(_kafka_properties(s))
    (kdir / "log4j2.yaml").write_text(LOG4J2)
    if not (kdir / "data" / "meta.properties").exists():
        cluster_id = (
            subprocess.run(
                _kafka_java(s, "kafka.tools.StorageTool", "random-uuid"),
                check=True,
                capture_output=True,
                text=True,
            )
            .stdout.strip()
            .splitlines()[-1]
        )
        subprocess.run(
            _kafka_java(
                s,
                "kafka.tools.StorageTool",
                "format",
                "-t",
                cluster_id,
                "-c",
                str(props),
                "--standalone",
            ),
            check=True,
            capture_output=True,
        )
    s.logs.mkdir(parents=True, exist_ok=True)
    offset = logfile.stat().st_size if logfile.exists() else 0
    _spawn(s, "kafka", _kafka_java(s, "kafka.Kafka", str(props), heap=True))
    wait_until("Kafka", lambda: kafka_ready(s, offset), 120, logfile)


# ---------------------------------------------------------------- Airflow


def airflow_env(s: Settings) -> dict[str, str]:
    env = base_env(s)
    home = s.airflow_home
    pw = secrets_for(s)
    env.update(connection_env(s))
    env.update(
        {
            "AIRFLOW_HOME": str(home),
            "AIRFLOW__CORE__DAGS_FOLDER": str(ROOT / "dags"),
            "AIRFLOW__CORE__PLUGINS_FOLDER": str(ROOT / "plugins"),
            "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
            "AIRFLOW__CORE__EXECUTOR": "LocalExecutor",
            "AIRFLOW__CORE__PARALLELISM": str(s.airflow_parallelism),
            "AIRFLOW__CORE__MAX_ACTIVE_TASKS_PER_DAG": str(s.airflow_parallelism),
            "AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION": "True",
            "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS": "admin:admin",
            "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE": str(
                home / "simple_auth_manager_passwords.json"
            ),
            "AIRFLOW__CORE__DEFAULT_TIMEZONE": "utc",
            "AIRFLOW__API__PORT": str(s.airflow_port),
            "AIRFLOW__API__HOST": "127.0.0.1",
            "AIRFLOW__API__BASE_URL": s.airflow_url,
            "AIRFLOW__API__WORKERS": "1",
            "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"{s.airflow_url}/execution/",
            "AIRFLOW__DAG_PROCESSOR__REFRESH_INTERVAL": "30",
            "AIRFLOW__DAG_PROCESSOR__MIN_FILE_PROCESS_INTERVAL": "30",
            "AIRFLOW__SCHEDULER__ENABLE_HEALTH_CHECK": "True",
            "AIRFLOW__SCHEDULER__TASK_INSTANCE_HEARTBEAT_TIMEOUT": "60",
            "AIRFLOW__LOGGING__LOGGING_LEVEL": "INFO",
            "AIRFLOW__DATABASE__SQL_ALCHEMY_CONNECT_ARGS": "stackctl.airflow_db.SQLITE_CONNECT_ARGS",
            "AIRFLOW__API_AUTH__JWT_SECRET": pw["AIRFLOW_ADMIN_PASSWORD"] + "-jwt",
            "AIRFLOW__CORE__FERNET_KEY": "",
            "PYTHONPATH": f"{ROOT / 'plugins'}:{ROOT}",
        }
    )
    return env


def airflow_health(s: Settings) -> dict | None:
    try:
        with urllib.request.urlopen(f"{s.airflow_url}/api/v2/monitor/health", timeout=2) as r:
            return json.load(r)
    except (urllib.error.URLError, OSError, ValueError):
        return None


def airflow_healthy(s: Settings) -> bool:
    health = airflow_health(s)
    if not health:
        return False
    parts = ("metadatabase", "scheduler", "dag_processor", "triggerer")
    return all(health.get(p, {}).get("status") == "healthy" for p in parts)


def start_airflow(s: Settings) -> None:
    pidfile = s.run / "airflow.pid"
    logfile = s.logs / "airflow.log"
    if read_pid(pidfile) and airflow_healthy(s):
        return
    if port_open(s.airflow_port):
        raise ServiceError(
            f"port {s.airflow_port} is taken by another program: "
            "set REG_AIRFLOW_PORT to a free port"
        )
    home = s.airflow_home
    home.mkdir(parents=True, exist_ok=True)
    pwfile = home / "simple_auth_manager_passwords.json"
    pwfile.write_text(json.dumps({"admin": secrets_for(s)["AIRFLOW_ADMIN_PASSWORD"]}))
    env = airflow_env(s)
    airflow = str(s.venv / "bin" / "airflow")
    subprocess.run(
        [airflow, "db", "migrate"], env=env, check=True, capture_output=True, cwd=str(s.run)
    )
    _spawn(s, "airflow", [airflow, "standalone"], env=env)
    wait_until("Airflow", lambda: airflow_healthy(s), 180, logfile)


# ---------------------------------------------------------------- stop


def stop_all(s: Settings, timeout: float = 30) -> list[int]:
    """Stop every marked process: Airflow first (SIGINT to its group), then the rest."""
    stopped = set(marked_pids(s))
    air = read_pid(s.run / "airflow.pid")
    if air:
        try:
            os.killpg(air, signal.SIGINT)
        except ProcessLookupError:
            pass
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline and _pid_alive(air):
            time.sleep(0.2)
    for sig, wait in ((signal.SIGTERM, timeout), (signal.SIGKILL, 10)):
        pids = marked_pids(s)
        if not pids:
            break
        for pid in pids:
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline and marked_pids(s):
            time.sleep(0.2)
    left = marked_pids(s)
    if left:
        raise ServiceError(f"processes still running after SIGKILL: {left}")
    for name in ("mariadb", "kafka", "airflow"):
        (s.run / f"{name}.pid").unlink(missing_ok=True)
    return sorted(stopped)


def stop_service(s: Settings, name: str, sig: int = signal.SIGTERM, timeout: float = 60) -> None:
    """Stop one service and its children (used by fault tests)."""
    pid = read_pid(s.run / f"{name}.pid")
    if not pid:
        return
    try:
        os.killpg(pid, sig)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and _pid_alive(pid):
        time.sleep(0.1)
    if _pid_alive(pid):
        os.killpg(pid, signal.SIGKILL)
