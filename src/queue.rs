//! The durable queue of deliveries: what the server hands planned actions to, and what the
//! dispatcher claims work from.
//!
//! [`QueueBackend`] is the contract every backend keeps: `enqueue` returns only once the jobs are
//! durable (the server answers 202 after it), `claim` hands out due jobs as leases with a visibility
//! timeout, within the target's concurrency and rate, and every job ends acknowledged or
//! dead-lettered — never silently dropped. `sqlite` is the embedded default; `postgres` is shared by
//! several gateway replicas. [`Queue`] holds either (the trait is not object-safe).

pub mod postgres;
pub mod sqlite;

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::delivery_log::{Filter, Record, TargetStats};

use crate::ruleset::Rate;

/// What a job does when delivered.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum JobKind {
    Notify,
    Check,
    Forward,
}

impl JobKind {
    pub fn as_str(self) -> &'static str {
        match self {
            JobKind::Notify => "notify",
            JobKind::Check => "check",
            JobKind::Forward => "forward",
        }
    }

    pub fn parse(s: &str) -> Option<JobKind> {
        Some(match s {
            "notify" => JobKind::Notify,
            "check" => JobKind::Check,
            "forward" => JobKind::Forward,
            _ => return None,
        })
    }
}

/// Where a job is in its life.
///
/// ```text
/// pending ──claim──▶ inflight ──2xx──▶ done
///    ▲                  │ retryable failure, attempts left: run_at = now + backoff
///    └──────────────────┤
///    ▲                  │ permanent failure, or attempts spent
///    └──requeue── dead ◀┘
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum JobState {
    Pending,
    Inflight,
    Done,
    Dead,
}

impl JobState {
    pub fn as_str(self) -> &'static str {
        match self {
            JobState::Pending => "pending",
            JobState::Inflight => "inflight",
            JobState::Done => "done",
            JobState::Dead => "dead",
        }
    }

    pub fn parse(s: &str) -> Option<JobState> {
        Some(match s {
            "pending" => JobState::Pending,
            "inflight" => JobState::Inflight,
            "done" => JobState::Done,
            "dead" => JobState::Dead,
            _ => return None,
        })
    }
}

/// A job to enqueue: one action of one matching rule for one delivery.
#[derive(Debug, Clone, PartialEq)]
pub struct NewJob {
    pub kind: JobKind,
    /// The target's name; its URL, headers and policy are looked up in the current rules at delivery.
    pub target: String,
    /// `check` only: jobs with the same (target, key) coalesce while pending.
    pub key: Option<String>,
    pub source: String,
    pub event: Option<String>,
    /// The delivery id: the provider's, or one the gateway assigned.
    pub delivery: String,
    pub rule: String,
    /// The action's position in its rule.
    pub action: u32,
    /// The request body (never containing a secret).
    pub body: Vec<u8>,
    /// Headers to send besides the target's (content type; for `forward`, the provider's headers).
    pub headers: Vec<(String, String)>,
    /// `forward ... sign with SECRET`: the secret's name (its value stays in the rules).
    pub sign_with: Option<String>,
}

/// A stored job.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Job {
    pub id: i64,
    pub kind: JobKind,
    pub target: String,
    pub key: Option<String>,
    pub source: String,
    pub event: Option<String>,
    pub delivery: String,
    pub rule: String,
    pub action: u32,
    #[serde(skip)]
    pub body: Vec<u8>,
    pub headers: Vec<(String, String)>,
    pub sign_with: Option<String>,
    pub state: JobState,
    /// Delivery attempts made so far.
    pub attempts: u32,
    /// How many requests this job stands for (checks coalesce).
    pub coalesced: u32,
    /// Unix milliseconds: when the job is due.
    pub run_at: i64,
    pub created_at: i64,
    pub updated_at: i64,
    pub last_status: Option<u16>,
    pub last_error: Option<String>,
    /// The token of the job's latest claim; only that claim's holder can settle it (see [`Lease`]).
    /// PostgreSQL counts the job's claims; SQLite draws tokens from one counter that never repeats
    /// (a claim is answered before its commit, so a count could hand a rolled-back token out again).
    pub lease: i64,
    /// `attempts` when it was last re-queued: its retries are counted from here, while attempt numbers
    /// keep rising (so every attempt stays on record).
    pub retry_base: u32,
}

