"""Settings of the local stack: paths, ports and sizes, each overridable by environment.

Two profiles share one install (venv, jars) under `.state/` and keep their runtime state apart:
`local` (what `make up` runs) and `test` (what `make test` runs, on other ports), so the
test suite can run beside a running stack.
"""

from __future__ import annotations

import base64
import os
import secrets
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

# Ports per profile: (mysql, kafka, kafka controller, airflow api-server, postgres)
PROFILES = _PORTS = {
    "local": (3307, 9092, 9093, 8080, 5433),
    "test": (3317, 9192, 9193, 8180, 5443),
}

DATABASE = "sakila"
TOPIC = "customer_registrations"

# MySQL roles: each Airflow connection id maps to one of them.
ROLES = {
    "ingest": "reg_ingest",
    "publisher": "reg_publisher",
    "stream": "reg_stream",
    "reader": "reg_reader",
}


def _env_int(name: str, default: int) -> int:
    raw = os.environ.get(name)
    if raw is None or raw == "":
        return default
    try:
        return int(raw)
    except ValueError as exc:
        raise SystemExit(f"{name}={raw!r} is not an integer") from exc


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
        return f"127.0.0.1:{self.kafka_port}"

    @property
    def airflow_url(self) -> str:
        return f"http://127.0.0.1:{self.airflow_port}"


def load(profile: str | None = None) -> Settings:
    profile = profile or os.environ.get("REG_PROFILE", "local")
    if profile not in _PORTS:
        raise SystemExit(f"unknown profile {profile!r}: use one of {sorted(_PORTS)}")
    mysql, kafka, controller, airflow, pg = _PORTS[profile]
    state = Path(os.environ.get("REG_STATE_DIR", ROOT / ".state")).resolve()
    return Settings(
        profile=profile,
        state=state,
        mysql_port=_env_int("REG_MYSQL_PORT", mysql),
        kafka_port=_env_int("REG_KAFKA_PORT", kafka),
        kafka_controller_port=_env_int("REG_KAFKA_CONTROLLER_PORT", controller),
        airflow_port=_env_int("REG_AIRFLOW_PORT", airflow),
        airflow_parallelism=_env_int("REG_AIRFLOW_PARALLELISM", 4),
        airflow_api_workers=_env_int("REG_AIRFLOW_API_WORKERS", 2),
        pg_port=_env_int("REG_PG_PORT", pg),
        kafka_heap_mb=_env_int("REG_KAFKA_HEAP_MB", 512),
        spark_shuffle_partitions=_env_int("REG_SPARK_SHUFFLE_PARTITIONS", 2),
        spark_driver_memory=os.environ.get("REG_SPARK_DRIVER_MEMORY", "1g"),
        spark_master=os.environ.get("REG_SPARK_MASTER", "local[2]"),
        topic_partitions=_env_int("REG_TOPIC_PARTITIONS", 2),
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
    env.update(
        {
            "REGSTREAM_TOPIC": TOPIC,
            "REGSTREAM_TOPIC_PARTITIONS": str(s.topic_partitions),
            "REGSTREAM_STATE_DIR": str(s.run),
            "REGSTREAM_SPARK_JARS": ",".join(str(p) for p in spark_kafka_jars(s)),
            "REGSTREAM_SPARK_SHUFFLE_PARTITIONS": str(s.spark_shuffle_partitions),
            "REGSTREAM_SPARK_DRIVER_MEMORY": s.spark_driver_memory,
            "REGSTREAM_KAFKA_BOOTSTRAP": s.kafka_bootstrap,
        }
    )
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
