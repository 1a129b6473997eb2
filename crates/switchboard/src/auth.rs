//! API keys and what they may do. Keys are random, shown once, and stored only as a SHA-256
//! hash: with 256 bits of entropy a fast hash is as safe as a slow one and keeps auth cheap.

use std::fmt;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// What a tenant key may do. `manage` includes `read`.
#[derive(
    Clone,
    Copy,
    Debug,
    PartialEq,
    Eq,
    PartialOrd,
    Ord,
    Hash,
    Serialize,
    Deserialize,
    utoipa::ToSchema,
)]
#[serde(rename_all = "lowercase")]
pub enum Scope {
    Publish,
    Read,
    Manage,
    /// Reading and committing a pull subscription's messages (DESIGN §16).
    Consume,
}

impl Scope {
    pub const ALL: [Scope; 4] = [Scope::Publish, Scope::Read, Scope::Manage, Scope::Consume];

    pub fn as_str(self) -> &'static str {
        match self {
            Scope::Publish => "publish",
            Scope::Read => "read",
            Scope::Manage => "manage",
            Scope::Consume => "consume",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|x| x.as_str() == s)
    }
}

impl fmt::Display for Scope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Who is calling.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Principal {
    Admin,
    Tenant {
        tenant_id: String,
        scopes: Vec<Scope>,
    },
    /// A portal link's token (DESIGN §22): one tenant's subscriptions and their deliveries,
    /// on the routes `api::portal` lets it reach.
    Portal {
        tenant_id: String,
        link_id: String,
        /// The subscriptions it is limited to; `None`: all of the tenant's.
        subscription_ids: Option<Vec<String>>,
        read_only: bool,
    },
}

/// Why a principal may not do something; the API maps these to 404 and 403.
#[derive(Debug, PartialEq, Eq)]
pub enum Denied {
    /// Another tenant's path: answered as if it did not exist.
    OtherTenant,
    MissingScope(Scope),
    AdminOnly,
    /// A portal token on something only keys may do.
    NotForPortal,
    /// A read-only portal token asked to change something.
    ReadOnlyPortal,
}

impl Principal {
    /// May this principal act on `tenant` with `scope`?
    pub fn may(&self, tenant: &str, scope: Scope) -> Result<(), Denied> {
        match self {
            Principal::Admin => Ok(()),
            Principal::Tenant { tenant_id, .. } if tenant_id != tenant => Err(Denied::OtherTenant),
            Principal::Tenant { scopes, .. } => {
                // `manage` implies `read` and `consume`.
                let implied = matches!(scope, Scope::Read | Scope::Consume)
                    && scopes.contains(&Scope::Manage);
                if scopes.contains(&scope) || implied {
                    Ok(())
                } else {
                    Err(Denied::MissingScope(scope))
                }
            }
            Principal::Portal { tenant_id, .. } if tenant_id != tenant => Err(Denied::OtherTenant),
            // What a portal token reaches is decided route by route (`api::portal`); of the
            // scopes, it holds `read`, and `manage` unless read-only.
            Principal::Portal { read_only, .. } => match scope {
                Scope::Read => Ok(()),
                Scope::Manage if !read_only => Ok(()),
                Scope::Manage => Err(Denied::ReadOnlyPortal),
                Scope::Publish | Scope::Consume => Err(Denied::NotForPortal),
            },
        }
    }

    /// The tenant this principal belongs to; `None` for the admin.
    pub fn tenant(&self) -> Option<&str> {
        match self {
            Principal::Admin => None,
            Principal::Tenant { tenant_id, .. } | Principal::Portal { tenant_id, .. } => {
                Some(tenant_id)
            }
        }
    }

    pub fn require_admin(&self) -> Result<(), Denied> {
        match self {
            Principal::Admin => Ok(()),
            Principal::Tenant { .. } | Principal::Portal { .. } => Err(Denied::AdminOnly),
        }
    }
}

/// `bytes` random bytes, base64url without padding.
pub fn random_token(bytes: usize) -> String {
    let mut buf = vec![0u8; bytes];
    getrandom::fill(&mut buf).expect("the operating system's random source works");
    URL_SAFE_NO_PAD.encode(buf)
}

/// A new secret key: a recognisable prefix and 256 random bits.
pub fn generate_key(prefix: &str) -> String {
    format!("{prefix}{}", random_token(32))
}

/// A new portal token: its own prefix (so that authentication knows where to look) and 256
/// random bits.
pub const PORTAL_TOKEN_PREFIX: &str = "sbp_";

/// A short, public key id.
pub fn generate_key_id() -> String {
    format!("key_{}", random_token(12))
}

/// The stored form of a key.
pub fn hash_key(key: &str) -> String {
    URL_SAFE_NO_PAD.encode(Sha256::digest(key.as_bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(principal: &Principal, tenant: &str, scope: Scope, expect: Result<(), Denied>) {
        assert_eq!(
            principal.may(tenant, scope),
            expect,
            "{principal:?} {tenant} {scope}"
        );
    }

    #[test]
    fn scopes() {
        let key = |scopes: &[Scope]| Principal::Tenant {
            tenant_id: "acme".into(),
            scopes: scopes.to_vec(),
        };
        use Scope::*;
        check(&Principal::Admin, "any", Manage, Ok(()));
        check(&key(&[Publish]), "acme", Publish, Ok(()));
        check(
            &key(&[Publish]),
            "acme",
            Read,
            Err(Denied::MissingScope(Read)),
        );
        check(&key(&[Publish]), "other", Publish, Err(Denied::OtherTenant));
        check(&key(&[Read]), "acme", Read, Ok(()));
        check(
            &key(&[Read]),
            "acme",
            Manage,
            Err(Denied::MissingScope(Manage)),
        );
        check(&key(&[Manage]), "acme", Read, Ok(()));
        check(
            &key(&[Manage]),
            "acme",
            Publish,
            Err(Denied::MissingScope(Publish)),
        );
        assert_eq!(key(&[Manage]).require_admin(), Err(Denied::AdminOnly));

        let portal = |read_only| Principal::Portal {
            tenant_id: "acme".into(),
            link_id: "pl_1".into(),
            subscription_ids: None,
            read_only,
        };
        check(&portal(false), "acme", Read, Ok(()));
        check(&portal(false), "acme", Manage, Ok(()));
        check(&portal(true), "acme", Manage, Err(Denied::ReadOnlyPortal));
        check(&portal(false), "acme", Publish, Err(Denied::NotForPortal));
        check(&portal(false), "acme", Consume, Err(Denied::NotForPortal));
        check(&portal(false), "other", Read, Err(Denied::OtherTenant));
        assert_eq!(portal(false).require_admin(), Err(Denied::AdminOnly));
    }

    #[test]
    fn keys_are_random_and_hashed() {
        let (a, b) = (generate_key("sb_"), generate_key("sb_"));
        assert_ne!(a, b);
        assert_eq!(a.len(), 3 + 43);
        assert_eq!(hash_key(&a), hash_key(&a));
        assert_ne!(hash_key(&a), hash_key(&b));
        assert_eq!(Scope::parse("manage"), Some(Scope::Manage));
        assert_eq!(Scope::parse("admin"), None);
    }
}
