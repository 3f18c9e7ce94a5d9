"""The job's life: stopping on request (signal or STOP file), one instance per sink database,
and fault injection for the tests' crash points."""

from __future__ import annotations

import logging
import os
import signal
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from types import FrameType
from typing import Any

import MySQLdb
from pyspark.errors import StreamingQueryException
from pyspark.sql import SparkSession
from pyspark.sql.streaming import StreamingQuery

from regstream.stream import LOG_NAME
from regstream.stream.mysql import mysql_connect

log = logging.getLogger(LOG_NAME)


def inject_fault(point: str, batch_id: int) -> None:
    """Tests only. REGSTREAM_FAULT=<point> SIGKILLs the whole job (driver and JVM) at `point`,
    e.g. right after the MySQL commit of a batch and before Spark records it.
    REGSTREAM_FAULT=pause-<point> pauses the first batch that reaches `point` until the test
    lets it go: the job creates <REGSTREAM_FAULT_DIR>/paused (holding the batch id) and
    waits for <REGSTREAM_FAULT_DIR>/resume, so that a test acts at that exact moment (kills
    MariaDB while a batch's transaction is open, say)."""
    fault = os.environ.get("REGSTREAM_FAULT")
    if fault == point:
        log.warning("fault injected after batch %d: %s", batch_id, point)
        for handler in logging.getLogger().handlers:
            handler.flush()
        os.killpg(os.getpgid(0), signal.SIGKILL)
    elif fault == f"pause-{point}" and point not in _paused:
        _paused.add(point)
        _pause(point, batch_id, Path(os.environ["REGSTREAM_FAULT_DIR"]))


_paused: set[str] = set()
PAUSE_MAX_S = 300.0


def _pause(point: str, batch_id: int, folder: Path) -> None:
    log.warning("fault injected: batch %d paused at %s", batch_id, point)
    (folder / "paused").write_text(str(batch_id))
    deadline = time.monotonic() + PAUSE_MAX_S
    while not (folder / "resume").exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    log.warning("fault injected: batch %d resumes at %s", batch_id, point)


BATCH_WAIT_S = 30.0


class Stopper:
    """Stops the queries once asked: SIGTERM or SIGINT, the STOP file, or a query that ended.

    The main thread waits inside a py4j call (awaitAnyTermination), where a signal handler
    must not make Spark calls of its own: the handler only records the request, and a helper
    thread stops the queries. Another thread looks for the STOP file every `poll_s`."""

    SIGNALS = (signal.SIGTERM, signal.SIGINT)

    def __init__(
        self, queries: Sequence[StreamingQuery], stop_file: Path, poll_s: float = 2.0
    ) -> None:
        self.queries = queries
        self.stop_file = stop_file
        self.poll_s = poll_s
        self.reason = ""
        self.requested = threading.Event()
        self._threads: list[threading.Thread] = []
        self._previous: dict[int, Any] = {}

    def request(self, reason: str) -> None:
        if not self.requested.is_set():
            self.reason = reason
            self.requested.set()

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        self.request(signal.Signals(signum).name)

    def __enter__(self) -> Stopper:
        for sig in self.SIGNALS:
            self._previous[sig] = signal.signal(sig, self._on_signal)
        for target, name in ((self._watch_stop_file, "stop-file"), (self._stop, "stopper")):
            self._threads.append(threading.Thread(target=target, name=name, daemon=True))
            self._threads[-1].start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.request("the job is ending")
        for t in self._threads:
            t.join()
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)

    def _watch_stop_file(self) -> None:
        while not self.requested.wait(self.poll_s):
            if self.stop_file.exists():
                self.request(f"stop file {self.stop_file}")

    def _stop(self) -> None:
        self.requested.wait()
        log.info("stopping the queries: %s", self.reason)
        for q in self.queries:
            try:
                self._wait_between_batches(q)
                q.stop()
            except Exception as exc:  # noqa: BLE001 - stop the others whatever this one does
                log.error("query %s did not stop cleanly: %s", q.name, exc)

    def _wait_between_batches(self, q: StreamingQuery) -> None:
        """stop() interrupts a running micro-batch: safe (it is replayed at restart, and the
        sink applies each batch once) but noisy in the log. Let the running batch finish first, for up
        to BATCH_WAIT_S; a batch may still start just before stop()."""
        deadline = time.monotonic() + BATCH_WAIT_S
        while q.isActive and q.status["isTriggerActive"] and time.monotonic() < deadline:
            time.sleep(0.05)


