//! Google Drive (API v3) provider.
//!
//! # Paths and names
//! Drive addresses items by id; a folder may hold several items with the same name, and a
//! name may contain `/` (and may be `.` or `..`). Paths are mapped to ids through a cache of
//! folder listings (filled by `files.list` with `'ID' in parents and trashed = false`), and
//! every remote name gets a unique, stable local name:
//!
//! 1. **Escaping.** `/` becomes `∕` (U+2215 DIVISION SLASH). A literal `∕` in a remote name
//!    becomes `‛∕`, and a literal `‛` (U+201B) becomes `‛‛`. The names `.`, `..` and the empty
//!    name become `‛.`, `‛..` and `‛`. Decoding reverses this; a local name that encoding
//!    could never produce (say a lone `‛` before another character) is refused with
//!    `InvalidName`, so every name accepted shows up unchanged in the next listing.
//! 2. **Google-native documents** get the extension of their export format (`Report` →
//!    `Report.docx`); renaming `Report.docx` to `Final.docx` renames the doc to `Final`.
//!    Native types without a configured export format (forms, sites, shortcuts, ...) are not
//!    shown.
//! 3. **Duplicates.** Items whose names from steps 1–2 coincide are ordered by id: the first
//!    keeps the name, the others become `name (2).ext`, `name (3).ext`, ..., skipping names
//!    already used in the folder. The mapping is stable while the folder's set of duplicates
//!    does not change, and reversible through the listing (the local name maps back to the
//!    item's id, so renaming `a (2).txt` to `b.txt` renames exactly that item).
//!
//! # Revisions, reads and uploads
//! `RemoteEntry::revision` is the `headRevisionId` for files with binary content (it changes
//! with content, not with renames) and `v<version>` for folders and native documents.
//! `read_range` with a revision downloads that revision (`revisions/{id}?alt=media`), so the
//! bytes always belong to the revision asked for; a revision Drive no longer has fails with
//! `PreconditionFailed`.
//!
//! Uploads use multipart up to `small_upload_limit` and resumable sessions above it.
//! Updating an existing file PATCHes its content, keeping the id so Drive's revision history
//! continues. `expected_revision` is checked with a `files.get` right before the upload:
//! Drive v3 has no conditional upload, so a change landing between the check and the upload
//! is not detected (the window is one round trip; the change feed will report the result).
//!
//! Google-native documents are read-only exports: the export happens on the first read into
//! memory (Drive caps exports at 10 MB), and their size is reported as 0 until then.
//!
//! # Shared drives
//! When the mount's root is My Drive (`root_folder_id = "root"`) and `shared_drives` is on
//! (the default), the shared drives the account is a member of appear as
//! `/Shared drives/<drive name>/...`, next to My Drive's own content:
//!
//! - `Shared drives` is a virtual folder, shown only while the account has at least one
//!   shared drive (listed with `drives.list`, `fields=nextPageToken,drives(id,name)`, paged).
//!   It takes part in the root's duplicate numbering with an id that sorts before every
//!   Drive id, so it always keeps its name and a My Drive item called `Shared drives`
//!   becomes `Shared drives (2)`.
//! - Its entries are the drives, named with the escaping and duplicate numbering above (two
//!   drives called `Team` become `Team` and `Team (2)`, ordered by drive id). A drive's root
//!   folder id is the drive id.
//! - Inside a drive, folders are listed with `corpora=drive&driveId=<id>` and
//!   `supportsAllDrives=true&includeItemsFromAllDrives=true`; every request on an item
//!   passes `supportsAllDrives=true`. Reading, writing, renaming, moving and deleting inside a
//!   drive work as in My Drive (Drive's own permissions apply).
//! - `Shared drives` and the drive folders themselves cannot be renamed, moved, deleted or
//!   have their time set through the mount (`PermissionDenied`); nothing can be created
//!   directly in `Shared drives` (creating a shared drive is not a file operation).
//!   `Shared drives` is reported with mode 0555 so that the kernel already refuses those
//!   operations to ordinary users.
//! - The change feed includes shared-drive items (`includeItemsFromAllDrives=true`); a
//!   change is reported under `/Shared drives/...` once its parent folder has been listed.

mod api;
mod upload;

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use bytes::Bytes;
use futures::StreamExt;
use serde::{Deserialize, Serialize};
use tracing::debug;

use super::kit::idcache::{self, IdCache, Identified};
use super::kit::names;
use super::{
    is_same_or_below, join_path, split_path, ByteStream, Capabilities, Change, ChangeBatch,
    EntryKind, ListStream, NativeVersion, Provider, ProviderError, ProviderResult, Quota,
    RemoteEntry, UploadOptions,
};
use crate::accounts::BearerTokens;
use crate::provider::kit::client::HttpSettings;
use crate::provider::kit::paging::{self, Page};
use crate::provider::kit::ranged::{self, Ranged};
use crate::provider::kit::retry::{cloud_api, RetryPolicy};
use api::Api;

pub const FOLDER_MIME: &str = "application/vnd.google-apps.folder";
const NATIVE_PREFIX: &str = "application/vnd.google-apps.";
/// The metadata requested for every item.
const FILE_FIELDS: &str =
    "id,name,mimeType,parents,size,md5Checksum,modifiedTime,version,headRevisionId,trashed,driveId";
/// Local name of the virtual folder holding one directory per shared drive.
pub const SHARED_DRIVES_DIR: &str = "Shared drives";
/// Id of that folder: `!` is outside Drive's id alphabet and sorts before it.
const SHARED_DRIVES_ID: &str = "!shared-drives";
/// Resumable chunks must be multiples of this (except the last).
pub const CHUNK_ALIGN: u64 = 256 * 1024;
/// How many exported documents are kept in memory.
const EXPORT_CACHE_ENTRIES: usize = 8;

/// Export target of one Google-native document type.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExportFormat {
    /// Appended to the document's name, without the dot.
    pub extension: String,
    pub mime_type: String,
}

fn default_export_formats() -> BTreeMap<String, ExportFormat> {
    let f = |ext: &str, mime: &str| ExportFormat {
        extension: ext.into(),
        mime_type: mime.into(),
    };
    BTreeMap::from([
        (
            "application/vnd.google-apps.document".into(),
            f(
                "docx",
                "application/vnd.openxmlformats-officedocument.wordprocessingml.document",
            ),
        ),
        (
            "application/vnd.google-apps.spreadsheet".into(),
            f(
                "xlsx",
                "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet",
            ),
        ),
        (
            "application/vnd.google-apps.presentation".into(),
            f(
                "pptx",
                "application/vnd.openxmlformats-officedocument.presentationml.presentation",
            ),
        ),
        (
            "application/vnd.google-apps.drawing".into(),
            f("pdf", "application/pdf"),
        ),
    ])
}

