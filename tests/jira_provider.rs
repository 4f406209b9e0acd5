//! The Jira provider against the Atlassian emulator (tests/support/atlassian_emulator.rs):
//! projects, issues with attachments as folders keyed by id, duplicate file names,
//! ranged reads with `redirect=false`, `search/jql` paging (never the removed `/search`),
//! the change feed (new and removed attachments, a summary edit, a move to another
//! project, deletion at the full walk), rate limits with `RateLimit-Reason`, and OAuth.

#[path = "support/atlassian_emulator.rs"]
mod atlassian_emulator;
#[path = "support/atlassian_harness.rs"]
mod atlassian_harness;
#[path = "support/emu/mod.rs"]
mod emu;

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use cloudmount::provider::atlassian::jira::JiraProvider;
use cloudmount::provider::{collect_stream, Change, EntryKind, Provider, ProviderError};

use atlassian_emulator::{AtlassianConfig, AtlassianEmulator, Fault};
use atlassian_harness::*;

async fn names(p: &JiraProvider, dir: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut s = p.list(dir);
    while let Some(page) = futures::StreamExt::next(&mut s).await {
        out.extend(page.unwrap().into_iter().map(|e| e.name));
    }
    out
}

async fn read(p: &JiraProvider, path: &str) -> Vec<u8> {
    collect_stream(p.read_range(path, None, 0, u64::MAX).await.unwrap())
        .await
        .unwrap()
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

async fn walk(p: &JiraProvider) {
    let mut todo = vec!["/".to_owned()];
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
async fn issues_with_attachments_are_folders_of_their_files() {
    let emu = AtlassianEmulator::start(AtlassianConfig {
        jira_max_results: 2,
        ..AtlassianConfig::default()
    });
    let dir = tempfile::tempdir().unwrap();
    emu.add_project("PROJ", "Project One");
    emu.add_project("OPS", "Operations");
    let (crash, crash_key) = emu.add_issue("PROJ", "Crash on start/up");
    let log_a = pattern(200_000, 1);
    let log_b = pattern(1_000, 2);
    emu.add_jira_attachment(&crash, "log.txt", &log_a);
    let second_log = emu.add_jira_attachment(&crash, "log.txt", &log_b);
    emu.add_jira_attachment(&crash, "screen shot.png", b"\x89PNG tiny");
    emu.add_issue("PROJ", "No files here");
    for i in 0..4 {
        let (id, _) = emu.add_issue("PROJ", &format!("Filler {i}"));
        emu.add_jira_attachment(&id, &format!("f{i}.bin"), &[i as u8; 10]);
    }
    let p = jira(&token_settings(&emu, dir.path(), ""), None);

    let mut top = names(&p, "/").await;
    top.sort();
    assert_eq!(top, ["OPS Operations", "PROJ Project One"]);
    let issues = names(&p, "/PROJ Project One").await;
    let crash_dir = format!("{crash_key} Crash on start∕up");
    assert!(issues.contains(&crash_dir), "{issues:?}");
    assert_eq!(
        issues.len(),
        5,
        "issues without attachments are not shown: {issues:?}"
    );
    assert_eq!(names(&p, "/OPS Operations").await, Vec::<String>::new());
    let files = names(&p, &format!("/PROJ Project One/{crash_dir}")).await;
    assert_eq!(
        files,
        [
            "log.txt".to_owned(),
            format!("log [{second_log}].txt"),
            "screen shot.png".into()
        ]
    );
    let log = format!("/PROJ Project One/{crash_dir}/log.txt");
    let st = p.stat(&log).await.unwrap();
    assert_eq!(
        (st.kind, st.size, st.mode),
        (EntryKind::File, 200_000, Some(0o444))
    );
    assert_eq!(read(&p, &log).await, log_a);
    let middle = collect_stream(p.read_range(&log, None, 99_999, 777).await.unwrap())
        .await
        .unwrap();
    assert_eq!(middle, &log_a[99_999..100_776]);
    let past = collect_stream(p.read_range(&log, None, 300_000, 10).await.unwrap())
        .await
        .unwrap();
    assert!(past.is_empty());
    assert_eq!(
        read(
            &p,
            &format!("/PROJ Project One/{crash_dir}/log [{second_log}].txt")
        )
        .await,
        log_b
    );

    let reqs = emu.requests();
    let searches: Vec<_> = reqs
        .iter()
        .filter(|r| r.path.contains("/rest/api/3/search"))
        .collect();
    assert!(searches.len() >= 3, "five issues came two at a time");
    assert!(
        searches.iter().all(
            |r| r.path.split('?').next().unwrap().ends_with("/search/jql")
                && r.path.contains("fields=")
        ),
        "only search/jql, fields always named"
    );
    let contents: Vec<_> = reqs
        .iter()
        .filter(|r| r.path.contains("/attachment/content/"))
        .collect();
    assert!(!contents.is_empty());
    assert!(contents.iter().all(|r| r.path.contains("redirect=false")));

    let e = p.stat("/PROJ Project One/NOPE-1 x").await;
    assert!(matches!(e, Err(ProviderError::NotFound(_))), "{e:?}");
    let e = p.read_range("/PROJ Project One", None, 0, 1).await.err();
    assert!(matches!(e, Some(ProviderError::IsADirectory(_))), "{e:?}");
    assert!(p
        .mkdir("/PROJ Project One/x")
        .await
        .is_err_and(|e| matches!(e, ProviderError::PermissionDenied(_))));
}

#[tokio::test]
async fn configured_projects_and_jql_narrow_what_is_shown() {
    let emu = AtlassianEmulator::start(AtlassianConfig::default());
    let dir = tempfile::tempdir().unwrap();
    emu.add_project("PROJ", "Project One");
    emu.add_project("OPS", "Operations");
    let (a, a_key) = emu.add_issue("PROJ", "Keep me");
    emu.add_jira_attachment(&a, "a.txt", b"a");
    let (b, _) = emu.add_issue("PROJ", "Skip me");
    emu.add_jira_attachment(&b, "b.txt", b"b");
    let p = jira(
        &token_settings(
            &emu,
            dir.path(),
            &format!("projects = [\"PROJ\"]\njql = 'key = {a_key}'"),
        ),
        None,
    );
    assert_eq!(names(&p, "/").await, ["PROJ Project One"]);
    assert_eq!(
        names(&p, "/PROJ Project One").await,
        [format!("{a_key} Keep me")]
    );
}

#[tokio::test]
async fn the_change_feed_follows_attachments_summaries_moves_and_deletions() {
    let emu = AtlassianEmulator::start(AtlassianConfig::default());
    let dir = tempfile::tempdir().unwrap();
    emu.add_project("PROJ", "Proj");
    emu.add_project("OPS", "Ops");
    let (one, k1) = emu.add_issue("PROJ", "First");
    emu.add_jira_attachment(&one, "one.txt", b"one");
    let (two, k2) = emu.add_issue("PROJ", "Second");
    let only = emu.add_jira_attachment(&two, "only.txt", b"only");
    let p = jira(&token_settings(&emu, dir.path(), ""), None);
    walk(&p).await;
    let cursor = p.changes_cursor().await.unwrap();
    let quiet = p.changes_since(&cursor).await.unwrap();
    assert!(
        quiet.changes.is_empty(),
        "{:?}",
        changed_paths(&quiet.changes)
    );

    emu.advance_clock(Duration::from_secs(61));
    emu.add_jira_attachment(&one, "two.txt", b"two");
    emu.remove_jira_attachment(&only);
    let batch = p.changes_since(&quiet.cursor).await.unwrap();
    assert_eq!(
        changed_paths(&batch.changes),
        BTreeSet::from([
            // The issue's folder (its `updated` is its time) and the new file in it.
            format!("+/PROJ Proj/{k1} First"),
            format!("+/PROJ Proj/{k1} First/two.txt"),
            // The issue's last attachment went, and the issue with it.
            format!("-/PROJ Proj/{k2} Second"),
        ])
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

    emu.advance_clock(Duration::from_secs(61));
    emu.set_summary(&one, "First, renamed");
    let batch = p.changes_since(&again.cursor).await.unwrap();
    assert_eq!(
        changed_paths(&batch.changes),
        BTreeSet::from([
            format!("-/PROJ Proj/{k1} First"),
            format!("+/PROJ Proj/{k1} First, renamed"),
        ])
    );
    assert_eq!(
        read(&p, &format!("/PROJ Proj/{k1} First, renamed/one.txt")).await,
        b"one"
    );

    // Moved to another project: a new key, the same id and files.
    emu.advance_clock(Duration::from_secs(61));
    let moved_key = emu.move_issue(&one, "OPS");
    let batch = p.changes_since(&batch.cursor).await.unwrap();
    let got = changed_paths(&batch.changes);
    assert!(
        got.contains(&format!("-/PROJ Proj/{k1} First, renamed")),
        "{got:?}"
    );
    assert!(
        got.contains(&format!("+/OPS Ops/{moved_key} First, renamed")),
        "{got:?}"
    );
    assert_eq!(
        read(&p, &format!("/OPS Ops/{moved_key} First, renamed/two.txt")).await,
        b"two"
    );

    // A deleted issue leaves no `updated` behind: the full walk finds it gone.
    let (three, k3) = emu.add_issue("OPS", "Third");
    emu.add_jira_attachment(&three, "3.txt", b"3");
    let walker = jira(
        &token_settings(&emu, dir.path(), "full_walk_secs = 0"),
        None,
    );
    walk(&walker).await;
    let c = walker.changes_cursor().await.unwrap();
    emu.delete_issue(&three);
    let batch = walker.changes_since(&c).await.unwrap();
    assert!(
        changed_paths(&batch.changes).contains(&format!("-/OPS Ops/{k3} Third")),
        "{:?}",
        changed_paths(&batch.changes)
    );
}

#[tokio::test]
async fn rate_limits_with_their_reason_are_waited_out() {
    let emu = AtlassianEmulator::start(AtlassianConfig::default());
    let dir = tempfile::tempdir().unwrap();
    emu.add_project("PROJ", "Proj");
    let (id, key) = emu.add_issue("PROJ", "Busy");
    emu.add_jira_attachment(&id, "f.txt", b"data");
    let p = jira(&token_settings(&emu, dir.path(), ""), None);
    emu.inject(
        Fault::RateLimited {
            retry_after_secs: 1,
            reason: Some("jira-burst-based"),
        },
        2,
    );
    let t = Instant::now();
    assert_eq!(names(&p, "/PROJ Proj").await, [format!("{key} Busy")]);
    assert!(
        t.elapsed() >= Duration::from_millis(1900),
        "both waits were honoured"
    );
    // A 500 and a reply cut in its body: a listing is asked for again (a cut download is
    // the caller's to resume: the chunk cache does, see mount_cache).
    let fresh = jira(&token_settings(&emu, dir.path(), ""), None);
    emu.inject(Fault::ServerError, 1);
    emu.inject(Fault::CutBody, 1);
    assert_eq!(names(&fresh, "/").await, ["PROJ Proj"]);
    assert_eq!(emu.pending_faults(), 0, "both faults were served");
    assert_eq!(
        read(&p, &format!("/PROJ Proj/{key} Busy/f.txt")).await,
        b"data"
    );
}

#[tokio::test]
async fn oauth_reads_through_the_gateway() {
    let emu = AtlassianEmulator::start(AtlassianConfig::default());
    let dir = tempfile::tempdir().unwrap();
    emu.add_project("PROJ", "Proj");
    let (id, key) = emu.add_issue("PROJ", "Via OAuth");
    emu.add_jira_attachment(&id, "g.txt", b"gateway bytes");
    let (_vault, tokens) = logged_in(&emu, dir.path(), "jira");
    let p = jira(&oauth_settings(&emu, ""), Some(tokens));
    emu.expire_all_access_tokens();
    assert_eq!(
        read(&p, &format!("/PROJ Proj/{key} Via OAuth/g.txt")).await,
        b"gateway bytes"
    );
    let cloud = emu.cloud_id();
    assert!(emu.requests().iter().any(|r| r
        .path
        .starts_with(&format!("/ex/jira/{cloud}/rest/api/3/search/jql"))));
}

/// A connection on projects nothing happened in lately: the cursor starts at the server's
/// now, so the first look asks for the last few minutes, not for every issue ever.
#[tokio::test]
async fn a_cursor_made_on_a_quiet_site_looks_back_minutes() {
    let emu = AtlassianEmulator::start(AtlassianConfig::default());
    let dir = tempfile::tempdir().unwrap();
    emu.add_project("OLD", "Old");
    let (id, _) = emu.add_issue("OLD", "Long ago");
    emu.add_jira_attachment(&id, "a.txt", b"a");
    emu.advance_clock(Duration::from_secs(40 * 24 * 3600));
    let p = jira(&token_settings(&emu, dir.path(), ""), None);
    walk(&p).await;
    let cursor = p.changes_cursor().await.unwrap();
    let before = emu.requests().len();
    let batch = p.changes_since(&cursor).await.unwrap();
    assert!(batch.changes.is_empty());
    let reqs = emu.requests();
    assert_eq!(reqs.len() - before, 1, "one search");
    let q = emu::text::query_map(&reqs[before].path);
    let jql = &q["jql"];
    let minutes: u64 = jql
        .split("updated >= \"-")
        .nth(1)
        .and_then(|rest| rest.split('m').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no relative date in {jql}"));
    assert!(minutes <= 5, "looked back {minutes} minutes: {jql}");
}
