//! The delivery log: what became of every request, kept so it can be listed, explained and replayed.
//!
//! Every request the hook port answers becomes a [`Record`]: accepted, matched nothing, filtered,
//! duplicate, a handshake, or rejected (with the reason, without the body). A record of a request that
//! reached evaluation keeps what is needed to explain it later against the rules that judged it: the
//! headers and query with every credential removed, the body (as `--record-bodies` allows) and the rules
//! version.
//!
//! Two tiers:
//! - **memory**: the newest records of this process, bounded by count, bytes and age; appending is a
//!   push under a mutex, with the body shared (not copied) from the request;
//! - **the queue's database**: accepted records are written in the same transaction as their jobs
//!   (`QueueBackend::accept`), so they survive a restart and are visible to every replica.
//!
//! Listing merges both, newest first. Record ids are UUIDv7: ordered by time, unique across
//! processes and replicas, known before anything is stored.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use serde::{Deserialize, Serialize};

use crate::event::Event;
use crate::explain::Explanation;
use crate::pairs::Pairs;
use crate::queue::JobKind;
use crate::ruleset::RuleSet;

/// What became of a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    /// Rules matched and their actions were durably queued (202).
    Accepted,
    /// Verified and evaluated; no rule matched (200).
    NoMatch,
    /// The source's `events` list does not take this event (200).
    Filtered,
    /// The (source, delivery id) was accepted before, within the dedup window (200).
    Duplicate,
    /// A handshake answered (Slack's `url_verification`).
    Handshake,
    /// Refused: 400, 401, 404, 405, 408, 413, 429, 503.
    Rejected,
}

impl Outcome {
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Accepted => "accepted",
            Outcome::NoMatch => "no_match",
            Outcome::Filtered => "filtered",
            Outcome::Duplicate => "duplicate",
            Outcome::Handshake => "handshake",
            Outcome::Rejected => "rejected",
        }
    }

    pub fn parse(s: &str) -> Option<Outcome> {
        [
            Outcome::Accepted,
            Outcome::NoMatch,
            Outcome::Filtered,
            Outcome::Duplicate,
            Outcome::Handshake,
            Outcome::Rejected,
        ]
        .into_iter()
        .find(|o| o.as_str() == s)
    }
}

/// One action a record's delivery led to.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ActionRecord {
    pub rule: String,
    /// Position of the action in its rule.
    pub action: u32,
    pub kind: JobKind,
    pub target: String,
    /// The job that carries it (a coalesced check shares its job with other deliveries).
    pub job: Option<i64>,
}

/// The request as recorded: credentials removed.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RecordedRequest {
    /// `(lowercase name, value)`, without the headers that carry signatures or tokens.
    pub headers: Pairs,
    /// Without a query parameter that carries a token.
    pub query: Pairs,
    /// The raw body, unless `--record-bodies` says not to keep it.
    pub body: Option<Bytes>,
}

/// What became of one request.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Record {
    /// UUIDv7.
    pub id: String,
    /// Unix milliseconds.
    pub received_at: i64,
    /// `None` when no source serves the path.
    pub source: Option<String>,
    /// The provider's delivery id, or the one the gateway assigned.
    pub delivery: Option<String>,
    pub event: Option<String>,
    /// The HTTP status answered.
    pub status: u16,
    pub outcome: Outcome,
    /// Why it was rejected (`verification failed: mismatch`, `body too large`, ...).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// Names of the rules that matched.
    pub matched: Vec<String>,
    pub actions: Vec<ActionRecord>,
    /// The hash of the rules that judged it, for requests that reached evaluation.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rules_version: Option<String>,
    /// The record this one replays.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub replay_of: Option<String>,
    #[serde(skip)]
    pub request: Option<RecordedRequest>,
}

