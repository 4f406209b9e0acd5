//! The functional suite shared by the mount tests: every filesystem operation through a
//! real kernel mount, asserting contents and errno, and then — once the write-back queue
//! drained — that the remote holds exactly what the mount shows. Backend differences (what
//! the provider can store) come in as `Backend` facts rather than per-provider special
//! cases.
//!
//! Each case is a function over a [`Mounted`] backend, started empty; the
//! [`mount_suite!`] macro instantiates every case as a named `#[test]` for one backend
//! (`tests/mount_suite.rs` does so for each), so one failing case does not hide the others.
//!
//! Include with `#[macro_use] #[path = "suite/mod.rs"] mod suite;` next to `mod common;`.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::ffi::CString;
use std::fs::{self, File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use cloudmount::provider::Capabilities;

use crate::common::{errno_of, pattern};

/// What the backend under the mount can hold, as far as the suite's expectations go.
#[derive(Debug, Clone, Copy)]
pub struct Backend {
    /// Symbolic links are stored; otherwise creating one fails with EPERM.
    pub symlinks: bool,
}

impl Backend {
    /// Every provider holds symbolic links: natively, or as portable link files.
    pub fn from_capabilities(_caps: &Capabilities) -> Self {
        Backend { symlinks: true }
    }
}

pub fn expect_errno<T: std::fmt::Debug>(r: std::io::Result<T>, errno: i32, what: &str) {
    match r {
        Ok(v) => panic!("{what}: expected errno {errno}, got Ok({v:?})"),
        Err(e) => assert_eq!(errno_of(&e), errno, "{what}: got {e}"),
    }
}

pub fn cpath(p: &Path) -> CString {
    CString::new(p.as_os_str().as_bytes()).unwrap()
}

/// A mount the suite runs on: the mounted directory, and a look at what the remote holds.
pub trait Mounted {
    /// The mounted directory (empty when a case starts).
    fn mnt(&self) -> &Path;
    fn backend(&self) -> Backend;
    /// Waits until the write-back queue is empty, and fails if jobs were parked.
    fn drain(&self);
    /// Everything the remote holds, in [`tree_of`]'s form.
    fn remote_tree(&self) -> Tree;
    /// The permission bits the remote keeps for `rel`, where it keeps them.
    fn remote_mode(&self, _rel: &str) -> Option<u32> {
        None
    }
    /// Someone else writes `data` to the file `rel` on the remote (its folder exists there).
    fn remote_put(&self, rel: &str, data: &[u8]);
}

/// Path ("/a/b") → file content, or `None` for a directory. A symbolic link appears as its
/// portable link file (what a provider without links stores), so trees of providers with
/// and without links compare.
pub type Tree = BTreeMap<String, Option<Vec<u8>>>;

/// cloudmount's own names at the top of a connection, never part of the user's tree.
const OWN_NAMES: [&str; 2] = ["/.cloudmount-versions", "/.cloudmount-tmp"];

fn is_special(meta: &fs::Metadata) -> bool {
    use std::os::unix::fs::FileTypeExt;
    let t = meta.file_type();
    t.is_fifo() || t.is_socket() || t.is_char_device() || t.is_block_device()
}

/// The tree below `root` on a local file system (a mount, or a server's disk).
pub fn tree_of(root: &Path) -> Tree {
    fn walk(root: &Path, dir: &Path, out: &mut Tree) {
        for e in fs::read_dir(dir).unwrap_or_else(|e| panic!("read_dir {}: {e}", dir.display())) {
            let e = e.unwrap();
            let path = e.path();
            let rel = format!("/{}", path.strip_prefix(root).unwrap().to_string_lossy());
            if OWN_NAMES.contains(&rel.as_str()) {
                continue;
            }
            let meta = fs::symlink_metadata(&path).unwrap();
            if meta.is_dir() {
                out.insert(rel, None);
                walk(root, &path, out);
            } else if meta.is_file() {
                out.insert(rel, Some(fs::read(&path).unwrap()));
            } else if meta.file_type().is_symlink() {
                let target = fs::read_link(&path).unwrap();
                out.insert(rel, Some(link_file(target.to_str().unwrap())));
            } else if is_special(&meta) {
                // FIFOs, sockets and device nodes live in the mount's metadata only, never
                // on the remote: not part of what the remote must hold.
                continue;
            } else {
                panic!("unexpected file type at {}", path.display());
            }
        }
    }
    let mut out = Tree::new();
    walk(root, root, &mut out);
    out
}

/// The portable link file standing for a link to `target`.
pub fn link_file(target: &str) -> Vec<u8> {
    cloudmount::vfs::symlink_file::encode(target).unwrap()
}

#[track_caller]
pub fn assert_same_tree(got: &Tree, want: &Tree, what: &str) {
    let mut diffs = Vec::new();
    for (p, v) in want {
        match got.get(p) {
            None => diffs.push(format!("missing {p}")),
            Some(g) if g != v => diffs.push(format!(
                "{p}: {} bytes, expected {}",
                g.as_ref().map_or(-1, |g| g.len() as i64),
                v.as_ref().map_or(-1, |v| v.len() as i64)
            )),
            _ => {}
        }
    }
    for p in got.keys().filter(|p| !want.contains_key(*p)) {
        diffs.push(format!("unexpected {p}"));
    }
    assert!(diffs.is_empty(), "{what}:\n  {}", diffs.join("\n  "));
}

/// Runs one case on a fresh mount, then checks that the remote ended up as the mount says.
pub fn run(m: &dyn Mounted, case: Case) {
    case(m);
    m.drain();
    assert_same_tree(
        &m.remote_tree(),
        &tree_of(m.mnt()),
        "remote vs mount after the case",
    );
}

/// Every case in turn on one mount, emptied between cases: for a setup too costly to
/// start once per case (a daemon with a configuration file and a password).
pub fn run_all_in_turn(m: &dyn Mounted) {
    for (name, case) in CASES {
        eprintln!("case {name}");
        run(m, *case);
        for e in fs::read_dir(m.mnt()).unwrap() {
            let p = e.unwrap().path();
            match fs::symlink_metadata(&p).unwrap().is_dir() {
                true => fs::remove_dir_all(&p).unwrap(),
                false => fs::remove_file(&p).unwrap(),
            }
        }
        m.drain();
        assert_same_tree(
            &m.remote_tree(),
            &Tree::new(),
            &format!("remote after emptying the mount ({name})"),
        );
    }
}

/// One case of the suite.
pub type Case = fn(&dyn Mounted);

/// The cases by name; [`mount_suite!`] lists the same.
pub const CASES: &[(&str, Case)] = &[
    (
        "write_at_offsets_and_read_back",
        write_at_offsets_and_read_back,
    ),
    (
        "truncate_shrinks_grows_and_o_trunc_empties",
        truncate_shrinks_grows_and_o_trunc_empties,
    ),
    (
        "timestamps_explicit_now_and_omit",
        timestamps_explicit_now_and_omit,
    ),
    (
        "mode_is_kept_and_files_belong_to_the_mounting_user",
        mode_is_kept_and_files_belong_to_the_mounting_user,
    ),
    ("directories_and_their_errors", directories_and_their_errors),
    (
        "rename_files_over_files_and_noreplace",
        rename_files_over_files_and_noreplace,
    ),
    (
        "rename_directories_and_their_errors",
        rename_directories_and_their_errors,
    ),
    ("symbolic_links", symbolic_links),
    ("special_files_stay_here", special_files_stay_here),
    (
        "hard_links_are_one_file_and_a_copy_per_name_on_the_remote",
        hard_links_are_one_file_and_a_copy_per_name_on_the_remote,
    ),
    (
        "an_unlinked_open_file_still_reads",
        an_unlinked_open_file_still_reads,
    ),
    (
        "a_handle_keeps_its_content_when_renamed_over",
        a_handle_keeps_its_content_when_renamed_over,
    ),
    (
        "shared_mmap_writes_reach_the_remote",
        shared_mmap_writes_reach_the_remote,
    ),
    ("statfs_reports_a_size", statfs_reports_a_size),
    (
        "state_xattr_is_readable_and_read_only",
        state_xattr_is_readable_and_read_only,
    ),
    ("fsync_after_writes", fsync_after_writes),
    (
        "concurrent_writers_and_readers",
        concurrent_writers_and_readers,
    ),
    (
        "an_edit_on_the_remote_during_a_local_edit_is_a_conflict",
        an_edit_on_the_remote_during_a_local_edit_is_a_conflict,
    ),
    (
        "a_remote_edit_of_one_linked_name_during_a_local_edit_splits_it_off",
        a_remote_edit_of_one_linked_name_during_a_local_edit_splits_it_off,
    ),
];

/// The remote once the queue drained.
fn settled(m: &dyn Mounted) -> Tree {
    m.drain();
    m.remote_tree()
}

/// Instantiates every case of the suite as a `#[test]` in module `$backend`, each on a
/// fresh mount made by `$make` (an expression of a type implementing [`Mounted`]).
#[allow(unused_macros)]
macro_rules! mount_suite {
    ($backend:ident => $make:expr) => {
        mod $backend {
            #[allow(unused_imports)]
            use super::*;
            mount_suite!(@cases $make;
                write_at_offsets_and_read_back,
                truncate_shrinks_grows_and_o_trunc_empties,
                timestamps_explicit_now_and_omit,
                mode_is_kept_and_files_belong_to_the_mounting_user,
                directories_and_their_errors,
                rename_files_over_files_and_noreplace,
                rename_directories_and_their_errors,
                symbolic_links,
                special_files_stay_here,
                hard_links_are_one_file_and_a_copy_per_name_on_the_remote,
                an_unlinked_open_file_still_reads,
                a_handle_keeps_its_content_when_renamed_over,
                shared_mmap_writes_reach_the_remote,
                statfs_reports_a_size,
                state_xattr_is_readable_and_read_only,
                fsync_after_writes,
                concurrent_writers_and_readers,
                an_edit_on_the_remote_during_a_local_edit_is_a_conflict,
                a_remote_edit_of_one_linked_name_during_a_local_edit_splits_it_off,
            );
        }
    };
    (@cases $make:expr; $($case:ident),* $(,)?) => {
        $(
            #[test]
            fn $case() {
                let m = $make;
                crate::suite::run(&m, crate::suite::$case);
            }
        )*
    };
}

pub fn write_at_offsets_and_read_back(m: &dyn Mounted) {
    let f = m.mnt().join("file.bin");
    {
        let mut h = File::create(&f).unwrap();
        h.write_all(b"hello world").unwrap();
        h.seek(SeekFrom::Start(20)).unwrap();
        h.write_all(b"tail").unwrap();
    }
    let data = fs::read(&f).unwrap();
    assert_eq!(data.len(), 24);
    assert_eq!(&data[..11], b"hello world");
    assert_eq!(&data[11..20], &[0u8; 9]);
    assert_eq!(&data[20..], b"tail");

    // overwrite in the middle with a read-write handle
    {
        let mut h = OpenOptions::new().read(true).write(true).open(&f).unwrap();
        h.seek(SeekFrom::Start(6)).unwrap();
        h.write_all(b"WORLD").unwrap();
        let mut buf = [0u8; 11];
        h.seek(SeekFrom::Start(0)).unwrap();
        h.read_exact(&mut buf).unwrap();
        assert_eq!(&buf, b"hello WORLD");
    }
    // append
    {
        let mut h = OpenOptions::new().append(true).open(&f).unwrap();
        h.write_all(b"!").unwrap();
    }
    let mut want = b"hello WORLD".to_vec();
    want.extend_from_slice(&[0u8; 9]);
    want.extend_from_slice(b"tail!");
    assert_eq!(fs::read(&f).unwrap(), want);
    assert_eq!(settled(m)["/file.bin"].as_deref(), Some(&want[..]));
}

pub fn truncate_shrinks_grows_and_o_trunc_empties(m: &dyn Mounted) {
    let f = m.mnt().join("file.bin");
    fs::write(&f, b"hello world").unwrap();
    let h = OpenOptions::new().write(true).open(&f).unwrap();
    h.set_len(5).unwrap();
    assert_eq!(fs::read(&f).unwrap(), b"hello");
    h.set_len(8).unwrap();
    assert_eq!(fs::read(&f).unwrap(), b"hello\0\0\0");
    drop(h);
    assert_eq!(
        settled(m)["/file.bin"].as_deref(),
        Some(&b"hello\0\0\0"[..])
    );
    // O_TRUNC
    fs::write(&f, b"short").unwrap();
    assert_eq!(fs::read(&f).unwrap(), b"short");
    assert_eq!(fs::metadata(&f).unwrap().len(), 5);
    assert_eq!(settled(m)["/file.bin"].as_deref(), Some(&b"short"[..]));
}

pub fn timestamps_explicit_now_and_omit(m: &dyn Mounted) {
    let f = m.mnt().join("file.bin");
    fs::write(&f, b"times").unwrap();
    // explicit mtime, UTIME_OMIT keeps atime
    let when = UNIX_EPOCH + Duration::from_secs(1_000_000_000);
    let times = [
        libc::timespec {
            tv_sec: 0,
            tv_nsec: libc::UTIME_OMIT,
        },
        libc::timespec {
            tv_sec: 1_000_000_000,
            tv_nsec: 0,
        },
    ];
    assert_eq!(
        unsafe { libc::utimensat(libc::AT_FDCWD, cpath(&f).as_ptr(), times.as_ptr(), 0) },
        0
    );
    assert_eq!(fs::metadata(&f).unwrap().modified().unwrap(), when);
    let now_times = [
        libc::timespec {
            tv_sec: 0,
            tv_nsec: libc::UTIME_OMIT,
        },
        libc::timespec {
            tv_sec: 0,
            tv_nsec: libc::UTIME_NOW,
        },
    ];
    assert_eq!(
        unsafe { libc::utimensat(libc::AT_FDCWD, cpath(&f).as_ptr(), now_times.as_ptr(), 0) },
        0
    );
    let mtime = fs::metadata(&f).unwrap().modified().unwrap();
    assert!(SystemTime::now().duration_since(mtime).unwrap() < Duration::from_secs(60));
}

/// The mode a file is created with goes up with its content, and a chmod reaches a remote
/// that stores modes however it falls against the upload: right after the close (the
/// upload waiting or running), and long after (the file clean). Folders likewise.
pub fn mode_is_kept_and_files_belong_to_the_mounting_user(m: &dyn Mounted) {
    use std::os::unix::fs::OpenOptionsExt;
    let f = m.mnt().join("file.bin");
    {
        let mut h = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&f)
            .unwrap();
        h.write_all(b"mode").unwrap();
    }
    assert_eq!(fs::metadata(&f).unwrap().mode() & 0o777, 0o600);
    assert_eq!(
        fs::metadata(&f).unwrap().uid(),
        nix::unistd::getuid().as_raw()
    );
    m.drain();
    if let Some(mode) = m.remote_mode("/file.bin") {
        assert_eq!(mode & 0o777, 0o600, "mode on the remote");
    }
    // Long after the upload: nothing but the chmod is queued.
    fs::set_permissions(&f, fs::Permissions::from_mode(0o640)).unwrap();
    assert_eq!(fs::metadata(&f).unwrap().mode() & 0o777, 0o640);
    m.drain();
    if let Some(mode) = m.remote_mode("/file.bin") {
        assert_eq!(mode & 0o777, 0o640, "mode on the remote after a chmod");
    }
    // Right after a write: the chmod falls before or during the upload.
    fs::write(&f, b"mode, changed").unwrap();
    fs::set_permissions(&f, fs::Permissions::from_mode(0o604)).unwrap();
    let d = m.mnt().join("dir");
    fs::create_dir(&d).unwrap();
    fs::set_permissions(&d, fs::Permissions::from_mode(0o750)).unwrap();
    assert_eq!(fs::metadata(&d).unwrap().mode() & 0o777, 0o750);
    m.drain();
    if let Some(mode) = m.remote_mode("/file.bin") {
        assert_eq!(
            mode & 0o777,
            0o604,
            "mode on the remote after a chmod during the upload"
        );
    }
    if let Some(mode) = m.remote_mode("/dir") {
        assert_eq!(mode & 0o777, 0o750, "a folder's mode on the remote");
    }
    // Renamed before the chmod reached the remote: the mode follows the file.
    fs::set_permissions(&f, fs::Permissions::from_mode(0o644)).unwrap();
    fs::rename(&f, d.join("moved.bin")).unwrap();
    m.drain();
    if let Some(mode) = m.remote_mode("/dir/moved.bin") {
        assert_eq!(
            mode & 0o777,
            0o644,
            "mode on the remote after chmod then rename"
        );
    }
    // A new file and a new folder, chmod'ed and renamed before anything of them was
    // uploaded: the modes arrive under the final names.
    let fresh = m.mnt().join("fresh.bin");
    fs::write(&fresh, b"fresh").unwrap();
    fs::set_permissions(&fresh, fs::Permissions::from_mode(0o600)).unwrap();
    fs::rename(&fresh, m.mnt().join("renamed.bin")).unwrap();
    let sub = m.mnt().join("sub");
    fs::create_dir(&sub).unwrap();
    fs::set_permissions(&sub, fs::Permissions::from_mode(0o700)).unwrap();
    fs::rename(&sub, m.mnt().join("sub-renamed")).unwrap();
    m.drain();
    if let Some(mode) = m.remote_mode("/renamed.bin") {
        assert_eq!(
            mode & 0o777,
            0o600,
            "a new file's mode after chmod and rename"
        );
    }
    if let Some(mode) = m.remote_mode("/sub-renamed") {
        assert_eq!(
            mode & 0o777,
            0o700,
            "a new folder's mode after chmod and rename"
        );
    }
}

