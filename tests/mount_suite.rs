//! The functional suite (tests/suite/mod.rs) through a real kernel mount, on every backend:
//! the in-memory provider, the local-folder daemon, `rclone serve webdav`, Apache mod_dav
//! and the Drive emulator. Every case is its own test on a fresh mount and ends with the
//! remote compared to the mount, byte for byte.

mod common;
#[macro_use]
#[path = "suite/mod.rs"]
mod suite;
#[path = "support/drive_emulator.rs"]
mod drive_emulator;
#[path = "support/drive_harness.rs"]
mod drive_harness;
#[path = "support/dropbox_emulator.rs"]
mod dropbox_emulator;
#[path = "support/dropbox_harness.rs"]
mod dropbox_harness;
#[path = "support/emu/mod.rs"]
mod emu;
#[path = "support/graph_emulator.rs"]
mod graph_emulator;
#[path = "support/graph_harness.rs"]
mod graph_harness;
#[path = "support/webdav_servers.rs"]
mod webdav_servers;

use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use cloudmount::provider::memory::MemoryProvider;
use cloudmount::provider::webdav::{WebdavConfig, WebdavProvider};
use cloudmount::provider::Provider;
use common::*;
use suite::{tree_of, Backend, Mounted, Tree};

/// Drains an in-process mount: the queue empties, and nothing was parked on the way.
fn drain_in_process(m: &InProcessMount, what: &str, extra: impl Fn() -> String) {
    let deadline = Instant::now() + Duration::from_secs(120);
    while !m.drain(Duration::from_millis(250)) {
        assert!(
            Instant::now() < deadline,
            "uploads to {what} did not drain: {:?}\n{}",
            m.vfs().queue.status(),
            extra()
        );
    }
    let left = m.vfs().queue.status();
    assert!(
        left.is_empty(),
        "jobs failed on {what}: {left:?}\n{}",
        extra()
    );
}

/// Whether a remote path is one of cloudmount's own (versions, temporary uploads).
fn own_name(path: &str) -> bool {
    [".cloudmount-versions", ".cloudmount-tmp"]
        .iter()
        .any(|own| path == format!("/{own}") || path.starts_with(&format!("/{own}/")))
}

struct Memory {
    provider: Arc<MemoryProvider>,
    m: InProcessMount,
}

impl Memory {
    fn new() -> Self {
        let provider = memory_provider();
        let m = InProcessMount::new(provider.clone(), test_config(|_| {}));
        Memory { provider, m }
    }
}

impl Mounted for Memory {
    fn mnt(&self) -> &Path {
        self.m.mnt()
    }
    fn backend(&self) -> Backend {
        Backend::from_capabilities(&self.provider.capabilities())
    }
    fn drain(&self) {
        drain_in_process(&self.m, "the memory provider", String::new);
    }
    fn remote_tree(&self) -> Tree {
        let p = &self.provider;
        p.paths()
            .into_iter()
            .filter(|path| !own_name(path))
            .map(|path| {
                let node = match (p.link_remote(&path), p.get_remote(&path)) {
                    (Some(target), _) => Some(suite::link_file(&target)),
                    (None, data) => data,
                };
                (path, node)
            })
            .collect()
    }
    fn remote_mode(&self, rel: &str) -> Option<u32> {
        self.provider.mode_remote(rel)
    }
    fn remote_put(&self, rel: &str, data: &[u8]) {
        self.provider.put_remote(rel, data);
    }
}

/// The real daemon binary serving a local folder.
struct Local {
    dirs: TestDirs,
    m: DaemonMount,
}

impl Local {
    fn new() -> Self {
        let dirs = TestDirs::new();
        let m = DaemonMount::start(&dirs, &["--upload-delay", "0.05"]);
        Local { dirs, m }
    }
}

impl Mounted for Local {
    fn mnt(&self) -> &Path {
        &self.m.mnt
    }
    fn backend(&self) -> Backend {
        // A local folder stores symbolic links as links.
        Backend { symlinks: true }
    }
    fn drain(&self) {
        self.m.sync();
    }
    fn remote_tree(&self) -> Tree {
        tree_of(&self.dirs.cloud)
    }
    fn remote_mode(&self, rel: &str) -> Option<u32> {
        let p = self.dirs.cloud.join(rel.trim_start_matches('/'));
        Some(std::fs::symlink_metadata(p).unwrap().mode())
    }
    fn remote_put(&self, rel: &str, data: &[u8]) {
        std::fs::write(self.dirs.cloud.join(rel.trim_start_matches('/')), data).unwrap();
    }
}

