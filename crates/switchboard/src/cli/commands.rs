//! The client commands' flags (clap) and the request each one makes.

use clap::{Args, Subcommand};
use reqwest::Method;
use serde_json::{Value, json};

use super::client::{Api, Failure, Request, Show, query, run, seg, subscription_body, tail};

/// Flags every client command takes, before or after its name.
#[derive(Args, Clone, Debug)]
pub struct Global {
    /// The server
    #[arg(
        long,
        global = true,
        env = "SWITCHBOARD_URL",
        default_value = "http://127.0.0.1:8080"
    )]
    pub server: String,
    /// An API key [default: ./switchboard-data/admin.key]
    #[arg(long, global = true, env = "SWITCHBOARD_KEY")]
    pub key: Option<String>,
    /// The tenant
    #[arg(long, global = true, default_value = "default")]
    pub tenant: String,
    /// The API's JSON answer instead of a table
    #[arg(long, global = true)]
    pub json: bool,
}

/// Page flags.
#[derive(Args, Clone, Debug)]
pub struct PageArgs {
    /// Page size, 1 to 1000
    #[arg(long)]
    pub limit: Option<u32>,
    /// Start after this cursor (the `next_after` of the page before)
    #[arg(long)]
    pub after: Option<String>,
}

impl PageArgs {
    fn pairs(&self) -> Vec<(&'static str, Option<String>)> {
        vec![
            ("limit", self.limit.map(|l| l.to_string())),
            ("after", self.after.clone()),
        ]
    }
}

/// What an event must be.
#[derive(Args, Clone, Debug)]
pub struct EventFilter {
    #[arg(long)]
    pub category: Option<u8>,
    #[arg(long)]
    pub code: Option<u32>,
    #[arg(long)]
    pub username: Option<String>,
}

#[derive(Subcommand, Clone, Debug)]
pub enum Events {
    /// Post events: one JSON event, an array, or NDJSON, from FILE or stdin (-)
    Send {
        #[arg(default_value = "-")]
        source: String,
    },
    /// The event log
    List {
        #[command(flatten)]
        filter: EventFilter,
        /// CreationDateUtc from (yyyyMMddHHmmss)
        #[arg(long)]
        since: Option<String>,
        /// CreationDateUtc up to (yyyyMMddHHmmss)
        #[arg(long)]
        until: Option<String>,
        #[command(flatten)]
        page: PageArgs,
    },
    /// One event with its deliveries
    Get { id: String },
    /// Follow new events as they are committed (the SSE stream)
    Tail {
        #[command(flatten)]
        filter: EventFilter,
        /// Start after this sequence instead of now
        #[arg(long)]
        after: Option<i64>,
    },
}

