//! OneDrive (personal and work) and SharePoint document libraries over Microsoft Graph,
//! on the provider kit. One connection is one drive (the user's, or a library by drive
//! id). Items are addressed by path (`/drives/{d}/root:/a/b:`), so no id cache is needed
//! for reads and writes.
//!
//! Graph's rules this module follows (provider-apis §2):
//! - listings follow `@odata.nextLink` verbatim;
//! - reads go to the item's short-lived `@microsoft.graph.downloadUrl` **without** the
//!   `Authorization` header, with `Range` there (a 200 with the whole body is accepted), and
//!   a link that stopped working is fetched again;
//! - uploads up to 4 MiB are one PUT; larger ones go through an upload session in
//!   fragments of a multiple of 320 KiB under 60 MiB, in order, without `Authorization`,
//!   resumed from `nextExpectedRanges`, started over when the session expired;
//! - a conditional write sends the eTag in `If-Match`; "must not exist" is
//!   `conflictBehavior=fail`; nothing is ever renamed or overwritten silently;
//! - copy is asynchronous: 202 and a monitor URL polled without `Authorization`;
//! - OneNote notebooks (`package`) and shortcuts to folders others shared (`remoteItem`,
//!   "Add to My files": their content is in the sharer's drive) are not shown; names are
//!   case-insensitive, and the
//!   characters OneDrive forbids are mapped to look-alikes and back ([`names`]).
//!
//! - remote changes come from the drive's delta feed: its items carry no path, so the
//!   provider keeps where it last saw each item (`Paths`) and places changes by their
//!   parent's id.
//!
//! - versions are Graph's own (`/versions`, each read through a download link).
//!
//! A connection without a `drive_id` shows the account's drives side by side
//! (`OneDrive/`, `SharePoint/<site>/<library>/`): see [`drives`].
//!
//! Shortcuts to folders others shared ("Add to My files") are not shown where they are;
//! the account's layout shows them under `Shared/` ([`drives`]), each addressed from the
//! shared item in its owner's drive (`on_item`).

pub(crate) mod api;
pub mod drives;
pub mod names;
pub mod quickxor;

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use bytes::Bytes;
use futures::StreamExt;
use reqwest::{Method, StatusCode};
use serde::{Deserialize, Serialize};
use serde_json::json;

use self::api::{
    DeltaPage, DriveInfo, DriveItem, GraphErrors, ItemPage, Monitor, SessionStatus,
    UploadSessionReply, VersionList, ITEM_SELECT,
};
use super::kit::auth::OAuthBearer;
use super::kit::client::{transport_error, ApiClient, Call, HttpSettings};
use super::kit::paging::{self, Page};
use super::kit::ranged::{self, Ranged};
use super::kit::retry::{Idempotency, RetryPolicy};
use super::kit::upload_session::{self, ChunkReply, SessionEnd, UploadSession};
use super::{
    join_path, split_path, ByteStream, Capabilities, Change, ChangeBatch, ListStream,
    NativeVersion, Provider, ProviderError, ProviderResult, Quota, RemoteEntry, UploadOptions,
};
use crate::accounts::BearerTokens;
use crate::provider::kit::retry::cloud_api;

/// Fragments of upload sessions are multiples of this (but the last).
pub const FRAGMENT_UNIT: u64 = 320 * 1024;
/// Each fragment request stays below this.
const FRAGMENT_MAX: u64 = 60 * 1024 * 1024;
/// Simple uploads take at most this much.
pub const SIMPLE_UPLOAD_LIMIT: u64 = 4 * 1024 * 1024;

fn default_api_base() -> String {
    "https://graph.microsoft.com/v1.0".into()
}
fn default_fragment_size() -> u64 {
    32 * FRAGMENT_UNIT
}
fn default_page_size() -> u32 {
    500
}
fn default_rps() -> f64 {
    10.0
}
fn default_true() -> bool {
    true
}
fn default_sites_refresh() -> u64 {
    300
}

/// One OneDrive / SharePoint connection (the account's tokens come separately).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OneDriveConfig {
    #[serde(default = "default_api_base")]
    pub api_base: String,
    /// One drive alone at the connection's root: `"me"` is the user's own, anything else a
    /// drive id (a SharePoint library, or another user's drive shared whole). Unset: the
    /// account's drives side by side — `OneDrive/` and, for work accounts,
    /// `SharePoint/<site>/<library>/` (see [`drives`]).
    #[serde(default)]
    pub drive_id: Option<String>,
    /// SharePoint sites to show besides the followed ones, by URL
    /// (`https://contoso.sharepoint.com/sites/Team`).
    #[serde(default)]
    pub sharepoint_sites: Vec<String>,
    /// Show the sites the user follows in SharePoint (needs the `Sites.Read.All` scope).
    #[serde(default = "default_true")]
    pub followed_sites: bool,
    /// How often the list of sites and libraries is asked again (when the layout is
    /// listed or the change feed read), in seconds.
    #[serde(default = "default_sites_refresh")]
    pub sites_refresh_secs: u64,
    /// Upload-session fragment size: a multiple of 320 KiB, under 60 MiB.
    #[serde(default = "default_fragment_size")]
    pub fragment_size: u64,
    /// Items per listing request (`$top`, 1..=1000).
    #[serde(default = "default_page_size")]
    pub page_size: u32,
    #[serde(default = "default_rps")]
    pub max_requests_per_second: f64,
    #[serde(default = "cloud_api::max_retries")]
    pub max_retries: u32,
    #[serde(default = "cloud_api::retry_base_ms")]
    pub retry_base_delay_ms: u64,
    #[serde(default = "cloud_api::retry_budget_secs")]
    pub retry_budget_secs: u64,
    #[serde(default = "cloud_api::timeout_secs")]
    pub timeout_secs: u64,
}

