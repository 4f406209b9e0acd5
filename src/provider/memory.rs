//! An in-memory provider for tests: it can go offline, fail on demand, add latency,
//! and counts the calls it receives so tests can assert that a warm path stays local.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use bytes::Bytes;
use futures::StreamExt;

use super::*;

#[derive(Clone)]
struct Node {
    kind: EntryKind,
    data: Vec<u8>,
    mtime: SystemTime,
    revision: u64,
    mode: u32,
    target: Option<String>,
}

#[derive(Default)]
pub struct MemoryProvider {
    nodes: Mutex<BTreeMap<String, Node>>,
    next_revision: AtomicU64,
    offline: AtomicBool,
    latency_ms: AtomicU64,
    /// Errors to return from the next calls, consumed first-in first-out.
    injected: Mutex<Vec<ProviderError>>,
    calls: Mutex<HashMap<&'static str, u64>>,
    page_size: AtomicU64,
    /// The next upload lands but its caller is told it failed (a reply lost in transit).
    lose_upload_reply: AtomicBool,
    /// Random faults (see `set_chaos`).
    chaos: Mutex<Option<Chaos>>,
    /// Operations a test stops at a chosen point (see `hold`).
    holds: Mutex<Vec<Arc<HoldState>>>,
    /// The next listing ends after this name (see `cut_next_listing_after`).
    cut_listing_after: Mutex<Option<String>>,
    /// Reads whose body breaks: (bytes let through, how many reads) (see
    /// `cut_next_reads_after`).
    cut_reads: Mutex<Option<(usize, u32)>>,
}

/// What the caller of a change sees when the change happened but its reply was lost.
fn lost_reply(op: &str) -> ProviderError {
    ProviderError::Transient(format!(
        "connection reset: the {op} happened, its reply was lost"
    ))
}

/// Where a held operation stops.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HoldPoint {
    /// Before it does anything: the remote is still as before.
    Before,
    /// After the change was made, before its reply goes back.
    Applied,
}

struct HoldState {
    op: &'static str,
    point: HoldPoint,
    /// Taken by the first call of `op` that reaches `point`.
    taken: AtomicBool,
    reached: AtomicBool,
    release: tokio::sync::Semaphore,
    lose_reply: AtomicBool,
}

/// One call of an operation stopped at a point until the test lets it go: the test
/// decides exactly what happens in the mount while, say, an upload has landed but its
/// reply has not come back.
pub struct Hold(Arc<HoldState>);

impl Hold {
    /// Wait (blocking, from a test thread) until a call is stopped here.
    pub fn wait_reached(&self, timeout: Duration) -> bool {
        let deadline = std::time::Instant::now() + timeout;
        while !self.0.reached.load(Ordering::SeqCst) {
            if std::time::Instant::now() > deadline {
                return false;
            }
            std::thread::sleep(Duration::from_millis(2));
        }
        true
    }

    /// Let the call go on.
    pub fn release(&self) {
        self.0.release.add_permits(1);
    }

    /// Let it go on, and have its caller see a network error although the change was
    /// made (with `HoldPoint::Applied`).
    pub fn release_losing_reply(&self) {
        self.0.lose_reply.store(true, Ordering::SeqCst);
        self.release();
    }
}

/// Seeded random faults: a call fails before it does anything, or (for changes) does
/// it and then loses its reply, so the caller cannot tell which happened.
struct Chaos {
    rng: rand::rngs::StdRng,
    fail_rate: f64,
    lost_reply_rate: f64,
    injected: u64,
}

impl MemoryProvider {
    pub fn new() -> Self {
        let p = MemoryProvider::default();
        p.page_size.store(3, Ordering::Relaxed);
        p.nodes.lock().unwrap().insert(
            "/".into(),
            Node {
                kind: EntryKind::Dir,
                data: vec![],
                mtime: SystemTime::now(),
                revision: 0,
                mode: 0o755,
                target: None,
            },
        );
        p
    }

