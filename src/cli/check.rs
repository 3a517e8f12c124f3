//! `gateway check` and `gateway urls`.

use std::io::{IsTerminal, Read, Write};
use std::path::PathBuf;

use crate::cli::{Exit, Format, plural};
use crate::compile::{PlaceholderSecrets, Secrets};
use crate::diagnostic::{Diagnostics, Severity};
use crate::load::{self, Loaded};
use crate::ruleset::SourcePaths;
use crate::secrets::EnvSecrets;

pub(super) fn check(
    files: &[PathBuf],
    format: Format,
    deny_warnings: bool,
    resolve_secrets: bool,
) -> Exit {
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
                    if let Some(help) = e.help() {
                        eprintln!("  help: {help}");
                    }
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
            // Diagnostics go to stderr, the summary to stdout: `check rules.hook > summary.txt` keeps
            // what was checked, and a terminal shows both.
            Format::Human => {
                eprint!("{}", diags.render(&loaded.files, color));
                if let Ok(compiled) = &loaded.result {
                    let r = &compiled.rules;
                    let count = |n: usize, word: &str| format!("{n} {}", plural(n, word));
                    let _ = writeln!(
                        out,
                        "{}: {}, {}, {}, {}",
                        loaded.files.get(crate::source::FileId::default()).name,
                        count(r.sources().len(), "source"),
                        count(r.targets().len(), "target"),
                        count(r.rules().len(), "rule"),
                        count(compiled.tests.len(), "test"),
                    );
                }
            }
        }
    }
    if format == Format::Human {
        let _ = writeln!(
            out,
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

/// Loads secrets as `serve` would, but keeps going without those it cannot load, remembering why.
struct Lenient {
    missing: std::sync::Mutex<Vec<(String, String)>>,
}

impl Secrets for Lenient {
    fn load(
        &self,
        name: &str,
        from: crate::compile::SecretRef<'_>,
    ) -> Result<crate::ruleset::SecretValue, String> {
        match (EnvSecrets { lenient: false }).load(name, from) {
            Ok(v) => Ok(v),
            Err(why) => {
                let mut missing = self.missing.lock().unwrap_or_else(|p| p.into_inner());
                missing.push((name.to_string(), why));
                Ok(crate::ruleset::SecretValue::placeholder(name))
            }
        }
    }
}

pub(super) fn urls(file: &std::path::Path, base: &str) -> Exit {
    // URL-token sources need their real secret to derive the path; others need no secret at all.
    let secrets = Lenient {
        missing: Default::default(),
    };
    let loaded = match load::load_file(file, &secrets) {
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
                diags.render(&loaded.files, std::io::stderr().is_terminal())
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
                let missing = secrets.missing.lock().unwrap_or_else(|p| p.into_inner());
                let why: Vec<String> = source
                    .secret_names()
                    .filter_map(|name| {
                        missing
                            .iter()
                            .find(|(n, _)| n == name)
                            .map(|(n, why)| format!("secret `{n}`: {why}"))
                    })
                    .collect();
                eprintln!(
                    "error: the URL of source `{}` is derived from its secret, which is not available: {}\n  help: set the environment variable or mount the file named above, then run again",
                    source.name(),
                    why.join("; ")
                );
                exit = Exit::Errors;
            }
        }
    }
    exit
}
