//! One webhook request: verify, prepare, evaluate, durably enqueue, answer.
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
use serde::Serialize;
use serde_json::{Value, json};

use crate::delivery_log::{ActionRecord, Outcome, Record, RecordBodies, RecordedRequest};
use crate::dispatch::jobs_for;
use crate::eval::evaluate;
use crate::event::Event;
use crate::pairs::Pairs;
use crate::prepare::{Head, Malformed, Options, Prepared, View, prepare};
use crate::queue::{Accepted, NewJob, QueueBackend};
use crate::ruleset::{Rate, RuleSet};
use crate::server::State;
use crate::verify;

/// A routed webhook request with its complete body.
pub struct Incoming {
    /// Index into `rules.sources`.
    pub source: usize,
    /// The event and delivery id as the head names them, when already read (`None`: `prepare`
    /// reads them).
    pub head: Option<Head>,
    /// `(lowercase name, value)`.
    pub headers: Pairs,
    pub query: Pairs,
    pub body: Bytes,
}

/// Why a request is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reject {
    NotFound,
    MethodNotAllowed,
    TooLarge,
    Unauthorized,
    Malformed(Malformed),
    RateLimited,
    QueueUnavailable,
    /// The bodies being read already use the whole body budget.
    Overloaded,
    /// The connection ended or failed before the whole body arrived.
    IncompleteBody,
    Timeout,
}

impl Reject {
    pub fn status(self) -> StatusCode {
        match self {
            Reject::NotFound => StatusCode::NOT_FOUND,
            Reject::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            Reject::TooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            Reject::Unauthorized => StatusCode::UNAUTHORIZED,
            Reject::Malformed(_) => StatusCode::BAD_REQUEST,
            Reject::RateLimited => StatusCode::TOO_MANY_REQUESTS,
            Reject::QueueUnavailable | Reject::Overloaded => StatusCode::SERVICE_UNAVAILABLE,
            Reject::IncompleteBody => StatusCode::BAD_REQUEST,
            Reject::Timeout => StatusCode::REQUEST_TIMEOUT,
        }
    }

    fn message(self) -> &'static str {
        match self {
            Reject::NotFound => "not found",
            Reject::MethodNotAllowed => "method not allowed",
            Reject::TooLarge => "body too large",
            Reject::Unauthorized => "unauthorized",
            Reject::Malformed(m) => m.as_str(),
            Reject::RateLimited => "rate limited",
            Reject::QueueUnavailable => "queue unavailable, retry later",
            Reject::Overloaded => "too many requests in flight, retry later",
            Reject::IncompleteBody => "incomplete body",
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
            Reject::RateLimited | Reject::QueueUnavailable | Reject::Overloaded => {
                r.headers_mut()
                    .insert(http::header::RETRY_AFTER, HeaderValue::from_static("1"));
            }
            _ => {}
        }
        r
    }
}

pub(crate) fn json_response<T: Serialize + ?Sized>(
    status: StatusCode,
    body: &T,
) -> Response<Full<Bytes>> {
    // Room for a short answer, written without regrowing. The bodies are plain data, which cannot fail
    // to serialise; were one to, it is logged and the answer has an empty body, not a truncated one.
    let mut text = Vec::with_capacity(128);
    if let Err(e) = serde_json::to_writer(&mut text, body) {
        tracing::error!(error = %e, "cannot serialise an answer");
        text.clear();
    }
    let mut r = Response::new(Full::new(Bytes::from(text)));
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

/// Handles a routed webhook request with a complete body: rate limit → verify → prepare → evaluate →
/// accept. Runs inside the request's span (the glue in `server.rs` creates it); records the event and
/// delivery id on it once they are known, and fills `record` (the delivery log's view of the request;
/// the glue sets its status and appends it).
pub async fn handle(
    state: &State,
    rules: &Arc<RuleSet>,
    req: Incoming,
    record: &mut Record,
) -> Response<Full<Bytes>> {
    match process(state, rules, req, record).await {
        Ok(response) => response,
        Err(reject) => reject.response(),
    }
}

async fn process(
    state: &State,
    rules: &Arc<RuleSet>,
    req: Incoming,
    record: &mut Record,
) -> Result<Response<Full<Bytes>>, Reject> {
    let source = &rules.sources[req.source];
    if let Some(rate) = source.rate
        && !state.limits.allow(&source.name, rate)
    {
        return Err(refuse(record, Reject::RateLimited, "rate limited"));
    }

    // Verify: over the raw bytes, before anything reads them.
    let check = verify::Request {
        headers: &req.headers,
        query: &req.query,
        body: &req.body,
        now: record.received_at / 1000,
        headers_only: false,
    };
    if let Err(failure) = verify::verify(source, &check) {
        crate::metrics::verification_failure(&source.name, failure.as_str());
        return Err(refuse(record, Reject::Unauthorized, failure.reason()));
    }
    run(state, rules, req, record, Mode::Live).await
}

/// How [`run`] treats a verified request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// A request from a sender: deduplicated by its delivery id.
    Live,
    /// A recorded delivery run again from the delivery log: not deduplicated (it was seen, by
    /// definition); with `dry_run`, nothing is stored.
    Replay { dry_run: bool },
}

