"""The publisher's Kafka side: clients from the Airflow connection, the topic, produce, flush.

Clients come from the `kafka_default`-style connection through the Apache Kafka provider's
public hook API: the admin client is `KafkaAdminClientHook.get_conn`; the producer is built
from the connection's settings (`KafkaProducerHook.get_connection(...).extra_dejson`) with this
pipeline's delivery guarantees on top (PRODUCER_CONFIG wins over the connection), because the
provider has no public way to add settings to the producer it builds.

librdkafka's own log lines go through Python logging (`regstream.librdkafka`) at their own
level. Left on stderr, Airflow's task log shows every one of them as ERROR, including the
warning a fresh broker gives the first idempotent producer ("Failed to acquire idempotence PID
... Coordinator load in progress: retrying"), which librdkafka retries by itself.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable, Mapping
from concurrent.futures import TimeoutError as FutureTimeout
from typing import Any

from regstream.publish_errors import PublisherFenced, PublishError
from regstream.watermark import Watermark, watermark_from_json, watermark_to_json

log = logging.getLogger(__name__)
librdkafka_log = logging.getLogger("regstream.librdkafka")

# Same settings for the task, the benchmarks and their baselines.
PRODUCER_CONFIG: dict[str, Any] = {
    "acks": "all",
    "enable.idempotence": True,
    # The Java client's partitioner: a key lands where any Java producer (Kafka Connect,
    # Debezium) would put it. librdkafka's default (CRC32) puts sakila's stores 1 and 2 on
    # the same partition of two, leaving the other empty and the consumer one task short.
    "partitioner": "murmur2_random",
    "linger.ms": 20,
    "batch.size": 1_000_000,
    "compression.type": "lz4",
    "queue.buffering.max.messages": 500_000,
    "queue.buffering.max.kbytes": 512 * 1024,
    "message.timeout.ms": 30_000,
    "socket.connection.setup.timeout.ms": 10_000,
}


def producer_config(connection: str | Mapping[str, Any]) -> dict[str, Any]:
    """A bootstrap address or the connection's settings, plus the delivery guarantees and the
    log routing."""
    base = {"bootstrap.servers": connection} if isinstance(connection, str) else dict(connection)
    return {**base, **PRODUCER_CONFIG, "logger": librdkafka_log}


def connection_settings(kafka_conn_id: str) -> dict[str, Any]:
    """The client settings of an Airflow Kafka connection (its extra)."""
    from airflow.providers.apache.kafka.hooks.base import CALLBACK_CONFIG_KEYS
    from airflow.providers.apache.kafka.hooks.produce import KafkaProducerHook

    hook = KafkaProducerHook(kafka_config_id=kafka_conn_id)
    settings = dict(hook.get_connection(kafka_conn_id).extra_dejson)
    if not settings.get("bootstrap.servers"):
        raise PublishError(
            f"Kafka connection '{kafka_conn_id}' has no bootstrap.servers in its extra"
        )
    callbacks = sorted(k for k in CALLBACK_CONFIG_KEYS if k in settings)
    if callbacks:
        raise PublishError(
            f"Kafka connection '{kafka_conn_id}' names callbacks {callbacks}: the publisher's "
            "producer does not resolve them; remove them from the connection's extra"
        )
    return settings


# How long an open transaction of a publisher that died may hold back read_committed
# consumers before the broker aborts it (a restarted publisher aborts it at once, when it
# registers). Short, because each transaction is bounded (REGSTREAM_PUBLISH_TXN_MAX_EVENTS and
# _MAX_S): a catch-up is many short transactions, never one the broker would abort.
def transaction_timeout_ms() -> int:
    from regstream import settings

    return 1000 * settings.env_int("REGSTREAM_PUBLISH_TXN_TIMEOUT_S")


def transactional_id(topic: str) -> str:
    """One per topic: a new publisher fences the one before it (a zombie cannot commit)."""
    return f"regstream-publisher-{topic}"


def state_topic(topic: str) -> str:
    """Where the publisher's watermark lives, written in the same transaction as the events."""
    return f"{topic}-publisher-state"


