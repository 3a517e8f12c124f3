//! Rule unit tests: the `test "NAME" { ... }` blocks of a rules file, each a recorded delivery and
//! what should come of it.
//!
//! - here: [`RuleTest`], a test block as compiled;
//! - `compile.rs`: the `compile` pass that builds them and checks every name they use;
//! - `run.rs`: [`run`], which `gateway test` calls: evaluates each and compares the outcome.

mod compile;
mod run;

pub use run::{TestResult, event, headers, payload, run};

use std::path::PathBuf;

use serde_json::Value;

use crate::source::Span;

/// One test block.
#[derive(Debug, Clone)]
pub struct RuleTest {
    pub name: String,
    /// Where the test is written, for reports.
    pub span: Span,
    /// Index into `RuleSet::sources`.
    pub source: usize,
    pub event: Option<String>,
    pub headers: Vec<(String, String)>,
    /// `headers file(...)`: more headers, from a JSON object file, resolved like `payload file(...)`.
    pub headers_file: Option<PathBuf>,
    pub query: Vec<(String, String)>,
    pub payload: TestPayload,
    /// Exactly these rules must match, in any order.
    pub expect_matched: Option<Vec<String>>,
    /// When any `expect notify/check/forward` is written: exactly these actions must run.
    pub expect_actions: Option<Vec<ExpectedAction>>,
}

#[derive(Debug, Clone)]
pub enum TestPayload {
    Inline(Value),
    /// Resolved against the directory of the file the test is in.
    File(PathBuf),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExpectedKind {
    Notify,
    Check,
    Forward,
}

#[derive(Debug, Clone)]
pub struct ExpectedAction {
    pub kind: ExpectedKind,
    /// Index into `RuleSet::targets`.
    pub target: usize,
    pub body: Option<ExpectedBody>,
    pub key: Option<String>,
}

#[derive(Debug, Clone)]
pub enum ExpectedBody {
    Equals(Value),
    Contains(Value),
}
