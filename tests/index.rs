//! The rule index never changes an outcome: on random rule sets and payloads, evaluating through the
//! index gives exactly what testing every rule gives, and explanations agree with both.

use proptest::prelude::*;
use serde_json::{Value, json};

use hookgate::compile::PlaceholderSecrets;
use hookgate::eval::{evaluate, evaluate_scan};
use hookgate::event::Event;

/// Literals drawn from the same small pool as payload values, so rules do match.
fn literal() -> impl Strategy<Value = &'static str> {
    prop_oneof![
        Just("\"x\""),
        Just("\"y\""),
        Just("1"),
        Just("1.0"),
        Just("2"),
        Just("true"),
        Just("null")
    ]
}

fn path() -> impl Strategy<Value = &'static str> {
    prop_oneof![
        Just("$.a"),
        Just("$.b"),
        Just("$.c.d"),
        Just("$['c']['d']"),
        Just("$.list[0]"),
        Just("$.list[-1]"),
        Just("$.list[*]"),
        Just("$..d"),
    ]
}

fn predicate() -> impl Strategy<Value = String> {
    prop_oneof![
        (path(), literal()).prop_map(|(p, v)| format!("{p} == {v}")),
        (path(), literal()).prop_map(|(p, v)| format!("{p} != {v}")),
        (path(), literal(), literal()).prop_map(|(p, v, w)| format!("{p} in [{v}, {w}]")),
        (path(), literal()).prop_map(|(p, v)| format!("{p} contains {v}")),
        (path(), literal()).prop_map(|(p, v)| format!("all {p} == {v}")),
        path().prop_map(|p| format!("{p} exists")),
        path().prop_map(|p| format!("{p} starts with \"x\"")),
        literal().prop_map(|v| format!("payload contains {{\"a\": {v}}}")),
        (literal(), literal())
            .prop_map(|(v, w)| format!("payload contains {{\"c\": {{\"d\": {v}}}, \"b\": {w}}}")),
        literal().prop_map(|v| format!("$.c contains {{\"d\": {v}}}")),
        literal().prop_map(|v| format!("payload contains {{\"list\": [{v}]}}")),
    ]
}

fn expr() -> impl Strategy<Value = String> {
    predicate().prop_recursive(3, 12, 3, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 2..4)
                .prop_map(|v| format!("({})", v.join(" and "))),
            prop::collection::vec(inner.clone(), 2..3)
                .prop_map(|v| format!("({})", v.join(" or "))),
            inner.prop_map(|e| format!("not {e}")),
        ]
    })
}

fn rule() -> impl Strategy<Value = (Option<&'static str>, Option<String>)> {
    (
        prop_oneof![
            Just(None),
            Just(Some("\"push\"")),
            Just(Some("\"create\"")),
            Just(Some("\"push\", \"create\""))
        ],
        prop::option::weighted(0.9, expr()),
    )
}

fn scalar() -> impl Strategy<Value = Value> {
    prop_oneof![
        Just(json!("x")),
        Just(json!("y")),
        Just(json!(1)),
        Just(json!(2.0)),
        Just(json!(true)),
        Just(Value::Null)
    ]
}

fn payload() -> impl Strategy<Value = Value> {
    (
        prop::option::of(scalar()),
        prop::option::of(scalar()),
        prop_oneof![
            Just(None),
            scalar().prop_map(|v| Some(json!({ "d": v }))),
            scalar().prop_map(Some)
        ],
        prop::option::of(prop::collection::vec(scalar(), 0..4)),
    )
        .prop_map(|(a, b, c, list)| {
            let mut map = serde_json::Map::new();
            a.map(|v| map.insert("a".into(), v));
            b.map(|v| map.insert("b".into(), v));
            c.map(|v| map.insert("c".into(), v));
            list.map(|v| map.insert("list".into(), Value::Array(v)));
            Value::Object(map)
        })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 400, ..ProptestConfig::default() })]

    #[test]
    fn index_agrees_with_full_scan(
        rules in prop::collection::vec(rule(), 1..30),
        payloads in prop::collection::vec(payload(), 1..6),
    ) {
        let text = rules_text(&rules, "notify t");
        let loaded = hookgate::load::load_text("p.hook", None, text.as_bytes(), &PlaceholderSecrets);
        let compiled = match loaded.result {
            Ok(c) => c,
            Err(d) => panic!("{text}\n{}", d.render(&loaded.files, false)),
        };
        for payload in payloads {
            for name in [Some("push"), Some("create"), None] {
                let event = Event::new(&compiled.rules, 0, name.map(String::from), vec![], vec![], payload.clone());
                let indexed = evaluate(&compiled.rules, &event);
                let scanned = evaluate_scan(&compiled.rules, &event);
                prop_assert_eq!(&indexed, &scanned, "rules:\n{}\npayload: {}\nevent: {:?}", text, payload, name);
                // Explanations evaluate every clause without short-circuits; they must agree too.
                let explained = hookgate::explain::explain(&compiled.rules, &event).matched;
                let names: Vec<String> = indexed.matched.iter().map(|&i| compiled.rules.rules()[i].name().to_string()).collect();
                prop_assert_eq!(explained, names);
            }
        }
    }
}

