//! The provider trait: everything the rest of cloudmount knows about a storage backend.
//!
//! Providers speak in remote paths ("/dir/file.txt", always absolute, `/` separated, never
//! with a trailing slash except the root "/"). They know nothing about FUSE, inodes, caching
//! or the write-back queue; that is the filesystem layer's business.

pub mod atlassian;
pub mod dropbox;
pub mod gdrive;
pub mod imap;
pub mod instrumented;
pub mod kit;
pub mod local;
pub mod memory;
pub mod onedrive;
pub mod registry;
pub mod webdav;

use std::path::Path;
use std::pin::Pin;
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use bytes::Bytes;
use futures::Stream;
use serde::{Deserialize, Serialize};

/// Errors a provider reports. The filesystem layer maps these onto its own error type.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum ProviderError {
    #[error("not found: {0}")]
    NotFound(String),
    #[error("already exists: {0}")]
    AlreadyExists(String),
    #[error("not a directory: {0}")]
    NotADirectory(String),
    #[error("is a directory: {0}")]
    IsADirectory(String),
    #[error("directory not empty: {0}")]
    DirectoryNotEmpty(String),
    /// Credentials missing, expired beyond refresh, or revoked.
    #[error("authentication failed: {0}")]
    Auth(String),
    #[error("permission denied: {0}")]
    PermissionDenied(String),
    /// The provider cannot represent this (hard links, device nodes, ...).
    #[error("not supported by this provider: {0}")]
    Unsupported(String),
    #[error("name not allowed by the provider: {0}")]
    InvalidName(String),
    #[error("insufficient storage on the provider")]
    InsufficientStorage,
    /// The remote object no longer matches the revision the caller expected.
    #[error("remote changed: {0}")]
    PreconditionFailed(String),
    #[error("rate limited")]
    RateLimited { retry_after: Option<Duration> },
    /// Network failures, timeouts, 5xx, locked resources: worth retrying.
    #[error("temporary failure: {0}")]
    Transient(String),
    /// The server answered something we could not understand.
    #[error("bad reply from server: {0}")]
    Protocol(String),
    #[error("I/O error: {0}")]
    Io(String),
}

impl ProviderError {
    /// Whether retrying the same request later may succeed.
    pub fn is_retryable(&self) -> bool {
        matches!(
            self,
            ProviderError::Transient(_)
                | ProviderError::RateLimited { .. }
                | ProviderError::InsufficientStorage
                | ProviderError::Io(_)
        )
    }
}

impl From<std::io::Error> for ProviderError {
    fn from(e: std::io::Error) -> Self {
        use std::io::ErrorKind::*;
        match e.kind() {
            NotFound => ProviderError::NotFound(e.to_string()),
            AlreadyExists => ProviderError::AlreadyExists(e.to_string()),
            PermissionDenied => ProviderError::PermissionDenied(e.to_string()),
            NotADirectory => ProviderError::NotADirectory(e.to_string()),
            IsADirectory => ProviderError::IsADirectory(e.to_string()),
            DirectoryNotEmpty => ProviderError::DirectoryNotEmpty(e.to_string()),
            StorageFull => ProviderError::InsufficientStorage,
            _ => ProviderError::Io(e.to_string()),
        }
    }
}

/// An account failure as a provider reports it. Here rather than in `accounts`, which
/// providers build on: the accounts code stays free of provider imports.
impl From<crate::accounts::AccountError> for ProviderError {
    fn from(e: crate::accounts::AccountError) -> Self {
        use crate::accounts::AccountError;
        match e {
            AccountError::Network(_) => ProviderError::Transient(e.to_string()),
            AccountError::Vault(_) => ProviderError::Io(e.to_string()),
            _ => ProviderError::Auth(e.to_string()),
        }
    }
}

