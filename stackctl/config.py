"""Settings of the local stack: paths, ports and sizes, each overridable by environment.

Three profiles share one install (venv, jars) under `.state/` and keep their runtime state
apart: `local` (what `make up` runs), `test` (what `make test` runs, on other ports, so the
suite runs beside a running stack) and `cluster` (`make up PROFILE=cluster`: 3 Kafka nodes,
a Spark standalone master with 2 workers, Airflow with Celery workers; same code,
configuration only).
"""

from __future__ import annotations

import base64
import dataclasses
import os
import secrets
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


@dataclass(frozen=True)
class Profile:
    """A profile's defaults. Node i of Kafka (1-based) listens on kafka + 10*(i-1) and its
    controller on controller + 10*(i-1); Spark worker i's web UI on spark_master_ui + i."""

    mysql: int
    kafka: int
    controller: int
    airflow: int
    pg: int
    kafka_nodes: int = 1
    executor: str = "LocalExecutor"
    celery_workers: int = 0
    spark_workers: int = 0
    spark_master_port: int = 0
    spark_master_ui: int = 0
    redis: int = 0


PROFILES = {
    "local": Profile(3307, 9092, 9093, 8080, 5433),
    "test": Profile(3317, 9192, 9193, 8180, 5443),
    "cluster": Profile(
        3347,
        9492,
        9493,
        8480,
        5473,
        kafka_nodes=3,
        executor="CeleryExecutor",
        celery_workers=2,
        spark_workers=2,
        spark_master_port=7477,
        spark_master_ui=8490,
        redis=6479,
    ),
}
# what `make test` runs its cluster chaos tests on: the cluster topology on other ports
PROFILES["test-cluster"] = dataclasses.replace(
    PROFILES["cluster"],
    mysql=3357,
    kafka=9592,
    controller=9593,
    airflow=8580,
    pg=5483,
    spark_master_port=7577,
    spark_master_ui=8590,
    redis=6579,
)

DATABASE = "sakila"

# Every default of the platform's own settings, in one place. stackctl passes them to Airflow
# and the tests; the DAGs, the tasks and the Spark job's arguments read them through
# regstream.settings; docker-compose.yaml sets the same values (tests/unit/test_docker_compose
# compares them). Each can be overridden by the environment variable of the same name.
DEFAULTS: dict[str, str] = {
    "REGSTREAM_TOPIC": "customer_registrations",
    "REGSTREAM_TOPIC_PARTITIONS": "2",
    "REGSTREAM_TOPIC_REPLICATION": "1",
    "REGSTREAM_KAFKA_BOOTSTRAP": "127.0.0.1:9092",
    "REGSTREAM_WINDOW": "1 minute",
    "REGSTREAM_LATENESS": "7 days",
    "REGSTREAM_TRIGGER": "1 second",
    "REGSTREAM_PROGRESS_RETENTION_DAYS": "7",
    "REGSTREAM_GAP_MAX_WAIT_S": "0",
    "REGSTREAM_MAX_PUBLISH_DELAY_S": "60",
    "REGSTREAM_MAX_STREAM_DELAY_S": "60",
    "REGSTREAM_SPARK_SHUFFLE_PARTITIONS": "2",
    "REGSTREAM_SPARK_DRIVER_MEMORY": "2g",
    # reconcile_counts: windows younger than this (end to now, seconds) are still settling
    "REGSTREAM_RECONCILE_SETTLE_S": "120",
    "REGSTREAM_RECONCILE_SCHEDULE": "*/5 * * * *",
}
TOPIC = DEFAULTS["REGSTREAM_TOPIC"]

# MySQL roles: each Airflow connection id maps to one of them.
ROLES = {
    "ingest": "reg_ingest",
    "publisher": "reg_publisher",
    "stream": "reg_stream",
    "reader": "reg_reader",
    "reconcile": "reg_reconcile",
    # analysts' SQL clients: read-only views, statement time limit (sql/30_analysts.sql)
    "analyst": "reg_analyst",
}


def setting(name: str) -> str:
    """A platform setting: the environment's value, else its default."""
    return os.environ.get(name, "").strip() or DEFAULTS[name]


def env_int(name: str, default: int | None = None) -> int:
    """An integer from the environment (else `default`, else DEFAULTS), or a clear error."""
    raw = os.environ.get(name, "").strip()
    if raw == "":
        return default if default is not None else int(DEFAULTS[name])
    try:
        return int(raw)
    except ValueError:
        raise ValueError(f"environment variable {name}={raw!r} must be an integer") from None


