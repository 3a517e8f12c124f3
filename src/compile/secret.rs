//! `secret NAME = env("VAR")` / `file("/path")` → the secret's value, through the [`Secrets`] loader.

use std::path::Path;

use crate::compile::{Cx, SecretRef};
use crate::diagnostic::DiagnosticKind;
use crate::ruleset::SecretValue;
use crate::syntax::{SecretDecl, SecretFrom, Word};

impl Cx<'_> {
    /// Checks where a secret comes from and loads it; `None` when it cannot be had (reported).
    pub(super) fn secret(&mut self, decl: &SecretDecl) -> Option<SecretValue> {
        let (from, span, path);
        match &decl.from {
            SecretFrom::Env(s) => {
                let var = self.plain(s, "secret references");
                let valid = var
                    .chars()
                    .next()
                    .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
                    && var.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
                if !valid {
                    self.error(
                        DiagnosticKind::InvalidSecretRef {
                            message: format!("`{var}` is not an environment variable name"),
                            help: "variable names are letters, digits and `_`, not starting with a digit",
                        },
                        s.span,
                    );
                    return None;
                }
                span = s.span;
                path = var;
                from = SecretRef::Env(&path);
            }
            SecretFrom::File(s) => {
                let file = self.plain(s, "secret references");
                if file.is_empty() {
                    self.error(
                        DiagnosticKind::InvalidSecretRef {
                            message: "secret file path is empty".into(),
                            help: "name the file a Kubernetes Secret is mounted at, e.g. `/etc/gateway/secrets/token`",
                        },
                        s.span,
                    );
                    return None;
                }
                span = s.span;
                path = file;
                from = SecretRef::File(Path::new(&path));
            }
        }
        match self.loader.load(&decl.name.text, from) {
            Ok(value) => Some(value),
            Err(reason) => {
                self.error(
                    DiagnosticKind::SecretUnavailable {
                        name: decl.name.text.clone(),
                        reason,
                    },
                    span,
                );
                None
            }
        }
    }

    /// Resolves a secret name used somewhere, marking it used.
    pub(super) fn secret_ref(&mut self, word: &Word) -> Option<SecretValue> {
        let id = self
            .secrets
            .resolve(&word.text, word.span, &mut self.diags)?;
        self.secret_values[id].clone()
    }
}
