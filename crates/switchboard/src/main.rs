//! The `switchboard` binary: flags → config → telemetry → run.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Args, Parser, Subcommand};
use switchboard::cli::commands;
use switchboard::config::{Config, Overrides};

/// mimalloc: the server allocates many small, short-lived buffers across threads (requests,
/// JSON, deliveries); the bench spent about a sixth of its time in the system allocator.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(name = "switchboard", version, about = "Webhooks for contact centers")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the service: the API and the dispatcher (or one of them, with --role).
    Serve(ConfigArgs),
    /// Print the effective configuration, secrets masked.
    Config(ConfigArgs),
    /// Apply the database migrations and exit (`serve` also applies them at start).
    Migrate(ConfigArgs),
    /// Copy the embedded database to FILE while the server runs (checked, then renamed).
    Backup(BackupArgs),
    /// Put a backup in place of the embedded database (the server stopped).
    Restore(RestoreArgs),
    /// Copy the embedded deployment into an empty PostgreSQL database (the server stopped).
    Copy(CopyArgs),
    /// Secrets at rest: re-encrypt them under a new key (the server stopped)
    Secrets {
        #[command(subcommand)]
        command: SecretsCommand,
    },
    /// Run a local webhook receiver that verifies signatures and prints deliveries.
    Listen(ListenArgs),
    /// End-to-end benchmark: a server (or --url), a receiver on loopback, events, figures.
    Bench(BenchArgs),
    /// Print the OpenAPI 3.1 document the server serves at /openapi.json.
    Openapi,
    /// Post the events of simulated agents living their shifts, at a target rate.
    Simulate(SimulateArgs),
    /// Post, list, get and follow events
    Events {
        #[command(subcommand)]
        command: commands::Events,
        #[command(flatten)]
        global: commands::Global,
    },
    /// Manage subscriptions
    Subscriptions {
        #[command(subcommand)]
        command: commands::Subscriptions,
        #[command(flatten)]
        global: commands::Global,
    },
    /// List, get and retry deliveries
    Deliveries {
        #[command(subcommand)]
        command: commands::Deliveries,
        #[command(flatten)]
        global: commands::Global,
    },
    /// The live state of agents
    Agents {
        #[command(subcommand)]
        command: commands::Agents,
        #[command(flatten)]
        global: commands::Global,
    },
    /// Manage tenants (admin key)
    Tenants {
        #[command(subcommand)]
        command: commands::Tenants,
        #[command(flatten)]
        global: commands::Global,
    },
    /// Manage a tenant's API keys
    Keys {
        #[command(subcommand)]
        command: commands::Keys,
        #[command(flatten)]
        global: commands::Global,
    },
    /// Long work, tracked and cancellable: replays of any window, cancels of pending deliveries
    Jobs {
        #[command(subcommand)]
        command: commands::Jobs,
        #[command(flatten)]
        global: commands::Global,
    },
    /// Rules that raise derived events (Category 5) when agents or groups stay in a state
    Rules {
        #[command(subcommand)]
        command: commands::Rules,
        #[command(flatten)]
        global: commands::Global,
    },
}