pub fn directories_and_their_errors(m: &dyn Mounted) {
    let root = m.mnt();
    let f = root.join("file.bin");
    fs::write(&f, b"x").unwrap();
    let d = root.join("dir");
    fs::create_dir(&d).unwrap();
    expect_errno(fs::create_dir(&d), libc::EEXIST, "mkdir existing");
    fs::write(d.join("inner.txt"), b"inner").unwrap();
    expect_errno(fs::remove_dir(&d), libc::ENOTEMPTY, "rmdir non-empty");
    expect_errno(fs::remove_file(&d), libc::EISDIR, "unlink a directory");
    expect_errno(fs::remove_dir(&f), libc::ENOTDIR, "rmdir a file");
    expect_errno(fs::read(root.join("missing")), libc::ENOENT, "open missing");
    expect_errno(
        fs::read(f.join("below-a-file")),
        libc::ENOTDIR,
        "path through a file",
    );
    expect_errno(
        OpenOptions::new().write(true).create_new(true).open(&f),
        libc::EEXIST,
        "O_EXCL on existing",
    );
    expect_errno(
        OpenOptions::new().write(true).open(&d),
        libc::EISDIR,
        "open dir for write",
    );
    let long = "x".repeat(256);
    expect_errno(
        fs::write(root.join(&long), b""),
        libc::ENAMETOOLONG,
        "name too long",
    );
    let mut names: Vec<_> = fs::read_dir(root)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    names.sort();
    assert_eq!(names, vec!["dir", "file.bin"]);
    // an empty directory goes away, and stays away on the remote
    fs::create_dir(root.join("empty")).unwrap();
    fs::remove_dir(root.join("empty")).unwrap();
    let remote = settled(m);
    assert_eq!(remote["/dir/inner.txt"].as_deref(), Some(&b"inner"[..]));
    assert!(!remote.contains_key("/empty"));
}