/// What a provider that cannot change the remote answers to a change.
///
/// `PermissionDenied`, not `Unsupported`: the remote refuses the change as a whole, it is
/// not that this one kind of object cannot be represented. The filesystem does not get this
/// far for such a provider (`daemon::build_connection` mounts it read-only, see
/// [`Capabilities::writable`]); the error is for other callers of the trait.
pub fn read_only_error(kind: &str, op: &str, path: &str) -> ProviderError {
    ProviderError::PermissionDenied(format!("{op} {path}: {kind} connections are read-only"))
}

pub type ProviderResult<T> = Result<T, ProviderError>;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum EntryKind {
    File,
    Dir,
    Symlink,
}

/// One object on the remote side.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RemoteEntry {
    /// Stable identifier (a file id, or the path for path-addressed providers).
    pub id: String,
    pub name: String,
    pub kind: EntryKind,
    pub size: u64,
    pub mtime: SystemTime,
    /// Changes whenever the content changes (etag, version, mtime+size...).
    pub revision: String,
    /// Content hash as "algo:hex" when the provider gives one.
    pub hash: Option<String>,
    /// Unix permission bits, for providers that store them.
    pub mode: Option<u32>,
    pub symlink_target: Option<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Quota {
    pub total: Option<u64>,
    pub used: Option<u64>,
    pub available: Option<u64>,
}

/// What a provider can do beyond the required operations.
#[derive(Debug, Clone)]
pub struct Capabilities {
    /// `changes_since` is implemented.
    pub delta: bool,
    /// `wait_for_changes` is implemented (a long poll on the change feed).
    pub long_poll: bool,
    /// `list_versions` / `read_version` / `restore_version` are implemented.
    pub native_versions: bool,
    pub case_insensitive: bool,
    /// Longest name (in bytes) the provider accepts.
    pub max_name_len: usize,
    /// Longest remote path (in bytes, "/a/b") the provider accepts: a deeper path is
    /// refused with ENAMETOOLONG up front instead of queueing an upload that cannot land.
    pub max_path_len: usize,
    /// Characters the provider refuses in names.
    pub forbidden_chars: Vec<char>,
    pub symlinks: bool,
    /// `set_mode` / `set_mtime` keep values on the remote.
    pub unix_attrs: bool,
    /// A directory's revision changes whenever anything below it changes (ownCloud and
    /// Nextcloud ETags), so one look at the root tells whether anything changed.
    pub propagated_dir_revisions: bool,
    /// The provider can change the remote. When false, its connection is mounted
    /// read-only (every change is EROFS) and it need implement only the reading methods.
    pub writable: bool,
    /// Listed sizes are only hints (IMAP's RFC822.SIZE is wrong on some servers): when a
    /// file is opened, the size `stat` gives wins, and the kernel is told. `stat` must
    /// then be cheap once a file's true size is known.
    pub size_hints: bool,
}

impl Default for Capabilities {
    fn default() -> Self {
        Capabilities {
            delta: false,
            long_poll: false,
            native_versions: false,
            case_insensitive: false,
            max_name_len: 255,
            // Linux's PATH_MAX (4096) counts the terminating NUL.
            max_path_len: 4095,
            forbidden_chars: vec![],
            symlinks: false,
            unix_attrs: false,
            propagated_dir_revisions: false,
            writable: true,
            size_hints: false,
        }
    }
}

/// A remote change reported by a delta API.
#[derive(Debug, Clone)]
pub enum Change {
    Upserted { path: String, entry: RemoteEntry },
    Removed { path: String },
}

#[derive(Debug, Clone)]
pub struct ChangeBatch {
    pub changes: Vec<Change>,
    pub cursor: String,
}

/// A revision kept natively by the provider.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct NativeVersion {
    pub id: String,
    pub mtime: SystemTime,
    pub size: u64,
    pub hash: Option<String>,
}

#[derive(Debug, Clone, Default)]
pub struct UploadOptions {
    /// Refuse the upload (PreconditionFailed) unless the current remote revision is this.
    /// `Some(None)` means "the file must not exist yet".
    pub expected_revision: Option<Option<String>>,
    pub mtime: Option<SystemTime>,
    pub mode: Option<u32>,
}

