//! The chunk cache: file contents on local disk, fetched lazily by ranged reads.
//!
//! One sparse file per inode holds whatever parts are known; a record (persisted in the
//! metadata store) says which byte ranges are present and which remote revision they are
//! from. Locally written data lives in the same file, so a file waiting for upload reads
//! back with its new contents, and the uploader reads from here too.

pub mod ranges;

use std::collections::{HashMap, HashSet};
use std::fs::{File, OpenOptions};
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::future::{BoxFuture, FutureExt, Shared};
use futures::StreamExt;
use lru::LruCache;
use serde::{Deserialize, Serialize};
use tokio::sync::Semaphore;

use crate::metadata::{Ino, Store};
use crate::provider::{Provider, ProviderError};
pub use ranges::RangeSet;

const OFFLINE_KEY: &str = "offline_files";

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct CacheRecord {
    /// Remote revision the clean (fetched) ranges came from.
    pub revision: Option<String>,
    pub present: RangeSet,
    /// While set, nothing of this file may be evicted: it holds unuploaded data.
    pub dirty: bool,
    /// The shortest length the file was truncated to since its content was `revision`'s.
    /// Bytes at or past it are not that revision's any more (a truncate cut them and
    /// whatever is there now was written locally, zeros included), so a fetch of the
    /// revision never fills them — not even one that started before the truncate.
    #[serde(default)]
    pub truncated_to: Option<u64>,
}

impl CacheRecord {
    /// The part of `[start, end)` that a fetch of `revision` may fill: the holes below
    /// `truncated_to`.
    fn fetchable_holes(&self, start: u64, end: u64) -> Vec<(u64, u64)> {
        let end = self.truncated_to.map_or(end, |t| end.min(t));
        self.present.missing(start, end)
    }
}

/// Where the missing parts of a file come from.
#[derive(Debug, Clone)]
pub struct Source {
    pub path: String,
    pub revision: String,
}

#[derive(Debug, Clone, thiserror::Error)]
pub enum CacheError {
    #[error(transparent)]
    Provider(#[from] ProviderError),
    #[error("cache I/O: {0}")]
    Io(String),
    #[error("cache disk is full")]
    NoSpace,
    #[error("content is not cached and the file is not on the remote yet")]
    Unavailable,
}

impl From<std::io::Error> for CacheError {
    fn from(e: std::io::Error) -> Self {
        if e.raw_os_error() == Some(libc::ENOSPC) {
            CacheError::NoSpace
        } else {
            CacheError::Io(e.to_string())
        }
    }
}

pub type CacheResult<T> = Result<T, CacheError>;

type FetchFuture = Shared<BoxFuture<'static, CacheResult<()>>>;

/// How often one chunk fetch resumes after its body was cut off.
const FETCH_RESUMES: u32 = 4;

struct State {
    records: HashMap<Ino, CacheRecord>,
    /// Clean chunks in least-recently-used order.
    lru: LruCache<(Ino, u64), ()>,
    used: u64,
    /// Chunks a read is copying out right now; eviction skips them.
    pinned: HashMap<(Ino, u64), u32>,
    /// Files the user asked to keep available offline (`cloudmount pin`).
    offline: HashSet<Ino>,
    /// Hard-linked files, kept whole while they have several names (the VFS rebuilds this
    /// set from its link records at every start, so it is not persisted here).
    linked: HashSet<Ino>,
    fetches: HashMap<(Ino, u64), FetchFuture>,
}

impl State {
    /// Take an inode's chunks out of the eviction order.
    fn forget_chunks(&mut self, ino: Ino) {
        let stale: Vec<_> = self
            .lru
            .iter()
            .filter(|((i, _), _)| *i == ino)
            .map(|(k, _)| *k)
            .collect();
        for k in stale {
            self.lru.pop(&k);
        }
    }
}

pub struct CacheStats {
    pub used: u64,
    pub quota: u64,
    pub files: usize,
    pub hits: u64,
    pub misses: u64,
}

pub struct ChunkCache {
    dir: PathBuf,
    store: Store,
    provider: Arc<dyn Provider>,
    pub chunk_size: u64,
    quota: u64,
    state: Mutex<State>,
    in_flight: Arc<Semaphore>,
    hits: std::sync::atomic::AtomicU64,
    misses: std::sync::atomic::AtomicU64,
    /// Woken whenever fetched bytes land, so readers waiting for a range can go on.
    progress: tokio::sync::Notify,
}

impl ChunkCache {
    pub fn open(
        dir: PathBuf,
        store: Store,
        provider: Arc<dyn Provider>,
        chunk_size: u64,
        quota: u64,
        in_flight_budget: u64,
    ) -> CacheResult<Arc<Self>> {
        crate::private_fs::create_private_dir(&dir)?;
        let mut records = HashMap::new();
        let mut lru = LruCache::unbounded();
        let mut used = 0;
        for item in store.all_cache_records::<CacheRecord>() {
            let (ino, mut rec) = item.map_err(|e| CacheError::Io(e.to_string()))?;
            let path = dir.join(ino.to_string());
            // A record without its file (wiped cache dir) knows nothing any more.
            match std::fs::metadata(&path) {
                Ok(m) => rec.present.truncate(m.len()),
                Err(_) => rec.present = RangeSet::new(),
            }
            used += rec.present.total();
            if !rec.dirty {
                for (s, e) in rec.present.iter() {
                    for chunk in s / chunk_size..e.div_ceil(chunk_size) {
                        lru.put((ino, chunk), ());
                    }
                }
            }
            records.insert(ino, rec);
        }
        let offline: HashSet<Ino> = store
            .get_meta(OFFLINE_KEY)
            .ok()
            .flatten()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .unwrap_or_default();
        let permits = (in_flight_budget / chunk_size).max(2) as usize;
        Ok(Arc::new(ChunkCache {
            dir,
            store,
            provider,
            chunk_size,
            quota,
            state: Mutex::new(State {
                records,
                lru,
                used,
                pinned: HashMap::new(),
                offline,
                linked: HashSet::new(),
                fetches: HashMap::new(),
            }),
            in_flight: Arc::new(Semaphore::new(permits)),
            hits: Default::default(),
            misses: Default::default(),
            progress: tokio::sync::Notify::new(),
        }))
    }

