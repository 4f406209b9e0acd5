//! Open files: reads through the chunk cache with read-ahead, writes into the local copy,
//! and the hand-off to the write-back queue on close.

use std::sync::atomic::Ordering;

use super::*;

impl Vfs {
    pub(super) fn new_handle(&self, ino: Ino, writable: bool) -> u64 {
        let fh = self.next_handle.fetch_add(1, Ordering::SeqCst);
        self.handles.lock().unwrap().insert(
            fh,
            Handle {
                ino,
                writable,
                next_offset: 0,
                window: 0,
            },
        );
        *self.open_counts.lock().unwrap().entry(ino).or_default() += 1;
        fh
    }

    /// Open a file. Returns the handle and whether the kernel may keep its cached pages.
    pub async fn open(&self, ino: Ino, writable: bool) -> FsResult<(u64, bool)> {
        if writable {
            self.writable()?;
        }
        let inode = self.get(ino)?;
        if inode.is_dir() {
            return Err(FsError::IsDir);
        }
        if !inode.dirty {
            if let Some(r) = &inode.remote {
                if !self.cache.validate(ino, &r.revision) {
                    self.stale_pages.lock().unwrap().insert(ino);
                }
            }
        }
        let size_hints = self.provider.capabilities().size_hints;
        // (Not for a hard-linked file: its content is kept here, and a remote change to
        // one of its names splits that name off at the next listing instead.)
        if !inode.dirty
            && (inode.size == 0 || size_hints)
            && inode.kind == EntryKind::File
            && !self.is_linked(ino)
        {
            self.refresh_size(&inode, size_hints).await;
        }
        // Pages the kernel cached stay valid unless the remote content changed meanwhile:
        // local writes went through the kernel and updated them already.
        let keep_cache = !self.stale_pages.lock().unwrap().remove(&ino);
        Ok((self.new_handle(ino, writable), keep_cache))
    }

    /// Some remote files list as empty until asked (Google Docs, whose size is their
    /// export's), and some providers list sizes that are only hints (`size_hints`: IMAP).
    /// Ask, and when the size differs, keep the provider's and have the kernel read the
    /// file without trusting the size it cached (direct I/O) this time.
    async fn refresh_size(&self, inode: &Inode, size_hints: bool) {
        let Some(remote) = &inode.remote else { return };
        let Ok(entry) = self.provider.stat(&remote.path).await else {
            return;
        };
        // An empty answer for a file listed as empty tells nothing new.
        let news = entry.size != inode.size && (entry.size > 0 || size_hints);
        if news && entry.kind == EntryKind::File {
            let listed = inode.size;
            let updated = self.update(inode.ino, |i| {
                // Unless written or changed meanwhile.
                if !i.dirty && i.size == listed {
                    i.size = entry.size;
                    if let Some(r) = i.remote.as_mut() {
                        r.revision = entry.revision.clone();
                    }
                }
            });
            if updated.is_ok() {
                self.cache.validate(inode.ino, &entry.revision);
                self.direct_io.lock().unwrap().insert(inode.ino);
                self.notify_inode(inode.ino);
            }
        }
    }

    /// Whether the last open of `ino` wants the kernel to bypass its page cache.
    pub fn take_direct_io(&self, ino: Ino) -> bool {
        self.direct_io.lock().unwrap().remove(&ino)
    }

    pub async fn read(&self, ino: Ino, fh: u64, offset: u64, size: u32) -> FsResult<Vec<u8>> {
        let inode = self.get(ino)?;
        if inode.is_dir() {
            return Err(FsError::IsDir);
        }
        let source = Self::source_of(&inode);
        let end = offset.saturating_add(size as u64);
        let chunk = self.cache.chunk_size;
        // Sequential readers get a read-ahead window that doubles while they keep up and
        // shrinks back to one chunk on a seek.
        let prefetch = {
            let mut handles = self.handles.lock().unwrap();
            match handles.get_mut(&fh) {
                Some(h) => {
                    if offset == h.next_offset {
                        h.window = if h.window == 0 {
                            2 * chunk
                        } else {
                            (h.window * 2).min(self.config.readahead_max.max(chunk))
                        };
                    } else {
                        h.window = 0;
                    }
                    h.next_offset = end;
                    h.window
                }
                None => 0,
            }
        };
        if let (Some(src), true) = (&source, prefetch > 0) {
            self.cache
                .prefetch(ino, src, inode.size, end, end + prefetch);
        }
        let data = self
            .cache
            .read(ino, source.as_ref(), inode.size, offset, size as u64)
            .await;
        data.map_err(FsError::from)
    }

