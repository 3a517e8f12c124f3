//! The AST: what was written, with a span on every node. Nothing here is checked or resolved;
//! durations are still text, names are still names. `compile` turns it into a `RuleSet`.

use crate::source::Span;

/// One file's declarations, in order.
#[derive(Debug, Clone, Default)]
pub(crate) struct Ast {
    pub(crate) items: Vec<Item>,
}

#[derive(Debug, Clone)]
pub(crate) enum Item {
    Secret(SecretDecl),
    Source(SourceDecl),
    Target(TargetDecl),
    Rule(RuleDecl),
    Include(Str),
    Test(TestDecl),
    /// A target or rule declaration that was parsed and dropped: only its name is kept, and where it
    /// starts, so that `compile` reads it again when its turn comes (see [`crate::syntax::parse_later`]).
    Later(Later),
}

/// What is kept of a declaration read again later: its name, and the byte where it starts.
#[derive(Debug, Clone)]
pub(crate) struct Later {
    pub(crate) at: usize,
    pub(crate) name: LaterName,
}

#[derive(Debug, Clone)]
pub(crate) enum LaterName {
    Target(Word),
    Rule(Str),
}

impl Item {
    /// The item with a target's or rule's body dropped (kept whole when it is anything else).
    pub(crate) fn later(self, at: usize) -> Item {
        match self {
            Item::Target(d) => Item::Later(Later {
                at,
                name: LaterName::Target(d.name),
            }),
            Item::Rule(d) => Item::Later(Later {
                at,
                name: LaterName::Rule(d.name),
            }),
            other => other,
        }
    }
}

/// A word of the source text: a name, a duration, a number.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Word {
    pub(crate) text: String,
    pub(crate) span: Span,
}

/// A string literal, split into literal text and `${...}` interpolations.
#[derive(Debug, Clone)]
pub(crate) struct Str {
    pub(crate) parts: Vec<StrPart>,
    /// The whole literal, quotes included.
    pub(crate) span: Span,
}

#[derive(Debug, Clone)]
pub(crate) enum StrPart {
    Text(String),
    Interp(Interp),
}

#[derive(Debug, Clone)]
pub(crate) struct Interp {
    pub(crate) kind: InterpKind,
    pub(crate) span: Span,
}

#[derive(Debug, Clone)]
pub(crate) enum InterpKind {
    Path(String),
    Secret(Word),
    Event,
    Source,
    Delivery,
    Header(Str),
    Query(Str),
}

impl Str {
    /// The interpolations in this string.
    pub(crate) fn interps(&self) -> impl Iterator<Item = &Interp> {
        self.parts.iter().filter_map(|p| match p {
            StrPart::Interp(i) => Some(i),
            StrPart::Text(_) => None,
        })
    }

    /// The literal text, ignoring interpolations (callers report those separately).
    pub(crate) fn text(&self) -> String {
        self.parts
            .iter()
            .filter_map(|p| match p {
                StrPart::Text(t) => Some(t.as_str()),
                StrPart::Interp(_) => None,
            })
            .collect()
    }
}

#[derive(Debug, Clone)]
pub(crate) struct SecretDecl {
    pub(crate) name: Word,
    pub(crate) from: SecretFrom,
}

#[derive(Debug, Clone)]
pub(crate) enum SecretFrom {
    Env(Str),
    File(Str),
}

#[derive(Debug, Clone)]
pub(crate) struct SourceDecl {
    pub(crate) name: Word,
    pub(crate) kind: Word,
    pub(crate) items: Vec<SourceItem>,
}

#[derive(Debug, Clone)]
pub(crate) struct SourceItem {
    pub(crate) kind: SourceItemKind,
    pub(crate) span: Span,
}

#[derive(Debug, Clone)]
pub(crate) enum SourceItemKind {
    Secrets(Vec<Word>),
    Path(Str),
    Events(Vec<Str>),
    MaxBody(Word),
    Insecure,
    Header(Str),
    Algorithm(Word),
    Encoding(Word),
    Prefix(Str),
    TokenHeader(Str),
    TokenQuery(Str),
    Tolerance(Word),
    Rate { count: Word, per: Word },
}

impl SourceItemKind {
    /// The keyword that introduces the item, for messages.
    pub(crate) fn keyword(&self) -> &'static str {
        match self {
            SourceItemKind::Secrets(_) => "secret",
            SourceItemKind::Path(_) => "path",
            SourceItemKind::Events(_) => "events",
            SourceItemKind::MaxBody(_) => "max_body",
            SourceItemKind::Insecure => "insecure",
            SourceItemKind::Header(_) => "header",
            SourceItemKind::Algorithm(_) => "algorithm",
            SourceItemKind::Encoding(_) => "encoding",
            SourceItemKind::Prefix(_) => "prefix",
            SourceItemKind::TokenHeader(_) | SourceItemKind::TokenQuery(_) => "token",
            SourceItemKind::Tolerance(_) => "tolerance",
            SourceItemKind::Rate { .. } => "rate",
        }
    }
}