#[derive(Subcommand, Clone, Debug)]
pub enum Subscriptions {
    /// Create a subscription (--url, --nats, --amqp, --pull, or a whole body with --body)
    Create {
        #[arg(long)]
        url: Option<String>,
        /// Publish to NATS JetStream at this broker URL instead (with --subject)
        #[arg(long, value_name = "URL", conflicts_with_all = ["url", "pull", "amqp"], requires = "subject")]
        nats: Option<String>,
        /// With --nats: the subject template ({tenant}, {category}, {code}, {agent})
        #[arg(long, requires = "nats")]
        subject: Option<String>,
        /// Publish to a RabbitMQ exchange at this broker URL instead (with --exchange and
        /// --routing-key)
        #[arg(long, value_name = "URL", conflicts_with_all = ["url", "pull"], requires_all = ["exchange", "routing_key"])]
        amqp: Option<String>,
        /// With --amqp: the exchange (declared by you)
        #[arg(long, requires = "amqp")]
        exchange: Option<String>,
        /// With --amqp: the routing-key template ({tenant}, {category}, {code}, {agent})
        #[arg(long, requires = "amqp")]
        routing_key: Option<String>,
        /// A pull subscription: read with `subscriptions poll` instead of receiving POSTs
        #[arg(long, conflicts_with = "url")]
        pull: bool,
        /// Pull: how many partitions, by agent (1 to 64)
        #[arg(long, requires = "pull")]
        partitions: Option<u32>,
        #[arg(long)]
        description: Option<String>,
        /// The subscription body as JSON, from a file or - (stdin)
        #[arg(long, value_name = "FILE|-")]
        body: Option<String>,
    },
    List {
        #[command(flatten)]
        page: PageArgs,
    },
    Get {
        id: String,
    },
    /// Change fields of a subscription
    Update {
        id: String,
        #[arg(long)]
        url: Option<String>,
        #[arg(long)]
        description: Option<String>,
        /// Fields to change as JSON, from a file or - (stdin)
        #[arg(long, value_name = "FILE|-")]
        body: Option<String>,
    },
    Delete {
        id: String,
    },
    /// A new secret; the old one keeps signing for --grace-secs
    Rotate {
        id: String,
        #[arg(long)]
        grace_secs: Option<u64>,
    },
    /// Send a Test event now
    Test {
        id: String,
    },
    /// Send again the events of a window
    Replay {
        id: String,
        #[arg(long)]
        since: String,
        #[arg(long)]
        until: Option<String>,
        #[arg(long)]
        only_failed: bool,
    },
    /// Read a pull subscription's messages after the committed cursor (consume)
    Poll {
        id: String,
        #[arg(long, default_value_t = 0)]
        partition: u32,
        /// 1 to 1000
        #[arg(long)]
        limit: Option<u32>,
        /// Wait up to this many seconds (0 to 30) for a matching event
        #[arg(long)]
        wait_secs: Option<u64>,
        /// Read after this sequence instead of the committed cursor
        #[arg(long)]
        after: Option<i64>,
    },
    /// Commit a partition's cursor (the `next_cursor` of a poll) (consume)
    Commit {
        id: String,
        #[arg(long, default_value_t = 0)]
        partition: u32,
        #[arg(long)]
        cursor: i64,
    },
    /// Move cursors to just before the first event at or after a point (manage)
    Seek {
        id: String,
        /// One partition; absent: every partition
        #[arg(long)]
        partition: Option<u32>,
        #[arg(long, required_unless_present = "to_time", conflicts_with = "to_time")]
        to_sequence: Option<i64>,
        /// yyyyMMddHHmmss (UTC), on when events were received
        #[arg(long)]
        to_time: Option<String>,
    },
}

#[derive(Subcommand, Clone, Debug)]
pub enum Deliveries {
    /// A subscription's deliveries
    List {
        #[arg(long)]
        subscription: String,
        /// pending, succeeded or failed
        #[arg(long)]
        status: Option<String>,
        #[command(flatten)]
        page: PageArgs,
    },
    /// One delivery with its attempts
    Get { id: String },
    /// Attempt it again now
    Retry { id: String },
}

#[derive(Subcommand, Clone, Debug)]
pub enum Agents {
    /// Every agent's state
    List {
        #[arg(long)]
        signed_in: Option<bool>,
        #[arg(long)]
        availability_code: Option<i64>,
        #[command(flatten)]
        page: PageArgs,
    },
    /// One agent, now or as of a sequence
    Get {
        username: String,
        #[arg(long)]
        as_of: Option<i64>,
    },
    /// Intervals for WFM: signed-in time, time on a work item and by activity, per agent
    Intervals {
        /// Interval size in seconds: 900, 1800 or 3600
        #[arg(long, default_value_t = 900)]
        size: i64,
        /// From (yyyyMMddHHmmss, UTC)
        #[arg(long)]
        since: String,
        /// Up to (yyyyMMddHHmmss, UTC), at most 31 days after --since
        #[arg(long)]
        until: String,
        /// One agent only
        #[arg(long)]
        username: Option<String>,
        /// Only intervals changed by events after this sequence
        #[arg(long)]
        changed_since_sequence: Option<i64>,
        #[command(flatten)]
        page: PageArgs,
    },
    /// Live counts of the signed-in agents, by a group field of the catalog
    Counts {
        /// A field of the catalog's [agents] group_fields [default: the whole tenant]
        #[arg(long)]
        by: Option<String>,
    },
}

#[derive(Subcommand, Clone, Debug)]
pub enum Tenants {
    Create {
        id: String,
        #[arg(long)]
        name: Option<String>,
    },
    List {
        #[command(flatten)]
        page: PageArgs,
    },
    Get {
        id: String,
    },
    Delete {
        id: String,
    },
}

