//! WebDAV provider (RFC 4918): ownCloud, Nextcloud, Apache mod_dav, rclone serve webdav, ...
//!
//! Remote paths map onto URLs below the configured base URL, one percent-encoded segment at
//! a time. Servers differ a lot in which status they answer for the same mistake (a PUT onto
//! a directory is 409 on Apache and 404 on rclone, a MOVE into a missing folder is 500 or
//! 403...), so failures of mutating requests are diagnosed with a follow-up PROPFIND rather
//! than trusted blindly.

mod chunked;
mod config;
mod paths;
mod sync;
mod xml;

use std::fmt;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use bytes::Bytes;
use futures::{StreamExt, TryStreamExt};
use reqwest::header::{CONTENT_LENGTH, CONTENT_TYPE};
use reqwest::{Method, RequestBuilder, Response, StatusCode};
use tokio::io::{AsyncReadExt, AsyncSeekExt};
use tracing::{debug, warn};

use super::kit::auth::{Credential, FixedAuth};
use super::kit::client::{transport_error, ApiClient, Call, HttpSettings};
use super::kit::errors::{classify_status, ErrorDetail, ServiceErrors};
use super::kit::ranged::{self, range_header, window, Ranged};
use super::kit::retry::{parse_http_date, retry_after, Effect, Idempotency, RetryPolicy};
use super::{
    split_path, ByteStream, Capabilities, Change, ChangeBatch, EntryKind, ListStream, Provider,
    ProviderError, ProviderResult, Quota, RemoteEntry, UploadOptions,
};
use crate::secrets::Secret;
pub use config::{AtomicUploads, ChunkedMode, ServerType, WebdavConfig, WebdavConfigError};
use paths::{encode_path, href_segments, path_segments};
use xml::{DavProps, DavResponse};

/// How many entries one page of a listing carries.
const LIST_PAGE: usize = 1000;
/// Read size when streaming a local file into a PUT body.
const UPLOAD_BUF: usize = 256 * 1024;
/// Top-level folder of temporary uploads; the filesystem layer hides and refuses this name
/// at the top of a connection, and listings of "/" here leave it out.
const TMP_DIR: &str = ".cloudmount-tmp";
/// How long after a failed upload its temporary file may still appear (see `discard_temp`).
const TEMP_GRACE: Duration = Duration::from_secs(10);

/// WebDAV's error bodies (sabre/dav's `<s:message>`, or short plain text) and its one
/// status of its own: 409 Conflict, which RFC 4918 prescribes for a missing parent.
struct DavErrors;

impl ServiceErrors for DavErrors {
    fn detail(&self, body: &[u8]) -> ErrorDetail {
        match xml::error_message(&String::from_utf8_lossy(body)) {
            Some(message) => ErrorDetail {
                message: Some(message),
                ..ErrorDetail::default()
            },
            None => ErrorDetail::plain(body),
        }
    }

    fn classify(
        &self,
        status: StatusCode,
        headers: &reqwest::header::HeaderMap,
        detail: &ErrorDetail,
        what: &str,
    ) -> ProviderError {
        let message = detail.describe(what, status);
        match status.as_u16() {
            409 => ProviderError::NotFound(message),
            _ => classify_status(status, retry_after(headers), message),
        }
    }
}

pub struct WebdavProvider {
    /// Sends requests with the configured credential, retrying as `kit::retry` allows.
    api: ApiClient,
    /// "scheme://host[:port]".
    origin: String,
    /// The base URL's path, percent-encoded as configured, without trailing slash ("" for
    /// the server root).
    base_path: String,
    /// The same, decoded, for matching hrefs.
    base_segments: Vec<String>,
    /// The URL has Nextcloud's `remote.php/dav/files/USER` shape.
    nextcloud: bool,
    chunking: Option<chunked::Target>,
    /// Set once the server refused a sync-collection REPORT: it has no RFC 6578 support,
    /// and changes are found by listing instead.
    no_sync_collection: std::sync::atomic::AtomicBool,
    /// Simple uploads go through a temporary name in `TMP_DIR` (see `put_atomic`).
    atomic_uploads: bool,
    /// `TMP_DIR` is known to exist (it is created on first use).
    tmp_dir_ready: std::sync::atomic::AtomicBool,
    /// Temporary files of failed uploads not known to be gone, with when they failed;
    /// removal is tried again around the next atomic uploads (see `discard_temp`).
    leftover_temps: std::sync::Mutex<Vec<(String, std::time::Instant)>>,
}

impl fmt::Debug for WebdavProvider {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WebdavProvider")
            .field("base", &format_args!("{}{}/", self.origin, self.base_path))
            .finish_non_exhaustive()
    }
}

fn config_error(msg: String) -> ProviderError {
    ProviderError::Protocol(format!("webdav configuration: {msg}"))
}

impl WebdavProvider {
    pub fn new(cfg: WebdavConfig) -> Result<Self, ProviderError> {
        let mut url = reqwest::Url::parse(&cfg.url)
            .map_err(|e| config_error(format!("bad url {:?}: {e}", cfg.url)))?;
        if !matches!(url.scheme(), "http" | "https") {
            return Err(config_error(format!("url must be http(s): {}", cfg.url)));
        }
        if url.query().is_some() || url.fragment().is_some() {
            return Err(config_error("url must not have a query or fragment".into()));
        }
        let credential = credential(&mut url, cfg.bearer_token, cfg.user, cfg.password);

        let origin = url.origin().ascii_serialization();
        let base_path = url.path().trim_end_matches('/').to_owned();
        let base_segments = href_segments(&base_path)
            .ok_or_else(|| config_error("url path is not UTF-8 once decoded".into()))?;

        let http = HttpSettings {
            timeout: Duration::from_secs(cfg.timeout_secs.max(1)),
            extra_ca_file: cfg.extra_ca_file.clone(),
            // reqwest would turn a redirected PROPFIND/MOVE into a GET; better to fail
            // loudly and let the user fix the URL.
            follow_redirects: false,
        }
        .build()
        .map_err(config_error)?;

        let nextcloud_target = chunked::Target::detect(&origin, &base_segments);
        let chunking = match cfg.chunked_upload {
            ChunkedMode::Off => None,
            ChunkedMode::Auto => nextcloud_target.clone(),
            ChunkedMode::Nextcloud => Some(nextcloud_target.clone().ok_or_else(|| {
                config_error(
                    "chunked_upload = \"nextcloud\" needs a url ending in \
                     /remote.php/dav/files/USER/"
                        .into(),
                )
            })?),
        }
        .map(|t| t.with_chunk_size(cfg.chunk_size));

        // ownCloud and Nextcloud serve WebDAV below `remote.php` and write every PUT to a
        // `.part` file renamed on completion, so a cut PUT never leaves a partial file there.
        let oc_like = cfg.server_type != ServerType::Webdav
            || base_segments.iter().any(|s| s == "remote.php");
        let atomic_uploads = match cfg.atomic_uploads {
            AtomicUploads::On => true,
            AtomicUploads::Off => false,
            AtomicUploads::Auto => !oc_like,
        };
        let retry = RetryPolicy::from_settings(
            cfg.max_retries,
            cfg.retry_base_delay_ms,
            cfg.retry_budget_secs,
            Duration::from_secs(8),
        );

        let api = ApiClient::new(
            http,
            Arc::new(FixedAuth(credential)),
            Arc::new(DavErrors),
            retry,
            0.0,
        );

        debug!(base = %format_args!("{origin}{base_path}/"), chunked = chunking.is_some(), atomic_uploads, "webdav provider ready");
        Ok(WebdavProvider {
            api,
            origin,
            base_path,
            base_segments,
            nextcloud: nextcloud_target.is_some(),
            chunking,
            no_sync_collection: std::sync::atomic::AtomicBool::new(false),
            atomic_uploads,
            tmp_dir_ready: std::sync::atomic::AtomicBool::new(false),
            leftover_temps: std::sync::Mutex::new(Vec::new()),
        })
    }

