//! Content uploads: multipart for small files, resumable sessions for large ones.

use std::path::Path;

use async_trait::async_trait;
use bytes::Bytes;
use reqwest::header::{CONTENT_RANGE, CONTENT_TYPE, LOCATION, RANGE};
use reqwest::StatusCode;

use super::{DriveFile, GdriveProvider, FILE_FIELDS};
use crate::provider::kit::client::{transport_error, Call};
use crate::provider::kit::retry::Idempotency;
use crate::provider::kit::upload_session::{self, ChunkReply, SessionEnd, UploadSession};
use crate::provider::{ProviderError, ProviderResult};

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

    pub(super) async fn upload_resumable(
        &self,
        existing: Option<&str>,
        meta: &serde_json::Value,
        source: &Path,
        size: u64,
    ) -> ProviderResult<DriveFile> {
        let session = DriveSession {
            drive: self,
            existing,
            meta,
        };
        let end = match existing {
            Some(_) => SessionEnd::Replaces,
            // Drive allows two files of one name: a second session would make a second.
            None => SessionEnd::MayHaveCreated,
        };
        upload_session::upload(
            &session,
            source,
            size,
            self.cfg.resumable_chunk_size,
            self.api.client.retry_policy(),
            end,
        )
        .await
    }
}

/// One resumable upload: to a new file (`existing == None`) or over an existing one.
struct DriveSession<'a> {
    drive: &'a GdriveProvider,
    existing: Option<&'a str>,
    meta: &'a serde_json::Value,
}

impl DriveSession<'_> {
    /// One PUT to the session URI: a chunk, or (with `chunk == None`) a status query.
    async fn put_range(
        &self,
        session: &str,
        content_range: String,
        chunk: Option<Bytes>,
    ) -> ChunkReply<DriveFile> {
        const WHAT: &str = "resumable upload";
        // The session URI is the credential; Google does not want the bearer token here, and
        // leaving it out means an access token expiring mid-upload cannot break the upload.
        // One attempt per call: the session loop asks the server before sending more.
        let client = &self.drive.api.client;
        let call = Call::new(WHAT)
            .unauthenticated()
            .idempotency(Idempotency::NotIdempotent)
            .accept(&[
                StatusCode::PERMANENT_REDIRECT,
                StatusCode::NOT_FOUND,
                StatusCode::GONE,
            ]);
        let resp = client
            .send_once(call, || {
                client
                    .http()
                    .put(session)
                    .header(CONTENT_RANGE, content_range.as_str())
                    .body(chunk.clone().unwrap_or_default())
                    .build()
                    .map_err(|e| ProviderError::Protocol(format!("{WHAT}: {}", e.without_url())))
            })
            .await;
        let resp = match resp {
            Ok(r) => r,
            Err(e @ (ProviderError::RateLimited { .. } | ProviderError::Transient(_))) => {
                return ChunkReply::Retry(e)
            }
            Err(e) => return ChunkReply::Fatal(e),
        };
        match resp.status().as_u16() {
            308 => match received_bytes(&resp) {
                Ok(n) => ChunkReply::Incomplete(n),
                Err(e) => ChunkReply::Fatal(e),
            },
            404 | 410 => ChunkReply::Expired,
            _ => match resp.bytes().await {
                Ok(b) => match serde_json::from_slice(&b) {
                    Ok(f) => ChunkReply::Done(Box::new(f)),
                    Err(e) => ChunkReply::Fatal(ProviderError::Protocol(format!(
                        "{WHAT}: unexpected reply: {e}"
                    ))),
                },
                Err(e) => ChunkReply::Retry(transport_error(&e, WHAT)),
            },
        }
    }
}

#[async_trait]
impl UploadSession for DriveSession<'_> {
    type Done = DriveFile;

    async fn start(&self, size: u64) -> ProviderResult<String> {
        let url = match self.existing {
            Some(id) => self.drive.upload_url(&format!("files/{id}")),
            None => self.drive.upload_url("files"),
        };
        let resp = self
            .drive
            .api
            // Opening a session creates nothing visible (an unused one expires), so even a
            // POST for a new file may be repeated when its reply is lost.
            .send_as(
                "files.upload(resumable start)",
                Idempotency::Idempotent,
                |c| {
                    let r = match self.existing {
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
                    .json(self.meta)
                },
            )
            .await?;
        resp.headers()
            .get(LOCATION)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
            .ok_or_else(|| ProviderError::Protocol("resumable upload: no Location in reply".into()))
    }

    async fn put(
        &self,
        session: &str,
        offset: u64,
        chunk: Bytes,
        size: u64,
    ) -> ChunkReply<DriveFile> {
        let end = offset + chunk.len() as u64 - 1;
        self.put_range(session, format!("bytes {offset}-{end}/{size}"), Some(chunk))
            .await
    }

    async fn query(&self, session: &str, size: u64) -> ChunkReply<DriveFile> {
        self.put_range(session, format!("bytes */{size}"), None)
            .await
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
