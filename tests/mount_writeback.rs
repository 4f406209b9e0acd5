//! Write-back through a real kernel mount: concurrency, crashes, offline periods,
//! editor save patterns, open handles across unlink/rename, and conflicts.

mod common;

use std::collections::BTreeMap;
use std::fs::{self, File, OpenOptions};
use std::io::{Read, Write};
use std::os::unix::fs::FileExt;
use std::sync::Arc;
use std::time::Duration;

use common::*;

const DRAIN: Duration = Duration::from_secs(60);

fn expect_errno<T: std::fmt::Debug>(r: std::io::Result<T>, errno: i32, what: &str) {
    match r {
        Ok(v) => panic!("{what}: expected errno {errno}, got Ok({v:?})"),
        Err(e) => assert_eq!(errno_of(&e), errno, "{what}: got {e}"),
    }
}

// -------------------------------------------------------------------------------------
// 1. Concurrency

#[test]
fn concurrent_readers_and_writers_distinct_and_shared_files() {
    const THREADS: usize = 8;
    const SLOT: usize = 256 << 10;
    let provider = memory_provider();
    // A remote file everybody reads while the others write.
    let remote_big = pattern(6 << 20, 99);
    provider.put_remote("/remote.bin", &remote_big);
    let m = InProcessMount::new(provider.clone(), test_config(|_| {}));
    let root = m.mnt().to_path_buf();
    // A shared file every thread writes its own slot of, through its own handle.
    File::create(root.join("shared.bin"))
        .unwrap()
        .set_len((THREADS * SLOT) as u64)
        .unwrap();

    let remote_big = Arc::new(remote_big);
    let threads: Vec<_> = (0..THREADS)
        .map(|t| {
            let root = root.clone();
            let remote_big = Arc::clone(&remote_big);
            std::thread::spawn(move || {
                for round in 0..3u64 {
                    // Own file: rewrite and read back.
                    let own = root.join(format!("own-{t}.bin"));
                    let data = pattern(300_000 + t * 1000, t as u64 * 10 + round);
                    fs::write(&own, &data).unwrap();
                    assert_eq!(fs::read(&own).unwrap(), data, "own file {t} round {round}");
                    // Shared file: write my slot.
                    let slot = pattern(SLOT, 1000 + t as u64 + round * 100);
                    let h = OpenOptions::new()
                        .read(true)
                        .write(true)
                        .open(root.join("shared.bin"))
                        .unwrap();
                    h.write_all_at(&slot, (t * SLOT) as u64).unwrap();
                    let mut back = vec![0u8; SLOT];
                    h.read_exact_at(&mut back, (t * SLOT) as u64).unwrap();
                    assert_eq!(back, slot, "shared slot {t} round {round}");
                    drop(h);
                    // Shared remote file, cold and warm, at thread-specific offsets.
                    let h = File::open(root.join("remote.bin")).unwrap();
                    for i in 0..8usize {
                        let off = ((t * 7919 + i * 600_001 + round as usize * 13) % (6 << 20))
                            .min((6 << 20) - 70_000);
                        let mut buf = vec![0u8; 70_000];
                        h.read_exact_at(&mut buf, off as u64).unwrap();
                        assert_eq!(&buf[..], &remote_big[off..off + 70_000], "remote read");
                    }
                }
            })
        })
        .collect();
    for t in threads {
        t.join().expect("worker thread panicked");
    }

    let mut expected_shared = Vec::new();
    for t in 0..THREADS {
        expected_shared.extend(pattern(SLOT, 1000 + t as u64 + 200));
    }
    assert_eq!(fs::read(root.join("shared.bin")).unwrap(), expected_shared);
    for t in 0..THREADS {
        let want = pattern(300_000 + t * 1000, t as u64 * 10 + 2);
        assert_eq!(fs::read(root.join(format!("own-{t}.bin"))).unwrap(), want);
    }
    assert_eq!(fs::read(root.join("remote.bin")).unwrap(), *remote_big);

    assert!(m.drain(DRAIN), "uploads did not drain");
    assert_eq!(
        sha256(&provider.get_remote("/shared.bin").unwrap()),
        sha256(&expected_shared)
    );
    for t in 0..THREADS {
        let want = pattern(300_000 + t * 1000, t as u64 * 10 + 2);
        assert_eq!(
            provider.get_remote(&format!("/own-{t}.bin")).unwrap(),
            want,
            "remote own-{t}.bin"
        );
    }
    assert_eq!(provider.get_remote("/remote.bin").unwrap(), *remote_big);
}

