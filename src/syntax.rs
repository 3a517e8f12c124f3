//! Text → [`Ast`]. The only module that knows about pest.
//!
//! `parse` guards pest against input it handles badly (deep nesting), runs the grammar in
//! `grammar/rules.pest`, converts a pest error into a `rules::syntax` diagnostic with a span and an
//! "expected ..." list in user terms (or "did you mean" for a misspelt keyword), and lowers the parse
//! tree into the AST. After a syntax error it skips the broken declaration and parses on from the next
//! one, so that one `gateway check` reports the syntax errors of every declaration.

mod ast;
mod fast;
mod grammar;
mod lower;

pub(crate) use ast::*;

use pest::Parser;
use pest::error::{ErrorVariant, InputLocation};

use crate::diagnostic::{Diagnostic, DiagnosticKind, Diagnostics};
use crate::source::{FileId, Span};
use grammar::{Grammar, Rule};

/// The deepest nesting of brackets accepted. Real rules need a handful; the limit keeps every
/// recursive stage (parser, lowering, compiling, evaluating) far from the end of its stack.
pub(crate) const MAX_DEPTH: usize = 64;

/// The most syntax errors (trailing commas included) reported for one file; after as many, the rest
/// of the file is not read.
pub(crate) const MAX_SYNTAX_ERRORS: usize = 100;

/// Parses one file's text: its AST, or every syntax error (sorted by position).
///
/// Declarations are read by the hand-written parser in `fast.rs`, which builds the same AST as
/// pest and `lower` would. At a declaration it does not parse (a syntax error, a trailing comma),
/// pest takes over: from there it reports the error and, after a syntax error, parsing resumes at
/// the next declaration ([`resume_at`]), with the fast parser again. pest parses windows of about
/// [`RECOVERY_WINDOW`] bytes of whole lines: its cost for an error grows with the length of the text
/// after it, so a window keeps each error's cost bounded and the work linear in the size of the file.
/// A window that ends inside a declaration fails at its end; it is then doubled and parsed again, so
/// windows never change what is reported.
#[cfg(test)]
pub(crate) fn parse(file: FileId, text: &str) -> Result<Ast, Diagnostics> {
    parse_with(file, text, true, false)
}

/// [`parse`], keeping of each target and rule the fast parser reads only its name and where it
/// starts ([`Item::Later`]); `compile` reads each again with [`read_again`] when it compiles it. The
/// AST of a large file is then never held whole: for 100,000 rules it would take about 250 MiB,
/// seven times the text, beside the set being served during a reload. Declarations pest parses
/// (after a syntax error) are kept whole.
pub(crate) fn parse_later(file: FileId, text: &str) -> Result<Ast, Diagnostics> {
    parse_with(file, text, true, true)
}

/// The declaration at byte `at` of `text`, as [`parse_later`] read it the first time.
pub(crate) fn read_again(file: FileId, text: &str, at: usize) -> Option<Item> {
    fast::declaration_at(file, text, at)
}

/// [`parse`], or with `fast` off, pest alone from the start (the tests compare the two).
fn parse_with(file: FileId, text: &str, fast: bool, later: bool) -> Result<Ast, Diagnostics> {
    let mut diags = Diagnostics::default();
    if let Some(offset) = too_deep(text) {
        let span = Span::new(file, offset, offset + 1);
        diags.error(DiagnosticKind::TooDeep { limit: MAX_DEPTH }, span);
        return Err(diags);
    }
    let mut items = Vec::new();
    let mut trailing_commas = Vec::new();
    let lowered = |l: lower::Lowered, items: &mut Vec<Item>, commas: &mut Vec<Span>| {
        items.extend(l.items);
        commas.extend(l.trailing_commas);
    };
    let mut errors: Vec<Diagnostic> = Vec::new();
    let mut start = 0;
    // Without the fast parser, pest's first window is the whole text.
    let mut size = if fast { RECOVERY_WINDOW } else { text.len() };
    // Whether the fast parser reads from `start` (not when pest is retrying a wider window).
    let mut try_fast = fast;
    loop {
        if try_fast {
            let (parsed, stop) = fast::declarations(file, text, start, later);
            items.extend(parsed);
            match stop {
                Some(at) => start = at,
                None => break,
            }
        }
        try_fast = fast;
        let rest = &text[start..];
        let end = line_end_after(rest, size);
        let window = &rest[..end];
        if let Ok(mut pairs) = Grammar::parse(Rule::file, window) {
            let pair = pairs
                .next()
                .unwrap_or_else(|| unreachable!("`file` always yields one pair"));
            lowered(
                lower::file(file, start, pair),
                &mut items,
                &mut trailing_commas,
            );
            if end == rest.len() {
                break;
            }
            start += end;
            continue;
        }
        let (error, failed) = syntax_error(file, start, window);
        if end < rest.len() && skip_trivia(window, failed) == window.len() {
            // The window may have cut a declaration short: look further.
            size = 2 * end;
            try_fast = false;
            continue;
        }
        size = RECOVERY_WINDOW;
        // Resuming before the failure point can meet the same failure again: report it once.
        if errors.last().is_none_or(|last| last.span != error.span) {
            errors.push(error);
        }
        // The declarations before the broken one parse; their trailing commas are errors too.
        let mut decl_start = 0;
        if let Ok(mut pairs) = Grammar::parse(Rule::file_prefix, window) {
            let pair = pairs
                .next()
                .unwrap_or_else(|| unreachable!("`file_prefix` always yields one pair"));
            decl_start = pair.as_span().end();
            lowered(
                lower::file(file, start, pair),
                &mut items,
                &mut trailing_commas,
            );
        }
        let decl_start = skip_trivia(window, decl_start).min(failed);
        if errors.len() >= MAX_SYNTAX_ERRORS {
            break;
        }
        match resume_at(rest, decl_start, failed) {
            Some(next) => start += next,
            None => break,
        }
    }
    if errors.is_empty() && trailing_commas.is_empty() {
        return Ok(Ast { items });
    }
    errors.extend(
        trailing_commas
            .into_iter()
            .map(|span| Diagnostic::new(DiagnosticKind::TrailingComma, span)),
    );
    errors.sort_by_key(|d| d.span.start);
    errors.truncate(MAX_SYNTAX_ERRORS);
    for error in errors {
        diags.push(error);
    }
    Err(diags)
}

