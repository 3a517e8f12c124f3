//! Faults with replicas: `gateway serve` processes on one PostgreSQL database (a real server from
//! `support::pg`), each with its own `--data` directory, fed real signed GitHub deliveries over
//! loopback.
//!
//! - A replica SIGKILLed mid-delivery: every delivery either replica answered 202 still reaches the
//!   sink — the survivor delivers the dead one's jobs when their claims expire.
//! - PostgreSQL stopped: 503 (never 202) and `/readyz` fails; back, the gateway recovers by itself.
//! - A target's `rate` and `concurrency` hold for both replicas together.
//!
//! Each replica's rules add an `X-Replica` header to the target, so the sink knows which replica
//! delivered what (the rules are otherwise the same).

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hookgate::ruleset::HmacAlgorithm;
use hookgate::signature::hmac;
use serde_json::{Value, json};
use tokio::sync::Notify;

use support::pg::{PgServer, shared};
use support::serve::Serve;
use support::{Received, Reply, Sink};

const SECRET: &str = "replicas-secret";
const WAIT: Duration = Duration::from_secs(30);

/// A `gateway serve` process on the queue `url`, with its own rules file and data directory.
struct Replica {
    name: &'static str,
    serve: Serve,
    _dir: tempfile::TempDir,
}

impl Replica {
    /// Starts replica `name`: a GitHub source `acme`, and `targets` (rules text in which `{replica}`
    /// stands for the name), plus `rules`.
    fn start(name: &'static str, url: &str, targets: &str, rules: &str) -> Replica {
        Replica::start_with(name, url, targets, rules, &[])
    }

    /// [`Replica::start`] with more `gateway serve` flags.
    fn start_with(
        name: &'static str,
        url: &str,
        targets: &str,
        rules: &str,
        flags: &[&str],
    ) -> Replica {
        let dir = tempfile::tempdir().unwrap();
        let secret = dir.path().join("secret");
        std::fs::write(&secret, SECRET).unwrap();
        let text = format!(
            "secret gh = file(\"{}\")\nsource acme: github {{ secret gh }}\n{}\n{rules}\n",
            secret.display(),
            targets.replace("{replica}", name),
        );
        let path = dir.path().join("rules.hook");
        std::fs::write(&path, text).unwrap();
        let data: PathBuf = dir.path().join("data");
        // A short lease margin: a killed replica's claims pass to the other within seconds.
        let mut args = vec!["--queue", url, "--lease-margin", "1s"];
        args.extend_from_slice(flags);
        let serve = Serve::start(&path, &data, &args, &[]);
        Replica {
            name,
            serve,
            _dir: dir,
        }
    }

    /// Posts a signed push with delivery id `id`; the status and the JSON answer.
    async fn push(&self, id: &str, body: &Value) -> (u16, Value) {
        let body = body.to_string().into_bytes();
        let signature = format!(
            "sha256={}",
            hex::encode(hmac(HmacAlgorithm::Sha256, SECRET.as_bytes(), &[&body]))
        );
        let response = reqwest::Client::new()
            .post(self.serve.hook_url("/hook/acme"))
            .header("content-type", "application/json")
            .header("x-github-event", "push")
            .header("x-github-delivery", id)
            .header("x-hub-signature-256", signature)
            .timeout(WAIT)
            .body(body)
            .send()
            .await
            .unwrap_or_else(|e| panic!("replica {} did not answer: {e}", self.name));
        let status = response.status().as_u16();
        let bytes = response.bytes().await.unwrap_or_default();
        let answer = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
        (status, answer)
    }

    /// The status of `GET /readyz` on the admin port.
    async fn readyz(&self) -> u16 {
        reqwest::Client::new()
            .get(self.serve.admin_url("/readyz"))
            .timeout(WAIT)
            .send()
            .await
            .unwrap()
            .status()
            .as_u16()
    }

    fn logs(&self) -> String {
        self.serve.logs().join("\n")
    }
}

fn push_body(n: usize) -> Value {
    json!({"ref": "refs/heads/main", "repository": {"full_name": "acme/app"}, "n": n})
}

fn header(r: &Received, name: &str) -> String {
    r.header(name).unwrap_or_default().to_string()
}

