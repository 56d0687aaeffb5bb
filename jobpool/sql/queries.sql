-- Every SQL statement jobpool runs, named `-- name: entity_verb`. Loaded once by
-- jobpool.store.queries; asyncpg prepares each statement once per connection.
-- Parameters are `:name`, numbered `$n` at load and bound by name (QUERIES.bind).
-- Statements that touch tenant data also filter on the tenant explicitly, on top of
-- row-level security, so a misconfigured role cannot widen what the code asks for.

-- section: jobpool.store.pools — a pool's fixed shard count and its ring

-- name: pool_get
SELECT name, shards, replicas, ring_version, paused, paused_types FROM pools WHERE name = :name;

-- name: pool_create
-- A new pool gets a free lease row per shard: a shard nobody takes is then visible (and
-- adoptable) like one whose owner died.
WITH created AS (
    INSERT INTO pools (name, shards, replicas) VALUES (:name, :shards, :replicas)
    ON CONFLICT (name) DO NOTHING
    RETURNING name, shards, replicas, ring_version, paused, paused_types
), leases AS (
    INSERT INTO shard_leases (pool, shard)
    SELECT c.name, s FROM created c CROSS JOIN LATERAL generate_series(0, c.shards - 1) AS s
)
SELECT name, shards, replicas, ring_version, paused, paused_types FROM created;

-- name: pool_set_replicas
UPDATE pools
SET replicas = :replicas, ring_version = ring_version + 1, updated_at = now()
WHERE name = :name AND replicas <> :replicas
RETURNING name, shards, replicas, ring_version, paused, paused_types;

-- section: jobpool.store.jobs — submit (with dedupe), status, cancel
-- (job_notify also serves pools and pause)

-- name: tenant_set_local
SELECT set_config('jobpool.tenant', :tenant, true);

-- name: job_insert_many
-- One round trip for a whole batch, NOTIFY included: the pool's workers are woken
-- once, at commit, and only if a row was inserted. A dedupe key already held by an
-- unfinished job (or earlier in the same batch) is skipped and resolved afterwards.
-- The batch's keys are locked first, in one order (the InitPlan runs before any row is
-- inserted): the insert trigger then re-takes locks it holds, and two batches sharing
-- keys cannot deadlock on them. An option every job of the batch shares comes once
-- (:shared_<field>, its array NULL), else per job (its array, :shared_<field> NULL).
WITH keys_locked AS (
    SELECT count(*) AS keys
    FROM (SELECT jobpool_key_lock(:pool, :tenant, k)
          FROM (SELECT DISTINCT k FROM unnest(:routing_keys::text[]) AS k WHERE k IS NOT NULL
                ORDER BY k) AS sorted) AS locked
), inserted AS (
    INSERT INTO jobs (
        id, pool, tenant, shard, type, priority, payload, routing_key, dedupe_key,
        run_at, max_attempts, duration, request_id, user_id, traceparent, replay_of
    )
    SELECT i.id, :pool, :tenant, i.shard, coalesce(i.type, :shared_type::text),
           coalesce(i.priority, :shared_priority::smallint), i.payload::jsonb,
           i.routing_key, i.dedupe_key,
           coalesce(i.run_at, :shared_run_at::timestamptz, now()),
           coalesce(i.max_attempts, :shared_max_attempts::int),
           coalesce(i.duration, :shared_duration::text),
           coalesce(i.request_id, :shared_request_id::text),
           coalesce(i.user_id, :shared_user_id::text),
           coalesce(i.traceparent, :shared_traceparent::text),
           coalesce(i.replay_of, :shared_replay_of::bigint)
    FROM unnest(
        :ids::uuid[], :shards::int[], :types::text[], :priorities::smallint[],
        :payloads::text[], :routing_keys::text[], :dedupe_keys::text[],
        :run_ats::timestamptz[], :max_attempts::int[], :durations::text[],
        :request_ids::text[], :user_ids::text[], :traceparents::text[],
        :replays_of::bigint[]
    ) AS i (id, shard, type, priority, payload, routing_key, dedupe_key, run_at,
            max_attempts, duration, request_id, user_id, traceparent, replay_of)
    WHERE (SELECT keys FROM keys_locked) >= 0
    ON CONFLICT (pool, tenant, dedupe_key) WHERE dedupe_key IS NOT NULL DO NOTHING
    RETURNING id, state, run_at, created_at
)
-- The uncorrelated subquery is an InitPlan: evaluated once, on the first row returned.
SELECT id, state, run_at, created_at,
       (SELECT 1 FROM pg_notify(:channel, :shards_woken)) AS woken
FROM inserted;

