//! Every kind of connection cloudmount knows, in one table: from a connection's `type` (or
//! one of its aliases) to how its provider is built and, for the kinds that log in with
//! OAuth, the default OAuth client.
//!
//! Adding a provider is its folder under `provider/`, one entry in [`KINDS`] and the few
//! lines of its `build` function (settings -> config -> provider); nothing else (daemon,
//! `login`, `connections`) names provider kinds.

use std::sync::Arc;

use super::Provider;
use crate::accounts::connection::{self, OAuthDefaults};
use crate::accounts::{AccountError, BearerTokens, OAuthClientConfig};
use crate::config::{Config, ConnectionConfig};

/// What a constructor may fail with; [`build`] adds which connection it was.
pub type SetupError = Box<dyn std::error::Error + Send + Sync>;

/// What a provider's constructor gets.
pub struct Setup<'a> {
    pub connection: &'a ConnectionConfig,
    /// The connection's `settings`, less the OAuth client's keys for OAuth kinds.
    pub settings: toml::Table,
    /// For OAuth kinds: the logged-in account's access tokens.
    pub tokens: Option<Arc<dyn BearerTokens>>,
    /// A private folder of this connection's own, for what its provider keeps across
    /// restarts (IMAP's mailbox indexes); created by the provider when it needs it.
    pub state_dir: std::path::PathBuf,
}

impl Setup<'_> {
    /// The access tokens of an OAuth kind (always there when [`ProviderKind::oauth`] is set).
    pub fn tokens(&self) -> Result<Arc<dyn BearerTokens>, SetupError> {
        self.tokens
            .clone()
            .ok_or_else(|| "this kind of connection logs in with OAuth, but has no login".into())
    }
}

/// One kind of connection.
pub struct ProviderKind {
    /// The name `type = ...` uses, and the provider's account name in the token vault.
    pub kind: &'static str,
    /// Other names for the same kind. The constructor still sees the name the connection
    /// used (in `Setup::connection.kind`): WebDAV tunes itself to ownCloud and Nextcloud.
    pub aliases: &'static [&'static str],
    /// Whether (and with which default client endpoints) it logs in with OAuth.
    pub oauth: OAuthUse,
    pub build: fn(&Setup<'_>) -> Result<Arc<dyn Provider>, SetupError>,
}

/// How a kind of connection logs in.
#[derive(Clone, Copy)]
pub enum OAuthUse {
    /// Never with OAuth (no login, or a password from the settings).
    Never,
    /// Always with OAuth, with these default client endpoints.
    Always(OAuthDefaults),
    /// As its settings say (IMAP: a password, or XOAUTH2 with Google's or Microsoft's
    /// endpoints); `None` for a connection that does not use OAuth.
    BySettings(fn(&toml::Table) -> Option<OAuthDefaults>),
}

impl OAuthUse {
    fn defaults(self, settings: &toml::Table) -> Option<OAuthDefaults> {
        match self {
            OAuthUse::Never => None,
            OAuthUse::Always(d) => Some(d),
            OAuthUse::BySettings(f) => f(settings),
        }
    }
}

/// Every kind of connection. Order is what error messages list.
pub const KINDS: &[ProviderKind] = &[
    ProviderKind {
        kind: "local",
        aliases: &[],
        oauth: OAuthUse::Never,
        build: build_local,
    },
    ProviderKind {
        kind: "webdav",
        aliases: &["owncloud", "nextcloud"],
        oauth: OAuthUse::Never,
        build: build_webdav,
    },
    ProviderKind {
        kind: "gdrive",
        aliases: &[],
        oauth: OAuthUse::Always(OAuthClientConfig::google),
        build: build_gdrive,
    },
    ProviderKind {
        kind: "onedrive",
        aliases: &["sharepoint"],
        oauth: OAuthUse::Always(OAuthClientConfig::microsoft),
        build: build_onedrive,
    },
    ProviderKind {
        kind: "dropbox",
        aliases: &[],
        oauth: OAuthUse::Always(OAuthClientConfig::dropbox),
        build: build_dropbox,
    },
    ProviderKind {
        kind: "confluence",
        aliases: &[],
        oauth: OAuthUse::BySettings(confluence_oauth),
        build: build_confluence,
    },
    ProviderKind {
        kind: "jira",
        aliases: &[],
        oauth: OAuthUse::BySettings(jira_oauth),
        build: build_jira,
    },
    ProviderKind {
        kind: "imap",
        aliases: &[],
        oauth: OAuthUse::BySettings(super::imap::oauth_defaults),
        build: build_imap,
    },
];

