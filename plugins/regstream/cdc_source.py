"""The publisher's MySQL side: CDC rows, open transactions, the stored watermark, the lock.

`EventSource` is what a publish run needs from the database; `MySqlEvents` implements it on a
MySQLdb connection (autocommit). Unit tests put an in-memory source in its place.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Generator
from typing import Any, Protocol

from regstream.messages import EVENT_TABLE, SELECT_EVENTS
from regstream.publish_errors import SchemaMissing
from regstream.watermark import Gap, ReadPlan, Watermark, gaps_from_json, gaps_to_json

log = logging.getLogger(__name__)

WATERMARK_TABLE = "latest_cdc_timestamp"
# InnoDB refreshes information_schema.INNODB_TRX at most every 0.1 s (trx0i_s.cc,
# CACHE_MIN_IDLE_TIME_US); twice that for margin.
TRX_CACHE_MARGIN_S = 0.2
FETCH_BATCH = 5000

Row = tuple[int, int, bytes]  # event_id, store_id, message value


class EventSource(Protocol):
    def check_schema(self) -> None: ...
    def try_lock(self, name: str) -> bool: ...
    def release_lock(self, name: str) -> None: ...
    def read_watermark(self, pipeline: str) -> Watermark: ...
    def open_transactions(self, not_before: float | None = None) -> set[str]: ...
    def read_events(self, plan: ReadPlan) -> Generator[list[Row], None, None]: ...
    def captured_at(self, event_id: int) -> Any: ...
    def write_watermark(self, pipeline: str, state: Watermark) -> None: ...
    def backlog(self, above: int) -> int: ...


def events_query(plan: ReadPlan) -> tuple[str, list[int]]:
    """The plan's read: every id above the watermark or inside a gap, ascending, limited."""
    where = ["event_id > %s"] + ["event_id BETWEEN %s AND %s" for _ in plan.gaps]
    params = [plan.above] + [x for g in plan.gaps for x in g] + [plan.limit]
    return f"{SELECT_EVENTS} WHERE {' OR '.join(where)} ORDER BY event_id LIMIT %s", params


class MySqlEvents:
    def __init__(self, conn: Any) -> None:
        self.conn = conn

    def _one(self, sql: str, params: Any = ()) -> Any:
        """The first row of a query (None for a statement without rows)."""
        cur = self.conn.cursor()
        try:
            cur.execute(sql, params)
            return cur.fetchone() if cur.description else None
        finally:
            cur.close()

    def check_schema(self) -> None:
        from regstream.db import table_exists

        for table in (EVENT_TABLE, WATERMARK_TABLE):
            if not table_exists(self.conn, table):
                raise SchemaMissing(
                    f"table {table} does not exist in this database: run the schema step "
                    "(`make up` applies sql/, or run sql/10_cdc.sql against the database)"
                )

    def try_lock(self, name: str) -> bool:
        return self._one("SELECT GET_LOCK(%s, 0)", (name,))[0] == 1

    def lock_holder(self, name: str) -> int | None:
        """The MySQL connection id holding the named lock, None when free."""
        holder = self._one("SELECT IS_USED_LOCK(%s)", (name,))[0]
        return None if holder is None else int(holder)

    def drop_idle_session_after(self, seconds: int) -> None:
        """A session (and the locks it holds) whose client vanished ends after `seconds`
        idle, not after the server's wait_timeout (8 h by default)."""
        self._one(f"SET SESSION wait_timeout = {int(seconds)}")

    def release_lock(self, name: str) -> None:
        self._one("SELECT RELEASE_LOCK(%s)", (name,))

    def read_watermark(self, pipeline: str) -> Watermark:
        self._one(
            f"INSERT IGNORE INTO {WATERMARK_TABLE} (pipeline, pending_gaps) VALUES (%s, '[]')",
            (pipeline,),
        )
        last_id, captured, gaps_json, published = self._one(
            f"SELECT last_event_id, last_captured_at, pending_gaps, events_published "
            f"FROM {WATERMARK_TABLE} WHERE pipeline = %s",
            (pipeline,),
        )
        return Watermark(int(last_id), captured, gaps_from_json(gaps_json), int(published))

    def open_transactions(self, not_before: float | None = None) -> set[str]:
        """InnoDB transactions open now. `not_before` (time.monotonic()): the answer must
        postdate that moment; INNODB_TRX is a cache, so wait out its refresh margin."""
        if not_before is not None:
            wait = not_before + TRX_CACHE_MARGIN_S - time.monotonic()
            if wait > 0:
                time.sleep(wait)
        cur = self.conn.cursor()
        cur.execute("SELECT trx_id FROM information_schema.INNODB_TRX")
        ids = {str(r[0]) for r in cur.fetchall()}
        cur.close()
        return ids

    def read_events(self, plan: ReadPlan) -> Generator[list[Row], None, None]:
        """Streamed (server-side cursor): memory stays flat whatever the backlog."""
        import MySQLdb.cursors

        sql, params = events_query(plan)
        cur = self.conn.cursor(MySQLdb.cursors.SSCursor)
        try:
            cur.execute(sql, params)
            while batch := cur.fetchmany(FETCH_BATCH):
                yield batch
        finally:
            cur.close()

    def captured_at(self, event_id: int) -> Any:
        return self._one(f"SELECT captured_at FROM {EVENT_TABLE} WHERE event_id = %s", (event_id,))[
            0
        ]

    def write_watermark(self, pipeline: str, state: Watermark) -> None:
        """The MySQL copy of the watermark committed in Kafka (the gate and the monitoring
        read it). One writer: the caller holds the publisher lock."""
        cur = self.conn.cursor()
        cur.execute(
            f"UPDATE {WATERMARK_TABLE} SET last_event_id = %s, last_captured_at = %s, "
            f"pending_gaps = %s, events_published = %s WHERE pipeline = %s",
            (
                state.last_event_id,
                state.last_captured_at,
                gaps_to_json(state.gaps),
                state.events_published,
                pipeline,
            ),
        )
        cur.close()

    def backlog(self, above: int) -> int:
        return int(
            self._one(f"SELECT COUNT(*) FROM {EVENT_TABLE} WHERE event_id > %s", (above,))[0]
        )

    def newest_and_watermark(self, pipeline: str) -> tuple[int, int]:
        """(highest event id, the MySQL copy of the watermark): two primary-key lookups."""
        newest, mirror = self._one(
            f"SELECT (SELECT MAX(event_id) FROM {EVENT_TABLE}), "
            f"(SELECT last_event_id FROM {WATERMARK_TABLE} WHERE pipeline = %s)",
            (pipeline,),
        )
        return int(newest or 0), int(mirror or 0)

    def newest_above(self, above: int, cap: int = 1_000_000) -> tuple[int | None, int]:
        """(newest id, count) of the rows above `above`, counting at most `cap`."""
        newest, count = self._one(
            f"SELECT MAX(event_id), COUNT(*) FROM (SELECT event_id FROM {EVENT_TABLE} "
            f"WHERE event_id > %s LIMIT {int(cap)}) t",
            (above,),
        )
        return newest, int(count)

    def visible_in(self, gaps: tuple[Gap, ...]) -> int:
        """Rows now visible inside the gaps."""
        where = " OR ".join("event_id BETWEEN %s AND %s" for _ in gaps)
        params = [x for g in gaps for x in (g.first, g.last)]
        return int(self._one(f"SELECT COUNT(*) FROM {EVENT_TABLE} WHERE {where}", params)[0])
