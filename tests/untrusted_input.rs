//! Request-facing code under arbitrary input: verification of every provider kind and the JSON
//! extraction never panic, whatever the headers and bodies.

use proptest::prelude::*;

use hookgate::compile::{SecretRef, Secrets};
use hookgate::pairs::Pairs;
use hookgate::ruleset::{SecretValue, Step};
use hookgate::verify::{Request, verify};

struct Fixed;

impl Secrets for Fixed {
    fn load(&self, name: &str, _: SecretRef<'_>) -> Result<SecretValue, String> {
        let value = if name == "sw" {
            "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
        } else {
            "s3cret"
        };
        Ok(SecretValue::new(name, value.as_bytes().to_vec()))
    }
}

/// One source of every kind (and option set).
fn rules() -> hookgate::ruleset::RuleSet {
    let text = "secret k = env(\"K\")\nsecret sw = env(\"SW\")\n\
        source github: github { secret k }\nsource gitlab: gitlab { secret k, sw }\n\
        source bitbucket: bitbucket { secret k }\nsource bitbucket_server: bitbucket_server { secret k }\n\
        source gitea: gitea { secret k }\nsource forgejo: forgejo { secret k }\nsource dockerhub: dockerhub { secret k }\n\
        source quay: quay { secret k }\nsource harbor: harbor { secret k }\nsource slack: slack { secret k }\n\
        source standard_webhooks: standard_webhooks { secret sw }\nsource flux: generic_hmac { secret k }\n\
        source fixed: generic_hmac { secret k header \"X-Sig\" algorithm sha512 encoding base64 prefix \"\" }\n\
        source header: generic { secret k token header \"X-Token\" }\nsource query: generic { secret k token query \"t\" }\n\
        target t { post \"http://127.0.0.1:9/\" }\nrule \"r\" { from * notify t }\n";
    let loaded = hookgate::load::load_text("u.hook", None, text.as_bytes(), &Fixed);
    match loaded.result {
        Ok(c) => c.rules,
        Err(d) => panic!("{}", d.render(&loaded.files, false)),
    }
}

/// Header values around the formats the verifiers parse, and plain noise.
fn value() -> impl Strategy<Value = String> {
    prop_oneof![
        Just(String::new()),
        Just("-9223372036854775808".to_string()),
        Just("9223372036854775807".to_string()),
        Just("sha256=".to_string()),
        Just("sha256=zz".to_string()),
        Just("sha1=0".to_string()),
        Just("v0=abc".to_string()),
        Just("v1,".to_string()),
        Just("v1,!!!! v1a,x v1,AAAA".to_string()),
        Just("md5=00".to_string()),
        "[a-f0-9]{0,130}".prop_map(|h| format!("sha256={h}")),
        "[ -~]{0,80}",
        any::<String>(),
    ]
}

const NAMES: &[&str] = &[
    "x-hub-signature-256",
    "x-hub-signature",
    "x-gitlab-token",
    "x-gitea-signature",
    "x-forgejo-signature",
    "authorization",
    "x-slack-signature",
    "x-slack-request-timestamp",
    "webhook-id",
    "webhook-timestamp",
    "webhook-signature",
    "x-signature",
    "x-sig",
    "x-token",
    "content-type",
];

proptest! {
    #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

    #[test]
    fn verification_never_panics(
        headers in prop::collection::vec((0..NAMES.len(), value()), 0..8),
        body in prop::collection::vec(any::<u8>(), 0..200),
        now in any::<i64>(),
    ) {
        let rules = rules();
        let headers: Pairs = headers.into_iter().map(|(i, v)| (NAMES[i], v)).collect();
        let query: Pairs = [("t", "s3cret?")].into_iter().collect();
        for source in rules.sources() {
            // Only the outcome's type is checked: nothing random may verify, nothing may panic.
            let outcome = verify(source, &Request { headers: &headers, query: &query, body: &body, now, headers_only: false });
            let url_token = matches!(source.name(), "dockerhub" | "quay");
            prop_assert!(outcome.is_err() || url_token, "{} verified random input", source.name());
        }
    }

    #[test]
    fn extraction_never_panics(
        body in prop::collection::vec(any::<u8>(), 0..300),
        json in "[\\[\\]{}\":,0-9a-z \\\\-]{0,120}",
        steps in prop::collection::vec(prop_oneof![Just(Step::Key("a".into())), Just(Step::Key("b".into())), (-3i64..3).prop_map(Step::Index)], 0..4),
    ) {
        let paths: [&[Step]; 2] = [&steps, &[]];
        let _ = hookgate::extract::extract(&body, &paths);
        let _ = hookgate::extract::extract(json.as_bytes(), &paths);
        if let Ok(values) = hookgate::extract::extract(json.as_bytes(), &paths) {
            let _ = hookgate::extract::sparse(&paths, values);
        }
    }
}
