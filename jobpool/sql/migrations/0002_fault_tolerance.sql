-- jobpool schema, version 2: auditable handovers, adoptable orphans, a per-lane timer.

-- Every take of a shard lease, kept for a while (takes prune their shard's old rows):
-- who held the shard under which epoch, when and why it was taken (`free`, `expired`,
-- `superseded` by a new incarnation of the same ordinal, `adopted` from a missing
-- ordinal), and when and how the holding ended (`released`, `expired` or `superseded`:
-- the latter two are written by the take that ended it).
CREATE TABLE lease_history (
    pool          text NOT NULL,
    shard         integer NOT NULL,
    epoch         bigint NOT NULL,
    owner         text NOT NULL,
    ordinal       integer NOT NULL,
    taken_at      timestamptz NOT NULL DEFAULT now(),
    taken_because text NOT NULL
                  CHECK (taken_because IN ('free', 'expired', 'superseded', 'adopted')),
    ended_at      timestamptz,
    ended_because text CHECK (ended_because IN ('released', 'expired', 'superseded')),
    PRIMARY KEY (pool, shard, epoch)
);

-- A lease row for every shard of every pool, so that a shard nobody ever took is visible
-- (and adoptable) like one whose owner died: `expires_at` is when it became free.
INSERT INTO shard_leases (pool, shard, expires_at)
SELECT p.name, s, now()
FROM pools p CROSS JOIN LATERAL generate_series(0, p.shards - 1) AS s
ON CONFLICT (pool, shard) DO NOTHING;

UPDATE shard_leases SET expires_at = now() WHERE owner IS NULL AND expires_at = '-infinity';
ALTER TABLE shard_leases ALTER COLUMN expires_at SET DEFAULT now();

-- The claim timer looks up the earliest queued job of the lanes that came back empty,
-- per shard: the lane must lead the index, or a busy lane's due backlog is scanned first.
DROP INDEX jobs_due_idx;
CREATE INDEX jobs_due_idx ON jobs (pool, shard, priority, run_at) WHERE state = 'queued';