-- name: job_insert_many_unkeyed
-- job_insert_many for a batch without keys or dedupe keys (the common case): no key to
-- lock, no conflict to skip, so every row is inserted, and one row comes back instead of
-- one per job: each job's created_at is the transaction's now(), as is the run_at of a
-- job submitted without one. A CTE that modifies data always runs to completion.
WITH inserted AS (
    INSERT INTO jobs (
        id, pool, tenant, shard, type, priority, payload, run_at, max_attempts, duration,
        request_id, user_id, traceparent, replay_of
    )
    SELECT i.id, :pool, :tenant, i.shard, coalesce(i.type, :shared_type::text),
           coalesce(i.priority, :shared_priority::smallint), i.payload::jsonb,
           coalesce(i.run_at, :shared_run_at::timestamptz, now()),
           coalesce(i.max_attempts, :shared_max_attempts::int),
           coalesce(i.duration, :shared_duration::text),
           coalesce(i.request_id, :shared_request_id::text),
           coalesce(i.user_id, :shared_user_id::text),
           coalesce(i.traceparent, :shared_traceparent::text),
           coalesce(i.replay_of, :shared_replay_of::bigint)
    FROM unnest(
        :ids::uuid[], :shards::int[], :types::text[], :priorities::smallint[],
        :payloads::text[], :run_ats::timestamptz[], :max_attempts::int[], :durations::text[],
        :request_ids::text[], :user_ids::text[], :traceparents::text[], :replays_of::bigint[]
    ) AS i (id, shard, type, priority, payload, run_at, max_attempts, duration,
            request_id, user_id, traceparent, replay_of)
)
SELECT now() AS created_at, (SELECT 1 FROM pg_notify(:channel, :shards_woken)) AS woken;

-- name: job_find_by_dedupe_keys
SELECT id, type, priority, shard, state, run_at, created_at, dedupe_key
FROM jobs
WHERE pool = :pool AND tenant = :tenant AND dedupe_key = ANY(:dedupe_keys::text[]);

-- name: job_notify
SELECT pg_notify(:channel, :payload);

-- name: job_status
-- $4, a lower bound of the job's finish time (its id's time, less the clocks' skew),
-- prunes the history partitions of the days before the job existed.
SELECT id, pool, tenant, type, priority, shard, state, attempts, max_attempts,
       progress, progress_message, progress_at, NULL::text AS result, error_history::text,
       cancel_requested_at IS NOT NULL AS cancel_requested, created_at, run_at, started_at,
       NULL::timestamptz AS finished_at, request_id, user_id
FROM jobs WHERE id = :id AND pool = :pool AND tenant = :tenant
UNION ALL
SELECT id, pool, tenant, type, priority, shard, state, attempts, max_attempts,
       progress, progress_message, progress_at, result::text, error_history::text,
       false, created_at, run_at, started_at, finished_at, request_id, user_id
FROM job_history
WHERE id = :id AND pool = :pool AND tenant = :tenant AND finished_at >= :history_since;

-- name: job_cancel
-- Requests the cancel of an unfinished job: a queued one ends at once (the trigger
-- jobs_cancel_queued moves it to job_history as cancelled), a running one stays flagged
-- for its worker. Returns the state the job had, or no row if it is not unfinished.
UPDATE jobs SET cancel_requested_at = coalesce(cancel_requested_at, now())
WHERE id = :id AND pool = :pool AND tenant = :tenant
RETURNING state;

-- name: job_history_exists
SELECT state FROM job_history
WHERE id = :id AND pool = :pool AND tenant = :tenant AND finished_at >= :history_since;

-- section: jobpool.store.execution — the worker's side: claim, retry, finish, progress

