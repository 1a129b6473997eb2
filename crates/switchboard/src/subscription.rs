//! Subscriptions as data: the body users send, its validation, and event matching. Pure logic;
//! the store persists them and the dispatcher uses them.

pub mod auth;
pub mod destination;
pub mod health;
pub mod stored;
pub mod tls;

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::delivery::retry::DEFAULT_SCHEDULE_SECS;
use crate::delivery::signing::{Scheme, Secret};
use crate::event::{Event, FieldError, catalog};

/// Headers Switchboard sets itself, which a subscription's own headers may not override.
const RESERVED_HEADERS: [&str; 7] = [
    "content-type",
    "content-length",
    "user-agent",
    "host",
    "connection",
    "transfer-encoding",
    "te",
];
const RESERVED_PREFIXES: [&str; 2] = ["webhook-", "switchboard-"];

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Ordering {
    #[default]
    None,
    PerAgent,
}

/// How a subscription's events reach it (DESIGN §16): pushed to its receiver, or pulled by
/// its consumers from `…/messages`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Mode {
    #[default]
    Push,
    Pull,
}

/// Where a new pull subscription's cursors start: after the events already in the log, or
/// before the oldest kept.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Start {
    #[default]
    Now,
    Earliest,
}

/// The fields only a push subscription has: naming one for a pull subscription is a `422`.
pub const PUSH_ONLY: [&str; 14] = [
    "url",
    "auth",
    "tls",
    "batch",
    "destination",
    "headers",
    "secret",
    "signature_scheme",
    "ordering",
    "coalesce",
    "rate_limit_per_sec",
    "max_in_flight",
    "retry_schedule_secs",
    "heartbeat_secs",
];

/// Most partitions a pull subscription may have.
pub const MAX_PARTITIONS: u32 = 64;

/// The partition of an event with agent key `key` among `partitions` (DESIGN §16):
/// FNV-1a, 64-bit, of the key's UTF-8 bytes, modulo the count; no key: partition 0. Stable
/// across restarts, nodes and releases.
pub fn partition_of(key: Option<&str>, partitions: u32) -> u32 {
    let Some(key) = key else { return 0 };
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for b in key.as_bytes() {
        hash ^= u64::from(*b);
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
    }
    (hash % u64::from(partitions.max(1))) as u32
}

/// Whether a pending StatusChanged delivery gives way to a later one of the same agent.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Coalesce {
    /// Every event is delivered.
    #[default]
    None,
    /// Only the latest status of an agent: a pending StatusChanged delivery ends `superseded`
    /// when a later one of the same agent arrives. Other events are always delivered.
    LatestStatus,
}

/// Which events a subscription receives. Absent parts match everything (but System and derived
/// events, which only a filter naming category 0 or 5 receives).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Filter {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub events: Option<Vec<EventFilter>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub usernames: Option<Vec<String>>,
    /// `AdditionalFields` values: for every key, the event's value must equal one of those
    /// listed (strings, integers, booleans; by type and value: `"16"` is not `16`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Object>)]
    pub fields: Option<BTreeMap<String, Vec<Value>>>,
}

/// Batched delivery: a JSON array of up to `max_events` events per request, sent once that
/// many are ready or the oldest has waited `max_wait_ms`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Batch {
    /// 1 to 1000.
    #[schema(minimum = 1, maximum = 1000)]
    pub max_events: u32,
    /// 0 to 10000.
    #[serde(default)]
    #[schema(minimum = 0, maximum = 10000)]
    pub max_wait_ms: u64,
}

/// Most usernames a filter lists (DESIGN §23): every event is matched against them.
pub const MAX_USERNAMES: usize = 1000;

/// Most keys, and most values in all, a field filter may hold.
pub const MAX_FIELD_KEYS: usize = 16;
pub const MAX_FIELD_VALUES: usize = 100;

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct EventFilter {
    pub category: u8,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub codes: Option<Vec<u32>>,
}

