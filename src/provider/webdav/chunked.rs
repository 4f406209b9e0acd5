//! Nextcloud chunked upload v2: MKCOL an upload folder below `remote.php/dav/uploads/USER`,
//! PUT numbered chunks into it, then MOVE its `.file` onto the destination, which makes the
//! server assemble the chunks. Every request carries `Destination` so that Nextcloud can
//! place the chunks on the destination's storage (needed for S3 primary storage).

use std::path::Path;

use reqwest::header::{CONTENT_LENGTH, CONTENT_TYPE};
use reqwest::{Method, StatusCode};
use tracing::{debug, warn};

use super::{file_body, open_at, paths::encode_segment, unix_secs, WebdavProvider};
use crate::provider::{ProviderError, ProviderResult, UploadOptions};

pub(crate) const DEFAULT_CHUNK_SIZE: u64 = 10 * 1024 * 1024;
/// Nextcloud refuses chunks outside 5 MiB..5 GiB (the last one may be smaller).
const MIN_CHUNK: u64 = 5 * 1024 * 1024;
const MAX_CHUNK: u64 = 5 * 1024 * 1024 * 1024;
/// Chunks are numbered 1..=10000.
const MAX_CHUNKS: u64 = 10_000;

#[derive(Debug, Clone)]
pub(crate) struct Target {
    /// `.../remote.php/dav/uploads/USER`, encoded, without trailing slash.
    uploads_url: String,
    pub(crate) chunk_size: u64,
}

impl Target {
    /// Recognizes a base URL of the form `.../remote.php/dav/files/USER[/...]`; chunking v2
    /// does not exist for the legacy `remote.php/webdav` endpoint.
    pub(crate) fn detect(origin: &str, base_segments: &[String]) -> Option<Target> {
        let i = base_segments
            .windows(4)
            .position(|w| w[0] == "remote.php" && w[1] == "dav" && w[2] == "files")?;
        let user = &base_segments[i + 3];
        let mut uploads_url = origin.to_owned();
        for seg in &base_segments[..i] {
            uploads_url.push('/');
            uploads_url.push_str(&encode_segment(seg));
        }
        uploads_url.push_str("/remote.php/dav/uploads/");
        uploads_url.push_str(&encode_segment(user));
        Some(Target {
            uploads_url,
            chunk_size: DEFAULT_CHUNK_SIZE,
        })
    }

    pub(crate) fn with_chunk_size(mut self, size: u64) -> Target {
        self.chunk_size = size.clamp(MIN_CHUNK, MAX_CHUNK);
        self
    }

    pub(crate) async fn upload(
        &self,
        p: &WebdavProvider,
        path: &str,
        source: &Path,
        size: u64,
        options: &UploadOptions,
    ) -> ProviderResult<()> {
        let id = format!("cloudmount-{:032x}", rand::random::<u128>());
        let dir = format!("{}/{id}", self.uploads_url);
        let dest = p.url(path);
        let what = format!("MKCOL chunked upload folder for {path}");
        let rb = p
            .request(Method::from_bytes(b"MKCOL").expect("valid method"), &dir)
            .header("Destination", &dest);
        let resp = p.send(rb, &what).await?;
        if !resp.status().is_success() {
            return Err(p.fail(resp, &what).await);
        }
        debug!(%path, %id, size, "chunked upload started");
        let res = self
            .send_parts(p, path, &dir, &dest, source, size, options)
            .await;
        if res.is_err() {
            // Leftover chunks would count against the user's quota until the server's
            // 24 h cleanup; removing them is best effort.
            let what = format!("DELETE chunked upload folder for {path}");
            match p
                .send(p.request(Method::DELETE, &format!("{dir}/")), &what)
                .await
            {
                Ok(r) if r.status().is_success() || r.status() == StatusCode::NOT_FOUND => {}
                Ok(r) => {
                    warn!(%path, status = r.status().as_u16(), "could not remove upload folder")
                }
                Err(e) => warn!(%path, error = %e, "could not remove upload folder"),
            }
        }
        res
    }

    #[allow(clippy::too_many_arguments)]
    async fn send_parts(
        &self,
        p: &WebdavProvider,
        path: &str,
        dir: &str,
        dest: &str,
        source: &Path,
        size: u64,
        options: &UploadOptions,
    ) -> ProviderResult<()> {
        let chunk = self.chunk_size.max(size.div_ceil(MAX_CHUNKS));
        let mut offset = 0;
        let mut number = 1u32;
        while offset < size {
            let len = chunk.min(size - offset);
            // Zero-padded so that name order and numeric order agree.
            let url = format!("{dir}/{number:05}");
            let what = format!("PUT chunk {number} of {path}");
            // A chunk sent again replaces itself: plain PUT semantics, retried as such.
            let resp = p
                .send_with(&what, None, || async {
                    let file = open_at(source, offset).await?;
                    Ok(p.request(Method::PUT, &url)
                        .header("Destination", dest)
                        .header("OC-Total-Length", size)
                        .header(CONTENT_TYPE, "application/octet-stream")
                        .header(CONTENT_LENGTH, len)
                        .body(file_body(file, len)))
                })
                .await?;
            if !resp.status().is_success() {
                return Err(p.fail(resp, &what).await);
            }
            offset += len;
            number += 1;
        }
        let what = format!("MOVE assembled upload to {path}");
        let mut rb = p
            .request(
                Method::from_bytes(b"MOVE").expect("valid method"),
                &format!("{dir}/.file"),
            )
            .header("Destination", dest)
            .header("OC-Total-Length", size)
            .header("Overwrite", "T");
        if let Some(mtime) = options.mtime.and_then(unix_secs) {
            rb = rb.header("X-OC-Mtime", mtime.to_string());
        }
        let resp = p.send(rb, &what).await?;
        let status = resp.status();
        if status.is_success() {
            return Ok(());
        }
        let err = p.fail(resp, &what).await;
        if status == StatusCode::INSUFFICIENT_STORAGE {
            return Err(ProviderError::InsufficientStorage);
        }
        Err(p.explain_write_failure(path, status, err).await)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn detects_nextcloud_urls() {
        let segs = |s: &str| {
            s.split('/')
                .filter(|x| !x.is_empty())
                .map(str::to_owned)
                .collect::<Vec<_>>()
        };
        let t = Target::detect("https://h", &segs("/nc/remote.php/dav/files/jo e/Docs")).unwrap();
        assert_eq!(t.uploads_url, "https://h/nc/remote.php/dav/uploads/jo%20e");
        assert!(Target::detect("https://h", &segs("/remote.php/webdav")).is_none());
        assert!(Target::detect("https://h", &segs("/remote.php/dav/files")).is_none());
        assert_eq!(t.with_chunk_size(1).chunk_size, MIN_CHUNK);
    }
}
