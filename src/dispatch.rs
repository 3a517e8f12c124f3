//! Delivers queued jobs: claims due work per target, sends it, retries with backoff, dead-letters.
//!
//! One scheduling loop decides, per target, how much to claim: no more than the target's free
//! concurrency slots, its rate-limit tokens, and the global cap on deliveries in flight. Each claimed
//! job is delivered on its own task, so a slow target only ever occupies its own slots and never
//! starves the others. Retries are persisted (`run_at` in the queue), never in-memory sleeps, so a
//! restart loses nothing: jobs in flight at a crash are claimed again (at-least-once).
//!
//! Shutdown stops claiming, lets in-flight deliveries finish for a grace period, and returns the rest
//! to pending.

mod http;
mod jobs;

pub use jobs::jobs_for;

use std::collections::{HashMap, VecDeque};
use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use tokio::sync::{Notify, mpsc, oneshot};
use tokio::task::JoinSet;

use crate::clock::now_ms;
use crate::queue::{Attempt, ClaimLimits, Job, Lease, QueueBackend, Settle};
use crate::ruleset::{Rate, RuleSet, Target};

/// Runtime knobs of the dispatcher (flags of `gateway serve`, not rules-file settings).
#[derive(Debug, Clone)]
pub struct DispatchConfig {
    /// Deliveries in flight across all targets.
    pub max_inflight: usize,
    /// How long shutdown waits for in-flight deliveries.
    pub grace: Duration,
    /// Done and dead jobs older than this are deleted.
    pub retention: Duration,
    /// Longest wait between scheduling passes when nothing wakes the loop.
    pub tick: Duration,
    /// A claim lasts three target timeouts plus this: the time a claimed job may wait in the buffer
    /// and a slow settle may take. When a replica dies, its claims pass to another after this long.
    pub lease_margin: Duration,
}

impl Default for DispatchConfig {
    fn default() -> Self {
        DispatchConfig {
            max_inflight: 256,
            grace: Duration::from_secs(10),
            retention: Duration::from_secs(7 * 24 * 3600),
            tick: Duration::from_secs(1),
            lease_margin: Duration::from_secs(60),
        }
    }
}

/// The most jobs claimed for one target in one pass.
const CLAIM_BATCH: usize = 128;
/// The shortest time between two reads of which targets are due.
const MIN_REFRESH_GAP: Duration = Duration::from_millis(20);
/// The longest `Retry-After` honoured.
const MAX_RETRY_AFTER: Duration = Duration::from_secs(3600);

/// Shared pieces a delivery task needs.
struct Shared<Q> {
    queue: Arc<Q>,
    client: reqwest::Client,
    /// Outcomes for the settler, which writes them in batches (see [`settler`]).
    settles: mpsc::UnboundedSender<Outcome>,
}

/// Delivers jobs from `queue` to the targets of the current rules.
pub struct Dispatcher<Q> {
    shared: Arc<Shared<Q>>,
    /// The settler's end of `shared.settles`, taken by `run`.
    settled: std::sync::Mutex<Option<mpsc::UnboundedReceiver<Outcome>>>,
    rules: Arc<ArcSwap<RuleSet>>,
    wake: Arc<Notify>,
    config: DispatchConfig,
}

/// Per-target scheduling state.
#[derive(Default)]
struct TargetState {
    inflight: usize,
    bucket: Option<Bucket>,
    /// Claimed jobs waiting for a free slot or a rate token: claiming ahead in batches keeps the
    /// queue's round trips off the per-delivery path.
    ready: VecDeque<Job>,
    /// The last claim found nothing more due; set until something new is enqueued or the tick passes.
    exhausted: bool,
}

/// A token bucket: `rate.count` tokens, refilled continuously over `rate.per`.
struct Bucket {
    rate: Rate,
    tokens: f64,
    at: Instant,
}

impl Bucket {
    fn new(rate: Rate) -> Bucket {
        Bucket {
            rate,
            tokens: rate.count as f64,
            at: Instant::now(),
        }
    }