@dataclass(frozen=True)
class Settings:
    profile: str
    state: Path
    mysql_port: int
    kafka_port: int
    kafka_controller_port: int
    airflow_port: int
    airflow_parallelism: int
    airflow_api_workers: int
    pg_port: int
    kafka_heap_mb: int
    spark_shuffle_partitions: int
    spark_driver_memory: str
    spark_master: str
    topic_partitions: int
    kafka_nodes: int
    executor: str
    celery_workers: int
    spark_workers: int
    spark_master_port: int
    spark_master_ui: int
    redis_port: int
    spark_worker_memory: str

    @property
    def cluster(self) -> bool:
        return self.kafka_nodes > 1 or self.spark_workers > 0 or self.celery_workers > 0

    def kafka_node_ports(self, node: int) -> tuple[int, int]:
        """(broker, controller) ports of Kafka node `node` (1-based)."""
        step = 10 * (node - 1)
        return self.kafka_port + step, self.kafka_controller_port + step

    @property
    def run(self) -> Path:
        return self.state / self.profile

    @property
    def venv(self) -> Path:
        return self.state / "venv"

    @property
    def jars(self) -> Path:
        return self.state / "jars"

    @property
    def logs(self) -> Path:
        return self.run / "logs"

    @property
    def mysql_socket(self) -> Path:
        return self.run / "mysql" / "mysqld.sock"

    @property
    def pg_dir(self) -> Path:
        return self.run / "postgres"

    @property
    def pg_socket_dir(self) -> Path:
        return self.pg_dir / "run"

    @property
    def supervisor_dir(self) -> Path:
        return self.run / "supervisor"

    @property
    def airflow_home(self) -> Path:
        return self.run / "airflow"

    @property
    def spark_state(self) -> Path:
        return self.run / "spark"

    @property
    def secrets_file(self) -> Path:
        return self.run / "secrets.env"

    @property
    def kafka_bootstrap(self) -> str:
        nodes = range(1, self.kafka_nodes + 1)
        return ",".join(f"127.0.0.1:{self.kafka_node_ports(n)[0]}" for n in nodes)

    @property
    def airflow_url(self) -> str:
        return f"http://127.0.0.1:{self.airflow_port}"


def load(profile: str | None = None) -> Settings:
    profile = profile or os.environ.get("REG_PROFILE", "local")
    if profile not in PROFILES:
        raise SystemExit(f"unknown profile {profile!r}: use one of {sorted(PROFILES)}")
    p = PROFILES[profile]
    state = Path(os.environ.get("REG_STATE_DIR", ROOT / ".state")).resolve()
    master = f"spark://127.0.0.1:{p.spark_master_port}" if p.spark_workers else "local[2]"
    return Settings(
        profile=profile,
        state=state,
        mysql_port=env_int("REG_MYSQL_PORT", p.mysql),
        kafka_port=env_int("REG_KAFKA_PORT", p.kafka),
        kafka_controller_port=env_int("REG_KAFKA_CONTROLLER_PORT", p.controller),
        airflow_port=env_int("REG_AIRFLOW_PORT", p.airflow),
        airflow_parallelism=env_int("REG_AIRFLOW_PARALLELISM", 4),
        airflow_api_workers=env_int("REG_AIRFLOW_API_WORKERS", 2),
        pg_port=env_int("REG_PG_PORT", p.pg),
        kafka_heap_mb=env_int("REG_KAFKA_HEAP_MB", 512 if p.kafka_nodes == 1 else 384),
        spark_shuffle_partitions=env_int(
            "REG_SPARK_SHUFFLE_PARTITIONS", int(DEFAULTS["REGSTREAM_SPARK_SHUFFLE_PARTITIONS"])
        ),
        spark_driver_memory=os.environ.get(
            "REG_SPARK_DRIVER_MEMORY", DEFAULTS["REGSTREAM_SPARK_DRIVER_MEMORY"]
        ),
        spark_master=os.environ.get("REG_SPARK_MASTER", master),
        topic_partitions=env_int(
            "REG_TOPIC_PARTITIONS", int(DEFAULTS["REGSTREAM_TOPIC_PARTITIONS"])
        ),
        kafka_nodes=p.kafka_nodes,
        executor=p.executor,
        celery_workers=env_int("REG_CELERY_WORKERS", p.celery_workers),
        spark_workers=env_int("REG_SPARK_WORKERS", p.spark_workers),
        spark_master_port=env_int("REG_SPARK_MASTER_PORT", p.spark_master_port),
        spark_master_ui=env_int("REG_SPARK_MASTER_UI_PORT", p.spark_master_ui),
        redis_port=env_int("REG_REDIS_PORT", p.redis),
        spark_worker_memory=os.environ.get("REG_SPARK_WORKER_MEMORY", "1g"),
    )


def _fernet_key() -> str:
    return base64.urlsafe_b64encode(os.urandom(32)).decode()


