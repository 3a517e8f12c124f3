//! The durable queue of deliveries: what the server hands planned actions to, and what the
//! dispatcher claims work from.
//!
//! [`QueueBackend`] is the contract every backend keeps: `enqueue` returns only once the jobs are
//! durable (the server answers 202 after it), `claim` hands out due jobs with a visibility timeout,
//! and every job ends acknowledged or dead-lettered — never silently dropped. `sqlite` is the embedded
//! default.

pub mod sqlite;

use std::future::Future;
use std::time::Duration;

use serde::{Deserialize, Serialize};

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

#[derive(Debug, thiserror::Error)]
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
    fn accept(
        &self,
        seen: Option<(String, String)>,
        window: Duration,
        jobs: Vec<NewJob>,
    ) -> impl Future<Output = Result<Accepted, QueueError>> + Send;

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
    fn claim(
        &self,
        target: &str,
        limit: usize,
        visibility: Duration,
    ) -> impl Future<Output = Result<Vec<Job>, QueueError>> + Send;

    /// Records an attempt and settles the job.
    fn settle(
        &self,
        id: i64,
        attempt: Option<Attempt>,
        settle: Settle,
    ) -> impl Future<Output = Result<(), QueueError>> + Send;

    /// Puts a dead job back to pending with its attempts reset.
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
}

/// Milliseconds since the Unix epoch.
pub(crate) fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}