    /// Keep (or stop keeping) a file's content on disk regardless of the quota.
    pub fn set_offline(&self, ino: Ino, keep: bool) {
        let mut st = self.state.lock().unwrap();
        let changed = if keep {
            st.offline.insert(ino)
        } else {
            st.offline.remove(&ino)
        };
        if changed {
            let list: Vec<Ino> = st.offline.iter().copied().collect();
            drop(st);
            if let Ok(bytes) = serde_json::to_vec(&list) {
                if let Err(e) = self.store.set_meta(OFFLINE_KEY, &bytes) {
                    tracing::error!(error = %e, "could not persist the offline set");
                }
            }
        }
    }

    /// Keep (or stop keeping) a hard-linked file's content regardless of the quota.
    pub fn keep_for_links(&self, ino: Ino, keep: bool) {
        let mut st = self.state.lock().unwrap();
        if keep {
            st.linked.insert(ino);
        } else {
            st.linked.remove(&ino);
        }
    }

    pub fn is_offline(&self, ino: Ino) -> bool {
        self.state.lock().unwrap().offline.contains(&ino)
    }

    pub fn data_path(&self, ino: Ino) -> PathBuf {
        self.dir.join(ino.to_string())
    }

    fn open_file(&self, ino: Ino) -> std::io::Result<File> {
        // File contents of the account: for this user only, whatever the umask.
        OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(crate::private_fs::FILE_MODE)
            .open(self.data_path(ino))
    }

    fn persist(&self, ino: Ino, rec: &CacheRecord) {
        if let Err(e) = self.store.put_cache_record(ino, rec) {
            tracing::error!(ino, error = %e, "could not persist cache record");
        }
    }

    pub fn record(&self, ino: Ino) -> Option<CacheRecord> {
        self.state.lock().unwrap().records.get(&ino).cloned()
    }

    /// Whether all of `[0, size)` is on local disk.
    pub fn is_complete(&self, ino: Ino, size: u64) -> bool {
        let st = self.state.lock().unwrap();
        st.records
            .get(&ino)
            .map(|r| r.fetchable_holes(0, size).is_empty())
            .unwrap_or(size == 0)
    }

    pub fn cached_bytes(&self, ino: Ino) -> u64 {
        let st = self.state.lock().unwrap();
        st.records.get(&ino).map(|r| r.present.total()).unwrap_or(0)
    }

