//! Configuration of a WebDAV connection: [`WebdavConfig`] (what the provider is built
//! from) and how it is read from a `[[connection]]` of the config file
//! ([`WebdavConfig::from_settings`]), secrets included.

use std::fmt;
use std::path::PathBuf;

use serde::Deserialize;

use crate::config::ByteSize;
use crate::secrets::{read_secret_file, run_secret_command, SecretError};

/// Whether large uploads use Nextcloud's chunked upload (v2).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ChunkedMode {
    /// Chunk when the URL has Nextcloud's `.../remote.php/dav/files/USER` shape.
    #[default]
    Auto,
    Off,
    /// Always chunk files larger than `chunk_size`; the URL must have the Nextcloud shape.
    Nextcloud,
}

fn default_timeout_secs() -> u64 {
    60
}

fn default_chunk_size() -> u64 {
    super::chunked::DEFAULT_CHUNK_SIZE
}

fn default_max_retries() -> u32 {
    3
}

fn default_retry_base_ms() -> u64 {
    250
}

fn default_retry_budget_secs() -> u64 {
    20
}

/// Which server family the connection was declared as (the connection's `type`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ServerType {
    #[default]
    Webdav,
    Owncloud,
    Nextcloud,
}

impl ServerType {
    /// The connection types that name a WebDAV server ("webdav", "owncloud", "nextcloud").
    pub fn from_connection_type(kind: &str) -> Option<ServerType> {
        match kind {
            "webdav" => Some(ServerType::Webdav),
            "owncloud" => Some(ServerType::Owncloud),
            "nextcloud" => Some(ServerType::Nextcloud),
            _ => None,
        }
    }
}

/// Whether simple uploads go to a temporary name first and are then moved into place.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AtomicUploads {
    /// On, except for ownCloud/Nextcloud (declared by type, or recognized by their
    /// `remote.php` URL), which already write a PUT through a `.part` file.
    #[default]
    Auto,
    On,
    Off,
}

/// Configuration of one WebDAV account.
#[derive(Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WebdavConfig {
    /// Base URL; may carry a path prefix, e.g. `https://host/remote.php/dav/files/USER/`.
    pub url: String,
    #[serde(default)]
    pub user: Option<String>,
    /// Already resolved by the caller (from a command or a secrets file).
    #[serde(default)]
    pub password: Option<String>,
    #[serde(default)]
    pub bearer_token: Option<String>,
    /// PEM file with extra CA certificates to trust besides the system ones.
    #[serde(default)]
    pub extra_ca_file: Option<PathBuf>,
    /// Connect timeout, and the longest wait for any read from the server.
    #[serde(default = "default_timeout_secs")]
    pub timeout_secs: u64,
    #[serde(default)]
    pub chunked_upload: ChunkedMode,
    /// Files larger than this are uploaded in chunks of this size (when chunking applies).
    #[serde(default = "default_chunk_size")]
    pub chunk_size: u64,
    /// What kind of server the connection was declared as; only `atomic_uploads = auto`
    /// looks at it.
    #[serde(default)]
    pub server_type: ServerType,
    #[serde(default)]
    pub atomic_uploads: AtomicUploads,
    /// Retries of one failed request (see `provider::kit::retry` for which ones).
    #[serde(default = "default_max_retries")]
    pub max_retries: u32,
    /// Upper bound of the first retry's wait; doubles with each retry (full jitter).
    #[serde(default = "default_retry_base_ms")]
    pub retry_base_delay_ms: u64,
    /// Retries of one request stop after this long; a longer `Retry-After` is reported as
    /// `RateLimited` for the write-back queue to wait out.
    #[serde(default = "default_retry_budget_secs")]
    pub retry_budget_secs: u64,
}

impl WebdavConfig {
    /// A config with defaults for everything but the URL.
    pub fn new(url: impl Into<String>) -> Self {
        WebdavConfig {
            url: url.into(),
            user: None,
            password: None,
            bearer_token: None,
            extra_ca_file: None,
            timeout_secs: default_timeout_secs(),
            chunked_upload: ChunkedMode::default(),
            chunk_size: default_chunk_size(),
            server_type: ServerType::default(),
            atomic_uploads: AtomicUploads::default(),
            max_retries: default_max_retries(),
            retry_base_delay_ms: default_retry_base_ms(),
            retry_budget_secs: default_retry_budget_secs(),
        }
    }
}

/// Secrets never reach logs, even through `{:?}` of the config.
impl fmt::Debug for WebdavConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WebdavConfig")
            .field("url", &self.url)
            .field("user", &self.user)
            .field("password", &self.password.as_ref().map(|_| "<redacted>"))
            .field(
                "bearer_token",
                &self.bearer_token.as_ref().map(|_| "<redacted>"),
            )
            .field("extra_ca_file", &self.extra_ca_file)
            .field("timeout_secs", &self.timeout_secs)
            .field("chunked_upload", &self.chunked_upload)
            .field("chunk_size", &self.chunk_size)
            .field("server_type", &self.server_type)
            .field("atomic_uploads", &self.atomic_uploads)
            .field("max_retries", &self.max_retries)
            .field("retry_base_delay_ms", &self.retry_base_delay_ms)
            .field("retry_budget_secs", &self.retry_budget_secs)
            .finish()
    }
}