impl Default for OneDriveConfig {
    fn default() -> Self {
        OneDriveConfig {
            api_base: default_api_base(),
            drive_id: None,
            sharepoint_sites: Vec::new(),
            followed_sites: true,
            sites_refresh_secs: default_sites_refresh(),
            fragment_size: default_fragment_size(),
            page_size: default_page_size(),
            max_requests_per_second: default_rps(),
            max_retries: cloud_api::max_retries(),
            retry_base_delay_ms: cloud_api::retry_base_ms(),
            retry_budget_secs: cloud_api::retry_budget_secs(),
            timeout_secs: cloud_api::timeout_secs(),
        }
    }
}

pub struct OneDriveProvider {
    cfg: OneDriveConfig,
    /// Shared by every drive of one connection (one rate cap and retry budget per account).
    api: Arc<ApiClient>,
    /// `{api}/me/drive` or `{api}/drives/{id}`.
    drive: String,
    /// The drive's id when it is not the user's own (`me`): named in move and copy bodies,
    /// so that a parent id is never looked up in another drive.
    drive_id: Option<String>,
    /// What the connection's `/` is in that drive: `root`, or `items/{id}` for a folder
    /// someone shared (see `on_item`).
    root: String,
    paths: Mutex<Paths>,
}

/// What the delta feed needs to turn ids into paths (its items carry a parent id and a
/// name, never a path, and deleted ones not even a name on Business).
#[derive(Default)]
struct Paths {
    /// Where each item was when the feed last told us (or when we first saw it): a
    /// change reports it removed from there. Our own moves do not update it, so that the
    /// feed still reports where an item went from.
    reported: HashMap<String, String>,
    /// Where each folder is now (listings, our own moves, the feed), to place a changed
    /// item under its parent.
    folders: HashMap<String, String>,
    root_id: Option<String>,
}

impl Paths {
    fn saw(&mut self, item: &DriveItem, path: &str) {
        self.reported
            .entry(item.id.clone())
            .or_insert_with(|| path.to_owned());
        if item.is_folder() {
            self.folders.insert(item.id.clone(), path.to_owned());
        }
        if path == "/" {
            self.root_id = Some(item.id.clone());
        }
    }

    /// A folder moved from `from` to `to`: what was known below it moves too.
    fn moved(map: &mut HashMap<String, String>, from: &str, to: &str) {
        let prefix = format!("{from}/");
        for p in map.values_mut() {
            if let Some(rest) = p.strip_prefix(&prefix) {
                *p = format!("{to}/{rest}");
            }
        }
    }
}

/// A path segment as Graph's path addressing wants it: percent-encoded, `/` kept out.
fn encode_segment(s: &str) -> String {
    const SET: &percent_encoding::AsciiSet = &percent_encoding::NON_ALPHANUMERIC
        .remove(b'-')
        .remove(b'_')
        .remove(b'.')
        .remove(b'~');
    percent_encoding::utf8_percent_encode(s, SET).to_string()
}

/// The name OneDrive holds for a name of the mount (see [`names`]).
fn remote_name(local: &str) -> ProviderResult<String> {
    match names::refusal(local) {
        Some(why) => Err(ProviderError::InvalidName(why)),
        None => Ok(names::encode(local)),
    }
}

fn protocol(what: &str, e: impl std::fmt::Display) -> ProviderError {
    ProviderError::Protocol(format!("{what}: {e}"))
}

impl OneDriveProvider {
    pub fn new(cfg: OneDriveConfig, tokens: Arc<dyn BearerTokens>) -> ProviderResult<Self> {
        let bad = |m: String| ProviderError::Protocol(format!("OneDrive settings: {m}"));
        if cfg.fragment_size == 0
            || cfg.fragment_size % FRAGMENT_UNIT != 0
            || cfg.fragment_size >= FRAGMENT_MAX
        {
            return Err(bad(format!(
                "fragment_size {} must be a multiple of 327680 (320 KiB) below 60 MiB",
                cfg.fragment_size
            )));
        }
        if !(1..=1000).contains(&cfg.page_size) {
            return Err(bad("page_size must be within 1..=1000".into()));
        }
        reqwest::Url::parse(&cfg.api_base)
            .map_err(|e| bad(format!("bad URL {:?}: {e}", cfg.api_base)))?;
        // Redirects are not followed: a download is a 302 to a link that must not get the
        // Authorization header, and the link is read from the item instead.
        let http = HttpSettings {
            follow_redirects: false,
            ..HttpSettings::new(Duration::from_secs(cfg.timeout_secs))
        }
        .build()
        .map_err(bad)?;
        let retry = RetryPolicy::from_settings(
            cfg.max_retries,
            cfg.retry_base_delay_ms,
            cfg.retry_budget_secs,
            Duration::from_secs(120),
        );
        let api = Arc::new(ApiClient::new(
            http,
            Arc::new(OAuthBearer(tokens)),
            Arc::new(GraphErrors),
            retry,
            cfg.max_requests_per_second,
        ));
        let base = cfg.api_base.trim_end_matches('/');
        let drive = match cfg.drive_id.as_deref() {
            None | Some("me") => format!("{base}/me/drive"),
            Some(id) => format!("{base}/drives/{}", encode_segment(id)),
        };
        let drive_id = cfg.drive_id.clone().filter(|d| d != "me");
        Ok(OneDriveProvider {
            cfg,
            api,
            drive,
            drive_id,
            root: "root".into(),
            paths: Mutex::default(),
        })
    }

    /// Another drive of the same account (a SharePoint library), on this connection's
    /// client.
    pub(crate) fn on_drive(&self, drive_id: &str) -> OneDriveProvider {
        let base = self.cfg.api_base.trim_end_matches('/');
        OneDriveProvider {
            cfg: OneDriveConfig {
                drive_id: Some(drive_id.to_owned()),
                ..self.cfg.clone()
            },
            api: self.api.clone(),
            drive: format!("{base}/drives/{}", encode_segment(drive_id)),
            drive_id: Some(drive_id.to_owned()),
            root: "root".into(),
            paths: Mutex::default(),
        }
    }

