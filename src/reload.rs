//! The live rule set and how it changes: load, reload on file events (debounced), SIGHUP or
//! `POST /-/reload`, swap only on success.
//!
//! Kubernetes mounts a ConfigMap as a directory whose files are symlinks through `..data`, which the
//! kubelet swaps atomically; editors save by writing a new file and renaming it over the old one. Both
//! change the *directory*, so the watcher watches the directories of the rules file, of every file it
//! includes, of every directory an include glob read, and of every secret file (and of the files
//! those are symlinks to), but reacts only to events about those files, names an include glob could
//! match, and kubelet's `..data` / `..data_tmp` links: a log file written beside the rules triggers
//! nothing. The watch set is recomputed after each reload, since includes and secret files may move.
//!
//! A reload first does again every read the serving set was built from (files, canonical paths, glob
//! expansions, secret values) and compares digests ([`load::Inputs`]): the same answers mean the same
//! rules, decided without parsing. Only a difference parses and compiles; if the result then hashes
//! the same as the serving set (a ConfigMap swap with the same content), nothing is swapped either.
//! A failed attempt's reads are kept too, so the same broken input is not compiled twice.
//!
//! INVARIANT: a bad file never replaces a good one. The new set is compiled completely before the
//! swap; on failure the old set keeps serving and the diagnostics are kept for `/status` and logged.
//! Requests hold the `Arc` they started with, so in-flight requests finish on their set.
//!
//! INVARIANT: reloads of one store run one at a time. Reading, compiling, comparing and swapping is
//! one critical section, so the file watcher, SIGHUP and `POST /-/reload` cannot interleave, and the
//! rules served are always those of the most recent read (an older file is never swapped in after a
//! newer one). Reload runs on a blocking thread, where waiting for the lock is fine.

use std::collections::{BTreeMap, BTreeSet};
use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use arc_swap::ArcSwap;
use serde::Serialize;
use sha2::{Digest, Sha256};

use crate::compile::{SecretRef, Secrets};
use crate::load::{self, Inputs};
use crate::ruleset::{RuleSet, SecretValue};
use crate::secrets::EnvSecrets;

/// The name and text of every file of a rules version (texts shared with its source map).
pub type Files = Vec<(String, Arc<str>)>;

/// What `/status` shows about the rules. Never contains a secret.
#[derive(Debug, Clone, Serialize)]
pub struct ReloadStatus {
    pub rules_file: String,
    /// Hex SHA-256 of the rules files (and, separately folded in, the secret values) now serving.
    pub hash: String,
    /// Counts successful loads, starting at 1.
    pub generation: u64,
    /// Unix milliseconds of the last successful load.
    pub loaded_at: i64,
    /// The files of the serving set.
    pub files: Vec<String>,
    /// Diagnostics of the last failed reload, cleared by the next success.
    pub last_error: Option<String>,
    pub last_error_at: Option<i64>,
    /// Reloads asked for since start (relevant file events, SIGHUP, `POST /-/reload`).
    pub reload_attempts: u64,
    /// Times the rules were parsed and compiled, the first load included. A reload whose inputs read
    /// the same as the serving set's (or as the last failed attempt's) compiles nothing.
    pub compiles: u64,
    /// File events in watched directories that concerned nothing the rules read, so reloaded nothing.
    pub ignored_events: u64,
}

/// What a reload did.
#[derive(Debug, Clone, PartialEq)]
pub enum ReloadOutcome {
    Reloaded {
        generation: u64,
    },
    Unchanged,
    /// The old rules keep serving; the text is the rendered diagnostics.
    Failed(String),
}

/// The rules now serving, shared by the server and the dispatcher.
pub struct RuleStore {
    path: PathBuf,
    rules: Arc<ArcSwap<RuleSet>>,
    /// The reload critical section (see the module's invariant) and what it compares against.
    reloading: Mutex<Reads>,
    /// What `status()` and the watcher read; never held across IO.
    state: Mutex<StoreState>,
    /// The sets served most recently (the current one included), newest last: the delivery log explains
    /// a delivery against the set that judged it. Sets beyond [`RECENT_RULES`] are held weakly (see
    /// [`RuleStore::remember`]).
    recent: Mutex<std::collections::VecDeque<Recent>>,
    /// The hash and file texts of the set now serving (the delivery log stores them).
    texts: Mutex<(String, Files)>,
    /// Told the hash of every set swapped in.
    on_swap: Mutex<Option<tokio::sync::mpsc::UnboundedSender<String>>>,
}

