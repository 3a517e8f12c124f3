//! The embedded queue: SQLite in `--data DIR`, WAL with `synchronous=NORMAL` and the WAL synced by
//! the writer where a promise needs it.
//!
//! One thread owns the connection. Every operation is a message to it; the thread takes whatever has
//! queued up (up to [`MAX_BATCH`]) and applies it in the open transaction, each operation under its
//! own savepoint, so one failure does not sink the rest. What promises durability — an accepted
//! delivery (the 202), an enqueue, a requeue, a rules version — is answered only after the commit and
//! an fsync of the WAL; while those run, new operations gather for the next batch: the group commit
//! that lets many concurrent requests share one fsync. Claims, settles and records of outcomes are
//! answered as soon as they are applied and commit with the next durable batch or within
//! [`COMMIT_DELAY`] (see [`writer`] for what a crash can take).
//!
//! Coalescing of checks is a partial unique index on pending checks of (target, key): an enqueue that
//! hits it increments the pending job's `coalesced` count instead of adding a row.
//!
//! Inspect by hand with `sqlite3 DATA/hookgate.db` (see `docs/delivery.md`).

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rusqlite::{Connection, OptionalExtension, Row, params};
use tokio::sync::oneshot;

use crate::clock::now_ms;
use crate::delivery_log::{Filter, Record, RecordRow, StatusFilter, TargetStats};
use crate::queue::{
    Accepted, Attempt, ClaimLimits, Job, JobKind, JobState, Lease, NewJob, QueueBackend,
    QueueError, Settle, Stats,
};

/// The most operations committed together.
const MAX_BATCH: usize = 4096;
/// Operations waiting for the writer; beyond this, `enqueue` fails fast (the server answers 503).
const CHANNEL_CAPACITY: usize = 65_536;

/// Schema migrations, applied in order; `PRAGMA user_version` records how many ran.
const MIGRATIONS: &[&str] = &[
    // 1: jobs and their attempts. Small, often-read columns come first and the body last: SQLite reads
    // a row's columns in order, and a 7 KB body in the middle would be read with every state check.
    "CREATE TABLE jobs (
        id            INTEGER PRIMARY KEY,
        kind          TEXT    NOT NULL,
        target        TEXT    NOT NULL,
        key           TEXT,
        state         TEXT    NOT NULL,
        run_at        INTEGER NOT NULL,
        claimed_until INTEGER,
        attempts      INTEGER NOT NULL DEFAULT 0,
        coalesced     INTEGER NOT NULL DEFAULT 1,
        created_at    INTEGER NOT NULL,
        updated_at    INTEGER NOT NULL,
        source        TEXT    NOT NULL,
        event         TEXT,
        delivery      TEXT    NOT NULL,
        rule          TEXT    NOT NULL,
        action        INTEGER NOT NULL,
        sign_with     TEXT,
        last_status   INTEGER,
        last_error    TEXT,
        headers       TEXT    NOT NULL,
        body          BLOB    NOT NULL
    );
    CREATE UNIQUE INDEX jobs_pending_check ON jobs (target, key) WHERE kind = 'check' AND state = 'pending';
    CREATE INDEX jobs_due ON jobs (state, target, run_at);
    CREATE INDEX jobs_updated ON jobs (state, updated_at);
    CREATE TABLE attempts (
        job_id      INTEGER NOT NULL,
        attempt     INTEGER NOT NULL,
        started_at  INTEGER NOT NULL,
        duration_ms INTEGER NOT NULL,
        status      INTEGER,
        error       TEXT,
        PRIMARY KEY (job_id, attempt)
    );",
    // 2: delivery ids seen, for deduplication.
    "CREATE TABLE deliveries (
        source   TEXT    NOT NULL,
        delivery TEXT    NOT NULL,
        seen_at  INTEGER NOT NULL,
        PRIMARY KEY (source, delivery)
    ) WITHOUT ROWID;",
    // 3: claims are leases with a token (a late settle of an expired, re-claimed job is refused), and
    // each target's rate-limit bucket lives in the queue, as it does in PostgreSQL.
    "ALTER TABLE jobs ADD COLUMN lease INTEGER NOT NULL DEFAULT 0;
    CREATE INDEX jobs_inflight ON jobs (target, claimed_until) WHERE state = 'inflight';
    CREATE TABLE buckets (
        target     TEXT    PRIMARY KEY,
        tokens     REAL    NOT NULL,
        at         INTEGER NOT NULL,
        rate_count INTEGER NOT NULL,
        rate_per   INTEGER NOT NULL
    ) WITHOUT ROWID;",
    // 4: the delivery log's records (accepted ones are written with their jobs), the texts of the rules
    // versions that judged them, each target's last attempts, and a re-queued job's retry base (its
    // attempts keep their numbers).
    "ALTER TABLE jobs ADD COLUMN retry_base INTEGER NOT NULL DEFAULT 0;
    CREATE TABLE records (
        id            TEXT    NOT NULL UNIQUE,
        received_at   INTEGER NOT NULL,
        source        TEXT,
        delivery      TEXT,
        event         TEXT,
        status        INTEGER NOT NULL,
        outcome       TEXT    NOT NULL,
        reason        TEXT,
        matched       TEXT    NOT NULL,
        actions       TEXT    NOT NULL,
        rules_version TEXT,
        replay_of     TEXT,
        headers       TEXT,
        query         TEXT,
        size          INTEGER NOT NULL,
        body          BLOB
    );
    CREATE INDEX records_received ON records (received_at);
    CREATE TABLE rules_versions (
        hash       TEXT    PRIMARY KEY,
        created_at INTEGER NOT NULL,
        files      TEXT    NOT NULL
    );
    CREATE TABLE target_status (
        target           TEXT PRIMARY KEY,
        last_attempt_at  INTEGER,
        last_delivery_at INTEGER,
        last_error       TEXT,
        last_error_at    INTEGER
    ) WITHOUT ROWID;",
    // 5: fewer index writes per job (every state change of a job rewrote two index entries): the due
    // index holds pending jobs only, `jobs_updated` goes (pruning walks ids instead), and a job's
    // last attempt is kept in its row, so a first attempt that succeeds writes no `attempts` row.
    "DROP INDEX jobs_due;
    CREATE INDEX jobs_due ON jobs (target, run_at) WHERE state = 'pending';
    DROP INDEX jobs_updated;
    ALTER TABLE jobs ADD COLUMN last_started_at INTEGER;
    ALTER TABLE jobs ADD COLUMN last_duration_ms INTEGER;",
    // 6: record bodies may be stored compressed (`body_encoding` = 'lz4'; NULL: as received).
    "ALTER TABLE records ADD COLUMN body_encoding TEXT;",
    // 7: delivery ids seen lately, in arrival order ([`Seen`]); folded into `deliveries` in bulk.
    "CREATE TABLE deliveries_recent (
        source   TEXT    NOT NULL,
        delivery TEXT    NOT NULL,
        seen_at  INTEGER NOT NULL
    );",
    // 8: how many jobs are done and dead, kept by triggers, so that counting them (`/metrics`, every
    // scrape) reads two rows instead of every job kept (pending and in-flight jobs are counted from
    // their partial indexes). The gateway never stores a job done or dead; it ends up there by an
    // update, and leaves by another or by a delete (an insert is counted all the same). `open` counts
    // the rows already there, as it does at every start.
    "CREATE TABLE job_counts (state TEXT PRIMARY KEY, n INTEGER NOT NULL) WITHOUT ROWID;
    INSERT INTO job_counts (state, n) VALUES ('done', 0), ('dead', 0);
    CREATE TRIGGER job_counts_update AFTER UPDATE OF state ON jobs
    WHEN old.state <> new.state AND (old.state IN ('done', 'dead') OR new.state IN ('done', 'dead'))
    BEGIN
        UPDATE job_counts SET n = n + 1 WHERE state = new.state;
        UPDATE job_counts SET n = n - 1 WHERE state = old.state;
    END;
    CREATE TRIGGER job_counts_insert AFTER INSERT ON jobs WHEN new.state IN ('done', 'dead')
    BEGIN
        UPDATE job_counts SET n = n + 1 WHERE state = new.state;
    END;
    CREATE TRIGGER job_counts_delete AFTER DELETE ON jobs WHEN old.state IN ('done', 'dead')
    BEGIN
        UPDATE job_counts SET n = n - 1 WHERE state = old.state;
    END;",
];

const JOB_COLUMNS: &str = "id, kind, target, key, source, event, delivery, rule, action, body, headers, sign_with, \
     state, attempts, coalesced, run_at, created_at, updated_at, last_status, last_error, lease, retry_base";

type Reply<T> = oneshot::Sender<Result<T, QueueError>>;

enum Op {
    Enqueue(Vec<NewJob>, Reply<Vec<i64>>),
    Accept {
        seen: Option<(String, String)>,
        window: Duration,
        jobs: Vec<NewJob>,
        record: Option<Arc<Record>>,
        reply: Reply<Accepted>,
    },
    DueTargets(Reply<Vec<(String, i64)>>),
    Claim {
        target: String,
        limits: ClaimLimits,
        limit: usize,
        visibility: Duration,
        reply: Reply<Vec<Job>>,
    },
    Settle {
        lease: Lease,
        attempt: Option<Attempt>,
        settle: Settle,
        reply: Reply<()>,
    },
    Requeue(i64, Reply<()>),
    /// Pruning, step 1: an id below which every job was created before the cutoff ([`prune_from`]).
    PruneFrom(i64, Reply<i64>),
    /// Step 2, again and again: deletes up to [`PRUNE_CHUNK`] done and dead jobs below that id, last
    /// updated before the cutoff; returns how many.
    PruneJobs(i64, i64, Reply<u64>),
    /// Step 3, again and again: delivery ids seen before the cutoff, among the next [`PRUNE_SPAN`]
    /// ids after the given key (in key order); returns the last key looked at, `None` at the end.
    PruneSeen(i64, (String, String), Reply<Option<(String, String)>>),
    /// Step 4: attempts of deleted jobs, and recent delivery ids seen before the cutoff.
    Prune(i64, Reply<()>),
    Ping(Reply<()>),
    SettleMany(
        Vec<(Lease, Option<Attempt>, Settle)>,
        Reply<Vec<Result<(), QueueError>>>,
    ),
    StoreRecords(Vec<Arc<Record>>, Reply<()>),
    PruneRecords(i64, u64, Reply<u64>),
    /// The files' JSON, lz4-compressed ([`pack_rules_version`]).
    PutRulesVersion(String, Vec<u8>, Reply<()>),
    /// Checkpoint, close, stop the writer.
    Close(Reply<()>),
}

impl Op {
    /// Whether the operation's caller is promised durability when it hears back: an accepted
    /// delivery (the 202), an enqueue, a requeue, a stored rules version.
    fn needs_sync(&self) -> bool {
        matches!(
            self,
            Op::Accept { .. } | Op::Enqueue(..) | Op::Requeue(..) | Op::PutRulesVersion(..)
        )
    }

    /// Whether the answer waits for the commit: what needs the sync, and `Ping`, whose answer says
    /// the queue can commit (the readiness probe asks it).
    fn waits_for_commit(&self) -> bool {
        self.needs_sync() || matches!(self, Op::Ping(_))
    }
}