    pub fn set_offline(&self, offline: bool) {
        self.offline.store(offline, Ordering::SeqCst);
    }

    pub fn set_latency(&self, latency: Duration) {
        self.latency_ms
            .store(latency.as_millis() as u64, Ordering::SeqCst);
    }

    /// Let the next upload succeed on the "server" while the client sees a network error.
    pub fn lose_next_upload_reply(&self) {
        self.lose_upload_reply.store(true, Ordering::SeqCst);
    }

    /// From now on, each call fails up front with probability `fail_rate`, and each change
    /// that succeeded is reported as a network error with probability `lost_reply_rate`.
    /// `None` turns the faults off. Returns how many faults were injected so far.
    pub fn set_chaos(&self, chaos: Option<(u64, f64, f64)>) -> u64 {
        use rand::SeedableRng;
        let mut c = self.chaos.lock().unwrap();
        let before = c.as_ref().map_or(0, |c| c.injected);
        *c = chaos.map(|(seed, fail_rate, lost_reply_rate)| Chaos {
            rng: rand::rngs::StdRng::seed_from_u64(seed),
            fail_rate,
            lost_reply_rate,
            injected: before,
        });
        before
    }

    fn roll(&self, pick: impl Fn(&Chaos) -> f64) -> bool {
        use rand::Rng;
        let mut c = self.chaos.lock().unwrap();
        let Some(c) = c.as_mut() else { return false };
        let rate = pick(c);
        let hit = rate > 0.0 && c.rng.random_bool(rate.min(1.0));
        c.injected += hit as u64;
        hit
    }

    /// A change's reply on its way back: lost on demand or by chance.
    fn reply<T>(&self, op: &str, result: ProviderResult<T>) -> ProviderResult<T> {
        let Ok(value) = result else {
            return result;
        };
        let forced = op == "upload" && self.lose_upload_reply.swap(false, Ordering::SeqCst);
        if forced || self.roll(|c| c.lost_reply_rate) {
            return Err(lost_reply(op));
        }
        Ok(value)
    }

    /// Stop the next call of `op` ("upload", "rename", "delete", "mkdir", ...) at `point`.
    pub fn hold(&self, op: &'static str, point: HoldPoint) -> Hold {
        let state = Arc::new(HoldState {
            op,
            point,
            taken: AtomicBool::new(false),
            reached: AtomicBool::new(false),
            release: tokio::sync::Semaphore::new(0),
            lose_reply: AtomicBool::new(false),
        });
        self.holds.lock().unwrap().push(Arc::clone(&state));
        Hold(state)
    }

    /// Stop here if a hold is waiting for this call; returns whether its reply is to be
    /// lost.
    async fn held(&self, op: &str, point: HoldPoint) -> bool {
        let hold = {
            let mut holds = self.holds.lock().unwrap();
            let i = holds
                .iter()
                .position(|h| h.op == op && h.point == point && !h.taken.load(Ordering::SeqCst));
            i.map(|i| holds.remove(i))
        };
        let Some(hold) = hold else { return false };
        hold.taken.store(true, Ordering::SeqCst);
        hold.reached.store(true, Ordering::SeqCst);
        if let Ok(permit) = hold.release.acquire().await {
            permit.forget();
        }
        hold.lose_reply.load(Ordering::SeqCst)
    }

    /// A change's reply, after any hold at `Applied`.
    async fn answer<T>(&self, op: &'static str, result: ProviderResult<T>) -> ProviderResult<T> {
        if result.is_ok() && self.held(op, HoldPoint::Applied).await {
            return Err(lost_reply(op));
        }
        self.reply(op, result)
    }

    /// The next listing stops after the entry `name`, complete-looking: what
    /// `rclone serve webdav` answers when a file goes away while it lists a folder.
    pub fn cut_next_listing_after(&self, name: &str) {
        *self.cut_listing_after.lock().unwrap() = Some(name.to_owned());
    }

