//! `source NAME: KIND { ... }` → [`Source`]: the provider kind's options, secrets, path; and the
//! `path → source` index of the whole set.

use std::collections::HashMap;
use std::time::Duration;

use sha2::{Digest, Sha256};

use crate::compile::{Cx, Options, parse_size, suggest};
use crate::diagnostic::{Diagnostic, DiagnosticKind};
use crate::providers::ProviderKind;
use crate::ruleset::{HmacAlgorithm, HmacOptions, SecretValue, Source, SourcePaths, TokenLocation};
use crate::source::Span;
use crate::syntax::{SourceDecl, SourceItemKind, Str};

/// The default clock skew accepted for timestamped signatures (Slack, Standard Webhooks).
const DEFAULT_TOLERANCE: Duration = Duration::from_secs(300);

/// The longest tolerance a source may set: past it, a captured request replays for too long.
const MAX_TOLERANCE: Duration = Duration::from_secs(3600);

impl Cx<'_> {
    /// Compiles one source; `None` when it has errors (all reported).
    pub(super) fn source(&mut self, decl: &SourceDecl) -> Option<Source> {
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
        let mut given = Options::default();
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
            let repeatable = matches!(item.kind, SourceItemKind::Secrets(_));
            if !repeatable && !self.once(&mut given, keyword, item.span) {
                ok = false;
                continue;
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
                SourceItemKind::Header(s) => match self.header_name(s) {
                    Some(name) => hmac_header = Some(name.to_ascii_lowercase()),
                    None => ok = false,
                },
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
                SourceItemKind::TokenHeader(s) => match self.header_name(s) {
                    Some(name) => token = Some(TokenLocation::Header(name.to_ascii_lowercase())),
                    None => ok = false,
                },
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
            HmacOptions { header: hmac_header.unwrap_or_else(|| "x-signature".into()), algorithm, base64, prefix }
        });
        let url_token = kind.url_token()
            || (kind == ProviderKind::Generic && token.is_none() && insecure.is_none());
        if kind == ProviderKind::Generic && token.is_none() && insecure.is_none() {
            token = Some(TokenLocation::Url);
        }
        let paths = if url_token {
            if let Some(span) = given.get("path") {
                self.error(
                    DiagnosticKind::OptionNotAllowed {
                        option: "path",
                        provider: kind.to_string(),
                        allowed_for: "sources whose path is not derived from their secret",
                    },
                    span,
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

    /// The `path → source` index; two sources on one path is an error.
    pub(super) fn index_paths(
        &mut self,
        sources: &[Source],
        decls: &[&SourceDecl],
    ) -> HashMap<String, usize> {
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

    /// A header name as written, or `None` with an error when it is not an HTTP header name (which
    /// no request could carry, so a source reading it could never verify one).
    pub(super) fn header_name(&mut self, s: &Str) -> Option<String> {
        let name = self.plain(s, "header names");
        let valid = !name.is_empty()
            && name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b));
        if !valid {
            self.invalid_value(
                s.span,
                &format!("`{name}` is not a valid header name"),
                "write a header name with letters, digits and `-`, e.g. `X-Signature`: no spaces, no `:`",
            );
            return None;
        }
        Some(name)
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

/// The URL path of a URL-token source: `/hook/<hex sha256(secret ++ name)>`, as Flux derives its
/// receiver paths, so the URL itself is the credential and differs per source.
fn token_path(source: &str, secret: &SecretValue) -> String {
    let mut hasher = Sha256::new();
    hasher.update(secret.expose());
    hasher.update(source.as_bytes());
    format!("/hook/{}", hex::encode(hasher.finalize()))
}

#[cfg(test)]
mod tests {
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