-- name: job_claim_batch
-- The next due jobs of several priority lanes at once across the caller's leased
-- shards, tenants served round-robin within each lane.
--
-- Per (shard, lane) a loose index scan over jobs_claim_idx visits at most
-- :tenants_per_shard tenants with due jobs, in rotation: those after the lane's cursor
-- (:cursors) first, then, wrapping around, those up to it (one index probe per tenant).
-- Each visited tenant offers its oldest :per_shard_limit jobs; per lane the jobs are
-- taken in rounds — every tenant's oldest, then every tenant's second oldest, … — up to
-- the lane's `wanted`. The caller moves the
-- cursor past the tenants it got (rotate_cursor), so every tenant gets its turn, one
-- tenant's flood cannot delay another tenant's jobs by more than a round, and a claim
-- reads a bounded number of index entries whatever the backlog and the tenant count.
-- The UPDATE re-checks `state` on the latest row version (a job cancelled meanwhile is
-- skipped); the lease join fences the claim with the current epoch. A job whose cancel
-- was requested while it ran (then retried or requeued) comes back flagged and is not
-- counted as an attempt: the worker ends it cancelled without running it.
WITH RECURSIVE owned AS (
    SELECT shard, epoch FROM shard_leases
    WHERE pool = :pool AND owner = :owner AND shard = ANY(:shards::int[])
      AND expires_at > now()
), lanes AS (
    SELECT priority, wanted, cursor
    FROM unnest(:priorities::smallint[], :wanted::int[], :cursors::text[])
             AS l (priority, wanted, cursor)
    WHERE wanted > 0
), tenants AS (
    SELECT o.shard, l.priority, l.cursor, first.tenant, first.wrapped, 1 AS visited
    FROM owned o
    CROSS JOIN lanes l
    CROSS JOIN LATERAL (
        (SELECT tenant, false AS wrapped FROM jobs
         WHERE pool = :pool AND shard = o.shard AND priority = l.priority AND state = 'queued'
           AND run_at <= now() AND tenant > l.cursor
         ORDER BY tenant LIMIT 1)
        UNION ALL
        (SELECT tenant, true FROM jobs
         WHERE pool = :pool AND shard = o.shard AND priority = l.priority AND state = 'queued'
           AND run_at <= now() AND tenant <= l.cursor
         ORDER BY tenant LIMIT 1)
        LIMIT 1
    ) AS first
    UNION ALL
    SELECT t.shard, t.priority, t.cursor, next.tenant, next.wrapped, t.visited + 1
    FROM tenants t
    CROSS JOIN LATERAL (
        (SELECT tenant, t.wrapped AS wrapped FROM jobs
         WHERE pool = :pool AND shard = t.shard AND priority = t.priority AND state = 'queued'
           AND run_at <= now() AND tenant > t.tenant AND (NOT t.wrapped OR tenant <= t.cursor)
         ORDER BY tenant LIMIT 1)
        UNION ALL
        (SELECT tenant, true FROM jobs
         WHERE pool = :pool AND shard = t.shard AND priority = t.priority AND state = 'queued'
           AND run_at <= now() AND NOT t.wrapped AND tenant <= t.cursor
         ORDER BY tenant LIMIT 1)
        LIMIT 1
    ) AS next
    WHERE t.visited < :tenants_per_shard
), offered AS (
    SELECT c.id, c.run_at, t.priority, t.tenant,
           row_number() OVER (PARTITION BY t.priority, t.tenant ORDER BY c.run_at, c.id)
               AS turn
    FROM tenants t
    CROSS JOIN LATERAL (
        SELECT id, run_at FROM jobs
        WHERE pool = :pool AND shard = t.shard AND priority = t.priority AND tenant = t.tenant
          AND state = 'queued' AND run_at <= now()
        ORDER BY run_at, id
        LIMIT :per_shard_limit
    ) AS c
), ranked AS (
    SELECT o.id, l.wanted,
           row_number() OVER (PARTITION BY o.priority ORDER BY o.turn, o.run_at, o.id) AS rank
    FROM offered o
    JOIN lanes l USING (priority)
)
-- ARRAY(...) is computed once and the re-check is written `state <> 'running'` (the
-- same thing, as a job in `jobs` is queued or running) so that no partial index on
-- `state = 'queued'` matches it: the UPDATE finds its rows by primary key, whatever the
-- planner believes about the backlog (even before the table's first ANALYZE).
UPDATE jobs j
SET state = 'running', attempts = j.attempts + (j.cancel_requested_at IS NULL)::int,
    started_at = now(), worker = :owner,
    lease_epoch = (SELECT w.epoch FROM owned w WHERE w.shard = j.shard)
WHERE j.id = ANY (ARRAY(SELECT id FROM ranked WHERE rank <= wanted))
  AND j.state <> 'running'
RETURNING j.id, j.tenant, j.shard, j.type, j.priority, j.payload::text, j.attempts,
          j.max_attempts, j.duration, j.request_id, j.user_id, j.traceparent,
          j.created_at, j.run_at, j.lease_epoch,
          j.cancel_requested_at IS NOT NULL AS cancel_requested;

-- name: job_retry_many
-- Failed attempts with attempts left go back to the queue at their backoff time.
-- (Fenced and found as in job_finish_many.)
UPDATE jobs j
SET state = 'queued', run_at = r.run_at, worker = NULL, lease_epoch = NULL,
    error_history = j.error_history || jsonb_build_array(r.error::jsonb)
FROM unnest(:ids::uuid[], :run_ats::timestamptz[], :errors::text[]) AS r (id, run_at, error)
WHERE j.id = r.id AND j.pool = :pool AND j.worker = :owner
  AND j.lease_epoch = (SELECT l.epoch FROM shard_leases l
                       WHERE l.pool = j.pool AND l.shard = j.shard AND l.owner = :owner)
RETURNING j.id;

-- name: job_finish_many
-- Ends running attempts in one round trip, whatever their outcome: each row names its
-- final state (succeeded with a result, dead with a reason and a last error, or
-- cancelled). They leave the hot table for job_history; dead ones also get a job_dlq
-- row. Fenced: only rows still running under the caller's current lease epoch move.
-- Each row is found by primary key, and its lease by the lease's: the cost is linear in
-- the batch. `worker = :owner` means running (the jobs_worker_owned CHECK), so there is
-- no `state` test: with one, a generic plan walked every running (buffered) job of the
-- pool in jobs_running_idx for each batch, and joins on the ids' array and on
-- shard_leases made it quadratic in the batch.
WITH finished AS (
    DELETE FROM jobs j
    USING unnest(:ids::uuid[], :states::text[], :results::text[], :reasons::text[],
                 :errors::text[]) AS r (id, state, result, reason, error)
    WHERE j.id = r.id AND j.pool = :pool AND j.worker = :owner
      AND j.lease_epoch = (SELECT l.epoch FROM shard_leases l
                           WHERE l.pool = j.pool AND l.shard = j.shard AND l.owner = :owner)
    RETURNING j.*, r.state AS final_state, r.result AS final_result, r.reason,
              CASE WHEN r.error IS NULL THEN j.error_history
                   ELSE j.error_history || jsonb_build_array(r.error::jsonb) END AS errors
), archived AS (
    INSERT INTO job_history (
        id, pool, tenant, shard, type, priority, state, payload, routing_key, dedupe_key,
        attempts, max_attempts, result, progress, progress_message, progress_at,
        error_history, request_id, user_id, replay_of, created_at, run_at, started_at
    )
    SELECT id, pool, tenant, shard, type, priority, final_state, payload, routing_key,
           dedupe_key, attempts, max_attempts, final_result::jsonb, progress,
           progress_message, progress_at, errors, request_id, user_id, replay_of,
           created_at, run_at, started_at
    FROM finished
    RETURNING id
), lettered AS (
    INSERT INTO job_dlq (
        pool, original_job_id, app_id, type, payload, priority, routing_key, max_attempts,
        duration, error_reason, attempts, error_history, request_id, user_id
    )
    SELECT pool, id, tenant, type, payload, priority, routing_key, max_attempts, duration,
           reason, attempts, errors, request_id, user_id
    FROM finished
    WHERE final_state = 'dead'
)
SELECT id, (SELECT 1 FROM pg_notify(:channel, :wake)) AS notified FROM archived;

-- name: job_progress_update
WITH updated AS (
    UPDATE jobs SET progress = :progress, progress_message = :message, progress_at = now()
    WHERE id = :id AND pool = :pool AND worker = :owner
    RETURNING id
)
SELECT id, (SELECT 1 FROM pg_notify(:channel, id::text)) AS notified FROM updated;

-- name: job_release_many
-- Prefetched attempts that never started (worker shutting down or shard moving away)
-- go back to the queue untouched: the attempt did not happen, so it is not counted.
-- (Fenced and found as in job_finish_many.)
UPDATE jobs j
SET state = 'queued', attempts = j.attempts - 1, started_at = NULL, worker = NULL,
    lease_epoch = NULL
WHERE j.id = ANY(:ids::uuid[]) AND j.pool = :pool AND j.worker = :owner
  AND j.lease_epoch = (SELECT l.epoch FROM shard_leases l
                       WHERE l.pool = j.pool AND l.shard = j.shard AND l.owner = :owner)
RETURNING j.id;

-- name: job_next_due
-- The claim timer: the earliest run_at among the queued jobs of the caller's shards in
-- the lanes $3 whose claim came back empty — one probe of jobs_due_idx per shard and
-- lane. No `run_at > now()`: a job that fell due between the claim and this look-up
-- must come back (as a time already past), not be skipped.
SELECT min(next.run_at)
FROM unnest(:shards::int[]) AS s (shard)
CROSS JOIN unnest(:priorities::smallint[]) AS l (priority)
CROSS JOIN LATERAL (
    SELECT run_at FROM jobs
    WHERE pool = :pool AND shard = s.shard AND priority = l.priority AND state = 'queued'
    ORDER BY run_at
    LIMIT 1
) AS next;

-- name: job_cancels_requested
-- Which of the caller's attempts have a cancel request: the row decides, never a NOTIFY.
SELECT id FROM jobs
WHERE pool = :pool AND id = ANY(:ids::uuid[]) AND worker = :owner
  AND cancel_requested_at IS NOT NULL;

-- name: job_queue_depth
-- Queued jobs of the caller's shards by priority, due (run_at passed) or not yet.
SELECT priority, run_at <= now() AS due, count(*) AS queued
FROM jobs
WHERE pool = :pool AND shard = ANY(:shards::int[]) AND state = 'queued'
GROUP BY priority, due;

-- name: job_queue_depth_sampled
-- The same figures estimated from a sample of :percent of the table's pages: reads
-- about that share of `jobs`, where the exact count reads every queued job's entry.
SELECT priority, run_at <= now() AS due, round(count(*) * 100.0 / :percent)::bigint AS queued
FROM jobs TABLESAMPLE SYSTEM (:percent::float4)
WHERE pool = :pool AND shard = ANY(:shards::int[]) AND state = 'queued'
GROUP BY priority, due;

-- name: jobs_row_estimate
-- The planner's estimate of the rows of `jobs` (-1 before its first ANALYZE).
SELECT reltuples::bigint FROM pg_class WHERE oid = 'jobs'::regclass;

-- name: jobs_statistics_missing
-- True while `jobs` was never analyzed: its plans then rest on guesses.
SELECT reltuples < 0 FROM pg_class WHERE oid = 'jobs'::regclass;

-- name: jobs_analyze
ANALYZE jobs;

-- section: jobpool.store.leases — shard leases: take, renew, release, orphans, history

-- name: lease_take
-- Takes shards that are free or expired and, when $6 (supersede) is true, those still
-- held by an earlier incarnation of the same ordinal: a starting pod replaces its
-- previous incarnation at once (a StatefulSet runs one pod per ordinal, and the epoch
-- bump fences any zombie). Only a worker's first take supersedes, so a resumed zombie
-- cannot take its shards back from its replacement. Every take bumps the epoch and is
-- written to lease_history (why: $7 `adopted`, else what the lease was); the holding it
-- ends is closed there, and the shard's history older than $8 seconds is pruned.
-- Returns the shards taken with their new epoch.
-- `previous` reads the leases as the statement's snapshot saw them (a FOR UPDATE there
-- would skip the rows the upsert changes): it only names why; epochs come from the take.
WITH previous AS (
    SELECT shard, owner, expires_at FROM shard_leases
    WHERE pool = :pool AND shard = ANY(:shards::int[])
), taken AS (
    INSERT INTO shard_leases AS l (pool, shard, owner, ordinal, epoch, expires_at)
    SELECT :pool, s, :owner, :ordinal, 1, now() + make_interval(secs => :ttl_s)
    FROM unnest(:shards::int[]) AS s
    ON CONFLICT (pool, shard) DO UPDATE
    SET owner = excluded.owner, ordinal = excluded.ordinal, epoch = l.epoch + 1,
        expires_at = excluded.expires_at
    WHERE l.owner IS NULL OR l.expires_at <= now() OR (:supersede AND l.ordinal = excluded.ordinal)
    RETURNING shard, epoch
), why AS (
    SELECT t.shard, t.epoch, t.epoch - 1 AS previous_epoch,
           CASE WHEN p.owner IS NULL THEN 'free'
                WHEN p.expires_at <= now() THEN 'expired'
                ELSE 'superseded' END AS because
    FROM taken t LEFT JOIN previous p USING (shard)
), closed AS (
    UPDATE lease_history h
    SET ended_at = now(), ended_because = w.because
    FROM why w
    WHERE h.pool = :pool AND h.shard = w.shard AND h.epoch = w.previous_epoch
      AND h.ended_at IS NULL AND w.because <> 'free'
), recorded AS (
    INSERT INTO lease_history (pool, shard, epoch, owner, ordinal, taken_because)
    SELECT :pool, shard, epoch, :owner, :ordinal, CASE WHEN :adopt THEN 'adopted' ELSE because END
    FROM why
), pruned AS (
    DELETE FROM lease_history
    WHERE pool = :pool AND shard IN (SELECT shard FROM taken)
      AND taken_at < now() - make_interval(secs => :history_kept_s)
)
SELECT shard, epoch FROM taken;

