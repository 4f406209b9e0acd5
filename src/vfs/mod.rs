//! Filesystem logic for one connection, independent of FUSE.
//!
//! `Vfs` answers namespace and data operations from the metadata store and the chunk
//! cache, and turns local changes into write-back jobs. The FUSE adapter only translates
//! kernel requests into these calls; tests can drive them directly.

mod error;
mod executor;
mod io;
mod links;
mod listing;
mod offline;
mod poll;
pub mod symlink_file;

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

pub use error::{FsError, FsResult};
pub use executor::{conflict_name, VfsExecutor};
pub use offline::PinProgress;

use crate::cache::{ChunkCache, Source};
use crate::metadata::{
    Batch, Ino, Inode, RemoteState, Special, SpecialKind, Store, ROOT_LOCAL_INO,
};
use crate::provider::{join_path, EntryKind, Provider, Quota};
use crate::versions::Versions;
use crate::writeback::WriteBackQueue;

/// The largest file cloudmount stores (what ext4, the usual cache filesystem, allows).
pub const MAX_FILE_SIZE: u64 = 16 << 40;

/// Names cloudmount keeps for itself at the top of every connection.
pub const RESERVED_NAMES: &[&str] = &[crate::versions::VERSIONS_DIR, ".cloudmount-tmp"];
/// Folders with more entries than this are not scanned for names differing only in case
/// (see `Vfs::check_case_twin`).
const CASE_TWIN_SCAN_MAX: usize = 10_000;

#[derive(Debug, Clone)]
pub struct VfsConfig {
    /// How long a directory listing is trusted before it is fetched again.
    pub dir_ttl: Duration,
    pub read_only: bool,
    /// Owner of every file (the mounting user).
    pub uid: u32,
    pub gid: u32,
    pub readahead_max: u64,
    pub versions_to_keep: usize,
}

impl Default for VfsConfig {
    fn default() -> Self {
        VfsConfig {
            dir_ttl: Duration::from_secs(60),
            read_only: false,
            uid: nix::unistd::getuid().as_raw(),
            gid: nix::unistd::getgid().as_raw(),
            readahead_max: 64 << 20,
            versions_to_keep: 30,
        }
    }
}

/// Attributes of a file, in the filesystem layer's own terms.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Attr {
    pub ino: Ino,
    pub kind: EntryKind,
    /// Set for FIFOs, sockets and device nodes (whose `kind` is `File`).
    pub special: Option<Special>,
    pub size: u64,
    pub perm: u16,
    pub nlink: u32,
    pub uid: u32,
    pub gid: u32,
    pub atime: SystemTime,
    pub mtime: SystemTime,
    pub ctime: SystemTime,
}

#[derive(Debug, Default, Clone)]
pub struct SetAttr {
    pub mode: Option<u32>,
    pub uid: Option<u32>,
    pub gid: Option<u32>,
    pub size: Option<u64>,
    pub atime: Option<TimeSpec>,
    pub mtime: Option<TimeSpec>,
}

#[derive(Debug, Clone, Copy)]
pub enum TimeSpec {
    Now,
    At(SystemTime),
}

/// Pushes invalidations into the kernel's caches (implemented by the FUSE adapter).
pub trait KernelNotifier: Send + Sync {
    fn inval_inode(&self, ino: Ino);
    fn inval_entry(&self, parent: Ino, name: &str);
    /// `inval_inode`, then `done` once the kernel has dropped its attributes and pages of
    /// the inode. For changes made outside a FUSE request (the CLI), whose caller may read
    /// the file at once: until the kernel processed the invalidation it may still use the
    /// old size, and a read would return the new bytes padded with zeros to it.
    fn inval_inode_then(&self, ino: Ino, done: tokio::sync::oneshot::Sender<()>) {
        self.inval_inode(ino);
        let _ = done.send(());
    }
}

pub use crate::provider::instrumented::ConnectionState;
use crate::provider::instrumented::Health;

struct Handle {
    ino: Ino,
    writable: bool,
    /// Where the next sequential read would start, and the current read-ahead window.
    next_offset: u64,
    window: u64,
}

#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct ConflictRecord {
    pub path: String,
    pub conflict_copy: String,
    pub at: SystemTime,
}

pub struct Vfs {
    pub name: String,
    pub provider: Arc<dyn Provider>,
    pub store: Store,
    pub cache: Arc<ChunkCache>,
    pub queue: Arc<WriteBackQueue>,
    pub versions: Versions,
    pub config: VfsConfig,
    staging: PathBuf,
    /// Serializes namespace changes, which touch several records at once.
    ns_lock: tokio::sync::Mutex<()>,
    /// Guards read-modify-write of single inode records.
    record_locks: Vec<Mutex<()>>,
    handles: Mutex<HashMap<u64, Handle>>,
    next_handle: AtomicU64,
    open_counts: Mutex<HashMap<Ino, u32>>,
    lookups: Mutex<HashMap<Ino, u64>>,
    /// Unlinked inodes still open or known to the kernel.
    orphans: Mutex<HashSet<Ino>>,
    /// Inodes whose remote content changed since the kernel last cached their pages.
    stale_pages: Mutex<HashSet<Ino>>,
    listing_locks: Mutex<HashMap<Ino, Arc<tokio::sync::Mutex<()>>>>,
    notifier: Mutex<Option<Arc<dyn KernelNotifier>>>,
    /// The connection's health, kept by the instrumented provider wrapper.
    health: Arc<Health>,
    quota_cache: Mutex<Option<(SystemTime, Quota)>>,
    conflicts: Mutex<Vec<ConflictRecord>>,
    pub pin_progress: Mutex<PinProgress>,
    /// Files whose next open must bypass the kernel's page cache (see io.rs).
    direct_io: Mutex<HashSet<Ino>>,
    /// When the whole tree was last seen unchanged (providers whose directory revisions
    /// propagate to the root): every listing taken before is still good then.
    tree_verified: Mutex<Option<SystemTime>>,
    /// Hard links: which name records belong to which file (see links.rs).
    links: Mutex<links::LinkTable>,
}

fn now() -> SystemTime {
    SystemTime::now()
}