// -------------------------------------------------------------------------------------
// 2 + 6. Crashes and restarts

fn file_data(i: usize) -> Vec<u8> {
    pattern(10_000 + i * 997, i as u64)
}

#[test]
fn kill9_before_upload_then_restart_uploads_everything() {
    let dirs = TestDirs::new();
    let m = DaemonMount::start(&dirs, &["--upload-delay", "60"]);
    fs::create_dir(m.mnt.join("sub")).unwrap();
    for i in 0..50 {
        let name = if i % 2 == 0 {
            format!("f{i:02}.bin")
        } else {
            format!("sub/f{i:02}.bin")
        };
        let mut f = File::create(m.mnt.join(&name)).unwrap();
        f.write_all(&file_data(i)).unwrap();
        // close() returns: the data is promised to be safe.
    }
    // Through the mount before upload.
    for i in 0..50 {
        let name = if i % 2 == 0 {
            format!("f{i:02}.bin")
        } else {
            format!("sub/f{i:02}.bin")
        };
        assert_eq!(fs::read(m.mnt.join(&name)).unwrap(), file_data(i), "{name}");
        assert!(
            !dirs.cloud.join(&name).exists(),
            "{name} uploaded despite the 60 s delay"
        );
    }
    m.kill9();
    assert!(!is_mounted(&dirs.mnt));

    let m = DaemonMount::start(&dirs, &["--upload-delay", "0.05"]);
    // Right size and content immediately after the restart, uploaded or not.
    for i in 0..50 {
        let name = if i % 2 == 0 {
            format!("f{i:02}.bin")
        } else {
            format!("sub/f{i:02}.bin")
        };
        assert_eq!(
            fs::metadata(m.mnt.join(&name)).unwrap().len(),
            file_data(i).len() as u64,
            "size of {name} after restart"
        );
        assert_eq!(fs::read(m.mnt.join(&name)).unwrap(), file_data(i), "{name}");
    }
    m.sync();
    for i in 0..50 {
        let name = if i % 2 == 0 {
            format!("f{i:02}.bin")
        } else {
            format!("sub/f{i:02}.bin")
        };
        let backing = fs::read(dirs.cloud.join(&name))
            .unwrap_or_else(|e| panic!("{name} not in the backing folder: {e}"));
        assert_eq!(sha256(&backing), sha256(&file_data(i)), "{name}");
    }
    let out = m.unmount();
    assert!(out.status.success());
}

