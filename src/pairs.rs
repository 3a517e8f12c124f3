//! Name–value pairs (a request's headers or query parameters) packed in two allocations.
//!
//! The delivery log keeps the headers and query of its last 10,000 requests. As a
//! `Vec<(String, String)>` that is two allocations per pair, each freed when its record is evicted,
//! thousands of requests later and cache-cold: with a GitHub push's headers, a few dozen cold frees on
//! every request. Packed, it is one buffer of text and one of offsets (`docs/performance.md`, "A
//! non-matching request, early on 30 November: records and headers, packed").

use std::fmt;

use serde::de::{Deserialize, Deserializer};
use serde::ser::{Serialize, SerializeSeq, Serializer};

/// Pairs in arrival order; a name may repeat.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Pairs {
    /// Every name and value, one after the other.
    text: String,
    /// For each pair, where its name ends and where its value ends, in `text`.
    ends: Vec<(usize, usize)>,
}

impl Pairs {
    /// Room for `pairs` pairs of `bytes` bytes of text in all, so that pushing them allocates once each.
    pub fn with_capacity(pairs: usize, bytes: usize) -> Pairs {
        Pairs {
            text: String::with_capacity(bytes),
            ends: Vec::with_capacity(pairs),
        }
    }

    pub fn push(&mut self, name: &str, value: &str) {
        self.text.push_str(name);
        let name_end = self.text.len();
        self.text.push_str(value);
        self.ends.push((name_end, self.text.len()));
    }

    pub fn iter(&self) -> impl ExactSizeIterator<Item = (&str, &str)> + '_ {
        let mut start = 0;
        self.ends.iter().map(move |&(name_end, value_end)| {
            let pair = (&self.text[start..name_end], &self.text[name_end..value_end]);
            start = value_end;
            pair
        })
    }

    /// The first non-empty value of `name` (an empty header counts as missing: Gitea sends empty
    /// signature headers, others may too).
    pub fn get(&self, name: &str) -> Option<&str> {
        self.iter()
            .find(|&(n, v)| n == name && !v.is_empty())
            .map(|(_, v)| v)
    }

    /// Every value of `name`, in order.
    pub fn values<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a str> + 'a {
        self.iter().filter(move |&(n, _)| n == name).map(|(_, v)| v)
    }

    /// Keeps the pairs `keep` says to keep, in order; allocates only when one goes.
    pub fn retain(&mut self, mut keep: impl FnMut(&str, &str) -> bool) {
        let Some(first) = self.iter().position(|(n, v)| !keep(n, v)) else {
            return;
        };
        let mut kept = Pairs::with_capacity(self.len() - 1, self.text.len());
        for (i, (name, value)) in self.iter().enumerate() {
            if i < first || (i > first && keep(name, value)) {
                kept.push(name, value);
            }
        }
        *self = kept;
    }

    /// Names in ASCII lowercase (HTTP's are already; files and tests may not be).
    pub fn lowercase_names(mut self) -> Pairs {
        let mut start = 0;
        for &(name_end, value_end) in &self.ends {
            self.text[start..name_end].make_ascii_lowercase();
            start = value_end;
        }
        self
    }

    pub fn len(&self) -> usize {
        self.ends.len()
    }

    pub fn is_empty(&self) -> bool {
        self.ends.is_empty()
    }

    /// Bytes of text held (names and values).
    pub fn text_len(&self) -> usize {
        self.text.len()
    }

    fn pack<N: AsRef<str>, V: AsRef<str>>(pairs: &[(N, V)]) -> Pairs {
        let bytes = pairs
            .iter()
            .map(|(n, v)| n.as_ref().len() + v.as_ref().len())
            .sum();
        let mut packed = Pairs::with_capacity(pairs.len(), bytes);
        for (name, value) in pairs {
            packed.push(name.as_ref(), value.as_ref());
        }
        packed
    }

    /// The pairs as owned strings.
    pub fn to_vec(&self) -> Vec<(String, String)> {
        self.iter()
            .map(|(n, v)| (n.to_string(), v.to_string()))
            .collect()
    }
}

