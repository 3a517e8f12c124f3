//! The shared queue: PostgreSQL, for several gateway replicas on one database (`--queue
//! postgres://...`). It keeps the SQLite queue's guarantees, across replicas.
//!
//! - **Accept is one transaction.** The delivery id and all of the delivery's jobs are written by one
//!   call of `hookgate_accept`, and the caller hears back only after COMMIT.
//! - **Group commit.** Accepts and settles go to writer tasks; each takes whatever has queued up (up
//!   to [`MAX_BATCH`]) and sends `BEGIN`, one statement per operation and `COMMIT` down one
//!   connection as a pipeline, so concurrent requests share one round trip and one WAL flush. If a
//!   statement fails (bad data, a deadlock with another replica), the transaction is rolled back
//!   whole and each operation is run again alone, so only the bad one fails. (No savepoints: a
//!   savepoint per operation would spend a subtransaction each, and past 64 in one transaction
//!   PostgreSQL's snapshots slow down for every session.)
//! - **Dedup and coalescing hold across replicas** because they are unique indexes: `deliveries`'
//!   primary key, and the partial unique index on pending checks of (target, key), both hit with
//!   `INSERT .. ON CONFLICT`, which waits for a concurrent inserter's commit.
//! - **Claims are leases.** `hookgate_claim` picks due jobs `FOR UPDATE SKIP LOCKED`, marks them in
//!   flight until `now + visibility`, and bumps their lease token. `due_targets` first returns expired
//!   claims to pending (a replica that died mid-delivery), and a settle with an outdated token is
//!   refused.
//! - **Limits hold across replicas.** A target's claims lock its row in `buckets`: under that lock the
//!   claim counts the target's unexpired in-flight jobs against `concurrency` and takes tokens from the
//!   bucket (its rate), so concurrent replicas see each other's claims.
//! - **One clock.** Every time the queue compares or stores (run_at, claimed_until, seen_at, ...) is
//!   PostgreSQL's `clock_timestamp()`, so replicas whose clocks differ agree on what is due.
//! - **TLS as the URL's `sslmode` says** (`prefer` by default: TLS when the server offers it), through
//!   rustls. When TLS is used, the server's certificate and host name are always verified, against the
//!   webpki roots plus the CA file of [`Options::ca_file`] (`--queue-ca-file`).
//! - **Connection loss fails fast.** An operation that cannot reach the database returns a
//!   [`QueueError`] within [`OP_TIMEOUT`] (the server answers 503, never 202); the pool replaces
//!   broken connections by itself, so the queue works again as soon as the database is back.
//!
//! The logic that must be atomic lives in PL/pgSQL functions created by the migrations, so each
//! operation is one statement and one round trip. Inspect with `psql` (see `docs/delivery.md`).

use std::borrow::Cow;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod, Runtime};
use futures_util::future::join_all;
use tokio::sync::{Mutex, mpsc, oneshot};
use tokio_postgres::Row;
use tokio_postgres::config::SslMode;
use tokio_postgres::error::SqlState;
use tokio_postgres_rustls::MakeRustlsConnect;

use crate::delivery_log::{Filter, Record, RecordRow, StatusFilter, TargetStats};
use crate::queue::{
    Accepted, Attempt, ClaimLimits, Job, JobKind, JobState, Lease, NewJob, QueueBackend,
    QueueError, Settle, Stats,
};

/// The most operations committed together.
const MAX_BATCH: usize = 512;
/// Writer tasks: while one waits for its COMMIT, another gathers and sends the next batch.
const WRITERS: usize = 2;
/// Operations waiting for a writer; beyond this, `accept` fails fast (the server answers 503).
const CHANNEL_CAPACITY: usize = 65_536;
/// Connections per replica (two are the writers').
const POOL_SIZE: usize = 16;
/// The longest any operation waits for the database, connecting included.
pub const OP_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a new connection may take, unless the URL sets `connect_timeout`.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Attempts of an operation that lost a deadlock or serialization race with another replica.
const RACE_RETRIES: usize = 3;
/// The largest CA file read (a system-wide bundle is a few hundred KiB).
const MAX_CA_FILE: u64 = 1 << 20;
/// The advisory lock held while migrating, so replicas starting together migrate once.
const MIGRATION_LOCK: i64 = 0x686f_6f6b_6761_7465; // "hookgate"

