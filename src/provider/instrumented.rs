//! A provider wrapper that every connection goes through: counts requests and bytes,
//! measures latency, caps concurrent transfers and limits bandwidth. Providers stay
//! unaware of all of it.

use std::collections::BTreeMap;
use std::num::NonZeroU32;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Instant, SystemTime};

use async_trait::async_trait;
use futures::StreamExt;
use governor::{DefaultDirectRateLimiter, Quota as RateQuota, RateLimiter};
use tokio::sync::Semaphore;

use super::*;

/// Upper bounds (seconds) of the latency histogram buckets.
pub const LATENCY_BUCKETS: [f64; 11] = [
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

#[derive(Default)]
pub struct Histogram {
    pub buckets: [u64; LATENCY_BUCKETS.len()],
    pub count: u64,
    pub sum: f64,
}

/// Whether the remote answers, as the last request of the connection found it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum ConnectionState {
    Online,
    Offline,
    AuthError,
}

/// The connection's health, decided here because every provider outcome passes this
/// wrapper: a request that fails for the network (or a busy server) makes it offline, an
/// expired or revoked login makes it an auth error, and any answer from the server makes
/// it online again. The file system only reads it.
pub struct Health(Mutex<(ConnectionState, Option<String>)>);

impl Default for Health {
    fn default() -> Self {
        Health(Mutex::new((ConnectionState::Online, None)))
    }
}

impl Health {
    pub fn get(&self) -> (ConnectionState, Option<String>) {
        self.0.lock().unwrap().clone()
    }

    fn observe<T>(&self, r: &ProviderResult<T>) {
        let next = match r {
            Err(ProviderError::Auth(m)) => (ConnectionState::AuthError, Some(m.clone())),
            Err(e @ (ProviderError::Transient(_) | ProviderError::RateLimited { .. })) => {
                (ConnectionState::Offline, Some(e.to_string()))
            }
            // Local trouble (reading the file to upload, say) says nothing about the remote.
            Err(ProviderError::Io(_)) => return,
            // The server answered, even if with a refusal.
            _ => (ConnectionState::Online, None),
        };
        *self.0.lock().unwrap() = next;
    }
}

#[derive(Default)]
pub struct ProviderMetrics {
    pub health: Arc<Health>,
    /// (operation, outcome) -> count
    pub requests: Mutex<BTreeMap<(&'static str, &'static str), u64>>,
    pub latency: Mutex<BTreeMap<&'static str, Histogram>>,
    pub bytes_down: AtomicU64,
    pub bytes_up: AtomicU64,
}

impl ProviderMetrics {
    fn record(&self, op: &'static str, outcome: &'static str, started: Instant) {
        *self
            .requests
            .lock()
            .unwrap()
            .entry((op, outcome))
            .or_default() += 1;
        let secs = started.elapsed().as_secs_f64();
        let mut lat = self.latency.lock().unwrap();
        let h = lat.entry(op).or_default();
        h.count += 1;
        h.sum += secs;
        for (i, b) in LATENCY_BUCKETS.iter().enumerate() {
            if secs <= *b {
                h.buckets[i] += 1;
            }
        }
    }
}

fn outcome<T>(r: &ProviderResult<T>) -> &'static str {
    match r {
        Ok(_) => "ok",
        Err(ProviderError::NotFound(_)) => "not_found",
        Err(ProviderError::Auth(_)) => "auth_error",
        Err(ProviderError::RateLimited { .. }) => "rate_limited",
        Err(ProviderError::PreconditionFailed(_)) => "precondition_failed",
        Err(e) if e.is_retryable() => "transient_error",
        Err(_) => "error",
    }
}

#[derive(Debug, Clone, Default)]
pub struct TransferLimits {
    pub download_bytes_per_sec: Option<u64>,
    pub upload_bytes_per_sec: Option<u64>,
    /// Concurrent reads and uploads against this connection.
    pub max_transfers: usize,
}

pub struct InstrumentedProvider {
    inner: Arc<dyn Provider>,
    pub metrics: Arc<ProviderMetrics>,
    pub limits: TransferLimits,
    down: Option<Arc<DefaultDirectRateLimiter>>,
    up: Option<Arc<DefaultDirectRateLimiter>>,
    transfers: Arc<Semaphore>,
}

fn limiter(rate: Option<u64>) -> Option<Arc<DefaultDirectRateLimiter>> {
    let rate = NonZeroU32::new(rate?.min(u32::MAX as u64) as u32)?;
    Some(Arc::new(RateLimiter::direct(RateQuota::per_second(rate))))
}

/// Wait until `n` bytes may pass (in pieces no larger than the bucket).
async fn throttle(l: &DefaultDirectRateLimiter, mut n: u64, burst: u64) {
    while n > 0 {
        let piece = n.min(burst).max(1);
        let cells = NonZeroU32::new(piece as u32).expect("piece >= 1");
        let _ = l.until_n_ready(cells).await;
        n -= piece;
    }
}

impl InstrumentedProvider {
    pub fn new(inner: Arc<dyn Provider>, limits: TransferLimits) -> Self {
        let transfers = if limits.max_transfers == 0 {
            64
        } else {
            limits.max_transfers
        };
        InstrumentedProvider {
            down: limiter(limits.download_bytes_per_sec),
            up: limiter(limits.upload_bytes_per_sec),
            inner,
            metrics: Arc::default(),
            limits,
            transfers: Arc::new(Semaphore::new(transfers)),
        }
    }

    pub fn transfers_in_flight(&self) -> usize {
        let max = if self.limits.max_transfers == 0 {
            64
        } else {
            self.limits.max_transfers
        };
        max - self.transfers.available_permits()
    }
}