/// The SQLite queue. Cheap to share behind an `Arc`; dropping it stops the writer thread after it has
/// committed everything already sent.
pub struct SqliteQueue {
    tx: std::sync::mpsc::Sender<Op>,
    /// Operations sent and not yet taken by the writer, bounded by [`CHANNEL_CAPACITY`]. (A bounded
    /// `sync_channel` would allocate and touch all its slots at once.)
    waiting: Arc<AtomicUsize>,
    /// The connection reads run on, off the writer's thread ([`SqliteQueue::read`]); `None` once closed.
    reader: Arc<Mutex<Option<Connection>>>,
    path: PathBuf,
    /// The writer thread, joined by [`SqliteQueue::close`].
    writer: Mutex<Option<std::thread::JoinHandle<()>>>,
}

impl SqliteQueue {
    /// Opens (creating if needed) `DIR/hookgate.db`, migrates it, and returns jobs left in flight by a
    /// previous process to pending, so they are delivered again (at-least-once).
    ///
    /// One process at a time: `DIR/hookgate.lock` is locked exclusively for as long as the queue is open,
    /// and a second process fails here at once. A database that fails SQLite's `quick_check` is refused
    /// (`QueueError::Damaged`), never silently replaced by an empty one.
    pub fn open(dir: &Path) -> Result<SqliteQueue, QueueError> {
        std::fs::create_dir_all(dir).map_err(|e| {
            QueueError::Storage(format!(
                "cannot create `{}`: {}",
                dir.display(),
                crate::fs::io_reason(&e)
            ))
        })?;
        let lock = lock_dir(dir)?;
        let path = dir.join("hookgate.db");
        let damaged = |e: rusqlite::Error| QueueError::Damaged {
            path: path.display().to_string(),
            detail: e.to_string(),
        };
        let mut conn = Connection::open(&path).map_err(storage)?;
        conn.pragma_update(None, "journal_mode", "WAL")
            .map_err(damaged)?;
        // The writer syncs the WAL itself where a promise needs it (see `writer`).
        conn.pragma_update(None, "synchronous", "NORMAL")
            .map_err(storage)?;
        conn.pragma_update(None, "busy_timeout", 5000)
            .map_err(storage)?;
        // Room for every statement the writer prepares (about 30; rusqlite keeps 16 by default, and an
        // evicted one is parsed again the next time it is used).
        conn.set_prepared_statement_cache_capacity(64);
        // 8 MiB of page cache: the hot part of the queue (the ends of its tables and indexes, recent
        // jobs) stays in memory. Not more: a commit after a B-tree rebalance that renumbered pages (it
        // parks one for a moment under the number of the never-used page at 1 GiB, SQLite's lock
        // byte) walks the whole page cache to drop pages past the end of the file. With 32 MiB that
        // walk was 7–10% of the queue thread in the delivered benchmark; with 8 MiB, 2%, for ~1% more
        // reads of pages from the OS.
        conn.pragma_update(None, "cache_size", -8_192)
            .map_err(storage)?;
        // The query planner's stability guarantee: a cached statement keeps its plan whatever values
        // are bound. Without it, SQLite (built with STAT4) prepares a statement again whenever a bound
        // value that a range or `LIMIT` depends on changes — every claim, every due-targets question.
        conn.set_db_config(
            rusqlite::config::DbConfig::SQLITE_DBCONFIG_ENABLE_QPSG,
            true,
        )
        .map_err(storage)?;
        check_integrity(&conn).map_err(|detail| QueueError::Damaged {
            path: path.display().to_string(),
            detail,
        })?;
        migrate(&mut conn)?;
        recover_inflight(&mut conn)?;
        // The counters of done and dead jobs are recounted at each start (a scan, like the integrity
        // check above): whatever happened to the file meanwhile — a recovery, an edit by hand — they
        // agree with the rows from here on.
        conn.execute(
            "WITH c AS MATERIALIZED (SELECT state, COUNT(*) AS n FROM jobs WHERE state IN ('done', 'dead') GROUP BY state)
             UPDATE job_counts SET n = coalesce((SELECT n FROM c WHERE c.state = job_counts.state), 0)",
            [],
        )
        .map_err(storage)?;
        let state = State::load(&conn).map_err(storage)?;
        let reader = open_reader(&path).map_err(storage)?;
        // SQLite's own name for the database (links resolved): its WAL is beside that.
        let db = conn.path().map_or_else(|| path.clone(), PathBuf::from);
        let (tx, rx) = std::sync::mpsc::channel();
        let waiting = Arc::new(AtomicUsize::new(0));
        let counter = waiting.clone();
        let writer = std::thread::Builder::new()
            .name("hookgate-queue".into())
            .spawn(move || {
                writer(conn, rx, &counter, &db, state);
                drop(lock); // Released only once the connection is closed.
            })
            .map_err(|e| QueueError::Storage(format!("cannot start the queue thread: {e}")))?;
        Ok(SqliteQueue {
            tx,
            waiting,
            reader: Arc::new(Mutex::new(Some(reader))),
            path,
            writer: Mutex::new(Some(writer)),
        })
    }

    /// Finishes what was sent, checkpoints the WAL into the database file, closes it and releases the
    /// data directory. Operations after this fail with [`QueueError::Closed`].
    pub async fn close(&self) -> Result<(), QueueError> {
        // The reads' lock may be held by a read in progress: wait for it off the async workers.
        let reader = self.reader.clone();
        let _ = tokio::task::spawn_blocking(move || close_reader(&reader)).await;
        let (reply, rx) = oneshot::channel();
        let result = match self.send_close(reply) {
            true => rx.await.unwrap_or(Err(QueueError::Closed)),
            false => Err(QueueError::Closed),
        };
        let writer = self.writer.lock().unwrap_or_else(|p| p.into_inner()).take();
        if let Some(handle) = writer {
            let _ = tokio::task::spawn_blocking(move || handle.join()).await;
        }
        result
    }

    /// Sends `Close` whatever the writer's backlog (the cap is for work, not for stopping it).
    fn send_close(&self, reply: Reply<()>) -> bool {
        self.waiting.fetch_add(1, Ordering::Relaxed);
        self.tx.send(Op::Close(reply)).is_ok()
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Runs a read on its own connection, on a blocking thread: a read that walks many rows (a long
    /// listing of records) holds back neither accepts nor the dispatcher. The writer commits first
    /// what it has answered, so the read sees every write answered before it (WAL: readers see what
    /// is committed, and never block the writer).
    async fn read<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Connection) -> Result<T, QueueError> + Send + 'static,
    ) -> Result<T, QueueError> {
        self.call(Op::Ping).await?;
        let reader = self.reader.clone();
        tokio::task::spawn_blocking(move || {
            let conn = reader.lock().unwrap_or_else(|p| p.into_inner());
            // One snapshot for all the read's statements (a count and its breakdown agree).
            let tx = conn
                .as_ref()
                .ok_or(QueueError::Closed)?
                .unchecked_transaction()
                .map_err(storage)?;
            f(&tx)
        })
        .await
        .map_err(|e| QueueError::Storage(format!("a read of the queue failed: {e}")))?
    }

    async fn call<T>(&self, op: impl FnOnce(Reply<T>) -> Op) -> Result<T, QueueError> {
        let (reply, rx) = oneshot::channel();
        if self.waiting.fetch_add(1, Ordering::Relaxed) >= CHANNEL_CAPACITY {
            self.waiting.fetch_sub(1, Ordering::Relaxed);
            return Err(QueueError::Storage(
                "the queue's writer is overloaded".into(),
            ));
        }
        if self.tx.send(op(reply)).is_err() {
            self.waiting.fetch_sub(1, Ordering::Relaxed);
            return Err(QueueError::Closed);
        }
        rx.await.map_err(|_| QueueError::Closed)?
    }
}

/// Dropping the last handle closes the queue as [`SqliteQueue::close`] does, waiting for the writer, so
/// the data directory is free again when `drop` returns.
impl Drop for SqliteQueue {
    fn drop(&mut self) {
        close_reader(&self.reader);
        let writer = self
            .writer
            .get_mut()
            .unwrap_or_else(|p| p.into_inner())
            .take();
        let Some(handle) = writer else { return };
        let (reply, _) = oneshot::channel();
        if self.send_close(reply) {
            let _ = handle.join();
        }
    }
}

/// Closes the reads' connection (once any read in progress is done); reads after it fail as closed.
fn close_reader(reader: &Mutex<Option<Connection>>) {
    drop(reader.lock().unwrap_or_else(|p| p.into_inner()).take());
}

/// The reads' connection: `query_only`, a small cache of its own (the writer's holds the hot pages).
fn open_reader(path: &Path) -> rusqlite::Result<Connection> {
    let conn = Connection::open(path)?;
    conn.pragma_update(None, "query_only", true)?;
    conn.pragma_update(None, "busy_timeout", 5000)?;
    conn.pragma_update(None, "cache_size", -2_048)?;
    conn.set_prepared_statement_cache_capacity(32);
    Ok(conn)
}

fn storage(e: rusqlite::Error) -> QueueError {
    QueueError::Storage(e.to_string())
}

