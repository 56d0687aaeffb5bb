-- jobpool schema, version 1.
--
-- Hot path: `jobs` holds only unfinished jobs (queued or running). Finished jobs move
-- to `job_history` (succeeded, cancelled, dead) and dead ones also get a `job_dlq` row,
-- so the claim index stays as small as the live backlog.

CREATE TABLE pools (
    name          text PRIMARY KEY CHECK (name ~ '^[a-z0-9]([-a-z0-9]{0,48}[a-z0-9])?$'),
    shards        integer NOT NULL CHECK (shards BETWEEN 1 AND 4096),
    replicas      integer NOT NULL DEFAULT 1 CHECK (replicas >= 0),
    ring_version  bigint NOT NULL DEFAULT 1,
    created_at    timestamptz NOT NULL DEFAULT now(),
    updated_at    timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE jobs (
    id                   uuid PRIMARY KEY,
    pool                 text NOT NULL,  -- no foreign key: its check costs a third of an insert
    tenant               text NOT NULL,
    shard                integer NOT NULL CHECK (shard >= 0),
    type                 text NOT NULL,
    priority             smallint NOT NULL CHECK (priority BETWEEN 0 AND 3),
    state                text NOT NULL DEFAULT 'queued' CHECK (state IN ('queued', 'running')),
    payload              jsonb NOT NULL,
    routing_key          text,
    dedupe_key           text,
    run_at               timestamptz NOT NULL DEFAULT now(),
    attempts             integer NOT NULL DEFAULT 0,
    max_attempts         integer CHECK (max_attempts >= 1),
    duration             text NOT NULL DEFAULT 'short' CHECK (duration IN ('short', 'long')),
    progress             double precision CHECK (progress BETWEEN 0 AND 1),
    progress_message     text,
    progress_at          timestamptz,
    error_history        jsonb NOT NULL DEFAULT '[]'
                         CHECK (jsonb_typeof(error_history) = 'array'),
    cancel_requested_at  timestamptz,
    request_id           text,
    user_id              text,
    traceparent          text,
    replay_of            bigint,
    created_at           timestamptz NOT NULL DEFAULT now(),
    started_at           timestamptz,
    worker               text,
    lease_epoch          bigint
) WITH (
    fillfactor = 85,
    autovacuum_vacuum_scale_factor = 0.01,
    autovacuum_vacuum_threshold = 1000,
    autovacuum_analyze_scale_factor = 0.02,
    autovacuum_vacuum_cost_delay = 0
);

-- The claim query: per shard and priority lane, the tenants with queued jobs (a loose
-- index scan) and each tenant's oldest jobs by run_at.
CREATE INDEX jobs_claim_idx ON jobs (pool, shard, priority, tenant, run_at, id)
    WHERE state = 'queued';
-- The claim timer: when the earliest delayed job of a shard becomes due.
CREATE INDEX jobs_due_idx ON jobs (pool, shard, run_at) WHERE state = 'queued';
-- Running jobs of a shard: rescue after a lease take-over, drain before release.
CREATE INDEX jobs_running_idx ON jobs (pool, shard) WHERE state = 'running';
-- Dedupe: one unfinished job per (pool, tenant, dedupe_key).
CREATE UNIQUE INDEX jobs_dedupe_idx ON jobs (pool, tenant, dedupe_key) WHERE dedupe_key IS NOT NULL;

CREATE TABLE job_history (
    id              uuid PRIMARY KEY,
    pool            text NOT NULL,
    tenant          text NOT NULL,
    shard           integer NOT NULL,
    type            text NOT NULL,
    priority        smallint NOT NULL,
    state           text NOT NULL CHECK (state IN ('succeeded', 'cancelled', 'dead')),
    payload         jsonb NOT NULL,
    routing_key     text,
    dedupe_key      text,
    attempts        integer NOT NULL,
    max_attempts    integer,
    result          jsonb,
    progress        double precision,
    progress_message text,
    progress_at     timestamptz,
    error_history   jsonb NOT NULL DEFAULT '[]' CHECK (jsonb_typeof(error_history) = 'array'),
    request_id      text,
    user_id         text,
    replay_of       bigint,
    created_at      timestamptz NOT NULL,
    run_at          timestamptz,
    started_at      timestamptz,
    finished_at     timestamptz NOT NULL DEFAULT now()
);

-- Retention pruning and throughput figures scan by finish time.
CREATE INDEX job_history_finished_idx ON job_history (pool, finished_at);

CREATE TABLE job_dlq (
    id               bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    pool             text NOT NULL,
    original_job_id  uuid NOT NULL,
    app_id           text NOT NULL,
    type             text NOT NULL,
    payload          jsonb NOT NULL,
    priority         smallint NOT NULL DEFAULT 1,
    routing_key      text,
    max_attempts     integer,
    duration         text NOT NULL DEFAULT 'short',
    error_reason     text NOT NULL,
    attempts         integer NOT NULL,
    error_history    jsonb NOT NULL DEFAULT '[]'
                     CHECK (jsonb_typeof(error_history) = 'array'),
    dlq_at           timestamptz NOT NULL DEFAULT now(),
    replayed_at      timestamptz,
    request_id       text,
    user_id          text
);

-- Pending (unreplayed) entries, paged by id, optionally filtered by type.
CREATE INDEX job_dlq_pending_idx ON job_dlq (pool, app_id, id) WHERE replayed_at IS NULL;
CREATE INDEX job_dlq_pending_type_idx ON job_dlq (pool, app_id, type, id) WHERE replayed_at IS NULL;
-- Purge of replayed entries by age.
CREATE INDEX job_dlq_replayed_idx ON job_dlq (pool, replayed_at) WHERE replayed_at IS NOT NULL;

CREATE TABLE shard_leases (
    pool        text NOT NULL REFERENCES pools (name) ON DELETE CASCADE,
    shard       integer NOT NULL CHECK (shard >= 0),
    owner       text,
    ordinal     integer,
    epoch       bigint NOT NULL DEFAULT 0,
    expires_at  timestamptz NOT NULL DEFAULT '-infinity',
    PRIMARY KEY (pool, shard)
);

CREATE TABLE workers (
    pool          text NOT NULL REFERENCES pools (name) ON DELETE CASCADE,
    ordinal       integer NOT NULL CHECK (ordinal >= 0),
    incarnation   text NOT NULL,
    started_at    timestamptz NOT NULL DEFAULT now(),
    heartbeat_at  timestamptz NOT NULL DEFAULT now(),
    shards        integer[] NOT NULL DEFAULT '{}',
    running       integer NOT NULL DEFAULT 0,
    succeeded     bigint NOT NULL DEFAULT 0,
    failed        bigint NOT NULL DEFAULT 0,
    PRIMARY KEY (pool, ordinal)
);

-- Purge replayed dead-letter entries older than `p_older_than`, of one tenant
-- (`p_app_id`) or, with NULL, of every tenant; returns how many went. SECURITY INVOKER
-- (the default): row-level security still limits an application role to its tenant.
CREATE FUNCTION jobpool_dlq_purge(p_pool text, p_older_than interval, p_app_id text)
RETURNS bigint
LANGUAGE sql AS $$
    WITH purged AS (
        DELETE FROM job_dlq
        WHERE pool = p_pool
          AND (p_app_id IS NULL OR app_id = p_app_id)
          AND replayed_at IS NOT NULL
          AND replayed_at < now() - p_older_than
        RETURNING 1
    )
    SELECT count(*) FROM purged
$$;

-- Tenant isolation. Application roles (members of jobpool_client) see only the rows of
-- the tenant named by the `jobpool.tenant` setting of their session or transaction;
-- with no setting they see nothing. The schema owner (migrations, workers, operator)
-- is exempt, as table owners are, because workers serve every tenant of a pool.
ALTER TABLE jobs ENABLE ROW LEVEL SECURITY;
ALTER TABLE job_history ENABLE ROW LEVEL SECURITY;
ALTER TABLE job_dlq ENABLE ROW LEVEL SECURITY;

CREATE POLICY tenant_isolation ON jobs
    USING (tenant = current_setting('jobpool.tenant', true))
    WITH CHECK (tenant = current_setting('jobpool.tenant', true));
CREATE POLICY tenant_isolation ON job_history
    USING (tenant = current_setting('jobpool.tenant', true))
    WITH CHECK (tenant = current_setting('jobpool.tenant', true));
CREATE POLICY tenant_isolation ON job_dlq
    USING (app_id = current_setting('jobpool.tenant', true))
    WITH CHECK (app_id = current_setting('jobpool.tenant', true));

DO $$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'jobpool_client') THEN
        CREATE ROLE jobpool_client NOLOGIN;
    END IF;
END
$$;

GRANT SELECT ON pools TO jobpool_client;
GRANT SELECT, INSERT, UPDATE, DELETE ON jobs, job_history, job_dlq TO jobpool_client;
GRANT EXECUTE ON FUNCTION jobpool_dlq_purge(text, interval, text) TO jobpool_client;