/// How much text is parsed at once after a syntax error (see [`parse`]).
const RECOVERY_WINDOW: usize = 16 * 1024;

/// The end of the line that byte `size` of `text` is on (after its `\n`), or the end of the text.
fn line_end_after(text: &str, size: usize) -> usize {
    if size >= text.len() {
        return text.len();
    }
    text.as_bytes()[size..]
        .iter()
        .position(|&b| b == b'\n')
        .map_or(text.len(), |i| size + i + 1)
}

/// Parses again with pest's error detail on (slower, so only after a failure) and describes the
/// failure in user terms. `text` starts at byte `offset` of the file; also returns where in `text`
/// parsing failed.
fn syntax_error(file: FileId, offset: usize, text: &str) -> (Diagnostic, usize) {
    let mut failure = analyse(text);
    // pest may stop inside a word (`pathx` matched `path`, then failed): blame the whole word, with
    // what was expected where it starts, found by parsing again with the word blanked out.
    let word_start = text[..failure.pos]
        .char_indices()
        .rev()
        .find(|&(_, c)| !is_word_char(c))
        .map_or(0, |(i, c)| i + c.len_utf8());
    if word_start < failure.pos && text[failure.pos..].starts_with(is_word_char) {
        let word_end = text[failure.pos..]
            .find(|c: char| !is_word_char(c))
            .map_or(text.len(), |i| failure.pos + i);
        let blanked = format!(
            "{}{}{}",
            &text[..word_start],
            "\u{1}".repeat(word_end - word_start),
            &text[word_end..]
        );
        let retry = analyse(&blanked);
        if retry.pos == word_start {
            failure = retry;
        }
    }
    let found = found_at(text, failure.pos);
    let mut expected = failure.expected;
    if found.is_line_end && inside_string(text, failure.pos) {
        expected = vec!["`\"` to close the string".to_string()];
    } else if failure.in_regex && found.is_line_end {
        expected = vec!["`/` to close the regular expression".to_string()];
    }
    let end = (failure.pos + found.len).min(text.len()).max(failure.pos);
    let word = &text[failure.pos..end];
    // Only a whole word can be a misspelt keyword, not the rest of one pest stopped inside.
    let whole_word = !text[..failure.pos].ends_with(is_word_char);
    let kind = match misspelt_keyword(word, &expected).filter(|_| whole_word) {
        Some(suggestion) => DiagnosticKind::UnknownKeyword {
            found: word.to_string(),
            suggestion,
        },
        _ => DiagnosticKind::Syntax {
            expected: join_alternatives(&expected),
            found: found.text,
        },
    };
    let span = Span::new(file, offset + failure.pos, offset + end);
    (Diagnostic::new(kind, span), failure.pos)
}

/// The keyword that `word` is likely a misspelling of, among the keywords `expected` names
/// (`backof` → `backoff`, `qeue` → `queue`, `strats` → `starts with`).
fn misspelt_keyword(word: &str, expected: &[String]) -> Option<String> {
    if !word.starts_with(|c: char| c.is_ascii_alphabetic()) || !word.chars().all(is_word_char) {
        return None;
    }
    // Every keyword named in backticks, by its full text and by its first word (`starts with`).
    let mut keywords: Vec<(&str, &str)> = Vec::new();
    for item in expected {
        for quoted in item.split('`').skip(1).step_by(2) {
            if quoted.is_empty()
                || !quoted
                    .chars()
                    .all(|c| c.is_ascii_lowercase() || c == '_' || c == ' ')
            {
                continue;
            }
            keywords.push((quoted, quoted));
            if let Some((first, _)) = quoted.split_once(' ') {
                keywords.push((first, quoted));
            }
        }
        if item.contains("a method such as") {
            keywords.extend(METHODS.iter().map(|m| (*m, *m)));
        }
    }
    let closest = crate::compile::suggest(word, keywords.iter().map(|(k, _)| *k))?;
    keywords
        .iter()
        .find(|(k, _)| *k == closest)
        .map(|(_, full)| full.to_string())
}

/// The methods `http_method` takes.
const METHODS: &[&str] = &["post", "put", "patch", "get", "delete"];

/// The first position at or after `pos` that is not white space or a comment.
fn skip_trivia(text: &str, mut pos: usize) -> usize {
    let bytes = text.as_bytes();
    while pos < bytes.len() {
        match bytes[pos] {
            b' ' | b'\t' | b'\r' | b'\n' => pos += 1,
            b'#' => pos = skip_until(bytes, pos, b'\n'),
            _ => break,
        }
    }
    pos
}

/// Where to parse again after the declaration that starts at `start` failed at `failed`: the first
/// line, from the failing one on, that begins a declaration. Such a line begins with `secret`,
/// `source`, `target`, `rule`, `include` or `test` where the brackets opened since `start` are all
/// closed. A broken declaration may leave one open (a missing `}`), so a line in column 0 counts
/// too when it has the shape only a declaration has (inside blocks `secret NAME` and `source NAME`
/// are items; `secret NAME =` and `source NAME:` are not). Strings, regular expressions, JSONPath
/// quotes and comments are skipped, so the brackets inside them do not count.
fn resume_at(text: &str, start: usize, failed: usize) -> Option<usize> {
    let bytes = text.as_bytes();
    let failed_line = text[..failed].rfind('\n').map_or(0, |i| i + 1);
    let mut depth: isize = 0;
    let mut i = start;
    while i < bytes.len() {
        match bytes[i] {
            b'\n' => {
                let line = i + 1;
                i = line;
                while i < bytes.len() && matches!(bytes[i], b' ' | b'\t' | b'\r') {
                    i += 1;
                }
                let closed = depth <= 0;
                if line >= failed_line
                    && i > start
                    && (closed || i == line)
                    && starts_declaration(&text[i..], closed)
                {
                    return Some(i);
                }
                continue;
            }
            b'#' => {
                i = skip_until(bytes, i, b'\n');
                continue;
            }
            quote @ (b'"' | b'\'' | b'/') => {
                i = skip_quoted(bytes, i + 1, quote);
                if i < bytes.len() && bytes[i] == quote {
                    i += 1;
                }
                continue;
            }
            b'(' | b'[' | b'{' => depth += 1,
            b')' | b']' | b'}' => depth -= 1,
            _ => {}
        }
        i += 1;
    }
    None
}