impl Record {
    /// A new record with a fresh id, received now.
    pub fn new(source: Option<String>) -> Record {
        Record {
            id: new_id(),
            received_at: crate::clock::now_ms(),
            source,
            delivery: None,
            event: None,
            status: 0,
            outcome: Outcome::Rejected,
            reason: None,
            matched: Vec::new(),
            actions: Vec::new(),
            rules_version: None,
            replay_of: None,
            request: None,
        }
    }

    /// Bytes it holds, for the log's byte bound.
    pub fn size(&self) -> usize {
        let strings = [&self.source, &self.delivery, &self.event, &self.reason]
            .iter()
            .map(|s| s.as_ref().map_or(0, String::len))
            .sum::<usize>();
        let request = self.request.as_ref().map_or(0, |r| {
            r.headers.text_len() + r.query.text_len() + r.body.as_ref().map_or(0, Bytes::len)
        });
        std::mem::size_of::<Record>()
            + strings
            + self.matched.iter().map(String::len).sum::<usize>()
            + self.actions.len() * std::mem::size_of::<ActionRecord>()
            + request
    }

    /// Whether it passes `filter` (all but pagination).
    pub fn passes(&self, f: &Filter) -> bool {
        f.source
            .as_ref()
            .is_none_or(|s| self.source.as_ref() == Some(s))
            && f.event
                .as_ref()
                .is_none_or(|e| self.event.as_ref() == Some(e))
            && f.rule.as_ref().is_none_or(|r| self.matched.contains(r))
            && f.status.is_none_or(|s| match s {
                StatusFilter::Code(c) => self.status == c,
                StatusFilter::Outcome(o) => self.outcome == o,
            })
            && f.since.is_none_or(|t| self.received_at >= t)
            && f.before.as_ref().is_none_or(|b| self.id < *b)
    }
}

/// A record as the queue's database stores it: the lists as JSON text, the body as bytes.
#[derive(Debug, Clone, PartialEq)]
pub struct RecordRow {
    pub id: String,
    pub received_at: i64,
    pub source: Option<String>,
    pub delivery: Option<String>,
    pub event: Option<String>,
    pub status: i64,
    pub outcome: String,
    pub reason: Option<String>,
    /// JSON array of rule names.
    pub matched: String,
    /// JSON array of actions (their `job` fields included).
    pub actions: String,
    pub rules_version: Option<String>,
    pub replay_of: Option<String>,
    /// JSON arrays of `[name, value]` pairs; `None` when nothing of the request was kept.
    pub headers: Option<String>,
    pub query: Option<String>,
    pub body: Option<Vec<u8>>,
    /// Bytes, for the byte bound.
    pub size: i64,
}

impl Record {
    /// The row to store; `jobs` (when given) are the ids of the actions' jobs, in order.
    pub fn to_row(&self, jobs: Option<&[i64]>) -> RecordRow {
        let mut actions = self.actions.clone();
        if let Some(ids) = jobs {
            for (a, id) in actions.iter_mut().zip(ids) {
                a.job = Some(*id);
            }
        }
        RecordRow {
            id: self.id.clone(),
            received_at: self.received_at,
            source: self.source.clone(),
            delivery: self.delivery.clone(),
            event: self.event.clone(),
            status: i64::from(self.status),
            outcome: self.outcome.as_str().to_string(),
            reason: self.reason.clone(),
            matched: json(&self.matched),
            actions: json(&actions),
            rules_version: self.rules_version.clone(),
            replay_of: self.replay_of.clone(),
            headers: self.request.as_ref().map(|r| json(&r.headers)),
            query: self.request.as_ref().map(|r| json(&r.query)),
            body: self
                .request
                .as_ref()
                .and_then(|r| r.body.as_ref().map(|b| b.to_vec())),
            size: self.size() as i64,
        }
    }

