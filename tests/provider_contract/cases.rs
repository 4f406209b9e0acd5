//! The contract cases. Each starts from an empty backend, sets up what it needs through
//! the `Provider` trait only, and asserts exact contents and exact error kinds. Where a
//! backend legitimately behaves differently, the case asks `Expect` (filled in per backend
//! in `provider_contract.rs`) instead of accepting several outcomes.

use std::collections::BTreeSet;

use cloudmount::provider::{Change, EntryKind, ProviderError, Quota, RemoteEntry};

use crate::fixtures::Fixture;
use crate::{CopyDirectory, CopyOntoFile, Expect, Feed, Paging, QuotaReport, ReplacedRevisionRead};

/// Deterministic, non-repeating-looking bytes, so that a read from the wrong offset fails.
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

/// The error of a call that must fail; the success value is shown when it did not.
fn err<T: std::fmt::Debug>(fx: &Fixture, what: &str, r: Result<T, ProviderError>) -> ProviderError {
    match r {
        Err(e) => e,
        Ok(v) => panic!("{}: {what} succeeded: {v:?}", fx.p.kind()),
    }
}

macro_rules! assert_kind {
    ($fx:expr, $what:expr, $result:expr, $pat:pat) => {{
        let e = err($fx, $what, $result);
        assert!(
            matches!(e, $pat),
            "{}: {}: expected {}, got {e:?}",
            $fx.p.kind(),
            $what,
            stringify!($pat)
        );
    }};
}

fn summary(entries: &[RemoteEntry]) -> Vec<(String, EntryKind, Option<u64>)> {
    entries
        .iter()
        .map(|e| {
            // A folder's size is not part of the contract (Nextcloud reports its contents).
            let size = (e.kind == EntryKind::File).then_some(e.size);
            (e.name.clone(), e.kind, size)
        })
        .collect()
}

fn file(name: &str, size: u64) -> (String, EntryKind, Option<u64>) {
    (name.to_owned(), EntryKind::File, Some(size))
}

fn dir(name: &str) -> (String, EntryKind, Option<u64>) {
    (name.to_owned(), EntryKind::Dir, None)
}

// ---------------------------------------------------------------------------------------
// list

pub async fn list_empty_root(fx: &Fixture, _: &Expect) {
    assert_eq!(fx.list("/").await, vec![]);
}

pub async fn list_files_and_dirs(fx: &Fixture, _: &Expect) {
    fx.put("/b.txt", b"bee").await;
    fx.put("/a.bin", &pattern(1000, 1)).await;
    fx.mkdir("/sub").await;
    fx.put("/sub/inner.txt", b"inner").await;
    assert_eq!(
        summary(&fx.list("/").await),
        vec![file("a.bin", 1000), file("b.txt", 3), dir("sub")]
    );
    assert_eq!(summary(&fx.list("/sub").await), vec![file("inner.txt", 5)]);
}

pub async fn list_empty_dir(fx: &Fixture, _: &Expect) {
    fx.mkdir("/empty").await;
    fx.put("/empty-sibling.txt", b"x").await;
    let pages = fx.pages("/empty").await.expect("list /empty");
    assert!(
        pages.iter().all(Vec::is_empty),
        "{}: {pages:?}",
        fx.p.kind()
    );
}