    /// The bodies of the next `reads` reads break off after `n` bytes with a network
    /// error, as when a connection drops while a download streams.
    pub fn cut_next_reads_after(&self, n: usize, reads: u32) {
        *self.cut_reads.lock().unwrap() = (reads > 0).then_some((n, reads));
    }

    pub fn inject_error(&self, err: ProviderError) {
        self.injected.lock().unwrap().push(err);
    }

    /// How many times `op` ("list", "stat", "read_range", "upload", ...) was called.
    pub fn calls(&self, op: &str) -> u64 {
        self.calls.lock().unwrap().get(op).copied().unwrap_or(0)
    }

    pub fn total_calls(&self) -> u64 {
        self.calls.lock().unwrap().values().sum()
    }

    /// Change a file directly "on the server", as another client would.
    pub fn put_remote(&self, path: &str, data: &[u8]) {
        let rev = self.bump();
        let mut nodes = self.nodes.lock().unwrap();
        nodes.insert(
            path.to_string(),
            Node {
                kind: EntryKind::File,
                data: data.to_vec(),
                mtime: SystemTime::now(),
                revision: rev,
                mode: 0o644,
                target: None,
            },
        );
    }

    pub fn mkdir_remote(&self, path: &str) {
        let rev = self.bump();
        self.nodes.lock().unwrap().insert(
            path.to_string(),
            Node {
                kind: EntryKind::Dir,
                data: vec![],
                mtime: SystemTime::now(),
                revision: rev,
                mode: 0o755,
                target: None,
            },
        );
    }

    pub fn get_remote(&self, path: &str) -> Option<Vec<u8>> {
        self.nodes
            .lock()
            .unwrap()
            .get(path)
            .filter(|n| n.kind == EntryKind::File)
            .map(|n| n.data.clone())
    }

    pub fn exists_remote(&self, path: &str) -> bool {
        self.nodes.lock().unwrap().contains_key(path)
    }

    /// The permission bits the remote keeps for `path`.
    pub fn mode_remote(&self, path: &str) -> Option<u32> {
        self.nodes.lock().unwrap().get(path).map(|n| n.mode)
    }

    /// The target of the symbolic link at `path`, if that is one.
    pub fn link_remote(&self, path: &str) -> Option<String> {
        self.nodes
            .lock()
            .unwrap()
            .get(path)
            .and_then(|n| n.target.clone())
    }

    /// Every path below the root, sorted.
    pub fn paths(&self) -> Vec<String> {
        self.nodes
            .lock()
            .unwrap()
            .keys()
            .filter(|k| k.as_str() != "/")
            .cloned()
            .collect()
    }

    fn bump(&self) -> u64 {
        self.next_revision.fetch_add(1, Ordering::SeqCst) + 1
    }

    async fn enter(&self, op: &'static str) -> ProviderResult<()> {
        *self.calls.lock().unwrap().entry(op).or_default() += 1;
        self.held(op, HoldPoint::Before).await;
        let latency = self.latency_ms.load(Ordering::SeqCst);
        if latency > 0 {
            tokio::time::sleep(Duration::from_millis(latency)).await;
        }
        if self.offline.load(Ordering::SeqCst) {
            return Err(ProviderError::Transient("provider offline".into()));
        }
        {
            let mut injected = self.injected.lock().unwrap();
            if !injected.is_empty() {
                return Err(injected.remove(0));
            }
        }
        if self.roll(|c| c.fail_rate) {
            return Err(ProviderError::Transient(format!("{op}: injected failure")));
        }
        Ok(())
    }

    fn entry(path: &str, node: &Node) -> RemoteEntry {
        RemoteEntry {
            id: path.to_string(),
            name: split_path(path).1.to_string(),
            kind: node.kind,
            size: node.data.len() as u64,
            mtime: node.mtime,
            revision: node.revision.to_string(),
            hash: None,
            mode: Some(node.mode),
            symlink_target: node.target.clone(),
        }
    }

