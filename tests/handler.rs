//! The webhook handler called directly, without a socket: what each request is answered (status, JSON
//! body, headers) and what the delivery log records of it (outcome, reason, matched rules, actions and
//! their jobs). Each test builds the real `State`: the rules loaded from a file with real secret files,
//! and the embedded SQLite queue in a temporary directory.
//!
//! The hyper glue around the handler (routing, limits, timeouts, HTTP/2, the real process wiring) is
//! tested over loopback sockets in `tests/server.rs`.

mod support;

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::BodyExt;
use serde_json::{Value, json};
use tokio::sync::Notify;

use hookgate::delivery_log::{ActionRecord, DeliveryLog, Outcome, Record};
use hookgate::queue::{Job, JobKind, JobState, Queue, QueueBackend};
use hookgate::reload::RuleStore;
use hookgate::ruleset::HmacAlgorithm;
use hookgate::server::handler::{self, Incoming};
use hookgate::server::{ServerConfig, State};
use support::requests::{fixture, h, hex_mac, now, token_path};

/// The handler's state over rules written to a temp dir (each secret in a file named after it) and a
/// SQLite queue beside them.
struct Harness {
    state: State,
    _dir: tempfile::TempDir,
}

/// What the handler answered, and what it recorded.
struct Answer {
    status: u16,
    /// `Value::Null` when the body is not JSON.
    body: Value,
    headers: http::HeaderMap,
    record: Record,
}

impl Harness {
    async fn new(rules: &str, secrets: &[(&str, &str)]) -> Harness {
        let dir = tempfile::tempdir().unwrap();
        let mut text = String::new();
        for (name, value) in secrets {
            let path = dir.path().join(format!("secret-{name}"));
            std::fs::write(&path, value).unwrap();
            text.push_str(&format!("secret {name} = file(\"{}\")\n", path.display()));
        }
        text.push_str(rules);
        let path = dir.path().join("rules.hook");
        std::fs::write(&path, text).unwrap();
        let store = Arc::new(RuleStore::load(&path).unwrap_or_else(|e| panic!("{e}")));
        let data = dir.path().join("data");
        let queue = Arc::new(Queue::open(&data.display().to_string()).await.unwrap());
        let config = ServerConfig {
            dedup_window: Duration::from_secs(3600),
            ..ServerConfig::default()
        };
        let log = Arc::new(DeliveryLog::new(Default::default()));
        let state = State::new(store, queue, Arc::new(Notify::new()), config, log);
        Harness { state, _dir: dir }
    }

    /// Hands a POST to `path` to the handler as the glue would: routed, header names lowercased, the
    /// query parsed, the whole body read.
    async fn post(&self, path: &str, headers: &[(String, String)], body: &[u8]) -> Answer {
        let (path, query) = path.split_once('?').unwrap_or((path, ""));
        let rules = self.state.store.snapshot();
        let source = rules
            .source_index(path)
            .unwrap_or_else(|| panic!("no source serves {path}"));
        let mut record = Record::new(Some(rules.sources()[source].name().to_string()));
        let incoming = Incoming {
            head: None,
            source,
            headers: headers
                .iter()
                .map(|(n, v)| (n.to_ascii_lowercase(), v.clone()))
                .collect(),
            query: form_urlencoded::parse(query.as_bytes())
                .map(|(k, v)| (k.into_owned(), v.into_owned()))
                .collect(),
            body: Bytes::copy_from_slice(body),
        };
        let response = handler::handle(&self.state, &rules, incoming, &mut record).await;
        let status = response.status().as_u16();
        let headers = response.headers().clone();
        let bytes = response.into_body().collect().await.unwrap().to_bytes();
        assert_eq!(headers["content-type"], "application/json", "{status}");
        record.status = status;
        Answer {
            status,
            body: serde_json::from_slice(&bytes).unwrap_or(Value::Null),
            headers,
            record,
        }
    }

    /// The jobs waiting for the dispatcher.
    async fn pending(&self) -> Vec<Job> {
        self.state.queue.list(JobState::Pending, 100).await.unwrap()
    }

