//! Which rules of a source can possibly match an event, without testing them all.
//!
//! Operators with thousands of pipelines write thousands of rules that differ only in a literal:
//! `$.repository.full_name == "acme/repo-17" and $.ref == "refs/heads/main"`. The index files each rule
//! under the event names it accepts, and then under one *required leaf*: a test of a simple path
//! against literal scalars that must hold for the rule to match (a top-level `==` or `in [...]`, or a
//! scalar inside a `contains {...}` object, found through `and`). Looking an event up costs one map
//! lookup per indexed path instead of one evaluation per rule. A rule found that way is kept only if
//! its other required leaves hold too (`ref == "refs/heads/main"` beside the repository's name), so a
//! push to another branch of a watched repository leaves no candidate, and the server answers it
//! without building a payload (`prepare`).
//!
//! INVARIANT: the index only narrows. Every rule that would match is among the candidates; candidates
//! are then evaluated in full. `tests/index.rs` checks this against a full scan on random rule sets.

use std::collections::{HashMap, HashSet};
use std::hash::{BuildHasherDefault, Hash, Hasher};
use std::sync::Arc;

use serde_json::Value;

use crate::ruleset::walk;
use crate::ruleset::{CompareOp, Matcher, Operand, PredicateOp, Rule, Step};

/// The candidate lists of one source.
#[derive(Debug, Default)]
pub struct SourceIndex {
    by_event: HashMap<String, Bucket>,
    /// Rules without `on`: candidates for every event.
    any_event: Bucket,
}

/// Rules accepting one event name.
#[derive(Debug, Default)]
struct Bucket {
    keyed: Vec<Keyed>,
    /// Rules with no required leaf: always candidates.
    scan: Vec<u32>,
    /// The paths of the rules' other required leaves ([`Check::path`] indexes it).
    check_paths: Vec<Vec<Step>>,
    /// Distinct sets of other required leaves; a rule refers to one by its position here plus one
    /// ([`Keyed::check_sets`]). Rules written alike share one: 100,000 rules that all require
    /// `ref == "refs/heads/main"` beside their repository name hold one set between them.
    check_sets: Vec<Box<[Check]>>,
}

/// A required leaf other than the one a rule is filed under: the value at `check_paths[path]` must
/// hash to one of `hashes` (sorted) for the rule to match.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct Check {
    path: u32,
    hashes: Box<[u64]>,
}

/// Rules filed under the value of one simple path.
///
/// The values are not stored: a rule is filed under a 64-bit hash of its value, so two values that
/// share a hash only make extra candidates, never a missed one (candidates are evaluated in full).
/// For 100,000 rules that is 100,000 fewer strings and lists; the rules of one hash are a range of
/// `ids`.
///
/// A candidate found this way is dropped at once when one of its other required leaves does not hold
/// either (`check_sets`): the push to another branch of a watched repository, the commonest non-match in
/// CI, finds its repository's rules and then leaves none, so no payload is built for it.
#[derive(Debug)]
struct Keyed {
    steps: Vec<Step>,
    ranges: ByHash<(u32, u32)>,
    ids: Vec<u32>,
    /// Parallel to `ids`: 0, or one plus the position in [`Bucket::check_sets`] of the rule's other
    /// required leaves. Empty when no rule filed here has any.
    check_sets: Vec<u32>,
}

/// A map keyed by [`key_hash`]es, which are hashed already.
type ByHash<V> = HashMap<u64, V, BuildHasherDefault<Prehashed>>;

/// Passes a `u64` key through as its own hash.
#[derive(Default)]
struct Prehashed(u64);

impl Hasher for Prehashed {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        // Only `u64`s are hashed here; any other key still hashes deterministically.
        for &b in bytes {
            self.0 = self.0.rotate_left(8) ^ u64::from(b);
        }
    }

    fn write_u64(&mut self, n: u64) {
        self.0 = n;
    }
}

/// A non-string scalar as a hash key. Numbers are keyed by their `f64` value, so `1` and `1.0` meet
/// (two huge integers sharing an `f64` only make an extra candidate, never a missed one).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Scalar {
    Number(u64),
    Bool(bool),
    Null,
}

/// A key for a scalar: `Ok(string)` or `Err(other)`; `None` for arrays and objects.
fn key_of(v: &Value) -> Option<Result<&str, Scalar>> {
    Some(match v {
        Value::String(s) => Ok(s.as_str()),
        Value::Number(n) => {
            let f = n.as_f64()?;
            Err(Scalar::Number(if f == 0.0 { 0 } else { f.to_bits() }))
        }
        Value::Bool(b) => Err(Scalar::Bool(*b)),
        Value::Null => Err(Scalar::Null),
        Value::Array(_) | Value::Object(_) => return None,
    })
}

