"""Weighted priority lanes (jobpool/worker/scheduler.py): smooth weighted round-robin.

Defends docs/architecture.md, "Scheduling": lanes with work are served in proportion to their
weights (4:3:2:1 by default), interleaved rather than in bursts; a lane with weight >= 1
is never starved; a lone lane gets every pick; a lane that had no work earns no credit,
so it cannot burst ahead when work arrives; weights below 1 are refused.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable

import pytest
from hypothesis import given
from hypothesis import strategies as st

from jobpool.models import Priority
from jobpool.worker.scheduler import DEFAULT_WEIGHTS, WeightedLanes

C, H, N, L = Priority.CRITICAL, Priority.HIGH, Priority.NORMAL, Priority.LOW
ALL = list(Priority)
TOTAL = sum(DEFAULT_WEIGHTS.values())


def picks(lanes: WeightedLanes, ready: Iterable[Priority], n: int) -> list[Priority]:
    ready = list(ready)
    chosen = [lanes.pick(ready) for _ in range(n)]
    assert None not in chosen
    return chosen  # type: ignore[return-value]


def longest_runs(sequence: list[Priority]) -> dict[Priority, int]:
    longest: dict[Priority, int] = dict.fromkeys(Priority, 0)
    run = 0
    for i, lane in enumerate(sequence):
        run = run + 1 if i and sequence[i - 1] is lane else 1
        longest[lane] = max(longest[lane], run)
    return longest


def test_default_weights_are_4_3_2_1() -> None:
    assert dict(DEFAULT_WEIGHTS) == {C: 4, H: 3, N: 2, L: 1}


def test_saturated_lanes_get_exactly_4_3_2_1_over_1000_picks() -> None:
    counts = Counter(picks(WeightedLanes(), ALL, 1000))
    assert counts == {C: 400, H: 300, N: 200, L: 100}


def test_every_window_of_total_weight_picks_follows_the_weights() -> None:
    sequence = picks(WeightedLanes(), ALL, 200)
    for start in range(len(sequence) - TOTAL + 1):
        assert Counter(sequence[start : start + TOTAL]) == DEFAULT_WEIGHTS


def test_picks_interleave_rather_than_burst() -> None:
    sequence = picks(WeightedLanes(), ALL, 1000)
    longest = longest_runs(sequence)
    assert all(longest[lane] <= DEFAULT_WEIGHTS[lane] for lane in Priority), longest
    # The heaviest lane never takes its whole share in one go while others wait.
    assert longest[C] < DEFAULT_WEIGHTS[C]


def test_low_is_never_starved() -> None:
    sequence = picks(WeightedLanes(), ALL, 1000)
    lows = [i for i, lane in enumerate(sequence) if lane is L]
    gaps = [b - a for a, b in zip([-1, *lows], lows, strict=False)]
    assert max(gaps) <= TOTAL


@pytest.mark.parametrize("lane", list(Priority))
def test_a_lone_lane_gets_every_pick(lane: Priority) -> None:
    lanes = WeightedLanes()
    picks(lanes, ALL, 7)  # whatever credit the lanes hold from earlier picks
    assert picks(lanes, [lane], 100) == [lane] * 100


def test_two_lanes_share_by_their_weights() -> None:
    assert Counter(picks(WeightedLanes(), [C, L], 500)) == {C: 400, L: 100}
    assert Counter(picks(WeightedLanes(), [H, N], 500)) == {H: 300, N: 200}


def test_no_ready_lane_picks_none() -> None:
    lanes = WeightedLanes()
    assert lanes.pick([]) is None
    assert lanes.pick(iter(())) is None


def test_ready_may_be_a_generator_with_duplicates() -> None:
    lanes = WeightedLanes()
    chosen = [lanes.pick(p for p in [L, L, C]) for _ in range(5)]
    assert Counter(chosen) == {C: 4, L: 1}


@pytest.mark.parametrize("returning", list(Priority))
def test_a_lane_that_was_empty_does_not_burst_when_work_arrives(returning: Priority) -> None:
    lanes = WeightedLanes()
    others = [p for p in Priority if p is not returning]
    picks(lanes, others, 97)  # a long stretch without work in `returning`
    after = picks(lanes, ALL, 10 * TOTAL)
    weight = DEFAULT_WEIGHTS[returning]
    # From its very first picks on, it gets its share, never more.
    assert Counter(after[:TOTAL])[returning] == weight
    assert longest_runs(after)[returning] <= weight
    for start in range(0, len(after), TOTAL):
        assert Counter(after[start : start + TOTAL]) == DEFAULT_WEIGHTS


def test_a_lane_served_alone_keeps_no_credit_over_the_others() -> None:
    lanes = WeightedLanes()
    picks(lanes, [L], 1000)  # low alone for a long time
    after = picks(lanes, ALL, TOTAL)
    assert Counter(after) == DEFAULT_WEIGHTS


def test_custom_weights() -> None:
    weights = {C: 10, H: 1, N: 1, L: 1}
    counts = Counter(picks(WeightedLanes(weights), ALL, 1300))
    assert counts == {C: 1000, H: 100, N: 100, L: 100}
    equal = Counter(picks(WeightedLanes(dict.fromkeys(Priority, 1)), ALL, 400))
    assert equal == dict.fromkeys(Priority, 100)


@pytest.mark.parametrize("bad", [0, -1])
@pytest.mark.parametrize("lane", list(Priority))
def test_weights_below_one_are_rejected(lane: Priority, bad: int) -> None:
    weights = dict(DEFAULT_WEIGHTS) | {lane: bad}
    with pytest.raises(ValueError, match=lane.value):
        WeightedLanes(weights)


def test_a_missing_lane_weight_is_rejected() -> None:
    with pytest.raises(ValueError, match="low"):
        WeightedLanes({C: 4, H: 3, N: 2})


@given(
    weights=st.fixed_dictionaries({p: st.integers(1, 12) for p in Priority}),
    ready=st.sets(st.sampled_from(list(Priority)), min_size=1),
)
def test_any_weights_over_full_cycles_are_exact(
    weights: dict[Priority, int], ready: set[Priority]
) -> None:
    cycle = sum(weights[p] for p in ready)
    sequence = picks(WeightedLanes(weights), ready, 3 * cycle)
    assert Counter(sequence) == {p: 3 * weights[p] for p in ready}
    # Never starved: each ready lane appears in every window of one cycle.
    for start in range(len(sequence) - cycle + 1):
        assert set(sequence[start : start + cycle]) == ready
