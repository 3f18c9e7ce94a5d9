"""The watermark state machine (regstream.watermark), with no database and no Kafka.

`World` below stands in for InnoDB: an id is taken at INSERT time, becomes visible at COMMIT,
and a transaction is listed (INNODB_TRX) from its first insert until it ends.
"""

from __future__ import annotations

import json
import random
from collections import Counter
from collections.abc import Callable, Set

import pytest
from regstream.watermark import (
    Gap,
    ReadPlan,
    Run,
    Watermark,
    gaps_from_json,
    gaps_to_json,
    gate,
    subtract,
)


def one_run(
    state: Watermark,
    ids: list[int],
    before: Set[str] = frozenset(),
    after: Set[str] = frozenset(),
    now: float = 1000.0,
    max_wait_s: float = 0,
    limit: int = 1000,
):
    run = Run(state, frozenset(before), limit)
    for i in range(0, len(ids), 2):  # batch by batch, as the publisher reads
        run.see(ids[i : i + 2])
    return run.decide(frozenset(after), now, max_wait_s, captured_at=f"captured {run.top}")


def test_plan_reads_above_the_watermark_and_inside_every_gap() -> None:
    state = Watermark(9, None, (Gap(3, 4, ("7",), 1.0), Gap(7, 7, (), 2.0)))
    assert Run(state, frozenset(), 500).plan == ReadPlan(9, ((3, 4), (7, 7)), 500)


def test_new_gaps_record_the_transactions_open_after_the_read() -> None:
    d = one_run(Watermark(), [1, 2, 5, 6, 9], before={"70"}, after={"70", "80"}, now=100.0)
    assert d.state.last_event_id == 9 and d.state.last_captured_at == "captured 9"
    assert d.state.gaps == (Gap(3, 4, ("70", "80"), 100.0), Gap(7, 8, ("70", "80"), 100.0))
    assert d.published == 5 and d.state.events_published == 5
    assert d.rolled_back == () and d.given_up == () and d.changed


def test_late_commit_inside_a_gap_is_published_and_the_rest_settles() -> None:
    # Gap 3-4 waits on transaction a, gap 7-8 on b. a has ended, b is still open.
    state = Watermark(9, "c9", (Gap(3, 4, ("a",), 50.0), Gap(7, 8, ("b",), 60.0)), 7)
    # The read finds 4 (a committed it late), 8 (someone committed it) and a new row 10.
    d = one_run(state, [4, 8, 10], before={"b"}, after={"b"})
    assert d.published == 3 and d.state.events_published == 10
    assert d.rolled_back == ((3, 3),)  # a ended before the read and 3 is not there
    assert d.state.gaps == (Gap(7, 7, ("b",), 60.0),)  # b may still commit 7
    assert d.state.last_event_id == 10


def test_rollback_is_settled_only_once_every_transaction_of_its_gap_ended() -> None:
    state = Watermark(9, "c9", (Gap(5, 5, ("a", "b"), 50.0),))
    d = one_run(state, [], before={"b"}, after={"b"})
    assert d.rolled_back == () and d.state.gaps == (Gap(5, 5, ("b",), 50.0),)
    d = one_run(d.state, [], before=set(), after=set())
    assert d.rolled_back == ((5, 5),) and d.rolled_back_ids == 1
    assert d.state.gaps == () and d.changed and d.state.last_event_id == 9


def test_a_transaction_ending_during_the_read_only_narrows_its_gap() -> None:
    # Open before the read (so not settled by it), ended before the after-query.
    state = Watermark(9, "c9", (Gap(5, 5, ("a",), 50.0),))
    d = one_run(state, [], before={"a"}, after=set())
    assert d.rolled_back == () and d.state.gaps == (Gap(5, 5, (), 50.0),)
    d = one_run(d.state, [5])  # the next read settles it: a committed id 5
    assert d.published == 1 and d.state.gaps == () and d.rolled_back == ()


def test_an_open_transaction_holds_back_only_its_own_gap() -> None:
    state = Watermark(9, "c9", (Gap(2, 2, ("a",), 50.0), Gap(4, 4, ("b",), 50.0)))
    d = one_run(state, [10, 11], before={"a"}, after={"a"})
    assert d.rolled_back == ((4, 4),)
    assert d.state.gaps == (Gap(2, 2, ("a",), 50.0),)
    assert d.state.last_event_id == 11 and d.published == 2