    fn require_parent_dir(nodes: &BTreeMap<String, Node>, path: &str) -> ProviderResult<()> {
        let (parent, name) = split_path(path);
        if name.is_empty() || name.contains('\0') {
            return Err(ProviderError::InvalidName(path.to_string()));
        }
        match nodes.get(parent) {
            Some(n) if n.kind == EntryKind::Dir => Ok(()),
            Some(_) => Err(ProviderError::NotADirectory(parent.to_string())),
            None => Err(ProviderError::NotFound(parent.to_string())),
        }
    }

    fn children<'n>(nodes: &'n BTreeMap<String, Node>, dir: &str) -> Vec<(&'n String, &'n Node)> {
        nodes
            .iter()
            .filter(|(k, _)| k.as_str() != "/" && split_path(k).0 == dir)
            .collect()
    }
}

/// The operations themselves; the `Provider` methods add lost replies on top.
impl MemoryProvider {
    async fn upload_inner(
        &self,
        path: &str,
        source: &Path,
        options: &UploadOptions,
    ) -> ProviderResult<RemoteEntry> {
        self.enter("upload").await?;
        let data = tokio::fs::read(source).await?;
        let rev = self.bump();
        let mut nodes = self.nodes.lock().unwrap();
        Self::require_parent_dir(&nodes, path)?;
        if let Some(expected) = &options.expected_revision {
            let current = nodes.get(path).map(|n| n.revision.to_string());
            if &current != expected {
                return Err(ProviderError::PreconditionFailed(path.to_string()));
            }
        }
        if let Some(n) = nodes.get(path) {
            if n.kind == EntryKind::Dir {
                return Err(ProviderError::IsADirectory(path.to_string()));
            }
        }
        let node = Node {
            kind: EntryKind::File,
            data,
            mtime: options.mtime.unwrap_or_else(SystemTime::now),
            revision: rev,
            mode: options.mode.unwrap_or(0o644),
            target: None,
        };
        let entry = Self::entry(path, &node);
        nodes.insert(path.to_string(), node);
        Ok(entry)
    }

    async fn mkdir_inner(&self, path: &str) -> ProviderResult<RemoteEntry> {
        self.enter("mkdir").await?;
        let rev = self.bump();
        let mut nodes = self.nodes.lock().unwrap();
        Self::require_parent_dir(&nodes, path)?;
        if nodes.contains_key(path) {
            return Err(ProviderError::AlreadyExists(path.to_string()));
        }
        let node = Node {
            kind: EntryKind::Dir,
            data: vec![],
            mtime: SystemTime::now(),
            revision: rev,
            mode: 0o755,
            target: None,
        };
        let entry = Self::entry(path, &node);
        nodes.insert(path.to_string(), node);
        Ok(entry)
    }

    async fn rename_inner(
        &self,
        from: &str,
        to: &str,
        overwrite: bool,
    ) -> ProviderResult<RemoteEntry> {
        self.enter("rename").await?;
        let mut nodes = self.nodes.lock().unwrap();
        let src = nodes
            .get(from)
            .cloned()
            .ok_or_else(|| ProviderError::NotFound(from.to_string()))?;
        Self::require_parent_dir(&nodes, to)?;
        if is_same_or_below(to, from) && to != from {
            return Err(ProviderError::InvalidName(to.to_string()));
        }
        if let Some(dst) = nodes.get(to) {
            if !overwrite {
                return Err(ProviderError::AlreadyExists(to.to_string()));
            }
            if dst.kind == EntryKind::Dir {
                if src.kind != EntryKind::Dir {
                    return Err(ProviderError::IsADirectory(to.to_string()));
                }
                if !Self::children(&nodes, to).is_empty() {
                    return Err(ProviderError::DirectoryNotEmpty(to.to_string()));
                }
            } else if src.kind == EntryKind::Dir {
                return Err(ProviderError::NotADirectory(to.to_string()));
            }
        }
        let moved: Vec<String> = nodes
            .keys()
            .filter(|k| is_same_or_below(k, from))
            .cloned()
            .collect();
        for old in moved {
            let node = nodes.remove(&old).expect("listed above");
            let new = format!("{to}{}", &old[from.len()..]);
            nodes.insert(new, node);
        }
        Ok(Self::entry(to, &nodes[to]))
    }