#[derive(Clone, Copy)]
enum Dav {
    Rclone,
    Apache,
}

/// A real WebDAV server; the remote is its disk.
struct Webdav {
    provider: Arc<WebdavProvider>,
    m: InProcessMount,
    srv: webdav_servers::WebdavServer,
    _root: tempfile::TempDir,
}

impl Webdav {
    fn new(server: Dav) -> Self {
        let root = tempfile::Builder::new()
            .prefix("cloudmount-dav")
            .tempdir()
            .unwrap();
        let srv = match server {
            Dav::Rclone => webdav_servers::start_rclone_webdav(root.path()),
            Dav::Apache => webdav_servers::start_apache_webdav(root.path()),
        };
        let provider = Arc::new(WebdavProvider::new(WebdavConfig::new(srv.url.clone())).unwrap());
        let m = InProcessMount::new(provider.clone(), test_config(|_| {}));
        Webdav {
            provider,
            m,
            srv,
            _root: root,
        }
    }
}

impl Mounted for Webdav {
    fn mnt(&self) -> &Path {
        self.m.mnt()
    }
    fn backend(&self) -> Backend {
        Backend::from_capabilities(&self.provider.capabilities())
    }
    fn drain(&self) {
        drain_in_process(&self.m, self.srv.name, || {
            format!("server log: {}", self.srv.log())
        });
    }
    fn remote_tree(&self) -> Tree {
        tree_of(&self.srv.root)
    }
    fn remote_put(&self, rel: &str, data: &[u8]) {
        std::fs::write(self.srv.root.join(rel.trim_start_matches('/')), data).unwrap();
        self.srv.fix_ownership();
    }
}

/// The Drive emulator, with access tokens short-lived enough to be refreshed during a case.
struct Drive {
    m: InProcessMount,
    emu: drive_emulator::DriveEmulator,
    caps: cloudmount::provider::Capabilities,
    _token_dir: tempfile::TempDir,
    _rt: tokio::runtime::Runtime,
}

impl Drive {
    fn new() -> Self {
        let rt = drive_harness::runtime();
        let h = rt.block_on(drive_harness::harness(
            drive_emulator::EmulatorConfig::default(),
            |_| {},
        ));
        h.emu.set_access_token_lifetime(Duration::from_secs(2));
        let caps = h.provider.capabilities();
        let provider: Arc<dyn Provider> = Arc::new(h.provider);
        let m = InProcessMount::new(provider, test_config(|_| {}));
        Drive {
            m,
            emu: h.emu,
            caps,
            _token_dir: h.dir,
            _rt: rt,
        }
    }
}

impl Mounted for Drive {
    fn mnt(&self) -> &Path {
        self.m.mnt()
    }
    fn backend(&self) -> Backend {
        Backend::from_capabilities(&self.caps)
    }
    fn drain(&self) {
        drain_in_process(&self.m, "the Drive emulator", String::new);
    }
    /// Drive's tree from the emulator's own records; two live items of one name in a folder
    /// (a duplicate upload) fail the walk.
    fn remote_tree(&self) -> Tree {
        fn walk(emu: &drive_emulator::DriveEmulator, id: &str, at: &str, out: &mut Tree) {
            let mut seen = std::collections::HashSet::new();
            for f in emu.children(id).into_iter().filter(|f| !f.trashed) {
                assert!(
                    seen.insert(f.name.clone()),
                    "two items named {:?} in {at}/",
                    f.name
                );
                let path = format!("{at}/{}", f.name);
                if own_name(&path) {
                    continue;
                }
                if f.mime == drive_emulator::FOLDER_MIME {
                    out.insert(path.clone(), None);
                    walk(emu, &f.id, &path, out);
                } else {
                    out.insert(path, Some(f.content));
                }
            }
        }
        let mut out = Tree::new();
        walk(&self.emu, &self.emu.root_id(), "", &mut out);
        out
    }
    fn remote_put(&self, rel: &str, data: &[u8]) {
        let mut parent = self.emu.root_id();
        let mut names: Vec<&str> = rel.trim_start_matches('/').split('/').collect();
        let name = names.pop().unwrap();
        for dir in names {
            parent = self
                .emu
                .find(&parent, dir)
                .pop()
                .expect("folder on the remote");
        }
        match self.emu.find(&parent, name).pop() {
            Some(id) => self.emu.set_content(&id, data),
            None => {
                self.emu.add_file(&parent, name, data);
            }
        }
    }
}

