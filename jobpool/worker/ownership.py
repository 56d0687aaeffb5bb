"""Shard ownership: follow the ring, hold the leases, drain before letting go, adopt
the shards of a missing ordinal.

The ring (replicas R, from the pool's row) gives this ordinal its shards by jump
consistent hash. Each ``run_once`` (every heartbeat, at most a third of the lease TTL,
and at once when the ring changes; never two at a time):

1. renews the leases held; a shard whose lease is gone was taken over: its running
   attempts are cancelled at once (``on_lost``) — their writes would be fenced anyway;
2. takes the wanted shards not held yet: free, expired, or held by an earlier
   incarnation of this ordinal (taking requeues that incarnation's attempts);
3. adopts orphans: a shard free or expired for the grace period whose ring owner is
   not alive (no heartbeat within the lease TTL) goes to one live ordinal, chosen by
   rendezvous hashing so a missing ordinal's shards spread over the survivors. A
   StatefulSet does not replace the pod of a lost node until the node is gone, so
   without this its shards would wait for minutes, or for ever;
4. releases the shards it holds but should not keep — moved away by the ring, or
   adopted ones whose ring owner is alive again — once none of their attempts is in
   flight (drain, then release: the next owner takes them at once, nothing overlaps);
5. writes the heartbeat row (owned shards, counters), which is what makes this
   ordinal "alive" for the others.

``valid_until`` is the monotonic time until which every held lease is surely still
ours (the renewal's start plus the TTL): the dispatcher starts no attempt past it.

Reading the ring also reads the pool's ``pause`` (the same row): a new object only when
it changed, so the dispatcher spots a change by identity.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable

import asyncpg

from jobpool.models import PoolPause, ShardId
from jobpool.sharding import adopter_of, ordinal_for, shards_of
from jobpool.store import leases, pools, workers
from jobpool.worker import metrics
from jobpool.worker.settings import WorkerSettings

log = logging.getLogger(__name__)

Clock = Callable[[], float]


class Ownership:
    def __init__(
        self,
        settings: WorkerSettings,
        conns: asyncpg.Pool,
        *,
        in_flight: Callable[[ShardId], int],
        counters: Callable[[], workers.WorkerCounters],
        on_lost: Callable[[set[ShardId]], None],
        on_change: Callable[[], None],
        on_superseded: Callable[[], None],
        clock: Clock = time.monotonic,
    ) -> None:
        self._settings = settings
        self._conns = conns
        self._in_flight = in_flight
        self._counters = counters
        self._on_lost = on_lost
        self._on_change = on_change
        self._on_superseded = on_superseded
        self._first_take_done = False
        self._clock = clock
        self._started = clock()
        self._lock = asyncio.Lock()
        self.held: dict[ShardId, int] = {}
        self.wanted: set[ShardId] = set()
        self.adopted: set[ShardId] = set()
        self.orphans: set[ShardId] = set()
        self.replicas = 0
        self.ring_version = 0
        self.pause = PoolPause()
        self.valid_until = 0.0
        self.healthy = False
        self.version = 0
        """Counts the changes of ``held``, ``wanted`` and ``adopted``: what ``serves``
        answers can only have changed when this did."""
        self.renewed = asyncio.Event()  # set after each completed step (a test signal)

    @property
    def keeps(self) -> set[ShardId]:
        """Shards this worker serves: its ring's, plus those it adopted."""
        return self.wanted | self.adopted

    @property
    def claimable(self) -> list[ShardId]:
        """Shards to claim from: held, kept, lease surely valid."""
        if self._clock() >= self.valid_until:
            return []
        keeps = self.keeps
        return sorted(s for s in self.held if s in keeps)

    def serves(self, shard: ShardId) -> bool:
        """Whether attempts of ``shard`` may still start here (held and kept). Asked for
        every buffered job at every dispatcher step: no set is built."""
        return shard in self.held and (shard in self.wanted or shard in self.adopted)

    @property
    def settled(self) -> bool:
        """Holds every shard the ring gives it, and only shards it keeps (readiness)."""
        return self.healthy and self.wanted <= set(self.held) <= self.keeps

    async def read_ring(self) -> None:
        async with self._conns.acquire() as conn:
            pool = await pools.pool_get(conn, self._settings.pool)
        ordinal = self._settings.ordinal
        replicas = pool.replicas
        wanted = (
            shards_of(ordinal, shards=pool.shards, replicas=replicas) if ordinal < replicas else []
        )
        if pool.ring_version != self.ring_version:
            log.info(
                "ring v%d: %d replicas, ordinal %d wants %d of %d shards",
                pool.ring_version,
                replicas,
                ordinal,
                len(wanted),
                pool.shards,
            )
            if ordinal >= replicas:
                log.warning(
                    "ordinal %d is outside the ring of %d replicas: it owns no shards and "
                    "idles (scale the ring with `jobpool ring --replicas %d` to use it)",
                    ordinal,
                    replicas,
                    ordinal + 1,
                )
        self.ring_version = pool.ring_version
        self.replicas = replicas
        if pool.pause != self.pause:
            log.info("pool pause: %s", pool.pause.describe())
            self.pause = pool.pause
        self.wanted = {ShardId(s) for s in wanted}
        self.version += 1

    async def run_once(self) -> None:
        async with self._lock:  # the heartbeat and a ring change must not interleave
            await self._run_once()

    async def _run_once(self) -> None:
        s = self._settings
        started = self._clock()
        async with self._conns.acquire() as conn:
            renewed = await leases.lease_renew(
                conn, s.pool, owner=s.owner, shards=list(self.held), ttl_s=s.lease_ttl_s
            )
            lost = set(self.held) - set(renewed)
            if lost and await self._superseded(conn, lost):
                return
            missing = sorted(self.wanted - set(renewed))
            taken = await leases.lease_take(
                conn,
                s.pool,
                owner=s.owner,
                ordinal=s.ordinal,
                shards=missing,
                ttl_s=s.lease_ttl_s,
                supersede=not self._first_take_done,
            )
            self._first_take_done = True
            held = renewed | taken
            adoptions = await self._adopt(conn, held)
            held |= adoptions
            drained = [sh for sh in held if sh not in self.keeps and not self._in_flight(sh)]
            released = await leases.lease_release(conn, s.pool, owner=s.owner, shards=drained)
            for shard in released:
                held.pop(shard, None)
            await workers.worker_heartbeat(
                conn,
                s.pool,
                ordinal=s.ordinal,
                incarnation=s.incarnation,
                shards=list(held),
                counters=self._counters(),
            )
        self.valid_until = started + s.lease_ttl_s
        self.healthy = True
        self.renewed.set()
        self._apply(held, lost=lost, taken=set(taken) | set(adoptions), released=set(released))

    async def _adopt(
        self, conn: asyncpg.Connection, held: dict[ShardId, int]
    ) -> dict[ShardId, int]:
        """Refresh which held shards are adopted, and take the orphans that fall to us."""
        s = self._settings
        found = await leases.lease_orphans(
            conn, s.pool, grace_s=s.orphan_grace, live_s=s.lease_ttl_s
        )
        ring_live = {o for o in found.live if o < self.replicas}
        if s.ordinal < self.replicas:
            ring_live.add(s.ordinal)  # our heartbeat row may not be written yet
        if self.replicas:
            self.adopted = {
                sh
                for sh in held
                if sh not in self.wanted and ordinal_for(sh, self.replicas) not in ring_live
            }
            self.orphans = {
                sh for sh in found.shards if ordinal_for(sh, self.replicas) not in ring_live
            }
        else:
            self.adopted, self.orphans = set(), set()
        self.version += 1
        mine = sorted(
            sh for sh in self.orphans if sh not in held and adopter_of(sh, ring_live) == s.ordinal
        )
        # Only after a grace period of its own: at a cold start every shard looks
        # orphaned until the other ordinals have written their first heartbeat.
        if not mine or self._clock() - self._started < s.orphan_grace:
            return {}
        adopted = await leases.lease_take(
            conn,
            s.pool,
            owner=s.owner,
            ordinal=s.ordinal,
            shards=mine,
            ttl_s=s.lease_ttl_s,
            adopt=True,
        )
        if adopted:
            owners = sorted({ordinal_for(sh, self.replicas) for sh in adopted})
            log.warning(
                "adopted shards %s of missing ordinals %s (free for over %.0f s)",
                sorted(adopted),
                owners,
                s.orphan_grace,
            )
        self.adopted |= set(adopted)
        self.version += 1
        return adopted

    async def _superseded(self, conn: asyncpg.Connection, lost: set[ShardId]) -> bool:
        """Another incarnation of this ordinal took our shards: we are the zombie (e.g. a
        frozen pod whose replacement started). Give everything up and stop."""
        s = self._settings
        holders = await leases.lease_holders(conn, s.pool, sorted(lost))
        if not any(o == s.ordinal and owner != s.owner for owner, o in holders.values()):
            return False
        log.error("a newer incarnation of ordinal %d took over; stopping", s.ordinal)
        self.held = {}
        self.version += 1
        self.valid_until = 0.0
        self._on_lost(lost)
        self._on_superseded()
        return True

    def _apply(
        self,
        held: dict[ShardId, int],
        *,
        lost: set[ShardId],
        taken: set[ShardId],
        released: set[ShardId],
    ) -> None:
        self.held = held
        self.adopted &= set(held)
        self.version += 1
        metrics.SHARDS_OWNED.labels(self._settings.pool).set(len(held))
        metrics.SHARDS_ADOPTED.labels(self._settings.pool).set(len(self.adopted))
        metrics.SHARDS_ORPHANED.labels(self._settings.pool).set(len(self.orphans - set(held)))
        if lost:
            log.warning("lost the leases of shards %s: another worker took them", sorted(lost))
            self._on_lost(lost)
        if taken or released:
            log.info("took shards %s, released shards %s", sorted(taken), sorted(released))
        if lost or taken or released:
            self._on_change()

    async def release_all(self) -> None:
        """On shutdown, after draining: hand every shard over at once."""
        s = self._settings
        async with self._lock, self._conns.acquire() as conn:
            await leases.lease_release(conn, s.pool, owner=s.owner, shards=list(self.held))
            await workers.worker_remove(conn, s.pool, ordinal=s.ordinal, incarnation=s.incarnation)
            self.held = {}
            self.version += 1