    /// The record a stored row holds (lists that do not parse are left empty).
    pub fn from_row(row: RecordRow) -> Record {
        let request = row.headers.map(|headers| RecordedRequest {
            headers: serde_json::from_str(&headers).unwrap_or_default(),
            query: row
                .query
                .and_then(|q| serde_json::from_str(&q).ok())
                .unwrap_or_default(),
            body: row.body.map(Bytes::from),
        });
        Record {
            id: row.id,
            received_at: row.received_at,
            source: row.source,
            delivery: row.delivery,
            event: row.event,
            status: u16::try_from(row.status).unwrap_or(0),
            outcome: Outcome::parse(&row.outcome).unwrap_or(Outcome::Rejected),
            reason: row.reason,
            matched: serde_json::from_str(&row.matched).unwrap_or_default(),
            actions: serde_json::from_str(&row.actions).unwrap_or_default(),
            rules_version: row.rules_version,
            replay_of: row.replay_of,
            request,
        }
    }
}

/// JSON text of plain data (which cannot fail to serialise).
fn json<T: Serialize + ?Sized>(value: &T) -> String {
    serde_json::to_string(value).unwrap_or_else(|_| "[]".into())
}

/// What the admin API shows of a target: its queue, and how its last deliveries went.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct TargetStats {
    pub name: String,
    pub pending: u64,
    pub inflight: u64,
    /// Unix ms: when the oldest pending job was created.
    pub oldest_pending_at: Option<i64>,
    /// Unix ms: when the next pending job is due (a retry's time, when it is one).
    pub next_attempt_at: Option<i64>,
    /// Unix ms of the last attempt of any outcome, and of the last that reached it (2xx).
    pub last_attempt_at: Option<i64>,
    pub last_delivery_at: Option<i64>,
    pub last_error: Option<String>,
    pub last_error_at: Option<i64>,
}

/// A time-ordered, globally unique record id.
pub fn new_id() -> String {
    uuid::Uuid::now_v7().to_string()
}

/// Which records to list.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Filter {
    pub source: Option<String>,
    pub event: Option<String>,
    /// Records where this rule matched.
    pub rule: Option<String>,
    pub status: Option<StatusFilter>,
    /// Received at or after (unix ms).
    pub since: Option<i64>,
    /// Ids strictly before this one (the `next` of a previous page).
    pub before: Option<String>,
    pub limit: usize,
}

/// `status=` takes an HTTP status or an outcome name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StatusFilter {
    Code(u16),
    Outcome(Outcome),
}

impl StatusFilter {
    pub fn parse(s: &str) -> Option<StatusFilter> {
        match s.parse::<u16>() {
            Ok(c) => Some(StatusFilter::Code(c)),
            Err(_) => Outcome::parse(s).map(StatusFilter::Outcome),
        }
    }
}

/// Which request bodies are kept (`--record-bodies`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum RecordBodies {
    /// Every request that reached evaluation.
    #[default]
    All,
    /// Only those that matched a rule.
    Matched,
    /// None: records keep headers and outcomes only, and cannot be explained or replayed.
    None,
}

/// Bounds of the log (flags of `gateway serve`).
#[derive(Debug, Clone)]
pub struct LogConfig {
    pub max_records: usize,
    pub max_bytes: usize,
    pub max_age: Duration,
    pub bodies: RecordBodies,
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig {
            max_records: 10_000,
            max_bytes: 64 << 20,
            max_age: Duration::from_secs(7 * 24 * 3600),
            bodies: RecordBodies::All,
        }
    }
}

/// The memory tier.
pub struct DeliveryLog {
    config: LogConfig,
    ring: Mutex<Ring>,
    /// Where records not stored with their jobs go to be stored too (replicas on PostgreSQL, so every
    /// replica lists every replica's deliveries); `None` keeps them in memory only.
    persist: Option<tokio::sync::mpsc::Sender<Arc<Record>>>,
}

/// Records waiting to be stored; past this, new ones are kept in memory only (and counted).
pub const PERSIST_BACKLOG: usize = 10_000;

#[derive(Default)]
struct Ring {
    records: VecDeque<Arc<Record>>,
    bytes: usize,
}

impl DeliveryLog {
    pub fn new(config: LogConfig) -> DeliveryLog {
        DeliveryLog {
            config,
            ring: Mutex::new(Ring::default()),
            persist: None,
        }
    }