/// How many rule sets `RuleStore::version` remembers.
const RECENT_VERSIONS: usize = 16;

/// How many rules the remembered sets other than the newest may hold between them and still be kept
/// alive by the store. Past that, a set is remembered weakly: found while a request, a delivery or an
/// explanation still holds it, and otherwise compiled again from its stored texts when asked for.
/// Without this bound every reload of 100,000 rules would keep another copy of them (up to 16).
const RECENT_RULES: usize = 20_000;

/// A remembered rule set.
enum Recent {
    Kept(Arc<RuleSet>),
    Weak {
        version: String,
        rules: std::sync::Weak<RuleSet>,
    },
}

impl Recent {
    fn version(&self) -> &str {
        match self {
            Recent::Kept(rules) => rules.version(),
            Recent::Weak { version, .. } => version,
        }
    }

    fn get(&self) -> Option<Arc<RuleSet>> {
        match self {
            Recent::Kept(rules) => Some(rules.clone()),
            Recent::Weak { rules, .. } => rules.upgrade(),
        }
    }
}

struct StoreState {
    status: ReloadStatus,
    watch: Arc<WatchSet>,
}

/// What the serving set, and the last failed attempt, were built from.
struct Reads {
    serving: Recorded,
    /// Hash of the serving set's rules files and secret values: equal after a compile means the
    /// same rules, whatever paths they were read through.
    fingerprint: String,
    /// The last failed attempt's reads and its rendered diagnostics, until a success or until the
    /// inputs read the same as the serving set's again.
    failed: Option<(Recorded, String)>,
}

/// Every read one load made: the rules files through [`Inputs`], and the secrets.
struct Recorded {
    files: Inputs,
    secrets: Vec<SecretRead>,
}

/// One secret loaded, with a digest of what loading it gave (a value or an error).
struct SecretRead {
    name: String,
    from: OwnedRef,
    digest: [u8; 32],
}

enum OwnedRef {
    Env(String),
    File(PathBuf),
}

impl OwnedRef {
    fn borrow(&self) -> SecretRef<'_> {
        match self {
            OwnedRef::Env(var) => SecretRef::Env(var),
            OwnedRef::File(path) => SecretRef::File(path),
        }
    }
}

const SECRETS: EnvSecrets = EnvSecrets { lenient: false };

impl Recorded {
    /// Whether every read gives the same answer again; stops at the first difference.
    fn unchanged(&self) -> bool {
        self.files.unchanged()
            && self
                .secrets
                .iter()
                .all(|s| digest_secret(&SECRETS.load(&s.name, s.from.borrow())) == s.digest)
    }
}

fn digest_secret(loaded: &Result<SecretValue, String>) -> [u8; 32] {
    let mut h = Sha256::new();
    match loaded {
        Ok(value) => {
            h.update([0]);
            h.update(value.expose());
        }
        Err(reason) => {
            h.update([1]);
            h.update(reason.as_bytes());
        }
    }
    h.finalize().into()
}

/// A compiled set with what the store keeps about it.
struct Fresh {
    rules: RuleSet,
    /// The texts of its files, for `RuleStore::texts` (shared with the source map).
    texts: Files,
    hash: String,
    fingerprint: String,
    files: Vec<String>,
    reads: Recorded,
}

/// A set that did not compile: its rendered diagnostics and what it read.
struct Failure {
    diagnostics: String,
    reads: Recorded,
}

