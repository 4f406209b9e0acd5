//! The Dropbox provider against the Dropbox emulator, one test per quirk of Dropbox's
//! (provider-apis §3, readonly-sources §4.6). The contract every provider keeps is in
//! tests/provider_contract.rs; the filesystem over it in tests/mount_suite.rs and
//! tests/mount_dropbox.rs.

#[path = "support/dropbox_emulator.rs"]
mod dropbox_emulator;
#[path = "support/dropbox_harness.rs"]
mod dropbox_harness;
#[path = "support/emu/mod.rs"]
mod emu;

use std::time::{Duration, Instant};

use cloudmount::provider::dropbox::CHUNK_UNIT;
use cloudmount::provider::{
    collect_stream, Change, EntryKind, Provider, ProviderError, UploadOptions,
};
use dropbox_emulator::{DropboxConfig, Fault};
use dropbox_harness::harness;

fn pattern(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect()
}

async fn put(
    p: &dyn Provider,
    dir: &tempfile::TempDir,
    path: &str,
    data: &[u8],
    options: &UploadOptions,
) -> Result<cloudmount::provider::RemoteEntry, ProviderError> {
    let src = dir.path().join("src");
    std::fs::write(&src, data).unwrap();
    p.upload(path, &src, options).await
}

async fn read_all(p: &dyn Provider, path: &str) -> Vec<u8> {
    collect_stream(p.read_range(path, None, 0, u64::MAX).await.unwrap())
        .await
        .unwrap()
}

/// The in-between name a case-only rename of `from` uses (as the provider derives it).
fn tmp_name(from: &str) -> String {
    let h = cloudmount::provider::dropbox::hash::content_hash(from.to_lowercase().as_bytes());
    format!(".cloudmount-case-{}", &h[..16])
}

#[tokio::test]
async fn a_rename_that_changes_only_the_case_is_two_moves_and_leaves_nothing_behind() {
    let h = harness(DropboxConfig::default(), |_| {});
    let p = &h.provider;
    p.mkdir("/docs").await.unwrap();
    put(
        p,
        &h.dir,
        "/docs/readme.txt",
        b"read me",
        &UploadOptions::default(),
    )
    .await
    .unwrap();
    let e = p
        .rename("/docs/readme.txt", "/docs/README.txt", false)
        .await
        .unwrap();
    assert_eq!(e.name, "README.txt");
    assert_eq!(
        h.emu.display("/docs/readme.txt").as_deref(),
        Some("/docs/README.txt")
    );
    let e = p.rename("/docs", "/Docs", false).await.unwrap();
    assert_eq!(e.kind, EntryKind::Dir);
    let tree = h.emu.tree("");
    assert_eq!(
        tree.keys().cloned().collect::<Vec<_>>(),
        ["Docs", "Docs/README.txt"],
        "no temporary name left over"
    );
    assert_eq!(read_all(p, "/Docs/README.txt").await, b"read me");

    // The first move lands but its reply is lost: the provider looks, finds the file
    // under its own name, and finishes.
    h.emu.inject(Fault::LoseReply("files/move_v2"), 1);
    let e = p
        .rename("/Docs/README.txt", "/Docs/ReadMe.txt", false)
        .await
        .unwrap();
    assert_eq!(e.name, "ReadMe.txt");
    // The second move's reply lost: it landed; the provider sees the new name and is done.
    h.emu.inject(Fault::LoseReply("files/move_v2"), 2);
    let e = p
        .rename("/Docs/ReadMe.txt", "/Docs/readme.TXT", false)
        .await
        .unwrap();
    assert_eq!(e.name, "readme.TXT");
    assert_eq!(h.emu.pending_faults(), 0);
    // An attempt cut off between the two moves (a crash) is finished by the next one.
    h.emu.rename(
        "/Docs/readme.TXT",
        &format!("/Docs/{}", tmp_name("/Docs/readme.TXT")),
    );
    let e = p
        .rename("/Docs/readme.TXT", "/Docs/ReadMe.txt", false)
        .await
        .unwrap();
    assert_eq!(e.name, "ReadMe.txt");
    assert_eq!(
        h.emu.tree("").keys().cloned().collect::<Vec<_>>(),
        ["Docs", "Docs/ReadMe.txt"]
    );
}

