//! The whole gateway in one call: load the rules, open the queue, serve both ports, watch the rules,
//! deliver, and stop in order. `gateway serve` and the tests both run it, so the tests exercise the real
//! wiring and the real shutdown order.

use std::future::Future;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::{Notify, watch};

use crate::delivery_log::{DeliveryLog, LogConfig};
use crate::dispatch::{DispatchConfig, Dispatcher};
use crate::queue::{Queue, QueueError};
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
    let queue = Arc::new(Queue::open(&spec).await?);
    let dispatcher = Dispatcher::new(queue.clone(), store.handle(), config.dispatch.clone());
    let mut state = State::new(
        store.clone(),
        queue.clone(),
        dispatcher.waker(),
        config.server.clone(),
        Arc::new(DeliveryLog::new(config.log.clone())),
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
    if let Err(e) = queue.close().await {
        tracing::warn!(error = %e, "closing the queue failed");
    }
    tracing::info!("stopped; the queue keeps what was not delivered");
    Ok(())
}