def make_producer(settings: Mapping[str, Any], topic: str) -> Any:
    """A transactional producer for `topic` (idempotent, acks=all)."""
    from confluent_kafka import Producer

    return Producer(
        {
            **producer_config(settings),
            "transactional.id": transactional_id(topic),
            "transaction.timeout.ms": transaction_timeout_ms(),
            # librdkafka refuses a message timeout above the transaction timeout
            "message.timeout.ms": min(
                int(PRODUCER_CONFIG["message.timeout.ms"]), transaction_timeout_ms()
            ),
        }
    )


class Transactions:
    """The Kafka side of a run: the events and the watermark that covers them are committed in
    one Kafka transaction (KIP-618's exactly-once source: offsets committed with the records).

    `fence()` registers the transactional id: any older publisher of the topic is fenced and
    its open transaction aborted, so what it produced is never visible to read_committed
    consumers. `read_state()` returns the watermark of the last committed transaction."""

    def __init__(self, producer: Any, settings: Mapping[str, Any], topic: str) -> None:
        self.producer = producer
        self.settings = dict(settings)
        self.topic = topic
        self.state_topic = state_topic(topic)
        self.fenced = False
        self._committed: Watermark | None = None  # what this producer last committed

    def fence(self, timeout: float = 30.0) -> None:
        if not self.fenced:
            self._call(
                "register the transactional producer", self.producer.init_transactions, timeout
            )
            self.fenced = True

    def read_state(self, timeout: float = 30.0) -> Watermark | None:
        """The last committed watermark: read from Kafka once, then this producer's own last
        commit (no one else can commit while it is not fenced)."""
        if self._committed is None:
            from confluent_kafka import KafkaException

            try:
                raw = last_committed_value(
                    self.settings, self.state_topic, self.topic.encode(), timeout
                )
            except KafkaException as exc:
                raise PublishError(
                    f"Kafka: could not read the watermark from {self.state_topic} ({exc})"
                ) from exc
            self._committed = watermark_from_json(raw) if raw is not None else None
        return self._committed

    def begin(self) -> None:
        self._call("begin a transaction", self.producer.begin_transaction)

    def commit(self, state: Watermark, timeout: float = 60.0) -> None:
        """Add the new watermark to the transaction and commit both."""
        self._call(
            "add the watermark to the transaction",
            self.producer.produce,
            self.state_topic,
            watermark_to_json(state),
            self.topic.encode(),
        )
        self._call("commit the transaction", self.producer.commit_transaction, timeout)
        self._committed = state

    def abort(self, forget: bool = True) -> None:
        """Abort the open transaction; `forget`: read the watermark from Kafka again next
        time (after a failure the commit may or may not have landed)."""
        if forget:
            self._committed = None
        try:
            self.producer.abort_transaction(10)
        except Exception as exc:  # noqa: BLE001 - fenced or broker gone: the broker aborts it
            log.warning("could not abort the transaction (%s); the broker aborts it", exc)

    def _call(self, what: str, fn: Any, *args: Any) -> None:
        from confluent_kafka import KafkaException

        try:
            fn(*args)
        except KafkaException as exc:
            if is_fenced(exc):
                raise producer_failed(exc, f"{what}, topic {self.topic}") from exc
            raise PublishError(
                f"Kafka: could not {what} for topic {self.topic} ({exc}); are enough brokers "
                "up for the transaction coordinator (its log needs min.insync.replicas)? "
                "The watermark was not moved"
            ) from exc


