"""The live view's health cards: colours by threshold, verdicts in words, idle is not late."""

from __future__ import annotations

import pytest
from regstream.monitoring import Lag, fmt_duration, grade, health_cards


def lag(**kw: float) -> Lag:
    base = dict.fromkeys(Lag.__dataclass_fields__, 0)
    base.update(kw)
    return Lag(**base)


def cards(lag_: Lag, recon: dict | None = None, age: float | None = None, late: int = 0) -> dict:
    out = health_cards(lag_, recon, age, {"late": late, "quarantined": 0}, (60, 60), "7 days")
    return {c.key: c for c in out}


RUN = {"windows_checked": 40, "windows_matched": 40, "windows_differing": 0}


@pytest.mark.parametrize(
    ("value", "status"), [(0, "ok"), (30, "ok"), (30.1, "warn"), (60, "warn"), (61, "bad")]
)
def test_delays_are_green_to_half_the_bound_amber_to_it_red_past_it(value, status) -> None:
    assert grade(value, 60) == status


def test_an_idle_pipeline_is_healthy_and_says_idle() -> None:
    c = cards(lag())
    assert c["publish lag"].status == c["stream lag"].status == "ok"
    assert c["publish lag"].verdict.startswith("Idle") and c["stream lag"].value == "0.0 s"
    assert "red past it" in c["publish lag"].rule


def test_a_stalled_stream_is_red() -> None:
    c = cards(lag(stream_delay_s=95, backlog_events=0))
    assert c["stream lag"].status == "bad" and c["stream lag"].verdict == "Problem"
    assert c["stream lag"].value == "95 s" and c["publish lag"].status == "ok"


def test_reconciliation_card_red_on_a_difference_amber_when_stale_or_missing() -> None:
    assert cards(lag(), RUN, 60)["reconciliation"].status == "ok"
    assert cards(lag(), RUN, 60)["reconciliation"].value == "40 match"
    bad = cards(lag(), {**RUN, "windows_matched": 38, "windows_differing": 2}, 60)
    assert bad["reconciliation"].status == "bad" and "2 of 40 windows differ" in (
        bad["reconciliation"].detail
    )
    assert cards(lag(), RUN, 3600)["reconciliation"].status == "warn"
    assert cards(lag())["reconciliation"].verdict == "No check yet"


def test_recent_too_late_events_ask_for_a_look() -> None:
    c = cards(lag(late_events_total=3), late=1)
    assert c["too-late events"].status == "warn" and c["too-late events"].value == "3"
    assert "7 days" in c["too-late events"].detail
    assert cards(lag(late_events_total=3))["too-late events"].status == "ok"


def test_durations_read_like_a_person_writes_them() -> None:
    assert [fmt_duration(s) for s in (1.25, 42, 312, 9000, 200000)] == [
        "1.2 s",
        "42 s",
        "5.2 min",
        "2.5 h",
        "2.3 d",
    ]


def test_the_page_offers_the_csv_of_what_it_shows() -> None:
    from regstream import liveview

    html = liveview.PAGE.read_text()
    js = (liveview.STATIC / "liveview.js").read_text()
    assert 'id="csv"' in html and "Download CSV" in html
    # the link follows the window and range selectors, as the table does
    assert 'api/counts.csv?window=${$("window").value}&hours=${$("hours").value}' in js
    assert "api/counts?window=${win}&hours=${hours}" in js
