//! Compiled actions and the templates they render.

use std::fmt::{self, Display};

use crate::ruleset::{Operand, RuleSet, SecretValue};

/// A piece of a string template.
#[derive(Debug, Clone, PartialEq)]
pub enum StrPiece {
    Text(String),
    Operand(Operand),
    /// Only in target URLs and headers, never in bodies (bodies are stored).
    Secret(SecretValue),
}

/// A string with `${...}` interpolations.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct StrTemplate {
    pub(crate) pieces: Vec<StrPiece>,
}

impl StrTemplate {
    pub fn literal(text: impl Into<String>) -> StrTemplate {
        StrTemplate {
            pieces: vec![StrPiece::Text(text.into())],
        }
    }

    /// The text with secrets filled in and each operand's value from `operand` (borrowed, or made
    /// for the purpose, e.g. percent-encoded); `None` as soon as `operand` has none for one.
    pub(crate) fn render_with<'a>(
        &self,
        mut operand: impl FnMut(&Operand) -> Option<std::borrow::Cow<'a, str>>,
    ) -> Option<String> {
        let mut out = String::new();
        for piece in &self.pieces {
            match piece {
                StrPiece::Text(t) => out.push_str(t),
                StrPiece::Secret(s) => out.push_str(&String::from_utf8_lossy(s.expose())),
                StrPiece::Operand(o) => out.push_str(&operand(o)?),
            }
        }
        Some(out)
    }

    /// The text when there is nothing to interpolate.
    pub fn as_literal(&self) -> Option<&str> {
        match self.pieces.as_slice() {
            [] => Some(""),
            [StrPiece::Text(t)] => Some(t),
            _ => None,
        }
    }
}

impl Display for StrTemplate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("\"")?;
        for piece in &self.pieces {
            match piece {
                StrPiece::Text(t) => {
                    let quoted = format!("{t:?}");
                    f.write_str(&quoted[1..quoted.len() - 1].replace("${", "\\${"))?;
                }
                StrPiece::Operand(o) => write!(f, "${{{o}}}")?,
                StrPiece::Secret(s) => write!(f, "${{secret.{}}}", s.name())?,
            }
        }
        f.write_str("\"")
    }
}

/// A JSON body template: JSON whose values may read the request.
#[derive(Debug, Clone, PartialEq)]
pub enum Template {
    /// A literal or a read of the request (`$.repository.ssh_url`, `event`, ...).
    Operand(Operand),
    String(StrTemplate),
    Object(Vec<(String, Template)>),
    Array(Vec<Template>),
}

impl Display for Template {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Template::Operand(o) => write!(f, "{o}"),
            Template::String(s) => write!(f, "{s}"),
            Template::Object(members) => {
                f.write_str("{")?;
                for (i, (k, v)) in members.iter().enumerate() {
                    if i > 0 {
                        f.write_str(", ")?;
                    }
                    write!(f, "{k:?}: {v}")?;
                }
                f.write_str("}")
            }
            Template::Array(items) => {
                f.write_str("[")?;
                for (i, v) in items.iter().enumerate() {
                    if i > 0 {
                        f.write_str(", ")?;
                    }
                    write!(f, "{v}")?;
                }
                f.write_str("]")
            }
        }
    }
}

/// What a matching rule does. Targets are indices into `RuleSet::targets`.
#[derive(Debug, Clone, PartialEq)]
pub enum Action {
    /// One request per matching event; without a body the original payload is sent.
    Notify {
        target: usize,
        body: Option<Template>,
    },
    /// A coalesced check of the target, per key.
    Check {
        target: usize,
        key: Option<StrTemplate>,
    },
    /// The original body and event headers, re-signed.
    Forward {
        target: usize,
        sign_with: Option<SecretValue>,
    },
}

impl Action {
    pub fn target(&self) -> usize {
        match self {
            Action::Notify { target, .. }
            | Action::Check { target, .. }
            | Action::Forward { target, .. } => *target,
        }
    }

    pub fn kind_name(&self) -> &'static str {
        match self {
            Action::Notify { .. } => "notify",
            Action::Check { .. } => "check",
            Action::Forward { .. } => "forward",
        }
    }

    pub(crate) fn show<'a>(&'a self, set: &'a RuleSet) -> impl Display + 'a {
        ShowAction { action: self, set }
    }
}

struct ShowAction<'a> {
    action: &'a Action,
    set: &'a RuleSet,
}

impl Display for ShowAction<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let target = &self.set.targets[self.action.target()].name;
        match self.action {
            Action::Notify { body: None, .. } => write!(f, "notify {target}"),
            Action::Notify {
                body: Some(body), ..
            } => write!(f, "notify {target} {body}"),
            Action::Check { key: None, .. } => write!(f, "queue check {target}"),
            Action::Check { key: Some(key), .. } => write!(f, "queue check {target} key {key}"),
            Action::Forward {
                sign_with: None, ..
            } => write!(f, "forward {target}"),
            Action::Forward {
                sign_with: Some(s), ..
            } => write!(f, "forward {target} sign with {}", s.name()),
        }
    }
}
