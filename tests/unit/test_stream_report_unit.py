"""The stream job's summary log line per period, and the sink's reconnect after a lost MySQL
connection (its backoff, its bound, the lock taken again); no Spark, no MySQL."""

from __future__ import annotations

from datetime import datetime
from typing import Any

import MySQLdb
import pytest
from regstream.intervals import parse_interval
from regstream.stream import lifecycle as stream_lifecycle
from regstream.stream import report as stream_report
from regstream.stream import sink as stream_sink
from regstream.stream import windows as stream_windows

# ---------------------------------------------------------------- the summary line


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def new_report(every_s: float = 60) -> tuple[stream_report.PeriodReport, list[str], Clock]:
    lines: list[str] = []
    clock = Clock()
    report = stream_report.PeriodReport(every_s, lambda fmt, *a: lines.append(fmt % a), clock)
    return report, lines, clock


WM = datetime(2026, 11, 20, 9, 0)


def add(report: stream_report.PeriodReport, ms: int, rows: int = 3, late: int = 0) -> None:
    report.batch(rows, rows - late, late, 0, ms, WM, '{"t": {"0": 7}}')


def test_one_line_per_period_with_the_batches_figures() -> None:
    report, lines, clock = new_report()
    for i, ms in enumerate([100, 200, 300, 400, 1000]):
        report.progress({"triggerExecution": ms + 50, "addBatch": ms, "walCommit": 9}, 3)
        add(report, ms, late=1 if i == 0 else 0)
        clock.now += 10
    assert lines == []  # 50 s so far
    clock.now += 10
    add(report, 250)
    (line,) = lines
    assert line.startswith("last 60 s: 6 batches, 18 input rows, 17 events counted, 1 too late")
    assert "batch ms p50 250, p95 1000, max 1000" in line
    assert "Spark trigger p50 350" in line and "addBatch 300, walCommit 9" in line
    assert 'watermark 2026-11-20 09:00:00; offsets {"t": {"0": 7}}' in line


def test_an_idle_period_logs_nothing_and_the_next_batch_starts_a_new_one() -> None:
    report, lines, clock = new_report()
    add(report, 100)
    clock.now += 61
    report.maybe_log()  # the idle tick ends the period
    clock.now += 600
    report.maybe_log()
    assert len(lines) == 1
    add(report, 100)
    clock.now += 30
    report.flush()  # the job stops
    assert len(lines) == 2 and lines[1].startswith("last 30 s: 1 batches")


def test_a_trigger_without_rows_is_not_a_batch() -> None:
    report, lines, clock = new_report(every_s=1)
    report.progress({"triggerExecution": 5}, 0)
    clock.now += 2
    report.maybe_log()
    assert lines == []


def test_percentiles_by_nearest_rank() -> None:
    assert stream_report.percentile([], 0.5) == 0
    assert stream_report.percentile([7], 0.95) == 7
    assert stream_report.percentile(list(range(1, 101)), 0.5) == 50
    assert stream_report.percentile(list(range(1, 101)), 0.95) == 95


# ---------------------------------------------------------------- reconnecting


class FakeLock:
    def __init__(self, lost: bool = False) -> None:
        self.ensured = 0
        self.lost = lost

    def ensure(self) -> None:
        self.ensured += 1
        if self.lost:
            raise stream_lifecycle.InstanceLockLost("another instance took lock 'x'")


class Conn:
    def close(self) -> None:
        pass


@pytest.fixture
def mysql(monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    """mysql_connect fails while `down` > 0 (one less each try); sleeps are recorded."""
    state: dict[str, Any] = {"down": 0, "sleeps": [], "now": 0.0}

    def connect(params: dict[str, Any]) -> Conn:
        if state["down"] > 0:
            state["down"] -= 1
            raise MySQLdb.OperationalError(2003, "Can't connect to server")
        return Conn()

    def sleep(s: float) -> None:
        state["sleeps"].append(s)
        state["now"] += s

    monkeypatch.setattr(stream_sink, "mysql_connect", connect)
    monkeypatch.setattr(stream_sink.time, "sleep", sleep)
    monkeypatch.setattr(stream_sink.time, "monotonic", lambda: state["now"])
    return state


def sink_failing(
    mysql: dict[str, Any],
    failures: list[tuple[Exception, int]],
    lock: Any = None,
    reconnect_max_s: float = 120,
) -> tuple[stream_sink.Sink, list[int]]:
    """A sink whose batch raises each of `failures` in turn, then succeeds; with each, the
    server is down for that many connection attempts."""
    sink = stream_sink.Sink(
        {},
        "t",
        stream_windows.Windows.parse("1 minute"),
        parse_interval("7 days"),
        reconnect_max_s=reconnect_max_s,
        lock=lock,
    )
    runs: list[int] = []

    def write(batch: Any, batch_id: int, t0: float) -> None:
        runs.append(batch_id)
        sink._conn()
        if failures:
            exc, mysql["down"] = failures.pop(0)
            raise exc

    sink._write_batch = write  # type: ignore[method-assign]  # the batch without Spark
    return sink, runs


LOST = MySQLdb.OperationalError(2013, "Lost connection to server during query")


def test_a_lost_connection_reruns_the_batch_after_a_growing_pause(mysql, caplog) -> None:
    lock = FakeLock()
    sink, runs = sink_failing(mysql, [(LOST, 3)], lock=lock)  # back at the fourth try
    with caplog.at_level("WARNING"):
        sink.write_batch(None, 7)  # type: ignore[arg-type]
    assert runs == [7, 7]
    assert mysql["sleeps"] == [0.25, 0.5, 1.0, 2.0]
    assert lock.ensured == 1  # the lock, taken again on the new connection
    assert "batch 7: MySQL connection lost" in caplog.text
    assert "batch 7: MySQL reachable again after 3.8 s: running the batch again" in caplog.text


def test_the_sink_gives_up_after_reconnect_max_s(mysql) -> None:
    sink, runs = sink_failing(mysql, [(LOST, 1000)], reconnect_max_s=10)
    with pytest.raises(stream_sink.SinkUnreachable, match="unreachable for 10 s"):
        sink.write_batch(None, 3)  # type: ignore[arg-type]
    assert runs == [3]
    assert sum(mysql["sleeps"]) == pytest.approx(10)
    assert max(mysql["sleeps"]) == stream_sink.RECONNECT_MAX_DELAY_S


def test_a_failing_statement_is_not_retried(mysql) -> None:
    sink, runs = sink_failing(mysql, [(MySQLdb.ProgrammingError(1064, "syntax"), 0)])
    with pytest.raises(MySQLdb.ProgrammingError):
        sink.write_batch(None, 1)  # type: ignore[arg-type]
    assert runs == [1] and mysql["sleeps"] == []


def test_a_lock_another_instance_took_meanwhile_stops_the_job(mysql) -> None:
    sink, runs = sink_failing(mysql, [(LOST, 0)], lock=FakeLock(lost=True))
    with pytest.raises(stream_lifecycle.InstanceLockLost):
        sink.write_batch(None, 1)  # type: ignore[arg-type]
    assert runs == [1]  # never written again


def test_what_counts_as_a_lost_connection() -> None:
    assert stream_sink.connection_lost(LOST)
    assert stream_sink.connection_lost(MySQLdb.OperationalError(2006, "gone away"))
    assert stream_sink.connection_lost(MySQLdb.InterfaceError(0, ""))
    assert not stream_sink.connection_lost(MySQLdb.OperationalError(1205, "lock wait timeout"))
