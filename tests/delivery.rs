//! Durable delivery end to end: a real queue, the dispatcher, and loopback HTTP sinks. Every test runs
//! against both backends: the embedded SQLite queue and PostgreSQL (a real server, `support::pg`).

mod support;

use std::sync::Arc;
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use serde_json::json;
use tokio::sync::{Notify, oneshot};

use hookgate::dispatch::{DispatchConfig, Dispatcher};
use hookgate::queue::{JobKind, JobState, NewJob, Queue, QueueBackend};
use hookgate::ruleset::RuleSet;
use support::pg::{Backend, Store};
use support::{Reply, Sink, compile};

const WAIT: Duration = Duration::from_secs(10);

struct Running {
    queue: Arc<Queue>,
    stop: oneshot::Sender<()>,
    done: tokio::task::JoinHandle<()>,
    wake: Arc<Notify>,
}

impl Running {
    async fn enqueue(&self, jobs: Vec<NewJob>) -> Vec<i64> {
        let ids = self.queue.enqueue(jobs).await.unwrap();
        self.wake.notify_one();
        ids
    }

    async fn stop(self) -> Arc<Queue> {
        let _ = self.stop.send(());
        self.done.await.unwrap();
        self.queue
    }
}

fn start(queue: Arc<Queue>, rules: RuleSet, config: DispatchConfig) -> Running {
    let rules = Arc::new(ArcSwap::from_pointee(rules));
    let dispatcher = Dispatcher::new(queue.clone(), rules, config);
    let wake = dispatcher.waker();
    let (stop, stopped) = oneshot::channel::<()>();
    let done = tokio::spawn(dispatcher.run(async move {
        let _ = stopped.await;
    }));
    Running {
        queue,
        stop,
        done,
        wake,
    }
}

fn config() -> DispatchConfig {
    DispatchConfig {
        tick: Duration::from_millis(50),
        ..DispatchConfig::default()
    }
}

fn job(kind: JobKind, target: &str, key: Option<&str>) -> NewJob {
    NewJob {
        // As `jobs_for` makes them: checks carry no body.
        body: if kind == JobKind::Check {
            Vec::new()
        } else {
            br#"{"hello":"world"}"#.to_vec()
        },
        ..support::job(kind, target, key)
    }
}

fn target(sink: &Sink, name: &str, extra: &str) -> String {
    format!(
        "target {name} {{ post \"{}\" {extra} }}\n",
        sink.url(&format!("/{name}"))
    )
}

/// The rules the tests need: a source, and the targets given.
fn rules(targets: &str) -> RuleSet {
    compile(
        &format!(
            "secret s = env(\"S\")\nsource acme: github {{ secret s }}\n{targets}rule \"r\" {{ from acme notify t }}\n"
        ),
        &[],
    )
}