#[derive(Args)]
struct SimulateArgs {
    /// The server to post to
    #[arg(long, env = "SWITCHBOARD_URL", default_value = "http://127.0.0.1:8080")]
    server: String,
    /// An API key that may publish to the tenant [default: ./switchboard-data/admin.key]
    #[arg(long, env = "SWITCHBOARD_KEY")]
    key: Option<String>,
    /// The tenant to post to
    #[arg(long, default_value = "default")]
    tenant: String,
    /// Agents on the floor
    #[arg(long, default_value_t = 20)]
    agents: usize,
    /// Events per second
    #[arg(long, default_value_t = 20, value_parser = clap::value_parser!(u32).range(1..=100_000))]
    rate: u32,
    /// Teams: every event carries the agent's Team (Sales, Support, Billing, …), for the
    /// catalog's [agents] group_fields = ["Team"]; 0: no Team
    #[arg(long, default_value_t = 0, value_parser = clap::value_parser!(u64).range(0..=1000))]
    teams: u64,
    /// Hours each agent works a day, the agents' shifts spread around the clock: off shift an
    /// agent finishes its work item, signs out and sends nothing; 0: everyone around the clock
    #[arg(long, default_value_t = 0, value_parser = clap::value_parser!(u32).range(0..=24))]
    shift_hours: u32,
    /// Seconds of shift; then every agent finishes its work item and signs out
    #[arg(long, default_value_t = 60)]
    duration: u64,
    /// Makes the run reproducible (with --start): the same events, Ids included [default: random]
    #[arg(long)]
    seed: Option<u64>,
    /// The first event's CreationDateUtc (yyyyMMddHHmmss, UTC) [default: now]
    #[arg(long)]
    start: Option<String>,
    /// Write the events as NDJSON on stdout instead of posting them
    #[arg(long)]
    dry_run: bool,
}

#[derive(Args)]
struct BenchArgs {
    /// Target a running server instead of starting one (it must allow loopback receivers: --dev);
    /// the nodes of one cluster: their URLs separated by commas, the clients spread over them
    #[arg(long)]
    url: Option<String>,
    /// The admin key of the server given with --url
    #[arg(long)]
    key: Option<String>,
    /// Events to send
    #[arg(long, default_value_t = 20_000)]
    events: usize,
    /// Concurrent clients
    #[arg(long, default_value_t = 64)]
    concurrency: usize,
    /// Events per request
    #[arg(long, default_value_t = 1)]
    batch: usize,
    /// Subscriptions, each receiving every event; 0 measures ingest alone
    #[arg(long, default_value_t = 1)]
    subscriptions: usize,
    /// Open loop: events per second, latency measured from the scheduled send time
    #[arg(long)]
    rate: Option<u64>,
    /// PostgreSQL for the server this command starts: the run gets a database of its own on
    /// that server, dropped at its end (empty: SQLite in a temporary directory)
    #[arg(long, default_value = "")]
    database_url: String,
    /// Servers started in this process on that PostgreSQL database, the clients split evenly
    /// over them
    #[arg(long, default_value_t = 1)]
    nodes: usize,
    /// Tenants the events are spread over (default, bench-1, …), each with --subscriptions
    /// subscriptions and a publish key of its own; each client posts to one of them
    #[arg(long, value_name = "N", default_value_t = 1)]
    tenants: usize,
    /// With several nodes (--nodes, or --url with several): each tenant posted to on one node
    /// only, as behind a load balancer that routes by tenant
    #[arg(long)]
    tenants_by_node: bool,
    /// One JSON object on stdout instead of the summary
    #[arg(long)]
    json: bool,
    /// Backlog run instead: leave this many deliveries pending with the receiver down, measure
    /// the server's memory, SIGKILL it, bring the receiver up, and time the restart to the
    /// first delivery (the server runs as a child process on SQLite)
    #[arg(long, value_name = "N")]
    pending: Option<usize>,
    /// Pull subscriptions instead: one consumer reading --events stored events 1,000 at a time,
    /// the long poll's POST-to-consumer latency, and ingest with 10 pull subscriptions against
    /// 10 push ones (in-process servers; --database-url for PostgreSQL)
    #[arg(long, conflicts_with_all = ["pending", "url"])]
    pull: bool,
    /// A destination other than HTTP instead: `nats` (a stream of the run's own on NATS
    /// JetStream) or `amqp` (an exchange and queue of its own on RabbitMQ) gets --events events
    /// (in-process server; --database-url for PostgreSQL)
    #[arg(long, value_name = "TYPE", conflicts_with_all = ["pending", "url", "pull"])]
    destination: Option<String>,
    /// With --destination: the broker [default: nats://127.0.0.1:4222 or
    /// amqp://guest:guest@127.0.0.1:5672/%2f]
    #[arg(long)]
    broker_url: Option<String>,
    /// With --pending: seconds the server keeps failing attempts before the kill
    #[arg(long, default_value_t = 5)]
    down_secs: u64,
    /// With --pending: seconds deliveries are counted after the restart
    #[arg(long, default_value_t = 5)]
    after_secs: u64,
    /// First store this many events, then run with a one-second retention: the purge of all
    /// of them runs alongside the measured load (in-process server only)
    #[arg(long, value_name = "N", default_value_t = 0)]
    expired: usize,
    /// Consumers of the events stream, each receiving every event (reports ingest→stream)
    #[arg(long, value_name = "N", default_value_t = 0)]
    streams: usize,
    /// Consumers of the counts stream by Team, opened before the load (reports ingest→counts;
    /// the events then carry a Team and move each agent through four activities)
    #[arg(long, value_name = "N", default_value_t = 0)]
    counts_streams: usize,
    /// Rules made before the load (each a timer per matching agent, none firing; the events
    /// then move each agent through four activities)
    #[arg(long, value_name = "N", default_value_t = 0)]
    rules: usize,
    /// With --rules: make them disabled (the same events, nothing judged: the baseline)
    #[arg(long, requires = "rules")]
    rules_disabled: bool,
    /// Distinct agents the events come from (`GET …/agents` is timed with them at the end)
    #[arg(long, value_name = "N", default_value_t = 500)]
    agents: usize,
    /// Batched delivery: each subscription gets up to N events per request (1 to 1000)
    #[arg(long, value_name = "N")]
    delivery_batch: Option<u32>,
    /// Store every event first on a node that does not deliver, then time the backlog's
    /// drain: the delivery path alone (in-process server only)
    #[arg(long)]
    backlog: bool,
    /// How the subscriptions call the bench's receiver: none, bearer, or oauth2 (a token
    /// endpoint on the receiver)
    #[arg(long, value_enum, default_value_t = switchboard::cli::bench::ReceiverAuth::None)]
    receiver_auth: switchboard::cli::bench::ReceiverAuth,
    /// Export traces (DESIGN §21) to an OTLP/HTTP endpoint on the bench's receiver, sampling
    /// this ratio of them (0 to 1); in-process server only. Without it nothing is exported
    #[arg(long, value_name = "RATIO")]
    otlp_ratio: Option<f64>,
    /// Every subscription redacts three fields (DESIGN §19): PhoneNo masked, Username hashed,
    /// SessionId dropped
    #[arg(long)]
    redact: bool,
}

