//! What hookgate knows about each webhook sender: its kind name, the events it sends, and which
//! source options apply to it. Pure data; verification itself lives in `verify`.
//!
//! The event lists come from the providers' documentation (summarised in `docs/providers.md`).
//! They drive the `rules::unknown_event` and `rules::event_never_sent` lints, never request handling:
//! an event missing from a list still reaches rules at run time.

use std::fmt::{self, Display};

/// A provider kind, as written after `source NAME:`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ProviderKind {
    GitHub,
    GitLab,
    Bitbucket,
    BitbucketServer,
    Gitea,
    Forgejo,
    DockerHub,
    Quay,
    Harbor,
    Slack,
    StandardWebhooks,
    GenericHmac,
    Generic,
}

/// Every kind name, in the order documentation lists them.
pub const KINDS: &[&str] = &[
    "github",
    "gitlab",
    "bitbucket",
    "bitbucket_server",
    "gitea",
    "forgejo",
    "dockerhub",
    "quay",
    "harbor",
    "slack",
    "standard_webhooks",
    "generic_hmac",
    "generic",
];

const ALL: &[ProviderKind] = &[
    ProviderKind::GitHub,
    ProviderKind::GitLab,
    ProviderKind::Bitbucket,
    ProviderKind::BitbucketServer,
    ProviderKind::Gitea,
    ProviderKind::Forgejo,
    ProviderKind::DockerHub,
    ProviderKind::Quay,
    ProviderKind::Harbor,
    ProviderKind::Slack,
    ProviderKind::StandardWebhooks,
    ProviderKind::GenericHmac,
    ProviderKind::Generic,
];

impl ProviderKind {
    pub fn from_name(name: &str) -> Option<ProviderKind> {
        let i = KINDS.iter().position(|k| *k == name)?;
        Some(ALL[i])
    }

    pub fn name(self) -> &'static str {
        // INVARIANT: `ALL` and `KINDS` list the kinds in the same order.
        let i = ALL
            .iter()
            .position(|k| *k == self)
            .unwrap_or_else(|| unreachable!("ALL lists every kind"));
        KINDS[i]
    }

    /// Kinds that cannot sign requests: the URL path, derived from the secret, is the credential.
    pub fn url_token(self) -> bool {
        matches!(self, ProviderKind::DockerHub | ProviderKind::Quay)
    }

    /// Kinds whose signatures carry a timestamp, so `tolerance` applies.
    pub fn timestamped(self) -> bool {
        matches!(
            self,
            ProviderKind::Slack | ProviderKind::StandardWebhooks | ProviderKind::GitLab
        )
    }

    /// The events this kind sends, or `None` when the set is open (user-defined event types).
    pub fn known_events(self) -> Option<&'static [&'static str]> {
        Some(match self {
            ProviderKind::GitHub => GITHUB_EVENTS,
            ProviderKind::GitLab => GITLAB_EVENTS,
            ProviderKind::Bitbucket => BITBUCKET_EVENTS,
            ProviderKind::BitbucketServer => BITBUCKET_SERVER_EVENTS,
            ProviderKind::Gitea | ProviderKind::Forgejo => GITEA_EVENTS,
            ProviderKind::DockerHub => &["push"],
            ProviderKind::Quay => QUAY_EVENTS,
            ProviderKind::Harbor => HARBOR_EVENTS,
            ProviderKind::Slack
            | ProviderKind::StandardWebhooks
            | ProviderKind::GenericHmac
            | ProviderKind::Generic => {
                return None;
            }
        })
    }

    /// Whether this kind is known to send `event`; open kinds send anything.
    pub fn sends(self, event: &str) -> bool {
        self.known_events()
            .is_none_or(|events| events.contains(&event))
    }
}

impl Display for ProviderKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// The closed-list kind (other than `kind`) that sends `event`, if any: `Push Hook` is gitlab's.
pub fn sent_by_other(kind: ProviderKind, event: &str) -> Option<ProviderKind> {
    ALL.iter()
        .copied()
        .filter(|k| *k != kind && !(is_gitea_family(*k) && is_gitea_family(kind)))
        .find(|k| {
            k.known_events()
                .is_some_and(|events| events.contains(&event))
        })
}

fn is_gitea_family(kind: ProviderKind) -> bool {
    matches!(kind, ProviderKind::Gitea | ProviderKind::Forgejo)
}

/// The event of `kind` that means the same as `event` does for another kind: `Push Hook` → `push`.
pub fn equivalent_event(kind: ProviderKind, event: &str) -> Option<&'static str> {
    let ours = kind.known_events()?;
    EQUIVALENTS
        .iter()
        .find(|group| group.contains(&event))
        .and_then(|group| group.iter().find(|e| ours.contains(e)).copied())
}

