//! One delivery attempt over HTTP: the request a job and its target describe, and what came back.

use std::time::Duration;

use sha2::{Digest, Sha256};

use crate::queue::{Job, JobKind};
use crate::ruleset::{
    COALESCED_HEADER, DELIVERY_HEADER, HmacAlgorithm, IDEMPOTENCY_HEADER, Method, Operand, RuleSet,
    SignatureStyle, StrTemplate, Target,
};
use crate::signature;

/// What a target answered.
#[derive(Debug)]
pub(super) struct Response {
    pub(super) status: u16,
    /// From `Retry-After` (seconds or an HTTP date).
    pub(super) retry_after: Option<Duration>,
}

/// Sends `job` to `target`. Errors are short, lowercase, and never contain the URL (which may carry a
/// token) or a response body.
pub(super) async fn send(
    client: &reqwest::Client,
    target: &Target,
    job: &Job,
    rules: &RuleSet,
) -> Result<Response, String> {
    let method = match target.method {
        Method::Get => reqwest::Method::GET,
        Method::Post => reqwest::Method::POST,
        Method::Put => reqwest::Method::PUT,
        Method::Patch => reqwest::Method::PATCH,
        Method::Delete => reqwest::Method::DELETE,
    };
    let request = match target.fixed_url() {
        Some(url) => client.request(method, url.clone()),
        None => client.request(method, render_url(&target.url, job)),
    };
    let headers = headers(target, job, rules)?;
    let request = request
        .timeout(target.timeout)
        .headers(headers)
        .body(job.body.clone());
    match request.send().await {
        Ok(response) => {
            let retry_after = response
                .headers()
                .get(reqwest::header::RETRY_AFTER)
                .and_then(|v| parse_retry_after(v.to_str().ok()?));
            Ok(Response {
                status: response.status().as_u16(),
                retry_after,
            })
        }
        Err(e) => Err(describe(&e, target.timeout)),
    }
}

/// The headers of an attempt, each name with the values of one party only, later ones replacing
/// earlier: the job's own (a forward's are the sender's, filtered), then the target's, then the
/// gateway's (`X-Hookgate-Delivery`, `Idempotency-Key` or `X-Hookgate-Coalesced`, a re-signed
/// forward's signature). A sender's `X-Api-Key` or signature header can neither stand beside the
/// target's nor come first, where most receivers read a header's value.
fn headers(
    target: &Target,
    job: &Job,
    rules: &RuleSet,
) -> Result<reqwest::header::HeaderMap, String> {
    use reqwest::header::{HeaderMap, HeaderName, HeaderValue};
    let name = |n: &str| {
        HeaderName::from_bytes(n.as_bytes()).map_err(|_| format!("invalid header name `{n}`"))
    };
    // The value is not shown: a target's header may hold a secret.
    let value = |n: &str, v: &str| {
        HeaderValue::from_str(v).map_err(|_| format!("header `{n}` has an invalid value"))
    };
    let mut map = HeaderMap::new();
    for (n, v) in &job.headers {
        map.append(name(n)?, value(n, v)?);
    }
    for (n, _) in &target.headers {
        map.remove(name(n)?);
    }
    for (n, v) in &target.headers {
        map.append(name(n)?, value(n, &render(v, job))?);
    }
    let mut ours = vec![(DELIVERY_HEADER.to_string(), job.delivery.clone())];
    match job.kind {
        JobKind::Notify => ours.push((IDEMPOTENCY_HEADER.into(), idempotency_key(job))),
        JobKind::Check => ours.push((COALESCED_HEADER.into(), job.coalesced.to_string())),
        JobKind::Forward => {
            if let Some(secret) = &job.sign_with {
                let secret = rules
                    .secret(secret)
                    .ok_or_else(|| format!("secret `{secret}` is not in the current rules"))?;
                ours.extend(sign(&target.signature, secret.expose(), job));
            }
        }
    }
    for (n, v) in &ours {
        map.insert(name(n)?, value(n, v)?);
    }
    Ok(map)
}

/// `Idempotency-Key` of a notify: the same for every attempt of the same delivery, rule and action, so
/// downstreams can deduplicate retries and redeliveries.
pub(super) fn idempotency_key(job: &Job) -> String {
    let mut h = Sha256::new();
    for part in [
        job.source.as_bytes(),
        job.delivery.as_bytes(),
        job.rule.as_bytes(),
        job.action.to_string().as_bytes(),
    ] {
        h.update(part);
        h.update([0]);
    }
    hex::encode(&h.finalize()[..16])
}