#[test]
fn size_and_content_after_clean_unmount_and_after_kill9() {
    let dirs = TestDirs::new();
    let data = pattern(3 << 20, 7);
    // Clean unmount drains the queue even with a long delay.
    let m = DaemonMount::start(&dirs, &["--upload-delay", "60"]);
    fs::write(m.mnt.join("clean.bin"), &data).unwrap();
    let out = m.unmount();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        sha256(&fs::read(dirs.cloud.join("clean.bin")).unwrap()),
        sha256(&data)
    );
    let m = DaemonMount::start(&dirs, &["--upload-delay", "60"]);
    assert_eq!(
        fs::metadata(m.mnt.join("clean.bin")).unwrap().len(),
        data.len() as u64
    );
    assert_eq!(fs::read(m.mnt.join("clean.bin")).unwrap(), data);

    // Written, then the daemon killed before the upload: the size is right at once.
    let data2 = pattern(1_234_567, 8);
    fs::write(m.mnt.join("killed.bin"), &data2).unwrap();
    // An existing file grown and shrunk too.
    fs::write(m.mnt.join("clean.bin"), &data[..1000]).unwrap();
    m.kill9();
    assert!(!dirs.cloud.join("killed.bin").exists());
    let m = DaemonMount::start(&dirs, &["--upload-delay", "60"]);
    assert_eq!(
        fs::metadata(m.mnt.join("killed.bin")).unwrap().len(),
        data2.len() as u64
    );
    assert_eq!(fs::metadata(m.mnt.join("clean.bin")).unwrap().len(), 1000);
    assert_eq!(fs::read(m.mnt.join("killed.bin")).unwrap(), data2);
    assert_eq!(fs::read(m.mnt.join("clean.bin")).unwrap(), &data[..1000]);
    let out = m.unmount();
    assert!(out.status.success());
    assert_eq!(fs::read(dirs.cloud.join("killed.bin")).unwrap(), data2);
    assert_eq!(
        fs::read(dirs.cloud.join("clean.bin")).unwrap(),
        &data[..1000]
    );
}

// -------------------------------------------------------------------------------------
// 3. Offline

#[test]
fn offline_changes_all_land_when_the_provider_returns() {
    let provider = memory_provider();
    provider.put_remote("/keep.txt", b"keep");
    provider.put_remote("/edit.txt", b"before");
    provider.put_remote("/old-name.txt", b"moved");
    provider.put_remote("/gone.txt", b"delete me");
    provider.mkdir_remote("/dir");
    provider.put_remote("/dir/a.txt", b"a");
    provider.mkdir_remote("/emptydir");
    let m = InProcessMount::new(provider.clone(), test_config(|_| {}));
    let root = m.mnt().to_path_buf();
    // Known before going offline.
    assert_eq!(fs::read_dir(&root).unwrap().count(), 6);
    assert_eq!(fs::read_dir(root.join("dir")).unwrap().count(), 1);
    // (rmdir must know a directory is empty on the remote: an unlisted one cannot be
    // removed offline.)
    assert_eq!(fs::read_dir(root.join("emptydir")).unwrap().count(), 0);

    provider.set_offline(true);
    fs::write(root.join("new.txt"), b"created offline").unwrap();
    fs::write(root.join("edit.txt"), b"edited offline").unwrap();
    fs::create_dir(root.join("newdir")).unwrap();
    fs::write(root.join("newdir/inner.txt"), b"inner").unwrap();
    fs::create_dir(root.join("newdir/deeper")).unwrap();
    fs::rename(root.join("old-name.txt"), root.join("new-name.txt")).unwrap();
    fs::remove_file(root.join("gone.txt")).unwrap();
    fs::rename(root.join("dir"), root.join("dir-renamed")).unwrap();
    fs::write(root.join("dir-renamed/b.txt"), b"b").unwrap();
    fs::write(root.join("temp.txt"), b"short-lived").unwrap();
    fs::remove_file(root.join("temp.txt")).unwrap();
    fs::remove_dir(root.join("emptydir")).unwrap();
    fs::write(root.join("renamed-twice.txt"), b"twice").unwrap();
    fs::rename(root.join("renamed-twice.txt"), root.join("tmp-name.txt")).unwrap();
    fs::rename(root.join("tmp-name.txt"), root.join("final-name.txt")).unwrap();
    // Let the queue fail against the offline provider for a while.
    std::thread::sleep(Duration::from_millis(600));
    assert!(!provider.exists_remote("/new.txt"));
    assert_eq!(provider.get_remote("/edit.txt").unwrap(), b"before");
    // Reads of what is local keep working.
    assert_eq!(fs::read(root.join("edit.txt")).unwrap(), b"edited offline");

    provider.set_offline(false);
    assert!(m.drain(DRAIN), "queue did not drain after going online");

    let mut expected: BTreeMap<String, Option<Vec<u8>>> = BTreeMap::new();
    for (p, c) in [
        ("/keep.txt", Some(&b"keep"[..])),
        ("/edit.txt", Some(b"edited offline")),
        ("/new.txt", Some(b"created offline")),
        ("/newdir", None),
        ("/newdir/inner.txt", Some(b"inner")),
        ("/newdir/deeper", None),
        ("/new-name.txt", Some(b"moved")),
        ("/dir-renamed", None),
        ("/dir-renamed/a.txt", Some(b"a")),
        ("/dir-renamed/b.txt", Some(b"b")),
        ("/final-name.txt", Some(b"twice")),
    ] {
        expected.insert(p.to_string(), c.map(|c| c.to_vec()));
    }
    assert_eq!(remote_tree(&provider), expected);

    // Nothing resurrected: listing everything again shows the same tree.
    m.vfs().expire_listings().unwrap();
    let mounted: BTreeMap<_, _> = local_tree(&root);
    assert_eq!(mounted, expected);
    assert!(m.vfs().queue.is_empty());
}

