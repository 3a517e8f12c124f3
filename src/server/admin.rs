//! The admin port (cluster-internal): health, readiness, metrics, status, reload, the delivery log's
//! API (`/api/*`) and its web page (`/`).
//!
//! With `--admin-token-file`, `/api/*` and `POST /-/reload` need `Authorization: Bearer <token>`
//! (compared in constant time); the probes, `/metrics`, `/status` and the page's static shell do not (the
//! page asks for the token and sends it with every API call).

use std::time::Duration;

use bytes::Bytes;
use http::{HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use serde_json::{Value, json};

use std::sync::Arc;

use crate::delivery_log::{self, Filter, Record, StatusFilter, TargetStats};
use crate::queue::{JobState, QueueBackend, QueueError};
use crate::reload::ReloadOutcome;
use crate::server::State;
use crate::server::handler::{self, Mode, json_response};

/// The web page: one file, no external assets.
const PAGE: &str = include_str!("page.html");

/// Answers an admin request.
pub async fn handle(state: &State, req: Request<Incoming>) -> Response<Full<Bytes>> {
    let method = req.method().clone();
    let path = req.uri().path().to_string();
    let query = query_pairs(req.uri().query());
    let protected = path.starts_with("/api/") || path == "/-/reload";
    if protected && !authorized(state, &req) {
        let mut r = json_response(
            StatusCode::UNAUTHORIZED,
            &json!({"error": "a bearer token is required (--admin-token-file)"}),
        );
        r.headers_mut().insert(
            http::header::WWW_AUTHENTICATE,
            HeaderValue::from_static("Bearer"),
        );
        return r;
    }
    let segments: Vec<&str> = path.trim_matches('/').split('/').collect();
    match (&method, segments.as_slice()) {
        (&Method::GET, [""]) => page(),
        (&Method::GET, ["healthz"]) => text(StatusCode::OK, "ok\n"),
        (&Method::GET, ["readyz"]) => ready(state).await,
        (&Method::GET, ["metrics"]) => metrics(state).await,
        (&Method::GET, ["status"]) => {
            let queue = state.queue.stats().await.ok();
            json_response(
                StatusCode::OK,
                &json!({
                    "version": env!("CARGO_PKG_VERSION"),
                    "rules": state.store.status(),
                    "queue": queue,
                    "deliveries": {
                        "records": state.log.usage().0,
                        "bytes": state.log.usage().1,
                    },
                }),
            )
        }
        (&Method::POST, ["-", "reload"]) => reload(state).await,
        (&Method::GET, ["api", "deliveries"]) => list_deliveries(state, &query).await,
        (&Method::GET, ["api", "deliveries", id]) => show_delivery(state, id).await,
        (&Method::GET, ["api", "deliveries", id, "export"]) => export_one(state, id).await,
        (&Method::GET, ["api", "export"]) => export_many(state, &query).await,
        (&Method::POST, ["api", "deliveries", id, "replay"]) => {
            let dry_run = query
                .iter()
                .any(|(k, v)| k == "dry_run" && matches!(v.as_str(), "1" | "true" | ""));
            replay(state, id, dry_run).await
        }
        (&Method::GET, ["api", "jobs"]) => list_jobs(state, &query).await,
        (&Method::POST, ["api", "jobs", id, "requeue"]) => requeue(state, id).await,
        (&Method::GET, ["api", "targets"]) => targets(state).await,
        (_, [""] | ["healthz" | "readyz" | "metrics" | "status"] | ["-", "reload"])
        | (_, ["api", "deliveries" | "jobs" | "targets" | "export", ..]) => {
            error(StatusCode::METHOD_NOT_ALLOWED, "method not allowed")
        }
        _ => error(StatusCode::NOT_FOUND, "not found"),
    }
}

fn authorized(state: &State, req: &Request<Incoming>) -> bool {
    let Some(token) = &state.admin_token else {
        return true;
    };
    let given = req
        .headers()
        .get(http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or_default();
    crate::verify::token_matches(token, given.trim())
}

fn page() -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from_static(PAGE.as_bytes())));
    let headers = r.headers_mut();
    headers.insert(
        http::header::CONTENT_TYPE,
        HeaderValue::from_static("text/html; charset=utf-8"),
    );
    // Everything the page needs is in the page: nothing may be loaded from elsewhere.
    headers.insert(
        http::header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(
            "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; connect-src 'self'; img-src data:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'",
        ),
    );
    headers.insert(
        http::header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    r
}