pub async fn list_pages(fx: &Fixture, expect: &Expect) {
    const N: usize = 7;
    fx.mkdir("/many").await;
    for i in 0..N {
        fx.put(&format!("/many/f{i}"), format!("file {i}").as_bytes())
            .await;
    }
    let before = fx.list_requests();
    let pages = fx.pages("/many").await.expect("list /many");
    let sizes: Vec<usize> = pages.iter().map(Vec::len).collect();
    let mut names: Vec<String> = pages.into_iter().flatten().map(|e| e.name).collect();
    names.sort();
    let want: Vec<String> = (0..N).map(|i| format!("f{i}")).collect();
    assert_eq!(names, want, "{}: every entry exactly once", fx.p.kind());
    match expect.paging {
        Paging::Stream { page } => {
            let mut want_sizes = vec![page; N / page];
            if N % page != 0 {
                want_sizes.push(N % page);
            }
            assert_eq!(sizes, want_sizes, "{}: page sizes", fx.p.kind());
        }
        Paging::Server { page } => {
            assert_eq!(sizes, [N], "{}: handed over as one listing", fx.p.kind());
            let requests = fx.list_requests().unwrap() - before.unwrap();
            assert!(
                requests >= N.div_ceil(page) as u64,
                "{}: {N} entries at {page} a page came in {requests} requests",
                fx.p.kind()
            );
        }
        Paging::Single => assert_eq!(sizes, [N], "{}: one page", fx.p.kind()),
    }
}

pub async fn list_missing_is_not_found(fx: &Fixture, _: &Expect) {
    assert_kind!(
        fx,
        "list /missing",
        fx.pages("/missing").await,
        ProviderError::NotFound(_)
    );
}

pub async fn list_file_is_not_a_directory(fx: &Fixture, _: &Expect) {
    fx.put("/f.txt", b"x").await;
    assert_kind!(
        fx,
        "list /f.txt",
        fx.pages("/f.txt").await,
        ProviderError::NotADirectory(_)
    );
}

// ---------------------------------------------------------------------------------------
// stat

pub async fn stat_file(fx: &Fixture, _: &Expect) {
    let up = fx.put("/hello.txt", b"hello world\n").await;
    let e = fx.p.stat("/hello.txt").await.expect("stat");
    assert_eq!(
        (e.name.as_str(), e.kind, e.size),
        ("hello.txt", EntryKind::File, 12)
    );
    assert!(!e.revision.is_empty(), "{}: a revision", fx.p.kind());
    assert_eq!(
        e.revision,
        up.revision,
        "{}: upload and stat agree",
        fx.p.kind()
    );
    let listed = fx.list("/").await;
    assert_eq!(
        listed[0].revision,
        e.revision,
        "{}: list and stat agree",
        fx.p.kind()
    );
    assert_eq!(
        fx.p.stat("/hello.txt").await.unwrap().revision,
        e.revision,
        "{}: revision is stable while nothing changes",
        fx.p.kind()
    );
}

pub async fn stat_dir(fx: &Fixture, _: &Expect) {
    fx.mkdir("/d").await;
    fx.put("/d/x", b"x").await;
    let e = fx.p.stat("/d").await.expect("stat /d");
    assert_eq!((e.name.as_str(), e.kind), ("d", EntryKind::Dir));
    assert_eq!(fx.p.stat("/").await.expect("stat /").kind, EntryKind::Dir);
}

pub async fn stat_missing_is_not_found(fx: &Fixture, _: &Expect) {
    fx.mkdir("/d").await;
    assert_kind!(
        fx,
        "stat /missing",
        fx.p.stat("/missing").await,
        ProviderError::NotFound(_)
    );
    assert_kind!(
        fx,
        "stat /d/missing",
        fx.p.stat("/d/missing").await,
        ProviderError::NotFound(_)
    );
    assert_kind!(
        fx,
        "stat /nodir/missing",
        fx.p.stat("/nodir/missing").await,
        ProviderError::NotFound(_)
    );
}

// ---------------------------------------------------------------------------------------
// read_range

const READ_LEN: usize = 100_000;

async fn read_fixture(fx: &Fixture) -> Vec<u8> {
    let data = pattern(READ_LEN, 7);
    fx.put("/data.bin", &data).await;
    data
}

async fn read_ok(fx: &Fixture, offset: u64, len: u64) -> Vec<u8> {
    fx.read("/data.bin", None, offset, len)
        .await
        .unwrap_or_else(|e| panic!("{}: read {offset}+{len}: {e:?}", fx.p.kind()))
}

pub async fn read_start(fx: &Fixture, _: &Expect) {
    let data = read_fixture(fx).await;
    assert_eq!(read_ok(fx, 0, 1000).await, &data[..1000]);
}

