//! Keeping files available offline (`cloudmount pin`): fetch them whole and exempt them
//! from cache eviction.

use serde::{Deserialize, Serialize};

use super::*;

#[derive(Debug, Default, Clone, Serialize, Deserialize)]
pub struct PinProgress {
    pub running: bool,
    pub files_done: u64,
    pub files_total: u64,
    pub bytes_done: u64,
    pub bytes_total: u64,
}

impl Vfs {
    /// Pin (or unpin) a file, or every file below a directory.
    pub async fn pin(&self, path: &str, keep: bool) -> FsResult<PinProgress> {
        let start = self.resolve(path).await?;
        // Collect first, so progress has a total.
        let mut files = Vec::new();
        let mut dirs = vec![start];
        // A hard-linked file is one file (its holder's content) under every name.
        let mut seen = std::collections::HashSet::new();
        while let Some(ino) = dirs.pop() {
            let inode = self.get(ino)?;
            match inode.kind {
                EntryKind::Dir => {
                    self.ensure_listed(ino).await?;
                    for (_, child) in self.store.children(ino)? {
                        dirs.push(self.holder_of(child));
                    }
                }
                EntryKind::File if seen.insert(ino) => files.push(inode),
                EntryKind::File | EntryKind::Symlink => {}
            }
        }
        let total_bytes = files.iter().map(|f| f.size).sum();
        *self.pin_progress.lock().unwrap() = PinProgress {
            running: true,
            files_total: files.len() as u64,
            bytes_total: total_bytes,
            ..Default::default()
        };
        let result = async {
            for f in &files {
                self.cache.set_offline(f.ino, keep);
                if keep {
                    let source = Self::source_of(f);
                    self.cache
                        .ensure(f.ino, source.as_ref(), f.size, 0, f.size)
                        .await?;
                }
                let mut p = self.pin_progress.lock().unwrap();
                p.files_done += 1;
                p.bytes_done += f.size;
            }
            Ok::<_, FsError>(())
        }
        .await;
        let mut p = self.pin_progress.lock().unwrap();
        p.running = false;
        let snapshot = p.clone();
        drop(p);
        result.map(|()| snapshot)
    }
}
