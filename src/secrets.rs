//! Secret values from the environment and from files: the resolver `serve` uses.

use crate::compile::{SecretRef, Secrets};
use crate::ruleset::SecretValue;

/// Reads `env("VAR")` from the process environment and `file("/path")` from disk.
///
/// A trailing newline is stripped from file secrets (`kubectl create secret --from-file` keeps the one
/// editors add); every other byte is kept. An empty value is refused: an empty HMAC key or token
/// would verify requests signed with an empty key.
pub struct EnvSecrets {
    /// When set, unavailable secrets become placeholders instead of errors (`gateway urls`).
    pub lenient: bool,
}

impl Secrets for EnvSecrets {
    fn load(&self, name: &str, from: SecretRef<'_>) -> Result<SecretValue, String> {
        let loaded = match from {
            SecretRef::Env(var) => match std::env::var_os(var) {
                None => Err(format!("environment variable `{var}` is not set")),
                Some(v) => Ok(v.into_encoded_bytes()),
            },
            SecretRef::File(path) => std::fs::read(path)
                .map(|mut bytes| {
                    if bytes.ends_with(b"\n") {
                        bytes.pop();
                        if bytes.ends_with(b"\r") {
                            bytes.pop();
                        }
                    }
                    bytes
                })
                .map_err(|e| {
                    format!(
                        "cannot read `{}`: {}",
                        path.display(),
                        crate::load::io_reason(&e)
                    )
                }),
        };
        let checked = loaded.and_then(|bytes| {
            if bytes.is_empty() {
                Err("the value is empty".to_string())
            } else {
                Ok(SecretValue::new(name, bytes))
            }
        });
        match checked {
            Err(_) if self.lenient => Ok(SecretValue::placeholder(name)),
            other => other,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    #[test]
    fn file_secrets_lose_one_trailing_newline() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("token");
        std::fs::write(&path, "s3cret\n\n").unwrap();
        let secrets = EnvSecrets { lenient: false };
        let value = secrets.load("t", SecretRef::File(&path)).unwrap();
        assert_eq!(value.expose(), b"s3cret\n");
    }

    #[test]
    fn missing_and_empty_secrets_are_errors_that_name_no_value() {
        let secrets = EnvSecrets { lenient: false };
        let err = secrets
            .load("t", SecretRef::File(Path::new("/nonexistent/hookgate")))
            .unwrap_err();
        assert!(err.contains("/nonexistent/hookgate"), "{err}");
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("empty");
        std::fs::write(&path, "\n").unwrap();
        assert_eq!(
            secrets.load("t", SecretRef::File(&path)).unwrap_err(),
            "the value is empty"
        );
        let lenient = EnvSecrets { lenient: true };
        assert!(
            lenient
                .load("t", SecretRef::File(&path))
                .unwrap()
                .is_placeholder()
        );
    }
}