pub async fn read_middle(fx: &Fixture, _: &Expect) {
    let data = read_fixture(fx).await;
    assert_eq!(read_ok(fx, 40_001, 12_345).await, &data[40_001..52_346]);
}

pub async fn read_end(fx: &Fixture, _: &Expect) {
    let data = read_fixture(fx).await;
    let n = READ_LEN as u64;
    // Exactly the last bytes, and a request running past the end gives what there is.
    assert_eq!(read_ok(fx, n - 100, 100).await, &data[READ_LEN - 100..]);
    assert_eq!(read_ok(fx, n - 10, 1000).await, &data[READ_LEN - 10..]);
    assert_eq!(read_ok(fx, 0, n).await, data);
}

pub async fn read_past_eof(fx: &Fixture, _: &Expect) {
    read_fixture(fx).await;
    let n = READ_LEN as u64;
    assert_eq!(read_ok(fx, n, 10).await, b"");
    assert_eq!(read_ok(fx, n + 1000, 10).await, b"");
}

/// "The rest of the file", as the version store and whole-file readers ask for it: a
/// length of `u64::MAX` from any offset.
pub async fn read_rest_unbounded(fx: &Fixture, _: &Expect) {
    let data = read_fixture(fx).await;
    assert_eq!(read_ok(fx, 0, u64::MAX).await, data);
    assert_eq!(read_ok(fx, 123, u64::MAX).await, &data[123..]);
    assert_eq!(
        read_ok(fx, READ_LEN as u64 - 1, u64::MAX).await,
        &data[READ_LEN - 1..]
    );
}

pub async fn read_zero_len(fx: &Fixture, _: &Expect) {
    read_fixture(fx).await;
    assert_eq!(read_ok(fx, 0, 0).await, b"");
    assert_eq!(read_ok(fx, 500, 0).await, b"");
}

pub async fn read_at_revision(fx: &Fixture, expect: &Expect) {
    let data = read_fixture(fx).await;
    let rev = fx.p.stat("/data.bin").await.unwrap().revision;
    assert_eq!(
        fx.read("/data.bin", Some(&rev), 123, 456).await.unwrap(),
        &data[123..579]
    );
    fx.put("/data.bin", b"replaced").await;
    let r = fx.read("/data.bin", Some(&rev), 0, 10).await;
    match expect.replaced_revision_read {
        ReplacedRevisionRead::PreconditionFailed => assert_kind!(
            fx,
            "read at a replaced revision",
            r,
            ProviderError::PreconditionFailed(_)
        ),
        ReplacedRevisionRead::OldContent => assert_eq!(
            r.unwrap_or_else(|e| panic!("{}: read old revision: {e:?}", fx.p.kind())),
            &data[..10]
        ),
    }
    assert_eq!(fx.read_all("/data.bin").await, b"replaced");
}

pub async fn read_missing_or_dir(fx: &Fixture, _: &Expect) {
    fx.mkdir("/d").await;
    assert_kind!(
        fx,
        "read /missing",
        fx.read("/missing", None, 0, 10).await,
        ProviderError::NotFound(_)
    );
    assert_kind!(
        fx,
        "read /d",
        fx.read("/d", None, 0, 10).await,
        ProviderError::IsADirectory(_)
    );
}

// ---------------------------------------------------------------------------------------
// upload

pub async fn upload_new_must_not_exist(fx: &Fixture, _: &Expect) {
    let data = pattern(70_001, 3);
    let e = fx
        .upload_if("/new.bin", &data, Some(None))
        .await
        .expect("upload a new file");
    assert_eq!(
        (e.name.as_str(), e.kind, e.size),
        ("new.bin", EntryKind::File, 70_001)
    );
    assert_eq!(fx.read_all("/new.bin").await, data);
    assert_eq!(fx.p.stat("/new.bin").await.unwrap().revision, e.revision);
}

