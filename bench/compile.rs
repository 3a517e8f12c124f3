//! Parse + compile time of a generated 10,000-rule file (`cargo bench --bench compile`).
//! Prints the minimum and median of repeated runs; the numbers go in `docs/performance.md`.

#[path = "generate.rs"]
mod generate;

use std::time::{Duration, Instant};

use hookgate::compile::PlaceholderSecrets;

fn main() {
    // `cargo bench` passes `--bench`; `cargo test --benches` runs this once, quickly, as a smoke test.
    let quick = !std::env::args().any(|a| a == "--bench");
    let sizes: &[usize] = if quick { &[1_000] } else { &[1_000, 10_000] };
    for &n in sizes {
        let text = generate::concourse_rules(n);
        let runs = if quick { 1 } else { 15 };
        let mut times: Vec<Duration> = (0..runs)
            .map(|_| {
                let start = Instant::now();
                let loaded = hookgate::load::load_text(
                    "bench.hook",
                    None,
                    text.as_bytes(),
                    &PlaceholderSecrets,
                );
                let elapsed = start.elapsed();
                let compiled = loaded.result.expect("the generated file compiles");
                assert_eq!(compiled.rules.rules().len(), n);
                assert!(compiled.warnings.is_empty(), "{:?}", compiled.warnings);
                elapsed
            })
            .collect();
        times.sort();
        println!(
            "parse+compile {n:>6} rules ({:.1} MiB): min {:>8.1} ms, median {:>8.1} ms ({runs} runs)",
            text.len() as f64 / (1 << 20) as f64,
            times[0].as_secs_f64() * 1e3,
            times[times.len() / 2].as_secs_f64() * 1e3,
        );
    }
}
