//! Reading a rules set from disk: the root file and everything it `include`s, then compiling it.
//!
//! This is the IO edge in front of the pure `syntax` and `compile` stages. `gateway check`, `gateway
//! test`, `gateway serve` and hot reload all load through [`load_file`] / [`load_text`], so "lints clean"
//! means "will load".
//!
//! Every read goes through [`Inputs`], which records what was asked and a digest of the answer: doing
//! the same reads again and getting the same answers means loading again would give the same result,
//! which is how a reload decides "unchanged" without parsing, and what the watcher watches.
//!
//! Nothing here blocks on what it finds at a path: only regular files are opened for reading (a FIFO
//! or device is refused after `stat`, and opened non-blocking and checked again with `fstat`), and an
//! include glob walks at most [`MAX_GLOB_DEPTH`] directories deep, [`MAX_GLOB_ENTRIES`] entries and
//! [`MAX_GLOB_MATCHES`] matches.

use std::borrow::Cow;
use std::cell::Cell;
use std::collections::HashSet;
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use crate::compile::{self, Compiled, Secrets};
use crate::diagnostic::{Diagnostic, DiagnosticKind, Diagnostics};
use crate::ruleset::RuleSet;
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
    /// Every read made from the file system (not the secrets), to replay and to watch.
    pub inputs: Inputs,
}

/// The root file could not be read at all (as opposed to an include, which is a diagnostic).
#[derive(Debug, thiserror::Error)]
#[error("cannot read `{path}`: {}", crate::fs::io_reason(source))]
pub struct LoadError {
    pub path: String,
    #[source]
    pub source: std::io::Error,
    /// The failed read, so a reload can tell when the file appears.
    pub inputs: Inputs,
}

impl LoadError {
    /// How to fix it, when there is more to say than the message.
    pub fn help(&self) -> Option<&'static str> {
        crate::fs::io_reason(&self.source)
            .starts_with(crate::fs::NOT_REGULAR)
            .then_some(
                "point at a regular file (or a symlink to one), not a pipe, device or directory",
            )
    }
}

/// Loads and compiles the rules set rooted at `path`.
pub fn load_file(path: &Path, secrets: &dyn Secrets) -> Result<Loaded, LoadError> {
    reload_file(path, secrets, None)
}

/// [`load_file`], sharing with `previous` (the set serving, on a reload) every target and rule that
/// compiles equal to its namesake there, so that what did not change is held once.
pub fn reload_file(
    path: &Path,
    secrets: &dyn Secrets,
    previous: Option<&RuleSet>,
) -> Result<Loaded, LoadError> {
    let mut inputs = Inputs::default();
    let bytes = match inputs.read_file(path) {
        Ok(bytes) => bytes,
        Err(source) => {
            return Err(LoadError {
                path: path.display().to_string(),
                source,
                inputs,
            });
        }
    };
    let mut loader = Loader::new(inputs);
    loader.add(
        &path.display().to_string(),
        Some(path.to_path_buf()),
        Cow::Owned(bytes),
    );
    Ok(loader.finish(secrets, previous))
}

/// Loads and compiles a rules set given as bytes (stdin, tests); includes resolve against `path`'s
/// directory, or the working directory.
pub fn load_text(name: &str, path: Option<PathBuf>, bytes: &[u8], secrets: &dyn Secrets) -> Loaded {
    let mut loader = Loader::new(Inputs::default());
    loader.add(name, path, Cow::Borrowed(bytes));
    loader.finish(secrets, None)
}

/// Compiles a rules set from the texts of all its files, in load order (`RuleStore::texts`)
/// (the delivery log stores them to explain deliveries against the rules that judged them). Nothing is
/// read: `include`s are not followed, since every included file is among the texts.
pub fn load_texts(texts: &[(String, String)], secrets: &dyn Secrets) -> Loaded {
    let mut loader = Loader::new(Inputs::default());
    loader.follow_includes = false;
    for (name, text) in texts {
        loader.add(name, None, Cow::Borrowed(text.as_bytes()));
    }
    loader.finish(secrets, None)
}

