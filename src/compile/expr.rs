//! Match expressions → [`Matcher`]; values → literals, operands and templates.
//!
//! Regexes and JSONPaths are compiled here, once per distinct text (a rules file with 10,000 rules
//! repeats the same few paths), and shared through `Arc`s.

use std::sync::Arc;

use serde_json::{Map, Value as Json};

use crate::compile::Cx;
use crate::diagnostic::DiagnosticKind;
use crate::ruleset::{
    CompareOp, JsonPath, Matcher, Operand, Predicate, PredicateOp, Quantifier, StrPiece,
    StrTemplate, Template,
};
use crate::source::Span;
use crate::syntax::{self, Expr, InterpKind, Op, Str, StrPart, Value, ValueKind};

/// Where a string template appears, which decides what it may interpolate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum StrContext {
    /// Action bodies and check keys: anything from the request, never a secret.
    Body,
    /// Target URLs and headers: secrets, `event`, `source`, `delivery`; not the payload (targets are shared).
    Target,
}

impl Cx<'_> {
    pub(super) fn matcher(&mut self, expr: &Expr) -> Option<Matcher> {
        match expr {
            Expr::Or(items) => self.matchers(items).map(Matcher::Or),
            Expr::And(items) => self.matchers(items).map(Matcher::And),
            Expr::Not(inner) => self.matcher(inner).map(|m| Matcher::Not(Box::new(m))),
            Expr::Predicate(p) => self.predicate(p).map(Matcher::Predicate),
        }
    }

    /// Compiles every item, even after a failure, so that all problems are reported.
    fn matchers(&mut self, items: &[Expr]) -> Option<Vec<Matcher>> {
        let compiled: Vec<Option<Matcher>> = items.iter().map(|e| self.matcher(e)).collect();
        compiled.into_iter().collect()
    }

    fn predicate(&mut self, p: &syntax::Predicate) -> Option<Predicate> {
        let subject = self.operand(&p.subject);
        let quantifier = p.quantifier.map(|(q, _)| match q {
            syntax::Quantifier::Any => Quantifier::Any,
            syntax::Quantifier::All => Quantifier::All,
        });
        let op = match &p.op {
            Op::Contains(v) => self.operand(v).map(PredicateOp::Contains),
            Op::StartsWith(v) => self
                .string_operand(v, "starts with")
                .map(PredicateOp::StartsWith),
            Op::EndsWith(v) => self
                .string_operand(v, "ends with")
                .map(PredicateOp::EndsWith),
            Op::Matches(re) => self.regex(re),
            Op::Compare(op, v) => {
                let operand = self.operand(v);
                let op = compare_op(*op);
                if let Some(Operand::Literal(lit)) = &operand {
                    let ordering = !matches!(op, CompareOp::Eq | CompareOp::Ne);
                    if ordering && !(lit.is_number() || lit.is_string()) {
                        self.invalid_operand(
                            v.span,
                            format!("`{}` compares numbers or strings, not `{lit}`", op.as_str()),
                            "use `==`/`!=` for other values",
                        );
                        return None;
                    }
                }
                operand.map(|o| PredicateOp::Compare(op, o))
            }
            Op::In(v) => {
                let operand = self.operand(v);
                if let Some(Operand::Literal(lit)) = &operand
                    && !lit.is_array()
                {
                    self.invalid_operand(
                        v.span,
                        "`in` takes an array".into(),
                        "write `in [\"a\", \"b\"]`",
                    );
                    return None;
                }
                operand.map(PredicateOp::In)
            }
            Op::Exists => Some(PredicateOp::Exists),
        };
        let (subject, op) = (subject?, op?);
        let rhs_literal = match &op {
            PredicateOp::Contains(o) | PredicateOp::StartsWith(o) | PredicateOp::EndsWith(o) => {
                o.is_literal()
            }
            PredicateOp::Compare(_, o) | PredicateOp::In(o) => o.is_literal(),
            PredicateOp::Matches { .. } => true,
            PredicateOp::Exists => {
                if subject.is_literal() {
                    self.invalid_operand(
                        p.subject.span,
                        "`exists` tests something read from the request, not a literal".into(),
                        "write a path, `header(\"...\")` or `query(\"...\")` before `exists`",
                    );
                    return None;
                }
                false
            }
        };
        if subject.is_literal() && rhs_literal {
            self.diags.push(crate::diagnostic::Diagnostic::new(
                DiagnosticKind::ConstantComparison,
                p.span,
            ));
        }
        Some(Predicate {
            quantifier,
            subject,
            op,
        })
    }

    fn string_operand(&mut self, v: &Value, op: &str) -> Option<Operand> {
        let operand = self.operand(v)?;
        if let Operand::Literal(lit) = &operand
            && !lit.is_string()
        {
            self.invalid_operand(
                v.span,
                format!("`{op}` takes a string, not `{lit}`"),
                "quote the text",
            );
            return None;
        }
        Some(operand)
    }

    fn regex(&mut self, re: &syntax::Regex) -> Option<PredicateOp> {
        let mut flags = String::new();
        for c in re.flags.text.chars() {
            if "imsxU".contains(c) {
                if !flags.contains(c) {
                    flags.push(c);
                }
            } else {
                self.error(DiagnosticKind::InvalidRegexFlag { flag: c }, re.flags.span);
                return None;
            }
        }
        let key = (re.pattern.clone(), flags.clone());
        if let Some(compiled) = self.regexes.get(&key) {
            return Some(PredicateOp::Matches {
                regex: compiled.clone(),
                flags,
            });
        }
        let source = if flags.is_empty() {
            re.pattern.clone()
        } else {
            format!("(?{flags}){}", re.pattern)
        };
        // The regex crate guarantees linear-time matching; the size limit bounds memory per pattern.
        match regex::RegexBuilder::new(&source)
            .size_limit(1 << 20)
            .build()
        {
            Ok(compiled) => {
                let compiled = Arc::new(compiled);
                self.regexes.insert(key, compiled.clone());
                Some(PredicateOp::Matches {
                    regex: compiled,
                    flags,
                })
            }
            Err(e) => {
                let error = match e {
                    regex::Error::Syntax(msg) => last_line(&msg),
                    regex::Error::CompiledTooBig(limit) => {
                        format!("compiled pattern exceeds {limit} bytes")
                    }
                    other => other.to_string(),
                };
                self.error(DiagnosticKind::InvalidRegex { error }, re.span);
                None
            }
        }
    }

    pub(crate) fn invalid_operand(&mut self, span: Span, message: String, help: &str) {
        self.error(
            DiagnosticKind::InvalidOperand {
                message,
                help: Some(help.into()),
            },
            span,
        );
    }

    /// An operand of a match expression: a literal (no request reads inside it) or a request read.
    fn operand(&mut self, v: &Value) -> Option<Operand> {
        match &v.kind {
            ValueKind::Path(text) => self.json_path(text, v.span).map(Operand::Path),
            ValueKind::Payload => Some(Operand::Payload),
            ValueKind::Event => Some(Operand::Event),
            ValueKind::Source => Some(Operand::Source),
            ValueKind::Delivery => Some(Operand::Delivery),
            ValueKind::Header(s) => Some(Operand::Header(
                self.plain(s, "header names").to_ascii_lowercase(),
            )),
            ValueKind::Query(s) => Some(Operand::Query(self.plain(s, "query names"))),
            _ => self.shared_literal(v),
        }
    }

    /// A literal of a match expression, shared with every earlier one written the same way (10,000
    /// rules comparing `$.ref` with `"refs/heads/main"` hold one copy). Only literals that compiled
    /// without a diagnostic are shared, so that each faulty one is reported where it is.
    fn shared_literal(&mut self, v: &Value) -> Option<Operand> {
        let files = self.files;
        let text = files
            .get(v.span.file)
            .text
            .get(v.span.start as usize..v.span.end as usize);
        if let Some(shared) = text
            .and_then(|t| self.literals.get(t))
            .and_then(|weak| weak.upgrade())
        {
            return Some(Operand::Literal(shared));
        }
        let diagnostics = self.diags.len();
        let literal = Arc::new(self.literal(v, "match expressions")?);
        if let Some(text) = text
            && self.diags.len() == diagnostics
        {
            self.literals.insert(text, Arc::downgrade(&literal));
        }
        Some(Operand::Literal(literal))
    }

    /// A JSON literal; reports request reads and interpolations inside it.
    pub(crate) fn literal(&mut self, v: &Value, context: &'static str) -> Option<Json> {
        Some(match &v.kind {
            ValueKind::Object(members) => {
                let mut map = Map::with_capacity(members.len());
                let mut ok = true;
                for (key, value) in members {
                    let k = self.plain(key, context);
                    if map.contains_key(&k) {
                        self.error(DiagnosticKind::DuplicateKey { key: k.clone() }, key.span);
                        ok = false;
                    }
                    match self.literal(value, context) {
                        Some(j) => {
                            map.insert(k, j);
                        }
                        None => ok = false,
                    }
                }
                if !ok {
                    return None;
                }
                Json::Object(map)
            }
            ValueKind::Array(items) => {
                let items: Vec<Option<Json>> =
                    items.iter().map(|i| self.literal(i, context)).collect();
                Json::Array(items.into_iter().collect::<Option<Vec<_>>>()?)
            }
            ValueKind::String(s) => Json::String(self.plain(s, context)),
            ValueKind::Number(text) => match serde_json::from_str::<Json>(text) {
                Ok(n) => n,
                Err(_) => {
                    self.error(
                        DiagnosticKind::InvalidValue {
                            message: format!("number `{text}` is out of range"),
                            help: Some("JSON numbers must fit a 64-bit float".into()),
                        },
                        v.span,
                    );
                    return None;
                }
            },
            ValueKind::Bool(b) => Json::Bool(*b),
            ValueKind::Null => Json::Null,
            ValueKind::Path(_)
            | ValueKind::Payload
            | ValueKind::Event
            | ValueKind::Source
            | ValueKind::Delivery
            | ValueKind::Header(_)
            | ValueKind::Query(_) => {
                self.invalid_operand(
                    v.span,
                    format!("a literal in {context} cannot read the request"),
                    "compare the value directly, e.g. `$.a == $.b`; templates that read the request belong in action bodies",
                );
                return None;
            }
        })
    }

    /// Parses a JSONPath once per distinct text.
    pub(super) fn json_path(&mut self, text: &str, span: Span) -> Option<Arc<JsonPath>> {
        if let Some(p) = self.paths.get(text) {
            return Some(p.clone());
        }
        match jsonpath_rust::parser::parse_json_path(text) {
            Ok(query) if regex_function::in_query(&query) => {
                self.error(
                    DiagnosticKind::InvalidJsonPath {
                        path: text.into(),
                        error: "`match()` and `search()` compile their pattern again for every node they test".into(),
                        help: Some(
                            "test the values with the rules' `matches`, whose pattern is compiled once, e.g. `any $.commits[*].message matches \"^deploy\"`"
                                .into(),
                        ),
                    },
                    span,
                );
                None
            }
            Ok(query) => {
                let simple = JsonPath::simple_steps(text);
                let path = Arc::new(JsonPath {
                    text: text.to_string(),
                    query,
                    simple,
                });
                self.paths.insert(text.to_string(), path.clone());
                Some(path)
            }
            Err(e) => {
                let help = if text.contains('-') {
                    Some(
                        "member names with `-` need bracket notation: `$['name-with-dash']`"
                            .to_string(),
                    )
                } else {
                    Some(
                        "paths follow RFC 9535, e.g. `$.repository.full_name`, `$.commits[*].id`"
                            .to_string(),
                    )
                };
                self.error(
                    DiagnosticKind::InvalidJsonPath {
                        path: text.into(),
                        error: last_line(&e.to_string()),
                        help,
                    },
                    span,
                );
                None
            }
        }
    }

    /// A notify body: JSON whose values may read the request. Fully literal parts collapse to literals.
    pub(super) fn template(&mut self, v: &Value) -> Option<Template> {
        Some(match &v.kind {
            ValueKind::Object(members) => {
                let mut out: Vec<(String, Template)> = Vec::new();
                let mut ok = true;
                for (key, value) in members {
                    let k = self.plain(key, "object keys");
                    if out.iter().any(|(existing, _)| *existing == k) {
                        self.error(DiagnosticKind::DuplicateKey { key: k.clone() }, key.span);
                        ok = false;
                    }
                    match self.template(value) {
                        Some(t) => out.push((k, t)),
                        None => ok = false,
                    }
                }
                if !ok {
                    return None;
                }
                collapse(Template::Object(out))
            }
            ValueKind::Array(items) => {
                let items: Vec<Option<Template>> = items.iter().map(|i| self.template(i)).collect();
                collapse(Template::Array(
                    items.into_iter().collect::<Option<Vec<_>>>()?,
                ))
            }
            ValueKind::String(s) => {
                let t = self.str_template(s, StrContext::Body);
                match t.as_literal() {
                    Some(text) => Template::Operand(Operand::Literal(Arc::new(Json::String(
                        text.to_string(),
                    )))),
                    None => Template::String(t),
                }
            }
            _ => Template::Operand(self.operand(v)?),
        })
    }

    /// A string with `${...}`; what may be interpolated depends on `context`.
    pub(super) fn str_template(&mut self, s: &Str, context: StrContext) -> StrTemplate {
        let mut pieces = Vec::with_capacity(s.parts.len());
        for part in &s.parts {
            match part {
                StrPart::Text(t) => pieces.push(StrPiece::Text(t.clone())),
                StrPart::Interp(i) => {
                    let piece = match (&i.kind, context) {
                        (InterpKind::Secret(name), StrContext::Target) => {
                            self.secret_ref(name).map(StrPiece::Secret)
                        }
                        (InterpKind::Secret(name), StrContext::Body) => {
                            // Still resolve it, so a misspelt name is reported as such.
                            if let Some(id) = self.secrets.get(&name.text) {
                                self.secrets.used[id] = true;
                            }
                            self.error(DiagnosticKind::SecretNotAllowed, i.span);
                            None
                        }
                        (InterpKind::Event, _) => Some(StrPiece::Operand(Operand::Event)),
                        (InterpKind::Source, _) => Some(StrPiece::Operand(Operand::Source)),
                        (InterpKind::Delivery, _) => Some(StrPiece::Operand(Operand::Delivery)),
                        (InterpKind::Path(p), StrContext::Body) => self
                            .json_path(p, i.span)
                            .map(|p| StrPiece::Operand(Operand::Path(p))),
                        (InterpKind::Header(h), StrContext::Body) => Some(StrPiece::Operand(
                            Operand::Header(self.plain(h, "header names").to_ascii_lowercase()),
                        )),
                        (InterpKind::Query(q), StrContext::Body) => Some(StrPiece::Operand(
                            Operand::Query(self.plain(q, "query names")),
                        )),
                        (
                            InterpKind::Path(_) | InterpKind::Header(_) | InterpKind::Query(_),
                            StrContext::Target,
                        ) => {
                            self.error(
                                DiagnosticKind::InterpolationNotAllowed {
                                    context: "a target (targets are shared by rules, so they cannot read a request)",
                                    help: "targets may interpolate `${secret.NAME}`, `${event}`, `${source}` and `${delivery}`; put request data in the action's body or key",
                                },
                                i.span,
                            );
                            None
                        }
                    };
                    if let Some(piece) = piece {
                        pieces.push(piece);
                    }
                }
            }
        }
        StrTemplate { pieces }
    }
}