/// Whether `line` starts with a declaration's keyword; unless `closed` (outside any block), also
/// with the shape that tells `secret NAME = ...` and `source NAME: ...` from the items of a block.
fn starts_declaration(line: &str, closed: bool) -> bool {
    let word_end = line.find(|c: char| !is_word_char(c)).unwrap_or(line.len());
    let after_name = |punct: char| {
        let rest = line[word_end..].trim_start_matches([' ', '\t']);
        let name_end = rest.find(|c: char| !is_word_char(c)).unwrap_or(rest.len());
        name_end > 0
            && rest[name_end..]
                .trim_start_matches([' ', '\t'])
                .starts_with(punct)
    };
    match &line[..word_end] {
        "target" | "rule" | "include" | "test" => true,
        "secret" => closed || after_name('='),
        "source" => closed || after_name(':'),
        _ => false,
    }
}

/// Where parsing failed and what would have been accepted there.
struct Failure {
    pos: usize,
    expected: Vec<String>,
    in_regex: bool,
}

fn analyse(text: &str) -> Failure {
    // pest's error detail is one process-wide flag, read when a parse starts: without the lock, one
    // thread turning it off between another's turning it on and parsing gives that one a vaguer
    // message (seen as a flaky test; in the server, a reload and an explanation can meet here).
    static DETAIL: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let guard = DETAIL.lock().unwrap_or_else(|p| p.into_inner());
    pest::set_error_detail(true);
    let result = Grammar::parse(Rule::file, text);
    pest::set_error_detail(false);
    drop(guard);
    let Err(error) = result else {
        // Only reachable for the blanked retry if blanking fixed the text, which a control
        // character cannot; report the start of the file rather than panic.
        return Failure {
            pos: 0,
            expected: Vec::new(),
            in_regex: false,
        };
    };
    // With error detail on, pest records the furthest position any rule reached and what it expected
    // there; that is where the user's mistake is. The plain error location has been backtracked.
    let attempts = error.parse_attempts();
    let pos = match (&attempts, error.location) {
        (Some(a), _) => a.max_position,
        (None, InputLocation::Pos(pos)) => pos,
        (None, InputLocation::Span((start, _))) => start,
    };
    let mut expected: Vec<String> = Vec::new();
    let mut in_regex = false;
    match &attempts {
        Some(attempts) => {
            for stack in &attempts.call_stacks {
                let rule = stack.deepest.get_rule().copied();
                in_regex |= rule == Some(Rule::regex_body);
                // A declaration as the deepest rule means "its next token"; the tokens say which.
                expected.extend(
                    rule.filter(|r| !is_container(*r))
                        .and_then(describe)
                        .map(String::from),
                );
            }
            for token in attempts.expected_tokens() {
                let token = token.to_string();
                let keyword =
                    token.len() >= 2 && token.bytes().all(|b| b.is_ascii_lowercase() || b == b'_');
                match token.as_str() {
                    "starts" | "ends" => expected.push(format!("`{token} with`")),
                    "==" | "!=" | "<" | "<=" | ">" | ">=" => {
                        expected.push("a comparison such as `==`".into())
                    }
                    _ if keyword || PUNCTUATION.contains(&token.as_str()) => {
                        expected.push(format!("`{token}`"))
                    }
                    _ => {}
                }
            }
        }
        None => {
            if let ErrorVariant::ParsingError { positives, .. } = &error.variant {
                expected.extend(
                    positives
                        .iter()
                        .filter_map(|r| describe(*r))
                        .map(String::from),
                );
            }
        }
    }
    // "a value" already covers every token a value can start with.
    if expected.iter().any(|e| e == "a value") {
        expected.retain(|e| !VALUE_STARTS.contains(&e.as_str()));
    }
    expected.sort();
    expected.dedup();
    Failure {
        pos,
        expected,
        in_regex,
    }
}

/// Whether `pos` is inside a string that opened earlier on its line (strings cannot span lines).
fn inside_string(text: &str, pos: usize) -> bool {
    let line_start = text[..pos].rfind('\n').map_or(0, |i| i + 1);
    let mut open = false;
    let mut chars = text[line_start..pos].chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' if open => {
                chars.next();
            }
            '"' => open = !open,
            '#' if !open => return false,
            _ => {}
        }
    }
    open
}

fn is_word_char(c: char) -> bool {
    c.is_alphanumeric() || c == '_' || c == '-'
}

const VALUE_STARTS: &[&str] = &[
    "`[`",
    "`{`",
    "`true`",
    "`false`",
    "`null`",
    "`payload`",
    "`event`",
    "`source`",
    "`delivery`",
    "`header`",
    "`query`",
];

/// Rules that stand for "a declaration of this kind", not for a token.
fn is_container(rule: Rule) -> bool {
    use Rule::*;
    matches!(
        rule,
        file | secret_decl
            | source_decl
            | target_decl
            | rule_decl
            | include_decl
            | test_decl
            | object
            | array
    )
}

