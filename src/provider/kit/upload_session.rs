//! Resumable (chunked) upload sessions: the loop that carries a file through one.
//!
//! Drive's resumable uploads, Graph's upload sessions and Dropbox's upload sessions share
//! a shape: open a session, send the file in ranges, and when a range fails ask the server
//! how much it kept and go on from there; a session that expired is started over. What
//! differs — the requests, where the offset is read from, what the final reply holds — is
//! the service's [`UploadSession`]; [`upload`] is the loop, written once:
//!
//! - after a failure it never resends blindly: it asks ([`UploadSession::query`]) and
//!   resumes from the server's offset, which may be behind ours (a chunk cut mid-body) or
//!   ahead (a chunk that landed although its reply was lost);
//! - a refused chunk is checked the same way once before it counts as final, because an
//!   earlier request of ours may have reached the server after we gave up on it;
//! - a server that accepts nothing cannot keep it looping: attempts without progress
//!   count against the retry policy;
//! - a session that vanished after the last byte was sent may have *completed*: for a new
//!   file, starting over would create a second one, so the loop returns an uncertain
//!   error and leaves the caller to look ([`SessionEnd::MayHaveCreated`]).

use std::path::Path;

use async_trait::async_trait;
use bytes::Bytes;
use tokio::io::{AsyncReadExt, AsyncSeekExt};
use tracing::{debug, warn};

use super::retry::RetryPolicy;
use crate::provider::{ProviderError, ProviderResult};

/// How often an expired session is started over before giving up.
const MAX_SESSION_RESTARTS: u32 = 3;

/// What one request to a session told us.
pub enum ChunkReply<T> {
    /// The upload is complete; the service's description of the new file.
    Done(Box<T>),
    /// The server holds this many bytes (from the start) and wants the rest.
    Incomplete(u64),
    /// The session is gone (expired or unknown); a new one must start from byte 0.
    Expired,
    /// A failure worth asking the server where it stands and going on.
    Retry(ProviderError),
    /// A refusal.
    Fatal(ProviderError),
}

/// Whether a vanished session may have created the file: then starting over is unsafe.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SessionEnd {
    /// The upload replaces an existing object: a completed session changed that object,
    /// and a new session only writes it again.
    Replaces,
    /// The upload creates a new object (on services that allow duplicate names, such as
    /// Drive, a second session would create a second file).
    MayHaveCreated,
}

/// One service's session requests.
#[async_trait]
pub trait UploadSession: Send + Sync {
    /// What a completed upload returns.
    type Done: Send;

    /// Opens a session for `size` bytes; the returned handle (a session URI or id) is
    /// passed to the other calls.
    async fn start(&self, size: u64) -> ProviderResult<String>;

    /// Sends `chunk`, the bytes at `offset` of a file of `size` bytes.
    async fn put(
        &self,
        session: &str,
        offset: u64,
        chunk: Bytes,
        size: u64,
    ) -> ChunkReply<Self::Done>;

    /// Asks how much of the `size` bytes the server holds.
    async fn query(&self, session: &str, size: u64) -> ChunkReply<Self::Done>;
}

