//! One prepare stage, one answer: for any raw body, the fast path (index + sparse payload) and the full
//! parse give the same whole decision — status, matched rules, rendered jobs.
//!
//! Bodies are raw bytes: valid JSON, JSON with repeated keys, invalid UTF-8, huge numbers, deep nesting,
//! non-JSON and form bodies, sent to sources whose rules the index decides alone, whose rules read only
//! simple paths, and whose rules need the whole payload.

mod support;

use proptest::prelude::*;
use serde_json::{Value, json};

use hookgate::pairs::Pairs;
use hookgate::prepare::{Head, Malformed, Options, View, prepare};
use hookgate::ruleset::RuleSet;
use hookgate::server::handler::{Decision, decide};

const RULES: &str = r#"
target ci { post "http://127.0.0.1:9/ci" }

# Indexed: every rule has a required literal leaf, and reads only simple paths (sparse payload).
source indexed: github { secret k }
rule "app main" {
  from indexed
  on "push"
  when $.repository.full_name == "acme/app" and $.ref == "refs/heads/main"
  notify ci {"url": $.repository.ssh_url, "ref": "${$.ref}", "n": $.size, "who": $.pusher}
}
rule "worker any branch" {
  from indexed
  on "push", "create"
  when payload contains {"repository": {"full_name": "acme/worker"}} and not $.head_commit.message contains "[skip ci]"
  queue check ci key "${$.repository.full_name}:${$.ref}"
}
rule "release tags" {
  from indexed
  on "create"
  when $.ref_type in ["tag"] and $.ref starts with "v"
  forward ci
}

# Candidates from the index, but a rule reads a path with a wildcard: the full payload is parsed, and
# the index reads the paths of the other required leaves (`ref`) alone.
source wide: github { secret k }
rule "any commit says deploy" {
  from wide
  on "push"
  when $.repository.full_name == "acme/app" and any $.commits[*].message contains "deploy"
  notify ci {"messages": $.commits[*].message}
}
rule "raw body" {
  from wide
  on "push"
  when $.repository.full_name == "acme/worker" and $.ref == "refs/heads/main"
  notify ci
}

# A rule with no required leaf: the index cannot decide alone.
source scanned: github { secret k }
rule "anything mentioning main" {
  from scanned
  when $.ref ends with "/main" or $.size > 2
  notify ci {"ref": $.ref, "size": $.size}
}

# The source's `events` list filters.
source filtered: github { secret k events "push" }
rule "filtered push" {
  from filtered
  when $.repository.full_name == "acme/app"
  notify ci {"ok": true}
}

# Form deliveries are Gitea's and GitHub's other content type.
source forms: gitea { secret k }
rule "gitea push" {
  from forms
  on "push"
  when $.repository.full_name == "acme/app"
  notify ci {"ref": $.ref}
}

# A body-named event: the payload is always parsed.
source std: standard_webhooks { secret sw }
rule "std push" {
  from std
  on "push"
  when $.data.ref == "refs/heads/main"
  notify ci {"id": $.data.id}
}
"#;

fn rules() -> RuleSet {
    support::compile(
        &format!("secret k = env(\"K\")\nsecret sw = env(\"SW\")\n{RULES}"),
        &[("sw", "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw")],
    )
}

/// The whole decision for a request, with the fast path on or off.
fn decision(
    rules: &RuleSet,
    source: usize,
    headers: &[(String, String)],
    body: &[u8],
    fast: bool,
) -> (Result<Decision, Malformed>, Option<&'static str>) {
    let src = &rules.sources()[source];
    let headers = Pairs::from(headers);
    let none = Pairs::default();
    // The fast way is the server's: the head read first (its span is made with it), then handed on;
    // the reference reads everything in `prepare`.
    let head = if fast {
        Head::read(src.kind(), &headers, &none)
    } else {
        None
    };
    match prepare(src, head, &headers, &none, body, Options { fast }) {
        Err(m) => (Err(m), None),
        Ok(prepared) => {
            let view = match &prepared.view {
                View::None { .. } => "none",
                View::Sparse(_) => "sparse",
                View::Full(_) => "full",
                View::Handshake(_) => "handshake",
            };
            let delivery = prepared.delivery.clone().unwrap_or("assigned".into());
            let d = decide(rules, source, &headers, &none, body, prepared, &delivery);
            (Ok(d), Some(view))
        }
    }
}

fn repository() -> impl Strategy<Value = &'static str> {
    prop_oneof![Just("acme/app"), Just("acme/worker"), Just("acme/other")]
}

fn git_ref() -> impl Strategy<Value = &'static str> {
    prop_oneof![
        Just("refs/heads/main"),
        Just("refs/heads/feature"),
        Just("v1.2.0"),
        Just("refs/tags/v2")
    ]
}