    /// Whether the dispatcher was woken since the last call. The handler wakes it before it answers, and
    /// `notify_one` leaves a permit, so this needs no waiting: a zero timeout still polls once.
    async fn woken(&self) -> bool {
        tokio::time::timeout(Duration::ZERO, self.state.wake.notified())
            .await
            .is_ok()
    }
}

/// A GitHub source with two secrets (rotation) and a rule that notifies `t` on pushes to master.
async fn github(extra: &str) -> Harness {
    let rules = format!(
        "source acme: github {{ secret old, new {extra} }}\ntarget t {{ post \"http://127.0.0.1:9/notify\" }}\n\
         rule \"main\" {{ from acme on \"push\" when $.ref == \"refs/heads/master\" notify t }}\n"
    );
    Harness::new(&rules, &[("old", "old-secret"), ("new", "new-secret")]).await
}

/// The argo-cd push to master, signed with `secret`.
fn github_push(secret: &str) -> (Vec<u8>, Vec<(String, String)>) {
    let (body, mut headers) = fixture("github/push-branch-commits-argocd");
    headers.push(h(
        "X-Hub-Signature-256",
        format!(
            "sha256={}",
            hex_mac(HmacAlgorithm::Sha256, secret, &[&body])
        ),
    ));
    (body, headers)
}

/// GitHub-style headers for `body`, signed with `secret`, for event `event`.
fn github_signed(secret: &str, event: &str, body: &[u8]) -> Vec<(String, String)> {
    vec![
        h(
            "X-Hub-Signature-256",
            format!("sha256={}", hex_mac(HmacAlgorithm::Sha256, secret, &[body])),
        ),
        h("X-GitHub-Event", event),
    ]
}

const DELIVERY: &str = "68546e73-b6a0-5291-8a8b-8cc3e03b09d2";

#[tokio::test]
async fn a_matching_delivery_is_accepted_and_recorded_with_its_jobs() {
    let hx = github("").await;
    let (body, headers) = github_push("new-secret");
    let answer = hx.post("/hook/acme", &headers, &body).await;
    assert_eq!(answer.status, 202, "{}", answer.body);
    assert_eq!(
        answer.body,
        json!({"delivery": DELIVERY, "matched": ["main"], "actions": 1})
    );
    assert_eq!(answer.headers["x-hookgate-matched"], "1");

    let record = &answer.record;
    assert_eq!(record.source.as_deref(), Some("acme"));
    assert_eq!(record.outcome, Outcome::Accepted);
    assert_eq!(record.reason, None);
    assert_eq!(record.event.as_deref(), Some("push"));
    assert_eq!(record.delivery.as_deref(), Some(DELIVERY));
    assert_eq!(record.matched, vec!["main".to_string()]);
    assert_eq!(
        record.rules_version.as_deref(),
        Some(hx.state.store.status().hash.as_str())
    );
    let jobs = hx.pending().await;
    assert_eq!(jobs.len(), 1, "{jobs:?}");
    assert_eq!(
        record.actions,
        vec![ActionRecord {
            rule: "main".into(),
            action: 0,
            kind: JobKind::Notify,
            target: "t".into(),
            job: Some(jobs[0].id),
        }]
    );
    let (job, attempts) = hx.state.queue.get(jobs[0].id).await.unwrap();
    assert_eq!(
        (
            job.source.as_str(),
            job.delivery.as_str(),
            job.rule.as_str()
        ),
        ("acme", DELIVERY, "main")
    );
    assert_eq!(job.event.as_deref(), Some("push"));
    assert_eq!(
        job.body, body,
        "notify without a body sends the original bytes"
    );
    assert!(attempts.is_empty());
    assert!(hx.woken().await, "the enqueue wakes the dispatcher");
    // The record is stored with its jobs, so an accepted delivery is never without its record.
    let stored = hx
        .state
        .queue
        .get_record(record.id.clone())
        .await
        .unwrap()
        .expect("the accepted delivery's record is stored");
    assert_eq!(stored.outcome, Outcome::Accepted);
    assert_eq!(stored.actions, record.actions);
    // The body is kept (`--record-bodies all`, the default), the signature is not.
    let request = record.request.as_ref().expect("the request is recorded");
    assert_eq!(request.body.as_deref(), Some(&body[..]));
    assert!(
        request
            .headers
            .iter()
            .all(|(n, _)| n != "x-hub-signature-256"),
        "{:?}",
        request.headers
    );
}