/// Prepare → evaluate → accept, for a verified request (or a recorded one being replayed).
pub(crate) async fn run(
    state: &State,
    rules: &Arc<RuleSet>,
    req: Incoming,
    record: &mut Record,
    mode: Mode,
) -> Result<Response<Full<Bytes>>, Reject> {
    let source = &rules.sources[req.source];
    // Prepare: event name, delivery id and the payload view, each worked out once.
    let prepared = prepare(
        source,
        req.head,
        &req.headers,
        &req.query,
        &req.body,
        Options::default(),
    )
    .map_err(|m| refuse(record, Reject::Malformed(m), m.as_str()))?;
    // A provider that sends no delivery id gets one, so actions can still be told apart.
    let delivery = prepared
        .delivery
        .clone()
        .unwrap_or_else(|| format!("hg-{}", uuid::Uuid::new_v4()));
    // A provider that names them in headers had its span made with them (`server::hook`): each is
    // recorded once, or every log line of the request would show it twice.
    let span = tracing::Span::current();
    if record.delivery.as_deref() != Some(delivery.as_str()) {
        span.record("delivery", delivery.as_str());
    }
    if let Some(name) = &prepared.event
        && record.event.as_ref() != Some(name)
    {
        span.record("event", name.as_str());
    }
    record.delivery = Some(delivery.clone());
    record.event = prepared.event.clone();
    record.rules_version = Some(rules.version().to_string());
    let provided = prepared.delivery.is_some();

    // Evaluate: matched rules and their rendered actions.
    let decision = decide(
        rules,
        req.source,
        &req.headers,
        &req.query,
        &req.body,
        prepared,
        &delivery,
    );
    let keep_body = match state.log.config().bodies {
        RecordBodies::All => true,
        RecordBodies::Matched => matches!(decision, Decision::Run { .. }),
        RecordBodies::None => false,
    };
    record.request = Some(recorded(
        source,
        req.headers,
        req.query,
        keep_body.then_some(req.body),
    ));
    let (matched, jobs) = match decision {
        Decision::Handshake(challenge) => {
            record.outcome = Outcome::Handshake;
            tracing::info!("answered slack url_verification");
            return Ok(json_response(
                StatusCode::OK,
                &json!({ "challenge": challenge }),
            ));
        }
        Decision::Nothing { filtered } => {
            record.outcome = if filtered {
                Outcome::Filtered
            } else {
                Outcome::NoMatch
            };
            return Ok(no_match(&delivery, filtered));
        }
        Decision::Run { matched, jobs } => (matched, jobs),
    };

    // Accept: the jobs and the delivery id in one durable write; 202 after it.
    let matched: Vec<&str> = matched
        .iter()
        .map(|&i| rules.rules[i].name.as_str())
        .collect();
    record.matched = matched.iter().map(|m| m.to_string()).collect();
    record.actions = jobs
        .iter()
        .map(|j| ActionRecord {
            rule: j.rule.clone(),
            action: j.action,
            kind: j.kind,
            target: j.target.clone(),
            job: None,
        })
        .collect();
    if mode == (Mode::Replay { dry_run: true }) {
        return Ok(json_response(
            StatusCode::OK,
            &json!({ "delivery": delivery, "matched": matched, "actions": planned(&jobs), "dry_run": true }),
        ));
    }
    let seen = (provided && mode == Mode::Live).then(|| (source.name.clone(), delivery.clone()));
    let kinds: Vec<&'static str> = jobs.iter().map(|j| j.kind.as_str()).collect();
    let n = jobs.len();
    // The record is stored with the jobs, so an accepted delivery is never without its record.
    let stored = state.log.enabled().then(|| Arc::new(record.clone()));
    match state
        .queue
        .accept_recorded(seen, state.config.dedup_window, jobs, stored)
        .await
    {
        Err(e) => {
            tracing::error!(error = %e, "cannot enqueue; answering 503");
            record.reason = Some("queue unavailable".into());
            Err(Reject::QueueUnavailable)
        }
        Ok(Accepted::Duplicate) => {
            record.outcome = Outcome::Duplicate;
            tracing::info!("duplicate delivery, nothing run");
            Ok(json_response(
                StatusCode::OK,
                &json!({ "delivery": delivery, "duplicate": true }),
            ))
        }
        Ok(Accepted::Enqueued(ids)) => {
            record.outcome = Outcome::Accepted;
            for (action, id) in record.actions.iter_mut().zip(ids) {
                action.job = Some(id);
            }
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

/// Jobs as a dry run shows them: what each would send.
fn planned(jobs: &[NewJob]) -> Vec<Value> {
    jobs.iter()
        .map(|j| {
            let body = match j.kind {
                crate::queue::JobKind::Check => Value::Null,
                _ => serde_json::from_slice(&j.body)
                    .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&j.body).into_owned())),
            };
            json!({"rule": j.rule, "action": j.action, "kind": j.kind, "target": j.target, "key": j.key, "body": body})
        })
        .collect()
}

