//! A subscription's stored form: what the `spec` column holds, read tolerantly (DESIGN §15).
//!
//! The request body ([`SubscriptionSpec`]) is strict: an unknown field is a `422`. What the
//! store kept is read by these mirror types instead, which ignore fields they do not know and
//! default those that are absent, so a row a newer release wrote never stops this one (an
//! unknown filter key of a newer release is ignored: after a rollback a subscription may
//! receive more, never less). What cannot be read even so harms only its own row.

use std::collections::BTreeMap;

use serde::Deserialize;
use serde_json::Value;

use super::auth::Auth;
use super::destination::Destination;
use super::{Batch, Coalesce, EventFilter, Filter, Mode, Ordering, Start, SubscriptionSpec};
use crate::delivery::signing::Scheme;

#[derive(Deserialize)]
struct StoredSpec {
    #[serde(default)]
    url: String,
    #[serde(default)]
    destination: Option<Value>,
    #[serde(default)]
    mode: Mode,
    #[serde(default)]
    partitions: Option<u32>,
    #[serde(default)]
    start: Option<Start>,
    #[serde(default)]
    description: String,
    #[serde(default)]
    filter: Option<StoredFilter>,
    #[serde(default)]
    secret: Option<String>,
    #[serde(default = "super::yes")]
    enabled: bool,
    #[serde(default)]
    ordering: Ordering,
    #[serde(default)]
    rate_limit_per_sec: Option<u32>,
    #[serde(default = "super::default_max_in_flight")]
    max_in_flight: u32,
    #[serde(default)]
    headers: BTreeMap<String, String>,
    #[serde(default)]
    retry_schedule_secs: Option<Vec<u64>>,
    #[serde(default)]
    heartbeat_secs: Option<u64>,
    #[serde(default)]
    max_age_secs: Option<u64>,
    #[serde(default)]
    lag_budget_secs: Option<u64>,
    #[serde(default)]
    coalesce: Coalesce,
    #[serde(default)]
    batch: Option<StoredBatch>,
    #[serde(default)]
    signature_scheme: Scheme,
    /// A mode this release does not know (a newer one's) is read as `drop`: less is sent, never
    /// more.
    #[serde(default)]
    redact: BTreeMap<String, Value>,
    #[serde(default)]
    auth: Option<StoredAuth>,
    #[serde(default)]
    tls: Option<StoredTls>,
}

/// TLS settings' stored form: fields it does not know are ignored.
#[derive(Deserialize)]
struct StoredTls {
    #[serde(default)]
    client_cert_pem: Option<String>,
    #[serde(default)]
    client_key_pem: Option<String>,
    #[serde(default)]
    ca_pem: Option<String>,
}

/// Credentials' stored form: fields it does not know are ignored.
#[derive(Deserialize)]
#[serde(tag = "type", rename_all = "lowercase")]
enum StoredAuth {
    Basic {
        username: String,
        password: String,
    },
    Bearer {
        token: String,
    },
    Oauth2 {
        token_url: String,
        client_id: String,
        client_secret: String,
        #[serde(default)]
        scope: Option<String>,
        #[serde(default)]
        audience: Option<String>,
    },
}

impl From<StoredAuth> for Auth {
    fn from(a: StoredAuth) -> Self {
        match a {
            StoredAuth::Basic { username, password } => Auth::Basic { username, password },
            StoredAuth::Bearer { token } => Auth::Bearer { token },
            StoredAuth::Oauth2 {
                token_url,
                client_id,
                client_secret,
                scope,
                audience,
            } => Auth::Oauth2 {
                token_url,
                client_id,
                client_secret,
                scope,
                audience,
            },
        }
    }
}

#[derive(Deserialize)]
struct StoredBatch {
    max_events: u32,
    #[serde(default)]
    max_wait_ms: u64,
}

/// A destination's stored form: fields it does not know are ignored.
#[derive(Deserialize)]
#[serde(tag = "type", rename_all = "lowercase")]
enum StoredDestination {
    Http {
        url: String,
    },
    Nats {
        url: String,
        subject: String,
    },
    Amqp {
        url: String,
        exchange: String,
        routing_key: String,
    },
}

impl From<StoredDestination> for Destination {
    fn from(d: StoredDestination) -> Self {
        match d {
            StoredDestination::Http { url } => Destination::Http { url },
            StoredDestination::Nats { url, subject } => Destination::Nats { url, subject },
            StoredDestination::Amqp {
                url,
                exchange,
                routing_key,
            } => Destination::Amqp {
                url,
                exchange,
                routing_key,
            },
        }
    }
}

#[derive(Deserialize)]
struct StoredFilter {
    #[serde(default)]
    events: Option<Vec<StoredEventFilter>>,
    #[serde(default)]
    usernames: Option<Vec<String>>,
    #[serde(default)]
    fields: Option<BTreeMap<String, Vec<Value>>>,
}

#[derive(Deserialize)]
struct StoredEventFilter {
    category: u8,
    #[serde(default)]
    codes: Option<Vec<u32>>,
}

