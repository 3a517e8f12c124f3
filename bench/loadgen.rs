//! The load generator of `bench/load.sh`: posts one signed GitHub push over N keep-alive HTTP/1.1
//! connections, either closed-loop (each connection sends its next request as soon as the previous one
//! is answered, for a duration, like wrk) or open-loop at a fixed rate (`--rate`: request `i` is due at
//! `start + i / rate` whatever the server does, so a slow server cannot slow the load down).
//!
//! Every request carries its due time in its delivery id, `X-GitHub-Delivery: <random>-lat-<unix
//! nanos>-<i>`; the gateway forwards the id as `X-Hookgate-Delivery` and `bench/sink.rs` subtracts it
//! from the arrival time. The random part comes first, as in GitHub's GUIDs: the gateway's dedup
//! index sees ids in no order, not one increasing sequence (which a B-tree appends to for free). Latencies are measured from the due time, not from when a free connection sent the request, so
//! a server that falls behind shows up in them (no coordinated omission).
//!
//! Prints one JSON object: requests answered, by status, errors, elapsed seconds, and response latency
//! percentiles. Runs on one thread (pin it with `taskset`).
//!
//! `cargo run --release --example loadgen -- --url http://127.0.0.1:8080/hook/acme --body push.json
//!  --secret S [--connections 32] [--duration 10] [--rate 5000]`

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use clap::Parser;
use hmac::{Hmac, Mac};
use http_body_util::{BodyExt, Full};
use hyper::Request;
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;

#[derive(Parser)]
#[command(about = "closed- or open-loop load of signed GitHub pushes, for bench/load.sh")]
struct Args {
    /// e.g. http://127.0.0.1:8080/hook/acme (plain HTTP only)
    #[arg(long)]
    url: String,
    /// The payload file, sent as is.
    #[arg(long)]
    body: std::path::PathBuf,
    /// The GitHub webhook secret to sign with (HMAC-SHA256).
    #[arg(long)]
    secret: String,
    #[arg(long, default_value = "push")]
    event: String,
    #[arg(long, default_value_t = 32)]
    connections: usize,
    /// Seconds of load.
    #[arg(long, default_value_t = 10.0)]
    duration: f64,
    /// Requests per second (open loop); without it, closed loop.
    #[arg(long)]
    rate: Option<f64>,
}

/// What one connection saw.
#[derive(Default)]
struct Tally {
    by_status: BTreeMap<u16, u64>,
    errors: u64,
    /// Open loop: requests sent more than 1 ms after they were due (all connections were busy).
    late: u64,
    /// Response time of each answered request, in microseconds from its due time.
    micros: Vec<u32>,
}

struct Load {
    host: String,
    addr: String,
    path: String,
    body: Bytes,
    signature: String,
    /// GitHub still sends the SHA-1 signature beside the SHA-256 one.
    signature_sha1: String,
    event: String,
}