/// Asks `check` every 50 ms until it holds; false after `timeout`.
async fn until<F: Future<Output = bool>>(timeout: Duration, mut check: impl FnMut() -> F) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if check().await {
            return true;
        }
        if Instant::now() > deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Deliveries spread over two replicas, some sent to both at once; replica `a` is SIGKILLed while
/// the sink holds the requests of both; every delivery answered 202 is then delivered (answered 2xx
/// by the sink) by replica `b`, including those `a` had claimed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_killed_mid_delivery_loses_no_accepted_delivery() {
    let url = shared().database();
    // Until `open`, the sink holds every request, then answers it 503 (a retry), so nothing is
    // delivered before the kill. After, it answers 200 at once and notes what it answered.
    let open = Arc::new(AtomicBool::new(false));
    let gate = Arc::new(Notify::new());
    let answered: Arc<Mutex<Vec<(String, String)>>> = Arc::default();
    let sink = {
        let (open, gate, answered) = (open.clone(), gate.clone(), answered.clone());
        Sink::start(move |_, r| {
            if open.load(Ordering::SeqCst) {
                answered
                    .lock()
                    .unwrap()
                    .push((header(r, "x-hookgate-delivery"), header(r, "x-replica")));
                Reply::status(200)
            } else {
                Reply {
                    gate: Some(gate.clone()),
                    ..Reply::status(503)
                }
            }
        })
        .await
    };
    // `timeout 2s`: the dead replica's claims come back when they expire, `3 × timeout + 60 s` after
    // they were made (the dispatcher's visibility timeout), so the target's timeout is kept short —
    // but longer than the time from the first delivery to the kill, so that the dead replica surely
    // holds claims it never settled.
    let targets = format!(
        "target t {{ post \"{}\" header \"X-Replica\" = \"{{replica}}\" concurrency 8 timeout 2s retry 100 backoff 50ms..200ms }}",
        sink.url("/deliver")
    );
    let rule = "rule \"push\" { from acme on \"push\" notify t }";
    // Each replica holds at most 4 of the target's 8 slots, so neither can take them all while the
    // sink holds its requests: both are surely mid-delivery (without it, a busy machine let one
    // replica claim all 8 first).
    let half = ["--max-inflight", "4"];
    let mut a = Replica::start_with("a", &url, &targets, rule, &half);
    let b = Replica::start_with("b", &url, &targets, rule, &half);

    // Alternate the replica per delivery; every fifth goes to both at once.
    let mut accepted = BTreeSet::new();
    for n in 0..30 {
        let id = format!("delivery-{n}");
        let body = push_body(n);
        if n % 5 == 4 {
            let ((sa, ja), (sb, jb)) = tokio::join!(a.push(&id, &body), b.push(&id, &body));
            let mut statuses = [sa, sb];
            statuses.sort();
            assert_eq!(statuses, [200, 202], "{id}: a {sa} {ja}, b {sb} {jb}");
            let duplicate = if sa == 200 { &ja } else { &jb };
            assert_eq!(duplicate["duplicate"], true, "{id}: {duplicate}");
        } else {
            let replica = if n % 2 == 0 { &a } else { &b };
            let (status, answer) = replica.push(&id, &body).await;
            assert_eq!(status, 202, "{id} to {}: {answer}", replica.name);
        }
        accepted.insert(id);
    }
    // Both replicas mid-delivery: each has requests held by the sink.
    let both_busy = until(WAIT, || async {
        let from: BTreeSet<String> = sink
            .received()
            .iter()
            .map(|r| header(r, "x-replica"))
            .collect();
        from.contains("a") && from.contains("b")
    })
    .await;
    assert!(
        both_busy,
        "not both replicas were delivering: {:?}",
        sink.received()
            .iter()
            .map(|r| header(r, "x-replica"))
            .collect::<Vec<_>>()
    );
    a.serve.kill();
    open.store(true, Ordering::SeqCst);
    gate.notify_waiters();

    // Everything accepted is delivered: what `b` held or never started at once, what `a` had claimed
    // once those claims expire (about 66 s).
    let delivered = || -> BTreeSet<String> {
        answered
            .lock()
            .unwrap()
            .iter()
            .map(|(id, _)| id.clone())
            .collect()
    };
    let all = until(Duration::from_secs(120), || async {
        delivered().is_superset(&accepted)
    })
    .await;
    let missing: Vec<String> = accepted.difference(&delivered()).cloned().collect();
    assert!(
        all,
        "accepted but never delivered: {missing:?}\nb's log:\n{}",
        b.logs()
    );
    let from: BTreeSet<String> = answered
        .lock()
        .unwrap()
        .iter()
        .map(|(_, r)| r.clone())
        .collect();
    assert_eq!(from, BTreeSet::from(["b".to_string()]));

    // In the queue: one job per accepted delivery, all done; and some were claimed by `a` and never
    // settled (a claim with no attempt recorded) — taken over by `b` after the claim expired.
    // (The last answers may still be on their way into the queue: wait for them.)
    let psql = |sql: &str| tokio::task::block_in_place(|| shared().psql(&url, sql));
    let counts = || psql("SELECT count(*), count(*) FILTER (WHERE state = 'done') FROM jobs");
    let expected = format!("{n}|{n}", n = accepted.len());
    until(WAIT, || async { counts() == expected }).await;
    assert_eq!(counts(), expected, "jobs, done");
    let taken_over: usize = psql(
        "SELECT count(*) FROM jobs j WHERE j.lease > (SELECT count(*) FROM attempts a WHERE a.job_id = j.id)",
    )
    .parse()
    .unwrap();
    assert!(
        taken_over >= 1,
        "no job of the killed replica was taken over"
    );
    let (code, logs) = b.serve.stop();
    assert_eq!(code, Some(0), "{}", logs.join("\n"));
}