    fn refill(&mut self, now: Instant) {
        let per_ms = self.rate.count as f64 / self.rate.per.as_millis().max(1) as f64;
        let elapsed = now.saturating_duration_since(self.at).as_millis() as f64;
        self.tokens = (self.tokens + elapsed * per_ms).min(self.rate.count as f64);
        self.at = now;
    }

    fn available(&self) -> usize {
        self.tokens.floor() as usize
    }

    /// How long until one more token.
    fn next_token_in(&self) -> Duration {
        let per_ms = self.rate.count as f64 / self.rate.per.as_millis().max(1) as f64;
        Duration::from_millis(((1.0 - self.tokens.fract()) / per_ms).ceil() as u64)
    }
}

impl<Q: QueueBackend> Dispatcher<Q> {
    pub fn new(
        queue: Arc<Q>,
        rules: Arc<ArcSwap<RuleSet>>,
        config: DispatchConfig,
    ) -> Dispatcher<Q> {
        let client = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            // Retries are the dispatcher's, each an attempt on record with its backoff. reqwest's own
            // (of HTTP/2 refused streams) would also copy every request's headers in case it retries:
            // with no retry allowed, nothing is copied.
            .retry(reqwest::retry::never().max_retries_per_request(0))
            .connect_timeout(Duration::from_secs(5))
            .pool_idle_timeout(Duration::from_secs(60))
            .user_agent(concat!("hookgate/", env!("CARGO_PKG_VERSION")))
            .build()
            .unwrap_or_else(|e| panic!("the HTTP client cannot start: {e}"));
        let (settles, settled) = mpsc::unbounded_channel();
        Dispatcher {
            shared: Arc::new(Shared {
                queue,
                client,
                settles,
            }),
            settled: std::sync::Mutex::new(Some(settled)),
            rules,
            wake: Arc::new(Notify::new()),
            config,
        }
    }

    /// Notify it after enqueueing, so new jobs go out without waiting for the next tick.
    pub fn waker(&self) -> Arc<Notify> {
        self.wake.clone()
    }

    /// Runs until `shutdown` completes, then drains as described in the module docs.
    pub async fn run(self, shutdown: impl Future<Output = ()>) {
        tokio::pin!(shutdown);
        let (stop_settler, settler_stop) = oneshot::channel();
        let settled = self
            .settled
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take()
            .unwrap_or_else(|| unreachable!("`run` takes the dispatcher by value"));
        let settler = tokio::spawn(settler(
            self.shared.queue.clone(),
            settled,
            settler_stop,
            self.wake.clone(),
        ));
        let mut targets: HashMap<String, TargetState> = HashMap::new();
        let mut tasks: JoinSet<(String, i64)> = JoinSet::new();
        let mut running: HashMap<tokio::task::Id, (String, Lease)> = HashMap::new();
        let mut last_prune = Instant::now() - Duration::from_secs(3600);
        let mut pruning: Option<tokio::task::JoinHandle<()>> = None;
        let mut refresh = true;
        let mut last_refresh = Instant::now();
        loop {
            let rules = self.rules.load_full();
            let mut sleep = self.config.tick;
            // Every enqueue wakes the loop; under a stream of them, ask the queue at most every
            // MIN_REFRESH_GAP, so the queue's thread serves requests, not the scheduler.
            let since = last_refresh.elapsed();
            if (refresh && since >= MIN_REFRESH_GAP) || since >= self.config.tick {
                sleep = self.refresh(&rules, &mut targets).await;
                last_refresh = Instant::now();
                refresh = false;
            } else if refresh {
                sleep = MIN_REFRESH_GAP - since;
            }
            sleep = sleep.min(self.start_ready(&rules, &mut targets, &mut tasks, &mut running));
            // Refill buffers running low; start what that brought.
            if self.refill(&rules, &mut targets).await {
                sleep = sleep.min(self.start_ready(&rules, &mut targets, &mut tasks, &mut running));
            }
            // Pruning (in steps, with the queue's other work between them) runs beside the loop,
            // one at a time, never holding back claims and completions.
            if last_prune.elapsed() > Duration::from_secs(600)
                && pruning.as_ref().is_none_or(|p| p.is_finished())
            {
                last_prune = Instant::now();
                let before = now_ms() - self.config.retention.as_millis() as i64;
                let queue = self.shared.queue.clone();
                pruning = Some(tokio::spawn(async move {
                    match queue.prune(before).await {
                        Ok(n) if n > 0 => tracing::info!(jobs = n, "pruned old delivery records"),
                        Ok(_) => {}
                        Err(e) => tracing::warn!(error = %e, "pruning delivery records failed"),
                    }
                }));
            }
            tokio::select! {
                biased;
                () = &mut shutdown => break,
                Some(done) = tasks.join_next_with_id() => {
                    finished(done, &mut running, &mut targets);
                    // Take every other completion that is ready too, so one pass serves them all.
                    while let Some(done) = tasks.try_join_next_with_id() {
                        finished(done, &mut running, &mut targets);
                    }
                }
                () = self.wake.notified() => refresh = true,
                () = tokio::time::sleep(sleep) => {}
            }
        }
        if let Some(p) = pruning {
            p.abort(); // Between two steps: each is whole.
        }
        let unstarted: Vec<Lease> = targets
            .values_mut()
            .flat_map(|t| t.ready.drain(..))
            .map(|j| j.lease())
            .collect();
        self.drain(tasks, running, unstarted).await;
        // Every delivery has finished or been aborted: write the outcomes still waiting.
        let _ = stop_settler.send(());
        let _ = settler.await;
    }

