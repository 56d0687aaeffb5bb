-- jobpool schema, version 7: pausing a pool, or some job types of it.
--
-- The pause lives in the pool's row: `paused` (workers claim nothing and start nothing
-- new; running jobs finish) and `paused_types` (jobs of these types are set aside).
-- Types are not filtered in the claim: a paused type's backlog at the head of a
-- tenant's queue would be scanned again by every claim, and a claim's cost must not
-- grow with the backlog. Instead a worker that claims a job of a paused type parks it:
-- the job moves to the state `paused`, outside the claim index, its attempt uncounted,
-- so each job is claimed at most once per pause. Resuming moves the parked jobs of the
-- types no longer paused back to `queued` in one statement, and wakes the workers.
--
-- Parking and resuming cannot miss each other: both take an advisory lock on the pool
-- (a worker's park a shared one, a pause change an exclusive one) before the statement
-- that reads the other's work, so a job is parked only under a pause still in force,
-- and a resume sees every job parked before it.
--
-- A parked job is cancelled at once, like a queued one. A parked job with a key stays
-- its key's head (parking is an UPDATE; successors move on when a head is deleted).

SELECT set_config('search_path', quote_ident(current_schema()) || ', pg_temp', true);

ALTER TABLE pools
    ADD COLUMN paused boolean NOT NULL DEFAULT false,
    ADD COLUMN paused_types text[] NOT NULL DEFAULT '{}'
        CONSTRAINT pools_paused_types_valid CHECK (
            cardinality(paused_types) <= 256
            AND array_position(paused_types, NULL) IS NULL
            AND array_to_string(paused_types, ' ')
                ~ '^([A-Za-z][A-Za-z0-9_.:-]{0,127}( |$))*$');

ALTER TABLE jobs DROP CONSTRAINT jobs_state_check;
ALTER TABLE jobs ADD CONSTRAINT jobs_state_check
    CHECK (state IN ('queued', 'running', 'waiting', 'paused'));

-- Resuming a type finds its parked jobs; the status counts them.
CREATE INDEX jobs_paused_idx ON jobs (pool, type) WHERE state = 'paused';

-- The advisory lock of one pool's pause (two-key form, apart from the keys' locks).
CREATE FUNCTION jobpool_pause_lock(p_pool text, p_exclusive boolean) RETURNS void
LANGUAGE sql
SET search_path FROM CURRENT
AS $$
    SELECT CASE WHEN p_exclusive THEN pg_advisory_xact_lock(27249, hashtext(p_pool))
                ELSE pg_advisory_xact_lock_shared(27249, hashtext(p_pool)) END
$$;

-- A worker parks claimed, never started attempts of the pool's paused types (fenced
-- like a release; a job asked to cancel is left to the worker, which ends it). VOLATILE
-- SQL: the UPDATE's snapshot is taken after the lock, so it reads the pause in force.
CREATE FUNCTION jobpool_jobs_park(p_pool text, p_owner text, p_ids uuid[])
RETURNS SETOF uuid
LANGUAGE sql
SET search_path FROM CURRENT
AS $$
    SELECT jobpool_pause_lock(p_pool, false);
    UPDATE jobs j
    SET state = 'paused', attempts = j.attempts - 1, started_at = NULL, worker = NULL,
        lease_epoch = NULL
    FROM shard_leases l, pools p
    WHERE j.id = ANY(p_ids) AND j.pool = p_pool AND j.state = 'running'
      AND j.worker = p_owner AND j.cancel_requested_at IS NULL
      AND l.pool = j.pool AND l.shard = j.shard AND l.owner = p_owner
      AND l.epoch = j.lease_epoch
      AND p.name = p_pool AND j.type = ANY(p.paused_types)
    RETURNING j.id;
$$;

-- After a pause change (under the exclusive lock): parked jobs of the types no longer
-- paused go back to the queue. SECURITY DEFINER: the operator, who changes pauses, may
-- not write jobs otherwise.
CREATE FUNCTION jobpool_jobs_unpark(p_pool text) RETURNS bigint
LANGUAGE sql SECURITY DEFINER
SET search_path FROM CURRENT
AS $$
    WITH unparked AS (
        UPDATE jobs j SET state = 'queued'
        FROM pools p
        WHERE j.pool = p_pool AND j.state = 'paused'
          AND p.name = p_pool AND NOT j.type = ANY(p.paused_types)
        RETURNING 1
    )
    SELECT count(*) FROM unparked
$$;

-- A parked job is cancelled at once, like a queued or waiting one.
DROP TRIGGER jobs_cancel_queued ON jobs;
CREATE TRIGGER jobs_cancel_queued
    AFTER UPDATE OF cancel_requested_at ON jobs
    FOR EACH ROW
    WHEN (NEW.state IN ('queued', 'waiting', 'paused') AND NEW.cancel_requested_at IS NOT NULL)
    EXECUTE FUNCTION jobpool_job_cancel_queued();

REVOKE ALL ON FUNCTION jobpool_pause_lock(text, boolean) FROM PUBLIC;
REVOKE ALL ON FUNCTION jobpool_jobs_park(text, text, uuid[]) FROM PUBLIC;
REVOKE ALL ON FUNCTION jobpool_jobs_unpark(text) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION jobpool_pause_lock(text, boolean) TO jobpool_worker, jobpool_operator;
GRANT EXECUTE ON FUNCTION jobpool_jobs_park(text, text, uuid[]) TO jobpool_worker;
GRANT EXECUTE ON FUNCTION jobpool_jobs_unpark(text) TO jobpool_operator;