impl QueueBackend for SqliteQueue {
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
        self.call(|reply| Op::Enqueue(jobs, reply)).await
    }

    async fn due_targets(&self) -> Result<Vec<(String, i64)>, QueueError> {
        self.call(Op::DueTargets).await
    }

    async fn claim(
        &self,
        target: &str,
        limits: ClaimLimits,
        limit: usize,
        visibility: Duration,
    ) -> Result<Vec<Job>, QueueError> {
        let target = target.to_string();
        self.call(|reply| Op::Claim {
            target,
            limits,
            limit,
            visibility,
            reply,
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
        let n = settles.len();
        match self.call(|reply| Op::SettleMany(settles, reply)).await {
            Ok(results) => results,
            Err(e) => (0..n).map(|_| Err(e.clone())).collect(),
        }
    }

    async fn requeue(&self, id: i64) -> Result<(), QueueError> {
        self.call(|reply| Op::Requeue(id, reply)).await
    }

    async fn list(&self, state: JobState, limit: usize) -> Result<Vec<Job>, QueueError> {
        self.read(move |t| list_jobs(t, state, limit).map_err(storage))
            .await
    }

    async fn get(&self, id: i64) -> Result<(Job, Vec<Attempt>), QueueError> {
        self.read(move |t| {
            get_job(t, id).map_err(|e| match e {
                rusqlite::Error::QueryReturnedNoRows => QueueError::NoSuchJob(id),
                e => storage(e),
            })
        })
        .await
    }

    async fn stats(&self) -> Result<Stats, QueueError> {
        self.read(|t| stats(t).map_err(storage)).await
    }

    /// In steps, each a separate operation, so accepts go on between them: deleting a week of jobs at
    /// once (after a long stop, or a shorter `--retention`) held the writer for 1.5 s per 2,000,000.
    async fn prune(&self, before: i64) -> Result<u64, QueueError> {
        let below = self.call(|reply| Op::PruneFrom(before, reply)).await?;
        let mut pruned = 0;
        loop {
            let n = self
                .call(|reply| Op::PruneJobs(before, below, reply))
                .await?;
            pruned += n;
            if n < PRUNE_CHUNK {
                break;
            }
        }
        // `deliveries` has no index on when an id was seen (one would cost every accepted delivery a
        // write): it is walked in key order, a span at a time.
        let mut after = Some((String::new(), String::new()));
        while let Some(key) = after {
            after = self.call(|reply| Op::PruneSeen(before, key, reply)).await?;
        }
        self.call(|reply| Op::Prune(before, reply)).await?;
        Ok(pruned)
    }

    async fn ping(&self) -> Result<(), QueueError> {
        self.call(Op::Ping).await
    }

    async fn target_stats(&self) -> Result<Vec<TargetStats>, QueueError> {
        self.read(|t| target_stats(t).map_err(storage)).await
    }

    async fn store_records(&self, records: Vec<Arc<Record>>) -> Result<(), QueueError> {
        self.call(|reply| Op::StoreRecords(records, reply)).await
    }

    async fn list_records(&self, filter: Filter) -> Result<Vec<Record>, QueueError> {
        self.read(move |t| list_records(t, &filter).map_err(storage))
            .await
    }

    async fn get_record(&self, id: String) -> Result<Option<Record>, QueueError> {
        self.read(move |t| {
            let sql = format!("SELECT {RECORD_COLUMNS} FROM records WHERE id = ?1");
            t.query_row(&sql, [&id], record_from_row)
                .optional()
                .map(|r| r.map(Record::from_row))
                .map_err(storage)
        })
        .await
    }

    async fn prune_records(&self, before: i64, keep: u64) -> Result<u64, QueueError> {
        self.call(|reply| Op::PruneRecords(before, keep, reply))
            .await
    }

    async fn put_rules_version(
        &self,
        hash: String,
        files: crate::reload::Files,
    ) -> Result<(), QueueError> {
        // Compressed off the writer thread, which would otherwise hold accepts back meanwhile.
        let packed = tokio::task::spawn_blocking(move || pack_rules_version(&files))
            .await
            .map_err(|e| QueueError::Storage(format!("compressing a rules version failed: {e}")))?
            .map_err(|e| QueueError::Storage(format!("compressing a rules version failed: {e}")))?;
        self.call(|reply| Op::PutRulesVersion(hash, packed, reply))
            .await
    }

    async fn get_rules_version(&self, hash: String) -> Result<Option<String>, QueueError> {
        self.read(move |t| {
            let stored = t
                .query_row(
                    "SELECT files FROM rules_versions WHERE hash = ?1",
                    [&hash],
                    |r| r.get::<_, rusqlite::types::Value>(0),
                )
                .optional()
                .map_err(storage)?;
            Ok(stored.and_then(|stored| unpack_rules_version(&hash, stored)))
        })
        .await
    }
}

fn migrate(conn: &mut Connection) -> Result<(), QueueError> {
    let version: i64 = conn
        .pragma_query_value(None, "user_version", |r| r.get(0))
        .map_err(storage)?;
    let version = version as usize;
    if version > MIGRATIONS.len() {
        return Err(QueueError::Storage(format!(
            "the database is at schema version {version}, newer than this gateway ({}); use a newer gateway",
            MIGRATIONS.len()
        )));
    }
    for (i, sql) in MIGRATIONS.iter().enumerate().skip(version) {
        let tx = conn.transaction().map_err(storage)?;
        tx.execute_batch(sql).map_err(storage)?;
        tx.pragma_update(None, "user_version", (i + 1) as i64)
            .map_err(storage)?;
        tx.commit().map_err(storage)?;
    }
    Ok(())
}

/// After a crash, jobs marked in flight were never settled: make them pending again. A check that has
/// a pending sibling merges into it (the unique index allows one pending check per key).
fn recover_inflight(conn: &mut Connection) -> Result<(), QueueError> {
    let tx = conn.transaction().map_err(storage)?;
    let ids: Vec<i64> = {
        let mut stmt = tx
            .prepare("SELECT id FROM jobs WHERE state = 'inflight'")
            .map_err(storage)?;
        stmt.query_map([], |r| r.get(0))
            .map_err(storage)?
            .collect::<Result<_, _>>()
            .map_err(storage)?
    };
    let now = now_ms();
    for id in ids {
        to_pending(&tx, id, now, now, false).map_err(storage)?;
    }
    tx.commit().map_err(storage)
}

/// How long a transaction that holds nothing promised durable (claims, settles, records of outcomes,
/// reads) stays open for more work before it commits. See [`writer`].
const COMMIT_DELAY: Duration = Duration::from_millis(5);

/// The most jobs one step of pruning deletes: ~10 ms of the writer's time, and as much to commit,
/// for jobs with 7 KB bodies.
const PRUNE_CHUNK: u64 = 500;

/// An id below which every job was created before `before` (one past the last when all were): a binary
/// search over ids, which are given in creation order, so that it reads a few rows, not every expired
/// one.
fn prune_from(t: &Connection, before: i64) -> rusqlite::Result<i64> {
    let (first, last): (Option<i64>, Option<i64>) =
        t.query_row("SELECT min(id), max(id) FROM jobs", [], |r| {
            Ok((r.get(0)?, r.get(1)?))
        })?;
    let (Some(mut lo), Some(last)) = (first, last) else {
        return Ok(0);
    };
    let mut hi = last + 1;
    // The least x such that the first job at or after id x was created at or after `before`: every
    // job below x was created before it.
    let mut created_from =
        t.prepare_cached("SELECT created_at FROM jobs WHERE id >= ?1 ORDER BY id LIMIT 1")?;
    while lo < hi {
        let mid = lo + (hi - lo) / 2;
        let created: i64 = created_from.query_row([mid], |r| r.get(0))?;
        if created >= before {
            hi = mid;
        } else {
            lo = mid + 1;
        }
    }
    Ok(lo)
}

/// How many delivery ids one step of pruning looks at (about a millisecond of the writer's time).
const PRUNE_SPAN: i64 = 20_000;

/// How many new delivery ids [`Seen`] gathers before folding them into `deliveries`.
const SEEN_FOLD_AT: usize = 4096;

/// Deduplication's latest delivery ids. `deliveries` is keyed by (source, delivery id), and providers'
/// ids come in no order (GitHub's are GUIDs): one insert per accepted delivery landed on a random leaf
/// page, so every commit wrote — and every checkpoint copied — about one page per delivery it held
/// (6.5 KB per delivered job in the load benchmark). New ids go instead to `deliveries_recent`, a table
/// appended to in arrival order, and to this map, which answers for them; every [`SEEN_FOLD_AT`] ids
/// they are folded into `deliveries` in key order, many to a page. The map mirrors the table: read at
/// open, and again after a failed commit (an id it kept from a rolled-back accept would turn the
/// provider's retry of that delivery away as a duplicate).
#[derive(Default)]
struct Seen {
    recent: std::collections::HashMap<(String, String), i64>,
}

impl Seen {
    fn load(conn: &Connection) -> rusqlite::Result<Seen> {
        let mut recent = std::collections::HashMap::new();
        let mut stmt = conn.prepare(
            "SELECT source, delivery, max(seen_at) FROM deliveries_recent GROUP BY source, delivery",
        )?;
        for row in stmt.query_map([], |r| Ok(((r.get(0)?, r.get(1)?), r.get(2)?)))? {
            let (key, at) = row?;
            recent.insert(key, at);
        }
        Ok(Seen { recent })
    }

    /// Whether `key` was seen at or after `since`. The map holds an id's latest sighting if it is
    /// recent; otherwise `deliveries` may hold an older one.
    fn seen_since(
        &self,
        t: &Connection,
        key: &(String, String),
        since: i64,
    ) -> rusqlite::Result<bool> {
        if let Some(&at) = self.recent.get(key) {
            return Ok(at >= since);
        }
        let at: Option<i64> = t
            .prepare_cached("SELECT seen_at FROM deliveries WHERE source = ?1 AND delivery = ?2")?
            .query_row(params![key.0, key.1], |r| r.get(0))
            .optional()?;
        Ok(at.is_some_and(|at| at >= since))
    }

    /// Moves `deliveries_recent` into `deliveries`, sorted by key (a `WHERE` is needed by SQLite's
    /// parser for an upsert from a SELECT).
    fn fold(t: &Connection) -> rusqlite::Result<()> {
        t.execute_batch(
            "INSERT INTO deliveries (source, delivery, seen_at)
                 SELECT source, delivery, max(seen_at) FROM deliveries_recent WHERE true
                 GROUP BY source, delivery ORDER BY source, delivery
                 ON CONFLICT (source, delivery) DO UPDATE SET seen_at = max(seen_at, excluded.seen_at);
             DELETE FROM deliveries_recent;",
        )
    }
}

/// The writer's open transaction.
#[derive(Default)]
struct Open {
    /// When it began; `None` when no transaction is open.
    since: Option<std::time::Instant>,
    /// Answers held until the commit (and, if `sync`, the WAL's sync) is done.
    held: Vec<Answer>,
    /// Something held promises durability: sync the WAL after the commit.
    sync: bool,
}

/// What the writer keeps besides its connection and its open transaction.
struct State {
    seen: Seen,
    /// The next claim's lease token. Tokens come from this counter, seeded past the largest stored one,
    /// not from each job's count of claims: a claim is answered before its commit, and if that commit
    /// fails, a count would hand the same token out again — for the same job, or for a new job that
    /// takes the rolled-back one's id — and the first holder's late settle would pass for the second's.
    next_lease: i64,
    /// Why the queue stopped: the WAL could not be synced. The kernel reports a failed write-back once
    /// and may drop the pages, so a later sync that succeeds proves nothing; every operation after
    /// fails with this (and `/readyz` with it) until the gateway restarts and recovers from the disk.
    broken: Option<String>,
}

impl State {
    fn load(conn: &Connection) -> rusqlite::Result<State> {
        let last: i64 =
            conn.query_row("SELECT coalesce(max(lease), 0) FROM jobs", [], |r| r.get(0))?;
        Ok(State {
            seen: Seen::load(conn)?,
            next_lease: last + 1,
            broken: None,
        })
    }

    fn lease(&mut self) -> i64 {
        let token = self.next_lease;
        self.next_lease += 1;
        token
    }
}

/// The write-ahead log file, synced by hand after a commit that holds something durable.
struct Wal {
    path: PathBuf,
    /// Kept open between syncs, with the (device, inode) it was opened at.
    file: Option<(std::fs::File, (u64, u64))>,
}

impl Wal {
    /// The WAL of the database at `db` (give SQLite's own name for it, links resolved, so that the
    /// file synced is the one SQLite writes).
    fn new(db: &Path) -> Wal {
        let mut path = db.as_os_str().to_owned();
        path.push("-wal");
        Wal {
            path: path.into(),
            file: None,
        }
    }

    /// `fdatasync` of the WAL: everything committed so far survives a power cut. Any descriptor of the
    /// file will do (the kernel syncs the inode); it is opened again if the file was ever replaced,
    /// and then its directory is synced too, so that the file's name survives as well.
    fn sync(&mut self) -> std::io::Result<()> {
        use std::os::unix::fs::MetadataExt;
        let meta = std::fs::metadata(&self.path)?;
        let id = (meta.dev(), meta.ino());
        match &self.file {
            Some((file, at)) if *at == id => file.sync_data(),
            _ => {
                let file = std::fs::File::open(&self.path)?;
                file.sync_data()?;
                if let Some(dir) = self.path.parent().filter(|d| !d.as_os_str().is_empty()) {
                    std::fs::File::open(dir)?.sync_all()?;
                }
                self.file = Some((file, id));
                Ok(())
            }
        }
    }
}

/// The writer thread: batches, applies, commits, answers. Ends on `Close` (or when every sender is
/// gone), after committing, checkpointing the WAL and closing the connection.
///
/// Group commit, with the fsync where a promise needs it. The connection runs `synchronous=NORMAL`
/// (WAL mode: a commit writes the WAL, no fsync), and the writer syncs the WAL itself after a commit
/// that holds an accepted delivery, an enqueue, a requeue or a rules version; only then are those
/// answered. Everything else — claims, settles, records of outcomes, reads — is answered as soon as it
/// is applied, and its transaction stays open up to [`COMMIT_DELAY`] for more: the dispatcher's many
/// small claims and settles share one commit (and the next 202's fsync) instead of one each. Every
/// operation sees the writes before it (one connection), committed or not. What a crash can take is
/// what at-least-once allows: a kill -9 or a power cut loses at most the last few milliseconds of
/// claims and settles (their jobs are delivered again) and of records of outcomes, never a job that
/// was answered 202. SQLite syncs the WAL before each checkpoint and the database after it.
fn writer(
    mut conn: Connection,
    rx: std::sync::mpsc::Receiver<Op>,
    waiting: &AtomicUsize,
    db: &Path,
    mut state: State,
) {
    use std::sync::mpsc::RecvTimeoutError;
    let mut closing: Option<Reply<()>> = None;
    let mut open = Open::default();
    let mut wal = Wal::new(db);
    let received = |op| {
        waiting.fetch_sub(1, Ordering::Relaxed);
        op
    };
    loop {
        let first = match open.since {
            None => rx.recv().ok(),
            Some(since) => match rx.recv_timeout(COMMIT_DELAY.saturating_sub(since.elapsed())) {
                Ok(op) => Some(op),
                Err(RecvTimeoutError::Timeout) => {
                    finish(&mut conn, &mut open, &mut wal, &mut state);
                    continue;
                }
                Err(RecvTimeoutError::Disconnected) => None,
            },
        };
        let Some(first) = first.map(received) else {
            break;
        };
        let mut batch = vec![first];
        while batch.len() < MAX_BATCH {
            match rx.try_recv() {
                Ok(op) => batch.push(received(op)),
                Err(_) => break,
            }
        }
        // Operations sent before `Close` are applied; `Close` ends the loop after this batch.
        if let Some(at) = batch.iter().position(|op| matches!(op, Op::Close(_))) {
            let rest = batch.split_off(at);
            for op in rest {
                match op {
                    Op::Close(reply) if closing.is_none() => closing = Some(reply),
                    other => fail_closed(other),
                }
            }
        }
        if !batch.is_empty() {
            apply_batch(&mut conn, batch, &mut open, &mut wal, &mut state);
        }
        if closing.is_some() {
            break;
        }
    }
    finish(&mut conn, &mut open, &mut wal, &mut state);
    while let Ok(op) = rx.try_recv() {
        fail_closed(op);
    }
    drop(rx);
    let result = conn
        .query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()))
        .map_err(storage)
        .and_then(|()| conn.close().map_err(|(_, e)| storage(e)));
    if let Err(e) = &result {
        tracing::warn!(error = %e, "the queue did not close cleanly; SQLite recovers it at the next start");
    }
    if let Some(reply) = closing {
        let _ = reply.send(result);
    }
}