    /// Asks the queue which targets have due work; clears their `exhausted` mark. Returns how long the
    /// loop may sleep before the earliest not-yet-due job.
    async fn refresh(
        &self,
        rules: &Arc<RuleSet>,
        targets: &mut HashMap<String, TargetState>,
    ) -> Duration {
        let mut sleep = self.config.tick;
        let due = match self.shared.queue.due_targets().await {
            Ok(due) => due,
            Err(e) => {
                tracing::error!(error = %e, "cannot read the queue");
                return sleep;
            }
        };
        let now = now_ms();
        for (name, run_at) in due {
            if run_at > now {
                sleep = sleep.min(Duration::from_millis((run_at - now) as u64));
                continue;
            }
            if rules.target(&name).is_none() {
                self.orphaned(&name).await;
                continue;
            }
            targets.entry(name).or_default().exhausted = false;
        }
        sleep
    }

    /// Claims more for targets whose buffers run low. Returns whether anything was claimed.
    async fn refill(
        &self,
        rules: &Arc<RuleSet>,
        targets: &mut HashMap<String, TargetState>,
    ) -> bool {
        let mut claimed_any = false;
        for (name, state) in targets.iter_mut() {
            let Some(target) = rules.target(name) else {
                continue;
            };
            let capacity = (target.concurrency as usize * 2).min(CLAIM_BATCH);
            if state.exhausted || state.ready.len() * 2 > capacity {
                continue;
            }
            let shared = self.shared.queue.shared();
            let mut want = capacity - state.ready.len();
            if shared {
                // The queue holds the target's concurrency across replicas, counting claimed jobs as
                // in flight until settled: ask for no more than the free slots, and while a quarter of
                // them is still busy or buffered, wait for more to free up, so one claim serves
                // several finished deliveries.
                want = want.min(
                    (target.concurrency as usize)
                        .saturating_sub(state.inflight + state.ready.len()),
                );
                let busy = state.inflight + state.ready.len();
                if want == 0 || (busy > 0 && want < (target.concurrency as usize / 4).max(1)) {
                    continue;
                }
            }
            if let Some(rate) = target.rate {
                // A rate-limited target claims only what its tokens let start now: a buffered job
                // waiting minutes for a token would outlive its claim.
                let bucket = state.bucket.get_or_insert_with(|| Bucket::new(rate));
                bucket.refill(Instant::now());
                want = want.min(bucket.available().saturating_sub(state.ready.len()));
                if want == 0 {
                    continue;
                }
            }
            // INVARIANT: at most two waves of `concurrency` wait in the buffer before a job starts, and
            // its delivery takes at most `timeout`; the claim must outlast all three.
            let visibility = target.timeout * 3 + self.config.lease_margin;
            // Alone on its queue, the dispatcher holds the concurrency itself and claims ahead.
            let limits = ClaimLimits {
                concurrency: if shared { target.concurrency } else { u32::MAX },
                rate: target.rate,
            };
            match self
                .shared
                .queue
                .claim(name, limits, want, visibility)
                .await
            {
                Ok(jobs) => {
                    state.exhausted = jobs.len() < want;
                    claimed_any |= !jobs.is_empty();
                    state.ready.extend(jobs);
                }
                Err(e) => {
                    state.exhausted = true;
                    tracing::error!(target = %name, error = %e, "cannot claim jobs");
                }
            }
        }
        claimed_any
    }

