"""Stable routing of jobs to shards and of shards to worker ordinals.

Both functions are part of jobpool's wire contract: a client in another language must
compute the same shard for the same routing key, and every worker must agree on which
ordinal owns a shard. They are tested against fixed vectors (tests/unit/test_sharding.py).

``shard_for(routing_key, shards)``
    The first 8 bytes of SHA-256 over the UTF-8 bytes of the routing key, read as a
    big-endian unsigned 64-bit integer, modulo ``shards``. The routing key is the job's
    ``key`` if given (jobs with one key keep their order), else its ``dedupe_key``, else
    its id in canonical lowercase hyphenated form.

``ordinal_for(shard, replicas)``
    Jump consistent hash (Lamping & Veach, 2014) of the shard number over ``replicas``
    buckets. Growing the ring from R to R+1 moves about 1/(R+1) of the shards, all of
    them to the new ordinal R; shrinking moves only the shards of the removed ordinal.
    This is exactly how a StatefulSet adds and removes ordinals.

``adopter_of(shard, live)``
    Which live ordinal adopts an orphaned shard (one whose ring owner is missing):
    rendezvous hashing — the ordinal with the highest SHA-256 of ``"<shard>/<ordinal>"``.
    The orphans of one missing ordinal spread evenly over the survivors (jump hash over
    the live set would give them all to one neighbour), and a change of the live set
    moves only the shards of the ordinal that came or went.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable

_U64_MASK = 0xFFFFFFFFFFFFFFFF
_JUMP_MULTIPLIER = 2862933555777941757


def shard_for(routing_key: str, shards: int) -> int:
    """Shard in ``[0, shards)`` of a routing key."""
    return shards_for((routing_key,), shards)[0]


def shards_for(routing_keys: Iterable[str], shards: int) -> list[int]:
    """``shard_for`` of each routing key, in order (a batch's jobs: no call per key)."""
    if shards < 1:
        raise ValueError(f"shards must be >= 1, got {shards}")
    sha256, from_bytes = hashlib.sha256, int.from_bytes
    return [from_bytes(sha256(key.encode()).digest()[:8], "big") % shards for key in routing_keys]


def ordinal_for(shard: int, replicas: int) -> int:
    """Ordinal in ``[0, replicas)`` that owns ``shard`` (jump consistent hash)."""
    if replicas < 1:
        raise ValueError(f"replicas must be >= 1, got {replicas}")
    key = shard & _U64_MASK
    bucket, candidate = -1, 0
    while candidate < replicas:
        bucket = candidate
        key = (key * _JUMP_MULTIPLIER + 1) & _U64_MASK
        candidate = int((bucket + 1) * ((1 << 31) / ((key >> 33) + 1)))
    return bucket


def shards_of(ordinal: int, *, shards: int, replicas: int) -> list[int]:
    """All shards that ``ordinal`` owns in a ring of ``replicas``."""
    return [s for s in range(shards) if ordinal_for(s, replicas) == ordinal]


def adopter_of(shard: int, live: Iterable[int]) -> int | None:
    """The ordinal of ``live`` that adopts orphaned ``shard`` (None if none is live)."""
    return max(live, key=lambda ordinal: _weight(shard, ordinal), default=None)


def _weight(shard: int, ordinal: int) -> bytes:
    return hashlib.sha256(f"{shard}/{ordinal}".encode()).digest()
