//! Dropbox (personal accounts and team spaces) over API v2, on the provider kit. One
//! connection is one account's Dropbox; items are addressed by path.
//!
//! Dropbox's rules this module follows (provider-apis §3, readonly-sources §4.6):
//! - RPC calls are POSTs with a JSON body; content calls carry their argument in the
//!   `Dropbox-API-Arg` header (JSON with everything from DEL up escaped as `\uXXXX`) and
//!   downloads answer with `Dropbox-API-Result`; calls without an argument send no body
//!   and no `Content-Type`;
//! - a team member's root namespace differs from their home namespace: then every call
//!   carries `Dropbox-API-Path-Root` naming the root namespace, so team folders appear
//!   beside the member's own folder (`team_space = false` keeps the home view);
//! - the root is the empty path; listings page with `list_folder/continue` until
//!   `has_more` is false; files that cannot be downloaded (Paper docs and other cloud
//!   documents) are not listed at all (documented);
//! - uploads up to `upload_cutoff` are one `files/upload`; larger ones go through an
//!   upload session (`start`, `append_v2`, `finish`) in chunks of a multiple of 4 MiB,
//!   resumed from the server's `correct_offset`; every upload sends its `content_hash`,
//!   so bytes damaged on the way are refused rather than stored; small files' commits go
//!   together in `finish_batch_v2` (see `batch`), which spares the namespace lock that
//!   makes Dropbox answer `too_many_write_operations`;
//! - a conditional upload commits in `update` mode with the base `rev` (or `add` for "must
//!   not exist"), with `strict_conflict`: a concurrent remote change is a conflict for the
//!   core to resolve, never an overwrite;
//! - Dropbox creates missing parent folders on its own, and deletes and copies folders
//!   with everything in them: the trait wants neither, so writes check the parent first
//!   and deletes refuse a folder that is not empty;
//! - names are case-insensitive and case-preserving (`path_lower` is the key): a rename
//!   that changes only the case is two moves, through a name of our own;
//! - errors are read from the union tags of the error body, never from `error_summary`;
//!   429s carry `retry_after` in the body as well as `Retry-After`;
//! - remote changes come from a recursive cursor on the root, continued with
//!   `list_folder/continue`; `list_folder/longpoll` (unauthenticated, on the notify host)
//!   says when there is something to continue with, and its `backoff` is honoured;
//! - versions are Dropbox's revisions (`list_revisions`, `download` of `rev:…`).

pub(crate) mod api;
mod batch;
pub mod hash;

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use bytes::Bytes;
use futures::StreamExt;
use reqwest::header::{HeaderValue, CONTENT_TYPE, RANGE};
use reqwest::StatusCode;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use self::api::{
    correct_offset, header_json, tag_chain, timestamp, Account, Cursor, DropboxErrors,
    ListFolderResult, ListRevisionsResult, LongpollResult, Metadata, MetadataResult, SpaceUsage,
    UploadSessionStart,
};
use super::kit::auth::{NoAuth, OAuthBearer};
use super::kit::client::{transport_error, ApiClient, Call, HttpSettings};
use super::kit::paging::{self, Page};
use super::kit::ranged::{self, Ranged};
use super::kit::retry::{Idempotency, RetryPolicy};
use super::kit::upload_session::{self, ChunkReply, SessionEnd, UploadSession};
use super::{
    join_path, split_path, ByteStream, Capabilities, Change, ChangeBatch, EntryKind, ListStream,
    NativeVersion, Provider, ProviderError, ProviderResult, Quota, RemoteEntry, UploadOptions,
};
use crate::accounts::BearerTokens;
use crate::provider::kit::retry::cloud_api;

/// Session chunks are multiples of this (the unit of `content_hash` blocks, and what
/// concurrent sessions require).
pub const CHUNK_UNIT: u64 = 4 * 1024 * 1024;
/// No request body may exceed this (`files/upload`, each session request).
pub const REQUEST_MAX: u64 = 150 * 1024 * 1024;
/// The longpoll timeout's range, in seconds.
const LONGPOLL_RANGE: std::ops::RangeInclusive<u64> = 30..=480;
/// Dropbox adds up to this much to the longpoll timeout on its own.
const LONGPOLL_JITTER: Duration = Duration::from_secs(90);

fn default_api_base() -> String {
    "https://api.dropboxapi.com/2".into()
}
fn default_content_base() -> String {
    "https://content.dropboxapi.com/2".into()
}
fn default_notify_base() -> String {
    "https://notify.dropboxapi.com/2".into()
}
fn default_upload_cutoff() -> u64 {
    16 * 1024 * 1024
}
fn default_chunk_size() -> u64 {
    4 * CHUNK_UNIT
}
fn default_page_size() -> u32 {
    2000
}
fn default_batch_ms() -> u64 {
    200
}
fn default_true() -> bool {
    true
}
fn default_longpoll_secs() -> u64 {
    120
}
fn default_rps() -> f64 {
    12.0
}

/// One Dropbox connection (the account's tokens come separately).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DropboxConfig {
    /// The RPC host (`https://api.dropboxapi.com/2`).
    #[serde(default = "default_api_base")]
    pub api_base: String,
    /// The content host, for downloads and uploads.
    #[serde(default = "default_content_base")]
    pub content_base: String,
    /// The notify host, for longpolls.
    #[serde(default = "default_notify_base")]
    pub notify_base: String,
    /// Files up to this size are one `files/upload`; larger ones an upload session.
    #[serde(default = "default_upload_cutoff")]
    pub upload_cutoff: u64,
    /// Bytes per upload-session request: a multiple of 4 MiB, at most 148 MiB.
    #[serde(default = "default_chunk_size")]
    pub chunk_size: u64,
    /// How long the first small upload waits for others to commit with it in one
    /// `finish_batch_v2` (milliseconds; 0 commits each alone with `files/upload`).
    #[serde(default = "default_batch_ms")]
    pub batch_commit_ms: u64,
    /// Entries per listing request (`limit`, 1..=2000; Dropbox treats it as a hint).
    #[serde(default = "default_page_size")]
    pub page_size: u32,
    /// For team members: show the team space (team folders beside the member's own
    /// folder) rather than only the member's folder.
    #[serde(default = "default_true")]
    pub team_space: bool,
    /// How long one longpoll waits for changes (30..=480 s; Dropbox adds up to 90 s).
    #[serde(default = "default_longpoll_secs")]
    pub longpoll_secs: u64,
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

