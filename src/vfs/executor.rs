//! Running write-back jobs against the provider, and bringing the metadata store up to
//! date with what landed.

use async_trait::async_trait;
use sha2::{Digest, Sha256};

use super::*;
use crate::provider::{split_path, ProviderError, UploadOptions};
use crate::writeback::{rewrite, Job, JobExecutor, JobKind, JobOutcome, Progress};

/// Adapter so the queue can hold the executor without owning the Vfs strongly.
pub struct VfsExecutor(pub std::sync::Weak<Vfs>);

#[async_trait]
impl JobExecutor for VfsExecutor {
    async fn execute(&self, seq: u64, job: &Job, progress: &Progress) -> JobOutcome {
        let Some(vfs) = self.0.upgrade() else {
            return JobOutcome::Retry("filesystem is shutting down".into());
        };
        let result = match &job.kind {
            JobKind::Upload => vfs.run_upload(seq, job, progress).await,
            JobKind::Mkdir => vfs.run_mkdir(job).await,
            JobKind::Symlink { target } => vfs.run_symlink(job, target).await,
            JobKind::Rename { from, overwrite } => vfs.run_rename(job, from, *overwrite).await,
            JobKind::Delete => vfs.run_delete(job).await,
        };
        match result {
            Ok(()) => {
                vfs.mark_reachable();
                JobOutcome::Done
            }
            Err(e) => {
                let fs_err = FsError::from(e.clone());
                vfs.note_remote_error(&fs_err);
                // An expired login is fixed by `cloudmount login`: keep the job waiting
                // (with backoff) instead of parking it, so nothing queued is lost.
                if e.is_retryable() || matches!(e, ProviderError::Auth(_)) {
                    JobOutcome::Retry(e.to_string())
                } else {
                    if let Ok(Some(i)) = vfs.store.get(job.ino) {
                        let _ = vfs.update(i.ino, |i| i.upload_error = Some(e.to_string()));
                    }
                    JobOutcome::Permanent(e.to_string())
                }
            }
        }
    }
}

type JobResult = Result<(), ProviderError>;

fn store_err(e: impl std::fmt::Display) -> ProviderError {
    ProviderError::Io(format!("metadata store: {e}"))
}

fn cache_err(e: crate::cache::CacheError) -> ProviderError {
    match e {
        crate::cache::CacheError::Provider(p) => p,
        other => ProviderError::Io(other.to_string()),
    }
}

/// "report.txt" -> "report (conflict 2026-11-21 142233).txt"
pub fn conflict_name(name: &str, at: chrono::DateTime<chrono::Local>) -> String {
    let stamp = at.format("%Y-%m-%d %H%M%S");
    match name.rfind('.') {
        Some(i) if i > 0 => format!("{} (conflict {stamp}){}", &name[..i], &name[i..]),
        _ => format!("{name} (conflict {stamp})"),
    }
}

impl Vfs {
    /// Before the remote object at `path` is replaced or removed, give open handles of
    /// files that still live there the rest of their content.
    async fn preserve_open_orphans(&self, path: &str) {
        let orphans: Vec<Ino> = self.orphans.lock().unwrap().iter().copied().collect();
        for ino in orphans {
            if !self.is_open(ino) {
                continue;
            }
            let Ok(inode) = self.get(ino) else { continue };
            let matches = inode
                .remote
                .as_ref()
                .map(|r| r.path == path)
                .unwrap_or(false);
            if matches && !inode.dirty {
                if let Some(src) = Self::source_of(&inode) {
                    let _ = self
                        .cache
                        .ensure(ino, Some(&src), inode.size, 0, inode.size)
                        .await;
                }
            }
        }
    }

    async fn run_upload(&self, seq: u64, job: &Job, progress: &Progress) -> JobResult {
        let Some(inode) = self.store.get(job.ino).map_err(store_err)? else {
            return Ok(()); // deleted meanwhile
        };
        if !inode.dirty {
            return Ok(());
        }
        let generation = inode.generation;
        // The parts never fetched come from the revision the edit started from.
        let base = match (&inode.remote, &inode.base_revision) {
            (Some(r), Some(rev)) => Some(crate::cache::Source {
                path: r.path.clone(),
                revision: rev.clone(),
            }),
            _ => None,
        };
        if let Some(src) = &base {
            self.cache
                .ensure(job.ino, Some(src), inode.size, 0, inode.size)
                .await
                .map_err(cache_err)?;
        }
        if !self.has_writable_handle(job.ino) {
            // Nobody can change the file while it goes up (a writer that opens it meanwhile
            // bumps the generation, and another upload follows): send the cached file
            // itself and save a full copy of it.
            let data = self.cache.data_path(job.ino);
            if data.exists() {
                return self
                    .upload_snapshot(seq, job, &inode, generation, &data, progress)
                    .await;
            }
        }
        let snapshot = self.staging.join(format!("upload-{seq}"));
        self.cache
            .snapshot(job.ino, inode.size, &snapshot)
            .map_err(cache_err)?;
        let result = self
            .upload_snapshot(seq, job, &inode, generation, &snapshot, progress)
            .await;
        let _ = tokio::fs::remove_file(&snapshot).await;
        result
    }