/// Schema migrations, applied in order in one transaction; `hookgate_schema.version` records how many
/// ran.
const MIGRATIONS: &[&str] = &[
    // 1: the tables (as SQLite's, with the lease token and the rate buckets), and the functions that
    // make each operation one atomic statement.
    r#"
CREATE TABLE jobs (
    id            bigint  GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    kind          text    NOT NULL,
    target        text    NOT NULL,
    key           text,
    state         text    NOT NULL,
    run_at        bigint  NOT NULL,
    claimed_until bigint,
    lease         bigint  NOT NULL DEFAULT 0,
    attempts      integer NOT NULL DEFAULT 0,
    coalesced     integer NOT NULL DEFAULT 1,
    created_at    bigint  NOT NULL,
    updated_at    bigint  NOT NULL,
    source        text    NOT NULL,
    event         text,
    delivery      text    NOT NULL,
    rule          text    NOT NULL,
    action        bigint  NOT NULL,
    sign_with     text,
    last_status   integer,
    last_error    text,
    headers       text    NOT NULL,
    body          bytea   NOT NULL
);
CREATE UNIQUE INDEX jobs_pending_check ON jobs (target, key) WHERE kind = 'check' AND state = 'pending';
CREATE INDEX jobs_due ON jobs (state, target, run_at);
CREATE INDEX jobs_updated ON jobs (state, updated_at);
CREATE INDEX jobs_inflight ON jobs (target, claimed_until) WHERE state = 'inflight';
CREATE TABLE attempts (
    job_id      bigint  NOT NULL REFERENCES jobs (id) ON DELETE CASCADE,
    attempt     integer NOT NULL,
    started_at  bigint  NOT NULL,
    duration_ms bigint  NOT NULL,
    status      integer,
    error       text,
    PRIMARY KEY (job_id, attempt)
);
CREATE TABLE deliveries (
    source   text   NOT NULL,
    delivery text   NOT NULL,
    seen_at  bigint NOT NULL,
    PRIMARY KEY (source, delivery)
);
CREATE INDEX deliveries_seen ON deliveries (seen_at);
CREATE TABLE buckets (
    target     text             PRIMARY KEY,
    tokens     double precision NOT NULL,
    at         bigint           NOT NULL,
    rate_count integer          NOT NULL,
    rate_per   bigint           NOT NULL
);

-- Unix milliseconds by the database's clock, the one clock all replicas share.
CREATE FUNCTION hookgate_now() RETURNS bigint LANGUAGE sql VOLATILE AS
$$ SELECT floor(extract(epoch FROM clock_timestamp()) * 1000)::bigint $$;

-- Returns a job to pending, due at p_run_at. A check whose (target, key) already has a pending job
-- merges into it (its count added), since one check serves both; if such a job appears meanwhile
-- (another replica's accept), the unique index says so and the check merges into that one.
CREATE FUNCTION hookgate_to_pending(p_id bigint, p_run_at bigint, p_reset boolean) RETURNS void
LANGUAGE plpgsql AS $$
DECLARE
    v_job record;
    v_sibling bigint;
    v_now bigint := hookgate_now();
BEGIN
    SELECT kind, target, key, coalesced INTO v_job FROM jobs WHERE id = p_id;
    LOOP
        IF v_job.kind = 'check' THEN
            SELECT id INTO v_sibling FROM jobs
             WHERE kind = 'check' AND state = 'pending' AND target = v_job.target AND key = v_job.key
               AND id <> p_id
             FOR UPDATE;
            IF FOUND THEN
                UPDATE jobs SET coalesced = coalesced + v_job.coalesced, updated_at = v_now WHERE id = v_sibling;
                UPDATE jobs SET state = 'done', claimed_until = NULL, updated_at = v_now,
                                last_error = 'merged into pending check ' || v_sibling
                 WHERE id = p_id;
                RETURN;
            END IF;
        END IF;
        BEGIN
            UPDATE jobs SET state = 'pending', run_at = p_run_at, claimed_until = NULL, updated_at = v_now,
                            attempts = CASE WHEN p_reset THEN 0 ELSE attempts END
             WHERE id = p_id;
            RETURN;
        EXCEPTION WHEN unique_violation THEN
            -- A pending check of this key was committed meanwhile: loop, and merge into it.
        END;
    END LOOP;
END $$;

-- Records a delivery and enqueues its jobs. Returns the jobs' ids, or NULL when the delivery id was
-- seen within the window (a duplicate: nothing enqueued).
CREATE FUNCTION hookgate_accept(
    p_source text, p_delivery text, p_window bigint,
    p_kinds text[], p_targets text[], p_keys text[], p_sources text[], p_events text[],
    p_deliveries text[], p_rules text[], p_actions bigint[], p_headers text[], p_sign_withs text[],
    p_bodies bytea[]
) RETURNS bigint[] LANGUAGE plpgsql AS $$
DECLARE
    v_now bigint := hookgate_now();
    v_ids bigint[];
    v_id bigint;
    v_fresh boolean;
    v_sorted boolean;
    i bigint;
BEGIN
    IF p_source IS NOT NULL THEN
        -- Insert the id, or refresh it only if its last sighting is outside the window: a row comes
        -- back exactly when the delivery is new. A concurrent insert of the same id waits for ours.
        INSERT INTO deliveries (source, delivery, seen_at) VALUES (p_source, p_delivery, v_now)
        ON CONFLICT (source, delivery) DO UPDATE SET seen_at = excluded.seen_at
         WHERE deliveries.seen_at < v_now - p_window
        RETURNING true INTO v_fresh;
        IF v_fresh IS NULL THEN
            RETURN NULL;
        END IF;
    END IF;
    -- With several checks, ids are taken first in the jobs' order (the order they are delivered in,
    -- within a target) and the rows written in (target, key) order, so deliveries touching the same
    -- pending checks lock them in the same order and queue behind each other instead of deadlocking.
    v_sorted := cardinality(array_positions(p_kinds, 'check')) > 1;
    IF v_sorted THEN
        SELECT array_agg(v ORDER BY v) INTO v_ids
          FROM (SELECT nextval('jobs_id_seq') AS v FROM generate_series(1, cardinality(p_kinds))) AS s;
    ELSE
        v_ids := array_fill(NULL::bigint, ARRAY[cardinality(p_kinds)]);
    END IF;
    FOR i IN SELECT o FROM unnest(p_targets, p_keys) WITH ORDINALITY AS u(t, k, o)
              ORDER BY CASE WHEN v_sorted THEN t END, CASE WHEN v_sorted THEN k END, o LOOP
        -- Checks always have a key ('' when none is given), so the unique index sees them all.
        INSERT INTO jobs (id, kind, target, key, source, event, delivery, rule, action, body, headers,
                          sign_with, state, run_at, created_at, updated_at)
        OVERRIDING SYSTEM VALUE
        VALUES (coalesce(v_ids[i], nextval('jobs_id_seq')), p_kinds[i], p_targets[i],
                CASE WHEN p_kinds[i] = 'check' THEN coalesce(p_keys[i], '') ELSE p_keys[i] END,
                p_sources[i], p_events[i], p_deliveries[i], p_rules[i], p_actions[i], p_bodies[i],
                p_headers[i], p_sign_withs[i], 'pending', v_now, v_now, v_now)
        ON CONFLICT (target, key) WHERE kind = 'check' AND state = 'pending'
        DO UPDATE SET coalesced = jobs.coalesced + 1, updated_at = excluded.updated_at
        RETURNING id INTO v_id;
        v_ids[i] := v_id;
    END LOOP;
    RETURN v_ids;
END $$;

-- Settles a job for the holder of lease p_lease. Returns 0, or 1: no such job, 2: claimed again since
-- (then nothing is recorded).
CREATE FUNCTION hookgate_settle(
    p_id bigint, p_lease bigint, p_attempt integer, p_started bigint, p_duration bigint,
    p_status integer, p_error text, p_outcome text, p_delay bigint
) RETURNS integer LANGUAGE plpgsql AS $$
DECLARE
    v_now bigint := hookgate_now();
BEGIN
    IF p_outcome IN ('ack', 'dead') THEN
        -- The common case in one write: the outcome and the attempt's summary, if the lease holds.
        UPDATE jobs SET state = CASE p_outcome WHEN 'ack' THEN 'done' ELSE 'dead' END,
                        claimed_until = NULL, updated_at = v_now,
                        attempts = coalesce(p_attempt, attempts),
                        last_status = CASE WHEN p_attempt IS NULL THEN last_status ELSE p_status END,
                        last_error = CASE WHEN p_attempt IS NULL THEN last_error ELSE p_error END
         WHERE id = p_id AND lease = p_lease;
    ELSE
        PERFORM 1 FROM jobs WHERE id = p_id AND lease = p_lease FOR UPDATE;
    END IF;
    IF NOT FOUND THEN
        PERFORM 1 FROM jobs WHERE id = p_id;
        RETURN CASE WHEN FOUND THEN 2 ELSE 1 END;
    END IF;
    IF p_attempt IS NOT NULL THEN
        INSERT INTO attempts (job_id, attempt, started_at, duration_ms, status, error)
        VALUES (p_id, p_attempt, p_started, p_duration, p_status, p_error)
        ON CONFLICT (job_id, attempt) DO UPDATE
           SET started_at = excluded.started_at, duration_ms = excluded.duration_ms,
               status = excluded.status, error = excluded.error;
    END IF;
    IF p_outcome NOT IN ('ack', 'dead') THEN
        IF p_attempt IS NOT NULL THEN
            UPDATE jobs SET attempts = p_attempt, last_status = p_status, last_error = p_error
             WHERE id = p_id;
        END IF;
        PERFORM hookgate_to_pending(p_id, v_now + CASE WHEN p_outcome = 'retry' THEN p_delay ELSE 0 END, false);
    END IF;
    RETURN 0;
END $$;

-- Puts a dead job back to pending with its attempts reset and a new lease. Returns the state it was
-- in ('dead' when requeued), or NULL when there is no such job.
CREATE FUNCTION hookgate_requeue(p_id bigint) RETURNS text LANGUAGE plpgsql AS $$
DECLARE
    v_state text;
BEGIN
    SELECT state INTO v_state FROM jobs WHERE id = p_id FOR UPDATE;
    IF FOUND AND v_state = 'dead' THEN
        UPDATE jobs SET lease = lease + 1 WHERE id = p_id;
        PERFORM hookgate_to_pending(p_id, hookgate_now(), true);
    END IF;
    RETURN v_state;
END $$;

-- Returns claims whose visibility timeout passed to pending: their holder died or hangs.
CREATE FUNCTION hookgate_expire() RETURNS integer LANGUAGE plpgsql AS $$
DECLARE
    v_job record;
    v_count integer := 0;
BEGIN
    FOR v_job IN SELECT id FROM jobs WHERE state = 'inflight' AND claimed_until < hookgate_now()
                 FOR UPDATE SKIP LOCKED LOOP
        PERFORM hookgate_to_pending(v_job.id, hookgate_now(), false);
        v_count := v_count + 1;
    END LOOP;
    RETURN v_count;
END $$;

-- Claims up to p_limit due jobs of p_target for p_visibility ms, within its limits across every
-- replica: p_concurrency unexpired claims at once (NULL: no limit), and a token bucket of
-- p_rate_count tokens refilled over p_rate_per ms (NULL: no rate). The target's bucket row is locked
-- for the claim, so claims of one target are serialized and each sees the others' commits.
CREATE FUNCTION hookgate_claim(
    p_target text, p_limit bigint, p_visibility bigint, p_concurrency bigint,
    p_rate_count integer, p_rate_per bigint
) RETURNS SETOF jobs LANGUAGE plpgsql AS $$
DECLARE
    v_now bigint;
    v_limit bigint := p_limit;
    v_inflight bigint;
    v_bucket buckets%ROWTYPE;
    v_tokens double precision;
    v_claimed bigint;
BEGIN
    IF p_concurrency IS NOT NULL OR p_rate_count IS NOT NULL THEN
        INSERT INTO buckets (target, tokens, at, rate_count, rate_per)
        VALUES (p_target, coalesce(p_rate_count, 0), hookgate_now(), coalesce(p_rate_count, 0), coalesce(p_rate_per, 0))
        ON CONFLICT (target) DO NOTHING;
        SELECT * INTO v_bucket FROM buckets WHERE target = p_target FOR UPDATE;
    END IF;
    v_now := hookgate_now();
    IF p_concurrency IS NOT NULL THEN
        SELECT count(*) INTO v_inflight FROM jobs
         WHERE state = 'inflight' AND target = p_target AND claimed_until >= v_now;
        v_limit := least(v_limit, p_concurrency - v_inflight);
    END IF;
    IF p_rate_count IS NOT NULL THEN
        IF v_bucket.rate_count = p_rate_count AND v_bucket.rate_per = p_rate_per THEN
            v_tokens := least(p_rate_count::double precision,
                              v_bucket.tokens + greatest(v_now - v_bucket.at, 0)::double precision * p_rate_count / p_rate_per);
        ELSE
            v_tokens := p_rate_count;
        END IF;
        v_limit := least(v_limit, floor(v_tokens)::bigint);
    END IF;
    IF v_limit <= 0 THEN
        RETURN;
    END IF;
    RETURN QUERY
    WITH picked AS (
        SELECT j.id FROM jobs j
         WHERE j.state = 'pending' AND j.target = p_target AND j.run_at <= v_now
           AND NOT (j.kind = 'check' AND EXISTS (
               SELECT 1 FROM jobs i
                WHERE i.state = 'inflight' AND i.kind = 'check' AND i.target = j.target AND i.key = j.key))
         ORDER BY j.run_at, j.id
         LIMIT v_limit
         FOR UPDATE SKIP LOCKED)
    UPDATE jobs SET state = 'inflight', claimed_until = v_now + p_visibility, updated_at = v_now,
                    lease = jobs.lease + 1
      FROM picked WHERE jobs.id = picked.id
    RETURNING jobs.*;
    GET DIAGNOSTICS v_claimed = ROW_COUNT;
    IF p_rate_count IS NOT NULL THEN
        UPDATE buckets SET tokens = v_tokens - v_claimed, at = v_now, rate_count = p_rate_count,
                           rate_per = p_rate_per
         WHERE target = p_target;
    END IF;
END $$;
"#,
    // 2: the delivery log's records (accepted ones are written with their jobs, by
    // `hookgate_accept_recorded`), the texts of the rules versions that judged them, each target's last
    // attempts (written by `hookgate_settle`), and a re-queued job's retry base (its attempts keep their
    // numbers).
    r#"
ALTER TABLE jobs ADD COLUMN retry_base integer NOT NULL DEFAULT 0;
CREATE TABLE records (
    id            text    PRIMARY KEY,
    received_at   bigint  NOT NULL,
    source        text,
    delivery      text,
    event         text,
    status        integer NOT NULL,
    outcome       text    NOT NULL,
    reason        text,
    matched       text    NOT NULL,
    actions       text    NOT NULL,
    rules_version text,
    replay_of     text,
    headers       text,
    query         text,
    size          bigint  NOT NULL,
    body          bytea
);
CREATE INDEX records_received ON records (received_at);
CREATE TABLE rules_versions (
    hash       text   PRIMARY KEY,
    created_at bigint NOT NULL,
    files      text   NOT NULL
);
CREATE TABLE target_status (
    target           text PRIMARY KEY,
    last_attempt_at  bigint,
    last_delivery_at bigint,
    last_error       text,
    last_error_at    bigint
);

CREATE OR REPLACE FUNCTION hookgate_to_pending(p_id bigint, p_run_at bigint, p_reset boolean) RETURNS void
LANGUAGE plpgsql AS $$
DECLARE
    v_job record;
    v_sibling bigint;
    v_now bigint := hookgate_now();
BEGIN
    SELECT kind, target, key, coalesced INTO v_job FROM jobs WHERE id = p_id;
    LOOP
        IF v_job.kind = 'check' THEN
            SELECT id INTO v_sibling FROM jobs
             WHERE kind = 'check' AND state = 'pending' AND target = v_job.target AND key = v_job.key
               AND id <> p_id
             FOR UPDATE;
            IF FOUND THEN
                UPDATE jobs SET coalesced = coalesced + v_job.coalesced, updated_at = v_now WHERE id = v_sibling;
                UPDATE jobs SET state = 'done', claimed_until = NULL, updated_at = v_now,
                                last_error = 'merged into pending check ' || v_sibling
                 WHERE id = p_id;
                RETURN;
            END IF;
        END IF;
        BEGIN
            UPDATE jobs SET state = 'pending', run_at = p_run_at, claimed_until = NULL, updated_at = v_now,
                            retry_base = CASE WHEN p_reset THEN attempts ELSE retry_base END
             WHERE id = p_id;
            RETURN;
        EXCEPTION WHEN unique_violation THEN
            -- A pending check of this key was committed meanwhile: loop, and merge into it.
        END;
    END LOOP;
END $$;

CREATE OR REPLACE FUNCTION hookgate_settle(
    p_id bigint, p_lease bigint, p_attempt integer, p_started bigint, p_duration bigint,
    p_status integer, p_error text, p_outcome text, p_delay bigint
) RETURNS integer LANGUAGE plpgsql AS $$
DECLARE
    v_now bigint := hookgate_now();
BEGIN
    IF p_outcome IN ('ack', 'dead') THEN
        -- The common case in one write: the outcome and the attempt's summary, if the lease holds.
        UPDATE jobs SET state = CASE p_outcome WHEN 'ack' THEN 'done' ELSE 'dead' END,
                        claimed_until = NULL, updated_at = v_now,
                        attempts = coalesce(p_attempt, attempts),
                        last_status = CASE WHEN p_attempt IS NULL THEN last_status ELSE p_status END,
                        last_error = CASE WHEN p_attempt IS NULL THEN last_error ELSE p_error END
         WHERE id = p_id AND lease = p_lease;
    ELSE
        PERFORM 1 FROM jobs WHERE id = p_id AND lease = p_lease FOR UPDATE;
    END IF;
    IF NOT FOUND THEN
        PERFORM 1 FROM jobs WHERE id = p_id;
        RETURN CASE WHEN FOUND THEN 2 ELSE 1 END;
    END IF;
    IF p_attempt IS NOT NULL THEN
        -- The target's last attempts, for the admin API: when, and whether it reached it.
        INSERT INTO target_status (target, last_attempt_at, last_delivery_at, last_error, last_error_at)
        SELECT target, v_now,
               CASE WHEN p_status BETWEEN 200 AND 299 THEN v_now END,
               CASE WHEN p_status BETWEEN 200 AND 299 THEN NULL
                    ELSE coalesce(p_error, 'HTTP ' || coalesce(p_status, 0)) END,
               CASE WHEN p_status BETWEEN 200 AND 299 THEN NULL ELSE v_now END
          FROM jobs WHERE id = p_id
        ON CONFLICT (target) DO UPDATE SET
            last_attempt_at = excluded.last_attempt_at,
            last_delivery_at = coalesce(excluded.last_delivery_at, target_status.last_delivery_at),
            last_error = coalesce(excluded.last_error, target_status.last_error),
            last_error_at = coalesce(excluded.last_error_at, target_status.last_error_at);
        INSERT INTO attempts (job_id, attempt, started_at, duration_ms, status, error)
        VALUES (p_id, p_attempt, p_started, p_duration, p_status, p_error)
        ON CONFLICT (job_id, attempt) DO UPDATE
           SET started_at = excluded.started_at, duration_ms = excluded.duration_ms,
               status = excluded.status, error = excluded.error;
    END IF;
    IF p_outcome NOT IN ('ack', 'dead') THEN
        IF p_attempt IS NOT NULL THEN
            UPDATE jobs SET attempts = p_attempt, last_status = p_status, last_error = p_error
             WHERE id = p_id;
        END IF;
        PERFORM hookgate_to_pending(p_id, v_now + CASE WHEN p_outcome = 'retry' THEN p_delay ELSE 0 END, false);
    END IF;
    RETURN 0;
END $$;

-- hookgate_accept, and the delivery's record in the same transaction when it was accepted (not a
-- duplicate), with its actions' job ids filled in.
CREATE FUNCTION hookgate_accept_recorded(
    p_source text, p_delivery text, p_window bigint,
    p_kinds text[], p_targets text[], p_keys text[], p_sources text[], p_events text[],
    p_deliveries text[], p_rules text[], p_actions bigint[], p_headers text[], p_sign_withs text[],
    p_bodies bytea[],
    r_id text, r_received bigint, r_source text, r_delivery text, r_event text, r_reason text,
    r_matched text, r_actions text, r_rules_version text, r_replay_of text, r_headers text,
    r_query text, r_body bytea, r_size bigint
) RETURNS bigint[] LANGUAGE plpgsql AS $$
DECLARE
    v_ids bigint[];