    /// The absolute URL of a remote path.
    fn url(&self, path: &str) -> String {
        let enc = encode_path(path);
        if enc == "/" {
            format!("{}{}/", self.origin, self.base_path)
        } else {
            format!("{}{}{}", self.origin, self.base_path, enc)
        }
    }

    /// A request to `url`; the credential is added when it is sent.
    fn request(&self, method: Method, url: &str) -> RequestBuilder {
        self.api.http().request(method, url)
    }

    /// Sends a request, retrying it as `kit::retry` allows (what may be repeated follows from
    /// the method and any `If-Match`/`If-None-Match`). Transport failures become errors;
    /// any reply, non-2xx included, is returned for the caller to judge. A request whose
    /// body is a stream cannot be sent twice: it gets one attempt (see `send_with`).
    async fn send(&self, rb: RequestBuilder, what: &str) -> ProviderResult<Response> {
        let req = rb
            .build()
            .map_err(|e| ProviderError::Protocol(format!("{what}: {}", e.without_url())))?;
        self.api.send_raw_request(Call::new(what), req).await
    }

    /// `send` for requests built afresh for every attempt by `build` (uploads, whose body
    /// streams a local file). `idempotency` overrides what the request itself suggests.
    async fn send_with<F, Fut>(
        &self,
        what: &str,
        idempotency: Option<Idempotency>,
        build: F,
    ) -> ProviderResult<Response>
    where
        F: Fn() -> Fut,
        Fut: std::future::Future<Output = ProviderResult<RequestBuilder>>,
    {
        let call = Call {
            idempotency,
            ..Call::new(what)
        };
        self.api
            .send_raw(call, || async {
                build()
                    .await?
                    .build()
                    .map_err(|e| ProviderError::Protocol(format!("{what}: {}", e.without_url())))
            })
            .await
    }

    /// Turns a non-2xx reply into the matching error, with the server's message if any.
    async fn fail(&self, resp: Response, what: &str) -> ProviderError {
        self.api.error_of(resp, what).await
    }

    /// One RFC 6578 sync-collection REPORT on the root. A server without it is remembered,
    /// and answered `Unsupported` from then on; an expired token is `PreconditionFailed`.
    async fn sync_report(&self, token: &str) -> ProviderResult<(Vec<sync::SyncChange>, String)> {
        use std::sync::atomic::Ordering;
        if self.no_sync_collection.load(Ordering::Relaxed) {
            return Err(ProviderError::Unsupported("sync-collection".into()));
        }
        let what = "REPORT sync-collection /".to_string();
        let reply = self
            .api
            .send_raw_whole(Call::new(&what), || async {
                self.request(
                    Method::from_bytes(b"REPORT").expect("valid method"),
                    &self.url("/"),
                )
                .header("Depth", "0")
                .header(CONTENT_TYPE, "application/xml; charset=utf-8")
                .body(sync::request_body(token))
                .build()
                .map_err(|e| ProviderError::Protocol(format!("{what}: {}", e.without_url())))
            })
            .await?;
        let status = reply.status;
        let body = String::from_utf8_lossy(&reply.body);
        if status == StatusCode::MULTI_STATUS {
            return sync::parse_report(&body)
                .map_err(|e| ProviderError::Protocol(format!("{what}: {e}")));
        }
        if status == StatusCode::FORBIDDEN && body.contains("valid-sync-token") {
            return Err(ProviderError::PreconditionFailed(
                "sync token no longer valid".into(),
            ));
        }
        if (status.is_server_error() && status != StatusCode::NOT_IMPLEMENTED)
            || status == StatusCode::TOO_MANY_REQUESTS
        {
            return Err(self.api.error_of_whole(&reply, &what));
        }
        // 400, 403, 404, 405, 415, 501...: no RFC 6578 here.
        debug!(%status, "server has no sync-collection; changes are found by listing");
        self.no_sync_collection.store(true, Ordering::Relaxed);
        Err(ProviderError::Unsupported("sync-collection".into()))
    }

    async fn propfind(
        &self,
        path: &str,
        depth: &'static str,
        body: &'static str,
    ) -> ProviderResult<Vec<DavResponse>> {
        match self.propfind_once(path, depth, body).await? {
            Ok(responses) => Ok(responses),
            // Apache answers 400 when a path goes through a file ("/file/x").
            Err((StatusCode::BAD_REQUEST, err)) if path != "/" => {
                let parent = split_path(path).0;
                match self
                    .propfind_once(parent, "0", xml::PROPFIND_ENTRY_BODY)
                    .await
                {
                    Ok(Ok(r)) if r.first().is_some_and(|r| !is_collection(&r.props)) => {
                        Err(ProviderError::NotADirectory(parent.to_owned()))
                    }
                    Ok(Err((StatusCode::NOT_FOUND, _))) => {
                        Err(ProviderError::NotFound(path.to_owned()))
                    }
                    _ => Err(err),
                }
            }
            Err((_, err)) => Err(err),
        }
    }