    async fn upload_snapshot(
        &self,
        seq: u64,
        job: &Job,
        inode: &Inode,
        generation: u64,
        snapshot: &std::path::Path,
        progress: &Progress,
    ) -> JobResult {
        // Hash on another core while the upload runs.
        let hashing = tokio::spawn(sha256_file(snapshot.to_path_buf()));
        self.preserve_open_orphans(&job.path).await;
        let options = UploadOptions {
            expected_revision: Some(inode.base_revision.clone()),
            mtime: Some(inode.mtime),
            mode: Some(inode.perm as u32),
        };
        // Durable before it goes out, so a crash before we record the result cannot turn
        // our own landed upload into a "conflict" later.
        self.queue.mark_in_flight(seq, inode.size, inode.mtime);
        self.store.flush().await.map_err(store_err)?;
        let uploaded = self.provider.upload(&job.path, snapshot, &options).await;
        progress.set(seq, inode.size);
        let entry = match uploaded {
            Ok(e) => e,
            Err(ProviderError::PreconditionFailed(_)) => {
                match self.landed_earlier(job, &job.path).await {
                    // An attempt before a crash landed: that revision is our base now.
                    Some(base) => {
                        let retry = UploadOptions {
                            expected_revision: Some(Some(base)),
                            ..options.clone()
                        };
                        match self.provider.upload(&job.path, snapshot, &retry).await {
                            Ok(e) => e,
                            Err(ProviderError::PreconditionFailed(_)) => {
                                return self.save_conflict_copy(job, inode, snapshot).await
                            }
                            Err(e) => return Err(e),
                        }
                    }
                    // The remote has something else than expected. If it is this very
                    // content (an attempt whose reply was lost), it is ours.
                    None => match self.remote_holds(&job.path, snapshot, inode.size).await {
                        Some(e) => e,
                        None => return self.save_conflict_copy(job, inode, snapshot).await,
                    },
                }
            }
            Err(e) => return Err(e),
        };
        let revision = entry.revision.clone();
        let hash = hashing
            .await
            .map_err(|e| ProviderError::Io(e.to_string()))??;
        let still_current = {
            let updated = self
                .update(job.ino, |i| {
                    i.remote = Some(RemoteState {
                        path: job.path.clone(),
                        revision: revision.clone(),
                        id: entry.id.clone(),
                    });
                    i.base_revision = Some(revision.clone());
                    i.hash = Some(format!("sha256:{hash}"));
                    i.upload_error = None;
                    if i.generation == generation {
                        i.dirty = false;
                    }
                })
                .map_err(store_err)?;
            updated.generation == generation
        };
        if still_current {
            self.cache.mark_uploaded(job.ino, &revision);
        }
        // A version is recorded for content that stayed put during the upload; if it
        // changed, the next upload records the result.
        if still_current && !self.provider.capabilities().native_versions {
            if let Err(e) = self.versions.record(&job.path, snapshot, &hash).await {
                tracing::warn!(path = %job.path, error = %e, "could not record a version");
            }
        }
        Ok(())
    }

    /// The remote revision at `path` when it is what an earlier attempt of this job sent
    /// (same size and modification time), i.e. the attempt landed before a crash.
    async fn landed_earlier(&self, job: &Job, path: &str) -> Option<String> {
        let (size, mtime) = job.in_flight?;
        let e = self.provider.stat(path).await.ok()?;
        let close = match e.mtime.duration_since(mtime) {
            Ok(d) => d,
            Err(back) => back.duration(),
        } < std::time::Duration::from_secs(1);
        (e.kind == EntryKind::File && e.size == size && close).then_some(e.revision)
    }

    /// The remote entry at `path` when its content equals the local file's.
    async fn remote_holds(
        &self,
        path: &str,
        local: &std::path::Path,
        size: u64,
    ) -> Option<crate::provider::RemoteEntry> {
        const COMPARE_LIMIT: u64 = 16 << 20;
        let entry = self.provider.stat(path).await.ok()?;
        if entry.kind != EntryKind::File || entry.size != size || size > COMPARE_LIMIT {
            return None;
        }
        let stream = self.provider.read_range(path, None, 0, size).await.ok()?;
        let remote = crate::provider::collect_stream(stream).await.ok()?;
        let mine = tokio::fs::read(local).await.ok()?;
        (remote == mine).then_some(entry)
    }

