//! Graph's wire types and error body.

use std::time::SystemTime;

use reqwest::header::HeaderMap;
use reqwest::StatusCode;
use serde::Deserialize;

use super::quickxor;
use crate::provider::kit::errors::{classify_status, ErrorDetail, ServiceErrors};
use crate::provider::kit::retry::retry_after;
use crate::provider::{EntryKind, ProviderError, RemoteEntry};

/// The properties every item request asks for (`$select`): what a `RemoteEntry` needs.
pub(crate) const ITEM_SELECT: &str =
    "id,name,eTag,cTag,size,lastModifiedDateTime,fileSystemInfo,file,folder,package,remoteItem,root,parentReference";

/// A driveItem, as much of it as we ask for.
#[derive(Debug, Clone, Deserialize)]
pub(crate) struct DriveItem {
    pub id: String,
    #[serde(default)]
    pub name: Option<String>,
    #[serde(rename = "eTag", default)]
    pub etag: Option<String>,
    #[serde(default)]
    pub size: Option<u64>,
    #[serde(rename = "lastModifiedDateTime", default)]
    pub modified: Option<String>,
    #[serde(rename = "fileSystemInfo", default)]
    pub fs_info: Option<FileSystemInfo>,
    #[serde(default)]
    pub file: Option<FileFacet>,
    #[serde(default)]
    pub folder: Option<serde_json::Value>,
    /// OneNote notebooks: neither file nor folder; not shown (documented).
    #[serde(default)]
    pub package: Option<serde_json::Value>,
    /// A shortcut to an item in another drive (a shared folder added to My files): its
    /// content is the other drive's, which this drive's paths do not reach; not shown yet
    /// (documented).
    #[serde(rename = "remoteItem", default)]
    pub remote_item: Option<serde_json::Value>,
    #[serde(rename = "@microsoft.graph.downloadUrl", default)]
    pub download_url: Option<String>,
    #[serde(rename = "parentReference", default)]
    pub parent: Option<ParentReference>,
    /// Set on items the delta feed reports removed.
    #[serde(default)]
    pub deleted: Option<serde_json::Value>,
    /// Set on the drive's root.
    #[serde(default)]
    pub root: Option<serde_json::Value>,
}

#[derive(Debug, Clone, Deserialize)]
pub(crate) struct ParentReference {
    #[serde(default)]
    pub id: Option<String>,
    /// `/drive/root:/a/b` — never in delta items.
    #[serde(default)]
    pub path: Option<String>,
}

impl ParentReference {
    /// The parent's path in our form ("/", "/a/b"), from Graph's `/drive/root:/a/b`.
    pub fn local_path(&self) -> Option<String> {
        let p = self.path.as_deref()?;
        let rest = p.split_once("root:")?.1;
        let decoded = percent_encoding::percent_decode_str(rest)
            .decode_utf8()
            .ok()?
            .into_owned();
        if decoded.is_empty() || decoded == "/" {
            return Some("/".into());
        }
        // Graph's names, as the mount shows them.
        let local: Vec<String> = decoded
            .split('/')
            .filter(|s| !s.is_empty())
            .map(super::names::to_local)
            .collect();
        Some(format!("/{}", local.join("/")))
    }
}

