//! Why each rule did or did not match an event: the answer to "why didn't my hook fire?".
//!
//! [`explain`] evaluates every rule of the set against the event, recording for each clause its truth
//! value and the values its operands resolved to. It uses the predicates of `eval` (so it cannot
//! disagree with it) but evaluates every clause, without short-circuiting, so users see them all.
//! Pure; `gateway explain`, `gateway test` and (later) the delivery log render it.

use std::fmt::Write;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::eval::{self, Planned, PlannedKind};
use crate::event::Event;
use crate::ruleset::{Matcher, Operand, PredicateOp, RuleSet};

/// Values longer than this (as JSON text) are cut, with `…`.
const MAX_VALUE_CHARS: usize = 160;

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Explanation {
    /// Names of the matching rules.
    pub matched: Vec<String>,
    pub rules: Vec<RuleTrace>,
    pub actions: Vec<ActionTrace>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RuleTrace {
    pub name: String,
    pub matched: bool,
    /// Why the rule was not considered at all (another source, another event).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub skipped: Option<String>,
    /// The `when` clause, split at its top-level `and`s.
    pub clauses: Vec<ClauseTrace>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ClauseTrace {
    pub clause: String,
    pub result: bool,
    /// What each operand that reads the request resolved to.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub values: Vec<OperandTrace>,
    /// For a failed `contains` of an object: where the request differs from the literal.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub differences: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub clauses: Vec<ClauseTrace>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct OperandTrace {
    pub operand: String,
    /// Each value as JSON text, truncated; empty when the operand selected nothing.
    pub values: Vec<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ActionTrace {
    pub rule: String,
    pub kind: String,
    pub target: String,
    /// Notify: the rendered body; `null` means the original payload is sent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub body: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
}

/// Explains how every rule of `rules` treats `event`.
pub fn explain(rules: &RuleSet, event: &Event) -> Explanation {
    let source = &rules.sources[event.source];
    let mut traces = Vec::new();
    let mut matched = Vec::new();
    let mut actions = Vec::new();
    for (i, rule) in rules.rules.iter().enumerate() {
        let skipped = if !source.rules.contains(&i) {
            Some(format!("listens to other sources, not `{}`", source.name))
        } else {
            match (&rule.on, &event.name) {
                (Some(on), Some(name)) if !on.contains(name) => {
                    Some(format!("listens to {}, not `{name}`", quote_list(on)))
                }
                (Some(on), None) => Some(format!(
                    "listens to {}, and this delivery names no event",
                    quote_list(on)
                )),
                _ => None,
            }
        };
        let clauses: Vec<ClauseTrace> = match (&skipped, rule.when.as_deref()) {
            (None, Some(Matcher::And(items))) => items.iter().map(|m| trace(m, event)).collect(),
            (None, Some(m)) => vec![trace(m, event)],
            _ => Vec::new(),
        };
        let is_match = skipped.is_none() && clauses.iter().all(|c| c.result);
        if is_match {
            matched.push(rule.name.clone());
            actions.extend(
                eval::plan(rules, i, event)
                    .into_iter()
                    .map(|p| action_trace(rules, &p)),
            );
        }
        traces.push(RuleTrace {
            name: rule.name.clone(),
            matched: is_match,
            skipped,
            clauses,
        });
    }
    Explanation {
        matched,
        rules: traces,
        actions,
    }
}

fn quote_list(items: &[String]) -> String {
    items
        .iter()
        .map(|e| format!("`{e}`"))
        .collect::<Vec<_>>()
        .join(", ")
}

fn action_trace(rules: &RuleSet, p: &Planned) -> ActionTrace {
    let (kind, body, key) = match &p.kind {
        PlannedKind::Notify { body } => ("notify", Some(body.clone().unwrap_or(Value::Null)), None),
        PlannedKind::Check { key } => ("check", None, Some(key.clone())),
        PlannedKind::Forward => ("forward", None, None),
    };
    ActionTrace {
        rule: rules.rules[p.rule].name.clone(),
        kind: kind.to_string(),
        target: rules.targets[p.target].name.clone(),
        body,
        key,
    }
}

fn trace(m: &Matcher, event: &Event) -> ClauseTrace {
    let clause = m.to_string();
    match m {
        Matcher::And(items) | Matcher::Or(items) => {
            let children: Vec<ClauseTrace> = items.iter().map(|m| trace(m, event)).collect();
            let result = if matches!(m, Matcher::And(_)) {
                children.iter().all(|c| c.result)
            } else {
                children.iter().any(|c| c.result)
            };
            ClauseTrace {
                clause,
                result,
                values: Vec::new(),
                differences: Vec::new(),
                clauses: children,
            }
        }
        Matcher::Not(inner) => {
            let child = trace(inner, event);
            ClauseTrace {
                clause,
                result: !child.result,
                values: Vec::new(),
                differences: Vec::new(),
                clauses: vec![child],
            }
        }
        Matcher::Predicate(p) => {
            let (result, subject) = eval::predicate_with(p, event);
            let mut values = Vec::new();
            if !p.subject.is_literal() {
                values.push(OperandTrace {
                    operand: p.subject.to_string(),
                    values: subject.iter().map(|v| show(v)).collect(),
                });
            }
            let rhs = match &p.op {
                PredicateOp::Contains(o)
                | PredicateOp::StartsWith(o)
                | PredicateOp::EndsWith(o)
                | PredicateOp::Compare(_, o)
                | PredicateOp::In(o) => Some(o),
                PredicateOp::Matches { .. } | PredicateOp::Exists => None,
            };
            if let Some(o) = rhs.filter(|o| !o.is_literal()) {
                values.push(operand_trace(o, event));
            }
            let mut differences = Vec::new();
            if let (false, PredicateOp::Contains(Operand::Literal(want)), Some(got)) =
                (result, &p.op, subject.first())
                && want.is_object()
                && got.is_object()
            {
                let base = match &p.subject {
                    Operand::Path(path) => path.text().to_string(),
                    _ => "$".to_string(),
                };
                differ(&base, got, want, &mut differences);
                // The differences say more than a truncated dump of the whole payload.
                if matches!(p.subject, Operand::Payload) {
                    values.clear();
                }
            }
            ClauseTrace {
                clause,
                result,
                values,
                differences,
                clauses: Vec::new(),
            }
        }
    }
}

/// Where `got` fails to contain the object `want`, one line per leaf, with JSONPath-style locations.
fn differ(at: &str, got: &Value, want: &Value, out: &mut Vec<String>) {
    match (got, want) {
        (Value::Object(g), Value::Object(w)) => {
            for (k, wv) in w {
                let here = if k.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
                    && !k.starts_with(|c: char| c.is_ascii_digit())
                {
                    format!("{at}.{k}")
                } else {
                    format!("{at}[{}]", Value::String(k.clone()))
                };
                match g.get(k) {
                    None => out.push(format!("{here} is missing (wanted {})", show(wv))),
                    Some(gv) => differ(&here, gv, wv, out),
                }
            }
        }
        _ if eval::contains(got, want) => {}
        _ => out.push(format!("{at} = {} (wanted {})", show(got), show(want))),
    }
}

fn operand_trace(o: &Operand, event: &Event) -> OperandTrace {
    OperandTrace {
        operand: o.to_string(),
        values: eval::resolve(o, event).iter().map(|v| show(v)).collect(),
    }
}

/// A value as compact JSON, cut to [`MAX_VALUE_CHARS`] characters.
fn show(v: &Value) -> String {
    let text = v.to_string();
    if text.chars().count() <= MAX_VALUE_CHARS {
        return text;
    }
    let mut cut: String = text.chars().take(MAX_VALUE_CHARS).collect();
    cut.push('…');
    cut
}

/// The explanation as text for terminals: one line per rule, clauses indented under it.
pub fn render_text(e: &Explanation) -> String {
    let mut out = String::new();
    for rule in &e.rules {
        let mark = if rule.matched {
            "✓"
        } else if rule.skipped.is_some() {
            "·"
        } else {
            "✗"
        };
        let _ = write!(out, "{mark} rule {:?}", rule.name);
        match &rule.skipped {
            Some(why) => {
                let _ = writeln!(out, ": {why}");
            }
            None if rule.clauses.is_empty() => {
                let _ = writeln!(out, ": no `when`, matches every accepted event");
            }
            None => out.push('\n'),
        }
        for clause in &rule.clauses {
            render_clause(&mut out, clause, 1);
        }
        for action in e.actions.iter().filter(|a| a.rule == rule.name) {
            let detail = match (&action.body, &action.key) {
                (Some(Value::Null), _) => " (the original payload)".to_string(),
                (Some(body), _) => format!(" {}", show(body)),
                (None, Some(key)) if key.is_empty() => String::new(),
                (None, Some(key)) => format!(" key {key:?}"),
                (None, None) => String::new(),
            };
            let kind = if action.kind == "check" {
                "queue check"
            } else {
                action.kind.as_str()
            };
            let _ = writeln!(out, "    → {kind} {}{detail}", action.target);
        }
    }
    let _ = writeln!(
        out,
        "matched {} of {} rules, {} actions",
        e.matched.len(),
        e.rules.len(),
        e.actions.len()
    );
    out
}

fn render_clause(out: &mut String, c: &ClauseTrace, depth: usize) {
    let indent = "    ".repeat(depth);
    let _ = writeln!(
        out,
        "{indent}{} {}",
        if c.result { "✓" } else { "✗" },
        c.clause
    );
    for v in &c.values {
        let shown = match v.values.as_slice() {
            [] => "(nothing)".to_string(),
            [one] => one.clone(),
            many => format!("[{}]", many.join(", ")),
        };
        let _ = writeln!(out, "{indent}      {} = {shown}", v.operand);
    }
    for d in &c.differences {
        let _ = writeln!(out, "{indent}      {d}");
    }
    // A `not` or a group prints its parts only when they add information.
    if c.clauses.len() > 1
        || c.clauses
            .first()
            .is_some_and(|child| !child.values.is_empty() || !child.clauses.is_empty())
    {
        for child in &c.clauses {
            render_clause(out, child, depth + 1);
        }
    }
}