/// The generator is not vacuous: across a fixed seed's cases, rules both match and fail to match.
#[test]
fn random_rule_sets_do_match_sometimes() {
    use proptest::strategy::ValueTree;
    use proptest::test_runner::TestRunner;
    let mut runner = TestRunner::deterministic();
    let (mut matched, mut unmatched) = (0, 0);
    for _ in 0..200 {
        let when = expr().new_tree(&mut runner).unwrap().current();
        let p = payload().new_tree(&mut runner).unwrap().current();
        let text = format!(
            "secret s = env(\"S\")\nsource src: github {{ secret s }}\ntarget t {{ post \"http://127.0.0.1:9/\" }}\nrule \"r\" {{ from src when {when} notify t }}\n"
        );
        let rules = hookgate::load::load_text("p.hook", None, text.as_bytes(), &PlaceholderSecrets)
            .result
            .unwrap()
            .rules;
        let event = Event::new(&rules, 0, None, vec![], vec![], p);
        if evaluate(&rules, &event).matched.is_empty() {
            unmatched += 1
        } else {
            matched += 1
        }
    }
    assert!(
        matched > 20 && unmatched > 20,
        "matched {matched}, unmatched {unmatched}"
    );
}

/// Actions whose bodies and keys read the payload too, so `reads` covers templates.
const READING_ACTIONS: &str = "notify t {\"a\": $.a, \"cd\": \"${$.c.d}\", \"b\": [$.b, event]} queue check t key \"${$['c']}\"";

/// A rules file with one source, one target, and a rule per `(on, when)` running `actions`.
fn rules_text(rules: &[(Option<&'static str>, Option<String>)], actions: &str) -> String {
    let mut text = String::from(
        "secret s = env(\"S\")\nsource src: github { secret s }\ntarget t { post \"http://127.0.0.1:9/\" }\n",
    );
    for (i, (on, when)) in rules.iter().enumerate() {
        text.push_str(&format!("rule \"r{i}\" {{ from src "));
        if let Some(on) = on {
            text.push_str(&format!("on {on} "));
        }
        if let Some(when) = when {
            text.push_str(&format!("when {when} "));
        }
        text.push_str(&format!("{actions} }}\n"));
    }
    text
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 400, ..ProptestConfig::default() })]

    /// When every rule of a source reads only simple paths, evaluating on a payload holding just those
    /// paths (what the server builds from one extraction pass) gives exactly the full outcome.
    #[test]
    fn sparse_payloads_evaluate_like_full_ones(
        rules in prop::collection::vec(rule(), 1..12),
        payloads in prop::collection::vec(payload(), 1..6),
    ) {
        // Only simple paths, so that (nearly) every case takes the sparse path.
        let simple: Vec<(Option<&'static str>, Option<String>)> = rules
            .into_iter()
            .map(|(on, when)| {
                let when = when.map(|w| {
                    w.replace("$.list[*]", "$.a").replace("$..d", "$.c.d").replace("$.list[0]", "$.b").replace("$.list[-1]", "$['b']")
                });
                (on, when)
            })
            .collect();
        let text = rules_text(&simple, READING_ACTIONS);
        let compiled = hookgate::load::load_text("p.hook", None, text.as_bytes(), &PlaceholderSecrets).result.unwrap();
        let source = &compiled.rules.sources()[0];
        let reads = source.reads();
        prop_assert!(reads.is_some(), "simple rules must qualify:\n{}", text);
        let Some(reads) = reads else { return Ok(()) };
        let paths: Vec<&[hookgate::ruleset::Step]> = reads.iter().map(Vec::as_slice).collect();
        for payload in payloads {
            let bytes = serde_json::to_vec(&payload).unwrap();
            let values = hookgate::extract::extract(&bytes, &paths).unwrap();
            let sparse = hookgate::extract::sparse(&paths, values);
            for name in [Some("push"), Some("create"), None] {
                let full = Event::new(&compiled.rules, 0, name.map(String::from), vec![], vec![], payload.clone());
                let thin = Event::new(&compiled.rules, 0, name.map(String::from), vec![], vec![], sparse.clone());
                prop_assert_eq!(evaluate(&compiled.rules, &full), evaluate(&compiled.rules, &thin), "rules:\n{}\npayload: {}\nsparse: {}", text, payload, sparse);
            }
        }
    }
}

/// The sparse path is not vacuous: simple rule sets qualify, `payload contains` too, and a wildcard
/// or a bare `payload` does not.
#[test]
fn which_sources_qualify_for_sparse_payloads() {
    let reads = |when: &str| {
        let text = rules_text(&[(None, Some(when.to_string()))], READING_ACTIONS);
        let compiled =
            hookgate::load::load_text("p.hook", None, text.as_bytes(), &PlaceholderSecrets)
                .result
                .unwrap();
        compiled.rules.sources()[0].reads().map(|r| r.len())
    };
    assert_eq!(
        reads("$.a == 1 and payload contains {\"c\": {\"d\": 2}, \"b\": true}"),
        Some(4),
        "$.a, $.b, $.c, $.c.d"
    );
    assert_eq!(reads("$.list[*] == 1"), None);
    assert_eq!(
        reads("$.list[0] == 1"),
        None,
        "indices are not supported by the sparse builder"
    );
    assert_eq!(reads("payload == {}"), None);
}
