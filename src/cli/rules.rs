//! `gateway test` (with `--recorded`, over recorded deliveries) and `gateway explain`.

use std::io::{BufRead, IsTerminal, Read};
use std::path::{Path, PathBuf};

use crate::cli::admin::{Exported, timestamp};
use crate::cli::{Exit, ExplainArgs, Format, plural};
use crate::compile::PlaceholderSecrets;
use crate::explain::ActionTrace;
use crate::load::{self, Loaded};
use crate::ruleset::RuleSet;

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
                        crate::fs::io_reason(&e)
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
        for result in crate::rule_test::run(compiled) {
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
        .map_err(|e| crate::fs::io_reason(&e))
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
                .map_err(|e| crate::fs::io_reason(&e))
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

/// `gateway test --recorded FILE.jsonl NEW.hook`: evaluates every recorded delivery of the file against
/// the candidate rules, as the server would (the recorded headers, query and body → payload → event),
/// and prints each one whose outcome would differ from the one it had under the rules that judged it.
pub(super) fn test_recorded(recorded: &Path, paths: &[PathBuf]) -> Exit {
    let [rules_path] = paths else {
        eprintln!(
            "error: `--recorded` compares against one rules file, not {}",
            paths.len()
        );
        eprintln!("  help: write `gateway test --recorded deliveries.jsonl rules.hook`");
        return Exit::Usage;
    };
    let Some(loaded) = load_for_use(rules_path) else {
        return Exit::Errors;
    };
    let Ok(compiled) = &loaded.result else {
        unreachable!("load_for_use returns compiled sets only")
    };
    let rules = &compiled.rules;
    let reader: Box<dyn BufRead> = if recorded.as_os_str() == "-" {
        Box::new(std::io::stdin().lock())
    } else {
        match std::fs::File::open(recorded) {
            Ok(f) => Box::new(std::io::BufReader::new(f)),
            Err(e) => {
                eprintln!(
                    "error: cannot read `{}`: {}",
                    recorded.display(),
                    crate::fs::io_reason(&e)
                );
                return Exit::Errors;
            }
        }
    };
    let (mut total, mut changed, mut unreadable) = (0usize, 0usize, 0usize);
    for (n, line) in reader.lines().enumerate() {
        let line = match line {
            Ok(line) => line,
            Err(e) => {
                eprintln!(
                    "error: cannot read `{}`: {}",
                    recorded.display(),
                    crate::fs::io_reason(&e)
                );
                return Exit::Errors;
            }
        };
        if line.trim().is_empty() {
            continue;
        }
        total += 1;
        let record: Exported = match serde_json::from_str(&line) {
            Ok(r) => r,
            Err(e) => {
                unreadable += 1;
                eprintln!(
                    "error: `{}` line {}: not a delivery record: {e}",
                    recorded.display(),
                    n + 1
                );
                eprintln!("  help: records come from `gateway deliveries export`, one per line");
                continue;
            }
        };
        let candidate = match Verdict::candidate(rules, &record) {
            Ok(v) => v,
            Err(e) => {
                unreadable += 1;
                eprintln!(
                    "error: `{}` line {}: record `{}`: {e}",
                    recorded.display(),
                    n + 1,
                    record.id
                );
                continue;
            }
        };
        let before = Verdict::recorded(&record);
        if let Some(diff) = diff(&before, &candidate) {
            changed += 1;
            println!(
                "✗ record {}: source `{}`, event {}, delivery {}, received {}",
                record.id,
                record.source.as_deref().unwrap_or("-"),
                record
                    .event
                    .as_deref()
                    .map_or("(none)".into(), |e| format!("`{e}`")),
                record
                    .delivery
                    .as_deref()
                    .map_or("(none)".into(), |d| format!("`{d}`")),
                timestamp(record.received_at),
            );
            println!("{diff}");
        }
    }
    if total == 0 {
        eprintln!(
            "warning: `{}` holds no recorded deliveries; nothing was compared",
            recorded.display()
        );
        eprintln!(
            "  help: export some with `gateway deliveries export --since 24h > {}`",
            recorded.display()
        );
    }
    let unreadable_note = if unreadable > 0 {
        format!(", {unreadable} unreadable")
    } else {
        String::new()
    };
    println!(
        "{total} recorded {}: {changed} would change, {} unchanged{unreadable_note}",
        if total == 1 { "delivery" } else { "deliveries" },
        total - changed - unreadable,
    );
    if changed > 0 || unreadable > 0 {
        Exit::Errors
    } else {
        Exit::Ok
    }
}

/// What a set of rules does with a delivery.
#[derive(Debug)]
enum Verdict {
    /// Refused before evaluation (its source is not in the rules, its body is malformed).
    Refused(String),
    /// The source's `events` list drops it.
    Filtered,
    Evaluated {
        matched: Vec<String>,
        actions: Vec<ActionTrace>,
    },
}

impl Verdict {
    /// The outcome it had under the rules that judged it.
    fn recorded(r: &Exported) -> Verdict {
        if r.outcome == "filtered" {
            return Verdict::Filtered;
        }
        Verdict::Evaluated {
            matched: r.result.matched.clone(),
            actions: r.result.actions.clone(),
        }
    }

    /// Its outcome under `rules`, worked out as the server does.
    fn candidate(rules: &RuleSet, r: &Exported) -> Result<Verdict, String> {
        let body = r.body()?;
        let name = r.source.as_deref().unwrap_or_default();
        let Some(source) = rules.sources().iter().position(|s| s.name() == name) else {
            return Ok(Verdict::Refused(format!(
                "source `{name}` is not in these rules (404)"
            )));
        };
        let spec = &rules.sources()[source];
        let headers = crate::pairs::Pairs::from(r.request.headers.as_slice());
        let payload = match crate::prepare::payload(spec, &headers, &body) {
            Ok(p) => p,
            Err(m) => return Ok(Verdict::Refused(format!("{} (400)", m.as_str()))),
        };
        if !spec.accepts_event(r.event.as_deref()) {
            return Ok(Verdict::Filtered);
        }
        let event = crate::event::Event::with_identity(
            rules,
            source,
            r.event.clone(),
            r.delivery.clone(),
            headers,
            r.request.query.clone(),
            payload,
        );
        let explanation = crate::explain::explain(rules, &event);
        Ok(Verdict::Evaluated {
            matched: explanation.matched,
            actions: explanation.actions,
        })
    }

    fn summary(&self) -> Vec<String> {
        match self {
            Verdict::Refused(why) => vec![format!("refused: {why}")],
            Verdict::Filtered => vec!["filtered: the source's `events` list drops it".into()],
            Verdict::Evaluated { matched, actions } => {
                let mut lines = vec![format!("matched {}", quoted(matched))];
                lines.extend(actions.iter().map(show_action));
                lines
            }
        }
    }
}

/// What differs between two verdicts, as indented `-`/`+` lines; `None` when they agree.
fn diff(before: &Verdict, after: &Verdict) -> Option<String> {
    use std::fmt::Write;
    let mut out = String::new();
    match (before, after) {
        (
            Verdict::Evaluated {
                matched: m1,
                actions: a1,
            },
            Verdict::Evaluated {
                matched: m2,
                actions: a2,
            },
        ) => {
            let gone: Vec<&String> = m1.iter().filter(|m| !m2.contains(m)).collect();
            let new: Vec<&String> = m2.iter().filter(|m| !m1.contains(m)).collect();
            if !gone.is_empty() || !new.is_empty() {
                out.push_str("    matched rules (- recorded, + candidate):\n");
                for m in gone {
                    let _ = writeln!(out, "      - {m:?}");
                }
                for m in new {
                    let _ = writeln!(out, "      + {m:?}");
                }
            }
            // Actions as multisets: each recorded one cancels one equal candidate action.
            let mut left: Vec<&ActionTrace> = a2.iter().collect();
            let mut missing = Vec::new();
            for a in a1 {
                match left.iter().position(|b| same_action(a, b)) {
                    Some(i) => {
                        left.remove(i);
                    }
                    None => missing.push(a),
                }
            }
            if !missing.is_empty() || !left.is_empty() {
                out.push_str("    actions (- recorded, + candidate):\n");
                for a in missing {
                    let _ = writeln!(out, "      - {}", show_action(a));
                }
                for a in left {
                    let _ = writeln!(out, "      + {}", show_action(a));
                }
            }
        }
        // Dropped by the `events` list or matching nothing: either way nothing runs.
        (Verdict::Filtered, Verdict::Filtered) => {}
        (Verdict::Filtered, Verdict::Evaluated { matched, actions })
        | (Verdict::Evaluated { matched, actions }, Verdict::Filtered)
            if matched.is_empty() && actions.is_empty() => {}
        (Verdict::Refused(x), Verdict::Refused(y)) if x == y => {}
        _ => {
            out.push_str("    outcome (- recorded, + candidate):\n");
            for line in before.summary() {
                let _ = writeln!(out, "      - {line}");
            }
            for line in after.summary() {
                let _ = writeln!(out, "      + {line}");
            }
        }
    }
    (!out.is_empty()).then_some(out)
}

fn same_action(a: &ActionTrace, b: &ActionTrace) -> bool {
    a.rule == b.rule
        && a.kind == b.kind
        && a.target == b.target
        && a.key == b.key
        && match (&a.body, &b.body) {
            (None, None) => true,
            (Some(x), Some(y)) => crate::eval::json_eq(x, y),
            _ => false,
        }
}

/// An action with what it sends, in full: `notify fluxd {...}`, `queue check ci key "k"`.
fn show_action(a: &ActionTrace) -> String {
    let what = match (a.kind.as_str(), &a.body, &a.key) {
        ("notify", Some(serde_json::Value::Null) | None, _) => {
            format!("notify {} (the original payload)", a.target)
        }
        ("notify", Some(body), _) => format!("notify {} {body}", a.target),
        ("check", _, Some(key)) => format!("queue check {} key {key:?}", a.target),
        ("check", _, None) => format!("queue check {}", a.target),
        (kind, _, _) => format!("{kind} {}", a.target),
    };
    format!("{what} (rule {:?})", a.rule)
}

fn quoted(names: &[String]) -> String {
    format!(
        "[{}]",
        names
            .iter()
            .map(|n| format!("{n:?}"))
            .collect::<Vec<_>>()
            .join(", ")
    )
}