BEGIN
    v_ids := hookgate_accept(p_source, p_delivery, p_window, p_kinds, p_targets, p_keys, p_sources,
                             p_events, p_deliveries, p_rules, p_actions, p_headers, p_sign_withs,
                             p_bodies);
    IF v_ids IS NOT NULL THEN
        INSERT INTO records (id, received_at, source, delivery, event, status, outcome, reason, matched,
                             actions, rules_version, replay_of, headers, query, size, body)
        VALUES (r_id, r_received, r_source, r_delivery, r_event, 202, 'accepted', r_reason, r_matched,
                coalesce((SELECT jsonb_agg(jsonb_set(a, '{job}', to_jsonb(v_ids[o])) ORDER BY o)
                            FROM jsonb_array_elements(r_actions::jsonb) WITH ORDINALITY AS x(a, o))::text,
                         '[]'),
                r_rules_version, r_replay_of, r_headers, r_query, r_size, r_body)
        ON CONFLICT (id) DO NOTHING;
    END IF;
    RETURN v_ids;
END $$;
"#,
];

const JOB_COLUMNS: &str = "id, kind, target, key, source, event, delivery, rule, action, body, headers, sign_with, \
     state, attempts, coalesced, run_at, created_at, updated_at, last_status, last_error, lease, retry_base";

const ACCEPT: &str =
    "SELECT hookgate_accept($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14)";
const ACCEPT_RECORDED: &str = "SELECT hookgate_accept_recorded($1, $2, $3, $4, $5, $6, $7, $8, $9, \
     $10, $11, $12, $13, $14, $15, $16, $17, $18, $19, $20, $21, $22, $23, $24, $25, $26, $27, $28)";
const SETTLE: &str = "SELECT hookgate_settle($1, $2, $3, $4, $5, $6, $7, $8, $9)";

type Reply<T> = oneshot::Sender<Result<T, QueueError>>;

/// An operation for the writers.
enum Op {
    Accept {
        seen: Option<(String, String)>,
        window: Duration,
        jobs: Vec<NewJob>,
        record: Option<Arc<Record>>,
        reply: Reply<Accepted>,
    },
    Settle {
        lease: Lease,
        attempt: Option<Attempt>,
        settle: Settle,
        reply: Reply<()>,
    },
}

/// The PostgreSQL queue of one replica: a connection pool and its writer tasks. Dropping it stops the
/// writers after they have answered everything already sent.
pub struct PostgresQueue {
    pool: Pool,
    tx: mpsc::Sender<Op>,
    describe: String,
}

