//! The Google Drive provider against the strict Drive emulator.

#[path = "support/drive_emulator.rs"]
mod drive_emulator;
#[path = "support/drive_harness.rs"]
mod drive_harness;
#[path = "support/emu/mod.rs"]
mod emu;

use std::collections::BTreeSet;
use std::io::Write;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use cloudmount::accounts::{BearerTokens, TokenSource, TokenVault};
use cloudmount::provider::gdrive::{GdriveConfig, GdriveProvider};
use cloudmount::provider::{
    collect_stream, Change, EntryKind, Provider, ProviderError, RemoteEntry, UploadOptions,
};
use drive_emulator::{DriveEmulator, EmulatorConfig, Fault, DOC_MIME};
use drive_harness::{harness, Harness};
use futures::StreamExt;

async fn list(p: &GdriveProvider, dir: &str) -> Vec<RemoteEntry> {
    let mut out = Vec::new();
    let mut s = p.list(dir);
    while let Some(page) = s.next().await {
        out.extend(page.unwrap());
    }
    out.sort_by(|a, b| a.name.cmp(&b.name));
    out
}

fn names(entries: &[RemoteEntry]) -> Vec<String> {
    entries.iter().map(|e| e.name.clone()).collect()
}

async fn read_all(p: &GdriveProvider, path: &str) -> Vec<u8> {
    collect_stream(p.read_range(path, None, 0, u64::MAX / 2).await.unwrap())
        .await
        .unwrap()
}

fn temp_file(h: &Harness, name: &str, data: &[u8]) -> std::path::PathBuf {
    let p = h.dir.path().join(name);
    std::fs::File::create(&p).unwrap().write_all(data).unwrap();
    p
}

fn pattern(n: usize, seed: u8) -> Vec<u8> {
    (0..n)
        .map(|i| (i as u32 * 31 + seed as u32) as u8)
        .collect()
}

#[tokio::test]
async fn list_follows_pages_including_empty_ones() {
    let h = harness(EmulatorConfig::default(), |c| c.page_size = 3).await;
    h.emu.set_max_page_size(2);
    h.emu.set_empty_pages(true);
    let root = h.emu.root_id();
    let dir = h.emu.add_folder(&root, "docs");
    for i in 0..7 {
        h.emu.add_file(
            &dir,
            &format!("f{i}.txt"),
            format!("content {i}").as_bytes(),
        );
    }
    let trashed = h.emu.add_file(&dir, "gone.txt", b"x");
    h.emu.trash(&trashed);
    let entries = list(&h.provider, "/docs").await;
    assert_eq!(
        names(&entries),
        (0..7).map(|i| format!("f{i}.txt")).collect::<Vec<_>>()
    );
    assert_eq!(entries[3].size, 9);
    assert!(entries[3].hash.as_deref().unwrap().starts_with("md5:"));
    assert!(h.emu.stats().list_calls >= 8, "pages were small");
    let root_entries = list(&h.provider, "/").await;
    assert_eq!(root_entries.len(), 1);
    assert_eq!(root_entries[0].kind, EntryKind::Dir);
    assert_eq!(
        h.provider.stat("/docs/f3.txt").await.unwrap().size,
        "content 3".len() as u64
    );
    assert!(matches!(
        h.provider.stat("/docs/nope").await,
        Err(ProviderError::NotFound(_))
    ));
    assert!(matches!(
        h.provider.stat("/docs/f1.txt/x").await,
        Err(ProviderError::NotADirectory(_))
    ));
}

#[tokio::test]
async fn ranged_reads() {
    let h = harness(EmulatorConfig::default(), |_| {}).await;
    let data = pattern(100_000, 7);
    h.emu.add_file(&h.emu.root_id(), "blob.bin", &data);
    let got = collect_stream(
        h.provider
            .read_range("/blob.bin", None, 1000, 5000)
            .await
            .unwrap(),
    )
    .await
    .unwrap();
    assert_eq!(got, &data[1000..6000]);
    let tail = collect_stream(
        h.provider
            .read_range("/blob.bin", None, 99_990, 100)
            .await
            .unwrap(),
    )
    .await
    .unwrap();
    assert_eq!(tail, &data[99_990..]);
    // Past the end: the emulator answers 416, which reads as end of file.
    let past = collect_stream(
        h.provider
            .read_range("/blob.bin", None, 200_000, 10)
            .await
            .unwrap(),
    )
    .await
    .unwrap();
    assert!(past.is_empty());
    // Reading a revision that no longer exists.
    let err = h
        .provider
        .read_range("/blob.bin", Some("0Bnope"), 0, 10)
        .await
        .err()
        .unwrap();
    assert!(
        matches!(err, ProviderError::PreconditionFailed(_)),
        "{err:?}"
    );
}

