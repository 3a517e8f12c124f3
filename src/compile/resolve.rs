//! Name tables: one per kind of declaration, with duplicate detection and "did you mean".

use indexmap::IndexSet;
use rustc_hash::FxBuildHasher;

use crate::diagnostic::{Diagnostic, DiagnosticKind, Diagnostics, NameKind};
use crate::source::Span;

/// The declared names of one kind, in declaration order.
pub(crate) struct Names {
    kind: NameKind,
    /// The names, each held once, indexed by declaration order and hashed for lookup.
    pub(crate) names: IndexSet<String, FxBuildHasher>,
    pub(super) spans: Vec<Span>,
    /// Whether anything refers to the name (for the unused lints).
    pub(super) used: Vec<bool>,
}

impl Names {
    pub(super) fn new(kind: NameKind) -> Names {
        Names {
            kind,
            names: IndexSet::default(),
            spans: Vec::new(),
            used: Vec::new(),
        }
    }

    /// Declares a name. A duplicate is reported and gets no index of its own.
    pub(crate) fn declare(
        &mut self,
        name: &str,
        span: Span,
        diags: &mut Diagnostics,
    ) -> Option<usize> {
        if let Some(first) = self.names.get_index_of(name) {
            diags.push(
                Diagnostic::new(
                    DiagnosticKind::DuplicateName {
                        kind: self.kind,
                        name: name.into(),
                    },
                    span,
                )
                .with_label(self.spans[first], "first declared here"),
            );
            return None;
        }
        let (id, _) = self.names.insert_full(name.to_string());
        self.spans.push(span);
        self.used.push(false);
        Some(id)
    }

    /// Looks a reference up, marking the name used, or reports it with a suggestion.
    pub(super) fn resolve(
        &mut self,
        name: &str,
        span: Span,
        diags: &mut Diagnostics,
    ) -> Option<usize> {
        match self.names.get_index_of(name) {
            Some(id) => {
                self.used[id] = true;
                Some(id)
            }
            None => {
                let suggestion = suggest(name, self.names.iter().map(String::as_str));
                diags.error(
                    DiagnosticKind::UnknownName {
                        kind: self.kind,
                        name: name.into(),
                        suggestion,
                    },
                    span,
                );
                None
            }
        }
    }

    pub(crate) fn get(&self, name: &str) -> Option<usize> {
        self.names.get_index_of(name)
    }

    pub(super) fn len(&self) -> usize {
        self.names.len()
    }
}

/// The candidate closest to `name`, if it is close enough to be a likely typo.
pub(crate) fn suggest<'a>(
    name: &str,
    candidates: impl IntoIterator<Item = &'a str>,
) -> Option<String> {
    let lower = name.to_lowercase();
    let mut best: Option<(usize, &str)> = None;
    for candidate in candidates {
        let distance = if candidate.to_lowercase() == lower {
            0
        } else {
            strsim::damerau_levenshtein(&lower, &candidate.to_lowercase())
        };
        if best.is_none_or(|(d, _)| distance < d) {
            best = Some((distance, candidate));
        }
    }
    // One edit per three characters: `gh_secert` → `gh_secret`, but not `u` → `t`.
    let limit = name.chars().count() / 3;
    best.filter(|&(d, c)| d <= limit && c != name)
        .map(|(_, c)| c.to_string())
}

#[cfg(test)]
mod tests {
    use super::suggest;

    #[test]
    fn suggests_close_names_only() {
        let names = ["gh", "gh_next", "gitlab_token"];
        assert_eq!(suggest("gh_nxet", names), Some("gh_next".into()));
        assert_eq!(suggest("GH", names), Some("gh".into()));
        assert_eq!(suggest("gitlab-token", names), Some("gitlab_token".into()));
        assert_eq!(suggest("slack", names), None);
        assert_eq!(
            suggest("u", ["t"]),
            None,
            "one-letter names are too short to guess"
        );
        assert_eq!(
            suggest("gh", names),
            None,
            "an exact match needs no suggestion"
        );
    }
}
