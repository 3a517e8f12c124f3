//! AST → [`RuleSet`]: resolve names, check values, compile regexes, JSONPaths and templates, lint.
//!
//! Input: the ASTs of every file of one rules set (the root and its includes) and a [`Secrets`]
//! resolver. Output: a [`Compiled`] rule set with its warnings, or every diagnostic found. All passes
//! run even after an error, so one `gateway check` shows every problem. No IO happens here: secrets
//! come through the trait, which `check` implements with placeholders.

mod expr;
mod lint;
mod resolve;
mod tests;
mod values;

pub(crate) use resolve::suggest;
pub(crate) use values::{parse_duration, parse_size};

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use sha2::{Digest, Sha256};

use crate::diagnostic::{Diagnostic, DiagnosticKind, Diagnostics, NameKind};
use crate::providers::ProviderKind;
use crate::rule_test::RuleTest;
use crate::ruleset::{
    Action, HmacAlgorithm, HmacOptions, Method, Rate, Retry, Rule, RuleSet, SecretValue,
    SignatureStyle, Source, SourcePaths, Target, TokenLocation,
};
use crate::source::{FileId, SourceMap, Span};
use crate::syntax::{
    Ast, Item, RuleDecl, SecretDecl, SecretFrom, SourceDecl, SourceItemKind, Str, TargetDecl,
    TargetItemKind, TestDecl, Word,
};
use resolve::Names;

