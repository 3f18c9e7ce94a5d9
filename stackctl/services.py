"""The profile's services: MariaDB, PostgreSQL, Kafka (KRaft) and Airflow's components.

Each runs as a supervisord program (stackctl/supervisor.py), which restarts it when it dies.
This module prepares each service (data directories, users, schema), declares its program and
waits until it is ready. Every process carries REGSTREAM_RUN_DIR in its environment, so `down`
can sweep up a stray child (a Spark driver whose task runner died) after supervisord stopped.
"""

from __future__ import annotations

import getpass
import json
import logging
import os
import pwd
import shutil
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Set
from functools import partial
from pathlib import Path

from stackctl import supervisor
from stackctl.config import (
    DATABASE,
    ENV_VARS,
    ROLES,
    ROOT,
    Settings,
    connection_env,
    secrets_for,
    write_private,
)
from stackctl.supervisor import Program

log = logging.getLogger(__name__)

MARK = "REGSTREAM_RUN_DIR"
AIRFLOW_COMPONENTS = ("api-server", "scheduler", "dag-processor", "triggerer")
TASK_CONNECTIONS = (
    "MYSQL_INGEST",
    "MYSQL_PUBLISHER",
    "MYSQL_STREAM",
    "MYSQL_READER",
    "MYSQL_RECONCILE",
    "KAFKA_DEFAULT",
    "SPARK_DEFAULT",
)


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


def _stat_fields(pid: int) -> list[str]:
    return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()


def _ancestors() -> set[int]:
    out, pid = set(), os.getpid()
    while pid > 1:
        out.add(pid)
        try:
            pid = int(_stat_fields(pid)[1])
        except (OSError, ValueError, IndexError):
            break
    return out


def _in_run_dir(entry: Path, run: Path) -> bool:
    try:
        cwd = Path(os.readlink(entry / "cwd"))
    except OSError:
        return False
    return cwd == run or run in cwd.parents


def marked_pids(s: Settings, groups: Set[int] = frozenset()) -> list[int]:
    """Every live process of this profile: its environment mark, its working directory (every
    program starts in the profile's run folder, and children inherit it), or its process
    group (`groups`: the supervisord programs' pids). Several marks, because Airflow's
    processes rewrite their environ area with setproctitle and a process can leave its
    group; none of them can match another profile's processes."""
    needle = f"{MARK}={s.run}".encode()
    pids = []
    spare = _ancestors()  # never the caller's own shell, whatever its working directory
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) in spare:
            continue
        try:
            env = (entry / "environ").read_bytes()
            pgid = int(_stat_fields(int(entry.name))[2])
        except (OSError, ValueError, IndexError):
            continue
        mine = needle + b"\0" in env + b"\0" or pgid in groups or _in_run_dir(entry, s.run)
        if mine and _pid_alive(int(entry.name)):
            pids.append(int(entry.name))
    return pids


def profile_pids(s: Settings) -> list[int]:
    """The live processes of this profile (supervisord's tree and strays): what fault tests
    may signal, and nothing of another profile."""
    groups = {st.pid for st in supervisor.states(s).values() if st.pid}
    daemon = supervisor.daemon_pid(s)
    tree = set(descendants(daemon)) if daemon else set()
    return sorted(tree | set(marked_pids(s, groups)))


def descendants(root: int) -> list[int]:
    """root and every process below it."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                children.setdefault(int(_stat_fields(int(entry.name))[1]), []).append(
                    int(entry.name)
                )
            except (OSError, ValueError, IndexError):
                continue
    out, todo = [], [root]
    while todo:
        pid = todo.pop()
        out.append(pid)
        todo.extend(children.get(pid, []))
    return out


def base_env(s: Settings) -> dict[str, str]:
    """The environment of supervisord and so of every program: no secrets in it. The
    platform's REGSTREAM_* settings pass (none is a secret): a value the user set reaches
    every program; stackctl's own REG_* reach them through settings_env."""
    env = {
        k: v
        for k, v in os.environ.items()
        if k.startswith("REGSTREAM_") or not k.startswith(("AIRFLOW", "REG_", "MYSQL_", "PG"))
    }
    env[MARK] = str(s.run)
    env["PATH"] = f"{s.venv / 'bin'}:{env.get('PATH', '')}"
    env["TZ"] = "UTC"
    env["SPARK_LOCAL_IP"] = "127.0.0.1"
    return env


