//! The hook and admin HTTP servers: hyper glue, limits, graceful shutdown.
//!
//! `serve` takes its listener and its shutdown future, so tests bind `127.0.0.1:0` and stop it when
//! they like. The hook port routes by path, checks the credentials the headers carry, enforces the body
//! limits while reading, and hands complete requests to `handler`; the admin port serves `admin`.
//!
//! Limits, each with a default (flags of `gateway serve`, `docs/operations.md`):
//! - **Connections** are capped per port. A connection is *idle* while no request of it is being served:
//!   before its first request, between keep-alive requests, an HTTP/2 connection without streams. An idle
//!   connection is closed after `header_timeout` if it never started a request (whatever it sent: nothing,
//!   one byte, an HTTP/2 preface) and after `idle_timeout` between requests. At the cap, a new connection
//!   evicts the longest-idle one, so idle connections can never keep a request out.
//! - **Time**: HTTP/1 headers within `header_timeout`; a whole request within `request_timeout`.
//! - **Memory**: a body over its source's `max_body` is refused (from `Content-Length` and while reading);
//!   the bytes of all bodies being read at once stay within `max_body_in_flight`, past which requests are
//!   answered 503 with `Retry-After`; a request whose signature or token header is missing, malformed or
//!   stale is refused before its body is read.

pub mod admin;
pub mod handler;
mod run;

pub use run::{Config, Listeners, RunError, run};

use std::collections::HashMap;
use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use http::{Method, Request, Response};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore};
use tracing::Instrument;

use crate::delivery_log::{DeliveryLog, Record};
use crate::pairs::Pairs;
use crate::prepare::Head;
use crate::queue::Queue;
use crate::reload::RuleStore;
use handler::Reject;

/// Runtime limits of the hook port (flags of `gateway serve`).
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// Largest body, unless the source sets `max_body`.
    pub max_body: u64,
    /// Bytes of request bodies being read at once, over all requests; past it, 503.
    pub max_body_in_flight: u64,
    /// HTTP/1 request headers must arrive within this, and a connection must start its first request
    /// within it.
    pub header_timeout: Duration,
    /// An idle keep-alive connection (HTTP/1 between requests, HTTP/2 without streams) closes after this.
    pub idle_timeout: Duration,
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
            max_body_in_flight: 64 << 20,
            header_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(60),
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
    /// The body budget: one permit per byte being read (`max_body_in_flight`).
    pub body_budget: Arc<Semaphore>,
    /// What became of every request.
    pub log: Arc<DeliveryLog>,
    /// `--admin-token-file`: the bearer token `/api/*` and `POST /-/reload` require.
    pub admin_token: Option<Vec<u8>>,
}

impl State {
    /// Builds the state, with a body budget of `config.max_body_in_flight` bytes.
    pub fn new(
        store: Arc<RuleStore>,
        queue: Arc<Queue>,
        wake: Arc<Notify>,
        config: ServerConfig,
        log: Arc<DeliveryLog>,
    ) -> State {
        let budget = body_budget_permits(config.max_body_in_flight);
        State {
            store,
            queue,
            wake,
            config,
            limits: Default::default(),
            body_budget: Arc::new(Semaphore::new(budget)),
            log,
            admin_token: None,
        }
    }

    /// Bytes of bodies being read now, held against the body budget.
    pub(crate) fn body_bytes_in_flight(&self) -> u64 {
        let total = body_budget_permits(self.config.max_body_in_flight);
        total.saturating_sub(self.body_budget.available_permits()) as u64
    }
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
        |s, r| Box::pin(async move { admin::handle(&s, r).await }),
        shutdown,
    )
    .await;
}

/// One connection's standing, shared by its task, its service and the accept loop.
struct Conn {
    /// Requests being served.
    active: AtomicUsize,
    /// Milliseconds since the server started when the connection last became idle.
    idle_since: AtomicU64,
    /// Whether a request has started on it yet.
    served: AtomicUsize,
    /// Asks the connection to close if it is idle (eviction).
    evict: Notify,
}

/// The connections of one port, for eviction.
struct Conns {
    epoch: Instant,
    next: AtomicU64,
    all: Mutex<HashMap<u64, Arc<Conn>>>,
}

impl Conns {
    fn now_ms(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64
    }

