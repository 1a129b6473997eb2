//! The wire event: parsing and validation of what producers post, and the canonical form that is
//! stored and delivered. Pure logic, no I/O.
//!
//! Validation works on a `serde_json::Value` rather than a derived `Deserialize`, so that every
//! problem in a batch is reported at once with its array index and field name.

pub mod catalog;
pub mod timestamp;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use uuid::Uuid;

pub use catalog::Catalog;
pub use timestamp::Timestamp;

/// Most events one request may carry.
pub const MAX_BATCH: usize = 1000;

/// The top-level fields of the wire event, in canonical order.
const TOP_LEVEL: [&str; 5] = [
    "Id",
    "CreationDateUtc",
    "Category",
    "Code",
    "AdditionalFields",
];

/// An event as posted, validated. `Id` and `CreationDateUtc` are filled in when the producer
/// left them out: the id here, the date at commit (so a re-post without a date compares equal).
#[derive(Clone, Debug, PartialEq)]
pub struct NewEvent {
    pub id: Uuid,
    /// Whether the producer chose the id; a generated id can never be a duplicate.
    pub id_given: bool,
    pub creation: Option<Timestamp>,
    pub category: u8,
    pub code: u32,
    pub fields: Map<String, Value>,
}

/// A complete event, as stored and delivered.
#[derive(Clone, Debug, PartialEq)]
pub struct Event {
    pub id: Uuid,
    pub creation: Timestamp,
    pub category: u8,
    pub code: u32,
    pub fields: Map<String, Value>,
}

/// One validation problem; `index` is the position in a posted array.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct FieldError {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub index: Option<usize>,
    pub field: String,
    pub message: String,
}