# ---------------------------------------------------------------- MariaDB


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
    _check_ports_free(s, "mariadb", s.mysql_port)
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
    from secrets, loopback only) and give it the role that sql/50_grants.sql defined."""
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


# ---------------------------------------------------------------- PostgreSQL (Airflow metadata)


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
        _check_ports_free(s, "postgres", s.pg_port)
        init_postgres(s)
        supervisor.start(s, "postgres")
        wait_until("PostgreSQL", lambda: _pg_ready(s), 60, s.logs / "postgres.log")
    pw = secrets_for(s)["AIRFLOW_DB_PASSWORD"]
    if _psql(s, "SELECT 1 FROM pg_roles WHERE rolname = 'airflow'") != "1":
        _psql(s, "CREATE ROLE airflow LOGIN")
    _psql(s, f"ALTER ROLE airflow PASSWORD '{pw}'")
    if _psql(s, "SELECT 1 FROM pg_database WHERE datname = 'airflow'") != "1":
        _psql(s, "CREATE DATABASE airflow OWNER airflow")


# ---------------------------------------------------------------- Kafka


def kafka_node_names(s: Settings) -> list[str]:
    """Program names of the Kafka nodes: `kafka` alone, or `kafka-1` ... `kafka-N`."""
    if s.kafka_nodes == 1:
        return ["kafka"]
    return [f"kafka-{n}" for n in range(1, s.kafka_nodes + 1)]


def _node(name: str) -> int:
    return int(name.rsplit("-", 1)[1]) if "-" in name else 1


def _kafka_properties(s: Settings, name: str) -> str:
    """server.properties of one node: broker and controller in one process (KRaft combined
    mode); with N nodes, N voters and replication factor min(N, 3), min ISR N-1."""
    node = _node(name)
    port, cport = s.kafka_node_ports(node)
    n = s.kafka_nodes
    rf, isr = min(n, 3), max(1, min(n, 3) - 1)
    if n == 1:
        quorum = f"controller.quorum.bootstrap.servers=127.0.0.1:{cport}"
    else:
        voters = ",".join(f"{i}@127.0.0.1:{s.kafka_node_ports(i)[1]}" for i in range(1, n + 1))
        quorum = f"controller.quorum.voters={voters}"
    return "\n".join(
        [
            "process.roles=broker,controller",
            f"node.id={node}",
            quorum,
            f"listeners=PLAINTEXT://127.0.0.1:{port},CONTROLLER://127.0.0.1:{cport}",
            f"advertised.listeners=PLAINTEXT://127.0.0.1:{port},CONTROLLER://127.0.0.1:{cport}",
            "controller.listener.names=CONTROLLER",
            "inter.broker.listener.name=PLAINTEXT",
            "listener.security.protocol.map=CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT",
            f"log.dirs={s.run / name / 'data'}",
            "num.partitions=2",
            f"default.replication.factor={rf}",
            f"min.insync.replicas={isr}",
            f"offsets.topic.replication.factor={rf}",
            f"transaction.state.log.replication.factor={rf}",
            f"transaction.state.log.min.isr={isr}",
            f"share.coordinator.state.topic.replication.factor={rf}",
            f"share.coordinator.state.topic.min.isr={isr}",
            "group.initial.rebalance.delay.ms=0",
            "auto.create.topics.enable=false",
            "log.retention.hours=336",
            "",
        ]
    )


def _kafka_java(s: Settings, name: str, cls: str, *args: str, heap: bool = False) -> list[str]:
    argv = ["java"]
    if heap:
        argv += [
            f"-Xms{min(256, s.kafka_heap_mb)}m",
            f"-Xmx{s.kafka_heap_mb}m",
            "-XX:+UseG1GC",
            "-Djava.awt.headless=true",
        ]
    log4j = s.run / name / "log4j2.yaml"
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


def kafka_ready(s: Settings, name: str = "kafka", since: int = 0) -> bool:
    logfile = s.logs / f"{name}.log"
    if not port_open(s.kafka_node_ports(_node(name))[0]):
        return False
    try:
        with open(logfile, "rb") as fh:
            fh.seek(since)
            return b"Kafka Server started" in fh.read()
    except OSError:
        return False


def _kafka_programs(s: Settings) -> list[Program]:
    return [
        Program(
            name,
            _kafka_java(s, name, "kafka.Kafka", str(s.run / name / "server.properties"), heap=True),
            s.run / name,
        )
        for name in kafka_node_names(s)
    ]


def _kafka_cluster_id(s: Settings) -> str:
    """One id for every node of the profile's Kafka cluster, made once."""
    path = s.run / "kafka-cluster.id"
    if path.exists():
        return path.read_text().strip()
    out = subprocess.run(
        _kafka_java(s, kafka_node_names(s)[0], "kafka.tools.StorageTool", "random-uuid"),
        check=True,
        capture_output=True,
        text=True,
    )
    cluster_id = out.stdout.strip().splitlines()[-1]
    path.write_text(cluster_id)
    return cluster_id