impl RuleStore {
    /// Loads the rules at `path` with real secrets; `Err` holds rendered diagnostics.
    pub fn load(path: &Path) -> Result<RuleStore, String> {
        let fresh = compile(path, None).map_err(|f| f.diagnostics)?;
        let status = ReloadStatus {
            rules_file: path.display().to_string(),
            hash: fresh.hash.clone(),
            generation: 1,
            loaded_at: crate::clock::now_ms(),
            files: fresh.files.clone(),
            last_error: None,
            last_error_at: None,
            reload_attempts: 0,
            compiles: 1,
            ignored_events: 0,
        };
        crate::metrics::config_loaded(&fresh.hash, 1);
        let watch = Arc::new(WatchSet::of(&[&fresh.reads]));
        let rules = Arc::new(fresh.rules);
        Ok(RuleStore {
            path: path.to_path_buf(),
            recent: Mutex::new([Recent::Kept(rules.clone())].into()),
            texts: Mutex::new((fresh.hash.clone(), fresh.texts)),
            on_swap: Mutex::new(None),
            rules: Arc::new(ArcSwap::new(rules)),
            reloading: Mutex::new(Reads {
                serving: fresh.reads,
                fingerprint: fresh.fingerprint,
                failed: None,
            }),
            state: Mutex::new(StoreState { status, watch }),
        })
    }

    /// The set loaded with hash `version`, if it is serving or served recently.
    pub fn version(&self, version: &str) -> Option<Arc<RuleSet>> {
        let current = self.snapshot();
        if current.version() == version {
            return Some(current);
        }
        let recent = self.recent.lock().unwrap_or_else(|p| p.into_inner());
        recent
            .iter()
            .rev()
            .find(|r| r.version() == version)
            .and_then(Recent::get)
    }

    /// The hash and the file texts of the set now serving.
    pub fn texts(&self) -> (String, Files) {
        self.texts.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Sends the hash of every set swapped in from now on to `tx`.
    pub fn on_swap(&self, tx: tokio::sync::mpsc::UnboundedSender<String>) {
        *self.on_swap.lock().unwrap_or_else(|p| p.into_inner()) = Some(tx);
    }

    /// Keeps `rules` among the recent versions (`version` finds it).
    pub fn remember(&self, rules: Arc<RuleSet>) {
        let mut recent = self.recent.lock().unwrap_or_else(|p| p.into_inner());
        recent.retain(|r| r.version() != rules.version());
        recent.push_back(Recent::Kept(rules));
        while recent.len() > RECENT_VERSIONS {
            recent.pop_front();
        }
        // Newest first, the older sets are kept while their rules fit the budget, then held weakly.
        let mut budget = RECENT_RULES;
        for r in recent.iter_mut().rev().skip(1) {
            if let Recent::Kept(rules) = r {
                match budget.checked_sub(rules.rules().len()) {
                    Some(left) => budget = left,
                    None => {
                        budget = 0;
                        *r = Recent::Weak {
                            version: rules.version().to_string(),
                            rules: Arc::downgrade(rules),
                        };
                    }
                }
            }
        }
        recent.retain(|r| !matches!(r, Recent::Weak { rules, .. } if rules.strong_count() == 0));
    }

    /// The rules now serving. Load once per request and keep the `Arc` for the whole request.
    pub fn snapshot(&self) -> Arc<RuleSet> {
        self.rules.load_full()
    }

    /// The swap handle, for the dispatcher.
    pub fn handle(&self) -> Arc<ArcSwap<RuleSet>> {
        self.rules.clone()
    }

    pub fn status(&self) -> ReloadStatus {
        self.state().status.clone()
    }

    fn state(&self) -> MutexGuard<'_, StoreState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn watch_set(&self) -> Arc<WatchSet> {
        self.state().watch.clone()
    }

    fn note_ignored_event(&self) {
        self.state().status.ignored_events += 1;
    }

    /// Re-reads the inputs and, if they differ, compiles and, if that succeeds and differs, swaps in
    /// the rules. One reload at a time per store; a caller arriving meanwhile waits, then reads
    /// what is on disk by then.
    pub fn reload(&self) -> ReloadOutcome {
        let mut reads = self.reloading.lock().unwrap_or_else(|p| p.into_inner());
        self.state().status.reload_attempts += 1;
        let outcome = self.reload_locked(&mut reads);
        match &outcome {
            ReloadOutcome::Reloaded { generation } => {
                crate::metrics::reload("success");
                tracing::info!(generation, "rules reloaded");
            }
            ReloadOutcome::Unchanged => {
                crate::metrics::reload("unchanged");
                tracing::debug!("rules unchanged");
            }
            ReloadOutcome::Failed(diagnostics) => {
                crate::metrics::reload("failure");
                tracing::error!(diagnostics = %diagnostics, "reload failed; the previous rules keep serving");
            }
        }
        outcome
    }

