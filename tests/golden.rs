//! Data-driven tests of the rules language: every `tests/rules/{ok,warn,err}/*.hook` is loaded and
//! compiled, and the result compared with the `.out` file beside it.
//!
//! - `ok/`: must compile with no diagnostics at all; `.out` is the canonical dump of the `RuleSet`.
//! - `warn/`: must compile, with at least one warning; `.out` is the rendered diagnostics.
//! - `err/`: must fail, with at least one error; `.out` is the rendered diagnostics.
//!
//! `UPDATE_EXPECT=1 cargo test --test golden` rewrites the `.out` files; review the diff like code.
//! A fixture whose first line is `# golden: resolve-secrets` loads secrets from the environment as
//! `serve` does (for `rules::secret_unavailable`); all others use placeholders, as `gateway check` does.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use hookgate::compile::{PlaceholderSecrets, Secrets};
use hookgate::diagnostic::Severity;
use hookgate::load;
use hookgate::secrets::EnvSecrets;

fn rules_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/rules")
}

fn fixtures(dir: &str) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(rules_dir().join(dir))
        .unwrap_or_else(|e| panic!("tests/rules/{dir}: {e}"))
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "hook"))
        .collect();
    files.sort();
    assert!(!files.is_empty(), "no fixtures in tests/rules/{dir}");
    files
}

/// What one fixture produced.
struct Outcome {
    text: String,
    errors: usize,
    warnings: usize,
    codes: Vec<&'static str>,
}

fn run(path: &Path) -> Outcome {
    let bytes = std::fs::read(path).unwrap();
    let name = path
        .strip_prefix(rules_dir())
        .unwrap()
        .display()
        .to_string();
    let secrets: Box<dyn Secrets> = if bytes.starts_with(b"# golden: resolve-secrets") {
        Box::new(EnvSecrets { lenient: false })
    } else {
        Box::new(PlaceholderSecrets)
    };
    let loaded = load::load_text(&name, Some(path.to_path_buf()), &bytes, secrets.as_ref());
    let diags = match &loaded.result {
        Ok(c) => &c.warnings,
        Err(d) => d,
    };
    let mut text = diags.render(&loaded.files, false);
    if let Ok(compiled) = &loaded.result
        && diags.is_empty()
    {
        text = compiled.rules.to_string();
        for test in &compiled.tests {
            text.push_str(&format!("test {:?}\n", test.name));
        }
    }
    Outcome {
        text,
        errors: diags.count(Severity::Error),
        warnings: diags.count(Severity::Warning),
        codes: diags.iter().map(|d| d.kind.code()).collect(),
    }
}

/// Runs every fixture of a directory, checks its class, compares outputs, and reports all failures.
fn check_dir(dir: &str, class: impl Fn(&Outcome) -> Result<(), String>) -> Vec<&'static str> {
    let mut failures = Vec::new();
    let mut codes = Vec::new();
    for path in fixtures(dir) {
        let outcome = run(&path);
        if let Err(why) = class(&outcome) {
            failures.push(format!("{}: {why}\n{}", path.display(), outcome.text));
        }
        codes.extend(outcome.codes.iter().copied());
        let expected = path.with_extension("out");
        let result = std::panic::catch_unwind(|| {
            expect_test::expect_file![expected].assert_eq(&outcome.text)
        });
        if result.is_err() {
            failures.push(format!(
                "{}: output differs from {}",
                path.display(),
                path.with_extension("out").display()
            ));
        }
    }
    assert!(
        failures.is_empty(),
        "{} golden failure(s):\n{}",
        failures.len(),
        failures.join("\n")
    );
    codes
}

#[test]
fn ok_fixtures_compile_without_diagnostics() {
    check_dir("ok", |o| {
        if o.errors + o.warnings == 0 {
            Ok(())
        } else {
            Err("expected no diagnostics".into())
        }
    });
}

#[test]
fn warn_fixtures_have_warnings_only() {
    check_dir("warn", |o| match (o.errors, o.warnings) {
        (0, w) if w > 0 => Ok(()),
        _ => Err(format!(
            "expected warnings only, got {} errors and {} warnings",
            o.errors, o.warnings
        )),
    });
}

#[test]
fn err_fixtures_fail() {
    check_dir("err", |o| {
        if o.errors > 0 {
            Ok(())
        } else {
            Err("expected at least one error".into())
        }
    });
}

