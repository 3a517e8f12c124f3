//! `RuleSet` + `Event` → `Outcome`: which rules match and what their actions render to.
//!
//! Pure and deterministic: no IO, no clock, rules in declaration order. The semantics are those of
//! `docs/rules-language.md` (containment as PostgreSQL's jsonb `@>` plus substring for two strings;
//! a path selecting nothing makes a predicate false; type mismatches are false). Candidate rules come
//! from the source's index (`ruleset::index`), which only narrows what a full scan would find;
//! [`evaluate_scan`] is that full scan, kept for the property test that compares the two.
//!
//! [`explain`] runs the same predicates but records every clause's truth value and the values its
//! operands resolved to; `evaluate` records nothing, so explanations cost nothing when not asked for.

use std::borrow::Cow;
use std::cmp::Ordering;
use std::collections::HashSet;

use serde::Serialize;
use serde_json::{Map, Value};

use crate::event::Event;
use crate::ruleset::{
    Action, CompareOp, JsonPath, Matcher, Operand, Predicate, PredicateOp, Quantifier, Rule,
    RuleSet, StrPiece, StrTemplate, Template, walk,
};

/// What an event leads to.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Outcome {
    /// Indices into `RuleSet::rules` of the matching rules, in declaration order.
    pub matched: Vec<usize>,
    /// Their actions, rendered, in rule order then action order.
    pub actions: Vec<Planned>,
}

/// One action to enqueue.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Planned {
    /// Index into `RuleSet::rules`.
    pub rule: usize,
    /// Position of the action within its rule (part of the idempotency key).
    pub action: usize,
    pub kind: PlannedKind,
    /// Index into `RuleSet::targets`.
    pub target: usize,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "snake_case", tag = "kind")]
pub enum PlannedKind {
    /// `body: None` sends the original payload bytes.
    Notify {
        body: Option<Value>,
    },
    Check {
        key: String,
    },
    Forward,
}

/// Evaluates an event against the rules of its source, using the source's index.
pub fn evaluate(rules: &RuleSet, event: &Event) -> Outcome {
    let source = &rules.sources[event.source];
    let candidates = source
        .index
        .candidates(event.name.as_deref(), &event.payload);
    outcome(rules, event, candidates.into_iter())
}

/// Evaluates an event by testing every rule of its source: the reference the index must agree with.
pub fn evaluate_scan(rules: &RuleSet, event: &Event) -> Outcome {
    outcome(
        rules,
        event,
        rules.sources[event.source].rules.iter().copied(),
    )
}

fn outcome(rules: &RuleSet, event: &Event, candidates: impl Iterator<Item = usize>) -> Outcome {
    let mut matched = Vec::new();
    let mut actions = Vec::new();
    for i in candidates {
        let rule = &rules.rules[i];
        if accepts(rule, event) && rule.when.as_ref().is_none_or(|m| matches(m, event)) {
            matched.push(i);
            actions.extend(plan(rules, i, event));
        }
    }
    Outcome { matched, actions }
}

/// Whether the rule's `on` list accepts the event's name.
fn accepts(rule: &Rule, event: &Event) -> bool {
    match (&rule.on, &event.name) {
        (None, _) => true,
        (Some(on), Some(name)) => on.iter().any(|e| e == name),
        (Some(_), None) => false,
    }
}

/// Renders the actions of matching rule `i`.
pub fn plan(rules: &RuleSet, i: usize, event: &Event) -> Vec<Planned> {
    rules.rules[i]
        .actions
        .iter()
        .enumerate()
        .map(|(action, a)| {
            let kind = match a {
                Action::Notify { body, .. } => PlannedKind::Notify {
                    body: body.as_ref().map(|t| render(t, event)),
                },
                Action::Check { key, .. } => PlannedKind::Check {
                    key: key
                        .as_ref()
                        .map(|k| render_str(k, event))
                        .unwrap_or_default(),
                },
                Action::Forward { .. } => PlannedKind::Forward,
            };
            Planned {
                rule: i,
                action,
                kind,
                target: a.target(),
            }
        })
        .collect()
}

