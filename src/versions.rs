//! Version history for providers that keep none of their own (local folder, plain WebDAV).
//!
//! Each upload leaves a copy in a hidden folder on the remote that mirrors the tree:
//! `/.cloudmount-versions/<path>/<unix-ms>-<sha256 prefix>`. Keeping it on the remote (not
//! in the local cache) means history survives a wiped cache or a new machine; the folder
//! is moved along when a file or directory is renamed.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use futures::StreamExt;
use serde::{Deserialize, Serialize};
use tokio::io::AsyncWriteExt;

use crate::provider::{
    join_path, split_path, Provider, ProviderError, ProviderResult, UploadOptions,
};

pub const VERSIONS_DIR: &str = ".cloudmount-versions";

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct VersionInfo {
    /// 1 is the oldest kept version; the highest number is the current content.
    pub number: usize,
    pub time: SystemTime,
    pub size: u64,
    /// Prefix of the content's SHA-256.
    pub hash: String,
    /// Where the content is: a path in the hidden folder, or the provider's revision id.
    #[serde(skip)]
    pub remote_path: String,
    #[serde(skip)]
    pub native_of: Option<String>,
}

pub struct Versions {
    provider: Arc<dyn Provider>,
    keep: usize,
    /// Version folders known to exist, so recording a version costs one request (the
    /// copy), not a walk of MKCOLs, on every upload.
    known_dirs: std::sync::Mutex<std::collections::HashSet<String>>,
    /// Versions kept per path, as far as this process knows; pruning lists the folder
    /// only when this says there may be too many.
    counts: std::sync::Mutex<std::collections::HashMap<String, usize>>,
}

fn versions_dir_of(path: &str) -> String {
    format!("/{VERSIONS_DIR}{path}")
}

fn parse_name(name: &str) -> Option<(u64, String)> {
    let (ms, hash) = name.split_once('-')?;
    Some((ms.parse().ok()?, hash.to_string()))
}

impl Versions {
    pub fn new(provider: Arc<dyn Provider>, keep: usize) -> Self {
        Versions {
            provider,
            keep,
            known_dirs: Default::default(),
            counts: Default::default(),
        }
    }

    /// Make sure `dir` exists. Returns true when its last component was created just now
    /// (so it holds no versions yet).
    async fn mkdir_all(&self, dir: &str) -> ProviderResult<bool> {
        if self.known_dirs.lock().unwrap().contains(dir) {
            return Ok(false);
        }
        let mut cur = String::new();
        let mut created = false;
        for comp in dir.split('/').filter(|c| !c.is_empty()) {
            cur.push('/');
            cur.push_str(comp);
            if self.known_dirs.lock().unwrap().contains(&cur) {
                continue;
            }
            created = match self.provider.mkdir(&cur).await {
                Ok(_) => true,
                Err(ProviderError::AlreadyExists(_)) => false,
                Err(e) => {
                    // Some servers answer a conflict for an existing folder; check.
                    match self.provider.stat(&cur).await {
                        Ok(entry) if entry.kind == crate::provider::EntryKind::Dir => false,
                        _ => return Err(e),
                    }
                }
            };
            self.known_dirs.lock().unwrap().insert(cur.clone());
        }
        Ok(created)
    }

    /// Keep the content just uploaded to `path` (also available locally as `snapshot`).
    pub async fn record(&self, path: &str, snapshot: &Path, sha256: &str) -> ProviderResult<()> {
        if self.keep == 0 {
            return Ok(());
        }
        let dir = versions_dir_of(path);
        if self.mkdir_all(&dir).await? {
            self.counts.lock().unwrap().insert(path.to_string(), 0);
        }
        let ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .as_millis();
        let name = format!("{ms:013}-{}", &sha256[..16.min(sha256.len())]);
        let target = join_path(&dir, &name);
        // A server-side copy costs no upload bandwidth; fall back to sending it again.
        if let Err(e) = self.provider.copy(path, &target).await {
            if matches!(e, ProviderError::NotFound(_)) {
                // The folder went away behind our back: create it again next time.
                self.known_dirs.lock().unwrap().remove(&dir);
                self.mkdir_all(&dir).await?;
            }
            self.provider
                .upload(&target, snapshot, &UploadOptions::default())
                .await?;
        }
        let known = self.counts.lock().unwrap().get(path).map(|n| n + 1);
        match known {
            Some(n) if n <= self.keep => {
                self.counts.lock().unwrap().insert(path.to_string(), n);
                Ok(())
            }
            _ => self.prune(path).await,
        }
    }

    async fn prune(&self, path: &str) -> ProviderResult<()> {
        let list = self.list(path).await?;
        let mut kept = list.len();
        if list.len() > self.keep {
            for v in &list[..list.len() - self.keep] {
                self.provider.delete(&v.remote_path).await?;
            }
            kept = self.keep;
        }
        self.counts.lock().unwrap().insert(path.to_string(), kept);
        Ok(())
    }

    /// Whether history comes from the provider itself (Drive revisions, ...).
    fn native(&self) -> bool {
        self.provider.capabilities().native_versions
    }

