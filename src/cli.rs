//! The command line: `gateway check`, `test`, `explain`, `urls`. Exit codes are [`Exit`], in one place.

use std::io::{IsTerminal, Read, Write};
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand, ValueEnum};

use crate::compile::{PlaceholderSecrets, Secrets};
use crate::diagnostic::{Diagnostics, Severity};
use crate::load::{self, Loaded};
use crate::ruleset::SourcePaths;
use crate::secrets::EnvSecrets;
use crate::source::SourceMap;

/// How `gateway` exits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exit {
    /// Nothing to report.
    Ok = 0,
    /// Errors in a rules file, or a file that cannot be read.
    Errors = 1,
    /// Bad command-line usage (clap's own exit code).
    Usage = 2,
    /// Warnings only, with `--deny-warnings`.
    Warnings = 3,
}

impl From<Exit> for ExitCode {
    fn from(e: Exit) -> ExitCode {
        ExitCode::from(e as u8)
    }
}

#[derive(Debug, Parser)]
#[command(
    name = "gateway",
    version,
    about = "hookgate: a declarative webhook gateway"
)]
struct Args {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the gateway: verify, match, enqueue, deliver; reload the rules when they change.
    Serve(ServeArgs),
    /// Parse, compile and lint rules files; reads stdin when no file is given.
    Check {
        /// Rules files; each is checked with the files it includes.
        files: Vec<PathBuf>,
        /// Output format.
        #[arg(long, value_enum, default_value_t = Format::Human)]
        format: Format,
        /// Exit with 3 when there are warnings (and no errors).
        #[arg(long)]
        deny_warnings: bool,
        /// Also load every secret from the environment and files, as `serve` would.
        #[arg(long)]
        resolve_secrets: bool,
    },
    /// Run the `test` blocks of rules files (files, or directories of `*.hook` files).
    Test {
        /// Rules files, or directories whose `*.hook` files are tested.
        #[arg(required = true)]
        paths: Vec<PathBuf>,
    },
    /// Show why each rule does or does not match a delivery.
    Explain(ExplainArgs),
    /// Print the URL of each source's webhook.
    Urls {
        /// The rules file.
        file: PathBuf,
        /// Public base URL of the gateway, e.g. `https://hooks.example.com`.
        #[arg(long, default_value = "")]
        base: String,
    },
}

/// `gateway explain` flags: a delivery described on the command line.
#[derive(Debug, clap::Args)]
struct ExplainArgs {
    /// The rules file.
    #[arg(long)]
    rules: PathBuf,
    /// The source the delivery arrives at.
    #[arg(long)]
    source: String,
    /// The event name; by default taken from the headers as the source's kind says.
    #[arg(long)]
    event: Option<String>,
    /// A request header, `Name: value`; repeatable.
    #[arg(long = "header", value_name = "NAME: VALUE")]
    headers: Vec<String>,
    /// Headers from a JSON object file (`{"X-GitHub-Event": "push", ...}`).
    #[arg(long, value_name = "FILE")]
    headers_file: Option<PathBuf>,
    /// A query parameter, `name=value`; repeatable.
    #[arg(long = "query", value_name = "NAME=VALUE")]
    query: Vec<String>,
    /// The JSON payload file, or `-` for standard input.
    payload: PathBuf,
    /// Output format.
    #[arg(long, value_enum, default_value_t = Format::Human)]
    format: Format,
}

