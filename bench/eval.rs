//! Evaluation time of one event against generated Concourse-style rule sets
//! (`cargo bench --bench eval`), and the parse time of the payload itself.
//! The payload is the 7.3 KB GitHub push in `tests/fixtures/payloads/github/push-tag-deleted-octokit.json`.
//!
//! Then the rule-dependent part of the server's request path on containment rules (10 and 100,000):
//! `prepare::prepare` (the index decides on a few extracted paths) and, when it leaves candidates,
//! `evaluate` on its view, for a push to a repository no rule watches, a push to another branch of a
//! watched one, and a matching push.

#[path = "generate.rs"]
mod generate;

use std::time::{Duration, Instant};

use generate::Targets;
use hookgate::compile::PlaceholderSecrets;
use hookgate::eval::evaluate;
use hookgate::event::Event;
use hookgate::pairs::Pairs;
use hookgate::prepare::{Options, View, prepare};

const PAYLOAD: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/tests/fixtures/payloads/github/push-tag-deleted-octokit.json"
);

fn percentile(samples: &mut [Duration], p: f64) -> Duration {
    samples.sort_unstable();
    samples[((samples.len() - 1) as f64 * p) as usize]
}

fn micros(d: Duration) -> f64 {
    d.as_secs_f64() * 1e6
}

fn main() {
    let quick = !std::env::args().any(|a| a == "--bench");
    let bytes = std::fs::read(PAYLOAD).unwrap_or_else(|e| panic!("{PAYLOAD}: {e}"));
    let samples = if quick { 200 } else { 20_000 };

    let mut parse: Vec<Duration> = (0..samples)
        .map(|_| {
            let start = Instant::now();
            let v: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
            let elapsed = start.elapsed();
            std::hint::black_box(v);
            elapsed
        })
        .collect();
    println!(
        "parse {} byte payload: median {:.2} µs, p99 {:.2} µs",
        bytes.len(),
        micros(percentile(&mut parse, 0.5)),
        micros(percentile(&mut parse, 0.99))
    );

    let sizes: &[usize] = if quick {
        &[10, 1_000]
    } else {
        &[10, 1_000, 10_000, 100_000]
    };
    for &n in sizes {
        let compiled = hookgate::load::load_text(
            "bench.hook",
            None,
            generate::concourse_rules(n).as_bytes(),
            &PlaceholderSecrets,
        )
        .result
        .expect("the generated file compiles");
        let rules = &compiled.rules;
        let headers = vec![("X-GitHub-Event".to_string(), "push".to_string())];
        // As delivered: matches no rule. Then the same push retargeted at one pipeline's repository.
        let miss: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
        let mut hit = miss.clone();
        hit["ref"] = "refs/heads/main".into();
        hit["repository"]["full_name"] = format!("acme/repo-{}", n / 2 / 70 * 70).into();
        hit["repository"]["owner"]["login"] = "acme".into();
        for (label, payload, expect) in [("no match", miss, 0), ("1 match", hit, 1)] {
            let event = Event::new(rules, 0, None, headers.clone(), vec![], payload);
            assert_eq!(
                evaluate(rules, &event).matched.len(),
                expect,
                "{label} with {n} rules"
            );
            let mut times: Vec<Duration> = (0..samples)
                .map(|_| {
                    let start = Instant::now();
                    let outcome = evaluate(rules, &event);
                    let elapsed = start.elapsed();
                    std::hint::black_box(outcome);
                    elapsed
                })
                .collect();
            println!(
                "evaluate {n:>6} rules, {label:<8}: median {:>6.2} µs, p99 {:>6.2} µs",
                micros(percentile(&mut times, 0.5)),
                micros(percentile(&mut times, 0.99))
            );
        }
    }

    let sizes: &[usize] = if quick { &[10, 1_000] } else { &[10, 100_000] };
    for &n in sizes {
        containment(&bytes, n, samples);
    }
}

/// `prepare` + `evaluate` of three pushes against `n` containment rules.
fn containment(bytes: &[u8], n: usize, samples: usize) {
    let compiled = hookgate::load::load_text(
        "bench.hook",
        None,
        generate::containment_rules(n, Targets::PerRule).as_bytes(),
        &PlaceholderSecrets,
    )
    .result
    .expect("the generated file compiles");
    let rules = &compiled.rules;
    let source = &rules.sources()[0];
    let headers: Pairs = [("x-github-event", "push")].into_iter().collect();
    let no_query = Pairs::default();
    let mut push: serde_json::Value = serde_json::from_slice(bytes).unwrap();
    push["repository"]["full_name"] = format!("acme/repo-{}", n / 2).into();
    push["ref"] = "refs/heads/feature".into();
    let other_branch = serde_json::to_vec(&push).unwrap();
    push["ref"] = "refs/heads/main".into();
    let matching = serde_json::to_vec(&push).unwrap();
    let cases: [(&str, &[u8], usize); 3] = [
        ("unwatched repository", bytes, 0),
        ("other branch", &other_branch, 0),
        ("match", &matching, 1),
    ];
    for (label, body, expect) in cases {
        let run = || {
            let prepared =
                prepare(source, None, &headers, &no_query, body, Options::default()).unwrap();
            let payload = match prepared.view {
                View::None { .. } => return 0,
                View::Sparse(v) | View::Full(v) => v,
                View::Handshake(_) => unreachable!("not slack"),
            };
            let event = Event::with_identity(
                rules,
                0,
                prepared.event,
                prepared.delivery,
                headers.clone(),
                Pairs::default(),
                payload,
            );
            evaluate(rules, &event).matched.len()
        };
        assert_eq!(run(), expect, "{label} with {n} rules");
        let mut times: Vec<Duration> = (0..samples)
            .map(|_| {
                let start = Instant::now();
                let matched = run();
                let elapsed = start.elapsed();
                std::hint::black_box(matched);
                elapsed
            })
            .collect();
        println!(
            "prepare+evaluate {n:>6} containment rules, {label:<20}: median {:>6.2} µs, p99 {:>6.2} µs",
            micros(percentile(&mut times, 0.5)),
            micros(percentile(&mut times, 0.99))
        );
    }
}
