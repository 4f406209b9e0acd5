//! Hard links through the kernel (issue 14): `link()` makes one file with several names
//! in one connection — one inode number, `st_nlink` counting the names, writes through
//! one name seen through the others, unlinking one name keeping the others — and on the
//! remote every name is an ordinary file with the same content. Renames over and between
//! links, links across folders, the errors (EEXIST, ENOENT, EPERM on a folder, EXDEV
//! between connections), FIFOs, remount and kill -9, and the split when the remote
//! changes one of the names.

mod common;

use std::collections::BTreeMap;
use std::fs;
use std::io::Write;
use std::os::unix::fs::{DirEntryExt, FileTypeExt, MetadataExt};
use std::path::Path;
use std::time::Duration;

use common::*;

fn meta(p: &Path) -> fs::Metadata {
    fs::symlink_metadata(p).unwrap_or_else(|e| panic!("stat {}: {e}", p.display()))
}

fn link_errno(from: &Path, to: &Path) -> i32 {
    let e = fs::hard_link(from, to).expect_err("link should fail");
    errno_of(&e)
}

/// What the backing folder holds, without cloudmount's own staging and version folders.
fn remote(dirs: &TestDirs) -> BTreeMap<String, Option<Vec<u8>>> {
    let mut t = local_tree(&dirs.cloud);
    t.retain(|p, _| !p.starts_with("/.cloudmount"));
    t
}

fn tree(entries: &[(&str, Option<&[u8]>)]) -> BTreeMap<String, Option<Vec<u8>>> {
    entries
        .iter()
        .map(|(p, c)| (p.to_string(), c.map(|c| c.to_vec())))
        .collect()
}

const FAST: &[&str] = &["--upload-delay", "0.05"];

#[test]
fn one_file_two_names_shared_writes_and_each_name_on_the_remote() {
    let dirs = TestDirs::new();
    fs::create_dir(dirs.cloud.join("docs")).unwrap();
    fs::write(dirs.cloud.join("a.txt"), b"hello").unwrap();
    let m = DaemonMount::start(&dirs, FAST);
    let (a, b) = (m.mnt.join("a.txt"), m.mnt.join("docs/b.txt"));
    let before = meta(&a);
    std::thread::sleep(Duration::from_millis(20));
    fs::hard_link(&a, &b).unwrap();
    let (ma, mb) = (meta(&a), meta(&b));
    assert_eq!(ma.ino(), mb.ino(), "one inode");
    assert_eq!((ma.nlink(), mb.nlink()), (2, 2));
    assert_eq!(ma.ino(), before.ino(), "the first name keeps its inode");
    assert!(ma.ctime_nsec() != before.ctime_nsec() || ma.ctime() != before.ctime());
    // The listing shows it under both names with the same inode.
    let listed: Vec<u64> = fs::read_dir(m.mnt.join("docs"))
        .unwrap()
        .map(|e| e.unwrap().ino())
        .collect();
    assert_eq!(listed, vec![ma.ino()]);

    // A write through one name is seen through the other, open or not.
    let mut f = fs::OpenOptions::new().append(true).open(&b).unwrap();
    f.write_all(b" world").unwrap();
    assert_eq!(fs::read(&a).unwrap(), b"hello world");
    drop(f);
    assert_eq!(meta(&a).len(), 11);
    m.sync();
    assert_eq!(
        remote(&dirs),
        tree(&[
            ("/a.txt", Some(b"hello world")),
            ("/docs", None),
            ("/docs/b.txt", Some(b"hello world")),
        ]),
        "each name is an ordinary file with the content"
    );
    // Truncated through the other name, without an open handle.
    let c = std::ffi::CString::new(a.to_str().unwrap()).unwrap();
    // SAFETY: a valid NUL-terminated path.
    assert_eq!(unsafe { libc::truncate(c.as_ptr(), 5) }, 0);
    assert_eq!(fs::read(&b).unwrap(), b"hello");

    // Unlinking one name keeps the other (and its content), with one link left.
    fs::remove_file(&a).unwrap();
    assert_eq!(meta(&b).nlink(), 1);
    assert_eq!(fs::read(&b).unwrap(), b"hello");
    fs::write(&b, b"only b now").unwrap();
    m.sync();
    assert_eq!(
        remote(&dirs),
        tree(&[("/docs", None), ("/docs/b.txt", Some(b"only b now"))])
    );
    assert_eq!(
        local_tree(&m.mnt),
        tree(&[("/docs", None), ("/docs/b.txt", Some(b"only b now"))])
    );
}

