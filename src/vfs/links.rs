//! Hard links: one file under several names within a connection.
//!
//! The kernel knows a hard-linked file by one inode, its *holder*: the record of the
//! file's first name, which keeps the content (in the chunk cache), the attributes and
//! that name's remote copy. Every further name is a *name record*: an inode record of its
//! own (parent, name, remote state, write-back jobs) that the kernel never sees — looking
//! the name up answers with the holder, so both names have one inode number, one link
//! count and one content.
//!
//! No provider keeps hard links, so on the remote every name is an ordinary file with
//! the same bytes: when the holder's content changes, each name record is marked dirty
//! and its upload queued, and that upload sends the holder's bytes. Everything the
//! write-back queue does for a file (conflict detection, renames, deletes, crash safety)
//! therefore holds for each name unchanged.
//!
//! While a file has several names its content is kept whole on this machine and never
//! evicted: the holder's own name may go (unlink, rename over it) while others remain,
//! and then the remote copy the content came from goes with it. The holder then lives on
//! without a name until its last name record goes.
//!
//! When the remote changes one of the names (another client wrote or replaced it), that
//! name leaves the link: it becomes an independent file showing the remote's content,
//! and the other names keep theirs. The same happens to a name whose upload meets a
//! conflicting remote edit.
//!
//! Lock order: the namespace lock, then record locks, then `links` (a plain mutex, never
//! held across an await or while taking another lock).

use std::collections::{BTreeSet, HashMap};

use super::*;
use crate::provider::RemoteEntry;

/// Which name records belong to which holder (a mirror of the store's link records).
#[derive(Default)]
pub(super) struct LinkTable {
    holder_of: HashMap<Ino, Ino>,
    names_of: HashMap<Ino, BTreeSet<Ino>>,
}

impl LinkTable {
    pub(super) fn load(store: &Store) -> FsResult<Self> {
        let mut t = LinkTable::default();
        for link in store.all_links() {
            let (name, holder) = link?;
            t.insert(name, holder);
        }
        Ok(t)
    }

    fn insert(&mut self, name: Ino, holder: Ino) {
        self.holder_of.insert(name, holder);
        self.names_of.entry(holder).or_default().insert(name);
    }

    /// Forget a name record; returns its holder.
    pub(super) fn remove(&mut self, name: Ino) -> Option<Ino> {
        let holder = self.holder_of.remove(&name)?;
        if let Some(names) = self.names_of.get_mut(&holder) {
            names.remove(&name);
            if names.is_empty() {
                self.names_of.remove(&holder);
            }
        }
        Some(holder)
    }
}

impl Vfs {
    /// The inode the kernel knows the file named by `ino` as (itself unless `ino` is a
    /// hard link's name record).
    pub(super) fn holder_of(&self, ino: Ino) -> Ino {
        self.links
            .lock()
            .unwrap()
            .holder_of
            .get(&ino)
            .copied()
            .unwrap_or(ino)
    }

    /// The name records of a holder (empty for a file with one name).
    pub(super) fn extra_names(&self, holder: Ino) -> Vec<Ino> {
        self.links
            .lock()
            .unwrap()
            .names_of
            .get(&holder)
            .map(|n| n.iter().copied().collect())
            .unwrap_or_default()
    }

    /// Whether `ino` is part of a hard link: a holder with other names, or a name record.
    pub(super) fn is_linked(&self, ino: Ino) -> bool {
        let t = self.links.lock().unwrap();
        t.holder_of.contains_key(&ino) || t.names_of.contains_key(&ino)
    }

    /// How many names the file has (`st_nlink` of a non-directory).
    pub(super) fn name_count(&self, inode: &Inode) -> u32 {
        let extra = self
            .links
            .lock()
            .unwrap()
            .names_of
            .get(&inode.ino)
            .map_or(0, |n| n.len() as u32);
        u32::from(inode.parent != 0) + extra
    }

    /// The inode a directory entry shows the kernel.
    pub(super) fn entry_inode(&self, ino: Ino) -> FsResult<Inode> {
        self.get(self.holder_of(ino))
    }