macro_rules! both_backends {
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

both_backends!(
    notify_delivers_the_exact_rendered_body,
    urls_fixed_or_rendered_per_job_reach_their_paths,
    a_500_is_retried_and_delivered_once,
    a_404_is_dead_lettered_without_retry_and_can_be_requeued,
    a_429_waits_for_retry_after,
    a_hanging_target_times_out_and_is_retried,
    retries_are_spent_then_the_job_is_dead,
    fifty_concurrent_checks_while_none_is_in_flight_make_one_delivery,
    a_check_requested_while_one_is_in_flight_runs_once_more_afterwards,
    the_rate_limit_is_honoured,
    a_slow_target_does_not_starve_the_others,
    forward_re_signs_the_original_body,
    a_forward_never_puts_the_senders_headers_before_the_targets_or_the_gateways,
    jobs_of_a_removed_target_are_dead_lettered,
    shutdown_finishes_or_returns_in_flight_deliveries,
);

async fn wait_state(queue: &Queue, id: i64, state: JobState) -> hookgate::queue::Job {
    let deadline = Instant::now() + WAIT;
    loop {
        let (job, _) = queue.get(id).await.unwrap();
        if job.state == state || Instant::now() > deadline {
            assert_eq!(job.state, state, "job {id}: {job:?}");
            return job;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Enqueues a notify to `target` with delivery id `delivery` and waits until it is delivered: proof that
/// the dispatcher has gone back to the queue since, for tests that check nothing else was sent.
async fn deliver_marker(running: &Running, target: &str, delivery: &str) {
    let marker = NewJob {
        delivery: delivery.into(),
        ..job(JobKind::Notify, target, None)
    };
    let id = running.enqueue(vec![marker]).await[0];
    wait_state(&running.queue, id, JobState::Done).await;
}

/// The delivery ids the sink received, in order.
fn received_deliveries(sink: &Sink) -> Vec<String> {
    sink.received()
        .iter()
        .map(|r| r.header("x-hookgate-delivery").unwrap_or("-").to_string())
        .collect()
}

async fn notify_delivers_the_exact_rendered_body(backend: Backend) {
    let sink = Sink::always(200).await;
    let text = format!(
        "secret s = env(\"S\")\nsource acme: github {{ secret s }}\n{}rule \"sync\" {{\n from acme\n on \"push\"\n \
         when $.ref == \"refs/heads/main\"\n notify t {{\"Kind\": \"git\", \"Source\": {{\"URL\": $.repository.ssh_url, \"Branch\": \"main\"}}, \"Note\": \"${{event}} ${{delivery}}\"}}\n}}\n",
        target(&sink, "t", "header \"X-Team\" = \"${source}\"")
    );
    let rules = compile(&text, &[]);
    let payload =
        json!({"ref": "refs/heads/main", "repository": {"ssh_url": "git@github.com:acme/app.git"}});
    let raw = serde_json::to_vec(&payload).unwrap();
    let headers = vec![
        ("X-GitHub-Event".into(), "push".into()),
        ("X-GitHub-Delivery".into(), "abc-123".into()),
    ];
    let event = hookgate::event::Event::new(&rules, 0, None, headers, vec![], payload);
    let outcome = hookgate::eval::evaluate(&rules, &event);
    let jobs = hookgate::dispatch::jobs_for(&rules, &event, &outcome, "abc-123", &raw);
    assert_eq!(jobs.len(), 1);

    let store = Store::new(backend);
    let running = start(Arc::new(store.open().await), rules, config());
    let id = running.enqueue(jobs).await[0];
    assert!(sink.wait_for(1, WAIT).await);
    let got = &sink.received()[0];
    let expected = json!({"Kind": "git", "Source": {"URL": "git@github.com:acme/app.git", "Branch": "main"}, "Note": "push abc-123"});
    assert_eq!(
        got.body,
        serde_json::to_vec(&expected).unwrap(),
        "exactly the rendered body"
    );
    assert_eq!((got.method.as_str(), got.path.as_str()), ("POST", "/t"));
    assert_eq!(got.header("content-type"), Some("application/json"));
    assert_eq!(got.header("x-team"), Some("acme"));
    assert_eq!(got.header("x-hookgate-delivery"), Some("abc-123"));
    let key = got.header("idempotency-key").unwrap();
    // As docs/delivery.md defines it; tests/docs.rs checks the README's walk-through by the same formula.
    assert_eq!(
        key,
        support::idempotency::idempotency_key("acme", "abc-123", "sync", 0)
    );
    let job = wait_state(&running.queue, id, JobState::Done).await;
    assert_eq!((job.attempts, job.last_status), (1, Some(200)));
    running.stop().await;
}

async fn a_500_is_retried_and_delivered_once(backend: Backend) {
    let sink = Sink::start(|n, _| Reply::status(if n == 0 { 500 } else { 200 })).await;
    let store = Store::new(backend);
    let running = start(
        Arc::new(store.open().await),
        rules(&target(&sink, "t", "retry 3 backoff 50ms..100ms")),
        config(),
    );
    let id = running.enqueue(vec![job(JobKind::Notify, "t", None)]).await[0];
    let job = wait_state(&running.queue, id, JobState::Done).await;
    assert_eq!(job.attempts, 2);
    let (_, attempts) = running.queue.get(id).await.unwrap();
    assert_eq!(
        attempts.iter().map(|a| a.status).collect::<Vec<_>>(),
        vec![Some(500), Some(200)]
    );
    assert_eq!(attempts[0].error.as_deref(), Some("HTTP 500"));
    // A later job to the same target goes out after it: nothing more of the first came meanwhile.
    deliver_marker(&running, "t", "later").await;
    assert_eq!(
        received_deliveries(&sink),
        ["d-1", "d-1", "later"],
        "delivered once after the failure, not again"
    );
    let (job, attempts) = running.queue.get(id).await.unwrap();
    assert_eq!(
        (job.state, job.attempts, attempts.len()),
        (JobState::Done, 2, 2)
    );
    let received = sink.received();
    assert_eq!(
        received[0].header("idempotency-key"),
        received[1].header("idempotency-key"),
        "retries keep the key"
    );
    running.stop().await;
}

async fn a_404_is_dead_lettered_without_retry_and_can_be_requeued(backend: Backend) {
    let sink = Sink::start(|n, _| Reply::status(if n == 0 { 404 } else { 200 })).await;
    let store = Store::new(backend);
    let running = start(
        Arc::new(store.open().await),
        rules(&target(&sink, "t", "retry 5 backoff 10ms..20ms")),
        config(),
    );
    let id = running.enqueue(vec![job(JobKind::Notify, "t", None)]).await[0];
    let dead = wait_state(&running.queue, id, JobState::Dead).await;
    assert_eq!((dead.attempts, dead.last_status), (1, Some(404)));
    assert_eq!(dead.last_error.as_deref(), Some("HTTP 404 (not retried)"));
    assert_eq!(sink.received().len(), 1, "no retry");
    assert_eq!(
        running.queue.list(JobState::Dead, 10).await.unwrap().len(),
        1
    );
    running.queue.requeue(id).await.unwrap();
    running.wake.notify_one();
    wait_state(&running.queue, id, JobState::Done).await;
    // The requeued delivery comes after any retry would have: it is the only request since the 404.
    assert_eq!(sink.received().len(), 2, "no retry before the requeue");
    let (_, attempts) = running.queue.get(id).await.unwrap();
    assert_eq!(
        attempts.iter().map(|a| a.status).collect::<Vec<_>>(),
        vec![Some(404), Some(200)]
    );
    running.stop().await;
}

async fn a_429_waits_for_retry_after(backend: Backend) {
    let sink = Sink::start(|n, _| {
        if n == 0 {
            Reply {
                headers: vec![("retry-after", "1".into())],
                ..Reply::status(429)
            }
        } else {
            Reply::status(200)
        }
    })
    .await;
    let store = Store::new(backend);
    let running = start(
        Arc::new(store.open().await),
        rules(&target(&sink, "t", "retry 3 backoff 10ms..20ms")),
        config(),
    );
    let id = running.enqueue(vec![job(JobKind::Notify, "t", None)]).await[0];
    wait_state(&running.queue, id, JobState::Done).await;
    let received = sink.received();
    let gap = received[1].at - received[0].at;
    assert!(
        gap >= Duration::from_millis(950),
        "waited {gap:?}, not the second Retry-After asked for"
    );
    running.stop().await;
}

async fn a_hanging_target_times_out_and_is_retried(backend: Backend) {
    let sink = Sink::start(|n, _| Reply {
        delay: if n == 0 {
            Duration::from_secs(5)
        } else {
            Duration::ZERO
        },
        ..Reply::status(200)
    })
    .await;
    let store = Store::new(backend);
    let running = start(
        Arc::new(store.open().await),
        rules(&target(
            &sink,
            "t",
            "timeout 200ms retry 2 backoff 10ms..20ms",
        )),
        config(),
    );
    let id = running.enqueue(vec![job(JobKind::Notify, "t", None)]).await[0];
    let done = wait_state(&running.queue, id, JobState::Done).await;
    assert_eq!(done.attempts, 2);
    let (_, attempts) = running.queue.get(id).await.unwrap();
    assert_eq!(attempts[0].error.as_deref(), Some("timed out after 200ms"));
    assert_eq!(attempts[0].status, None);
    running.stop().await;
}

async fn retries_are_spent_then_the_job_is_dead(backend: Backend) {
    let store = Store::new(backend);
    // Nothing listens on this port: connection refused every time.
    let free = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let text = format!(
        "target t {{ post \"http://{free}/x?token=${{secret.s}}\" retry 2 backoff 10ms..20ms }}\n"
    );
    let running = start(Arc::new(store.open().await), rules(&text), config());
    let id = running.enqueue(vec![job(JobKind::Notify, "t", None)]).await[0];
    let dead = wait_state(&running.queue, id, JobState::Dead).await;
    assert_eq!(dead.attempts, 3, "the first attempt and 2 retries");
    let error = dead.last_error.unwrap();
    assert!(error.starts_with("cannot connect: "), "{error}");
    assert!(error.ends_with("; gave up after 3 attempts"), "{error}");
    assert!(
        !error.contains("test-secret") && !error.contains("token="),
        "the URL and its token stay out: {error}"
    );
    running.stop().await;
}

async fn fifty_concurrent_checks_while_none_is_in_flight_make_one_delivery(backend: Backend) {
    let sink = Sink::always(200).await;
    let store = Store::new(backend);
    let queue = Arc::new(store.open().await);
    let enqueues: Vec<_> = (0..50)
        .map(|_| {
            let q = queue.clone();
            tokio::spawn(async move {
                q.enqueue(vec![job(JobKind::Check, "t", Some("acme/app"))])
                    .await
                    .unwrap()[0]
            })
        })
        .collect();
    let mut ids = Vec::new();
    for e in enqueues {
        ids.push(e.await.unwrap());
    }
    ids.dedup();
    assert_eq!(ids.len(), 1, "every request merged into one pending check");
    let running = start(queue, rules(&target(&sink, "t", "")), config());
    running.wake.notify_one();
    wait_state(&running.queue, ids[0], JobState::Done).await;
    // A later job to the same target goes out after it: the check was sent once.
    deliver_marker(&running, "t", "later").await;
    let received = sink.received();
    assert_eq!(received_deliveries(&sink), ["d-1", "later"]);
    assert_eq!(received[0].header("x-hookgate-coalesced"), Some("50"));
    assert!(received[0].body.is_empty());
    running.stop().await;
}

async fn a_check_requested_while_one_is_in_flight_runs_once_more_afterwards(backend: Backend) {
    let gate = Arc::new(Notify::new());
    let g = gate.clone();
    let sink = Sink::start(move |n, _| Reply {
        gate: (n == 0).then(|| g.clone()),
        ..Reply::status(200)
    })
    .await;
    let store = Store::new(backend);
    let running = start(
        Arc::new(store.open().await),
        rules(&target(&sink, "t", "concurrency 4")),
        config(),
    );
    let first = running.enqueue(vec![job(JobKind::Check, "t", None)]).await[0];
    assert!(sink.wait_for(1, WAIT).await, "the first check is in flight");
    let mut later = Vec::new();
    for _ in 0..5 {
        later.push(running.enqueue(vec![job(JobKind::Check, "t", None)]).await[0]);
    }
    later.dedup();
    assert_eq!(later.len(), 1, "the five merge into one pending check");
    assert_ne!(later[0], first);
    // A notify enqueued after it is claimed past it (claims take the oldest due jobs first) and
    // delivered while the first check is still in flight: the pending check was passed over.
    deliver_marker(&running, "t", "marker").await;
    assert_eq!(
        received_deliveries(&sink),
        ["d-1", "marker"],
        "not sent while the first is in flight, despite free concurrency"
    );
    let (pending, _) = running.queue.get(later[0]).await.unwrap();
    assert_eq!(pending.state, JobState::Pending);
    gate.notify_one();
    wait_state(&running.queue, later[0], JobState::Done).await;
    let received = sink.received();
    assert_eq!(received.len(), 3, "exactly one more check");
    assert_eq!(received[2].header("x-hookgate-coalesced"), Some("5"));
    running.stop().await;
}

async fn the_rate_limit_is_honoured(backend: Backend) {
    let sink = Sink::always(200).await;
    let store = Store::new(backend);
    let running = start(
        Arc::new(store.open().await),
        rules(&target(&sink, "t", "rate 2 per 1s")),
        config(),
    );
    let ids = running
        .enqueue((0..6).map(|_| job(JobKind::Notify, "t", None)).collect())
        .await;
    for id in &ids {
        wait_state(&running.queue, *id, JobState::Done).await;
    }
    let at: Vec<Instant> = sink.received().iter().map(|r| r.at).collect();
    assert_eq!(at.len(), 6);
    // Two at once, then one every 500 ms: the sixth no sooner than 2 s after the first.
    let span = at[5] - at[0];
    assert!(
        span >= Duration::from_millis(1900),
        "6 deliveries at 2 per second took only {span:?}"
    );
    for w in at.windows(3) {
        assert!(
            w[2] - w[0] >= Duration::from_millis(450),
            "three deliveries within {:?}",
            w[2] - w[0]
        );
    }
    running.stop().await;
}

async fn a_slow_target_does_not_starve_the_others(backend: Backend) {
    let slow = Sink::start(|_, _| Reply {
        delay: Duration::from_secs(3),
        ..Reply::status(200)
    })
    .await;
    let fast = Sink::always(200).await;
    let store = Store::new(backend);
    let targets = format!(
        "{}{}",
        target(&slow, "slow", "concurrency 2 timeout 10s"),
        target(&fast, "t", "")
    );
    let running = start(
        Arc::new(store.open().await),
        rules(&format!(
            "{targets}rule \"s\" {{ from acme notify slow }}\n"
        )),
        config(),
    );
    running
        .enqueue(
            (0..10)
                .map(|_| job(JobKind::Notify, "slow", None))
                .collect(),
        )
        .await;
    let started = Instant::now();
    running
        .enqueue((0..40).map(|_| job(JobKind::Notify, "t", None)).collect())
        .await;
    assert!(fast.wait_for(40, WAIT).await);
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "the fast target waited {:?}",
        started.elapsed()
    );
    assert_eq!(
        slow.received().len(),
        2,
        "the slow target has its 2 slots busy"
    );
    running.stop().await;
}

/// The jobs of delivery `g-1` of the first source, with these headers and body.
fn jobs_of(rules: &RuleSet, headers: Vec<(String, String)>, raw: &[u8]) -> Vec<NewJob> {
    let event = hookgate::event::Event::new(rules, 0, None, headers, vec![], json!({}));
    let outcome = hookgate::eval::evaluate(rules, &event);
    hookgate::dispatch::jobs_for(rules, &event, &outcome, "g-1", raw)
}

async fn forward_re_signs_the_original_body(backend: Backend) {
    let sink = Sink::always(200).await;
    let store = Store::new(backend);
    let text = format!(
        "secret s = env(\"S\")\nsecret fwd = env(\"FWD\")\nsource acme: github {{ secret s }}\n{}{}\
         rule \"r\" {{ from acme forward t sign with fwd forward sw sign with fwd forward plain }}\n",
        target(&sink, "t", "signature github"),
        target(&sink, "sw", "signature standard_webhooks") + &target(&sink, "plain", ""),
    );
    let rules = compile(&text, &[("fwd", "It's a Secret to Everybody")]);
    let raw = b"Hello, World!".to_vec();
    let headers = vec![
        ("X-GitHub-Event".into(), "push".into()),
        ("X-GitHub-Delivery".into(), "g-1".into()),
        ("X-Hub-Signature-256".into(), "sha256=original".into()),
        ("Content-Type".into(), "text/plain".into()),
        ("Host".into(), "hooks.example.com".into()),
    ];
    let jobs = jobs_of(&rules, headers, &raw);
    let running = start(Arc::new(store.open().await), rules, config());
    running.enqueue(jobs).await;
    assert!(sink.wait_for(3, WAIT).await);
    let received = sink.received();
    let by_path = |p: &str| received.iter().find(|r| r.path == p).unwrap().clone();
    let github = by_path("/t");
    assert_eq!(github.body, raw);
    assert_eq!(github.header("x-github-event"), Some("push"));
    assert_eq!(github.header("x-github-delivery"), Some("g-1"));
    assert_eq!(github.header("content-type"), Some("text/plain"));
    // The published GitHub test vector: this secret and body give this signature.
    assert_eq!(
        github.header("x-hub-signature-256"),
        Some("sha256=757107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e17")
    );
    let sw = by_path("/sw");
    let (id, ts) = (
        sw.header("webhook-id").unwrap(),
        sw.header("webhook-timestamp").unwrap(),
    );
    let key = hookgate::signature::standard_webhooks_key(b"It's a Secret to Everybody");
    let mac = hookgate::signature::hmac(
        hookgate::ruleset::HmacAlgorithm::Sha256,
        &key,
        &[id.as_bytes(), b".", ts.as_bytes(), b".", &raw],
    );
    assert_eq!(
        sw.header("webhook-signature").unwrap(),
        format!("v1,{}", hookgate::signature::base64(&mac))
    );
    let plain = by_path("/plain");
    assert_eq!(
        plain.header("x-hub-signature-256"),
        Some("sha256=original"),
        "without `sign with`, the original passes"
    );
    running.stop().await;
}

async fn a_forward_never_puts_the_senders_headers_before_the_targets_or_the_gateways(
    backend: Backend,
) {
    // A sender's headers are forwarded, but a header the target sets, or the gateway, carries that
    // value alone: receivers read a header's first value, and a signed sender could otherwise put
    // its own API key, signature or delivery id there.
    let sink = Sink::always(200).await;
    let text = format!(
        "secret s = env(\"S\")\nsecret fwd = env(\"FWD\")\nsource acme: github {{ secret s }}\n{}\
         rule \"r\" {{ from acme forward t sign with fwd }}\n",
        target(
            &sink,
            "t",
            "header \"X-Api-Key\" = \"k-1\" header \"X-Api-Key\" = \"k-2\" signature generic_hmac header \"X-Out-Sig\""
        ),
    );
    let rules = compile(&text, &[("fwd", "out-secret")]);
    let raw = b"{}".to_vec();
    let headers = vec![
        ("X-GitHub-Event".into(), "push".into()),
        ("X-Api-Key".into(), "forged".into()),
        ("X-Out-Sig".into(), "sha256=forged".into()),
        ("X-Hookgate-Delivery".into(), "someone-else".into()),
        ("X-Custom".into(), "one".into()),
        ("X-Custom".into(), "two".into()),
    ];
    let jobs = jobs_of(&rules, headers, &raw);
    let store = Store::new(backend);
    let running = start(Arc::new(store.open().await), rules, config());
    running.enqueue(jobs).await;
    assert!(sink.wait_for(1, WAIT).await);
    let got = sink.received()[0].clone();
    let all = |name: &str| -> Vec<&str> {
        got.headers
            .iter()
            .filter(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
            .collect()
    };
    let mac = hookgate::signature::hmac(
        hookgate::ruleset::HmacAlgorithm::Sha256,
        b"out-secret",
        &[&raw],
    );
    assert_eq!(all("x-api-key"), ["k-1", "k-2"], "the target's values only");
    assert_eq!(
        all("x-out-sig"),
        [format!("sha256={}", hex::encode(mac))],
        "the gateway's signature only"
    );
    assert_eq!(all("x-hookgate-delivery"), ["g-1"]);
    assert_eq!(
        all("x-custom"),
        ["one", "two"],
        "other headers pass, repeats kept"
    );
    assert_eq!(all("x-github-event"), ["push"]);
    running.stop().await;
}

async fn jobs_of_a_removed_target_are_dead_lettered(backend: Backend) {
    let store = Store::new(backend);
    let sink = Sink::always(200).await;
    let running = start(
        Arc::new(store.open().await),
        rules(&target(&sink, "t", "")),
        config(),
    );
    let id = running
        .enqueue(vec![job(JobKind::Notify, "gone", None)])
        .await[0];
    let dead = wait_state(&running.queue, id, JobState::Dead).await;
    assert_eq!(
        dead.last_error.as_deref(),
        Some("target `gone` is not in the current rules")
    );
    running.stop().await;
}

async fn shutdown_finishes_or_returns_in_flight_deliveries(backend: Backend) {
    let store = Store::new(backend);
    let slow = Sink::start(|n, _| Reply {
        delay: Duration::from_millis(if n == 0 { 300 } else { 30_000 }),
        ..Reply::status(200)
    })
    .await;
    let queue = Arc::new(store.open().await);
    let config = DispatchConfig {
        grace: Duration::from_millis(1500),
        ..config()
    };
    let running = start(
        queue,
        rules(&target(&slow, "t", "concurrency 1 timeout 60s")),
        config.clone(),
    );
    let first = running.enqueue(vec![job(JobKind::Notify, "t", None)]).await[0];
    assert!(slow.wait_for(1, WAIT).await);
    let queue = running.stop().await;
    assert_eq!(
        queue.get(first).await.unwrap().0.state,
        JobState::Done,
        "finished within the grace period"
    );

    // A delivery that outlasts the grace period goes back to pending, not lost.
    let running = start(
        queue,
        rules(&target(&slow, "t", "concurrency 1 timeout 60s")),
        config,
    );
    let second = running.enqueue(vec![job(JobKind::Notify, "t", None)]).await[0];
    assert!(slow.wait_for(2, WAIT).await);
    let queue = running.stop().await;
    let (job, attempts) = queue.get(second).await.unwrap();
    assert_eq!((job.state, job.attempts), (JobState::Pending, 0));
    assert!(
        attempts.is_empty(),
        "a released job has no attempt recorded"
    );
}

/// Two dispatchers on one PostgreSQL database: two replicas sharing a target's limits.
mod replicas {
    use super::*;

    fn numbered(n: usize) -> Vec<NewJob> {
        (0..n)
            .map(|i| NewJob {
                delivery: format!("d-{i}"),
                ..job(JobKind::Notify, "t", None)
            })
            .collect()
    }

    fn deliveries(sink: &Sink) -> Vec<String> {
        let mut ids: Vec<String> = sink
            .received()
            .iter()
            .filter(|r| r.path == "/t")
            .map(|r| r.header("x-hookgate-delivery").unwrap().to_string())
            .collect();
        ids.sort();
        ids
    }

    /// Through each replica, a job for the ungated target `u`, and waits until both are delivered:
    /// proof that the replicas went back to the queue since (and tried `t` again on the way).
    async fn markers_delivered(one: &Running, two: &Running, round: usize) {
        let marker = |n| NewJob {
            delivery: format!("marker-{round}-{n}"),
            ..job(JobKind::Notify, "u", None)
        };
        let a = one.enqueue(vec![marker(1)]).await[0];
        let b = two.enqueue(vec![marker(2)]).await[0];
        wait_state(&one.queue, a, JobState::Done).await;
        wait_state(&one.queue, b, JobState::Done).await;
    }

    /// Jobs of `t` claimed and not settled, as the shared queue counts them.
    async fn in_flight(queue: &Queue) -> usize {
        let jobs = queue.list(JobState::Inflight, 100).await.unwrap();
        jobs.iter().filter(|j| j.target == "t").count()
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn two_replicas_hold_a_targets_concurrency_together_and_deliver_each_job_once() {
        let gate = Arc::new(Notify::new());
        let g = gate.clone();
        // Deliveries to `t` wait for the gate; those to `u` (the markers) do not.
        let sink = Sink::start(move |_, r| Reply {
            gate: (r.path == "/t").then(|| g.clone()),
            ..Reply::status(200)
        })
        .await;
        let to_t = |sink: &Sink| sink.received().iter().filter(|r| r.path == "/t").count();
        let store = Store::new(Backend::Postgres);
        let rules = || {
            super::rules(&format!(
                "{}{}",
                target(&sink, "t", "concurrency 2 timeout 30s"),
                target(&sink, "u", "")
            ))
        };
        let one = start(Arc::new(store.open().await), rules(), config());
        let two = start(Arc::new(store.open().await), rules(), config());
        one.enqueue(numbered(3)).await;
        two.enqueue(numbered(6).split_off(3)).await;
        assert!(sink.wait_for(2, WAIT).await);
        markers_delivered(&one, &two, 0).await;
        assert_eq!(to_t(&sink), 2, "two in flight for both replicas");
        assert_eq!(in_flight(&one.queue).await, 2);
        for released in 1..=4 {
            gate.notify_one();
            assert!(sink.wait_for(2 + released + 2 * released, WAIT).await);
            markers_delivered(&one, &two, released).await;
            assert_eq!(to_t(&sink), 2 + released, "one more per finished delivery");
            assert_eq!(in_flight(&one.queue).await, 2);
        }
        gate.notify_one();
        gate.notify_one();
        let queue = one.queue.clone();
        let deadline = Instant::now() + WAIT;
        // The six jobs of `t` and the ten markers.
        while queue.stats().await.unwrap().done < 16 {
            assert!(Instant::now() < deadline, "not all delivered");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let expected: Vec<String> = (0..6).map(|i| format!("d-{i}")).collect();
        assert_eq!(deliveries(&sink), expected, "each job delivered once");
        one.stop().await;
        two.stop().await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn two_replicas_hold_a_targets_rate_together() {
        let sink = Sink::always(200).await;
        let store = Store::new(Backend::Postgres);
        let rules = || super::rules(&target(&sink, "t", "rate 2 per 1s"));
        let one = start(Arc::new(store.open().await), rules(), config());
        let two = start(Arc::new(store.open().await), rules(), config());
        one.enqueue(numbered(6)).await;
        two.wake.notify_one();
        let queue = one.queue.clone();
        let deadline = Instant::now() + WAIT;
        while queue.stats().await.unwrap().done < 6 {
            assert!(Instant::now() < deadline, "not all delivered");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let mut at: Vec<Instant> = sink.received().iter().map(|r| r.at).collect();
        at.sort();
        assert_eq!(at.len(), 6);
        // Two at once, then one every 500 ms, whichever replica sends: the sixth no sooner than 2 s
        // after the first (each replica alone would have sent two at once).
        let span = at[5] - at[0];
        assert!(
            span >= Duration::from_millis(1900),
            "6 deliveries at 2 per second took only {span:?}"
        );
        for w in at.windows(3) {
            assert!(
                w[2] - w[0] >= Duration::from_millis(450),
                "three deliveries within {:?}",
                w[2] - w[0]
            );
        }
        one.stop().await;
        two.stop().await;
    }
}

async fn urls_fixed_or_rendered_per_job_reach_their_paths(backend: Backend) {
    // A URL of text and secrets is parsed once and reused; one with job values is rendered per job.
    let sink = Sink::always(200).await;
    let text = format!(
        "secret s = env(\"S\")\nsource acme: github {{ secret s }}\n\
         target fixed {{ post \"{}\" }}\ntarget per_job {{ post \"{}\" }}\n\
         rule \"r\" {{ from acme notify fixed notify per_job }}\n",
        sink.url("/fixed?token=${secret.s}"),
        sink.url("/hooks/${source}/${event}/${delivery}")
    );
    let rules = compile(&text, &[("s", "tok-1")]);
    let store = Store::new(backend);
    let running = start(Arc::new(store.open().await), rules, config());
    let mut jobs = Vec::new();
    for delivery in ["d-1", "d-2"] {
        for target in ["fixed", "per_job"] {
            let mut j = job(JobKind::Notify, target, None);
            j.delivery = delivery.into();
            jobs.push(j);
        }
    }
    // An event name and a delivery id are the sender's text: each stays one path segment.
    let mut odd = job(JobKind::Notify, "per_job", None);
    odd.event = Some("../../admin".into());
    odd.delivery = "d-3&force=true#rest".into();
    jobs.push(odd);
    // What a path segment takes as it is stays as it was sent (Bitbucket's event keys).
    let mut bitbucket = job(JobKind::Notify, "per_job", None);
    bitbucket.event = Some("repo:push".into());
    bitbucket.delivery = "d-4@x".into();
    jobs.push(bitbucket);
    running.enqueue(jobs).await;
    assert!(sink.wait_for(6, WAIT).await);
    let mut paths: Vec<String> = sink.received().iter().map(|r| r.path.clone()).collect();
    paths.sort();
    assert_eq!(
        paths,
        [
            "/fixed?token=tok-1",
            "/fixed?token=tok-1",
            "/hooks/acme/..%2F..%2Fadmin/d-3%26force%3Dtrue%23rest",
            "/hooks/acme/push/d-1",
            "/hooks/acme/push/d-2",
            "/hooks/acme/repo:push/d-4@x",
        ]
    );
    running.stop().await;
}
