//! One conformance suite for every queue backend: each test runs against the embedded SQLite queue and
//! against PostgreSQL (a real server, started by `support::pg`). The `replicas` tests open two
//! PostgreSQL queues on one database — two gateway replicas — and check that deduplication,
//! coalescing, leases and a target's limits hold across them.

mod support;

use std::sync::Arc;
use std::time::{Duration, Instant};

use hookgate::delivery_log::{
    ActionRecord, Filter, Outcome, Record, RecordedRequest, StatusFilter,
};
use hookgate::queue::{
    Accepted, Attempt, ClaimLimits, JobKind, JobState, Lease, NewJob, Queue, QueueBackend,
    QueueError, Settle,
};
use hookgate::ruleset::Rate;
use support::job;
use support::pg::{Backend, Store};

const MINUTE: Duration = Duration::from_secs(60);
const WAIT: Duration = Duration::from_secs(10);

/// Milliseconds since the Unix epoch.
fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

fn concurrency(n: u32) -> ClaimLimits {
    ClaimLimits {
        concurrency: n,
        rate: None,
    }
}

/// Waits until `check` holds, asking again every 20 ms; fails after [`WAIT`].
async fn eventually<F: Future<Output = bool>>(what: &str, mut check: impl FnMut() -> F) {
    let deadline = Instant::now() + WAIT;
    while !check().await {
        assert!(Instant::now() < deadline, "never happened: {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

macro_rules! conformance {
    ($($name:ident),* $(,)?) => {
        mod sqlite {
            $(
                #[tokio::test]
                async fn $name() {
                    super::$name(super::Backend::Sqlite).await
                }
            )*
        }
        mod postgres {
            $(
                #[tokio::test]
                async fn $name() {
                    super::$name(super::Backend::Postgres).await
                }
            )*
        }
    };
}

conformance!(
    a_failing_operation_fails_alone_and_leaves_nothing,
    jobs_survive_reopening_and_in_flight_ones_come_back,
    due_targets_give_each_target_with_pending_jobs_its_earliest_due_time,
    pending_checks_coalesce_and_in_flight_ones_get_a_successor,
    a_retried_check_merges_into_a_newer_pending_one,
    retries_wait_dead_letters_stay_and_requeue,
    expired_claims_return_to_pending_and_pruning_removes_old_records,
    deliveries_are_deduplicated_within_the_window_atomically_with_their_jobs,
    a_newer_schema_is_refused,
    a_settle_under_an_outdated_lease_is_refused_and_records_nothing,
    claims_hold_the_targets_concurrency,
    concurrent_claims_hold_the_targets_concurrency_together,
    claims_hold_the_targets_rate,
    text_with_nul_characters_is_accepted,
    many_concurrent_accepts_share_commits_and_each_gets_its_own_ids,
    a_deliverys_jobs_are_claimed_in_their_order,
    an_accepted_deliverys_record_is_stored_with_its_jobs,
    record_bodies_come_back_byte_for_byte_whatever_their_size_and_content,
    records_are_listed_filtered_paged_and_pruned,
    rules_versions_are_kept_once,
    targets_report_their_queue_and_last_attempts,
    stats_count_jobs_by_state_and_pending_ones_by_target,
    a_long_check_key_is_kept_as_its_hash_and_still_coalesces,
);

async fn jobs_survive_reopening_and_in_flight_ones_come_back(backend: Backend) {
    let store = Store::new(backend);
    // SQLite: a new process on the same directory returns every in-flight job at once (it is the only
    // process). PostgreSQL: a new replica leaves other replicas' live claims alone; they come back when
    // their visibility timeout passes.
    let visibility = match backend {
        Backend::Sqlite => MINUTE,
        Backend::Postgres => Duration::from_millis(300),
    };
    {
        let q = store.open().await;
        let ids = q
            .enqueue(vec![
                job(JobKind::Notify, "t", None),
                job(JobKind::Forward, "t", None),
            ])
            .await
            .unwrap();
        assert_eq!(ids.len(), 2);
        let claimed = q.claim("t", concurrency(4), 1, visibility).await.unwrap();
        assert_eq!(
            claimed.iter().map(|j| j.id).collect::<Vec<_>>(),
            vec![ids[0]]
        );
        assert_eq!(claimed[0].state, JobState::Inflight);
        assert_eq!(
            claimed[0].headers,
            vec![("content-type".to_string(), "application/json".to_string())]
        );
    }
    let q = store.open().await;
    if backend == Backend::Postgres {
        let stats = q.stats().await.unwrap();
        assert_eq!(
            (stats.pending, stats.inflight),
            (1, 1),
            "a live claim stays with its holder"
        );
        let q = &q;
        eventually("the expired claim returns to pending", move || async move {
            q.due_targets().await.unwrap();
            q.stats().await.unwrap().inflight == 0
        })
        .await;
    }
    let stats = q.stats().await.unwrap();
    assert_eq!((stats.pending, stats.inflight), (2, 0));
    assert_eq!(stats.pending_by_target, vec![("t".to_string(), 2)]);
}

async fn due_targets_give_each_target_with_pending_jobs_its_earliest_due_time(backend: Backend) {
    let store = Store::new(backend);
    let q = store.open().await;
    q.ping().await.unwrap();
    assert!(q.due_targets().await.unwrap().is_empty());
    let mut ids = Vec::new();
    for target in ["c", "a", "b", "a", "c", "a"] {
        ids.extend(
            q.enqueue(vec![job(JobKind::Notify, target, None)])
                .await
                .unwrap(),
        );
    }
    // `a`'s first job retries in an hour: `a` is due at its next job's time, not then.
    let first_a = q.claim("a", concurrency(4), 1, MINUTE).await.unwrap();
    q.settle(
        first_a[0].lease(),
        None,
        Settle::Retry {
            delay: Duration::from_secs(3600),
        },
    )
    .await
    .unwrap();
    // `b`'s only job is in flight: `b` is not due.
    q.claim("b", concurrency(4), 1, MINUTE).await.unwrap();
    let due = q.due_targets().await.unwrap();
    let names: Vec<&str> = due.iter().map(|(t, _)| t.as_str()).collect();
    assert_eq!(names, ["a", "c"]);
    let created = q.get(ids[3]).await.unwrap().0.run_at;
    assert_eq!(due[0].1, created, "a's earliest pending job");
    assert!(due.iter().all(|(_, at)| *at <= now_ms()));
}

async fn pending_checks_coalesce_and_in_flight_ones_get_a_successor(backend: Backend) {
    let store = Store::new(backend);
    let q = store.open().await;
    let a = q
        .enqueue(vec![job(JobKind::Check, "ci", Some("app"))])
        .await
        .unwrap();
    let b = q
        .enqueue(vec![
            job(JobKind::Check, "ci", Some("app")),
            job(JobKind::Check, "ci", Some("app")),
        ])
        .await
        .unwrap();
    assert_eq!(b, vec![a[0], a[0]], "merged into the pending check");
    let other = q
        .enqueue(vec![job(JobKind::Check, "ci", Some("lib"))])
        .await
        .unwrap();
    assert_ne!(other[0], a[0], "another key is another check");
    let claimed = q.claim("ci", concurrency(10), 10, MINUTE).await.unwrap();
    assert_eq!(claimed.len(), 2);
    let app = claimed.iter().find(|j| j.id == a[0]).unwrap();
    assert_eq!(app.coalesced, 3);
    // While `app` is in flight, a new request makes a new pending check, which is not due until the
    // in-flight one settles.
    let c = q
        .enqueue(vec![job(JobKind::Check, "ci", Some("app"))])
        .await
        .unwrap();
    assert_ne!(c[0], a[0]);
    assert!(
        q.claim("ci", concurrency(10), 10, MINUTE)
            .await
            .unwrap()
            .is_empty()
    );
    assert_eq!(
        q.due_targets().await.unwrap().len(),
        1,
        "due, but not claimable:"
    );
    q.settle(app.lease(), None, Settle::Ack).await.unwrap();
    let next = q.claim("ci", concurrency(10), 10, MINUTE).await.unwrap();
    assert_eq!(next.iter().map(|j| j.id).collect::<Vec<_>>(), vec![c[0]]);
}

async fn a_retried_check_merges_into_a_newer_pending_one(backend: Backend) {
    let store = Store::new(backend);
    let q = store.open().await;
    let a = q
        .enqueue(vec![job(JobKind::Check, "ci", None)])
        .await
        .unwrap()[0];
    let claimed = q.claim("ci", concurrency(4), 1, MINUTE).await.unwrap();
    let b = q
        .enqueue(vec![job(JobKind::Check, "ci", None)])
        .await
        .unwrap()[0];
    let attempt = Attempt {
        attempt: 1,
        started_at: now_ms(),
        duration_ms: 3,
        status: Some(503),
        error: Some("503".into()),
    };
    q.settle(
        claimed[0].lease(),
        Some(attempt),
        Settle::Retry {
            delay: Duration::from_secs(60),
        },
    )
    .await
    .unwrap();
    let (merged, attempts) = q.get(a).await.unwrap();
    assert_eq!(merged.state, JobState::Done);
    assert_eq!(
        merged.last_error.as_deref(),
        Some(&*format!("merged into pending check {b}"))
    );
    assert_eq!(attempts.len(), 1);
    assert_eq!(q.get(b).await.unwrap().0.coalesced, 2);
}

async fn retries_wait_dead_letters_stay_and_requeue(backend: Backend) {
    let store = Store::new(backend);
    let q = store.open().await;
    let id = q
        .enqueue(vec![job(JobKind::Notify, "t", None)])
        .await
        .unwrap()[0];
    let lease = q.claim("t", concurrency(4), 1, MINUTE).await.unwrap()[0].lease();
    let attempt = |n| Attempt {
        attempt: n,
        started_at: now_ms(),
        duration_ms: 1,
        status: Some(500),
        error: Some("HTTP 500".into()),
    };
    q.settle(
        lease,
        Some(attempt(1)),
        Settle::Retry {
            delay: Duration::from_secs(3600),
        },
    )
    .await
    .unwrap();
    assert!(
        q.claim("t", concurrency(4), 1, MINUTE)
            .await
            .unwrap()
            .is_empty(),
        "not due for an hour"
    );
    let due = q.due_targets().await.unwrap();
    assert_eq!(due.len(), 1);
    assert!(due[0].1 > now_ms() + 3_500_000);
    // Nobody claimed it since: the lease still holds.
    q.settle(lease, Some(attempt(2)), Settle::DeadLetter)
        .await
        .unwrap();
    let dead = q.list(JobState::Dead, 10).await.unwrap();
    assert_eq!(dead.len(), 1);
    assert_eq!(
        (
            dead[0].attempts,
            dead[0].last_status,
            dead[0].last_error.as_deref()
        ),
        (2, Some(500), Some("HTTP 500"))
    );
    assert!(matches!(
        q.requeue(id + 1).await,
        Err(QueueError::NoSuchJob(_))
    ));
    q.requeue(id).await.unwrap();
    assert!(matches!(q.requeue(id).await, Err(QueueError::NotDead(..))));
    assert!(
        matches!(
            q.settle(lease, None, Settle::Ack).await,
            Err(QueueError::LeaseLost(_))
        ),
        "a requeued job has a new lease"
    );
    let again = q.claim("t", concurrency(4), 1, MINUTE).await.unwrap();
    // A fresh retry budget, counted from the attempts made so far; the next attempt is number 3, so
    // the first two stay on record.
    assert_eq!(
        (again[0].id, again[0].attempts, again[0].retry_base),
        (id, 2, 2)
    );
    q.settle(
        again[0].lease(),
        Some(Attempt {
            attempt: 3,
            started_at: 0,
            duration_ms: 1,
            status: Some(200),
            error: None,
        }),
        Settle::Ack,
    )
    .await
    .unwrap();
    let attempts = q.get(id).await.unwrap().1;
    assert_eq!(
        attempts
            .iter()
            .map(|a| (a.attempt, a.status))
            .collect::<Vec<_>>(),
        vec![(1, Some(500)), (2, Some(500)), (3, Some(200))],
        "every attempt is kept, the requeued one after the others"
    );
    assert!(matches!(
        q.settle(Lease { id: 999, token: 1 }, None, Settle::Ack)
            .await,
        Err(QueueError::NoSuchJob(999))
    ));
}

async fn expired_claims_return_to_pending_and_pruning_removes_old_records(backend: Backend) {
    let store = Store::new(backend);
    let q = store.open().await;
    let id = q
        .enqueue(vec![job(JobKind::Notify, "t", None)])
        .await
        .unwrap()[0];
    q.claim("t", concurrency(4), 1, Duration::from_millis(1))
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(5)).await;
    assert_eq!(q.due_targets().await.unwrap().len(), 1, "the claim expired");
    let again = q.claim("t", concurrency(4), 1, MINUTE).await.unwrap();
    assert_eq!(again[0].id, id);
    q.settle(again[0].lease(), None, Settle::Ack).await.unwrap();
    assert_eq!(q.prune(now_ms() - 60_000).await.unwrap(), 0, "too recent");
    assert_eq!(q.prune(now_ms() + 1).await.unwrap(), 1);
    assert!(matches!(q.get(id).await, Err(QueueError::NoSuchJob(_))));
}

async fn deliveries_are_deduplicated_within_the_window_atomically_with_their_jobs(
    backend: Backend,
) {
    let store = Store::new(backend);
    let q = store.open().await;
    let seen = || Some(("acme".to_string(), "d-1".to_string()));
    let day = Duration::from_secs(86_400);
    let first = q
        .accept(seen(), day, vec![job(JobKind::Notify, "t", None)])
        .await
        .unwrap();
    assert!(matches!(first, Accepted::Enqueued(ref ids) if ids.len() == 1));
    assert_eq!(
        q.accept(seen(), day, vec![job(JobKind::Notify, "t", None)])
            .await
            .unwrap(),
        Accepted::Duplicate
    );
    assert_eq!(
        q.stats().await.unwrap().pending,
        1,
        "the duplicate enqueued nothing"
    );
    let other = Some(("other".to_string(), "d-1".to_string()));
    assert!(
        matches!(q.accept(other, day, vec![]).await.unwrap(), Accepted::Enqueued(ref ids) if ids.is_empty())
    );
    // Outside the window it is a new delivery again.
    tokio::time::sleep(Duration::from_millis(5)).await;
    assert!(matches!(
        q.accept(seen(), Duration::from_millis(1), vec![])
            .await
            .unwrap(),
        Accepted::Enqueued(_)
    ));
    // No id, no deduplication.
    assert!(matches!(
        q.accept(None, day, vec![]).await.unwrap(),
        Accepted::Enqueued(_)
    ));
}

async fn a_newer_schema_is_refused(backend: Backend) {
    let store = Store::new(backend);
    drop(store.open().await);
    match backend {
        Backend::Sqlite => {
            let file = sqlite_file(&store);
            let conn = rusqlite::Connection::open(file).unwrap();
            conn.pragma_update(None, "user_version", 99i64).unwrap();
        }
        Backend::Postgres => {
            support::pg::shared().psql(&store.spec(), "UPDATE hookgate_schema SET version = 99");
        }
    }
    let err = Queue::open(&store.spec()).await.err().unwrap();
    assert!(err.to_string().contains("schema version 99"), "{err}");
}

async fn a_settle_under_an_outdated_lease_is_refused_and_records_nothing(backend: Backend) {
    let store = Store::new(backend);
    let q = store.open().await;
    let id = q
        .enqueue(vec![job(JobKind::Notify, "t", None)])
        .await
        .unwrap()[0];
    let first = q
        .claim("t", concurrency(4), 1, Duration::from_millis(1))
        .await
        .unwrap()[0]
        .lease();
    tokio::time::sleep(Duration::from_millis(5)).await;
    q.due_targets().await.unwrap();
    let second = q.claim("t", concurrency(4), 1, MINUTE).await.unwrap()[0].lease();
    assert_eq!(second.id, id);
    assert_ne!(second.token, first.token);
    // The first holder, late, reports a failure: refused, so the new holder's claim stands.
    let late = Attempt {
        attempt: 1,
        started_at: now_ms(),
        duration_ms: 9,
        status: Some(500),
        error: Some("HTTP 500".into()),
    };
    let refused = q.settle(first, Some(late), Settle::DeadLetter).await;
    assert!(
        matches!(refused, Err(QueueError::LeaseLost(i)) if i == id),
        "{refused:?}"
    );
    let (job, attempts) = q.get(id).await.unwrap();
    assert_eq!(
        (job.state, job.attempts, job.lease),
        (JobState::Inflight, 0, second.token)
    );
    assert!(attempts.is_empty());
    q.settle(second, None, Settle::Ack).await.unwrap();
    assert_eq!(q.get(id).await.unwrap().0.state, JobState::Done);
}

async fn claims_hold_the_targets_concurrency(backend: Backend) {
    let store = Store::new(backend);
    let q = store.open().await;
    q.enqueue((0..6).map(|_| job(JobKind::Notify, "t", None)).collect())
        .await
        .unwrap();
    let first = q.claim("t", concurrency(2), 10, MINUTE).await.unwrap();
    assert_eq!(first.len(), 2, "no more than the concurrency");
    assert!(
        q.claim("t", concurrency(2), 10, MINUTE)
            .await
            .unwrap()
            .is_empty(),
        "both slots are taken"
    );
    q.settle(first[0].lease(), None, Settle::Ack).await.unwrap();
    assert_eq!(
        q.claim("t", concurrency(2), 10, MINUTE)
            .await
            .unwrap()
            .len(),
        1,
        "a settled job frees its slot"
    );
    assert_eq!(
        q.claim("t", concurrency(4), 10, MINUTE)
            .await
            .unwrap()
            .len(),
        2,
        "a larger limit (after a reload) counts the same claims"
    );
    // An expired claim does not hold a slot: its holder is presumed dead.
    let store = Store::new(backend);
    let q = store.open().await;
    q.enqueue((0..3).map(|_| job(JobKind::Notify, "t", None)).collect())
        .await
        .unwrap();
    q.claim("t", concurrency(1), 10, Duration::from_millis(1))
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(5)).await;
    assert_eq!(
        q.claim("t", concurrency(1), 10, MINUTE)
            .await
            .unwrap()
            .len(),
        1
    );
}

async fn concurrent_claims_hold_the_targets_concurrency_together(backend: Backend) {
    let store = Store::new(backend);
    let q = Arc::new(store.open().await);
    q.enqueue((0..50).map(|_| job(JobKind::Notify, "t", None)).collect())
        .await
        .unwrap();
    let claims: Vec<_> = (0..20)
        .map(|_| {
            let q = q.clone();
            tokio::spawn(async move { q.claim("t", concurrency(3), 5, MINUTE).await.unwrap() })
        })
        .collect();
    let mut total = 0;
    for c in claims {
        total += c.await.unwrap().len();
    }
    assert_eq!(total, 3);
    assert_eq!(q.stats().await.unwrap().inflight, 3);
}

async fn claims_hold_the_targets_rate(backend: Backend) {
    let store = Store::new(backend);
    let q = store.open().await;
    q.enqueue((0..10).map(|_| job(JobKind::Notify, "t", None)).collect())
        .await
        .unwrap();
    let limits = ClaimLimits {
        concurrency: 100,
        rate: Some(Rate {
            count: 2,
            per: Duration::from_secs(1),
        }),
    };
    let start = Instant::now();
    assert_eq!(
        q.claim("t", limits, 10, MINUTE).await.unwrap().len(),
        2,
        "the bucket starts full"
    );
    assert!(q.claim("t", limits, 10, MINUTE).await.unwrap().is_empty());
    // One token every 500 ms.
    let deadline = Instant::now() + WAIT;
    let next = loop {
        let got = q.claim("t", limits, 10, MINUTE).await.unwrap();
        if !got.is_empty() {
            break got;
        }
        assert!(Instant::now() < deadline, "no token came back");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(next.len(), 1);
    let waited = start.elapsed();
    assert!(
        waited >= Duration::from_millis(450),
        "a third claim after {waited:?}"
    );
    // A changed rate starts a full bucket of the new size.
    let faster = ClaimLimits {
        rate: Some(Rate {
            count: 3,
            per: Duration::from_secs(1),
        }),
        ..limits
    };
    assert_eq!(q.claim("t", faster, 10, MINUTE).await.unwrap().len(), 3);
}

async fn text_with_nul_characters_is_accepted(backend: Backend) {
    let store = Store::new(backend);
    let q = store.open().await;
    let nul = NewJob {
        delivery: "d\0".into(),
        ..job(JobKind::Check, "t", Some("a\0b"))
    };
    let seen = Some(("acme".to_string(), "id\0x".to_string()));
    let day = Duration::from_secs(86_400);
    let Accepted::Enqueued(ids) = q
        .accept(seen.clone(), day, vec![nul.clone()])
        .await
        .unwrap()
    else {
        panic!("a new delivery")
    };
    assert_eq!(
        q.accept(seen, day, vec![]).await.unwrap(),
        Accepted::Duplicate
    );
    assert_eq!(q.enqueue(vec![nul]).await.unwrap(), ids, "coalesced by key");
    let (stored, _) = q.get(ids[0]).await.unwrap();
    let expected = match backend {
        Backend::Sqlite => "a\0b",
        // PostgreSQL's text cannot hold NUL: it becomes U+FFFD.
        Backend::Postgres => "a\u{FFFD}b",
    };
    assert_eq!(stored.key.as_deref(), Some(expected));
    assert_eq!(stored.coalesced, 2);
}

async fn a_long_check_key_is_kept_as_its_hash_and_still_coalesces(backend: Backend) {
    // A key is built from the payload: 4,000 bytes of it went past what PostgreSQL's index of pending
    // checks holds, and every such delivery was answered 503.
    let store = Store::new(backend);
    let q = store.open().await;
    let mut rng = fastrand::Rng::with_seed(3);
    let long: String = (0..4000).map(|_| rng.alphanumeric()).collect();
    let day = Duration::from_secs(86_400);
    let seen = |d: &str| Some(("acme".to_string(), d.to_string()));
    let Accepted::Enqueued(ids) = q
        .accept(
            seen("l-1"),
            day,
            vec![job(JobKind::Check, "t", Some(&long))],
        )
        .await
        .unwrap()
    else {
        panic!("a new delivery")
    };
    let again = q
        .accept(
            seen("l-2"),
            day,
            vec![job(JobKind::Check, "t", Some(&long))],
        )
        .await
        .unwrap();
    assert_eq!(again, Accepted::Enqueued(ids.clone()), "coalesced by key");
    let short = "x".repeat(hookgate::queue::MAX_KEY);
    let other = q
        .enqueue(vec![job(JobKind::Check, "t", Some(&short))])
        .await
        .unwrap();
    let (stored, _) = q.get(ids[0]).await.unwrap();
    assert_eq!(stored.coalesced, 2);
    let key = stored.key.unwrap();
    assert!(key.starts_with("sha256:") && key.len() == 7 + 64, "{key}");
    let (stored, _) = q.get(other[0]).await.unwrap();
    assert_eq!(
        stored.key.as_deref(),
        Some(short.as_str()),
        "a key at the bound stays"
    );
}

async fn many_concurrent_accepts_share_commits_and_each_gets_its_own_ids(backend: Backend) {
    let store = Store::new(backend);
    let q = Arc::new(store.open().await);
    let tasks: Vec<_> = (0..200)
        .map(|i| {
            let q = q.clone();
            tokio::spawn(async move {
                let seen = Some(("acme".to_string(), format!("d-{}", i % 100)));
                let jobs = vec![
                    job(JobKind::Notify, "t", None),
                    job(JobKind::Forward, "u", None),
                ];
                q.accept(seen, Duration::from_secs(60), jobs).await.unwrap()
            })
        })
        .collect();
    let mut ids = Vec::new();
    let mut duplicates = 0;
    for t in tasks {
        match t.await.unwrap() {
            Accepted::Enqueued(i) => {
                assert_eq!(i.len(), 2);
                ids.extend(i);
            }
            Accepted::Duplicate => duplicates += 1,
        }
    }
    assert_eq!(duplicates, 100, "each delivery id was accepted once");
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), 200);
    assert_eq!(q.stats().await.unwrap().pending, 200);
}