def last_committed_value(
    settings: Mapping[str, Any], topic: str, key: bytes, timeout: float = 30.0
) -> bytes | None:
    """The value of the last committed record with `key` in partition 0 of a compacted topic,
    read backwards in growing steps from the end (the newest record is near the end)."""
    from confluent_kafka import Consumer, TopicPartition

    consumer = Consumer(
        {
            **settings,
            "group.id": f"regstream-state-reader-{topic}",
            "isolation.level": "read_committed",
            "enable.auto.commit": False,
            "enable.partition.eof": True,
            "logger": librdkafka_log,
        }
    )
    try:
        low, high = consumer.get_watermark_offsets(TopicPartition(topic, 0), timeout=timeout)
        step = 64
        while high > low:
            start = max(low, high - step)
            found = _read_to_end(consumer, TopicPartition(topic, 0, start), key, timeout)
            if found is not None or start == low:
                return found
            step *= 8
        return None
    finally:
        consumer.close()


def _read_to_end(consumer: Any, tp: Any, key: bytes, timeout: float) -> bytes | None:
    from confluent_kafka import KafkaError

    consumer.assign([tp])
    value = None
    deadline = time.monotonic() + timeout
    while True:
        msg = consumer.poll(0.5)
        if msg is None:
            if time.monotonic() > deadline:
                raise PublishError(f"Kafka: reading {tp.topic} took over {timeout:.0f}s")
            continue
        if msg.error() is not None:
            if msg.error().code() == KafkaError._PARTITION_EOF:
                return value
            raise PublishError(f"Kafka: reading {tp.topic} failed: {msg.error()}")
        if msg.key() == key:
            value = msg.value()


def admin_client(kafka_conn_id: str) -> Any:
    from airflow.providers.apache.kafka.hooks.client import KafkaAdminClientHook

    return KafkaAdminClientHook(kafka_config_id=kafka_conn_id).get_conn


def check_broker(client: Any, bootstrap: str, timeout: float = 10.0) -> Any:
    """Cluster metadata, or PublishError naming the address."""
    from confluent_kafka import KafkaException

    try:
        return client.list_topics(timeout=timeout)
    except KafkaException as exc:
        raise PublishError(
            f"Kafka at {bootstrap} is unreachable ({exc}); the watermark was not moved"
        ) from exc


# The publisher's state topic keeps only the newest watermark per key.
STATE_TOPIC_CONFIG = {"cleanup.policy": "compact", "segment.ms": "3600000"}


def ensure_topic(
    admin: Any,
    topic: str,
    partitions: int,
    replication: int,
    bootstrap: str,
    timeout: float = 30.0,
    every: float = 0.1,
    config: Mapping[str, str] | None = None,
) -> None:
    """Create the topic if it is missing, then wait until every partition has a leader, so
    that the first produce finds it ready."""
    if topic not in check_broker(admin, bootstrap).topics:
        create_topic(admin, topic, partitions, replication, bootstrap, timeout, config)
    wait_for_leaders(admin, topic, bootstrap, timeout, every)


def create_topic(
    admin: Any,
    topic: str,
    partitions: int,
    replication: int,
    bootstrap: str,
    timeout: float,
    config: Mapping[str, str] | None = None,
) -> None:
    from confluent_kafka import KafkaError, KafkaException
    from confluent_kafka.admin import NewTopic

    new = NewTopic(
        topic, num_partitions=partitions, replication_factor=replication, config=dict(config or {})
    )
    futures = admin.create_topics([new])
    try:
        futures[topic].result(timeout=timeout)
    except KafkaException as exc:
        if exc.args[0].code() == KafkaError.TOPIC_ALREADY_EXISTS:
            log.info("topic %s was created meanwhile by another client", topic)
            return
        raise PublishError(f"cannot create topic {topic} at {bootstrap}: {exc}") from exc
    except FutureTimeout as exc:
        raise PublishError(
            f"creating topic {topic} at {bootstrap} took over {timeout:.0f}s"
        ) from exc
    log.info("created topic %s (%d partitions, replication %d)", topic, partitions, replication)


def leaderless(meta: Any, topic: str) -> list[int] | None:
    """Partitions of `topic` without a leader ([] when all have one; None: no such topic).
    A partition error alone does not count: with a replica down, KRaft brokers report
    REPLICA_NOT_AVAILABLE for partitions whose leader serves produce requests fine."""
    t = meta.topics.get(topic)
    if t is None or t.error is not None or not t.partitions:
        return None
    return sorted(p.id for p in t.partitions.values() if p.leader < 0)