#[tokio::test]
async fn bad_signatures_are_401_and_counted() {
    let hx = github("").await;
    let (body, headers) = github_push("new-secret");
    let without_sig: Vec<_> = headers
        .iter()
        .filter(|(n, _)| n != "X-Hub-Signature-256")
        .cloned()
        .collect();
    let with = |value: String| {
        let mut hs = without_sig.clone();
        hs.push(h("X-Hub-Signature-256", value));
        hs
    };
    let good = hex_mac(HmacAlgorithm::Sha256, "new-secret", &[&body]);
    let mut flipped = body.clone();
    flipped[10] ^= 1;
    let mismatch = "verification failed: signature or token does not match";
    let missing = "verification failed: signature or token missing";
    let malformed = "verification failed: signature or token malformed";
    for (what, hs, b, reason) in [
        (
            "wrong secret",
            github_push("nope").1,
            body.clone(),
            mismatch,
        ),
        ("one byte changed", headers.clone(), flipped, mismatch),
        ("missing header", without_sig.clone(), body.clone(), missing),
        (
            "wrong prefix",
            with(format!("sha1={good}")),
            body.clone(),
            malformed,
        ),
        ("no prefix", with(good.clone()), body.clone(), malformed),
        (
            "not hex",
            with(format!("sha256=zz{}", &good[2..])),
            body.clone(),
            malformed,
        ),
    ] {
        let answer = hx.post("/hook/acme", &hs, &b).await;
        assert_eq!(answer.status, 401, "{what}");
        assert_eq!(
            answer.body,
            json!({"error": "unauthorized"}),
            "{what}: no detail, no expected signature"
        );
        assert_eq!(answer.record.outcome, Outcome::Rejected, "{what}");
        assert_eq!(answer.record.reason.as_deref(), Some(reason), "{what}");
        assert!(answer.record.matched.is_empty() && answer.record.actions.is_empty());
        assert_eq!(
            answer.record.delivery, None,
            "{what}: not read before verification"
        );
    }
    let metrics = hookgate::metrics::render();
    for reason in ["mismatch", "missing", "malformed"] {
        assert!(
            metrics.contains(&format!(
                "hookgate_verification_failures_total{{reason=\"{reason}\",source=\"acme\"}}"
            )),
            "{reason}\n{metrics}"
        );
    }
    assert!(!metrics.contains("new-secret") && !metrics.contains(&good));
    assert!(hx.pending().await.is_empty(), "nothing was enqueued");
    assert!(!hx.woken().await, "nothing to wake the dispatcher for");
}

