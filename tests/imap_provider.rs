//! The IMAP provider against a real Dovecot (tests/support/dovecot.rs): mailboxes as
//! folders, messages as files named by date, subject and UID, byte-exact reads (whole and
//! ranged), and nothing changed on the server by reading (`\Seen` stays unset).

mod common;
#[path = "support/dovecot.rs"]
mod dovecot;

use std::os::unix::fs::PermissionsExt;

use cloudmount::accounts::{AccountError, BearerTokens};
use cloudmount::provider::imap::{AuthMethod, ImapConfig, ImapProvider, TlsMode};
use cloudmount::provider::{collect_stream, EntryKind, Provider, ProviderError};
use cloudmount::secrets::Secret;
use dovecot::Dovecot;
use futures::StreamExt;

fn password_file(d: &Dovecot, dir: &tempfile::TempDir) -> std::path::PathBuf {
    let pw = dir.path().join("password");
    std::fs::write(&pw, &d.password).unwrap();
    std::fs::set_permissions(&pw, std::fs::Permissions::from_mode(0o600)).unwrap();
    pw
}

fn provider(d: &Dovecot, dir: &tempfile::TempDir) -> ImapProvider {
    let cfg = ImapConfig::loopback(d.port, &d.user, password_file(d, dir));
    ImapProvider::new(cfg, Some(dir.path().join("index")), None).unwrap()
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

/// `data` in base64, 76 characters a line, as mailers write it.
fn base64_lines(data: &[u8]) -> String {
    use base64::Engine;
    let b = base64::engine::general_purpose::STANDARD.encode(data);
    b.as_bytes()
        .chunks(76)
        .map(|l| format!("{}\r\n", std::str::from_utf8(l).unwrap()))
        .collect()
}

/// Bytes that are not text, different for each seed.
fn binary(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u32).wrapping_mul(2_654_435_761).to_be_bytes()[0] ^ seed)
        .collect()
}

/// A message with a text body and five attachments: two called the same, one with an
/// RFC 2231 UTF-8 name (quoted-printable), an inline image with an RFC 2047 name, and an
/// attached message. Returns the message and the attachments' expected (name, content).
/// (The line break before a boundary belongs to the boundary, RFC 2046 §5.1.1: a part
/// that ends in one has a second.)
fn with_attachments() -> (Vec<u8>, Vec<(String, Vec<u8>)>) {
    let pdf1 = binary(3000, 1);
    let pdf2 = binary(1234, 2);
    let png = binary(500, 3);
    let inner = b"From: x@example.com\r\nSubject: inner\r\n\r\nforwarded body\r\n".to_vec();
    let text = "Grüße aus Köln\r\nzweite Zeile = ok\r\n";
    let qp = "Gr=C3=BC=C3=9Fe aus K=C3=B6ln\r\nzweite Zeile =3D ok\r\n";
    let b = "XyZboundary";
    let msg = format!(
        "From: Ann <ann@example.com>\r\nSubject: documents\r\nMIME-Version: 1.0\r\n\
         Content-Type: multipart/mixed; boundary=\"{b}\"\r\n\r\n\
         --{b}\r\nContent-Type: text/plain; charset=utf-8\r\n\r\nSee attached.\r\n\
         --{b}\r\nContent-Type: application/pdf; name=\"report.pdf\"\r\n\
         Content-Transfer-Encoding: base64\r\n\
         Content-Disposition: attachment; filename=\"report.pdf\"\r\n\r\n{}\
         --{b}\r\nContent-Type: application/pdf\r\nContent-Transfer-Encoding: base64\r\n\
         Content-Disposition: attachment; filename=\"report.pdf\"\r\n\r\n{}\
         --{b}\r\nContent-Type: text/plain; charset=utf-8\r\n\
         Content-Transfer-Encoding: quoted-printable\r\n\
         Content-Disposition: attachment; filename*=utf-8''Gr%C3%BC%C3%9Fe.txt\r\n\r\n{qp}\r\n\
         --{b}\r\nContent-Type: image/png; name=\"=?UTF-8?B?w6TDtsO8LnBuZw==?=\"\r\n\
         Content-Transfer-Encoding: base64\r\nContent-Disposition: inline\r\n\r\n{}\
         --{b}\r\nContent-Type: message/rfc822\r\n\r\n{}\r\n\
         --{b}--\r\n",
        base64_lines(&pdf1),
        base64_lines(&pdf2),
        base64_lines(&png),
        String::from_utf8(inner.clone()).unwrap(),
    );
    (
        msg.into_bytes(),
        vec![
            ("report.pdf".into(), pdf1),
            ("report (2).pdf".into(), pdf2),
            ("Grüße.txt".into(), text.as_bytes().to_vec()),
            ("äöü.png".into(), png),
            ("message 6.eml".into(), inner),
        ],
    )
}

