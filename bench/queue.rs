//! Durable enqueue throughput with group commit, and delivery throughput to a loopback sink
//! (`cargo bench --bench queue`), for each backend: a real SQLite file in a temporary directory, and
//! a real PostgreSQL started by the test harness (`tests/support/pg.rs`; default settings, so
//! `fsync` and `synchronous_commit` on). `cargo bench --bench queue -- sqlite` (or `postgres`) runs
//! one.

#[path = "../tests/support/mod.rs"]
mod support;

use std::sync::Arc;
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;

use hookgate::dispatch::{DispatchConfig, Dispatcher};
use hookgate::queue::{JobKind, NewJob, QueueBackend};
use support::pg::{Backend, Store};

fn job(i: usize) -> NewJob {
    NewJob {
        kind: JobKind::Notify,
        target: "t".into(),
        key: None,
        source: "acme".into(),
        event: Some("push".into()),
        delivery: format!("d-{i}"),
        rule: "sync app on push to main".into(),
        action: 0,
        body: format!(r#"{{"Kind":"git","Source":{{"URL":"git@github.com:acme/app-{i}.git","Branch":"main"}}}}"#).into_bytes(),
        headers: vec![("content-type".into(), "application/json".into())],
        sign_with: None,
    }
}

fn main() {
    let quick = !std::env::args().any(|a| a == "--bench");
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let only = std::env::args().find(|a| a == "sqlite" || a == "postgres");
    for backend in [Backend::Sqlite, Backend::Postgres] {
        let name = match backend {
            Backend::Sqlite => "sqlite",
            Backend::Postgres => "postgres",
        };
        if only.as_deref().is_some_and(|o| o != name) {
            continue;
        }
        println!("{name}:");
        runtime.block_on(run(backend, quick));
    }
}

async fn run(backend: Backend, quick: bool) {
    {
        let per_run = if quick { 640 } else { 40_000 };
        for producers in [1usize, 16, 64] {
            let store = Store::new(backend);
            let queue = Arc::new(store.open().await);
            let total = if producers == 1 {
                per_run / 10
            } else {
                per_run
            };
            let each = total / producers;
            let start = Instant::now();
            let tasks: Vec<_> = (0..producers)
                .map(|p| {
                    let q = queue.clone();
                    tokio::spawn(async move {
                        for i in 0..each {
                            // One job per call, awaited: each request waits for its own durability.
                            q.enqueue(vec![job(p * each + i)]).await.unwrap();
                        }
                    })
                })
                .collect();
            for t in tasks {
                t.await.unwrap();
            }
            let elapsed = start.elapsed();
            println!(
                "enqueue, {producers:>2} producers: {:>8.0} durable enqueues/s ({} jobs in {:.2} s)",
                (each * producers) as f64 / elapsed.as_secs_f64(),
                each * producers,
                elapsed.as_secs_f64()
            );
        }

        let jobs = if quick { 500 } else { 20_000 };
        let sink = support::Sink::always(200).await;
        let store = Store::new(backend);
        let queue = Arc::new(store.open().await);
        for chunk in (0..jobs).collect::<Vec<_>>().chunks(500) {
            queue
                .enqueue(chunk.iter().map(|&i| job(i)).collect())
                .await
                .unwrap();
        }
        let rules = support::compile(
            &format!(
                "secret s = env(\"S\")\nsource acme: github {{ secret s }}\ntarget t {{ post \"{}\" concurrency 64 }}\nrule \"r\" {{ from acme notify t }}\n",
                sink.url("/deliver")
            ),
            &[],
        );
        let dispatcher = Dispatcher::new(
            queue.clone(),
            Arc::new(ArcSwap::from_pointee(rules)),
            DispatchConfig::default(),
        );
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let start = Instant::now();
        let run = tokio::spawn(dispatcher.run(async move {
            let _ = stopped.await;
        }));
        loop {
            let stats = queue.stats().await.unwrap();
            if stats.done as usize >= jobs {
                break;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let elapsed = start.elapsed();
        let _ = stop.send(());
        run.await.unwrap();
        assert_eq!(sink.received().len(), jobs);
        println!(
            "deliver to a loopback sink: {:>8.0} deliveries/s ({jobs} jobs in {:.2} s, concurrency 64)",
            jobs as f64 / elapsed.as_secs_f64(),
            elapsed.as_secs_f64()
        );

        // The dispatcher asks for due targets up to every 20 ms while work arrives; with a backlog
        // (a target down or rate-limited) that question must not cost more as the backlog grows.
        for backlog in [1_000usize, if quick { 5_000 } else { 100_000 }] {
            let store = Store::new(backend);
            let queue = store.open().await;
            for chunk in (0..backlog).collect::<Vec<_>>().chunks(1_000) {
                let jobs = chunk
                    .iter()
                    .map(|&i| NewJob {
                        target: format!("t{}", i % 3),
                        ..job(i)
                    })
                    .collect();
                queue.enqueue(jobs).await.unwrap();
            }
            let mut times: Vec<Duration> = Vec::new();
            for _ in 0..if quick { 20 } else { 200 } {
                let start = Instant::now();
                assert_eq!(queue.due_targets().await.unwrap().len(), 3);
                times.push(start.elapsed());
            }
            times.sort();
            println!(
                "due targets, {backlog:>6} pending jobs on 3 targets: median {:>7.1} us (including the round trip to the queue and its commit)",
                times[times.len() / 2].as_secs_f64() * 1e6
            );
        }
    }
}
