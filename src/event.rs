//! An inbound event as rules see it: which source, which event, the headers, the query and the
//! parsed payload. Built by the server after verification, and by `gateway test` / `explain` from files.

use serde_json::Value;

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
    pub headers: Vec<(String, String)>,
    pub query: Vec<(String, String)>,
    pub payload: Value,
}

impl Event {
    /// Builds an event, taking the event name and delivery id from where the source's kind puts them
    /// unless `name` is given.
    pub fn new(
        rules: &RuleSet,
        source: usize,
        name: Option<String>,
        headers: Vec<(String, String)>,
        query: Vec<(String, String)>,
        payload: Value,
    ) -> Event {
        let headers: Vec<(String, String)> = headers
            .into_iter()
            .map(|(mut n, v)| {
                // In place: names from hyper are already lowercase, so this usually changes nothing.
                n.make_ascii_lowercase();
                (n, v)
            })
            .collect();
        let (found, delivery) =
            providers::identify(rules.sources[source].kind, &headers, &query, &payload);
        let source_name = rules.sources[source].name.clone();
        Event {
            source,
            source_name,
            name: name.or(found),
            delivery,
            headers,
            query,
            payload,
        }
    }

    /// The values of a header; `name` must be lowercase.
    pub fn header_values<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a str> + 'a {
        self.headers
            .iter()
            .filter(move |(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    pub fn query_values<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a str> + 'a {
        self.query
            .iter()
            .filter(move |(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }
}