/// Signature headers for a forwarded body.
fn sign(style: &SignatureStyle, secret: &[u8], job: &Job) -> Vec<(String, String)> {
    let sha256 = |parts: &[&[u8]]| signature::hmac(HmacAlgorithm::Sha256, secret, parts);
    match style {
        SignatureStyle::GitHub => vec![(
            "x-hub-signature-256".into(),
            format!("sha256={}", hex::encode(sha256(&[&job.body]))),
        )],
        SignatureStyle::Bitbucket => vec![(
            "x-hub-signature".into(),
            format!("sha256={}", hex::encode(sha256(&[&job.body]))),
        )],
        SignatureStyle::Gitea => vec![(
            "x-gitea-signature".into(),
            hex::encode(sha256(&[&job.body])),
        )],
        SignatureStyle::GenericHmac { header } => {
            vec![(
                header.to_ascii_lowercase(),
                format!("sha256={}", hex::encode(sha256(&[&job.body]))),
            )]
        }
        SignatureStyle::StandardWebhooks => {
            let id = format!("msg_{}", &idempotency_key(job)[..24]);
            let timestamp = (crate::clock::now_ms() / 1000).to_string();
            let key = signature::standard_webhooks_key(secret);
            let mac = signature::hmac(
                HmacAlgorithm::Sha256,
                &key,
                &[id.as_bytes(), b".", timestamp.as_bytes(), b".", &job.body],
            );
            vec![
                ("webhook-id".into(), id),
                ("webhook-timestamp".into(), timestamp),
                (
                    "webhook-signature".into(),
                    format!("v1,{}", signature::base64(&mac)),
                ),
            ]
        }
    }
}

/// Renders a target's header: `compile` allows only secrets, `event`, `source` and `delivery`.
fn render(template: &StrTemplate, job: &Job) -> String {
    template
        .render_with(|operand| Some(operand_value(operand, job).into()))
        .unwrap_or_default()
}

/// Renders a target's URL, each job value percent-encoded as one component ([`COMPONENT`]): an event
/// name or a delivery id is the sender's text, and `/`, `?`, `&` or `#` in it must not move the
/// request to another path or add a query parameter. Secrets go in as written (the operator's own
/// text).
fn render_url(template: &StrTemplate, job: &Job) -> String {
    template
        .render_with(|operand| {
            Some(
                percent_encoding::utf8_percent_encode(operand_value(operand, job), COMPONENT)
                    .into(),
            )
        })
        .unwrap_or_default()
}

/// Everything but RFC 3986's unreserved characters, `:` and `@`: what a path segment and a query
/// value both take as they are (Bitbucket's `repo:push` stays as it was sent). The operand never sits
/// in the authority (`compile` refuses it there), where `:` and `@` would mean something.
const COMPONENT: &percent_encoding::AsciiSet = &percent_encoding::NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~')
    .remove(b':')
    .remove(b'@');

fn operand_value<'a>(operand: &Operand, job: &'a Job) -> &'a str {
    match operand {
        Operand::Event => job.event.as_deref().unwrap_or_default(),
        Operand::Source => &job.source,
        Operand::Delivery => &job.delivery,
        // INVARIANT: `compile` rejects other operands in target URLs and headers.
        _ => "",
    }
}

fn parse_retry_after(value: &str) -> Option<Duration> {
    if let Ok(seconds) = value.trim().parse::<u64>() {
        return Some(Duration::from_secs(seconds));
    }
    let at = httpdate::parse_http_date(value.trim()).ok()?;
    Some(
        at.duration_since(std::time::SystemTime::now())
            .unwrap_or(Duration::ZERO),
    )
}

/// A transport error in a few words, without the URL.
fn describe(e: &reqwest::Error, timeout: Duration) -> String {
    if e.is_timeout() {
        return format!("timed out after {}", crate::ruleset::ShowDuration(timeout));
    }
    let mut cause: &dyn std::error::Error = e;
    while let Some(next) = cause.source() {
        cause = next;
    }
    let detail = cause.to_string().to_lowercase();
    if e.is_connect() {
        format!("cannot connect: {detail}")
    } else {
        format!("request failed: {detail}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_after_takes_seconds_and_dates() {
        assert_eq!(parse_retry_after("120"), Some(Duration::from_secs(120)));
        assert_eq!(
            parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT"),
            Some(Duration::ZERO),
            "a past date: now"
        );
        let future =
            httpdate::fmt_http_date(std::time::SystemTime::now() + Duration::from_secs(90));
        let parsed = parse_retry_after(&future).unwrap();
        assert!(
            parsed > Duration::from_secs(80) && parsed <= Duration::from_secs(90),
            "{parsed:?}"
        );
        assert_eq!(parse_retry_after("soon"), None);
    }
}