/// Replaces an object or array whose members are all literals by one literal.
fn collapse(t: Template) -> Template {
    let literal = |t: &Template| match t {
        Template::Operand(Operand::Literal(v)) => Some((**v).clone()),
        _ => None,
    };
    let json = match &t {
        Template::Object(members) => members
            .iter()
            .map(|(k, v)| literal(v).map(|j| (k.clone(), j)))
            .collect::<Option<Map<String, Json>>>()
            .map(Json::Object),
        Template::Array(items) => items
            .iter()
            .map(literal)
            .collect::<Option<Vec<Json>>>()
            .map(Json::Array),
        _ => None,
    };
    json.map_or(t, |j| Template::Operand(Operand::Literal(Arc::new(j))))
}

fn compare_op(op: syntax::CompareOp) -> CompareOp {
    match op {
        syntax::CompareOp::Eq => CompareOp::Eq,
        syntax::CompareOp::Ne => CompareOp::Ne,
        syntax::CompareOp::Lt => CompareOp::Lt,
        syntax::CompareOp::Le => CompareOp::Le,
        syntax::CompareOp::Gt => CompareOp::Gt,
        syntax::CompareOp::Ge => CompareOp::Ge,
    }
}

/// The informative last line of a multi-line library error (regex and pest draw their own carets,
/// which would fight with ours).
fn last_line(message: &str) -> String {
    let line = message
        .lines()
        .rev()
        .find(|l| !l.trim().is_empty())
        .unwrap_or(message)
        .trim();
    let line = line
        .strip_prefix("error: ")
        .or_else(|| line.strip_prefix("= "))
        .unwrap_or(line);
    line.to_string()
}

