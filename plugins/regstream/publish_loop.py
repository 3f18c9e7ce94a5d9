"""The long-running publisher: one Airflow task that loops on the watermark gate.

Every `REGSTREAM_PUBLISH_PROBE_MS` (default 100 ms) it asks MySQL, with two primary-key
lookups, whether rows exist above the watermark; idle, it sends nothing to Kafka. New rows go
out as `publish.publish_events` transactions (the exactly-once protocol and the gap handling
of one run), each bounded by `REGSTREAM_PUBLISH_TXN_MAX_EVENTS` and `_TXN_MAX_S`, so that a
catch-up is many short transactions and Kafka's transaction timeout can be short. While the
watermark has gaps, the full gate (rows visible in them, transactions ended) runs once a
second, so gaps of late commits settle without any other run.

Bounded logs and runs: the task ends cleanly after `REGSTREAM_PUBLISH_RUN_S` (default one
hour: 24 Airflow runs a day) and the `@continuous` DAG starts the next at once. Its log holds
one summary line per `REGSTREAM_PUBLISH_SUMMARY_S` (events, transactions, watermark, capture ->
acknowledged latency p50/p95), plus one line per gap decision and per error.

Faults: a Kafka or MySQL error drops the connections and retries with a doubling backoff
(0.5 s up to 10 s), logged once per attempt, inside the same run; after
`REGSTREAM_PUBLISH_OUTAGE_S` of failures the task fails, and Airflow's retries (with
exponential backoff) take over. A new publisher registers its transactional id first, which
aborts a dead one's open transaction at once.
"""

from __future__ import annotations

import logging
import os
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timezone

from regstream import settings
from regstream.publish import Acked, HookedPublisher, PublishResult
from regstream.publish_errors import PublisherBusy, PublisherFenced, PublishError

log = logging.getLogger(__name__)

GAP_CHECK_S = 1.0  # the full gate, while gaps are pending
STANDBY_LOG_S = 60.0
BACKOFF_FIRST_S = 0.5
BACKOFF_MAX_S = 10.0


@dataclass(frozen=True)
class LoopSettings:
    probe_s: float
    txn_max_events: int
    txn_max_s: float
    run_s: float
    summary_s: float
    outage_s: float

    @classmethod
    def current(cls) -> LoopSettings:
        s = settings.current()
        return cls(
            s.publish_probe_ms / 1000,
            s.publish_txn_max_events,
            float(s.publish_txn_max_s),
            float(s.publish_run_s),
            float(s.publish_summary_s),
            float(s.publish_outage_s),
        )


@dataclass
class Period:
    """What one summary line reports."""

    started: float
    first_watermark: int | None = None
    watermark: int | None = None
    events: int = 0
    transactions: int = 0
    errors: int = 0
    latencies: list[float] = field(default_factory=list)
    gaps_pending: int = 0

    def add(self, r: PublishResult, now: float) -> None:
        if self.first_watermark is None:
            self.first_watermark = r.before.last_event_id
        self.watermark = r.after.last_event_id
        self.gaps_pending = sum(g.size for g in r.after.gaps)
        if r.published:
            self.events += r.published
            self.transactions += 1
            if r.after.last_captured_at is not None:
                self.latencies.append(now - _epoch(r.after.last_captured_at))

    def line(self, now: float, leading: bool = True) -> str:
        span = f"last {now - self.started:.0f}s"
        if not leading:
            return f"{span}: standby, another publisher holds the lock; errors {self.errors}"
        if not self.transactions:
            mark = "unchanged" if self.watermark is None else self.watermark
            return f"{span}: idle, watermark {mark}, errors {self.errors}"
        q = _quantiles(self.latencies)
        return (
            f"{span}: published {self.events} events in {self.transactions} transactions; "
            f"watermark {self.first_watermark} -> {self.watermark}; gaps pending "
            f"{self.gaps_pending} ids; capture->acked p50 {q[0]:.3f}s p95 {q[1]:.3f}s "
            f"max {q[2]:.3f}s; errors {self.errors}"
        )


def _epoch(captured: datetime) -> float:
    """captured_at is UTC (the session's time zone), naive."""
    return captured.replace(tzinfo=timezone.utc).timestamp()