#[test]
fn the_first_name_goes_and_the_others_keep_the_file() {
    let dirs = TestDirs::new();
    let m = DaemonMount::start(&dirs, FAST);
    let a = m.mnt.join("a");
    fs::write(&a, pattern(300_000, 1)).unwrap();
    m.sync();
    for n in ["b", "c"] {
        fs::hard_link(&a, m.mnt.join(n)).unwrap();
    }
    assert_eq!(meta(&a).nlink(), 3);
    fs::remove_file(&a).unwrap();
    m.sync();
    // The file lives on under its other names; its first name's remote copy is gone.
    assert_eq!(meta(&m.mnt.join("b")).nlink(), 2);
    assert_eq!(fs::read(m.mnt.join("c")).unwrap(), pattern(300_000, 1));
    fs::write(m.mnt.join("c"), b"changed through c").unwrap();
    assert_eq!(fs::read(m.mnt.join("b")).unwrap(), b"changed through c");
    m.sync();
    assert_eq!(
        remote(&dirs),
        tree(&[
            ("/b", Some(b"changed through c")),
            ("/c", Some(b"changed through c")),
        ])
    );
    fs::remove_file(m.mnt.join("b")).unwrap();
    assert_eq!(meta(&m.mnt.join("c")).nlink(), 1);
    m.sync();
    assert_eq!(remote(&dirs), tree(&[("/c", Some(b"changed through c"))]));
}

#[test]
fn renames_over_and_between_links() {
    let dirs = TestDirs::new();
    let m = DaemonMount::start(&dirs, FAST);
    let p = |n: &str| m.mnt.join(n);
    fs::write(p("a"), b"linked").unwrap();
    fs::hard_link(p("a"), p("b")).unwrap();
    // Two names of one file: rename does nothing, both stay.
    fs::rename(p("a"), p("b")).unwrap();
    assert_eq!(meta(&p("a")).nlink(), 2);
    assert!(p("b").exists());
    // Another file moved over one name: that name is the other file now.
    fs::write(p("other"), b"other").unwrap();
    fs::rename(p("other"), p("b")).unwrap();
    assert_eq!(meta(&p("a")).nlink(), 1);
    assert_eq!(fs::read(p("a")).unwrap(), b"linked");
    assert_eq!(fs::read(p("b")).unwrap(), b"other");
    assert_ne!(meta(&p("a")).ino(), meta(&p("b")).ino());
    // A link's name moved to another folder, and then the link written.
    fs::hard_link(p("a"), p("c")).unwrap();
    fs::create_dir(p("dir")).unwrap();
    fs::rename(p("c"), p("dir/c")).unwrap();
    assert_eq!(meta(&p("dir/c")).ino(), meta(&p("a")).ino());
    assert_eq!(meta(&p("a")).nlink(), 2);
    fs::write(p("dir/c"), b"through the moved name").unwrap();
    m.sync();
    let want = tree(&[
        ("/a", Some(b"through the moved name")),
        ("/b", Some(b"other")),
        ("/dir", None),
        ("/dir/c", Some(b"through the moved name")),
    ]);
    assert_eq!(remote(&dirs), want);
    assert_eq!(local_tree(&m.mnt), want);
}

