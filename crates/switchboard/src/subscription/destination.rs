//! Where a push subscription's deliveries go (DESIGN §17): an HTTP receiver (`url`, or
//! `destination: {"type": "http"}`), or a NATS JetStream subject. Subjects are templates of
//! `{tenant}`, `{category}`, `{code}` and `{agent}`.

use serde::{Deserialize, Serialize};

/// A destination other than the `url` shorthand.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(tag = "type", rename_all = "lowercase", deny_unknown_fields)]
pub enum Destination {
    /// The same as `url`: an HTTP receiver.
    Http { url: String },
    /// Published to NATS JetStream; success is the stream's PubAck.
    Nats {
        /// `nats://[user:password@]host[:port]` (port 4222 by default); the password is
        /// write-only (answers show `***`).
        url: String,
        /// A subject template: `{tenant}`, `{category}`, `{code}`, `{agent}`.
        subject: String,
    },
    /// Published to a RabbitMQ (AMQP 0-9-1) exchange the operator declared: persistent,
    /// `mandatory`, with publisher confirms; success is the broker's ack.
    Amqp {
        /// `amqp://[user:password@]host[:port][/vhost]` (port 5672 by default; the vhost
        /// `%2f` is `/`); the password is write-only.
        url: String,
        exchange: String,
        /// A routing-key template: `{tenant}`, `{category}`, `{code}`, `{agent}`.
        routing_key: String,
    },
}

/// What a masked password looks like in answers (and, sent back in a `PATCH`, keeps the
/// stored one).
pub const MASK: &str = "***";

/// The placeholders a template may use.
pub const PLACEHOLDERS: [&str; 4] = ["tenant", "category", "code", "agent"];

impl Destination {
    /// The `type`, as metrics label it.
    pub fn kind(&self) -> &'static str {
        match self {
            Destination::Http { .. } => "http",
            Destination::Nats { .. } => "nats",
            Destination::Amqp { .. } => "amqp",
        }
    }

    /// Its problems, each with the field it names (under `destination`).
    pub fn problems(&self) -> Vec<(&'static str, String)> {
        let mut out = Vec::new();
        match self {
            Destination::Http { .. } => {}
            Destination::Nats { url, subject } => {
                if let Err(why) = broker_url(url, "nats") {
                    out.push(("destination.url", why));
                }
                if let Err(why) = Template::parse(subject).and_then(|t| t.check_subject()) {
                    out.push(("destination.subject", why));
                }
            }
            Destination::Amqp {
                url,
                exchange,
                routing_key,
            } => {
                if let Err(why) = broker_url(url, "amqp") {
                    out.push(("destination.url", why));
                }
                if exchange.len() > 255 {
                    out.push((
                        "destination.exchange",
                        "must be at most 255 characters".to_owned(),
                    ));
                }
                if let Err(why) = Template::parse(routing_key) {
                    out.push(("destination.routing_key", why));
                }
            }
        }
        out
    }

    /// The broker's URL (not for `http`).
    pub fn broker_url(&self) -> Option<&str> {
        match self {
            Destination::Http { .. } => None,
            Destination::Nats { url, .. } | Destination::Amqp { url, .. } => Some(url),
        }
    }

    fn broker_url_mut(&mut self) -> Option<&mut String> {
        match self {
            Destination::Http { .. } => None,
            Destination::Nats { url, .. } | Destination::Amqp { url, .. } => Some(url),
        }
    }

    /// The same with the broker URL's password shown as `***`.
    pub fn masked(&self) -> Self {
        let mut d = self.clone();
        if let Some(url) = d.broker_url_mut() {
            *url = mask(url);
        }
        d
    }

    /// When this one (from a `PATCH`) carries a masked password, `stored`'s password instead
    /// (same type and the same URL otherwise); else unchanged.
    pub fn unmask(&mut self, stored: Option<&Destination>) {
        let (Some(url), Some(old)) = (self.broker_url().map(str::to_owned), stored) else {
            return;
        };
        let Some(old_url) = old.broker_url() else {
            return;
        };
        if old.kind() != self.kind() || mask(old_url) != url {
            return;
        }
        if let Some(u) = self.broker_url_mut() {
            *u = old_url.to_owned();
        }
    }
}

