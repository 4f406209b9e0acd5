//! Directory link counts through the kernel (issue 14): `st_nlink` of a folder is 2 + its
//! subfolders, kept right across mkdir, rmdir and rename (between folders and over an
//! empty folder), after folders appear and vanish on the remote, and across a remount;
//! a folder not listed yet says 1 (not known).

mod common;

use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::Path;

use common::*;

fn nlink(p: &Path) -> u64 {
    fs::metadata(p)
        .unwrap_or_else(|e| panic!("stat {}: {e}", p.display()))
        .nlink()
}

#[test]
fn folder_link_counts_follow_mkdir_rmdir_rename_and_the_remote() {
    let dirs = TestDirs::new();
    fs::create_dir_all(dirs.cloud.join("remote/one")).unwrap();
    fs::create_dir_all(dirs.cloud.join("remote/two")).unwrap();
    fs::write(dirs.cloud.join("remote/file.txt"), b"not a folder").unwrap();
    let m = DaemonMount::start(&dirs, &["--upload-delay", "0.05"]);
    let root = m.mnt.clone();
    // A folder not listed yet: 1, "not known" (find then does not assume it has no
    // subfolders). Listed: 2 + subfolders; files do not count.
    assert_eq!(nlink(&root.join("remote")), 1);
    let _ = fs::read_dir(root.join("remote")).unwrap().count();
    assert_eq!(nlink(&root.join("remote")), 4);
    let _ = fs::read_dir(root.join("remote/one")).unwrap().count();
    assert_eq!(nlink(&root.join("remote/one")), 2);
    assert_eq!(nlink(&root), 3);

    fs::create_dir(root.join("a")).unwrap();
    assert_eq!(nlink(&root.join("a")), 2);
    assert_eq!(nlink(&root), 4);
    fs::create_dir(root.join("a/b")).unwrap();
    fs::create_dir(root.join("a/c")).unwrap();
    fs::write(root.join("a/f"), b"x").unwrap();
    assert_eq!(nlink(&root.join("a")), 4);
    fs::remove_dir(root.join("a/c")).unwrap();
    assert_eq!(nlink(&root.join("a")), 3);
    // Moved to another folder: one less here, one more there.
    fs::rename(root.join("a/b"), root.join("b")).unwrap();
    assert_eq!(nlink(&root.join("a")), 2);
    assert_eq!(nlink(&root), 5);
    // Over an empty folder: the one replaced no longer counts.
    fs::create_dir(root.join("a/empty")).unwrap();
    assert_eq!(nlink(&root), 5);
    fs::rename(root.join("b"), root.join("a/empty")).unwrap();
    assert_eq!(nlink(&root), 4);
    assert_eq!(nlink(&root.join("a")), 3);
    // A file renamed over nothing changes nothing.
    fs::rename(root.join("a/f"), root.join("f")).unwrap();
    assert_eq!(nlink(&root.join("a")), 3);

    // What reached the remote is the mount's tree: folders made, removed, moved, and moved
    // over an empty one (which is gone), and the file moved out.
    m.sync();
    let want: BTreeMap<String, Option<Vec<u8>>> = [
        ("/a", None),
        ("/a/empty", None),
        ("/f", Some(b"x".to_vec())),
        ("/remote", None),
        ("/remote/file.txt", Some(b"not a folder".to_vec())),
        ("/remote/one", None),
        ("/remote/two", None),
    ]
    .into_iter()
    .map(|(p, c)| (p.to_string(), c))
    .collect();
    // (The local provider's own staging folder for atomic uploads is not the mount's.)
    let mut remote = local_tree(&dirs.cloud);
    remote.remove("/.cloudmount-tmp");
    assert_eq!(remote, want, "the remote");
    assert_eq!(local_tree(&root), want, "the mount");

    // The remote gains a folder and loses one: the next listing counts them.
    fs::create_dir(dirs.cloud.join("remote/three")).unwrap();
    fs::remove_dir(dirs.cloud.join("remote/one")).unwrap();
    let out = m.cli(&["refresh", m.mnt.to_str().unwrap()]);
    assert!(out.status.success());
    let _ = fs::read_dir(root.join("remote")).unwrap().count();
    assert_eq!(nlink(&root.join("remote")), 4);

    // Kept across a remount.
    assert!(m.unmount().status.success());
    let m = DaemonMount::start(&dirs, &["--upload-delay", "0.05"]);
    assert_eq!(nlink(&m.mnt), 4);
    assert_eq!(nlink(&m.mnt.join("a")), 3);
    assert_eq!(nlink(&m.mnt.join("a/empty")), 2);
}
