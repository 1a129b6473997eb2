//! How an HTTP receiver wants to be called (DESIGN §20): with a Basic or Bearer
//! `Authorization`, or with an OAuth 2 access token got by client credentials. Its secret fields
//! (`password`, `token`, `client_secret`) are write-only: answers show them as `***`, and a
//! `PATCH` that sends `***` back keeps the stored value.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use super::destination::MASK;

/// A receiver's credentials.
#[derive(Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(tag = "type", rename_all = "lowercase", deny_unknown_fields)]
pub enum Auth {
    /// `Authorization: Basic base64(username:password)`.
    Basic {
        username: String,
        /// Write-only.
        password: String,
    },
    /// `Authorization: Bearer <token>`.
    Bearer {
        /// Write-only.
        token: String,
    },
    /// OAuth 2 client credentials: a token from `token_url` (HTTP Basic client authentication,
    /// `grant_type=client_credentials`, `scope` and `audience` as form fields when given), sent
    /// as `Authorization: Bearer`, cached until 30 s before it expires.
    Oauth2 {
        token_url: String,
        client_id: String,
        /// Write-only.
        client_secret: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        scope: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        audience: Option<String>,
    },
}

impl std::fmt::Debug for Auth {
    /// Never the secrets: the masked form.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let masked = serde_json::to_string(&self.masked()).unwrap_or_default();
        f.write_str(&masked)
    }
}

/// The fields a `PATCH` may send back masked, per type.
const SECRET_FIELDS: [&str; 3] = ["password", "token", "client_secret"];

/// Longest credential field, in bytes.
const MAX_FIELD: usize = 4096;