/// One page of the delta feed.
#[derive(Debug, Deserialize)]
pub(crate) struct DeltaPage {
    pub value: Vec<DriveItem>,
    #[serde(rename = "@odata.nextLink", default)]
    pub next: Option<String>,
    #[serde(rename = "@odata.deltaLink", default)]
    pub delta: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
pub(crate) struct FileSystemInfo {
    #[serde(rename = "lastModifiedDateTime", default)]
    pub modified: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
pub(crate) struct FileFacet {
    #[serde(default)]
    pub hashes: Option<Hashes>,
}

#[derive(Debug, Clone, Deserialize)]
pub(crate) struct Hashes {
    #[serde(rename = "quickXorHash", default)]
    pub quick_xor: Option<String>,
    #[serde(rename = "sha256Hash", default)]
    pub sha256: Option<String>,
}

/// One page of a listing.
#[derive(Debug, Deserialize)]
pub(crate) struct ItemPage {
    pub value: Vec<DriveItem>,
    #[serde(rename = "@odata.nextLink", default)]
    pub next: Option<String>,
}

#[derive(Debug, Deserialize)]
pub(crate) struct UploadSessionReply {
    #[serde(rename = "uploadUrl")]
    pub upload_url: String,
}

#[derive(Debug, Deserialize)]
pub(crate) struct SessionStatus {
    #[serde(rename = "nextExpectedRanges", default)]
    pub next_expected: Vec<String>,
}

impl SessionStatus {
    /// How many bytes the server holds: where the first expected range starts.
    pub fn received(&self) -> Option<u64> {
        let first = self.next_expected.first()?;
        first.split('-').next()?.trim().parse().ok()
    }
}

/// One entry of an item's version history (newest first; the current one included).
#[derive(Debug, Deserialize)]
pub(crate) struct Version {
    pub id: String,
    #[serde(rename = "lastModifiedDateTime", default)]
    pub modified: Option<String>,
    #[serde(default)]
    pub size: Option<u64>,
}

impl Version {
    pub fn mtime(&self) -> SystemTime {
        time(&self.modified).unwrap_or(SystemTime::UNIX_EPOCH)
    }
}

#[derive(Debug, Deserialize)]
pub(crate) struct VersionList {
    pub value: Vec<Version>,
    #[serde(rename = "@odata.nextLink", default)]
    pub next: Option<String>,
}

#[derive(Debug, Deserialize)]
pub(crate) struct Monitor {
    #[serde(default)]
    pub status: String,
}

#[derive(Debug, Deserialize)]
pub(crate) struct DriveInfo {
    #[serde(default)]
    pub quota: Option<QuotaFacet>,
}

#[derive(Debug, Deserialize)]
pub(crate) struct QuotaFacet {
    pub total: Option<u64>,
    pub used: Option<u64>,
    pub remaining: Option<u64>,
}

fn time(s: &Option<String>) -> Option<SystemTime> {
    let s = s.as_deref()?;
    chrono::DateTime::parse_from_rfc3339(s).ok().map(Into::into)
}

impl DriveItem {
    pub fn is_folder(&self) -> bool {
        self.folder.is_some()
    }

    /// Items the mount does not show: OneNote notebooks, shortcuts into other drives.
    pub fn hidden(&self) -> bool {
        self.package.is_some() || self.remote_item.is_some()
    }