// -------------------------------------------------------------------------------------
// 7. Open handles across unlink and rename-over

#[test]
fn unlinked_open_file_stays_readable_even_uncached() {
    let provider = memory_provider();
    let content = pattern(2_500_000, 3);
    provider.put_remote("/doomed.bin", &content);
    let m = InProcessMount::new(provider.clone(), test_config(|_| {}));
    let mut h = File::open(m.path("doomed.bin")).unwrap();
    fs::remove_file(m.path("doomed.bin")).unwrap();
    expect_errno(fs::metadata(m.path("doomed.bin")), libc::ENOENT, "unlinked");
    assert!(m.drain(DRAIN));
    assert!(
        !provider.exists_remote("/doomed.bin"),
        "delete did not land"
    );
    let mut back = Vec::new();
    h.read_to_end(&mut back).unwrap();
    assert_eq!(sha256(&back), sha256(&content));
}

#[test]
fn handle_keeps_uncached_content_when_another_file_is_renamed_over_it() {
    let provider = memory_provider();
    let old = pattern(3_000_000, 11);
    provider.put_remote("/victim.bin", &old);
    let m = InProcessMount::new(provider.clone(), test_config(|_| {}));
    // Opened, never read: nothing of it is cached.
    let mut h = File::open(m.path("victim.bin")).unwrap();
    let reads_before = provider.calls("read_range");
    let new = pattern(100_000, 12);
    fs::write(m.path("newer.bin"), &new).unwrap();
    fs::rename(m.path("newer.bin"), m.path("victim.bin")).unwrap();
    assert!(m.drain(DRAIN));
    assert_eq!(provider.get_remote("/victim.bin").unwrap(), new);
    assert!(!provider.exists_remote("/newer.bin"));
    let mut back = Vec::new();
    h.read_to_end(&mut back).unwrap();
    assert_eq!(back.len(), old.len());
    assert_eq!(
        sha256(&back),
        sha256(&old),
        "the old handle lost its content"
    );
    assert!(provider.calls("read_range") > reads_before);
    assert_eq!(fs::read(m.path("victim.bin")).unwrap(), new);

    // The same when the renamed file was already uploaded (a remote move replaces it).
    let old2 = pattern(2_000_000, 13);
    provider.put_remote("/victim2.bin", &old2);
    m.vfs().expire_listings().unwrap();
    let mut h2 = File::open(m.path("victim2.bin")).unwrap();
    fs::write(m.path("other.bin"), b"other").unwrap();
    assert!(m.drain(DRAIN));
    assert!(provider.exists_remote("/other.bin"));
    fs::rename(m.path("other.bin"), m.path("victim2.bin")).unwrap();
    assert!(m.drain(DRAIN));
    assert_eq!(provider.get_remote("/victim2.bin").unwrap(), b"other");
    let mut back = Vec::new();
    h2.read_to_end(&mut back).unwrap();
    assert_eq!(sha256(&back), sha256(&old2));
}