def test_gaps_are_given_up_only_past_the_bound_with_a_reason() -> None:
    state = Watermark(9, "c9", (Gap(3, 4, ("a",), 100.0),))
    kept = one_run(state, [], before={"a"}, after={"a"}, now=130.0, max_wait_s=30)
    assert kept.given_up == () and kept.state.gaps == state.gaps and not kept.changed
    d = one_run(state, [12], before={"a"}, after={"a"}, now=131.0, max_wait_s=30)
    assert d.given_up_ids == 2 and d.state.gaps == (Gap(10, 11, ("a",), 131.0),)
    (given_up,) = d.given_up
    assert given_up.gap == Gap(3, 4, ("a",), 100.0) and given_up.waited_s == 31.0
    for words in ("ids 3-4", "31s", "REGSTREAM_GAP_MAX_WAIT_S=30", "['a']", "not published"):
        assert words in given_up.reason
    never = one_run(state, [], before={"a"}, after={"a"}, now=1e12, max_wait_s=0)
    assert never.given_up == () and never.state.gaps == state.gaps


def test_a_read_cut_by_the_limit_settles_only_the_ids_it_read() -> None:
    state = Watermark(100, "c100", (Gap(2, 3, (), 1.0), Gap(50, 50, (), 1.0)))
    d = one_run(state, [3], limit=1)  # the limit stopped the read at id 3
    assert d.rolled_back == ((2, 2),)
    assert d.state.gaps == (Gap(50, 50, (), 1.0),)  # not read: not proven rolled back
    assert d.state.last_event_id == 100


def test_a_read_cut_by_time_settles_only_the_ids_it_read() -> None:
    state = Watermark(100, "c100", (Gap(2, 3, (), 1.0), Gap(50, 50, (), 1.0)))
    run = Run(state, frozenset(), 1000)
    run.see([3])
    run.cut()  # the publisher's time bound stopped the read after this batch
    d = run.decide(frozenset(), 1000.0, 0, captured_at="c3")
    assert d.rolled_back == ((2, 2),)
    assert d.state.gaps == (Gap(50, 50, (), 1.0),)  # above id 3: not read yet
    assert d.state.last_event_id == 100


def test_nothing_to_do_needs_no_write() -> None:
    state = Watermark(9, "c9", (Gap(5, 5, ("a",), 50.0),), 9)
    d = one_run(state, [], before={"a"}, after={"a"})
    assert not d.changed and d.state == state


def test_stored_gaps_stay_readable_and_are_written_in_the_same_format() -> None:
    # As written by the publisher before this module existed (json.dumps of to_json()).
    stored = '[{"from": 3, "to": 4, "trx": ["421", "422"], "since": 1700000000.5}]'
    gaps = gaps_from_json(stored)
    assert gaps == (Gap(3, 4, ("421", "422"), 1700000000.5),)
    assert gaps_to_json(gaps) == stored
    assert gaps_from_json('[{"from": 7, "to": 7}]') == (Gap(7, 7, (), 0.0),)
    assert gaps_from_json(None) == () and gaps_from_json("[]") == ()
    assert json.loads(gaps_to_json(())) == []


def test_subtract_splits_ranges() -> None:
    assert subtract([(1, 10)], [1, 5, 10]) == [(2, 4), (6, 9)]
    assert subtract([(1, 3), (7, 9)], [2, 8, 100]) == [(1, 1), (3, 3), (7, 7), (9, 9)]
    assert subtract([(4, 4)], [4]) == [] and subtract([(4, 6)], []) == [(4, 6)]


def test_gate() -> None:
    assert gate(Watermark(5), 3, 8) == (True, "3 new events above watermark 5 (newest 8)")
    assert gate(Watermark(5), 0, None) == (False, "nothing new above watermark 5")
    waiting = Watermark(5, None, (Gap(2, 2, ("a",), 1.0),))
    assert gate(waiting, 0, None, 0, {"a"})[0] is False
    assert gate(waiting, 0, None, 1, {"a"})[0] is True  # a late commit is visible
    assert gate(waiting, 0, None, 0, set())[0] is True  # ready to settle


# ------------------------------------------------------------------ a simulated InnoDB


class World:
    def __init__(self) -> None:
        self.next_id = 1
        self.committed: dict[int, bytes] = {}
        self.rolled_back: set[int] = set()
        self.open: dict[str, list[int]] = {}

    def insert(self, trx: str) -> int:
        event_id = self.next_id
        self.next_id += 1
        self.open.setdefault(trx, []).append(event_id)
        return event_id

    def commit(self, trx: str) -> None:
        for event_id in self.open.pop(trx):
            self.committed[event_id] = b'{"event_id":%d,"store_id":%d}' % (event_id, event_id % 2)

    def rollback(self, trx: str) -> None:
        self.rolled_back.update(self.open.pop(trx))

    def open_trx(self) -> frozenset[str]:
        return frozenset(self.open)

    def read(self, plan: ReadPlan) -> list[int]:
        def wanted(i: int) -> bool:
            return i > plan.above or any(a <= i <= b for a, b in plan.gaps)

        return sorted(i for i in self.committed if wanted(i))[: plan.limit]


