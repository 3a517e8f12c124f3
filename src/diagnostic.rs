//! The one error vocabulary of loading, parsing and compiling a rules set.
//!
//! Every problem with a rules file is a [`Diagnostic`]: a [`DiagnosticKind`] (which fixes the stable code,
//! the severity, the message and the help line), the span it points at, and optional secondary labels.
//! Stages collect them into [`Diagnostics`] and keep going, so users see every problem at once.
//! Rendering (miette graphics, JSON) lives here too so that `check`, `serve` and the tests show the same text.

use std::fmt::{self, Display};

use miette::{GraphicalReportHandler, GraphicalTheme, LabeledSpan, NamedSource, SourceSpan};
use serde::Serialize;

use crate::source::{SourceMap, Span};

/// How bad a diagnostic is: errors stop a rules set from loading, warnings do not.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    Warning,
    Error,
}

/// The kinds of names a rules file declares.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NameKind {
    Secret,
    Source,
    Target,
    Rule,
    Test,
}

impl Display for NameKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            NameKind::Secret => "secret",
            NameKind::Source => "source",
            NameKind::Target => "target",
            NameKind::Rule => "rule",
            NameKind::Test => "test",
        })
    }
}

/// What went wrong. Each variant has one stable code (see `docs/diagnostics.md`).
#[derive(Debug, Clone, PartialEq)]
pub enum DiagnosticKind {
    Syntax {
        expected: String,
        found: String,
    },
    /// A syntax error at a word close to a keyword that fits there (`backof` for `backoff`).
    UnknownKeyword {
        found: String,
        suggestion: String,
    },
    /// A syntax error: `{"a": 1,}` or `[1, 2,]`.
    TrailingComma,
    NotUtf8,
    TooDeep {
        limit: usize,
    },
    IncludeFailed {
        path: String,
        reason: String,
    },
    IncludeEmpty {
        pattern: String,
    },
    IncludeCycle {
        path: String,
    },
    IncludeTooBroad {
        pattern: String,
        reason: String,
    },
    NoSources,
    DuplicateName {
        kind: NameKind,
        name: String,
    },
    UnknownName {
        kind: NameKind,
        name: String,
        suggestion: Option<String>,
    },
    UnknownProvider {
        name: String,
        suggestion: Option<String>,
    },
    UnknownEvent {
        event: String,
        provider: String,
        suggestion: Option<String>,
    },
    EventNeverSent {
        event: String,
        provider: String,
        sent_by: String,
        suggestion: Option<String>,
    },
    EventFiltered {
        event: String,
        source: String,
    },
    Unused {
        kind: NameKind,
        name: String,
    },
    PathConflict {
        path: String,
        other: String,
    },
    InvalidPath {
        path: String,
        reason: &'static str,
    },
    MissingSecret {
        source: String,
        provider: String,
    },
    InsecureNotAllowed {
        reason: &'static str,
    },
    OptionNotAllowed {
        option: &'static str,
        provider: String,
        allowed_for: &'static str,
    },
    InvalidOption {
        option: &'static str,
        value: String,
        expected: String,
    },
    DuplicateOption {
        option: &'static str,
    },
    MissingFrom,
    NoActions {
        rule: String,
    },
    MissingUrl {
        target: String,
    },
    InvalidUrl {
        url: String,
        reason: String,
    },
    InvalidRegex {
        error: String,
    },
    InvalidRegexFlag {
        flag: char,
    },
    InvalidJsonPath {
        path: String,
        error: String,
        help: Option<String>,
    },
    InterpolationNotAllowed {
        context: &'static str,
        help: &'static str,
    },
    SecretNotAllowed,
    InvalidOperand {
        message: String,
        help: Option<String>,
    },
    ConstantComparison,
    /// A target header the gateway sets itself, which replaces it.
    HeaderReplaced {
        name: String,
    },
    InvalidDuration {
        text: String,
    },
    InvalidSize {
        text: String,
    },
    InvalidValue {
        message: String,
        help: Option<String>,
    },
    DuplicateKey {
        key: String,
    },
    IncompleteTest {
        missing: &'static str,
    },
    InvalidSecretRef {
        message: String,
        help: &'static str,
    },
    SecretUnavailable {
        name: String,
        reason: String,
    },
}