#[test]
fn link_errors() {
    let dirs = TestDirs::new();
    let m = DaemonMount::start(&dirs, FAST);
    let p = |n: &str| m.mnt.join(n);
    fs::write(p("a"), b"a").unwrap();
    fs::write(p("taken"), b"t").unwrap();
    fs::create_dir(p("dir")).unwrap();
    assert_eq!(link_errno(&p("a"), &p("taken")), libc::EEXIST);
    assert_eq!(link_errno(&p("missing"), &p("x")), libc::ENOENT);
    assert_eq!(link_errno(&p("a"), &p("nodir/x")), libc::ENOENT);
    assert_eq!(link_errno(&p("dir"), &p("dir2")), libc::EPERM);
    assert_eq!(link_errno(&p("a"), &p("a/x")), libc::ENOTDIR);
    let long = "n".repeat(256);
    assert_eq!(link_errno(&p("a"), &p(&long)), libc::ENAMETOOLONG);
    assert_eq!(fs::read(p("taken")).unwrap(), b"t");
    m.sync();
    assert_eq!(
        remote(&dirs),
        tree(&[("/a", Some(b"a")), ("/dir", None), ("/taken", Some(b"t"))])
    );
}

#[test]
fn links_between_two_connections_are_exdev() {
    let dirs = TestDirs::new();
    let (one, two) = (dirs.cloud.join("one"), dirs.cloud.join("two"));
    fs::create_dir_all(&one).unwrap();
    fs::create_dir_all(&two).unwrap();
    fs::write(one.join("a"), b"a").unwrap();
    let cfg = dirs.tmp.path().join("config.toml");
    fs::write(
        &cfg,
        format!(
            "upload_delay_secs = 0.05\n[[connection]]\nname = \"one\"\ntype = \"local\"\n\
             path = {one:?}\n[[connection]]\nname = \"two\"\ntype = \"local\"\npath = {two:?}\n"
        ),
    )
    .unwrap();
    let m = DaemonMount::start_with_config(&dirs, &cfg, &[]);
    let (a, b) = (m.mnt.join("one/a"), m.mnt.join("two/b"));
    assert_eq!(link_errno(&a, &b), libc::EXDEV);
    assert!(!b.exists());
    // Within one connection it works.
    fs::hard_link(&a, m.mnt.join("one/b")).unwrap();
    m.sync();
    assert_eq!(fs::read(one.join("b")).unwrap(), b"a");
    assert!(!two.join("b").exists());
}

#[test]
fn a_fifo_gets_a_second_name_and_stays_off_the_remote() {
    let dirs = TestDirs::new();
    let m = DaemonMount::start(&dirs, FAST);
    let fifo = m.mnt.join("f");
    let c = std::ffi::CString::new(fifo.to_str().unwrap()).unwrap();
    // SAFETY: a valid NUL-terminated path.
    assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o644) }, 0);
    fs::hard_link(&fifo, m.mnt.join("g")).unwrap();
    let g = meta(&m.mnt.join("g"));
    assert!(g.file_type().is_fifo());
    assert_eq!((g.nlink(), g.ino()), (2, meta(&fifo).ino()));
    fs::remove_file(&fifo).unwrap();
    assert_eq!(meta(&m.mnt.join("g")).nlink(), 1);
    m.sync();
    assert_eq!(remote(&dirs), tree(&[]));
}

#[test]
fn links_survive_remount_and_kill9() {
    let dirs = TestDirs::new();
    let m = DaemonMount::start(&dirs, FAST);
    fs::write(m.mnt.join("a"), b"v1").unwrap();
    fs::hard_link(m.mnt.join("a"), m.mnt.join("b")).unwrap();
    let ino = meta(&m.mnt.join("a")).ino();
    assert!(m.unmount().status.success());
    assert_eq!(
        remote(&dirs),
        tree(&[("/a", Some(b"v1")), ("/b", Some(b"v1"))])
    );

    let m = DaemonMount::start(&dirs, &["--upload-delay", "30"]);
    let (a, b) = (meta(&m.mnt.join("a")), meta(&m.mnt.join("b")));
    assert_eq!((a.ino(), b.ino(), a.nlink()), (ino, ino, 2));
    // Written and linked again, then killed before anything was uploaded.
    fs::write(m.mnt.join("b"), b"v2 before the crash").unwrap();
    fs::hard_link(m.mnt.join("b"), m.mnt.join("c")).unwrap();
    m.kill9();

    let m = DaemonMount::start(&dirs, FAST);
    for n in ["a", "b", "c"] {
        let md = meta(&m.mnt.join(n));
        assert_eq!((md.ino(), md.nlink()), (ino, 3), "{n}");
        assert_eq!(fs::read(m.mnt.join(n)).unwrap(), b"v2 before the crash");
    }
    m.sync();
    let want = tree(&[
        ("/a", Some(b"v2 before the crash")),
        ("/b", Some(b"v2 before the crash")),
        ("/c", Some(b"v2 before the crash")),
    ]);
    assert_eq!(remote(&dirs), want);
}

