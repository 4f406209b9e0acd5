//! The configuration file (TOML, `$XDG_CONFIG_HOME/cloudmount/config.toml` by default).

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Deserializer};

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("{0}")]
    Invalid(String),
}

/// A byte size written as a number or with a unit: 5368709120, "5GiB", "20 MiB", "512k".
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ByteSize(pub u64);

impl std::str::FromStr for ByteSize {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let s = s.trim();
        let split = s
            .find(|c: char| !c.is_ascii_digit() && c != '.')
            .unwrap_or(s.len());
        let (num, unit) = s.split_at(split);
        let num: f64 = num
            .parse()
            .map_err(|_| format!("{s:?} is not a size (try 5GiB, 200MiB, 4096)"))?;
        let mult: u64 = match unit.trim().to_ascii_lowercase().as_str() {
            "" | "b" => 1,
            "k" | "kb" | "kib" => 1 << 10,
            "m" | "mb" | "mib" => 1 << 20,
            "g" | "gb" | "gib" => 1 << 30,
            "t" | "tb" | "tib" => 1 << 40,
            other => return Err(format!("unknown size unit {other:?} in {s:?}")),
        };
        Ok(ByteSize((num * mult as f64) as u64))
    }
}

impl<'de> Deserialize<'de> for ByteSize {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            N(u64),
            S(String),
        }
        match Raw::deserialize(d)? {
            Raw::N(n) => Ok(ByteSize(n)),
            Raw::S(s) => s.parse().map_err(serde::de::Error::custom),
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConnectionConfig {
    pub name: String,
    /// Provider type: "local", "webdav", ...
    #[serde(rename = "type")]
    pub kind: String,
    /// local: the folder that plays the cloud.
    #[serde(default)]
    pub path: Option<PathBuf>,
    /// Provider-specific settings (a `[connection.settings]` table).
    #[serde(default)]
    pub settings: toml::Table,
    #[serde(default)]
    pub read_only: bool,
}

fn default_cache_size() -> ByteSize {
    ByteSize(5 << 30)
}
fn default_chunk_size() -> ByteSize {
    ByteSize(4 << 20)
}
fn default_readahead() -> ByteSize {
    ByteSize(64 << 20)
}
fn default_inflight() -> ByteSize {
    ByteSize(64 << 20)
}
fn default_upload_delay() -> f64 {
    2.0
}
fn default_concurrency() -> usize {
    // Small files over a link with latency are bound by round trips, not bandwidth.
    16
}
fn default_attempts() -> u32 {
    12
}
fn default_backoff() -> f64 {
    1.0
}
fn default_backoff_max() -> f64 {
    300.0
}
fn default_dir_ttl() -> f64 {
    30.0
}
fn default_poll() -> f64 {
    30.0
}
fn default_attr_ttl() -> f64 {
    1.0
}
fn default_versions() -> usize {
    30
}
fn default_max_transfers() -> usize {
    32
}
fn default_drain() -> f64 {
    30.0
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    pub mount_point: Option<PathBuf>,
    /// sled metadata, the write-back queue and staging files. Default: XDG state dir.
    pub state_dir: Option<PathBuf>,
    /// Chunk cache. Default: XDG cache dir.
    pub cache_dir: Option<PathBuf>,
    #[serde(default = "default_cache_size")]
    pub cache_size: ByteSize,
    #[serde(default = "default_chunk_size")]
    pub chunk_size: ByteSize,
    #[serde(default = "default_readahead")]
    pub readahead_max: ByteSize,
    /// Bytes of chunk fetches in flight at once, over all files.
    #[serde(default = "default_inflight")]
    pub inflight_budget: ByteSize,
    #[serde(default = "default_upload_delay")]
    pub upload_delay_secs: f64,
    #[serde(default = "default_concurrency")]
    pub upload_concurrency: usize,
    #[serde(default = "default_attempts")]
    pub max_attempts: u32,
    #[serde(default = "default_backoff")]
    pub retry_backoff_secs: f64,
    #[serde(default = "default_backoff_max")]
    pub retry_backoff_max_secs: f64,
    #[serde(default = "default_dir_ttl")]
    pub dir_ttl_secs: f64,
    /// How often remote changes are looked for (delta API, or expired listings).
    #[serde(default = "default_poll")]
    pub poll_interval_secs: f64,
    #[serde(default = "default_attr_ttl")]
    pub attr_ttl_secs: f64,
    #[serde(default = "default_versions")]
    pub versions: usize,
    #[serde(default)]
    pub allow_other: bool,
    #[serde(default)]
    pub read_only: bool,
    /// How long unmount waits for queued uploads before leaving them persisted.
    #[serde(default = "default_drain")]
    pub drain_timeout_secs: f64,
    /// Where encrypted OAuth tokens live (default: XDG data dir, cloudmount/accounts).
    pub accounts_dir: Option<PathBuf>,
    /// When started by root (a system unit, mount(8) for a user): the user the daemon runs
    /// as, so that its folders, files and mount are that user's rather than root's.
    pub run_as: Option<String>,
    /// Serve Prometheus metrics here (loopback only), e.g. "127.0.0.1:9464". Off if unset.
    pub metrics_addr: Option<std::net::SocketAddr>,
    /// Per-connection bandwidth limits in bytes per second (e.g. "10MiB"); unlimited if unset.
    pub download_limit: Option<ByteSize>,
    pub upload_limit: Option<ByteSize>,
    /// Concurrent transfers (reads and uploads) per connection.
    #[serde(default = "default_max_transfers")]
    pub max_transfers: usize,
    #[serde(default, rename = "connection")]
    pub connections: Vec<ConnectionConfig>,
}

impl Default for Config {
    fn default() -> Self {
        toml::from_str("").expect("empty config is valid")
    }
}

pub fn secs(s: f64) -> Duration {
    Duration::from_secs_f64(s.max(0.0))
}

impl Config {
    pub fn default_path() -> PathBuf {
        dirs::config_dir()
            .unwrap_or_else(|| PathBuf::from("/etc"))
            .join("cloudmount")
            .join("config.toml")
    }

    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        let cfg: Config = toml::from_str(&text).map_err(|e| ConfigError::Parse {
            path: path.to_path_buf(),
            message: e.to_string(),
        })?;
        cfg.validate()?;
        Ok(cfg)
    }

    pub fn validate(&self) -> Result<(), ConfigError> {
        let mut seen = std::collections::HashSet::new();
        for c in &self.connections {
            if c.name.is_empty() || c.name.contains('/') || c.name.starts_with('.') {
                return Err(ConfigError::Invalid(format!(
                    "connection name {:?} must be non-empty, without '/', and not start with '.'",
                    c.name
                )));
            }
            if !seen.insert(&c.name) {
                return Err(ConfigError::Invalid(format!(
                    "two connections are named {:?}",
                    c.name
                )));
            }
        }
        if self.chunk_size.0 < 64 << 10 {
            return Err(ConfigError::Invalid(
                "chunk_size must be at least 64KiB".into(),
            ));
        }
        if self.upload_concurrency == 0 {
            return Err(ConfigError::Invalid(
                "upload_concurrency must be at least 1".into(),
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_parse() {
        assert_eq!("5GiB".parse::<ByteSize>().unwrap(), ByteSize(5 << 30));
        assert_eq!("20 MiB".parse::<ByteSize>().unwrap(), ByteSize(20 << 20));
        assert_eq!("4096".parse::<ByteSize>().unwrap(), ByteSize(4096));
        assert!("5 parsecs".parse::<ByteSize>().is_err());
    }

    #[test]
    fn config_parses_connections_and_rejects_unknown_keys() {
        let cfg: Config = toml::from_str(
            r#"
            cache_size = "20MiB"
            [[connection]]
            name = "home"
            type = "local"
            path = "/srv/home"
            "#,
        )
        .unwrap();
        assert_eq!(cfg.cache_size, ByteSize(20 << 20));
        assert_eq!(cfg.connections[0].kind, "local");
        assert!(toml::from_str::<Config>("cache_sise = 1").is_err());
    }
}