    async fn delete_inner(&self, path: &str) -> ProviderResult<()> {
        self.enter("delete").await?;
        let mut nodes = self.nodes.lock().unwrap();
        let node = nodes
            .get(path)
            .ok_or_else(|| ProviderError::NotFound(path.to_string()))?;
        if node.kind == EntryKind::Dir && !Self::children(&nodes, path).is_empty() {
            return Err(ProviderError::DirectoryNotEmpty(path.to_string()));
        }
        nodes.remove(path);
        Ok(())
    }

    async fn copy_inner(&self, from: &str, to: &str) -> ProviderResult<RemoteEntry> {
        self.enter("copy").await?;
        let rev = self.bump();
        let mut nodes = self.nodes.lock().unwrap();
        let mut node = nodes
            .get(from)
            .cloned()
            .ok_or_else(|| ProviderError::NotFound(from.to_string()))?;
        // Like every other provider: a server-side copy is of a file.
        if node.kind == EntryKind::Dir {
            return Err(ProviderError::IsADirectory(from.to_string()));
        }
        // Like a server that creates intermediate folders on copy.
        let mut ancestors = vec![];
        let mut dir = split_path(to).0;
        while dir != "/" && !nodes.contains_key(dir) {
            ancestors.push(dir.to_string());
            dir = split_path(dir).0;
        }
        for a in ancestors {
            nodes.insert(
                a,
                Node {
                    kind: EntryKind::Dir,
                    data: vec![],
                    mtime: SystemTime::now(),
                    revision: rev,
                    mode: 0o755,
                    target: None,
                },
            );
        }
        node.revision = rev;
        let entry = Self::entry(to, &node);
        nodes.insert(to.to_string(), node);
        Ok(entry)
    }

    async fn symlink_inner(&self, path: &str, target: &str) -> ProviderResult<RemoteEntry> {
        self.enter("symlink").await?;
        let rev = self.bump();
        let mut nodes = self.nodes.lock().unwrap();
        Self::require_parent_dir(&nodes, path)?;
        if nodes.contains_key(path) {
            return Err(ProviderError::AlreadyExists(path.to_string()));
        }
        let node = Node {
            kind: EntryKind::Symlink,
            data: target.as_bytes().to_vec(),
            mtime: SystemTime::now(),
            revision: rev,
            mode: 0o777,
            target: Some(target.to_string()),
        };
        let entry = Self::entry(path, &node);
        nodes.insert(path.to_string(), node);
        Ok(entry)
    }
}

