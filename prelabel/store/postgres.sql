-- The PostgreSQL store's schema and queries: the names and named parameters of sqlite.sql, for many
-- writers at once. Transactions are READ COMMITTED; each query that must see a row unchanged until
-- its transaction ends says so with FOR UPDATE, taken in one order everywhere: items by seq (fence,
-- renew, release), then cache rows, then the job row (lock_job: budget holds, spending, spawned seqs),
-- taken last because every commit on the job takes it, then budget holds. A lease takes its items with FOR UPDATE SKIP LOCKED: two workers never wait on,
-- nor get, each other's items.

-- name: migration_1
-- The schema of the first version that ran on PostgreSQL (migrations are numbered: migration_N).
CREATE TABLE IF NOT EXISTS jobs (
    id TEXT PRIMARY KEY,
    name TEXT NOT NULL,
    spec TEXT NOT NULL,
    job_file TEXT,
    input_sha256 TEXT NOT NULL,
    prompt_version TEXT NOT NULL,
    status TEXT NOT NULL DEFAULT 'queued',
    created_at DOUBLE PRECISION NOT NULL,
    updated_at DOUBLE PRECISION NOT NULL,
    spent_tokens BIGINT NOT NULL DEFAULT 0,
    spent_cost DOUBLE PRECISION NOT NULL DEFAULT 0,
    simulated INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS items (
    job_id TEXT NOT NULL,
    seq INTEGER NOT NULL,
    item_id TEXT NOT NULL,
    line INTEGER NOT NULL,
    text TEXT NOT NULL,
    state TEXT NOT NULL DEFAULT 'pending',
    lease_owner TEXT,
    lease_expires DOUBLE PRECISION,
    attempts INTEGER NOT NULL DEFAULT 0,  -- times leased: the current lease's epoch (fencing token)
    priority DOUBLE PRECISION,
    result TEXT,
    kind TEXT NOT NULL DEFAULT 'label',
    parent_seq INTEGER,
    payload TEXT,
    PRIMARY KEY (job_id, seq)
);
CREATE UNIQUE INDEX IF NOT EXISTS items_item_id ON items (job_id, item_id);
CREATE INDEX IF NOT EXISTS items_work ON items (job_id, state, kind, seq);
CREATE INDEX IF NOT EXISTS items_owner ON items (lease_owner) WHERE lease_owner IS NOT NULL;
CREATE TABLE IF NOT EXISTS drafts (
    job_id TEXT NOT NULL,
    seq INTEGER NOT NULL,
    idx INTEGER NOT NULL,
    priority DOUBLE PRECISION NOT NULL,
    record TEXT NOT NULL,     -- JSON as written (drafts.jsonl is these lines), read as jsonb where needed
    PRIMARY KEY (job_id, seq, idx)
);
CREATE INDEX IF NOT EXISTS drafts_review ON drafts (job_id, priority DESC, seq, idx);
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
    at DOUBLE PRECISION NOT NULL,
    model TEXT NOT NULL,
    prompt_tokens INTEGER NOT NULL,
    completion_tokens INTEGER NOT NULL,
    cost_usd DOUBLE PRECISION NOT NULL,
    cached INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS usage_job ON usage (job_id);
CREATE TABLE IF NOT EXISTS cache (
    key TEXT PRIMARY KEY,
    response TEXT NOT NULL,
    created_at DOUBLE PRECISION NOT NULL
);
CREATE TABLE IF NOT EXISTS runs (
    job_id TEXT NOT NULL,
    owner TEXT NOT NULL,
    started DOUBLE PRECISION NOT NULL,
    ended DOUBLE PRECISION NOT NULL,
    requests INTEGER NOT NULL,
    retries INTEGER NOT NULL,
    rate_limited INTEGER NOT NULL,
    server_errors INTEGER NOT NULL,
    timeouts INTEGER NOT NULL,
    cache_hits INTEGER NOT NULL,
    wall_s DOUBLE PRECISION NOT NULL
);
CREATE TABLE IF NOT EXISTS budget_holds (
    job_id TEXT NOT NULL,
    owner TEXT NOT NULL,
    tokens BIGINT NOT NULL,
    cost DOUBLE PRECISION NOT NULL,
    expires DOUBLE PRECISION NOT NULL,
    PRIMARY KEY (job_id, owner)
);
CREATE TABLE IF NOT EXISTS spool (
    path TEXT NOT NULL,
    sha256 TEXT NOT NULL,
    job_id TEXT,
    error TEXT,
    at DOUBLE PRECISION NOT NULL,
    inputs TEXT,
    PRIMARY KEY (path, sha256)
);
CREATE TABLE IF NOT EXISTS ingest (
    job_id TEXT PRIMARY KEY,
    owner TEXT,
    line INTEGER NOT NULL,
    next_seq INTEGER NOT NULL,
    beat DOUBLE PRECISION NOT NULL
);
CREATE TABLE IF NOT EXISTS reviews (
    job_id TEXT NOT NULL,
    draft_id TEXT NOT NULL,
    reviewer TEXT NOT NULL,
    verdict TEXT NOT NULL,
    label TEXT,
    updated_at DOUBLE PRECISION NOT NULL,
    lead_time DOUBLE PRECISION,
    origin TEXT NOT NULL,
    imported_at DOUBLE PRECISION NOT NULL,
    PRIMARY KEY (job_id, draft_id, reviewer)
);
CREATE TABLE IF NOT EXISTS review_samples (
    job_id TEXT NOT NULL,
    draft_id TEXT NOT NULL,
    purpose TEXT NOT NULL,
    drawn_at DOUBLE PRECISION NOT NULL,
    PRIMARY KEY (job_id, draft_id)
);

-- name: migration_2
-- Prompt caching billed: of a request's prompt tokens, those the provider served from its prompt cache.
ALTER TABLE usage ADD COLUMN IF NOT EXISTS cached_prompt_tokens INTEGER NOT NULL DEFAULT 0;

-- name: migration_3
-- Workers (issue 11): who is running what, for the shared rate limit and `prelabel status`, and
-- the key pace keys are hashed under (one row, made once, never shown or exported).
CREATE TABLE IF NOT EXISTS workers (
    worker TEXT PRIMARY KEY,
    host TEXT NOT NULL,
    pid INTEGER NOT NULL,
    job_id TEXT NOT NULL,
    pace_key TEXT NOT NULL,
    rpm DOUBLE PRECISION NOT NULL,
    tpm DOUBLE PRECISION NOT NULL,
    joined DOUBLE PRECISION NOT NULL,
    beat DOUBLE PRECISION NOT NULL
);
CREATE INDEX IF NOT EXISTS workers_pace ON workers (pace_key, beat);
CREATE TABLE IF NOT EXISTS store_secret (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    secret BYTEA NOT NULL
);
-- The refused results billed as paid for a lost lease (usage seq -2): each lease's result once, if
-- its commit is sent again.
CREATE TABLE IF NOT EXISTS lost_results (
    job_id TEXT NOT NULL,
    seq INTEGER NOT NULL,
    epoch INTEGER NOT NULL,
    PRIMARY KEY (job_id, seq, epoch)
);

-- name: claim_ingest
UPDATE ingest SET owner = :owner, beat = :now WHERE job_id = :job_id AND owner IS NOT DISTINCT FROM :dead_owner;

-- name: migrate_ingest
-- sqlite.sql's, for the same rule (no PostgreSQL store predates the ingest table: it finds nothing).
INSERT INTO ingest (job_id, owner, line, next_seq, beat)
SELECT j.id, NULL,
       greatest(coalesce((SELECT max(line) FROM items WHERE job_id = j.id AND kind = 'label'), 0),
                coalesce((SELECT max(line) FROM input_errors WHERE job_id = j.id), 0)),
       (SELECT coalesce(max(seq), -1) + 1 FROM items WHERE job_id = j.id),
       j.updated_at
FROM jobs j
WHERE j.status = 'ingesting' AND NOT EXISTS (SELECT 1 FROM ingest WHERE job_id = j.id);

-- name: lock_job
-- The job row, locked until the transaction ends: budget holds are reckoned, spending added and
-- spawned items numbered by one writer at a time per job. Taken after the items' and cache rows'
-- writes (manager.py's lock order), so it is held for a commit's last statements and its COMMIT.
SELECT spent_tokens, spent_cost FROM jobs WHERE id = :job_id FOR UPDATE;

-- name: fence
-- A commit's items still leased to the committer, with their epochs, locked in seq order. They are
-- found by their key and then checked: with the state in the search, the planner (its statistics
-- taken when nothing was leased) walked every leased item's index entries, dead ones included.
WITH asked AS MATERIALIZED (SELECT seq, attempts, state, lease_owner FROM items
                            WHERE job_id = :job_id AND seq = ANY(:seqs) ORDER BY seq FOR UPDATE)
SELECT seq, attempts FROM asked WHERE state = 'leased' AND lease_owner = :owner ORDER BY seq;

-- name: lease
-- sqlite.sql's order (expired leases, augment units, then labelling work); each part takes only rows
-- no other transaction holds (SKIP LOCKED), so concurrent leases get disjoint items without waiting.
WITH expired AS (SELECT seq FROM items WHERE job_id = :job_id AND state = 'leased' AND lease_expires < :now
                 ORDER BY seq LIMIT :limit FOR UPDATE SKIP LOCKED),
units AS (SELECT seq FROM items WHERE job_id = :job_id AND state = 'pending' AND kind = 'augment'
          ORDER BY seq LIMIT :units FOR UPDATE SKIP LOCKED),
labels AS (SELECT seq FROM items WHERE job_id = :job_id AND state = 'pending' AND kind = 'label'
           ORDER BY seq LIMIT :limit FOR UPDATE SKIP LOCKED),
variants AS (SELECT seq FROM items WHERE job_id = :job_id AND state = 'pending' AND kind = 'variant'
             ORDER BY seq LIMIT :limit FOR UPDATE SKIP LOCKED),
picked AS (SELECT seq, 0 AS rank FROM expired UNION ALL SELECT seq, 1 FROM units
           UNION ALL SELECT seq, 2 FROM labels UNION ALL SELECT seq, 2 FROM variants), chosen AS (SELECT seq FROM picked ORDER BY rank, seq LIMIT :total)
UPDATE items i SET state = 'leased', lease_owner = :owner, lease_expires = :expires, attempts = i.attempts + 1
FROM chosen WHERE i.job_id = :job_id AND i.seq = chosen.seq
RETURNING i.seq, i.item_id, i.line, i.text, i.kind, i.payload, i.attempts;

-- name: renew
-- What it renewed, with the epochs: the owner's items not among them were lost to another worker.
UPDATE items SET lease_expires = :expires
WHERE (job_id, seq) IN (SELECT job_id, seq FROM items WHERE lease_owner = :owner AND state = 'leased'
                        ORDER BY job_id, seq FOR UPDATE)
  AND lease_owner = :owner AND state = 'leased'
RETURNING job_id, seq, attempts;

-- name: release
UPDATE items SET state = 'pending', lease_owner = NULL, lease_expires = NULL
WHERE (job_id, seq) IN (SELECT job_id, seq FROM items WHERE lease_owner = :owner AND state = 'leased'
                        ORDER BY job_id, seq FOR UPDATE)
  AND lease_owner = :owner AND state = 'leased';

-- name: item_texts
SELECT text FROM items WHERE job_id = :job_id AND kind != 'augment'
UNION ALL  -- variants written as drafts only (no re-check)
SELECT record::jsonb->>'text' FROM drafts
WHERE job_id = :job_id AND nullif(record::jsonb->'augmentation', 'null'::jsonb) IS NOT NULL
  AND seq IN (SELECT seq FROM items WHERE job_id = :job_id AND kind = 'augment');

-- name: flag_counts
SELECT f.value, count(*)
FROM drafts d, jsonb_array_elements_text(coalesce(nullif(d.record::jsonb->'flags', 'null'::jsonb), '[]'::jsonb)) f
WHERE d.job_id = :job_id GROUP BY f.value;

-- name: origin_counts
SELECT record::jsonb->>'endpoint', coalesce((record::jsonb->>'simulated')::boolean, false), count(*)
FROM drafts WHERE job_id = :job_id GROUP BY 1, 2 ORDER BY (record::jsonb->>'endpoint') COLLATE "C" NULLS FIRST, 2;

-- name: variant_flag_counts
SELECT d.record::jsonb->'augmentation'->>'kind', f.value, count(*)
FROM drafts d, jsonb_array_elements_text(coalesce(nullif(d.record::jsonb->'flags', 'null'::jsonb), '[]'::jsonb)) f
WHERE d.job_id = :job_id AND nullif(d.record::jsonb->'augmentation', 'null'::jsonb) IS NOT NULL GROUP BY 1, 2;

-- name: upsert_review
INSERT INTO reviews (job_id, draft_id, reviewer, verdict, label, updated_at, lead_time, origin, imported_at)
VALUES (:job_id, :draft_id, :reviewer, :verdict, :label, :updated_at, :lead_time, :origin, :now)
ON CONFLICT (job_id, draft_id, reviewer) DO UPDATE SET
    verdict = excluded.verdict, label = excluded.label, updated_at = excluded.updated_at,
    lead_time = excluded.lead_time, origin = excluded.origin, imported_at = excluded.imported_at
WHERE excluded.updated_at >= reviews.updated_at
  AND (excluded.verdict IS DISTINCT FROM reviews.verdict OR excluded.label IS DISTINCT FROM reviews.label
       OR excluded.lead_time IS DISTINCT FROM reviews.lead_time);

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
SELECT item_id, seq FROM items WHERE job_id = :job_id AND item_id = ANY(:ids);

-- name: insert_item
INSERT INTO items (job_id, seq, item_id, line, text) VALUES (:job_id, :seq, :item_id, :line, :text)
ON CONFLICT (job_id, item_id) DO NOTHING;

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
-- By its key alone: the commit's fence found it leased to the committer and holds its row locked.
UPDATE items SET state = :state, priority = :priority, result = :result, lease_owner = NULL, lease_expires = NULL
WHERE job_id = :job_id AND seq = :seq;

-- name: unlease_item
UPDATE items SET state = 'pending', lease_owner = NULL, lease_expires = NULL
WHERE job_id = :job_id AND seq = :seq;

-- name: insert_usage
INSERT INTO usage (job_id, seq, at, model, prompt_tokens, completion_tokens, cost_usd, cached, cached_prompt_tokens)
VALUES (:job_id, :seq, :at, :model, :prompt_tokens, :completion_tokens, :cost_usd, :cached, :cached_prompt_tokens);

-- name: spend
-- A commit's spending, sent with its COMMIT in one message (the connector's commit_with): the job row
-- is locked here, last of a commit's locks (manager.py's lock order), and let go by the server in the
-- same breath, so a worker stopped at any point of its commit never holds its peers' commits. Then
-- the owner's hold goes down by what was spent (held -> spent).
UPDATE jobs SET spent_tokens = spent_tokens + :tokens, spent_cost = spent_cost + :cost, updated_at = :now
WHERE id = :job_id;
UPDATE budget_holds SET tokens = greatest(0, tokens - :tokens), cost = greatest(0, cost - :cost)
WHERE job_id = :job_id AND owner = :owner;