    /// One PROPFIND; a non-multistatus reply comes back as its status and mapped error.
    async fn propfind_once(
        &self,
        path: &str,
        depth: &'static str,
        body: &'static str,
    ) -> ProviderResult<Result<Vec<DavResponse>, (StatusCode, ProviderError)>> {
        let what = format!("PROPFIND {path}");
        // Read whole within the retry policy: a listing cut in its body is asked again.
        let reply = self
            .api
            .send_raw_whole(Call::new(&what), || async {
                self.request(
                    Method::from_bytes(b"PROPFIND").expect("valid method"),
                    &self.url(path),
                )
                .header("Depth", depth)
                .header(CONTENT_TYPE, "application/xml; charset=utf-8")
                .body(body)
                .build()
                .map_err(|e| ProviderError::Protocol(format!("{what}: {}", e.without_url())))
            })
            .await?;
        let status = reply.status;
        if status != StatusCode::MULTI_STATUS && status != StatusCode::OK {
            return Ok(Err((status, self.api.error_of_whole(&reply, &what))));
        }
        let bytes = reply.body;
        let text = String::from_utf8_lossy(&bytes);
        xml::parse_multistatus(&text)
            .map(Ok)
            .map_err(|e| ProviderError::Protocol(format!("{what}: {e}")))
    }

    /// Depth:0 PROPFIND of one path: the entry and its raw properties.
    async fn stat_props(&self, path: &str) -> ProviderResult<(RemoteEntry, DavProps)> {
        let mut responses = self.propfind(path, "0", xml::PROPFIND_ENTRY_BODY).await?;
        if responses.is_empty() {
            return Err(ProviderError::Protocol(format!(
                "PROPFIND {path}: multistatus without a response"
            )));
        }
        let resp = responses.swap_remove(0);
        // The name comes from the request, not the href, so that a server that normalizes
        // unicode differently still reports the name the caller asked for.
        let name = split_path(path).1.to_owned();
        let entry = entry_from_props(path, name, &resp.props);
        Ok((entry, resp.props))
    }

    /// Depth:1 PROPFIND: the directory itself and its children.
    async fn list_all(&self, dir: &str) -> ProviderResult<(RemoteEntry, Vec<RemoteEntry>)> {
        let responses = self.propfind(dir, "1", xml::PROPFIND_ENTRY_BODY).await?;
        let mut want = self.base_segments.clone();
        want.extend(path_segments(dir));
        let decoded: Vec<Option<Vec<String>>> =
            responses.iter().map(|r| href_segments(&r.href)).collect();
        // The folder itself is normally the first response, but match it by href rather
        // than rely on order; fall back to the first one for servers behind a proxy that
        // rewrites the path prefix.
        let self_idx = decoded
            .iter()
            .position(|d| d.as_deref() == Some(want.as_slice()))
            .or((!responses.is_empty()).then_some(0))
            .ok_or_else(|| ProviderError::Protocol(format!("PROPFIND {dir}: empty multistatus")))?;
        let me = entry_from_props(
            dir,
            split_path(dir).1.to_owned(),
            &responses[self_idx].props,
        );
        if me.kind != EntryKind::Dir {
            return Err(ProviderError::NotADirectory(dir.to_owned()));
        }
        let mut children = Vec::with_capacity(responses.len().saturating_sub(1));
        for (i, (resp, segs)) in responses.iter().zip(decoded).enumerate() {
            if i == self_idx {
                continue;
            }
            let Some(segs) = segs else {
                warn!(href = %resp.href, "skipping entry whose name is not UTF-8");
                continue;
            };
            let Some(name) = segs
                .last()
                .filter(|n| !n.is_empty() && *n != "." && *n != "..")
            else {
                continue;
            };
            if segs == want || (dir == "/" && name == TMP_DIR) {
                continue;
            }
            let path = super::join_path(dir, name);
            children.push(entry_from_props(&path, name.clone(), &resp.props));
        }
        Ok((me, children))
    }

    /// Why an operation on `path` could not work because of its parent, if that's the cause.
    async fn parent_problem(&self, path: &str) -> Option<ProviderError> {
        let (parent, _) = split_path(path);
        match self.stat_props(parent).await {
            Ok((e, _)) if e.kind == EntryKind::Dir => None,
            Ok(_) => Some(ProviderError::NotADirectory(parent.to_owned())),
            Err(ProviderError::NotFound(_)) => Some(ProviderError::NotFound(format!(
                "parent directory {parent} of {path}"
            ))),
            Err(_) => None,
        }
    }

    /// Checks `expected_revision` before an upload. Returns the etag to send as `If-Match`
    /// so that servers that implement it close the race left by the check.
    async fn check_expected(
        &self,
        path: &str,
        expected: &Option<Option<String>>,
    ) -> ProviderResult<Precondition> {
        match expected {
            None => Ok(Precondition::None),
            Some(None) => match self.stat_props(path).await {
                Ok(_) => Err(ProviderError::PreconditionFailed(format!(
                    "{path} exists already"
                ))),
                Err(ProviderError::NotFound(_)) => Ok(Precondition::MustNotExist),
                Err(e) => Err(e),
            },
            Some(Some(want)) => match self.stat_props(path).await {
                Ok((entry, props)) if &entry.revision == want => {
                    // If-Match uses strong comparison: a weak etag would never match.
                    let strong = props.etag.filter(|e| e.starts_with('"'));
                    Ok(strong.map_or(Precondition::None, Precondition::IfMatch))
                }
                Ok((entry, _)) => Err(ProviderError::PreconditionFailed(format!(
                    "{path} is at revision {}, expected {want}",
                    entry.revision
                ))),
                Err(ProviderError::NotFound(_)) => Err(ProviderError::PreconditionFailed(format!(
                    "{path} no longer exists"
                ))),
                Err(e) => Err(e),
            },
        }
    }

    /// One PUT of the whole file straight to `path` (the server keeps what arrived if the
    /// connection is cut, unless it writes through a temporary file itself).
    async fn put_simple(
        &self,
        path: &str,
        source: &Path,
        size: u64,
        options: &UploadOptions,
        pre: &Precondition,
    ) -> ProviderResult<()> {
        let what = format!("PUT {path}");
        let resp = self
            .put_file(path, source, size, options, pre, None)
            .await?;
        let status = resp.status();
        if status.is_success() {
            return Ok(());
        }
        let err = self.fail(resp, &what).await;
        Err(self.explain_write_failure(path, status, err).await)
    }