/// What users call a grammar rule, or `None` for rules that only add noise to "expected ...".
fn describe(rule: Rule) -> Option<&'static str> {
    use Rule::*;
    Some(match rule {
        EOI => "end of file",
        ident => "a name",
        int => "a whole number",
        duration => "a duration",
        size => "a size",
        number => "a number",
        string => "a string",
        regex => "a regular expression `/.../`",
        jsonpath => "a JSONPath `$...`",
        value => "a value",
        object => "`{`",
        array => "`[`",
        compare_op => "a comparison such as `==`",
        http_method => "a method such as `post`",
        star => "`*`",
        secret_decl | source_decl | target_decl | rule_decl | include_decl | test_decl => {
            "a declaration (`secret`, `source`, `target`, `rule`, `include`, `test`)"
        }
        k_secret => "`secret`",
        k_env => "`env`",
        k_file => "`file`",
        k_source => "`source`",
        k_path => "`path`",
        k_events => "`events`",
        k_max_body => "`max_body`",
        k_insecure => "`insecure`",
        k_header => "`header`",
        k_headers => "`headers`",
        k_algorithm => "`algorithm`",
        k_encoding => "`encoding`",
        k_prefix => "`prefix`",
        k_token => "`token`",
        k_tolerance => "`tolerance`",
        k_rate => "`rate`",
        k_per => "`per`",
        k_target => "`target`",
        k_timeout => "`timeout`",
        k_retry => "`retry`",
        k_backoff => "`backoff`",
        k_concurrency => "`concurrency`",
        k_signature => "`signature`",
        k_rule => "`rule`",
        k_from => "`from`",
        k_on => "`on`",
        k_when => "`when`",
        k_notify => "`notify`",
        k_queue => "`queue`",
        k_check => "`check`",
        k_key => "`key`",
        k_forward => "`forward`",
        k_sign => "`sign`",
        k_with => "`with`",
        k_include => "`include`",
        k_test => "`test`",
        k_expect => "`expect`",
        k_matched => "`matched`",
        k_query => "`query`",
        k_payload => "`payload`",
        k_event => "`event`",
        k_delivery => "`delivery`",
        k_and => "`and`",
        k_or => "`or`",
        k_not => "`not`",
        k_any => "`any`",
        k_all => "`all`",
        k_contains => "`contains`",
        k_starts => "`starts with`",
        k_ends => "`ends with`",
        k_matches => "`matches`",
        k_in => "`in`",
        k_exists => "`exists`",
        k_true => "`true`",
        k_false => "`false`",
        k_null => "`null`",
        _ => return None,
    })
}

fn join_alternatives(items: &[String]) -> String {
    match items {
        [] => "something else".into(),
        [one] => one.clone(),
        [init @ .., last] => format!("{} or {last}", init.join(", ")),
    }
}

struct Found {
    text: String,
    len: usize,
    /// At the end of a line or of the file.
    is_line_end: bool,
}

/// Literal tokens worth naming in "expected ..."; white space, comment starts and the insides of
/// tokens are noise.
const PUNCTUATION: &[&str] = &[
    ":", "{", "}", "(", ")", "[", "]", ",", "=", "..", "==", "*", ";",
];

/// Names the token at `pos` for "found ...".
fn found_at(text: &str, pos: usize) -> Found {
    let rest = &text[pos.min(text.len())..];
    let Some(first) = rest.chars().next() else {
        return Found {
            text: "end of file".into(),
            len: 0,
            is_line_end: true,
        };
    };
    if first == '\n' || first == '\r' {
        return Found {
            text: "end of line".into(),
            len: 1,
            is_line_end: true,
        };
    }
    let word_len = rest
        .char_indices()
        .find(|&(_, c)| !(c.is_alphanumeric() || c == '_' || c == '-'))
        .map_or(rest.len(), |(i, _)| i);
    let len = if word_len > 0 {
        word_len
    } else {
        first.len_utf8()
    };
    let token: String = rest[..len].chars().take(40).collect();
    let shown: String = token
        .chars()
        .flat_map(|c| {
            if c.is_control() {
                c.escape_default().collect()
            } else {
                vec![c]
            }
        })
        .collect();
    Found {
        text: format!("`{shown}`"),
        len,
        is_line_end: false,
    }
}

/// Finds where bracket nesting first exceeds [`MAX_DEPTH`], skipping comments, the text of strings and
/// regexes. Brackets inside a string's `${…}` interpolation count (a JSONPath can nest there too), and
/// `/` opens a regex only after the keyword `matches` (elsewhere, as in a JSONPath filter, it is an
/// operator), so no bracket the parsers will recurse into is left uncounted.
fn too_deep(text: &str) -> Option<usize> {
    let bytes = text.as_bytes();
    let mut depth = 0usize;
    let mut i = 0;
    // Whether the last word was `matches` (white space and comments in between do not count).
    let mut after_matches = false;
    while i < bytes.len() {
        let b = bytes[i];
        match b {
            b'#' => i = skip_until(bytes, i + 1, b'\n'),
            b' ' | b'\t' | b'\r' | b'\n' => {}
            b'"' => {
                match scan_string(bytes, i + 1, &mut depth) {
                    Ok(end) => i = end,
                    Err(at) => return Some(at),
                }
                after_matches = false;
            }
            b'\'' => {
                i = skip_quoted(bytes, i + 1, b'\'');
                after_matches = false;
            }
            b'/' if after_matches => {
                i = skip_quoted(bytes, i + 1, b'/');
                after_matches = false;
            }
            b'(' | b'[' | b'{' => {
                depth += 1;
                if depth > MAX_DEPTH {
                    return Some(i);
                }
                after_matches = false;
            }
            b')' | b']' | b'}' => {
                depth = depth.saturating_sub(1);
                after_matches = false;
            }
            _ if is_word_char(char::from(b)) => {
                let start = i;
                while bytes
                    .get(i + 1)
                    .is_some_and(|&c| is_word_char(char::from(c)))
                {
                    i += 1;
                }
                after_matches = &bytes[start..=i] == b"matches";
            }
            _ => after_matches = false,
        }
        i += 1;
    }
    None
}

