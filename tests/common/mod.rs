//! Test harness: real mounts through the kernel that are always unmounted, also when a
//! test panics.
//!
//! Two ways to mount:
//! - `DaemonMount`: the real `cloudmount` binary in its own process (for crash, restart
//!   and CLI tests);
//! - `InProcessMount`: the filesystem mounted from inside the test process over any
//!   provider, typically the in-memory one that can go offline or fail on demand.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use cloudmount::config::{ByteSize, Config, ConnectionConfig};
use cloudmount::daemon::{self, KernelMountOptions, MountSpec};
use cloudmount::mount_root::MountRoot;
use cloudmount::provider::memory::MemoryProvider;
use cloudmount::provider::Provider;
use cloudmount::vfs::Vfs;

pub const BIN: &str = env!("CARGO_BIN_EXE_cloudmount");

pub fn is_mounted(mount_point: &Path) -> bool {
    let info = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    let target = mount_point.to_string_lossy().to_string();
    info.lines()
        .any(|l| l.split(' ').nth(4) == Some(target.as_str()) && l.contains(" - fuse"))
}

pub fn wait_until(what: &str, timeout: Duration, mut cond: impl FnMut() -> bool) {
    let start = Instant::now();
    while !cond() {
        if start.elapsed() > timeout {
            panic!("timed out after {timeout:?} waiting for {what}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

pub fn force_unmount(mount_point: &Path) {
    if is_mounted(mount_point) {
        let _ = Command::new("fusermount3")
            .args(["-u", "-z"])
            .arg(mount_point)
            .stderr(Stdio::null())
            .status();
        if is_mounted(mount_point) {
            let _ = nix::mount::umount2(mount_point, nix::mount::MntFlags::MNT_DETACH);
        }
    }
}

/// Unmounts `0` when dropped, also when a test panics.
pub struct UnmountOnDrop(pub PathBuf);

impl Drop for UnmountOnDrop {
    fn drop(&mut self) {
        force_unmount(&self.0);
    }
}

/// Temporary directories of one test: the backing "cloud" folder, the mount point,
/// the daemon's state and cache.
pub struct TestDirs {
    pub tmp: tempfile::TempDir,
    pub cloud: PathBuf,
    pub mnt: PathBuf,
    pub state: PathBuf,
    pub cache: PathBuf,
}

impl TestDirs {
    pub fn new() -> Self {
        let tmp = tempfile::Builder::new()
            .prefix("cloudmount-test")
            .tempdir()
            .unwrap();
        let base = tmp.path().canonicalize().unwrap();
        let d = TestDirs {
            cloud: base.join("cloud"),
            mnt: base.join("mnt"),
            state: base.join("state"),
            cache: base.join("cache"),
            tmp,
        };
        for p in [&d.cloud, &d.mnt] {
            std::fs::create_dir_all(p).unwrap();
        }
        d
    }
}

/// The `cloudmount` binary serving a local folder, in the foreground as systemd runs it.
pub struct DaemonMount {
    pub child: Option<Child>,
    pub mnt: PathBuf,
    pub log: PathBuf,
}

impl DaemonMount {
    pub fn start(dirs: &TestDirs, extra: &[&str]) -> Self {
        Self::start_with_source(
            dirs,
            &["--local".as_ref(), dirs.cloud.as_os_str()],
            extra,
            false,
        )
    }

    /// The daemon mounting the connections of a config file (e.g. a WebDAV account).
    pub fn start_with_config(dirs: &TestDirs, config: &Path, extra: &[&str]) -> Self {
        Self::start_with_source(
            dirs,
            &["--config".as_ref(), config.as_os_str()],
            extra,
            false,
        )
    }

    /// `start_with_config` logging at trace level, for tests that look for secrets in
    /// everything the daemon could ever write.
    pub fn start_traced(dirs: &TestDirs, config: &Path) -> Self {
        Self::start_with_source(dirs, &["--config".as_ref(), config.as_os_str()], &[], true)
    }

    fn start_with_source(
        dirs: &TestDirs,
        source: &[&std::ffi::OsStr],
        extra: &[&str],
        trace: bool,
    ) -> Self {
        let log = dirs
            .tmp
            .path()
            .join(format!("daemon-{}.log", rand_suffix()));
        let mut cmd = Command::new(BIN);
        cmd.arg("mount")
            .arg(&dirs.mnt)
            .args(source)
            .arg("--state-dir")
            .arg(&dirs.state)
            .arg("--cache-dir")
            .arg(&dirs.cache)
            .arg("--foreground")
            .arg("--log-file")
            .arg(&log)
            .arg("-vv")
            .args(extra)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        if trace {
            cmd.env("RUST_LOG", "trace");
        }
        let child = cmd.spawn().expect("start cloudmount");
        let mut m = DaemonMount {
            child: Some(child),
            mnt: dirs.mnt.clone(),
            log,
        };
        let start = Instant::now();
        while !is_mounted(&m.mnt) {
            if let Some(status) = m.child.as_mut().unwrap().try_wait().unwrap() {
                let mut err = String::new();
                use std::io::Read;
                let _ = m
                    .child
                    .as_mut()
                    .unwrap()
                    .stderr
                    .take()
                    .unwrap()
                    .read_to_string(&mut err);
                panic!(
                    "cloudmount exited ({status}) before mounting: {err}\nlog: {}",
                    m.log_text()
                );
            }
            if start.elapsed() > Duration::from_secs(20) {
                panic!("mount did not appear; log: {}", m.log_text());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        // Whoever sees the mount finds the daemon too (`sync` right after the mount
        // appeared once found no control socket under load).
        let mp = std::fs::canonicalize(&m.mnt).unwrap();
        assert!(
            cloudmount::control::socket_for(&mp).exists(),
            "the mount appeared before the daemon's control socket"
        );
        m
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Run a CLI subcommand against this mount.
    pub fn cli(&self, args: &[&str]) -> std::process::Output {
        Command::new(BIN)
            .args(args)
            .output()
            .expect("run cloudmount")
    }

    pub fn sync(&self) {
        let out = self.cli(&["sync", self.mnt.to_str().unwrap(), "--wait", "60"]);
        assert!(
            out.status.success(),
            "sync failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// SIGKILL the daemon: no chance to upload or flush anything.
    pub fn kill9(mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        force_unmount(&self.mnt);
    }

    /// A clean unmount through the CLI; returns its output.
    pub fn unmount(mut self) -> std::process::Output {
        let out = self.cli(&["unmount", self.mnt.to_str().unwrap()]);
        if let Some(mut c) = self.child.take() {
            let start = Instant::now();
            while c.try_wait().unwrap().is_none() && start.elapsed() < Duration::from_secs(60) {
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = c.kill();
            let _ = c.wait();
        }
        out
    }
}

impl Drop for DaemonMount {
    fn drop(&mut self) {
        if std::thread::panicking() {
            // The daemon's own account of the last moments, in the failure output (the
            // log file goes away with the test's directory).
            let text = self.log_text();
            let ours: Vec<&str> = text
                .lines()
                .filter(|l| {
                    l.contains(" cloudmount") || l.contains(" WARN ") || l.contains("ERROR")
                })
                .collect();
            let tail = &ours[ours.len().saturating_sub(300)..];
            eprintln!(
                "--- last {} daemon log lines of {} ---\n{}\n--- end of daemon log ---",
                tail.len(),
                self.log.display(),
                tail.join("\n")
            );
        }
        force_unmount(&self.mnt);
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

fn rand_suffix() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64
}

/// Settings for in-process mounts, tuned so tests run fast.
pub fn test_config(tweak: impl FnOnce(&mut Config)) -> Config {
    let mut cfg = Config {
        upload_delay_secs: 0.05,
        retry_backoff_secs: 0.05,
        retry_backoff_max_secs: 0.5,
        max_attempts: 1000,
        chunk_size: ByteSize(1 << 20),
        attr_ttl_secs: 0.0,
        ..Config::default()
    };
    tweak(&mut cfg);
    cfg
}

/// `CLOUDMOUNT_TEST_LOG=<filter>` (e.g. `cloudmount=debug`): the in-process daemon logs
/// to stderr, which the test harness shows for a failing test.
fn init_test_log() {
    if let Ok(filter) = std::env::var("CLOUDMOUNT_TEST_LOG") {
        let _ = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::new(filter))
            .with_writer(std::io::stderr)
            .try_init();
    }
}

/// The filesystem over `provider`, mounted from inside the test process.
pub struct InProcessMount {
    pub dirs: TestDirs,
    pub root: Arc<MountRoot>,
    session: Option<cloudmount::fuse_mount::KernelMount>,
    pub rt: tokio::runtime::Runtime,
    db: Option<sled::Db>,
}

impl InProcessMount {
    pub fn new(provider: Arc<dyn Provider>, cfg: Config) -> Self {
        Self::with_dirs(TestDirs::new(), provider, cfg)
    }

    pub fn with_dirs(dirs: TestDirs, provider: Arc<dyn Provider>, mut cfg: Config) -> Self {
        init_test_log();
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(4)
            .enable_all()
            .build()
            .unwrap();
        let _g = rt.enter();
        let conn = ConnectionConfig {
            name: "test".into(),
            kind: provider.kind().into(),
            path: None,
            settings: Default::default(),
            read_only: false,
        };
        cfg.connections = vec![conn.clone()];
        let spec = MountSpec {
            config: cfg.clone(),
            mount_point: dirs.mnt.clone(),
            single: true,
            state_dir: dirs.state.clone(),
            cache_dir: dirs.cache.clone(),
        };
        let db = daemon::open_db(&dirs.state).unwrap();
        let c = daemon::build_connection(&spec, &db, &conn, provider).unwrap();
        c.vfs.start_writeback();
        let root = Arc::new(MountRoot::new(vec![c], true));
        let session = daemon::mount_root(
            Arc::clone(&root),
            &dirs.mnt,
            rt.handle().clone(),
            &KernelMountOptions {
                read_only: cfg.read_only,
                allow_other: false,
                attr_ttl: Duration::from_secs_f64(cfg.attr_ttl_secs),
            },
        )
        .unwrap();
        InProcessMount {
            dirs,
            root,
            session: Some(session),
            rt,
            db: Some(db),
        }
    }

    pub fn mnt(&self) -> &Path {
        &self.dirs.mnt
    }

    pub fn path(&self, rel: &str) -> PathBuf {
        self.dirs.mnt.join(rel)
    }

    pub fn vfs(&self) -> Arc<Vfs> {
        Arc::clone(&self.root.connections.values().next().unwrap().vfs)
    }

    /// Upload everything queued now and wait until the queue is empty.
    pub fn drain(&self, timeout: Duration) -> bool {
        let vfs = self.vfs();
        vfs.queue.expedite();
        let drained = self.rt.block_on(vfs.queue.wait_drained(timeout));
        if !drained {
            // What is left, for the failure message of the test that waited.
            eprintln!("queue not drained after {timeout:?}:");
            for job in vfs.queue.status() {
                eprintln!("  {job:?}");
            }
            for (at, e) in vfs.queue.recent_errors() {
                eprintln!("  error at {at:?}: {e}");
            }
        }
        drained
    }

    /// Unmount and keep the directories (for a remount over the same state).
    pub fn unmount(mut self) -> TestDirs {
        if let Some(s) = self.session.take() {
            let _ = s.unmount();
        }
        force_unmount(&self.dirs.mnt);
        if let Some(db) = self.db.take() {
            db.flush().unwrap();
        }
        // Drop everything that holds the metadata store before it is reopened.
        let dirs = std::mem::replace(&mut self.dirs, TestDirs::new());
        let root = std::mem::replace(&mut self.root, Arc::new(MountRoot::new(vec![], false)));
        drop(root);
        let rt = std::mem::replace(
            &mut self.rt,
            tokio::runtime::Builder::new_current_thread()
                .build()
                .unwrap(),
        );
        rt.shutdown_timeout(Duration::from_secs(5));
        dirs
    }
}

impl Drop for InProcessMount {
    fn drop(&mut self) {
        if let Some(s) = self.session.take() {
            let _ = s.unmount();
        }
        force_unmount(&self.dirs.mnt);
    }
}

pub fn memory_provider() -> Arc<MemoryProvider> {
    Arc::new(MemoryProvider::new())
}

/// Where two byte strings differ, short enough for a failure message: the lengths and
/// up to five differing ranges, each saying whether `got` holds zeros there.
pub fn byte_diff(got: &[u8], want: &[u8]) -> Option<String> {
    if got == want {
        return None;
    }
    let mut ranges = Vec::new();
    let mut i = 0;
    let common = got.len().min(want.len());
    while i < common && ranges.len() < 5 {
        if got[i] != want[i] {
            let start = i;
            while i < common && got[i] != want[i] {
                i += 1;
            }
            let zeros = got[start..i].iter().all(|&b| b == 0);
            ranges.push(format!(
                "[{start}, {i}){}",
                if zeros { " got zeros" } else { "" }
            ));
        }
        i += 1;
    }
    Some(format!(
        "got {} bytes, want {}; differ at {}",
        got.len(),
        want.len(),
        ranges.join(", ")
    ))
}

pub fn errno_of(e: &std::io::Error) -> i32 {
    e.raw_os_error().unwrap_or(-1)
}

pub fn sha256(data: &[u8]) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(data))
}

/// Deterministic pseudo-random bytes.
pub fn pattern(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect()
}

/// The remote tree of a memory provider as path -> content (None for directories and
/// symlinks), without cloudmount's hidden versions folder.
pub fn remote_tree(
    provider: &MemoryProvider,
) -> std::collections::BTreeMap<String, Option<Vec<u8>>> {
    provider
        .paths()
        .into_iter()
        .filter(|p| !p.starts_with("/.cloudmount-versions"))
        .map(|p| {
            let content = provider.get_remote(&p);
            (p, content)
        })
        .collect()
}

/// What the files below `dir` really occupy on disk (st_blocks * 512).
pub fn disk_usage(dir: &Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    let mut total = 0;
    let Ok(rd) = std::fs::read_dir(dir) else {
        return 0;
    };
    for e in rd.flatten() {
        let Ok(m) = std::fs::symlink_metadata(e.path()) else {
            continue;
        };
        if m.is_dir() {
            total += disk_usage(&e.path());
        } else {
            total += m.blocks() * 512;
        }
    }
    total
}

/// A cloudmount extended attribute of a file as text.
pub fn xattr(path: &Path, name: &str) -> std::io::Result<String> {
    use std::os::unix::ffi::OsStrExt;
    let p = std::ffi::CString::new(path.as_os_str().as_bytes()).unwrap();
    let n = std::ffi::CString::new(name).unwrap();
    let mut buf = vec![0u8; 4096];
    let r = unsafe {
        libc::getxattr(
            p.as_ptr(),
            n.as_ptr(),
            buf.as_mut_ptr() as *mut libc::c_void,
            buf.len(),
        )
    };
    if r < 0 {
        return Err(std::io::Error::last_os_error());
    }
    buf.truncate(r as usize);
    Ok(String::from_utf8_lossy(&buf).into_owned())
}

/// Every path below `root` (relative, sorted) with the content of the regular files.
pub fn local_tree(root: &Path) -> std::collections::BTreeMap<String, Option<Vec<u8>>> {
    fn walk(
        root: &Path,
        dir: &Path,
        out: &mut std::collections::BTreeMap<String, Option<Vec<u8>>>,
    ) {
        for e in std::fs::read_dir(dir).unwrap() {
            let e = e.unwrap();
            let rel = format!(
                "/{}",
                e.path().strip_prefix(root).unwrap().to_string_lossy()
            );
            if rel.starts_with("/.cloudmount-versions") {
                continue;
            }
            let ft = e.file_type().unwrap();
            if ft.is_dir() {
                out.insert(rel, None);
                walk(root, &e.path(), out);
            } else if ft.is_file() {
                out.insert(rel, Some(std::fs::read(e.path()).unwrap()));
            } else {
                out.insert(rel, None);
            }
        }
    }
    let mut out = std::collections::BTreeMap::new();
    walk(root, root, &mut out);
    out
}

/// Unprivileged users of the machine for the tests that switch to them (as root).
pub const NOBODY: u32 = 65534;
/// A second unprivileged user: "another user of the machine".
pub const OTHER: u32 = 65533;

/// A command run as `uid` (and the group of the same number), without root's groups or
/// capabilities, HOME=/tmp and no runtime dir unless the caller sets them.
pub fn as_user(uid: u32) -> Command {
    let mut c = Command::new("setpriv");
    c.arg(format!("--reuid={uid}"))
        .arg(format!("--regid={uid}"))
        .arg("--clear-groups")
        .arg("--inh-caps=-all")
        .env_remove("XDG_RUNTIME_DIR")
        .env("HOME", "/tmp");
    c
}

/// Distributions' udev rules make /dev/fuse 0666: unprivileged daemons open it, their
/// mount(2) fails with EPERM, and fuser falls back to the setuid fusermount3. Some
/// containers create it 0600, where fuser gives up with EACCES instead of falling back;
/// give it the usual mode while the test runs. Tests run concurrently (threads, or
/// processes under nextest): each holds a shared lock on a file, and only the last one
/// out puts the saved mode back, so none pulls the mode from under another's mount.
pub struct DevFuseOpenToAll(std::fs::File);

const DEV_FUSE_LOCK: &str = "/tmp/cloudmount-test-dev-fuse.lock";
const DEV_FUSE_SAVED_MODE: &str = "/tmp/cloudmount-test-dev-fuse.mode";

fn flock(f: &std::fs::File, op: libc::c_int) -> bool {
    use std::os::fd::AsRawFd;
    unsafe { libc::flock(f.as_raw_fd(), op) == 0 }
}

impl DevFuseOpenToAll {
    pub fn ensure() -> Self {
        use std::os::unix::fs::{MetadataExt, PermissionsExt};
        let lock = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(DEV_FUSE_LOCK)
            .unwrap();
        assert!(flock(&lock, libc::LOCK_EX));
        let mode = std::fs::metadata("/dev/fuse").unwrap().mode() & 0o7777;
        if mode & 0o006 != 0o006 {
            if !Path::new(DEV_FUSE_SAVED_MODE).exists() {
                std::fs::write(DEV_FUSE_SAVED_MODE, format!("{mode:o}")).unwrap();
            }
            std::fs::set_permissions("/dev/fuse", std::fs::Permissions::from_mode(0o666)).unwrap();
        }
        assert!(flock(&lock, libc::LOCK_SH));
        DevFuseOpenToAll(lock)
    }
}

impl Drop for DevFuseOpenToAll {
    fn drop(&mut self) {
        use std::os::unix::fs::PermissionsExt;
        // Exclusive only when no other test holds it: then nobody mounts any more.
        if flock(&self.0, libc::LOCK_EX | libc::LOCK_NB) {
            if let Some(mode) = std::fs::read_to_string(DEV_FUSE_SAVED_MODE)
                .ok()
                .and_then(|m| u32::from_str_radix(m.trim(), 8).ok())
            {
                let _ =
                    std::fs::set_permissions("/dev/fuse", std::fs::Permissions::from_mode(mode));
                let _ = std::fs::remove_file(DEV_FUSE_SAVED_MODE);
            }
        }
    }
}
