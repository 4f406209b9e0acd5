//! Committing small uploads together (`upload_session/finish_batch_v2`).
//!
//! Every commit takes a lock on the namespace; many small files committed one by one make
//! Dropbox answer `too_many_write_operations` (provider-apis §3.1, rclone's batch mode).
//! A small file is therefore sent as a closed session (`upload_session/start` with the
//! whole content and `close: true`) and its commit queued here: the first commit of a
//! batch waits a short window for others, then up to 1000 go in one request, which
//! counts as one write. Each caller gets its own entry's result.
//!
//! The batch runs on a task of its own, so a caller that gives up (a cancelled upload)
//! leaves the others' commits unharmed.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use reqwest::header::{HeaderValue, CONTENT_TYPE};
use reqwest::StatusCode;
use serde::Deserialize;
use serde_json::{json, Value};
use tokio::sync::oneshot;

use super::api::{tag_chain, DropboxErrors, Metadata};
use crate::provider::kit::client::{ApiClient, Call};
use crate::provider::kit::errors::{ErrorDetail, ServiceErrors};
use crate::provider::kit::retry::Idempotency;
use crate::provider::{ProviderError, ProviderResult};

/// Entries per `finish_batch_v2` request (Dropbox's limit).
pub const MAX_ENTRIES: usize = 1000;

struct Pending {
    /// `{cursor: {session_id, offset}, commit: CommitInfo}`.
    entry: Value,
    reply: oneshot::Sender<ProviderResult<Metadata>>,
}

/// The commits waiting for the next batch.
pub(crate) struct Batcher {
    api: Arc<ApiClient>,
    url: String,
    window: Duration,
    queue: Arc<Mutex<Vec<Pending>>>,
}

#[derive(Deserialize)]
struct BatchResult {
    entries: Vec<Value>,
}

impl Batcher {
    pub fn new(api: Arc<ApiClient>, api_base: &str, window: Duration) -> Self {
        Batcher {
            api,
            url: format!(
                "{}/files/upload_session/finish_batch_v2",
                api_base.trim_end_matches('/')
            ),
            window,
            queue: Arc::default(),
        }
    }

    /// Commits the closed session `session_id` of `size` bytes with `commit`; the new
    /// file's metadata, or why the commit failed.
    pub async fn commit(
        &self,
        session_id: &str,
        size: u64,
        commit: Value,
        root: Option<HeaderValue>,
    ) -> ProviderResult<Metadata> {
        let (tx, rx) = oneshot::channel();
        // No `content_hash`: it covers the bytes sent in the same call, and a batch sends
        // none (the session's `start` carried them, with their hash).
        let entry = json!({
            "cursor": {"session_id": session_id, "offset": size},
            "commit": commit,
        });
        let first = {
            let mut q = self.queue.lock().unwrap();
            q.push(Pending { entry, reply: tx });
            q.len() == 1
        };
        if first {
            let (api, url, queue, window) = (
                self.api.clone(),
                self.url.clone(),
                self.queue.clone(),
                self.window,
            );
            tokio::spawn(async move {
                tokio::time::sleep(window).await;
                run(&api, &url, &queue, root).await;
            });
        }
        rx.await.unwrap_or_else(|_| {
            Err(ProviderError::Transient(
                "the batch commit ended without an answer".into(),
            ))
        })
    }
}

/// Sends what is queued, a batch at a time, until nothing is.
async fn run(api: &ApiClient, url: &str, queue: &Mutex<Vec<Pending>>, root: Option<HeaderValue>) {
    loop {
        let batch: Vec<Pending> = {
            let mut q = queue.lock().unwrap();
            let n = q.len().min(MAX_ENTRIES);
            q.drain(..n).collect()
        };
        if batch.is_empty() {
            return;
        }
        let body = json!({"entries": batch.iter().map(|p| p.entry.clone()).collect::<Vec<_>>()})
            .to_string();
        let what = "upload_session/finish_batch_v2";
        // Not repeated blindly: a batch whose reply was lost may have committed, and each
        // caller's uncertain error makes the core look before it uploads again.
        let result: ProviderResult<BatchResult> = api
            .json(
                Call::new(what).idempotency(Idempotency::NotIdempotent),
                || {
                    let mut r = api
                        .http()
                        .post(url)
                        .header(CONTENT_TYPE, "application/json")
                        .body(body.clone());
                    if let Some(h) = &root {
                        r = r.header("Dropbox-API-Path-Root", h.clone());
                    }
                    let r = r.build().map_err(|e| {
                        ProviderError::Protocol(format!("{what}: {}", e.without_url()))
                    });
                    async move { r }
                },
            )
            .await;
        match result {
            Ok(r) if r.entries.len() == batch.len() => {
                for (p, e) in batch.into_iter().zip(r.entries) {
                    let _ = p.reply.send(entry_result(e));
                }
            }
            Ok(r) => {
                let e = ProviderError::Protocol(format!(
                    "{what}: {} results for {} commits",
                    r.entries.len(),
                    batch.len()
                ));
                for p in batch {
                    let _ = p.reply.send(Err(e.clone()));
                }
            }
            Err(e) => {
                for p in batch {
                    let _ = p.reply.send(Err(e.clone()));
                }
            }
        }
    }
}

/// One entry of the reply: `success` (the file, inline) or `failure` (an
/// `UploadSessionFinishError`, read like a 409's error).
fn entry_result(e: Value) -> ProviderResult<Metadata> {
    match e.get(".tag").and_then(Value::as_str) {
        Some("success") => {
            let mut m: Metadata = serde_json::from_value(e)
                .map_err(|e| ProviderError::Protocol(format!("finish_batch entry: {e}")))?;
            m.tag = Some("file".into());
            Ok(m)
        }
        Some("failure") => {
            let failure = e.get("failure").cloned().unwrap_or(Value::Null);
            let detail = ErrorDetail {
                code: Some(tag_chain(&failure).join("/")),
                ..ErrorDetail::default()
            };
            Err(DropboxErrors.classify(
                StatusCode::CONFLICT,
                &reqwest::header::HeaderMap::new(),
                &detail,
                "commit",
            ))
        }
        _ => Err(ProviderError::Protocol(format!(
            "finish_batch entry without a known tag: {e}"
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_are_successes_or_their_errors() {
        let ok =
            json!({".tag": "success", "name": "a", "id": "id:x", "rev": "a1c10ce0dd78", "size": 1});
        let m = entry_result(ok).unwrap();
        assert_eq!((m.name.as_str(), m.is_folder()), ("a", false));
        let conflict = json!({".tag": "failure", "failure": {".tag": "path", "path": {".tag": "conflict", "conflict": {".tag": "file"}}}});
        assert!(matches!(
            entry_result(conflict),
            Err(ProviderError::AlreadyExists(_))
        ));
        let busy = json!({".tag": "failure", "failure": {".tag": "too_many_write_operations"}});
        assert!(matches!(
            entry_result(busy),
            Err(ProviderError::RateLimited { .. })
        ));
    }
}