#[derive(Args)]
struct BackupArgs {
    /// The file to write
    #[arg(long, value_name = "FILE")]
    to: PathBuf,
    /// Replace FILE if it exists
    #[arg(long)]
    force: bool,
    #[command(flatten)]
    config: ConfigArgs,
}

#[derive(Args)]
struct RestoreArgs {
    /// The backup to restore
    #[arg(long, value_name = "FILE")]
    from: PathBuf,
    #[command(flatten)]
    config: ConfigArgs,
}

#[derive(Args)]
struct CopyArgs {
    /// The PostgreSQL database to copy into (postgres://…); it must be empty
    #[arg(long, value_name = "URL")]
    to: String,
    /// Empty the target's Switchboard tables first (to copy again after a failed copy)
    #[arg(long)]
    force_empty: bool,
    #[command(flatten)]
    config: ConfigArgs,
}

#[derive(Subcommand)]
enum SecretsCommand {
    /// Re-encrypt every stored secret under the key in FILE (32 bytes, raw or 64 hex
    /// characters); the current key comes from the configuration. Stop the server (every node)
    /// first; then start it with the new key. Hashes of redacted fields do not change.
    RotateKey {
        /// The new key's file
        #[arg(long, value_name = "FILE")]
        new_key_file: std::path::PathBuf,
        #[command(flatten)]
        config: ConfigArgs,
    },
}