/// Every code in `docs/diagnostics.md` is produced by some fixture, and every produced code is documented.
#[test]
fn every_diagnostic_code_is_documented_and_has_a_fixture() {
    let docs =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/diagnostics.md"))
            .unwrap();
    let documented: BTreeSet<String> = docs
        .lines()
        .filter_map(|l| l.strip_prefix("### `"))
        .filter_map(|l| l.strip_suffix('`'))
        .map(String::from)
        .collect();
    assert!(
        documented.len() > 30,
        "docs/diagnostics.md lists {} codes",
        documented.len()
    );
    let produced: BTreeSet<String> = ["warn", "err"]
        .iter()
        .flat_map(|dir| fixtures(dir))
        .flat_map(|p| run(&p).codes)
        .map(String::from)
        .collect();
    let undocumented: Vec<_> = produced.difference(&documented).collect();
    let untested: Vec<_> = documented.difference(&produced).collect();
    assert!(
        undocumented.is_empty(),
        "codes produced but not in docs/diagnostics.md: {undocumented:?}"
    );
    assert!(
        untested.is_empty(),
        "documented codes no fixture produces: {untested:?}"
    );
}

/// The shipped example is complete and clean: no diagnostics at all.
#[test]
fn rules_example_compiles_clean() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("rules.example");
    let loaded = load::load_file(&path, &PlaceholderSecrets).unwrap();
    match &loaded.result {
        Ok(c) => assert!(
            c.warnings.is_empty(),
            "{}",
            c.warnings.render(&loaded.files, false)
        ),
        Err(d) => panic!("{}", d.render(&loaded.files, false)),
    }
}

/// `tests/rules/eval/*.hook`: rules with `test` blocks over the real payloads in
/// `tests/fixtures/payloads`. Every test must pass, and the `.out` beside each file records what
/// every case produced (event, delivery id, matched rules, rendered actions) for review.
#[test]
fn eval_fixtures_pass_and_match_their_outputs() {
    let mut failures = Vec::new();
    for path in fixtures("eval") {
        let loaded = load::load_file(&path, &PlaceholderSecrets).unwrap();
        let compiled = match &loaded.result {
            Ok(c) => c,
            Err(d) => panic!("{}", d.render(&loaded.files, false)),
        };
        assert!(!compiled.tests.is_empty(), "{}: no tests", path.display());
        let mut text = String::new();
        for (test, result) in compiled
            .tests
            .iter()
            .zip(hookgate::rule_test::run(compiled))
        {
            if !result.passed() {
                failures.push(format!(
                    "{} / {}: {}",
                    path.display(),
                    result.name,
                    result.failures.join("\n")
                ));
            }
            text.push_str(&describe(&compiled.rules, test));
        }
        let expected = path.with_extension("out");
        if std::panic::catch_unwind(|| expect_test::expect_file![expected].assert_eq(&text))
            .is_err()
        {
            failures.push(format!("{}: output differs from its .out", path.display()));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// What one test's delivery produced, in a stable text form.
fn describe(rules: &hookgate::ruleset::RuleSet, test: &hookgate::rule_test::RuleTest) -> String {
    use hookgate::eval::PlannedKind;
    let event = hookgate::rule_test::event(rules, test).unwrap();
    let outcome = hookgate::eval::evaluate(rules, &event);
    let mut out = format!(
        "test {:?}\n  event {:?}, delivery {:?}\n",
        test.name,
        event.name.as_deref().unwrap_or("-"),
        event.delivery.as_deref().unwrap_or("-")
    );
    let names: Vec<&str> = outcome
        .matched
        .iter()
        .map(|&i| rules.rules()[i].name())
        .collect();
    out.push_str(&format!("  matched {names:?}\n"));
    for a in &outcome.actions {
        let target = rules.targets()[a.target].name();
        match &a.kind {
            PlannedKind::Notify { body: Some(b) } => {
                out.push_str(&format!("  notify {target} {b}\n"))
            }
            PlannedKind::Notify { body: None } => {
                out.push_str(&format!("  notify {target} (original payload)\n"))
            }
            PlannedKind::Check { key } => out.push_str(&format!("  check {target} key {key:?}\n")),
            PlannedKind::Forward => out.push_str(&format!("  forward {target}\n")),
        }
    }
    out
}
