"""Interval settings ("1 minute", "7 days", "1 hour 30 minutes"): the one parser of the
platform, shared by the stream job, the reconciliation and the settings object. It reads
the subset of Spark's interval words that Spark's `window()` and triggers accept too."""

from __future__ import annotations

import re
from datetime import timedelta

SECONDS = {"millisecond": 0.001, "second": 1, "minute": 60, "hour": 3600, "day": 86400}
SECONDS["week"] = 7 * SECONDS["day"]
ALIASES = {"ms": "millisecond", "s": "second", "sec": "second", "min": "minute", "h": "hour"}
ALIASES["d"] = "day"
_PART = re.compile(r"(\d+(?:\.\d+)?)\s*([a-z]+)")


def parse_interval(text: str) -> timedelta:
    """ "1 minute", "30 seconds", "1 hour 30 minutes" -> timedelta; a clear error otherwise."""
    cleaned = text.strip().lower()
    parts = _PART.findall(cleaned)
    if not parts or _PART.sub("", cleaned).strip():
        raise ValueError(f"not an interval: {text!r} (expected e.g. '1 minute', '7 days')")
    total = timedelta(0)
    for number, word in parts:
        unit = ALIASES.get(word, word.removesuffix("s"))
        if unit not in SECONDS:
            raise ValueError(f"unknown unit {word!r} in interval {text!r}")
        total += timedelta(seconds=float(number) * SECONDS[unit])
    if total <= timedelta(0):
        raise ValueError(f"interval {text!r} must be positive")
    return total


def interval_seconds(text: str) -> int:
    """An interval in whole seconds (windows and lateness are whole seconds)."""
    return int(parse_interval(text).total_seconds())
