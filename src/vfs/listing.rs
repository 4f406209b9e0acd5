//! Directory listings: fetched from the provider once, kept in the metadata store,
//! refreshed after a TTL and merged with local changes that have not reached the remote.

use std::collections::{HashMap, HashSet};

use futures::StreamExt;

use super::*;
use crate::provider::{ProviderError, RemoteEntry};

impl Vfs {
    /// Make sure the children of `dir` are known. A warm directory costs no request.
    pub async fn ensure_listed(&self, dir: Ino) -> FsResult<()> {
        let inode = self.get(dir)?;
        if !inode.is_dir() {
            return Err(FsError::NotDir);
        }
        if !self.needs_listing(&inode) {
            return Ok(());
        }
        // One listing per directory at a time; the others wait for it and reuse it.
        let lock = {
            let mut locks = self.listing_locks.lock().unwrap();
            Arc::clone(locks.entry(dir).or_default())
        };
        let _g = lock.lock().await;
        let inode = self.get(dir)?;
        if !self.needs_listing(&inode) {
            return Ok(());
        }
        let Some(remote) = inode.remote.clone() else {
            return Ok(());
        };
        // A listing is a picture of the remote at one moment. If a write-back job finished
        // while it was taken, the picture may predate that job (a name it deleted, a file
        // it just uploaded) and merging it would bring back or drop entries: take it again.
        let mut tries = 0;
        let fetched = loop {
            let epoch = self.queue.completed();
            match self.fetch_listing(&remote.path).await {
                Ok(entries) => {
                    let entries = self.recognise_symlink_files(&remote.path, entries).await;
                    tries += 1;
                    if self.queue.completed() != epoch && tries < 4 {
                        continue;
                    }
                    break Ok((entries, epoch));
                }
                Err(e) => break Err(e),
            }
        };
        match fetched {
            Ok((entries, epoch)) => {
                let gone = self.confirm_vanished(dir, &remote.path, &entries).await?;
                self.merge_listing(dir, &remote.path, entries, Some(epoch), &gone)
                    .await
            }
            Err(e) => {
                let err = FsError::from(e);
                // An expired listing (or one a parent's change invalidated) whose entries
                // are still known: offline, the last listing is better than an error.
                if inode.listed_at.is_some() || self.store.has_children(dir).unwrap_or(false) {
                    tracing::debug!(dir, error = %err, "serving a stale listing");
                    Ok(())
                } else {
                    Err(err)
                }
            }
        }
    }

    fn needs_listing(&self, inode: &Inode) -> bool {
        if inode.remote.is_none() {
            return false;
        }
        let fresh = |at: SystemTime| {
            at.elapsed()
                .map(|e| e <= self.config.dir_ttl)
                .unwrap_or(false)
        };
        match inode.listed_at {
            None => true,
            Some(at) if fresh(at) => false,
            // The root's revision said nothing changed anywhere since this was listed.
            Some(at) => !self
                .tree_verified
                .lock()
                .unwrap()
                .is_some_and(|v| v >= at && fresh(v)),
        }
    }

    async fn fetch_listing(
        &self,
        path: &str,
    ) -> Result<Vec<RemoteEntry>, crate::provider::ProviderError> {
        let mut out = Vec::new();
        let mut pages = self.provider.list(path);
        while let Some(page) = pages.next().await {
            out.extend(page?);
        }
        Ok(out)
    }

    /// On providers without symbolic links, files in the portable link format are links.
    /// Only files of exactly that format's size are read to tell.
    async fn recognise_symlink_files(
        &self,
        dir: &str,
        mut entries: Vec<RemoteEntry>,
    ) -> Vec<RemoteEntry> {
        if self.provider.capabilities().symlinks {
            return entries;
        }
        for e in entries.iter_mut() {
            if e.kind != EntryKind::File || e.size != super::symlink_file::XSYM_LEN {
                continue;
            }
            let path = join_path(dir, &e.name);
            let Ok(stream) = self.provider.read_range(&path, None, 0, e.size).await else {
                continue;
            };
            if let Ok(data) = crate::provider::collect_stream(stream).await {
                if let Some(target) = super::symlink_file::decode(&data) {
                    e.kind = EntryKind::Symlink;
                    e.size = target.len() as u64;
                    e.symlink_target = Some(target);
                }
            }
        }
        entries
    }