pub fn rename_files_over_files_and_noreplace(m: &dyn Mounted) {
    let root = m.mnt();
    fs::write(root.join("a.txt"), b"AAA").unwrap();
    fs::write(root.join("b.txt"), b"BBB").unwrap();
    fs::rename(root.join("a.txt"), root.join("b.txt")).unwrap();
    assert_eq!(fs::read(root.join("b.txt")).unwrap(), b"AAA");
    expect_errno(
        fs::metadata(root.join("a.txt")),
        libc::ENOENT,
        "old name after rename",
    );
    fs::write(root.join("c.txt"), b"CCC").unwrap();
    let r = unsafe {
        libc::renameat2(
            libc::AT_FDCWD,
            cpath(&root.join("c.txt")).as_ptr(),
            libc::AT_FDCWD,
            cpath(&root.join("b.txt")).as_ptr(),
            libc::RENAME_NOREPLACE,
        )
    };
    assert_eq!(r, -1);
    assert_eq!(
        std::io::Error::last_os_error().raw_os_error(),
        Some(libc::EEXIST)
    );
    assert_eq!(fs::read(root.join("b.txt")).unwrap(), b"AAA");
    let remote = settled(m);
    assert_eq!(remote["/b.txt"].as_deref(), Some(&b"AAA"[..]));
    assert_eq!(remote["/c.txt"].as_deref(), Some(&b"CCC"[..]));
    assert!(!remote.contains_key("/a.txt"), "renamed-away name is gone");
}