-- name: insert_cache
-- Replaced, not kept: a real endpoint's answer takes the place of a simulator's at the same URL.
INSERT INTO cache (key, response, created_at) VALUES (:key, :response, :now)
ON CONFLICT (key) DO UPDATE SET response = excluded.response, created_at = excluded.created_at;

-- name: insert_cache_bulk
-- insert_cache as one statement (the connector's ``many``): the keys come distinct and in order.
INSERT INTO cache (key, response, created_at)
SELECT * FROM unnest(:key::text[], :response::text[], :now::double precision[])
ON CONFLICT (key) DO UPDATE SET response = excluded.response, created_at = excluded.created_at;

-- name: delete_cache
DELETE FROM cache WHERE key = :key;

-- name: delete_cache_bulk
DELETE FROM cache WHERE key = ANY(:key::text[]);

-- name: get_cache
SELECT response FROM cache WHERE key = :key;

-- name: get_cache_many
SELECT key, response FROM cache WHERE key = ANY(:keys);

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

-- name: unit_results
SELECT result FROM items WHERE job_id = :job_id AND kind = 'augment' AND result IS NOT NULL;

-- name: records
SELECT record FROM drafts WHERE job_id = :job_id ORDER BY priority DESC, seq, idx;

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
ORDER BY s.path COLLATE "C";

-- name: holds
SELECT coalesce(sum(tokens), 0), coalesce(sum(cost), 0) FROM budget_holds WHERE job_id = :job_id AND expires >= :now;

-- name: holds_of_others
SELECT coalesce(sum(tokens), 0), coalesce(sum(cost), 0) FROM budget_holds
WHERE job_id = :job_id AND owner <> :owner AND expires >= :now;

-- name: give_back_hold
-- A worker's hold, less what it was granted and will not use (its spending not yet committed stays).
UPDATE budget_holds SET tokens = greatest(0, tokens - :tokens), cost = greatest(0, cost - :cost)
WHERE job_id = :job_id AND owner = :owner;

-- name: add_hold
INSERT INTO budget_holds (job_id, owner, tokens, cost, expires) VALUES (:job_id, :owner, :tokens, :cost, :expires)
ON CONFLICT (job_id, owner) DO UPDATE SET tokens = budget_holds.tokens + excluded.tokens,
                                          cost = budget_holds.cost + excluded.cost, expires = excluded.expires;

-- name: renew_holds
-- Only holds still live: one that lapsed may have been counted out and granted to another worker.
UPDATE budget_holds SET expires = :expires WHERE owner = :owner AND expires > :now;

-- name: drop_holds
DELETE FROM budget_holds WHERE owner = :owner;

-- name: reviews
SELECT draft_id, reviewer, verdict, label, updated_at, lead_time, origin FROM reviews
WHERE job_id = :job_id ORDER BY draft_id COLLATE "C", updated_at, reviewer COLLATE "C";

-- name: insert_sample
-- An audit draw wins over an earlier informative one: the audit must stay uniform.
INSERT INTO review_samples (job_id, draft_id, purpose, drawn_at) VALUES (:job_id, :draft_id, :purpose, :now)
ON CONFLICT (job_id, draft_id) DO UPDATE SET purpose = excluded.purpose, drawn_at = excluded.drawn_at
WHERE excluded.purpose = 'audit' AND review_samples.purpose != 'audit';

-- name: samples
SELECT draft_id, purpose FROM review_samples WHERE job_id = :job_id;

-- name: insert_secret
INSERT INTO store_secret (id, secret) VALUES (1, :secret) ON CONFLICT (id) DO NOTHING;

-- name: get_secret
SELECT secret FROM store_secret WHERE id = 1;

-- name: db_now
-- The server's clock: one for the workers of every host.
SELECT extract(epoch FROM clock_timestamp())::double precision;

-- name: beat
-- A worker's beat, the whole transaction in one message with its COMMIT (the connector's commit_with).
-- The beats of one pace key run one after another (the advisory lock, to the transaction's end): a
-- newcomer is "counted" by a peer whose beat came after its own (prelabel.llm.shares), so each beat
-- must see every earlier one (two side by side would each find itself alone, and pace at the whole
-- ceiling). The server takes and lets go of that lock alone: a worker stopped mid-beat holds nothing.
-- The server's clock, read once the lock is held, is every statement's `now` (a setting of this
-- transaction); the worker's own row only is written (a beat never waits on another worker's), and a
-- worker counted out (its last beat stale_s old or more), or rejoining (its life lock taken again), joins
-- again now. Rows of workers long gone
-- (killed: they never left) are deleted, a row another beat holds left for later. Then the key's live
-- workers, itself among them, each row with `now`.
SELECT pg_advisory_xact_lock(hashtextextended(:pace_key, 0));
SELECT set_config('prelabel.now', extract(epoch FROM clock_timestamp())::double precision::text, true);
INSERT INTO workers (worker, host, pid, job_id, pace_key, rpm, tpm, joined, beat)
VALUES (:worker, :host, :pid, :job_id, :pace_key, :rpm, :tpm, current_setting('prelabel.now')::double precision,
        current_setting('prelabel.now')::double precision)