/// Where a declared secret comes from.
#[derive(Debug, Clone, Copy)]
pub enum SecretRef<'a> {
    Env(&'a str),
    File(&'a Path),
}

/// Loads secret values. `serve` reads the environment and files; `check` uses [`PlaceholderSecrets`].
pub trait Secrets {
    /// The value of secret `name`, or why it cannot be had (never containing the value).
    fn load(&self, name: &str, from: SecretRef<'_>) -> Result<SecretValue, String>;
}

/// Stands in for every secret, so a rules file can be checked without access to any.
pub struct PlaceholderSecrets;

impl Secrets for PlaceholderSecrets {
    fn load(&self, name: &str, _from: SecretRef<'_>) -> Result<SecretValue, String> {
        Ok(SecretValue::placeholder(name))
    }
}

/// A successfully compiled rules set.
#[derive(Debug)]
pub struct Compiled {
    pub rules: RuleSet,
    pub tests: Vec<RuleTest>,
    /// Warnings only; a `Compiled` has no errors.
    pub warnings: Diagnostics,
}

/// The default clock skew accepted for timestamped signatures (Slack, Standard Webhooks).
pub(crate) const DEFAULT_TOLERANCE: Duration = Duration::from_secs(300);

/// The longest tolerance a source may set: past it, a captured request replays for too long.
pub(crate) const MAX_TOLERANCE: Duration = Duration::from_secs(3600);

/// Compiles the parsed files of one rules set.
pub(crate) fn compile(
    files: &SourceMap,
    asts: &[(FileId, Ast)],
    secrets: &dyn Secrets,
) -> Result<Compiled, Diagnostics> {
    let mut cx = Cx::new(files, secrets);
    let mut secret_decls = Vec::new();
    let mut source_decls = Vec::new();
    let mut target_decls = Vec::new();
    let mut rule_decls = Vec::new();
    let mut test_decls = Vec::new();
    for (file, ast) in asts {
        for item in &ast.items {
            match item {
                Item::Secret(d) => secret_decls.push(d),
                Item::Source(d) => source_decls.push(d),
                Item::Target(d) => target_decls.push(d),
                Item::Rule(d) => rule_decls.push(d),
                Item::Test(d) => test_decls.push((*file, d)),
                // Includes were followed by the loader.
                Item::Include(_) => {}
            }
        }
    }

    // A set without sources answers every request 404: never what was meant (an empty file, a
    // truncated copy), so it must not load, and a reload must not swap it in.
    if source_decls.is_empty() {
        cx.error(
            DiagnosticKind::NoSources,
            Span::new(FileId::default(), 0, 0),
        );
    }

    // Declare every name first, so references may come before declarations.
    let secret_ids: Vec<Option<usize>> = secret_decls
        .iter()
        .map(|d| cx.secrets.declare(&d.name.text, d.name.span, &mut cx.diags))
        .collect();
    let source_ids: Vec<Option<usize>> = source_decls
        .iter()
        .map(|d| cx.sources.declare(&d.name.text, d.name.span, &mut cx.diags))
        .collect();
    let target_ids: Vec<Option<usize>> = target_decls
        .iter()
        .map(|d| cx.targets.declare(&d.name.text, d.name.span, &mut cx.diags))
        .collect();
    for rule in &rule_decls {
        let name = cx.plain(&rule.name, "rule names");
        if name.is_empty() {
            cx.invalid_value(
                rule.name.span,
                "rule name is empty",
                "name the rule after what it does",
            );
        }
        cx.rules.declare(&name, rule.name.span, &mut cx.diags);
    }

    cx.secret_values = vec![None; cx.secrets.len()];
    for (decl, id) in secret_decls.iter().zip(&secret_ids) {
        let value = cx.secret(decl);
        if let (Some(id), Some(value)) = (id, value) {
            cx.secret_values[*id] = Some(value);
        }
    }
    let mut targets = Vec::new();
    for (decl, id) in target_decls.iter().zip(&target_ids) {
        let target = cx.target(decl);
        if let (Some(_), Some(target)) = (id, target) {
            targets.push(target);
        }
    }
    let mut sources = Vec::new();
    for (decl, id) in source_decls.iter().zip(&source_ids) {
        let source = cx.source(decl);
        if let (Some(_), Some(source)) = (id, source) {
            sources.push(source);
        }
    }
    let mut rules = Vec::new();
    for decl in &rule_decls {
        if let Some(rule) = cx.rule(decl, &sources) {
            rules.push(rule);
        }
    }
    let tests: Vec<RuleTest> = test_decls
        .iter()
        .filter_map(|(file, decl)| cx.test(*file, decl, &sources))
        .collect();

    // An error such as `from acm` makes `acme` look unused; those warnings would only be noise.
    if !cx.diags.has_errors() {
        cx.lint_unused();
    }
    let by_path = cx.index_paths(&sources, &source_decls);

    let mut diags = cx.diags;
    diags.sort();
    if diags.has_errors() {
        return Err(diags);
    }
    // INVARIANT: without errors every declaration compiled, so indices from the name tables are
    // indices into `sources`, `targets` and `rules`.
    for (i, rule) in rules.iter().enumerate() {
        match &rule.sources {
            Some(ids) => ids.iter().for_each(|&s| sources[s].rules.push(i)),
            None => sources.iter_mut().for_each(|s| s.rules.push(i)),
        }
    }
    for source in &mut sources {
        source.index = crate::ruleset::SourceIndex::build(&rules, &source.rules);
        source.reads = crate::ruleset::paths_read(&rules, &source.rules);
    }
    let secrets = cx
        .secret_values
        .iter()
        .zip(&cx.secrets.names)
        .filter_map(|(v, name)| v.clone().map(|v| (name.clone(), v)))
        .collect();
    Ok(Compiled {
        rules: RuleSet {
            sources,
            targets,
            rules,
            by_path,
            secrets,
            version: String::new(),
        },
        tests,
        warnings: diags,
    })
}

/// Compilation state: the name tables, the diagnostics, and caches of compiled regexes and paths.
pub(crate) struct Cx<'a> {
    files: &'a SourceMap,
    loader: &'a dyn Secrets,
    diags: Diagnostics,
    secrets: Names,
    sources: Names,
    targets: Names,
    rules: Names,
    tests: Names,
    secret_values: Vec<Option<SecretValue>>,
    regexes: HashMap<(String, String), Arc<regex::Regex>>,
    paths: HashMap<String, Arc<crate::ruleset::JsonPath>>,
}

impl<'a> Cx<'a> {
    fn new(files: &'a SourceMap, loader: &'a dyn Secrets) -> Cx<'a> {
        Cx {
            files,
            loader,
            diags: Diagnostics::default(),
            secrets: Names::new(NameKind::Secret),
            sources: Names::new(NameKind::Source),
            targets: Names::new(NameKind::Target),
            rules: Names::new(NameKind::Rule),
            tests: Names::new(NameKind::Test),
            secret_values: Vec::new(),
            regexes: HashMap::new(),
            paths: HashMap::new(),
        }
    }

    fn error(&mut self, kind: DiagnosticKind, span: Span) {
        self.diags.error(kind, span);
    }

    fn invalid_value(&mut self, span: Span, message: &str, help: &str) {
        self.error(
            DiagnosticKind::InvalidValue {
                message: message.into(),
                help: Some(help.into()),
            },
            span,
        );
    }

    /// A string that must not interpolate anything; reports each `${...}`.
    fn plain(&mut self, s: &Str, context: &'static str) -> String {
        for interp in s.interps() {
            let help = "write `\\${` for a literal `${`";
            self.diags.error(
                DiagnosticKind::InterpolationNotAllowed { context, help },
                interp.span,
            );
        }
        s.text()
    }

    fn duration(&mut self, word: &Word) -> Option<Duration> {
        let parsed = parse_duration(&word.text);
        if parsed.is_none() {
            self.error(
                DiagnosticKind::InvalidDuration {
                    text: word.text.clone(),
                },
                word.span,
            );
        }
        parsed
    }

    /// A duration that must be above zero.
    fn positive_duration(&mut self, word: &Word, what: &str) -> Option<Duration> {
        let d = self.duration(word)?;
        if d.is_zero() {
            self.invalid_value(
                word.span,
                &format!("{what} must be longer than zero"),
                "use at least `1ms`",
            );
            return None;
        }
        Some(d)
    }

    /// A whole number within `min..=max`.
    fn int(&mut self, word: &Word, min: u32, max: u32, what: &str) -> Option<u32> {
        match word.text.parse::<u32>() {
            Ok(n) if (min..=max).contains(&n) => Some(n),
            _ => {
                self.invalid_value(
                    word.span,
                    &format!("{what} `{}` is out of range", word.text),
                    &format!("use a number from {min} to {max}"),
                );
                None
            }
        }
    }

    fn rate(&mut self, count: &Word, per: &Word) -> Option<Rate> {
        let count = self.int(count, 1, 1_000_000, "rate");
        let per = self.positive_duration(per, "a rate's period");
        Some(Rate {
            count: count?,
            per: per?,
        })
    }

    fn secret(&mut self, decl: &SecretDecl) -> Option<SecretValue> {
        let (from, span, path);
        match &decl.from {
            SecretFrom::Env(s) => {
                let var = self.plain(s, "secret references");
                let valid = var
                    .chars()
                    .next()
                    .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
                    && var.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
                if !valid {
                    self.error(
                        DiagnosticKind::InvalidSecretRef {
                            message: format!("`{var}` is not an environment variable name"),
                            help: "variable names are letters, digits and `_`, not starting with a digit",
                        },
                        s.span,
                    );
                    return None;
                }
                span = s.span;
                path = var;
                from = SecretRef::Env(&path);
            }
            SecretFrom::File(s) => {
                let file = self.plain(s, "secret references");
                if file.is_empty() {
                    self.error(
                        DiagnosticKind::InvalidSecretRef {
                            message: "secret file path is empty".into(),
                            help: "name the file a Kubernetes Secret is mounted at, e.g. `/etc/gateway/secrets/token`",
                        },
                        s.span,
                    );
                    return None;
                }
                span = s.span;
                path = file;
                from = SecretRef::File(Path::new(&path));
            }
        }
        match self.loader.load(&decl.name.text, from) {
            Ok(value) => Some(value),
            Err(reason) => {
                self.error(
                    DiagnosticKind::SecretUnavailable {
                        name: decl.name.text.clone(),
                        reason,
                    },
                    span,
                );
                None
            }
        }
    }

    /// Resolves a secret name used somewhere, marking it used.
    fn secret_ref(&mut self, word: &Word) -> Option<SecretValue> {
        let id = self
            .secrets
            .resolve(&word.text, word.span, &mut self.diags)?;
        self.secret_values[id].clone()
    }

    fn target(&mut self, decl: &TargetDecl) -> Option<Target> {
        let mut seen: HashMap<&'static str, Span> = HashMap::new();
        let mut request = None;
        let mut headers = Vec::new();
        let mut timeout = crate::ruleset::DEFAULT_TIMEOUT;
        let mut retry = crate::ruleset::DEFAULT_RETRY;
        let mut rate = None;
        let mut concurrency = crate::ruleset::DEFAULT_CONCURRENCY;
        let mut signature = SignatureStyle::GitHub;
        let mut ok = true;
        for item in &decl.items {
            let keyword = item.kind.keyword();
            if !matches!(item.kind, TargetItemKind::Header { .. }) {
                if let Some(first) = seen.get(keyword) {
                    self.diags.push(
                        Diagnostic::new(
                            DiagnosticKind::DuplicateOption { option: keyword },
                            item.span,
                        )
                        .with_label(*first, "first given here"),
                    );
                    continue;
                }
                seen.insert(keyword, item.span);
            }
            match &item.kind {
                TargetItemKind::Request { method, url } => {
                    // INVARIANT: the grammar only accepts the methods `Method::from_name` knows.
                    let method = Method::from_name(&method.text).unwrap_or(Method::Post);
                    let url_template = self.str_template(url, expr::StrContext::Target);
                    ok &= self.check_url(url, &url_template);
                    request = Some((method, url_template));
                }
                TargetItemKind::Header { name, value } => {
                    let name_text = self.plain(name, "header names");
                    if !is_header_name(&name_text) {
                        self.invalid_value(
                            name.span,
                            &format!("`{name_text}` is not a valid header name"),
                            "header names are letters, digits and `-`",
                        );
                        ok = false;
                    }
                    let value = self.str_template(value, expr::StrContext::Target);
                    headers.push((name_text, value));
                }
                TargetItemKind::Timeout(word) => match self.positive_duration(word, "timeout") {
                    Some(d) => timeout = d,
                    None => ok = false,
                },
                TargetItemKind::Retry { count, backoff } => {
                    let attempts = self.int(count, 0, 1000, "retry count");
                    let (min, max) = match backoff {
                        Some((min, max)) => (
                            self.positive_duration(min, "backoff"),
                            self.positive_duration(max, "backoff"),
                        ),
                        None => (Some(retry.min_backoff), Some(retry.max_backoff)),
                    };
                    match (attempts, min, max) {
                        (Some(attempts), Some(min), Some(max)) if min <= max => {
                            retry = Retry {
                                attempts,
                                min_backoff: min,
                                max_backoff: max,
                            };
                        }
                        (Some(_), Some(_), Some(_)) => {
                            self.invalid_value(
                                item.span,
                                "the backoff's minimum is larger than its maximum",
                                "write `backoff MIN..MAX`, e.g. `backoff 1s..5m`",
                            );
                            ok = false;
                        }
                        _ => ok = false,
                    }
                }
                TargetItemKind::Rate { count, per } => match self.rate(count, per) {
                    Some(r) => rate = Some(r),
                    None => ok = false,
                },
                TargetItemKind::Concurrency(word) => match self.int(word, 1, 1024, "concurrency") {
                    Some(n) => concurrency = n,
                    None => ok = false,
                },
                TargetItemKind::Signature { style, header } => {
                    let header_text = header
                        .as_ref()
                        .map(|h| (self.plain(h, "header names"), h.span));
                    signature = match (style.text.as_str(), header_text) {
                        ("github", None) => SignatureStyle::GitHub,
                        ("gitea", None) => SignatureStyle::Gitea,
                        ("bitbucket", None) => SignatureStyle::Bitbucket,
                        ("standard_webhooks", None) => SignatureStyle::StandardWebhooks,
                        ("generic_hmac", h) => SignatureStyle::GenericHmac {
                            header: h.map_or_else(|| "X-Signature".into(), |h| h.0),
                        },
                        (known, Some((_, span)))
                            if crate::ruleset::SIGNATURE_STYLES.contains(&known) =>
                        {
                            self.error(
                                DiagnosticKind::OptionNotAllowed {
                                    option: "header",
                                    provider: format!("`{known}` signature"),
                                    allowed_for: "`generic_hmac` signatures",
                                },
                                span,
                            );
                            ok = false;
                            continue;
                        }
                        (other, _) => {
                            self.error(
                                DiagnosticKind::InvalidOption {
                                    option: "signature style",
                                    value: other.into(),
                                    expected: crate::ruleset::SIGNATURE_STYLES.join(", "),
                                },
                                style.span,
                            );
                            ok = false;
                            continue;
                        }
                    };
                }
            }
        }
        let Some((method, url)) = request else {
            self.error(
                DiagnosticKind::MissingUrl {
                    target: decl.name.text.clone(),
                },
                decl.name.span,
            );
            return None;
        };
        ok.then(|| Target {
            name: decl.name.text.clone(),
            method,
            url,
            headers,
            timeout,
            retry,
            rate,
            concurrency,
            signature,
        })
    }

    /// Checks a target URL, with every interpolation replaced by a stand-in.
    fn check_url(&mut self, written: &Str, template: &crate::ruleset::StrTemplate) -> bool {
        use crate::ruleset::StrPiece;
        let sample: String = template
            .pieces
            .iter()
            .map(|p| match p {
                StrPiece::Text(t) => t.as_str(),
                _ => "x",
            })
            .collect();
        let shown = written.text();
        let reason = match url::Url::parse(&sample) {
            Ok(u) if !matches!(u.scheme(), "http" | "https") => {
                Some(format!("scheme `{}` is not http or https", u.scheme()))
            }
            Ok(u) if u.host_str().is_none_or(str::is_empty) => Some("it has no host".to_string()),
            Ok(_) => None,
            Err(e) => Some(e.to_string()),
        };
        match reason {
            Some(reason) => {
                self.error(
                    DiagnosticKind::InvalidUrl { url: shown, reason },
                    written.span,
                );
                false
            }
            None => true,
        }
    }

    fn source(&mut self, decl: &SourceDecl) -> Option<Source> {
        let kind = match ProviderKind::from_name(&decl.kind.text) {
            Some(kind) => kind,
            None => {
                let suggestion = suggest(&decl.kind.text, crate::providers::KINDS.iter().copied());
                self.error(
                    DiagnosticKind::UnknownProvider {
                        name: decl.kind.text.clone(),
                        suggestion,
                    },
                    decl.kind.span,
                );
                return None;
            }
        };
        let mut ok = true;
        let mut seen: HashMap<&'static str, Span> = HashMap::new();
        let mut secrets = Vec::new();
        let mut path = None;
        let mut events = None;
        let mut max_body = None;
        let mut insecure = None;
        let mut rate = None;
        let mut tolerance = DEFAULT_TOLERANCE;
        let mut hmac_header = None;
        let mut algorithm = None;
        let mut base64 = false;
        let mut prefix = None;
        let mut token = None;
        for item in &decl.items {
            let keyword = item.kind.keyword();
            // `secret` may be repeated: the lists add up.
            if !matches!(item.kind, SourceItemKind::Secrets(_)) {
                if let Some(first) = seen.get(keyword) {
                    self.diags.push(
                        Diagnostic::new(
                            DiagnosticKind::DuplicateOption { option: keyword },
                            item.span,
                        )
                        .with_label(*first, "first given here"),
                    );
                    ok = false;
                    continue;
                }
                seen.insert(keyword, item.span);
            }
            if let Some(allowed_for) = option_applies(keyword, kind) {
                self.error(
                    DiagnosticKind::OptionNotAllowed {
                        option: keyword,
                        provider: kind.to_string(),
                        allowed_for,
                    },
                    item.span,
                );
                ok = false;
                continue;
            }
            match &item.kind {
                SourceItemKind::Secrets(names) => {
                    for name in names {
                        match self.secret_ref(name) {
                            Some(v) => secrets.push(v),
                            None => ok = false,
                        }
                    }
                }
                SourceItemKind::Path(s) => {
                    let text = self.plain(s, "paths");
                    match path_problem(&text) {
                        Some(reason) => {
                            self.error(DiagnosticKind::InvalidPath { path: text, reason }, s.span);
                            ok = false;
                        }
                        None => path = Some(text),
                    }
                }
                SourceItemKind::Events(list) => {
                    let mut names = Vec::new();
                    for s in list {
                        let event = self.plain(s, "event names");
                        self.check_event(&event, s.span, kind);
                        names.push(event);
                    }
                    events = Some(names);
                }
                SourceItemKind::MaxBody(word) => match parse_size(&word.text) {
                    Some(0) => {
                        self.invalid_value(
                            word.span,
                            "max_body must be above zero",
                            "e.g. `max_body 1MiB`",
                        );
                        ok = false;
                    }
                    Some(n) => max_body = Some(n),
                    None => {
                        self.error(
                            DiagnosticKind::InvalidSize {
                                text: word.text.clone(),
                            },
                            word.span,
                        );
                        ok = false;
                    }
                },
                SourceItemKind::Insecure => insecure = Some(item.span),
                SourceItemKind::Header(s) => {
                    let text = self.plain(s, "header names");
                    if !is_header_name(&text) {
                        self.invalid_value(
                            s.span,
                            &format!("`{text}` is not a valid header name"),
                            "header names are letters, digits and `-`",
                        );
                        ok = false;
                    }
                    hmac_header = Some(text);
                }
                SourceItemKind::Algorithm(word) => {
                    algorithm = match word.text.as_str() {
                        "sha1" => Some(HmacAlgorithm::Sha1),
                        "sha256" => Some(HmacAlgorithm::Sha256),
                        "sha512" => Some(HmacAlgorithm::Sha512),
                        other => {
                            self.error(
                                DiagnosticKind::InvalidOption {
                                    option: "algorithm",
                                    value: other.into(),
                                    expected: "`sha1`, `sha256` or `sha512`".into(),
                                },
                                word.span,
                            );
                            ok = false;
                            None
                        }
                    }
                }
                SourceItemKind::Encoding(word) => match word.text.as_str() {
                    "hex" => base64 = false,
                    "base64" => base64 = true,
                    other => {
                        self.error(
                            DiagnosticKind::InvalidOption {
                                option: "encoding",
                                value: other.into(),
                                expected: "`hex` or `base64`".into(),
                            },
                            word.span,
                        );
                        ok = false;
                    }
                },
                SourceItemKind::Prefix(s) => prefix = Some((self.plain(s, "prefixes"), s.span)),
                SourceItemKind::TokenHeader(s) => {
                    token = Some(TokenLocation::Header(self.plain(s, "header names")))
                }
                SourceItemKind::TokenQuery(s) => {
                    token = Some(TokenLocation::Query(self.plain(s, "query names")))
                }
                SourceItemKind::Tolerance(word) => {
                    match self.positive_duration(word, "tolerance") {
                        Some(d) if d > MAX_TOLERANCE => {
                            self.invalid_value(
                                word.span,
                                &format!("tolerance `{}` is longer than 1 hour", word.text),
                                "a captured request can be replayed for as long as the tolerance; providers sign as they send, so allow clock skew only, e.g. `5m` (the default)",
                            );
                            ok = false;
                        }
                        Some(d) => tolerance = d,
                        None => ok = false,
                    }
                }
                SourceItemKind::Rate { count, per } => match self.rate(count, per) {
                    Some(r) => rate = Some(r),
                    None => ok = false,
                },
            }
        }

        if let Some(span) = insecure {
            if !secrets.is_empty() {
                self.error(
                    DiagnosticKind::InsecureNotAllowed {
                        reason: "an `insecure` source cannot also have secrets",
                    },
                    span,
                );
                ok = false;
            }
        } else if secrets.is_empty() && ok {
            self.error(
                DiagnosticKind::MissingSecret {
                    source: decl.name.text.clone(),
                    provider: kind.to_string(),
                },
                decl.name.span,
            );
            ok = false;
        }
        let hmac = (kind == ProviderKind::GenericHmac).then(|| {
            let prefix = match (algorithm, prefix) {
                (Some(alg), None) => format!("{}=", alg.name()),
                (Some(_), Some((p, _))) => p,
                (None, None) => String::new(),
                (None, Some((_, span))) => {
                    self.invalid_value(
                        span,
                        "`prefix` needs a fixed `algorithm`",
                        "without `algorithm` the sender names it in the prefix (`sha256=...`); add `algorithm sha256`",
                    );
                    ok = false;
                    String::new()
                }
            };
            HmacOptions { header: hmac_header.unwrap_or_else(|| "X-Signature".into()), algorithm, base64, prefix }
        });
        let url_token = kind.url_token()
            || (kind == ProviderKind::Generic && token.is_none() && insecure.is_none());
        if kind == ProviderKind::Generic && token.is_none() && insecure.is_none() {
            token = Some(TokenLocation::Url);
        }
        let paths = if url_token {
            if let Some(span) = seen.get("path") {
                self.error(
                    DiagnosticKind::OptionNotAllowed {
                        option: "path",
                        provider: kind.to_string(),
                        allowed_for: "sources whose path is not derived from their secret",
                    },
                    *span,
                );
                ok = false;
            }
            if secrets.iter().any(SecretValue::is_placeholder) {
                SourcePaths::TokenUnknown
            } else {
                SourcePaths::Token(
                    secrets
                        .iter()
                        .map(|s| token_path(&decl.name.text, s))
                        .collect(),
                )
            }
        } else {
            SourcePaths::Fixed(path.unwrap_or_else(|| format!("/hook/{}", decl.name.text)))
        };
        ok.then(|| Source {
            name: decl.name.text.clone(),
            kind,
            paths,
            secrets,
            events,
            max_body,
            rate,
            tolerance,
            hmac,
            token,
            rules: Vec::new(),
            index: Default::default(),
            reads: None,
        })
    }

    fn rule(&mut self, decl: &RuleDecl, sources: &[Source]) -> Option<Rule> {
        use crate::syntax::RuleItemKind;
        let name = decl.name.text();
        let mut ok = true;
        let mut seen: HashMap<&'static str, Span> = HashMap::new();
        let mut from: Option<Option<Vec<usize>>> = None;
        let mut on = None;
        let mut when = None;
        let mut actions = Vec::new();
        for item in &decl.items {
            let clause = match &item.kind {
                RuleItemKind::From(_) => Some("from"),
                RuleItemKind::On(_) => Some("on"),
                RuleItemKind::When(_) => Some("when"),
                _ => None,
            };
            if let Some(clause) = clause {
                if let Some(first) = seen.get(clause) {
                    self.diags.push(
                        Diagnostic::new(
                            DiagnosticKind::DuplicateOption { option: clause },
                            item.span,
                        )
                        .with_label(*first, "first given here"),
                    );
                    ok = false;
                    continue;
                }
                seen.insert(clause, item.span);
            }
            match &item.kind {
                RuleItemKind::From(names) if names.is_empty() => {
                    self.sources.used.fill(true);
                    from = Some(None);
                }
                RuleItemKind::From(names) => {
                    let mut ids = Vec::new();
                    for n in names {
                        match self.sources.resolve(&n.text, n.span, &mut self.diags) {
                            Some(id) if !ids.contains(&id) => ids.push(id),
                            Some(_) => {}
                            None => ok = false,
                        }
                    }
                    from = Some(Some(ids));
                }
                RuleItemKind::On(list) => {
                    on = Some(
                        list.iter()
                            .map(|s| (self.plain(s, "event names"), s.span))
                            .collect::<Vec<_>>(),
                    );
                }
                RuleItemKind::When(e) => match self.matcher(e) {
                    Some(m) => when = Some(m),
                    None => ok = false,
                },
                RuleItemKind::Notify { target, body } => {
                    let t = self
                        .targets
                        .resolve(&target.text, target.span, &mut self.diags);
                    let body = body.as_ref().map(|b| self.template(b));
                    match (t, body) {
                        (Some(target), None) => actions.push(Action::Notify { target, body: None }),
                        (Some(target), Some(Some(body))) => actions.push(Action::Notify {
                            target,
                            body: Some(body),
                        }),
                        _ => ok = false,
                    }
                }
                RuleItemKind::Check { target, key } => {
                    let t = self
                        .targets
                        .resolve(&target.text, target.span, &mut self.diags);
                    let key = key
                        .as_ref()
                        .map(|k| self.str_template(k, expr::StrContext::Body));
                    match t {
                        Some(target) => actions.push(Action::Check { target, key }),
                        None => ok = false,
                    }
                }
                RuleItemKind::Forward { target, sign_with } => {
                    let t = self
                        .targets
                        .resolve(&target.text, target.span, &mut self.diags);
                    let sign_with = match sign_with {
                        Some(word) => match self.secret_ref(word) {
                            Some(v) => Some(v),
                            None => {
                                ok = false;
                                None
                            }
                        },
                        None => None,
                    };
                    match t {
                        Some(target) => actions.push(Action::Forward { target, sign_with }),
                        None => ok = false,
                    }
                }
            }
        }
        let Some(from) = from else {
            self.error(DiagnosticKind::MissingFrom, decl.name.span);
            return None;
        };
        if let (Some(on), Some(ids)) = (&on, &from) {
            self.check_rule_events(on, ids, sources);
        }
        if actions.is_empty() && ok {
            self.diags.push(Diagnostic::new(
                DiagnosticKind::NoActions { rule: name.clone() },
                decl.name.span,
            ));
        }
        ok.then(|| Rule {
            name,
            sources: from,
            on: on.map(|list| list.into_iter().map(|(e, _)| e).collect()),
            when,
            actions,
        })
    }

    fn test(&mut self, file: FileId, decl: &TestDecl, sources: &[Source]) -> Option<RuleTest> {
        tests::compile_test(self, file, decl, sources)
    }

    /// The `path → source` index; two sources on one path is an error.
    fn index_paths(&mut self, sources: &[Source], decls: &[&SourceDecl]) -> HashMap<String, usize> {
        let mut by_path: HashMap<String, usize> = HashMap::new();
        for (i, source) in sources.iter().enumerate() {
            let paths: Vec<&String> = match &source.paths {
                SourcePaths::Fixed(p) => vec![p],
                SourcePaths::Token(ps) => ps.iter().collect(),
                SourcePaths::TokenUnknown => vec![],
            };
            for path in paths {
                if let Some(&other) = by_path.get(path) {
                    let span = path_span(decls, &source.name);
                    let first = path_span(decls, &sources[other].name);
                    self.diags.push(
                        Diagnostic::new(
                            DiagnosticKind::PathConflict {
                                path: path.clone(),
                                other: sources[other].name.clone(),
                            },
                            span,
                        )
                        .with_label(first, "first used here"),
                    );
                } else {
                    by_path.insert(path.clone(), i);
                }
            }
        }
        by_path
    }
}