/// Evaluates a match expression.
pub fn matches(m: &Matcher, event: &Event) -> bool {
    match m {
        Matcher::And(items) => items.iter().all(|m| matches(m, event)),
        Matcher::Or(items) => items.iter().any(|m| matches(m, event)),
        Matcher::Not(inner) => !matches(inner, event),
        Matcher::Predicate(p) => predicate(p, event),
    }
}

/// Values an operand reads: zero, one or many.
pub(crate) fn resolve<'a>(operand: &'a Operand, event: &'a Event) -> Vec<Cow<'a, Value>> {
    let text = |s: &str| Cow::Owned(Value::String(s.to_string()));
    match operand {
        Operand::Literal(v) => vec![Cow::Borrowed(&**v)],
        Operand::Path(p) => {
            if p.simple.is_none() && !affordable(event) {
                return Vec::new();
            }
            select(p, &event.payload)
                .into_iter()
                .map(Cow::Borrowed)
                .collect()
        }
        Operand::Payload => vec![Cow::Borrowed(&event.payload)],
        Operand::Event => event.name.as_deref().map(text).into_iter().collect(),
        Operand::Source => vec![text(&event.source_name)],
        Operand::Delivery => event.delivery.as_deref().map(text).into_iter().collect(),
        Operand::Header(h) => event.header_values(h).map(text).collect(),
        Operand::Query(q) => event.query_values(q).map(text).collect(),
    }
}

/// The most path text the general JSONPath engine may build for one payload. jsonpath-rust gives every
/// node it visits a copy of its whole path (`$['key'][0]...`) and keeps them all until the query ends,
/// so a signed body of 400 KB (a 100,000-byte key above 100,000 array items) took it 12.5 s and 20 GB
/// (a smaller machine's gateway aborted). A payload whose paths add up to more is not queried by it:
/// such paths select nothing there (the log says so, once per request). Paths that name one location
/// are walked without it, always.
pub const MAX_PATH_TEXT: usize = 64 << 20;

/// Whether the general engine may query this event's payload: the sum over its nodes of the length of
/// each node's path as jsonpath-rust writes it, what a query visiting every node once builds (`$..x`,
/// wildcards). A filter that queries below each node it tests visits nodes more than once, which this
/// does not bound.
fn affordable(event: &Event) -> bool {
    *event.path_text.get_or_init(|| {
        let total = path_text(&event.payload, 1, MAX_PATH_TEXT + 1);
        if total > MAX_PATH_TEXT {
            tracing::warn!(
                limit = MAX_PATH_TEXT,
                "the payload's node paths add up to more than the limit: JSONPaths other than those naming one place select nothing in it"
            );
        }
        total
    }) <= MAX_PATH_TEXT
}

/// The path text of `value`'s subtree, its own path being `own` bytes long; stops counting past `cap`.
fn path_text(value: &Value, own: usize, cap: usize) -> usize {
    let mut total = own;
    match value {
        Value::Object(map) => {
            for (key, child) in map {
                // `['key']`, the key escaped as jsonpath-rust escapes it.
                let escaped: usize = key
                    .chars()
                    .map(|c| match c {
                        '\u{8}' | '\u{c}' | '\n' | '\r' | '\t' | '\'' | '\\' => 2,
                        c if c < ' ' => 6,
                        c => c.len_utf8(),
                    })
                    .sum();
                total += path_text(child, own + escaped + 4, cap - total.min(cap));
                if total > cap {
                    return total;
                }
            }
        }
        Value::Array(items) => {
            for (i, child) in items.iter().enumerate() {
                let digits = i.checked_ilog10().unwrap_or(0) as usize + 1;
                total += path_text(child, own + digits + 2, cap - total.min(cap));
                if total > cap {
                    return total;
                }
            }
        }
        _ => {}
    }
    total
}

