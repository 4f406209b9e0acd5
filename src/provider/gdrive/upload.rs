//! Content uploads: multipart for small files, resumable sessions for large ones.

use std::path::Path;

use bytes::Bytes;
use reqwest::header::{CONTENT_RANGE, CONTENT_TYPE, LOCATION, RANGE};
use tokio::io::{AsyncReadExt, AsyncSeekExt};
use tracing::{debug, warn};

use super::api::{map_error, network_error};
use super::{DriveFile, GdriveProvider, FILE_FIELDS};
use crate::provider::kit::retry::Idempotency;
use crate::provider::{ProviderError, ProviderResult};

/// How often an expired (404) session is restarted from scratch before giving up.
const MAX_SESSION_RESTARTS: u32 = 3;

/// What one PUT to a session URI told us.
enum ChunkOutcome {
    Done(Box<DriveFile>),
    /// The server has this many bytes.
    Incomplete(u64),
    /// The session is gone (expired); a new one must start from byte 0.
    Expired,
    /// Worth asking the server where it stands and going on.
    Retry(ProviderError),
    Fatal(ProviderError),
}

fn multipart_body(meta: &serde_json::Value, data: &[u8]) -> (String, Bytes) {
    // A random boundary; a collision with the content is checked rather than assumed away.
    let boundary = loop {
        let b = format!("cloudmount-{}", hex::encode(rand::random::<[u8; 16]>()));
        if !data.windows(b.len()).any(|w| w == b.as_bytes()) {
            break b;
        }
    };
    let mut body = Vec::with_capacity(data.len() + 512);
    body.extend_from_slice(
        format!("--{boundary}\r\nContent-Type: application/json; charset=UTF-8\r\n\r\n").as_bytes(),
    );
    body.extend_from_slice(meta.to_string().as_bytes());
    body.extend_from_slice(
        format!("\r\n--{boundary}\r\nContent-Type: application/octet-stream\r\n\r\n").as_bytes(),
    );
    body.extend_from_slice(data);
    body.extend_from_slice(format!("\r\n--{boundary}--\r\n").as_bytes());
    (
        format!("multipart/related; boundary={boundary}"),
        Bytes::from(body),
    )
}

/// `Range: bytes=0-N` → N+1; no header → nothing received.
fn received_bytes(resp: &reqwest::Response) -> ProviderResult<u64> {
    match resp.headers().get(RANGE) {
        None => Ok(0),
        Some(v) => v
            .to_str()
            .ok()
            .and_then(|s| s.strip_prefix("bytes=0-"))
            .and_then(|n| n.parse::<u64>().ok())
            .map(|n| n + 1)
            .ok_or_else(|| ProviderError::Protocol(format!("bad Range in 308 reply: {v:?}"))),
    }
}

impl GdriveProvider {
    pub(super) async fn upload_multipart(
        &self,
        existing: Option<&str>,
        meta: &serde_json::Value,
        source: &Path,
    ) -> ProviderResult<DriveFile> {
        let data = tokio::fs::read(source).await?;
        let (ctype, body) = multipart_body(meta, &data);
        let url = match existing {
            Some(id) => self.upload_url(&format!("files/{id}")),
            None => self.upload_url("files"),
        };
        self.api
            .json("files.upload(multipart)", |c| {
                let r = match existing {
                    Some(_) => c.patch(&url),
                    None => c.post(&url),
                };
                r.query(&[
                    ("uploadType", "multipart"),
                    ("fields", FILE_FIELDS),
                    ("supportsAllDrives", "true"),
                ])
                .header(CONTENT_TYPE, ctype.as_str())
                .body(body.clone())
            })
            .await
    }

    async fn start_session(
        &self,
        existing: Option<&str>,
        meta: &serde_json::Value,
        size: u64,
    ) -> ProviderResult<String> {
        let url = match existing {
            Some(id) => self.upload_url(&format!("files/{id}")),
            None => self.upload_url("files"),
        };
        let resp = self
            .api
            // Opening a session creates nothing visible (an unused one expires), so even a
            // POST for a new file may be repeated when its reply is lost.
            .send_as(
                "files.upload(resumable start)",
                Idempotency::Idempotent,
                |c| {
                    let r = match existing {
                        Some(_) => c.patch(&url),
                        None => c.post(&url),
                    };
                    r.query(&[
                        ("uploadType", "resumable"),
                        ("fields", FILE_FIELDS),
                        ("supportsAllDrives", "true"),
                    ])
                    .header("X-Upload-Content-Type", "application/octet-stream")
                    .header("X-Upload-Content-Length", size.to_string())
                    .json(meta)
                },
            )
            .await?;
        resp.headers()
            .get(LOCATION)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
            .ok_or_else(|| ProviderError::Protocol("resumable upload: no Location in reply".into()))
    }