impl Auth {
    /// The `type`.
    pub fn kind(&self) -> &'static str {
        match self {
            Auth::Basic { .. } => "basic",
            Auth::Bearer { .. } => "bearer",
            Auth::Oauth2 { .. } => "oauth2",
        }
    }

    /// This one with every secret field as `***`.
    pub fn masked(&self) -> Self {
        let mut a = self.clone();
        match &mut a {
            Auth::Basic { password, .. } => *password = MASK.into(),
            Auth::Bearer { token } => *token = MASK.into(),
            Auth::Oauth2 { client_secret, .. } => *client_secret = MASK.into(),
        }
        a
    }

    /// In a `PATCH`'s merged `auth` object: each secret field sent back as `***` takes the
    /// stored value, when the stored credentials are of the same type and go where they went
    /// (`same_receiver`: the receiver's origin is unchanged; for OAuth 2, the same `token_url`
    /// too) — a write-only secret is never sent somewhere new without being given again.
    pub fn unmask_json(stored: &Auth, given: &mut Map<String, Value>, same_receiver: bool) {
        if !same_receiver || given.get("type").and_then(Value::as_str) != Some(stored.kind()) {
            return;
        }
        if let Some(url) = stored.token_url()
            && given.get("token_url").and_then(Value::as_str) != Some(url)
        {
            return;
        }
        let Ok(Value::Object(old)) = serde_json::to_value(stored) else {
            return;
        };
        for field in SECRET_FIELDS {
            if given.get(field).and_then(Value::as_str) == Some(MASK)
                && let Some(v) = old.get(field)
            {
                given.insert(field.to_owned(), v.clone());
            }
        }
    }

    /// Its problems, each with the field it names.
    pub fn problems(&self) -> Vec<(&'static str, String)> {
        let mut out = Vec::new();
        // (field, value, whether it must be visible ASCII: it goes in a header as it is)
        let mut fields: Vec<(&'static str, &str, bool)> = Vec::new();
        match self {
            Auth::Basic { username, password } => {
                fields.extend([
                    ("auth.username", username.as_str(), false),
                    ("auth.password", password.as_str(), false),
                ]);
                if username.contains(':') {
                    out.push(("auth.username", "must not contain ':'".to_owned()));
                }
            }
            Auth::Bearer { token } => fields.push(("auth.token", token, true)),
            Auth::Oauth2 {
                token_url,
                client_id,
                client_secret,
                scope,
                audience,
            } => {
                match reqwest::Url::parse(token_url) {
                    _ if token_url.len() > 2048 => out.push((
                        "auth.token_url",
                        "must be at most 2048 characters".to_owned(),
                    )),
                    Ok(u) if !u.username().is_empty() || u.password().is_some() => out.push((
                        "auth.token_url",
                        "must not carry credentials: they go in client_id and client_secret"
                            .to_owned(),
                    )),
                    Ok(u) if matches!(u.scheme(), "http" | "https") && u.host().is_some() => {}
                    _ => out.push((
                        "auth.token_url",
                        "must be an absolute http or https URL".to_owned(),
                    )),
                }
                fields.extend([
                    ("auth.client_id", client_id.as_str(), false),
                    ("auth.client_secret", client_secret.as_str(), false),
                ]);
                if let Some(s) = scope {
                    fields.push(("auth.scope", s, false));
                }
                if let Some(a) = audience {
                    fields.push(("auth.audience", a, false));
                }
            }
        }
        for (field, value, visible) in fields {
            let why = if value.is_empty() {
                "must not be empty"
            } else if value == MASK {
                "is \"***\", which keeps a stored value only in a PATCH of the same type"
            } else if value.len() > MAX_FIELD {
                "must be at most 4096 bytes"
            } else if visible && value.chars().any(|c| !c.is_ascii_graphic()) {
                "must be visible ASCII characters (no spaces)"
            } else if value.chars().any(char::is_control) {
                "must not contain control characters"
            } else {
                continue;
            };
            out.push((field, why.to_owned()));
        }
        out.sort_by_key(|(f, _)| *f);
        out
    }

    /// The token endpoint's URL, for the address guard.
    pub fn token_url(&self) -> Option<&str> {
        match self {
            Auth::Oauth2 { token_url, .. } => Some(token_url),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn secrets_are_masked_in_answers_and_in_debug_output() {
        let a: Auth = serde_json::from_value(json!({"type": "oauth2",
            "token_url": "https://auth.example.com/token", "client_id": "id",
            "client_secret": "s3cr3t", "scope": "hooks"}))
        .unwrap();
        let shown = serde_json::to_string(&a.masked()).unwrap();
        assert!(
            !shown.contains("s3cr3t") && shown.contains("***"),
            "{shown}"
        );
        assert!(!format!("{a:?}").contains("s3cr3t"));
        let b: Auth =
            serde_json::from_value(json!({"type": "basic", "username": "u", "password": "pw"}))
                .unwrap();
        assert!(!format!("{b:?}").contains("pw\""));
    }

    #[test]
    fn a_masked_field_sent_back_keeps_the_stored_value_of_the_same_type_only() {
        let stored = Auth::Bearer {
            token: "tok-1".into(),
        };
        let mut given = json!({"type": "bearer", "token": "***"});
        Auth::unmask_json(&stored, given.as_object_mut().unwrap(), true);
        assert_eq!(given["token"], "tok-1");
        let mut elsewhere = json!({"type": "bearer", "token": "***"});
        Auth::unmask_json(&stored, elsewhere.as_object_mut().unwrap(), false);
        assert_eq!(elsewhere["token"], "***", "not for another receiver");
        let oauth = Auth::Oauth2 {
            token_url: "https://idp.example.com/token".into(),
            client_id: "c".into(),
            client_secret: "s3cret".into(),
            scope: None,
            audience: None,
        };
        let mut moved = json!({"type": "oauth2", "token_url": "https://evil.example.com/token",
                               "client_id": "c", "client_secret": "***"});
        Auth::unmask_json(&oauth, moved.as_object_mut().unwrap(), true);
        assert_eq!(
            moved["client_secret"], "***",
            "not for another token endpoint"
        );
        let mut other = json!({"type": "basic", "username": "u", "password": "***"});
        Auth::unmask_json(&stored, other.as_object_mut().unwrap(), true);
        assert_eq!(other["password"], "***");
        let a: Auth = serde_json::from_value(other).unwrap();
        assert_eq!(a.problems()[0].0, "auth.password");
    }

    #[test]
    fn bad_credentials_name_their_field() {
        let bad = |v: Value| -> Vec<&'static str> {
            let a: Auth = serde_json::from_value(v).unwrap();
            a.problems().into_iter().map(|(f, _)| f).collect()
        };
        assert_eq!(
            bad(json!({"type": "basic", "username": "a:b", "password": "p"})),
            ["auth.username"]
        );
        assert_eq!(
            bad(json!({"type": "bearer", "token": "has space"})),
            ["auth.token"]
        );
        assert_eq!(
            bad(
                json!({"type": "oauth2", "token_url": "ftp://x", "client_id": "i",
                       "client_secret": "s"})
            ),
            ["auth.token_url"]
        );
        assert!(serde_json::from_value::<Auth>(json!({"type": "digest"})).is_err());
    }
}