/// `gateway serve` flags; each also reads an environment variable.
#[derive(Debug, clap::Args)]
struct ServeArgs {
    /// The rules file.
    #[arg(long, env = "HOOKGATE_RULES", default_value = "rules.hook")]
    rules: PathBuf,
    /// Address of the webhook port.
    #[arg(long, env = "HOOKGATE_LISTEN", default_value = "0.0.0.0:8080")]
    listen: std::net::SocketAddr,
    /// Address of the admin port (health, metrics, status, reload); keep it cluster-internal.
    #[arg(long, env = "HOOKGATE_ADMIN", default_value = "127.0.0.1:9090")]
    admin: std::net::SocketAddr,
    /// Directory of the queue database.
    #[arg(long, env = "HOOKGATE_DATA", default_value = "data")]
    data: PathBuf,
    /// Largest request body, unless a source sets `max_body`.
    #[arg(long, env = "HOOKGATE_MAX_BODY", default_value = "10MiB", value_parser = parse_size_arg)]
    max_body: u64,
    /// HTTP/1 request headers must arrive within this.
    #[arg(long, env = "HOOKGATE_HEADER_TIMEOUT", default_value = "10s", value_parser = parse_duration_arg)]
    header_timeout: std::time::Duration,
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
    /// Done and dead jobs are deleted after this.
    #[arg(long, env = "HOOKGATE_RETENTION", default_value = "7d", value_parser = parse_duration_arg)]
    retention: std::time::Duration,
    /// Quiet time after a file change before reloading.
    #[arg(long, env = "HOOKGATE_RELOAD_DEBOUNCE", default_value = "250ms", value_parser = parse_duration_arg)]
    reload_debounce: std::time::Duration,
    /// Log format; levels come from `RUST_LOG` (default `info`).
    #[arg(long, env = "HOOKGATE_LOG_FORMAT", value_enum, default_value_t = LogFormat::Pretty)]
    log_format: LogFormat,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum LogFormat {
    Pretty,
    Json,
}

fn parse_size_arg(s: &str) -> Result<u64, String> {
    crate::compile::parse_size(s)
        .filter(|n| *n > 0)
        .ok_or_else(|| format!("invalid size `{s}` (e.g. `10MiB`)"))
}

fn parse_duration_arg(s: &str) -> Result<std::time::Duration, String> {
    crate::compile::parse_duration(s)
        .ok_or_else(|| format!("invalid duration `{s}` (e.g. `30s`, `24h`)"))
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Format {
    Human,
    Json,
}

/// Runs the command line and returns the process exit code.
pub fn main() -> ExitCode {
    let args = match Args::try_parse() {
        Ok(args) => args,
        Err(e) => {
            let _ = e.print();
            return if e.use_stderr() {
                Exit::Usage.into()
            } else {
                Exit::Ok.into()
            };
        }
    };
    match args.command {
        Command::Serve(args) => serve(args).into(),
        Command::Check {
            files,
            format,
            deny_warnings,
            resolve_secrets,
        } => check(&files, format, deny_warnings, resolve_secrets).into(),
        Command::Urls { file, base } => urls(&file, &base).into(),
        Command::Test { paths } => test(&paths).into(),
        Command::Explain(args) => explain(&args).into(),
    }
}

fn check(files: &[PathBuf], format: Format, deny_warnings: bool, resolve_secrets: bool) -> Exit {
    let secrets: Box<dyn Secrets> = if resolve_secrets {
        Box::new(EnvSecrets { lenient: false })
    } else {
        Box::new(PlaceholderSecrets)
    };
    let mut loads = Vec::new();
    if files.is_empty() {
        let mut bytes = Vec::new();
        if let Err(e) = std::io::stdin().read_to_end(&mut bytes) {
            eprintln!("error: cannot read standard input: {e}");
            return Exit::Errors;
        }
        loads.push(load::load_text("<stdin>", None, &bytes, secrets.as_ref()));
    } else {
        for path in files {
            match load::load_file(path, secrets.as_ref()) {
                Ok(loaded) => loads.push(loaded),
                Err(e) => {
                    eprintln!("error: {e}");
                    return Exit::Errors;
                }
            }
        }
    }
    let (mut errors, mut warnings) = (0, 0);
    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    let color = std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none();
    for loaded in &loads {
        let diags = diagnostics_of(loaded);
        errors += diags.count(Severity::Error);
        warnings += diags.count(Severity::Warning);
        match format {
            Format::Json => {
                for d in diags.iter() {
                    // Serialising plain data to a String cannot fail.
                    let line = serde_json::to_string(&d.to_json(&loaded.files)).unwrap_or_default();
                    let _ = writeln!(out, "{line}");
                }
            }
            Format::Human => {
                eprint!("{}", render(diags, &loaded.files, color));
                if let Ok(compiled) = &loaded.result {
                    let r = &compiled.rules;
                    eprintln!(
                        "{}: {} sources, {} targets, {} rules, {} tests",
                        loaded.files.get(crate::source::FileId::default()).name,
                        r.sources().len(),
                        r.targets().len(),
                        r.rules().len(),
                        compiled.tests.len()
                    );
                }
            }
        }
    }
    if format == Format::Human {
        eprintln!(
            "{errors} {}, {warnings} {}",
            plural(errors, "error"),
            plural(warnings, "warning")
        );
    }
    if errors > 0 {
        Exit::Errors
    } else if warnings > 0 && deny_warnings {
        Exit::Warnings
    } else {
        Exit::Ok
    }
}

fn diagnostics_of(loaded: &Loaded) -> &Diagnostics {
    match &loaded.result {
        Ok(compiled) => &compiled.warnings,
        Err(diags) => diags,
    }
}

/// Renders diagnostics as `check` shows them.
pub fn render(diags: &Diagnostics, files: &SourceMap, color: bool) -> String {
    diags.iter().map(|d| d.render(files, color, 100)).collect()
}

fn plural(n: usize, word: &str) -> String {
    if n == 1 {
        word.to_string()
    } else {
        format!("{word}s")
    }
}

fn urls(file: &std::path::Path, base: &str) -> Exit {
    // URL-token sources need their real secret to derive the path; others need no secret at all.
    let loaded = match load::load_file(file, &EnvSecrets { lenient: true }) {
        Ok(loaded) => loaded,
        Err(e) => {
            eprintln!("error: {e}");
            return Exit::Errors;
        }
    };
    let compiled = match &loaded.result {
        Ok(c) => c,
        Err(diags) => {
            eprint!(
                "{}",
                render(diags, &loaded.files, std::io::stderr().is_terminal())
            );
            return Exit::Errors;
        }
    };
    let base = base.trim_end_matches('/');
    let mut exit = Exit::Ok;
    for source in compiled.rules.sources() {
        match source.paths() {
            SourcePaths::Fixed(path) => {
                println!("{}\t{}\t{base}{path}", source.name(), source.kind())
            }
            SourcePaths::Token(paths) => {
                for path in paths {
                    println!("{}\t{}\t{base}{path}", source.name(), source.kind());
                }
            }
            SourcePaths::TokenUnknown => {
                eprintln!(
                    "error: the URL of source `{}` is derived from its secret, which is not available\n  help: set the secret's environment variable or mount its file, then run again",
                    source.name()
                );
                exit = Exit::Errors;
            }
        }
    }
    exit
}

/// Loads a rules file for `test` and `explain`, printing its diagnostics; `None` if it has errors.
fn load_for_use(path: &std::path::Path) -> Option<Loaded> {
    let color = std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none();
    match load::load_file(path, &PlaceholderSecrets) {
        Err(e) => {
            eprintln!("error: {e}");
            None
        }
        Ok(loaded) => match &loaded.result {
            Err(diags) => {
                eprint!("{}", render(diags, &loaded.files, color));
                None
            }
            Ok(_) => Some(loaded),
        },
    }
}

fn test(paths: &[PathBuf]) -> Exit {
    let mut files = Vec::new();
    for path in paths {
        if path.is_dir() {
            let mut found: Vec<PathBuf> = match std::fs::read_dir(path) {
                Ok(entries) => entries
                    .filter_map(Result::ok)
                    .map(|e| e.path())
                    .filter(|p| p.is_file() && p.extension().is_some_and(|e| e == "hook"))
                    .collect(),
                Err(e) => {
                    eprintln!(
                        "error: cannot read `{}`: {}",
                        path.display(),
                        load::io_reason(&e)
                    );
                    return Exit::Errors;
                }
            };
            found.sort();
            files.extend(found);
        } else {
            files.push(path.clone());
        }
    }
    let (mut passed, mut failed, mut broken) = (0usize, 0usize, 0usize);
    for file in &files {
        let Some(loaded) = load_for_use(file) else {
            broken += 1;
            continue;
        };
        let Ok(compiled) = &loaded.result else {
            unreachable!("load_for_use returns compiled sets only")
        };
        if compiled.tests.is_empty() {
            continue;
        }
        println!("{}", file.display());
        for result in crate::testing::run(compiled) {
            if result.passed() {
                passed += 1;
                println!("  ✓ {}", result.name);
                continue;
            }
            failed += 1;
            println!("  ✗ {}", result.name);
            for failure in &result.failures {
                for line in failure.lines() {
                    println!("      {line}");
                }
            }
            if let Some(explanation) = &result.explanation {
                println!("      explanation:");
                for line in crate::explain::render_text(explanation).lines() {
                    println!("        {line}");
                }
            }
        }
    }
    if passed + failed == 0 && broken == 0 {
        eprintln!(
            "error: no `test` blocks in {}",
            files
                .iter()
                .map(|f| format!("`{}`", f.display()))
                .collect::<Vec<_>>()
                .join(", ")
        );
        eprintln!(
            "  help: add `test \"NAME\" {{ source ...; payload ...; expect ... }}` blocks (docs/testing-rules.md)"
        );
        return Exit::Errors;
    }
    let broken_note = if broken > 0 {
        format!(", {broken} {} with errors", plural(broken, "file"))
    } else {
        String::new()
    };
    println!(
        "{} tests: {passed} passed, {failed} failed{broken_note}",
        passed + failed
    );
    if failed > 0 || broken > 0 {
        Exit::Errors
    } else {
        Exit::Ok
    }
}

fn explain(request: &ExplainArgs) -> Exit {
    let rules_path = request.rules.as_path();
    let Some(loaded) = load_for_use(rules_path) else {
        return Exit::Errors;
    };
    let Ok(compiled) = &loaded.result else {
        unreachable!("load_for_use returns compiled sets only")
    };
    let rules = &compiled.rules;
    let Some(source) = rules
        .sources()
        .iter()
        .position(|s| s.name() == request.source)
    else {
        eprintln!("error: unknown source `{}`", request.source);
        let names: Vec<&str> = rules.sources().iter().map(|s| s.name()).collect();
        match crate::compile::suggest(&request.source, names.iter().copied()) {
            Some(s) => eprintln!("  help: did you mean `{s}`?"),
            None => eprintln!(
                "  help: sources in `{}`: {}",
                rules_path.display(),
                names.join(", ")
            ),
        }
        return Exit::Errors;
    };
    let bytes = if request.payload.as_os_str() == "-" {
        let mut bytes = Vec::new();
        std::io::stdin().read_to_end(&mut bytes).map(|_| bytes)
    } else {
        std::fs::read(&request.payload)
    };
    let payload: serde_json::Value = match bytes
        .map_err(|e| load::io_reason(&e))
        .and_then(|b| serde_json::from_slice(&b).map_err(|e| format!("not JSON: {e}")))
    {
        Ok(v) => v,
        Err(e) => {
            eprintln!("error: payload `{}`: {e}", request.payload.display());
            return Exit::Errors;
        }
    };
    let mut headers = Vec::new();
    if let Some(file) = &request.headers_file {
        let parsed: Result<serde_json::Map<String, serde_json::Value>, String> =
            std::fs::read(file)
                .map_err(|e| load::io_reason(&e))
                .and_then(|b| {
                    serde_json::from_slice(&b).map_err(|e| format!("not a JSON object: {e}"))
                });
        match parsed {
            Ok(map) => headers.extend(
                map.into_iter()
                    .map(|(k, v)| (k, v.as_str().map_or_else(|| v.to_string(), String::from))),
            ),
            Err(e) => {
                eprintln!("error: headers file `{}`: {e}", file.display());
                return Exit::Errors;
            }
        }
    }
    for h in &request.headers {
        let Some((name, value)) = h.split_once(':') else {
            eprintln!(
                "error: header `{h}` has no `:`\n  help: write `--header 'X-GitHub-Event: push'`"
            );
            return Exit::Usage;
        };
        headers.push((name.trim().to_string(), value.trim().to_string()));
    }
    let mut query = Vec::new();
    for q in &request.query {
        let Some((name, value)) = q.split_once('=') else {
            eprintln!(
                "error: query parameter `{q}` has no `=`\n  help: write `--query team=platform`"
            );
            return Exit::Usage;
        };
        query.push((name.to_string(), value.to_string()));
    }
    let event = crate::event::Event::new(
        rules,
        source,
        request.event.clone(),
        headers,
        query,
        payload,
    );
    let explanation = crate::explain::explain(rules, &event);
    match request.format {
        Format::Json => println!(
            "{}",
            serde_json::to_string_pretty(&explanation).unwrap_or_default()
        ),
        Format::Human => {
            println!(
                "source `{}`, event {}, delivery {}",
                request.source,
                event
                    .name
                    .as_deref()
                    .map_or("(none)".to_string(), |e| format!("`{e}`")),
                event
                    .delivery
                    .as_deref()
                    .map_or("(none)".to_string(), |d| format!("`{d}`")),
            );
            print!("{}", crate::explain::render_text(&explanation));
        }
    }
    Exit::Ok
}

fn serve(args: ServeArgs) -> Exit {
    let filter =
        tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match args.log_format {
        LogFormat::Json => builder.json().flatten_event(true).init(),
        LogFormat::Pretty => builder.init(),
    }
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
    runtime.block_on(run_server(args))
}

async fn run_server(args: ServeArgs) -> Exit {
    use std::sync::Arc;

    use crate::dispatch::{DispatchConfig, Dispatcher};
    use crate::queue::sqlite::SqliteQueue;
    use crate::reload::RuleStore;
    use crate::server::{ServerConfig, State};

    let store = match RuleStore::load(&args.rules) {
        Ok(store) => Arc::new(store),
        Err(diagnostics) => {
            eprint!("{diagnostics}");
            eprintln!(
                "error: the rules in `{}` do not load; nothing started",
                args.rules.display()
            );
            return Exit::Errors;
        }
    };
    let queue = match SqliteQueue::open(&args.data) {
        Ok(q) => Arc::new(crate::queue::Queue::Sqlite(q)),
        Err(e) => {
            eprintln!("error: {e}");
            return Exit::Errors;
        }
    };
    let (hooks, admin) = match (
        tokio::net::TcpListener::bind(args.listen).await,
        tokio::net::TcpListener::bind(args.admin).await,
    ) {
        (Ok(h), Ok(a)) => (h, a),
        (Err(e), _) => {
            eprintln!("error: cannot listen on {}: {e}", args.listen);
            return Exit::Errors;
        }
        (_, Err(e)) => {
            eprintln!("error: cannot listen on {}: {e}", args.admin);
            return Exit::Errors;
        }
    };
    let dispatch_config = DispatchConfig {
        max_inflight: args.max_inflight,
        grace: args.shutdown_grace,
        retention: args.retention,
        ..DispatchConfig::default()
    };
    let dispatcher = Dispatcher::new(queue.clone(), store.handle(), dispatch_config);
    let state = Arc::new(State {
        store: store.clone(),
        queue,
        wake: dispatcher.waker(),
        config: ServerConfig {
            max_body: args.max_body,
            header_timeout: args.header_timeout,
            request_timeout: args.request_timeout,
            max_connections: args.max_connections,
            dedup_window: args.dedup_window,
            shutdown_grace: args.shutdown_grace,
        },
        limits: Default::default(),
    });
    let status = store.status();
    tracing::info!(
        listen = %args.listen,
        admin = %args.admin,
        rules = %args.rules.display(),
        hash = %status.hash,
        data = %args.data.display(),
        "hookgate serving"
    );

    let stop = shutdown::Stop::new();
    let mut tasks = tokio::task::JoinSet::new();
    tasks.spawn(crate::server::serve_hooks(
        hooks,
        state.clone(),
        stop.wait(),
    ));
    tasks.spawn(crate::server::serve_admin(
        admin,
        state.clone(),
        stop.wait(),
    ));
    tasks.spawn(crate::reload::watch(
        store.clone(),
        args.reload_debounce,
        stop.wait(),
    ));
    let dispatcher_stop = shutdown::Stop::new();
    let dispatcher_task = tokio::spawn(dispatcher.run(dispatcher_stop.wait()));

    let mut hup = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("error: cannot handle signals: {e}");
            return Exit::Errors;
        }
    };
    let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("error: cannot handle signals: {e}");
            return Exit::Errors;
        }
    };
    loop {
        tokio::select! {
            _ = hup.recv() => {
                tracing::info!("SIGHUP: reloading the rules");
                let s = store.clone();
                let _ = tokio::task::spawn_blocking(move || s.reload()).await;
            }
            _ = term.recv() => break,
            _ = tokio::signal::ctrl_c() => break,
        }
    }
    tracing::info!("shutting down: no new requests; finishing those in flight");
    stop.trigger();
    while tasks.join_next().await.is_some() {}
    // Requests are done, so nothing more is enqueued; let deliveries finish or return to the queue.
    dispatcher_stop.trigger();
    let _ = dispatcher_task.await;
    tracing::info!("stopped; the queue keeps what was not delivered");
    Exit::Ok
}

/// A shutdown signal many tasks can wait on.
mod shutdown {
    use std::sync::Arc;

    use tokio::sync::watch;

    pub(super) struct Stop(Arc<watch::Sender<bool>>);

    impl Stop {
        pub(super) fn new() -> Stop {
            Stop(Arc::new(watch::channel(false).0))
        }

        pub(super) fn trigger(&self) {
            let _ = self.0.send(true);
        }

        pub(super) fn wait(&self) -> impl std::future::Future<Output = ()> + Send + 'static {
            let mut rx = self.0.subscribe();
            async move {
                let _ = rx.wait_for(|stopped| *stopped).await;
            }
        }
    }
}
