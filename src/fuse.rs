//! The FUSE adapter: turns kernel requests into filesystem calls and their results into
//! replies. No filesystem logic lives here. Every request that may wait (on the network,
//! on another transfer) runs as a tokio task that owns its reply, so the session thread
//! never blocks.

use std::collections::HashMap;
use std::ffi::OsStr;
use std::future::Future;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use fuser::{
    AccessFlags, Errno, FileAttr, FileHandle, FileType, Filesystem, FopenFlags, Generation,
    INodeNo, InitFlags, KernelConfig, LockOwner, OpenAccMode, OpenFlags, RenameFlags, ReplyAttr,
    ReplyCreate, ReplyData, ReplyDirectory, ReplyDirectoryPlus, ReplyEmpty, ReplyEntry, ReplyOpen,
    ReplyStatfs, ReplyWrite, ReplyXattr, Request, TimeOrNow, WriteFlags,
};

use crate::metadata::{Ino, SpecialKind, ROOT_LOCAL_INO};
use crate::mount_root::{Connection, MountRoot, Route};
use crate::provider::EntryKind;
use crate::vfs::{Attr, FsError, KernelNotifier, SetAttr, TimeSpec, Vfs};

const GENERATION: Generation = Generation(0);

fn errno(e: &FsError) -> Errno {
    Errno::from_i32(e.errno())
}

fn file_type(a: &Attr) -> FileType {
    match (a.kind, a.special.map(|s| s.kind)) {
        (_, Some(SpecialKind::Fifo)) => FileType::NamedPipe,
        (_, Some(SpecialKind::Socket)) => FileType::Socket,
        (_, Some(SpecialKind::CharDevice)) => FileType::CharDevice,
        (_, Some(SpecialKind::BlockDevice)) => FileType::BlockDevice,
        (EntryKind::File, None) => FileType::RegularFile,
        (EntryKind::Dir, None) => FileType::Directory,
        (EntryKind::Symlink, None) => FileType::Symlink,
    }
}

fn to_fuse(ino: u64, a: &Attr) -> FileAttr {
    FileAttr {
        ino: INodeNo(ino),
        size: a.size,
        blocks: a.size.div_ceil(512),
        atime: a.atime,
        mtime: a.mtime,
        ctime: a.ctime,
        crtime: a.ctime,
        kind: file_type(a),
        perm: a.perm,
        nlink: a.nlink,
        uid: a.uid,
        gid: a.gid,
        rdev: a.special.map_or(0, |s| s.rdev),
        blksize: 4096,
        flags: 0,
    }
}

struct DirSnapshot {
    /// (kernel inode, name, attributes); "." and ".." first.
    entries: Vec<(u64, String, Attr)>,
}

pub struct CloudFs {
    root: Arc<MountRoot>,
    rt: tokio::runtime::Handle,
    attr_ttl: Duration,
    dirs: Arc<Mutex<HashMap<u64, DirSnapshot>>>,
    next_dir: AtomicU64,
}

impl CloudFs {
    pub fn new(root: Arc<MountRoot>, rt: tokio::runtime::Handle, attr_ttl: Duration) -> Self {
        CloudFs {
            root,
            rt,
            attr_ttl,
            dirs: Arc::new(Mutex::new(HashMap::new())),
            next_dir: AtomicU64::new(1),
        }
    }

    fn spawn(&self, f: impl Future<Output = ()> + Send + 'static) {
        self.rt.spawn(f);
    }

    /// The connection and its own inode number for a kernel inode, with a clone of the
    /// root so the result can move into a task.
    fn conn(&self, ino: INodeNo) -> Result<(Arc<MountRoot>, u16, Ino), Errno> {
        match self.root.route(ino.0) {
            Some(Route::Conn(c, local)) => Ok((Arc::clone(&self.root), c.slot, local)),
            Some(Route::Top) => Err(Errno::EACCES),
            None => Err(Errno::ENOENT),
        }
    }

    fn slot_vfs(root: &MountRoot, slot: u16) -> (&Connection, Arc<Vfs>) {
        let c = root
            .connections
            .values()
            .find(|c| c.slot == slot)
            .expect("slot was routed");
        (c, Arc::clone(&c.vfs))
    }

