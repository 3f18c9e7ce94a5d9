"""The publisher's watermark and its gaps, as a pure state machine: no I/O, no clock.

Why not "event_id > last published id" (Kafka Connect's incrementing mode): an auto-increment
id is taken at INSERT time but becomes visible at COMMIT; a transaction holding id 7 that
commits after id 8 was published would be skipped forever. Connect answers with a fixed delay
(`timestamp.delay.interval.ms`), a guess about transaction length.

Here the watermark is exact instead: `last_event_id` (H) plus the *gaps*, ids below H not
seen yet. A gap is an insert still in flight or a rollback. Each gap records the InnoDB
transactions open just after the read that found it: the transaction that took a missing id
was open then, or had already ended. Once every one of those transactions has ended, the gap
is final: a read after that sees its row if it committed (published), and an id still missing
then was rolled back and will never appear (dropped). A transaction that stays open holds only
its own gap. `max_wait_s` > 0 (REGSTREAM_GAP_MAX_WAIT_S) bounds the wait; 0 waits forever.

One run, step by step (the caller does the I/O in between):

    run = Run(state, open_trx=<INNODB_TRX before the read>, limit=...)
    run.plan                 # what to read and publish: ids above H and inside the gaps
    run.see(ids)             # every id that read returned, ascending, batch by batch
    decision = run.decide(open_trx=<INNODB_TRX after the read>, now=..., max_wait_s=...,
                          captured_at=<captured_at of the new top>)
    # produce, flush, require every acknowledgement, and only then store decision.state

Nothing here touches a database or Kafka, so every crash point is a unit test.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence, Set
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

Ranges = tuple[tuple[int, int], ...]


@dataclass(frozen=True)
class Gap:
    """Ids first..last (inclusive) below the watermark, not seen yet."""

    first: int
    last: int
    trx: tuple[str, ...] = ()  # InnoDB transactions open just after the read that found it
    since: float = 0.0  # when it was found (epoch seconds)

    @property
    def size(self) -> int:
        return self.last - self.first + 1

    def to_json(self) -> dict[str, Any]:
        return {"from": self.first, "to": self.last, "trx": list(self.trx), "since": self.since}

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> Gap:
        return cls(
            int(d["from"]),
            int(d["to"]),
            tuple(str(t) for t in d.get("trx", [])),
            float(d.get("since", 0)),
        )


def gaps_to_json(gaps: Iterable[Gap]) -> str:
    """`latest_cdc_timestamp.pending_gaps`: [{"from", "to", "trx", "since"}, ...]."""
    return json.dumps([g.to_json() for g in gaps])


def gaps_from_json(text: str | bytes | None) -> tuple[Gap, ...]:
    return tuple(Gap.from_json(d) for d in json.loads(text or "[]"))


@dataclass(frozen=True)
class Watermark:
    last_event_id: int = 0
    last_captured_at: Any = None
    gaps: tuple[Gap, ...] = ()
    events_published: int = 0


def watermark_to_json(w: Watermark) -> bytes:
    """The publisher state record stored in Kafka with the events it covers."""
    captured = w.last_captured_at
    return json.dumps(
        {
            "last_event_id": w.last_event_id,
            "last_captured_at": captured.isoformat() if captured is not None else None,
            "gaps": [g.to_json() for g in w.gaps],
            "events_published": w.events_published,
        }
    ).encode()


def watermark_from_json(raw: bytes | str) -> Watermark:
    d = json.loads(raw)
    captured = d.get("last_captured_at")
    return Watermark(
        int(d["last_event_id"]),
        datetime.fromisoformat(captured) if captured else None,
        tuple(Gap.from_json(g) for g in d.get("gaps", [])),
        int(d.get("events_published", 0)),
    )


@dataclass(frozen=True)
class ReadPlan:
    """Which rows to read and publish: every id above `above` and every id inside `gaps`,
    ascending, at most `limit` rows."""

    above: int
    gaps: Ranges
    limit: int


@dataclass(frozen=True)
class GivenUp:
    gap: Gap
    waited_s: float
    reason: str


@dataclass(frozen=True)
class Decision:
    """What to store once Kafka acknowledged every row read, and why."""

    state: Watermark
    published: int
    rolled_back: Ranges  # ids proven never committed
    given_up: tuple[GivenUp, ...]
    changed: bool  # False: the stored row is already right, skip the write

    @property
    def rolled_back_ids(self) -> int:
        return sum(b - a + 1 for a, b in self.rolled_back)

    @property
    def given_up_ids(self) -> int:
        return sum(g.gap.size for g in self.given_up)


def subtract(ranges: Iterable[tuple[int, int]], ids: Iterable[int]) -> list[tuple[int, int]]:
    """Remove ids from inclusive ranges."""
    out: list[tuple[int, int]] = []
    ids = sorted(ids)
    j = 0
    for first, last in ranges:
        cur = first
        while j < len(ids) and ids[j] < first:
            j += 1
        while j < len(ids) and ids[j] <= last:
            if ids[j] > cur:
                out.append((cur, ids[j] - 1))
            cur = ids[j] + 1
            j += 1
        if cur <= last:
            out.append((cur, last))
    return out


def ready_gaps(gaps: Iterable[Gap], open_trx: Set[str]) -> list[Gap]:
    """Gaps none of whose transactions is still open: a read now settles them."""
    return [g for g in gaps if open_trx.isdisjoint(g.trx)]


@dataclass
class Run:
    """One publish run over `state`; `open_trx` are the InnoDB transactions open before the
    read. A gap is settled by this run only if all its transactions had ended before it."""

    state: Watermark
    open_trx: Set[str]
    limit: int
    top: int = field(init=False)
    rows: int = field(init=False, default=0)
    _settled: tuple[bool, ...] = field(init=False)
    _seen_in_gaps: list[int] = field(init=False, default_factory=list)
    _new_gaps: list[tuple[int, int]] = field(init=False, default_factory=list)
    _last_seen: int = field(init=False, default=0)
    _cut: bool = field(init=False, default=False)

    def __post_init__(self) -> None:
        self.top = self.state.last_event_id
        self._settled = tuple(self.open_trx.isdisjoint(g.trx) for g in self.state.gaps)

    @property
    def plan(self) -> ReadPlan:
        gaps = tuple((g.first, g.last) for g in self.state.gaps)
        return ReadPlan(self.state.last_event_id, gaps, self.limit)

    @property
    def found_new_gaps(self) -> bool:
        return bool(self._new_gaps)

    def cut(self) -> None:
        """The caller stopped reading before the plan's end (its time bound): like a read
        cut by the limit, it looked only at ids up to the last one it returned."""
        self._cut = True

    def see(self, ids: Sequence[int]) -> None:
        """Ids the plan's read returned, ascending (called batch by batch)."""
        if not ids:
            return
        self.rows += len(ids)
        self._last_seen = ids[-1]
        h = self.state.last_event_id
        if ids[0] > h and ids[-1] - ids[0] == len(ids) - 1:  # the common case: a solid run
            if ids[0] > self.top + 1:
                self._new_gaps.append((self.top + 1, ids[0] - 1))
            self.top = ids[-1]
            return
        for event_id in ids:
            if event_id <= h:
                self._seen_in_gaps.append(event_id)
                continue
            if event_id > self.top + 1:
                self._new_gaps.append((self.top + 1, event_id - 1))
            self.top = event_id

    def decide(
        self, open_trx: Set[str], now: float, max_wait_s: float, captured_at: Any = None
    ) -> Decision:
        """`open_trx`: transactions open *after* the read; whoever holds a new gap's id is
        among them or has already ended. `captured_at`: of the new top row (ignored when the
        top did not move)."""
        gaps: list[Gap] = []
        rolled_back: list[tuple[int, int]] = []
        # A read cut by the limit looked only at ids up to the last one it returned: the
        # absence of a higher id proves nothing yet.
        unread_above = self._last_seen if self.rows >= self.limit or self._cut else None
        for gap, settled in zip(self.state.gaps, self._settled, strict=True):
            still = tuple(sorted(t for t in gap.trx if t in open_trx))
            for a, b in subtract([(gap.first, gap.last)], self._seen_in_gaps):
                if settled and unread_above is not None and b > unread_above:
                    if a <= unread_above:
                        rolled_back.append((a, unread_above))
                        a = unread_above + 1
                    gaps.append(Gap(a, b, still, gap.since))
                elif settled:
                    rolled_back.append((a, b))
                else:
                    gaps.append(Gap(a, b, still, gap.since))
        trx_after = tuple(sorted(open_trx))
        gaps += [Gap(a, b, trx_after, now) for a, b in self._new_gaps]
        gaps, given_up = _give_up(gaps, now, max_wait_s)
        before = self.state
        state = Watermark(
            self.top,
            captured_at if self.top != before.last_event_id else before.last_captured_at,
            tuple(gaps),
            before.events_published + self.rows,
        )
        changed = bool(
            self.rows or state.last_event_id != before.last_event_id or state.gaps != before.gaps
        )
        return Decision(state, self.rows, tuple(rolled_back), given_up, changed)