/// The values a JSONPath selects.
pub(crate) fn select<'a>(path: &JsonPath, payload: &'a Value) -> Vec<&'a Value> {
    match &path.simple {
        Some(steps) => walk(steps, payload).into_iter().collect(),
        None => match jsonpath_rust::query::js_path_process(&path.query, payload) {
            Ok(refs) => refs.into_iter().map(|r| r.val).collect(),
            // Only a path that evaluates to a computed value (not a node) errs; it selects nothing.
            Err(_) => Vec::new(),
        },
    }
}

fn predicate(p: &Predicate, event: &Event) -> bool {
    predicate_with(p, event).0
}

/// Evaluates a predicate; also returns the subject's values (for explanations).
pub(crate) fn predicate_with<'a>(p: &'a Predicate, r: &'a Event) -> (bool, Vec<Cow<'a, Value>>) {
    let subject = resolve(&p.subject, r);
    if let PredicateOp::Exists = p.op {
        return (!subject.is_empty(), subject);
    }
    if subject.is_empty() {
        return (false, subject);
    }
    // The right operand is resolved once for all the subject's values: resolved per value, a payload
    // path on the right made a predicate over a big array quadratic in the body (`$..` on the right,
    // hours for a signed body of a few megabytes).
    let right = match &p.op {
        PredicateOp::Exists | PredicateOp::Matches { .. } => None,
        PredicateOp::Contains(o)
        | PredicateOp::StartsWith(o)
        | PredicateOp::EndsWith(o)
        | PredicateOp::Compare(_, o)
        | PredicateOp::In(o) => Some(one(r, o)),
    };
    let right = right.as_ref().and_then(|o| o.as_deref());
    // `in` a long list read from the payload: its strings in a set, so that testing many values is
    // not a scan of the list for each (strings are equal only to equal strings; other values scan).
    let strings: Option<HashSet<&str>> = match (&p.op, right) {
        (PredicateOp::In(_), Some(Value::Array(items)))
            if items.len() > 16 && subject.len() > 1 =>
        {
            Some(items.iter().filter_map(Value::as_str).collect())
        }
        _ => None,
    };
    let test = |s: &Value| -> bool {
        match (&p.op, right) {
            (PredicateOp::Exists, _) => true,
            (PredicateOp::Matches { regex, .. }, _) => {
                s.as_str().is_some_and(|s| regex.is_match(s))
            }
            // A right operand selecting none or several values makes the predicate false.
            (_, None) => false,
            (PredicateOp::Contains(_), Some(o)) => contains_top(s, o),
            (PredicateOp::StartsWith(_), Some(o)) => {
                matches!((s, o), (Value::String(a), Value::String(b)) if a.starts_with(b.as_str()))
            }
            (PredicateOp::EndsWith(_), Some(o)) => {
                matches!((s, o), (Value::String(a), Value::String(b)) if a.ends_with(b.as_str()))
            }
            (PredicateOp::Compare(op, _), Some(o)) => compare(*op, s, o),
            (PredicateOp::In(_), Some(o)) => match (o, &strings, s) {
                (Value::Array(_), Some(set), Value::String(text)) => set.contains(text.as_str()),
                (Value::Array(items), _, _) => items.iter().any(|i| json_eq(s, i)),
                _ => false,
            },
        }
    };
    let result = match p.quantifier {
        Some(Quantifier::All) => subject.iter().all(|s| test(s)),
        Some(Quantifier::Any) | None => subject.iter().any(|s| test(s)),
    };
    (result, subject)
}

/// The right operand's single value; reads selecting none or several make the predicate false.
fn one<'a>(r: &'a Event, operand: &'a Operand) -> Option<Cow<'a, Value>> {
    let mut values = resolve(operand, r);
    if values.len() == 1 {
        values.pop()
    } else {
        None
    }
}

