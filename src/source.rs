//! Rules text as loaded, and spans into it.
//!
//! A rules set may span several files (`include`), so a [`Span`] names its file by [`FileId`] and the
//! [`SourceMap`] owns every file's text. Spans are owned values, not borrows: the AST and the
//! diagnostics outlive the parser, and nothing here holds a lifetime.

use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Index of a file in a [`SourceMap`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct FileId(pub(crate) u32);

/// A byte range `start..end` in one file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct Span {
    pub(crate) file: FileId,
    pub(crate) start: u32,
    pub(crate) end: u32,
}

impl Span {
    pub(crate) fn new(file: FileId, start: usize, end: usize) -> Span {
        // INVARIANT: files are capped at `MAX_FILE_BYTES`, far below `u32::MAX`.
        Span {
            file,
            start: start as u32,
            end: end as u32,
        }
    }
}

/// The largest rules file we read: far beyond any real rules set, small enough to keep spans in `u32`.
pub const MAX_FILE_BYTES: usize = 64 << 20;

/// One rules file: its display name, where it was read from, and its text.
#[derive(Debug, Clone)]
pub struct SourceText {
    /// What diagnostics call the file: the path as the user gave it, or `<stdin>`.
    pub name: String,
    /// The file's location, used to resolve `include` and test payload paths; `None` for stdin.
    pub path: Option<PathBuf>,
    pub text: Arc<str>,
}

impl SourceText {
    pub fn new(
        name: impl Into<String>,
        path: Option<PathBuf>,
        text: impl Into<Arc<str>>,
    ) -> SourceText {
        SourceText {
            name: name.into(),
            path,
            text: text.into(),
        }
    }

    /// The directory relative paths in this file are resolved against.
    pub(crate) fn base_dir(&self) -> &Path {
        self.path
            .as_deref()
            .and_then(Path::parent)
            .unwrap_or(Path::new("."))
    }

    /// 1-based line and column (in characters) of a byte offset.
    pub fn line_col(&self, offset: usize) -> (usize, usize) {
        let offset = floor_char_boundary(&self.text, offset.min(self.text.len()));
        let before = &self.text[..offset];
        let line = before.bytes().filter(|&b| b == b'\n').count() + 1;
        let line_start = before.rfind('\n').map_or(0, |i| i + 1);
        let column = before[line_start..].chars().count() + 1;
        (line, column)
    }
}

fn floor_char_boundary(text: &str, mut offset: usize) -> usize {
    while !text.is_char_boundary(offset) {
        offset -= 1;
    }
    offset
}

/// Every file of one rules set, indexed by [`FileId`].
#[derive(Debug, Clone, Default)]
pub struct SourceMap {
    files: Vec<SourceText>,
}

impl SourceMap {
    pub fn add(&mut self, file: SourceText) -> FileId {
        self.files.push(file);
        FileId(self.files.len() as u32 - 1)
    }

    pub fn get(&self, id: FileId) -> &SourceText {
        &self.files[id.0 as usize]
    }

    pub fn files(&self) -> impl Iterator<Item = (FileId, &SourceText)> {
        self.files
            .iter()
            .enumerate()
            .map(|(i, f)| (FileId(i as u32), f))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn line_col_counts_characters_not_bytes() {
        let file = SourceText::new("t", None, "ab\n€x\ny");
        assert_eq!(file.line_col(0), (1, 1));
        assert_eq!(file.line_col(3), (2, 1));
        assert_eq!(file.line_col(6), (2, 2)); // after the three bytes of `€`
        assert_eq!(file.line_col(8), (3, 1));
        assert_eq!(file.line_col(4), (2, 1)); // inside `€`: floored to its start
    }
}
