//! Deterministic interleavings of the write-back executor with what the user does.
//!
//! The memory provider stops one call (an upload, a move, a delete) at a chosen point —
//! before it does anything, or after the change was made but before its reply returns —
//! and the test does something through the mount while it is stopped: renames the file
//! or its folder, deletes it, writes it again, saves over it by rename. Then the call goes
//! on, its reply delivered or lost, the queue drains, and the remote and the mount must
//! both be exactly what the user made: no file left under an old name, no conflict copy,
//! no stale content. Every case is one fixed order of events, so a failure reproduces
//! every time.

mod common;

use std::collections::BTreeMap;
use std::fs;
use std::time::Duration;

use cloudmount::provider::memory::{HoldPoint, MemoryProvider};
use common::*;

type Tree = BTreeMap<String, Option<Vec<u8>>>;

/// Where the held call is when the user acts, and what its caller hears afterwards.
#[derive(Debug, Clone, Copy)]
enum Moment {
    /// Stopped before it changed anything.
    BeforeIt,
    /// The change is made; its reply arrives after the user acted.
    AfterIt,
    /// The change is made; its reply is lost (the caller must look to find out).
    AfterItReplyLost,
}

const MOMENTS: [Moment; 3] = [Moment::BeforeIt, Moment::AfterIt, Moment::AfterItReplyLost];

fn a() -> Vec<u8> {
    pattern(100_000, 1)
}
fn b() -> Vec<u8> {
    pattern(50_000, 2)
}
fn t() -> Vec<u8> {
    pattern(7_000, 3)
}

fn tree(entries: &[(&str, Option<Vec<u8>>)]) -> Tree {
    entries
        .iter()
        .map(|(p, c)| (p.to_string(), c.clone()))
        .collect()
}

/// Short description of a tree for failure messages: path and size.
fn shape(t: &Tree) -> Vec<(String, Option<usize>)> {
    t.iter()
        .map(|(p, c)| (p.clone(), c.as_ref().map(Vec::len)))
        .collect()
}

/// One case: `setup` fills the remote, `start` does what makes the executor call `op`,
/// which is held at `moment` while `meanwhile` runs; then the call goes on and the queue
/// drains; remote and mount must equal `want`.
fn case(
    what: &str,
    op: &'static str,
    moment: Moment,
    setup: impl Fn(&MemoryProvider),
    start: impl Fn(&InProcessMount),
    meanwhile: impl Fn(&InProcessMount),
    want: &Tree,
) {
    let provider = memory_provider();
    setup(&provider);
    let m = InProcessMount::new(provider.clone(), test_config(|_| {}));
    let point = match moment {
        Moment::BeforeIt => HoldPoint::Before,
        Moment::AfterIt | Moment::AfterItReplyLost => HoldPoint::Applied,
    };
    let hold = provider.hold(op, point);
    start(&m);
    assert!(
        hold.wait_reached(Duration::from_secs(20)),
        "{what} ({moment:?}): the {op} never started"
    );
    meanwhile(&m);
    match moment {
        Moment::AfterItReplyLost => hold.release_losing_reply(),
        _ => hold.release(),
    }
    assert!(
        m.drain(Duration::from_secs(30)),
        "{what} ({moment:?}): the queue did not drain"
    );
    let remote = remote_tree(&provider);
    assert!(
        remote == *want,
        "{what} ({moment:?}): the remote is {:?}, want {:?}",
        shape(&remote),
        shape(want)
    );
    let mount = local_tree(&m.dirs.mnt);
    assert!(
        mount == *want,
        "{what} ({moment:?}): the mount shows {:?}, want {:?}",
        shape(&mount),
        shape(want)
    );
}

fn with_dir(p: &MemoryProvider) {
    p.mkdir_remote("/d");
}

fn with_dir_and_target(p: &MemoryProvider) {
    p.mkdir_remote("/d");
    p.put_remote("/d/t", &t());
}

fn with_file(p: &MemoryProvider) {
    p.mkdir_remote("/d");
    p.put_remote("/d/a", &a());
}

fn write_new_a(m: &InProcessMount) {
    fs::write(m.path("d/a"), a()).unwrap();
}

// -------------------------------------------------------------------------------------
// An upload of a new file is under way when the user ...

#[test]
fn upload_then_rename_the_file() {
    for moment in MOMENTS {
        case(
            "rename during upload",
            "upload",
            moment,
            with_dir,
            write_new_a,
            |m| fs::rename(m.path("d/a"), m.path("d/b")).unwrap(),
            &tree(&[("/d", None), ("/d/b", Some(a()))]),
        );
    }
}

