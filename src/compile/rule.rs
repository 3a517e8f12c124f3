//! `rule "NAME" { from ...; on ...; when ...; actions }` → [`Rule`].

use std::sync::Arc;

use crate::compile::{Cx, Options, expr};
use crate::diagnostic::{Diagnostic, DiagnosticKind};
use crate::ruleset::{Action, Rule, Source};
use crate::syntax::{RuleDecl, RuleItemKind};

impl Cx<'_> {
    /// The shared copy of an `on` list.
    fn event_list(&mut self, list: Vec<String>) -> Arc<[String]> {
        if let Some(shared) = self.event_lists.get(&list) {
            return shared.clone();
        }
        let shared: Arc<[String]> = list.clone().into();
        self.event_lists.insert(list, shared.clone());
        shared
    }

    /// Compiles one rule against the compiled `sources`; `None` when it has errors (all reported).
    pub(super) fn rule(&mut self, decl: &RuleDecl, sources: &[Source]) -> Option<Rule> {
        let name = decl.name.text();
        let mut ok = true;
        let mut given = Options::default();
        let mut from: Option<Option<Vec<usize>>> = None;
        let mut on = None;
        let mut when = None;
        let mut actions = Vec::new();
        for item in &decl.items {
            let clause = match &item.kind {
                RuleItemKind::From(_) => Some("from"),
                RuleItemKind::On(_) => Some("on"),
                RuleItemKind::When(_) => Some("when"),
                _ => None,
            };
            // Actions may be repeated; each clause is given once.
            if let Some(clause) = clause
                && !self.once(&mut given, clause, item.span)
            {
                ok = false;
                continue;
            }
            match &item.kind {
                RuleItemKind::From(names) if names.is_empty() => {
                    self.sources.used.fill(true);
                    from = Some(None);
                }
                RuleItemKind::From(names) => {
                    let mut ids = Vec::new();
                    for n in names {
                        match self.sources.resolve(&n.text, n.span, &mut self.diags) {
                            Some(id) if !ids.contains(&id) => ids.push(id),
                            Some(_) => {}
                            None => ok = false,
                        }
                    }
                    from = Some(Some(ids));
                }
                RuleItemKind::On(list) => {
                    on = Some(
                        list.iter()
                            .map(|s| (self.plain(s, "event names"), s.span))
                            .collect::<Vec<_>>(),
                    );
                }
                RuleItemKind::When(e) => match self.matcher(e) {
                    Some(m) => when = Some(Arc::new(m)),
                    None => ok = false,
                },
                RuleItemKind::Notify { target, body } => {
                    let t = self
                        .targets
                        .resolve(&target.text, target.span, &mut self.diags);
                    let body = body.as_ref().map(|b| self.template(b));
                    match (t, body) {
                        (Some(target), None) => actions.push(Action::Notify { target, body: None }),
                        (Some(target), Some(Some(body))) => actions.push(Action::Notify {
                            target,
                            body: Some(body),
                        }),
                        _ => ok = false,
                    }
                }
                RuleItemKind::Check { target, key } => {
                    let t = self
                        .targets
                        .resolve(&target.text, target.span, &mut self.diags);
                    let key = key
                        .as_ref()
                        .map(|k| self.str_template(k, expr::StrContext::Body));
                    match t {
                        Some(target) => actions.push(Action::Check { target, key }),
                        None => ok = false,
                    }
                }
                RuleItemKind::Forward { target, sign_with } => {
                    let t = self
                        .targets
                        .resolve(&target.text, target.span, &mut self.diags);
                    let sign_with = match sign_with {
                        Some(word) => match self.secret_ref(word) {
                            Some(v) => Some(v),
                            None => {
                                ok = false;
                                None
                            }
                        },
                        None => None,
                    };
                    match t {
                        Some(target) => actions.push(Action::Forward { target, sign_with }),
                        None => ok = false,
                    }
                }
            }
        }
        let Some(from) = from else {
            self.error(DiagnosticKind::MissingFrom, decl.name.span);
            return None;
        };
        if let (Some(on), Some(ids)) = (&on, &from) {
            self.check_rule_events(on, ids, sources);
        }
        if actions.is_empty() && ok {
            self.diags.push(Diagnostic::new(
                DiagnosticKind::NoActions { rule: name.clone() },
                decl.name.span,
            ));
        }
        // Rules repeat the same few `from` and `on` lists: exact sizes, and one `on` list shared.
        let from = from.map(|mut ids| {
            ids.shrink_to_fit();
            ids
        });
        let on = on.map(|list| self.event_list(list.into_iter().map(|(e, _)| e).collect()));
        actions.shrink_to_fit();
        ok.then(|| Rule {
            name,
            sources: from,
            on,
            when,
            actions,
        })
    }
}