    /// Starts buffered jobs as far as concurrency, rate limits and the global cap allow. Returns how
    /// long until a rate-limited target gets its next token (or the tick).
    fn start_ready(
        &self,
        rules: &Arc<RuleSet>,
        targets: &mut HashMap<String, TargetState>,
        tasks: &mut JoinSet<(String, i64)>,
        running: &mut HashMap<tokio::task::Id, (String, Lease)>,
    ) -> Duration {
        let mut sleep = self.config.tick;
        let now = Instant::now();
        for (name, state) in targets.iter_mut() {
            if state.ready.is_empty() {
                continue;
            }
            let Some(target) = rules.target(name) else {
                // Removed by a reload while buffered: the next refresh dead-letters them.
                for job in state.ready.drain(..) {
                    let queue = self.shared.queue.clone();
                    tokio::spawn(
                        async move { queue.settle(job.lease(), None, Settle::Release).await },
                    );
                }
                continue;
            };
            match (target.rate, &mut state.bucket) {
                (Some(rate), Some(b)) if b.rate == rate => {}
                (Some(rate), bucket) => *bucket = Some(Bucket::new(rate)),
                (None, bucket) => *bucket = None,
            }
            let global_free = self.config.max_inflight.saturating_sub(running.len());
            let mut n = (target.concurrency as usize)
                .saturating_sub(state.inflight)
                .min(global_free)
                .min(state.ready.len());
            if let Some(bucket) = &mut state.bucket {
                bucket.refill(now);
                if bucket.available() < n {
                    sleep = sleep.min(bucket.next_token_in());
                }
                n = n.min(bucket.available());
            }
            for job in state.ready.drain(..n) {
                if let Some(bucket) = &mut state.bucket {
                    bucket.tokens -= 1.0;
                }
                state.inflight += 1;
                let lease = job.lease();
                let handle = tasks.spawn(deliver(self.shared.clone(), rules.clone(), job));
                running.insert(handle.id(), (name.clone(), lease));
            }
        }
        sleep
    }

    /// Jobs for a target the current rules no longer have are dead-lettered, visibly.
    async fn orphaned(&self, name: &str) {
        let jobs = match self
            .shared
            .queue
            .claim(
                name,
                ClaimLimits::NONE,
                CLAIM_BATCH,
                Duration::from_secs(60),
            )
            .await
        {
            Ok(jobs) => jobs,
            Err(e) => {
                tracing::error!(target = %name, error = %e, "cannot claim jobs");
                return;
            }
        };
        for job in jobs {
            let attempt = Attempt {
                attempt: job.attempts + 1,
                started_at: now_ms(),
                duration_ms: 0,
                status: None,
                error: Some(format!("target `{name}` is not in the current rules")),
            };
            tracing::warn!(job = job.id, target = %name, "dead-lettered: the target is not in the current rules");
            if let Err(e) = self
                .shared
                .queue
                .settle(job.lease(), Some(attempt), Settle::DeadLetter)
                .await
            {
                tracing::error!(job = job.id, error = %e, "cannot settle job");
            }
        }
    }

