-- jobpool schema, version 4: periodic jobs.
--
-- One row per schedule of a pool: its definition (written by the operator from the
-- JobPool spec, `source = 'spec'`, or by a worker from its handler module,
-- `source = 'code'`; a spec schedule overrides a code one of the same name) and its
-- last enqueued tick. Enqueueing a tick moves `last_tick` forward with a compare-and-set
-- in the same statement that inserts the tick's job, so each tick is enqueued exactly
-- once across every replica, even after its job finished (a dedupe key is unique only
-- among unfinished jobs). Ticks before `defined_at` (the creation of the schedule, or
-- the last change of its cron or time zone) never fire.

CREATE TABLE schedules (
    pool             text NOT NULL REFERENCES pools (name) ON DELETE CASCADE,
    name             text NOT NULL CHECK (name ~ '^[A-Za-z][A-Za-z0-9_.:-]{0,127}$'),
    source           text NOT NULL CHECK (source IN ('code', 'spec')),
    cron             text NOT NULL CHECK (char_length(cron) BETWEEN 1 AND 256),
    timezone         text NOT NULL CHECK (char_length(timezone) BETWEEN 1 AND 64),
    tenant           text NOT NULL
                     CHECK (char_length(tenant) BETWEEN 1 AND 128 AND tenant !~ '[[:cntrl:]]'),
    type             text NOT NULL CHECK (type ~ '^[A-Za-z][A-Za-z0-9_.:-]{0,127}$'),
    priority         smallint NOT NULL CHECK (priority BETWEEN 0 AND 3),
    payload          jsonb NOT NULL DEFAULT '{}' CHECK (octet_length(payload::text) <= 131072),
    catch_up         boolean NOT NULL DEFAULT false,
    defined_at       timestamptz NOT NULL DEFAULT now(),
    last_tick        timestamptz,
    last_enqueued_at timestamptz,
    PRIMARY KEY (pool, name)
);

-- Tenant isolation as for jobs: a client reads its tenants' schedules only; workers
-- (who enqueue and declare code schedules) and the operator (spec schedules) reach all.
ALTER TABLE schedules ENABLE ROW LEVEL SECURITY;
CREATE POLICY tenant_isolation ON schedules FOR SELECT TO jobpool_client
    USING (tenant = (SELECT jobpool_current_tenant()));
CREATE POLICY worker_all ON schedules TO jobpool_worker USING (true) WITH CHECK (true);
CREATE POLICY operator_all ON schedules TO jobpool_operator USING (true) WITH CHECK (true);

GRANT SELECT ON schedules TO jobpool_client;
GRANT SELECT, INSERT, UPDATE, DELETE ON schedules TO jobpool_worker, jobpool_operator;
-- A tick's job is inserted by the worker that enqueues it (no worker-owned column).
GRANT INSERT (id, pool, tenant, shard, type, priority, payload, dedupe_key, run_at)
    ON jobs TO jobpool_worker;