/// WebDAV settings as written in the config: secrets come from a file or a command,
/// never inline, so the config file itself can be shared or committed.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct WebdavSettings {
    url: String,
    user: Option<String>,
    password_file: Option<PathBuf>,
    password_command: Option<String>,
    bearer_token_file: Option<PathBuf>,
    extra_ca_file: Option<PathBuf>,
    timeout_secs: Option<u64>,
    chunked_upload: Option<ChunkedMode>,
    chunk_size: Option<ByteSize>,
    atomic_uploads: Option<AtomicUploads>,
    max_retries: Option<u32>,
    retry_base_delay_ms: Option<u64>,
    retry_budget_secs: Option<u64>,
}

/// Why a connection's settings do not make a WebDAV configuration.
#[derive(Debug, thiserror::Error)]
pub enum WebdavConfigError {
    #[error("{0}")]
    Settings(#[from] toml::de::Error),
    #[error("{0}")]
    Secret(#[from] SecretError),
}

impl WebdavConfig {
    /// The configuration of a connection of type `kind` ("webdav", "owncloud",
    /// "nextcloud": it sets [`ServerType`]) with these `settings`. The password comes from
    /// `password_file` when both it and `password_command` are given.
    pub fn from_settings(kind: &str, settings: &toml::Table) -> Result<Self, WebdavConfigError> {
        let s: WebdavSettings = settings.clone().try_into()?;
        let mut cfg = WebdavConfig::new(s.url);
        cfg.user = s.user;
        let password = match (&s.password_file, &s.password_command) {
            (Some(f), _) => Some(read_secret_file(f)?),
            (None, Some(cmd)) => Some(run_secret_command(cmd)?),
            (None, None) => None,
        };
        cfg.password = password.map(|p| p.expose().to_owned());
        if let Some(f) = &s.bearer_token_file {
            cfg.bearer_token = Some(read_secret_file(f)?.expose().to_owned());
        }
        cfg.extra_ca_file = s.extra_ca_file;
        if let Some(t) = s.timeout_secs {
            cfg.timeout_secs = t;
        }
        if let Some(m) = s.chunked_upload {
            cfg.chunked_upload = m;
        }
        if let Some(cs) = s.chunk_size {
            cfg.chunk_size = cs.0;
        }
        cfg.server_type = ServerType::from_connection_type(kind).unwrap_or_default();
        if let Some(a) = s.atomic_uploads {
            cfg.atomic_uploads = a;
        }
        if let Some(n) = s.max_retries {
            cfg.max_retries = n;
        }
        if let Some(ms) = s.retry_base_delay_ms {
            cfg.retry_base_delay_ms = ms;
        }
        if let Some(secs) = s.retry_budget_secs {
            cfg.retry_budget_secs = secs;
        }
        Ok(cfg)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn config_debug_redacts_secrets() {
        let mut cfg = WebdavConfig::new("https://h/");
        cfg.password = Some("hunter2".into());
        cfg.bearer_token = Some("tok-secret".into());
        let s = format!("{cfg:?}");
        assert!(!s.contains("hunter2") && !s.contains("tok-secret"), "{s}");
    }

    #[test]
    fn config_serde_defaults() {
        let cfg: WebdavConfig =
            toml::from_str("url = \"https://h/x/\"\nchunked_upload = \"off\"").unwrap();
        assert_eq!(cfg.timeout_secs, 60);
        assert_eq!(cfg.chunked_upload, ChunkedMode::Off);
        assert_eq!(cfg.chunk_size, super::super::chunked::DEFAULT_CHUNK_SIZE);
        assert!(toml::from_str::<WebdavConfig>("url = \"x\"\nbogus = 1").is_err());
    }

    #[test]
    fn settings_keep_every_field_and_the_server_type() {
        let dir = tempfile::tempdir().unwrap();
        let pw = dir.path().join("pw");
        std::fs::write(&pw, "hunter2\n").unwrap();
        std::fs::set_permissions(&pw, std::fs::Permissions::from_mode(0o600)).unwrap();
        let settings: toml::Table = toml::from_str(&format!(
            r#"
            url = "https://h/remote.php/dav/files/u/"
            user = "u"
            password_file = "{}"
            timeout_secs = 7
            chunked_upload = "off"
            chunk_size = "2MiB"
            atomic_uploads = "on"
            max_retries = 9
            retry_base_delay_ms = 11
            retry_budget_secs = 13
            "#,
            pw.display()
        ))
        .unwrap();
        let cfg = WebdavConfig::from_settings("nextcloud", &settings).unwrap();
        assert_eq!(cfg.user.as_deref(), Some("u"));
        assert_eq!(cfg.password.as_deref(), Some("hunter2"));
        assert_eq!(cfg.timeout_secs, 7);
        assert_eq!(cfg.chunked_upload, ChunkedMode::Off);
        assert_eq!(cfg.chunk_size, 2 << 20);
        assert_eq!(cfg.atomic_uploads, AtomicUploads::On);
        assert_eq!(cfg.max_retries, 9);
        assert_eq!(cfg.retry_base_delay_ms, 11);
        assert_eq!(cfg.retry_budget_secs, 13);
        assert_eq!(cfg.server_type, ServerType::Nextcloud);

        let plain: toml::Table = toml::from_str(r#"url = "https://h/""#).unwrap();
        let cfg = WebdavConfig::from_settings("webdav", &plain).unwrap();
        assert_eq!(cfg.server_type, ServerType::Webdav);
        assert_eq!(cfg.password, None);
    }

    #[test]
    fn settings_refuse_unknown_keys_and_inline_passwords() {
        let inline: toml::Table = toml::from_str("url = \"https://h/\"\npassword = \"x\"").unwrap();
        let err = WebdavConfig::from_settings("webdav", &inline).unwrap_err();
        assert!(matches!(err, WebdavConfigError::Settings(_)), "{err}");
    }
}
