//! The hook and admin HTTP servers: hyper glue, limits, graceful shutdown.
//!
//! `serve` takes its listener and its shutdown future, so tests bind `127.0.0.1:0` and stop it when
//! they like. The hook port routes by path, enforces the body limit while reading, and hands complete
//! requests to `handler`; the admin port serves `admin`. Connections are capped by a semaphore (excess
//! connections wait in the kernel's accept queue), HTTP/1 headers must arrive within a timeout, and each
//! request must complete within another. On shutdown both ports stop accepting and let in-flight
//! requests finish.

pub mod admin;
pub mod handler;

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request, Response};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio::sync::{Notify, Semaphore};

use crate::queue::Queue;
use crate::reload::RuleStore;
use handler::Reject;

/// Runtime limits of the hook port (flags of `gateway serve`).
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// Largest body, unless the source sets `max_body`.
    pub max_body: u64,
    /// HTTP/1 request headers must arrive within this.
    pub header_timeout: Duration,
    /// Whole requests, body and enqueue included, must complete within this.
    pub request_timeout: Duration,
    /// Connections served at once, per port.
    pub max_connections: usize,
    /// A delivery id seen again within this is a duplicate.
    pub dedup_window: Duration,
    /// How long shutdown waits for in-flight requests.
    pub shutdown_grace: Duration,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            max_body: 10 << 20,
            header_timeout: Duration::from_secs(10),
            request_timeout: handler::DEFAULT_REQUEST_TIMEOUT,
            max_connections: 1024,
            dedup_window: Duration::from_secs(24 * 3600),
            shutdown_grace: Duration::from_secs(10),
        }
    }
}

/// Everything a request needs.
pub struct State {
    pub store: Arc<RuleStore>,
    pub queue: Arc<Queue>,
    /// Wakes the dispatcher after an enqueue.
    pub wake: Arc<Notify>,
    pub config: ServerConfig,
    pub limits: handler::SourceLimits,
}

type Handler = fn(
    Arc<State>,
    Request<Incoming>,
) -> Pin<Box<dyn Future<Output = Response<Full<Bytes>>> + Send>>;

/// Serves webhooks on `listener` until `shutdown`.
pub async fn serve_hooks(
    listener: TcpListener,
    state: Arc<State>,
    shutdown: impl Future<Output = ()>,
) {
    serve(listener, state, |s, r| Box::pin(hook(s, r)), shutdown).await;
}

/// Serves the admin endpoints on `listener` until `shutdown`.
pub async fn serve_admin(
    listener: TcpListener,
    state: Arc<State>,
    shutdown: impl Future<Output = ()>,
) {
    serve(
        listener,
        state,
        |s, r| Box::pin(async move { admin::handle(&s, r.method(), r.uri().path()).await }),
        shutdown,
    )
    .await;
}

async fn serve(
    listener: TcpListener,
    state: Arc<State>,
    handler: Handler,
    shutdown: impl Future<Output = ()>,
) {
    tokio::pin!(shutdown);
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    let slots = Arc::new(Semaphore::new(state.config.max_connections));
    let mut builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(state.config.header_timeout);
    loop {
        let permit = tokio::select! {
            () = &mut shutdown => break,
            permit = slots.clone().acquire_owned() => match permit {
                Ok(p) => p,
                Err(_) => break,
            },
        };
        let (stream, peer) = tokio::select! {
            () = &mut shutdown => break,
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let _ = stream.set_nodelay(true);
        let state = state.clone();
        let service = hyper::service::service_fn(move |req: Request<Incoming>| {
            let state = state.clone();
            async move { Ok::<_, Infallible>(handler(state, req).await) }
        });
        let conn = graceful.watch(
            builder
                .serve_connection(TokioIo::new(stream), service)
                .into_owned(),
        );
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!(%peer, error = %e, "connection ended with an error");
            }
            drop(permit);
        });
    }
    drop(listener);
    if tokio::time::timeout(state.config.shutdown_grace, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!("shutdown: some requests did not finish within the grace period");
    }
}

/// Routes a hook request, reads its body within the limits, and hands it to the handler.
async fn hook(state: Arc<State>, req: Request<Incoming>) -> Response<Full<Bytes>> {
    let timeout = state.config.request_timeout;
    match tokio::time::timeout(timeout, hook_inner(&state, req)).await {
        Ok(response) => response,
        Err(_) => {
            tracing::info!(reason = "request timeout", "request rejected");
            Reject::Timeout.response()
        }
    }
}

async fn hook_inner(state: &State, req: Request<Incoming>) -> Response<Full<Bytes>> {
    // One snapshot for the whole request: a reload meanwhile does not change what it sees.
    let rules = state.store.snapshot();
    let path = req.uri().path();
    let Some(index) = rules.source_index(path) else {
        tracing::info!(path = %truncate(path), reason = "no source at this path", "request rejected");
        return Reject::NotFound.response();
    };
    let source = &rules.sources()[index];
    if req.method() != Method::POST {
        tracing::info!(source = %source.name(), method = %req.method(), reason = "method not allowed", "request rejected");
        return Reject::MethodNotAllowed.response();
    }
    let limit = source.max_body().unwrap_or(state.config.max_body);
    let declared = req
        .headers()
        .get(http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
    if declared.is_some_and(|n| n > limit) {
        tracing::info!(source = %source.name(), limit, reason = "body too large", "request rejected");
        return Reject::TooLarge.response();
    }
    let headers: Vec<(String, String)> = req
        .headers()
        .iter()
        .map(|(n, v)| {
            (
                n.as_str().to_string(),
                String::from_utf8_lossy(v.as_bytes()).into_owned(),
            )
        })
        .collect();
    let query: Vec<(String, String)> = req
        .uri()
        .query()
        .map(|q| {
            form_urlencoded::parse(q.as_bytes())
                .map(|(k, v)| (k.into_owned(), v.into_owned()))
                .collect()
        })
        .unwrap_or_default();
    let body = match Limited::new(req.into_body(), limit as usize)
        .collect()
        .await
    {
        Ok(collected) => collected.to_bytes(),
        Err(e)
            if e.downcast_ref::<http_body_util::LengthLimitError>()
                .is_some() =>
        {
            tracing::info!(source = %source.name(), limit, reason = "body too large", "request rejected");
            return Reject::TooLarge.response();
        }
        Err(e) => {
            tracing::info!(source = %source.name(), error = %e, reason = "body not received", "request rejected");
            return handler::json_response(
                http::StatusCode::BAD_REQUEST,
                &serde_json::json!({"error": "incomplete body"}),
            );
        }
    };
    handler::handle(
        state,
        &rules,
        handler::Incoming {
            source: index,
            headers,
            query,
            body: &body,
        },
    )
    .await
}

/// A path as logged: at most 100 characters (a URL-token path is the credential; it is never logged whole).
fn truncate(path: &str) -> String {
    if path.len() > 24 && path.starts_with("/hook/") {
        // `get`, not indexing: a multi-byte character at the cut must not panic (hyper only admits ASCII
        // paths today, but this must not depend on it).
        return format!("{}…", path.get(..14).unwrap_or("/hook/"));
    }
    path.chars().take(100).collect()
}