    /// A log that also hands every record not stored with its jobs to `persist`.
    pub fn persisting(
        config: LogConfig,
        persist: tokio::sync::mpsc::Sender<Arc<Record>>,
    ) -> DeliveryLog {
        DeliveryLog {
            persist: Some(persist),
            ..DeliveryLog::new(config)
        }
    }

    pub fn config(&self) -> &LogConfig {
        &self.config
    }

    /// Whether records are kept at all (`--deliveries-max-records 0` turns the log off).
    pub fn enabled(&self) -> bool {
        self.config.max_records > 0
    }

    /// Appends a record, dropping the oldest past the bounds. With the log off, it is dropped.
    pub fn append(&self, record: Record) -> Arc<Record> {
        let record = Arc::new(record);
        if !self.enabled() {
            return record;
        }
        if let Some(tx) = &self.persist
            && record.outcome != Outcome::Accepted
            && tx.try_send(record.clone()).is_err()
        {
            crate::metrics::records_not_stored();
        }
        let size = record.size();
        let mut ring = self.lock();
        ring.bytes += size;
        ring.records.push_back(record.clone());
        let oldest_kept = crate::clock::now_ms() - self.config.max_age.as_millis() as i64;
        while ring.records.len() > self.config.max_records
            || ring.bytes > self.config.max_bytes
            || ring
                .records
                .front()
                .is_some_and(|r| r.received_at < oldest_kept)
        {
            match ring.records.pop_front() {
                Some(old) => ring.bytes -= old.size(),
                None => break,
            }
        }
        record
    }

    /// Records passing `filter`, newest first, at most `filter.limit`.
    pub fn list(&self, filter: &Filter) -> Vec<Arc<Record>> {
        let ring = self.lock();
        ring.records
            .iter()
            .rev()
            .filter(|r| r.passes(filter))
            .take(filter.limit)
            .cloned()
            .collect()
    }

    pub fn get(&self, id: &str) -> Option<Arc<Record>> {
        let ring = self.lock();
        // Ids are time-ordered and records are appended in time order, near enough: search from the
        // newest end.
        ring.records.iter().rev().find(|r| r.id == id).cloned()
    }

