//! `gateway serve` as a process, tried the way an attacker or a careless operator would: idle
//! connection floods, huge bodies, load with JSON logs, every documented metric, a second process on
//! the same data directory, a damaged queue.

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use hookgate::ruleset::HmacAlgorithm;
use hookgate::signature::hmac;
use support::Sink;
use support::serve::Serve;

const SECRET: &str = "hardening-secret";

/// Writes a rules file (GitHub source `acme` with secret file) and returns (dir, rules path, data dir).
fn setup(extra: &str) -> (tempfile::TempDir, PathBuf, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let secret = dir.path().join("secret");
    std::fs::write(&secret, SECRET).unwrap();
    let rules = dir.path().join("rules.hook");
    std::fs::write(
        &rules,
        format!(
            "secret gh = file(\"{}\")\nsource acme: github {{ secret gh }}\n{extra}",
            secret.display()
        ),
    )
    .unwrap();
    let data = dir.path().join("data");
    (dir, rules, data)
}

fn signature(body: &[u8]) -> String {
    format!(
        "sha256={}",
        hex::encode(hmac(HmacAlgorithm::Sha256, SECRET.as_bytes(), &[body]))
    )
}

/// A push to `repo` with delivery id `id`, signed: (headers, body).
fn push(repo: &str, id: &str) -> (Vec<(String, String)>, Vec<u8>) {
    let body = format!(
        r#"{{"ref":"refs/heads/main","repository":{{"full_name":"{repo}"}},"head_commit":{{"message":"m"}}}}"#
    )
    .into_bytes();
    let headers = vec![
        ("content-type".into(), "application/json".into()),
        ("x-github-event".into(), "push".into()),
        ("x-github-delivery".into(), id.into()),
        ("x-hub-signature-256".into(), signature(&body)),
    ];
    (headers, body)
}

/// One HTTP/1.1 request on a fresh connection; returns the status line's code and the whole response.
fn raw_request(addr: SocketAddr, head: &str, body: &[u8]) -> std::io::Result<(u16, String)> {
    let mut s = TcpStream::connect(addr)?;
    s.set_read_timeout(Some(Duration::from_secs(20)))?;
    s.write_all(head.as_bytes())?;
    s.write_all(body)?;
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    let text = String::from_utf8_lossy(&out).into_owned();
    let code = text
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    Ok((code, text))
}

/// A signed push to `repo` with delivery id `id`, sent to `acme` on a fresh connection: (code, response).
fn send_push(addr: SocketAddr, repo: &str, id: &str) -> (u16, String) {
    let (headers, body) = push(repo, id);
    raw_request(addr, &post_head("/hook/acme", &headers, body.len()), &body).unwrap()
}

fn post_head(path: &str, headers: &[(String, String)], len: usize) -> String {
    let mut head = format!(
        "POST {path} HTTP/1.1\r\nhost: gw\r\nconnection: close\r\ncontent-length: {len}\r\n"
    );
    for (n, v) in headers {
        head.push_str(&format!("{n}: {v}\r\n"));
    }
    head.push_str("\r\n");
    head
}

/// Reads until the peer closes the connection (EOF or reset); false if it is still open after `limit`.
fn closed_by_peer(mut s: TcpStream, limit: Duration) -> bool {
    s.set_read_timeout(Some(limit)).unwrap();
    let mut buf = [0u8; 1024];
    loop {
        match s.read(&mut buf) {
            Ok(0) => return true,
            Ok(_) => continue, // A response (e.g. 408); keep reading until the close.
            Err(e)
                if e.kind() == std::io::ErrorKind::WouldBlock
                    || e.kind() == std::io::ErrorKind::TimedOut =>
            {
                return false;
            }
            Err(_) => return true, // Reset.
        }
    }
}

const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

