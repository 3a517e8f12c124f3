//! `gateway deliveries`, `gateway jobs` and `gateway secret`: the command line over a running gateway's
//! admin API (`/api/*`, see `src/server/admin.rs`), and `export --test`, which turns a recorded delivery
//! into a `test` block.
//!
//! A small blocking client: one reqwest client on a current-thread runtime per command. Every failure
//! becomes a [`Failure`] (a message and a `help` line) printed once by [`run`].

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Duration;

use base64::Engine;
use serde::Deserialize;
use serde_json::Value;

use crate::cli::{Exit, Format, plural};
use crate::explain::{ActionTrace, Explanation, RuleTrace};

/// How long one admin request may take.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

/// Where the admin API is, and the token it wants (shared by `deliveries` and `jobs`).
#[derive(Debug, Clone, clap::Args)]
pub(crate) struct ClientArgs {
    /// The admin port of a running gateway: a URL or `host:port` (what `gateway serve --admin` listens on).
    #[arg(
        long = "admin",
        env = "HOOKGATE_ADMIN",
        default_value = "http://127.0.0.1:9090",
        value_name = "URL",
        global = true
    )]
    admin: String,
    /// A file holding the bearer token the gateway's `--admin-token-file` requires.
    #[arg(
        long,
        env = "HOOKGATE_ADMIN_TOKEN_FILE",
        value_name = "PATH",
        global = true
    )]
    admin_token_file: Option<PathBuf>,
}

/// `gateway deliveries ...`.
#[derive(Debug, clap::Args)]
pub(crate) struct DeliveriesArgs {
    #[command(flatten)]
    client: ClientArgs,
    #[command(subcommand)]
    command: DeliveriesCommand,
}

#[derive(Debug, clap::Subcommand)]
enum DeliveriesCommand {
    /// List recorded deliveries, newest first.
    List {
        #[command(flatten)]
        filter: FilterArgs,
        /// Output format.
        #[arg(long, value_enum, default_value_t = Format::Human)]
        format: Format,
    },
    /// Show a recorded delivery: what it was, why each rule did or did not match (against the rules
    /// that judged it), and each action with its job and attempts.
    Show {
        /// The record id (from `gateway deliveries list`).
        id: String,
        /// Output format.
        #[arg(long, value_enum, default_value_t = Format::Human)]
        format: Format,
    },
    /// Evaluate a recorded delivery again against the current rules and enqueue its actions (a new
    /// record, linked to the old one).
    Replay {
        /// The record id.
        id: String,
        /// Show what would happen without enqueuing anything.
        #[arg(long)]
        dry_run: bool,
        /// Output format.
        #[arg(long, value_enum, default_value_t = Format::Human)]
        format: Format,
    },
    /// Export recorded deliveries as JSON lines (oldest first) for `gateway test --recorded`; with an
    /// ID and `--test`, a `test` block pinning that delivery's outcome.
    Export {
        /// One record id; without it, every record passing the filters.
        id: Option<String>,
        /// Print a `test` block for the record (and write its payload and headers files).
        #[arg(long, requires = "id")]
        test: bool,
        /// With `--test`: the directory the test file will live in; the payload and headers files are
        /// written to its `payloads/` directory.
        #[arg(long, value_name = "DIR", requires = "test", default_value = ".")]
        out: PathBuf,
        #[command(flatten)]
        filter: FilterArgs,
    },
}

/// The filters of `/api/deliveries` and `/api/export`.
#[derive(Debug, Clone, Default, clap::Args)]
struct FilterArgs {
    /// Only deliveries to this source.
    #[arg(long)]
    source: Option<String>,
    /// An HTTP status (`401`) or an outcome: accepted, no_match, filtered, duplicate, handshake, rejected.
    #[arg(long, value_parser = parse_status)]
    status: Option<String>,
    /// Only deliveries where this rule matched.
    #[arg(long)]
    rule: Option<String>,
    /// Only deliveries of this event.
    #[arg(long)]
    event: Option<String>,
    /// Received since: a duration ago (`15m`, `2h`), an RFC 3339 time, or Unix milliseconds.
    #[arg(long, value_parser = parse_since)]
    since: Option<String>,
    /// At most this many (the server caps a page at 500).
    #[arg(long)]
    limit: Option<usize>,
    /// Records older than this record id (the `next` of a previous page).
    #[arg(long, value_name = "ID")]
    before: Option<String>,
}

impl FilterArgs {
    fn query(&self) -> Vec<(&'static str, String)> {
        let mut q = Vec::new();
        let pairs: [(&'static str, Option<String>); 7] = [
            ("source", self.source.clone()),
            ("status", self.status.clone()),
            ("rule", self.rule.clone()),
            ("event", self.event.clone()),
            ("since", self.since.clone()),
            ("limit", self.limit.map(|l| l.to_string())),
            ("before", self.before.clone()),
        ];
        for (k, v) in pairs {
            if let Some(v) = v {
                q.push((k, v));
            }
        }
        q
    }

    fn is_empty(&self) -> bool {
        self.query().is_empty()
    }
}

fn parse_status(s: &str) -> Result<String, String> {
    crate::delivery_log::StatusFilter::parse(s)
        .map(|_| s.to_string())
        .ok_or_else(|| {
            format!(
                "`{s}` is neither an HTTP status nor an outcome (accepted, no_match, filtered, duplicate, handshake, rejected)"
            )
        })
}

/// `--since`: passed to the server as Unix milliseconds or a duration; RFC 3339 times are converted.
fn parse_since(s: &str) -> Result<String, String> {
    if s.parse::<i64>().is_ok() || crate::compile::parse_duration(s).is_some() {
        return Ok(s.to_string());
    }
    time::OffsetDateTime::parse(s, &time::format_description::well_known::Rfc3339)
        .map(|t| (t.unix_timestamp_nanos() / 1_000_000).to_string())
        .map_err(|_| {
            format!(
                "`{s}` is not a duration (`15m`), an RFC 3339 time (`2025-05-01T12:00:00Z`) or Unix milliseconds"
            )
        })
}

/// `gateway jobs ...`.
#[derive(Debug, clap::Args)]
pub(crate) struct JobsArgs {
    #[command(flatten)]
    client: ClientArgs,
    #[command(subcommand)]
    command: JobsCommand,
}

#[derive(Debug, clap::Subcommand)]
enum JobsCommand {
    /// List jobs in one state (dead by default).
    List {
        /// Dead jobs: out of retries, kept until requeued or pruned (the default).
        #[arg(long, group = "state")]
        dead: bool,
        /// Jobs waiting for their next attempt.
        #[arg(long, group = "state")]
        pending: bool,
        /// Jobs being delivered now.
        #[arg(long, group = "state")]
        inflight: bool,
        /// Only jobs for this target.
        #[arg(long)]
        target: Option<String>,
        /// Output format.
        #[arg(long, value_enum, default_value_t = Format::Human)]
        format: Format,
    },
    /// Put a dead job back in the queue, to be delivered again from its first attempt.
    Requeue {
        /// The job id (from `gateway jobs list --dead` or `gateway deliveries show`).
        id: i64,
    },
}

/// `gateway secret`.
#[derive(Debug, clap::Args)]
pub(crate) struct SecretArgs {
    /// Random bytes in the secret.
    #[arg(long, default_value_t = 32, value_parser = clap::value_parser!(u16).range(16..=1024))]
    bytes: u16,
    /// Print it as a Standard Webhooks secret: `whsec_` + base64 (also a GitLab signing token).
    #[arg(long)]
    standard_webhooks: bool,
}

/// A command that could not do its work: printed as `error: ...` and `  help: ...`.
#[derive(Debug)]
struct Failure {
    message: String,
    help: Option<String>,
}

impl Failure {
    fn new(message: impl Into<String>) -> Failure {
        Failure {
            message: message.into(),
            help: None,
        }
    }