/// Events that mean the same thing across providers, for "did you mean" across kinds.
const EQUIVALENTS: &[&[&str]] = &[
    &[
        "push",
        "Push Hook",
        "repo:push",
        "repo:refs_changed",
        "repo_push",
        "PUSH_ARTIFACT",
        "harbor.artifact.pushed",
    ],
    &["create", "Tag Push Hook"],
    &[
        "pull_request",
        "Merge Request Hook",
        "pullrequest:created",
        "pr:opened",
    ],
    &["release", "Release Hook"],
    &[
        "issue_comment",
        "Note Hook",
        "pullrequest:comment_created",
        "pr:comment:added",
    ],
    &["issues", "Issue Hook", "issue:created"],
    &["workflow_run", "Pipeline Hook"],
    &["workflow_job", "Job Hook"],
    &["deployment", "Deployment Hook"],
    &["ping", "diagnostics:ping"],
    &["fork", "repo:fork", "repo:forked"],
];

const GITHUB_EVENTS: &[&str] = &[
    "branch_protection_configuration",
    "branch_protection_rule",
    "check_run",
    "check_suite",
    "code_scanning_alert",
    "commit_comment",
    "create",
    "custom_property",
    "custom_property_values",
    "delete",
    "dependabot_alert",
    "deploy_key",
    "deployment",
    "deployment_protection_rule",
    "deployment_review",
    "deployment_status",
    "discussion",
    "discussion_comment",
    "fork",
    "github_app_authorization",
    "gollum",
    "installation",
    "installation_repositories",
    "installation_target",
    "issue_comment",
    "issues",
    "label",
    "marketplace_purchase",
    "member",
    "membership",
    "merge_group",
    "meta",
    "milestone",
    "org_block",
    "organization",
    "package",
    "page_build",
    "personal_access_token_request",
    "ping",
    "project",
    "project_card",
    "project_column",
    "projects_v2",
    "projects_v2_item",
    "projects_v2_status_update",
    "public",
    "pull_request",
    "pull_request_review",
    "pull_request_review_comment",
    "pull_request_review_thread",
    "push",
    "registry_package",
    "release",
    "repository",
    "repository_advisory",
    "repository_dispatch",
    "repository_import",
    "repository_ruleset",
    "repository_vulnerability_alert",
    "secret_scanning_alert",
    "secret_scanning_alert_location",
    "secret_scanning_scan",
    "security_advisory",
    "security_and_analysis",
    "sponsorship",
    "star",
    "status",
    "sub_issues",
    "team",
    "team_add",
    "watch",
    "workflow_dispatch",
    "workflow_job",
    "workflow_run",
];

const GITLAB_EVENTS: &[&str] = &[
    "Push Hook",
    "Tag Push Hook",
    "Issue Hook",
    "Confidential Issue Hook",
    "Note Hook",
    "Confidential Note Hook",
    "Merge Request Hook",
    "Wiki Page Hook",
    "Pipeline Hook",
    "Job Hook",
    "Build Hook",
    "Deployment Hook",
    "Feature Flag Hook",
    "Release Hook",
    "Milestone Hook",
    "Emoji Hook",
    "Resource Access Token Hook",
    "Member Hook",
    "Subgroup Hook",
    "Project Hook",
    "Vulnerability Hook",
    "System Hook",
];

const BITBUCKET_EVENTS: &[&str] = &[
    "repo:push",
    "repo:fork",
    "repo:updated",
    "repo:transfer",
    "repo:imported",
    "repo:deleted",
    "repo:commit_comment_created",
    "repo:commit_status_created",
    "repo:commit_status_updated",
    "issue:created",
    "issue:updated",
    "issue:comment_created",
    "pullrequest:created",
    "pullrequest:updated",
    "pullrequest:changes_request_created",
    "pullrequest:changes_request_removed",
    "pullrequest:approved",
    "pullrequest:unapproved",
    "pullrequest:fulfilled",
    "pullrequest:rejected",
    "pullrequest:comment_created",
    "pullrequest:comment_updated",
    "pullrequest:comment_deleted",
    "pullrequest:comment_resolved",
    "pullrequest:comment_reopened",
    "project:updated",
];

