//! The Confluence provider against the Atlassian emulator (tests/support/atlassian_emulator.rs):
//! the tree of spaces, pages, folders and shortcuts; Markdown sized exactly at listing
//! time; attachments read whole and by range through the media redirect; paging; the
//! change feed (edits, moves, trash, new pages, attachments at the full walk); rate
//! limits; API-token, scoped-token and OAuth sign-in; and every change refused.

#[path = "support/atlassian_emulator.rs"]
mod atlassian_emulator;
#[path = "support/atlassian_harness.rs"]
mod atlassian_harness;
#[path = "support/emu/mod.rs"]
mod emu;

use std::collections::BTreeSet;
use std::path::Path;
use std::time::{Duration, Instant};

use cloudmount::provider::atlassian::confluence::ConfluenceProvider;
use cloudmount::provider::{
    collect_stream, Change, EntryKind, Provider, ProviderError, UploadOptions,
};
use serde_json::json;

use atlassian_emulator::{AtlassianConfig, AtlassianEmulator, Fault};
use atlassian_harness::*;

async fn names(p: &ConfluenceProvider, dir: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut s = p.list(dir);
    while let Some(page) = futures::StreamExt::next(&mut s).await {
        out.extend(page.unwrap().into_iter().map(|e| e.name));
    }
    out
}

async fn read(p: &ConfluenceProvider, path: &str) -> Vec<u8> {
    collect_stream(p.read_range(path, None, 0, u64::MAX).await.unwrap())
        .await
        .unwrap()
}

/// An emulator whose spaces have no homepage: each test makes the pages it lists.
fn config() -> AtlassianConfig {
    AtlassianConfig {
        space_homepages: false,
        ..AtlassianConfig::default()
    }
}

fn start() -> (AtlassianEmulator, tempfile::TempDir) {
    (
        AtlassianEmulator::start(config()),
        tempfile::tempdir().unwrap(),
    )
}

fn changed_paths(changes: &[Change]) -> BTreeSet<String> {
    changes
        .iter()
        .map(|c| match c {
            Change::Upserted { path, .. } => format!("+{path}"),
            Change::Removed { path } => format!("-{path}"),
        })
        .collect()
}