impl Job {
    /// The claim this job was handed out under; settle with it.
    pub fn lease(&self) -> Lease {
        Lease {
            id: self.id,
            token: self.lease,
        }
    }
}

/// A claim on a job: its id and the claim's token. A claim whose visibility timeout expired may be
/// handed to someone else, which makes a new token; a settle with the old one is then refused
/// ([`QueueError::LeaseLost`]), so a late worker cannot overwrite the new holder's outcome.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
pub struct Lease {
    pub id: i64,
    pub token: i64,
}

/// A target's limits, which `claim` enforces across everything sharing the queue (all replicas).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClaimLimits {
    /// Jobs of the target in flight at once: claims not yet settled and not expired.
    pub concurrency: u32,
    /// Claims per period: a token bucket of `count` tokens refilled over `per`, kept in the queue.
    pub rate: Option<Rate>,
}

impl ClaimLimits {
    /// No limit (jobs of a target the rules no longer have, claimed to be dead-lettered).
    pub const NONE: ClaimLimits = ClaimLimits {
        concurrency: u32::MAX,
        rate: None,
    };
}

/// One delivery attempt, as recorded.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Attempt {
    pub attempt: u32,
    /// Unix milliseconds.
    pub started_at: i64,
    pub duration_ms: u64,
    /// The HTTP status, when a response arrived.
    pub status: Option<u16>,
    /// What went wrong (never a secret, never a response body).
    pub error: Option<String>,
}

/// What happened to a job after an attempt.
#[derive(Debug, Clone, PartialEq)]
pub enum Settle {
    /// Delivered (2xx).
    Ack,
    /// Failed, try again after `delay`.
    Retry { delay: Duration },
    /// Failed for good: keep it, visible and re-queueable.
    DeadLetter,
    /// Not attempted (shutdown): back to pending as it was.
    Release,
}

/// Counts for `/metrics` and `/status`.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Stats {
    pub pending: u64,
    pub inflight: u64,
    pub done: u64,
    pub dead: u64,
    /// Pending jobs per target.
    pub pending_by_target: Vec<(String, u64)>,
}

#[derive(Debug, Clone, thiserror::Error)]
pub enum QueueError {
    #[error("queue storage error: {0}")]
    Storage(String),
    #[error("the queue is closed")]
    Closed,
    #[error("another gateway is using the data directory `{dir}`{}", if holder.is_empty() { String::new() } else { format!(" (process {holder})") })]
    Locked { dir: String, holder: String },
    #[error("the queue database `{path}` is damaged: {detail}")]
    Damaged { path: String, detail: String },
    #[error("no job {0}")]
    NoSuchJob(i64),
    #[error("job {0} is {1}, not dead; only dead jobs can be requeued")]
    NotDead(i64, String),
    #[error("job {0} was claimed again after this claim expired; its outcome is dropped")]
    LeaseLost(i64),
}

/// The result of [`QueueBackend::accept`].
#[derive(Debug, Clone, PartialEq)]
pub enum Accepted {
    /// The delivery id was seen within the window: nothing was enqueued.
    Duplicate,
    /// The jobs' ids (empty when the delivery matched nothing).
    Enqueued(Vec<i64>),
}