pub fn rename_directories_and_their_errors(m: &dyn Mounted) {
    let root = m.mnt();
    let d = root.join("dir");
    fs::create_dir(&d).unwrap();
    fs::write(d.join("inner.txt"), b"inner").unwrap();
    fs::write(root.join("b.txt"), b"BBB").unwrap();
    fs::rename(&d, root.join("dir2")).unwrap();
    assert_eq!(fs::read(root.join("dir2/inner.txt")).unwrap(), b"inner");
    fs::create_dir(root.join("dir3")).unwrap();
    fs::create_dir(root.join("dir3/sub")).unwrap();
    expect_errno(
        fs::rename(root.join("dir3"), root.join("dir3/sub/x")),
        libc::EINVAL,
        "dir into itself",
    );
    expect_errno(
        fs::rename(root.join("dir2"), root.join("dir3")),
        libc::ENOTEMPTY,
        "dir over non-empty dir",
    );
    expect_errno(
        fs::rename(root.join("b.txt"), root.join("dir3")),
        libc::EISDIR,
        "file over dir",
    );
    let remote = settled(m);
    assert_eq!(remote["/dir2/inner.txt"].as_deref(), Some(&b"inner"[..]));
    assert!(remote.contains_key("/dir3/sub"));
    assert!(!remote.contains_key("/dir"), "renamed-away folder is gone");
}