impl PostgresQueue {
    /// Connects to `url`, checks the database, and migrates it (once, however many replicas start
    /// together). Must be called within a Tokio runtime: the writers are tasks.
    pub async fn open(url: &str, options: &Options) -> Result<PostgresQueue, QueueError> {
        let mut config: tokio_postgres::Config = url.parse().map_err(|e| url_error(url, &e))?;
        if config.get_connect_timeout().is_none() {
            config.connect_timeout(CONNECT_TIMEOUT);
        }
        if config.get_application_name().is_none() {
            config.application_name("hookgate");
        }
        let describe = describe(&config);
        let ssl_mode = config.get_ssl_mode();
        let tls = MakeRustlsConnect::new(tls_config(options.ca_file.as_deref())?);
        let manager = Manager::from_config(
            config,
            tls,
            ManagerConfig {
                recycling_method: RecyclingMethod::Fast,
            },
        );
        let pool = Pool::builder(manager)
            .max_size(POOL_SIZE)
            .wait_timeout(Some(OP_TIMEOUT))
            .create_timeout(Some(OP_TIMEOUT))
            .recycle_timeout(Some(OP_TIMEOUT))
            .runtime(Runtime::Tokio1)
            .build()
            .map_err(|e| QueueError::Storage(format!("cannot set up the connection pool: {e}")))?;
        {
            let mut client =
                connect(&pool, &describe, ssl_mode, options.ca_file.as_deref()).await?;
            let encoding: String = client
                .query_one("SHOW server_encoding", &[])
                .await
                .map_err(pg)?
                .get(0);
            if encoding != "UTF8" {
                return Err(QueueError::Storage(format!(
                    "the database's encoding is `{encoding}`, not UTF8\nhelp: create the database with `CREATE DATABASE ... ENCODING 'UTF8' TEMPLATE template0`"
                )));
            }
            migrate(&mut client).await?;
        }
        let (tx, rx) = mpsc::channel(CHANNEL_CAPACITY);
        let rx = Arc::new(Mutex::new(rx));
        for _ in 0..WRITERS {
            tokio::spawn(writer(pool.clone(), rx.clone()));
        }
        Ok(PostgresQueue { pool, tx, describe })
    }

    /// `postgres HOST:PORT/DATABASE`, for logs (never the password).
    pub fn describe(&self) -> String {
        self.describe.clone()
    }

    async fn call<T>(&self, op: impl FnOnce(Reply<T>) -> Op) -> Result<T, QueueError> {
        let (reply, rx) = oneshot::channel();
        self.tx.try_send(op(reply)).map_err(|e| match e {
            mpsc::error::TrySendError::Full(_) => {
                QueueError::Storage("the queue's writers are overloaded".into())
            }
            mpsc::error::TrySendError::Closed(_) => QueueError::Closed,
        })?;
        rx.await.map_err(|_| QueueError::Closed)?
    }
}

/// How the queue connects, besides its URL.
#[derive(Debug, Clone, Default)]
pub struct Options {
    /// PEM certificates of CAs trusted besides the webpki roots, e.g. CloudNativePG's cluster CA
    /// (`--queue-ca-file`).
    pub ca_file: Option<PathBuf>,
}

/// Why the URL does not parse. tokio-postgres's message leaves its cause out; the cause is added when
/// it names an option (never a value, which could be the password).
fn url_error(url: &str, e: &tokio_postgres::Error) -> QueueError {
    let cause = std::error::Error::source(e)
        .map(|c| c.to_string())
        .unwrap_or_default();
    let query = url.split_once('?').map_or("", |(_, q)| q);
    let has = |key: &str| query.split('&').any(|p| p.split('=').next() == Some(key));
    let (detail, help) = if cause == "unknown option `sslrootcert`" {
        (
            cause.as_str(),
            "give the CA certificate with `--queue-ca-file PATH` (`HOOKGATE_QUEUE_CA_FILE`) instead of `sslrootcert` in the URL",
        )
    } else if cause == "invalid value for option `sslmode`" {
        (
            cause.as_str(),
            "`sslmode` takes `disable`, `prefer` (the default) or `require`; whenever TLS is used, the server's certificate and host name are verified, as libpq's `verify-full` does",
        )
    } else if cause.starts_with("unknown option `")
        && cause["unknown option `".len()..]
            .trim_end_matches('`')
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
    {
        let help = if ["sslcert", "sslkey", "sslpassword", "sslcrl"]
            .iter()
            .any(|k| has(k))
        {
            "client certificates are not supported: the gateway authenticates with the URL's user and password"
        } else {
            "write it as `postgres://USER:PASSWORD@HOST:PORT/DATABASE`"
        };
        (cause.as_str(), help)
    } else if cause.starts_with("invalid value for option `") {
        (
            cause.as_str(),
            "write it as `postgres://USER:PASSWORD@HOST:PORT/DATABASE`",
        )
    } else {
        (
            "",
            "write it as `postgres://USER:PASSWORD@HOST:PORT/DATABASE`",
        )
    };
    let detail = if detail.is_empty() {
        String::new()
    } else {
        format!(": {detail}")
    };
    QueueError::Storage(format!(
        "the queue URL is not a PostgreSQL connection URL{detail}\nhelp: {help}"
    ))
}

/// rustls with the ring provider (as reqwest's), trusting the webpki roots and the certificates of
/// `ca_file`.
fn tls_config(ca_file: Option<&Path>) -> Result<rustls::ClientConfig, QueueError> {
    let mut roots = rustls::RootCertStore {
        roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
    };
    if let Some(path) = ca_file {
        for cert in read_ca_file(path)? {
            roots.add(cert).map_err(|e| {
                QueueError::Storage(format!(
                    "the CA file `{}` holds a certificate that cannot be used: {e}\nhelp: {CA_FILE_HELP}",
                    path.display()
                ))
            })?;
        }
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| QueueError::Storage(format!("cannot set up TLS: {e}")))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(config)
}

const CA_FILE_HELP: &str = "`--queue-ca-file` names a PEM file of the CA certificates (`-----BEGIN CERTIFICATE-----` blocks) that sign PostgreSQL's certificate, e.g. the `ca.crt` of CloudNativePG's `<cluster>-ca` secret";

/// The certificates of a PEM file (a regular file, at most [`MAX_CA_FILE`]).
fn read_ca_file(
    path: &Path,
) -> Result<Vec<rustls::pki_types::CertificateDer<'static>>, QueueError> {
    use rustls::pki_types::CertificateDer;
    use rustls::pki_types::pem::{Error, PemObject};
    let fail = |what: String| {
        QueueError::Storage(format!(
            "the CA file `{}` {what}\nhelp: {CA_FILE_HELP}",
            path.display()
        ))
    };
    let bytes = crate::fs::read_regular(path, MAX_CA_FILE)
        .map_err(|e| fail(format!("cannot be read: {}", crate::fs::io_reason(&e))))?;
    if bytes.len() as u64 > MAX_CA_FILE {
        return Err(fail(format!("is larger than {} KiB", MAX_CA_FILE >> 10)));
    }
    let certs = CertificateDer::pem_slice_iter(&bytes)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| {
            fail(match e {
                Error::MissingSectionEnd { .. } => {
                    "is not valid PEM: a block has no `-----END` line".into()
                }
                Error::IllegalSectionStart { .. } => {
                    "is not valid PEM: a `-----BEGIN` line is malformed".into()
                }
                Error::Base64Decode(_) => "is not valid PEM: a block is not base64".into(),
                _ => "is not valid PEM".into(),
            })
        })?;
    if certs.is_empty() {
        return Err(fail("holds no certificate".into()));
    }
    Ok(certs)
}

/// The first connection, with what went wrong said for the operator: an untrusted certificate, a
/// server that wants TLS when the URL turns it off, ... (never the URL, so never its password).
async fn connect(
    pool: &Pool,
    describe: &str,
    ssl_mode: SslMode,
    ca_file: Option<&Path>,
) -> Result<deadpool_postgres::Client, QueueError> {
    use deadpool_postgres::PoolError;
    let e = match pool.get().await {
        Ok(client) => return Ok(client),
        Err(PoolError::Backend(e)) => e,
        Err(e) => {
            return Err(QueueError::Storage(format!(
                "{}\nhelp: check that PostgreSQL runs at {describe} and accepts this user",
                pool_error(e)
            )));
        }
    };
    let default_help = format!("check that PostgreSQL runs at {describe} and accepts this user");
    let (message, help) = match tls_failure(&e) {
        Some((failure, what)) => {
            let help = match failure {
                TlsFailure::UnknownIssuer => match ca_file {
                    None => "give the CA certificate that signed PostgreSQL's certificate (a PEM file) with `--queue-ca-file PATH` (`HOOKGATE_QUEUE_CA_FILE`); with CloudNativePG, the `ca.crt` of the `<cluster>-ca` secret".to_string(),
                    Some(path) => format!(
                        "the CA file `{}` does not hold the CA that signed PostgreSQL's certificate: give that CA's certificate (PEM) with `--queue-ca-file`; with CloudNativePG, the `ca.crt` of the `<cluster>-ca` secret",
                        path.display()
                    ),
                },
                TlsFailure::WrongName => "connect with a host name (or address) that the certificate names: the host of the `--queue` URL".to_string(),
                TlsFailure::Time => {
                    "renew PostgreSQL's certificate, or check this machine's clock".to_string()
                }
                TlsFailure::NotOffered => "turn TLS on in PostgreSQL (`ssl = on`), or let the gateway connect without it: `sslmode=prefer` (the default) or `sslmode=disable` in the `--queue` URL".to_string(),
                TlsFailure::Other => default_help,
            };
            (format!("cannot connect to {describe}: {what}"), help)
        }
        None => {
            let refused_plain = ssl_mode == SslMode::Disable
                && e.code() == Some(&SqlState::INVALID_AUTHORIZATION_SPECIFICATION)
                && e.as_db_error()
                    .is_some_and(|db| db.message().contains("no encryption"));
            let help = if refused_plain {
                "PostgreSQL takes this connection only over TLS: remove `sslmode=disable` from the `--queue` URL (and give its CA with `--queue-ca-file` if a private CA signs its certificate)".to_string()
            } else {
                default_help
            };
            (format!("cannot reach PostgreSQL: {}", reason(&e)), help)
        }
    };
    Err(QueueError::Storage(format!("{message}\nhelp: {help}")))
}

/// What went wrong with TLS, for the help line.
enum TlsFailure {
    UnknownIssuer,
    WrongName,
    Time,
    NotOffered,
    Other,
}