fn build_local(s: &Setup<'_>) -> Result<Arc<dyn Provider>, SetupError> {
    let path = s
        .connection
        .path
        .as_ref()
        .ok_or("type \"local\" needs `path`")?;
    Ok(Arc::new(super::local::LocalProvider::new(path.clone())?))
}

fn build_webdav(s: &Setup<'_>) -> Result<Arc<dyn Provider>, SetupError> {
    let cfg = super::webdav::WebdavConfig::from_settings(&s.connection.kind, &s.settings)?;
    Ok(Arc::new(super::webdav::WebdavProvider::new(cfg)?))
}

fn build_gdrive(s: &Setup<'_>) -> Result<Arc<dyn Provider>, SetupError> {
    let cfg: super::gdrive::GdriveConfig = s.settings.clone().try_into()?;
    Ok(Arc::new(super::gdrive::GdriveProvider::new(
        cfg,
        s.tokens()?,
    )?))
}

/// One drive when `drive_id` names it; else the account's drives side by side.
fn build_onedrive(s: &Setup<'_>) -> Result<Arc<dyn Provider>, SetupError> {
    use super::onedrive::{drives::GraphDrives, OneDriveConfig, OneDriveProvider};
    let cfg: OneDriveConfig = s.settings.clone().try_into()?;
    let layout = cfg.drive_id.is_none();
    let refresh = std::time::Duration::from_secs(cfg.sites_refresh_secs);
    let own = OneDriveProvider::new(cfg, s.tokens()?)?;
    if !layout {
        return Ok(Arc::new(own));
    }
    // The names given to SharePoint sites and libraries stick across restarts.
    let catalog = Arc::new(GraphDrives::new(
        own,
        Some(s.state_dir.join("sharepoint-names.json")),
    ));
    Ok(Arc::new(super::kit::drive_set::DriveSet::new(
        catalog, refresh,
    )?))
}

fn build_dropbox(s: &Setup<'_>) -> Result<Arc<dyn Provider>, SetupError> {
    let cfg: super::dropbox::DropboxConfig = s.settings.clone().try_into()?;
    Ok(Arc::new(super::dropbox::DropboxProvider::new(
        cfg,
        s.tokens()?,
    )?))
}

fn build_imap(s: &Setup<'_>) -> Result<Arc<dyn Provider>, SetupError> {
    let cfg: super::imap::ImapConfig = s.settings.clone().try_into()?;
    Ok(Arc::new(super::imap::ImapProvider::new(
        cfg,
        Some(s.state_dir.join("imap")),
        s.tokens.clone(),
    )?))
}

/// Atlassian connections sign in with an API token unless `auth = "oauth"`.
fn atlassian_oauth(settings: &toml::Table) -> bool {
    settings.get("auth").and_then(|v| v.as_str()) == Some("oauth")
}

fn confluence_oauth(settings: &toml::Table) -> Option<OAuthDefaults> {
    atlassian_oauth(settings).then_some(OAuthClientConfig::confluence as OAuthDefaults)
}

fn jira_oauth(settings: &toml::Table) -> Option<OAuthDefaults> {
    atlassian_oauth(settings).then_some(OAuthClientConfig::jira as OAuthDefaults)
}