#[tokio::test]
async fn spaces_pages_folders_and_shortcuts_make_the_tree() {
    let (emu, dir) = start();
    let eng = emu.add_space("ENG", "Engineering");
    emu.add_space("OPS", "Ops/Run");
    let home = emu.add_page(&eng, None, "Home", paragraph("Welcome to engineering."));
    emu.add_page(&eng, Some(&home), "Design", paragraph("Boxes and arrows."));
    emu.add_page(&eng, Some(&home), "Notes", paragraph("first"));
    let second_notes = emu.add_page(&eng, Some(&home), "Notes", paragraph("second"));
    let archive = emu.add_folder(&eng, Some(&home), "Archive");
    emu.add_page(&eng, Some(&archive), "Old plan", paragraph("Do it later."));
    let board = emu.add_content(&eng, Some(&home), "whiteboard", "Sketch");
    let team = emu.add_folder(&eng, None, "Team");
    emu.add_page(&eng, Some(&team), "Roster", paragraph("Ann, Bo."));
    let hidden = emu.add_page(&eng, Some(&home), "Salaries", paragraph("secret"));
    emu.set_page_visible(&hidden, false);
    let gone = emu.add_page(&eng, Some(&home), "Scratch", paragraph("old"));
    emu.trash_page(&gone);
    let p = confluence(&token_settings(&emu, dir.path(), ""), None);

    assert_eq!(names(&p, "/").await, ["ENG Engineering", "OPS Ops∕Run"]);
    assert_eq!(names(&p, "/OPS Ops∕Run").await, Vec::<String>::new());
    let mut top = names(&p, "/ENG Engineering").await;
    top.sort();
    assert_eq!(top, ["Home", "Home.md", "Team"]);
    // Siblings in childPosition order; a repeated title gets the page's id.
    let second = format!("Notes [{second_notes}]");
    assert_eq!(
        names(&p, "/ENG Engineering/Home").await,
        [
            "Design.md".to_owned(),
            "Design".into(),
            "Notes.md".into(),
            "Notes".into(),
            format!("{second}.md"),
            second.clone(),
            "Archive".into(),
            "Sketch.url".into(),
        ]
    );
    assert_eq!(
        names(&p, "/ENG Engineering/Home/Archive").await,
        ["Old plan.md", "Old plan"]
    );
    assert_eq!(
        names(&p, "/ENG Engineering/Team").await,
        ["Roster.md", "Roster"]
    );

    // Markdown: the title as a heading, then the body; the listed size is exact.
    for (path, text) in [
        (
            "/ENG Engineering/Home.md",
            "# Home\n\nWelcome to engineering.\n",
        ),
        (
            &format!("/ENG Engineering/Home/{second}.md")[..],
            "# Notes\n\nsecond\n",
        ),
        (
            "/ENG Engineering/Home/Archive/Old plan.md",
            "# Old plan\n\nDo it later.\n",
        ),
    ] {
        assert_eq!(String::from_utf8(read(&p, path).await).unwrap(), text);
        let st = p.stat(path).await.unwrap();
        assert_eq!(st.kind, EntryKind::File);
        assert_eq!(st.size, text.len() as u64, "{path}");
        assert_eq!(st.mode, Some(0o444));
    }
    let url = String::from_utf8(read(&p, "/ENG Engineering/Home/Sketch.url").await).unwrap();
    assert_eq!(
        url,
        format!(
            "[InternetShortcut]\nURL={}/wiki/spaces/ENG/whiteboard/{board}\n",
            emu.site_url()
        )
    );
    // Ranged reads of a page.
    let part = collect_stream(
        p.read_range("/ENG Engineering/Home.md", None, 2, 4)
            .await
            .unwrap(),
    )
    .await
    .unwrap();
    assert_eq!(part, b"Home");

    // Errors.
    let missing = p.stat("/ENG Engineering/Nope.md").await;
    assert!(
        matches!(missing, Err(ProviderError::NotFound(_))),
        "{missing:?}"
    );
    let mut s = p.list("/ENG Engineering/Home.md");
    let e = futures::StreamExt::next(&mut s).await.unwrap();
    assert!(matches!(e, Err(ProviderError::NotADirectory(_))), "{e:?}");
    drop(s);
    let mut s = p.list("/Nope");
    let e = futures::StreamExt::next(&mut s).await.unwrap();
    assert!(matches!(e, Err(ProviderError::NotFound(_))), "{e:?}");
    drop(s);
    let e = p
        .read_range("/ENG Engineering/Home", None, 0, 10)
        .await
        .err();
    assert!(matches!(e, Some(ProviderError::IsADirectory(_))), "{e:?}");

    // Read-only: every change is refused.
    assert!(!p.capabilities().writable);
    for e in [
        p.mkdir("/ENG Engineering/x").await.err(),
        p.upload(
            "/ENG Engineering/x.md",
            Path::new("/dev/null"),
            &UploadOptions::default(),
        )
        .await
        .err(),
        p.delete("/ENG Engineering/Home.md").await.err(),
        p.rename("/ENG Engineering/Home.md", "/ENG Engineering/H.md", false)
            .await
            .err(),
    ] {
        assert!(
            matches!(e, Some(ProviderError::PermissionDenied(_))),
            "{e:?}"
        );
    }
    // Bodies came with the bulk listing: no request fetched a single page.
    let single = emu
        .requests()
        .iter()
        .filter(|r| {
            let path = r.path.split('?').next().unwrap();
            path.contains("/pages/")
                && !path.contains("/direct-children")
                && !path.contains("/attachments")
        })
        .count();
    assert_eq!(single, 0);
}

