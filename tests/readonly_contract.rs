//! One contract for every read-only provider, as `provider_contract.rs` is for the
//! writable ones: each case is a named test instantiated for every backend (a failure
//! reads as `jira::read_middle`). A backend's fixture seeds its server with a known tree
//! through the server's own means (the emulator's API, IMAP APPEND) and says where in the
//! mount that content shows; the cases then talk to the provider through the `Provider`
//! trait only and assert exact listings, bytes and error kinds.

#[path = "support/atlassian_emulator.rs"]
mod atlassian_emulator;
#[path = "support/atlassian_harness.rs"]
mod atlassian_harness;
mod common;
#[path = "support/dovecot.rs"]
mod dovecot;
#[path = "support/emu/mod.rs"]
mod emu;

use std::any::Any;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::time::SystemTime;

use cloudmount::provider::{
    collect_stream, EntryKind, Provider, ProviderError, RemoteEntry, UploadOptions,
};
use futures::StreamExt;

use atlassian_emulator::{AtlassianConfig, AtlassianEmulator};
use atlassian_harness::{paragraph, pattern, token_settings};

/// What a backend was seeded with, and where the mount shows it.
pub struct Fixture {
    p: Box<dyn Provider>,
    /// A folder and the names in it, sorted.
    dir: String,
    dir_names: Vec<String>,
    /// A file in that folder and its bytes (large enough for ranged reads).
    file: String,
    bytes: Vec<u8>,
    _keep: Vec<Box<dyn Any + Send>>,
}

const FILE_LEN: usize = 150_000;

async fn confluence() -> Fixture {
    let emu = AtlassianEmulator::start(AtlassianConfig {
        space_homepages: false,
        ..AtlassianConfig::default()
    });
    let dir = tempfile::tempdir().unwrap();
    let space = emu.add_space("KB", "Knowledge");
    let page = emu.add_page(&space, None, "Manual", paragraph("read me"));
    let bytes = pattern(FILE_LEN, 21);
    emu.add_attachment(&page, "manual.bin", "application/octet-stream", &bytes);
    emu.add_attachment(&page, "notes.txt", "text/plain", b"notes");
    let p = atlassian_harness::confluence(&token_settings(&emu, dir.path(), ""), None);
    Fixture {
        p: Box::new(p),
        dir: "/KB Knowledge/Manual/_attachments".into(),
        dir_names: vec!["manual.bin".into(), "notes.txt".into()],
        file: "/KB Knowledge/Manual/_attachments/manual.bin".into(),
        bytes,
        _keep: vec![Box::new(emu), Box::new(dir)],
    }
}

async fn jira() -> Fixture {
    let emu = AtlassianEmulator::start(AtlassianConfig {
        space_homepages: false,
        ..AtlassianConfig::default()
    });
    let dir = tempfile::tempdir().unwrap();
    emu.add_project("SUP", "Support");
    let (issue, key) = emu.add_issue("SUP", "Printer on fire");
    let bytes = pattern(FILE_LEN, 22);
    emu.add_jira_attachment(&issue, "dump.bin", &bytes);
    emu.add_jira_attachment(&issue, "photo.jpg", b"\xff\xd8 tiny");
    let p = atlassian_harness::jira(&token_settings(&emu, dir.path(), ""), None);
    let folder = format!("/SUP Support/{key} Printer on fire");
    Fixture {
        p: Box::new(p),
        file: format!("{folder}/dump.bin"),
        dir: folder,
        dir_names: vec!["dump.bin".into(), "photo.jpg".into()],
        bytes,
        _keep: vec![Box::new(emu), Box::new(dir)],
    }
}