    /// A folder someone shared with the account (in their drive), as a drive of its own:
    /// paths below it are addressed from the item (`/drives/{d}/items/{id}:/a/b:`). Its
    /// changes come from listings only: Graph keeps no delta below a drive's root on work
    /// accounts, and a shared folder's own delta is not followed yet.
    pub(crate) fn on_item(&self, drive_id: &str, item_id: &str) -> OneDriveProvider {
        OneDriveProvider {
            root: format!("items/{}", encode_segment(item_id)),
            ..self.on_drive(drive_id)
        }
    }

    /// A move's or copy's destination folder, in this drive.
    fn parent_ref(&self, parent_id: &str) -> serde_json::Value {
        match &self.drive_id {
            Some(d) => json!({"driveId": d, "id": parent_id}),
            None => json!({"id": parent_id}),
        }
    }

    /// A Graph resource outside the drive (sites, the drive's own record), for the
    /// account's layout of drives.
    pub(crate) async fn graph_get<T: serde::de::DeserializeOwned>(
        &self,
        what: &str,
        path_and_query: &str,
    ) -> ProviderResult<T> {
        let url = format!(
            "{}/{}",
            self.cfg.api_base.trim_end_matches('/'),
            path_and_query.trim_start_matches('/')
        );
        self.json(what, Idempotency::Idempotent, || {
            self.request(Method::GET, &url)
        })
        .await
    }

    /// Every member of a paged Graph collection (`value`, `@odata.nextLink` followed as it
    /// is).
    pub(crate) async fn graph_get_all<T: serde::de::DeserializeOwned + Send>(
        &self,
        what: &str,
        path_and_query: &str,
    ) -> ProviderResult<Vec<T>> {
        #[derive(Deserialize)]
        struct Collection<T> {
            value: Vec<T>,
            #[serde(rename = "@odata.nextLink", default)]
            next: Option<String>,
        }
        let first = format!(
            "{}/{}",
            self.cfg.api_base.trim_end_matches('/'),
            path_and_query.trim_start_matches('/')
        );
        paging::collect_all(what, |next: Option<String>| {
            let url = next.unwrap_or_else(|| first.clone());
            async move {
                let page: Collection<T> = self
                    .json(what, Idempotency::Idempotent, || {
                        self.request(Method::GET, &url)
                    })
                    .await?;
                Ok(Page {
                    items: page.value,
                    next: page.next,
                })
            }
        })
        .await
    }

    /// The item at `path` (`/` is the drive's root), with `suffix` (`/children`, ...).
    fn item_url(&self, path: &str, suffix: &str) -> String {
        if path == "/" {
            return format!("{}/{}{suffix}", self.drive, self.root);
        }
        // The mount's names as OneDrive holds them (see `names`).
        let encoded: Vec<String> = path
            .trim_start_matches('/')
            .split('/')
            .map(|seg| encode_segment(&names::encode(seg)))
            .collect();
        match suffix {
            "" => format!("{}/{}:/{}", self.drive, self.root, encoded.join("/")),
            s => format!("{}/{}:/{}:{s}", self.drive, self.root, encoded.join("/")),
        }
    }

    fn request(&self, method: Method, url: &str) -> reqwest::RequestBuilder {
        let r = self.api.http().request(method.clone(), url);
        // Since OneDrive Personal's 2025 migration, listings and the delta feed leave out
        // shortcuts to shared folders unless asked with `deltashowremoteitemsaliasid`
        // (undocumented; readonly-sources §4.4: onedrive-api-docs#1891). A server ignores
        // preferences it does not know (RFC 7240).
        // Work accounts list "Add shortcut to My files" items only when asked with
        // `Include-Feature=AddToOneDrive` (as abraunegg/onedrive and onedrive-go ask).
        if method == Method::GET {
            r.header(
                "Prefer",
                "deltashowremoteitemsaliasid, Include-Feature=AddToOneDrive",
            )
        } else {
            r
        }
    }

    async fn json<T: serde::de::DeserializeOwned>(
        &self,
        what: &str,
        idempotency: Idempotency,
        build: impl Fn() -> reqwest::RequestBuilder,
    ) -> ProviderResult<T> {
        self.api
            .json(Call::new(what).idempotency(idempotency), || {
                let r = build().build().map_err(|e| protocol(what, e.without_url()));
                async move { r }
            })
            .await
    }

    async fn get_item(&self, path: &str, select: &str) -> ProviderResult<DriveItem> {
        let url = self.item_url(path, "");
        self.json("get item", Idempotency::Idempotent, || {
            self.request(Method::GET, &url)
                .query(&[("$select", select)])
        })
        .await
        .map_err(|e| match e {
            ProviderError::NotFound(_) => ProviderError::NotFound(path.to_owned()),
            e => e,
        })
    }

    fn entry(&self, item: &DriveItem, path: &str) -> RemoteEntry {
        self.paths.lock().unwrap().saw(item, path);
        let name = if path == "/" { "/" } else { split_path(path).1 };
        item.entry(name)
    }

    /// The path of the folder with id `id` now: known, or asked for (outside the delta
    /// feed an item carries its parent's path).
    async fn folder_path(&self, id: &str) -> ProviderResult<String> {
        if let Some(p) = self.paths.lock().unwrap().folders.get(id) {
            return Ok(p.clone());
        }
        if self.paths.lock().unwrap().root_id.is_none() {
            let root = self.get_item("/", "id,folder,root").await?;
            self.paths.lock().unwrap().saw(&root, "/");
            if root.id == id {
                return Ok("/".into());
            }
        }
        let url = format!("{}/items/{}", self.drive, encode_segment(id));
        let item: DriveItem = self
            .json("get folder", Idempotency::Idempotent, || {
                self.request(Method::GET, &url)
                    .query(&[("$select", "id,name,folder,root,parentReference")])
            })
            .await?;
        let path = if item.root.is_some() {
            "/".to_owned()
        } else {
            let parent = item
                .parent
                .as_ref()
                .and_then(|p| p.local_path())
                .ok_or_else(|| ProviderError::Protocol(format!("item {id}: no parent path")))?;
            join_path(
                &parent,
                &names::to_local(item.name.as_deref().unwrap_or_default()),
            )
        };
        self.paths
            .lock()
            .unwrap()
            .folders
            .insert(id.to_owned(), path.clone());
        Ok(path)
    }

