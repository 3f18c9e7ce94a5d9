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

from pyspark.errors import StreamingQueryException
from pyspark.sql import SparkSession
from pyspark.sql.streaming import StreamingQuery

from regstream.stream import LOG_NAME
from regstream.stream.mysql import mysql_connect

log = logging.getLogger(LOG_NAME)


def inject_fault(point: str, batch_id: int) -> None:
    """Tests only: REGSTREAM_FAULT=<point> SIGKILLs the whole job (driver and JVM) at `point`,
    e.g. right after the MySQL commit of a batch and before Spark records it."""
    if os.environ.get("REGSTREAM_FAULT") == point:
        log.warning("fault injected after batch %d: %s", batch_id, point)
        for handler in logging.getLogger().handlers:
            handler.flush()
        os.killpg(os.getpgid(0), signal.SIGKILL)


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


def acquire_instance_lock(params: dict[str, Any], name: str, timeout: int) -> Any:
    """One job per sink database: a MySQL named lock held for the driver's life (released by
    the server the moment the driver's connection dies, and not taken again if MariaDB
    restarts: then the check in `Sink.commit` stops a second job at its first batch)."""
    conn = mysql_connect(params)
    cur = conn.cursor()
    cur.execute("SELECT GET_LOCK(%s, %s)", (name, timeout))
    if cur.fetchone()[0] != 1:
        raise SystemExit(f"another instance holds lock {name!r}; not starting a second one")
    return conn
