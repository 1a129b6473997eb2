//! `switchboard simulate` (DESIGN §13): a contact center without a contact center. N agents
//! live shifts — they sign in, go Available, take work items (received, then accepted and
//! released after a while, or declined), go Not Ready, on break or Busy – Other, and sign out
//! with an exit code — and their events are posted at a target rate, or written as NDJSON with
//! `--dry-run`.
//!
//! The same seed and start give the same events, `Id`s included: a run posted twice is a run of
//! duplicates, not of conflicts. Every event is valid, and each agent's events are in time
//! order: event `i` is dated `start + i / rate` seconds.

use std::io::Write;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use reqwest::StatusCode;
use serde_json::{Value, json};
use time::OffsetDateTime;

use crate::event::Timestamp;

/// What to simulate.
#[derive(Clone, Debug)]
pub struct Options {
    pub server: String,
    pub key: String,
    pub tenant: String,
    pub agents: usize,
    /// Events per second.
    pub rate: u32,
    pub duration_secs: u64,
    pub seed: u64,
    /// The first event's `CreationDateUtc`; now when absent.
    pub start: Option<Timestamp>,
    /// NDJSON on stdout instead of posting.
    pub dry_run: bool,
    /// A progress line on stderr.
    pub progress: bool,
    /// Teams (DESIGN §18): with N > 0, every event carries the agent's `Team`, and now and then
    /// an agent signs in to another team.
    pub teams: usize,
    /// Hours each agent works a day (DESIGN §18's intervals benchmark): agent `i`'s shift
    /// starts `i / agents` of a day after midnight UTC; off shift it finishes its work item,
    /// signs out and sends nothing. 0: everyone around the clock.
    pub shift_hours: u32,
}

/// The names of the first teams; then "Team 11", "Team 12"….
const TEAMS: [&str; 10] = [
    "Sales",
    "Support",
    "Billing",
    "Retention",
    "Onboarding",
    "Collections",
    "Escalations",
    "Renewals",
    "Outbound",
    "Priority",
];

fn team_name(i: usize) -> String {
    TEAMS
        .get(i)
        .map_or_else(|| format!("Team {}", i + 1), |t| t.to_string())
}

/// SplitMix64: a few lines, well mixed, reproducible — all a simulation needs of randomness.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n`.
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }

    /// True with probability `percent` / 100.
    fn chance(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }

    fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len() as u64) as usize]
    }
}

