//! Is this request from the sender it claims to be? Each provider's scheme, exactly as
//! `docs/providers.md` describes it, over the raw request bytes, before any parsing.
//!
//! Every comparison is constant-time (`Mac::verify_slice` for HMACs, digests compared with `subtle` for
//! tokens). Any of a source's secrets verifies, so secrets rotate without downtime. URL-token kinds
//! (Docker Hub, Quay, `generic` without `token`) are verified by routing: their path is derived from the
//! secret, so a request that reached the source carried the secret in its URL.

use base64::Engine;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::providers::{Headers, ProviderKind};
use crate::ruleset::{HmacAlgorithm, HmacOptions, SecretValue, Source, TokenLocation};
use crate::signature;

/// Headers whose values are signatures (HMACs of the body). Not secrets, but never logged or recorded.
pub const SIGNATURE_HEADERS: &[&str] = &[
    "x-hub-signature",
    "x-hub-signature-256",
    "x-gitea-signature",
    "x-gogs-signature",
    "x-forgejo-signature",
    "x-slack-signature",
    "webhook-signature",
    "x-signature",
];

/// Headers signed together with the body: a re-signed forward replaces them with its own.
pub const SIGNATURE_CONTEXT_HEADERS: &[&str] = &[
    "x-slack-request-timestamp",
    "webhook-id",
    "webhook-timestamp",
];

/// Headers whose values are the secret itself (or a session): never stored, logged or forwarded.
pub const TOKEN_HEADERS: &[&str] = &[
    "authorization",
    "x-gitlab-token",
    "cookie",
    "proxy-authorization",
];

/// Removes every credential of `source`'s requests from `headers` and `query`: the well-known signature
/// and token headers, and the header or query parameter its own scheme reads (`generic_hmac`'s header,
/// `generic`'s token). What is left is safe to store in the delivery log.
pub fn strip_credentials(source: &Source, headers: &mut Headers, query: &mut Headers) {
    let (signature, token) = (own_signature_header(source), own_token_header(source));
    headers.retain(|n, _| {
        !(SIGNATURE_HEADERS.contains(&n)
            || TOKEN_HEADERS.contains(&n)
            || signature == Some(n)
            || token == Some(n))
    });
    if let Some(TokenLocation::Query(q)) = &source.token {
        query.retain(|n, _| n != q);
    }
}

/// The header (lowercase) that carries the signature of a `generic_hmac` source, which the well-known
/// signature headers may not name.
pub fn own_signature_header(source: &Source) -> Option<&str> {
    source.hmac.as_ref().map(|o| o.header.as_str())
}

/// The header (lowercase) that carries a `generic` source's token, when it is in a header.
pub fn own_token_header(source: &Source) -> Option<&str> {
    match &source.token {
        Some(TokenLocation::Header(h)) => Some(h),
        _ => None,
    }
}

/// Why a request failed verification. Logged and counted; never sent back in detail.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Failure {
    /// The signature or token header is absent or empty.
    Missing,
    /// Present but not in the scheme's format (prefix, encoding, algorithm).
    Malformed,
    /// Well-formed, but no secret produces it.
    Mismatch,
    /// The signed timestamp is outside the source's tolerance.
    Stale,
}

impl Failure {
    /// Why the request was refused, in words, for logs and the delivery log.
    pub fn reason(self) -> &'static str {
        match self {
            Failure::Missing => "verification failed: signature or token missing",
            Failure::Malformed => "verification failed: signature or token malformed",
            Failure::Mismatch => "verification failed: signature or token does not match",
            Failure::Stale => "verification failed: timestamp outside the tolerance",
        }
    }

    /// A label for metrics and logs.
    pub fn as_str(self) -> &'static str {
        match self {
            Failure::Missing => "missing",
            Failure::Malformed => "malformed",
            Failure::Mismatch => "mismatch",
            Failure::Stale => "stale",
        }
    }
}

