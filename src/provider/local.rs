//! A plain local directory acting as "the cloud": the embedded default provider.
//!
//! It goes through the same pipeline as any remote provider (metadata store, chunk cache,
//! write-back queue); nothing in the filesystem layer special-cases it.

use std::fs;
use std::io::{Read, Seek, SeekFrom};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use bytes::Bytes;
use futures::StreamExt;

use super::*;

/// Where uploads are assembled before being renamed into place, so a reader of the
/// backing folder never sees a half-written file.
const UPLOAD_TMP_DIR: &str = ".cloudmount-tmp";
const READ_BLOCK: usize = 256 * 1024;

pub struct LocalProvider {
    root: PathBuf,
}

impl LocalProvider {
    pub fn new(root: impl Into<PathBuf>) -> ProviderResult<Self> {
        let root = root.into();
        let meta = fs::metadata(&root)
            .map_err(|e| ProviderError::NotFound(format!("{}: {e}", root.display())))?;
        if !meta.is_dir() {
            return Err(ProviderError::NotADirectory(root.display().to_string()));
        }
        Ok(LocalProvider { root })
    }

    fn host_path(&self, path: &str) -> ProviderResult<PathBuf> {
        let rel = path.trim_start_matches('/');
        let mut out = self.root.clone();
        for comp in rel.split('/').filter(|c| !c.is_empty()) {
            if comp == "." || comp == ".." || comp.contains('\0') {
                return Err(ProviderError::InvalidName(comp.to_string()));
            }
            out.push(comp);
        }
        Ok(out)
    }
}

/// The revision of a local file: changes whenever its content could have changed.
fn revision_of(meta: &fs::Metadata) -> String {
    format!(
        "{}.{}-{}-{}",
        meta.mtime(),
        meta.mtime_nsec(),
        meta.size(),
        meta.ino()
    )
}

fn entry_from(name: &str, path: &Path, meta: &fs::Metadata) -> RemoteEntry {
    let kind = if meta.file_type().is_symlink() {
        EntryKind::Symlink
    } else if meta.is_dir() {
        EntryKind::Dir
    } else {
        EntryKind::File
    };
    let symlink_target = if kind == EntryKind::Symlink {
        fs::read_link(path)
            .ok()
            .map(|t| t.to_string_lossy().into_owned())
    } else {
        None
    };
    let mtime = UNIX_EPOCH
        + Duration::new(
            meta.mtime().max(0) as u64,
            meta.mtime_nsec().clamp(0, 999_999_999) as u32,
        );
    RemoteEntry {
        id: path.to_string_lossy().into_owned(),
        name: name.to_string(),
        kind,
        size: if kind == EntryKind::Dir {
            0
        } else {
            meta.len()
        },
        mtime,
        revision: revision_of(meta),
        hash: None,
        mode: Some(meta.permissions().mode() & 0o7777),
        symlink_target,
    }
}

fn stat_host(host: &Path, name: &str) -> ProviderResult<RemoteEntry> {
    let meta = fs::symlink_metadata(host)?;
    Ok(entry_from(name, host, &meta))
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> ProviderResult<T> + Send + 'static,
) -> ProviderResult<T> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| ProviderError::Io(e.to_string()))?
}