/// The configuration's database, opened (and migrated) by a tool, its secrets with `key`.
async fn open_store(
    config: &switchboard::config::Config,
    key: Option<switchboard::secrets::SecretKey>,
) -> anyhow::Result<switchboard::store::Store> {
    let options = switchboard::store::Options {
        secret_key: key,
        ..Default::default()
    };
    let path = config.sqlite_path();
    Ok(switchboard::store::Store::open_with(&config.database_url, &path, options).await?)
}

/// Where the operating guide says how to back up and restore PostgreSQL.
const PG_BACKUPS: &str = "the database is PostgreSQL: back it up with pg_dump or point-in-time recovery (docs/operating.md, \"Backups and restore\")";

#[derive(Args)]
struct ListenArgs {
    /// Address to listen on
    #[arg(long, default_value = "127.0.0.1:9000", value_name = "ADDR")]
    listen: std::net::SocketAddr,
    /// The subscription's signing secret (whsec_…), or for v1a its public key (whpk_…); bad
    /// signatures, and timestamps more than 5 minutes off, are then answered 401
    #[arg(long, env = "SWITCHBOARD_LISTEN_SECRET", value_name = "SECRET")]
    secret: Option<String>,
    /// Also forward each (verified) delivery, body and headers, to this local app, and answer
    /// with its answer
    #[arg(long, value_name = "URL")]
    forward: Option<reqwest::Url>,
}

/// Every flag also has an environment variable SWITCHBOARD_<NAME> and a key in the config file.
#[derive(Args)]
struct ConfigArgs {
    /// Address to listen on [env: SWITCHBOARD_LISTEN] [default: 127.0.0.1:8080]
    #[arg(long, value_name = "ADDR")]
    listen: Option<String>,
    /// Data directory [env: SWITCHBOARD_DATA_DIR] [default: ./switchboard-data]
    #[arg(long, value_name = "DIR")]
    data_dir: Option<PathBuf>,
    /// Database URL; empty for the embedded SQLite file in the data dir [env: SWITCHBOARD_DATABASE_URL]
    #[arg(long, value_name = "URL")]
    database_url: Option<String>,
    /// Local development: allow receivers on loopback [env: SWITCHBOARD_DEV]
    #[arg(long)]
    dev: bool,
    /// What this node does [env: SWITCHBOARD_ROLE] [default: all]
    #[arg(long, value_enum)]
    role: Option<switchboard::config::Role>,
    /// Config file [default: ./switchboard.toml if it exists]
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
}

impl ConfigArgs {
    fn load(self) -> anyhow::Result<Config> {
        Config::load(&Overrides {
            config_file: self.config,
            listen: self.listen,
            data_dir: self.data_dir,
            database_url: self.database_url,
            dev: self.dev,
            role: self.role,
            no_default_file: false,
        })
    }
}

#[tokio::main]
async fn main() -> ExitCode {
    match run(Cli::parse().command).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => report(&e),
    }
}

/// An error as operators read it (DESIGN §15): one line on stderr whatever `RUST_BACKTRACE`
/// says; the whole chain (and, with `RUST_BACKTRACE=1` too, where it arose) only with
/// `SWITCHBOARD_BACKTRACE=1`. Exit status 3 for a schema newer than this binary allows, else 1.
fn report(e: &anyhow::Error) -> ExitCode {
    if std::env::var_os("SWITCHBOARD_BACKTRACE").is_some_and(|v| v == "1") {
        eprintln!("error: {e:?}");
    } else {
        // The causes, outermost first, each left out when the one before already says it
        // (drivers often repeat their source's message in their own).
        let mut line = String::new();
        for cause in e.chain().map(|c| c.to_string()) {
            if !line.contains(&cause) {
                if !line.is_empty() {
                    line.push_str(": ");
                }
                line.push_str(&cause);
            }
        }
        eprintln!(
            "error: {}",
            line.split_whitespace().collect::<Vec<_>>().join(" ")
        );
    }
    let schema = e.chain().any(|c| {
        matches!(
            c.downcast_ref::<switchboard::store::StoreError>(),
            Some(switchboard::store::StoreError::SchemaTooNew { .. })
        )
    });
    ExitCode::from(if schema { 3 } else { 1 })
}