impl Default for DropboxConfig {
    fn default() -> Self {
        DropboxConfig {
            api_base: default_api_base(),
            content_base: default_content_base(),
            notify_base: default_notify_base(),
            upload_cutoff: default_upload_cutoff(),
            chunk_size: default_chunk_size(),
            batch_commit_ms: default_batch_ms(),
            page_size: default_page_size(),
            team_space: true,
            longpoll_secs: default_longpoll_secs(),
            max_requests_per_second: default_rps(),
            max_retries: cloud_api::max_retries(),
            retry_base_delay_ms: cloud_api::retry_base_ms(),
            retry_budget_secs: cloud_api::retry_budget_secs(),
            timeout_secs: cloud_api::timeout_secs(),
        }
    }
}

/// Characters Dropbox refuses in names (provider-apis §3.3; `/` never reaches a provider).
const FORBIDDEN: [char; 3] = ['\\', '\0', '\u{7f}'];

pub struct DropboxProvider {
    cfg: DropboxConfig,
    api: Arc<ApiClient>,
    /// Small uploads' commits, batched (`None`: each commits alone).
    batcher: Option<batch::Batcher>,
    /// The notify host: no credential, and waits longer than a longpoll's timeout.
    notify: ApiClient,
    /// `Dropbox-API-Path-Root`, once known: `Some` for a team member seeing the team space.
    path_root: tokio::sync::OnceCell<Option<HeaderValue>>,
    /// The display path of each folder seen, by `path_lower`: the change feed's
    /// `path_display` is sure of its last component's case only.
    folders: Mutex<HashMap<String, String>>,
    /// When the last longpoll asked us to wait before the next one.
    backoff_until: Mutex<Option<tokio::time::Instant>>,
}

/// Which of Dropbox's hosts a route lives on (the notify host has its own client).
#[derive(Clone, Copy)]
enum Host {
    Api,
    Content,
}

/// How a request carries its argument.
enum Arg {
    /// No body and no `Content-Type` (routes without an argument).
    None,
    /// A JSON body (RPC routes).
    Json(String),
    /// `Dropbox-API-Arg` (escaped JSON) and the data as the body (uploads).
    Header(String, Bytes),
    /// `Dropbox-API-Arg` and a `Range`, no body (downloads).
    Download(String, String),
}

fn protocol(what: &str, e: impl std::fmt::Display) -> ProviderError {
    ProviderError::Protocol(format!("{what}: {e}"))
}

/// Our path ("/", "/a/b") as Dropbox writes it ("" for the root).
fn dbx(path: &str) -> &str {
    if path == "/" {
        ""
    } else {
        path
    }
}

/// A conflict error's message names `conflict/folder` when a folder is in the way (the
/// code in the message is built from the error's tags).
fn folder_in_the_way(e: &ProviderError) -> bool {
    matches!(e, ProviderError::AlreadyExists(m) if m.contains("conflict/folder"))
}

/// The name a case-only rename of `from` passes through: beside it, and the same for every
/// attempt, so a later attempt finds what an interrupted one left.
fn case_rename_name(from: &str, to: &str) -> String {
    let lower = from.to_lowercase();
    join_path(
        split_path(to).0,
        &format!(
            ".cloudmount-case-{}",
            &hash::content_hash(lower.as_bytes())[..16]
        ),
    )
}

/// What a conditional upload commits with.
fn write_mode(options: &UploadOptions) -> Value {
    match &options.expected_revision {
        Some(Some(rev)) => json!({".tag": "update", "update": rev}),
        Some(None) => json!("add"),
        None => json!("overwrite"),
    }
}

impl DropboxProvider {
    pub fn new(cfg: DropboxConfig, tokens: Arc<dyn BearerTokens>) -> ProviderResult<Self> {
        let bad = |m: String| ProviderError::Protocol(format!("Dropbox settings: {m}"));
        if cfg.chunk_size == 0
            || cfg.chunk_size % CHUNK_UNIT != 0
            || cfg.chunk_size > REQUEST_MAX - CHUNK_UNIT / 2
        {
            return Err(bad(format!(
                "chunk_size {} must be a multiple of 4194304 (4 MiB) up to 148 MiB",
                cfg.chunk_size
            )));
        }
        if cfg.upload_cutoff > REQUEST_MAX {
            return Err(bad(format!(
                "upload_cutoff {} is above Dropbox's 150 MiB per request",
                cfg.upload_cutoff
            )));
        }
        if !(1..=2000).contains(&cfg.page_size) {
            return Err(bad("page_size must be within 1..=2000".into()));
        }
        if !LONGPOLL_RANGE.contains(&cfg.longpoll_secs) {
            return Err(bad("longpoll_secs must be within 30..=480".into()));
        }
        for u in [&cfg.api_base, &cfg.content_base, &cfg.notify_base] {
            reqwest::Url::parse(u).map_err(|e| bad(format!("bad URL {u:?}: {e}")))?;
        }
        let timeout = Duration::from_secs(cfg.timeout_secs);
        let http = HttpSettings::new(timeout).build().map_err(bad)?;
        let retry = RetryPolicy::from_settings(
            cfg.max_retries,
            cfg.retry_base_delay_ms,
            cfg.retry_budget_secs,
            Duration::from_secs(300),
        );
        let api = Arc::new(ApiClient::new(
            http,
            Arc::new(OAuthBearer(tokens)),
            Arc::new(DropboxErrors),
            retry.clone(),
            cfg.max_requests_per_second,
        ));
        let batcher = (cfg.batch_commit_ms > 0).then(|| {
            batch::Batcher::new(
                api.clone(),
                &cfg.api_base,
                Duration::from_millis(cfg.batch_commit_ms),
            )
        });
        // A longpoll answers after its timeout plus up to 90 s: the wait between bytes must
        // be longer than that.
        let notify_wait = Duration::from_secs(cfg.longpoll_secs) + LONGPOLL_JITTER + timeout;
        let notify_http = HttpSettings::new(notify_wait).build().map_err(bad)?;
        let notify = ApiClient::new(
            notify_http,
            Arc::new(NoAuth),
            Arc::new(DropboxErrors),
            retry,
            0.0,
        );
        Ok(DropboxProvider {
            cfg,
            api,
            batcher,
            notify,
            path_root: tokio::sync::OnceCell::new(),
            folders: Mutex::default(),
            backoff_until: Mutex::default(),
        })
    }