    async fn drain(
        &self,
        mut tasks: JoinSet<(String, i64)>,
        mut running: HashMap<tokio::task::Id, (String, Lease)>,
        unstarted: Vec<Lease>,
    ) {
        for lease in unstarted {
            if let Err(e) = self.shared.queue.settle(lease, None, Settle::Release).await {
                tracing::error!(job = lease.id, error = %e, "cannot release job; it returns when its claim expires");
            }
        }
        let deadline = tokio::time::sleep(self.config.grace);
        tokio::pin!(deadline);
        while !tasks.is_empty() {
            tokio::select! {
                Some(done) = tasks.join_next_with_id() => {
                    match done {
                        Ok((id, _)) => running.remove(&id),
                        Err(e) => running.remove(&e.id()),
                    };
                }
                () = &mut deadline => break,
            }
        }
        tasks.abort_all();
        while tasks.join_next().await.is_some() {}
        for (_, (target, lease)) in running {
            tracing::info!(job = lease.id, target = %target, "shutdown: returned an unfinished delivery to the queue");
            if let Err(e) = self.shared.queue.settle(lease, None, Settle::Release).await {
                tracing::error!(job = lease.id, error = %e, "cannot release job; it returns when its claim expires");
            }
        }
    }
}

/// Books a finished delivery task.
fn finished(
    done: Result<(tokio::task::Id, (String, i64)), tokio::task::JoinError>,
    running: &mut HashMap<tokio::task::Id, (String, Lease)>,
    targets: &mut HashMap<String, TargetState>,
) {
    let id = match &done {
        Ok((id, _)) => *id,
        Err(e) => e.id(),
    };
    if let Some((target, _)) = running.remove(&id)
        && let Some(state) = targets.get_mut(&target)
    {
        state.inflight = state.inflight.saturating_sub(1);
    }
}

/// Delivers one job and settles it.
async fn deliver<Q: QueueBackend>(
    shared: Arc<Shared<Q>>,
    rules: Arc<RuleSet>,
    job: Job,
) -> (String, i64) {
    let target_name = job.target.clone();
    let id = job.id;
    let lease = job.lease();
    let Some(target) = rules.target(&job.target) else {
        unreachable!("scheduled for a target of these rules")
    };
    let started_at = now_ms();
    let clock = Instant::now();
    let result = http::send(&shared.client, target, &job, &rules).await;
    let duration_ms = clock.elapsed().as_millis() as u64;
    let attempt_no = job.attempts + 1;
    // Retries are counted from the last requeue; attempt numbers keep rising across requeues.
    let (settle, status, error) = decide(
        target,
        attempt_no - job.retry_base.min(job.attempts),
        result,
    );
    let outcome = match &settle {
        Settle::Ack => "delivered",
        Settle::Retry { .. } => "retry",
        Settle::DeadLetter => "dead",
        Settle::Release => "released",
    };
    crate::metrics::delivery(&target_name, outcome, duration_ms as f64 / 1000.0);
    macro_rules! attempt_line {
        ($level:expr) => {
            tracing::event!(
                $level,
                job = id,
                target = %target_name,
                kind = job.kind.as_str(),
                // Debug-escaped, as the request span prints it: the id is the sender's text.
                delivery = job.delivery.as_str(),
                attempt = attempt_no,
                status = status.map(u64::from),
                error = error.as_deref(),
                duration_ms,
                outcome,
                "delivery attempt"
            )
        };
    }
    // A dead letter needs a person: it is a warning, the rest is routine.
    match settle {
        Settle::DeadLetter => attempt_line!(tracing::Level::WARN),
        _ => attempt_line!(tracing::Level::INFO),
    }
    let attempt = Attempt {
        attempt: attempt_no,
        started_at,
        duration_ms,
        status,
        error,
    };
    // Written by the settler with the other outcomes of the moment, in one commit.
    let _ = shared.settles.send((lease, Some(attempt), settle));
    (target_name, id)
}

