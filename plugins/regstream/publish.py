"""Publish CDC rows from `users_change_events` to Kafka, then advance the watermark.

Order of a run: lock -> fence older publishers of the topic -> read the watermark -> begin a
Kafka transaction -> read and produce every event above the watermark or inside one of its
gaps -> flush and require an acknowledgement (acks=all) for every message -> add the new
watermark to the transaction -> commit -> copy the watermark to MySQL.

Exactly once at the source (KIP-618, as Kafka Connect's exactly-once source connectors do it):
the watermark lives in a compacted Kafka topic (`<topic>-publisher-state`) and is committed
in the same transaction as the events it covers, and consumers read with
isolation.level=read_committed. A publisher killed anywhere before the commit (including
between Kafka's acknowledgement and the watermark write) leaves an open transaction that the
next publisher aborts when it registers (`init_transactions`), so the events it produced are
never seen and the next run sends them once. A publisher killed after the commit leaves the
MySQL copy behind; the next run reads the watermark from Kafka and brings the copy up to date.
A zombie publisher (a task Airflow thinks dead) is fenced and cannot commit.

Where the parts are:
- `regstream.watermark`: the watermark and its gaps, a pure state machine (why it is exact,
  when a gap is settled or given up);
- `regstream.cdc_source`: the MySQL side (rows, open InnoDB transactions, the stored watermark);
- `regstream.kafka_io`: the Kafka side (clients from the Airflow connection, topic, produce);
- `regstream.messages`: the message contract.
This module wires them: `publish_events()` is one transaction, `HookedPublisher` its
connections, `run_publish()` one run of it (tests, the command line), `has_work()` the full
gate. The Airflow task is the long-running loop in `regstream.publish_loop`.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import closing
from dataclasses import dataclass
from typing import Any

from regstream import kafka_io, settings
from regstream.cdc_source import EventSource, MySqlEvents, Row
from regstream.kafka_io import (
    PRODUCER_CONFIG,
    Deliveries,
    Transactions,
    ensure_topic,
    flush_or_fail,
    produce_all,
    producer_config,
)
from regstream.messages import message_key
from regstream.publish_errors import PublisherBusy, PublishError, SchemaMissing
from regstream.watermark import Decision, Gap, Run, Watermark, gate

log = logging.getLogger(__name__)

__all__ = [
    "PRODUCER_CONFIG",
    "Acked",
    "Deliveries",
    "Gap",
    "HookedPublisher",
    "PublishError",
    "PublishResult",
    "PublisherBusy",
    "SchemaMissing",
    "Transactions",
    "Watermark",
    "ensure_topic",
    "flush_or_fail",
    "has_work",
    "log_result",
    "main",
    "messages",
    "produce_all",
    "producer_config",
    "publish_events",
    "run_publish",
]


@dataclass
class PublishResult:
    before: Watermark
    after: Watermark
    published: int
    partitions: dict[int, tuple[int, int]]  # partition -> (first offset, last offset)
    rolled_back_ids: int
    given_up_ids: int
    backlog: int  # rows left above the new watermark; -1 when not counted (the loop)
    seconds: float


@dataclass(frozen=True)
class Acked:
    """A run once Kafka acknowledged every message, before the watermark is written: the
    moment a crash repeats the most. Passed to `on_acked` (tests inject crashes there)."""

    topic: str
    before: Watermark
    decision: Decision
    offsets: dict[int, tuple[int, int]]


def messages(
    batches: Iterable[list[Row]], run: Run, deadline: float | None = None
) -> Iterator[tuple[bytes, bytes]]:
    """(key, value) of every row read, in id order; the run sees each batch's ids first.
    Past `deadline` (time.monotonic) it stops at a batch boundary and tells the run so."""
    keys: dict[int, bytes] = {}
    for batch in batches:
        if deadline is not None and run.rows and time.monotonic() > deadline:
            run.cut()
            return
        run.see([row[0] for row in batch])
        for _, store_id, value in batch:
            key = keys.get(store_id)
            if key is None:
                key = keys[store_id] = message_key(store_id)
            yield key, value


def publisher_lock(topic: str) -> str:
    """The MySQL lock a publisher of `topic` holds while it publishes: one at a time."""
    return f"regstream_publish:{topic}"


def publish_events(
    events: EventSource,
    out: Transactions,
    topic: str,
    *,
    bootstrap: str = "?",
    max_events: int = 2_000_000,
    max_seconds: float | None = None,
    flush_timeout: float = 60.0,
    gap_max_wait_s: float | None = None,
    clock: Callable[[], float] = time.time,
    on_acked: Callable[[Acked], None] | None = None,
    check_schema: bool = True,
    count_backlog: bool = True,
) -> PublishResult:
    """One publish run (one Kafka transaction of at most `max_events` events, read for at most
    `max_seconds`); `out` is the topic's transactional producer (kafka_io.Transactions)."""
    t0 = time.monotonic()
    max_wait = settings.gap_max_wait_s() if gap_max_wait_s is None else gap_max_wait_s
    if check_schema:
        events.check_schema()
    lock = publisher_lock(topic)
    if not events.try_lock(lock):
        raise PublisherBusy(
            f"another publisher for topic {topic} is running (MySQL lock {lock}); "
            "this run changed nothing"
        )
    try:
        out.fence()  # inside the lock: a second publisher never fences a running one
        mirror = events.read_watermark(topic)
        # The watermark committed with the events wins; the MySQL copy is for the gate and
        # the monitoring, and the only source before the first transactional run.
        before = out.read_state() or mirror
        deadline = None if max_seconds is None else t0 + max_seconds
        decision, offsets, sent = _transaction(
            events,
            out,
            topic,
            before,
            (max_events, deadline),
            flush_timeout,
            bootstrap,
            max_wait,
            clock,
            on_acked,
        )
        store(events, topic, mirror, decision)
        # a COUNT over what is left: the one-shot run's log line; the loop goes on instead
        backlog = events.backlog(decision.state.last_event_id) if count_backlog else -1
    finally:
        events.release_lock(lock)
    return PublishResult(
        before,
        decision.state,
        sent,
        offsets,
        decision.rolled_back_ids,
        decision.given_up_ids,
        backlog,
        time.monotonic() - t0,
    )