/// The Graph emulator (OneDrive for Business), with access tokens short-lived enough to be
/// refreshed (and rotated) during a case.
struct OneDrive {
    m: InProcessMount,
    emu: graph_emulator::GraphEmulator,
    root: String,
    caps: cloudmount::provider::Capabilities,
    _keep: (tempfile::TempDir, Arc<cloudmount::accounts::TokenSource>),
    _rt: tokio::runtime::Runtime,
}

impl OneDrive {
    fn new() -> Self {
        let rt = drive_harness::runtime();
        let h = {
            let _inside = rt.enter();
            graph_harness::harness(
                graph_emulator::GraphConfig {
                    access_token_lifetime: Duration::from_secs(2),
                    ..Default::default()
                },
                |_| {},
            )
        };
        let caps = h.provider.capabilities();
        let (_, root) = h.emu.my_drive();
        let provider: Arc<dyn Provider> = Arc::new(h.provider);
        let m = InProcessMount::new(provider, test_config(|_| {}));
        OneDrive {
            m,
            emu: h.emu,
            root,
            caps,
            _keep: (h.dir, h.tokens),
            _rt: rt,
        }
    }
}

impl Mounted for OneDrive {
    fn mnt(&self) -> &Path {
        self.m.mnt()
    }
    fn backend(&self) -> Backend {
        Backend::from_capabilities(&self.caps)
    }
    fn drain(&self) {
        drain_in_process(&self.m, "the Graph emulator", String::new);
    }
    fn remote_tree(&self) -> Tree {
        self.emu
            .tree(&self.root)
            .into_iter()
            .map(|(p, c)| (format!("/{p}"), c))
            .filter(|(p, _)| !own_name(p))
            .collect()
    }
    fn remote_put(&self, rel: &str, data: &[u8]) {
        let mut parent = self.root.clone();
        let mut names: Vec<&str> = rel.trim_start_matches('/').split('/').collect();
        let name = names.pop().unwrap();
        for dir in names {
            parent = self.emu.child(&parent, dir).expect("folder on the remote");
        }
        match self.emu.child(&parent, name) {
            Some(id) => self.emu.set_content(&id, data),
            None => {
                self.emu.add_file(&parent, name, data);
            }
        }
    }
}

/// The Dropbox emulator, with access tokens short-lived enough to be refreshed during a
/// case.
struct Dropbox {
    m: InProcessMount,
    emu: dropbox_emulator::DropboxEmulator,
    caps: cloudmount::provider::Capabilities,
    _keep: (tempfile::TempDir, Arc<cloudmount::accounts::TokenSource>),
    _rt: tokio::runtime::Runtime,
}

impl Dropbox {
    fn new() -> Self {
        let rt = drive_harness::runtime();
        let h = {
            let _inside = rt.enter();
            dropbox_harness::harness(
                dropbox_emulator::DropboxConfig {
                    access_token_lifetime: Duration::from_secs(2),
                    ..Default::default()
                },
                |_| {},
            )
        };
        let caps = h.provider.capabilities();
        let provider: Arc<dyn Provider> = Arc::new(h.provider);
        let m = InProcessMount::new(provider, test_config(|_| {}));
        Dropbox {
            m,
            emu: h.emu,
            caps,
            _keep: (h.dir, h.tokens),
            _rt: rt,
        }
    }
}

impl Mounted for Dropbox {
    fn mnt(&self) -> &Path {
        self.m.mnt()
    }
    fn backend(&self) -> Backend {
        Backend::from_capabilities(&self.caps)
    }
    fn drain(&self) {
        drain_in_process(&self.m, "the Dropbox emulator", String::new);
    }
    fn remote_tree(&self) -> Tree {
        self.emu
            .tree("")
            .into_iter()
            .map(|(p, c)| (format!("/{p}"), c))
            .filter(|(p, _)| !own_name(p))
            .collect()
    }
    fn remote_put(&self, rel: &str, data: &[u8]) {
        self.emu
            .add_file(&format!("/{}", rel.trim_start_matches('/')), data);
    }
}

mount_suite!(memory => Memory::new());
mount_suite!(local => Local::new());
mount_suite!(rclone => Webdav::new(Dav::Rclone));
mount_suite!(apache => Webdav::new(Dav::Apache));
mount_suite!(drive => Drive::new());
mount_suite!(onedrive => OneDrive::new());
mount_suite!(dropbox => Dropbox::new());