/// `url` with its password as `***` (unchanged when it has none, or does not parse).
pub fn mask(url: &str) -> String {
    match reqwest::Url::parse(url) {
        Ok(mut u) if u.password().is_some() => {
            let _ = u.set_password(Some(MASK));
            u.to_string().replace("%2A%2A%2A", MASK)
        }
        _ => url.to_owned(),
    }
}

/// A broker URL of `scheme`: its host and port (the scheme's default when none).
pub fn broker_url(url: &str, scheme: &str) -> Result<(String, u16), String> {
    if url.len() > 2048 {
        return Err("must be at most 2048 characters".to_owned());
    }
    let u = reqwest::Url::parse(url)
        .map_err(|e| format!("must be a {scheme}://host[:port] URL: {e}"))?;
    if u.scheme() != scheme {
        return Err(format!("must be a {scheme}:// URL, got {}://", u.scheme()));
    }
    let host = u
        .host_str()
        .filter(|h| !h.is_empty())
        .ok_or_else(|| "must name a host".to_owned())?;
    // AMQP's path is the vhost; NATS has none.
    let path_ok = scheme == "amqp" || u.path().is_empty() || u.path() == "/";
    if !path_ok || u.query().is_some() || u.fragment().is_some() {
        return Err(format!(
            "must be {scheme}://[user:password@]host[:port]{}, with no query",
            if scheme == "amqp" { "[/vhost]" } else { "" }
        ));
    }
    let port = u.port().unwrap_or(match scheme {
        "nats" => 4222,
        _ => 5672,
    });
    Ok((
        host.trim_start_matches('[')
            .trim_end_matches(']')
            .to_owned(),
        port,
    ))
}

/// A subject or routing-key template: literal text and placeholders.
#[derive(Clone, Debug, PartialEq)]
pub struct Template(Vec<Part>);

#[derive(Clone, Debug, PartialEq)]
enum Part {
    Text(String),
    Tenant,
    Category,
    Code,
    Agent,
}

/// What a template is filled with.
pub struct Values<'a> {
    pub tenant: &'a str,
    pub category: u8,
    pub code: u32,
    /// The agent key (`Username`, else `SessionId`).
    pub agent: Option<&'a str>,
}

impl Template {
    pub fn parse(text: &str) -> Result<Self, String> {
        if text.is_empty() {
            return Err("must not be empty".to_owned());
        }
        if text.len() > 256 {
            return Err("must be at most 256 characters".to_owned());
        }
        let mut parts = Vec::new();
        let mut rest = text;
        while let Some(open) = rest.find('{') {
            if open > 0 {
                parts.push(Part::Text(rest[..open].to_owned()));
            }
            let after = &rest[open + 1..];
            let close = after
                .find('}')
                .ok_or_else(|| format!("has a {{ with no }}: {text}"))?;
            parts.push(match &after[..close] {
                "tenant" => Part::Tenant,
                "category" => Part::Category,
                "code" => Part::Code,
                "agent" => Part::Agent,
                other => {
                    return Err(format!(
                        "has an unknown placeholder {{{other}}}; the placeholders are {}",
                        PLACEHOLDERS.map(|p| format!("{{{p}}}")).join(", ")
                    ));
                }
            });
            rest = &after[close + 1..];
        }
        if rest.contains('}') {
            return Err(format!("has a }} with no {{: {text}"));
        }
        if !rest.is_empty() {
            parts.push(Part::Text(rest.to_owned()));
        }
        Ok(Template(parts))
    }

