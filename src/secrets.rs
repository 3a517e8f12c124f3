//! Secret values from the environment and from files: the resolver `serve` uses.

use crate::compile::{SecretRef, Secrets};
use crate::ruleset::SecretValue;

/// The largest secret file read: keys and tokens are bytes to a few KiB; a larger file is a mistake.
pub const MAX_SECRET_BYTES: usize = 64 << 10;

/// Reads `env("VAR")` from the process environment and `file("/path")` from disk.
///
/// A trailing newline is stripped from file secrets (`kubectl create secret --from-file` keeps the one
/// editors add); every other byte is kept. An empty or white-space-only value is refused: an empty HMAC
/// key or token would verify requests signed with an empty key. A secret file must be a regular file
/// of at most [`MAX_SECRET_BYTES`] (a FIFO is refused without being opened for reading).
///
/// INVARIANT: no error message contains any byte of a value, only the variable's name or the path.
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
            SecretRef::File(path) => match crate::fs::read_regular(path, MAX_SECRET_BYTES as u64) {
                Err(e) => Err(format!(
                    "cannot read `{}`: {}",
                    path.display(),
                    crate::fs::io_reason(&e)
                )),
                Ok(bytes) if bytes.len() > MAX_SECRET_BYTES => Err(format!(
                    "`{}` is larger than {} KiB",
                    path.display(),
                    MAX_SECRET_BYTES >> 10
                )),
                Ok(mut bytes) => {
                    if bytes.ends_with(b"\n") {
                        bytes.pop();
                        if bytes.ends_with(b"\r") {
                            bytes.pop();
                        }
                    }
                    Ok(bytes)
                }
            },
        };
        let checked = loaded.and_then(|bytes| {
            if bytes.is_empty() {
                Err("the value is empty".to_string())
            } else if bytes.iter().all(u8::is_ascii_whitespace) {
                Err("the value is only white space".to_string())
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
    fn secret_files_are_bounded_regular_files_and_errors_quote_no_content() {
        let dir = tempfile::tempdir().unwrap();
        let secrets = EnvSecrets { lenient: false };
        let big = dir.path().join("big");
        let content = "k".repeat(MAX_SECRET_BYTES) + "SECRETTAIL";
        std::fs::write(&big, &content).unwrap();
        let err = secrets.load("t", SecretRef::File(&big)).unwrap_err();
        assert_eq!(err, format!("`{}` is larger than 64 KiB", big.display()));
        std::fs::write(&big, &content[..MAX_SECRET_BYTES]).unwrap();
        assert!(
            secrets.load("t", SecretRef::File(&big)).is_ok(),
            "64 KiB exactly is fine"
        );

        let fifo = dir.path().join("fifo");
        let status = std::process::Command::new("mkfifo")
            .arg(&fifo)
            .status()
            .unwrap();
        assert!(status.success());
        let err = secrets.load("t", SecretRef::File(&fifo)).unwrap_err();
        assert!(err.ends_with("not a regular file (a named pipe)"), "{err}");
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
        std::fs::write(&path, " \t\r\n\n").unwrap();
        assert_eq!(
            secrets.load("t", SecretRef::File(&path)).unwrap_err(),
            "the value is only white space"
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