impl DiagnosticKind {
    /// The stable code, e.g. `rules::unknown_secret`.
    pub fn code(&self) -> &'static str {
        use DiagnosticKind::*;
        match self {
            Syntax { .. } | UnknownKeyword { .. } | TrailingComma => "rules::syntax",
            NotUtf8 => "rules::not_utf8",
            TooDeep { .. } => "rules::too_deep",
            IncludeFailed { .. } => "rules::include_failed",
            IncludeEmpty { .. } => "rules::include_empty",
            IncludeCycle { .. } => "rules::include_cycle",
            IncludeTooBroad { .. } => "rules::include_too_broad",
            NoSources => "rules::no_sources",
            DuplicateName { .. } => "rules::duplicate_name",
            UnknownName { kind, .. } => match kind {
                NameKind::Secret => "rules::unknown_secret",
                NameKind::Source => "rules::unknown_source",
                NameKind::Target => "rules::unknown_target",
                NameKind::Rule => "rules::unknown_rule",
                NameKind::Test => "rules::unknown_test",
            },
            UnknownProvider { .. } => "rules::unknown_provider",
            UnknownEvent { .. } => "rules::unknown_event",
            EventNeverSent { .. } => "rules::event_never_sent",
            EventFiltered { .. } => "rules::event_filtered",
            Unused { kind, .. } => match kind {
                NameKind::Secret => "rules::unused_secret",
                NameKind::Source => "rules::unused_source",
                NameKind::Target => "rules::unused_target",
                NameKind::Rule => "rules::unused_rule",
                NameKind::Test => "rules::unused_test",
            },
            PathConflict { .. } => "rules::path_conflict",
            InvalidPath { .. } => "rules::invalid_path",
            MissingSecret { .. } => "rules::missing_secret",
            InsecureNotAllowed { .. } => "rules::insecure_not_allowed",
            OptionNotAllowed { .. } => "rules::option_not_allowed",
            InvalidOption { .. } => "rules::invalid_option",
            DuplicateOption { .. } => "rules::duplicate_option",
            MissingFrom => "rules::missing_from",
            NoActions { .. } => "rules::no_actions",
            MissingUrl { .. } => "rules::missing_url",
            InvalidUrl { .. } => "rules::invalid_url",
            InvalidRegex { .. } => "rules::invalid_regex",
            InvalidRegexFlag { .. } => "rules::invalid_regex_flag",
            InvalidJsonPath { .. } => "rules::invalid_jsonpath",
            InterpolationNotAllowed { .. } => "rules::interpolation_not_allowed",
            SecretNotAllowed => "rules::secret_not_allowed",
            InvalidOperand { .. } => "rules::invalid_operand",
            ConstantComparison => "rules::constant_comparison",
            HeaderReplaced { .. } => "rules::header_replaced",
            InvalidDuration { .. } => "rules::invalid_duration",
            InvalidSize { .. } => "rules::invalid_size",
            InvalidValue { .. } => "rules::invalid_value",
            DuplicateKey { .. } => "rules::duplicate_key",
            IncompleteTest { .. } => "rules::incomplete_test",
            InvalidSecretRef { .. } => "rules::invalid_secret_ref",
            SecretUnavailable { .. } => "rules::secret_unavailable",
        }
    }

    pub fn severity(&self) -> Severity {
        use DiagnosticKind::*;
        match self {
            IncludeEmpty { .. }
            | UnknownEvent { .. }
            | EventNeverSent { .. }
            | EventFiltered { .. }
            | Unused { .. }
            | NoActions { .. }
            | ConstantComparison
            | HeaderReplaced { .. } => Severity::Warning,
            _ => Severity::Error,
        }
    }

    /// One line saying how to fix it, when we know.
    pub fn help(&self) -> Option<String> {
        use DiagnosticKind::*;
        let did_you_mean = |s: &Option<String>| s.as_ref().map(|s| format!("did you mean `{s}`?"));
        match self {
            Syntax { .. } => None,
            UnknownKeyword { suggestion, .. } => Some(format!("did you mean `{suggestion}`?")),
            TrailingComma => Some("remove the trailing comma: JSON does not allow it".into()),
            NotUtf8 => Some("rules files are UTF-8 text; check the file's encoding".into()),
            TooDeep { .. } => Some("flatten the expression or literal".into()),
            IncludeFailed { .. } => Some("include paths are relative to the including file".into()),
            IncludeEmpty { .. } => Some("include paths are relative to the including file".into()),
            IncludeCycle { .. } => Some("remove one of the `include` lines that form the cycle".into()),
            IncludeTooBroad { .. } => Some(format!(
                "name the directory the rules are in, e.g. `teams/*.hook`; `**` descends at most {} directories and a glob looks at {} entries and matches {} files at most",
                crate::load::MAX_GLOB_DEPTH,
                crate::load::MAX_GLOB_ENTRIES,
                crate::load::MAX_GLOB_MATCHES
            )),
            NoSources => Some(
                "declare one, e.g. `source github: github { secret gh }`; check a file meant for `include` through the file that includes it".into(),
            ),
            DuplicateName { kind, .. } => Some(format!("give each {kind} a unique name")),
            UnknownName { kind, suggestion, .. } => did_you_mean(suggestion)
                .or_else(|| Some(format!("declare it with `{kind} ...` or fix the name"))),
            UnknownProvider { suggestion, .. } => did_you_mean(suggestion).or_else(|| {
                Some(format!("known kinds: {}", crate::providers::KINDS.join(", ")))
            }),
            UnknownEvent { suggestion, .. } => did_you_mean(suggestion),
            EventNeverSent { suggestion, .. } => did_you_mean(suggestion),
            EventFiltered { source, .. } => {
                Some(format!("add the event to the `events` list of source `{source}`"))
            }
            Unused { kind, .. } => Some(format!("remove the {kind} or use it")),
            PathConflict { .. } => Some("give one of the sources its own `path`".into()),
            InvalidPath { .. } => Some("paths look like `/hook/team/app`".into()),
            MissingSecret { .. } => Some("add `secret NAME` naming a declared secret".into()),
            InsecureNotAllowed { .. } => None,
            OptionNotAllowed { .. } => Some("remove the option".into()),
            InvalidOption { .. } => None,
            DuplicateOption { .. } => Some("keep one of them".into()),
            MissingFrom => Some("add `from SOURCE` (or `from *` for every source)".into()),
            NoActions { .. } => Some("add `notify`, `queue check` or `forward`".into()),
            MissingUrl { .. } => Some("add a request line such as `post \"https://...\"`".into()),
            InvalidUrl { .. } => Some("targets take absolute `http://` or `https://` URLs".into()),
            InvalidRegex { .. } => Some("the syntax is that of the Rust `regex` crate".into()),
            InvalidRegexFlag { .. } => Some("flags are `i`, `m`, `s`, `x` and `U`".into()),
            InvalidJsonPath { help, .. } => help.clone(),
            InterpolationNotAllowed { help, .. } => Some((*help).into()),
            SecretNotAllowed => Some(
                "secrets may appear in target URLs and headers only, so they never reach a stored body".into(),
            ),
            InvalidOperand { help, .. } => help.clone(),
            ConstantComparison => Some("one side should read the request: a path, `header(..)`, `event` ...".into()),
            HeaderReplaced { .. } => Some(
                "the gateway sets `X-Hookgate-Delivery` on every delivery, `Idempotency-Key` on a notify's, `X-Hookgate-Coalesced` on a queue check's; remove this header".into(),
            ),
            InvalidDuration { .. } => Some("durations look like `500ms`, `30s`, `5m`, `1h30m`, `1d`".into()),
            InvalidSize { .. } => Some("sizes look like `512KiB`, `10MiB`, `1MB` or a number of bytes".into()),
            InvalidValue { help, .. } => help.clone(),
            DuplicateKey { .. } => Some("JSON objects take each key once".into()),
            IncompleteTest { missing } => Some(format!("add `{missing}` to the test")),
            InvalidSecretRef { help, .. } => Some((*help).into()),
            SecretUnavailable { .. } => {
                Some("set the variable or mount the file before starting the gateway".into())
            }
        }
    }

    /// The text under the primary span, when it adds to the message.
    fn label(&self) -> Option<String> {
        use DiagnosticKind::*;
        match self {
            DuplicateName { .. } | DuplicateOption { .. } => Some("declared again here".into()),
            PathConflict { .. } => Some("this path is taken".into()),
            NoSources => Some("no `source` in this file or the files it includes".into()),
            UnknownName { .. } | UnknownProvider { .. } => Some("not declared".into()),
            Syntax { expected, .. } => Some(format!("expected {expected}")),
            _ => None,
        }
    }
}