    /// `Dropbox-API-Path-Root` for this account: the root namespace when it is not the
    /// home namespace (a team member), asked once.
    async fn path_root(&self) -> ProviderResult<Option<HeaderValue>> {
        self.path_root
            .get_or_try_init(|| async {
                if !self.cfg.team_space {
                    return Ok(None);
                }
                let account: Account = self.call_no_arg("users/get_current_account", None).await?;
                let root = account.root_info;
                if root.root_namespace_id == root.home_namespace_id {
                    return Ok(None);
                }
                let v = header_json(&json!({".tag": "root", "root": root.root_namespace_id}));
                HeaderValue::from_str(&v)
                    .map(Some)
                    .map_err(|e| protocol("root namespace", e))
            })
            .await
            .cloned()
    }

    /// A request to `route` on `host`, its argument carried as `arg` says, with the path
    /// root when there is one. Built afresh for each attempt.
    fn request(
        &self,
        host: Host,
        route: &str,
        arg: &Arg,
        root: Option<&HeaderValue>,
    ) -> ProviderResult<reqwest::Request> {
        let base = match host {
            Host::Api => &self.cfg.api_base,
            Host::Content => &self.cfg.content_base,
        };
        let url = format!("{}/{route}", base.trim_end_matches('/'));
        let mut r = self.api.http().post(url);
        r = match arg {
            Arg::None => r,
            Arg::Json(body) => r
                .header(CONTENT_TYPE, "application/json")
                .body(body.clone()),
            Arg::Header(arg, body) => r
                .header("Dropbox-API-Arg", arg.as_str())
                .header(CONTENT_TYPE, "application/octet-stream")
                .body(body.clone()),
            Arg::Download(arg, range) => r
                .header("Dropbox-API-Arg", arg.as_str())
                .header(RANGE, range.as_str()),
        };
        if let Some(h) = root {
            r = r.header("Dropbox-API-Path-Root", h.clone());
        }
        r.build().map_err(|e| protocol(route, e.without_url()))
    }

    /// A call whose reply is JSON.
    async fn call<T: DeserializeOwned>(
        &self,
        host: Host,
        route: &str,
        arg: Arg,
        root: Option<HeaderValue>,
        idempotency: Idempotency,
    ) -> ProviderResult<T> {
        self.api
            .json(Call::new(route).idempotency(idempotency), || {
                let r = self.request(host, route, &arg, root.as_ref());
                async move { r }
            })
            .await
    }

    /// An RPC call with a JSON argument.
    async fn rpc<T: DeserializeOwned>(
        &self,
        route: &str,
        arg: &Value,
        idempotency: Idempotency,
    ) -> ProviderResult<T> {
        let root = self.path_root().await?;
        let arg = Arg::Json(arg.to_string());
        self.call(Host::Api, route, arg, root, idempotency).await
    }

    /// An RPC call without an argument: no body, no `Content-Type` (Dropbox refuses a JSON
    /// content type with an empty body). `root` is the path root, when known.
    async fn call_no_arg<T: DeserializeOwned>(
        &self,
        route: &str,
        root: Option<HeaderValue>,
    ) -> ProviderResult<T> {
        self.call(Host::Api, route, Arg::None, root, Idempotency::Idempotent)
            .await
    }

    /// A content-host upload call: the argument in `Dropbox-API-Arg`, `body` as the data.
    async fn content_upload<T: DeserializeOwned>(
        &self,
        route: &str,
        arg: &Value,
        body: Bytes,
        idempotency: Idempotency,
    ) -> ProviderResult<T> {
        let root = self.path_root().await?;
        let arg = Arg::Header(header_json(arg), body);
        self.call(Host::Content, route, arg, root, idempotency)
            .await
    }

    /// Remembers where a folder is shown, for placing changes under it.
    fn saw_folder(&self, path: &str, m: &Metadata) {
        if m.is_folder() {
            if let Some(lower) = &m.path_lower {
                self.folders
                    .lock()
                    .unwrap()
                    .insert(lower.clone(), path.to_owned());
            }
        }
    }

    /// A folder (by `path_lower`) is gone from where it was, and all below it.
    fn forget_folder(&self, lower: &str) {
        let below = format!("{lower}/");
        self.folders
            .lock()
            .unwrap()
            .retain(|k, _| k != lower && !k.starts_with(&below));
    }

    fn entry(&self, path: &str, m: &Metadata) -> RemoteEntry {
        self.saw_folder(path, m);
        m.entry(if path == "/" { "/" } else { split_path(path).1 })
    }