async fn ready(state: &State) -> Response<Full<Bytes>> {
    // Ready when rules are loaded (always, once serving) and the queue answers.
    match tokio::time::timeout(Duration::from_secs(2), state.queue.ping()).await {
        Ok(Ok(_)) => text(StatusCode::OK, "ready\n"),
        Ok(Err(e)) => text(
            StatusCode::SERVICE_UNAVAILABLE,
            &format!("queue unavailable: {e}\n"),
        ),
        Err(_) => text(
            StatusCode::SERVICE_UNAVAILABLE,
            "queue unavailable: no answer within 2s\n",
        ),
    }
}

async fn metrics(state: &State) -> Response<Full<Bytes>> {
    crate::metrics::body_bytes_in_flight(state.body_bytes_in_flight());
    if let Ok(stats) = state.queue.stats().await {
        crate::metrics::queue(&stats);
    }
    if let Ok(targets) = state.queue.target_stats().await {
        crate::metrics::targets(&targets, crate::clock::now_ms());
    }
    let mut r = text(StatusCode::OK, &crate::metrics::render());
    r.headers_mut().insert(
        http::header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; version=0.0.4"),
    );
    r
}

async fn reload(state: &State) -> Response<Full<Bytes>> {
    let store = state.store.clone();
    match tokio::task::spawn_blocking(move || store.reload()).await {
        Ok(ReloadOutcome::Reloaded { generation }) => json_response(
            StatusCode::OK,
            &json!({ "result": "reloaded", "generation": generation }),
        ),
        Ok(ReloadOutcome::Unchanged) => {
            json_response(StatusCode::OK, &json!({ "result": "unchanged" }))
        }
        Ok(ReloadOutcome::Failed(diagnostics)) => json_response(
            StatusCode::UNPROCESSABLE_ENTITY,
            &json!({ "result": "failed", "diagnostics": diagnostics }),
        ),
        Err(_) => text(StatusCode::INTERNAL_SERVER_ERROR, "reload panicked\n"),
    }
}

/// The most records one page lists.
const MAX_PAGE: usize = 500;

async fn list_deliveries(state: &State, query: &[(String, String)]) -> Response<Full<Bytes>> {
    let filter = match delivery_filter(query) {
        Ok(f) => f,
        Err(e) => return error(StatusCode::BAD_REQUEST, &e),
    };
    let records = match records(state, &filter).await {
        Ok(r) => r,
        Err(e) => return queue_error(e),
    };
    let next = (records.len() == filter.limit)
        .then(|| records.last().map(|r| r.id.clone()))
        .flatten();
    let items: Vec<Value> = records.iter().map(|r| summary(r)).collect();
    json_response(
        StatusCode::OK,
        &json!({ "deliveries": items, "next": next }),
    )
}

/// `?source=&status=&rule=&event=&since=&limit=&before=`.
fn delivery_filter(query: &[(String, String)]) -> Result<Filter, String> {
    let mut f = Filter {
        limit: 50,
        ..Filter::default()
    };
    for (k, v) in query {
        match k.as_str() {
            "source" => f.source = Some(v.clone()),
            "event" => f.event = Some(v.clone()),
            "rule" => f.rule = Some(v.clone()),
            "before" => f.before = Some(v.clone()),
            "status" => {
                f.status = Some(StatusFilter::parse(v).ok_or_else(|| {
                    format!("`status` must be an HTTP status or an outcome, not `{v}`")
                })?)
            }
            "since" => f.since = Some(parse_since(v)?),
            "limit" => {
                f.limit = v
                    .parse::<usize>()
                    .map_err(|_| format!("`limit` must be a number, not `{v}`"))?
                    .clamp(1, MAX_PAGE)
            }
            _ => {}
        }
    }
    Ok(f)
}

/// `since=` is Unix milliseconds, or a duration meaning "that long ago" (`15m`, `2h`).
fn parse_since(v: &str) -> Result<i64, String> {
    if let Ok(ms) = v.parse::<i64>() {
        return Ok(ms);
    }
    crate::compile::parse_duration(v)
        .map(|d| crate::clock::now_ms() - d.as_millis() as i64)
        .ok_or_else(|| {
            format!("`since` must be Unix milliseconds or a duration like `1h`, not `{v}`")
        })
}

