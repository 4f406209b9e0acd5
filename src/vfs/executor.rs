//! Running write-back jobs against the provider, and bringing the metadata store up to
//! date with what landed.

use async_trait::async_trait;
use sha2::{Digest, Sha256};

use super::*;
use crate::provider::{split_path, ProviderError, UploadOptions};
use crate::writeback::{rewrite, Job, JobExecutor, JobKind, JobOutcome, Progress, SentContent};

/// What `look_at_remote` found.
#[derive(Debug)]
enum Found {
    /// The revision the job expected to replace: its attempt did not land.
    Unchanged,
    /// Bytes that an attempt of this job sent (which one is given).
    Sent(Box<crate::provider::RemoteEntry>, SentContent),
    Absent,
    /// The content we last knew there (our last confirmed upload, or what a listing
    /// said) under a new revision (some servers give a moved file a new ETag): nobody
    /// else's edit, so ours may replace it.
    Known(Box<crate::provider::RemoteEntry>),
    /// Somebody else's content (or not a file).
    Foreign,
}

fn is_precondition(e: &ProviderError) -> bool {
    matches!(
        e,
        ProviderError::PreconditionFailed(_) | ProviderError::AlreadyExists(_)
    )
}

/// An error met while resolving an uncertain outcome: whatever it is, the job tries again
/// later and looks again; it is never a reason to park the job or to guess.
fn retryable(e: ProviderError) -> ProviderError {
    if e.is_retryable() || matches!(e, ProviderError::Auth(_)) {
        e
    } else {
        ProviderError::Transient(format!("{e} (will look again)"))
    }
}

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
            JobKind::SetMode => vfs.run_set_mode(job).await,
        };
        match result {
            Ok(()) => JobOutcome::Done,
            Err(e) => {
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
    /// files that still live there the rest of their content, and hard-linked files that
    /// lost their own name there (their other names still show it) all of it. For the
    /// latter a failure holds the job back: their content must not go with the object.
    async fn preserve_orphans(&self, path: &str) -> JobResult {
        let orphans: Vec<Ino> = self.orphans.lock().unwrap().iter().copied().collect();
        for ino in orphans {
            let linked = self.is_linked(ino);
            if !self.is_open(ino) && !linked {
                continue;
            }
            let Ok(inode) = self.get(ino) else { continue };
            let Some(remote) = inode.remote.as_ref().filter(|r| r.path == path) else {
                continue;
            };
            if linked && inode.kind == EntryKind::File && inode.special.is_none() {
                // A local edit's holes come from the revision it started from.
                let src = crate::cache::Source {
                    path: remote.path.clone(),
                    revision: match (&inode.base_revision, inode.dirty) {
                        (Some(base), true) => base.clone(),
                        _ => remote.revision.clone(),
                    },
                };
                match self
                    .cache
                    .ensure(ino, Some(&src), inode.size, 0, inode.size)
                    .await
                    .map_err(cache_err)
                {
                    Ok(()) => {}
                    // Not now (offline, a 503): the job waits and tries again.
                    Err(e) if e.is_retryable() || matches!(e, ProviderError::Auth(_)) => {
                        return Err(e)
                    }
                    // Gone for good (removed or rewritten by someone else meanwhile):
                    // what is not here cannot be had any more, and the path's jobs must
                    // not wait for it forever.
                    Err(e) => {
                        tracing::warn!(path, ino, error = %e,
                            "a hard-linked file's content could not all be fetched before its remote copy went");
                        self.queue.note_error(format!(
                            "{path}: part of a hard-linked file's content was lost: {e}"
                        ));
                    }
                }
            } else if !inode.dirty {
                if let Some(src) = Self::source_of(&inode) {
                    let _ = self
                        .cache
                        .ensure(ino, Some(&src), inode.size, 0, inode.size)
                        .await;
                }
            }
        }
        Ok(())
    }

    async fn run_upload(&self, seq: u64, job: &Job, progress: &Progress) -> JobResult {
        let Some(mut inode) = self.store.get(job.ino).map_err(store_err)? else {
            return Ok(()); // deleted meanwhile
        };
        // A file without a name any more needs no upload: the jobs queued after this one
        // delete or move whatever is at the old name, and accept finding nothing there.
        if !inode.dirty || inode.parent == 0 {
            return Ok(());
        }
        let mut generation = inode.generation;
        // A hard link's name record sends its file's content (kept whole while linked);
        // the name's own record says what the remote holds at its name.
        let holder = self.holder_of(job.ino);
        let base = if holder != job.ino {
            let file = self
                .store
                .get(holder)
                .map_err(store_err)?
                .ok_or_else(|| store_err(format!("the file linked as {} is gone", job.path)))?;
            // The name is in step only if the file's content is still the one its record
            // was last brought to: otherwise (a write not closed yet) it stays changed,
            // and the file's close queues it again.
            generation = file.generation;
            inode.size = file.size;
            inode.mtime = file.mtime;
            inode.perm = file.perm;
            Self::source_of(&file)
        } else {
            // The parts never fetched come from the revision the edit started from.
            match (&inode.remote, &inode.base_revision) {
                (Some(r), Some(rev)) => Some(crate::cache::Source {
                    path: r.path.clone(),
                    revision: rev.clone(),
                }),
                _ => None,
            }
        };
        if let Some(src) = &base {
            self.cache
                .ensure(holder, Some(src), inode.size, 0, inode.size)
                .await
                .map_err(cache_err)?;
        }
        // Always a private copy: the bytes sent must be exactly the bytes fingerprinted
        // (a writer may open the cached file while it goes up), or an uncertain outcome
        // could not be resolved by comparing.
        let snapshot = self.staging.join(format!("upload-{seq}"));
        self.cache
            .snapshot(holder, inode.size, &snapshot)
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
        self.preserve_orphans(&job.path).await?;
        // What this attempt sends, durable before it goes out: if the outcome is uncertain
        // (a cut reply, a crash), it is how we recognise our own bytes on the remote.
        let sent = fingerprint_file(snapshot.to_path_buf()).await?;
        let all_sent = self.queue.mark_sending(seq, sent.clone());
        self.store.flush().await.map_err(store_err)?;
        let options = UploadOptions {
            expected_revision: Some(inode.base_revision.clone()),
            mtime: Some(inode.mtime),
            mode: Some(inode.perm as u32),
        };
        tracing::debug!(seq, ino = job.ino, path = %job.path, base = ?inode.base_revision,
            size = sent.size, sha256 = %&sent.sha256[..12], "uploading");
        let uploaded = self.provider.upload(&job.path, snapshot, &options).await;
        progress.set(seq, inode.size);
        let entry = match uploaded {
            Ok(e) => e,
            Err(err) if err.is_retryable() || is_precondition(&err) => {
                let known = inode
                    .hash
                    .as_deref()
                    .filter(|_| inode.base_revision.is_some());
                // Bytes this mount itself last put at the path (an earlier file there,
                // since replaced or moved away in the mount) are not somebody else's edit.
                let mut ours = all_sent.clone();
                ours.extend(self.landed_at(&job.path));
                let found = self
                    .look_at_remote(&job.path, inode.base_revision.as_deref(), &ours, known)
                    .await?;
                tracing::debug!(seq, path = %job.path, error = %err, found = ?found,
                    "upload outcome uncertain or refused: looked at the remote");
                match found {
                    Found::Sent(e, which) if which == sent => *e,
                    // An earlier attempt of this job landed (before a crash, or its reply
                    // was lost) and the content changed since: that revision is ours to
                    // replace.
                    Found::Sent(e, _) | Found::Known(e) => {
                        self.upload_expecting(&job.path, snapshot, &options, Some(e.revision))
                            .await?
                    }
                    // Nothing there although we expected our base revision: someone else
                    // deleted it meanwhile. The local edit is not thrown away.
                    Found::Absent if inode.base_revision.is_some() => {
                        self.upload_expecting(&job.path, snapshot, &options, None)
                            .await?
                    }
                    Found::Absent | Found::Unchanged => return Err(retryable(err)),
                    Found::Foreign => {
                        return self
                            .save_conflict_copy(seq, job, inode, snapshot, &sent)
                            .await
                    }
                }
            }
            Err(e) => return Err(e),
        };
        let revision = entry.revision.clone();
        let hash = sent.sha256.clone();
        self.note_landed(&job.path, &sent);
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
                        // Under the record lock, like a write marking it dirty again:
                        // the cache must not call clean a file a write just changed.
                        // (A hard link's name record has no content of its own.)
                        if self.holder_of(job.ino) == job.ino {
                            self.cache.mark_uploaded(job.ino, &revision);
                        }
                    }
                })
                .map_err(store_err)?;
            updated.generation == generation
        };
        // A version is recorded for content that stayed put during the upload; if it
        // changed, the next upload records the result.
        if still_current && !self.provider.capabilities().native_versions {
            if let Err(e) = self.versions.record(&job.path, snapshot, &hash).await {
                tracing::warn!(path = %job.path, error = %e, "could not record a version");
            }
        }
        Ok(())
    }

    /// Remember what this mount last uploaded to `path` (see `landed_at`).
    fn note_landed(&self, path: &str, sent: &SentContent) {
        if let Ok(bytes) = serde_json::to_vec(sent) {
            if let Err(e) = self.store.set_meta(&format!("landed:{path}"), &bytes) {
                tracing::warn!(path, error = %e, "could not remember an upload");
            }
        }
    }

    /// What this mount last uploaded to `path`, if anything.
    fn landed_at(&self, path: &str) -> Option<SentContent> {
        let bytes = self.store.get_meta(&format!("landed:{path}")).ok()??;
        serde_json::from_slice(&bytes).ok()
    }

    /// Upload again after looking: the remote is now known to be at `expected` (`None`:
    /// nothing there). Any failure leaves the outcome to the next attempt's look.
    async fn upload_expecting(
        &self,
        path: &str,
        snapshot: &std::path::Path,
        options: &UploadOptions,
        expected: Option<String>,
    ) -> Result<crate::provider::RemoteEntry, ProviderError> {
        let options = UploadOptions {
            expected_revision: Some(expected),
            ..options.clone()
        };
        self.provider
            .upload(path, snapshot, &options)
            .await
            .map_err(retryable)
    }

    /// What the remote holds at `path`, decided from facts: the revision we expected
    /// (`Unchanged`), bytes one of this job's attempts sent (`Sent`, proven by the
    /// provider's hash or by reading the content back), nothing, or somebody else's
    /// content. A failure while looking is returned as an error (the job tries again
    /// later), never taken for "somebody else changed it".
    async fn look_at_remote(
        &self,
        path: &str,
        expected: Option<&str>,
        sent: &[SentContent],
        known: Option<&str>,
    ) -> Result<Found, ProviderError> {
        let entry = match self.provider.stat(path).await {
            Ok(e) => e,
            Err(ProviderError::NotFound(_)) => return Ok(Found::Absent),
            Err(e) => return Err(retryable(e)),
        };
        if entry.kind != EntryKind::File {
            return Ok(Found::Foreign);
        }
        if expected == Some(entry.revision.as_str()) {
            return Ok(Found::Unchanged);
        }
        if let (Some(known), Some(hash)) = (known, &entry.hash) {
            if known.eq_ignore_ascii_case(hash) {
                return Ok(Found::Known(Box::new(entry)));
            }
        }
        let known_sha256 = known.and_then(|k| k.strip_prefix("sha256:"));
        let same_size: Vec<&SentContent> =
            sent.iter().rev().filter(|s| s.size == entry.size).collect();
        if same_size.is_empty() && known_sha256.is_none() {
            return Ok(Found::Foreign);
        }
        if let Some(hash) = &entry.hash {
            let verdicts: Vec<(&&SentContent, Option<bool>)> = same_size
                .iter()
                .map(|s| (s, s.matches_hash(hash)))
                .collect();
            if let Some((s, _)) = verdicts.iter().find(|(_, v)| *v == Some(true)) {
                let s = (**s).clone();
                return Ok(Found::Sent(Box::new(entry), s));
            }
            if verdicts.iter().all(|(_, v)| v.is_some()) {
                return Ok(Found::Foreign);
            }
        }
        // No usable hash: read the remote bytes back and hash them.
        let remote = self
            .remote_fingerprint(path, &entry)
            .await
            .map_err(retryable)?;
        match same_size.into_iter().find(|s| **s == remote) {
            Some(s) => {
                let s = s.clone();
                Ok(Found::Sent(Box::new(entry), s))
            }
            None if known_sha256.is_some_and(|k| k.eq_ignore_ascii_case(&remote.sha256)) => {
                Ok(Found::Known(Box::new(entry)))
            }
            None => Ok(Found::Foreign),
        }
    }

    /// Size and hashes of the remote file's bytes at the revision `entry` names.
    async fn remote_fingerprint(
        &self,
        path: &str,
        entry: &crate::provider::RemoteEntry,
    ) -> Result<SentContent, ProviderError> {
        use futures::StreamExt;
        use md5::Md5;
        let mut stream = self
            .provider
            .read_range(path, Some(&entry.revision), 0, entry.size)
            .await?;
        let (mut sha, mut md5, mut size) = (Sha256::new(), Md5::new(), 0u64);
        while let Some(chunk) = stream.next().await {
            let chunk = chunk?;
            size += chunk.len() as u64;
            sha.update(&chunk);
            md5.update(&chunk);
        }
        Ok(SentContent {
            size,
            sha256: hex::encode(sha.finalize()),
            md5: hex::encode(md5.finalize()),
        })
    }

    /// The remote changed since the local edit began: keep both. The remote version
    /// stays under the name; the local edit goes beside it as a conflict copy, whose name
    /// is fixed per job so that a repeated attempt makes no second copy.
    async fn save_conflict_copy(
        &self,
        seq: u64,
        job: &Job,
        inode: &Inode,
        snapshot: &std::path::Path,
        sent: &SentContent,
    ) -> JobResult {
        let (dir, name) = split_path(&job.path);
        let mut copy_name = self
            .queue
            .conflict_copy_name(seq, conflict_name(name, chrono::Local::now()));
        let options = UploadOptions {
            expected_revision: Some(None),
            mtime: Some(inode.mtime),
            mode: Some(inode.perm as u32),
        };
        let mut copy_path = join_path(dir, &copy_name);
        let mut renamed_once = false;
        let entry = loop {
            match self.provider.upload(&copy_path, snapshot, &options).await {
                Ok(e) => break e,
                Err(err) if err.is_retryable() || is_precondition(&err) => {
                    match self
                        .look_at_remote(&copy_path, None, std::slice::from_ref(sent), None)
                        .await?
                    {
                        Found::Sent(e, _) => break *e,
                        Found::Foreign if !renamed_once => {
                            // Somebody else's file has this very name: pick another one.
                            renamed_once = true;
                            copy_name = self.queue.conflict_copy_name_replace(
                                seq,
                                conflict_name(name, chrono::Local::now()).replacen(
                                    " (conflict",
                                    &format!(" (conflict {seq}"),
                                    1,
                                ),
                            );
                            copy_path = join_path(dir, &copy_name);
                        }
                        _ => return Err(retryable(err)),
                    }
                }
                Err(e) => return Err(e),
            }
        };
        let current = match self.provider.stat(&job.path).await {
            Ok(e) => Some(e),
            Err(ProviderError::NotFound(_)) => None,
            Err(e) => return Err(retryable(e)),
        };
        let _ns = self.ns_lock.lock().await;
        // One name of a hard link: the local content is the link's, not this name's.
        let linked = self.is_linked(job.ino);
        let parent = inode.parent;
        if parent != 0
            && self
                .store
                .child(parent, &copy_name)
                .map_err(store_err)?
                .is_none()
        {
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
            if !linked {
                let _ = self.cache.transfer(job.ino, copy_ino);
            }
            // (Linked, the copy's content is read back from the copy just uploaded.)
            self.cache.mark_uploaded(copy_ino, &entry.revision);
            let mut b = Batch::default();
            b.put_inode(&copy);
            b.link(parent, &copy_name, copy_ino);
            self.store.apply(b).map_err(store_err)?;
            self.notify_entry(parent, &copy_name);
        }
        if linked {
            // The name shows what the remote has now, as a file of its own; the link's
            // other names keep the local content.
            self.split_name_off(job.ino, &job.path, current.as_ref(), &copy_name)
                .map_err(store_err)?;
        } else {
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
        }
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
        self.preserve_orphans(&job.path).await?;
        let entry = match self.provider.rename(from, &job.path, overwrite).await {
            Ok(e) => Some(e),
            // The outcome is uncertain (a cut reply) or the source is gone: look where the
            // object is. Moved already (an attempt before a crash or a lost reply) means
            // done; still at `from` means try again; a failure while looking is no answer.
            // Whatever the error, look where the object is before believing it: a move
            // whose reply was lost and was then sent again fails although it happened
            // (Drive answers 400 "not a parent" to the repeat). Moved already means done;
            // still at `from` means the error stands; a failure while looking is no answer.
            Err(err) if !matches!(err, ProviderError::Auth(_)) => {
                let uncertain = err.is_retryable() || matches!(err, ProviderError::NotFound(_));
                match self.provider.stat(from).await {
                    // Still where it was: it did not move (for a NotFound, what is
                    // missing is the destination's folder, which a queued job creates).
                    Ok(_) if uncertain => return Err(retryable(err)),
                    Ok(_) => return Err(err),
                    Err(ProviderError::NotFound(_)) => {}
                    Err(e) => return Err(retryable(e)),
                }
                match self.provider.stat(&job.path).await {
                    Ok(_) => None,
                    Err(ProviderError::NotFound(_)) if uncertain => {
                        // Neither here nor there: somebody else removed it remotely. The
                        // local copy is what is left of it.
                        return self.reupload_vanished(job).await;
                    }
                    Err(ProviderError::NotFound(_)) => return Err(err),
                    Err(e) => return Err(retryable(e)),
                }
            }
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

    /// The object a rename job was to move has vanished from the remote (removed by
    /// another client). A file whose whole content is here goes up again under its new
    /// name; otherwise the remote's deletion wins and the next listing shows it.
    async fn reupload_vanished(&self, job: &Job) -> JobResult {
        tracing::warn!(path = %job.path, "the remote object to move has vanished");
        let Some(inode) = self.store.get(job.ino).map_err(store_err)? else {
            return Ok(());
        };
        if inode.parent == 0 {
            return Ok(());
        }
        // (A hard link's name has its content in its file's record.)
        let holder = self.holder_of(job.ino);
        let content_size = self.get(holder).map(|h| h.size).unwrap_or(inode.size);
        let complete =
            inode.kind == EntryKind::File && self.cache.is_complete(holder, content_size);
        let holder_generation = self.get(holder).map(|h| h.generation).ok();
        self.update(job.ino, |i| {
            i.remote = None;
            i.base_revision = None;
            if complete {
                i.dirty = true;
                // A hard link's name follows its file's content generation (its upload
                // is clean only for that one).
                i.generation = match holder_generation {
                    Some(g) if holder != job.ino => g,
                    _ => i.generation + 1,
                };
            }
        })
        .map_err(store_err)?;
        if complete {
            if holder == job.ino {
                self.cache.set_dirty(job.ino, true);
            }
            let i = self
                .get(job.ino)
                .map_err(|e| ProviderError::Io(e.to_string()))?;
            self.queue
                .enqueue_upload(job.ino, &job.path, i.size, i.generation);
        } else if let Ok(Some(dir)) = self.find_by_remote_path(split_path(&job.path).0) {
            let _ = self.invalidate_listing(dir);
        }
        Ok(())
    }

    async fn run_set_mode(&self, job: &Job) -> JobResult {
        // The bits as they are now: later chmods since the job was queued are included.
        let Some(inode) = self.store.get(job.ino).map_err(store_err)? else {
            return Ok(());
        };
        match self.provider.set_mode(&job.path, inode.perm as u32).await {
            // Gone from the remote: deleted (here, by a later job, or by someone else),
            // and there is no object left to give a mode.
            Ok(()) | Err(ProviderError::NotFound(_)) => Ok(()),
            Err(e) if e.is_retryable() || matches!(e, ProviderError::Auth(_)) => Err(e),
            Err(e) => {
                // Refused for good (not the owner of the folder's file, say): a mode is
                // not worth holding up the path's later uploads behind a parked job.
                // The mount keeps the mode; `status` says the remote did not take it.
                tracing::warn!(path = %job.path, error = %e, "the remote refused a chmod");
                self.queue
                    .note_error(format!("{}: chmod refused: {e}", job.path));
                Ok(())
            }
        }
    }

    async fn run_delete(&self, job: &Job) -> JobResult {
        self.preserve_orphans(&job.path).await?;
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

/// Size, SHA-256 and MD5 of a local file, hashed on the blocking pool.
async fn fingerprint_file(path: std::path::PathBuf) -> Result<SentContent, ProviderError> {
    tokio::task::spawn_blocking(move || {
        use md5::Md5;
        use std::io::Read;
        let mut f = std::fs::File::open(&path)?;
        let (mut sha, mut md5, mut size) = (Sha256::new(), Md5::new(), 0u64);
        let mut buf = vec![0u8; 1 << 20];
        loop {
            let n = f.read(&mut buf)?;
            if n == 0 {
                break;
            }
            size += n as u64;
            sha.update(&buf[..n]);
            md5.update(&buf[..n]);
        }
        Ok(SentContent {
            size,
            sha256: hex::encode(sha.finalize()),
            md5: hex::encode(md5.finalize()),
        })
    })
    .await
    .map_err(|e| ProviderError::Io(e.to_string()))?
}