/// What verification needs of the request.
pub struct Request<'a> {
    /// `(lowercase name, value)`.
    pub headers: &'a Headers,
    pub query: &'a Headers,
    pub body: &'a [u8],
    /// Unix seconds, for timestamped schemes.
    pub now: i64,
    /// Check only what needs no body: that the signature or token is there, well formed and fresh, and
    /// that a plain token is right. The server asks this before it reads the body; `body` is then empty.
    pub headers_only: bool,
}

impl Request<'_> {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name)
    }
}

/// Verifies a request for `source`.
pub fn verify(source: &Source, req: &Request<'_>) -> Result<(), Failure> {
    let secrets = &source.secrets;
    match source.kind {
        _ if secrets.is_empty() => Ok(()), // An `insecure` generic source.
        ProviderKind::GitHub => github(secrets, req),
        ProviderKind::GitLab => gitlab(secrets, req, source.tolerance.as_secs() as i64),
        ProviderKind::Bitbucket | ProviderKind::BitbucketServer => prefixed_hex(
            req.headers_only,
            secrets,
            req.header("x-hub-signature"),
            "sha256=",
            HmacAlgorithm::Sha256,
            &[req.body],
        ),
        ProviderKind::Gitea | ProviderKind::Forgejo => gitea(secrets, req),
        ProviderKind::DockerHub | ProviderKind::Quay => Ok(()),
        ProviderKind::Harbor => token(secrets, req.header("authorization")),
        ProviderKind::Slack => slack(secrets, req, source.tolerance.as_secs() as i64),
        ProviderKind::StandardWebhooks => {
            standard_webhooks(secrets, req, source.tolerance.as_secs() as i64)
        }
        ProviderKind::GenericHmac => match &source.hmac {
            Some(options) => generic_hmac(secrets, req, options),
            None => unreachable!("compile gives every generic_hmac source its options"),
        },
        ProviderKind::Generic => match &source.token {
            Some(TokenLocation::Header(h)) => token(secrets, req.header(h)),
            Some(TokenLocation::Query(q)) => token(secrets, req.query.get(q)),
            Some(TokenLocation::Url) | None => Ok(()),
        },
    }
}

/// GitHub: `X-Hub-Signature-256: sha256=<hex>`, or the legacy `X-Hub-Signature: sha1=<hex>`.
fn github(secrets: &[SecretValue], req: &Request<'_>) -> Result<(), Failure> {
    match (
        req.header("x-hub-signature-256"),
        req.header("x-hub-signature"),
    ) {
        (Some(v), _) => prefixed_hex(
            req.headers_only,
            secrets,
            Some(v),
            "sha256=",
            HmacAlgorithm::Sha256,
            &[req.body],
        ),
        (None, Some(v)) => prefixed_hex(
            req.headers_only,
            secrets,
            Some(v),
            "sha1=",
            HmacAlgorithm::Sha1,
            &[req.body],
        ),
        (None, None) => Err(Failure::Missing),
    }
}

/// GitLab: a `whsec_` signing token verifies the Standard-Webhooks-style signature; any other secret is
/// the `X-Gitlab-Token`.
fn gitlab(secrets: &[SecretValue], req: &Request<'_>, tolerance: i64) -> Result<(), Failure> {
    let (signing, tokens): (Vec<SecretValue>, Vec<SecretValue>) = secrets
        .iter()
        .cloned()
        .partition(|s| s.expose().starts_with(b"whsec_"));
    let mut result = Err(Failure::Missing);
    if !signing.is_empty() && req.header("webhook-signature").is_some() {
        result = standard_webhooks(&signing, req, tolerance);
        if result.is_ok() {
            return result;
        }
    }
    if !tokens.is_empty() && req.header("x-gitlab-token").is_some() {
        result = token(&tokens, req.header("x-gitlab-token"));
    }
    result
}

/// Gitea and Forgejo: bare hex HMAC-SHA256 of the JSON. For form deliveries the JSON is the decoded
/// `payload` field, not the body.
fn gitea(secrets: &[SecretValue], req: &Request<'_>) -> Result<(), Failure> {
    let header = [
        "x-gitea-signature",
        "x-forgejo-signature",
        "x-gogs-signature",
    ]
    .iter()
    .find_map(|h| req.header(h));
    let field = form_payload(req);
    let json: &[u8] = field.as_deref().unwrap_or(req.body);
    match header {
        Some(v) => prefixed_hex(
            req.headers_only,
            secrets,
            Some(v),
            "",
            HmacAlgorithm::Sha256,
            &[json],
        ),
        None => Err(Failure::Missing),
    }
}