def _quantiles(xs: list[float]) -> tuple[float, float, float]:
    if not xs:
        return (0.0, 0.0, 0.0)
    if len(xs) == 1:
        return (xs[0], xs[0], xs[0])
    cuts = statistics.quantiles(xs, n=20, method="inclusive")
    return (statistics.median(xs), cuts[18], max(xs))


class Backoff:
    """Doubling waits between reconnects; the outage clock starts at the first failure."""

    def __init__(self, outage_s: float) -> None:
        self.outage_s = outage_s
        self.since: float | None = None
        self.wait = BACKOFF_FIRST_S

    def failed(self, exc: BaseException, now: float) -> float:
        """The wait before the next attempt, or PublishError once the outage is too long."""
        self.since = now if self.since is None else self.since
        down = now - self.since
        if down > self.outage_s:
            raise PublishError(
                f"Kafka or MySQL unreachable for {down:.0f}s (> REGSTREAM_PUBLISH_OUTAGE_S="
                f"{self.outage_s:.0f}); last error: {exc}. The watermark is where the last "
                "commit left it; Airflow retries this task with backoff"
            ) from exc
        wait, self.wait = self.wait, min(self.wait * 2, BACKOFF_MAX_S)
        log.warning(
            "publish failed (%s: %s); new connections in %.1fs (failing for %.0fs of %.0fs)",
            type(exc).__name__,
            exc,
            wait,
            down,
            self.outage_s,
        )
        return wait

    def ok(self) -> None:
        if self.since is not None:
            log.info("publishing again after %.0fs of failures", time.monotonic() - self.since)
        self.since, self.wait = None, BACKOFF_FIRST_S


def recoverable() -> tuple[type[BaseException], ...]:
    """Errors of a service that went away; anything else (a missing table, a bad setting)
    fails the task at once."""
    import MySQLdb

    from regstream.db import DatabaseUnavailable

    return (PublishError, PublisherBusy, DatabaseUnavailable, MySQLdb.OperationalError)


@dataclass
class Loop:
    """One publisher: it publishes only while it holds the topic's MySQL lock, taken for the
    life of its connection. A second one (a zombie Airflow thinks dead, or a new try beside
    it) waits as a standby and takes over when the lock is free: it never registers its
    transactional id while the other publishes, so the two cannot fence each other in turn."""

    cfg: LoopSettings
    connect: Callable[[], HookedPublisher] = HookedPublisher
    on_acked: Callable[[Acked], None] | None = None
    pub: HookedPublisher | None = None
    leading: bool = False
    gaps: int = 0  # ids pending in the watermark's gaps after the last transaction
    gap_check_at: float = 0.0
    standby_logged_at: float = float("-inf")

    def step(self) -> PublishResult | None:
        """Publish one transaction if the gate says so; None when idle or standing by."""
        if self.pub is None:
            self.pub = self.connect()
            self.leading = False
        if not self.leading and not self._lead(self.pub):
            return None
        now = time.monotonic()
        work = self.pub.new_rows()
        if not work and self.gaps and now >= self.gap_check_at:
            self.gap_check_at = now + GAP_CHECK_S
            work = self.pub.gaps_ready()
        if not work:
            return None
        r = self.pub.run(
            self.cfg.txn_max_events, self.on_acked, max_seconds=self.cfg.txn_max_s, quiet=True
        )
        self._log_new_gaps(r)
        self.gaps = sum(g.size for g in r.after.gaps)
        return r

    def _lead(self, pub: HookedPublisher) -> bool:
        if not pub.lead():
            now = time.monotonic()
            if now - self.standby_logged_at >= STANDBY_LOG_S:
                self.standby_logged_at = now
                log.info("standby: MySQL connection %s holds lock %s (another publisher of "
                         "the topic); taking over when it is free", pub.lock_holder(), pub.lock)  # fmt: skip
            return False
        # Register only now: an older publisher's open transaction is aborted, and it cannot
        # commit again (it lost the lock: its connection is gone).
        pub.out.fence()
        self.gaps = pub.gap_ids()  # gaps stored by a previous run settle without new rows
        self.leading = True
        log.info("leading: holding lock %s; %d ids in the watermark's gaps", pub.lock, self.gaps)
        return True

    def _log_new_gaps(self, r: PublishResult) -> None:
        known = [(g.first, g.last) for g in r.before.gaps]
        for g in r.after.gaps:
            if not any(a <= g.first and g.last <= b for a, b in known):
                log.info("gap %d-%d: ids not visible yet, waiting on transactions %s",
                         g.first, g.last, list(g.trx))  # fmt: skip

    def drop(self) -> None:
        """Close the connections (which frees the lock)."""
        if self.pub is not None:
            try:
                self.pub.close()
            except Exception:  # noqa: BLE001 - the connection is already gone
                pass
        self.pub = None
        self.leading = False