ON CONFLICT (worker) DO UPDATE SET
    job_id = excluded.job_id, pace_key = excluded.pace_key, rpm = excluded.rpm, tpm = excluded.tpm,
    joined = CASE WHEN :rejoin OR excluded.beat - workers.beat >= :stale_s THEN excluded.beat ELSE workers.joined END,
    beat = excluded.beat;
DELETE FROM workers WHERE worker IN (
    SELECT worker FROM workers WHERE beat < current_setting('prelabel.now')::double precision - :forget_s
    FOR UPDATE SKIP LOCKED);
SELECT current_setting('prelabel.now')::double precision, worker, joined, beat, rpm, tpm FROM workers
WHERE pace_key = :pace_key AND beat > current_setting('prelabel.now')::double precision - :stale_s
ORDER BY worker COLLATE "C";

-- name: worker_leave
DELETE FROM workers WHERE worker = :worker;

-- name: life_lock
-- A worker's life lock (prelabel.llm.shares), on a connection of its own for as long as it runs:
-- session-level, so it dies with the process (or that connection), and its peers see it free at their
-- next beat instead of waiting stale_s for its beats to stop. One bigint key: 64 bits of the worker's
-- id hashed under a seed of the life locks' own, apart from the other bigint locks (the pace locks
-- hash pace keys under seed 0; migrations and vacuum use constants): two keys meet 2**-64 a pair.
-- Upgrading: earlier workers locked (class, hashtext(worker)), two int keys (pg_locks: objsubid 2).
-- Old and new workers running at once do not see each other's life locks (each finds the other's
-- free, and never held), so they count each other out by their beats alone, as a store without life
-- locks does; each sees the life locks of its own version's workers.
SELECT pg_try_advisory_lock(hashtextextended(:worker, :life_seed));