// -------------------------------------------------------------------------------------
// 8. Editor save patterns and queued namespace changes

fn slow_upload_config() -> cloudmount::config::Config {
    // Long enough that the whole sequence happens before the upload starts; drain()
    // expedites.
    test_config(|c| c.upload_delay_secs = 5.0)
}

#[test]
fn save_by_rename_uploads_once() {
    let provider = memory_provider();
    provider.put_remote("/doc.txt", b"original\n");
    let m = InProcessMount::new(provider.clone(), slow_upload_config());
    assert_eq!(fs::read(m.path("doc.txt")).unwrap(), b"original\n");
    let uploads = provider.calls("upload");

    // vim-like: swap file, then the new content in a temp file renamed over the original.
    let mut swp = File::create(m.path(".doc.txt.swp")).unwrap();
    swp.write_all(b"swap").unwrap();
    swp.sync_all().unwrap();
    let mut tmp = File::create(m.path("doc.txt.tmp")).unwrap();
    tmp.write_all(b"saved content\n").unwrap();
    tmp.sync_all().unwrap();
    drop(tmp);
    fs::rename(m.path("doc.txt.tmp"), m.path("doc.txt")).unwrap();
    drop(swp);
    fs::remove_file(m.path(".doc.txt.swp")).unwrap();
    assert_eq!(fs::read(m.path("doc.txt")).unwrap(), b"saved content\n");

    assert!(m.drain(DRAIN));
    assert_eq!(
        provider.calls("upload") - uploads,
        1,
        "save-by-rename must upload once"
    );
    assert_eq!(provider.get_remote("/doc.txt").unwrap(), b"saved content\n");
    assert!(!provider.exists_remote("/doc.txt.tmp"));
    assert!(!provider.exists_remote("/.doc.txt.swp"));
}

#[test]
fn created_then_renamed_before_upload_is_uploaded_once_under_final_name() {
    let provider = memory_provider();
    let m = InProcessMount::new(provider.clone(), slow_upload_config());
    fs::write(m.path("draft.txt"), b"content").unwrap();
    fs::rename(m.path("draft.txt"), m.path("final.txt")).unwrap();
    assert!(m.drain(DRAIN));
    assert_eq!(provider.calls("upload"), 1);
    assert_eq!(provider.calls("rename"), 0);
    assert_eq!(provider.get_remote("/final.txt").unwrap(), b"content");
    assert!(!provider.exists_remote("/draft.txt"));
}

#[test]
fn file_deleted_while_queued_is_not_resurrected() {
    let provider = memory_provider();
    let m = InProcessMount::new(provider.clone(), slow_upload_config());
    fs::write(m.path("ephemeral.txt"), b"gone soon").unwrap();
    fs::create_dir(m.path("d")).unwrap();
    fs::write(m.path("d/x.txt"), b"x").unwrap();
    fs::remove_file(m.path("ephemeral.txt")).unwrap();
    fs::remove_file(m.path("d/x.txt")).unwrap();
    fs::remove_dir(m.path("d")).unwrap();
    assert!(m.drain(DRAIN));
    assert_eq!(provider.calls("upload"), 0);
    assert_eq!(remote_tree(&provider), BTreeMap::new());
    m.vfs().expire_listings().unwrap();
    assert_eq!(fs::read_dir(m.mnt()).unwrap().count(), 0);
}

