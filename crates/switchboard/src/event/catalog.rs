//! The event catalog: which categories and codes exist, which `AdditionalFields` each needs,
//! and the names of activity codes.
//!
//! The built-in catalog is the platform's published one (EVENTS.md): Agent events are strict,
//! IVR, Email and Chat are open. The operator's catalog file (`catalog_file`, DESIGN §12) adds
//! codes to any category, makes a category strict, and names activity codes; it never changes
//! or removes a built-in Agent code.

use std::collections::BTreeMap;
use std::path::Path;

use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

/// Category numbers on the wire.
pub const SYSTEM: u8 = 0;

/// The codes of System events (Category 0, DESIGN §11).
pub mod system {
    pub const TEST: u32 = 1;
    pub const HEARTBEAT: u32 = 2;
    pub const SUBSCRIPTION_FAILING: u32 = 3;
    pub const SUBSCRIPTION_DISABLED: u32 = 4;
    pub const SUBSCRIPTION_RECOVERED: u32 = 5;
    pub const SUBSCRIPTION_LAGGING: u32 = 6;
    pub const SUBSCRIPTION_CAUGHT_UP: u32 = 7;
    /// An erasure by data subject ended (DESIGN §19); never carries the value.
    pub const ERASED: u32 = 8;
}
pub const AGENT: u8 = 1;
/// Derived events (DESIGN §18): written by Switchboard only, when a rule fires or clears.
pub const DERIVED: u8 = 5;

/// Whether a subscription without an `events` filter receives events of `category`: every
/// category but System events (0) and derived events (5), which only a filter naming them
/// receives (DESIGN §11, §18).
pub fn by_default(category: u8) -> bool {
    category != SYSTEM && category != DERIVED
}

/// What a parameter must hold.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FieldKind {
    /// A JSON string with at least one character.
    NonEmptyString,
    /// A JSON string, possibly empty.
    String,
    /// A JSON number without a fractional part.
    Integer,
    /// Any JSON number.
    Number,
    Boolean,
}

impl FieldKind {
    /// The catalog's name of the type.
    pub fn name(self) -> &'static str {
        match self {
            FieldKind::NonEmptyString | FieldKind::String => "string",
            FieldKind::Integer => "integer",
            FieldKind::Number => "number",
            FieldKind::Boolean => "boolean",
        }
    }

    fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "string" => FieldKind::String,
            "integer" => FieldKind::Integer,
            "number" => FieldKind::Number,
            "boolean" => FieldKind::Boolean,
            _ => return None,
        })
    }

    /// The JSON Schema of a value of this kind.
    fn schema(self) -> Value {
        match self {
            FieldKind::NonEmptyString => json!({"type": "string", "minLength": 1}),
            kind => json!({"type": kind.name()}),
        }
    }
}

#[derive(Clone, Debug)]
pub struct FieldSpec {
    pub name: String,
    pub kind: FieldKind,
    /// Optional fields are checked only when present.
    pub required: bool,
    /// Personal data (DESIGN §19): built in for `PhoneNo` and `Username`; a catalog file marks
    /// others with `{ type = …, pii = true }`.
    pub pii: bool,
}

#[derive(Clone, Debug)]
pub struct CodeSpec {
    pub name: String,
    pub fields: Vec<FieldSpec>,
}

#[derive(Clone, Debug)]
pub struct CategorySpec {
    pub name: String,
    /// Open categories accept any non-negative code that is not listed; strict ones refuse it.
    pub open: bool,
    /// Parameters every event of the category carries.
    pub common: Vec<FieldSpec>,
    pub codes: BTreeMap<u32, CodeSpec>,
}

#[derive(Clone, Debug)]
pub struct Catalog {
    categories: BTreeMap<u8, CategorySpec>,
    /// Names of activity codes (`ActivityCode`), for the agents view.
    activities: BTreeMap<i64, String>,
    /// `[agents] group_fields` (DESIGN §18): the `AdditionalFields` that place an agent in
    /// groups.
    group_fields: crate::agent::GroupFields,
}

/// The most group fields a catalog file may name.
pub const MAX_GROUP_FIELDS: usize = 8;

fn field(name: &str, kind: FieldKind) -> FieldSpec {
    FieldSpec {
        name: name.to_string(),
        kind,
        required: true,
        pii: BUILTIN_PII.contains(&name),
    }
}

/// The built-in fields that hold personal data (DESIGN §19): the number an agent signed in
/// with, and the agent's username.
const BUILTIN_PII: [&str; 2] = ["PhoneNo", "Username"];

