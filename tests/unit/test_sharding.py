"""Routing contract (jobpool/sharding.py): fixed vectors and ring-growth properties.

``shard_for`` and ``ordinal_for`` are part of the wire contract (docs/architecture.md, "Sharding
and ownership"): a client in another language must compute the same shard, and every
worker must agree on the owner of a shard. The literal vectors below must never change.
"""

from __future__ import annotations

import hashlib
import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from jobpool.sharding import ordinal_for, shard_for, shards_of

# Reference vectors of jump consistent hash (Lamping & Veach; same values as the
# reference C++ implementation and the Go/Java ports).
JUMP_VECTORS = [
    (256, 1024, 520),
    (0, 60, 0),
    (1, 60, 55),
    (2, 60, 46),
    (42, 57, 43),
    (0xDEAD10CC, 666, 361),
    (1, 1, 0),
]

# (routing key, shards, first 8 bytes of SHA-256 as a big-endian u64, expected shard).
# Computed once from the documented algorithm and pinned; see test_shard_vectors_recomputed.
SHARD_VECTORS = [
    ("", 64, 0xE3B0C44298FC1C14, 20),
    ("a", 64, 0xCA978112CA1BBDCA, 10),
    ("user:42", 16, 0xEA3FD43BE1E57D62, 2),
    ("order-1001", 4096, 0x50AC93F41009BB58, 2904),
    ("0190b6a4-7c1e-7d2a-9f3b-2c4d5e6f7a8b", 64, 0x594AA0C0826B149E, 30),
    ("émail/ünïcødé", 1000, 0xAA4B2C0A3EA4F48B, 323),
    ("key", 1, 0x2C70E12B7A0646F9, 0),
    ("tenant:acme", 2**31 - 1, 0xCEF41EED96B2CB03, 882575585),
]

# Ring sizes for the properties: StatefulSets of a realistic size, plus big rings.
REPLICAS = st.integers(min_value=1, max_value=1000)
SHARD_NUMBERS = st.integers(min_value=0, max_value=4095)


def _reference_shard(routing_key: str, shards: int) -> int:
    """The documented algorithm, written independently of jobpool.sharding."""
    prefix = hashlib.sha256(routing_key.encode("utf-8")).digest()[:8]
    return int.from_bytes(prefix, byteorder="big", signed=False) % shards


# -- ordinal_for ---------------------------------------------------------------


@pytest.mark.parametrize(("key", "buckets", "expected"), JUMP_VECTORS)
def test_ordinal_for_matches_jump_hash_reference_vectors(
    key: int, buckets: int, expected: int
) -> None:
    assert ordinal_for(key, buckets) == expected


@pytest.mark.parametrize("replicas", [0, -1])
def test_ordinal_for_rejects_an_empty_ring(replicas: int) -> None:
    with pytest.raises(ValueError, match="replicas"):
        ordinal_for(3, replicas)


@given(shard=SHARD_NUMBERS, replicas=REPLICAS)
def test_ordinal_for_is_in_range(shard: int, replicas: int) -> None:
    assert 0 <= ordinal_for(shard, replicas) < replicas


@given(shard=st.integers(min_value=0, max_value=2**64 - 1), replicas=REPLICAS)
def test_ordinal_for_is_in_range_for_any_64_bit_key(shard: int, replicas: int) -> None:
    assert 0 <= ordinal_for(shard, replicas) < replicas


@given(shard=SHARD_NUMBERS, replicas=REPLICAS)
def test_growing_the_ring_moves_a_shard_only_to_the_new_ordinal(shard: int, replicas: int) -> None:
    before = ordinal_for(shard, replicas)
    after = ordinal_for(shard, replicas + 1)
    assert after in (before, replicas), (shard, replicas, before, after)


@given(shard=SHARD_NUMBERS, replicas=st.integers(min_value=2, max_value=1000))
def test_shrinking_the_ring_moves_only_the_removed_ordinals_shards(
    shard: int, replicas: int
) -> None:
    before = ordinal_for(shard, replicas)
    after = ordinal_for(shard, replicas - 1)
    if before != replicas - 1:
        assert after == before
    else:
        assert after < replicas - 1


