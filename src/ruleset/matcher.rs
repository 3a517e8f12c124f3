//! Compiled match expressions. Regexes and JSONPaths are compiled once, in `compile`; evaluating a
//! `Matcher` cannot fail. `Display` prints the canonical form of the expression, with the
//! parentheses that precedence requires and no others.

use std::fmt::{self, Display};
use std::sync::Arc;

use jsonpath_rust::parser::model::JpQuery;
use serde_json::Value;

/// A JSONPath parsed at load.
#[derive(Debug)]
pub struct JsonPath {
    pub(crate) text: String,
    pub(crate) query: JpQuery,
    /// For paths that name one location (`$.a.b[0]`, `$['a-b']`), the steps to it: evaluation walks
    /// them directly instead of running the general JSONPath engine.
    pub(crate) simple: Option<Vec<Step>>,
}

/// One step of a simple path.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Step {
    Key(String),
    /// An array index; negative counts from the end, as in RFC 9535.
    Index(i64),
}

impl JsonPath {
    /// Parses the steps of a simple path, or `None` for anything with wildcards, filters, slices,
    /// descendants, unions or escapes.
    pub(crate) fn simple_steps(text: &str) -> Option<Vec<Step>> {
        let mut rest = text.strip_prefix('$')?;
        let mut steps = Vec::new();
        while !rest.is_empty() {
            if let Some(after) = rest.strip_prefix('.') {
                let end = after.find(['.', '[']).unwrap_or(after.len());
                let name = &after[..end];
                let first = name.chars().next()?;
                let valid = (first.is_ascii_alphabetic() || first == '_' || !first.is_ascii())
                    && name
                        .chars()
                        .all(|c| c.is_ascii_alphanumeric() || c == '_' || !c.is_ascii());
                if !valid {
                    return None;
                }
                steps.push(Step::Key(name.to_string()));
                rest = &after[end..];
            } else if let Some(after) = rest.strip_prefix('[') {
                let end = after.find(']')?;
                let inner = after[..end].trim();
                let quoted = inner
                    .strip_prefix('\'')
                    .and_then(|s| s.strip_suffix('\''))
                    .or_else(|| inner.strip_prefix('"').and_then(|s| s.strip_suffix('"')));
                match quoted {
                    Some(key) if !key.contains(['\\', '\'', '"']) => {
                        steps.push(Step::Key(key.to_string()))
                    }
                    Some(_) => return None,
                    None => steps.push(Step::Index(inner.parse().ok()?)),
                }
                rest = &after[end + 1..];
            } else {
                return None;
            }
        }
        Some(steps)
    }
}

impl JsonPath {
    pub fn text(&self) -> &str {
        &self.text
    }
}

/// Something a predicate reads: a literal or a part of the request.
#[derive(Debug, Clone)]
pub enum Operand {
    Literal(Arc<Value>),
    Path(Arc<JsonPath>),
    Payload,
    Event,
    Source,
    Delivery,
    /// Header name, lowercased (header lookup is case-insensitive).
    Header(String),
    Query(String),
}

impl Operand {
    pub fn is_literal(&self) -> bool {
        matches!(self, Operand::Literal(_))
    }
}

impl Display for Operand {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Operand::Literal(v) => write!(f, "{v}"),
            Operand::Path(p) => f.write_str(&p.text),
            Operand::Payload => f.write_str("payload"),
            Operand::Event => f.write_str("event"),
            Operand::Source => f.write_str("source"),
            Operand::Delivery => f.write_str("delivery"),
            Operand::Header(h) => write!(f, "header({h:?})"),
            Operand::Query(q) => write!(f, "query({q:?})"),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Quantifier {
    Any,
    All,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CompareOp {
    Eq,
    Ne,
    Lt,
    Le,
    Gt,
    Ge,
}

impl CompareOp {
    pub fn as_str(self) -> &'static str {
        match self {
            CompareOp::Eq => "==",
            CompareOp::Ne => "!=",
            CompareOp::Lt => "<",
            CompareOp::Le => "<=",
            CompareOp::Gt => ">",
            CompareOp::Ge => ">=",
        }
    }
}

#[derive(Debug, Clone)]
pub enum PredicateOp {
    Contains(Operand),
    StartsWith(Operand),
    EndsWith(Operand),
    Matches {
        regex: Arc<regex::Regex>,
        flags: String,
    },
    Compare(CompareOp, Operand),
    In(Operand),
    Exists,
}

/// One test of one operand.
#[derive(Debug, Clone, PartialEq)]
pub struct Predicate {
    /// `None` when not written: a multi-valued subject then means `any`.
    pub quantifier: Option<Quantifier>,
    pub subject: Operand,
    pub op: PredicateOp,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Matcher {
    And(Vec<Matcher>),
    Or(Vec<Matcher>),
    Not(Box<Matcher>),
    Predicate(Predicate),
}

/// Literals are equal only when written alike, key order included: `serde_json::Map`'s own equality
/// ignores the order, but a body renders in it, so a reload must not keep the old order.
impl PartialEq for Operand {
    fn eq(&self, other: &Operand) -> bool {
        use Operand::*;
        match (self, other) {
            (Literal(a), Literal(b)) => Arc::ptr_eq(a, b) || same_json(a, b),
            (Path(a), Path(b)) => a == b,
            (Payload, Payload) | (Event, Event) | (Source, Source) | (Delivery, Delivery) => true,
            (Header(a), Header(b)) | (Query(a), Query(b)) => a == b,
            _ => false,
        }
    }
}

/// JSON equality that also compares the order of object members (and numbers as written).
pub(crate) fn same_json(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Object(a), Value::Object(b)) => {
            a.len() == b.len()
                && a.iter()
                    .zip(b)
                    .all(|((ka, va), (kb, vb))| ka == kb && same_json(va, vb))
        }
        (Value::Array(a), Value::Array(b)) => {
            a.len() == b.len() && a.iter().zip(b).all(|(a, b)| same_json(a, b))
        }
        (a, b) => a == b,
    }
}