def run_loop(
    cfg: LoopSettings,
    connect: Callable[[], HookedPublisher] = HookedPublisher,
    stop: Callable[[], bool] = lambda: False,
    on_acked: Callable[[Acked], None] | None = None,
) -> dict[str, int]:
    """Publish until `cfg.run_s` has passed or `stop()`; totals of the run."""
    t0 = time.monotonic()
    loop = Loop(cfg, connect, on_acked)
    backoff = Backoff(cfg.outage_s)
    period = Period(t0)
    totals = {"events": 0, "transactions": 0, "errors": 0}
    log.info(
        "publishing continuously for %.0fs: probe every %.0f ms, at most %d events or %.0fs "
        "per transaction, a summary every %.0fs",
        cfg.run_s, cfg.probe_s * 1000, cfg.txn_max_events, cfg.txn_max_s, cfg.summary_s,
    )  # fmt: skip
    try:
        while not stop() and time.monotonic() - t0 < cfg.run_s:
            try:
                r = loop.step()
                backoff.ok()
            except PublisherFenced:
                log.error("a newer publisher of the topic took over: this one stops")
                raise
            except recoverable() as exc:
                loop.drop()
                period.errors += 1
                totals["errors"] += 1
                time.sleep(backoff.failed(exc, time.monotonic()))
                continue
            if r is None:
                time.sleep(cfg.probe_s)
            else:
                period.add(r, time.time())
                totals["events"] += r.published
                totals["transactions"] += 1 if r.published else 0
            period = _maybe_summarize(period, cfg.summary_s, loop.leading)
    finally:
        log.info("%s", period.line(time.monotonic(), loop.leading))
        loop.drop()
    log.info("run ends after %.0fs: %s", time.monotonic() - t0, totals)
    return totals


def _maybe_summarize(period: Period, every: float, leading: bool) -> Period:
    now = time.monotonic()
    if now - period.started < every:
        return period
    log.info("%s", period.line(now, leading))
    return Period(now, period.watermark, period.watermark, gaps_pending=period.gaps_pending)


def fault_hook() -> Callable[[Acked], None] | None:
    """Tests only: REGSTREAM_PUBLISH_FAULT=kill-at-ack:<n> SIGKILLs this process once Kafka
    acknowledged every message of its n-th transaction, before that transaction commits."""
    raw = os.environ.get("REGSTREAM_PUBLISH_FAULT", "")
    if not raw.startswith("kill-at-ack:"):
        return None
    import signal

    left = [int(raw.split(":", 1)[1])]

    def hook(acked: Acked) -> None:
        if acked.decision.published:
            left[0] -= 1
        if left[0] <= 0:
            log.warning("fault injected: SIGKILL at the acknowledgement of %s", acked.offsets)
            for handler in logging.getLogger().handlers:
                handler.flush()
            os.kill(os.getpid(), signal.SIGKILL)

    return hook


def stop_on_sigterm() -> Callable[[], bool]:
    """SIGTERM (Airflow stopping the task, 5 s before its SIGKILL) ends the loop between two
    transactions, so none is left open to hold readers back."""
    import signal

    asked: list[int] = []

    def handler(signum: int, frame: object) -> None:
        log.info("SIGTERM: stopping after the current transaction")
        asked.append(signum)

    signal.signal(signal.SIGTERM, handler)
    return lambda: bool(asked)


def run_task() -> dict[str, int]:
    """The Airflow task: one bounded run of the loop, with the task's connections."""
    return run_loop(LoopSettings.current(), stop=stop_on_sigterm(), on_acked=fault_hook())