#[test]
fn idle_connections_beyond_the_cap_never_keep_a_signed_request_out() {
    let (_dir, rules, data) = setup("");
    // Timeouts far longer than the test: only eviction can make room.
    let gw = Serve::start(
        &rules,
        &data,
        &[
            "--max-connections",
            "32",
            "--header-timeout",
            "120s",
            "--idle-timeout",
            "120s",
        ],
        &[],
    );
    let mut idle = Vec::new();
    for i in 0..200 {
        let mut s = TcpStream::connect(gw.hooks).unwrap();
        match i % 5 {
            0 => {}                                                     // nothing
            1 => s.write_all(b"P").unwrap(), // one byte, a prefix of the HTTP/2 preface
            2 => s.write_all(H2_PREFACE).unwrap(), // the whole preface, then nothing
            3 => s.write_all(b"POST /hook/acme HTTP/1.1\r\n").unwrap(), // half a request head
            _ => {
                // A finished request, then the connection kept alive and idle.
                s.write_all(b"GET /nothing HTTP/1.1\r\nhost: gw\r\n\r\n")
                    .unwrap();
                let mut buf = [0u8; 256];
                let _ = s.read(&mut buf);
            }
        }
        idle.push(s);
    }
    let (headers, body) = push("acme/none", "flood-1");
    let started = Instant::now();
    let (code, response) = raw_request(
        gw.hooks,
        &post_head("/hook/acme", &headers, body.len()),
        &body,
    )
    .unwrap();
    assert_eq!(code, 200, "{response}");
    assert!(
        started.elapsed() < Duration::from_secs(15),
        "answered only after {:?}",
        started.elapsed()
    );
    drop(idle);
}

#[test]
fn idle_connections_close_at_their_deadlines() {
    let (_dir, rules, data) = setup("");
    let gw = Serve::start(
        &rules,
        &data,
        &["--header-timeout", "300ms", "--idle-timeout", "300ms"],
        &[],
    );
    let nothing = TcpStream::connect(gw.hooks).unwrap();
    let mut one_byte = TcpStream::connect(gw.hooks).unwrap();
    one_byte.write_all(b"P").unwrap();
    let mut preface = TcpStream::connect(gw.hooks).unwrap();
    preface.write_all(H2_PREFACE).unwrap();
    let mut kept_alive = TcpStream::connect(gw.hooks).unwrap();
    kept_alive
        .write_all(b"GET /nothing HTTP/1.1\r\nhost: gw\r\n\r\n")
        .unwrap();
    for (name, s) in [
        ("silent", nothing),
        ("one byte", one_byte),
        ("HTTP/2 preface", preface),
        ("keep-alive", kept_alive),
    ] {
        // Generous: the deadline is 300 ms; the bound only catches "never".
        assert!(
            closed_by_peer(s, Duration::from_secs(20)),
            "{name} connection was never closed"
        );
    }
}

#[test]
fn credentials_are_checked_before_the_body_is_read() {
    let (_dir, rules, data) = setup("");
    let gw = Serve::start(&rules, &data, &[], &[]);
    let ten_mib = 10 << 20;
    for headers in [
        vec![("x-github-event".to_string(), "push".to_string())],
        vec![("x-hub-signature-256".to_string(), "sha1=abc".to_string())],
    ] {
        // Only the head is sent: the answer must come without the body.
        let mut s = TcpStream::connect(gw.hooks).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
        s.write_all(post_head("/hook/acme", &headers, ten_mib).as_bytes())
            .unwrap();
        let mut buf = [0u8; 512];
        let n = s.read(&mut buf).unwrap();
        let text = String::from_utf8_lossy(&buf[..n]);
        assert!(text.starts_with("HTTP/1.1 401"), "{text}");
    }
}