-- name: life_unlock
SELECT pg_advisory_unlock(hashtextextended(:worker, :life_seed));

-- name: life_check
SELECT 1;

-- name: lives_held
-- Which of these workers' life locks some session holds now (read from pg_locks: nothing is taken).
-- A bigint key shows there as its high and low 32 bits (classid, objid) with objsubid 1.
SELECT w.worker, EXISTS (
    SELECT 1 FROM pg_locks l
    WHERE l.locktype = 'advisory' AND l.granted AND l.objsubid = 1
      AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database())
      AND l.classid = ((k.key >> 32) & 4294967295)::oid AND l.objid = (k.key & 4294967295)::oid)
FROM unnest(:workers::text[]) AS w(worker), LATERAL (SELECT hashtextextended(w.worker, :life_seed) AS key) k;

-- name: live_workers
SELECT w.worker, w.host, w.pid, w.job_id, w.joined, w.beat,
       (SELECT count(*) FROM items i WHERE i.lease_owner = w.worker AND i.state = 'leased'),
       (SELECT max(i.lease_expires) FROM items i WHERE i.lease_owner = w.worker AND i.state = 'leased')
FROM workers w WHERE w.beat > :now - :stale_s ORDER BY w.host COLLATE "C", w.pid, w.worker COLLATE "C";

