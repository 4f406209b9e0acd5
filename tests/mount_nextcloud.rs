//! Change detection on Nextcloud-shaped servers, whose folder ETags change when anything
//! below them changes: one request per poll while nothing changes, and after a change only
//! the folders on the way to it are listed again. No Nextcloud server package exists here,
//! so this runs against the emulation in tests/support (verified only there).

mod common;
#[path = "support/emu/mod.rs"]
mod emu;
#[path = "support/nextcloud_emulator.rs"]
mod nextcloud_emulator;

use std::fs;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use cloudmount::provider::webdav::{WebdavConfig, WebdavProvider};
use common::*;
use nextcloud_emulator::NextcloudEmulator;

fn set_mtime(path: &std::path::Path, secs_ahead: u64) {
    let t = SystemTime::now() + Duration::from_secs(secs_ahead);
    fs::OpenOptions::new()
        .write(true)
        .open(path)
        .unwrap()
        .set_modified(t)
        .unwrap();
}

#[test]
fn polls_the_root_etag_and_descends_only_into_changed_folders() {
    let nc = NextcloudEmulator::start("carol", "app-pass", None);
    // Without RFC 6578, the ETag walk is what finds changes.
    nc.disable_sync_collection();
    nc.seed("/docs/a.txt", b"a", None);
    nc.seed("/docs/deep/b.txt", b"old b", None);
    nc.seed("/photos/p.jpg", b"jpeg", None);
    let mut cfg = WebdavConfig::new(nc.files_url.clone());
    cfg.user = Some("carol".into());
    cfg.password = Some("app-pass".into());
    let provider = Arc::new(WebdavProvider::new(cfg).unwrap());
    // Listings never expire by themselves here: only the poll may find changes.
    let m = InProcessMount::new(provider, test_config(|c| c.dir_ttl_secs = 3600.0));
    let vfs = m.vfs();

    assert_eq!(fs::read(m.path("docs/deep/b.txt")).unwrap(), b"old b");
    assert_eq!(fs::read(m.path("photos/p.jpg")).unwrap(), b"jpeg");
    assert_eq!(fs::read(m.path("docs/a.txt")).unwrap(), b"a");
    m.rt.block_on(vfs.poll_once()).unwrap();

    // Nothing changed: a single Depth 0 PROPFIND of the root.
    let before = nc.requests().len();
    m.rt.block_on(vfs.poll_once()).unwrap();
    let quiet: Vec<_> = nc.requests()[before..].to_vec();
    assert_eq!(quiet.len(), 1, "{quiet:?}");
    assert_eq!(quiet[0].method, "PROPFIND");
    assert_eq!(quiet[0].header("Depth"), Some("0"));
    assert!(
        quiet[0].path.ends_with("/files/carol/"),
        "{}",
        quiet[0].path
    );

    // A change deep down: the path to it is listed again, the sibling folder is not.
    let b = nc.files_root().join("docs/deep/b.txt");
    fs::write(&b, b"new b!").unwrap();
    set_mtime(&b, 5);
    let before = nc.requests().len();
    m.rt.block_on(vfs.poll_once()).unwrap();
    let after: Vec<_> = nc.requests()[before..].to_vec();
    let listed: Vec<&str> = after
        .iter()
        .filter(|r| r.method == "PROPFIND" && r.header("Depth") == Some("1"))
        .map(|r| r.path.as_str())
        .collect();
    assert!(
        listed
            .iter()
            .any(|p| p.trim_end_matches('/').ends_with("/docs/deep")),
        "{listed:?}"
    );
    assert!(
        !listed.iter().any(|p| p.contains("/photos")),
        "the unchanged folder was listed again: {listed:?}"
    );
    // The kernel's cached pages were dropped: the new content shows.
    assert_eq!(fs::read(m.path("docs/deep/b.txt")).unwrap(), b"new b!");
    assert_eq!(fs::read(m.path("photos/p.jpg")).unwrap(), b"jpeg");
}

/// With RFC 6578 sync-collection: one REPORT per poll while nothing changes; after a
/// change, only the folders holding changed members are listed again.
#[test]
fn sync_collection_reports_what_changed() {
    let nc = NextcloudEmulator::start("dave", "app-pass", None);
    nc.seed("/docs/a.txt", b"a", None);
    nc.seed("/docs/deep/b.txt", b"old b", None);
    nc.seed("/photos/p.jpg", b"jpeg", None);
    let mut cfg = WebdavConfig::new(nc.files_url.clone());
    cfg.user = Some("dave".into());
    cfg.password = Some("app-pass".into());
    let provider = Arc::new(WebdavProvider::new(cfg).unwrap());
    let m = InProcessMount::new(provider, test_config(|c| c.dir_ttl_secs = 3600.0));
    let vfs = m.vfs();
    assert_eq!(fs::read(m.path("docs/deep/b.txt")).unwrap(), b"old b");
    assert_eq!(fs::read(m.path("photos/p.jpg")).unwrap(), b"jpeg");
    m.rt.block_on(vfs.poll_once()).unwrap(); // takes the first sync token

    let before = nc.requests().len();
    m.rt.block_on(vfs.poll_once()).unwrap();
    let quiet: Vec<_> = nc.requests()[before..].to_vec();
    assert_eq!(quiet.len(), 1, "{quiet:?}");
    assert_eq!(quiet[0].method, "REPORT");

    let b = nc.files_root().join("docs/deep/b.txt");
    fs::write(&b, b"new b!").unwrap();
    set_mtime(&b, 5);
    fs::remove_file(nc.files_root().join("docs/a.txt")).unwrap();
    let before = nc.requests().len();
    m.rt.block_on(vfs.poll_once()).unwrap();
    let after: Vec<_> = nc.requests()[before..].to_vec();
    let listed: Vec<&str> = after
        .iter()
        .filter(|r| r.method == "PROPFIND" && r.header("Depth") == Some("1"))
        .map(|r| r.path.as_str())
        .collect();
    assert!(
        listed
            .iter()
            .any(|p| p.trim_end_matches('/').ends_with("/docs/deep")),
        "{listed:?}"
    );
    assert!(!listed.iter().any(|p| p.contains("/photos")), "{listed:?}");
    assert_eq!(fs::read(m.path("docs/deep/b.txt")).unwrap(), b"new b!");
    assert_eq!(
        fs::metadata(m.path("docs/a.txt"))
            .unwrap_err()
            .raw_os_error(),
        Some(libc::ENOENT)
    );
}