async fn a_deliverys_jobs_are_claimed_in_their_order(backend: Backend) {
    let store = Store::new(backend);
    let q = store.open().await;
    let jobs = vec![
        job(JobKind::Check, "t", Some("z")),
        job(JobKind::Notify, "t", None),
        job(JobKind::Check, "t", Some("a")),
        job(JobKind::Forward, "t", None),
    ];
    let seen = Some(("acme".to_string(), "d-1".to_string()));
    let Accepted::Enqueued(ids) = q.accept(seen, MINUTE, jobs).await.unwrap() else {
        panic!("a new delivery")
    };
    assert!(ids.windows(2).all(|w| w[0] < w[1]), "{ids:?}");
    let claimed: Vec<i64> = q
        .claim("t", concurrency(10), 10, MINUTE)
        .await
        .unwrap()
        .iter()
        .map(|j| j.id)
        .collect();
    assert_eq!(claimed, ids);
}

/// Two replicas: two PostgreSQL queues on one database.
mod replicas {
    use super::*;

    async fn two() -> (Store, Arc<Queue>, Arc<Queue>) {
        let store = Store::new(Backend::Postgres);
        let (a, b) = (Arc::new(store.open().await), Arc::new(store.open().await));
        (store, a, b)
    }

    #[tokio::test]
    async fn replicas_migrate_once_when_they_start_together() {
        let store = Store::new(Backend::Postgres);
        let opens: Vec<_> = (0..4)
            .map(|_| {
                let spec = store.spec();
                tokio::spawn(async move { Queue::open(&spec).await.map(|_| ()) })
            })
            .collect();
        for open in opens {
            open.await.unwrap().unwrap();
        }
        let version =
            support::pg::shared().psql(&store.spec(), "SELECT version FROM hookgate_schema");
        assert_eq!(version, "2", "every migration ran, once");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_delivery_sent_to_both_replicas_is_accepted_once() {
        let (_store, a, b) = two().await;
        let day = Duration::from_secs(86_400);
        let seen = || Some(("acme".to_string(), "d-1".to_string()));
        assert!(matches!(
            a.accept(seen(), day, vec![job(JobKind::Notify, "t", None)])
                .await
                .unwrap(),
            Accepted::Enqueued(_)
        ));
        assert_eq!(
            b.accept(seen(), day, vec![job(JobKind::Notify, "t", None)])
                .await
                .unwrap(),
            Accepted::Duplicate
        );
        // At the same moment on both: exactly one of each id gets in.
        let tasks: Vec<_> = (0..40)
            .map(|i| {
                let q = if i % 2 == 0 { a.clone() } else { b.clone() };
                tokio::spawn(async move {
                    let seen = Some(("acme".to_string(), format!("race-{}", i / 4)));
                    q.accept(seen, day, vec![job(JobKind::Notify, "t", None)])
                        .await
                        .unwrap()
                })
            })
            .collect();
        let mut accepted = 0;
        for t in tasks {
            if matches!(t.await.unwrap(), Accepted::Enqueued(_)) {
                accepted += 1;
            }
        }
        assert_eq!(accepted, 10);
        assert_eq!(a.stats().await.unwrap().pending, 11);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn checks_coalesce_across_replicas() {
        let (_store, a, b) = two().await;
        let tasks: Vec<_> = (0..40)
            .map(|i| {
                let q = if i % 2 == 0 { a.clone() } else { b.clone() };
                tokio::spawn(async move {
                    q.enqueue(vec![job(JobKind::Check, "ci", Some("app"))])
                        .await
                        .unwrap()[0]
                })
            })
            .collect();
        let mut ids = Vec::new();
        for t in tasks {
            ids.push(t.await.unwrap());
        }
        ids.dedup();
        assert_eq!(ids.len(), 1, "one pending check: {ids:?}");
        let claimed = b.claim("ci", concurrency(4), 10, MINUTE).await.unwrap();
        assert_eq!((claimed.len(), claimed[0].coalesced), (1, 40));
        // While it is in flight, requests on either replica make one successor, not claimable yet.
        let c1 = a
            .enqueue(vec![job(JobKind::Check, "ci", Some("app"))])
            .await
            .unwrap();
        let c2 = b
            .enqueue(vec![job(JobKind::Check, "ci", Some("app"))])
            .await
            .unwrap();
        assert_eq!(c1, c2);
        assert!(
            a.claim("ci", concurrency(4), 10, MINUTE)
                .await
                .unwrap()
                .is_empty()
        );
        b.settle(claimed[0].lease(), None, Settle::Ack)
            .await
            .unwrap();
        assert_eq!(
            a.claim("ci", concurrency(4), 10, MINUTE).await.unwrap()[0].id,
            c1[0]
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_dead_replicas_claims_pass_to_another_when_they_expire() {
        let (store, a, b) = two().await;
        let ids = a
            .enqueue((0..5).map(|_| job(JobKind::Notify, "t", None)).collect())
            .await
            .unwrap();
        let held = a
            .claim("t", concurrency(10), 10, Duration::from_millis(400))
            .await
            .unwrap();
        assert_eq!(held.len(), 5);
        drop(a); // The replica dies holding every job.
        assert!(
            b.claim("t", concurrency(10), 10, MINUTE)
                .await
                .unwrap()
                .is_empty(),
            "live claims are not taken over"
        );
        let mut taken = Vec::new();
        let deadline = Instant::now() + WAIT;
        while taken.len() < 5 {
            assert!(
                Instant::now() < deadline,
                "the jobs were not taken over: {taken:?}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
            b.due_targets().await.unwrap();
            taken.extend(b.claim("t", concurrency(10), 10, MINUTE).await.unwrap());
        }
        let mut got: Vec<i64> = taken.iter().map(|j| j.id).collect();
        got.sort();
        assert_eq!(got, ids);
        // The dead replica's outcome, arriving late through a third one, cannot undo the new claims.
        let late = store.open().await;
        assert!(matches!(
            late.settle(held[0].lease(), None, Settle::DeadLetter).await,
            Err(QueueError::LeaseLost(_))
        ));
        for job in &taken {
            b.settle(job.lease(), None, Settle::Ack).await.unwrap();
        }
        assert_eq!(late.stats().await.unwrap().done, 5);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrency_holds_across_replicas() {
        let (_store, a, b) = two().await;
        a.enqueue((0..40).map(|_| job(JobKind::Notify, "t", None)).collect())
            .await
            .unwrap();
        let claims: Vec<_> = (0..20)
            .map(|i| {
                let q = if i % 2 == 0 { a.clone() } else { b.clone() };
                tokio::spawn(async move { q.claim("t", concurrency(3), 3, MINUTE).await.unwrap() })
            })
            .collect();
        let mut held = Vec::new();
        for c in claims {
            held.extend(c.await.unwrap());
        }
        assert_eq!(held.len(), 3, "three slots for both replicas together");
        b.settle(held[0].lease(), None, Settle::Ack).await.unwrap();
        assert_eq!(
            a.claim("t", concurrency(3), 3, MINUTE).await.unwrap().len(),
            1
        );
        assert!(
            b.claim("t", concurrency(3), 3, MINUTE)
                .await
                .unwrap()
                .is_empty()
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_rate_holds_across_replicas() {
        let (_store, a, b) = two().await;
        a.enqueue((0..200).map(|_| job(JobKind::Notify, "t", None)).collect())
            .await
            .unwrap();
        let limits = ClaimLimits {
            concurrency: 1000,
            rate: Some(Rate {
                count: 5,
                per: Duration::from_secs(1),
            }),
        };
        // Both replicas claim as fast as they can for 1.5 s.
        let start = Instant::now();
        let run = Duration::from_millis(1500);
        let claimers: Vec<_> = [a.clone(), b.clone()]
            .into_iter()
            .map(|q| {
                tokio::spawn(async move {
                    let mut got = 0;
                    while start.elapsed() < run {
                        got += q.claim("t", limits, 10, MINUTE).await.unwrap().len();
                        tokio::time::sleep(Duration::from_millis(5)).await;
                    }
                    got
                })
            })
            .collect();
        let mut per_replica = Vec::new();
        for c in claimers {
            per_replica.push(c.await.unwrap());
        }
        let total: usize = per_replica.iter().sum();
        let elapsed = start.elapsed().as_secs_f64();
        // A full bucket of 5, then 5 per second, for both together.
        let most = 5 + (elapsed * 5.0).ceil() as usize;
        assert!(
            (7..=most).contains(&total),
            "{total} claims ({per_replica:?}) in {elapsed:.2} s at 5 per second"
        );
    }
}

/// PostgreSQL going away and coming back.
mod faults {
    use super::*;
    use support::pg::PgServer;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn operations_fail_fast_while_postgresql_is_down_and_work_again_when_it_is_back() {
        let server = PgServer::start();
        let q = Queue::open(&server.database()).await.unwrap();
        let day = Duration::from_secs(86_400);
        let seen = |id: &str| Some(("acme".to_string(), id.to_string()));
        let jobs = || vec![job(JobKind::Notify, "t", None)];
        assert!(matches!(
            q.accept(seen("before"), day, jobs()).await.unwrap(),
            Accepted::Enqueued(_)
        ));

        server.stop();
        let start = Instant::now();
        let refused = q.accept(seen("during"), day, jobs()).await;
        assert!(
            matches!(refused, Err(QueueError::Storage(ref m)) if m.contains("PostgreSQL")),
            "{refused:?}"
        );
        assert!(
            q.claim("t", concurrency(4), 10, MINUTE).await.is_err(),
            "claims fail too"
        );
        assert!(q.stats().await.is_err());
        assert!(q.ping().await.is_err(), "not ready");
        assert!(
            start.elapsed() < Duration::from_secs(5),
            "failing took {:?}",
            start.elapsed()
        );

        server.start_again();
        // No restart of the queue: the pool reconnects by itself.
        let deadline = Instant::now() + WAIT;
        loop {
            match q.accept(seen("after"), day, jobs()).await {
                Ok(accepted) => {
                    assert!(matches!(accepted, Accepted::Enqueued(_)));
                    break;
                }
                Err(e) => assert!(Instant::now() < deadline, "never recovered: {e}"),
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        q.ping().await.unwrap();
        assert_eq!(
            q.accept(seen("before"), day, jobs()).await.unwrap(),
            Accepted::Duplicate,
            "what was committed before is still there"
        );
        assert_eq!(
            q.stats().await.unwrap().pending,
            2,
            "the refused delivery left nothing"
        );
    }
}

/// Deliveries on two replicas touching the same checks in different orders: each delivery's checks are
/// written in (target, key) order, so the replicas' transactions queue behind each other instead of
/// deadlocking (a deadlock would stall both for a second). None may fail, and none may count twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crossing_checks_on_two_replicas_all_land_once() {
    let store = Store::new(Backend::Postgres);
    let (a, b) = (Arc::new(store.open().await), Arc::new(store.open().await));
    let keys = ["k1", "k2", "k3"];
    let tasks: Vec<_> = (0..120)
        .map(|i| {
            let q = if i % 2 == 0 { a.clone() } else { b.clone() };
            tokio::spawn(async move {
                let mut order: Vec<&str> = keys.to_vec();
                if i % 3 == 0 {
                    order.reverse();
                } else if i % 3 == 1 {
                    order.rotate_left(1);
                }
                let jobs = order
                    .iter()
                    .map(|k| job(JobKind::Check, "ci", Some(k)))
                    .collect();
                let seen = Some(("acme".to_string(), format!("d-{i}")));
                q.accept(seen, Duration::from_secs(60), jobs).await
            })
        })
        .collect();
    for t in tasks {
        let accepted = t.await.unwrap();
        assert!(
            matches!(accepted, Ok(Accepted::Enqueued(ref ids)) if ids.len() == 3),
            "{accepted:?}"
        );
    }
    let claimed = a.claim("ci", concurrency(10), 10, MINUTE).await.unwrap();
    assert_eq!(claimed.len(), 3);
    assert!(claimed.iter().all(|j| j.coalesced == 120), "{claimed:?}");
}

/// One bad operation in a batch fails alone and leaves nothing behind, not even its delivery id.
/// PostgreSQL rolls the batch's transaction back and runs each operation alone; SQLite undoes the
/// operation's savepoint inside its open transaction. A trigger refuses jobs of the rule `poison`:
/// the accept fails after its delivery id and first job were written.
async fn a_failing_operation_fails_alone_and_leaves_nothing(backend: Backend) {
    let store = Store::new(backend);
    drop(store.open().await); // Creates the schema.
    match backend {
        Backend::Sqlite => {
            let file = sqlite_file(&store);
            rusqlite::Connection::open(file)
                .unwrap()
                .execute_batch(
                    "CREATE TRIGGER poison BEFORE INSERT ON jobs WHEN NEW.rule = 'poison'
                     BEGIN SELECT RAISE(ABORT, 'poisoned job'); END;",
                )
                .unwrap();
        }
        Backend::Postgres => {
            support::pg::shared().psql(
                &store.spec(),
                "CREATE FUNCTION poison() RETURNS trigger LANGUAGE plpgsql AS $$
                 BEGIN IF NEW.rule = 'poison' THEN RAISE EXCEPTION 'poisoned job'; END IF; RETURN NEW; END $$;
                 CREATE TRIGGER poison BEFORE INSERT ON jobs FOR EACH ROW EXECUTE FUNCTION poison();",
            );
        }
    }
    let q = Arc::new(store.open().await);
    let seen = |i: usize| Some(("acme".to_string(), format!("d-{i}")));
    let tasks: Vec<_> = (0..100)
        .map(|i| {
            let q = q.clone();
            tokio::spawn(async move {
                let rule = if i % 10 == 3 { "poison" } else { "r" };
                let jobs = vec![
                    job(JobKind::Notify, "t", None),
                    NewJob {
                        rule: rule.into(),
                        ..job(JobKind::Notify, "t", None)
                    },
                ];
                (i, q.accept(seen(i), Duration::from_secs(60), jobs).await)
            })
        })
        .collect();
    for t in tasks {
        let (i, accepted) = t.await.unwrap();
        if i % 10 == 3 {
            assert!(
                matches!(accepted, Err(QueueError::Storage(ref m)) if m.contains("poisoned job")),
                "{i}: {accepted:?}"
            );
        } else {
            assert!(
                matches!(accepted, Ok(Accepted::Enqueued(ref ids)) if ids.len() == 2),
                "{i}: {accepted:?}"
            );
        }
    }
    assert_eq!(
        q.stats().await.unwrap().pending,
        180,
        "the failed accepts' first jobs are gone"
    );
    assert!(
        matches!(
            q.accept(seen(3), Duration::from_secs(60), vec![])
                .await
                .unwrap(),
            Accepted::Enqueued(_)
        ),
        "the failed delivery's id was not recorded: its redelivery is accepted"
    );
    assert!(
        matches!(
            q.accept(seen(4), Duration::from_secs(60), vec![])
                .await
                .unwrap(),
            Accepted::Duplicate
        ),
        "an accepted delivery's id was recorded"
    );
}

fn record(source: &str, outcome: Outcome, status: u16) -> Record {
    let mut r = Record::new(Some(source.to_string()));
    r.delivery = Some(format!("d-{}", r.id));
    r.event = Some("push".into());
    r.outcome = outcome;
    r.status = status;
    r.rules_version = Some("v1".into());
    r.request = Some(RecordedRequest {
        headers: [("x-github-event", "push")].into_iter().collect(),
        query: [("team", "core")].into_iter().collect(),
        body: Some(bytes::Bytes::from_static(b"{\"ref\":\"refs/heads/main\"}")),
    });
    r
}

async fn an_accepted_deliverys_record_is_stored_with_its_jobs(backend: Backend) {
    let store = Store::new(backend);
    let q = store.open().await;
    let day = Duration::from_secs(86_400);
    let mut r = record("acme", Outcome::Rejected, 0);
    r.matched = vec!["rule".into()];
    r.actions = vec![
        ActionRecord {
            rule: "rule".into(),
            action: 0,
            kind: JobKind::Notify,
            target: "t".into(),
            job: None,
        },
        ActionRecord {
            rule: "rule".into(),
            action: 1,
            kind: JobKind::Check,
            target: "t".into(),
            job: None,
        },
    ];
    let seen = Some(("acme".to_string(), "d-1".to_string()));
    let jobs = vec![
        job(JobKind::Notify, "t", None),
        job(JobKind::Check, "t", Some("k")),
    ];
    let Accepted::Enqueued(ids) = q
        .accept_recorded(seen.clone(), day, jobs.clone(), Some(Arc::new(r.clone())))
        .await
        .unwrap()
    else {
        panic!("a new delivery is enqueued")
    };
    let stored = q.get_record(r.id.clone()).await.unwrap().expect("stored");
    assert_eq!((stored.status, stored.outcome), (202, Outcome::Accepted));
    assert_eq!(
        stored.actions.iter().map(|a| a.job).collect::<Vec<_>>(),
        ids.iter().map(|&i| Some(i)).collect::<Vec<_>>(),
        "the actions know their jobs"
    );
    assert_eq!(
        stored.request, r.request,
        "headers, query and body as recorded"
    );
    assert_eq!(stored.rules_version.as_deref(), Some("v1"));
    // A duplicate stores no record: nothing was accepted.
    let dup = record("acme", Outcome::Rejected, 0);
    assert_eq!(
        q.accept_recorded(seen, day, jobs, Some(Arc::new(dup.clone())))
            .await
            .unwrap(),
        Accepted::Duplicate
    );
    assert_eq!(q.get_record(dup.id.clone()).await.unwrap(), None);
    // After reopening (a restart), it is still there.
    drop(q);
    let q = store.open().await;
    assert!(q.get_record(r.id.clone()).await.unwrap().is_some());
}

async fn records_are_listed_filtered_paged_and_pruned(backend: Backend) {
    let store = Store::new(backend);
    let q = store.open().await;
    let mut all = Vec::new();
    for i in 0..6 {
        let mut r = match i % 3 {
            0 => record("a", Outcome::NoMatch, 200),
            1 => record("b", Outcome::Rejected, 401),
            _ => record("a", Outcome::Filtered, 200),
        };
        if i == 4 {
            r.matched = vec!["special".into()];
        }
        all.push(Arc::new(r));
    }
    q.store_records(all.clone()).await.unwrap();
    q.store_records(vec![all[0].clone()]).await.unwrap(); // Stored twice: kept once.
    let ids = |rs: &[Record]| rs.iter().map(|r| r.id.clone()).collect::<Vec<_>>();
    let newest_first: Vec<String> = all.iter().rev().map(|r| r.id.clone()).collect();
    let every = Filter {
        limit: 100,
        ..Filter::default()
    };
    assert_eq!(
        ids(&q.list_records(every.clone()).await.unwrap()),
        newest_first
    );
    let by_source = q
        .list_records(Filter {
            source: Some("b".into()),
            ..every.clone()
        })
        .await
        .unwrap();
    assert_eq!(by_source.len(), 2);
    let rejected = q
        .list_records(Filter {
            status: StatusFilter::parse("401"),
            ..every.clone()
        })
        .await
        .unwrap();
    assert_eq!(rejected.len(), 2);
    let filtered = q
        .list_records(Filter {
            status: StatusFilter::parse("filtered"),
            ..every.clone()
        })
        .await
        .unwrap();
    assert_eq!(filtered.len(), 2);
    let special = q
        .list_records(Filter {
            rule: Some("special".into()),
            ..every.clone()
        })
        .await
        .unwrap();
    assert_eq!(ids(&special), vec![all[4].id.clone()]);
    let page = q
        .list_records(Filter {
            before: Some(all[3].id.clone()),
            limit: 2,
            ..Filter::default()
        })
        .await
        .unwrap();
    assert_eq!(ids(&page), vec![all[2].id.clone(), all[1].id.clone()]);
    let received = all[0].received_at;
    let since = q
        .list_records(Filter {
            since: Some(received + 1_000_000),
            ..every.clone()
        })
        .await
        .unwrap();
    assert!(since.is_empty());
    // Pruning keeps the newest `keep`, and drops what is older than `before`. No count bound (the
    // gateway passes `u64::MAX` with the log off) prunes nothing by count.
    assert_eq!(q.prune_records(0, u64::MAX).await.unwrap(), 0);
    assert_eq!(q.prune_records(0, 4).await.unwrap(), 2);
    assert_eq!(
        ids(&q.list_records(every.clone()).await.unwrap()),
        newest_first[..4].to_vec()
    );
    q.prune_records(received + 1_000_000, 100).await.unwrap();
    assert!(q.list_records(every).await.unwrap().is_empty());
}

async fn rules_versions_are_kept_once(backend: Backend) {
    let store = Store::new(backend);
    let q = store.open().await;
    let files = |texts: &[(&str, &str)]| -> Vec<(String, Arc<str>)> {
        texts
            .iter()
            .map(|(n, t)| (n.to_string(), Arc::from(*t)))
            .collect()
    };
    assert_eq!(q.get_rules_version("h1".into()).await.unwrap(), None);
    q.put_rules_version(
        "h1".into(),
        files(&[("a.hook", "x \"y\"\n"), ("b.hook", "z")]),
    )
    .await
    .unwrap();
    q.put_rules_version("h1".into(), files(&[("ignored", "")]))
        .await
        .unwrap();
    assert_eq!(
        q.get_rules_version("h1".into()).await.unwrap().as_deref(),
        Some(r#"[["a.hook","x \"y\"\n"],["b.hook","z"]]"#)
    );

    // A large version comes back byte for byte; SQLite keeps it compressed, and still reads a
    // version an earlier gateway stored as text.
    let rules: String = (0..20_000)
        .map(|i| {
            format!("rule \"pipeline {i}\" {{ from org when $.ref == \"refs/heads/main\" }}\n")
        })
        .collect();
    let large = serde_json::to_string(&[("rules.hook", &rules)]).unwrap();
    q.put_rules_version("h2".into(), files(&[("rules.hook", &rules)]))
        .await
        .unwrap();
    assert_eq!(
        q.get_rules_version("h2".into()).await.unwrap(),
        Some(large.clone())
    );
    if backend == Backend::Sqlite {
        drop(q);
        let file = sqlite_file(&store);
        let conn = rusqlite::Connection::open(file).unwrap();
        let (kind, stored): (String, i64) = conn
            .query_row(
                "SELECT typeof(files), length(files) FROM rules_versions WHERE hash = 'h2'",
                [],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .unwrap();
        assert_eq!(kind, "blob");
        assert!(
            stored * 10 < large.len() as i64,
            "{stored} bytes for {}",
            large.len()
        );
        conn.execute(
            "INSERT INTO rules_versions (hash, created_at, files) VALUES ('old', 0, '[[\"a.hook\",\"y\"]]')",
            [],
        )
        .unwrap();
        // Damaged values: garbage, a frame cut short. Read as absent, with a warning.
        let (_, whole): (String, Vec<u8>) = conn
            .query_row(
                "SELECT typeof(files), files FROM rules_versions WHERE hash = 'h2'",
                [],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .unwrap();
        let cut = whole[..whole.len() / 2].to_vec();
        for (hash, value) in [
            (
                "garbage",
                rusqlite::types::Value::Blob(vec![0x04, 0x22, 0x4d, 0x18, 0xff, 0x00]),
            ),
            ("cut", rusqlite::types::Value::Blob(cut)),
        ] {
            conn.execute(
                "INSERT INTO rules_versions (hash, created_at, files) VALUES (?1, 0, ?2)",
                rusqlite::params![hash, value],
            )
            .unwrap();
        }
        drop(conn);
        let q = store.open().await;
        assert_eq!(
            q.get_rules_version("old".into()).await.unwrap().as_deref(),
            Some("[[\"a.hook\",\"y\"]]")
        );
        assert_eq!(q.get_rules_version("h2".into()).await.unwrap(), Some(large));
        for damaged in ["garbage", "cut"] {
            assert_eq!(
                q.get_rules_version(damaged.into()).await.unwrap(),
                None,
                "{damaged}"
            );
        }
    }
}

async fn targets_report_their_queue_and_last_attempts(backend: Backend) {
    let store = Store::new(backend);
    let q = store.open().await;
    q.enqueue(vec![
        job(JobKind::Notify, "t", None),
        job(JobKind::Notify, "t", None),
    ])
    .await
    .unwrap();
    let claimed = q.claim("t", concurrency(4), 1, MINUTE).await.unwrap();
    let attempt = |status| Attempt {
        attempt: 1,
        started_at: 0,
        duration_ms: 1,
        status: Some(status),
        error: Some(format!("HTTP {status}")),
    };
    q.settle(
        claimed[0].lease(),
        Some(attempt(503)),
        Settle::Retry {
            delay: Duration::from_secs(3600),
        },
    )
    .await
    .unwrap();
    let stats = q.target_stats().await.unwrap();
    assert_eq!(stats.len(), 1);
    let t = &stats[0];
    assert_eq!((t.name.as_str(), t.pending, t.inflight), ("t", 2, 0));
    assert!(t.oldest_pending_at.is_some() && t.next_attempt_at.is_some());
    assert!(t.last_attempt_at.is_some() && t.last_delivery_at.is_none());
    assert_eq!(t.last_error.as_deref(), Some("HTTP 503"));
    let claimed = q.claim("t", concurrency(4), 1, MINUTE).await.unwrap();
    assert_eq!(q.target_stats().await.unwrap()[0].inflight, 1);
    let mut ok = attempt(200);
    ok.error = None;
    q.settle(claimed[0].lease(), Some(ok), Settle::Ack)
        .await
        .unwrap();
    let t = &q.target_stats().await.unwrap()[0];
    assert!(t.last_delivery_at.is_some(), "{t:?}");
    assert_eq!(
        t.last_error.as_deref(),
        Some("HTTP 503"),
        "the last error stays, with its time"
    );
}

async fn stats_count_jobs_by_state_and_pending_ones_by_target(backend: Backend) {
    let store = Store::new(backend);
    let q = store.open().await;
    let mut jobs = vec![job(JobKind::Notify, "b", None); 3];
    jobs.extend(vec![job(JobKind::Notify, "a", None); 3]);
    q.enqueue(jobs).await.unwrap();
    // "a": one delivered, one in flight, one pending; "b": one dead letter, two pending.
    let a = q.claim("a", concurrency(4), 2, MINUTE).await.unwrap();
    q.settle(a[0].lease(), None, Settle::Ack).await.unwrap();
    let b = q.claim("b", concurrency(4), 1, MINUTE).await.unwrap();
    q.settle(b[0].lease(), None, Settle::DeadLetter)
        .await
        .unwrap();
    let stats = q.stats().await.unwrap();
    assert_eq!(
        (stats.pending, stats.inflight, stats.done, stats.dead),
        (3, 1, 1, 1)
    );
    assert_eq!(
        stats.pending_by_target,
        vec![("a".to_string(), 1), ("b".to_string(), 2)],
        "pending jobs per target, in the order of their names"
    );
}

async fn record_bodies_come_back_byte_for_byte_whatever_their_size_and_content(backend: Backend) {
    // SQLite stores large bodies lz4-compressed, PostgreSQL as they are: either way the bytes come back.
    let store = Store::new(backend);
    let q = store.open().await;
    let push = std::fs::read(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/payloads/github/push-tag-deleted-octokit.json"
    ))
    .unwrap();
    let mut rng = fastrand::Rng::with_seed(7);
    let noise: Vec<u8> = (0..4096).map(|_| rng.u8(..)).collect();
    // What a compressed body looks like inside (a size, then lz4 data), sent as a raw body.
    let mut lookalike = 7324u32.to_le_bytes().to_vec();
    lookalike.extend(std::iter::repeat_n(b'\xf0', 600));
    let bodies: Vec<Vec<u8>> = vec![
        b"{}".to_vec(),
        push.clone(),
        noise,
        lookalike,
        vec![b'a'; 1 << 20],
    ];
    let day = Duration::from_secs(86_400);
    let mut stored = Vec::new();
    for (i, body) in bodies.iter().enumerate() {
        let mut r = record("acme", Outcome::Rejected, 0);
        r.request.as_mut().unwrap().body = Some(bytes::Bytes::from(body.clone()));
        let seen = Some(("acme".to_string(), format!("body-{i}")));
        q.accept_recorded(
            seen,
            day,
            vec![job(JobKind::Notify, "t", None)],
            Some(Arc::new(r.clone())),
        )
        .await
        .unwrap();
        stored.push(r.id.clone());
        // And through the path that stores the records of other outcomes.
        let mut other = record("acme", Outcome::NoMatch, 200);
        other.request.as_mut().unwrap().body = Some(bytes::Bytes::from(body.clone()));
        q.store_records(vec![Arc::new(other.clone())])
            .await
            .unwrap();
        if let Some(got) = q.get_record(other.id.clone()).await.unwrap() {
            // SQLite keeps non-accepted records in memory only; PostgreSQL stores them.
            assert_eq!(
                got.request.unwrap().body.as_deref(),
                Some(&body[..]),
                "body {i} (stored)"
            );
        }
    }
    for (id, body) in stored.iter().zip(&bodies) {
        let got = q.get_record(id.clone()).await.unwrap().expect("stored");
        let got = got.request.unwrap().body.expect("a body");
        assert_eq!(got.len(), body.len());
        assert!(
            got[..] == body[..],
            "a body of {} bytes came back changed",
            body.len()
        );
    }
    let listed = q
        .list_records(Filter {
            limit: 100,
            ..Filter::default()
        })
        .await
        .unwrap();
    let push_back = listed
        .iter()
        .filter_map(|r| r.request.as_ref()?.body.as_deref())
        .filter(|b| *b == &push[..])
        .count();
    assert!(push_back >= 1, "listing decodes bodies too");
}

/// The database file of a SQLite store.
fn sqlite_file(store: &Store) -> std::path::PathBuf {
    std::path::Path::new(&store.spec()).join("hookgate.db")
}

/// A SQLite queue, its database file, and a read-only connection watching that file.
async fn sqlite_watched() -> (Store, Queue, std::path::PathBuf, rusqlite::Connection) {
    let store = Store::new(Backend::Sqlite);
    let q = store.open().await;
    let file = sqlite_file(&store);
    let watch =
        rusqlite::Connection::open_with_flags(&file, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
            .unwrap();
    (store, q, file, watch)
}

/// The SQLite queue's commit discipline, watched through a second connection on the same file: an
/// accepted delivery and an enqueue (what a 202 promises) are committed by the time they are answered;
/// a claim and a settle are answered at once and committed soon after — on their own within the commit
/// delay, or with the next durable write, whichever comes first.
#[tokio::test]
async fn sqlite_commits_promises_before_answering_and_claims_and_settles_soon_after() {
    use rusqlite::OptionalExtension;
    let (_store, q, _file, watch) = sqlite_watched().await;
    let state = |id: i64| -> Option<String> {
        watch
            .query_row("SELECT state FROM jobs WHERE id = ?1", [id], |r| r.get(0))
            .optional()
            .unwrap()
    };

    let seen = Some(("acme".to_string(), "d-1".to_string()));
    let Accepted::Enqueued(ids) = q
        .accept(seen, MINUTE, vec![job(JobKind::Notify, "t", None)])
        .await
        .unwrap()
    else {
        panic!("a new delivery is accepted")
    };
    assert_eq!(
        state(ids[0]).as_deref(),
        Some("pending"),
        "the accept is committed"
    );

    let claimed = q.claim("t", concurrency(4), 1, MINUTE).await.unwrap();
    assert_eq!(claimed.len(), 1);
    let deadline = Instant::now() + WAIT;
    while state(ids[0]).as_deref() != Some("inflight") {
        assert!(Instant::now() < deadline, "the claim was never committed");
        tokio::time::sleep(Duration::from_millis(1)).await;
    }

    q.settle(claimed[0].lease(), None, Settle::Ack)
        .await
        .unwrap();
    let more = q
        .enqueue(vec![job(JobKind::Notify, "t", None)])
        .await
        .unwrap();
    assert_eq!(
        state(more[0]).as_deref(),
        Some("pending"),
        "the enqueue is committed"
    );
    assert_eq!(
        state(ids[0]).as_deref(),
        Some("done"),
        "the settle answered before the enqueue was committed with it at the latest"
    );
}

/// SQLite keeps the latest delivery ids in memory and in an append-only table, and folds them into
/// the keyed table every few thousand: deduplication holds on either side of a fold, and across
/// reopening the queue (the recent ids are read back).
#[tokio::test]
async fn sqlite_deduplicates_across_folds_of_recent_ids_and_reopening() {
    let store = Store::new(Backend::Sqlite);
    let day = Duration::from_secs(86_400);
    let id = |i: usize| {
        Some((
            "acme".to_string(),
            format!("{:08x}-{i}", i.wrapping_mul(2_654_435_761)),
        ))
    };
    let n = 5_000; // more than one fold's worth (4,096)
    let q = Arc::new(store.open().await);
    let all = (0..n).map(|i| {
        let q = q.clone();
        async move {
            q.accept(id(i), day, vec![job(JobKind::Notify, "t", None)])
                .await
        }
    });
    let accepted = futures_util::future::join_all(all).await;
    assert!(
        accepted
            .iter()
            .all(|a| matches!(a, Ok(Accepted::Enqueued(_)))),
        "every new id is accepted"
    );
    let mut q = Some(q);
    for (round, when) in ["as accepted", "reopened"].into_iter().enumerate() {
        let q = match q.take() {
            Some(q) => q,
            None => Arc::new(store.open().await),
        };
        for i in [0, 1, 2_000, 4_095, 4_096, 4_999] {
            assert_eq!(
                q.accept(id(i), day, vec![job(JobKind::Notify, "t", None)])
                    .await
                    .unwrap(),
                Accepted::Duplicate,
                "{when}: delivery {i}"
            );
        }
        assert!(matches!(
            q.accept(id(n + round), day, vec![]).await.unwrap(),
            Accepted::Enqueued(_)
        ));
        assert_eq!(q.stats().await.unwrap().pending, n as u64, "{when}");
    }
}

/// When the SQLite queue cannot sync its write-ahead log, a 202 cannot be promised: the accept that
/// needed the sync fails with the reason, and so does everything after it, the readiness ping
/// included, until the gateway restarts (a later sync that succeeds would prove nothing).
#[tokio::test]
async fn sqlite_stops_when_the_wal_cannot_be_synced() {
    let store = Store::new(Backend::Sqlite);
    let q = store.open().await;
    let day = Duration::from_secs(86_400);
    let accept = |i: u32| {
        q.accept(
            Some(("acme".to_string(), format!("d-{i}"))),
            day,
            vec![job(JobKind::Notify, "t", None)],
        )
    };
    assert!(matches!(accept(1).await.unwrap(), Accepted::Enqueued(_)));
    q.ping().await.unwrap();
    let wal = std::path::Path::new(&store.spec()).join("hookgate.db-wal");
    std::fs::remove_file(&wal).unwrap();
    let error = accept(2).await.unwrap_err().to_string();
    assert!(
        error.contains("cannot sync") && error.contains("restart the gateway"),
        "{error}"
    );
    let ping = q.ping().await.unwrap_err().to_string();
    assert!(ping.contains("cannot sync"), "{ping}");
    assert!(
        q.enqueue(vec![job(JobKind::Notify, "t", None)])
            .await
            .is_err()
    );
    assert!(accept(3).await.is_err(), "still stopped");
}

/// `stats` counts done and dead jobs from counters the database keeps (migration 8), not by reading
/// every job: after every kind of change — acks, dead letters, retries, a requeue, checks merging
/// into a pending one, a pruning, a reopening — they agree with a count of the rows themselves.
#[tokio::test]
async fn sqlite_counts_jobs_by_state_as_the_rows_do() {
    use hookgate::queue::Settle;
    let (store, q, file, watch) = sqlite_watched().await;
    async fn agree(q: &Queue, watch: &rusqlite::Connection, when: &str) -> (u64, u64, u64, u64) {
        let s = q.stats().await.unwrap();
        let rows = |state: &str| -> u64 {
            watch
                .query_row("SELECT COUNT(*) FROM jobs WHERE state = ?1", [state], |r| {
                    r.get::<_, i64>(0)
                })
                .unwrap() as u64
        };
        let counted = (
            rows("pending"),
            rows("inflight"),
            rows("done"),
            rows("dead"),
        );
        assert_eq!((s.pending, s.inflight, s.done, s.dead), counted, "{when}");
        counted
    }
    let notify = |n: usize| (0..n).map(|_| job(JobKind::Notify, "t", None)).collect();
    q.enqueue(notify(10)).await.unwrap();
    assert_eq!(agree(&q, &watch, "enqueued").await, (10, 0, 0, 0));

    let claimed = q.claim("t", concurrency(10), 10, MINUTE).await.unwrap();
    assert_eq!(agree(&q, &watch, "claimed").await, (0, 10, 0, 0));
    let retry = || Settle::Retry {
        delay: Duration::ZERO,
    };
    let settles = [
        Settle::Ack,
        Settle::Ack,
        Settle::Ack,
        Settle::DeadLetter,
        Settle::DeadLetter,
    ]
    .into_iter()
    .chain(std::iter::repeat_with(retry).take(5));
    let outcomes = claimed
        .iter()
        .zip(settles)
        .map(|(j, s)| (j.lease(), None, s))
        .collect();
    assert!(q.settle_many(outcomes).await.iter().all(Result::is_ok));
    assert_eq!(agree(&q, &watch, "settled").await, (5, 0, 3, 2));

    let dead = claimed[3].id;
    q.requeue(dead).await.unwrap();
    assert_eq!(agree(&q, &watch, "requeued").await, (6, 0, 3, 1));

    // A claimed check whose key got a pending successor merges into it when retried: it is done.
    q.enqueue(vec![job(JobKind::Check, "c", Some("k"))])
        .await
        .unwrap();
    let check = q.claim("c", concurrency(1), 1, MINUTE).await.unwrap();
    q.enqueue(vec![job(JobKind::Check, "c", Some("k"))])
        .await
        .unwrap();
    q.settle(check[0].lease(), None, retry()).await.unwrap();
    assert_eq!(agree(&q, &watch, "merged").await, (7, 0, 4, 1));

    assert_eq!(q.prune(now_ms() + 60_000).await.unwrap(), 5);
    assert_eq!(agree(&q, &watch, "pruned").await, (7, 0, 0, 0));
    q.close().await.unwrap();
    let q = store.open().await;
    assert_eq!(agree(&q, &watch, "reopened").await, (7, 0, 0, 0));
    // Counters set wrong by hand while the gateway was stopped are recounted at the next start.
    q.close().await.unwrap();
    rusqlite::Connection::open(&file)
        .unwrap()
        .execute("UPDATE job_counts SET n = 99", [])
        .unwrap();
    let q = store.open().await;
    assert_eq!(agree(&q, &watch, "recounted").await, (7, 0, 0, 0));
}

/// Pruning goes in steps of a few hundred jobs (accepts go on between them), and the steps together
/// prune everything due: here 12,000 done jobs, many steps' worth, and none created after the cutoff.
#[tokio::test]
async fn sqlite_prunes_in_steps_all_that_is_due() {
    use hookgate::queue::Settle;
    let store = Store::new(Backend::Sqlite);
    let q = store.open().await;
    let n = 12_000;
    q.enqueue((0..n).map(|_| job(JobKind::Notify, "t", None)).collect())
        .await
        .unwrap();
    let claimed = q
        .claim("t", concurrency(u32::MAX), n, MINUTE)
        .await
        .unwrap();
    assert_eq!(claimed.len(), n);
    let acks = claimed
        .iter()
        .map(|j| (j.lease(), None, Settle::Ack))
        .collect();
    assert!(q.settle_many(acks).await.iter().all(Result::is_ok));
    // Created after the cutoff: a done job stays, as does a pending one.
    let cutoff = now_ms();
    while now_ms() <= cutoff {
        std::hint::spin_loop();
    }
    q.enqueue(vec![job(JobKind::Notify, "t", None); 2])
        .await
        .unwrap();
    let late = q.claim("t", concurrency(1), 1, MINUTE).await.unwrap();
    q.settle(late[0].lease(), None, Settle::Ack).await.unwrap();
    assert_eq!(q.prune(cutoff + 1).await.unwrap(), n as u64);
    let s = q.stats().await.unwrap();
    assert_eq!(
        (s.pending, s.done),
        (1, 1),
        "what was created after the cutoff stays"
    );
}

/// Delivery ids are pruned a span of ids at a time, in key order, and the spans together cover them
/// all: 50,000 ids written while the gateway was stopped (more than two spans), every other one seen
/// before the cutoff; exactly those go, and a delivery whose id went is accepted again.
#[tokio::test]
async fn sqlite_prunes_seen_delivery_ids_span_by_span() {
    let (store, q, file, watch) = sqlite_watched().await;
    q.close().await.unwrap();
    let old = now_ms() - 3_600_000;
    let mut conn = rusqlite::Connection::open(&file).unwrap();
    let tx = conn.transaction().unwrap();
    for i in 0..50_000i64 {
        tx.execute(
            "INSERT INTO deliveries (source, delivery, seen_at) VALUES (?1, ?2, ?3)",
            rusqlite::params![
                if i % 3 == 0 { "acme" } else { "zeta" },
                format!("{:08x}", i.wrapping_mul(2_654_435_761) % 4_294_967_296),
                if i % 2 == 0 {
                    old
                } else {
                    now_ms() + 3_600_000
                }
            ],
        )
        .unwrap();
    }
    tx.commit().unwrap();
    drop(conn);
    let q = store.open().await;
    q.prune(now_ms()).await.unwrap();
    q.ping().await.unwrap(); // Pruning is answered before its commit; a ping waits for one.
    let left = |clause: &str| -> i64 {
        watch
            .query_row(
                &format!("SELECT COUNT(*) FROM deliveries WHERE {clause}"),
                [],
                |r| r.get(0),
            )
            .unwrap()
    };
    assert_eq!(left("seen_at < unixepoch() * 1000"), 0, "every old id went");
    assert_eq!(left("true"), 25_000, "every other stayed");
    let first_old = format!("{:08x}", 0);
    let seen = Some(("acme".to_string(), first_old));
    assert!(matches!(
        q.accept(seen, Duration::from_secs(86_400), vec![])
            .await
            .unwrap(),
        Accepted::Enqueued(_)
    ));
}
