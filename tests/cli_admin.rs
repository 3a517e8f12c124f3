//! The command line over a running gateway's admin API, end to end: `gateway serve` as a process with a
//! loopback sink, real signed deliveries, then `gateway deliveries ...`, `gateway jobs ...`, `gateway
//! secret`, `gateway deliveries export --test` and `gateway test --recorded` as users run them.

mod support;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use hookgate::ruleset::HmacAlgorithm;
use hookgate::signature::hmac;
use serde_json::Value;
use support::serve::Serve;
use support::{Reply, Sink};

const SECRET: &str = "cli-admin-secret";
const WAIT: Duration = Duration::from_secs(30);

/// A directory with a secret file, `rules.hook` (a GitHub source `acme` plus `rules`) and a data dir.
struct Setup {
    dir: tempfile::TempDir,
    rules: PathBuf,
    data: PathBuf,
}

impl Setup {
    fn new(rules: &str) -> Setup {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("secret"), SECRET).unwrap();
        let path = dir.path().join("rules.hook");
        let data = dir.path().join("data");
        let setup = Setup {
            dir,
            rules: path,
            data,
        };
        setup.write_rules(rules);
        setup
    }

    fn rules_text(&self, rules: &str) -> String {
        format!(
            "secret gh = file(\"{}\")\nsource acme: github {{ secret gh }}\n{rules}",
            self.dir.path().join("secret").display()
        )
    }

    fn write_rules(&self, rules: &str) {
        std::fs::write(&self.rules, self.rules_text(rules)).unwrap();
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }
}

/// Runs `gateway ARGS` against the gateway's admin port (`HOOKGATE_ADMIN`), off the async runtime.
async fn gateway(gw: Option<&Serve>, args: &[&str]) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_gateway"));
    cmd.args(args)
        .env_remove("HOOKGATE_ADMIN_TOKEN_FILE")
        .env("NO_COLOR", "1");
    match gw {
        Some(gw) => cmd.env("HOOKGATE_ADMIN", gw.admin.to_string()),
        None => cmd.env_remove("HOOKGATE_ADMIN"),
    };
    tokio::task::spawn_blocking(move || cmd.output().expect("gateway runs"))
        .await
        .unwrap()
}

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn code(out: &Output) -> i32 {
    out.status.code().expect("exited normally")
}

/// Asserts the command succeeded; its stdout.
fn ok(out: &Output) -> String {
    assert_eq!(
        code(out),
        0,
        "stdout:\n{}\nstderr:\n{}",
        stdout(out),
        stderr(out)
    );
    stdout(out)
}

fn signature(body: &[u8]) -> String {
    format!(
        "sha256={}",
        hex::encode(hmac(HmacAlgorithm::Sha256, SECRET.as_bytes(), &[body]))
    )
}

/// Posts a push to `acme`, signed unless `sign` is false; the status.
async fn push(gw: &Serve, id: &str, body: &Value, sign: bool) -> u16 {
    let body = body.to_string().into_bytes();
    let mut r = reqwest::Client::new()
        .post(gw.hook_url("/hook/acme"))
        .header("content-type", "application/json")
        .header("x-github-event", "push")
        .header("x-github-delivery", id);
    if sign {
        r = r.header("x-hub-signature-256", signature(&body));
    }
    r.body(body).send().await.unwrap().status().as_u16()
}

fn payload(repo: &str, branch: &str) -> Value {
    serde_json::json!({
        "ref": format!("refs/heads/{branch}"),
        "repository": {"full_name": repo},
        "head_commit": {"message": "fix: handle ${HOME} and \"quotes\""},
    })
}

/// The recorded deliveries, newest first, as the API lists them.
async fn records(gw: &Serve) -> Vec<Value> {
    let out = gateway(Some(gw), &["deliveries", "list", "--format", "json"]).await;
    let v: Value = serde_json::from_str(&ok(&out)).unwrap();
    v["deliveries"].as_array().unwrap().clone()
}