fn default_api_base() -> String {
    "https://www.googleapis.com/drive/v3".into()
}
fn default_upload_base() -> String {
    "https://www.googleapis.com/upload/drive/v3".into()
}
fn default_root() -> String {
    "root".into()
}
fn default_true() -> bool {
    true
}
fn default_page_size() -> u32 {
    1000
}
fn default_small_upload_limit() -> u64 {
    5 * 1024 * 1024
}
fn default_chunk_size() -> u64 {
    8 * 1024 * 1024
}
fn default_rps() -> f64 {
    10.0
}

/// Configuration of one Drive connection (the account's tokens come separately).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GdriveConfig {
    #[serde(default = "default_api_base")]
    pub api_base: String,
    #[serde(default = "default_upload_base")]
    pub upload_base: String,
    /// Folder id shown as the mount's root; "root" is My Drive.
    #[serde(default = "default_root")]
    pub root_folder_id: String,
    /// Delete moves to the trash (recoverable for 30 days) instead of deleting for good.
    #[serde(default = "default_true")]
    pub trash_on_delete: bool,
    /// Google-native MIME type → export format. Types not listed are hidden.
    #[serde(default = "default_export_formats")]
    pub export_formats: BTreeMap<String, ExportFormat>,
    /// files.list pageSize, 1..=1000.
    #[serde(default = "default_page_size")]
    pub page_size: u32,
    /// Files up to this size are uploaded in one multipart request.
    #[serde(default = "default_small_upload_limit")]
    pub small_upload_limit: u64,
    /// Chunk size of resumable uploads, a multiple of 256 KiB.
    #[serde(default = "default_chunk_size")]
    pub resumable_chunk_size: u64,
    /// Cap on requests per second of this connection (0 = no cap).
    #[serde(default = "default_rps")]
    pub max_requests_per_second: f64,
    /// Retries of rate-limited, 5xx and network-failed requests before giving up.
    #[serde(default = "cloud_api::max_retries")]
    pub max_retries: u32,
    /// First backoff delay; doubles with each retry (with jitter).
    #[serde(default = "cloud_api::retry_base_ms")]
    pub retry_base_delay_ms: u64,
    /// Retries of one request stop after this long; a longer `Retry-After` is reported as
    /// `RateLimited` for the write-back queue to wait out.
    #[serde(default = "cloud_api::retry_budget_secs")]
    pub retry_budget_secs: u64,
    #[serde(default = "cloud_api::timeout_secs")]
    pub timeout_secs: u64,
    /// Show the account's shared drives under `/Shared drives` (only when the root is My
    /// Drive).
    #[serde(default = "default_true")]
    pub shared_drives: bool,
}

impl Default for GdriveConfig {
    fn default() -> Self {
        GdriveConfig {
            api_base: default_api_base(),
            upload_base: default_upload_base(),
            root_folder_id: default_root(),
            trash_on_delete: true,
            export_formats: default_export_formats(),
            page_size: default_page_size(),
            small_upload_limit: default_small_upload_limit(),
            resumable_chunk_size: default_chunk_size(),
            max_requests_per_second: default_rps(),
            max_retries: cloud_api::max_retries(),
            retry_base_delay_ms: cloud_api::retry_base_ms(),
            retry_budget_secs: cloud_api::retry_budget_secs(),
            timeout_secs: cloud_api::timeout_secs(),
            shared_drives: true,
        }
    }
}

/// A Drive `File` resource, as much of it as we ask for.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
struct DriveFile {
    id: String,
    #[serde(default)]
    name: String,
    #[serde(default)]
    mime_type: String,
    #[serde(default)]
    parents: Vec<String>,
    /// int64 values come as JSON strings.
    size: Option<String>,
    md5_checksum: Option<String>,
    modified_time: Option<String>,
    version: Option<String>,
    head_revision_id: Option<String>,
    #[serde(default)]
    trashed: bool,
    /// The shared drive holding the item; absent in My Drive.
    drive_id: Option<String>,
}

impl DriveFile {
    /// A folder entry made up by the provider (the virtual folder, a shared drive's root).
    fn virtual_folder(id: &str, name: &str, drive_id: Option<&str>) -> Self {
        DriveFile {
            id: id.to_owned(),
            name: name.to_owned(),
            mime_type: FOLDER_MIME.to_owned(),
            drive_id: drive_id.map(str::to_owned),
            ..Default::default()
        }
    }
    /// `Shared drives` or a shared drive's root folder: fixed in place.
    fn is_fixed(&self) -> bool {
        self.id == SHARED_DRIVES_ID || self.drive_id.as_deref() == Some(self.id.as_str())
    }
    fn is_folder(&self) -> bool {
        self.mime_type == FOLDER_MIME
    }
    fn is_native(&self) -> bool {
        !self.is_folder() && self.mime_type.starts_with(NATIVE_PREFIX)
    }
    fn mtime(&self) -> SystemTime {
        self.modified_time
            .as_deref()
            .and_then(|t| chrono::DateTime::parse_from_rfc3339(t).ok())
            .map(SystemTime::from)
            .unwrap_or(SystemTime::UNIX_EPOCH)
    }
    fn revision(&self) -> String {
        match (&self.head_revision_id, self.is_native() || self.is_folder()) {
            (Some(r), false) => r.clone(),
            _ => format!("v{}", self.version.as_deref().unwrap_or("0")),
        }
    }
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct DriveList {
    next_page_token: Option<String>,
    #[serde(default)]
    drives: Vec<SharedDrive>,
}

#[derive(Deserialize)]
struct SharedDrive {
    id: String,
    #[serde(default)]
    name: String,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct FileList {
    next_page_token: Option<String>,
    #[serde(default)]
    files: Vec<DriveFile>,
}

impl Identified for DriveFile {
    fn id(&self) -> &str {
        &self.id
    }
}

type Listing = idcache::Listing<DriveFile>;

#[derive(Default)]
struct Cache {
    root_id: Option<String>,
    /// Folder listings and where each item is (see `kit::idcache`).
    ids: IdCache<DriveFile>,
    /// Folder id → id of the shared drive holding it (drive roots map to themselves).
    folder_drive: HashMap<String, String>,
    /// Exported native documents: (id, version) → bytes.
    exports: Vec<((String, String), Bytes)>,
}

pub struct GdriveProvider {
    cfg: GdriveConfig,
    api: Api,
    cache: Mutex<Cache>,
}

impl std::fmt::Debug for GdriveProvider {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GdriveProvider")
            .field("api_base", &self.cfg.api_base)
            .field("root_folder_id", &self.cfg.root_folder_id)
            .finish_non_exhaustive()
    }
}

fn q_escape(s: &str) -> String {
    s.replace('\\', "\\\\").replace('\'', "\\'")
}

impl GdriveProvider {
    pub fn new(cfg: GdriveConfig, tokens: Arc<dyn BearerTokens>) -> ProviderResult<Self> {
        let bad = |m: String| ProviderError::Protocol(format!("gdrive configuration: {m}"));
        if cfg.resumable_chunk_size == 0 || cfg.resumable_chunk_size % CHUNK_ALIGN != 0 {
            return Err(bad(format!(
                "resumable_chunk_size {} is not a multiple of 256 KiB",
                cfg.resumable_chunk_size
            )));
        }
        if !(1..=1000).contains(&cfg.page_size) {
            return Err(bad("page_size must be within 1..=1000".into()));
        }
        for base in [&cfg.api_base, &cfg.upload_base] {
            reqwest::Url::parse(base).map_err(|e| bad(format!("bad URL {base:?}: {e}")))?;
        }
        // Redirects are followed: download links of exported documents redirect.
        let http = HttpSettings::new(Duration::from_secs(cfg.timeout_secs))
            .build()
            .map_err(bad)?;
        let retry = RetryPolicy::from_settings(
            cfg.max_retries,
            cfg.retry_base_delay_ms,
            cfg.retry_budget_secs,
            Duration::from_secs(60),
        );
        let api = Api::new(http, tokens, cfg.max_requests_per_second, retry);
        Ok(GdriveProvider {
            cfg,
            api,
            cache: Mutex::new(Cache::default()),
        })
    }