/// Stored when the provider can, otherwise a clear EPERM and nothing left.
pub fn symbolic_links(m: &dyn Mounted) {
    let root = m.mnt();
    fs::write(root.join("b.txt"), b"AAA").unwrap();
    if m.backend().symlinks {
        std::os::unix::fs::symlink("b.txt", root.join("link")).unwrap();
        assert_eq!(
            fs::read_link(root.join("link")).unwrap(),
            Path::new("b.txt")
        );
        assert_eq!(fs::read(root.join("link")).unwrap(), b"AAA");
        assert_eq!(
            settled(m)["/link"].as_deref(),
            Some(&link_file("b.txt")[..]),
            "the link on the remote"
        );
    } else {
        expect_errno(
            std::os::unix::fs::symlink("b.txt", root.join("link")),
            libc::EPERM,
            "symlink on a provider without symlinks",
        );
        expect_errno(
            fs::symlink_metadata(root.join("link")),
            libc::ENOENT,
            "refused symlink left nothing behind",
        );
    }
}

/// A FIFO is made and kept in the metadata store only (on every backend: nothing of it on
/// the remote); cloudmount's reserved names: a clear EPERM.
pub fn special_files_stay_here(m: &dyn Mounted) {
    use std::os::unix::fs::FileTypeExt;
    let root = m.mnt();
    fs::write(root.join("b.txt"), b"AAA").unwrap();
    let fifo = cpath(&root.join("fifo"));
    assert_eq!(unsafe { libc::mkfifo(fifo.as_ptr(), 0o644) }, 0);
    assert!(fs::symlink_metadata(root.join("fifo"))
        .unwrap()
        .file_type()
        .is_fifo());
    expect_errno(
        fs::create_dir(root.join(".cloudmount-versions")),
        libc::EPERM,
        "reserved name",
    );
    let remote = settled(m);
    assert!(!remote.contains_key("/fifo"));
    assert!(remote.contains_key("/b.txt"));
}

