//! Reads a few simple paths out of a JSON body without building the whole tree.
//!
//! The server uses it to consult a source's rule index before paying for a full parse: when no rule can
//! be a candidate, the full `Value` tree is never built. The hand-written `skim` reads almost every
//! body: one pass that checks the whole document and parses only the wanted values. It answers only
//! when it is sure to agree with serde_json; for anything else (every error among them) `extract`
//! parses the body whole and walks it, which is the reference by definition.
//!
//! INVARIANT: `extract` accepts exactly the bytes `serde_json::from_slice::<Value>` accepts, and finds at
//! each path what a walk of that `Value` finds.

mod skim;

use serde_json::Value;

use crate::ruleset::Step;

/// The values at `paths` (each `None` when absent), or the syntax error of `body`.
pub fn extract(body: &[u8], paths: &[&[Step]]) -> Result<Vec<Option<Value>>, serde_json::Error> {
    if let Some(found) = skim::extract(body, paths) {
        return Ok(found);
    }
    by_full_parse(body, paths)
}

/// [`extract`] the slow way, exact on every input: the whole `Value`, walked.
fn by_full_parse(body: &[u8], paths: &[&[Step]]) -> Result<Vec<Option<Value>>, serde_json::Error> {
    let value: Value = serde_json::from_slice(body)?;
    Ok(paths
        .iter()
        .map(|p| crate::ruleset::walk(p, &value).cloned())
        .collect())
}

/// A payload holding only `values` at `paths` (with the objects along the way). Rules that read only
/// these paths evaluate on it exactly as on the whole payload. The values are moved into it.
pub fn sparse(paths: &[&[Step]], values: Vec<Option<Value>>) -> Value {
    let mut root = Value::Object(serde_json::Map::new());
    for (steps, value) in paths.iter().zip(values) {
        let Some(value) = value else { continue };
        if steps.is_empty() {
            return value;
        }
        insert(&mut root, steps, value);
    }
    root
}

/// Sets `value` at key path `steps`, creating objects on the way. A value already there for a shorter
/// path is the whole subtree and already holds the deeper value.
fn insert(node: &mut Value, steps: &[Step], value: Value) {
    let (Some((Step::Key(key), rest)), Value::Object(map)) = (steps.split_first(), node) else {
        return;
    };
    if rest.is_empty() {
        map.insert(key.clone(), value);
    } else {
        let child = map
            .entry(key.clone())
            .or_insert_with(|| Value::Object(serde_json::Map::new()));
        insert(child, rest, value);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn key(s: &str) -> Step {
        Step::Key(s.into())
    }

    #[test]
    fn finds_values_on_paths_and_agrees_with_a_full_parse() {
        let body = br#"{"ref": "refs/heads/main", "repository": {"full_name": "acme/app", "tags": ["a", "b", {"x": 1}]},
                        "n": 1.5, "escaped\u0041": "yes"}"#;
        let full: Value = serde_json::from_slice(body).unwrap();
        let paths: Vec<Vec<Step>> = vec![
            vec![key("repository"), key("full_name")],
            vec![key("ref")],
            vec![key("repository"), key("tags"), Step::Index(2), key("x")],
            vec![key("repository"), key("tags"), Step::Index(-1)],
            vec![key("missing")],
            vec![key("ref"), key("deeper")],
            vec![key("escapedA")],
            vec![],
        ];
        let refs: Vec<&[Step]> = paths.iter().map(Vec::as_slice).collect();
        let found = extract(body, &refs).unwrap();
        for (path, got) in paths.iter().zip(&found) {
            assert_eq!(got.as_ref(), crate::ruleset::walk(path, &full), "{path:?}");
        }
        assert_eq!(found[0], Some(json!("acme/app")));
        assert_eq!(found[6], Some(json!("yes")), "escaped keys are decoded");
    }

    #[test]
    fn syntax_errors_are_errors_even_where_nothing_is_wanted() {
        assert!(extract(br#"{"a": 1, "b": [1, 2,]}"#, &[&[key("a")]]).is_err());
        assert!(extract(br#"{"a": 1} trailing"#, &[&[key("a")]]).is_err());
        assert!(extract(b"not json", &[]).is_err());
        assert!(extract(b"[1, 2]", &[&[Step::Index(1)]]).unwrap() == vec![Some(json!(2))]);
    }

    /// Bodies a full parse refuses are refused even where no path reads: the answer must not depend on
    /// which fields the rules happen to read.
    #[test]
    fn refuses_what_a_full_parse_refuses_in_skipped_fields() {
        let deep = format!(
            "{{\"ref\": \"x\", \"y\": {}1{}}}",
            "[".repeat(200),
            "]".repeat(200)
        );
        let bodies: Vec<Vec<u8>> = vec![
            b"{\"ref\": \"x\", \"y\": \"\xff\xfe\"}".to_vec(),
            b"{\"ref\": \"x\", \"\xff\": 1}".to_vec(),
            deep.into_bytes(),
        ];
        for body in bodies {
            assert!(serde_json::from_slice::<Value>(&body).is_err());
            assert!(extract(&body, &[&[key("ref")]]).is_err(), "{body:?}");
            assert!(extract(&body, &[]).is_err(), "{body:?}");
        }
    }

    #[test]
    fn a_repeated_key_replaces_the_earlier_value() {
        let body = br#"{"a": {"b": 1}, "a": {"c": 2}, "d": 1, "d": [2]}"#;
        let full: Value = serde_json::from_slice(body).unwrap();
        let paths: Vec<Vec<Step>> = vec![
            vec![key("a"), key("b")],
            vec![key("a"), key("c")],
            vec![key("a")],
            vec![key("d")],
        ];
        let refs: Vec<&[Step]> = paths.iter().map(Vec::as_slice).collect();
        let found = extract(body, &refs).unwrap();
        for (path, got) in paths.iter().zip(&found) {
            assert_eq!(got.as_ref(), crate::ruleset::walk(path, &full), "{path:?}");
        }
        assert_eq!(found[0], None);
    }
}
