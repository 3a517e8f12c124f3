//! `gateway serve`: flags (each also from the environment) → `server::Config`; logs; signals →
//! `server::run`.

use std::io::IsTerminal;
use std::path::PathBuf;
use std::sync::Arc;

use clap::ValueEnum;

use crate::cli::{Exit, parse_duration_arg, parse_size_arg};
use crate::compile::{SecretRef, Secrets};
use crate::delivery_log::{LogConfig, RecordBodies};
use crate::dispatch::DispatchConfig;
use crate::secrets::EnvSecrets;
use crate::server::{Config, Listeners, RunError, ServerConfig};

/// `gateway serve` flags; each also reads an environment variable.
#[derive(Debug, clap::Args)]
pub(crate) struct ServeArgs {
    /// The rules file.
    #[arg(long, env = "HOOKGATE_RULES", default_value = "rules.hook")]
    rules: PathBuf,
    /// Address of the webhook port.
    #[arg(long, env = "HOOKGATE_LISTEN", default_value = "0.0.0.0:8080", value_parser = parse_listen_arg)]
    listen: String,
    /// Address of the admin port (health, metrics, status, reload); keep it cluster-internal.
    #[arg(long, env = "HOOKGATE_ADMIN", default_value = "127.0.0.1:9090", value_parser = parse_listen_arg)]
    admin: String,
    /// A queue shared by replicas: `postgres://USER:PASSWORD@HOST/DB` (`postgresql://` too). Without it,
    /// the embedded SQLite queue in `--data`.
    #[arg(long, env = "HOOKGATE_QUEUE")]
    queue: Option<String>,
    /// CA certificates (PEM) that PostgreSQL's TLS certificate may be signed by, besides the public
    /// (webpki) roots; e.g. CloudNativePG's cluster CA.
    #[arg(long, env = "HOOKGATE_QUEUE_CA_FILE")]
    queue_ca_file: Option<PathBuf>,
    /// Directory of the queue database.
    #[arg(long, env = "HOOKGATE_DATA", default_value = "data")]
    data: PathBuf,
    /// Largest request body, unless a source sets `max_body`.
    #[arg(long, env = "HOOKGATE_MAX_BODY", default_value = "10MiB", value_parser = parse_size_arg)]
    max_body: u64,
    /// Bytes of request bodies being read at once, over all requests; past it, 503 with Retry-After.
    #[arg(long, env = "HOOKGATE_MAX_BODY_IN_FLIGHT", default_value = "64MiB", value_parser = parse_size_arg)]
    max_body_in_flight: u64,
    /// HTTP/1 request headers must arrive within this, and a new connection must start a request within it.
    #[arg(long, env = "HOOKGATE_HEADER_TIMEOUT", default_value = "10s", value_parser = parse_duration_arg)]
    header_timeout: std::time::Duration,
    /// An idle keep-alive connection (HTTP/1 between requests, HTTP/2 without streams) closes after this.
    #[arg(long, env = "HOOKGATE_IDLE_TIMEOUT", default_value = "60s", value_parser = parse_duration_arg)]
    idle_timeout: std::time::Duration,
    /// A whole request (body, verification, enqueue) must complete within this.
    #[arg(long, env = "HOOKGATE_REQUEST_TIMEOUT", default_value = "30s", value_parser = parse_duration_arg)]
    request_timeout: std::time::Duration,
    /// Connections served at once, per port.
    #[arg(long, env = "HOOKGATE_MAX_CONNECTIONS", default_value_t = 1024)]
    max_connections: usize,
    /// A delivery id seen again within this is answered `duplicate` and runs nothing.
    #[arg(long, env = "HOOKGATE_DEDUP_WINDOW", default_value = "24h", value_parser = parse_duration_arg)]
    dedup_window: std::time::Duration,
    /// Deliveries in flight across all targets.
    #[arg(long, env = "HOOKGATE_MAX_INFLIGHT", default_value_t = 256)]
    max_inflight: usize,
    /// How long shutdown waits for in-flight requests and deliveries.
    #[arg(long, env = "HOOKGATE_SHUTDOWN_GRACE", default_value = "10s", value_parser = parse_duration_arg)]
    shutdown_grace: std::time::Duration,
    /// A delivery's claim lasts three target timeouts plus this; a replica that dies mid-delivery has its
    /// jobs delivered by another after that long.
    #[arg(long, env = "HOOKGATE_LEASE_MARGIN", default_value = "60s", value_parser = parse_duration_arg)]
    lease_margin: std::time::Duration,
    /// Done and dead jobs are deleted after this.
    #[arg(long, env = "HOOKGATE_RETENTION", default_value = "7d", value_parser = parse_duration_arg)]
    retention: std::time::Duration,
    /// Quiet time after a file change before reloading.
    #[arg(long, env = "HOOKGATE_RELOAD_DEBOUNCE", default_value = "250ms", value_parser = parse_duration_arg)]
    reload_debounce: std::time::Duration,
    /// A file holding the bearer token that the admin API (`/api/*`) and `POST /-/reload` require; off by
    /// default (keep the admin port cluster-internal either way).
    #[arg(long, env = "HOOKGATE_ADMIN_TOKEN_FILE")]
    admin_token_file: Option<PathBuf>,
    /// Request bodies the delivery log keeps: `all` that reached evaluation, `matched` only, or `none`.
    #[arg(long, env = "HOOKGATE_RECORD_BODIES", value_enum, default_value_t = RecordBodiesArg::All)]
    record_bodies: RecordBodiesArg,
    /// Delivery records kept (in memory; accepted ones also in the queue's database); 0 turns the
    /// delivery log off.
    #[arg(
        long,
        env = "HOOKGATE_DELIVERIES_MAX_RECORDS",
        default_value_t = 10_000
    )]
    deliveries_max_records: usize,
    /// Bytes of delivery records (bodies included) kept in memory.
    #[arg(long, env = "HOOKGATE_DELIVERIES_MAX_BYTES", default_value = "64MiB", value_parser = parse_size_arg)]
    deliveries_max_bytes: u64,
    /// Delivery records older than this are dropped.
    #[arg(long, env = "HOOKGATE_DELIVERIES_MAX_AGE", default_value = "7d", value_parser = parse_duration_arg)]
    deliveries_max_age: std::time::Duration,
    /// Log format; levels come from `RUST_LOG` (default `info`).
    #[arg(long, env = "HOOKGATE_LOG_FORMAT", value_enum, default_value_t = LogFormat::Pretty)]
    log_format: LogFormat,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum RecordBodiesArg {
    All,
    Matched,
    None,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum LogFormat {
    Pretty,
    Json,
}

/// A listen address: `HOST:PORT` (a name or an IP; `[::1]:8080` for IPv6), or a bare `:PORT` / `PORT`
/// for every IPv4 interface. Names are resolved when binding.
fn parse_listen_arg(s: &str) -> Result<String, String> {
    let s = s.trim();
    let port = |p: &str| p.parse::<u16>().ok();
    if let Some(p) = port(s).or_else(|| s.strip_prefix(':').and_then(port)) {
        return Ok(format!("0.0.0.0:{p}"));
    }
    match s.rsplit_once(':') {
        Some((host, p)) if !host.is_empty() && port(p).is_some() => Ok(s.to_string()),
        _ => Err(format!(
            "invalid address `{s}` (e.g. `0.0.0.0:8080`, `localhost:8080`, `:8080`)"
        )),
    }
}

pub(super) fn serve(args: ServeArgs) -> Exit {
    let _logs = init_logs(args.log_format);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the runtime: {e}");
            return Exit::Errors;
        }
    };
    runtime.block_on(run(args))
}

