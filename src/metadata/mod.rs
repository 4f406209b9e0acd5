//! The metadata store: inodes and directory entries of one connection, persisted in sled.
//!
//! Everything a warm lookup, getattr or readdir needs is answered from here, without the
//! provider. One sled tree per connection holds several record kinds under key prefixes,
//! so a multi-record change (a rename, say) is applied as one atomic batch.

use std::time::SystemTime;

use serde::{Deserialize, Serialize};

use crate::provider::EntryKind;

pub type Ino = u64;

/// Local inode numbers of a connection's root directory.
pub const ROOT_LOCAL_INO: Ino = 1;

const INODE: u8 = b'i';
const DIRENT: u8 = b'd';
const CACHE: u8 = b'k';
const JOB: u8 = b'j';
const META: u8 = b'm';
/// Hard links: `h` + the inode of an extra name → the inode the kernel knows the file by.
const LINK: u8 = b'h';

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("metadata store: {0}")]
    Sled(#[from] sled::Error),
    #[error("metadata store record is corrupt: {0}")]
    Corrupt(String),
}

pub type StoreResult<T> = Result<T, StoreError>;

/// Where an inode's content lives on the remote, as far as completed operations tell.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RemoteState {
    pub path: String,
    pub revision: String,
    pub id: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Inode {
    pub ino: Ino,
    /// 0 once unlinked (kept only while still open or looked up).
    pub parent: Ino,
    pub name: String,
    pub kind: EntryKind,
    pub size: u64,
    pub mtime: SystemTime,
    pub atime: SystemTime,
    pub ctime: SystemTime,
    pub perm: u16,
    pub uid: u32,
    pub gid: u32,
    pub symlink_target: Option<String>,
    /// None until the entry exists on the remote.
    pub remote: Option<RemoteState>,
    /// Local content differs from the remote revision.
    pub dirty: bool,
    /// Remote revision the local edit started from; the upload must not overwrite others.
    pub base_revision: Option<String>,
    /// Directories: when the children were last listed from the remote.
    pub listed_at: Option<SystemTime>,
    pub hash: Option<String>,
    /// Bumped on every local content change, so an upload knows whether it is still current.
    pub generation: u64,
    /// Set when the last upload found a remote change and saved a conflict copy.
    pub conflict: Option<String>,
    /// Set when uploads failed permanently; cleared by a successful upload.
    pub upload_error: Option<String>,
    /// A FIFO, socket or device node (`kind` is `File`): it lives in this store only,
    /// never on the remote. Added after the first release: see [`decode_inode`].
    pub special: Option<Special>,
    /// Directories: how many of the children are directories (`st_nlink` is 2 + this);
    /// `None` until known (a folder not listed yet, a record from before this field).
    pub subdirs: Option<u32>,
}

impl Inode {
    pub fn is_dir(&self) -> bool {
        self.kind == EntryKind::Dir
    }
}

/// What a special file is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum SpecialKind {
    Fifo,
    Socket,
    CharDevice,
    BlockDevice,
}

/// A special file: its kind, and the device number of a device node.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Special {
    pub kind: SpecialKind,
    pub rdev: u32,
}

/// An inode as stores written before `special` and `subdirs` existed hold it (bincode has
/// no optional trailing fields: such a record ends where `special` would start).
#[derive(Deserialize)]
struct InodeBeforeSpecial {
    ino: Ino,
    parent: Ino,
    name: String,
    kind: EntryKind,
    size: u64,
    mtime: SystemTime,
    atime: SystemTime,
    ctime: SystemTime,
    perm: u16,
    uid: u32,
    gid: u32,
    symlink_target: Option<String>,
    remote: Option<RemoteState>,
    dirty: bool,
    base_revision: Option<String>,
    listed_at: Option<SystemTime>,
    hash: Option<String>,
    generation: u64,
    conflict: Option<String>,
    upload_error: Option<String>,
}