    /// (records, bytes) held.
    pub fn usage(&self) -> (usize, usize) {
        let ring = self.lock();
        (ring.records.len(), ring.bytes)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Ring> {
        self.ring.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// Explains a recorded delivery against `rules`, which should be the version that judged it
/// (`record.rules_version`): per rule, per clause, what each path resolved to.
pub fn explain(rules: &RuleSet, record: &Record) -> Result<Explanation, String> {
    let name = record
        .source
        .as_deref()
        .ok_or("no source serves the path it was sent to")?;
    let source = rules
        .sources()
        .iter()
        .position(|s| s.name() == name)
        .ok_or_else(|| format!("source `{name}` is not in those rules"))?;
    let request = record
        .request
        .as_ref()
        .filter(|_| record.rules_version.is_some())
        .ok_or("it was refused before evaluation")?;
    let body = request
        .body
        .as_ref()
        .ok_or("its body was not kept (`--record-bodies`)")?;
    let headers = request.headers.clone();
    let payload = crate::prepare::payload(&rules.sources()[source], &headers, body)
        .map_err(|m| m.as_str().to_string())?;
    let event = Event::with_identity(
        rules,
        source,
        record.event.clone(),
        record.delivery.clone(),
        headers,
        request.query.clone(),
        payload,
    );
    Ok(crate::explain::explain(rules, &event))
}

/// Merges two newest-first lists (memory and database), without repeats, at most `limit`.
pub fn merge(a: Vec<Arc<Record>>, b: Vec<Arc<Record>>, limit: usize) -> Vec<Arc<Record>> {
    let mut out: Vec<Arc<Record>> = Vec::with_capacity(limit.min(a.len() + b.len()));
    let (mut a, mut b) = (a.into_iter().peekable(), b.into_iter().peekable());
    while out.len() < limit {
        let next = match (a.peek(), b.peek()) {
            (Some(x), Some(y)) if x.id == y.id => {
                b.next();
                a.next()
            }
            (Some(x), Some(y)) if x.id > y.id => a.next(),
            (Some(_), Some(_)) => b.next(),
            (Some(_), None) => a.next(),
            (None, Some(_)) => b.next(),
            (None, None) => None,
        };
        match next {
            Some(r) => out.push(r),
            None => break,
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(source: &str, status: u16, body: usize) -> Record {
        let mut r = Record::new(Some(source.to_string()));
        r.status = status;
        r.request = Some(RecordedRequest {
            body: Some(Bytes::from(vec![b'x'; body])),
            ..RecordedRequest::default()
        });
        r
    }

    #[test]
    fn the_ring_keeps_the_newest_within_count_and_bytes() {
        let log = DeliveryLog::new(LogConfig {
            max_records: 3,
            max_bytes: 1 << 20,
            ..LogConfig::default()
        });
        let ids: Vec<String> = (0..5)
            .map(|_| log.append(record("a", 200, 10)).id.clone())
            .collect();
        let listed: Vec<String> = log
            .list(&Filter {
                limit: 10,
                ..Filter::default()
            })
            .iter()
            .map(|r| r.id.clone())
            .collect();
        assert_eq!(listed, vec![ids[4].clone(), ids[3].clone(), ids[2].clone()]);

        let log = DeliveryLog::new(LogConfig {
            max_records: 1000,
            max_bytes: 100_000,
            ..LogConfig::default()
        });
        for _ in 0..50 {
            log.append(record("a", 200, 10_000));
        }
        let (n, bytes) = log.usage();
        assert!(bytes <= 100_000 && n < 10, "{n} records, {bytes} bytes");
    }

    #[test]
    fn filters_and_pages_newest_first() {
        let log = DeliveryLog::new(LogConfig::default());
        let mut ids = Vec::new();
        for i in 0..10 {
            let mut r = record(
                if i % 2 == 0 { "a" } else { "b" },
                if i % 3 == 0 { 202 } else { 200 },
                1,
            );
            r.matched = if i % 3 == 0 {
                vec!["r1".into()]
            } else {
                vec![]
            };
            ids.push(log.append(r).id.clone());
        }
        let a = log.list(&Filter {
            source: Some("a".into()),
            limit: 100,
            ..Filter::default()
        });
        assert_eq!(a.len(), 5);
        assert!(a.windows(2).all(|w| w[0].id > w[1].id), "newest first");
        let page = log.list(&Filter {
            before: Some(ids[5].clone()),
            limit: 2,
            ..Filter::default()
        });
        assert_eq!(
            page.iter().map(|r| r.id.clone()).collect::<Vec<_>>(),
            vec![ids[4].clone(), ids[3].clone()]
        );
        let by_rule = log.list(&Filter {
            rule: Some("r1".into()),
            limit: 100,
            ..Filter::default()
        });
        assert_eq!(by_rule.len(), 4);
        let accepted = log.list(&Filter {
            status: StatusFilter::parse("202"),
            limit: 100,
            ..Filter::default()
        });
        assert_eq!(accepted.len(), 4);
    }

    #[test]
    fn merging_keeps_order_and_drops_repeats() {
        let log = DeliveryLog::new(LogConfig::default());
        let rs: Vec<Arc<Record>> = (0..6).map(|_| log.append(record("a", 200, 1))).collect();
        let a = vec![rs[5].clone(), rs[3].clone(), rs[1].clone()];
        let b = vec![rs[4].clone(), rs[3].clone(), rs[0].clone()];
        let merged: Vec<String> = merge(a, b, 10).iter().map(|r| r.id.clone()).collect();
        let want: Vec<String> = [5, 4, 3, 1, 0].iter().map(|&i| rs[i].id.clone()).collect();
        assert_eq!(merged, want);
    }
}
