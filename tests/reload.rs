//! Reloading the rules: what may be swapped in, in which order, what a reload reads and watches, and
//! what a spurious one costs. The store and the watcher run for real on files in a temp directory.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use hookgate::reload::{ReloadOutcome, ReloadStatus, RuleStore};

const WAIT: Duration = Duration::from_secs(20);

/// A rules file with one `generic` source per name, all verified by the token in `secret`.
fn rules(sources: &[&str], secret: &Path) -> String {
    let mut text = format!("secret k = file(\"{}\")\n", secret.display());
    for s in sources {
        text.push_str(&format!(
            "source {s}: generic {{ secret k token header \"X-Token\" }}\n"
        ));
    }
    text
}

/// Writes `contents` to `path` as editors do: a new file renamed over the old one.
fn save(path: &Path, contents: &str) {
    let tmp = path.with_file_name(format!(
        ".{}.tmp",
        path.file_name().unwrap().to_string_lossy()
    ));
    std::fs::write(&tmp, contents).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

fn sources(store: &RuleStore) -> Vec<String> {
    store
        .snapshot()
        .sources()
        .iter()
        .map(|s| s.name().to_string())
        .collect()
}

fn mkfifo(path: &Path) {
    let status = std::process::Command::new("mkfifo")
        .arg(path)
        .status()
        .unwrap();
    assert!(status.success());
}

/// A rules directory with a secret file and a loaded store.
struct Setup {
    dir: tempfile::TempDir,
    rules: PathBuf,
    secret: PathBuf,
    store: Arc<RuleStore>,
}

fn setup(sources: &[&str]) -> Setup {
    let dir = tempfile::tempdir().unwrap();
    let secret = dir.path().join("token");
    std::fs::write(&secret, "tok\n").unwrap();
    let path = dir.path().join("rules.hook");
    std::fs::write(&path, rules(sources, &secret)).unwrap();
    let store = Arc::new(RuleStore::load(&path).unwrap_or_else(|d| panic!("{d}")));
    Setup {
        dir,
        rules: path,
        secret,
        store,
    }
}

fn failed(outcome: ReloadOutcome) -> String {
    match outcome {
        ReloadOutcome::Failed(d) => d,
        other => panic!("expected a failure, got {other:?}"),
    }
}

#[test]
fn an_empty_or_sourceless_file_is_never_swapped_in() {
    let s = setup(&["a"]);
    for text in [
        "",
        "   \n\t\n",
        "# copying the new rules...\n",
        "target t { post \"http://127.0.0.1:9/\" }\n",
    ] {
        std::fs::write(&s.rules, text).unwrap();
        let d = failed(s.store.reload());
        assert!(d.contains("rules::no_sources"), "{text:?}: {d}");
        assert_eq!(
            sources(&s.store),
            ["a"],
            "{text:?}: the old rules still serve"
        );
        let status = s.store.status();
        assert_eq!(status.generation, 1);
        assert!(status.last_error.unwrap().contains("rules::no_sources"));
    }
    std::fs::write(&s.rules, rules(&["a"], &s.secret)).unwrap();
    assert_eq!(s.store.reload(), ReloadOutcome::Unchanged);
    assert_eq!(s.store.status().last_error, None, "the good file is back");
}

/// Rules whose serving version can be read back: source `v{version}`, and for odd versions many
/// more sources, so they compile far slower than even ones.
fn version(n: usize, secret: &Path) -> String {
    let mut names = vec![format!("v{n:04}")];
    if n % 2 == 1 {
        names.extend((0..500).map(|i| format!("filler{i}")));
    }
    let names: Vec<&str> = names.iter().map(String::as_str).collect();
    rules(&names, secret)
}

fn served_version(store: &RuleStore) -> usize {
    let rules = store.snapshot();
    let name = rules
        .sources()
        .iter()
        .map(|s| s.name())
        .find(|n| n.starts_with('v'))
        .unwrap();
    name[1..].parse().unwrap()
}

/// Reloads from several threads while the file changes: the version served never goes back (no
/// older file is swapped in after a newer one), and once the writes stop the newest one serves.
#[test]
fn concurrent_reloads_never_swap_an_older_file_in() {
    let s = setup(&["v0000"]);
    const VERSIONS: usize = 10;
    let done = Arc::new(AtomicBool::new(false));
    let stop_observing = Arc::new(AtomicBool::new(false));
    let mut reloaders = Vec::new();
    for _ in 0..4 {
        let (store, done) = (s.store.clone(), done.clone());
        reloaders.push(std::thread::spawn(move || {
            loop {
                // Read `done` first: the last reload of every thread starts after the last write.
                let last = done.load(Ordering::SeqCst);
                store.reload();
                if last {
                    break;
                }
            }
        }));
    }
    let observer = {
        let (store, stop) = (s.store.clone(), stop_observing.clone());
        std::thread::spawn(move || {
            let mut seen = vec![served_version(&store)];
            while !stop.load(Ordering::SeqCst) {
                let v = served_version(&store);
                if v != *seen.last().unwrap() {
                    seen.push(v);
                }
            }
            seen
        })
    };
    for n in 1..=VERSIONS {
        save(&s.rules, &version(n, &s.secret));
        // A reload of our own: it paces the writes, and the others race it.
        s.store.reload();
    }
    done.store(true, Ordering::SeqCst);
    for r in reloaders {
        r.join().unwrap();
    }
    stop_observing.store(true, Ordering::SeqCst);
    let seen = observer.join().unwrap();
    assert!(
        seen.windows(2).all(|w| w[0] < w[1]),
        "an older file was swapped in after a newer one: versions served in turn {seen:?}"
    );
    assert_eq!(served_version(&s.store), VERSIONS);
}

/// Runs `f` on another thread; fails the test if it takes longer than 10 s (as reading a FIFO with
/// no writer would).
fn promptly<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(f());
    });
    rx.recv_timeout(Duration::from_secs(10))
        .expect("blocked reading a FIFO")
}

