//! Tokens encrypted at rest.
//!
//! Layout of the vault directory (mode 0700):
//! - `vault.key`: 32 random bytes, mode 0600, created on first use;
//! - `<provider>.<name>.token`: one file per account, mode 0600:
//!   `b"CMV1"` ‖ 12-byte random nonce ‖ ChaCha20-Poly1305(JSON of [`StoredTokens`]), with the
//!   account id as associated data so that one account's file renamed to another's does not
//!   decrypt.
//!
//! The key file sits next to the vault, so this protects against the token file being read
//! on its own (a backup, a sync tool, a stray `cat`, a grep), not against someone who can read
//! the whole data dir as the user. That is the same trust boundary as the user's keyring
//! without an unlock prompt, and it works on headless machines.
//!
//! Writes are atomic (temp file + fsync + rename + fsync of the directory), because losing a
//! rotated refresh token half way through a write would log the user out.

use std::fs::{self, File, OpenOptions};
use std::io::{Read, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{ChaCha20Poly1305, Key, Nonce};
use rand::RngCore;
use serde::{Deserialize, Serialize};

use super::{AccountError, AccountId, Secret};

const MAGIC: &[u8; 4] = b"CMV1";
const KEY_FILE: &str = "vault.key";
const NONCE_LEN: usize = 12;

/// What is kept for one account.
#[derive(Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoredTokens {
    pub access_token: Option<Secret>,
    /// Seconds since the Unix epoch.
    pub access_expires_at: Option<u64>,
    pub refresh_token: Option<Secret>,
    /// Scopes granted (which may be fewer than requested).
    #[serde(default)]
    pub scopes: Vec<String>,
    /// Set when the provider refused the refresh token: the account needs a new login.
    #[serde(default)]
    pub needs_login: Option<String>,
}

impl std::fmt::Debug for StoredTokens {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StoredTokens")
            .field(
                "access_token",
                &self.access_token.as_ref().map(|_| "<redacted>"),
            )
            .field("access_expires_at", &self.access_expires_at)
            .field(
                "refresh_token",
                &self.refresh_token.as_ref().map(|_| "<redacted>"),
            )
            .field("scopes", &self.scopes)
            .field("needs_login", &self.needs_login)
            .finish()
    }
}

impl StoredTokens {
    pub fn expires_at(&self) -> Option<SystemTime> {
        self.access_expires_at
            .map(|s| UNIX_EPOCH + Duration::from_secs(s))
    }

    pub fn set_expires_in(&mut self, expires_in: Option<Duration>) {
        self.access_expires_at = expires_in.map(|d| {
            (SystemTime::now() + d)
                .duration_since(UNIX_EPOCH)
                .map(|t| t.as_secs())
                .unwrap_or(0)
        });
    }
}

/// The encrypted token store of one data directory.
pub struct TokenVault {
    dir: PathBuf,
    cipher: ChaCha20Poly1305,
}

impl std::fmt::Debug for TokenVault {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenVault")
            .field("dir", &self.dir)
            .finish_non_exhaustive()
    }
}

fn vault_err(what: &str, path: &Path, e: impl std::fmt::Display) -> AccountError {
    AccountError::Vault(format!("{what} {}: {e}", path.display()))
}

impl TokenVault {
    /// Open (creating if needed) the vault in `dir`.
    pub fn open(dir: &Path) -> Result<Self, AccountError> {
        // Tighten an existing directory too (even one the user chose): the key must not be
        // listable by others.
        let loose = crate::private_fs::ensure_private_dir(dir)
            .map_err(|e| AccountError::Vault(e.to_string()))?;
        if let Some(mode) = loose {
            tracing::warn!(
                folder = %dir.display(),
                mode = format!("{mode:o}"),
                "the token vault folder was open to other users; tightened to 0700"
            );
        }
        let key_path = dir.join(KEY_FILE);
        let key = match File::open(&key_path) {
            Ok(mut f) => {
                check_private(&f, &key_path)?;
                let mut key = Vec::new();
                f.read_to_end(&mut key)
                    .map_err(|e| vault_err("reading", &key_path, e))?;
                if key.len() != 32 {
                    return Err(vault_err("bad key file", &key_path, "not 32 bytes"));
                }
                key
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let mut key = vec![0u8; 32];
                rand::rng().fill_bytes(&mut key);
                // create_new: two processes racing to create the key must not both win with
                // different keys; the loser reads the winner's.
                match write_atomic(&key_path, &key, true) {
                    Ok(()) => key,
                    Err(_) if key_path.exists() => {
                        let key =
                            fs::read(&key_path).map_err(|e| vault_err("reading", &key_path, e))?;
                        if key.len() != 32 {
                            return Err(vault_err("bad key file", &key_path, "not 32 bytes"));
                        }
                        key
                    }
                    Err(e) => return Err(e),
                }
            }
            Err(e) => return Err(vault_err("opening", &key_path, e)),
        };
        Ok(TokenVault {
            dir: dir.to_owned(),
            cipher: ChaCha20Poly1305::new(Key::from_slice(&key)),
        })
    }