    /// One PUT to the session: a chunk, or (with `chunk == None`) a status query.
    async fn put_session(
        &self,
        session: &str,
        content_range: String,
        chunk: Option<Bytes>,
    ) -> ChunkOutcome {
        self.api.cap.wait().await;
        // The session URI is the credential; Google does not want the bearer token here, and
        // leaving it out means an access token expiring mid-upload cannot break the upload.
        let req = self
            .api
            .http
            .put(session)
            .header(CONTENT_RANGE, content_range)
            .body(chunk.unwrap_or_default());
        let resp = match req.send().await {
            Ok(r) => r,
            Err(e) => return ChunkOutcome::Retry(network_error(&e, "resumable upload")),
        };
        let status = resp.status();
        match status.as_u16() {
            200 | 201 => match resp.bytes().await {
                Ok(b) => match serde_json::from_slice(&b) {
                    Ok(f) => ChunkOutcome::Done(Box::new(f)),
                    Err(e) => ChunkOutcome::Fatal(ProviderError::Protocol(format!(
                        "resumable upload: unexpected reply: {e}"
                    ))),
                },
                Err(e) => ChunkOutcome::Retry(network_error(&e, "resumable upload")),
            },
            308 => match received_bytes(&resp) {
                Ok(n) => ChunkOutcome::Incomplete(n),
                Err(e) => ChunkOutcome::Fatal(e),
            },
            404 | 410 => ChunkOutcome::Expired,
            _ => {
                let headers = resp.headers().clone();
                let body = resp.bytes().await.unwrap_or_default();
                let err = map_error(status, &headers, &body, "resumable upload");
                if matches!(
                    err,
                    ProviderError::RateLimited { .. } | ProviderError::Transient(_)
                ) {
                    ChunkOutcome::Retry(err)
                } else {
                    ChunkOutcome::Fatal(err)
                }
            }
        }
    }

    pub(super) async fn upload_resumable(
        &self,
        existing: Option<&str>,
        meta: &serde_json::Value,
        source: &Path,
        size: u64,
    ) -> ProviderResult<DriveFile> {
        let chunk_size = self.cfg.resumable_chunk_size;
        let mut file = tokio::fs::File::open(source).await?;
        let mut restarts = 0;
        let max_retries = self.api.retry.max_attempts.saturating_sub(1);
        'session: loop {
            let session = self.start_session(existing, meta, size).await?;
            let mut offset = 0u64;
            let mut failures = 0u32;
            // Whether the chunk ending the file went out: from then on the file may exist
            // even if no reply said so.
            let mut last_chunk_sent = false;
            loop {
                let outcome = if offset < size {
                    let len = chunk_size.min(size - offset);
                    last_chunk_sent |= offset + len == size;
                    file.seek(std::io::SeekFrom::Start(offset)).await?;
                    let mut buf = vec![0u8; len as usize];
                    file.read_exact(&mut buf).await?;
                    let range = format!("bytes {offset}-{}/{size}", offset + len - 1);
                    self.put_session(&session, range, Some(Bytes::from(buf)))
                        .await
                } else {
                    // Everything sent but no final reply seen: ask.
                    self.put_session(&session, format!("bytes */{size}"), None)
                        .await
                };
                let mut outcome = outcome;
                if offset < size {
                    if let ChunkOutcome::Fatal(err) = outcome {
                        // A refused chunk: an earlier request of this session that failed
                        // for us (stalled, not lost) may have reached the server since we
                        // asked, so our offset can be behind the server's. Ask once more
                        // before calling the refusal final.
                        outcome = match self
                            .put_session(&session, format!("bytes */{size}"), None)
                            .await
                        {
                            ChunkOutcome::Incomplete(n) if n != offset => {
                                debug!(offset, n, error = %err, "chunk refused: the server has moved on; resuming from its offset");
                                ChunkOutcome::Incomplete(n)
                            }
                            ChunkOutcome::Done(f) => ChunkOutcome::Done(f),
                            _ => ChunkOutcome::Fatal(err),
                        };
                    }
                }
                // After a failure, find out what the server kept before sending more.
                while let ChunkOutcome::Retry(err) = outcome {
                    failures += 1;
                    if failures > max_retries {
                        return Err(err);
                    }
                    let wait = self.api.retry.wait_after(failures - 1, &err);
                    warn!(error = %err, ?wait, offset, "upload chunk failed; asking the server how much it has");
                    tokio::time::sleep(wait).await;
                    outcome = self
                        .put_session(&session, format!("bytes */{size}"), None)
                        .await;
                }
                match outcome {
                    ChunkOutcome::Done(f) => return Ok(*f),
                    ChunkOutcome::Incomplete(n) => {
                        if n > size {
                            return Err(ProviderError::Protocol(format!(
                                "resumable upload: server claims {n} of {size} bytes"
                            )));
                        }
                        if n < offset {
                            debug!(offset, n, "server kept less than sent; resending");
                        }
                        if n == offset && offset < size {
                            // No progress without an error: count it, so a server that
                            // never accepts anything cannot loop us forever.
                            failures += 1;
                            if failures > max_retries {
                                return Err(ProviderError::Transient(
                                    "resumable upload makes no progress".into(),
                                ));
                            }
                        } else {
                            failures = 0;
                        }
                        offset = n;
                    }
                    ChunkOutcome::Expired if existing.is_none() && last_chunk_sent => {
                        // The session may be gone because it completed: a new one would
                        // create a second file of the same name. The caller looks first.
                        return Err(ProviderError::Transient(
                            "upload session gone after its last chunk was sent".into(),
                        ));
                    }
                    ChunkOutcome::Expired => {
                        restarts += 1;
                        if restarts > MAX_SESSION_RESTARTS {
                            return Err(ProviderError::Transient(
                                "resumable upload session keeps expiring".into(),
                            ));
                        }
                        warn!("upload session expired; starting over");
                        continue 'session;
                    }
                    ChunkOutcome::Fatal(e) => return Err(e),
                    ChunkOutcome::Retry(_) => unreachable!("handled above"),
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn multipart_shape() {
        let (ctype, body) = multipart_body(&serde_json::json!({"name": "a"}), b"DATA");
        let boundary = ctype.strip_prefix("multipart/related; boundary=").unwrap();
        let text = String::from_utf8(body.to_vec()).unwrap();
        assert!(text.starts_with(&format!("--{boundary}\r\nContent-Type: application/json")));
        assert!(text.ends_with(&format!("\r\nDATA\r\n--{boundary}--\r\n")));
    }
}
