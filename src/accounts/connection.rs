//! From a `[[connection]]` of the config to OAuth settings and a token source: what the
//! daemon needs to build an OAuth provider, and what `login`/`logout` need.
//!
//! Which connection types log in with OAuth, and against which endpoints, is not decided
//! here but by the provider registry (`provider::registry`), which passes its defaults in.

use std::path::PathBuf;
use std::sync::Arc;

use super::{AccountError, AccountId, OAuthClientConfig, TokenSource, TokenVault};
use crate::config::{Config, ConnectionConfig};

/// Keys of a connection's `settings` that describe the OAuth client rather than the
/// provider itself.
const OAUTH_KEYS: &[&str] = &[
    "client_id",
    "client_secret_file",
    "auth_url",
    "token_url",
    "revoke_url",
    "device_auth_url",
    "scopes",
    "redirect_port",
];

/// A provider's default OAuth client, from the user's client id and (optional) secret.
pub type OAuthDefaults = fn(client_id: String, client_secret: Option<String>) -> OAuthClientConfig;

pub fn vault_dir(cfg: &Config) -> Result<PathBuf, AccountError> {
    cfg.accounts_dir
        .clone()
        .or_else(TokenVault::default_dir)
        .ok_or_else(|| {
            AccountError::Config("no data directory for the token vault; set accounts_dir".into())
        })
}

/// The OAuth client of a connection (`defaults` with the endpoints its settings override),
/// and its remaining (provider) settings.
/// The scopes a read-only mount needs instead of `scopes`: each write scope by its read
/// counterpart (Microsoft Graph's `*.ReadWrite*` by `*.Read*`, Google Drive's full scope by
/// `drive.readonly`), Dropbox's `*.write` scopes left out; anything else kept.
pub fn read_only_scopes(scopes: &[String]) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for s in scopes {
        let read = if s == crate::accounts::GOOGLE_DRIVE_SCOPE {
            format!("{s}.readonly")
        } else if s.contains(".ReadWrite") {
            s.replace(".ReadWrite", ".Read")
        } else if s.ends_with(".write") {
            continue;
        } else {
            s.clone()
        };
        if !out.contains(&read) {
            out.push(read);
        }
    }
    out
}

pub fn split_settings(
    c: &ConnectionConfig,
    defaults: OAuthDefaults,
) -> Result<(OAuthClientConfig, toml::Table), AccountError> {
    let mut rest = c.settings.clone();
    let mut take = |k: &str| rest.remove(k);
    let client_id = match take("client_id") {
        Some(toml::Value::String(s)) => s,
        _ => {
            return Err(AccountError::Config(format!(
                "connection {:?} needs settings.client_id (your OAuth client; see the README)",
                c.name
            )))
        }
    };
    let secret = match take("client_secret_file") {
        Some(toml::Value::String(p)) => Some(
            crate::secrets::read_secret_file(std::path::Path::new(&p))
                .map_err(|e| AccountError::Config(e.to_string()))?
                .expose()
                .to_owned(),
        ),
        Some(_) => {
            return Err(AccountError::Config(
                "client_secret_file must be a path".into(),
            ))
        }
        None => None,
    };
    let mut oauth = defaults(client_id, secret);
    let string = |v: Option<toml::Value>| v.and_then(|v| v.as_str().map(str::to_string));
    if let Some(u) = string(take("auth_url")) {
        oauth.auth_url = u;
    }
    if let Some(u) = string(take("token_url")) {
        oauth.token_url = u;
    }
    if let Some(u) = string(take("revoke_url")) {
        oauth.revoke_url = Some(u);
    }
    if let Some(u) = string(take("device_auth_url")) {
        oauth.device_auth_url = Some(u);
    }
    // A read-only mount asks only for reading (explicit `scopes` still win).
    if c.read_only {
        oauth.scopes = read_only_scopes(&oauth.scopes);
    }
    if let Some(toml::Value::Array(a)) = take("scopes") {
        oauth.scopes = a
            .iter()
            .filter_map(|v| v.as_str().map(str::to_string))
            .collect();
    }
    if let Some(toml::Value::Integer(p)) = take("redirect_port") {
        oauth.redirect_port = u16::try_from(p).ok();
    }
    debug_assert!(OAUTH_KEYS.iter().all(|k| !rest.contains_key(*k)));
    Ok((oauth, rest))
}

pub fn account_id(c: &ConnectionConfig) -> Result<AccountId, AccountError> {
    AccountId::new(&c.kind, &c.name)
}

/// A refreshing token source for a logged-in connection, whose OAuth client is `oauth`.
pub fn token_source(
    cfg: &Config,
    c: &ConnectionConfig,
    oauth: &OAuthClientConfig,
) -> Result<Arc<TokenSource>, AccountError> {
    let vault = Arc::new(TokenVault::open(&vault_dir(cfg)?)?);
    let source = TokenSource::new(vault, account_id(c)?, oauth)?;
    Ok(Arc::new(source))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scopes(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn read_only_mounts_ask_for_read_scopes() {
        assert_eq!(
            read_only_scopes(&scopes(&[
                "Files.ReadWrite.All",
                "Sites.Read.All",
                "offline_access"
            ])),
            scopes(&["Files.Read.All", "Sites.Read.All", "offline_access"])
        );
        assert_eq!(
            read_only_scopes(&scopes(&[crate::accounts::GOOGLE_DRIVE_SCOPE])),
            scopes(&["https://www.googleapis.com/auth/drive.readonly"])
        );
        assert_eq!(
            read_only_scopes(&scopes(&[
                "account_info.read",
                "files.metadata.read",
                "files.metadata.write",
                "files.content.read",
                "files.content.write"
            ])),
            scopes(&[
                "account_info.read",
                "files.metadata.read",
                "files.content.read"
            ])
        );
    }

    #[test]
    fn a_read_only_connection_logs_in_with_read_scopes_unless_scopes_are_given() {
        let mut c: ConnectionConfig = toml::from_str(
            r#"name = "work"
type = "onedrive"
read_only = true
settings = { client_id = "x" }"#,
        )
        .unwrap();
        let (oauth, _) = split_settings(&c, OAuthClientConfig::microsoft).unwrap();
        assert_eq!(
            oauth.scopes,
            scopes(&["Files.Read.All", "Sites.Read.All", "offline_access"])
        );
        c.settings.insert(
            "scopes".into(),
            toml::Value::Array(vec!["Files.ReadWrite.All".into()]),
        );
        let (oauth, _) = split_settings(&c, OAuthClientConfig::microsoft).unwrap();
        assert_eq!(oauth.scopes, scopes(&["Files.ReadWrite.All"]));
    }
}