#[tokio::test]
async fn rotation_duplicates_and_no_match() {
    let hx = github("").await;
    let (body, headers) = github_push("old-secret");
    let answer = hx.post("/hook/acme", &headers, &body).await;
    assert_eq!(
        (answer.status, &answer.body["matched"]),
        (202, &json!(["main"])),
        "the old secret verifies"
    );
    let answer = hx
        .post("/hook/acme", &github_push("new-secret").1, &body)
        .await;
    assert_eq!(
        answer.status, 200,
        "same delivery id again: {}",
        answer.body
    );
    assert_eq!(
        answer.body,
        json!({"delivery": DELIVERY, "duplicate": true})
    );
    assert_eq!(answer.record.outcome, Outcome::Duplicate);
    assert_eq!(answer.record.delivery.as_deref(), Some(DELIVERY));
    assert_eq!(answer.record.matched, vec!["main".to_string()]);
    assert!(
        answer.record.actions.iter().all(|a| a.job.is_none()),
        "{:?}",
        answer.record.actions
    );
    let jobs = hx.pending().await;
    assert_eq!(jobs.len(), 1, "the duplicate enqueued nothing: {jobs:?}");
    assert_eq!(
        jobs[0].body, body,
        "notify without a body sends the original bytes"
    );

    // Another delivery, signed with the new secret, matching nothing.
    let (body, mut headers) = fixture("github/push-tag-deleted-octokit");
    headers.push(h(
        "X-Hub-Signature-256",
        format!(
            "sha256={}",
            hex_mac(HmacAlgorithm::Sha256, "new-secret", &[&body])
        ),
    ));
    let answer = hx.post("/hook/acme", &headers, &body).await;
    assert_eq!(answer.status, 200, "{}", answer.body);
    assert_eq!(
        answer.body,
        json!({"delivery": "537e1d62-7697-57ca-9cd2-cfe9c1d02171", "matched": [], "actions": 0})
    );
    assert_eq!(answer.headers["x-hookgate-matched"], "0");
    assert_eq!(answer.record.outcome, Outcome::NoMatch);
    assert!(answer.record.matched.is_empty() && answer.record.actions.is_empty());
    assert_eq!(answer.record.event.as_deref(), Some("push"));
    // It matched nothing, so its id was not remembered: the same delivery again is not a duplicate.
    let answer = hx.post("/hook/acme", &headers, &body).await;
    assert_eq!(
        (answer.status, &answer.body["matched"]),
        (200, &json!([])),
        "{}",
        answer.body
    );
    assert_eq!(answer.record.outcome, Outcome::NoMatch);
    // The index decided that without parsing the body into a tree; invalid JSON is still refused.
    let bad = b"{\"ref\": \"refs/heads/master\",";
    let mut bad_headers = fixture("github/push-tag-deleted-octokit").1;
    bad_headers.push(h(
        "X-Hub-Signature-256",
        format!(
            "sha256={}",
            hex_mac(HmacAlgorithm::Sha256, "new-secret", &[bad])
        ),
    ));
    let answer = hx.post("/hook/acme", &bad_headers, bad).await;
    assert_eq!(answer.status, 400);
    assert_eq!(answer.body, json!({"error": "body is not JSON"}));
    assert_eq!(answer.record.outcome, Outcome::Rejected);
    assert_eq!(answer.record.reason.as_deref(), Some("body is not JSON"));
    assert_eq!(hx.pending().await.len(), 1, "still the one job");
}

#[tokio::test]
async fn slack_handshake_and_stale_timestamps() {
    let rules = "source slack: slack { secret k }\ntarget t { post \"http://127.0.0.1:9/\" }\n\
                 rule \"r\" { from slack notify t }\n";
    let hx = Harness::new(rules, &[("k", "slack-signing")]).await;
    let sign = |ts: i64, body: &[u8]| {
        let sig = hex_mac(
            HmacAlgorithm::Sha256,
            "slack-signing",
            &[format!("v0:{ts}:").as_bytes(), body],
        );
        vec![
            h("X-Slack-Request-Timestamp", ts.to_string()),
            h("X-Slack-Signature", format!("v0={sig}")),
            h("Content-Type", "application/json"),
        ]
    };
    let (body, _) = fixture("slack/url_verification");
    let challenge: Value = serde_json::from_slice(&body).unwrap();
    let answer = hx.post("/hook/slack", &sign(now(), &body), &body).await;
    assert_eq!(answer.status, 200);
    assert_eq!(answer.body, json!({"challenge": challenge["challenge"]}));
    assert_eq!(answer.record.outcome, Outcome::Handshake);
    assert_eq!(answer.record.event.as_deref(), Some("url_verification"));
    assert!(answer.record.matched.is_empty() && answer.record.actions.is_empty());
    assert!(hx.pending().await.is_empty(), "a handshake runs no rule");
    let stale = "verification failed: timestamp outside the tolerance";
    for (what, ts) in [
        ("ten minutes old", now() - 600),
        ("ten minutes ahead", now() + 600),
    ] {
        let answer = hx.post("/hook/slack", &sign(ts, &body), &body).await;
        assert_eq!(answer.status, 401, "{what}");
        assert_eq!(answer.body, json!({"error": "unauthorized"}), "{what}");
        assert_eq!(answer.record.outcome, Outcome::Rejected, "{what}");
        assert_eq!(answer.record.reason.as_deref(), Some(stale), "{what}");
    }
    // Slack names the delivery in the body. An id with a control character could never go out in
    // the `X-Hookgate-Delivery` header (every attempt would fail until dead-lettered) and would
    // break a line of the pretty log: it is refused before anything is queued.
    let body = br#"{"type":"event_callback","event_id":"Ev1\n2026-01-01T00:00:00Z INFO forged","event":{"type":"app_mention"}}"#;
    let answer = hx.post("/hook/slack", &sign(now(), body), body).await;
    assert_eq!(
        (answer.status, &answer.body),
        (400, &json!({"error": "malformed delivery id"}))
    );
    assert_eq!(answer.record.delivery, None);
    assert!(hx.pending().await.is_empty(), "nothing queued");
    let body = br#"{"type":"event_callback","event_id":"Ev2","event":{"type":"app_mention\r\nx"}}"#;
    let answer = hx.post("/hook/slack", &sign(now(), body), body).await;
    assert_eq!(
        (answer.status, &answer.body),
        (400, &json!({"error": "malformed event name"}))
    );
    assert!(hx.pending().await.is_empty(), "nothing queued");
    let body = br#"{"type":"event_callback","event_id":"Ev1","event":{"type":"app_mention"}}"#;
    assert_eq!(
        hx.post("/hook/slack", &sign(now(), body), body)
            .await
            .status,
        202
    );
    assert_eq!(hx.pending().await.len(), 1);
}