#[tokio::test]
async fn attachments_are_files_and_images_link_to_them() {
    for honours_range in [true, false] {
        let emu = AtlassianEmulator::start(AtlassianConfig {
            media_honours_range: honours_range,
            ..config()
        });
        let dir = tempfile::tempdir().unwrap();
        let space = emu.add_space("DOC", "Docs");
        let page = emu.add_page(&space, None, "Guide", paragraph("placeholder"));
        let diagram = pattern(300_000, 7);
        let (_, file_id) = emu.add_attachment(&page, "diagram v2.png", "image/png", &diagram);
        let sheet = b"a,b\n1,2\n".to_vec();
        emu.add_attachment(&page, "data.csv", "text/csv", &sheet);
        emu.update_page(
            &page,
            None,
            Some(json!({
                "type": "doc", "version": 1,
                "content": [
                    {"type": "paragraph", "content": [{"type": "text", "text": "See the diagram."}]},
                    {"type": "mediaSingle", "content": [
                        {"type": "media", "attrs": {"type": "file", "id": file_id, "collection": format!("contentId-{page}"), "alt": "diagram v2.png"}}
                    ]}
                ]
            })),
        );
        let p = confluence(&token_settings(&emu, dir.path(), ""), None);
        assert_eq!(names(&p, "/DOC Docs").await, ["Guide.md", "Guide"]);
        assert_eq!(names(&p, "/DOC Docs/Guide").await, ["_attachments"]);
        let mut files = names(&p, "/DOC Docs/Guide/_attachments").await;
        files.sort();
        assert_eq!(files, ["data.csv", "diagram v2.png"]);

        let md = String::from_utf8(read(&p, "/DOC Docs/Guide.md").await).unwrap();
        assert!(md.starts_with("# Guide\n\nSee the diagram.\n"), "{md}");
        assert!(
            md.contains("(<Guide/_attachments/diagram v2.png>)"),
            "the image links to the attachment file: {md}"
        );
        assert_eq!(
            p.stat("/DOC Docs/Guide.md").await.unwrap().size,
            md.len() as u64
        );

        let path = "/DOC Docs/Guide/_attachments/diagram v2.png";
        assert_eq!(p.stat(path).await.unwrap().size, diagram.len() as u64);
        assert_eq!(
            read(&p, path).await,
            diagram,
            "range honoured: {honours_range}"
        );
        let middle = collect_stream(p.read_range(path, None, 123_457, 50_000).await.unwrap())
            .await
            .unwrap();
        assert_eq!(middle, &diagram[123_457..173_457]);
        let tail = collect_stream(p.read_range(path, None, 299_990, 100).await.unwrap())
            .await
            .unwrap();
        assert_eq!(tail, &diagram[299_990..]);
        assert_eq!(
            read(&p, "/DOC Docs/Guide/_attachments/data.csv").await,
            sheet
        );
        // The media host never saw our credentials.
        let media_port = emu.media_url().rsplit(':').next().unwrap().to_owned();
        let media: Vec<_> = emu
            .requests()
            .into_iter()
            .filter(|r| r.path.contains("/binary"))
            .collect();
        assert!(!media.is_empty(), "reads went through the media redirect");
        assert!(
            media.iter().all(|r| r.header("authorization").is_none()),
            "media host {media_port} got an Authorization header"
        );
    }
}