    /// The names known below `dir` (with a remote copy) that `entries` lacks and that are
    /// really gone: each is looked up on its own. A listing is not proof of absence —
    /// `rclone serve webdav` ends a PROPFIND early, still well-formed, when a file goes
    /// away while it lists, and every name after it is missing from that answer.
    async fn confirm_vanished(
        &self,
        dir: Ino,
        remote_dir: &str,
        entries: &[RemoteEntry],
    ) -> FsResult<HashSet<String>> {
        let listed: HashSet<&str> = entries.iter().map(|e| e.name.as_str()).collect();
        let mut missing = Vec::new();
        for (name, ino) in self.store.children(dir)? {
            if listed.contains(name.as_str()) {
                continue;
            }
            if self.store.get(ino)?.is_some_and(|c| c.remote.is_some()) {
                missing.push(name);
            }
        }
        let gone = futures::stream::iter(missing)
            .map(|name| async move {
                let path = join_path(remote_dir, &name);
                match self.provider.stat(&path).await {
                    Err(ProviderError::NotFound(_)) => Some(name),
                    Ok(_) => {
                        tracing::debug!(%path, "absent from its folder's listing but there");
                        None
                    }
                    // Uncertain: keep it until a listing and a look agree.
                    Err(_) => None,
                }
            })
            .buffer_unordered(8)
            .filter_map(futures::future::ready)
            .collect()
            .await;
        Ok(gone)
    }

    /// Forget the listing of a directory so the next access fetches it again.
    pub fn invalidate_listing(&self, dir: Ino) -> FsResult<()> {
        self.update(dir, |d| d.listed_at = None)?;
        Ok(())
    }