    /// The delta feed's pages from `link` to the next delta link: the latest state of each
    /// item that changed (an item may appear more than once; the last one counts).
    async fn delta_pages(&self, link: &str) -> ProviderResult<(Vec<DriveItem>, String)> {
        let mut link = link.to_owned();
        let mut items: Vec<Option<DriveItem>> = Vec::new();
        let mut index: HashMap<String, usize> = HashMap::new();
        loop {
            let page: DeltaPage = self
                .json("delta", Idempotency::Idempotent, || {
                    self.request(Method::GET, &link)
                })
                .await
                .map_err(|e| match e {
                    // 410 Gone: the feed forgot our place; the caller starts over.
                    ProviderError::NotFound(m) => ProviderError::PreconditionFailed(m),
                    e => e,
                })?;
            for item in page.value {
                // The same item may come more than once: the last one counts, in its place.
                if let Some(i) = index.remove(&item.id) {
                    items[i] = None;
                }
                index.insert(item.id.clone(), items.len());
                items.push(Some(item));
            }
            match (page.next, page.delta) {
                (Some(next), _) => link = next,
                (None, Some(delta)) => return Ok((items.into_iter().flatten().collect(), delta)),
                (None, None) => {
                    return Err(ProviderError::Protocol(
                        "delta page without a next or delta link".into(),
                    ))
                }
            }
        }
    }

    /// Whether the folder at `path` has no children.
    async fn is_empty_folder(&self, path: &str) -> ProviderResult<bool> {
        let url = self.item_url(path, "/children");
        let page: ItemPage = self
            .json("look into a folder", Idempotency::Idempotent, || {
                self.request(Method::GET, &url)
                    .query(&[("$top", "1"), ("$select", "id")])
            })
            .await?;
        Ok(page.value.is_empty())
    }

    /// The id of the folder at `path`, for moves and copies (which name the new parent).
    async fn folder_id(&self, path: &str) -> ProviderResult<String> {
        let item = self.get_item(path, "id,folder").await?;
        if !item.is_folder() {
            return Err(ProviderError::NotADirectory(path.to_owned()));
        }
        Ok(item.id)
    }

    /// Bytes from `offset` of the file behind a pre-authenticated link.
    async fn read_link(
        &self,
        link: &str,
        offset: u64,
        len: u64,
    ) -> ProviderResult<Result<ByteStream, StatusCode>> {
        let what = "download";
        let range = ranged::range_header(offset, len);
        let resp = self
            .api
            .send_raw(Call::new(what).unauthenticated(), || {
                let r = self
                    .request(Method::GET, link)
                    .header(reqwest::header::RANGE, &range)
                    .build()
                    .map_err(|e| protocol(what, e.without_url()));
                async move { r }
            })
            .await?;
        let status = resp.status();
        let skip = match ranged::interpret(status, resp.headers(), offset, what) {
            Some(Ok(Ranged::PastEnd)) => return Ok(Ok(Box::pin(futures::stream::empty()))),
            Some(Ok(Ranged::Body { skip, .. })) => skip,
            Some(Err(e)) => return Err(e),
            // An expired or refused link: the caller fetches a new one.
            None if matches!(status.as_u16(), 401 | 403 | 404 | 410) => return Ok(Err(status)),
            None => return Err(self.api.error_of(resp, what).await),
        };
        let body = resp
            .bytes_stream()
            .map(move |r| r.map_err(|e| transport_error(&e, what)));
        Ok(Ok(ranged::window(body, skip, len)))
    }

    async fn upload_simple(
        &self,
        path: &str,
        source: &Path,
        options: &UploadOptions,
    ) -> ProviderResult<DriveItem> {
        let url = self.item_url(path, "/content");
        let data = Bytes::from(tokio::fs::read(source).await?);
        let (if_match, behaviour) = conditions(options);
        let what = format!("PUT {path}");
        let item: DriveItem = self
            .api
            .json(
                Call::new(&what).idempotency(if if_match.is_some() || behaviour == "fail" {
                    Idempotency::NotIdempotent
                } else {
                    Idempotency::Idempotent
                }),
                || {
                    let mut r = self
                        .request(Method::PUT, &url)
                        .query(&[("@microsoft.graph.conflictBehavior", behaviour)])
                        .header(reqwest::header::CONTENT_TYPE, "application/octet-stream")
                        .body(data.clone());
                    if let Some(tag) = &if_match {
                        r = r.header(reqwest::header::IF_MATCH, tag);
                    }
                    let r = r.build().map_err(|e| protocol(&what, e.without_url()));
                    async move { r }
                },
            )
            .await
            .map_err(|e| conflict_as_precondition(e, path))?;
        match options.mtime {
            Some(mtime) => self.set_mtime_of(path, mtime).await,
            None => Ok(item),
        }
    }

    async fn set_mtime_of(&self, path: &str, mtime: SystemTime) -> ProviderResult<DriveItem> {
        let url = self.item_url(path, "");
        let t = chrono::DateTime::<chrono::Utc>::from(mtime)
            .to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
        let body = json!({"fileSystemInfo": {"lastModifiedDateTime": t}});
        self.json("set modification time", Idempotency::Idempotent, || {
            self.request(Method::PATCH, &url).json(&body)
        })
        .await
    }

    /// Polls a copy's monitor URL (no `Authorization`) until it completes.
    async fn wait_for_copy(&self, monitor: &str, what: &str) -> ProviderResult<()> {
        let deadline =
            tokio::time::Instant::now() + Duration::from_secs(self.cfg.retry_budget_secs.max(30));
        let mut wait = Duration::from_millis(50);
        loop {
            let m: Monitor = self
                .api
                .json(
                    Call::new(what)
                        .unauthenticated()
                        .accept(&[StatusCode::ACCEPTED]),
                    || {
                        let r = self
                            .request(Method::GET, monitor)
                            .build()
                            .map_err(|e| protocol(what, e.without_url()));
                        async move { r }
                    },
                )
                .await?;
            match m.status.as_str() {
                "completed" => return Ok(()),
                "failed" | "cancelled" => {
                    return Err(ProviderError::Protocol(format!(
                        "{what}: the copy {}",
                        m.status
                    )))
                }
                _ if tokio::time::Instant::now() >= deadline => {
                    return Err(ProviderError::Transient(format!(
                        "{what}: the copy is still running"
                    )))
                }
                _ => {
                    tokio::time::sleep(wait).await;
                    wait = (wait * 2).min(Duration::from_secs(2));
                }
            }
        }
    }
}