/// An inode record, of this version or of the one before `special` and `subdirs`.
fn decode_inode(bytes: &[u8]) -> StoreResult<Inode> {
    decode::<Inode>(bytes).or_else(|now| {
        let old: InodeBeforeSpecial = decode(bytes).map_err(|_| now)?;
        Ok(Inode {
            ino: old.ino,
            parent: old.parent,
            name: old.name,
            kind: old.kind,
            size: old.size,
            mtime: old.mtime,
            atime: old.atime,
            ctime: old.ctime,
            perm: old.perm,
            uid: old.uid,
            gid: old.gid,
            symlink_target: old.symlink_target,
            remote: old.remote,
            dirty: old.dirty,
            base_revision: old.base_revision,
            listed_at: old.listed_at,
            hash: old.hash,
            generation: old.generation,
            conflict: old.conflict,
            upload_error: old.upload_error,
            special: None,
            subdirs: None,
        })
    })
}

fn key(prefix: u8, ino: Ino) -> [u8; 9] {
    let mut k = [0u8; 9];
    k[0] = prefix;
    k[1..].copy_from_slice(&ino.to_be_bytes());
    k
}

fn dirent_key(parent: Ino, name: &str) -> Vec<u8> {
    let mut k = Vec::with_capacity(9 + name.len());
    k.extend_from_slice(&key(DIRENT, parent));
    k.extend_from_slice(name.as_bytes());
    k
}

fn decode<T: for<'de> Deserialize<'de>>(bytes: &[u8]) -> StoreResult<T> {
    bincode::deserialize(bytes).map_err(|e| StoreError::Corrupt(e.to_string()))
}

fn encode<T: Serialize>(value: &T) -> Vec<u8> {
    bincode::serialize(value).expect("in-memory serialization cannot fail")
}

/// A set of changes applied atomically.
#[derive(Default)]
pub struct Batch {
    inner: sled::Batch,
    /// Operations in it so far.
    ops: usize,
}

/// How many operations a merge puts in one batch before applying it: sled holds a batch
/// whole in memory, at several KiB an operation (one batch of a 50,000-message mailbox's
/// listing took 230 MiB; in batches of this size it stays within sled's page cache).
pub const BATCH_LIMIT: usize = 1000;

impl Batch {
    pub fn put_inode(&mut self, inode: &Inode) {
        self.ops += 1;
        self.inner.insert(&key(INODE, inode.ino), encode(inode));
    }
    pub fn remove_inode(&mut self, ino: Ino) {
        self.ops += 3;
        self.inner.remove(&key(INODE, ino));
        self.inner.remove(&key(CACHE, ino));
        self.inner.remove(&key(LINK, ino));
    }
    pub fn link(&mut self, parent: Ino, name: &str, ino: Ino) {
        self.ops += 1;
        self.inner
            .insert(dirent_key(parent, name), &ino.to_be_bytes());
    }
    pub fn unlink(&mut self, parent: Ino, name: &str) {
        self.ops += 1;
        self.inner.remove(dirent_key(parent, name));
    }
    /// Record that `name_ino` is another name of the file `holder` (a hard link).
    pub fn put_link(&mut self, name_ino: Ino, holder: Ino) {
        self.ops += 1;
        self.inner
            .insert(&key(LINK, name_ino), &holder.to_be_bytes());
    }
    pub fn remove_link(&mut self, name_ino: Ino) {
        self.ops += 1;
        self.inner.remove(&key(LINK, name_ino));
    }
    /// A write-back job, so that a namespace change and the jobs it queues land together.
    pub fn put_job<T: Serialize>(&mut self, seq: u64, job: &T) {
        self.ops += 1;
        self.inner.insert(&key(JOB, seq), encode(job));
    }
    pub fn remove_job(&mut self, seq: u64) {
        self.ops += 1;
        self.inner.remove(&key(JOB, seq));
    }
    /// Whether it has reached [`BATCH_LIMIT`] operations.
    pub fn is_full(&self) -> bool {
        self.ops >= BATCH_LIMIT
    }
}

#[derive(Clone)]
pub struct Store {
    tree: sled::Tree,
}

impl Store {
    pub fn open(db: &sled::Db, connection_slot: u16) -> StoreResult<Self> {
        let tree = db.open_tree(format!("conn-{connection_slot}"))?;
        Ok(Store { tree })
    }

    pub fn get(&self, ino: Ino) -> StoreResult<Option<Inode>> {
        self.tree
            .get(key(INODE, ino))?
            .map(|v| decode_inode(&v))
            .transpose()
    }