impl Filter {
    /// Whether an event of `category` and `code`, of agent `username`, with `fields` as its
    /// `AdditionalFields`, matches.
    pub fn matches(
        &self,
        category: u8,
        code: u32,
        username: Option<&str>,
        fields: &Map<String, Value>,
    ) -> bool {
        let event_ok = match &self.events {
            None => catalog::by_default(category),
            Some(list) => list.iter().any(|f| {
                f.category == category && f.codes.as_ref().is_none_or(|c| c.contains(&code))
            }),
        };
        let user_ok = match &self.usernames {
            None => true,
            Some(names) => username.is_some_and(|u| names.iter().any(|n| n == u)),
        };
        let fields_ok = self
            .fields
            .iter()
            .flatten()
            .all(|(name, allowed)| fields.get(name).is_some_and(|v| allowed.contains(v)));
        event_ok && user_ok && fields_ok
    }
}

/// Does a subscription with `filter` (None: no filter) receive `event`?
pub fn matches(filter: Option<&Filter>, event: &Event) -> bool {
    match filter {
        None => catalog::by_default(event.category),
        Some(f) => f.matches(event.category, event.code, event.username(), &event.fields),
    }
}

/// The subscription body, as created, patched and returned (DESIGN §4).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SubscriptionSpec {
    /// The receiver (push). Required for push subscriptions; a pull subscription has none.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub url: String,
    /// Push only, instead of `url`: a destination other than HTTP (DESIGN §17). Stored and
    /// read as given; `{"type": "http"}` is kept as `url`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub destination: Option<destination::Destination>,
    /// `push` (default) or `pull`: pull subscriptions are read from `…/messages`.
    #[serde(default)]
    pub mode: Mode,
    /// Pull only: how many partitions its events are spread over, by agent (1 to 64, default
    /// 1; fixed at creation).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(minimum = 1, maximum = 64)]
    pub partitions: Option<u32>,
    /// Pull only, at creation: `now` (default: the events received from now on) or
    /// `earliest` (every event the log keeps).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start: Option<Start>,
    #[serde(default)]
    pub description: String,
    #[serde(default)]
    pub filter: Option<Filter>,
    /// Generated when absent; left out of answers to keys without `manage`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret: Option<String>,
    #[serde(default = "yes")]
    pub enabled: bool,
    #[serde(default)]
    pub ordering: Ordering,
    #[serde(default)]
    pub rate_limit_per_sec: Option<u32>,
    #[serde(default = "default_max_in_flight")]
    pub max_in_flight: u32,
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    #[serde(default)]
    pub retry_schedule_secs: Option<Vec<u64>>,
    #[serde(default)]
    #[schema(minimum = 1, maximum = 604800)]
    pub heartbeat_secs: Option<u64>,
    /// An attempt that would start more than this after the event was received is not made:
    /// the delivery ends `expired`. Null: no limit.
    #[serde(default)]
    #[schema(minimum = 1, maximum = 31536000)]
    pub max_age_secs: Option<u64>,
    /// When its oldest pending delivery has waited longer than this, SubscriptionLagging (System
    /// event 6) tells the tenant's monitors; SubscriptionCaughtUp (7) once it is back under half.
    /// Null: no budget.
    #[serde(default)]
    #[schema(minimum = 1, maximum = 31536000)]
    pub lag_budget_secs: Option<u64>,
    #[serde(default)]
    pub coalesce: Coalesce,
    /// HTTP only: many events per request (DESIGN §17). Null: one event per request.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub batch: Option<Batch>,
    /// `v1` (HMAC-SHA256, `whsec_` secret), `v1a` (Ed25519, `whsk_` key pair, verified with
    /// `public_key`), `github` or `stripe` (`v1` and that ecosystem's header; DESIGN §20).
    #[serde(default)]
    pub signature_scheme: Scheme,
    /// HTTP only: how the receiver wants to be called — Basic, Bearer or OAuth 2 client
    /// credentials (DESIGN §20). Its secrets are write-only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub auth: Option<auth::Auth>,
    /// `https` receivers only: a client certificate and key (mutual TLS) and a private CA
    /// (DESIGN §20). The key is write-only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<tls::Tls>,
    /// `AdditionalFields` changed in the bodies this subscription is sent (every destination,
    /// and pull messages), before signing: `drop`, `mask` or `hash` (DESIGN §19). Each field
    /// must be in the catalog; at most 32. The log and streams are not changed.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    #[schema(value_type = BTreeMap<String, crate::redact::Mode>)]
    pub redact: crate::redact::Rules,
}

