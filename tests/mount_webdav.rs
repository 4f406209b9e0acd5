//! The filesystem mounted through the kernel over real WebDAV servers on loopback:
//! `rclone serve webdav` and Apache httpd with mod_dav_fs, both started by the tests.
//!
//! Every test runs over both servers. After the write-back queue drains, the server's
//! directory on disk is compared with the tree the test expects, so what is asserted is
//! what really reached the server, not only what the mount shows.

mod common;
#[path = "suite/mod.rs"]
mod suite;
#[path = "support/webdav_servers.rs"]
mod webdav_servers;

use std::fs;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use cloudmount::config::Config;
use cloudmount::provider::webdav::{WebdavConfig, WebdavProvider};
use cloudmount::vfs::{ConnectionState, Vfs};
use common::*;
use suite::{assert_same_tree, cpath, expect_errno, tree_of, Backend, Tree};
use webdav_servers::{
    start_apache_webdav, start_rclone_webdav, start_rclone_webdav_with_auth, WebdavServer,
};

const VERSIONS_DIR: &str = ".cloudmount-versions";
/// Where the WebDAV provider puts uploads before moving them into place.

#[derive(Clone, Copy, Debug)]
enum Server {
    Rclone,
    Apache,
}

/// path ("/a/b.txt") -> content, `None` for directories.
/// A WebDAV server over a fresh directory and the filesystem mounted over it in-process.
/// Fields drop in order: the mount goes away before the server, the directory last.
struct Fixture {
    m: InProcessMount,
    srv: WebdavServer,
    _root: tempfile::TempDir,
}

impl Fixture {
    fn new(server: Server, tweak: impl FnOnce(&mut Config)) -> Fixture {
        // The server's directory sits directly under /tmp: Apache's workers (www-data when
        // the tests run as root) must be able to reach it.
        let root = tempfile::Builder::new()
            .prefix("cloudmount-dav")
            .tempdir()
            .unwrap();
        let srv = match server {
            Server::Rclone => start_rclone_webdav(root.path()),
            Server::Apache => start_apache_webdav(root.path()),
        };
        let provider = Arc::new(WebdavProvider::new(WebdavConfig::new(srv.url.clone())).unwrap());
        // Uploads start a second after close, not at once: see
        // `rename_over_a_file_whose_upload_is_running` for the race this keeps out of the
        // functional tests.
        let cfg = test_config(|c| {
            c.upload_delay_secs = 1.0;
            tweak(c);
        });
        let m = InProcessMount::new(provider.clone(), cfg);
        Fixture {
            m,
            srv,
            _root: root,
        }
    }

    fn mnt(&self) -> &Path {
        self.m.mnt()
    }

    fn path(&self, rel: &str) -> PathBuf {
        self.m.path(rel)
    }

    fn vfs(&self) -> Arc<Vfs> {
        self.m.vfs()
    }

    /// Where `rel` lives in the server's directory.
    fn disk(&self, rel: &str) -> PathBuf {
        self.srv.root.join(rel.trim_start_matches('/'))
    }

    /// Writes a file straight into the server's directory, as another client would.
    fn put_disk(&self, rel: &str, data: &[u8]) {
        let p = self.disk(rel);
        fs::create_dir_all(p.parent().unwrap()).unwrap();
        fs::write(&p, data).unwrap();
        self.srv.fix_ownership();
    }

    /// Uploads everything queued and checks that nothing failed on the way.
    ///
    /// Expedites repeatedly: the kernel sends RELEASE after close() has returned, and the
    /// release re-arms the upload delay of a file still dirty, undoing an earlier expedite.
    fn drain(&self) {
        let deadline = std::time::Instant::now() + Duration::from_secs(120);
        while !self.m.drain(Duration::from_millis(250)) {
            assert!(
                std::time::Instant::now() < deadline,
                "uploads to {} did not drain: {:?}\nserver log: {}",
                self.srv.name,
                self.vfs().queue.status(),
                self.srv.log()
            );
        }
        let left = self.vfs().queue.status();
        assert!(
            left.is_empty(),
            "jobs failed on {}: {left:?}\nserver log: {}",
            self.srv.name,
            self.srv.log()
        );
    }

    fn disk_tree(&self) -> Tree {
        tree_of(&self.srv.root)
    }

    fn mount_tree(&self) -> Tree {
        tree_of(self.mnt())
    }
}

