"""What ``jobpool dev`` shows of a pool besides its workers: who holds each shard, and
how many jobs ended recently, by final state.

Both are cheap enough to read every second: one row per held shard (at most the
pool's shard count), and a range of ``job_history_finished_idx`` for the recent window.
"""

from __future__ import annotations

from asyncpg import Connection
from pydantic import BaseModel, ConfigDict

from jobpool.models import JobState, ShardId
from jobpool.store.queries import QUERIES


class ShardHolder(BaseModel):
    """The holder of one shard's lease; ``live`` while the lease has not expired."""

    model_config = ConfigDict(frozen=True)

    ordinal: int | None
    live: bool


async def lease_list(conn: Connection, pool: str) -> dict[ShardId, ShardHolder]:
    """The held shards of ``pool`` and their holders (a free shard is absent)."""
    rows = await conn.fetch(*QUERIES.bind("lease_list", pool=pool))
    return {
        ShardId(row["shard"]): ShardHolder(ordinal=row["ordinal"], live=row["live"]) for row in rows
    }


async def job_history_recent_counts(
    conn: Connection, pool: str, *, window_s: float
) -> dict[JobState, int]:
    """Jobs of ``pool`` that ended in the last ``window_s`` seconds, by final state."""
    rows = await conn.fetch(
        *QUERIES.bind("job_history_recent_counts", pool=pool, window_s=float(window_s))
    )
    return {JobState(row["state"]): row["jobs"] for row in rows}