    async fn metadata(&self, path: &str) -> ProviderResult<Metadata> {
        let m: Metadata = self
            .rpc(
                "files/get_metadata",
                &json!({"path": dbx(path)}),
                Idempotency::Idempotent,
            )
            .await
            .map_err(|e| match e {
                ProviderError::NotFound(_) => ProviderError::NotFound(path.to_owned()),
                // A path below a file.
                ProviderError::NotADirectory(_) => ProviderError::NotFound(path.to_owned()),
                e => e,
            })?;
        if m.is_deleted() || !m.is_downloadable {
            return Err(ProviderError::NotFound(path.to_owned()));
        }
        Ok(m)
    }

    /// Dropbox makes missing parents on its own; the trait wants NotFound instead.
    async fn parent_must_exist(&self, path: &str) -> ProviderResult<()> {
        let parent = split_path(path).0;
        if parent == "/" {
            return Ok(());
        }
        match self.metadata(parent).await {
            Ok(m) if m.is_folder() => Ok(()),
            Ok(_) => Err(ProviderError::NotADirectory(parent.to_owned())),
            Err(ProviderError::NotFound(_)) => Err(ProviderError::NotFound(parent.to_owned())),
            Err(e) => Err(e),
        }
    }

    /// Whether the folder at `path` has nothing in it.
    async fn is_empty_folder(&self, path: &str) -> ProviderResult<bool> {
        let page: ListFolderResult = self
            .rpc(
                "files/list_folder",
                &json!({"path": dbx(path), "limit": 1, "include_non_downloadable_files": true}),
                Idempotency::Idempotent,
            )
            .await?;
        Ok(page.entries.is_empty())
    }

    async fn move_item(&self, from: &str, to: &str) -> ProviderResult<Metadata> {
        let r: MetadataResult = self
            .rpc(
                "files/move_v2",
                &json!({"from_path": from, "to_path": to, "autorename": false, "allow_ownership_transfer": false}),
                Idempotency::NotIdempotent,
            )
            .await?;
        Ok(r.metadata)
    }

    /// Deletes `path`; a file only if it is still at `rev` (a file someone changed since
    /// we looked is not ours to remove).
    async fn delete_item(&self, path: &str, rev: Option<&str>) -> ProviderResult<()> {
        let mut arg = json!({ "path": path });
        if let Some(rev) = rev {
            arg["parent_rev"] = json!(rev);
        }
        let _: MetadataResult = self
            .rpc("files/delete_v2", &arg, Idempotency::NotIdempotent)
            .await
            .map_err(|e| match e {
                // The rev moved on: the remote is not what the caller saw.
                ProviderError::AlreadyExists(m) if rev.is_some() => {
                    ProviderError::PreconditionFailed(m)
                }
                e => e,
            })?;
        Ok(())
    }

    /// A rename that changes only the case: Dropbox sees one path, so the entry moves away
    /// under a name of ours and back. It is never left under that name: a failed second
    /// move is looked into and tried again, and in the end the entry goes back where it
    /// was.
    async fn rename_case_only(&self, from: &str, to: &str) -> ProviderResult<Metadata> {
        let tmp = case_rename_name(from, to);
        if let Err(e) = self.move_item(from, &tmp).await {
            // A lost reply: did it get there?
            match self.metadata(&tmp).await {
                Ok(_) => {}
                Err(ProviderError::NotFound(_)) => return Err(e),
                Err(look) => return Err(look),
            }
        }
        let mut last = None;
        for _ in 0..3 {
            match self.move_item(&tmp, to).await {
                Ok(m) => return Ok(m),
                Err(e) => {
                    if let Ok(m) = self.metadata(to).await {
                        if m.name == split_path(to).1 {
                            return Ok(m);
                        }
                    }
                    last = Some(e);
                }
            }
        }
        match self.move_item(&tmp, from).await {
            Ok(_) => {}
            Err(e) => {
                tracing::warn!(error = %e, "a case-only rename could not be undone; the next attempt finishes it")
            }
        }
        Err(last.expect("three attempts failed"))
    }

    /// The display path of the folder whose `path_lower` is `lower`: known, or asked for
    /// one level at a time (each answer is sure of its own name's case only).
    async fn display_folder(&self, lower: &str) -> ProviderResult<String> {
        if lower.is_empty() || lower == "/" {
            return Ok("/".into());
        }
        if let Some(p) = self.folders.lock().unwrap().get(lower) {
            return Ok(p.clone());
        }
        let (parent, _) = split_path(lower);
        let parent = Box::pin(self.display_folder(parent)).await?;
        let m = self.metadata(lower).await?;
        let path = join_path(&parent, &m.name);
        self.saw_folder(&path, &m);
        Ok(path)
    }

    /// Where a changed entry is shown: its parent's display path and its own name.
    async fn change_path(&self, m: &Metadata) -> ProviderResult<Option<String>> {
        let Some(lower) = m.path_lower.as_deref() else {
            return Ok(None);
        };
        let parent = match self.display_folder(split_path(lower).0).await {
            Ok(p) => p,
            // The parent is gone too: its own removal is in the feed.
            Err(ProviderError::NotFound(_)) => return Ok(None),
            Err(e) => return Err(e),
        };
        Ok(Some(join_path(&parent, &m.name)))
    }

    async fn upload_simple(
        &self,
        path: &str,
        source: &Path,
        options: &UploadOptions,
        content_hash: &str,
    ) -> ProviderResult<Metadata> {
        let data = Bytes::from(tokio::fs::read(source).await?);
        if let Some(batcher) = &self.batcher {
            // The content as a closed session, the commit with others (see `batch`).
            let size = data.len() as u64;
            let started: UploadSessionStart = self
                .content_upload(
                    "files/upload_session/start",
                    &json!({"close": true, "content_hash": content_hash}),
                    data,
                    // A second session is only an unused one.
                    Idempotency::Idempotent,
                )
                .await?;
            let root = self.path_root().await?;
            return batcher
                .commit(&started.session_id, size, commit_info(path, options), root)
                .await;
        }
        let mut arg = commit_info(path, options);
        arg["content_hash"] = json!(content_hash);
        let idempotency = match options.expected_revision {
            // The same bytes again at the same path: nothing new.
            None => Idempotency::Idempotent,
            Some(_) => Idempotency::NotIdempotent,
        };
        self.content_upload("files/upload", &arg, data, idempotency)
            .await
    }
}