def wait_for_leaders(
    admin: Any, topic: str, bootstrap: str, timeout: float = 30.0, every: float = 0.1
) -> None:
    deadline = time.monotonic() + timeout
    while True:
        missing = leaderless(check_broker(admin, bootstrap), topic)
        if missing == []:
            return
        if time.monotonic() > deadline:
            what = "is missing" if missing is None else f"has partitions {missing} without leader"
            raise PublishError(
                f"Kafka at {bootstrap}: topic {topic} {what} after {timeout:.0f}s; "
                "the watermark was not moved"
            )
        log.info("waiting for the leaders of topic %s (%s)", topic, missing or "metadata")
        time.sleep(every)


class Deliveries:
    """Delivery reports: counts, errors and offset ranges per partition."""

    def __init__(self) -> None:
        self.ok = 0
        self.errors: list[str] = []
        self.offsets: dict[int, tuple[int, int]] = {}

    def __call__(self, err: Any, msg: Any) -> None:
        if err is not None:
            self.errors.append(str(err) if len(self.errors) < 5 else "")
            return
        self.ok += 1
        p, o = msg.partition(), msg.offset()
        lo_hi = self.offsets.get(p)
        if lo_hi is None:
            self.offsets[p] = (o, o)
        elif o > lo_hi[1]:
            self.offsets[p] = (lo_hi[0], o)
        elif o < lo_hi[0]:
            self.offsets[p] = (o, lo_hi[1])


def produce_all(
    producer: Any, topic: str, messages: Iterable[tuple[bytes, bytes]], deliveries: Deliveries
) -> int:
    """Produce (key, value) pairs, backing off when the local queue is full."""
    from confluent_kafka import KafkaException

    sent = 0
    produce = producer.produce
    poll = producer.poll
    try:
        for key, value in messages:
            while True:
                try:
                    produce(topic, value, key, on_delivery=deliveries)
                    break
                except BufferError:
                    poll(0.05)
            sent += 1
            if sent % 20000 == 0:
                poll(0)
    except (KafkaException, SystemError) as exc:
        raise producer_failed(exc, topic) from exc
    return sent


FENCED = ("_FENCED", "PRODUCER_FENCED")  # not INVALID_PRODUCER_EPOCH: also a timed-out txn


def is_fenced(exc: BaseException) -> bool:
    """Did a newer publisher of the transactional id fence this producer?"""
    err = (exc.args or (None,))[0]
    name = err.name() if hasattr(err, "name") else ""
    return name in FENCED or "fenced" in str(exc.__cause__ or exc).lower()


def producer_failed(exc: BaseException, where: str) -> PublishError:
    """A fatal error of the transactional producer (SystemError: librdkafka's error raised
    while a delivery report ran) as a PublishError; PublisherFenced when it was fenced."""
    kind = PublisherFenced if is_fenced(exc) else PublishError
    return kind(
        f"Kafka ({where}): the transactional producer failed ({exc.__cause__ or exc}): a newer "
        "publisher of the topic fenced it, or the broker refused it; the watermark was not moved"
    )


def flush_or_fail(
    producer: Any, sent: int, deliveries: Deliveries, bootstrap: str, timeout: float
) -> None:
    """Return only once Kafka acknowledged every one of `sent` messages."""
    from confluent_kafka import KafkaException

    try:
        left = producer.flush(timeout)
    except (KafkaException, SystemError) as exc:
        raise producer_failed(exc, bootstrap) from exc
    if left or deliveries.errors or deliveries.ok != sent:
        errors = [e for e in deliveries.errors if e][:5]
        raise PublishError(
            f"Kafka at {bootstrap} acknowledged {deliveries.ok} of {sent} messages "
            f"({left} still queued, {len(deliveries.errors)} failed: {errors}); "
            "the watermark was not moved, the next run sends them again"
        )