/// A GitHub-like push, as a `Value`.
fn push() -> impl Strategy<Value = Value> {
    (
        repository(),
        git_ref(),
        prop_oneof![Just("tag"), Just("branch")],
        "[a-z \\[\\]]{0,16}",
        prop::collection::vec("[a-z ]{0,10}", 0..3),
        0u64..5,
    )
        .prop_map(|(repo, r, ref_type, message, commits, size)| {
            json!({
                "ref": r,
                "ref_type": ref_type,
                "size": size,
                "pusher": {"name": "octocat", "email": null},
                "repository": {"full_name": repo, "ssh_url": format!("git@github.com:{repo}.git")},
                "head_commit": {"message": message},
                "commits": commits.iter().map(|m| json!({"message": m})).collect::<Vec<_>>(),
                "data": {"ref": r, "id": 7},
            })
        })
}

/// Ways of damaging or stretching a serialized payload; each keeps the result interesting.
#[derive(Debug, Clone)]
enum Mutation {
    None,
    /// A second `"repository"` (or another key) at the top level, before or after the first.
    RepeatKey(&'static str, bool),
    /// Invalid UTF-8 in a string no rule reads.
    BadUtf8,
    /// A number no `f64` holds, or one beyond `u64`.
    HugeNumber(&'static str),
    /// Nesting deeper than a parser allows, in a field no rule reads.
    Deep(usize),
    /// Cut short.
    Truncate(usize),
    /// Not JSON at all.
    Garbage(Vec<u8>),
    /// A trailing comma.
    TrailingComma,
}

fn mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        3 => Just(Mutation::None),
        1 => (prop_oneof![Just("repository"), Just("ref"), Just("commits"), Just("size")], any::<bool>())
            .prop_map(|(k, before)| Mutation::RepeatKey(k, before)),
        1 => Just(Mutation::BadUtf8),
        1 => prop_oneof![Just("1e999"), Just("-1e999"), Just("123456789012345678901234567890"), Just("1e-999"), Just("-0")]
            .prop_map(Mutation::HugeNumber),
        1 => prop_oneof![Just(100usize), Just(200), Just(100_000)].prop_map(Mutation::Deep),
        1 => (1usize..400).prop_map(Mutation::Truncate),
        1 => prop::collection::vec(any::<u8>(), 0..40).prop_map(Mutation::Garbage),
        1 => Just(Mutation::TrailingComma),
    ]
}

fn apply(payload: &Value, m: &Mutation) -> Vec<u8> {
    let text = serde_json::to_string(payload).unwrap();
    // Everything after the opening brace: the first member onward.
    let rest = &text[1..];
    match m {
        Mutation::None => text.into_bytes(),
        Mutation::RepeatKey(key, before) => {
            let other = match *key {
                "repository" => json!({"full_name": "acme/app"}),
                "ref" => json!("refs/heads/main"),
                "commits" => json!("not a list"),
                _ => json!(3),
            };
            let member = format!("\"{key}\":{other}");
            if *before {
                format!("{{{member},{rest}").into_bytes()
            } else {
                format!("{},{member}}}", &text[..text.len() - 1]).into_bytes()
            }
        }
        Mutation::BadUtf8 => {
            let mut out = b"{\"x\":\"\xff\xfe\",".to_vec();
            out.extend_from_slice(rest.as_bytes());
            out
        }
        Mutation::HugeNumber(n) => format!("{{\"big\":{n},{rest}").into_bytes(),
        Mutation::Deep(depth) => format!(
            "{{\"deep\":{}1{},{rest}",
            "[".repeat(*depth),
            "]".repeat(*depth)
        )
        .into_bytes(),
        Mutation::Truncate(n) => text.as_bytes()[..(*n).min(text.len() - 1)].to_vec(),
        Mutation::Garbage(bytes) => bytes.clone(),
        Mutation::TrailingComma => format!("{},}}", &text[..text.len() - 1]).into_bytes(),
    }
}

/// The body as sent: JSON, a form with the JSON in `payload`, or a form without it.
#[derive(Debug, Clone, Copy)]
enum Encoding {
    Json,
    FormPayload,
    FormOther,
}

