//! Reads a few simple paths out of a JSON body without building the whole tree.
//!
//! One pass of serde_json over the bytes: values on the requested paths are deserialized, everything
//! else is visited and dropped, and the whole document is checked exactly as a full parse into a `Value`
//! checks it. The server uses it to consult a source's rule index before paying for a full parse: when no
//! rule can be a candidate, the full `Value` tree is never built.
//!
//! Most bodies are read by the hand-written `skim`, which answers only when it is sure to agree;
//! otherwise (and for every error) serde_json decides, as below.
//!
//! INVARIANT: `extract` accepts exactly the bytes `serde_json::from_slice::<Value>` accepts, and finds at
//! each path what a walk of that `Value` finds. Two details make it so: skipped values go through
//! `deserialize_any` (serde's `IgnoredAny` would skip strings without checking their UTF-8 and nesting
//! without its depth limit), and a repeated key replaces what an earlier one held, as it does in a `Value`.

mod skim;

use std::fmt;

use serde::de::{self, DeserializeSeed, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_json::Value;

use crate::ruleset::Step;

/// The values at `paths` (each `None` when absent), or the syntax error of `body`.
pub fn extract(body: &[u8], paths: &[&[Step]]) -> Result<Vec<Option<Value>>, serde_json::Error> {
    if let Some(found) = skim::extract(body, paths) {
        return Ok(found);
    }
    by_serde(body, paths)
}

/// [`extract`] through serde_json: exact on every input, errors included.
fn by_serde(body: &[u8], paths: &[&[Step]]) -> Result<Vec<Option<Value>>, serde_json::Error> {
    let mut found = vec![None; paths.len()];
    let wanted: Vec<(usize, &[Step])> = paths.iter().copied().enumerate().collect();
    let mut de = serde_json::Deserializer::from_slice(body);
    Seed {
        wanted: &wanted,
        found: &mut found,
    }
    .deserialize(&mut de)?;
    de.end()?;
    Ok(found)
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

/// The paths of `wanted` that go on into the member or item whose step `here` accepts, with the
/// steps left after it.
fn below<'p>(
    wanted: &[(usize, &'p [Step])],
    here: impl Fn(&Step) -> bool,
) -> Vec<(usize, &'p [Step])> {
    wanted
        .iter()
        .filter_map(|&(i, rest)| match rest.split_first() {
            Some((step, tail)) if here(step) => Some((i, tail)),
            _ => None,
        })
        .collect()
}

/// The paths still wanted below the current value (with the steps left), and where results go.
struct Seed<'a, 'b> {
    wanted: &'a [(usize, &'a [Step])],
    found: &'b mut Vec<Option<Value>>,
}

impl<'de> DeserializeSeed<'de> for Seed<'_, '_> {
    type Value = ();

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        if self.wanted.is_empty() {
            return Skip.deserialize(d);
        }
        // A path that ends here wants this whole value.
        if self.wanted.iter().any(|(_, rest)| rest.is_empty()) {
            let value = <Value as serde::Deserialize>::deserialize(d)?;
            for (i, rest) in self.wanted {
                let v = crate::ruleset::walk(rest, &value).cloned();
                self.found[*i] = v;
            }
            return Ok(());
        }
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Seed<'_, '_> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("JSON")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        while let Some(key) = map.next_key_seed(Key)? {
            let below = below(
                self.wanted,
                |step| matches!(step, Step::Key(k) if *k == key),
            );
            // A repeated key replaces the earlier value whole, as in a `Value`: forget what it held.
            for (i, _) in &below {
                self.found[*i] = None;
            }
            map.next_value_seed(Seed {
                wanted: &below,
                found: self.found,
            })?;
        }
        Ok(())
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        // Negative indices count from the end, which a single forward pass cannot know: collect then.
        if self
            .wanted
            .iter()
            .any(|(_, rest)| matches!(rest.first(), Some(Step::Index(i)) if *i < 0))
        {
            let mut items = Vec::new();
            while let Some(v) = seq.next_element::<Value>()? {
                items.push(v);
            }
            let array = Value::Array(items);
            for (i, rest) in self.wanted {
                self.found[*i] = crate::ruleset::walk(rest, &array).cloned();
            }
            return Ok(());
        }
        let mut n: i64 = 0;
        loop {
            let below = below(self.wanted, |step| *step == Step::Index(n));
            if seq
                .next_element_seed(Seed {
                    wanted: &below,
                    found: self.found,
                })?
                .is_none()
            {
                return Ok(());
            }
            n += 1;
        }
    }

    // Scalars where the path wanted an object or array: the path selects nothing.
    fn visit_bool<E: de::Error>(self, _: bool) -> Result<(), E> {
        Ok(())
    }
    fn visit_i64<E: de::Error>(self, _: i64) -> Result<(), E> {
        Ok(())
    }
    fn visit_u64<E: de::Error>(self, _: u64) -> Result<(), E> {
        Ok(())
    }
    fn visit_f64<E: de::Error>(self, _: f64) -> Result<(), E> {
        Ok(())
    }
    fn visit_str<E: de::Error>(self, _: &str) -> Result<(), E> {
        Ok(())
    }
    fn visit_unit<E: de::Error>(self) -> Result<(), E> {
        Ok(())
    }
}

/// An object key, borrowed from the body unless it has escapes: serde's own `Cow<str>` always
/// allocates, and a GitHub push's `repository` alone has about 90 keys to compare.
struct Key;

impl<'de> DeserializeSeed<'de> for Key {
    type Value = std::borrow::Cow<'de, str>;

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_str(self)
    }
}

impl<'de> Visitor<'de> for Key {
    type Value = std::borrow::Cow<'de, str>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("an object key")
    }
    fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<Self::Value, E> {
        Ok(std::borrow::Cow::Borrowed(v))
    }
    fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
        Ok(std::borrow::Cow::Owned(v.to_owned()))
    }
    fn visit_string<E: de::Error>(self, v: String) -> Result<Self::Value, E> {
        Ok(std::borrow::Cow::Owned(v))
    }
}

/// Visits a value and keeps nothing, checking it as a `Value` parse would.
struct Skip;

impl<'de> DeserializeSeed<'de> for Skip {
    type Value = ();

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_any(Skip)
    }
}

impl<'de> Visitor<'de> for Skip {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("JSON")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        while map.next_key_seed(Skip)?.is_some() {
            map.next_value_seed(Skip)?;
        }
        Ok(())
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        while seq.next_element_seed(Skip)?.is_some() {}
        Ok(())
    }

    fn visit_bool<E: de::Error>(self, _: bool) -> Result<(), E> {
        Ok(())
    }
    fn visit_i64<E: de::Error>(self, _: i64) -> Result<(), E> {
        Ok(())
    }
    fn visit_u64<E: de::Error>(self, _: u64) -> Result<(), E> {
        Ok(())
    }
    fn visit_f64<E: de::Error>(self, _: f64) -> Result<(), E> {
        Ok(())
    }
    fn visit_str<E: de::Error>(self, _: &str) -> Result<(), E> {
        Ok(())
    }
    fn visit_unit<E: de::Error>(self) -> Result<(), E> {
        Ok(())
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