-- name: lease_holders
SELECT shard, owner, ordinal FROM shard_leases
WHERE pool = :pool AND shard = ANY(:shards::int[]) AND owner IS NOT NULL;

-- name: lease_renew
UPDATE shard_leases SET expires_at = now() + make_interval(secs => :ttl_s)
WHERE pool = :pool AND owner = :owner AND shard = ANY(:shards::int[])
RETURNING shard, epoch;

-- name: lease_release
-- Released shards wake the pool's workers, so their next owner takes them at once.
-- `expires_at` becomes the release time: how long a shard has been free is what lets
-- live ordinals adopt it when its ring owner never comes to take it.
WITH released AS (
    UPDATE shard_leases SET owner = NULL, ordinal = NULL, expires_at = now()
    WHERE pool = :pool AND owner = :owner AND shard = ANY(:shards::int[])
    RETURNING shard, epoch
), closed AS (
    UPDATE lease_history h SET ended_at = now(), ended_because = 'released'
    FROM released r
    WHERE h.pool = :pool AND h.shard = r.shard AND h.epoch = r.epoch AND h.ended_at IS NULL
)
SELECT shard, (SELECT 1 FROM pg_notify(:channel, :payload)) AS woken FROM released;

-- name: lease_health
-- Per shard of the pool: free or expired for at least $2 seconds after someone held it
-- (an orphan nobody took within the grace period; a shard never taken yet is a pool
-- whose workers have not started, which readiness reports), or held by an adoption
-- (its ring owner is missing).
SELECT l.shard,
       l.epoch > 0 AND l.expires_at <= now() - make_interval(secs => :grace_s) AS orphaned,
       coalesce(l.expires_at > now() AND h.taken_because = 'adopted', false) AS adopted