-- name: silent_workers
-- Owners of leases that have not beaten within stale_s (stopped, dead, cut off) or have no row (never
-- beat, or forgotten), per job they hold items of: how many, and when the last of those leases lapses.
SELECT i.lease_owner, i.job_id, w.joined, w.beat, count(*), max(i.lease_expires)
FROM items i LEFT JOIN workers w ON w.worker = i.lease_owner
WHERE i.state = 'leased' AND i.lease_owner IS NOT NULL AND (w.beat IS NULL OR w.beat <= :now - :stale_s)
GROUP BY i.lease_owner, i.job_id, w.joined, w.beat
ORDER BY i.lease_owner COLLATE "C", i.job_id COLLATE "C";

-- name: item_epochs
-- Where a commit's refused items stand: a result its own lease already committed is not billed again.
SELECT seq, state, attempts FROM items WHERE job_id = :job_id AND seq = ANY(:seqs);

-- name: lost_usage_totals
SELECT count(*), coalesce(sum(prompt_tokens + completion_tokens), 0), coalesce(sum(cost_usd), 0)
FROM usage WHERE job_id = :job_id AND seq = :seq AND cached = 0;

-- name: insert_lost_result
INSERT INTO lost_results (job_id, seq, epoch) VALUES (:job_id, :seq, :epoch) ON CONFLICT DO NOTHING;