def _transaction(
    events: EventSource,
    out: Transactions,
    topic: str,
    before: Watermark,
    bound: tuple[int, float | None],
    flush_timeout: float,
    bootstrap: str,
    max_wait: float,
    clock: Callable[[], float],
    on_acked: Callable[[Acked], None] | None,
) -> tuple[Decision, dict[int, tuple[int, int]], int]:
    """Read, produce and commit the events above `before` with the new watermark, in one
    Kafka transaction; aborted (never visible) if anything fails before the commit.
    `bound`: at most that many events, read until that time.monotonic() deadline."""
    max_events, deadline = bound
    run = Run(before, events.open_transactions(), max_events)
    log.debug(
        "reading events above watermark %d and inside %d gaps (%d ids), at most %d",
        before.last_event_id,
        len(before.gaps),
        sum(g.size for g in before.gaps),
        max_events,
    )
    out.begin()
    try:
        deliveries = Deliveries()
        read_started = time.monotonic()
        with closing(events.read_events(run.plan)) as batches:
            sent = produce_all(out.producer, topic, messages(batches, run, deadline), deliveries)
        # Transactions open *after* the read: whoever holds a new gap's id is among them or
        # has already ended.
        open_after = events.open_transactions(read_started if run.found_new_gaps else None)
        flush_or_fail(out.producer, sent, deliveries, bootstrap, flush_timeout)
        moved = run.top != before.last_event_id
        captured = events.captured_at(run.top) if moved else None
        decision = run.decide(open_after, clock(), max_wait, captured)
        offsets = dict(sorted(deliveries.offsets.items()))
        if on_acked is not None:
            on_acked(Acked(topic, before, decision, offsets))
        if sent or decision.changed:
            out.commit(decision.state)
        else:  # nothing new: no state record, no MySQL write (an idle --loop stays quiet)
            out.abort(forget=False)
    except BaseException:
        out.abort()
        raise
    return decision, offsets, sent


def store(events: EventSource, topic: str, mirror: Watermark, decision: Decision) -> None:
    """Log what the run settled, then bring the MySQL copy of the watermark up to date."""
    if decision.rolled_back:
        log.info(
            "ids %s never committed (rolled back): every transaction open when they were "
            "found has ended and a later read did not see them",
            ", ".join(f"{a}-{b}" for a, b in decision.rolled_back),
        )
    for given_up in decision.given_up:
        log.warning("GAVE UP on %s", given_up.reason)
    if decision.state != mirror:
        events.write_watermark(topic, decision.state)