async fn run(command: Command) -> anyhow::Result<()> {
    match command {
        Command::Config(args) => {
            print!("{}", args.load()?.to_masked_toml());
            Ok(())
        }
        Command::Simulate(a) => {
            let start = a
                .start
                .as_deref()
                .map(switchboard::event::Timestamp::parse)
                .transpose()
                .map_err(|m| usage(&format!("--start {m}")))?;
            let key = match a.dry_run {
                true => a.key.unwrap_or_default(),
                false => key_or_local(a.key)?,
            };
            let seed = a.seed.unwrap_or_else(|| {
                let mut b = [0u8; 8];
                getrandom::fill(&mut b)
                    .map(|()| u64::from_le_bytes(b))
                    .unwrap_or(1)
            });
            let opts = switchboard::cli::simulate::Options {
                server: a.server,
                key,
                tenant: a.tenant,
                agents: a.agents,
                rate: a.rate,
                duration_secs: a.duration,
                seed,
                start,
                dry_run: a.dry_run,
                progress: !a.dry_run,
                teams: a.teams as usize,
                shift_hours: a.shift_hours,
            };
            let mut stdout = std::io::stdout().lock();
            let report = switchboard::cli::simulate::run(opts, &mut stdout).await?;
            if report.refused > 0 {
                anyhow::bail!("{} events were refused", report.refused);
            }
            Ok(())
        }
        Command::Events { command, global } => {
            client(commands::Client::Events(command), global).await
        }
        Command::Subscriptions { command, global } => {
            client(commands::Client::Subscriptions(command), global).await
        }
        Command::Deliveries { command, global } => {
            client(commands::Client::Deliveries(command), global).await
        }
        Command::Agents { command, global } => {
            client(commands::Client::Agents(command), global).await
        }
        Command::Tenants { command, global } => {
            client(commands::Client::Tenants(command), global).await
        }
        Command::Keys { command, global } => client(commands::Client::Keys(command), global).await,
        Command::Jobs { command, global } => client(commands::Client::Jobs(command), global).await,
        Command::Rules { command, global } => {
            client(commands::Client::Rules(command), global).await
        }
        Command::Openapi => {
            print!("{}", switchboard::api::doc::document());
            Ok(())
        }
        Command::Secrets {
            command:
                SecretsCommand::RotateKey {
                    new_key_file,
                    config,
                },
        } => {
            let config = config.load()?;
            switchboard::telemetry::init(&config)?;
            let new = switchboard::secrets::SecretKey::from_file(&new_key_file)
                .map_err(|e| anyhow::anyhow!("--new-key-file: {e:#}"))?;
            let current = switchboard::secrets::SecretKey::configured(
                &config.secret_key,
                &config.secret_key_file,
            )?;
            // The embedded database: nobody may hold it meanwhile.
            let _held = match config.is_postgres() {
                true => None,
                false => Some(switchboard::store::embedded::hold(&config.data_dir)?),
            };
            let store = open_store(&config, current).await?;
            let done = store.rotate_secret_key(&new).await;
            store.close().await;
            done?;
            eprintln!(
                "the secrets of {} are encrypted with the new key: start the server with it (secret_key_file = {})",
                config.database_description(),
                new_key_file.display()
            );
            Ok(())
        }
        Command::Migrate(args) => {
            let config = args.load()?;
            switchboard::telemetry::init(&config)?;
            std::fs::create_dir_all(&config.data_dir)?;
            let key = switchboard::secrets::SecretKey::configured(
                &config.secret_key,
                &config.secret_key_file,
            )?;
            let store = open_store(&config, key).await?;
            store.close().await;
            println!("migrated {}", config.database_description());
            Ok(())
        }
        Command::Backup(a) => {
            let config = a.config.load()?;
            if config.is_postgres() {
                anyhow::bail!("backup: {PG_BACKUPS}");
            }
            let db = config.sqlite_path();
            eprintln!("backing up {} to {}", db.display(), a.to.display());
            let to = a.to.clone();
            let done = tokio::task::spawn_blocking(move || {
                switchboard::store::embedded::backup(&db, &to, a.force, |written, of| {
                    eprintln!("  {} of about {} MiB written", written >> 20, of >> 20);
                })
            })
            .await??;
            eprintln!(
                "backed up: {} events, schema version {}, {} bytes, integrity_check ok",
                done.events, done.schema, done.bytes
            );
            println!("{}", done.path.display());
            Ok(())
        }
        Command::Restore(a) => {
            let config = a.config.load()?;
            if config.is_postgres() {
                anyhow::bail!("restore: {PG_BACKUPS}");
            }
            let now = switchboard::event::Timestamp::now();
            let (done, aside) = switchboard::store::embedded::restore(
                &config.data_dir,
                &config.sqlite_path(),
                &a.from,
                &now.to_string(),
            )?;
            if let Some(aside) = aside {
                eprintln!("the database it replaces is kept as {}", aside.display());
            }
            eprintln!(
                "restored {} ({} events, schema version {}); the admin key is unchanged; start the server",
                done.path.display(),
                done.events,
                done.schema
            );
            Ok(())
        }
        Command::Copy(a) => {
            let config = a.config.load()?;
            if config.is_postgres() {
                anyhow::bail!(
                    "copy reads the embedded database, and this configuration's database is PostgreSQL already"
                );
            }
            if !(a.to.starts_with("postgres://") || a.to.starts_with("postgresql://")) {
                anyhow::bail!("--to must be a postgres:// URL");
            }
            eprintln!(
                "copying {} to {}",
                config.sqlite_path().display(),
                switchboard::config::mask_password(&a.to)
            );
            let report = switchboard::store::copy::run(
                &config.data_dir,
                &config.sqlite_path(),
                &a.to,
                a.force_empty,
                |line| eprintln!("{line}"),
            )
            .await?;
            let events = report.rows("events");
            eprintln!(
                "copied in {:.1} s ({:.0} events/s); now serve with database_url = the target",
                report.seconds,
                events as f64 / report.seconds.max(0.001)
            );
            Ok(())
        }
        Command::Bench(a) if a.destination.is_some() => {
            use switchboard::cli::bench::destination::{self as dest, Kind};
            let (kind, default_url) = match a.destination.as_deref() {
                Some("nats") => (Kind::Nats, "nats://127.0.0.1:4222"),
                Some("amqp") => (Kind::Amqp, "amqp://guest:guest@127.0.0.1:5672/%2f"),
                Some("http") => {
                    anyhow::bail!("--destination http is the default run: leave it out")
                }
                Some(other) => anyhow::bail!("--destination {other}: nats or amqp"),
                None => unreachable!(),
            };
            let report = dest::run(dest::Options {
                kind,
                events: a.events,
                broker_url: a.broker_url.unwrap_or_else(|| default_url.to_owned()),
                database_url: a.database_url,
                in_flight: 64,
            })
            .await?;
            print_report(a.json, &report, report.text())
        }
        Command::Bench(a) if a.pull => {
            use switchboard::cli::bench::pull;
            let report = pull::run(pull::Options {
                events: a.events,
                database_url: a.database_url,
                polled: 1_000,
                ingest_events: 20_000,
                concurrency: a.concurrency,
            })
            .await?;
            print_report(a.json, &report, report.text())
        }
        Command::Bench(a) => match a.pending {
            // The backlog run.
            Some(pending) => {
                let report = switchboard::cli::backlog::run(switchboard::cli::backlog::Options {
                    pending,
                    down_secs: a.down_secs,
                    after_secs: a.after_secs,
                    progress: !a.json,
                })
                .await?;
                print_report(a.json, &report, report.text())
            }
            None => {
                let report = switchboard::cli::bench::run(switchboard::cli::bench::Options {
                    url: a.url,
                    key: a.key,
                    events: a.events,
                    concurrency: a.concurrency,
                    batch: a.batch,
                    subscriptions: a.subscriptions,
                    rate: a.rate,
                    database_url: a.database_url,
                    progress: !a.json,
                    expired: a.expired,
                    streams: a.streams,
                    counts_streams: a.counts_streams,
                    rules: a.rules,
                    rules_disabled: a.rules_disabled,
                    agents: a.agents,
                    nodes: a.nodes,
                    tenants: a.tenants,
                    tenants_by_node: a.tenants_by_node,
                    delivery_batch: a.delivery_batch,
                    backlog: a.backlog,
                    receiver_auth: a.receiver_auth,
                    otlp_ratio: a.otlp_ratio,
                    redact: a.redact,
                })
                .await?;
                print_report(a.json, &report, report.text())
            }
        },
        Command::Listen(args) => {
            let secret = args
                .secret
                .as_deref()
                .map(switchboard::delivery::signing::Verifier::parse)
                .transpose()
                .map_err(|e| anyhow::anyhow!("--secret {e}"))?;
            switchboard::cli::listen::run(args.listen, secret, args.forward, shutdown_signal())
                .await
        }
        Command::Serve(args) => {
            let config = args.load()?;
            switchboard::telemetry::init(&config)?;
            let listener = tokio::net::TcpListener::bind(config.listen)
                .await
                .with_context(|| format!("binding {}", config.listen))?;
            // Scripts and tests read this line to learn the port when listening on port 0. It
            // comes once the store is open: a node that cannot open its database never says it.
            let serving = |addr| println!("switchboard listening on http://{addr}");
            let served = switchboard::run_with(config, listener, shutdown_signal(), serving).await;
            switchboard::otel::shutdown();
            served
        }
    }
}

