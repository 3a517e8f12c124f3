//! The whole gateway in one call: load the rules, open the queue, serve both ports, watch the rules,
//! deliver, and stop in order. `gateway serve` and the tests both run it, so the tests exercise the real
//! wiring and the real shutdown order.

use std::future::Future;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::{Notify, mpsc, watch};

use crate::delivery_log::Record;
use crate::delivery_log::{DeliveryLog, LogConfig};
use crate::dispatch::{DispatchConfig, Dispatcher};
use crate::queue::{Queue, QueueBackend, QueueError};
use crate::reload::RuleStore;
use crate::server::{ServerConfig, State};

/// Everything `gateway serve` is configured with (its flags), but the listeners.
#[derive(Debug, Clone)]
pub struct Config {
    pub rules: PathBuf,
    /// The embedded SQLite queue's data directory, used unless `queue` names a database.
    pub data: PathBuf,
    /// `--queue`: a `postgres://` URL of a queue shared by replicas.
    pub queue: Option<String>,
    /// `--queue-ca-file`: CA certificates (PEM) trusted for PostgreSQL's TLS, besides the webpki roots.
    pub queue_ca_file: Option<PathBuf>,
    pub server: ServerConfig,
    pub dispatch: DispatchConfig,
    pub log: LogConfig,
    /// The bearer token of the admin API, if any.
    pub admin_token: Option<Vec<u8>>,
    /// Quiet time after a file change before reloading.
    pub reload_debounce: Duration,
}

/// The two bound ports.
pub struct Listeners {
    pub hooks: TcpListener,
    pub admin: TcpListener,
}

/// Why the gateway did not start.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// The rules do not load: the rendered diagnostics.
    #[error("{0}")]
    Rules(String),
    #[error(transparent)]
    Queue(#[from] QueueError),
}

impl RunError {
    /// The fix, for the command line's `help:` line.
    pub fn help(&self) -> Option<&'static str> {
        match self {
            RunError::Queue(QueueError::Locked { .. }) => {
                Some("stop the other gateway, or give this one its own `--data` directory")
            }
            RunError::Queue(QueueError::Damaged { .. }) => Some(
                "keep the file, and recover what it holds as docs/delivery.md says (\"A damaged queue\")",
            ),
            _ => None,
        }
    }
}