async fn imap() -> Fixture {
    let d = dovecot::Dovecot::start();
    let dir = tempfile::tempdir().unwrap();
    d.create_mailbox("Archive");
    let mut bytes = b"Subject: contract\r\nContent-Type: text/plain\r\n\r\n".to_vec();
    while bytes.len() < FILE_LEN {
        bytes.extend_from_slice(format!("line {:06} of the message\r\n", bytes.len()).as_bytes());
    }
    let uid = d.append("INBOX", &bytes).uid;
    let pw = dir.path().join("password");
    std::fs::write(&pw, &d.password).unwrap();
    std::fs::set_permissions(&pw, std::fs::Permissions::from_mode(0o600)).unwrap();
    let cfg = cloudmount::provider::imap::ImapConfig::loopback(d.port, &d.user, pw);
    let p =
        cloudmount::provider::imap::ImapProvider::new(cfg, Some(dir.path().join("index")), None)
            .unwrap();
    // The message's name carries its arrival time: found by its UID.
    let mut inbox = Vec::new();
    let mut s = p.list("/INBOX");
    while let Some(page) = s.next().await {
        inbox.extend(page.unwrap());
    }
    drop(s);
    let name = inbox
        .iter()
        .find(|e| e.name.ends_with(&format!("[u{uid}].eml")))
        .expect("the message is listed")
        .name
        .clone();
    Fixture {
        p: Box::new(p),
        dir: "/".into(),
        dir_names: vec!["Archive".into(), "INBOX".into()],
        file: format!("/INBOX/{name}"),
        bytes,
        _keep: vec![Box::new(d), Box::new(dir)],
    }
}

async fn list(fx: &Fixture, dir: &str) -> Result<Vec<RemoteEntry>, ProviderError> {
    let mut out = Vec::new();
    let mut s = fx.p.list(dir);
    while let Some(page) = s.next().await {
        out.extend(page?);
    }
    Ok(out)
}

async fn read(fx: &Fixture, path: &str, offset: u64, len: u64) -> Result<Vec<u8>, ProviderError> {
    collect_stream(fx.p.read_range(path, None, offset, len).await?).await
}

fn expect_err<T: std::fmt::Debug>(
    fx: &Fixture,
    what: &str,
    r: Result<T, ProviderError>,
) -> ProviderError {
    match r {
        Err(e) => e,
        Ok(v) => panic!("{}: {what} succeeded: {v:?}", fx.p.kind()),
    }
}

mod cases {
    use super::*;

    pub async fn says_it_is_read_only(fx: &Fixture) {
        assert!(!fx.p.capabilities().writable);
    }

    pub async fn list_a_folder_exactly(fx: &Fixture) {
        let mut names: Vec<String> = list(fx, &fx.dir)
            .await
            .unwrap()
            .into_iter()
            .map(|e| e.name)
            .collect();
        names.sort();
        assert_eq!(names, fx.dir_names);
    }

    pub async fn list_missing_is_not_found(fx: &Fixture) {
        let e = expect_err(
            fx,
            "list",
            list(
                fx,
                &format!("{}/no such folder", fx.dir.trim_end_matches('/')),
            )
            .await,
        );
        assert!(matches!(e, ProviderError::NotFound(_)), "{e:?}");
    }

    pub async fn list_file_is_not_a_directory(fx: &Fixture) {
        let e = expect_err(fx, "list", list(fx, &fx.file).await);
        assert!(matches!(e, ProviderError::NotADirectory(_)), "{e:?}");
    }

    pub async fn stat_file(fx: &Fixture) {
        let st = fx.p.stat(&fx.file).await.unwrap();
        assert_eq!(st.kind, EntryKind::File);
        assert_eq!(st.size, fx.bytes.len() as u64);
        assert_eq!(st.name, fx.file.rsplit('/').next().unwrap());
        assert!(
            st.mode.is_none_or(|m| m & 0o222 == 0),
            "no write bits: {:o}",
            st.mode.unwrap()
        );
        assert!(st.mtime > SystemTime::UNIX_EPOCH);
    }

    pub async fn stat_dir(fx: &Fixture) {
        let st = fx.p.stat(&fx.dir).await.unwrap();
        assert_eq!(st.kind, EntryKind::Dir);
    }

    pub async fn stat_missing_is_not_found(fx: &Fixture) {
        let e = expect_err(fx, "stat", fx.p.stat(&format!("{}.missing", fx.file)).await);
        assert!(matches!(e, ProviderError::NotFound(_)), "{e:?}");
    }

    pub async fn read_whole(fx: &Fixture) {
        assert!(read(fx, &fx.file, 0, u64::MAX).await.unwrap() == fx.bytes);
    }

