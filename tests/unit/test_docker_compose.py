"""No Docker engine runs here: validate the compose file against the local stack instead."""

from __future__ import annotations

import re
from pathlib import Path

import yaml

from stackctl import config

ROOT = Path(__file__).resolve().parents[2]
COMPOSE = yaml.safe_load((ROOT / "docker-compose.yaml").read_text())
SERVICES = COMPOSE["services"]


def test_every_service_has_a_pinned_image_and_a_healthcheck() -> None:
    for name, svc in SERVICES.items():
        assert "image" in svc, name
        image = svc["image"]
        assert ":" in image and not image.endswith(":latest"), (name, image)
        assert "healthcheck" in svc and svc["healthcheck"]["test"], name


def test_the_expected_services_are_there() -> None:
    assert {
        "mysql",
        "kafka",
        "spark-master",
        "spark-worker",
        "airflow-init",
        "airflow-apiserver",
        "airflow-scheduler",
        "airflow-dag-processor",
        "airflow-triggerer",
    } <= set(SERVICES)
    assert SERVICES["kafka"]["environment"]["KAFKA_PROCESS_ROLES"] == "broker,controller"
    assert SERVICES["mysql"]["image"].startswith("mysql:8")
    assert "./sql:/docker-entrypoint-initdb.d:ro" in SERVICES["mysql"]["volumes"]


def test_connection_ids_and_settings_match_the_local_stack() -> None:
    local = config.connection_env(config.load("test"))
    local_names = {k for k in local if k.startswith(("AIRFLOW_CONN_", "REGSTREAM_"))}
    for name in (
        "airflow-apiserver",
        "airflow-scheduler",
        "airflow-dag-processor",
        "airflow-triggerer",
    ):
        env = SERVICES[name]["environment"]
        compose_names = {k for k in env if k.startswith(("AIRFLOW_CONN_", "REGSTREAM_"))}
        assert compose_names == local_names, (name, compose_names ^ local_names)
        assert env["AIRFLOW__CORE__EXECUTOR"] == "LocalExecutor"


def test_no_secret_is_written_in_the_file() -> None:
    text = (ROOT / "docker-compose.yaml").read_text()
    for m in re.finditer(r"(PASSWORD|SECRET)[A-Z_]*:\s+(\S+)", text):
        assert m.group(2).startswith("${"), m.group(0)
    assert "reg_ingest:${REG_INGEST_PASSWORD" in text


def test_spark_jars_in_compose_match_the_fetched_connector() -> None:
    jars = {p.name for p in config.spark_kafka_jars(config.load("test"))}
    env = SERVICES["airflow-scheduler"]["environment"]
    assert {Path(j).name for j in env["REGSTREAM_SPARK_JARS"].split(",")} == jars


def test_sql_files_are_numbered_and_idempotent() -> None:
    files = sorted((ROOT / "sql").glob("*.sql"))
    assert [f.name[:2] for f in files] == sorted(f.name[:2] for f in files)
    for f in files:
        text = f.read_text()
        for stmt in re.findall(r"CREATE (TABLE|TRIGGER|DATABASE)\s+(\S+\s+\S+\s+\S+)", text):
            kind, rest = stmt
            assert rest.startswith("IF NOT EXISTS") or (
                kind == "TRIGGER" and f"DROP TRIGGER IF EXISTS {rest.split()[0]}" in text
            ), (f.name, stmt)
