//! Generates Concourse-style rules files for the benchmarks: one GitHub source, and per pipeline a
//! check target and a rule filtering on repository and branch, as operators with thousands of
//! pipelines write them. Shared by the benchmarks with `#[path]`.

use std::fmt::Write;

/// A rules file with `n` rules (and `n` targets). Every tenth rule also tests a commit message
/// regex, every seventh a containment filter, so the compiler sees every kind of predicate.
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