fn compare(op: CompareOp, a: &Value, b: &Value) -> bool {
    match op {
        CompareOp::Eq => json_eq(a, b),
        CompareOp::Ne => !json_eq(a, b),
        _ => {
            let ordering = match (a, b) {
                (Value::Number(x), Value::Number(y)) => number_cmp(x, y),
                (Value::String(x), Value::String(y)) => Some(x.cmp(y)),
                _ => None,
            };
            ordering.is_some_and(|o| match op {
                CompareOp::Lt => o == Ordering::Less,
                CompareOp::Le => o != Ordering::Greater,
                CompareOp::Gt => o == Ordering::Greater,
                CompareOp::Ge => o != Ordering::Less,
                CompareOp::Eq | CompareOp::Ne => unreachable!("handled above"),
            })
        }
    }
}

/// Compares numbers by value: exactly for integers, as floats otherwise.
fn number_cmp(x: &serde_json::Number, y: &serde_json::Number) -> Option<Ordering> {
    if let (Some(a), Some(b)) = (x.as_i64(), y.as_i64()) {
        return Some(a.cmp(&b));
    }
    if let (Some(a), Some(b)) = (x.as_u64(), y.as_u64()) {
        return Some(a.cmp(&b));
    }
    x.as_f64()?.partial_cmp(&y.as_f64()?)
}

/// JSON equality: numbers by value (`1 == 1.0`), objects regardless of key order.
pub fn json_eq(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => number_cmp(x, y) == Some(Ordering::Equal),
        (Value::Array(x), Value::Array(y)) => {
            x.len() == y.len() && x.iter().zip(y).all(|(a, b)| json_eq(a, b))
        }
        (Value::Object(x), Value::Object(y)) => {
            x.len() == y.len()
                && x.iter()
                    .all(|(k, v)| y.get(k).is_some_and(|w| json_eq(v, w)))
        }
        _ => a == b,
    }
}

/// `contains` between the two operands themselves: the top-level exceptions, then jsonb `@>`.
pub fn contains_top(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::String(a), Value::String(b)) => a.contains(b.as_str()),
        (Value::Array(items), b) if is_scalar(b) => {
            items.iter().any(|i| is_scalar(i) && json_eq(i, b))
        }
        _ => contains(a, b),
    }
}

/// PostgreSQL's jsonb containment `a @> b` below the top level.
pub fn contains(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Object(a), Value::Object(b)) => b
            .iter()
            .all(|(k, bv)| a.get(k).is_some_and(|av| contains(av, bv))),
        (Value::Array(a), Value::Array(b)) => b.iter().all(|bv| match bv {
            Value::Array(_) => a.iter().any(|av| av.is_array() && contains(av, bv)),
            Value::Object(_) => a.iter().any(|av| av.is_object() && contains(av, bv)),
            scalar => a.iter().any(|av| is_scalar(av) && json_eq(av, scalar)),
        }),
        (a, b) if is_scalar(a) && is_scalar(b) => json_eq(a, b),
        _ => false,
    }
}

fn is_scalar(v: &Value) -> bool {
    !matches!(v, Value::Array(_) | Value::Object(_))
}

/// Renders a body template.
pub fn render(t: &Template, event: &Event) -> Value {
    match t {
        Template::Operand(o) => {
            let mut values = resolve(o, event);
            match values.len() {
                0 => Value::Null,
                1 => values.pop().map(Cow::into_owned).unwrap_or(Value::Null),
                _ => Value::Array(values.into_iter().map(Cow::into_owned).collect()),
            }
        }
        Template::String(s) => Value::String(render_str(s, event)),
        Template::Object(members) => Value::Object(
            members
                .iter()
                .map(|(k, v)| (k.clone(), render(v, event)))
                .collect::<Map<_, _>>(),
        ),
        Template::Array(items) => Value::Array(items.iter().map(|v| render(v, event)).collect()),
    }
}