    fn entry_reply(root: &MountRoot, slot: u16, attr: &Attr, ttl: Duration, reply: ReplyEntry) {
        let (c, vfs) = Self::slot_vfs(root, slot);
        vfs.remember_lookup(attr.ino);
        let g = root.global(c, attr.ino);
        reply.entry(&ttl, &to_fuse(g, attr), GENERATION);
    }

    fn attr_reply(root: &MountRoot, slot: u16, attr: &Attr, ttl: Duration, reply: ReplyAttr) {
        let (c, _) = Self::slot_vfs(root, slot);
        reply.attr(&ttl, &to_fuse(root.global(c, attr.ino), attr));
    }

    fn top_listing(&self) -> Vec<(u64, String, Attr)> {
        let top = self.root.top_attr();
        let mut out = vec![(1, ".".into(), top.clone()), (1, "..".into(), top)];
        for c in self.root.connections.values() {
            if let Ok(inode) = c.vfs.get(ROOT_LOCAL_INO) {
                let attr = c.vfs.attr_of(&inode);
                out.push((
                    self.root.global(c, ROOT_LOCAL_INO),
                    c.vfs.name.clone(),
                    attr,
                ));
            }
        }
        out
    }
}

/// Kernel cache invalidations, sent from a thread of their own: the kernel may hold a
/// directory lock while it waits for one of our replies, and that reply may be what
/// produced the invalidation.
pub struct Invalidator {
    tx: Mutex<mpsc::Sender<Invalidation>>,
    root: Arc<MountRoot>,
    slot: u16,
}

enum Invalidation {
    /// An inode, and whom to tell once the kernel processed it.
    Inode(u64, Option<tokio::sync::oneshot::Sender<()>>),
    Entry(u64, String),
}

fn start_invalidator(notifier: fuser::Notifier) -> mpsc::Sender<Invalidation> {
    let (tx, rx) = mpsc::channel::<Invalidation>();
    std::thread::Builder::new()
        .name("cloudmount-inval".into())
        .spawn(move || {
            for msg in rx {
                let res = match msg {
                    Invalidation::Inode(ino, done) => {
                        let res = notifier.inval_inode(INodeNo(ino), 0, 0);
                        if let Some(done) = done {
                            let _ = done.send(());
                        }
                        res
                    }
                    Invalidation::Entry(parent, name) => {
                        notifier.inval_entry(INodeNo(parent), OsStr::new(&name))
                    }
                };
                // ENOENT: the kernel did not have it cached, which is fine.
                if let Err(e) = res {
                    if e.raw_os_error() != Some(libc::ENOENT) {
                        tracing::debug!(error = %e, "kernel invalidation failed");
                    }
                }
            }
        })
        .expect("spawn invalidation thread");
    tx
}

pub fn connect_invalidators(root: &Arc<MountRoot>, notifier: fuser::Notifier) {
    let tx = start_invalidator(notifier);
    for c in root.connections.values() {
        c.vfs.set_notifier(Arc::new(Invalidator {
            tx: Mutex::new(tx.clone()),
            root: Arc::clone(root),
            slot: c.slot,
        }));
    }
}

impl Invalidator {
    /// Queues an invalidation for the thread that talks to the kernel; `what` is given
    /// the mount-wide inode number of this connection's `ino`. A send fails only when
    /// the mount is going away, when nothing is left to invalidate.
    fn queue(&self, ino: Ino, what: impl FnOnce(u64) -> Invalidation) {
        let (c, _) = CloudFs::slot_vfs(&self.root, self.slot);
        let global = self.root.global(c, ino);
        let _ = self.tx.lock().unwrap().send(what(global));
    }
}

impl KernelNotifier for Invalidator {
    fn inval_inode(&self, ino: Ino) {
        self.queue(ino, |g| Invalidation::Inode(g, None));
    }
    fn inval_inode_then(&self, ino: Ino, done: tokio::sync::oneshot::Sender<()>) {
        self.queue(ino, |g| Invalidation::Inode(g, Some(done)));
    }
    fn inval_entry(&self, parent: Ino, name: &str) {
        self.queue(parent, |g| Invalidation::Entry(g, name.to_string()));
    }
}

fn name_str(name: &OsStr) -> Result<&str, Errno> {
    // Remote paths are UTF-8; a name that is not cannot be stored.
    name.to_str().ok_or(Errno::EINVAL)
}

