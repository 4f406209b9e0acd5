//! A provider that only reads is a first-class provider: it implements `list`, `stat`,
//! `read_range` and `quota`, says `writable: false`, and its connection — mounted through
//! the kernel — serves reads while every change answers EROFS, without anything being
//! queued for the remote.

mod common;

use std::collections::BTreeMap;
use std::fs;
use std::io::{ErrorKind, Read, Seek, SeekFrom, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use bytes::Bytes;
use cloudmount::provider::{
    ByteStream, Capabilities, EntryKind, ListStream, Provider, ProviderError, ProviderResult,
    Quota, RemoteEntry, UploadOptions,
};

use common::*;

/// A fixed tree of files and folders, read-only: the smallest provider there is.
struct FixedTree {
    /// Path -> content (`None` for a folder).
    nodes: BTreeMap<&'static str, Option<&'static [u8]>>,
}

impl FixedTree {
    fn new() -> Self {
        FixedTree {
            nodes: BTreeMap::from([
                ("/", None),
                ("/hello.txt", Some(&b"hello, read-only world\n"[..])),
                ("/docs", None),
                (
                    "/docs/notes.md",
                    Some(&b"# notes\nnothing to change here\n"[..]),
                ),
                ("/empty", None),
            ]),
        }
    }

    fn entry(path: &str, content: Option<&[u8]>) -> RemoteEntry {
        RemoteEntry {
            id: path.to_string(),
            name: path.rsplit('/').next().unwrap_or_default().to_string(),
            kind: if content.is_some() {
                EntryKind::File
            } else {
                EntryKind::Dir
            },
            size: content.map_or(0, |c| c.len() as u64),
            mtime: SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000),
            revision: "1".into(),
            hash: None,
            mode: None,
            symlink_target: None,
        }
    }

    fn parent(path: &str) -> &str {
        match path.rfind('/') {
            Some(0) => "/",
            Some(i) => &path[..i],
            None => "/",
        }
    }
}

#[async_trait]
impl Provider for FixedTree {
    fn kind(&self) -> &'static str {
        "fixed"
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities {
            writable: false,
            ..Capabilities::default()
        }
    }

    fn list<'a>(&'a self, dir: &'a str) -> ListStream<'a> {
        let page = match self.nodes.get(dir) {
            Some(None) => Ok(self
                .nodes
                .iter()
                .filter(|(p, _)| **p != "/" && Self::parent(p) == dir)
                .map(|(p, c)| Self::entry(p, *c))
                .collect()),
            Some(Some(_)) => Err(ProviderError::NotADirectory(dir.to_string())),
            None => Err(ProviderError::NotFound(dir.to_string())),
        };
        Box::pin(futures::stream::iter([page]))
    }

    async fn stat(&self, path: &str) -> ProviderResult<RemoteEntry> {
        match self.nodes.get(path) {
            Some(c) => Ok(Self::entry(path, *c)),
            None => Err(ProviderError::NotFound(path.to_string())),
        }
    }

    async fn read_range(
        &self,
        path: &str,
        _revision: Option<&str>,
        offset: u64,
        len: u64,
    ) -> ProviderResult<ByteStream> {
        let content = match self.nodes.get(path) {
            Some(Some(c)) => *c,
            Some(None) => return Err(ProviderError::IsADirectory(path.to_string())),
            None => return Err(ProviderError::NotFound(path.to_string())),
        };
        let start = (offset as usize).min(content.len());
        let end = start.saturating_add(len as usize).min(content.len());
        let piece = Bytes::copy_from_slice(&content[start..end]);
        Ok(Box::pin(futures::stream::iter([Ok(piece)])))
    }

    async fn quota(&self) -> ProviderResult<Quota> {
        Ok(Quota::default())
    }
}

fn assert_erofs<T: std::fmt::Debug>(what: &str, r: std::io::Result<T>) {
    match r {
        Err(e) => assert_eq!(
            errno_of(&e),
            libc::EROFS,
            "{what}: expected EROFS, got {e} ({:?})",
            e.kind()
        ),
        Ok(v) => panic!("{what}: expected EROFS, but it succeeded ({v:?})"),
    }
}

