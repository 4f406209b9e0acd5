//! The IMAP provider against a real Dovecot (tests/support/dovecot.rs): mailboxes as
//! folders, messages as files named by date, subject and UID, byte-exact reads (whole and
//! ranged), and nothing changed on the server by reading (`\Seen` stays unset).

mod common;
#[path = "support/dovecot.rs"]
mod dovecot;

use std::os::unix::fs::PermissionsExt;

use cloudmount::provider::imap::{ImapConfig, ImapProvider};
use cloudmount::provider::{collect_stream, EntryKind, Provider, ProviderError};
use dovecot::Dovecot;
use futures::StreamExt;

fn provider(d: &Dovecot, dir: &tempfile::TempDir) -> ImapProvider {
    let pw = dir.path().join("password");
    std::fs::write(&pw, &d.password).unwrap();
    std::fs::set_permissions(&pw, std::fs::Permissions::from_mode(0o600)).unwrap();
    ImapProvider::new(ImapConfig {
        host: "127.0.0.1".into(),
        port: d.port,
        user: d.user.clone(),
        password_file: pw,
    })
    .unwrap()
}

async fn names(p: &ImapProvider, dir: &str) -> Vec<(String, EntryKind, u64)> {
    let mut out = Vec::new();
    let mut s = p.list(dir);
    while let Some(page) = s.next().await {
        out.extend(page.unwrap().into_iter().map(|e| (e.name, e.kind, e.size)));
    }
    out.sort_by(|a, b| a.0.cmp(&b.0));
    out
}

const PLAIN: &[u8] = b"From: Ann <ann@example.com>\r\nTo: bob@example.com\r\nSubject: =?UTF-8?B?R3LDvMOfZQ==?= / hello\r\nDate: Tue, 2 Jan 2024 11:30:00 +0100\r\n\r\nHello Bob,\r\nthis is the body.\r\n";

#[tokio::test]
async fn mailboxes_are_folders_and_messages_read_back_byte_exact_without_being_seen() {
    let d = Dovecot::start();
    let tmp = tempfile::tempdir().unwrap();
    d.create_mailbox("Archive/2024");
    let first = d.append_with("INBOX", &[], Some("02-Jan-2024 11:30:00 +0100"), PLAIN);
    let archived = b"Subject: old\r\n\r\nold mail\r\n";
    d.append("Archive/2024", archived);
    let p = provider(&d, &tmp);
    assert!(!p.capabilities().writable);

    let root = names(&p, "/").await;
    assert_eq!(
        root,
        [
            ("Archive".to_owned(), EntryKind::Dir, 0),
            ("INBOX".to_owned(), EntryKind::Dir, 0)
        ]
    );
    assert_eq!(names(&p, "/Archive").await[0].0, "2024");
    let inbox = names(&p, "/INBOX").await;
    let want = format!("2024-01-02 1030 Grüße ∕ hello [u{}].eml", first.uid);
    assert_eq!(inbox, [(want.clone(), EntryKind::File, PLAIN.len() as u64)]);

    let path = format!("/INBOX/{want}");
    let whole = collect_stream(p.read_range(&path, None, 0, u64::MAX).await.unwrap())
        .await
        .unwrap();
    assert_eq!(whole, PLAIN);
    let part = collect_stream(p.read_range(&path, None, 10, 20).await.unwrap())
        .await
        .unwrap();
    assert_eq!(part, &PLAIN[10..30]);
    let past = collect_stream(p.read_range(&path, None, 5000, 10).await.unwrap())
        .await
        .unwrap();
    assert!(past.is_empty());
    assert!(
        !d.is_seen("INBOX", first.uid),
        "reading must not set \\Seen"
    );

    let old = names(&p, "/Archive/2024").await;
    let old_path = format!("/Archive/2024/{}", old[0].0);
    assert_eq!(
        collect_stream(p.read_range(&old_path, None, 0, u64::MAX).await.unwrap())
            .await
            .unwrap(),
        archived
    );
    assert!(matches!(
        p.stat("/Nope").await,
        Err(ProviderError::NotFound(_))
    ));
    assert!(matches!(
        p.mkdir("/INBOX/x").await,
        Err(ProviderError::PermissionDenied(_))
    ));
}

/// Through the kernel: the account mounted read-only, `ls`, `cat`, `grep -r` over the
/// mount, and EROFS for every change.
#[test]
fn mail_through_the_mount_is_read_only() {
    let d = Dovecot::start();
    let tmp = tempfile::tempdir().unwrap();
    d.append("INBOX", PLAIN);
    d.append("INBOX", b"Subject: invoice\r\n\r\nPlease pay 42 EUR.\r\n");
    let rt = tokio::runtime::Runtime::new().unwrap();
    let p: std::sync::Arc<dyn Provider> = {
        let _inside = rt.enter();
        std::sync::Arc::new(provider(&d, &tmp))
    };
    let m = common::InProcessMount::new(p, common::test_config(|_| {}));
    let inbox: Vec<String> = std::fs::read_dir(m.path("INBOX"))
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    assert_eq!(inbox.len(), 2, "{inbox:?}");
    let invoice = inbox.iter().find(|n| n.contains("invoice")).unwrap();
    assert_eq!(
        std::fs::read(m.path(&format!("INBOX/{invoice}"))).unwrap(),
        b"Subject: invoice\r\n\r\nPlease pay 42 EUR.\r\n"
    );
    let out = std::process::Command::new("grep")
        .args(["-rl", "42 EUR"])
        .arg(m.mnt())
        .output()
        .unwrap();
    let hits = String::from_utf8_lossy(&out.stdout);
    assert_eq!(hits.lines().count(), 1, "{hits}");
    assert!(hits.contains("invoice"));
    for r in [
        std::fs::write(m.path("INBOX/new.eml"), b"x"),
        std::fs::create_dir(m.path("INBOX/sub")),
        std::fs::remove_file(m.path(&format!("INBOX/{invoice}"))),
    ] {
        assert_eq!(r.unwrap_err().raw_os_error(), Some(libc::EROFS));
    }
}