/// The commit of an upload (`CommitInfo`).
fn commit_info(path: &str, options: &UploadOptions) -> Value {
    let mut c = json!({
        "path": path,
        "mode": write_mode(options),
        "autorename": false,
        "mute": true,
        "strict_conflict": true,
    });
    if let Some(t) = options.mtime {
        c["client_modified"] = json!(timestamp(t));
    }
    c
}

/// An upload refused: in the way is a folder (EISDIR), or the remote is not what the
/// caller expected (a conflict for the core to resolve).
fn upload_error(e: ProviderError, path: &str) -> ProviderError {
    if folder_in_the_way(&e) {
        return ProviderError::IsADirectory(path.to_owned());
    }
    match e {
        ProviderError::AlreadyExists(m) | ProviderError::NotFound(m) => {
            ProviderError::PreconditionFailed(format!("{path}: {m}"))
        }
        e => e,
    }
}

/// Dropbox's upload session for one file. The last chunk goes with `finish`, which
/// commits.
struct DropboxSession<'a> {
    p: &'a DropboxProvider,
    path: &'a str,
    options: &'a UploadOptions,
}

impl DropboxSession<'_> {
    /// A session request; the reply's body when it succeeded, else what it means.
    async fn send(
        &self,
        route: &str,
        arg: &Value,
        chunk: Bytes,
    ) -> Result<Bytes, ChunkReply<Metadata>> {
        let root = match self.p.path_root().await {
            Ok(r) => r,
            Err(e) => return Err(ChunkReply::Retry(e)),
        };
        let arg = Arg::Header(header_json(arg), chunk);
        // One attempt: after a failure the session loop asks where the server stands.
        let sent = self
            .p
            .api
            .send_once(Call::new(route), || {
                self.p.request(Host::Content, route, &arg, root.as_ref())
            })
            .await;
        let resp = match sent {
            Ok(resp) => resp,
            Err(e) => return Err(self.refusal(e)),
        };
        match resp.bytes().await {
            Ok(b) => Ok(b),
            Err(e) => Err(ChunkReply::Retry(transport_error(&e, route))),
        }
    }

    /// What a refused session request means for the session loop, from the error's tags
    /// (in its message's code). `correct_offset` is not there: `query` reads it.
    fn refusal(&self, e: ProviderError) -> ChunkReply<Metadata> {
        let text = e.to_string();
        if text.contains("incorrect_offset") {
            // Without the offset in hand: ask.
            return ChunkReply::Retry(ProviderError::Transient(text));
        }
        if text.contains("lookup_failed/not_found") || text.contains("(not_found)") {
            return ChunkReply::Expired;
        }
        if text.contains("content_hash_mismatch") {
            // The server holds other bytes than we sent: start again.
            return ChunkReply::Expired;
        }
        if e.is_retryable() {
            return ChunkReply::Retry(e);
        }
        ChunkReply::Fatal(upload_error(e, self.path))
    }

    /// `finish` with the last `chunk` at `offset`.
    async fn finish(&self, session: &str, offset: u64, chunk: Bytes) -> ChunkReply<Metadata> {
        // `content_hash` covers the bytes of this call only (the whole file is checked
        // against the commit's reply).
        let arg = json!({
            "cursor": {"session_id": session, "offset": offset},
            "commit": commit_info(self.path, self.options),
            "content_hash": hash::content_hash(&chunk),
        });
        match self.send("files/upload_session/finish", &arg, chunk).await {
            Ok(body) => match serde_json::from_slice::<Metadata>(&body) {
                Ok(m) => ChunkReply::Done(Box::new(m)),
                Err(e) => ChunkReply::Retry(protocol("upload_session/finish", e)),
            },
            Err(reply) => reply,
        }
    }
}

#[async_trait]
impl UploadSession for DropboxSession<'_> {
    type Done = Metadata;

    async fn start(&self, _size: u64) -> ProviderResult<String> {
        let r: UploadSessionStart = self
            .p
            .content_upload(
                "files/upload_session/start",
                &json!({"close": false}),
                Bytes::new(),
                // A second session is only an unused one.
                Idempotency::Idempotent,
            )
            .await?;
        Ok(r.session_id)
    }

    async fn put(
        &self,
        session: &str,
        offset: u64,
        chunk: Bytes,
        size: u64,
    ) -> ChunkReply<Metadata> {
        let end = offset + chunk.len() as u64;
        if end == size {
            return self.finish(session, offset, chunk).await;
        }
        let arg = json!({
            "cursor": {"session_id": session, "offset": offset},
            "close": false,
            "content_hash": hash::content_hash(&chunk),
        });
        match self
            .send("files/upload_session/append_v2", &arg, chunk)
            .await
        {
            Ok(_) => ChunkReply::Incomplete(end),
            Err(reply) => reply,
        }
    }

    /// Dropbox has no status call: an empty append at offset 0 is refused with the
    /// server's `correct_offset` when it holds more (and changes nothing when it holds
    /// nothing). A session holding everything is finished here.
    async fn query(&self, session: &str, size: u64) -> ChunkReply<Metadata> {
        let route = "files/upload_session/append_v2";
        let root = match self.p.path_root().await {
            Ok(r) => r,
            Err(e) => return ChunkReply::Retry(e),
        };
        let arg = Arg::Header(
            header_json(&json!({"cursor": {"session_id": session, "offset": 0}, "close": false})),
            Bytes::new(),
        );
        let sent = self
            .p
            .api
            .send_raw_whole(
                Call::new("upload session status").idempotency(Idempotency::Idempotent),
                || {
                    let r = self.p.request(Host::Content, route, &arg, root.as_ref());
                    async move { r }
                },
            )
            .await;
        let reply = match sent {
            Ok(r) => r,
            Err(e) => return ChunkReply::Retry(e),
        };
        let held = if reply.status.is_success() {
            0
        } else if reply.status == StatusCode::CONFLICT {
            let error = DropboxErrors::error_value(&reply.body).unwrap_or(Value::Null);
            match correct_offset(&error) {
                Some(n) => n,
                None if tag_chain(&error).iter().any(|t| t == "not_found") => {
                    return ChunkReply::Expired
                }
                None => return self.refusal(self.p.api.error_of_whole(&reply, "upload session")),
            }
        } else {
            return self.refusal(self.p.api.error_of_whole(&reply, "upload session"));
        };
        if held == size && size > 0 {
            return self.finish(session, size, Bytes::new()).await;
        }
        ChunkReply::Incomplete(held)
    }
}