fn yes() -> bool {
    true
}

fn default_max_in_flight() -> u32 {
    16
}

/// Longest Heartbeat period: a week.
const MAX_HEARTBEAT_SECS: u64 = 7 * 24 * 3600;
/// Longest freshness budget: a year.
const MAX_AGE_SECS: u64 = 365 * 24 * 3600;

/// Longest retry delay accepted in a custom schedule: one week.
const MAX_RETRY_DELAY_SECS: u64 = 7 * 24 * 3600;

impl SubscriptionSpec {
    /// Reads a subscription body (as created, or as a patch leaves it) and validates it; every
    /// problem names its field.
    pub fn from_value(value: Value) -> Result<Self, Vec<FieldError>> {
        if value.get("mode").and_then(Value::as_str) == Some("pull") {
            let named: Vec<FieldError> = PUSH_ONLY
                .iter()
                .filter(|f| value.get(**f).is_some_and(|v| !v.is_null()))
                .map(|f| FieldError::new(None, *f, "is for push subscriptions only (mode: push)"))
                .collect();
            if !named.is_empty() {
                return Err(named);
            }
        }
        let given = |f: &str| value.get(f).is_some_and(|v| !v.is_null());
        if given("url") && given("destination") {
            // The answers' two forms of one HTTP receiver are one; anything else is two.
            let same = value["destination"].get("type").and_then(Value::as_str) == Some("http")
                && value["destination"].get("url") == value.get("url");
            if !same {
                return Err(vec![FieldError::new(
                    None,
                    "destination",
                    "give either url (an HTTP receiver) or destination, not both",
                )]);
            }
        }
        let mut spec: SubscriptionSpec = serde_path_to_error::deserialize(value).map_err(|e| {
            let path = e.path().to_string();
            vec![FieldError::at_path(&path, e.into_inner().to_string())]
        })?;
        if let Some(destination::Destination::Http { url }) = &spec.destination {
            spec.url = url.clone();
            spec.destination = None;
        }
        spec.validate()?;
        Ok(spec)
    }