pub async fn upload_replace_expected_revision(fx: &Fixture, _: &Expect) {
    let first = fx.put("/f.txt", b"first version").await;
    let e = fx
        .upload_if(
            "/f.txt",
            b"second, longer version",
            Some(Some(first.revision.clone())),
        )
        .await
        .expect("replace at the revision we know");
    assert_eq!(e.size, 22);
    assert_ne!(e.revision, first.revision);
    assert_eq!(fx.read_all("/f.txt").await, b"second, longer version");
    assert_eq!(
        fx.names("/").await,
        ["f.txt"],
        "{}: replaced in place",
        fx.p.kind()
    );
}

pub async fn upload_wrong_revision_conflicts(fx: &Fixture, _: &Expect) {
    let first = fx.put("/f.txt", b"first").await;
    let second = fx.put("/f.txt", b"second by someone else").await;
    assert_kind!(
        fx,
        "upload at a stale revision",
        fx.upload_if("/f.txt", b"mine", Some(Some(first.revision.clone())))
            .await,
        ProviderError::PreconditionFailed(_)
    );
    assert_kind!(
        fx,
        "upload at a made-up revision",
        fx.upload_if("/f.txt", b"mine", Some(Some("no-such-revision".into())))
            .await,
        ProviderError::PreconditionFailed(_)
    );
    assert_eq!(fx.read_all("/f.txt").await, b"second by someone else");
    assert_eq!(fx.p.stat("/f.txt").await.unwrap().revision, second.revision);
    // Expecting a revision of a file that is not there is a conflict too, and creates nothing.
    assert_kind!(
        fx,
        "upload at a revision of a missing file",
        fx.upload_if("/gone.txt", b"mine", Some(Some(first.revision.clone())))
            .await,
        ProviderError::PreconditionFailed(_)
    );
    assert!(!fx.exists("/gone.txt").await);
}

pub async fn upload_must_not_exist_over_existing(fx: &Fixture, _: &Expect) {
    let e = fx.put("/f.txt", b"already here").await;
    assert_kind!(
        fx,
        "create over an existing file",
        fx.upload_if("/f.txt", b"newcomer", Some(None)).await,
        ProviderError::PreconditionFailed(_)
    );
    assert_eq!(fx.read_all("/f.txt").await, b"already here");
    assert_eq!(fx.p.stat("/f.txt").await.unwrap().revision, e.revision);
}

pub async fn upload_unconditional_replace(fx: &Fixture, _: &Expect) {
    fx.put("/f.txt", b"one").await;
    let e = fx.put("/f.txt", b"two!").await;
    assert_eq!(e.size, 4);
    assert_eq!(fx.read_all("/f.txt").await, b"two!");
    assert_eq!(fx.names("/").await, ["f.txt"]);
}

pub async fn upload_empty_file(fx: &Fixture, _: &Expect) {
    let e = fx.put("/empty", b"").await;
    assert_eq!((e.kind, e.size), (EntryKind::File, 0));
    assert_eq!(fx.read_all("/empty").await, b"");
    assert_eq!(fx.p.stat("/empty").await.unwrap().size, 0);
}

pub async fn upload_into_missing_dir(fx: &Fixture, _: &Expect) {
    assert_kind!(
        fx,
        "upload /nodir/x",
        fx.upload_if("/nodir/x", b"x", None).await,
        ProviderError::NotFound(_)
    );
    assert_eq!(fx.list("/").await, vec![]);
}

pub async fn upload_over_dir_is_a_directory(fx: &Fixture, _: &Expect) {
    fx.mkdir("/d").await;
    assert_kind!(
        fx,
        "upload over /d",
        fx.upload_if("/d", b"x", None).await,
        ProviderError::IsADirectory(_)
    );
    assert_eq!(fx.p.stat("/d").await.unwrap().kind, EntryKind::Dir);
}

// ---------------------------------------------------------------------------------------
// mkdir

