"""docker-compose.yaml against stackctl's cluster profile. No Docker engine runs here, so the
file is resolved by the real compose parser (`docker-compose config`, offline: interpolation,
anchors, schema) and its topology and settings compared with what `make up PROFILE=cluster`
runs, so the two deployments cannot drift apart."""

from __future__ import annotations

import re
import secrets
import subprocess
from pathlib import Path

import pytest
import yaml
from regstream import settings as regstream_settings

from stackctl import config, services

ROOT = Path(__file__).resolve().parents[2]
CLUSTER = config.load("cluster")
SECRET_NAMES = [
    "MYSQL_ROOT_PASSWORD",
    "REG_INGEST_PASSWORD",
    "REG_PUBLISHER_PASSWORD",
    "REG_STREAM_PASSWORD",
    "REG_READER_PASSWORD",
    "REG_RECONCILE_PASSWORD",
    "REG_ANALYST_PASSWORD",
    "AIRFLOW_DB_PASSWORD",
    "AIRFLOW_JWT_SECRET",
    "AIRFLOW_FERNET_KEY",
    "REDIS_PASSWORD",
]


@pytest.fixture(scope="module")
def env_values(tmp_path_factory) -> dict[str, str]:
    return {name: f"s3cret{secrets.token_hex(8)}" for name in SECRET_NAMES}


@pytest.fixture(scope="module")
def resolved(tmp_path_factory, env_values) -> dict:
    return compose_services(tmp_path_factory.mktemp("compose") / "test.env", env_values)