    /// A NATS subject to publish to: tokens separated by `.`, none empty, no wildcard, no
    /// white space (placeholders are filled with `[A-Za-z0-9_-]` only).
    fn check_subject(self) -> Result<(), String> {
        let sample = self.fill(&Values {
            tenant: "t",
            category: 1,
            code: 1,
            agent: Some("a"),
        });
        if sample
            .chars()
            .any(|c| c.is_whitespace() || c == '*' || c == '>')
        {
            return Err(
                "must be a NATS subject to publish to: no spaces, no wildcards (* or >)".to_owned(),
            );
        }
        if sample.split('.').any(str::is_empty) {
            return Err(
                "must be a NATS subject: tokens separated by single dots, none empty".to_owned(),
            );
        }
        Ok(())
    }

    /// The template filled in: every placeholder's value with each character outside
    /// `[A-Za-z0-9_-]` as `_` (an agent key that is missing is `_`).
    pub fn fill(&self, v: &Values) -> String {
        let mut out = String::new();
        for part in &self.0 {
            match part {
                Part::Text(t) => out.push_str(t),
                Part::Tenant => push_safe(&mut out, v.tenant),
                Part::Category => out.push_str(&v.category.to_string()),
                Part::Code => out.push_str(&v.code.to_string()),
                Part::Agent => push_safe(&mut out, v.agent.unwrap_or("_")),
            }
        }
        out
    }
}

fn push_safe(out: &mut String, value: &str) {
    if value.is_empty() {
        out.push('_');
    }
    out.extend(value.chars().map(|c| {
        if c.is_ascii_alphanumeric() || c == '_' || c == '-' {
            c
        } else {
            '_'
        }
    }));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn templates_fill_and_refuse_unknown_placeholders() {
        let t = Template::parse("cc.{tenant}.{category}.{code}.{agent}").unwrap();
        let v = Values {
            tenant: "acme",
            category: 1,
            code: 3,
            agent: Some("jane.doe@example.com"),
        };
        assert_eq!(t.fill(&v), "cc.acme.1.3.jane_doe_example_com");
        let none = Values { agent: None, ..v };
        assert_eq!(t.fill(&none), "cc.acme.1.3._");
        let err = Template::parse("cc.{tenant}.{queue}").unwrap_err();
        assert!(err.contains("{queue}"), "{err}");
        assert!(Template::parse("cc.{tenant").is_err());
        assert!(Template::parse("cc.tenant}").is_err());
        assert!(Template::parse("").is_err());
        for bad in ["cc..x", "cc.*", "cc.>", "cc x", ".cc", "cc."] {
            assert!(
                Template::parse(bad).unwrap().check_subject().is_err(),
                "{bad}"
            );
        }
        assert!(
            Template::parse("cc.{agent}")
                .unwrap()
                .check_subject()
                .is_ok()
        );
    }

    #[test]
    fn broker_urls_parse_and_passwords_are_masked_and_kept() {
        assert_eq!(
            broker_url("nats://127.0.0.1", "nats").unwrap(),
            ("127.0.0.1".to_owned(), 4222)
        );
        assert_eq!(
            broker_url("nats://u:p@[::1]:4333", "nats").unwrap(),
            ("::1".to_owned(), 4333)
        );
        for bad in [
            "http://127.0.0.1",
            "nats://",
            "nats:/x",
            "nats://h/path",
            "nonsense",
        ] {
            assert!(broker_url(bad, "nats").is_err(), "{bad}");
        }
        assert_eq!(
            mask("nats://user:secret@127.0.0.1:4222"),
            "nats://user:***@127.0.0.1:4222"
        );
        assert_eq!(mask("nats://127.0.0.1:4222"), "nats://127.0.0.1:4222");
        let stored = Destination::Nats {
            url: "nats://user:secret@127.0.0.1:4222".into(),
            subject: "a".into(),
        };
        let mut back = stored.masked();
        assert!(!format!("{back:?}").contains("secret"));
        back.unmask(Some(&stored));
        assert_eq!(back, stored);
        // A new password, or another host, is taken as sent.
        let mut other = Destination::Nats {
            url: "nats://user:***@127.0.0.2:4222".into(),
            subject: "a".into(),
        };
        other.unmask(Some(&stored));
        assert!(other.broker_url().unwrap().contains("***"));
    }
}