    /// Make sure the cached clean data belongs to `revision`; drop it otherwise.
    /// Returns true when the cache was still valid.
    pub fn validate(&self, ino: Ino, revision: &str) -> bool {
        let mut st = self.state.lock().unwrap();
        let Some(rec) = st.records.get(&ino) else {
            return true;
        };
        if rec.dirty || rec.revision.as_deref() == Some(revision) {
            return true;
        }
        tracing::debug!(ino, cached = ?rec.revision, current = revision,
            "cached content is of another revision: dropped");
        Self::drop_locked(&mut st, ino);
        drop(st);
        let _ = std::fs::remove_file(self.data_path(ino));
        let _ = self.store.remove_cache_record(ino);
        false
    }

    fn drop_locked(st: &mut State, ino: Ino) {
        if let Some(rec) = st.records.remove(&ino) {
            st.used = st.used.saturating_sub(rec.present.total());
        }
        st.forget_chunks(ino);
    }

    /// Forget everything cached for an inode (it was deleted, or changed remotely).
    pub fn remove(&self, ino: Ino) {
        let mut st = self.state.lock().unwrap();
        Self::drop_locked(&mut st, ino);
        drop(st);
        let _ = std::fs::remove_file(self.data_path(ino));
        let _ = self.store.remove_cache_record(ino);
    }

    /// Move the cached content of one inode to another (a conflict copy takes over the
    /// local edit).
    pub fn transfer(&self, from: Ino, to: Ino) -> CacheResult<()> {
        std::fs::rename(self.data_path(from), self.data_path(to))?;
        let mut st = self.state.lock().unwrap();
        if let Some(rec) = st.records.remove(&from) {
            st.forget_chunks(from);
            self.persist(to, &rec);
            st.records.insert(to, rec);
        }
        drop(st);
        let _ = self.store.remove_cache_record(from);
        Ok(())
    }

    pub fn set_dirty(&self, ino: Ino, dirty: bool) {
        let mut st = self.state.lock().unwrap();
        let rec = st.records.entry(ino).or_default();
        if rec.dirty == dirty {
            return;
        }
        rec.dirty = dirty;
        let rec = rec.clone();
        if dirty {
            st.forget_chunks(ino);
        } else {
            for (s, e) in rec.present.iter() {
                for chunk in s / self.chunk_size..e.div_ceil(self.chunk_size) {
                    st.lru.put((ino, chunk), ());
                }
            }
        }
        drop(st);
        self.persist(ino, &rec);
    }

    /// After an upload: the local content now is that remote revision.
    pub fn mark_uploaded(&self, ino: Ino, revision: &str) {
        let mut st = self.state.lock().unwrap();
        let rec = st.records.entry(ino).or_default();
        rec.revision = Some(revision.to_string());
        // The whole local content is that revision now.
        rec.truncated_to = None;
        let rec = rec.clone();
        drop(st);
        self.persist(ino, &rec);
        self.set_dirty(ino, false);
    }

    /// Write local data (a program's write()).
    pub fn write(&self, ino: Ino, offset: u64, data: &[u8]) -> CacheResult<()> {
        let file = self.open_file(ino)?;
        let mut st = self.state.lock().unwrap();
        file.write_all_at(data, offset)?;
        let rec = st.records.entry(ino).or_default();
        let before = rec.present.total();
        rec.present.insert(offset, offset + data.len() as u64);
        let grown = rec.present.total() - before;
        st.used += grown;
        Ok(())
    }

    /// Persist the in-memory record (the write-back queue calls this before it promises
    /// a closing program that its data is safe).
    pub fn sync_record(&self, ino: Ino) {
        let rec = self.record(ino);
        if let Some(rec) = rec {
            self.persist(ino, &rec);
        }
    }

    pub fn fsync(&self, ino: Ino) -> CacheResult<()> {
        if let Ok(f) = File::open(self.data_path(ino)) {
            f.sync_data()?;
        }
        self.sync_record(ino);
        Ok(())
    }

    /// Change the length: a shrink forgets data past the end, a grow adds zeros.
    pub fn truncate(&self, ino: Ino, old_size: u64, new_size: u64) -> CacheResult<()> {
        let file = self.open_file(ino)?;
        let mut st = self.state.lock().unwrap();
        // Cut to the shorter length first: a grown range must read as zeros whatever the
        // sparse file held past the old end.
        file.set_len(old_size.min(new_size))?;
        file.set_len(new_size)?;
        let rec = st.records.entry(ino).or_default();
        let before = rec.present.total();
        rec.present.truncate(new_size);
        if new_size > old_size {
            rec.present.insert(old_size, new_size);
        }
        let cut = old_size.min(new_size);
        rec.truncated_to = Some(rec.truncated_to.map_or(cut, |t| t.min(cut)));
        let after = rec.present.total();
        let rec = rec.clone();
        st.used = st.used.saturating_sub(before) + after;
        drop(st);
        self.persist(ino, &rec);
        Ok(())
    }