    fn url(&self, rest: &str) -> String {
        format!("{}/{rest}", self.cfg.api_base.trim_end_matches('/'))
    }

    fn upload_url(&self, rest: &str) -> String {
        format!("{}/{rest}", self.cfg.upload_base.trim_end_matches('/'))
    }

    fn export_format(&self, f: &DriveFile) -> Option<&ExportFormat> {
        self.cfg.export_formats.get(&f.mime_type)
    }

    /// Whether the item is shown at all.
    fn visible(&self, f: &DriveFile) -> bool {
        !f.trashed && (!f.is_native() || self.export_format(f).is_some())
    }

    /// Name before duplicate numbering.
    fn display_name(&self, f: &DriveFile) -> String {
        let base = names::encode(&f.name);
        match self.export_format(f) {
            Some(fmt) if f.is_native() => format!("{base}.{}", fmt.extension),
            _ => base,
        }
    }

    /// The remote name for a local name given to `target` (a native doc drops its export
    /// extension).
    fn remote_name(&self, local: &str, target: Option<&DriveFile>) -> ProviderResult<String> {
        let mut local = local;
        if let Some(fmt) = target
            .filter(|f| f.is_native())
            .and_then(|f| self.export_format(f))
        {
            if let Some(stem) = local.strip_suffix(&format!(".{}", fmt.extension)) {
                if !stem.is_empty() {
                    local = stem;
                }
            }
        }
        names::decode(local)
    }

    fn entry(&self, local: &str, f: &DriveFile) -> RemoteEntry {
        let size = if f.is_native() {
            let cache = self.cache.lock().unwrap();
            let key = (f.id.clone(), f.version.clone().unwrap_or_default());
            cache
                .exports
                .iter()
                .find(|(k, _)| *k == key)
                .map_or(0, |(_, b)| b.len() as u64)
        } else {
            f.size.as_deref().and_then(|s| s.parse().ok()).unwrap_or(0)
        };
        RemoteEntry {
            id: f.id.clone(),
            name: local.to_owned(),
            kind: if f.is_folder() {
                EntryKind::Dir
            } else {
                EntryKind::File
            },
            size,
            mtime: f.mtime(),
            revision: f.revision(),
            hash: f.md5_checksum.as_ref().map(|h| format!("md5:{h}")),
            // Read-only for the kernel's permission checks (default_permissions): nothing can
            // be created in, renamed out of or removed from `Shared drives` by non-root users.
            mode: (f.id == SHARED_DRIVES_ID).then_some(0o555),
            symlink_target: None,
        }
    }

    async fn get_file(&self, id: &str) -> ProviderResult<DriveFile> {
        let url = self.url(&format!("files/{id}"));
        self.api
            .json("files.get", |c| {
                c.get(&url)
                    .query(&[("fields", FILE_FIELDS), ("supportsAllDrives", "true")])
            })
            .await
    }

    async fn root_id(&self) -> ProviderResult<String> {
        if let Some(id) = self.cache.lock().unwrap().root_id.clone() {
            return Ok(id);
        }
        // "root" is an alias; the change feed and parents use the real id.
        let f = self.get_file(&self.cfg.root_folder_id).await?;
        if !f.is_folder() {
            return Err(ProviderError::NotADirectory(format!(
                "root_folder_id {} is not a folder",
                self.cfg.root_folder_id
            )));
        }
        let mut cache = self.cache.lock().unwrap();
        cache.root_id = Some(f.id.clone());
        cache.ids.set_path(&f.id, "/");
        Ok(f.id)
    }

    /// Whether the root listing carries the `Shared drives` folder.
    fn shows_shared_drives(&self, dir_id: &str) -> bool {
        self.cfg.shared_drives
            && self.cfg.root_folder_id == "root"
            && self.cache.lock().unwrap().root_id.as_deref() == Some(dir_id)
    }

    /// The account's shared drives (`drives.list`), as folder entries.
    async fn fetch_drives(&self) -> ProviderResult<Vec<DriveFile>> {
        let url = self.url("drives");
        paging::collect_all("drives.list", |token| {
            let url = &url;
            async move {
                let page: DriveList = self
                    .api
                    .json("drives.list", |c| {
                        let r = c.get(url).query(&[
                            ("pageSize", "100"),
                            ("fields", "nextPageToken,drives(id,name)"),
                        ]);
                        match &token {
                            Some(t) => r.query(&[("pageToken", t)]),
                            None => r,
                        }
                    })
                    .await?;
                Ok(Page {
                    items: page
                        .drives
                        .into_iter()
                        .map(|d| DriveFile::virtual_folder(&d.id, &d.name, Some(&d.id)))
                        .collect(),
                    next: page.next_page_token,
                })
            }
        })
        .await
    }