#[derive(Subcommand, Clone, Debug)]
pub enum Keys {
    /// Create a key (shown once)
    Create {
        #[arg(long)]
        name: String,
        /// publish, read, manage or consume; repeat for more
        #[arg(long = "scope", required = true)]
        scopes: Vec<String>,
    },
    List {
        #[command(flatten)]
        page: PageArgs,
    },
    Delete {
        id: String,
    },
}

#[derive(Subcommand, Clone, Debug)]
pub enum Jobs {
    /// Start a job: replay (--since) or cancel_pending
    Create {
        /// replay or cancel_pending
        kind: String,
        #[arg(long)]
        subscription: String,
        /// replay: CreationDateUtc from (yyyyMMddHHmmss)
        #[arg(long)]
        since: Option<String>,
        /// replay: CreationDateUtc up to (yyyyMMddHHmmss)
        #[arg(long)]
        until: Option<String>,
        /// replay: only the failed deliveries
        #[arg(long)]
        only_failed: bool,
        /// cancel_pending: only deliveries of events created before (yyyyMMddHHmmss)
        #[arg(long)]
        before: Option<String>,
        /// Count what it would do, change nothing
        #[arg(long)]
        dry_run: bool,
    },
    /// The tenant's jobs, newest first
    List {
        #[command(flatten)]
        page: PageArgs,
    },
    /// One job: its state and progress
    Get { id: String },
    /// Cancel a queued or running job (it stops within a second)
    Cancel { id: String },
}

#[derive(Subcommand, Clone, Debug)]
pub enum Rules {
    /// Create a rule (DESIGN §18) from its body as JSON
    Create {
        /// The rule's body, from a file or - (stdin)
        #[arg(long, value_name = "FILE|-")]
        body: String,
    },
    /// The tenant's rules
    List {
        #[command(flatten)]
        page: PageArgs,
    },
    /// One rule
    Get { id: String },
    /// Change fields of a rule (a JSON merge patch); its open episodes end
    Update {
        id: String,
        /// The fields to change, from a file or - (stdin)
        #[arg(long, value_name = "FILE|-")]
        body: String,
    },
    /// Delete a rule; its fired episodes are cleared
    Delete { id: String },
}

/// One client command.
#[derive(Clone, Debug)]
pub enum Client {
    Events(Events),
    Subscriptions(Subscriptions),
    Deliveries(Deliveries),
    Agents(Agents),
    Tenants(Tenants),
    Keys(Keys),
    Jobs(Jobs),
    Rules(Rules),
}

fn req(method: Method, path: String, body: Option<Value>, show: Show) -> Request {
    Request {
        method,
        path,
        body,
        show,
    }
}

const EVENT_COLUMNS: &[&str] = &[
    "sequence",
    "event.CreationDateUtc",
    "event.Category",
    "event.Code",
    "event.AdditionalFields.Username",
    "event.Id",
];
const SUBSCRIPTION_COLUMNS: &[&str] = &[
    "id",
    "mode",
    "url",
    "enabled",
    "ordering",
    "disabled_reason",
];
const DELIVERY_COLUMNS: &[&str] = &[
    "id",
    "sequence",
    "status",
    "attempt_count",
    "last_status_code",
    "next_attempt_at",
];
const INTERVAL_COLUMNS: &[&str] = &[
    "username",
    "start",
    "signed_in_secs",
    "on_work_item_secs",
    "revision",
];
const AGENT_COLUMNS: &[&str] = &[
    "username",
    "signed_in",
    "activity_name",
    "since",
    "work_item.state",
    "work_item.id",
];
const TENANT_COLUMNS: &[&str] = &["id", "name", "ingest_rate_limit_per_sec", "created_at"];
const KEY_COLUMNS: &[&str] = &["id", "name", "scopes", "created_at"];
const JOB_COLUMNS: &[&str] = &["id", "kind", "state", "done", "total", "created_at"];
const RULE_COLUMNS: &[&str] = &["id", "name", "kind", "for_secs", "enabled", "updated_at"];