def init_kafka(s: Settings, name: str) -> None:
    kdir = s.run / name
    kdir.mkdir(parents=True, exist_ok=True)
    props = kdir / "server.properties"
    props.write_text(_kafka_properties(s, name))
    (kdir / "log4j2.yaml").write_text(LOG4J2)
    if (kdir / "data" / "meta.properties").exists():
        return
    fmt = ["format", "-t", _kafka_cluster_id(s), "-c", str(props)]
    if s.kafka_nodes == 1:
        fmt.append("--standalone")
    subprocess.run(
        _kafka_java(s, name, "kafka.tools.StorageTool", *fmt), check=True, capture_output=True
    )


def start_kafka(s: Settings) -> None:
    """Start every node, then wait for all of them (a quorum needs its voters together)."""
    offsets = {}
    for name in kafka_node_names(s):
        port, cport = s.kafka_node_ports(_node(name))
        if supervisor.pid_of(s, name) and port_open(port):
            continue
        _check_ports_free(s, name, port, cport)
        init_kafka(s, name)
        logfile = s.logs / f"{name}.log"
        offsets[name] = logfile.stat().st_size if logfile.exists() else 0
        supervisor.start(s, name)
    for name, offset in offsets.items():
        wait_until(
            f"Kafka node {name}",
            partial(kafka_ready, s, name, offset),
            120,
            s.logs / f"{name}.log",
        )


# ---------------------------------------------------------------- Spark standalone (cluster)


def spark_worker_names(s: Settings) -> list[str]:
    return [f"spark-worker-{n}" for n in range(1, s.spark_workers + 1)]


def _spark_programs(s: Settings) -> list[Program]:
    """A standalone master and its workers (1 core each), on loopback. The streaming job's
    checkpoint is a path under the profile's folder, which every node on this machine sees."""
    if not s.spark_workers:
        return []
    spark_class = str(s.venv / "bin" / "spark-class")
    master = [
        spark_class,
        "org.apache.spark.deploy.master.Master",
        "--host",
        "127.0.0.1",
        "--port",
        str(s.spark_master_port),
        "--webui-port",
        str(s.spark_master_ui),
    ]
    programs = [Program("spark-master", master, s.run / "spark")]
    for n, name in enumerate(spark_worker_names(s), start=1):
        work = s.run / "spark" / name
        worker = [
            spark_class,
            "org.apache.spark.deploy.worker.Worker",
            f"spark://127.0.0.1:{s.spark_master_port}",
            "--host",
            "127.0.0.1",
            "--cores",
            "1",
            "--memory",
            s.spark_worker_memory,
            "--webui-port",
            str(s.spark_master_ui + n),
            "--work-dir",
            str(work),
        ]
        programs.append(Program(name, worker, s.run / "spark"))
    return programs


def spark_master_status(s: Settings) -> dict | None:
    """The master's JSON view (workers, their state, running apps), or None."""
    try:
        url = f"http://127.0.0.1:{s.spark_master_ui}/json/"
        with urllib.request.urlopen(url, timeout=2) as r:
            return json.load(r)
    except (urllib.error.URLError, OSError, ValueError):
        return None


def start_spark(s: Settings) -> None:
    if not s.spark_workers:
        return
    for sub in ["spark", *(f"spark/{w}" for w in spark_worker_names(s))]:
        (s.run / sub).mkdir(parents=True, exist_ok=True)
    for program in _spark_programs(s):
        supervisor.start(s, program.name)

    def workers_alive() -> bool:
        st = spark_master_status(s)
        alive = [w for w in (st or {}).get("workers", []) if w.get("state") == "ALIVE"]
        return len(alive) >= s.spark_workers

    wait_until("Spark workers", workers_alive, 120, s.logs / "spark-master.log")