pub async fn mkdir_new(fx: &Fixture, _: &Expect) {
    let e = fx.mkdir("/newdir").await;
    assert_eq!((e.name.as_str(), e.kind), ("newdir", EntryKind::Dir));
    let inner = fx.mkdir("/newdir/inner").await;
    assert_eq!((inner.name.as_str(), inner.kind), ("inner", EntryKind::Dir));
    assert_eq!(summary(&fx.list("/").await), vec![dir("newdir")]);
    assert_eq!(summary(&fx.list("/newdir").await), vec![dir("inner")]);
}

pub async fn mkdir_existing_already_exists(fx: &Fixture, _: &Expect) {
    fx.mkdir("/d").await;
    fx.put("/d/keep", b"keep").await;
    fx.put("/f", b"file").await;
    assert_kind!(
        fx,
        "mkdir /d again",
        fx.p.mkdir("/d").await,
        ProviderError::AlreadyExists(_)
    );
    assert_kind!(
        fx,
        "mkdir over /f",
        fx.p.mkdir("/f").await,
        ProviderError::AlreadyExists(_)
    );
    assert_eq!(fx.read_all("/d/keep").await, b"keep");
    assert_eq!(fx.read_all("/f").await, b"file");
    assert_eq!(summary(&fx.list("/").await), vec![dir("d"), file("f", 4)]);
}

pub async fn mkdir_missing_parent(fx: &Fixture, _: &Expect) {
    assert_kind!(
        fx,
        "mkdir /a/b",
        fx.p.mkdir("/a/b").await,
        ProviderError::NotFound(_)
    );
    assert_eq!(fx.list("/").await, vec![]);
}

// ---------------------------------------------------------------------------------------
// rename

pub async fn rename_file(fx: &Fixture, _: &Expect) {
    fx.mkdir("/d").await;
    fx.put("/a.txt", b"AAA").await;
    let e =
        fx.p.rename("/a.txt", "/b.txt", false)
            .await
            .expect("rename");
    assert_eq!(
        (e.name.as_str(), e.kind, e.size),
        ("b.txt", EntryKind::File, 3)
    );
    assert_eq!(fx.read_all("/b.txt").await, b"AAA");
    assert!(!fx.exists("/a.txt").await);
    // Into another folder.
    let e =
        fx.p.rename("/b.txt", "/d/c.txt", false)
            .await
            .expect("move");
    assert_eq!(e.name, "c.txt");
    assert_eq!(fx.read_all("/d/c.txt").await, b"AAA");
    assert_eq!(summary(&fx.list("/").await), vec![dir("d")]);
}

pub async fn rename_dir_with_contents(fx: &Fixture, _: &Expect) {
    fx.mkdir("/d1").await;
    fx.mkdir("/d1/sub").await;
    fx.put("/d1/a.txt", b"top").await;
    fx.put("/d1/sub/b.txt", b"deep").await;
    let e = fx.p.rename("/d1", "/d2", false).await.expect("rename dir");
    assert_eq!((e.name.as_str(), e.kind), ("d2", EntryKind::Dir));
    assert_eq!(summary(&fx.list("/").await), vec![dir("d2")]);
    assert_eq!(
        summary(&fx.list("/d2").await),
        vec![file("a.txt", 3), dir("sub")]
    );
    assert_eq!(fx.read_all("/d2/a.txt").await, b"top");
    assert_eq!(fx.read_all("/d2/sub/b.txt").await, b"deep");
    assert!(!fx.exists("/d1").await);
    assert_kind!(
        fx,
        "stat old child",
        fx.p.stat("/d1/sub/b.txt").await,
        ProviderError::NotFound(_)
    );
}

pub async fn rename_over_file_with_overwrite(fx: &Fixture, _: &Expect) {
    fx.put("/src.txt", b"source").await;
    fx.put("/dst.txt", b"old destination").await;
    let e =
        fx.p.rename("/src.txt", "/dst.txt", true)
            .await
            .expect("rename over");
    assert_eq!((e.name.as_str(), e.size), ("dst.txt", 6));
    assert_eq!(fx.read_all("/dst.txt").await, b"source");
    assert_eq!(summary(&fx.list("/").await), vec![file("dst.txt", 6)]);
}

