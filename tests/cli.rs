//! The `gateway` binary as users run it: exit codes, stdin, JSON output, `urls`.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

fn gateway() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_gateway"));
    cmd.env_remove("NO_COLOR")
        .current_dir(env!("CARGO_MANIFEST_DIR"));
    cmd
}

fn run(args: &[&str]) -> Output {
    gateway().args(args).output().expect("gateway runs")
}

fn run_stdin(args: &[&str], input: &[u8]) -> Output {
    let mut child = gateway()
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("gateway runs");
    child.stdin.take().unwrap().write_all(input).unwrap();
    child.wait_with_output().unwrap()
}

fn code(out: &Output) -> i32 {
    out.status.code().expect("exited normally, not by a signal")
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn fixture(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/rules")
        .join(rel)
}

fn fixtures(dir: &str) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(fixture(dir))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "hook"))
        .collect();
    files.sort();
    files
}

#[test]
fn rules_example_checks_clean() {
    let out = run(&["check", "rules.example"]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    // The summary is the command's output: on stdout, not among the diagnostics.
    let stdout = String::from_utf8(out.stdout.clone()).unwrap();
    assert!(stdout.ends_with("0 errors, 0 warnings\n"), "{stdout}");
    assert!(stderr(&out).is_empty(), "{}", stderr(&out));
}

#[test]
fn check_counts_in_words_that_agree_with_the_numbers() {
    let out = run_stdin(
        &["check"],
        b"secret s = env(\"S\")\nsource a: github { secret s }\ntarget t { post \"http://127.0.0.1:9/\" }\nrule \"r\" { from a notify t }\ntest \"t\" { source a event \"push\" payload {} expect matched [\"r\"] }\n",
    );
    let stdout = String::from_utf8(out.stdout.clone()).unwrap();
    assert!(
        stdout.contains("<stdin>: 1 source, 1 target, 1 rule, 1 test\n"),
        "{stdout}{}",
        stderr(&out)
    );
}

#[test]
fn every_err_fixture_exits_1() {
    for path in fixtures("err") {
        if std::fs::read(&path)
            .unwrap()
            .starts_with(b"# golden: resolve-secrets")
        {
            continue; // Checked without secrets it is valid; see `resolve_secrets_reports_missing_files`.
        }
        let out = run(&["check", path.to_str().unwrap()]);
        assert_eq!(code(&out), 1, "{}: {}", path.display(), stderr(&out));
        assert!(
            stderr(&out).contains('×'),
            "{}: no error rendered",
            path.display()
        );
    }
}

#[test]
fn warnings_exit_0_or_3_with_deny_warnings() {
    for path in fixtures("warn") {
        let p = path.to_str().unwrap();
        let out = run(&["check", p]);
        assert_eq!(code(&out), 0, "{p}: {}", stderr(&out));
        assert!(stderr(&out).contains('⚠'), "{p}: no warning rendered");
        let out = run(&["check", "--deny-warnings", p]);
        assert_eq!(code(&out), 3, "{p}");
    }
    let out = run(&["check", "--deny-warnings", "rules.example"]);
    assert_eq!(code(&out), 0, "a clean file passes --deny-warnings");
}

#[test]
fn errors_win_over_deny_warnings() {
    // The first file has only warnings, the second an error: the run fails with 1, not 3.
    let warn = fixture("warn/0205-unused.hook");
    let err = fixture("err/0113-unknown-secret.hook");
    let out = run(&[
        "check",
        "--deny-warnings",
        warn.to_str().unwrap(),
        err.to_str().unwrap(),
    ]);
    assert_eq!(code(&out), 1);
}

#[test]
fn reads_stdin_when_no_file_is_given() {
    let out = run_stdin(
        &["check"],
        std::fs::read("rules.example").unwrap().as_slice(),
    );
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    assert!(
        String::from_utf8(out.stdout.clone())
            .unwrap()
            .contains("<stdin>: 6 sources"),
        "{}",
        stderr(&out)
    );

    let out = run_stdin(&["check"], b"source x github {}");
    assert_eq!(code(&out), 1);
    assert!(stderr(&out).contains("<stdin>:1:10"), "{}", stderr(&out));
}

#[test]
fn json_output_points_at_line_and_column() {
    let path = fixture("err/0113-unknown-secret.hook");
    let out = run(&["check", "--format", "json", path.to_str().unwrap()]);
    assert_eq!(code(&out), 1);
    let stdout = String::from_utf8(out.stdout.clone()).unwrap();
    let lines: Vec<serde_json::Value> = stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 1, "{stdout}");
    let d = &lines[0];
    assert_eq!(d["code"], "rules::unknown_secret");
    assert_eq!(d["severity"], "error");
    assert_eq!(d["message"], "unknown secret `gh_secert`");
    assert_eq!(d["file"], path.to_str().unwrap());
    assert_eq!(
        (d["line"].as_u64(), d["column"].as_u64()),
        (Some(2), Some(30))
    );
    assert_eq!(
        (d["end_line"].as_u64(), d["end_column"].as_u64()),
        (Some(2), Some(39))
    );
    assert_eq!(d["help"], "did you mean `gh_secret`?");
    assert!(out.stderr.is_empty(), "JSON mode keeps stderr quiet");
}