#[tokio::test]
async fn names_outside_ascii_travel_escaped_and_come_back_whole() {
    let h = harness(DropboxConfig::default(), |_| {});
    let p = &h.provider;
    let name = "/Ünïcödé 😀 файл.txt";
    put(
        p,
        &h.dir,
        name,
        b"utf-8 all the way",
        &UploadOptions::default(),
    )
    .await
    .unwrap();
    let listed: Vec<String> = h.provider.list("/").next_page().await;
    assert_eq!(listed, ["Ünïcödé 😀 файл.txt"]);
    assert_eq!(read_all(p, name).await, b"utf-8 all the way");
    // Every Dropbox-API-Arg that went out was ASCII (the emulator refuses anything else).
    assert!(h
        .emu
        .requests()
        .iter()
        .all(|r| r.header("dropbox-api-arg").is_none_or(str::is_ascii)));
}

/// `list` yields one page of names here.
trait Names {
    async fn next_page(self) -> Vec<String>;
}

impl Names for cloudmount::provider::ListStream<'_> {
    async fn next_page(mut self) -> Vec<String> {
        use futures::StreamExt;
        let mut names = Vec::new();
        while let Some(page) = self.next().await {
            names.extend(page.unwrap().into_iter().map(|e| e.name));
        }
        names.sort();
        names
    }
}

#[tokio::test]
async fn large_files_go_through_sessions_that_resume_from_the_servers_offset() {
    let h = harness(
        DropboxConfig {
            request_cap: 5 * CHUNK_UNIT as usize,
            ..DropboxConfig::default()
        },
        |c| {
            c.upload_cutoff = CHUNK_UNIT;
            c.chunk_size = CHUNK_UNIT;
        },
    );
    let p = &h.provider;
    let data = pattern(3 * CHUNK_UNIT as usize + 12_345, 5);
    // An append that lands but whose reply is lost, and one dropped before it is read: the
    // session asks where the server stands (an empty append answered with
    // `correct_offset`) and goes on from there.
    h.emu
        .inject(Fault::LoseReply("files/upload_session/append_v2"), 1);
    h.emu
        .inject(Fault::DropRequest("files/upload_session/append_v2"), 1);
    let e = put(p, &h.dir, "/big.bin", &data, &UploadOptions::default())
        .await
        .unwrap();
    assert_eq!(e.size, data.len() as u64);
    assert_eq!(h.emu.content("/big.bin").unwrap(), data);
    assert_eq!(h.emu.pending_faults(), 0);
    let st = h.emu.stats();
    assert_eq!(st.simple_uploads, 0);
    assert!(st.session_appends >= 3, "{st:?}");
    assert_eq!(h.emu.open_sessions(), 0);

    // A conditional replace through a session: the base revision is checked at commit.
    let newer = pattern(2 * CHUNK_UNIT as usize + 1, 6);
    let stale = UploadOptions {
        expected_revision: Some(Some(e.revision.clone())),
        ..Default::default()
    };
    h.emu.add_file("/big.bin", b"changed elsewhere");
    let r = put(p, &h.dir, "/big.bin", &newer, &stale).await;
    assert!(
        matches!(r, Err(ProviderError::PreconditionFailed(_))),
        "{r:?}"
    );
    assert_eq!(h.emu.content("/big.bin").unwrap(), b"changed elsewhere");
}

