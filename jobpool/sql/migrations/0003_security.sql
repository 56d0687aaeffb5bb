-- jobpool schema, version 3: a tenant model the database enforces, least-privilege
-- roles, and CHECK constraints that refuse bad rows whoever writes them.
--
-- Roles (NOLOGIN groups, created by `jobpool migrate` before this file runs, or by an
-- administrator beforehand; login roles get them with `jobpool grant`):
--
--   jobpool_owner     owns every object; only migrations need it
--   jobpool_worker    claims, runs and ends the jobs of every tenant; leases, heartbeats
--   jobpool_operator  pools and rings, status figures, DLQ retention
--   jobpool_client    submits, follows and cancels the jobs of its own tenants only
--
-- Tenant model: a session acts for the tenant named by its `jobpool.tenant` setting
-- only if its role has the privileges of a role that `jobpool_tenant_roles` maps to
-- that tenant, or to '*' (a "trusted application", which may name any tenant). The
-- setting narrows a session to one of its own tenants; it never widens what a role may
-- reach. Workers and the operator serve every tenant through their own policies.
--
-- Functions below fix their search_path to this schema (then pg_temp, searched last),
-- so that no object a client creates elsewhere can stand in for one of ours.

SELECT set_config('search_path', quote_ident(current_schema()) || ', pg_temp', true);

DO $$
BEGIN
    EXECUTE format('GRANT USAGE, CREATE ON SCHEMA %I TO jobpool_owner', current_schema());
    EXECUTE format(
        'GRANT USAGE ON SCHEMA %I TO jobpool_worker, jobpool_operator, jobpool_client',
        current_schema()
    );
END
$$;

-- -- the tenant map ----------------------------------------------------------------

CREATE TABLE jobpool_tenant_roles (
    tenant  text NOT NULL CHECK (tenant = '*' OR (char_length(tenant) BETWEEN 1 AND 128
                                                  AND tenant !~ '[[:cntrl:]]')),
    role    name NOT NULL,
    PRIMARY KEY (tenant, role)
);

-- A role reads only its own mappings (those of roles whose privileges it has).
ALTER TABLE jobpool_tenant_roles ENABLE ROW LEVEL SECURITY;
CREATE POLICY own_mappings ON jobpool_tenant_roles FOR SELECT
    USING (EXISTS (SELECT 1 FROM pg_roles r
                   WHERE r.rolname = role AND pg_has_role(r.oid, 'USAGE')));

-- The tenant this session may act for: its `jobpool.tenant` setting when the caller's
-- role is mapped to that tenant (or to '*'), else NULL, which matches no row. Policies
-- call it as `(SELECT jobpool_current_tenant())`: evaluated once per statement.
CREATE FUNCTION jobpool_current_tenant() RETURNS text
LANGUAGE sql STABLE
SET search_path FROM CURRENT
AS $$
    SELECT s.tenant
    FROM (SELECT current_setting('jobpool.tenant', true) AS tenant) AS s
    WHERE EXISTS (SELECT 1 FROM jobpool_tenant_roles m WHERE m.tenant IN (s.tenant, '*'))
$$;

-- -- policies ----------------------------------------------------------------------

-- Clients reach their tenants' rows only; workers every row; the operator reads every
-- row and deletes replayed dead letters. A role in none of these groups reaches nothing.

ALTER POLICY tenant_isolation ON jobs TO jobpool_client
    USING (tenant = (SELECT jobpool_current_tenant()))
    WITH CHECK (tenant = (SELECT jobpool_current_tenant()));
ALTER POLICY tenant_isolation ON job_history TO jobpool_client
    USING (tenant = (SELECT jobpool_current_tenant()))
    WITH CHECK (tenant = (SELECT jobpool_current_tenant()));
ALTER POLICY tenant_isolation ON job_dlq TO jobpool_client
    USING (app_id = (SELECT jobpool_current_tenant()))
    WITH CHECK (app_id = (SELECT jobpool_current_tenant()));