/// Uploads the `size` bytes of `source` through sessions of `service`, `chunk_size` bytes
/// per request.
pub async fn upload<S: UploadSession>(
    service: &S,
    source: &Path,
    size: u64,
    chunk_size: u64,
    retry: &RetryPolicy,
    end: SessionEnd,
) -> ProviderResult<S::Done> {
    let chunk_size = chunk_size.max(1);
    let mut file = tokio::fs::File::open(source).await?;
    let mut restarts = 0;
    let max_retries = retry.max_attempts.saturating_sub(1);
    'session: loop {
        let session = service.start(size).await?;
        let mut offset = 0u64;
        let mut failures = 0u32;
        // Whether the chunk ending the file went out: from then on the file may exist even
        // if no reply said so.
        let mut last_chunk_sent = false;
        loop {
            let mut outcome = if offset < size {
                let len = chunk_size.min(size - offset);
                last_chunk_sent |= offset + len == size;
                file.seek(std::io::SeekFrom::Start(offset)).await?;
                let mut buf = vec![0u8; len as usize];
                file.read_exact(&mut buf).await?;
                let outcome = service.put(&session, offset, Bytes::from(buf), size).await;
                match outcome {
                    // A refused chunk: an earlier request of this session that failed for us
                    // (stalled, not lost) may have reached the server since, so our offset
                    // can be behind the server's. Ask once before calling it final.
                    ChunkReply::Fatal(err) => match service.query(&session, size).await {
                        ChunkReply::Incomplete(n) if n != offset => {
                            debug!(offset, n, error = %err, "chunk refused: the server has moved on; resuming from its offset");
                            ChunkReply::Incomplete(n)
                        }
                        ChunkReply::Done(f) => ChunkReply::Done(f),
                        _ => ChunkReply::Fatal(err),
                    },
                    other => other,
                }
            } else {
                // Everything sent but no final reply seen: ask.
                service.query(&session, size).await
            };
            // After a failure, find out what the server kept before sending more.
            while let ChunkReply::Retry(err) = outcome {
                failures += 1;
                if failures > max_retries {
                    return Err(err);
                }
                let wait = retry.wait_after(failures - 1, &err);
                warn!(error = %err, ?wait, offset, "upload chunk failed; asking the server how much it has");
                tokio::time::sleep(wait).await;
                outcome = service.query(&session, size).await;
            }
            match outcome {
                ChunkReply::Done(f) => return Ok(*f),
                ChunkReply::Incomplete(n) => {
                    if n > size {
                        return Err(ProviderError::Protocol(format!(
                            "upload session: server claims {n} of {size} bytes"
                        )));
                    }
                    if n < offset {
                        debug!(offset, n, "server kept less than sent; resending");
                    }
                    if n == offset && offset < size {
                        // No progress without an error: count it, so a server that never
                        // accepts anything cannot loop us forever.
                        failures += 1;
                        if failures > max_retries {
                            return Err(ProviderError::Transient(
                                "upload session makes no progress".into(),
                            ));
                        }
                    } else {
                        failures = 0;
                    }
                    offset = n;
                }
                ChunkReply::Expired if end == SessionEnd::MayHaveCreated && last_chunk_sent => {
                    // The session may be gone because it completed: a new one would create
                    // a second file of the same name. The caller looks first.
                    return Err(ProviderError::Transient(
                        "upload session gone after its last chunk was sent".into(),
                    ));
                }
                ChunkReply::Expired => {
                    restarts += 1;
                    if restarts > MAX_SESSION_RESTARTS {
                        return Err(ProviderError::Transient(
                            "upload session keeps expiring".into(),
                        ));
                    }
                    warn!("upload session expired; starting over");
                    continue 'session;
                }
                ChunkReply::Fatal(e) => return Err(e),
                ChunkReply::Retry(_) => unreachable!("handled above"),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;
    use std::time::Duration;

    /// A scripted service: the server's view of one session and a queue of tricks.
    struct Script {
        /// Bytes the server holds, per session number.
        held: Mutex<Vec<Vec<u8>>>,
        /// For each `put`, in order: what happens instead of a normal answer.
        tricks: Mutex<Vec<Trick>>,
        log: Mutex<Vec<String>>,
    }

    #[derive(Clone, Copy)]
    enum Trick {
        Normal,
        /// The chunk lands but the reply is lost.
        LandsReplyLost,
        /// Only half the chunk lands, then the connection breaks.
        HalfLands,
        /// The session expires before the chunk arrives.
        Expires,
    }

    impl Script {
        fn new(tricks: Vec<Trick>) -> Self {
            Script {
                held: Mutex::new(Vec::new()),
                tricks: Mutex::new(tricks),
                log: Mutex::new(Vec::new()),
            }
        }
    }

    #[async_trait]
    impl UploadSession for Script {
        type Done = Vec<u8>;

        async fn start(&self, _size: u64) -> ProviderResult<String> {
            let mut held = self.held.lock().unwrap();
            held.push(Vec::new());
            self.log.lock().unwrap().push("start".into());
            Ok((held.len() - 1).to_string())
        }

        async fn put(&self, s: &str, offset: u64, chunk: Bytes, size: u64) -> ChunkReply<Vec<u8>> {
            let i: usize = s.parse().unwrap();
            let trick = {
                let mut t = self.tricks.lock().unwrap();
                if t.is_empty() {
                    Trick::Normal
                } else {
                    t.remove(0)
                }
            };
            self.log
                .lock()
                .unwrap()
                .push(format!("put {offset}+{}", chunk.len()));
            let mut held = self.held.lock().unwrap();
            let h = &mut held[i];
            if matches!(trick, Trick::Expires) {
                h.clear();
                h.push(0xEE); // marks the session dead
                return ChunkReply::Expired;
            }
            if h.first() == Some(&0xEE) && h.len() == 1 {
                return ChunkReply::Expired;
            }
            if offset as usize != h.len() {
                return ChunkReply::Fatal(ProviderError::Protocol("wrong offset".into()));
            }
            match trick {
                Trick::HalfLands => {
                    h.extend_from_slice(&chunk[..chunk.len() / 2]);
                    ChunkReply::Retry(ProviderError::Transient("cut".into()))
                }
                Trick::LandsReplyLost => {
                    h.extend_from_slice(&chunk);
                    ChunkReply::Retry(ProviderError::Transient("reply lost".into()))
                }
                _ => {
                    h.extend_from_slice(&chunk);
                    if h.len() as u64 == size {
                        ChunkReply::Done(Box::new(h.clone()))
                    } else {
                        ChunkReply::Incomplete(h.len() as u64)
                    }
                }
            }
        }

        async fn query(&self, s: &str, size: u64) -> ChunkReply<Vec<u8>> {
            let i: usize = s.parse().unwrap();
            self.log.lock().unwrap().push("query".into());
            let held = self.held.lock().unwrap();
            let h = &held[i];
            if h.first() == Some(&0xEE) && h.len() == 1 {
                ChunkReply::Expired
            } else if h.len() as u64 == size {
                ChunkReply::Done(Box::new(h.clone()))
            } else {
                ChunkReply::Incomplete(h.len() as u64)
            }
        }
    }

    fn policy() -> RetryPolicy {
        RetryPolicy {
            max_attempts: 4,
            base_delay: Duration::from_millis(1),
            max_delay: Duration::from_millis(2),
            budget: Duration::from_secs(5),
        }
    }

    fn source(len: usize) -> (tempfile::TempDir, std::path::PathBuf, Vec<u8>) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        let data: Vec<u8> = (0..len).map(|i| (i * 7 + 3) as u8).collect();
        std::fs::write(&path, &data).unwrap();
        (dir, path, data)
    }

    #[tokio::test]
    async fn cut_and_lost_chunks_resume_from_the_servers_offset() {
        let (_d, path, data) = source(10);
        let s = Script::new(vec![Trick::Normal, Trick::HalfLands, Trick::LandsReplyLost]);
        let done = upload(&s, &path, 10, 4, &policy(), SessionEnd::MayHaveCreated)
            .await
            .unwrap();
        assert_eq!(done, data);
        assert_eq!(
            *s.log.lock().unwrap(),
            vec!["start", "put 0+4", "put 4+4", "query", "put 6+4", "query"]
        );
    }

    #[tokio::test]
    async fn an_expired_session_starts_over_unless_it_may_have_created_the_file() {
        let (_d, path, data) = source(10);
        let s = Script::new(vec![Trick::Normal, Trick::Expires]);
        let done = upload(&s, &path, 10, 4, &policy(), SessionEnd::Replaces)
            .await
            .unwrap();
        assert_eq!(done, data);
        assert_eq!(s.held.lock().unwrap().len(), 2, "a second session");

        // The last chunk went out and the session vanished: maybe it completed.
        let s = Script::new(vec![Trick::Normal, Trick::Normal, Trick::Expires]);
        let err = upload(&s, &path, 10, 4, &policy(), SessionEnd::MayHaveCreated)
            .await
            .unwrap_err();
        assert!(matches!(err, ProviderError::Transient(_)), "{err:?}");
        assert_eq!(s.held.lock().unwrap().len(), 1, "no second session");
    }

    #[tokio::test]
    async fn a_server_that_keeps_nothing_is_given_up_on() {
        let (_d, path, _) = source(10);
        let s = Script::new(vec![Trick::LandsReplyLost]);
        // Every later put is cut with nothing kept.
        struct Stuck(Script);
        #[async_trait]
        impl UploadSession for Stuck {
            type Done = Vec<u8>;
            async fn start(&self, size: u64) -> ProviderResult<String> {
                self.0.start(size).await
            }
            async fn put(&self, _s: &str, _o: u64, _c: Bytes, _z: u64) -> ChunkReply<Vec<u8>> {
                ChunkReply::Retry(ProviderError::Transient("cut".into()))
            }
            async fn query(&self, s: &str, size: u64) -> ChunkReply<Vec<u8>> {
                self.0.query(s, size).await
            }
        }
        let err = upload(&Stuck(s), &path, 10, 4, &policy(), SessionEnd::Replaces)
            .await
            .unwrap_err();
        assert!(matches!(err, ProviderError::Transient(_)), "{err:?}");
    }
}