    /// Give local names to `all` and cache them as the listing of `dir_id`.
    fn store_listing(&self, dir_id: &str, dir_path: &str, all: Vec<DriveFile>) -> Arc<Listing> {
        let pairs: Vec<(String, String)> = all
            .iter()
            .map(|f| {
                let name = if f.id == SHARED_DRIVES_ID {
                    f.name.clone()
                } else {
                    self.display_name(f)
                };
                (f.id.clone(), name)
            })
            .collect();
        let local = names::assign_unique(&pairs);
        let mut cache = self.cache.lock().unwrap();
        let listing = cache.ids.store(
            dir_id,
            Listing {
                path: dir_path.to_owned(),
                children: local.into_iter().zip(all).collect(),
            },
        );
        for (_, f) in &listing.children {
            if f.is_folder() {
                match &f.drive_id {
                    Some(d) => cache.folder_drive.insert(f.id.clone(), d.clone()),
                    None => cache.folder_drive.remove(&f.id),
                };
            }
        }
        listing
    }

    /// All children of a folder, fresh from the server, cached.
    async fn fetch_listing(&self, dir_id: &str, dir_path: &str) -> ProviderResult<Arc<Listing>> {
        if dir_id == SHARED_DRIVES_ID {
            let drives = self.fetch_drives().await?;
            return Ok(self.store_listing(dir_id, dir_path, drives));
        }
        let drive = self.cache.lock().unwrap().folder_drive.get(dir_id).cloned();
        let url = self.url("files");
        let q = format!("'{}' in parents and trashed = false", q_escape(dir_id));
        let fields = format!("nextPageToken,files({FILE_FIELDS})");
        let page_size = self.cfg.page_size.to_string();
        // An empty page with a token is legal: only a missing token ends the listing.
        let mut all = paging::collect_all("files.list", |token| {
            let (url, q, fields, page_size, drive) = (&url, &q, &fields, &page_size, &drive);
            async move {
                let page: FileList = self
                    .api
                    .json("files.list", |c| {
                        let mut r = c.get(url).query(&[
                            ("q", q.as_str()),
                            ("fields", fields.as_str()),
                            ("pageSize", page_size.as_str()),
                            ("spaces", "drive"),
                            ("supportsAllDrives", "true"),
                            ("includeItemsFromAllDrives", "true"),
                        ]);
                        if let Some(d) = drive {
                            r = r.query(&[("corpora", "drive"), ("driveId", d.as_str())]);
                        }
                        if let Some(t) = &token {
                            r = r.query(&[("pageToken", t)]);
                        }
                        r
                    })
                    .await?;
                Ok(Page {
                    items: page.files.into_iter().filter(|f| self.visible(f)).collect(),
                    next: page.next_page_token,
                })
            }
        })
        .await?;
        let mut drives = None;
        if self.shows_shared_drives(dir_id) {
            let d = match self.fetch_drives().await {
                Ok(d) => d,
                // A narrow scope (drive.file) cannot list drives: show My Drive alone.
                Err(ProviderError::PermissionDenied(m)) => {
                    debug!(%m, "drives.list refused; not showing shared drives");
                    Vec::new()
                }
                Err(e) => return Err(e),
            };
            if !d.is_empty() {
                all.push(DriveFile::virtual_folder(
                    SHARED_DRIVES_ID,
                    SHARED_DRIVES_DIR,
                    None,
                ));
                drives = Some(d);
            }
        }
        let listing = self.store_listing(dir_id, dir_path, all);
        if let Some(d) = drives {
            // The drives just fetched are the listing of `Shared drives` too.
            if let Some((name, _)) = listing
                .children
                .iter()
                .find(|(_, f)| f.id == SHARED_DRIVES_ID)
            {
                self.store_listing(SHARED_DRIVES_ID, &join_path(dir_path, name), d);
            }
        }
        Ok(listing)
    }

    /// Refuse changing `Shared drives` or a drive folder through the mount.
    fn check_not_fixed(&self, path: &str, f: &DriveFile) -> ProviderResult<()> {
        if f.id == SHARED_DRIVES_ID {
            return Err(ProviderError::PermissionDenied(format!(
                "{path} is the virtual folder of shared drives; it cannot be changed"
            )));
        }
        if f.is_fixed() {
            return Err(ProviderError::PermissionDenied(format!(
                "{path} is a shared drive; rename or delete shared drives in Google Drive itself"
            )));
        }
        Ok(())
    }

    async fn listing(&self, dir_id: &str, dir_path: &str) -> ProviderResult<Arc<Listing>> {
        if let Some(l) = self.cache.lock().unwrap().ids.listing(dir_id, dir_path) {
            return Ok(l);
        }
        self.fetch_listing(dir_id, dir_path).await
    }

    fn invalidate(&self, dir_id: &str) {
        self.cache.lock().unwrap().ids.invalidate(dir_id);
    }

    /// The folder id of a directory path.
    async fn resolve_dir(&self, path: &str) -> ProviderResult<String> {
        if path == "/" {
            return self.root_id().await;
        }
        let (_, f) = self.resolve(path).await?;
        if !f.is_folder() {
            return Err(ProviderError::NotADirectory(path.to_owned()));
        }
        Ok(f.id)
    }

    /// The item at `path` with its parent folder id. A miss in a cached listing refetches it
    /// once, since the cache may predate the item.
    async fn resolve(&self, path: &str) -> ProviderResult<(String, DriveFile)> {
        if path == "/" || !path.starts_with('/') {
            return Err(ProviderError::NotFound(path.to_owned()));
        }
        let mut dir_id = self.root_id().await?;
        let mut dir_path = String::from("/");
        let comps: Vec<&str> = path[1..].split('/').collect();
        for (i, comp) in comps.iter().enumerate() {
            let mut listing = self.listing(&dir_id, &dir_path).await?;
            if listing.find(comp).is_none() {
                listing = self.fetch_listing(&dir_id, &dir_path).await?;
            }
            let Some(f) = listing.find(comp).cloned() else {
                return Err(ProviderError::NotFound(path.to_owned()));
            };
            if i + 1 == comps.len() {
                return Ok((dir_id, f));
            }
            if !f.is_folder() {
                return Err(ProviderError::NotADirectory(path.to_owned()));
            }
            dir_path = join_path(&dir_path, comp);
            dir_id = f.id;
        }
        unreachable!("a path has at least one component")
    }