/// Scans a double-quoted string from just after its opening quote to its closing quote (or the end of
/// the line, which the grammar reports), counting the brackets of its `${…}` interpolations into
/// `depth`. `Err` is where nesting first exceeds [`MAX_DEPTH`] (returned by `too_deep` as `Some`).
fn scan_string(bytes: &[u8], mut i: usize, depth: &mut usize) -> Result<usize, usize> {
    while i < bytes.len() && bytes[i] != b'"' && bytes[i] != b'\n' {
        if bytes[i] == b'\\' && bytes.get(i + 1).is_some_and(|&b| b != b'\n') {
            i += 2;
            continue;
        }
        if bytes[i] == b'$' && bytes.get(i + 1) == Some(&b'{') {
            // The interpolation runs to the `}` that closes its `{`; quoted names inside are skipped.
            let outer = *depth;
            i += 1;
            while i < bytes.len() {
                match bytes[i] {
                    b'(' | b'[' | b'{' => {
                        *depth += 1;
                        if *depth > MAX_DEPTH {
                            return Err(i);
                        }
                    }
                    b')' | b']' | b'}' => {
                        *depth = depth.saturating_sub(1);
                        if *depth <= outer {
                            *depth = outer;
                            break;
                        }
                    }
                    quote @ (b'"' | b'\'') => i = skip_quoted(bytes, i + 1, quote),
                    _ => {}
                }
                i += 1;
            }
        }
        i += 1;
    }
    Ok(i)
}

fn skip_until(bytes: &[u8], mut i: usize, end: u8) -> usize {
    while i < bytes.len() && bytes[i] != end {
        i += 1;
    }
    i
}

/// Skips a quoted run; stops at the closing quote or the end of the line (the grammar reports those).
fn skip_quoted(bytes: &[u8], mut i: usize, quote: u8) -> usize {
    while i < bytes.len() && bytes[i] != quote && bytes[i] != b'\n' {
        if bytes[i] == b'\\' && bytes.get(i + 1).is_some_and(|&b| b != b'\n') {
            i += 1;
        }
        i += 1;
    }
    i
}

#[cfg(test)]
pub(crate) mod tests {
    use std::path::Path;

    use super::*;

    /// The result of parsing, as text: the AST, or every diagnostic with its span.
    fn outcome(result: Result<Ast, Diagnostics>) -> String {
        match result {
            Ok(ast) => format!("{ast:#?}"),
            Err(d) => d.iter().map(|d| format!("{d:?}\n")).collect(),
        }
    }

    /// Every rules file in the repository: the test suite's, the deployment's, the example.
    /// Every rules file of the test suite, `deploy/` and `rules.example`: (path, text).
    pub(crate) fn corpus() -> Vec<(String, String)> {
        let root = Path::new(env!("CARGO_MANIFEST_DIR"));
        let mut files: Vec<(String, String)> = walkdir::WalkDir::new(root.join("tests/rules"))
            .into_iter()
            .chain(walkdir::WalkDir::new(root.join("deploy")))
            .filter_map(Result::ok)
            .filter(|e| e.path().extension().is_some_and(|x| x == "hook"))
            .map(|e| {
                let text = std::fs::read_to_string(e.path()).unwrap_or_default();
                (e.path().display().to_string(), text)
            })
            .collect();
        let example = std::fs::read_to_string(root.join("rules.example")).unwrap_or_default();
        files.push(("rules.example".into(), example));
        files.sort();
        assert!(files.len() > 50, "the corpus was found");
        files
    }

    fn assert_same(name: &str, text: &str) {
        let fast = outcome(parse_with(FileId::default(), text, true, false));
        let pest = outcome(parse_with(FileId::default(), text, false, false));
        assert!(
            fast == pest,
            "{name}: {text:?}\nfast:\n{fast}\npest:\n{pest}"
        );
    }

    #[test]
    fn the_fast_parser_builds_what_pest_builds() {
        for (name, text) in corpus() {
            assert_same(&name, &text);
        }
    }

    #[test]
    fn the_fast_parser_agrees_with_pest_on_edited_files() {
        // Deterministic edits of every file: delete, insert or replace a character or a token,
        // cut a line; each edited text must parse (or fail) exactly as pest alone parses it.
        const PIECES: &[&str] = &[
            " ",
            "\n",
            "#",
            "\"",
            "{",
            "}",
            "[",
            "]",
            "(",
            ")",
            ",",
            ";",
            ":",
            "=",
            "$",
            "${",
            "\\",
            "/",
            "*",
            "..",
            "-",
            "0",
            "1.5e3",
            "x",
            "on",
            "not",
            "and",
            "or",
            "any",
            "all",
            "contains",
            "starts with",
            "in",
            "exists",
            "==",
            "<=",
            "key",
            "header(\"a\")",
            "$.a",
            "$['b']",
            "${event}",
            "\\u00e9",
            "é",
            "secret",
            "rule",
            "test",
            "expect",
            "[1,]",
        ];
        let mut rng = fastrand::Rng::with_seed(12);
        for (name, text) in corpus() {
            if text.is_empty() {
                continue;
            }
            for _ in 0..30 {
                let mut at = rng.usize(0..=text.len());
                while !text.is_char_boundary(at) {
                    at -= 1;
                }
                let mut end = (at + rng.usize(0..4)).min(text.len());
                while !text.is_char_boundary(end) {
                    end -= 1;
                }
                let piece = PIECES[rng.usize(0..PIECES.len())];
                let edited = match rng.u8(0..4) {
                    0 => format!("{}{}", &text[..at], &text[end..]),
                    1 => format!("{}{piece}{}", &text[..at], &text[at..]),
                    2 => format!("{}{piece}{}", &text[..at], &text[end..]),
                    _ => {
                        let line_end = text[at..].find('\n').map_or(text.len(), |i| at + i);
                        format!("{}{}", &text[..at], &text[line_end..])
                    }
                };
                assert_same(&name, &edited);
            }
        }
    }

