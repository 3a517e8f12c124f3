//! Text → [`Ast`]. The only module that knows about pest.
//!
//! `parse` guards pest against input it handles badly (deep nesting), runs the grammar in
//! `grammar/rules.pest`, converts a pest error into one `rules::syntax` diagnostic with a span and an
//! "expected ..." list in user terms, and lowers the parse tree into the AST.

mod ast;
mod grammar;
mod lower;

pub(crate) use ast::*;

use pest::Parser;
use pest::error::{ErrorVariant, InputLocation};

use crate::diagnostic::{Diagnostic, DiagnosticKind};
use crate::source::{FileId, Span};
use grammar::{Grammar, Rule};

/// The deepest nesting of brackets accepted. Real rules need a handful; the limit keeps every
/// recursive stage (parser, lowering, compiling, evaluating) far from the end of its stack.
pub(crate) const MAX_DEPTH: usize = 64;

/// Parses one file's text.
pub(crate) fn parse(file: FileId, text: &str) -> Result<Ast, Box<Diagnostic>> {
    if let Some(offset) = too_deep(text) {
        let span = Span::new(file, offset, offset + 1);
        return Err(Box::new(Diagnostic::new(
            DiagnosticKind::TooDeep { limit: MAX_DEPTH },
            span,
        )));
    }
    match Grammar::parse(Rule::file, text) {
        Ok(mut pairs) => {
            let file_pair = pairs
                .next()
                .unwrap_or_else(|| unreachable!("`file` always yields one pair"));
            Ok(lower::file(file, file_pair))
        }
        Err(_) => Err(Box::new(syntax_error(file, text))),
    }
}

/// Parses again with pest's error detail on (slower, so only after a failure) and describes the
/// failure in user terms.
fn syntax_error(file: FileId, text: &str) -> Diagnostic {
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
    Diagnostic::new(
        DiagnosticKind::Syntax {
            expected: join_alternatives(&expected),
            found: found.text,
        },
        Span::new(file, failure.pos, end),
    )
}

/// Where parsing failed and what would have been accepted there.
struct Failure {
    pos: usize,
    expected: Vec<String>,
    in_regex: bool,
}

fn analyse(text: &str) -> Failure {
    pest::set_error_detail(true);
    let result = Grammar::parse(Rule::file, text);
    pest::set_error_detail(false);
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

/// Finds where bracket nesting first exceeds [`MAX_DEPTH`], skipping comments, strings and regexes.
fn too_deep(text: &str) -> Option<usize> {
    let bytes = text.as_bytes();
    let mut depth = 0usize;
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'#' => i = skip_until(bytes, i + 1, b'\n'),
            quote @ (b'"' | b'\'' | b'/') => i = skip_quoted(bytes, i + 1, quote),
            b'(' | b'[' | b'{' => {
                depth += 1;
                if depth > MAX_DEPTH {
                    return Some(i);
                }
            }
            b')' | b']' | b'}' => depth = depth.saturating_sub(1),
            _ => {}
        }
        i += 1;
    }
    None
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
        if bytes[i] == b'\\' {
            i += 1;
        }
        i += 1;
    }
    i
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse_ok(text: &str) -> Ast {
        match parse(FileId::default(), text) {
            Ok(ast) => ast,
            Err(d) => panic!("{text:?}: {}", d.kind),
        }
    }

    fn parse_err(text: &str) -> String {
        match parse(FileId::default(), text) {
            Ok(_) => panic!("{text:?} parsed"),
            Err(d) => d.kind.to_string(),
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