# ---------------------------------------------------------------- Redis (Celery broker, cluster)


def _redis_conf(s: Settings) -> Path:
    """redis.conf holds the password (requirepass), so it is written 0600."""
    rdir = s.run / "redis"
    rdir.mkdir(parents=True, exist_ok=True)
    conf = rdir / "redis.conf"
    write_private(
        conf,
        "\n".join(
            [
                "bind 127.0.0.1",
                f"port {s.redis_port}",
                f"dir {rdir}",
                "protected-mode yes",
                f"requirepass {secrets_for(s)['REDIS_PASSWORD']}",
                "appendonly yes",
                "save ''",
                "",
            ]
        ),
    )
    return conf


def _redis_programs(s: Settings) -> list[Program]:
    if not s.redis_port or s.executor != "CeleryExecutor":
        return []
    return [
        Program("redis", ["redis-server", str(s.run / "redis" / "redis.conf")], s.run / "redis")
    ]


def start_redis(s: Settings) -> None:
    if not _redis_programs(s):
        return
    _redis_conf(s)
    if not supervisor.pid_of(s, "redis"):
        _check_ports_free(s, "redis", s.redis_port)
        supervisor.start(s, "redis")
    wait_until("Redis", lambda: port_open(s.redis_port), 30, s.logs / "redis.log")


# ---------------------------------------------------------------- Airflow

# Which Airflow connections each component's processes receive (issue: least privilege).
# The scheduler runs the tasks (LocalExecutor forks them), so it holds the roles the tasks
# use (the lag monitor reads through the reader role); the API server serves the live view,
# which reads through the reader role only; the triggerer's CDC probe uses the publisher's.
COMPONENT_CONNECTIONS: dict[str, tuple[str, ...]] = {
    "api-server": ("MYSQL_READER",),
    "scheduler": TASK_CONNECTIONS,
    "dag-processor": (),
    "triggerer": ("MYSQL_PUBLISHER",),
    "celery-worker": TASK_CONNECTIONS,
}


def airflow_components(s: Settings) -> list[str]:
    """The Airflow processes of a profile: with Celery, N workers run the tasks."""
    workers = [f"celery-worker-{n}" for n in range(1, s.celery_workers + 1)]
    return [*AIRFLOW_COMPONENTS, *(workers if s.executor == "CeleryExecutor" else [])]


def _connections_of(s: Settings, component: str) -> tuple[str, ...]:
    if component.startswith("celery-worker"):
        return COMPONENT_CONNECTIONS["celery-worker"]
    if component == "scheduler" and s.executor == "CeleryExecutor":
        return ()  # tasks run on the Celery workers, not under the scheduler
    return COMPONENT_CONNECTIONS[component]


def _airflow_db_url(s: Settings) -> str:
    pw = secrets_for(s)["AIRFLOW_DB_PASSWORD"]
    return f"postgresql+psycopg2://airflow:{pw}@127.0.0.1:{s.pg_port}/airflow"