#[tokio::test]
async fn status_codes_for_bad_requests() {
    let rules = "source acme: github { secret k }\nsource hub: dockerhub { secret k }\n\
         source limited: generic { secret k token header \"X-Token\" rate 2 per 1m }\n\
         source filtered: github { secret k events \"push\" }\n\
         target t { post \"http://127.0.0.1:9/\" }\nrule \"r\" { from * notify t }\n";
    let hx = Harness::new(rules, &[("k", "s")]).await;

    // A URL-token source: the path is the credential.
    let answer = hx.post(&token_path("s", "hub"), &[], b"{}").await;
    assert_eq!(answer.status, 202, "{}", answer.body);
    assert_eq!(answer.record.event.as_deref(), Some("push"));
    let assigned = answer.body["delivery"].as_str().unwrap();
    assert!(assigned.starts_with("hg-"), "an id is assigned: {assigned}");
    assert_eq!(answer.record.delivery.as_deref(), Some(assigned));

    // Not JSON.
    let answer = hx
        .post(
            "/hook/acme",
            &github_signed("s", "push", b"not json"),
            b"not json",
        )
        .await;
    assert_eq!(
        (answer.status, &answer.body),
        (400, &json!({"error": "body is not JSON"}))
    );
    assert_eq!(answer.record.reason.as_deref(), Some("body is not JSON"));

    // A form delivery without its `payload` field.
    let form = b"ref=refs%2Fheads%2Fmain";
    let mut headers = github_signed("s", "push", form);
    headers.push(h("Content-Type", "application/x-www-form-urlencoded"));
    let answer = hx.post("/hook/acme", &headers, form).await;
    let reason = "form delivery without a payload field";
    assert_eq!(
        (answer.status, &answer.body),
        (400, &json!({"error": reason}))
    );
    assert_eq!(answer.record.outcome, Outcome::Rejected);
    assert_eq!(answer.record.reason.as_deref(), Some(reason));
    // ... and with it, accepted: the JSON is in the field, the signature covers the whole form.
    let form = b"payload=%7B%22ref%22%3A%22refs%2Fheads%2Fmain%22%7D";
    let mut headers = github_signed("s", "push", form);
    headers.push(h("Content-Type", "application/x-www-form-urlencoded"));
    assert_eq!(hx.post("/hook/acme", &headers, form).await.status, 202);

    // A delivery id that is not one: bytes lost to UTF-8 repair, or too long.
    for (what, id) in [
        ("not UTF-8", "d-\u{FFFD}".to_string()),
        ("too long", "d".repeat(257)),
        ("a control character", "d-\t1".to_string()),
        ("a dot segment", "..".to_string()),
    ] {
        let mut headers = github_signed("s", "push", b"{}");
        headers.push(h("X-GitHub-Delivery", id));
        let answer = hx.post("/hook/acme", &headers, b"{}").await;
        assert_eq!(
            (answer.status, &answer.body),
            (400, &json!({"error": "malformed delivery id"})),
            "{what}"
        );
        assert_eq!(
            answer.record.reason.as_deref(),
            Some("malformed delivery id"),
            "{what}"
        );
        assert_eq!(answer.record.delivery, None, "{what}");
    }

    // An event name that could not go into a target's header through `${event}`, or of any length.
    for (what, event) in [
        ("a control character", "push\tx".to_string()),
        ("too long", "e".repeat(257)),
        ("a dot segment", ".".to_string()),
    ] {
        let headers = github_signed("s", &event, b"{}");
        let answer = hx.post("/hook/acme", &headers, b"{}").await;
        assert_eq!(
            (answer.status, &answer.body),
            (400, &json!({"error": "malformed event name"})),
            "{what}"
        );
        assert_eq!(answer.record.outcome, Outcome::Rejected, "{what}");
    }

    // The source's rate.
    let token = [h("X-Token", "s")];
    assert_eq!(hx.post("/hook/limited", &token, b"{}").await.status, 202);
    assert_eq!(hx.post("/hook/limited", &token, b"{}").await.status, 202);
    let answer = hx.post("/hook/limited", &token, b"{}").await;
    assert_eq!(
        (answer.status, &answer.body),
        (429, &json!({"error": "rate limited"}))
    );
    assert_eq!(answer.headers["retry-after"], "1");
    assert_eq!(answer.record.outcome, Outcome::Rejected);
    assert_eq!(answer.record.reason.as_deref(), Some("rate limited"));

    // The source's `events` filter.
    let answer = hx
        .post(
            "/hook/filtered",
            &github_signed("s", "release", b"{}"),
            b"{}",
        )
        .await;
    assert_eq!(answer.status, 200);
    assert_eq!(
        answer.body["ignored"],
        json!("the source does not accept this event")
    );
    assert_eq!(answer.body["matched"], json!([]));
    assert_eq!(answer.headers["x-hookgate-matched"], "0");
    assert_eq!(answer.record.outcome, Outcome::Filtered);
    assert_eq!(answer.record.event.as_deref(), Some("release"));
    assert!(answer.record.matched.is_empty() && answer.record.actions.is_empty());
    let answer = hx
        .post("/hook/filtered", &github_signed("s", "push", b"{}"), b"{}")
        .await;
    assert_eq!(answer.status, 202);
    assert_eq!(answer.record.outcome, Outcome::Accepted);

    // Five accepted deliveries, one job each, each recorded with its job.
    assert_eq!(hx.pending().await.len(), 5);
}

#[tokio::test]
async fn an_event_no_rule_listens_to_is_no_match_and_not_remembered() {
    // `on "push"` does not take a release; the delivery id of what runs nothing is not stored.
    let hx = github("").await;
    let body = br#"{"ref": "refs/heads/master"}"#;
    let mut headers = github_signed("new-secret", "release", body);
    headers.push(h("X-GitHub-Delivery", "rel-1"));
    let answer = hx.post("/hook/acme", &headers, body).await;
    assert_eq!(
        (answer.status, &answer.body),
        (
            200,
            &json!({"delivery": "rel-1", "matched": [], "actions": 0})
        )
    );
    assert_eq!(answer.record.outcome, Outcome::NoMatch);
    assert_eq!(answer.record.reason, None);
    // The same id, now for a push to master: not a duplicate, since nothing ran before.
    let mut headers = github_signed("new-secret", "push", body);
    headers.push(h("X-GitHub-Delivery", "rel-1"));
    let answer = hx.post("/hook/acme", &headers, body).await;
    assert_eq!(answer.status, 202, "{}", answer.body);
    assert_eq!(answer.record.outcome, Outcome::Accepted);
    assert_eq!(answer.record.actions.len(), 1);
    assert!(answer.record.actions[0].job.is_some());
}