    /// Read `[offset, offset+len)` of a file of `size` bytes, fetching missing chunks
    /// from `source` first. `source` is None for content that exists only locally.
    pub async fn read(
        self: &Arc<Self>,
        ino: Ino,
        source: Option<&Source>,
        size: u64,
        offset: u64,
        len: u64,
    ) -> CacheResult<Vec<u8>> {
        let end = offset.saturating_add(len).min(size);
        if offset >= end {
            return Ok(Vec::new());
        }
        let chunks: Vec<u64> = (offset / self.chunk_size..end.div_ceil(self.chunk_size)).collect();
        self.pin(ino, &chunks);
        let result = async {
            self.ensure(ino, source, size, offset, end).await?;
            let file = File::open(self.data_path(ino))?;
            let mut buf = vec![0u8; (end - offset) as usize];
            let mut filled = 0;
            while filled < buf.len() {
                let n = file.read_at(&mut buf[filled..], offset + filled as u64)?;
                if n == 0 {
                    // The sparse file is shorter than the logical size: the rest is zeros.
                    break;
                }
                filled += n;
            }
            Ok(buf)
        }
        .await;
        self.unpin(ino, &chunks);
        result
    }

    fn pin(&self, ino: Ino, chunks: &[u64]) {
        let mut st = self.state.lock().unwrap();
        for &c in chunks {
            *st.pinned.entry((ino, c)).or_default() += 1;
        }
    }

    fn unpin(&self, ino: Ino, chunks: &[u64]) {
        let mut st = self.state.lock().unwrap();
        for &c in chunks {
            if let Some(n) = st.pinned.get_mut(&(ino, c)) {
                *n -= 1;
                if *n == 0 {
                    st.pinned.remove(&(ino, c));
                }
            }
        }
    }

    /// Make `[offset, end)` present, fetching the chunks that are not (in parallel).
    /// Returns as soon as the wanted bytes are on disk, without waiting for the rest of
    /// their chunks, so the first byte of a cold read arrives quickly.
    pub async fn ensure(
        self: &Arc<Self>,
        ino: Ino,
        source: Option<&Source>,
        size: u64,
        offset: u64,
        end: u64,
    ) -> CacheResult<()> {
        // What we wait for must not be evicted before we have it all, or a file larger
        // than the quota would be fetched over and over.
        let end = end.min(size);
        let chunks: Vec<u64> = (offset / self.chunk_size..end.div_ceil(self.chunk_size)).collect();
        self.pin(ino, &chunks);
        let result = self.ensure_pinned(ino, source, size, offset, end).await;
        self.unpin(ino, &chunks);
        self.evict_over_quota();
        result
    }

    async fn ensure_pinned(
        self: &Arc<Self>,
        ino: Ino,
        source: Option<&Source>,
        size: u64,
        offset: u64,
        end: u64,
    ) -> CacheResult<()> {
        let mut rounds_after_completion = 0;
        loop {
            let notified = self.progress.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            let mut waits = Vec::new();
            {
                let mut st = self.state.lock().unwrap();
                let record = st.records.get(&ino).cloned();
                for chunk in offset / self.chunk_size..end.div_ceil(self.chunk_size) {
                    let cs = chunk * self.chunk_size;
                    let ce = (cs + self.chunk_size).min(size);
                    let want_s = cs.max(offset);
                    let want_e = ce.min(end);
                    // Past a truncation nothing comes from the remote: what is there
                    // (data or holes, which read as zeros) is the local content.
                    let have = record
                        .as_ref()
                        .map(|r| r.fetchable_holes(want_s, want_e).is_empty())
                        .unwrap_or(false);
                    if have {
                        if st.lru.contains(&(ino, chunk)) {
                            st.lru.promote(&(ino, chunk));
                        }
                        continue;
                    }
                    let Some(source) = source else {
                        // Never uploaded and not on disk: the unwritten parts are holes,
                        // which read as zeros.
                        continue;
                    };
                    let fut = st
                        .fetches
                        .entry((ino, chunk))
                        .or_insert_with(|| self.spawn_fetch(ino, chunk, source.clone(), size))
                        .clone();
                    waits.push(fut);
                }
            }
            if waits.is_empty() {
                if rounds_after_completion == 0 {
                    self.hits.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                }
                return Ok(());
            }
            if rounds_after_completion == 0 {
                self.misses
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            }
            tokio::select! {
                _ = &mut notified => {}
                results = futures::future::join_all(waits) => {
                    for r in results {
                        r?;
                    }
                    rounds_after_completion += 1;
                    if rounds_after_completion > 3 {
                        return Err(CacheError::Io(
                            "file content changed while it was being read".into(),
                        ));
                    }
                }
            }
        }
    }

