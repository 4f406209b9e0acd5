//! Ordinary programs on a mount, as users run them, on every backend: git, tar, rsync,
//! sqlite3 and an editor's atomic save, each through the `cloudmount` daemon over the local
//! provider, `rclone serve webdav`, Apache mod_dav and the Drive emulator. After each
//! program the write-back queue is drained and what the remote holds (the served directory
//! on disk, or the emulator's files) must equal what the mount shows, byte for byte.
//!
//! Plus a random-operation data-integrity exerciser (pwrite, pread, truncate, shared mmap)
//! checked against a model of the file, then against the remote.
//!
//! The daemon logs of the backend tests are kept in
//! `$TMPDIR/cloudmount-test-logs/programs_<backend>_<program>/`.

mod common;
#[path = "support/drive_emulator.rs"]
mod drive_emulator;
#[path = "support/drive_harness.rs"]
mod drive_harness;
#[path = "support/emu/mod.rs"]
mod emu;
#[path = "support/webdav_servers.rs"]
mod webdav_servers;
#[path = "support/workload.rs"]
mod workload;

use std::collections::BTreeMap;
use std::fs::{self, OpenOptions};
use std::os::fd::AsRawFd;
use std::os::unix::fs::{FileExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use common::*;
use drive_emulator::{EmulatorConfig, FOLDER_MIME};
use webdav_servers::WebdavServer;

/// Relative path ("a/b.txt") -> file content, `None` for a folder.
type Tree = BTreeMap<String, Option<Vec<u8>>>;

fn run(dir: &Path, cmd: &str, args: &[&str]) -> String {
    let out = run_status(dir, cmd, args);
    assert!(
        out.status.success(),
        "{cmd} {args:?} in {} failed: {}{}",
        dir.display(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn run_status(dir: &Path, cmd: &str, args: &[&str]) -> std::process::Output {
    Command::new(cmd)
        .args(args)
        .current_dir(dir)
        .env("GIT_AUTHOR_NAME", "t")
        .env("GIT_AUTHOR_EMAIL", "t@example.com")
        .env("GIT_COMMITTER_NAME", "t")
        .env("GIT_COMMITTER_EMAIL", "t@example.com")
        // No background auto-gc racing the explicit one; and the served copy of a
        // repository belongs to the server's account (www-data under Apache as root),
        // which git refuses to read without being told it is fine.
        .env("GIT_CONFIG_COUNT", "2")
        .env("GIT_CONFIG_KEY_0", "gc.auto")
        .env("GIT_CONFIG_VALUE_0", "0")
        .env("GIT_CONFIG_KEY_1", "safe.directory")
        .env("GIT_CONFIG_VALUE_1", "*")
        .output()
        .unwrap_or_else(|e| panic!("{cmd}: {e}"))
}

/// Every file and folder below `root`, without cloudmount's reserved folders at the root.
fn disk_tree(root: &Path) -> Tree {
    let mut out = Tree::new();
    let mut todo = vec![root.to_path_buf()];
    while let Some(dir) = todo.pop() {
        let entries =
            fs::read_dir(&dir).unwrap_or_else(|e| panic!("read_dir {}: {e}", dir.display()));
        for e in entries {
            let p = e.unwrap().path();
            let rel = p.strip_prefix(root).unwrap().to_string_lossy().into_owned();
            if workload::RESERVED.contains(&rel.as_str()) {
                continue;
            }
            let m = fs::symlink_metadata(&p).unwrap();
            if m.is_dir() {
                out.insert(rel, None);
                todo.push(p);
            } else if m.is_file() {
                let data = fs::read(&p).unwrap_or_else(|e| panic!("read {}: {e}", p.display()));
                out.insert(rel, Some(data));
            } else {
                panic!("unexpected file type at {}", p.display());
            }
        }
    }
    out
}

/// The emulator's My Drive as a tree. A name held by several live files of one folder is
/// listed as `name`, `name#2`, ...: Drive allows that, a file system cannot.
fn drive_tree(emu: &drive_emulator::DriveEmulator) -> Tree {
    let mut out = Tree::new();
    let mut todo = vec![(emu.root_id(), String::new())];
    while let Some((id, prefix)) = todo.pop() {
        for f in emu.children(&id) {
            if prefix.is_empty() && workload::RESERVED.contains(&f.name.as_str()) {
                continue;
            }
            let mut rel = format!("{prefix}{}", f.name);
            let mut n = 1;
            while out.contains_key(&rel) {
                n += 1;
                rel = format!("{prefix}{}#{n}", f.name);
            }
            if f.mime == FOLDER_MIME {
                out.insert(rel.clone(), None);
                todo.push((f.id, format!("{rel}/")));
            } else {
                out.insert(rel, Some(f.content));
            }
        }
    }
    out
}

/// The paths where two trees differ, at most `limit` of them, one per line.
fn tree_diff(got: &Tree, want: &Tree, limit: usize) -> Vec<String> {
    let mut out = Vec::new();
    let describe = |v: &Option<Vec<u8>>| match v {
        None => "a folder".to_string(),
        Some(d) => format!("{} bytes", d.len()),
    };
    for (p, w) in want {
        match got.get(p) {
            None => out.push(format!("missing {p} ({})", describe(w))),
            Some(g) if g != w => {
                let at = match (g, w) {
                    (Some(g), Some(w)) => {
                        let i = g.iter().zip(w).take_while(|(a, b)| a == b).count();
                        format!(", first difference at byte {i}")
                    }
                    _ => String::new(),
                };
                out.push(format!(
                    "{p}: {}, expected {}{at}",
                    describe(g),
                    describe(w)
                ));
            }
            _ => {}
        }
    }
    for (p, g) in got {
        if !want.contains_key(p) {
            out.push(format!("unexpected {p} ({})", describe(g)));
        }
    }
    let n = out.len();
    out.truncate(limit);
    if n > limit {
        out.push(format!("... and {} more", n - limit));
    }
    out
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum Backend {
    Local,
    Rclone,
    Apache,
    Drive,
}

/// The Drive emulator with a logged-in account, and the runtime it runs on.
struct Drive {
    h: drive_harness::Harness,
    _rt: tokio::runtime::Runtime,
}

/// The daemon mounting one backend at `dirs.mnt`. Fields drop in order: the mount goes
/// away before the server, the server before its directory.
struct Fixture {
    m: Option<DaemonMount>,
    /// Daemon flags of this test beyond `DAEMON_FLAGS`.
    flags: &'static [&'static str],
    logs: workload::KeepLogs,
    backend: Backend,
    /// The config file of a WebDAV or Drive connection; `None` for the local provider.
    config: Option<PathBuf>,
    srv: Option<WebdavServer>,
    drive: Option<Drive>,
    _served: Option<tempfile::TempDir>,
    dirs: TestDirs,
}

/// Uploads start soon after close, as users of a fast line would set it, so that they
/// overlap what the programs do next (renames, deletes, rewrites).
const DAEMON_FLAGS: &[&str] = &["--upload-delay", "0.1"];
/// The name of the connection in the config files.
const CONN: &str = "test";

impl Fixture {
    fn new(backend: Backend, program: &str) -> Fixture {
        Self::with_flags(backend, program, &[])
    }

    /// With daemon flags beyond `DAEMON_FLAGS`.
    fn with_flags(backend: Backend, program: &str, flags: &'static [&'static str]) -> Fixture {
        let dirs = TestDirs::new();
        let name = format!("programs_{backend:?}_{program}").to_lowercase();
        let logs = workload::KeepLogs::new(dirs.tmp.path(), &name);
        let (mut config, mut srv, mut drive, mut served) = (None, None, None, None);
        match backend {
            Backend::Local => {}
            Backend::Rclone | Backend::Apache => {
                // Directly under /tmp: Apache's workers (www-data when the tests run as
                // root) must reach it.
                let root = tempfile::Builder::new()
                    .prefix("cloudmount-programs")
                    .tempdir()
                    .unwrap();
                let s = if backend == Backend::Rclone {
                    webdav_servers::start_rclone_webdav(root.path())
                } else {
                    webdav_servers::start_apache_webdav(root.path())
                };
                let path = dirs.tmp.path().join("config.toml");
                fs::write(
                    &path,
                    format!(
                        "[[connection]]\nname = \"{CONN}\"\ntype = \"webdav\"\n\
                         settings = {{ url = \"{}\" }}\n",
                        s.url
                    ),
                )
                .unwrap();
                config = Some(path);
                srv = Some(s);
                served = Some(root);
            }
            Backend::Drive => {
                let rt = drive_harness::runtime();
                let h = rt.block_on(drive_harness::harness(EmulatorConfig::default(), |_| {}));
                let emu = &h.emu;
                let secret = dirs.tmp.path().join("client-secret");
                fs::write(&secret, emu.config().client_secret).unwrap();
                fs::set_permissions(&secret, fs::Permissions::from_mode(0o600)).unwrap();
                let path = dirs.tmp.path().join("config.toml");
                fs::write(
                    &path,
                    format!(
                        "accounts_dir = \"{accounts}\"\n\
                         [[connection]]\nname = \"{CONN}\"\ntype = \"gdrive\"\n\
                         settings = {{ client_id = \"{client_id}\", client_secret_file = \"{secret}\", \
                         auth_url = \"{auth}\", token_url = \"{token}\", revoke_url = \"{revoke}\", \
                         api_base = \"{api}\", upload_base = \"{upload}\", \
                         retry_base_delay_ms = 50, max_requests_per_second = 0.0 }}\n",
                        accounts = h.dir.path().join("accounts").display(),
                        client_id = emu.config().client_id,
                        secret = secret.display(),
                        auth = emu.auth_url(),
                        token = emu.token_url(),
                        revoke = emu.revoke_url(),
                        api = emu.api_base(),
                        upload = emu.upload_base(),
                    ),
                )
                .unwrap();
                config = Some(path);
                drive = Some(Drive { h, _rt: rt });
            }
        }
        let mut f = Fixture {
            m: None,
            flags,
            logs,
            backend,
            config,
            srv,
            drive,
            _served: served,
            dirs,
        };
        f.start();
        f
    }

    fn start(&mut self) {
        let mut flags = DAEMON_FLAGS.to_vec();
        flags.extend_from_slice(self.flags);
        self.m = Some(match &self.config {
            None => DaemonMount::start(&self.dirs, &flags),
            Some(config) => {
                flags.extend_from_slice(&["--connection", CONN]);
                DaemonMount::start_with_config(&self.dirs, config, &flags)
            }
        });
    }

    fn mnt(&self) -> PathBuf {
        self.dirs.mnt.clone()
    }

    fn daemon(&self) -> &DaemonMount {
        self.m.as_ref().expect("mounted")
    }

    /// The last lines of the daemon logs that tell of trouble, for failure messages.
    fn telling_logs(&self) -> String {
        self.logs.copy_now();
        let lines = workload::telling_log_lines(&self.logs.text(), 30);
        format!(
            "daemon log lines:\n  {}\nlogs: {}",
            lines.join("\n  "),
            self.logs.to.display()
        )
    }

    /// `cloudmount sync`, then waits until the queue holds nothing, not even a job parked
    /// as failed.
    fn sync(&self) {
        let mnt = self.mnt();
        let out = self
            .daemon()
            .cli(&["sync", mnt.to_str().unwrap(), "--wait", "60"]);
        assert!(
            out.status.success(),
            "{:?}: cloudmount sync failed: {}{}\n{}",
            self.backend,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr),
            self.telling_logs()
        );
        if let Err(e) = workload::wait_queue_empty(&mnt, Duration::from_secs(30)) {
            panic!(
                "{:?}: the queue did not empty: {e}\n{}",
                self.backend,
                self.telling_logs()
            );
        }
    }

    /// `cloudmount refresh`: listings are fetched from the remote again.
    fn refresh(&self) {
        let mnt = self.mnt();
        let out = self.daemon().cli(&["refresh", mnt.to_str().unwrap()]);
        assert!(
            out.status.success(),
            "cloudmount refresh failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// A clean unmount, then the daemon again over empty state and cache folders: every
    /// listing and every byte now comes from the remote.
    fn remount_fresh(&mut self) {
        let out = self.m.take().expect("mounted").unmount();
        assert!(
            out.status.success(),
            "unmount: {}{}",
            String::from_utf8_lossy(&out.stderr),
            self.telling_logs()
        );
        for d in [&self.dirs.state, &self.dirs.cache] {
            if d.exists() {
                fs::remove_dir_all(d).unwrap();
            }
        }
        self.start();
    }

    fn remote_tree(&self) -> Tree {
        match self.backend {
            Backend::Local => disk_tree(&self.dirs.cloud),
            Backend::Rclone | Backend::Apache => disk_tree(&self.srv.as_ref().unwrap().root),
            Backend::Drive => drive_tree(&self.drive.as_ref().unwrap().h.emu),
        }
    }

    /// The remote as a directory on disk, for backends that have one.
    fn remote_dir(&self) -> Option<PathBuf> {
        match self.backend {
            Backend::Local => Some(self.dirs.cloud.clone()),
            Backend::Rclone | Backend::Apache => Some(self.srv.as_ref().unwrap().root.clone()),
            Backend::Drive => None,
        }
    }

    fn mount_tree(&self) -> Tree {
        disk_tree(&self.mnt())
    }

    /// Drains the queue, then the remote must hold exactly what the mount shows.
    #[track_caller]
    fn assert_remote_is_mount(&self, when: &str) -> Tree {
        self.sync();
        let mount = self.mount_tree();
        let remote = self.remote_tree();
        let diff = tree_diff(&remote, &mount, 40);
        assert!(
            diff.is_empty(),
            "{:?}, {when}: the remote differs from the mount ({} entries in the mount):\n  {}\n{}",
            self.backend,
            mount.len(),
            diff.join("\n  "),
            self.telling_logs()
        );
        mount
    }

    /// The mount must show `want` (read before), e.g. after a refresh or a remount.
    #[track_caller]
    fn assert_mount_is(&self, want: &Tree, when: &str) {
        let diff = tree_diff(&self.mount_tree(), want, 40);
        assert!(
            diff.is_empty(),
            "{:?}, {when}: the mount changed:\n  {}\n{}",
            self.backend,
            diff.join("\n  "),
            self.telling_logs()
        );
    }
}

impl Drop for Fixture {
    fn drop(&mut self) {
        // Unmount before the server and its directory go away.
        drop(self.m.take());
    }
}

/// Names in a folder, sorted.
fn ls(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("ls {}: {e}", dir.display()))
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

/// The repository is whole and has the history the test made: fsck finds nothing, the log
/// has every commit. Reads only.
#[track_caller]
fn assert_history_ok(repo: &Path, when: &str) {
    let fsck = run_status(repo, "git", &["fsck", "--full", "--strict"]);
    assert!(
        fsck.status.success() && fsck.stderr.is_empty(),
        "{when}: git fsck in {}: {}{}\n.git/objects holds {:?}",
        repo.display(),
        String::from_utf8_lossy(&fsck.stdout),
        String::from_utf8_lossy(&fsck.stderr),
        fs::read_dir(repo.join(".git/objects")).map(|d| d
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect::<Vec<_>>())
    );
    // First parents only: the two sides of the merge were made in the same second, so
    // the order of the full log between them is not defined.
    let log = run(repo, "git", &["log", "--first-parent", "--format=%s"]);
    assert_eq!(
        log.lines().collect::<Vec<_>>(),
        [
            "Merge branch 'topic'",
            "main 4",
            "commit 4",
            "commit 3",
            "commit 2",
            "commit 1",
            "commit 0"
        ],
        "{when}: git log"
    );
    assert_eq!(
        run(repo, "git", &["rev-list", "--count", "HEAD"]).trim(),
        "8",
        "{when}"
    );
}

/// `assert_history_ok`, and the work tree is clean. (git status writes the index when the
/// files' stat data changed, so this is not for a copy that only the mount may change.)
#[track_caller]
fn assert_repo_ok(repo: &Path, when: &str) {
    assert_history_ok(repo, when);
    assert_eq!(run(repo, "git", &["status", "--porcelain"]), "", "{when}");
}

fn git(backend: Backend) {
    // Listings expire after a second (30 s by default): the repository's folders are
    // listed again from the remote while git writes, renames and prunes in them, as they
    // are in a longer session with the default setting.
    let mut f = Fixture::with_flags(backend, "git", &["--dir-ttl", "1"]);
    let repo = f.mnt().join("repo");
    fs::create_dir(&repo).unwrap();
    run(&repo, "git", &["init", "-q", "-b", "main"]);
    for i in 0..5 {
        fs::write(
            repo.join(format!("f{i}.txt")),
            format!("line {i}\n").repeat(50),
        )
        .unwrap();
        fs::create_dir_all(repo.join(format!("dir{i}/sub"))).unwrap();
        fs::write(repo.join(format!("dir{i}/sub/g.txt")), pattern(3000, i)).unwrap();
        run(&repo, "git", &["add", "."]);
        run(
            &repo,
            "git",
            &["commit", "-q", "-m", &format!("commit {i}")],
        );
    }
    // Branch, diverge, merge (a real merge commit, not a fast-forward).
    run(&repo, "git", &["checkout", "-q", "-b", "topic"]);
    fs::write(repo.join("f0.txt"), "changed on topic\n").unwrap();
    run(&repo, "git", &["commit", "-q", "-am", "topic"]);
    run(&repo, "git", &["checkout", "-q", "main"]);
    fs::write(repo.join("f4.txt"), "changed on main\n").unwrap();
    run(&repo, "git", &["commit", "-q", "-am", "main 4"]);
    run(&repo, "git", &["merge", "-q", "--no-edit", "topic"]);
    assert_eq!(
        fs::read_to_string(repo.join("f0.txt")).unwrap(),
        "changed on topic\n"
    );
    assert_repo_ok(&repo, "before gc");

    // gc packs the loose objects and prunes them; repack -ad rewrites the pack.
    run(&repo, "git", &["gc", "-q", "--prune=now"]);
    assert_repo_ok(&repo, "right after gc");
    run(&repo, "git", &["repack", "-q", "-a", "-d"]);
    assert_repo_ok(&repo, "right after repack -ad");
    let objects = ls(&repo.join(".git/objects"));
    assert_eq!(objects, ["info", "pack"], "no loose objects left after gc");

    f.assert_remote_is_mount("after gc and repack");
    assert_repo_ok(&repo, "after the queue drained");
    if let Some(dir) = f.remote_dir() {
        assert_history_ok(&dir.join("repo"), "the served copy");
    }
    // git status may have rewritten the index.
    let tree = f.assert_remote_is_mount("after git status");

    // Listings fetched again from the remote must show the same repository.
    f.refresh();
    assert_eq!(ls(&repo.join(".git/objects")), objects, "after refresh");
    // Before git runs: its status refreshes the index (stat data) and rewrites it.
    f.assert_mount_is(&tree, "after cloudmount refresh");
    assert_repo_ok(&repo, "after cloudmount refresh");

    f.remount_fresh();
    assert_eq!(
        ls(&repo.join(".git/objects")),
        objects,
        "after a fresh remount"
    );
    f.assert_mount_is(&tree, "after a remount with fresh state and cache");
    assert_repo_ok(&repo, "after a remount with fresh state and cache");

    // One more commit and gc on the fresh mount: the old pack goes, a new one comes.
    fs::write(repo.join("after.txt"), "after the remount\n").unwrap();
    run(&repo, "git", &["add", "after.txt"]);
    run(&repo, "git", &["commit", "-q", "-m", "after remount"]);
    run(&repo, "git", &["gc", "-q", "--prune=now"]);
    run(&repo, "git", &["fsck", "--full", "--strict"]);
    assert_eq!(
        run(&repo, "git", &["rev-list", "--count", "HEAD"]).trim(),
        "9"
    );
    f.assert_remote_is_mount("after a second gc");
    if let Some(dir) = f.remote_dir() {
        let fsck = run_status(&dir.join("repo"), "git", &["fsck", "--full", "--strict"]);
        assert!(
            fsck.status.success() && fsck.stderr.is_empty(),
            "the served copy after a second gc: {}",
            String::from_utf8_lossy(&fsck.stderr)
        );
    }
}

fn tar(backend: Backend) {
    let f = Fixture::new(backend, "tar");
    let mnt = f.mnt();
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let tarball = f.dirs.tmp.path().join("src.tar");
    run(
        Path::new("/"),
        "tar",
        &[
            "cf",
            tarball.to_str().unwrap(),
            "-C",
            src.parent().unwrap().to_str().unwrap(),
            "src",
        ],
    );
    fs::create_dir(mnt.join("untarred")).unwrap();
    run(
        &mnt,
        "tar",
        &["xf", tarball.to_str().unwrap(), "-C", "untarred"],
    );
    // What the archive holds, unpacked on a local disk: the sources may change while the
    // test runs (someone editing them), the archive does not.
    let reference = f.dirs.tmp.path().join("reference");
    fs::create_dir(&reference).unwrap();
    run(
        &reference,
        "tar",
        &[
            "xf",
            tarball.to_str().unwrap(),
            "-C",
            reference.to_str().unwrap(),
        ],
    );
    let want = disk_tree(&reference.join("src"));
    let diff = tree_diff(&disk_tree(&mnt.join("untarred/src")), &want, 20);
    assert!(
        diff.is_empty(),
        "untarred on the mount:\n  {}",
        diff.join("\n  ")
    );
    // tar's own comparison (content, sizes, modes, times) of the archive with the mount.
    run(
        &mnt,
        "tar",
        &["df", tarball.to_str().unwrap(), "-C", "untarred"],
    );
    // And an archive made from the mount unpacks to the same tree.
    let again = f.dirs.tmp.path().join("again.tar");
    run(
        &mnt,
        "tar",
        &["cf", again.to_str().unwrap(), "-C", "untarred", "src"],
    );
    let out = f.dirs.tmp.path().join("out");
    fs::create_dir(&out).unwrap();
    run(&out, "tar", &["xf", again.to_str().unwrap()]);
    assert!(tree_diff(&disk_tree(&out.join("src")), &want, 20).is_empty());

    let tree = f.assert_remote_is_mount("after tar");
    assert_eq!(
        tree.len(),
        want.len() + 2,
        "untarred/, untarred/src/ and the tree"
    );
}

fn rsync(backend: Backend) {
    let f = Fixture::new(backend, "rsync");
    let mnt = f.mnt();
    // A private copy of the test sources that the test changes between the runs.
    let staging = f.dirs.tmp.path().join("staging");
    let tests_dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests");
    run(
        Path::new("/"),
        "rsync",
        &[
            "-a",
            &format!("{}/", tests_dir.display()),
            staging.to_str().unwrap(),
        ],
    );
    let from = format!("{}/", staging.display());
    let to = format!("{}/", mnt.join("rsynced").display());
    run(Path::new("/"), "rsync", &["-a", &from, &to]);
    let diff = tree_diff(&disk_tree(&mnt.join("rsynced")), &disk_tree(&staging), 20);
    assert!(diff.is_empty(), "first rsync:\n  {}", diff.join("\n  "));
    f.assert_remote_is_mount("after the first rsync");

    // Change, grow, delete and add files and a folder, then sync again: rsync writes
    // each changed file to a temporary name and renames it over the old one, and deletes
    // what is gone.
    let mut big = fs::read(staging.join("programs.rs")).unwrap();
    big.extend_from_slice(b"\n// appended\n");
    fs::write(staging.join("programs.rs"), &big).unwrap();
    fs::write(staging.join("common/mod.rs"), b"replaced\n").unwrap();
    fs::remove_file(staging.join("privacy.rs")).unwrap();
    fs::remove_dir_all(staging.join("suite")).unwrap();
    fs::create_dir_all(staging.join("new/deeper")).unwrap();
    fs::write(staging.join("new/deeper/file.bin"), pattern(200_000, 7)).unwrap();
    run(
        Path::new("/"),
        "rsync",
        &["-a", "--delete", "--checksum", &from, &to],
    );
    let diff = tree_diff(&disk_tree(&mnt.join("rsynced")), &disk_tree(&staging), 20);
    assert!(diff.is_empty(), "second rsync:\n  {}", diff.join("\n  "));
    // Nothing left to send: the mount holds what the source holds.
    let dry = run(
        Path::new("/"),
        "rsync",
        &["-ai", "--delete", "--checksum", "--dry-run", &from, &to],
    );
    assert_eq!(
        dry.lines().filter(|l| !l.starts_with(".d")).count(),
        0,
        "{dry}"
    );
    f.assert_remote_is_mount("after the second rsync");
}

fn sqlite(backend: Backend) {
    let f = Fixture::new(backend, "sqlite");
    let mnt = f.mnt();
    let db = mnt.join("data.sqlite");
    let db = db.to_str().unwrap();
    run(
        &mnt,
        "sqlite3",
        &[
            db,
            "create table t(id integer primary key, v text); create index iv on t(v);",
        ],
    );
    let mut script = String::from("begin;");
    for i in 0..2000 {
        script.push_str(&format!("insert into t(v) values('value {i}');"));
    }
    script.push_str("commit; delete from t where id % 3 = 0; vacuum;");
    run(&mnt, "sqlite3", &[db, &script]);
    // A rolled-back transaction leaves nothing behind.
    run(&mnt, "sqlite3", &[db, "begin; delete from t; rollback;"]);
    assert_eq!(
        run(&mnt, "sqlite3", &[db, "select count(*) from t;"]).trim(),
        "1334"
    );
    assert_eq!(
        run(&mnt, "sqlite3", &[db, "pragma integrity_check;"]).trim(),
        "ok"
    );
    let tree = f.assert_remote_is_mount("after sqlite3");
    assert_eq!(
        tree.keys().collect::<Vec<_>>(),
        ["data.sqlite"],
        "the rollback journal is gone"
    );
    if let Some(dir) = f.remote_dir() {
        let copy = dir.join("data.sqlite");
        let copy = copy.to_str().unwrap();
        assert_eq!(
            run(&dir, "sqlite3", &[copy, "pragma integrity_check;"]).trim(),
            "ok"
        );
        assert_eq!(
            run(&dir, "sqlite3", &[copy, "select count(*) from t;"]).trim(),
            "1334"
        );
    }
}

fn atomic_save(backend: Backend) {
    let f = Fixture::new(backend, "atomic_save");
    let mnt = f.mnt();
    let doc = mnt.join("notes.txt");
    fs::write(&doc, "first draft\n").unwrap();
    f.assert_remote_is_mount("after the first draft");
    // An editor's save: a temporary file, fsync, rename over the original.
    for round in 0..3 {
        let tmp = mnt.join(".notes.txt.swp");
        let file = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .open(&tmp)
            .unwrap();
        file.write_all_at(format!("draft {round}\n").as_bytes(), 0)
            .unwrap();
        file.sync_all().unwrap();
        drop(file);
        fs::rename(&tmp, &doc).unwrap();
    }
    assert_eq!(fs::read_to_string(&doc).unwrap(), "draft 2\n");
    let tree = f.assert_remote_is_mount("after three atomic saves");
    let mut want = Tree::new();
    want.insert("notes.txt".into(), Some(b"draft 2\n".to_vec()));
    assert_eq!(tree, want);
}

/// One named test per program per backend, so that one failure does not hide the rest.
macro_rules! on_every_backend {
    ($($backend:ident => $variant:ident),* $(,)?) => {
        $(
            mod $backend {
                #[test]
                fn git() {
                    super::git(super::Backend::$variant);
                }
                #[test]
                fn tar() {
                    super::tar(super::Backend::$variant);
                }
                #[test]
                fn rsync() {
                    super::rsync(super::Backend::$variant);
                }
                #[test]
                fn sqlite() {
                    super::sqlite(super::Backend::$variant);
                }
                #[test]
                fn atomic_save() {
                    super::atomic_save(super::Backend::$variant);
                }
            }
        )*
    };
}

on_every_backend!(local => Local, rclone => Rclone, apache => Apache, drive => Drive);

/// Random operations on a few files through the kernel, each checked against a model.
#[test]
fn random_io_with_mmap_and_truncate_matches_a_model() {
    let provider = memory_provider();
    let m = InProcessMount::new(
        provider.clone(),
        test_config(|c| c.chunk_size = cloudmount::config::ByteSize(64 << 10)),
    );
    // Deterministic xorshift so a failure reproduces.
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut rnd = move |n: u64| {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x % n.max(1)
    };
    const FILES: usize = 3;
    const MAX: u64 = 600_000;
    let mut model: Vec<Vec<u8>> = vec![Vec::new(); FILES];
    for (i, _) in model.iter().enumerate() {
        fs::write(m.path(&format!("f{i}")), b"").unwrap();
    }
    for step in 0..400 {
        let i = rnd(FILES as u64) as usize;
        let path = m.path(&format!("f{i}"));
        let f = OpenOptions::new()
            .read(true)
            .write(true)
            .open(&path)
            .unwrap();
        let len = model[i].len() as u64;
        match rnd(6) {
            0 | 1 => {
                let off = rnd(MAX);
                let n = 1 + rnd(70_000);
                let data = pattern(n as usize, step);
                f.write_all_at(&data, off).unwrap();
                let end = (off + n) as usize;
                if model[i].len() < end {
                    model[i].resize(end, 0);
                }
                model[i][off as usize..end].copy_from_slice(&data);
            }
            2 => {
                let new = rnd(MAX);
                f.set_len(new).unwrap();
                model[i].resize(new as usize, 0);
            }
            3 if len > 0 => {
                // Shared mapping: write through it, then msync.
                let off = rnd(len);
                let n = (1 + rnd(20_000)).min(len - off);
                let p = unsafe {
                    libc::mmap(
                        std::ptr::null_mut(),
                        len as usize,
                        libc::PROT_READ | libc::PROT_WRITE,
                        libc::MAP_SHARED,
                        f.as_raw_fd(),
                        0,
                    )
                };
                assert_ne!(p, libc::MAP_FAILED, "mmap at step {step}");
                let map = unsafe { std::slice::from_raw_parts_mut(p as *mut u8, len as usize) };
                if let Some(diff) = byte_diff(map, &model[i]) {
                    let mut now = vec![0u8; len as usize];
                    let n = f.read_at(&mut now, 0).unwrap();
                    panic!(
                        "mapping of f{i} at step {step}: {diff}\n  read() now: {:?}",
                        byte_diff(&now[..n], &model[i])
                    );
                }
                let data = pattern(n as usize, step + 7);
                map[off as usize..(off + n) as usize].copy_from_slice(&data);
                model[i][off as usize..(off + n) as usize].copy_from_slice(&data);
                assert_eq!(unsafe { libc::msync(p, len as usize, libc::MS_SYNC) }, 0);
                assert_eq!(unsafe { libc::munmap(p, len as usize) }, 0);
            }
            _ => {
                let off = rnd(len + 10);
                let n = rnd(100_000) as usize;
                let mut buf = vec![0u8; n];
                let got = f.read_at(&mut buf, off).unwrap();
                let want_end = (off as usize + n).min(model[i].len());
                let want = if (off as usize) < want_end {
                    &model[i][off as usize..want_end]
                } else {
                    &[][..]
                };
                if let Some(diff) = byte_diff(&buf[..got], want) {
                    panic!("read of f{i} at {off}+{n}, step {step}: {diff}");
                }
            }
        }
        drop(f);
        if step % 50 == 0 {
            assert_eq!(
                fs::read(&path).unwrap(),
                model[i],
                "whole f{i} at step {step}"
            );
        }
    }
    assert!(m.drain(Duration::from_secs(60)));
    for (i, want) in model.iter().enumerate() {
        assert_eq!(
            fs::read(m.path(&format!("f{i}"))).unwrap(),
            *want,
            "f{i} through the mount"
        );
        assert_eq!(
            provider.get_remote(&format!("/f{i}")).unwrap(),
            *want,
            "f{i} on the remote"
        );
    }
}