impl Client {
    /// The request this command makes; `Ok(None)` for `events tail`, which streams.
    fn request(&self, tenant: &str) -> anyhow::Result<Option<Request>> {
        use Method as M;
        let t = format!("/v1/tenants/{}", seg(tenant));
        Ok(Some(match self {
            Client::Events(e) => match e {
                Events::Send { source } => {
                    let body = super::client::read_json(source)?;
                    req(M::POST, format!("{t}/events"), Some(body), Show::Object)
                }
                Events::List {
                    filter,
                    since,
                    until,
                    page,
                } => {
                    let mut pairs = filter_pairs(filter);
                    pairs.extend([("since", since.clone()), ("until", until.clone())]);
                    pairs.extend(page.pairs());
                    let path = format!("{t}/events{}", query(&pairs));
                    req(M::GET, path, None, Show::Table(EVENT_COLUMNS))
                }
                Events::Get { id } => req(
                    M::GET,
                    format!("{t}/events/{}", seg(id)),
                    None,
                    Show::Object,
                ),
                Events::Tail { .. } => return Ok(None),
            },
            Client::Subscriptions(s) => {
                let base = format!("{t}/subscriptions");
                match s {
                    Subscriptions::Create {
                        url,
                        nats,
                        subject,
                        amqp,
                        exchange,
                        routing_key,
                        pull,
                        partitions,
                        description,
                        body,
                    } => {
                        let mut body =
                            subscription_body(body.as_deref(), url.clone(), description.clone())?;
                        if let (Some(broker), Some(subject)) = (nats, subject) {
                            body["destination"] =
                                json!({"type": "nats", "url": broker, "subject": subject});
                        }
                        if let (Some(broker), Some(exchange), Some(key)) =
                            (amqp, exchange, routing_key)
                        {
                            body["destination"] = json!({"type": "amqp", "url": broker,
                                "exchange": exchange, "routing_key": key});
                        }
                        if *pull {
                            body["mode"] = json!("pull");
                        }
                        if let Some(p) = partitions {
                            body["partitions"] = json!(p);
                        }
                        req(M::POST, base, Some(body), Show::Object)
                    }
                    Subscriptions::List { page } => req(
                        M::GET,
                        format!("{base}{}", query(&page.pairs())),
                        None,
                        Show::Table(SUBSCRIPTION_COLUMNS),
                    ),
                    Subscriptions::Get { id } => {
                        req(M::GET, format!("{base}/{}", seg(id)), None, Show::Object)
                    }
                    Subscriptions::Update {
                        id,
                        url,
                        description,
                        body,
                    } => {
                        let body =
                            subscription_body(body.as_deref(), url.clone(), description.clone())?;
                        req(
                            M::PATCH,
                            format!("{base}/{}", seg(id)),
                            Some(body),
                            Show::Object,
                        )
                    }
                    Subscriptions::Delete { id } => {
                        req(M::DELETE, format!("{base}/{}", seg(id)), None, Show::Done)
                    }
                    Subscriptions::Rotate { id, grace_secs } => {
                        let body = match grace_secs {
                            Some(g) => json!({"grace_secs": g}),
                            None => json!({}),
                        };
                        let path = format!("{base}/{}/secret/rotate", seg(id));
                        req(M::POST, path, Some(body), Show::Object)
                    }
                    Subscriptions::Test { id } => req(
                        M::POST,
                        format!("{base}/{}/test", seg(id)),
                        None,
                        Show::Object,
                    ),
                    Subscriptions::Replay {
                        id,
                        since,
                        until,
                        only_failed,
                    } => {
                        let mut body = json!({"since": since, "only_failed": only_failed});
                        if let Some(u) = until {
                            body["until"] = json!(u);
                        }
                        let path = format!("{base}/{}/replay", seg(id));
                        req(M::POST, path, Some(body), Show::Object)
                    }
                    Subscriptions::Poll {
                        id,
                        partition,
                        limit,
                        wait_secs,
                        after,
                    } => {
                        let pairs = [
                            ("partition", Some(partition.to_string())),
                            ("limit", limit.map(|l| l.to_string())),
                            ("wait_secs", wait_secs.map(|w| w.to_string())),
                            ("after", after.map(|a| a.to_string())),
                        ];
                        let path = format!("{base}/{}/messages{}", seg(id), query(&pairs));
                        req(M::GET, path, None, Show::Object)
                    }
                    Subscriptions::Commit {
                        id,
                        partition,
                        cursor,
                    } => {
                        let body = json!({"partition": partition, "cursor": cursor});
                        let path = format!("{base}/{}/commit", seg(id));
                        req(M::POST, path, Some(body), Show::Object)
                    }
                    Subscriptions::Seek {
                        id,
                        partition,
                        to_sequence,
                        to_time,
                    } => {
                        let mut body = json!({});
                        for (name, value) in [
                            ("partition", partition.map(|p| json!(p))),
                            ("to_sequence", to_sequence.map(|s| json!(s))),
                            ("to_time", to_time.as_ref().map(|t| json!(t))),
                        ] {
                            if let Some(v) = value {
                                body[name] = v;
                            }
                        }
                        let path = format!("{base}/{}/seek", seg(id));
                        req(M::POST, path, Some(body), Show::Object)
                    }
                }
            }
            Client::Deliveries(d) => match d {
                Deliveries::List {
                    subscription,
                    status,
                    page,
                } => {
                    let mut pairs = vec![("status", status.clone())];
                    pairs.extend(page.pairs());
                    let path = format!(
                        "{t}/subscriptions/{}/deliveries{}",
                        seg(subscription),
                        query(&pairs)
                    );
                    req(M::GET, path, None, Show::Table(DELIVERY_COLUMNS))
                }
                Deliveries::Get { id } => req(
                    M::GET,
                    format!("{t}/deliveries/{}", seg(id)),
                    None,
                    Show::Object,
                ),
                Deliveries::Retry { id } => req(
                    M::POST,
                    format!("{t}/deliveries/{}/retry", seg(id)),
                    None,
                    Show::Object,
                ),
            },
            Client::Agents(a) => match a {
                Agents::List {
                    signed_in,
                    availability_code,
                    page,
                } => {
                    let mut pairs = vec![
                        ("signed_in", signed_in.map(|b| b.to_string())),
                        (
                            "availability_code",
                            availability_code.map(|c| c.to_string()),
                        ),
                    ];
                    pairs.extend(page.pairs());
                    let path = format!("{t}/agents{}", query(&pairs));
                    req(M::GET, path, None, Show::Table(AGENT_COLUMNS))
                }
                Agents::Get { username, as_of } => {
                    let q = query(&[("as_of", as_of.map(|n| n.to_string()))]);
                    let path = format!("{t}/agents/{}{q}", seg(username));
                    req(M::GET, path, None, Show::Object)
                }
                Agents::Intervals {
                    size,
                    since,
                    until,
                    username,
                    changed_since_sequence,
                    page,
                } => {
                    let mut pairs = vec![
                        ("size", Some(size.to_string())),
                        ("since", Some(since.clone())),
                        ("until", Some(until.clone())),
                        ("username", username.clone()),
                        (
                            "changed_since_sequence",
                            changed_since_sequence.map(|n| n.to_string()),
                        ),
                    ];
                    pairs.extend(page.pairs());
                    let path = format!("{t}/agents/intervals{}", query(&pairs));
                    req(M::GET, path, None, Show::Table(INTERVAL_COLUMNS))
                }
                Agents::Counts { by } => {
                    let q = query(&[("by", by.clone())]);
                    req(M::GET, format!("{t}/agents/counts{q}"), None, Show::Object)
                }
            },
            Client::Tenants(x) => match x {
                Tenants::Create { id, name } => {
                    let body =
                        json!({"id": id, "name": name.clone().unwrap_or_else(|| id.clone())});
                    req(M::POST, "/v1/tenants".into(), Some(body), Show::Object)
                }
                Tenants::List { page } => req(
                    M::GET,
                    format!("/v1/tenants{}", query(&page.pairs())),
                    None,
                    Show::Table(TENANT_COLUMNS),
                ),
                Tenants::Get { id } => req(
                    M::GET,
                    format!("/v1/tenants/{}", seg(id)),
                    None,
                    Show::Object,
                ),
                Tenants::Delete { id } => req(
                    M::DELETE,
                    format!("/v1/tenants/{}", seg(id)),
                    None,
                    Show::Done,
                ),
            },
            Client::Keys(k) => match k {
                Keys::Create { name, scopes } => {
                    let body = json!({"name": name, "scopes": scopes});
                    req(M::POST, format!("{t}/keys"), Some(body), Show::Object)
                }
                Keys::List { page } => req(
                    M::GET,
                    format!("{t}/keys{}", query(&page.pairs())),
                    None,
                    Show::Table(KEY_COLUMNS),
                ),
                Keys::Delete { id } => {
                    req(M::DELETE, format!("{t}/keys/{}", seg(id)), None, Show::Done)
                }
            },
            Client::Jobs(j) => match j {
                Jobs::Create {
                    kind,
                    subscription,
                    since,
                    until,
                    only_failed,
                    before,
                    dry_run,
                } => {
                    let mut body = json!({"kind": kind, "subscription_id": subscription});
                    for (name, value) in [("since", since), ("until", until), ("before", before)] {
                        if let Some(v) = value {
                            body[name] = json!(v);
                        }
                    }
                    if *only_failed {
                        body["only_failed"] = json!(true);
                    }
                    if *dry_run {
                        body["dry_run"] = json!(true);
                    }
                    req(M::POST, format!("{t}/jobs"), Some(body), Show::Object)
                }
                Jobs::List { page } => req(
                    M::GET,
                    format!("{t}/jobs{}", query(&page.pairs())),
                    None,
                    Show::Table(JOB_COLUMNS),
                ),
                Jobs::Get { id } => {
                    req(M::GET, format!("{t}/jobs/{}", seg(id)), None, Show::Object)
                }
                Jobs::Cancel { id } => req(
                    M::DELETE,
                    format!("{t}/jobs/{}", seg(id)),
                    None,
                    Show::Object,
                ),
            },
            Client::Rules(r) => match r {
                Rules::Create { body } => {
                    let body = super::client::read_json(body)?;
                    req(M::POST, format!("{t}/rules"), Some(body), Show::Object)
                }
                Rules::List { page } => req(
                    M::GET,
                    format!("{t}/rules{}", query(&page.pairs())),
                    None,
                    Show::Table(RULE_COLUMNS),
                ),
                Rules::Get { id } => {
                    req(M::GET, format!("{t}/rules/{}", seg(id)), None, Show::Object)
                }
                Rules::Update { id, body } => {
                    let body = super::client::read_json(body)?;
                    let path = format!("{t}/rules/{}", seg(id));
                    req(M::PATCH, path, Some(body), Show::Object)
                }
                Rules::Delete { id } => req(
                    M::DELETE,
                    format!("{t}/rules/{}", seg(id)),
                    None,
                    Show::Done,
                ),
            },
        }))
    }
}