/// The `payload` field of a form-encoded body, if the request is a form.
pub fn form_payload(req: &Request<'_>) -> Option<Vec<u8>> {
    if is_form(req.headers) {
        payload_field(req.body)
    } else {
        None
    }
}

/// Whether the request is `application/x-www-form-urlencoded` (the media type is case-insensitive).
pub fn is_form(headers: &Headers) -> bool {
    const FORM: &str = "application/x-www-form-urlencoded";
    headers.iter().any(|(n, v)| {
        n == "content-type"
            && v.get(..FORM.len())
                .is_some_and(|t| t.eq_ignore_ascii_case(FORM))
    })
}

/// The `payload` field of a form body, percent-decoded to its exact bytes (not repaired into UTF-8: a
/// field that is not UTF-8 is not JSON, and must fail as such).
pub fn payload_field(body: &[u8]) -> Option<Vec<u8>> {
    body.split(|&b| b == b'&').find_map(|pair| {
        let (name, value) = match pair.iter().position(|&b| b == b'=') {
            Some(i) => (&pair[..i], &pair[i + 1..]),
            None => (pair, &[][..]),
        };
        (form_decode(name) == b"payload").then(|| form_decode(value))
    })
}

/// `application/x-www-form-urlencoded` decoding of one name or value: `+` is a space, then `%XX`.
fn form_decode(text: &[u8]) -> Vec<u8> {
    let spaced: Vec<u8> = text
        .iter()
        .map(|&b| if b == b'+' { b' ' } else { b })
        .collect();
    percent_encoding::percent_decode(&spaced).collect()
}

/// Slack: `X-Slack-Signature: v0=<hex>` of `v0:{timestamp}:{body}`, timestamp within tolerance.
fn slack(secrets: &[SecretValue], req: &Request<'_>, tolerance: i64) -> Result<(), Failure> {
    let (Some(timestamp), Some(sig)) = (
        req.header("x-slack-request-timestamp"),
        req.header("x-slack-signature"),
    ) else {
        return Err(Failure::Missing);
    };
    fresh(timestamp, req.now, tolerance)?;
    let prefix = format!("v0:{timestamp}:");
    prefixed_hex(
        req.headers_only,
        secrets,
        Some(sig),
        "v0=",
        HmacAlgorithm::Sha256,
        &[prefix.as_bytes(), req.body],
    )
}

/// The most `v1,` signatures a Standard Webhooks request may list. A sender lists one per secret it
/// signs with, more than one only while it rotates them; any number more is no sender's.
pub const MAX_SIGNATURES: usize = 8;

/// Standard Webhooks: `webhook-signature: v1,<base64> [v1,<base64> ...]` of `{id}.{timestamp}.{body}`.
/// The body's MAC is worked out once per secret and compared with each listed signature: a MAC per
/// listed signature let one unsigned request listing thousands of them hold a core for minutes.
fn standard_webhooks(
    secrets: &[SecretValue],
    req: &Request<'_>,
    tolerance: i64,
) -> Result<(), Failure> {
    let (Some(id), Some(timestamp), Some(sigs)) = (
        req.header("webhook-id"),
        req.header("webhook-timestamp"),
        req.header("webhook-signature"),
    ) else {
        return Err(Failure::Missing);
    };
    fresh(timestamp, req.now, tolerance)?;
    let mut listed = 0;
    let mut candidates = Vec::new();
    for b64 in sigs.split(' ').filter_map(|s| s.strip_prefix("v1,")) {
        listed += 1;
        if listed > MAX_SIGNATURES {
            return Err(Failure::Malformed);
        }
        if let Ok(mac) = SentMac::base64(b64) {
            candidates.push(mac);
        }
    }
    if candidates.is_empty() {
        return Err(Failure::Malformed);
    }
    if req.headers_only {
        return Ok(());
    }
    let parts: [&[u8]; 5] = [id.as_bytes(), b".", timestamp.as_bytes(), b".", req.body];
    // Every secret and every listed signature is tried, so timing does not tell which one matched.
    let matched = secrets.iter().fold(subtle::Choice::from(0), |ok, s| {
        let key = signature::standard_webhooks_key(s.expose());
        let mac = signature::hmac(HmacAlgorithm::Sha256, &key, &parts);
        candidates
            .iter()
            .fold(ok, |ok, c| ok | mac.as_slice().ct_eq(c.as_bytes()))
    });
    if bool::from(matched) {
        Ok(())
    } else {
        Err(Failure::Mismatch)
    }
}

