//! Ordinary programs on a mount, as users run them: git, tar, rsync, sqlite3, an
//! editor's atomic save; and a random-operation data-integrity exerciser (pwrite, pread,
//! truncate, shared mmap) checked against a model of the file, then against the remote.

mod common;

use std::fs::{self, OpenOptions};
use std::os::fd::AsRawFd;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use common::*;

fn run(dir: &Path, cmd: &str, args: &[&str]) -> String {
    let out = Command::new(cmd)
        .args(args)
        .current_dir(dir)
        .env("GIT_AUTHOR_NAME", "t")
        .env("GIT_AUTHOR_EMAIL", "t@example.com")
        .env("GIT_COMMITTER_NAME", "t")
        .env("GIT_COMMITTER_EMAIL", "t@example.com")
        .output()
        .unwrap_or_else(|e| panic!("{cmd}: {e}"));
    assert!(
        out.status.success(),
        "{cmd} {args:?} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Every file below `root` with its content, relative paths sorted.
fn snapshot(root: &Path) -> Vec<(String, Vec<u8>)> {
    let mut out = Vec::new();
    let mut todo = vec![root.to_path_buf()];
    while let Some(dir) = todo.pop() {
        for e in fs::read_dir(&dir).unwrap() {
            let p = e.unwrap().path();
            let rel = p.strip_prefix(root).unwrap().to_string_lossy().into_owned();
            if rel.starts_with(".cloudmount") {
                continue;
            }
            let m = fs::symlink_metadata(&p).unwrap();
            if m.is_dir() {
                todo.push(p);
            } else if m.is_file() {
                out.push((rel, fs::read(&p).unwrap()));
            }
        }
    }
    out.sort();
    out
}

#[test]
fn git_tar_rsync_sqlite_and_atomic_save() {
    let dirs = TestDirs::new();
    let m = DaemonMount::start(&dirs, &["--upload-delay", "0.1"]);
    let mnt = m.mnt.clone();

    // git: init, commits, branch, gc, fsck, status clean.
    let repo = mnt.join("repo");
    fs::create_dir(&repo).unwrap();
    run(&repo, "git", &["init", "-q", "-b", "main"]);
    for i in 0..5 {
        fs::write(
            repo.join(format!("f{i}.txt")),
            format!("line {i}\n").repeat(50),
        )
        .unwrap();
        run(&repo, "git", &["add", "."]);
        run(
            &repo,
            "git",
            &["commit", "-q", "-m", &format!("commit {i}")],
        );
    }
    run(&repo, "git", &["checkout", "-q", "-b", "topic"]);
    fs::write(repo.join("f0.txt"), "changed on topic\n").unwrap();
    run(&repo, "git", &["commit", "-q", "-am", "topic"]);
    run(&repo, "git", &["checkout", "-q", "main"]);
    run(&repo, "git", &["merge", "-q", "topic"]);
    run(&repo, "git", &["gc", "-q"]);
    run(&repo, "git", &["fsck", "--full", "--strict"]);
    assert_eq!(run(&repo, "git", &["status", "--porcelain"]), "");
    assert_eq!(
        run(&repo, "git", &["rev-list", "--count", "HEAD"]).trim(),
        "6"
    );

    // tar: pack the source tree, unpack on the mount, compare.
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let tarball = dirs.tmp.path().join("src.tar");
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
    assert_eq!(snapshot(&mnt.join("untarred/src")), snapshot(&src));

    // rsync: copy a tree in, change a file, sync again (delta transfer over the mount).
    let tests_dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests");
    let dst = format!("{}/", mnt.join("rsynced").display());
    run(
        Path::new("/"),
        "rsync",
        &["-a", &format!("{}/", tests_dir.display()), &dst],
    );
    assert_eq!(snapshot(&mnt.join("rsynced")), snapshot(&tests_dir));
    run(
        Path::new("/"),
        "rsync",
        &[
            "-a",
            "--checksum",
            &format!("{}/", tests_dir.display()),
            &dst,
        ],
    );

    // sqlite3: transactions, an index, a vacuum, integrity check.
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
    assert_eq!(
        run(&mnt, "sqlite3", &[db, "select count(*) from t;"]).trim(),
        "1334"
    );
    assert_eq!(
        run(&mnt, "sqlite3", &[db, "pragma integrity_check;"]).trim(),
        "ok"
    );

    // An editor's atomic save: write a temp file, fsync, rename over the original.
    let doc = mnt.join("notes.txt");
    fs::write(&doc, "first draft\n").unwrap();
    for round in 0..3 {
        let tmp = mnt.join(".notes.txt.swp");
        let f = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .open(&tmp)
            .unwrap();
        f.write_all_at(format!("draft {round}\n").as_bytes(), 0)
            .unwrap();
        f.sync_all().unwrap();
        drop(f);
        fs::rename(&tmp, &doc).unwrap();
    }
    assert_eq!(fs::read_to_string(&doc).unwrap(), "draft 2\n");

    // Everything reaches the backing folder exactly.
    m.sync();
    assert_eq!(snapshot(&dirs.cloud.join("untarred/src")), snapshot(&src));
    assert_eq!(snapshot(&dirs.cloud.join("rsynced")), snapshot(&tests_dir));
    assert_eq!(
        fs::read_to_string(dirs.cloud.join("notes.txt")).unwrap(),
        "draft 2\n"
    );
    assert!(!dirs.cloud.join(".notes.txt.swp").exists());
    // The repository is intact on the remote side too.
    run(
        &dirs.cloud.join("repo"),
        "git",
        &["fsck", "--full", "--strict"],
    );
    let out = m.unmount();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

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
                assert_eq!(&map[..], &model[i][..], "mapping content at step {step}");
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
                assert_eq!(&buf[..got], want, "read of f{i} at {off}+{n}, step {step}");
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