#[test]
fn a_remote_change_to_one_name_splits_the_link() {
    let dirs = TestDirs::new();
    let m = DaemonMount::start(&dirs, FAST);
    fs::write(m.mnt.join("a"), b"shared").unwrap();
    fs::hard_link(m.mnt.join("a"), m.mnt.join("b")).unwrap();
    fs::hard_link(m.mnt.join("a"), m.mnt.join("c")).unwrap();
    m.sync();
    // Another client rewrites b (a new file put in place, as sync tools do).
    let tmp = dirs.cloud.join(".b.tmp");
    fs::write(&tmp, b"edited elsewhere").unwrap();
    fs::rename(&tmp, dirs.cloud.join("b")).unwrap();
    let out = m.cli(&["refresh", m.mnt.to_str().unwrap()]);
    assert!(out.status.success());
    wait_until("b shows the remote edit", Duration::from_secs(10), || {
        fs::read(m.mnt.join("b")).ok().as_deref() == Some(b"edited elsewhere")
    });
    let (a, b, c) = (
        meta(&m.mnt.join("a")),
        meta(&m.mnt.join("b")),
        meta(&m.mnt.join("c")),
    );
    assert_ne!(a.ino(), b.ino(), "b left the link");
    assert_eq!((a.ino(), a.nlink(), b.nlink()), (c.ino(), 2, 1));
    assert_eq!(fs::read(m.mnt.join("a")).unwrap(), b"shared");
    // The remaining names stay linked; the split name is a file of its own.
    fs::write(m.mnt.join("c"), b"still linked").unwrap();
    assert_eq!(fs::read(m.mnt.join("a")).unwrap(), b"still linked");
    m.sync();
    let want = tree(&[
        ("/a", Some(b"still linked")),
        ("/b", Some(b"edited elsewhere")),
        ("/c", Some(b"still linked")),
    ]);
    assert_eq!(remote(&dirs), want);
    assert_eq!(local_tree(&m.mnt), want);

    // The first name itself changed remotely: it splits off, the others keep the file.
    fs::write(&tmp, b"first name edited").unwrap();
    fs::rename(&tmp, dirs.cloud.join("a")).unwrap();
    let out = m.cli(&["refresh", m.mnt.to_str().unwrap()]);
    assert!(out.status.success());
    wait_until("a shows the remote edit", Duration::from_secs(10), || {
        fs::read(m.mnt.join("a")).ok().as_deref() == Some(b"first name edited")
    });
    assert_eq!(fs::read(m.mnt.join("c")).unwrap(), b"still linked");
    assert_eq!(meta(&m.mnt.join("c")).nlink(), 1);
    assert_eq!(meta(&m.mnt.join("a")).nlink(), 1);
    m.sync();
    let want = tree(&[
        ("/a", Some(b"first name edited")),
        ("/b", Some(b"edited elsewhere")),
        ("/c", Some(b"still linked")),
    ]);
    assert_eq!(remote(&dirs), want);
    assert_eq!(local_tree(&m.mnt), want);
}

#[test]
fn another_file_moved_over_the_first_name_leaves_the_others_linked() {
    let dirs = TestDirs::new();
    let m = DaemonMount::start(&dirs, FAST);
    let p = |n: &str| m.mnt.join(n);
    fs::write(p("a"), b"the linked file").unwrap();
    fs::hard_link(p("a"), p("b")).unwrap();
    fs::hard_link(p("a"), p("c")).unwrap();
    m.sync();
    fs::write(p("new"), b"replacement").unwrap();
    fs::rename(p("new"), p("a")).unwrap();
    assert_eq!(fs::read(p("a")).unwrap(), b"replacement");
    assert_eq!(
        (meta(&p("b")).nlink(), meta(&p("b")).ino()),
        (2, meta(&p("c")).ino())
    );
    fs::write(p("b"), b"written through b").unwrap();
    assert_eq!(fs::read(p("c")).unwrap(), b"written through b");
    m.sync();
    let want = tree(&[
        ("/a", Some(b"replacement")),
        ("/b", Some(b"written through b")),
        ("/c", Some(b"written through b")),
    ]);
    assert_eq!(remote(&dirs), want);
    assert_eq!(local_tree(&m.mnt), want);
}