/// Applies a batch in the open transaction (beginning one if needed); commits if the batch holds
/// something that waits on the commit, or the transaction has been open for [`COMMIT_DELAY`].
fn apply_batch(
    conn: &mut Connection,
    batch: Vec<Op>,
    open: &mut Open,
    wal: &mut Wal,
    state: &mut State,
) {
    for op in batch {
        if open.since.is_some() && conn.is_autocommit() {
            // A failed statement (disk full, an I/O error) made SQLite roll the whole transaction
            // back: settle what it held as a failed commit before going on in a new one.
            finish(conn, open, wal, state);
        }
        if let Some(reason) = &state.broken {
            fail(op, reason);
            continue;
        }
        if open.since.is_none() {
            if let Err(e) = run(conn, "BEGIN IMMEDIATE") {
                fail(op, &e.to_string());
                continue;
            }
            open.since = Some(std::time::Instant::now());
        }
        let (waits, sync) = (op.waits_for_commit(), op.needs_sync());
        let answer = apply(conn, op, state);
        if waits {
            open.held.push(answer);
            open.sync |= sync;
        } else {
            answer(None);
        }
    }
    if !open.held.is_empty() || open.since.is_some_and(|at| at.elapsed() >= COMMIT_DELAY) {
        finish(conn, open, wal, state);
    }
}

/// Commits the open transaction, syncs the WAL if an answer waits on it, and gives the held answers.
fn finish(conn: &mut Connection, open: &mut Open, wal: &mut Wal, state: &mut State) {
    if open.since.take().is_none() {
        return;
    }
    let mut result = if conn.is_autocommit() {
        Err("the transaction was rolled back after an error".to_string())
    } else {
        run(conn, "COMMIT").map_err(|e| format!("commit failed: {e}"))
    };
    if let Err(e) = &result {
        tracing::error!(error = %e, "the queue could not commit");
        // Whatever was answered before the commit is lost with it: claims and settles come back as
        // pending jobs (delivered again), as after a crash.
        if !conn.is_autocommit() && conn.execute_batch("ROLLBACK").is_err() {
            state.broken = Some(format!("the queue cannot roll back after an error ({e})"));
        }
        // The ids of the rolled-back accepts must not stay: their deliveries were refused, and the
        // provider's retries are new deliveries. Forgetting them all is the safe side (a duplicate
        // delivered again), if the table cannot be read.
        state.seen = Seen::load(conn).unwrap_or_default();
    }
    if result.is_ok()
        && open.sync
        && let Err(e) = wal.sync()
    {
        let message = format!(
            "cannot sync `{}`: {}; restart the gateway: it recovers the queue from what is on disk",
            wal.path.display(),
            crate::fs::io_reason(&e)
        );
        tracing::error!(error = %message, "the queue stopped");
        state.broken = Some(message.clone());
        result = Err(message);
    }
    open.sync = false;
    for answer in open.held.drain(..) {
        answer(result.as_ref().err().map(String::as_str));
    }
}

/// Takes `DIR/hookgate.lock` exclusively, or says which process holds it.
fn lock_dir(dir: &Path) -> Result<std::fs::File, QueueError> {
    use std::io::{Read, Seek, Write};
    let path = dir.join("hookgate.lock");
    let mut file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&path)
        .map_err(|e| {
            QueueError::Storage(format!(
                "cannot open `{}`: {}",
                path.display(),
                crate::fs::io_reason(&e)
            ))
        })?;
    match file.try_lock() {
        Ok(()) => {}
        Err(std::fs::TryLockError::WouldBlock) => {
            let mut holder = String::new();
            let _ = file.read_to_string(&mut holder);
            return Err(QueueError::Locked {
                dir: dir.display().to_string(),
                holder: holder.trim().to_string(),
            });
        }
        Err(std::fs::TryLockError::Error(e)) => {
            return Err(QueueError::Storage(format!(
                "cannot lock `{}`: {}",
                path.display(),
                crate::fs::io_reason(&e)
            )));
        }
    }
    // Who holds it, for the message a second process prints. Best effort: the lock is what counts.
    let _ = file.set_len(0);
    let _ = file.seek(std::io::SeekFrom::Start(0));
    let _ = write!(file, "{}", std::process::id());
    Ok(file)
}

/// SQLite's `quick_check`: `Err` with what it found when the database is damaged.
fn check_integrity(conn: &Connection) -> Result<(), String> {
    let mut stmt = conn
        .prepare("PRAGMA quick_check")
        .map_err(|e| e.to_string())?;
    let found: Vec<String> = stmt
        .query_map([], |r| r.get(0))
        .and_then(|rows| rows.collect())
        .map_err(|e| e.to_string())?;
    match found.as_slice() {
        [ok] if ok == "ok" => Ok(()),
        problems => Err(problems
            .iter()
            .take(3)
            .cloned()
            .collect::<Vec<_>>()
            .join("; ")),
    }
}

fn fail_closed(op: Op) {
    fail(op, "the queue is closed");
}

/// Sends an operation's result: at once, or once its commit is known (`Some(error)` if it failed).
type Answer = Box<dyn FnOnce(Option<&str>) + Send>;

fn answer<T: Send + 'static>(reply: Reply<T>, result: rusqlite::Result<T>) -> Answer {
    Box::new(move |commit_error| {
        let result = match commit_error {
            Some(e) => Err(QueueError::Storage(e.to_string())),
            None => result.map_err(storage),
        };
        let _ = reply.send(result);
    })
}

/// The result of an operation that can be refused by the queue's own rules (`Ok(Err(..))`, e.g. a
/// lost lease) besides failing in SQLite, once its commit is known.
fn checked<T>(
    commit_error: Option<&str>,
    result: rusqlite::Result<Result<T, QueueError>>,
) -> Result<T, QueueError> {
    match (commit_error, result) {
        (Some(e), _) => Err(QueueError::Storage(e.to_string())),
        (None, Ok(inner)) => inner,
        (None, Err(e)) => Err(storage(e)),
    }
}

/// As [`answer`], for a result made by [`checked`].
fn answer_checked<T: Send + 'static>(
    reply: Reply<T>,
    result: rusqlite::Result<Result<T, QueueError>>,
) -> Answer {
    Box::new(move |commit_error| {
        let _ = reply.send(checked(commit_error, result));
    })
}

fn fail(op: Op, message: &str) {
    fn send<T>(reply: Reply<T>, message: &str) {
        let _ = reply.send(Err(QueueError::Storage(message.to_string())));
    }
    match op {
        Op::Enqueue(_, r) => send(r, message),
        Op::Accept { reply, .. } => send(reply, message),
        Op::DueTargets(r) => send(r, message),
        Op::Claim { reply, .. } => send(reply, message),
        Op::Settle { reply, .. } => send(reply, message),
        Op::Requeue(_, r) => send(r, message),
        Op::PruneFrom(_, r) => send(r, message),
        Op::PruneJobs(_, _, r) => send(r, message),
        Op::PruneSeen(_, _, r) => send(r, message),
        Op::Prune(_, r) => send(r, message),
        Op::Ping(r) => send(r, message),
        Op::SettleMany(_, r) => send(r, message),
        Op::StoreRecords(_, r) => send(r, message),
        Op::PruneRecords(_, _, r) => send(r, message),
        Op::PutRulesVersion(_, _, r) => send(r, message),
        Op::Close(r) => send(r, message),
    }
}

/// Runs a statement of transaction control (`BEGIN`, `COMMIT`, savepoints) prepared once: rusqlite's
/// `execute_batch` and `savepoint()` parse their SQL anew each time, 4–5% of the queue thread in the
/// delivered benchmark for the three or four such statements each operation and commit needs.
fn run(conn: &Connection, sql: &str) -> rusqlite::Result<()> {
    conn.prepare_cached(sql)?.execute([]).map(|_| ())
}