#[async_trait]
impl Provider for LocalProvider {
    fn kind(&self) -> &'static str {
        "local"
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities {
            symlinks: true,
            unix_attrs: true,
            // The remote path is appended to the folder's own path in every system call.
            max_path_len: 4095usize.saturating_sub(self.root.as_os_str().len()),
            ..Capabilities::default()
        }
    }

    fn list<'a>(&'a self, dir: &'a str) -> ListStream<'a> {
        let host = self.host_path(dir);
        let fut = async move {
            let host = host?;
            blocking(move || {
                let meta = fs::metadata(&host)?;
                if !meta.is_dir() {
                    return Err(ProviderError::NotADirectory(host.display().to_string()));
                }
                let mut out = Vec::new();
                for ent in fs::read_dir(&host)? {
                    let ent = ent?;
                    let Some(name) = ent.file_name().to_str().map(str::to_string) else {
                        // Names that are not UTF-8 cannot be addressed by remote paths.
                        tracing::warn!(name = ?ent.file_name(), "skipping non-UTF-8 name");
                        continue;
                    };
                    if name == UPLOAD_TMP_DIR {
                        continue;
                    }
                    match ent.metadata() {
                        Ok(meta) => out.push(entry_from(&name, &ent.path(), &meta)),
                        // Removed between readdir and stat.
                        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                        Err(e) => return Err(e.into()),
                    }
                }
                Ok(out)
            })
            .await
        };
        futures::stream::once(fut).boxed()
    }

    async fn stat(&self, path: &str) -> ProviderResult<RemoteEntry> {
        let host = self.host_path(path)?;
        let name = split_path(path).1.to_string();
        blocking(move || stat_host(&host, &name)).await
    }

    async fn read_range(
        &self,
        path: &str,
        revision: Option<&str>,
        offset: u64,
        len: u64,
    ) -> ProviderResult<ByteStream> {
        let host = self.host_path(path)?;
        let revision = revision.map(str::to_string);
        let path_owned = path.to_string();
        let file = blocking(move || {
            let file = fs::File::open(&host)?;
            let meta = file.metadata()?;
            if meta.is_dir() {
                return Err(ProviderError::IsADirectory(path_owned));
            }
            if let Some(rev) = revision {
                if rev != revision_of(&meta) {
                    return Err(ProviderError::PreconditionFailed(path_owned));
                }
            }
            Ok(file)
        })
        .await?;
        let stream = futures::stream::unfold(
            (offset, offset.saturating_add(len), false),
            move |(pos, end, done)| {
                let file_result = file.try_clone();
                async move {
                    if done || pos >= end {
                        return None;
                    }
                    let want = ((end - pos) as usize).min(READ_BLOCK);
                    let res = blocking(move || {
                        let mut f = file_result?;
                        f.seek(SeekFrom::Start(pos))?;
                        let mut buf = vec![0u8; want];
                        let mut filled = 0;
                        while filled < want {
                            let n = f.read(&mut buf[filled..])?;
                            if n == 0 {
                                break;
                            }
                            filled += n;
                        }
                        buf.truncate(filled);
                        Ok(buf)
                    })
                    .await;
                    match res {
                        Ok(buf) if buf.is_empty() => None,
                        Ok(buf) => {
                            let n = buf.len() as u64;
                            Some((Ok(Bytes::from(buf)), (pos + n, end, false)))
                        }
                        Err(e) => Some((Err(e), (pos, end, true))),
                    }
                }
            },
        );
        Ok(stream.boxed())
    }

    async fn upload(
        &self,
        path: &str,
        source: &Path,
        options: &UploadOptions,
    ) -> ProviderResult<RemoteEntry> {
        let host = self.host_path(path)?;
        let tmp_dir = self.root.join(UPLOAD_TMP_DIR);
        let source = source.to_path_buf();
        let options = options.clone();
        let name = split_path(path).1.to_string();
        let path_owned = path.to_string();
        blocking(move || {
            if let Some(expected) = &options.expected_revision {
                let current = match fs::symlink_metadata(&host) {
                    Ok(m) => Some(revision_of(&m)),
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
                    Err(e) => return Err(e.into()),
                };
                if &current != expected {
                    return Err(ProviderError::PreconditionFailed(path_owned));
                }
            }
            if let Ok(m) = fs::symlink_metadata(&host) {
                if m.is_dir() {
                    return Err(ProviderError::IsADirectory(path_owned));
                }
            }
            let parent = host
                .parent()
                .ok_or_else(|| ProviderError::InvalidName(path_owned.clone()))?;
            if !parent.is_dir() {
                return Err(ProviderError::NotFound(parent.display().to_string()));
            }
            fs::create_dir_all(&tmp_dir)?;
            let tmp = tmp_dir.join(format!(
                "up-{}-{}",
                std::process::id(),
                rand::random::<u64>()
            ));
            let result = (|| {
                fs::copy(&source, &tmp)?;
                if let Some(mode) = options.mode {
                    fs::set_permissions(&tmp, fs::Permissions::from_mode(mode & 0o7777))?;
                }
                let f = fs::OpenOptions::new().write(true).open(&tmp)?;
                if let Some(mtime) = options.mtime {
                    f.set_modified(mtime)?;
                }
                f.sync_all()?;
                fs::rename(&tmp, &host)?;
                Ok::<_, std::io::Error>(())
            })();
            if let Err(e) = result {
                let _ = fs::remove_file(&tmp);
                return Err(e.into());
            }
            stat_host(&host, &name)
        })
        .await
    }

    async fn mkdir(&self, path: &str) -> ProviderResult<RemoteEntry> {
        let host = self.host_path(path)?;
        let name = split_path(path).1.to_string();
        blocking(move || {
            fs::create_dir(&host)?;
            stat_host(&host, &name)
        })
        .await
    }

    async fn rename(&self, from: &str, to: &str, overwrite: bool) -> ProviderResult<RemoteEntry> {
        let src = self.host_path(from)?;
        let dst = self.host_path(to)?;
        let name = split_path(to).1.to_string();
        let to_owned = to.to_string();
        blocking(move || {
            fs::symlink_metadata(&src)?;
            if !overwrite && fs::symlink_metadata(&dst).is_ok() {
                return Err(ProviderError::AlreadyExists(to_owned));
            }
            fs::rename(&src, &dst)?;
            stat_host(&dst, &name)
        })
        .await
    }

    async fn delete(&self, path: &str) -> ProviderResult<()> {
        let host = self.host_path(path)?;
        blocking(move || {
            let meta = fs::symlink_metadata(&host)?;
            if meta.is_dir() {
                fs::remove_dir(&host)?;
            } else {
                fs::remove_file(&host)?;
            }
            Ok(())
        })
        .await
    }

    async fn copy(&self, from: &str, to: &str) -> ProviderResult<RemoteEntry> {
        let src = self.host_path(from)?;
        let dst = self.host_path(to)?;
        let name = split_path(to).1.to_string();
        blocking(move || {
            // A server-side copy is of a file; say so plainly (fs::copy's own error would
            // look like a retryable I/O failure).
            if fs::symlink_metadata(&src)?.is_dir() {
                return Err(ProviderError::IsADirectory(src.display().to_string()));
            }
            if let Some(parent) = dst.parent() {
                fs::create_dir_all(parent)?;
            }
            fs::copy(&src, &dst)?;
            stat_host(&dst, &name)
        })
        .await
    }

    async fn quota(&self) -> ProviderResult<Quota> {
        let root = self.root.clone();
        blocking(move || {
            let st =
                nix::sys::statvfs::statvfs(&root).map_err(|e| ProviderError::Io(e.to_string()))?;
            let frag = st.fragment_size() as u64;
            let total = st.blocks() as u64 * frag;
            let avail = st.blocks_available() as u64 * frag;
            let free = st.blocks_free() as u64 * frag;
            Ok(Quota {
                total: Some(total),
                used: Some(total.saturating_sub(free)),
                available: Some(avail),
            })
        })
        .await
    }

    async fn symlink(&self, path: &str, target: &str) -> ProviderResult<RemoteEntry> {
        let host = self.host_path(path)?;
        let target = target.to_string();
        let name = split_path(path).1.to_string();
        blocking(move || {
            std::os::unix::fs::symlink(&target, &host)?;
            stat_host(&host, &name)
        })
        .await
    }

    async fn set_mode(&self, path: &str, mode: u32) -> ProviderResult<()> {
        let host = self.host_path(path)?;
        blocking(move || {
            let meta = fs::symlink_metadata(&host)?;
            if !meta.file_type().is_symlink() {
                fs::set_permissions(&host, fs::Permissions::from_mode(mode & 0o7777))?;
            }
            Ok(())
        })
        .await
    }

    async fn set_mtime(&self, path: &str, mtime: SystemTime) -> ProviderResult<()> {
        let host = self.host_path(path)?;
        blocking(move || {
            let meta = fs::symlink_metadata(&host)?;
            if meta.is_file() {
                fs::OpenOptions::new()
                    .write(true)
                    .open(&host)?
                    .set_modified(mtime)?;
            }
            Ok(())
        })
        .await
    }
}
