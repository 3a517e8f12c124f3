//! Reading a rules set from disk: the root file and everything it `include`s, then compiling it.
//!
//! This is the IO edge in front of the pure `syntax` and `compile` stages. `gateway check`, `gateway
//! test`, `gateway serve` and hot reload all load through [`load_file`] / [`load_text`], so "lints clean"
//! means "will load".

use std::collections::HashSet;
use std::io::Read;
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use crate::compile::{self, Compiled, Secrets};
use crate::diagnostic::{Diagnostic, DiagnosticKind, Diagnostics};
use crate::source::{FileId, MAX_FILE_BYTES, SourceMap, SourceText, Span};
use crate::syntax::{self, Ast, Item};

/// The outcome of loading one rules set.
#[derive(Debug)]
pub struct Loaded {
    /// Every file read, for rendering diagnostics.
    pub files: SourceMap,
    /// The compiled set with its warnings, or every diagnostic (errors and warnings).
    pub result: Result<Compiled, Diagnostics>,
    /// Hex SHA-256 over the names and bytes of every file, in load order: equal hashes, equal rules.
    pub hash: String,
}

/// The root file could not be read at all (as opposed to an include, which is a diagnostic).
#[derive(Debug, thiserror::Error)]
#[error("cannot read `{path}`: {}", io_reason(source))]
pub struct LoadError {
    pub path: String,
    #[source]
    pub source: std::io::Error,
}

/// Loads and compiles the rules set rooted at `path`.
pub fn load_file(path: &Path, secrets: &dyn Secrets) -> Result<Loaded, LoadError> {
    let bytes = read_limited(path).map_err(|source| LoadError {
        path: path.display().to_string(),
        source,
    })?;
    Ok(load_text(
        &path.display().to_string(),
        Some(path.to_path_buf()),
        &bytes,
        secrets,
    ))
}

/// Loads and compiles a rules set given as bytes (stdin, tests); includes resolve against `path`'s
/// directory, or the working directory.
pub fn load_text(name: &str, path: Option<PathBuf>, bytes: &[u8], secrets: &dyn Secrets) -> Loaded {
    let mut loader = Loader {
        files: SourceMap::default(),
        asts: Vec::new(),
        diags: Diagnostics::default(),
        seen: HashSet::new(),
        stack: Vec::new(),
        hasher: Sha256::new(),
    };
    loader.add(name, path, bytes);
    let Loader {
        files,
        asts,
        mut diags,
        hasher,
        ..
    } = loader;
    let hash = hex::encode(hasher.finalize());
    let result = if diags.has_errors() {
        diags.sort();
        Err(diags)
    } else {
        match compile::compile(&files, &asts, secrets) {
            Ok(mut compiled) => {
                diags.extend(compiled.warnings);
                diags.sort();
                compiled.warnings = diags;
                Ok(compiled)
            }
            Err(errors) => {
                diags.extend(errors);
                diags.sort();
                Err(diags)
            }
        }
    };
    Loaded {
        files,
        result,
        hash,
    }
}

struct Loader {
    files: SourceMap,
    asts: Vec<(FileId, Ast)>,
    diags: Diagnostics,
    /// Canonical paths already loaded: a file included twice (not in a cycle) is read once.
    seen: HashSet<PathBuf>,
    /// Canonical paths of the files being loaded, outermost first, to detect cycles.
    stack: Vec<PathBuf>,
    hasher: Sha256,
}

