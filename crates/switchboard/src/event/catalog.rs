//! The event catalog: which categories and codes exist, and which `AdditionalFields` each needs.
//!
//! The built-in catalog is the platform's published one (shared/EVENTS.md): Agent events are
//! strict, IVR, Email and Chat are open until an operator pins them.

use std::collections::BTreeMap;

/// Category numbers on the wire.
pub const SYSTEM: u8 = 0;

/// The codes of System events (Category 0, DESIGN §11).
pub mod system {
    pub const TEST: u32 = 1;
    pub const HEARTBEAT: u32 = 2;
    pub const SUBSCRIPTION_FAILING: u32 = 3;
    pub const SUBSCRIPTION_DISABLED: u32 = 4;
    pub const SUBSCRIPTION_RECOVERED: u32 = 5;
}
pub const AGENT: u8 = 1;

/// What a required parameter must hold.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FieldKind {
    /// A JSON string with at least one character.
    NonEmptyString,
    /// A JSON string, possibly empty.
    String,
    /// A JSON number without a fractional part.
    Integer,
}

#[derive(Clone, Debug)]
pub struct FieldSpec {
    pub name: &'static str,
    pub kind: FieldKind,
}

#[derive(Clone, Debug)]
pub struct CodeSpec {
    pub name: &'static str,
    pub fields: Vec<FieldSpec>,
}

#[derive(Clone, Debug)]
pub struct CategorySpec {
    pub name: &'static str,
    /// Open categories accept any non-negative code that is not listed.
    pub open: bool,
    /// Parameters every event of the category carries.
    pub common: Vec<FieldSpec>,
    pub codes: BTreeMap<u32, CodeSpec>,
}

#[derive(Clone, Debug)]
pub struct Catalog {
    categories: BTreeMap<u8, CategorySpec>,
}

const fn field(name: &'static str, kind: FieldKind) -> FieldSpec {
    FieldSpec { name, kind }
}

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
            name: "Agent",
            open: false,
            common: ["SessionId", "SessionType", "Username", "PhoneNo"]
                .map(|n| field(n, NonEmptyString))
                .to_vec(),
            codes: agent_codes
                .into_iter()
                .map(|(code, name, fields)| (code, CodeSpec { name, fields }))
                .collect(),
        };
        let open = |name| CategorySpec {
            name,
            open: true,
            common: vec![],
            codes: BTreeMap::new(),
        };
        let categories = BTreeMap::from([
            (AGENT, agent),
            (2, open("IVR")),
            (3, open("Email")),
            (4, open("Chat")),
        ]);
        Self { categories }
    }

    pub fn category(&self, category: u8) -> Option<&CategorySpec> {
        self.categories.get(&category)
    }

    /// "1 Agent, 2 IVR, …", for error messages.
    pub fn describe_categories(&self) -> String {
        let names: Vec<_> = self
            .categories
            .iter()
            .map(|(n, c)| format!("{n} {}", c.name))
            .collect();
        names.join(", ")
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
