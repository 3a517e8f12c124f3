//! Between verification and evaluation: what a verified request says, worked out once.
//!
//! [`prepare`] takes a source and a request's headers, query and raw body, and returns its event name, its
//! delivery id and a view of its payload:
//!
//! - [`View::None`]: no rule of the source can match (or the source's `events` filter drops the event),
//!   decided from the few paths the source's index reads; no JSON tree was built;
//! - [`View::Sparse`]: a payload holding only the paths the source's rules read, when every rule reads
//!   simple paths only (`ruleset::paths_read`);
//! - [`View::Full`]: the whole parsed payload.
//!
//! The first two are the fast path: the server's common case (a push nobody watches) is answered after one
//! validating pass over the bytes. [`Options::fast`] turns them off, which is what the property test in
//! `tests/prepare.rs` compares against.
//!
//! INVARIANT: the view never changes the answer. Every view validates the whole body exactly as a full
//! parse does (`extract`'s invariant), so invalid JSON is a 400 whatever the rules read; the index only
//! narrows; a sparse payload holds every path the rules read. Pure: no IO, no clock, no randomness.

use serde_json::Value;

use crate::extract;
use crate::providers::{self, Headers, ProviderKind};
use crate::ruleset::{Source, Step};
use crate::verify;

/// How to prepare.
#[derive(Debug, Clone, Copy)]
pub struct Options {
    /// Use the index and sparse payloads where they suffice (the server always does).
    pub fast: bool,
}

impl Default for Options {
    fn default() -> Self {
        Options { fast: true }
    }
}

/// A verified request, ready to evaluate.
#[derive(Debug, Clone, PartialEq)]
pub struct Prepared {
    /// The event name, where the provider sends one.
    pub event: Option<String>,
    /// The delivery id the sender gave, if any.
    pub delivery: Option<String>,
    pub view: View,
}

/// How much of the payload evaluation gets.
#[derive(Debug, Clone, PartialEq)]
pub enum View {
    /// Nothing can run: the body was checked, no tree was built.
    None {
        /// The source's `events` list does not accept this event.
        filtered: bool,
    },
    /// Only the paths the source's rules read.
    Sparse(Value),
    /// The whole payload.
    Full(Value),
    /// Slack's `url_verification`: answer with this challenge, run nothing.
    Handshake(Value),
}

/// Why a verified request cannot be evaluated. Each is a 400.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Malformed {
    /// The body (or a form delivery's `payload` field) is not JSON.
    NotJson,
    /// A GitHub or Gitea form delivery without its `payload` field.
    NoPayloadField,
    /// The delivery id is not valid UTF-8, longer than [`MAX_DELIVERY_ID`], or holds a control
    /// character ([`valid_delivery`]).
    DeliveryId,
    /// The event name is longer than [`MAX_EVENT`], holds a control character, or is `.` or `..`
    /// ([`valid_event`]).
    Event,
}

impl Malformed {
    pub fn as_str(self) -> &'static str {
        match self {
            Malformed::NotJson => "body is not JSON",
            Malformed::NoPayloadField => "form delivery without a payload field",
            Malformed::DeliveryId => "malformed delivery id",
            Malformed::Event => "malformed event name",
        }
    }
}

/// The longest delivery id accepted (providers send UUIDs and similar).
pub const MAX_DELIVERY_ID: usize = 256;

/// The longest event name accepted (providers send names like `pull_request_review_comment` or
/// `harbor.artifact.pushed`).
pub const MAX_EVENT: usize = 256;

/// The event name and delivery id as a provider that names them in headers sends them, unchecked.
/// The server reads them once, before the body (its request span and record carry them), and hands
/// them to [`prepare`], which checks them.
/// Only [`Head::read`] makes one, and [`prepare`] uses it only for a source of the kind it was read
/// for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Head {
    kind: ProviderKind,
    event: Option<String>,
    delivery: Option<String>,
}

