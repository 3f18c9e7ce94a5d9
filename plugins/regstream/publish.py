"""Publish CDC rows from `users_change_events` to Kafka, then advance the watermark.

Why not a timestamp watermark: two clocks at one-second resolution lose rows. Why not just
"event_id > last published id" (Kafka Connect's incrementing mode): an auto-increment id is
taken at INSERT time but becomes visible at COMMIT; a transaction holding id 7 that commits
after id 8 was published would be skipped forever. Connect answers with a fixed delay
(`timestamp.delay.interval.ms`), which is a guess about transaction length.

Here the watermark is exact instead: `last_event_id` (H) plus the list of *gaps*, ids below H
not seen yet. A gap is an insert still in flight or a rollback. Each gap records the InnoDB
transactions that were open just after the read that found it (information_schema.INNODB_TRX):
the transaction that took a missing id was open then, or had already ended. Once every one of
those transactions has ended, the gap is final: a read after that sees its row if it committed,
and an id still missing then was rolled back and will never appear. No guess about transaction
length; a transaction that stays open holds only its gap, not the rest of the stream.
(REGSTREAM_GAP_MAX_WAIT_S > 0 bounds the wait, and logs every gap it gives up on.)

Order of a run: lock -> read watermark -> read and produce every event above H or inside a
gap -> flush and require an acknowledgement (acks=all, idempotent producer) for every message
-> write the new watermark. A crash anywhere before the last step leaves the watermark where
it was: the next run sends those events again with the same event_id, which the stream drops.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass, field
from typing import Any

from regstream import settings

log = logging.getLogger(__name__)

SCHEMA_VERSION = 1
# InnoDB refreshes information_schema.INNODB_TRX at most every 0.1 s; twice that for margin.
TRX_CACHE_MARGIN_S = 0.2
EVENT_TABLE = "users_change_events"
WATERMARK_TABLE = "latest_cdc_timestamp"

# Same settings for the task, the benchmark and its baseline.
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

# The message value is built by the server, one JSON object per row, documented in
# plugins/regstream/schemas/customer_registered.v1.json; times are UTC with a Z (the session
# time zone is +00:00). CONCAT with JSON_QUOTE is ~3x faster than JSON_OBJECT + DATE_FORMAT
# here, and returning one bytes column spares the client a datetime conversion per row.
_VALUE = (
    'CONCAT(\'{"schema_version":' + str(SCHEMA_VERSION) + ',"event_id":\', event_id, '
    "',\"event_type\":', JSON_QUOTE(event_type), ',\"customer_id\":', customer_id, "
    "',\"store_id\":', store_id, ',\"first_name\":', JSON_QUOTE(first_name), "
    "',\"last_name\":', JSON_QUOTE(last_name), "
    "',\"email\":', COALESCE(JSON_QUOTE(email), 'null'), ',\"address_id\":', address_id, "
    "',\"create_date\":\"', REPLACE(CAST(create_date AS CHAR), ' ', 'T'), "
    "'Z\",\"captured_at\":\"', REPLACE(CAST(captured_at AS CHAR), ' ', 'T'), 'Z\"}')"
)
_SELECT = f"SELECT event_id, store_id, CAST({_VALUE} AS BINARY) FROM {EVENT_TABLE}"


class PublishError(RuntimeError):
    """Delivery failed; the watermark was not moved."""


class SchemaMissing(RuntimeError):
    """The CDC tables are not there."""


class PublisherBusy(RuntimeError):
    """Another publisher holds the lock for this topic."""


@dataclass
class Gap:
    first: int
    last: int
    trx: list[str]
    since: float

    def to_json(self) -> dict:
        return {"from": self.first, "to": self.last, "trx": self.trx, "since": self.since}

    @classmethod
    def from_json(cls, d: dict) -> Gap:
        return cls(
            int(d["from"]),
            int(d["to"]),
            [str(t) for t in d.get("trx", [])],
            float(d.get("since", 0)),
        )

    @property
    def size(self) -> int:
        return self.last - self.first + 1


@dataclass
class Watermark:
    last_event_id: int = 0
    last_captured_at: Any = None
    gaps: list[Gap] = field(default_factory=list)
    events_published: int = 0


@dataclass
class PublishResult:
    before: Watermark
    after: Watermark
    published: int
    partitions: dict[int, tuple[int, int]]  # partition -> (first offset, last offset)
    rolled_back_ids: int
    given_up_ids: int
    backlog: int
    seconds: float


def subtract(ranges: list[tuple[int, int]], ids: list[int]) -> list[tuple[int, int]]:
    """Remove sorted ids from inclusive ranges."""
    out: list[tuple[int, int]] = []
    ids = sorted(ids)
    j = 0
    for first, last in ranges:
        cur = first
        while j < len(ids) and ids[j] < first:
            j += 1
        while j < len(ids) and ids[j] <= last:
            if ids[j] > cur:
                out.append((cur, ids[j] - 1))
            cur = ids[j] + 1
            j += 1
        if cur <= last:
            out.append((cur, last))
    return out


def check_schema(conn: Any) -> None:
    from regstream.db import table_exists

    for table in (EVENT_TABLE, WATERMARK_TABLE):
        if not table_exists(conn, table):
            raise SchemaMissing(
                f"table {table} does not exist in this database: run the schema step "
                "(`make up` applies sql/, or run sql/10_cdc.sql against the database)"
            )


def read_watermark(conn: Any, pipeline: str) -> Watermark:
    cur = conn.cursor()
    cur.execute(
        f"INSERT IGNORE INTO {WATERMARK_TABLE} (pipeline, pending_gaps) VALUES (%s, '[]')",
        (pipeline,),
    )
    cur.execute(
        f"SELECT last_event_id, last_captured_at, pending_gaps, events_published "
        f"FROM {WATERMARK_TABLE} WHERE pipeline = %s",
        (pipeline,),
    )
    last_id, captured, gaps_json, published = cur.fetchone()
    cur.close()
    gaps = [Gap.from_json(g) for g in json.loads(gaps_json or "[]")]
    return Watermark(int(last_id), captured, gaps, int(published))


def open_transactions(conn: Any) -> set[str]:
    cur = conn.cursor()
    cur.execute("SELECT trx_id FROM information_schema.INNODB_TRX")
    ids = {str(r[0]) for r in cur.fetchall()}
    cur.close()
    return ids


def has_work(conn: Any, pipeline: str) -> tuple[bool, str]:
    """The gate: is there anything to publish or to settle? Cheap, read-only queries."""
    check_schema(conn)
    wm = read_watermark(conn, pipeline)
    cur = conn.cursor()
    cur.execute(
        f"SELECT MAX(event_id), COUNT(*) FROM (SELECT event_id FROM {EVENT_TABLE} "
        f"WHERE event_id > %s LIMIT 1000000) t",
        (wm.last_event_id,),
    )
    newest, count = cur.fetchone()
    if count:
        return True, (f"{count} new events above watermark {wm.last_event_id} (newest {newest})")
    if wm.gaps:
        where = " OR ".join("event_id BETWEEN %s AND %s" for _ in wm.gaps)
        cur.execute(
            f"SELECT COUNT(*) FROM {EVENT_TABLE} WHERE {where}",
            [x for g in wm.gaps for x in (g.first, g.last)],
        )
        visible = cur.fetchone()[0]
        active = open_transactions(conn)
        settled = [g for g in wm.gaps if not set(g.trx) & active]
        if visible or settled:
            return True, (
                f"{visible} late-committed events in gaps, {len(settled)} gaps ready to settle"
            )
        return False, (
            f"nothing new above watermark {wm.last_event_id}; "
            f"{len(wm.gaps)} gaps wait on open transactions"
        )
    return False, f"nothing new above watermark {wm.last_event_id}"


class _Deliveries:
    """Delivery reports: counts, errors and offset ranges per partition."""

    def __init__(self) -> None:
        self.ok = 0
        self.errors: list[str] = []
        self.offsets: dict[int, tuple[int, int]] = {}

    def __call__(self, err: Any, msg: Any) -> None:
        if err is not None:
            if len(self.errors) < 5:
                self.errors.append(str(err))
            else:
                self.errors.append("")
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


def produce_all(producer: Any, topic: str, rows: Any, deliveries: _Deliveries) -> int:
    """Produce (key, value) pairs, backing off when the local queue is full."""
    sent = 0
    produce = producer.produce
    poll = producer.poll
    for key, value in rows:
        while True:
            try:
                produce(topic, value, key, on_delivery=deliveries)
                break
            except BufferError:
                poll(0.05)
        sent += 1
        if sent % 20000 == 0:
            poll(0)
    return sent


def flush_or_fail(
    producer: Any, sent: int, deliveries: _Deliveries, bootstrap: str, timeout: float
) -> None:
    left = producer.flush(timeout)
    if left or deliveries.errors or deliveries.ok != sent:
        errors = [e for e in deliveries.errors if e][:5]
        raise PublishError(
            f"Kafka at {bootstrap} acknowledged {deliveries.ok} of {sent} messages "
            f"({left} still queued, {len(deliveries.errors)} failed: {errors}); "
            "the watermark was not moved, the next run sends them again"
        )


def publish(
    conn: Any,
    producer: Any,
    topic: str,
    *,
    bootstrap: str = "?",
    max_events: int = 2_000_000,
    flush_timeout: float = 60.0,
    gap_max_wait_s: int | None = None,
    clock: Any = time.time,
) -> PublishResult:
    """One publish run. `conn` is a MySQLdb connection (autocommit), `producer` a
    confluent_kafka.Producer configured with PRODUCER_CONFIG."""
    import MySQLdb.cursors

    t0 = time.monotonic()
    wait_bound = settings.gap_max_wait_s() if gap_max_wait_s is None else gap_max_wait_s
    check_schema(conn)
    cur = conn.cursor()
    cur.execute("SELECT GET_LOCK(%s, 0)", (f"regstream_publish:{topic}",))
    if cur.fetchone()[0] != 1:
        raise PublisherBusy(
            f"another publisher for topic {topic} is running (MySQL lock "
            f"regstream_publish:{topic}); this run changed nothing"
        )
    try:
        before = read_watermark(conn, topic)
        h = before.last_event_id
        active_before = open_transactions(conn)
        settled = [g for g in before.gaps if not set(g.trx) & active_before]
        # Read every event above H and every id still missing below it, in id order.
        where = ["event_id > %s"] + ["event_id BETWEEN %s AND %s" for _ in before.gaps]
        params: list[int] = [h] + [x for g in before.gaps for x in (g.first, g.last)]
        sql = f"{_SELECT} WHERE {' OR '.join(where)} ORDER BY event_id LIMIT %s"
        params.append(max_events)
        deliveries = _Deliveries()
        keys: dict[int, bytes] = {}
        seen_in_gaps: list[int] = []
        new_gaps: list[tuple[int, int]] = []
        state = {"top": h, "captured": before.last_captured_at}

        scur = conn.cursor(MySQLdb.cursors.SSCursor)
        read_started = time.monotonic()
        scur.execute(sql, params)

        def rows() -> Any:
            while True:
                batch = scur.fetchmany(5000)
                if not batch:
                    return
                for event_id, store_id, value in batch:
                    if event_id <= h:
                        seen_in_gaps.append(event_id)
                    else:
                        if event_id > state["top"] + 1:
                            new_gaps.append((state["top"] + 1, event_id - 1))
                        state["top"] = event_id
                    key = keys.get(store_id)
                    if key is None:
                        key = keys[store_id] = str(store_id).encode()
                    yield key, value

        sent = produce_all(producer, topic, rows(), deliveries)
        scur.close()
        # Transactions open *after* the read: whoever holds a new gap's id is among them,
        # or has already ended. InnoDB serves INNODB_TRX from a cache refreshed at most every
        # 0.1 s (trx0i_s.cc, CACHE_MIN_IDLE_TIME_US): ask only once the cache must postdate
        # the read, or a transaction that began just before the read could be missing.
        fresh_after = read_started + TRX_CACHE_MARGIN_S - time.monotonic()
        if new_gaps and fresh_after > 0:
            time.sleep(fresh_after)
        active_after = open_transactions(conn)
        flush_or_fail(producer, sent, deliveries, bootstrap, flush_timeout)

        if state["top"] != h:
            cur.execute(
                f"SELECT captured_at FROM {EVENT_TABLE} WHERE event_id = %s", (state["top"],)
            )
            state["captured"] = cur.fetchone()[0]
        now = clock()
        gaps: list[Gap] = []
        rolled_back = given_up = 0
        settled_ids = {id(g) for g in settled}
        for g in before.gaps:
            rest = subtract([(g.first, g.last)], seen_in_gaps)
            if id(g) in settled_ids:
                rolled_back += sum(b - a + 1 for a, b in rest)
                if rest:
                    log.info(
                        "ids %s never committed (rolled back); their transactions ended",
                        ", ".join(f"{a}-{b}" for a, b in rest),
                    )
                continue
            still = sorted(set(g.trx) & active_after)
            for a, b in rest:
                gaps.append(Gap(a, b, still, g.since))
        gaps += [Gap(a, b, sorted(active_after), now) for a, b in new_gaps]
        if wait_bound > 0:
            kept = []
            for g in gaps:
                if now - g.since > wait_bound:
                    given_up += g.size
                    log.warning(
                        "GAVE UP on ids %d-%d after %.0fs (REGSTREAM_GAP_MAX_WAIT_S=%d): "
                        "transactions %s still open; rows that commit later are not "
                        "published",
                        g.first,
                        g.last,
                        now - g.since,
                        wait_bound,
                        g.trx,
                    )
                else:
                    kept.append(g)
            gaps = kept
        after = Watermark(state["top"], state["captured"], gaps, before.events_published + sent)
        changed = (
            after.last_event_id != h
            or sent
            or [g.to_json() for g in gaps] != [g.to_json() for g in before.gaps]
        )
        if changed:
            cur.execute(
                f"UPDATE {WATERMARK_TABLE} SET last_event_id = %s, last_captured_at = %s, "
                f"pending_gaps = %s, events_published = %s WHERE pipeline = %s "
                f"AND last_event_id = %s",
                (
                    after.last_event_id,
                    after.last_captured_at,
                    json.dumps([g.to_json() for g in gaps]),
                    after.events_published,
                    topic,
                    h,
                ),
            )
            if cur.rowcount != 1:
                raise PublishError(f"watermark of {topic} moved under this run; not updated")
        cur.execute(
            f"SELECT COUNT(*) FROM {EVENT_TABLE} WHERE event_id > %s", (after.last_event_id,)
        )
        backlog = int(cur.fetchone()[0])
    finally:
        cur.execute("SELECT RELEASE_LOCK(%s)", (f"regstream_publish:{topic}",))
        cur.fetchall()
        cur.close()
    return PublishResult(
        before,
        after,
        sent,
        dict(sorted(deliveries.offsets.items())),
        rolled_back,
        given_up,
        backlog,
        time.monotonic() - t0,
    )


def log_result(r: PublishResult, topic: str) -> None:
    ranges = ", ".join(f"p{p}:{lo}-{hi}" for p, (lo, hi) in r.partitions.items()) or "none"
    pending = sum(g.size for g in r.after.gaps)
    log.info(
        "published %d events to %s in %.2fs (%.0f events/s); watermark %d -> %d "
        "(captured_at %s -> %s); offsets %s; backlog left %d; gaps pending %d ids in %d "
        "ranges; rolled back ids settled %d; given up %d",
        r.published,
        topic,
        r.seconds,
        r.published / max(r.seconds, 1e-9),
        r.before.last_event_id,
        r.after.last_event_id,
        r.before.last_captured_at,
        r.after.last_captured_at,
        ranges,
        r.backlog,
        pending,
        len(r.after.gaps),
        r.rolled_back_ids,
        r.given_up_ids,
    )
    for g in r.after.gaps[:10]:
        log.info(
            "gap %d-%d waits on transactions %s (open %.0fs)",
            g.first,
            g.last,
            g.trx,
            time.time() - g.since,
        )


# ------------------------------------------------------------------ Kafka plumbing


def producer_config(bootstrap: str) -> dict[str, Any]:
    return {"bootstrap.servers": bootstrap, **PRODUCER_CONFIG}


def check_broker(client: Any, bootstrap: str, timeout: float = 10.0) -> None:
    from confluent_kafka import KafkaException

    try:
        client.list_topics(timeout=timeout)
    except KafkaException as exc:
        raise PublishError(
            f"Kafka at {bootstrap} is unreachable ({exc}); the watermark was not moved"
        ) from exc


def ensure_topic(admin: Any, topic: str, partitions: int, replication: int, bootstrap: str) -> None:
    from confluent_kafka import KafkaException
    from confluent_kafka.admin import NewTopic

    try:
        meta = admin.list_topics(timeout=10)
    except KafkaException as exc:
        raise PublishError(
            f"Kafka at {bootstrap} is unreachable ({exc}); the watermark was not moved"
        ) from exc
    if topic in meta.topics:
        return
    futures = admin.create_topics(
        [NewTopic(topic, num_partitions=partitions, replication_factor=replication)]
    )
    try:
        futures[topic].result(timeout=30)
        log.info("created topic %s (%d partitions, replication %d)", topic, partitions, replication)
    except KafkaException as exc:
        if "TOPIC_ALREADY_EXISTS" not in str(exc):
            raise PublishError(f"cannot create topic {topic} at {bootstrap}: {exc}") from exc


class HookedPublisher:
    """Connections made once through the providers' hooks; `run()` publishes once."""

    def __init__(
        self,
        mysql_conn_id: str = settings.MYSQL_PUBLISHER_CONN_ID,
        kafka_conn_id: str = settings.KAFKA_CONN_ID,
        topic: str | None = None,
    ) -> None:
        from airflow.providers.apache.kafka.hooks.client import KafkaAdminClientHook

        from regstream.db import connect

        self.topic = topic or settings.topic()
        admin_hook = KafkaAdminClientHook(kafka_config_id=kafka_conn_id)
        self.bootstrap = str(admin_hook._build_config().get("bootstrap.servers"))
        self.conn = connect(mysql_conn_id)
        try:
            check_schema(self.conn)
            ensure_topic(
                admin_hook.get_conn,
                self.topic,
                settings.topic_partitions(),
                settings.topic_replication(),
                self.bootstrap,
            )
            self.producer = _ProducerHook(kafka_config_id=kafka_conn_id).get_producer()
            check_broker(self.producer, self.bootstrap)
        except BaseException:
            self.conn.close()
            raise

    def run(self, max_events: int = 2_000_000) -> PublishResult:
        result = publish(
            self.conn, self.producer, self.topic, bootstrap=self.bootstrap, max_events=max_events
        )
        log_result(result, self.topic)
        return result

    def close(self) -> None:
        self.conn.close()