#[test]
fn a_fifo_at_the_rules_an_include_or_a_secret_path_fails_the_reload_promptly() {
    let s = setup(&["a"]);
    let store = s.store.clone();
    let reload = move || store.reload();

    // The rules file.
    std::fs::remove_file(&s.rules).unwrap();
    mkfifo(&s.rules);
    let d = failed(promptly(reload.clone()));
    assert!(d.contains("not a regular file (a named pipe)"), "{d}");
    assert!(d.contains("help:"), "{d}");

    // An include.
    std::fs::remove_file(&s.rules).unwrap();
    mkfifo(&s.dir.path().join("team.inc"));
    let text = rules(&["a"], &s.secret) + "include \"team.inc\"\n";
    std::fs::write(&s.rules, text).unwrap();
    let d = failed(promptly(reload.clone()));
    assert!(d.contains("rules::include_failed"), "{d}");
    assert!(d.contains("not a regular file (a named pipe)"), "{d}");

    // A secret file.
    std::fs::write(&s.rules, rules(&["a"], &s.secret)).unwrap();
    std::fs::remove_file(&s.secret).unwrap();
    mkfifo(&s.secret);
    let d = failed(promptly(reload.clone()));
    assert!(d.contains("rules::secret_unavailable"), "{d}");
    assert!(d.contains("not a regular"), "{d}");
    assert_eq!(sources(&s.store), ["a"], "the old rules still serve");

    // `gateway check` on a FIFO answers at once too.
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_gateway"))
        .arg("check")
        .arg(&s.secret)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while child.try_wait().unwrap().is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("`gateway check` blocked on a FIFO");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("not a regular file (a named pipe)"),
        "{stderr}"
    );
}

const MARKER: &str = "Zq8MARKERwhsecXyZ";