-- name: migration_4
-- Batch API chunks (issue 12).
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
    planned_at DOUBLE PRECISION NOT NULL,
    attempt INTEGER NOT NULL,
    held_tokens BIGINT NOT NULL,  -- its worst case, also a budget hold (owner batch:JOB:CHUNK) until collected
    held_cost DOUBLE PRECISION NOT NULL,
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

-- name: migration_7
-- Batch API ticks (issue 12): who ticks a job's batches now, so that a slow tick's chunks are not
-- taken by another host's (its heartbeat renews the claim).
-- Who ticks a job's batches now (one tick at a time per job, on any host): its claim lasts to
-- ``expires`` and its heartbeat renews it: a claim past it, or of a dead process on this host, is taken.
CREATE TABLE IF NOT EXISTS batch_ticks (
    job_id TEXT PRIMARY KEY,
    owner TEXT NOT NULL,
    expires DOUBLE PRECISION NOT NULL
);
-- Expired leases are looked for at every lease: a tick holds a million (its items waiting on batches),
-- and without this each look walked them all.
CREATE INDEX IF NOT EXISTS items_expiry ON items (job_id, lease_expires) WHERE state = 'leased';

-- name: migration_8
-- The queue's index holds only the waiting items (partial), and a leased item is found by its key.
-- With every item's state in one index, each lease and finish left dead entries that later searches
-- walked until a vacuum: at 64,000 of 1,000,000 items done, finishing one item took 10 ms. The items
-- table churns as a queue does, so it is vacuumed after a few thousand changes, not a fifth of it.
-- On a database with a big job already in, making the index takes a while (2 s at 1M items), once,
-- and dropping the old one waits for every open transaction on items: at most 5 s, or the command
-- fails (exit 7, nothing changed) and the next one migrates.
SET LOCAL lock_timeout = '5s';
CREATE INDEX IF NOT EXISTS items_pending ON items (job_id, kind, seq) WHERE state = 'pending';
DROP INDEX IF EXISTS items_work;
ALTER TABLE items SET (autovacuum_vacuum_scale_factor = 0.01, autovacuum_vacuum_threshold = 2000,
                       autovacuum_analyze_scale_factor = 0.02, autovacuum_analyze_threshold = 2000);