    pub async fn write(&self, ino: Ino, fh: u64, offset: u64, data: &[u8]) -> FsResult<u32> {
        self.writable()?;
        {
            let handles = self.handles.lock().unwrap();
            match handles.get(&fh) {
                Some(h) if h.writable => {}
                Some(_) => return Err(FsError::BadHandle),
                None => return Err(FsError::BadHandle),
            }
        }
        let end = offset.saturating_add(data.len() as u64);
        if end > MAX_FILE_SIZE {
            return Err(FsError::TooBig);
        }
        self.begin_local_change(ino)?;
        // Size check, gap fill and size update under the record lock, so that two
        // writers extending the file do not both see the old size.
        let _g = self.record_locks[(ino % 64) as usize].lock().unwrap();
        let mut inode = self.get(ino)?;
        // Dirty again under the lock: an upload that finished since begin_local_change
        // looked may have marked the file clean, and this write must not stay unseen.
        if !inode.dirty {
            inode.dirty = true;
            inode.base_revision = inode.remote.as_ref().map(|r| r.revision.clone());
            self.cache.set_dirty(ino, true);
        }
        if offset > inode.size {
            // The bytes between the old end and this write are zeros, not whatever the
            // remote holds there (it may be longer, or truncated locally since).
            self.cache.truncate(ino, inode.size, offset)?;
        }
        self.cache.write(ino, offset, data)?;
        inode.size = inode.size.max(end);
        inode.mtime = now();
        inode.ctime = inode.mtime;
        inode.generation += 1;
        self.store.put(&inode)?;
        Ok(data.len() as u32)
    }

    /// close(): the program's data is handed to the write-back queue and made durable
    /// before close returns, so a crash right after loses nothing.
    pub async fn flush(&self, ino: Ino, _fh: u64) -> FsResult<()> {
        self.commit_if_dirty(ino).await
    }

    async fn commit_if_dirty(&self, ino: Ino) -> FsResult<()> {
        let inode = match self.store.get(ino)? {
            Some(i) => i,
            None => return Ok(()),
        };
        // A hard link's other names may need the content too (cheap to ask when not).
        let linked = self.is_linked(ino) && self.link_names_behind(ino);
        if (!inode.dirty || inode.parent == 0) && !linked {
            return Ok(());
        }
        {
            // The path is read and the job queued under the namespace lock: a rename
            // running meanwhile (a RELEASE arrives after close() returned) must not leave
            // this job at the old name.
            let _ns = self.ns_lock.lock().await;
            let inode = self.get(ino)?;
            self.cache.sync_record(ino);
            if inode.dirty {
                if let Some(path) = self.path_of(ino)? {
                    self.queue
                        .enqueue_upload(ino, &path, inode.size, inode.generation);
                }
            }
            // A hard link's other names get the content on the remote too.
            self.sync_link_names(ino)?;
        }
        self.store.flush().await?;
        Ok(())
    }

    pub async fn fsync(&self, ino: Ino, _fh: u64) -> FsResult<()> {
        self.cache.fsync(ino)?;
        self.commit_if_dirty(ino).await
    }

    pub async fn release(&self, fh: u64) -> FsResult<()> {
        let handle = self.handles.lock().unwrap().remove(&fh);
        let Some(h) = handle else {
            return Err(FsError::BadHandle);
        };
        let last = {
            let mut counts = self.open_counts.lock().unwrap();
            let c = counts.entry(h.ino).or_default();
            *c = c.saturating_sub(1);
            if *c == 0 {
                counts.remove(&h.ino);
                true
            } else {
                false
            }
        };
        if h.writable {
            // Writes through mmap may arrive after the last flush.
            self.commit_if_dirty(h.ino).await?;
        }
        if last {
            self.maybe_purge_orphan(h.ino);
        }
        Ok(())
    }

    /// Replace a file's content with one of its recorded versions (queued for upload
    /// like any other change, which records a new version in turn).
    pub async fn restore_version(&self, path: &str, number: usize) -> FsResult<()> {
        self.writable()?;
        let ino = self.resolve(path).await?;
        let versions = self.versions.list(path).await.map_err(FsError::from)?;
        let v = versions
            .iter()
            .find(|v| v.number == number)
            .ok_or_else(|| FsError::Invalid(format!("{path} has no version {number}")))?;
        let tmp = self.staging.join(format!("restore-{ino}"));
        self.versions
            .download(v, &tmp)
            .await
            .map_err(FsError::from)?;
        let data = tokio::fs::read(&tmp).await?;
        let _ = tokio::fs::remove_file(&tmp).await;
        let inode = self.begin_local_change(ino)?;
        self.cache.truncate(ino, inode.size, 0)?;
        self.cache.write(ino, 0, &data)?;
        self.update(ino, |i| {
            i.size = data.len() as u64;
            i.mtime = now();
            i.generation += 1;
        })?;
        // Called from the CLI, which may read the file right after: the kernel must have
        // dropped the old size first.
        self.notify_inode_and_wait(ino).await;
        self.commit_if_dirty(ino).await
    }
}
