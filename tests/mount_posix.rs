//! Every filesystem operation through a real kernel mount, asserting contents and errno.
//! The same suite runs over the in-memory provider (mounted in-process) and over the
//! local-folder provider (the real daemon binary). The suite itself lives in
//! tests/suite/mod.rs, shared with the WebDAV mount tests.

mod common;
#[path = "suite/mod.rs"]
mod suite;

use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::time::Duration;

use cloudmount::provider::Provider;
use common::*;
use suite::{posix_suite, Backend};

#[test]
fn posix_suite_in_memory_provider() {
    let provider = memory_provider();
    let m = InProcessMount::new(provider.clone(), test_config(|_| {}));
    posix_suite(
        m.mnt(),
        Backend::from_capabilities(&provider.capabilities()),
    );
    assert!(m.drain(Duration::from_secs(30)), "uploads did not drain");
    // What the remote holds after the queue drained matches what the mount shows.
    assert_eq!(provider.get_remote("/b.txt").unwrap(), b"AAA");
    assert_eq!(provider.get_remote("/dir2/inner.txt").unwrap(), b"inner");
    assert!(!provider.exists_remote("/a.txt"));
    assert!(!provider.exists_remote("/open.txt"));
    assert_eq!(provider.get_remote("/victim.txt").unwrap(), b"new content");
    assert_eq!(
        &provider.get_remote("/mmap.bin").unwrap()[4096..4101],
        b"MMAP!"
    );
}

#[test]
fn posix_suite_local_provider_daemon() {
    let dirs = TestDirs::new();
    let m = DaemonMount::start(&dirs, &["--upload-delay", "0.05"]);
    // The daemon serves a local folder, which stores symlinks.
    posix_suite(&m.mnt, Backend { symlinks: true });
    m.sync();
    assert_eq!(fs::read(dirs.cloud.join("b.txt")).unwrap(), b"AAA");
    assert_eq!(
        fs::read(dirs.cloud.join("dir2/inner.txt")).unwrap(),
        b"inner"
    );
    assert_eq!(
        fs::read_link(dirs.cloud.join("link")).unwrap(),
        Path::new("b.txt")
    );
    assert!(!dirs.cloud.join("open.txt").exists());
    assert_eq!(
        fs::metadata(dirs.cloud.join("file.bin")).unwrap().mode() & 0o777,
        0o600
    );
    let out = m.unmount();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