#[test]
fn json_positions_match_the_rendered_ones() {
    // For every error fixture, the first JSON diagnostic's line:column is the one the human output shows.
    for path in fixtures("err") {
        let p = path.to_str().unwrap();
        let json = run(&["check", "--format", "json", p]);
        let human = stderr(&run(&["check", p]));
        let first: serde_json::Value = serde_json::from_str(
            String::from_utf8(json.stdout)
                .unwrap()
                .lines()
                .next()
                .unwrap(),
        )
        .unwrap();
        let at = format!(
            "{}:{}:{}]",
            first["file"].as_str().unwrap(),
            first["line"].as_u64().unwrap(),
            first["column"].as_u64().unwrap()
        );
        assert!(
            human.contains(&at),
            "{p}: human output lacks `{at}`:\n{human}"
        );
    }
}

#[test]
fn unreadable_file_is_a_clean_error() {
    let out = run(&["check", "/nonexistent/rules.hook"]);
    assert_eq!(code(&out), 1);
    assert_eq!(
        stderr(&out),
        "error: cannot read `/nonexistent/rules.hook`: no such file or directory\n"
    );
}

#[test]
fn usage_errors_exit_2() {
    assert_eq!(code(&run(&["check", "--format", "xml"])), 2);
    assert_eq!(code(&run(&["frobnicate"])), 2);
    assert_eq!(code(&run(&["--help"])), 0);
}