const BITBUCKET_SERVER_EVENTS: &[&str] = &[
    "repo:refs_changed",
    "repo:modified",
    "repo:forked",
    "repo:comment:added",
    "repo:comment:edited",
    "repo:comment:deleted",
    "repo:secret_detected",
    "mirror:repo_synchronized",
    "pr:opened",
    "pr:from_ref_updated",
    "pr:to_ref_updated",
    "pr:modified",
    "pr:reviewer:updated",
    "pr:reviewer:approved",
    "pr:reviewer:unapproved",
    "pr:reviewer:needs_work",
    "pr:reviewer:changes_requested",
    "pr:merged",
    "pr:declined",
    "pr:deleted",
    "pr:comment:added",
    "pr:comment:edited",
    "pr:comment:deleted",
    "project:modified",
    "diagnostics:ping",
];

const GITEA_EVENTS: &[&str] = &[
    "create",
    "delete",
    "fork",
    "push",
    "issues",
    "issue_assign",
    "issue_label",
    "issue_milestone",
    "issue_comment",
    "pull_request",
    "pull_request_assign",
    "pull_request_label",
    "pull_request_milestone",
    "pull_request_comment",
    "pull_request_approved",
    "pull_request_rejected",
    "pull_request_review_approved",
    "pull_request_review_rejected",
    "pull_request_review_comment",
    "pull_request_review_request",
    "pull_request_sync",
    "wiki",
    "repository",
    "release",
    "package",
    "status",
    "workflow_run",
    "workflow_job",
];

const QUAY_EVENTS: &[&str] = &[
    "repo_push",
    "build_queued",
    "build_start",
    "build_success",
    "build_failure",
    "build_cancelled",
    "vulnerability_found",
    "repo_mirror_sync_started",
    "repo_mirror_sync_success",
    "repo_mirror_sync_failed",
    "repo_image_expiry",
];

const HARBOR_EVENTS: &[&str] = &[
    "PUSH_ARTIFACT",
    "PULL_ARTIFACT",
    "DELETE_ARTIFACT",
    "SCANNING_COMPLETED",
    "SCANNING_STOPPED",
    "SCANNING_FAILED",
    "QUOTA_EXCEED",
    "QUOTA_WARNING",
    "REPLICATION",
    "TAG_RETENTION",
    "harbor.artifact.pushed",
    "harbor.artifact.pulled",
    "harbor.artifact.deleted",
    "harbor.scan.completed",
    "harbor.scan.failed",
    "harbor.scan.stopped",
    "harbor.quota.exceeded",
    "harbor.quota.warned",
    "harbor.replication.status.changed",
    "harbor.tag_retention.finished",
];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kind_names_round_trip() {
        for name in KINDS {
            assert_eq!(
                ProviderKind::from_name(name).map(ProviderKind::name),
                Some(*name)
            );
        }
        assert_eq!(ProviderKind::from_name("svn"), None);
    }

    #[test]
    fn gitlab_push_maps_to_github_push() {
        assert_eq!(
            sent_by_other(ProviderKind::GitHub, "Push Hook"),
            Some(ProviderKind::GitLab)
        );
        assert_eq!(
            equivalent_event(ProviderKind::GitHub, "Push Hook"),
            Some("push")
        );
        assert_eq!(
            equivalent_event(ProviderKind::Bitbucket, "push"),
            Some("repo:push")
        );
        // Gitea and Forgejo send the same events; neither is "another provider" for the other.
        assert_eq!(
            sent_by_other(ProviderKind::Forgejo, "pull_request_sync"),
            None
        );
        assert!(ProviderKind::Forgejo.sends("pull_request_sync"));
    }
}

/// Whether this kind names its event in headers (or not at all), so the event is known before the
/// body is parsed.
pub fn event_from_headers(kind: ProviderKind) -> bool {
    !matches!(
        kind,
        ProviderKind::Quay
            | ProviderKind::Harbor
            | ProviderKind::Slack
            | ProviderKind::StandardWebhooks
    )
}

/// Headers (or query parameters) as the pure stages see them: `(lowercase name, value)` pairs, in
/// arrival order.
pub type Headers = crate::pairs::Pairs;

fn body_str<'a>(payload: &'a serde_json::Value, path: &[&str]) -> Option<&'a str> {
    path.iter().try_fold(payload, |v, key| v.get(key))?.as_str()
}