/// A durable queue of jobs.
pub trait QueueBackend: Send + Sync + 'static {
    /// Records a delivery and enqueues its jobs in one durable step. With `seen = Some((source,
    /// delivery id))`, a delivery already recorded within `window` is a duplicate: nothing is enqueued.
    /// With a `record`, the delivery log's record of it is stored in the same step (as accepted, with
    /// its actions' job ids), so an accepted delivery is never without its record.
    fn accept_recorded(
        &self,
        seen: Option<(String, String)>,
        window: Duration,
        jobs: Vec<NewJob>,
        record: Option<Arc<Record>>,
    ) -> impl Future<Output = Result<Accepted, QueueError>> + Send;

    /// [`QueueBackend::accept_recorded`] without a record.
    fn accept(
        &self,
        seen: Option<(String, String)>,
        window: Duration,
        jobs: Vec<NewJob>,
    ) -> impl Future<Output = Result<Accepted, QueueError>> + Send {
        self.accept_recorded(seen, window, jobs, None)
    }

    /// Stores jobs; returns their ids once they are durable. A `check` whose (target, key) already has
    /// a pending job merges into it (returning that job's id) instead of adding one.
    fn enqueue(
        &self,
        jobs: Vec<NewJob>,
    ) -> impl Future<Output = Result<Vec<i64>, QueueError>> + Send;

    /// Targets with pending jobs, and when the earliest of them is due (unix ms).
    fn due_targets(&self) -> impl Future<Output = Result<Vec<(String, i64)>, QueueError>> + Send;

    /// Claims up to `limit` due jobs of `target` (oldest first), marking them in flight for
    /// `visibility`; a check is not claimed while another check of its (target, key) is in flight.
    /// Claims never take the target past `limits`: no more than `concurrency` unexpired claims at
    /// once, and no more than its rate's tokens, counted over everyone sharing the queue.
    fn claim(
        &self,
        target: &str,
        limits: ClaimLimits,
        limit: usize,
        visibility: Duration,
    ) -> impl Future<Output = Result<Vec<Job>, QueueError>> + Send;

    /// Records an attempt and settles the job. Refused with [`QueueError::LeaseLost`] (recording
    /// nothing) when the job was claimed again since `lease`.
    fn settle(
        &self,
        lease: Lease,
        attempt: Option<Attempt>,
        settle: Settle,
    ) -> impl Future<Output = Result<(), QueueError>> + Send;

    /// Settles several jobs at once (one round trip, one commit); each gets its own answer, in order.
    fn settle_many(
        &self,
        settles: Vec<(Lease, Option<Attempt>, Settle)>,
    ) -> impl Future<Output = Vec<Result<(), QueueError>>> + Send;

    /// Whether several processes share this queue (replicas on PostgreSQL): then a target's
    /// concurrency must be counted in the queue, and a claim may take no more than the free slots.
    fn shared(&self) -> bool {
        false
    }

    /// Puts a dead job back to pending with a fresh retry budget (its attempts stay on record).
    fn requeue(&self, id: i64) -> impl Future<Output = Result<(), QueueError>> + Send;

    /// Jobs in a state, newest first.
    fn list(
        &self,
        state: JobState,
        limit: usize,
    ) -> impl Future<Output = Result<Vec<Job>, QueueError>> + Send;

    /// One job and its attempts.
    fn get(&self, id: i64) -> impl Future<Output = Result<(Job, Vec<Attempt>), QueueError>> + Send;

    fn stats(&self) -> impl Future<Output = Result<Stats, QueueError>> + Send;

    /// Deletes done and dead jobs (and their attempts) last updated before `before` (unix ms).
    fn prune(&self, before: i64) -> impl Future<Output = Result<u64, QueueError>> + Send;

    /// Answers once the queue can serve a request (for readiness checks): cheap, whatever the
    /// queue's size, unlike `stats`.
    fn ping(&self) -> impl Future<Output = Result<(), QueueError>> + Send;

    /// Per target: pending and in-flight jobs, the oldest and the next due, and how its last attempts
    /// went (recorded as jobs settle).
    fn target_stats(&self) -> impl Future<Output = Result<Vec<TargetStats>, QueueError>> + Send;

    /// Stores delivery-log records (those not stored by `accept_recorded`); a record already stored is
    /// left as it is.
    fn store_records(
        &self,
        records: Vec<Arc<Record>>,
    ) -> impl Future<Output = Result<(), QueueError>> + Send;

    /// Stored records passing `filter`, newest first, at most `filter.limit`.
    fn list_records(
        &self,
        filter: Filter,
    ) -> impl Future<Output = Result<Vec<Record>, QueueError>> + Send;

    fn get_record(
        &self,
        id: String,
    ) -> impl Future<Output = Result<Option<Record>, QueueError>> + Send;

    /// Deletes records received before `before` (unix ms) and all but the newest `keep`.
    fn prune_records(
        &self,
        before: i64,
        keep: u64,
    ) -> impl Future<Output = Result<u64, QueueError>> + Send;

    /// Keeps the text of a rules version (its files, by name), so deliveries it judged can be
    /// explained after a restart; storing a version twice changes nothing.
    fn put_rules_version(
        &self,
        hash: String,
        files: crate::reload::Files,
    ) -> impl Future<Output = Result<(), QueueError>> + Send;

    /// A stored rules version's files as JSON (`[[name, text], ...]`, [`rules_version_json`]).
    fn get_rules_version(
        &self,
        hash: String,
    ) -> impl Future<Output = Result<Option<String>, QueueError>> + Send;
}

