//! The API client commands (DESIGN §13): `events`, `subscriptions`, `deliveries`, `agents`,
//! `tenants`, `keys` — thin over the HTTP API through one small client ([`Api`]). Human tables
//! by default, the API's JSON with `--json`; on an API error the problem's title and every field
//! error, exit code 1.

use std::io::Read;

use anyhow::Context;
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

/// A server and a key.
#[derive(Clone)]
pub struct Api {
    base: String,
    key: String,
    http: reqwest::Client,
}

/// An answer that is not a success.
#[derive(Debug)]
pub enum Failure {
    /// The API refused: its status and problem document.
    Api(StatusCode, Value),
    /// No answer at all.
    Transport(String),
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Failure::Api(status, problem) => {
                let title = escaped(problem["title"].as_str().unwrap_or("error"));
                write!(f, "{} {title}", status.as_u16())?;
                if let Some(detail) = problem["detail"].as_str() {
                    write!(f, ": {}", escaped(detail))?;
                }
                for e in problem["errors"].as_array().into_iter().flatten() {
                    let at = e["index"]
                        .as_u64()
                        .map_or(String::new(), |i| format!("[{i}] "));
                    let field = escaped(e["field"].as_str().unwrap_or(""));
                    let message = escaped(e["message"].as_str().unwrap_or(""));
                    write!(f, "\n  {at}{field}: {message}")?;
                }
                Ok(())
            }
            Failure::Transport(e) => write!(f, "{e}"),
        }
    }
}

impl std::error::Error for Failure {}

impl Api {
    pub fn new(base: &str, key: &str) -> Self {
        Api {
            base: base.trim_end_matches('/').to_string(),
            key: key.to_string(),
            http: reqwest::Client::new(),
        }
    }

    /// `method path` with an optional JSON body; the answer's JSON (null for 204).
    pub async fn call(
        &self,
        method: Method,
        path: &str,
        body: Option<&Value>,
    ) -> Result<Value, Failure> {
        let mut request = self
            .http
            .request(method, format!("{}{path}", self.base))
            .bearer_auth(&self.key);
        if let Some(body) = body {
            request = request.json(body);
        }
        let response = request
            .send()
            .await
            .map_err(|e| Failure::Transport(format!("{}: {e}", self.base)))?;
        let status = response.status();
        let text = response
            .text()
            .await
            .map_err(|e| Failure::Transport(e.to_string()))?;
        let value = if text.is_empty() {
            Value::Null
        } else {
            serde_json::from_str(&text).unwrap_or(Value::String(text))
        };
        if status.is_success() {
            Ok(value)
        } else {
            Err(Failure::Api(status, value))
        }
    }

    /// Posts events (one, or an array) to `tenant`: the `202` answer.
    pub async fn publish(&self, tenant: &str, events: &Value) -> Result<Value, Failure> {
        let path = format!("/v1/tenants/{}/events", seg(tenant));
        self.call(Method::POST, &path, Some(events)).await
    }

    /// Creates a subscription of `tenant` from `body`: the subscription, with its `id`.
    pub async fn create_subscription(&self, tenant: &str, body: &Value) -> Result<Value, Failure> {
        let path = format!("/v1/tenants/{}/subscriptions", seg(tenant));
        self.call(Method::POST, &path, Some(body)).await
    }

    /// Creates a key of `tenant`: the key itself (shown this once).
    pub async fn create_key(
        &self,
        tenant: &str,
        name: &str,
        scopes: &[&str],
    ) -> Result<String, Failure> {
        let path = format!("/v1/tenants/{}/keys", seg(tenant));
        let body = json!({"name": name, "scopes": scopes});
        let answer = self.call(Method::POST, &path, Some(&body)).await?;
        answer["key"]
            .as_str()
            .map(str::to_owned)
            .ok_or_else(|| Failure::Transport("the created key has no `key`".into()))
    }

    /// The raw response of a GET, for streams.
    pub async fn stream(&self, path: &str) -> Result<reqwest::Response, Failure> {
        let response = self
            .http
            .get(format!("{}{path}", self.base))
            .bearer_auth(&self.key)
            .send()
            .await
            .map_err(|e| Failure::Transport(format!("{}: {e}", self.base)))?;
        if response.status().is_success() {
            return Ok(response);
        }
        let status = response.status();
        let value = response.json().await.unwrap_or(Value::Null);
        Err(Failure::Api(status, value))
    }
}