/// Applies one operation. One that writes does so under a savepoint: on failure its writes are undone
/// and only it fails. Reads need none.
fn apply(tx: &Connection, op: Op, state: &mut State) -> Answer {
    fn guarded<T>(
        tx: &Connection,
        f: impl FnOnce(&Connection) -> rusqlite::Result<T>,
    ) -> rusqlite::Result<T> {
        run(tx, "SAVEPOINT op")?;
        let result = f(tx).and_then(|v| run(tx, "RELEASE op").map(|()| v));
        if result.is_err() {
            // Undo the operation's writes, or, should that fail, the whole transaction: the writer
            // then settles it as a failed commit (`apply_batch` sees it in autocommit).
            let undone = run(tx, "ROLLBACK TO op").and_then(|()| run(tx, "RELEASE op"));
            if undone.is_err() && !tx.is_autocommit() {
                let _ = run(tx, "ROLLBACK");
            }
        }
        result
    }
    let now = now_ms();
    match op {
        Op::Enqueue(jobs, reply) => answer(
            reply,
            guarded(tx, |t| jobs.iter().map(|j| insert(t, j, now)).collect()),
        ),
        Op::Accept {
            seen: id,
            window,
            jobs,
            record,
            reply,
        } => {
            let since = now - window.as_millis() as i64;
            let result = guarded(tx, |t| {
                if let Some(key) = &id {
                    if state.seen.seen_since(t, key, since)? {
                        return Ok(Accepted::Duplicate);
                    }
                    t.prepare_cached(
                        "INSERT INTO deliveries_recent (source, delivery, seen_at) VALUES (?1, ?2, ?3)",
                    )?
                    .execute(params![key.0, key.1, now])?;
                }
                let ids: Vec<i64> = jobs
                    .iter()
                    .map(|j| insert(t, j, now))
                    .collect::<rusqlite::Result<_>>()?;
                if let Some(record) = &record {
                    let mut row = record.to_row(Some(&ids));
                    row.status = 202;
                    row.outcome = "accepted".into();
                    insert_record(t, &row)?;
                }
                Ok(Accepted::Enqueued(ids))
            });
            if let (Ok(Accepted::Enqueued(_)), Some(key)) = (&result, id) {
                state.seen.recent.insert(key, now);
                if state.seen.recent.len() >= SEEN_FOLD_AT {
                    match guarded(tx, Seen::fold) {
                        Ok(()) => state.seen.recent.clear(),
                        Err(e) => {
                            tracing::warn!(error = %e, "cannot fold recent delivery ids; trying again at the next")
                        }
                    }
                }
            }
            answer(reply, result)
        }
        Op::DueTargets(reply) => answer(reply, guarded(tx, |t| due_targets(t, now))),
        Op::Claim {
            target,
            limits,
            limit,
            visibility,
            reply,
        } => answer(
            reply,
            guarded(tx, |t| {
                claim(t, &target, limits, limit, now, visibility, state)
            }),
        ),
        Op::Settle {
            lease,
            attempt,
            settle,
            reply,
        } => {
            let result = guarded(tx, |t| {
                Ok(
                    match settle_job(t, lease, attempt.as_ref(), &settle, now)? {
                        Ok(target) => {
                            if let Some(a) = &attempt {
                                note_attempt(t, &target, a, now)?;
                            }
                            Ok(())
                        }
                        Err(e) => Err(e),
                    },
                )
            });
            answer_checked(reply, result)
        }
        Op::SettleMany(settles, reply) => {
            // Each under its own savepoint, as separate settles would be; one commit for all. A
            // target's last attempt is noted once, for the last of its settles in the batch.
            let mut last: std::collections::HashMap<String, Attempt> = Default::default();
            let mut results: Vec<rusqlite::Result<Result<(), QueueError>>> = settles
                .into_iter()
                .map(|(lease, attempt, settle)| {
                    guarded(tx, |t| settle_job(t, lease, attempt.as_ref(), &settle, now)).map(|r| {
                        r.map(|target| {
                            if let Some(a) = attempt {
                                last.insert(target, a);
                            }
                        })
                    })
                })
                .collect();
            if let Err(e) = guarded(tx, |t| {
                last.iter()
                    .try_for_each(|(target, a)| note_attempt(t, target, a, now))
            }) {
                let message = e.to_string();
                results = results
                    .into_iter()
                    .map(|_| Ok(Err(QueueError::Storage(message.clone()))))
                    .collect();
            }
            Box::new(move |commit_error| {
                let results = results
                    .into_iter()
                    .map(|result| checked(commit_error, result))
                    .collect();
                let _ = reply.send(Ok(results));
            })
        }
        Op::Requeue(id, reply) => {
            let result = guarded(tx, |t| {
                let now_in: Option<String> = t
                    .query_row("SELECT state FROM jobs WHERE id = ?1", [id], |r| r.get(0))
                    .optional()?;
                Ok(match now_in.as_deref() {
                    Some("dead") => {
                        // A new lease: an outcome still arriving for the dead-lettering claim is stale.
                        t.execute(
                            "UPDATE jobs SET lease = ?2 WHERE id = ?1",
                            [id, state.lease()],
                        )?;
                        Ok(to_pending(t, id, now, now, true)?)
                    }
                    Some(other) => Err(QueueError::NotDead(id, other.to_string())),
                    None => Err(QueueError::NoSuchJob(id)),
                })
            });
            answer_checked(reply, result)
        }
        Op::Ping(reply) => answer(reply, Ok(())),
        Op::StoreRecords(records, reply) => answer(
            reply,
            guarded(tx, |t| {
                records
                    .iter()
                    .try_for_each(|r| insert_record(t, &r.to_row(None)))
            }),
        ),
        Op::PruneRecords(before, keep, reply) => answer(
            reply,
            guarded(tx, |t| {
                let old = t.execute("DELETE FROM records WHERE received_at < ?1", [before])?;
                let over = t.execute(
                    "DELETE FROM records WHERE id < (SELECT id FROM records ORDER BY id DESC LIMIT 1 OFFSET ?1)",
                    [i64::try_from(keep.saturating_sub(1)).unwrap_or(i64::MAX)],
                )?;
                // Rules versions no record refers to, but the newest, go too.
                t.execute(
                    "DELETE FROM rules_versions WHERE hash NOT IN (SELECT rules_version FROM records WHERE rules_version IS NOT NULL)
                     AND hash <> (SELECT hash FROM rules_versions ORDER BY created_at DESC LIMIT 1)",
                    [],
                )?;
                Ok((old + over) as u64)
            }),
        ),
        Op::PutRulesVersion(hash, files, reply) => answer(
            reply,
            guarded(tx, |t| {
                t.execute(
                    "INSERT INTO rules_versions (hash, created_at, files) VALUES (?1, ?2, ?3)
                     ON CONFLICT (hash) DO NOTHING",
                    params![hash, now, files],
                )
                .map(|_| ())
            }),
        ),
        Op::Close(_) => unreachable!("the writer takes `Close` out of its batch"),
        // Jobs are created in id order: prune walks the ids created before `before` (the rows to
        // delete, mostly) instead of keeping an index on `updated_at` for every write.
        Op::PruneFrom(before, reply) => answer(reply, prune_from(tx, before)),
        Op::PruneJobs(before, below, reply) => answer(
            reply,
            guarded(tx, |t| {
                // A job's attempts go with it, in the same step: a job stored later may be given the
                // id of the newest one deleted, and must not inherit its attempts.
                const CHUNK: &str =
                    "SELECT id FROM jobs WHERE id < ?2 AND state IN ('done', 'dead')
                                     AND updated_at < ?1 ORDER BY id LIMIT ?3";
                let values = params![before, below, PRUNE_CHUNK as i64];
                t.prepare_cached(&format!("DELETE FROM attempts WHERE job_id IN ({CHUNK})"))?
                    .execute(values)?;
                t.prepare_cached(&format!("DELETE FROM jobs WHERE id IN ({CHUNK})"))?
                    .execute(values)
                    .map(|n| n as u64)
            }),
        ),
        Op::PruneSeen(before, (source, delivery), reply) => answer(
            reply,
            guarded(tx, |t| {
                let end: Option<(String, String)> = t
                    .prepare_cached(
                        "SELECT source, delivery FROM deliveries WHERE (source, delivery) > (?1, ?2)
                         ORDER BY source, delivery LIMIT 1 OFFSET ?3",
                    )?
                    .query_row(params![source, delivery, PRUNE_SPAN - 1], |r| {
                        Ok((r.get(0)?, r.get(1)?))
                    })
                    .optional()?;
                match &end {
                    Some((last_source, last_delivery)) => t
                        .prepare_cached(
                            "DELETE FROM deliveries WHERE (source, delivery) > (?1, ?2)
                             AND (source, delivery) <= (?4, ?5) AND seen_at < ?3",
                        )?
                        .execute(params![source, delivery, before, last_source, last_delivery])?,
                    None => t
                        .prepare_cached(
                            "DELETE FROM deliveries WHERE (source, delivery) > (?1, ?2) AND seen_at < ?3",
                        )?
                        .execute(params![source, delivery, before])?,
                };
                Ok(end)
            }),
        ),
        Op::Prune(before, reply) => {
            let result = guarded(tx, |t| {
                t.execute(
                    "DELETE FROM attempts WHERE job_id NOT IN (SELECT id FROM jobs)",
                    [],
                )?;
                t.execute("DELETE FROM deliveries_recent WHERE seen_at < ?1", [before])?;
                Ok(())
            });
            if result.is_ok() {
                state.seen.recent.retain(|_, at| *at >= before);
            }
            answer(reply, result)
        }
    }
}

fn insert(t: &Connection, j: &NewJob, now: i64) -> rusqlite::Result<i64> {
    let headers = serde_json::to_string(&j.headers).unwrap_or_else(|_| "[]".into());
    const COLUMNS: &str = "INSERT INTO jobs (kind, target, key, source, event, delivery, rule, action, body, headers, sign_with,
                           state, run_at, created_at, updated_at)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, 'pending', ?12, ?12, ?12)";
    let check = j.kind == JobKind::Check;
    // Checks always have a key ('' when none is given), so the unique index sees them all.
    let key = match (check, &j.key) {
        (true, None) => Some(String::new()),
        (_, key) => key.clone(),
    };
    let values = params![
        j.kind.as_str(),
        j.target,
        key,
        j.source,
        j.event,
        j.delivery,
        j.rule,
        j.action,
        j.body,
        headers,
        j.sign_with,
        now
    ];
    if !check {
        // No conflict is possible (the unique index holds pending checks only), so no RETURNING: SQLite
        // gathers RETURNING rows in an ephemeral table, a page cache of its own for one id.
        t.prepare_cached(COLUMNS)?.execute(values)?;
        return Ok(t.last_insert_rowid());
    }
    // A check whose (target, key) is already pending adds to that job's count and returns its id.
    let sql = format!(
        "{COLUMNS}
         ON CONFLICT (target, key) WHERE kind = 'check' AND state = 'pending'
         DO UPDATE SET coalesced = coalesced + 1, updated_at = excluded.updated_at
         RETURNING id"
    );
    t.prepare_cached(&sql)?.query_row(values, |r| r.get(0))
}