    /// `link()`: give the file `ino` (as the kernel knows it) another name.
    pub async fn link(&self, ino: Ino, new_parent: Ino, new_name: &str) -> FsResult<Attr> {
        self.writable()?;
        self.check_name(new_parent, new_name).await?;
        self.ensure_listed(new_parent).await?;
        self.check_not_fixed(new_parent).await?;
        let holder = self.holder_of(ino);
        let file = self.get(holder)?;
        if file.is_dir() {
            return Err(FsError::NotPermitted("hard links to folders".into()));
        }
        if self.name_count(&file) == 0 {
            // A file already unlinked (still open) cannot get a name back here.
            return Err(FsError::NotFound);
        }
        let regular = file.kind == EntryKind::File && file.special.is_none();
        if regular {
            // The content is kept whole here while the file has several names: the name
            // whose remote copy it came from may go while the others remain. Fetched now
            // where it can be; offline, the link is made all the same: the new name's
            // upload fetches it, and so does any job that would remove or replace the
            // remote copy it comes from first (see `preserve_orphans`).
            if let Err(e) = self
                .cache
                .ensure(
                    holder,
                    Self::source_of(&file).as_ref(),
                    file.size,
                    0,
                    file.size,
                )
                .await
            {
                tracing::debug!(ino = holder, error = %e, "a linked file's content is not all here yet");
            }
        }
        let _ns = self.ns_lock.lock().await;
        if self.store.child(new_parent, new_name)?.is_some() {
            return Err(FsError::Exists);
        }
        if !self.get(new_parent)?.is_dir() {
            return Err(FsError::NotDir);
        }
        self.check_case_twin(new_parent, new_name, None)?;
        self.check_path_len(new_parent, new_name, 0)?;
        let path = self.child_path(new_parent, new_name)?;
        let attr = {
            let _records = self.lock_records(&[holder]);
            let mut file = self.get(holder)?;
            if self.name_count(&file) == 0 {
                return Err(FsError::NotFound);
            }
            let name_ino = self.store.alloc_ino()?;
            let mut name = self.new_inode(
                name_ino, new_parent, new_name, file.kind, file.perm, file.uid, file.gid,
            );
            name.size = file.size;
            name.mtime = file.mtime;
            name.special = file.special;
            name.symlink_target = file.symlink_target.clone();
            name.generation = file.generation;
            name.dirty = regular;
            file.ctime = now();
            let mut b = Batch::default();
            b.put_inode(&name);
            b.put_inode(&file);
            b.link(new_parent, new_name, name_ino);
            b.put_link(name_ino, holder);
            let mut t = self.queue.begin(b);
            match (&file.kind, &file.symlink_target) {
                (EntryKind::Symlink, Some(target)) => t.enqueue_symlink(name_ino, &path, target),
                // FIFOs, sockets and devices never go to the remote.
                _ if regular => t.enqueue_upload(name_ino, &path, file.size, file.generation),
                _ => {}
            }
            t.commit()?;
            self.links.lock().unwrap().insert(name_ino, holder);
            self.cache.keep_for_links(holder, true);
            self.attr_of(&file)
        };
        self.touch_dir(new_parent)?;
        // Durable before link() returns, like a closed file's data.
        self.store.flush().await?;
        Ok(attr)
    }

    /// Whether some name of `holder` still has to get the holder's content on the remote
    /// (checked without locks, so that closing a linked file whose names are in step
    /// costs nothing more).
    pub(super) fn link_names_behind(&self, holder: Ino) -> bool {
        let Ok(file) = self.get(holder) else {
            return false;
        };
        self.extra_names(holder).into_iter().any(|name| {
            self.get(name).is_ok_and(|r| {
                r.generation != file.generation
                    || r.size != file.size
                    || (r.dirty && !self.queue.has_jobs_for(name))
            })
        })
    }

    /// After the holder's content changed: every other name gets the new content on the
    /// remote too. Each name's record and its upload job are written together, so a crash
    /// cannot leave a name marked changed with nothing queued to upload it. Call with the
    /// namespace lock held (paths are read and jobs queued).
    pub(super) fn sync_link_names(&self, holder: Ino) -> FsResult<()> {
        let names = self.extra_names(holder);
        if names.is_empty() {
            return Ok(());
        }
        let file = self.get(holder)?;
        if file.kind != EntryKind::File || file.special.is_some() {
            return Ok(());
        }
        for name in names {
            // (A name whose folder went is not written to; it leaves at the next start.)
            let Ok(Some(path)) = self.path_of(name) else {
                continue;
            };
            let _record = self.lock_records(&[name]);
            let mut rec = self.get(name)?;
            let behind = rec.generation != file.generation || rec.size != file.size;
            // (Also a name left changed without a job, as a crash could leave one.)
            let stranded = rec.dirty && !self.queue.has_jobs_for(name);
            if !behind && !stranded {
                continue;
            }
            if !rec.dirty {
                rec.dirty = true;
                rec.base_revision = rec.remote.as_ref().map(|x| x.revision.clone());
            }
            rec.generation = file.generation;
            rec.size = file.size;
            rec.mtime = file.mtime;
            let mut b = Batch::default();
            b.put_inode(&rec);
            let mut t = self.queue.begin(b);
            t.enqueue_upload(name, &path, rec.size, rec.generation);
            t.commit()?;
        }
        Ok(())
    }