    /// Like `resolve`, but `Ok(None)` when the final component does not exist (the parent
    /// must). Returns the parent id.
    async fn resolve_for_create(&self, path: &str) -> ProviderResult<(String, Option<DriveFile>)> {
        let (parent, name) = split_path(path);
        if name.is_empty() {
            return Err(ProviderError::InvalidName(path.to_owned()));
        }
        let parent_id = self.resolve_dir(parent).await?;
        if parent_id == SHARED_DRIVES_ID {
            return Err(ProviderError::PermissionDenied(format!(
                "{path}: only shared drives live in {parent}, and they cannot be created through the mount"
            )));
        }
        match self.resolve(path).await {
            Ok((_, f)) => Ok((parent_id, Some(f))),
            Err(ProviderError::NotFound(_)) => Ok((parent_id, None)),
            Err(e) => Err(e),
        }
    }

    /// Local name of an item in a (re)fetched listing of its parent.
    async fn local_entry(
        &self,
        parent_id: &str,
        path: &str,
        id: &str,
    ) -> ProviderResult<RemoteEntry> {
        let (dir, _) = split_path(path);
        self.invalidate(parent_id);
        let listing = self.fetch_listing(parent_id, dir).await?;
        listing
            .children
            .iter()
            .find(|(_, f)| f.id == id)
            .map(|(n, f)| self.entry(n, f))
            .ok_or_else(|| ProviderError::NotFound(path.to_owned()))
    }

    /// Trash or delete an item, as configured.
    async fn remove_item(&self, id: &str) -> ProviderResult<()> {
        let url = self.url(&format!("files/{id}"));
        if self.cfg.trash_on_delete {
            self.api
                .send("files.update(trash)", |c| {
                    c.patch(&url)
                        .query(&[("fields", "id"), ("supportsAllDrives", "true")])
                        .json(&serde_json::json!({"trashed": true}))
                })
                .await?;
        } else {
            self.api
                .send("files.delete", |c| {
                    c.delete(&url).query(&[("supportsAllDrives", "true")])
                })
                .await?;
        }
        Ok(())
    }

    /// A media download (optionally ranged) as a byte stream.
    async fn download(
        &self,
        url: &str,
        what: &str,
        offset: u64,
        len: Option<u64>,
    ) -> ProviderResult<ByteStream> {
        let range = match len {
            Some(l) => Some(ranged::range_header(offset, l)),
            None if offset > 0 => Some(ranged::range_header(offset, u64::MAX)),
            None => None,
        };
        let resp = self
            .api
            .send(what, |c| {
                let r = c
                    .get(url)
                    .query(&[("alt", "media"), ("supportsAllDrives", "true")]);
                match &range {
                    Some(h) => r.header(reqwest::header::RANGE, h),
                    None => r,
                }
            })
            .await?;
        let skip = match ranged::interpret(resp.status(), resp.headers(), offset, what) {
            Some(Ok(Ranged::PastEnd)) => return Ok(Box::pin(futures::stream::empty())),
            Some(Ok(Ranged::Body { skip, .. })) => skip,
            Some(Err(e)) => return Err(e),
            // `send` returned a success that is neither: take the body as the file's.
            None => offset,
        };
        let what = what.to_owned();
        let body = resp
            .bytes_stream()
            .map(move |r| r.map_err(|e| crate::provider::kit::client::transport_error(&e, &what)));
        Ok(ranged::window(body, skip, len.unwrap_or(u64::MAX)))
    }

    async fn export(&self, f: &DriveFile) -> ProviderResult<Bytes> {
        let fmt = self
            .export_format(f)
            .ok_or_else(|| {
                ProviderError::Unsupported(format!("no export format for {}", f.mime_type))
            })?
            .clone();
        let key = (f.id.clone(), f.version.clone().unwrap_or_default());
        if let Some((_, b)) = self
            .cache
            .lock()
            .unwrap()
            .exports
            .iter()
            .find(|(k, _)| *k == key)
        {
            return Ok(b.clone());
        }
        let url = self.url(&format!("files/{}/export", f.id));
        let result = self
            .api
            .send("files.export", |c| {
                c.get(&url).query(&[("mimeType", fmt.mime_type.as_str())])
            })
            .await;
        let resp = match result {
            Ok(r) => r,
            Err(ProviderError::PermissionDenied(m)) if m.contains("exportSizeLimitExceeded") => {
                return Err(ProviderError::Unsupported(format!(
                    "{:?} is larger than Google's 10 MB export limit; open it in the browser or download it there",
                    f.name
                )))
            }
            Err(e) => return Err(e),
        };
        let data = resp
            .bytes()
            .await
            .map_err(|e| crate::provider::kit::client::transport_error(&e, "files.export"))?;
        let mut cache = self.cache.lock().unwrap();
        cache.exports.retain(|(k, _)| k.0 != key.0);
        if cache.exports.len() >= EXPORT_CACHE_ENTRIES {
            cache.exports.remove(0);
        }
        cache.exports.push((key, data.clone()));
        Ok(data)
    }

    async fn patch_meta(
        &self,
        id: &str,
        query: &[(&str, &str)],
        body: serde_json::Value,
    ) -> ProviderResult<DriveFile> {
        let url = self.url(&format!("files/{id}"));
        self.api
            .json("files.update", |c| {
                c.patch(&url)
                    .query(&[("fields", FILE_FIELDS), ("supportsAllDrives", "true")])
                    .query(query)
                    .json(&body)
            })
            .await
    }