/// A record as listed.
fn summary(r: &Record) -> Value {
    json!({
        "id": r.id,
        "received_at": r.received_at,
        "source": r.source,
        "delivery": r.delivery,
        "event": r.event,
        "status": r.status,
        "outcome": r.outcome,
        "reason": r.reason,
        "matched": r.matched,
        "actions": r.actions.len(),
        "replay_of": r.replay_of,
    })
}

/// Records passing `filter`, newest first: this process's memory merged with the queue's database
/// (accepted records, and on PostgreSQL every replica's).
async fn records(state: &State, filter: &Filter) -> Result<Vec<Arc<Record>>, QueueError> {
    let memory = state.log.list(filter);
    let stored = state.queue.list_records(filter.clone()).await?;
    Ok(delivery_log::merge(
        memory,
        stored.into_iter().map(Arc::new).collect(),
        filter.limit,
    ))
}

/// A record from memory, or from the queue's database.
async fn find(state: &State, id: &str) -> Option<Arc<Record>> {
    if let Some(r) = state.log.get(id) {
        return Some(r);
    }
    match state.queue.get_record(id.to_string()).await {
        Ok(r) => r.map(Arc::new),
        Err(e) => {
            tracing::warn!(error = %e, "cannot read a delivery record");
            None
        }
    }
}

/// The rules version `hash`: served now or recently, or compiled again from the texts stored when it
/// served (with placeholder secrets: explaining needs none).
async fn rules_version(state: &State, hash: &str) -> Option<Arc<crate::ruleset::RuleSet>> {
    if let Some(rules) = state.store.version(hash) {
        return Some(rules);
    }
    let files = state
        .queue
        .get_rules_version(hash.to_string())
        .await
        .ok()??;
    let texts: Vec<(String, String)> = serde_json::from_str(&files).ok()?;
    let loaded = crate::load::load_texts(&texts, &crate::compile::PlaceholderSecrets);
    let rules = Arc::new(loaded.result.ok()?.rules.with_version(hash));
    state.store.remember(rules.clone());
    Some(rules)
}

async fn show_delivery(state: &State, id: &str) -> Response<Full<Bytes>> {
    let Some(record) = find(state, id).await else {
        return error(StatusCode::NOT_FOUND, &format!("no delivery record `{id}`"));
    };
    let mut out = serde_json::to_value(&*record).unwrap_or(Value::Null);
    // The explanation, against the rules that judged it.
    let explanation = match record.rules_version.as_deref() {
        None => Err("it was refused before evaluation".to_string()),
        Some(version) => match rules_version(state, version).await {
            Some(rules) => delivery_log::explain(&rules, &record),
            None => Err(format!(
                "the rules version `{}` that judged it is no longer known",
                short(version)
            )),
        },
    };
    match explanation {
        Ok(e) => {
            out["rules"] = serde_json::to_value(e.rules).unwrap_or(Value::Null);
            out["explained_actions"] = serde_json::to_value(e.actions).unwrap_or(Value::Null);
        }
        Err(why) => {
            out["rules"] = Value::Null;
            out["explain_error"] = json!(format!("cannot explain this delivery: {why}"));
        }
    }
    out["request"] = match &record.request {
        None => Value::Null,
        Some(req) => json!({
            "headers": req.headers,
            "query": req.query,
            "body_bytes": req.body.as_ref().map(Bytes::len),
            "payload": req.body.as_ref().map(|b| serde_json::from_slice::<Value>(b)
                .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(b).into_owned()))),
        }),
    };
    // Each action's job, as it stands now.
    let mut actions = Vec::new();
    for action in &record.actions {
        let mut a = serde_json::to_value(action).unwrap_or(Value::Null);
        if let Some(job) = action.job {
            a["job"] = match state.queue.get(job).await {
                Ok((job, attempts)) => json!({
                    "id": job.id,
                    "state": job.state,
                    "attempts": attempts,
                    "coalesced": job.coalesced,
                    "next_attempt_at": (job.state == JobState::Pending).then_some(job.run_at),
                    "last_status": job.last_status,
                    "last_error": job.last_error,
                }),
                Err(QueueError::NoSuchJob(_)) => json!({"id": job, "state": "pruned"}),
                Err(e) => json!({"id": job, "error": e.to_string()}),
            };
        }
        actions.push(a);
    }
    out["actions"] = Value::Array(actions);
    out["replays"] = json!(
        state
            .log
            .list(&Filter {
                limit: MAX_PAGE,
                ..Filter::default()
            })
            .iter()
            .filter(|r| r.replay_of.as_deref() == Some(id))
            .map(|r| r.id.clone())
            .collect::<Vec<_>>()
    );
    json_response(StatusCode::OK, &out)
}