FROM shard_leases l
LEFT JOIN lease_history h ON h.pool = l.pool AND h.shard = l.shard AND h.epoch = l.epoch
WHERE l.pool = :pool;

-- name: lease_orphans
-- Shards free or expired for at least $2 seconds (their ring owner did not take them
-- in that grace period) and the pool's live ordinals (a heartbeat within $3 seconds):
-- what a worker needs to decide which orphans it adopts.
SELECT ARRAY(
           SELECT shard FROM shard_leases
           WHERE pool = :pool AND expires_at <= now() - make_interval(secs => :grace_s)
           ORDER BY shard
       ) AS orphans,
       ARRAY(
           SELECT ordinal FROM workers
           WHERE pool = :pool AND heartbeat_at > now() - make_interval(secs => :live_s)
           ORDER BY ordinal
       ) AS live;

-- name: lease_history_list
SELECT shard, epoch, owner, ordinal, taken_at, taken_because, ended_at, ended_because
FROM lease_history
WHERE pool = :pool AND shard = ANY(:shards::int[])
ORDER BY shard, epoch;

-- name: job_requeue_orphans
-- After a take-over: attempts still `running` in the taken shards belong to a previous
-- owner that can no longer complete them (its epoch is stale). Back to the queue.
UPDATE jobs
SET state = 'queued', run_at = now(), worker = NULL, lease_epoch = NULL,
    error_history = error_history || jsonb_build_array(jsonb_build_object(
        'attempt', attempts, 'error_type', 'WorkerLost',
        'message', 'the worker running this attempt lost its shard lease',
        'at', now()))