/// Every path below `root` with file contents, without cloudmount's hidden versions and
/// temporary-upload folders.
fn set_mtime(path: &Path, t: SystemTime) {
    let d = t.duration_since(UNIX_EPOCH).unwrap();
    let ts = [
        libc::timespec {
            tv_sec: d.as_secs() as libc::time_t,
            tv_nsec: 0,
        },
        libc::timespec {
            tv_sec: d.as_secs() as libc::time_t,
            tv_nsec: 0,
        },
    ];
    // SAFETY: a valid C string and two timespecs.
    let r = unsafe { libc::utimensat(libc::AT_FDCWD, cpath(path).as_ptr(), ts.as_ptr(), 0) };
    assert_eq!(r, 0, "utimensat {}", path.display());
}

/// Runs a test body once per server, as separate `#[test]`s.
macro_rules! over_both_servers {
    ($($name:ident),* $(,)?) => {
        mod rclone {
            $(#[test] fn $name() { super::$name(super::Server::Rclone) })*
        }
        mod apache {
            $(#[test] fn $name() { super::$name(super::Server::Apache) })*
        }
    };
}

over_both_servers!(
    concurrent_writers_and_readers,
    server_unreachable_then_back,
    versions_list_and_restore,
    names_that_need_encoding,
    server_side_changes_show_after_the_listing_ttl,
);

/// 8 threads at once: private files of many sizes, a shared directory, renames, deletes,
/// overwrites, and cold reads of one large file created on the server.
fn concurrent_writers_and_readers(server: Server) {
    const THREADS: usize = 8;
    let f = Fixture::new(server, |_| {});
    let big = pattern(5 << 20, 99);
    f.put_disk("/big.bin", &big);
    fs::create_dir(f.path("shared")).unwrap();
    let sizes = [0usize, 1, 4095, 4096, 65_537, (1 << 20) + 3, 300_000];
    let results: Vec<Tree> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..THREADS)
            .map(|t| {
                let (f, big, sizes) = (&f, &big, &sizes);
                s.spawn(move || {
                    let mut want = Tree::new();
                    let dir = format!("t{t}");
                    fs::create_dir(f.path(&dir)).unwrap();
                    want.insert(format!("/{dir}"), None);
                    for (i, &n) in sizes.iter().enumerate() {
                        let data = pattern(n, (t * 100 + i) as u64);
                        let rel = format!("{dir}/f{i}.bin");
                        fs::write(f.path(&rel), &data).unwrap();
                        assert_eq!(fs::read(f.path(&rel)).unwrap(), data, "{rel}");
                        want.insert(format!("/{rel}"), Some(data));
                    }
                    // rename one, delete one, overwrite one with shorter content
                    fs::rename(
                        f.path(&format!("{dir}/f1.bin")),
                        f.path(&format!("{dir}/r1.bin")),
                    )
                    .unwrap();
                    let v = want.remove(&format!("/{dir}/f1.bin")).unwrap();
                    want.insert(format!("/{dir}/r1.bin"), v);
                    fs::remove_file(f.path(&format!("{dir}/f2.bin"))).unwrap();
                    want.remove(&format!("/{dir}/f2.bin"));
                    let short = format!("overwritten by {t}").into_bytes();
                    fs::write(f.path(&format!("{dir}/f5.bin")), &short).unwrap();
                    want.insert(format!("/{dir}/f5.bin"), Some(short));
                    // everyone writes into the shared directory
                    for i in 0..4 {
                        let rel = format!("shared/t{t}-{i}.txt");
                        let data = format!("thread {t} file {i}").into_bytes();
                        fs::write(f.path(&rel), &data).unwrap();
                        want.insert(format!("/{rel}"), Some(data));
                    }
                    // cold reads of the same big file at different offsets
                    use std::io::{Read, Seek, SeekFrom};
                    let mut h = fs::File::open(f.path("big.bin")).unwrap();
                    for k in 0..8 {
                        let off = ((t * 7 + k * 13) % 40) * 131_072 + t * 17;
                        let mut buf = vec![0u8; 70_000];
                        h.seek(SeekFrom::Start(off as u64)).unwrap();
                        h.read_exact(&mut buf).unwrap();
                        assert_eq!(buf, big[off..off + buf.len()], "big.bin at {off}");
                    }
                    want
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let mut want = Tree::new();
    want.insert("/shared".into(), None);
    want.insert("/big.bin".into(), Some(big.clone()));
    for r in results {
        want.extend(r);
    }
    assert_eq!(fs::read(f.path("big.bin")).unwrap(), big);
    let listed = fs::read_dir(f.path("shared")).unwrap().count();
    assert_eq!(listed, THREADS * 4);
    f.drain();
    assert_same_tree(
        &f.disk_tree(),
        &want,
        "server disk after 8 concurrent threads",
    );
    assert_same_tree(&f.mount_tree(), &want, "mount after 8 concurrent threads");
}

/// The server goes away; writes, renames, deletes and a mkdir go on through the mount;
/// the server comes back on the same port and directory, and every change lands.
fn server_unreachable_then_back(server: Server) {
    let mut f = Fixture::new(server, |_| {});
    fs::write(f.path("keep.txt"), b"before").unwrap();
    fs::write(f.path("old-name.txt"), b"to be renamed").unwrap();
    fs::write(f.path("gone.txt"), b"to be deleted").unwrap();
    fs::create_dir(f.path("dir")).unwrap();
    fs::write(f.path("dir/inner.txt"), b"inner").unwrap();
    f.drain();
    // Read once so the content is cached before the outage.
    assert_eq!(fs::read(f.path("dir/inner.txt")).unwrap(), b"inner");

    f.srv.stop();
    fs::write(f.path("new.txt"), b"written while offline").unwrap();
    fs::write(f.path("keep.txt"), b"changed while offline").unwrap();
    fs::rename(f.path("old-name.txt"), f.path("new-name.txt")).unwrap();
    fs::remove_file(f.path("gone.txt")).unwrap();
    fs::create_dir(f.path("offline-dir")).unwrap();
    fs::write(f.path("offline-dir/a.txt"), b"in a new directory").unwrap();
    fs::rename(f.path("dir"), f.path("dir-moved")).unwrap();
    // The mount shows the new state at once.
    assert_eq!(fs::read(f.path("new-name.txt")).unwrap(), b"to be renamed");
    assert_eq!(fs::read(f.path("dir-moved/inner.txt")).unwrap(), b"inner");
    expect_errno(fs::metadata(f.path("gone.txt")), libc::ENOENT, "deleted");
    // The uploads found the server unreachable.
    let vfs = f.vfs();
    wait_until(
        "the connection to be marked offline",
        Duration::from_secs(60),
        || vfs.connection_state().0 == ConnectionState::Offline,
    );
    assert!(
        !vfs.queue.status().is_empty(),
        "nothing queued while offline"
    );
    assert_eq!(fs::read(f.disk("keep.txt")).unwrap(), b"before");

    f.srv.restart();
    f.drain();
    let mut want = Tree::new();
    for (p, c) in [
        ("/keep.txt", &b"changed while offline"[..]),
        ("/new.txt", b"written while offline"),
        ("/new-name.txt", b"to be renamed"),
        ("/offline-dir/a.txt", b"in a new directory"),
        ("/dir-moved/inner.txt", b"inner"),
    ] {
        want.insert(p.into(), Some(c.to_vec()));
    }
    want.insert("/offline-dir".into(), None);
    want.insert("/dir-moved".into(), None);
    assert_same_tree(&f.disk_tree(), &want, "server disk after the outage");
    assert_eq!(vfs.connection_state().0, ConnectionState::Online);
}

/// Each upload leaves a copy in the hidden versions folder on the server; versions are
/// listed from there, one is restored, and the history follows a rename.
fn versions_list_and_restore(server: Server) {
    let f = Fixture::new(server, |_| {});
    let contents: [&[u8]; 3] = [b"first", b"second version", b"third and last"];
    for c in contents {
        fs::write(f.path("doc.txt"), c).unwrap();
        f.drain();
    }
    let vdir = f.disk(&format!("{VERSIONS_DIR}/doc.txt"));
    let mut names: Vec<_> = fs::read_dir(&vdir)
        .unwrap_or_else(|e| panic!("{}: {e}", vdir.display()))
        .map(|e| e.unwrap().file_name())
        .collect();
    names.sort();
    let on_disk: Vec<Vec<u8>> = names
        .iter()
        .map(|n| fs::read(vdir.join(n)).unwrap())
        .collect();
    assert_eq!(on_disk, contents.map(|c| c.to_vec()));
    // The hidden folder is not part of the mounted tree, and cannot be created there.
    let top: Vec<_> = fs::read_dir(f.mnt())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(top, vec!["doc.txt"]);

    let vfs = f.vfs();
    let list = f.m.rt.block_on(vfs.versions.list("/doc.txt")).unwrap();
    assert_eq!(
        list.iter().map(|v| (v.number, v.size)).collect::<Vec<_>>(),
        vec![(1, 5), (2, 14), (3, 14)]
    );
    f.m.rt.block_on(vfs.restore_version("/doc.txt", 1)).unwrap();
    assert_eq!(fs::read(f.path("doc.txt")).unwrap(), b"first");
    f.drain();
    assert_eq!(fs::read(f.disk("doc.txt")).unwrap(), b"first");
    let list = f.m.rt.block_on(vfs.versions.list("/doc.txt")).unwrap();
    assert_eq!(list.len(), 4);
    let newest = f.m.rt.block_on(vfs.versions.read(&list[3])).unwrap();
    assert_eq!(newest, b"first");

    fs::rename(f.path("doc.txt"), f.path("renamed.txt")).unwrap();
    f.drain();
    assert!(!vdir.exists(), "history left under the old name");
    let moved = f.disk(&format!("{VERSIONS_DIR}/renamed.txt"));
    assert_eq!(fs::read_dir(&moved).unwrap().count(), 4);
    let list = f.m.rt.block_on(vfs.versions.list("/renamed.txt")).unwrap();
    assert_eq!(list.len(), 4);
}

/// Names that must be percent-encoded in URLs (or look like URLs) keep exactly their
/// bytes both ways: created through the mount they appear so on the server's disk, and
/// created on disk they appear so through the mount.
fn names_that_need_encoding(server: Server) {
    let f = Fixture::new(server, |_| {});
    let names = [
        "with space.txt",
        "hash#frag.txt",
        "percent%20literal.txt",
        "lone%.txt",
        "question?mark.txt",
        "plus+sign.txt",
        "amp&and=eq.txt",
        "caf\u{e9} nfc.txt",
        "cafe\u{301} nfd.txt",
        "http:x",
        "semi;colon,comma",
        "quote'and\"double",
        "brackets[1]{2}",
        "\u{65e5}\u{672c}\u{8a9e}.txt",
        "~tilde",
        "dots..mid",
    ];
    let dir_name = "dir #%? +&";
    fs::create_dir(f.path(dir_name)).unwrap();
    let mut want = Tree::new();
    want.insert(format!("/{dir_name}"), None);
    for n in names {
        fs::write(f.path(n), n.as_bytes()).unwrap();
        want.insert(format!("/{n}"), Some(n.as_bytes().to_vec()));
        let inner = format!("{dir_name}/{n}");
        fs::write(f.path(&inner), inner.as_bytes()).unwrap();
        want.insert(format!("/{inner}"), Some(inner.as_bytes().to_vec()));
    }
    // Uploaded first, so the rename is a MOVE whose Destination needs the encoding.
    fs::write(f.path("plain.txt"), b"renamed to an awkward name").unwrap();
    f.drain();
    fs::rename(f.path("plain.txt"), f.path("renamed #?%+&.txt")).unwrap();
    want.insert(
        "/renamed #?%+&.txt".into(),
        Some(b"renamed to an awkward name".to_vec()),
    );
    f.drain();
    // Byte-exact names on disk (tree_of keys are built from the raw OS names).
    assert_same_tree(
        &f.disk_tree(),
        &want,
        "server disk: names created through the mount",
    );
    for n in names {
        assert!(
            fs::read_dir(&f.srv.root)
                .unwrap()
                .any(|e| e.unwrap().file_name().as_bytes() == n.as_bytes()),
            "{n:?} not on disk byte for byte"
        );
    }

    // The other way: names created on the server's disk, in a directory the mount has
    // never listed (forgetting the cached listings, as `cloudmount refresh` does).
    for n in names {
        f.put_disk(&format!("from-disk/{n}"), format!("disk {n}").as_bytes());
    }
    f.vfs().expire_listings().unwrap();
    let mut listed: Vec<Vec<u8>> = fs::read_dir(f.path("from-disk"))
        .unwrap()
        .map(|e| e.unwrap().file_name().as_bytes().to_vec())
        .collect();
    listed.sort();
    let mut expected: Vec<Vec<u8>> = names.iter().map(|n| n.as_bytes().to_vec()).collect();
    expected.sort();
    assert_eq!(
        listed
            .iter()
            .map(|n| String::from_utf8_lossy(n))
            .collect::<Vec<_>>(),
        expected
            .iter()
            .map(|n| String::from_utf8_lossy(n))
            .collect::<Vec<_>>()
    );
    for n in names {
        assert_eq!(
            fs::read(f.path(&format!("from-disk/{n}"))).unwrap(),
            format!("disk {n}").as_bytes(),
            "{n:?} through the mount"
        );
    }
}

/// Files changed, added and removed directly in the server's directory show through the
/// mount once the listing TTL has passed, with their new content (no stale page cache).
fn server_side_changes_show_after_the_listing_ttl(server: Server) {
    let f = Fixture::new(server, |c| c.dir_ttl_secs = 1.0);
    f.put_disk("/same-size.txt", b"version one");
    f.put_disk("/grows.txt", b"small");
    f.put_disk("/goes-away.txt", b"bye");
    f.put_disk("/sub/deep.txt", b"deep one");
    // Read twice so the kernel has the pages cached and the chunk cache holds them.
    for _ in 0..2 {
        assert_eq!(fs::read(f.path("same-size.txt")).unwrap(), b"version one");
        assert_eq!(fs::read(f.path("grows.txt")).unwrap(), b"small");
        assert_eq!(fs::read(f.path("sub/deep.txt")).unwrap(), b"deep one");
    }
    assert!(f.path("goes-away.txt").exists());

    let later = SystemTime::now() + Duration::from_secs(10);
    let change = |rel: &str, data: &[u8]| {
        let p = f.disk(rel);
        fs::write(&p, data).unwrap();
        set_mtime(&p, later);
    };
    change("same-size.txt", b"version TWO");
    let grown = pattern(300_000, 5);
    change("grows.txt", &grown);
    change("sub/deep.txt", b"deep two");
    fs::remove_file(f.disk("goes-away.txt")).unwrap();
    f.put_disk("/appears.txt", b"new on the server");
    f.srv.fix_ownership();

    wait_until(
        "server-side changes through the mount",
        Duration::from_secs(30),
        || {
            fs::read(f.path("same-size.txt")).ok().as_deref() == Some(&b"version TWO"[..])
                && fs::read(f.path("sub/deep.txt")).ok().as_deref() == Some(&b"deep two"[..])
                && !f.path("goes-away.txt").exists()
                && f.path("appears.txt").exists()
        },
    );
    // Every fresh read now gives the new bytes, whatever size changed.
    assert_eq!(fs::read(f.path("same-size.txt")).unwrap(), b"version TWO");
    assert_eq!(fs::metadata(f.path("grows.txt")).unwrap().len(), 300_000);
    assert_eq!(fs::read(f.path("grows.txt")).unwrap(), grown);
    assert_eq!(
        fs::read(f.path("appears.txt")).unwrap(),
        b"new on the server"
    );
    expect_errno(
        fs::read(f.path("goes-away.txt")),
        libc::ENOENT,
        "file removed on the server",
    );
    assert_same_tree(&f.mount_tree(), &f.disk_tree(), "mount vs server disk");
}

/// The daemon binary with a config file: a password-protected `rclone serve webdav`, the
/// password read from a 0600 file, the suite through the mount, versions listed and
/// restored with the CLI.
#[test]
fn daemon_with_config_file_and_password() {
    let root = tempfile::Builder::new()
        .prefix("cloudmount-dav")
        .tempdir()
        .unwrap();
    let srv = start_rclone_webdav_with_auth(root.path(), "alice", "pa ss:w\u{f6}rd");
    let dirs = TestDirs::new();
    let pw = dirs.tmp.path().join("password");
    fs::write(&pw, "pa ss:w\u{f6}rd\n").unwrap();
    fs::set_permissions(&pw, fs::Permissions::from_mode(0o600)).unwrap();
    let config = dirs.tmp.path().join("config.toml");
    fs::write(
        &config,
        format!(
            "[[connection]]\nname = \"dav\"\ntype = \"webdav\"\n\
             settings = {{ url = \"{}\", user = \"alice\", password_file = \"{}\" }}\n",
            srv.url,
            pw.display()
        ),
    )
    .unwrap();
    let m = DaemonMount::start_with_config(&dirs, &config, &["--upload-delay", "0.2"]);
    let mnt = dirs.mnt.join("dav");
    struct Daemon<'a> {
        m: &'a DaemonMount,
        mnt: &'a Path,
        disk: &'a Path,
    }
    impl suite::Mounted for Daemon<'_> {
        fn mnt(&self) -> &Path {
            self.mnt
        }
        fn backend(&self) -> Backend {
            Backend { symlinks: true }
        }
        fn drain(&self) {
            self.m.sync();
        }
        fn remote_tree(&self) -> Tree {
            tree_of(self.disk)
        }
        fn remote_put(&self, rel: &str, data: &[u8]) {
            fs::write(self.disk.join(rel.trim_start_matches('/')), data).unwrap();
        }
    }
    suite::run_all_in_turn(&Daemon {
        m: &m,
        mnt: &mnt,
        disk: &srv.root,
    });

    for c in ["v1", "version 2"] {
        fs::write(mnt.join("doc.txt"), c).unwrap();
        m.sync();
    }
    let doc = mnt.join("doc.txt");
    let out = m.cli(&["versions", doc.to_str().unwrap()]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    let rows: Vec<&str> = text.lines().skip(1).collect();
    assert_eq!(rows.len(), 2, "{text}");
    assert!(
        rows[0].trim_start().starts_with('1') && rows[0].contains(" 2 "),
        "{text}"
    );
    let out = m.cli(&["restore", doc.to_str().unwrap(), "--version", "1"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(fs::read(&doc).unwrap(), b"v1");
    m.sync();
    assert_eq!(fs::read(root.path().join("doc.txt")).unwrap(), b"v1");
    assert_eq!(
        fs::read_dir(root.path().join(VERSIONS_DIR).join("doc.txt"))
            .unwrap()
            .count(),
        3
    );
    let out = m.unmount();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    drop(srv);
}

/// rename(2) of a new file over one whose upload is running must leave the renamed
/// content under the name, on the server as in the mount.
///
/// The race this sweeps for (the replaced file's upload running during the rename) is
/// handled: the replaced file is deleted after its upload, then the new one goes up.
/// (It used to make a conflict copy about one run in three under load: the upload sent
/// the live cache file, which a writer could change while it went up, so an uncertain
/// outcome could not be recognised as ours. Uploads now send a fingerprinted copy.)
#[test]
fn rename_over_a_file_whose_upload_is_running() {
    // The window is a few milliseconds wide; sweep the moment of the rename across it.
    for round in 0..20u64 {
        let f = Fixture::new(Server::Rclone, |c| c.upload_delay_secs = 0.05);
        fs::write(f.path("b.txt"), b"BBB").unwrap();
        std::thread::sleep(Duration::from_millis(40 + round * 2));
        fs::write(f.path("a.txt"), b"AAA").unwrap();
        fs::rename(f.path("a.txt"), f.path("b.txt")).unwrap();
        assert_eq!(fs::read(f.path("b.txt")).unwrap(), b"AAA");
        f.drain();
        let mut want = Tree::new();
        want.insert("/b.txt".into(), Some(b"AAA".to_vec()));
        let what = format!("round {round}: server disk after the rename");
        assert_same_tree(&f.disk_tree(), &want, &what);
        assert_same_tree(&f.mount_tree(), &want, "mount after the rename");
    }
}

/// A link file written on the server by another client (Samba's mfsymlinks format) is a
/// symbolic link through the mount.
#[test]
fn link_files_from_other_clients_are_symlinks() {
    let f = Fixture::new(Server::Rclone, |_| {});
    f.put_disk("/target.txt", b"pointed at");
    f.put_disk(
        "/shortcut",
        &cloudmount::vfs::symlink_file::encode("target.txt").unwrap(),
    );
    // A file of the same size that is not a link file stays a file.
    f.put_disk("/plain", &[b'x'; 1067]);
    let meta = fs::symlink_metadata(f.path("shortcut")).unwrap();
    assert!(meta.file_type().is_symlink());
    assert_eq!(
        fs::read_link(f.path("shortcut")).unwrap(),
        Path::new("target.txt")
    );
    assert_eq!(fs::read(f.path("shortcut")).unwrap(), b"pointed at");
    assert!(fs::symlink_metadata(f.path("plain")).unwrap().is_file());
    // Removing the link through the mount removes the file on the server.
    fs::remove_file(f.path("shortcut")).unwrap();
    f.drain();
    assert!(!f.disk_tree().contains_key("/shortcut"));
}
