//! Picking up remote changes: a provider's delta API where it has one, otherwise
//! re-listing the directories the kernel currently knows once their listing expired.
//! Either way the listing merge invalidates metadata, cached chunks and the kernel's
//! caches, so `cat` after a remote edit shows the new content.

use std::collections::HashSet;
use std::time::{Duration, SystemTime};

use super::*;
use crate::provider::{split_path, Change, ProviderError};

const DELTA_CURSOR: &str = "delta_cursor";

impl Vfs {
    pub fn start_poller(self: &Arc<Self>, interval: Duration) -> tokio::task::JoinHandle<()> {
        // The tick and the long poll never continue the feed at the same time (both would
        // apply the same changes, and the slower could store the older cursor).
        let one_at_a_time = Arc::new(tokio::sync::Mutex::new(()));
        let long_poll = self.long_poll(interval, one_at_a_time.clone());
        let weak = Arc::downgrade(self);
        let ticking = async move {
            let mut tick = tokio::time::interval(interval);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                let Some(vfs) = weak.upgrade() else { return };
                let _turn = one_at_a_time.lock().await;
                if let Err(e) = vfs.poll_once().await {
                    tracing::debug!(connection = %vfs.name, error = %e, "change poll failed");
                }
            }
        };
        // One task: stopping the poller stops the long poll with it.
        tokio::spawn(async move {
            futures::join!(ticking, long_poll);
        })
    }

    /// Beside the ticking poll, for providers that can wait for changes (Dropbox's
    /// longpoll): wait on the feed's cursor and poll as soon as it says something changed.
    /// Holds only the provider while waiting, not the filesystem, and ends when the
    /// connection goes away.
    fn long_poll(
        self: &Arc<Self>,
        interval: Duration,
        one_at_a_time: Arc<tokio::sync::Mutex<()>>,
    ) -> impl std::future::Future<Output = ()> {
        let weak = Arc::downgrade(self);
        let provider = self.provider.clone();
        let caps = self.provider.capabilities();
        async move {
            if !(caps.delta && caps.long_poll) {
                return;
            }
            // After a failure, as long as the ticking poll waits (bounded both ways): a
            // feed that keeps failing must not turn the long poll into a busy loop.
            let pause = interval.clamp(Duration::from_secs(1), Duration::from_secs(30));
            loop {
                let cursor = {
                    let Some(vfs) = weak.upgrade() else { return };
                    vfs.store
                        .get_meta(DELTA_CURSOR)
                        .ok()
                        .flatten()
                        .map(|c| String::from_utf8_lossy(&c).into_owned())
                };
                let Some(cursor) = cursor else {
                    // The ticking poll starts the feed, on its first tick.
                    tokio::time::sleep(Duration::from_millis(200)).await;
                    continue;
                };
                match provider.wait_for_changes(&cursor).await {
                    Ok(true) => {
                        let Some(vfs) = weak.upgrade() else { return };
                        let failed = {
                            let _turn = one_at_a_time.lock().await;
                            vfs.poll_once().await.err()
                        };
                        if let Some(e) = failed {
                            // The cursor did not move: asking again at once would be told
                            // "changes" at once.
                            tracing::debug!(connection = %vfs.name, error = %e, "change poll failed");
                            drop(vfs);
                            tokio::time::sleep(pause).await;
                        }
                    }
                    Ok(false) => {}
                    Err(ProviderError::Unsupported(_)) => return,
                    Err(e) => {
                        // A forgotten cursor or a network failure: the ticking poll deals
                        // with it; wait before asking again.
                        tracing::debug!(error = %e, "waiting for remote changes failed");
                        tokio::time::sleep(pause).await;
                    }
                }
            }
        }
    }

    pub async fn poll_once(&self) -> FsResult<()> {
        if self.provider.capabilities().delta {
            match self.poll_delta().await {
                Err(FsError::NotPermitted(_)) => {}
                other => return other,
            }
        }
        self.poll_by_listing().await
    }

    /// One look at the root's revision: unchanged means nothing changed anywhere; else
    /// re-list the root and descend only into directories whose revision changed.
    async fn poll_propagated(&self) -> FsResult<()> {
        let root = self.get(ROOT_LOCAL_INO)?;
        let seen = self.provider.stat("/").await.map_err(FsError::from)?;
        let known = root.remote.as_ref().map(|r| r.revision.clone());
        let now = SystemTime::now();
        if known.as_deref() == Some(seen.revision.as_str()) && !seen.revision.is_empty() {
            *self.tree_verified.lock().unwrap() = Some(now);
            return Ok(());
        }
        // Re-list from the top; the merge marks subdirectories whose revision changed as
        // unlisted, and those we had listed are listed again now.
        // Folders whose listing we hold are worth keeping current; the others are listed
        // when someone looks.
        let mut listed_before: HashSet<Ino> = HashSet::new();
        for inode in self.store.all_inodes() {
            let inode = inode?;
            if inode.is_dir() && inode.listed_at.is_some() {
                listed_before.insert(inode.ino);
            }
        }
        self.invalidate_listing(ROOT_LOCAL_INO)?;
        let mut todo = vec![ROOT_LOCAL_INO];
        while let Some(dir) = todo.pop() {
            self.ensure_listed(dir).await?;
            for (_, child) in self.store.children(dir)? {
                let Some(c) = self.store.get(child)? else {
                    continue;
                };
                if c.is_dir() && c.listed_at.is_none() && listed_before.contains(&child) {
                    todo.push(child);
                }
            }
        }
        self.update(ROOT_LOCAL_INO, |r| {
            if let Some(remote) = r.remote.as_mut() {
                remote.revision = seen.revision.clone();
            }
        })?;
        *self.tree_verified.lock().unwrap() = Some(now);
        Ok(())
    }

    async fn poll_by_listing(&self) -> FsResult<()> {
        if self.provider.capabilities().propagated_dir_revisions {
            return self.poll_propagated().await;
        }
        let known: Vec<Ino> = self.lookups.lock().unwrap().keys().copied().collect();
        let mut dirs: HashSet<Ino> = HashSet::new();
        dirs.insert(ROOT_LOCAL_INO);
        for ino in known {
            if let Ok(Some(i)) = self.store.get(ino) {
                if i.is_dir() && i.listed_at.is_some() {
                    dirs.insert(ino);
                }
            }
        }
        for dir in dirs {
            // ensure_listed only goes to the provider once the listing's TTL expired.
            if let Err(e) = self.ensure_listed(dir).await {
                tracing::debug!(dir, error = %e, "re-listing failed");
            }
        }
        Ok(())
    }

    async fn poll_delta(&self) -> FsResult<()> {
        let cursor = match self.store.get_meta(DELTA_CURSOR)? {
            Some(c) => String::from_utf8_lossy(&c).into_owned(),
            None => {
                let c = self.provider.changes_cursor().await?;
                self.store.set_meta(DELTA_CURSOR, c.as_bytes())?;
                return Ok(());
            }
        };
        let batch = match self.provider.changes_since(&cursor).await {
            Ok(b) => b,
            Err(ProviderError::Unsupported(m)) => return Err(FsError::NotPermitted(m)),
            Err(ProviderError::PreconditionFailed(_)) => {
                // The server forgot our place in its change log: start over, and let
                // every listing be fetched again.
                let c = self.provider.changes_cursor().await?;
                self.store.set_meta(DELTA_CURSOR, c.as_bytes())?;
                return self.expire_listings();
            }
            Err(e) => return Err(e.into()),
        };
        // Mark the parents of everything that changed as stale and list them again:
        // the listing merge knows how to reconcile with local pending changes.
        let mut stale_dirs = HashSet::new();
        for change in &batch.changes {
            let path = match change {
                Change::Upserted { path, .. } | Change::Removed { path } => path,
            };
            if let Some(dir) = self.find_by_remote_path(split_path(path).0)? {
                stale_dirs.insert(dir);
            }
        }
        for dir in stale_dirs {
            self.invalidate_listing(dir)?;
            if let Err(e) = self.ensure_listed(dir).await {
                tracing::debug!(dir, error = %e, "re-listing after a change failed");
            }
        }
        self.store.set_meta(DELTA_CURSOR, batch.cursor.as_bytes())?;
        Ok(())
    }

    /// The inode whose remote copy lives at `path`, following names from the root.
    pub(super) fn find_by_remote_path(&self, path: &str) -> FsResult<Option<Ino>> {
        let mut ino = ROOT_LOCAL_INO;
        for comp in path.split('/').filter(|c| !c.is_empty()) {
            match self.store.child(ino, comp)? {
                Some(c) => ino = c,
                None => return Ok(None),
            }
        }
        Ok(Some(ino))
    }
}