    /// Checks what serde cannot; every problem is named.
    pub fn validate(&self) -> Result<(), Vec<FieldError>> {
        let mut errors = Vec::new();
        let mut err = |field: &str, msg: &str| errors.push(FieldError::new(None, field, msg));
        let pull = self.mode == Mode::Pull;
        if pull {
            if !(1..=MAX_PARTITIONS).contains(&self.partitions.unwrap_or(1)) {
                err("partitions", "must be 1 to 64");
            }
        } else {
            if self.partitions.is_some() {
                err("partitions", "is for pull subscriptions only (mode: pull)");
            }
            if self.start.is_some() {
                err("start", "is for pull subscriptions only (mode: pull)");
            }
        }
        if let Some(d) = &self.destination {
            for (field, why) in d.problems() {
                errors.push(FieldError::new(None, field, &why));
            }
        }
        if let Some(t) = &self.tls {
            for (field, why) in t.problems() {
                errors.push(FieldError::new(None, field, &why));
            }
            let https = match &self.destination {
                Some(d) => d.kind() == "http" && self.url.starts_with("https://"),
                None => self.url.starts_with("https://"),
            };
            if !https && !pull {
                let why = "is for https receivers only";
                errors.push(FieldError::new(None, "tls", why));
            }
        }
        if let Some(a) = &self.auth {
            for (field, why) in a.problems() {
                errors.push(FieldError::new(None, field, &why));
            }
            if self
                .destination
                .as_ref()
                .is_some_and(|d| d.kind() != "http")
            {
                let why = "is for HTTP receivers only: a broker's credentials go in its url";
                errors.push(FieldError::new(None, "auth", why));
            }
            if self
                .headers
                .keys()
                .any(|h| h.eq_ignore_ascii_case("authorization"))
            {
                let why = "sets Authorization, and so does headers.Authorization: give one";
                errors.push(FieldError::new(None, "auth", why));
            }
        }
        let mut err = |field: &str, msg: &str| errors.push(FieldError::new(None, field, msg));
        match reqwest::Url::parse(&self.url) {
            _ if pull => {}
            _ if self.destination.is_some() && self.url.is_empty() => {}
            _ if self.url.is_empty() => err("url", "is required (or mode: pull)"),
            Ok(u) if !matches!(u.scheme(), "http" | "https") => {
                err("url", "must be an http or https URL")
            }
            Ok(u) if u.host_str().is_none_or(str::is_empty) => err("url", "must name a host"),
            Ok(u) if !u.username().is_empty() || u.password().is_some() => {
                err("url", "must not carry credentials; use headers instead")
            }
            Ok(_) => {}
            Err(_) => err("url", "must be an absolute http or https URL"),
        }
        if self.url.len() > 2048 {
            err("url", "must be at most 2048 characters");
        }
        if self.description.len() > 1000 {
            err("description", "must be at most 1000 characters");
        }
        if let Some(secret) = &self.secret {
            match Secret::parse(secret) {
                Err(msg) => err("secret", msg),
                Ok(s) if !s.signs_for(self.signature_scheme) => {
                    err("secret", self.signature_scheme.wants())
                }
                Ok(_) => {}
            }
        }
        if let Some(filter) = &self.filter {
            for (i, f) in filter.events.iter().flatten().enumerate() {
                if pull && !(1..=5).contains(&f.category) {
                    let msg = "must be 1 to 5: System events are not in the log, so not pulled";
                    err(&format!("filter.events[{i}].category"), msg);
                } else if !pull && f.category > 5 {
                    err(&format!("filter.events[{i}].category"), "must be 0 to 5");
                }
            }
            if filter.usernames.as_ref().is_some_and(Vec::is_empty) {
                err(
                    "filter.usernames",
                    "must not be empty; leave it out to match every agent",
                );
            }
            if filter.usernames.as_ref().map_or(0, Vec::len) > MAX_USERNAMES {
                err(
                    "filter.usernames",
                    &format!("may list at most {MAX_USERNAMES} usernames"),
                );
            }
            if let Some(fields) = &filter.fields {
                if fields.len() > MAX_FIELD_KEYS {
                    err("filter.fields", "may name at most 16 fields");
                }
                if fields.values().map(Vec::len).sum::<usize>() > MAX_FIELD_VALUES {
                    err("filter.fields", "may list at most 100 values in all");
                }
                for (name, values) in fields {
                    if values.is_empty() {
                        err(
                            &format!("filter.fields.{name}"),
                            "must list at least one value",
                        );
                    }
                    for (i, v) in values.iter().enumerate() {
                        let ok = v.is_string() || v.is_boolean() || v.is_i64() || v.is_u64();
                        if !ok {
                            err(
                                &format!("filter.fields.{name}[{i}]"),
                                "must be a string, an integer or a boolean",
                            );
                        }
                    }
                }
            }
        }
        if self.rate_limit_per_sec == Some(0) {
            err(
                "rate_limit_per_sec",
                "must be at least 1, or null for no limit",
            );
        }
        if !(1..=1000).contains(&self.max_in_flight) {
            err("max_in_flight", "must be 1 to 1000");
        }
        for (name, value) in &self.headers {
            let lower = name.to_ascii_lowercase();
            let field = format!("headers.{name}");
            if RESERVED_HEADERS.contains(&lower.as_str())
                || RESERVED_PREFIXES.iter().any(|p| lower.starts_with(p))
            {
                err(&field, "is set by Switchboard and cannot be overridden");
            } else if reqwest::header::HeaderName::from_bytes(name.as_bytes()).is_err() {
                err(&field, "is not a valid header name");
            } else if reqwest::header::HeaderValue::from_str(value).is_err() {
                err(&field, "has a value that is not a valid header value");
            }
        }
        if let Some(schedule) = &self.retry_schedule_secs {
            if schedule.len() > 50 {
                err("retry_schedule_secs", "must have at most 50 delays");
            }
            if schedule.iter().any(|&d| d > MAX_RETRY_DELAY_SECS) {
                err(
                    "retry_schedule_secs",
                    "delays must be at most 604800 seconds (a week)",
                );
            }
        }
        // Bounded so that milliseconds fit in an i64 with room to spare (a huge value once
        // turned negative there: every idle step sent a Heartbeat).
        if !(1..=MAX_HEARTBEAT_SECS).contains(&self.heartbeat_secs.unwrap_or(1)) {
            err(
                "heartbeat_secs",
                "must be 1 to 604800 (a week), or null for none",
            );
        }
        if !(1..=MAX_AGE_SECS).contains(&self.max_age_secs.unwrap_or(1)) {
            err(
                "max_age_secs",
                "must be 1 to 31536000 (a year), or null for no limit",
            );
        }
        if !(1..=MAX_AGE_SECS).contains(&self.lag_budget_secs.unwrap_or(1)) {
            err(
                "lag_budget_secs",
                "must be 1 to 31536000 (a year), or null for none",
            );
        }
        if self.redact.len() > crate::redact::MAX_FIELDS {
            err("redact", "may name at most 32 fields");
        }
        if let Some(b) = &self.batch {
            if !(1..=1000).contains(&b.max_events) {
                err("batch.max_events", "must be 1 to 1000");
            }
            if b.max_wait_ms > 10_000 {
                err("batch.max_wait_ms", "must be 0 to 10000");
            }
            if self
                .destination
                .as_ref()
                .is_some_and(|d| d.kind() != "http")
            {
                err(
                    "batch",
                    "is for HTTP receivers only: a broker destination gets one message per event",
                );
            }
        }
        if errors.is_empty() {
            Ok(())
        } else {
            Err(errors)
        }
    }