#[tokio::test]
async fn duplicate_and_slash_names_round_trip() {
    let h = harness(EmulatorConfig::default(), |_| {}).await;
    let root = h.emu.root_id();
    let a1 = h.emu.add_file(&root, "a.txt", b"one");
    let a2 = h.emu.add_file(&root, "a.txt", b"two");
    let a3 = h.emu.add_file(&root, "a.txt", b"three");
    h.emu.add_file(&root, "a (2).txt", b"real");
    let slash = h.emu.add_file(&root, "x/y", b"slashy");
    h.emu.add_file(&root, "p\u{2215}q", b"division");
    h.emu.add_folder(&root, "..");

    let entries = list(&h.provider, "/").await;
    let got: BTreeSet<String> = names(&entries).into_iter().collect();
    let want: BTreeSet<String> = [
        "a.txt",
        "a (2).txt",
        "a (3).txt",
        "a (4).txt",
        "x\u{2215}y",
        "p\u{201B}\u{2215}q",
        "\u{201B}..",
    ]
    .into_iter()
    .map(String::from)
    .collect();
    assert_eq!(got, want);
    // Duplicates are numbered in id order, skipping the real "a (2).txt".
    let by_name = |n: &str| entries.iter().find(|e| e.name == n).unwrap().id.clone();
    assert_eq!(by_name("a.txt"), a1);
    assert_eq!(by_name("a (3).txt"), a2);
    assert_eq!(by_name("a (4).txt"), a3);
    assert_eq!(read_all(&h.provider, "/a (3).txt").await, b"two");
    assert_eq!(read_all(&h.provider, "/x\u{2215}y").await, b"slashy");

    // Renaming a numbered duplicate renames exactly that item.
    let e = h
        .provider
        .rename("/a (3).txt", "/b.txt", false)
        .await
        .unwrap();
    assert_eq!(e.id, a2);
    assert_eq!(h.emu.file(&a2).unwrap().name, "b.txt");
    // A local name with U+2215 becomes a '/' remotely, and comes back the same.
    let e = h
        .provider
        .rename("/x\u{2215}y", "/new\u{2215}name", false)
        .await
        .unwrap();
    assert_eq!(e.id, slash);
    assert_eq!(e.name, "new\u{2215}name");
    assert_eq!(h.emu.file(&slash).unwrap().name, "new/name");
    assert!(names(&list(&h.provider, "/").await).contains(&"new\u{2215}name".to_string()));
    // A name encoding could never produce is refused rather than silently changed.
    assert!(matches!(
        h.provider.mkdir("/bad\u{201B}x").await,
        Err(ProviderError::InvalidName(_))
    ));
    // Move into a folder and back.
    h.provider.mkdir("/sub").await.unwrap();
    h.provider
        .rename("/b.txt", "/sub/b.txt", false)
        .await
        .unwrap();
    assert_eq!(
        h.emu.file(&a2).unwrap().parents,
        vec![h.emu.find(&root, "sub")[0].clone()]
    );
    assert!(matches!(
        h.provider.rename("/a.txt", "/sub/b.txt", false).await,
        Err(ProviderError::AlreadyExists(_))
    ));
    h.provider
        .rename("/a.txt", "/sub/b.txt", true)
        .await
        .unwrap();
    assert_eq!(read_all(&h.provider, "/sub/b.txt").await, b"one");
    assert!(
        h.emu.file(&a2).unwrap().trashed,
        "overwritten target goes to the trash"
    );
}

#[tokio::test]
async fn native_docs_export_read_only() {
    let h = harness(EmulatorConfig::default(), |_| {}).await;
    let root = h.emu.root_id();
    let export = b"PK\x03\x04 pretend docx".to_vec();
    let doc = h.emu.add_native(&root, "Report", DOC_MIME, &export);
    h.emu
        .add_native(&root, "Form", "application/vnd.google-apps.form", b"");
    let entries = list(&h.provider, "/").await;
    assert_eq!(names(&entries), vec!["Report.docx"]);
    assert_eq!(entries[0].size, 0, "size unknown until exported");
    assert!(entries[0].hash.is_none());
    assert_eq!(read_all(&h.provider, "/Report.docx").await, export);
    assert_eq!(
        collect_stream(
            h.provider
                .read_range("/Report.docx", None, 3, 4)
                .await
                .unwrap()
        )
        .await
        .unwrap(),
        &export[3..7]
    );
    assert_eq!(h.emu.stats().exports, 1, "export cached");
    assert_eq!(
        h.provider.stat("/Report.docx").await.unwrap().size,
        export.len() as u64
    );
    let src = temp_file(&h, "up", b"overwrite");
    assert!(matches!(
        h.provider
            .upload("/Report.docx", &src, &UploadOptions::default())
            .await,
        Err(ProviderError::PermissionDenied(_))
    ));
    // Renaming keeps the doc's name without the export extension.
    h.provider
        .rename("/Report.docx", "/Final.docx", false)
        .await
        .unwrap();
    assert_eq!(h.emu.file(&doc).unwrap().name, "Final");
    // Too large to export: a clear error.
    h.emu.add_native(&root, "Huge", DOC_MIME, &vec![b'x'; 2000]);
    h.emu.set_export_size_limit(1000);
    let err = h
        .provider
        .read_range("/Huge.docx", None, 0, 10)
        .await
        .err()
        .unwrap();
    assert!(
        matches!(&err, ProviderError::Unsupported(m) if m.contains("10 MB")),
        "{err:?}"
    );
}