/// PostgreSQL stopped: a matching signed delivery is answered 503, never 202, and `/readyz` fails.
/// Started again: without a restart, the gateway is ready, accepts and delivers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgresql_down_is_503_and_the_gateway_recovers_by_itself() {
    // Its own server: stopping the shared one would break the other tests.
    let pg = PgServer::start();
    let url = pg.database();
    let sink = Sink::always(200).await;
    let targets = format!(
        "target t {{ post \"{}\" timeout 2s retry 100 backoff 50ms..200ms }}",
        sink.url("/deliver")
    );
    let gw = Replica::start(
        "a",
        &url,
        &targets,
        "rule \"push\" { from acme on \"push\" notify t }",
    );
    assert_eq!(gw.readyz().await, 200);
    let (status, answer) = gw.push("before", &push_body(0)).await;
    assert_eq!(status, 202, "{answer}");
    assert!(sink.wait_for(1, WAIT).await);

    pg.stop();
    for n in 1..=3 {
        let (status, answer) = gw.push(&format!("while-down-{n}"), &push_body(n)).await;
        assert_eq!(status, 503, "while PostgreSQL is down: {answer}");
    }
    assert_eq!(gw.readyz().await, 503);
    // The log says why, once.
    gw.serve.wait_for_log(WAIT, |l| {
        l.contains("answering 503") && l.contains("while-down-3")
    });
    let refusals: Vec<String> = gw
        .serve
        .logs()
        .into_iter()
        .filter(|l| l.contains("answering 503"))
        .collect();
    assert_eq!(refusals.len(), 3, "{refusals:#?}");
    for line in &refusals {
        let v: Value = serde_json::from_str(line).unwrap();
        let error = v["error"].as_str().unwrap_or_default();
        assert_eq!(error.matches("queue storage error").count(), 1, "{error}");
        assert!(error.contains("PostgreSQL"), "{error}");
    }
    // With the cause: nothing listens on PostgreSQL's port now.
    assert!(
        refusals.iter().any(|l| l.contains("Connection refused")),
        "{refusals:#?}"
    );

    pg.start_again();
    let ready = until(WAIT, || async { gw.readyz().await == 200 }).await;
    assert!(ready, "not ready again:\n{}", gw.logs());
    // The delivery refused while down was not recorded: its redelivery is new, not a duplicate.
    let (status, answer) = gw.push("while-down-1", &push_body(1)).await;
    assert_eq!(status, 202, "{answer}");
    let (status, answer) = gw.push("after", &push_body(4)).await;
    assert_eq!(status, 202, "{answer}");
    let ids = || -> BTreeSet<String> {
        sink.received()
            .iter()
            .map(|r| header(r, "x-hookgate-delivery"))
            .collect()
    };
    let expected = BTreeSet::from(["after", "before", "while-down-1"].map(String::from));
    let delivered = until(WAIT, || async { ids() == expected }).await;
    assert!(
        delivered,
        "delivered {:?} after recovery, not {expected:?}:\n{}",
        ids(),
        gw.logs()
    );
    let (code, logs) = gw.serve.stop();
    assert_eq!(code, Some(0), "{}", logs.join("\n"));
}

