"""The event trigger's firing rule: no storm of runs, nothing left unpublished."""

from __future__ import annotations

from regstream.triggers import should_fire


def test_fires_when_rows_above_the_watermark_appear() -> None:
    assert should_fire(11, 10, None, 0.0, 100.0, 30.0)
    assert not should_fire(10, 10, None, 0.0, 100.0, 30.0)


def test_one_outstanding_run_at_a_time() -> None:
    # fired for id 20; the run has not published yet and more rows arrive: wait
    assert not should_fire(25, 10, 20, 100.0, 101.0, 30.0)
    # that run published up to 20: the rows 21-25 start the next run
    assert should_fire(25, 20, 20, 100.0, 102.0, 30.0)


def test_fires_again_when_the_run_it_started_never_published() -> None:
    assert not should_fire(25, 10, 20, 100.0, 129.9, 30.0)
    assert should_fire(25, 10, 20, 100.0, 130.0, 30.0)