def _give_up(
    gaps: list[Gap], now: float, max_wait_s: float
) -> tuple[list[Gap], tuple[GivenUp, ...]]:
    if max_wait_s <= 0:
        return gaps, ()
    kept: list[Gap] = []
    given_up: list[GivenUp] = []
    for g in gaps:
        waited = now - g.since
        if waited > max_wait_s:
            reason = (
                f"ids {g.first}-{g.last} waited {waited:.0f}s > REGSTREAM_GAP_MAX_WAIT_S="
                f"{max_wait_s:.0f} on transactions {list(g.trx)} still open; rows that "
                "commit later are not published"
            )
            given_up.append(GivenUp(g, waited, reason))
        else:
            kept.append(g)
    return kept, tuple(given_up)


def gate(
    state: Watermark,
    new_events: int,
    newest: int | None,
    visible_in_gaps: int = 0,
    open_trx: Set[str] = frozenset(),
) -> tuple[bool, str]:
    """Is there anything to publish or to settle? `visible_in_gaps` and `open_trx` matter
    only when nothing is new above the watermark and gaps are pending."""
    h = state.last_event_id
    if new_events:
        return True, f"{new_events} new events above watermark {h} (newest {newest})"
    if not state.gaps:
        return False, f"nothing new above watermark {h}"
    settled = ready_gaps(state.gaps, open_trx)
    if visible_in_gaps or settled:
        return True, (
            f"{visible_in_gaps} late-committed events in gaps, {len(settled)} gaps ready to settle"
        )
    return False, (
        f"nothing new above watermark {h}; {len(state.gaps)} gaps wait on open transactions"
    )


__all__ = [
    "Decision",
    "Gap",
    "GivenUp",
    "ReadPlan",
    "Run",
    "Watermark",
    "gate",
    "gaps_from_json",
    "gaps_to_json",
    "ready_gaps",
    "subtract",
    "watermark_from_json",
    "watermark_to_json",
]
