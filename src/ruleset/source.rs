//! A source: one inbound endpoint, its provider kind, how it is verified, and the rules listening.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use crate::providers::ProviderKind;
use crate::ruleset::{Rate, RuleSet, ShowDuration};

/// A secret's bytes, with the name it was declared under. Never printed: `Debug` and `Display` show
/// the name only.
#[derive(Clone)]
pub struct SecretValue {
    pub(crate) name: Arc<str>,
    pub(crate) bytes: Arc<[u8]>,
    /// True when `check` stood in for the real value: the bytes are empty and must not be used.
    pub(crate) placeholder: bool,
}

impl SecretValue {
    pub fn new(name: &str, bytes: impl Into<Arc<[u8]>>) -> SecretValue {
        SecretValue {
            name: name.into(),
            bytes: bytes.into(),
            placeholder: false,
        }
    }

    pub fn placeholder(name: &str) -> SecretValue {
        SecretValue {
            name: name.into(),
            bytes: Arc::from(Vec::new()),
            placeholder: true,
        }
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn expose(&self) -> &[u8] {
        &self.bytes
    }

    pub fn is_placeholder(&self) -> bool {
        self.placeholder
    }
}

/// The same name and bytes (compared in constant time) and both real or both placeholders: a reload
/// shares a target only when its secrets did not change.
impl PartialEq for SecretValue {
    fn eq(&self, other: &SecretValue) -> bool {
        use subtle::ConstantTimeEq;
        self.name == other.name
            && self.placeholder == other.placeholder
            && (Arc::ptr_eq(&self.bytes, &other.bytes)
                || bool::from(self.bytes.as_ref().ct_eq(other.bytes.as_ref())))
    }
}

impl fmt::Debug for SecretValue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SecretValue({}, <redacted>)", self.name)
    }
}

/// Where a source listens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SourcePaths {
    /// `/hook/<name>` or the source's `path`.
    Fixed(String),
    /// URL-token kinds: one path per secret, `/hook/<hex sha256(secret ++ name)>`.
    Token(Vec<String>),
    /// URL-token kind compiled without real secrets (`gateway check`): the paths are unknown.
    TokenUnknown,
}

/// Where a `generic` source finds its token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TokenLocation {
    /// The URL path is derived from the secret, as for DockerHub.
    Url,
    /// The header's name, lowercase (as the server's headers are).
    Header(String),
    Query(String),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HmacAlgorithm {
    Sha1,
    Sha256,
    Sha512,
}

impl HmacAlgorithm {
    pub fn name(self) -> &'static str {
        match self {
            HmacAlgorithm::Sha1 => "sha1",
            HmacAlgorithm::Sha256 => "sha256",
            HmacAlgorithm::Sha512 => "sha512",
        }
    }
}

/// How a `generic_hmac` source reads its signature.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HmacOptions {
    /// The signature header's name, lowercase (as the server's headers are).
    pub header: String,
    /// `None`: the sender names the algorithm in the value's prefix (`sha256=...`), as Flux does.
    pub algorithm: Option<HmacAlgorithm>,
    pub base64: bool,
    /// The text before the digest; only with a fixed `algorithm`.
    pub prefix: String,
}

/// One inbound endpoint.
#[derive(Debug)]
pub struct Source {
    pub(crate) name: String,
    pub(crate) kind: ProviderKind,
    pub(crate) paths: SourcePaths,
    /// Any of them verifies a request (rotation). Empty only for an `insecure` generic source.
    pub(crate) secrets: Vec<SecretValue>,
    /// Events accepted at all; others are answered 200 and run nothing. `None` accepts all.
    pub(crate) events: Option<Vec<String>>,
    pub(crate) max_body: Option<u64>,
    pub(crate) rate: Option<Rate>,
    /// Clock skew accepted for timestamped signatures.
    pub(crate) tolerance: Duration,
    pub(crate) hmac: Option<HmacOptions>,
    pub(crate) token: Option<TokenLocation>,
    /// Indices of the rules listening to this source, in declaration order.
    pub(crate) rules: Vec<usize>,
    /// Narrows `rules` to the candidates for one event.
    pub(crate) index: crate::ruleset::SourceIndex,
    /// Every payload path its rules read, when all are simple key paths (see `index::paths_read`).
    pub(crate) reads: Option<Vec<Vec<crate::ruleset::Step>>>,
}

impl Source {
    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn kind(&self) -> ProviderKind {
        self.kind
    }

    /// The payload paths its rules read, when all are simple (see `index::paths_read`).
    pub fn reads(&self) -> Option<&[Vec<crate::ruleset::Step>]> {
        self.reads.as_deref()
    }

    /// Whether the source's `events` list lets an event with this name through (all do without one;
    /// none without a name does with one).
    pub fn accepts_event(&self, name: Option<&str>) -> bool {
        self.events
            .as_ref()
            .is_none_or(|accepted| name.is_some_and(|n| accepted.iter().any(|e| e == n)))
    }

    /// The names of the secrets that verify it.
    pub fn secret_names(&self) -> impl Iterator<Item = &str> {
        self.secrets.iter().map(SecretValue::name)
    }

    pub fn max_body(&self) -> Option<u64> {
        self.max_body
    }

    pub fn paths(&self) -> &SourcePaths {
        &self.paths
    }

    pub(crate) fn fmt_with(&self, f: &mut fmt::Formatter<'_>, set: &RuleSet) -> fmt::Result {
        writeln!(f, "source {}: {}", self.name, self.kind)?;
        match &self.paths {
            SourcePaths::Fixed(path) => writeln!(f, "  path {path:?}")?,
            SourcePaths::Token(paths) => {
                writeln!(f, "  path derived from the secret ({} paths)", paths.len())?
            }
            SourcePaths::TokenUnknown => writeln!(f, "  path derived from the secret")?,
        }
        if self.secrets.is_empty() {
            writeln!(f, "  insecure")?;
        } else {
            let names: Vec<&str> = self.secrets.iter().map(|s| s.name()).collect();
            writeln!(f, "  secret {}", names.join(", "))?;
        }
        if let Some(events) = &self.events {
            let events: Vec<String> = events.iter().map(|e| format!("{e:?}")).collect();
            writeln!(f, "  events {}", events.join(", "))?;
        }
        if let Some(max) = self.max_body {
            writeln!(f, "  max_body {max} bytes")?;
        }
        if let Some(rate) = &self.rate {
            writeln!(f, "  {rate}")?;
        }
        if self.kind.timestamped() {
            writeln!(f, "  tolerance {}", ShowDuration(self.tolerance))?;
        }
        if let Some(h) = &self.hmac {
            let alg = h.algorithm.map_or("from prefix", HmacAlgorithm::name);
            let enc = if h.base64 { "base64" } else { "hex" };
            writeln!(
                f,
                "  signature header {:?} algorithm {alg} encoding {enc} prefix {:?}",
                h.header, h.prefix
            )?;
        }
        match &self.token {
            Some(TokenLocation::Header(h)) => writeln!(f, "  token header {h:?}")?,
            Some(TokenLocation::Query(q)) => writeln!(f, "  token query {q:?}")?,
            Some(TokenLocation::Url) | None => {}
        }
        let rules: Vec<String> = self
            .rules
            .iter()
            .map(|&i| format!("{:?}", set.rules[i].name))
            .collect();
        writeln!(f, "  rules [{}]", rules.join(", "))
    }
}
