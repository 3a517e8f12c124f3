//! A target: somewhere actions deliver to, and how (method, URL, headers, timeout, retries, rate).

use std::fmt::{self, Display};
use std::time::Duration;

use crate::ruleset::{ShowDuration, StrTemplate};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Method {
    Get,
    Post,
    Put,
    Patch,
    Delete,
}

impl Method {
    pub fn from_name(name: &str) -> Option<Method> {
        Some(match name {
            "get" => Method::Get,
            "post" => Method::Post,
            "put" => Method::Put,
            "patch" => Method::Patch,
            "delete" => Method::Delete,
            _ => return None,
        })
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Method::Get => "GET",
            Method::Post => "POST",
            Method::Put => "PUT",
            Method::Patch => "PATCH",
            Method::Delete => "DELETE",
        }
    }
}

/// At most `count` per `per`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rate {
    pub count: u32,
    pub per: Duration,
}

impl Display for Rate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "rate {} per {}", self.count, ShowDuration(self.per))
    }
}

/// How many times a failed delivery is tried again, and how long to wait between tries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Retry {
    pub attempts: u32,
    pub min_backoff: Duration,
    pub max_backoff: Duration,
}

/// How `forward` signs what it re-sends.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SignatureStyle {
    /// `X-Hub-Signature-256: sha256=<hex>` (GitHub, and what most receivers accept).
    GitHub,
    /// `X-Gitea-Signature: <hex>`.
    Gitea,
    /// `X-Hub-Signature: sha256=<hex>` (Bitbucket Cloud and Server).
    Bitbucket,
    /// `<header>: sha256=<hex>`, default header `X-Signature` (Flux `generic-hmac`).
    GenericHmac { header: String },
    /// `webhook-id`, `webhook-timestamp`, `webhook-signature: v1,<base64>`.
    StandardWebhooks,
}

pub(crate) const SIGNATURE_STYLES: &[&str] = &[
    "github",
    "gitea",
    "bitbucket",
    "generic_hmac",
    "standard_webhooks",
];

/// The headers the gateway sets on deliveries, replacing a target's own: the delivery id on every
/// one, an idempotency key on a notify's, the coalesced count on a queue check's (`dispatch/http.rs`;
/// `compile` warns about a target that sets one).
pub(crate) const DELIVERY_HEADER: &str = "x-hookgate-delivery";
pub(crate) const IDEMPOTENCY_HEADER: &str = "idempotency-key";
pub(crate) const COALESCED_HEADER: &str = "x-hookgate-coalesced";
pub(crate) const GATEWAY_HEADERS: [&str; 3] =
    [DELIVERY_HEADER, IDEMPOTENCY_HEADER, COALESCED_HEADER];

#[derive(Debug)]
pub struct Target {
    pub(crate) name: String,
    pub(crate) method: Method,
    pub(crate) url: StrTemplate,
    pub(crate) headers: Vec<(String, StrTemplate)>,
    pub(crate) timeout: Duration,
    pub(crate) retry: Retry,
    pub(crate) rate: Option<Rate>,
    pub(crate) concurrency: u32,
    pub(crate) signature: SignatureStyle,
    /// The URL parsed once, when no piece of it depends on the job: `dispatch` would otherwise render
    /// and parse it for every delivery. Filled at the first delivery, so loading does not pay for it.
    pub(crate) fixed_url: std::sync::OnceLock<Option<FixedUrl>>,
}

/// Equal when everything declared is: the parsed URL is a cache of `url`, left out.
impl PartialEq for Target {
    fn eq(&self, other: &Target) -> bool {
        self.name == other.name
            && self.method == other.method
            && self.url == other.url
            && self.headers == other.headers
            && self.timeout == other.timeout
            && self.retry == other.retry
            && self.rate == other.rate
            && self.concurrency == other.concurrency
            && self.signature == other.signature
    }
}

/// A target's URL with its secrets in it: `Debug` never shows it.
pub(crate) struct FixedUrl(pub(crate) url::Url);

impl fmt::Debug for FixedUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("FixedUrl(..)")
    }
}

/// Defaults for what a target does not say; documented in `docs/rules-language.md`.
pub(crate) const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);
pub(crate) const DEFAULT_RETRY: Retry = Retry {
    attempts: 8,
    min_backoff: Duration::from_secs(1),
    max_backoff: Duration::from_secs(300),
};
pub(crate) const DEFAULT_CONCURRENCY: u32 = 4;

impl Target {
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The URL, when it is the same for every job (only text and secrets in it).
    pub(crate) fn fixed_url(&self) -> Option<&url::Url> {
        self.fixed_url
            .get_or_init(|| {
                let text = self.url.render_with(|_| None)?;
                url::Url::parse(&text).ok().map(FixedUrl)
            })
            .as_ref()
            .map(|u| &u.0)
    }
}

impl Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "target {}", self.name)?;
        writeln!(f, "  {} {}", self.method.as_str(), self.url)?;
        for (name, value) in &self.headers {
            writeln!(f, "  header {name:?} = {value}")?;
        }
        writeln!(f, "  timeout {}", ShowDuration(self.timeout))?;
        let r = self.retry;
        writeln!(
            f,
            "  retry {} backoff {}..{}",
            r.attempts,
            ShowDuration(r.min_backoff),
            ShowDuration(r.max_backoff)
        )?;
        if let Some(rate) = &self.rate {
            writeln!(f, "  {rate}")?;
        }
        writeln!(f, "  concurrency {}", self.concurrency)?;
        let signature = match &self.signature {
            SignatureStyle::GitHub => "github".to_string(),
            SignatureStyle::Gitea => "gitea".to_string(),
            SignatureStyle::Bitbucket => "bitbucket".to_string(),
            SignatureStyle::GenericHmac { header } => format!("generic_hmac header {header:?}"),
            SignatureStyle::StandardWebhooks => "standard_webhooks".to_string(),
        };
        writeln!(f, "  signature {signature}")
    }
}

#[cfg(test)]
mod tests {
    use crate::compile::{SecretRef, Secrets};
    use crate::ruleset::SecretValue;

    struct Token;

    impl Secrets for Token {
        fn load(&self, name: &str, _from: SecretRef<'_>) -> Result<SecretValue, String> {
            Ok(SecretValue::new(name, b"tok-do-not-show".to_vec()))
        }
    }

    #[test]
    fn a_parsed_url_with_a_secret_never_shows_in_debug_output() {
        let text = "secret s = env(\"S\")\nsource a: github { secret s }\n\
                    target t { post \"https://ci.example.com/hook?token=${secret.s}\" }\n\
                    rule \"r\" { from a notify t }\n";
        let loaded = crate::load::load_text("t.hook", None, text.as_bytes(), &Token);
        let rules = loaded.result.expect("compiles").rules;
        let target = &rules.targets[0];
        let url = target.fixed_url().expect("text and a secret: fixed");
        assert_eq!(url.query(), Some("token=tok-do-not-show"));
        let shown = format!("{rules:?}");
        assert!(shown.contains("FixedUrl(..)"), "the cache is filled");
        assert!(!shown.contains("tok-do-not-show"), "{shown}");
    }
}