#[test]
fn a_read_only_provider_serves_reads_and_refuses_every_change_with_erofs() {
    let m = InProcessMount::new(Arc::new(FixedTree::new()), test_config(|_| {}));

    // Reads: listings, attributes, contents (whole and from an offset).
    let mut top: Vec<String> = fs::read_dir(m.mnt())
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    top.sort();
    assert_eq!(top, ["docs", "empty", "hello.txt"]);
    assert_eq!(
        fs::read(m.path("hello.txt")).unwrap(),
        b"hello, read-only world\n"
    );
    assert_eq!(
        fs::read_to_string(m.path("docs/notes.md")).unwrap(),
        "# notes\nnothing to change here\n"
    );
    let meta = fs::metadata(m.path("docs/notes.md")).unwrap();
    assert!(meta.is_file());
    assert_eq!(meta.len(), 31);
    assert!(fs::metadata(m.path("docs")).unwrap().is_dir());
    let mut f = fs::File::open(m.path("hello.txt")).unwrap();
    f.seek(SeekFrom::Start(7)).unwrap();
    let mut rest = String::new();
    f.read_to_string(&mut rest).unwrap();
    assert_eq!(rest, "read-only world\n");
    drop(f);

    // Every change: EROFS, for new names and existing ones alike.
    assert_erofs("create", fs::File::create(m.path("new.txt")));
    assert_erofs(
        "create_new",
        fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(m.path("docs/new.txt")),
    );
    assert_erofs(
        "write (open an existing file for writing)",
        fs::OpenOptions::new()
            .write(true)
            .open(m.path("hello.txt"))
            .and_then(|mut f| f.write_all(b"changed")),
    );
    assert_erofs(
        "append",
        fs::OpenOptions::new()
            .append(true)
            .open(m.path("docs/notes.md"))
            .and_then(|mut f| f.write_all(b"more")),
    );
    assert_erofs("mkdir", fs::create_dir(m.path("newdir")));
    assert_erofs(
        "rename",
        fs::rename(m.path("hello.txt"), m.path("renamed.txt")),
    );
    assert_erofs(
        "rename into a folder",
        fs::rename(m.path("hello.txt"), m.path("docs/hello.txt")),
    );
    assert_erofs("unlink", fs::remove_file(m.path("hello.txt")));
    assert_erofs("rmdir", fs::remove_dir(m.path("empty")));
    assert_erofs(
        "symlink",
        std::os::unix::fs::symlink("hello.txt", m.path("link")),
    );
    assert_erofs(
        "truncate (by path)",
        nix::unistd::truncate(&m.path("hello.txt"), 0).map_err(std::io::Error::from),
    );
    assert_erofs(
        "truncate (open with O_TRUNC)",
        fs::OpenOptions::new()
            .write(true)
            .truncate(true)
            .open(m.path("hello.txt")),
    );
    assert_erofs(
        "chmod",
        fs::set_permissions(m.path("hello.txt"), fs::Permissions::from_mode(0o600)),
    );
    assert_erofs(
        "chmod a folder",
        fs::set_permissions(m.path("docs"), fs::Permissions::from_mode(0o700)),
    );

    // Nothing changed, nothing is waiting to go to the remote.
    let mut top_after: Vec<String> = fs::read_dir(m.mnt())
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    top_after.sort();
    assert_eq!(top_after, top);
    assert_eq!(
        fs::read(m.path("hello.txt")).unwrap(),
        b"hello, read-only world\n"
    );
    assert_eq!(fs::read_dir(m.path("empty")).unwrap().count(), 0);
    assert!(fs::symlink_metadata(m.path("link")).is_err_and(|e| e.kind() == ErrorKind::NotFound));
    assert_eq!(m.vfs().queue.len(), 0);
}

#[test]
fn the_trait_answers_changes_to_a_read_only_provider_with_a_read_only_error() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    let p = FixedTree::new();
    rt.block_on(async {
        let refused = [
            p.upload("/a", Path::new("/dev/null"), &UploadOptions::default())
                .await
                .err(),
            p.mkdir("/d").await.err(),
            p.rename("/hello.txt", "/b", false).await.err(),
            p.copy("/hello.txt", "/c").await.err(),
            p.symlink("/l", "hello.txt").await.err(),
        ];
        for e in refused.into_iter().chain([
            p.delete("/hello.txt").await.err(),
            p.set_mode("/hello.txt", 0o600).await.err(),
            p.set_mtime("/hello.txt", SystemTime::now()).await.err(),
        ]) {
            match e {
                Some(ProviderError::PermissionDenied(m)) => {
                    assert!(m.contains("read-only"), "{m}")
                }
                other => panic!("expected a read-only PermissionDenied, got {other:?}"),
            }
        }
    });
}