    /// At start: the link table as the store left it, made whole. A name whose record
    /// went, or that no longer has a path (a folder above it was removed on the remote),
    /// leaves its link; holders are kept whole in the cache again, and a holder without a
    /// name of its own is an orphan kept for its names; names a crash left behind their
    /// holder's content are queued.
    pub(super) fn restore_links(&self) -> FsResult<()> {
        let pairs: Vec<(Ino, Ino)> = {
            let t = self.links.lock().unwrap();
            t.holder_of.iter().map(|(n, h)| (*n, *h)).collect()
        };
        for (name, holder) in pairs {
            // (A folder above it that went leaves no path, or no record to follow.)
            let reachable =
                self.store.get(holder)?.is_some() && matches!(self.path_of(name), Ok(Some(_)));
            if !reachable {
                // The name goes with its link: as an ordinary file it would upload a
                // content it does not have.
                let mut b = Batch::default();
                b.remove_link(name);
                if let Some(mut rec) = self.store.get(name)? {
                    b.unlink(rec.parent, &rec.name);
                    rec.parent = 0;
                    b.put_inode(&rec);
                }
                self.store.apply(b)?;
                self.links.lock().unwrap().remove(name);
            }
        }
        let holders: Vec<Ino> = self
            .links
            .lock()
            .unwrap()
            .names_of
            .keys()
            .copied()
            .collect();
        for holder in holders {
            self.cache.keep_for_links(holder, true);
            if self.get(holder)?.parent == 0 {
                self.orphans.lock().unwrap().insert(holder);
            }
            self.sync_link_names(holder)?;
        }
        Ok(())
    }

    /// A linked file's content starts to change: so does every name's (a remote edit of
    /// one of them meanwhile is then a conflict at its upload, not a newer version).
    pub(super) fn mark_names_changed(&self, holder: Ino) -> FsResult<()> {
        for name in self.extra_names(holder) {
            self.update(name, |r| {
                if !r.dirty {
                    r.dirty = true;
                    r.base_revision = r.remote.as_ref().map(|x| x.revision.clone());
                }
            })?;
        }
        Ok(())
    }

    /// A chmod of a linked file reaches every name's remote copy (where modes are kept).
    pub(super) fn sync_link_modes(&self, holder: Ino) -> FsResult<()> {
        let perm = self.get(holder)?.perm;
        for name in self.extra_names(holder) {
            let rec = self.update(name, |r| r.perm = perm)?;
            if rec.remote.is_some() || self.queue.is_running(name) {
                if let Some(path) = self.path_of(name)? {
                    self.queue.enqueue_set_mode(name, &path);
                }
            }
        }
        Ok(())
    }

    /// A name record left its link (its name went, or it became a file of its own): the
    /// holder's change time moves, and a holder left with no other name is an ordinary
    /// file again (or, without a name of its own, an unlinked one).
    pub(super) fn name_left_link(&self, name: Ino) {
        let Some(holder) = self.links.lock().unwrap().remove(name) else {
            return;
        };
        let _ = self.update(holder, |h| h.ctime = now());
        // Its link count changed.
        self.notify_inode(holder);
        if !self.extra_names(holder).is_empty() {
            return;
        }
        self.cache.keep_for_links(holder, false);
        self.maybe_purge_orphan(holder);
    }

    /// After a conflict at one name of a hard link (`ino`, its remote copy at `path`):
    /// the name leaves the link and shows `current`, what the remote holds there now (as
    /// a new file; nothing if the remote has nothing). Call with the namespace lock held.
    pub(super) fn split_name_off(
        &self,
        ino: Ino,
        path: &str,
        current: Option<&RemoteEntry>,
        conflict_copy: &str,
    ) -> FsResult<()> {
        // Under the record lock: a write to the file meanwhile must not be undone.
        let records = self.lock_records(&[ino]);
        let mut rec = self.get(ino)?;
        if rec.parent == 0 {
            return Ok(()); // the name went meanwhile
        }
        let (parent, name) = (rec.parent, rec.name.clone());
        let holder = self.holder_of(ino);
        let mut b = Batch::default();
        b.unlink(parent, &name);
        let left = self.orphan_name(&mut b, &mut rec);
        if let Some(cur) = current {
            let new_ino = self.store.alloc_ino()?;
            let mut file =
                self.new_inode(new_ino, parent, &name, cur.kind, rec.perm, rec.uid, rec.gid);
            file.size = cur.size;
            file.mtime = cur.mtime;
            file.ctime = cur.mtime;
            file.hash = cur.hash.clone();
            file.symlink_target = cur.symlink_target.clone();
            file.conflict = Some(conflict_copy.to_string());
            file.remote = Some(RemoteState {
                path: path.to_string(),
                revision: cur.revision.clone(),
                id: cur.id.clone(),
            });
            b.put_inode(&file);
            b.link(parent, &name, new_ino);
        }
        self.store.apply(b)?;
        drop(records);
        if let Some(n) = left {
            self.name_left_link(n);
        }
        self.notify_inode(holder);
        self.notify_entry(parent, &name);
        Ok(())
    }

    /// [`Vfs::orphan`] for an inode whose directory entry the caller removed, which may be
    /// part of a hard link: a name record also leaves its link (returned, to pass to
    /// [`Vfs::name_left_link`] once the batch is applied); a holder without its name lives
    /// on for its other names. Call with the namespace lock held.
    pub(super) fn orphan_name(&self, b: &mut Batch, inode: &mut Inode) -> Option<Ino> {
        let is_name_record = self.holder_of(inode.ino) != inode.ino;
        self.orphan(b, inode);
        if is_name_record {
            b.remove_link(inode.ino);
            Some(inode.ino)
        } else {
            None
        }
    }
}