    fn add(&self) -> (u64, Arc<Conn>) {
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        let conn = Arc::new(Conn {
            active: AtomicUsize::new(0),
            idle_since: AtomicU64::new(self.now_ms()),
            served: AtomicUsize::new(0),
            evict: Notify::new(),
        });
        lock(&self.all).insert(id, conn.clone());
        (id, conn)
    }

    fn remove(&self, id: u64) {
        lock(&self.all).remove(&id);
    }

    /// Asks the longest-idle connection to close; false if none is idle.
    fn evict_idle(&self) -> bool {
        let all = lock(&self.all);
        let idlest = all
            .values()
            .filter(|c| c.active.load(Ordering::Acquire) == 0)
            .min_by_key(|c| c.idle_since.load(Ordering::Relaxed));
        match idlest {
            Some(conn) => {
                conn.evict.notify_one();
                true
            }
            None => false,
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Counts a request as active on its connection until dropped.
struct Active {
    conn: Arc<Conn>,
    conns: Arc<Conns>,
}

impl Active {
    fn start(conn: Arc<Conn>, conns: Arc<Conns>) -> Active {
        conn.active.fetch_add(1, Ordering::AcqRel);
        conn.served.store(1, Ordering::Relaxed);
        Active { conn, conns }
    }
}

impl Drop for Active {
    fn drop(&mut self) {
        self.conn
            .idle_since
            .store(self.conns.now_ms(), Ordering::Relaxed);
        self.conn.active.fetch_sub(1, Ordering::AcqRel);
    }
}

async fn serve(
    listener: TcpListener,
    state: Arc<State>,
    handler: Handler,
    shutdown: impl Future<Output = ()>,
) {
    tokio::pin!(shutdown);
    let config = &state.config;
    let slots = Arc::new(Semaphore::new(config.max_connections));
    let conns = Arc::new(Conns {
        epoch: Instant::now(),
        next: AtomicU64::new(0),
        all: Mutex::new(HashMap::new()),
    });
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let mut tasks = tokio::task::JoinSet::new();
    let mut builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(config.header_timeout);
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_concurrent_streams(MAX_STREAMS)
        .max_header_list_size(MAX_HEADER_LIST);
    let builder = Arc::new(builder);
    loop {
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
            Some(_) = tasks.join_next(), if !tasks.is_empty() => continue,
        };
        // At the cap, make room by closing an idle connection; wait at most a header timeout for it.
        let permit = match slots.clone().try_acquire_owned() {
            Ok(p) => p,
            Err(_) => {
                let evicted = conns.evict_idle();
                let wait =
                    tokio::time::timeout(config.header_timeout, slots.clone().acquire_owned());
                match wait.await {
                    Ok(Ok(p)) => p,
                    _ => {
                        tracing::warn!(%peer, evicted, limit = config.max_connections, "connection refused: at the connection limit");
                        continue;
                    }
                }
            }
        };
        let _ = stream.set_nodelay(true);
        let (id, conn) = conns.add();
        let service = {
            let (state, conn, conns) = (state.clone(), conn.clone(), conns.clone());
            hyper::service::service_fn(move |req: Request<Incoming>| {
                let active = Active::start(conn.clone(), conns.clone());
                let state = state.clone();
                async move {
                    let response = handler(state, req).await;
                    drop(active);
                    Ok::<_, Infallible>(response)
                }
            })
        };
        let (builder, conns, mut stop, timeouts) = (
            builder.clone(),
            conns.clone(),
            stop_rx.clone(),
            (config.header_timeout, config.idle_timeout),
        );
        tasks.spawn(async move {
            let served = builder.serve_connection(TokioIo::new(stream), service);
            tokio::pin!(served);
            let mut stopping = false;
            loop {
                // Idle connections close at their deadline; busy ones are left to the request timeout.
                let idle = conn.active.load(Ordering::Acquire) == 0;
                let limit = if conn.served.load(Ordering::Relaxed) == 0 { timeouts.0 } else { timeouts.1 };
                let since = conn.idle_since.load(Ordering::Relaxed);
                let deadline = conns.epoch + Duration::from_millis(since) + limit;
                tokio::select! {
                    result = served.as_mut() => {
                        if let Err(e) = result {
                            tracing::debug!(%peer, error = %e, "connection ended with an error");
                        }
                        break;
                    }
                    () = tokio::time::sleep_until(deadline.into()), if idle => {
                        if conn.active.load(Ordering::Acquire) == 0
                            && conn.idle_since.load(Ordering::Relaxed) == since
                        {
                            tracing::debug!(%peer, "idle connection closed");
                            break;
                        }
                    }
                    () = conn.evict.notified() => {
                        if conn.active.load(Ordering::Acquire) == 0 {
                            tracing::debug!(%peer, "idle connection evicted at the connection limit");
                            break;
                        }
                    }
                    _ = stop.changed(), if !stopping => {
                        stopping = true;
                        served.as_mut().graceful_shutdown();
                    }
                }
            }
            conns.remove(id);
            drop(permit);
        });
    }
    drop(listener);
    let _ = stop_tx.send(true);
    let grace = state.config.shutdown_grace;
    if tokio::time::timeout(grace, async { while tasks.join_next().await.is_some() {} })
        .await
        .is_err()
    {
        tracing::warn!("shutdown: some requests did not finish within the grace period");
    }
}

/// HTTP/2 streams served at once on one connection.
const MAX_STREAMS: u32 = 64;
/// The largest HTTP/2 header block.
const MAX_HEADER_LIST: u32 = 64 << 10;

/// Routes a hook request and answers it within the request timeout, in a span that every log line of
/// the request carries; counts it and records it in the delivery log.
async fn hook(state: Arc<State>, req: Request<Incoming>) -> Response<Full<Bytes>> {
    let started = Instant::now();
    // One snapshot for the whole request: a reload meanwhile does not change what it sees.
    let rules = state.store.snapshot();
    let routed = rules.source_index(req.uri().path());
    let label = routed.map_or("", |i| rules.sources()[i].name());
    // Read before the span is made, so that it is made with the event and delivery id where the
    // provider names them in headers (recording a field later formats the span's fields again).
    let parts = routed.map(|i| Parts::read(&rules.sources()[i], &req));
    let head = parts.as_ref().and_then(|p| p.head.as_ref());
    let event = head.and_then(Head::valid_event);
    let delivery = head.and_then(Head::valid_delivery);
    let span = tracing::info_span!("request", source = label, event, delivery);
    let mut record = Record::new(routed.map(|_| label.to_string()));
    record.event = event.map(String::from);
    record.delivery = delivery.map(String::from);
    let timeout = state.config.request_timeout;
    let response = async {
        match tokio::time::timeout(
            timeout,
            hook_inner(&state, &rules, routed, req, parts, &mut record),
        )
        .await
        {
            Ok(response) => response,
            Err(_) => {
                handler::refuse(&mut record, Reject::Timeout, "request timeout");
                Reject::Timeout.response()
            }
        }
    }
    .instrument(span)
    .await;
    let status = response.status().as_u16();
    crate::metrics::request(label, status, started.elapsed().as_secs_f64());
    record.status = status;
    state.log.append(record);
    response
}

/// What a routed request's head says, read once: its headers and query as the pipeline passes them,
/// and the event and delivery id where the provider names them in headers (so that a refused request
/// is logged and recorded with them too, and a 401 can be matched with the sender's delivery log;
/// `prepare` checks them, and only the ones it would accept go into the span and the record).
struct Parts {
    headers: Pairs,
    query: Pairs,
    head: Option<Head>,
}

impl Parts {
    fn read(source: &crate::ruleset::Source, req: &Request<Incoming>) -> Parts {
        let headers = header_pairs(req.headers());
        let query: Pairs = req
            .uri()
            .query()
            .map(|q| form_urlencoded::parse(q.as_bytes()).collect())
            .unwrap_or_default();
        let head = Head::read(source.kind(), &headers, &query);
        Parts {
            headers,
            query,
            head,
        }
    }
}

async fn hook_inner(
    state: &State,
    rules: &Arc<crate::ruleset::RuleSet>,
    routed: Option<usize>,
    req: Request<Incoming>,
    parts: Option<Parts>,
    record: &mut Record,
) -> Response<Full<Bytes>> {
    let (
        Some(index),
        Some(Parts {
            headers,
            query,
            head,
        }),
    ) = (routed, parts)
    else {
        let path = req.uri().path();
        tracing::debug!(path = %truncate(path), "no source at this path");
        return handler::refuse(record, Reject::NotFound, "no source at this path").response();
    };
    let source = &rules.sources()[index];
    if req.method() != Method::POST {
        return handler::refuse(record, Reject::MethodNotAllowed, "method not allowed").response();
    }
    let limit = source.max_body().unwrap_or(state.config.max_body);
    let declared = req
        .headers()
        .get(http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
    if declared.is_some_and(|n| n > limit) {
        return handler::refuse(record, Reject::TooLarge, "body too large").response();
    }
    // Credentials first: a request without a well-formed signature or token is refused unread.
    let precheck = crate::verify::Request {
        headers: &headers,
        query: &query,
        body: &[],
        // Timestamps are checked against when the request came in.
        now: record.received_at / 1000,
        headers_only: true,
    };
    if let Err(failure) = crate::verify::verify(source, &precheck) {
        crate::metrics::verification_failure(source.name(), failure.as_str());
        record.request = Some(handler::recorded(source, headers, query, None));
        return handler::refuse(record, Reject::Unauthorized, failure.reason()).response();
    }
    let (body, _budget) = match read_body(state, req.into_body(), declared, limit).await {
        Ok(read) => read,
        Err((reject, reason)) => return handler::refuse(record, reject, reason).response(),
    };
    handler::handle(
        state,
        rules,
        handler::Incoming {
            source: index,
            head,
            headers,
            query,
            body,
        },
        record,
    )
    .await
}

/// The permits of a body budget of `bytes`, one per byte (as many as a semaphore holds at most).
fn body_budget_permits(bytes: u64) -> usize {
    usize::try_from(bytes)
        .unwrap_or(usize::MAX)
        .min(Semaphore::MAX_PERMITS)
}

/// The most a body's buffer takes before its bytes arrive, whatever length it declares.
const FIRST_BUFFER: u64 = 64 << 10;

/// Reads a body of at most `limit` bytes, holding a permit from the body budget for every byte read
/// until the request is done.
async fn read_body(
    state: &State,
    mut body: Incoming,
    declared: Option<u64>,
    limit: u64,
) -> Result<(Bytes, Option<OwnedSemaphorePermit>), (Reject, &'static str)> {
    let budget = &state.body_budget;
    let take = |n: u64, held: &mut Option<OwnedSemaphorePermit>| {
        if n == 0 {
            return Ok(());
        }
        let n = u32::try_from(n).map_err(|_| (Reject::TooLarge, "body too large"))?;
        match budget.clone().try_acquire_many_owned(n) {
            Ok(p) => {
                match held {
                    Some(h) => h.merge(p),
                    None => *held = Some(p),
                }
                Ok(())
            }
            Err(_) => {
                tracing::warn!(
                    budget = state.config.max_body_in_flight,
                    "the bodies in flight fill the body budget"
                );
                Err((Reject::Overloaded, "body budget exhausted"))
            }
        }
    };
    let mut held = None;
    // Bytes are reserved as they arrive, whatever the request declares: a declared length is the
    // sender's word, and reserving it up front let a few unsigned requests that declare 10 MiB and send
    // a byte hold the whole budget (every sender answered 503) until their request timeout.
    let mut buf = BytesMut::with_capacity(declared.unwrap_or(0).min(FIRST_BUFFER) as usize);
    while let Some(frame) = body.frame().await {
        let frame = match frame {
            Ok(f) => f,
            Err(e) => {
                tracing::debug!(error = %e, "body not received");
                return Err((Reject::IncompleteBody, "body not received"));
            }
        };
        let Ok(data) = frame.into_data() else {
            continue; // Trailers.
        };
        if buf.len() as u64 + data.len() as u64 > limit {
            return Err((Reject::TooLarge, "body too large"));
        }
        take(data.len() as u64, &mut held)?;
        buf.extend_from_slice(&data);
    }
    Ok((buf.freeze(), held))
}

/// Request headers as the pipeline sees them: lowercase names, values decoded as UTF-8 (invalid bytes
/// become U+FFFD; `prepare` refuses a delivery id that lost bytes that way).
fn header_pairs(headers: &http::HeaderMap) -> Pairs {
    let bytes = headers
        .iter()
        .map(|(n, v)| n.as_str().len() + v.len())
        .sum();
    let mut pairs = Pairs::with_capacity(headers.len(), bytes);
    for (name, value) in headers {
        pairs.push(name.as_str(), &String::from_utf8_lossy(value.as_bytes()));
    }
    pairs
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
