//! The one typed configuration, layered: flags > `SWITCHBOARD_*` env > file > compiled-in
//! defaults (`config.default.toml`, which documents every key).
//!
//! Layering works on TOML tables before deserializing, so every source speaks the same key names
//! and an unknown key anywhere is an error at start rather than a silent no-op.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use serde::{Deserialize, Serialize};

/// The documented defaults, compiled in so they cannot drift from the file users read.
pub const DEFAULTS: &str = include_str!("../../../config.default.toml");

const ENV_PREFIX: &str = "SWITCHBOARD_";

#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    pub listen: SocketAddr,
    pub data_dir: PathBuf,
    /// Empty: the embedded SQLite file in `data_dir`.
    pub database_url: String,
    /// How long a node waits for an unreachable PostgreSQL at start, in seconds.
    pub database_connect_timeout_secs: u64,
    pub dev: bool,
    pub role: Role,
    pub allow_networks: Vec<ipnet::IpNet>,
    /// `http://host:port` of the HTTP proxy every receiver and token request goes through
    /// (DESIGN §20); empty: none.
    pub egress_proxy: String,
    pub delivery_timeout_secs: u64,
    /// A subscription whose attempts all failed this long (with at least 10) is disabled.
    pub auto_disable_after_secs: u64,
    /// Events, deliveries and attempts older than this are purged (pending ones stay).
    pub retention_secs: u64,
    /// The operator's catalog file (TOML, DESIGN §12); empty: the built-in catalog only.
    pub catalog_file: String,
    /// Empty: read or generate `<data_dir>/admin.key`.
    pub admin_key: String,
    pub max_body_bytes: usize,
    pub log_format: LogFormat,
    pub log_level: String,
    /// The OTLP/HTTP collector's base URL (DESIGN §21); empty: the `OTEL_*` variables decide.
    pub otlp_endpoint: String,
    /// Empty: `/metrics` is public; else it needs this key (or the admin key) as a bearer.
    pub metrics_key: String,
    /// Secrets at rest (DESIGN §19): the file holding the key (32 bytes, raw or hex).
    pub secret_key_file: String,
    /// The same key as 64 hex characters (`SWITCHBOARD_SECRET_KEY`); not with the file.
    pub secret_key: String,
    /// Streams (every SSE route) one API key may hold open at once.
    pub max_streams_per_key: u32,
    /// Streams one tenant's keys may hold open at once, together.
    pub max_streams_per_tenant: u32,
    /// Streams the server holds open at once; 0: half of the connections (never more).
    pub max_streams: u32,
    /// Unread data one stream may hold, in bytes (a single larger event is still sent alone).
    pub stream_buffer_bytes: u64,
    /// A stream whose consumer reads nothing this long while data waits is closed.
    pub stream_idle_secs: u64,
    /// How long a connection may take to send its request headers.
    pub header_read_timeout_secs: u64,
    /// Connections served at once; 0: half the file-descriptor limit. More wait to be accepted.
    pub max_connections: u32,
    /// Subscriptions one tenant may have.
    pub max_subscriptions_per_tenant: u32,
    /// Jobs (long replays, cancels) one tenant may have queued or running at once.
    pub max_jobs_per_tenant: u32,
    /// Rules one tenant may have (DESIGN §18).
    pub max_rules_per_tenant: u32,
    /// Portal links one tenant may hold unexpired at once (DESIGN §22).
    pub max_portal_links_per_tenant: u32,
    /// Origins that may frame `/portal` (DESIGN §22); empty: only this server's own pages.
    pub portal_frame_ancestors: Vec<String>,
    /// This server's public base URL (`https://hooks.example.com`, no path), for the portal links' `url`;
    /// empty: the request's `Host`, over `http` unless `X-Forwarded-Proto` says `https`.
    pub public_url: String,
    /// Most events of one agent a rebuild (`as_of`, a timeline) folds.
    pub max_history_events: u64,
    /// Expensive reads (log pages, agent rebuilds) one tenant runs at once on this node; more
    /// wait their turn. 0: no limit.
    pub max_reads_per_tenant: u32,
    /// Told to stop, the node answers `/readyz` 503 this long while still serving (0 with
    /// `--dev`).
    pub drain_secs: u64,
}