@settings(deadline=None, max_examples=60)
@given(replicas=st.integers(min_value=1, max_value=256))
def test_growing_the_ring_moves_about_one_in_r_plus_one_shards(replicas: int) -> None:
    shards = 4096
    moved = [s for s in range(shards) if ordinal_for(s, replicas) != ordinal_for(s, replicas + 1)]
    assert all(ordinal_for(s, replicas + 1) == replicas for s in moved)
    fraction = 1 / (replicas + 1)
    expected = shards * fraction
    sigma = math.sqrt(shards * fraction * (1 - fraction))
    # A binomial count: within 5 sigma (+1 for rounding), and never zero.
    assert abs(len(moved) - expected) <= 5 * sigma + 1, (replicas, len(moved), expected)
    assert moved


def test_growing_the_ring_moves_the_minimum_for_common_sizes() -> None:
    shards = 4096
    for replicas in (1, 2, 3, 4, 7, 15):
        moved = sum(1 for s in range(shards) if ordinal_for(s, replicas + 1) == replicas)
        assert abs(moved / shards - 1 / (replicas + 1)) < 0.03, replicas


# -- shards_of -------------------------------------------------------------------


@settings(deadline=None)
@given(shards=st.integers(min_value=1, max_value=512), replicas=st.integers(1, 64))
def test_shards_of_partitions_all_shards(shards: int, replicas: int) -> None:
    owned = [shards_of(o, shards=shards, replicas=replicas) for o in range(replicas)]
    flat = [s for part in owned for s in part]
    assert sorted(flat) == list(range(shards))  # every shard owned ...
    assert len(flat) == len(set(flat))  # ... by exactly one ordinal
    for ordinal, part in enumerate(owned):
        assert all(ordinal_for(s, replicas) == ordinal for s in part)


def test_shards_of_a_single_replica_is_everything() -> None:
    assert shards_of(0, shards=64, replicas=1) == list(range(64))


def test_shards_of_an_ordinal_outside_the_ring_is_empty() -> None:
    assert shards_of(4, shards=64, replicas=4) == []


# -- shard_for -------------------------------------------------------------------


@pytest.mark.parametrize(("routing_key", "shards", "prefix", "expected"), SHARD_VECTORS)
def test_shard_for_fixed_vectors(routing_key: str, shards: int, prefix: int, expected: int) -> None:
    assert shard_for(routing_key, shards) == expected
    assert prefix % shards == expected


@pytest.mark.parametrize(("routing_key", "shards", "prefix", "expected"), SHARD_VECTORS)
def test_shard_vectors_recomputed(
    routing_key: str, shards: int, prefix: int, expected: int
) -> None:
    """The pinned literals agree with the algorithm as documented (SHA-256, 8 bytes, BE)."""
    digest = hashlib.sha256(routing_key.encode("utf-8")).digest()
    assert int.from_bytes(digest[:8], "big") == prefix
    assert _reference_shard(routing_key, shards) == expected


@given(routing_key=st.text(max_size=200), shards=st.integers(min_value=1, max_value=4096))
def test_shard_for_is_in_range_and_matches_the_documented_algorithm(
    routing_key: str, shards: int
) -> None:
    shard = shard_for(routing_key, shards)
    assert 0 <= shard < shards
    assert shard == _reference_shard(routing_key, shards)


@given(routing_key=st.text(max_size=50))
def test_shard_for_is_stable(routing_key: str) -> None:
    assert shard_for(routing_key, 64) == shard_for(routing_key, 64)


@pytest.mark.parametrize("shards", [0, -5])
def test_shard_for_rejects_zero_shards(shards: int) -> None:
    with pytest.raises(ValueError, match="shards"):
        shard_for("a", shards)


def test_shard_for_spreads_keys_over_all_shards() -> None:
    counts = [0] * 16
    for i in range(16_000):
        counts[shard_for(f"job-{i}", 16)] += 1
    # 1000 expected per shard, sigma ~ 31: a broken hash (e.g. constant) fails at once.
    assert min(counts) > 850
    assert max(counts) < 1150