/// Compiled regexes are equal when they were compiled from the same pattern with the same flags.
impl PartialEq for PredicateOp {
    fn eq(&self, other: &PredicateOp) -> bool {
        use PredicateOp::*;
        match (self, other) {
            (Contains(a), Contains(b))
            | (StartsWith(a), StartsWith(b))
            | (EndsWith(a), EndsWith(b))
            | (In(a), In(b)) => a == b,
            (
                Matches { regex, flags },
                Matches {
                    regex: other_regex,
                    flags: other_flags,
                },
            ) => regex.as_str() == other_regex.as_str() && flags == other_flags,
            (Compare(op, a), Compare(other_op, b)) => op == other_op && a == b,
            (Exists, Exists) => true,
            _ => false,
        }
    }
}

/// JSONPaths are equal when written alike: the query and its steps follow from the text.
impl PartialEq for JsonPath {
    fn eq(&self, other: &JsonPath) -> bool {
        self.text == other.text
    }
}

impl Display for Predicate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.quantifier {
            Some(Quantifier::Any) => f.write_str("any ")?,
            Some(Quantifier::All) => f.write_str("all ")?,
            None => {}
        }
        write!(f, "{}", self.subject)?;
        match &self.op {
            PredicateOp::Contains(o) => write!(f, " contains {o}"),
            PredicateOp::StartsWith(o) => write!(f, " starts with {o}"),
            PredicateOp::EndsWith(o) => write!(f, " ends with {o}"),
            PredicateOp::Matches { regex, flags } => {
                write!(
                    f,
                    " matches /{}/{flags}",
                    regex_source(regex.as_str(), flags).replace('/', "\\/")
                )
            }
            PredicateOp::Compare(op, o) => write!(f, " {} {o}", op.as_str()),
            PredicateOp::In(o) => write!(f, " in {o}"),
            PredicateOp::Exists => f.write_str(" exists"),
        }
    }
}

/// The pattern as the user wrote it: flags are compiled in as a `(?flags)` prefix, which we strip.
fn regex_source<'a>(compiled: &'a str, flags: &str) -> &'a str {
    if flags.is_empty() {
        compiled
    } else {
        compiled
            .strip_prefix(&format!("(?{flags})"))
            .unwrap_or(compiled)
    }
}

impl Matcher {
    /// Binding strength, for printing: `or` < `and` < `not` < predicate.
    fn precedence(&self) -> u8 {
        match self {
            Matcher::Or(_) => 0,
            Matcher::And(_) => 1,
            Matcher::Not(_) => 2,
            Matcher::Predicate(_) => 3,
        }
    }

    fn fmt_child(&self, f: &mut fmt::Formatter<'_>, parent: u8) -> fmt::Result {
        if self.precedence() <= parent && !matches!(self, Matcher::Not(_)) {
            write!(f, "({self})")
        } else {
            write!(f, "{self}")
        }
    }
}

impl Display for Matcher {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Matcher::And(items) | Matcher::Or(items) => {
                let sep = if matches!(self, Matcher::And(_)) {
                    " and "
                } else {
                    " or "
                };
                for (i, item) in items.iter().enumerate() {
                    if i > 0 {
                        f.write_str(sep)?;
                    }
                    item.fmt_child(f, self.precedence())?;
                }
                Ok(())
            }
            Matcher::Not(inner) => {
                f.write_str("not ")?;
                inner.fmt_child(f, 1)
            }
            Matcher::Predicate(p) => write!(f, "{p}"),
        }
    }
}

/// Follows simple-path steps.
pub fn walk<'a>(steps: &[Step], mut value: &'a Value) -> Option<&'a Value> {
    for step in steps {
        value = match (step, value) {
            (Step::Key(k), Value::Object(map)) => map.get(k)?,
            (Step::Index(i), Value::Array(items)) => {
                let i = if *i < 0 {
                    items.len().checked_sub(i.unsigned_abs() as usize)?
                } else {
                    *i as usize
                };
                items.get(i)?
            }
            _ => return None,
        };
    }
    Some(value)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn simple_paths() {
        let k = |s: &str| Step::Key(s.into());
        assert_eq!(JsonPath::simple_steps("$"), Some(vec![]));
        assert_eq!(
            JsonPath::simple_steps("$.a.b_2"),
            Some(vec![k("a"), k("b_2")])
        );
        assert_eq!(
            JsonPath::simple_steps("$['full-name'][0]"),
            Some(vec![k("full-name"), Step::Index(0)])
        );
        assert_eq!(
            JsonPath::simple_steps("$.a[-1].日本"),
            Some(vec![k("a"), Step::Index(-1), k("日本")])
        );
        for complex in [
            "$..a",
            "$.a[*]",
            "$.a[?@.b]",
            "$.a[0:2]",
            "$.*",
            "$['a','b']",
            "$.a[0,1]",
            "$['it\\'s']",
            "$.1a",
        ] {
            assert_eq!(JsonPath::simple_steps(complex), None, "{complex}");
        }
    }
}
