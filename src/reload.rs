//! The live rule set and how it changes: load, reload on file events (debounced), SIGHUP or
//! `POST /-/reload`, swap only on success.
//!
//! Kubernetes mounts a ConfigMap as a directory whose files are symlinks through `..data`, which the
//! kubelet swaps atomically; editors save by writing a new file and renaming it over the old one. Both
//! change the *directory*, so the watcher watches the directories of the rules file, of every file it
//! includes, and of every secret file, rather than the files themselves, and re-resolves them after each
//! reload. A reload whose rules and secrets hash the same as the running set changes nothing.
//!
//! INVARIANT: a bad file never replaces a good one. The new set is compiled completely before the
//! swap; on failure the old set keeps serving and the diagnostics are kept for `/status` and logged.
//! Requests hold the `Arc` they started with, so in-flight requests finish on their set.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use arc_swap::ArcSwap;
use serde::Serialize;
use sha2::{Digest, Sha256};

use crate::compile::{SecretRef, Secrets};
use crate::load;
use crate::ruleset::{RuleSet, SecretValue};
use crate::secrets::EnvSecrets;

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
    state: Mutex<StoreState>,
}

struct StoreState {
    status: ReloadStatus,
    /// Hash of rules and secret values: equal means nothing to do.
    fingerprint: String,
    /// Directories to watch: of the rules files and of secret files.
    dirs: Vec<PathBuf>,
}

/// A compiled set with what the store keeps about it.
struct Fresh {
    rules: RuleSet,
    hash: String,
    fingerprint: String,
    files: Vec<String>,
    dirs: Vec<PathBuf>,
}

impl RuleStore {
    /// Loads the rules at `path` with real secrets; `Err` holds rendered diagnostics.
    pub fn load(path: &Path) -> Result<RuleStore, String> {
        let fresh = compile(path)?;
        let status = ReloadStatus {
            rules_file: path.display().to_string(),
            hash: fresh.hash.clone(),
            generation: 1,
            loaded_at: crate::queue::now_ms(),
            files: fresh.files.clone(),
            last_error: None,
            last_error_at: None,
        };
        crate::metrics::config_loaded(&fresh.hash, 1);
        Ok(RuleStore {
            path: path.to_path_buf(),
            rules: Arc::new(ArcSwap::from_pointee(fresh.rules)),
            state: Mutex::new(StoreState {
                status,
                fingerprint: fresh.fingerprint,
                dirs: fresh.dirs,
            }),
        })
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
        self.state
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .status
            .clone()
    }

    fn dirs(&self) -> Vec<PathBuf> {
        self.state
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .dirs
            .clone()
    }