#[test]
fn directory_renamed_with_pending_child_uploads_lands_consistently() {
    let provider = memory_provider();
    let m = InProcessMount::new(provider.clone(), slow_upload_config());
    fs::create_dir(m.path("src")).unwrap();
    fs::create_dir(m.path("src/nested")).unwrap();
    // Let the mkdirs (not delayed) reach the remote, so the rename is a remote move.
    wait_until("mkdir uploaded", Duration::from_secs(10), || {
        provider.exists_remote("/src/nested")
    });
    fs::write(m.path("src/a.txt"), b"A").unwrap();
    fs::write(m.path("src/nested/b.txt"), b"B").unwrap();
    fs::rename(m.path("src"), m.path("dst")).unwrap();
    fs::write(m.path("dst/c.txt"), b"C").unwrap();
    // And a directory that never reached the remote, renamed with its children queued.
    provider.set_offline(true);
    fs::create_dir(m.path("fresh")).unwrap();
    fs::write(m.path("fresh/f.txt"), b"F").unwrap();
    fs::rename(m.path("fresh"), m.path("fresh2")).unwrap();
    provider.set_offline(false);
    assert!(m.drain(DRAIN));
    let mut expected = BTreeMap::new();
    expected.insert("/dst".to_string(), None);
    expected.insert("/dst/nested".to_string(), None);
    expected.insert("/dst/a.txt".to_string(), Some(b"A".to_vec()));
    expected.insert("/dst/nested/b.txt".to_string(), Some(b"B".to_vec()));
    expected.insert("/dst/c.txt".to_string(), Some(b"C".to_vec()));
    expected.insert("/fresh2".to_string(), None);
    expected.insert("/fresh2/f.txt".to_string(), Some(b"F".to_vec()));
    assert_eq!(remote_tree(&provider), expected);
    m.vfs().expire_listings().unwrap();
    assert_eq!(local_tree(m.mnt()), expected);
}

// -------------------------------------------------------------------------------------
// 9. Conflicts

fn is_conflict_name(name: &str, stem: &str, ext: &str) -> bool {
    // "NAME (conflict YYYY-MM-DD HHMMSS).EXT"
    let Some(rest) = name.strip_prefix(&format!("{stem} (conflict ")) else {
        return false;
    };
    let Some(stamp) = rest.strip_suffix(&format!("){ext}")) else {
        return false;
    };
    let b = stamp.as_bytes();
    b.len() == 17
        && b.iter().enumerate().all(|(i, c)| match i {
            4 | 7 => *c == b'-',
            10 => *c == b' ',
            _ => c.is_ascii_digit(),
        })
}

#[test]
fn conflicting_remote_edit_is_kept_and_local_edit_saved_beside_it() {
    let provider = memory_provider();
    provider.put_remote("/report.txt", b"revision R\n");
    let m = InProcessMount::new(provider.clone(), slow_upload_config());
    assert_eq!(fs::read(m.path("report.txt")).unwrap(), b"revision R\n");
    // The local edit starts from R...
    fs::write(m.path("report.txt"), b"local edit\n").unwrap();
    // ...while someone else changes the remote.
    provider.put_remote("/report.txt", b"other client edit\n");
    assert!(m.drain(DRAIN));

    assert_eq!(
        provider.get_remote("/report.txt").unwrap(),
        b"other client edit\n",
        "the upload overwrote a remote change"
    );
    let copies: Vec<String> = provider
        .paths()
        .into_iter()
        .filter(|p| p.starts_with("/report (conflict "))
        .collect();
    assert_eq!(copies.len(), 1, "conflict copies: {copies:?}");
    let copy_name = copies[0].trim_start_matches('/').to_string();
    assert!(
        is_conflict_name(&copy_name, "report", ".txt"),
        "{copy_name}"
    );
    assert_eq!(provider.get_remote(&copies[0]).unwrap(), b"local edit\n");

    // Through the mount: both, with the right contents.
    let names: Vec<String> = fs::read_dir(m.mnt())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert!(names.contains(&copy_name), "{names:?}");
    assert_eq!(fs::read(m.path(&copy_name)).unwrap(), b"local edit\n");
    assert_eq!(
        fs::read(m.path("report.txt")).unwrap(),
        b"other client edit\n"
    );
    assert_eq!(
        xattr(&m.path("report.txt"), "user.cloudmount.state").unwrap(),
        "conflict"
    );
    assert!(xattr(&m.path("report.txt"), "user.cloudmount.error")
        .unwrap()
        .contains(&copy_name));
    let status = cloudmount::daemon::status_json(&m.root, m.mnt());
    let conflicts = status["connections"][0]["conflicts"].as_array().unwrap();
    assert_eq!(conflicts.len(), 1);
    assert_eq!(conflicts[0]["path"], "/report.txt");
    assert_eq!(conflicts[0]["conflict_copy"], copies[0].as_str());
}

