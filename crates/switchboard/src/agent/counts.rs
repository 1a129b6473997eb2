//! Live counts by group (DESIGN §18): how many signed-in agents each group has, on a work item,
//! by availability and by activity. A [`Tally`] is built from the agents as the projection holds
//! them (so a count always equals counting the agents), and moved on by the agents that changed
//! since (the counts stream), keeping each agent's share so that a change takes it out of its
//! old group and into its new one.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use serde::Serialize;

use super::Agent;

/// The key of a signed-in agent with no activity (or availability) yet.
pub const UNKNOWN: &str = "unknown";

/// One group's counts; zero entries are left out.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, utoipa::ToSchema)]
#[schema(as = GroupCount)]
pub struct GroupCounts {
    /// The group's value of the `by` field; null: agents without it (or, without `by`, the
    /// whole tenant).
    pub value: Option<String>,
    pub signed_in: u64,
    /// Signed in and receiving or handling a work item.
    pub on_work_item: u64,
    /// By `AvailabilityCode` (`"unknown"`: none yet).
    pub by_availability: BTreeMap<String, u64>,
    /// By `ActivityCode` (`"unknown"`: none yet).
    pub by_activity: BTreeMap<String, u64>,
}

/// What one signed-in agent adds to its group.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Share {
    group: Option<String>,
    on_work_item: bool,
    availability: String,
    activity: String,
}

fn code(code: Option<i64>) -> String {
    code.map_or_else(|| UNKNOWN.to_string(), |c| c.to_string())
}

impl Share {
    /// `agent`'s share, grouped by `by`; none when it is signed out.
    fn of(agent: &Agent, by: Option<&str>) -> Option<Self> {
        agent.signed_in.then(|| Share {
            group: by.and_then(|f| agent.groups.get(f).cloned()),
            on_work_item: agent.work_item.is_some(),
            availability: code(agent.availability_code),
            activity: code(agent.activity_code),
        })
    }
}

fn add(map: &mut BTreeMap<String, u64>, key: &str, up: bool) {
    if up {
        *map.entry(key.to_string()).or_default() += 1;
    } else if let Some(n) = map.get_mut(key) {
        *n = n.saturating_sub(1);
        if *n == 0 {
            map.remove(key);
        }
    }
}

/// The counts of one tenant's agents grouped by one field, and each agent's share of them.
#[derive(Debug, Default)]
pub struct Tally {
    by: Option<String>,
    groups: BTreeMap<Option<String>, GroupCounts>,
    shares: HashMap<String, Share>,
}

