"""LISTEN/NOTIFY channel names and payloads.

Two channels per pool, each notified at most once per transaction with a tiny payload
(never a job's data):

- the *worker* channel wakes the pool's workers: payload is a shard number, ``*`` (a
  batch spanning shards), ``ring`` (the ring changed), ``released`` (a worker let
  shards go) or ``cancel`` (a cancel was requested: each worker reads which of its
  own attempts it concerns from their rows — a payload is a hint, never a command);
- the *events* channel tells clients waiting in ``result()``/``progress()`` that a
  job changed: payload is the job id, or ``*`` for a batch of changes.

Channel names stay under Postgres' 63-byte identifier limit (pool names are at most 50
characters).
"""

from __future__ import annotations

from collections.abc import Iterable

ALL = "*"
RING = "ring"
RELEASED = "released"
CANCEL = "cancel"
CANCEL_PREFIX = "cancel:"  # older clients' form, ``cancel:<job id>``: read as ``cancel``


def worker_channel(pool: str) -> str:
    return f"jp:{pool}"


def events_channel(pool: str) -> str:
    return f"jpe:{pool}"


def shards_payload(shards: Iterable[int]) -> str:
    """The worker-channel payload for jobs inserted into ``shards``."""
    distinct = set(shards)
    return str(distinct.pop()) if len(distinct) == 1 else ALL