    /// `epoch`: the queue's completion count when the listing was taken. If jobs have
    /// finished since, the listing is not merged (what is known is kept and the next
    /// access fetches again), unless nothing is known below the folder yet.
    async fn merge_listing(
        &self,
        dir: Ino,
        remote_dir: &str,
        entries: Vec<RemoteEntry>,
        epoch: Option<u64>,
        gone: &HashSet<String>,
    ) -> FsResult<()> {
        let _ns = self.ns_lock.lock().await;
        if let Some(epoch) = epoch {
            // A folder with nothing known below it needs even an uncertain listing.
            let known = self.store.has_children(dir)?;
            if known && self.queue.completed() != epoch {
                tracing::debug!(
                    dir,
                    "listing taken while write-back jobs finished: not merged"
                );
                return Ok(());
            }
        }
        let mut remote: HashMap<String, RemoteEntry> = HashMap::new();
        for e in entries {
            let reserved = dir == ROOT_LOCAL_INO && RESERVED_NAMES.contains(&e.name.as_str());
            if reserved || e.name.is_empty() || e.name.contains('/') || e.name.len() > 255 {
                if !reserved {
                    tracing::warn!(name = %e.name, "skipping a remote name that cannot be shown");
                }
                continue;
            }
            remote.insert(e.name.clone(), e);
        }
        let busy = self.queue.busy_inodes();
        // Applied in parts, each entry's changes whole within one (a large folder in one
        // batch costs sled far too much memory). A merge cut short between parts leaves
        // some entries merged and the folder not marked listed: it is listed again.
        let mut batch = Batch::default();
        let mut changed_inodes = Vec::new();
        let mut changed_entries = Vec::new();
        // Hard links' name records that left their link here.
        let mut left_links = Vec::new();
        // The folder's subfolders once merged, counted on the way: whatever the remote did,
        // and whatever a crash between a local change and its count left, the link count
        // is right after every listing.
        let mut subdirs = 0u32;
        for (name, ino) in self.store.children(dir)? {
            if batch.is_full() {
                self.store.apply(std::mem::take(&mut batch))?;
            }
            let Some(mut child) = self.store.get(ino)? else {
                batch.unlink(dir, &name);
                continue;
            };
            if child.special.is_some() {
                // A FIFO, socket or device node lives here only: it keeps its name, and a
                // remote entry of the same name stays hidden on this machine.
                remote.remove(&name);
                continue;
            }
            let settled = !busy.contains(&ino) && !child.dirty;
            let stays = match remote.remove(&name) {
                Some(e) if settled => {
                    let rev_changed =
                        child.remote.as_ref().map(|r| &r.revision) != Some(&e.revision);
                    // Replaced by another kind of entry; or, for one name of a hard link,
                    // changed by another client: that name leaves the link and shows the
                    // remote's content as a file of its own, the other names keep theirs.
                    if e.kind != child.kind || (rev_changed && self.is_linked(ino)) {
                        batch.unlink(dir, &name);
                        left_links.extend(self.orphan_name(&mut batch, &mut child));
                        if self.is_linked(ino) {
                            // The file's link count changed.
                            changed_inodes.push(self.holder_of(ino));
                        }
                        changed_entries.push(name.clone());
                        // (Counted below with the new entries, if it comes back.)
                        remote.insert(name, e);
                        continue;
                    }
                    if rev_changed {
                        self.apply_remote(&mut child, &e, remote_dir);
                        batch.put_inode(&child);
                        if !self.cache.validate(ino, &e.revision) {
                            self.stale_pages.lock().unwrap().insert(ino);
                        }
                        changed_inodes.push(ino);
                    }
                    true
                }
                Some(_) => true, // local changes pending: the local view wins until uploaded
                None => {
                    if settled && child.remote.is_some() && gone.contains(&name) {
                        // Deleted on the remote by someone else.
                        batch.unlink(dir, &name);
                        left_links.extend(self.orphan_name(&mut batch, &mut child));
                        if self.is_linked(ino) {
                            changed_inodes.push(self.holder_of(ino));
                        }
                        changed_entries.push(name);
                        false
                    } else {
                        true
                    }
                }
            };
            if stays && child.is_dir() {
                subdirs += 1;
            }
        }
        for (name, e) in remote {
            if batch.is_full() {
                self.store.apply(std::mem::take(&mut batch))?;
            }
            let path = join_path(remote_dir, &name);
            if self.queue.touches(&path) {
                continue; // a queued delete or rename will change this name
            }
            let ino = self.store.alloc_ino()?;
            let mut child = self.new_inode(
                ino,
                dir,
                &name,
                e.kind,
                if e.kind == EntryKind::Dir {
                    0o755
                } else {
                    0o644
                },
                self.config.uid,
                self.config.gid,
            );
            self.apply_remote(&mut child, &e, remote_dir);
            if let Some(mode) = e.mode {
                child.perm = (mode & 0o7777) as u16;
            }
            batch.put_inode(&child);
            batch.link(dir, &name, ino);
            changed_entries.push(name);
            if e.kind == EntryKind::Dir {
                subdirs += 1;
            }
        }
        self.store.apply(batch)?;
        self.update(dir, |d| {
            d.listed_at = Some(now());
            d.subdirs = Some(subdirs);
        })?;
        for n in left_links {
            self.name_left_link(n);
        }
        for ino in changed_inodes {
            self.notify_inode(ino);
        }
        for name in changed_entries {
            self.notify_entry(dir, &name);
        }
        let orphans: Vec<Ino> = self.orphans.lock().unwrap().iter().copied().collect();
        for o in orphans {
            self.maybe_purge_orphan(o);
        }
        Ok(())
    }

    fn apply_remote(&self, child: &mut Inode, e: &RemoteEntry, remote_dir: &str) {
        child.size = if e.kind == EntryKind::Dir { 0 } else { e.size };
        child.mtime = e.mtime;
        child.ctime = e.mtime;
        child.hash = e.hash.clone();
        child.symlink_target = e.symlink_target.clone();
        child.remote = Some(RemoteState {
            path: join_path(remote_dir, &e.name),
            revision: e.revision.clone(),
            id: e.id.clone(),
        });
        if e.kind == EntryKind::Dir && child.listed_at.is_some() {
            // Its content may have changed too.
            child.listed_at = None;
        }
    }

    /// Re-list every directory that was listed before (a manual or periodic refresh).
    pub fn expire_listings(&self) -> FsResult<()> {
        for inode in self.store.all_inodes() {
            let inode = inode?;
            if inode.is_dir() && inode.listed_at.is_some() {
                match self.update(inode.ino, |d| d.listed_at = None) {
                    // Removed since the scan read it: nothing to expire.
                    Ok(_) | Err(FsError::NotFound) => {}
                    Err(e) => return Err(e),
                }
            }
        }
        Ok(())
    }
}