fn build_confluence(s: &Setup<'_>) -> Result<Arc<dyn Provider>, SetupError> {
    use super::atlassian::confluence::{ConfluenceConfig, ConfluenceProvider};
    let cfg = ConfluenceConfig::from_settings(&s.settings)?;
    Ok(Arc::new(ConfluenceProvider::new(cfg, s.tokens.clone())?))
}

fn build_jira(s: &Setup<'_>) -> Result<Arc<dyn Provider>, SetupError> {
    use super::atlassian::jira::{JiraConfig, JiraProvider};
    let cfg = JiraConfig::from_settings(&s.settings)?;
    Ok(Arc::new(JiraProvider::new(cfg, s.tokens.clone())?))
}

/// Why a connection could not be turned into a provider.
#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    #[error(
        "connection {name:?}: unknown type {kind:?} (known: {})",
        known_kinds()
    )]
    UnknownType { name: String, kind: String },
    #[error("type {0:?} does not log in with OAuth")]
    NoOAuth(String),
    #[error("{0}")]
    Account(#[from] AccountError),
    /// The cause is in the message too: the command line shows only the outermost error.
    #[error("connection {name:?}: {source}")]
    Setup {
        name: String,
        #[source]
        source: SetupError,
    },
}

/// The kind a connection `type` names, by its name or an alias.
pub fn lookup(kind: &str) -> Option<&'static ProviderKind> {
    KINDS
        .iter()
        .find(|k| k.kind == kind || k.aliases.contains(&kind))
}