/// A bench report: one JSON object, or the human-readable `text`.
fn print_report(json: bool, report: &impl serde::Serialize, text: String) -> anyhow::Result<()> {
    if json {
        println!("{}", serde_json::to_string(report)?);
    } else {
        println!("{text}");
    }
    Ok(())
}

/// Resolves on SIGINT or SIGTERM.
async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(s) => s,
        Err(e) => {
            tracing::warn!(error = %e, "cannot watch SIGTERM; only Ctrl-C stops the server");
            let _ = ctrl_c.await;
            return;
        }
    };
    tokio::select! {
        _ = ctrl_c => {},
        _ = term.recv() => {},
    }
    tracing::info!("shutting down");
}

/// The key given, else the local server's admin key.
fn key_or_local(key: Option<String>) -> anyhow::Result<String> {
    match key {
        Some(k) => Ok(k),
        None => std::fs::read_to_string("switchboard-data/admin.key")
            .map(|k| k.trim().to_string())
            .map_err(|_| {
                usage(
                    "--key (or SWITCHBOARD_KEY) is required: no ./switchboard-data/admin.key here",
                )
            }),
    }
}

/// Runs a client command and exits with its code (0, or 1 when the API refused).
async fn client(command: commands::Client, global: commands::Global) -> anyhow::Result<()> {
    let key = key_or_local(global.key.clone())?;
    let code = commands::execute(command, global, key).await?;
    if code != 0 {
        std::process::exit(code);
    }
    Ok(())
}

/// A usage error found after parsing: printed as clap prints its own, exit code 2.
fn usage(msg: &str) -> anyhow::Error {
    use clap::CommandFactory;
    Cli::command()
        .error(clap::error::ErrorKind::InvalidValue, msg)
        .exit()
}