/// The span to blame for a source's path: its `path` item, or its name when the path is the default.
fn path_span(decls: &[&SourceDecl], name: &str) -> Span {
    let Some(decl) = decls.iter().find(|d| d.name.text == name) else {
        return Span::default();
    };
    decl.items
        .iter()
        .find(|i| matches!(i.kind, SourceItemKind::Path(_)))
        .map_or(decl.name.span, |i| i.span)
}

/// `None` when option `keyword` applies to `kind`, else the kinds it applies to.
fn option_applies(keyword: &str, kind: ProviderKind) -> Option<&'static str> {
    let (applies, allowed_for) = match keyword {
        "insecure" => (kind == ProviderKind::Generic, "`generic` sources"),
        "header" | "algorithm" | "encoding" | "prefix" => {
            (kind == ProviderKind::GenericHmac, "`generic_hmac` sources")
        }
        "token" => (kind == ProviderKind::Generic, "`generic` sources"),
        "tolerance" => (
            kind.timestamped(),
            "`slack`, `standard_webhooks` and `gitlab` sources",
        ),
        _ => (true, ""),
    };
    (!applies).then_some(allowed_for)
}

/// Why a `path` is unusable, if it is.
fn path_problem(path: &str) -> Option<&'static str> {
    if !path.starts_with('/') {
        Some("paths start with `/`")
    } else if path.contains(['?', '#']) {
        Some("a path has no query or fragment")
    } else if path.chars().any(|c| c.is_whitespace() || c.is_control()) {
        Some("a path has no white space")
    } else if path.contains("//") || path.split('/').any(|seg| seg == "." || seg == "..") {
        Some("a path has no empty, `.` or `..` segments")
    } else {
        None
    }
}