/// Where an agent is in its shift.
#[derive(Clone, Debug, PartialEq)]
enum Phase {
    SignedOut,
    /// Signed in, no status yet.
    SignedIn,
    /// In an activity (its code).
    Idle(i64),
    /// A work item offered (its id and type).
    Receiving(String, &'static str),
    /// A work item being handled.
    Handling(String, &'static str),
}

struct Agent {
    username: String,
    phone: String,
    session_type: &'static str,
    session: u32,
    phase: Phase,
    /// Its team (an index), with `--teams`.
    team: usize,
}

/// (ActivityCode, AvailabilityCode) an agent moves to besides Available: Not Ready, On Break,
/// Busy – Other (named from `BUSY_NAMES`), Accept Internal Calls.
const ACTIVITIES: [(i64, i64); 4] = [(0, 0), (34, 0), (36, 0), (17, 2)];
const BUSY_NAMES: [&str; 4] = ["Coaching", "Team meeting", "Training", "Admin"];
const ITEM_TYPES: [&str; 4] = ["Voice", "Email", "Chat", "Callback"];
const QUEUES: [&str; 4] = ["Sales", "Support", "Billing", "Retention"];
const DECLINE_REASONS: [&str; 3] = ["busy", "wrong skill", "timeout"];

/// The simulated contact center: a deterministic stream of valid events.
pub struct Simulation {
    rng: Rng,
    agents: Vec<Agent>,
    start: OffsetDateTime,
    rate: f64,
    /// Events made so far.
    made: u64,
    /// Events to make before the shifts end.
    total: u64,
    items: u64,
    /// Set once every agent has been sent home.
    closing: Option<Vec<Value>>,
    teams: usize,
    shift_hours: u32,
}

impl Simulation {
    pub fn new(opts: &Options) -> Self {
        let start = opts
            .start
            .map(timestamp_to_time)
            .unwrap_or_else(OffsetDateTime::now_utc);
        let mut rng = Rng(opts.seed ^ (start.unix_timestamp() as u64).rotate_left(17));
        let agents = (0..opts.agents.max(1))
            .map(|i| Agent {
                username: format!("agent{i:03}"),
                phone: format!("+1555010{i:04}"),
                session_type: if rng.chance(10) { "TelAgent" } else { "CCA" },
                session: 0,
                phase: Phase::SignedOut,
                team: i % opts.teams.max(1),
            })
            .collect();
        Simulation {
            rng,
            agents,
            start,
            rate: f64::from(opts.rate.max(1)),
            made: 0,
            total: u64::from(opts.rate.max(1)) * opts.duration_secs,
            items: 0,
            closing: None,
            teams: opts.teams,
            shift_hours: opts.shift_hours.min(24),
        }
    }

    /// Whether agent `i` is on shift at the next event's time.
    fn on_shift(&self, i: usize) -> bool {
        if self.shift_hours == 0 || self.shift_hours >= 24 {
            return true;
        }
        let day = 86_400i64;
        let offset = i as i64 * day / self.agents.len() as i64;
        let t = self.now().to_unix_ms() / 1000;
        (t - offset).rem_euclid(day) < i64::from(self.shift_hours) * 3600
    }

    /// The next event with shifts: an agent picked at random steps on if on shift; off shift
    /// it winds down (work item finished, signed out); a signed-out agent off shift is passed
    /// over for another.
    fn next_on_shifts(&mut self) -> Value {
        for _ in 0..256 {
            let i = self.rng.below(self.agents.len() as u64) as usize;
            if self.on_shift(i) {
                return self.step(i);
            }
            match self.agents[i].phase {
                Phase::SignedOut => continue,
                Phase::Receiving(..) | Phase::Handling(..) => return self.step(i),
                Phase::SignedIn | Phase::Idle(_) => return self.sign_out(i),
            }
        }
        let i = self.rng.below(self.agents.len() as u64) as usize;
        self.step(i)
    }

    /// The `CreationDateUtc` of the next event.
    fn now(&self) -> Timestamp {
        let at = self.start + Duration::from_secs_f64(self.made as f64 / self.rate);
        Timestamp::from_datetime(at)
    }

    /// A GUID from the run's randomness, so that the same seed and start give the same ids.
    fn id(&mut self) -> String {
        let bytes = (u128::from(self.rng.next()) << 64 | u128::from(self.rng.next())).to_be_bytes();
        uuid::Builder::from_random_bytes(bytes)
            .into_uuid()
            .to_string()
    }

    fn event(&mut self, agent: usize, code: u32, extra: Value) -> Value {
        let id = self.id();
        let at = self.now();
        self.made += 1;
        let a = &self.agents[agent];
        let mut fields = json!({
            "SessionId": format!("S-{}-{}", a.username, a.session),
            "SessionType": a.session_type,
            "Username": a.username,
            "PhoneNo": a.phone,
        });
        if let (Some(f), Some(e)) = (fields.as_object_mut(), extra.as_object()) {
            f.extend(e.clone());
            if self.teams > 0 {
                f.insert("Team".into(), team_name(a.team).into());
            }
        }
        json!({"Id": id, "CreationDateUtc": at.to_string(), "Category": 1, "Code": code,
               "AdditionalFields": fields})
    }

    fn status(&mut self, agent: usize, activity: i64, availability: i64, name: &str) -> Value {
        self.agents[agent].phase = Phase::Idle(activity);
        let extra = json!({"ActivityCode": activity, "AvailabilityCode": availability,
                           "ActivityName": name});
        self.event(agent, 3, extra)
    }

    /// The next event of agent `i`'s shift.
    fn step(&mut self, i: usize) -> Value {
        let phase = self.agents[i].phase.clone();
        match phase {
            Phase::SignedOut => {
                // One sign-in in ten is to another team.
                if self.teams > 1 && self.rng.chance(10) {
                    self.agents[i].team = self.rng.below(self.teams as u64) as usize;
                }
                self.agents[i].session += 1;
                self.agents[i].phase = Phase::SignedIn;
                self.event(i, 1, json!({}))
            }
            Phase::SignedIn => self.status(i, 16, 1, ""),
            Phase::Idle(activity) => {
                let available = activity == 16;
                let roll = self.rng.below(100);
                if available && roll < 50 {
                    self.items += 1;
                    let id = format!("W-{}", self.items);
                    let kind = *self.rng.pick(&ITEM_TYPES);
                    let queue = *self.rng.pick(&QUEUES);
                    let from = format!("+1555020{:04}", self.rng.below(10_000));
                    self.agents[i].phase = Phase::Receiving(id.clone(), kind);
                    let extra = json!({"WorkItemId": id, "WorkItemType": kind, "Queue": queue,
                                       "From": from});
                    self.event(i, 4, extra)
                } else if roll < 92 {
                    if !available && self.rng.chance(70) {
                        self.status(i, 16, 1, "")
                    } else {
                        let (code, availability) = *self.rng.pick(&ACTIVITIES);
                        let name = if code == 36 {
                            *self.rng.pick(&BUSY_NAMES)
                        } else {
                            ""
                        };
                        self.status(i, code, availability, name)
                    }
                } else {
                    self.sign_out(i)
                }
            }
            Phase::Receiving(id, kind) => {
                if self.rng.chance(80) {
                    self.agents[i].phase = Phase::Handling(id.clone(), kind);
                    self.event(i, 5, json!({"WorkItemId": id, "WorkItemType": kind}))
                } else {
                    let reason = *self.rng.pick(&DECLINE_REASONS);
                    self.agents[i].phase = Phase::Idle(16);
                    let extra = json!({"WorkItemId": id, "WorkItemType": kind, "Reason": reason});
                    self.event(i, 6, extra)
                }
            }
            Phase::Handling(id, kind) => {
                let secs = 30 + self.rng.below(870);
                self.agents[i].phase = Phase::Idle(16);
                let extra = json!({"WorkItemId": id, "WorkItemType": kind, "DurationSecs": secs});
                self.event(i, 8, extra)
            }
        }
    }

    fn sign_out(&mut self, i: usize) -> Value {
        self.agents[i].phase = Phase::SignedOut;
        let code = *self.rng.pick(&[0, 0, 0, 1, 2, 3]);
        self.event(i, 2, json!({"ExitCode": code}))
    }

    /// The events that end every shift: work items finished, then each agent signs out.
    fn close(&mut self) -> Vec<Value> {
        let mut out = Vec::new();
        for i in 0..self.agents.len() {
            loop {
                match self.agents[i].phase {
                    Phase::SignedOut => break,
                    Phase::Receiving(..) | Phase::Handling(..) => out.push(self.step(i)),
                    Phase::SignedIn | Phase::Idle(_) => out.push(self.sign_out(i)),
                }
            }
        }
        out.reverse();
        out
    }
}

impl Iterator for Simulation {
    type Item = Value;

    fn next(&mut self) -> Option<Value> {
        if self.made < self.total && self.shift_hours > 0 {
            return Some(self.next_on_shifts());
        }
        if self.made < self.total {
            // Agents signed out come back now and then: the floor stays staffed.
            let i = self.rng.below(self.agents.len() as u64) as usize;
            if self.agents[i].phase == Phase::SignedOut && self.made > 0 && self.rng.chance(50) {
                let j = self.rng.below(self.agents.len() as u64) as usize;
                if self.agents[j].phase != Phase::SignedOut {
                    return Some(self.step(j));
                }
            }
            return Some(self.step(i));
        }
        let closing = match &mut self.closing {
            Some(c) => c,
            None => {
                let c = self.close();
                self.closing.insert(c)
            }
        };
        closing.pop()
    }
}

fn timestamp_to_time(t: Timestamp) -> OffsetDateTime {
    let s = t.to_string();
    let n = |r: std::ops::Range<usize>| s[r].parse::<i32>().unwrap_or(0);
    let date = time::Date::from_calendar_date(
        n(0..4),
        time::Month::try_from(n(4..6) as u8).unwrap_or(time::Month::January),
        n(6..8) as u8,
    )
    .unwrap_or(time::Date::MIN);
    let t = time::Time::from_hms(n(8..10) as u8, n(10..12) as u8, n(12..14) as u8)
        .unwrap_or(time::Time::MIDNIGHT);
    date.with_time(t).assume_utc()
}

/// What a run did.
#[derive(Debug, Default)]
pub struct Report {
    pub sent: u64,
    pub accepted: u64,
    pub duplicates: u64,
    pub refused: u64,
    pub secs: f64,
}

/// Runs the simulation: posts its events at the target rate (or writes them with `--dry-run`).
pub async fn run(opts: Options, out: &mut impl Write) -> anyhow::Result<Report> {
    let mut sim = Simulation::new(&opts);
    let mut report = Report::default();
    let started = Instant::now();
    if opts.dry_run {
        for event in sim {
            match writeln!(out, "{event}") {
                // The reader had enough (`| head`): not an error.
                Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => break,
                other => other?,
            }
            report.sent += 1;
        }
        return Ok(report);
    }
    let client = reqwest::Client::new();
    let url = format!(
        "{}/v1/tenants/{}/events",
        opts.server.trim_end_matches('/'),
        opts.tenant
    );
    // Ten batches a second, each holding what the rate has made due by then.
    let tick = Duration::from_millis(100);
    let mut last_progress = Instant::now();
    let mut done = false;
    while !done {
        let due = ((started.elapsed() + tick).as_secs_f64() * f64::from(opts.rate)) as u64;
        let mut batch = Vec::new();
        while report.sent + (batch.len() as u64) < due.max(1) && batch.len() < 1000 {
            match sim.next() {
                Some(e) => batch.push(e),
                None => {
                    done = true;
                    break;
                }
            }
        }
        if !batch.is_empty() {
            post(&client, &url, &opts.key, &batch, &mut report).await?;
        }
        if opts.progress && last_progress.elapsed() >= Duration::from_secs(1) {
            last_progress = Instant::now();
            let rate = report.sent as f64 / started.elapsed().as_secs_f64();
            eprint!(
                "\rsent {}  ({rate:.0} events/s)  accepted {}  duplicates {}  refused {}   ",
                report.sent, report.accepted, report.duplicates, report.refused
            );
        }
        let next = started + Duration::from_secs_f64((report.sent as f64) / f64::from(opts.rate));
        tokio::time::sleep_until(next.max(Instant::now()).into()).await;
    }
    report.secs = started.elapsed().as_secs_f64();
    if opts.progress {
        eprintln!(
            "\rsent {} in {:.1} s  accepted {}  duplicates {}  refused {}   ",
            report.sent, report.secs, report.accepted, report.duplicates, report.refused
        );
    }
    Ok(report)
}

/// Posts one batch; counts what the server said. A refusal is reported with its problem, never
/// dropped silently.
async fn post(
    client: &reqwest::Client,
    url: &str,
    key: &str,
    batch: &[Value],
    report: &mut Report,
) -> anyhow::Result<()> {
    report.sent += batch.len() as u64;
    let r = client
        .post(url)
        .bearer_auth(key)
        .json(batch)
        .send()
        .await
        .with_context(|| format!("posting to {url}"))?;
    let status = r.status();
    let body: Value = r.json().await.unwrap_or(Value::Null);
    if status == StatusCode::ACCEPTED {
        for e in body["events"].as_array().into_iter().flatten() {
            if e["duplicate"] == true {
                report.duplicates += 1;
            } else {
                report.accepted += 1;
            }
        }
        return Ok(());
    }
    report.refused += batch.len() as u64;
    let title = body["title"].as_str().unwrap_or("refused");
    let detail = body["detail"].as_str().unwrap_or_default();
    eprintln!("\n{status} {title}: {detail}");
    for e in body["errors"].as_array().into_iter().flatten().take(5) {
        eprintln!("  [{}] {}: {}", e["index"], e["field"], e["message"]);
    }
    if status == StatusCode::UNAUTHORIZED || status == StatusCode::NOT_FOUND {
        bail!("{status} {title}: {detail}");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::{Catalog, parse_batch};

    fn opts(seed: u64) -> Options {
        Options {
            server: String::new(),
            key: String::new(),
            tenant: "default".into(),
            agents: 20,
            rate: 200,
            duration_secs: 5,
            seed,
            start: Some(Timestamp::parse("20261123080000").unwrap()),
            dry_run: true,
            progress: false,
            teams: 0,
            shift_hours: 0,
        }
    }

    #[test]
    fn every_event_is_valid_and_the_same_seed_makes_the_same_run() {
        let a: Vec<Value> = Simulation::new(&opts(7)).collect();
        let b: Vec<Value> = Simulation::new(&opts(7)).collect();
        let c: Vec<Value> = Simulation::new(&opts(8)).collect();
        assert_eq!(a, b);
        assert_ne!(a, c);
        assert!(a.len() >= 1000, "{}", a.len());
        let body = serde_json::to_vec(&a).unwrap();
        for chunk in a.chunks(1000) {
            let body = serde_json::to_vec(chunk).unwrap();
            parse_batch(&body, &Catalog::builtin()).expect("every event is valid");
        }
        assert!(!body.is_empty());
        assert!(
            a.iter()
                .all(|e| e["AdditionalFields"].get("Team").is_none())
        );
    }

    #[test]
    fn teams_fill_team_and_leave_the_rest_of_the_run_alone() {
        let plain: Vec<Value> = Simulation::new(&opts(7)).collect();
        let teams: Vec<Value> = Simulation::new(&Options {
            teams: 3,
            ..opts(7)
        })
        .collect();
        let names: std::collections::BTreeSet<&str> = teams
            .iter()
            .map(|e| {
                e["AdditionalFields"]["Team"]
                    .as_str()
                    .expect("every event has a Team")
            })
            .collect();
        assert_eq!(names, ["Billing", "Sales", "Support"].into());
        assert_eq!(team_name(10), "Team 11");
        // Without --teams, a run is the run it always was.
        assert_eq!(plain, Simulation::new(&opts(7)).collect::<Vec<_>>());
    }

    #[test]
    fn shifts_keep_agents_signed_out_off_shift() {
        let o = Options {
            agents: 24,
            rate: 2,
            duration_secs: 86_400,
            shift_hours: 8,
            ..opts(3)
        };
        let events: Vec<Value> = Simulation::new(&o).collect();
        let start = Timestamp::parse("20261123080000").unwrap().to_unix_ms() / 1000;
        let mut signed_in = 0;
        for e in &events {
            let name = e["AdditionalFields"]["Username"].as_str().unwrap();
            let i: i64 = name.trim_start_matches("agent").parse().unwrap();
            let at = Timestamp::parse(e["CreationDateUtc"].as_str().unwrap())
                .unwrap()
                .to_unix_ms()
                / 1000;
            // Agent i's shift starts i hours after midnight (24 agents over a day).
            let on = (at - i * 3600).rem_euclid(86_400) < 8 * 3600;
            let code = e["Code"].as_u64().unwrap();
            if !on && at < start + 86_400 {
                assert!(
                    [2, 5, 6, 8].contains(&code),
                    "off shift, {name} only winds down: {e}"
                );
            }
            signed_in += u64::from(code == 1);
        }
        assert!(signed_in >= 24, "every agent works its shift: {signed_in}");
    }
}