/// What a conditional write sends: the eTag to match, and the conflict behaviour.
fn conditions(options: &UploadOptions) -> (Option<String>, &'static str) {
    match &options.expected_revision {
        Some(Some(tag)) => (Some(tag.clone()), "replace"),
        Some(None) => (None, "fail"),
        None => (None, "replace"),
    }
}

/// A write refused because the name is taken or the eTag moved on: the remote is not what
/// the caller expected.
fn conflict_as_precondition(e: ProviderError, path: &str) -> ProviderError {
    match e {
        ProviderError::AlreadyExists(m) | ProviderError::PreconditionFailed(m) => {
            ProviderError::PreconditionFailed(format!("{path}: {m}"))
        }
        e => e,
    }
}

/// Graph's upload session for one file.
struct GraphSession<'a> {
    p: &'a OneDriveProvider,
    path: &'a str,
    if_match: Option<String>,
    behaviour: &'static str,
    mtime: Option<SystemTime>,
}

impl GraphSession<'_> {
    fn status(reply: SessionStatus, what: &str) -> ChunkReply<DriveItem> {
        match reply.received() {
            Some(n) => ChunkReply::Incomplete(n),
            None => ChunkReply::Retry(ProviderError::Protocol(format!(
                "{what}: no nextExpectedRanges in the session's status"
            ))),
        }
    }

    /// A reply from the upload URL: the item (done), the status (more wanted), or why not.
    async fn read(&self, resp: reqwest::Response, what: &str) -> ChunkReply<DriveItem> {
        let status = resp.status();
        let headers = resp.headers().clone();
        let body = match resp.bytes().await {
            Ok(b) => b,
            Err(e) => return ChunkReply::Retry(transport_error(&e, what)),
        };
        match status.as_u16() {
            200 | 201 => match serde_json::from_slice::<DriveItem>(&body) {
                Ok(item) => ChunkReply::Done(Box::new(item)),
                // A 200 to a status query is the status.
                Err(_) => match serde_json::from_slice::<SessionStatus>(&body) {
                    Ok(s) => Self::status(s, what),
                    Err(e) => ChunkReply::Retry(protocol(what, e)),
                },
            },
            202 => match serde_json::from_slice::<SessionStatus>(&body) {
                Ok(s) => Self::status(s, what),
                Err(e) => ChunkReply::Retry(protocol(what, e)),
            },
            404 => ChunkReply::Expired,
            // Overlap or out of order: ask where the server stands.
            416 => ChunkReply::Retry(ProviderError::Transient(format!("{what}: 416"))),
            s => {
                let err = self.p.api.classify(
                    StatusCode::from_u16(s).unwrap_or(status),
                    &headers,
                    &body,
                    what,
                );
                match err {
                    ProviderError::AlreadyExists(_) | ProviderError::PreconditionFailed(_) => {
                        ChunkReply::Fatal(conflict_as_precondition(err, self.path))
                    }
                    e if e.is_retryable() => ChunkReply::Retry(e),
                    e => ChunkReply::Fatal(e),
                }
            }
        }
    }
}

#[async_trait]
impl UploadSession for GraphSession<'_> {
    type Done = DriveItem;

    async fn start(&self, _size: u64) -> ProviderResult<String> {
        let url = self.p.item_url(self.path, "/createUploadSession");
        let mut item = json!({"@microsoft.graph.conflictBehavior": self.behaviour});
        if let Some(m) = self.mtime {
            let t = chrono::DateTime::<chrono::Utc>::from(m)
                .to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
            item["fileSystemInfo"] = json!({"lastModifiedDateTime": t});
        }
        let body = json!({ "item": item });
        let what = format!("createUploadSession {}", self.path);
        let reply: UploadSessionReply = self
            .p
            .api
            .json(
                Call::new(&what).idempotency(Idempotency::Idempotent),
                || {
                    let mut r = self.p.request(Method::POST, &url).json(&body);
                    if let Some(tag) = &self.if_match {
                        r = r.header(reqwest::header::IF_MATCH, tag);
                    }
                    let r = r.build().map_err(|e| protocol(&what, e.without_url()));
                    async move { r }
                },
            )
            .await
            .map_err(|e| conflict_as_precondition(e, self.path))?;
        Ok(reply.upload_url)
    }

    async fn put(
        &self,
        session: &str,
        offset: u64,
        chunk: Bytes,
        size: u64,
    ) -> ChunkReply<DriveItem> {
        let what = "upload fragment";
        let end = offset + chunk.len() as u64 - 1;
        // No Authorization: the upload URL is its own credential (a token there gets 401).
        let sent = self
            .p
            .api
            .send_raw(
                Call::new(what)
                    .unauthenticated()
                    .idempotency(Idempotency::NotIdempotent),
                || {
                    let r = self
                        .p
                        .request(Method::PUT, session)
                        .header(
                            reqwest::header::CONTENT_RANGE,
                            format!("bytes {offset}-{end}/{size}"),
                        )
                        .body(chunk.clone())
                        .build()
                        .map_err(|e| protocol(what, e.without_url()));
                    async move { r }
                },
            )
            .await;
        match sent {
            Ok(resp) => self.read(resp, what).await,
            Err(e) => ChunkReply::Retry(e),
        }
    }

    async fn query(&self, session: &str, _size: u64) -> ChunkReply<DriveItem> {
        let what = "upload session status";
        let sent = self
            .p
            .api
            .send_raw(Call::new(what).unauthenticated(), || {
                let r = self
                    .p
                    .request(Method::GET, session)
                    .build()
                    .map_err(|e| protocol(what, e.without_url()));
                async move { r }
            })
            .await;
        match sent {
            Ok(resp) => self.read(resp, what).await,
            Err(e) => ChunkReply::Retry(e),
        }
    }
}