async fn read_all(p: &ImapProvider, path: &str) -> Vec<u8> {
    collect_stream(p.read_range(path, None, 0, u64::MAX).await.unwrap())
        .await
        .unwrap()
}

#[tokio::test]
async fn attachments_are_files_beside_their_message_read_byte_exact() {
    let d = Dovecot::start();
    let tmp = tempfile::tempdir().unwrap();
    let (msg, expected) = with_attachments();
    let with = d.append("INBOX", &msg);
    let plain = d.append("INBOX", PLAIN);
    let p = provider(&d, &tmp);

    let inbox = names(&p, "/INBOX").await;
    let dirs: Vec<&String> = inbox
        .iter()
        .filter(|(_, k, _)| *k == EntryKind::Dir)
        .map(|(n, _, _)| n)
        .collect();
    // Only the message with attachments has a folder.
    assert_eq!(dirs.len(), 1, "{inbox:?}");
    assert!(dirs[0].ends_with(&format!("documents [u{}].d", with.uid)));
    assert!(!inbox
        .iter()
        .any(|(n, _, _)| n.ends_with(&format!("[u{}].d", plain.uid))));

    let folder = format!("/INBOX/{}", dirs[0]);
    let listed = names(&p, &folder).await;
    let mut want: Vec<&str> = expected.iter().map(|(n, _)| n.as_str()).collect();
    want.sort();
    assert_eq!(
        listed
            .iter()
            .map(|(n, _, _)| n.as_str())
            .collect::<Vec<_>>(),
        want
    );
    for (name, content) in &expected {
        let path = format!("{folder}/{name}");
        // Encoded parts list as size 0 (not known yet); stat, asked on open, knows.
        let entry = p.stat(&path).await.unwrap();
        assert_eq!(entry.size, content.len() as u64, "{name}");
        assert_eq!(&read_all(&p, &path).await, content, "{name}");
        let part = collect_stream(p.read_range(&path, None, 7, 100).await.unwrap())
            .await
            .unwrap();
        let end = content.len().min(107);
        assert_eq!(part, &content[7.min(end)..end], "{name} from 7");
    }
    assert!(!d.is_seen("INBOX", with.uid), "reading must not set \\Seen");
    assert!(matches!(
        p.stat(&format!("{folder}/nope.pdf")).await,
        Err(ProviderError::NotFound(_))
    ));
}

/// The second listing asks only for what is new: the index on disk is used (a name
/// changed in it shows through), new mail is added, expunged mail removed, and a new
/// UIDVALIDITY throws the index away.
#[tokio::test]
async fn listings_come_from_the_index_and_follow_new_expunged_and_renumbered_mail() {
    let d = Dovecot::start();
    let tmp = tempfile::tempdir().unwrap();
    let a = d.append("INBOX", b"Subject: first\r\n\r\none\r\n");
    let b = d.append("INBOX", b"Subject: second\r\n\r\ntwo\r\n");
    {
        let p = provider(&d, &tmp);
        assert_eq!(names(&p, "/INBOX").await.len(), 2);
    }
    // The index is what names the messages now: prove it is read, not fetched again.
    let index_dir = tmp.path().join("index");
    let file = std::fs::read_dir(&index_dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.extension().is_some_and(|x| x == "json"))
        .unwrap();
    let text = std::fs::read_to_string(&file).unwrap();
    std::fs::write(&file, text.replace("first", "from the index")).unwrap();

    let p = provider(&d, &tmp);
    let cursor = p.changes_cursor().await.unwrap();
    let listed = names(&p, "/INBOX").await;
    assert!(
        listed.iter().any(|(n, _, _)| n.contains("from the index")),
        "{listed:?}"
    );

    d.delete_message("INBOX", b.uid);
    let c = d.append("INBOX", b"Subject: third\r\n\r\nthree\r\n");
    let batch = p.changes_since(&cursor).await.unwrap();
    assert_eq!(batch.changes.len(), 1, "{:?}", batch.changes);
    let listed: Vec<String> = names(&p, "/INBOX").await.into_iter().map(|e| e.0).collect();
    assert_eq!(listed.len(), 2, "{listed:?}");
    assert!(listed
        .iter()
        .any(|n| n.ends_with(&format!("[u{}].eml", a.uid))));
    assert!(listed
        .iter()
        .any(|n| n.contains("third") && n.ends_with(&format!("[u{}].eml", c.uid))));
    // Nothing changed since: nothing reported.
    assert!(p
        .changes_since(&batch.cursor)
        .await
        .unwrap()
        .changes
        .is_empty());

    let old_path = format!(
        "/INBOX/{}",
        listed.iter().find(|n| n.contains("third")).unwrap()
    );
    let old_revision = p.stat(&old_path).await.unwrap().revision;
    d.force_uidvalidity_change("INBOX");
    let batch2 = p.changes_since(&batch.cursor).await.unwrap();
    assert_eq!(batch2.changes.len(), 1);
    let relisted: Vec<String> = names(&p, "/INBOX").await.into_iter().map(|e| e.0).collect();
    assert_eq!(relisted.len(), 2);
    assert!(
        !relisted.iter().any(|n| n.contains("from the index")),
        "a new UIDVALIDITY must drop the index: {relisted:?}"
    );
    // The old name's revision belongs to the old UIDVALIDITY.
    assert!(p
        .read_range(&old_path, Some(&old_revision), 0, 10)
        .await
        .is_err());
}