/// The event name and delivery id of a request, where this kind puts them
/// (`docs/providers.md`; summarised in `docs/rules-language.md`).
pub fn identify(
    kind: ProviderKind,
    headers: &Headers,
    query: &Headers,
    payload: &serde_json::Value,
) -> (Option<String>, Option<String>) {
    let h = |name| headers.get(name).map(String::from);
    let first = |names: &[&str]| names.iter().find_map(|n| headers.get(n)).map(String::from);
    match kind {
        ProviderKind::GitHub => (h("x-github-event"), h("x-github-delivery")),
        ProviderKind::GitLab => (
            h("x-gitlab-event"),
            first(&["idempotency-key", "webhook-id"]),
        ),
        ProviderKind::Bitbucket => (h("x-event-key"), h("x-request-uuid")),
        ProviderKind::BitbucketServer => (h("x-event-key"), h("x-request-id")),
        ProviderKind::Gitea => (
            first(&["x-gitea-event", "x-forgejo-event", "x-gogs-event"]),
            first(&["x-gitea-delivery", "x-forgejo-delivery", "x-gogs-delivery"]),
        ),
        ProviderKind::Forgejo => (
            first(&["x-forgejo-event", "x-gitea-event", "x-gogs-event"]),
            first(&["x-forgejo-delivery", "x-gitea-delivery", "x-gogs-delivery"]),
        ),
        ProviderKind::DockerHub => (Some("push".into()), None),
        ProviderKind::Quay => {
            let event = query
                .get("event")
                .map(String::from)
                .or_else(|| payload.get("updated_tags").map(|_| "repo_push".to_string()));
            (event, None)
        }
        ProviderKind::Harbor => {
            let delivery = payload
                .get("specversion")
                .and_then(|_| body_str(payload, &["id"]))
                .map(String::from);
            (body_str(payload, &["type"]).map(String::from), delivery)
        }
        ProviderKind::Slack => {
            let event = match body_str(payload, &["type"]) {
                Some("event_callback") => body_str(payload, &["event", "type"]),
                other => other,
            };
            (
                event.map(String::from),
                body_str(payload, &["event_id"]).map(String::from),
            )
        }
        ProviderKind::StandardWebhooks => (
            body_str(payload, &["type"]).map(String::from),
            h("webhook-id"),
        ),
        ProviderKind::GenericHmac | ProviderKind::Generic => (None, None),
    }
}

#[cfg(test)]
mod identify_tests {
    use super::*;
    use serde_json::json;

    fn hs(pairs: &[(&str, &str)]) -> Headers {
        pairs.iter().copied().collect()
    }

    #[test]
    fn events_and_deliveries_come_from_where_each_provider_puts_them() {
        let none = json!({});
        let no = Headers::default();
        let gh = hs(&[("x-github-event", "push"), ("x-github-delivery", "d1")]);
        assert_eq!(
            identify(ProviderKind::GitHub, &gh, &no, &none),
            (Some("push".into()), Some("d1".into()))
        );
        let gl = hs(&[("x-gitlab-event", "Push Hook"), ("idempotency-key", "k")]);
        assert_eq!(
            identify(ProviderKind::GitLab, &gl, &no, &none),
            (Some("Push Hook".into()), Some("k".into()))
        );
        let fj = hs(&[
            ("x-gitea-event", "push"),
            ("x-forgejo-event", "push"),
            ("x-forgejo-delivery", "f"),
        ]);
        assert_eq!(
            identify(ProviderKind::Forgejo, &fj, &no, &none).1,
            Some("f".into())
        );
        let slack =
            json!({"type": "event_callback", "event": {"type": "app_mention"}, "event_id": "Ev1"});
        assert_eq!(
            identify(ProviderKind::Slack, &no, &no, &slack),
            (Some("app_mention".into()), Some("Ev1".into()))
        );
        let slack = json!({"type": "url_verification", "challenge": "c"});
        assert_eq!(
            identify(ProviderKind::Slack, &no, &no, &slack).0,
            Some("url_verification".into())
        );
        let harbor = json!({"specversion": "1.0", "id": "u1", "type": "harbor.artifact.pushed"});
        assert_eq!(
            identify(ProviderKind::Harbor, &no, &no, &harbor),
            (Some("harbor.artifact.pushed".into()), Some("u1".into()))
        );
        assert_eq!(
            identify(
                ProviderKind::Harbor,
                &no,
                &no,
                &json!({"type": "PUSH_ARTIFACT"})
            )
            .1,
            None
        );
        assert_eq!(
            identify(ProviderKind::Quay, &no, &no, &json!({"updated_tags": []})).0,
            Some("repo_push".into())
        );
        let q = hs(&[("event", "build_success")]);
        assert_eq!(
            identify(ProviderKind::Quay, &no, &q, &json!({"build_id": "b"})).0,
            Some("build_success".into())
        );
        assert_eq!(
            identify(ProviderKind::Quay, &no, &no, &json!({"build_id": "b"})).0,
            None
        );
        assert_eq!(
            identify(ProviderKind::DockerHub, &no, &no, &none).0,
            Some("push".into())
        );
        // An empty header counts as missing (Gitea sends empty signature headers, others may too).
        let empty = hs(&[("x-github-event", "")]);
        assert_eq!(identify(ProviderKind::GitHub, &empty, &no, &none).0, None);
    }
}