    /// The remote changed since the local edit began: keep both. The remote version
    /// stays under the name; the local edit goes beside it as a conflict copy.
    async fn save_conflict_copy(
        &self,
        job: &Job,
        inode: &Inode,
        snapshot: &std::path::Path,
    ) -> JobResult {
        let (dir, name) = split_path(&job.path);
        let copy_name = conflict_name(name, chrono::Local::now());
        let copy_path = join_path(dir, &copy_name);
        let entry = self
            .provider
            .upload(
                &copy_path,
                snapshot,
                &UploadOptions {
                    expected_revision: Some(None),
                    mtime: Some(inode.mtime),
                    mode: Some(inode.perm as u32),
                },
            )
            .await?;
        let current = self.provider.stat(&job.path).await.ok();
        let _ns = self.ns_lock.lock().await;
        let parent = inode.parent;
        if parent != 0 {
            let copy_ino = self.store.alloc_ino().map_err(store_err)?;
            let mut copy = self.new_inode(
                copy_ino,
                parent,
                &copy_name,
                EntryKind::File,
                inode.perm,
                inode.uid,
                inode.gid,
            );
            copy.size = inode.size;
            copy.mtime = inode.mtime;
            copy.remote = Some(RemoteState {
                path: copy_path.clone(),
                revision: entry.revision.clone(),
                id: entry.id.clone(),
            });
            let _ = self.cache.transfer(job.ino, copy_ino);
            self.cache.mark_uploaded(copy_ino, &entry.revision);
            let mut b = Batch::default();
            b.put_inode(&copy);
            b.link(parent, &copy_name, copy_ino);
            self.store.apply(b).map_err(store_err)?;
            self.notify_entry(parent, &copy_name);
        }
        self.cache.remove(job.ino);
        self.update(job.ino, |i| {
            i.dirty = false;
            i.conflict = Some(copy_name.clone());
            i.base_revision = None;
            if let Some(cur) = &current {
                i.size = cur.size;
                i.mtime = cur.mtime;
                i.remote = Some(RemoteState {
                    path: job.path.clone(),
                    revision: cur.revision.clone(),
                    id: cur.id.clone(),
                });
            }
        })
        .map_err(store_err)?;
        self.stale_pages.lock().unwrap().insert(job.ino);
        self.notify_inode(job.ino);
        self.record_conflict(ConflictRecord {
            path: job.path.clone(),
            conflict_copy: copy_path,
            at: now(),
        });
        tracing::warn!(path = %job.path, copy = %copy_name, "conflict: the remote changed; local edit saved beside it");
        Ok(())
    }

    async fn run_mkdir(&self, job: &Job) -> JobResult {
        if self.store.get(job.ino).map_err(store_err)?.is_none() {
            return Ok(());
        }
        let entry = match self.provider.mkdir(&job.path).await {
            Ok(e) => e,
            Err(ProviderError::AlreadyExists(_)) => {
                let e = self.provider.stat(&job.path).await?;
                if e.kind != EntryKind::Dir {
                    return Err(ProviderError::AlreadyExists(job.path.clone()));
                }
                e
            }
            Err(e) => return Err(e),
        };
        self.update(job.ino, |i| {
            i.remote = Some(RemoteState {
                path: job.path.clone(),
                revision: entry.revision.clone(),
                id: entry.id.clone(),
            });
        })
        .map_err(store_err)?;
        Ok(())
    }

    async fn run_symlink(&self, job: &Job, target: &str) -> JobResult {
        if self.store.get(job.ino).map_err(store_err)?.is_none() {
            return Ok(());
        }
        let created = if self.provider.capabilities().symlinks {
            self.provider.symlink(&job.path, target).await
        } else {
            self.upload_symlink_file(&job.path, target).await
        };
        let entry = match created {
            Ok(e) => e,
            Err(ProviderError::AlreadyExists(_) | ProviderError::PreconditionFailed(_)) => {
                self.provider.stat(&job.path).await?
            }
            Err(e) => return Err(e),
        };
        self.update(job.ino, |i| {
            i.remote = Some(RemoteState {
                path: job.path.clone(),
                revision: entry.revision.clone(),
                id: entry.id.clone(),
            });
        })
        .map_err(store_err)?;
        Ok(())
    }

