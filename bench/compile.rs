//! Load time and memory of large rule sets (`cargo bench --bench compile`).
//!
//! 1. Parse + compile time of generated Concourse-style files (`load::load_text`), minimum and median.
//! 2. For 100,000 *containment* rules (`payload contains {"repository": {"full_name": ...}, "ref": ...}`),
//!    with a target per rule and with one shared target: in a child process each (so that its peak RSS
//!    is its own), `RuleStore::load` of the file (time, resident memory, and memory per rule over an
//!    empty process), then reloads (time, peak RSS during the reload): a comment appended, twice; a
//!    pipeline inserted at the top (every later target index moves); every rule's literal changed;
//!    every target's URL changed.
//!
//! The numbers go in `docs/performance.md`. `-- --emit DIR` writes the generated containment files, for
//! measuring `gateway check` with `/usr/bin/time -v`; `-- --hold FILE` loads a store and exits without
//! freeing it, so that `heaptrack` reports what the store holds as leaked.

#[path = "generate.rs"]
mod generate;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use generate::Targets;
use hookgate::compile::PlaceholderSecrets;

// The gateway's allocator (`src/main.rs`), so that memory is measured as the gateway holds it.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() {
    // As `gateway serve` sets it.
    hookgate::memory::return_freed_memory();
    let args: Vec<String> = std::env::args().collect();
    if let Some(i) = args.iter().position(|a| a == "--store") {
        return store_child(Path::new(&args[i + 1]));
    }
    if let Some(i) = args.iter().position(|a| a == "--hold") {
        // For `heaptrack`: what is still allocated at exit is what a loaded store holds.
        let store = hookgate::reload::RuleStore::load(Path::new(&args[i + 1]));
        println!("{:?}", store.as_ref().map(|s| s.snapshot().rules().len()));
        std::process::exit(0);
    }
    if let Some(i) = args.iter().position(|a| a == "--emit") {
        return emit(Path::new(&args[i + 1]));
    }
    // `cargo bench` passes `--bench`; `cargo test --benches` runs this once, quickly, as a smoke test.
    let quick = !args.iter().any(|a| a == "--bench");
    let sizes: &[usize] = if quick { &[1_000] } else { &[1_000, 10_000] };
    for &n in sizes {
        time_load("concourse ==", &generate::concourse_rules(n), n, quick);
    }
    let n = if quick { 1_000 } else { 100_000 };
    for targets in [Targets::PerRule, Targets::Shared] {
        let label = match targets {
            Targets::PerRule => "containment, target per rule",
            Targets::Shared => "containment, shared target",
        };
        let text = generate::containment_rules(n, targets);
        time_load(label, &text, n, quick);
        store(label, &text, n);
    }
}

/// Times `load_text` of `text`, which holds `n` rules.
fn time_load(label: &str, text: &str, n: usize, quick: bool) {
    let runs = if quick {
        1
    } else if n >= 100_000 {
        5
    } else {
        15
    };
    let mut times: Vec<Duration> = (0..runs)
        .map(|_| {
            let start = Instant::now();
            let loaded =
                hookgate::load::load_text("bench.hook", None, text.as_bytes(), &PlaceholderSecrets);
            let elapsed = start.elapsed();
            let compiled = loaded.result.expect("the generated file compiles");
            assert_eq!(compiled.rules.rules().len(), n);
            assert!(compiled.warnings.is_empty(), "{:?}", compiled.warnings);
            elapsed
        })
        .collect();
    times.sort();
    println!(
        "parse+compile {n:>7} rules, {label} ({:.1} MiB): min {:>8.1} ms, median {:>8.1} ms ({runs} runs)",
        text.len() as f64 / (1 << 20) as f64,
        times[0].as_secs_f64() * 1e3,
        times[times.len() / 2].as_secs_f64() * 1e3,
    );
}

/// Writes the file and runs [`store_child`] on it in a process of its own.
fn store(label: &str, text: &str, n: usize) {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let path = dir.path().join("rules.hook");
    std::fs::write(&path, text).expect("the rules file is written");
    let exe = std::env::current_exe().expect("the bench's own path");
    let out = std::process::Command::new(exe)
        .arg("--store")
        .arg(&path)
        .env("GITHUB_WEBHOOK_SECRET", "bench-secret")
        .env("CONCOURSE_TOKEN", "bench-token")
        .env("RUST_LOG", "off")
        .output()
        .expect("the bench runs itself");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report = String::from_utf8_lossy(&out.stdout);
    for line in report.lines() {
        // The child reports bytes; per rule here, where `n` is known.
        if let Some(rest) = line.strip_prefix("held ") {
            let bytes: f64 = rest.trim().parse().unwrap_or(0.0);
            println!(
                "store {n:>7} rules, {label}: {:.0} bytes per rule held (RSS over an empty process)",
                bytes / n as f64
            );
        } else {
            println!("store {n:>7} rules, {label}: {line}");
        }
    }
}