/// Generic HMAC: by default Flux's `<alg>=<hex>` in `X-Signature`, the sender naming the algorithm;
/// or a fixed algorithm, prefix and encoding.
fn generic_hmac(
    secrets: &[SecretValue],
    req: &Request<'_>,
    o: &HmacOptions,
) -> Result<(), Failure> {
    let value = req.header(&o.header).ok_or(Failure::Missing)?;
    let (alg, digest) = match o.algorithm {
        Some(alg) => (
            alg,
            value
                .strip_prefix(o.prefix.as_str())
                .ok_or(Failure::Malformed)?,
        ),
        None => {
            let (name, digest) = value.split_once('=').ok_or(Failure::Malformed)?;
            let alg = match name {
                "sha1" => HmacAlgorithm::Sha1,
                "sha256" => HmacAlgorithm::Sha256,
                "sha512" => HmacAlgorithm::Sha512,
                _ => return Err(Failure::Malformed),
            };
            (alg, digest)
        }
    };
    let mac = if o.base64 {
        SentMac::base64(digest)?
    } else {
        SentMac::hex(digest)?
    };
    check(req.headers_only, secrets, alg, &[req.body], mac.as_bytes())
}

/// `<prefix><lowercase hex>`: the prefix must be exactly as the scheme says.
fn prefixed_hex(
    headers_only: bool,
    secrets: &[SecretValue],
    value: Option<&str>,
    prefix: &str,
    alg: HmacAlgorithm,
    parts: &[&[u8]],
) -> Result<(), Failure> {
    let value = value.ok_or(Failure::Missing)?;
    let digest = value.strip_prefix(prefix).ok_or(Failure::Malformed)?;
    let mac = SentMac::hex(digest)?;
    check(headers_only, secrets, alg, parts, mac.as_bytes())
}

/// A MAC as a request sends it, decoded into a buffer of its own rather than a fresh allocation
/// for every request. No scheme's MAC is longer than SHA-512's 64 bytes: a longer one is malformed.
struct SentMac {
    /// Room for 64 bytes and for the length estimate base64's `decode_slice` documents that it needs
    /// (66 bytes for the 88 characters of 64).
    bytes: [u8; 72],
    len: usize,
}

impl SentMac {
    const MAX: usize = 64;

    fn hex(text: &str) -> Result<SentMac, Failure> {
        let len = text.len() / 2;
        if len > Self::MAX {
            return Err(Failure::Malformed);
        }
        let mut mac = SentMac {
            bytes: [0; 72],
            len,
        };
        // Odd lengths and non-hex characters are errors.
        hex::decode_to_slice(text, &mut mac.bytes[..len]).map_err(|_| Failure::Malformed)?;
        Ok(mac)
    }

    fn base64(text: &str) -> Result<SentMac, Failure> {
        let mut bytes = [0; 72];
        let len = base64::engine::general_purpose::STANDARD
            .decode_slice(text, &mut bytes)
            .map_err(|_| Failure::Malformed)?;
        if len > Self::MAX {
            return Err(Failure::Malformed);
        }
        Ok(SentMac { bytes, len })
    }

    fn as_bytes(&self) -> &[u8] {
        &self.bytes[..self.len]
    }
}