#[tokio::test]
async fn listings_page_through_small_pages() {
    let (emu, dir) = start();
    let space = emu.add_space("BIG", "Big");
    let home = emu.add_page(&space, None, "Home", paragraph("top"));
    for i in 0..7 {
        emu.add_page(
            &space,
            Some(&home),
            &format!("Child {i}"),
            paragraph(&format!("child {i}")),
        );
    }
    for i in 0..5 {
        emu.add_space(&format!("S{i}"), &format!("Space {i}"));
    }
    let p = confluence(&token_settings(&emu, dir.path(), "page_size = 2"), None);
    assert_eq!(names(&p, "/").await.len(), 6);
    let children = names(&p, "/BIG Big/Home").await;
    assert_eq!(children.len(), 14, "{children:?}");
    assert_eq!(
        String::from_utf8(read(&p, "/BIG Big/Home/Child 6.md").await).unwrap(),
        "# Child 6\n\nchild 6\n"
    );
    let reqs = emu.requests();
    let count = |part: &str| {
        reqs.iter()
            .filter(|r| r.path.split('?').next().unwrap().ends_with(part))
            .count()
    };
    assert!(count("/spaces") >= 3, "spaces came two at a time");
    assert!(
        count("/direct-children") >= 4,
        "children came two at a time"
    );
    assert!(count("/pages") >= 4, "the bulk listing came two at a time");
}

/// Lists every folder below `dir`, as a mount being browsed would.
async fn walk(p: &ConfluenceProvider, dir: &str) {
    let mut todo = vec![dir.to_owned()];
    while let Some(d) = todo.pop() {
        let mut s = p.list(&d);
        while let Some(page) = futures::StreamExt::next(&mut s).await {
            for e in page.unwrap() {
                if e.kind == EntryKind::Dir {
                    todo.push(cloudmount::provider::join_path(&d, &e.name));
                }
            }
        }
    }
}

#[tokio::test]
async fn the_change_feed_follows_edits_moves_trash_and_new_pages() {
    let (emu, dir) = start();
    let space = emu.add_space("ENG", "Eng");
    let home = emu.add_page(&space, None, "Home", paragraph("home"));
    let a = emu.add_page(&space, Some(&home), "Alpha", paragraph("alpha v1"));
    let b = emu.add_page(&space, Some(&home), "Beta", paragraph("beta"));
    let other = emu.add_page(&space, None, "Other", paragraph("other"));
    let p = confluence(&token_settings(&emu, dir.path(), ""), None);
    walk(&p, "/").await;
    let cursor = p.changes_cursor().await.unwrap();
    let quiet = p.changes_since(&cursor).await.unwrap();
    assert!(
        quiet.changes.is_empty(),
        "{:?}",
        changed_paths(&quiet.changes)
    );
    let cursor = quiet.cursor;

    emu.advance_clock(Duration::from_secs(5));
    emu.update_page(&a, Some("Alpha renamed"), Some(paragraph("alpha v2")));
    let before = emu.requests().len();
    let batch = p.changes_since(&cursor).await.unwrap();
    // What it costs: the change query (no bodies), the changed page's body by id, and the
    // children of the page's parent, whose folder shows it; not the space's bulk listing
    // again, not the other folders the mount listed.
    let asked: Vec<String> = emu.requests()[before..]
        .iter()
        .map(|r| r.path.clone())
        .collect();
    assert_eq!(asked.len(), 3, "{asked:?}");
    assert!(
        asked[0].contains("/wiki/api/v2/pages?") && !asked[0].contains("body-format"),
        "{asked:?}"
    );
    assert!(
        asked[1].contains("/wiki/api/v2/pages?") && asked[1].contains(&format!("id={a}")),
        "{asked:?}"
    );
    assert!(
        asked[2].contains(&format!("/pages/{home}/direct-children")),
        "{asked:?}"
    );
    assert_eq!(
        changed_paths(&batch.changes),
        BTreeSet::from([
            "-/ENG Eng/Home/Alpha.md".to_owned(),
            "-/ENG Eng/Home/Alpha".into(),
            "+/ENG Eng/Home/Alpha renamed.md".into(),
            "+/ENG Eng/Home/Alpha renamed".into(),
        ])
    );
    assert_eq!(
        String::from_utf8(read(&p, "/ENG Eng/Home/Alpha renamed.md").await).unwrap(),
        "# Alpha renamed\n\nalpha v2\n"
    );
    // Reported once: the next look sees the same items again in its overlap, knows
    // them, and lists nothing again (one request, nothing more).
    let before = emu.requests().len();
    let again = p.changes_since(&batch.cursor).await.unwrap();
    assert!(
        again.changes.is_empty(),
        "{:?}",
        changed_paths(&again.changes)
    );
    assert_eq!(
        emu.requests().len() - before,
        1,
        "a quiet look is one request"
    );

    emu.advance_clock(Duration::from_secs(5));
    emu.update_page(&b, None, Some(paragraph("beta, longer now")));
    emu.move_page(&other, Some(&home));
    let batch = p.changes_since(&again.cursor).await.unwrap();
    let got = changed_paths(&batch.changes);
    for want in [
        "+/ENG Eng/Home/Beta.md",
        "-/ENG Eng/Other.md",
        "-/ENG Eng/Other",
        "+/ENG Eng/Home/Other.md",
        "+/ENG Eng/Home/Other",
    ] {
        assert!(got.contains(want), "{want} missing from {got:?}");
    }
    let beta = p.stat("/ENG Eng/Home/Beta.md").await.unwrap();
    assert_eq!(beta.size, "# Beta\n\nbeta, longer now\n".len() as u64);

    emu.advance_clock(Duration::from_secs(5));
    emu.trash_page(&b);
    let fresh = emu.add_page(&space, Some(&home), "Gamma", paragraph("new"));
    let batch2 = p.changes_since(&batch.cursor).await.unwrap();
    let got = changed_paths(&batch2.changes);
    for want in [
        "-/ENG Eng/Home/Beta.md",
        "-/ENG Eng/Home/Beta",
        "+/ENG Eng/Home/Gamma.md",
    ] {
        assert!(got.contains(want), "{want} missing from {got:?}");
    }
    let e = p.stat("/ENG Eng/Home/Beta.md").await;
    assert!(matches!(e, Err(ProviderError::NotFound(_))), "{e:?}");
    assert!(!fresh.is_empty());

    // A provider that has listed nothing (a restart) cannot place changes: it asks for
    // every listing to be fetched again instead of reporting nothing.
    let restarted = confluence(&token_settings(&emu, dir.path(), ""), None);
    emu.advance_clock(Duration::from_secs(5));
    emu.update_page(&home, None, Some(paragraph("home v2")));
    let e = restarted.changes_since(&batch2.cursor).await;
    assert!(
        matches!(e, Err(ProviderError::PreconditionFailed(_))),
        "{e:?}"
    );
}

