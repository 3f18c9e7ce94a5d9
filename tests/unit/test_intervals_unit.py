"""The one interval parser: the stream job, the reconciliation and the settings read intervals
the same way (a setting the reconciliation accepted once crashed the job)."""

from __future__ import annotations

from datetime import timedelta

import pytest
from regstream.intervals import interval_seconds, parse_interval


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("1 minute", timedelta(minutes=1)),
        ("1 hour 30 minutes", timedelta(minutes=90)),
        ("500 milliseconds", timedelta(milliseconds=500)),
        ("90 s", timedelta(seconds=90)),
        ("2 weeks", timedelta(days=14)),
        ("1.5 seconds", timedelta(seconds=1.5)),
    ],
)
def test_intervals_in_spark_words(text: str, expected: timedelta) -> None:
    assert parse_interval(text) == expected


def test_whole_seconds_for_windows_and_lateness() -> None:
    assert interval_seconds("1 hour 30 minutes") == 5400
    assert interval_seconds("7 days") == 604800


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "not an interval"),
        ("soon", "not an interval"),
        ("1 minute and then", "not an interval"),
        ("5 fortnights", "unknown unit 'fortnights'"),
        ("0 seconds", "must be positive"),
    ],
)
def test_unreadable_intervals_say_what_to_write(text: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        parse_interval(text)