def airflow_env(s: Settings, component: str | None = None) -> dict[str, str]:
    """Airflow's environment. With a component, only the connections it uses; without one
    (CLI, tests), all of them."""
    env = base_env(s)
    home = s.airflow_home
    pw = secrets_for(s)
    conns = connection_env(s)
    if component is not None:
        keep = {f"AIRFLOW_CONN_{c}" for c in _connections_of(s, component)}
        conns = {k: v for k, v in conns.items() if not k.startswith("AIRFLOW_CONN_") or k in keep}
    env.update(conns)
    env.update(
        {
            "AIRFLOW_HOME": str(home),
            "AIRFLOW__CORE__DAGS_FOLDER": str(ROOT / "dags"),
            "AIRFLOW__CORE__PLUGINS_FOLDER": str(ROOT / "plugins"),
            "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
            "AIRFLOW__CORE__EXECUTOR": s.executor,
            "AIRFLOW__CORE__PARALLELISM": str(s.airflow_parallelism),
            "AIRFLOW__CORE__MAX_ACTIVE_TASKS_PER_DAG": str(s.airflow_parallelism),
            "AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION": "True",
            "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS": "admin:admin",
            "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE": str(
                home / "simple_auth_manager_passwords.json"
            ),
            "AIRFLOW__CORE__DEFAULT_TIMEZONE": "utc",
            "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": _airflow_db_url(s),
            "AIRFLOW__API__PORT": str(s.airflow_port),
            "AIRFLOW__API__HOST": "127.0.0.1",
            "AIRFLOW__API__BASE_URL": s.airflow_url,
            "AIRFLOW__API__WORKERS": str(s.airflow_api_workers),
            "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"{s.airflow_url}/execution/",
            "AIRFLOW__DAG_PROCESSOR__REFRESH_INTERVAL": "30",
            "AIRFLOW__DAG_PROCESSOR__MIN_FILE_PROCESS_INTERVAL": "30",
            "AIRFLOW__SCHEDULER__ENABLE_HEALTH_CHECK": "False",
            "AIRFLOW__SCHEDULER__TASK_INSTANCE_HEARTBEAT_TIMEOUT": "60",
            # LocalExecutor runs tasks as the scheduler's children, so a scheduler that dies
            # takes its running tasks along; its successor resets them for a retry after this
            # check (default 300 s), once the dead scheduler missed its health threshold.
            "AIRFLOW__SCHEDULER__ORPHANED_TASKS_CHECK_INTERVAL": "20",
            "AIRFLOW__SCHEDULER__SCHEDULER_HEALTH_CHECK_THRESHOLD": "20",
            "AIRFLOW__LOGGING__LOGGING_LEVEL": "INFO",
            "AIRFLOW__API_AUTH__JWT_SECRET": pw["AIRFLOW_JWT_SECRET"],
            "AIRFLOW__CORE__FERNET_KEY": pw["AIRFLOW_FERNET_KEY"],
        }
    )
    if s.executor == "CeleryExecutor":
        env.update(
            {
                "AIRFLOW__CELERY__BROKER_URL": (
                    f"redis://:{pw['REDIS_PASSWORD']}@127.0.0.1:{s.redis_port}/0"
                ),
                "AIRFLOW__CELERY__RESULT_BACKEND": "db+" + _airflow_db_url(s),
                "AIRFLOW__CELERY__WORKER_CONCURRENCY": "3",
            }
        )
    return env


# Each component skips its log server: every process shares one log folder on this machine,
# and the API server reads task logs from it (no socket to open).
_COMPONENT_ARGS = {
    "api-server": [],
    "scheduler": ["--skip-serve-logs"],
    "dag-processor": [],
    "triggerer": ["--skip-serve-logs"],
}


def _component_argv(component: str) -> list[str]:
    if component.startswith("celery-worker"):
        # each worker its own Celery name; logs are read from the shared folder
        return [
            "celery",
            "worker",
            "--celery-hostname",
            f"{component}@127.0.0.1",
            "--skip-serve-logs",
        ]
    return [component, *_COMPONENT_ARGS[component]]


def exec_component(s: Settings, component: str) -> None:
    """Replace this process with an Airflow component (supervisord's command for it)."""
    if component not in airflow_components(s):
        raise ServiceError(f"{component} is not a component of profile {s.profile}")
    env = airflow_env(s, component)
    airflow = str(s.venv / "bin" / "airflow")
    os.chdir(s.run)
    if _owns_log(s, component):
        _log_to_file(s.logs / f"airflow-{component}.log")
    os.execve(airflow, [airflow, *_component_argv(component)], env)


def _owns_log(s: Settings, component: str) -> bool:
    """The LocalExecutor's scheduler writes its log itself: its task processes (children,
    sharing its stdout) must keep a working stdout after it dies, long enough to stop their
    task cleanly (supervisord closes a dead program's pipe: they would die of EPIPE, exit 125,
    leaving the Spark driver running with no task around it)."""
    return component == "scheduler" and s.executor == "LocalExecutor"