/// Pending jobs per target with the earliest due time; checks blocked by an in-flight sibling are not
/// due. Also returns jobs whose visibility timeout expired to pending.
fn due_targets(t: &Connection, now: i64) -> rusqlite::Result<Vec<(String, i64)>> {
    let expired: Vec<i64> = {
        let mut stmt = t.prepare_cached(
            "SELECT id FROM jobs WHERE state = 'inflight' AND claimed_until < ?1",
        )?;
        stmt.query_map([now], |r| r.get(0))?
            .collect::<rusqlite::Result<_>>()?
    };
    for id in expired {
        to_pending(t, id, now, now, false)?;
    }
    // A skip scan of the `(state, target, run_at)` index: one seek per distinct pending target for its
    // name and one for its earliest `run_at`, so the cost follows the number of targets, not of pending
    // jobs (a `GROUP BY` reads every pending entry, and the dispatcher asks this often). A check blocked
    // by an in-flight sibling still counts as due here; `claim` skips it.
    let mut stmt = t.prepare_cached(
        "WITH RECURSIVE targets(name) AS (
             SELECT (SELECT MIN(target) FROM jobs WHERE state = 'pending')
             UNION ALL
             SELECT (SELECT MIN(target) FROM jobs WHERE state = 'pending' AND target > name)
             FROM targets WHERE name IS NOT NULL)
         SELECT name, (SELECT MIN(run_at) FROM jobs WHERE state = 'pending' AND target = name)
         FROM targets WHERE name IS NOT NULL",
    )?;
    stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?
        .collect()
}

/// Claims due jobs within the target's limits: its unexpired in-flight claims count against
/// `concurrency`, and each claim takes a token from its bucket (refilled continuously, reset to full
/// when the rate changes), as the PostgreSQL queue does across replicas.
fn claim(
    t: &Connection,
    target: &str,
    limits: ClaimLimits,
    limit: usize,
    now: i64,
    visibility: Duration,
    state: &mut State,
) -> rusqlite::Result<Vec<Job>> {
    let mut limit = limit as i64;
    if limits.concurrency != u32::MAX {
        let inflight: i64 = t
            .prepare_cached(
                "SELECT COUNT(*) FROM jobs WHERE state = 'inflight' AND target = ?1 AND claimed_until >= ?2",
            )?
            .query_row(params![target, now], |r| r.get(0))?;
        limit = limit.min(i64::from(limits.concurrency) - inflight);
    }
    let mut bucket = None;
    if let Some(rate) = limits.rate {
        let (count, per) = (i64::from(rate.count), rate.per.as_millis().max(1) as i64);
        let row: Option<(f64, i64, i64, i64)> = t
            .prepare_cached(
                "SELECT tokens, at, rate_count, rate_per FROM buckets WHERE target = ?1",
            )?
            .query_row([target], |r| {
                Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?))
            })
            .optional()?;
        let tokens = match row {
            Some((tokens, at, c, p)) if (c, p) == (count, per) => {
                (tokens + (now - at).max(0) as f64 * count as f64 / per as f64).min(count as f64)
            }
            _ => count as f64,
        };
        limit = limit.min(tokens.floor() as i64);
        bucket = Some((tokens, count, per));
    }
    if limit <= 0 {
        return Ok(Vec::new());
    }
    let until = now + visibility.as_millis() as i64;
    // Read the due jobs, then mark each claimed. One `UPDATE … WHERE id IN (SELECT … LIMIT) RETURNING`
    // did both, but SQLite runs that through three ephemeral tables (the IN list, the RETURNING rows,
    // the UPDATE's key set), each with a page cache of its own, allocated and faulted in on every
    // claim: 12% of the queue thread in the delivered benchmark. This SELECT walks `jobs_due` in
    // (run_at, id) order with no sorter, and the UPDATE is a lookup by rowid. A pending check blocked
    // by an in-flight sibling is skipped; two pending checks of one (target, key) cannot exist (the
    // unique index), so claiming one here never blocks another of the same batch.
    let sql = format!(
        "SELECT {JOB_COLUMNS} FROM jobs j
         WHERE state = 'pending' AND target = ?1 AND run_at <= ?2
           AND NOT (kind = 'check' AND EXISTS (
               SELECT 1 FROM jobs i WHERE i.state = 'inflight' AND i.kind = 'check' AND i.target = j.target AND i.key = j.key))
         ORDER BY run_at, id LIMIT ?3"
    );
    let mut jobs: Vec<Job> = t
        .prepare_cached(&sql)?
        .query_map(params![target, now, limit], job_from_row)?
        .collect::<rusqlite::Result<_>>()?;
    let mut mark = t.prepare_cached(
        "UPDATE jobs SET state = 'inflight', claimed_until = ?2, updated_at = ?3, lease = ?4 WHERE id = ?1",
    )?;
    for job in &mut jobs {
        job.lease = state.lease();
        job.state = JobState::Inflight;
        job.updated_at = now;
        mark.execute(params![job.id, until, now, job.lease])?;
    }
    if let Some((tokens, count, per)) = bucket {
        t.prepare_cached(
            "INSERT OR REPLACE INTO buckets (target, tokens, at, rate_count, rate_per) VALUES (?1, ?2, ?3, ?4, ?5)",
        )?
        .execute(params![target, tokens - jobs.len() as f64, now, count, per])?;
    }
    Ok(jobs)
}

/// Settles a job for the holder of `lease`: `Ok(Err(..))` when there is no such job or it was
/// claimed again since (then nothing is recorded). Returns the job's target, for [`note_attempt`]
/// (which `SettleMany` calls once per target for the batch).
///
/// The attempt goes into the job's row (its last attempt); an attempt that did not deliver is also kept
/// in `attempts`, as history. A delivered one needs no row of its own: `get` reads it from the job.
fn settle_job(
    t: &Connection,
    lease: Lease,
    attempt: Option<&Attempt>,
    settle: &Settle,
    now: i64,
) -> rusqlite::Result<Result<String, QueueError>> {
    let id = lease.id;
    let found: Option<(i64, String)> = t
        .prepare_cached("SELECT lease, target FROM jobs WHERE id = ?1")?
        .query_row([id], |r| Ok((r.get(0)?, r.get(1)?)))
        .optional()?;
    let target = match found {
        None => return Ok(Err(QueueError::NoSuchJob(id))),
        Some((token, _)) if token != lease.token => return Ok(Err(QueueError::LeaseLost(id))),
        Some((_, target)) => target,
    };
    // A job that ends here (done or dead) takes its attempt and its end in one row update.
    let end = match settle {
        Settle::Ack => Some("done"),
        Settle::DeadLetter => Some("dead"),
        Settle::Retry { .. } | Settle::Release => None,
    };
    if let Some(a) = attempt {
        if *settle != Settle::Ack {
            t.prepare_cached(
                "INSERT OR REPLACE INTO attempts (job_id, attempt, started_at, duration_ms, status, error) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
            )?
            .execute(params![id, a.attempt, a.started_at, a.duration_ms as i64, a.status, a.error])?;
        }
        t.prepare_cached(
            "UPDATE jobs SET attempts = ?2, last_status = ?3, last_error = ?4, updated_at = ?5,
                             last_started_at = ?6, last_duration_ms = ?7,
                             state = coalesce(?8, state),
                             claimed_until = CASE WHEN ?8 IS NULL THEN claimed_until END
             WHERE id = ?1",
        )?
        .execute(params![
            id,
            a.attempt,
            a.status,
            a.error,
            now,
            a.started_at,
            a.duration_ms as i64,
            end
        ])?;
        if end.is_some() {
            return Ok(Ok(target));
        }
    }
    match settle {
        Settle::Ack | Settle::DeadLetter => {
            t.prepare_cached(
                "UPDATE jobs SET state = ?2, claimed_until = NULL, updated_at = ?3 WHERE id = ?1",
            )?
            .execute(params![id, end, now])?;
        }
        Settle::Retry { delay } => to_pending(t, id, now + delay.as_millis() as i64, now, false)?,
        Settle::Release => to_pending(t, id, now, now, false)?,
    }
    Ok(Ok(target))
}

/// Returns a job to pending, due at `run_at`. A check whose (target, key) already has a pending job
/// merges into it instead (its count added), since one check serves both.
fn to_pending(
    t: &Connection,
    id: i64,
    run_at: i64,
    now: i64,
    reset_attempts: bool,
) -> rusqlite::Result<()> {
    let (kind, target, key, coalesced): (String, String, Option<String>, i64) = t.query_row(
        "SELECT kind, target, key, coalesced FROM jobs WHERE id = ?1",
        [id],
        |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)),
    )?;
    if kind == "check" {
        let sibling: Option<i64> = t
            .query_row(
                "SELECT id FROM jobs WHERE kind = 'check' AND state = 'pending' AND target = ?1 AND key = ?2 AND id != ?3",
                params![target, key, id],
                |r| r.get(0),
            )
            .optional()?;
        if let Some(sibling) = sibling {
            t.execute(
                "UPDATE jobs SET coalesced = coalesced + ?2, updated_at = ?3 WHERE id = ?1",
                params![sibling, coalesced, now],
            )?;
            t.execute(
                "UPDATE jobs SET state = 'done', claimed_until = NULL, last_error = ?2, updated_at = ?3 WHERE id = ?1",
                params![id, format!("merged into pending check {sibling}"), now],
            )?;
            return Ok(());
        }
    }
    // A re-queued job gets a fresh retry budget; its attempts keep their numbers, so none is
    // overwritten in `attempts`.
    let sql = if reset_attempts {
        "UPDATE jobs SET state = 'pending', run_at = ?2, claimed_until = NULL, retry_base = attempts, updated_at = ?3 WHERE id = ?1"
    } else {
        "UPDATE jobs SET state = 'pending', run_at = ?2, claimed_until = NULL, updated_at = ?3 WHERE id = ?1"
    };
    t.execute(sql, params![id, run_at, now])?;
    Ok(())
}

fn list_jobs(t: &Connection, state: JobState, limit: usize) -> rusqlite::Result<Vec<Job>> {
    let sql = format!("SELECT {JOB_COLUMNS} FROM jobs WHERE state = ?1 ORDER BY id DESC LIMIT ?2");
    let mut stmt = t.prepare_cached(&sql)?;
    stmt.query_map(params![state.as_str(), limit as i64], job_from_row)?
        .collect()
}

fn get_job(t: &Connection, id: i64) -> rusqlite::Result<(Job, Vec<Attempt>)> {
    let sql = format!("SELECT {JOB_COLUMNS} FROM jobs WHERE id = ?1");
    let job = t.query_row(&sql, [id], job_from_row)?;
    let mut stmt = t.prepare_cached(
        "SELECT attempt, started_at, duration_ms, status, error FROM attempts WHERE job_id = ?1 ORDER BY attempt",
    )?;
    let mut attempts: Vec<Attempt> = stmt
        .query_map([id], |r| {
            Ok(Attempt {
                attempt: r.get(0)?,
                started_at: r.get(1)?,
                duration_ms: r.get::<_, i64>(2)? as u64,
                status: r.get(3)?,
                error: r.get(4)?,
            })
        })?
        .collect::<rusqlite::Result<_>>()?;
    // The last attempt lives in the job's row (a delivered one has no row of its own).
    let (started, duration): (Option<i64>, Option<i64>) = t.query_row(
        "SELECT last_started_at, last_duration_ms FROM jobs WHERE id = ?1",
        [id],
        |r| Ok((r.get(0)?, r.get(1)?)),
    )?;
    if let (Some(started_at), Some(duration)) = (started, duration)
        && job.attempts > 0
        && attempts.last().is_none_or(|a| a.attempt < job.attempts)
    {
        attempts.push(Attempt {
            attempt: job.attempts,
            started_at,
            duration_ms: duration as u64,
            status: job.last_status,
            error: job.last_error.clone(),
        });
    }
    Ok((job, attempts))
}