/// Reads a stored `spec` column; fields it does not know are ignored, absent ones defaulted.
pub fn decode(text: &str) -> Result<SubscriptionSpec, serde_json::Error> {
    let s: StoredSpec = serde_json::from_str(text)?;
    // A destination this release does not know (a newer one's type): ignored beside a `url`;
    // alone, the row cannot be delivered and does not decode.
    let destination = match s.destination {
        None | Some(Value::Null) => None,
        Some(d) => match serde_json::from_value::<StoredDestination>(d) {
            Ok(d) => Some(d.into()),
            Err(_) if !s.url.is_empty() => None,
            Err(e) => return Err(e),
        },
    };
    Ok(SubscriptionSpec {
        url: s.url,
        destination,
        mode: s.mode,
        partitions: s.partitions,
        start: s.start,
        description: s.description,
        filter: s.filter.map(|f| Filter {
            events: f.events.map(|list| {
                list.into_iter()
                    .map(|e| EventFilter {
                        category: e.category,
                        codes: e.codes,
                    })
                    .collect()
            }),
            usernames: f.usernames,
            fields: f.fields,
        }),
        secret: s.secret,
        enabled: s.enabled,
        ordering: s.ordering,
        rate_limit_per_sec: s.rate_limit_per_sec,
        max_in_flight: s.max_in_flight,
        headers: s.headers,
        retry_schedule_secs: s.retry_schedule_secs,
        heartbeat_secs: s.heartbeat_secs,
        max_age_secs: s.max_age_secs,
        lag_budget_secs: s.lag_budget_secs,
        coalesce: s.coalesce,
        batch: s.batch.map(|b| Batch {
            max_events: b.max_events,
            max_wait_ms: b.max_wait_ms,
        }),
        signature_scheme: s.signature_scheme,
        redact: s
            .redact
            .into_iter()
            .map(|(field, mode)| {
                let mode = serde_json::from_value(mode).unwrap_or(crate::redact::Mode::Drop);
                (field, mode)
            })
            .collect(),
        auth: s.auth.map(Auth::from),
        tls: s.tls.map(|t| super::tls::Tls {
            client_cert_pem: t.client_cert_pem,
            client_key_pem: t.client_key_pem,
            ca_pem: t.ca_pem,
        }),
    })
}

/// What can still be read from a stored `spec` that does not decode: its secret, so a repair
/// by `PATCH` keeps the receivers' verification working when the body leaves it out.
pub fn salvage_secret(text: &str) -> Option<String> {
    let value: Value = serde_json::from_str(text).ok()?;
    value.get("secret")?.as_str().map(str::to_owned)
}

/// Writes a spec into its stored form (the same field names the stored form reads).
pub fn encode(spec: &SubscriptionSpec) -> String {
    spec.to_value().to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn spec() -> Value {
        json!({"url": "https://example.com/hooks", "secret": "whsec_C2FVsBQIhrscChlQIMV+b5sSYspob7oD",
               "filter": {"events": [{"category": 1, "codes": [3]}], "usernames": ["jdoe"]}})
    }

    #[test]
    fn what_a_newer_release_adds_is_ignored_anywhere_in_the_stored_form() {
        let mut v = spec();
        v["destination"] = json!({"kind": "nats", "subject": "x"});
        v["filter"]["groups"] = json!(["sales"]);
        v["filter"]["events"][0]["wildcard"] = json!(true);
        let read = decode(&v.to_string()).unwrap();
        // The wire form refuses what the stored form lets by.
        assert!(SubscriptionSpec::from_value(v).is_err());
        assert_eq!(read, SubscriptionSpec::from_value(spec()).unwrap());
    }

    #[test]
    fn absent_fields_take_their_defaults_and_what_is_written_reads_back() {
        let read = decode(r#"{"url": "https://example.com/"}"#).unwrap();
        assert!(read.enabled);
        assert_eq!(read.max_in_flight, 16);
        assert_eq!(read.ordering, Ordering::None);
        let full = SubscriptionSpec::from_value(spec()).unwrap();
        assert_eq!(decode(&encode(&full)).unwrap(), full);
    }

    #[test]
    fn a_destination_reads_back_and_one_of_a_newer_type_alone_does_not_decode() {
        let nats = SubscriptionSpec::from_value(json!({"destination": {"type": "nats",
            "url": "nats://u:p@127.0.0.1:4222", "subject": "cc.{tenant}"}}))
        .unwrap();
        assert_eq!(decode(&encode(&nats)).unwrap(), nats);
        // A newer release's field on a known type is ignored.
        let mut v = nats.to_value();
        v["destination"]["tls"] = json!(true);
        assert_eq!(decode(&v.to_string()).unwrap(), nats);
        // A type this release does not know, with no url to fall back on: not delivered to
        // an empty url, but undecodable (it receives nothing and is listed for repair).
        assert!(decode(r#"{"destination": {"type": "kafka", "brokers": ["x"]}}"#).is_err());
    }

    #[test]
    fn garbage_does_not_decode_but_its_secret_may_be_salvaged() {
        assert!(decode("not json").is_err());
        assert!(decode(r#"{"url": 7, "secret": "whsec_x"}"#).is_err());
        assert_eq!(
            salvage_secret(r#"{"url": 7, "secret": "whsec_x"}"#).as_deref(),
            Some("whsec_x")
        );
        assert_eq!(salvage_secret("not json"), None);
    }

    #[test]
    fn a_redaction_mode_of_a_newer_release_drops_the_field() {
        let mut v = spec();
        v["redact"] = json!({"PhoneNo": "mask", "Username": "tokenize"});
        let spec = decode(&v.to_string()).unwrap();
        use crate::redact::Mode;
        assert_eq!(spec.redact["PhoneNo"], Mode::Mask);
        assert_eq!(
            spec.redact["Username"],
            Mode::Drop,
            "less is sent, never more"
        );
        assert_eq!(decode(&encode(&spec)).unwrap(), spec);
    }
}
