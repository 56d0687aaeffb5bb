"""Claiming and running: the worker's mailbox and its weighted priority scheduler.

Per priority lane the dispatcher keeps a small buffer of claimed jobs (at most
``lane_capacity``), so memory is bounded whatever the backlog. It claims for every
lane below half its capacity in one round trip, and starts jobs while slots are free
(``concurrency``), picking the lane by smooth weighted round-robin among the lanes
with buffered work — so saturated lanes are served 4:3:2:1 and a lone lane gets every
slot.

A claim's round trip outlasts short jobs: while it is in flight, buffered jobs keep
starting in the slots that free up (unless the ownership or the pause changed since the
dispatcher last looked; then they wait for the step's checks, after the claim).

It sleeps until something can change the answer: a NOTIFY for one of its shards, a
finished job (a free slot), an ownership change, or the claim timer. There is no poll
loop. A lane whose claim came back empty is not asked again until new work arrives or
the timer fires; so when lanes turn empty, the dispatcher looks up the earliest
``run_at`` queued in them (delayed jobs, retries backing off) and keeps that deadline
— an absolute one, which no unrelated wake-up (a heartbeat, a finished job) moves.
That look-up runs after the claimed jobs have started, never before.
``MAX_TIMER_S`` re-asks every lane at the latest, bounding the cost of any missed
wake-up.

A claim's cost grows with the shards it visits (index probes per shard and lane), so
no claim visits them all when there are many:

* A claim visits at most ``SHARDS_PER_CLAIM`` shards, going round the owned shards in
  turn, claim after claim; a claim that leaves a lane short goes on with the next
  shards at once. A lane is known empty once every shard came back empty for it since
  it last got jobs or new work arrived.
* A NOTIFY naming a shard (a submit into one shard) does not send an idle worker
  round its shards: the lanes known empty are asked in the named shards only (a
  *narrow* claim). They stay known empty elsewhere, and the narrow claim lets every
  tenant offer as many jobs as the lane wants, so a lane it leaves short is empty in
  the named shards too. Named shards are visited first by a claim of the other lanes.
  More than ``MAX_HINTED_SHARDS`` named shards, or ``*`` (a batch spanning shards),
  forget every lane's emptiness.

Ownership moves are respected at once: a buffered job whose shard this worker no
longer serves is given back, never started, and a shard being claimed from counts as
in flight, so its lease is not released under a claim that is still running.

The pool's pause (read with the ring) is followed at every step: a paused pool claims
nothing and gives its buffered jobs back; buffered jobs of a paused type are parked
(``jobpool.store.pause``), and the next claim follows at once, so a paused type's
backlog cannot hold back the other types.

A cancel request is read from the job's row, never taken from a NOTIFY payload: a
``cancel`` notification (or a heartbeat) only makes the dispatcher ask which of its
attempts were asked to cancel.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import time
from collections import Counter, deque
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime

import asyncpg
from opentelemetry import propagate, trace

from jobpool import tracing
from jobpool.models import (
    ClaimedJob,
    ErrorRecord,
    Finish,
    JobId,
    JobState,
    Priority,
    Retry,
    ShardId,
)
from jobpool.store import channels, execution
from jobpool.store.pause import job_park_many
from jobpool.worker import metrics
from jobpool.worker.completer import Completer
from jobpool.worker.executor import JobContext, Outcome, ReportProgress, execute
from jobpool.worker.launcher import Launcher
from jobpool.worker.outcomes import mark_span, tell
from jobpool.worker.ownership import Ownership
from jobpool.worker.registry import Registry
from jobpool.worker.scheduler import WeightedLanes
from jobpool.worker.settings import WorkerSettings

log = logging.getLogger(__name__)

MAX_TIMER_S = 60.0
"""Longest time a lane stays unasked: bounds the damage of a missed wake-up, not a poll."""
MAX_HINTED_SHARDS = 8
"""Most named shards a claim visits first; more forget every lane's emptiness."""
SHARDS_PER_CLAIM = 16
"""Most shards one claim visits besides the named ones: a claim of a lane's want (256
by default) then takes about 16 jobs per shard visited, as many with 256 shards as
with 16."""
MIN_TIMER_S = 0.01
"""Shortest timer: a due time already past (a job fell due during the claim) re-claims
after this, so a due job that cannot be claimed yet cannot make the loop spin."""


@dataclass(frozen=True)
class DueLookup:
    """Lanes found empty in ``shards`` by a claim: the timer needs their earliest run_at."""

    shards: list[ShardId]
    lanes: set[Priority]