def run_until_stopped(
    spark: SparkSession,
    queries: Sequence[StreamingQuery],
    stop_file: Path,
    stop_file_poll_s: float = 2.0,
) -> int:
    """Wait on the queries until a stop is asked for (0) or one of them ends by itself (1)."""
    stop_file.unlink(missing_ok=True)
    with Stopper(queries, stop_file, stop_file_poll_s) as stopper:
        try:
            spark.streams.awaitAnyTermination()
        except StreamingQueryException:
            pass  # reported below, with the query's name
        asked, reason = stopper.requested.is_set(), stopper.reason
    failed = [(q.name, q.exception()) for q in queries if q.exception() is not None]
    if failed or not asked:
        log.error(
            "query stopped without being asked to: %s",
            "; ".join(f"{name}: {exc}" for name, exc in failed) or "no error reported",
        )
        return 1
    stop_file.unlink(missing_ok=True)
    log.info("stopped cleanly (%s); a restart resumes from the checkpoint", reason)
    return 0


class InstanceLockLost(RuntimeError):
    """Another instance took the job's lock while this one was cut off from MySQL."""


class InstanceLock:
    """One job per sink database: a MySQL named lock, held by a connection of its own for the
    driver's life. The server releases it the moment that connection dies (a MariaDB restart
    does that): `ensure` takes it again on a new connection, and stops the job
    (InstanceLockLost) if another instance has it by then: never two writers."""

    def __init__(self, params: dict[str, Any], name: str) -> None:
        self.params = params
        self.name = name
        self._conn: Any = None

    def acquire(self, timeout: int) -> InstanceLock:
        conn = mysql_connect(self.params)
        cur = conn.cursor()
        # the lock lives as long as this connection: the server must never drop it as idle
        cur.execute("SET SESSION wait_timeout = 31536000")
        cur.execute("SELECT GET_LOCK(%s, %s)", (self.name, timeout))
        got = cur.fetchone()[0] == 1
        cur.close()
        if not got:
            conn.close()
            raise InstanceLockLost(
                f"another instance holds lock {self.name!r}; not starting a second one"
            )
        self._conn = conn
        return self

    def ensure(self) -> None:
        """The lock is still ours (a ping of its connection), or taken again at once."""
        try:
            self._conn.ping()
            return
        except MySQLdb.Error as exc:
            log.warning("the job's MySQL lock %r was lost with its connection (%s)", self.name, exc)
        self._close()
        try:
            self.acquire(0)
        except InstanceLockLost:
            raise InstanceLockLost(
                f"another instance took lock {self.name!r} while MySQL was unreachable: "
                "stopping this one (never two writers)"
            ) from None
        log.warning("took the job's MySQL lock %r again", self.name)

    def _close(self) -> None:
        try:
            self._conn.close()
        except MySQLdb.Error:
            pass  # already broken: the server has dropped it

    def close(self) -> None:
        if self._conn is not None:
            self._close()
            self._conn = None


def acquire_instance_lock(params: dict[str, Any], name: str, timeout: int) -> InstanceLock:
    """The job's lock (see InstanceLock); exits if another instance holds it."""
    try:
        return InstanceLock(params, name).acquire(timeout)
    except InstanceLockLost as exc:
        raise SystemExit(str(exc)) from None
