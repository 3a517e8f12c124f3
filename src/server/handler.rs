//! One webhook request: verify, parse, evaluate, durably enqueue, answer.
//!
//! Takes the request's head and its complete body as bytes (the hyper glue in `server.rs` has already
//! routed it and enforced the body limit) and one rules snapshot for the whole request. Every rejection
//! maps to one status code, is logged with its reason, and is answered without detail.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{HeaderValue, Response, StatusCode};
use http_body_util::Full;
use serde_json::{Value, json};

use crate::dispatch::jobs_for;
use crate::eval::evaluate;
use crate::event::Event;
use crate::queue::{Accepted, QueueBackend};
use crate::ruleset::{Rate, RuleSet};
use crate::server::State;
use crate::verify;

/// What a webhook request turned into.
pub struct Incoming<'a> {
    /// Index into `rules.sources`.
    pub source: usize,
    /// `(lowercase name, value)`.
    pub headers: Vec<(String, String)>,
    pub query: Vec<(String, String)>,
    pub body: &'a [u8],
}

/// Why a request is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reject {
    NotFound,
    MethodNotAllowed,
    TooLarge,
    Unauthorized,
    NotJson,
    RateLimited,
    QueueUnavailable,
    Timeout,
}

impl Reject {
    pub fn status(self) -> StatusCode {
        match self {
            Reject::NotFound => StatusCode::NOT_FOUND,
            Reject::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            Reject::TooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            Reject::Unauthorized => StatusCode::UNAUTHORIZED,
            Reject::NotJson => StatusCode::BAD_REQUEST,
            Reject::RateLimited => StatusCode::TOO_MANY_REQUESTS,
            Reject::QueueUnavailable => StatusCode::SERVICE_UNAVAILABLE,
            Reject::Timeout => StatusCode::REQUEST_TIMEOUT,
        }
    }

    fn message(self) -> &'static str {
        match self {
            Reject::NotFound => "not found",
            Reject::MethodNotAllowed => "method not allowed",
            Reject::TooLarge => "body too large",
            Reject::Unauthorized => "unauthorized",
            Reject::NotJson => "body is not JSON",
            Reject::RateLimited => "rate limited",
            Reject::QueueUnavailable => "queue unavailable, retry later",
            Reject::Timeout => "request timed out",
        }
    }

    /// The response: a short JSON error, never echoing secrets, signatures or the request.
    pub fn response(self) -> Response<Full<Bytes>> {
        let mut r = json_response(self.status(), &json!({ "error": self.message() }));
        match self {
            Reject::MethodNotAllowed => {
                r.headers_mut()
                    .insert(http::header::ALLOW, HeaderValue::from_static("POST"));
            }
            Reject::RateLimited | Reject::QueueUnavailable => {
                r.headers_mut()
                    .insert(http::header::RETRY_AFTER, HeaderValue::from_static("1"));
            }
            _ => {}
        }
        r
    }
}

pub(crate) fn json_response(status: StatusCode, body: &Value) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from(body.to_string())));
    *r.status_mut() = status;
    r.headers_mut().insert(
        http::header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    r
}

/// Per-source token buckets for `rate N per D`.
#[derive(Default)]
pub struct SourceLimits {
    buckets: Mutex<HashMap<String, (Rate, f64, Instant)>>,
}

impl SourceLimits {
    /// Takes a token for `source`, or says no.
    fn allow(&self, source: &str, rate: Rate) -> bool {
        let mut buckets = self.buckets.lock().unwrap_or_else(|p| p.into_inner());
        let now = Instant::now();
        let entry = buckets
            .entry(source.to_string())
            .or_insert((rate, rate.count as f64, now));
        if entry.0 != rate {
            *entry = (rate, rate.count as f64, now);
        }
        let per_ms = rate.count as f64 / rate.per.as_millis().max(1) as f64;
        let refill = now.saturating_duration_since(entry.2).as_millis() as f64 * per_ms;
        entry.1 = (entry.1 + refill).min(rate.count as f64);
        entry.2 = now;
        if entry.1 >= 1.0 {
            entry.1 -= 1.0;
            true
        } else {
            false
        }
    }
}