    fn help(mut self, help: impl Into<String>) -> Failure {
        self.help = Some(help.into());
        self
    }
}

fn finish(result: Result<Exit, Failure>) -> Exit {
    match result {
        Ok(exit) => exit,
        Err(f) => {
            eprintln!("error: {}", f.message);
            if let Some(help) = f.help {
                eprintln!("  help: {help}");
            }
            Exit::Errors
        }
    }
}

pub(super) fn deliveries(args: DeliveriesArgs) -> Exit {
    finish(
        Client::new(&args.client).and_then(|client| match args.command {
            DeliveriesCommand::List { filter, format } => list(&client, &filter, format),
            DeliveriesCommand::Show { id, format } => show(&client, &id, format),
            DeliveriesCommand::Replay {
                id,
                dry_run,
                format,
            } => replay(&client, &id, dry_run, format),
            DeliveriesCommand::Export {
                id: Some(id),
                test: true,
                out,
                ..
            } => export_test(&client, &id, &out),
            DeliveriesCommand::Export {
                id: Some(id),
                filter,
                ..
            } => {
                if !filter.is_empty() {
                    return Err(Failure::new("filters do not apply to one record")
                        .help("export one record by its id, or many with filters and no id"));
                }
                let record = client.get(&format!("/api/deliveries/{}/export", encode(&id)), &[])?;
                println!("{record}");
                Ok(Exit::Ok)
            }
            DeliveriesCommand::Export {
                id: None, filter, ..
            } => export_many(&client, &filter),
        }),
    )
}

pub(super) fn jobs(args: JobsArgs) -> Exit {
    finish(
        Client::new(&args.client).and_then(|client| match args.command {
            JobsCommand::List {
                pending,
                inflight,
                target,
                format,
                ..
            } => {
                let state = if pending {
                    "pending"
                } else if inflight {
                    "inflight"
                } else {
                    "dead"
                };
                list_jobs(&client, state, target.as_deref(), format)
            }
            JobsCommand::Requeue { id } => {
                let answer = client.post(&format!("/api/jobs/{id}/requeue"), &[])?;
                let state = answer["state"].as_str().unwrap_or("pending");
                println!("job {id} requeued: {state}, to be delivered shortly");
                Ok(Exit::Ok)
            }
        }),
    )
}

pub(super) fn secret(args: &SecretArgs) -> Exit {
    let mut bytes = vec![0u8; usize::from(args.bytes)];
    if let Err(e) = getrandom::fill(&mut bytes) {
        eprintln!("error: the operating system's random number generator failed: {e}");
        return Exit::Errors;
    }
    if args.standard_webhooks {
        println!(
            "whsec_{}",
            base64::engine::general_purpose::STANDARD.encode(&bytes)
        );
    } else {
        println!("{}", hex::encode(&bytes));
    }
    Exit::Ok
}

// ------------------------------------------------------------------------------------------------
// The HTTP client
// ------------------------------------------------------------------------------------------------

struct Client {
    /// The admin API's base URL, without a trailing `/`.
    base: String,
    token: Option<(PathBuf, String)>,
    http: reqwest::Client,
    runtime: tokio::runtime::Runtime,
}

/// What a path names, for 404 messages.
enum Subject {
    Record(String),
    Job(String),
    Other,
}

impl Client {
    fn new(args: &ClientArgs) -> Result<Client, Failure> {
        let base = admin_base(&args.admin)?;
        let token = match &args.admin_token_file {
            None => None,
            Some(path) => {
                use crate::compile::Secrets;
                let secrets = crate::secrets::EnvSecrets { lenient: false };
                let token = secrets
                    .load("admin token", crate::compile::SecretRef::File(path))
                    .map_err(|e| {
                        Failure::new(format!("the admin token: {e}")).help(
                            "`--admin-token-file` names a file holding the same token as the gateway's `--admin-token-file`",
                        )
                    })?;
                let token = String::from_utf8(token.expose().to_vec())
                    .ok()
                    .filter(|t| http::HeaderValue::from_str(&format!("Bearer {t}")).is_ok())
                    .ok_or_else(|| {
                        Failure::new(format!(
                            "the admin token in `{}` is not a valid header value",
                            path.display()
                        ))
                        .help("a token is one line of printable ASCII, e.g. from `gateway secret`")
                    })?;
                Some((path.clone(), token))
            }
        };
        let http = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .connect_timeout(Duration::from_secs(5))
            .timeout(REQUEST_TIMEOUT)
            .user_agent(concat!("hookgate/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| Failure::new(format!("the HTTP client cannot start: {e}")))?;
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| Failure::new(format!("cannot start the runtime: {e}")))?;
        Ok(Client {
            base,
            token,
            http,
            runtime,
        })
    }

    fn url(&self, path: &str, query: &[(&str, String)]) -> String {
        let mut url = format!("{}{path}", self.base);
        if !query.is_empty() {
            url.push('?');
            url.push_str(
                &form_urlencoded::Serializer::new(String::new())
                    .extend_pairs(query)
                    .finish(),
            );
        }
        url
    }

    fn get(&self, path: &str, query: &[(&str, String)]) -> Result<Value, Failure> {
        let bytes = self.send(reqwest::Method::GET, path, query)?;
        self.json(&bytes)
    }

    fn post(&self, path: &str, query: &[(&str, String)]) -> Result<Value, Failure> {
        let bytes = self.send(reqwest::Method::POST, path, query)?;
        self.json(&bytes)
    }

    fn json(&self, bytes: &[u8]) -> Result<Value, Failure> {
        serde_json::from_slice(bytes).map_err(|_| {
            Failure::new(format!(
                "the admin API at `{}` answered something that is not JSON",
                self.base
            ))
            .help("`--admin` should name the admin port of `gateway serve`")
        })
    }

    /// Sends a request; a 2xx answer's body, or the failure its status means.
    fn send(
        &self,
        method: reqwest::Method,
        path: &str,
        query: &[(&str, String)],
    ) -> Result<Vec<u8>, Failure> {
        let (status, body) = self.exchange(method, path, query)?;
        if status.is_success() {
            return Ok(body);
        }
        Err(self.status_failure(status, &body, subject(path)))
    }

    /// Sends a request; the status and body, whatever the status.
    fn exchange(
        &self,
        method: reqwest::Method,
        path: &str,
        query: &[(&str, String)],
    ) -> Result<(reqwest::StatusCode, Vec<u8>), Failure> {
        let url = self.url(path, query);
        let mut request = self.http.request(method, &url);
        if let Some((_, token)) = &self.token {
            request = request.bearer_auth(token);
        }
        self.runtime.block_on(async {
            let response = request.send().await.map_err(|e| self.http_failure(&e))?;
            let status = response.status();
            let body = response.bytes().await.map_err(|e| self.http_failure(&e))?;
            Ok((status, body.to_vec()))
        })
    }

    /// Streams a 2xx answer's body to `out`; the bytes written.
    fn stream(
        &self,
        path: &str,
        query: &[(&str, String)],
        out: &mut dyn Write,
    ) -> Result<u64, Failure> {
        let url = self.url(path, query);
        let mut request = self.http.get(&url);
        if let Some((_, token)) = &self.token {
            request = request.bearer_auth(token);
        }
        self.runtime.block_on(async {
            // The export may be long: no overall deadline, only between chunks.
            let mut response = request
                .timeout(Duration::from_secs(24 * 3600))
                .send()
                .await
                .map_err(|e| self.http_failure(&e))?;
            let status = response.status();
            if !status.is_success() {
                let body = response.bytes().await.unwrap_or_default();
                return Err(self.status_failure(status, &body, Subject::Other));
            }
            let mut written = 0u64;
            loop {
                let chunk = tokio::time::timeout(REQUEST_TIMEOUT, response.chunk())
                    .await
                    .map_err(|_| {
                        Failure::new(format!(
                            "the admin API at `{}` stopped sending for {}s",
                            self.base,
                            REQUEST_TIMEOUT.as_secs()
                        ))
                    })?
                    .map_err(|e| self.http_failure(&e))?;
                let Some(chunk) = chunk else { break };
                out.write_all(&chunk)
                    .map_err(|e| Failure::new(format!("cannot write the export: {e}")))?;
                written += chunk.len() as u64;
            }
            out.flush()
                .map_err(|e| Failure::new(format!("cannot write the export: {e}")))?;
            Ok(written)
        })
    }

    fn http_failure(&self, e: &reqwest::Error) -> Failure {
        let cause = root_cause(e);
        if e.is_connect() {
            Failure::new(format!(
                "cannot connect to the admin API at `{}`: {cause}",
                self.base
            ))
            .help(
                "is `gateway serve` running there? pass its admin address with `--admin` or `HOOKGATE_ADMIN`",
            )
        } else if e.is_timeout() {
            Failure::new(format!(
                "the admin API at `{}` did not answer within {}s",
                self.base,
                REQUEST_TIMEOUT.as_secs()
            ))
            .help("check that `--admin` names the admin port of `gateway serve`")
        } else {
            Failure::new(format!(
                "the request to the admin API at `{}` failed: {cause}",
                self.base
            ))
            .help("check that `--admin` names the admin port of `gateway serve`")
        }
    }

    fn status_failure(&self, status: reqwest::StatusCode, body: &[u8], what: Subject) -> Failure {
        let message = serde_json::from_slice::<Value>(body)
            .ok()
            .and_then(|v| v["error"].as_str().map(String::from));
        match status.as_u16() {
            401 => match &self.token {
                None => Failure::new(format!(
                    "the admin API at `{}` requires a token",
                    self.base
                ))
                .help(
                    "pass the file holding it with `--admin-token-file` or `HOOKGATE_ADMIN_TOKEN_FILE`",
                ),
                Some((path, _)) => Failure::new(format!(
                    "the admin API at `{}` refused the token in `{}`",
                    self.base,
                    path.display()
                ))
                .help("the file must hold the same token as the gateway's `--admin-token-file`"),
            },
            404 if message.as_deref().is_none_or(|m| m == "not found") => Failure::new(format!(
                "`{}` has no admin API (404)",
                self.base
            ))
            .help("`--admin` should name the admin port of `gateway serve` (its `--admin`), not the webhook port"),
            404 => match what {
                Subject::Record(id) => Failure::new(format!("no delivery record `{id}`")).help(
                    "list recorded deliveries with `gateway deliveries list`; the log keeps the newest (`--deliveries-max-records`, `--deliveries-max-age`)",
                ),
                Subject::Job(id) => Failure::new(format!("no job `{id}`"))
                    .help("list dead jobs with `gateway jobs list --dead`"),
                Subject::Other => Failure::new(message.unwrap_or_else(|| "not found".into())),
            },
            409 => {
                let message = message.unwrap_or_else(|| "conflict".into());
                let failure = Failure::new(message.clone());
                if let Subject::Job(_) = what {
                    failure.help("see the dead ones with `gateway jobs list --dead`")
                } else {
                    failure
                }
            }
            400 => Failure::new(format!(
                "the admin API refused the request: {}",
                message.unwrap_or_else(|| "bad request".into())
            )),
            _ => Failure::new(format!(
                "the admin API at `{}` answered {status}{}",
                self.base,
                message.map(|m| format!(": {m}")).unwrap_or_default()
            )),
        }
    }
}

/// What an API path is about: `/api/deliveries/{id}...` or `/api/jobs/{id}...`.
fn subject(path: &str) -> Subject {
    let segments: Vec<&str> = path.trim_matches('/').split('/').collect();
    let decode = |id: &str| {
        percent_encoding::percent_decode_str(id)
            .decode_utf8_lossy()
            .into_owned()
    };
    match segments.as_slice() {
        ["api", "deliveries", id, ..] => Subject::Record(decode(id)),
        ["api", "jobs", id, ..] => Subject::Job(decode(id)),
        _ => Subject::Other,
    }
}

/// The base URL from `--admin`: a URL, or `host:port` (as `gateway serve --admin` takes it).
fn admin_base(given: &str) -> Result<String, Failure> {
    let text = given.trim();
    let with_scheme = if text.contains("://") {
        text.to_string()
    } else {
        format!("http://{text}")
    };
    let url = url::Url::parse(&with_scheme).map_err(|e| {
        Failure::new(format!("`--admin {given}` is not a URL: {e}"))
            .help("write `--admin http://127.0.0.1:9090` or `--admin 127.0.0.1:9090`")
    })?;
    if !matches!(url.scheme(), "http" | "https") || url.host().is_none() {
        return Err(
            Failure::new(format!("`--admin {given}` is not an http(s) URL"))
                .help("write `--admin http://127.0.0.1:9090` or `--admin 127.0.0.1:9090`"),
        );
    }
    if url.query().is_some() || url.fragment().is_some() {
        return Err(
            Failure::new(format!("`--admin {given}` has a query or fragment"))
                .help("give the admin port's base URL only, e.g. `http://gateway-admin:9090`"),
        );
    }
    Ok(url.as_str().trim_end_matches('/').to_string())
}

/// The innermost error's text (`Connection refused (os error 111)`).
fn root_cause(e: &(dyn std::error::Error + 'static)) -> String {
    let mut inner = e;
    while let Some(next) = inner.source() {
        inner = next;
    }
    inner.to_string()
}

/// What a path segment must not hold as is (record ids are UUIDs; anything else is encoded rather
/// than allowed to change the path).
const SEGMENT: &percent_encoding::AsciiSet = &percent_encoding::CONTROLS
    .add(b' ')
    .add(b'"')
    .add(b'#')
    .add(b'%')
    .add(b'/')
    .add(b'<')
    .add(b'>')
    .add(b'?')
    .add(b'`')
    .add(b'{')
    .add(b'}');

/// One path segment, percent-encoded.
fn encode(segment: &str) -> String {
    percent_encoding::utf8_percent_encode(segment, SEGMENT).to_string()
}

// ------------------------------------------------------------------------------------------------
// deliveries list / show / replay
// ------------------------------------------------------------------------------------------------

fn list(client: &Client, filter: &FilterArgs, format: Format) -> Result<Exit, Failure> {
    let answer = client.get("/api/deliveries", &filter.query())?;
    if format == Format::Json {
        println!("{}", pretty(&answer));
        return Ok(Exit::Ok);
    }
    let items = answer["deliveries"].as_array().cloned().unwrap_or_default();
    if items.is_empty() {
        if filter.is_empty() {
            println!("no deliveries recorded");
        } else {
            println!("no recorded deliveries pass these filters");
        }
        return Ok(Exit::Ok);
    }
    let mut rows = vec![
        [
            "TIME", "SOURCE", "EVENT", "DELIVERY", "STATUS", "MATCHED", "ACTIONS", "ID",
        ]
        .map(String::from)
        .to_vec(),
    ];
    for d in &items {
        let matched = strings(&d["matched"]);
        let matched = if let Some(reason) = d["reason"].as_str() {
            format!("({reason})")
        } else if matched.is_empty() {
            "-".into()
        } else {
            matched.join(", ")
        };
        let mut status = format!(
            "{} {}",
            d["status"].as_u64().unwrap_or_default(),
            d["outcome"].as_str().unwrap_or("?")
        );
        if !d["replay_of"].is_null() {
            status.push_str(" (replay)");
        }
        rows.push(vec![
            d["received_at"].as_i64().map(timestamp).unwrap_or_default(),
            cut(text(&d["source"]), 24),
            cut(text(&d["event"]), 24),
            cut(text(&d["delivery"]), 36),
            status,
            cut(matched, 48),
            d["actions"].as_u64().unwrap_or_default().to_string(),
            text(&d["id"]),
        ]);
    }
    print!("{}", table(&rows));
    if let Some(next) = answer["next"].as_str() {
        eprintln!(
            "more: `gateway deliveries list --before {next}` (with the same filters) shows the next page"
        );
    }
    Ok(Exit::Ok)
}

fn show(client: &Client, id: &str, format: Format) -> Result<Exit, Failure> {
    let record = client.get(&format!("/api/deliveries/{}", encode(id)), &[])?;
    if format == Format::Json {
        println!("{}", pretty(&record));
        return Ok(Exit::Ok);
    }
    print!("{}", describe(&record));

    println!();
    match explanation(client, id, &record) {
        Ok(explanation) => {
            println!("explanation, against the rules that judged it:");
            print!("{}", crate::explain::render_text(&explanation));
        }
        Err(why) => println!("{why}"),
    }

    let actions = record["actions"].as_array().cloned().unwrap_or_default();
    if !actions.is_empty() {
        println!();
        println!("actions:");
        for action in &actions {
            print!("{}", describe_action(action));
        }
    }
    Ok(Exit::Ok)
}

/// The record's own facts, one per line.
fn describe(r: &Value) -> String {
    let mut out = format!("delivery record {}\n", text(&r["id"]));
    let mut field = |name: &str, value: String| {
        out.push_str(&format!("  {name:<11}{value}\n"));
    };
    if let Some(at) = r["received_at"].as_i64() {
        field("received", timestamp(at));
    }
    field("source", text(&r["source"]));
    field("event", text(&r["event"]));
    field("delivery", text(&r["delivery"]));
    field(
        "status",
        format!(
            "{} {}",
            r["status"].as_u64().unwrap_or_default(),
            r["outcome"].as_str().unwrap_or("?")
        ),
    );
    if let Some(reason) = r["reason"].as_str() {
        field("reason", reason.to_string());
    }
    let matched = strings(&r["matched"]);
    field(
        "matched",
        if matched.is_empty() {
            "-".into()
        } else {
            matched
                .iter()
                .map(|m| format!("{m:?}"))
                .collect::<Vec<_>>()
                .join(", ")
        },
    );
    if let Some(version) = r["rules_version"].as_str() {
        field("rules", format!("version {}", short(version)));
    }
    if let Some(of) = r["replay_of"].as_str() {
        field("replay of", of.to_string());
    }
    let replays = strings(&r["replays"]);
    if !replays.is_empty() {
        field("replays", replays.join(", "));
    }
    if let Some(request) = r["request"].as_object() {
        let body = match request.get("body_bytes").and_then(Value::as_u64) {
            Some(n) => format!("{n} {}", plural(n as usize, "byte")),
            None => "not kept".into(),
        };
        field("body", body);
        if let Some(headers) = request.get("headers").and_then(Value::as_array) {
            let shown: Vec<String> = headers
                .iter()
                .filter_map(|h| Some(format!("{}: {}", h[0].as_str()?, h[1].as_str()?)))
                .collect();
            if let Some((first, rest)) = shown.split_first() {
                field("headers", first.clone());
                for h in rest {
                    out.push_str(&format!("  {:<11}{h}\n", ""));
                }
            }
        }
    }
    out
}

/// The explanation of a shown record, as `gateway explain` has it: the per-rule traces from the
/// record, the matched rules and rendered actions from its export (the same evaluation).
fn explanation(client: &Client, id: &str, record: &Value) -> Result<Explanation, String> {
    if record["rules"].is_null() {
        return Err(record["explain_error"]
            .as_str()
            .unwrap_or("cannot explain this delivery")
            .to_string());
    }
    let rules: Vec<RuleTrace> = serde_json::from_value(record["rules"].clone())
        .map_err(|e| format!("cannot read the explanation the gateway sent: {e}"))?;
    let matched: Vec<String> = rules
        .iter()
        .filter(|r| r.matched)
        .map(|r| r.name.clone())
        .collect();
    // The rendered actions come with the export; a record that cannot be exported has none to show.
    let actions = client
        .get(&format!("/api/deliveries/{}/export", encode(id)), &[])
        .ok()
        .and_then(|e| {
            serde_json::from_value::<Vec<ActionTrace>>(e["result"]["actions"].clone()).ok()
        })
        .unwrap_or_default();
    Ok(Explanation {
        matched,
        rules,
        actions,
    })
}

fn describe_action(a: &Value) -> String {
    let kind = match a["kind"].as_str().unwrap_or("?") {
        "check" => "queue check",
        other => other,
    };
    let mut out = format!(
        "  {kind} {} (rule {:?})",
        text(&a["target"]),
        a["rule"].as_str().unwrap_or("?")
    );
    let job = &a["job"];
    if job.is_null() {
        out.push_str(": not enqueued\n");
        return out;
    }
    let id = job["id"].as_i64().unwrap_or_default();
    let state = job["state"].as_str().unwrap_or("unknown");
    let attempts = job["attempts"].as_array().cloned().unwrap_or_default();
    out.push_str(&format!(": job {id}, {state}"));
    if let Some(error) = job["error"].as_str() {
        out.push_str(&format!(" (cannot read it: {error})"));
    }
    if state == "pruned" {
        out.push_str(" (deleted after `--retention`)");
    }
    if !attempts.is_empty() {
        out.push_str(&format!(
            " after {} {}",
            attempts.len(),
            plural(attempts.len(), "attempt")
        ));
    }
    if let Some(n) = job["coalesced"].as_u64().filter(|&n| n > 1) {
        out.push_str(&format!(", standing for {n} deliveries"));
    }
    out.push('\n');
    for at in &attempts {
        out.push_str(&format!("      {}\n", describe_attempt(at)));
    }
    if let Some(next) = job["next_attempt_at"].as_i64() {
        out.push_str(&format!("      next attempt at {}\n", timestamp(next)));
    }
    if state == "dead" {
        out.push_str(&format!(
            "      help: `gateway jobs requeue {id}` delivers it again\n"
        ));
    }
    out
}

fn describe_attempt(at: &Value) -> String {
    let result = match (at["status"].as_u64(), at["error"].as_str()) {
        (Some(status), Some(error)) if error.starts_with(&format!("HTTP {status}")) => {
            error.to_string()
        }
        (Some(status), Some(error)) => format!("{status}, {error}"),
        (Some(status), None) => status.to_string(),
        (None, Some(error)) => error.to_string(),
        (None, None) => "no answer".into(),
    };
    format!(
        "attempt {}  {}  {}  {}ms",
        at["attempt"].as_u64().unwrap_or_default(),
        at["started_at"].as_i64().map(timestamp).unwrap_or_default(),
        result,
        at["duration_ms"].as_u64().unwrap_or_default()
    )
}

fn replay(client: &Client, id: &str, dry_run: bool, format: Format) -> Result<Exit, Failure> {
    let path = format!("/api/deliveries/{}/replay", encode(id));
    let query = if dry_run {
        vec![("dry_run", "1".to_string())]
    } else {
        Vec::new()
    };
    // The replay's own answer may be any status the webhook port gives (a 400 for a body the current
    // rules' source cannot read, a 503 when the queue is down): those are outcomes, not API errors.
    let (status, body) = client.exchange(reqwest::Method::POST, &path, &query)?;
    let answer: Value = match status.as_u16() {
        401 | 404 | 405 | 409 => {
            return Err(client.status_failure(status, &body, Subject::Record(id.to_string())));
        }
        _ => client.json(&body)?,
    };
    if format == Format::Json {
        println!("{}", pretty(&answer));
        return Ok(if status.is_success() {
            Exit::Ok
        } else {
            Exit::Errors
        });
    }
    let matched = strings(&answer["matched"]);
    let matched = if matched.is_empty() {
        "nothing".to_string()
    } else {
        matched
            .iter()
            .map(|m| format!("{m:?}"))
            .collect::<Vec<_>>()
            .join(", ")
    };
    if dry_run {
        println!("dry run of record {id} against the current rules; nothing was enqueued");
        println!("  matched    {matched}");
        if let Some(note) = answer["ignored"].as_str() {
            println!("  ignored    {note}");
        }
        for a in answer["actions"].as_array().into_iter().flatten() {
            let kind = match a["kind"].as_str().unwrap_or("?") {
                "check" => "queue check",
                other => other,
            };
            let detail = match (a["kind"].as_str(), &a["body"], a["key"].as_str()) {
                (Some("check"), _, Some(key)) => format!(" key {key:?}"),
                (Some("notify"), body, _) if !body.is_null() => format!(" {body}"),
                _ => String::new(),
            };
            println!(
                "  → {kind} {} (rule {:?}){detail}",
                text(&a["target"]),
                a["rule"].as_str().unwrap_or("?")
            );
        }
        if let Some(error) = answer["error"].as_str() {
            println!("  refused    {error} ({status})");
            return Ok(Exit::Errors);
        }
        return Ok(Exit::Ok);
    }
    let new_id = text(&answer["record"]);
    println!("replayed record {id} against the current rules: new record {new_id}");
    if let Some(error) = answer["error"].as_str() {
        println!("  refused    {error} ({status})");
        return Ok(Exit::Errors);
    }
    println!("  matched    {matched}");
    if let Some(note) = answer["ignored"].as_str() {
        println!("  ignored    {note}");
    }
    let n = answer["actions"].as_u64().unwrap_or_default() as usize;
    println!("  actions    {n} {} enqueued", plural(n, "action"));
    println!("  see        gateway deliveries show {new_id}");
    Ok(Exit::Ok)
}

// ------------------------------------------------------------------------------------------------
// jobs
// ------------------------------------------------------------------------------------------------

fn list_jobs(
    client: &Client,
    state: &str,
    target: Option<&str>,
    format: Format,
) -> Result<Exit, Failure> {
    let mut query = vec![("state", state.to_string())];
    if let Some(t) = target {
        query.push(("target", t.to_string()));
    }
    let answer = client.get("/api/jobs", &query)?;
    if format == Format::Json {
        println!("{}", pretty(&answer));
        return Ok(Exit::Ok);
    }
    let jobs = answer["jobs"].as_array().cloned().unwrap_or_default();
    if jobs.is_empty() {
        println!(
            "no {state} jobs{}",
            target.map(|t| format!(" for `{t}`")).unwrap_or_default()
        );
        return Ok(Exit::Ok);
    }
    let mut rows = vec![
        [
            "ID", "TARGET", "KIND", "RULE", "SOURCE", "DELIVERY", "ATTEMPTS", "LAST", "UPDATED",
        ]
        .map(String::from)
        .to_vec(),
    ];
    for j in &jobs {
        let last = match (j["last_status"].as_u64(), j["last_error"].as_str()) {
            (_, Some(e)) => e.to_string(),
            (Some(s), None) => s.to_string(),
            (None, None) => "-".into(),
        };
        rows.push(vec![
            j["id"].as_i64().unwrap_or_default().to_string(),
            text(&j["target"]),
            text(&j["kind"]),
            cut(text(&j["rule"]), 32),
            text(&j["source"]),
            cut(text(&j["delivery"]), 36),
            j["attempts"].as_u64().unwrap_or_default().to_string(),
            cut(last, 48),
            j["updated_at"].as_i64().map(timestamp).unwrap_or_default(),
        ]);
    }
    print!("{}", table(&rows));
    if state == "dead" {
        eprintln!("requeue one with `gateway jobs requeue ID`");
    }
    Ok(Exit::Ok)
}

// ------------------------------------------------------------------------------------------------
// export
// ------------------------------------------------------------------------------------------------

/// A record as `/api/deliveries/{id}/export` and `/api/export` give it: the request (credentials
/// removed, body in base64) and its outcome under the rules that judged it.
#[derive(Debug, Clone, Deserialize)]
pub(crate) struct Exported {
    pub(crate) id: String,
    #[serde(default)]
    pub(crate) received_at: i64,
    pub(crate) source: Option<String>,
    #[serde(default)]
    pub(crate) delivery: Option<String>,
    #[serde(default)]
    pub(crate) event: Option<String>,
    #[serde(default)]
    pub(crate) outcome: String,
    #[serde(default)]
    pub(crate) rules_version: String,
    pub(crate) request: ExportedRequest,
    pub(crate) result: ExportedResult,
}

#[derive(Debug, Clone, Deserialize)]
pub(crate) struct ExportedRequest {
    #[serde(default)]
    pub(crate) headers: Vec<(String, String)>,
    #[serde(default)]
    pub(crate) query: Vec<(String, String)>,
    /// Base64.
    pub(crate) body: String,
}

#[derive(Debug, Clone, Deserialize)]
pub(crate) struct ExportedResult {
    pub(crate) matched: Vec<String>,
    pub(crate) actions: Vec<ActionTrace>,
}

impl Exported {
    pub(crate) fn body(&self) -> Result<Vec<u8>, String> {
        base64::engine::general_purpose::STANDARD
            .decode(self.request.body.trim())
            .map_err(|e| format!("its body is not base64: {e}"))
    }
}

fn export_many(client: &Client, filter: &FilterArgs) -> Result<Exit, Failure> {
    let stdout = std::io::stdout();
    let mut out = std::io::BufWriter::new(stdout.lock());
    let written = client.stream("/api/export", &filter.query(), &mut out)?;
    drop(out);
    if written == 0 {
        eprintln!(
            "no exportable deliveries{} (rejected ones, and those whose body was not kept, are not exported)",
            if filter.is_empty() {
                ""
            } else {
                " pass these filters"
            }
        );
    }
    Ok(Exit::Ok)
}

fn export_test(client: &Client, id: &str, out: &Path) -> Result<Exit, Failure> {
    let value = client.get(&format!("/api/deliveries/{}/export", encode(id)), &[])?;
    let record: Exported = serde_json::from_value(value).map_err(|e| {
        Failure::new(format!(
            "cannot read the exported record the gateway sent: {e}"
        ))
    })?;
    let test = test_block(&record)
        .map_err(|e| Failure::new(format!("cannot turn record `{id}` into a test: {e}")))?;
    let dir = out.join("payloads");
    std::fs::create_dir_all(&dir).map_err(|e| {
        Failure::new(format!(
            "cannot create `{}`: {}",
            dir.display(),
            crate::fs::io_reason(&e)
        ))
    })?;
    for (name, bytes) in &test.files {
        let path = dir.join(name);
        write_new(&path, bytes)?;
        eprintln!("wrote `{}`", path.display());
    }
    print!("{}", test.block);
    eprintln!(
        "put the test in a file in `{}` that includes your rules (`include \"rules.hook\"`), then run `gateway test` on it",
        out.display()
    );
    Ok(Exit::Ok)
}

/// Writes a file, refusing to replace one with different contents.
fn write_new(path: &Path, bytes: &[u8]) -> Result<(), Failure> {
    if let Ok(existing) = std::fs::read(path) {
        if existing == bytes {
            return Ok(());
        }
        return Err(
            Failure::new(format!("`{}` exists, with other contents", path.display()))
                .help("remove it, or choose another directory with `--out`"),
        );
    }
    std::fs::write(path, bytes).map_err(|e| {
        Failure::new(format!(
            "cannot write `{}`: {}",
            path.display(),
            crate::fs::io_reason(&e)
        ))
    })
}

/// A `test` block and the files it reads (names within `payloads/`).
#[derive(Debug)]
pub(crate) struct TestBlock {
    pub(crate) block: String,
    pub(crate) files: Vec<(String, Vec<u8>)>,
}

/// The `test` block that pins a recorded delivery's outcome under the rules that judged it: its
/// source, event, headers, query and payload, and `expect` lines for the rules that matched and every
/// action with its rendered body or key.
pub(crate) fn test_block(r: &Exported) -> Result<TestBlock, String> {
    let source = r.source.as_deref().ok_or("it names no source")?;
    let body = r.body()?;
    let payload = payload_of(&r.request.headers, &body)?;
    let stem = file_stem(&format!(
        "{source}-{}",
        r.delivery.as_deref().unwrap_or(&r.id)
    ));
    let payload_file = format!("{stem}.json");
    let headers_file = format!("{stem}.headers.json");

    // Headers: the first value of each name in the file; repeats as `header` lines.
    let mut object = serde_json::Map::new();
    let mut repeated = Vec::new();
    // The length of the recorded body says nothing about the payload file.
    for (name, value) in r
        .request
        .headers
        .iter()
        .filter(|(n, _)| n != "content-length")
    {
        if object.contains_key(name) {
            repeated.push((name, value));
        } else {
            object.insert(name.clone(), Value::String(value.clone()));
        }
    }

    let mut b = String::new();
    b.push_str(&format!(
        "# Recorded delivery {} to `{source}`: record {}, received {}, {} under rules version {}.\n",
        r.delivery.as_deref().unwrap_or("(no id)"),
        r.id,
        timestamp(r.received_at),
        r.outcome,
        short(&r.rules_version),
    ));
    if r.outcome == "filtered" {
        b.push_str("# The source's `events` list dropped this event; tests evaluate the rules regardless.\n");
    }
    let name = format!(
        "recorded {}{} {}",
        source,
        r.event
            .as_deref()
            .map(|e| format!(" {e}"))
            .unwrap_or_default(),
        r.delivery.as_deref().unwrap_or(&r.id)
    );
    b.push_str(&format!("test {} {{\n", hook_string(&name)));
    b.push_str(&format!("  source {source}\n"));
    if let Some(event) = &r.event {
        b.push_str(&format!("  event {}\n", hook_string(event)));
    }
    let mut files = vec![(payload_file.clone(), pretty_bytes(&payload))];
    if !object.is_empty() {
        b.push_str(&format!(
            "  headers file({})\n",
            hook_string(&format!("payloads/{headers_file}"))
        ));
        files.push((headers_file, pretty_bytes(&Value::Object(object))));
    }
    for (name, value) in repeated {
        b.push_str(&format!(
            "  header {} = {}\n",
            hook_string(name),
            hook_string(value)
        ));
    }
    for (name, value) in &r.request.query {
        b.push_str(&format!(
            "  query {} = {}\n",
            hook_string(name),
            hook_string(value)
        ));
    }
    b.push_str(&format!(
        "  payload file({})\n",
        hook_string(&format!("payloads/{payload_file}"))
    ));
    b.push('\n');
    b.push_str(&format!(
        "  expect matched [{}]\n",
        r.result
            .matched
            .iter()
            .map(|m| hook_string(m))
            .collect::<Vec<_>>()
            .join(", ")
    ));
    for a in &r.result.actions {
        match a.kind.as_str() {
            "notify" => match &a.body {
                Some(body) if !body.is_null() => b.push_str(&format!(
                    "  expect notify {} == {}\n",
                    a.target,
                    indent(&hook_value(body), "  ")
                )),
                _ => b.push_str(&format!(
                    "  expect notify {}    # the original payload\n",
                    a.target
                )),
            },
            "check" => match &a.key {
                Some(key) => b.push_str(&format!(
                    "  expect check {} key {}\n",
                    a.target,
                    hook_string(key)
                )),
                None => b.push_str(&format!("  expect check {}\n", a.target)),
            },
            _ => b.push_str(&format!("  expect forward {}\n", a.target)),
        }
    }
    b.push_str("}\n");
    Ok(TestBlock { block: b, files })
}

/// The payload rules read from a recorded body: the JSON body, a form delivery's `payload` field,
/// or a plain form's fields (as `prepare::payload` has them).
fn payload_of(headers: &[(String, String)], body: &[u8]) -> Result<Value, String> {
    if !crate::verify::is_form(&headers.into()) {
        return serde_json::from_slice(body).map_err(|_| "its body is not JSON".to_string());
    }
    match crate::verify::payload_field(body) {
        Some(json) => serde_json::from_slice(&json)
            .map_err(|_| "its form's `payload` field is not JSON".to_string()),
        None => Ok(Value::Object(
            form_urlencoded::parse(body)
                .map(|(k, v)| (k.into_owned(), Value::String(v.into_owned())))
                .collect(),
        )),
    }
}

/// A file name from a delivery id: letters, digits, `.`, `_` and `-`, at most 100 characters.
fn file_stem(text: &str) -> String {
    let stem: String = text
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-') {
                c
            } else {
                '-'
            }
        })
        .take(100)
        .collect();
    stem.trim_start_matches('.').to_string()
}