fn time_spec(t: TimeOrNow) -> TimeSpec {
    match t {
        TimeOrNow::Now => TimeSpec::Now,
        TimeOrNow::SpecificTime(at) => TimeSpec::At(at),
    }
}

macro_rules! route_or_reply {
    ($self:ident, $ino:expr, $reply:ident) => {
        match $self.conn($ino) {
            Ok(x) => x,
            Err(e) => return $reply.error(e),
        }
    };
}

macro_rules! name_or_reply {
    ($name:expr, $reply:ident) => {
        match name_str($name) {
            Ok(n) => n.to_string(),
            Err(e) => return $reply.error(e),
        }
    };
}

impl Filesystem for CloudFs {
    fn init(&mut self, _req: &Request, config: &mut KernelConfig) -> std::io::Result<()> {
        let _ = config.set_max_readahead(1 << 20);
        let _ = config.set_max_write(1 << 20);
        // Requests are answered from tasks, so many may be in flight at once.
        let _ = config.set_max_background(64);
        let _ = config.set_congestion_threshold(48);
        for cap in [
            // `ls -l` gets names and attributes in one go, from the metadata store.
            InitFlags::FUSE_DO_READDIRPLUS,
            InitFlags::FUSE_READDIRPLUS_AUTO,
            InitFlags::FUSE_PARALLEL_DIROPS,
            InitFlags::FUSE_CACHE_SYMLINKS,
            InitFlags::FUSE_ASYNC_DIO,
            // A changed mtime or size seen on getattr drops stale pages.
            InitFlags::FUSE_AUTO_INVAL_DATA,
            InitFlags::FUSE_DIRECT_IO_ALLOW_MMAP,
        ] {
            // Older kernels lack some of these; what they lack, we do without.
            let _ = config.add_capabilities(cap);
        }
        Ok(())
    }

    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        let name = name_or_reply!(name, reply);
        if let Some(Route::Top) = self.root.route(parent.0) {
            return match self.root.by_name(&name) {
                Some(c) => match c.vfs.get(ROOT_LOCAL_INO) {
                    Ok(inode) => {
                        let attr = c.vfs.attr_of(&inode);
                        Self::entry_reply(&self.root, c.slot, &attr, self.attr_ttl, reply)
                    }
                    Err(e) => reply.error(errno(&e)),
                },
                None => reply.error(Errno::ENOENT),
            };
        }
        let (root, slot, local) = route_or_reply!(self, parent, reply);
        let ttl = self.attr_ttl;
        self.spawn(async move {
            let (_, vfs) = Self::slot_vfs(&root, slot);
            match vfs.lookup(local, &name).await {
                Ok(attr) => Self::entry_reply(&root, slot, &attr, ttl, reply),
                Err(e) => reply.error(errno(&e)),
            }
        });
    }

    fn forget(&self, _req: &Request, ino: INodeNo, nlookup: u64) {
        if let Some(Route::Conn(c, local)) = self.root.route(ino.0) {
            c.vfs.forget(local, nlookup);
        }
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, _fh: Option<FileHandle>, reply: ReplyAttr) {
        if let Some(Route::Top) = self.root.route(ino.0) {
            return reply.attr(&self.attr_ttl, &to_fuse(1, &self.root.top_attr()));
        }
        let (root, slot, local) = route_or_reply!(self, ino, reply);
        let (_, vfs) = Self::slot_vfs(&root, slot);
        match vfs.get(local) {
            Ok(inode) => Self::attr_reply(&root, slot, &vfs.attr_of(&inode), self.attr_ttl, reply),
            Err(e) => reply.error(errno(&e)),
        }
    }

    fn setattr(
        &self,
        _req: &Request,
        ino: INodeNo,
        mode: Option<u32>,
        uid: Option<u32>,
        gid: Option<u32>,
        size: Option<u64>,
        atime: Option<TimeOrNow>,
        mtime: Option<TimeOrNow>,
        _ctime: Option<SystemTime>,
        _fh: Option<FileHandle>,
        _crtime: Option<SystemTime>,
        _chgtime: Option<SystemTime>,
        _bkuptime: Option<SystemTime>,
        _flags: Option<fuser::BsdFileFlags>,
        reply: ReplyAttr,
    ) {
        let (root, slot, local) = route_or_reply!(self, ino, reply);
        let set = SetAttr {
            mode,
            uid,
            gid,
            size,
            atime: atime.map(time_spec),
            mtime: mtime.map(time_spec),
        };
        let ttl = self.attr_ttl;
        self.spawn(async move {
            let (_, vfs) = Self::slot_vfs(&root, slot);
            match vfs.setattr(local, set).await {
                Ok(attr) => Self::attr_reply(&root, slot, &attr, ttl, reply),
                Err(e) => reply.error(errno(&e)),
            }
        });
    }

    fn readlink(&self, _req: &Request, ino: INodeNo, reply: ReplyData) {
        let (root, slot, local) = route_or_reply!(self, ino, reply);
        self.spawn(async move {
            let (_, vfs) = Self::slot_vfs(&root, slot);
            match vfs.readlink(local).await {
                Ok(t) => reply.data(t.as_bytes()),
                Err(e) => reply.error(errno(&e)),
            }
        });
    }

    fn mknod(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        rdev: u32,
        reply: ReplyEntry,
    ) {
        let name = name_or_reply!(name, reply);
        let (root, slot, local) = route_or_reply!(self, parent, reply);
        let (uid, gid, ttl) = (req.uid(), req.gid(), self.attr_ttl);
        self.spawn(async move {
            let (_, vfs) = Self::slot_vfs(&root, slot);
            match vfs.mknod(local, &name, mode & !umask, rdev, uid, gid).await {
                Ok(attr) => Self::entry_reply(&root, slot, &attr, ttl, reply),
                Err(e) => reply.error(errno(&e)),
            }
        });
    }

    fn mkdir(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        reply: ReplyEntry,
    ) {
        let name = name_or_reply!(name, reply);
        let (root, slot, local) = route_or_reply!(self, parent, reply);
        let (uid, gid, ttl) = (req.uid(), req.gid(), self.attr_ttl);
        self.spawn(async move {
            let (_, vfs) = Self::slot_vfs(&root, slot);
            match vfs.mkdir(local, &name, mode & !umask, uid, gid).await {
                Ok(attr) => Self::entry_reply(&root, slot, &attr, ttl, reply),
                Err(e) => reply.error(errno(&e)),
            }
        });
    }

    fn unlink(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        let name = name_or_reply!(name, reply);
        let (root, slot, local) = route_or_reply!(self, parent, reply);
        self.spawn(async move {
            let (_, vfs) = Self::slot_vfs(&root, slot);
            match vfs.unlink(local, &name).await {
                Ok(()) => reply.ok(),
                Err(e) => reply.error(errno(&e)),
            }
        });
    }

    fn rmdir(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        let name = name_or_reply!(name, reply);
        let (root, slot, local) = route_or_reply!(self, parent, reply);
        self.spawn(async move {
            let (_, vfs) = Self::slot_vfs(&root, slot);
            match vfs.rmdir(local, &name).await {
                Ok(()) => reply.ok(),
                Err(e) => reply.error(errno(&e)),
            }
        });
    }

    fn symlink(
        &self,
        req: &Request,
        parent: INodeNo,
        link_name: &OsStr,
        target: &Path,
        reply: ReplyEntry,
    ) {
        let name = name_or_reply!(link_name, reply);
        let Some(target) = target.to_str().map(str::to_string) else {
            return reply.error(Errno::EINVAL);
        };
        let (root, slot, local) = route_or_reply!(self, parent, reply);
        let (uid, gid, ttl) = (req.uid(), req.gid(), self.attr_ttl);
        self.spawn(async move {
            let (_, vfs) = Self::slot_vfs(&root, slot);
            match vfs.symlink(local, &name, &target, uid, gid).await {
                Ok(attr) => Self::entry_reply(&root, slot, &attr, ttl, reply),
                Err(e) => reply.error(errno(&e)),
            }
        });
    }

    fn rename(
        &self,
        _req: &Request,
        parent: INodeNo,
        name: &OsStr,
        newparent: INodeNo,
        newname: &OsStr,
        flags: RenameFlags,
        reply: ReplyEmpty,
    ) {
        let name = name_or_reply!(name, reply);
        let newname = name_or_reply!(newname, reply);
        let (root, slot, local) = route_or_reply!(self, parent, reply);
        let (_, slot2, local2) = route_or_reply!(self, newparent, reply);
        if slot != slot2 {
            // Different connections are different filesystems: mv copies instead.
            return reply.error(Errno::EXDEV);
        }
        let no_replace = flags.contains(RenameFlags::RENAME_NOREPLACE);
        let exchange = flags.contains(RenameFlags::RENAME_EXCHANGE);
        self.spawn(async move {
            let (_, vfs) = Self::slot_vfs(&root, slot);
            match vfs
                .rename(local, &name, local2, &newname, no_replace, exchange)
                .await
            {
                Ok(()) => reply.ok(),
                Err(e) => reply.error(errno(&e)),
            }
        });
    }

    fn link(
        &self,
        _req: &Request,
        ino: INodeNo,
        newparent: INodeNo,
        newname: &OsStr,
        reply: ReplyEntry,
    ) {
        let name = name_or_reply!(newname, reply);
        let (root, slot, local) = route_or_reply!(self, ino, reply);
        let (_, slot2, local_parent) = route_or_reply!(self, newparent, reply);
        if slot != slot2 {
            // Different connections are different filesystems.
            return reply.error(Errno::EXDEV);
        }
        let ttl = self.attr_ttl;
        self.spawn(async move {
            let (_, vfs) = Self::slot_vfs(&root, slot);
            match vfs.link(local, local_parent, &name).await {
                Ok(attr) => Self::entry_reply(&root, slot, &attr, ttl, reply),
                Err(e) => reply.error(errno(&e)),
            }
        });
    }

    fn open(&self, _req: &Request, ino: INodeNo, flags: OpenFlags, reply: ReplyOpen) {
        let (root, slot, local) = route_or_reply!(self, ino, reply);
        let writable = flags.acc_mode() != OpenAccMode::O_RDONLY;
        self.spawn(async move {
            let (_, vfs) = Self::slot_vfs(&root, slot);
            match vfs.open(local, writable).await {
                Ok((fh, keep)) => {
                    let f = if vfs.take_direct_io(local) {
                        FopenFlags::FOPEN_DIRECT_IO
                    } else if keep {
                        FopenFlags::FOPEN_KEEP_CACHE
                    } else {
                        FopenFlags::empty()
                    };
                    reply.opened(FileHandle(fh), f)
                }
                Err(e) => reply.error(errno(&e)),
            }
        });
    }

    fn read(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyData,
    ) {
        let (root, slot, local) = route_or_reply!(self, ino, reply);
        self.spawn(async move {
            let (_, vfs) = Self::slot_vfs(&root, slot);
            match vfs.read(local, fh.0, offset, size).await {
                Ok(data) => reply.data(&data),
                Err(e) => reply.error(errno(&e)),
            }
        });
    }

    fn write(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        data: &[u8],
        _write_flags: WriteFlags,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyWrite,
    ) {
        let (root, slot, local) = route_or_reply!(self, ino, reply);
        let data = data.to_vec();
        self.spawn(async move {
            let (_, vfs) = Self::slot_vfs(&root, slot);
            match vfs.write(local, fh.0, offset, &data).await {
                Ok(n) => reply.written(n),
                Err(e) => reply.error(errno(&e)),
            }
        });
    }

    fn flush(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        _lo: LockOwner,
        reply: ReplyEmpty,
    ) {
        let (root, slot, local) = route_or_reply!(self, ino, reply);
        self.spawn(async move {
            let (_, vfs) = Self::slot_vfs(&root, slot);
            match vfs.flush(local, fh.0).await {
                Ok(()) => reply.ok(),
                Err(e) => reply.error(errno(&e)),
            }
        });
    }

    fn release(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        _flush: bool,
        reply: ReplyEmpty,
    ) {
        let (root, slot, _) = route_or_reply!(self, ino, reply);
        self.spawn(async move {
            let (_, vfs) = Self::slot_vfs(&root, slot);
            match vfs.release(fh.0).await {
                Ok(()) => reply.ok(),
                Err(e) => reply.error(errno(&e)),
            }
        });
    }

    fn fsync(&self, _req: &Request, ino: INodeNo, fh: FileHandle, _ds: bool, reply: ReplyEmpty) {
        let (root, slot, local) = route_or_reply!(self, ino, reply);
        self.spawn(async move {
            let (_, vfs) = Self::slot_vfs(&root, slot);
            match vfs.fsync(local, fh.0).await {
                Ok(()) => reply.ok(),
                Err(e) => reply.error(errno(&e)),
            }
        });
    }

    fn opendir(&self, _req: &Request, ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        if let Some(Route::Top) = self.root.route(ino.0) {
            let fh = self.next_dir.fetch_add(1, Ordering::SeqCst);
            let entries = self.top_listing();
            self.dirs
                .lock()
                .unwrap()
                .insert(fh, DirSnapshot { entries });
            return reply.opened(FileHandle(fh), FopenFlags::empty());
        }
        let (root, slot, local) = route_or_reply!(self, ino, reply);
        let fh = self.next_dir.fetch_add(1, Ordering::SeqCst);
        let (c, vfs) = Self::slot_vfs(&root, slot);
        let self_g = root.global(c, local);
        let parent_g = match vfs.get(local) {
            // A connection's top folder sits in the mount's top directory.
            Ok(_) if local == ROOT_LOCAL_INO => crate::mount_root::TOP_INO,
            Ok(i) => root.global(c, i.parent),
            Err(e) => return reply.error(errno(&e)),
        };
        // The listing is taken once at opendir so that offsets stay stable while a
        // program reads the directory in several calls.
        let dirs = Arc::clone(&self.dirs);
        self.spawn(async move {
            match vfs.readdir(local).await {
                Ok(list) => {
                    let (c, vfs) = Self::slot_vfs(&root, slot);
                    let mut entries = Vec::with_capacity(list.len() + 2);
                    if let Ok(me) = vfs.get(local) {
                        let a = vfs.attr_of(&me);
                        entries.push((self_g, ".".to_string(), a.clone()));
                        entries.push((parent_g, "..".to_string(), a));
                    }
                    for (name, attr) in list {
                        entries.push((root.global(c, attr.ino), name, attr));
                    }
                    dirs.lock().unwrap().insert(fh, DirSnapshot { entries });
                    reply.opened(FileHandle(fh), FopenFlags::empty());
                }
                Err(e) => reply.error(errno(&e)),
            }
        });
    }

    fn readdir(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectory,
    ) {
        let dirs = self.dirs.lock().unwrap();
        let Some(snap) = dirs.get(&fh.0) else {
            return reply.error(Errno::EBADF);
        };
        for (i, (ino, name, attr)) in snap.entries.iter().enumerate().skip(offset as usize) {
            if reply.add(INodeNo(*ino), (i + 1) as u64, file_type(attr), name) {
                break;
            }
        }
        reply.ok();
    }

    fn readdirplus(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectoryPlus,
    ) {
        let dirs = self.dirs.lock().unwrap();
        let Some(snap) = dirs.get(&fh.0) else {
            return reply.error(Errno::EBADF);
        };
        let _ = ino;
        for (i, (g, name, attr)) in snap.entries.iter().enumerate().skip(offset as usize) {
            if reply.add(
                INodeNo(*g),
                (i + 1) as u64,
                name,
                &self.attr_ttl,
                &to_fuse(*g, attr),
                GENERATION,
            ) {
                break;
            }
            // Every entry but . and .. counts as a lookup the kernel will forget later.
            if name != "." && name != ".." {
                if let Some(Route::Conn(c, local)) = self.root.route(*g) {
                    c.vfs.remember_lookup(local);
                }
            }
        }
        reply.ok();
    }

    fn releasedir(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        reply: ReplyEmpty,
    ) {
        self.dirs.lock().unwrap().remove(&fh.0);
        reply.ok();
    }

    fn fsyncdir(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _ds: bool,
        reply: ReplyEmpty,
    ) {
        reply.ok();
    }

    fn statfs(&self, _req: &Request, ino: INodeNo, reply: ReplyStatfs) {
        let conn = match self.root.route(ino.0) {
            Some(Route::Conn(c, _)) => Some(Arc::clone(&c.vfs)),
            _ => None,
        };
        self.spawn(async move {
            let q = match conn {
                Some(vfs) => vfs.statfs().await,
                None => crate::provider::Quota::default(),
            };
            const BSIZE: u64 = 4096;
            let total = q.total.unwrap_or(1 << 50) / BSIZE;
            let avail = q
                .available
                .or_else(|| q.total.zip(q.used).map(|(t, u)| t.saturating_sub(u)))
                .unwrap_or(1 << 49)
                / BSIZE;
            reply.statfs(
                total,
                avail,
                avail,
                1 << 32,
                1 << 31,
                BSIZE as u32,
                255,
                BSIZE as u32,
            );
        });
    }

    fn setxattr(
        &self,
        _req: &Request,
        _ino: INodeNo,
        name: &OsStr,
        _value: &[u8],
        _flags: i32,
        _position: u32,
        reply: ReplyEmpty,
    ) {
        if name.to_string_lossy().starts_with("user.cloudmount.") {
            reply.error(Errno::EPERM)
        } else {
            reply.error(Errno::from_i32(libc::EOPNOTSUPP))
        }
    }

    fn getxattr(&self, _req: &Request, ino: INodeNo, name: &OsStr, size: u32, reply: ReplyXattr) {
        // `ls -l` asks every file for ACLs and security labels: answer those at once.
        if !name.as_encoded_bytes().starts_with(b"user.cloudmount.") {
            return reply.error(Errno::from_i32(libc::ENODATA));
        }
        let Some(Route::Conn(c, local)) = self.root.route(ino.0) else {
            return reply.error(Errno::from_i32(libc::ENODATA));
        };
        match c.vfs.getxattr(local, &name.to_string_lossy()) {
            Ok(v) => xattr_reply(&v, size, reply),
            Err(e) => reply.error(errno(&e)),
        }
    }

    fn listxattr(&self, _req: &Request, ino: INodeNo, size: u32, reply: ReplyXattr) {
        let Some(Route::Conn(c, local)) = self.root.route(ino.0) else {
            return xattr_reply(&[], size, reply);
        };
        match c.vfs.listxattr(local) {
            Ok(names) => {
                let mut buf = Vec::new();
                for n in names {
                    buf.extend_from_slice(n.as_bytes());
                    buf.push(0);
                }
                xattr_reply(&buf, size, reply)
            }
            Err(e) => reply.error(errno(&e)),
        }
    }

    fn removexattr(&self, _req: &Request, _ino: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        if name.to_string_lossy().starts_with("user.cloudmount.") {
            reply.error(Errno::EPERM)
        } else {
            reply.error(Errno::from_i32(libc::ENODATA))
        }
    }

    fn access(&self, _req: &Request, _ino: INodeNo, _mask: AccessFlags, reply: ReplyEmpty) {
        // default_permissions: the kernel checks modes itself.
        reply.ok();
    }

    fn create(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        flags: i32,
        reply: ReplyCreate,
    ) {
        let name = name_or_reply!(name, reply);
        let (root, slot, local) = route_or_reply!(self, parent, reply);
        let (uid, gid, ttl) = (req.uid(), req.gid(), self.attr_ttl);
        let exclusive = flags & libc::O_EXCL != 0;
        self.spawn(async move {
            let (c, vfs) = Self::slot_vfs(&root, slot);
            match vfs
                .create(local, &name, mode & !umask, uid, gid, exclusive)
                .await
            {
                Ok((attr, fh)) => {
                    vfs.remember_lookup(attr.ino);
                    let g = root.global(c, attr.ino);
                    reply.created(
                        &ttl,
                        &to_fuse(g, &attr),
                        GENERATION,
                        FileHandle(fh),
                        FopenFlags::empty(),
                    )
                }
                Err(e) => reply.error(errno(&e)),
            }
        });
    }

    fn fallocate(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        length: u64,
        mode: i32,
        reply: ReplyEmpty,
    ) {
        if mode != 0 {
            return reply.error(Errno::from_i32(libc::EOPNOTSUPP));
        }
        let (root, slot, local) = route_or_reply!(self, ino, reply);
        self.spawn(async move {
            let (_, vfs) = Self::slot_vfs(&root, slot);
            let res = async {
                let attr = vfs.getattr(local).await?;
                let end = offset + length;
                if end > attr.size {
                    vfs.setattr(
                        local,
                        SetAttr {
                            size: Some(end),
                            ..Default::default()
                        },
                    )
                    .await?;
                }
                Ok::<_, FsError>(())
            }
            .await;
            match res {
                Ok(()) => reply.ok(),
                Err(e) => reply.error(errno(&e)),
            }
        });
    }
}

fn xattr_reply(value: &[u8], size: u32, reply: ReplyXattr) {
    if size == 0 {
        reply.size(value.len() as u32);
    } else if value.len() > size as usize {
        reply.error(Errno::ERANGE);
    } else {
        reply.data(value);
    }
}