#[async_trait]
impl Provider for DropboxProvider {
    fn kind(&self) -> &'static str {
        "dropbox"
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities {
            delta: true,
            long_poll: true,
            native_versions: true,
            case_insensitive: true,
            max_name_len: 255,
            forbidden_chars: FORBIDDEN.to_vec(),
            ..Capabilities::default()
        }
    }

    fn list<'a>(&'a self, dir: &'a str) -> ListStream<'a> {
        Box::pin(futures::stream::once(async move {
            let what = format!("list {dir}");
            let first = json!({
                "path": dbx(dir),
                "limit": self.cfg.page_size,
                "include_non_downloadable_files": false,
            });
            let entries = paging::collect_all(&what, |next: Option<String>| {
                let first = first.clone();
                async move {
                    let page: ListFolderResult = match next {
                        None => {
                            self.rpc("files/list_folder", &first, Idempotency::Idempotent)
                                .await?
                        }
                        Some(cursor) => {
                            self.rpc(
                                "files/list_folder/continue",
                                &json!({"cursor": cursor}),
                                Idempotency::Idempotent,
                            )
                            .await?
                        }
                    };
                    Ok(Page {
                        items: page.entries,
                        next: page.has_more.then_some(page.cursor),
                    })
                }
            })
            .await
            .map_err(|e| match e {
                ProviderError::NotFound(_) => ProviderError::NotFound(dir.to_owned()),
                ProviderError::NotADirectory(_) => ProviderError::NotADirectory(dir.to_owned()),
                e => e,
            })?;
            Ok(entries
                .iter()
                .filter(|m| !m.is_deleted() && m.is_downloadable)
                .map(|m| self.entry(&join_path(dir, &m.name), m))
                .collect())
        }))
    }

    async fn stat(&self, path: &str) -> ProviderResult<RemoteEntry> {
        if path == "/" {
            // "Metadata for the root folder is unsupported."
            return Ok(RemoteEntry {
                id: String::new(),
                name: "/".into(),
                kind: EntryKind::Dir,
                size: 0,
                mtime: SystemTime::UNIX_EPOCH,
                revision: String::new(),
                hash: None,
                mode: None,
                symlink_target: None,
            });
        }
        let m = self.metadata(path).await?;
        Ok(self.entry(path, &m))
    }

    async fn read_range(
        &self,
        path: &str,
        revision: Option<&str>,
        offset: u64,
        len: u64,
    ) -> ProviderResult<ByteStream> {
        if len == 0 {
            return Ok(Box::pin(futures::stream::empty()));
        }
        // A revision is read as itself (`rev:…`): the bytes stay those of that revision
        // even when the file has been replaced since.
        let target = match revision.filter(|r| !r.is_empty() && !r.starts_with("id:")) {
            Some(rev) => format!("rev:{rev}"),
            None => dbx(path).to_owned(),
        };
        let root = self.path_root().await?;
        let arg = Arg::Download(
            header_json(&json!({ "path": target })),
            ranged::range_header(offset, len),
        );
        let what = format!("download {path}");
        let resp = self
            .api
            .send_raw(
                Call::new(&what).idempotency(Idempotency::Idempotent),
                || {
                    let r = self.request(Host::Content, "files/download", &arg, root.as_ref());
                    async move { r }
                },
            )
            .await?;
        let status = resp.status();
        let skip = match ranged::interpret(status, resp.headers(), offset, &what) {
            Some(Ok(Ranged::PastEnd)) => return Ok(Box::pin(futures::stream::empty())),
            Some(Ok(Ranged::Body { skip, .. })) => skip,
            Some(Err(e)) => return Err(e),
            None => {
                return Err(match self.api.error_of(resp, &what).await {
                    ProviderError::NotFound(_) if revision.is_some() => {
                        ProviderError::PreconditionFailed(format!(
                            "{path}: revision {target} is gone"
                        ))
                    }
                    ProviderError::NotFound(_) => ProviderError::NotFound(path.to_owned()),
                    ProviderError::IsADirectory(_) => ProviderError::IsADirectory(path.to_owned()),
                    e => e,
                })
            }
        };
        let body = resp
            .bytes_stream()
            .map(move |r| r.map_err(|e| transport_error(&e, "download")));
        Ok(ranged::window(body, skip, len))
    }

    async fn upload(
        &self,
        path: &str,
        source: &Path,
        options: &UploadOptions,
    ) -> ProviderResult<RemoteEntry> {
        if let Some(Some(rev)) = &options.expected_revision {
            // Dropbox's revisions are hex of at least 9 digits; anything else cannot be the
            // file's current one (and Dropbox would refuse it as bad input).
            if rev.len() < 9 || !rev.bytes().all(|b| b.is_ascii_hexdigit()) {
                return Err(ProviderError::PreconditionFailed(format!(
                    "{path}: {rev:?} is not a revision of this file"
                )));
            }
        }
        self.parent_must_exist(path).await?;
        let size = tokio::fs::metadata(source).await?.len();
        let file = source.to_owned();
        let content_hash = tokio::task::spawn_blocking(move || hash::file_content_hash(&file))
            .await
            .map_err(|e| ProviderError::Io(e.to_string()))??;
        let m = if size <= self.cfg.upload_cutoff {
            self.upload_simple(path, source, options, &content_hash)
                .await
                .map_err(|e| upload_error(e, path))?
        } else {
            let end = match options.expected_revision {
                // A conditional commit that completed unseen: a second session would only be
                // refused as a conflict after sending the whole file again; the caller
                // looks first instead.
                Some(_) => SessionEnd::MayHaveCreated,
                None => SessionEnd::Replaces,
            };
            let session = DropboxSession {
                p: self,
                path,
                options,
            };
            upload_session::upload(
                &session,
                source,
                size,
                self.cfg.chunk_size,
                self.api.retry_policy(),
                end,
            )
            .await?
        };
        if m.content_hash.as_deref() != Some(content_hash.as_str()) {
            // Dropbox checked the hash we sent; a different one back is a broken reply.
            return Err(ProviderError::Protocol(format!(
                "upload {path}: the server reports content hash {:?}, we sent {content_hash}",
                m.content_hash
            )));
        }
        let mut m = m;
        m.tag = Some("file".into());
        Ok(self.entry(path, &m))
    }

    async fn mkdir(&self, path: &str) -> ProviderResult<RemoteEntry> {
        self.parent_must_exist(path).await?;
        let r: MetadataResult = self
            .rpc(
                "files/create_folder_v2",
                &json!({"path": path, "autorename": false}),
                Idempotency::NotIdempotent,
            )
            .await
            .map_err(|e| match e {
                ProviderError::AlreadyExists(_) => ProviderError::AlreadyExists(path.to_owned()),
                e => e,
            })?;
        // `CreateFolderResult.metadata` is a bare `FolderMetadata`.
        let mut m = r.metadata;
        m.tag = Some("folder".into());
        Ok(self.entry(path, &m))
    }

    async fn rename(&self, from: &str, to: &str, overwrite: bool) -> ProviderResult<RemoteEntry> {
        if from == to {
            return self.stat(to).await;
        }
        let case_only = from.to_lowercase() == to.to_lowercase();
        let src = match self.metadata(from).await {
            Ok(m) => m,
            Err(ProviderError::NotFound(_)) if case_only => {
                // An earlier attempt got as far as our own name (a lost reply, a crash
                // between the two moves): finish it.
                let tmp = case_rename_name(from, to);
                return match self.metadata(&tmp).await {
                    Ok(_) => {
                        let moved = self.move_item(&tmp, to).await?;
                        if moved.is_folder() {
                            self.forget_folder(&from.to_lowercase());
                        }
                        Ok(self.entry(to, &moved))
                    }
                    Err(ProviderError::NotFound(_)) => {
                        Err(ProviderError::NotFound(from.to_owned()))
                    }
                    Err(e) => Err(e),
                };
            }
            Err(e) => return Err(e),
        };
        self.parent_must_exist(to).await?;
        if !case_only {
            // Dropbox never replaces on a move: what may be replaced is decided here, as
            // rename(2) does, and the target removed first.
            match self.metadata(to).await {
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
                    let rev = target.rev.as_deref().filter(|_| !target.is_folder());
                    match self.delete_item(to, rev).await {
                        Ok(()) | Err(ProviderError::NotFound(_)) => {}
                        Err(e) => return Err(e),
                    }
                }
                Err(ProviderError::NotFound(_)) => {}
                Err(e) => return Err(e),
            }
        }
        let moved = if case_only {
            self.rename_case_only(from, to).await?
        } else {
            self.move_item(from, to).await.map_err(|e| match e {
                ProviderError::NotFound(_) => ProviderError::NotFound(from.to_owned()),
                ProviderError::AlreadyExists(_) => ProviderError::AlreadyExists(to.to_owned()),
                e => e,
            })?
        };
        if moved.is_folder() {
            self.forget_folder(&from.to_lowercase());
        }
        Ok(self.entry(to, &moved))
    }

    async fn delete(&self, path: &str) -> ProviderResult<()> {
        if path == "/" {
            return Err(ProviderError::PermissionDenied(
                "the root of a Dropbox".into(),
            ));
        }
        // Dropbox deletes a folder with everything in it; the trait removes empty ones
        // only (a folder that gained a child meanwhile must stay).
        let m = self.metadata(path).await?;
        if m.is_folder() && !self.is_empty_folder(path).await? {
            return Err(ProviderError::DirectoryNotEmpty(path.to_owned()));
        }
        // A file only at the revision just seen: a retry cannot remove a newer one made
        // there since.
        let rev = m.rev.as_deref().filter(|_| !m.is_folder());
        self.delete_item(path, rev).await.map_err(|e| match e {
            ProviderError::NotFound(_) => ProviderError::NotFound(path.to_owned()),
            e => e,
        })?;
        if let Some(lower) = &m.path_lower {
            self.forget_folder(lower);
        }
        Ok(())
    }

    async fn copy(&self, from: &str, to: &str) -> ProviderResult<RemoteEntry> {
        let src = self.metadata(from).await?;
        if src.is_folder() {
            return Err(ProviderError::IsADirectory(from.to_owned()));
        }
        self.parent_must_exist(to).await?;
        let r: MetadataResult = self
            .rpc(
                "files/copy_v2",
                &json!({"from_path": from, "to_path": to, "autorename": false}),
                Idempotency::NotIdempotent,
            )
            .await
            .map_err(|e| {
                if folder_in_the_way(&e) {
                    return ProviderError::IsADirectory(to.to_owned());
                }
                match e {
                    ProviderError::AlreadyExists(_) => ProviderError::AlreadyExists(to.to_owned()),
                    ProviderError::NotFound(_) => ProviderError::NotFound(from.to_owned()),
                    e => e,
                }
            })?;
        Ok(self.entry(to, &r.metadata))
    }

    async fn quota(&self) -> ProviderResult<Quota> {
        let root = self.path_root().await?;
        let u: SpaceUsage = self.call_no_arg("users/get_space_usage", root).await?;
        let a = &u.allocation;
        Ok(match a.tag.as_str() {
            "individual" => {
                let total = a.allocated.unwrap_or(0);
                Quota {
                    total: Some(total),
                    used: Some(u.used),
                    available: Some(total.saturating_sub(u.used)),
                }
            }
            "team" => {
                // The team's space, and this member's share of it when limited (0: none).
                let team_total = a.allocated.unwrap_or(0);
                let team_free = team_total.saturating_sub(a.used.unwrap_or(0));
                let limit = a.user_within_team_space_allocated.unwrap_or(0);
                let (total, free) = if limit > 0 {
                    (limit, team_free.min(limit.saturating_sub(u.used)))
                } else {
                    (team_total, team_free)
                };
                Quota {
                    total: Some(total),
                    used: Some(u.used),
                    available: Some(free),
                }
            }
            _ => Quota {
                total: None,
                used: Some(u.used),
                available: None,
            },
        })
    }

    async fn changes_cursor(&self) -> ProviderResult<String> {
        let c: Cursor = self
            .rpc(
                "files/list_folder/get_latest_cursor",
                &json!({"path": "", "recursive": true, "include_deleted": true, "include_non_downloadable_files": false}),
                Idempotency::Idempotent,
            )
            .await?;
        Ok(c.cursor)
    }

    async fn changes_since(&self, cursor: &str) -> ProviderResult<ChangeBatch> {
        let mut cursor = cursor.to_owned();
        let mut changes = Vec::new();
        loop {
            let page: ListFolderResult = self
                .rpc(
                    "files/list_folder/continue",
                    &json!({ "cursor": cursor }),
                    Idempotency::Idempotent,
                )
                .await?;
            for m in &page.entries {
                let Some(path) = self.change_path(m).await? else {
                    continue;
                };
                if m.is_deleted() {
                    // A deleted folder takes everything below it.
                    if let Some(lower) = &m.path_lower {
                        self.forget_folder(lower);
                    }
                    changes.push(Change::Removed { path });
                } else if m.is_downloadable {
                    changes.push(Change::Upserted {
                        entry: self.entry(&path, m),
                        path,
                    });
                }
            }
            cursor = page.cursor;
            if !page.has_more {
                return Ok(ChangeBatch { changes, cursor });
            }
        }
    }

    async fn wait_for_changes(&self, cursor: &str) -> ProviderResult<bool> {
        let pause = *self.backoff_until.lock().unwrap();
        if let Some(until) = pause {
            tokio::time::sleep_until(until).await;
        }
        let url = format!(
            "{}/files/list_folder/longpoll",
            self.cfg.notify_base.trim_end_matches('/')
        );
        let body = json!({"cursor": cursor, "timeout": self.cfg.longpoll_secs}).to_string();
        let r: LongpollResult = self
            .notify
            .json(
                Call::new("longpoll")
                    .unauthenticated()
                    .idempotency(Idempotency::Idempotent),
                || {
                    let r = self
                        .notify
                        .http()
                        .post(&url)
                        .header(CONTENT_TYPE, "application/json")
                        .body(body.clone())
                        .build()
                        .map_err(|e| protocol("longpoll", e.without_url()));
                    async move { r }
                },
            )
            .await?;
        *self.backoff_until.lock().unwrap() = r
            .backoff
            .map(|s| tokio::time::Instant::now() + Duration::from_secs(s));
        Ok(r.changes)
    }

    async fn list_versions(&self, path: &str) -> ProviderResult<Vec<NativeVersion>> {
        let m = self.metadata(path).await?;
        if m.is_folder() {
            return Err(ProviderError::Unsupported(format!(
                "{path}: folders have no revisions"
            )));
        }
        let r: ListRevisionsResult = self
            .rpc(
                "files/list_revisions",
                &json!({"path": path, "mode": "path", "limit": 100}),
                Idempotency::Idempotent,
            )
            .await
            .map_err(|e| match e {
                ProviderError::NotFound(_) => ProviderError::NotFound(path.to_owned()),
                e => e,
            })?;
        Ok(r.entries
            .iter()
            .filter_map(|v| {
                let e = v.entry(&v.name);
                Some(NativeVersion {
                    id: v.rev.clone()?,
                    mtime: api::time(&v.server_modified).unwrap_or(e.mtime),
                    size: e.size,
                    hash: e.hash,
                })
            })
            .collect())
    }

    async fn read_version(&self, path: &str, version_id: &str) -> ProviderResult<ByteStream> {
        self.read_range(path, Some(version_id), 0, u64::MAX)
            .await
            .map_err(|e| match e {
                ProviderError::PreconditionFailed(_) => {
                    ProviderError::NotFound(format!("{path}: version {version_id}"))
                }
                e => e,
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_and_modes() {
        assert_eq!(dbx("/"), "");
        assert_eq!(dbx("/a/b"), "/a/b");
        let o = UploadOptions {
            expected_revision: Some(Some("a1c10ce0dd78".into())),
            ..Default::default()
        };
        assert_eq!(
            write_mode(&o),
            json!({".tag": "update", "update": "a1c10ce0dd78"})
        );
        let o = UploadOptions {
            expected_revision: Some(None),
            mtime: Some(SystemTime::UNIX_EPOCH + Duration::from_millis(1_431_445_838_500)),
            ..Default::default()
        };
        let c = commit_info("/x", &o);
        assert_eq!(c["mode"], json!("add"));
        assert_eq!(c["client_modified"], json!("2015-05-12T15:50:38Z"));
        assert_eq!(c["strict_conflict"], json!(true));
        assert_eq!(write_mode(&UploadOptions::default()), json!("overwrite"));
    }
}