#[test]
fn a_flood_of_huge_bodies_stays_within_the_body_budget() {
    let (_dir, rules, data) = setup("");
    let gw = Serve::start(&rules, &data, &["--max-body-in-flight", "32MiB"], &[]);
    let ten_mib = vec![b' '; 10 << 20];
    let addr = gw.hooks;
    let results: Vec<u16> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..150)
            .map(|i| {
                let body = &ten_mib;
                scope.spawn(move || {
                    // A third unsigned, the rest with a well-formed but wrong signature.
                    let mut headers = vec![("x-github-event".to_string(), "push".to_string())];
                    if i % 3 != 0 {
                        headers.push((
                            "x-hub-signature-256".into(),
                            format!("sha256={}", "0".repeat(64)),
                        ));
                    }
                    let head = post_head("/hook/acme", &headers, body.len());
                    let mut s = TcpStream::connect(addr).unwrap();
                    s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
                    s.write_all(head.as_bytes()).unwrap();
                    // The server may answer (and close) before taking the body: stop writing then.
                    let _ = s.write_all(body);
                    let mut out = [0u8; 256];
                    match s.read(&mut out) {
                        Ok(n) => String::from_utf8_lossy(&out[..n])
                            .split(' ')
                            .nth(1)
                            .and_then(|c| c.parse().ok())
                            .unwrap_or(0),
                        Err(_) => 0,
                    }
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let peak_mb = gw.peak_rss_kb() / 1024;
    let counts = results.iter().fold(BTreeMap::new(), |mut m, c| {
        *m.entry(*c).or_insert(0) += 1;
        m
    });
    // 150 × 10 MiB is 1.5 GiB; with a 32 MiB budget the process stays far below.
    assert!(peak_mb < 200, "peak RSS {peak_mb} MiB; answers {counts:?}");
    assert!(
        !counts.contains_key(&200) && !counts.contains_key(&202),
        "{counts:?}"
    );
    assert!(counts.get(&401).copied().unwrap_or(0) >= 50, "{counts:?}");
    // Still serving.
    let (code, _) = send_push(gw.hooks, "acme/none", "after-flood");
    assert_eq!(code, 200);
}

#[test]
fn bodies_that_declare_much_and_send_little_hold_only_what_they_sent() {
    let (_dir, rules, data) = setup("");
    let gw = Serve::start(&rules, &data, &["--max-body-in-flight", "32MiB"], &[]);
    // Unsigned senders (a well-formed but wrong signature passes the check of the head) declaring
    // 10 MiB each, four times the budget together, and sending one byte.
    let headers = vec![
        ("x-github-event".to_string(), "push".to_string()),
        (
            "x-hub-signature-256".into(),
            format!("sha256={}", "0".repeat(64)),
        ),
    ];
    let holders: Vec<TcpStream> = (0..12)
        .map(|_| {
            let mut s = TcpStream::connect(gw.hooks).unwrap();
            s.write_all(post_head("/hook/acme", &headers, 10 << 20).as_bytes())
                .unwrap();
            s.write_all(b" ").unwrap();
            s
        })
        .collect();
    // Their bodies are being read when the budget holds their bytes: one each.
    let in_flight = || {
        let (_, text) = raw_request(
            gw.admin,
            "GET /metrics HTTP/1.1\r\nhost: gw\r\nconnection: close\r\n\r\n",
            b"",
        )
        .unwrap();
        text.lines()
            .find_map(|l| l.strip_prefix("hookgate_body_bytes_in_flight "))
            .and_then(|v| v.trim().parse::<u64>().ok())
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let held = in_flight();
        if held == Some(holders.len() as u64) {
            break;
        }
        assert!(Instant::now() < deadline, "bytes in flight: {held:?}");
        std::thread::sleep(Duration::from_millis(20));
    }
    // A signed request still gets through.
    let (code, text) = send_push(gw.hooks, "acme/none", "while-held");
    assert_eq!(code, 200, "{text}");
    drop(holders);
}

/// Keys of one JSON object line, in order, with repeats kept (serde_json would keep only the last).
fn keys_with_repeats(line: &str) -> Vec<String> {
    struct Keys(Vec<String>);
    impl<'de> serde::de::Visitor<'de> for Keys {
        type Value = Vec<String>;
        fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("an object")
        }
        fn visit_map<A: serde::de::MapAccess<'de>>(
            mut self,
            mut map: A,
        ) -> Result<Vec<String>, A::Error> {
            while let Some(k) = map.next_key::<String>()? {
                map.next_value::<serde::de::IgnoredAny>()?;
                self.0.push(k);
            }
            Ok(self.0)
        }
    }
    let mut de = serde_json::Deserializer::from_str(line);
    serde::Deserializer::deserialize_map(&mut de, Keys(Vec::new()))
        .unwrap_or_else(|e| panic!("{e}: {line}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn under_load_every_log_line_belongs_to_its_request() {
    let sink = Sink::always(200).await;
    let refuses = Sink::always(400).await;
    let (_dir, rules, data) = setup(&format!(
        "target ci {{ post \"{}\" }}\ntarget broken {{ post \"{}\" }}\n\
         rule \"app\" {{ from acme on \"push\" when $.repository.full_name == \"acme/app\" notify ci {{\"r\": $.ref}} }}\n\
         rule \"lib\" {{ from acme on \"push\" when $.repository.full_name == \"acme/lib\" notify broken }}\n",
        sink.url("/ci"),
        refuses.url("/x")
    ));
    // A non-match logs at debug: ask for it, so every request has lines to check.
    let gw = Serve::start(&rules, &data, &[], &[("RUST_LOG", "info,hookgate=debug")]);
    let client = reqwest::Client::new();
    let mut sent_match = BTreeSet::new();
    let mut sent_miss = BTreeSet::new();
    let mut requests = Vec::new();
    for i in 0..400 {
        let (repo, id) = match i % 2 {
            0 => ("acme/app", format!("m-{i}")),
            _ => ("acme/other", format!("n-{i}")),
        };
        if i % 2 == 0 {
            sent_match.insert(id.clone())
        } else {
            sent_miss.insert(id.clone())
        };
        let (headers, body) = push(repo, &id);
        let mut r = client.post(gw.hook_url("/hook/acme")).body(body);
        for (n, v) in headers {
            r = r.header(n, v);
        }
        requests.push(r.send());
    }
    // All at once: many requests in flight on the gateway's workers at the same time.
    for status in futures_status(requests).await {
        assert!(status == 200 || status == 202, "{status}");
    }
    let (headers, body) = push("acme/lib", "dead-1");
    let mut r = client.post(gw.hook_url("/hook/acme")).body(body);
    for (n, v) in headers {
        r = r.header(n, v);
    }
    assert_eq!(r.send().await.unwrap().status(), 202);
    assert!(
        sink.wait_for(sent_match.len(), Duration::from_secs(60))
            .await
    );
    let dead = gw.wait_for_log(Duration::from_secs(30), |l| {
        l.contains("\"outcome\":\"dead\"")
    });
    assert!(dead.is_some(), "the refused delivery was not dead-lettered");
    let (code, logs) = tokio::task::spawn_blocking(move || gw.stop())
        .await
        .unwrap();
    assert_eq!(code, Some(0));

    let mut enqueued = Vec::new();
    let mut missed = Vec::new();
    for line in logs.iter().filter(|l| !l.is_empty()) {
        assert!(
            !line.contains('\u{1b}'),
            "colour codes in a log that is not a terminal: {line}"
        );
        let keys = keys_with_repeats(line);
        let distinct: BTreeSet<&String> = keys.iter().collect();
        assert_eq!(distinct.len(), keys.len(), "a repeated key: {line}");
        let v: serde_json::Value = serde_json::from_str(line).unwrap();
        let span = &v["span"];
        match v["message"].as_str().unwrap_or_default() {
            "enqueued" | "no rule matched" => {
                assert_eq!(span["name"], "request", "{line}");
                assert_eq!(span["source"], "acme", "{line}");
                assert_eq!(span["event"], "push", "{line}");
                let id = span["delivery"]
                    .as_str()
                    .unwrap_or_else(|| panic!("no delivery: {line}"));
                if v["message"] == "enqueued" {
                    enqueued.push(id.to_string())
                } else {
                    missed.push(id.to_string())
                }
            }
            "delivery attempt" if v["outcome"] == "dead" => {
                assert_eq!(v["level"], "WARN", "{line}")
            }
            "delivery attempt" => assert_eq!(v["level"], "INFO", "{line}"),
            _ => {}
        }
        assert!(!line.contains("panicked"), "{line}");
    }
    // Each request's lines carry its own delivery id: every id exactly once, none borrowed.
    enqueued.sort();
    missed.sort();
    let mut want_match: Vec<String> = sent_match.into_iter().collect();
    want_match.push("dead-1".into());
    want_match.sort();
    assert_eq!(enqueued, want_match);
    assert_eq!(missed, sent_miss.into_iter().collect::<Vec<_>>());
}

async fn futures_status(
    requests: Vec<
        impl std::future::Future<Output = reqwest::Result<reqwest::Response>> + Send + 'static,
    >,
) -> Vec<u16> {
    let handles: Vec<_> = requests
        .into_iter()
        .map(|r| tokio::spawn(async move { r.await.map(|r| r.status().as_u16()).unwrap_or(0) }))
        .collect();
    let mut out = Vec::new();
    for h in handles {
        out.push(h.await.unwrap());
    }
    out
}

#[test]
fn pretty_logs_have_no_colour_codes_when_stderr_is_not_a_terminal() {
    let (_dir, rules, data) = setup("");
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_gateway"))
        .args([
            "serve",
            "--rules",
            rules.to_str().unwrap(),
            "--data",
            data.to_str().unwrap(),
        ])
        .args([
            "--listen",
            "127.0.0.1:0",
            "--admin",
            "127.0.0.1:0",
            "--log-format",
            "pretty",
        ])
        .env_remove("NO_COLOR")
        .env("RUST_LOG", "info")
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = std::io::BufReader::new(child.stderr.take().unwrap());
    let mut seen = String::new();
    for line in std::io::BufRead::lines(stderr) {
        let line = line.unwrap();
        seen.push_str(&line);
        seen.push('\n');
        if line.contains("hookgate serving") {
            break;
        }
    }
    let _ = child.kill();
    let _ = child.wait();
    assert!(seen.contains("hookgate serving"), "{seen:?}");
    assert!(!seen.contains('\u{1b}'), "{seen:?}");
}

/// The metrics table of docs/operations.md: name → label names.
fn documented_metrics() -> BTreeMap<String, BTreeSet<String>> {
    let doc =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/operations.md"))
            .unwrap();
    let section = doc.split("### Metrics").nth(1).expect("a metrics section");
    let mut out = BTreeMap::new();
    for row in section.lines().filter(|l| l.starts_with("| `hookgate_")) {
        let cells: Vec<&str> = row.split('|').map(str::trim).collect();
        let name = cells[1].trim_matches('`').to_string();
        // Label names are the backticked words outside parentheses (which list values).
        let mut labels = BTreeSet::new();
        let mut depth = 0;
        let mut word: Option<String> = None;
        for c in cells[3].chars() {
            match c {
                '(' => depth += 1,
                ')' => depth -= 1,
                '`' if depth == 0 => match word.take() {
                    Some(w) => {
                        labels.insert(w);
                    }
                    None => word = Some(String::new()),
                },
                c => {
                    if let Some(w) = &mut word {
                        w.push(c)
                    }
                }
            }
        }
        out.insert(name, labels);
    }
    assert!(out.len() >= 10, "{out:?}");
    out
}

/// Samples of /metrics: metric family → label-name sets seen.
fn exposed_metrics(text: &str) -> BTreeMap<String, BTreeSet<BTreeSet<String>>> {
    let mut out: BTreeMap<String, BTreeSet<BTreeSet<String>>> = BTreeMap::new();
    for line in text.lines().filter(|l| l.starts_with("hookgate_")) {
        let (name, rest) = match line.find('{') {
            Some(i) => (&line[..i], &line[i + 1..line.rfind('}').unwrap()]),
            None => (line.split(' ').next().unwrap(), ""),
        };
        let family = name
            .trim_end_matches("_bucket")
            .trim_end_matches("_sum")
            .trim_end_matches("_count")
            .to_string();
        let labels: BTreeSet<String> = rest
            .split(',')
            .filter(|kv| !kv.is_empty())
            .map(|kv| kv.split('=').next().unwrap().to_string())
            .filter(|k| k != "le")
            .collect();
        out.entry(family).or_default().insert(labels);
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_documented_metric_is_exposed_with_its_labels() {
    let sink = Sink::always(200).await;
    let (_dir, rules, data) = setup(&format!(
        "target ci {{ post \"{}\" }}\nrule \"app\" {{ from acme on \"push\" when $.repository.full_name == \"acme/app\" notify ci {{\"r\": $.ref}} queue check ci }}\n",
        sink.url("/ci")
    ));
    let gw = Serve::start(&rules, &data, &[], &[]);
    let client = reqwest::Client::new();
    let send = |repo: &str, id: &str, sign: bool| {
        let (mut headers, body) = push(repo, id);
        if !sign {
            headers.retain(|(n, _)| n != "x-hub-signature-256");
        }
        let mut r = client.post(gw.hook_url("/hook/acme")).body(body);
        for (n, v) in headers {
            r = r.header(n, v);
        }
        r.send()
    };
    assert_eq!(send("acme/app", "m-1", true).await.unwrap().status(), 202);
    assert_eq!(send("acme/other", "m-2", true).await.unwrap().status(), 200);
    assert_eq!(send("acme/app", "m-3", false).await.unwrap().status(), 401);
    let missing = client
        .post(gw.hook_url("/hook/nobody"))
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_eq!(missing.status(), 404);
    let reload = client.post(gw.admin_url("/-/reload")).send().await.unwrap();
    assert_eq!(reload.status(), 200);
    assert!(sink.wait_for(2, Duration::from_secs(30)).await);
    // The attempts are recorded after the sink answered: wait for their log lines.
    assert!(
        gw.wait_for_log(Duration::from_secs(30), |l| l.contains("delivery attempt")
            && l.contains("\"kind\":\"check\""))
            .is_some()
    );
    let text = client
        .get(gw.admin_url("/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let exposed = exposed_metrics(&text);
    for (name, labels) in documented_metrics() {
        let seen = exposed
            .get(&name)
            .unwrap_or_else(|| panic!("`{name}` is documented but not exposed:\n{text}"));
        assert!(
            seen.contains(&labels),
            "`{name}`: documented labels {labels:?}, exposed {seen:?}"
        );
    }
    for name in exposed.keys() {
        assert!(
            documented_metrics().contains_key(name),
            "`{name}` is exposed but not documented"
        );
    }
    // 404s are counted, under an empty source.
    assert!(
        text.contains("hookgate_requests_total{source=\"\",status=\"404\"} 1"),
        "{text}"
    );
}

#[test]
fn a_second_gateway_on_the_same_data_directory_fails_at_once() {
    let (_dir, rules, data) = setup("");
    let first = Serve::start(&rules, &data, &[], &[]);
    let started = Instant::now();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_gateway"))
        .args([
            "serve",
            "--rules",
            rules.to_str().unwrap(),
            "--data",
            data.to_str().unwrap(),
        ])
        .args(["--listen", "127.0.0.1:0", "--admin", "127.0.0.1:0"])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(started.elapsed() < Duration::from_secs(20));
    assert!(
        err.contains("another gateway is using the data directory")
            && err.contains(&format!("process {}", first.pid()))
            && err.contains("help:"),
        "{err}"
    );
    // The first one is unaffected.
    let (code, _) = raw_request(
        first.admin,
        "GET /healthz HTTP/1.1\r\nhost: gw\r\nconnection: close\r\n\r\n",
        b"",
    )
    .unwrap();
    assert_eq!(code, 200);
}

#[test]
fn a_clean_shutdown_leaves_no_write_ahead_log() {
    let (_dir, rules, data) = setup(
        "target ci { post \"http://127.0.0.1:9/unused\" rate 1 per 1h }\nrule \"app\" { from acme notify ci }\n",
    );
    let gw = Serve::start(&rules, &data, &[], &[]);
    let (code, _) = send_push(gw.hooks, "acme/app", "wal-1");
    assert_eq!(code, 202);
    let wal = data.join("hookgate.db-wal");
    assert!(
        std::fs::metadata(&wal)
            .map(|m| m.len() > 0)
            .unwrap_or(false),
        "the job is in the WAL"
    );
    let (exit, _) = gw.stop();
    assert_eq!(exit, Some(0));
    let left = std::fs::metadata(&wal).map(|m| m.len()).unwrap_or(0);
    assert_eq!(left, 0, "WAL left behind after a clean shutdown");
    // And the job is in the database file itself.
    let conn = rusqlite_count(&data.join("hookgate.db"));
    assert_eq!(conn, 1);
}

fn rusqlite_count(db: &Path) -> i64 {
    let conn = rusqlite::Connection::open(db).unwrap();
    conn.query_row("SELECT COUNT(*) FROM jobs", [], |r| r.get(0))
        .unwrap()
}

#[test]
fn a_damaged_queue_is_refused_with_a_way_to_recover() {
    let (_dir, rules, data) = setup("");
    // A real queue database, then damage in its middle pages.
    drop(hookgate::queue::sqlite::SqliteQueue::open(&data).unwrap());
    let db = data.join("hookgate.db");
    let mut bytes = std::fs::read(&db).unwrap();
    assert!(bytes.len() > 3 * 4096, "{} bytes", bytes.len());
    for b in &mut bytes[4096..3 * 4096] {
        *b = 0xA5;
    }
    std::fs::write(&db, &bytes).unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_gateway"))
        .args([
            "serve",
            "--rules",
            rules.to_str().unwrap(),
            "--data",
            data.to_str().unwrap(),
        ])
        .args(["--listen", "127.0.0.1:0", "--admin", "127.0.0.1:0"])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains("is damaged") && err.contains("docs/delivery.md"),
        "{err}"
    );
    // Nothing was replaced: the damaged file is still there, as it was.
    assert_eq!(std::fs::read(&db).unwrap(), bytes);
}