fn is_header_name(name: &str) -> bool {
    !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}

/// The URL path of a URL-token source: `/hook/<hex sha256(secret ++ name)>`, as Flux derives its
/// receiver paths, so the URL itself is the credential and differs per source.
pub(crate) fn token_path(source: &str, secret: &SecretValue) -> String {
    let mut hasher = Sha256::new();
    hasher.update(secret.expose());
    hasher.update(source.as_bytes());
    format!("/hook/{}", hex::encode(hasher.finalize()))
}

#[cfg(test)]
mod unit_tests {
    use super::*;

    #[test]
    fn path_problems() {
        assert_eq!(path_problem("/hook/a"), None);
        assert!(path_problem("hook").is_some());
        assert!(path_problem("/a?b").is_some());
        assert!(path_problem("/a//b").is_some());
        assert!(path_problem("/a/../b").is_some());
        assert!(path_problem("/a b").is_some());
    }

    #[test]
    fn token_path_depends_on_name_and_secret() {
        let s = SecretValue::new("dh", b"token".to_vec());
        let a = token_path("images", &s);
        assert_eq!(a.len(), "/hook/".len() + 64);
        assert_ne!(a, token_path("other", &s));
        assert_ne!(
            a,
            token_path("images", &SecretValue::new("dh", b"token2".to_vec()))
        );
    }
}