def has_work(conn: Any, pipeline: str) -> tuple[bool, str]:
    """The gate: is there anything to publish or to settle? Cheap queries."""
    events = MySqlEvents(conn)
    events.check_schema()
    state = events.read_watermark(pipeline)
    newest, count = events.newest_above(state.last_event_id)
    if count or not state.gaps:
        return gate(state, count, newest)
    return gate(state, 0, newest, events.visible_in(state.gaps), events.open_transactions())


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
            list(g.trx),
            time.time() - g.since,
        )


class HookedPublisher:
    """Connections made once through the providers' hooks; `run()` publishes once."""

    def __init__(
        self,
        mysql_conn_id: str = settings.MYSQL_PUBLISHER_CONN_ID,
        kafka_conn_id: str = settings.KAFKA_CONN_ID,
        topic: str | None = None,
    ) -> None:
        from regstream.db import connect

        self.topic = topic or settings.topic()
        kafka = kafka_io.connection_settings(kafka_conn_id)
        self.bootstrap = str(kafka["bootstrap.servers"])
        self.conn = connect(mysql_conn_id)
        self.events = MySqlEvents(self.conn)
        try:
            self.events.check_schema()
            ensure_topic(
                kafka_io.admin_client(kafka_conn_id),
                self.topic,
                settings.topic_partitions(),
                settings.topic_replication(),
                self.bootstrap,
            )
            ensure_topic(
                kafka_io.admin_client(kafka_conn_id),
                kafka_io.state_topic(self.topic),
                1,
                settings.topic_replication(),
                self.bootstrap,
                config=kafka_io.STATE_TOPIC_CONFIG,
            )
            producer = kafka_io.make_producer(kafka, self.topic)
            kafka_io.check_broker(producer, self.bootstrap)
            self.out = Transactions(producer, kafka, self.topic)
        except BaseException:
            self.conn.close()
            raise

    def run(
        self,
        max_events: int = 2_000_000,
        on_acked: Callable[[Acked], None] | None = None,
        max_seconds: float | None = None,
        quiet: bool = False,
    ) -> PublishResult:
        """One transaction; `quiet`: no result line (the long-running loop sums them up)."""
        result = publish_events(
            self.events,
            self.out,
            self.topic,
            bootstrap=self.bootstrap,
            max_events=max_events,
            max_seconds=max_seconds,
            # within the transaction timeout: a flush that takes longer fails the run first
            flush_timeout=kafka_io.transaction_timeout_ms() / 2000,
            on_acked=on_acked,
            check_schema=False,  # checked when connecting
            count_backlog=not quiet,
        )
        if not quiet:
            log_result(result, self.topic)
        return result

    def new_rows(self) -> bool:
        """Rows above the MySQL copy of the watermark? Two primary-key lookups."""
        newest, mirror = self.events.newest_and_watermark(self.topic)
        return newest > mirror

    @property
    def lock(self) -> str:
        """The MySQL lock of the topic's publisher."""
        return publisher_lock(self.topic)

    def lead(self) -> bool:
        """Take the topic's lock for the life of this connection; False if another holds it."""
        self.events.drop_idle_session_after(60)
        return self.events.try_lock(self.lock)

    def lock_holder(self) -> int | None:
        return self.events.lock_holder(self.lock)

    def gap_ids(self) -> int:
        """Ids in the gaps of the stored watermark (its MySQL copy)."""
        return sum(g.size for g in self.events.read_watermark(self.topic).gaps)

    def gaps_ready(self) -> bool:
        """The full gate, for a watermark with gaps: rows in them, or gaps to settle."""
        return has_work(self.conn, self.topic)[0]

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
    """`python -m regstream.publish [--loop]`: one transaction, or the long-running loop of
    the Airflow task (regstream.publish_loop) until stopped, with the same connections."""
    import argparse
    import dataclasses

    from regstream.publish_loop import LoopSettings, fault_hook, run_loop, stop_on_sigterm

    p = argparse.ArgumentParser(description=main.__doc__)
    p.add_argument("--loop", action="store_true", help="publish continuously until stopped")
    p.add_argument("--max-events", type=int, default=2_000_000)
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    if not args.loop:
        run_publish(max_events=args.max_events)
        return 0
    cfg = LoopSettings.current()
    if "REGSTREAM_PUBLISH_RUN_S" not in os.environ:
        cfg = dataclasses.replace(cfg, run_s=float("inf"))
    run_loop(cfg, stop=stop_on_sigterm(), on_acked=fault_hook())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