/// The activity codes EVENTS.md names.
const ACTIVITIES: [(i64, &str); 5] = [
    (0, "Not Ready"),
    (16, "Available"),
    (17, "Accept Internal Calls"),
    (34, "On Break"),
    (36, "Busy – Other"),
];

impl Catalog {
    /// The platform's published catalog.
    pub fn builtin() -> Self {
        use FieldKind::*;
        let agent_codes = [
            (1, "SignedIn", vec![]),
            (2, "SignedOut", vec![field("ExitCode", Integer)]),
            (
                3,
                "StatusChanged",
                vec![
                    field("ActivityCode", Integer),
                    field("AvailabilityCode", Integer),
                    field("ActivityName", String),
                ],
            ),
            (4, "ReceivingWorkItem", vec![]),
            (5, "AcceptedWorkItem", vec![]),
            (6, "DeclinedWorkItem", vec![]),
            (8, "ReleasedWorkItem", vec![]),
        ];
        let agent = CategorySpec {
            name: "Agent".into(),
            open: false,
            common: ["SessionId", "SessionType", "Username", "PhoneNo"]
                .map(|n| field(n, NonEmptyString))
                .to_vec(),
            codes: agent_codes
                .into_iter()
                .map(|(code, name, fields)| {
                    let name = name.to_string();
                    (code, CodeSpec { name, fields })
                })
                .collect(),
        };
        let open = |name: &str| CategorySpec {
            name: name.into(),
            open: true,
            common: vec![],
            codes: BTreeMap::new(),
        };
        let optional = |name: &str, kind| FieldSpec {
            required: false,
            ..field(name, kind)
        };
        let derived_fields = || {
            vec![
                field("RuleId", NonEmptyString),
                field("RuleName", NonEmptyString),
                field("Since", NonEmptyString),
                optional("Username", NonEmptyString),
                optional("GroupBy", NonEmptyString),
                optional("GroupValue", String),
                optional("Value", Integer),
            ]
        };
        let derived = CategorySpec {
            name: "Derived".into(),
            open: false,
            common: vec![],
            codes: [(1, "RuleFired"), (2, "RuleCleared")]
                .into_iter()
                .map(|(code, name)| {
                    let name = name.to_string();
                    let fields = derived_fields();
                    (code, CodeSpec { name, fields })
                })
                .collect(),
        };
        let categories = BTreeMap::from([
            (AGENT, agent),
            (2, open("IVR")),
            (3, open("Email")),
            (4, open("Chat")),
            (DERIVED, derived),
        ]);
        let activities = ACTIVITIES
            .iter()
            .map(|(c, n)| (*c, n.to_string()))
            .collect();
        Self {
            categories,
            activities,
            group_fields: crate::agent::GroupFields::default(),
        }
    }