    /// Sends `source` as the body of a PUT to `path`, reopening it for every attempt; the
    /// reply is the caller's to judge.
    async fn put_file(
        &self,
        path: &str,
        source: &Path,
        size: u64,
        options: &UploadOptions,
        pre: &Precondition,
        idempotency: Option<Idempotency>,
    ) -> ProviderResult<Response> {
        let what = format!("PUT {path}");
        let url = self.url(path);
        let mtime = options.mtime.and_then(unix_secs);
        self.send_with(&what, idempotency, || async {
            let file = tokio::fs::File::open(source).await?;
            let mut rb = self
                .request(Method::PUT, &url)
                .header(CONTENT_TYPE, "application/octet-stream")
                // An explicit length keeps hyper from falling back to chunked transfer
                // encoding, which some servers (and proxies in front of them) refuse.
                .header(CONTENT_LENGTH, size)
                .body(file_body(file, size));
            rb = pre.apply(rb);
            if let Some(mtime) = mtime {
                // ownCloud/Nextcloud and rclone keep the client's mtime; others ignore it.
                rb = rb.header("X-OC-MTime", mtime.to_string());
            }
            Ok(rb)
        })
        .await
    }

    /// An upload that is never seen half done under its real name: PUT to a fresh name in
    /// `TMP_DIR`, check the precondition, MOVE into place. A failed attempt removes its
    /// temporary file (or remembers to, see `sweep_leftover_temps`).
    ///
    /// The precondition is checked with a PROPFIND after the transfer, so the window in
    /// which another client can change the destination unnoticed is the time between that
    /// PROPFIND and the MOVE, not the whole transfer. WebDAV cannot close it for a
    /// replacement (`If-Match` on a MOVE is about the source); for "must not exist" the
    /// MOVE says `Overwrite: F`, which does close it.
    async fn put_atomic(
        &self,
        path: &str,
        source: &Path,
        size: u64,
        options: &UploadOptions,
    ) -> ProviderResult<()> {
        if path == "/" {
            return Err(ProviderError::IsADirectory(path.to_owned()));
        }
        self.sweep_leftover_temps().await;
        let tmp = format!("/{TMP_DIR}/upload-{:032x}", rand::random::<u128>());
        let result = self.put_via_temp(path, &tmp, source, size, options).await;
        if result.is_err() {
            self.discard_temp(tmp, std::time::Instant::now()).await;
        }
        // Earlier failures again: a server may still have been writing one of them when
        // the sweep above looked.
        self.sweep_leftover_temps().await;
        result
    }

    async fn put_via_temp(
        &self,
        path: &str,
        tmp: &str,
        source: &Path,
        size: u64,
        options: &UploadOptions,
    ) -> ProviderResult<()> {
        use std::sync::atomic::Ordering;
        let what = format!("PUT {path} (as {tmp})");
        // A fresh name that nobody else uses: sending it again is harmless.
        let idem = Some(Idempotency::Idempotent);
        let none = Precondition::None;
        if !self.tmp_dir_ready.load(Ordering::Relaxed) {
            self.ensure_tmp_dir().await?;
        }
        let mut resp = self
            .put_file(tmp, source, size, options, &none, idem)
            .await?;
        if matches!(resp.status().as_u16(), 404 | 409) {
            // The folder was removed behind our back: make it again, once.
            self.tmp_dir_ready.store(false, Ordering::Relaxed);
            self.ensure_tmp_dir().await?;
            resp = self
                .put_file(tmp, source, size, options, &none, idem)
                .await?;
        }
        if !resp.status().is_success() {
            return Err(self.fail(resp, &what).await);
        }

        let current = match self.stat_props(path).await {
            Ok((entry, _)) => Some(entry),
            Err(ProviderError::NotFound(_)) => None,
            Err(e) => return Err(e),
        };
        if current.as_ref().is_some_and(|e| e.kind == EntryKind::Dir) {
            // Overwrite: T would replace the whole folder.
            return Err(ProviderError::IsADirectory(path.to_owned()));
        }
        match (&options.expected_revision, &current) {
            (None, _) | (Some(None), None) => {}
            (Some(None), Some(_)) => {
                return Err(ProviderError::PreconditionFailed(format!(
                    "{path} exists already"
                )))
            }
            (Some(Some(want)), Some(e)) if &e.revision == want => {}
            (Some(Some(want)), Some(e)) => {
                return Err(ProviderError::PreconditionFailed(format!(
                    "{path} is at revision {}, expected {want}",
                    e.revision
                )))
            }
            (Some(Some(_)), None) => {
                return Err(ProviderError::PreconditionFailed(format!(
                    "{path} no longer exists"
                )))
            }
        }

        let must_not_exist = matches!(options.expected_revision, Some(None));
        let what = format!("MOVE {tmp} -> {path}");
        let mut rb = self
            .request(
                Method::from_bytes(b"MOVE").expect("valid method"),
                &self.url(tmp),
            )
            .header("Destination", self.url(path))
            .header("Overwrite", if must_not_exist { "F" } else { "T" });
        if let Some(mtime) = options.mtime.and_then(unix_secs) {
            // Servers that honour it on PUT already have it; this is for those that look
            // at the request creating the final name.
            rb = rb.header("X-OC-Mtime", mtime.to_string());
        }
        let resp = self.send(rb, &what).await?;
        let status = resp.status();
        if status.is_success() {
            return Ok(());
        }
        let err = self.fail(resp, &what).await;
        if status == StatusCode::PRECONDITION_FAILED && must_not_exist {
            return Err(ProviderError::PreconditionFailed(format!(
                "{path} appeared during the upload"
            )));
        }
        if let Some(p) = self.parent_problem(path).await {
            // Apache answers a MOVE into a missing folder with 500.
            return Err(p);
        }
        if Effect::of_status(status).is_some() {
            // The MOVE may or may not have happened: the caller looks again.
            return Err(ProviderError::Transient(err.to_string()));
        }
        Err(self.explain_write_failure(path, status, err).await)
    }