#[tokio::test]
async fn multipart_upload_create_and_update_keep_id() {
    let h = harness(EmulatorConfig::default(), |_| {}).await;
    h.provider.mkdir("/dir").await.unwrap();
    let v1 = temp_file(&h, "v1", b"first version");
    let created = h
        .provider
        .upload(
            "/dir/note.txt",
            &v1,
            &UploadOptions {
                expected_revision: Some(None),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    assert_eq!(created.name, "note.txt");
    assert_eq!(created.size, 13);
    assert_eq!(
        read_all(&h.provider, "/dir/note.txt").await,
        b"first version"
    );
    // Must-not-exist now fails.
    assert!(matches!(
        h.provider
            .upload(
                "/dir/note.txt",
                &v1,
                &UploadOptions {
                    expected_revision: Some(None),
                    ..Default::default()
                }
            )
            .await,
        Err(ProviderError::PreconditionFailed(_))
    ));
    let v2 = temp_file(&h, "v2", b"second version!");
    let updated = h
        .provider
        .upload(
            "/dir/note.txt",
            &v2,
            &UploadOptions {
                expected_revision: Some(Some(created.revision.clone())),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    assert_eq!(updated.id, created.id, "update keeps the id");
    assert_ne!(updated.revision, created.revision);
    // A stale expected revision is refused.
    assert!(matches!(
        h.provider
            .upload(
                "/dir/note.txt",
                &v1,
                &UploadOptions {
                    expected_revision: Some(Some(created.revision.clone())),
                    ..Default::default()
                }
            )
            .await,
        Err(ProviderError::PreconditionFailed(_))
    ));
    assert_eq!(h.emu.stats().multipart_uploads, 2);
    assert_eq!(
        h.emu
            .find(&h.emu.find(&h.emu.root_id(), "dir")[0], "note.txt")
            .len(),
        1
    );

    // Revisions grow, and old ones can be read.
    let versions = h.provider.list_versions("/dir/note.txt").await.unwrap();
    assert_eq!(versions.len(), 2);
    assert_eq!(versions[0].size, 13);
    assert_eq!(versions[1].id, updated.revision);
    let old = collect_stream(
        h.provider
            .read_version("/dir/note.txt", &versions[0].id)
            .await
            .unwrap(),
    )
    .await
    .unwrap();
    assert_eq!(old, b"first version");
    // Reading with the old revision gives the old bytes (see module docs).
    let at_rev = collect_stream(
        h.provider
            .read_range("/dir/note.txt", Some(&created.revision), 0, 5)
            .await
            .unwrap(),
    )
    .await
    .unwrap();
    assert_eq!(at_rev, b"first");
}

#[tokio::test]
async fn resumable_upload_survives_drop_and_expiry() {
    let h = harness(EmulatorConfig::default(), |c| {
        c.small_upload_limit = 100_000;
        c.resumable_chunk_size = 256 * 1024;
    })
    .await;
    let data = pattern(1_100_000, 3);
    let src = temp_file(&h, "big", &data);
    let e = h
        .provider
        .upload("/big.bin", &src, &UploadOptions::default())
        .await
        .unwrap();
    assert_eq!(e.size, data.len() as u64);
    assert_eq!(read_all(&h.provider, "/big.bin").await, data);
    assert_eq!(h.emu.stats().resumable_sessions, 1);
    assert_eq!(h.emu.stats().chunk_puts, 5);

    // A connection dropped mid-chunk: the client asks where the server stands and resumes.
    let data2 = pattern(1_000_000, 9);
    let src2 = temp_file(&h, "big2", &data2);
    h.emu.inject(Fault::DropUploadAfter(300_000), 1);
    let e2 = h
        .provider
        .upload("/big.bin", &src2, &UploadOptions::default())
        .await
        .unwrap();
    assert_eq!(e2.id, e.id, "update keeps the id");
    assert_eq!(read_all(&h.provider, "/big.bin").await, data2);
    let s = h.emu.stats();
    assert_eq!(s.faults_served, 1);
    assert!(s.status_queries >= 1);
    assert_eq!(s.resumable_sessions, 2);

    // The session expires mid-upload: start a new one.
    let data3 = pattern(700_000, 1);
    let src3 = temp_file(&h, "big3", &data3);
    h.emu.inject(Fault::ExpireUploadSession, 1);
    h.provider
        .upload("/big3.bin", &src3, &UploadOptions::default())
        .await
        .unwrap();
    assert_eq!(read_all(&h.provider, "/big3.bin").await, data3);
    assert_eq!(h.emu.stats().resumable_sessions, 4);
    assert_eq!(h.emu.open_sessions(), 0);
    let versions = h.provider.list_versions("/big.bin").await.unwrap();
    assert_eq!(versions.len(), 2);
}

#[tokio::test]
async fn mkdir_delete_copy() {
    let h = harness(EmulatorConfig::default(), |_| {}).await;
    h.provider.mkdir("/d").await.unwrap();
    assert!(matches!(
        h.provider.mkdir("/d").await,
        Err(ProviderError::AlreadyExists(_))
    ));
    assert!(matches!(
        h.provider.mkdir("/nope/x").await,
        Err(ProviderError::NotFound(_))
    ));
    let src = temp_file(&h, "f", b"copy me");
    h.provider
        .upload("/d/f.txt", &src, &UploadOptions::default())
        .await
        .unwrap();
    let c = h.provider.copy("/d/f.txt", "/g.txt").await.unwrap();
    assert_eq!(read_all(&h.provider, "/g.txt").await, b"copy me");
    assert_ne!(c.id, h.provider.stat("/d/f.txt").await.unwrap().id);
    assert!(matches!(
        h.provider.copy("/d", "/e").await,
        Err(ProviderError::Unsupported(_))
    ));
    assert!(matches!(
        h.provider.delete("/d").await,
        Err(ProviderError::DirectoryNotEmpty(_))
    ));
    let id = h.provider.stat("/d/f.txt").await.unwrap().id;
    h.provider.delete("/d/f.txt").await.unwrap();
    assert!(h.emu.file(&id).unwrap().trashed, "delete goes to the trash");
    h.provider.delete("/d").await.unwrap();
    assert_eq!(names(&list(&h.provider, "/").await), vec!["g.txt"]);

    // Permanent deletion when configured.
    let h2 = harness(EmulatorConfig::default(), |c| c.trash_on_delete = false).await;
    let src = temp_file(&h2, "f", b"x");
    let e = h2
        .provider
        .upload("/f", &src, &UploadOptions::default())
        .await
        .unwrap();
    h2.provider.delete("/f").await.unwrap();
    assert!(h2.emu.file(&e.id).is_none());
}

#[tokio::test]
async fn changes_feed_reports_remote_edits() {
    let h = harness(EmulatorConfig::default(), |_| {}).await;
    let root = h.emu.root_id();
    let dir = h.emu.add_folder(&root, "w");
    let keep = h.emu.add_file(&dir, "keep.txt", b"1");
    let ren = h.emu.add_file(&dir, "old.txt", b"2");
    let trash = h.emu.add_file(&dir, "trash.txt", b"3");
    let del = h.emu.add_file(&root, "del.txt", b"4");
    // The daemon has seen these folders.
    list(&h.provider, "/").await;
    list(&h.provider, "/w").await;
    let cursor = h.provider.changes_cursor().await.unwrap();
    let none = h.provider.changes_since(&cursor).await.unwrap();
    assert!(none.changes.is_empty());
    assert_eq!(none.cursor, cursor);

    h.emu.set_content(&keep, b"edited");
    h.emu.rename(&ren, "new.txt");
    h.emu.trash(&trash);
    h.emu.delete_forever(&del);
    h.emu.add_file(&dir, "fresh.txt", b"5");
    let elsewhere = h.emu.add_folder(&root, "unlisted");
    h.emu.add_file(&elsewhere, "deep.txt", b"6");
    h.emu.set_max_page_size(2); // several pages of changes

    let batch = h.provider.changes_since(&cursor).await.unwrap();
    let mut upserts = BTreeSet::new();
    let mut removed = BTreeSet::new();
    for c in &batch.changes {
        match c {
            Change::Upserted { path, entry } => {
                if path == "/w/keep.txt" {
                    assert_eq!(entry.size, 6);
                }
                upserts.insert(path.clone());
            }
            Change::Removed { path } => {
                removed.insert(path.clone());
            }
        }
    }
    let set = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<BTreeSet<_>>();
    // The new folder's child is reported too, since its parent just became known.
    assert_eq!(
        upserts,
        set(&[
            "/w/keep.txt",
            "/w/new.txt",
            "/w/fresh.txt",
            "/unlisted",
            "/unlisted/deep.txt"
        ])
    );
    assert_eq!(removed, set(&["/w/old.txt", "/w/trash.txt", "/del.txt"]));
    assert_ne!(batch.cursor, cursor);
    let again = h.provider.changes_since(&batch.cursor).await.unwrap();
    assert!(again.changes.is_empty());
}

#[tokio::test]
async fn rate_limits_and_errors_are_retried_or_not() {
    let h = harness(EmulatorConfig::default(), |_| {}).await;
    let src = temp_file(&h, "f", b"precious");
    h.emu.inject(Fault::UserRateLimit403, 2);
    h.emu.inject(
        Fault::RateLimit429 {
            retry_after: Some(1),
        },
        1,
    );
    h.emu.inject(Fault::ServerError(503), 1);
    let started = std::time::Instant::now();
    h.provider
        .upload("/f.txt", &src, &UploadOptions::default())
        .await
        .unwrap();
    assert!(
        started.elapsed() >= Duration::from_secs(1),
        "Retry-After honoured"
    );
    assert_eq!(h.emu.stats().faults_served, 4);
    assert_eq!(read_all(&h.provider, "/f.txt").await, b"precious");
    assert_eq!(
        h.emu.find(&h.emu.root_id(), "f.txt").len(),
        1,
        "nothing duplicated"
    );

    // A permission 403 is final: not retried.
    h.emu.inject(Fault::Forbidden403, 1);
    h.emu.inject(Fault::ServerError(500), 1);
    let err = h.provider.stat("/f.txt").await.unwrap_err();
    assert!(matches!(err, ProviderError::PermissionDenied(_)), "{err:?}");
    assert_eq!(h.emu.pending_faults(), 1);

    // More rate limiting than the retry budget surfaces as RateLimited.
    let h2 = harness(EmulatorConfig::default(), |c| c.max_retries = 2).await;
    h2.emu.inject(Fault::RateLimit429 { retry_after: None }, 5);
    let err = h2.provider.stat("/x").await.unwrap_err();
    assert!(matches!(err, ProviderError::RateLimited { .. }), "{err:?}");
    assert_eq!(h2.emu.pending_faults(), 2);
}

#[tokio::test]
async fn request_rate_cap() {
    let h = harness(EmulatorConfig::default(), |c| {
        c.max_requests_per_second = 20.0
    })
    .await;
    let started = std::time::Instant::now();
    for _ in 0..10 {
        h.provider.quota().await.unwrap();
    }
    // 10 requests at 20/s need at least 9 intervals of 50 ms.
    assert!(
        started.elapsed() >= Duration::from_millis(440),
        "{:?}",
        started.elapsed()
    );
}

#[tokio::test]
async fn quota_from_about() {
    let h = harness(EmulatorConfig::default(), |_| {}).await;
    h.emu.set_storage_limit(Some(1000));
    h.emu.add_file(&h.emu.root_id(), "a", &[0u8; 300]);
    let q = h.provider.quota().await.unwrap();
    assert_eq!(
        (q.total, q.used, q.available),
        (Some(1000), Some(300), Some(700))
    );
    let src = temp_file(&h, "big", &[1u8; 800]);
    assert_eq!(
        h.provider
            .upload("/big", &src, &UploadOptions::default())
            .await
            .unwrap_err(),
        ProviderError::InsufficientStorage
    );
    h.emu.set_storage_limit(None);
    let q = h.provider.quota().await.unwrap();
    assert_eq!((q.total, q.used, q.available), (None, Some(300), None));
}

#[tokio::test]
async fn tokens_refresh_during_long_reads_and_revocation_is_an_auth_error() {
    let h = harness(
        EmulatorConfig {
            access_token_lifetime: Duration::from_secs(1),
            ..Default::default()
        },
        |_| {},
    )
    .await;
    let data = pattern(50_000, 5);
    h.emu.add_file(&h.emu.root_id(), "r.bin", &data);
    for i in 0..25u64 {
        let off = i * 1000;
        let got = collect_stream(
            h.provider
                .read_range("/r.bin", None, off, 1000)
                .await
                .unwrap(),
        )
        .await
        .unwrap();
        assert_eq!(got, &data[off as usize..off as usize + 1000]);
        if i % 8 == 4 {
            // Revoked early (say, password change): only a 401 tells.
            h.emu.expire_all_access_tokens();
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let s = h.emu.stats();
    assert!(s.refresh_grants >= 2, "{s:?}");
    assert!(s.unauthorized >= 1, "the 401 path was exercised: {s:?}");

    h.emu.revoke_all_refresh_tokens();
    let err = h.provider.stat("/r.bin").await.unwrap_err();
    match err {
        ProviderError::Auth(m) => assert!(m.contains("cloudmount login gdrive --name test"), "{m}"),
        other => panic!("expected auth error, got {other:?}"),
    }
}

#[tokio::test]
async fn strict_emulator_refuses_what_drive_refuses() {
    let h = harness(EmulatorConfig::default(), |_| {}).await;
    let token = h.tokens.access_token().await.unwrap();
    let c = reqwest::Client::new();
    let get = |url: String| c.get(url).bearer_auth(token.expose()).send();
    let api = h.emu.api_base();
    assert_eq!(get(format!("{api}/about")).await.unwrap().status(), 400);
    assert_eq!(
        get(format!("{api}/files?pageSize=1001"))
            .await
            .unwrap()
            .status(),
        400
    );
    assert_eq!(
        get(format!("{api}/files?q=fullText%20contains%20%27x%27"))
            .await
            .unwrap()
            .status(),
        400
    );
    let doc = h.emu.add_native(&h.emu.root_id(), "D", DOC_MIME, b"x");
    let r = get(format!("{api}/files/{doc}?alt=media")).await.unwrap();
    assert_eq!(r.status(), 403);
    assert!(r.text().await.unwrap().contains("fileNotDownloadable"));
    let r = c.get(format!("{api}/files")).send().await.unwrap();
    assert_eq!(r.status(), 401);
    assert!(r.text().await.unwrap().contains("authError"));
}

/// Captures everything logged at any level while a whole login, refresh and API session runs,
/// then checks that none of the secrets that went over the wire shows up.
#[tokio::test]
async fn no_secrets_in_logs() {
    #[derive(Clone, Default)]
    struct Buf(Arc<Mutex<Vec<u8>>>);
    impl Write for Buf {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let buf = Buf::default();
    let writer = buf.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::TRACE)
        .with_writer(move || writer.clone())
        .with_ansi(false)
        .finish();
    let _guard = tracing::subscriber::set_default(subscriber);

    let emu = DriveEmulator::start(EmulatorConfig {
        access_token_lifetime: Duration::from_secs(1),
        rotate_refresh_tokens: true,
        ..Default::default()
    })
    .await;
    let tokens = drive_harness::browser_login(&emu).await;
    tracing::debug!(?tokens, "login result");
    let dir = tempfile::tempdir().unwrap();
    let vault = Arc::new(TokenVault::open(dir.path()).unwrap());
    let account = cloudmount::accounts::AccountId::new("gdrive", "logs").unwrap();
    vault.save(&account, &tokens).unwrap();
    let oauth = drive_harness::oauth_config(&emu);
    tracing::debug!(?oauth, "oauth config");
    let ts = Arc::new(
        TokenSource::new(vault.clone(), account.clone(), &oauth)
            .unwrap()
            .with_refresh_margin(Duration::ZERO),
    );
    let provider = GdriveProvider::new(
        GdriveConfig {
            small_upload_limit: 1000,
            resumable_chunk_size: 256 * 1024,
            ..drive_harness::gdrive_config(&emu)
        },
        ts.clone(),
    )
    .unwrap();
    let src = dir.path().join("src");
    std::fs::write(&src, pattern(600_000, 2)).unwrap();
    emu.inject(Fault::DropUploadAfter(100_000), 1);
    provider
        .upload("/f", &src, &UploadOptions::default())
        .await
        .unwrap();
    emu.inject(Fault::UserRateLimit403, 1);
    tokio::time::sleep(Duration::from_millis(1100)).await;
    list(&provider, "/").await;
    emu.expire_all_access_tokens();
    read_all(&provider, "/f").await;
    emu.revoke_all_refresh_tokens();
    let _ = provider.stat("/f").await;
    cloudmount::accounts::logout(&vault, &account, &oauth)
        .await
        .ok();

    let logs = String::from_utf8(buf.0.lock().unwrap().clone()).unwrap();
    assert!(
        logs.contains("access token refreshed"),
        "capture works:\n{logs}"
    );
    let secrets = emu.secrets();
    assert!(secrets.len() >= 5);
    for s in secrets {
        assert!(
            !logs.contains(&s),
            "secret {s:.12}... leaked into logs:\n{logs}"
        );
    }
}

/// Shared drives show up under `/Shared drives/<name>`; their content is listed, read,
/// written, renamed and deleted like My Drive's, while the drive folders and `Shared drives`
/// itself stay put.
#[tokio::test]
async fn shared_drives_are_mounted_under_shared_drives() {
    let h = harness(EmulatorConfig::default(), |_| {}).await;
    h.emu.set_max_page_size(1); // drives.list and files.list both page
    let root = h.emu.root_id();
    h.emu.add_file(&root, "mine.txt", b"m");
    // A My Drive folder with the reserved name gets a number, like any duplicate.
    h.emu.add_folder(&root, "Shared drives");
    let team = h.emu.add_shared_drive("Team");
    let other = h.emu.add_shared_drive("Team");
    let sub = h.emu.add_folder(&team, "docs");
    let a = h.emu.add_file(&team, "a.txt", b"alpha");
    h.emu.add_file(&sub, "deep.txt", b"deep");
    h.emu.add_file(&other, "b.txt", b"beta");

    assert_eq!(
        names(&list(&h.provider, "/").await),
        vec!["Shared drives", "Shared drives (2)", "mine.txt"]
    );
    let drives = list(&h.provider, "/Shared drives").await;
    assert_eq!(names(&drives), vec!["Team", "Team (2)"]);
    assert!(drives.iter().all(|e| e.kind == EntryKind::Dir));
    // Ordered by drive id, like duplicates of files.
    let first = if team < other { &team } else { &other };
    assert_eq!(drives[0].id, *first);
    let (t, o) = if team < other {
        ("/Shared drives/Team", "/Shared drives/Team (2)")
    } else {
        ("/Shared drives/Team (2)", "/Shared drives/Team")
    };
    assert_eq!(names(&list(&h.provider, t).await), vec!["a.txt", "docs"]);
    assert_eq!(names(&list(&h.provider, o).await), vec!["b.txt"]);
    assert_eq!(
        read_all(&h.provider, &format!("{t}/docs/deep.txt")).await,
        b"deep"
    );
    assert_eq!(read_all(&h.provider, &format!("{t}/a.txt")).await, b"alpha");
    let st = h.provider.stat(t).await.unwrap();
    assert_eq!(st.kind, EntryKind::Dir);
    assert_eq!(
        h.provider.stat("/Shared drives").await.unwrap().kind,
        EntryKind::Dir
    );

    // Write: a new file and an update keeping the id.
    let src = temp_file(&h, "new", b"new content");
    let e = h
        .provider
        .upload(&format!("{t}/new.txt"), &src, &UploadOptions::default())
        .await
        .unwrap();
    let rec = h.emu.file(&e.id).unwrap();
    assert_eq!(rec.parents, vec![team.clone()]);
    assert_eq!(rec.drive_id.as_deref(), Some(team.as_str()));
    let src2 = temp_file(&h, "upd", b"updated alpha");
    let e2 = h
        .provider
        .upload(&format!("{t}/a.txt"), &src2, &UploadOptions::default())
        .await
        .unwrap();
    assert_eq!(e2.id, a);
    assert_eq!(h.emu.file(&a).unwrap().content, b"updated alpha");
    h.provider.mkdir(&format!("{t}/made")).await.unwrap();

    // Rename and move within the drive.
    h.provider
        .rename(&format!("{t}/a.txt"), &format!("{t}/docs/z.txt"), false)
        .await
        .unwrap();
    assert_eq!(h.emu.file(&a).unwrap().name, "z.txt");
    assert_eq!(h.emu.file(&a).unwrap().parents, vec![sub.clone()]);
    assert_eq!(
        read_all(&h.provider, &format!("{t}/docs/z.txt")).await,
        b"updated alpha"
    );

    // Delete inside the drive.
    h.provider.delete(&format!("{t}/docs/z.txt")).await.unwrap();
    assert!(h.emu.file(&a).unwrap().trashed);
    assert_eq!(
        names(&list(&h.provider, &format!("{t}/docs")).await),
        vec!["deep.txt"]
    );

    // The fixed folders.
    for p in ["/Shared drives", t] {
        assert!(
            matches!(
                h.provider.delete(p).await,
                Err(ProviderError::PermissionDenied(_))
            ),
            "delete {p}"
        );
        assert!(
            matches!(
                h.provider.rename(p, "/elsewhere", false).await,
                Err(ProviderError::PermissionDenied(_))
            ),
            "rename {p}"
        );
    }
    assert!(matches!(
        h.provider
            .rename(&format!("{t}/new.txt"), "/Shared drives/new.txt", false)
            .await,
        Err(ProviderError::PermissionDenied(_))
    ));
    assert!(matches!(
        h.provider
            .upload("/Shared drives/x.txt", &src, &UploadOptions::default())
            .await,
        Err(ProviderError::PermissionDenied(_))
    ));
    assert!(matches!(
        h.provider.mkdir("/Shared drives/New drive").await,
        Err(ProviderError::PermissionDenied(_))
    ));
    assert!(h.emu.file(&team).is_some_and(|f| !f.trashed));
    assert_eq!(
        names(&list(&h.provider, "/Shared drives").await),
        vec!["Team", "Team (2)"]
    );
}

#[tokio::test]
async fn shared_drive_changes_show_in_the_feed() {
    let h = harness(EmulatorConfig::default(), |_| {}).await;
    let team = h.emu.add_shared_drive("Team");
    let f = h.emu.add_file(&team, "f.txt", b"1");
    let gone = h.emu.add_file(&team, "gone.txt", b"2");
    list(&h.provider, "/").await;
    list(&h.provider, "/Shared drives/Team").await;
    let cursor = h.provider.changes_cursor().await.unwrap();
    h.emu.set_content(&f, b"edited");
    h.emu.trash(&gone);
    h.emu.add_file(&team, "fresh.txt", b"3");
    let batch = h.provider.changes_since(&cursor).await.unwrap();
    let mut upserts = BTreeSet::new();
    let mut removed = BTreeSet::new();
    for c in &batch.changes {
        match c {
            Change::Upserted { path, entry } => {
                if path == "/Shared drives/Team/f.txt" {
                    assert_eq!(entry.size, 6);
                }
                upserts.insert(path.clone());
            }
            Change::Removed { path } => {
                removed.insert(path.clone());
            }
        }
    }
    let set = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<BTreeSet<_>>();
    assert_eq!(
        upserts,
        set(&["/Shared drives/Team/f.txt", "/Shared drives/Team/fresh.txt"])
    );
    assert_eq!(removed, set(&["/Shared drives/Team/gone.txt"]));
}

#[tokio::test]
async fn no_shared_drives_folder_without_shared_drives_or_when_disabled() {
    let h = harness(EmulatorConfig::default(), |c| c.shared_drives = false).await;
    h.emu.add_shared_drive("Team");
    h.emu.add_file(&h.emu.root_id(), "a.txt", b"a");
    assert_eq!(names(&list(&h.provider, "/").await), vec!["a.txt"]);
    let h = harness(EmulatorConfig::default(), |_| {}).await;
    h.emu.add_file(&h.emu.root_id(), "a.txt", b"a");
    assert_eq!(names(&list(&h.provider, "/").await), vec!["a.txt"]);
}

/// Shared-drive items are invisible without `supportsAllDrives=true` (404 like Drive), and
/// not listed without `includeItemsFromAllDrives=true`.
#[tokio::test]
async fn strict_emulator_shared_drive_parameters() {
    let h = harness(EmulatorConfig::default(), |_| {}).await;
    let team = h.emu.add_shared_drive("Team");
    let f = h.emu.add_file(&team, "a.txt", b"a");
    let token = h.tokens.access_token().await.unwrap();
    let c = reqwest::Client::new();
    let api = h.emu.api_base();
    let get = |url: String| c.get(url).bearer_auth(token.expose()).send();
    let q = format!("'{team}' in parents and trashed = false");
    let list_url = |extra: &str| {
        let mut u = reqwest::Url::parse(&format!("{api}/files")).unwrap();
        u.query_pairs_mut()
            .append_pair("q", &q)
            .append_pair("fields", "files(id)");
        format!("{u}{extra}")
    };
    let r = get(list_url("")).await.unwrap();
    assert_eq!(r.status(), 404);
    let body = r.text().await.unwrap();
    assert!(body.contains("notFound") && body.contains("File not found"));
    let r = get(list_url("&supportsAllDrives=true")).await.unwrap();
    assert_eq!(r.status(), 200);
    assert!(!r.text().await.unwrap().contains(&f));
    let r = get(list_url(&format!(
        "&supportsAllDrives=true&includeItemsFromAllDrives=true&corpora=drive&driveId={team}"
    )))
    .await
    .unwrap();
    assert_eq!(r.status(), 200);
    assert!(r.text().await.unwrap().contains(&f));
    let r = get(list_url(
        "&supportsAllDrives=true&includeItemsFromAllDrives=true&corpora=drive",
    ))
    .await
    .unwrap();
    assert_eq!(r.status(), 400);
    assert_eq!(
        get(format!("{api}/files/{f}?fields=id"))
            .await
            .unwrap()
            .status(),
        404
    );
    assert_eq!(
        get(format!("{api}/files/{f}?fields=id&supportsAllDrives=true"))
            .await
            .unwrap()
            .status(),
        200
    );
    let r = get(format!("{api}/drives?pageSize=101")).await.unwrap();
    assert_eq!(r.status(), 400);
    let r = get(format!("{api}/drives?fields=drives(id,name)"))
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let v: serde_json::Value = r.json().await.unwrap();
    assert_eq!(v["drives"][0]["id"], serde_json::json!(team));
    assert_eq!(v["drives"][0]["name"], serde_json::json!("Team"));
}
