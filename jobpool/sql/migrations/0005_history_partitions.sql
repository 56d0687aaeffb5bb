-- jobpool schema, version 5: job history partitioned by finish time and kept for a
-- retention per pool; clients may discard their tenants' dead letters.
--
-- History. `job_history` becomes partitioned by range of `finished_at`, one partition
-- per UTC day (`job_history_YYYYMMDD`, the range [day, day + 1)), so that retention
-- drops whole partitions: no mass DELETE, no VACUUM churn. Besides the days:
--
--   job_history_until_YYYYMMDD  the table as it was before this migration, attached
--                               whole (no row is copied) as the range up to that day,
--                               the day after the migration; dropped like a day once
--                               its range is past retention
--   job_history_default         the DEFAULT partition: a job finishing on a day that
--                               has no partition yet (nothing created it: the operator
--                               was down for days) lands here, so finishing never fails
--                               for lack of a partition. Maintenance moves its rows into
--                               their day's partition (a range cannot be attached while
--                               the default holds rows of it).
--
-- Retention is per pool (`pools.history_retention`, 7 days by default) but the table is
-- shared by every pool: a day is dropped once it is past the LONGEST retention of any
-- pool; a pool keeping its history for less has its rows of the days in between
-- deleted (a DELETE per pool, on (pool, finished_at), only while pools disagree).
-- `pools.history_pruned_before`: every finished job of the pool that ended before it is
-- gone, which lets `status` tell a job whose history was dropped from one that never was.
--
-- Partitions are owned by jobpool_owner and granted to nobody (row-level security is
-- enabled on them too): every role reaches history through `job_history`, whose
-- privileges and policies are those of version 3; a query naming a partition is refused.
-- Creating, attaching and dropping partitions needs the owner: the operator (and
-- `jobpool history prune`) call `jobpool_history_maintain`, a SECURITY DEFINER function.

SELECT set_config('search_path', quote_ident(current_schema()) || ', pg_temp', true);

-- -- retention per pool ------------------------------------------------------------

ALTER TABLE pools
    ADD COLUMN history_retention interval NOT NULL DEFAULT interval '7 days'
        CHECK (history_retention BETWEEN interval '1 hour' AND interval '3650 days'),
    ADD COLUMN history_pruned_before timestamptz;

-- -- the partitioned table, the history so far as its first partition ----------------

ALTER TABLE job_history DROP CONSTRAINT job_history_pkey;
ALTER INDEX job_history_finished_idx RENAME TO job_history_unpartitioned_finished_idx;
ALTER TABLE job_history RENAME TO job_history_unpartitioned;
DROP POLICY tenant_isolation ON job_history_unpartitioned;
DROP POLICY worker_all ON job_history_unpartitioned;
DROP POLICY operator_read ON job_history_unpartitioned;
REVOKE ALL ON job_history_unpartitioned FROM jobpool_client, jobpool_worker, jobpool_operator;

