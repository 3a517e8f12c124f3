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
                    Some(crate::queue::stored_key(key.clone())),
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
                    let source = &rules.sources[event.source];
                    let own_signature = verify::own_signature_header(source);
                    let own_token = verify::own_token_header(source);
                    let headers = event
                        .headers
                        .iter()
                        .filter(|&(n, _)| {
                            // A forward passes on the signature headers (HMACs: the receiver can check
                            // them if it shares the sender's secret) unless it re-signs, but never plain
                            // tokens, which are the secret itself and would end up stored in the queue.
                            // The source's own token header is a token too; its own signature
                            // header (`generic_hmac`) a signature.
                            // `X-Hookgate-*` headers are the gateway's to set (the delivery id,
                            // how many requests a check stands for), never a sender's.
                            let dropped = HOP.contains(&n)
                                || n.starts_with("x-hookgate-")
                                || verify::TOKEN_HEADERS.contains(&n)
                                || own_token == Some(n)
                                || (sign_with.is_some()
                                    && (verify::SIGNATURE_HEADERS.contains(&n)
                                        || verify::SIGNATURE_CONTEXT_HEADERS.contains(&n)
                                        || own_signature == Some(n)));
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::compile::PlaceholderSecrets;

    /// The jobs of one request with these headers and payload, to a source declared by `source`
    /// whose one rule has the actions `actions`.
    fn jobs(
        source: &str,
        actions: &str,
        headers: &[(&str, &str)],
        payload: serde_json::Value,
    ) -> Vec<NewJob> {
        let text = format!(
            "secret s = env(\"S\")\nsecret out = env(\"OUT\")\nsource src: {source}\n\
             target t {{ post \"http://127.0.0.1:9/\" }}\nrule \"r\" {{ from src {actions} }}\n"
        );
        let loaded =
            crate::load::load_text("jobs.hook", None, text.as_bytes(), &PlaceholderSecrets);
        let rules = loaded
            .result
            .unwrap_or_else(|d| panic!("{}", d.render(&loaded.files, false)))
            .rules;
        let headers: crate::pairs::Pairs = headers.iter().copied().collect();
        let event = Event::new(
            &rules,
            0,
            Some("deploy".into()),
            headers,
            crate::pairs::Pairs::default(),
            payload,
        );
        let outcome = crate::eval::evaluate(&rules, &event);
        jobs_for(&rules, &event, &outcome, "d1", b"{}")
    }

    /// The headers of the forward job `headers` leads to, from a source declared by `source`.
    fn forwarded(source: &str, forward: &str, headers: &[(&str, &str)]) -> Vec<String> {
        let jobs = jobs(source, forward, headers, serde_json::json!({}));
        assert_eq!(jobs.len(), 1, "one forward");
        jobs[0].headers.iter().map(|(n, _)| n.clone()).collect()
    }

    #[test]
    fn a_forward_never_passes_on_a_sources_own_token_header() {
        let sent = [
            ("X-Deploy-Token", "the-secret-itself"),
            ("Authorization", "Bearer also-secret"),
            ("X-Request-Id", "r1"),
            ("Content-Length", "2"),
        ];
        let source = "generic { secret s; token header \"X-Deploy-Token\" }";
        for forward in ["forward t", "forward t sign with out"] {
            assert_eq!(
                forwarded(source, forward, &sent),
                ["x-request-id"],
                "{forward}"
            );
        }
    }

    #[test]
    fn a_long_check_key_is_planned_as_it_will_be_stored() {
        let source = "generic { secret s; token header \"X-Token\" }";
        for (k, stored) in [
            ("short".to_string(), "short".to_string()),
            ("k".repeat(600), crate::queue::stored_key("k".repeat(600))),
        ] {
            let planned = jobs(
                source,
                "queue check t key \"${$.k}\"",
                &[],
                serde_json::json!({ "k": k }),
            );
            assert_eq!(planned[0].key.as_deref(), Some(stored.as_str()));
        }
        assert!(crate::queue::stored_key("k".repeat(600)).starts_with("sha256:"));
    }

    #[test]
    fn a_forward_never_passes_on_a_senders_x_hookgate_headers() {
        let sent = [
            ("X-Hookgate-Coalesced", "999"),
            ("X-Hookgate-Delivery", "someone-else"),
            ("X-Hookgate", "not ours"),
            ("X-Request-Id", "r1"),
        ];
        let source = "generic { secret s; token header \"X-Token\" }";
        assert_eq!(
            forwarded(source, "forward t", &sent),
            ["x-hookgate", "x-request-id"]
        );
    }

    #[test]
    fn a_re_signed_forward_drops_a_generic_hmac_sources_own_signature_header() {
        let sent = [("X-Deploy-Sig", "sha256=abcd"), ("X-Request-Id", "r1")];
        let source = "generic_hmac { secret s; header \"X-Deploy-Sig\" }";
        // Passed on as is, the receiver can check it with the sender's secret; re-signed, it would be
        // a second, wrong signature beside the new one.
        assert_eq!(
            forwarded(source, "forward t", &sent),
            ["x-deploy-sig", "x-request-id"]
        );
        assert_eq!(
            forwarded(source, "forward t sign with out", &sent),
            ["x-request-id"]
        );
    }
}
