//! The baseline for `bench/load.sh`: the least a webhook receiver can do — read the body, check its
//! GitHub HMAC-SHA256 signature (constant time), parse it as JSON, answer 200. hyper, like the gateway.
//!
//! `cargo run --release --example minimal-server -- ADDR SECRET`

use std::convert::Infallible;

use bytes::Bytes;
use hmac::{Hmac, Mac};
use http_body_util::{BodyExt, Full};
use hyper::{Request, Response};
use hyper_util::rt::{TokioExecutor, TokioIo};

#[tokio::main]
async fn main() {
    let mut args = std::env::args().skip(1);
    let addr = args.next().expect("usage: minimal-server ADDR SECRET");
    let secret: &'static [u8] = args
        .next()
        .expect("usage: minimal-server ADDR SECRET")
        .into_bytes()
        .leak();
    let listener = tokio::net::TcpListener::bind(&addr).await.expect("bind");
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let _ = stream.set_nodelay(true);
        tokio::spawn(async move {
            let service =
                hyper::service::service_fn(move |req: Request<hyper::body::Incoming>| async move {
                    let signature = req
                        .headers()
                        .get("x-hub-signature-256")
                        .and_then(|v| v.to_str().ok())
                        .and_then(|v| v.strip_prefix("sha256="))
                        .and_then(|v| hex::decode(v).ok());
                    let body = req
                        .into_body()
                        .collect()
                        .await
                        .map(|b| b.to_bytes())
                        .unwrap_or_default();
                    let mut mac =
                        Hmac::<sha2::Sha256>::new_from_slice(secret).expect("any key length");
                    mac.update(&body);
                    let status = match signature {
                        Some(sig) if mac.verify_slice(&sig).is_ok() => {
                            match serde_json::from_slice::<serde_json::Value>(&body) {
                                Ok(v) => {
                                    std::hint::black_box(v);
                                    200
                                }
                                Err(_) => 400,
                            }
                        }
                        _ => 401,
                    };
                    let response = Response::builder()
                        .status(status)
                        .body(Full::new(Bytes::from_static(b"{}")))
                        .expect("response");
                    Ok::<_, Infallible>(response)
                });
            let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}