#[derive(Debug, Clone)]
pub(crate) struct TargetDecl {
    pub(crate) name: Word,
    pub(crate) items: Vec<TargetItem>,
}

#[derive(Debug, Clone)]
pub(crate) struct TargetItem {
    pub(crate) kind: TargetItemKind,
    pub(crate) span: Span,
}

#[derive(Debug, Clone)]
pub(crate) enum TargetItemKind {
    Request {
        method: Word,
        url: Str,
    },
    Header {
        name: Str,
        value: Str,
    },
    Timeout(Word),
    Retry {
        count: Word,
        backoff: Option<(Word, Word)>,
    },
    Rate {
        count: Word,
        per: Word,
    },
    Concurrency(Word),
    Signature {
        style: Word,
        header: Option<Str>,
    },
}

impl TargetItemKind {
    pub(crate) fn keyword(&self) -> &'static str {
        match self {
            TargetItemKind::Request { .. } => "request line",
            TargetItemKind::Header { .. } => "header",
            TargetItemKind::Timeout(_) => "timeout",
            TargetItemKind::Retry { .. } => "retry",
            TargetItemKind::Rate { .. } => "rate",
            TargetItemKind::Concurrency(_) => "concurrency",
            TargetItemKind::Signature { .. } => "signature",
        }
    }
}

#[derive(Debug, Clone)]
pub(crate) struct RuleDecl {
    pub(crate) name: Str,
    pub(crate) items: Vec<RuleItem>,
}

#[derive(Debug, Clone)]
pub(crate) struct RuleItem {
    pub(crate) kind: RuleItemKind,
    pub(crate) span: Span,
}

#[derive(Debug, Clone)]
pub(crate) enum RuleItemKind {
    /// `from a, b`; an empty list means `from *`.
    From(Vec<Word>),
    On(Vec<Str>),
    When(Expr),
    Notify {
        target: Word,
        body: Option<Value>,
    },
    Check {
        target: Word,
        key: Option<Str>,
    },
    Forward {
        target: Word,
        sign_with: Option<Word>,
    },
}

#[derive(Debug, Clone)]
pub(crate) struct TestDecl {
    pub(crate) name: Str,
    pub(crate) items: Vec<TestItem>,
    pub(crate) span: Span,
}

#[derive(Debug, Clone)]
pub(crate) struct TestItem {
    pub(crate) kind: TestItemKind,
    pub(crate) span: Span,
}

#[derive(Debug, Clone)]
pub(crate) enum TestItemKind {
    Source(Word),
    Event(Str),
    Header {
        name: Str,
        value: Str,
    },
    HeadersFile(Str),
    Query {
        name: Str,
        value: Str,
    },
    PayloadFile(Str),
    Payload(Value),
    ExpectMatched(Value),
    ExpectNotify {
        target: Word,
        body: Option<(BodyMatch, Value)>,
    },
    ExpectCheck {
        target: Word,
        key: Option<Str>,
    },
    ExpectForward {
        target: Word,
    },
}

/// How a test compares a rendered body with the expected one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum BodyMatch {
    Equals,
    Contains,
}

/// A match expression.
#[derive(Debug, Clone)]
pub(crate) enum Expr {
    Or(Vec<Expr>),
    And(Vec<Expr>),
    Not(Box<Expr>),
    Predicate(Predicate),
}

#[derive(Debug, Clone)]
pub(crate) struct Predicate {
    pub(crate) quantifier: Option<(Quantifier, Span)>,
    pub(crate) subject: Value,
    pub(crate) op: Op,
    pub(crate) span: Span,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Quantifier {
    Any,
    All,
}

#[derive(Debug, Clone)]
pub(crate) enum Op {
    Contains(Value),
    StartsWith(Value),
    EndsWith(Value),
    Matches(Regex),
    Compare(CompareOp, Value),
    In(Value),
    Exists,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum CompareOp {
    Eq,
    Ne,
    Lt,
    Le,
    Gt,
    Ge,
}

#[derive(Debug, Clone)]
pub(crate) struct Regex {
    /// The pattern between the slashes, with `\/` already turned into `/`.
    pub(crate) pattern: String,
    pub(crate) flags: Word,
    pub(crate) span: Span,
}

/// A JSON literal or something read from the request; objects and arrays may mix both.
#[derive(Debug, Clone)]
pub(crate) struct Value {
    pub(crate) kind: ValueKind,
    pub(crate) span: Span,
}

#[derive(Debug, Clone)]
pub(crate) enum ValueKind {
    Object(Vec<(Str, Value)>),
    Array(Vec<Value>),
    String(Str),
    /// The number as written; `compile` parses it.
    Number(String),
    Bool(bool),
    Null,
    Path(String),
    Payload,
    Event,
    Source,
    Delivery,
    Header(Str),
    Query(Str),
}