-- name: batch_chunks
SELECT job_id, chunk, stage, requests, path, endpoint, model, planned_at, attempt, held_tokens, held_cost, file_id,
       batch_id, status, created, expires, total, completed, failed, errors
FROM batch_chunks WHERE job_id = :job_id ORDER BY chunk COLLATE "C";

-- name: batch_chunk_stage
SELECT stage FROM batch_chunks WHERE job_id = :job_id AND chunk = :chunk FOR UPDATE;

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

-- name: migration_5
-- Store calls made again after a lost acknowledgement (issue 11): each write that must not be done
-- twice records its result under its call's token in its own transaction: a repeat returns it.
-- Kept STORE_CALL_KEEP_S (on the database's clock), pruned as new ones are recorded.
CREATE TABLE IF NOT EXISTS store_calls (
    token TEXT PRIMARY KEY,
    at DOUBLE PRECISION NOT NULL,
    result TEXT               -- JSON, NULL only inside the transaction of a repeat that claimed it
);
CREATE INDEX IF NOT EXISTS store_calls_at ON store_calls (at);

-- name: claim_call
-- A repeat's first statement: waits for the first attempt's transaction if it still holds the token.
INSERT INTO store_calls (token, at, result) VALUES (:token, extract(epoch FROM now()), NULL)
ON CONFLICT (token) DO NOTHING;

-- name: call_result
SELECT result FROM store_calls WHERE token = :token;

-- name: record_call
-- Old calls are pruned a few at a time, skipping those another writer is pruning (never waiting on it).
WITH pruned AS (DELETE FROM store_calls WHERE token IN (
    SELECT token FROM store_calls WHERE at < extract(epoch FROM now()) - :keep_s
    LIMIT 64 FOR UPDATE SKIP LOCKED))
INSERT INTO store_calls (token, at, result) VALUES (:token, extract(epoch FROM now()), :result)
ON CONFLICT (token) DO UPDATE SET result = excluded.result;

-- name: leased_items
-- The items a lease took, read again for its repeat (their epochs are the recorded ones).
SELECT seq, item_id, line, text, kind, payload FROM items WHERE job_id = :job_id AND seq = ANY(:seqs) ORDER BY seq;

-- name: release_owners
-- reclaim: several owners' leases at once, their items locked in (job, seq) order.
UPDATE items SET state = 'pending', lease_owner = NULL, lease_expires = NULL
WHERE (job_id, seq) IN (SELECT job_id, seq FROM items WHERE lease_owner = ANY(:owners) AND state = 'leased'
                        ORDER BY job_id, seq FOR UPDATE)
  AND lease_owner = ANY(:owners) AND state = 'leased';

-- name: drop_owners_holds
DELETE FROM budget_holds
WHERE (job_id, owner) IN (SELECT job_id, owner FROM budget_holds WHERE owner = ANY(:owners)
                          ORDER BY job_id, owner COLLATE "C" FOR UPDATE);

-- name: migration_6
-- Jobs a worker found it cannot run (outside its output root, an endpoint no longer allowed): the
-- reason, shown by `prelabel status`.
CREATE TABLE IF NOT EXISTS job_holds (
    job_id TEXT PRIMARY KEY,
    reason TEXT NOT NULL,
    at DOUBLE PRECISION NOT NULL
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