WHERE pool = :pool AND shard = ANY(:shards::int[]) AND state = 'running'
RETURNING id;

-- section: jobpool.store.dlq — the dead-letter queue: list, replay, purge, discard

-- name: dlq_list
-- Two statements rather than `($4 IS NULL OR type = $4)`: a generic plan of that form
-- walks the primary key instead of the partial index that holds the pending entries.
SELECT id, pool, original_job_id, app_id, type, payload::text, priority, routing_key,
       max_attempts, duration, error_reason,
       attempts, error_history::text, dlq_at, replayed_at, request_id, user_id
FROM job_dlq
WHERE pool = :pool AND app_id = :tenant AND replayed_at IS NULL AND id > :after
ORDER BY id
LIMIT :limit;

-- name: dlq_list_by_type
SELECT id, pool, original_job_id, app_id, type, payload::text, priority, routing_key,
       max_attempts, duration, error_reason,
       attempts, error_history::text, dlq_at, replayed_at, request_id, user_id
FROM job_dlq
WHERE pool = :pool AND app_id = :tenant AND replayed_at IS NULL AND type = :type AND id > :after
ORDER BY id
LIMIT :limit;

-- name: dlq_get
SELECT id, pool, original_job_id, app_id, type, payload::text, priority, routing_key,
       max_attempts, duration, error_reason,
       attempts, error_history::text, dlq_at, replayed_at, request_id, user_id
FROM job_dlq WHERE id = :id AND pool = :pool AND app_id = :tenant;

-- name: dlq_mark_replayed
UPDATE job_dlq SET replayed_at = now()
WHERE id = :id AND pool = :pool AND app_id = :tenant AND replayed_at IS NULL
RETURNING id, pool, original_job_id, app_id, type, payload::text, priority, routing_key,
       max_attempts, duration, error_reason,
       attempts, error_history::text, dlq_at, replayed_at, request_id, user_id;

-- name: dlq_purge
SELECT jobpool_dlq_purge(:pool, :older_than, :tenant);

-- name: dlq_count_pending
SELECT count(*) FROM job_dlq WHERE pool = :pool AND replayed_at IS NULL;

-- name: dlq_discard
DELETE FROM job_dlq WHERE id = :id AND pool = :pool AND app_id = :tenant
RETURNING id, pool, original_job_id, app_id, type, payload::text, priority, routing_key,
       max_attempts, duration, error_reason,
       attempts, error_history::text, dlq_at, replayed_at, request_id, user_id;

-- name: dlq_discard_pending
-- Pending entries of the tenant written more than $3 ago (on job_dlq_pending_idx).
WITH discarded AS (
    DELETE FROM job_dlq
    WHERE pool = :pool AND app_id = :tenant AND replayed_at IS NULL
      AND dlq_at < now() - :older_than::interval
    RETURNING 1
)
SELECT count(*) FROM discarded;

-- name: dlq_discard_pending_by_type
-- The same, of one type (on job_dlq_pending_type_idx).
WITH discarded AS (
    DELETE FROM job_dlq
    WHERE pool = :pool AND app_id = :tenant AND replayed_at IS NULL AND type = :type
      AND dlq_at < now() - :older_than::interval
    RETURNING 1
)
SELECT count(*) FROM discarded;

-- section: jobpool.store.pause — pausing a pool or some of its job types

-- name: pool_pause_lock
-- The pool's pause lock, exclusive, to the end of the transaction: no worker parks a
-- job meanwhile, and the unpark that follows sees every job parked before it.
SELECT jobpool_pause_lock(:pool, true);

-- name: pool_pause_update
-- $2 paused (NULL: unchanged); the paused types become $3 (NULL: the current ones)
-- plus $4, less $5, each once, sorted.
UPDATE pools
SET paused = coalesce(:paused, paused),
    paused_types = ARRAY(
        SELECT DISTINCT t FROM unnest(coalesce(:types::text[], paused_types) || :add::text[]) AS t
        WHERE NOT t = ANY(:remove::text[])
        ORDER BY t),
    updated_at = now()
WHERE name = :pool
RETURNING paused, paused_types;

-- name: job_unpark
-- Parked jobs of the types no longer paused go back to the queue (jobs_paused_idx).
SELECT jobpool_jobs_unpark(:pool);

-- name: job_park_many
-- Claimed, never started attempts of paused types are parked, their attempt uncounted.
SELECT parked AS id FROM jobpool_jobs_park(:pool, :owner, :ids::uuid[]) AS parked;

-- name: job_parked_counts
-- Parked jobs of the pool per type (jobs_paused_idx).
SELECT type, count(*) AS jobs FROM jobs WHERE pool = :pool AND state = 'paused'
GROUP BY type ORDER BY type;

-- section: jobpool.store.schedules — periodic schedules and the exactly-once enqueue of ticks