impl Head {
    /// What the request's head names, for a provider that names the event and delivery there
    /// ([`providers::event_from_headers`]); `None` for one that names them in the body.
    pub fn read(kind: ProviderKind, headers: &Headers, query: &Headers) -> Option<Head> {
        if !providers::event_from_headers(kind) {
            return None;
        }
        let (event, delivery) = providers::identify(kind, headers, query, &Value::Null);
        Some(Head {
            kind,
            event,
            delivery,
        })
    }

    /// The event name, if [`prepare`] would accept it.
    pub fn valid_event(&self) -> Option<&str> {
        self.event.as_deref().filter(|e| valid_event(e))
    }

    /// The delivery id, if [`prepare`] would accept it.
    pub fn valid_delivery(&self) -> Option<&str> {
        self.delivery.as_deref().filter(|d| valid_delivery(d))
    }
}

/// Prepares a verified request to `source` for evaluation. `head` is what [`Head::read`] gave for
/// this request, when the caller has read it already; `None` (or a head read for another kind of
/// source) reads it here.
pub fn prepare(
    source: &Source,
    head: Option<Head>,
    headers: &Headers,
    query: &Headers,
    body: &[u8],
    options: Options,
) -> Result<Prepared, Malformed> {
    let kind = source.kind();
    // Form deliveries (GitHub, Gitea) carry the JSON in their `payload` field, and so do Slack's
    // interactive ones; Slack's slash commands are plain forms, evaluated as an object of their fields.
    let form = verify::is_form(headers);
    let field = if form {
        verify::payload_field(body)
    } else {
        None
    };
    if form && field.is_none() && carries_payload_field(kind) {
        return Err(Malformed::NoPayloadField);
    }
    let json: &[u8] = field.as_deref().unwrap_or(body);

    // Providers that name the event and delivery in headers: both are known before the body is read,
    // so the index can decide on a few extracted paths.
    let head = head
        .filter(|h| h.kind == kind)
        .or_else(|| Head::read(kind, headers, query));
    if let Some(Head {
        event, delivery, ..
    }) = head
    {
        let event = checked_event(event)?;
        let delivery = checked_delivery(delivery)?;
        let view = if form && field.is_none() {
            filter(source, event.as_deref(), form_fields(body))
        } else {
            header_kind_view(source, event.as_deref(), json, options)?
        };
        return Ok(Prepared {
            event,
            delivery,
            view,
        });
    }

    // Providers that name them in the body: parse it whole first.
    let payload = if form && field.is_none() {
        form_fields(body)
    } else {
        serde_json::from_slice(json).map_err(|_| Malformed::NotJson)?
    };
    let (event, delivery) = providers::identify(kind, headers, query, &payload);
    let event = checked_event(event)?;
    let delivery = checked_delivery(delivery)?;
    if kind == ProviderKind::Slack
        && payload.get("type").and_then(Value::as_str) == Some("url_verification")
    {
        let challenge = payload.get("challenge").cloned().unwrap_or(Value::Null);
        return Ok(Prepared {
            event,
            delivery,
            view: View::Handshake(challenge),
        });
    }
    let view = filter(source, event.as_deref(), payload);
    Ok(Prepared {
        event,
        delivery,
        view,
    })
}

/// A full view, unless the source's `events` list drops the event.
fn filter(source: &Source, event: Option<&str>, payload: Value) -> View {
    if source.accepts_event(event) {
        View::Full(payload)
    } else {
        View::None { filtered: true }
    }
}

/// The whole payload of a request as evaluation reads it (the JSON body, a form delivery's `payload`
/// field, or a plain form's fields), whatever the source's `events` filter says: explanations of
/// recorded deliveries start from it.
pub fn payload(source: &Source, headers: &Headers, body: &[u8]) -> Result<Value, Malformed> {
    if !verify::is_form(headers) {
        return serde_json::from_slice(body).map_err(|_| Malformed::NotJson);
    }
    match verify::payload_field(body) {
        Some(json) => serde_json::from_slice(&json).map_err(|_| Malformed::NotJson),
        None if carries_payload_field(source.kind()) => Err(Malformed::NoPayloadField),
        None => Ok(form_fields(body)),
    }
}