#[tokio::test]
async fn the_full_walk_finds_attachments_and_new_spaces() {
    let (emu, dir) = start();
    let space = emu.add_space("ENG", "Eng");
    let page = emu.add_page(&space, None, "Specs", paragraph("specs"));
    let p = confluence(
        &token_settings(&emu, dir.path(), "full_walk_secs = 0"),
        None,
    );
    walk(&p, "/").await;
    let cursor = p.changes_cursor().await.unwrap();
    // Adding an attachment leaves the page's version as it was.
    emu.add_attachment(&page, "spec.pdf", "application/pdf", b"%PDF-1.7 tiny");
    emu.add_space("NEW", "Newcomers");
    let batch = p.changes_since(&cursor).await.unwrap();
    let got = changed_paths(&batch.changes);
    assert!(got.contains("+/ENG Eng/Specs/_attachments"), "{got:?}");
    assert!(got.contains("+/NEW Newcomers"), "{got:?}");
    walk(&p, "/").await;
    assert_eq!(
        read(&p, "/ENG Eng/Specs/_attachments/spec.pdf").await,
        b"%PDF-1.7 tiny"
    );
}

#[tokio::test]
async fn rate_limits_and_server_errors_are_waited_out() {
    let (emu, dir) = start();
    let space = emu.add_space("ENG", "Eng");
    emu.add_page(&space, None, "Home", paragraph("home"));
    let p = confluence(&token_settings(&emu, dir.path(), ""), None);
    emu.inject(
        Fault::RateLimited {
            retry_after_secs: 1,
            reason: None,
        },
        1,
    );
    let t = Instant::now();
    assert_eq!(names(&p, "/").await, ["ENG Eng"]);
    assert!(
        t.elapsed() >= Duration::from_millis(900),
        "Retry-After was honoured"
    );
    emu.inject(
        Fault::ServiceUnavailable {
            retry_after_secs: None,
        },
        1,
    );
    emu.inject(Fault::Drop, 1);
    emu.inject(Fault::CutBody, 1);
    assert_eq!(names(&p, "/ENG Eng").await, ["Home.md", "Home"]);
    assert_eq!(emu.pending_faults(), 0, "every fault was served");
    assert_eq!(read(&p, "/ENG Eng/Home.md").await, b"# Home\n\nhome\n");
}