/// No error or status ever shows a byte of a secret's value.
#[test]
fn secret_values_never_appear_in_check_output_reload_errors_or_status() {
    let dir = tempfile::tempdir().unwrap();
    let file = |name: &str, bytes: &[u8]| {
        let p = dir.path().join(name);
        std::fs::write(&p, bytes).unwrap();
        p
    };
    let big = file("big", MARKER.repeat(5000).as_bytes());
    let good = file("good", MARKER.as_bytes());
    let not_utf8 = file("bin", &[MARKER.as_bytes(), b"\xff\xfe"].concat());
    let sw = file("sw", format!("whsec_!!{MARKER}").as_bytes());
    let blank = file("blank", b" \t \n");
    let rules_text = format!(
        r#"secret big = file("{}")
secret good = file("{}")
secret bin = file("{}")
secret sw = file("{}")
secret blank = file("{}")
secret env_good = env("HOOKGATE_TEST_SECRET")
secret env_blank = env("HOOKGATE_TEST_BLANK")
source a: generic {{ secret good, env_good token header "X-Token" }}
source b: standard_webhooks {{ secret sw }}
source c: dockerhub {{ secret good }}
source e: generic {{ secret big, bin, blank, env_blank token header "X-T" }}
"#,
        big.display(),
        good.display(),
        not_utf8.display(),
        sw.display(),
        blank.display()
    );
    let rules = file("rules.hook", rules_text.as_bytes());
    for format in ["human", "json"] {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_gateway"))
            .args(["check", "--resolve-secrets", "--format", format])
            .arg(&rules)
            .env("HOOKGATE_TEST_SECRET", MARKER)
            .env("HOOKGATE_TEST_BLANK", "   ")
            .env("NO_COLOR", "1")
            .output()
            .unwrap();
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert_eq!(out.status.code(), Some(1), "{text}");
        for expected in [
            "is larger than 64 KiB",
            "the value is only white space",
            "secret `env_blank` is not available",
        ] {
            assert!(
                text.contains(expected),
                "{format}: no `{expected}` in\n{text}"
            );
        }
        assert!(
            !text.contains("Zq8"),
            "{format}: a secret value shows in\n{text}"
        );
    }

    // The store: a good set, then secrets rotated to bad values.
    let s = setup(&["a"]);
    std::fs::write(&s.secret, MARKER).unwrap();
    assert!(matches!(s.store.reload(), ReloadOutcome::Reloaded { .. }));
    for bad in [
        MARKER.repeat(5000),
        format!("{MARKER}\u{0}\u{ff}"),
        " \n".into(),
    ] {
        std::fs::write(&s.secret, &bad).unwrap();
        let d = s.store.reload();
        let status = serde_json::to_string(&s.store.status()).unwrap();
        if bad.trim().is_empty() || bad.len() > 64 << 10 {
            assert!(matches!(d, ReloadOutcome::Failed(_)), "{d:?}");
        }
        assert!(!format!("{d:?}").contains("Zq8"), "{d:?}");
        assert!(!status.contains("Zq8"), "{status}");
    }
}

/// A watcher on a store, stopped on drop of `stop`.
struct Watching {
    stop: tokio::sync::watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
}

fn watch(store: &Arc<RuleStore>) -> Watching {
    let (stop, mut stopped) = tokio::sync::watch::channel(false);
    let task = tokio::spawn(hookgate::reload::watch(
        store.clone(),
        Duration::from_millis(50),
        async move {
            let _ = stopped.wait_for(|s| *s).await;
        },
    ));
    Watching { stop, task }
}

impl Watching {
    async fn stop(self) {
        let _ = self.stop.send(true);
        let _ = tokio::time::timeout(WAIT, self.task).await;
    }
}