impl Display for DiagnosticKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        use DiagnosticKind::*;
        match self {
            Syntax { expected, found } => write!(f, "expected {expected}, found {found}"),
            UnknownKeyword { found, .. } => write!(f, "`{found}` is not a keyword here"),
            TrailingComma => write!(f, "trailing comma in a JSON literal"),
            NotUtf8 => write!(f, "file is not valid UTF-8"),
            TooDeep { limit } => write!(f, "nesting is deeper than {limit} levels"),
            IncludeFailed { path, reason } => {
                write!(f, "cannot read included file `{path}`: {reason}")
            }
            IncludeEmpty { pattern } => write!(f, "`{pattern}` matches no files"),
            IncludeCycle { path } => write!(f, "`{path}` is included again, forming a cycle"),
            IncludeTooBroad { pattern, reason } => {
                write!(f, "include `{pattern}` is too broad: {reason}")
            }
            NoSources => write!(
                f,
                "the rules declare no `source`, so every request would be answered 404"
            ),
            DuplicateName { kind, name } => write!(f, "{kind} `{name}` is declared twice"),
            UnknownName { kind, name, .. } => write!(f, "unknown {kind} `{name}`"),
            UnknownProvider { name, .. } => write!(f, "unknown source kind `{name}`"),
            UnknownEvent {
                event, provider, ..
            } => {
                write!(f, "`{event}` is not an event {provider} sends")
            }
            EventNeverSent {
                event,
                provider,
                sent_by,
                ..
            } => {
                write!(
                    f,
                    "`{event}` is a {sent_by} event; {provider} never sends it"
                )
            }
            EventFiltered { event, source } => {
                write!(
                    f,
                    "source `{source}` does not accept `{event}`, so this never fires for it"
                )
            }
            Unused { kind, name } => write!(f, "{kind} `{name}` is never used"),
            PathConflict { path, other } => {
                write!(f, "path `{path}` is already used by source `{other}`")
            }
            InvalidPath { path, reason } => write!(f, "invalid path `{path}`: {reason}"),
            MissingSecret { source, provider } => {
                write!(f, "{provider} source `{source}` has no secret")
            }
            InsecureNotAllowed { reason } => write!(f, "{reason}"),
            OptionNotAllowed {
                option,
                provider,
                allowed_for,
            } => {
                write!(
                    f,
                    "`{option}` does not apply to {provider} sources (only to {allowed_for})"
                )
            }
            InvalidOption {
                option,
                value,
                expected,
            } => {
                write!(f, "invalid {option} `{value}`: expected {expected}")
            }
            DuplicateOption { option } => write!(f, "`{option}` is given twice"),
            MissingFrom => write!(f, "rule has no `from`"),
            NoActions { rule } => write!(f, "rule `{rule}` has no actions"),
            MissingUrl { target } => write!(f, "target `{target}` has no URL"),
            InvalidUrl { url, reason } => write!(f, "invalid URL `{url}`: {reason}"),
            InvalidRegex { error } => write!(f, "invalid regular expression: {error}"),
            InvalidRegexFlag { flag } => write!(f, "unknown regular expression flag `{flag}`"),
            InvalidJsonPath { path, error, .. } => write!(f, "invalid JSONPath `{path}`: {error}"),
            InterpolationNotAllowed { context, .. } => {
                write!(f, "`${{...}}` is not allowed in {context}")
            }
            SecretNotAllowed => write!(f, "a secret cannot be interpolated here"),
            InvalidOperand { message, .. } => write!(f, "{message}"),
            ConstantComparison => write!(f, "this compares two constants"),
            HeaderReplaced { name } => {
                write!(
                    f,
                    "header `{name}` is the gateway's: where it sets it, its value replaces this one"
                )
            }
            InvalidDuration { text } => write!(f, "invalid duration `{text}`"),
            InvalidSize { text } => write!(f, "invalid size `{text}`"),
            InvalidValue { message, .. } => write!(f, "{message}"),
            DuplicateKey { key } => write!(f, "key `{key}` appears twice in this object"),
            IncompleteTest { missing } => write!(f, "test has no `{missing}`"),
            InvalidSecretRef { message, .. } => write!(f, "{message}"),
            SecretUnavailable { name, reason } => {
                write!(f, "secret `{name}` is not available: {reason}")
            }
        }
    }
}