/// A hard link is one file under two names (one inode, two links, one content), and on
/// the remote each name is an ordinary file with that content; unlinking one name keeps
/// the other.
pub fn hard_links_are_one_file_and_a_copy_per_name_on_the_remote(m: &dyn Mounted) {
    let root = m.mnt();
    fs::write(root.join("b.txt"), b"AAA").unwrap();
    fs::create_dir(root.join("sub")).unwrap();
    fs::hard_link(root.join("b.txt"), root.join("sub/hard")).unwrap();
    let (b, h) = (
        fs::metadata(root.join("b.txt")).unwrap(),
        fs::metadata(root.join("sub/hard")).unwrap(),
    );
    assert_eq!((b.ino(), b.nlink(), h.nlink()), (h.ino(), 2, 2));
    OpenOptions::new()
        .append(true)
        .open(root.join("sub/hard"))
        .unwrap()
        .write_all(b"BBB")
        .unwrap();
    assert_eq!(fs::read(root.join("b.txt")).unwrap(), b"AAABBB");
    let remote = settled(m);
    assert_eq!(remote.get("/b.txt"), Some(&Some(b"AAABBB".to_vec())));
    assert_eq!(remote.get("/sub/hard"), Some(&Some(b"AAABBB".to_vec())));
    expect_errno(
        fs::hard_link(root.join("b.txt"), root.join("sub/hard")),
        libc::EEXIST,
        "link over an existing name",
    );
    fs::remove_file(root.join("b.txt")).unwrap();
    assert_eq!(fs::metadata(root.join("sub/hard")).unwrap().nlink(), 1);
    assert_eq!(fs::read(root.join("sub/hard")).unwrap(), b"AAABBB");
    let remote = settled(m);
    assert!(!remote.contains_key("/b.txt"));
    assert_eq!(remote.get("/sub/hard"), Some(&Some(b"AAABBB".to_vec())));
}

pub fn an_unlinked_open_file_still_reads(m: &dyn Mounted) {
    let root = m.mnt();
    fs::write(root.join("open.txt"), b"still here").unwrap();
    let mut h = File::open(root.join("open.txt")).unwrap();
    fs::remove_file(root.join("open.txt")).unwrap();
    expect_errno(
        fs::metadata(root.join("open.txt")),
        libc::ENOENT,
        "unlinked name",
    );
    let mut s = String::new();
    h.read_to_string(&mut s).unwrap();
    assert_eq!(s, "still here");
    drop(h);
    assert!(!settled(m).contains_key("/open.txt"));
}

/// A handle opened before another file is renamed over its name keeps its own content.
pub fn a_handle_keeps_its_content_when_renamed_over(m: &dyn Mounted) {
    let root = m.mnt();
    fs::write(root.join("victim.txt"), b"old content").unwrap();
    fs::write(root.join("newer.txt"), b"new content").unwrap();
    let mut old = File::open(root.join("victim.txt")).unwrap();
    fs::rename(root.join("newer.txt"), root.join("victim.txt")).unwrap();
    let mut s = String::new();
    old.read_to_string(&mut s).unwrap();
    assert_eq!(s, "old content");
    assert_eq!(fs::read(root.join("victim.txt")).unwrap(), b"new content");
    drop(old);
    let remote = settled(m);
    assert_eq!(remote["/victim.txt"].as_deref(), Some(&b"new content"[..]));
    assert!(!remote.contains_key("/newer.txt"));
}

