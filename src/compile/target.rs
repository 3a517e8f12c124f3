//! `target NAME { ... }` → [`Target`]: request line, headers, timeout, retries, rate, signature.

use crate::compile::{Cx, Options, expr};
use crate::diagnostic::DiagnosticKind;
use crate::ruleset::{Method, Retry, SignatureStyle, Target};
use crate::syntax::{Str, TargetDecl, TargetItemKind};

impl Cx<'_> {
    /// Compiles one target; `None` when it has errors (all reported).
    pub(super) fn target(&mut self, decl: &TargetDecl) -> Option<Target> {
        let mut given = Options::default();
        let mut request = None;
        let mut headers = Vec::new();
        let mut timeout = crate::ruleset::DEFAULT_TIMEOUT;
        let mut retry = crate::ruleset::DEFAULT_RETRY;
        let mut rate = None;
        let mut concurrency = crate::ruleset::DEFAULT_CONCURRENCY;
        let mut signature = SignatureStyle::GitHub;
        let mut ok = true;
        for item in &decl.items {
            // `header` may be repeated: each adds one.
            let repeatable = matches!(item.kind, TargetItemKind::Header { .. });
            if !repeatable && !self.once(&mut given, item.kind.keyword(), item.span) {
                continue;
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
                    let checked = self.header_name(name);
                    if let Some(name_text) = &checked
                        && crate::ruleset::GATEWAY_HEADERS
                            .contains(&name_text.to_ascii_lowercase().as_str())
                    {
                        self.diags.push(crate::diagnostic::Diagnostic::new(
                            DiagnosticKind::HeaderReplaced {
                                name: name_text.clone(),
                            },
                            name.span,
                        ));
                    }
                    let value = self.str_template(value, expr::StrContext::Target);
                    match checked {
                        Some(name_text) => headers.push((name_text, value)),
                        None => ok = false,
                    }
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
                    let header_text = match header {
                        Some(h) => match self.header_name(h) {
                            Some(name) => Some((name, h.span)),
                            None => {
                                ok = false;
                                continue;
                            }
                        },
                        None => None,
                    };
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
            fixed_url: std::sync::OnceLock::new(),
        })
    }

    /// Checks a target URL, with every interpolation replaced by a stand-in.
    fn check_url(&mut self, written: &Str, template: &crate::ruleset::StrTemplate) -> bool {
        use crate::ruleset::{Operand, StrPiece};
        // The URL with every interpolation replaced by a stand-in, the sender's (`${event}`,
        // `${delivery}`) by `sender`.
        let stand_in = |sender: &str| -> String {
            template
                .pieces
                .iter()
                .map(|p| match p {
                    StrPiece::Text(t) => t.as_str(),
                    StrPiece::Operand(Operand::Event | Operand::Delivery) => sender,
                    _ => "x",
                })
                .collect()
        };
        let sample = stand_in("x");
        // As written, interpolations included (a secret by its name).
        let shown = {
            let quoted = template.to_string();
            quoted[1..quoted.len() - 1].to_string()
        };
        let reason = match url::Url::parse(&sample) {
            Ok(u) if !matches!(u.scheme(), "http" | "https") => {
                Some(format!("scheme `{}` is not http or https", u.scheme()))
            }
            Ok(u) if u.host_str().is_none_or(str::is_empty) => Some("it has no host".to_string()),
            Ok(u) => {
                // `${event}` and `${delivery}` are the sender's text: they may move a request along
                // the path (each is encoded as one component), never to another host or port.
                let other = stand_in("y");
                let origin = |u: &url::Url| {
                    (
                        u.scheme().to_string(),
                        u.host_str().map(str::to_string),
                        u.port(),
                    )
                };
                let moved = url::Url::parse(&other).map_or(true, |o| {
                    origin(&o) != origin(&u)
                        || o.username() != u.username()
                        || o.password() != u.password()
                });
                if moved {
                    self.error(
                        DiagnosticKind::InterpolationNotAllowed {
                            context: "a target URL's scheme, host, port, user or password",
                            help: "`${event}` and `${delivery}` come from the sender; use them in the path, query or fragment",
                        },
                        written.span,
                    );
                    return false;
                }
                None
            }
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
}