#[test]
fn upload_then_rename_its_folder() {
    for moment in MOMENTS {
        case(
            "folder rename during upload",
            "upload",
            moment,
            with_dir,
            write_new_a,
            |m| fs::rename(m.path("d"), m.path("e")).unwrap(),
            &tree(&[("/e", None), ("/e/a", Some(a()))]),
        );
    }
}

#[test]
fn upload_then_unlink() {
    for moment in MOMENTS {
        case(
            "unlink during upload",
            "upload",
            moment,
            with_dir,
            write_new_a,
            |m| fs::remove_file(m.path("d/a")).unwrap(),
            &tree(&[("/d", None)]),
        );
    }
}

#[test]
fn upload_then_unlink_and_rmdir() {
    for moment in MOMENTS {
        case(
            "unlink and rmdir during upload",
            "upload",
            moment,
            with_dir,
            write_new_a,
            |m| {
                fs::remove_file(m.path("d/a")).unwrap();
                fs::remove_dir(m.path("d")).unwrap();
            },
            &tree(&[]),
        );
    }
}

#[test]
fn upload_then_rename_over_an_existing_file() {
    for moment in MOMENTS {
        case(
            "rename over a file during upload",
            "upload",
            moment,
            with_dir_and_target,
            write_new_a,
            |m| fs::rename(m.path("d/a"), m.path("d/t")).unwrap(),
            &tree(&[("/d", None), ("/d/t", Some(a()))]),
        );
    }
}

#[test]
fn upload_then_write_again() {
    for moment in MOMENTS {
        case(
            "rewrite during upload",
            "upload",
            moment,
            with_dir,
            write_new_a,
            |m| fs::write(m.path("d/a"), b()).unwrap(),
            &tree(&[("/d", None), ("/d/a", Some(b()))]),
        );
    }
}

#[test]
fn upload_then_rename_away_and_back() {
    for moment in MOMENTS {
        case(
            "rename away and back during upload",
            "upload",
            moment,
            with_dir,
            write_new_a,
            |m| {
                fs::rename(m.path("d/a"), m.path("d/b")).unwrap();
                fs::rename(m.path("d/b"), m.path("d/a")).unwrap();
            },
            &tree(&[("/d", None), ("/d/a", Some(a()))]),
        );
    }
}

#[test]
fn upload_then_save_over_it_by_rename() {
    for moment in MOMENTS {
        case(
            "save-by-rename during upload",
            "upload",
            moment,
            with_dir,
            write_new_a,
            |m| {
                fs::write(m.path("d/a.tmp"), b()).unwrap();
                fs::rename(m.path("d/a.tmp"), m.path("d/a")).unwrap();
            },
            &tree(&[("/d", None), ("/d/a", Some(b()))]),
        );
    }
}

// -------------------------------------------------------------------------------------
// A move of an existing file is under way when the user ...

fn rename_a_to_b(m: &InProcessMount) {
    fs::rename(m.path("d/a"), m.path("d/b")).unwrap();
}

#[test]
fn move_then_write_the_moved_file() {
    for moment in MOMENTS {
        case(
            "write during a move",
            "rename",
            moment,
            with_file,
            rename_a_to_b,
            |m| fs::write(m.path("d/b"), b()).unwrap(),
            &tree(&[("/d", None), ("/d/b", Some(b()))]),
        );
    }
}

#[test]
fn move_then_unlink_the_moved_file() {
    for moment in MOMENTS {
        case(
            "unlink during a move",
            "rename",
            moment,
            with_file,
            rename_a_to_b,
            |m| fs::remove_file(m.path("d/b")).unwrap(),
            &tree(&[("/d", None)]),
        );
    }
}

#[test]
fn move_then_move_again() {
    for moment in MOMENTS {
        case(
            "second move during a move",
            "rename",
            moment,
            with_file,
            rename_a_to_b,
            |m| fs::rename(m.path("d/b"), m.path("d/c")).unwrap(),
            &tree(&[("/d", None), ("/d/c", Some(a()))]),
        );
    }
}

#[test]
fn move_then_move_back() {
    for moment in MOMENTS {
        case(
            "move back during a move",
            "rename",
            moment,
            with_file,
            rename_a_to_b,
            |m| fs::rename(m.path("d/b"), m.path("d/a")).unwrap(),
            &tree(&[("/d", None), ("/d/a", Some(a()))]),
        );
    }
}