    /// A symbolic link as a regular file in the portable format (symlink_file.rs).
    async fn upload_symlink_file(
        &self,
        path: &str,
        target: &str,
    ) -> Result<crate::provider::RemoteEntry, ProviderError> {
        let content = super::symlink_file::encode(target).ok_or_else(|| {
            ProviderError::InvalidName(format!("symlink target too long: {target}"))
        })?;
        let tmp = self
            .staging
            .join(format!("symlink-{}", rand::random::<u64>()));
        tokio::fs::write(&tmp, &content).await?;
        let options = UploadOptions {
            expected_revision: Some(None),
            ..Default::default()
        };
        let result = self.provider.upload(path, &tmp, &options).await;
        let _ = tokio::fs::remove_file(&tmp).await;
        result
    }

    async fn run_rename(&self, job: &Job, from: &str, overwrite: bool) -> JobResult {
        self.preserve_open_orphans(&job.path).await;
        let entry = match self.provider.rename(from, &job.path, overwrite).await {
            Ok(e) => Some(e),
            // Already moved (the job ran before a crash, or someone else moved it).
            Err(ProviderError::NotFound(_)) if self.provider.stat(&job.path).await.is_ok() => None,
            Err(e) => return Err(e),
        };
        // Everything that lived below the old name now lives below the new one.
        let mut moved = Vec::new();
        for inode in self.store.all_inodes() {
            let inode = inode.map_err(store_err)?;
            if let Some(r) = &inode.remote {
                if let Some(p) = rewrite(&r.path, from, &job.path) {
                    moved.push((inode.ino, p));
                }
            }
        }
        for (ino, p) in moved {
            let rev = entry
                .as_ref()
                .filter(|_| ino == job.ino)
                .map(|e| e.revision.clone());
            self.update(ino, |i| {
                if let Some(r) = i.remote.as_mut() {
                    r.path = p.clone();
                    // Some providers give a moved object a new revision; cached content
                    // of a file stays valid, so follow it.
                    if let Some(rev) = &rev {
                        if !i.dirty && i.kind != EntryKind::Dir {
                            if i.base_revision.as_deref() == Some(r.revision.as_str()) {
                                i.base_revision = Some(rev.clone());
                            }
                            r.revision = rev.clone();
                        }
                    }
                }
            })
            .map_err(store_err)?;
            if let Some(rev) = &rev {
                let rec = self.cache.record(ino);
                if rec.map(|r| !r.dirty).unwrap_or(false) {
                    self.cache.mark_uploaded(ino, rev);
                }
            }
        }
        if !self.provider.capabilities().native_versions {
            if let Err(e) = self.versions.follow_rename(from, &job.path).await {
                tracing::debug!(error = %e, "no versions moved");
            }
        }
        Ok(())
    }

    async fn run_delete(&self, job: &Job) -> JobResult {
        self.preserve_open_orphans(&job.path).await;
        match self.provider.delete(&job.path).await {
            Ok(()) | Err(ProviderError::NotFound(_)) => {}
            Err(e) if e.is_retryable() || matches!(e, ProviderError::Auth(_)) => return Err(e),
            Err(e) => {
                // The remote refuses (a shared drive's folder, a locked or protected
                // item): it stays there, so the next listing shows it again rather than
                // a parked job hiding it forever.
                tracing::warn!(path = %job.path, error = %e, "the remote refused a delete; the entry comes back");
                self.queue
                    .note_error(format!("{}: delete refused: {e}", job.path));
                if let Ok(Some(dir)) = self.find_by_remote_path(split_path(&job.path).0) {
                    let _ = self.invalidate_listing(dir);
                    self.notify_entry(dir, split_path(&job.path).1);
                }
                return Ok(());
            }
        }
        if let Ok(Some(inode)) = self.store.get(job.ino) {
            if inode.parent == 0 {
                let _ = self.update(job.ino, |i| i.remote = None);
            }
        }
        // The inode may be purgeable now that its last job is done.
        let ino = job.ino;
        let me = self.orphans.lock().unwrap().contains(&ino);
        if me {
            tokio::task::yield_now().await;
            self.maybe_purge_orphan(ino);
        }
        Ok(())
    }
}

async fn sha256_file(path: std::path::PathBuf) -> Result<String, ProviderError> {
    tokio::task::spawn_blocking(move || {
        use std::io::Read;
        let mut f = std::fs::File::open(&path)?;
        let mut h = Sha256::new();
        let mut buf = vec![0u8; 1 << 20];
        loop {
            let n = f.read(&mut buf)?;
            if n == 0 {
                break;
            }
            h.update(&buf[..n]);
        }
        Ok(hex::encode(h.finalize()))
    })
    .await
    .map_err(|e| ProviderError::Io(e.to_string()))?
}
