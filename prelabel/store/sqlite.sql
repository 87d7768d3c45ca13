-- The SQLite store's schema and queries. Each query starts with "-- name: NAME"; parameters are named
-- (:job_id), the same as postgres.sql's. Every write transaction is BEGIN IMMEDIATE: it holds the
-- database's write lock from its start, so no query here needs to lock rows (lock_job and fence are
-- plain reads); postgres.sql says, query by query, what it locks instead.

-- name: schema
CREATE TABLE IF NOT EXISTS jobs (
    id TEXT PRIMARY KEY,
    name TEXT NOT NULL,
    spec TEXT NOT NULL,
    job_file TEXT,
    input_sha256 TEXT NOT NULL,
    prompt_version TEXT NOT NULL,
    status TEXT NOT NULL DEFAULT 'queued',
    created_at REAL NOT NULL,
    updated_at REAL NOT NULL,
    spent_tokens INTEGER NOT NULL DEFAULT 0,
    spent_cost REAL NOT NULL DEFAULT 0,
    simulated INTEGER NOT NULL DEFAULT 0  -- made for `run --simulate`: only the simulator answers it
);
CREATE TABLE IF NOT EXISTS items (
    job_id TEXT NOT NULL,
    seq INTEGER NOT NULL,
    item_id TEXT NOT NULL,
    line INTEGER NOT NULL,
    text TEXT NOT NULL,
    state TEXT NOT NULL DEFAULT 'pending',
    lease_owner TEXT,
    lease_expires REAL,
    attempts INTEGER NOT NULL DEFAULT 0,
    priority REAL,
    result TEXT,              -- what a unit without drafts reports (an augment unit's counts)
    kind TEXT NOT NULL DEFAULT 'label',  -- label | augment | variant: what the worker does with it
    parent_seq INTEGER,       -- the item it was made from (augment units, variants)
    payload TEXT,             -- JSON the worker needs for it (the step; the carried label)
    PRIMARY KEY (job_id, seq)
);
CREATE UNIQUE INDEX IF NOT EXISTS items_item_id ON items (job_id, item_id);
-- One row per draft: most items make one; instruction generation makes several.
CREATE TABLE IF NOT EXISTS drafts (
    job_id TEXT NOT NULL,
    seq INTEGER NOT NULL,
    idx INTEGER NOT NULL,
    priority REAL NOT NULL,
    record TEXT NOT NULL,
    PRIMARY KEY (job_id, seq, idx)
);
CREATE INDEX IF NOT EXISTS drafts_review ON drafts (job_id, priority DESC, seq, idx);
CREATE INDEX IF NOT EXISTS items_owner ON items (lease_owner) WHERE lease_owner IS NOT NULL;
CREATE TABLE IF NOT EXISTS input_errors (
    job_id TEXT NOT NULL,
    line INTEGER NOT NULL,
    field TEXT,
    message TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS input_errors_job ON input_errors (job_id, line);
CREATE TABLE IF NOT EXISTS usage (
    job_id TEXT NOT NULL,
    seq INTEGER NOT NULL,
    at REAL NOT NULL,
    model TEXT NOT NULL,
    prompt_tokens INTEGER NOT NULL,
    completion_tokens INTEGER NOT NULL,
    cost_usd REAL NOT NULL,
    cached INTEGER NOT NULL,
    cached_prompt_tokens INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS usage_job ON usage (job_id);
CREATE TABLE IF NOT EXISTS cache (
    key TEXT PRIMARY KEY,
    response TEXT NOT NULL,
    created_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS runs (
    job_id TEXT NOT NULL,
    owner TEXT NOT NULL,
    started REAL NOT NULL,
    ended REAL NOT NULL,
    requests INTEGER NOT NULL,
    retries INTEGER NOT NULL,
    rate_limited INTEGER NOT NULL,
    server_errors INTEGER NOT NULL,
    timeouts INTEGER NOT NULL,
    cache_hits INTEGER NOT NULL,
    wall_s REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS budget_holds (
    job_id TEXT NOT NULL,
    owner TEXT NOT NULL,
    tokens INTEGER NOT NULL,
    cost REAL NOT NULL,
    expires REAL NOT NULL,
    PRIMARY KEY (job_id, owner)
);
CREATE TABLE IF NOT EXISTS spool (
    path TEXT NOT NULL,
    sha256 TEXT NOT NULL,
    job_id TEXT,
    error TEXT,
    at REAL NOT NULL,
    inputs TEXT,              -- JSON {path: [size, mtime_ns, ctime_ns] | null} of the files a failed job names
    PRIMARY KEY (path, sha256)
);
-- A job's input being read in: who reads it and how far it got. Each batch of items moves ``line``
-- in its own transaction, so a reader killed at any point leaves an exact place to go on from.
CREATE TABLE IF NOT EXISTS ingest (
    job_id TEXT PRIMARY KEY,
    owner TEXT,               -- host:pid:nonce of the reader; NULL: nobody (an old store's, or given up)
    line INTEGER NOT NULL,    -- every input line up to this one is stored (as an item or an input error)
    next_seq INTEGER NOT NULL,
    beat REAL NOT NULL        -- when the reader last committed a batch (or took the job over)
);

-- name: insert_job
INSERT INTO jobs (id, name, spec, job_file, input_sha256, prompt_version, status, created_at, updated_at, simulated)
VALUES (:id, :name, :spec, :job_file, :input_sha256, :prompt_version, 'ingesting', :now, :now, :simulated);

-- name: update_job_spec
UPDATE jobs SET spec = :spec, job_file = :job_file, updated_at = :now WHERE id = :job_id;

-- name: set_status
UPDATE jobs SET status = :status, updated_at = :now WHERE id = :job_id;

-- name: insert_ingest
INSERT INTO ingest (job_id, owner, line, next_seq, beat) VALUES (:job_id, :owner, 0, 0, :now);

-- name: get_ingest
SELECT owner, line, next_seq, beat FROM ingest WHERE job_id = :job_id;

-- name: claim_ingest
-- Taken over only from the reader the caller found dead: of two that find it, one wins.
UPDATE ingest SET owner = :owner, beat = :now WHERE job_id = :job_id AND owner IS :dead_owner;

-- name: ingest_progress
-- Only the current reader moves it: a reader taken for dead (and taken over) commits nothing more.
UPDATE ingest SET line = :line, next_seq = :next_seq, beat = :now WHERE job_id = :job_id AND owner = :owner;

-- name: release_ingest
-- A reader that failed hands the job back at once (beat 0: no need to wait for it to look stale).
UPDATE ingest SET owner = NULL, beat = 0 WHERE job_id = :job_id AND owner = :owner;

-- name: finish_ingest
DELETE FROM ingest WHERE job_id = :job_id;

-- name: ingest_done
UPDATE jobs SET status = 'queued', updated_at = :now WHERE id = :job_id AND status = 'ingesting';

-- name: discard_job
DELETE FROM ingest WHERE job_id = :job_id;
DELETE FROM drafts WHERE job_id = :job_id;
DELETE FROM items WHERE job_id = :job_id;
DELETE FROM input_errors WHERE job_id = :job_id;
DELETE FROM jobs WHERE id = :job_id;

-- name: item_seqs
-- Where the ids of a batch are stored: an id stored at another seq was a duplicate, ignored.
SELECT item_id, seq FROM items WHERE job_id = :job_id AND item_id IN (SELECT value FROM json_each(:ids));

-- name: insert_item
INSERT INTO items (job_id, seq, item_id, line, text) VALUES (:job_id, :seq, :item_id, :line, :text)
ON CONFLICT (job_id, item_id) DO NOTHING;

-- name: lock_job
-- What a budget hold and a commit reckon with (the write lock is held already).
SELECT spent_tokens, spent_cost FROM jobs WHERE id = :job_id;

-- name: fence
-- A commit's items still leased to the committer, with their epochs.
SELECT seq, attempts FROM items
WHERE job_id = :job_id AND seq IN (SELECT value FROM json_each(:seqs)) AND state = 'leased' AND lease_owner = :owner;

-- name: next_seq
SELECT coalesce(max(seq), -1) + 1 FROM items WHERE job_id = :job_id;

-- name: spawn_item
INSERT INTO items (job_id, seq, item_id, line, text, kind, parent_seq, payload)
SELECT :job_id, :seq, :item_id, line, :text, :kind, seq, :payload FROM items WHERE job_id = :job_id AND seq = :parent
ON CONFLICT (job_id, item_id) DO NOTHING;

-- name: insert_input_error
INSERT INTO input_errors (job_id, line, field, message) VALUES (:job_id, :line, :field, :message);

-- name: get_job
SELECT id, name, spec, job_file, input_sha256, prompt_version, status, created_at, spent_tokens, spent_cost,
       updated_at, simulated
FROM jobs WHERE id = :job_id;

-- name: list_jobs
SELECT id, name, spec, job_file, input_sha256, prompt_version, status, created_at, spent_tokens, spent_cost,
       updated_at, simulated
FROM jobs ORDER BY created_at;

-- name: runnable_jobs
SELECT j.id FROM jobs j
WHERE j.status NOT IN ('ingesting', 'cancelled')
  AND (EXISTS (SELECT 1 FROM items i WHERE i.job_id = j.id AND i.state = 'pending')
       OR EXISTS (SELECT 1 FROM items i WHERE i.job_id = j.id AND i.state = 'leased' AND i.lease_expires < :now)
       -- a batch tick that died on another host: its claim lapses, and its items come back with it
       OR EXISTS (SELECT 1 FROM batch_ticks t WHERE t.job_id = j.id AND t.expires < :now))
ORDER BY j.created_at;

-- name: lease
-- Expired leases first, then up to the given number of augment units (the worker asks for them only
-- as its unit consumers free up, so labelling never waits for augmentation), then the oldest
-- labelling work: input items, and variants to re-check. Each lease bumps attempts: the epoch.
UPDATE items SET state = 'leased', lease_owner = :owner, lease_expires = :expires, attempts = attempts + 1
WHERE job_id = :job_id AND seq IN (SELECT seq FROM (
    SELECT seq, 0 AS rank FROM (SELECT seq FROM items WHERE job_id = :job_id AND state = 'leased'
                                AND lease_expires < :now ORDER BY seq LIMIT :limit)
    UNION ALL
    SELECT seq, 1 FROM (SELECT seq FROM items WHERE job_id = :job_id AND state = 'pending' AND kind = 'augment'
                        ORDER BY seq LIMIT :units)
    UNION ALL
    SELECT seq, 2 FROM (SELECT seq FROM items WHERE job_id = :job_id AND state = 'pending' AND kind = 'label'
                        ORDER BY seq LIMIT :limit)
    UNION ALL
    SELECT seq, 2 FROM (SELECT seq FROM items WHERE job_id = :job_id AND state = 'pending' AND kind = 'variant'
                        ORDER BY seq LIMIT :limit))
  ORDER BY rank, seq LIMIT :total)
RETURNING seq, item_id, line, text, kind, payload, attempts;

-- name: renew
-- What it renewed, with the epochs: the owner's items not among them were lost to another worker.
UPDATE items SET lease_expires = :expires WHERE lease_owner = :owner AND state = 'leased'
RETURNING job_id, seq, attempts;

-- name: release
UPDATE items SET state = 'pending', lease_owner = NULL, lease_expires = NULL
WHERE lease_owner = :owner AND state = 'leased';

-- name: leased_owners
SELECT DISTINCT lease_owner FROM items WHERE state = 'leased' AND lease_owner IS NOT NULL;

-- name: lease_ends
-- A job's items leased (to any worker) and when the last of those leases lapses unless renewed.
SELECT count(*), max(lease_expires) FROM items WHERE job_id = :job_id AND state = 'leased';

-- name: clear_drafts
DELETE FROM drafts WHERE job_id = :job_id AND seq = :seq;

-- name: insert_draft
INSERT INTO drafts (job_id, seq, idx, priority, record) VALUES (:job_id, :seq, :idx, :priority, :record);

-- name: finish_item
UPDATE items SET state = :state, priority = :priority, result = :result, lease_owner = NULL, lease_expires = NULL
WHERE job_id = :job_id AND seq = :seq AND state = 'leased' AND lease_owner = :owner;

-- name: unlease_item
UPDATE items SET state = 'pending', lease_owner = NULL, lease_expires = NULL
WHERE job_id = :job_id AND seq = :seq AND state = 'leased' AND lease_owner = :owner;

-- name: insert_usage
INSERT INTO usage (job_id, seq, at, model, prompt_tokens, completion_tokens, cost_usd, cached, cached_prompt_tokens)
VALUES (:job_id, :seq, :at, :model, :prompt_tokens, :completion_tokens, :cost_usd, :cached, :cached_prompt_tokens);

-- name: spend
-- A commit's spending, its last statements: then the owner's hold goes down by what was spent.
UPDATE jobs SET spent_tokens = spent_tokens + :tokens, spent_cost = spent_cost + :cost, updated_at = :now
WHERE id = :job_id;
UPDATE budget_holds SET tokens = max(0, tokens - :tokens), cost = max(0, cost - :cost)
WHERE job_id = :job_id AND owner = :owner;

-- name: insert_cache
-- Replaced, not kept: a real endpoint's answer takes the place of a simulator's at the same URL.
INSERT INTO cache (key, response, created_at) VALUES (:key, :response, :now)
ON CONFLICT (key) DO UPDATE SET response = excluded.response, created_at = excluded.created_at;

-- name: delete_cache
DELETE FROM cache WHERE key = :key;

-- name: get_cache
SELECT response FROM cache WHERE key = :key;

-- name: get_cache_many
SELECT key, response FROM cache WHERE key IN (SELECT value FROM json_each(:keys));

-- name: stop_remaining
UPDATE items SET state = 'stopped', lease_owner = NULL, lease_expires = NULL
WHERE job_id = :job_id AND state = 'pending';

-- name: resume_stopped
UPDATE items SET state = 'pending' WHERE job_id = :job_id AND state = 'stopped';

-- name: requeue_drafts
DELETE FROM drafts WHERE job_id = :job_id AND seq = :seq
  AND EXISTS (SELECT 1 FROM items WHERE job_id = :job_id AND seq = :seq AND state = 'failed');

-- name: retry_drafts
DELETE FROM drafts WHERE job_id = :job_id
  AND seq IN (SELECT seq FROM items WHERE job_id = :job_id AND state = 'failed');

-- name: requeue_item
UPDATE items SET state = 'pending', result = NULL, priority = NULL, lease_owner = NULL, lease_expires = NULL
WHERE job_id = :job_id AND seq = :seq AND state = 'failed';

-- name: retry_failed
UPDATE items SET state = 'pending', result = NULL, priority = NULL WHERE job_id = :job_id AND state = 'failed';

-- name: item
SELECT state, lease_owner, attempts FROM items WHERE job_id = :job_id AND seq = :seq;

-- name: item_drafts
SELECT record FROM drafts WHERE job_id = :job_id AND seq = :seq ORDER BY idx;

-- name: counts
SELECT state, count(*) FROM items WHERE job_id = :job_id GROUP BY state;

-- name: kind_counts
SELECT kind, state, count(*) FROM items WHERE job_id = :job_id GROUP BY kind, state;

-- name: item_texts
SELECT text FROM items WHERE job_id = :job_id AND kind != 'augment'
UNION ALL  -- variants written as drafts only (no re-check)
SELECT json_extract(record, '$.text') FROM drafts
WHERE job_id = :job_id AND json_extract(record, '$.augmentation') IS NOT NULL
  AND seq IN (SELECT seq FROM items WHERE job_id = :job_id AND kind = 'augment');

-- name: unit_results
SELECT result FROM items WHERE job_id = :job_id AND kind = 'augment' AND result IS NOT NULL;

-- name: flag_counts
SELECT f.value, count(*) FROM drafts d, json_each(d.record, '$.flags') f
WHERE d.job_id = :job_id GROUP BY f.value;

-- name: origin_counts
SELECT json_extract(record, '$.endpoint'), coalesce(json_extract(record, '$.simulated'), 0), count(*)
FROM drafts WHERE job_id = :job_id GROUP BY 1, 2 ORDER BY 1, 2;

-- name: variant_flag_counts
SELECT json_extract(d.record, '$.augmentation.kind'), f.value, count(*)
FROM drafts d, json_each(d.record, '$.flags') f
WHERE d.job_id = :job_id AND json_extract(d.record, '$.augmentation') IS NOT NULL GROUP BY 1, 2;

-- name: records
SELECT record FROM drafts WHERE job_id = :job_id ORDER BY priority DESC, seq, idx;

-- name: indexes
-- After any migration: they use columns an older store lacks.
CREATE INDEX IF NOT EXISTS items_work ON items (job_id, state, kind, seq);

-- name: migrate_1
ALTER TABLE items ADD COLUMN kind TEXT NOT NULL DEFAULT 'label';
ALTER TABLE items ADD COLUMN parent_seq INTEGER;
ALTER TABLE items ADD COLUMN payload TEXT;
INSERT INTO drafts (job_id, seq, idx, priority, record)
SELECT job_id, seq, 0, coalesce(priority, 0), result FROM items WHERE result IS NOT NULL;
UPDATE items SET result = NULL WHERE result IS NOT NULL;
DROP INDEX IF EXISTS items_state;

-- name: migrate_2
ALTER TABLE spool ADD COLUMN inputs TEXT;

-- name: migrate_cached_prompt_tokens
ALTER TABLE usage ADD COLUMN cached_prompt_tokens INTEGER NOT NULL DEFAULT 0;

-- name: migrate_simulated
ALTER TABLE jobs ADD COLUMN simulated INTEGER NOT NULL DEFAULT 0;

-- name: migrate_ingest
-- Jobs an earlier version left half-read have no ingest row: where they got to is the last line
-- stored (items and input errors of a batch were committed together), and their reader is unknown, so
-- they are taken over once they look stale.
INSERT INTO ingest (job_id, owner, line, next_seq, beat)
SELECT j.id, NULL,
       max(coalesce((SELECT max(line) FROM items WHERE job_id = j.id AND kind = 'label'), 0),
           coalesce((SELECT max(line) FROM input_errors WHERE job_id = j.id), 0)),
       (SELECT coalesce(max(seq), -1) + 1 FROM items WHERE job_id = j.id),
       j.updated_at
FROM jobs j
WHERE j.status = 'ingesting' AND NOT EXISTS (SELECT 1 FROM ingest WHERE job_id = j.id);

-- name: input_errors
SELECT line, field, message FROM input_errors WHERE job_id = :job_id ORDER BY line;

-- name: usage_totals
SELECT count(*), coalesce(sum(prompt_tokens * (1 - cached)), 0), coalesce(sum(completion_tokens * (1 - cached)), 0),
       coalesce(sum(cost_usd), 0), coalesce(sum(cached), 0),
       coalesce(sum(cached_prompt_tokens * (1 - cached)), 0)
FROM usage WHERE job_id = :job_id;

-- name: insert_run
INSERT INTO runs (job_id, owner, started, ended, requests, retries, rate_limited, server_errors, timeouts,
                  cache_hits, wall_s)
VALUES (:job_id, :owner, :started, :ended, :requests, :retries, :rate_limited, :server_errors, :timeouts,
        :cache_hits, :wall_s);

-- name: run_totals
SELECT count(*), coalesce(sum(requests), 0), coalesce(sum(retries), 0), coalesce(sum(rate_limited), 0),
       coalesce(sum(server_errors), 0), coalesce(sum(timeouts), 0), coalesce(sum(cache_hits), 0),
       coalesce(sum(wall_s), 0)
FROM runs WHERE job_id = :job_id;

-- name: spool_record
INSERT INTO spool (path, sha256, job_id, error, inputs, at) VALUES (:path, :sha256, :job_id, :error, :inputs, :now)
ON CONFLICT (path, sha256) DO UPDATE SET job_id = excluded.job_id, error = excluded.error,
                                         inputs = excluded.inputs, at = excluded.at;

-- name: spool_entry
SELECT job_id, error, inputs FROM spool WHERE path = :path AND sha256 = :sha256;

-- name: spool_failures
-- Each spool file's latest outcome, where it failed.
SELECT s.path, s.error, s.at FROM spool s
WHERE s.error IS NOT NULL AND s.at = (SELECT max(at) FROM spool WHERE path = s.path)
ORDER BY s.path;

-- name: holds
SELECT coalesce(sum(tokens), 0), coalesce(sum(cost), 0) FROM budget_holds WHERE job_id = :job_id AND expires >= :now;

-- name: holds_of_others
SELECT coalesce(sum(tokens), 0), coalesce(sum(cost), 0) FROM budget_holds
WHERE job_id = :job_id AND owner <> :owner AND expires >= :now;

-- name: give_back_hold
-- A worker's hold, less what it was granted and will not use (its spending not yet committed stays).
UPDATE budget_holds SET tokens = max(0, tokens - :tokens), cost = max(0, cost - :cost)
WHERE job_id = :job_id AND owner = :owner;

-- name: add_hold
INSERT INTO budget_holds (job_id, owner, tokens, cost, expires) VALUES (:job_id, :owner, :tokens, :cost, :expires)
ON CONFLICT (job_id, owner) DO UPDATE SET tokens = tokens + excluded.tokens, cost = cost + excluded.cost,
                                          expires = excluded.expires;

-- name: renew_holds
-- Only holds still live: one that lapsed may have been counted out and granted to another worker.
UPDATE budget_holds SET expires = :expires WHERE owner = :owner AND expires > :now;

-- name: drop_holds
DELETE FROM budget_holds WHERE owner = :owner;

-- name: reviews_schema
-- ================================================================================================
-- Reviews (issue 13): the reviewers' corrections and the samples drawn for them. One block, so it
-- can be renumbered at merge. Run on every open: creates the tables an older store lacks.
-- ================================================================================================
-- One row per draft and reviewer: the latest annotation wins (re-imports are idempotent).
CREATE TABLE IF NOT EXISTS reviews (
    job_id TEXT NOT NULL,
    draft_id TEXT NOT NULL,
    reviewer TEXT NOT NULL,
    verdict TEXT NOT NULL,        -- accepted | corrected | rejected
    label TEXT,                   -- JSON in the kind's shape, NULL when rejected
    updated_at REAL NOT NULL,     -- when the reviewer last changed it (epoch seconds)
    lead_time REAL,               -- seconds the reviewer spent, where the tool says
    origin TEXT NOT NULL,         -- the file it was imported from
    imported_at REAL NOT NULL,
    PRIMARY KEY (job_id, draft_id, reviewer)
);
-- The drafts `review sample` sent out, and why: an audit draw is uniform, so the error estimate
-- of what nobody reviewed uses only those.
CREATE TABLE IF NOT EXISTS review_samples (
    job_id TEXT NOT NULL,
    draft_id TEXT NOT NULL,
    purpose TEXT NOT NULL,        -- informative | audit
    drawn_at REAL NOT NULL,
    PRIMARY KEY (job_id, draft_id)
);

-- name: upsert_review
INSERT INTO reviews (job_id, draft_id, reviewer, verdict, label, updated_at, lead_time, origin, imported_at)
VALUES (:job_id, :draft_id, :reviewer, :verdict, :label, :updated_at, :lead_time, :origin, :now)
ON CONFLICT (job_id, draft_id, reviewer) DO UPDATE SET
    verdict = excluded.verdict, label = excluded.label, updated_at = excluded.updated_at,
    lead_time = excluded.lead_time, origin = excluded.origin, imported_at = excluded.imported_at
WHERE excluded.updated_at >= reviews.updated_at
  AND (excluded.verdict IS NOT reviews.verdict OR excluded.label IS NOT reviews.label
       OR excluded.lead_time IS NOT reviews.lead_time);

-- name: reviews
SELECT draft_id, reviewer, verdict, label, updated_at, lead_time, origin FROM reviews
WHERE job_id = :job_id ORDER BY draft_id, updated_at, reviewer;

-- name: insert_sample
-- An audit draw wins over an earlier informative one: the audit must stay uniform.
INSERT INTO review_samples (job_id, draft_id, purpose, drawn_at) VALUES (:job_id, :draft_id, :purpose, :now)
ON CONFLICT (job_id, draft_id) DO UPDATE SET purpose = excluded.purpose, drawn_at = excluded.drawn_at
WHERE excluded.purpose = 'audit' AND review_samples.purpose != 'audit';

-- name: samples
SELECT draft_id, purpose FROM review_samples WHERE job_id = :job_id;

-- name: workers_schema
-- ================================================================================================
-- Workers (issue 11): who is running what, for the shared rate limit and `prelabel status`. One
-- block (PostgreSQL's migration_3), run on every open: creates the tables an older store lacks.
-- ================================================================================================
-- One row per worker (host:pid:nonce) while it runs a job: its beats, on the database's clock.
CREATE TABLE IF NOT EXISTS workers (
    worker TEXT PRIMARY KEY,
    host TEXT NOT NULL,
    pid INTEGER NOT NULL,
    job_id TEXT NOT NULL,
    pace_key TEXT NOT NULL,       -- a keyed hash of endpoint, model and API key (never the key)
    rpm REAL NOT NULL,            -- the ceiling it paces under
    tpm REAL NOT NULL,
    joined REAL NOT NULL,         -- when its current run of beats began
    beat REAL NOT NULL            -- its last beat
);
CREATE INDEX IF NOT EXISTS workers_pace ON workers (pace_key, beat);
-- The key pace keys are hashed under: one row, made once, never shown or exported.
CREATE TABLE IF NOT EXISTS store_secret (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    secret BLOB NOT NULL
);
-- The refused results billed as paid for a lost lease (usage seq -2): each lease's result once, if
-- its commit is sent again.
CREATE TABLE IF NOT EXISTS lost_results (
    job_id TEXT NOT NULL,
    seq INTEGER NOT NULL,
    epoch INTEGER NOT NULL,
    PRIMARY KEY (job_id, seq, epoch)
);

-- name: insert_secret
INSERT INTO store_secret (id, secret) VALUES (1, :secret) ON CONFLICT (id) DO NOTHING;

-- name: get_secret
SELECT secret FROM store_secret WHERE id = 1;

-- name: db_now
-- The database's clock (one for every worker of the store).
SELECT (julianday('now') - 2440587.5) * 86400.0;

-- name: beat
-- A worker's beat: BEGIN IMMEDIATE already holds the whole file, so the beats of one pace key run one
-- after another. `now` is the database's clock (one for every worker of the store). A worker counted
-- out (its last beat stale_s old or more), or rejoining (its life lock taken again), joins again now,
-- rows of workers long gone (killed: they never left) are deleted, and then come the key's live
-- workers, itself among them, each with `now`.
INSERT INTO workers (worker, host, pid, job_id, pace_key, rpm, tpm, joined, beat)
VALUES (:worker, :host, :pid, :job_id, :pace_key, :rpm, :tpm, (julianday('now') - 2440587.5) * 86400.0,
        (julianday('now') - 2440587.5) * 86400.0)
ON CONFLICT (worker) DO UPDATE SET
    job_id = excluded.job_id, pace_key = excluded.pace_key, rpm = excluded.rpm, tpm = excluded.tpm,
    joined = CASE WHEN :rejoin OR excluded.beat - workers.beat >= :stale_s THEN excluded.beat ELSE workers.joined END,
    beat = excluded.beat;
DELETE FROM workers WHERE beat < (julianday('now') - 2440587.5) * 86400.0 - :forget_s;
SELECT now, worker, joined, beat, rpm, tpm
FROM workers, (SELECT max(beat) AS now FROM workers WHERE worker = :worker)
WHERE pace_key = :pace_key AND beat > now - :stale_s
ORDER BY worker;

-- name: worker_leave
DELETE FROM workers WHERE worker = :worker;

-- name: live_workers
SELECT w.worker, w.host, w.pid, w.job_id, w.joined, w.beat,
       (SELECT count(*) FROM items i WHERE i.lease_owner = w.worker AND i.state = 'leased'),
       (SELECT max(i.lease_expires) FROM items i WHERE i.lease_owner = w.worker AND i.state = 'leased')
FROM workers w WHERE w.beat > :now - :stale_s ORDER BY w.host, w.pid, w.worker;

-- name: silent_workers
-- Owners of leases that have not beaten within stale_s (stopped, dead, cut off) or have no row (never
-- beat, or forgotten), per job they hold items of: how many, and when the last of those leases lapses.
SELECT i.lease_owner, i.job_id, w.joined, w.beat, count(*), max(i.lease_expires)
FROM items i LEFT JOIN workers w ON w.worker = i.lease_owner
WHERE i.state = 'leased' AND i.lease_owner IS NOT NULL AND (w.beat IS NULL OR w.beat <= :now - :stale_s)
GROUP BY i.lease_owner, i.job_id, w.joined, w.beat
ORDER BY i.lease_owner, i.job_id;

-- name: item_epochs
-- Where a commit's refused items stand: a result its own lease already committed is not billed again.
SELECT seq, state, attempts FROM items WHERE job_id = :job_id AND seq IN (SELECT value FROM json_each(:seqs));

-- name: lost_usage_totals
SELECT count(*), coalesce(sum(prompt_tokens + completion_tokens), 0), coalesce(sum(cost_usd), 0)
FROM usage WHERE job_id = :job_id AND seq = :seq AND cached = 0;

-- name: insert_lost_result
INSERT INTO lost_results (job_id, seq, epoch) VALUES (:job_id, :seq, :epoch) ON CONFLICT DO NOTHING;
-- name: batch_schema
-- Batch API chunks (issue 12). Run on every open: creates the tables an older store lacks.
-- One row per chunk of a job's Batch API work: its intent (recorded before its file is uploaded),
-- then its file, its batch and the batch's status and counts (prelabel.batch.state).
CREATE TABLE IF NOT EXISTS batch_chunks (
    job_id TEXT NOT NULL,
    chunk TEXT NOT NULL,
    stage TEXT NOT NULL,          -- planned | uploaded | submitted | collected
    requests INTEGER NOT NULL,
    path TEXT NOT NULL,           -- the input file on the host that wrote it
    endpoint TEXT NOT NULL,
    model TEXT NOT NULL,
    planned_at REAL NOT NULL,
    attempt INTEGER NOT NULL,
    held_tokens BIGINT NOT NULL,  -- its worst case, also a budget hold (owner batch:JOB:CHUNK) until collected
    held_cost REAL NOT NULL,
    file_id TEXT,
    batch_id TEXT,
    status TEXT,                  -- the provider's
    created BIGINT,
    expires BIGINT,
    total INTEGER NOT NULL DEFAULT 0,
    completed INTEGER NOT NULL DEFAULT 0,
    failed INTEGER NOT NULL DEFAULT 0,
    errors TEXT,
    PRIMARY KEY (job_id, chunk)
);
-- The requests (cache keys) each chunk carries: what is in flight, and what a collect expects back.
CREATE TABLE IF NOT EXISTS batch_lines (
    job_id TEXT NOT NULL,
    chunk TEXT NOT NULL,
    key TEXT NOT NULL,
    PRIMARY KEY (job_id, chunk, key)
);
-- Requests that a collected batch did not answer: how many batches missed each, and why.
CREATE TABLE IF NOT EXISTS batch_failures (
    job_id TEXT NOT NULL,
    key TEXT NOT NULL,
    attempts INTEGER NOT NULL,
    error TEXT NOT NULL,
    retryable INTEGER NOT NULL,
    PRIMARY KEY (job_id, key)
);
-- Who ticks a job's batches now (one tick at a time per job, on any host): its claim lasts to
-- ``expires`` and its heartbeat renews it: a claim past it, or of a dead process on this host, is taken.
CREATE TABLE IF NOT EXISTS batch_ticks (
    job_id TEXT PRIMARY KEY,
    owner TEXT NOT NULL,
    expires REAL NOT NULL
);
-- Expired leases are looked for at every lease: a tick holds a million (its items waiting on batches),
-- and without this each look walked them all.
CREATE INDEX IF NOT EXISTS items_expiry ON items (job_id, lease_expires) WHERE state = 'leased';

-- name: batch_chunks
SELECT job_id, chunk, stage, requests, path, endpoint, model, planned_at, attempt, held_tokens, held_cost, file_id,
       batch_id, status, created, expires, total, completed, failed, errors
FROM batch_chunks WHERE job_id = :job_id ORDER BY chunk;

-- name: batch_chunk_stage
SELECT stage FROM batch_chunks WHERE job_id = :job_id AND chunk = :chunk;

-- name: batch_insert_chunk
INSERT INTO batch_chunks (job_id, chunk, stage, requests, path, endpoint, model, planned_at, attempt, held_tokens,
                          held_cost)
VALUES (:job_id, :chunk, 'planned', :requests, :path, :endpoint, :model, :planned_at, :attempt, :held_tokens,
        :held_cost);

-- name: batch_insert_line
INSERT INTO batch_lines (job_id, chunk, key) VALUES (:job_id, :chunk, :key) ON CONFLICT DO NOTHING;

-- name: batch_chunk_keys
SELECT key FROM batch_lines WHERE job_id = :job_id AND chunk = :chunk;

-- name: batch_open_keys
SELECT l.key FROM batch_lines l JOIN batch_chunks c ON c.job_id = l.job_id AND c.chunk = l.chunk
WHERE l.job_id = :job_id AND c.stage != 'collected';

-- name: batch_set_file
UPDATE batch_chunks SET file_id = :file_id, stage = CASE WHEN stage = 'planned' THEN 'uploaded' ELSE stage END
WHERE job_id = :job_id AND chunk = :chunk AND stage != 'collected';

-- name: batch_set_batch
UPDATE batch_chunks SET stage = 'submitted', file_id = coalesce(:file_id, file_id), batch_id = :batch_id,
    status = :status, created = :created, expires = :expires, total = :total, completed = :completed,
    failed = :failed, errors = :errors
WHERE job_id = :job_id AND chunk = :chunk AND stage != 'collected';

-- name: batch_finish_chunk
UPDATE batch_chunks SET stage = 'collected', held_tokens = 0, held_cost = 0,
    batch_id = coalesce(:batch_id, batch_id), status = coalesce(:status, status), created = coalesce(:created, created),
    expires = coalesce(:expires, expires), total = coalesce(:total, total), completed = coalesce(:completed, completed),
    failed = coalesce(:failed, failed), errors = coalesce(:errors, errors)
WHERE job_id = :job_id AND chunk = :chunk;

-- name: batch_add_failure
INSERT INTO batch_failures (job_id, key, attempts, error, retryable) VALUES (:job_id, :key, 1, :error, :retryable)
ON CONFLICT (job_id, key) DO UPDATE SET attempts = batch_failures.attempts + 1, error = excluded.error,
                                        retryable = excluded.retryable;

-- name: batch_failures
SELECT key, attempts, error, retryable FROM batch_failures WHERE job_id = :job_id;

-- name: calls_schema
-- ================================================================================================
-- Store calls made again after a lost acknowledgement (issue 11, PostgreSQL's migration_5): each
-- write that must not be done twice records its result under its call's token in its own
-- transaction: a repeat returns it. Run on every open: creates the table an older store lacks.
-- ================================================================================================
CREATE TABLE IF NOT EXISTS store_calls (
    token TEXT PRIMARY KEY,
    at REAL NOT NULL,         -- when recorded, on the database's clock: kept STORE_CALL_KEEP_S
    result TEXT               -- JSON, NULL only inside the transaction of a repeat that claimed it
);
CREATE INDEX IF NOT EXISTS store_calls_at ON store_calls (at);

-- name: claim_call
INSERT INTO store_calls (token, at, result) VALUES (:token, (julianday('now') - 2440587.5) * 86400.0, NULL)
ON CONFLICT (token) DO NOTHING;

-- name: call_result
SELECT result FROM store_calls WHERE token = :token;

-- name: record_call
DELETE FROM store_calls WHERE at < (julianday('now') - 2440587.5) * 86400.0 - :keep_s;
INSERT INTO store_calls (token, at, result) VALUES (:token, (julianday('now') - 2440587.5) * 86400.0, :result)
ON CONFLICT (token) DO UPDATE SET result = excluded.result;

-- name: leased_items
SELECT seq, item_id, line, text, kind, payload FROM items
WHERE job_id = :job_id AND seq IN (SELECT value FROM json_each(:seqs)) ORDER BY seq;

-- name: release_owners
UPDATE items SET state = 'pending', lease_owner = NULL, lease_expires = NULL
WHERE lease_owner IN (SELECT value FROM json_each(:owners)) AND state = 'leased';

-- name: drop_owners_holds
DELETE FROM budget_holds WHERE owner IN (SELECT value FROM json_each(:owners));

-- name: holds_schema
-- Jobs a worker found it cannot run (outside its output root, an endpoint no longer allowed): the
-- reason, shown by `prelabel status`. Run on every open: creates the table an older store lacks.
CREATE TABLE IF NOT EXISTS job_holds (
    job_id TEXT PRIMARY KEY,
    reason TEXT NOT NULL,
    at REAL NOT NULL
);

-- name: hold_job
INSERT INTO job_holds (job_id, reason, at) VALUES (:job_id, :reason, :now)
ON CONFLICT (job_id) DO UPDATE SET reason = excluded.reason, at = excluded.at;

-- name: release_hold
DELETE FROM job_holds WHERE job_id = :job_id;

-- name: job_holds
SELECT job_id, reason FROM job_holds;

-- name: stop_pending
-- `prelabel cancel`: the job's waiting items are stopped (a worker running it takes no more);
-- submitting the job again resumes them, as after a budget stop.
UPDATE items SET state = 'stopped' WHERE job_id = :job_id AND state = 'pending';

-- name: batch_tick_holder
SELECT owner, expires FROM batch_ticks WHERE job_id = :job_id;

-- name: batch_tick_claim
-- Taken when free, expired, ours already, or held by ``dead`` (a process on this host found gone).
INSERT INTO batch_ticks (job_id, owner, expires) VALUES (:job_id, :owner, :expires)
ON CONFLICT (job_id) DO UPDATE SET owner = excluded.owner, expires = excluded.expires
WHERE batch_ticks.owner = :owner OR batch_ticks.expires < :now OR batch_ticks.owner = :dead;

-- name: batch_tick_renew
UPDATE batch_ticks SET expires = :expires WHERE job_id = :job_id AND owner = :owner;

-- name: batch_tick_release
DELETE FROM batch_ticks WHERE job_id = :job_id AND owner = :owner;

-- name: batch_forget_failures
DELETE FROM batch_failures WHERE job_id = :job_id;