/// A secondary label: another place the diagnostic refers to.
#[derive(Debug, Clone, PartialEq)]
pub struct Label {
    pub span: Span,
    pub text: String,
}

/// One problem with a rules file.
#[derive(Debug, Clone, PartialEq)]
pub struct Diagnostic {
    pub kind: DiagnosticKind,
    pub span: Span,
    pub labels: Vec<Label>,
}

impl Diagnostic {
    pub fn new(kind: DiagnosticKind, span: Span) -> Diagnostic {
        Diagnostic {
            kind,
            span,
            labels: Vec::new(),
        }
    }

    pub(crate) fn with_label(mut self, span: Span, text: impl Into<String>) -> Diagnostic {
        self.labels.push(Label {
            span,
            text: text.into(),
        });
        self
    }

    pub fn severity(&self) -> Severity {
        self.kind.severity()
    }
}

/// Diagnostics collected while loading one rules set, in the order they were found.
#[derive(Debug, Clone, Default)]
pub struct Diagnostics {
    list: Vec<Diagnostic>,
}

impl Diagnostics {
    pub(crate) fn push(&mut self, diagnostic: Diagnostic) {
        self.list.push(diagnostic);
    }

    pub(crate) fn error(&mut self, kind: DiagnosticKind, span: Span) {
        self.push(Diagnostic::new(kind, span));
    }