#[test]
fn conflict_through_the_daemon_is_listed_by_status_json() {
    let dirs = TestDirs::new();
    fs::write(dirs.cloud.join("notes.md"), b"revision R\n").unwrap();
    let m = DaemonMount::start(&dirs, &["--upload-delay", "60"]);
    assert_eq!(fs::read(m.mnt.join("notes.md")).unwrap(), b"revision R\n");
    fs::write(m.mnt.join("notes.md"), b"local edit, longer\n").unwrap();
    // Another client changes the backing file meanwhile.
    std::thread::sleep(Duration::from_millis(20));
    fs::write(dirs.cloud.join("notes.md"), b"remote edit\n").unwrap();
    m.sync();
    assert_eq!(
        fs::read(dirs.cloud.join("notes.md")).unwrap(),
        b"remote edit\n"
    );
    let copy = fs::read_dir(&dirs.cloud)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .find(|n| is_conflict_name(n, "notes", ".md"))
        .expect("no conflict copy in the backing folder");
    assert_eq!(
        fs::read(dirs.cloud.join(&copy)).unwrap(),
        b"local edit, longer\n"
    );
    assert_eq!(
        fs::read(m.mnt.join(&copy)).unwrap(),
        b"local edit, longer\n"
    );
    assert_eq!(
        xattr(&m.mnt.join("notes.md"), "user.cloudmount.state").unwrap(),
        "conflict"
    );
    let out = m.cli(&["status", m.mnt.to_str().unwrap(), "--json"]);
    assert!(out.status.success());
    let all: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let v = &all[0];
    let conflicts = v["connections"][0]["conflicts"].as_array().unwrap();
    assert_eq!(conflicts.len(), 1, "{v}");
    assert_eq!(conflicts[0]["path"], "/notes.md");
    assert_eq!(conflicts[0]["conflict_copy"], format!("/{copy}"));
    assert!(m.unmount().status.success());
}

#[test]
fn directory_renamed_while_a_child_upload_runs_waits_for_it() {
    use std::os::unix::fs::MetadataExt;
    let provider = memory_provider();
    let m = InProcessMount::new(provider.clone(), test_config(|_| {}));
    fs::create_dir(m.path("d")).unwrap();
    wait_until("mkdir uploaded", Duration::from_secs(10), || {
        provider.exists_remote("/d")
    });
    // Slow calls: the child's upload is still running when the rename comes.
    provider.set_latency(Duration::from_millis(300));
    fs::write(m.path("d/x.txt"), b"x").unwrap();
    let ino = fs::metadata(m.path("d/x.txt")).unwrap().ino() & ((1 << 48) - 1);
    let vfs = m.vfs();
    wait_until("upload running", Duration::from_secs(10), || {
        vfs.queue.job_state_of(ino) == Some("uploading")
    });
    fs::rename(m.path("d"), m.path("e")).unwrap();
    assert!(m.drain(DRAIN));
    provider.set_latency(Duration::ZERO);
    let mut expected = BTreeMap::new();
    expected.insert("/e".to_string(), None);
    expected.insert("/e/x.txt".to_string(), Some(b"x".to_vec()));
    assert_eq!(remote_tree(&provider), expected);
    assert!(vfs.queue.status().iter().all(|j| j.failed.is_none()));
}