    async fn is_empty_dir(&self, id: &str, path: &str) -> ProviderResult<bool> {
        Ok(self.fetch_listing(id, path).await?.children.is_empty())
    }
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct ChangeList {
    next_page_token: Option<String>,
    new_start_page_token: Option<String>,
    #[serde(default)]
    changes: Vec<DriveChange>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct DriveChange {
    file_id: Option<String>,
    #[serde(default)]
    removed: bool,
    file: Option<DriveFile>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RevisionList {
    next_page_token: Option<String>,
    #[serde(default)]
    revisions: Vec<DriveRevision>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct DriveRevision {
    id: String,
    modified_time: Option<String>,
    size: Option<String>,
    md5_checksum: Option<String>,
}

#[async_trait]
impl Provider for GdriveProvider {
    fn kind(&self) -> &'static str {
        "gdrive"
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities {
            delta: true,
            native_versions: true,
            case_insensitive: false,
            max_name_len: 255,
            // '/' is escaped rather than refused.
            forbidden_chars: vec![],
            symlinks: false,
            unix_attrs: false,
            propagated_dir_revisions: false,
            ..Capabilities::default()
        }
    }

    fn list<'a>(&'a self, dir: &'a str) -> ListStream<'a> {
        Box::pin(futures::stream::once(async move {
            let id = self.resolve_dir(dir).await?;
            let listing = self.fetch_listing(&id, dir).await?;
            Ok(listing
                .children
                .iter()
                .map(|(n, f)| self.entry(n, f))
                .collect())
        }))
    }

    async fn stat(&self, path: &str) -> ProviderResult<RemoteEntry> {
        if path == "/" {
            let id = self.root_id().await?;
            let f = self.get_file(&id).await?;
            return Ok(self.entry("/", &f));
        }
        let (parent, cached) = self.resolve(path).await?;
        if cached.is_fixed() {
            // Listed just now by `resolve` (drives.list); there is no file to fetch.
            let (_, name) = split_path(path);
            return Ok(self.entry(name, &cached));
        }
        // Fresh metadata: the cached listing may be older than the last change.
        let fresh = match self.get_file(&cached.id).await {
            Ok(f) => f,
            Err(ProviderError::NotFound(_)) => {
                self.invalidate(&parent);
                return Err(ProviderError::NotFound(path.to_owned()));
            }
            Err(e) => return Err(e),
        };
        let moved = fresh.trashed
            || fresh.name != cached.name
            || fresh.parents.first() != cached.parents.first();
        if moved {
            // Renamed, moved or trashed behind our back: look the path up again.
            self.invalidate(&parent);
            let (_, f) = self.resolve(path).await?;
            let (_, name) = split_path(path);
            return Ok(self.entry(name, &f));
        }
        if fresh.is_native() && self.export_format(&fresh).is_some() {
            // A document's size is that of its export: stat is asked when the size
            // matters (a file is opened), so export now rather than report 0.
            self.export(&fresh).await?;
        }
        let (_, name) = split_path(path);
        Ok(self.entry(name, &fresh))
    }

    async fn read_range(
        &self,
        path: &str,
        revision: Option<&str>,
        offset: u64,
        len: u64,
    ) -> ProviderResult<ByteStream> {
        let (_, f) = self.resolve(path).await?;
        if f.is_folder() {
            return Err(ProviderError::IsADirectory(path.to_owned()));
        }
        if f.is_native() {
            let mut f = f;
            if let Some(rev) = revision {
                if rev != f.revision() {
                    f = self.get_file(&f.id).await?;
                    if rev != f.revision() {
                        return Err(ProviderError::PreconditionFailed(format!(
                            "{path}: document changed"
                        )));
                    }
                }
            }
            let data = self.export(&f).await?;
            let start = (offset as usize).min(data.len());
            let end = (offset.saturating_add(len) as usize).min(data.len());
            let chunk = data.slice(start..end);
            return Ok(Box::pin(futures::stream::iter(
                (!chunk.is_empty()).then_some(Ok(chunk)),
            )));
        }
        if len == 0 {
            return Ok(Box::pin(futures::stream::empty()));
        }
        match revision {
            Some(rev) => {
                let url = self.url(&format!("files/{}/revisions/{rev}", f.id));
                match self
                    .download(&url, "revisions.get(media)", offset, Some(len))
                    .await
                {
                    Err(ProviderError::NotFound(_)) => Err(ProviderError::PreconditionFailed(
                        format!("{path}: revision {rev} is gone"),
                    )),
                    other => other,
                }
            }
            None => {
                let url = self.url(&format!("files/{}", f.id));
                self.download(&url, "files.get(media)", offset, Some(len))
                    .await
            }
        }
    }

    async fn upload(
        &self,
        path: &str,
        source: &Path,
        options: &UploadOptions,
    ) -> ProviderResult<RemoteEntry> {
        let (parent_id, existing) = self.resolve_for_create(path).await?;
        let (_, local_name) = split_path(path);
        if let Some(f) = &existing {
            if f.is_folder() {
                return Err(ProviderError::IsADirectory(path.to_owned()));
            }
            if f.is_native() {
                return Err(ProviderError::PermissionDenied(format!(
                    "{path} is a Google document exported read-only"
                )));
            }
        }
        match (&options.expected_revision, &existing) {
            (None, _) => {}
            (Some(None), Some(_)) => {
                return Err(ProviderError::PreconditionFailed(format!(
                    "{path} already exists"
                )))
            }
            (Some(None), None) => {}
            (Some(Some(_)), None) => {
                return Err(ProviderError::PreconditionFailed(format!(
                    "{path} no longer exists"
                )))
            }
            (Some(Some(rev)), Some(f)) => {
                // Drive has no conditional upload: check just before (see module docs).
                let fresh = self.get_file(&f.id).await?;
                if fresh.trashed || &fresh.revision() != rev {
                    return Err(ProviderError::PreconditionFailed(format!(
                        "{path} changed on the server"
                    )));
                }
            }
        }
        let remote_name = match &existing {
            Some(f) => f.name.clone(),
            None => names::decode(local_name)?,
        };
        let size = tokio::fs::metadata(source).await?.len();
        let mut meta = serde_json::Map::new();
        if existing.is_none() {
            meta.insert("name".into(), remote_name.into());
            meta.insert("parents".into(), serde_json::json!([parent_id]));
        }
        if let Some(t) = options.mtime {
            meta.insert(
                "modifiedTime".into(),
                chrono::DateTime::<chrono::Utc>::from(t)
                    .to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
                    .into(),
            );
        }
        let meta = serde_json::Value::Object(meta);
        let existing_id = existing.as_ref().map(|f| f.id.as_str());
        let sent = if size <= self.cfg.small_upload_limit {
            self.upload_multipart(existing_id, &meta, source).await
        } else {
            self.upload_resumable(existing_id, &meta, source, size)
                .await
        };
        // A failed create or update may still have happened (a lost reply): the cached
        // listing must not answer the caller's look at the remote.
        let file = sent.inspect_err(|_| self.invalidate(&parent_id))?;
        debug!(id = %file.id, size, "uploaded");
        match existing {
            Some(_) => {
                // Same id and name: update the cached listing in place.
                self.cache.lock().unwrap().ids.replace(&parent_id, &file);
                Ok(self.entry(local_name, &file))
            }
            None => self.local_entry(&parent_id, path, &file.id).await,
        }
    }

    async fn mkdir(&self, path: &str) -> ProviderResult<RemoteEntry> {
        let (parent_id, existing) = self.resolve_for_create(path).await?;
        if existing.is_some() {
            return Err(ProviderError::AlreadyExists(path.to_owned()));
        }
        let (_, name) = split_path(path);
        let body = serde_json::json!({
            "name": names::decode(name)?,
            "mimeType": FOLDER_MIME,
            "parents": [parent_id],
        });
        let url = self.url("files");
        let f: DriveFile = self
            .api
            .json("files.create(folder)", |c| {
                c.post(&url)
                    .query(&[("fields", FILE_FIELDS), ("supportsAllDrives", "true")])
                    .json(&body)
            })
            .await
            .inspect_err(|_| self.invalidate(&parent_id))?;
        self.local_entry(&parent_id, path, &f.id).await
    }

    async fn rename(&self, from: &str, to: &str, overwrite: bool) -> ProviderResult<RemoteEntry> {
        if from == to {
            return self.stat(from).await;
        }
        if is_same_or_below(to, from) {
            return Err(ProviderError::InvalidName(format!(
                "cannot move {from} into itself"
            )));
        }
        let (old_parent, src) = self.resolve(from).await?;
        self.check_not_fixed(from, &src)?;
        let (new_parent, target) = self.resolve_for_create(to).await?;
        if let Some(t) = target {
            if t.id == src.id {
                return self.stat(to).await;
            }
            self.check_not_fixed(to, &t)?;
            if !overwrite {
                return Err(ProviderError::AlreadyExists(to.to_owned()));
            }
            match (src.is_folder(), t.is_folder()) {
                (false, true) => return Err(ProviderError::IsADirectory(to.to_owned())),
                (true, false) => return Err(ProviderError::NotADirectory(to.to_owned())),
                (true, true) if !self.is_empty_dir(&t.id, to).await? => {
                    return Err(ProviderError::DirectoryNotEmpty(to.to_owned()))
                }
                _ => {}
            }
            self.remove_item(&t.id).await?;
        }
        let (_, new_local) = split_path(to);
        let new_name = self.remote_name(new_local, Some(&src))?;
        let mut query = Vec::new();
        if old_parent != new_parent {
            query.push(("addParents", new_parent.as_str()));
            query.push(("removeParents", old_parent.as_str()));
        }
        let moved = self
            .patch_meta(&src.id, &query, serde_json::json!({"name": new_name}))
            .await;
        {
            // Whatever the outcome (a lost reply may hide a move that happened), the
            // cached view of both folders is no longer to be trusted.
            let ids = &mut self.cache.lock().unwrap().ids;
            ids.forget_below(from);
            ids.invalidate(&old_parent);
            if moved.is_err() {
                ids.forget_below(to);
                ids.invalidate(&new_parent);
            }
        }
        moved?;
        self.local_entry(&new_parent, to, &src.id).await
    }

    async fn delete(&self, path: &str) -> ProviderResult<()> {
        let (parent, f) = self.resolve(path).await?;
        self.check_not_fixed(path, &f)?;
        if f.is_folder() && !self.is_empty_dir(&f.id, path).await? {
            return Err(ProviderError::DirectoryNotEmpty(path.to_owned()));
        }
        let removed = self.remove_item(&f.id).await;
        let ids = &mut self.cache.lock().unwrap().ids;
        ids.forget_below(path);
        ids.invalidate(&parent);
        removed
    }

    async fn copy(&self, from: &str, to: &str) -> ProviderResult<RemoteEntry> {
        let (_, src) = self.resolve(from).await?;
        if src.is_folder() {
            return Err(ProviderError::Unsupported(format!(
                "Drive cannot copy folders ({from})"
            )));
        }
        let (parent_id, existing) = self.resolve_for_create(to).await?;
        if existing.is_some() {
            return Err(ProviderError::AlreadyExists(to.to_owned()));
        }
        let (_, local) = split_path(to);
        let body = serde_json::json!({
            "name": self.remote_name(local, Some(&src))?,
            "parents": [parent_id],
        });
        let url = self.url(&format!("files/{}/copy", src.id));
        let f: DriveFile = self
            .api
            .json("files.copy", |c| {
                c.post(&url)
                    .query(&[("fields", FILE_FIELDS), ("supportsAllDrives", "true")])
                    .json(&body)
            })
            .await?;
        self.local_entry(&parent_id, to, &f.id).await
    }

    async fn quota(&self) -> ProviderResult<Quota> {
        #[derive(Deserialize)]
        #[serde(rename_all = "camelCase")]
        struct About {
            storage_quota: StorageQuota,
        }
        #[derive(Deserialize)]
        struct StorageQuota {
            limit: Option<String>,
            usage: Option<String>,
        }
        let url = self.url("about");
        let about: About = self
            .api
            .json("about.get", |c| {
                c.get(&url).query(&[("fields", "storageQuota")])
            })
            .await?;
        let parse = |s: Option<String>| s.and_then(|v| v.parse::<u64>().ok());
        let total = parse(about.storage_quota.limit);
        let used = parse(about.storage_quota.usage);
        Ok(Quota {
            total,
            used,
            // No limit means unlimited: nothing sensible to report as available.
            available: total.map(|t| t.saturating_sub(used.unwrap_or(0))),
        })
    }

    async fn set_mtime(&self, path: &str, mtime: SystemTime) -> ProviderResult<()> {
        let (parent, f) = self.resolve(path).await?;
        self.check_not_fixed(path, &f)?;
        let t = chrono::DateTime::<chrono::Utc>::from(mtime)
            .to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
        self.patch_meta(&f.id, &[], serde_json::json!({"modifiedTime": t}))
            .await?;
        self.invalidate(&parent);
        Ok(())
    }

    async fn changes_cursor(&self) -> ProviderResult<String> {
        #[derive(Deserialize)]
        #[serde(rename_all = "camelCase")]
        struct Start {
            start_page_token: String,
        }
        let url = self.url("changes/startPageToken");
        let s: Start = self
            .api
            .json("changes.getStartPageToken", |c| {
                c.get(&url).query(&[("supportsAllDrives", "true")])
            })
            .await?;
        Ok(s.start_page_token)
    }

    async fn changes_since(&self, cursor: &str) -> ProviderResult<ChangeBatch> {
        let root = self.root_id().await?;
        let url = self.url("changes");
        let fields =
            format!("nextPageToken,newStartPageToken,changes(fileId,removed,file({FILE_FIELDS}))");
        let mut token = cursor.to_owned();
        let mut raw: Vec<DriveChange> = Vec::new();
        let new_cursor = loop {
            let page: ChangeList = self
                .api
                .json("changes.list", |c| {
                    c.get(&url).query(&[
                        ("pageToken", token.as_str()),
                        ("pageSize", "1000"),
                        ("includeRemoved", "true"),
                        ("spaces", "drive"),
                        ("supportsAllDrives", "true"),
                        ("includeItemsFromAllDrives", "true"),
                        ("fields", fields.as_str()),
                    ])
                })
                .await?;
            raw.extend(page.changes);
            match (page.next_page_token, page.new_start_page_token) {
                (Some(next), _) => token = next,
                (None, Some(start)) => break start,
                (None, None) => {
                    return Err(ProviderError::Protocol(
                        "changes.list page without nextPageToken or newStartPageToken".into(),
                    ))
                }
            }
        };
        // Latest change per file, in order of last appearance.
        let mut latest: Vec<DriveChange> = Vec::new();
        for ch in raw {
            let Some(id) = ch.file_id.clone() else {
                continue;
            };
            latest.retain(|c| c.file_id.as_deref() != Some(id.as_str()));
            latest.push(ch);
        }
        // First note where each item was, then drop the listings that the changes touch
        // (old and new parents) so that local names are recomputed with duplicates seen as
        // they are now. Old paths must be read before any refetch overwrites them.
        let mut old_paths: HashMap<String, String> = HashMap::new();
        {
            let ids = &mut self.cache.lock().unwrap().ids;
            for ch in &latest {
                let id = ch.file_id.as_deref().unwrap_or_default();
                if let Some(p) = ids.last_path(id) {
                    old_paths.insert(id.to_owned(), p.to_owned());
                }
            }
            for ch in &latest {
                let id = ch.file_id.as_deref().unwrap_or_default();
                ids.reported(id);
                ids.invalidate_holder_of(id);
                if let Some(p) = ch.file.as_ref().and_then(|f| f.parents.first()) {
                    ids.invalidate(p);
                }
            }
        }
        let mut changes = Vec::new();
        for ch in latest {
            let id = ch.file_id.unwrap_or_default();
            let drive_root = ch.file.as_ref().is_some_and(|f| f.is_fixed())
                || self.cache.lock().unwrap().folder_drive.get(&id) == Some(&id);
            if id == root || drive_root {
                // Shared drives are listed with drives.list, not through the change feed.
                continue;
            }
            let old_path = old_paths.get(&id).cloned();
            let file = match ch.file {
                Some(f) if !ch.removed && self.visible(&f) => f,
                _ => {
                    if let Some(p) = old_path {
                        self.cache.lock().unwrap().ids.forget_below(&p);
                        changes.push(Change::Removed { path: p });
                    }
                    continue;
                }
            };
            let parent_path = file
                .parents
                .first()
                .and_then(|p| self.cache.lock().unwrap().ids.path(p).map(str::to_owned));
            let Some(parent_path) = parent_path else {
                // Moved somewhere we have never listed (or outside the mount).
                if let Some(p) = old_path {
                    self.cache.lock().unwrap().ids.forget_below(&p);
                    changes.push(Change::Removed { path: p });
                }
                continue;
            };
            let parent_id = file.parents[0].clone();
            let listing = self.listing(&parent_id, &parent_path).await?;
            let Some((name, f)) = listing.children.iter().find(|(_, f)| f.id == id) else {
                continue;
            };
            let path = join_path(&parent_path, name);
            if let Some(old) = old_path.filter(|o| *o != path) {
                self.cache.lock().unwrap().ids.forget_below(&old);
                changes.push(Change::Removed { path: old });
                self.cache.lock().unwrap().ids.set_path(&id, &path);
            }
            changes.push(Change::Upserted {
                entry: self.entry(name, f),
                path,
            });
        }
        Ok(ChangeBatch {
            changes,
            cursor: new_cursor,
        })
    }

    async fn list_versions(&self, path: &str) -> ProviderResult<Vec<NativeVersion>> {
        let (_, f) = self.resolve(path).await?;
        if f.is_folder() || f.is_native() {
            return Err(ProviderError::Unsupported(format!(
                "{path}: revisions are only downloadable for files with binary content"
            )));
        }
        let url = self.url(&format!("files/{}/revisions", f.id));
        paging::collect_all("revisions.list", |token| {
            let url = &url;
            async move {
                let page: RevisionList = self
                    .api
                    .json("revisions.list", |c| {
                        let r = c.get(url).query(&[
                            ("pageSize", "1000"),
                            (
                                "fields",
                                "nextPageToken,revisions(id,modifiedTime,size,md5Checksum)",
                            ),
                        ]);
                        match &token {
                            Some(t) => r.query(&[("pageToken", t)]),
                            None => r,
                        }
                    })
                    .await?;
                let items = page
                    .revisions
                    .into_iter()
                    .map(|r| NativeVersion {
                        mtime: r
                            .modified_time
                            .as_deref()
                            .and_then(|t| chrono::DateTime::parse_from_rfc3339(t).ok())
                            .map(SystemTime::from)
                            .unwrap_or(SystemTime::UNIX_EPOCH),
                        size: r.size.and_then(|s| s.parse().ok()).unwrap_or(0),
                        hash: r.md5_checksum.map(|h| format!("md5:{h}")),
                        id: r.id,
                    })
                    .collect();
                Ok(Page {
                    items,
                    next: page.next_page_token,
                })
            }
        })
        .await
    }

    async fn read_version(&self, path: &str, version_id: &str) -> ProviderResult<ByteStream> {
        let (_, f) = self.resolve(path).await?;
        if f.is_folder() || f.is_native() {
            return Err(ProviderError::Unsupported(format!(
                "{path}: revisions are only downloadable for files with binary content"
            )));
        }
        let url = self.url(&format!("files/{}/revisions/{version_id}", f.id));
        self.download(&url, "revisions.get(media)", 0, None).await
    }
}