#[test]
fn move_then_remove_the_folder() {
    for moment in MOMENTS {
        case(
            "folder removal during a move",
            "rename",
            moment,
            with_file,
            rename_a_to_b,
            |m| {
                fs::remove_file(m.path("d/b")).unwrap();
                fs::remove_dir(m.path("d")).unwrap();
            },
            &tree(&[]),
        );
    }
}

// -------------------------------------------------------------------------------------
// A delete is under way when the user ...

#[test]
fn delete_then_create_the_same_name() {
    for moment in MOMENTS {
        case(
            "new file of the same name during a delete",
            "delete",
            moment,
            with_file,
            |m| fs::remove_file(m.path("d/a")).unwrap(),
            |m| fs::write(m.path("d/a"), b()).unwrap(),
            &tree(&[("/d", None), ("/d/a", Some(b()))]),
        );
    }
}

#[test]
fn delete_then_make_a_folder_of_the_same_name() {
    for moment in MOMENTS {
        case(
            "folder of the same name during a delete",
            "delete",
            moment,
            with_file,
            |m| fs::remove_file(m.path("d/a")).unwrap(),
            |m| {
                fs::create_dir(m.path("d/a")).unwrap();
                fs::write(m.path("d/a/x"), t()).unwrap();
            },
            &tree(&[("/d", None), ("/d/a", None), ("/d/a/x", Some(t()))]),
        );
    }
}

// -------------------------------------------------------------------------------------
// An upload landed but its reply was lost; while the executor looks at the remote to
// find out what happened, the user ...

fn lost_reply_then_look(what: &str, meanwhile: impl Fn(&InProcessMount), want: &Tree) {
    let provider = memory_provider();
    with_dir(&provider);
    let m = InProcessMount::new(provider.clone(), test_config(|_| {}));
    let upload = provider.hold("upload", HoldPoint::Applied);
    write_new_a(&m);
    assert!(
        upload.wait_reached(Duration::from_secs(20)),
        "{what}: no upload"
    );
    let look = provider.hold("stat", HoldPoint::Before);
    upload.release_losing_reply();
    assert!(
        look.wait_reached(Duration::from_secs(20)),
        "{what}: the executor did not look after the lost reply"
    );
    meanwhile(&m);
    look.release();
    assert!(m.drain(Duration::from_secs(30)), "{what}: not drained");
    let remote = remote_tree(&provider);
    assert!(
        remote == *want,
        "{what}: the remote is {:?}, want {:?}",
        shape(&remote),
        shape(want)
    );
    let mount = local_tree(&m.dirs.mnt);
    assert!(
        mount == *want,
        "{what}: the mount shows {:?}, want {:?}",
        shape(&mount),
        shape(want)
    );
}

#[test]
fn lost_upload_reply_then_rename_while_it_looks() {
    lost_reply_then_look(
        "rename while looking",
        |m| fs::rename(m.path("d/a"), m.path("d/b")).unwrap(),
        &tree(&[("/d", None), ("/d/b", Some(a()))]),
    );
}

#[test]
fn lost_upload_reply_then_unlink_while_it_looks() {
    lost_reply_then_look(
        "unlink while looking",
        |m| fs::remove_file(m.path("d/a")).unwrap(),
        &tree(&[("/d", None)]),
    );
}

#[test]
fn lost_upload_reply_then_rewrite_while_it_looks() {
    lost_reply_then_look(
        "rewrite while looking",
        |m| fs::write(m.path("d/a"), b()).unwrap(),
        &tree(&[("/d", None), ("/d/a", Some(b()))]),
    );
}

#[test]
fn lost_upload_reply_then_remove_the_folder_while_it_looks() {
    lost_reply_then_look(
        "folder removal while looking",
        |m| {
            fs::remove_file(m.path("d/a")).unwrap();
            fs::remove_dir(m.path("d")).unwrap();
        },
        &tree(&[]),
    );
}

// -------------------------------------------------------------------------------------
// A new folder is being created on the remote when the user ...

fn no_setup(_: &MemoryProvider) {}

fn make_folder_with_a_file(m: &InProcessMount) {
    fs::create_dir(m.path("n")).unwrap();
    fs::write(m.path("n/x"), t()).unwrap();
}

#[test]
fn mkdir_then_rename_the_folder() {
    for moment in MOMENTS {
        case(
            "folder rename during its creation",
            "mkdir",
            moment,
            no_setup,
            make_folder_with_a_file,
            |m| fs::rename(m.path("n"), m.path("o")).unwrap(),
            &tree(&[("/o", None), ("/o/x", Some(t()))]),
        );
    }
}

