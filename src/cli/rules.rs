//! `gateway test` and `gateway explain`.

use std::io::{IsTerminal, Read};
use std::path::PathBuf;

use crate::cli::{Exit, ExplainArgs, Format, plural};
use crate::compile::PlaceholderSecrets;
use crate::load::{self, Loaded};

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
                eprint!("{}", diags.render(&loaded.files, color));
                None
            }
            Ok(_) => Some(loaded),
        },
    }
}

pub(super) fn test(paths: &[PathBuf]) -> Exit {
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

pub(super) fn explain(request: &ExplainArgs) -> Exit {
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