/// The queue the gateway runs on: the embedded SQLite queue or PostgreSQL shared by replicas.
pub enum Queue {
    Sqlite(sqlite::SqliteQueue),
    Postgres(postgres::PostgresQueue),
}

/// The longest check key stored as it was rendered. A key is any text a rule builds from the payload;
/// PostgreSQL's index of pending checks cannot hold an entry much over 2.7 KB, so a longer key is
/// stored as `sha256:<hex>` of itself on both backends (equal keys still coalesce).
pub const MAX_KEY: usize = 512;

/// A check key as it is stored: as rendered, or `sha256:<hex>` of it past [`MAX_KEY`] bytes.
/// `jobs_for` applies it (so a dry run shows what would be stored), and so does every enqueue.
pub fn stored_key(key: String) -> String {
    use sha2::{Digest, Sha256};
    if key.len() <= MAX_KEY {
        return key;
    }
    format!("sha256:{}", hex::encode(Sha256::digest(key.as_bytes())))
}

fn bounded_keys(mut jobs: Vec<NewJob>) -> Vec<NewJob> {
    for job in &mut jobs {
        if let Some(key) = job.key.take() {
            job.key = Some(stored_key(key));
        }
    }
    jobs
}

impl Queue {
    /// Opens the queue `spec` names: a `postgres://` (or `postgresql://`) URL, or a directory for the
    /// embedded SQLite queue.
    pub async fn open(spec: &str) -> Result<Queue, QueueError> {
        Queue::open_with(spec, &postgres::Options::default()).await
    }

    /// [`Queue::open`], with how to connect to PostgreSQL (its CA file); SQLite has no such options.
    pub async fn open_with(spec: &str, options: &postgres::Options) -> Result<Queue, QueueError> {
        if spec.starts_with("postgres://") || spec.starts_with("postgresql://") {
            return Ok(Queue::Postgres(
                postgres::PostgresQueue::open(spec, options).await?,
            ));
        }
        if let Some((scheme, _)) = spec.split_once("://") {
            return Err(QueueError::Storage(format!(
                "`{scheme}://` is not a queue this gateway knows\nhelp: give a `postgres://` URL, or a directory for the embedded SQLite queue"
            )));
        }
        Ok(Queue::Sqlite(sqlite::SqliteQueue::open(
            std::path::Path::new(spec),
        )?))
    }

    /// What it is, for logs: the SQLite file, or PostgreSQL's host and database (never a password).
    pub fn describe(&self) -> String {
        match self {
            Queue::Sqlite(q) => format!("sqlite {}", q.path().display()),
            Queue::Postgres(q) => q.describe(),
        }
    }

    /// Finishes what was sent and lets go of the storage: SQLite checkpoints its WAL into the database
    /// file and releases the data directory; PostgreSQL's connections close with the pool.
    pub async fn close(&self) -> Result<(), QueueError> {
        match self {
            Queue::Sqlite(q) => q.close().await,
            Queue::Postgres(_) => Ok(()),
        }
    }
}

macro_rules! delegate {
    ($self:ident, $q:ident => $call:expr) => {
        match $self {
            Queue::Sqlite($q) => $call.await,
            Queue::Postgres($q) => $call.await,
        }
    };
}