/// Renders a string template: strings as their text, other values as JSON, nothing as empty.
pub fn render_str(t: &StrTemplate, event: &Event) -> String {
    let mut out = String::new();
    for piece in &t.pieces {
        match piece {
            StrPiece::Text(s) => out.push_str(s),
            StrPiece::Operand(o) => {
                let values = resolve(o, event);
                match values.as_slice() {
                    [] => {}
                    [one] => match &**one {
                        Value::String(s) => out.push_str(s),
                        other => out.push_str(&other.to_string()),
                    },
                    many => out.push_str(
                        &Value::Array(many.iter().map(|v| (**v).clone()).collect()).to_string(),
                    ),
                }
            }
            // INVARIANT: `compile` rejects secrets outside target URLs and headers, which are rendered
            // by the dispatcher, not here.
            StrPiece::Secret(_) => {}
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    use crate::compile::PlaceholderSecrets;

    /// Compiles one rule with `when` and evaluates it against `payload` (and a `push` event with a
    /// delivery id and a repeated header).
    fn holds(when: &str, payload: Value) -> bool {
        let text = format!(
            "secret s = env(\"S\")\nsource src: github {{ secret s }}\ntarget t {{ post \"http://127.0.0.1:9/\" }}\nrule \"r\" {{ from src when {when} notify t }}\n"
        );
        let loaded = crate::load::load_text("t.hook", None, text.as_bytes(), &PlaceholderSecrets);
        let rules = match loaded.result {
            Ok(c) => c.rules,
            Err(d) => panic!("{when}: {}", d.render(&loaded.files, false)),
        };
        let headers = vec![
            ("X-GitHub-Event".to_string(), "push".to_string()),
            ("X-GitHub-Delivery".to_string(), "d-1".to_string()),
            ("X-Tag".to_string(), "a".to_string()),
            ("X-Tag".to_string(), "b".to_string()),
        ];
        let query = vec![("team".to_string(), "core".to_string())];
        let event = Event::new(&rules, 0, None, headers, query, payload);
        let indexed = !evaluate(&rules, &event).matched.is_empty();
        let scanned = !evaluate_scan(&rules, &event).matched.is_empty();
        assert_eq!(indexed, scanned, "index and scan disagree on {when}");
        indexed
    }

    /// `$.l contains R` with `$.l` set to `left`.
    fn contains_case(left: Value, right: &str) -> bool {
        holds(&format!("$.l contains {right}"), json!({ "l": left }))
    }

    #[test]
    fn containment_follows_postgresql_jsonb() {
        // The rows of docs/rules-language.md, from PostgreSQL's documentation.
        assert!(contains_case(json!("foo"), r#""foo""#));
        assert!(contains_case(json!([1, 2, 3]), "[1, 3]"));
        assert!(contains_case(json!([1, 2, 3]), "[3, 1]"));
        assert!(contains_case(json!([1, 2, 3]), "[1, 2, 2]"));
        assert!(contains_case(
            json!({"product": "PostgreSQL", "version": 9.4, "jsonb": true}),
            r#"{"version": 9.4}"#
        ));
        assert!(!contains_case(json!([1, 2, [1, 3]]), "[1, 3]"));
        assert!(contains_case(json!([1, 2, [1, 3]]), "[[1, 3]]"));
        assert!(!contains_case(
            json!({"foo": {"bar": "baz"}}),
            r#"{"bar": "baz"}"#
        ));
        assert!(contains_case(
            json!({"foo": {"bar": "baz"}}),
            r#"{"foo": {}}"#
        ));
        assert!(contains_case(json!(["foo", "bar", "baz"]), r#"["bar"]"#));
        assert!(contains_case(json!(["foo", "bar"]), r#""foo""#));
        assert!(!contains_case(json!("foo"), r#"["foo"]"#));
        // hookgate's extension: substring for two strings, at the top level only.
        assert!(contains_case(json!("refs/heads/main"), r#""heads""#));
        assert!(!contains_case(
            json!({"ref": "refs/heads/main"}),
            r#"{"ref": "main"}"#
        ));
        assert!(contains_case(
            json!({"ref": "refs/heads/main"}),
            r#"{"ref": "refs/heads/main"}"#
        ));
        // The array-contains-scalar exception is top level only.
        assert!(!contains_case(
            json!({"labels": ["bug", "ui"]}),
            r#"{"labels": "bug"}"#
        ));
        assert!(contains_case(
            json!({"labels": ["bug", "ui"]}),
            r#"{"labels": ["bug"]}"#
        ));
        // Numbers compare by value; types must agree; objects never contain arrays.
        assert!(contains_case(json!({"n": 1.0}), r#"{"n": 1}"#));
        assert!(!contains_case(json!({"n": "1"}), r#"{"n": 1}"#));
        assert!(!contains_case(json!({"a": 1}), "[1]"));
        assert!(!contains_case(json!(1), r#""1""#));
    }

    #[test]
    fn payload_contains_nested_objects() {
        let push = json!({"ref": "refs/heads/main", "repository": {"full_name": "acme/app", "private": false}});
        assert!(holds(
            r#"payload contains {"repository": {"full_name": "acme/app"}, "ref": "refs/heads/main"}"#,
            push.clone()
        ));
        assert!(!holds(
            r#"payload contains {"repository": {"full_name": "acme/other"}}"#,
            push.clone()
        ));
        assert!(holds(
            r#"payload contains {"repository": {"private": false}}"#,
            push.clone()
        ));
        assert!(!holds(r#"payload contains {"missing": null}"#, push));
    }

    #[test]
    fn strings_numbers_and_types() {
        let p = json!({"s": "refs/heads/release/1.2", "n": 10, "f": 2.5, "b": true, "z": null, "big": 18446744073709551615u64});
        assert!(holds(r#"$.s starts with "refs/heads/""#, p.clone()));
        assert!(holds(r#"$.s ends with "/1.2""#, p.clone()));
        assert!(
            !holds(r#"$.n starts with "1""#, p.clone()),
            "a number is not a string"
        );
        assert!(holds(r"$.s matches /release\/\d+\.\d+$/", p.clone()));
        assert!(holds(r"$.s matches /RELEASE/i", p.clone()));
        assert!(
            !holds(r"$.n matches /10/", p.clone()),
            "regexes match strings only"
        );
        assert!(holds("$.n == 10.0", p.clone()));
        assert!(holds(
            "$.n > 9 and $.n >= 10 and $.n < 11 and $.n <= 10",
            p.clone()
        ));
        assert!(holds("$.f > 2 and $.f < 3", p.clone()));
        assert!(
            holds("$.big > 18446744073709551614", p.clone()),
            "large integers compare exactly"
        );
        assert!(
            holds(
                r#"$.s > "refs/heads/main" and $.s < "refs/tags""#,
                p.clone()
            ),
            "strings compare lexically"
        );
        assert!(!holds(r#"$.n < "11""#, p.clone()), "mixed types are false");
        assert!(!holds(r#"$.n == "10""#, p.clone()));
        assert!(holds(r#"$.n != "10""#, p.clone()));
        assert!(holds("$.b == true and $.z == null", p.clone()));
        assert!(holds(r#"$.n in [1, 10, "x"]"#, p.clone()));
        assert!(!holds(r#"$.n in ["10"]"#, p.clone()));
    }

    #[test]
    fn missing_values_make_predicates_false() {
        let p = json!({"a": 1, "z": null});
        for when in [
            r#"$.x == 1"#,
            r#"$.x != 1"#,
            r#"$.x contains "a""#,
            r#"$.x < 1"#,
            r#"$.x in [1]"#,
            r#"$.x matches /./"#,
        ] {
            assert!(!holds(when, p.clone()), "{when}");
            assert!(holds(&format!("not {when}"), p.clone()), "not {when}");
        }
        assert!(!holds("$.x exists", p.clone()));
        assert!(holds("$.z exists", p.clone()), "a present null exists");
        assert!(holds("not $.x exists", p.clone()));
        assert!(!holds("all $.x == 1", p), "`all` over nothing is false");
    }

    #[test]
    fn quantifiers_over_many_values() {
        let p = json!({"commits": [{"m": "fix: a", "e": "x@acme.io"}, {"m": "feat: b", "e": "y@acme.io"}]});
        assert!(
            holds(r#"$.commits[*].m starts with "fix""#, p.clone()),
            "a bare multi-valued path is `any`"
        );
        assert!(holds(r#"any $.commits[*].m starts with "feat""#, p.clone()));
        assert!(!holds(r#"all $.commits[*].m starts with "fix""#, p.clone()));
        assert!(holds(
            r#"all $.commits[*].e ends with "@acme.io""#,
            p.clone()
        ));
        assert!(holds(r#"$..m == "feat: b""#, p.clone()));
        assert!(holds("$.commits[?@.m == 'fix: a'].e exists", p.clone()));
        assert!(
            !holds(r#"$.commits == "fix: a""#, p),
            "`$.commits` is one value, the array"
        );
    }

    #[test]
    fn in_a_long_list_read_from_the_payload() {
        // Past 16 items the list's strings are looked up in a set; numbers and other values still
        // compare as JSON (`1 == 1.0`), and a string never equals a number.
        let mut list: Vec<Value> = (0..40).map(|i| json!(format!("b{i}"))).collect();
        list.extend([json!(1.0), json!({"k": [1]}), json!("7")]);
        let p = |xs: Value| json!({"xs": xs, "list": list});
        assert!(holds("any $.xs[*] in $.list", p(json!(["a", "b39"]))));
        assert!(holds("any $.xs[*] in $.list", p(json!(["a", 1]))));
        assert!(holds(
            "any $.xs[*] in $.list",
            p(json!([{"k": [1.0]}, "z"]))
        ));
        assert!(!holds("any $.xs[*] in $.list", p(json!(["a", 7, "b40"]))));
        assert!(holds("all $.xs[*] in $.list", p(json!(["b0", "7", 1]))));
        assert!(!holds("all $.xs[*] in $.list", p(json!(["b0", "B1"]))));
        // Read with `$..`, once for all the values on the left.
        assert!(holds("any $.xs[*] in $..list", p(json!(["a", "b3"]))));
    }

    #[test]
    fn a_payload_too_costly_for_the_jsonpath_engine_is_not_queried_by_it() {
        // A long key above many items: the engine would write the key into the path of every item.
        let costly = json!({"k".repeat(20_000): vec![0; 20_000], "x": 1});
        assert!(path_text(&costly, 1, usize::MAX) > MAX_PATH_TEXT);
        assert!(
            !holds("$..x == 1", costly.clone()),
            "not queried: selects nothing"
        );
        assert!(!holds("$..x exists", costly.clone()));
        // Paths naming one place are walked directly, whatever the payload.
        assert!(holds("$.x == 1", costly));
        let fine = json!({"k".repeat(200): vec![0; 200], "x": 1});
        assert!(path_text(&fine, 1, usize::MAX) <= MAX_PATH_TEXT);
        assert!(holds("$..x == 1", fine));
        // The count is the length of every path as jsonpath-rust writes it: `$`, `$['a']`,
        // `$['a'][0]`, `$['a'][1]`, `$['b\n']` (the newline escaped).
        let small = json!({"a": [1, 2], "b\n": null});
        assert_eq!(path_text(&small, 1, usize::MAX), 1 + 6 + 9 + 9 + 8);
        // And so does the engine, for every node below the root.
        let all = jsonpath_rust::parser::parse_json_path("$..*").unwrap();
        let engine: usize = jsonpath_rust::query::js_path_process(&all, &small)
            .unwrap()
            .iter()
            .map(|r| r.path.len())
            .sum();
        assert_eq!(path_text(&small, 1, usize::MAX), 1 + engine);
    }

    #[test]
    fn headers_query_event_source_delivery() {
        let p = json!({});
        assert!(
            holds(r#"header("x-github-event") == "push""#, p.clone()),
            "names are case-insensitive"
        );
        assert!(
            holds(r#"header("X-TAG") == "b""#, p.clone()),
            "a repeated header: any value"
        );
        assert!(!holds(r#"all header("X-Tag") == "b""#, p.clone()));
        assert!(holds(
            r#"query("team") == "core" and not query("other") exists"#,
            p.clone()
        ));
        assert!(holds(
            r#"event == "push" and source == "src" and delivery == "d-1""#,
            p.clone()
        ));
        assert!(
            holds(r#"$.a == $.b"#, json!({"a": [1], "b": [1]})),
            "right operands may read the request"
        );
        assert!(
            !holds(r#"$.a == $.b[*]"#, json!({"a": 1, "b": [1, 1]})),
            "a right operand with several values is false"
        );
        assert!(holds(r#"$.a in $.list"#, json!({"a": 2, "list": [1, 2]})));
    }

    #[test]
    fn boolean_logic() {
        let p = json!({"a": 1, "b": 2});
        assert!(holds("$.a == 1 and $.b == 2", p.clone()));
        assert!(holds("$.a == 0 or $.b == 2", p.clone()));
        assert!(holds("not ($.a == 0 or $.b == 0)", p.clone()));
        assert!(!holds("not $.a == 1 and $.b == 2", p.clone()));
        assert!(holds("$.a == 0 and $.b == 0 or $.a == 1", p));
    }

    #[test]
    fn templates_render_values_and_strings() {
        let text = "secret s = env(\"S\")\nsource src: github { secret s }\ntarget t { post \"http://127.0.0.1:9/\" }\n\
            rule \"r\" { from src\n notify t {\"url\": $.repo.url, \"none\": $.missing, \"many\": $.c[*].id, \"lit\": [1, {\"k\": true}],\n \
            \"s\": \"${event}/${source}/${delivery}/${$.repo.name}/${$.n}/${$.missing}/${$.c[*].id}/${header(\"X-Tag\")}\", \"q\": query(\"team\")}\n \
            queue check t key \"${$.repo.name}@${$.ref}\"\n queue check t\n notify t\n forward t }\n";
        let loaded = crate::load::load_text("t.hook", None, text.as_bytes(), &PlaceholderSecrets);
        let rules = loaded.result.unwrap().rules;
        let payload = json!({"repo": {"url": "git@x:a/b", "name": "b"}, "n": 3, "c": [{"id": 1}, {"id": 2}], "ref": "main"});
        let headers = vec![
            ("x-github-event".into(), "push".into()),
            ("x-github-delivery".into(), "d".into()),
            ("x-tag".into(), "t1".into()),
        ];
        let event = Event::new(
            &rules,
            0,
            None,
            headers,
            vec![("team".into(), "core".into())],
            payload,
        );
        let out = evaluate(&rules, &event);
        assert_eq!(out.matched, vec![0]);
        let kinds: Vec<&PlannedKind> = out.actions.iter().map(|a| &a.kind).collect();
        assert_eq!(
            kinds[0],
            &PlannedKind::Notify {
                body: Some(
                    json!({"url": "git@x:a/b", "none": null, "many": [1, 2], "lit": [1, {"k": true}],
                    "s": "push/src/d/b/3//[1,2]/t1", "q": "core"})
                )
            }
        );
        assert_eq!(
            kinds[1],
            &PlannedKind::Check {
                key: "b@main".into()
            }
        );
        assert_eq!(kinds[2], &PlannedKind::Check { key: String::new() });
        assert_eq!(kinds[3], &PlannedKind::Notify { body: None });
        assert_eq!(kinds[4], &PlannedKind::Forward);
        assert_eq!(
            out.actions.iter().map(|a| a.action).collect::<Vec<_>>(),
            vec![0, 1, 2, 3, 4]
        );
    }
}