    /// Its JSON form: a pull subscription's without the push-only fields (so a merge patch of it
    /// names only what the caller sent).
    pub fn to_value(&self) -> Value {
        let mut value = serde_json::to_value(self).unwrap_or_default();
        if let (Mode::Pull, Some(map)) = (self.mode, value.as_object_mut()) {
            for field in PUSH_ONLY {
                map.remove(field);
            }
        }
        value
    }

    pub fn is_pull(&self) -> bool {
        self.mode == Mode::Pull
    }

    /// A pull subscription's partitions (1 for push).
    pub fn partition_count(&self) -> u32 {
        self.partitions.unwrap_or(1)
    }

    /// For a pull subscription: whether an event of the log (its columns, and the stored body,
    /// parsed only when the filter's fields or a `SessionId` key need it) is one of its
    /// messages at `now`, and in which partition.
    #[allow(clippy::too_many_arguments)]
    pub fn pulled(
        &self,
        category: u8,
        code: u32,
        username: Option<&str>,
        body: &str,
        received_at: i64,
        now: i64,
    ) -> Option<u32> {
        if let Some(max) = self.max_age_secs
            && now - received_at > i64::try_from(max).unwrap_or(i64::MAX / 1000) * 1000
        {
            return None;
        }
        let partitions = self.partition_count();
        let want_fields = self.filter.as_ref().is_some_and(|f| f.fields.is_some())
            || (partitions > 1 && username.is_none());
        let fields = if want_fields {
            #[derive(Deserialize)]
            struct Fields {
                #[serde(rename = "AdditionalFields", default)]
                fields: Map<String, Value>,
            }
            serde_json::from_str::<Fields>(body)
                .map(|f| f.fields)
                .unwrap_or_default()
        } else {
            Map::new()
        };
        let matched = match &self.filter {
            None => catalog::by_default(category),
            Some(f) => f.matches(category, code, username, &fields),
        };
        let key = username.or_else(|| fields.get("SessionId").and_then(Value::as_str));
        matched.then(|| partition_of(key, partitions))
    }

