//! The command line: the subcommands, their flags and exit codes ([`Exit`], in one place).
//!
//! Each subcommand lives in a file of its own: `check` (check, urls), `rules` (test, explain),
//! `serve` (flags → `server::Config`, logs, signals → `server::run`) and `admin` (deliveries, jobs,
//! secret: the client of a running gateway's admin API).

mod admin;
mod check;
mod rules;
mod serve;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand, ValueEnum};

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
    Serve(Box<serve::ServeArgs>),
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
    /// Run the `test` blocks of rules files (files, or directories of `*.hook` files); with
    /// `--recorded`, compare recorded deliveries' outcomes under a candidate rules file.
    Test {
        /// Rules files, or directories whose `*.hook` files are tested; with `--recorded`, the one
        /// candidate rules file.
        #[arg(required = true)]
        paths: Vec<PathBuf>,
        /// Deliveries exported with `gateway deliveries export` (JSON lines, `-` for stdin): each is
        /// evaluated against the candidate rules, and every one whose outcome would change is printed;
        /// exit 1 if any would.
        #[arg(long, value_name = "FILE.jsonl")]
        recorded: Option<PathBuf>,
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
    /// The delivery log of a running gateway (its admin API): list, show, replay, export.
    Deliveries(admin::DeliveriesArgs),
    /// The delivery queue of a running gateway (its admin API): list jobs, requeue dead ones.
    Jobs(admin::JobsArgs),
    /// Print a new random secret (hex, or `whsec_` + base64 with `--standard-webhooks`).
    ///
    /// 32 random bytes from the operating system's generator, as hex by default: fit for a GitHub,
    /// GitLab (token), Gitea, Bitbucket or generic HMAC secret, a shared token, or
    /// `--admin-token-file`. `--standard-webhooks` prints `whsec_` + base64 instead (Standard Webhooks
    /// senders, GitLab signing tokens).
    Secret(admin::SecretArgs),
}

/// `gateway explain` flags: a delivery described on the command line.
#[derive(Debug, clap::Args)]
pub(crate) struct ExplainArgs {
    /// The rules file.
    #[arg(long)]
    pub(crate) rules: PathBuf,
    /// The source the delivery arrives at.
    #[arg(long)]
    pub(crate) source: String,
    /// The event name; by default taken from the headers as the source's kind says.
    #[arg(long)]
    pub(crate) event: Option<String>,
    /// A request header, `Name: value`; repeatable.
    #[arg(long = "header", value_name = "NAME: VALUE")]
    pub(crate) headers: Vec<String>,
    /// Headers from a JSON object file (`{"X-GitHub-Event": "push", ...}`).
    #[arg(long, value_name = "FILE")]
    pub(crate) headers_file: Option<PathBuf>,
    /// A query parameter, `name=value`; repeatable.
    #[arg(long = "query", value_name = "NAME=VALUE")]
    pub(crate) query: Vec<String>,
    /// The JSON payload file, or `-` for standard input.
    pub(crate) payload: PathBuf,
    /// Output format.
    #[arg(long, value_enum, default_value_t = Format::Human)]
    pub(crate) format: Format,
}

pub(crate) fn parse_size_arg(s: &str) -> Result<u64, String> {
    crate::compile::parse_size(s)
        .filter(|n| *n > 0)
        .ok_or_else(|| format!("invalid size `{s}` (e.g. `10MiB`)"))
}

pub(crate) fn parse_duration_arg(s: &str) -> Result<std::time::Duration, String> {
    crate::compile::parse_duration(s)
        .ok_or_else(|| format!("invalid duration `{s}` (e.g. `30s`, `24h`)"))
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub(crate) enum Format {
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
        Command::Serve(args) => serve::serve(*args).into(),
        Command::Check {
            files,
            format,
            deny_warnings,
            resolve_secrets,
        } => check::check(&files, format, deny_warnings, resolve_secrets).into(),
        Command::Urls { file, base } => check::urls(&file, &base).into(),
        Command::Test {
            paths,
            recorded: None,
        } => rules::test(&paths).into(),
        Command::Test {
            paths,
            recorded: Some(recorded),
        } => rules::test_recorded(&recorded, &paths).into(),
        Command::Deliveries(args) => admin::deliveries(args).into(),
        Command::Jobs(args) => admin::jobs(args).into(),
        Command::Secret(args) => admin::secret(&args).into(),
        Command::Explain(args) => rules::explain(&args).into(),
    }
}

pub(crate) fn plural(n: usize, word: &str) -> String {
    if n == 1 {
        word.to_string()
    } else {
        format!("{word}s")
    }
}