/// Sets up logging for `serve`: levels from `RUST_LOG` (default `info`), lines written by a thread of
/// their own through a buffer, so a request never waits on stderr and bursts of lines share a write.
/// Colour only on a terminal. The guard flushes what is left when dropped.
fn init_logs(format: LogFormat) -> tracing_appender::non_blocking::WorkerGuard {
    let filter =
        tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into());
    let ansi = std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none();
    let (writer, guard) = tracing_appender::non_blocking::NonBlockingBuilder::default()
        .buffered_lines_limit(LOG_BUFFERED_LINES)
        .thread_name("hookgate-logs")
        .finish(std::io::BufWriter::with_capacity(
            64 << 10,
            std::io::stderr(),
        ));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(writer)
        .with_ansi(ansi);
    match format {
        // One object per line. The tracing target (a module path) is left out: it would repeat the
        // `target` key of delivery lines, and operators do not need it.
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_target(false)
            .with_span_list(false)
            .init(),
        LogFormat::Pretty => builder.init(),
    }
    guard
}

/// Log lines waiting for the writer thread; beyond it new lines are dropped rather than slowing
/// requests down.
const LOG_BUFFERED_LINES: usize = 128_000;

/// The flags as the server takes them.
fn config(args: &ServeArgs) -> Result<Config, Exit> {
    let admin_token = match &args.admin_token_file {
        None => None,
        Some(path) => {
            match (EnvSecrets { lenient: false }).load("admin token", SecretRef::File(path)) {
                Ok(token) => Some(token.expose().to_vec()),
                Err(e) => {
                    eprintln!("error: the admin token: {e}");
                    eprintln!(
                        "  help: `--admin-token-file` names a file holding one token, e.g. from `gateway secret`"
                    );
                    return Err(Exit::Errors);
                }
            }
        }
    };
    if args.queue_ca_file.is_some() && args.queue.is_none() {
        eprintln!("error: `--queue-ca-file` is for a PostgreSQL queue, and no `--queue` is given");
        eprintln!(
            "  help: give the PostgreSQL URL with `--queue` (`HOOKGATE_QUEUE`), or drop `--queue-ca-file` to use the embedded SQLite queue"
        );
        return Err(Exit::Errors);
    }
    Ok(Config {
        rules: args.rules.clone(),
        data: args.data.clone(),
        queue: args.queue.clone(),
        queue_ca_file: args.queue_ca_file.clone(),
        server: ServerConfig {
            max_body: args.max_body,
            max_body_in_flight: args.max_body_in_flight,
            header_timeout: args.header_timeout,
            idle_timeout: args.idle_timeout,
            request_timeout: args.request_timeout,
            max_connections: args.max_connections,
            dedup_window: args.dedup_window,
            shutdown_grace: args.shutdown_grace,
        },
        dispatch: DispatchConfig {
            max_inflight: args.max_inflight,
            grace: args.shutdown_grace,
            retention: args.retention,
            lease_margin: args.lease_margin,
            ..DispatchConfig::default()
        },
        log: LogConfig {
            max_records: args.deliveries_max_records,
            max_bytes: usize::try_from(args.deliveries_max_bytes).unwrap_or(usize::MAX),
            max_age: args.deliveries_max_age,
            bodies: match args.record_bodies {
                RecordBodiesArg::All => RecordBodies::All,
                RecordBodiesArg::Matched => RecordBodies::Matched,
                RecordBodiesArg::None => RecordBodies::None,
            },
        },
        admin_token,
        reload_debounce: args.reload_debounce,
    })
}