#[async_trait]
impl Provider for OneDriveProvider {
    fn kind(&self) -> &'static str {
        "onedrive"
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities {
            // The drive's delta feed, from its root only (a shared folder has none here).
            delta: self.root == "root",
            // OneDrive keeps every file's versions itself (no copies of ours on the drive).
            native_versions: true,
            case_insensitive: true,
            max_name_len: 255,
            // "The entire path … must be fewer than 400 characters" (provider-apis §2.4).
            max_path_len: 399,
            // The characters OneDrive refuses are mapped (see `names`), not refused.
            forbidden_chars: Vec::new(),
            ..Capabilities::default()
        }
    }

    fn refuses_name(&self, name: &str) -> Option<String> {
        names::refusal(name)
    }

    fn list<'a>(&'a self, dir: &'a str) -> ListStream<'a> {
        Box::pin(futures::stream::once(async move {
            let first = self.item_url(dir, "/children");
            let top = self.cfg.page_size.to_string();
            let what = format!("list {dir}");
            let items = paging::collect_all(&what, |next: Option<String>| {
                let (first, top, what) = (first.clone(), top.clone(), what.clone());
                async move {
                    let page: ItemPage = match next {
                        // The next link is opaque: followed as it is.
                        Some(link) => {
                            self.json(&what, Idempotency::Idempotent, || {
                                self.request(Method::GET, &link)
                            })
                            .await?
                        }
                        None => {
                            self.json(&what, Idempotency::Idempotent, || {
                                self.request(Method::GET, &first)
                                    .query(&[("$top", top.as_str()), ("$select", ITEM_SELECT)])
                            })
                            .await?
                        }
                    };
                    Ok(Page {
                        items: page.value,
                        next: page.next,
                    })
                }
            })
            .await
            .map_err(|e| match e {
                ProviderError::NotFound(_) => ProviderError::NotFound(dir.to_owned()),
                // Listing a file: Graph answers 400 invalidRequest.
                ProviderError::Protocol(m) if m.contains("not a folder") => {
                    ProviderError::NotADirectory(dir.to_owned())
                }
                e => e,
            })?;
            Ok(items
                .iter()
                .filter(|i| !i.hidden())
                .filter_map(|i| {
                    let name = names::to_local(i.name.as_deref()?);
                    Some(self.entry(i, &join_path(dir, &name)))
                })
                .collect())
        }))
    }

    async fn stat(&self, path: &str) -> ProviderResult<RemoteEntry> {
        let item = self.get_item(path, ITEM_SELECT).await?;
        if item.hidden() {
            return Err(ProviderError::NotFound(path.to_owned()));
        }
        Ok(self.entry(&item, path))
    }

    async fn read_range(
        &self,
        path: &str,
        revision: Option<&str>,
        offset: u64,
        len: u64,
    ) -> ProviderResult<ByteStream> {
        // Two tries: a link can expire between being handed out and being used.
        for _ in 0..2 {
            let item = self
                .get_item(path, "id,eTag,file,folder,@microsoft.graph.downloadUrl")
                .await?;
            if item.is_folder() {
                return Err(ProviderError::IsADirectory(path.to_owned()));
            }
            if let Some(rev) = revision {
                if item.etag.as_deref() != Some(rev) {
                    return Err(ProviderError::PreconditionFailed(format!(
                        "{path}: changed since revision {rev}"
                    )));
                }
            }
            if len == 0 {
                return Ok(Box::pin(futures::stream::empty()));
            }
            let Some(link) = item.download_url else {
                return Err(ProviderError::Protocol(format!(
                    "{path}: no download link in the item"
                )));
            };
            match self.read_link(&link, offset, len).await? {
                Ok(stream) => return Ok(stream),
                Err(status) => {
                    tracing::debug!(%path, %status, "download link refused; fetching a new one");
                }
            }
        }
        Err(ProviderError::Transient(format!(
            "{path}: the download link was refused twice"
        )))
    }

    async fn upload(
        &self,
        path: &str,
        source: &Path,
        options: &UploadOptions,
    ) -> ProviderResult<RemoteEntry> {
        let size = tokio::fs::metadata(source).await?.len();
        let item = if size <= SIMPLE_UPLOAD_LIMIT {
            match self.upload_simple(path, source, options).await {
                Ok(item) => item,
                // Graph refuses content for a folder with a plain 400: say what it is.
                Err(ProviderError::Protocol(m)) => {
                    return match self.get_item(path, "id,folder").await {
                        Ok(i) if i.is_folder() => Err(ProviderError::IsADirectory(path.to_owned())),
                        _ => Err(ProviderError::Protocol(m)),
                    }
                }
                Err(e) => return Err(e),
            }
        } else {
            let (if_match, behaviour) = conditions(options);
            let end = if behaviour == "fail" {
                SessionEnd::MayHaveCreated
            } else {
                SessionEnd::Replaces
            };
            let session = GraphSession {
                p: self,
                path,
                if_match,
                behaviour,
                mtime: options.mtime,
            };
            upload_session::upload(
                &session,
                source,
                size,
                self.cfg.fragment_size,
                self.api.retry_policy(),
                end,
            )
            .await?
        };
        Ok(self.entry(&item, path))
    }

    async fn mkdir(&self, path: &str) -> ProviderResult<RemoteEntry> {
        let (parent, name) = split_path(path);
        let url = self.item_url(parent, "/children");
        let name = remote_name(name)?;
        let body = json!({"name": name, "folder": {}, "@microsoft.graph.conflictBehavior": "fail"});
        let item: DriveItem = self
            .json(&format!("mkdir {path}"), Idempotency::NotIdempotent, || {
                self.request(Method::POST, &url).json(&body)
            })
            .await
            .map_err(|e| match e {
                ProviderError::AlreadyExists(_) => ProviderError::AlreadyExists(path.to_owned()),
                ProviderError::NotFound(_) => ProviderError::NotFound(parent.to_owned()),
                e => e,
            })?;
        Ok(self.entry(&item, path))
    }

    async fn rename(&self, from: &str, to: &str, overwrite: bool) -> ProviderResult<RemoteEntry> {
        let (to_parent, to_name) = split_path(to);
        let parent_id = self.folder_id(to_parent).await?;
        let src = self.get_item(from, "id,folder").await?;
        // Graph's `replace` would replace whatever is there, a folder with all its
        // contents included: what may be replaced is decided here, as rename(2) does.
        let mut behaviour = "fail";
        match self.get_item(to, "id,folder").await {
            Ok(target) if target.id == src.id => {}
            Ok(_) if !overwrite => return Err(ProviderError::AlreadyExists(to.to_owned())),
            Ok(target) => {
                match (src.is_folder(), target.is_folder()) {
                    (false, true) => return Err(ProviderError::IsADirectory(to.to_owned())),
                    (true, false) => return Err(ProviderError::NotADirectory(to.to_owned())),
                    (true, true) if !self.is_empty_folder(to).await? => {
                        return Err(ProviderError::DirectoryNotEmpty(to.to_owned()))
                    }
                    _ => {}
                }
                behaviour = "replace";
            }
            Err(ProviderError::NotFound(_)) => {}
            Err(e) => return Err(e),
        }
        let url = self.item_url(from, "");
        let body =
            json!({"name": remote_name(to_name)?, "parentReference": self.parent_ref(&parent_id)});
        let item: DriveItem = self
            .json(&format!("move {from}"), Idempotency::Idempotent, || {
                self.request(Method::PATCH, &url)
                    .query(&[("@microsoft.graph.conflictBehavior", behaviour)])
                    .json(&body)
            })
            .await
            .map_err(|e| match e {
                ProviderError::NotFound(_) => ProviderError::NotFound(from.to_owned()),
                ProviderError::AlreadyExists(_) => ProviderError::AlreadyExists(to.to_owned()),
                e => e,
            })?;
        if item.is_folder() {
            let mut paths = self.paths.lock().unwrap();
            Paths::moved(&mut paths.folders, from, to);
            paths.folders.insert(item.id.clone(), to.to_owned());
        }
        Ok(self.entry(&item, to))
    }

    async fn delete(&self, path: &str) -> ProviderResult<()> {
        if path == "/" {
            return Err(ProviderError::PermissionDenied(
                "the root of a drive".into(),
            ));
        }
        // Graph deletes a folder with everything in it; the trait removes empty ones only
        // (the queue deletes a tree bottom-up, and a folder that gained a child meanwhile
        // must stay). The delete names the item by id and eTag, so a retry cannot remove
        // something else created at the same path since.
        let item = self.get_item(path, "id,eTag,folder").await?;
        if item.is_folder() && !self.is_empty_folder(path).await? {
            return Err(ProviderError::DirectoryNotEmpty(path.to_owned()));
        }
        let url = format!("{}/items/{}", self.drive, encode_segment(&item.id));
        let what = format!("delete {path}");
        let resp = self
            .api
            .send(Call::new(&what), || {
                let mut r = self.request(Method::DELETE, &url);
                if let Some(tag) = &item.etag {
                    r = r.header(reqwest::header::IF_MATCH, tag);
                }
                let r = r.build().map_err(|e| protocol(&what, e.without_url()));
                async move { r }
            })
            .await;
        match resp {
            Ok(_) => Ok(()),
            Err(ProviderError::NotFound(_)) => Err(ProviderError::NotFound(path.to_owned())),
            // Changed since we looked (a child added, content edited): not ours to remove.
            Err(ProviderError::PreconditionFailed(_)) if item.is_folder() => {
                Err(ProviderError::DirectoryNotEmpty(path.to_owned()))
            }
            Err(e) => Err(e),
        }
    }

    async fn copy(&self, from: &str, to: &str) -> ProviderResult<RemoteEntry> {
        let src = self.get_item(from, "id,folder").await?;
        if src.is_folder() {
            return Err(ProviderError::IsADirectory(from.to_owned()));
        }
        if from.eq_ignore_ascii_case(to) {
            // The same item, names being case-insensitive.
            return Err(ProviderError::AlreadyExists(to.to_owned()));
        }
        let (to_parent, to_name) = split_path(to);
        let parent_id = self.folder_id(to_parent).await?;
        match self.get_item(to, "id,folder").await {
            Ok(t) if t.is_folder() => return Err(ProviderError::IsADirectory(to.to_owned())),
            Ok(_) | Err(ProviderError::NotFound(_)) => {}
            Err(e) => return Err(e),
        }
        // A copy replaces a file of that name, like cp; the old one stays until the copy
        // is made.
        let url = format!(
            "{}?@microsoft.graph.conflictBehavior=replace",
            self.item_url(from, "/copy")
        );
        let body =
            json!({"parentReference": self.parent_ref(&parent_id), "name": remote_name(to_name)?});
        let what = format!("copy {from}");
        let resp = self
            .api
            .send(
                Call::new(&what).idempotency(Idempotency::NotIdempotent),
                || {
                    let r = self
                        .request(Method::POST, &url)
                        .json(&body)
                        .build()
                        .map_err(|e| protocol(&what, e.without_url()));
                    async move { r }
                },
            )
            .await?;
        let monitor = resp
            .headers()
            .get(reqwest::header::LOCATION)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
            .ok_or_else(|| ProviderError::Protocol(format!("{what}: no monitor URL")))?;
        self.wait_for_copy(&monitor, &what).await?;
        self.stat(to).await
    }

    async fn set_mtime(&self, path: &str, mtime: SystemTime) -> ProviderResult<()> {
        self.set_mtime_of(path, mtime).await.map(|_| ())
    }

    async fn changes_cursor(&self) -> ProviderResult<String> {
        // `token=latest`: no enumeration of what is there, only what changes from now.
        let url = format!("{}/root/delta", self.drive);
        let page: DeltaPage = self
            .json("delta (latest)", Idempotency::Idempotent, || {
                self.request(Method::GET, &url)
                    .query(&[("token", "latest")])
            })
            .await?;
        page.delta.ok_or_else(|| {
            ProviderError::Protocol("delta?token=latest without a delta link".into())
        })
    }

    async fn changes_since(&self, cursor: &str) -> ProviderResult<ChangeBatch> {
        let (items, next) = self.delta_pages(cursor).await?;
        let mut changes = Vec::new();
        for item in items {
            if item.root.is_some() || item.hidden() {
                continue;
            }
            let mut old = self.paths.lock().unwrap().reported.get(&item.id).cloned();
            if old.is_none() && item.deleted.is_some() {
                // Not seen since the daemon started (the feed's place survives a restart,
                // this bookkeeping does not): the parent is known by id, and a listing of
                // it is what the mount needs to drop the entry. Business deletes carry no
                // name; the id stands in for it (only the parent part is used).
                if let Some(parent) = item.parent.as_ref().and_then(|p| p.id.as_deref()) {
                    if let Ok(dir) = self.folder_path(parent).await {
                        let name = item.name.as_deref().map(names::to_local);
                        old = Some(join_path(&dir, name.as_deref().unwrap_or(&item.id)));
                    }
                }
            }
            let new = match (
                &item.deleted,
                &item.name,
                item.parent.as_ref().and_then(|p| p.id.as_deref()),
            ) {
                (None, Some(name), Some(parent)) => Some(join_path(
                    &self.folder_path(parent).await?,
                    &names::to_local(name),
                )),
                _ => None,
            };
            if let Some(old) = &old {
                if new.as_ref() != Some(old) {
                    changes.push(Change::Removed { path: old.clone() });
                }
            }
            let mut paths = self.paths.lock().unwrap();
            match &new {
                Some(new) => {
                    paths.reported.insert(item.id.clone(), new.clone());
                    if item.is_folder() {
                        if let Some(old) = old.as_ref().filter(|o| *o != new) {
                            Paths::moved(&mut paths.reported, old, new);
                            Paths::moved(&mut paths.folders, old, new);
                        }
                        paths.folders.insert(item.id.clone(), new.clone());
                    }
                    let name = split_path(new).1;
                    changes.push(Change::Upserted {
                        path: new.clone(),
                        entry: item.entry(name),
                    });
                }
                None => {
                    paths.reported.remove(&item.id);
                    paths.folders.remove(&item.id);
                    if let Some(old) = &old {
                        // Whatever was known below a removed folder went with it.
                        let below = format!("{old}/");
                        paths.reported.retain(|_, p| !p.starts_with(&below));
                        paths.folders.retain(|_, p| !p.starts_with(&below));
                    }
                }
            }
        }
        Ok(ChangeBatch {
            changes,
            cursor: next,
        })
    }

    async fn list_versions(&self, path: &str) -> ProviderResult<Vec<NativeVersion>> {
        let first = self.item_url(path, "/versions");
        let what = format!("versions of {path}");
        let versions = paging::collect_all(&what, |next: Option<String>| {
            let (first, what) = (first.clone(), what.clone());
            async move {
                let link = next.unwrap_or(first);
                let page: VersionList = self
                    .json(&what, Idempotency::Idempotent, || {
                        self.request(Method::GET, &link)
                    })
                    .await?;
                Ok(Page {
                    items: page.value,
                    next: page.next,
                })
            }
        })
        .await
        .map_err(|e| match e {
            ProviderError::NotFound(_) => ProviderError::NotFound(path.to_owned()),
            // Folders have no versions: Graph answers 400.
            ProviderError::Protocol(m) => ProviderError::Unsupported(m),
            e => e,
        })?;
        Ok(versions
            .into_iter()
            .map(|v| NativeVersion {
                mtime: v.mtime(),
                size: v.size.unwrap_or(0),
                hash: None,
                id: v.id,
            })
            .collect())
    }

    async fn read_version(&self, path: &str, version_id: &str) -> ProviderResult<ByteStream> {
        // `…/versions/{id}/content` answers 302 to a download link, read without the
        // Authorization header like any download.
        let url = self.item_url(
            path,
            &format!("/versions/{}/content", encode_segment(version_id)),
        );
        let what = format!("version {version_id} of {path}");
        let resp = self
            .api
            .send_raw(Call::new(&what), || {
                let r = self
                    .request(Method::GET, &url)
                    .build()
                    .map_err(|e| protocol(&what, e.without_url()));
                async move { r }
            })
            .await?;
        let status = resp.status();
        if status == StatusCode::OK {
            // Served directly rather than through a link: the body is the version.
            let body = resp
                .bytes_stream()
                .map(|r| r.map_err(|e| transport_error(&e, "version content")));
            return Ok(Box::pin(body));
        }
        if !status.is_redirection() {
            return Err(match status {
                StatusCode::NOT_FOUND => {
                    ProviderError::NotFound(format!("{path}: version {version_id}"))
                }
                _ => self.api.error_of(resp, &what).await,
            });
        }
        let link = resp
            .headers()
            .get(reqwest::header::LOCATION)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
            .ok_or_else(|| {
                ProviderError::Protocol(format!("{what}: a redirect without Location"))
            })?;
        match self.read_link(&link, 0, u64::MAX).await? {
            Ok(stream) => Ok(stream),
            Err(status) => Err(ProviderError::Transient(format!(
                "{what}: the download link was refused ({status})"
            ))),
        }
    }

    async fn quota(&self) -> ProviderResult<Quota> {
        let info: DriveInfo = self
            .json("drive", Idempotency::Idempotent, || {
                self.request(Method::GET, &self.drive)
            })
            .await?;
        let q = info
            .quota
            .ok_or_else(|| ProviderError::Protocol("drive: no quota facet".into()))?;
        Ok(Quota {
            total: q.total,
            used: q.used,
            available: q.remaining,
        })
    }
}
