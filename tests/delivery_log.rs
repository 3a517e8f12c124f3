//! The delivery log through its API, end to end: `gateway serve` as a process on loopback, real signed
//! deliveries of every outcome, explanations against the rules that judged them (across a reload and a
//! restart), replay, requeue, and the retention bounds.

mod support;

use std::path::PathBuf;
use std::time::{Duration, Instant};

use hookgate::ruleset::HmacAlgorithm;
use hookgate::signature::hmac;
use serde_json::{Value, json};
use support::serve::Serve;
use support::{Reply, Sink};

const SECRET: &str = "log-secret";
const WAIT: Duration = Duration::from_secs(30);

struct Setup {
    dir: tempfile::TempDir,
    rules: PathBuf,
    data: PathBuf,
}

impl Setup {
    fn new(rules: &str) -> Setup {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("secret"), SECRET).unwrap();
        let s = Setup {
            rules: dir.path().join("rules.hook"),
            data: dir.path().join("data"),
            dir,
        };
        s.write(rules);
        s
    }

    fn write(&self, rules: &str) {
        let text = format!(
            "secret gh = file(\"{}\")\nsource acme: github {{ secret gh }}\nsource picky: github {{ secret gh events \"push\" }}\n{rules}",
            self.dir.path().join("secret").display()
        );
        // Write beside, then rename: the watcher never sees half a file.
        let tmp = self.dir.path().join("rules.tmp");
        std::fs::write(&tmp, text).unwrap();
        std::fs::rename(&tmp, &self.rules).unwrap();
    }
}

async fn send(gw: &Serve, source: &str, event: &str, id: &str, body: &Value, sign: bool) -> u16 {
    let body = serde_json::to_vec(body).unwrap();
    let mut r = reqwest::Client::new()
        .post(gw.hook_url(&format!("/hook/{source}")))
        .header("content-type", "application/json")
        .header("x-github-event", event)
        .header("x-github-delivery", id);
    if sign {
        let mac = hex::encode(hmac(HmacAlgorithm::Sha256, SECRET.as_bytes(), &[&body]));
        r = r.header("x-hub-signature-256", format!("sha256={mac}"));
    }
    r.body(body).send().await.unwrap().status().as_u16()
}

fn push(repo: &str, branch: &str) -> Value {
    json!({"ref": format!("refs/heads/{branch}"), "repository": {"full_name": repo}})
}

async fn api(gw: &Serve, path: &str) -> Value {
    let r = reqwest::get(gw.admin_url(path)).await.unwrap();
    assert!(r.status().is_success(), "{path}: {}", r.status());
    serde_json::from_slice(&r.bytes().await.unwrap()).unwrap()
}

async fn post(gw: &Serve, path: &str) -> (u16, Value) {
    let r = reqwest::Client::new()
        .post(gw.admin_url(path))
        .send()
        .await
        .unwrap();
    let status = r.status().as_u16();
    (
        status,
        serde_json::from_slice(&r.bytes().await.unwrap()).unwrap_or(Value::Null),
    )
}

/// The listed record of a delivery id (the oldest, if several: a duplicate comes after the original).
async fn listed(gw: &Serve, delivery: &str) -> Value {
    let all = api(gw, "/api/deliveries?limit=500").await;
    all["deliveries"]
        .as_array()
        .unwrap()
        .iter()
        .rev()
        .find(|r| r["delivery"] == delivery)
        .cloned()
        .unwrap_or_else(|| panic!("`{delivery}` is not listed: {all}"))
}