impl Vfs {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        name: String,
        provider: Arc<dyn Provider>,
        store: Store,
        cache: Arc<ChunkCache>,
        queue: Arc<WriteBackQueue>,
        staging: PathBuf,
        config: VfsConfig,
        health: Arc<Health>,
    ) -> FsResult<Arc<Self>> {
        std::fs::create_dir_all(&staging)?;
        let store_for_links = store.clone();
        let conflicts = store
            .get_meta("conflicts")?
            .and_then(|b| serde_json::from_slice(&b).ok())
            .unwrap_or_default();
        let vfs = Vfs {
            name,
            versions: Versions::new(Arc::clone(&provider), config.versions_to_keep),
            provider,
            store,
            cache,
            queue,
            config,
            staging,
            ns_lock: tokio::sync::Mutex::new(()),
            record_locks: (0..64).map(|_| Mutex::new(())).collect(),
            handles: Mutex::new(HashMap::new()),
            next_handle: AtomicU64::new(1),
            open_counts: Mutex::new(HashMap::new()),
            lookups: Mutex::new(HashMap::new()),
            orphans: Mutex::new(HashSet::new()),
            stale_pages: Mutex::new(HashSet::new()),
            listing_locks: Mutex::new(HashMap::new()),
            notifier: Mutex::new(None),
            health,
            quota_cache: Mutex::new(None),
            conflicts: Mutex::new(conflicts),
            pin_progress: Mutex::new(PinProgress::default()),
            direct_io: Mutex::new(HashSet::new()),
            tree_verified: Mutex::new(None),
            links: Mutex::new(links::LinkTable::load(&store_for_links)?),
        };
        vfs.init_root()?;
        vfs.restore_links()?;
        vfs.purge_orphans_from_last_run()?;
        Ok(Arc::new(vfs))
    }

    fn init_root(&self) -> FsResult<()> {
        if self.store.get(ROOT_LOCAL_INO)?.is_none() {
            let t = now();
            self.store.put(&Inode {
                ino: ROOT_LOCAL_INO,
                parent: ROOT_LOCAL_INO,
                name: String::new(),
                kind: EntryKind::Dir,
                size: 0,
                mtime: t,
                atime: t,
                ctime: t,
                perm: 0o755,
                uid: self.config.uid,
                gid: self.config.gid,
                symlink_target: None,
                remote: Some(RemoteState {
                    path: "/".into(),
                    revision: String::new(),
                    id: "/".into(),
                }),
                dirty: false,
                base_revision: None,
                listed_at: None,
                hash: None,
                generation: 0,
                conflict: None,
                upload_error: None,
                special: None,
                subdirs: None,
            })?;
        }
        Ok(())
    }

    /// Unlinked-but-open files of a previous run are gone for good once it has ended.
    fn purge_orphans_from_last_run(&self) -> FsResult<()> {
        let busy = self.queue.busy_inodes();
        let mut doomed = Vec::new();
        for inode in self.store.all_inodes() {
            let inode = inode?;
            // (A hard-linked file without a name of its own still has its other names.)
            let has_names = !self.extra_names(inode.ino).is_empty();
            if inode.parent == 0 && !busy.contains(&inode.ino) && !has_names {
                doomed.push(inode.ino);
            }
        }
        for ino in doomed {
            self.links.lock().unwrap().remove(ino);
            let mut b = Batch::default();
            b.remove_inode(ino);
            self.store.apply(b)?;
            self.cache.remove(ino);
        }
        Ok(())
    }

    /// Start working the write-back queue in the background.
    pub fn start_writeback(self: &Arc<Self>) -> tokio::task::JoinHandle<()> {
        let executor = Arc::new(VfsExecutor(Arc::downgrade(self)));
        tokio::spawn(Arc::clone(&self.queue).run(executor))
    }

    pub fn set_notifier(&self, n: Arc<dyn KernelNotifier>) {
        *self.notifier.lock().unwrap() = Some(n);
    }

    fn notify_inode(&self, ino: Ino) {
        if let Some(n) = self.notifier.lock().unwrap().clone() {
            n.inval_inode(ino);
        }
    }

    /// `notify_inode`, returning once the kernel processed it (see
    /// [`KernelNotifier::inval_inode_then`]). Never from inside a FUSE request on `ino`:
    /// the kernel may wait for that request before it takes the invalidation.
    async fn notify_inode_and_wait(&self, ino: Ino) {
        let notifier = self.notifier.lock().unwrap().clone();
        if let Some(n) = notifier {
            let (done, processed) = tokio::sync::oneshot::channel();
            n.inval_inode_then(ino, done);
            // Bounded: a kernel that does not take it (unmounting) must not hang the caller.
            let _ = tokio::time::timeout(Duration::from_secs(5), processed).await;
        }
    }

    fn notify_entry(&self, parent: Ino, name: &str) {
        if let Some(n) = self.notifier.lock().unwrap().clone() {
            n.inval_entry(parent, name);
        }
    }

    pub fn connection_state(&self) -> (ConnectionState, Option<String>) {
        self.health.get()
    }

    pub fn conflicts(&self) -> Vec<ConflictRecord> {
        self.conflicts.lock().unwrap().clone()
    }

    fn record_conflict(&self, rec: ConflictRecord) {
        let mut c = self.conflicts.lock().unwrap();
        c.push(rec);
        if c.len() > 100 {
            c.remove(0);
        }
        if let Ok(bytes) = serde_json::to_vec(&*c) {
            let _ = self.store.set_meta("conflicts", &bytes);
        }
    }

    // ---------------------------------------------------------------------------------
    // Records

    pub fn get(&self, ino: Ino) -> FsResult<Inode> {
        self.store.get(ino)?.ok_or(FsError::NotFound)
    }

    /// Hold the record locks of several inodes (in a fixed order, so two callers cannot
    /// deadlock), for a change that rewrites their records: an upload finishing meanwhile
    /// must not have its result overwritten by a copy read before it.
    fn lock_records(&self, inos: &[Ino]) -> Vec<std::sync::MutexGuard<'_, ()>> {
        let mut stripes: Vec<usize> = inos.iter().map(|i| (i % 64) as usize).collect();
        stripes.sort_unstable();
        stripes.dedup();
        stripes
            .into_iter()
            .map(|s| self.record_locks[s].lock().unwrap())
            .collect()
    }

    /// Read-modify-write of one inode record.
    fn update(&self, ino: Ino, f: impl FnOnce(&mut Inode)) -> FsResult<Inode> {
        let _g = self.record_locks[(ino % 64) as usize].lock().unwrap();
        let mut inode = self.get(ino)?;
        f(&mut inode);
        self.store.put(&inode)?;
        Ok(inode)
    }

    pub fn attr_of(&self, inode: &Inode) -> Attr {
        Attr {
            ino: inode.ino,
            kind: inode.kind,
            special: inode.special,
            size: match inode.kind {
                EntryKind::Symlink => inode.symlink_target.as_ref().map_or(0, |t| t.len() as u64),
                _ if inode.special.is_some() => 0,
                _ => inode.size,
            },
            perm: inode.perm,
            // A folder: 2 + its subfolders. Not listed yet, that is not known: 1, which
            // tells programs (find's leaf optimisation) that the count is not kept,
            // rather than 2, which would say there are none.
            nlink: if inode.is_dir() {
                inode.subdirs.map_or(1, |n| 2 + n)
            } else {
                // 1, or with hard links the number of names; 0 once unlinked.
                self.name_count(inode)
            },
            uid: inode.uid,
            gid: inode.gid,
            atime: inode.atime,
            mtime: inode.mtime,
            ctime: inode.ctime,
        }
    }

    /// The path of an inode in the mounted tree ("/a/b"), or None once unlinked.
    pub fn path_of(&self, ino: Ino) -> FsResult<Option<String>> {
        let mut parts = Vec::new();
        let mut cur = self.get(ino)?;
        while cur.ino != ROOT_LOCAL_INO {
            if cur.parent == 0 {
                return Ok(None);
            }
            parts.push(cur.name.clone());
            cur = self.get(cur.parent)?;
        }
        let mut path = String::from("/");
        for (i, p) in parts.iter().rev().enumerate() {
            if i > 0 {
                path.push('/');
            }
            path.push_str(p);
        }
        Ok(Some(path))
    }

    fn child_path(&self, parent: Ino, name: &str) -> FsResult<String> {
        let dir = self.path_of(parent)?.ok_or(FsError::NotFound)?;
        Ok(join_path(&dir, name))
    }

    async fn check_name(&self, parent: Ino, name: &str) -> FsResult<()> {
        let caps = self.provider.capabilities();
        if name.len() > caps.max_name_len.min(255) {
            return Err(FsError::NameTooLong);
        }
        if name.is_empty() || name == "." || name == ".." || name.contains('/') {
            return Err(FsError::Invalid(name.to_string()));
        }
        if let Some(c) = name.chars().find(|c| caps.forbidden_chars.contains(c)) {
            return Err(FsError::Invalid(format!(
                "{name:?}: the provider does not allow {c:?} in names"
            )));
        }
        if let Some(why) = self.provider.refuses_name(name) {
            return Err(FsError::Invalid(why));
        }
        if parent == ROOT_LOCAL_INO && RESERVED_NAMES.contains(&name) {
            return Err(FsError::NotPermitted(format!(
                "{name} is reserved for cloudmount's own use"
            )));
        }
        self.check_not_fixed(parent).await?;
        self.check_path_len(parent, name, 0)
    }

    /// On a provider whose names ignore case, a name that differs only in case from another
    /// entry of the folder (other than `except`, the entry being renamed) could not exist on
    /// the remote beside it: EEXIST now, as the remote would answer, instead of an upload
    /// that lands on the other file.
    ///
    /// It reads the folder's entries (a store scan): in a folder of more than
    /// [`CASE_TWIN_SCAN_MAX`] entries the remote's own refusal decides instead (the upload
    /// then keeps its content as a conflict copy), so that filling a huge folder does not
    /// cost the square of its size.
    fn check_case_twin(&self, parent: Ino, name: &str, except: Option<Ino>) -> FsResult<()> {
        if !self.provider.capabilities().case_insensitive {
            return Ok(());
        }
        let children = self.store.children(parent)?;
        if children.len() > CASE_TWIN_SCAN_MAX {
            return Ok(());
        }
        let folded = crate::provider::fold_case(name);
        for (other, ino) in children {
            if other != name
                && Some(ino) != except
                && crate::provider::fold_case(&other) == folded
                // FIFOs, sockets and devices never reach the remote.
                && self.get(ino)?.special.is_none()
            {
                tracing::debug!(name, other = %other, "refused: the names differ only in case");
                return Err(FsError::Exists);
            }
        }
        Ok(())
    }

    /// Entries of a folder of the provider's fixed layout (the list of an account's drives)
    /// cannot be created, renamed or removed: refused here, before anything is queued.
    async fn check_not_fixed(&self, parent: Ino) -> FsResult<()> {
        if let Some(dir) = self.path_of(parent)? {
            if let Some(reason) = self.provider.fixed_folder(&dir).await {
                return Err(FsError::Access(reason));
            }
        }
        Ok(())
    }

    /// A new entry `name` in `parent`, with descendants up to `below` bytes deeper (a
    /// directory being moved), must have a remote path the provider accepts: otherwise
    /// ENAMETOOLONG now, rather than a queued job that can never land.
    fn check_path_len(&self, parent: Ino, name: &str, below: usize) -> FsResult<()> {
        let max = self.provider.capabilities().max_path_len;
        let Some(dir) = self.path_of(parent)? else {
            return Err(FsError::NotFound);
        };
        if join_path(&dir, name).len() + below > max {
            return Err(FsError::NameTooLong);
        }
        Ok(())
    }

    /// How many bytes the deepest path below `ino` adds to its own path.
    fn depth_below(&self, ino: Ino) -> FsResult<usize> {
        let mut deepest = 0;
        let mut todo = vec![(ino, 0usize)];
        while let Some((i, len)) = todo.pop() {
            deepest = deepest.max(len);
            if self.get(i)?.is_dir() {
                for (name, child) in self.store.children(i)? {
                    todo.push((child, len + 1 + name.len()));
                }
            }
        }
        Ok(deepest)
    }

    fn writable(&self) -> FsResult<()> {
        if self.config.read_only {
            Err(FsError::ReadOnly)
        } else {
            Ok(())
        }
    }

    /// Whether the remote has (or is about to have) this entry.
    fn on_remote(&self, inode: &Inode) -> bool {
        inode.remote.is_some() || self.queue.is_running(inode.ino)
    }

    fn source_of(inode: &Inode) -> Option<Source> {
        inode.remote.as_ref().map(|r| Source {
            path: r.path.clone(),
            revision: r.revision.clone(),
        })
    }

    #[allow(clippy::too_many_arguments)]
    fn new_inode(
        &self,
        ino: Ino,
        parent: Ino,
        name: &str,
        kind: EntryKind,
        perm: u16,
        uid: u32,
        gid: u32,
    ) -> Inode {
        let t = now();
        Inode {
            ino,
            parent,
            name: name.to_string(),
            kind,
            size: 0,
            mtime: t,
            atime: t,
            ctime: t,
            perm,
            uid,
            gid,
            symlink_target: None,
            remote: None,
            dirty: false,
            base_revision: None,
            listed_at: None,
            hash: None,
            generation: 0,
            conflict: None,
            upload_error: None,
            special: None,
            subdirs: None,
        }
    }

    /// A subdirectory of `dir` came (+1) or went (-1); a count not known yet stays so.
    fn adjust_subdirs(&self, dir: Ino, delta: i32) -> FsResult<()> {
        self.update(dir, |d| {
            if let Some(n) = d.subdirs.as_mut() {
                *n = n.saturating_add_signed(delta);
            }
        })?;
        Ok(())
    }

    fn touch_dir(&self, dir: Ino) -> FsResult<()> {
        let t = now();
        self.update(dir, |d| {
            d.mtime = t;
            d.ctime = t;
        })?;
        Ok(())
    }

    // ---------------------------------------------------------------------------------
    // Kernel reference counting

    pub fn remember_lookup(&self, ino: Ino) {
        *self.lookups.lock().unwrap().entry(ino).or_default() += 1;
    }

    pub fn forget(&self, ino: Ino, n: u64) {
        let gone = {
            let mut l = self.lookups.lock().unwrap();
            let e = l.entry(ino).or_default();
            *e = e.saturating_sub(n);
            if *e == 0 {
                l.remove(&ino);
                true
            } else {
                false
            }
        };
        if gone {
            self.maybe_purge_orphan(ino);
        }
    }

    fn maybe_purge_orphan(&self, ino: Ino) {
        if !self.orphans.lock().unwrap().contains(&ino) {
            return;
        }
        let open = self
            .open_counts
            .lock()
            .unwrap()
            .get(&ino)
            .copied()
            .unwrap_or(0);
        let looked_up = self.lookups.lock().unwrap().contains_key(&ino);
        // A hard-linked file whose own name went lives on for its other names.
        if open > 0 || looked_up || self.queue.has_jobs_for(ino) || self.is_linked(ino) {
            return;
        }
        self.orphans.lock().unwrap().remove(&ino);
        let mut b = Batch::default();
        b.remove_inode(ino);
        if let Err(e) = self.store.apply(b) {
            tracing::warn!(ino, error = %e, "could not drop unlinked inode");
        }
        self.cache.remove(ino);
    }

    /// Detach an inode from the tree. It lives on (as an orphan) while open or known to
    /// the kernel, so an open file keeps working after unlink or rename-over.
    fn orphan(&self, b: &mut Batch, inode: &mut Inode) {
        inode.parent = 0;
        inode.ctime = now();
        b.put_inode(inode);
        self.orphans.lock().unwrap().insert(inode.ino);
    }

    pub fn is_open(&self, ino: Ino) -> bool {
        self.open_counts
            .lock()
            .unwrap()
            .get(&ino)
            .copied()
            .unwrap_or(0)
            > 0
    }

    // ---------------------------------------------------------------------------------
    // Namespace operations

    pub async fn lookup(&self, parent: Ino, name: &str) -> FsResult<Attr> {
        let caps = self.provider.capabilities();
        if name.len() > caps.max_name_len.min(255) {
            return Err(FsError::NameTooLong);
        }
        if parent == ROOT_LOCAL_INO && RESERVED_NAMES.contains(&name) {
            return Err(FsError::NotFound);
        }
        self.ensure_listed(parent).await?;
        let ino = self.store.child(parent, name)?.ok_or(FsError::NotFound)?;
        let inode = self.entry_inode(ino)?;
        Ok(self.attr_of(&inode))
    }

    pub async fn getattr(&self, ino: Ino) -> FsResult<Attr> {
        Ok(self.attr_of(&self.get(ino)?))
    }

    pub async fn readlink(&self, ino: Ino) -> FsResult<String> {
        let inode = self.get(ino)?;
        match (inode.kind, inode.symlink_target) {
            (EntryKind::Symlink, Some(t)) => Ok(t),
            _ => Err(FsError::Invalid("not a symlink".into())),
        }
    }

    pub async fn readdir(&self, ino: Ino) -> FsResult<Vec<(String, Attr)>> {
        let dir = self.get(ino)?;
        if !dir.is_dir() {
            return Err(FsError::NotDir);
        }
        self.ensure_listed(ino).await?;
        let mut out = Vec::new();
        for (name, child) in self.store.children(ino)? {
            if let Some(inode) = self.store.get(self.holder_of(child))? {
                out.push((name, self.attr_of(&inode)));
            }
        }
        Ok(out)
    }

    #[allow(clippy::too_many_arguments)]
    pub async fn mkdir(
        &self,
        parent: Ino,
        name: &str,
        mode: u32,
        uid: u32,
        gid: u32,
    ) -> FsResult<Attr> {
        self.writable()?;
        self.check_name(parent, name).await?;
        self.ensure_listed(parent).await?;
        let _ns = self.ns_lock.lock().await;
        let pdir = self.get(parent)?;
        if !pdir.is_dir() {
            return Err(FsError::NotDir);
        }
        if self.store.child(parent, name)?.is_some() {
            return Err(FsError::Exists);
        }
        self.check_case_twin(parent, name, None)?;
        let ino = self.store.alloc_ino()?;
        let mut inode = self.new_inode(
            ino,
            parent,
            name,
            EntryKind::Dir,
            (mode & 0o7777) as u16,
            uid,
            gid,
        );
        inode.listed_at = Some(now());
        inode.subdirs = Some(0);
        let path = self.child_path(parent, name)?;
        let mut b = Batch::default();
        b.put_inode(&inode);
        b.link(parent, name, ino);
        // The entry and its job land together: after a crash there is never one
        // without the other.
        let mut t = self.queue.begin(b);
        t.enqueue_mkdir(ino, &path);
        t.commit()?;
        // (A count off after a crash here is put right by the folder's next listing.)
        self.adjust_subdirs(parent, 1)?;
        self.touch_dir(parent)?;
        Ok(self.attr_of(&inode))
    }

    /// Create and open a regular file. Returns its attributes and a handle.
    pub async fn create(
        &self,
        parent: Ino,
        name: &str,
        mode: u32,
        uid: u32,
        gid: u32,
        exclusive: bool,
    ) -> FsResult<(Attr, u64)> {
        self.writable()?;
        self.check_name(parent, name).await?;
        self.ensure_listed(parent).await?;
        let _ns = self.ns_lock.lock().await;
        if !self.get(parent)?.is_dir() {
            return Err(FsError::NotDir);
        }
        if let Some(existing) = self.store.child(parent, name)?.map(|i| self.holder_of(i)) {
            // The kernel normally looks up first; a racing creator still gets POSIX answers.
            if exclusive {
                return Err(FsError::Exists);
            }
            drop(_ns);
            let attr = self.getattr(existing).await?;
            let fh = self.open(existing, true).await?.0;
            return Ok((attr, fh));
        }
        self.check_case_twin(parent, name, None)?;
        let ino = self.store.alloc_ino()?;
        let mut inode = self.new_inode(
            ino,
            parent,
            name,
            EntryKind::File,
            (mode & 0o7777) as u16,
            uid,
            gid,
        );
        inode.dirty = true;
        self.cache.truncate(ino, 0, 0)?;
        self.cache.set_dirty(ino, true);
        let mut b = Batch::default();
        b.put_inode(&inode);
        b.link(parent, name, ino);
        self.store.apply(b)?;
        self.touch_dir(parent)?;
        let fh = self.new_handle(ino, true);
        Ok((self.attr_of(&inode), fh))
    }

    /// mknod: a regular file goes to the remote like any created file; a FIFO, Unix
    /// socket or device node lives in the metadata store only (no provider can hold one):
    /// listed, stat'ed, renamed, chmod'ed and removed here, shown to this machine alone.
    /// What it does when opened is the kernel's (a pipe, a socket, a device).
    pub async fn mknod(
        &self,
        parent: Ino,
        name: &str,
        mode: u32,
        rdev: u32,
        uid: u32,
        gid: u32,
    ) -> FsResult<Attr> {
        let kind = match mode & libc::S_IFMT {
            libc::S_IFREG => {
                let (attr, fh) = self.create(parent, name, mode, uid, gid, true).await?;
                self.flush(attr.ino, fh).await?;
                self.release(fh).await?;
                return Ok(attr);
            }
            libc::S_IFIFO => SpecialKind::Fifo,
            libc::S_IFSOCK => SpecialKind::Socket,
            libc::S_IFCHR => SpecialKind::CharDevice,
            libc::S_IFBLK => SpecialKind::BlockDevice,
            _ => return Err(FsError::Invalid(format!("mknod of file type {mode:o}"))),
        };
        self.writable()?;
        self.check_name(parent, name).await?;
        self.ensure_listed(parent).await?;
        let _ns = self.ns_lock.lock().await;
        if self.store.child(parent, name)?.is_some() {
            return Err(FsError::Exists);
        }
        let ino = self.store.alloc_ino()?;
        let perm = (mode & 0o7777) as u16;
        let mut inode = self.new_inode(ino, parent, name, EntryKind::File, perm, uid, gid);
        let rdev = match kind {
            SpecialKind::CharDevice | SpecialKind::BlockDevice => rdev,
            SpecialKind::Fifo | SpecialKind::Socket => 0,
        };
        inode.special = Some(Special { kind, rdev });
        let mut b = Batch::default();
        b.put_inode(&inode);
        b.link(parent, name, ino);
        self.store.apply(b)?;
        self.touch_dir(parent)?;
        Ok(self.attr_of(&inode))
    }

    pub async fn symlink(
        &self,
        parent: Ino,
        name: &str,
        target: &str,
        uid: u32,
        gid: u32,
    ) -> FsResult<Attr> {
        self.writable()?;
        self.check_name(parent, name).await?;
        if !self.provider.capabilities().symlinks && symlink_file::encode(target).is_none() {
            // Stored as a small file (see symlink_file.rs), which bounds the target.
            return Err(FsError::NameTooLong);
        }
        self.ensure_listed(parent).await?;
        let _ns = self.ns_lock.lock().await;
        if self.store.child(parent, name)?.is_some() {
            return Err(FsError::Exists);
        }
        self.check_case_twin(parent, name, None)?;
        let ino = self.store.alloc_ino()?;
        let mut inode = self.new_inode(ino, parent, name, EntryKind::Symlink, 0o777, uid, gid);
        inode.symlink_target = Some(target.to_string());
        let path = self.child_path(parent, name)?;
        let mut b = Batch::default();
        b.put_inode(&inode);
        b.link(parent, name, ino);
        let mut t = self.queue.begin(b);
        t.enqueue_symlink(ino, &path, target);
        t.commit()?;
        self.touch_dir(parent)?;
        Ok(self.attr_of(&inode))
    }

    pub async fn unlink(&self, parent: Ino, name: &str) -> FsResult<()> {
        self.writable()?;
        self.ensure_listed(parent).await?;
        let _ns = self.ns_lock.lock().await;
        let ino = self.store.child(parent, name)?.ok_or(FsError::NotFound)?;
        let path = self.child_path(parent, name)?;
        {
            let _records = self.lock_records(&[ino]);
            let mut inode = self.get(ino)?;
            if inode.is_dir() {
                return Err(FsError::IsDir);
            }
            // A file that replaced a remote one before its upload: that one goes too.
            let on_remote = self.on_remote(&inode) || inode.base_revision.is_some();
            let mut b = Batch::default();
            b.unlink(parent, name);
            let left_link = self.orphan_name(&mut b, &mut inode);
            let mut t = self.queue.begin(b);
            t.on_delete(ino, &path, on_remote);
            t.commit()?;
            drop(_records);
            if let Some(n) = left_link {
                self.name_left_link(n);
            }
        }
        self.touch_dir(parent)?;
        self.maybe_purge_orphan(ino);
        Ok(())
    }

    pub async fn rmdir(&self, parent: Ino, name: &str) -> FsResult<()> {
        self.writable()?;
        if parent == ROOT_LOCAL_INO && RESERVED_NAMES.contains(&name) {
            return Err(FsError::NotFound);
        }
        self.ensure_listed(parent).await?;
        let ino = self.store.child(parent, name)?.ok_or(FsError::NotFound)?;
        self.check_not_fixed(parent).await?;
        if !self.get(ino)?.is_dir() {
            return Err(FsError::NotDir);
        }
        // Its remote children count too, even if nobody listed it yet.
        self.ensure_listed(ino).await?;
        let _ns = self.ns_lock.lock().await;
        if self.store.child(parent, name)? != Some(ino) {
            return Err(FsError::NotFound);
        }
        if self.store.has_children(ino)? {
            return Err(FsError::NotEmpty);
        }
        let path = self.child_path(parent, name)?;
        {
            let _records = self.lock_records(&[ino]);
            let mut inode = self.get(ino)?;
            let on_remote = self.on_remote(&inode);
            let mut b = Batch::default();
            b.unlink(parent, name);
            self.orphan(&mut b, &mut inode);
            let mut t = self.queue.begin(b);
            t.on_delete(ino, &path, on_remote);
            t.commit()?;
        }
        self.adjust_subdirs(parent, -1)?;
        self.touch_dir(parent)?;
        self.maybe_purge_orphan(ino);
        Ok(())
    }

    pub async fn rename(
        &self,
        parent: Ino,
        name: &str,
        new_parent: Ino,
        new_name: &str,
        no_replace: bool,
        exchange: bool,
    ) -> FsResult<()> {
        self.writable()?;
        if exchange {
            return Err(FsError::Invalid(
                "RENAME_EXCHANGE is not supported by cloud providers".into(),
            ));
        }
        self.check_name(new_parent, new_name).await?;
        if parent == ROOT_LOCAL_INO && RESERVED_NAMES.contains(&name) {
            return Err(FsError::NotFound);
        }
        self.ensure_listed(parent).await?;
        self.ensure_listed(new_parent).await?;
        let src_ino = self.store.child(parent, name)?.ok_or(FsError::NotFound)?;
        if let Some(dst) = self.store.child(new_parent, new_name)? {
            if self.get(dst)?.is_dir() {
                self.ensure_listed(dst).await?;
            }
        }
        // Before the namespace lock: the provider may ask its service about its layout.
        self.check_not_fixed(parent).await?;
        let (from, to) = (
            self.child_path(parent, name)?,
            self.child_path(new_parent, new_name)?,
        );
        if !self.provider.same_space(&from, &to).await {
            return Err(FsError::CrossDevice(format!(
                "{from} and {to} are on different drives"
            )));
        }
        let _ns = self.ns_lock.lock().await;
        if self.store.child(parent, name)? != Some(src_ino) {
            return Err(FsError::NotFound);
        }
        let src = self.get(src_ino)?;
        if !self.get(new_parent)?.is_dir() {
            return Err(FsError::NotDir);
        }
        // A directory cannot move below itself.
        if src.is_dir() {
            let mut cur = new_parent;
            loop {
                if cur == src_ino {
                    return Err(FsError::Invalid(
                        "cannot move a directory into itself".into(),
                    ));
                }
                if cur == ROOT_LOCAL_INO || cur == 0 {
                    break;
                }
                cur = self.get(cur)?.parent;
            }
        }
        let from = self.child_path(parent, name)?;
        let to = self.child_path(new_parent, new_name)?;
        let dst = self.store.child(new_parent, new_name)?;
        self.check_case_twin(new_parent, new_name, Some(src_ino))?;
        let mut victim = None;
        if let Some(dst_ino) = dst {
            // Two names of one file (the same entry, or hard links): POSIX says nothing
            // happens.
            if dst_ino == src_ino || self.holder_of(dst_ino) == self.holder_of(src_ino) {
                return Ok(());
            }
            if no_replace {
                return Err(FsError::Exists);
            }
            let d = self.get(dst_ino)?;
            match (src.is_dir(), d.is_dir()) {
                (true, false) => return Err(FsError::NotDir),
                (false, true) => return Err(FsError::IsDir),
                (true, true) if self.store.has_children(dst_ino)? => return Err(FsError::NotEmpty),
                _ => {}
            }
            victim = Some(d);
        }
        let moved = self.subtree(src_ino)?;
        if src.is_dir() {
            self.check_path_len(new_parent, new_name, self.depth_below(src_ino)?)?;
        }
        // From here the records are read again and written under their locks: an upload
        // of either file that finishes meanwhile must not be undone by stale copies.
        let mut lock_set = vec![src_ino];
        lock_set.extend(victim.as_ref().map(|v| v.ino));
        let records = self.lock_records(&lock_set);
        let mut src = self.get(src_ino)?;
        let mut victim = match victim {
            Some(v) => Some(self.get(v.ino)?),
            None => None,
        };
        // Everything below is decided and queued under the queue's lock, as one
        // transaction with the namespace change: whether the remote needs a move (or the
        // queued creations can simply take the new name) cannot change meanwhile.
        let mut t = self.queue.begin(Batch::default());
        let src_on_remote = t.rename_is_move(src_ino, &moved, &from, src.remote.is_some());
        let v_on_remote = victim
            .as_ref()
            .map(|v| v.remote.is_some() || t.is_running(v.ino));
        let v_running = victim.as_ref().is_some_and(|v| t.is_running(v.ino));
        // A new file that had replaced a remote one (an editor's save-by-rename) moves
        // on before its upload: the remote object it replaced at `from` must go, and the
        // upload to the new name expects an empty slot.
        let delete_replaced_at_from =
            !src_on_remote && !src.is_dir() && src.base_revision.take().is_some();
        let mut victim_delete = false;
        let mut victim_left_link = None;
        let b = t.batch();
        b.unlink(parent, name);
        if let Some(v) = victim.as_mut() {
            let v_on_remote = v_on_remote.unwrap_or(false);
            b.unlink(new_parent, new_name);
            victim_left_link = self.orphan_name(b, v);
            if !v_on_remote && !src_on_remote && !src.is_dir() {
                // The replaced file had itself replaced a remote one and was not uploaded
                // yet (git's `main.lock` -> `main`, twice in a row): that remote file is
                // what the new content replaces now.
                if v.base_revision.is_some() {
                    src.base_revision = v.base_revision.clone();
                }
            } else if v_on_remote && !src_on_remote && !src.is_dir() {
                if src.special.is_some() {
                    // A special file never goes to the remote: what it replaced there goes.
                    victim_delete = true;
                } else if v.remote.is_some() && !v_running {
                    // The new content replaces what the remote has at that name: the
                    // upload must expect that revision, not an empty slot.
                    src.base_revision = v.remote.as_ref().map(|r| r.revision.clone());
                } else {
                    // The replaced file is being uploaded right now, so its revision is
                    // not known yet: remove it once that upload is done, then the new
                    // file goes up into an empty slot.
                    victim_delete = true;
                }
            }
        }
        b.link(new_parent, new_name, src_ino);
        src.parent = new_parent;
        src.name = new_name.to_string();
        src.ctime = now();
        b.put_inode(&src);
        let delete_victim = victim.as_ref().is_some_and(|v| {
            victim_delete || (v.is_dir() && v_on_remote.unwrap_or(false) && !src_on_remote)
        });
        if delete_replaced_at_from {
            t.enqueue_remote_delete(&from);
        }
        if let (Some(v), true) = (&victim, delete_victim) {
            t.on_delete(v.ino, &to, true);
        }
        t.on_rename(
            src_ino,
            &moved,
            &from,
            &to,
            src_on_remote,
            victim.as_ref().map(|v| v.ino),
        );
        t.commit()?;
        if let Some(v) = &victim {
            if self.is_open(v.ino) {
                self.keep_for_open_handles(v);
            }
        }
        drop(records);
        if let Some(n) = victim_left_link {
            self.name_left_link(n);
        }
        // A hard link's name moved: the file the kernel knows changed (its ctime).
        let src_holder = self.holder_of(src_ino);
        if src_holder != src_ino {
            self.update(src_holder, |h| h.ctime = now())?;
        }
        if src.is_dir() && new_parent != parent {
            self.adjust_subdirs(parent, -1)?;
            self.adjust_subdirs(new_parent, 1)?;
        }
        if victim.as_ref().is_some_and(|v| v.is_dir()) {
            self.adjust_subdirs(new_parent, -1)?;
        }
        self.touch_dir(parent)?;
        if new_parent != parent {
            self.touch_dir(new_parent)?;
        }
        if let Some(v) = victim {
            self.maybe_purge_orphan(v.ino);
        }
        Ok(())
    }

    /// An inode and everything below it.
    fn subtree(&self, ino: Ino) -> FsResult<HashSet<Ino>> {
        let mut out = HashSet::new();
        let mut todo = vec![ino];
        while let Some(i) = todo.pop() {
            out.insert(i);
            if self.get(i)?.is_dir() {
                todo.extend(self.store.children(i)?.into_iter().map(|(_, c)| c));
            }
        }
        Ok(out)
    }

    /// A file replaced or deleted while open must keep its own content: fetch what is
    /// not cached yet, before the remote copy goes away.
    fn keep_for_open_handles(&self, inode: &Inode) {
        let Some(source) = Self::source_of(inode) else {
            return;
        };
        let cache = Arc::clone(&self.cache);
        let (ino, size) = (inode.ino, inode.size);
        tokio::spawn(async move {
            if let Err(e) = cache.ensure(ino, Some(&source), size, 0, size).await {
                tracing::warn!(ino, error = %e, "could not keep the content of a replaced open file");
            }
        });
    }

    pub async fn setattr(&self, ino: Ino, set: SetAttr) -> FsResult<Attr> {
        // Times too: `touch` on a read-only connection is EROFS, as on any read-only mount.
        if set.size.is_some()
            || set.mode.is_some()
            || set.uid.is_some()
            || set.gid.is_some()
            || set.atime.is_some()
            || set.mtime.is_some()
        {
            self.writable()?;
        }
        let inode = self.get(ino)?;
        if let Some(size) = set.size {
            if inode.is_dir() {
                return Err(FsError::IsDir);
            }
            self.truncate(ino, size).await?;
        }
        let t = now();
        let resolve = |ts: TimeSpec| match ts {
            TimeSpec::Now => t,
            TimeSpec::At(at) => at,
        };
        let inode = self.update(ino, |i| {
            if let Some(m) = set.mode {
                i.perm = (m & 0o7777) as u16;
            }
            if let Some(u) = set.uid {
                i.uid = u;
            }
            if let Some(g) = set.gid {
                i.gid = g;
            }
            if let Some(a) = set.atime {
                i.atime = resolve(a);
            }
            if let Some(m) = set.mtime {
                i.mtime = resolve(m);
            }
            i.ctime = t;
        })?;
        let remote_mode = inode.kind != EntryKind::Symlink && ino != ROOT_LOCAL_INO;
        // A file not on the remote yet gets its mode with its first upload, which reads
        // the bits when it runs. A folder's creation carries no mode, so it always needs
        // the chmod (queued after the mkdir, on the same path, so it runs after it).
        // Asked in this order, with the record read afresh: an upload that finished since
        // the update above has set `remote` before it stopped running.
        let mode_travels_with_upload =
            !inode.is_dir() && !self.queue.is_running(ino) && self.get(ino)?.remote.is_none();
        if set.mode.is_some()
            && remote_mode
            && !mode_travels_with_upload
            && self.provider.capabilities().unix_attrs
        {
            // The path is read and the job queued under the namespace lock, as for a
            // truncate: a rename cannot slip in between and leave the job at the old name.
            let _ns = self.ns_lock.lock().await;
            if let Some(path) = self.path_of(ino)? {
                self.queue.enqueue_set_mode(ino, &path);
            }
        }
        if set.mode.is_some()
            && remote_mode
            && self.provider.capabilities().unix_attrs
            && self.is_linked(ino)
        {
            let _ns = self.ns_lock.lock().await;
            self.sync_link_modes(ino)?;
        }
        Ok(self.attr_of(&inode))
    }

    async fn truncate(&self, ino: Ino, size: u64) -> FsResult<()> {
        if size > MAX_FILE_SIZE {
            return Err(FsError::TooBig);
        }
        self.begin_local_change(ino)?;
        // The old size is read, the cache cut and the new size stored under the record
        // lock, as in `write`: a write extending the file meanwhile must not be lost.
        let mut cut = Ok(());
        self.update(ino, |i| {
            // See `write`: an upload may have marked it clean since we looked.
            if !i.dirty {
                i.dirty = true;
                i.base_revision = i.remote.as_ref().map(|r| r.revision.clone());
            }
            self.cache.set_dirty(ino, true);
            cut = self.cache.truncate(ino, i.size, size);
            if cut.is_ok() {
                i.size = size;
                i.mtime = now();
                i.generation += 1;
            }
        })?;
        cut?;
        if !self.is_open(ino) {
            // A truncate without an open handle (truncate(1)) has no close to trigger upload.
            // The path is read and the job queued under the namespace lock, so that a
            // rename cannot slip in between and leave the job at the old name.
            let _ns = self.ns_lock.lock().await;
            let path = self.path_of(ino)?;
            if let Some(path) = path {
                self.queue
                    .enqueue_upload(ino, &path, size, self.get(ino)?.generation);
            }
            self.sync_link_names(ino)?;
        }
        Ok(())
    }

    /// Mark an inode as locally modified, remembering which remote revision the change
    /// started from so the upload can detect a conflicting remote edit.
    fn begin_local_change(&self, ino: Ino) -> FsResult<Inode> {
        let inode = self.get(ino)?;
        if inode.dirty {
            return Ok(inode);
        }
        let inode = self.update(ino, |i| {
            if !i.dirty {
                i.dirty = true;
                i.base_revision = i.remote.as_ref().map(|r| r.revision.clone());
            }
            self.cache.set_dirty(ino, true);
        })?;
        if self.is_linked(ino) {
            self.mark_names_changed(ino)?;
        }
        Ok(inode)
    }

    /// The provider's quota as last seen (no request).
    pub fn cached_quota(&self) -> Option<Quota> {
        self.quota_cache
            .lock()
            .unwrap()
            .as_ref()
            .map(|(_, q)| q.clone())
    }

    pub async fn statfs(&self) -> Quota {
        if let Some((at, q)) = self.quota_cache.lock().unwrap().clone() {
            if at.elapsed().unwrap_or_default() < Duration::from_secs(30) {
                return q;
            }
        }
        match self.provider.quota().await {
            Ok(q) => {
                *self.quota_cache.lock().unwrap() = Some((now(), q.clone()));
                q
            }
            Err(_) => Quota::default(),
        }
    }

    // ---------------------------------------------------------------------------------
    // Extended attributes: read-only state for scripts and file managers.

    pub const XATTRS: &'static [&'static str] = &[
        "user.cloudmount.state",
        "user.cloudmount.cached_bytes",
        "user.cloudmount.revision",
        "user.cloudmount.error",
    ];

    pub fn getxattr(&self, ino: Ino, name: &str) -> FsResult<Vec<u8>> {
        let inode = self.get(ino)?;
        let value = match name {
            "user.cloudmount.state" => self.state_of(&inode).to_string(),
            "user.cloudmount.cached_bytes" => self.cache.cached_bytes(ino).to_string(),
            "user.cloudmount.revision" => inode
                .remote
                .as_ref()
                .map(|r| r.revision.clone())
                .ok_or(FsError::NoAttr)?,
            "user.cloudmount.error" => inode
                .conflict
                .as_ref()
                .map(|c| format!("conflict: local edit saved as {c}"))
                .or(inode.upload_error.clone())
                .ok_or(FsError::NoAttr)?,
            _ => return Err(FsError::NoAttr),
        };
        Ok(value.into_bytes())
    }

    /// One word for what is going on with a file.
    pub fn state_of(&self, inode: &Inode) -> &'static str {
        if let Some(s) = self.queue.job_state_of(inode.ino) {
            return s;
        }
        if inode.conflict.is_some() {
            return "conflict";
        }
        if inode.dirty {
            return "dirty";
        }
        if inode.is_dir() || inode.kind == EntryKind::Symlink {
            return "synced";
        }
        if self.cache.is_complete(inode.ino, inode.size) {
            "cached"
        } else if self.cache.cached_bytes(inode.ino) > 0 {
            "partial"
        } else {
            "remote"
        }
    }

    pub fn listxattr(&self, ino: Ino) -> FsResult<Vec<String>> {
        let inode = self.get(ino)?;
        Ok(Self::XATTRS
            .iter()
            .filter(|n| {
                **n != "user.cloudmount.error"
                    || inode.conflict.is_some()
                    || inode.upload_error.is_some()
            })
            .filter(|n| **n != "user.cloudmount.revision" || inode.remote.is_some())
            .map(|s| s.to_string())
            .collect())
    }

    /// Resolve a path in the mounted tree ("/a/b") to an inode.
    pub async fn resolve(&self, path: &str) -> FsResult<Ino> {
        let mut ino = ROOT_LOCAL_INO;
        for comp in path.split('/').filter(|c| !c.is_empty()) {
            self.ensure_listed(ino).await?;
            ino = self.store.child(ino, comp)?.ok_or(FsError::NotFound)?;
        }
        // A hard link's name is the file the kernel knows.
        Ok(self.holder_of(ino))
    }
}