/// Write through a shared mapping, read back through read(), and find it on the remote.
pub fn shared_mmap_writes_reach_the_remote(m: &dyn Mounted) {
    let mm = m.mnt().join("mmap.bin");
    fs::write(&mm, vec![b'.'; 8192]).unwrap();
    {
        let h = OpenOptions::new().read(true).write(true).open(&mm).unwrap();
        use std::os::fd::AsRawFd;
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                8192,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                h.as_raw_fd(),
                0,
            )
        };
        assert_ne!(p, libc::MAP_FAILED);
        let slice = unsafe { std::slice::from_raw_parts_mut(p as *mut u8, 8192) };
        assert_eq!(slice[100], b'.');
        slice[4096..4101].copy_from_slice(b"MMAP!");
        assert_eq!(unsafe { libc::msync(p, 8192, libc::MS_SYNC) }, 0);
        assert_eq!(unsafe { libc::munmap(p, 8192) }, 0);
        h.sync_all().unwrap();
    }
    assert_eq!(&fs::read(&mm).unwrap()[4096..4101], b"MMAP!");
    let remote = settled(m);
    let on_remote = remote["/mmap.bin"]
        .as_ref()
        .expect("mmap.bin on the remote");
    assert_eq!(on_remote.len(), 8192);
    assert_eq!(&on_remote[4096..4101], b"MMAP!");
}

pub fn statfs_reports_a_size(m: &dyn Mounted) {
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    assert_eq!(
        unsafe { libc::statvfs(cpath(m.mnt()).as_ptr(), &mut st) },
        0
    );
    assert!(st.f_blocks > 0);
    assert_eq!(st.f_namemax, 255);
}

pub fn state_xattr_is_readable_and_read_only(m: &dyn Mounted) {
    let b = m.mnt().join("b.txt");
    fs::write(&b, b"AAA").unwrap();
    let name = CString::new("user.cloudmount.state").unwrap();
    let mut buf = [0u8; 64];
    let n = unsafe {
        libc::getxattr(
            cpath(&b).as_ptr(),
            name.as_ptr(),
            buf.as_mut_ptr() as *mut _,
            buf.len(),
        )
    };
    assert!(n > 0, "getxattr: {}", std::io::Error::last_os_error());
    let state = std::str::from_utf8(&buf[..n as usize]).unwrap();
    assert!(
        ["queued", "uploading", "cached", "dirty", "synced"].contains(&state),
        "state {state}"
    );
    let r = unsafe {
        libc::setxattr(
            cpath(&b).as_ptr(),
            name.as_ptr(),
            b"x".as_ptr() as *const _,
            1,
            0,
        )
    };
    assert_eq!(r, -1);
    assert_eq!(
        std::io::Error::last_os_error().raw_os_error(),
        Some(libc::EPERM)
    );
}

pub fn fsync_after_writes(m: &dyn Mounted) {
    let b = m.mnt().join("b.txt");
    let mut h = File::create(&b).unwrap();
    h.write_all(b"synced bytes").unwrap();
    h.sync_all().unwrap();
    drop(h);
    assert_eq!(settled(m)["/b.txt"].as_deref(), Some(&b"synced bytes"[..]));
}

/// 8 threads at once through one mount: files of many sizes in private folders, names
/// made in one shared folder, a rename, a delete and a shorter overwrite each, and reads
/// of one large file at scattered offsets while the others write. Every byte read back is
/// checked, and the remote ends up as the mount says ([`run`]).
pub fn concurrent_writers_and_readers(m: &dyn Mounted) {
    const THREADS: usize = 8;
    let root = m.mnt();
    let big = pattern(3 << 20, 99);
    fs::write(root.join("big.bin"), &big).unwrap();
    fs::create_dir(root.join("shared")).unwrap();
    let sizes = [0usize, 1, 4095, 4096, 65_537, (1 << 20) + 3, 300_000];
    std::thread::scope(|s| {
        for t in 0..THREADS {
            let (big, sizes) = (&big, &sizes);
            s.spawn(move || {
                let dir = root.join(format!("t{t}"));
                fs::create_dir(&dir).unwrap();
                for (i, &n) in sizes.iter().enumerate() {
                    let data = pattern(n, (t * 100 + i) as u64);
                    let f = dir.join(format!("f{i}.bin"));
                    fs::write(&f, &data).unwrap();
                    assert_eq!(fs::read(&f).unwrap(), data, "{}", f.display());
                }
                fs::rename(dir.join("f1.bin"), dir.join("r1.bin")).unwrap();
                fs::remove_file(dir.join("f2.bin")).unwrap();
                let short = format!("overwritten by {t}");
                fs::write(dir.join("f5.bin"), &short).unwrap();
                assert_eq!(fs::read(dir.join("f5.bin")).unwrap(), short.as_bytes());
                for i in 0..4 {
                    let f = root.join(format!("shared/t{t}-{i}.txt"));
                    fs::write(&f, format!("thread {t} file {i}")).unwrap();
                }
                let mut h = File::open(root.join("big.bin")).unwrap();
                for k in 0..8 {
                    let off = ((t * 7 + k * 13) % 40) * 65_536 + t * 17;
                    let mut buf = vec![0u8; 70_000];
                    h.seek(SeekFrom::Start(off as u64)).unwrap();
                    h.read_exact(&mut buf).unwrap();
                    assert!(buf == big[off..off + buf.len()], "big.bin at {off}");
                }
            });
        }
    });
    assert_eq!(
        fs::read_dir(root.join("shared")).unwrap().count(),
        THREADS * 4
    );
    for t in 0..THREADS {
        let mut names: Vec<String> = fs::read_dir(root.join(format!("t{t}")))
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        assert_eq!(
            names,
            ["f0.bin", "f3.bin", "f4.bin", "f5.bin", "f6.bin", "r1.bin"],
            "t{t}/"
        );
    }
    assert!(fs::read(root.join("big.bin")).unwrap() == big);
}