#[test]
fn mkdir_then_remove_the_folder() {
    for moment in MOMENTS {
        case(
            "folder removal during its creation",
            "mkdir",
            moment,
            no_setup,
            make_folder_with_a_file,
            |m| {
                fs::remove_file(m.path("n/x")).unwrap();
                fs::remove_dir(m.path("n")).unwrap();
            },
            &tree(&[]),
        );
    }
}

#[test]
fn mkdir_then_replace_the_folder_by_a_file() {
    for moment in MOMENTS {
        case(
            "a file instead of the folder during its creation",
            "mkdir",
            moment,
            no_setup,
            make_folder_with_a_file,
            |m| {
                fs::remove_file(m.path("n/x")).unwrap();
                fs::remove_dir(m.path("n")).unwrap();
                fs::write(m.path("n"), b()).unwrap();
            },
            &tree(&[("/n", Some(b()))]),
        );
    }
}

// -------------------------------------------------------------------------------------
// A chmod falls against the file's first upload.

fn hold_point(moment: Moment) -> HoldPoint {
    match moment {
        Moment::BeforeIt => HoldPoint::Before,
        Moment::AfterIt | Moment::AfterItReplyLost => HoldPoint::Applied,
    }
}

fn release(hold: &cloudmount::provider::memory::Hold, moment: Moment) {
    match moment {
        Moment::AfterItReplyLost => hold.release_losing_reply(),
        _ => hold.release(),
    }
}

/// chmod and then rename while the new file's upload is held (before it, or landed with
/// its reply delivered or lost): the remote ends with the file under the new name, with
/// the new mode, and nothing else.
#[test]
fn upload_then_chmod_and_rename() {
    use std::os::unix::fs::PermissionsExt;
    for moment in MOMENTS {
        let provider = memory_provider();
        with_dir(&provider);
        let m = InProcessMount::new(provider.clone(), test_config(|_| {}));
        let hold = provider.hold("upload", hold_point(moment));
        write_new_a(&m);
        assert!(hold.wait_reached(Duration::from_secs(20)), "{moment:?}");
        fs::set_permissions(m.path("d/a"), fs::Permissions::from_mode(0o600)).unwrap();
        fs::rename(m.path("d/a"), m.path("d/b")).unwrap();
        release(&hold, moment);
        assert!(m.drain(Duration::from_secs(30)), "{moment:?}: no drain");
        let want = tree(&[("/d", None), ("/d/b", Some(a()))]);
        assert_eq!(shape(&remote_tree(&provider)), shape(&want), "{moment:?}");
        assert_eq!(provider.mode_remote("/d/b"), Some(0o600), "{moment:?}");
        let local = fs::metadata(m.path("d/b")).unwrap().permissions().mode() & 0o7777;
        assert_eq!(local, 0o600, "{moment:?}");
    }
}

/// `fchmod` on a file still open after `O_CREAT` (what `cp -p` does), a rename of it, and a
/// folder made, chmod'ed and renamed, all before anything reached the remote: the modes
/// arrive with the first upload and after the mkdir, under the final names.
#[test]
fn chmod_before_anything_is_uploaded_then_rename() {
    use std::io::Write;
    use std::os::unix::fs::PermissionsExt;
    let provider = memory_provider();
    with_dir(&provider);
    let m = InProcessMount::new(provider.clone(), test_config(|_| {}));
    {
        let mut f = fs::File::create(m.path("d/new")).unwrap();
        f.write_all(b"copied").unwrap();
        f.set_permissions(fs::Permissions::from_mode(0o640))
            .unwrap();
        fs::rename(m.path("d/new"), m.path("d/kept")).unwrap();
    }
    fs::create_dir(m.path("d/sub")).unwrap();
    fs::set_permissions(m.path("d/sub"), fs::Permissions::from_mode(0o700)).unwrap();
    fs::rename(m.path("d/sub"), m.path("d/moved")).unwrap();
    assert!(m.drain(Duration::from_secs(30)), "no drain");
    let want = tree(&[
        ("/d", None),
        ("/d/kept", Some(b"copied".to_vec())),
        ("/d/moved", None),
    ]);
    assert_eq!(shape(&remote_tree(&provider)), shape(&want));
    assert_eq!(provider.mode_remote("/d/kept"), Some(0o640));
    assert_eq!(provider.mode_remote("/d/moved"), Some(0o700));
}