impl Loader {
    fn add(&mut self, name: &str, path: Option<PathBuf>, bytes: &[u8]) {
        self.hasher.update(name.as_bytes());
        self.hasher.update([0]);
        self.hasher.update(bytes);
        self.hasher.update([0]);
        let (text, bad_utf8_at) = match std::str::from_utf8(bytes) {
            Ok(text) => (text.to_string(), None),
            Err(e) => (
                String::from_utf8_lossy(bytes).into_owned(),
                Some(e.valid_up_to()),
            ),
        };
        let canonical = path.as_deref().and_then(|p| p.canonicalize().ok());
        let file = self.files.add(SourceText::new(name, path, text));
        if let Some(offset) = bad_utf8_at {
            self.diags
                .error(DiagnosticKind::NotUtf8, Span::new(file, offset, offset + 1));
            return;
        }
        if bytes.len() > MAX_FILE_BYTES {
            self.diags.error(
                DiagnosticKind::InvalidValue {
                    message: format!("file is larger than {} MiB", MAX_FILE_BYTES >> 20),
                    help: Some("split the rules with `include`".into()),
                },
                Span::new(file, 0, 0),
            );
            return;
        }
        let text = self.files.get(file).text.clone();
        let ast = match syntax::parse(file, &text) {
            Ok(ast) => ast,
            Err(diagnostic) => {
                self.diags.push(*diagnostic);
                return;
            }
        };
        if let Some(c) = &canonical {
            self.seen.insert(c.clone());
            self.stack.push(c.clone());
        }
        let base = self.files.get(file).base_dir().to_path_buf();
        // Included files are named relative to the including file's name, as the user sees the tree.
        let display_dir = Path::new(name)
            .parent()
            .unwrap_or(Path::new(""))
            .to_path_buf();
        let includes: Vec<_> = ast
            .items
            .iter()
            .filter_map(|i| match i {
                Item::Include(s) => Some(s.clone()),
                _ => None,
            })
            .collect();
        self.asts.push((file, ast));
        for include in includes {
            for interp in include.interps() {
                self.diags.error(
                    DiagnosticKind::InterpolationNotAllowed {
                        context: "include paths",
                        help: "write `\\${` for a literal `${`",
                    },
                    interp.span,
                );
            }
            self.include(&base, &display_dir, &include.text(), include.span);
        }
        if canonical.is_some() {
            self.stack.pop();
        }
    }

    fn include(&mut self, base: &Path, display_dir: &Path, pattern: &str, span: Span) {
        let full = base.join(pattern);
        let is_glob = pattern.contains(['*', '?', '[']);
        let paths: Vec<PathBuf> = if is_glob {
            let Some(full_str) = full.to_str() else {
                self.include_failed(pattern, "the path is not valid UTF-8", span);
                return;
            };
            match glob::glob(full_str) {
                Ok(entries) => entries
                    .filter_map(Result::ok)
                    .filter(|p| p.is_file())
                    .collect(),
                Err(e) => {
                    self.include_failed(pattern, &e.to_string().to_lowercase(), span);
                    return;
                }
            }
        } else {
            vec![full]
        };
        if paths.is_empty() {
            self.diags.push(Diagnostic::new(
                DiagnosticKind::IncludeEmpty {
                    pattern: pattern.into(),
                },
                span,
            ));
            return;
        }
        for path in paths {
            let relative = path.strip_prefix(base).unwrap_or(&path);
            let shown = normalize(&display_dir.join(relative)).display().to_string();
            let canonical = path.canonicalize().ok();
            if let Some(c) = &canonical {
                if self.stack.contains(c) {
                    self.diags
                        .error(DiagnosticKind::IncludeCycle { path: shown }, span);
                    continue;
                }
                if self.seen.contains(c) {
                    continue;
                }
            }
            match read_limited(&path) {
                Ok(bytes) => self.add(&shown, Some(path.clone()), &bytes),
                Err(e) => self.include_failed(&shown, &io_reason(&e), span),
            }
        }
    }

    fn include_failed(&mut self, path: &str, reason: &str, span: Span) {
        self.diags.error(
            DiagnosticKind::IncludeFailed {
                path: path.into(),
                reason: reason.into(),
            },
            span,
        );
    }
}

/// An IO error as a message fragment: lowercase, without the `(os error N)` suffix.
pub(crate) fn io_reason(e: &std::io::Error) -> String {
    let text = e.to_string();
    let text = text.split(" (os error").next().unwrap_or(&text);
    text.to_lowercase()
}

/// Resolves `.` and `..` without touching the file system: `err/../includes/a.inc` → `includes/a.inc`.
fn normalize(path: &Path) -> PathBuf {
    use std::path::Component;
    let mut out = PathBuf::new();
    for c in path.components() {
        match c {
            Component::CurDir => {}
            Component::ParentDir
                if matches!(out.components().next_back(), Some(Component::Normal(_))) =>
            {
                out.pop();
            }
            other => out.push(other),
        }
    }
    out
}

/// Reads a file, refusing (with an error) anything larger than the rules-file limit plus one byte,
/// so the caller can report the size without reading gigabytes.
fn read_limited(path: &Path) -> std::io::Result<Vec<u8>> {
    let file = std::fs::File::open(path)?;
    let mut bytes = Vec::new();
    file.take(MAX_FILE_BYTES as u64 + 1)
        .read_to_end(&mut bytes)?;
    Ok(bytes)
}
