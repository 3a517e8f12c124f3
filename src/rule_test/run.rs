//! Runs compiled `test` blocks (`gateway test`): builds each recorded delivery, evaluates it, and
//! compares the outcome with the expectations. Reads payload and header files, so it sits at the IO
//! edge; the comparison itself is pure.

use std::fmt::Write;

use serde_json::Value;

use crate::compile::Compiled;
use crate::eval::{self, Planned, PlannedKind};
use crate::event::Event;
use crate::explain::{self, Explanation};
use crate::rule_test::{ExpectedAction, ExpectedBody, ExpectedKind, RuleTest, TestPayload};
use crate::ruleset::RuleSet;

/// The result of one test.
#[derive(Debug)]
pub struct TestResult {
    pub name: String,
    /// What differed, as readable lines; empty when the test passed.
    pub failures: Vec<String>,
    /// The explanation of the evaluation, for failed tests.
    pub explanation: Option<Explanation>,
}

impl TestResult {
    pub fn passed(&self) -> bool {
        self.failures.is_empty()
    }
}

/// Runs every test of a compiled rules set.
pub fn run(compiled: &Compiled) -> Vec<TestResult> {
    compiled
        .tests
        .iter()
        .map(|t| run_one(&compiled.rules, t))
        .collect()
}

/// Reads a test's payload, inline or from its file.
pub fn payload(test: &RuleTest) -> Result<Value, String> {
    match &test.payload {
        TestPayload::Inline(v) => Ok(v.clone()),
        TestPayload::File(path) => {
            let bytes = std::fs::read(path).map_err(|e| {
                format!(
                    "cannot read payload `{}`: {}",
                    path.display(),
                    crate::fs::io_reason(&e)
                )
            })?;
            serde_json::from_slice(&bytes)
                .map_err(|e| format!("payload `{}` is not JSON: {e}", path.display()))
        }
    }
}

/// A test's headers: those of its `headers file(...)`, then its `header` lines.
pub fn headers(test: &RuleTest) -> Result<Vec<(String, String)>, String> {
    let mut out = Vec::new();
    if let Some(path) = &test.headers_file {
        let bytes = std::fs::read(path).map_err(|e| {
            format!(
                "cannot read headers `{}`: {}",
                path.display(),
                crate::fs::io_reason(&e)
            )
        })?;
        let map: serde_json::Map<String, Value> = serde_json::from_slice(&bytes)
            .map_err(|e| format!("headers `{}` are not a JSON object: {e}", path.display()))?;
        for (name, value) in map {
            let value = value
                .as_str()
                .map_or_else(|| value.to_string(), String::from);
            out.push((name, value));
        }
    }
    out.extend(test.headers.iter().cloned());
    Ok(out)
}

/// The event a test describes: its source, event, headers (file and lines), query and payload.
pub fn event(rules: &RuleSet, test: &RuleTest) -> Result<Event, String> {
    let payload = payload(test)?;
    let headers = headers(test)?;
    Ok(Event::new(
        rules,
        test.source,
        test.event.clone(),
        headers,
        test.query.clone(),
        payload,
    ))
}

fn run_one(rules: &RuleSet, test: &RuleTest) -> TestResult {
    let event = match event(rules, test) {
        Ok(event) => event,
        Err(e) => {
            return TestResult {
                name: test.name.clone(),
                failures: vec![e],
                explanation: None,
            };
        }
    };
    let outcome = eval::evaluate(rules, &event);
    let mut failures = Vec::new();

    if let Some(expected) = &test.expect_matched {
        let mut want: Vec<&str> = expected.iter().map(String::as_str).collect();
        let mut got: Vec<&str> = outcome
            .matched
            .iter()
            .map(|&i| rules.rules[i].name.as_str())
            .collect();
        want.sort_unstable();
        got.sort_unstable();
        if want != got {
            let mut text = String::from("matched rules differ (- expected, + actual):");
            for name in want.iter().filter(|n| !got.contains(n)) {
                let _ = write!(text, "\n  - {name:?}");
            }
            for name in got.iter().filter(|n| !want.contains(n)) {
                let _ = write!(text, "\n  + {name:?}");
            }
            failures.push(text);
        }
    }

    if let Some(expected) = &test.expect_actions {
        let mut unused: Vec<&Planned> = outcome.actions.iter().collect();
        let mut missing = Vec::new();
        for want in expected {
            match unused
                .iter()
                .position(|p| satisfies(p, want, &event.payload))
            {
                Some(i) => {
                    unused.remove(i);
                }
                None => missing.push(want),
            }
        }
        if !missing.is_empty() || !unused.is_empty() {
            let mut text =
                String::from("actions differ (- expected but not run, + run but not expected):");
            for want in missing {
                let _ = write!(text, "\n  - {}", show_expected(rules, want));
            }
            for got in unused {
                let _ = write!(text, "\n  + {}", show_planned(rules, got));
            }
            failures.push(text);
        }
    }

    let explanation = (!failures.is_empty()).then(|| explain::explain(rules, &event));
    TestResult {
        name: test.name.clone(),
        failures,
        explanation,
    }
}

/// Whether a planned action meets an expectation. A notify without a body sends the payload itself.
fn satisfies(p: &Planned, want: &ExpectedAction, payload: &Value) -> bool {
    if p.target != want.target {
        return false;
    }
    match (&p.kind, want.kind) {
        (PlannedKind::Notify { body }, ExpectedKind::Notify) => {
            let body = body.as_ref().unwrap_or(payload);
            match &want.body {
                None => true,
                Some(ExpectedBody::Equals(v)) => eval::json_eq(body, v),
                Some(ExpectedBody::Contains(v)) => eval::contains_top(body, v),
            }
        }
        (PlannedKind::Check { key }, ExpectedKind::Check) => {
            want.key.as_ref().is_none_or(|k| k == key)
        }
        (PlannedKind::Forward, ExpectedKind::Forward) => true,
        _ => false,
    }
}

fn show_expected(rules: &RuleSet, want: &ExpectedAction) -> String {
    let target = &rules.targets[want.target].name;
    match (want.kind, &want.body, &want.key) {
        (ExpectedKind::Notify, Some(ExpectedBody::Equals(v)), _) => {
            format!("notify {target} == {v}")
        }
        (ExpectedKind::Notify, Some(ExpectedBody::Contains(v)), _) => {
            format!("notify {target} contains {v}")
        }
        (ExpectedKind::Notify, None, _) => format!("notify {target}"),
        (ExpectedKind::Check, _, Some(key)) => format!("check {target} key {key:?}"),
        (ExpectedKind::Check, _, None) => format!("check {target}"),
        (ExpectedKind::Forward, _, _) => format!("forward {target}"),
    }
}

fn show_planned(rules: &RuleSet, p: &Planned) -> String {
    let target = &rules.targets[p.target].name;
    let rule = &rules.rules[p.rule].name;
    match &p.kind {
        PlannedKind::Notify { body: Some(body) } => {
            format!("notify {target} {body}   (rule {rule:?})")
        }
        PlannedKind::Notify { body: None } => {
            format!("notify {target} with the original payload   (rule {rule:?})")
        }
        PlannedKind::Check { key } => format!("check {target} key {key:?}   (rule {rule:?})"),
        PlannedKind::Forward => format!("forward {target}   (rule {rule:?})"),
    }
}