/// The id of the newest record of delivery `delivery` with outcome `outcome`.
async fn record_id(gw: &Serve, delivery: &str, outcome: &str) -> String {
    records(gw)
        .await
        .iter()
        .find(|r| r["delivery"] == delivery && r["outcome"] == outcome)
        .unwrap_or_else(|| panic!("no {outcome} record of `{delivery}`"))["id"]
        .as_str()
        .unwrap()
        .to_string()
}

/// Polls `gateway ARGS --format json` until `pred` holds for its output, or panics at the deadline.
async fn poll_json(gw: &Serve, args: &[&str], what: &str, pred: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + WAIT;
    let mut args = args.to_vec();
    args.extend(["--format", "json"]);
    loop {
        let v: Value = serde_json::from_str(&ok(&gateway(Some(gw), &args).await)).unwrap();
        if pred(&v) {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "waited {WAIT:?} for {what}: {v:#}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Reloads the rules now (the file watcher may have done it already: then it answers `unchanged`).
async fn reload(gw: &Serve) {
    let bytes = reqwest::Client::new()
        .post(gw.admin_url("/-/reload"))
        .send()
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap();
    let r: Value = serde_json::from_slice(&bytes).unwrap();
    assert!(
        r["result"] == "reloaded" || r["result"] == "unchanged",
        "{r}"
    );
}

/// `gateway explain`'s rendering of a payload against `rules` (its first line, which names the
/// delivery, left out).
async fn explained(rules: &Path, payload: &Value, dir: &Path) -> String {
    let file = dir.join(format!("explain-{}.json", fastrand::u64(..)));
    std::fs::write(&file, payload.to_string()).unwrap();
    let out = gateway(
        None,
        &[
            "explain",
            "--rules",
            rules.to_str().unwrap(),
            "--source",
            "acme",
            "--header",
            "X-GitHub-Event: push",
            file.to_str().unwrap(),
        ],
    )
    .await;
    let text = ok(&out);
    text.split_once('\n').unwrap().1.to_string()
}

const DEPLOY: &str = r#"
rule "deploy app" {
  from acme on "push"
  when $.repository.full_name == "acme/app" and $.ref == "refs/heads/main"
  notify ci {"repo": $.repository.full_name, "ref": $.ref, "why": $.head_commit.message}
}
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deliveries_are_listed_shown_replayed_and_dead_jobs_requeued() {
    // The sink fails until told otherwise, so the first job dies.
    let healthy = Arc::new(AtomicBool::new(false));
    let up = healthy.clone();
    let sink =
        Sink::start(move |_, _| Reply::status(if up.load(Ordering::SeqCst) { 200 } else { 503 }))
            .await;
    let target = format!(
        "target ci {{ post \"{}\" retry 1 backoff 50ms..50ms }}\n",
        sink.url("/ci")
    );
    let setup = Setup::new(&format!("{target}{DEPLOY}"));
    let old_rules = setup.path("old.hook");
    std::fs::copy(&setup.rules, &old_rules).unwrap();
    let gw = Serve::start(&setup.rules, &setup.data, &[], &[]);

    assert_eq!(
        push(&gw, "d-main", &payload("acme/app", "main"), true).await,
        202
    );
    assert_eq!(
        push(&gw, "d-dev", &payload("acme/app", "dev"), true).await,
        200
    );
    assert_eq!(
        push(&gw, "d-main", &payload("acme/app", "main"), true).await,
        200
    );
    assert_eq!(
        push(&gw, "d-unsigned", &payload("acme/app", "main"), false).await,
        401
    );

    // The list: one row per request, with its status and outcome.
    let list = ok(&gateway(Some(&gw), &["deliveries", "list"]).await);
    let lines: Vec<&str> = list.lines().collect();
    assert_eq!(lines.len(), 5, "{list}");
    assert!(
        lines[0].starts_with("TIME") && lines[0].ends_with("ID"),
        "{list}"
    );
    for (row, (delivery, status, matched)) in lines[1..].iter().zip([
        ("d-unsigned", "401 rejected", "(verification failed"),
        ("d-main", "200 duplicate", "deploy app"),
        ("d-dev", "200 no_match", "-"),
        ("d-main", "202 accepted", "deploy app"),
    ]) {
        assert!(
            row.contains(&format!("  {delivery}  "))
                && row.contains(status)
                && row.contains(matched),
            "row {row:?} should show {delivery}, {status}, {matched}:\n{list}"
        );
    }
    let filtered = ok(&gateway(Some(&gw), &["deliveries", "list", "--status", "no_match"]).await);
    assert_eq!(filtered.lines().count(), 2, "{filtered}");
    assert!(filtered.contains("d-dev"), "{filtered}");
    let bad = gateway(Some(&gw), &["deliveries", "list", "--status", "sideways"]).await;
    assert_eq!(code(&bad), 2, "{}", stderr(&bad));
    assert!(
        stderr(&bad).contains("`sideways` is neither"),
        "{}",
        stderr(&bad)
    );

    // Pages: the hint names the next page, which holds the rest.
    let first = gateway(Some(&gw), &["deliveries", "list", "--limit", "3"]).await;
    assert_eq!(ok(&first).lines().count(), 4);
    let hint = stderr(&first);
    let next = hint
        .split("--before ")
        .nth(1)
        .and_then(|s| s.split('`').next())
        .unwrap_or_else(|| panic!("no paging hint: {hint}"));
    let rest = ok(&gateway(Some(&gw), &["deliveries", "list", "--before", next]).await);
    assert_eq!(rest.lines().count(), 2, "{rest}");
    assert!(rest.contains("202 accepted"), "{rest}");

    // The non-matching delivery: the failing clause and what its path resolved to, exactly as `gateway
    // explain` renders it.
    let dev = record_id(&gw, "d-dev", "no_match").await;
    let shown = ok(&gateway(Some(&gw), &["deliveries", "show", &dev]).await);
    assert!(shown.contains("  status     200 no_match"), "{shown}");
    assert!(
        shown
            .contains("    ✗ $.ref == \"refs/heads/main\"\n          $.ref = \"refs/heads/dev\"\n"),
        "{shown}"
    );
    let want = explained(&old_rules, &payload("acme/app", "dev"), setup.dir.path()).await;
    assert!(shown.contains(&want), "show:\n{shown}\nexplain:\n{want}");
    // The matched one, with its rendered action, also exactly as `gateway explain` has it.
    let main = record_id(&gw, "d-main", "accepted").await;
    let want = explained(&old_rules, &payload("acme/app", "main"), setup.dir.path()).await;
    assert!(want.contains("→ notify ci {"), "{want}");

    // Its job dies (the sink answers 503 twice)...
    let dead = poll_json(&gw, &["jobs", "list", "--dead"], "a dead job", |v| {
        v["jobs"].as_array().is_some_and(|j| !j.is_empty())
    })
    .await;
    let job = dead["jobs"][0]["id"].as_i64().unwrap().to_string();
    let shown = ok(&gateway(Some(&gw), &["deliveries", "show", &main]).await);
    assert!(shown.contains(&want), "show:\n{shown}\nexplain:\n{want}");
    assert!(
        shown.contains(&format!(
            "notify ci (rule \"deploy app\"): job {job}, dead after 2 attempts"
        )),
        "{shown}"
    );
    assert_eq!(shown.matches("  HTTP 503").count(), 2, "{shown}");
    assert!(
        shown.contains(&format!("`gateway jobs requeue {job}`")),
        "{shown}"
    );
    let listed = ok(&gateway(Some(&gw), &["jobs", "list", "--dead"]).await);
    assert!(
        listed
            .lines()
            .nth(1)
            .is_some_and(|l| l.starts_with(&format!("{job} "))
                && l.contains("ci")
                && l.contains("d-main")),
        "{listed}"
    );
    assert!(
        ok(&gateway(Some(&gw), &["jobs", "list", "--pending"]).await)
            .starts_with("no pending jobs")
    );

    // ... and once the target is back, a requeue delivers it.
    healthy.store(true, Ordering::SeqCst);
    let before = sink.received().len();
    let requeued = ok(&gateway(Some(&gw), &["jobs", "requeue", &job]).await);
    assert!(
        requeued.contains(&format!("job {job} requeued")),
        "{requeued}"
    );
    assert!(
        sink.wait_for(before + 1, WAIT).await,
        "the requeued job was not delivered"
    );
    let got: Value = serde_json::from_slice(&sink.received()[before].body).unwrap();
    assert_eq!(got["ref"], "refs/heads/main");
    poll_json(
        &gw,
        &["deliveries", "show", &main],
        "the job to be done",
        |v| v["actions"][0]["job"]["state"] == "done",
    )
    .await;
    let again = gateway(Some(&gw), &["jobs", "requeue", &job]).await;
    assert_eq!(code(&again), 1);
    assert!(stderr(&again).contains("not dead"), "{}", stderr(&again));
    assert!(stderr(&again).contains("help: "), "{}", stderr(&again));

    // Fix the rule so that the dev push matches; a dry run enqueues nothing, a replay delivers.
    setup.write_rules(&format!(
        "{target}{}",
        DEPLOY.replace(
            "$.ref == \"refs/heads/main\"",
            "$.ref starts with \"refs/heads/\""
        )
    ));
    reload(&gw).await;
    let dry = ok(&gateway(Some(&gw), &["deliveries", "replay", &dev, "--dry-run"]).await);
    assert!(dry.contains("nothing was enqueued"), "{dry}");
    assert!(dry.contains("matched    \"deploy app\""), "{dry}");
    assert!(
        dry.contains(
            "→ notify ci (rule \"deploy app\") {\"repo\":\"acme/app\",\"ref\":\"refs/heads/dev\""
        ),
        "{dry}"
    );
    let before = sink.received().len();
    let replayed = ok(&gateway(Some(&gw), &["deliveries", "replay", &dev]).await);
    assert!(replayed.contains("1 action enqueued"), "{replayed}");
    assert!(
        sink.wait_for(before + 1, WAIT).await,
        "the replay was not delivered"
    );
    let got: Value = serde_json::from_slice(&sink.received()[before].body).unwrap();
    assert_eq!(got["ref"], "refs/heads/dev");
    // Exactly one delivery: the dry run sent nothing.
    assert_eq!(sink.received().len(), before + 1);
    let new_id = replayed
        .split("new record ")
        .nth(1)
        .and_then(|s| s.lines().next())
        .unwrap()
        .to_string();
    let shown = ok(&gateway(Some(&gw), &["deliveries", "show", &new_id]).await);
    assert!(shown.contains(&format!("  replay of  {dev}")), "{shown}");
    assert!(
        shown.contains("✓ $.ref starts with \"refs/heads/\""),
        "{shown}"
    );
    // The old record is still explained against the rules that judged it.
    let shown = ok(&gateway(Some(&gw), &["deliveries", "show", &dev]).await);
    assert!(shown.contains("✗ $.ref == \"refs/heads/main\""), "{shown}");
    assert!(shown.contains(&format!("  replays    {new_id}")), "{shown}");

    // A record that does not exist.
    let missing = gateway(Some(&gw), &["deliveries", "show", "0190-nothing"]).await;
    assert_eq!(code(&missing), 1);
    assert!(
        stderr(&missing).starts_with("error: no delivery record `0190-nothing`\n  help: "),
        "{}",
        stderr(&missing)
    );
    gw.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_errors_say_what_to_do() {
    let setup = Setup::new("");
    let token = setup.path("token");
    let wrong = setup.path("wrong");
    std::fs::write(&token, "right-token\n").unwrap();
    std::fs::write(&wrong, "wrong-token\n").unwrap();
    let gw = Serve::start(
        &setup.rules,
        &setup.data,
        &["--admin-token-file", token.to_str().unwrap()],
        &[],
    );

    let out = gateway(Some(&gw), &["deliveries", "list"]).await;
    assert_eq!(code(&out), 1);
    assert_eq!(
        stderr(&out),
        format!(
            "error: the admin API at `http://{}` requires a token\n  help: pass the file holding it with `--admin-token-file` or `HOOKGATE_ADMIN_TOKEN_FILE`\n",
            gw.admin
        )
    );
    let out = gateway(
        Some(&gw),
        &[
            "jobs",
            "list",
            "--admin-token-file",
            wrong.to_str().unwrap(),
        ],
    )
    .await;
    assert_eq!(code(&out), 1);
    assert!(
        stderr(&out).starts_with(&format!(
            "error: the admin API at `http://{}` refused the token in `{}`\n  help: ",
            gw.admin,
            wrong.display()
        )),
        "{}",
        stderr(&out)
    );
    // The right token, by flag and by environment; the address as a URL too.
    let out = gateway(
        Some(&gw),
        &[
            "deliveries",
            "list",
            "--admin-token-file",
            token.to_str().unwrap(),
        ],
    )
    .await;
    assert_eq!(ok(&out), "no deliveries recorded\n");
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_gateway"));
    cmd.args(["deliveries", "list", "--admin", &gw.admin_url("/")])
        .env("HOOKGATE_ADMIN_TOKEN_FILE", &token);
    let out = tokio::task::spawn_blocking(move || cmd.output().unwrap())
        .await
        .unwrap();
    assert_eq!(ok(&out), "no deliveries recorded\n");

    // The webhook port is not the admin port.
    let out = gateway(
        Some(&gw),
        &["deliveries", "list", "--admin", &gw.hooks.to_string()],
    )
    .await;
    assert_eq!(code(&out), 1);
    assert!(
        stderr(&out).contains("has no admin API"),
        "{}",
        stderr(&out)
    );
    assert!(
        stderr(&out).contains("not the webhook port"),
        "{}",
        stderr(&out)
    );
    gw.stop();

    // Nothing listens: the message names the address.
    let free = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let out = gateway(None, &["deliveries", "list", "--admin", &free.to_string()]).await;
    assert_eq!(code(&out), 1);
    assert!(
        stderr(&out).starts_with(&format!(
            "error: cannot connect to the admin API at `http://{free}`: "
        )),
        "{}",
        stderr(&out)
    );
    assert!(
        stderr(&out).contains("\n  help: is `gateway serve` running there?"),
        "{}",
        stderr(&out)
    );
    let out = gateway(None, &["jobs", "list", "--admin", "ftp://x"]).await;
    assert_eq!(code(&out), 1);
    assert!(
        stderr(&out).starts_with("error: `--admin ftp://x` is not an http(s) URL"),
        "{}",
        stderr(&out)
    );
}

#[tokio::test]
async fn secrets_are_random_and_well_formed() {
    let mut seen = std::collections::HashSet::new();
    for _ in 0..3 {
        let s = ok(&gateway(None, &["secret"]).await);
        let s = s.trim_end();
        assert_eq!(s.len(), 64, "{s}");
        assert!(
            s.chars()
                .all(|c| c.is_ascii_hexdigit() && !c.is_ascii_uppercase()),
            "{s}"
        );
        assert!(seen.insert(s.to_string()), "a secret came twice: {s}");
    }
    let s = ok(&gateway(None, &["secret", "--bytes", "48"]).await);
    assert_eq!(hex::decode(s.trim_end()).unwrap().len(), 48);
    let s = ok(&gateway(None, &["secret", "--standard-webhooks"]).await);
    let s = s.trim_end();
    assert!(s.starts_with("whsec_"), "{s}");
    use base64::Engine;
    let key = base64::engine::general_purpose::STANDARD
        .decode(&s["whsec_".len()..])
        .unwrap();
    assert_eq!(key.len(), 32);
    assert_eq!(
        hookgate::signature::standard_webhooks_key(s.as_bytes()),
        key
    );
    let out = gateway(None, &["secret", "--bytes", "8"]).await;
    assert_eq!(code(&out), 2, "{}", stderr(&out));
    let help = ok(&gateway(None, &["secret", "--help"]).await);
    assert!(help.contains("hex") && help.contains("whsec_"), "{help}");
}

const PINNED: &str = r#"
target ci { post "SINK" }
rule "deploy app" {
  from acme on "push"
  when $.repository.full_name == "acme/app"
  notify ci {"repo": $.repository.full_name, "why": $.head_commit.message, "id": "${delivery}", "cost": "$5"}
  notify ci
  queue check ci key "${$.repository.full_name}"
  forward ci
}
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_exported_test_pins_the_outcome_and_passes_against_the_judging_rules() {
    let sink = Sink::always(200).await;
    let rules = PINNED.replace("SINK", &sink.url("/ci"));
    let setup = Setup::new(&rules);
    let gw = Serve::start(&setup.rules, &setup.data, &[], &[]);
    assert_eq!(
        push(&gw, "d-1", &payload("acme/app", "main"), true).await,
        202
    );
    assert_eq!(
        push(&gw, "d-2", &payload("acme/web", "main"), true).await,
        200
    );
    let tests = setup.path("tests");
    std::fs::create_dir(&tests).unwrap();
    let mut file = format!("include \"{}\"\n", setup.rules.display());
    for (delivery, outcome) in [("d-1", "accepted"), ("d-2", "no_match")] {
        let id = record_id(&gw, delivery, outcome).await;
        let out = gateway(
            Some(&gw),
            &[
                "deliveries",
                "export",
                &id,
                "--test",
                "--out",
                tests.to_str().unwrap(),
            ],
        )
        .await;
        let block = ok(&out);
        assert!(
            stderr(&out).contains(&format!("payloads/acme-{delivery}.json`")),
            "{}",
            stderr(&out)
        );
        file.push_str(&block);
    }
    // The block pins every action: the rendered body, the original payload, the key, the forward.
    assert!(file.contains("test \"recorded acme push d-1\" {"), "{file}");
    assert!(
        file.contains("  expect matched [\"deploy app\"]\n"),
        "{file}"
    );
    // A long body is spread over lines; `${` in its strings is escaped, so it does not interpolate.
    assert!(
        file.contains(
            "  expect notify ci == {\n    \"repo\": \"acme/app\",\n    \"why\": \"fix: handle \\${HOME} and \\\"quotes\\\"\",\n    \"id\": \"d-1\",\n    \"cost\": \"$5\"\n  }\n"
        ),
        "{file}"
    );
    assert!(
        file.contains("  expect notify ci    # the original payload\n"),
        "{file}"
    );
    assert!(
        file.contains("  expect check ci key \"acme/app\"\n"),
        "{file}"
    );
    assert!(file.contains("  expect forward ci\n"), "{file}");
    assert!(file.contains("  expect matched []\n"), "{file}");
    let saved: Value =
        serde_json::from_slice(&std::fs::read(tests.join("payloads/acme-d-1.json")).unwrap())
            .unwrap();
    assert_eq!(saved, payload("acme/app", "main"));
    let headers: Value = serde_json::from_slice(
        &std::fs::read(tests.join("payloads/acme-d-1.headers.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(headers["x-github-delivery"], "d-1");
    assert!(
        headers.get("x-hub-signature-256").is_none(),
        "signatures are not recorded"
    );

    let test_file = tests.join("recorded.hook");
    std::fs::write(&test_file, &file).unwrap();
    let out = gateway(None, &["test", test_file.to_str().unwrap()]).await;
    let text = ok(&out);
    assert!(text.contains("  ✓ recorded acme push d-1\n"), "{text}");
    assert!(text.ends_with("2 tests: 2 passed, 0 failed\n"), "{text}");

    // It pins: a change to the rendered body fails it.
    setup.write_rules(&rules.replace("\"cost\": \"$5\"", "\"cost\": \"$6\""));
    let out = gateway(None, &["test", test_file.to_str().unwrap()]).await;
    assert_eq!(code(&out), 1, "{}", stdout(&out));
    assert!(
        stdout(&out).contains("  ✗ recorded acme push d-1\n"),
        "{}",
        stdout(&out)
    );
    assert!(
        stdout(&out).contains("1 passed, 1 failed"),
        "{}",
        stdout(&out)
    );

    // Exporting again writes the same files; a different file in the way is refused.
    let id = record_id(&gw, "d-1", "accepted").await;
    let args = [
        "deliveries",
        "export",
        &id,
        "--test",
        "--out",
        tests.to_str().unwrap(),
    ];
    ok(&gateway(Some(&gw), &args).await);
    std::fs::write(tests.join("payloads/acme-d-1.json"), "{}").unwrap();
    let out = gateway(Some(&gw), &args).await;
    assert_eq!(code(&out), 1);
    assert!(
        stderr(&out).contains("exists, with other contents"),
        "{}",
        stderr(&out)
    );
    // A rejected delivery cannot become a test.
    assert_eq!(
        push(&gw, "d-3", &payload("acme/app", "main"), false).await,
        401
    );
    let rejected = records(&gw).await[0]["id"].as_str().unwrap().to_string();
    let out = gateway(Some(&gw), &["deliveries", "export", &rejected, "--test"]).await;
    assert_eq!(code(&out), 1);
    assert!(
        stderr(&out).starts_with("error: cannot export this delivery: "),
        "{}",
        stderr(&out)
    );
    gw.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn recorded_traffic_names_exactly_the_deliveries_a_change_flips() {
    let sink = Sink::always(200).await;
    let target = format!("target ci {{ post \"{}\" }}\n", sink.url("/ci"));
    let setup = Setup::new(&format!("{target}{DEPLOY}"));
    let gw = Serve::start(&setup.rules, &setup.data, &[], &[]);
    for (id, repo, branch, status) in [
        ("d-main", "acme/app", "main", 202),
        ("d-dev", "acme/app", "dev", 200),
        ("d-web", "acme/web", "main", 200),
        ("d-web-dev", "acme/web", "dev", 200),
    ] {
        assert_eq!(
            push(&gw, id, &payload(repo, branch), true).await,
            status,
            "{id}"
        );
    }
    assert_eq!(
        push(&gw, "d-bad", &payload("acme/app", "main"), false).await,
        401
    );
    let out = gateway(Some(&gw), &["deliveries", "export", "--since", "1h"]).await;
    let jsonl = ok(&out);
    // Oldest first; the rejected one cannot be re-evaluated and is left out.
    let ids: Vec<String> = jsonl
        .lines()
        .map(|l| {
            serde_json::from_str::<Value>(l).unwrap()["delivery"]
                .as_str()
                .unwrap()
                .to_string()
        })
        .collect();
    assert_eq!(ids, ["d-main", "d-dev", "d-web", "d-web-dev"]);
    // One record exports as the same line.
    let first: Value = serde_json::from_str(jsonl.lines().next().unwrap()).unwrap();
    let one = ok(&gateway(
        Some(&gw),
        &["deliveries", "export", first["id"].as_str().unwrap()],
    )
    .await);
    assert_eq!(serde_json::from_str::<Value>(&one).unwrap(), first);
    let recorded = setup.path("recorded.jsonl");
    std::fs::write(&recorded, &jsonl).unwrap();
    gw.stop();

    let candidate = setup.path("candidate.hook");
    let compare = |rules: String| {
        let (candidate, recorded) = (candidate.clone(), recorded.clone());
        async move {
            std::fs::write(&candidate, rules).unwrap();
            gateway(
                None,
                &[
                    "test",
                    "--recorded",
                    recorded.to_str().unwrap(),
                    candidate.to_str().unwrap(),
                ],
            )
            .await
        }
    };

    // The same rules: nothing changes.
    let out = compare(setup.rules_text(&format!("{target}{DEPLOY}"))).await;
    assert_eq!(
        ok(&out),
        "4 recorded deliveries: 0 would change, 4 unchanged\n"
    );

    // Deploying dev too flips exactly d-dev.
    let out = compare(setup.rules_text(&format!(
        "{target}{}",
        DEPLOY.replace(
            "$.ref == \"refs/heads/main\"",
            "$.ref in [\"refs/heads/main\", \"refs/heads/dev\"]"
        )
    )))
    .await;
    assert_eq!(code(&out), 1, "{}", stderr(&out));
    let text = stdout(&out);
    assert!(text.contains("delivery `d-dev`"), "{text}");
    for other in ["d-main", "d-web", "d-web-dev"] {
        assert!(
            !text.contains(&format!("`{other}`")),
            "{other} did not change:\n{text}"
        );
    }
    assert!(
        text.contains("    matched rules (- recorded, + candidate):\n      + \"deploy app\"\n"),
        "{text}"
    );
    assert!(
        text.contains("      + notify ci {\"repo\":\"acme/app\",\"ref\":\"refs/heads/dev\","),
        "{text}"
    );
    assert!(
        text.ends_with("4 recorded deliveries: 1 would change, 3 unchanged\n"),
        "{text}"
    );

    // A change to the rendered body only: the matched delivery, both bodies shown.
    let out = compare(setup.rules_text(&format!(
        "{target}{}",
        DEPLOY.replace("\"ref\": $.ref", "\"branch\": $.ref")
    )))
    .await;
    assert_eq!(code(&out), 1);
    let text = stdout(&out);
    assert!(text.contains("delivery `d-main`"), "{text}");
    assert!(!text.contains("matched rules"), "{text}");
    assert!(
        text.contains("      - notify ci {\"repo\":\"acme/app\",\"ref\":\"refs/heads/main\""),
        "{text}"
    );
    assert!(
        text.contains("      + notify ci {\"repo\":\"acme/app\",\"branch\":\"refs/heads/main\""),
        "{text}"
    );
    assert!(text.ends_with("1 would change, 3 unchanged\n"), "{text}");

    // An `events` list that drops pushes: the matched delivery loses its action; the others ran nothing
    // before either.
    let text = setup.rules_text(&format!("{target}{DEPLOY}")).replace(
        "source acme: github { secret gh }",
        "source acme: github { secret gh events \"release\" }",
    );
    let out = compare(text).await;
    assert_eq!(code(&out), 1);
    assert!(
        stdout(&out).contains("      + filtered: the source's `events` list drops it\n"),
        "{}",
        stdout(&out)
    );
    assert!(
        stdout(&out).contains("delivery `d-main`"),
        "{}",
        stdout(&out)
    );
    assert!(
        stdout(&out).ends_with("1 would change, 3 unchanged\n"),
        "{}",
        stdout(&out)
    );

    // A line that is not a record is an error, not a pass.
    std::fs::write(&recorded, format!("{jsonl}{{\"nope\": 1}}\n")).unwrap();
    let out = compare(setup.rules_text(&format!("{target}{DEPLOY}"))).await;
    assert_eq!(code(&out), 1);
    assert!(
        stderr(&out).contains("line 5: not a delivery record"),
        "{}",
        stderr(&out)
    );
    assert!(
        stdout(&out)
            .ends_with("5 recorded deliveries: 0 would change, 4 unchanged, 1 unreadable\n"),
        "{}",
        stdout(&out)
    );
}