    #[test]
    fn spans_after_optional_parts_match_pest() {
        // pest keeps the white space skipped before an optional part that matched nothing.
        for text in [
            "rule \"r\" { from a, b \n on \"x\" , \"y\"  # c\n when not not $.a == 1 and ( $.b exists or any $.c in [1, 2] ) \n queue check t \n notify u \n forward v sign with s }",
            "target t { post \"http://x/${ secret.a }${header( \"h\" )}\" \n retry 3 ; timeout 1s; signature github header \"x\" }",
            "test \"t\" { source s event \"e\" headers file(\"h\") payload {\"a\": [1, -2.5e-3, true, null]} expect notify t == {} expect check t key \"k\" expect matched [\"r\"] }",
            "source s: generic { token header \"x\" rate 1 per 1s max_body 1MiB events \"a\", \"b\" }\nsecret a = file(\"/x\")\ninclude \"x/*.hook\"",
            "rule \"r\" { from * when $.a matches /a\\/b[/]/i and $['a b'][?@.c == \"]\"] exists }",
        ] {
            assert_same(text, text);
        }
    }

    #[test]
    fn nesting_inside_interpolations_and_after_slashes_is_counted() {
        // 100,000 levels where the old pre-scan did not look: a string's `${…}`, and after a `/`
        // that is not a regex. Both must be a `rules::too_deep` diagnostic, not a deep recursion.
        let deep =
            |open: &str, close: &str| format!("{}{}", open.repeat(100_000), close.repeat(100_000));
        for text in [
            format!(
                "target t {{ post \"http://x/${{$.a{}}}\" }}",
                deep("[", "]")
            ),
            format!(
                "rule \"r\" {{ from a when $.a[?(@.b / 2 {} )] exists }}",
                deep("(", ")")
            ),
            format!(
                "rule \"r\" {{ from a notify t {{\"k\": \"${{header(\"h\")}} ${{$.a[?{}]}}\"}} }}",
                deep("(", ")")
            ),
        ] {
            let err = parse(FileId::default(), &text).expect_err("too deep");
            assert!(
                err.iter()
                    .any(|d| matches!(d.kind, DiagnosticKind::TooDeep { .. })),
                "{:?}",
                err.iter().next()
            );
        }
        // What is not nesting stays fine: brackets inside a regex, or inside a quoted JSONPath name.
        for text in [
            format!(
                "rule \"r\" {{ from a when $.m matches /{}/ }}",
                "[(".repeat(200)
            ),
            format!(
                "rule \"r\" {{ from a when $['{}'] exists }}",
                "[".repeat(200)
            ),
        ] {
            assert_eq!(too_deep(&text), None, "{text}");
        }
    }

    fn parse_ok(text: &str) -> Ast {
        match parse(FileId::default(), text) {
            Ok(ast) => ast,
            Err(d) => panic!(
                "{text:?}: {:?}",
                d.iter().map(|d| d.kind.to_string()).collect::<Vec<_>>()
            ),
        }
    }

    /// The first syntax error's message.
    fn parse_err(text: &str) -> String {
        match parse(FileId::default(), text) {
            Ok(_) => panic!("{text:?} parsed"),
            Err(d) => d.iter().next().unwrap().kind.to_string(),
        }
    }

    /// Every syntax error's message, in order, with its help line if any.
    fn parse_errs(text: &str) -> Vec<String> {
        match parse(FileId::default(), text) {
            Ok(_) => panic!("{text:?} parsed"),
            Err(d) => d
                .iter()
                .map(|d| match d.kind.help() {
                    Some(help) => format!("{} ({help})", d.kind),
                    None => d.kind.to_string(),
                })
                .collect(),
        }
    }

    /// The `when` expression of the only rule, as a compact tree.
    fn when(expr: &str) -> String {
        let ast = parse_ok(&format!("rule \"r\" {{ from s when {expr} }}"));
        let Some(Item::Rule(rule)) = ast.items.first() else {
            panic!("no rule")
        };
        let Some(RuleItemKind::When(e)) = rule.items.iter().map(|i| &i.kind).nth(1) else {
            panic!("no when")
        };
        show(e)
    }

    fn show(e: &Expr) -> String {
        match e {
            Expr::Or(items) => format!(
                "or({})",
                items.iter().map(show).collect::<Vec<_>>().join(", ")
            ),
            Expr::And(items) => format!(
                "and({})",
                items.iter().map(show).collect::<Vec<_>>().join(", ")
            ),
            Expr::Not(inner) => format!("not({})", show(inner)),
            Expr::Predicate(p) => match &p.subject.kind {
                ValueKind::Path(path) => path.clone(),
                other => format!("{other:?}"),
            },
        }
    }

    #[test]
    fn precedence_is_or_then_and_then_not() {
        assert_eq!(
            when("$.a == 1 or $.b == 1 and $.c == 1"),
            "or($.a, and($.b, $.c))"
        );
        assert_eq!(when("not $.a == 1 and $.b == 1"), "and(not($.a), $.b)");
        assert_eq!(when("not ($.a == 1 or $.b == 1)"), "not(or($.a, $.b))");
        assert_eq!(when("not not $.a exists"), "$.a");
        assert_eq!(when("($.a == 1)"), "$.a");
    }

    #[test]
    fn keywords_need_a_word_boundary() {
        // `only` is not `on` + `ly`, `andy` is not `and`, `notify` is not `not`.
        parse_ok("rule \"r\" { from only on \"push\" }");
        assert_eq!(when("$.a == 1 and $.andy exists"), "and($.a, $.andy)");
        let ast = parse_ok("rule \"r\" { from s notify t }");
        let Some(Item::Rule(rule)) = ast.items.first() else {
            panic!()
        };
        assert!(matches!(rule.items[1].kind, RuleItemKind::Notify { .. }));
        // Names may contain `-` and digits.
        parse_ok("secret gh-next_2 = env(\"X\")");
    }

    #[test]
    fn jsonpath_extents() {
        assert_eq!(
            when("$.commits[?@.message == 'fix ]'].id exists"),
            "$.commits[?@.message == 'fix ]'].id"
        );
        assert_eq!(when("$..name == \"x\""), "$..name");
        assert_eq!(when("$['a b'][0] == 1"), "$['a b'][0]");
        assert_eq!(
            when("$.a[?(@.b && (@.c || @.d))] exists"),
            "$.a[?(@.b && (@.c || @.d))]"
        );
        assert_eq!(when("$.日本 exists"), "$.日本");
        assert_eq!(when("$ exists"), "$");
    }