/// Handles a routed webhook request with a complete body.
pub async fn handle(
    state: &State,
    rules: &Arc<RuleSet>,
    req: Incoming<'_>,
) -> Response<Full<Bytes>> {
    let started = Instant::now();
    let source = &rules.sources[req.source];
    let span = tracing::info_span!("request", source = %source.name, delivery = tracing::field::Empty, event = tracing::field::Empty);
    let _guard = span.enter();
    let response = match process(state, rules, req, &span).await {
        Ok(response) => response,
        Err(reject) => reject.response(),
    };
    crate::metrics::request(
        &source.name,
        response.status().as_u16(),
        started.elapsed().as_secs_f64(),
    );
    response
}

async fn process(
    state: &State,
    rules: &Arc<RuleSet>,
    req: Incoming<'_>,
    span: &tracing::Span,
) -> Result<Response<Full<Bytes>>, Reject> {
    let source = &rules.sources[req.source];
    if let Some(rate) = source.rate {
        if !state.limits.allow(&source.name, rate) {
            tracing::info!(reason = "rate limited", "request rejected");
            return Err(Reject::RateLimited);
        }
    }
    let now = crate::queue::now_ms() / 1000;
    let check = verify::Request {
        headers: &req.headers,
        query: &req.query,
        body: req.body,
        now,
    };
    if let Err(failure) = verify::verify(source, &check) {
        crate::metrics::verification_failure(&source.name, failure.as_str());
        tracing::info!(
            reason = failure.as_str(),
            "request rejected: verification failed"
        );
        return Err(Reject::Unauthorized);
    }
    // Fast path: when the event is known from the headers and the source's index alone decides which
    // rules could match, read just the indexed paths (and, if every rule reads only simple paths, those
    // too) in one validating pass. No candidate: answered without a parse tree. Candidates: evaluated on
    // a sparse payload holding exactly the paths the rules read, when that suffices.
    let mut prepared: Option<Value> = None;
    if !is_form(&req.headers) && crate::providers::event_from_headers(source.kind) {
        let (name, provided) =
            crate::providers::identify(source.kind, &req.headers, &req.query, &Value::Null);
        let filtered = !source.accepts_event(name.as_deref());
        let keys = if filtered {
            Some(Vec::new())
        } else {
            source.index.key_paths(name.as_deref())
        };
        if let Some(keys) = keys {
            let mut paths = keys.clone();
            for p in source.reads().unwrap_or_default() {
                if !paths.contains(&p.as_slice()) {
                    paths.push(p);
                }
            }
            let values = crate::extract::extract(req.body, &paths).map_err(|_| not_json())?;
            let lookup = |steps: &[crate::ruleset::Step]| {
                paths
                    .iter()
                    .position(|k| *k == steps)
                    .and_then(|i| values[i].as_ref())
            };
            if filtered
                || source
                    .index
                    .candidates_with(name.as_deref(), lookup)
                    .is_empty()
            {
                let delivery = provided.unwrap_or_else(|| format!("hg-{}", uuid::Uuid::new_v4()));
                span.record("delivery", delivery.as_str());
                return Ok(no_match(&delivery, filtered));
            }
            if source.reads().is_some() {
                prepared = Some(crate::extract::sparse(&paths, &values));
            }
        }
    }

    // Form deliveries (GitHub, Gitea) carry the JSON in the `payload` field; Slack slash commands and
    // interactivity are forms too.
    let payload: Value = match prepared {
        Some(sparse) => sparse,
        None => match verify::form_payload(&check) {
            Some(json) => serde_json::from_slice(&json).map_err(|_| not_json())?,
            None if is_form(&req.headers) => Value::Object(
                form_urlencoded::parse(req.body)
                    .map(|(k, v)| (k.into_owned(), Value::String(v.into_owned())))
                    .collect(),
            ),
            None => serde_json::from_slice(req.body).map_err(|_| not_json())?,
        },
    };

    // Slack verifies a Request URL by asking for its challenge back (after we checked the signature).
    if source.kind == crate::providers::ProviderKind::Slack
        && payload.get("type").and_then(Value::as_str) == Some("url_verification")
    {
        let challenge = payload.get("challenge").cloned().unwrap_or(Value::Null);
        tracing::info!("answered slack url_verification");
        return Ok(json_response(
            StatusCode::OK,
            &json!({ "challenge": challenge }),
        ));
    }

    let event = Event::new(rules, req.source, None, req.headers, req.query, payload);
    // A provider that sends no delivery id gets one, so actions can still be told apart.
    let provided = event.delivery.clone();
    let delivery = provided
        .clone()
        .unwrap_or_else(|| format!("hg-{}", uuid::Uuid::new_v4()));
    span.record("delivery", delivery.as_str());
    if let Some(name) = &event.name {
        span.record("event", name.as_str());
    }

    let filtered = !source.accepts_event(event.name.as_deref());
    let outcome = if filtered {
        Default::default()
    } else {
        evaluate(rules, &event)
    };
    if outcome.actions.is_empty() {
        // Nothing to run, nothing to store: not even the delivery id, so that a redelivery after the
        // rules were fixed does run.
        return Ok(no_match(&delivery, filtered));
    }
    let jobs = jobs_for(rules, &event, &outcome, &delivery, req.body);
    let matched: Vec<&str> = outcome
        .matched
        .iter()
        .map(|&i| rules.rules[i].name.as_str())
        .collect();
    let seen = provided.map(|d| (source.name.clone(), d));
    let kinds: Vec<&'static str> = jobs.iter().map(|j| j.kind.as_str()).collect();
    let n = jobs.len();
    match state
        .queue
        .accept(seen, state.config.dedup_window, jobs)
        .await
    {
        Err(e) => {
            tracing::error!(error = %e, "cannot enqueue; answering 503");
            Err(Reject::QueueUnavailable)
        }
        Ok(Accepted::Duplicate) => {
            tracing::info!("duplicate delivery, nothing run");
            Ok(json_response(
                StatusCode::OK,
                &json!({ "delivery": delivery, "duplicate": true }),
            ))
        }
        Ok(Accepted::Enqueued(_)) => {
            state.wake.notify_one();
            for rule in &matched {
                crate::metrics::rule_matched(rule);
            }
            for kind in kinds {
                crate::metrics::enqueued(kind);
            }
            tracing::info!(matched = ?matched, actions = n, "enqueued");
            let mut r = json_response(
                StatusCode::ACCEPTED,
                &json!({ "delivery": delivery, "matched": matched, "actions": n }),
            );
            r.headers_mut()
                .insert("x-hookgate-matched", HeaderValue::from(matched.len()));
            Ok(r)
        }
    }
}

/// The 200 for a delivery that runs nothing.
fn no_match(delivery: &str, filtered: bool) -> Response<Full<Bytes>> {
    tracing::info!(filtered, "no rule matched");
    let mut body = json!({ "delivery": delivery, "matched": [], "actions": 0 });
    if filtered {
        body["ignored"] = json!("the source does not accept this event");
    }
    let mut r = json_response(StatusCode::OK, &body);
    r.headers_mut()
        .insert("x-hookgate-matched", HeaderValue::from_static("0"));
    r
}

fn is_form(headers: &[(String, String)]) -> bool {
    headers
        .iter()
        .any(|(n, v)| n == "content-type" && v.starts_with("application/x-www-form-urlencoded"))
}

fn not_json() -> Reject {
    tracing::info!(reason = "body is not JSON", "request rejected");
    Reject::NotJson
}

/// The longest a handler may take end to end; the glue enforces it.
pub const DEFAULT_REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