#[test]
fn a_chmod_reaches_every_name_on_the_remote() {
    use std::os::unix::fs::PermissionsExt;
    let dirs = TestDirs::new();
    let m = DaemonMount::start(&dirs, FAST);
    fs::write(m.mnt.join("a"), b"x").unwrap();
    fs::hard_link(m.mnt.join("a"), m.mnt.join("b")).unwrap();
    m.sync();
    fs::set_permissions(m.mnt.join("b"), fs::Permissions::from_mode(0o600)).unwrap();
    assert_eq!(meta(&m.mnt.join("a")).mode() & 0o777, 0o600);
    m.sync();
    for n in ["a", "b"] {
        assert_eq!(
            meta(&dirs.cloud.join(n)).mode() & 0o777,
            0o600,
            "remote {n}"
        );
    }
}

/// The first name of a remote file linked (its content fetched for the link) and removed:
/// across a remount with a cache far smaller than the file, the other name still reads
/// it whole — a linked file's content is never evicted, and its first name's remote copy
/// is gone.
#[test]
fn a_linked_file_without_its_first_name_keeps_its_content_across_a_remount() {
    let dirs = TestDirs::new();
    let data = pattern(3 << 20, 7);
    fs::write(dirs.cloud.join("big"), &data).unwrap();
    let small_cache = ["--upload-delay", "0.05", "--cache-size", "1MiB"];
    let m = DaemonMount::start(&dirs, &small_cache);
    fs::hard_link(m.mnt.join("big"), m.mnt.join("other")).unwrap();
    fs::remove_file(m.mnt.join("big")).unwrap();
    m.sync();
    assert_eq!(
        remote(&dirs),
        BTreeMap::from([("/other".to_string(), Some(data.clone()))])
    );
    assert!(m.unmount().status.success());

    // Another file read meanwhile pushes at the small cache.
    fs::write(dirs.cloud.join("filler"), pattern(4 << 20, 9)).unwrap();
    let m = DaemonMount::start(&dirs, &small_cache);
    assert!(m
        .cli(&["refresh", m.mnt.to_str().unwrap()])
        .status
        .success());
    let _ = fs::read(m.mnt.join("filler")).unwrap();
    let md = meta(&m.mnt.join("other"));
    assert_eq!((md.nlink(), md.len()), (1, data.len() as u64));
    assert!(fs::read(m.mnt.join("other")).unwrap() == data);
    // Its last name gone, the file is gone here and on the remote.
    fs::remove_file(m.mnt.join("other")).unwrap();
    m.sync();
    assert_eq!(remote(&dirs).keys().collect::<Vec<_>>(), vec!["/filler"]);
}

/// `cloudmount pin` of a folder counts a hard-linked file once, whatever its names.
#[test]
fn pinning_a_folder_counts_a_linked_file_once() {
    let dirs = TestDirs::new();
    fs::create_dir(dirs.cloud.join("album")).unwrap();
    fs::write(dirs.cloud.join("album/a"), pattern(100_000, 3)).unwrap();
    fs::write(dirs.cloud.join("album/c"), b"another file").unwrap();
    let m = DaemonMount::start(&dirs, FAST);
    fs::hard_link(m.mnt.join("album/a"), m.mnt.join("album/b")).unwrap();
    m.sync();
    let out = m.cli(&["pin", m.mnt.join("album").to_str().unwrap()]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("2 file(s)"), "{text}");
    assert_eq!(
        fs::read(m.mnt.join("album/b")).unwrap(),
        pattern(100_000, 3)
    );
}