async fn run(args: ServeArgs) -> Exit {
    let config = match config(&args) {
        Ok(c) => c,
        Err(exit) => return exit,
    };
    let listeners = match (
        tokio::net::TcpListener::bind(args.listen.as_str()).await,
        tokio::net::TcpListener::bind(args.admin.as_str()).await,
    ) {
        (Ok(hooks), Ok(admin)) => Listeners { hooks, admin },
        (Err(e), _) => {
            eprintln!("error: cannot listen on {}: {e}", args.listen);
            return Exit::Errors;
        }
        (_, Err(e)) => {
            eprintln!("error: cannot listen on {}: {e}", args.admin);
            return Exit::Errors;
        }
    };
    let signal = |kind| tokio::signal::unix::signal(kind);
    let (mut hup, mut term) = match (
        signal(tokio::signal::unix::SignalKind::hangup()),
        signal(tokio::signal::unix::SignalKind::terminate()),
    ) {
        (Ok(h), Ok(t)) => (h, t),
        (Err(e), _) | (_, Err(e)) => {
            eprintln!("error: cannot handle signals: {e}");
            return Exit::Errors;
        }
    };
    let reload = Arc::new(tokio::sync::Notify::new());
    let (stop_tx, mut stop_rx) = tokio::sync::watch::channel(false);
    let shutdown = async move {
        let _ = stop_rx.wait_for(|s| *s).await;
    };
    let server = tokio::spawn(crate::server::run(
        config,
        listeners,
        shutdown,
        reload.clone(),
    ));
    tokio::pin!(server);
    let result = loop {
        tokio::select! {
            result = &mut server => break result,
            _ = hup.recv() => {
                tracing::info!("SIGHUP: reloading the rules");
                reload.notify_one();
            }
            _ = term.recv() => { let _ = stop_tx.send(true); }
            _ = tokio::signal::ctrl_c() => { let _ = stop_tx.send(true); }
        }
    };
    match result {
        Ok(Ok(())) => Exit::Ok,
        Ok(Err(RunError::Rules(diagnostics))) => {
            eprint!("{diagnostics}");
            if !diagnostics.ends_with('\n') {
                eprintln!();
            }
            eprintln!(
                "error: the rules in `{}` do not load; nothing started",
                args.rules.display()
            );
            if !args.rules.exists() {
                eprintln!(
                    "  help: name the rules file with `--rules PATH` (or `HOOKGATE_RULES`); without it, `gateway serve` reads `rules.hook` in the working directory"
                );
            }
            Exit::Errors
        }
        Ok(Err(e)) => {
            eprintln!("error: {e}");
            if let Some(help) = e.help() {
                eprintln!("  help: {help}");
            }
            Exit::Errors
        }
        Err(e) => {
            eprintln!("error: the gateway stopped unexpectedly: {e}");
            Exit::Errors
        }
    }
}

#[cfg(test)]
mod tests {
    use super::parse_listen_arg;

    #[test]
    fn listen_addresses_take_names_and_bare_ports() {
        assert_eq!(parse_listen_arg(":8080").unwrap(), "0.0.0.0:8080");
        assert_eq!(parse_listen_arg("8080").unwrap(), "0.0.0.0:8080");
        assert_eq!(
            parse_listen_arg("localhost:8080").unwrap(),
            "localhost:8080"
        );
        assert_eq!(parse_listen_arg("[::1]:9090").unwrap(), "[::1]:9090");
        assert_eq!(parse_listen_arg("10.0.0.1:80").unwrap(), "10.0.0.1:80");
        for bad in ["localhost", ":http", "host:99999", ""] {
            assert!(parse_listen_arg(bad).is_err(), "{bad}");
        }
    }
}
