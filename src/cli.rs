//! The command line: `gateway check`, `gateway urls`. Exit codes are [`Exit`], in one place.

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
    /// Print the URL of each source's webhook.
    Urls {
        /// The rules file.
        file: PathBuf,
        /// Public base URL of the gateway, e.g. `https://hooks.example.com`.
        #[arg(long, default_value = "")]
        base: String,
    },
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
        Command::Check {
            files,
            format,
            deny_warnings,
            resolve_secrets,
        } => check(&files, format, deny_warnings, resolve_secrets).into(),
        Command::Urls { file, base } => urls(&file, &base).into(),
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