def compose_services(env_file: Path, values: dict[str, str]) -> dict:
    """The services as docker-compose's own parser resolves them with `values` in .env."""
    env_file.write_text("".join(f"{k}={v}\n" for k, v in values.items()))
    res = subprocess.run(
        ["docker-compose", "--env-file", str(env_file), "-f", "docker-compose.yaml", "config"],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    assert res.returncode == 0, res.stderr
    return yaml.safe_load(res.stdout)["services"]


def _kafka_properties() -> dict[str, str]:
    text = services._kafka_properties(CLUSTER, "kafka-1")
    return dict(line.split("=", 1) for line in text.splitlines() if "=" in line)


def test_the_file_needs_every_secret_from_the_environment() -> None:
    res = subprocess.run(
        ["docker-compose", "-f", "docker-compose.yaml", "config"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        env={"PATH": "/usr/bin:/bin"},
    )
    assert res.returncode != 0 and "set in .env" in res.stderr


def test_kafka_nodes_and_replication_equal_the_cluster_profile(resolved) -> None:
    nodes = {n: s for n, s in resolved.items() if re.fullmatch(r"kafka-\d+", n)}
    assert sorted(nodes) == services.kafka_node_names(CLUSTER)
    props = _kafka_properties()
    ids = sorted(int(s["environment"]["KAFKA_NODE_ID"]) for s in nodes.values())
    assert ids == list(range(1, CLUSTER.kafka_nodes + 1))
    for svc in nodes.values():
        env = {k: str(v) for k, v in svc["environment"].items()}
        assert env["KAFKA_PROCESS_ROLES"] == props["process.roles"]
        assert env["KAFKA_DEFAULT_REPLICATION_FACTOR"] == props["default.replication.factor"]
        assert env["KAFKA_MIN_INSYNC_REPLICAS"] == props["min.insync.replicas"]
        assert (
            env["KAFKA_OFFSETS_TOPIC_REPLICATION_FACTOR"]
            == props["offsets.topic.replication.factor"]
        )
        voters = [v.split("@")[0] for v in env["KAFKA_CONTROLLER_QUORUM_VOTERS"].split(",")]
        assert voters == [str(i) for i in ids]
    assert props["default.replication.factor"] == "3" and props["min.insync.replicas"] == "2"


def test_spark_and_celery_workers_equal_the_cluster_profile(resolved) -> None:
    spark = [n for n in resolved if n.startswith("spark-worker")]
    assert sorted(spark) == services.spark_worker_names(CLUSTER)
    celery = sorted(n.removeprefix("airflow-") for n in resolved if "celery-worker" in n)
    assert celery == [c for c in services.airflow_components(CLUSTER) if "celery" in c]
    for name in ("redis", "postgres", "spark-master"):
        assert name in resolved
    for name, svc in resolved.items():
        if name.startswith("airflow-"):
            assert svc["environment"]["AIRFLOW__CORE__EXECUTOR"] == CLUSTER.executor


def test_checkpoints_are_on_storage_every_spark_node_sees(resolved) -> None:
    def mount(svc: dict) -> str | None:
        for v in svc.get("volumes", []):  # compose 1.x prints "source:target[:mode]"
            parts = v.split(":") if isinstance(v, str) else [v["source"], v["target"]]
            if parts[0] == "spark-checkpoints":
                return parts[1]
        return None

    users = [n for n in resolved if n.startswith(("spark-worker", "airflow-celery-worker"))]
    targets = {mount(resolved[n]) for n in users}
    state = resolved["airflow-celery-worker-1"]["environment"]["REGSTREAM_STATE_DIR"]
    assert targets == {f"{state}/spark"}


def test_settings_and_connections_equal_the_cluster_profile(resolved) -> None:
    local = config.connection_env(CLUSTER)
    # host-specific values (paths, host names) differ by design; everything else is equal
    host_specific = {"REGSTREAM_STATE_DIR", "REGSTREAM_SPARK_JARS", "REGSTREAM_KAFKA_BOOTSTRAP"}
    for name, svc in resolved.items():
        if not name.startswith("airflow-"):
            continue
        env = {k: str(v) for k, v in svc["environment"].items()}
        assert {k for k in env if k.startswith("AIRFLOW_CONN_")} == {
            k for k in local if k.startswith("AIRFLOW_CONN_")
        }, name
        # blank in the file: the programs read the table's default, as stackctl's do
        effective = regstream_settings.load(env).env()
        for key, value in local.items():
            if key.startswith("REGSTREAM_") and key not in host_specific:
                assert effective.get(key) == value, (name, key)
        brokers = env["REGSTREAM_KAFKA_BOOTSTRAP"].split(",")
        assert len(brokers) == CLUSTER.kafka_nodes


def test_no_secret_in_the_file_or_on_any_command_line(resolved, env_values) -> None:
    text = (ROOT / "docker-compose.yaml").read_text()
    for value in env_values.values():
        assert value not in text
    for name, svc in resolved.items():
        argv = " ".join(map(str, svc.get("command") or []))
        check = " ".join(map(str, (svc.get("healthcheck") or {}).get("test") or []))
        for secret_name, value in env_values.items():
            assert value not in argv and value not in check, (name, secret_name)


def test_long_running_services_have_pinned_images_and_healthchecks(resolved) -> None:
    for name, svc in resolved.items():
        image = svc.get("image", "")
        assert re.search(r":[\w.\-]+$", image) and not image.endswith(":latest"), (name, image)
        if name != "airflow-init":  # one-shot: it exits when the migration is done
            assert svc["healthcheck"]["test"], name


def test_spark_jars_in_compose_match_the_fetched_connector(resolved) -> None:
    jars = {p.name for p in config.spark_kafka_jars(config.load("test"))}
    env = resolved["airflow-scheduler"]["environment"]
    assert jars and {Path(j).name for j in env["REGSTREAM_SPARK_JARS"].split(",")} == jars


def test_sql_files_are_numbered_and_idempotent() -> None:
    files = sorted((ROOT / "sql").glob("*.sql"))
    for f in files:
        text = f.read_text()
        for kind, rest in re.findall(
            r"CREATE (TABLE|TRIGGER|DATABASE|ROLE)\s+(\S+\s+\S+\s+\S+)", text
        ):
            assert rest.startswith("IF NOT EXISTS") or (
                kind == "TRIGGER" and f"DROP TRIGGER IF EXISTS {rest.split()[0]}" in text
            ), (f.name, kind, rest)


DERIVED = {
    "REGSTREAM_TOPIC_REPLICATION",
    "REGSTREAM_SPARK_EXECUTOR_MEMORY",
    "REGSTREAM_SPARK_CORES_MAX",
}


def test_every_platform_setting_defaults_to_the_table_and_yields_to_the_user() -> None:
    """Each REGSTREAM_* of the table is `${NAME:-}` in the file: blank, so regstream.settings
    supplies its default and no default is written twice; or, for what stackctl derives for
    the cluster profile (replication, executor sizes), the derived value."""
    from regstream.settings import SPECS

    text = (ROOT / "docker-compose.yaml").read_text()
    derived = config.platform_settings_env(CLUSTER, {})
    for spec in SPECS:
        found = re.findall(rf'^\s+{spec.name}: "\$\{{{spec.name}:-(.*)\}}"$', text, re.M)
        assert len(found) == 1, spec.name
        if spec.name != "REGSTREAM_KAFKA_BOOTSTRAP":  # host names of compose, by design
            want = derived.get(spec.name, "") if spec.name in DERIVED else ""
            assert found[0] == want, spec.name


@pytest.mark.tools
def test_a_value_in_env_reaches_every_airflow_service(tmp_path, env_values) -> None:
    user = {"REGSTREAM_WINDOW": "5 minutes", "REGSTREAM_TOPIC_REPLICATION": "2"}
    services_ = compose_services(tmp_path / "user.env", {**env_values, **user})
    airflow = {n: s for n, s in services_.items() if "airflow" in n}
    assert airflow
    for name, svc in airflow.items():
        for key, value in user.items():
            assert str(svc["environment"][key]) == value, (name, key)
