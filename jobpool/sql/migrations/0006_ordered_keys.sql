-- jobpool schema, version 6: jobs with the same key run one at a time, in submit order.
--
-- Jobs that share a `key` (routing_key) within a pool and tenant form a FIFO queue, like
-- SQS FIFO message groups: only its head is `queued` or `running`; the others wait in
-- the state `waiting`, outside the claim index, so they cost a claim nothing. A head
-- that retries stays the head (its successors keep waiting); when it leaves `jobs` —
-- succeeded, dead (into the DLQ) or cancelled — the next one by `key_seq` becomes
-- `queued` in the same transaction, and the shard's workers are woken.
--
-- Both sides take a transaction-level advisory lock on the key, so an insert and the
-- head's departure cannot miss each other: the insert sees the head still there (and
-- waits), or gone (and becomes the head); the departure sees every committed successor.
-- A transaction that enqueues a keyed job holds its key's lock until it ends: keep it
-- short (the key's head cannot be completed meanwhile).

ALTER TABLE jobs DROP CONSTRAINT jobs_state_check;
ALTER TABLE jobs ADD CONSTRAINT jobs_state_check
    CHECK (state IN ('queued', 'running', 'waiting'));

CREATE SEQUENCE jobs_key_seq;
ALTER TABLE jobs ADD COLUMN key_seq bigint;
ALTER SEQUENCE jobs_key_seq OWNED BY jobs.key_seq;

-- The jobs of a key in submit order: who is ahead of a new job, and who is next.
CREATE INDEX jobs_key_idx ON jobs (pool, tenant, routing_key, key_seq)
    WHERE routing_key IS NOT NULL;

-- Jobs queued before this version: number them by submit time, and let only the first
-- of each key stay queued (one already running keeps running).
UPDATE jobs j SET key_seq = n.seq
FROM (SELECT id, row_number() OVER (ORDER BY created_at, id) AS seq
      FROM jobs WHERE routing_key IS NOT NULL) AS n
WHERE j.id = n.id;
SELECT setval('jobs_key_seq', coalesce((SELECT max(key_seq) FROM jobs), 0) + 1, false);
UPDATE jobs j SET state = 'waiting'
WHERE j.routing_key IS NOT NULL AND j.state = 'queued'
  AND EXISTS (SELECT 1 FROM jobs p
              WHERE p.pool = j.pool AND p.tenant = j.tenant
                AND p.routing_key = j.routing_key AND p.key_seq < j.key_seq);

-- The advisory lock of one key (the two-key form: apart from the migrator's lock).
CREATE FUNCTION jobpool_key_lock(p_pool text, p_tenant text, p_key text) RETURNS void
LANGUAGE sql
SET search_path FROM CURRENT
AS $$
    SELECT pg_advisory_xact_lock(27248, hashtext(p_pool || '/' || p_tenant || '/' || p_key))
$$;

-- Before a keyed job is inserted: number it, and make it wait if its key has jobs.
CREATE FUNCTION jobpool_job_key_enqueue() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER
SET search_path FROM CURRENT
AS $$
BEGIN
    IF current_setting('transaction_isolation') <> 'read committed' THEN
        RAISE EXCEPTION 'jobs with a key must be enqueued in a READ COMMITTED transaction '
            '(this one is %)', current_setting('transaction_isolation')
            USING ERRCODE = 'invalid_transaction_state';
    END IF;
    PERFORM jobpool_key_lock(NEW.pool, NEW.tenant, NEW.routing_key);
    NEW.key_seq := nextval('jobs_key_seq');
    IF EXISTS (SELECT 1 FROM jobs
               WHERE pool = NEW.pool AND tenant = NEW.tenant
                 AND routing_key = NEW.routing_key) THEN
        NEW.state := 'waiting';
    END IF;
    RETURN NEW;
END
$$;

CREATE TRIGGER jobs_key_enqueue
    BEFORE INSERT ON jobs
    FOR EACH ROW
    WHEN (NEW.routing_key IS NOT NULL)
    EXECUTE FUNCTION jobpool_job_key_enqueue();

-- After a key's head left `jobs`: the next job of the key becomes queued, and the
-- workers of its shard are woken (the worker channel is `jp:<pool>`).
CREATE FUNCTION jobpool_job_key_next() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER
SET search_path FROM CURRENT
AS $$
DECLARE
    next_shard integer;
BEGIN
    PERFORM jobpool_key_lock(OLD.pool, OLD.tenant, OLD.routing_key);
    UPDATE jobs SET state = 'queued'
    WHERE id = (SELECT id FROM jobs
                WHERE pool = OLD.pool AND tenant = OLD.tenant
                  AND routing_key = OLD.routing_key AND state = 'waiting'
                ORDER BY key_seq
                LIMIT 1)
    RETURNING shard INTO next_shard;
    IF FOUND THEN
        PERFORM pg_notify('jp:' || OLD.pool, next_shard::text);
    END IF;
    RETURN NULL;
END
$$;

CREATE TRIGGER jobs_key_next
    AFTER DELETE ON jobs
    FOR EACH ROW
    WHEN (OLD.routing_key IS NOT NULL AND OLD.state <> 'waiting')
    EXECUTE FUNCTION jobpool_job_key_next();

-- A waiting job is cancelled at once, like a queued one.
DROP TRIGGER jobs_cancel_queued ON jobs;
CREATE TRIGGER jobs_cancel_queued
    AFTER UPDATE OF cancel_requested_at ON jobs
    FOR EACH ROW
    WHEN (NEW.state IN ('queued', 'waiting') AND NEW.cancel_requested_at IS NOT NULL)
    EXECUTE FUNCTION jobpool_job_cancel_queued();

REVOKE ALL ON FUNCTION jobpool_job_key_enqueue() FROM PUBLIC;
REVOKE ALL ON FUNCTION jobpool_job_key_next() FROM PUBLIC;
GRANT EXECUTE ON FUNCTION jobpool_key_lock(text, text, text)
    TO jobpool_client, jobpool_worker, jobpool_operator;