    /// The built-in catalog with the operator's file applied; the error names the file's line.
    pub fn load(path: &Path) -> Result<Self, String> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| format!("cannot read catalog file {}: {e}", path.display()))?;
        Self::builtin()
            .extend(&text)
            .map_err(|e| format!("catalog file {}: {e}", path.display()))
    }

    /// Applies a catalog file's text.
    pub fn extend(mut self, text: &str) -> Result<Self, String> {
        let file: File = toml::from_str(text).map_err(|e| {
            // toml's message starts with the position: "TOML parse error at line 3, …".
            e.to_string().trim_end().to_string()
        })?;
        let at = |span: std::ops::Range<usize>| {
            let line = text[..span.start.min(text.len())].matches('\n').count() + 1;
            format!("line {line}")
        };
        for c in file.category {
            let number = *c.category.get_ref();
            let number = match u8::try_from(number) {
                Ok(DERIVED) => {
                    return Err(format!(
                        "{}: category 5 is Switchboard's derived events (rules); a catalog file cannot define it",
                        at(c.category.span())
                    ));
                }
                Ok(n) if n != SYSTEM => n,
                _ => {
                    return Err(format!(
                        "{}: category must be from 1 to 255 (0 is Switchboard's System events), got {number}",
                        at(c.category.span())
                    ));
                }
            };
            let builtin = self.categories.contains_key(&number);
            let spec = self
                .categories
                .entry(number)
                .or_insert_with(|| CategorySpec {
                    name: format!("category {number}"),
                    open: true,
                    common: vec![],
                    codes: BTreeMap::new(),
                });
            if let Some(name) = c.name {
                if number == AGENT && name != spec.name {
                    return Err(format!(
                        "{}: the Agent category keeps its name",
                        at(c.category.span())
                    ));
                }
                spec.name = name;
            }
            if let Some(strict) = c.strict {
                if number == AGENT && !*strict.get_ref() {
                    return Err(format!(
                        "{}: the Agent category is always strict",
                        at(strict.span())
                    ));
                }
                spec.open = !*strict.get_ref();
            } else if !builtin {
                spec.open = true;
            }
            for code in c.code {
                let n = *code.code.get_ref();
                let n = u32::try_from(n).map_err(|_| {
                    format!(
                        "{}: code must be a non-negative integer",
                        at(code.code.span())
                    )
                })?;
                if number == AGENT && spec.codes.contains_key(&n) {
                    return Err(format!(
                        "{}: Agent code {n} is built in and cannot be changed",
                        at(code.code.span())
                    ));
                }
                let mut fields = Vec::new();
                for (name, declared) in code.fields {
                    let (kind, pii) = match declared.get_ref() {
                        FileField::Type(t) => (t.as_str(), false),
                        FileField::Table(t) => (t.r#type.as_str(), t.pii.unwrap_or(false)),
                    };
                    let text_kind = kind;
                    let (base, required) = match text_kind.strip_suffix('?') {
                        Some(base) => (base, false),
                        None => (text_kind, true),
                    };
                    let kind_of = FieldKind::parse(base).ok_or_else(|| {
                        format!(
                            "{}: field {name}: type must be string, integer, number or boolean \
                             (with ? if optional), got {text_kind:?}",
                            at(declared.span())
                        )
                    })?;
                    fields.push(FieldSpec {
                        name,
                        kind: kind_of,
                        required,
                        pii,
                    });
                }
                let name = code.name.unwrap_or_else(|| format!("code {n}"));
                spec.codes.insert(n, CodeSpec { name, fields });
            }
        }
        if let Some(agents) = file.agents {
            let fields = agents.group_fields.get_ref();
            let at = at(agents.group_fields.span());
            if fields.len() > MAX_GROUP_FIELDS {
                return Err(format!(
                    "{at}: [agents] group_fields names at most {MAX_GROUP_FIELDS} fields"
                ));
            }
            for (i, f) in fields.iter().enumerate() {
                if f.is_empty() || f.len() > 64 {
                    return Err(format!(
                        "{at}: [agents] group_fields: a field name has 1 to 64 characters"
                    ));
                }
                if fields[..i].contains(f) {
                    return Err(format!("{at}: [agents] group_fields names {f:?} twice"));
                }
            }
            self.group_fields = crate::agent::GroupFields::new(fields.clone());
        }
        for (code, name) in file.activities {
            let n: i64 = code.trim().parse().map_err(|_| {
                format!("[activities]: {code:?} is not an activity code (an integer)")
            })?;
            self.activities.insert(n, name);
        }
        Ok(self)
    }

    /// Whether some category declares a field of this name, and whether any declares it as
    /// personal data: `None` when none declares it (DESIGN §19).
    pub fn field_pii(&self, name: &str) -> Option<bool> {
        let mut found = None;
        for c in self.categories.values() {
            let codes = c.codes.values().flat_map(|code| &code.fields);
            for f in c.common.iter().chain(codes).filter(|f| f.name == name) {
                found = Some(found.unwrap_or(false) || f.pii);
            }
        }
        found
    }

    pub fn category(&self, category: u8) -> Option<&CategorySpec> {
        self.categories.get(&category)
    }

    /// "1 Agent, 2 IVR, …", for error messages.
    pub fn describe_categories(&self) -> String {
        let names: Vec<_> = self
            .categories
            .iter()
            .filter(|(n, _)| **n != DERIVED)
            .map(|(n, c)| format!("{n} {}", c.name))
            .collect();
        names.join(", ")
    }

    /// The fields that place an agent in groups (`[agents] group_fields`).
    pub fn group_fields(&self) -> &crate::agent::GroupFields {
        &self.group_fields
    }

    /// The name of an activity code: the catalog's, else "activity N".
    pub fn activity_name(&self, code: i64) -> String {
        self.activities
            .get(&code)
            .cloned()
            .unwrap_or_else(|| format!("activity {code}"))
    }

    /// `GET /v1/catalog` (DESIGN §12).
    pub fn describe(&self) -> CatalogView {
        let categories = self
            .categories
            .iter()
            .map(|(&category, spec)| CategoryView {
                category,
                name: spec.name.clone(),
                strict: !spec.open,
                codes: spec
                    .codes
                    .iter()
                    .map(|(&code, c)| {
                        let fields = spec
                            .common
                            .iter()
                            .chain(&c.fields)
                            .map(|f| {
                                let view = FieldView {
                                    r#type: f.kind.name(),
                                    required: f.required,
                                    pii: f.pii,
                                };
                                (f.name.clone(), view)
                            })
                            .collect();
                        CodeView {
                            code,
                            name: c.name.clone(),
                            fields,
                            schema: self.schema(category, code, spec, c),
                        }
                    })
                    .collect(),
            })
            .collect();
        let activities = self
            .activities
            .iter()
            .map(|(code, name)| ActivityView {
                code: *code,
                name: name.clone(),
            })
            .collect();
        CatalogView {
            categories,
            activities,
            group_fields: self.group_fields.names().to_vec(),
        }
    }

    /// The JSON Schema (2020-12) of a whole event of `code`.
    fn schema(&self, category: u8, code: u32, spec: &CategorySpec, c: &CodeSpec) -> Value {
        let fields: Vec<&FieldSpec> = spec.common.iter().chain(&c.fields).collect();
        let properties: serde_json::Map<String, Value> = fields
            .iter()
            .map(|f| (f.name.clone(), f.kind.schema()))
            .collect();
        let required: Vec<&str> = fields
            .iter()
            .filter(|f| f.required)
            .map(|f| f.name.as_str())
            .collect();
        json!({
            "$schema": "https://json-schema.org/draft/2020-12/schema",
            "title": format!("{} {}", spec.name, c.name),
            "type": "object",
            "properties": {
                "Id": {"type": "string", "pattern": "^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$"},
                "CreationDateUtc": {"type": "string", "pattern": "^[0-9]{14}$"},
                "Category": {"const": category},
                "Code": {"const": code},
                "AdditionalFields": {
                    "type": "object",
                    "properties": properties,
                    "required": required,
                },
            },
            "required": ["Category", "Code", "AdditionalFields"],
            "additionalProperties": false,
        })
    }
}