pub async fn rename_refuses_without_overwrite(fx: &Fixture, _: &Expect) {
    fx.put("/src.txt", b"source").await;
    fx.put("/dst.txt", b"destination").await;
    assert_kind!(
        fx,
        "rename over without overwrite",
        fx.p.rename("/src.txt", "/dst.txt", false).await,
        ProviderError::AlreadyExists(_)
    );
    assert_eq!(fx.read_all("/src.txt").await, b"source");
    assert_eq!(fx.read_all("/dst.txt").await, b"destination");
}

pub async fn rename_missing_is_not_found(fx: &Fixture, _: &Expect) {
    assert_kind!(
        fx,
        "rename /missing",
        fx.p.rename("/missing", "/x", false).await,
        ProviderError::NotFound(_)
    );
    assert_eq!(fx.list("/").await, vec![]);
}

// ---------------------------------------------------------------------------------------
// delete

pub async fn delete_file(fx: &Fixture, _: &Expect) {
    fx.put("/f.txt", b"x").await;
    fx.put("/keep.txt", b"y").await;
    fx.p.delete("/f.txt").await.expect("delete");
    assert!(!fx.exists("/f.txt").await);
    assert_eq!(fx.names("/").await, ["keep.txt"]);
}

pub async fn delete_empty_dir(fx: &Fixture, _: &Expect) {
    fx.mkdir("/d").await;
    fx.p.delete("/d").await.expect("delete empty dir");
    assert!(!fx.exists("/d").await);
    assert_eq!(fx.list("/").await, vec![]);
}

pub async fn delete_non_empty_dir(fx: &Fixture, _: &Expect) {
    fx.mkdir("/d").await;
    fx.put("/d/child.txt", b"child").await;
    assert_kind!(
        fx,
        "delete /d",
        fx.p.delete("/d").await,
        ProviderError::DirectoryNotEmpty(_)
    );
    assert_eq!(fx.read_all("/d/child.txt").await, b"child");
}

pub async fn delete_missing_is_not_found(fx: &Fixture, _: &Expect) {
    fx.put("/f.txt", b"x").await;
    fx.p.delete("/f.txt").await.expect("delete");
    assert_kind!(
        fx,
        "delete again",
        fx.p.delete("/f.txt").await,
        ProviderError::NotFound(_)
    );
    assert_kind!(
        fx,
        "delete /never",
        fx.p.delete("/never").await,
        ProviderError::NotFound(_)
    );
}

// ---------------------------------------------------------------------------------------
// copy

pub async fn copy_file(fx: &Fixture, _: &Expect) {
    let data = pattern(30_000, 9);
    fx.mkdir("/d").await;
    let src = fx.put("/src.bin", &data).await;
    let e = fx.p.copy("/src.bin", "/d/dst.bin").await.expect("copy");
    assert_eq!(
        (e.name.as_str(), e.kind, e.size),
        ("dst.bin", EntryKind::File, 30_000)
    );
    assert_eq!(fx.read_all("/d/dst.bin").await, data);
    assert_eq!(fx.read_all("/src.bin").await, data);
    assert_eq!(fx.p.stat("/src.bin").await.unwrap().revision, src.revision);
    assert_eq!(
        summary(&fx.list("/").await),
        vec![dir("d"), file("src.bin", 30_000)]
    );
}

pub async fn copy_missing_is_not_found(fx: &Fixture, _: &Expect) {
    assert_kind!(
        fx,
        "copy /missing",
        fx.p.copy("/missing", "/x").await,
        ProviderError::NotFound(_)
    );
    assert_eq!(fx.list("/").await, vec![]);
}