#[async_trait]
impl Provider for MemoryProvider {
    fn kind(&self) -> &'static str {
        "memory"
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities {
            symlinks: true,
            unix_attrs: true,
            ..Capabilities::default()
        }
    }

    fn list<'a>(&'a self, dir: &'a str) -> ListStream<'a> {
        let fut = async move {
            self.enter("list").await?;
            let nodes = self.nodes.lock().unwrap();
            match nodes.get(dir) {
                Some(n) if n.kind == EntryKind::Dir => {}
                Some(_) => return Err(ProviderError::NotADirectory(dir.to_string())),
                None => return Err(ProviderError::NotFound(dir.to_string())),
            }
            let mut entries: Vec<RemoteEntry> = Self::children(&nodes, dir)
                .into_iter()
                .map(|(k, n)| Self::entry(k, n))
                .collect();
            if let Some(after) = self.cut_listing_after.lock().unwrap().take() {
                if let Some(i) = entries.iter().position(|e| e.name == after) {
                    entries.truncate(i + 1);
                }
            }
            Ok(entries)
        };
        let page = self.page_size.load(Ordering::Relaxed).max(1) as usize;
        futures::stream::once(fut)
            .flat_map(move |res| {
                let pages: Vec<ProviderResult<Vec<RemoteEntry>>> = match res {
                    Ok(all) if all.is_empty() => vec![Ok(vec![])],
                    Ok(all) => all.chunks(page).map(|c| Ok(c.to_vec())).collect(),
                    Err(e) => vec![Err(e)],
                };
                futures::stream::iter(pages)
            })
            .boxed()
    }

    async fn stat(&self, path: &str) -> ProviderResult<RemoteEntry> {
        self.enter("stat").await?;
        let nodes = self.nodes.lock().unwrap();
        nodes
            .get(path)
            .map(|n| Self::entry(path, n))
            .ok_or_else(|| ProviderError::NotFound(path.to_string()))
    }

    async fn read_range(
        &self,
        path: &str,
        revision: Option<&str>,
        offset: u64,
        len: u64,
    ) -> ProviderResult<ByteStream> {
        self.enter("read_range").await?;
        let nodes = self.nodes.lock().unwrap();
        let node = nodes
            .get(path)
            .ok_or_else(|| ProviderError::NotFound(path.to_string()))?;
        if node.kind == EntryKind::Dir {
            return Err(ProviderError::IsADirectory(path.to_string()));
        }
        if let Some(rev) = revision {
            if rev != node.revision.to_string() {
                return Err(ProviderError::PreconditionFailed(path.to_string()));
            }
        }
        let start = (offset as usize).min(node.data.len());
        let end = (offset.saturating_add(len) as usize).min(node.data.len());
        let data = Bytes::copy_from_slice(&node.data[start..end]);
        let cut = {
            let mut c = self.cut_reads.lock().unwrap();
            let cut = c.map(|(n, _)| n);
            *c = c.and_then(|(n, left)| (left > 1).then_some((n, left - 1)));
            cut
        };
        if let Some(n) = cut {
            let n = n.min(data.len());
            return Ok(futures::stream::iter(vec![
                Ok(data.slice(..n)),
                Err(ProviderError::Transient(
                    "connection reset while the body streamed".into(),
                )),
            ])
            .boxed());
        }
        Ok(futures::stream::iter(vec![Ok(data)]).boxed())
    }

    async fn upload(
        &self,
        path: &str,
        source: &Path,
        options: &UploadOptions,
    ) -> ProviderResult<RemoteEntry> {
        let result = self.upload_inner(path, source, options).await;
        self.answer("upload", result).await
    }

    async fn mkdir(&self, path: &str) -> ProviderResult<RemoteEntry> {
        let result = self.mkdir_inner(path).await;
        self.answer("mkdir", result).await
    }

    async fn rename(&self, from: &str, to: &str, overwrite: bool) -> ProviderResult<RemoteEntry> {
        let result = self.rename_inner(from, to, overwrite).await;
        self.answer("rename", result).await
    }

    async fn delete(&self, path: &str) -> ProviderResult<()> {
        let result = self.delete_inner(path).await;
        self.answer("delete", result).await
    }

    async fn copy(&self, from: &str, to: &str) -> ProviderResult<RemoteEntry> {
        let result = self.copy_inner(from, to).await;
        self.answer("copy", result).await
    }

    async fn quota(&self) -> ProviderResult<Quota> {
        self.enter("quota").await?;
        let used: u64 = self
            .nodes
            .lock()
            .unwrap()
            .values()
            .map(|n| n.data.len() as u64)
            .sum();
        let total = 1u64 << 40;
        Ok(Quota {
            total: Some(total),
            used: Some(used),
            available: Some(total - used),
        })
    }

    async fn symlink(&self, path: &str, target: &str) -> ProviderResult<RemoteEntry> {
        let result = self.symlink_inner(path, target).await;
        self.answer("symlink", result).await
    }

    async fn set_mode(&self, path: &str, mode: u32) -> ProviderResult<()> {
        self.enter("set_mode").await?;
        let mut nodes = self.nodes.lock().unwrap();
        let node = nodes
            .get_mut(path)
            .ok_or_else(|| ProviderError::NotFound(path.to_string()))?;
        node.mode = mode & 0o7777;
        Ok(())
    }
}
