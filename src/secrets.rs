//! Secrets: how they are held in memory and how a configuration gets them.
//!
//! A leaf module (it imports nothing from cloudmount) so that every configuration reader
//! — the provider registry, each provider's `config.rs`, the accounts code — can use it
//! without importing one another. Configuration files never carry secrets inline: they
//! name a file only its owner may read ([`read_secret_file`]) or a command that prints the
//! secret ([`run_secret_command`]), so the configuration itself can be shared or committed.

use std::fmt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// A string that must never be logged. `Debug` and `Display` print `<redacted>`.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Secret(String);

impl Secret {
    pub fn new(s: impl Into<String>) -> Self {
        Secret(s.into())
    }

    /// The secret itself; call sites are easy to audit with a grep for `expose`.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

/// Why a secret could not be had. No variant carries the secret, or any part of it.
#[derive(Debug, thiserror::Error)]
pub enum SecretError {
    #[error("{}: {source}", path.display())]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    /// Group or others may read the file: refused, so a leaked secret is noticed at once
    /// rather than after it has been copied.
    #[error("{} is readable by others; run: chmod 600 {}", path.display(), path.display())]
    OpenToOthers { path: PathBuf },
    #[error("cannot run password_command: {0}")]
    Spawn(#[source] std::io::Error),
    #[error("password_command failed ({0})")]
    CommandFailed(std::process::ExitStatus),
    #[error("password_command printed something that is not UTF-8")]
    NotUtf8(#[source] std::string::FromUtf8Error),
}

/// Read a secret from a file that only its owner may read. One trailing line break (as
/// editors and `echo` leave) is not part of the secret.
pub fn read_secret_file(path: &Path) -> Result<Secret, SecretError> {
    use std::os::unix::fs::MetadataExt;
    let read_error = |source| SecretError::Read {
        path: path.to_path_buf(),
        source,
    };
    let meta = std::fs::metadata(path).map_err(read_error)?;
    if meta.mode() & 0o077 != 0 {
        return Err(SecretError::OpenToOthers {
            path: path.to_path_buf(),
        });
    }
    let text = std::fs::read_to_string(path).map_err(read_error)?;
    Ok(Secret::new(text.trim_end_matches(['\n', '\r'])))
}

/// Run `cmd` with `sh -c` and take what it prints on standard output (without trailing
/// line breaks) as the secret: the way to use a password manager (`pass show dav`).
pub fn run_secret_command(cmd: &str) -> Result<Secret, SecretError> {
    let out = std::process::Command::new("sh")
        .arg("-c")
        .arg(cmd)
        .output()
        .map_err(SecretError::Spawn)?;
    if !out.status.success() {
        return Err(SecretError::CommandFailed(out.status));
    }
    let text = String::from_utf8(out.stdout).map_err(SecretError::NotUtf8)?;
    Ok(Secret::new(text.trim_end_matches(['\n', '\r'])))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn a_secret_never_prints_its_value() {
        let s = Secret::new("hunter2");
        assert_eq!(format!("{s}"), "<redacted>");
        assert_eq!(format!("{s:?}"), "<redacted>");
        assert_eq!(s.expose(), "hunter2");
    }

    #[test]
    fn a_secret_file_must_be_private() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("pw");
        std::fs::write(&path, "hunter2\n").unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o640)).unwrap();
        let err = read_secret_file(&path).unwrap_err();
        assert!(matches!(err, SecretError::OpenToOthers { .. }), "{err}");
        assert!(err.to_string().contains("chmod 600"), "{err}");
        assert!(!err.to_string().contains("hunter2"), "{err}");

        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        assert_eq!(read_secret_file(&path).unwrap().expose(), "hunter2");
    }

    #[test]
    fn a_missing_secret_file_names_the_file() {
        let err = read_secret_file(Path::new("/nonexistent/cloudmount-pw")).unwrap_err();
        assert!(
            err.to_string().contains("/nonexistent/cloudmount-pw"),
            "{err}"
        );
    }

    #[test]
    fn a_secret_command_gives_its_output_or_its_failure() {
        assert_eq!(
            run_secret_command("printf 'pa ss\\n'").unwrap().expose(),
            "pa ss"
        );
        let err = run_secret_command("exit 3").unwrap_err();
        assert!(matches!(err, SecretError::CommandFailed(_)), "{err}");
        assert!(err.to_string().contains("password_command failed"), "{err}");
    }
}