/// The rustls error inside a connection error, if any (tokio-rustls wraps it in an `io::Error`, whose
/// `source` skips it).
fn rustls_error(e: &tokio_postgres::Error) -> Option<&rustls::Error> {
    let mut cause = std::error::Error::source(e);
    while let Some(c) = cause {
        if let Some(r) = c.downcast_ref::<rustls::Error>() {
            return Some(r);
        }
        if let Some(r) = c
            .downcast_ref::<std::io::Error>()
            .and_then(|io| io.get_ref())
            .and_then(|inner| inner.downcast_ref::<rustls::Error>())
        {
            return Some(r);
        }
        cause = c.source();
    }
    None
}

/// A connection error that is about TLS: which kind, and what is wrong in words.
fn tls_failure(e: &tokio_postgres::Error) -> Option<(TlsFailure, String)> {
    use rustls::CertificateError as C;
    use rustls::Error::InvalidCertificate as Invalid;
    let cert = "PostgreSQL's TLS certificate";
    let Some(r) = rustls_error(e) else {
        // tokio-postgres's own: `sslmode=require`, and the server answered that it has no TLS.
        let cause = std::error::Error::source(e).map(|c| c.to_string());
        return (cause.as_deref() == Some("server does not support TLS")).then(|| {
            (
                TlsFailure::NotOffered,
                "PostgreSQL does not offer TLS, and the URL says `sslmode=require`".to_string(),
            )
        });
    };
    Some(match r {
        Invalid(C::UnknownIssuer) => (
            TlsFailure::UnknownIssuer,
            format!("{cert} is not signed by a trusted CA (unknown issuer)"),
        ),
        Invalid(C::NotValidForNameContext {
            expected,
            presented,
        }) => {
            let names = presented
                .iter()
                .map(|n| format!("`{}`", name_of(n)))
                .collect::<Vec<_>>()
                .join(", ");
            let names = if names.is_empty() {
                "no names".to_string()
            } else {
                names
            };
            (
                TlsFailure::WrongName,
                format!(
                    "{cert} is not valid for `{}` (it names {names})",
                    expected.to_str()
                ),
            )
        }
        Invalid(C::NotValidForName) => (
            TlsFailure::WrongName,
            format!("{cert} is not valid for the host name connected to"),
        ),
        Invalid(C::Expired | C::ExpiredContext { .. }) => {
            (TlsFailure::Time, format!("{cert} has expired"))
        }
        Invalid(C::NotValidYet | C::NotValidYetContext { .. }) => {
            (TlsFailure::Time, format!("{cert} is not valid yet"))
        }
        Invalid(other) => (TlsFailure::Other, format!("{cert} is refused: {other:?}")),
        other => (
            TlsFailure::Other,
            format!("the TLS handshake with PostgreSQL failed: {other}"),
        ),
    })
}

/// `localhost` from rustls's `DnsName("localhost")`, `127.0.0.1` from `IpAddress(127.0.0.1)`.
fn name_of(presented: &str) -> &str {
    presented
        .split_once('(')
        .map_or(presented, |(_, rest)| rest.trim_end_matches(')'))
        .trim_matches('"')
}

/// `work` within [`OP_TIMEOUT`].
async fn timed<T>(work: impl Future<Output = Result<T, QueueError>>) -> Result<T, QueueError> {
    tokio::time::timeout(OP_TIMEOUT, work)
        .await
        .unwrap_or_else(|_| Err(timed_out()))
}

fn describe(config: &tokio_postgres::Config) -> String {
    let host = match config.get_hosts().first() {
        Some(tokio_postgres::config::Host::Tcp(h)) => h.clone(),
        Some(tokio_postgres::config::Host::Unix(p)) => p.display().to_string(),
        None => "localhost".into(),
    };
    let port = config.get_ports().first().copied().unwrap_or(5432);
    let db = config
        .get_dbname()
        .or(config.get_user())
        .unwrap_or("postgres");
    format!("postgres {host}:{port}/{db}")
}

async fn get(pool: &Pool) -> Result<deadpool_postgres::Client, QueueError> {
    pool.get()
        .await
        .map_err(|e| QueueError::Storage(pool_error(e)))
}

fn pool_error(e: deadpool_postgres::PoolError) -> String {
    use deadpool_postgres::PoolError;
    match e {
        PoolError::Backend(e) => format!("cannot reach PostgreSQL: {}", reason(&e)),
        PoolError::Timeout(_) => format!(
            "cannot reach PostgreSQL: no connection within {}s",
            OP_TIMEOUT.as_secs()
        ),
        other => format!("cannot reach PostgreSQL: {other}"),
    }
}

fn timed_out() -> QueueError {
    QueueError::Storage(format!(
        "PostgreSQL did not answer within {}s",
        OP_TIMEOUT.as_secs()
    ))
}

/// A database error's own message, or the error as tokio-postgres says it with its cause (its
/// `Display` leaves the cause out: "error connecting to server", without "Connection refused").
fn reason(e: &tokio_postgres::Error) -> String {
    if let Some((_, what)) = tls_failure(e) {
        return what;
    }
    match e.as_db_error() {
        Some(db) => db.message().to_string(),
        None => match std::error::Error::source(e) {
            Some(cause) => format!("{e}: {cause}"),
            None => e.to_string(),
        },
    }
}

fn pg(e: tokio_postgres::Error) -> QueueError {
    if e.is_closed() || e.as_db_error().is_none() {
        QueueError::Storage(format!("lost the connection to PostgreSQL: {}", reason(&e)))
    } else {
        QueueError::Storage(format!("PostgreSQL: {}", reason(&e)))
    }
}

/// Lost a race with another transaction: worth running again.
fn is_race(e: &tokio_postgres::Error) -> bool {
    matches!(
        e.code(),
        Some(c) if *c == SqlState::T_R_DEADLOCK_DETECTED || *c == SqlState::T_R_SERIALIZATION_FAILURE
    )
}

async fn migrate(client: &mut deadpool_postgres::Client) -> Result<(), QueueError> {
    let tx = client.transaction().await.map_err(pg)?;
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK])
        .await
        .map_err(pg)?;
    tx.batch_execute("CREATE TABLE IF NOT EXISTS hookgate_schema (version integer NOT NULL)")
        .await
        .map_err(pg)?;
    let version: Option<i32> = tx
        .query_opt("SELECT version FROM hookgate_schema", &[])
        .await
        .map_err(pg)?
        .map(|r| r.get(0));
    let version = match version {
        Some(v) => v as usize,
        None => {
            tx.execute("INSERT INTO hookgate_schema (version) VALUES (0)", &[])
                .await
                .map_err(pg)?;
            0
        }
    };
    if version > MIGRATIONS.len() {
        return Err(QueueError::Storage(format!(
            "the database is at schema version {version}, newer than this gateway ({})\nhelp: use a newer gateway",
            MIGRATIONS.len()
        )));
    }
    for sql in &MIGRATIONS[version..] {
        tx.batch_execute(sql).await.map_err(pg)?;
    }
    tx.execute(
        "UPDATE hookgate_schema SET version = $1",
        &[&(MIGRATIONS.len() as i32)],
    )
    .await
    .map_err(pg)?;
    tx.commit().await.map_err(pg)
}

/// A writer: takes a batch, runs it, answers; until every sender is gone.
async fn writer(pool: Pool, rx: Arc<Mutex<mpsc::Receiver<Op>>>) {
    loop {
        let batch = {
            let mut rx = rx.lock().await;
            let Some(first) = rx.recv().await else {
                return;
            };
            let mut batch = vec![first];
            while batch.len() < MAX_BATCH {
                match rx.try_recv() {
                    Ok(op) => batch.push(op),
                    Err(_) => break,
                }
            }
            batch
        };
        run_batch(&pool, batch).await;
    }
}

/// What an operation's statement returned.
enum Outcome {
    Accepted(Option<Vec<i64>>),
    Settled(i32),
}

type Results = Vec<Result<Outcome, tokio_postgres::Error>>;

/// Why a pipelined batch did not go through.
enum Failure {
    /// A statement failed, so PostgreSQL rolled the transaction back: nothing was written.
    RolledBack,
    /// The connection or the session failed.
    Error(tokio_postgres::Error),
}

/// Runs a batch as one pipelined transaction; if a statement fails, runs each operation alone.
async fn run_batch(pool: &Pool, batch: Vec<Op>) {
    let client = match tokio::time::timeout(OP_TIMEOUT, get(pool)).await {
        Ok(Ok(client)) => client,
        Ok(Err(e)) => return fail_all(batch, e),
        Err(_) => return fail_all(batch, timed_out()),
    };
    let work = async {
        match pipelined(&client, &batch, true).await {
            Err(Failure::RolledBack) => pipelined(&client, &batch, false).await,
            other => other,
        }
    };
    let results = match tokio::time::timeout(OP_TIMEOUT, work).await {
        Ok(Ok(results)) => results,
        Ok(Err(failure)) => {
            // The connection broke mid-batch: whether the COMMIT happened is unknown, so nobody
            // hears "done" (an accept's sender retries, and deduplication catches a committed one).
            let error = match failure {
                Failure::Error(e) => pg(e),
                Failure::RolledBack => {
                    QueueError::Storage("the transaction was rolled back".into())
                }
            };
            drop(deadpool_postgres::Object::take(client));
            return fail_all(batch, error);
        }
        Err(_) => {
            // A transaction may still be open on that connection: close it.
            drop(deadpool_postgres::Object::take(client));
            return fail_all(batch, timed_out());
        }
    };
    for (op, result) in batch.into_iter().zip(results) {
        answer(op, result.map_err(pg));
    }
}