impl CategorySpec {
    /// "1 SignedIn, 2 SignedOut, …", for error messages.
    pub fn describe_codes(&self) -> String {
        let names: Vec<_> = self
            .codes
            .iter()
            .map(|(n, c)| format!("{n} {}", c.name))
            .collect();
        names.join(", ")
    }
}

/// The catalog file (DESIGN §12).
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    #[serde(default)]
    category: Vec<FileCategory>,
    #[serde(default)]
    activities: BTreeMap<String, String>,
    agents: Option<FileAgents>,
}

/// `[agents]` of the catalog file.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FileAgents {
    group_fields: toml::Spanned<Vec<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FileCategory {
    category: toml::Spanned<i64>,
    name: Option<String>,
    strict: Option<toml::Spanned<bool>>,
    #[serde(default)]
    code: Vec<FileCode>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FileCode {
    code: toml::Spanned<i64>,
    name: Option<String>,
    #[serde(default)]
    fields: BTreeMap<String, toml::Spanned<FileField>>,
}

/// A field as a catalog file declares it: its type (`"string?"`), or a table with its type and
/// whether it is personal data (`{ type = "string?", pii = true }`).
#[derive(Deserialize)]
#[serde(untagged)]
enum FileField {
    Type(String),
    Table(FieldTable),
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FieldTable {
    r#type: String,
    pii: Option<bool>,
}

/// `GET /v1/catalog`.
#[derive(Clone, Debug, Serialize, utoipa::ToSchema)]
pub struct CatalogView {
    pub categories: Vec<CategoryView>,
    /// Named activity codes (the agents view's `activity_name`).
    pub activities: Vec<ActivityView>,
    /// The `AdditionalFields` that place an agent in groups (`[agents] group_fields`): the
    /// values `by` takes in `…/agents/counts`.
    pub group_fields: Vec<String>,
}

#[derive(Clone, Debug, Serialize, utoipa::ToSchema)]
pub struct CategoryView {
    pub category: u8,
    pub name: String,
    pub strict: bool,
    pub codes: Vec<CodeView>,
}

#[derive(Clone, Debug, Serialize, utoipa::ToSchema)]
pub struct CodeView {
    pub code: u32,
    pub name: String,
    /// Every parameter, the category's common ones included.
    pub fields: BTreeMap<String, FieldView>,
    /// JSON Schema (2020-12) of the whole event.
    #[schema(value_type = Object)]
    pub schema: Value,
}

#[derive(Clone, Debug, Serialize, utoipa::ToSchema)]
pub struct FieldView {
    /// `string`, `integer`, `number` or `boolean`.
    #[schema(value_type = String)]
    pub r#type: &'static str,
    pub required: bool,
    /// Whether the field holds personal data (DESIGN §19).
    pub pii: bool,
}

#[derive(Clone, Debug, Serialize, utoipa::ToSchema)]
pub struct ActivityView {
    pub code: i64,
    pub name: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    const FILE: &str = r#"
[[category]]
category = 2
name = "IVR"
strict = true

[[category.code]]
code = 1
name = "CallEntered"
fields = { Queue = "string", Dnis = "string", Ani = { type = "string?", pii = true }, Caller = { type = "string" } }

[[category]]
category = 1

[[category.code]]
code = 9
name = "Coaching"

[activities]
40 = "Training"

[agents]
group_fields = ["Team", "Queue"]
"#;

    #[test]
    fn a_file_adds_codes_strictness_and_activity_names() {
        let c = Catalog::builtin().extend(FILE).unwrap();
        let ivr = c.category(2).unwrap();
        assert!(!ivr.open);
        let entered = &ivr.codes[&1];
        assert_eq!(entered.name, "CallEntered");
        let ani = entered.fields.iter().find(|f| f.name == "Ani").unwrap();
        assert!(!ani.required);
        assert!(ani.pii, "the table form marks personal data");
        let queue = entered.fields.iter().find(|f| f.name == "Queue").unwrap();
        assert!(!queue.pii, "the string form stays valid, not personal data");
        assert_eq!(c.field_pii("Ani"), Some(true));
        assert_eq!(c.field_pii("Caller"), Some(false));
        assert_eq!(c.field_pii("PhoneNo"), Some(true), "built in");
        assert_eq!(c.field_pii("Username"), Some(true), "built in");
        assert_eq!(c.field_pii("SessionId"), Some(false));
        assert_eq!(c.field_pii("Nope"), None);
        let view = serde_json::to_value(c.describe()).unwrap();
        let agent = &view["categories"][0]["codes"][0]["fields"];
        assert_eq!(agent["PhoneNo"]["pii"], true);
        assert_eq!(agent["SessionId"]["pii"], false);
        assert_eq!(c.category(1).unwrap().codes[&9].name, "Coaching");
        assert!(
            c.category(1).unwrap().codes.contains_key(&1),
            "built-ins stay"
        );
        assert_eq!(c.activity_name(40), "Training");
        assert_eq!(c.activity_name(16), "Available");
        assert_eq!(c.activity_name(41), "activity 41");
        assert!(c.category(3).unwrap().open);
        assert_eq!(c.group_fields().names(), ["Team", "Queue"]);
        assert_eq!(view["group_fields"], json!(["Team", "Queue"]));
        assert!(Catalog::builtin().group_fields().names().is_empty());
    }

    #[test]
    fn a_bad_file_is_refused_with_its_line() {
        for (text, want) in [
            (
                "[[category]]\ncategory = 2\n[[category.code]]\ncode = 1\nfields = { A = \"strin\" }\n",
                "line 5",
            ),
            ("[[category]]\ncategory = 0\n", "line 2"),
            (
                "[[category]]\ncategory = 1\n[[category.code]]\ncode = 3\n",
                "line 4",
            ),
            ("[[category]]\ncategory = 1\nstrict = false\n", "line 3"),
            ("[[category]]\ncategory = 2\nstrict = maybe\n", "line 3"),
            ("[[category]]\ncategory = 2\ncolour = 1\n", "line 3"),
            (
                "[[category]]\ncategory = 2\n[[category.code]]\ncode = 1\nfields = { A = { type = \"strin\", pii = true } }\n",
                "line 5",
            ),
            (
                "[[category]]\ncategory = 2\n[[category.code]]\ncode = 1\nfields = { A = { type = \"string\", pii = \"yes\" } }\n",
                "line 5",
            ),
            (
                "[[category]]\ncategory = 2\n[[category.code]]\ncode = 1\nfields = { A = { type = \"string\", colour = 1 } }\n",
                "line 5",
            ),
            ("[agents]\ngroup_fields = [\"Team\", \"Team\"]\n", "line 2"),
            ("[agents]\ngroup_fields = [\"\"]\n", "line 2"),
            (
                "[agents]\ngroup_fields = [\"a\",\"b\",\"c\",\"d\",\"e\",\"f\",\"g\",\"h\",\"i\"]\n",
                "line 2",
            ),
            ("[agents]\ngroups = [\"Team\"]\n", "line 2"),
        ] {
            let err = Catalog::builtin().extend(text).unwrap_err();
            assert!(err.contains(want), "{text:?}: {err}");
        }
    }
}