-- name: schedule_upsert_many
-- Declares one source's schedules ('code' from a worker's handler module, 'spec' from
-- the JobPool): new ones start now; a changed cron or time zone restarts `defined_at`
-- (its past ticks never fire). A spec schedule overrides a code one of the same name,
-- never the reverse. Rows that did not change are not written.
INSERT INTO schedules AS s (pool, name, source, cron, timezone, tenant, type, priority,
                            payload, catch_up)
SELECT :pool, d.name, :source, d.cron, d.timezone, d.tenant, d.type, d.priority, d.payload::jsonb,
       d.catch_up
FROM unnest(:names::text[], :crons::text[], :timezones::text[], :tenants::text[], :types::text[],
            :priorities::smallint[], :payloads::text[], :catch_ups::boolean[])
     AS d (name, cron, timezone, tenant, type, priority, payload, catch_up)
ON CONFLICT (pool, name) DO UPDATE SET
    source = EXCLUDED.source,
    cron = EXCLUDED.cron,
    timezone = EXCLUDED.timezone,
    tenant = EXCLUDED.tenant,
    type = EXCLUDED.type,
    priority = EXCLUDED.priority,
    payload = EXCLUDED.payload,
    catch_up = EXCLUDED.catch_up,
    defined_at = CASE WHEN (s.cron, s.timezone) = (EXCLUDED.cron, EXCLUDED.timezone)
                      THEN s.defined_at ELSE now() END
WHERE (s.source = EXCLUDED.source OR EXCLUDED.source = 'spec')
  AND (s.source, s.cron, s.timezone, s.tenant, s.type, s.priority, s.payload, s.catch_up)
      IS DISTINCT FROM (EXCLUDED.source, EXCLUDED.cron, EXCLUDED.timezone, EXCLUDED.tenant,
                        EXCLUDED.type, EXCLUDED.priority, EXCLUDED.payload, EXCLUDED.catch_up);

-- name: schedule_delete_missing
-- The source's schedules it no longer declares.
DELETE FROM schedules WHERE pool = :pool AND source = :source AND NOT (name = ANY(:names::text[]));

-- name: schedule_list
SELECT name, source, cron, timezone, tenant, type, priority, payload::text AS payload,
       catch_up, defined_at, last_tick, last_enqueued_at
FROM schedules WHERE pool = :pool ORDER BY name;

-- name: schedule_enqueue
-- Enqueues ticks of one schedule exactly once across every replica: `last_tick` moves
-- forward only past ticks it has not reached (compare-and-set, :first_tick the first tick,
-- :last_tick the last), in the same statement that inserts their jobs. A racing replica's
-- update waits for this one's row lock, then finds `last_tick` moved and inserts
-- nothing. The pool's workers get one NOTIFY, delivered at commit.
WITH advanced AS (
    UPDATE schedules SET last_tick = :last_tick, last_enqueued_at = now()
    WHERE pool = :pool AND name = :name AND (last_tick IS NULL OR last_tick < :first_tick)
    RETURNING pool, tenant, type, priority, payload
), inserted AS (
    INSERT INTO jobs (id, pool, tenant, shard, type, priority, payload, dedupe_key, run_at)
    SELECT t.id, a.pool, a.tenant, t.shard, a.type, a.priority, a.payload, t.dedupe_key,
           t.run_at
    FROM advanced a
    CROSS JOIN unnest(:ids::uuid[], :shards::int[], :dedupe_keys::text[], :run_ats::timestamptz[])
         AS t (id, shard, dedupe_key, run_at)
    ON CONFLICT (pool, tenant, dedupe_key) WHERE dedupe_key IS NOT NULL DO NOTHING
    RETURNING id, run_at
)
SELECT id, run_at, (SELECT 1 FROM pg_notify(:channel, :shards_woken)) AS woken FROM inserted;

-- section: jobpool.store.history — job_history partitions and the pool's retention

-- name: history_maintain
-- One pass of history maintenance (partitions ahead, drops and deletes past retention).
SELECT created, dropped, deleted, skipped FROM jobpool_history_maintain(:days_ahead);

-- name: history_maintain_at
-- The same pass with the caller's clock: owner only (tests, administrators).
SELECT created, dropped, deleted, skipped FROM jobpool_history_maintain_at(:at, :days_ahead);

-- name: history_partition_list
SELECT name, starts_at, ends_at, rows_estimate FROM job_history_partitions ORDER BY ends_at;

-- name: pool_history_retention_set
UPDATE pools SET history_retention = :retention
WHERE name = :pool AND history_retention IS DISTINCT FROM :retention
RETURNING name;

-- name: pool_history_get
SELECT history_retention, history_pruned_before FROM pools WHERE name = :pool;

-- section: jobpool.store.workers — heartbeats and the workers' view of the pool

-- name: worker_heartbeat
INSERT INTO workers AS w (pool, ordinal, incarnation, shards, running, succeeded, failed)
VALUES (:pool, :ordinal, :incarnation, :shards, :running, :succeeded, :failed)
ON CONFLICT (pool, ordinal) DO UPDATE
SET incarnation = excluded.incarnation,
    started_at = CASE WHEN w.incarnation = excluded.incarnation THEN w.started_at
                      ELSE now() END,
    heartbeat_at = now(), shards = excluded.shards, running = excluded.running,
    succeeded = excluded.succeeded, failed = excluded.failed;

