//! Test harness pieces shared by the integration tests: a loopback HTTP sink and rules helpers.

#![allow(dead_code, unreachable_pub)]

pub mod browser;
pub mod idempotency;
pub mod pg;
pub mod requests;
pub mod serve;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::{Request, Response};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::sync::Notify;

/// A request the sink received.
#[derive(Debug, Clone)]
pub struct Received {
    pub method: String,
    pub path: String,
    /// Lowercase names.
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
    pub at: Instant,
}

impl Received {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }
}

/// How the sink answers one request.
#[derive(Clone)]
pub struct Reply {
    pub status: u16,
    pub headers: Vec<(&'static str, String)>,
    /// Wait this long before answering.
    pub delay: Duration,
    /// Wait for this to be notified before answering.
    pub gate: Option<Arc<Notify>>,
}

impl Reply {
    pub fn status(status: u16) -> Reply {
        Reply {
            status,
            headers: Vec::new(),
            delay: Duration::ZERO,
            gate: None,
        }
    }
}

type Script = Arc<dyn Fn(usize, &Received) -> Reply + Send + Sync>;

/// An HTTP server on 127.0.0.1 that records what it receives.
pub struct Sink {
    pub addr: SocketAddr,
    received: Arc<Mutex<Vec<Received>>>,
    arrived: Arc<Notify>,
    inflight: Arc<InFlight>,
}

/// Requests received and not yet answered, and the most there were at once.
#[derive(Default)]
struct InFlight {
    now: AtomicUsize,
    peak: AtomicUsize,
}

/// Counts one request in flight until dropped: answered, or abandoned by its client.
struct Counted(Arc<InFlight>);

impl Counted {
    fn new(inflight: Arc<InFlight>) -> Counted {
        let now = inflight.now.fetch_add(1, Ordering::SeqCst) + 1;
        inflight.peak.fetch_max(now, Ordering::SeqCst);
        Counted(inflight)
    }
}

impl Drop for Counted {
    fn drop(&mut self) {
        self.0.now.fetch_sub(1, Ordering::SeqCst);
    }
}

impl Sink {
    /// Starts a sink answering each request (numbered from 0) as `script` says.
    pub async fn start(script: impl Fn(usize, &Received) -> Reply + Send + Sync + 'static) -> Sink {
        let script: Script = Arc::new(script);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let received = Arc::new(Mutex::new(Vec::new()));
        let arrived = Arc::new(Notify::new());
        let inflight = Arc::new(InFlight::default());
        let (r, a, f) = (received.clone(), arrived.clone(), inflight.clone());
        tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    return;
                };
                let (script, received, arrived, inflight) =
                    (script.clone(), r.clone(), a.clone(), f.clone());
                tokio::spawn(async move {
                    let service =
                        hyper::service::service_fn(move |req: Request<hyper::body::Incoming>| {
                            let (script, received, arrived) =
                                (script.clone(), received.clone(), arrived.clone());
                            let counted = Counted::new(inflight.clone());
                            async move {
                                let (parts, body) = req.into_parts();
                                let body = body
                                    .collect()
                                    .await
                                    .map(|b| b.to_bytes().to_vec())
                                    .unwrap_or_default();
                                let got = Received {
                                    method: parts.method.to_string(),
                                    path: parts
                                        .uri
                                        .path_and_query()
                                        .map(|p| p.to_string())
                                        .unwrap_or_default(),
                                    headers: parts
                                        .headers
                                        .iter()
                                        .map(|(n, v)| {
                                            (
                                                n.as_str().to_string(),
                                                v.to_str().unwrap_or_default().to_string(),
                                            )
                                        })
                                        .collect(),
                                    body,
                                    at: Instant::now(),
                                };
                                let n = {
                                    let mut all = received.lock().unwrap();
                                    all.push(got.clone());
                                    all.len() - 1
                                };
                                arrived.notify_waiters();
                                let reply = script(n, &got);
                                if let Some(gate) = &reply.gate {
                                    gate.notified().await;
                                }
                                tokio::time::sleep(reply.delay).await;
                                drop(counted);
                                let mut response = Response::builder().status(reply.status);
                                for (name, value) in &reply.headers {
                                    response = response.header(*name, value);
                                }
                                Ok::<_, Infallible>(response.body(Full::new(Bytes::new())).unwrap())
                            }
                        });
                    let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        Sink {
            addr,
            received,
            arrived,
            inflight,
        }
    }

    /// Answers every request with `status`.
    pub async fn always(status: u16) -> Sink {
        Sink::start(move |_, _| Reply::status(status)).await
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    pub fn received(&self) -> Vec<Received> {
        self.received.lock().unwrap().clone()
    }

    /// The most requests it has held at once: received (headers read) and not yet answered.
    pub fn peak_inflight(&self) -> usize {
        self.inflight.peak.load(Ordering::SeqCst)
    }

    /// Waits until at least `n` requests arrived; false after `timeout`.
    pub async fn wait_for(&self, n: usize, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        loop {
            let notified = self.arrived.notified();
            if self.received.lock().unwrap().len() >= n {
                return true;
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return false;
            }
            let _ = tokio::time::timeout(left, notified).await;
        }
    }
}

/// A queue job of `kind` for `target` (with a coalescing `key` for checks), from a push of `acme`.
pub fn job(
    kind: hookgate::queue::JobKind,
    target: &str,
    key: Option<&str>,
) -> hookgate::queue::NewJob {
    hookgate::queue::NewJob {
        kind,
        target: target.into(),
        key: key.map(String::from),
        source: "acme".into(),
        event: Some("push".into()),
        delivery: "d-1".into(),
        rule: "r".into(),
        action: 0,
        body: b"{}".to_vec(),
        headers: vec![("content-type".into(), "application/json".into())],
        sign_with: None,
    }
}

/// Compiles rules text with placeholder secrets replaced by the given values.
pub fn compile(text: &str, secrets: &[(&str, &str)]) -> hookgate::ruleset::RuleSet {
    struct Fixed(Vec<(String, String)>);
    impl hookgate::compile::Secrets for Fixed {
        fn load(
            &self,
            name: &str,
            _: hookgate::compile::SecretRef<'_>,
        ) -> Result<hookgate::ruleset::SecretValue, String> {
            let value = self
                .0
                .iter()
                .find(|(n, _)| n == name)
                .map_or("test-secret", |(_, v)| v.as_str());
            Ok(hookgate::ruleset::SecretValue::new(
                name,
                value.as_bytes().to_vec(),
            ))
        }
    }
    let secrets = Fixed(
        secrets
            .iter()
            .map(|(n, v)| (n.to_string(), v.to_string()))
            .collect(),
    );
    let loaded = hookgate::load::load_text("test.hook", None, text.as_bytes(), &secrets);
    match loaded.result {
        Ok(c) => c.rules,
        Err(d) => panic!("{}", d.render(&loaded.files, false)),
    }
}