CREATE TABLE job_history (
    id              uuid NOT NULL,
    pool            text NOT NULL,
    tenant          text NOT NULL,
    shard           integer NOT NULL,
    type            text NOT NULL,
    priority        smallint NOT NULL,
    state           text NOT NULL
                    CONSTRAINT job_history_state_check
                    CHECK (state IN ('succeeded', 'cancelled', 'dead')),
    payload         jsonb NOT NULL,
    routing_key     text,
    dedupe_key      text,
    attempts        integer NOT NULL,
    max_attempts    integer,
    result          jsonb,
    progress        double precision,
    progress_message text,
    progress_at     timestamptz,
    error_history   jsonb NOT NULL DEFAULT '[]'
                    CONSTRAINT job_history_error_history_check
                    CHECK (jsonb_typeof(error_history) = 'array'),
    request_id      text,
    user_id         text,
    replay_of       bigint,
    created_at      timestamptz NOT NULL,
    run_at          timestamptz,
    started_at      timestamptz,
    finished_at     timestamptz NOT NULL DEFAULT now(),
    -- The checks are named as those of the table before (attaching it matches them by
    -- name). A unique key must hold the partition key. A job's status is looked up by id and
    -- a lower bound of finished_at (its id's time), so only the days since it was
    -- created are probed.
    PRIMARY KEY (id, finished_at)
) PARTITION BY RANGE (finished_at);

-- Retention of pools keeping less than the longest, and throughput figures.
CREATE INDEX job_history_finished_idx ON job_history (pool, finished_at);

CREATE TABLE job_history_default PARTITION OF job_history DEFAULT;
ALTER TABLE job_history_default ENABLE ROW LEVEL SECURITY;

DO $$
DECLARE
    v_until date := (now() AT TIME ZONE 'UTC')::date + 1;
    v_name text := 'job_history_until_' || to_char(v_until, 'YYYYMMDD');
BEGIN
    EXECUTE format('ALTER TABLE job_history_unpartitioned RENAME TO %I', v_name);
    EXECUTE format('ALTER INDEX job_history_unpartitioned_finished_idx RENAME TO %I',
                   v_name || '_pool_finished_at_idx');
    EXECUTE format('ALTER TABLE job_history ATTACH PARTITION %I FOR VALUES FROM (MINVALUE) TO (%L)',
                   v_name, v_until::timestamp AT TIME ZONE 'UTC');
END
$$;

ALTER TABLE job_history ENABLE ROW LEVEL SECURITY;
CREATE POLICY tenant_isolation ON job_history TO jobpool_client
    USING (tenant = (SELECT jobpool_current_tenant()))
    WITH CHECK (tenant = (SELECT jobpool_current_tenant()));
CREATE POLICY worker_all ON job_history TO jobpool_worker USING (true) WITH CHECK (true);
CREATE POLICY operator_read ON job_history FOR SELECT TO jobpool_operator USING (true);

GRANT SELECT ON job_history TO jobpool_client, jobpool_operator;
GRANT SELECT, INSERT ON job_history TO jobpool_worker;

-- The partitions and the range each holds, from their names (the catalog is the only
-- record): `starts_at` NULL is "from the beginning". The default partition is not listed.
CREATE VIEW job_history_partitions AS
SELECT c.relname::text AS name,
       CASE WHEN m[1] IS NULL THEN to_date(m[2], 'YYYYMMDD')::timestamp AT TIME ZONE 'UTC'
       END AS starts_at,
       (to_date(m[2], 'YYYYMMDD') + CASE WHEN m[1] IS NULL THEN 1 ELSE 0 END)::timestamp
           AT TIME ZONE 'UTC' AS ends_at,
       greatest(c.reltuples, 0)::bigint AS rows_estimate
FROM pg_inherits i
JOIN pg_class c ON c.oid = i.inhrelid
CROSS JOIN LATERAL regexp_match(c.relname, '^job_history_(until_)?([0-9]{8})$') AS m
WHERE i.inhparent = 'job_history'::regclass AND m IS NOT NULL;

GRANT SELECT ON job_history_partitions TO jobpool_operator;

-- -- maintenance -------------------------------------------------------------------

-- One pass of history maintenance, as of `p_now`:
--   1. a partition for each day from p_now's to `p_days_ahead` days later, and for each
--      day that has rows in the default partition (moved into it before it is attached);
--   2. drop the partitions whose range ended before p_now minus the longest retention
--      of any pool (7 days when there is no pool);
--   3. delete the rows of pools keeping their history for less, past their retention.
-- New partitions are created detached, then attached: ATTACH takes a SHARE UPDATE
-- EXCLUSIVE lock on `job_history`, which lets jobs finish meanwhile (CREATE TABLE ...
-- PARTITION OF would block them). A DROP needs an ACCESS EXCLUSIVE lock: it waits at
-- most `lock_timeout`, else that partition is left for the next pass (`skipped`).
-- Concurrent passes run one after the other (an advisory lock).
-- The clock is a parameter for tests and administrators: only the owner may call this
-- function; the operator calls jobpool_history_maintain, which passes now().
CREATE FUNCTION jobpool_history_maintain_at(p_now timestamptz, p_days_ahead integer)
RETURNS TABLE (created integer, dropped integer, deleted bigint, skipped integer)
LANGUAGE plpgsql SECURITY DEFINER
SET search_path FROM CURRENT
SET lock_timeout TO '2s'
AS $$
DECLARE
    v_today date := (p_now AT TIME ZONE 'UTC')::date;
    v_day date;
    v_name text;
    v_starts timestamptz;
    v_ends timestamptz;
    v_longest interval;
    v_part record;
    v_pool record;
    v_rows bigint;
BEGIN
    IF p_days_ahead IS NULL OR p_days_ahead NOT BETWEEN 0 AND 31 THEN
        RAISE EXCEPTION 'days ahead must be from 0 to 31, got %', p_days_ahead
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    created := 0; dropped := 0; deleted := 0; skipped := 0;
    PERFORM pg_advisory_xact_lock(7669456925480676424);  -- ASCII "jobpoolH"

    FOR v_day IN
        SELECT v_today + ahead FROM generate_series(0, p_days_ahead) AS ahead
        UNION
        SELECT DISTINCT (finished_at AT TIME ZONE 'UTC')::date FROM job_history_default
        ORDER BY 1
    LOOP
        v_starts := v_day::timestamp AT TIME ZONE 'UTC';
        v_ends := (v_day + 1)::timestamp AT TIME ZONE 'UTC';
        CONTINUE WHEN EXISTS (
            SELECT 1 FROM job_history_partitions p
            WHERE coalesce(p.starts_at <= v_starts, true) AND p.ends_at > v_starts);
        v_name := 'job_history_' || to_char(v_day, 'YYYYMMDD');
        -- No row may reach the default partition between the move and the attach.
        LOCK TABLE job_history_default IN EXCLUSIVE MODE;
        EXECUTE format('CREATE TABLE %I (LIKE job_history INCLUDING DEFAULTS INCLUDING CONSTRAINTS)',
                       v_name);
        EXECUTE format('ALTER TABLE %I ENABLE ROW LEVEL SECURITY', v_name);
        EXECUTE format('WITH moved AS (DELETE FROM job_history_default'
                       ' WHERE finished_at >= $1 AND finished_at < $2 RETURNING *)'
                       ' INSERT INTO %I SELECT * FROM moved', v_name)
            USING v_starts, v_ends;
        EXECUTE format('ALTER TABLE job_history ATTACH PARTITION %I FOR VALUES FROM (%L) TO (%L)',
                       v_name, v_starts, v_ends);
        created := created + 1;
    END LOOP;

    SELECT coalesce(max(history_retention), interval '7 days') INTO v_longest FROM pools;
    FOR v_part IN
        SELECT name, ends_at FROM job_history_partitions
        WHERE ends_at <= p_now - v_longest ORDER BY ends_at
    LOOP
        BEGIN
            EXECUTE format('DROP TABLE %I', v_part.name);
            UPDATE pools SET history_pruned_before = greatest(history_pruned_before, v_part.ends_at);
            dropped := dropped + 1;
        EXCEPTION WHEN lock_not_available THEN
            skipped := skipped + 1;
        END;
    END LOOP;

    FOR v_pool IN
        SELECT name, history_retention FROM pools WHERE history_retention < v_longest ORDER BY name
    LOOP
        DELETE FROM job_history
        WHERE pool = v_pool.name AND finished_at < p_now - v_pool.history_retention;
        GET DIAGNOSTICS v_rows = ROW_COUNT;
        deleted := deleted + v_rows;
        UPDATE pools
        SET history_pruned_before = greatest(history_pruned_before, p_now - history_retention)
        WHERE name = v_pool.name;
    END LOOP;
    RETURN NEXT;
END
$$;

CREATE FUNCTION jobpool_history_maintain(p_days_ahead integer)
RETURNS TABLE (created integer, dropped integer, deleted bigint, skipped integer)
LANGUAGE sql SECURITY DEFINER
SET search_path FROM CURRENT
AS $$
    SELECT * FROM jobpool_history_maintain_at(now(), p_days_ahead)
$$;

REVOKE ALL ON FUNCTION jobpool_history_maintain_at(timestamptz, integer) FROM PUBLIC;
REVOKE ALL ON FUNCTION jobpool_history_maintain(integer) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION jobpool_history_maintain(integer) TO jobpool_operator;

-- The coming days' partitions, now.
SELECT * FROM jobpool_history_maintain_at(now(), 3);

-- -- discarding dead letters -------------------------------------------------------

-- A client may now delete its tenants' unreplayed entries too (`dlq discard`); row-level
-- security still limits it to its tenants. The operator's retention keeps deleting
-- replayed entries only: an unreplayed entry is work someone still has to see.
ALTER POLICY purge_replayed_only ON job_dlq TO jobpool_operator;