    /// The retry delays after the first attempt.
    pub fn schedule(&self) -> &[u64] {
        self.retry_schedule_secs
            .as_deref()
            .unwrap_or(&DEFAULT_SCHEDULE_SECS)
    }
}

/// RFC 7396 JSON merge patch: `patch` laid over `target`; `null` removes.
pub fn merge_patch(target: &mut Value, patch: Value) {
    match patch {
        Value::Object(fields) => {
            if !target.is_object() {
                *target = Value::Object(Default::default());
            }
            let map = target.as_object_mut().expect("made an object above");
            for (k, v) in fields {
                if v.is_null() {
                    map.remove(&k);
                } else {
                    merge_patch(map.entry(k).or_insert(Value::Null), v);
                }
            }
        }
        other => *target = other,
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn spec(v: Value) -> SubscriptionSpec {
        serde_json::from_value(v).unwrap()
    }

    fn check(v: Value, fields: &[&str]) {
        let got: Vec<String> = match spec(v.clone()).validate() {
            Ok(()) => vec![],
            Err(e) => e.into_iter().map(|e| e.field).collect(),
        };
        assert_eq!(got, fields, "{v}");
    }

    /// Deserialization problems name their field, also one with an empty name (found by
    /// fuzzing: `{"url": …, "": 1}` named the field "").
    #[test]
    fn body_problems_name_their_field() {
        let fields = |v: Value| -> Vec<String> {
            match SubscriptionSpec::from_value(v) {
                Ok(_) => vec![],
                Err(e) => e.into_iter().map(|e| e.field).collect(),
            }
        };
        let url = "https://crm.example.com/hooks";
        assert_eq!(fields(json!({"url": url, "": 1})), ["body"]);
        assert_eq!(fields(json!({"url": url, "filter": {"": 1}})), ["filter"]);
        assert_eq!(fields(json!({"url": url, "ordering": "x"})), ["ordering"]);
        assert_eq!(fields(json!({})), ["url"]);
        assert_eq!(
            fields(json!({"url": url, "filter": {"events": [{}]}})),
            ["filter.events[0].category"]
        );
        assert_eq!(
            fields(json!({"url": url, "signature_scheme": "v1a",
                          "secret": "whsec_C2FVsBQIhrscChlQIMV+b5sSYspob7oD"})),
            ["secret"]
        );
        assert_eq!(
            fields(json!({"url": url, "max_age_secs": 0})),
            ["max_age_secs"]
        );
        for huge in [31_536_001u64, u64::MAX] {
            let body = json!({"url": url, "max_age_secs": huge, "heartbeat_secs": huge});
            assert_eq!(fields(body), ["heartbeat_secs", "max_age_secs"]);
        }
        let longest = json!({"url": url, "max_age_secs": 31_536_000, "heartbeat_secs": 604_800});
        assert!(fields(longest).is_empty());
        assert_eq!(
            fields(json!({"url": url, "coalesce": "latest"})),
            ["coalesce"]
        );
        assert_eq!(
            fields(json!({"url": url, "coalesce": "latest_status"})),
            Vec::<String>::new()
        );
    }

    #[test]
    fn validation() {
        let ok = json!({"url": "https://crm.example.com/hooks"});
        check(ok.clone(), &[]);
        let with = |k: &str, v: Value| {
            let mut o = ok.clone();
            o[k] = v;
            o
        };
        check(with("url", json!("ftp://x.example.com")), &["url"]);
        check(with("url", json!("/relative")), &["url"]);
        check(
            with("url", json!("https://user:pw@x.example.com")),
            &["url"],
        );
        check(with("url", json!("http://127.0.0.1:9000/x")), &[]);
        check(with("secret", json!("nope")), &["secret"]);
        check(
            with("secret", json!("whsec_C2FVsBQIhrscChlQIMV+b5sSYspob7oD")),
            &[],
        );
        check(with("max_in_flight", json!(0)), &["max_in_flight"]);
        check(
            with("rate_limit_per_sec", json!(0)),
            &["rate_limit_per_sec"],
        );
        check(with("headers", json!({"X-Crm-Token": "t"})), &[]);
        check(
            with("headers", json!({"Webhook-Id": "x"})),
            &["headers.Webhook-Id"],
        );
        check(
            with("headers", json!({"content-type": "x"})),
            &["headers.content-type"],
        );
        check(
            with("headers", json!({"bad name": "x"})),
            &["headers.bad name"],
        );
        check(with("retry_schedule_secs", json!([1, 1])), &[]);
        check(
            with("retry_schedule_secs", json!([1, 999_999_999])),
            &["retry_schedule_secs"],
        );
        check(
            with("filter", json!({"events": [{"category": 9}]})),
            &["filter.events[0].category"],
        );
        check(
            with("filter", json!({"usernames": []})),
            &["filter.usernames"],
        );
        let many: Vec<String> = (0..=MAX_USERNAMES).map(|i| format!("agent{i}")).collect();
        check(
            with("filter", json!({"usernames": many})),
            &["filter.usernames"],
        );
        let most = &many[..MAX_USERNAMES];
        check(with("filter", json!({"usernames": most})), &[]);
        check(with("heartbeat_secs", json!(0)), &["heartbeat_secs"]);
        let s = spec(ok);
        assert!(s.enabled);
        assert_eq!((s.max_in_flight, s.ordering), (16, Ordering::None));
        assert_eq!(s.schedule(), &DEFAULT_SCHEDULE_SECS);
    }

    #[test]
    fn filter_matching() {
        let f = |v: Value| -> Filter { serde_json::from_value(v).unwrap() };
        let none = Filter::default();
        assert!(none.matches(1, 3, Some("jdoe"), &Map::new()));
        assert!(none.matches(2, 9, None, &Map::new()));
        assert!(
            !none.matches(0, 1, None, &Map::new()),
            "System events only when named"
        );
        let agents = f(json!({"events": [{"category": 1, "codes": [1, 2]}, {"category": 3}]}));
        assert!(agents.matches(1, 1, None, &Map::new()));
        assert!(!agents.matches(1, 3, None, &Map::new()));
        assert!(agents.matches(3, 77, None, &Map::new()));
        assert!(!agents.matches(2, 1, None, &Map::new()));
        let system = f(json!({"events": [{"category": 0}]}));
        assert!(system.matches(0, 4, None, &Map::new()));
        let users = f(json!({"usernames": ["jdoe"]}));
        assert!(users.matches(1, 3, Some("jdoe"), &Map::new()));
        assert!(!users.matches(1, 3, Some("other"), &Map::new()));
        assert!(!users.matches(2, 3, None, &Map::new()));
    }

    #[test]
    fn field_filters_match_by_type_and_value() {
        let f: Filter = serde_json::from_value(json!({
            "fields": {"SessionType": ["CCA"], "ActivityCode": [16, 36]}
        }))
        .unwrap();
        let fields = |v: Value| v.as_object().unwrap().clone();
        let cca_16 = fields(json!({"SessionType": "CCA", "ActivityCode": 16}));
        assert!(f.matches(1, 3, None, &cca_16));
        assert!(
            f.matches(2, 9, None, &cca_16),
            "no `events`: every non-System event"
        );
        assert!(!f.matches(0, 1, None, &cca_16));
        let tel = fields(json!({"SessionType": "TelAgent", "ActivityCode": 16}));
        assert!(!f.matches(1, 3, None, &tel));
        let text = fields(json!({"SessionType": "CCA", "ActivityCode": "16"}));
        assert!(!f.matches(1, 3, None, &text), "\"16\" is not 16");
        let missing = fields(json!({"SessionType": "CCA"}));
        assert!(!f.matches(1, 3, None, &missing));
    }

    #[test]
    fn field_filters_are_bounded_and_typed() {
        let ok = json!({"url": "https://example.com/h"});
        let with_fields = |fields: Value| {
            let mut b = ok.clone();
            b["filter"] = json!({"fields": fields});
            b
        };
        let keys: serde_json::Map<String, Value> =
            (0..17).map(|i| (format!("F{i}"), json!([1]))).collect();
        check(with_fields(Value::Object(keys)), &["filter.fields"]);
        check(
            with_fields(json!({"A": (0..101).collect::<Vec<_>>()})),
            &["filter.fields"],
        );
        check(
            with_fields(json!({"A": [1.5, null, "x", true, 7]})),
            &["filter.fields.A[0]", "filter.fields.A[1]"],
        );
        check(with_fields(json!({"A": []})), &["filter.fields.A"]);
    }

    /// The published FNV-1a 64-bit vectors, through the partition function (DESIGN §16 fixes
    /// it across releases: a consumer's partition must not move).
    #[test]
    fn partitions_are_fnv1a_64_of_the_agent_key() {
        assert_eq!(partition_of(None, 7), 0);
        for (key, hash) in [
            ("", 0xcbf2_9ce4_8422_2325u64),
            ("a", 0xaf63_dc4c_8601_ec8c),
            ("foobar", 0x8594_4171_f739_67e8),
        ] {
            for n in [1u32, 3, 64] {
                assert_eq!(
                    u64::from(partition_of(Some(key), n)),
                    hash % u64::from(n),
                    "{key}"
                );
            }
        }
    }

    #[test]
    fn pull_subscriptions_match_by_filter_age_and_partition() {
        let spec = |v: Value| SubscriptionSpec::from_value(v).unwrap();
        let body = |user: &str| {
            json!({"Id": "x", "AdditionalFields": {"SessionId": user, "SessionType": "CCA"}})
                .to_string()
        };
        let all = spec(json!({"mode": "pull", "partitions": 4, "max_age_secs": 60}));
        let now = 1_000_000;
        // By Username, else SessionId (read from the body only then).
        let p = partition_of(Some("jdoe"), 4);
        assert_eq!(all.pulled(1, 3, Some("jdoe"), "{}", now, now), Some(p));
        assert_eq!(all.pulled(2, 1, None, &body("jdoe"), now, now), Some(p));
        assert_eq!(all.pulled(2, 1, None, "{}", now, now), Some(0));
        assert_eq!(
            all.pulled(1, 3, Some("jdoe"), "{}", now - 60_001, now),
            None,
            "too old"
        );
        let cca = spec(
            json!({"mode": "pull", "filter": {"fields": {"SessionType": ["CCA"]},
                                                         "events": [{"category": 2}]}}),
        );
        assert_eq!(cca.pulled(2, 1, None, &body("s"), now, now), Some(0));
        assert_eq!(cca.pulled(1, 1, None, &body("s"), now, now), None);
        assert_eq!(cca.pulled(2, 1, None, "{}", now, now), None);
        // The stored form of a pull subscription holds no push-only field.
        let stored = all.to_value();
        assert!(
            PUSH_ONLY.iter().all(|f| stored.get(f).is_none()),
            "{stored}"
        );
        assert_eq!(SubscriptionSpec::from_value(stored).unwrap(), all);
    }

    #[test]
    fn merge_patch_rfc7396() {
        let mut target = json!({"a": 1, "b": {"c": 2, "d": 3}, "e": [1]});
        merge_patch(
            &mut target,
            json!({"a": null, "b": {"c": 5}, "e": [2], "f": "new"}),
        );
        assert_eq!(target, json!({"b": {"c": 5, "d": 3}, "e": [2], "f": "new"}));
    }
}