/// A string literal of the rules language: JSON escapes, and `\$` so that no `${` interpolates.
fn hook_string(s: &str) -> String {
    serde_json::to_string(s)
        .unwrap_or_default()
        .replace("${", "\\${")
}

/// A JSON value as a literal of the rules language: on one line when short, else indented.
fn hook_value(v: &Value) -> String {
    // Outside strings JSON text has no `$`, so escaping every `${` escapes exactly those in strings.
    let compact = v.to_string();
    let text = if compact.chars().count() <= 80 {
        compact
    } else {
        serde_json::to_string_pretty(v).unwrap_or(compact)
    };
    text.replace("${", "\\${")
}

fn indent(text: &str, by: &str) -> String {
    text.lines().collect::<Vec<_>>().join(&format!("\n{by}"))
}

fn pretty_bytes(v: &Value) -> Vec<u8> {
    let mut bytes = serde_json::to_vec_pretty(v).unwrap_or_default();
    bytes.push(b'\n');
    bytes
}

// ------------------------------------------------------------------------------------------------
// Formatting
// ------------------------------------------------------------------------------------------------

fn pretty(v: &Value) -> String {
    serde_json::to_string_pretty(v).unwrap_or_default()
}

/// A string field, `-` when absent.
fn text(v: &Value) -> String {
    match v {
        Value::Null => "-".into(),
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

fn strings(v: &Value) -> Vec<String> {
    v.as_array()
        .map(|a| {
            a.iter()
                .filter_map(|s| s.as_str().map(String::from))
                .collect()
        })
        .unwrap_or_default()
}

/// At most `max` characters, with `…` when cut.
fn cut(s: String, max: usize) -> String {
    if s.chars().count() <= max {
        return s;
    }
    let mut out: String = s.chars().take(max - 1).collect();
    out.push('…');
    out
}

/// Unix milliseconds as an RFC 3339 time in UTC, to the second.
pub(crate) fn timestamp(ms: i64) -> String {
    time::OffsetDateTime::from_unix_timestamp(ms.div_euclid(1000))
        .ok()
        .and_then(|t| {
            t.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .unwrap_or_else(|| ms.to_string())
}

pub(crate) fn short(version: &str) -> &str {
    version.get(..12).unwrap_or(version)
}

/// Rows as left-aligned columns two spaces apart.
fn table(rows: &[Vec<String>]) -> String {
    let columns = rows.iter().map(Vec::len).max().unwrap_or(0);
    let widths: Vec<usize> = (0..columns)
        .map(|c| {
            rows.iter()
                .filter_map(|r| r.get(c))
                .map(|s| s.chars().count())
                .max()
                .unwrap_or(0)
        })
        .collect();
    let mut out = String::new();
    for row in rows {
        let mut line = String::new();
        for (c, cell) in row.iter().enumerate() {
            if c + 1 == row.len() {
                line.push_str(cell);
            } else {
                line.push_str(cell);
                line.push_str(&" ".repeat(widths[c] - cell.chars().count() + 2));
            }
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn admin_addresses_take_urls_and_host_port() {
        assert_eq!(
            admin_base("127.0.0.1:9090").unwrap(),
            "http://127.0.0.1:9090"
        );
        assert_eq!(
            admin_base("https://gw.example.com/admin/").unwrap(),
            "https://gw.example.com/admin"
        );
        assert_eq!(
            admin_base("http://[::1]:9090").unwrap(),
            "http://[::1]:9090"
        );
        assert!(admin_base("ftp://x").is_err());
        assert!(admin_base("http://x/?a=1").is_err());
        assert!(admin_base("").is_err());
    }

    #[test]
    fn literals_never_interpolate() {
        assert_eq!(hook_string("a ${b} \"c\""), r#""a \${b} \"c\"""#);
        let v: Value = serde_json::json!({"msg": "${x}", "n": 1});
        assert_eq!(hook_value(&v), r#"{"msg":"\${x}","n":1}"#);
    }

    #[test]
    fn file_stems_are_safe() {
        assert_eq!(file_stem("acme-72d3/../x y"), "acme-72d3-..-x-y");
        assert_eq!(file_stem("../etc"), "-etc");
        assert!(file_stem(&"x".repeat(500)).len() <= 100);
    }

    #[test]
    fn since_takes_durations_times_and_millis() {
        assert_eq!(parse_since("15m").unwrap(), "15m");
        assert_eq!(parse_since("1700000000000").unwrap(), "1700000000000");
        assert_eq!(
            parse_since("2023-11-14T22:13:20Z").unwrap(),
            "1700000000000"
        );
        assert!(parse_since("yesterday").is_err());
    }

    #[test]
    fn form_payloads_read_as_the_server_reads_them() {
        let form = vec![(
            "content-type".to_string(),
            "application/x-www-form-urlencoded".to_string(),
        )];
        let v = payload_of(&form, b"payload=%7B%22a%22%3A1%7D").unwrap();
        assert_eq!(v, serde_json::json!({"a": 1}));
        let v = payload_of(&form, b"text=hi+there&user=u").unwrap();
        assert_eq!(v, serde_json::json!({"text": "hi there", "user": "u"}));
        assert!(payload_of(&[], b"not json").is_err());
    }
}