/// A rate-limited target gets no more than its rate from both replicas together, and a target's
/// concurrency holds across both: deliveries are spread over the two, and both deliver.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rate_and_concurrency_hold_across_replicas() {
    const N: usize = 24;
    // `rate 4 per 2s`: a token bucket of 4, refilled over 2 s.
    const RATE: usize = 4;
    const PER: Duration = Duration::from_secs(2);
    const CONCURRENCY: usize = 2;
    let url = shared().database();
    let rated = Sink::always(200).await;
    let narrow = Sink::start(|_, _| Reply {
        delay: Duration::from_millis(100),
        ..Reply::status(200)
    })
    .await;
    let targets = format!(
        "target rated {{ post \"{}\" header \"X-Replica\" = \"{{replica}}\" rate {RATE} per 2s }}\n\
         target narrow {{ post \"{}\" header \"X-Replica\" = \"{{replica}}\" concurrency {CONCURRENCY} }}",
        rated.url("/rated"),
        narrow.url("/narrow"),
    );
    let rules = "rule \"push\" { from acme on \"push\" notify rated queue check narrow key \"${delivery}\" }";
    let a = Replica::start("a", &url, &targets, rules);
    let b = Replica::start("b", &url, &targets, rules);
    for n in 0..N {
        let replica = if n % 2 == 0 { &a } else { &b };
        let (status, answer) = replica.push(&format!("d-{n}"), &push_body(n)).await;
        assert_eq!(status, 202, "{answer}");
    }
    // At the rate, the last of N arrives (N - RATE) / RATE periods (10 s) after the first burst.
    let rated_all = rated.wait_for(N, WAIT).await;
    let narrow_all = narrow.wait_for(N, WAIT).await;
    assert!(
        rated_all && narrow_all,
        "rated got {}, narrow {} of {N}\na:\n{}\nb:\n{}",
        rated.received().len(),
        narrow.received().len(),
        a.logs(),
        b.logs()
    );

    // Rate: a token bucket lets through at most RATE + RATE·w/PER requests in any window of length
    // w — between any two arrivals, counting both ends. One request of slack covers the time between
    // a claim (when the token is taken) and the request's arrival, which varies by up to PER/RATE.
    let times: Vec<Instant> = rated.received().iter().map(|r| r.at).collect();
    for i in 0..times.len() {
        for j in i..times.len() {
            let w = times[j].duration_since(times[i]).as_secs_f64();
            let allowed = RATE as f64 + RATE as f64 * w / PER.as_secs_f64() + 1.0;
            let count = (j - i + 1) as f64;
            assert!(
                count <= allowed,
                "{count} requests within {w:.3}s: more than {RATE} per {PER:?} allows ({allowed:.1})"
            );
        }
    }
    // Concurrency: never more than CONCURRENCY held by the sink at once, and it was reached.
    assert_eq!(narrow.peak_inflight(), CONCURRENCY);
    // Who delivers is timing: both replicas claim, and the one asking first after a token or a slot
    // frees gets it, so one may deliver most or all (the limits are the targets', not fairness
    // between replicas). Were the limits per replica, the other's claims would go through too, and
    // the checks above fail.
    for (name, sink) in [("rated", &rated), ("narrow", &narrow)] {
        let mut by: BTreeMap<String, usize> = BTreeMap::new();
        for r in sink.received() {
            *by.entry(header(&r, "x-replica")).or_default() += 1;
        }
        eprintln!("{name}: deliveries by replica {by:?}");
    }
}