/// A record as `gateway deliveries export` and `gateway test --recorded` read it: the request with its
/// body (base64), and the outcome it had under the rules that judged it (matched rules, actions with
/// rendered bodies). `None` if it cannot be evaluated again (refused before evaluation, body not kept,
/// rules version no longer known).
async fn exported(state: &State, record: &Record) -> Result<Value, String> {
    use base64::Engine;
    let request = record
        .request
        .as_ref()
        .filter(|_| record.rules_version.is_some())
        .ok_or("it was refused before evaluation")?;
    let body = request
        .body
        .as_ref()
        .ok_or("its body was not kept (`--record-bodies`)")?;
    let version = record
        .rules_version
        .as_deref()
        .ok_or("it was refused before evaluation")?;
    let rules = rules_version(state, version)
        .await
        .ok_or_else(|| format!("the rules version `{}` is no longer known", short(version)))?;
    let explanation = delivery_log::explain(&rules, record)?;
    let mut out = summary(record);
    out["rules_version"] = json!(version);
    out["request"] = json!({
        "headers": request.headers,
        "query": request.query,
        "body": base64::engine::general_purpose::STANDARD.encode(body),
    });
    out["result"] = json!({ "matched": explanation.matched, "actions": explanation.actions });
    Ok(out)
}

async fn export_one(state: &State, id: &str) -> Response<Full<Bytes>> {
    let Some(record) = find(state, id).await else {
        return error(StatusCode::NOT_FOUND, &format!("no delivery record `{id}`"));
    };
    match exported(state, &record).await {
        Ok(v) => json_response(StatusCode::OK, &v),
        Err(why) => error(
            StatusCode::CONFLICT,
            &format!("cannot export this delivery: {why}"),
        ),
    }
}

/// Every exportable record passing the filters, oldest first, one JSON object per line.
async fn export_many(state: &State, query: &[(String, String)]) -> Response<Full<Bytes>> {
    let mut filter = match delivery_filter(query) {
        Ok(f) => f,
        Err(e) => return error(StatusCode::BAD_REQUEST, &e),
    };
    if !query.iter().any(|(k, _)| k == "limit") {
        filter.limit = usize::MAX;
    }
    let mut lines = String::new();
    let all = match records(state, &filter).await {
        Ok(r) => r,
        Err(e) => return queue_error(e),
    };
    for record in all.iter().rev() {
        if let Ok(v) = exported(state, record).await {
            lines.push_str(&v.to_string());
            lines.push('\n');
        }
    }
    let mut r = Response::new(Full::new(Bytes::from(lines)));
    r.headers_mut().insert(
        http::header::CONTENT_TYPE,
        HeaderValue::from_static("application/x-ndjson"),
    );
    r
}

fn short(version: &str) -> &str {
    version.get(..12).unwrap_or(version)
}

/// Runs a recorded delivery against the current rules: a new record, linked to the old one.
async fn replay(state: &State, id: &str, dry_run: bool) -> Response<Full<Bytes>> {
    let Some(old) = find(state, id).await else {
        return error(StatusCode::NOT_FOUND, &format!("no delivery record `{id}`"));
    };
    let Some(request) = old.request.as_ref().filter(|_| old.rules_version.is_some()) else {
        return error(
            StatusCode::CONFLICT,
            "this delivery was refused before evaluation; there is nothing to replay",
        );
    };
    let Some(body) = &request.body else {
        return error(
            StatusCode::CONFLICT,
            "the body of this delivery was not kept (`--record-bodies`); it cannot be replayed",
        );
    };
    let rules = state.store.snapshot();
    let name = old.source.clone().unwrap_or_default();
    let Some(source) = rules.sources().iter().position(|s| s.name() == name) else {
        return error(
            StatusCode::CONFLICT,
            &format!("source `{name}` is not in the current rules"),
        );
    };
    let mut record = Record::new(old.source.clone());
    record.replay_of = Some(old.id.clone());
    let incoming = handler::Incoming {
        source,
        head: None,
        headers: request.headers.clone(),
        query: request.query.clone(),
        body: body.clone(),
    };
    let span = tracing::info_span!(
        "replay",
        source = name.as_str(),
        record = id,
        event = tracing::field::Empty,
        delivery = tracing::field::Empty,
    );
    let response = tracing::Instrument::instrument(
        handler::run(
            state,
            &rules,
            incoming,
            &mut record,
            Mode::Replay { dry_run },
        ),
        span,
    )
    .await
    .unwrap_or_else(|reject| reject.response());
    if dry_run {
        return response;
    }
    record.status = response.status().as_u16();
    let new_id = record.id.clone();
    state.log.append(record);
    tracing::info!(record = id, replay = %new_id, status = response.status().as_u16(), "delivery replayed");
    // The handler's answer, with the new record's id.
    let (parts, body) = response.into_parts();
    let bytes = http_body_util::BodyExt::collect(body)
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    let mut value: Value = serde_json::from_slice(&bytes).unwrap_or(json!({}));
    // With the log off the new record is not kept: there is no id to give.
    value["record"] = if state.log.enabled() {
        json!(new_id)
    } else {
        Value::Null
    };
    value["replay_of"] = json!(id);
    json_response(parts.status, &value)
}