fn filter_pairs(f: &EventFilter) -> Vec<(&'static str, Option<String>)> {
    vec![
        ("category", f.category.map(|c| c.to_string())),
        ("code", f.code.map(|c| c.to_string())),
        ("username", f.username.clone()),
    ]
}

/// Runs a client command; the process's exit code: 0, or 1 when the API refused or did not
/// answer (what it said is printed on stderr).
pub async fn execute(command: Client, global: Global, key: String) -> anyhow::Result<i32> {
    let api = Api::new(&global.server, &key);
    let outcome = match command.request(&global.tenant)? {
        Some(request) => run(&api, request, global.json).await,
        None => {
            let Client::Events(Events::Tail { filter, after }) = &command else {
                unreachable!("only events tail streams");
            };
            let mut pairs = filter_pairs(filter);
            pairs.push(("after", after.map(|a| a.to_string())));
            let path = format!(
                "/v1/tenants/{}/events/stream{}",
                seg(&global.tenant),
                query(&pairs)
            );
            tail(&api, &path, global.json).await
        }
    };
    match outcome {
        Ok(()) => Ok(0),
        Err(failure) => {
            eprintln!("error: {failure}");
            if let Failure::Api(_, problem) = &failure
                && global.json
            {
                println!(
                    "{}",
                    serde_json::to_string_pretty(problem).unwrap_or_default()
                );
            }
            Ok(1)
        }
    }
}