fn encode(json: &[u8], encoding: Encoding) -> (Vec<u8>, &'static str) {
    match encoding {
        Encoding::Json => (json.to_vec(), "application/json"),
        Encoding::FormPayload => {
            let mut out = b"payload=".to_vec();
            out.extend(
                form_urlencoded::byte_serialize(json)
                    .flat_map(str::bytes)
                    .collect::<Vec<u8>>(),
            );
            (out, "application/x-www-form-urlencoded")
        }
        Encoding::FormOther => (
            b"ref=refs%2Fheads%2Fmain&size=3".to_vec(),
            "application/x-www-form-urlencoded",
        ),
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 384, ..ProptestConfig::default() })]

    #[test]
    fn fast_and_full_paths_decide_alike(
        payload in push(),
        m in mutation(),
        encoding in prop_oneof![4 => Just(Encoding::Json), 1 => Just(Encoding::FormPayload), 1 => Just(Encoding::FormOther)],
        event in prop_oneof![Just(Some("push")), Just(Some("create")), Just(Some("pull_request")), Just(None)],
    ) {
        let rules = rules();
        let json = apply(&payload, &m);
        let (body, content_type) = encode(&json, encoding);
        for source in 0..rules.sources().len() {
            let kind = rules.sources()[source].kind().name();
            let mut headers = vec![
                ("content-type".to_string(), content_type.to_string()),
                ("x-github-delivery".to_string(), "d-1".to_string()),
                ("x-gitea-delivery".to_string(), "d-1".to_string()),
                ("webhook-id".to_string(), "msg_1".to_string()),
            ];
            if let Some(e) = event {
                headers.push(("x-github-event".to_string(), e.to_string()));
                headers.push(("x-gitea-event".to_string(), e.to_string()));
            }
            let (fast, fast_view) = decision(&rules, source, &headers, &body, true);
            let (full, full_view) = decision(&rules, source, &headers, &body, false);
            prop_assert_eq!(
                &fast, &full,
                "source {} ({}), views {:?} / {:?}, body {:?}",
                source, kind, fast_view, full_view, String::from_utf8_lossy(&body)
            );
            // Whatever the rules read, a body that is not JSON is a 400.
            let parsed = match encoding {
                Encoding::FormOther => Ok(Value::Null),
                _ => serde_json::from_slice::<Value>(&json).map(|_| Value::Null),
            };
            if parsed.is_err() {
                prop_assert_eq!(full, Err(Malformed::NotJson));
            }
        }
    }
}

/// A JSON GitHub push's headers, for the pinned cases.
fn json_push_headers() -> Vec<(String, String)> {
    vec![
        ("content-type".to_string(), "application/json".to_string()),
        ("x-github-event".to_string(), "push".to_string()),
        ("x-github-delivery".to_string(), "d-1".to_string()),
    ]
}

/// The cases the issue reported, each pinned.
#[test]
fn reported_disagreements_are_gone() {
    let rules = rules();
    let indexed = 0;
    let headers = json_push_headers();
    // Invalid UTF-8, out-of-range numbers and 100k-deep nesting in a field no rule reads are all
    // refused the way a full parse refuses them (or accepted alike).
    let deep = format!(
        "{{\"ref\":\"refs/heads/main\",\"x\":{}1{}}}",
        "[".repeat(100_000),
        "]".repeat(100_000)
    );
    for body in [
        b"{\"ref\":\"refs/heads/main\",\"x\":\"\xff\xfe\"}".to_vec(),
        deep.into_bytes(),
    ] {
        for source in 0..rules.sources().len() {
            assert_eq!(
                decision(&rules, source, &headers, &body, true).0,
                Err(Malformed::NotJson),
                "source {source}"
            );
        }
    }
    let huge = b"{\"ref\":\"refs/heads/main\",\"x\":1e999}";
    for source in 0..rules.sources().len() {
        assert_eq!(
            decision(&rules, source, &headers, huge, true).0,
            decision(&rules, source, &headers, huge, false).0,
        );
    }
    // A repeated key: the last one counts, on both paths.
    let repeated =
        br#"{"repository":{"full_name":"acme/app"},"ref":"refs/heads/main","repository":{"name":"x"}}"#;
    assert_eq!(
        decision(&rules, indexed, &headers, repeated, true).0,
        Ok(Decision::Nothing { filtered: false })
    );
    assert_eq!(
        decision(&rules, indexed, &headers, repeated, false).0,
        Ok(Decision::Nothing { filtered: false })
    );
}

