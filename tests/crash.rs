//! A process killed with SIGKILL in the middle of delivering loses nothing it had enqueued — on the
//! embedded SQLite queue and on PostgreSQL.
//!
//! The test re-runs this test binary as a child process (`crash_child`, which does nothing unless
//! `HOOKGATE_CRASH_QUEUE` is set): the child opens the queue that variable names with `Queue::open`
//! (a directory, or a `postgres://` URL), enqueues N jobs durably, says so, and delivers them to a
//! sink owned by the parent. The sink holds the requests that arrive after the first quarter, so the
//! parent's SIGKILL lands with deliveries in flight and unanswered. The parent then starts a new
//! child on the same queue and waits until the sink has seen every job at least once.
//!
//! How the jobs in flight at the kill come back differs: SQLite returns them to pending when the new
//! child opens the queue (one process owns a data directory); PostgreSQL cannot tell a dead
//! replica's claims from a live one's, so they come back when their claims expire.

mod support;

use std::collections::BTreeSet;
use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use tokio::sync::Notify;

use hookgate::dispatch::{DispatchConfig, Dispatcher};
use hookgate::queue::{JobKind, NewJob, Queue, QueueBackend};
use support::pg::{Backend, Store};
use support::{Reply, Sink, compile};

const JOBS: usize = 200;
/// The target's concurrency: how many deliveries are in flight when the kill lands.
const CONCURRENCY: usize = 4;

/// The child's side. Without `HOOKGATE_CRASH_QUEUE` (a normal test run) it returns at once.
#[test]
fn crash_child() {
    let Ok(spec) = std::env::var("HOOKGATE_CRASH_QUEUE") else {
        return;
    };
    let sink = std::env::var("HOOKGATE_CRASH_SINK").unwrap();
    let enqueue = std::env::var("HOOKGATE_CRASH_PHASE").unwrap() == "enqueue";
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async move {
        let queue = Arc::new(Queue::open(&spec).await.unwrap());
        // `timeout 1s` and a 1 s lease margin: on PostgreSQL the jobs in flight at the kill come back only
        // when their claims expire, `3 × timeout + margin` after they were claimed; the defaults
        // (10 s, 60 s) would make that 90 s. (SQLite returns them at once on reopening.)
        let rules = compile(
            &format!(
                "secret s = env(\"S\")\nsource a: github {{ secret s }}\ntarget t {{ post \"{sink}/deliver\" concurrency {CONCURRENCY} timeout 1s retry 100 backoff 10ms..50ms }}\nrule \"r\" {{ from a notify t }}\n"
            ),
            &[],
        );
        if enqueue {
            for i in 0..JOBS {
                let job = NewJob {
                    kind: JobKind::Notify,
                    target: "t".into(),
                    key: None,
                    source: "a".into(),
                    event: None,
                    delivery: format!("d-{i}"),
                    rule: "r".into(),
                    action: 0,
                    body: format!("job-{i}").into_bytes(),
                    headers: vec![],
                    sign_with: None,
                };
                queue.enqueue(vec![job]).await.unwrap();
            }
            println!("ENQUEUED");
        }
        let config = DispatchConfig {
            lease_margin: Duration::from_secs(1),
            ..DispatchConfig::default()
        };
        let dispatcher = Dispatcher::new(queue, Arc::new(ArcSwap::from_pointee(rules)), config);
        dispatcher.run(std::future::pending()).await;
    });
}

fn spawn_child(spec: &str, sink: &str, phase: &str) -> Child {
    Command::new(std::env::current_exe().unwrap())
        .args(["crash_child", "--exact", "--nocapture", "--test-threads=1"])
        .env("HOOKGATE_CRASH_QUEUE", spec)
        .env("HOOKGATE_CRASH_SINK", sink)
        .env("HOOKGATE_CRASH_PHASE", phase)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap()
}