/// Sends every operation's statement down the connection before reading any answer; with
/// `transaction`, between `BEGIN` and `COMMIT`, else each statement is its own transaction (and one
/// that lost a deadlock with another replica is run again).
async fn pipelined(
    client: &deadpool_postgres::Client,
    batch: &[Op],
    transaction: bool,
) -> Result<Results, Failure> {
    let accept = client
        .prepare_cached(ACCEPT)
        .await
        .map_err(Failure::Error)?;
    let settle = client
        .prepare_cached(SETTLE)
        .await
        .map_err(Failure::Error)?;
    let accept_recorded = client
        .prepare_cached(ACCEPT_RECORDED)
        .await
        .map_err(Failure::Error)?;
    let prepared = Statements {
        accept: &accept,
        accept_recorded: &accept_recorded,
        settle: &settle,
    };
    let begin = async {
        if transaction {
            client.batch_execute("BEGIN").await
        } else {
            Ok(())
        }
    };
    let statements = join_all(batch.iter().map(|op| run_op(client, &prepared, op)));
    let commit = async {
        if transaction {
            client.batch_execute("COMMIT").await
        } else {
            Ok(())
        }
    };
    // Polled in this order, so sent in this order: BEGIN, the statements, COMMIT.
    let (begin, mut results, commit) = tokio::join!(begin, statements, commit);
    begin.map_err(Failure::Error)?;
    if let Some(i) = results.iter().position(Result::is_err) {
        let server_said = results[i]
            .as_ref()
            .err()
            .and_then(|e| e.as_db_error())
            .is_some();
        if client.is_closed() || !server_said {
            // The connection broke, or a statement failed before it was sent (so the others may
            // have committed): the outcome is unknown.
            let Err(e) = results.swap_remove(i) else {
                unreachable!("found as an error")
            };
            return Err(Failure::Error(e));
        }
        if transaction {
            // PostgreSQL refused a statement and so answers COMMIT with a rollback, not an error.
            return Err(Failure::RolledBack);
        }
    }
    commit.map_err(Failure::Error)?;
    if !transaction {
        for (op, result) in batch.iter().zip(results.iter_mut()) {
            for _ in 1..RACE_RETRIES {
                if !result.as_ref().err().is_some_and(is_race) {
                    break;
                }
                *result = run_op(client, &prepared, op).await;
            }
        }
    }
    Ok(results)
}

/// The writers' prepared statements.
struct Statements<'a> {
    accept: &'a tokio_postgres::Statement,
    accept_recorded: &'a tokio_postgres::Statement,
    settle: &'a tokio_postgres::Statement,
}

/// An operation's one statement.
async fn run_op(
    client: &deadpool_postgres::Client,
    statements: &Statements<'_>,
    op: &Op,
) -> Result<Outcome, tokio_postgres::Error> {
    let settle = statements.settle;
    match op {
        Op::Accept {
            seen,
            window,
            jobs,
            record,
            ..
        } => {
            let (source, delivery) = match seen {
                Some((s, d)) => (Some(text(s)), Some(text(d))),
                None => (None, None),
            };
            let window = window.as_millis() as i64;
            let kinds: Vec<&str> = jobs.iter().map(|j| j.kind.as_str()).collect();
            let targets: Vec<Cow<'_, str>> = jobs.iter().map(|j| text(&j.target)).collect();
            let keys: Vec<Option<Cow<'_, str>>> =
                jobs.iter().map(|j| j.key.as_deref().map(text)).collect();
            let sources: Vec<Cow<'_, str>> = jobs.iter().map(|j| text(&j.source)).collect();
            let events: Vec<Option<Cow<'_, str>>> =
                jobs.iter().map(|j| j.event.as_deref().map(text)).collect();
            let deliveries: Vec<Cow<'_, str>> = jobs.iter().map(|j| text(&j.delivery)).collect();
            let rules: Vec<Cow<'_, str>> = jobs.iter().map(|j| text(&j.rule)).collect();
            let actions: Vec<i64> = jobs.iter().map(|j| i64::from(j.action)).collect();
            let headers: Vec<String> = jobs
                .iter()
                .map(|j| {
                    text(&serde_json::to_string(&j.headers).unwrap_or_else(|_| "[]".into()))
                        .into_owned()
                })
                .collect();
            let sign_withs: Vec<Option<Cow<'_, str>>> = jobs
                .iter()
                .map(|j| j.sign_with.as_deref().map(text))
                .collect();
            let bodies: Vec<&[u8]> = jobs.iter().map(|j| j.body.as_slice()).collect();
            let params: [&(dyn tokio_postgres::types::ToSql + Sync); 14] = [
                &source,
                &delivery,
                &window,
                &kinds,
                &targets,
                &keys,
                &sources,
                &events,
                &deliveries,
                &rules,
                &actions,
                &headers,
                &sign_withs,
                &bodies,
            ];
            let row = match record {
                None => client.query_one(statements.accept, &params).await?,
                Some(record) => {
                    let r = record.to_row(None);
                    let opt = |v: &Option<String>| v.as_deref().map(|s| text(s).into_owned());
                    let (id, source_, delivery_, event_) =
                        (text(&r.id), opt(&r.source), opt(&r.delivery), opt(&r.event));
                    let (reason, matched, actions_) =
                        (opt(&r.reason), text(&r.matched), text(&r.actions));
                    let (version, replay_of, headers_, query_) = (
                        opt(&r.rules_version),
                        opt(&r.replay_of),
                        opt(&r.headers),
                        opt(&r.query),
                    );
                    let mut all: Vec<&(dyn tokio_postgres::types::ToSql + Sync)> = params.to_vec();
                    all.extend_from_slice(&[
                        &id,
                        &r.received_at,
                        &source_,
                        &delivery_,
                        &event_,
                        &reason,
                        &matched,
                        &actions_,
                        &version,
                        &replay_of,
                        &headers_,
                        &query_,
                        &r.body,
                        &r.size,
                    ]);
                    client.query_one(statements.accept_recorded, &all).await?
                }
            };
            Ok(Outcome::Accepted(row.try_get(0)?))
        }
        Op::Settle {
            lease,
            attempt,
            settle: how,
            ..
        } => {
            let (outcome, delay) = match how {
                Settle::Ack => ("ack", 0),
                Settle::DeadLetter => ("dead", 0),
                Settle::Retry { delay } => ("retry", delay.as_millis() as i64),
                Settle::Release => ("release", 0),
            };
            let a = attempt.as_ref();
            let row = client
                .query_one(
                    settle,
                    &[
                        &lease.id,
                        &lease.token,
                        &a.map(|a| a.attempt as i32),
                        &a.map(|a| a.started_at),
                        &a.map(|a| a.duration_ms as i64),
                        &a.and_then(|a| a.status).map(i32::from),
                        &a.and_then(|a| a.error.as_deref()).map(text),
                        &outcome,
                        &delay,
                    ],
                )
                .await?;
            Ok(Outcome::Settled(row.try_get(0)?))
        }
    }
}

/// PostgreSQL's text cannot hold NUL: it is stored as U+FFFD (a key or delivery id that had one
/// still coalesces and deduplicates consistently; bodies are bytes and stored exactly).
fn text(s: &str) -> Cow<'_, str> {
    if s.contains('\0') {
        Cow::Owned(s.replace('\0', "\u{FFFD}"))
    } else {
        Cow::Borrowed(s)
    }
}

fn answer(op: Op, result: Result<Outcome, QueueError>) {
    match (op, result) {
        (Op::Accept { reply, .. }, Ok(Outcome::Accepted(ids))) => {
            let _ = reply.send(Ok(match ids {
                None => Accepted::Duplicate,
                Some(ids) => Accepted::Enqueued(ids),
            }));
        }
        (Op::Settle { lease, reply, .. }, Ok(Outcome::Settled(code))) => {
            let _ = reply.send(match code {
                0 => Ok(()),
                1 => Err(QueueError::NoSuchJob(lease.id)),
                _ => Err(QueueError::LeaseLost(lease.id)),
            });
        }
        (op, Err(e)) => fail(op, e),
        (op, Ok(_)) => fail(op, QueueError::Storage("unexpected answer".into())),
    }
}

/// Fails every operation of the batch with `error` (each its own copy of the message, said once).
fn fail_all(batch: Vec<Op>, error: QueueError) {
    let message = match error {
        QueueError::Storage(message) => message,
        other => other.to_string(),
    };
    for op in batch {
        fail(op, QueueError::Storage(message.clone()));
    }
}

fn fail(op: Op, e: QueueError) {
    match op {
        Op::Accept { reply, .. } => {
            let _ = reply.send(Err(e));
        }
        Op::Settle { reply, .. } => {
            let _ = reply.send(Err(e));
        }
    }
}

impl QueueBackend for PostgresQueue {
    async fn accept_recorded(
        &self,
        seen: Option<(String, String)>,
        window: Duration,
        jobs: Vec<NewJob>,
        record: Option<Arc<Record>>,
    ) -> Result<Accepted, QueueError> {
        self.call(|reply| Op::Accept {
            seen,
            window,
            jobs,
            record,
            reply,
        })
        .await
    }

    async fn enqueue(&self, jobs: Vec<NewJob>) -> Result<Vec<i64>, QueueError> {
        match self.accept(None, Duration::ZERO, jobs).await? {
            Accepted::Enqueued(ids) => Ok(ids),
            Accepted::Duplicate => unreachable!("without a delivery id nothing is a duplicate"),
        }
    }

