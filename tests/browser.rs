//! The delivery log's web page in a real headless Chromium (Debian's `chromium`, driven through
//! `chromedriver`; see tests/support/browser.rs for the flags and why), against `gateway serve` as a
//! real process with real signed deliveries and loopback sinks. Asserts what a person sees: the rows,
//! the clause that failed and the value its path resolved to, the effect of the Replay and Requeue
//! buttons, and the token prompt.
//!
//! `HOOKGATE_SCREENSHOT=docs/images/delivery-log.png cargo test --test browser` rewrites the docs'
//! screenshot of the detail view.

mod support;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU16, Ordering};
use std::time::{Duration, Instant};

use hookgate::ruleset::HmacAlgorithm;
use hookgate::signature::hmac;
use serde_json::Value;
use support::browser::{Browser, PATIENCE};
use support::serve::Serve;
use support::{Reply, Sink};

const SECRET: &str = "page-test-secret";

/// The rules: pushes of acme/app to main notify `ci`; releases notify `audit`; pushes of a private
/// acme/app would notify `ci` too (none is). `branch_clause` is the clause on `$.ref` (the test
/// widens it to fix the rule).
fn rules_text(dir: &Path, ci: &str, audit: &str, branch_clause: &str) -> String {
    format!(
        r#"secret gh = file("{secret}")
source acme: github {{ secret gh }}
target ci {{ post "{ci}" }}
target audit {{ post "{audit}" }}
rule "deploy main" {{
  from acme
  on "push"
  when $.repository.full_name == "acme/app" and {branch_clause}
  notify ci {{"repo": $.repository.full_name, "ref": $.ref}}
}}
rule "audit releases" {{
  from acme
  on "release"
  notify audit
}}
rule "private app" {{
  from acme
  on "push"
  when payload contains {{"repository": {{"full_name": "acme/app", "private": true}}}}
  notify ci
}}
"#,
        secret = dir.join("secret").display()
    )
}

/// Replaces the rules file in one step (a rename), so the watcher never reads half of it.
fn write_rules(path: &Path, text: &str) {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

fn setup() -> (tempfile::TempDir, PathBuf, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("secret"), SECRET).unwrap();
    let rules = dir.path().join("rules.hook");
    let data = dir.path().join("data");
    (dir, rules, data)
}

/// Sends a GitHub delivery, signed unless `signed` is false; returns the status.
async fn deliver(gw: &Serve, event: &str, id: &str, body: &str, signed: bool) -> u16 {
    let mut req = reqwest::Client::new()
        .post(gw.hook_url("/hook/acme"))
        .header("content-type", "application/json")
        .header("x-github-event", event)
        .header("x-github-delivery", id)
        .body(body.to_string());
    if signed {
        let sig = hmac(HmacAlgorithm::Sha256, SECRET.as_bytes(), &[body.as_bytes()]);
        req = req.header(
            "x-hub-signature-256",
            format!("sha256={}", hex::encode(sig)),
        );
    }
    req.send().await.unwrap().status().as_u16()
}

fn push(repo: &str, branch: &str) -> String {
    format!(
        r#"{{"ref":"refs/heads/{branch}","repository":{{"full_name":"{repo}"}},"head_commit":{{"message":"ship it"}}}}"#
    )
}

/// GETs an admin URL as JSON (no token).
async fn admin_json(gw: &Serve, path: &str) -> Value {
    let text = reqwest::get(gw.admin_url(path))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("`{path}`: {e}: {text}"))
}

/// The record id of the delivery with provider id `delivery`.
async fn record_id(gw: &Serve, delivery: &str) -> String {
    let list = admin_json(gw, "/api/deliveries").await;
    list["deliveries"]
        .as_array()
        .unwrap()
        .iter()
        .find(|d| d["delivery"] == delivery && d["replay_of"].is_null())
        .unwrap_or_else(|| panic!("no record of `{delivery}`: {list}"))["id"]
        .as_str()
        .unwrap()
        .to_string()
}