/// Whether a JSONPath calls `match()` or `search()`. jsonpath-rust compiles their pattern for every
/// node a filter tests (about 60 µs each), so a signed body with a big array took minutes to evaluate
/// on a runtime thread; the rules' own `matches` compiles its pattern when the rules load.
mod regex_function {
    use jsonpath_rust::parser::model::{
        Comparable, Comparison, Filter, FilterAtom, FnArg, JpQuery, Segment, Selector, Test,
        TestFunction,
    };

    pub(super) fn in_query(q: &JpQuery) -> bool {
        segments(&q.segments)
    }

    fn segments(s: &[Segment]) -> bool {
        s.iter().any(segment)
    }

    fn segment(s: &Segment) -> bool {
        match s {
            Segment::Descendant(s) => segment(s),
            Segment::Selector(s) => selector(s),
            Segment::Selectors(s) => s.iter().any(selector),
        }
    }

    fn selector(s: &Selector) -> bool {
        match s {
            Selector::Filter(f) => filter(f),
            Selector::Name(_) | Selector::Wildcard | Selector::Index(_) | Selector::Slice(..) => {
                false
            }
        }
    }

    fn filter(f: &Filter) -> bool {
        match f {
            Filter::Or(fs) | Filter::And(fs) => fs.iter().any(filter),
            Filter::Atom(FilterAtom::Filter { expr, .. }) => filter(expr),
            Filter::Atom(FilterAtom::Test { expr, .. }) => test(expr),
            Filter::Atom(FilterAtom::Comparison(c)) => {
                let (Comparison::Eq(a, b)
                | Comparison::Ne(a, b)
                | Comparison::Gt(a, b)
                | Comparison::Gte(a, b)
                | Comparison::Lt(a, b)
                | Comparison::Lte(a, b)) = &**c;
                comparable(a) || comparable(b)
            }
        }
    }

    fn comparable(c: &Comparable) -> bool {
        match c {
            Comparable::Function(f) => function(f),
            Comparable::Literal(_) | Comparable::SingularQuery(_) => false,
        }
    }

    fn test(t: &Test) -> bool {
        match t {
            Test::RelQuery(s) => segments(s),
            Test::AbsQuery(q) => in_query(q),
            Test::Function(f) => function(f),
        }
    }

    fn function(f: &TestFunction) -> bool {
        match f {
            TestFunction::Match(..) | TestFunction::Search(..) => true,
            TestFunction::Custom(_, args) => args.iter().any(arg),
            TestFunction::Length(a) => arg(a),
            TestFunction::Value(a) | TestFunction::Count(a) => arg(a),
        }
    }

    fn arg(a: &FnArg) -> bool {
        match a {
            FnArg::Literal(_) => false,
            FnArg::Test(t) => test(t),
            FnArg::Filter(f) => filter(f),
        }
    }
}