    /// Start fetching chunks without waiting (read-ahead).
    pub fn prefetch(self: &Arc<Self>, ino: Ino, source: &Source, size: u64, offset: u64, end: u64) {
        let end = end.min(size);
        let mut st = self.state.lock().unwrap();
        let record = st.records.get(&ino).cloned();
        for chunk in offset / self.chunk_size..end.div_ceil(self.chunk_size) {
            let cs = chunk * self.chunk_size;
            let ce = (cs + self.chunk_size).min(size);
            if record
                .as_ref()
                .map(|r| r.fetchable_holes(cs, ce).is_empty())
                .unwrap_or(false)
            {
                continue;
            }
            if st.fetches.contains_key(&(ino, chunk)) {
                continue;
            }
            let fut = self.spawn_fetch(ino, chunk, source.clone(), size);
            st.fetches.insert((ino, chunk), fut);
        }
    }

    fn spawn_fetch(
        self: &Arc<Self>,
        ino: Ino,
        chunk: u64,
        source: Source,
        size: u64,
    ) -> FetchFuture {
        let this = Arc::clone(self);
        let handle = tokio::spawn(async move {
            let result = this.fetch_chunk(ino, chunk, &source, size).await;
            this.state.lock().unwrap().fetches.remove(&(ino, chunk));
            if result.is_ok() {
                this.evict_over_quota();
            }
            result
        });
        async move {
            handle
                .await
                .unwrap_or_else(|e| Err(CacheError::Io(format!("fetch task failed: {e}"))))
        }
        .boxed()
        .shared()
    }

    async fn fetch_chunk(
        &self,
        ino: Ino,
        chunk: u64,
        source: &Source,
        size: u64,
    ) -> CacheResult<()> {
        let _permit = self
            .in_flight
            .acquire()
            .await
            .map_err(|e| CacheError::Io(e.to_string()))?;
        let cs = chunk * self.chunk_size;
        let ce = (cs + self.chunk_size).min(size);
        // Fetch only from the first to the last byte that is still missing.
        let missing = {
            let st = self.state.lock().unwrap();
            st.records
                .get(&ino)
                .map(|r| r.fetchable_holes(cs, ce))
                .unwrap_or_else(|| vec![(cs, ce)])
        };
        let (Some(first), Some(last)) = (missing.first(), missing.last()) else {
            return Ok(());
        };
        let (fs, fe) = (first.0, last.1);
        {
            // Chunks fetched for a new revision must not be mixed with an older one's.
            let mut st = self.state.lock().unwrap();
            let rec = st.records.entry(ino).or_default();
            if rec.revision.is_none() {
                rec.revision = Some(source.revision.clone());
            }
        }
        let file = self.open_file(ino)?;
        let mut pos = fs;
        // A body cut off midway (the provider retries a request only until its reply
        // starts) is asked for again from where it broke, a few times.
        let mut cuts = 0u32;
        'fetch: loop {
            let mut stream = self
                .provider
                .read_range(&source.path, Some(&source.revision), pos, fe - pos)
                .await?;
            while let Some(piece) = stream.next().await {
                let piece = match piece {
                    Ok(p) => p,
                    Err(e) if e.is_retryable() && cuts < FETCH_RESUMES => {
                        cuts += 1;
                        tracing::debug!(ino, chunk, pos, error = %e, "fetch cut off; resuming");
                        tokio::time::sleep(Duration::from_millis(50 << cuts)).await;
                        continue 'fetch;
                    }
                    Err(e) => return Err(e.into()),
                };
                self.commit_fetched(&file, ino, &source.revision, pos, &piece)?;
                pos += piece.len() as u64;
            }
            break;
        }
        if pos < fe {
            return Err(CacheError::Provider(ProviderError::Protocol(format!(
                "short read of {}: got {} of {} bytes",
                source.path,
                pos - fs,
                fe - fs
            ))));
        }
        let rec = {
            let mut st = self.state.lock().unwrap();
            let is_current = st
                .records
                .get(&ino)
                .map(|r| r.revision.as_deref() == Some(source.revision.as_str()))
                .unwrap_or(false);
            let dirty = st.records.get(&ino).map(|r| r.dirty).unwrap_or(false);
            if is_current && !dirty {
                st.lru.put((ino, chunk), ());
            }
            st.records.get(&ino).cloned()
        };
        if let Some(rec) = rec {
            self.persist(ino, &rec);
        }
        Ok(())
    }

