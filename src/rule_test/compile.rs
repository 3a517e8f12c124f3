//! `test "NAME" { ... }` blocks → [`RuleTest`]: every name checked, payload paths resolved against
//! the test's file. A pass of `compile`, which calls it after the rules.

use crate::compile::{Cx, Options, suggest};
use crate::diagnostic::{DiagnosticKind, NameKind};
use crate::rule_test::{ExpectedAction, ExpectedBody, ExpectedKind, RuleTest, TestPayload};
use crate::source::FileId;
use crate::syntax::{BodyMatch, TestDecl, TestItemKind, ValueKind, Word};

impl Cx<'_> {
    /// Compiles one test block of file `file`.
    pub(crate) fn test(&mut self, file: FileId, decl: &TestDecl) -> Option<RuleTest> {
        compile_test(self, file, decl)
    }
}

fn compile_test(cx: &mut Cx<'_>, file: FileId, decl: &TestDecl) -> Option<RuleTest> {
    let name = cx.plain(&decl.name, "test names");
    cx.tests.declare(&name, decl.name.span, &mut cx.diags);
    let mut ok = true;
    let mut given = Options::default();
    let mut source = None;
    let mut event = None;
    let mut headers = Vec::new();
    let mut headers_file = None;
    let mut query = Vec::new();
    let mut payload = None;
    let mut expect_matched = None;
    let mut expect_actions: Option<Vec<ExpectedAction>> = None;
    for item in &decl.items {
        let once = match &item.kind {
            TestItemKind::Source(_) => Some("source"),
            TestItemKind::Event(_) => Some("event"),
            TestItemKind::HeadersFile(_) => Some("headers"),
            TestItemKind::Payload(_) | TestItemKind::PayloadFile(_) => Some("payload"),
            TestItemKind::ExpectMatched(_) => Some("expect matched"),
            _ => None,
        };
        if let Some(option) = once
            && !cx.once(&mut given, option, item.span)
        {
            ok = false;
            continue;
        }
        match &item.kind {
            TestItemKind::Source(word) => {
                // A test does not make a source "used": only rules do.
                source = lookup(cx, word, NameKind::Source);
                ok &= source.is_some();
            }
            TestItemKind::Event(s) => event = Some(cx.plain(s, "tests")),
            TestItemKind::Header { name, value } => {
                headers.push((cx.plain(name, "tests"), cx.plain(value, "tests")))
            }
            TestItemKind::Query { name, value } => {
                query.push((cx.plain(name, "tests"), cx.plain(value, "tests")))
            }
            TestItemKind::HeadersFile(s) => {
                let rel = cx.plain(s, "tests");
                headers_file = Some(cx.files.get(file).base_dir().join(rel));
            }
            TestItemKind::PayloadFile(s) => {
                let rel = cx.plain(s, "tests");
                payload = Some(TestPayload::File(cx.files.get(file).base_dir().join(rel)));
            }
            TestItemKind::Payload(v) => match cx.literal(v, "tests") {
                Some(j) => payload = Some(TestPayload::Inline(j)),
                None => ok = false,
            },
            TestItemKind::ExpectMatched(array) => {
                let ValueKind::Array(items) = &array.kind else {
                    unreachable!("grammar takes an array after `expect matched`")
                };
                let mut names = Vec::new();
                for item in items {
                    let rule = match &item.kind {
                        ValueKind::String(s) => Some((cx.plain(s, "tests"), s.span)),
                        _ => {
                            cx.invalid_operand(
                                item.span,
                                "rule names are strings".into(),
                                "quote the rule's name",
                            );
                            None
                        }
                    };
                    match rule {
                        Some((rule, _)) if cx.rules.get(&rule).is_some() => names.push(rule),
                        Some((rule, span)) => {
                            let suggestion =
                                suggest(&rule, cx.rules.names.iter().map(String::as_str));
                            cx.error(
                                DiagnosticKind::UnknownName {
                                    kind: NameKind::Rule,
                                    name: rule,
                                    suggestion,
                                },
                                span,
                            );
                            ok = false;
                        }
                        None => ok = false,
                    }
                }
                expect_matched = Some(names);
            }
            TestItemKind::ExpectNotify { target, body } => {
                let body = match body {
                    Some((how, v)) => match cx.literal(v, "tests") {
                        Some(j) => Some(match how {
                            BodyMatch::Equals => ExpectedBody::Equals(j),
                            BodyMatch::Contains => ExpectedBody::Contains(j),
                        }),
                        None => {
                            ok = false;
                            None
                        }
                    },
                    None => None,
                };
                ok &= expect(
                    cx,
                    &mut expect_actions,
                    ExpectedKind::Notify,
                    target,
                    body,
                    None,
                );
            }
            TestItemKind::ExpectCheck { target, key } => {
                let key = key.as_ref().map(|k| cx.plain(k, "tests"));
                ok &= expect(
                    cx,
                    &mut expect_actions,
                    ExpectedKind::Check,
                    target,
                    None,
                    key,
                );
            }
            TestItemKind::ExpectForward { target } => {
                ok &= expect(
                    cx,
                    &mut expect_actions,
                    ExpectedKind::Forward,
                    target,
                    None,
                    None,
                );
            }
        }
    }
    if source.is_none() && given.get("source").is_none() {
        cx.error(
            DiagnosticKind::IncompleteTest { missing: "source" },
            decl.name.span,
        );
        ok = false;
    }
    if payload.is_none() && given.get("payload").is_none() {
        cx.error(
            DiagnosticKind::IncompleteTest { missing: "payload" },
            decl.name.span,
        );
        ok = false;
    }
    if expect_matched.is_none() && expect_actions.is_none() {
        cx.error(
            DiagnosticKind::IncompleteTest { missing: "expect" },
            decl.name.span,
        );
        ok = false;
    }
    if !ok {
        return None;
    }
    Some(RuleTest {
        name,
        span: decl.span,
        source: source?,
        event,
        headers,
        headers_file,
        query,
        payload: payload?,
        expect_matched,
        expect_actions,
    })
}

/// Looks a name up without marking it used.
fn lookup(cx: &mut Cx<'_>, word: &Word, kind: NameKind) -> Option<usize> {
    let names = match kind {
        NameKind::Source => &cx.sources,
        _ => &cx.targets,
    };
    if let Some(id) = names.get(&word.text) {
        return Some(id);
    }
    let suggestion = suggest(&word.text, names.names.iter().map(String::as_str));
    cx.error(
        DiagnosticKind::UnknownName {
            kind,
            name: word.text.clone(),
            suggestion,
        },
        word.span,
    );
    None
}

fn expect(
    cx: &mut Cx<'_>,
    list: &mut Option<Vec<ExpectedAction>>,
    kind: ExpectedKind,
    target: &Word,
    body: Option<ExpectedBody>,
    key: Option<String>,
) -> bool {
    let Some(target) = lookup(cx, target, NameKind::Target) else {
        return false;
    };
    list.get_or_insert_with(Vec::new).push(ExpectedAction {
        kind,
        target,
        body,
        key,
    });
    true
}
