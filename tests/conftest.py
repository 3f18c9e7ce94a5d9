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
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import pytest

from stackctl import config, db, procs, services
from stackctl.db import role_conn, root_conn  # noqa: F401 - the tests import role_conn from here

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


_wiped: set[str] = set()  # profiles this session has wiped and not stopped since


def wipe_profile(s: config.Settings) -> None:
    """Stop every process of the profile and delete its data, logs and pid files (its
    secrets and the unit tests' Airflow home stay)."""
    services.stop_all(s)
    for sub in ("mysql", "postgres", "redis", "airflow", "spark", "logs", "supervisor"):
        shutil.rmtree(s.run / sub, ignore_errors=True)
    for path in [*s.run.glob("kafka*"), *s.run.glob("*.pid")]:
        if path.is_dir():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)
    s.run.mkdir(parents=True, exist_ok=True)
    _wiped.add(s.profile)


# The long-running publisher's summary period, shortened the way a user sets a setting
# (before the stack starts), so tests read a summary line within seconds.
os.environ.setdefault("REGSTREAM_PUBLISH_SUMMARY_S", "5")

# What the `stack` fixture's os.environ.update replaced: a user's REGSTREAM_* value wins in
# every profile, so a profile started after this one must not take its bootstrap and paths.
_env_before: dict[str, str | None] = {}


def export_profile_env(s: config.Settings) -> None:
    """The profile's connections and settings into os.environ, recording what they replace
    so that stop_profile puts it back (else a profile started later takes them as a user's
    values: seen, the cluster's stream job reading the test profile's Kafka)."""
    env = services.airflow_env(s)
    for name in env:
        _env_before.setdefault(name, os.environ.get(name))
    os.environ.update(env)


def stop_profile(s: config.Settings) -> None:
    """Stop the profile; a `stack` set up after this starts it from a wiped state again."""
    services.stop_all(s)
    _wiped.discard(s.profile)
    for name, value in _env_before.items():
        if value is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = value
    _env_before.clear()


@pytest.fixture(scope="session")
def stack(settings: config.Settings) -> Iterator[config.Settings]:
    """MariaDB and Kafka of the test profile, started fresh for the session."""
    if settings.profile not in _wiped:
        wipe_profile(settings)
    services.start_data_services(settings)
    export_profile_env(settings)
    yield settings


@pytest.fixture(scope="session", autouse=True)
def _stop_everything(settings: config.Settings) -> Iterator[None]:
    yield
    if os.environ.get("REG_KEEP_TEST_STACK") != "1":
        services.stop_all(settings)


def point_connections_at(s: config.Settings, database: str, monkeypatch: Any) -> None:
    """AIRFLOW_CONN_MYSQL_* of every role -> `database` (how the hooks find it)."""
    for name, value in db.role_connections(s, database).items():
        monkeypatch.setenv(name, value)


@pytest.fixture
def fresh_db(stack: config.Settings, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """A new database with the project's schema; the role connections point at it."""
    name = db.create_database(stack, "t")
    point_connections_at(stack, name, monkeypatch)
    yield name
    db.drop_database(stack, name)


@pytest.fixture
def cur(stack: config.Settings, fresh_db: str) -> Iterator[Any]:
    """A root cursor in `fresh_db` (autocommit, UTC)."""
    conn = root_conn(stack, fresh_db)
    yield conn.cursor()
    conn.close()


@pytest.fixture
def topic(stack: config.Settings, monkeypatch: pytest.MonkeyPatch) -> str:
    name = f"t_{uuid.uuid4().hex[:10]}"
    monkeypatch.setenv("REGSTREAM_TOPIC", name)
    return name


def topic_messages(
    s: config.Settings, topic: str, timeout: float = 30, committed_only: bool = True
) -> list[Any]:
    """Every message of a topic from the beginning to the end, as a read_committed consumer
    (the stream) sees it, or with `committed_only=False` also what aborted or still open
    transactions wrote."""
    from confluent_kafka import Consumer, KafkaError, TopicPartition

    consumer = Consumer(
        {
            "bootstrap.servers": s.kafka_bootstrap,
            "group.id": uuid.uuid4().hex,
            "auto.offset.reset": "earliest",
            "enable.auto.commit": False,
            "enable.partition.eof": True,
            "isolation.level": "read_committed" if committed_only else "read_uncommitted",
        }
    )
    try:
        meta = consumer.list_topics(topic, timeout=10)
        parts = sorted(meta.topics[topic].partitions) if topic in meta.topics else []
        consumer.assign([TopicPartition(topic, p, 0) for p in parts])
        got: list[Any] = []
        at_end: set[int] = set()
        deadline = time.monotonic() + timeout
        # Transaction markers take offsets of their own: the end is where the broker says.
        while len(at_end) < len(parts):
            if time.monotonic() > deadline:
                raise AssertionError(f"read {len(got)} messages of {topic}, not at its end")
            for msg in consumer.consume(10000, timeout=1):
                if msg.error() is None:
                    got.append(msg)
                elif msg.error().code() == KafkaError._PARTITION_EOF:
                    at_end.add(msg.partition())
        return got
    finally:
        consumer.close()


def event_ids_in_topic(s: config.Settings, topic: str, committed_only: bool = True) -> list[int]:
    return [
        json.loads(m.value())["event_id"]
        for m in topic_messages(s, topic, committed_only=committed_only)
    ]


def task_log_holders(pids: Iterable[int], task_id: str) -> list[int]:
    """The processes among `pids` that hold a running task's log open: Airflow 3 writes it
    under .../task_id=<task_id>/..., a name no other task's log has."""
    return procs.holding(pids, f"task_id={task_id}/")