impl<N: AsRef<str>, V: AsRef<str>> FromIterator<(N, V)> for Pairs {
    fn from_iter<I: IntoIterator<Item = (N, V)>>(pairs: I) -> Pairs {
        let mut packed = Pairs::default();
        for (name, value) in pairs {
            packed.push(name.as_ref(), value.as_ref());
        }
        packed
    }
}

impl From<Vec<(String, String)>> for Pairs {
    fn from(pairs: Vec<(String, String)>) -> Pairs {
        Pairs::pack(&pairs)
    }
}

impl From<&[(String, String)]> for Pairs {
    fn from(pairs: &[(String, String)]) -> Pairs {
        Pairs::pack(pairs)
    }
}

impl fmt::Debug for Pairs {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list().entries(self.iter()).finish()
    }
}

/// As `[[name, value], ...]`, the shape a `Vec<(String, String)>` has.
impl Serialize for Pairs {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut seq = serializer.serialize_seq(Some(self.len()))?;
        for pair in self.iter() {
            seq.serialize_element(&pair)?;
        }
        seq.end()
    }
}

impl<'de> Deserialize<'de> for Pairs {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Pairs, D::Error> {
        let pairs = Vec::<(String, String)>::deserialize(deserializer)?;
        Ok(Pairs::from(pairs.as_slice()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn owned(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(n, v)| (n.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn pairs_keep_order_repeats_and_empty_parts() {
        let given = owned(&[
            ("x-github-event", "push"),
            ("accept", ""),
            ("", "no name"),
            ("accept", "*/*"),
            ("x-ünïcode", "välue ✓"),
        ]);
        let packed = Pairs::from(given.as_slice());
        assert_eq!(packed.len(), 5);
        assert_eq!(packed.to_vec(), given);
        assert_eq!(
            packed.iter().collect::<Vec<_>>(),
            given
                .iter()
                .map(|(n, v)| (n.as_str(), v.as_str()))
                .collect::<Vec<_>>()
        );
        assert_eq!(
            packed.text_len(),
            given.iter().map(|(n, v)| n.len() + v.len()).sum::<usize>()
        );
        let collected: Pairs = given.iter().map(|(n, v)| (n, v)).collect();
        assert_eq!(collected, packed);
        let mut kept = packed.clone();
        kept.retain(|n, _| n != "accept");
        assert_eq!(
            kept.to_vec(),
            owned(&[
                ("x-github-event", "push"),
                ("", "no name"),
                ("x-ünïcode", "välue ✓")
            ])
        );
        assert_eq!(kept.get("accept"), None);
        let mut all = packed.clone();
        all.retain(|_, _| true);
        assert_eq!(all, packed);
        // `get` skips empty values; `values` gives them all.
        assert_eq!(packed.get("accept"), Some("*/*"));
        assert_eq!(packed.values("accept").collect::<Vec<_>>(), ["", "*/*"]);
        let mixed: Pairs = [("X-GitHub-Event", "Push")].into_iter().collect();
        assert_eq!(
            mixed.lowercase_names().to_vec(),
            owned(&[("x-github-event", "Push")])
        );
        assert!(Pairs::default().is_empty());
        assert_eq!(Pairs::from(&[][..]).iter().count(), 0);
    }

    #[test]
    fn pairs_serialize_as_a_list_of_pairs_would() {
        let given = owned(&[("a", "1"), ("b", "\"quoted\""), ("a", "2")]);
        let packed = Pairs::from(given.as_slice());
        let json = serde_json::to_string(&packed).unwrap();
        assert_eq!(json, serde_json::to_string(&given).unwrap());
        let back: Pairs = serde_json::from_str(&json).unwrap();
        assert_eq!(back, packed);
        assert_eq!(format!("{packed:?}"), format!("{:?}", given));
    }
}