    #[test]
    fn strings_unescape_and_split_interpolations() {
        let ast = parse_ok(r#"include "a\"b\\c\u00e9\$ ${$.x} ${header("X-Y")} ${secret.k}""#);
        let Some(Item::Include(s)) = ast.items.first() else {
            panic!()
        };
        assert_eq!(s.text(), "a\"b\\cé$   ");
        let kinds: Vec<String> = s
            .interps()
            .map(|i| match &i.kind {
                InterpKind::Path(p) => p.clone(),
                InterpKind::Header(h) => format!("header {}", h.text()),
                InterpKind::Secret(w) => format!("secret {}", w.text),
                other => format!("{other:?}"),
            })
            .collect();
        assert_eq!(kinds, ["$.x", "header X-Y", "secret k"]);
    }

    #[test]
    fn regex_literals_take_escaped_slashes_and_flags() {
        let ast =
            parse_ok(r#"rule "r" { from s when $.ref matches /^refs\/heads\/(main|dev)$/iU }"#);
        let Some(Item::Rule(rule)) = ast.items.first() else {
            panic!()
        };
        let RuleItemKind::When(Expr::Predicate(p)) = &rule.items[1].kind else {
            panic!()
        };
        let Op::Matches(re) = &p.op else { panic!() };
        assert_eq!(re.pattern, "^refs/heads/(main|dev)$");
        assert_eq!(re.flags.text, "iU");
    }

    #[test]
    fn comments_semicolons_and_newlines_are_all_white_space() {
        parse_ok("# only a comment");
        parse_ok("");
        parse_ok("source s: github { secret a; path \"/x\"; } # trailing\n\n\n");
        parse_ok("rule \"r\" {\n  from s # who\n  when $.a == \"#not a comment\"\n}");
    }

    #[test]
    fn syntax_errors_name_what_was_expected() {
        assert_eq!(
            parse_err("source s github {}"),
            "expected `:`, found `github`"
        );
        assert_eq!(
            parse_err("rule \"r\" { from s when $.a = 1 }"),
            "expected `contains`, `ends with`, `exists`, `in`, `matches`, `starts with` or a comparison such as `==`, found `=`"
        );
        assert_eq!(
            parse_err("secret a = env(\"A)"),
            "expected `\"` to close the string, found end of file"
        );
        assert_eq!(
            parse_err("rule \"r\" { from s when $.a matches /x"),
            "expected `/` to close the regular expression, found end of file"
        );
        assert!(
            parse_err("rule \"r\" { from s }}").starts_with("expected `include`, `rule`, `secret`")
        );
    }

    #[test]
    fn misspelt_keywords_get_a_suggestion() {
        let rules = |body: &str| format!("rule \"r\" {{\n  from s\n  {body}\n}}");
        for (body, keyword) in [
            ("notfy t", "notify"),
            ("form s", "from"),
            ("wehn $.a exists", "when"),
            ("qeue check t", "queue"),
            ("queue chek t", "check"),
            ("forward t sign wth k", "with"),
            ("when $.a == 1 adn $.b == 2", "and"),
            ("when $.a strats with \"x\"", "starts with"),
            ("when $.a startswith \"x\"", "starts with"),
            ("when $.a contians \"x\"", "contains"),
            ("notifyy t", "notify"),
            ("Notify t", "notify"),
        ] {
            let word = body
                .split(' ')
                .find(|w| !KEYWORDS_IN_CASES.contains(w))
                .unwrap();
            assert_eq!(
                parse_errs(&rules(body)),
                [format!(
                    "`{word}` is not a keyword here (did you mean `{keyword}`?)"
                )],
                "{body}"
            );
        }
        assert_eq!(
            parse_errs("target t { post \"http://x\" retry 3 backof 1s..5m }"),
            ["`backof` is not a keyword here (did you mean `backoff`?)"]
        );
        assert_eq!(
            parse_errs("soruce s: github {}"),
            ["`soruce` is not a keyword here (did you mean `source`?)"]
        );
        assert_eq!(
            parse_errs("target t { pots \"http://x\" }"),
            ["`pots` is not a keyword here (did you mean `post`?)"]
        );
        assert_eq!(
            parse_errs("source s: github { event \"push\" }"),
            ["`event` is not a keyword here (did you mean `events`?)"]
        );
        // Nothing close: the list of what fits.
        let bogus = parse_err(&rules("bogus t"));
        assert!(
            bogus.starts_with("expected `,`, `;`, `forward`, `from`"),
            "{bogus}"
        );
        // Too short to guess.
        assert!(parse_err(&rules("nt t")).starts_with("expected "));
    }

    /// The words of the cases above that are spelt right.
    const KEYWORDS_IN_CASES: &[&str] = &[
        "t", "s", "$.a", "exists", "check", "queue", "forward", "sign", "k", "when", "==", "1",
        "2", "$.b", "with", "\"x\"",
    ];

    #[test]
    fn every_broken_declaration_is_reported() {
        let text = "secret a = env(\"A\")\n\
                    source s github { secret a }\n\
                    target t { post \"http://x\" timeout }\n\
                    target u { post \"http://x\" }\n\
                    rule \"r\" { from s notfy t }\n\
                    include 3\n";
        assert_eq!(
            parse_errs(text),
            [
                "expected `:`, found `github`",
                "expected a duration, found `}`",
                "`notfy` is not a keyword here (did you mean `notify`?)",
                "expected a string, found `3`",
            ]
        );
        // Garbage between declarations is one error, and the declaration after it is read.
        assert_eq!(
            parse_errs("secret a = env(\"A\")\n%%% ???\n!!\nsecret b env(\"B\")\n").len(),
            2
        );
    }

    #[test]
    fn recovery_skips_brackets_in_strings_regexes_and_comments() {
        // Each broken rule holds unbalanced brackets in text; the next declaration is still found at
        // bracket depth 0, and the `source s` item of the test block is not taken for a declaration.
        let text = "rule \"{[(\" { from s when $.a matches /\\{[(/ and $.b == \"}}\" # {{\n  notfy t\n}\n\
                    rule \"b\" { from s when $['}}'] == 1 notfy t }\n\
                    test \"t\" {\n  source s\n  payload {} expect matched [\"b\"] oops\n}\n\
                    target t { post \"http://x\" retry }\n";
        let errors = parse_errs(text);
        assert_eq!(errors.len(), 4, "{errors:?}");
        assert!(errors[2].starts_with("expected "), "{errors:?}");
        assert!(
            errors[3].starts_with("expected a whole number"),
            "{errors:?}"
        );
    }

    #[test]
    fn recovery_after_an_unclosed_block() {
        // The `}` is missing: the next declaration is found in column 0 by its shape.
        let text = "rule \"r\" {\n  from s\n  when payload contains {\"a\": 1\n  notify t\n\
                    source s: github { secret a b }\n\
                    secret a = env(A)\n";
        assert_eq!(
            parse_errs(text),
            [
                "expected `,` or `}`, found `notify`",
                "expected `,`, `;`, `algorithm`, `encoding`, `events`, `header`, `insecure`, `max_body`, `path`, `prefix`, `rate`, `secret`, `token`, `tolerance` or `}`, found `b`",
                "expected a string, found `A`",
            ]
        );
        // Indented, inside the open block, the same line is an item, not a declaration.
        let text = "source s: github {\n  secret a = env(\"A\")\n  path \"/x\"\n}\n";
        assert_eq!(parse_errs(text).len(), 1);
    }

    #[test]
    fn trailing_commas_in_json_are_errors() {
        let rule = |json: &str| format!("rule \"r\" {{ from s notify t {json} }}");
        for json in [
            r#"{"ref": "x",}"#,
            "[1, 2,]",
            r#"{"a": [1,], "b": {"c": 1,},}"#,
        ] {
            let errors = parse_errs(&rule(json));
            assert!(!errors.is_empty(), "{json}");
            for e in errors {
                assert_eq!(
                    e,
                    "trailing comma in a JSON literal (remove the trailing comma: JSON does not allow it)"
                );
            }
        }
        let Err(d) = parse(FileId::default(), &rule(r#"{"a": [1,], "b": 2,}"#)) else {
            panic!()
        };
        let at: Vec<u32> = d.iter().map(|d| d.span.start).collect();
        let text = rule(r#"{"a": [1,], "b": 2,}"#);
        assert_eq!(at.len(), 2);
        for (start, d) in at.iter().zip(d.iter()) {
            assert_eq!(&text[*start as usize..d.span.end as usize], ",");
        }
        // Alongside a syntax error elsewhere, in the declarations before and after it.
        let text = format!(
            "{}\nrule \"x\" {{ from }}\n{}\n",
            rule("[1,]"),
            rule("[2,]")
        );
        assert_eq!(parse_errs(&text).len(), 3);
        // A comma between elements is fine, and so are empty literals.
        parse_ok(&rule(r#"{"a": [1, 2], "b": {}, "c": []}"#));
    }

    #[test]
    fn recovery_windows_do_not_change_what_is_reported() {
        // After the first error, text is parsed in windows; declarations longer than a window, over
        // many lines, must read as they do whole.
        let long_when = format!(
            "rule \"long\" {{\n  from s\n  when $.a == 1{}\n  notify t {{\n{}  \"z\": 1\n  }}\n}}\n",
            "\n    and $.a == 1".repeat(RECOVERY_WINDOW / 10),
            "    \"k\": [1, 2],\n".repeat(RECOVERY_WINDOW / 10)
        );
        let text = format!(
            "rule \"a\" {{ from s notfy t }}\n{long_when}rule \"b\" {{ form s }}\n{long_when}"
        );
        let errors = parse_errs(&text);
        assert_eq!(
            errors,
            [
                "`notfy` is not a keyword here (did you mean `notify`?)",
                "`form` is not a keyword here (did you mean `from`?)",
            ]
        );
        let Err(d) = parse(FileId::default(), &text) else {
            panic!()
        };
        let second = d.iter().nth(1).unwrap();
        assert_eq!(
            &text[second.span.start as usize..second.span.end as usize],
            "form"
        );
        // The same, broken at the very end of the long declaration.
        let text = format!(
            "rule \"a\" {{ from s notfy t }}\n{}",
            long_when.replace("\"z\": 1", "\"z\": 1,")
        );
        assert_eq!(
            parse_errs(&text)[1],
            "trailing comma in a JSON literal (remove the trailing comma: JSON does not allow it)"
        );
    }

    #[test]
    fn recovery_stops_after_the_limit() {
        let text = "rule x\n".repeat(MAX_SYNTAX_ERRORS * 3);
        assert_eq!(parse_errs(&text).len(), MAX_SYNTAX_ERRORS);
        let commas = "rule \"r\" { from s notify t [1,] }\n".repeat(MAX_SYNTAX_ERRORS * 3);
        let errors = parse_errs(&format!("{commas}rule x\n"));
        assert_eq!(errors.len(), MAX_SYNTAX_ERRORS);
        assert!(errors.iter().all(|e| e.starts_with("trailing comma")));
    }

    #[test]
    fn depth_limit_counts_brackets_outside_strings_and_comments() {
        let deep = format!(
            "rule \"r\" {{ from s when $.a == {} }}",
            "[".repeat(MAX_DEPTH + 1)
        );
        assert_eq!(
            parse_err(&deep),
            format!("nesting is deeper than {MAX_DEPTH} levels")
        );
        let brackets_in_text = format!(
            "# {}\nrule \"{}\" {{ from s }}",
            "(".repeat(200),
            "[".repeat(200)
        );
        parse_ok(&brackets_in_text);
    }
}