    fn reload_locked(&self, reads: &mut Reads) -> ReloadOutcome {
        if reads.serving.unchanged() {
            // Also a broken file put back as it was: forget the failure.
            if reads.failed.take().is_some() {
                let watch = Arc::new(WatchSet::of(&[&reads.serving]));
                let mut state = self.state();
                state.watch = watch;
                state.status.last_error = None;
                state.status.last_error_at = None;
            }
            return ReloadOutcome::Unchanged;
        }
        if let Some((failed, diagnostics)) = &reads.failed
            && failed.unchanged()
        {
            let diagnostics = diagnostics.clone();
            self.state().status.last_error_at = Some(crate::clock::now_ms());
            return ReloadOutcome::Failed(diagnostics);
        }
        self.state().status.compiles += 1;
        // What compiles as in the set serving is shared with it, not held twice.
        let serving = self.snapshot();
        match compile(&self.path, Some(&serving)) {
            Err(failure) => {
                // Watch what the failed attempt read too: creating a missing include must reload.
                let watch = Arc::new(WatchSet::of(&[&reads.serving, &failure.reads]));
                let mut state = self.state();
                state.watch = watch;
                state.status.last_error = Some(failure.diagnostics.clone());
                state.status.last_error_at = Some(crate::clock::now_ms());
                drop(state);
                let diagnostics = failure.diagnostics.clone();
                reads.failed = Some((failure.reads, failure.diagnostics));
                ReloadOutcome::Failed(diagnostics)
            }
            Ok(fresh) => {
                reads.failed = None;
                let watch = Arc::new(WatchSet::of(&[&fresh.reads]));
                let mut state = self.state();
                state.watch = watch;
                state.status.last_error = None;
                state.status.last_error_at = None;
                if fresh.fingerprint == reads.fingerprint {
                    reads.serving = fresh.reads;
                    return ReloadOutcome::Unchanged;
                }
                let rules = Arc::new(fresh.rules);
                self.rules.store(rules.clone());
                self.remember(rules);
                *self.texts.lock().unwrap_or_else(|p| p.into_inner()) =
                    (fresh.hash.clone(), fresh.texts);
                if let Some(tx) = &*self.on_swap.lock().unwrap_or_else(|p| p.into_inner()) {
                    let _ = tx.send(fresh.hash.clone());
                }
                let s = &mut state.status;
                s.generation += 1;
                s.hash = fresh.hash;
                s.loaded_at = crate::clock::now_ms();
                s.files = fresh.files;
                crate::metrics::config_loaded(&s.hash, s.generation);
                reads.serving = fresh.reads;
                reads.fingerprint = fresh.fingerprint;
                ReloadOutcome::Reloaded {
                    generation: s.generation,
                }
            }
        }
    }
}

/// Loads secrets as `serve` does, recording each load and hashing the values.
struct RecordingSecrets {
    reads: Mutex<Vec<SecretRead>>,
    values: Mutex<Sha256>,
}

impl Secrets for RecordingSecrets {
    fn load(&self, name: &str, from: SecretRef<'_>) -> Result<SecretValue, String> {
        let loaded = SECRETS.load(name, from);
        self.reads
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(SecretRead {
                name: name.to_string(),
                from: match from {
                    SecretRef::Env(var) => OwnedRef::Env(var.to_string()),
                    SecretRef::File(path) => OwnedRef::File(path.to_path_buf()),
                },
                digest: digest_secret(&loaded),
            });
        if let Ok(value) = &loaded {
            let mut h = self.values.lock().unwrap_or_else(|p| p.into_inner());
            h.update(name.as_bytes());
            h.update([0]);
            h.update(value.expose());
            h.update([0]);
        }
        loaded
    }
}

impl RecordingSecrets {
    fn into_parts(self) -> (Vec<SecretRead>, String) {
        let reads = self.reads.into_inner().unwrap_or_else(|p| p.into_inner());
        let values = self
            .values
            .into_inner()
            .unwrap_or_else(|p| p.into_inner())
            .finalize();
        (reads, hex::encode(values))
    }
}