CREATE POLICY worker_all ON jobs TO jobpool_worker USING (true) WITH CHECK (true);
CREATE POLICY worker_all ON job_history TO jobpool_worker USING (true) WITH CHECK (true);
CREATE POLICY worker_all ON job_dlq TO jobpool_worker USING (true) WITH CHECK (true);
CREATE POLICY operator_read ON jobs FOR SELECT TO jobpool_operator USING (true);
CREATE POLICY operator_read ON job_history FOR SELECT TO jobpool_operator USING (true);
CREATE POLICY operator_read ON job_dlq FOR SELECT TO jobpool_operator USING (true);
CREATE POLICY operator_purge ON job_dlq FOR DELETE TO jobpool_operator USING (true);
-- Whoever deletes dead letters (a client purging its own, the operator's retention)
-- deletes replayed ones only: an unreplayed entry is work someone still has to see.
CREATE POLICY purge_replayed_only ON job_dlq AS RESTRICTIVE FOR DELETE
    USING (replayed_at IS NOT NULL);

-- -- cancellation ------------------------------------------------------------------

-- A client cancels by setting `cancel_requested_at` on its job (the only column of
-- `jobs` it may update; row-level security decides which jobs it reaches). A queued job
-- then ends at once: this trigger, which runs as the owner, moves it to `job_history`
-- as cancelled. A running job stays flagged for its worker, which reads the flag.
CREATE FUNCTION jobpool_job_cancel_queued() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER
SET search_path FROM CURRENT
AS $$
BEGIN
    DELETE FROM jobs WHERE id = NEW.id;
    INSERT INTO job_history (
        id, pool, tenant, shard, type, priority, state, payload, routing_key, dedupe_key,
        attempts, max_attempts, error_history, request_id, user_id, replay_of, created_at,
        run_at, started_at
    ) VALUES (
        NEW.id, NEW.pool, NEW.tenant, NEW.shard, NEW.type, NEW.priority, 'cancelled',
        NEW.payload, NEW.routing_key, NEW.dedupe_key, NEW.attempts, NEW.max_attempts,
        NEW.error_history, NEW.request_id, NEW.user_id, NEW.replay_of, NEW.created_at,
        NEW.run_at, NEW.started_at
    );
    RETURN NULL;
END
$$;
REVOKE ALL ON FUNCTION jobpool_job_cancel_queued() FROM PUBLIC;

CREATE TRIGGER jobs_cancel_queued
    AFTER UPDATE OF cancel_requested_at ON jobs
    FOR EACH ROW
    WHEN (NEW.state = 'queued' AND NEW.cancel_requested_at IS NOT NULL)
    EXECUTE FUNCTION jobpool_job_cancel_queued();

-- -- rows the database refuses -----------------------------------------------------

-- The client's own validation, again, for rows written by any path. The payload bound
-- is on jsonb's text form, which spaces what the client's compact JSON does not: twice
-- the client's largest allowed limit (8 MiB) covers it.
ALTER TABLE jobs
    ADD CONSTRAINT jobs_pool_valid CHECK (pool ~ '^[a-z0-9]([-a-z0-9]{0,48}[a-z0-9])?$'),
    ADD CONSTRAINT jobs_tenant_valid
        CHECK (char_length(tenant) BETWEEN 1 AND 128 AND tenant !~ '[[:cntrl:]]'),
    ADD CONSTRAINT jobs_type_valid CHECK (type ~ '^[A-Za-z][A-Za-z0-9_.:-]{0,127}$'),
    ADD CONSTRAINT jobs_shard_valid CHECK (shard < 4096),
    ADD CONSTRAINT jobs_payload_size CHECK (octet_length(payload::text) <= 16777216),
    ADD CONSTRAINT jobs_run_at_sane CHECK (
        isfinite(run_at)
        AND run_at >= '1970-01-01 00:00:00+00' AND run_at < '3000-01-01 00:00:00+00'),
    ADD CONSTRAINT jobs_attempts_valid CHECK (attempts >= 0),
    ADD CONSTRAINT jobs_max_attempts_sane CHECK (max_attempts <= 1000),
    ADD CONSTRAINT jobs_keys_valid CHECK (
        char_length(routing_key) BETWEEN 1 AND 512
        AND char_length(dedupe_key) BETWEEN 1 AND 512
        AND char_length(request_id) BETWEEN 1 AND 512
        AND char_length(user_id) BETWEEN 1 AND 512
        AND char_length(traceparent) <= 512),
    ADD CONSTRAINT jobs_worker_owned CHECK (
        state = 'running' OR (worker IS NULL AND lease_epoch IS NULL));

-- -- ownership and privileges ------------------------------------------------------

ALTER TABLE pools OWNER TO jobpool_owner;
ALTER TABLE jobs OWNER TO jobpool_owner;
ALTER TABLE job_history OWNER TO jobpool_owner;
ALTER TABLE job_dlq OWNER TO jobpool_owner;
ALTER TABLE shard_leases OWNER TO jobpool_owner;
ALTER TABLE workers OWNER TO jobpool_owner;
ALTER TABLE lease_history OWNER TO jobpool_owner;
ALTER TABLE jobpool_migrations OWNER TO jobpool_owner;
ALTER TABLE jobpool_tenant_roles OWNER TO jobpool_owner;
ALTER FUNCTION jobpool_dlq_purge(text, interval, text) OWNER TO jobpool_owner;
ALTER FUNCTION jobpool_current_tenant() OWNER TO jobpool_owner;
ALTER FUNCTION jobpool_job_cancel_queued() OWNER TO jobpool_owner;

REVOKE ALL ON pools, jobs, job_history, job_dlq FROM jobpool_client;

-- Clients: read their tenants' rows; insert jobs without any worker-owned column;
-- request a cancel; mark a dead letter replayed; purge replayed dead letters.
GRANT SELECT ON pools, jobs, job_history, job_dlq, jobpool_tenant_roles TO jobpool_client;
GRANT INSERT (id, pool, tenant, shard, type, priority, payload, routing_key, dedupe_key,
              run_at, max_attempts, duration, request_id, user_id, traceparent, replay_of)
    ON jobs TO jobpool_client;
GRANT UPDATE (cancel_requested_at) ON jobs TO jobpool_client;
GRANT UPDATE (replayed_at), DELETE ON job_dlq TO jobpool_client;

-- Workers: every tenant's jobs of their pools, their own leases and heartbeats.
GRANT SELECT ON pools, jobpool_migrations TO jobpool_worker;
GRANT SELECT, UPDATE, DELETE ON jobs TO jobpool_worker;
GRANT SELECT, INSERT ON job_history, job_dlq TO jobpool_worker;
GRANT SELECT, INSERT, UPDATE ON shard_leases TO jobpool_worker;
GRANT SELECT, INSERT, UPDATE, DELETE ON workers, lease_history TO jobpool_worker;

-- The operator: pools and rings (a new pool's lease rows), status, DLQ retention.
GRANT SELECT, INSERT, UPDATE ON pools TO jobpool_operator;
GRANT SELECT, INSERT ON shard_leases TO jobpool_operator;
GRANT SELECT ON jobs, job_history, workers, lease_history, jobpool_migrations
    TO jobpool_operator;
GRANT SELECT, DELETE ON job_dlq TO jobpool_operator;

GRANT EXECUTE ON FUNCTION jobpool_dlq_purge(text, interval, text)
    TO jobpool_client, jobpool_operator;

-- A worker ANALYZEs `jobs` when it never was (Postgres 17 has the MAINTAIN privilege;
-- before it, only the owner can, and the worker only logs that it could not).
DO $$
BEGIN
    IF current_setting('server_version_num')::int >= 170000 THEN
        GRANT MAINTAIN ON jobs TO jobpool_worker;
    END IF;
END
$$;