#[tokio::test]
async fn new_mailboxes_and_idle_wake_the_poller() {
    let d = Dovecot::start();
    let tmp = tempfile::tempdir().unwrap();
    let p = provider(&d, &tmp);
    let cursor = p.changes_cursor().await.unwrap();
    d.create_mailbox("Projects/2025");
    let batch = p.changes_since(&cursor).await.unwrap();
    let paths: Vec<String> = batch
        .changes
        .iter()
        .map(|c| match c {
            cloudmount::provider::Change::Upserted { path, .. } => path.clone(),
            cloudmount::provider::Change::Removed { path } => path.clone(),
        })
        .collect();
    assert!(paths.contains(&"/Projects/2025".to_owned()), "{paths:?}");
    assert!(paths.contains(&"/Projects".to_owned()), "{paths:?}");

    // A stale cursor: told at once.
    d.append("INBOX", b"Subject: x\r\n\r\nx\r\n");
    let started = std::time::Instant::now();
    assert!(p.wait_for_changes(&batch.cursor).await.unwrap());
    assert!(started.elapsed() < std::time::Duration::from_secs(5));

    // Up to date: IDLE waits until mail arrives.
    let fresh = p.changes_cursor().await.unwrap();
    let port = d.port;
    let (user, pass) = (d.user.clone(), d.password.clone());
    let sender = std::thread::spawn(move || {
        std::thread::sleep(std::time::Duration::from_millis(800));
        let mut c = dovecot::Imap::connect(port);
        c.login(&user, &pass);
        c.append("INBOX", &[], None, b"Subject: y\r\n\r\ny\r\n");
    });
    let started = std::time::Instant::now();
    let woke = tokio::time::timeout(
        std::time::Duration::from_secs(30),
        p.wait_for_changes(&fresh),
    )
    .await
    .expect("IDLE must wake when mail arrives")
    .unwrap();
    sender.join().unwrap();
    assert!(woke);
    assert!(started.elapsed() >= std::time::Duration::from_millis(700));
}

#[tokio::test]
async fn tls_implicit_and_starttls_with_the_servers_ca_and_never_clear_text_off_loopback() {
    let d = Dovecot::start_with(dovecot::DovecotOptions {
        tls: true,
        ..Default::default()
    });
    let tmp = tempfile::tempdir().unwrap();
    d.append("INBOX", PLAIN);
    for (tls, port) in [
        (TlsMode::Implicit, d.imaps_port),
        (TlsMode::Starttls, d.port),
    ] {
        let mut cfg = ImapConfig::loopback(port, &d.user, password_file(&d, &tmp));
        cfg.host = "localhost".into();
        cfg.tls = tls;
        cfg.ca_file = d.ca_file.clone();
        let p = ImapProvider::new(cfg.clone(), None, None).unwrap();
        let inbox = names(&p, "/INBOX").await;
        assert_eq!(inbox.len(), 1, "{tls:?}");
        assert_eq!(read_all(&p, &format!("/INBOX/{}", inbox[0].0)).await, PLAIN);
        // Without the CA the server is not trusted: no login, no listing.
        cfg.ca_file = None;
        let untrusted = ImapProvider::new(cfg, None, None).unwrap();
        let mut s = untrusted.list("/INBOX");
        let err = s.next().await.unwrap().unwrap_err();
        assert!(matches!(err, ProviderError::Auth(_)), "{tls:?}: {err:?}");
    }
    let mut clear = ImapConfig::loopback(143, "u", tmp.path().join("password"));
    clear.host = "mail.example.com".into();
    assert!(matches!(
        ImapProvider::new(clear, None, None),
        Err(ProviderError::Unsupported(_))
    ));
}