    /// Creates `TMP_DIR` unless it exists.
    async fn ensure_tmp_dir(&self) -> ProviderResult<()> {
        let dir = format!("/{TMP_DIR}");
        let what = format!("MKCOL {dir}");
        let resp = self
            .send(
                self.request(
                    Method::from_bytes(b"MKCOL").expect("valid method"),
                    &self.url(&dir),
                ),
                &what,
            )
            .await?;
        let status = resp.status();
        if !status.is_success() && status != StatusCode::METHOD_NOT_ALLOWED {
            // 405 is "exists"; anything else may still be a lost race with another client.
            let err = self.fail(resp, &what).await;
            match self.stat_props(&dir).await {
                Ok((e, _)) if e.kind == EntryKind::Dir => {}
                _ => return Err(err),
            }
        }
        self.tmp_dir_ready
            .store(true, std::sync::atomic::Ordering::Relaxed);
        Ok(())
    }

    /// Best-effort removal of a temporary upload. A server can still be writing a PUT
    /// whose connection we saw cut (rclone then keeps what arrived), so "not found" right
    /// after the failure does not mean it will stay so: the name is kept, and removal tried
    /// again by later uploads, until a DELETE removes it, or answers "not found" once
    /// `TEMP_GRACE` has passed since the failure, or cannot be sent.
    async fn discard_temp(&self, tmp: String, failed_at: std::time::Instant) {
        let what = format!("DELETE {tmp}");
        let outcome = self
            .send(self.request(Method::DELETE, &self.url(&tmp)), &what)
            .await;
        let settled = match outcome {
            Ok(resp) if resp.status().is_success() => true,
            Ok(resp) if resp.status() == StatusCode::NOT_FOUND => failed_at.elapsed() >= TEMP_GRACE,
            Ok(resp) => {
                let err = self.fail(resp, &what).await;
                debug!(%tmp, error = %err, "temporary upload not removed yet; will retry");
                false
            }
            Err(e) => {
                debug!(%tmp, error = %e, "temporary upload not removed yet; will retry");
                false
            }
        };
        if !settled {
            self.leftover_temps.lock().unwrap().push((tmp, failed_at));
        }
    }

    async fn sweep_leftover_temps(&self) {
        let pending = std::mem::take(&mut *self.leftover_temps.lock().unwrap());
        for (tmp, failed_at) in pending {
            self.discard_temp(tmp, failed_at).await;
        }
    }

    /// Maps a failed PUT/MKCOL/MOVE/COPY onto the error POSIX callers expect.
    async fn explain_write_failure(
        &self,
        path: &str,
        status: StatusCode,
        err: ProviderError,
    ) -> ProviderError {
        match status.as_u16() {
            412 => ProviderError::PreconditionFailed(format!("{path}: {err}")),
            400 | 403 | 404 | 405 | 409 | 500 => {
                if let Some(p) = self.parent_problem(path).await {
                    return p;
                }
                match self.stat_props(path).await {
                    Ok((e, _)) if e.kind == EntryKind::Dir => {
                        ProviderError::IsADirectory(path.to_owned())
                    }
                    _ => err,
                }
            }
            _ => err,
        }
    }

    /// MOVE or COPY; `overwrite` is sent as `Overwrite: T/F`.
    async fn transfer(
        &self,
        method: &'static [u8],
        from: &str,
        to: &str,
        overwrite: bool,
    ) -> ProviderResult<()> {
        let name = std::str::from_utf8(method).unwrap_or("?");
        let what = format!("{name} {from} -> {to}");
        let mut rb = self
            .request(
                Method::from_bytes(method).expect("valid method"),
                &self.url(from),
            )
            .header("Destination", self.url(to))
            .header("Overwrite", if overwrite { "T" } else { "F" });
        if method == b"COPY" {
            rb = rb.header("Depth", "0");
        }
        let resp = self.send(rb, &what).await?;
        let status = resp.status();
        if status.is_success() {
            return Ok(());
        }
        let err = self.fail(resp, &what).await;
        if status == StatusCode::PRECONDITION_FAILED && !overwrite {
            return Err(ProviderError::AlreadyExists(to.to_owned()));
        }
        if status.is_server_error() && status != StatusCode::INTERNAL_SERVER_ERROR {
            return Err(err);
        }
        // Which side is at fault: a missing source, or a missing destination folder?
        match self.stat_props(from).await {
            Err(ProviderError::NotFound(_)) => {
                // A 500 after which the source is gone and the destination is there may
                // well be a MOVE that happened: not the caller's mistake, look again later.
                if status.is_server_error()
                    && method == b"MOVE"
                    && self.stat_props(to).await.is_ok()
                {
                    return Err(ProviderError::Transient(format!(
                        "{err} (outcome unknown: {from} is gone and {to} exists)"
                    )));
                }
                return Err(ProviderError::NotFound(from.to_owned()));
            }
            Err(e) => return Err(e),
            Ok(_) => {}
        }
        if let Some(p) = self.parent_problem(to).await {
            return Err(p);
        }
        Err(err)
    }

    /// Refuses to let a MOVE/COPY with `Overwrite: T` replace what POSIX rename would not:
    /// WebDAV would happily delete a whole non-empty directory at the destination.
    async fn check_overwrite_target(&self, from: &str, to: &str) -> ProviderResult<()> {
        let (dest, dest_children) = match self.list_all(to).await {
            Ok(x) => x,
            Err(ProviderError::NotFound(_)) => return Ok(()),
            Err(ProviderError::NotADirectory(_)) => {
                // A file: fine unless the source is a directory.
                let (src, _) = self.stat_props(from).await?;
                if src.kind == EntryKind::Dir {
                    return Err(ProviderError::NotADirectory(to.to_owned()));
                }
                return Ok(());
            }
            Err(e) => return Err(e),
        };
        debug_assert_eq!(dest.kind, EntryKind::Dir);
        let (src, _) = self.stat_props(from).await?;
        if src.kind != EntryKind::Dir {
            return Err(ProviderError::IsADirectory(to.to_owned()));
        }
        if !dest_children.is_empty() {
            return Err(ProviderError::DirectoryNotEmpty(to.to_owned()));
        }
        Ok(())
    }
}

/// A conditional header for an upload.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Precondition {
    None,
    MustNotExist,
    /// The etag exactly as the server sent it (quotes included).
    IfMatch(String),
}

impl Precondition {
    fn apply(&self, rb: RequestBuilder) -> RequestBuilder {
        match self {
            Precondition::None => rb,
            Precondition::MustNotExist => rb.header("If-None-Match", "*"),
            Precondition::IfMatch(etag) => rb.header("If-Match", etag.as_str()),
        }
    }
}