/// What a node does (DESIGN §6).
#[derive(Clone, Copy, Debug, Deserialize, Serialize, PartialEq, Eq, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// The HTTP API only.
    Api,
    /// The dispatcher only (and /healthz, /readyz).
    Worker,
    /// Both.
    All,
}

impl Role {
    pub fn serves_api(self) -> bool {
        matches!(self, Role::Api | Role::All)
    }

    pub fn delivers(self) -> bool {
        matches!(self, Role::Worker | Role::All)
    }
}

#[derive(Clone, Copy, Debug, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Text,
    Json,
}

/// Values given on the command line; `None` leaves the key to the lower layers.
#[derive(Clone, Debug, Default)]
pub struct Overrides {
    pub config_file: Option<PathBuf>,
    pub listen: Option<String>,
    pub data_dir: Option<PathBuf>,
    pub database_url: Option<String>,
    pub dev: bool,
    pub role: Option<Role>,
    /// Do not look for `./switchboard.toml` (tests and tools with a configuration of their own).
    pub no_default_file: bool,
}

impl Config {
    /// Builds the effective configuration from every layer, reading the real environment.
    pub fn load(flags: &Overrides) -> anyhow::Result<Self> {
        Self::load_from(flags, std::env::vars())
    }

    /// As [`Config::load`], with the environment given (for tests).
    pub fn load_from(
        flags: &Overrides,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> anyhow::Result<Self> {
        let mut table: toml::Table = DEFAULTS.parse().context("compiled-in defaults")?;

        let file = match &flags.config_file {
            Some(path) => Some(path.clone()),
            None if flags.no_default_file => None,
            None => Some(PathBuf::from("switchboard.toml")).filter(|p| p.exists()),
        };
        if let Some(path) = file {
            let text = std::fs::read_to_string(&path)
                .with_context(|| format!("reading config file {}", path.display()))?;
            let overlay: toml::Table = text
                .parse()
                .with_context(|| format!("parsing config file {}", path.display()))?;
            merge(
                &mut table,
                overlay,
                &format!("config file {}", path.display()),
            )?;
        }

        let mut from_env = toml::Table::new();
        for (name, value) in env {
            let Some(key) = name.strip_prefix(ENV_PREFIX) else {
                continue;
            };
            let key = key.to_ascii_lowercase();
            // Variables that are not config keys (SWITCHBOARD_TEST_*, …) belong to others.
            let Some(default) = table.get(&key) else {
                continue;
            };
            let parsed = typed_like(default, &value)
                .with_context(|| format!("environment variable {name}={value:?}"))?;
            from_env.insert(key, parsed);
        }
        merge(&mut table, from_env, "environment")?;

        let mut from_flags = toml::Table::new();
        let mut set = |k: &str, v: toml::Value| {
            from_flags.insert(k.to_string(), v);
        };
        if let Some(v) = &flags.listen {
            set("listen", v.clone().into());
        }
        if let Some(v) = &flags.data_dir {
            set("data_dir", v.display().to_string().into());
        }
        if let Some(v) = &flags.database_url {
            set("database_url", v.clone().into());
        }
        if flags.dev {
            set("dev", true.into());
        }
        if let Some(role) = flags.role {
            let name = toml::Value::try_from(role).context("role")?;
            set("role", name);
        }
        merge(&mut table, from_flags, "flags")?;

        let config: Config = table.try_into().context("invalid configuration")?;
        config.validate()?;
        Ok(config)
    }

    fn validate(&self) -> anyhow::Result<()> {
        if self.max_body_bytes < 1024 {
            bail!(
                "max_body_bytes must be at least 1024, got {}",
                self.max_body_bytes
            );
        }
        if !(1..=300).contains(&self.delivery_timeout_secs) {
            bail!(
                "delivery_timeout_secs must be 1 to 300, got {}",
                self.delivery_timeout_secs
            );
        }
        if self.retention_secs == 0 {
            bail!("retention_secs must be at least 1");
        }
        if self.auto_disable_after_secs == 0 {
            bail!("auto_disable_after_secs must be at least 1");
        }
        if self.drain_secs > 3600 {
            bail!("drain_secs must be at most 3600, got {}", self.drain_secs);
        }
        if self.database_connect_timeout_secs > 86_400 {
            bail!(
                "database_connect_timeout_secs must be at most 86400 (a day), got {}",
                self.database_connect_timeout_secs
            );
        }
        let positive = [
            ("max_streams_per_key", u64::from(self.max_streams_per_key)),
            (
                "max_streams_per_tenant",
                u64::from(self.max_streams_per_tenant),
            ),
            ("stream_buffer_bytes", self.stream_buffer_bytes),
            ("stream_idle_secs", self.stream_idle_secs),
            ("header_read_timeout_secs", self.header_read_timeout_secs),
            (
                "max_subscriptions_per_tenant",
                u64::from(self.max_subscriptions_per_tenant),
            ),
            ("max_jobs_per_tenant", u64::from(self.max_jobs_per_tenant)),
            ("max_rules_per_tenant", u64::from(self.max_rules_per_tenant)),
            (
                "max_portal_links_per_tenant",
                u64::from(self.max_portal_links_per_tenant),
            ),
            ("max_history_events", self.max_history_events),
        ];
        if let Some((key, _)) = positive.iter().find(|(_, v)| *v == 0) {
            bail!("{key} must be at least 1");
        }
        crate::secrets::SecretKey::configured(&self.secret_key, &self.secret_key_file)?;
        if !self.metrics_key.is_empty() && self.metrics_key.len() < 16 {
            bail!("metrics_key must be at least 16 characters (or empty: /metrics public)");
        }
        for origin in &self.portal_frame_ancestors {
            if !valid_origin(origin) {
                bail!(
                    "portal_frame_ancestors: {origin:?} is not an origin (scheme://host[:port], no path)"
                );
            }
        }
        if !self.public_url.is_empty() {
            // The portal's page asks `/portal/…` and `/v1/…` of its own origin: no path prefix.
            let ok = reqwest::Url::parse(&self.public_url).is_ok_and(|u| {
                matches!(u.scheme(), "http" | "https")
                    && u.host().is_some()
                    && u.path() == "/"
                    && u.query().is_none()
                    && u.username().is_empty()
            });
            if !ok {
                bail!(
                    "public_url must be empty or http(s)://host[:port], got {:?}",
                    self.public_url
                );
            }
        }
        if !self.egress_proxy.is_empty() {
            let ok = reqwest::Url::parse(&self.egress_proxy).is_ok_and(|u| {
                u.scheme() == "http" && u.host().is_some() && matches!(u.path(), "" | "/")
            });
            if !ok {
                bail!(
                    "egress_proxy must be empty or http://host:port, got {}",
                    mask_password(&self.egress_proxy)
                );
            }
        }
        if !self.otlp_endpoint.is_empty() {
            let ok = reqwest::Url::parse(&self.otlp_endpoint)
                .is_ok_and(|u| matches!(u.scheme(), "http" | "https") && u.host().is_some());
            if !ok {
                bail!(
                    "otlp_endpoint must be empty or an http(s) URL, got {}",
                    mask_password(&self.otlp_endpoint)
                );
            }
        }
        let url = &self.database_url;
        let known = ["sqlite:", "postgres://", "postgresql://"];
        if !url.is_empty() && !known.iter().any(|p| url.starts_with(p)) {
            bail!(
                "database_url must be empty (embedded SQLite), \"sqlite://PATH\" or \"postgres://…\", got {}",
                mask_password(url)
            );
        }
        Ok(())
    }

    /// Where the embedded database lives, when it is the embedded one.
    pub fn sqlite_path(&self) -> PathBuf {
        match self.database_url.strip_prefix("sqlite:") {
            Some(rest) => PathBuf::from(rest.trim_start_matches("//")),
            None => self.data_dir.join("switchboard.db"),
        }
    }

    /// Whether the database is PostgreSQL (else the embedded SQLite file).
    pub fn is_postgres(&self) -> bool {
        self.database_url.starts_with("postgres")
    }

    /// The database in use, for logs: the SQLite path or the URL without its password.
    pub fn database_description(&self) -> String {
        if self.is_postgres() {
            mask_password(&self.database_url)
        } else {
            self.sqlite_path().display().to_string()
        }
    }

    pub fn admin_key_path(&self) -> PathBuf {
        self.data_dir.join("admin.key")
    }

    /// The effective configuration as TOML, secrets masked, for `switchboard config`.
    pub fn to_masked_toml(&self) -> String {
        let mut shown = self.clone();
        if !shown.admin_key.is_empty() {
            shown.admin_key = "********".into();
        }
        if !shown.metrics_key.is_empty() {
            shown.metrics_key = "********".into();
        }
        if !shown.secret_key.is_empty() {
            shown.secret_key = "********".into();
        }
        shown.database_url = mask_password(&shown.database_url);
        shown.egress_proxy = mask_password(&shown.egress_proxy);
        shown.otlp_endpoint = mask_password(&shown.otlp_endpoint);
        toml::to_string(&shown).unwrap_or_default()
    }

    /// A configuration for tests and tools: defaults, a data dir, loopback on port 0.
    pub fn for_data_dir(data_dir: &Path) -> Self {
        let flags = Overrides {
            data_dir: Some(data_dir.to_path_buf()),
            listen: Some("127.0.0.1:0".into()),
            no_default_file: true,
            ..Overrides::default()
        };
        Self::load_from(&flags, std::iter::empty()).expect("defaults are valid")
    }
}

/// `scheme://user:password@host/…?password=…` with the passwords masked: in the user info,
/// and in a `password` (or `sslpassword`) query parameter.
pub fn mask_password(url: &str) -> String {
    let (base, query) = match url.split_once('?') {
        Some((b, q)) => (b, Some(q)),
        None => (url, None),
    };
    let mut masked = match (base.split_once("://"), base.rfind('@')) {
        (Some((scheme, _)), Some(at)) => match base[scheme.len() + 3..at].split_once(':') {
            Some((user, _)) => format!("{scheme}://{user}:********{}", &base[at..]),
            None => base.to_string(),
        },
        _ => base.to_string(),
    };
    if let Some(query) = query {
        let params: Vec<String> = query
            .split('&')
            .map(|p| match p.split_once('=') {
                Some((k, _))
                    if k.eq_ignore_ascii_case("password")
                        || k.eq_ignore_ascii_case("sslpassword") =>
                {
                    format!("{k}=********")
                }
                _ => p.to_string(),
            })
            .collect();
        masked.push('?');
        masked.push_str(&params.join("&"));
    }
    masked
}

/// Lays `overlay` over `base`, refusing keys the defaults do not know.
fn merge(base: &mut toml::Table, overlay: toml::Table, source: &str) -> anyhow::Result<()> {
    for (key, value) in overlay {
        if !base.contains_key(&key) {
            let known: Vec<_> = base.keys().map(String::as_str).collect();
            bail!(
                "{source}: unknown key {key:?}; known keys: {}",
                known.join(", ")
            );
        }
        base.insert(key, value);
    }
    Ok(())
}

/// Reads an environment string as the TOML type the key has by default.
/// `scheme://host[:port]` and nothing more: what CSP's `frame-ancestors` compares with.
fn valid_origin(origin: &str) -> bool {
    reqwest::Url::parse(origin).is_ok_and(|u| {
        matches!(u.scheme(), "http" | "https")
            && u.host().is_some()
            && u.path() == "/"
            && !origin.ends_with('/')
            && u.query().is_none()
            && u.fragment().is_none()
            && u.username().is_empty()
    })
}

fn typed_like(default: &toml::Value, raw: &str) -> anyhow::Result<toml::Value> {
    Ok(match default {
        toml::Value::Boolean(_) => match raw {
            "1" | "true" | "yes" | "on" => true.into(),
            "0" | "false" | "no" | "off" | "" => false.into(),
            _ => bail!("expected true or false"),
        },
        toml::Value::Integer(_) => raw
            .trim()
            .parse::<i64>()
            .context("expected an integer")?
            .into(),
        // Lists are comma-separated.
        toml::Value::Array(_) => raw
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(|s| toml::Value::String(s.to_string()))
            .collect::<Vec<_>>()
            .into(),
        _ => raw.to_string().into(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn portal_origins_and_the_public_url_are_checked() {
        let load = |vars: &[(&str, &str)]| Config::load_from(&Overrides::default(), env(vars));
        let c = load(&[(
            "SWITCHBOARD_PORTAL_FRAME_ANCESTORS",
            "https://app.example.com, http://127.0.0.1:8081",
        )])
        .unwrap();
        assert_eq!(
            c.portal_frame_ancestors,
            ["https://app.example.com", "http://127.0.0.1:8081"]
        );
        for bad in [
            "app.example.com",
            "https://app.example.com/x",
            "https://a.com/",
            "*",
        ] {
            let e = load(&[("SWITCHBOARD_PORTAL_FRAME_ANCESTORS", bad)]).unwrap_err();
            assert!(
                format!("{e:#}").contains("portal_frame_ancestors"),
                "{bad}: {e:#}"
            );
        }
        assert!(load(&[("SWITCHBOARD_PUBLIC_URL", "https://hooks.example.com")]).is_ok());
        for bad in [
            "hooks.example.com",
            "https://hooks.example.com/prefix",
            "ftp://x",
        ] {
            let e = load(&[("SWITCHBOARD_PUBLIC_URL", bad)]).unwrap_err();
            assert!(format!("{e:#}").contains("public_url"), "{bad}: {e:#}");
        }
    }

    #[test]
    fn defaults_parse() {
        let c = Config::load_from(&Overrides::default(), env(&[])).unwrap();
        assert_eq!(c.listen.to_string(), "127.0.0.1:8080");
        assert_eq!(c.max_body_bytes, 1 << 20);
        assert_eq!(
            c.sqlite_path(),
            PathBuf::from("./switchboard-data/switchboard.db")
        );
        assert!(!c.dev);
    }

    #[test]
    fn precedence_flags_over_env_over_file() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("s.toml");
        std::fs::write(
            &file,
            "listen = \"127.0.0.1:1\"\nmax_body_bytes = 2048\ndev = true\n",
        )
        .unwrap();
        let mut flags = Overrides {
            config_file: Some(file),
            ..Overrides::default()
        };
        let e = env(&[
            ("SWITCHBOARD_LISTEN", "127.0.0.1:2"),
            ("SWITCHBOARD_ADMIN_KEY", "secret"),
            ("SWITCHBOARD_ALLOW_NETWORKS", "10.0.0.0/8, fd00::/8"),
            ("SWITCHBOARD_TEST_DATABASE_URL", "ignored"),
            ("OTHER", "x"),
        ]);
        let c = Config::load_from(&flags, e.clone()).unwrap();
        assert_eq!(c.listen.port(), 2, "env beats file");
        assert_eq!(c.max_body_bytes, 2048, "file beats defaults");
        assert!(c.dev);
        assert_eq!(c.admin_key, "secret");
        assert_eq!(c.allow_networks.len(), 2);
        assert!(c.to_masked_toml().contains("admin_key = \"********\""));
        flags.listen = Some("127.0.0.1:3".into());
        assert_eq!(
            Config::load_from(&flags, e).unwrap().listen.port(),
            3,
            "flag beats env"
        );
    }

    #[test]
    fn bad_values_are_refused_clearly() {
        let err = |flags: &Overrides, e: &[(&str, &str)]| {
            format!("{:#}", Config::load_from(flags, env(e)).unwrap_err())
        };
        let none = Overrides::default();
        assert!(err(&none, &[("SWITCHBOARD_DEV", "maybe")]).contains("SWITCHBOARD_DEV"));
        assert!(
            err(&none, &[("SWITCHBOARD_MAX_BODY_BYTES", "big")]).contains("expected an integer")
        );
        assert!(err(&none, &[("SWITCHBOARD_LISTEN", "nowhere")]).contains("invalid configuration"));
        assert!(
            err(&none, &[("SWITCHBOARD_ALLOW_NETWORKS", "10.0.0.0/99")])
                .contains("invalid configuration")
        );
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("s.toml");
        std::fs::write(&file, "lisen = \"127.0.0.1:1\"\n").unwrap();
        let flags = Overrides {
            config_file: Some(file),
            ..Overrides::default()
        };
        assert!(err(&flags, &[]).contains("unknown key \"lisen\""));
        let pg = Overrides {
            database_url: Some("mysql://root:hunter2@x".into()),
            ..Overrides::default()
        };
        let msg = err(&pg, &[]);
        assert!(
            msg.contains("database_url must be") && !msg.contains("hunter2"),
            "{msg}"
        );
        assert_eq!(
            mask_password("postgres://u:p@h:5432/db"),
            "postgres://u:********@h:5432/db"
        );
        assert_eq!(mask_password("postgres://u@h/db"), "postgres://u@h/db");
        assert_eq!(
            mask_password("postgres://u@h/db?sslmode=require&password=hunter2&x=1"),
            "postgres://u@h/db?sslmode=require&password=********&x=1"
        );
        assert_eq!(
            mask_password("postgres://u:p@h/db?Password=q"),
            "postgres://u:********@h/db?Password=********"
        );
    }
}
