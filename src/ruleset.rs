//! The compiled, immutable rule set: what the server runs.
//!
//! Every name is resolved to an index, every regex compiled, every JSONPath parsed, every secret loaded.
//! A `RuleSet` holds no spans and no handles; it is `Send + Sync + 'static` and swapped whole on reload.
//! `Display` prints a stable canonical dump (the `tests/rules/ok` golden files compare it).

mod action;
mod index;
mod matcher;
mod source;
mod target;

pub use action::{Action, StrPiece, StrTemplate, Template};
pub use index::SourceIndex;
pub(crate) use index::paths_read;
pub use matcher::{
    CompareOp, JsonPath, Matcher, Operand, Predicate, PredicateOp, Quantifier, Step, walk,
};
pub use source::{HmacAlgorithm, HmacOptions, SecretValue, Source, SourcePaths, TokenLocation};
pub(crate) use target::{
    COALESCED_HEADER, DEFAULT_CONCURRENCY, DEFAULT_RETRY, DEFAULT_TIMEOUT, DELIVERY_HEADER,
    GATEWAY_HEADERS, IDEMPOTENCY_HEADER, SIGNATURE_STYLES,
};
pub use target::{Method, Rate, Retry, SignatureStyle, Target};

use std::collections::HashMap;
use std::fmt::{self, Display};
use std::sync::Arc;
use std::time::Duration;

/// Every source, target and rule of one rules file (and its includes).
#[derive(Debug)]
pub struct RuleSet {
    pub(crate) sources: Vec<Source>,
    /// Targets and rules are shared with the set loaded before when they compiled the same
    /// ([`crate::load::reload_file`]): a reload holds one copy of what did not change.
    pub(crate) targets: Vec<Arc<Target>>,
    pub(crate) rules: Vec<Arc<Rule>>,
    /// URL path → index into `sources`.
    pub(crate) by_path: HashMap<String, usize>,
    /// Every declared secret, by name (`forward ... sign with` looks them up at delivery).
    pub(crate) secrets: HashMap<String, SecretValue>,
    /// The hash of the files it was compiled from, set by whoever loaded them (empty until then): the
    /// delivery log records it to explain a delivery against the rules that judged it.
    pub(crate) version: String,
}

/// A rule: which sources and events it listens to, what must hold, and what to do.
#[derive(Debug, PartialEq)]
pub struct Rule {
    pub(crate) name: String,
    /// Indices into `RuleSet::sources`; `None` means every source (`from *`).
    pub(crate) sources: Option<Vec<usize>>,
    /// Accepted event names; `None` accepts every event. Shared by the rules with the same list.
    pub(crate) on: Option<Arc<[String]>>,
    /// Shared with the previous set's rule of the same name when written alike (a reload).
    pub(crate) when: Option<Arc<Matcher>>,
    pub(crate) actions: Vec<Action>,
}

impl RuleSet {
    /// The index of the source serving a URL path.
    pub fn source_index(&self, path: &str) -> Option<usize> {
        self.by_path.get(path).copied()
    }

    /// The source serving a URL path.
    pub fn source_for(&self, path: &str) -> Option<&Source> {
        self.by_path.get(path).map(|&i| &self.sources[i])
    }

    pub fn sources(&self) -> &[Source] {
        &self.sources
    }

    pub fn targets(&self) -> &[Arc<Target>] {
        &self.targets
    }

    pub fn rules(&self) -> &[Arc<Rule>] {
        &self.rules
    }

    /// A target by name.
    pub fn target(&self, name: &str) -> Option<&Target> {
        self.targets.iter().find(|t| t.name == name).map(|t| &**t)
    }

    pub fn secret(&self, name: &str) -> Option<&SecretValue> {
        self.secrets.get(name)
    }

    /// The hash of the rules files it was compiled from (empty when not loaded from files).
    pub fn version(&self) -> &str {
        &self.version
    }

    /// Names the version, before the set is shared.
    pub fn with_version(mut self, version: impl Into<String>) -> RuleSet {
        self.version = version.into();
        self
    }
}

impl Rule {
    pub fn name(&self) -> &str {
        &self.name
    }
}

// A RuleSet crosses threads inside an ArcSwap; this fails to compile if a field stops being Send + Sync.
const _: () = {
    const fn assert_send_sync<T: Send + Sync + 'static>() {}
    assert_send_sync::<RuleSet>();
};

/// Prints a duration the way the language writes it: `1m30s`, `500ms`.
pub(crate) struct ShowDuration(pub(crate) Duration);

impl Display for ShowDuration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut ms = self.0.as_millis();
        if ms == 0 {
            return f.write_str("0s");
        }
        for (unit, size) in [
            ("d", 86_400_000),
            ("h", 3_600_000),
            ("m", 60_000),
            ("s", 1000),
            ("ms", 1),
        ] {
            if ms >= size {
                write!(f, "{}{unit}", ms / size)?;
                ms %= size;
            }
        }
        Ok(())
    }
}

impl Display for RuleSet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for source in &self.sources {
            source.fmt_with(f, self)?;
        }
        for target in &self.targets {
            write!(f, "{target}")?;
        }
        for rule in &self.rules {
            write!(f, "rule {:?}\n  from ", rule.name)?;
            match &rule.sources {
                None => f.write_str("*")?,
                Some(ids) => {
                    let names: Vec<&str> =
                        ids.iter().map(|&i| self.sources[i].name.as_str()).collect();
                    f.write_str(&names.join(", "))?;
                }
            }
            f.write_str("\n")?;
            if let Some(on) = &rule.on {
                let on: Vec<String> = on.iter().map(|e| format!("{e:?}")).collect();
                writeln!(f, "  on {}", on.join(", "))?;
            }
            if let Some(when) = &rule.when {
                writeln!(f, "  when {when}")?;
            }
            for action in &rule.actions {
                writeln!(f, "  {}", action.show(self))?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_print_as_written() {
        let show = |ms: u64| ShowDuration(Duration::from_millis(ms)).to_string();
        assert_eq!(show(0), "0s");
        assert_eq!(show(500), "500ms");
        assert_eq!(show(90_000), "1m30s");
        assert_eq!(show(86_400_000 + 1000), "1d1s");
    }
}