/// A delivery's outcome, for the settler: the claim, the attempt, what becomes of the job.
type Outcome = (Lease, Option<Attempt>, Settle);

/// The most outcomes written in one batch.
const SETTLE_BATCH: usize = 256;

/// Writes delivery outcomes in batches: whatever finished while the previous batch was being written
/// goes in the next one, so a busy dispatcher settles many jobs per round trip and per commit (the
/// way the queue's writer batches accepts). Stops when `stop` fires, after writing what is left.
async fn settler<Q: QueueBackend>(
    queue: Arc<Q>,
    mut rx: mpsc::UnboundedReceiver<Outcome>,
    stop: oneshot::Receiver<()>,
    wake: Arc<Notify>,
) {
    tokio::pin!(stop);
    let mut batch = Vec::with_capacity(SETTLE_BATCH);
    loop {
        let stopping = tokio::select! {
            n = rx.recv_many(&mut batch, SETTLE_BATCH) => n == 0,
            _ = &mut stop => true,
        };
        if stopping {
            // Every delivery task has finished: what they sent is in the channel.
            while let Ok(item) = rx.try_recv() {
                batch.push(item);
            }
        }
        if !batch.is_empty() {
            let ids: Vec<i64> = batch.iter().map(|(lease, _, _)| lease.id).collect();
            let results = queue.settle_many(std::mem::take(&mut batch)).await;
            // Settled jobs free their claims (a shared queue counts them against the target's
            // concurrency) and may have put retries or coalesced checks back: look again.
            wake.notify_one();
            for (id, result) in ids.into_iter().zip(results) {
                match result {
                    Ok(()) => {}
                    // Another claim took the job after this one expired: its outcome is the one
                    // that counts.
                    Err(crate::queue::QueueError::LeaseLost(_)) => tracing::warn!(
                        job = id,
                        "outcome dropped: the job was claimed again after this claim expired"
                    ),
                    Err(e) => tracing::error!(
                        job = id,
                        error = %e,
                        "cannot settle job; it returns when its claim expires"
                    ),
                }
            }
        }
        if stopping {
            return;
        }
    }
}

/// Classifies an attempt: 2xx delivered; 408, 429, 5xx, timeouts and connection errors retry;
/// any other status is permanent.
fn decide(
    target: &Target,
    attempt: u32,
    result: Result<http::Response, String>,
) -> (Settle, Option<u16>, Option<String>) {
    let (status, error, retry_after) = match result {
        Ok(r) if (200..300).contains(&r.status) => return (Settle::Ack, Some(r.status), None),
        Ok(r) => {
            let retryable = r.status == 408 || r.status == 429 || r.status >= 500;
            let error = format!("HTTP {}", r.status);
            if !retryable {
                return (
                    Settle::DeadLetter,
                    Some(r.status),
                    Some(format!("{error} (not retried)")),
                );
            }
            (Some(r.status), error, r.retry_after)
        }
        Err(e) => (None, e, None),
    };
    // `attempt` counts this one; `retry N` allows N more after the first.
    if attempt > target.retry.attempts {
        return (
            Settle::DeadLetter,
            status,
            Some(format!("{error}; gave up after {attempt} attempts")),
        );
    }
    let delay = match retry_after {
        Some(after) => after.min(MAX_RETRY_AFTER),
        None => backoff(target, attempt),
    };
    (Settle::Retry { delay }, status, Some(error))
}

/// Exponential backoff with jitter: `min · 2^(attempt-1)`, capped at `max`, then a random point in its
/// upper half, so retries of many jobs spread out without ever waiting less than half the step.
pub(crate) fn backoff(target: &Target, attempt: u32) -> Duration {
    let min = target.retry.min_backoff.as_millis() as u64;
    let max = target.retry.max_backoff.as_millis() as u64;
    let step = min
        .saturating_mul(1u64 << (attempt.saturating_sub(1)).min(32))
        .min(max);
    let half = step / 2;
    Duration::from_millis(half + fastrand::u64(0..=step - half))
}