fn main() {
    let args = Args::parse();
    let Some(rest) = args.url.strip_prefix("http://") else {
        eprintln!("error: `{}` is not an http:// URL", args.url);
        std::process::exit(2);
    };
    let (addr, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    let body = match std::fs::read(&args.body) {
        Ok(b) => Bytes::from(b),
        Err(e) => {
            eprintln!("error: cannot read `{}`: {e}", args.body.display());
            std::process::exit(2);
        }
    };
    let mut mac = Hmac::<sha2::Sha256>::new_from_slice(args.secret.as_bytes()).expect("any key");
    mac.update(&body);
    let mut sha1 = Hmac::<sha1::Sha1>::new_from_slice(args.secret.as_bytes()).expect("any key");
    sha1.update(&body);
    let load = Arc::new(Load {
        host: addr.to_string(),
        addr: addr.to_string(),
        path: path.to_string(),
        signature: format!("sha256={}", hex::encode(mac.finalize().into_bytes())),
        signature_sha1: format!("sha1={}", hex::encode(sha1.finalize().into_bytes())),
        body,
        event: args.event.clone(),
    });
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let report = runtime.block_on(run(load, &args));
    println!("{report}");
}

async fn run(load: Arc<Load>, args: &Args) -> serde_json::Value {
    let duration = Duration::from_secs_f64(args.duration);
    let total = args.rate.map(|r| (r * args.duration).round() as u64);
    let interval = args.rate.map(|r| Duration::from_secs_f64(1.0 / r));
    let next = Arc::new(AtomicU64::new(0));
    // Connect everything before the clock starts.
    let mut senders = Vec::with_capacity(args.connections);
    for _ in 0..args.connections {
        match connect(&load.addr).await {
            Ok(s) => senders.push(s),
            Err(e) => {
                eprintln!("error: cannot connect to {}: {e}", load.addr);
                std::process::exit(1);
            }
        }
    }
    let start = Instant::now();
    let epoch = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock after 1970")
        .as_nanos() as u64;
    let mut tasks = tokio::task::JoinSet::new();
    for sender in senders {
        let (load, next) = (load.clone(), next.clone());
        tasks.spawn(async move {
            let mut sender = Some(sender);
            let mut tally = Tally::default();
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                let due = match (total, interval) {
                    (Some(total), Some(interval)) => {
                        if i >= total {
                            break;
                        }
                        let due = start + interval.mul_f64(i as f64);
                        let now = Instant::now();
                        if due > now {
                            tokio::time::sleep_until(due.into()).await;
                        } else if now - due > Duration::from_millis(1) {
                            tally.late += 1;
                        }
                        due
                    }
                    _ => {
                        let now = Instant::now();
                        if now - start >= duration {
                            break;
                        }
                        now
                    }
                };
                let id = format!(
                    "{:08x}-lat-{}-{i}",
                    uuid::Uuid::new_v4().as_u128() as u32,
                    epoch + (due - start).as_nanos() as u64
                );
                if sender.is_none() {
                    sender = connect(&load.addr).await.ok();
                }
                let Some(s) = sender.as_mut() else {
                    tally.errors += 1;
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    continue;
                };
                // The headers GitHub sends with a push (the fixture's `.headers.json`, plus `Accept`
                // and the two signatures), in its order.
                let request = Request::post(load.path.as_str())
                    .header("host", load.host.as_str())
                    .header("user-agent", "GitHub-Hookshot/044aadd")
                    .header("accept", "*/*")
                    .header("x-github-delivery", id)
                    .header("x-github-event", load.event.as_str())
                    .header("x-github-hook-id", "109948940")
                    .header("x-github-hook-installation-target-id", "186853002")
                    .header("x-github-hook-installation-target-type", "repository")
                    .header("x-hub-signature", load.signature_sha1.as_str())
                    .header("x-hub-signature-256", load.signature.as_str())
                    .header("content-type", "application/json")
                    .body(Full::new(load.body.clone()))
                    .expect("request");
                let answered = match s.ready().await {
                    Ok(()) => match s.send_request(request).await {
                        Ok(response) => {
                            let status = response.status().as_u16();
                            response.into_body().collect().await.ok().map(|_| status)
                        }
                        Err(_) => None,
                    },
                    Err(_) => None,
                };
                match answered {
                    Some(status) => {
                        *tally.by_status.entry(status).or_default() += 1;
                        let us = due.elapsed().as_micros().min(u32::MAX as u128) as u32;
                        tally.micros.push(us);
                    }
                    None => {
                        tally.errors += 1;
                        sender = None;
                    }
                }
            }
            tally
        });
    }
    let mut all = Tally::default();
    while let Some(t) = tasks.join_next().await {
        let t = t.expect("connection task");
        for (status, n) in t.by_status {
            *all.by_status.entry(status).or_default() += n;
        }
        all.errors += t.errors;
        all.late += t.late;
        all.micros.extend(t.micros);
    }
    let elapsed = start.elapsed().as_secs_f64();
    all.micros.sort_unstable();
    let pct = |p: f64| -> u32 {
        if all.micros.is_empty() {
            return 0;
        }
        let i = ((all.micros.len() as f64 * p).ceil() as usize).clamp(1, all.micros.len());
        all.micros[i - 1]
    };
    let answered: u64 = all.by_status.values().sum();
    // This process's own CPU, to show the generator is not the bottleneck.
    let cpu_ns: u64 = std::fs::read_to_string("/proc/self/schedstat")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse().ok())
        .unwrap_or(0);
    serde_json::json!({
        "answered": answered,
        "by_status": all.by_status.iter().map(|(k, v)| (k.to_string(), *v)).collect::<BTreeMap<_, _>>(),
        "errors": all.errors,
        "late": all.late,
        "start_ns": epoch,
        "client_cpu_ns": cpu_ns,
        "elapsed_s": elapsed,
        "rps": answered as f64 / elapsed,
        "response_us": { "p50": pct(0.50), "p99": pct(0.99), "max": all.micros.last().copied().unwrap_or(0) },
    })
}

async fn connect(addr: &str) -> std::io::Result<SendRequest<Full<Bytes>>> {
    let stream = tokio::net::TcpStream::connect(addr).await?;
    stream.set_nodelay(true)?;
    let (sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(std::io::Error::other)?;
    tokio::spawn(connection);
    Ok(sender)
}