@dataclass
class Running:
    job: ClaimedJob
    ctx: JobContext
    task: asyncio.Task[None]


class Dispatcher:
    def __init__(
        self,
        settings: WorkerSettings,
        conns: asyncpg.Pool,
        registry: Registry,
        *,
        ownership: Ownership,
        completer: Completer,
        report_progress: ReportProgress,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._settings = settings
        self._conns = conns
        self._registry = registry
        self._ownership = ownership
        self._completer = completer
        self._report = report_progress
        self._clock = clock
        self._lanes = WeightedLanes(settings.priority_weights)
        self.buffers: dict[Priority, deque[ClaimedJob]] = {p: deque() for p in Priority}
        self.running: dict[JobId, Running] = {}
        self._empty: set[Priority] = set()
        self._hinted: set[ShardId] = set()  # named by NOTIFYs since the last claim
        self._dry: dict[Priority, set[ShardId]] = {p: set() for p in Priority}
        self._turn = 0  # where the next claim's visit of the owned shards starts
        self._news = 0  # counts "new work" wake-ups, to spot one during a claim
        self._cursors: dict[Priority, str] = dict.fromkeys(Priority, "")
        self._wake = asyncio.Event()
        self._due: datetime | None = None  # earliest run_at queued in the empty lanes
        self._rescan_at = 0.0  # monotonic: when the empty lanes are asked again anyway
        self._claiming: frozenset[ShardId] = frozenset()
        self._looked_at_version = -1  # the ownership version _give_back_moved last saw
        self._tracing = False  # whether an OpenTelemetry SDK records the attempts' spans
        self._slot_freed: asyncio.Future[None] | None = None  # during a claim: a job ended
        self._cancels_to_check = False
        self._pause = ownership.pause
        self.claiming = True
        self.succeeded = 0
        self.failed = 0
        # Named signals, for whoever needs to know where the dispatcher is (tests wait
        # on them): it went to sleep; it read its attempts' cancel requests; it armed
        # the claim timer; it gave buffered jobs back to the queue.
        self.asleep = asyncio.Event()
        self.cancels_read = asyncio.Event()
        self.timer_armed = asyncio.Event()
        self.gave_back = asyncio.Event()

    # -- wake-ups ------------------------------------------------------------------

    def wake(self, *, new_work: bool = False) -> None:
        if new_work:
            self._forget_empty()
        self._wake.set()

    def _forget_empty(self) -> None:
        """Work may have come anywhere: every lane is asked again, in every shard."""
        self._news += 1
        self._empty.clear()
        self._due = None
        for dry in self._dry.values():
            dry.clear()

    def on_notify(self, payload: str) -> None:
        """A payload of the worker channel: a hint of new work or of a cancel request."""
        if payload == channels.CANCEL or payload.startswith(channels.CANCEL_PREFIX):
            self.check_cancels()
        elif payload == channels.ALL:
            self.wake(new_work=True)
        elif payload.isdigit() and ShardId(int(payload)) in self._ownership.held:
            shard = ShardId(int(payload))
            self._hinted.add(shard)
            for dry in self._dry.values():
                dry.discard(shard)
            self._wake.set()

    def check_cancels(self) -> None:
        """Ask the database, at the next step, which of our attempts were cancelled."""
        if self.running or any(self.buffers.values()):
            self._cancels_to_check = True
            self._wake.set()

    # -- bookkeeping -----------------------------------------------------------------

    @property
    def empty_lanes(self) -> frozenset[Priority]:
        """Lanes known empty in every shard: not asked until new work or the timer."""
        return frozenset(self._empty)

    def in_flight(self, shard: ShardId) -> int:
        buffered = sum(job.shard == shard for buf in self.buffers.values() for job in buf)
        running = sum(r.job.shard == shard for r in self.running.values())
        claiming = int(shard in self._claiming)
        return buffered + running + claiming + self._completer.unwritten(shard)

    def buffered_ids(self) -> list[JobId]:
        return [job.id for buf in self.buffers.values() for job in buf]

    def cancel(self, job_id: JobId) -> None:
        """Cancel a running job's task, or drop a buffered one as cancelled."""
        run = self.running.get(job_id)
        if run is not None:
            run.ctx.cancel_requested = True
            run.task.cancel()
            return
        for buf in self.buffers.values():
            for job in buf:
                if job.id == job_id:
                    buf.remove(job)
                    self._finish_cancelled(job)
                    return

    def _finish_cancelled(self, job: ClaimedJob) -> None:
        cancelled = Finish(job_id=job.id, state=JobState.CANCELLED)
        self._count(job, cancelled)
        self._completer.add(cancelled, shard=job.shard)

    def drop_shards(self, shards: set[ShardId]) -> None:
        """The leases of ``shards`` are gone: stop their attempts, forget their buffers."""
        for run in list(self.running.values()):
            if run.job.shard in shards:
                run.task.cancel()
        for lane, buf in self.buffers.items():
            self.buffers[lane] = deque(job for job in buf if job.shard not in shards)

    # -- the loop ----------------------------------------------------------------------

    async def step(self) -> None:
        """One round: act on cancels, claim, give back what moved away (also what a
        claim brought in while its shard moved), start what the free slots allow, sleep
        until a wake-up."""
        self._wake.clear()
        self.asleep.clear()
        self._follow_pause()
        if self._cancels_to_check:
            await self._apply_cancels()
        lookup = await self._claim_meanwhile() if self.claiming and not self._pause.paused else None
        await self._give_back_moved()
        await self._set_aside_paused()
        self._start_ready()
        if lookup is not None:
            await self._arm_timer(lookup)
        await self._sleep()

    async def _apply_cancels(self) -> None:
        self._cancels_to_check = False
        ids = [*self.running, *self.buffered_ids()]
        async with self._conns.acquire() as conn:
            cancelled = await execution.job_cancels_requested(
                conn, self._settings.pool, owner=self._settings.owner, job_ids=ids
            )
        for job_id in cancelled:
            self.cancel(job_id)
        self.cancels_read.set()

    async def _give_back_moved(self) -> None:
        """Buffered jobs of shards this worker no longer serves go back to the queue
        unstarted, so the shard drains and its next owner gets them. Looked for only
        when the ownership changed since the last look: every job buffered since was
        claimed from a shard served then, and so now."""
        version = self._ownership.version
        if version == self._looked_at_version:
            return
        if moved := await self._give_back(lambda job: not self._ownership.serves(job.shard)):
            log.info("gave back %d buffered jobs of shards that moved away", moved)
        self._looked_at_version = version

    async def _give_back(self, which: Callable[[ClaimedJob], bool]) -> int:
        """Put the buffered jobs ``which`` selects back in the queue, unstarted and
        uncounted; they leave the buffers once the database took them back (a failed
        write leaves them there, to be given back by the retry). Returns how many."""
        jobs = [job for buf in self.buffers.values() for job in buf if which(job)]
        if not jobs:
            return 0
        async with self._conns.acquire() as conn:
            await execution.job_release_many(
                conn,
                self._settings.pool,
                owner=self._settings.owner,
                job_ids=[job.id for job in jobs],
            )
        gone = {job.id for job in jobs}
        for lane, buf in self.buffers.items():
            self.buffers[lane] = deque(job for job in buf if job.id not in gone)
        self.gave_back.set()
        return len(jobs)

    def _follow_pause(self) -> None:
        """A changed pause may have sent parked jobs back: every lane is asked again."""
        if self._ownership.pause is not self._pause:
            self._pause = self._ownership.pause
            self._forget_empty()

    async def _set_aside_paused(self) -> None:
        """Buffered jobs the pause holds back leave the buffers unstarted: all of them go
        back to the queue when the pool is paused; those of paused types are parked."""
        pause = self._pause
        if not pause.active:
            return
        held = [
            job.id
            for buf in self.buffers.values()
            for job in buf
            if pause.paused or job.type in pause.types
        ]
        if not held:
            return
        s = self._settings
        async with self._conns.acquire() as conn:
            if pause.paused:
                await execution.job_release_many(conn, s.pool, owner=s.owner, job_ids=held)
                gone = set(held)
            else:
                gone = set(await job_park_many(conn, s.pool, owner=s.owner, job_ids=held))
        for lane, buf in self.buffers.items():
            self.buffers[lane] = deque(job for job in buf if job.id not in gone)
        if gone and not pause.paused:
            self._wake.set()  # room in the buffers: claim the other types' work at once
            log.info("parked %d jobs of paused types", len(gone))

    def _wants(self) -> dict[Priority, int]:
        capacity = self._settings.lane_capacity
        return {
            lane: capacity - len(buf)
            for lane, buf in self.buffers.items()
            if lane not in self._empty and len(buf) <= capacity // 2
        }

    def _narrow_wants(self) -> dict[Priority, int]:
        """The lanes known empty that have room: a narrow claim asks them. A lane known
        empty but too full to ask now forgets it was empty, so that it is asked in every
        shard once it runs low (the named shards may hold its new work)."""
        capacity = self._settings.lane_capacity
        wants = {
            lane: capacity - len(self.buffers[lane])
            for lane in self._empty
            if len(self.buffers[lane]) <= capacity // 2
        }
        self._empty &= set(wants)
        return wants

    async def _claim_meanwhile(self) -> DueLookup | None:
        """Claim, and meanwhile start buffered jobs in the slots that free up: a claim's
        round trip would otherwise leave them idle (short jobs end well within it). Only
        while neither the ownership nor the pause changed since this worker last looked:
        otherwise the jobs wait for the step's own checks, after the claim."""
        claim = asyncio.ensure_future(self._claim())
        try:
            while not claim.done():
                if self._ownership.version == self._looked_at_version and (
                    self._ownership.pause is self._pause
                ):
                    self._start_ready()
                self._slot_freed = asyncio.get_running_loop().create_future()
                await asyncio.wait((claim, self._slot_freed), return_when=asyncio.FIRST_COMPLETED)
        except BaseException:
            claim.cancel()
            raise
        finally:
            self._slot_freed = None
        return claim.result()

    async def _claim(self) -> DueLookup | None:
        """Claim for the lanes that want work; return what the claim timer must look up."""
        shards = self._ownership.claimable
        hinted, self._hinted = self._hinted.intersection(shards), set()
        if len(hinted) > MAX_HINTED_SHARDS:
            self._forget_empty()
            hinted = set()
        try:
            if hinted and not self._wants():
                return await self._claim_narrow(sorted(hinted))
            if hinted:
                self._unempty(shards, hinted)
            return await self._claim_round(shards, first=hinted)
        except BaseException:
            self._hinted |= hinted  # not claimed: the retry must still look there
            raise

    def _unempty(self, shards: list[ShardId], hinted: set[ShardId]) -> None:
        """The lanes known empty are asked again, but they stay dry outside ``hinted``."""
        for lane in self._empty:
            self._dry[lane] = set(shards) - hinted
        self._empty.clear()

    def _visit(self, shards: list[ShardId], first: set[ShardId]) -> list[ShardId]:
        """The named shards, then the next ``SHARDS_PER_CLAIM`` owned shards in turn."""
        if len(shards) <= SHARDS_PER_CLAIM:
            return shards
        start = self._turn % len(shards)
        self._turn = start + SHARDS_PER_CLAIM
        turn = (shards[(start + i) % len(shards)] for i in range(SHARDS_PER_CLAIM))
        return sorted(first.union(turn))

    async def _claim_round(self, shards: list[ShardId], *, first: set[ShardId]) -> DueLookup | None:
        """Claim for the lanes not known empty from the next shards in turn."""
        wants = self._wants()
        if not shards or not wants:
            return None
        visit = self._visit(shards, first)
        news_before = self._news
        claimed = await self._claim_from(visit, wants)
        if news_before != self._news:  # work may have come in after the claim's snapshot
            return None
        got = Counter(job.priority for job in claimed)
        emptied = {lane for lane in wants if self._dried(lane, shards, visit, got=got[lane])}
        short = any(got[lane] < want for lane, want in wants.items() if lane not in emptied)
        if short and len(visit) < len(shards):
            self._wake.set()  # a lane is short: go on with the next shards at once
        return self._note_empty(shards, emptied)

    def _dried(
        self, lane: Priority, shards: list[ShardId], visit: list[ShardId], *, got: int
    ) -> bool:
        """Note what a claim found in ``lane``; whether every shard is now dry for it."""
        dry = self._dry[lane]
        if got:
            dry.clear()
            return False
        dry.update(visit)
        if not dry.issuperset(shards):
            return False
        dry.clear()
        return True

    async def _claim_narrow(self, shards: list[ShardId]) -> DueLookup | None:
        """Ask the lanes known empty in the named shards only. Every tenant may offer a
        lane's whole want there, so a lane that gets less is empty in them too."""
        wants = self._narrow_wants()
        if not wants:
            return None
        limit = max(wants.values())
        claimed = await self._claim_from(shards, wants, limit=limit)
        got = Counter(job.priority for job in claimed)
        self._empty -= {lane for lane, want in wants.items() if got[lane] >= want}
        short = {lane for lane in wants if lane in self._empty}
        return DueLookup(shards, short) if short else None

    async def _claim_from(
        self, shards: list[ShardId], wants: dict[Priority, int], *, limit: int | None = None
    ) -> list[ClaimedJob]:
        """One claim round trip; ``limit`` bounds both the tenants visited per shard and
        lane and the jobs each offers (default: the store's spread)."""
        self._claiming = frozenset(shards)
        try:
            async with self._conns.acquire() as conn:
                claimed = await execution.job_claim_batch(
                    conn,
                    self._settings.pool,
                    owner=self._settings.owner,
                    shards=shards,
                    lanes=wants,
                    cursors=self._cursors,
                    per_shard_limit=limit,
                    tenants_per_shard=limit,
                )
            self._take_in(claimed)
            self._tracing = tracing.recording()  # asked per claim: it reads the environment
        finally:
            self._claiming = frozenset()
        return claimed

    def _take_in(self, claimed: list[ClaimedJob]) -> None:
        """Buffer claimed jobs (ending at once those cancelled while an earlier attempt
        ran) and move each served lane's tenant cursor."""
        for job in claimed:
            if job.cancel_requested:
                self._finish_cancelled(job)
            else:
                self.buffers[job.priority].append(job)
        for lane in {job.priority for job in claimed}:
            served = (job.tenant for job in claimed if job.priority is lane)
            self._cursors[lane] = execution.rotate_cursor(self._cursors[lane], served)

    def _note_empty(self, shards: list[ShardId], emptied: set[Priority]) -> DueLookup | None:
        """Lanes whose claim came back empty are not asked again until new work or the
        timer; the timer needs the earliest run_at queued in the newly empty lanes."""
        new = emptied - self._empty
        if not new:
            return None
        if not self._empty:
            self._rescan_at = self._clock() + MAX_TIMER_S
        self._empty |= new
        return DueLookup(shards, new)

    async def _arm_timer(self, lookup: DueLookup) -> None:
        """Keep the earliest run_at queued in the looked-up lanes as the timer's deadline."""
        async with self._conns.acquire() as conn:
            due = await execution.job_next_due(
                conn, self._settings.pool, shards=lookup.shards, lanes=sorted(lookup.lanes)
            )
        if due is not None and (self._due is None or due < self._due):
            self._due = due
        self.timer_armed.set()

    def _start_ready(self) -> None:
        if self._clock() >= self._ownership.valid_until:
            return  # our leases may have expired (e.g. the process was frozen): start nothing
        if self._cancels_to_check:
            self._wake.set()  # a cancel hint came during this step: read it before starting
            return
        while len(self.running) < self._settings.concurrency:
            lane = self._lanes.pick(p for p, buf in self.buffers.items() if buf)
            if lane is None:
                return
            job = self.buffers[lane][0]
            if not self._ownership.serves(job.shard):
                return  # its shard moved away: the next step gives it back
            self.buffers[lane].popleft()
            ctx = JobContext(job, self._report)
            task = asyncio.create_task(self._run(job, ctx), name=f"job-{job.id}")
            self.running[job.id] = Running(job, ctx, task)

    def _timeout(self) -> float:
        """Seconds until the claim timer fires."""
        if not self._empty:
            return MAX_TIMER_S  # finished jobs and heartbeats wake it meanwhile
        timeout = self._rescan_at - self._clock()
        if self._due is not None:
            timeout = min(timeout, (self._due - datetime.now(UTC)).total_seconds())
        return max(timeout, MIN_TIMER_S)

    async def _sleep(self) -> None:
        self.asleep.set()
        try:
            # asyncio.timeout, not wait_for: on Python 3.11 wait_for can swallow a
            # cancellation that arrives as the event is set (CPython gh-86296).
            async with asyncio.timeout(self._timeout()):
                await self._wake.wait()
        except TimeoutError:
            self._forget_empty()

    # -- one attempt -----------------------------------------------------------------

    @functools.cached_property
    def launcher(self) -> Launcher:
        """Starts the handlers: sync ones on at most twice ``concurrency`` threads, so as
        many abandoned sync handlers (past their timeout, cancelled) may still run."""
        return Launcher(self._settings.pool, max_threads=2 * self._settings.concurrency)

    async def _run(self, job: ClaimedJob, ctx: JobContext) -> None:
        if self._clock() >= self._ownership.valid_until:
            # Frozen between _start_ready and this task's first step: our leases may be
            # gone, so the handler must not start. The job waits in its buffer for the
            # renewal (or is dropped with its shard when the lease turns out lost).
            self.running.pop(job.id, None)
            self.buffers[job.priority].appendleft(job)
            return
        pool = self._settings.pool
        due = max(job.created_at, job.run_at)
        metrics.labelled(metrics.SUBMIT_TO_START, pool).observe(
            max((datetime.now(UTC) - due).total_seconds(), 0.0)
        )
        started = self._clock()
        try:
            with _attempt_span(pool, job) if self._tracing else _NO_SPAN as span:
                outcome = await execute(
                    job, ctx, self._registry, policy=self._settings.retry, launcher=self.launcher
                )
                if span is not None:
                    mark_span(span, outcome)
            metrics.labelled(
                metrics.PROCESSING_SECONDS, pool, self._type_label(job), job.priority.value
            ).observe(self._clock() - started)
            self._count(job, outcome)
            self._completer.add(outcome, shard=job.shard)
        except asyncio.CancelledError:
            log.info("attempt %d of job %s stopped: shutdown or lost lease", job.attempt, job.id)
        finally:
            self.running.pop(job.id, None)
            self._wake.set()
            if self._slot_freed is not None and not self._slot_freed.done():
                self._slot_freed.set_result(None)

    def _type_label(self, job: ClaimedJob) -> str:
        return metrics.type_label(job.type, self._registry)

    def _count(self, job: ClaimedJob, outcome: Outcome) -> None:
        """Tell the outcome (metrics, log line) and count it for the heartbeat row."""
        tell(job, outcome, pool=self._settings.pool, type_label=self._type_label(job))
        if isinstance(outcome, Retry) or outcome.state is JobState.DEAD:
            self.failed += 1
        elif outcome.state is JobState.SUCCEEDED:
            self.succeeded += 1

    # -- shutdown ----------------------------------------------------------------------

    def stop_claiming(self) -> None:
        """Claim nothing from now on (a shutdown); buffered jobs wait to be given back."""
        self.claiming = False

    async def give_back_buffered(self) -> None:
        """Every buffered (never started) job goes back to the queue, uncounted."""
        await self._give_back(lambda job: True)

    async def drain(self, timeout_s: float) -> None:
        """Let the running attempts finish for up to ``timeout_s``, then interrupt the
        others: they are retried at once, and their handlers abandoned."""
        running = [run.task for run in self.running.values()]
        if not running:
            return
        log.info("draining %d running jobs (up to %.0f s)", len(running), timeout_s)
        _, late = await asyncio.wait(running, timeout=timeout_s)
        self._interrupt(late)
        await asyncio.gather(*late, return_exceptions=True)  # prompt: handlers abandoned

    def _interrupt(self, late: set[asyncio.Task[None]]) -> None:
        """Stop attempts still running after the drain timeout; retry them at once. Their
        handlers are abandoned (see ``launcher``): the shutdown does not wait for them."""
        for run in list(self.running.values()):
            if run.task in late:
                run.task.cancel()
                now = datetime.now(UTC)
                error = ErrorRecord(
                    attempt=run.job.attempt,
                    error_type="Interrupted",
                    at=now,
                    message="the worker shut down before the attempt ended",
                )
                retry = Retry(job_id=run.job.id, run_at=now, error=error)
                self._count(run.job, retry)
                self._completer.add(retry, shard=run.job.shard)


_NO_SPAN = contextlib.nullcontext()
"""Stands for the attempt's span when no OpenTelemetry SDK records spans: the API's
no-op spans would record nothing, yet cost more than a no-op job."""


def _attempt_span(pool: str, job: ClaimedJob) -> contextlib.AbstractContextManager[trace.Span]:
    """The attempt's ``jobpool.process`` span, a child of the submitter's."""
    parent = propagate.extract({"traceparent": job.traceparent} if job.traceparent else {})
    return tracing.tracer.start_as_current_span(
        "jobpool.process",
        context=parent,
        kind=trace.SpanKind.CONSUMER,
        attributes=_span_attributes(pool, job),
    )


def _span_attributes(pool: str, job: ClaimedJob) -> dict[str, str | int]:
    return {
        "jobpool.pool": pool,
        "jobpool.tenant": job.tenant,
        "jobpool.job.id": str(job.id),
        "jobpool.job.type": job.type,
        "jobpool.job.priority": job.priority.value,
        "jobpool.job.attempt": job.attempt,
        "jobpool.job.shard": job.shard,
    }