fn distinct(sink: &Sink) -> BTreeSet<Vec<u8>> {
    sink.received().into_iter().map(|r| r.body).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_mid_delivery_loses_nothing_sqlite() {
    sigkill_mid_delivery_loses_nothing(Backend::Sqlite).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_mid_delivery_loses_nothing_postgres() {
    sigkill_mid_delivery_loses_nothing(Backend::Postgres).await
}

async fn sigkill_mid_delivery_loses_nothing(backend: Backend) {
    // Each delivery takes a while; from the first quarter on, the sink holds every request until the
    // kill, so the kill lands with work in flight (sent, never answered) and work left.
    let held = JOBS / 4;
    let open = Arc::new(AtomicBool::new(false));
    let gate = Arc::new(Notify::new());
    let (o, g) = (open.clone(), gate.clone());
    let sink = Sink::start(move |n, _| Reply {
        delay: Duration::from_millis(20),
        gate: (n >= held && !o.load(Ordering::SeqCst)).then(|| g.clone()),
        ..Reply::status(200)
    })
    .await;
    let store = Store::new(backend);
    let spec = store.spec();
    let base = format!("http://{}", sink.addr);

    let mut child = spawn_child(&spec, &base, "enqueue");
    let stdout = child.stdout.take().unwrap();
    let enqueued = tokio::task::spawn_blocking(move || {
        BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
            .any(|line| line.contains("ENQUEUED"))
    });
    assert!(
        enqueued.await.unwrap(),
        "the child did not finish enqueueing"
    );
    // Every slot busy with a held request.
    assert!(
        sink.wait_for(held + CONCURRENCY, Duration::from_secs(30))
            .await,
        "no deliveries started"
    );
    child.kill().unwrap(); // SIGKILL: no shutdown, no cleanup.
    child.wait().unwrap();
    // Requests still held belong to the dead child; whatever arrives from now on is answered.
    open.store(true, Ordering::SeqCst);
    gate.notify_waiters();
    let before = distinct(&sink);
    // Sent and never answered: these must be sent again.
    let at_kill = sink.received().len();
    let unanswered: BTreeSet<Vec<u8>> = sink.received()[held..]
        .iter()
        .map(|r| r.body.clone())
        .collect();
    assert!(
        before.len() < JOBS,
        "killed too late to test anything: all {JOBS} were delivered"
    );
    eprintln!(
        "{backend:?}: killed after {} of {JOBS} distinct deliveries",
        before.len()
    );

    let mut child = spawn_child(&spec, &base, "resume");
    // On PostgreSQL the jobs the dead child held wait for their claims to expire (63 s, see the
    // child's rules) before anyone delivers them again.
    let deadline = Instant::now()
        + match backend {
            Backend::Sqlite => Duration::from_secs(60),
            Backend::Postgres => Duration::from_secs(150),
        };
    let resent = |sink: &Sink| {
        let after: BTreeSet<Vec<u8>> = sink.received()[at_kill..]
            .iter()
            .map(|r| r.body.clone())
            .collect();
        unanswered.intersection(&after).count()
    };
    while (distinct(&sink).len() < JOBS || resent(&sink) < unanswered.len())
        && Instant::now() < deadline
    {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    if backend == Backend::Postgres {
        // The database is shared, so the parent can watch it while the child runs: wait until every
        // job is settled, the held ones included (their requests reached the sink before the kill
        // but were never answered, so they must be claimed and delivered again). Unlike SQLite, a
        // reopened PostgreSQL queue does not return claims to pending, so a kill before that would
        // leave fresh claims of the second child behind.
        let queue = store.open().await;
        loop {
            let stats = queue.stats().await.unwrap();
            if stats.done == JOBS as u64 || Instant::now() > deadline {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    child.kill().unwrap();
    child.wait().unwrap();

    let all = distinct(&sink);
    let missing: Vec<usize> = (0..JOBS)
        .filter(|i| !all.contains(format!("job-{i}").as_bytes()))
        .collect();
    assert!(missing.is_empty(), "never delivered: {missing:?}");
    assert!(sink.received().len() >= JOBS);
    assert_eq!(
        resent(&sink),
        unanswered.len(),
        "requests in flight at the kill were not sent again"
    );

    // And the queue accounts for every job: none dead or lost. A job whose delivery landed just before
    // the second kill, with its acknowledgement not yet committed, is pending again (to be delivered
    // once more: at-least-once).
    let queue = store.open().await;
    let stats = queue.stats().await.unwrap();
    assert_eq!((stats.inflight, stats.dead), (0, 0), "{stats:?}");
    assert_eq!(stats.done + stats.pending, JOBS as u64, "{stats:?}");
    queue.close().await.unwrap();
}