pub type ByteStream = Pin<Box<dyn Stream<Item = ProviderResult<Bytes>> + Send>>;
pub type ListStream<'a> = Pin<Box<dyn Stream<Item = ProviderResult<Vec<RemoteEntry>>> + Send + 'a>>;

#[async_trait]
pub trait Provider: Send + Sync + 'static {
    /// Human-readable kind, e.g. "local", "webdav".
    fn kind(&self) -> &'static str;

    fn capabilities(&self) -> Capabilities;

    /// The entries of a directory, one page at a time.
    fn list<'a>(&'a self, dir: &'a str) -> ListStream<'a>;

    async fn stat(&self, path: &str) -> ProviderResult<RemoteEntry>;

    /// Bytes `[offset, offset+len)` of the file (fewer at end of file). When `revision`
    /// is given and the remote no longer has it, fails with PreconditionFailed.
    async fn read_range(
        &self,
        path: &str,
        revision: Option<&str>,
        offset: u64,
        len: u64,
    ) -> ProviderResult<ByteStream>;

    // Changing the remote. A read-only provider (`Capabilities::writable` false) leaves
    // all of these out; what it gets answers `read_only_error`. A writable one must
    // implement upload, mkdir, rename, delete and copy, and may leave out symlink (not
    // representable) and set_mode / set_mtime (nothing to keep): for those the defaults
    // keep the answers writable providers always had.

    /// Replace (or create) the file at `path` with the contents of the local file `source`.
    async fn upload(
        &self,
        path: &str,
        _source: &Path,
        _options: &UploadOptions,
    ) -> ProviderResult<RemoteEntry> {
        Err(read_only_error(self.kind(), "upload", path))
    }

    async fn mkdir(&self, path: &str) -> ProviderResult<RemoteEntry> {
        Err(read_only_error(self.kind(), "mkdir", path))
    }

    /// Move `from` to `to`, replacing a file at `to` when `overwrite`.
    async fn rename(&self, from: &str, _to: &str, _overwrite: bool) -> ProviderResult<RemoteEntry> {
        Err(read_only_error(self.kind(), "rename", from))
    }

    /// Remove a file, or an empty directory.
    async fn delete(&self, path: &str) -> ProviderResult<()> {
        Err(read_only_error(self.kind(), "delete", path))
    }

    /// Server-side copy of a file.
    async fn copy(&self, _from: &str, to: &str) -> ProviderResult<RemoteEntry> {
        Err(read_only_error(self.kind(), "copy", to))
    }

    async fn symlink(&self, path: &str, _target: &str) -> ProviderResult<RemoteEntry> {
        if !self.capabilities().writable {
            return Err(read_only_error(self.kind(), "symlink", path));
        }
        Err(ProviderError::Unsupported(format!("symlink {path}")))
    }

    async fn set_mode(&self, path: &str, _mode: u32) -> ProviderResult<()> {
        if !self.capabilities().writable {
            return Err(read_only_error(self.kind(), "chmod", path));
        }
        Ok(())
    }

    async fn set_mtime(&self, path: &str, _mtime: SystemTime) -> ProviderResult<()> {
        if !self.capabilities().writable {
            return Err(read_only_error(self.kind(), "set mtime of", path));
        }
        Ok(())
    }

    async fn quota(&self) -> ProviderResult<Quota>;

    /// Start a change feed: the cursor that `changes_since` continues from.
    async fn changes_cursor(&self) -> ProviderResult<String> {
        Err(ProviderError::Unsupported("change feed".into()))
    }

    async fn changes_since(&self, _cursor: &str) -> ProviderResult<ChangeBatch> {
        Err(ProviderError::Unsupported("change feed".into()))
    }

    /// Waits until the change feed may have something after `cursor` (a long poll), for
    /// providers whose service can say so; `Ok(false)`: nothing yet, ask again. The
    /// poller then continues the feed at once instead of at its next tick.
    async fn wait_for_changes(&self, _cursor: &str) -> ProviderResult<bool> {
        Err(ProviderError::Unsupported("waiting for changes".into()))
    }

    async fn list_versions(&self, _path: &str) -> ProviderResult<Vec<NativeVersion>> {
        Err(ProviderError::Unsupported("native versions".into()))
    }

    /// `Some(why)` when the provider cannot hold an entry named `name` (reserved names,
    /// characters it cannot map): the VFS refuses it up front with EINVAL. Characters the
    /// provider refuses in every name go in `Capabilities::forbidden_chars` instead.
    fn refuses_name(&self, _name: &str) -> Option<String> {
        None
    }

    /// `Some(reason)` when `dir` is a folder of the provider's fixed layout (one standing
    /// for a list of drives): nothing can be created in it, and nothing in it renamed,
    /// moved or removed. The VFS refuses such changes up front (EACCES) instead of queueing
    /// jobs the provider can never carry out. May ask the service what its layout is (once
    /// in a while); when it cannot be asked, `None`, so that offline work goes on.
    async fn fixed_folder(&self, _dir: &str) -> Option<String> {
        None
    }

    /// Whether the provider can move `from` to `to` (both remote paths). `false` when they
    /// are on different drives of one connection, or when that cannot be known now: the
    /// VFS answers EXDEV, so `mv` copies (always correct) instead of queueing a move that
    /// could never land.
    async fn same_space(&self, _from: &str, _to: &str) -> bool {
        true
    }

    async fn read_version(&self, _path: &str, _version_id: &str) -> ProviderResult<ByteStream> {
        Err(ProviderError::Unsupported("native versions".into()))
    }
}