/// The credential to send: an explicit bearer token, else a user (configured, or written
/// into the URL) with a password. Credentials written into the URL are moved out of it, so
/// that they never show up in logged URLs.
fn credential(
    url: &mut reqwest::Url,
    bearer_token: Option<String>,
    user: Option<String>,
    password: Option<String>,
) -> Credential {
    let decode = |s: &str| {
        percent_encoding::percent_decode_str(s)
            .decode_utf8_lossy()
            .into_owned()
    };
    let url_user = (!url.username().is_empty()).then(|| decode(url.username()));
    let url_password = url.password().map(decode);
    let _ = url.set_username("");
    let _ = url.set_password(None);
    match (bearer_token, user.or(url_user)) {
        (Some(token), _) => Credential::Bearer(Secret::new(token)),
        (None, Some(user)) => Credential::Basic {
            user,
            password: password.or(url_password).map(Secret::new),
        },
        (None, None) => Credential::None,
    }
}

fn unix_secs(t: SystemTime) -> Option<u64> {
    t.duration_since(UNIX_EPOCH).ok().map(|d| d.as_secs())
}

/// An etag as a revision string: without `W/` and quotes.
fn normalize_etag(etag: &str) -> String {
    let e = etag.trim();
    let e = e.strip_prefix("W/").unwrap_or(e);
    e.trim_matches('"').to_owned()
}

/// The revision of something without an etag; the same formula is applied to PROPFIND
/// properties and to GET headers so both can be compared.
fn fallback_revision(mtime: SystemTime, size: u64) -> String {
    format!("m{}-{}", unix_secs(mtime).unwrap_or(0), size)
}

/// "algo:hex" from ownCloud's `oc:checksums`, preferring SHA-1 over MD5.
fn hash_from_checksums(checksums: &[String]) -> Option<String> {
    let mut md5 = None;
    for item in checksums.iter().flat_map(|c| c.split_whitespace()) {
        let Some((algo, hex)) = item.split_once(':') else {
            continue;
        };
        if hex.is_empty() || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
            continue;
        }
        match algo.to_ascii_lowercase().as_str() {
            "sha1" => return Some(format!("sha1:{}", hex.to_ascii_lowercase())),
            "md5" if md5.is_none() => md5 = Some(format!("md5:{}", hex.to_ascii_lowercase())),
            _ => {}
        }
    }
    md5
}

fn is_collection(p: &DavProps) -> bool {
    // Apache also labels directories with this pseudo content type.
    p.is_collection || p.content_type.as_deref() == Some("httpd/unix-directory")
}

fn entry_from_props(path: &str, name: String, p: &DavProps) -> RemoteEntry {
    let is_dir = is_collection(p);
    let size = if is_dir {
        0
    } else {
        p.content_length.or(p.oc_size).unwrap_or(0)
    };
    let mtime = p
        .last_modified
        .as_deref()
        .and_then(parse_http_date)
        .unwrap_or(UNIX_EPOCH);
    let revision = match p.etag.as_deref().map(normalize_etag) {
        Some(e) if !e.is_empty() => e,
        _ => fallback_revision(mtime, size),
    };
    RemoteEntry {
        id: p.file_id.clone().unwrap_or_else(|| path.to_owned()),
        name,
        kind: if is_dir {
            EntryKind::Dir
        } else {
            EntryKind::File
        },
        size,
        mtime,
        revision,
        hash: hash_from_checksums(&p.checksums),
        mode: None,
        symlink_target: None,
    }
}

/// Streams `len` bytes of an open file as a request body, without reading it all in memory.
fn file_body(file: tokio::fs::File, len: u64) -> reqwest::Body {
    let stream = futures::stream::try_unfold((file, len), |(mut file, remaining)| async move {
        if remaining == 0 {
            return Ok(None);
        }
        let want = remaining.min(UPLOAD_BUF as u64) as usize;
        let mut buf = vec![0u8; want];
        let n = file.read(&mut buf).await?;
        if n == 0 {
            return Err(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                "local file shrank during upload",
            ));
        }
        buf.truncate(n);
        Ok::<_, std::io::Error>(Some((Bytes::from(buf), (file, remaining - n as u64))))
    });
    reqwest::Body::wrap_stream(stream)
}

/// Opens `source` positioned at `offset`.
async fn open_at(source: &Path, offset: u64) -> ProviderResult<tokio::fs::File> {
    let mut f = tokio::fs::File::open(source).await?;
    if offset > 0 {
        f.seek(std::io::SeekFrom::Start(offset)).await?;
    }
    Ok(f)
}