fn check(
    headers_only: bool,
    secrets: &[SecretValue],
    alg: HmacAlgorithm,
    parts: &[&[u8]],
    mac: &[u8],
) -> Result<(), Failure> {
    if headers_only {
        return Ok(());
    }
    // Every secret is tried, matched or not, so timing does not tell which one matched.
    let matched = secrets.iter().fold(false, |ok, s| {
        signature::verify(alg, s.expose(), parts, mac) | ok
    });
    if matched {
        Ok(())
    } else {
        Err(Failure::Mismatch)
    }
}

/// A plain token: equal to one of the secrets. Both sides are hashed first, so the comparison is
/// constant-time and independent of their lengths.
fn token(secrets: &[SecretValue], value: Option<&str>) -> Result<(), Failure> {
    let value = value.ok_or(Failure::Missing)?;
    let given = Sha256::digest(value.as_bytes());
    let matched = secrets.iter().fold(subtle::Choice::from(0), |ok, s| {
        ok | Sha256::digest(s.expose()).ct_eq(&given)
    });
    if bool::from(matched) {
        Ok(())
    } else {
        Err(Failure::Mismatch)
    }
}

/// Whether `given` is `token`, in constant time (both are hashed first, so lengths do not show).
pub fn token_matches(token: &[u8], given: &str) -> bool {
    bool::from(Sha256::digest(token).ct_eq(&Sha256::digest(given.as_bytes())))
}