/// A 20 MiB message reads back byte-exact, whole and from the middle.
#[tokio::test]
async fn a_20_mib_message_reads_back_byte_exact() {
    let d = Dovecot::start();
    let tmp = tempfile::tempdir().unwrap();
    let mut big = b"Subject: big\r\nContent-Type: application/octet-stream\r\nContent-Transfer-Encoding: base64\r\n\r\n".to_vec();
    big.extend_from_slice(base64_lines(&binary(15 << 20, 9)).as_bytes());
    assert!(big.len() > 20 << 20);
    d.append("INBOX", &big);
    let p = provider(&d, &tmp);
    let inbox = names(&p, "/INBOX").await;
    assert_eq!(inbox[0].2, big.len() as u64);
    let path = format!("/INBOX/{}", inbox[0].0);
    let mut got = Vec::new();
    let chunk = 4 << 20;
    while got.len() < big.len() {
        let piece = collect_stream(
            p.read_range(&path, None, got.len() as u64, chunk)
                .await
                .unwrap(),
        )
        .await
        .unwrap();
        assert!(!piece.is_empty());
        got.extend_from_slice(&piece);
    }
    assert!(got == big, "the 20 MiB message differs");
}

/// Access tokens for the XOAUTH2 test: hands out `first`, then `fresh` once told the
/// token was refused; counts the refusals.
struct Tokens {
    first: &'static str,
    fresh: &'static str,
    refused: std::sync::atomic::AtomicUsize,
}

#[async_trait::async_trait]
impl BearerTokens for Tokens {
    async fn access_token(&self) -> Result<Secret, AccountError> {
        Ok(Secret::new(self.first))
    }
    async fn token_rejected(&self, _rejected: &Secret) -> Result<Secret, AccountError> {
        self.refused
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        Ok(Secret::new(self.fresh))
    }
}

/// XOAUTH2 against Dovecot's oauth2 passdb, which asks the test's introspection
/// endpoint: a refused token is renewed once and the login tried again; a login that
/// stays refused is an authentication error, not a retry loop.
#[tokio::test]
async fn xoauth2_logs_in_with_the_access_token_and_renews_a_refused_one_once() {
    let d = Dovecot::start_with(dovecot::DovecotOptions {
        xoauth2_introspection_url: Some(dovecot::start_introspection_endpoint()),
        ..Default::default()
    });
    d.append("INBOX", PLAIN);
    let mut cfg = ImapConfig::loopback(d.port, &d.user, "/nonexistent".into());
    cfg.password_file = None;
    cfg.auth = AuthMethod::Xoauth2;
    let tokens = std::sync::Arc::new(Tokens {
        first: "stale-token",
        fresh: "good-token",
        refused: 0.into(),
    });
    let p = ImapProvider::new(cfg.clone(), None, Some(tokens.clone())).unwrap();
    let inbox = names(&p, "/INBOX").await;
    assert_eq!(inbox.len(), 1);
    assert_eq!(read_all(&p, &format!("/INBOX/{}", inbox[0].0)).await, PLAIN);
    assert_eq!(tokens.refused.load(std::sync::atomic::Ordering::SeqCst), 1);

    let never = std::sync::Arc::new(Tokens {
        first: "stale-token",
        fresh: "still-stale",
        refused: 0.into(),
    });
    let p = ImapProvider::new(cfg.clone(), None, Some(never.clone())).unwrap();
    let err = p.list("/INBOX").next().await.unwrap().unwrap_err();
    assert!(matches!(err, ProviderError::Auth(_)), "{err:?}");
    assert_eq!(never.refused.load(std::sync::atomic::Ordering::SeqCst), 1);
    // Without a login there is nothing to try.
    assert!(matches!(
        ImapProvider::new(cfg, None, None),
        Err(ProviderError::Auth(_))
    ));
}