macro_rules! measured {
    ($self:ident, $op:literal, $call:expr) => {{
        let started = Instant::now();
        let r = $call.await;
        $self.metrics.record($op, outcome(&r), started);
        $self.metrics.health.observe(&r);
        r
    }};
}

#[async_trait]
impl Provider for InstrumentedProvider {
    fn kind(&self) -> &'static str {
        self.inner.kind()
    }

    fn capabilities(&self) -> Capabilities {
        self.inner.capabilities()
    }

    fn refuses_name(&self, name: &str) -> Option<String> {
        self.inner.refuses_name(name)
    }

    async fn fixed_folder(&self, dir: &str) -> Option<String> {
        self.inner.fixed_folder(dir).await
    }

    async fn same_space(&self, from: &str, to: &str) -> bool {
        self.inner.same_space(from, to).await
    }

    fn list<'a>(&'a self, dir: &'a str) -> ListStream<'a> {
        let started = Instant::now();
        let metrics = Arc::clone(&self.metrics);
        self.inner
            .list(dir)
            .map(move |page| {
                metrics.record("list", outcome(&page), started);
                metrics.health.observe(&page);
                page
            })
            .boxed()
    }

    async fn stat(&self, path: &str) -> ProviderResult<RemoteEntry> {
        measured!(self, "stat", self.inner.stat(path))
    }

    async fn read_range(
        &self,
        path: &str,
        revision: Option<&str>,
        offset: u64,
        len: u64,
    ) -> ProviderResult<ByteStream> {
        let permit = Arc::clone(&self.transfers)
            .acquire_owned()
            .await
            .map_err(|e| ProviderError::Io(e.to_string()))?;
        let stream = measured!(
            self,
            "read",
            self.inner.read_range(path, revision, offset, len)
        )?;
        let metrics = Arc::clone(&self.metrics);
        let down = self.down.clone();
        let burst = self
            .limits
            .download_bytes_per_sec
            .unwrap_or(1)
            .min(u32::MAX as u64);
        // The permit lives as long as the stream: a transfer ends when its bytes do.
        Ok(stream
            .then(move |piece| {
                let _held = &permit;
                let metrics = Arc::clone(&metrics);
                let down = down.clone();
                async move {
                    if piece.is_err() {
                        // A body cut off midway.
                        metrics.health.observe(&piece);
                    }
                    if let Ok(bytes) = &piece {
                        metrics
                            .bytes_down
                            .fetch_add(bytes.len() as u64, Ordering::Relaxed);
                        if let Some(l) = &down {
                            throttle(l, bytes.len() as u64, burst).await;
                        }
                    }
                    piece
                }
            })
            .boxed())
    }

    async fn upload(
        &self,
        path: &str,
        source: &Path,
        options: &UploadOptions,
    ) -> ProviderResult<RemoteEntry> {
        let _permit = self
            .transfers
            .acquire()
            .await
            .map_err(|e| ProviderError::Io(e.to_string()))?;
        let size = tokio::fs::metadata(source)
            .await
            .map(|m| m.len())
            .unwrap_or(0);
        if let Some(l) = &self.up {
            // The provider reads the file itself, so the budget is taken up front: the
            // average rate holds, a single large file goes out in one burst.
            let burst = self
                .limits
                .upload_bytes_per_sec
                .unwrap_or(1)
                .min(u32::MAX as u64);
            throttle(l, size, burst).await;
        }
        let r = measured!(self, "upload", self.inner.upload(path, source, options));
        if r.is_ok() {
            self.metrics.bytes_up.fetch_add(size, Ordering::Relaxed);
        }
        r
    }

    async fn mkdir(&self, path: &str) -> ProviderResult<RemoteEntry> {
        measured!(self, "mkdir", self.inner.mkdir(path))
    }

    async fn rename(&self, from: &str, to: &str, overwrite: bool) -> ProviderResult<RemoteEntry> {
        measured!(self, "rename", self.inner.rename(from, to, overwrite))
    }

    async fn delete(&self, path: &str) -> ProviderResult<()> {
        measured!(self, "delete", self.inner.delete(path))
    }

    async fn copy(&self, from: &str, to: &str) -> ProviderResult<RemoteEntry> {
        measured!(self, "copy", self.inner.copy(from, to))
    }

    async fn quota(&self) -> ProviderResult<Quota> {
        measured!(self, "quota", self.inner.quota())
    }

    async fn symlink(&self, path: &str, target: &str) -> ProviderResult<RemoteEntry> {
        measured!(self, "symlink", self.inner.symlink(path, target))
    }

    async fn set_mode(&self, path: &str, mode: u32) -> ProviderResult<()> {
        measured!(self, "set_mode", self.inner.set_mode(path, mode))
    }

    async fn set_mtime(&self, path: &str, mtime: SystemTime) -> ProviderResult<()> {
        measured!(self, "set_mtime", self.inner.set_mtime(path, mtime))
    }

    async fn changes_cursor(&self) -> ProviderResult<String> {
        measured!(self, "changes_cursor", self.inner.changes_cursor())
    }

    async fn changes_since(&self, cursor: &str) -> ProviderResult<ChangeBatch> {
        measured!(self, "changes", self.inner.changes_since(cursor))
    }

    /// Not measured: a long poll lasts minutes by design, which would drown the latency
    /// figures of real requests.
    async fn wait_for_changes(&self, cursor: &str) -> ProviderResult<bool> {
        self.inner.wait_for_changes(cursor).await
    }

    async fn list_versions(&self, path: &str) -> ProviderResult<Vec<NativeVersion>> {
        measured!(self, "list_versions", self.inner.list_versions(path))
    }

    async fn read_version(&self, path: &str, version_id: &str) -> ProviderResult<ByteStream> {
        measured!(
            self,
            "read_version",
            self.inner.read_version(path, version_id)
        )
    }
}
