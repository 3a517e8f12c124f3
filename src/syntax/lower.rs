//! pest pairs → [`Ast`], one function per grammar rule.
//!
//! The grammar has already accepted the text, so a shape it guarantees is a bug if missing:
//! `unreachable!` says which. Values are not checked here (that is `compile`'s job, which can
//! report every problem with a span); lowering only reshapes.

use std::cell::RefCell;

use pest::iterators::Pair;

use crate::source::{FileId, Span};
use crate::syntax::ast::*;
use crate::syntax::grammar::Rule;

type P<'i> = Pair<'i, Rule>;

/// What lowering one run of declarations gives.
pub(super) struct Lowered {
    pub(super) items: Vec<Item>,
    /// Where a JSON literal has a trailing comma, which the grammar accepts so that it can be reported.
    pub(super) trailing_commas: Vec<Span>,
}

/// Lowers a `file` or `file_prefix` pair parsed from the text that starts at byte `offset` of the file.
pub(super) fn file(file: FileId, offset: usize, pair: P<'_>) -> Lowered {
    let cx = Cx {
        file,
        offset,
        trailing_commas: RefCell::new(Vec::new()),
    };
    let items = pair
        .into_inner()
        .filter_map(|p| match p.as_rule() {
            Rule::secret_decl => Some(Item::Secret(cx.secret(p))),
            Rule::source_decl => Some(Item::Source(cx.source(p))),
            Rule::target_decl => Some(Item::Target(cx.target(p))),
            Rule::rule_decl => Some(Item::Rule(cx.rule(p))),
            Rule::include_decl => Some(Item::Include(cx.string(cx.child(p, Rule::string)))),
            Rule::test_decl => Some(Item::Test(cx.test(p))),
            Rule::EOI => None,
            other => unreachable!("`file` holds declarations only, got {other:?}"),
        })
        .collect();
    Lowered {
        items,
        trailing_commas: cx.trailing_commas.into_inner(),
    }
}

/// The file being lowered, so that every span names it, and where in it the parsed text starts.
struct Cx {
    file: FileId,
    offset: usize,
    trailing_commas: RefCell<Vec<Span>>,
}

impl Cx {
    fn span(&self, pair: &P<'_>) -> Span {
        let s = pair.as_span();
        Span::new(self.file, self.offset + s.start(), self.offset + s.end())
    }

    fn word(&self, pair: P<'_>) -> Word {
        Word {
            text: pair.as_str().to_string(),
            span: self.span(&pair),
        }
    }

