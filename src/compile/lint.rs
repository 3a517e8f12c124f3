//! Warnings: events a source can never send or never accepts, and declarations nothing uses.

use crate::compile::{Cx, suggest};
use crate::diagnostic::{Diagnostic, DiagnosticKind, NameKind};
use crate::providers::{self, ProviderKind};
use crate::ruleset::Source;
use crate::source::Span;

impl Cx<'_> {
    /// Warns when `kind` never sends `event`: a typo, or another provider's event name.
    pub(super) fn check_event(&mut self, event: &str, span: Span, kind: ProviderKind) {
        if kind.sends(event) {
            return;
        }
        let known = kind.known_events().unwrap_or_default();
        let kind_name = kind.to_string();
        let diagnostic = match providers::sent_by_other(kind, event) {
            Some(other) => DiagnosticKind::EventNeverSent {
                event: event.into(),
                provider: kind_name,
                sent_by: other.to_string(),
                suggestion: providers::equivalent_event(kind, event)
                    .map(String::from)
                    .or_else(|| suggest(event, known.iter().copied())),
            },
            None => DiagnosticKind::UnknownEvent {
                event: event.into(),
                provider: kind_name,
                suggestion: suggest(event, known.iter().copied()),
            },
        };
        self.diags.push(Diagnostic::new(diagnostic, span));
    }

    /// Checks a rule's `on` list against each of its sources: the kind must send the event and the
    /// source's own `events` filter must let it through.
    pub(super) fn check_rule_events(&mut self, on: &[(String, Span)], source_ids: &[usize], sources: &[Source]) {
        // Sources that failed to compile are absent from `sources`; they were reported already.
        let listening: Vec<&Source> = source_ids
            .iter()
            .filter_map(|&id| sources.iter().find(|s| s.name == self.sources.names[id]))
            .collect();
        for (event, span) in on {
            let mut kinds_checked: Vec<ProviderKind> = Vec::new();
            for source in &listening {
                if !kinds_checked.contains(&source.kind) {
                    kinds_checked.push(source.kind);
                    self.check_event(event, *span, source.kind);
                }
                if let Some(accepted) = &source.events {
                    if !accepted.contains(event) {
                        self.diags.push(Diagnostic::new(
                            DiagnosticKind::EventFiltered { event: event.clone(), source: source.name.clone() },
                            *span,
                        ));
                    }
                }
            }
        }
    }

    pub(super) fn lint_unused(&mut self) {
        for (names, kind) in [(&self.secrets, NameKind::Secret), (&self.targets, NameKind::Target), (&self.sources, NameKind::Source)] {
            for (i, used) in names.used.iter().enumerate() {
                if !used {
                    let d = DiagnosticKind::Unused { kind, name: names.names[i].clone() };
                    self.diags.push(Diagnostic::new(d, names.spans[i]));
                }
            }
        }
    }
}