    pub async fn list(&self, path: &str) -> ProviderResult<Vec<VersionInfo>> {
        if self.native() {
            let mut revs = self.provider.list_versions(path).await?;
            revs.sort_by_key(|r| r.mtime);
            return Ok(revs
                .into_iter()
                .enumerate()
                .map(|(i, r)| VersionInfo {
                    number: i + 1,
                    time: r.mtime,
                    size: r.size,
                    hash: r.hash.unwrap_or_default(),
                    remote_path: r.id,
                    native_of: Some(path.to_string()),
                })
                .collect());
        }
        let dir = versions_dir_of(path);
        let mut entries = Vec::new();
        let mut pages = self.provider.list(&dir);
        while let Some(page) = pages.next().await {
            match page {
                Ok(p) => entries.extend(p),
                Err(ProviderError::NotFound(_)) => return Ok(vec![]),
                Err(e) => return Err(e),
            }
        }
        let mut out: Vec<(u64, String, u64, String)> = entries
            .into_iter()
            .filter(|e| e.kind == crate::provider::EntryKind::File)
            .filter_map(|e| {
                let (ms, hash) = parse_name(&e.name)?;
                Some((ms, hash, e.size, join_path(&dir, &e.name)))
            })
            .collect();
        out.sort();
        Ok(out
            .into_iter()
            .enumerate()
            .map(|(i, (ms, hash, size, remote_path))| VersionInfo {
                number: i + 1,
                time: UNIX_EPOCH + Duration::from_millis(ms),
                size,
                hash,
                remote_path,
                native_of: None,
            })
            .collect())
    }

    async fn open(&self, v: &VersionInfo) -> ProviderResult<crate::provider::ByteStream> {
        match &v.native_of {
            Some(path) => self.provider.read_version(path, &v.remote_path).await,
            None => {
                self.provider
                    .read_range(&v.remote_path, None, 0, u64::MAX)
                    .await
            }
        }
    }

    pub async fn download(&self, v: &VersionInfo, dest: &Path) -> ProviderResult<()> {
        let mut stream = self.open(v).await?;
        let mut f = tokio::fs::File::create(dest).await?;
        while let Some(piece) = stream.next().await {
            f.write_all(&piece?).await?;
        }
        f.flush().await?;
        Ok(())
    }

    pub async fn read(&self, v: &VersionInfo) -> ProviderResult<Vec<u8>> {
        let stream = self.open(v).await?;
        crate::provider::collect_stream(stream).await
    }

    fn forget_below(&self, dir: &str) {
        self.known_dirs
            .lock()
            .unwrap()
            .retain(|d| !crate::provider::is_same_or_below(d, dir));
        let prefix = dir
            .strip_prefix(&format!("/{VERSIONS_DIR}"))
            .unwrap_or(dir)
            .to_string();
        self.counts
            .lock()
            .unwrap()
            .retain(|p, _| !crate::provider::is_same_or_below(p, &prefix));
    }

    pub async fn follow_rename(&self, from: &str, to: &str) -> ProviderResult<()> {
        let src = versions_dir_of(from);
        let dst = versions_dir_of(to);
        self.forget_below(&src);
        self.forget_below(&dst);
        if self.provider.stat(&src).await.is_err() {
            return Ok(());
        }
        self.mkdir_all(split_path(&dst).0).await?;
        match self.provider.stat(&dst).await {
            Err(ProviderError::NotFound(_)) => {
                return self.provider.rename(&src, &dst, false).await.map(|_| ());
            }
            Err(e) => return Err(e),
            Ok(_) => {}
        }
        // A save by rename over a file that has a history (an editor's temp file, git's
        // index.lock): the file's history goes on with the moved file's versions added.
        // Replacing the folder would throw the old versions away (or be refused).
        self.merge_into(&src, &dst).await?;
        self.prune(to).await
    }

    /// Move every version below `src` into `dst` (the same layout), then remove `src`.
    async fn merge_into(&self, src: &str, dst: &str) -> ProviderResult<()> {
        let mut entries = Vec::new();
        let mut pages = self.provider.list(src);
        while let Some(page) = pages.next().await {
            entries.extend(page?);
        }
        for e in entries {
            let from = join_path(src, &e.name);
            let to = join_path(dst, &e.name);
            if e.kind == crate::provider::EntryKind::Dir {
                match self.provider.stat(&to).await {
                    Ok(_) => Box::pin(self.merge_into(&from, &to)).await?,
                    Err(ProviderError::NotFound(_)) => {
                        self.provider.rename(&from, &to, false).await?;
                    }
                    Err(e) => return Err(e),
                }
                continue;
            }
            match self.provider.rename(&from, &to, false).await {
                Ok(_) => {}
                // Version names are time and content: the same name is the same version.
                Err(ProviderError::AlreadyExists(_)) => match self.provider.delete(&from).await {
                    Ok(()) | Err(ProviderError::NotFound(_)) => {}
                    Err(e) => return Err(e),
                },
                Err(e) => return Err(e),
            }
        }
        match self.provider.delete(src).await {
            Ok(()) | Err(ProviderError::NotFound(_)) => Ok(()),
            Err(e) => Err(e),
        }
    }
}