/// Logs a rejection with its reason and notes the reason in the record.
pub(crate) fn refuse(record: &mut Record, reject: Reject, reason: &str) -> Reject {
    tracing::info!(reason, "request rejected");
    record.outcome = Outcome::Rejected;
    record.reason = Some(reason.to_string());
    reject
}

/// The request as the delivery log keeps it: credentials removed, the body if asked for.
pub(crate) fn recorded(
    source: &crate::ruleset::Source,
    mut headers: Pairs,
    mut query: Pairs,
    body: Option<Bytes>,
) -> RecordedRequest {
    verify::strip_credentials(source, &mut headers, &mut query);
    RecordedRequest {
        headers,
        query,
        body,
    }
}

/// What a prepared request leads to, before anything is stored.
#[derive(Debug, Clone, PartialEq)]
pub enum Decision {
    /// A handshake to answer (Slack's `url_verification`).
    Handshake(Value),
    /// Nothing to run: no rule matched, or the source's `events` filter dropped the event.
    Nothing { filtered: bool },
    /// Rules matched (indices into `rules.rules`, in order); their actions as jobs.
    Run {
        matched: Vec<usize>,
        jobs: Vec<NewJob>,
    },
}

/// Evaluates a prepared request and renders its jobs. Pure: the same inputs give the same decision
/// whichever payload view `prepare` chose (the property test in `tests/prepare.rs`).
pub fn decide(
    rules: &RuleSet,
    source: usize,
    headers: &Pairs,
    query: &Pairs,
    body: &[u8],
    prepared: Prepared,
    delivery: &str,
) -> Decision {
    let payload = match prepared.view {
        View::Handshake(challenge) => return Decision::Handshake(challenge),
        View::None { filtered } => return Decision::Nothing { filtered },
        View::Sparse(payload) | View::Full(payload) => payload,
    };
    let event = Event::with_identity(
        rules,
        source,
        prepared.event,
        prepared.delivery,
        headers.clone(),
        query.clone(),
        payload,
    );
    let outcome = evaluate(rules, &event);
    if outcome.actions.is_empty() {
        // Nothing to run, nothing to store: not even the delivery id, so that a redelivery after the
        // rules were fixed does run.
        return Decision::Nothing { filtered: false };
    }
    let jobs = jobs_for(rules, &event, &outcome, delivery, body);
    Decision::Run {
        matched: outcome.matched,
        jobs,
    }
}

/// The 200 for a delivery that runs nothing: the commonest answer, written without building a JSON
/// tree first.
fn no_match(delivery: &str, filtered: bool) -> Response<Full<Bytes>> {
    #[derive(Serialize)]
    struct NoMatch<'a> {
        delivery: &'a str,
        matched: [&'a str; 0],
        actions: u8,
        #[serde(skip_serializing_if = "Option::is_none")]
        ignored: Option<&'static str>,
    }
    tracing::debug!(filtered, "no rule matched");
    let body = NoMatch {
        delivery,
        matched: [],
        actions: 0,
        ignored: filtered.then_some("the source does not accept this event"),
    };
    let mut r = json_response(StatusCode::OK, &body);
    r.headers_mut()
        .insert("x-hookgate-matched", HeaderValue::from_static("0"));
    r
}

/// The longest a handler may take end to end; the glue enforces it.
pub const DEFAULT_REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
