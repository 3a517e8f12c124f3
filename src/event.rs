//! An inbound event as rules see it: which source, which event, the headers, the query and the
//! parsed payload. Built by the server after verification, and by `gateway test` / `explain` from files.

use serde_json::Value;

use crate::pairs::Pairs;
use crate::providers;
use crate::ruleset::RuleSet;

/// One delivery to evaluate.
#[derive(Debug, Clone)]
pub struct Event {
    /// Index into `RuleSet::sources`.
    pub source: usize,
    /// That source's name (what `source` reads in rules).
    pub source_name: String,
    /// The event name, where the provider sends one.
    pub name: Option<String>,
    /// The delivery id, where the provider sends one.
    pub delivery: Option<String>,
    /// `(lowercase name, value)`, in arrival order; a repeated header appears once per value.
    pub headers: Pairs,
    pub query: Pairs,
    pub payload: Value,
    /// What the general JSONPath engine would spend on the payload's paths, worked out the first time a
    /// rule needs it ([`crate::eval`]).
    pub(crate) path_text: std::sync::OnceLock<usize>,
}

impl Event {
    /// Builds an event, taking the event name and delivery id from where the source's kind puts them
    /// unless `name` is given.
    pub fn new(
        rules: &RuleSet,
        source: usize,
        name: Option<String>,
        headers: impl Into<Pairs>,
        query: impl Into<Pairs>,
        payload: Value,
    ) -> Event {
        let headers = headers.into().lowercase_names();
        let query = query.into();
        let (found, delivery) =
            providers::identify(rules.sources[source].kind, &headers, &query, &payload);
        Event::with_identity(
            rules,
            source,
            name.or(found),
            delivery,
            headers,
            query,
            payload,
        )
    }

    /// Builds an event whose name and delivery id were already worked out (by `prepare`).
    pub fn with_identity(
        rules: &RuleSet,
        source: usize,
        name: Option<String>,
        delivery: Option<String>,
        headers: impl Into<Pairs>,
        query: impl Into<Pairs>,
        payload: Value,
    ) -> Event {
        Event {
            source,
            source_name: rules.sources[source].name.clone(),
            name,
            delivery,
            headers: headers.into().lowercase_names(),
            query: query.into(),
            payload,
            path_text: std::sync::OnceLock::new(),
        }
    }

    /// The values of a header; `name` must be lowercase.
    pub fn header_values<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a str> + 'a {
        self.headers.values(name)
    }

    pub fn query_values<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a str> + 'a {
        self.query.values(name)
    }
}