    async fn due_targets(&self) -> Result<Vec<(String, i64)>, QueueError> {
        timed(async {
            let client = get(&self.pool).await?;
            let expire = client
                .prepare_cached("SELECT hookgate_expire()")
                .await
                .map_err(pg)?;
            client.query_one(&expire, &[]).await.map_err(pg)?;
            // A skip scan of the `(state, target, run_at)` index, as in SQLite: one probe per distinct
            // pending target, so the cost follows the number of targets, not of pending jobs.
            let due = client
                .prepare_cached(
                    "WITH RECURSIVE targets(name) AS (
                         SELECT (SELECT min(target) FROM jobs WHERE state = 'pending')
                         UNION ALL
                         SELECT (SELECT min(target) FROM jobs WHERE state = 'pending' AND target > name)
                         FROM targets WHERE name IS NOT NULL)
                     SELECT name, (SELECT min(run_at) FROM jobs WHERE state = 'pending' AND target = name)
                     FROM targets WHERE name IS NOT NULL",
                )
                .await
                .map_err(pg)?;
            let rows = client.query(&due, &[]).await.map_err(pg)?;
            rows.iter()
                .map(|r| Ok((r.try_get(0)?, r.try_get(1)?)))
                .collect::<Result<_, tokio_postgres::Error>>()
                .map_err(pg)
        })
        .await
    }

    async fn claim(
        &self,
        target: &str,
        limits: ClaimLimits,
        limit: usize,
        visibility: Duration,
    ) -> Result<Vec<Job>, QueueError> {
        let target = text(target);
        timed(async {
            let client = get(&self.pool).await?;
            let claim = client
                .prepare_cached(&format!(
                    "SELECT {JOB_COLUMNS} FROM hookgate_claim($1, $2, $3, $4, $5, $6)"
                ))
                .await
                .map_err(pg)?;
            let concurrency =
                (limits.concurrency != u32::MAX).then_some(i64::from(limits.concurrency));
            let rate_count = limits.rate.map(|r| r.count as i32);
            let rate_per = limits.rate.map(|r| r.per.as_millis().max(1) as i64);
            let rows = client
                .query(
                    &claim,
                    &[
                        &target,
                        &(limit as i64),
                        &(visibility.as_millis() as i64),
                        &concurrency,
                        &rate_count,
                        &rate_per,
                    ],
                )
                .await
                .map_err(pg)?;
            let mut jobs = rows
                .iter()
                .map(job_from_row)
                .collect::<Result<Vec<_>, _>>()?;
            jobs.sort_by_key(|j| (j.run_at, j.id));
            Ok(jobs)
        })
        .await
    }

    async fn settle(
        &self,
        lease: Lease,
        attempt: Option<Attempt>,
        settle: Settle,
    ) -> Result<(), QueueError> {
        self.call(|reply| Op::Settle {
            lease,
            attempt,
            settle,
            reply,
        })
        .await
    }

    async fn settle_many(
        &self,
        settles: Vec<(Lease, Option<Attempt>, Settle)>,
    ) -> Vec<Result<(), QueueError>> {
        // Sent together, they reach the writers together and share their pipelined transactions.
        join_all(
            settles
                .into_iter()
                .map(|(lease, attempt, settle)| self.settle(lease, attempt, settle)),
        )
        .await
    }

    fn shared(&self) -> bool {
        true
    }

    async fn requeue(&self, id: i64) -> Result<(), QueueError> {
        let state: Option<String> = timed(async {
            let client = get(&self.pool).await?;
            let requeue = client
                .prepare_cached("SELECT hookgate_requeue($1)")
                .await
                .map_err(pg)?;
            let row = client.query_one(&requeue, &[&id]).await.map_err(pg)?;
            row.try_get(0).map_err(pg)
        })
        .await?;
        match state.as_deref() {
            Some("dead") => Ok(()),
            Some(other) => Err(QueueError::NotDead(id, other.to_string())),
            None => Err(QueueError::NoSuchJob(id)),
        }
    }

    async fn list(&self, state: JobState, limit: usize) -> Result<Vec<Job>, QueueError> {
        timed(async {
            let client = get(&self.pool).await?;
            let list = client
                .prepare_cached(&format!(
                    "SELECT {JOB_COLUMNS} FROM jobs WHERE state = $1 ORDER BY id DESC LIMIT $2"
                ))
                .await
                .map_err(pg)?;
            let rows = client
                .query(&list, &[&state.as_str(), &(limit as i64)])
                .await
                .map_err(pg)?;
            rows.iter().map(job_from_row).collect()
        })
        .await
    }

    async fn get(&self, id: i64) -> Result<(Job, Vec<Attempt>), QueueError> {
        timed(async {
            let client = get(&self.pool).await?;
            let job = client
                .prepare_cached(&format!("SELECT {JOB_COLUMNS} FROM jobs WHERE id = $1"))
                .await
                .map_err(pg)?;
            let attempts = client
                .prepare_cached(
                    "SELECT attempt, started_at, duration_ms, status, error FROM attempts
                     WHERE job_id = $1 ORDER BY attempt",
                )
                .await
                .map_err(pg)?;
            let params: [&(dyn tokio_postgres::types::ToSql + Sync); 1] = [&id];
            let (job, attempts) = tokio::join!(
                client.query_opt(&job, &params),
                client.query(&attempts, &params)
            );
            let job = job_from_row(&job.map_err(pg)?.ok_or(QueueError::NoSuchJob(id))?)?;
            let attempts = attempts
                .map_err(pg)?
                .iter()
                .map(|r| {
                    Ok(Attempt {
                        attempt: r.try_get::<_, i32>(0)? as u32,
                        started_at: r.try_get(1)?,
                        duration_ms: r.try_get::<_, i64>(2)? as u64,
                        status: r.try_get::<_, Option<i32>>(3)?.map(|s| s as u16),
                        error: r.try_get(4)?,
                    })
                })
                .collect::<Result<_, tokio_postgres::Error>>()
                .map_err(pg)?;
            Ok((job, attempts))
        })
        .await
    }

    async fn stats(&self) -> Result<Stats, QueueError> {
        timed(async {
            let client = get(&self.pool).await?;
            // One statement, so one snapshot and one scan: the totals and the pending jobs per target
            // agree (two statements each saw the queue at its own moment).
            let counts = client
                .prepare_cached(
                    "SELECT state, target, count(*) FROM jobs GROUP BY state, target ORDER BY target",
                )
                .await
                .map_err(pg)?;
            let rows = client.query(&counts, &[]).await.map_err(pg)?;
            let mut s = Stats::default();
            for row in rows {
                let state: String = row.try_get(0).map_err(pg)?;
                let target: String = row.try_get(1).map_err(pg)?;
                let n = row.try_get::<_, i64>(2).map_err(pg)? as u64;
                match JobState::parse(&state) {
                    Some(JobState::Pending) => {
                        s.pending += n;
                        s.pending_by_target.push((target, n));
                    }
                    Some(JobState::Inflight) => s.inflight += n,
                    Some(JobState::Done) => s.done += n,
                    Some(JobState::Dead) => s.dead += n,
                    None => {}
                }
            }
            Ok(s)
        })
        .await
    }

    async fn prune(&self, before: i64) -> Result<u64, QueueError> {
        timed(async {
            let client = get(&self.pool).await?;
            // Attempts go with their jobs (ON DELETE CASCADE).
            let jobs = client
                .execute(
                    "DELETE FROM jobs WHERE state IN ('done', 'dead') AND updated_at < $1",
                    &[&before],
                )
                .await
                .map_err(pg)?;
            client
                .execute("DELETE FROM deliveries WHERE seen_at < $1", &[&before])
                .await
                .map_err(pg)?;
            Ok(jobs)
        })
        .await
    }

    async fn ping(&self) -> Result<(), QueueError> {
        timed(async {
            let client = get(&self.pool).await?;
            client.simple_query("SELECT 1").await.map_err(pg)?;
            Ok(())
        })
        .await
    }

    async fn target_stats(&self) -> Result<Vec<TargetStats>, QueueError> {
        timed(async {
            let client = get(&self.pool).await?;
            let counts = client
                .query(
                    "SELECT target, state, count(*), min(created_at), min(run_at) FROM jobs
                     WHERE state IN ('pending', 'inflight') GROUP BY target, state",
                    &[],
                )
                .await
                .map_err(pg)?;
            let status = client
                .query(
                    "SELECT target, last_attempt_at, last_delivery_at, last_error, last_error_at
                     FROM target_status",
                    &[],
                )
                .await
                .map_err(pg)?;
            let mut out: std::collections::BTreeMap<String, TargetStats> = Default::default();
            let entry = |out: &mut std::collections::BTreeMap<String, TargetStats>,
                         name: String| {
                out.entry(name.clone())
                    .or_insert_with(|| TargetStats {
                        name,
                        ..TargetStats::default()
                    })
                    .clone()
            };
            for row in counts {
                let name: String = row.try_get(0).map_err(pg)?;
                let state: String = row.try_get(1).map_err(pg)?;
                let n = row.try_get::<_, i64>(2).map_err(pg)? as u64;
                let mut s = entry(&mut out, name.clone());
                if state == "pending" {
                    s.pending = n;
                    s.oldest_pending_at = row.try_get(3).map_err(pg)?;
                    s.next_attempt_at = row.try_get(4).map_err(pg)?;
                } else {
                    s.inflight = n;
                }
                out.insert(name, s);
            }
            for row in status {
                let name: String = row.try_get(0).map_err(pg)?;
                let mut s = entry(&mut out, name.clone());
                s.last_attempt_at = row.try_get(1).map_err(pg)?;
                s.last_delivery_at = row.try_get(2).map_err(pg)?;
                s.last_error = row.try_get(3).map_err(pg)?;
                s.last_error_at = row.try_get(4).map_err(pg)?;
                out.insert(name, s);
            }
            Ok(out.into_values().collect())
        })
        .await
    }

    async fn store_records(&self, records: Vec<Arc<Record>>) -> Result<(), QueueError> {
        if records.is_empty() {
            return Ok(());
        }
        timed(async {
            let client = get(&self.pool).await?;
            let rows: Vec<RecordRow> = records.iter().map(|r| r.to_row(None)).collect();
            let col = |f: fn(&RecordRow) -> Option<String>| -> Vec<Option<String>> {
                rows.iter()
                    .map(|r| f(r).map(|s| text(&s).into_owned()))
                    .collect()
            };
            let ids = col(|r| Some(r.id.clone()));
            let received: Vec<i64> = rows.iter().map(|r| r.received_at).collect();
            let sources = col(|r| r.source.clone());
            let deliveries = col(|r| r.delivery.clone());
            let events = col(|r| r.event.clone());
            let statuses: Vec<i32> = rows.iter().map(|r| r.status as i32).collect();
            let outcomes = col(|r| Some(r.outcome.clone()));
            let reasons = col(|r| r.reason.clone());
            let matched = col(|r| Some(r.matched.clone()));
            let actions = col(|r| Some(r.actions.clone()));
            let versions = col(|r| r.rules_version.clone());
            let replays = col(|r| r.replay_of.clone());
            let headers = col(|r| r.headers.clone());
            let queries = col(|r| r.query.clone());
            let sizes: Vec<i64> = rows.iter().map(|r| r.size).collect();
            let bodies: Vec<Option<&[u8]>> = rows.iter().map(|r| r.body.as_deref()).collect();
            client
                .execute(
                    "INSERT INTO records (id, received_at, source, delivery, event, status, outcome, reason,
                                          matched, actions, rules_version, replay_of, headers, query, size, body)
                     SELECT * FROM unnest($1::text[], $2::bigint[], $3::text[], $4::text[], $5::text[],
                                          $6::integer[], $7::text[], $8::text[], $9::text[], $10::text[],
                                          $11::text[], $12::text[], $13::text[], $14::text[], $15::bigint[],
                                          $16::bytea[])
                     ON CONFLICT (id) DO NOTHING",
                    &[
                        &ids, &received, &sources, &deliveries, &events, &statuses, &outcomes,
                        &reasons, &matched, &actions, &versions, &replays, &headers, &queries,
                        &sizes, &bodies,
                    ],
                )
                .await
                .map_err(pg)?;
            Ok(())
        })
        .await
    }

    async fn list_records(&self, f: Filter) -> Result<Vec<Record>, QueueError> {
        timed(async {
            let client = get(&self.pool).await?;
            let (code, outcome) = match f.status {
                Some(StatusFilter::Code(c)) => (Some(i32::from(c)), None),
                Some(StatusFilter::Outcome(o)) => (None, Some(o.as_str())),
                None => (None, None),
            };
            let limit = i64::try_from(f.limit).unwrap_or(i64::MAX);
            let rows = client
                .query(
                    &format!(
                        "SELECT {RECORD_COLUMNS} FROM records
                         WHERE ($1::text IS NULL OR source = $1) AND ($2::text IS NULL OR event = $2)
                           AND ($3::text IS NULL OR matched::jsonb ? $3)
                           AND ($4::integer IS NULL OR status = $4) AND ($5::text IS NULL OR outcome = $5)
                           AND ($6::bigint IS NULL OR received_at >= $6) AND ($7::text IS NULL OR id < $7)
                         ORDER BY id DESC LIMIT $8"
                    ),
                    &[
                        &f.source, &f.event, &f.rule, &code, &outcome, &f.since, &f.before, &limit,
                    ],
                )
                .await
                .map_err(pg)?;
            rows.iter()
                .map(|r| record_from_row(r).map(Record::from_row))
                .collect()
        })
        .await
    }

    async fn get_record(&self, id: String) -> Result<Option<Record>, QueueError> {
        timed(async {
            let client = get(&self.pool).await?;
            let row = client
                .query_opt(
                    &format!("SELECT {RECORD_COLUMNS} FROM records WHERE id = $1"),
                    &[&id],
                )
                .await
                .map_err(pg)?;
            row.map(|r| record_from_row(&r).map(Record::from_row))
                .transpose()
        })
        .await
    }

    async fn prune_records(&self, before: i64, keep: u64) -> Result<u64, QueueError> {
        timed(async {
            let client = get(&self.pool).await?;
            let old = client
                .execute("DELETE FROM records WHERE received_at < $1", &[&before])
                .await
                .map_err(pg)?;
            let offset = i64::try_from(keep.saturating_sub(1)).unwrap_or(i64::MAX);
            let over = client
                .execute(
                    "DELETE FROM records WHERE id < (SELECT id FROM records ORDER BY id DESC LIMIT 1 OFFSET $1)",
                    &[&offset],
                )
                .await
                .map_err(pg)?;
            client
                .execute(
                    "DELETE FROM rules_versions WHERE hash NOT IN (SELECT rules_version FROM records WHERE rules_version IS NOT NULL)
                     AND hash <> (SELECT hash FROM rules_versions ORDER BY created_at DESC LIMIT 1)",
                    &[],
                )
                .await
                .map_err(pg)?;
            Ok(old + over)
        })
        .await
    }

    async fn put_rules_version(
        &self,
        hash: String,
        files: crate::reload::Files,
    ) -> Result<(), QueueError> {
        // PostgreSQL compresses a large value itself (TOAST).
        let unwritten = |e: &dyn std::fmt::Display| {
            QueueError::Storage(format!("a rules version could not be written: {e}"))
        };
        let mut json = Vec::new();
        crate::queue::rules_version_json(&files, &mut json).map_err(|e| unwritten(&e))?;
        let files = String::from_utf8(json).map_err(|e| unwritten(&e))?;
        timed(async {
            let client = get(&self.pool).await?;
            client
                .execute(
                    "INSERT INTO rules_versions (hash, created_at, files) VALUES ($1, hookgate_now(), $2)
                     ON CONFLICT (hash) DO NOTHING",
                    &[&hash, &text(&files)],
                )
                .await
                .map_err(pg)?;
            Ok(())
        })
        .await
    }

    async fn get_rules_version(&self, hash: String) -> Result<Option<String>, QueueError> {
        timed(async {
            let client = get(&self.pool).await?;
            let row = client
                .query_opt("SELECT files FROM rules_versions WHERE hash = $1", &[&hash])
                .await
                .map_err(pg)?;
            row.map(|r| r.try_get(0).map_err(pg)).transpose()
        })
        .await
    }
}