fn compile(path: &Path, serving: Option<&RuleSet>) -> Result<Fresh, Failure> {
    let secrets = RecordingSecrets {
        reads: Mutex::new(Vec::new()),
        values: Mutex::new(Sha256::new()),
    };
    let loaded = match load::reload_file(path, &secrets, serving) {
        Ok(loaded) => loaded,
        Err(e) => {
            let mut diagnostics = format!("error: {e}\n");
            if let Some(help) = e.help() {
                diagnostics.push_str(&format!("  help: {help}\n"));
            }
            return Err(Failure {
                diagnostics,
                reads: Recorded {
                    files: e.inputs,
                    secrets: Vec::new(),
                },
            });
        }
    };
    let (secret_reads, values) = secrets.into_parts();
    let reads = Recorded {
        files: loaded.inputs,
        secrets: secret_reads,
    };
    let compiled = match loaded.result {
        Ok(c) => c,
        Err(d) => {
            return Err(Failure {
                diagnostics: d.render(&loaded.files, false),
                reads,
            });
        }
    };
    if !compiled.warnings.is_empty() {
        let text = compiled.warnings.render(&loaded.files, false);
        tracing::warn!(warnings = %text, "rules loaded with warnings");
    }
    let files = loaded.files.files().map(|(_, f)| f.name.clone()).collect();
    let texts = loaded
        .files
        .files()
        .map(|(_, f)| (f.name.clone(), f.text.clone()))
        .collect();
    Ok(Fresh {
        texts,
        rules: compiled.rules.with_version(loaded.hash.clone()),
        fingerprint: format!("{}:{values}", loaded.hash),
        hash: loaded.hash,
        files,
        reads,
    })
}

/// What the watcher watches: directories (canonical), and in each what matters.
#[derive(Debug, Default)]
struct WatchSet {
    dirs: BTreeMap<PathBuf, DirWatch>,
}

#[derive(Debug, Default)]
struct DirWatch {
    /// Files read from this directory.
    names: BTreeSet<OsString>,
    /// Last components of the include globs that read this directory: a new match matters.
    patterns: Vec<glob::Pattern>,
    /// A `**` glob read this directory: a new subdirectory matters.
    subdirs: bool,
}

/// The links through which the kubelet swaps a mounted ConfigMap or Secret.
const KUBELET_LINKS: [&str; 2] = ["..data", "..data_tmp"];

impl WatchSet {
    fn of(reads: &[&Recorded]) -> WatchSet {
        let mut set = WatchSet::default();
        for r in reads {
            for file in r.files.files() {
                set.add_file(file);
            }
            for secret in &r.secrets {
                if let OwnedRef::File(path) = &secret.from {
                    set.add_file(path);
                }
            }
            for g in r.files.globs() {
                let last = g
                    .pattern
                    .file_name()
                    .and_then(|n| n.to_str())
                    .and_then(|n| glob::Pattern::new(n).ok());
                let recursive = g.pattern.components().any(|c| c.as_os_str() == "**");
                // The walk's start, as a name in its parent: creating it (or replacing it) matters.
                if let Some(root) = g.dirs.first() {
                    set.add_name(root);
                }
                for dir in g.dirs {
                    let w = set.dirs.entry(canonical_dir(dir)).or_default();
                    w.patterns.extend(last.clone());
                    w.subdirs |= recursive;
                }
            }
        }
        set
    }

    /// Watches the file's name in its directory, and, when it is a symlink, its target's too.
    fn add_file(&mut self, path: &Path) {
        self.add_name(path);
        if let Ok(target) = path.canonicalize()
            && target != path
        {
            self.add_name(&target);
        }
    }

    fn add_name(&mut self, path: &Path) {
        let Some(name) = path.file_name() else {
            return;
        };
        let dir = path
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        self.dirs
            .entry(canonical_dir(dir))
            .or_default()
            .names
            .insert(name.to_os_string());
    }

    fn dirs(&self) -> BTreeSet<PathBuf> {
        self.dirs.keys().cloned().collect()
    }

    /// Whether a file event may concern something the rules read.
    fn relevant(&self, event: &notify::Event) -> bool {
        // No path, or a lost queue of events: anything may have changed.
        event.paths.is_empty()
            || event.need_rescan()
            || event
                .paths
                .iter()
                .any(|p| self.relevant_path(p, &event.kind))
    }

