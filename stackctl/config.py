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

from regstream import settings as regstream_settings
from regstream.settings import DEFAULTS

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

TOPIC = DEFAULTS["REGSTREAM_TOPIC"]

# Before the REGSTREAM_* settings reached the programs, these stackctl variables set the same
# values; still read, when the REGSTREAM_* variable is unset.
LEGACY_ALIASES = {
    "REG_SPARK_SHUFFLE_PARTITIONS": "REGSTREAM_SPARK_SHUFFLE_PARTITIONS",
    "REG_SPARK_DRIVER_MEMORY": "REGSTREAM_SPARK_DRIVER_MEMORY",
    "REG_TOPIC_PARTITIONS": "REGSTREAM_TOPIC_PARTITIONS",
}

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


def env_int(name: str, default: int) -> int:
    """An integer REG_* variable of the stack (ports, sizes), else `default`."""
    return regstream_settings.env_int(name, default)


# The REG_* variable that overrides each field of Settings (profile, executor and
# kafka_nodes come from the profile alone). `stackctl exec` rebuilds a program's Settings
# from them (services.settings_env), so this is the one list.
ENV_VARS: dict[str, str] = {
    "state": "REG_STATE_DIR",
    "mysql_port": "REG_MYSQL_PORT",
    "kafka_port": "REG_KAFKA_PORT",
    "kafka_controller_port": "REG_KAFKA_CONTROLLER_PORT",
    "airflow_port": "REG_AIRFLOW_PORT",
    "airflow_parallelism": "REG_AIRFLOW_PARALLELISM",
    "airflow_api_workers": "REG_AIRFLOW_API_WORKERS",
    "pg_port": "REG_PG_PORT",
    "kafka_heap_mb": "REG_KAFKA_HEAP_MB",
    "spark_master": "REG_SPARK_MASTER",
    "celery_workers": "REG_CELERY_WORKERS",
    "spark_workers": "REG_SPARK_WORKERS",
    "spark_master_port": "REG_SPARK_MASTER_PORT",
    "spark_master_ui": "REG_SPARK_MASTER_UI_PORT",
    "redis_port": "REG_REDIS_PORT",
    "spark_worker_memory": "REG_SPARK_WORKER_MEMORY",
}


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
    spark_master: str
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
    v = ENV_VARS
    state = Path(os.environ.get(v["state"], ROOT / ".state")).resolve()
    master = f"spark://127.0.0.1:{p.spark_master_port}" if p.spark_workers else "local[2]"
    return Settings(
        profile=profile,
        state=state,
        mysql_port=env_int(v["mysql_port"], p.mysql),
        kafka_port=env_int(v["kafka_port"], p.kafka),
        kafka_controller_port=env_int(v["kafka_controller_port"], p.controller),
        airflow_port=env_int(v["airflow_port"], p.airflow),
        airflow_parallelism=env_int(v["airflow_parallelism"], 4),
        airflow_api_workers=env_int(v["airflow_api_workers"], 2),
        pg_port=env_int(v["pg_port"], p.pg),
        kafka_heap_mb=env_int(v["kafka_heap_mb"], 512 if p.kafka_nodes == 1 else 384),
        spark_master=os.environ.get(v["spark_master"], master),
        kafka_nodes=p.kafka_nodes,
        executor=p.executor,
        celery_workers=env_int(v["celery_workers"], p.celery_workers),
        spark_workers=env_int(v["spark_workers"], p.spark_workers),
        spark_master_port=env_int(v["spark_master_port"], p.spark_master_port),
        spark_master_ui=env_int(v["spark_master_ui"], p.spark_master_ui),
        redis_port=env_int(v["redis_port"], p.redis),
        spark_worker_memory=os.environ.get(v["spark_worker_memory"], "1g"),
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


def platform_settings_env(s: Settings, environ: dict[str, str] | None = None) -> dict[str, str]:
    """Every REGSTREAM_* setting for the programs: the user's value wherever one is set (in
    `environ`, default os.environ), else what this profile derives from its ports and paths,
    else the default of regstream.settings. Checked, so a bad value fails `up` at once."""
    env = dict(os.environ if environ is None else environ)
    for legacy, name in LEGACY_ALIASES.items():
        if env.get(legacy, "").strip() and not env.get(name, "").strip():
            env[name] = env[legacy]
    derived = {
        "REGSTREAM_TOPIC_REPLICATION": str(min(3, s.kafka_nodes)),
        "REGSTREAM_KAFKA_BOOTSTRAP": s.kafka_bootstrap,
    }
    if s.spark_workers:
        derived["REGSTREAM_SPARK_EXECUTOR_MEMORY"] = "512m"
        derived["REGSTREAM_SPARK_CORES_MAX"] = str(s.spark_workers)
    for name, value in derived.items():
        if not env.get(name, "").strip():
            env[name] = value
    out = regstream_settings.load(env).env()
    out = {k: v for k, v in out.items() if v != ""}  # blank optional: Spark's own default
    out["REGSTREAM_STATE_DIR"] = env.get("REGSTREAM_STATE_DIR", "").strip() or str(s.run)
    out["REGSTREAM_SPARK_JARS"] = env.get("REGSTREAM_SPARK_JARS", "").strip() or ",".join(
        str(p) for p in spark_kafka_jars(s)
    )
    return out


def connection_env(s: Settings) -> dict[str, str]:
    """AIRFLOW_CONN_* variables (JSON form) and the package settings for tasks and tests."""
    import json

    platform = platform_settings_env(s)
    env: dict[str, str] = {}
    for role in ROLES:
        env[f"AIRFLOW_CONN_MYSQL_{role.upper()}"] = mysql_conn_json(s, role)
    env["AIRFLOW_CONN_KAFKA_DEFAULT"] = json.dumps(
        {
            "conn_type": "kafka",
            "extra": {"bootstrap.servers": platform["REGSTREAM_KAFKA_BOOTSTRAP"]},
        }
    )
    env["AIRFLOW_CONN_SPARK_DEFAULT"] = json.dumps(
        {"conn_type": "spark", "host": s.spark_master, "extra": {"deploy-mode": "client"}}
    )
    env.update(platform)
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