/// The commonest non-match in CI, a push to another branch of a watched repository, is decided
/// without a payload: the repository's rule is found under its name and dropped on its `ref`. A
/// repeated `ref` counts by its last value there too.
#[test]
fn a_push_to_another_branch_of_a_watched_repository_builds_no_payload() {
    let rules = rules();
    let indexed = 0;
    let headers = json_push_headers();
    let cases: [(&[u8], &str, bool); 4] = [
        (br#"{"ref":"refs/heads/feature","repository":{"full_name":"acme/app"}}"#, "none", false),
        (br#"{"ref":"refs/heads/main","repository":{"full_name":"acme/app"}}"#, "sparse", true),
        (br#"{"ref":"refs/heads/main","repository":{"full_name":"acme/app"},"ref":"refs/heads/x"}"#, "none", false),
        (br#"{"ref":"refs/heads/x","repository":{"full_name":"acme/app"},"ref":"refs/heads/main"}"#, "sparse", true),
    ];
    for (body, view, runs) in cases {
        let (fast, fast_view) = decision(&rules, indexed, &headers, body, true);
        let (full, _) = decision(&rules, indexed, &headers, body, false);
        let text = String::from_utf8_lossy(body);
        assert_eq!(fast_view, Some(view), "{text}");
        assert_eq!(fast, full, "{text}");
        assert_eq!(matches!(fast, Ok(Decision::Run { .. })), runs, "{text}");
    }
}

#[test]
fn a_github_or_gitea_form_without_payload_is_malformed_and_slack_forms_are_fields() {
    let rules = support::compile(
        "secret k = env(\"K\")\nsource gh: github { secret k }\nsource ge: gitea { secret k }\nsource sl: slack { secret k }\ntarget ci { post \"http://127.0.0.1:9/\" }\nrule \"r\" { from * when $.command == \"/deploy\" notify ci {\"text\": $.text} }\n",
        &[],
    );
    let headers = vec![(
        "content-type".to_string(),
        "application/x-www-form-urlencoded".to_string(),
    )];
    let body = b"command=%2Fdeploy&text=app";
    for source in [0, 1] {
        assert_eq!(
            decision(&rules, source, &headers, body, true).0,
            Err(Malformed::NoPayloadField)
        );
    }
    match decision(&rules, 2, &headers, body, true).0 {
        Ok(Decision::Run { jobs, .. }) => {
            assert_eq!(jobs[0].body, br#"{"text":"app"}"#.to_vec())
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn a_delivery_id_with_invalid_utf8_is_refused_not_merged_with_another() {
    let rules = rules();
    // hyper hands header values over as bytes; the server decodes them lossily, so two different
    // invalid ids would both become "d-\u{FFFD}".
    for id in ["d-\u{FFFD}", &"x".repeat(300)] {
        let headers = vec![
            ("x-github-event".to_string(), "push".to_string()),
            ("x-github-delivery".to_string(), id.to_string()),
        ];
        assert_eq!(
            decision(&rules, 0, &headers, b"{}", true).0,
            Err(Malformed::DeliveryId)
        );
    }
}

#[test]
fn integers_beyond_2_pow_53_keep_their_digits_in_rendered_templates() {
    let rules = rules();
    let headers = vec![
        ("x-github-event".to_string(), "push".to_string()),
        ("x-github-delivery".to_string(), "d-1".to_string()),
    ];
    for n in [
        "9007199254740993",
        "18446744073709551615",
        "-9223372036854775807",
        "123456789012345678901234567890",
    ] {
        let body = format!(
            r#"{{"repository":{{"full_name":"acme/app","ssh_url":"u"}},"ref":"refs/heads/main","size":{n},"pusher":1}}"#
        );
        for fast in [true, false] {
            let Ok(Decision::Run { jobs, .. }) =
                decision(&rules, 0, &headers, body.as_bytes(), fast).0
            else {
                panic!("{n}: no match");
            };
            let text = String::from_utf8(jobs[0].body.clone()).unwrap();
            assert!(text.contains(&format!("\"n\":{n}")), "{text}");
        }
    }
}

#[test]
fn a_head_is_used_only_for_the_kind_of_source_it_was_read_for() {
    let rules = rules();
    let source = |name: &str| {
        rules
            .sources()
            .iter()
            .find(|s| s.name() == name)
            .unwrap_or_else(|| panic!("no source {name}"))
    };
    let (github, gitea) = (source("indexed"), source("forms"));
    // A request naming an event and a delivery for both providers.
    let headers = Pairs::from(
        &[
            ("x-github-event", "push"),
            ("x-github-delivery", "gh-1"),
            ("x-gitea-event", "create"),
            ("x-gitea-delivery", "gt-1"),
            ("content-type", "application/json"),
        ]
        .map(|(n, v)| (n.to_string(), v.to_string()))[..],
    );
    let none = Pairs::default();
    let body = br#"{"repository": {"full_name": "acme/other"}, "ref": "refs/heads/main"}"#;
    let identity = |head, source| {
        let p = prepare(source, head, &headers, &none, body, Options { fast: true }).unwrap();
        (p.event, p.delivery)
    };
    let github_head = Head::read(github.kind(), &headers, &none);
    let gitea_head = Head::read(gitea.kind(), &headers, &none);
    let github_ids = (Some("push".to_string()), Some("gh-1".to_string()));
    assert_eq!(identity(github_head, github), github_ids);
    assert_eq!(identity(None, github), github_ids);
    // Gitea's head handed to a GitHub source is read again for GitHub.
    assert_eq!(identity(gitea_head, github), github_ids);
}