impl Loader {
    fn new(io: Inputs) -> Loader {
        Loader {
            files: SourceMap::default(),
            asts: Vec::new(),
            diags: Diagnostics::default(),
            seen: HashSet::new(),
            stack: Vec::new(),
            hasher: Sha256::new(),
            io,
            follow_includes: true,
        }
    }

    fn finish(self, secrets: &dyn Secrets, previous: Option<&RuleSet>) -> Loaded {
        let loader = self;
        let Loader {
            files,
            asts,
            mut diags,
            hasher,
            io: inputs,
            ..
        } = loader;
        let hash = hex::encode(hasher.finalize());
        let result = if diags.has_errors() {
            diags.sort();
            Err(diags)
        } else {
            match compile::compile(&files, asts, secrets, previous) {
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
            inputs,
        }
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
    io: Inputs,
    /// Off when every file is given (`load_texts`).
    follow_includes: bool,
}

impl Loader {
    /// Parses one file. Its bytes are dropped once the source map holds the text, before parsing: a
    /// large file is not held twice while its AST is built.
    fn add(&mut self, name: &str, path: Option<PathBuf>, bytes: Cow<'_, [u8]>) {
        self.hasher.update(name.as_bytes());
        self.hasher.update([0]);
        self.hasher.update(&bytes);
        self.hasher.update([0]);
        let len = bytes.len();
        let (text, bad_utf8_at): (std::sync::Arc<str>, _) = match std::str::from_utf8(&bytes) {
            Ok(text) => (text.into(), None),
            Err(e) => (
                String::from_utf8_lossy(&bytes).into(),
                Some(e.valid_up_to()),
            ),
        };
        drop(bytes);
        let canonical = path.as_deref().and_then(|p| self.io.canonical(p));
        let file = self.files.add(SourceText::new(name, path, text));
        if let Some(offset) = bad_utf8_at {
            self.diags
                .error(DiagnosticKind::NotUtf8, Span::new(file, offset, offset + 1));
            return;
        }
        if len > MAX_FILE_BYTES {
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
        let ast = match syntax::parse_later(file, &text) {
            Ok(ast) => ast,
            Err(diagnostics) => {
                self.diags.extend(diagnostics);
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
        let includes = if self.follow_includes {
            includes
        } else {
            Vec::new()
        };
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
            match self.io.glob(&full) {
                Ok(paths) => paths,
                Err(GlobError::Invalid(reason)) => {
                    self.include_failed(pattern, &reason, span);
                    return;
                }
                Err(e) => {
                    self.diags.error(
                        DiagnosticKind::IncludeTooBroad {
                            pattern: pattern.into(),
                            reason: e.to_string(),
                        },
                        span,
                    );
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
            let canonical = self.io.canonical(&path);
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
            match self.io.read_file(&path) {
                Ok(bytes) => self.add(&shown, Some(path.clone()), Cow::Owned(bytes)),
                Err(e) => self.include_failed(&shown, &crate::fs::io_reason(&e), span),
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

/// How deep below its literal prefix an include glob with `**` may descend.
pub const MAX_GLOB_DEPTH: usize = 8;
/// How many directory entries one include glob may look at.
pub const MAX_GLOB_ENTRIES: usize = 10_000;
/// How many files one include glob may match.
pub const MAX_GLOB_MATCHES: usize = 1_000;

/// Why an include glob gave no list of files.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum GlobError {
    #[error("{0}")]
    Invalid(String),
    #[error("it descends more than {MAX_GLOB_DEPTH} directories")]
    TooDeep,
    #[error("it looks at more than {MAX_GLOB_ENTRIES} directory entries")]
    TooManyEntries,
    #[error("it matches more than {MAX_GLOB_MATCHES} files")]
    TooManyMatches,
}

/// What an include glob matched, and the directories it read (to watch for new matches).
struct Expansion {
    paths: Vec<PathBuf>,
    /// The glob's literal prefix, first, whether or not it exists, then every directory read.
    dirs: Vec<PathBuf>,
}

/// Expands an include glob by a bounded walk from its longest literal prefix. `*`, `?` and `[...]` stay
/// within one path component, `**` spans any number (up to [`MAX_GLOB_DEPTH`]); symlinks are followed
/// and symlink loops skipped, as are directories that cannot be read. Matches come in walk order
/// (depth first, names sorted); they need not be regular files: reading says what is wrong with them.
fn expand_glob(full: &Path) -> Result<Expansion, GlobError> {
    use glob::{MatchOptions, Pattern};
    let Some(text) = full.to_str() else {
        return Err(GlobError::Invalid("the path is not valid UTF-8".into()));
    };
    if let Err(e) = Pattern::new(text) {
        return Err(GlobError::Invalid(e.to_string().to_lowercase()));
    }
    let mut root = PathBuf::new();
    let mut parts: Vec<&str> = Vec::new();
    for c in full.components() {
        // INVARIANT: `full` is UTF-8, so each of its components is.
        let s = c.as_os_str().to_str().unwrap_or_default();
        if parts.is_empty() && !s.contains(['*', '?', '[']) {
            root.push(c);
        } else {
            parts.push(s);
        }
    }
    if root.as_os_str().is_empty() {
        root.push(".");
    }
    let options = MatchOptions {
        case_sensitive: true,
        require_literal_separator: true,
        require_literal_leading_dot: false,
    };
    let invalid = |e: glob::PatternError| GlobError::Invalid(e.to_string().to_lowercase());
    let whole = Pattern::new(&parts.join("/")).map_err(invalid)?;
    // The components before any `**` prune the walk: a directory that cannot match is not read.
    let prefix: Vec<Pattern> = parts
        .iter()
        .take_while(|p| **p != "**")
        .map(|p| Pattern::new(p))
        .collect::<Result<_, _>>()
        .map_err(invalid)?;
    let recursive = prefix.len() < parts.len();
    let max_depth = if recursive {
        MAX_GLOB_DEPTH + 1
    } else {
        parts.len()
    };
    let looked_at = Cell::new(0usize);
    let walk = walkdir::WalkDir::new(&root)
        .follow_links(true)
        .min_depth(1)
        .max_depth(max_depth)
        .sort_by_file_name()
        .into_iter()
        .filter_entry(|e| {
            looked_at.set(looked_at.get() + 1);
            let d = e.depth();
            !(e.file_type().is_dir()
                && (1..=prefix.len()).contains(&d)
                && !prefix[d - 1].matches_with(&e.file_name().to_string_lossy(), options))
        });
    let mut paths = Vec::new();
    let mut dirs = vec![root.clone()];
    for entry in walk {
        if looked_at.get() > MAX_GLOB_ENTRIES {
            return Err(GlobError::TooManyEntries);
        }
        // Unreadable directories and symlink loops are skipped, as a shell's glob does.
        let Ok(entry) = entry else {
            looked_at.set(looked_at.get() + 1);
            continue;
        };
        if entry.file_type().is_dir() {
            if entry.depth() < max_depth {
                dirs.push(entry.path().to_path_buf());
            } else if recursive {
                return Err(GlobError::TooDeep);
            }
            continue;
        }
        let relative = entry.path().strip_prefix(&root).unwrap_or(entry.path());
        if whole.matches_path_with(relative, options) {
            if paths.len() == MAX_GLOB_MATCHES {
                return Err(GlobError::TooManyMatches);
            }
            paths.push(entry.into_path());
        }
    }
    if looked_at.get() > MAX_GLOB_ENTRIES {
        return Err(GlobError::TooManyEntries);
    }
    Ok(Expansion { paths, dirs })
}

/// What loading read from the file system, in order, each with a digest of the answer it got.
///
/// INVARIANT: the loader's control flow depends only on these answers (file bytes or read errors,
/// canonical paths, glob expansions). So if doing the same reads again gives the same digests,
/// loading again would read the same files and produce the same result: [`Inputs::unchanged`] decides
/// that without parsing anything.
#[derive(Debug, Clone, Default)]
pub struct Inputs {
    reads: Vec<Recorded>,
}

#[derive(Debug, Clone)]
struct Recorded {
    read: Access,
    digest: [u8; 32],
}

#[derive(Debug, Clone)]
enum Access {
    /// A rules file read (the root, an include).
    File(PathBuf),
    /// A path canonicalised, for cycle and duplicate detection.
    Canonical(PathBuf),
    /// An include glob expanded; `dirs` are the directories it read.
    Glob {
        pattern: PathBuf,
        dirs: Vec<PathBuf>,
    },
}

/// An include glob as the watcher sees it.
pub struct GlobInput<'a> {
    /// The pattern, joined to the including file's directory.
    pub pattern: &'a Path,
    /// The directory the walk starts from (the pattern's literal prefix), even if it does not exist
    /// yet, then every directory the walk read. Empty when the pattern is invalid.
    pub dirs: &'a [PathBuf],
}

impl Inputs {
    fn read_file(&mut self, path: &Path) -> std::io::Result<Vec<u8>> {
        let result = crate::fs::read_regular(path, MAX_FILE_BYTES as u64);
        let digest = digest_read(&result);
        self.reads.push(Recorded {
            read: Access::File(path.to_path_buf()),
            digest,
        });
        result
    }

    fn canonical(&mut self, path: &Path) -> Option<PathBuf> {
        let canonical = path.canonicalize().ok();
        self.reads.push(Recorded {
            read: Access::Canonical(path.to_path_buf()),
            digest: digest_canonical(&canonical),
        });
        canonical
    }

    fn glob(&mut self, pattern: &Path) -> Result<Vec<PathBuf>, GlobError> {
        let result = expand_glob(pattern);
        let digest = digest_glob(&result);
        let (paths, dirs) = match result {
            Ok(e) => (Ok(e.paths), e.dirs),
            Err(e) => (Err(e), Vec::new()),
        };
        self.reads.push(Recorded {
            read: Access::Glob {
                pattern: pattern.to_path_buf(),
                dirs,
            },
            digest,
        });
        paths
    }

    /// Whether doing every read again gives the same answers; stops at the first difference.
    pub fn unchanged(&self) -> bool {
        self.reads.iter().all(|r| {
            let again = match &r.read {
                Access::File(path) => {
                    digest_read(&crate::fs::read_regular(path, MAX_FILE_BYTES as u64))
                }
                Access::Canonical(path) => digest_canonical(&path.canonicalize().ok()),
                Access::Glob { pattern, .. } => digest_glob(&expand_glob(pattern)),
            };
            again == r.digest
        })
    }

    /// Every path read as a rules file, including those that could not be read.
    pub fn files(&self) -> impl Iterator<Item = &Path> {
        self.reads.iter().filter_map(|r| match &r.read {
            Access::File(p) => Some(p.as_path()),
            _ => None,
        })
    }

    /// Every include glob expanded.
    pub fn globs(&self) -> impl Iterator<Item = GlobInput<'_>> {
        self.reads.iter().filter_map(|r| match &r.read {
            Access::Glob { pattern, dirs } => Some(GlobInput { pattern, dirs }),
            _ => None,
        })
    }
}

fn digest_read(result: &std::io::Result<Vec<u8>>) -> [u8; 32] {
    let mut h = Sha256::new();
    match result {
        Ok(bytes) => {
            h.update([0]);
            h.update(bytes);
        }
        Err(e) => {
            h.update([1]);
            h.update(e.to_string());
        }
    }
    h.finalize().into()
}

fn digest_canonical(path: &Option<PathBuf>) -> [u8; 32] {
    use std::os::unix::ffi::OsStrExt;
    let mut h = Sha256::new();
    if let Some(p) = path {
        h.update([0]);
        h.update(p.as_os_str().as_bytes());
    }
    h.finalize().into()
}

fn digest_glob(result: &Result<Expansion, GlobError>) -> [u8; 32] {
    use std::os::unix::ffi::OsStrExt;
    let mut h = Sha256::new();
    match result {
        Ok(e) => {
            for p in &e.paths {
                h.update([0]);
                h.update(p.as_os_str().as_bytes());
            }
        }
        Err(e) => {
            h.update([1]);
            h.update(e.to_string());
        }
    }
    h.finalize().into()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mkfifo(path: &Path) {
        let status = std::process::Command::new("mkfifo")
            .arg(path)
            .status()
            .unwrap();
        assert!(status.success());
    }

    #[test]
    fn non_regular_files_are_refused_without_blocking() {
        let dir = tempfile::tempdir().unwrap();
        let fifo = dir.path().join("fifo");
        mkfifo(&fifo);
        let err = crate::fs::read_regular(&fifo, 10).unwrap_err();
        assert_eq!(
            crate::fs::io_reason(&err),
            "not a regular file (a named pipe)"
        );
        let err = crate::fs::read_regular(dir.path(), 10).unwrap_err();
        assert_eq!(
            crate::fs::io_reason(&err),
            "not a regular file (a directory)"
        );
        let err = crate::fs::read_regular(Path::new("/dev/null"), 10).unwrap_err();
        assert_eq!(
            crate::fs::io_reason(&err),
            "not a regular file (a character device)"
        );
        let link = dir.path().join("link");
        std::os::unix::fs::symlink(&fifo, &link).unwrap();
        assert!(
            crate::fs::read_regular(&link, 10).is_err(),
            "a symlink to a FIFO too"
        );
        std::fs::write(dir.path().join("f"), "0123456789abc").unwrap();
        assert_eq!(
            crate::fs::read_regular(&dir.path().join("f"), 4).unwrap(),
            b"01234",
            "one byte past the limit, to tell the size"
        );
    }

    fn tree(root: &Path, files: &[&str]) {
        for f in files {
            let p = root.join(f);
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::write(p, "").unwrap();
        }
    }

    fn names(root: &Path, pattern: &str) -> Result<Vec<String>, GlobError> {
        expand_glob(&root.join(pattern)).map(|e| {
            e.paths
                .iter()
                .map(|p| p.strip_prefix(root).unwrap().display().to_string())
                .collect()
        })
    }

    #[test]
    fn globs_match_like_a_shell() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        tree(
            root,
            &[
                "a.hook",
                "b.hook",
                "c.txt",
                "t/x.hook",
                "t/u/y.hook",
                "t/u/v/z.hook",
                "s/w.hook",
            ],
        );
        assert_eq!(names(root, "*.hook").unwrap(), ["a.hook", "b.hook"]);
        assert_eq!(names(root, "t/*.hook").unwrap(), ["t/x.hook"]);
        assert_eq!(names(root, "*/*.hook").unwrap(), ["s/w.hook", "t/x.hook"]);
        assert_eq!(
            names(root, "t/**/*.hook").unwrap(),
            ["t/u/v/z.hook", "t/u/y.hook", "t/x.hook"]
        );
        assert_eq!(names(root, "[ab].hook").unwrap(), ["a.hook", "b.hook"]);
        assert_eq!(names(root, "none/*.hook").unwrap(), Vec::<String>::new());
        assert!(matches!(names(root, "a/***"), Err(GlobError::Invalid(_))));
    }

    #[test]
    fn globs_are_bounded() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        let deep = (0..=MAX_GLOB_DEPTH)
            .map(|i| i.to_string())
            .collect::<Vec<_>>()
            .join("/");
        tree(root, &[&format!("d/{deep}/x.hook")]);
        assert_eq!(names(root, "d/**/*.hook"), Err(GlobError::TooDeep));
        assert_eq!(
            names(root, "d/0/**/*.hook").unwrap().len(),
            1,
            "one level less is fine"
        );

        // A symlink loop is skipped, not followed forever.
        std::fs::create_dir(root.join("l")).unwrap();
        std::os::unix::fs::symlink(".", root.join("l/again")).unwrap();
        tree(root, &["l/a.hook"]);
        assert_eq!(names(root, "l/**/*.hook").unwrap(), ["l/a.hook"]);

        let many: Vec<String> = (0..=MAX_GLOB_MATCHES)
            .map(|i| format!("m/{i}.hook"))
            .collect();
        tree(root, &many.iter().map(String::as_str).collect::<Vec<_>>());
        assert_eq!(names(root, "m/*.hook"), Err(GlobError::TooManyMatches));
        assert_eq!(names(root, "m/1*.hook").unwrap().len(), 112); // 1, 1x, 1xx, 1000

        let wide: Vec<String> = (0..MAX_GLOB_ENTRIES)
            .map(|i| format!("w/{i}.txt"))
            .collect();
        tree(root, &wide.iter().map(String::as_str).collect::<Vec<_>>());
        tree(root, &["w/x/a.hook"]);
        assert_eq!(names(root, "w/**/*.hook"), Err(GlobError::TooManyEntries));
    }

    #[test]
    fn replaying_the_reads_tells_a_change() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("rules.hook");
        std::fs::write(&root, "include \"t/*.inc\"\n").unwrap();
        tree(dir.path(), &["t/a.inc"]);
        let loaded = load_file(&root, &crate::compile::PlaceholderSecrets).unwrap();
        assert!(loaded.inputs.unchanged());
        std::fs::write(&root, "include \"t/*.inc\"\n").unwrap();
        assert!(loaded.inputs.unchanged(), "the same bytes saved again");
        std::fs::write(dir.path().join("t/a.inc"), "# more").unwrap();
        assert!(!loaded.inputs.unchanged(), "an included file changed");
        let loaded = load_file(&root, &crate::compile::PlaceholderSecrets).unwrap();
        tree(dir.path(), &["t/b.inc"]);
        assert!(!loaded.inputs.unchanged(), "a new match of the glob");
        let loaded = load_file(&root, &crate::compile::PlaceholderSecrets).unwrap();
        std::fs::write(dir.path().join("unrelated.txt"), "x").unwrap();
        std::fs::write(dir.path().join("t/c.txt"), "x").unwrap();
        assert!(loaded.inputs.unchanged(), "files the rules do not read");
        assert_eq!(loaded.inputs.files().count(), 3);
        assert_eq!(loaded.inputs.globs().count(), 1);
    }

    use std::sync::Arc;

    use crate::compile::FixedSecrets;

    fn pipeline_rules(edit: impl Fn(String) -> String) -> String {
        let mut text = String::from(
            "secret gh = env(\"GH\")\nsecret ci = env(\"CI\")\nsource acme: github { secret gh }\n",
        );
        for n in 0..4 {
            text += &format!(
                "target t{n} {{ post \"http://127.0.0.1:9/check/{n}?token=${{secret.ci}}\" }}\n\
                 rule \"r{n}\" {{ from acme on \"push\" when payload contains \
                 {{\"repository\": {{\"full_name\": \"acme/repo-{n}\"}}}} queue check t{n} }}\n"
            );
        }
        edit(text)
    }

    /// Loads `text` as a reload would, beside `previous`: the set, and (targets, rules) shared with it.
    fn reload(
        text: &str,
        secrets: &FixedSecrets,
        previous: &RuleSet,
    ) -> (RuleSet, Vec<bool>, Vec<bool>) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("rules.hook");
        std::fs::write(&path, text).unwrap();
        let set = reload_file(&path, secrets, Some(previous))
            .unwrap()
            .result
            .unwrap()
            .rules;
        let fresh = load_text("rules.hook", None, text.as_bytes(), secrets)
            .result
            .unwrap()
            .rules;
        // Sharing never changes what is served: the set is the one a fresh load compiles.
        assert_eq!(format!("{:?}", set.targets), format!("{:?}", fresh.targets));
        assert_eq!(format!("{:?}", set.rules), format!("{:?}", fresh.rules));
        assert!(
            set.targets
                .iter()
                .zip(&fresh.targets)
                .all(|(a, b)| **a == **b)
        );
        let shared = |new: &[Arc<crate::ruleset::Target>]| {
            new.iter()
                .map(|t| previous.targets.iter().any(|p| Arc::ptr_eq(p, t)))
                .collect::<Vec<_>>()
        };
        let targets = shared(&set.targets);
        let rules = set
            .rules
            .iter()
            .map(|r| previous.rules.iter().any(|p| Arc::ptr_eq(p, r)))
            .collect();
        (set, targets, rules)
    }

    #[test]
    fn a_reload_shares_what_compiles_the_same_and_only_that() {
        let secrets = FixedSecrets(&[("gh", "gh-secret"), ("ci", "ci-token")]);
        let first = load_text(
            "rules.hook",
            None,
            pipeline_rules(|t| t).as_bytes(),
            &secrets,
        )
        .result
        .unwrap()
        .rules;

        // A comment added: everything is shared.
        let (_, targets, rules) = reload(&pipeline_rules(|t| t + "# more\n"), &secrets, &first);
        assert_eq!(targets, [true; 4]);
        assert_eq!(rules, [true; 4]);

        // One target's URL and one rule's literal changed; the rest moved in the file but is shared.
        let edited = pipeline_rules(|t| {
            let t = t.replace("/check/1?", "/check/one?");
            let t = t.replace("acme/repo-2", "acme/other");
            format!("# a longer header than before\n{t}")
        });
        let (_, targets, rules) = reload(&edited, &secrets, &first);
        assert_eq!(targets, [true, false, true, true]);
        assert_eq!(rules, [true, true, false, true]);

        // A target declared before the others moves their indices: the rules that name them compile
        // to other indices and are not shared, but their expressions are; the targets are shared.
        let inserted = pipeline_rules(|t| {
            t.replace(
                "target t0",
                "target new { post \"http://127.0.0.1:9/new\" }\ntarget t0",
            )
        });
        let (set, targets, rules) = reload(&inserted, &secrets, &first);
        assert_eq!(targets, [false, true, true, true, true]);
        assert_eq!(rules, [false; 4]);
        assert_eq!(set.rules[0].actions[0].target(), 1);
        for (new, old) in set.rules.iter().zip(&first.rules) {
            let (new, old) = (new.when.as_ref().unwrap(), old.when.as_ref().unwrap());
            assert!(Arc::ptr_eq(new, old));
        }

        // The keys of a literal reordered: equal as JSON maps, but the rule is not the same (a body
        // renders in its order), so it is compiled again.
        let reordered = pipeline_rules(|t| {
            t.replace(
                "{\"repository\": {\"full_name\": \"acme/repo-3\"}}",
                "{\"repository\": {\"full_name\": \"acme/repo-3\"}, \"ref\": \"x\"}",
            )
        });
        let first_reordered = load_text("rules.hook", None, reordered.as_bytes(), &secrets)
            .result
            .unwrap()
            .rules;
        let swapped = reordered.replace(
            "{\"repository\": {\"full_name\": \"acme/repo-3\"}, \"ref\": \"x\"}",
            "{\"ref\": \"x\", \"repository\": {\"full_name\": \"acme/repo-3\"}}",
        );
        let (set, _, rules) = reload(&swapped, &secrets, &first_reordered);
        assert_eq!(rules, [true, true, true, false]);
        assert!(
            format!("{}", set.rules[3].when.as_ref().unwrap())
                .starts_with("payload contains {\"ref\"")
        );

        // A rotated secret: every target whose URL holds it is compiled again, with the new value.
        let rotated = FixedSecrets(&[("gh", "gh-secret"), ("ci", "ci-token-2")]);
        let (set, targets, rules) = reload(&pipeline_rules(|t| t), &rotated, &first);
        assert_eq!(targets, [false; 4]);
        assert_eq!(
            rules, [true; 4],
            "rules name targets by index, not by value"
        );
        let url = set.targets[0].url.render_with(|_| None).unwrap();
        assert!(url.ends_with("token=ci-token-2"), "{url}");
    }
}