impl Tally {
    /// The counts of `agents` by the group field `by` (`None`: one group, the whole tenant).
    pub fn new<'a>(by: Option<&str>, agents: impl IntoIterator<Item = &'a Agent>) -> Self {
        let mut tally = Tally {
            by: by.map(str::to_string),
            ..Tally::default()
        };
        for agent in agents {
            tally.update(agent);
        }
        tally
    }

    fn apply(&mut self, share: &Share, up: bool) {
        let group = self
            .groups
            .entry(share.group.clone())
            .or_insert_with(|| GroupCounts {
                value: share.group.clone(),
                ..GroupCounts::default()
            });
        let step = |n: &mut u64| {
            *n = if up { *n + 1 } else { n.saturating_sub(1) };
        };
        step(&mut group.signed_in);
        if share.on_work_item {
            step(&mut group.on_work_item);
        }
        add(&mut group.by_availability, &share.availability, up);
        add(&mut group.by_activity, &share.activity, up);
    }

    /// Moves the counts on by `agent`'s current state; returns the groups it changed (its old
    /// one and its new one), as values of the `by` field.
    pub fn update(&mut self, agent: &Agent) -> Vec<Option<String>> {
        let new = Share::of(agent, self.by.as_deref());
        let old = match &new {
            Some(share) => self.shares.insert(agent.username.clone(), share.clone()),
            None => self.shares.remove(&agent.username),
        };
        if old == new {
            return Vec::new();
        }
        let mut changed = Vec::with_capacity(2);
        if let Some(old) = old {
            self.apply(&old, false);
            changed.push(old.group);
        }
        if let Some(new) = new {
            self.apply(&new, true);
            if !changed.contains(&new.group) {
                changed.push(new.group);
            }
        }
        changed
    }

    /// Every group with a signed-in agent, in order of value (null first).
    pub fn groups(&self) -> Vec<GroupCounts> {
        self.groups
            .values()
            .filter(|g| g.signed_in > 0)
            .cloned()
            .collect()
    }

    /// The groups `values` name, whole (one that became empty: `signed_in: 0`), forgetting
    /// the empty ones.
    pub fn take(&mut self, values: &BTreeSet<Option<String>>) -> Vec<GroupCounts> {
        let out = values
            .iter()
            .map(|v| {
                self.groups.get(v).cloned().unwrap_or_else(|| GroupCounts {
                    value: v.clone(),
                    ..GroupCounts::default()
                })
            })
            .collect();
        self.groups.retain(|_, g| g.signed_in > 0);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::agent::WorkItem;
    use crate::event::Timestamp;

    fn agent(name: &str, team: Option<&str>, signed_in: bool, activity: Option<i64>) -> Agent {
        Agent {
            username: name.into(),
            signed_in,
            session_id: None,
            session_type: None,
            phone_no: None,
            activity_code: activity,
            availability_code: activity.map(|a| a / 10),
            activity_name: None,
            since: None,
            work_item: None,
            signed_in_at: None,
            signed_out_at: None,
            exit_code: None,
            last_sequence: 1,
            last_event_at: Timestamp::parse("20261205000000").unwrap(),
            groups: team
                .map(|t| BTreeMap::from([("Team".to_string(), t.to_string())]))
                .unwrap_or_default(),
        }
    }

    #[test]
    fn counts_signed_in_agents_by_group_and_moves_them_between_groups() {
        let agents = [
            agent("a", Some("Sales"), true, Some(16)),
            agent("b", Some("Sales"), true, None),
            agent("c", Some("Support"), false, Some(16)),
            agent("d", None, true, Some(36)),
        ];
        let mut t = Tally::new(Some("Team"), &agents);
        let groups = t.groups();
        assert_eq!(groups.len(), 2, "Support has nobody signed in: {groups:?}");
        assert_eq!(groups[0].value, None);
        assert_eq!(groups[0].by_activity, BTreeMap::from([("36".into(), 1)]));
        let sales = &groups[1];
        assert_eq!(sales.value.as_deref(), Some("Sales"));
        assert_eq!(sales.signed_in, 2);
        assert_eq!(
            sales.by_activity,
            BTreeMap::from([("16".into(), 1), ("unknown".into(), 1)])
        );
        assert_eq!(
            sales.by_availability,
            BTreeMap::from([("1".into(), 1), ("unknown".into(), 1)])
        );

        // a moves to Support, with a work item; b signs out.
        let mut a = agent("a", Some("Support"), true, Some(16));
        a.work_item = Some(WorkItem {
            id: None,
            kind: None,
            state: "receiving".into(),
            since: a.last_event_at,
        });
        let changed = t.update(&a);
        assert_eq!(changed, [Some("Sales".into()), Some("Support".into())]);
        let changed = t.update(&agent("b", Some("Sales"), false, None));
        assert_eq!(changed, [Some("Sales".into())]);
        assert!(
            t.update(&agent("c", Some("Support"), false, None))
                .is_empty()
        );
        let taken = t.take(&BTreeSet::from([
            Some("Sales".into()),
            Some("Support".into()),
        ]));
        assert_eq!(
            taken[0].signed_in, 0,
            "an empty group is sent with signed_in 0"
        );
        assert!(taken[0].by_activity.is_empty());
        assert_eq!(taken[1].signed_in, 1);
        assert_eq!(taken[1].on_work_item, 1);
        let all: Vec<_> = t.groups().into_iter().map(|g| g.value).collect();
        assert_eq!(all, [None, Some("Support".into())]);

        let whole = Tally::new(None, &agents).groups();
        assert_eq!(whole.len(), 1);
        assert_eq!((whole[0].value.clone(), whole[0].signed_in), (None, 3));
    }
}
