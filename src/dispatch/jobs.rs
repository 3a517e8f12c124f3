//! Evaluation outcome → jobs to enqueue: what each action will send.

use crate::eval::{Outcome, PlannedKind};
use crate::event::Event;
use crate::queue::{JobKind, NewJob};
use crate::ruleset::{Action, RuleSet};
use crate::verify;

/// Hop-by-hop and framing headers, which belong to one connection, not to the delivery.
const HOP: &[&str] = &[
    "host",
    "connection",
    "content-length",
    "transfer-encoding",
    "keep-alive",
    "te",
    "trailer",
    "upgrade",
    "expect",
];

/// The jobs for an evaluated event. `delivery` is the provider's delivery id or one the gateway
/// assigned; `raw` is the request body as received.
pub fn jobs_for(
    rules: &RuleSet,
    event: &Event,
    outcome: &Outcome,
    delivery: &str,
    raw: &[u8],
) -> Vec<NewJob> {
    let content_type = event
        .header_values("content-type")
        .next()
        .unwrap_or("application/json")
        .to_string();
    outcome
        .actions
        .iter()
        .map(|planned| {
            let rule = &rules.rules[planned.rule];
            let target = rules.targets[planned.target].name.clone();
            let (kind, key, body, headers, sign_with) = match &planned.kind {
                PlannedKind::Notify { body: Some(body) } => (
                    JobKind::Notify,
                    None,
                    serde_json::to_vec(body).unwrap_or_default(),
                    vec![("content-type".to_string(), "application/json".to_string())],
                    None,
                ),
                PlannedKind::Notify { body: None } => (
                    JobKind::Notify,
                    None,
                    raw.to_vec(),
                    vec![("content-type".to_string(), content_type.clone())],
                    None,
                ),
                PlannedKind::Check { key } => (
                    JobKind::Check,
                    Some(key.clone()),
                    Vec::new(),
                    Vec::new(),
                    None,
                ),
                PlannedKind::Forward => {
                    let sign_with = match &rule.actions[planned.action] {
                        Action::Forward { sign_with, .. } => {
                            sign_with.as_ref().map(|s| s.name().to_string())
                        }
                        _ => None,
                    };
                    let headers = event
                        .headers
                        .iter()
                        .filter(|&(n, _)| {
                            // A forward passes on the signature headers (HMACs: the receiver can check
                            // them if it shares the sender's secret) unless it re-signs, but never plain
                            // tokens, which are the secret itself and would end up stored in the queue.
                            let dropped = HOP.contains(&n)
                                || verify::TOKEN_HEADERS.contains(&n)
                                || (sign_with.is_some()
                                    && (verify::SIGNATURE_HEADERS.contains(&n)
                                        || verify::SIGNATURE_CONTEXT_HEADERS.contains(&n)));
                            !dropped
                        })
                        .map(|(n, v)| (n.to_string(), v.to_string()))
                        .collect();
                    (JobKind::Forward, None, raw.to_vec(), headers, sign_with)
                }
            };
            NewJob {
                kind,
                target,
                key,
                source: event.source_name.clone(),
                event: event.name.clone(),
                delivery: delivery.to_string(),
                rule: rule.name.clone(),
                action: planned.action as u32,
                body,
                headers,
                sign_with,
            }
        })
        .collect()
}