/// A Unix-seconds timestamp within `tolerance` of `now`, in both directions.
fn fresh(timestamp: &str, now: i64, tolerance: i64) -> Result<(), Failure> {
    let ts: i64 = timestamp.trim().parse().map_err(|_| Failure::Malformed)?;
    // `abs_diff`, not `(now - ts).abs()`: a timestamp such as `-9223372036854775808` must not overflow.
    if now.abs_diff(ts) > tolerance.unsigned_abs() {
        Err(Failure::Stale)
    } else {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::compile::FixedSecrets;

    /// Verifies with the first source of `decl` (a source block) and the given secrets.
    fn run(
        decl: &str,
        secrets: &'static [(&'static str, &'static str)],
        headers: &[(&str, &str)],
        body: &[u8],
        now: i64,
    ) -> Result<(), Failure> {
        let names: String = secrets
            .iter()
            .map(|(n, _)| format!("secret {n} = env(\"X\")\n"))
            .collect();
        let text = format!(
            "{names}{decl}\ntarget t {{ post \"http://127.0.0.1:9/\" }}\nrule \"r\" {{ from * notify t }}\n"
        );
        let loaded =
            crate::load::load_text("v.hook", None, text.as_bytes(), &FixedSecrets(secrets));
        let rules = loaded
            .result
            .unwrap_or_else(|d| panic!("{}", d.render(&loaded.files, false)))
            .rules;
        let headers: Headers = headers
            .iter()
            .map(|(n, v)| (n.to_ascii_lowercase(), v))
            .collect();
        verify(
            &rules.sources[0],
            &Request {
                headers: &headers,
                query: &Headers::default(),
                body,
                now,
                headers_only: false,
            },
        )
    }

    const GH: &str = "sha256=757107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e17";

    #[test]
    fn github_signatures() {
        let s: &[_] = &[("a", "It's a Secret to Everybody")];
        let src = "source s: github { secret a }";
        assert_eq!(
            run(src, s, &[("X-Hub-Signature-256", GH)], b"Hello, World!", 0),
            Ok(())
        );
        assert_eq!(
            run(src, s, &[("X-Hub-Signature-256", GH)], b"Hello, World?", 0),
            Err(Failure::Mismatch)
        );
        assert_eq!(
            run(
                src,
                s,
                &[("X-Hub-Signature-256", &GH.replace("sha256=", "sha1="))],
                b"Hello, World!",
                0
            ),
            Err(Failure::Malformed)
        );
        assert_eq!(
            run(
                src,
                s,
                &[("X-Hub-Signature-256", &GH[7..])],
                b"Hello, World!",
                0
            ),
            Err(Failure::Malformed),
            "no prefix"
        );
        assert_eq!(
            run(src, s, &[("X-Hub-Signature-256", "")], b"Hello, World!", 0),
            Err(Failure::Missing)
        );
        assert_eq!(run(src, s, &[], b"Hello, World!", 0), Err(Failure::Missing));
        let sha1 = format!(
            "sha1={}",
            hex::encode(signature::hmac(
                HmacAlgorithm::Sha1,
                b"It's a Secret to Everybody",
                &[b"x"]
            ))
        );
        assert_eq!(
            run(src, s, &[("X-Hub-Signature", &sha1)], b"x", 0),
            Ok(()),
            "legacy SHA-1"
        );
        // Rotation: either secret verifies.
        let two: &[_] = &[("old", "nope"), ("new", "It's a Secret to Everybody")];
        assert_eq!(
            run(
                "source s: github { secret old, new }",
                two,
                &[("X-Hub-Signature-256", GH)],
                b"Hello, World!",
                0
            ),
            Ok(())
        );
    }

    #[test]
    fn tokens_slack_and_standard_webhooks() {
        let s: &[_] = &[("a", "t0ken")];
        assert_eq!(
            run(
                "source s: gitlab { secret a }",
                s,
                &[("X-Gitlab-Token", "t0ken")],
                b"{}",
                0
            ),
            Ok(())
        );
        assert_eq!(
            run(
                "source s: gitlab { secret a }",
                s,
                &[("X-Gitlab-Token", "t0ken ")],
                b"{}",
                0
            ),
            Err(Failure::Mismatch)
        );
        assert_eq!(
            run(
                "source s: harbor { secret a }",
                s,
                &[("Authorization", "t0ken")],
                b"{}",
                0
            ),
            Ok(())
        );
        assert_eq!(
            run(
                "source s: generic { secret a token header \"X-T\" }",
                s,
                &[("x-t", "t0ken")],
                b"",
                0
            ),
            Ok(())
        );

        let slack: &[_] = &[("a", "8f742231b10e8888abcd99yyyzzz85a5")];
        let body = b"token=x";
        let sig = format!(
            "v0={}",
            hex::encode(signature::hmac(
                HmacAlgorithm::Sha256,
                b"8f742231b10e8888abcd99yyyzzz85a5",
                &[b"v0:1531420618:", body]
            ))
        );
        let h = [
            ("X-Slack-Request-Timestamp", "1531420618"),
            ("X-Slack-Signature", sig.as_str()),
        ];
        assert_eq!(
            run(
                "source s: slack { secret a }",
                slack,
                &h,
                body,
                1531420618 + 299
            ),
            Ok(())
        );
        assert_eq!(
            run(
                "source s: slack { secret a }",
                slack,
                &h,
                body,
                1531420618 + 301
            ),
            Err(Failure::Stale)
        );
        assert_eq!(
            run(
                "source s: slack { secret a }",
                slack,
                &h,
                body,
                1531420618 - 301
            ),
            Err(Failure::Stale),
            "future too"
        );

        let sw: &[_] = &[("a", "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw")];
        let h = [
            ("webhook-id", "msg_p5jXN8AQM9LWM0D4loKWxJek"),
            ("webhook-timestamp", "1614265330"),
            (
                "webhook-signature",
                "v1,bm9wZQ== v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=",
            ),
        ];
        let body = br#"{"test": 2432232314}"#;
        assert_eq!(
            run(
                "source s: standard_webhooks { secret a }",
                sw,
                &h,
                body,
                1614265330
            ),
            Ok(()),
            "any listed v1 matches"
        );
        assert_eq!(
            run("source s: gitlab { secret a }", sw, &h, body, 1614265330),
            Ok(()),
            "a gitlab signing token"
        );
        // The right signature listed last among MAX_SIGNATURES, and one signature more.
        let good = "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=";
        let listed = |n: usize| {
            let mut sigs = vec!["v1,"; n - 1];
            sigs.push(good);
            sigs.join(" ")
        };
        let with = |sigs: &str| {
            let mut h = h;
            h[2].1 = sigs;
            run(
                "source s: standard_webhooks { secret a }",
                sw,
                &h,
                body,
                1614265330,
            )
        };
        assert_eq!(with(&listed(MAX_SIGNATURES)), Ok(()));
        assert_eq!(with(&listed(MAX_SIGNATURES + 1)), Err(Failure::Malformed));
        assert_eq!(
            with(&listed(10_000)),
            Err(Failure::Malformed),
            "refused before any MAC is worked out"
        );
        assert_eq!(
            run(
                "source s: standard_webhooks { secret a }",
                sw,
                &h,
                body,
                1614265330 + 3600
            ),
            Err(Failure::Stale)
        );
    }

    #[test]
    fn generic_hmac_and_gitea_forms() {
        let s: &[_] = &[("a", "k")];
        let mac = |alg, data: &[u8]| hex::encode(signature::hmac(alg, b"k", &[data]));
        let src = "source s: generic_hmac { secret a }";
        assert_eq!(
            run(
                src,
                s,
                &[(
                    "X-Signature",
                    &format!("sha512={}", mac(HmacAlgorithm::Sha512, b"b"))
                )],
                b"b",
                0
            ),
            Ok(())
        );
        assert_eq!(
            run(
                src,
                s,
                &[(
                    "X-Signature",
                    &format!("md5={}", mac(HmacAlgorithm::Sha256, b"b"))
                )],
                b"b",
                0
            ),
            Err(Failure::Malformed)
        );
        let fixed = "source s: generic_hmac { secret a header \"X-Sig\" algorithm sha256 encoding base64 prefix \"\" }";
        let b64 = signature::base64(&signature::hmac(HmacAlgorithm::Sha256, b"k", &[b"b"]));
        assert_eq!(run(fixed, s, &[("X-Sig", &b64)], b"b", 0), Ok(()));
        // SHA-512's 64 bytes are the longest MAC (88 base64 characters, 128 hex digits); one byte
        // more, or an odd hex digit, is malformed, not a mismatch.
        let fixed512 = "source s: generic_hmac { secret a header \"x-sig\" algorithm sha512 encoding base64 prefix \"\" }";
        let mac512 = signature::hmac(HmacAlgorithm::Sha512, b"k", &[b"b"]);
        let b64 = signature::base64(&mac512);
        assert_eq!(b64.len(), 88);
        assert_eq!(run(fixed512, s, &[("X-Sig", &b64)], b"b", 0), Ok(()));
        let mut longer = mac512.clone();
        longer.push(0);
        let b64 = signature::base64(&longer);
        assert_eq!(
            run(fixed512, s, &[("X-Sig", &b64)], b"b", 0),
            Err(Failure::Malformed)
        );
        let hex512 = hex::encode(&longer);
        assert_eq!(
            run(
                src,
                s,
                &[("X-Signature", &format!("sha512={hex512}"))],
                b"b",
                0
            ),
            Err(Failure::Malformed)
        );
        let odd = &mac(HmacAlgorithm::Sha256, b"b")[1..];
        assert_eq!(
            run(
                src,
                s,
                &[("X-Signature", &format!("sha256={odd}"))],
                b"b",
                0
            ),
            Err(Failure::Malformed)
        );
        let wrong = mac(HmacAlgorithm::Sha256, b"c");
        assert_eq!(
            run(
                src,
                s,
                &[("X-Signature", &format!("sha256={wrong}"))],
                b"b",
                0
            ),
            Err(Failure::Mismatch)
        );

        // A Gitea form delivery signs the JSON in the `payload` field, not the form body.
        let json = br#"{"ref":"refs/heads/main"}"#;
        let form = format!(
            "payload={}",
            form_urlencoded::byte_serialize(json).collect::<String>()
        );
        let h = [
            ("Content-Type", "application/x-www-form-urlencoded"),
            ("X-Gitea-Signature", &mac(HmacAlgorithm::Sha256, json)),
        ];
        assert_eq!(
            run("source s: gitea { secret a }", s, &h, form.as_bytes(), 0),
            Ok(())
        );
        let h = [("X-Gitea-Signature", "")];
        assert_eq!(
            run("source s: gitea { secret a }", s, &h, json, 0),
            Err(Failure::Missing),
            "empty means missing"
        );
    }
}
