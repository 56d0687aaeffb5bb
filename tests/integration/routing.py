"""Jobs routed to a chosen shard of the 16-shard test pool.

Each job gets a routing key of its own that lands in the shard: jobs sharing a key would
run one at a time (ordered keys), which tests that only target a shard must not get.
"""

from __future__ import annotations

import dataclasses
import itertools
from collections.abc import Iterable
from typing import Any

from jobpool import Item
from jobpool.sharding import shard_for

SHARDS = 16
_NUMBERS = itertools.count()  # keys are never reused within a test process


def key_in(shard: int, *, shards: int = SHARDS) -> str:
    """A routing key no other job of this process has, landing in ``shard``."""
    return next(k for n in _NUMBERS if shard_for(k := f"route-{n}", shards) == shard)


def routed(shard: int, items: Iterable[Any], *, shards: int = SHARDS) -> list[Item]:
    """``items`` (payloads or ``Item``s) as batch items, each with its own key in ``shard``."""
    return [
        dataclasses.replace(item, key=key_in(shard, shards=shards))
        if isinstance(item, Item)
        else Item(item, key=key_in(shard, shards=shards))
        for item in items
    ]