# Every secret of a profile and how to make it; each is independent of the others.
SECRET_MAKERS: dict[str, Callable[[], str]] = {
    "MYSQL_ROOT_PASSWORD": lambda: secrets.token_urlsafe(18),
    "AIRFLOW_ADMIN_PASSWORD": lambda: secrets.token_urlsafe(18),
    "AIRFLOW_DB_PASSWORD": lambda: secrets.token_urlsafe(18),
    "AIRFLOW_JWT_SECRET": lambda: secrets.token_urlsafe(32),
    "AIRFLOW_FERNET_KEY": _fernet_key,
    "REDIS_PASSWORD": lambda: secrets.token_urlsafe(18),
    **{f"REG_{role.upper()}_PASSWORD": (lambda: secrets.token_urlsafe(18)) for role in ROLES},
}


def write_private(path: Path, body: str) -> None:
    """Write a file that only its owner can read, with no moment where it is readable by
    others: created 0600 under a temporary name, then renamed over the old one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.fchmod(fd, 0o600)
        os.write(fd, body.encode())
    finally:
        os.close(fd)
    os.replace(tmp, path)


def secrets_for(s: Settings) -> dict[str, str]:
    """Secrets of this profile, generated once into an ignored 0600 env file. Delete a line
    (or the file, with `make reset`) and the next `make up` generates a new value."""
    path = s.secrets_file
    values: dict[str, str] = {}
    if path.exists():
        for line in path.read_text().splitlines():
            if "=" in line and not line.startswith("#"):
                key, _, value = line.partition("=")
                values[key] = value
    missing = [k for k in SECRET_MAKERS if k not in values]
    if missing:
        for key in missing:
            values[key] = SECRET_MAKERS[key]()
        body = "# Generated by stackctl; never commit.\n" + "".join(
            f"{k}={v}\n" for k, v in sorted(values.items())
        )
        write_private(path, body)
    return values


def mysql_conn_json(s: Settings, role: str, database: str = DATABASE) -> str:
    """The Airflow connection (JSON form) of one MySQL role."""
    import json

    return json.dumps(
        {
            "conn_type": "mysql",
            "host": "127.0.0.1",
            "port": s.mysql_port,
            "login": ROLES[role],
            "password": secrets_for(s)[f"REG_{role.upper()}_PASSWORD"],
            "schema": database,
        }
    )


def connection_env(s: Settings) -> dict[str, str]:
    """AIRFLOW_CONN_* variables (JSON form) and the package settings for tasks and tests."""
    import json

    env: dict[str, str] = {}
    for role in ROLES:
        env[f"AIRFLOW_CONN_MYSQL_{role.upper()}"] = mysql_conn_json(s, role)
    env["AIRFLOW_CONN_KAFKA_DEFAULT"] = json.dumps(
        {
            "conn_type": "kafka",
            "extra": {"bootstrap.servers": s.kafka_bootstrap},
        }
    )
    env["AIRFLOW_CONN_SPARK_DEFAULT"] = json.dumps(
        {"conn_type": "spark", "host": s.spark_master, "extra": {"deploy-mode": "client"}}
    )
    env.update({k: setting(k) for k in DEFAULTS})  # REGSTREAM_* set by the user win
    env.update(
        {
            "REGSTREAM_TOPIC": TOPIC,
            "REGSTREAM_TOPIC_PARTITIONS": str(s.topic_partitions),
            "REGSTREAM_TOPIC_REPLICATION": str(min(3, s.kafka_nodes)),
            "REGSTREAM_STATE_DIR": str(s.run),
            "REGSTREAM_SPARK_JARS": ",".join(str(p) for p in spark_kafka_jars(s)),
            "REGSTREAM_SPARK_SHUFFLE_PARTITIONS": str(s.spark_shuffle_partitions),
            "REGSTREAM_SPARK_DRIVER_MEMORY": s.spark_driver_memory,
            "REGSTREAM_KAFKA_BOOTSTRAP": s.kafka_bootstrap,
        }
    )
    if s.spark_workers:
        env["REGSTREAM_SPARK_EXECUTOR_MEMORY"] = "512m"
        env["REGSTREAM_SPARK_CORES_MAX"] = str(s.spark_workers)
    return env


# Jars of the Kafka connector that pyspark's own jars/ folder lacks.
SPARK_KAFKA_PREFIXES = (
    "spark-sql-kafka-0-10",
    "spark-token-provider-kafka-0-10",
    "kafka-clients",
    "commons-pool2",
)


def spark_kafka_jars(s: Settings) -> list[Path]:
    folder = s.jars / "spark-kafka"
    if not folder.exists():
        return []
    return sorted(p for p in folder.glob("*.jar"))