/// "local, webdav, owncloud, ...": every name `type` accepts.
pub fn known_kinds() -> String {
    KINDS
        .iter()
        .flat_map(|k| std::iter::once(k.kind).chain(k.aliases.iter().copied()))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Whether this connection logs in with OAuth (`cloudmount login`).
pub fn uses_oauth(c: &ConnectionConfig) -> bool {
    oauth_defaults(c).is_some()
}

fn oauth_defaults(c: &ConnectionConfig) -> Option<OAuthDefaults> {
    lookup(&c.kind).and_then(|k| k.oauth.defaults(&c.settings))
}

/// The OAuth client of a connection (its kind's defaults, overridden by its settings) and
/// its remaining, provider, settings.
pub fn oauth_client(
    c: &ConnectionConfig,
) -> Result<(OAuthClientConfig, toml::Table), RegistryError> {
    let defaults = oauth_defaults(c).ok_or_else(|| RegistryError::NoOAuth(c.kind.clone()))?;
    Ok(connection::split_settings(c, defaults)?)
}

/// The provider of a connection, not yet wrapped in the instrumentation every connection
/// gets (`daemon::build_connection` does that).
/// `state_dir` is the daemon's; the connection's own folder is made inside it.
pub fn build(
    cfg: &Config,
    c: &ConnectionConfig,
    state_dir: &std::path::Path,
) -> Result<Arc<dyn Provider>, RegistryError> {
    let kind = lookup(&c.kind).ok_or_else(|| RegistryError::UnknownType {
        name: c.name.clone(),
        kind: c.kind.clone(),
    })?;
    // Connection names are folder names under the mount root: never '/' or "..".
    let own_dir = state_dir.join("providers").join(&c.name);
    let setup_error = |source: SetupError| RegistryError::Setup {
        name: c.name.clone(),
        source,
    };
    let setup = match kind.oauth.defaults(&c.settings) {
        None => Setup {
            connection: c,
            settings: c.settings.clone(),
            tokens: None,
            state_dir: own_dir,
        },
        Some(defaults) => {
            let (oauth, settings) = connection::split_settings(c, defaults)
                .and_then(|(oauth, rest)| Ok((connection::token_source(cfg, c, &oauth)?, rest)))
                .map_err(|e| setup_error(e.into()))?;
            Setup {
                connection: c,
                settings,
                tokens: Some(oauth),
                state_dir: own_dir,
            }
        }
    };
    (kind.build)(&setup).map_err(setup_error)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn connection(toml_text: &str) -> ConnectionConfig {
        toml::from_str(toml_text).unwrap()
    }

    #[test]
    fn every_name_finds_its_kind() {
        for (name, kind) in [
            ("local", "local"),
            ("webdav", "webdav"),
            ("owncloud", "webdav"),
            ("nextcloud", "webdav"),
            ("gdrive", "gdrive"),
            ("onedrive", "onedrive"),
            ("sharepoint", "onedrive"),
            ("dropbox", "dropbox"),
            ("imap", "imap"),
        ] {
            assert_eq!(lookup(name).map(|k| k.kind), Some(kind), "{name}");
        }
        assert!(lookup("box").is_none());
        let uses = |kind: &str, settings: &str| {
            uses_oauth(&connection(&format!(
                "name = \"x\"\ntype = \"{kind}\"\nsettings = {{ {settings} }}"
            )))
        };
        assert!(uses("gdrive", "") && uses("onedrive", "") && uses("dropbox", ""));
        assert!(!uses("nextcloud", "") && !uses("local", ""));
        assert!(!uses("imap", "user = \"u\"") && uses("imap", "auth = \"xoauth2\""));
        for kind in ["confluence", "jira"] {
            assert!(!uses(kind, "site = \"https://x\"") && uses(kind, "auth = \"oauth\""));
        }
        let names = known_kinds();
        assert_eq!(
            names,
            "local, webdav, owncloud, nextcloud, gdrive, onedrive, sharepoint, dropbox, confluence, jira, imap"
        );
    }

    #[test]
    fn an_unknown_type_lists_the_known_ones() {
        let c = connection("name = \"x\"\ntype = \"ftp\"");
        let err = build(&Config::default(), &c, std::path::Path::new("/nonexistent"))
            .err()
            .unwrap();
        assert!(matches!(err, RegistryError::UnknownType { .. }), "{err}");
        assert_eq!(
            err.to_string(),
            "connection \"x\": unknown type \"ftp\" (known: local, webdav, owncloud, nextcloud, gdrive, onedrive, sharepoint, dropbox, confluence, jira, imap)"
        );
    }

    #[test]
    fn a_failing_constructor_names_the_connection_and_keeps_the_cause() {
        let c = connection("name = \"box\"\ntype = \"local\"");
        let err = build(&Config::default(), &c, std::path::Path::new("/nonexistent"))
            .err()
            .unwrap();
        assert_eq!(
            err.to_string(),
            "connection \"box\": type \"local\" needs `path`"
        );
        assert!(std::error::Error::source(&err).is_some());
    }

    #[test]
    fn an_alias_builds_its_kind() {
        let c = connection(
            "name = \"oc\"\ntype = \"owncloud\"\nsettings = { url = \"http://127.0.0.1:9/dav/\" }",
        );
        assert_eq!(
            build(&Config::default(), &c, std::path::Path::new("/nonexistent"))
                .unwrap()
                .kind(),
            "webdav"
        );
    }

    #[test]
    fn oauth_settings_are_split_only_for_oauth_kinds() {
        let drive = connection(
            "name = \"d\"\ntype = \"gdrive\"\nsettings = { client_id = \"cid\", token_url = \"http://127.0.0.1:9/t\", api_base = \"x\" }",
        );
        let (oauth, rest) = oauth_client(&drive).unwrap();
        assert_eq!(oauth.client_id, "cid");
        assert_eq!(oauth.token_url, "http://127.0.0.1:9/t");
        assert_eq!(oauth.auth_url, OAuthClientConfig::google("", None).auth_url);
        assert_eq!(rest.keys().collect::<Vec<_>>(), vec!["api_base"]);

        let dav = connection("name = \"w\"\ntype = \"webdav\"\nsettings = { url = \"http://h/\" }");
        let err = oauth_client(&dav).err().unwrap();
        assert_eq!(
            err.to_string(),
            "type \"webdav\" does not log in with OAuth"
        );
    }
}