/// With QRESYNC (Dovecot has it), listing again asks only for what changed since the
/// last listing's HIGHESTMODSEQ: nothing at all when nothing changed, `CHANGEDSINCE` with
/// `VANISHED` otherwise — never every UID (`UID SEARCH ALL`). Seen through a proxy that
/// records the commands.
#[tokio::test]
async fn with_qresync_listing_again_asks_only_what_changed() {
    let d = Dovecot::start();
    let tmp = tempfile::tempdir().unwrap();
    let a = d.append("INBOX", b"Subject: a\r\n\r\na\r\n");
    let b = d.append("INBOX", b"Subject: b\r\n\r\nb\r\n");
    let proxy = dovecot::ImapProxy::start(d.port, 0);
    let cfg = ImapConfig::loopback(proxy.port, &d.user, password_file(&d, &tmp));
    let p = ImapProvider::new(cfg, Some(tmp.path().join("index")), None).unwrap();
    assert_eq!(names(&p, "/INBOX").await.len(), 2);
    let first = proxy.take_commands();
    assert!(
        first.iter().any(|c| c.contains("ENABLE QRESYNC")),
        "{first:?}"
    );

    // Nothing changed: EXAMINE says so (HIGHESTMODSEQ), and nothing more is asked.
    assert_eq!(names(&p, "/INBOX").await.len(), 2);
    let quiet = proxy.take_commands();
    assert!(
        !quiet
            .iter()
            .any(|c| c.contains("FETCH") || c.contains("SEARCH")),
        "{quiet:?}"
    );

    d.delete_message("INBOX", a.uid);
    let c = d.append("INBOX", b"Subject: c\r\n\r\nc\r\n");
    d.set_flags("INBOX", b.uid, &["\\Flagged"], true);
    let listed: Vec<String> = names(&p, "/INBOX").await.into_iter().map(|e| e.0).collect();
    assert_eq!(listed.len(), 2, "{listed:?}");
    assert!(listed
        .iter()
        .any(|n| n.ends_with(&format!("[u{}].eml", b.uid))));
    assert!(listed
        .iter()
        .any(|n| n.ends_with(&format!("[u{}].eml", c.uid))));
    let changed = proxy.take_commands();
    assert!(
        changed
            .iter()
            .any(|l| l.contains("CHANGEDSINCE") && l.contains("VANISHED")),
        "{changed:?}"
    );
    assert!(!changed.iter().any(|l| l.contains("SEARCH")), "{changed:?}");
}

/// A connection the server dropped while it was unused (here: Dovecot restarted) is
/// noticed before use and made again, so the next listing does not fail.
#[tokio::test]
async fn a_connection_dropped_while_idle_is_made_again_before_use() {
    let mut d = Dovecot::start();
    let tmp = tempfile::tempdir().unwrap();
    d.append("INBOX", PLAIN);
    let mut cfg = ImapConfig::loopback(d.port, &d.user, password_file(&d, &tmp));
    // Check every time (the default waits a minute of disuse).
    cfg.idle_check_secs = 0;
    let p = ImapProvider::new(cfg, None, None).unwrap();
    assert_eq!(names(&p, "/INBOX").await.len(), 1);
    d.restart();
    d.append("INBOX", b"Subject: after\r\n\r\nafter the restart\r\n");
    assert_eq!(names(&p, "/INBOX").await.len(), 2);
}

/// A connection that ends in the middle of an answer is not an empty answer: async-imap
/// ends a SEARCH or FETCH quietly at end of stream, and a mailbox must not look emptied
/// (nor its index be saved empty) because the network failed. Cut by a proxy at the
/// `* SEARCH` reply of a first listing and at the `FETCH` of a later one.
#[tokio::test]
async fn an_answer_cut_by_the_network_is_an_error_not_an_empty_mailbox() {
    let d = Dovecot::start();
    let tmp = tempfile::tempdir().unwrap();
    let a = d.append("INBOX", b"Subject: a\r\n\r\na\r\n");
    d.append("INBOX", b"Subject: b\r\n\r\nb\r\n");
    let proxy = dovecot::ImapProxy::start(d.port, 0);
    let cfg = ImapConfig::loopback(proxy.port, &d.user, password_file(&d, &tmp));
    let p = ImapProvider::new(cfg, Some(tmp.path().join("index")), None).unwrap();

    proxy.cut_once_at("* SEARCH");
    let first = p.list("/INBOX").next().await.unwrap();
    assert!(
        matches!(first, Err(ProviderError::Transient(_))),
        "{first:?}"
    );
    // Asked again (a new connection): everything is there.
    assert_eq!(names(&p, "/INBOX").await.len(), 2);

    // New mail, and the answer with its metadata cut: an error, and the mailbox as it was.
    d.delete_message("INBOX", a.uid);
    d.append("INBOX", b"Subject: c\r\n\r\nc\r\n");
    proxy.cut_once_at("FETCH (");
    let cut = p.list("/INBOX").next().await.unwrap();
    assert!(matches!(cut, Err(ProviderError::Transient(_))), "{cut:?}");
    let listed: Vec<String> = names(&p, "/INBOX").await.into_iter().map(|e| e.0).collect();
    assert_eq!(listed.len(), 2, "{listed:?}");
    assert!(listed.iter().any(|n| n.contains(" c [u")), "{listed:?}");
    assert!(
        !listed.iter().any(|n| n.contains("1970-01-01")),
        "{listed:?}"
    );
}