/// Runs the gateway until `shutdown` completes; reloads the rules whenever `reload` is notified (and
/// when the files change). Stops in order: both ports stop accepting and finish their requests, then the
/// dispatcher finishes or returns its deliveries, then the queue is checkpointed and closed.
pub async fn run(
    config: Config,
    listeners: Listeners,
    shutdown: impl Future<Output = ()>,
    reload: Arc<Notify>,
) -> Result<(), RunError> {
    let store = Arc::new(RuleStore::load(&config.rules).map_err(RunError::Rules)?);
    let spec = match &config.queue {
        Some(url) => url.clone(),
        None => config.data.display().to_string(),
    };
    let options = crate::queue::postgres::Options {
        ca_file: config.queue_ca_file.clone(),
    };
    let queue = Arc::new(Queue::open_with(&spec, &options).await?);
    let dispatcher = Dispatcher::new(queue.clone(), store.handle(), config.dispatch.clone());
    let mut background = tokio::task::JoinSet::new();
    // Replicas on PostgreSQL store every record, so each replica lists all of them; on SQLite, records
    // other than accepted ones stay in this process's memory.
    let log = match &*queue {
        Queue::Postgres(_) => {
            let (tx, rx) = mpsc::channel(crate::delivery_log::PERSIST_BACKLOG);
            background.spawn(store_records(queue.clone(), rx));
            DeliveryLog::persisting(config.log.clone(), tx)
        }
        Queue::Sqlite(_) => DeliveryLog::new(config.log.clone()),
    };
    // The rules versions that judge deliveries are kept, so those deliveries can be explained later.
    let (versions_tx, versions_rx) = mpsc::unbounded_channel();
    store.on_swap(versions_tx.clone());
    let _ = versions_tx.send(store.status().hash);
    background.spawn(store_versions(store.clone(), queue.clone(), versions_rx));
    background.spawn(prune_records(queue.clone(), config.log.clone()));
    let mut state = State::new(
        store.clone(),
        queue.clone(),
        dispatcher.waker(),
        config.server.clone(),
        Arc::new(log),
    );
    state.admin_token = config.admin_token.clone();
    let state = Arc::new(state);
    let bound = |l: &TcpListener| l.local_addr().map(|a| a.to_string()).unwrap_or_default();
    tracing::info!(
        listen = %bound(&listeners.hooks),
        admin = %bound(&listeners.admin),
        rules = %config.rules.display(),
        hash = %store.status().hash,
        queue = %queue.describe(),
        "hookgate serving"
    );

    let (stop_tx, stop_rx) = watch::channel(false);
    let stopped = move || {
        let mut rx = stop_rx.clone();
        async move {
            let _ = rx.wait_for(|s| *s).await;
        }
    };
    let mut servers = tokio::task::JoinSet::new();
    servers.spawn(crate::server::serve_hooks(
        listeners.hooks,
        state.clone(),
        stopped(),
    ));
    servers.spawn(crate::server::serve_admin(
        listeners.admin,
        state.clone(),
        stopped(),
    ));
    servers.spawn(crate::reload::watch(
        store.clone(),
        config.reload_debounce,
        stopped(),
    ));
    let (dispatch_tx, dispatch_rx) = watch::channel(false);
    let dispatcher_task = tokio::spawn(dispatcher.run(async move {
        let mut rx = dispatch_rx;
        let _ = rx.wait_for(|s| *s).await;
    }));

    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            () = &mut shutdown => break,
            () = reload.notified() => {
                let s = store.clone();
                let _ = tokio::task::spawn_blocking(move || s.reload()).await;
            }
        }
    }
    tracing::info!("shutting down: no new requests; finishing those in flight");
    let _ = stop_tx.send(true);
    while servers.join_next().await.is_some() {}
    // Requests are done, so nothing more is enqueued; let deliveries finish or return to the queue.
    let _ = dispatch_tx.send(true);
    let _ = dispatcher_task.await;
    background.shutdown().await;
    if let Err(e) = queue.close().await {
        tracing::warn!(error = %e, "closing the queue failed");
    }
    tracing::info!("stopped; the queue keeps what was not delivered");
    Ok(())
}

/// Stores records in batches as they come (up to `BATCH` per write, or what came in the last tick).
async fn store_records(queue: Arc<Queue>, mut rx: mpsc::Receiver<Arc<Record>>) {
    const BATCH: usize = 500;
    let mut batch = Vec::with_capacity(BATCH);
    while rx.recv_many(&mut batch, BATCH).await > 0 {
        if let Err(e) = queue.store_records(std::mem::take(&mut batch)).await {
            tracing::warn!(error = %e, "delivery records not stored; they stay in memory");
        }
    }
}

/// Stores the text of every rules version the store serves.
async fn store_versions(
    store: Arc<RuleStore>,
    queue: Arc<Queue>,
    mut rx: mpsc::UnboundedReceiver<String>,
) {
    while let Some(hash) = rx.recv().await {
        let (serving, texts) = store.texts();
        if serving != hash {
            continue; // Replaced again meanwhile; its successor's hash is on its way.
        }
        if let Err(e) = queue.put_rules_version(hash, texts).await {
            tracing::warn!(error = %e, "the rules version was not stored; deliveries it judges can be explained while it serves");
        }
    }
}

/// Keeps the stored records within the log's bounds of age and count, every few minutes.
async fn prune_records(queue: Arc<Queue>, log: crate::delivery_log::LogConfig) {
    let mut every = tokio::time::interval(Duration::from_secs(300));
    loop {
        every.tick().await;
        let before = crate::clock::now_ms() - log.max_age.as_millis() as i64;
        // With the log off (no records allowed), only age prunes: a count of 0 would delete what
        // other replicas sharing the database store, and what this one stored before.
        let keep = if log.max_records == 0 {
            u64::MAX
        } else {
            log.max_records as u64
        };
        match queue.prune_records(before, keep).await {
            Ok(n) if n > 0 => tracing::info!(records = n, "pruned old delivery records"),
            Ok(_) => {}
            Err(e) => tracing::warn!(error = %e, "pruning delivery records failed"),
        }
    }
}