/// Waits until the serving rules' generation reaches `generation` (the watcher reloaded).
async fn wait_for_generation(gw: &Serve, generation: u64) {
    let deadline = Instant::now() + PATIENCE;
    loop {
        let status = admin_json(gw, "/status").await;
        if status["rules"]["generation"].as_u64() >= Some(generation) {
            assert!(status["rules"]["last_error"].is_null(), "{status}");
            return;
        }
        assert!(
            Instant::now() < deadline,
            "the rules were not reloaded: {status}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn row(id: &str) -> String {
    format!("#deliveries tr[data-id='{id}']")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_page_explains_a_miss_replays_it_after_the_fix_and_requeues_a_dead_job() {
    let ci = Sink::always(200).await;
    // `audit` refuses (400: dead at once) until the test says otherwise.
    let audit_status = Arc::new(AtomicU16::new(400));
    let status = audit_status.clone();
    let audit = Sink::start(move |_, _| Reply::status(status.load(Ordering::SeqCst))).await;
    let (dir, rules, data) = setup();
    let (ci_url, audit_url) = (ci.url("/ci"), audit.url("/audit"));
    let text = |clause: &str| rules_text(dir.path(), &ci_url, &audit_url, clause);
    write_rules(&rules, &text(r#"$.ref == "refs/heads/main""#));
    let gw = Serve::start(&rules, &data, &["--reload-debounce", "50ms"], &[]);

    // Four real deliveries: a match, a miss (wrong branch), a release (its target answers 400) and an
    // unsigned one.
    assert_eq!(
        deliver(&gw, "push", "d-main", &push("acme/app", "main"), true).await,
        202
    );
    assert_eq!(
        deliver(&gw, "push", "d-dev", &push("acme/app", "develop"), true).await,
        200
    );
    let release = r#"{"action":"published","release":{"tag_name":"v1.0.0"},"repository":{"full_name":"acme/app"}}"#;
    assert_eq!(deliver(&gw, "release", "d-rel", release, true).await, 202);
    assert_eq!(
        deliver(&gw, "push", "d-unsigned", &push("acme/app", "main"), false).await,
        401
    );
    assert!(ci.wait_for(1, PATIENCE).await, "ci got the first notify");
    let (main_id, dev_id, rel_id) = (
        record_id(&gw, "d-main").await,
        record_id(&gw, "d-dev").await,
        record_id(&gw, "d-rel").await,
    );

    let browser = Browser::start(&gw.admin_url("")).await;
    browser.open("/").await;

    // The list: one row per delivery, newest first, with what became of each.
    let rows = browser
        .eventually("four delivery rows", async || {
            let rows = browser.texts("#deliveries tbody tr").await;
            (rows.len() == 4).then_some(rows)
        })
        .await;
    assert!(
        rows[0].contains("401") && rows[0].contains("rejected"),
        "{rows:?}"
    );
    assert!(
        rows[1].contains("release") && rows[1].contains("accepted"),
        "{rows:?}"
    );
    assert!(rows[1].contains("audit releases"), "{rows:?}");
    let dev_row = browser.text(&row(&dev_id)).await.unwrap();
    assert!(dev_row.contains("push"), "{dev_row}");
    assert!(
        dev_row.contains("200") && dev_row.contains("no match"),
        "{dev_row}"
    );
    assert!(dev_row.contains("d-dev"), "{dev_row}");
    let main_row = browser.text(&row(&main_id)).await.unwrap();
    assert!(
        main_row.contains("202") && main_row.contains("accepted"),
        "{main_row}"
    );
    assert!(main_row.contains("deploy main"), "{main_row}");

    // Filtering by outcome leaves the miss alone.
    browser
        .click("#filters select[name=status] option[value=no_match]")
        .await;
    browser.click("#filters button[type=submit]").await;
    browser
        .eventually("only the no-match row", async || {
            let ids = browser.texts("#deliveries tbody tr").await;
            let url = browser.client.current_url().await.ok()?;
            (ids.len() == 1 && url.as_str().contains("status=no_match")).then_some(())
        })
        .await;
    assert!(browser.text(&row(&dev_id)).await.is_some());

    // Its detail: the rule that did not match, the clause that failed, what `$.ref` was.
    browser.click(&format!("{} a", row(&dev_id))).await;
    let rule = "#explanation details.rule[data-rule='deploy main']";
    let summary = browser
        .wait_text(&format!("{rule} > summary"), |t| t.contains("deploy main"))
        .await;
    assert!(summary.contains("no match"), "{summary}");
    assert!(
        summary.contains(r#"fails at $.ref == "refs/heads/main""#),
        "{summary}"
    );
    let failed = browser
        .texts(&format!("{rule} li.clause.fail"))
        .await
        .join("\n");
    assert!(failed.contains(r#"$.ref == "refs/heads/main""#), "{failed}");
    assert!(
        failed.contains(r#"$.ref → "refs/heads/develop""#),
        "{failed}"
    );
    let passed = browser
        .texts(&format!("{rule} li.clause.pass"))
        .await
        .join("\n");
    assert!(
        passed.contains(r#"$.repository.full_name == "acme/app""#),
        "{passed}"
    );
    assert!(passed.contains(r#""acme/app""#), "{passed}");
    // A failed containment names where the payload differs.
    let private = browser
        .text("#explanation details.rule[data-rule='private app'] li.clause.fail")
        .await
        .unwrap();
    assert!(private.contains("payload contains"), "{private}");
    assert!(
        private.contains("$.repository.private is missing (wanted true)"),
        "{private}"
    );
    // The release rule listens to another event: set aside, with the reason, behind a click.
    browser.click("#skipped-rules > summary").await;
    let skipped = browser
        .wait_text("#skipped-rules", |t| t.contains("audit releases"))
        .await;
    assert!(
        skipped.contains("listens to `release`, not `push`"),
        "{skipped}"
    );
    browser.click("#skipped-rules > summary").await;
    let facts = browser.text("#facts").await.unwrap();
    assert!(
        facts.contains("d-dev") && facts.contains("no rule"),
        "{facts}"
    );
    let payload = browser.text("#payload").await.unwrap();
    assert!(payload.contains("refs/heads/develop"), "{payload}");
    // No action, and a dry run against the rules serving now still matches nothing.
    assert!(
        browser
            .text("#actions")
            .await
            .unwrap()
            .contains("No actions")
    );
    browser.click("#dry-run").await;
    let dry = browser
        .wait_text("#dry-run-summary", |t| t.contains("Dry run"))
        .await;
    assert!(dry.contains("no rule would match"), "{dry}");

    // The docs' screenshot: this view, at 1280 px.
    let png = browser.client.screenshot().await.unwrap();
    assert!(png.starts_with(b"\x89PNG"), "a PNG screenshot");
    if let Ok(path) = std::env::var("HOOKGATE_SCREENSHOT") {
        std::fs::write(&path, &png).unwrap();
    }

    // At a phone's width the same view fits, without scrolling sideways.
    browser.client.set_window_size(390, 844).await.unwrap();
    browser.open(&format!("/#/deliveries/{dev_id}")).await;
    browser
        .wait_text("#explanation", |t| t.contains("deploy main"))
        .await;
    assert!(
        !browser.overflows_horizontally().await,
        "the detail view is wider than a phone"
    );
    browser.open("/#/deliveries").await;
    browser
        .eventually("rows at phone width", async || {
            (browser.texts("#deliveries tbody tr").await.len() == 4).then_some(())
        })
        .await;
    assert!(
        !browser.overflows_horizontally().await,
        "the list is wider than a phone"
    );
    browser.client.set_window_size(1280, 900).await.unwrap();

    // Fix the rule (develop deploys too); the gateway reloads it by itself.
    write_rules(
        &rules,
        &text(r#"$.ref in ["refs/heads/main", "refs/heads/develop"]"#),
    );
    wait_for_generation(&gw, 2).await;

    // Replay the old miss from its page: a new record, accepted, and ci gets the notify.
    browser.open(&format!("/#/deliveries/{dev_id}")).await;
    browser.click("#replay").await;
    let replayed = browser
        .wait_text("#replay-summary", |t| t.contains("Replayed"))
        .await;
    assert!(replayed.contains("HTTP 202"), "{replayed}");
    assert!(replayed.contains("deploy main"), "{replayed}");
    assert!(replayed.contains("1 action enqueued"), "{replayed}");
    assert!(ci.wait_for(2, PATIENCE).await, "ci got the replayed notify");
    let notify: Value = serde_json::from_slice(&ci.received()[1].body).unwrap();
    assert_eq!(notify["ref"], "refs/heads/develop");
    let new_id = browser.text("#replay-record").await.unwrap();
    assert_ne!(new_id, dev_id);
    // The old record links to its replay, and is still explained against the rules that judged it.
    let replays = browser.wait_text("#replays", |t| t.contains(&new_id)).await;
    assert_eq!(replays, new_id);
    let still = browser
        .texts(&format!("{rule} li.clause.fail"))
        .await
        .join("\n");
    assert!(still.contains(r#"$.ref → "refs/heads/develop""#), "{still}");
    assert!(
        browser
            .text("#facts")
            .await
            .unwrap()
            .contains("not the rules serving now")
    );

    // The new record: accepted, a replay of the old one, its action delivered.
    browser.click("#replay-record").await;
    browser.wait_text("#record-id", |t| t == new_id).await;
    let title = browser.text("h2").await.unwrap();
    assert!(
        title.contains("accepted") && title.contains("replay"),
        "{title}"
    );
    assert_eq!(browser.text("#replay-of").await.unwrap(), dev_id);
    let matched = browser
        .wait_text("#explanation details.rule.pass > summary", |t| {
            t.contains("deploy main")
        })
        .await;
    assert!(matched.contains("matched"), "{matched}");
    browser
        .eventually("the replayed notify to show as done", async || {
            let action = browser.text("#actions .action").await?;
            if action.contains("notify") && action.contains("ci") && action.contains("done") {
                return Some(());
            }
            browser.refresh_view("#refresh").await;
            None
        })
        .await;
    // The list shows it on top, as an accepted replay.
    browser.open("/#/deliveries").await;
    let top = browser
        .wait_text("#deliveries tbody tr", |t| t.contains("replay"))
        .await;
    assert!(top.contains("202") && top.contains("accepted"), "{top}");
    assert!(browser.text(&row(&new_id)).await.is_some());

    // The dead job: the release's notify to `audit`, refused with 400.
    assert!(audit.wait_for(1, PATIENCE).await, "audit got the release");
    browser.click("header nav a[data-nav=jobs]").await;
    let dead = "#jobs tr[data-target=audit]";
    let dead_row = browser
        .eventually("the dead audit job", async || {
            if let Some(t) = browser.text(dead).await {
                return Some(t);
            }
            // What a person does while waiting: press Refresh.
            browser
                .refresh_view("#job-filters button[type=button]")
                .await;
            None
        })
        .await;
    assert!(dead_row.contains("400"), "{dead_row}");
    assert!(dead_row.contains("audit releases"), "{dead_row}");
    audit_status.store(200, Ordering::SeqCst);
    browser.click(&format!("{dead} button.requeue")).await;
    let requeued = browser
        .wait_text("#requeue-summary", |t| t.contains("requeued"))
        .await;
    assert!(requeued.contains("pending"), "{requeued}");
    assert!(
        audit.wait_for(2, PATIENCE).await,
        "the requeued job was sent again"
    );
    // The release's page shows the job done, its last attempt answered 200.
    browser.open(&format!("/#/deliveries/{rel_id}")).await;
    browser
        .eventually("the requeued job to show as done", async || {
            let action = browser.text("#actions .action").await?;
            let attempts = browser.texts("#actions .attempts tbody tr").await;
            if action.contains("done")
                && action.contains("last status 200")
                && attempts.last().is_some_and(|a| a.contains("200"))
            {
                return Some(());
            }
            browser.refresh_view("#refresh").await;
            None
        })
        .await;
    // No dead job left.
    browser.open("/#/jobs").await;
    browser
        .wait_text("#no-jobs", |t| t.contains("No dead jobs"))
        .await;

    // Targets: both, with nothing pending now.
    browser.click("header nav a[data-nav=targets]").await;
    for target in ["ci", "audit"] {
        let line = browser
            .wait_text(&format!("#targets tr[data-target={target}]"), |t| {
                t.contains(target)
            })
            .await;
        let pending = browser
            .text(&format!(
                "#targets tr[data-target={target}] td[data-field=pending]"
            ))
            .await
            .unwrap_or_else(|| panic!("no pending column: {line}"));
        assert_eq!(pending, "0", "{line}");
    }
    // Every field the API gives for a target has its cell, shown as a person reads it (a count, a
    // time, or a dash when there is none).
    let api = admin_json(&gw, "/api/targets").await;
    for target in api["targets"].as_array().unwrap() {
        let name = target["name"].as_str().unwrap();
        for (field, value) in target.as_object().unwrap() {
            if field == "name" {
                continue;
            }
            let shown = browser
                .text(&format!(
                    "#targets tr[data-target={name}] td[data-field={field}]"
                ))
                .await
                .unwrap_or_else(|| panic!("`{field}` of `{name}` is not shown"));
            match value {
                Value::Null => assert_eq!(shown, "—", "`{field}` of `{name}`"),
                Value::Number(n) if !field.ends_with("_at") => {
                    assert_eq!(shown, n.to_string(), "`{field}` of `{name}`")
                }
                _ => assert!(!shown.is_empty(), "`{field}` of `{name}`"),
            }
        }
    }

    browser.close().await;
    let (code, _) = gw.stop();
    assert_eq!(code, Some(0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_a_token_the_page_asks_for_it_then_works() {
    let ci = Sink::always(200).await;
    let (dir, rules, data) = setup();
    write_rules(
        &rules,
        &rules_text(
            dir.path(),
            &ci.url("/ci"),
            &ci.url("/audit"),
            r#"$.ref == "refs/heads/main""#,
        ),
    );
    let token_file = dir.path().join("admin-token");
    std::fs::write(&token_file, "page-admin-token\n").unwrap();
    let gw = Serve::start(
        &rules,
        &data,
        &["--admin-token-file", token_file.to_str().unwrap()],
        &[],
    );
    assert_eq!(
        deliver(&gw, "push", "t-main", &push("acme/app", "main"), true).await,
        202
    );

    let browser = Browser::start(&gw.admin_url("")).await;
    browser.open("/").await;
    // The API answers 401: the page asks for the token instead of showing rows.
    browser
        .wait_text("#token-form", |t| t.contains("Admin token"))
        .await;
    assert!(browser.text("#deliveries").await.is_none());
    // A wrong token is refused, and asked for again.
    browser
        .type_into("#token-form input[name=token]", "not-the-token")
        .await;
    browser.click("#token-form button[type=submit]").await;
    browser
        .wait_text("#token-form", |t| t.contains("refused"))
        .await;
    // The right one opens the log.
    browser
        .type_into("#token-form input[name=token]", "page-admin-token")
        .await;
    browser.click("#token-form button[type=submit]").await;
    let row = browser
        .wait_text("#deliveries tbody tr", |t| t.contains("t-main"))
        .await;
    assert!(row.contains("accepted"), "{row}");
    // Kept for the tab: a reload does not ask again, and every view works, paging included. 50 more
    // (unsigned, rejected) deliveries make two pages of 50.
    for i in 0..50 {
        let id = format!("t-unsigned-{i}");
        assert_eq!(
            deliver(&gw, "push", &id, &push("acme/app", "main"), false).await,
            401
        );
    }
    browser.client.refresh().await.unwrap();
    let first = browser
        .eventually("a first page of 50 rows", async || {
            let rows = browser.texts("#deliveries tbody tr").await;
            (rows.len() == 50).then_some(rows)
        })
        .await;
    assert!(
        first
            .iter()
            .all(|r| r.contains("401") && r.contains("rejected")),
        "{first:?}"
    );
    browser.click("#older").await;
    let all = browser
        .eventually("the older page appended", async || {
            let rows = browser.texts("#deliveries tbody tr").await;
            (rows.len() == 51).then_some(rows)
        })
        .await;
    assert!(all[50].contains("t-main"), "{}", all[50]);
    browser
        .wait_text(".pager", |t| t.contains("No older deliveries"))
        .await;
    browser.click("header nav a[data-nav=targets]").await;
    browser
        .wait_text("#targets tr[data-target=ci]", |t| t.contains("ci"))
        .await;
    // Forgetting it asks again.
    browser.click("#rules-status button").await;
    browser
        .wait_text("#token-form", |t| t.contains("Admin token"))
        .await;

    browser.close().await;
    let (code, _) = gw.stop();
    assert_eq!(code, Some(0));
}