def run_publish(
    mysql_conn_id: str = settings.MYSQL_PUBLISHER_CONN_ID,
    kafka_conn_id: str = settings.KAFKA_CONN_ID,
    topic: str | None = None,
    max_events: int = 2_000_000,
) -> PublishResult:
    """The publish task, through the providers' hooks and connections."""
    pub = HookedPublisher(mysql_conn_id, kafka_conn_id, topic)
    try:
        return pub.run(max_events)
    finally:
        pub.close()


def main(argv: list[str] | None = None) -> int:
    """`python -m regstream.publish [--loop]`: once, or back to back (the most continuous
    mode, for the lowest latency), with the same connections as the DAG."""
    import argparse

    p = argparse.ArgumentParser(description=main.__doc__)
    p.add_argument("--loop", action="store_true", help="publish runs back to back until stopped")
    p.add_argument(
        "--interval", type=float, default=0.5, help="pause between runs when idle (seconds)"
    )
    p.add_argument("--max-events", type=int, default=2_000_000)
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    if not args.loop:
        run_publish(max_events=args.max_events)
        return 0
    from regstream.db import DatabaseUnavailable

    pub: HookedPublisher | None = None
    while True:
        try:
            pub = pub or HookedPublisher()
            r = pub.run(args.max_events)
            if r.published == 0:
                time.sleep(args.interval)
        except (PublishError, DatabaseUnavailable, PublisherBusy) as exc:
            log.error("publish failed, retrying in 5 s: %s", exc)
            if pub is not None:
                pub.close()
            pub = None
            time.sleep(5)


try:  # the hook class exists only where the provider is installed (Airflow, tests)
    from airflow.providers.apache.kafka.hooks.produce import KafkaProducerHook as _Base

    class _ProducerHook(_Base):
        """The provider's producer hook with this pipeline's delivery guarantees on top of the
        connection's own settings (acks=all, idempotence)."""

        def _get_client(self, config: dict) -> Any:
            from confluent_kafka import Producer

            return Producer({**config, **PRODUCER_CONFIG})
except ImportError:  # pragma: no cover
    pass


if __name__ == "__main__":
    raise SystemExit(main())