/// The hash a scalar is filed under: the same for equal keys, in every index of the process.
fn key_hash(v: &Value) -> Option<u64> {
    let key = key_of(v)?;
    let mut h = std::hash::DefaultHasher::new();
    key.hash(&mut h);
    Some(h.finish())
}

/// A step of a path the rules write, borrowed from them while the index is built.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum StepRef<'a> {
    Key(&'a str),
    Index(i64),
}

impl StepRef<'_> {
    fn of(step: &Step) -> StepRef<'_> {
        match step {
            Step::Key(k) => StepRef::Key(k),
            Step::Index(i) => StepRef::Index(*i),
        }
    }

    fn owned(self) -> Step {
        match self {
            StepRef::Key(k) => Step::Key(k.to_string()),
            StepRef::Index(i) => Step::Index(i),
        }
    }
}

/// Whether a path is dear to read from raw bytes, as the server does for every request of an event
/// the index reads: the whole payload, or a negative index (the skim parses the array to count it).
/// A rule is filed under a cheaper leaf when it has one, and such a leaf is never checked.
fn dear(steps: &[StepRef<'_>]) -> bool {
    steps.is_empty()
        || steps
            .iter()
            .any(|s| matches!(s, StepRef::Index(i) if *i < 0))
}

fn same_path(steps: &[Step], refs: &[StepRef<'_>]) -> bool {
    steps.len() == refs.len() && steps.iter().zip(refs).all(|(s, r)| StepRef::of(s) == *r)
}

/// A required leaf: the rule matches only if the value at `steps` equals one of `values`.
struct Leaf<'a> {
    steps: Vec<StepRef<'a>>,
    values: Vec<&'a Value>,
}

impl SourceIndex {
    /// Indexes the rules `ids` (indices into `rules`) of one source.
    pub(crate) fn build(rules: &[Arc<Rule>], ids: &[usize]) -> SourceIndex {
        let mut by_event: HashMap<&str, Vec<usize>> = HashMap::new();
        let mut any = Vec::new();
        for &i in ids {
            match &rules[i].on {
                None => any.push(i),
                Some(events) => {
                    for e in events.iter() {
                        let list = by_event.entry(e).or_default();
                        if list.last() != Some(&i) {
                            list.push(i);
                        }
                    }
                }
            }
        }
        SourceIndex {
            by_event: by_event
                .into_iter()
                .map(|(e, ids)| (e.to_string(), Bucket::build(rules, &ids)))
                .collect(),
            any_event: Bucket::build(rules, &any),
        }
    }

    /// Rules that may match an event, ascending.
    pub(crate) fn candidates(&self, event: Option<&str>, payload: &Value) -> Vec<usize> {
        self.candidates_with(event, |steps| walk(steps, payload))
    }

    /// As [`SourceIndex::candidates`], reading the indexed paths through `lookup` (which may come
    /// from [`crate::extract::extract`] instead of a parsed payload).
    pub fn candidates_with<'v>(
        &self,
        event: Option<&str>,
        lookup: impl Fn(&[Step]) -> Option<&'v Value>,
    ) -> Vec<usize> {
        let mut out = Vec::new();
        if let Some(bucket) = event.and_then(|e| self.by_event.get(e)) {
            bucket.collect(&lookup, &mut out);
        }
        self.any_event.collect(&lookup, &mut out);
        out.sort_unstable();
        out.dedup();
        out
    }

    /// The paths the index reads for `event`, when they alone decide the candidates: `None` if some rule
    /// for it is always scanned (so the payload must be parsed anyway).
    pub fn key_paths(&self, event: Option<&str>) -> Option<Vec<&[Step]>> {
        let buckets = event
            .and_then(|e| self.by_event.get(e))
            .into_iter()
            .chain([&self.any_event]);
        let mut paths: Vec<&[Step]> = Vec::new();
        for bucket in buckets {
            if !bucket.scan.is_empty() {
                return None;
            }
            let checked = bucket.check_paths.iter();
            for steps in bucket.keyed.iter().map(|k| &k.steps).chain(checked) {
                if !paths.contains(&steps.as_slice()) {
                    paths.push(steps);
                }
            }
        }
        Some(paths)
    }

    /// (indexed paths, rules always scanned), for the canonical dump and the benchmarks.
    pub fn shape(&self) -> (usize, usize) {
        let buckets = self.by_event.values().chain([&self.any_event]);
        buckets.fold((0, 0), |(k, s), b| (k + b.keyed.len(), s + b.scan.len()))
    }
}