    /// The default location: `$XDG_DATA_HOME/cloudmount/accounts`.
    pub fn default_dir() -> Option<PathBuf> {
        dirs::data_dir().map(|d| d.join("cloudmount").join("accounts"))
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn path_for(&self, account: &AccountId) -> PathBuf {
        self.dir
            .join(format!("{}.{}.token", account.provider, account.name))
    }

    fn aad(account: &AccountId) -> Vec<u8> {
        format!(
            "cloudmount-vault-v1\0{}\0{}",
            account.provider, account.name
        )
        .into_bytes()
    }

    pub fn save(&self, account: &AccountId, tokens: &StoredTokens) -> Result<(), AccountError> {
        let path = self.path_for(account);
        let plain = serde_json::to_vec(tokens).map_err(|e| vault_err("encoding", &path, e))?;
        let mut nonce = [0u8; NONCE_LEN];
        rand::rng().fill_bytes(&mut nonce);
        let sealed = self
            .cipher
            .encrypt(
                Nonce::from_slice(&nonce),
                Payload {
                    msg: &plain,
                    aad: &Self::aad(account),
                },
            )
            .map_err(|_| vault_err("encrypting", &path, "AEAD failure"))?;
        let mut out = Vec::with_capacity(MAGIC.len() + NONCE_LEN + sealed.len());
        out.extend_from_slice(MAGIC);
        out.extend_from_slice(&nonce);
        out.extend_from_slice(&sealed);
        write_atomic(&path, &out, false)
    }

    pub fn load(&self, account: &AccountId) -> Result<Option<StoredTokens>, AccountError> {
        let path = self.path_for(account);
        let mut f = match File::open(&path) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(vault_err("opening", &path, e)),
        };
        check_private(&f, &path)?;
        let mut data = Vec::new();
        f.read_to_end(&mut data)
            .map_err(|e| vault_err("reading", &path, e))?;
        if data.len() < MAGIC.len() + NONCE_LEN || &data[..MAGIC.len()] != MAGIC {
            return Err(vault_err(
                "not a cloudmount token file",
                &path,
                "bad header",
            ));
        }
        let (nonce, sealed) = data[MAGIC.len()..].split_at(NONCE_LEN);
        let plain = self
            .cipher
            .decrypt(
                Nonce::from_slice(nonce),
                Payload {
                    msg: sealed,
                    aad: &Self::aad(account),
                },
            )
            .map_err(|_| {
                vault_err(
                    "cannot decrypt",
                    &path,
                    "wrong key or corrupted file (log in again)",
                )
            })?;
        serde_json::from_slice(&plain)
            .map(Some)
            .map_err(|e| vault_err("decoding", &path, e))
    }

    pub fn delete(&self, account: &AccountId) -> Result<(), AccountError> {
        let path = self.path_for(account);
        match fs::remove_file(&path) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(vault_err("deleting", &path, e)),
        }
    }

    /// Accounts with a token file.
    pub fn accounts(&self) -> Result<Vec<AccountId>, AccountError> {
        let mut out = Vec::new();
        let rd = fs::read_dir(&self.dir).map_err(|e| vault_err("listing", &self.dir, e))?;
        for ent in rd.flatten() {
            let name = ent.file_name();
            let Some(stem) = name.to_str().and_then(|n| n.strip_suffix(".token")) else {
                continue;
            };
            if let Some((provider, name)) = stem.split_once('.') {
                if let Ok(id) = AccountId::new(provider, name) {
                    out.push(id);
                }
            }
        }
        out.sort_by(|a, b| (&a.provider, &a.name).cmp(&(&b.provider, &b.name)));
        Ok(out)
    }
}

/// Refuse key or token files that others can read: they were copied around carelessly, and
/// using them silently would hide that.
fn check_private(f: &File, path: &Path) -> Result<(), AccountError> {
    let mode = f
        .metadata()
        .map_err(|e| vault_err("stat", path, e))?
        .permissions()
        .mode();
    if mode & 0o077 != 0 {
        return Err(vault_err(
            "refusing to use",
            path,
            format_args!("mode {:o} lets others read it; chmod 600 it", mode & 0o777),
        ));
    }
    Ok(())
}

/// Write `data` to `path` atomically with mode 0600: temp file, fsync, rename, fsync dir.
/// With `create_new`, fail if `path` already exists (hard link instead of rename).
fn write_atomic(path: &Path, data: &[u8], create_new: bool) -> Result<(), AccountError> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let mut suffix = [0u8; 6];
    rand::rng().fill_bytes(&mut suffix);
    let tmp = dir.join(format!(
        ".{}.tmp-{}",
        path.file_name().and_then(|n| n.to_str()).unwrap_or("vault"),
        hex::encode(suffix)
    ));
    let result = (|| -> std::io::Result<()> {
        let mut f = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&tmp)?;
        f.write_all(data)?;
        f.sync_all()?;
        drop(f);
        if create_new {
            fs::hard_link(&tmp, path)?;
            fs::remove_file(&tmp)?;
        } else {
            fs::rename(&tmp, path)?;
        }
        File::open(dir)?.sync_all()
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result.map_err(|e| vault_err("writing", path, e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roundtrip_and_binding() {
        let dir = tempfile::tempdir().unwrap();
        let vault = TokenVault::open(dir.path()).unwrap();
        let a = AccountId::new("gdrive", "work").unwrap();
        let b = AccountId::new("gdrive", "home").unwrap();
        let t = StoredTokens {
            access_token: Some(Secret::new("ya29.ACCESS")),
            refresh_token: Some(Secret::new("1//REFRESH")),
            access_expires_at: Some(42),
            ..Default::default()
        };
        vault.save(&a, &t).unwrap();
        assert_eq!(vault.load(&a).unwrap(), Some(t));
        let raw = fs::read(vault.path_for(&a)).unwrap();
        assert!(!raw.windows(6).any(|w| w == b"REFRES"));
        // A file moved to another account's name must not decrypt.
        fs::copy(vault.path_for(&a), vault.path_for(&b)).unwrap();
        assert!(vault.load(&b).is_err());
        assert_eq!(vault.accounts().unwrap().len(), 2);
        // Reopening uses the same key.
        let again = TokenVault::open(dir.path()).unwrap();
        assert!(again.load(&a).unwrap().is_some());
        assert!(format!("{:?}", again.load(&a).unwrap()).contains("<redacted>"));
    }
}