#[async_trait]
impl Provider for WebdavProvider {
    fn kind(&self) -> &'static str {
        "webdav"
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities {
            // Offered until the server shows it has no sync-collection.
            delta: !self
                .no_sync_collection
                .load(std::sync::atomic::Ordering::Relaxed),
            native_versions: false,
            case_insensitive: false,
            max_name_len: 255,
            // Nextcloud refuses backslashes in names; generic servers take anything but '/'.
            forbidden_chars: if self.nextcloud { vec!['\\'] } else { vec![] },
            symlinks: false,
            unix_attrs: false,
            propagated_dir_revisions: self.nextcloud,
            ..Capabilities::default()
        }
    }

    fn list<'a>(&'a self, dir: &'a str) -> ListStream<'a> {
        let fut = async move { self.list_all(dir).await };
        Box::pin(
            futures::stream::once(fut)
                .map(|res| {
                    let pages: Vec<ProviderResult<Vec<RemoteEntry>>> = match res {
                        Ok((_, children)) => {
                            children.chunks(LIST_PAGE).map(|c| Ok(c.to_vec())).collect()
                        }
                        Err(e) => vec![Err(e)],
                    };
                    futures::stream::iter(pages)
                })
                .flatten(),
        )
    }

    async fn stat(&self, path: &str) -> ProviderResult<RemoteEntry> {
        Ok(self.stat_props(path).await?.0)
    }

    async fn read_range(
        &self,
        path: &str,
        revision: Option<&str>,
        offset: u64,
        len: u64,
    ) -> ProviderResult<ByteStream> {
        let what = format!("GET {path}");
        if len == 0 {
            if let Some(rev) = revision {
                let cur = self.stat(path).await?;
                if cur.revision != rev {
                    return Err(ProviderError::PreconditionFailed(path.to_owned()));
                }
            }
            return Ok(Box::pin(futures::stream::empty()));
        }
        let rb = self
            .request(Method::GET, &self.url(path))
            .header(reqwest::header::RANGE, range_header(offset, len))
            // A compressed body would make byte offsets meaningless.
            .header(reqwest::header::ACCEPT_ENCODING, "identity");
        let resp = self.send(rb, &what).await?;
        let status = resp.status();
        let headers = resp.headers().clone();
        let (skip, total) = match ranged::interpret(status, &headers, offset, &what) {
            Some(Ok(Ranged::Body { skip, total })) => (skip, total),
            Some(Err(e)) => return Err(e),
            Some(Ok(Ranged::PastEnd)) => {
                if let Some(rev) = revision {
                    let cur = self.stat(path).await?;
                    if cur.revision != rev {
                        return Err(ProviderError::PreconditionFailed(path.to_owned()));
                    }
                }
                return Ok(Box::pin(futures::stream::empty()));
            }
            None => {
                let err = self.fail(resp, &what).await;
                if matches!(status.as_u16(), 403..=405) {
                    if let Ok((e, _)) = self.stat_props(path).await {
                        if e.kind == EntryKind::Dir {
                            return Err(ProviderError::IsADirectory(path.to_owned()));
                        }
                    }
                }
                return Err(err);
            }
        };
        if let Some(want) = revision {
            let etag = headers
                .get(reqwest::header::ETAG)
                .and_then(|v| v.to_str().ok())
                .map(normalize_etag)
                .filter(|e| !e.is_empty());
            let got = match etag {
                Some(e) => Some(e),
                None => {
                    let mtime = headers
                        .get(reqwest::header::LAST_MODIFIED)
                        .and_then(|v| v.to_str().ok())
                        .and_then(parse_http_date);
                    mtime.zip(total).map(|(m, t)| fallback_revision(m, t))
                }
            };
            if let Some(got) = got {
                if got != want {
                    return Err(ProviderError::PreconditionFailed(format!(
                        "{path} is at revision {got}, expected {want}"
                    )));
                }
            }
        }
        let what2 = what.clone();
        let body = resp
            .bytes_stream()
            .map_err(move |e| transport_error(&e, &what2));
        Ok(window(body, skip, len))
    }

    async fn upload(
        &self,
        path: &str,
        source: &Path,
        options: &UploadOptions,
    ) -> ProviderResult<RemoteEntry> {
        let meta = tokio::fs::metadata(source).await?;
        if !meta.is_file() {
            return Err(ProviderError::IsADirectory(source.display().to_string()));
        }
        let size = meta.len();
        match &self.chunking {
            Some(target) if size > target.chunk_size => {
                self.check_expected(path, &options.expected_revision)
                    .await?;
                target.upload(self, path, source, size, options).await?
            }
            _ if self.atomic_uploads => self.put_atomic(path, source, size, options).await?,
            _ => {
                let pre = self
                    .check_expected(path, &options.expected_revision)
                    .await?;
                self.put_simple(path, source, size, options, &pre).await?
            }
        }
        self.stat(path).await
    }

    async fn mkdir(&self, path: &str) -> ProviderResult<RemoteEntry> {
        // Some servers (rclone) answer 201 to a MKCOL on an existing collection.
        match self.stat_props(path).await {
            Ok(_) => return Err(ProviderError::AlreadyExists(path.to_owned())),
            Err(ProviderError::NotFound(_)) => {}
            Err(e) => return Err(e),
        }
        let what = format!("MKCOL {path}");
        let resp = self
            .send(
                self.request(
                    Method::from_bytes(b"MKCOL").expect("valid method"),
                    &self.url(path),
                ),
                &what,
            )
            .await?;
        let status = resp.status();
        if !status.is_success() {
            let err = self.fail(resp, &what).await;
            if let Some(p) = self.parent_problem(path).await {
                return Err(p);
            }
            if status == StatusCode::METHOD_NOT_ALLOWED {
                return Err(ProviderError::AlreadyExists(path.to_owned()));
            }
            return Err(err);
        }
        self.stat(path).await
    }

    async fn rename(&self, from: &str, to: &str, overwrite: bool) -> ProviderResult<RemoteEntry> {
        if from == "/" || to == "/" {
            return Err(ProviderError::PermissionDenied(
                "cannot move the root".into(),
            ));
        }
        if from == to {
            return self.stat(from).await;
        }
        if overwrite {
            self.check_overwrite_target(from, to).await?;
        }
        self.transfer(b"MOVE", from, to, overwrite).await?;
        self.stat(to).await
    }

    async fn delete(&self, path: &str) -> ProviderResult<()> {
        if path == "/" {
            return Err(ProviderError::PermissionDenied(
                "cannot delete the root".into(),
            ));
        }
        // DELETE on a collection is recursive in WebDAV: refuse non-empty directories first.
        match self.list_all(path).await {
            Ok((_, children)) if !children.is_empty() => {
                return Err(ProviderError::DirectoryNotEmpty(path.to_owned()))
            }
            Ok(_) | Err(ProviderError::NotADirectory(_)) => {}
            Err(e) => return Err(e),
        }
        let what = format!("DELETE {path}");
        let resp = self
            .send(self.request(Method::DELETE, &self.url(path)), &what)
            .await?;
        if resp.status().is_success() {
            Ok(())
        } else {
            Err(self.fail(resp, &what).await)
        }
    }

    async fn copy(&self, from: &str, to: &str) -> ProviderResult<RemoteEntry> {
        let (src, _) = self.stat_props(from).await?;
        if src.kind == EntryKind::Dir {
            return Err(ProviderError::IsADirectory(from.to_owned()));
        }
        if from == to {
            return Ok(src);
        }
        match self.transfer(b"COPY", from, to, false).await {
            Ok(()) => {}
            Err(ProviderError::AlreadyExists(_)) => {
                // Replace an existing file, like cp, but never a directory.
                let (dest, _) = self.stat_props(to).await?;
                if dest.kind == EntryKind::Dir {
                    return Err(ProviderError::IsADirectory(to.to_owned()));
                }
                self.transfer(b"COPY", from, to, true).await?;
            }
            Err(e) => return Err(e),
        }
        self.stat(to).await
    }

    async fn changes_cursor(&self) -> ProviderResult<String> {
        self.sync_report("").await.map(|(_, token)| token)
    }

    async fn changes_since(&self, cursor: &str) -> ProviderResult<ChangeBatch> {
        let (changes, token) = self.sync_report(cursor).await?;
        let mut out = Vec::new();
        for c in changes {
            let Some(segments) = href_segments(&c.href) else {
                continue;
            };
            // Only members below the configured root, as paths relative to it.
            let Some(rest) = segments.strip_prefix(self.base_segments.as_slice()) else {
                continue;
            };
            if rest.is_empty() || rest[0] == TMP_DIR {
                continue; // the root itself, or a temporary upload
            }
            let path = format!("/{}", rest.join("/"));
            if c.removed {
                out.push(Change::Removed { path });
            } else {
                let name = rest.last().cloned().unwrap_or_default();
                let kind = if c.href.ends_with('/') {
                    EntryKind::Dir
                } else {
                    EntryKind::File
                };
                out.push(Change::Upserted {
                    path,
                    entry: RemoteEntry {
                        id: String::new(),
                        name,
                        kind,
                        size: 0,
                        mtime: SystemTime::UNIX_EPOCH,
                        revision: String::new(),
                        hash: None,
                        mode: None,
                        symlink_target: None,
                    },
                });
            }
        }
        Ok(ChangeBatch {
            changes: out,
            cursor: token,
        })
    }

    async fn quota(&self) -> ProviderResult<Quota> {
        let responses = self.propfind("/", "0", xml::PROPFIND_QUOTA_BODY).await?;
        let Some(r) = responses.first() else {
            return Ok(Quota::default());
        };
        // Negative values are ownCloud's "not computed" (-1), "unknown" (-2), "unlimited" (-3).
        let non_neg = |v: Option<i64>| v.and_then(|v| u64::try_from(v).ok());
        let used = non_neg(r.props.quota_used);
        let available = non_neg(r.props.quota_available);
        Ok(Quota {
            total: used.zip(available).map(|(u, a)| u.saturating_add(a)),
            used,
            available,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn etags_and_revisions() {
        assert_eq!(normalize_etag("\"6-660d\""), "6-660d");
        assert_eq!(normalize_etag("W/\"abc\""), "abc");
        assert_eq!(normalize_etag("abc"), "abc");
        let p = DavProps {
            last_modified: Some("Sat, 21 Nov 2026 23:52:34 GMT".into()),
            content_length: Some(6),
            ..Default::default()
        };
        let e = entry_from_props("/x", "x".into(), &p);
        assert_eq!(e.revision, "m1795305154-6");
        assert_eq!(e.id, "/x");
        assert_eq!(e.kind, EntryKind::File);
    }

    #[test]
    fn http_dates() {
        let want = UNIX_EPOCH + Duration::from_secs(784111777);
        assert_eq!(parse_http_date("Sun, 06 Nov 1994 08:49:37 GMT"), Some(want));
        assert_eq!(
            parse_http_date("Sunday, 06-Nov-94 08:49:37 GMT"),
            Some(want)
        );
        assert_eq!(parse_http_date("Sun Nov  6 08:49:37 1994"), Some(want));
        assert_eq!(parse_http_date("yesterday"), None);
    }

    #[test]
    fn checksums() {
        let c = vec![
            "SHA1:F572D396fae9206628714fb2ce00f72e94f2258f MD5:b1946ac9 ADLER32:084b021f"
                .to_owned(),
        ];
        assert_eq!(
            hash_from_checksums(&c).as_deref(),
            Some("sha1:f572d396fae9206628714fb2ce00f72e94f2258f")
        );
        let c = vec!["ADLER32:084b021f MD5:B1946AC9".to_owned()];
        assert_eq!(hash_from_checksums(&c).as_deref(), Some("md5:b1946ac9"));
        assert_eq!(hash_from_checksums(&[]), None);
    }

    /// A reply's error by WebDAV's rules (what `ApiClient::error_of` does with `DavErrors`).
    fn status_error(
        status: StatusCode,
        retry_after: Option<Duration>,
        body: &str,
        what: &str,
    ) -> ProviderError {
        let mut headers = reqwest::header::HeaderMap::new();
        if let Some(wait) = retry_after {
            headers.insert(reqwest::header::RETRY_AFTER, wait.as_secs().into());
        }
        DavErrors.classify(status, &headers, &DavErrors.detail(body.as_bytes()), what)
    }

    #[test]
    fn errors_map_and_keep_sabre_message() {
        let body = include_str!("testdata/error_404_sabre.xml");
        let e = status_error(StatusCode::NOT_FOUND, None, body, "GET /Photo");
        match e {
            ProviderError::NotFound(m) => {
                assert!(
                    m.contains("File with name Photo could not be located"),
                    "{m}"
                )
            }
            other => panic!("{other:?}"),
        }
        let e = status_error(
            StatusCode::TOO_MANY_REQUESTS,
            Some(Duration::from_secs(7)),
            "",
            "x",
        );
        assert_eq!(
            e,
            ProviderError::RateLimited {
                retry_after: Some(Duration::from_secs(7))
            }
        );
        assert!(matches!(
            status_error(StatusCode::UNAUTHORIZED, None, "", "x"),
            ProviderError::Auth(_)
        ));
        assert!(matches!(
            status_error(StatusCode::FORBIDDEN, None, "", "x"),
            ProviderError::PermissionDenied(_)
        ));
        assert!(matches!(
            status_error(StatusCode::LOCKED, None, "", "x"),
            ProviderError::Transient(_)
        ));
        assert!(matches!(
            status_error(StatusCode::BAD_GATEWAY, None, "", "x"),
            ProviderError::Transient(_)
        ));
        assert_eq!(
            status_error(StatusCode::INSUFFICIENT_STORAGE, None, "", "x"),
            ProviderError::InsufficientStorage
        );
        assert!(matches!(
            status_error(StatusCode::NOT_IMPLEMENTED, None, "", "x"),
            ProviderError::Unsupported(_)
        ));
    }

    #[test]
    fn urls_and_hrefs() {
        let p =
            WebdavProvider::new(WebdavConfig::new("http://u:pw@127.0.0.1:9/dav%20root/")).unwrap();
        let mut url = reqwest::Url::parse("http://u:pw@127.0.0.1:9/dav%20root/").unwrap();
        let auth = credential(&mut url, None, None, None);
        assert_eq!(p.url("/"), "http://127.0.0.1:9/dav%20root/");
        assert_eq!(
            p.url("/a b/c#d"),
            "http://127.0.0.1:9/dav%20root/a%20b/c%23d"
        );
        assert_eq!(p.base_segments, vec!["dav root".to_owned()]);
        assert!(
            matches!(auth, Credential::Basic { ref user, ref password } if user == "u" && password.as_ref().map(Secret::expose) == Some("pw"))
        );
        assert_eq!(url.as_str(), "http://127.0.0.1:9/dav%20root/");
        assert!(!format!("{p:?}").contains("pw"));
    }
}