impl QueueBackend for Queue {
    async fn accept_recorded(
        &self,
        seen: Option<(String, String)>,
        window: Duration,
        jobs: Vec<NewJob>,
        record: Option<Arc<Record>>,
    ) -> Result<Accepted, QueueError> {
        let jobs = bounded_keys(jobs);
        delegate!(self, q => q.accept_recorded(seen, window, jobs, record))
    }

    async fn enqueue(&self, jobs: Vec<NewJob>) -> Result<Vec<i64>, QueueError> {
        let jobs = bounded_keys(jobs);
        delegate!(self, q => q.enqueue(jobs))
    }

    async fn due_targets(&self) -> Result<Vec<(String, i64)>, QueueError> {
        delegate!(self, q => q.due_targets())
    }

    async fn claim(
        &self,
        target: &str,
        limits: ClaimLimits,
        limit: usize,
        visibility: Duration,
    ) -> Result<Vec<Job>, QueueError> {
        delegate!(self, q => q.claim(target, limits, limit, visibility))
    }

    async fn settle(
        &self,
        lease: Lease,
        attempt: Option<Attempt>,
        settle: Settle,
    ) -> Result<(), QueueError> {
        delegate!(self, q => q.settle(lease, attempt, settle))
    }

    async fn settle_many(
        &self,
        settles: Vec<(Lease, Option<Attempt>, Settle)>,
    ) -> Vec<Result<(), QueueError>> {
        delegate!(self, q => q.settle_many(settles))
    }

    fn shared(&self) -> bool {
        matches!(self, Queue::Postgres(_))
    }

    async fn requeue(&self, id: i64) -> Result<(), QueueError> {
        delegate!(self, q => q.requeue(id))
    }

    async fn list(&self, state: JobState, limit: usize) -> Result<Vec<Job>, QueueError> {
        delegate!(self, q => q.list(state, limit))
    }

    async fn get(&self, id: i64) -> Result<(Job, Vec<Attempt>), QueueError> {
        delegate!(self, q => q.get(id))
    }

    async fn stats(&self) -> Result<Stats, QueueError> {
        delegate!(self, q => q.stats())
    }

    async fn prune(&self, before: i64) -> Result<u64, QueueError> {
        delegate!(self, q => q.prune(before))
    }

    async fn ping(&self) -> Result<(), QueueError> {
        delegate!(self, q => q.ping())
    }

    async fn target_stats(&self) -> Result<Vec<TargetStats>, QueueError> {
        delegate!(self, q => q.target_stats())
    }

    async fn store_records(&self, records: Vec<Arc<Record>>) -> Result<(), QueueError> {
        delegate!(self, q => q.store_records(records))
    }

    async fn list_records(&self, filter: Filter) -> Result<Vec<Record>, QueueError> {
        delegate!(self, q => q.list_records(filter))
    }

    async fn get_record(&self, id: String) -> Result<Option<Record>, QueueError> {
        delegate!(self, q => q.get_record(id))
    }

    async fn prune_records(&self, before: i64, keep: u64) -> Result<u64, QueueError> {
        delegate!(self, q => q.prune_records(before, keep))
    }

    async fn put_rules_version(
        &self,
        hash: String,
        files: crate::reload::Files,
    ) -> Result<(), QueueError> {
        delegate!(self, q => q.put_rules_version(hash, files))
    }

    async fn get_rules_version(&self, hash: String) -> Result<Option<String>, QueueError> {
        delegate!(self, q => q.get_rules_version(hash))
    }
}

/// A rules version's files as stored and returned by [`QueueBackend::get_rules_version`]: a JSON
/// array of `[name, text]` pairs, in load order.
pub fn rules_version_json(
    files: &[(String, Arc<str>)],
    out: impl std::io::Write,
) -> std::io::Result<()> {
    let files: Vec<(&str, &str)> = files.iter().map(|(n, t)| (n.as_str(), &**t)).collect();
    serde_json::to_writer(out, &files).map_err(std::io::Error::other)
}