    /// Re-reads, compiles and, if it compiled and differs, swaps in the rules.
    pub fn reload(&self) -> ReloadOutcome {
        let outcome = match compile(&self.path) {
            Err(diagnostics) => {
                let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
                state.status.last_error = Some(diagnostics.clone());
                state.status.last_error_at = Some(crate::queue::now_ms());
                ReloadOutcome::Failed(diagnostics)
            }
            Ok(fresh) => {
                let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
                if fresh.fingerprint == state.fingerprint {
                    state.status.last_error = None;
                    state.status.last_error_at = None;
                    state.dirs = fresh.dirs;
                    ReloadOutcome::Unchanged
                } else {
                    self.rules.store(Arc::new(fresh.rules));
                    let s = &mut state.status;
                    s.generation += 1;
                    s.hash = fresh.hash;
                    s.loaded_at = crate::queue::now_ms();
                    s.files = fresh.files;
                    s.last_error = None;
                    s.last_error_at = None;
                    state.fingerprint = fresh.fingerprint;
                    state.dirs = fresh.dirs;
                    crate::metrics::config_loaded(&state.status.hash, state.status.generation);
                    ReloadOutcome::Reloaded {
                        generation: state.status.generation,
                    }
                }
            }
        };
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
}

/// Records the secret files it reads, so their directories can be watched too.
struct RecordingSecrets {
    inner: EnvSecrets,
    files: Mutex<Vec<PathBuf>>,
    values: Mutex<Sha256>,
}

impl Secrets for RecordingSecrets {
    fn load(&self, name: &str, from: SecretRef<'_>) -> Result<SecretValue, String> {
        if let SecretRef::File(path) = from {
            self.files
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .push(path.to_path_buf());
        }
        let value = self.inner.load(name, from)?;
        let mut h = self.values.lock().unwrap_or_else(|p| p.into_inner());
        h.update(name.as_bytes());
        h.update([0]);
        h.update(value.expose());
        h.update([0]);
        Ok(value)
    }
}

fn compile(path: &Path) -> Result<Fresh, String> {
    let secrets = RecordingSecrets {
        inner: EnvSecrets { lenient: false },
        files: Mutex::new(Vec::new()),
        values: Mutex::new(Sha256::new()),
    };
    let loaded = load::load_file(path, &secrets).map_err(|e| format!("error: {e}"))?;
    let compiled = match loaded.result {
        Ok(c) => c,
        Err(d) => return Err(crate::cli::render(&d, &loaded.files, false)),
    };
    if !compiled.warnings.is_empty() {
        let text = crate::cli::render(&compiled.warnings, &loaded.files, false);
        tracing::warn!(warnings = %text, "rules loaded with warnings");
    }
    let mut dirs: Vec<PathBuf> = Vec::new();
    let mut files = Vec::new();
    let secret_files = secrets
        .files
        .into_inner()
        .unwrap_or_else(|p| p.into_inner());
    for (_, file) in loaded.files.files() {
        files.push(file.name.clone());
        if let Some(p) = &file.path {
            dirs.push(watch_dir(p));
        }
    }
    dirs.extend(secret_files.iter().map(|p| watch_dir(p)));
    dirs.sort();
    dirs.dedup();
    let values = secrets
        .values
        .into_inner()
        .unwrap_or_else(|p| p.into_inner())
        .finalize();
    let fingerprint = format!("{}:{}", loaded.hash, hex::encode(values));
    Ok(Fresh {
        rules: compiled.rules,
        hash: loaded.hash,
        fingerprint,
        files,
        dirs,
    })
}

fn watch_dir(file: &Path) -> PathBuf {
    let parent = file
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    parent.to_path_buf()
}

/// Watches the store's directories and reloads after changes settle for `debounce`. Runs until
/// `shutdown`; re-watches after each reload, since includes and secret files may have moved.
pub async fn watch(
    store: Arc<RuleStore>,
    debounce: Duration,
    shutdown: impl std::future::Future<Output = ()>,
) {
    use notify::{RecursiveMode, Watcher};
    tokio::pin!(shutdown);
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<()>();
    let mut watcher = match notify::recommended_watcher(
        move |event: notify::Result<notify::Event>| {
            if event.is_ok_and(|e| !matches!(e.kind, notify::EventKind::Access(_))) {
                let _ = tx.send(());
            }
        },
    ) {
        Ok(w) => w,
        Err(e) => {
            tracing::error!(error = %e, "cannot watch the rules files; reload with SIGHUP or POST /-/reload");
            return shutdown.await;
        }
    };
    let mut watched: Vec<PathBuf> = Vec::new();
    loop {
        let dirs = store.dirs();
        if dirs != watched {
            for d in &watched {
                let _ = watcher.unwatch(d);
            }
            for d in &dirs {
                if let Err(e) = watcher.watch(d, RecursiveMode::NonRecursive) {
                    tracing::warn!(dir = %d.display(), error = %e, "cannot watch directory");
                }
            }
            watched = dirs;
        }
        tokio::select! {
            () = &mut shutdown => return,
            Some(()) = rx.recv() => {}
        }
        // Editors and the kubelet write in bursts: wait until events stop for `debounce`.
        loop {
            tokio::select! {
                () = &mut shutdown => return,
                () = tokio::time::sleep(debounce) => break,
                Some(()) = rx.recv() => {}
            }
        }
        let s = store.clone();
        let _ = tokio::task::spawn_blocking(move || s.reload()).await;
    }
}