async fn list_jobs(state: &State, query: &[(String, String)]) -> Response<Full<Bytes>> {
    let get = |k: &str| query.iter().find(|(n, _)| n == k).map(|(_, v)| v.as_str());
    let asked = get("state").unwrap_or("dead");
    let Some(job_state) = JobState::parse(asked) else {
        return error(
            StatusCode::BAD_REQUEST,
            &format!("`state` must be pending, inflight, done or dead, not `{asked}`"),
        );
    };
    let limit = get("limit")
        .and_then(|l| l.parse::<usize>().ok())
        .unwrap_or(100)
        .clamp(1, MAX_PAGE);
    match state.queue.list(job_state, limit).await {
        Ok(jobs) => {
            let jobs: Vec<_> = jobs
                .into_iter()
                .filter(|j| get("target").is_none_or(|t| j.target == t))
                .collect();
            json_response(StatusCode::OK, &json!({ "jobs": jobs }))
        }
        Err(e) => queue_error(e),
    }
}

async fn requeue(state: &State, id: &str) -> Response<Full<Bytes>> {
    let Ok(id) = id.parse::<i64>() else {
        return error(StatusCode::NOT_FOUND, &format!("no job `{id}`"));
    };
    match state.queue.requeue(id).await {
        Ok(()) => {
            state.wake.notify_one();
            tracing::info!(job = id, "dead job requeued");
            json_response(StatusCode::OK, &json!({ "job": id, "state": "pending" }))
        }
        Err(e) => queue_error(e),
    }
}

async fn targets(state: &State) -> Response<Full<Bytes>> {
    let rules = state.store.snapshot();
    let mut stats = match state.queue.target_stats().await {
        Ok(s) => s,
        Err(e) => return queue_error(e),
    };
    // Every target of the rules, with or without jobs; then jobs of targets the rules dropped.
    let mut items: Vec<TargetStats> = rules
        .targets()
        .iter()
        .map(|t| match stats.iter().position(|s| s.name == t.name()) {
            Some(i) => stats.swap_remove(i),
            None => TargetStats {
                name: t.name().to_string(),
                ..TargetStats::default()
            },
        })
        .collect();
    items.extend(stats);
    json_response(StatusCode::OK, &json!({ "targets": items }))
}

fn queue_error(e: QueueError) -> Response<Full<Bytes>> {
    let status = match &e {
        QueueError::NoSuchJob(_) => StatusCode::NOT_FOUND,
        QueueError::NotDead(..) => StatusCode::CONFLICT,
        _ => StatusCode::SERVICE_UNAVAILABLE,
    };
    error(status, &e.to_string())
}

fn query_pairs(query: Option<&str>) -> Vec<(String, String)> {
    query
        .map(|q| {
            form_urlencoded::parse(q.as_bytes())
                .map(|(k, v)| (k.into_owned(), v.into_owned()))
                .collect()
        })
        .unwrap_or_default()
}

fn error(status: StatusCode, message: &str) -> Response<Full<Bytes>> {
    json_response(status, &json!({ "error": message }))
}

fn text(status: StatusCode, body: &str) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from(body.to_string())));
    *r.status_mut() = status;
    r.headers_mut().insert(
        http::header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    r
}