    pub fn put(&self, inode: &Inode) -> StoreResult<()> {
        self.tree.insert(key(INODE, inode.ino), encode(inode))?;
        Ok(())
    }

    pub fn apply(&self, batch: Batch) -> StoreResult<()> {
        self.tree.apply_batch(batch.inner)?;
        Ok(())
    }

    pub fn child(&self, parent: Ino, name: &str) -> StoreResult<Option<Ino>> {
        Ok(self.tree.get(dirent_key(parent, name))?.map(|v| {
            let mut b = [0u8; 8];
            b.copy_from_slice(&v[..8]);
            u64::from_be_bytes(b)
        }))
    }

    /// Children of a directory in name order.
    pub fn children(&self, parent: Ino) -> StoreResult<Vec<(String, Ino)>> {
        let prefix = key(DIRENT, parent);
        let mut out = Vec::new();
        for item in self.tree.scan_prefix(prefix) {
            let (k, v) = item?;
            let name = String::from_utf8(k[9..].to_vec())
                .map_err(|e| StoreError::Corrupt(e.to_string()))?;
            let mut b = [0u8; 8];
            b.copy_from_slice(&v[..8]);
            out.push((name, u64::from_be_bytes(b)));
        }
        Ok(out)
    }

    pub fn has_children(&self, parent: Ino) -> StoreResult<bool> {
        Ok(self.tree.scan_prefix(key(DIRENT, parent)).next().is_some())
    }