impl Bucket {
    fn build(rules: &[Arc<Rule>], ids: &[usize]) -> Bucket {
        // A rule's leaves, with the hashes of their values. Worked out twice per rule rather than
        // kept for all of them: for 100,000 rules the lists were tens of MiB, at the moment a reload
        // holds the most (the old set and nearly all of the new one).
        let leaves = |i: usize| -> Vec<(Leaf<'_>, Vec<u64>)> {
            let mut leaves = Vec::new();
            if let Some(when) = &rules[i].when {
                required_leaves(when, &mut leaves);
            }
            leaves
                .into_iter()
                .map(|l| {
                    let hashes = l.values.iter().filter_map(|v| key_hash(v)).collect();
                    (l, hashes)
                })
                .collect()
        };
        // The most selective path is the one with the most distinct values across these rules:
        // `full_name` (one per rule) beats `ref` (the same for all). Counted by hash, as filed.
        let mut distinct: HashMap<Vec<StepRef<'_>>, HashSet<u64, BuildHasherDefault<Prehashed>>> =
            HashMap::new();
        for &i in ids {
            for (leaf, hashes) in leaves(i) {
                distinct.entry(leaf.steps).or_default().extend(hashes);
            }
        }
        let mut bucket = Bucket::default();
        // (hash, rule, check set) per indexed path, in the order of `bucket.keyed`.
        let mut filed: Vec<Vec<(u64, u32, u32)>> = Vec::new();
        let mut interned: HashMap<Box<[Check]>, u32> = HashMap::new();
        for &i in ids {
            let mut ls = leaves(i);
            let best = ls
                .iter()
                .enumerate()
                .max_by_key(|(_, (l, _))| {
                    let distinct = distinct.get(l.steps.as_slice()).map_or(0, |d| d.len());
                    (!dear(&l.steps), distinct)
                })
                .map(|(n, _)| n);
            let Some(best) = best else {
                bucket.scan.push(i as u32);
                continue;
            };
            let (leaf, hashes) = ls.swap_remove(best);
            let check_set = bucket.intern(ls, &mut interned);
            let pos = match bucket
                .keyed
                .iter()
                .position(|k| same_path(&k.steps, &leaf.steps))
            {
                Some(pos) => pos,
                None => {
                    bucket.keyed.push(Keyed {
                        steps: leaf.steps.iter().map(|s| s.owned()).collect(),
                        ranges: ByHash::default(),
                        ids: Vec::new(),
                        check_sets: Vec::new(),
                    });
                    filed.push(Vec::new());
                    bucket.keyed.len() - 1
                }
            };
            filed[pos].extend(hashes.iter().map(|&h| (h, i as u32, check_set)));
        }
        for (keyed, mut entries) in bucket.keyed.iter_mut().zip(filed) {
            // By hash, then rule: each hash's rules are one ascending, duplicate-free range.
            entries.sort_unstable();
            entries.dedup();
            keyed.ids = entries.iter().map(|&(_, i, _)| i).collect();
            if entries.iter().any(|&(_, _, c)| c != 0) {
                keyed.check_sets = entries.iter().map(|&(_, _, c)| c).collect();
            }
            keyed.ranges.reserve(entries.len());
            let mut start = 0;
            for (n, chunk) in entries
                .chunk_by(|a, b| a.0 == b.0)
                .map(|c| (c.len(), c[0].0))
            {
                keyed.ranges.insert(chunk, (start as u32, n as u32));
                start += n;
            }
            keyed.ranges.shrink_to_fit();
        }
        bucket.scan.shrink_to_fit();
        bucket.check_sets.shrink_to_fit();
        bucket
    }