/// The content of the one conflict copy (`STEM (conflict …).txt`) on the remote.
fn the_conflict_copy<'a>(remote: &'a Tree, stem: &str) -> &'a [u8] {
    let prefix = format!("{stem} (conflict ");
    let copies: Vec<&String> = remote
        .keys()
        .filter(|p| p.starts_with(&prefix) && p.ends_with(").txt"))
        .collect();
    assert_eq!(copies.len(), 1, "conflict copies: {:?}", remote.keys());
    remote[copies[0]]
        .as_deref()
        .expect("a conflict copy is a file")
}

/// Someone else changes a file on the remote while it is being edited here: the remote's
/// version keeps the name, the local edit is kept beside it as a conflict copy
/// (`NAME (conflict …).EXT`), nothing is overwritten, and the mount shows both. The local
/// edit is open (so its upload cannot start) when the remote changes, which makes the
/// order certain on every backend.
pub fn an_edit_on_the_remote_during_a_local_edit_is_a_conflict(m: &dyn Mounted) {
    let f = m.mnt().join("notes.txt");
    fs::write(&f, b"base version").unwrap();
    m.drain();
    {
        let mut h = OpenOptions::new().write(true).open(&f).unwrap();
        h.write_all(b"local edit, longer than the base").unwrap();
        m.remote_put("/notes.txt", b"edited elsewhere meanwhile");
    }
    let remote = settled(m);
    assert_eq!(
        remote["/notes.txt"].as_deref(),
        Some(&b"edited elsewhere meanwhile"[..]),
        "the other edit keeps the name"
    );
    assert_eq!(
        the_conflict_copy(&remote, "/notes"),
        b"local edit, longer than the base"
    );
    assert_eq!(remote.len(), 2, "{:?}", remote.keys());
    assert_eq!(
        crate::common::xattr(&f, "user.cloudmount.state").unwrap(),
        "conflict"
    );
}

/// A conflict at one name of a hard link: another client changes `b.txt` on the remote
/// while the file is edited here through `a.txt`. That name leaves the link and keeps the
/// other edit; the local edit is kept beside it as a conflict copy, and stays under the
/// link's other name.
pub fn a_remote_edit_of_one_linked_name_during_a_local_edit_splits_it_off(m: &dyn Mounted) {
    let (a, b) = (m.mnt().join("a.txt"), m.mnt().join("b.txt"));
    fs::write(&a, b"base version").unwrap();
    fs::hard_link(&a, &b).unwrap();
    m.drain();
    {
        let mut h = OpenOptions::new().write(true).open(&a).unwrap();
        h.write_all(b"local edit, longer than the base").unwrap();
        m.remote_put("/b.txt", b"edited elsewhere meanwhile");
    }
    let remote = settled(m);
    assert_eq!(
        remote["/b.txt"].as_deref(),
        Some(&b"edited elsewhere meanwhile"[..]),
        "the other edit keeps its name"
    );
    assert_eq!(
        remote["/a.txt"].as_deref(),
        Some(&b"local edit, longer than the base"[..])
    );
    assert_eq!(
        the_conflict_copy(&remote, "/b"),
        b"local edit, longer than the base"
    );
    assert_eq!(remote.len(), 3, "{:?}", remote.keys());
    assert_eq!(fs::read(&b).unwrap(), b"edited elsewhere meanwhile");
    let (ma, mb) = (fs::metadata(&a).unwrap(), fs::metadata(&b).unwrap());
    assert_ne!(ma.ino(), mb.ino(), "b.txt left the link");
    assert_eq!((ma.nlink(), mb.nlink()), (1, 1));
}