impl FieldError {
    pub fn new(index: Option<usize>, field: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            index,
            field: field.into(),
            message: message.into(),
        }
    }

    /// A deserialization error at `path` (serde_path_to_error's form, `.` for the whole
    /// body): a missing field is named by its own name rather than its parent's.
    pub fn at_path(path: &str, message: impl Into<String>) -> Self {
        let message = message.into();
        let missing = message
            .strip_prefix("missing field `")
            .and_then(|m| m.split('`').next());
        // A field with an empty name ends the path with nothing: its parent is named (found
        // by fuzzing: `{"": 1}` named the field "").
        let path = match path.trim_end_matches('.') {
            "" => ".",
            p => p,
        };
        let field = match (path, missing) {
            (".", Some(name)) => name.to_string(),
            (_, Some(name)) => format!("{path}.{name}"),
            (".", None) => "body".to_string(),
            _ => path.to_string(),
        };
        Self::new(None, field, message)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ParseError {
    /// Not JSON at all (400).
    #[error("malformed JSON: {0}")]
    Malformed(#[from] serde_json::Error),
    /// JSON, but not valid events (422).
    #[error("invalid events")]
    Invalid(Vec<FieldError>),
}

/// Parses a request body holding one event or an array of events. Either every event is valid or
/// the answer lists every problem found.
pub fn parse_batch(body: &[u8], catalog: &Catalog) -> Result<Vec<NewEvent>, ParseError> {
    let value: Value = serde_json::from_slice(body)?;
    let (items, indexed) = match value {
        Value::Array(items) => (items, true),
        obj @ Value::Object(_) => (vec![obj], false),
        _ => {
            return Err(ParseError::Invalid(vec![FieldError::new(
                None,
                "body",
                "must be an event object or an array of events",
            )]));
        }
    };
    if items.is_empty() {
        let msg = "must hold at least one event";
        return Err(ParseError::Invalid(vec![FieldError::new(
            None, "body", msg,
        )]));
    }
    if items.len() > MAX_BATCH {
        let msg = format!(
            "holds {} events; at most {MAX_BATCH} per request",
            items.len()
        );
        return Err(ParseError::Invalid(vec![FieldError::new(
            None, "body", msg,
        )]));
    }
    let mut events = Vec::with_capacity(items.len());
    let mut errors = Vec::new();
    for (i, item) in items.into_iter().enumerate() {
        match validate(item, catalog, indexed.then_some(i)) {
            Ok(event) => events.push(event),
            Err(mut errs) => errors.append(&mut errs),
        }
    }
    if errors.is_empty() {
        Ok(events)
    } else {
        Err(ParseError::Invalid(errors))
    }
}

/// Validates one event object against DESIGN §2 and the catalog.
pub fn validate(
    item: Value,
    catalog: &Catalog,
    index: Option<usize>,
) -> Result<NewEvent, Vec<FieldError>> {
    let mut errors = Vec::new();
    let mut err =
        |field: &str, message: String| errors.push(FieldError::new(index, field, message));

    let Value::Object(mut obj) = item else {
        err("event", "must be a JSON object".into());
        return Err(errors);
    };
    for key in obj.keys() {
        if !TOP_LEVEL.contains(&key.as_str()) {
            let hint = TOP_LEVEL
                .iter()
                .find(|k| k.eq_ignore_ascii_case(key))
                .map(|k| format!(" (did you mean {k}?)"))
                .unwrap_or_default();
            // A field with an empty name is named by the event (found by fuzzing).
            let field = if key.is_empty() { "event" } else { key };
            err(
                field,
                format!(
                    "unknown field `{key}`{hint}; expected Id, CreationDateUtc, Category, Code, \
                     AdditionalFields"
                ),
            );
        }
    }

    let id = match obj.get("Id") {
        None => Some((Uuid::new_v4(), false)),
        Some(Value::String(s)) => match parse_guid(s) {
            Some(id) => Some((id, true)),
            None => {
                err("Id", "must be a GUID, 8-4-4-4-12 hexadecimal digits".into());
                None
            }
        },
        Some(_) => {
            err("Id", "must be a string holding a GUID".into());
            None
        }
    };

    let creation = match obj.get("CreationDateUtc") {
        None => Some(None),
        Some(Value::String(s)) => match Timestamp::parse(s) {
            Ok(t) => Some(Some(t)),
            Err(msg) => {
                err("CreationDateUtc", msg.into());
                None
            }
        },
        Some(_) => {
            err(
                "CreationDateUtc",
                "must be a string of 14 digits, yyyyMMddHHmmss".into(),
            );
            None
        }
    };

    let category = match integer(obj.get("Category")) {
        Err(msg) => {
            err("Category", msg);
            None
        }
        Ok(n) if n == i64::from(catalog::SYSTEM) => {
            err(
                "Category",
                "category 0 is reserved for Switchboard's System events".into(),
            );
            None
        }
        Ok(n) if n == i64::from(catalog::DERIVED) => {
            err(
                "Category",
                "category 5 is reserved for Switchboard's derived events (rules)".into(),
            );
            None
        }
        Ok(n) => match u8::try_from(n)
            .ok()
            .and_then(|c| catalog.category(c).map(|s| (c, s)))
        {
            Some(found) => Some(found),
            None => {
                let known = catalog.describe_categories();
                err("Category", format!("unknown category {n}; known: {known}"));
                None
            }
        },
    };

    let code = match integer(obj.get("Code")) {
        Err(msg) => {
            err("Code", msg);
            None
        }
        Ok(n) if !(0..=i64::from(u32::MAX)).contains(&n) => {
            err(
                "Code",
                format!("must be a non-negative integer up to {}", u32::MAX),
            );
            None
        }
        Ok(n) => Some(n as u32),
    };

    let fields = match obj.remove("AdditionalFields") {
        None => Some(Map::new()),
        Some(Value::Object(map)) => Some(map),
        Some(_) => {
            err("AdditionalFields", "must be a JSON object".into());
            None
        }
    };

    // The code and the parameters can only be checked against a known category.
    if let (Some((_, spec)), Some(code)) = (category, code) {
        let code_spec = spec.codes.get(&code);
        if code_spec.is_none() && !spec.open {
            let known = spec.describe_codes();
            err(
                "Code",
                format!("unknown {} code {code}; known: {known}", spec.name),
            );
        }
        if let Some(fields) = &fields {
            let required = spec
                .common
                .iter()
                .chain(code_spec.into_iter().flat_map(|c| &c.fields));
            for f in required {
                let value = fields.get(&f.name);
                if value.is_none() && !f.required {
                    continue;
                }
                if let Err(msg) = check_field(value, f.kind) {
                    err(&format!("AdditionalFields.{}", f.name), msg.into());
                }
            }
        }
    }

    match (id, creation, category, code, fields) {
        (Some((id, id_given)), Some(creation), Some((category, _)), Some(code), Some(fields))
            if errors.is_empty() =>
        {
            Ok(NewEvent {
                id,
                id_given,
                creation,
                category,
                code,
                fields,
            })
        }
        _ => Err(errors),
    }
}

/// Accepts exactly the 8-4-4-4-12 form in any case; `Uuid::try_parse` would also take braces,
/// URNs and the bare 32-digit form.
fn parse_guid(s: &str) -> Option<Uuid> {
    let b = s.as_bytes();
    let dashes_ok = b.len() == 36 && [8, 13, 18, 23].iter().all(|&i| b[i] == b'-');
    let hex_ok = b
        .iter()
        .enumerate()
        .all(|(i, c)| [8, 13, 18, 23].contains(&i) || c.is_ascii_hexdigit());
    (dashes_ok && hex_ok)
        .then(|| Uuid::try_parse(s).ok())
        .flatten()
}

fn integer(v: Option<&Value>) -> Result<i64, String> {
    match v {
        None => Err("is required".into()),
        Some(Value::Number(n)) => n
            .as_i64()
            .ok_or_else(|| format!("must be an integer, got {n}")),
        Some(other) => Err(format!("must be an integer, got {}", json_type(other))),
    }
}

fn check_field(v: Option<&Value>, kind: catalog::FieldKind) -> Result<(), &'static str> {
    use catalog::FieldKind::*;
    match (kind, v) {
        (_, None) => Err("is required"),
        (NonEmptyString, Some(Value::String(s))) if s.is_empty() => Err("must not be empty"),
        (NonEmptyString | String, Some(Value::String(_))) => Ok(()),
        (NonEmptyString, _) => Err("must be a non-empty string"),
        (String, _) => Err("must be a string"),
        (Integer, Some(Value::Number(n))) if n.is_i64() || n.is_u64() => Ok(()),
        (Integer, _) => Err("must be an integer"),
        (Number, Some(Value::Number(_))) => Ok(()),
        (Number, _) => Err("must be a number"),
        (Boolean, Some(Value::Bool(_))) => Ok(()),
        (Boolean, _) => Err("must be true or false"),
    }
}

fn json_type(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

impl NewEvent {
    /// The event as it will be stored, dated `now` if the producer gave no date.
    pub fn complete(&self, now: Timestamp) -> Event {
        Event {
            id: self.id,
            creation: self.creation.unwrap_or(now),
            category: self.category,
            code: self.code,
            fields: self.fields.clone(),
        }
    }

    /// Whether this re-post is identical to `stored` (DESIGN §2): an absent date is taken from
    /// the stored event; field order inside `AdditionalFields` does not matter; a stored field
    /// an erasure replaced by `"[erased]"` matches whatever the re-post holds there (DESIGN
    /// §19: a re-post of an erased event is a duplicate, and stores nothing).
    pub fn same_as(&self, stored: &Event) -> bool {
        let erased = |v: &Value| v.as_str() == Some(crate::store::ERASED);
        self.id == stored.id
            && self.creation.is_none_or(|c| c == stored.creation)
            && self.category == stored.category
            && self.code == stored.code
            && (self.fields == stored.fields
                || (self.fields.len() == stored.fields.len()
                    && stored.fields.iter().any(|(_, v)| erased(v))
                    && stored.fields.iter().all(|(k, v)| {
                        self.fields
                            .get(k)
                            .is_some_and(|mine| mine == v || erased(v))
                    })))
    }
}

/// The canonical wire shape, borrowed for writing; field order here is the order on the wire.
#[derive(Serialize)]
struct WireRef<'a> {
    #[serde(rename = "Id")]
    id: Uuid,
    #[serde(rename = "CreationDateUtc")]
    creation: String,
    #[serde(rename = "Category")]
    category: u8,
    #[serde(rename = "Code")]
    code: u32,
    #[serde(rename = "AdditionalFields")]
    fields: &'a Map<String, Value>,
}

/// The same shape, owned for reading back.
#[derive(Deserialize)]
struct Wire {
    #[serde(rename = "Id")]
    id: Uuid,
    #[serde(rename = "CreationDateUtc")]
    creation: String,
    #[serde(rename = "Category")]
    category: u8,
    #[serde(rename = "Code")]
    code: u32,
    #[serde(rename = "AdditionalFields")]
    fields: Map<String, Value>,
}

impl Event {
    /// A System event (Category 0) of `code` with a fresh `Id`, created at `now_ms`.
    pub fn system(code: u32, fields: Map<String, Value>, now_ms: i64) -> Event {
        Event {
            id: Uuid::new_v4(),
            creation: Timestamp::from_unix_ms(now_ms),
            category: catalog::SYSTEM,
            code,
            fields,
        }
    }

    /// The canonical compact JSON: the bytes stored, signed and delivered.
    pub fn to_canonical_json(&self) -> String {
        let wire = WireRef {
            id: self.id,
            creation: self.creation.to_string(),
            category: self.category,
            code: self.code,
            fields: &self.fields,
        };
        serde_json::to_string(&wire).unwrap_or_default()
    }

    /// Reads back what [`Event::to_canonical_json`] wrote.
    pub fn from_canonical_json(s: &str) -> Result<Self, serde_json::Error> {
        let w: Wire = serde_json::from_str(s)?;
        let creation = Timestamp::parse(&w.creation).map_err(serde::de::Error::custom)?;
        Ok(Self {
            id: w.id,
            creation,
            category: w.category,
            code: w.code,
            fields: w.fields,
        })
    }

    /// The `Username` parameter, which names the agent an event concerns.
    pub fn username(&self) -> Option<&str> {
        self.fields.get("Username").and_then(Value::as_str)
    }

    /// The key per-agent ordering uses: `Username`, else `SessionId`.
    pub fn agent_key(&self) -> Option<&str> {
        self.username()
            .or_else(|| self.fields.get("SessionId").and_then(Value::as_str))
    }
}

#[cfg(test)]
mod tests;
