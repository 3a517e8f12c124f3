//! Generates Concourse-style rules files for the benchmarks: one GitHub source, and per pipeline a
//! check target and a rule filtering on repository and branch, as operators with thousands of
//! pipelines write them. Shared by the benchmarks with `#[path]`.

use std::fmt::Write;

/// A rules file with `n` rules (and `n` targets). Every tenth rule also tests a commit message
/// regex, every seventh a containment filter, so the compiler sees every kind of predicate.
#[allow(dead_code)]
pub(crate) fn concourse_rules(n: usize) -> String {
    let mut out = String::with_capacity(n * 400);
    out.push_str(
        "secret gh = env(\"GITHUB_WEBHOOK_SECRET\")\nsecret ci = env(\"CONCOURSE_TOKEN\")\n",
    );
    out.push_str("source org: github { secret gh }\n\n");
    for i in 0..n {
        let _ = write!(
            out,
            "target check_{i} {{\n  post \"https://ci.example.com/api/v1/teams/t{team}/pipelines/p{i}/resources/repo/check/webhook?webhook_token=${{secret.ci}}\"\n  rate 1 per 10s\n}}\n",
            team = i % 50
        );
        let _ = write!(
            out,
            "rule \"pipeline {i}\" {{\n  from org\n  on \"push\"\n  when $.repository.full_name == \"acme/repo-{i}\" and $.ref == \"refs/heads/main\""
        );
        if i % 10 == 0 {
            out.push_str("\n   and not $.head_commit.message matches /\\[(skip ci|ci skip)\\]/i");
        }
        if i % 7 == 0 {
            let _ = write!(
                out,
                "\n   and payload contains {{\"repository\": {{\"owner\": {{\"login\": \"acme\"}}}}}}"
            );
        }
        let _ = write!(
            out,
            "\n  queue check check_{i} key \"${{$.repository.full_name}}\"\n}}\n\n"
        );
    }
    out
}

/// Where the rules of [`containment_rules`] deliver.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[allow(dead_code)]
pub(crate) enum Targets {
    /// One target per rule, as Concourse's per-resource check webhooks are.
    PerRule,
    /// One target shared by every rule, each rule with its own key.
    Shared,
}

/// A rules file with `n` rules written as Concourse's `payload_filter` is translated: `payload
/// contains {"repository": {"full_name": "acme/repo-N"}, "ref": "refs/heads/main"}`, each rule
/// queueing a check of its own target or of one shared target.
#[allow(dead_code)]
pub(crate) fn containment_rules(n: usize, targets: Targets) -> String {
    let mut out = String::with_capacity(n * 400);
    out.push_str(
        "secret gh = env(\"GITHUB_WEBHOOK_SECRET\")\nsecret ci = env(\"CONCOURSE_TOKEN\")\n",
    );
    out.push_str("source org: github { secret gh }\n\n");
    if targets == Targets::Shared {
        out.push_str(
            "target concourse {\n  post \"https://ci.example.com/api/v1/hooks/github?webhook_token=${secret.ci}\"\n  rate 1 per 10s\n}\n\n",
        );
    }
    for i in 0..n {
        let target = match targets {
            Targets::PerRule => {
                let _ = write!(
                    out,
                    "target check_{i} {{\n  post \"https://ci.example.com/api/v1/teams/t{team}/pipelines/p{i}/resources/repo/check/webhook?webhook_token=${{secret.ci}}\"\n  rate 1 per 10s\n}}\n",
                    team = i % 50
                );
                format!("check_{i}")
            }
            Targets::Shared => "concourse".to_string(),
        };
        let _ = write!(
            out,
            "rule \"pipeline {i}\" {{\n  from org\n  on \"push\"\n  when payload contains {{\"repository\": {{\"full_name\": \"acme/repo-{i}\"}}, \"ref\": \"refs/heads/main\"}}\n  queue check {target} key \"acme/repo-{i}\"\n}}\n\n"
        );
    }
    out
}