/// Polls until `pred` holds for the detail of record `id`.
async fn detail_until(gw: &Serve, id: &str, pred: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + WAIT;
    loop {
        let d = api(gw, &format!("/api/deliveries/{id}")).await;
        if pred(&d) {
            return d;
        }
        assert!(Instant::now() < deadline, "never true: {d}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

const RULES_V1: &str = r#"
rule "main only" {
  from acme, picky
  on "push"
  when $.repository.full_name == "acme/app" and $.ref == "refs/heads/main"
  notify ci {"ref": $.ref}
}
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_outcome_is_recorded_explained_replayed_and_kept_within_bounds() {
    let sink = Sink::start(|_, r| Reply::status(if r.path == "/broken" { 400 } else { 200 })).await;
    let target = |path: &str| format!("target ci {{ post \"{}\" }}\n", sink.url(path));
    let setup = Setup::new(&(target("/ci") + RULES_V1));
    let gw = Serve::start(&setup.rules, &setup.data, &[], &[]);

    // One of each outcome.
    assert_eq!(
        send(&gw, "acme", "push", "m-1", &push("acme/app", "main"), true).await,
        202
    );
    assert_eq!(
        send(&gw, "acme", "push", "m-1", &push("acme/app", "main"), true).await,
        200
    );
    assert_eq!(
        send(
            &gw,
            "acme",
            "push",
            "n-1",
            &push("acme/app", "develop"),
            true
        )
        .await,
        200
    );
    assert_eq!(
        send(
            &gw,
            "picky",
            "create",
            "f-1",
            &push("acme/app", "main"),
            true
        )
        .await,
        200
    );
    assert_eq!(
        send(&gw, "acme", "push", "u-1", &push("acme/app", "main"), false).await,
        401
    );
    assert!(sink.wait_for(1, WAIT).await);
    let outcome = |r: &Value| {
        (
            r["status"].as_u64().unwrap(),
            r["outcome"].as_str().unwrap().to_string(),
        )
    };
    let m = listed(&gw, "m-1").await;
    assert_eq!(outcome(&m), (202, "accepted".into()));
    assert_eq!(m["matched"], json!(["main only"]));
    let all = api(&gw, "/api/deliveries?source=acme&status=duplicate").await;
    assert_eq!(all["deliveries"].as_array().unwrap().len(), 1, "{all}");
    let n = listed(&gw, "n-1").await;
    assert_eq!(outcome(&n), (200, "no_match".into()));
    let f = listed(&gw, "f-1").await;
    assert_eq!(outcome(&f), (200, "filtered".into()));
    // A refused request is recorded with the event its headers name, unless no accepted one could
    // have had that name (here 300 bytes of it).
    let long_event = "e".repeat(300);
    assert_eq!(
        send(
            &gw,
            "acme",
            &long_event,
            "u-2",
            &push("acme/app", "main"),
            false
        )
        .await,
        401
    );
    let u2 = listed(&gw, "u-2").await;
    assert_eq!(
        (outcome(&u2), &u2["event"]),
        ((401, "rejected".into()), &Value::Null)
    );
    // Likewise a delivery id no accepted request could have (too long, a dot segment): a refused
    // request (401) and a verified one answered 400 are recorded without it.
    let records = |status: u16| {
        let gw = &gw;
        async move {
            api(
                gw,
                &format!("/api/deliveries?source=acme&status={status}&limit=500"),
            )
            .await["deliveries"]
                .as_array()
                .unwrap()
                .clone()
        }
    };
    let (before_401, before_400) = (records(401).await.len(), records(400).await.len());
    let long_id = "d".repeat(300);
    let body = push("acme/app", "main");
    assert_eq!(send(&gw, "acme", "push", &long_id, &body, false).await, 401);
    assert_eq!(send(&gw, "acme", "push", "..", &body, true).await, 400);
    for (status, before) in [(401, before_401), (400, before_400)] {
        let now = records(status).await;
        assert_eq!(now.len(), before + 1, "{now:?}");
        let newest = &now[0];
        assert_eq!(
            (&newest["delivery"], &newest["event"]),
            (&Value::Null, &json!("push")),
            "{newest}"
        );
    }
    let u = listed(&gw, "u-1").await;
    assert_eq!(outcome(&u), (401, "rejected".into()));
    assert_eq!(u["event"], "push");
    // Refused before its body is read (here a GET, 405): recorded with its headers' ids as well.
    let get = reqwest::Client::new()
        .get(gw.hook_url("/hook/acme"))
        .header("x-github-event", "push")
        .header("x-github-delivery", "g-405")
        .send()
        .await
        .unwrap();
    assert_eq!(get.status(), 405);
    let g = listed(&gw, "g-405").await;
    assert_eq!(
        (outcome(&g), &g["event"]),
        ((405, "rejected".into()), &json!("push"))
    );
    assert!(
        u["reason"]
            .as_str()
            .unwrap()
            .contains("verification failed"),
        "{u}"
    );

    // The non-match names its failing clause and what the path resolved to.
    let n_id = n["id"].as_str().unwrap().to_string();
    let detail = api(&gw, &format!("/api/deliveries/{n_id}")).await;
    let clauses = &detail["rules"][0]["clauses"];
    let failed: Vec<&Value> = clauses
        .as_array()
        .unwrap()
        .iter()
        .filter(|c| c["result"] == false)
        .collect();
    assert_eq!(failed.len(), 1, "{detail}");
    assert_eq!(failed[0]["clause"], "$.ref == \"refs/heads/main\"");
    assert_eq!(
        failed[0]["values"][0]["values"],
        json!(["\"refs/heads/develop\""])
    );
    // The accepted one shows its job delivered.
    let m_id = m["id"].as_str().unwrap().to_string();
    let done = detail_until(&gw, &m_id, |d| d["actions"][0]["job"]["state"] == "done").await;
    assert_eq!(done["actions"][0]["job"]["attempts"][0]["status"], 200);
    // Nothing of a credential is kept.
    let u_detail = api(
        &gw,
        &format!("/api/deliveries/{}", u["id"].as_str().unwrap()),
    )
    .await;
    assert!(
        u_detail["explain_error"]
            .as_str()
            .unwrap()
            .contains("refused before evaluation")
    );
    let text = detail.to_string() + &u_detail.to_string() + &done.to_string();
    assert!(!text.contains("x-hub-signature"), "{text}");

    // Fix the rule (and break the target of a new rule); the old delivery is still explained against
    // the rules that judged it.
    setup.write(
        &(target("/ci")
            + &target("/broken").replace("target ci", "target broken")
            + r#"
rule "main or develop" {
  from acme
  on "push"
  when $.repository.full_name == "acme/app" and $.ref in ["refs/heads/main", "refs/heads/develop"]
  notify ci {"ref": $.ref}
}
rule "releases" {
  from acme
  on "release"
  notify broken
}
"#),
    );
    let deadline = Instant::now() + WAIT;
    while api(&gw, "/status").await["rules"]["generation"] != 2 {
        assert!(Instant::now() < deadline, "the rules did not reload");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let again = api(&gw, &format!("/api/deliveries/{n_id}")).await;
    assert_eq!(
        again["rules"][0]["name"], "main only",
        "explained against the old rules: {again}"
    );
    assert_eq!(again["rules_version"], detail["rules_version"]);

    // A dry run says what would happen; the replay enqueues it, the sink receives it.
    let (status, dry) = post(&gw, &format!("/api/deliveries/{n_id}/replay?dry_run=1")).await;
    assert_eq!(
        (status, &dry["matched"]),
        (200, &json!(["main or develop"])),
        "{dry}"
    );
    assert!(
        !sink
            .received()
            .iter()
            .any(|r| r.body == br#"{"ref":"refs/heads/develop"}"#)
    );
    let (status, replayed) = post(&gw, &format!("/api/deliveries/{n_id}/replay")).await;
    assert_eq!(status, 202, "{replayed}");
    assert!(sink.wait_for(2, WAIT).await);
    assert_eq!(
        sink.received()[1].body,
        br#"{"ref":"refs/heads/develop"}"#.to_vec()
    );
    let new_id = replayed["record"].as_str().unwrap();
    let new = api(&gw, &format!("/api/deliveries/{new_id}")).await;
    assert_eq!(
        (new["outcome"].as_str(), new["replay_of"].as_str()),
        (Some("accepted"), Some(n_id.as_str()))
    );
    assert_eq!(
        api(&gw, &format!("/api/deliveries/{n_id}")).await["replays"],
        json!([new_id])
    );

    // A dead job is requeued and delivered.
    assert_eq!(
        send(
            &gw,
            "acme",
            "release",
            "r-1",
            &json!({"action": "published"}),
            true
        )
        .await,
        202
    );
    let r_id = listed(&gw, "r-1").await["id"].as_str().unwrap().to_string();
    let dead = detail_until(&gw, &r_id, |d| d["actions"][0]["job"]["state"] == "dead").await;
    let job = dead["actions"][0]["job"]["id"].as_i64().unwrap();
    let jobs = api(&gw, "/api/jobs?state=dead").await;
    assert!(
        jobs["jobs"]
            .as_array()
            .unwrap()
            .iter()
            .any(|j| j["id"] == job),
        "{jobs}"
    );
    let targets = api(&gw, "/api/targets").await;
    let broken = targets["targets"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["name"] == "broken")
        .cloned()
        .unwrap();
    assert_eq!(broken["last_error"], "HTTP 400 (not retried)", "{targets}");
    // Point the target at a working path, then requeue.
    let text = std::fs::read_to_string(&setup.rules)
        .unwrap()
        .replace("/broken", "/fixed");
    std::fs::write(setup.dir.path().join("rules.tmp"), text).unwrap();
    std::fs::rename(setup.dir.path().join("rules.tmp"), &setup.rules).unwrap();
    let deadline = Instant::now() + WAIT;
    while api(&gw, "/status").await["rules"]["generation"] != 3 {
        assert!(Instant::now() < deadline, "the rules did not reload");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let (status, _) = post(&gw, &format!("/api/jobs/{job}/requeue")).await;
    assert_eq!(status, 200);
    let delivered = detail_until(&gw, &r_id, |d| d["actions"][0]["job"]["state"] == "done").await;
    let attempts: Vec<u64> = delivered["actions"][0]["job"]["attempts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["status"].as_u64().unwrap())
        .collect();
    assert_eq!(attempts, vec![400, 200], "both attempts stay on record");
    let (exit, _) = tokio::task::spawn_blocking(move || gw.stop())
        .await
        .unwrap();
    assert_eq!(exit, Some(0));

    // After a restart, accepted deliveries are still there and still explained against the rules that
    // judged them (stored when they served), although those are not loaded any more.
    let gw = Serve::start(&setup.rules, &setup.data, &[], &[]);
    let m_after = api(&gw, &format!("/api/deliveries/{m_id}")).await;
    assert_eq!(m_after["outcome"], "accepted");
    assert_eq!(m_after["rules"][0]["name"], "main only", "{m_after}");
    assert_eq!(m_after["rules"][0]["matched"], true);
    let r = reqwest::get(gw.admin_url(&format!("/api/deliveries/{n_id}")))
        .await
        .unwrap();
    assert_eq!(
        r.status(),
        404,
        "a non-matching delivery lives in memory only (SQLite)"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retention_bounds_are_honoured_in_memory_and_in_storage() {
    let sink = Sink::always(200).await;
    let setup = Setup::new(&format!(
        "target ci {{ post \"{}\" }}\n{RULES_V1}",
        sink.url("/ci")
    ));
    let bounds = ["--deliveries-max-records", "3"];
    let gw = Serve::start(&setup.rules, &setup.data, &bounds, &[]);
    for i in 0..5 {
        let id = format!("m-{i}");
        assert_eq!(
            send(&gw, "acme", "push", &id, &push("acme/app", "main"), true).await,
            202
        );
        assert_eq!(
            send(
                &gw,
                "acme",
                "push",
                &format!("n-{i}"),
                &push("acme/app", "x"),
                true
            )
            .await,
            200
        );
    }
    // Memory keeps the newest three records; storage keeps the accepted ones until pruned.
    let listed = api(&gw, "/api/deliveries?limit=100").await;
    let ids: Vec<&str> = listed["deliveries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["delivery"].as_str().unwrap())
        .collect();
    assert_eq!(&ids[..3], &["n-4", "m-4", "n-3"], "{listed}");
    assert!(ids.len() <= 3 + 5, "{ids:?}");
    let status = api(&gw, "/status").await;
    assert_eq!(status["deliveries"]["records"], 3, "{status}");
    let (exit, _) = tokio::task::spawn_blocking(move || gw.stop())
        .await
        .unwrap();
    assert_eq!(exit, Some(0));
    // Started again with the same bound, storage is pruned to it at once.
    let gw = Serve::start(&setup.rules, &setup.data, &bounds, &[]);
    let deadline = Instant::now() + WAIT;
    loop {
        let listed = api(&gw, "/api/deliveries?limit=100").await;
        let ids: Vec<String> = listed["deliveries"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r["delivery"].as_str().unwrap().to_string())
            .collect();
        if ids == ["m-4", "m-3", "m-2"] {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "not pruned to the bound: {ids:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // And by age: records older than the bound go.
    let (exit, _) = tokio::task::spawn_blocking(move || gw.stop())
        .await
        .unwrap();
    assert_eq!(exit, Some(0));
    let gw = Serve::start(
        &setup.rules,
        &setup.data,
        &["--deliveries-max-age", "1ms"],
        &[],
    );
    let deadline = Instant::now() + WAIT;
    while !api(&gw, "/api/deliveries").await["deliveries"]
        .as_array()
        .unwrap()
        .is_empty()
    {
        assert!(Instant::now() < deadline, "old records were not pruned");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_no_records_allowed_the_log_is_off_and_delivery_still_works() {
    let sink = Sink::always(200).await;
    let setup = Setup::new(&format!(
        "target ci {{ post \"{}\" }}\n{RULES_V1}",
        sink.url("/ci")
    ));
    let matching = push("acme/app", "main");
    // Recorded while the log is on.
    let gw = Serve::start(&setup.rules, &setup.data, &[], &[]);
    assert_eq!(
        send(&gw, "acme", "push", "before", &matching, true).await,
        202
    );
    let before = listed(&gw, "before").await;
    let before_id = before["id"].as_str().unwrap().to_string();
    assert!(sink.wait_for(1, WAIT).await);
    let (exit, _) = tokio::task::spawn_blocking(move || gw.stop())
        .await
        .unwrap();
    assert_eq!(exit, Some(0));

    // Off: nothing new is recorded, delivery works, what was stored stays (no pruning by count).
    let off = ["--deliveries-max-records", "0"];
    let gw = Serve::start(&setup.rules, &setup.data, &off, &[]);
    assert_eq!(
        send(&gw, "acme", "push", "on-1", &matching, true).await,
        202
    );
    let other = push("acme/app", "x");
    assert_eq!(send(&gw, "acme", "push", "off-1", &other, true).await, 200);
    assert!(
        sink.wait_for(2, WAIT).await,
        "the accepted delivery is delivered"
    );
    let status = api(&gw, "/status").await;
    assert_eq!(status["deliveries"]["records"], 0, "{status}");
    // A replay runs, but there is no new record to name.
    let (code, replayed) = post(&gw, &format!("/api/deliveries/{before_id}/replay")).await;
    assert_eq!(code, 202, "{replayed}");
    assert_eq!(replayed["record"], Value::Null, "{replayed}");
    assert!(sink.wait_for(3, WAIT).await, "the replay is delivered");
    let ids = |v: &Value| -> Vec<String> {
        v["deliveries"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r["delivery"].as_str().unwrap().to_string())
            .collect()
    };
    let shown = api(&gw, "/api/deliveries?limit=100").await;
    assert_eq!(
        ids(&shown),
        ["before"],
        "only what was stored before: {shown}"
    );
    let (exit, _) = tokio::task::spawn_blocking(move || gw.stop())
        .await
        .unwrap();
    assert_eq!(exit, Some(0));

    // On again: the earlier record is still there, and nothing from the time the log was off.
    let gw = Serve::start(&setup.rules, &setup.data, &[], &[]);
    let shown = api(&gw, "/api/deliveries?limit=100").await;
    assert_eq!(ids(&shown), ["before"], "{shown}");
}