    /// Files a rule's other required leaves as a set shared by every rule that has the same one:
    /// 0 for none, else one plus its position in `self.check_sets`.
    fn intern(
        &mut self,
        leaves: Vec<(Leaf<'_>, Vec<u64>)>,
        interned: &mut HashMap<Box<[Check]>, u32>,
    ) -> u32 {
        let mut checks: Vec<Check> = Vec::with_capacity(leaves.len());
        for (leaf, mut hashes) in leaves {
            // Left out, which only narrows less: a leaf none of whose values can be hashed (a number
            // beyond `f64`, which never equals anything, so the rule never matches either), and one
            // whose path is `dear`.
            if hashes.is_empty() || dear(&leaf.steps) {
                continue;
            }
            hashes.sort_unstable();
            hashes.dedup();
            let path = match self
                .check_paths
                .iter()
                .position(|p| same_path(p, &leaf.steps))
            {
                Some(n) => n,
                None => {
                    self.check_paths
                        .push(leaf.steps.iter().map(|s| s.owned()).collect());
                    self.check_paths.len() - 1
                }
            };
            checks.push(Check {
                path: path as u32,
                hashes: hashes.into(),
            });
        }
        if checks.is_empty() {
            return 0;
        }
        checks.sort_unstable_by(|a, b| (a.path, &a.hashes).cmp(&(b.path, &b.hashes)));
        checks.dedup();
        let checks: Box<[Check]> = checks.into();
        *interned.entry(checks).or_insert_with_key(|checks| {
            self.check_sets.push(checks.clone());
            self.check_sets.len() as u32
        })
    }

    /// Whether every leaf of the set `n` (as [`Keyed::check_sets`] numbers them) holds.
    fn holds<'v>(&self, n: u32, lookup: &impl Fn(&[Step]) -> Option<&'v Value>) -> bool {
        let Some(checks) = n.checked_sub(1).map(|n| &self.check_sets[n as usize]) else {
            return true;
        };
        checks.iter().all(|c| {
            lookup(&self.check_paths[c.path as usize])
                .and_then(key_hash)
                .is_some_and(|h| c.hashes.binary_search(&h).is_ok())
        })
    }

    fn collect<'v>(&self, lookup: &impl Fn(&[Step]) -> Option<&'v Value>, out: &mut Vec<usize>) {
        out.extend(self.scan.iter().map(|&i| i as usize));
        for keyed in &self.keyed {
            let hit = lookup(&keyed.steps)
                .and_then(key_hash)
                .and_then(|h| keyed.ranges.get(&h));
            if let Some(&(start, n)) = hit {
                let range = start as usize..(start + n) as usize;
                let ids = &keyed.ids[range.clone()];
                match keyed.check_sets.get(range) {
                    Some(sets) => out.extend(
                        ids.iter()
                            .zip(sets)
                            .filter(|&(_, &c)| self.holds(c, lookup))
                            .map(|(&i, _)| i as usize),
                    ),
                    None => out.extend(ids.iter().map(|&i| i as usize)),
                }
            }
        }
    }
}

/// Collects the leaves that must hold for `m` to hold: through `and`, not through `or` or `not`.
fn required_leaves<'a>(m: &'a Matcher, out: &mut Vec<Leaf<'a>>) {
    let p = match m {
        Matcher::And(items) => {
            items.iter().for_each(|m| required_leaves(m, out));
            return;
        }
        Matcher::Predicate(p) => p,
        Matcher::Or(_) | Matcher::Not(_) => return,
    };
    // The subject is a simple path (one value or none), so `all`, `any` and no quantifier agree.
    let prefix: Vec<StepRef<'a>> = match &p.subject {
        Operand::Path(path) => match &path.simple {
            Some(steps) => steps.iter().map(StepRef::of).collect(),
            None => return,
        },
        Operand::Payload => Vec::new(),
        _ => return,
    };
    match &p.op {
        PredicateOp::Compare(CompareOp::Eq, Operand::Literal(v)) if key_of(v).is_some() => {
            out.push(Leaf {
                steps: prefix,
                values: vec![&**v],
            });
        }
        PredicateOp::In(Operand::Literal(v)) => {
            if let Value::Array(items) = &**v
                && !items.is_empty()
                && items.iter().all(|i| key_of(i).is_some())
            {
                out.push(Leaf {
                    steps: prefix,
                    values: items.iter().collect(),
                });
            }
        }
        PredicateOp::Contains(Operand::Literal(v)) if v.is_object() => {
            contained_leaves(prefix, v, out)
        }
        _ => {}
    }
}

/// Scalars inside an object literal that `contains` requires to be equal at the same place.
fn contained_leaves<'a>(prefix: Vec<StepRef<'a>>, object: &'a Value, out: &mut Vec<Leaf<'a>>) {
    let Value::Object(map) = object else { return };
    for (k, v) in map {
        let mut steps = Vec::with_capacity(prefix.len() + 1);
        steps.extend_from_slice(&prefix);
        steps.push(StepRef::Key(k));
        match v {
            Value::Object(_) => contained_leaves(steps, v, out),
            Value::Array(_) => {}
            scalar => out.push(Leaf {
                steps,
                values: vec![scalar],
            }),
        }
    }
}