/// Jobs by state: pending and in flight from their partial indexes, done and dead from `job_counts`
/// (migration 8). None of it reads the jobs themselves, however many are kept.
fn stats(t: &Connection) -> rusqlite::Result<Stats> {
    let counts: [i64; 4] = t
        .prepare_cached(
            "SELECT (SELECT COUNT(*) FROM jobs WHERE state = 'pending'),
                    (SELECT COUNT(*) FROM jobs WHERE state = 'inflight'),
                    (SELECT n FROM job_counts WHERE state = 'done'),
                    (SELECT n FROM job_counts WHERE state = 'dead')",
        )?
        .query_row([], |r| Ok([r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?]))?;
    let [pending, inflight, done, dead] = counts.map(|n| n.max(0) as u64);
    let mut stmt = t.prepare_cached(
        "SELECT target, COUNT(*) FROM jobs WHERE state = 'pending' GROUP BY target ORDER BY target",
    )?;
    let pending_by_target = stmt
        .query_map([], |r| Ok((r.get(0)?, r.get::<_, i64>(1)? as u64)))?
        .collect::<rusqlite::Result<_>>()?;
    Ok(Stats {
        pending,
        inflight,
        done,
        dead,
        pending_by_target,
    })
}

const RECORD_COLUMNS: &str = "id, received_at, source, delivery, event, status, outcome, reason, matched, \
     actions, rules_version, replay_of, headers, query, body, size, body_encoding";

/// Bodies shorter than this are stored as received: compressing them saves too little.
const COMPRESS_FROM: usize = 512;

/// A decompressed body larger than this is refused (a damaged row must not allocate without bound):
/// well above any `--max-body`.
const MAX_DECOMPRESSED: usize = 1 << 30;

/// A record's body as stored: lz4-compressed (block format, size prepended) when that makes it
/// smaller. SQLite writes every byte twice (the WAL, then the checkpoint), and a matching request's
/// record is written in the transaction that accepts it, so a 7 KB JSON push stored as 2 KB is a
/// quarter less work for the queue thread (docs/performance.md). PostgreSQL compresses large
/// values itself (TOAST), so its backend stores bodies as they are.
fn encode_body(body: Option<&[u8]>) -> (Option<std::borrow::Cow<'_, [u8]>>, Option<&'static str>) {
    match body {
        Some(b) if (COMPRESS_FROM..=MAX_DECOMPRESSED).contains(&b.len()) => {
            let packed = lz4_flex::block::compress_prepend_size(b);
            if packed.len() < b.len() {
                (Some(packed.into()), Some("lz4"))
            } else {
                (Some(b.into()), None)
            }
        }
        other => (other.map(Into::into), None),
    }
}

/// The largest rules version read back: a root file and its includes of up to `MAX_FILE_BYTES` each,
/// as JSON (escapes can double a text), for a set of a few large files.
const MAX_RULES_VERSION: usize = 256 << 20;

/// A rules version's files as stored: their JSON ([`crate::queue::rules_version_json`]) written
/// straight into an lz4 frame, in a BLOB. A large rules set's text is tens of MiB; as one JSON string
/// bound as TEXT, it was held twice more during the insert (the string and SQLite's copy) and then
/// filled SQLite's page cache, about 100 MiB at every reload of 100,000 rules (docs/performance.md).
/// Versions stored as TEXT by earlier gateways are read as they are.
fn pack_rules_version(files: &crate::reload::Files) -> std::io::Result<Vec<u8>> {
    let mut frame = lz4_flex::frame::FrameEncoder::new(Vec::new());
    crate::queue::rules_version_json(files, &mut frame)?;
    frame.finish().map_err(std::io::Error::other)
}

/// The files' JSON of a stored rules version, or `None` (with a warning) when it cannot be decoded:
/// the deliveries it judged are then shown without an explanation.
fn unpack_rules_version(hash: &str, stored: rusqlite::types::Value) -> Option<String> {
    use rusqlite::types::Value;
    let failed = |why: &str| {
        tracing::warn!(
            rules_version = hash,
            reason = why,
            "a stored rules version cannot be decoded; its deliveries are shown without explanations"
        );
        None
    };
    match stored {
        Value::Text(files) => Some(files),
        Value::Blob(packed) => {
            use std::io::Read;
            let mut files = String::new();
            // At most what the text could be (lz4 expands at most 255 times), and what a rules set's
            // files can hold: a damaged or forged value cannot make it allocate more.
            let limit = MAX_RULES_VERSION.min(packed.len().saturating_mul(255)) as u64;
            let mut reader = lz4_flex::frame::FrameDecoder::new(packed.as_slice()).take(limit + 1);
            match reader.read_to_string(&mut files) {
                Ok(n) if n as u64 <= limit => Some(files),
                Ok(_) => failed("larger than it can be"),
                Err(e) if e.kind() == std::io::ErrorKind::InvalidData => {
                    failed("damaged lz4 data or not UTF-8")
                }
                Err(_) => failed("damaged lz4 data"),
            }
        }
        _ => failed("neither text nor a blob"),
    }
}

/// The body as received, or `None` (with a warning) when a stored body cannot be decoded: the record
/// is still listed and explained as far as it can be. `size` is the record's size column, which is at
/// least the body's length: a damaged size prefix cannot make it allocate more.
fn decode_body(
    id: &str,
    body: Option<Vec<u8>>,
    encoding: Option<&str>,
    size: i64,
) -> Option<Vec<u8>> {
    let body = body?;
    let failed = |why: &str| {
        tracing::warn!(
            record = id,
            reason = why,
            "a stored record body cannot be decoded; shown without it"
        );
        None
    };
    match encoding {
        None => Some(body),
        Some("lz4") => {
            let limit = usize::try_from(size)
                .unwrap_or(0)
                .min(MAX_DECOMPRESSED)
                // lz4 expands at most 255 times.
                .min(body.len().saturating_mul(255));
            match lz4_flex::block::uncompressed_size(&body) {
                Ok((want, data)) if want <= limit => {
                    match lz4_flex::block::decompress(data, want) {
                        Ok(body) if body.len() == want => Some(body),
                        Ok(_) => failed("lz4 data shorter than its size"),
                        Err(_) => failed("damaged lz4 data"),
                    }
                }
                _ => failed("damaged lz4 size"),
            }
        }
        Some(_) => failed("unknown encoding"),
    }
}

fn insert_record(t: &Connection, r: &RecordRow) -> rusqlite::Result<()> {
    let (body, encoding) = encode_body(r.body.as_deref());
    t.prepare_cached(
        "INSERT INTO records (id, received_at, source, delivery, event, status, outcome, reason, matched,
                              actions, rules_version, replay_of, headers, query, body, size, body_encoding)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16, ?17)
         ON CONFLICT (id) DO NOTHING",
    )?
    .execute(params![
        r.id,
        r.received_at,
        r.source,
        r.delivery,
        r.event,
        r.status,
        r.outcome,
        r.reason,
        r.matched,
        r.actions,
        r.rules_version,
        r.replay_of,
        r.headers,
        r.query,
        body,
        r.size,
        encoding
    ])?;
    Ok(())
}

fn record_from_row(r: &Row<'_>) -> rusqlite::Result<RecordRow> {
    let id: String = r.get(0)?;
    let encoding: Option<String> = r.get(16)?;
    let body = decode_body(&id, r.get(14)?, encoding.as_deref(), r.get(15)?);
    Ok(RecordRow {
        id,
        received_at: r.get(1)?,
        source: r.get(2)?,
        delivery: r.get(3)?,
        event: r.get(4)?,
        status: r.get(5)?,
        outcome: r.get(6)?,
        reason: r.get(7)?,
        matched: r.get(8)?,
        actions: r.get(9)?,
        rules_version: r.get(10)?,
        replay_of: r.get(11)?,
        headers: r.get(12)?,
        query: r.get(13)?,
        body,
        size: r.get(15)?,
    })
}

fn list_records(t: &Connection, f: &Filter) -> rusqlite::Result<Vec<Record>> {
    let (code, outcome) = match f.status {
        Some(StatusFilter::Code(c)) => (Some(i64::from(c)), None),
        Some(StatusFilter::Outcome(o)) => (None, Some(o.as_str())),
        None => (None, None),
    };
    let sql = format!(
        "SELECT {RECORD_COLUMNS} FROM records
         WHERE (?1 IS NULL OR source = ?1) AND (?2 IS NULL OR event = ?2)
           AND (?3 IS NULL OR EXISTS (SELECT 1 FROM json_each(records.matched) WHERE value = ?3))
           AND (?4 IS NULL OR status = ?4) AND (?5 IS NULL OR outcome = ?5)
           AND (?6 IS NULL OR received_at >= ?6) AND (?7 IS NULL OR id < ?7)
         ORDER BY id DESC LIMIT ?8"
    );
    let mut stmt = t.prepare_cached(&sql)?;
    let rows = stmt.query_map(
        params![
            f.source,
            f.event,
            f.rule,
            code,
            outcome,
            f.since,
            f.before,
            i64::try_from(f.limit).unwrap_or(i64::MAX)
        ],
        record_from_row,
    )?;
    rows.map(|r| r.map(Record::from_row)).collect()
}

fn target_stats(t: &Connection) -> rusqlite::Result<Vec<TargetStats>> {
    let mut out: std::collections::BTreeMap<String, TargetStats> = Default::default();
    // One query per state, so each reads its own partial index, not the table.
    let mut stmt = t.prepare_cached(
        "SELECT target, 'pending', COUNT(*), MIN(created_at), MIN(run_at) FROM jobs
         WHERE state = 'pending' GROUP BY target
         UNION ALL
         SELECT target, 'inflight', COUNT(*), NULL, NULL FROM jobs
         WHERE state = 'inflight' GROUP BY target",
    )?;
    let rows = stmt.query_map([], |r| {
        Ok((
            r.get::<_, String>(0)?,
            r.get::<_, String>(1)?,
            r.get::<_, i64>(2)?,
            r.get::<_, Option<i64>>(3)?,
            r.get::<_, Option<i64>>(4)?,
        ))
    })?;
    for row in rows {
        let (target, state, n, oldest, next) = row?;
        let s = out.entry(target.clone()).or_insert_with(|| TargetStats {
            name: target,
            ..TargetStats::default()
        });
        if state == "pending" {
            s.pending = n as u64;
            s.oldest_pending_at = oldest;
            s.next_attempt_at = next;
        } else {
            s.inflight = n as u64;
        }
    }
    let mut stmt = t.prepare_cached(
        "SELECT target, last_attempt_at, last_delivery_at, last_error, last_error_at FROM target_status",
    )?;
    let rows = stmt.query_map([], |r| {
        Ok((
            r.get::<_, String>(0)?,
            r.get(1)?,
            r.get(2)?,
            r.get(3)?,
            r.get(4)?,
        ))
    })?;
    for row in rows {
        let (target, attempt, delivery, error, error_at) = row?;
        let s = out.entry(target.clone()).or_insert_with(|| TargetStats {
            name: target,
            ..TargetStats::default()
        });
        s.last_attempt_at = attempt;
        s.last_delivery_at = delivery;
        s.last_error = error;
        s.last_error_at = error_at;
    }
    Ok(out.into_values().collect())
}