#[tokio::test]
async fn a_wrong_token_is_an_authentication_error() {
    let (emu, dir) = start();
    emu.add_space("ENG", "Eng");
    let mut settings = token_settings(&emu, dir.path(), "");
    let wrong = dir.path().join("wrong-token");
    std::fs::write(&wrong, "not-the-token").unwrap();
    std::fs::set_permissions(&wrong, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
    settings.insert("token_file".into(), wrong.display().to_string().into());
    let p = confluence(&settings, None);
    let mut s = p.list("/");
    let e = futures::StreamExt::next(&mut s).await.unwrap();
    match e {
        Err(ProviderError::Auth(m)) => assert!(!m.contains("not-the-token"), "{m}"),
        other => panic!("expected an authentication error, got {other:?}"),
    }
}

#[tokio::test]
async fn oauth_finds_the_cloud_id_and_renews_an_expired_token() {
    let (emu, dir) = start();
    let space = emu.add_space("ENG", "Eng");
    let home = emu.add_page(&space, None, "Home", paragraph("through the gateway"));
    let board = emu.add_content(&space, Some(&home), "whiteboard", "Board");
    let (_vault, tokens) = logged_in(&emu, dir.path(), "confluence");
    let p = confluence(&oauth_settings(&emu, ""), Some(tokens));
    assert_eq!(names(&p, "/").await, ["ENG Eng"]);
    emu.expire_all_access_tokens();
    assert_eq!(
        read(&p, "/ENG Eng/Home.md").await,
        b"# Home\n\nthrough the gateway\n"
    );
    // Links for people point at the site, not at the API gateway.
    assert_eq!(
        String::from_utf8(read(&p, "/ENG Eng/Home/Board.url").await).unwrap(),
        format!(
            "[InternetShortcut]\nURL={}/wiki/spaces/ENG/whiteboard/{board}\n",
            emu.site_url()
        )
    );
    let reqs = emu.requests();
    let cloud = emu.cloud_id();
    assert!(reqs
        .iter()
        .any(|r| r.path.starts_with("/oauth/token/accessible-resources")));
    assert!(reqs.iter().any(|r| r
        .path
        .starts_with(&format!("/ex/confluence/{cloud}/wiki/api/v2/spaces"))));
    assert!(reqs.iter().filter(|r| r.path.starts_with("/ex/")).all(|r| r
        .header("authorization")
        .is_some_and(|a| a.starts_with("Bearer "))));
}

#[tokio::test]
async fn a_scoped_token_goes_through_the_gateway_with_the_cloud_id() {
    let (emu, dir) = start();
    let space = emu.add_space("ENG", "Eng");
    emu.add_page(&space, None, "Home", paragraph("scoped"));
    let p = confluence(
        &token_settings(
            &emu,
            dir.path(),
            &format!("cloud_id = \"{}\"", emu.cloud_id()),
        ),
        None,
    );
    assert_eq!(read(&p, "/ENG Eng/Home.md").await, b"# Home\n\nscoped\n");
    let cloud = emu.cloud_id();
    assert!(emu
        .requests()
        .iter()
        .filter(|r| !r.path.contains("/binary"))
        .all(|r| r.path.starts_with(&format!("/ex/confluence/{cloud}/"))));
}
