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

    /// Checks a rule's `on` list against its sources. A rule may listen to sources of several kinds
    /// and list each kind's events (`on "push", "Push Hook"`), so an event is flagged only when none of
    /// the rule's sources sends it, and "filtered" only when every source that sends it filters it out.
    pub(super) fn check_rule_events(
        &mut self,
        on: &[(String, Span)],
        source_ids: &[usize],
        sources: &[Source],
    ) {
        // Sources that failed to compile are absent from `sources`; they were reported already.
        let listening: Vec<&Source> = source_ids
            .iter()
            .filter_map(|&id| sources.iter().find(|s| s.name == self.sources.names[id]))
            .collect();
        let mut kinds: Vec<ProviderKind> = Vec::new();
        for source in &listening {
            if !kinds.contains(&source.kind) {
                kinds.push(source.kind);
            }
        }
        for (event, span) in on {
            let senders: Vec<&&Source> = listening.iter().filter(|s| s.kind.sends(event)).collect();
            match (senders.as_slice(), kinds.as_slice()) {
                ([], []) => {}
                ([], [kind]) => self.check_event(event, *span, *kind),
                ([], _) => {
                    let known: Vec<&str> = kinds
                        .iter()
                        .flat_map(|k| k.known_events().unwrap_or_default().iter().copied())
                        .collect();
                    let provider = kinds
                        .iter()
                        .map(|k| k.name())
                        .collect::<Vec<_>>()
                        .join(" or ");
                    let suggestion = suggest(event, known);
                    self.diags.push(Diagnostic::new(
                        DiagnosticKind::UnknownEvent {
                            event: event.clone(),
                            provider,
                            suggestion,
                        },
                        *span,
                    ));
                }
                (senders, _) => {
                    let accepted = senders
                        .iter()
                        .any(|s| s.events.as_ref().is_none_or(|list| list.contains(event)));
                    if !accepted {
                        let source = senders[0].name.clone();
                        self.diags.push(Diagnostic::new(
                            DiagnosticKind::EventFiltered {
                                event: event.clone(),
                                source,
                            },
                            *span,
                        ));
                    }
                }
            }
        }
    }

    pub(super) fn lint_unused(&mut self) {
        for (names, kind) in [
            (&self.secrets, NameKind::Secret),
            (&self.targets, NameKind::Target),
            (&self.sources, NameKind::Source),
        ] {
            for (i, used) in names.used.iter().enumerate() {
                if !used {
                    let d = DiagnosticKind::Unused {
                        kind,
                        name: names.names[i].clone(),
                    };
                    self.diags.push(Diagnostic::new(d, names.spans[i]));
                }
            }
        }
    }
}
