//! The admin port (cluster-internal): health, readiness, metrics, status, and reload.

use std::time::Duration;

use bytes::Bytes;
use http::{Method, Response, StatusCode};
use http_body_util::Full;
use serde_json::json;

use crate::queue::QueueBackend;
use crate::reload::ReloadOutcome;
use crate::server::State;
use crate::server::handler::json_response;

/// Answers an admin request.
pub async fn handle(state: &State, method: &Method, path: &str) -> Response<Full<Bytes>> {
    match (method, path) {
        (&Method::GET, "/healthz") => text(StatusCode::OK, "ok\n"),
        (&Method::GET, "/readyz") => {
            // Ready when rules are loaded (always, once serving) and the queue answers.
            match tokio::time::timeout(Duration::from_secs(2), state.queue.stats()).await {
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
        (&Method::GET, "/metrics") => {
            if let Ok(stats) = state.queue.stats().await {
                crate::metrics::queue(&stats);
            }
            let mut r = text(StatusCode::OK, &crate::metrics::render());
            r.headers_mut().insert(
                http::header::CONTENT_TYPE,
                http::HeaderValue::from_static("text/plain; version=0.0.4"),
            );
            r
        }
        (&Method::GET, "/status") => {
            let queue = state.queue.stats().await.ok();
            json_response(
                StatusCode::OK,
                &json!({
                    "version": env!("CARGO_PKG_VERSION"),
                    "rules": state.store.status(),
                    "queue": queue,
                }),
            )
        }
        (&Method::POST, "/-/reload") => {
            let store = state.store.clone();
            let outcome = tokio::task::spawn_blocking(move || store.reload()).await;
            match outcome {
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
        (_, "/healthz" | "/readyz" | "/metrics" | "/status" | "/-/reload") => {
            text(StatusCode::METHOD_NOT_ALLOWED, "method not allowed\n")
        }
        _ => text(StatusCode::NOT_FOUND, "not found\n"),
    }
}

fn text(status: StatusCode, body: &str) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from(body.to_string())));
    *r.status_mut() = status;
    r.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    r
}