Step = Callable[[], object]


def publish_step(
    world: World,
    stored: Watermark,
    topic: list[tuple[int, bytes]],
    *,
    crash_after_ack: bool = False,
    before_read: Step = lambda: None,
    after_read: Step = lambda: None,
    now: float = 0.0,
    limit: int = 1000,
) -> Watermark:
    """One run as the publisher does it; returns the watermark stored afterwards."""
    run = Run(stored, world.open_trx(), limit)
    before_read()  # inserts, commits and rollbacks racing with the run
    ids = world.read(run.plan)
    after_read()
    for i in range(0, len(ids), 3):
        run.see(ids[i : i + 3])
    topic.extend((i, world.committed[i]) for i in ids)  # produced and acknowledged
    decision = run.decide(world.open_trx(), now, 0, captured_at=None)
    if crash_after_ack:
        return stored  # killed before the watermark write: the stored row is the old one
    return decision.state


def assert_exactly_once_modulo_repeats(world: World, topic: list[tuple[int, bytes]]) -> Counter:
    first: dict[int, bytes] = {}
    for event_id, value in topic:
        assert first.setdefault(event_id, value) == value, f"repeat of {event_id} differs"
    assert set(first) == set(world.committed), "missing or extra ids"
    assert not set(first) & world.rolled_back
    return Counter(event_id for event_id, _ in topic)


def test_crash_between_ack_and_watermark_write_then_clean_run() -> None:
    world, topic = World(), []
    for _ in range(3):
        world.insert("t1")
    world.commit("t1")  # ids 1-3
    slow = world.insert("slow")  # id 4, stays open
    world.insert("t2")
    world.commit("t2")  # id 5
    stored = publish_step(world, Watermark(), topic)
    assert stored.last_event_id == 5 and [(g.first, g.last) for g in stored.gaps] == [(4, 4)]
    world.commit("slow")
    for _ in range(2):
        world.insert("t3")
    world.commit("t3")  # ids 6-7
    crashed = publish_step(world, stored, topic, crash_after_ack=True)
    assert crashed == stored  # what the next run starts from
    assert [i for i, _ in topic[4:]] == [slow, 6, 7]  # acknowledged before the crash
    stored = publish_step(world, crashed, topic)  # the clean run
    assert stored.last_event_id == 7 and stored.gaps == () and stored.events_published == 7
    repeats = assert_exactly_once_modulo_repeats(world, topic)
    assert {i for i, n in repeats.items() if n > 1} == {slow, 6, 7}
    assert all(n <= 2 for n in repeats.values())


@pytest.mark.parametrize("seed", range(150))
def test_random_interleavings_with_crashes_lose_nothing(seed: int) -> None:
    rng = random.Random(seed)
    world, topic = World(), []
    stored = Watermark()
    names = iter(f"t{i}" for i in range(10_000))

    def act() -> None:
        roll = rng.random()
        if roll < 0.45 or not world.open:
            trx = rng.choice([*world.open, next(names), next(names)])
            world.insert(trx)
        elif roll < 0.85:
            world.commit(rng.choice(list(world.open)))
        else:
            world.rollback(rng.choice(list(world.open)))

    for _ in range(40):
        for _ in range(rng.randint(0, 4)):
            act()
        stored = publish_step(
            world,
            stored,
            topic,
            crash_after_ack=rng.random() < 0.25,
            before_read=lambda: [act() for _ in range(rng.randint(0, 3))],
            after_read=lambda: [act() for _ in range(rng.randint(0, 2))],
            limit=rng.choice([2, 5, 1000]),
        )
    for trx in list(world.open):
        world.commit(trx) if rng.random() < 0.7 else world.rollback(trx)
    for _ in range(500):  # drain: clean runs, 5 rows at a time, until nothing changes
        before, stored = stored, publish_step(world, stored, topic, limit=5)
        if stored == before:
            break
    assert stored.gaps == ()
    assert stored.last_event_id == max(world.committed, default=0)
    assert_exactly_once_modulo_repeats(world, topic)


def test_the_state_record_in_kafka_round_trips() -> None:
    from datetime import datetime

    from regstream.watermark import watermark_from_json, watermark_to_json

    w = Watermark(42, datetime(2026, 11, 26, 9, 0, 0, 123456), (Gap(7, 9, ("t1",), 5.5),), 40)
    assert watermark_from_json(watermark_to_json(w)) == w
    assert watermark_from_json(watermark_to_json(Watermark())) == Watermark()