pub async fn copy_onto_existing_file(fx: &Fixture, expect: &Expect) {
    fx.put("/src.txt", b"source").await;
    fx.put("/dst.txt", b"destination").await;
    let r = fx.p.copy("/src.txt", "/dst.txt").await;
    match expect.copy_onto_file {
        CopyOntoFile::Replaces => {
            r.unwrap_or_else(|e| panic!("{}: copy over a file: {e:?}", fx.p.kind()));
            assert_eq!(fx.read_all("/dst.txt").await, b"source");
        }
        CopyOntoFile::AlreadyExists => {
            assert_kind!(fx, "copy over a file", r, ProviderError::AlreadyExists(_));
            assert_eq!(fx.read_all("/dst.txt").await, b"destination");
        }
    }
    assert_eq!(fx.read_all("/src.txt").await, b"source");
    assert_eq!(fx.names("/").await, ["dst.txt", "src.txt"]);
}

pub async fn copy_directory_is_refused(fx: &Fixture, expect: &Expect) {
    fx.mkdir("/d").await;
    fx.put("/d/child", b"child").await;
    let r = fx.p.copy("/d", "/d2").await;
    match expect.copy_directory {
        CopyDirectory::IsADirectory => {
            assert_kind!(fx, "copy a directory", r, ProviderError::IsADirectory(_))
        }
        CopyDirectory::Unsupported => {
            assert_kind!(fx, "copy a directory", r, ProviderError::Unsupported(_))
        }
    }
    assert!(!fx.exists("/d2").await, "{}: nothing created", fx.p.kind());
}

// ---------------------------------------------------------------------------------------
// quota

pub async fn quota(fx: &Fixture, expect: &Expect) {
    fx.put("/a.bin", &pattern(1234, 1)).await;
    fx.mkdir("/d").await;
    fx.put("/d/b.bin", &pattern(766, 2)).await;
    let q = fx.p.quota().await.expect("quota");
    match expect.quota {
        QuotaReport::Account { total } => assert_eq!(
            q,
            Quota {
                total: Some(total),
                used: Some(2000),
                available: Some(total - 2000),
            },
            "{}",
            fx.p.kind()
        ),
        QuotaReport::Filesystem => {
            let root = fx.local_root.as_ref().expect("local folder");
            let st = nix::sys::statvfs::statvfs(root).expect("statvfs");
            let frag = st.fragment_size() as u64;
            let (Some(total), Some(used), Some(available)) = (q.total, q.used, q.available) else {
                panic!("{}: all three known: {q:?}", fx.p.kind());
            };
            assert_eq!(
                total,
                st.blocks() as u64 * frag,
                "total is the filesystem's size"
            );
            assert!(used + available <= total, "{q:?}");
            assert!(used >= 2000, "{q:?}");
        }
        QuotaReport::Unknown => assert_eq!(q, Quota::default(), "{}", fx.p.kind()),
    }
}

// ---------------------------------------------------------------------------------------
// change feed

/// The cursor, or `None` after checking that a backend without a feed says so.
async fn cursor(fx: &Fixture, expect: &Expect) -> Option<String> {
    match expect.feed {
        Feed::Delta => {
            assert!(fx.p.capabilities().delta, "{}: offers a feed", fx.p.kind());
            Some(fx.p.changes_cursor().await.expect("changes_cursor"))
        }
        Feed::None => {
            assert!(
                !fx.p.capabilities().delta,
                "{}: offers no feed",
                fx.p.kind()
            );
            assert_kind!(
                fx,
                "changes_cursor",
                fx.p.changes_cursor().await,
                ProviderError::Unsupported(_)
            );
            None
        }
        Feed::RefusedOnFirstUse => {
            // Offered until the server shows it has no feed, then withdrawn for good.
            assert!(
                fx.p.capabilities().delta,
                "{}: offered before asking",
                fx.p.kind()
            );
            assert_kind!(
                fx,
                "changes_cursor",
                fx.p.changes_cursor().await,
                ProviderError::Unsupported(_)
            );
            assert!(!fx.p.capabilities().delta, "{}: withdrawn", fx.p.kind());
            assert_kind!(
                fx,
                "changes_since",
                fx.p.changes_since("x").await,
                ProviderError::Unsupported(_)
            );
            None
        }
    }
}