    pub fn all_inodes(&self) -> impl Iterator<Item = StoreResult<Inode>> + '_ {
        self.tree.scan_prefix([INODE]).map(|item| {
            item.map_err(StoreError::from)
                .and_then(|(_, v)| decode_inode(&v))
        })
    }

    /// Every hard link: (the inode of an extra name, the inode of the file it names).
    pub fn all_links(&self) -> impl Iterator<Item = StoreResult<(Ino, Ino)>> + '_ {
        self.tree.scan_prefix([LINK]).map(|item| {
            let (k, v) = item?;
            let mut a = [0u8; 8];
            a.copy_from_slice(&k[1..9]);
            let mut b = [0u8; 8];
            b.copy_from_slice(
                v.get(..8)
                    .ok_or_else(|| StoreError::Corrupt("a hard link record is cut short".into()))?,
            );
            Ok((u64::from_be_bytes(a), u64::from_be_bytes(b)))
        })
    }

    pub fn alloc_ino(&self) -> StoreResult<Ino> {
        // Persisted counter: inode numbers are never reused, so they stay stable across
        // remounts and a stale kernel handle can never reach a different file.
        let next = self
            .tree
            .update_and_fetch([META, b'n'], |old| {
                let cur = old
                    .map(|o| {
                        let mut b = [0u8; 8];
                        b.copy_from_slice(&o[..8]);
                        u64::from_be_bytes(b)
                    })
                    .unwrap_or(ROOT_LOCAL_INO);
                Some((cur + 1).to_be_bytes().to_vec())
            })?
            .expect("update always sets a value");
        let mut b = [0u8; 8];
        b.copy_from_slice(&next[..8]);
        Ok(u64::from_be_bytes(b))
    }

    pub fn get_meta(&self, name: &str) -> StoreResult<Option<Vec<u8>>> {
        let mut k = vec![META, b'/'];
        k.extend_from_slice(name.as_bytes());
        Ok(self.tree.get(k)?.map(|v| v.to_vec()))
    }

    pub fn set_meta(&self, name: &str, value: &[u8]) -> StoreResult<()> {
        let mut k = vec![META, b'/'];
        k.extend_from_slice(name.as_bytes());
        self.tree.insert(k, value)?;
        Ok(())
    }

    pub fn remove_meta(&self, name: &str) -> StoreResult<()> {
        let mut k = vec![META, b'/'];
        k.extend_from_slice(name.as_bytes());
        self.tree.remove(k)?;
        Ok(())
    }

    // Chunk-cache records, keyed by inode.
    pub fn get_cache_record<T: for<'de> Deserialize<'de>>(
        &self,
        ino: Ino,
    ) -> StoreResult<Option<T>> {
        self.tree
            .get(key(CACHE, ino))?
            .map(|v| decode(&v))
            .transpose()
    }

    pub fn put_cache_record<T: Serialize>(&self, ino: Ino, rec: &T) -> StoreResult<()> {
        self.tree.insert(key(CACHE, ino), encode(rec))?;
        Ok(())
    }

    pub fn remove_cache_record(&self, ino: Ino) -> StoreResult<()> {
        self.tree.remove(key(CACHE, ino))?;
        Ok(())
    }

    pub fn all_cache_records<T: for<'de> Deserialize<'de>>(
        &self,
    ) -> impl Iterator<Item = StoreResult<(Ino, T)>> + '_ {
        self.tree.scan_prefix([CACHE]).map(|item| {
            let (k, v) = item?;
            let mut b = [0u8; 8];
            b.copy_from_slice(&k[1..9]);
            Ok((u64::from_be_bytes(b), decode(&v)?))
        })
    }

    // Write-back jobs, keyed by sequence number.
    pub fn put_job<T: Serialize>(&self, seq: u64, job: &T) -> StoreResult<()> {
        self.tree.insert(key(JOB, seq), encode(job))?;
        Ok(())
    }

    pub fn remove_job(&self, seq: u64) -> StoreResult<()> {
        self.tree.remove(key(JOB, seq))?;
        Ok(())
    }

    pub fn all_jobs<T: for<'de> Deserialize<'de>>(
        &self,
    ) -> impl Iterator<Item = StoreResult<(u64, T)>> + '_ {
        self.tree.scan_prefix([JOB]).map(|item| {
            let (k, v) = item?;
            let mut b = [0u8; 8];
            b.copy_from_slice(&k[1..9]);
            Ok((u64::from_be_bytes(b), decode(&v)?))
        })
    }

    /// Make everything written so far durable (the write-back queue relies on this
    /// before it tells a closing program that its data is safe).
    ///
    /// sled 0.34's `flush_async` deadlocks when several flushes of the same tree are in
    /// flight at once (spacejam/sled#1308): concurrent closes hung forever. A blocking
    /// flush on tokio's blocking pool has no such problem.
    pub async fn flush(&self) -> StoreResult<()> {
        let tree = self.tree.clone();
        tokio::task::spawn_blocking(move || tree.flush())
            .await
            .map_err(|e| sled::Error::ReportableBug(format!("flush task failed: {e}")))??;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn inode() -> Inode {
        let t = SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(1_700_000_000);
        Inode {
            ino: 42,
            parent: 1,
            name: "a.txt".into(),
            kind: EntryKind::File,
            size: 3,
            mtime: t,
            atime: t,
            ctime: t,
            perm: 0o644,
            uid: 1000,
            gid: 1000,
            symlink_target: None,
            remote: Some(RemoteState {
                path: "/a.txt".into(),
                revision: "r1".into(),
                id: "/a.txt".into(),
            }),
            dirty: false,
            base_revision: None,
            listed_at: None,
            hash: None,
            generation: 7,
            conflict: None,
            upload_error: None,
            special: None,
            subdirs: None,
        }
    }

    #[test]
    fn records_from_before_special_files_still_read() {
        let now = encode(&inode());
        // The same inode as the previous version wrote it: without the trailing `special`
        // and `subdirs` (bincode writes `None` as one zero byte).
        assert_eq!(&now[now.len() - 2..], &[0, 0]);
        let before = &now[..now.len() - 2];
        let read = decode_inode(before).unwrap();
        assert_eq!(
            (read.ino, read.name.as_str(), read.generation),
            (42, "a.txt", 7)
        );
        assert_eq!((read.special, read.subdirs), (None, None));
        assert_eq!(read.remote.unwrap().revision, "r1");
        // And this version's records, special or not, read as written.
        let mut fifo = inode();
        fifo.special = Some(Special {
            kind: SpecialKind::CharDevice,
            rdev: 259,
        });
        let again = decode_inode(&encode(&fifo)).unwrap();
        assert_eq!(again.special, fifo.special);
        assert!(decode_inode(&now[..10]).is_err(), "a cut record is corrupt");
    }
}