    pub(crate) fn extend(&mut self, other: Diagnostics) {
        self.list.extend(other.list);
    }

    pub fn has_errors(&self) -> bool {
        self.list.iter().any(|d| d.severity() == Severity::Error)
    }

    pub fn is_empty(&self) -> bool {
        self.list.is_empty()
    }

    pub fn len(&self) -> usize {
        self.list.len()
    }

    pub fn iter(&self) -> impl Iterator<Item = &Diagnostic> {
        self.list.iter()
    }

    pub fn count(&self, severity: Severity) -> usize {
        self.list
            .iter()
            .filter(|d| d.severity() == severity)
            .count()
    }

    /// Renders every diagnostic as `gateway check` shows them (miette graphics, 100 columns); `color`
    /// off gives the text the golden tests compare and `/status` shows.
    pub fn render(&self, files: &SourceMap, color: bool) -> String {
        self.list
            .iter()
            .map(|d| d.render(files, color, 100))
            .collect()
    }

    /// Sorts by file and position, so output follows the text however the passes ran.
    pub(crate) fn sort(&mut self) {
        self.list
            .sort_by_key(|d| (d.span.file, d.span.start, d.span.end));
    }
}

/// One diagnostic as a JSON object, for `gateway check --format json`.
#[derive(Debug, Serialize)]
pub struct JsonDiagnostic<'a> {
    pub code: &'static str,
    pub severity: Severity,
    pub message: String,
    pub file: &'a str,
    pub line: usize,
    pub column: usize,
    pub end_line: usize,
    pub end_column: usize,
    pub help: Option<String>,
}