/// `/proc/self/status` fields in KiB: (VmRSS, VmHWM).
fn rss() -> (u64, u64) {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap_or(0)
    };
    (field("VmRSS:"), field("VmHWM:"))
}

/// Resets VmHWM to the current RSS (Linux ≥ 4.0), so the next peak is the next step's own.
fn reset_peak() {
    let _ = std::fs::write("/proc/self/clear_refs", "5");
}

fn mib(kib: u64) -> f64 {
    kib as f64 / 1024.0
}

/// Child process: loads the store, then reloads it twice after a byte of the file changed.
fn store_child(path: &Path) {
    let (base, _) = rss();
    let start = Instant::now();
    let store = hookgate::reload::RuleStore::load(path).expect("the generated file loads");
    let load = start.elapsed();
    let (steady, peak) = rss();
    println!(
        "load {:.0} ms, RSS {:.0} MiB, peak {:.0} MiB",
        load.as_secs_f64() * 1e3,
        mib(steady),
        mib(peak)
    );
    println!("held {}", (steady.saturating_sub(base)) * 1024);
    let edits: [(&str, Edit); 5] = [
        ("a comment appended", touch),
        ("a comment appended", touch),
        ("a pipeline inserted at the top", insert_pipeline),
        ("every rule's literal changed", |path, _| {
            edit(path, "refs/heads/main", "refs/heads/trunk")
        }),
        ("every target's URL changed", |path, _| {
            edit(path, "ci.example.com", "ci2.example.com")
        }),
    ];
    for (round, (what, change)) in (1..).zip(edits) {
        change(path, round);
        reset_peak();
        let start = Instant::now();
        let outcome = store.reload();
        let took = start.elapsed();
        assert!(
            matches!(outcome, hookgate::reload::ReloadOutcome::Reloaded { .. }),
            "{outcome:?}"
        );
        let (after, peak) = rss();
        println!(
            "reload {round}, {what}: {:.0} ms, peak {:.0} MiB ({:.2}x the steady RSS before it), RSS after {:.0} MiB",
            took.as_secs_f64() * 1e3,
            mib(peak),
            peak as f64 / steady.max(1) as f64,
            mib(after)
        );
    }
    drop(store);
}

/// Changes the file by appending a comment (a new hash, so the reload compiles and swaps).
fn touch(path: &Path, round: usize) {
    use std::io::Write;
    let mut f = std::fs::OpenOptions::new()
        .append(true)
        .open(PathBuf::from(path))
        .expect("the rules file opens");
    writeln!(f, "# reload {round}").expect("the rules file is written");
}

/// A change to the rules file before reload number `round`.
type Edit = fn(path: &Path, round: usize);

/// Replaces `from` by `to` everywhere in the file.
fn edit(path: &Path, from: &str, to: &str) {
    let text = std::fs::read_to_string(path).expect("the rules file is read");
    std::fs::write(path, text.replace(from, to)).expect("the rules file is written");
}

/// Declares one more target and rule before the first pipeline.
fn insert_pipeline(path: &Path, _round: usize) {
    let text = std::fs::read_to_string(path).expect("the rules file is read");
    let at = text
        .find("\ntarget ")
        .or_else(|| text.find("\nrule "))
        .unwrap_or(0);
    let new = "\ntarget inserted { post \"https://ci.example.com/new?webhook_token=${secret.ci}\" }\n\
               rule \"inserted\" { from org on \"push\" when $.ref == \"refs/heads/new\" queue check inserted }\n";
    let text = format!("{}{new}{}", &text[..at], &text[at..]);
    std::fs::write(path, text).expect("the rules file is written");
}

/// Writes the containment files for `gateway check`.
fn emit(dir: &Path) {
    std::fs::create_dir_all(dir).expect("the directory is made");
    for n in [10, 10_000, 100_000] {
        for (targets, suffix) in [(Targets::PerRule, ""), (Targets::Shared, "-shared")] {
            let path = dir.join(format!("containment-{n}{suffix}.hook"));
            std::fs::write(&path, generate::containment_rules(n, targets))
                .expect("the file is written");
            println!("{}", path.display());
        }
    }
}
