"""Do the live workers of a pool match its ring? The check behind ``jobpool ring``'s
warnings.

A worker serves the shards the ring gives its ordinal, so a ring of ``R`` replicas
wants one live worker for each ordinal ``0..R-1``. A missing ordinal leaves its shards
without their owner; a worker whose ordinal is beyond the ring gives its shards up and
idles. Neither is an error (a StatefulSet or ``jobpool dev`` may be catching up), so
``jobpool ring`` warns, naming the ordinals and what to do.

A worker is live while its heartbeat, written every third of its lease TTL, is younger
than ``LIVE_HEARTBEAT_S`` (on the database's clock, which stamps it): a worker that
stops cleanly deletes its row; one that crashed leaves a row whose heartbeat ages.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime

from asyncpg import Connection

from jobpool.store.stats import db_now
from jobpool.store.workers import LIVE_HEARTBEAT_S, WorkerRow, worker_list


def live_ordinals(rows: Iterable[WorkerRow], now: datetime) -> set[int]:
    """The ordinals whose worker row has a recent heartbeat."""
    return {
        row.ordinal for row in rows if (now - row.heartbeat_at).total_seconds() < LIVE_HEARTBEAT_S
    }


async def read_live_ordinals(conn: Connection, pool: str) -> set[int]:
    """The ordinals of ``pool`` that have a live worker now."""
    return live_ordinals(await worker_list(conn, pool), await db_now(conn))


def ring_warnings(pool: str, replicas: int, live: set[int]) -> list[str]:
    """One line per mismatch between the ring and the live workers; none when they agree."""
    warnings = []
    missing = sorted(set(range(replicas)) - live)
    if missing:
        starts = "; ".join(
            f"jobpool worker --pool {pool} --ordinal {ordinal} …" for ordinal in missing[:3]
        )
        warnings.append(
            f"warning: the ring of pool {pool} wants {replicas} workers (ordinals "
            f"{_span(replicas)}), but {_ordinals(missing)} {_has(missing)} no live worker: "
            f"start {'it' if len(missing) == 1 else 'them'} ({starts})"
        )
    beyond = sorted(o for o in live if o >= replicas)
    if beyond:
        warnings.append(
            f"warning: {_ordinals(beyond)} of pool {pool} {_has(beyond)} a live worker beyond "
            f"the ring of {replicas}: it holds no shards and idles; stop it, or raise --replicas"
        )
    return warnings


def _span(replicas: int) -> str:
    return "0" if replicas == 1 else f"0-{replicas - 1}"


def _ordinals(ordinals: list[int]) -> str:
    if len(ordinals) == 1:
        return f"ordinal {ordinals[0]}"
    return f"ordinals {', '.join(map(str, ordinals))}"


def _has(ordinals: list[int]) -> str:
    return "has" if len(ordinals) == 1 else "have"