/// A name (or path) as a case-insensitive service compares it: each character upper-cased
/// on its own where that gives one character (as Windows and OneDrive do; no final-sigma
/// or multi-character mappings, so `ß` stays and the Kelvin sign is not `k`).
pub fn fold_case(name: &str) -> String {
    name.chars()
        .map(|c| {
            let mut upper = c.to_uppercase();
            match (upper.next(), upper.next()) {
                (Some(u), None) => u,
                _ => c,
            }
        })
        .collect()
}

/// Join a remote directory path and a child name.
pub fn join_path(dir: &str, name: &str) -> String {
    if dir == "/" {
        format!("/{name}")
    } else {
        format!("{dir}/{name}")
    }
}

/// The parent directory and final component of a remote path.
pub fn split_path(path: &str) -> (&str, &str) {
    match path.rfind('/') {
        Some(0) => ("/", &path[1..]),
        Some(i) => (&path[..i], &path[i + 1..]),
        None => ("/", path),
    }
}

/// Whether `path` is `ancestor` or lies below it.
pub fn is_same_or_below(path: &str, ancestor: &str) -> bool {
    ancestor == "/"
        || path == ancestor
        || (path.starts_with(ancestor) && path.as_bytes().get(ancestor.len()) == Some(&b'/'))
}

/// Collect a byte stream into memory (for small reads and tests).
pub async fn collect_stream(mut s: ByteStream) -> ProviderResult<Vec<u8>> {
    use futures::StreamExt;
    let mut out = Vec::new();
    while let Some(chunk) = s.next().await {
        out.extend_from_slice(&chunk?);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn path_helpers() {
        assert_eq!(join_path("/", "a"), "/a");
        assert_eq!(join_path("/a", "b"), "/a/b");
        assert_eq!(split_path("/a/b"), ("/a", "b"));
        assert_eq!(split_path("/a"), ("/", "a"));
        assert!(is_same_or_below("/a/b", "/a"));
        assert!(is_same_or_below("/a", "/a"));
        assert!(!is_same_or_below("/ab", "/a"));
        assert!(is_same_or_below("/x", "/"));
    }
}
