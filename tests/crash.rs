//! A process killed with SIGKILL in the middle of delivering loses nothing it had enqueued.
//!
//! The test re-runs this test binary as a child process (`crash_child`, which does nothing unless
//! `HOOKGATE_CRASH_DIR` is set): the child enqueues N jobs durably, says so, and delivers them to a
//! sink owned by the parent. The parent kills it with SIGKILL mid-delivery, starts a new child on the
//! same data directory, and waits until the sink has seen every job at least once.

mod support;

use std::collections::BTreeSet;
use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;

use hookgate::dispatch::{DispatchConfig, Dispatcher};
use hookgate::queue::sqlite::SqliteQueue;
use hookgate::queue::{JobKind, NewJob, QueueBackend};
use support::{Reply, Sink, compile};

const JOBS: usize = 200;

/// The child's side. Without `HOOKGATE_CRASH_DIR` (a normal test run) it returns at once.
#[test]
fn crash_child() {
    let Ok(dir) = std::env::var("HOOKGATE_CRASH_DIR") else {
        return;
    };
    let sink = std::env::var("HOOKGATE_CRASH_SINK").unwrap();
    let enqueue = std::env::var("HOOKGATE_CRASH_PHASE").unwrap() == "enqueue";
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async move {
        let queue = Arc::new(SqliteQueue::open(std::path::Path::new(&dir)).unwrap());
        let rules = compile(
            &format!(
                "secret s = env(\"S\")\nsource a: github {{ secret s }}\ntarget t {{ post \"{sink}/deliver\" concurrency 4 retry 100 backoff 10ms..50ms }}\nrule \"r\" {{ from a notify t }}\n"
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
        let dispatcher = Dispatcher::new(queue, Arc::new(ArcSwap::from_pointee(rules)), DispatchConfig::default());
        dispatcher.run(std::future::pending()).await;
    });
}

fn spawn_child(dir: &std::path::Path, sink: &str, phase: &str) -> Child {
    Command::new(std::env::current_exe().unwrap())
        .args(["crash_child", "--exact", "--nocapture", "--test-threads=1"])
        .env("HOOKGATE_CRASH_DIR", dir)
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
async fn sigkill_mid_delivery_loses_nothing() {
    // Each delivery takes a while, so the kill lands with work in flight and work left.
    let sink = Sink::start(|_, _| Reply {
        delay: Duration::from_millis(20),
        ..Reply::status(200)
    })
    .await;
    let dir = tempfile::tempdir().unwrap();
    let base = format!("http://{}", sink.addr);

    let mut child = spawn_child(dir.path(), &base, "enqueue");
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
    assert!(
        sink.wait_for(JOBS / 4, Duration::from_secs(30)).await,
        "no deliveries started"
    );
    child.kill().unwrap(); // SIGKILL: no shutdown, no cleanup.
    child.wait().unwrap();
    let before = distinct(&sink);
    assert!(
        before.len() < JOBS,
        "killed too late to test anything: all {JOBS} were delivered"
    );
    eprintln!(
        "killed after {} of {JOBS} distinct deliveries",
        before.len()
    );

    let mut child = spawn_child(dir.path(), &base, "resume");
    let deadline = Instant::now() + Duration::from_secs(60);
    while distinct(&sink).len() < JOBS && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    child.kill().unwrap();
    child.wait().unwrap();

    let all = distinct(&sink);
    let missing: Vec<usize> = (0..JOBS)
        .filter(|i| !all.contains(format!("job-{i}").as_bytes()))
        .collect();
    assert!(missing.is_empty(), "never delivered: {missing:?}");
    assert!(sink.received().len() >= JOBS);

    // And the queue accounts for every job: none dead or lost. A job whose delivery landed just before
    // the second kill, with its acknowledgement not yet committed, is pending again (to be delivered
    // once more: at-least-once).
    let queue = SqliteQueue::open(dir.path()).unwrap();
    let stats = queue.stats().await.unwrap();
    assert_eq!((stats.inflight, stats.dead), (0, 0), "{stats:?}");
    assert_eq!(stats.done + stats.pending, JOBS as u64, "{stats:?}");
}