async fn wait_for(
    store: &RuleStore,
    what: &str,
    f: impl Fn(&ReloadStatus) -> bool,
) -> ReloadStatus {
    let deadline = Instant::now() + WAIT;
    loop {
        let status = store.status();
        if f(&status) {
            return status;
        }
        assert!(Instant::now() < deadline, "waited for {what}: {status:?}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Writes files beside the rules that the rules do not read until the watcher has seen (and ignored)
/// one more event: proof that it is watching, and that it has dealt with every earlier event.
async fn unrelated_write(store: &RuleStore, dir: &Path) {
    let before = store.status().ignored_events;
    let deadline = Instant::now() + WAIT;
    let mut i = 0;
    while store.status().ignored_events == before {
        assert!(Instant::now() < deadline, "the watcher never saw a write");
        std::fs::write(dir.join("gateway.log"), format!("line {i}\n")).unwrap();
        i += 1;
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn files_the_rules_do_not_read_trigger_no_reload() {
    let s = setup(&["a"]);
    let w = watch(&s.store);
    unrelated_write(&s.store, s.dir.path()).await;
    unrelated_write(&s.store, s.dir.path()).await;
    std::fs::write(s.dir.path().join(".rules.hook.swp"), "x").unwrap();
    assert_eq!(s.store.status().reload_attempts, 0);

    std::fs::write(&s.rules, rules(&["a", "b"], &s.secret)).unwrap();
    let status = wait_for(&s.store, "generation 2", |st| st.generation == 2).await;
    assert_eq!(
        status.reload_attempts, 1,
        "only the rules file's change reloaded: {status:?}"
    );
    unrelated_write(&s.store, s.dir.path()).await;
    assert_eq!(s.store.status().reload_attempts, 1);
    assert_eq!(sources(&s.store), ["a", "b"]);
    w.stop().await;
}

#[test]
fn an_unchanged_file_is_decided_without_compiling() {
    let s = setup(&["a"]);
    assert_eq!(s.store.status().compiles, 1);
    // Saved again, byte for byte; the secret rewritten with the same value.
    save(&s.rules, &rules(&["a"], &s.secret));
    std::fs::write(&s.secret, "tok\n").unwrap();
    assert_eq!(s.store.reload(), ReloadOutcome::Unchanged);
    assert_eq!(
        s.store.status().compiles,
        1,
        "nothing was parsed or compiled"
    );

    // A rotated secret is a change, with the same rules text.
    std::fs::write(&s.secret, "tok2\n").unwrap();
    assert_eq!(s.store.reload(), ReloadOutcome::Reloaded { generation: 2 });
    assert_eq!(s.store.status().compiles, 2);

    // A broken file fails once per version: asking again compiles nothing more.
    std::fs::write(&s.rules, "source a: generic {").unwrap();
    let first = failed(s.store.reload());
    assert!(first.contains("rules::syntax"), "{first}");
    assert_eq!(failed(s.store.reload()), first);
    assert_eq!(s.store.status().compiles, 3);
    // Put back as it was: unchanged, and the error is forgotten.
    std::fs::write(&s.rules, rules(&["a"], &s.secret)).unwrap();
    assert_eq!(s.store.reload(), ReloadOutcome::Unchanged);
    let status = s.store.status();
    assert_eq!((status.compiles, status.last_error), (3, None));
}

/// With a large rules set, a reload that finds nothing changed costs a small part of a compile.
#[test]
fn an_unchanged_large_rule_set_reloads_cheaply() {
    let dir = tempfile::tempdir().unwrap();
    let secret = dir.path().join("token");
    std::fs::write(&secret, "tok").unwrap();
    let mut text = rules(&["a"], &secret);
    text.push_str("target t { post \"http://127.0.0.1:9/\" }\n");
    for i in 0..5_000 {
        text.push_str(&format!(
            "rule \"r{i}\" {{ from a when $.repository.name == \"repo{i}\" and $.ref matches /^refs\\/heads\\/(main|release-{i})$/ notify t {{\"n\": \"${{$.ref}}\"}} }}\n"
        ));
    }
    let path = dir.path().join("rules.hook");
    std::fs::write(&path, &text).unwrap();
    let started = Instant::now();
    let store = RuleStore::load(&path).unwrap_or_else(|d| panic!("{d}"));
    let load = started.elapsed();
    std::fs::write(&path, &text).unwrap();
    let started = Instant::now();
    assert_eq!(store.reload(), ReloadOutcome::Unchanged);
    let reload = started.elapsed();
    assert_eq!(store.status().compiles, 1);
    assert!(
        reload * 10 < load,
        "an unchanged reload took {reload:?}, loading {load:?}"
    );
}

/// Kubelet's ConfigMap layout: `rules.hook -> ..data/rules.hook`, `..data -> ..<version>`.
fn configmap_write(dir: &Path, version: u32, contents: &str) {
    let versioned = dir.join(format!("..2026_11_22_{version:02}"));
    std::fs::create_dir_all(&versioned).unwrap();
    std::fs::write(versioned.join("rules.hook"), contents).unwrap();
    let tmp = dir.join("..data_tmp");
    let _ = std::fs::remove_file(&tmp);
    std::os::unix::fs::symlink(versioned.file_name().unwrap(), &tmp).unwrap();
    std::fs::rename(&tmp, dir.join("..data")).unwrap();
    if !dir.join("rules.hook").exists() {
        std::os::unix::fs::symlink("..data/rules.hook", dir.join("rules.hook")).unwrap();
    }
}

/// What the watcher must still see: ConfigMap swaps, editors' renames, rotated secrets, a missing
/// include that appears, a new file an include glob matches.
#[tokio::test]
async fn the_watcher_sees_every_change_the_rules_read() {
    let dir = tempfile::tempdir().unwrap();
    let secret = dir.path().join("token");
    std::fs::write(&secret, "tok").unwrap();
    let mount = dir.path().join("config");
    std::fs::create_dir_all(&mount).unwrap();
    configmap_write(&mount, 1, &rules(&["a"], &secret));
    let store = Arc::new(RuleStore::load(&mount.join("rules.hook")).unwrap());
    let w = watch(&store);
    unrelated_write(&store, &mount).await;

    configmap_write(&mount, 2, &rules(&["a", "b"], &secret));
    wait_for(&store, "the ConfigMap swap", |s| s.generation == 2).await;
    assert_eq!(sources(&store), ["a", "b"]);

    // The secret beside the mount, rotated in place.
    unrelated_write(&store, dir.path()).await;
    std::fs::write(&secret, "tok2").unwrap();
    wait_for(&store, "the rotated secret", |s| s.generation == 3).await;

    // A rules file in a plain directory, saved by renaming, including a file that does not exist yet.
    let plain = dir.path().join("plain");
    std::fs::create_dir(&plain).unwrap();
    let path = plain.join("rules.hook");
    std::fs::write(&path, rules(&["a"], &secret)).unwrap();
    w.stop().await;
    let store = Arc::new(RuleStore::load(&path).unwrap());
    let w = watch(&store);
    unrelated_write(&store, &plain).await;
    save(
        &path,
        &(rules(&["a"], &secret) + "include \"team.inc\"\ninclude \"teams/*.inc\"\n"),
    );
    let status = wait_for(&store, "the failed reload", |s| s.last_error.is_some()).await;
    assert!(status.last_error.unwrap().contains("team.inc"));
    std::fs::write(
        plain.join("team.inc"),
        "source t: generic { secret k token header \"X-Token\" }\n",
    )
    .unwrap();
    let status = wait_for(&store, "the include to appear", |s| s.generation == 2).await;
    assert_eq!(status.last_error, None);
    assert_eq!(sources(&store), ["a", "t"]);

    // The glob matched nothing (a warning), its directory did not exist. Once it does, it is watched
    // (the unrelated write below is seen), a new match is a change, another name there is not.
    std::fs::create_dir(plain.join("teams")).unwrap();
    unrelated_write(&store, &plain.join("teams")).await;
    let attempts = store.status().reload_attempts;
    std::fs::write(
        plain.join("teams/x.inc"),
        "source x: generic { secret k token header \"X-Token\" }\n",
    )
    .unwrap();
    wait_for(&store, "the glob's new match", |s| s.generation == 3).await;
    assert_eq!(sources(&store), ["a", "t", "x"]);
    assert_eq!(store.status().reload_attempts, attempts + 1);
    unrelated_write(&store, &plain.join("teams")).await;
    assert_eq!(store.status().reload_attempts, attempts + 1);
    w.stop().await;
}