/// The payload paths the rules `ids` read, when all of them are simple key paths: then evaluating those
/// rules on a payload that holds only these paths gives the same results as on the whole payload.
/// `None` when any rule reads a JSONPath with wildcards, filters or indices, or the whole `payload`
/// other than through `payload contains {object}` (which reads only the object's paths).
pub(crate) fn paths_read(rules: &[Arc<Rule>], ids: &[usize]) -> Option<Vec<Vec<Step>>> {
    use crate::ruleset::{Action, StrPiece, StrTemplate, Template};
    // Paths are collected borrowed and once each: 100,000 rules reading the same two paths make
    // a set of two, not a list of 200,000 copies.
    type Paths<'a> = HashSet<Vec<StepRef<'a>>>;
    fn operand<'a>(o: &'a Operand, out: &mut Paths<'a>) -> Option<()> {
        match o {
            Operand::Path(p) => {
                let steps = p.simple.as_ref()?;
                if steps.iter().any(|s| matches!(s, Step::Index(_))) {
                    return None;
                }
                out.insert(steps.iter().map(StepRef::of).collect());
                Some(())
            }
            Operand::Payload => None,
            Operand::Literal(_)
            | Operand::Event
            | Operand::Source
            | Operand::Delivery
            | Operand::Header(_)
            | Operand::Query(_) => Some(()),
        }
    }
    fn string<'a>(t: &'a StrTemplate, out: &mut Paths<'a>) -> Option<()> {
        t.pieces.iter().try_for_each(|p| match p {
            StrPiece::Operand(o) => operand(o, out),
            StrPiece::Text(_) | StrPiece::Secret(_) => Some(()),
        })
    }
    fn template<'a>(t: &'a Template, out: &mut Paths<'a>) -> Option<()> {
        match t {
            Template::Operand(o) => operand(o, out),
            Template::String(s) => string(s, out),
            Template::Object(members) => members.iter().try_for_each(|(_, v)| template(v, out)),
            Template::Array(items) => items.iter().try_for_each(|v| template(v, out)),
        }
    }
    /// The paths an object literal's leaves sit at, below `prefix`.
    fn object_paths<'a>(prefix: &mut Vec<StepRef<'a>>, v: &'a Value, out: &mut Paths<'a>) {
        match v {
            Value::Object(map) if !map.is_empty() => {
                for (k, child) in map {
                    prefix.push(StepRef::Key(k));
                    object_paths(prefix, child, out);
                    prefix.pop();
                }
            }
            _ => {
                if !out.contains(prefix.as_slice()) {
                    out.insert(prefix.clone());
                }
            }
        }
    }
    fn matcher<'a>(m: &'a Matcher, out: &mut Paths<'a>) -> Option<()> {
        match m {
            Matcher::And(items) | Matcher::Or(items) => {
                items.iter().try_for_each(|m| matcher(m, out))
            }
            Matcher::Not(inner) => matcher(inner, out),
            Matcher::Predicate(p) => {
                match (&p.subject, &p.op) {
                    // `payload contains {...}` compares only the object's keys, level by level.
                    (Operand::Payload, PredicateOp::Contains(Operand::Literal(v)))
                        if v.is_object() && !v.as_object().is_some_and(|m| m.is_empty()) =>
                    {
                        object_paths(&mut Vec::new(), v, out)
                    }
                    (subject, _) => operand(subject, out)?,
                }
                match &p.op {
                    PredicateOp::Contains(o)
                    | PredicateOp::StartsWith(o)
                    | PredicateOp::EndsWith(o)
                    | PredicateOp::Compare(_, o)
                    | PredicateOp::In(o) => operand(o, out),
                    PredicateOp::Matches { .. } | PredicateOp::Exists => Some(()),
                }
            }
        }
    }
    let mut out = Paths::new();
    for &i in ids {
        let rule = &rules[i];
        if let Some(when) = &rule.when {
            matcher(when, &mut out)?;
        }
        for action in &rule.actions {
            match action {
                Action::Notify { body: Some(t), .. } => template(t, &mut out)?,
                Action::Check { key: Some(k), .. } => string(k, &mut out)?,
                Action::Notify { body: None, .. }
                | Action::Check { key: None, .. }
                | Action::Forward { .. } => {}
            }
        }
    }
    let mut paths: Vec<Vec<Step>> = out
        .into_iter()
        .map(|p| p.into_iter().map(StepRef::owned).collect())
        .collect();
    paths.sort();
    Some(paths)
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use crate::compile::PlaceholderSecrets;
    use crate::ruleset::RuleSet;

    const PRELUDE: &str = "secret s = env(\"S\")\nsource src: github { secret s }\ntarget t { post \"http://127.0.0.1:9/\" }\n";

    fn load(text: &str) -> RuleSet {
        crate::load::load_text("i.hook", None, text.as_bytes(), &PlaceholderSecrets)
            .result
            .unwrap()
            .rules
    }

    #[test]
    fn concourse_style_rules_are_found_by_one_lookup() {
        let mut text = String::from(PRELUDE);
        for i in 0..500 {
            // `ref` comes first but is the same everywhere; `full_name` is the selective leaf.
            text.push_str(&format!(
                "rule \"r{i}\" {{ from src on \"push\" when $.ref == \"refs/heads/main\" and payload contains {{\"repository\": {{\"full_name\": \"acme/r{i}\"}}}} notify t }}\n"
            ));
        }
        text.push_str("rule \"any push\" { from src on \"push\" when $.ref starts with \"refs/tags/\" notify t }\n");
        text.push_str("rule \"anything\" { from src notify t }\n");
        let rules = load(&text);
        let index = &rules.sources[0].index;
        let payload = json!({"ref": "refs/heads/main", "repository": {"full_name": "acme/r42"}});
        assert_eq!(index.candidates(Some("push"), &payload), vec![42, 500, 501]);
        // A push to another branch of a watched repository finds the repository's rule under its
        // name, and drops it on `ref` (not the indexed path, but checked); so does a push without one.
        let other_branch =
            json!({"ref": "refs/heads/dev", "repository": {"full_name": "acme/r42"}});
        assert_eq!(
            index.candidates(Some("push"), &other_branch),
            vec![500, 501]
        );
        let no_ref = json!({"repository": {"full_name": "acme/r42"}});
        assert_eq!(index.candidates(Some("push"), &no_ref), vec![500, 501]);
        assert_eq!(index.candidates(Some("create"), &payload), vec![501]);
        assert_eq!(index.candidates(None, &json!({})), vec![501]);
        assert_eq!(
            index.shape(),
            (1, 2),
            "one indexed path; two rules always scanned"
        );
        assert_eq!(
            index.by_event["push"].check_sets.len(),
            1,
            "500 rules share one set of other required leaves"
        );
        assert_eq!(
            index.key_paths(Some("push")),
            None,
            "rules always scanned: the payload is parsed anyway"
        );
    }

    #[test]
    fn the_paths_read_first_include_the_other_required_leaves() {
        let mut text = String::from(PRELUDE);
        for i in 0..3 {
            text.push_str(&format!(
                "rule \"r{i}\" {{ from src on \"push\" when payload contains {{\"ref\": \"refs/heads/main\", \"repository\": {{\"full_name\": \"acme/r{i}\"}}}} notify t }}\n"
            ));
        }
        let rules = load(&text);
        let index = &rules.sources[0].index;
        let key = |k: &str| crate::ruleset::Step::Key(k.to_string());
        let full_name = [key("repository"), key("full_name")];
        let git_ref = [key("ref")];
        let paths = index.key_paths(Some("push")).unwrap();
        assert_eq!(paths.len(), 2, "{paths:?}");
        assert!(
            paths.contains(&&full_name[..]) && paths.contains(&&git_ref[..]),
            "{paths:?}"
        );
        let other_branch = json!({"ref": "refs/heads/dev", "repository": {"full_name": "acme/r1"}});
        assert!(index.candidates(Some("push"), &other_branch).is_empty());

        // A leaf at a negative index is not checked: reading it from raw bytes means parsing the
        // array, for every push of the source, watched or not.
        let text = format!(
            "{PRELUDE}rule \"r\" {{ from src on \"push\" when $.repository.full_name == \"acme/r\" and $.commits[-1].id == \"x\" notify t }}\n"
        );
        let rules = load(&text);
        let index = &rules.sources[0].index;
        assert_eq!(index.key_paths(Some("push")).unwrap(), [&full_name[..]]);
        let last_differs = json!({"repository": {"full_name": "acme/r"}, "commits": [{"id": "y"}]});
        assert_eq!(index.candidates(Some("push"), &last_differs), [0]);
    }
}