impl Diagnostic {
    pub fn to_json<'a>(&self, sources: &'a SourceMap) -> JsonDiagnostic<'a> {
        let file = sources.get(self.span.file);
        let (line, column) = file.line_col(self.span.start as usize);
        let (end_line, end_column) = file.line_col(self.span.end as usize);
        JsonDiagnostic {
            code: self.kind.code(),
            severity: self.severity(),
            message: self.kind.to_string(),
            file: &file.name,
            line,
            column,
            end_line,
            end_column,
            help: self.kind.help(),
        }
    }

    /// Renders like miette's graphical handler; `color` off gives the text the golden tests compare.
    pub fn render(&self, sources: &SourceMap, color: bool, width: usize) -> String {
        let file = sources.get(self.span.file);
        let report = Report {
            diagnostic: self,
            source: NamedSource::new(&file.name, file.text.clone()),
        };
        let theme = if color {
            GraphicalTheme::unicode()
        } else {
            GraphicalTheme::unicode_nocolor()
        };
        let handler = GraphicalReportHandler::new_themed(theme)
            .with_width(width)
            .with_links(false);
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = handler.render_report(&mut out, &report);
        out
    }
}

/// Adapts a [`Diagnostic`] and its file to miette's [`miette::Diagnostic`].
struct Report<'a> {
    diagnostic: &'a Diagnostic,
    source: NamedSource<std::sync::Arc<str>>,
}

impl fmt::Debug for Report<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&self.diagnostic, f)
    }
}

impl Display for Report<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        Display::fmt(&self.diagnostic.kind, f)
    }
}

impl std::error::Error for Report<'_> {}

impl miette::Diagnostic for Report<'_> {
    fn code<'b>(&'b self) -> Option<Box<dyn Display + 'b>> {
        Some(Box::new(self.diagnostic.kind.code()))
    }

    fn severity(&self) -> Option<miette::Severity> {
        Some(match self.diagnostic.severity() {
            Severity::Error => miette::Severity::Error,
            Severity::Warning => miette::Severity::Warning,
        })
    }

    fn help<'b>(&'b self) -> Option<Box<dyn Display + 'b>> {
        self.diagnostic
            .kind
            .help()
            .map(|h| Box::new(h) as Box<dyn Display>)
    }

    fn source_code(&self) -> Option<&dyn miette::SourceCode> {
        Some(&self.source)
    }

    fn labels(&self) -> Option<Box<dyn Iterator<Item = LabeledSpan> + '_>> {
        let d = self.diagnostic;
        let to_span =
            |s: Span| SourceSpan::new((s.start as usize).into(), (s.end - s.start) as usize);
        let mut labels = vec![LabeledSpan::new_primary_with_span(
            d.kind.label(),
            to_span(d.span),
        )];
        // Secondary labels in other files cannot be drawn on this file's snippet; they are rare
        // (a duplicate declared in an included file) and the message still names the item.
        labels.extend(
            d.labels
                .iter()
                .filter(|l| l.span.file == d.span.file)
                .map(|l| LabeledSpan::new_with_span(Some(l.text.clone()), to_span(l.span))),
        );
        Some(Box::new(labels.into_iter()))
    }
}