#[test]
fn resolve_secrets_reports_missing_files() {
    let path = fixture("err/0144-secret-unavailable.hook");
    let p = path.to_str().unwrap();
    assert_eq!(
        code(&run(&["check", p])),
        0,
        "without --resolve-secrets no secret is read"
    );
    let out = run(&["check", "--resolve-secrets", p]);
    assert_eq!(code(&out), 1);
    assert!(
        stderr(&out).contains("rules::secret_unavailable"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn urls_prints_fixed_and_derived_paths() {
    let out = gateway()
        .args([
            "urls",
            "--base",
            "https://hooks.example.com/",
            "rules.example",
        ])
        .env("DOCKERHUB_HOOK_TOKEN", "t0ken")
        .output()
        .unwrap();
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    let stdout = String::from_utf8(out.stdout.clone()).unwrap();
    let lines: Vec<&str> = stdout.lines().collect();
    assert!(
        lines.contains(&"acme\tgithub\thttps://hooks.example.com/hook/acme"),
        "{stdout}"
    );
    assert!(
        lines.contains(&"platform\tgitlab\thttps://hooks.example.com/hook/gitlab/platform"),
        "{stdout}"
    );
    let images = lines
        .iter()
        .find(|l| l.starts_with("images\t"))
        .expect("images line");
    // sha256("t0ken" ++ "images"), computed independently: printf 't0kenimages' | sha256sum
    assert_eq!(
        *images,
        "images\tdockerhub\thttps://hooks.example.com/hook/d87799e3a4b26336f60436e6858d14cc027140c2b95fb0448bc822eef939acc1"
    );
    assert!(String::from_utf8(out.stderr).unwrap().is_empty());
}

#[test]
fn urls_without_the_secret_of_a_url_token_source_fails() {
    let out = gateway()
        .args(["urls", "rules.example"])
        .env_remove("DOCKERHUB_HOOK_TOKEN")
        .output()
        .unwrap();
    assert_eq!(code(&out), 1);
    assert!(
        stderr(&out).contains("source `images` is derived from its secret")
            && stderr(&out).contains("environment variable `DOCKERHUB_HOOK_TOKEN` is not set"),
        "{}",
        stderr(&out)
    );
    // The other sources are still listed.
    assert!(
        String::from_utf8(out.stdout)
            .unwrap()
            .contains("acme\tgithub\t/hook/acme")
    );
}

#[test]
fn test_passes_on_the_shipped_examples() {
    let out = run(&["test", "tests/rules/example.hook", "tests/rules/eval"]);
    let stdout = String::from_utf8(out.stdout.clone()).unwrap();
    assert_eq!(code(&out), 0, "{stdout}{}", stderr(&out));
    assert!(
        stdout.contains("✓ a push to main of acme/app syncs and checks"),
        "{stdout}"
    );
    assert!(
        stdout.contains("✓ do-not-deploy stops the forward"),
        "{stdout}"
    );
    assert!(
        stdout.lines().last().unwrap().ends_with("passed, 0 failed"),
        "{stdout}"
    );
}

#[test]
fn test_fails_with_a_readable_diff_on_a_wrong_expectation() {
    let dir = tempfile::tempdir().unwrap();
    let example = Path::new(env!("CARGO_MANIFEST_DIR")).join("rules.example");
    let file = dir.path().join("wrong.hook");
    std::fs::write(
        &file,
        format!(
            r#"include "{}"
test "deliberately wrong" {{
  source acme
  event "push"
  payload {{"ref": "refs/heads/main", "repository": {{"full_name": "acme/app", "ssh_url": "git@x:acme/app"}}, "head_commit": {{"message": "m"}}}}
  expect matched ["audit releases"]
  expect notify fluxd == {{"Kind": "image"}}
  expect check app_repo_check
}}
"#,
            example.display()
        ),
    )
    .unwrap();
    let out = run(&["test", file.to_str().unwrap()]);
    let stdout = String::from_utf8(out.stdout.clone()).unwrap();
    assert_eq!(code(&out), 1, "{stdout}");
    for expected in [
        "✓ a push to main of acme/app syncs and checks",
        "✗ deliberately wrong",
        "matched rules differ (- expected, + actual):",
        "- \"audit releases\"",
        "+ \"sync app on push to main\"",
        "actions differ (- expected but not run, + run but not expected):",
        "- notify fluxd == {\"Kind\":\"image\"}",
        "+ notify fluxd {\"Kind\":\"git\",\"Source\":{\"URL\":\"git@x:acme/app\",\"Branch\":\"main\"}}",
        "explanation:",
        "✓ rule \"sync app on push to main\"",
        "· rule \"audit releases\": listens to `release`, not `push`",
        "2 tests: 1 passed, 1 failed",
    ] {
        assert!(
            stdout.contains(expected),
            "missing `{expected}` in:\n{stdout}"
        );
    }
    // `check app_repo_check` was expected and did run: it is in neither list.
    assert!(!stdout.contains("check app_repo_check key"), "{stdout}");
}

#[test]
fn test_reports_missing_payload_files_and_files_without_tests() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("t.hook");
    std::fs::write(
        &file,
        "secret s = env(\"S\")\nsource a: github { secret s }\ntarget t { post \"http://127.0.0.1:9/\" }\nrule \"r\" { from a notify t }\n\
         test \"gone\" { source a payload file(\"nope.json\") expect matched [\"r\"] }\n",
    )
    .unwrap();
    let out = run(&["test", file.to_str().unwrap()]);
    assert_eq!(code(&out), 1);
    assert!(
        String::from_utf8(out.stdout)
            .unwrap()
            .contains("cannot read payload")
    );
    let out = run(&["test", "tests/rules/ok/0001-minimal.hook"]);
    assert_eq!(code(&out), 1);
    assert!(
        stderr(&out).contains("no `test` blocks"),
        "{}",
        stderr(&out)
    );
    assert_eq!(code(&run(&["test"])), 2, "paths are required");
}

#[test]
fn explain_shows_every_rule_and_clause() {
    let fixture = "tests/fixtures/payloads/github/push-branch-commits-argocd";
    let headers = format!("{fixture}.headers.json");
    let payload = format!("{fixture}.json");
    let args = [
        "explain",
        "--rules",
        "rules.example",
        "--source",
        "acme",
        "--headers-file",
        &headers,
        &payload,
    ];
    let out = run(&args);
    let stdout = String::from_utf8(out.stdout.clone()).unwrap();
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    assert!(
        stdout.starts_with(
            "source `acme`, event `push`, delivery `68546e73-b6a0-5291-8a8b-8cc3e03b09d2`\n"
        ),
        "{stdout}"
    );
    assert!(
        stdout.contains("$.repository.full_name = \"jessesuen/test-repo\" (wanted \"acme/app\")"),
        "{stdout}"
    );
    assert!(
        stdout.contains("$.head_commit.message = \"Add staging-argocd-demo environment\""),
        "{stdout}"
    );
    assert!(
        stdout.contains("· rule \"rescan image on push\": listens to other sources, not `acme`"),
        "{stdout}"
    );
    assert!(
        stdout.ends_with("matched 0 of 7 rules, 0 actions\n"),
        "{stdout}"
    );

    // The same, as JSON, with the event overridden on the command line.
    let mut json_args = args.to_vec();
    json_args.extend(["--format", "json", "--event", "release"]);
    let out = run(&json_args);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["matched"], serde_json::json!([]));
    let audit = v["rules"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["name"] == "audit releases")
        .unwrap();
    assert_eq!(audit["matched"], false);
    assert!(
        audit["clauses"]
            .as_array()
            .unwrap()
            .iter()
            .any(|c| c["clause"] == "$.release.prerelease == false")
    );
}

#[test]
fn explain_matching_delivery_lists_its_actions() {
    let payload = r#"{"ref": "refs/heads/main", "repository": {"full_name": "acme/app", "ssh_url": "git@x:acme/app"}, "head_commit": {"message": "ok"}}"#;
    let out = run_stdin(
        &[
            "explain",
            "--rules",
            "rules.example",
            "--source",
            "acme",
            "--header",
            "X-GitHub-Event: push",
            "--format",
            "json",
            "-",
        ],
        payload.as_bytes(),
    );
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        v["matched"],
        serde_json::json!(["sync app on push to main"])
    );
    assert_eq!(
        v["actions"],
        serde_json::json!([
            {"rule": "sync app on push to main", "kind": "notify", "target": "fluxd",
             "body": {"Kind": "git", "Source": {"URL": "git@x:acme/app", "Branch": "main"}}},
            {"rule": "sync app on push to main", "kind": "check", "target": "app_repo_check", "key": ""}
        ])
    );
}