    /// Write fetched bytes into the holes only: parts written locally meanwhile win.
    fn commit_fetched(
        &self,
        file: &File,
        ino: Ino,
        revision: &str,
        offset: u64,
        data: &[u8],
    ) -> CacheResult<()> {
        let mut st = self.state.lock().unwrap();
        let Some(rec) = st.records.get_mut(&ino) else {
            return Ok(()); // dropped meanwhile
        };
        if rec.revision.as_deref() != Some(revision) {
            return Ok(());
        }
        let end = offset + data.len() as u64;
        let holes = rec.fetchable_holes(offset, end);
        for (s, e) in &holes {
            let slice = &data[(s - offset) as usize..(e - offset) as usize];
            file.write_all_at(slice, *s)?;
            rec.present.insert(*s, *e);
        }
        let added: u64 = holes.iter().map(|(s, e)| e - s).sum();
        st.used += added;
        drop(st);
        self.progress.notify_waiters();
        Ok(())
    }

    /// Evict least recently used clean chunks until usage is under the quota.
    pub fn evict_over_quota(&self) {
        let mut punched: Vec<(Ino, u64, u64)> = Vec::new();
        {
            let mut st = self.state.lock().unwrap();
            let mut skipped = Vec::new();
            let mut seen = HashSet::new();
            while st.used > self.quota {
                let Some(((ino, chunk), ())) = st.lru.pop_lru() else {
                    break;
                };
                if !seen.insert((ino, chunk)) {
                    break;
                }
                let busy = st.pinned.contains_key(&(ino, chunk))
                    || st.fetches.contains_key(&(ino, chunk))
                    || st.offline.contains(&ino)
                    || st.linked.contains(&ino);
                let Some(rec) = st.records.get_mut(&ino) else {
                    continue;
                };
                if rec.dirty || busy {
                    skipped.push((ino, chunk));
                    continue;
                }
                let cs = chunk * self.chunk_size;
                let ce = cs + self.chunk_size;
                let freed = rec.present.overlap(cs, ce);
                rec.present.remove(cs, ce);
                st.used = st.used.saturating_sub(freed);
                punched.push((ino, cs, ce));
            }
            for k in skipped {
                st.lru.put(k, ());
            }
        }
        let mut touched = HashSet::new();
        for (ino, s, e) in punched {
            if let Ok(f) = OpenOptions::new().write(true).open(self.data_path(ino)) {
                if let Err(e) = punch_hole(&f, s, e - s) {
                    tracing::warn!(ino, error = %e, "could not free cache space");
                }
            }
            touched.insert(ino);
        }
        for ino in touched {
            if let Some(rec) = self.record(ino) {
                self.persist(ino, &rec);
            }
        }
    }

    pub fn stats(&self) -> CacheStats {
        let st = self.state.lock().unwrap();
        CacheStats {
            used: st.used,
            quota: self.quota,
            files: st.records.len(),
            hits: self.hits.load(std::sync::atomic::Ordering::Relaxed),
            misses: self.misses.load(std::sync::atomic::Ordering::Relaxed),
        }
    }

    /// Copy the whole cached content to `dest` (a snapshot for upload).
    pub fn snapshot(&self, ino: Ino, size: u64, dest: &Path) -> CacheResult<()> {
        let src = self.data_path(ino);
        // fs::copy gives the copy the source's mode: cache files are 0600, and so is the
        // empty file made when nothing is cached.
        if src.exists() {
            std::fs::copy(&src, dest)?;
        } else {
            OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(true)
                .mode(crate::private_fs::FILE_MODE)
                .open(dest)?;
        }
        let f = OpenOptions::new().write(true).open(dest)?;
        f.set_len(size)?;
        Ok(())
    }
}

fn punch_hole(file: &File, offset: u64, len: u64) -> std::io::Result<()> {
    use nix::fcntl::{fallocate, FallocateFlags};
    fallocate(
        file,
        FallocateFlags::FALLOC_FL_PUNCH_HOLE | FallocateFlags::FALLOC_FL_KEEP_SIZE,
        offset as i64,
        len as i64,
    )
    .map_err(std::io::Error::from)
}
