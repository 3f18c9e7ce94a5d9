"""Interval settings ("1 minute", "7 days", "1 hour 30 minutes"): the one parser of the
platform, shared by the stream job, the reconciliation and the settings object. It reads
the subset of Spark's interval words that Spark's `window()` and triggers accept too."""

from __future__ import annotations

import re
from datetime import timedelta

UNITS: dict[str, timedelta] = {
    "millisecond": timedelta(milliseconds=1),
    "ms": timedelta(milliseconds=1),
    "second": timedelta(seconds=1),
    "s": timedelta(seconds=1),
    "sec": timedelta(seconds=1),
    "minute": timedelta(minutes=1),
    "min": timedelta(minutes=1),
    "hour": timedelta(hours=1),
    "h": timedelta(hours=1),
    "day": timedelta(days=1),
    "d": timedelta(days=1),
    "week": timedelta(weeks=1),
}
_PART = re.compile(r"(\d+(?:\.\d+)?)\s*([a-z]+)")


def parse_interval(text: str) -> timedelta:
    """ "1 minute", "30 seconds", "1 hour 30 minutes" -> timedelta; a clear error otherwise."""
    cleaned = text.strip().lower()
    parts = _PART.findall(cleaned)
    if not parts or _PART.sub("", cleaned).strip():
        raise ValueError(f"not an interval: {text!r} (expected e.g. '1 minute', '7 days')")
    total = timedelta(0)
    for number, word in parts:
        unit = UNITS.get(word) or UNITS.get(word.removesuffix("s"))
        if unit is None:
            raise ValueError(f"unknown unit {word!r} in interval {text!r}")
        total += float(number) * unit
    if total <= timedelta(0):
        raise ValueError(f"interval {text!r} must be positive")
    return total


def interval_seconds(text: str) -> int:
    """An interval in whole seconds (windows and lateness are whole seconds)."""
    return int(parse_interval(text).total_seconds())