#[test]
fn explain_rejects_bad_input_clearly() {
    let out = run(&[
        "explain",
        "--rules",
        "rules.example",
        "--source",
        "acm",
        "rules.example",
    ]);
    assert_eq!(code(&out), 1);
    assert!(
        stderr(&out).contains("unknown source `acm`")
            && stderr(&out).contains("did you mean `acme`?"),
        "{}",
        stderr(&out)
    );
    let out = run(&[
        "explain",
        "--rules",
        "rules.example",
        "--source",
        "acme",
        "rules.example",
    ]);
    assert_eq!(code(&out), 1);
    assert!(
        stderr(&out).contains("payload `rules.example`: not JSON"),
        "{}",
        stderr(&out)
    );
    let out = run_stdin(
        &[
            "explain",
            "--rules",
            "rules.example",
            "--source",
            "acme",
            "--header",
            "nocolon",
            "-",
        ],
        b"{}",
    );
    assert_eq!(code(&out), 2);
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn http_get(port: u16, path: &str) -> Option<String> {
    use std::io::Read;
    let mut stream = std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
    stream
        .set_read_timeout(Some(std::time::Duration::from_secs(5)))
        .ok()?;
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut response = String::new();
    stream.read_to_string(&mut response).ok()?;
    Some(response)
}

/// Waits for `gateway serve`'s admin port to answer `/healthz` (polling: the process gives no other
/// signal), and returns the answer.
fn wait_healthy(admin: u16) -> String {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    loop {
        if let Some(r) = http_get(admin, "/healthz") {
            return r;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the gateway did not come up"
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
}

/// Sends SIGTERM to the process `pid` (one this test started).
fn terminate(pid: u32) {
    assert!(
        Command::new("kill")
            .args(["-TERM", &pid.to_string()])
            .status()
            .unwrap()
            .success()
    );
}

#[test]
fn serve_refuses_rules_that_do_not_load() {
    let dir = tempfile::tempdir().unwrap();
    let rules = dir.path().join("rules.hook");
    std::fs::write(
        &rules,
        "secret s = env(\"HOOKGATE_TEST_UNSET_VARIABLE\")\nsource a: github { secret s }\n",
    )
    .unwrap();
    let out = gateway()
        .args([
            "serve",
            "--rules",
            rules.to_str().unwrap(),
            "--data",
            dir.path().join("data").to_str().unwrap(),
        ])
        .env_remove("HOOKGATE_TEST_UNSET_VARIABLE")
        .output()
        .unwrap();
    assert_eq!(code(&out), 1);
    let err = stderr(&out);
    assert!(err.contains("rules::secret_unavailable"), "{err}");
    assert!(
        err.contains("environment variable `HOOKGATE_TEST_UNSET_VARIABLE` is not set"),
        "{err}"
    );
}

#[test]
fn serve_runs_reloads_on_sighup_and_stops_on_sigterm() {
    let dir = tempfile::tempdir().unwrap();
    let rules = dir.path().join("rules.hook");
    let secret = dir.path().join("secret");
    std::fs::write(&secret, "s").unwrap();
    let text = |name: &str| {
        format!(
            "secret s = file(\"{}\")\nsource {name}: github {{ secret s }}\ntarget t {{ post \"http://127.0.0.1:9/\" }}\nrule \"r\" {{ from {name} notify t }}\n",
            secret.display()
        )
    };
    std::fs::write(&rules, text("a")).unwrap();
    let (hooks, admin) = (free_port(), free_port());
    let child = gateway()
        .args([
            "serve",
            "--rules",
            rules.to_str().unwrap(),
            "--data",
            dir.path().join("data").to_str().unwrap(),
        ])
        .env("HOOKGATE_LISTEN", format!("127.0.0.1:{hooks}"))
        .env("HOOKGATE_ADMIN", format!("127.0.0.1:{admin}"))
        .env("HOOKGATE_LOG_FORMAT", "json")
        .env("HOOKGATE_RELOAD_DEBOUNCE", "10s") // Only SIGHUP reloads within this test.
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let health = wait_healthy(admin);
    assert!(health.starts_with("HTTP/1.1 200"), "{health}");
    assert!(
        http_get(hooks, "/hook/a")
            .unwrap()
            .starts_with("HTTP/1.1 405"),
        "GET on a source path"
    );
    std::fs::write(&rules, text("b")).unwrap();
    let pid = child.id().to_string();
    assert!(
        Command::new("kill")
            .args(["-HUP", &pid])
            .status()
            .unwrap()
            .success()
    );
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let status = http_get(admin, "/status").unwrap_or_default();
        if status.contains("\"generation\":2") {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "SIGHUP did not reload: {status}"
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    assert!(
        http_get(hooks, "/hook/b")
            .unwrap()
            .starts_with("HTTP/1.1 405"),
        "the new source serves"
    );
    terminate(child.id());
    let out = child.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(0), "a clean exit on SIGTERM");
    let logs = String::from_utf8_lossy(&out.stderr);
    let first: serde_json::Value =
        serde_json::from_str(logs.lines().next().unwrap()).expect("JSON logs");
    assert_eq!(first["message"], "hookgate serving");
    assert!(
        logs.contains("rules reloaded") && logs.contains("shutting down"),
        "{logs}"
    );
}

#[test]
fn serve_without_rules_says_which_file_it_looked_for_and_how_to_change_it() {
    let dir = tempfile::tempdir().unwrap();
    let out = gateway()
        .current_dir(dir.path())
        .args(["serve", "--listen", "127.0.0.1:0", "--admin", "127.0.0.1:0"])
        .env_remove("HOOKGATE_RULES")
        .output()
        .unwrap();
    assert_eq!(code(&out), 1);
    let err = stderr(&out);
    // One message per line: the reason, then the consequence, then the fix.
    let lines: Vec<&str> = err.lines().collect();
    assert!(
        lines
            .iter()
            .any(|l| l.starts_with("error: cannot read `rules.hook`")),
        "{err}"
    );
    assert!(
        lines
            .iter()
            .any(|l| l.starts_with("error: the rules in `rules.hook` do not load")),
        "{err}"
    );
    assert!(
        err.contains("help: name the rules file with `--rules PATH`"),
        "{err}"
    );
}

#[test]
fn serve_listens_on_host_names() {
    let dir = tempfile::tempdir().unwrap();
    let rules = dir.path().join("rules.hook");
    let secret = dir.path().join("secret");
    std::fs::write(&secret, "s").unwrap();
    std::fs::write(
        &rules,
        format!(
            "secret s = file(\"{}\")\nsource a: github {{ secret s }}\n",
            secret.display()
        ),
    )
    .unwrap();
    let mut child = gateway()
        .args(["serve", "--rules", rules.to_str().unwrap()])
        .args(["--data", dir.path().join("data").to_str().unwrap()])
        .args([
            "--listen",
            "localhost:0",
            "--admin",
            "localhost:0",
            "--log-format",
            "json",
        ])
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut first = String::new();
    let mut reader = std::io::BufReader::new(child.stderr.take().unwrap());
    while !first.contains("hookgate serving") {
        first.clear();
        if std::io::BufRead::read_line(&mut reader, &mut first).unwrap() == 0 {
            break;
        }
    }
    let _ = child.kill();
    let _ = child.wait();
    let v: serde_json::Value =
        serde_json::from_str(&first).unwrap_or_else(|e| panic!("{e}: {first}"));
    let listen: std::net::SocketAddr = v["listen"].as_str().unwrap().parse().unwrap();
    assert!(listen.ip().is_loopback(), "{first}");
    assert_ne!(listen.port(), 0);
}

#[test]
fn serve_rejects_an_address_without_a_port_clearly() {
    let out = gateway()
        .args(["serve", "--listen", "localhost"])
        .output()
        .unwrap();
    assert_eq!(code(&out), 2);
    assert!(
        stderr(&out).contains(
            "invalid address `localhost` (e.g. `0.0.0.0:8080`, `localhost:8080`, `:8080`)"
        ),
        "{}",
        stderr(&out)
    );
}

/// Pretty logs (the default format): every line of a request names its event and delivery once, also
/// for a provider that sends them in headers, whose request span gets them before its body is read.
#[test]
fn each_log_line_of_a_request_names_its_event_and_delivery_once() {
    use hmac::{Hmac, Mac};
    use std::io::Read;
    let dir = tempfile::tempdir().unwrap();
    let rules = dir.path().join("rules.hook");
    std::fs::write(
        &rules,
        "secret s = env(\"HOOKGATE_TEST_SECRET\")\nsource gh: github { secret s }\n\
         target t { post \"http://127.0.0.1:9/\" }\nrule \"r\" { from gh notify t }\n",
    )
    .unwrap();
    let (hooks, admin) = (free_port(), free_port());
    let mut child = gateway()
        .args(["serve", "--rules", rules.to_str().unwrap(), "--data"])
        .arg(dir.path().join("data"))
        .args(["--log-format", "pretty"])
        .env("HOOKGATE_TEST_SECRET", "s3cret")
        .env("HOOKGATE_LISTEN", format!("127.0.0.1:{hooks}"))
        .env("HOOKGATE_ADMIN", format!("127.0.0.1:{admin}"))
        .env("RUST_LOG", "info")
        .env("NO_COLOR", "1")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    wait_healthy(admin);
    let body = br#"{"ref":"refs/heads/main","repository":{"full_name":"acme/app"}}"#;
    let mut mac = Hmac::<sha2::Sha256>::new_from_slice(b"s3cret").unwrap();
    mac.update(body);
    let signature = hex::encode(mac.finalize().into_bytes());
    let mut stream = std::net::TcpStream::connect(("127.0.0.1", hooks)).unwrap();
    stream
        .set_read_timeout(Some(std::time::Duration::from_secs(10)))
        .unwrap();
    write!(
        stream,
        "POST /hook/gh HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\nContent-Type: application/json\r\n\
         X-GitHub-Event: push\r\nX-GitHub-Delivery: d-once\u{2028}1\r\nX-Hub-Signature-256: sha256={signature}\r\n\
         Content-Length: {}\r\n\r\n",
        body.len()
    )
    .unwrap();
    stream.write_all(body).unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    assert!(response.starts_with("HTTP/1.1 202"), "{response}");
    // The log lines as they come, until the delivery's first attempt (its target refuses it).
    let stderr = std::io::BufReader::new(child.stderr.take().unwrap());
    let (tx, rx) = std::sync::mpsc::channel();
    let reader = std::thread::spawn(move || {
        for line in std::io::BufRead::lines(stderr) {
            let _ = tx.send(line.unwrap());
        }
    });
    let mut logs = Vec::new();
    while !logs.iter().any(|l: &String| l.contains("delivery attempt")) {
        let line = rx
            .recv_timeout(std::time::Duration::from_secs(30))
            .unwrap_or_else(|_| panic!("no `delivery attempt` line in:\n{}", logs.join("\n")));
        logs.push(line);
    }
    terminate(child.id());
    child.wait().unwrap();
    reader.join().unwrap();
    logs.extend(rx.try_iter());
    let line = |what: &str| {
        logs.iter()
            .find(|l| l.contains(what))
            .unwrap_or_else(|| panic!("no `{what}` line in:\n{}", logs.join("\n")))
    };
    let enqueued = line("enqueued");
    assert_eq!(enqueued.matches("delivery=").count(), 1, "{enqueued}");
    assert_eq!(enqueued.matches("event=").count(), 1, "{enqueued}");
    // The id is the sender's text: a line separator in it is escaped, on every line that prints it.
    for l in [enqueued, line("delivery attempt")] {
        assert!(l.contains(r#"delivery="d-once\u{2028}1""#), "{l}");
        assert!(!l.contains('\u{2028}'), "{l}");
    }
}