/// The view of a JSON body whose event is already known.
fn header_kind_view(
    source: &Source,
    event: Option<&str>,
    json: &[u8],
    options: Options,
) -> Result<View, Malformed> {
    let filtered = !source.accepts_event(event);
    let keys = match (filtered, options.fast) {
        (true, _) => Some(Vec::new()),
        (false, true) => source.index.key_paths(event),
        (false, false) => None,
    };
    let Some(keys) = keys else {
        return parse_full(json);
    };
    // The index's paths, and (when the rules read only simple paths) every path they read, in one pass.
    let mut paths: Vec<&[Step]> = keys;
    let reads = if options.fast { source.reads() } else { None };
    for p in reads.unwrap_or_default() {
        if !paths.contains(&p.as_slice()) {
            paths.push(p);
        }
    }
    let values = extract::extract(json, &paths).map_err(|_| Malformed::NotJson)?;
    if filtered {
        return Ok(View::None { filtered: true });
    }
    let lookup = |steps: &[Step]| {
        paths
            .iter()
            .position(|k| *k == steps)
            .and_then(|i| values[i].as_ref())
    };
    if source.index.candidates_with(event, lookup).is_empty() {
        return Ok(View::None { filtered: false });
    }
    match reads {
        Some(_) => Ok(View::Sparse(extract::sparse(&paths, values))),
        None => parse_full(json),
    }
}

fn parse_full(json: &[u8]) -> Result<View, Malformed> {
    serde_json::from_slice(json)
        .map(View::Full)
        .map_err(|_| Malformed::NotJson)
}

/// An event name goes into logs, records and, through `${event}`, a target's URL and headers: one
/// with a control character could not be sent in a header (every attempt of its deliveries would
/// fail), and a body-named one (Slack's, a CloudEvent's `type`) could be of any length.
fn checked_event(event: Option<String>) -> Result<Option<String>, Malformed> {
    match event {
        Some(e) if !valid_event(&e) => Err(Malformed::Event),
        other => Ok(other),
    }
}

/// Whether an event name can be used: at most [`MAX_EVENT`] bytes, no control characters, not a
/// dot segment (`.` or `..`, which a URL resolves even when encoded).
pub fn valid_event(e: &str) -> bool {
    e.len() <= MAX_EVENT && !e.chars().any(char::is_control) && !is_dot_segment(e)
}

fn is_dot_segment(s: &str) -> bool {
    s == "." || s == ".."
}

/// A delivery id must identify one delivery: one that lost bytes to UTF-8 repair (hyper's header values
/// are bytes; the server decodes them lossily) could collide with another, so it is refused.
fn checked_delivery(delivery: Option<String>) -> Result<Option<String>, Malformed> {
    match delivery {
        Some(d) if !valid_delivery(&d) => Err(Malformed::DeliveryId),
        other => Ok(other),
    }
}

/// Whether a delivery id can identify one delivery: no bytes lost to UTF-8 repair, at most
/// [`MAX_DELIVERY_ID`] bytes, no control characters, not `.` or `..`. An id named in a body (Slack's
/// `event_id`, a CloudEvent's `id`) may hold any character; one with a control character could never
/// go out in the `X-Hookgate-Delivery` header of its deliveries (an HTTP header value holds none but
/// a tab) and would break a line of the text log; a dot segment in a target's URL (`${delivery}`)
/// would be resolved even when encoded.
pub fn valid_delivery(d: &str) -> bool {
    !d.contains('\u{FFFD}')
        && d.len() <= MAX_DELIVERY_ID
        && !d.chars().any(char::is_control)
        && !is_dot_segment(d)
}

/// Kinds whose form deliveries must carry the JSON in a `payload` field.
fn carries_payload_field(kind: ProviderKind) -> bool {
    matches!(
        kind,
        ProviderKind::GitHub | ProviderKind::Gitea | ProviderKind::Forgejo
    )
}

/// A form body as an object of its fields (the last of a repeated name wins, as in JSON).
fn form_fields(body: &[u8]) -> Value {
    Value::Object(
        form_urlencoded::parse(body)
            .map(|(k, v)| (k.into_owned(), Value::String(v.into_owned())))
            .collect(),
    )
}