#[tokio::test]
async fn both_kinds_of_rate_limit_are_waited_out_as_long_as_dropbox_asks() {
    let h = harness(DropboxConfig::default(), |_| {});
    let p = &h.provider;
    h.emu.inject(
        Fault::RateLimit {
            reason: "too_many_write_operations",
            retry_after: 1,
        },
        1,
    );
    h.emu.inject(
        Fault::RateLimit {
            reason: "too_many_requests",
            retry_after: 1,
        },
        1,
    );
    let started = Instant::now();
    p.mkdir("/d").await.unwrap();
    let listed = p.list("/").next_page().await;
    assert_eq!(listed, ["d"]);
    assert!(
        started.elapsed() >= Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(h.emu.stats().throttled, 2);
    // 5xx: retried too.
    h.emu.inject(Fault::ServerError(503), 1);
    assert_eq!(p.stat("/d").await.unwrap().kind, EntryKind::Dir);
}

#[tokio::test]
async fn conditional_writes_never_overwrite_and_parents_are_never_made_behind_our_back() {
    let h = harness(DropboxConfig::default(), |_| {});
    let p = &h.provider;
    let first = put(p, &h.dir, "/f.txt", b"one", &UploadOptions::default())
        .await
        .unwrap();
    // A revision that cannot be Dropbox's (it wants hex): a conflict, not a 400.
    let made_up = UploadOptions {
        expected_revision: Some(Some("no-such-revision".into())),
        ..Default::default()
    };
    let r = put(p, &h.dir, "/f.txt", b"mine", &made_up).await;
    assert!(
        matches!(r, Err(ProviderError::PreconditionFailed(_))),
        "{r:?}"
    );
    // Identical content is a conflict too (strict_conflict).
    let must_not_exist = UploadOptions {
        expected_revision: Some(None),
        ..Default::default()
    };
    let r = put(p, &h.dir, "/f.txt", b"one", &must_not_exist).await;
    assert!(
        matches!(r, Err(ProviderError::PreconditionFailed(_))),
        "{r:?}"
    );
    let at_first = UploadOptions {
        expected_revision: Some(Some(first.revision.clone())),
        mtime: Some(std::time::UNIX_EPOCH + Duration::from_secs(1_431_445_838)),
        ..Default::default()
    };
    let second = put(p, &h.dir, "/f.txt", b"two", &at_first).await.unwrap();
    assert_ne!(second.revision, first.revision);
    assert_eq!(
        second.mtime,
        at_first.mtime.unwrap(),
        "client_modified is the mtime"
    );
    // Dropbox would make /no/such/ for us; the trait wants NotFound.
    let r = put(p, &h.dir, "/no/such/file", b"x", &UploadOptions::default()).await;
    assert!(matches!(r, Err(ProviderError::NotFound(_))), "{r:?}");
    assert!(matches!(
        p.mkdir("/no/such").await,
        Err(ProviderError::NotFound(_))
    ));
    assert!(!h.emu.exists("/no"));
    // Dropbox deletes folders whole; the trait only empty ones.
    p.mkdir("/full").await.unwrap();
    put(p, &h.dir, "/full/x", b"x", &UploadOptions::default())
        .await
        .unwrap();
    assert!(matches!(
        p.delete("/full").await,
        Err(ProviderError::DirectoryNotEmpty(_))
    ));
    assert!(h.emu.exists("/full/x"));
    // A name Dropbox refuses.
    let r = put(p, &h.dir, "/desktop.ini", b"x", &UploadOptions::default()).await;
    assert!(matches!(r, Err(ProviderError::InvalidName(_))), "{r:?}");
}

#[tokio::test]
async fn paper_docs_are_not_shown() {
    let h = harness(DropboxConfig::default(), |_| {});
    h.emu.add_file("/notes.txt", b"n");
    h.emu.add_paper_doc("/Plan.paper");
    assert_eq!(h.provider.list("/").next_page().await, ["notes.txt"]);
    assert!(matches!(
        h.provider.stat("/Plan.paper").await,
        Err(ProviderError::NotFound(_))
    ));
}

#[tokio::test]
async fn changes_come_with_their_display_case_and_a_reset_starts_over() {
    let h = harness(DropboxConfig::default(), |_| {});
    let p = &h.provider;
    h.emu.add_folder("/Photos/Summer");
    let cursor = p.changes_cursor().await.unwrap();
    // Dropbox lowercases ancestors in path_display; the provider asks for their case.
    h.emu.add_file("/Photos/Summer/Beach.JPG", b"jpg");
    h.emu.add_file("/Photos/old.jpg", b"old");
    h.emu.delete("/Photos/old.jpg");
    let batch = p.changes_since(&cursor).await.unwrap();
    let seen: Vec<String> = batch
        .changes
        .iter()
        .map(|c| match c {
            Change::Upserted { path, .. } => format!("+{path}"),
            Change::Removed { path } => format!("-{path}"),
        })
        .collect();
    assert_eq!(
        seen,
        [
            "+/Photos/Summer/Beach.JPG",
            "+/Photos/old.jpg",
            "-/Photos/old.jpg"
        ]
    );
    // A deleted folder: one removal, its contents with it.
    h.emu.delete("/Photos");
    let batch = p.changes_since(&batch.cursor).await.unwrap();
    assert!(matches!(&batch.changes[..], [Change::Removed { path }] if path == "/Photos"));
    h.emu.inject(Fault::ResetCursor, 1);
    let r = p.changes_since(&batch.cursor).await;
    assert!(
        matches!(r, Err(ProviderError::PreconditionFailed(_))),
        "{r:?}"
    );
}

#[tokio::test]
async fn longpoll_waits_for_a_change_and_honours_backoff() {
    let h = harness(
        DropboxConfig {
            longpoll_hold: Some(Duration::from_millis(300)),
            ..DropboxConfig::default()
        },
        |_| {},
    );
    let p = &h.provider;
    let cursor = p.changes_cursor().await.unwrap();
    assert!(!p.wait_for_changes(&cursor).await.unwrap(), "nothing yet");
    h.emu.inject(Fault::LongpollBackoff(1), 1);
    assert!(!p.wait_for_changes(&cursor).await.unwrap());
    // The backoff runs from that answer.
    let told = Instant::now();
    h.emu.add_file("/new.txt", b"new");
    assert!(p.wait_for_changes(&cursor).await.unwrap());
    assert!(
        told.elapsed() >= Duration::from_millis(950),
        "waited out the backoff: {:?}",
        told.elapsed()
    );
    let st = h.emu.stats();
    assert_eq!((st.longpolls, st.backoff_violations), (3, 0));
    // No bearer token went to the notify host.
    assert!(h
        .emu
        .requests()
        .iter()
        .filter(|r| r.path.contains("longpoll"))
        .all(|r| r.header("authorization").is_none()));
}

#[tokio::test]
async fn a_team_member_sees_team_folders_beside_their_own() {
    let h = harness(
        DropboxConfig {
            team: true,
            ..DropboxConfig::default()
        },
        |_| {},
    );
    h.emu.add_file("/Marketing/plan.txt", b"plan");
    h.emu.add_file("/Alice Smith/notes.txt", b"notes");
    let p = &h.provider;
    assert_eq!(p.list("/").next_page().await, ["Alice Smith", "Marketing"]);
    put(
        p,
        &h.dir,
        "/Marketing/new.txt",
        b"from the mount",
        &UploadOptions::default(),
    )
    .await
    .unwrap();
    assert_eq!(
        h.emu.content("/Marketing/new.txt").unwrap(),
        b"from the mount"
    );
    let q = p.quota().await.unwrap();
    assert_eq!(
        q.total,
        Some(h.emu.config().allocated),
        "the member's share of the team space"
    );

    // The home view only.
    let home = harness(
        DropboxConfig {
            team: true,
            ..DropboxConfig::default()
        },
        |c| c.team_space = false,
    );
    home.emu.add_file("/Alice Smith/notes.txt", b"notes");
    home.emu.add_file("/Marketing/plan.txt", b"plan");
    assert_eq!(home.provider.list("/").next_page().await, ["notes.txt"]);
    assert_eq!(home.emu.stats().path_root_calls, 0);
}

#[tokio::test]
async fn revisions_are_the_versions_and_an_expired_token_is_renewed() {
    let h = harness(DropboxConfig::default(), |_| {});
    let p = &h.provider;
    for v in [&b"v1"[..], b"version two", b"3"] {
        put(p, &h.dir, "/f", v, &UploadOptions::default())
            .await
            .unwrap();
    }
    let versions = p.list_versions("/f").await.unwrap();
    assert_eq!(versions.len(), 3);
    let oldest = versions.last().unwrap();
    let bytes = collect_stream(p.read_version("/f", &oldest.id).await.unwrap())
        .await
        .unwrap();
    assert_eq!(bytes, b"v1");
    // A read at a replaced revision reads that revision.
    assert_eq!(
        collect_stream(
            p.read_range("/f", Some(&versions[1].id), 0, 100)
                .await
                .unwrap()
        )
        .await
        .unwrap(),
        b"version two"
    );

    h.emu.expire_all_access_tokens();
    assert_eq!(read_all(p, "/f").await, b"3");
    assert_eq!(h.emu.oauth_stats().refresh_grants, 1);
}

#[tokio::test]
async fn small_files_commit_together_and_spare_the_namespace_lock() {
    // Five commits a minute: forty files committed one by one could never fit.
    let h = harness(
        DropboxConfig {
            write_limit: Some((5, Duration::from_secs(60))),
            ..DropboxConfig::default()
        },
        // A window long enough for all forty to join under any load.
        |c| c.batch_commit_ms = 3000,
    );
    let p = &h.provider;
    let dirs: Vec<tempfile::TempDir> = (0..40).map(|_| tempfile::tempdir().unwrap()).collect();
    let uploads = dirs.iter().enumerate().map(|(i, d)| async move {
        let src = d.path().join("src");
        std::fs::write(&src, format!("file number {i}")).unwrap();
        p.upload(&format!("/f{i:02}.txt"), &src, &UploadOptions::default())
            .await
            .map(|e| (i, e))
    });
    let done = futures::future::join_all(uploads).await;
    for r in done {
        let (i, e) = r.unwrap();
        assert_eq!(e.size, format!("file number {i}").len() as u64);
        assert_eq!(
            h.emu.content(&format!("/f{i:02}.txt")).unwrap(),
            format!("file number {i}").as_bytes()
        );
    }
    let st = h.emu.stats();
    assert_eq!(st.batched_entries, 40);
    assert!(st.batch_commits <= 5, "{st:?}");
    assert_eq!(
        st.write_limited, 0,
        "forty files, a handful of commits: {st:?}"
    );
    assert_eq!(st.simple_uploads, 0);

    // One commit per file: the namespace refuses what is over its limit, says when a slot
    // frees up, and the provider waits that long.
    let one_by_one = harness(
        DropboxConfig {
            write_limit: Some((5, Duration::from_secs(2))),
            ..DropboxConfig::default()
        },
        |c| c.batch_commit_ms = 0,
    );
    let p = &one_by_one.provider;
    let mut sources = Vec::new();
    for (i, d) in dirs.iter().enumerate().take(7) {
        let src = d.path().join("src");
        std::fs::write(&src, format!("g {i}")).unwrap();
        sources.push(src);
    }
    for (i, src) in sources.iter().enumerate() {
        p.upload(&format!("/g{i}.txt"), src, &UploadOptions::default())
            .await
            .unwrap();
    }
    let st = one_by_one.emu.stats();
    assert!(st.write_limited > 0, "{st:?}");
    assert_eq!(
        st.simple_uploads, 7,
        "refused commits are not counted as uploads"
    );
    assert_eq!(one_by_one.emu.tree("").len(), 7);
}