    pub async fn read_start(fx: &Fixture) {
        assert_eq!(
            read(fx, &fx.file, 0, 1000).await.unwrap(),
            &fx.bytes[..1000]
        );
    }

    pub async fn read_middle(fx: &Fixture) {
        assert_eq!(
            read(fx, &fx.file, 77_777, 12_345).await.unwrap(),
            &fx.bytes[77_777..90_122]
        );
    }

    pub async fn read_end(fx: &Fixture) {
        let n = fx.bytes.len() as u64;
        assert_eq!(
            read(fx, &fx.file, n - 100, 4096).await.unwrap(),
            &fx.bytes[fx.bytes.len() - 100..]
        );
    }

    pub async fn read_past_eof(fx: &Fixture) {
        let n = fx.bytes.len() as u64;
        assert!(read(fx, &fx.file, n + 10, 100).await.unwrap().is_empty());
    }

    pub async fn read_zero_len(fx: &Fixture) {
        assert!(read(fx, &fx.file, 5, 0).await.unwrap().is_empty());
    }

    pub async fn read_at_the_listed_revision(fx: &Fixture) {
        let rev = fx.p.stat(&fx.file).await.unwrap().revision;
        let bytes = collect_stream(fx.p.read_range(&fx.file, Some(&rev), 10, 20).await.unwrap())
            .await
            .unwrap();
        assert_eq!(bytes, &fx.bytes[10..30]);
    }

    pub async fn read_missing_or_dir(fx: &Fixture) {
        let e = expect_err(
            fx,
            "read missing",
            read(fx, &format!("{}.missing", fx.file), 0, 10).await,
        );
        assert!(matches!(e, ProviderError::NotFound(_)), "{e:?}");
        let e = expect_err(fx, "read folder", read(fx, &fx.dir, 0, 10).await);
        assert!(matches!(e, ProviderError::IsADirectory(_)), "{e:?}");
    }

    pub async fn every_change_is_refused(fx: &Fixture) {
        let p = &fx.p;
        let new = format!("{}/new", fx.dir.trim_end_matches('/'));
        let refused = [
            p.upload(&new, Path::new("/dev/null"), &UploadOptions::default())
                .await
                .err(),
            p.mkdir(&new).await.err(),
            p.rename(&fx.file, &new, false).await.err(),
            p.copy(&fx.file, &new).await.err(),
            p.symlink(&new, "x").await.err(),
            p.delete(&fx.file).await.err(),
            p.set_mode(&fx.file, 0o600).await.err(),
            p.set_mtime(&fx.file, SystemTime::now()).await.err(),
        ];
        for e in refused {
            match e {
                Some(ProviderError::PermissionDenied(m)) => assert!(m.contains("read-only"), "{m}"),
                other => panic!("{}: expected a read-only refusal, got {other:?}", p.kind()),
            }
        }
        // And nothing changed.
        assert!(read(fx, &fx.file, 0, u64::MAX).await.unwrap() == fx.bytes);
    }
}

macro_rules! readonly_contract {
    (cases $cases:tt backends [$($(#[$doc:meta])* $backend:ident),* $(,)?]) => {
        $(readonly_contract!(@backend $(#[$doc])* $backend, $cases);)*
    };
    (@backend $(#[$doc:meta])* $backend:ident, [$($case:ident),* $(,)?]) => {
        $(#[$doc])*
        mod $backend {
            $(
                #[tokio::test]
                async fn $case() {
                    let fx = super::$backend().await;
                    super::cases::$case(&fx).await;
                }
            )*
        }
    };
}

readonly_contract! {
    cases [
        says_it_is_read_only,
        list_a_folder_exactly,
        list_missing_is_not_found,
        list_file_is_not_a_directory,
        stat_file,
        stat_dir,
        stat_missing_is_not_found,
        read_whole,
        read_start,
        read_middle,
        read_end,
        read_past_eof,
        read_zero_len,
        read_at_the_listed_revision,
        read_missing_or_dir,
        every_change_is_refused,
    ]
    backends [
        /// Confluence (the emulator): a page's attachments.
        confluence,
        /// Jira (the emulator): an issue's attachments.
        jira,
        /// IMAP (a real Dovecot): the mailboxes and a message.
        imap,
    ]
}
