"""Retry policy (jobpool/worker/backoff.py): exponential backoff with jitter, a cap.

The delay after failed attempt n is uniform in [ceiling/2, ceiling] with ceiling =
min(cap_s, base_s * factor**(n-1)); ``exhausted(n)`` says whether attempt n was the
last one allowed (``max_attempts`` counts the first attempt).
"""

from __future__ import annotations

import itertools
import random

import pytest
from hypothesis import given
from hypothesis import strategies as st
from pydantic import ValidationError

from jobpool.worker.backoff import RetryPolicy


class Edge(random.Random):
    """An rng whose ``uniform`` returns one end of the range (``low`` or ``high``)."""

    def __init__(self, end: str) -> None:
        super().__init__(0)
        self.end = end
        self.ranges: list[tuple[float, float]] = []

    def uniform(self, a: float, b: float) -> float:
        self.ranges.append((a, b))
        return a if self.end == "low" else b


def ceiling(policy: RetryPolicy, attempt: int) -> float:
    return policy.delay_s(attempt, rng=Edge("high"))


def test_defaults() -> None:
    policy = RetryPolicy()
    assert (policy.max_attempts, policy.base_s, policy.factor, policy.cap_s) == (5, 1.0, 2.0, 300.0)


def test_delay_is_drawn_from_half_the_ceiling_to_the_ceiling() -> None:
    policy = RetryPolicy(base_s=1.0, factor=2.0, cap_s=1000.0)
    edge = Edge("high")
    for attempt in range(1, 8):
        policy.delay_s(attempt, rng=edge)
    assert edge.ranges == [(2**n / 2, 2**n) for n in range(7)]


@pytest.mark.parametrize("attempt", [1, 2, 3, 5, 8])
def test_delays_stay_within_their_bounds(attempt: int) -> None:
    policy = RetryPolicy(base_s=0.5, factor=3.0, cap_s=60.0)
    top = min(60.0, 0.5 * 3.0 ** (attempt - 1))
    rng = random.Random(attempt)
    delays = [policy.delay_s(attempt, rng=rng) for _ in range(2000)]
    assert all(top / 2 <= d <= top for d in delays)
    # Jitter spreads them over the whole range, not around one value.
    assert min(delays) < top * 0.55
    assert max(delays) > top * 0.95


def test_without_an_rng_the_module_random_is_used() -> None:
    policy = RetryPolicy(base_s=2.0, cap_s=10.0)
    delays = {policy.delay_s(1) for _ in range(50)}
    assert all(1.0 <= d <= 2.0 for d in delays)
    assert len(delays) > 1


def test_delays_grow_by_the_factor() -> None:
    policy = RetryPolicy(base_s=0.1, factor=3.0, cap_s=1e6)
    ceilings = [ceiling(policy, n) for n in range(1, 10)]
    assert ceilings[0] == pytest.approx(0.1)
    for before, after in itertools.pairwise(ceilings):
        assert after == pytest.approx(before * 3.0)


def test_factor_one_is_a_constant_backoff() -> None:
    policy = RetryPolicy(base_s=5.0, factor=1.0)
    assert {ceiling(policy, n) for n in range(1, 20)} == {5.0}


def test_delays_are_capped() -> None:
    policy = RetryPolicy(base_s=1.0, factor=2.0, cap_s=30.0)
    assert [ceiling(policy, n) for n in range(1, 8)] == [1, 2, 4, 8, 16, 30, 30]
    assert policy.delay_s(50, rng=Edge("low")) == 15.0
    rng = random.Random(1)
    assert all(15.0 <= policy.delay_s(n, rng=rng) <= 30.0 for n in range(6, 200))


def test_a_base_above_the_cap_is_capped_from_the_first_retry() -> None:
    policy = RetryPolicy(base_s=100.0, cap_s=10.0)
    assert ceiling(policy, 1) == 10.0


@pytest.mark.parametrize("attempt", [0, -3])
def test_an_attempt_below_one_counts_as_the_first(attempt: int) -> None:
    policy = RetryPolicy(base_s=1.0, factor=2.0)
    assert ceiling(policy, attempt) == ceiling(policy, 1) == 1.0


@pytest.mark.parametrize("attempt", [1025, 10**6])
def test_a_very_late_attempt_waits_the_cap(attempt: int) -> None:
    # Jobs may be submitted with any max_attempts >= 1; the growth must not overflow.
    policy = RetryPolicy(base_s=1.0, factor=2.0, cap_s=300.0)
    assert ceiling(policy, attempt) == 300.0
    assert 150.0 <= policy.delay_s(attempt) <= 300.0


@given(
    base=st.floats(0.001, 100.0),
    factor=st.floats(1.0, 10.0),
    cap=st.floats(0.001, 3600.0),
    attempt=st.integers(1, 60),
    seed=st.integers(0, 2**32),
)
def test_any_delay_is_within_half_the_ceiling_and_the_ceiling(
    base: float, factor: float, cap: float, attempt: int, seed: int
) -> None:
    policy = RetryPolicy(base_s=base, factor=factor, cap_s=cap)
    top = min(cap, base * factor ** (attempt - 1))
    delay = policy.delay_s(attempt, rng=random.Random(seed))
    assert top / 2 <= delay <= top <= cap


def test_exhausted_after_max_attempts() -> None:
    policy = RetryPolicy(max_attempts=3)
    assert [policy.exhausted(n) for n in range(1, 6)] == [False, False, True, True, True]


def test_one_attempt_means_no_retry() -> None:
    assert RetryPolicy(max_attempts=1).exhausted(1)


def test_a_job_max_attempts_overrides_the_policy() -> None:
    policy = RetryPolicy(max_attempts=3)
    assert not policy.exhausted(3, max_attempts=5)
    assert policy.exhausted(5, max_attempts=5)
    assert policy.exhausted(1, max_attempts=1)
    assert policy.exhausted(3, max_attempts=None)


@pytest.mark.parametrize(
    "bad",
    [
        {"max_attempts": 0},
        {"base_s": 0},
        {"base_s": -1.0},
        {"factor": 0.5},
        {"cap_s": 0},
    ],
)
def test_invalid_policies_are_rejected(bad: dict[str, float]) -> None:
    with pytest.raises(ValidationError):
        RetryPolicy(**bad)


def test_policies_are_immutable() -> None:
    policy = RetryPolicy()
    with pytest.raises(ValidationError):
        policy.base_s = 2.0  # type: ignore[misc]