/// A request a command makes, and how its answer is shown.
pub struct Request {
    pub method: Method,
    pub path: String,
    pub body: Option<Value>,
    pub show: Show,
}

/// How an answer is shown as text.
#[derive(Clone, Copy)]
pub enum Show {
    /// A list page: these columns of each item of `data`.
    Table(&'static [&'static str]),
    /// One object: a `key: value` line per field.
    Object,
    /// Nothing to show (204).
    Done,
}

/// Query string from `(name, value)` pairs, leaving out absent ones.
pub fn query(pairs: &[(&str, Option<String>)]) -> String {
    let parts: Vec<String> = pairs
        .iter()
        .filter_map(|(k, v)| v.as_ref().map(|v| format!("{k}={}", encode(v))))
        .collect();
    if parts.is_empty() {
        String::new()
    } else {
        format!("?{}", parts.join("&"))
    }
}

/// Percent-encodes a query value.
fn encode(v: &str) -> String {
    v.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// A path segment, encoded.
pub fn seg(v: &str) -> String {
    encode(v)
}

/// Reads JSON from a file or `-` (stdin): one value, or NDJSON (then an array of the lines).
pub fn read_json(source: &str) -> anyhow::Result<Value> {
    let mut text = String::new();
    if source == "-" {
        std::io::stdin().read_to_string(&mut text)?;
    } else {
        text = std::fs::read_to_string(source).with_context(|| format!("reading {source}"))?;
    }
    if let Ok(v) = serde_json::from_str::<Value>(&text) {
        return Ok(v);
    }
    let lines: Result<Vec<Value>, _> = text
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(serde_json::from_str)
        .collect();
    Ok(Value::Array(lines.with_context(|| {
        format!("{source} holds neither JSON nor NDJSON")
    })?))
}

/// The text of a value in a table cell, with control characters escaped.
fn cell(v: &Value) -> String {
    match v {
        Value::Null => "-".into(),
        Value::String(s) => escaped(s),
        other => escaped(&other.to_string()),
    }
}

/// `text` safe to print to a terminal: control characters (ESC and the rest, which could
/// retitle, clear or rewrite the terminal) and the bidirectional overrides (which reorder what
/// is shown) written as `\u{…}`. Tenant data is anyone's input.
pub fn escaped(text: &str) -> String {
    let unsafe_char =
        |c: char| c.is_control() || matches!(c, '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}');
    if !text.chars().any(unsafe_char) {
        return text.to_string();
    }
    text.chars()
        .map(|c| match unsafe_char(c) {
            true => format!("\\u{{{:x}}}", c as u32),
            false => c.to_string(),
        })
        .collect()
}

/// The human form of an answer.
pub fn render(answer: &Value, show: Show) -> String {
    match show {
        Show::Done => "done".into(),
        Show::Object => match answer.as_object() {
            Some(o) => {
                let width = o.keys().map(String::len).max().unwrap_or(0);
                o.iter()
                    .map(|(k, v)| format!("{k:width$}  {}", cell(v)))
                    .collect::<Vec<_>>()
                    .join("\n")
            }
            None => cell(answer),
        },
        Show::Table(columns) => {
            let rows: Vec<Vec<String>> = answer["data"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|item| {
                    columns
                        .iter()
                        .map(|c| {
                            let v = c.split('.').fold(item, |v, part| &v[part]);
                            cell(v)
                        })
                        .collect()
                })
                .collect();
            let widths: Vec<usize> = columns
                .iter()
                .enumerate()
                .map(|(i, c)| {
                    rows.iter()
                        .map(|r| r[i].len())
                        .chain([c.len()])
                        .max()
                        .unwrap_or(0)
                })
                .collect();
            let line = |cells: Vec<String>| {
                cells
                    .iter()
                    .zip(&widths)
                    .map(|(c, w)| format!("{c:w$}"))
                    .collect::<Vec<_>>()
                    .join("  ")
                    .trim_end()
                    .to_string()
            };
            let mut out = vec![line(columns.iter().map(|c| c.to_uppercase()).collect())];
            out.extend(rows.into_iter().map(line));
            if let Some(next) = answer["next_after"].as_str() {
                out.push(format!("(more: --after {})", escaped(next)));
            }
            out.join("\n")
        }
    }
}

/// Runs `request`; prints the answer (JSON or text). `Err` carries the failure, printed.
pub async fn run(api: &Api, request: Request, json_out: bool) -> Result<(), Failure> {
    let answer = api
        .call(request.method, &request.path, request.body.as_ref())
        .await?;
    if json_out {
        println!(
            "{}",
            serde_json::to_string_pretty(&answer).unwrap_or_default()
        );
    } else {
        println!("{}", render(&answer, request.show));
    }
    Ok(())
}

/// `events tail`: follows the events stream, a line per event (the log item's JSON with
/// `--json`, else `sequence  time  category/code  username`).
pub async fn tail(api: &Api, path: &str, json_out: bool) -> Result<(), Failure> {
    let mut response = api.stream(path).await?;
    let mut buffer = String::new();
    while let Some(chunk) = response
        .chunk()
        .await
        .map_err(|e| Failure::Transport(e.to_string()))?
    {
        buffer.push_str(&String::from_utf8_lossy(&chunk));
        while let Some(end) = buffer.find("\n\n") {
            let message: String = buffer.drain(..end + 2).collect();
            let data: String = message
                .lines()
                .filter_map(|l| l.strip_prefix("data:"))
                .map(str::trim_start)
                .collect();
            if data.is_empty() {
                continue;
            }
            let item: Value = serde_json::from_str(&data).unwrap_or(Value::Null);
            if json_out {
                println!("{data}");
            } else {
                let e = &item["event"];
                println!(
                    "{}  {}  {}/{}  {}",
                    item["sequence"],
                    cell(&e["CreationDateUtc"]),
                    e["Category"],
                    e["Code"],
                    cell(&e["AdditionalFields"]["Username"])
                );
            }
        }
    }
    Ok(())
}

/// The body of `subscriptions create|update`: `--body` if given, with `--url` and
/// `--description` set over it.
pub fn subscription_body(
    body: Option<&str>,
    url: Option<String>,
    description: Option<String>,
) -> anyhow::Result<Value> {
    let mut value = match body {
        Some(source) => read_json(source)?,
        None => json!({}),
    };
    let object = value
        .as_object_mut()
        .context("--body must hold a JSON object")?;
    if let Some(url) = url {
        object.insert("url".into(), Value::String(url));
    }
    if let Some(d) = description {
        object.insert("description".into(), Value::String(d));
    }
    Ok(value)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn control_characters_and_bidi_overrides_are_escaped() {
        assert_eq!(escaped("jdoe"), "jdoe");
        assert_eq!(escaped("a\u{1b}]0;owned\u{7}b"), "a\\u{1b}]0;owned\\u{7}b");
        assert_eq!(escaped("x\u{202e}gpj.exe"), "x\\u{202e}gpj.exe");
        assert_eq!(escaped("line\nnext"), "line\\u{a}next");
        assert_eq!(escaped("José 日本"), "José 日本");
        let table = render(
            &json!({"data": [{"username": "\u{1b}[2J\u{1b}]0;hacked\u{7}"}], "next_after": null}),
            Show::Table(&["username"]),
        );
        assert!(
            !table.contains('\u{1b}') && table.contains("\\u{1b}[2J"),
            "{table}"
        );
    }

    #[test]
    fn tables_show_the_columns_of_each_item_and_the_next_cursor() {
        let page = json!({"data": [{"id": "a", "n": 1, "x": {"y": null}},
                                   {"id": "bbb", "n": 22, "x": {"y": "z"}}],
                          "next_after": "bbb"});
        assert_eq!(
            render(&page, Show::Table(&["id", "n", "x.y"])),
            "ID   N   X.Y\na    1   -\nbbb  22  z\n(more: --after bbb)"
        );
        assert_eq!(
            render(&json!({"a": 1, "bb": "x"}), Show::Object),
            "a   1\nbb  x"
        );
        assert_eq!(query(&[("a", Some("x y".into())), ("b", None)]), "?a=x%20y");
    }

    #[test]
    fn failures_name_the_title_and_every_field() {
        let f = Failure::Api(
            StatusCode::UNPROCESSABLE_ENTITY,
            json!({"title": "Validation failed", "detail": "2 problems; see errors",
                   "errors": [{"index": 0, "field": "Code", "message": "unknown"},
                              {"field": "url", "message": "is required"}]}),
        );
        assert_eq!(
            f.to_string(),
            "422 Validation failed: 2 problems; see errors\n  [0] Code: unknown\n  url: is required"
        );
    }
}