def _log_to_file(path: Path, max_bytes: int = 50 << 20, backups: int = 2) -> None:
    """stdout and stderr -> `path` (appended), rotated at start when over `max_bytes`."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.exists() and path.stat().st_size > max_bytes:
        for n in range(backups, 0, -1):
            older = path.with_name(f"{path.name}.{n - 1}") if n > 1 else path
            if older.exists():
                older.replace(path.with_name(f"{path.name}.{n}"))
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    os.close(fd)


def settings_env(s: Settings) -> dict[str, str]:
    """The REG_* variables under which `config.load(s.profile)` returns `s`."""
    # base_env drops every REG_* variable, so without them a component of a profile started on
    # other ports or another state folder would read the default ones (seen: an API server on
    # REG_PG_PORT=5463 connecting to 5443). None of them is a secret.
    return {var: str(getattr(s, field)) for field, var in ENV_VARS.items()}


def _airflow_programs(s: Settings) -> list[Program]:
    python = str(s.venv / "bin" / "python")
    return [
        Program(
            f"airflow-{c}",
            [python, "-m", "stackctl", "--profile", s.profile, "exec", c],
            ROOT,
            startsecs=5,
            env=settings_env(s),
            # a component that dies takes its processes along (LocalExecutor: its tasks);
            # a Celery worker's task is failed by Airflow's heartbeat timeout and retried
            stop_leftovers=not c.startswith("celery-worker"),
            own_log=_owns_log(s, c),
        )
        for c in airflow_components(s)
    ]


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
    """PostgreSQL (and Redis for Celery), `airflow db migrate`, then the components."""
    start_postgres(s)
    start_redis(s)
    components = airflow_components(s)
    if all(supervisor.pid_of(s, f"airflow-{c}") for c in components) and airflow_healthy(s):
        return
    _check_ports_free(s, "airflow-api-server", s.airflow_port)
    home = s.airflow_home
    home.mkdir(parents=True, exist_ok=True)
    write_private(
        home / "simple_auth_manager_passwords.json",
        json.dumps({"admin": secrets_for(s)["AIRFLOW_ADMIN_PASSWORD"]}),
    )
    res = subprocess.run(
        [str(s.venv / "bin" / "airflow"), "db", "migrate"],
        env=airflow_env(s, "scheduler"),
        capture_output=True,
        text=True,
        cwd=str(s.run),
    )
    if res.returncode != 0:
        raise ServiceError(f"airflow db migrate failed:\n{res.stdout[-2000:]}{res.stderr[-2000:]}")
    for c in components:
        supervisor.start(s, f"airflow-{c}")
    wait_until("Airflow", lambda: airflow_healthy(s), 180, s.logs / "airflow-api-server.log")


# ---------------------------------------------------------------- supervision


def programs(s: Settings) -> list[Program]:
    return [
        _mariadb_program(s),
        _postgres_program(s),
        *_redis_programs(s),
        *_kafka_programs(s),
        *_spark_programs(s),
        *_airflow_programs(s),
    ]


def start_data_services(s: Settings) -> None:
    """supervisord, MariaDB with the schema, and Kafka: what the integration tests and the
    benchmarks need (Airflow and Spark come on top with start_airflow / start_spark)."""
    start_supervisor(s)
    start_mariadb(s)
    apply_schema(s)
    start_kafka(s)


def start_supervisor(s: Settings) -> None:
    s.run.mkdir(parents=True, exist_ok=True)
    supervisor.start_daemon(s, programs(s), base_env(s))


def _check_ports_free(s: Settings, program: str, *ports: int) -> None:
    """A port answered by something that is not this profile's program is a clash to name."""
    if supervisor.pid_of(s, program):
        return
    for port in ports:
        if port_open(port):
            raise ServiceError(
                f"port {port} (for {program}) is taken by another program: "
                "choose another with the REG_*_PORT variables (README, Configuration)"
            )


def stop_all(s: Settings, timeout: float = 30) -> list[int]:
    """Stop supervisord and its programs, then any stray process of this profile."""
    groups = {st.pid for st in supervisor.states(s).values() if st.pid}
    daemon = supervisor.daemon_pid(s)
    stopped = set(marked_pids(s, groups)) | (set(descendants(daemon)) if daemon else set())
    supervisor.shutdown(s)
    for sig, wait in ((signal.SIGTERM, timeout), (signal.SIGKILL, 10)):
        pids = marked_pids(s, groups)
        if not pids:
            break
        log.info("stopping %d stray processes of %s with %s", len(pids), s.profile, sig.name)
        for pid in pids:
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline and marked_pids(s, groups):
            time.sleep(0.2)
    left = marked_pids(s, groups)
    if left:
        raise ServiceError(f"processes still running after SIGKILL: {left}")
    return sorted(stopped)


def kill_program(s: Settings, name: str, sig: int = signal.SIGKILL) -> int:
    """Signal one program's main process (fault tests); returns the pid signalled."""
    pid = supervisor.pid_of(s, name)
    if not pid:
        raise ServiceError(f"{name} is not running")
    os.kill(pid, sig)
    return pid


def stop_program(s: Settings, name: str) -> None:
    supervisor.ctl(s, "stop", name)