    fn relevant_path(&self, path: &Path, kind: &notify::EventKind) -> bool {
        use notify::EventKind;
        use notify::event::{CreateKind, RemoveKind};
        if self.dirs.contains_key(path) {
            // A watched directory itself was moved or removed.
            return true;
        }
        let (Some(dir), Some(name)) = (path.parent(), path.file_name()) else {
            return true;
        };
        let Some(w) = self.dirs.get(dir) else {
            return false;
        };
        let options = glob::MatchOptions {
            case_sensitive: true,
            require_literal_separator: true,
            require_literal_leading_dot: false,
        };
        KUBELET_LINKS.iter().any(|l| name == *l)
            || w.names.contains(name)
            || w.patterns
                .iter()
                .any(|p| p.matches_with(&name.to_string_lossy(), options))
            || (w.subdirs
                && (matches!(
                    kind,
                    EventKind::Create(CreateKind::Folder) | EventKind::Remove(RemoveKind::Folder)
                ) || path.is_dir()))
    }
}

/// The directory as the watcher names it in events: canonical, so two spellings are one watch.
fn canonical_dir(dir: &Path) -> PathBuf {
    dir.canonicalize()
        .or_else(|_| std::path::absolute(dir))
        .unwrap_or_else(|_| dir.to_path_buf())
}

/// Watches what the store's rules read and reloads after relevant changes settle for `debounce`.
/// Runs until `shutdown`; re-watches after each reload, since includes and secret files may have
/// moved. Events about other files in the watched directories are counted in
/// [`ReloadStatus::ignored_events`] and do nothing else.
pub async fn watch(
    store: Arc<RuleStore>,
    debounce: Duration,
    shutdown: impl std::future::Future<Output = ()>,
) {
    use notify::{RecursiveMode, Watcher};
    tokio::pin!(shutdown);
    // `None` is a watcher error, which may hide a change: it counts as a relevant event.
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<Option<notify::Event>>();
    let mut watcher = match notify::recommended_watcher(
        move |event: notify::Result<notify::Event>| match event {
            Ok(e) if matches!(e.kind, notify::EventKind::Access(_)) => {}
            Ok(e) => {
                let _ = tx.send(Some(e));
            }
            Err(_) => {
                let _ = tx.send(None);
            }
        },
    ) {
        Ok(w) => w,
        Err(e) => {
            tracing::error!(error = %e, "cannot watch the rules files; reload with SIGHUP or POST /-/reload");
            return shutdown.await;
        }
    };
    let mut watched: BTreeSet<PathBuf> = BTreeSet::new();
    loop {
        let set = store.watch_set();
        let dirs = set.dirs();
        // Only the difference: a directory watched throughout loses no event. One that could not
        // be watched (not there yet) is tried again after the next reload.
        for d in watched.difference(&dirs) {
            let _ = watcher.unwatch(d);
        }
        for d in dirs.difference(&watched) {
            if let Err(e) = watcher.watch(d, RecursiveMode::NonRecursive) {
                tracing::debug!(dir = %d.display(), error = %e, "cannot watch directory");
            }
        }
        watched = dirs
            .into_iter()
            .filter(|d| watched.contains(d) || d.is_dir())
            .collect();
        let relevant = |event: &Option<notify::Event>| {
            let yes = event.as_ref().is_none_or(|e| set.relevant(e));
            if !yes {
                store.note_ignored_event();
            }
            yes
        };
        loop {
            tokio::select! {
                () = &mut shutdown => return,
                Some(event) = rx.recv() => if relevant(&event) { break },
            }
        }
        // Editors and the kubelet write in bursts: wait until relevant events stop for `debounce`.
        let mut quiet_at = tokio::time::Instant::now() + debounce;
        loop {
            tokio::select! {
                () = &mut shutdown => return,
                () = tokio::time::sleep_until(quiet_at) => break,
                Some(event) = rx.recv() => if relevant(&event) {
                    quiet_at = tokio::time::Instant::now() + debounce;
                },
            }
        }
        let s = store.clone();
        let _ = tokio::task::spawn_blocking(move || s.reload()).await;
    }
}
