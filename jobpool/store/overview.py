"""What ``jobpool dev`` shows of a pool besides its workers: who holds each shard, and
how many jobs ended recently, by final state.

Both are cheap enough to read every second: one row per held shard (at most the
pool's shard count), and a range of ``job_history_finished_idx`` for the recent window.
"""

from __future__ import annotations

from asyncpg import Connection

from jobpool.models import JobState, ShardId
from jobpool.store import rows
from jobpool.store.queries import QUERIES
from jobpool.store.rows import ShardHolder


async def lease_list(conn: Connection, pool: str) -> dict[ShardId, ShardHolder]:
    """The held shards of ``pool`` and their holders (a free shard is absent)."""
    found = await conn.fetch(*QUERIES.bind("lease_list", pool=pool))
    return {ShardId(row["shard"]): rows.shard_holder(row) for row in found}


async def job_history_recent_counts(
    conn: Connection, pool: str, *, window_s: float
) -> dict[JobState, int]:
    """Jobs of ``pool`` that ended in the last ``window_s`` seconds, by final state."""
    rows = await conn.fetch(
        *QUERIES.bind("job_history_recent_counts", pool=pool, window_s=float(window_s))
    )
    return {JobState(row["state"]): row["jobs"] for row in rows}