const RECORD_COLUMNS: &str = "id, received_at, source, delivery, event, status, outcome, reason, matched, \
     actions, rules_version, replay_of, headers, query, body, size";

fn record_from_row(r: &Row) -> Result<RecordRow, QueueError> {
    let row = || -> Result<RecordRow, tokio_postgres::Error> {
        Ok(RecordRow {
            id: r.try_get(0)?,
            received_at: r.try_get(1)?,
            source: r.try_get(2)?,
            delivery: r.try_get(3)?,
            event: r.try_get(4)?,
            status: i64::from(r.try_get::<_, i32>(5)?),
            outcome: r.try_get(6)?,
            reason: r.try_get(7)?,
            matched: r.try_get(8)?,
            actions: r.try_get(9)?,
            rules_version: r.try_get(10)?,
            replay_of: r.try_get(11)?,
            headers: r.try_get(12)?,
            query: r.try_get(13)?,
            body: r.try_get(14)?,
            size: r.try_get(15)?,
        })
    };
    row().map_err(pg)
}

fn job_from_row(r: &Row) -> Result<Job, QueueError> {
    let bad = |what: &str| QueueError::Storage(format!("a job row has an unknown {what}"));
    let row = || -> Result<Job, tokio_postgres::Error> {
        Ok(Job {
            id: r.try_get(0)?,
            kind: JobKind::Notify,
            target: r.try_get(2)?,
            key: r.try_get(3)?,
            source: r.try_get(4)?,
            event: r.try_get(5)?,
            delivery: r.try_get(6)?,
            rule: r.try_get(7)?,
            action: r.try_get::<_, i64>(8)? as u32,
            body: r.try_get(9)?,
            headers: Vec::new(),
            sign_with: r.try_get(11)?,
            state: JobState::Pending,
            attempts: r.try_get::<_, i32>(13)? as u32,
            coalesced: r.try_get::<_, i32>(14)? as u32,
            run_at: r.try_get(15)?,
            created_at: r.try_get(16)?,
            updated_at: r.try_get(17)?,
            last_status: r.try_get::<_, Option<i32>>(18)?.map(|s| s as u16),
            last_error: r.try_get(19)?,
            lease: r.try_get(20)?,
            retry_base: r.try_get::<_, i32>(21)? as u32,
        })
    };
    let mut job = row().map_err(pg)?;
    let kind: &str = r.try_get(1).map_err(pg)?;
    let state: &str = r.try_get(12).map_err(pg)?;
    let headers: &str = r.try_get(10).map_err(pg)?;
    job.kind = JobKind::parse(kind).ok_or_else(|| bad("job kind"))?;
    job.state = JobState::parse(state).ok_or_else(|| bad("job state"))?;
    job.headers = serde_json::from_str(headers).map_err(|_| bad("headers"))?;
    Ok(job)
}