-- name: worker_remove
DELETE FROM workers WHERE pool = :pool AND ordinal = :ordinal AND incarnation = :incarnation;

-- name: worker_list
SELECT ordinal, incarnation, started_at, heartbeat_at, shards, running, succeeded, failed
FROM workers WHERE pool = :pool ORDER BY ordinal;

-- name: pool_queue_counts
-- Due queued jobs (run_at passed), running jobs and jobs waiting behind their key's head;
-- queued jobs not yet due (delayed, backing off before a retry) are not counted.
SELECT priority, state, count(*) AS jobs FROM jobs
WHERE pool = :pool AND (state <> 'queued' OR run_at <= now())
GROUP BY priority, state;

-- section: jobpool.store.stats — the figures of a pool's status

-- name: pool_oldest_queued_seconds
-- Seconds the oldest due queued job of the pool has waited (NULL when none). One probe
-- of jobs_due_idx per shard and lane: a plain min(run_at) would read every queued row.
SELECT extract(epoch FROM now() - min(first.run_at))::float8
FROM pools p
CROSS JOIN generate_series(0, p.shards - 1) AS s (shard)
CROSS JOIN generate_series(0, 3) AS l (priority)
CROSS JOIN LATERAL (
    SELECT run_at FROM jobs
    WHERE pool = p.name AND shard = s.shard AND priority = l.priority AND state = 'queued'
      AND run_at <= now()
    ORDER BY run_at
    LIMIT 1
) AS first
WHERE p.name = :pool;

-- name: pool_finished_count
-- Jobs of the pool that ended (succeeded or dead) in the last $2 seconds: throughput.
SELECT count(*) FROM job_history
WHERE pool = :pool AND finished_at > now() - make_interval(secs => :window_s)
  AND state IN ('succeeded', 'dead');

-- name: dlq_count_recent
-- Unreplayed dead letters of the pool written in the last $2 seconds.
SELECT count(*) FROM job_dlq
WHERE pool = :pool AND replayed_at IS NULL AND dlq_at > now() - make_interval(secs => :window_s);

-- name: db_now
-- The database's clock: heartbeats are stamped with it, so their ages are measured on it.
SELECT now();

-- section: jobpool.store.overview — what `jobpool dev` shows

-- name: lease_list
-- Who holds each held shard of the pool, and whether the lease is still alive: what
-- `jobpool dev` shows. A shard without a row, or with no owner, is free.
SELECT shard, ordinal, expires_at > now() AS live
FROM shard_leases WHERE pool = :pool AND owner IS NOT NULL ORDER BY shard;

-- name: job_history_recent_counts
-- Jobs of the pool that ended in the last $2 seconds, by final state (a range of
-- job_history_finished_idx).
SELECT state, count(*) AS jobs FROM job_history
WHERE pool = :pool AND finished_at > now() - make_interval(secs => :window_s)
GROUP BY state;

-- section: jobpool.store.migrate — the migration runner and the group roles it needs

-- name: migration_lock
SELECT pg_advisory_lock(:key);

-- name: migration_unlock
SELECT pg_advisory_unlock(:key);

-- name: migration_table_create
CREATE TABLE IF NOT EXISTS jobpool_migrations (
    name        text PRIMARY KEY,
    checksum    text NOT NULL,
    applied_at  timestamptz NOT NULL DEFAULT now()
);

-- name: migration_table_exists
SELECT to_regclass('jobpool_migrations') IS NOT NULL;

-- name: migration_list
SELECT name, checksum FROM jobpool_migrations;

-- name: migration_record
INSERT INTO jobpool_migrations (name, checksum) VALUES (:name, :checksum);

-- name: migration_owner_ready
-- True once jobpool_owner owns the schema (migration 0003 on): files then run as it.
SELECT pg_get_userbyid(relowner) = 'jobpool_owner'
FROM pg_class WHERE oid = to_regclass('jobpool_migrations');

-- name: migration_set_owner_role
SET LOCAL ROLE jobpool_owner;

-- name: role_current
SELECT current_user::text;

-- name: role_missing
SELECT ARRAY(
    SELECT wanted FROM unnest(:roles::text[]) AS wanted
    WHERE NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = wanted)
    ORDER BY wanted
);

-- name: role_may_create
SELECT rolsuper OR rolcreaterole FROM pg_roles WHERE rolname = current_user;

-- name: role_is_owner
SELECT rolsuper OR pg_has_role(current_user, 'jobpool_owner', 'MEMBER')
FROM pg_roles WHERE rolname = current_user;

-- name: role_create
-- Role statements take no parameters: format() quotes the names into the statement.
SELECT format('CREATE ROLE %I NOLOGIN', :role::text);

-- section: jobpool.store.roles — database roles and the tenants they act for
-- (role_grant also serves migrate)

-- name: role_grant
SELECT format('GRANT %I TO %I', :role::text, :member::text);

-- name: role_exists
SELECT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = :role);

-- name: tenant_role_map
-- Lets `role` act for `tenant` ('*': any tenant, the trusted-application mode).
INSERT INTO jobpool_tenant_roles (tenant, role) SELECT unnest(:tenants::text[]), :role
ON CONFLICT DO NOTHING;