/// Notes an attempt on its target: when, and whether it reached it (2xx) or what went wrong.
fn note_attempt(t: &Connection, target: &str, a: &Attempt, now: i64) -> rusqlite::Result<()> {
    let delivered = a.status.is_some_and(|s| (200..300).contains(&s));
    let error = (!delivered).then(|| {
        a.error
            .clone()
            .unwrap_or_else(|| format!("HTTP {}", a.status.unwrap_or(0)))
    });
    t.prepare_cached(
        "INSERT INTO target_status (target, last_attempt_at, last_delivery_at, last_error, last_error_at)
         VALUES (?1, ?2, CASE WHEN ?3 THEN ?2 END, ?4, CASE WHEN ?3 THEN NULL ELSE ?2 END)
         ON CONFLICT (target) DO UPDATE SET
             last_attempt_at = excluded.last_attempt_at,
             last_delivery_at = coalesce(excluded.last_delivery_at, last_delivery_at),
             last_error = coalesce(excluded.last_error, last_error),
             last_error_at = coalesce(excluded.last_error_at, last_error_at)",
    )?
    .execute(params![target, now, delivered, error])?;
    Ok(())
}

fn job_from_row(r: &Row<'_>) -> rusqlite::Result<Job> {
    let text_err = |i: usize, what: &str| {
        rusqlite::Error::FromSqlConversionFailure(
            i,
            rusqlite::types::Type::Text,
            format!("unknown {what}").into(),
        )
    };
    let kind: String = r.get(1)?;
    let state: String = r.get(12)?;
    let headers: String = r.get(10)?;
    Ok(Job {
        id: r.get(0)?,
        kind: JobKind::parse(&kind).ok_or_else(|| text_err(1, "job kind"))?,
        target: r.get(2)?,
        key: r.get(3)?,
        source: r.get(4)?,
        event: r.get(5)?,
        delivery: r.get(6)?,
        rule: r.get(7)?,
        action: r.get(8)?,
        body: r.get(9)?,
        headers: serde_json::from_str(&headers).map_err(|_| text_err(10, "headers"))?,
        sign_with: r.get(11)?,
        state: JobState::parse(&state).ok_or_else(|| text_err(12, "job state"))?,
        attempts: r.get(13)?,
        coalesced: r.get(14)?,
        run_at: r.get(15)?,
        created_at: r.get(16)?,
        updated_at: r.get(17)?,
        last_status: r.get(18)?,
        last_error: r.get(19)?,
        lease: r.get(20)?,
        retry_base: r.get(21)?,
    })
}

#[cfg(test)]
mod tests {
    use super::{SqliteQueue, Wal, decode_body, encode_body};
    use crate::queue::{Accepted, ClaimLimits, JobKind, NewJob, QueueBackend, Settle};
    use std::sync::Arc;
    use std::time::Duration;

    /// A notify job for `target`, of delivery `delivery`.
    fn notify(target: &str, delivery: &str) -> NewJob {
        NewJob {
            kind: JobKind::Notify,
            target: target.into(),
            key: None,
            source: "acme".into(),
            event: None,
            delivery: delivery.into(),
            rule: "r".into(),
            action: 0,
            body: b"{}".to_vec(),
            headers: Vec::new(),
            sign_with: None,
        }
    }

    /// A read's statements share one snapshot: with enqueues going on, the pending total and its
    /// breakdown by target always agree.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_reads_statements_see_one_snapshot() {
        let dir = tempfile::tempdir().unwrap();
        let q = Arc::new(SqliteQueue::open(dir.path()).unwrap());
        let writer = tokio::spawn({
            let q = q.clone();
            async move {
                for i in 0..2_000 {
                    let job = notify(&format!("t{}", i % 3), &format!("d-{i}"));
                    q.enqueue(vec![job]).await.unwrap();
                }
            }
        });
        let mut reads = 0;
        while !writer.is_finished() || reads == 0 {
            let s = q.stats().await.unwrap();
            let by_target: u64 = s.pending_by_target.iter().map(|(_, n)| n).sum();
            assert_eq!(s.pending, by_target, "read {reads}");
            reads += 1;
        }
        writer.await.unwrap();
    }

    /// A job stored while pruning is under way may be given the id of the newest job pruned: it must
    /// not inherit that job's attempts (they go in the same step as their job).
    #[tokio::test]
    async fn a_job_given_a_pruned_jobs_id_has_no_attempts_of_it() {
        use crate::queue::Attempt;
        let dir = tempfile::tempdir().unwrap();
        let q = SqliteQueue::open(dir.path()).unwrap();
        let job = || notify("t", "d");
        let minute = Duration::from_secs(60);
        let id = q.enqueue(vec![job()]).await.unwrap()[0];
        let claimed = q.claim("t", ClaimLimits::NONE, 1, minute).await.unwrap();
        let failed = Attempt {
            attempt: 1,
            started_at: crate::clock::now_ms(),
            duration_ms: 1,
            status: Some(500),
            error: Some("the old job's failure".into()),
        };
        q.settle(claimed[0].lease(), Some(failed), Settle::DeadLetter)
            .await
            .unwrap();
        let before = crate::clock::now_ms() + 60_000;
        let below = q.call(|r| super::Op::PruneFrom(before, r)).await.unwrap();
        let pruned = q.call(|r| super::Op::PruneJobs(before, below, r)).await;
        assert_eq!(pruned.unwrap(), 1);
        let again = q.enqueue(vec![job()]).await.unwrap();
        assert_eq!(again, vec![id], "the id is given again");
        q.call(|r| super::Op::Prune(before, r)).await.unwrap();
        let (_, attempts) = q.get(id).await.unwrap();
        assert!(attempts.is_empty(), "{attempts:?}");
    }

    /// A read that takes long (a long listing) holds back neither accepts, nor claims, nor
    /// settles: it has a connection and a thread of its own. Here the reads' connection is held busy
    /// while the writes go through; the read answers once it is free.
    #[tokio::test]
    async fn a_slow_read_holds_back_no_write() {
        let dir = tempfile::tempdir().unwrap();
        let q = Arc::new(SqliteQueue::open(dir.path()).unwrap());
        let (busy, free) = std::sync::mpsc::channel::<()>();
        let (held, hold) = std::sync::mpsc::channel::<()>();
        let reader = q.reader.clone();
        let holder = std::thread::spawn(move || {
            let _conn = reader.lock().unwrap();
            held.send(()).unwrap();
            free.recv().unwrap();
        });
        hold.recv().unwrap();
        let stats = tokio::spawn({
            let q = q.clone();
            async move { q.stats().await }
        });

        let job = notify("t", "d-1");
        let minute = Duration::from_secs(60);
        let seen = Some(("acme".to_string(), "d-1".to_string()));
        let accepted = q.accept(seen, minute, vec![job]).await.unwrap();
        assert!(matches!(accepted, Accepted::Enqueued(_)), "{accepted:?}");
        let claimed = q.claim("t", ClaimLimits::NONE, 1, minute).await.unwrap();
        assert_eq!(claimed.len(), 1);
        q.settle(claimed[0].lease(), None, Settle::Ack)
            .await
            .unwrap();
        assert!(!stats.is_finished(), "the read waits for its connection");

        busy.send(()).unwrap();
        holder.join().unwrap();
        stats.await.unwrap().unwrap();
        // A read sees every write answered before it was asked, committed or not yet.
        let stats = q.stats().await.unwrap();
        assert_eq!((stats.pending, stats.inflight, stats.done), (0, 0, 1));
    }

    #[test]
    fn the_wal_is_synced_through_the_file_its_path_names_now() {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("hookgate.db");
        let mut wal = Wal::new(&db);
        let error = wal.sync().unwrap_err();
        assert_eq!(
            error.kind(),
            std::io::ErrorKind::NotFound,
            "no WAL yet: {error}"
        );
        std::fs::write(dir.path().join("hookgate.db-wal"), b"one").unwrap();
        wal.sync().unwrap();
        let first = wal.file.as_ref().unwrap().1;
        wal.sync().unwrap();
        assert_eq!(wal.file.as_ref().unwrap().1, first, "the open file is kept");
        // Replaced (never by SQLite while the queue holds its connection, but a descriptor of a file
        // no longer there would sync nothing that matters): the new file is opened.
        let keep = std::fs::File::open(dir.path().join("hookgate.db-wal")).unwrap();
        std::fs::remove_file(dir.path().join("hookgate.db-wal")).unwrap();
        std::fs::write(dir.path().join("hookgate.db-wal"), b"two").unwrap();
        wal.sync().unwrap();
        assert_ne!(wal.file.as_ref().unwrap().1, first);
        drop(keep);
    }

    #[test]
    fn large_compressible_bodies_are_stored_compressed_and_come_back() {
        let body = br#"{"ref":"refs/heads/main","repository":{"full_name":"acme/app"}}"#.repeat(20);
        let (stored, encoding) = encode_body(Some(&body));
        let stored = stored.unwrap().into_owned();
        assert_eq!(encoding, Some("lz4"));
        assert!(stored.len() < body.len() / 4, "{} bytes", stored.len());
        assert_eq!(
            decode_body("r", Some(stored), encoding, body.len() as i64),
            Some(body)
        );
    }

    #[test]
    fn small_or_incompressible_bodies_are_stored_as_received() {
        let small = b"{}".to_vec();
        assert_eq!(encode_body(Some(&small)), (Some(small[..].into()), None));
        let mut rng = fastrand::Rng::with_seed(1);
        let noise: Vec<u8> = (0..2048).map(|_| rng.u8(..)).collect();
        assert_eq!(encode_body(Some(&noise)), (Some(noise[..].into()), None));
        assert_eq!(encode_body(None), (None, None));
        assert_eq!(
            decode_body("r", Some(noise.clone()), None, 2048),
            Some(noise)
        );
    }

    #[test]
    fn a_damaged_stored_body_is_dropped_not_a_panic_or_a_huge_allocation() {
        let body = b"abcdefgh".repeat(200);
        let size = body.len() as i64;
        let (stored, _) = encode_body(Some(&body));
        let stored = stored.unwrap().into_owned();
        let lz4 = Some("lz4");
        // Cut short, garbage after the size, a size of 4 GiB, a size above the record's, a size
        // larger than the data holds, no size at all, an unknown encoding.
        let cut = stored[..stored.len() / 2].to_vec();
        assert_eq!(decode_body("r", Some(cut), lz4, size), None);
        let mut garbage = stored[..4].to_vec();
        garbage.extend([0xff; 64]);
        assert_eq!(decode_body("r", Some(garbage), lz4, size), None);
        let mut huge = u32::MAX.to_le_bytes().to_vec();
        huge.extend(&stored[4..]);
        assert_eq!(decode_body("r", Some(huge), lz4, i64::MAX), None);
        assert_eq!(decode_body("r", Some(stored.clone()), lz4, size - 1), None);
        let mut longer = (body.len() as u32 + 10).to_le_bytes().to_vec();
        longer.extend(&stored[4..]);
        assert_eq!(decode_body("r", Some(longer), lz4, size + 10), None);
        assert_eq!(decode_body("r", Some(vec![1, 2]), lz4, size), None);
        assert_eq!(
            decode_body("r", Some(stored.clone()), Some("zstd"), size),
            None
        );
        assert_eq!(decode_body("r", Some(stored), lz4, size), Some(body));
    }
}
