//! The delivery sink of `bench/load.sh`: a small HTTP/1.1 server that answers every POST with 200 and
//! records its arrival time (unix nanoseconds) with the delivery id from `X-Hookgate-Delivery`.
//!
//! `GET /count` answers the number of distinct delivery ids received so far, `GET /stats` a JSON summary: deliveries received, distinct delivery ids, the first and last
//! arrival, and — for ids of the form `<random>-lat-<unix nanos>-<n>` that `bench/loadgen.rs` sends — the
//! percentiles of arrival minus send time, i.e. receipt-to-delivery latency through the gateway.
//! `GET /dump` answers every arrival as `<arrival nanos> <delivery id>` lines. One thread (pin it).
//!
//! `cargo run --release --example sink -- 127.0.0.1:18190`

use std::collections::HashSet;
use std::convert::Infallible;
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::{Method, Request, Response};
use hyper_util::rt::TokioIo;

/// Every arrival in order, and the distinct delivery ids seen (kept as they come, so `/count` is cheap
/// enough to poll).
#[derive(Default)]
struct Seen {
    arrivals: Vec<(u64, String)>,
    ids: HashSet<String>,
}

type Arrivals = Arc<Mutex<Seen>>;

fn main() {
    let Some(addr) = std::env::args().nth(1) else {
        eprintln!("usage: sink ADDR");
        std::process::exit(2);
    };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(serve(addr));
}

async fn serve(addr: String) {
    let listener = match tokio::net::TcpListener::bind(&addr).await {
        Ok(l) => l,
        Err(e) => {
            eprintln!("error: cannot listen on {addr}: {e}");
            std::process::exit(1);
        }
    };
    let arrivals: Arrivals = Arc::default();
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let _ = stream.set_nodelay(true);
        let arrivals = arrivals.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |req: Request<hyper::body::Incoming>| {
                let arrivals = arrivals.clone();
                async move { Ok::<_, Infallible>(handle(req, &arrivals).await) }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

async fn handle(req: Request<hyper::body::Incoming>, arrivals: &Arrivals) -> Response<Full<Bytes>> {
    if req.method() == Method::GET {
        let body = match req.uri().path() {
            "/count" => arrivals.lock().expect("lock").ids.len().to_string(),
            "/stats" => stats(&arrivals.lock().expect("lock")).to_string(),
            "/dump" => {
                let seen = arrivals.lock().expect("lock");
                let mut out = String::with_capacity(seen.arrivals.len() * 40);
                for (at, id) in &seen.arrivals {
                    out.push_str(&format!("{at} {id}\n"));
                }
                out
            }
            _ => {
                return Response::builder()
                    .status(404)
                    .body(Full::new(Bytes::new()))
                    .expect("response");
            }
        };
        return Response::new(Full::new(Bytes::from(body)));
    }
    let at = now_nanos();
    let id = req
        .headers()
        .get("x-hookgate-delivery")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string();
    // Read the whole delivery before answering, as a real receiver does.
    let _ = req.into_body().collect().await;
    let mut seen = arrivals.lock().expect("lock");
    seen.ids.insert(id.clone());
    seen.arrivals.push((at, id));
    Response::new(Full::new(Bytes::new()))
}

fn now_nanos() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock after 1970")
        .as_nanos() as u64
}

fn stats(seen: &Seen) -> serde_json::Value {
    let all = &seen.arrivals;
    let mut micros: Vec<u64> = all
        .iter()
        .filter_map(|(at, id)| {
            let sent: u64 = id.split_once("lat-")?.1.split('-').next()?.parse().ok()?;
            Some(at.saturating_sub(sent) / 1_000)
        })
        .collect();
    micros.sort_unstable();
    let pct = |p: f64| -> u64 {
        if micros.is_empty() {
            return 0;
        }
        let i = ((micros.len() as f64 * p).ceil() as usize).clamp(1, micros.len());
        micros[i - 1]
    };
    serde_json::json!({
        "count": all.len(),
        "unique": seen.ids.len(),
        "first_ns": all.iter().map(|(at, _)| *at).min().unwrap_or(0),
        "last_ns": all.iter().map(|(at, _)| *at).max().unwrap_or(0),
        "latency_us": {
            "n": micros.len(),
            "p50": pct(0.50),
            "p99": pct(0.99),
            "max": micros.last().copied().unwrap_or(0),
        },
    })
}