fn paths(changes: &[Change]) -> (BTreeSet<String>, BTreeSet<String>) {
    let mut upserted = BTreeSet::new();
    let mut removed = BTreeSet::new();
    for c in changes {
        match c {
            Change::Upserted { path, .. } => upserted.insert(path.clone()),
            Change::Removed { path } => removed.insert(path.clone()),
        };
    }
    (upserted, removed)
}

fn set(items: &[&str]) -> BTreeSet<String> {
    items.iter().map(|s| s.to_string()).collect()
}

pub async fn changes_quiet(fx: &Fixture, expect: &Expect) {
    fx.put("/before.txt", b"before").await;
    let Some(cursor) = cursor(fx, expect).await else {
        return;
    };
    let batch = fx.p.changes_since(&cursor).await.expect("changes_since");
    assert!(
        batch.changes.is_empty(),
        "{}: {:?}",
        fx.p.kind(),
        batch.changes
    );
}

pub async fn changes_after_cursor(fx: &Fixture, expect: &Expect) {
    fx.put("/old.txt", b"old").await;
    fx.put("/doomed.txt", b"doomed").await;
    let Some(cursor) = cursor(fx, expect).await else {
        return;
    };
    fx.put("/new.txt", b"new").await;
    fx.put("/old.txt", b"edited").await;
    fx.p.delete("/doomed.txt").await.expect("delete");
    let batch = fx.p.changes_since(&cursor).await.expect("changes_since");
    let (upserted, removed) = paths(&batch.changes);
    assert_eq!(upserted, set(&["/new.txt", "/old.txt"]), "{}", fx.p.kind());
    assert_eq!(removed, set(&["/doomed.txt"]), "{}", fx.p.kind());
    // The new cursor has seen all of that.
    let again =
        fx.p.changes_since(&batch.cursor)
            .await
            .expect("changes_since");
    assert!(
        again.changes.is_empty(),
        "{}: {:?}",
        fx.p.kind(),
        again.changes
    );
}

pub async fn changes_after_rename(fx: &Fixture, expect: &Expect) {
    fx.mkdir("/d").await;
    fx.put("/d/a.txt", b"a").await;
    let Some(cursor) = cursor(fx, expect).await else {
        return;
    };
    fx.p.rename("/d/a.txt", "/b.txt", false)
        .await
        .expect("rename");
    let batch = fx.p.changes_since(&cursor).await.expect("changes_since");
    let (upserted, removed) = paths(&batch.changes);
    // The folder that lost a member may be reported as changed too (Nextcloud's ETags).
    let upserted: BTreeSet<String> = upserted.into_iter().filter(|p| p != "/d").collect();
    assert_eq!(upserted, set(&["/b.txt"]), "{}", fx.p.kind());
    assert_eq!(removed, set(&["/d/a.txt"]), "{}", fx.p.kind());
}

// ---------------------------------------------------------------------------------------
// revisions

pub async fn revision_changes_with_content(fx: &Fixture, _: &Expect) {
    let a = fx.put("/f.txt", b"0123456789").await;
    // Same size, same second: only the content differs.
    let b = fx.put("/f.txt", b"abcdefghij").await;
    assert_ne!(a.revision, b.revision, "{}: same-size rewrite", fx.p.kind());
    let c = fx.put("/f.txt", b"longer content").await;
    assert_ne!(b.revision, c.revision, "{}: size change", fx.p.kind());
    assert_ne!(a.revision, c.revision, "{}", fx.p.kind());
    assert_eq!(fx.p.stat("/f.txt").await.unwrap().revision, c.revision);
    // Another file's change leaves this one's revision alone.
    fx.put("/other.txt", b"other").await;
    assert_eq!(fx.p.stat("/f.txt").await.unwrap().revision, c.revision);
}
