"""The long-running publisher's pure parts: backoff, summary line, leadership, gaps."""

from __future__ import annotations

from datetime import datetime, timezone

import pytest
from regstream.publish import PublishResult
from regstream.publish_errors import PublishError
from regstream.publish_loop import Backoff, Loop, LoopSettings, Period
from regstream.watermark import Watermark

pytestmark = pytest.mark.pure


def result(before: int, after: int, published: int, captured: datetime | None) -> PublishResult:
    return PublishResult(
        Watermark(before), Watermark(after, captured), published, {}, 0, 0, 0, 0.01
    )


def test_backoff_doubles_to_a_cap_then_fails_past_the_outage_bound() -> None:
    b = Backoff(outage_s=60)
    waits = [b.failed(OSError("down"), now) for now in (0, 1, 2, 3, 4, 5, 6)]
    assert waits == [0.5, 1.0, 2.0, 4.0, 8.0, 10.0, 10.0]
    with pytest.raises(PublishError, match="unreachable for 61s.*REGSTREAM_PUBLISH_OUTAGE_S=60"):
        b.failed(OSError("still down"), 61)


def test_backoff_starts_over_after_a_success() -> None:
    b = Backoff(outage_s=60)
    b.failed(OSError("down"), 0)
    b.failed(OSError("down"), 50)
    b.ok()
    assert b.failed(OSError("down again"), 100) == 0.5  # a new outage, a new clock
    assert b.failed(OSError("down again"), 159) == 1.0


def test_the_summary_line_reports_events_watermark_and_latency() -> None:
    now = datetime(2026, 12, 1, 12, 0, 0, tzinfo=timezone.utc).timestamp()
    p = Period(started=0.0)
    p.add(result(10, 15, 5, datetime(2026, 12, 1, 11, 59, 59, 800000)), now)  # 0.2 s ago
    p.add(result(15, 15, 0, None), now)  # a settling pass: no events, no transaction
    p.add(result(15, 18, 3, datetime(2026, 12, 1, 11, 59, 59, 600000)), now)  # 0.4 s ago
    line = p.line(60.0)
    assert line.startswith("last 60s: published 8 events in 2 transactions")
    assert "watermark 10 -> 18" in line
    assert "p50 0.300s" in line and "max 0.400s" in line


def test_an_idle_period_says_so() -> None:
    assert Period(started=0.0).line(60.0) == "last 60s: idle, watermark unchanged, errors 0"


def test_loop_settings_come_from_the_environment(monkeypatch) -> None:
    monkeypatch.setenv("REGSTREAM_PUBLISH_PROBE_MS", "50")
    monkeypatch.setenv("REGSTREAM_PUBLISH_TXN_MAX_EVENTS", "1000")
    cfg = LoopSettings.current()
    assert cfg.probe_s == 0.05 and cfg.txn_max_events == 1000
    assert cfg.run_s == 3600 and cfg.outage_s == 300


class FakePublisher:
    """The calls Loop.step makes, recorded; `holder` says whether the lock is free."""

    lock = "regstream_publish:t"

    def __init__(self, free: bool = True, gap_ids: int = 0, new: bool = False) -> None:
        self.free, self._gap_ids, self.new = free, gap_ids, new
        self.calls: list[str] = []
        self.out = self

    def lead(self) -> bool:
        self.calls.append("lead")
        return self.free

    def lock_holder(self) -> int:
        return 7

    def fence(self) -> None:
        self.calls.append("fence")

    def gap_ids(self) -> int:
        return self._gap_ids

    def new_rows(self) -> bool:
        return self.new

    def gaps_ready(self) -> bool:
        self.calls.append("gaps_ready")
        return True

    def run(self, *args, **kwargs) -> PublishResult:
        self.calls.append("run")
        return result(10, 10, 0, None)

    def close(self) -> None:
        self.calls.append("close")


def cfg() -> LoopSettings:
    return LoopSettings(0.1, 100, 5.0, 60.0, 60.0, 60.0)


def test_a_standby_never_registers_nor_publishes() -> None:
    pub = FakePublisher(free=False, new=True)
    loop = Loop(cfg(), connect=lambda: pub)  # type: ignore[arg-type,return-value]
    assert loop.step() is None and loop.step() is None
    assert pub.calls == ["lead", "lead"] and not loop.leading


def test_the_leader_registers_once_and_settles_stored_gaps_without_new_rows() -> None:
    pub = FakePublisher(free=True, gap_ids=2, new=False)
    loop = Loop(cfg(), connect=lambda: pub)  # type: ignore[arg-type,return-value]
    assert loop.step() is not None  # the gaps a previous run stored are checked at once
    loop.step()
    assert pub.calls.count("fence") == 1 and pub.calls[:2] == ["lead", "fence"]
    assert "gaps_ready" in pub.calls and pub.calls.count("run") == 1