    /// The entry for it, named `name` (the local name). The revision is the eTag, which
    /// `If-Match` checks; the hash is SHA-256 where Graph gives it (Personal), else the
    /// QuickXorHash (Business has no other).
    pub fn entry(&self, name: &str) -> RemoteEntry {
        let hash = self
            .file
            .as_ref()
            .and_then(|f| f.hashes.as_ref())
            .and_then(|h| {
                h.sha256
                    .as_ref()
                    .map(|s| format!("sha256:{}", s.to_ascii_lowercase()))
                    .or_else(|| {
                        h.quick_xor
                            .as_ref()
                            .map(|q| format!("{}:{q}", quickxor::HASH_NAME))
                    })
            });
        RemoteEntry {
            id: self.id.clone(),
            name: name.to_owned(),
            kind: if self.is_folder() {
                EntryKind::Dir
            } else {
                EntryKind::File
            },
            size: if self.is_folder() {
                0
            } else {
                self.size.unwrap_or(0)
            },
            mtime: time(&self.fs_info.as_ref().and_then(|f| f.modified.clone()))
                .or_else(|| time(&self.modified))
                .unwrap_or(SystemTime::UNIX_EPOCH),
            revision: self.etag.clone().unwrap_or_default(),
            hash,
            mode: None,
            symlink_target: None,
        }
    }
}

/// Graph's error body: `{"error":{"code","message","innerError":{"code",…}}}`, the inner
/// codes nesting further. The most specific code is the innermost one.
#[derive(Deserialize)]
struct ErrorBody {
    error: ErrorInner,
}

#[derive(Deserialize)]
struct ErrorInner {
    #[serde(default)]
    code: String,
    #[serde(default)]
    message: String,
    #[serde(rename = "innerError", alias = "innererror", default)]
    inner: Option<Box<InnerCode>>,
}

#[derive(Deserialize)]
struct InnerCode {
    #[serde(default)]
    code: Option<String>,
    #[serde(rename = "innerError", alias = "innererror", default)]
    inner: Option<Box<InnerCode>>,
}

pub(crate) struct GraphErrors;

impl GraphErrors {
    /// The top-level code, which the status table below reads (`detail().code` carries the
    /// innermost one, for messages and special cases).
    fn codes(body: &[u8]) -> Option<(String, Option<String>, String)> {
        let b: ErrorBody = serde_json::from_slice(body).ok()?;
        let mut innermost = None;
        let mut cur = b.error.inner.as_deref();
        while let Some(c) = cur {
            if let Some(code) = &c.code {
                innermost = Some(code.clone());
            }
            cur = c.inner.as_deref();
        }
        Some((b.error.code, innermost, b.error.message))
    }
}

impl ServiceErrors for GraphErrors {
    fn detail(&self, body: &[u8]) -> ErrorDetail {
        match Self::codes(body) {
            Some((code, inner, message)) => ErrorDetail {
                message: (!message.is_empty()).then_some(message),
                code: Some(match inner {
                    Some(i) => format!("{code}/{i}"),
                    None => code,
                }),
                ..ErrorDetail::default()
            },
            None => ErrorDetail::plain(body),
        }
    }

    fn classify(
        &self,
        status: StatusCode,
        headers: &HeaderMap,
        detail: &ErrorDetail,
        what: &str,
    ) -> ProviderError {
        let message = detail.describe(what, status);
        let code = detail.code.as_deref().unwrap_or("");
        match status.as_u16() {
            // Graph throttles with 429 and 503, with or without Retry-After: wait, never
            // give up on queued work (provider-apis §2.5).
            429 | 503 => ProviderError::RateLimited {
                retry_after: retry_after(headers),
            },
            // 509 Bandwidth Limit Exceeded is pacing too.
            509 => ProviderError::RateLimited {
                retry_after: retry_after(headers),
            },
            // A name Graph refuses: read from its own message, not ours (which holds the
            // path, and a path may contain "name").
            400 if code.starts_with("invalidRequest")
                && detail
                    .message
                    .as_deref()
                    .is_some_and(|m| m.to_ascii_lowercase().contains("name")) =>
            {
                ProviderError::InvalidName(message)
            }
            403 if code.starts_with("quotaLimitReached") => ProviderError::InsufficientStorage,
            _ => classify_status(status, retry_after(headers), message),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::ParentReference;

    fn local(path: &str) -> Option<String> {
        ParentReference {
            id: None,
            path: Some(path.into()),
        }
        .local_path()
    }

    #[test]
    fn a_parent_path_shows_in_the_mounts_names() {
        assert_eq!(local("/drive/root:").as_deref(), Some("/"));
        assert_eq!(local("/drive/root:/").as_deref(), Some("/"));
        // `a｜b/notes．` (percent-encoded as Graph sends it) is `a|b/notes.` in the mount.
        assert_eq!(
            local("/drive/root:/a%EF%BD%9Cb/notes%EF%BC%8E").as_deref(),
            Some("/a|b/notes.")
        );
        assert_eq!(
            local("/drives/b!x/root:/Docs/x y").as_deref(),
            Some("/Docs/x y")
        );
        assert_eq!(local("no root here"), None);
    }
}
