"""Shared fixtures: the test profile's real services, fresh databases and topics.

The test profile runs on its own ports and state folder (.state/test), wiped at the start of a
session and stopped at its end, so `make test` runs beside a running `make up` stack.
"""

from __future__ import annotations

import json
import os
import shutil
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from stackctl import config, services

ROOT = Path(__file__).resolve().parent.parent
ARTIFACTS = ROOT / "artifacts"

os.environ.setdefault("TZ", "UTC")
# Airflow reads its home at import: keep unit tests' Airflow files inside the test state.
os.environ.setdefault("AIRFLOW_HOME", str(config.load("test").run / "airflow-unit"))
os.environ.setdefault("AIRFLOW__CORE__LOAD_EXAMPLES", "False")


def wait_for(what: str, check: Callable[[], Any], timeout: float = 60, every: float = 0.2) -> Any:
    """Poll until check() returns something truthy; fail with `what` after timeout."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        last = check()
        if last:
            return last
        time.sleep(every)
    raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what} (last: {last!r})")


@pytest.fixture(scope="session")
def settings() -> config.Settings:
    return config.load("test")


_started: dict[str, bool] = {}


def _fresh_profile(s: config.Settings) -> None:
    if _started.get("fresh"):
        return
    services.stop_all(s)
    for sub in ("mysql", "postgres", "kafka", "airflow", "spark", "logs", "supervisor"):
        shutil.rmtree(s.run / sub, ignore_errors=True)
    for pid in s.run.glob("*.pid"):
        pid.unlink()
    s.run.mkdir(parents=True, exist_ok=True)
    _started["fresh"] = True


@pytest.fixture(scope="session")
def stack(settings: config.Settings) -> Iterator[config.Settings]:
    """MariaDB and Kafka of the test profile, started fresh for the session."""
    _fresh_profile(settings)
    services.start_data_services(settings)
    os.environ.update(services.airflow_env(settings))
    yield settings


@pytest.fixture(scope="session", autouse=True)
def _stop_everything(settings: config.Settings) -> Iterator[None]:
    yield
    if os.environ.get("REG_KEEP_TEST_STACK") != "1":
        services.stop_all(settings)


def root_conn(s: config.Settings, database: str | None = None) -> Any:
    import MySQLdb

    kwargs: dict[str, Any] = {
        "unix_socket": str(s.mysql_socket),
        "user": "root",
        "password": config.secrets_for(s)["MYSQL_ROOT_PASSWORD"],
        "autocommit": True,
        "charset": "utf8mb4",
    }
    if database:
        kwargs["database"] = database
    conn = MySQLdb.connect(**kwargs)
    conn.cursor().execute("SET time_zone = '+00:00'")
    return conn


def role_conn(s: config.Settings, role: str, database: str) -> Any:
    import MySQLdb

    conn = MySQLdb.connect(
        host="127.0.0.1",
        port=s.mysql_port,
        user=config.ROLES[role],
        password=config.secrets_for(s)[f"REG_{role.upper()}_PASSWORD"],
        database=database,
        autocommit=True,
        charset="utf8mb4",
    )
    conn.cursor().execute("SET time_zone = '+00:00'")
    return conn


def point_connections_at(s: config.Settings, database: str, monkeypatch: Any) -> None:
    """AIRFLOW_CONN_MYSQL_* of every role -> `database` (how the hooks find it)."""
    for role in config.ROLES:
        monkeypatch.setenv(
            f"AIRFLOW_CONN_MYSQL_{role.upper()}", config.mysql_conn_json(s, role, database)
        )


@pytest.fixture
def fresh_db(stack: config.Settings, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """A new database with the project's schema; the role connections point at it."""
    name = f"t_{uuid.uuid4().hex[:10]}"
    services.apply_schema(stack, database=name)
    point_connections_at(stack, name, monkeypatch)
    yield name
    cur = root_conn(stack).cursor()
    cur.execute("SET SESSION lock_wait_timeout = 60")
    cur.execute(f"DROP DATABASE IF EXISTS `{name}`")


@pytest.fixture
def topic(stack: config.Settings, monkeypatch: pytest.MonkeyPatch) -> str:
    name = f"t_{uuid.uuid4().hex[:10]}"
    monkeypatch.setenv("REGSTREAM_TOPIC", name)
    return name


def topic_messages(s: config.Settings, topic: str, timeout: float = 30) -> list[Any]:
    """Every message of a topic, read from the beginning until the end offsets."""
    from confluent_kafka import Consumer, TopicPartition

    consumer = Consumer(
        {
            "bootstrap.servers": s.kafka_bootstrap,
            "group.id": uuid.uuid4().hex,
            "auto.offset.reset": "earliest",
            "enable.auto.commit": False,
        }
    )
    try:
        meta = consumer.list_topics(topic, timeout=10)
        parts = sorted(meta.topics[topic].partitions) if topic in meta.topics else []
        ends = {
            p: consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=10)[1]
            for p in parts
        }
        if not any(ends.values()):
            return []
        consumer.assign([TopicPartition(topic, p, 0) for p in parts])
        got: list[Any] = []
        pos = {p: 0 for p in parts}
        deadline = time.monotonic() + timeout
        while any(pos[p] < ends[p] for p in parts):
            if time.monotonic() > deadline:
                raise AssertionError(f"read {len(got)} messages of {topic}, ends {ends}")
            for msg in consumer.consume(10000, timeout=1):
                if msg.error():
                    continue
                got.append(msg)
                pos[msg.partition()] = max(pos[msg.partition()], msg.offset() + 1)
        return got
    finally:
        consumer.close()


def event_ids_in_topic(s: config.Settings, topic: str) -> list[int]:
    return [json.loads(m.value())["event_id"] for m in topic_messages(s, topic)]