    /// The first child of the given rule; the grammar guarantees it exists.
    fn child<'i>(&self, pair: P<'i>, rule: Rule) -> P<'i> {
        let parent = pair.as_rule();
        pair.into_inner()
            .find(|p| p.as_rule() == rule)
            .unwrap_or_else(|| unreachable!("grammar guarantees `{rule:?}` inside `{parent:?}`"))
    }

    fn children<'i>(&self, pair: P<'i>, rule: Rule) -> impl Iterator<Item = P<'i>> {
        pair.into_inner().filter(move |p| p.as_rule() == rule)
    }

    fn secret(&self, pair: P<'_>) -> SecretDecl {
        let mut inner = pair.into_inner().filter(|p| p.as_rule() != Rule::k_secret);
        let name = self.word(
            inner
                .next()
                .unwrap_or_else(|| unreachable!("secret has a name")),
        );
        let from = inner
            .next()
            .unwrap_or_else(|| unreachable!("secret has a source"));
        let from = match from.as_rule() {
            Rule::secret_env => SecretFrom::Env(self.string(self.child(from, Rule::string))),
            Rule::secret_file => SecretFrom::File(self.string(self.child(from, Rule::string))),
            other => unreachable!("secret is env or file, got {other:?}"),
        };
        SecretDecl { name, from }
    }

    fn source(&self, pair: P<'_>) -> SourceDecl {
        let mut idents = Vec::new();
        let mut items = Vec::new();
        for p in pair.into_inner() {
            match p.as_rule() {
                Rule::ident => idents.push(self.word(p)),
                Rule::k_source => {}
                _ => items.push(self.source_item(p)),
            }
        }
        let [name, kind]: [Word; 2] = idents
            .try_into()
            .unwrap_or_else(|_| unreachable!("source has a name and a kind"));
        SourceDecl { name, kind, items }
    }

    fn source_item(&self, pair: P<'_>) -> SourceItem {
        let span = self.span(&pair);
        let kind = match pair.as_rule() {
            Rule::src_secret => SourceItemKind::Secrets(
                self.children(pair, Rule::ident)
                    .map(|p| self.word(p))
                    .collect(),
            ),
            Rule::src_path => SourceItemKind::Path(self.string(self.child(pair, Rule::string))),
            Rule::src_events => SourceItemKind::Events(
                self.children(pair, Rule::string)
                    .map(|p| self.string(p))
                    .collect(),
            ),
            Rule::src_max_body => SourceItemKind::MaxBody(self.word(self.child(pair, Rule::size))),
            Rule::src_insecure => SourceItemKind::Insecure,
            Rule::src_header => SourceItemKind::Header(self.string(self.child(pair, Rule::string))),
            Rule::src_algorithm => {
                SourceItemKind::Algorithm(self.word(self.child(pair, Rule::ident)))
            }
            Rule::src_encoding => {
                SourceItemKind::Encoding(self.word(self.child(pair, Rule::ident)))
            }
            Rule::src_prefix => SourceItemKind::Prefix(self.string(self.child(pair, Rule::string))),
            Rule::src_token => {
                let how = pair.into_inner().find(|p| p.as_rule() != Rule::k_token);
                let how = how.unwrap_or_else(|| unreachable!("token has a location"));
                let rule = how.as_rule();
                let name = self.string(self.child(how, Rule::string));
                match rule {
                    Rule::token_header => SourceItemKind::TokenHeader(name),
                    Rule::token_query => SourceItemKind::TokenQuery(name),
                    other => unreachable!("token is in a header or the query, got {other:?}"),
                }
            }
            Rule::src_tolerance => {
                SourceItemKind::Tolerance(self.word(self.child(pair, Rule::duration)))
            }
            Rule::src_rate => {
                let (count, per) = self.rate(pair);
                SourceItemKind::Rate { count, per }
            }
            other => unreachable!("not a source item: {other:?}"),
        };
        SourceItem { kind, span }
    }

    fn rate(&self, pair: P<'_>) -> (Word, Word) {
        let mut count = None;
        let mut per = None;
        for p in pair.into_inner() {
            match p.as_rule() {
                Rule::int => count = Some(self.word(p)),
                Rule::duration => per = Some(self.word(p)),
                _ => {}
            }
        }
        match (count, per) {
            (Some(c), Some(p)) => (c, p),
            _ => unreachable!("rate has a count and a duration"),
        }
    }

    fn target(&self, pair: P<'_>) -> TargetDecl {
        let mut name = None;
        let mut items = Vec::new();
        for p in pair.into_inner() {
            match p.as_rule() {
                Rule::ident => name = Some(self.word(p)),
                Rule::k_target => {}
                _ => items.push(self.target_item(p)),
            }
        }
        let name = name.unwrap_or_else(|| unreachable!("target has a name"));
        TargetDecl { name, items }
    }

    fn target_item(&self, pair: P<'_>) -> TargetItem {
        let span = self.span(&pair);
        let kind = match pair.as_rule() {
            Rule::tgt_request => {
                let mut inner = pair.into_inner();
                let method = self.word(
                    inner
                        .next()
                        .unwrap_or_else(|| unreachable!("request has a method")),
                );
                let url = self.string(
                    inner
                        .next()
                        .unwrap_or_else(|| unreachable!("request has a URL")),
                );
                TargetItemKind::Request { method, url }
            }
            Rule::tgt_header => {
                let mut strings = self.children(pair, Rule::string).map(|p| self.string(p));
                let (Some(name), Some(value)) = (strings.next(), strings.next()) else {
                    unreachable!("header has a name and a value")
                };
                TargetItemKind::Header { name, value }
            }
            Rule::tgt_timeout => {
                TargetItemKind::Timeout(self.word(self.child(pair, Rule::duration)))
            }
            Rule::tgt_retry => {
                let mut count = None;
                let mut durations = Vec::new();
                for p in pair.into_inner() {
                    match p.as_rule() {
                        Rule::int => count = Some(self.word(p)),
                        Rule::duration => durations.push(self.word(p)),
                        _ => {}
                    }
                }
                let count = count.unwrap_or_else(|| unreachable!("retry has a count"));
                let mut durations = durations.into_iter();
                let backoff = match (durations.next(), durations.next()) {
                    (Some(min), Some(max)) => Some((min, max)),
                    (None, None) => None,
                    _ => unreachable!("backoff has two bounds"),
                };
                TargetItemKind::Retry { count, backoff }
            }
            Rule::tgt_rate => {
                let (count, per) = self.rate(pair);
                TargetItemKind::Rate { count, per }
            }
            Rule::tgt_concurrency => {
                TargetItemKind::Concurrency(self.word(self.child(pair, Rule::int)))
            }
            Rule::tgt_signature => {
                let mut style = None;
                let mut header = None;
                for p in pair.into_inner() {
                    match p.as_rule() {
                        Rule::ident => style = Some(self.word(p)),
                        Rule::string => header = Some(self.string(p)),
                        _ => {}
                    }
                }
                let style = style.unwrap_or_else(|| unreachable!("signature has a style"));
                TargetItemKind::Signature { style, header }
            }
            other => unreachable!("not a target item: {other:?}"),
        };
        TargetItem { kind, span }
    }

    fn rule(&self, pair: P<'_>) -> RuleDecl {
        let mut name = None;
        let mut items = Vec::new();
        for p in pair.into_inner() {
            match p.as_rule() {
                Rule::string => name = Some(self.string(p)),
                Rule::k_rule => {}
                _ => items.push(self.rule_item(p)),
            }
        }
        let name = name.unwrap_or_else(|| unreachable!("rule has a name"));
        RuleDecl { name, items }
    }

    fn rule_item(&self, pair: P<'_>) -> RuleItem {
        let span = self.span(&pair);
        let kind = match pair.as_rule() {
            // `from *` has no names: an empty list.
            Rule::rule_from => RuleItemKind::From(
                self.children(pair, Rule::ident)
                    .map(|p| self.word(p))
                    .collect(),
            ),
            Rule::rule_on => RuleItemKind::On(
                self.children(pair, Rule::string)
                    .map(|p| self.string(p))
                    .collect(),
            ),
            Rule::rule_when => RuleItemKind::When(self.expr(self.child(pair, Rule::expr))),
            Rule::act_notify => {
                let mut target = None;
                let mut body = None;
                for p in pair.into_inner() {
                    match p.as_rule() {
                        Rule::ident => target = Some(self.word(p)),
                        Rule::object | Rule::array => body = Some(self.compound(p)),
                        _ => {}
                    }
                }
                let target = target.unwrap_or_else(|| unreachable!("notify has a target"));
                RuleItemKind::Notify { target, body }
            }
            Rule::act_check => {
                let target = self.word(self.child(pair.clone(), Rule::ident));
                let key = self
                    .children(pair, Rule::string)
                    .next()
                    .map(|p| self.string(p));
                RuleItemKind::Check { target, key }
            }
            Rule::act_forward => {
                let mut idents = self.children(pair, Rule::ident).map(|p| self.word(p));
                let target = idents
                    .next()
                    .unwrap_or_else(|| unreachable!("forward has a target"));
                RuleItemKind::Forward {
                    target,
                    sign_with: idents.next(),
                }
            }
            other => unreachable!("not a rule item: {other:?}"),
        };
        RuleItem { kind, span }
    }

    fn test(&self, pair: P<'_>) -> TestDecl {
        let span = self.span(&pair);
        let mut name = None;
        let mut items = Vec::new();
        for p in pair.into_inner() {
            match p.as_rule() {
                Rule::string => name = Some(self.string(p)),
                Rule::k_test | Rule::k_expect => {}
                _ => items.push(self.test_item(p)),
            }
        }
        let name = name.unwrap_or_else(|| unreachable!("test has a name"));
        TestDecl { name, items, span }
    }

    fn test_item(&self, pair: P<'_>) -> TestItem {
        let span = self.span(&pair);
        let two_strings = |pair: P<'_>| {
            let mut strings = self.children(pair, Rule::string).map(|p| self.string(p));
            match (strings.next(), strings.next()) {
                (Some(a), Some(b)) => (a, b),
                _ => unreachable!("grammar guarantees two strings"),
            }
        };
        let kind = match pair.as_rule() {
            Rule::test_source => TestItemKind::Source(self.word(self.child(pair, Rule::ident))),
            Rule::test_event => TestItemKind::Event(self.string(self.child(pair, Rule::string))),
            Rule::test_header => {
                let (name, value) = two_strings(pair);
                TestItemKind::Header { name, value }
            }
            Rule::test_headers => {
                TestItemKind::HeadersFile(self.string(self.child(pair, Rule::string)))
            }
            Rule::test_query => {
                let (name, value) = two_strings(pair);
                TestItemKind::Query { name, value }
            }
            Rule::test_payload => {
                let inner = pair.into_inner().find(|p| p.as_rule() != Rule::k_payload);
                let inner = inner.unwrap_or_else(|| unreachable!("payload has a value"));
                match inner.as_rule() {
                    Rule::payload_file => {
                        TestItemKind::PayloadFile(self.string(self.child(inner, Rule::string)))
                    }
                    Rule::value => TestItemKind::Payload(self.value(inner)),
                    other => unreachable!("payload is a file or a value, got {other:?}"),
                }
            }
            Rule::expect_matched => {
                TestItemKind::ExpectMatched(self.compound(self.child(pair, Rule::array)))
            }
            Rule::expect_notify => {
                let mut target = None;
                let mut body = None;
                for p in pair.into_inner() {
                    match p.as_rule() {
                        Rule::ident => target = Some(self.word(p)),
                        Rule::body_expect => {
                            let how = if p
                                .clone()
                                .into_inner()
                                .any(|q| q.as_rule() == Rule::body_equals)
                            {
                                BodyMatch::Equals
                            } else {
                                BodyMatch::Contains
                            };
                            body = Some((how, self.value(self.child(p, Rule::value))));
                        }
                        _ => {}
                    }
                }
                let target = target.unwrap_or_else(|| unreachable!("expect notify has a target"));
                TestItemKind::ExpectNotify { target, body }
            }
            Rule::expect_check => {
                let target = self.word(self.child(pair.clone(), Rule::ident));
                let key = self
                    .children(pair, Rule::string)
                    .next()
                    .map(|p| self.string(p));
                TestItemKind::ExpectCheck { target, key }
            }
            Rule::expect_forward => TestItemKind::ExpectForward {
                target: self.word(self.child(pair, Rule::ident)),
            },
            other => unreachable!("not a test item: {other:?}"),
        };
        TestItem { kind, span }
    }

    fn expr(&self, pair: P<'_>) -> Expr {
        let mut terms: Vec<Expr> = self
            .children(pair, Rule::and_expr)
            .map(|p| self.and_expr(p))
            .collect();
        if terms.len() == 1 {
            terms.pop().unwrap_or_else(|| unreachable!())
        } else {
            Expr::Or(terms)
        }
    }

    fn and_expr(&self, pair: P<'_>) -> Expr {
        let mut terms: Vec<Expr> = self
            .children(pair, Rule::unary)
            .map(|p| self.unary(p))
            .collect();
        if terms.len() == 1 {
            terms.pop().unwrap_or_else(|| unreachable!())
        } else {
            Expr::And(terms)
        }
    }

    fn unary(&self, pair: P<'_>) -> Expr {
        let mut nots = 0usize;
        let mut operand = None;
        for p in pair.into_inner() {
            match p.as_rule() {
                Rule::k_not => nots += 1,
                Rule::group => operand = Some(self.expr(self.child(p, Rule::expr))),
                Rule::predicate => operand = Some(Expr::Predicate(self.predicate(p))),
                other => unreachable!("unary holds `not`s and one operand, got {other:?}"),
            }
        }
        let operand = operand.unwrap_or_else(|| unreachable!("unary has an operand"));
        // `not not x` is `x`: keep the parity, so that a long run of `not`s builds no deep tree.
        if nots % 2 == 1 {
            Expr::Not(Box::new(operand))
        } else {
            operand
        }
    }

    fn predicate(&self, pair: P<'_>) -> Predicate {
        let span = self.span(&pair);
        let mut quantifier = None;
        let mut subject = None;
        let mut op = None;
        for p in pair.into_inner() {
            match p.as_rule() {
                Rule::quantifier => {
                    let q_span = self.span(&p);
                    let q = match p.into_inner().next().map(|k| k.as_rule()) {
                        Some(Rule::k_all) => Quantifier::All,
                        _ => Quantifier::Any,
                    };
                    quantifier = Some((q, q_span));
                }
                Rule::value => subject = Some(self.value(p)),
                _ => op = Some(self.op(p)),
            }
        }
        let subject = subject.unwrap_or_else(|| unreachable!("predicate has a subject"));
        let op = op.unwrap_or_else(|| unreachable!("predicate has an operator"));
        Predicate {
            quantifier,
            subject,
            op,
            span,
        }
    }

    fn op(&self, pair: P<'_>) -> Op {
        let rule = pair.as_rule();
        let operand = |pair: P<'_>| self.value(self.child(pair, Rule::value));
        match rule {
            Rule::op_contains => Op::Contains(operand(pair)),
            Rule::op_starts => Op::StartsWith(operand(pair)),
            Rule::op_ends => Op::EndsWith(operand(pair)),
            Rule::op_matches => Op::Matches(self.regex(self.child(pair, Rule::regex))),
            Rule::op_compare => {
                let cmp = match self.child(pair.clone(), Rule::compare_op).as_str() {
                    "==" => CompareOp::Eq,
                    "!=" => CompareOp::Ne,
                    "<" => CompareOp::Lt,
                    "<=" => CompareOp::Le,
                    ">" => CompareOp::Gt,
                    ">=" => CompareOp::Ge,
                    other => unreachable!("grammar lists the comparison operators, got {other}"),
                };
                Op::Compare(cmp, operand(pair))
            }
            Rule::op_in => Op::In(operand(pair)),
            Rule::op_exists => Op::Exists,
            other => unreachable!("not an operator: {other:?}"),
        }
    }

    fn regex(&self, pair: P<'_>) -> Regex {
        let span = self.span(&pair);
        let body = self
            .child(pair.clone(), Rule::regex_body)
            .as_str()
            .replace("\\/", "/");
        let flags = self.word(self.child(pair, Rule::regex_flags));
        Regex {
            pattern: body,
            flags,
            span,
        }
    }

    fn value(&self, pair: P<'_>) -> Value {
        let span = self.span(&pair);
        let inner = pair
            .into_inner()
            .next()
            .unwrap_or_else(|| unreachable!("value has one child"));
        let kind = match inner.as_rule() {
            Rule::object | Rule::array => return self.compound(inner),
            Rule::string => ValueKind::String(self.string(inner)),
            Rule::number => ValueKind::Number(inner.as_str().to_string()),
            Rule::k_true => ValueKind::Bool(true),
            Rule::k_false => ValueKind::Bool(false),
            Rule::k_null => ValueKind::Null,
            Rule::jsonpath => ValueKind::Path(inner.as_str().to_string()),
            Rule::k_payload => ValueKind::Payload,
            Rule::k_event => ValueKind::Event,
            Rule::k_source => ValueKind::Source,
            Rule::k_delivery => ValueKind::Delivery,
            Rule::header_fn => ValueKind::Header(self.string(self.child(inner, Rule::string))),
            Rule::query_fn => ValueKind::Query(self.string(self.child(inner, Rule::string))),
            other => unreachable!("not a value: {other:?}"),
        };
        Value { kind, span }
    }

    /// An `object` or `array` pair.
    fn compound(&self, pair: P<'_>) -> Value {
        let span = self.span(&pair);
        let kind = match pair.as_rule() {
            Rule::object => ValueKind::Object(
                self.elements(pair, Rule::member)
                    .map(|member| {
                        let mut inner = member.into_inner();
                        let key = self.string(
                            inner
                                .next()
                                .unwrap_or_else(|| unreachable!("member has a key")),
                        );
                        let value = self.value(
                            inner
                                .next()
                                .unwrap_or_else(|| unreachable!("member has a value")),
                        );
                        (key, value)
                    })
                    .collect(),
            ),
            Rule::array => ValueKind::Array(
                self.elements(pair, Rule::value)
                    .map(|p| self.value(p))
                    .collect(),
            ),
            other => unreachable!("not an object or array: {other:?}"),
        };
        Value { kind, span }
    }

    /// The members or values of an object or array; a trailing comma is set aside for its error.
    fn elements<'i>(&self, pair: P<'i>, rule: Rule) -> impl Iterator<Item = P<'i>> {
        pair.into_inner().filter(move |p| {
            if p.as_rule() == Rule::trailing_comma {
                self.trailing_commas.borrow_mut().push(self.span(p));
            }
            p.as_rule() == rule
        })
    }

    fn string(&self, pair: P<'_>) -> Str {
        let span = self.span(&pair);
        let mut parts: Vec<StrPart> = Vec::new();
        let push_text = |parts: &mut Vec<StrPart>, s: &str| match parts.last_mut() {
            Some(StrPart::Text(t)) => t.push_str(s),
            _ => parts.push(StrPart::Text(s.to_string())),
        };
        for p in pair.into_inner() {
            match p.as_rule() {
                Rule::text => push_text(&mut parts, p.as_str()),
                Rule::escape => push_text(&mut parts, &unescape(p.as_str())),
                Rule::interp => parts.push(StrPart::Interp(self.interp(p))),
                other => {
                    unreachable!("strings hold text, escapes and interpolations, got {other:?}")
                }
            }
        }
        Str { parts, span }
    }

    fn interp(&self, pair: P<'_>) -> Interp {
        let span = self.span(&pair);
        let inner = pair
            .into_inner()
            .next()
            .unwrap_or_else(|| unreachable!("interpolation has a body"));
        let kind = match inner.as_rule() {
            Rule::jsonpath => InterpKind::Path(inner.as_str().to_string()),
            Rule::secret_ref => InterpKind::Secret(self.word(self.child(inner, Rule::ident))),
            Rule::k_event => InterpKind::Event,
            Rule::k_source => InterpKind::Source,
            Rule::k_delivery => InterpKind::Delivery,
            Rule::header_fn => InterpKind::Header(self.string(self.child(inner, Rule::string))),
            Rule::query_fn => InterpKind::Query(self.string(self.child(inner, Rule::string))),
            other => unreachable!("not an interpolation: {other:?}"),
        };
        Interp { kind, span }
    }
}

/// Decodes one escape sequence the grammar accepted.
pub(super) fn unescape(escape: &str) -> String {
    let c = match &escape[1..] {
        "\"" => '"',
        "\\" => '\\',
        "/" => '/',
        "b" => '\u{8}',
        "f" => '\u{c}',
        "n" => '\n',
        "r" => '\r',
        "t" => '\t',
        "$" => '$',
        hex => {
            let code = u32::from_str_radix(&hex[1..], 16)
                .unwrap_or_else(|_| unreachable!("grammar takes 4 hex digits"));
            // A lone surrogate half is not a character; it becomes U+FFFD as serde_json would not allow it.
            char::from_u32(code).unwrap_or('\u{fffd}')
        }
    };
    c.to_string()
}
