//! An IMAP account mounted by the real daemon from a config file, against a real Dovecot
//! (tests/support/dovecot.rs), through the kernel: names, sizes and byte-exact reads of
//! messages and attachments, `grep -r`, new mail arriving by IDLE and by polling, expunged
//! mail going, a new UIDVALIDITY, EROFS for every change, `\Seen` never set, and a
//! restart with the server down that still lists and reads what was cached.

mod common;
#[path = "support/dovecot.rs"]
mod dovecot;

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::{DaemonMount, TestDirs};
use dovecot::Dovecot;

/// A config mounting the Dovecot account as connection "mail"; `extra` goes into the
/// connection's settings, `top` at the top of the file.
fn config(d: &Dovecot, dirs: &TestDirs, top: &str, extra: &str) -> PathBuf {
    let pw = dirs.tmp.path().join("imap-password");
    fs::write(&pw, &d.password).unwrap();
    fs::set_permissions(&pw, fs::Permissions::from_mode(0o600)).unwrap();
    let path = dirs.tmp.path().join("config.toml");
    fs::write(
        &path,
        format!(
            "{top}\n[[connection]]\nname = \"mail\"\ntype = \"imap\"\nsettings = {{ host = \
             \"127.0.0.1\", port = {}, tls = \"none\", user = \"{}\", password_file = \"{}\"{extra} }}\n",
            d.port,
            d.user,
            pw.display()
        ),
    )
    .unwrap();
    path
}

fn names(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("read_dir {}: {e}", dir.display()))
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    v.sort();
    v
}

/// Waits until `cond` holds on the names in `dir`.
fn wait_for(dir: &Path, within: Duration, what: &str, cond: impl Fn(&[String]) -> bool) {
    let start = Instant::now();
    loop {
        let now = names(dir);
        if cond(&now) {
            return;
        }
        assert!(
            start.elapsed() < within,
            "{what}: still {now:?} after {within:?}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn named(list: &[String], uid: u32) -> String {
    list.iter()
        .find(|n| n.ends_with(&format!("[u{uid}].eml")))
        .unwrap_or_else(|| panic!("no message u{uid} in {list:?}"))
        .clone()
}

const REPORT: &[u8] = b"Subject: =?UTF-8?Q?Quartalsbericht_f=C3=BCr_Q3?=\r\nMIME-Version: 1.0\r\n\
Content-Type: multipart/mixed; boundary=\"b1\"\r\n\r\n--b1\r\nContent-Type: text/plain\r\n\r\n\
Numbers inside.\r\n--b1\r\nContent-Type: text/csv; name=\"q3.csv\"\r\n\
Content-Disposition: attachment; filename=\"q3.csv\"\r\n\r\nmonth,revenue\r\njul,17\r\n\r\n\
--b1\r\nContent-Type: application/octet-stream\r\nContent-Transfer-Encoding: base64\r\n\
Content-Disposition: attachment; filename=\"blob.bin\"\r\n\r\nAAECAwQFBgcICf8=\r\n--b1--\r\n";

const HTML: &[u8] = b"Subject: newsletter\r\nMIME-Version: 1.0\r\nContent-Type: text/html; charset=utf-8\r\n\r\n<html><body><h1>News</h1><p>Caf\xc3\xa9 opens</p></body></html>\r\n";

/// Reading (plain, HTML, 20 MiB whole and ranged), attachments, grep, EROFS; new mail by IDLE (the poll interval is 5 minutes,
/// so only IDLE can bring it); `\Seen` untouched; then a restart with Dovecot stopped:
/// the listing and the messages read before are still there.
#[test]
fn mail_and_attachments_read_grep_idle_and_offline_after_restart() {
    let mut d = Dovecot::start();
    let dirs = TestDirs::new();
    d.create_mailbox("Archive/2024");
    let report = d.append("INBOX", REPORT);
    let note = d.append(
        "Archive/2024",
        b"Subject: old note\r\n\r\nremember the milk\r\n",
    );
    let html_uid = d.append("INBOX", HTML).uid;
    // A 20 MiB message: read whole and from the middle through the kernel.
    let mut big = b"Subject: big one\r\nContent-Type: text/plain\r\n\r\n".to_vec();
    while big.len() < 20 << 20 {
        big.extend_from_slice(format!("line {:08} of the big message\r\n", big.len()).as_bytes());
    }
    let big_uid = d.append("INBOX", &big).uid;
    let cfg = config(&d, &dirs, "poll_interval_secs = 300.0", "");
    let m = DaemonMount::start_with_config(&dirs, &cfg, &[]);
    let root = dirs.mnt.join("mail");

    assert_eq!(names(&root), ["Archive", "INBOX"]);
    assert_eq!(names(&root.join("Archive")), ["2024"]);
    let inbox = names(&root.join("INBOX"));
    let eml = named(&inbox, report.uid);
    assert!(eml.contains("Quartalsbericht für Q3"), "{eml}");
    let folder = format!("{}.d", eml.trim_end_matches(".eml"));
    assert!(inbox.contains(&folder), "{inbox:?}");
    let meta = fs::metadata(root.join("INBOX").join(&eml)).unwrap();
    assert_eq!(meta.len(), REPORT.len() as u64);
    assert_eq!(meta.permissions().mode() & 0o222, 0, "read-only files");
    assert_eq!(fs::read(root.join("INBOX").join(&eml)).unwrap(), REPORT);

    let html = root.join("INBOX").join(named(&inbox, html_uid));
    assert_eq!(fs::read(&html).unwrap(), HTML);
    assert!(
        !inbox
            .iter()
            .any(|n| n.ends_with(&format!("[u{html_uid}].d"))),
        "{inbox:?}"
    );
    let big_file = root.join("INBOX").join(named(&inbox, big_uid));
    assert_eq!(fs::metadata(&big_file).unwrap().len(), big.len() as u64);
    {
        use std::os::unix::fs::FileExt;
        let f = fs::File::open(&big_file).unwrap();
        let mut middle = vec![0u8; 100_000];
        f.read_exact_at(&mut middle, 12_345_678).unwrap();
        assert!(
            middle == big[12_345_678..12_445_678],
            "a ranged read differs"
        );
    }
    assert!(
        fs::read(&big_file).unwrap() == big,
        "the 20 MiB message differs"
    );

    let att = root.join("INBOX").join(&folder);
    assert_eq!(names(&att), ["blob.bin", "q3.csv"]);
    assert_eq!(
        fs::read(att.join("q3.csv")).unwrap(),
        b"month,revenue\r\njul,17\r\n"
    );
    assert_eq!(
        fs::read(att.join("blob.bin")).unwrap(),
        [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 255]
    );
    // Known once read: the listing says so from now on.
    assert_eq!(fs::metadata(att.join("blob.bin")).unwrap().len(), 11);

    let out = std::process::Command::new("grep")
        .args(["-rl", "remember the milk"])
        .arg(&root)
        .output()
        .unwrap();
    let hits = String::from_utf8_lossy(&out.stdout);
    assert_eq!(hits.lines().count(), 1, "{hits}");
    assert!(
        hits.contains("Archive/2024/") && hits.contains("old note"),
        "{hits}"
    );

    for r in [
        fs::write(root.join("INBOX/new.eml"), b"x"),
        fs::create_dir(root.join("INBOX/sub")),
        fs::remove_file(root.join("INBOX").join(&eml)),
        fs::rename(root.join("INBOX").join(&eml), root.join("INBOX/x.eml")),
        fs::write(att.join("q3.csv"), b"changed"),
    ] {
        assert_eq!(r.unwrap_err().raw_os_error(), Some(libc::EROFS));
    }

    // New mail: IDLE wakes the poller long before its 5-minute tick.
    let fresh = d.append("INBOX", b"Subject: just in\r\n\r\nfresh mail\r\n");
    wait_for(
        &root.join("INBOX"),
        Duration::from_secs(20),
        "new mail by IDLE",
        |n| {
            n.iter()
                .any(|x| x.ends_with(&format!("[u{}].eml", fresh.uid)))
        },
    );
    let fresh_name = named(&names(&root.join("INBOX")), fresh.uid);
    assert_eq!(
        fs::read(root.join("INBOX").join(&fresh_name)).unwrap(),
        b"Subject: just in\r\n\r\nfresh mail\r\n"
    );
    for uid in [report.uid, fresh.uid] {
        assert!(!d.is_seen("INBOX", uid), "reading set \\Seen on u{uid}");
    }
    // Expunged: gone from the folder, with its attachments folder.
    d.delete_message("INBOX", report.uid);
    wait_for(
        &root.join("INBOX"),
        Duration::from_secs(20),
        "expunge by IDLE",
        |n| !n.iter().any(|x| x.contains(&format!("[u{}]", report.uid))),
    );
    assert!(!d.is_seen("Archive/2024", note.uid), "grep set \\Seen");
    let old_note = named(&names(&root.join("Archive/2024")), note.uid);
    assert!(m.unmount().status.success());

    // Restart with the server down: what was listed and read is still there.
    d.stop();
    let m = DaemonMount::start_with_config(&dirs, &cfg, &[]);
    let inbox = names(&root.join("INBOX"));
    assert!(inbox.contains(&fresh_name), "{inbox:?}");
    assert_eq!(
        fs::read(root.join("INBOX").join(&fresh_name)).unwrap(),
        b"Subject: just in\r\n\r\nfresh mail\r\n"
    );
    assert_eq!(
        fs::read(root.join("Archive/2024").join(&old_note)).unwrap(),
        b"Subject: old note\r\n\r\nremember the milk\r\n"
    );
    drop(m);
}

/// Without IDLE, polling: new mail in a folder other than INBOX, an expunge, and a new
/// UIDVALIDITY reach the mount. (That the index is dropped on a new UIDVALIDITY is shown
/// on the provider: Dovecot keeps the UID numbers, so the names here do not change.)
#[test]
fn polling_brings_new_and_expunged_mail() {
    let d = Dovecot::start();
    let dirs = TestDirs::new();
    d.create_mailbox("Lists");
    let a = d.append("Lists", b"Subject: a\r\n\r\na\r\n");
    let b = d.append("Lists", b"Subject: b\r\n\r\nb\r\n");
    let cfg = config(&d, &dirs, "poll_interval_secs = 0.5", ", idle = false");
    let _m = DaemonMount::start_with_config(&dirs, &cfg, &[]);
    let lists = dirs.mnt.join("mail/Lists");
    assert_eq!(names(&lists).len(), 2);

    let c = d.append("Lists", b"Subject: c\r\n\r\nc\r\n");
    d.delete_message("Lists", a.uid);
    wait_for(
        &lists,
        Duration::from_secs(20),
        "new and expunged mail",
        |n| {
            n.len() == 2
                && n.iter().any(|x| x.ends_with(&format!("[u{}].eml", c.uid)))
                && !n.iter().any(|x| x.ends_with(&format!("[u{}].eml", a.uid)))
        },
    );
    let b_now = named(&names(&lists), b.uid);
    assert_eq!(
        fs::read(lists.join(&b_now)).unwrap(),
        b"Subject: b\r\n\r\nb\r\n"
    );

    // A new UIDVALIDITY: the mailbox is listed afresh (Dovecot keeps the UID numbers, so
    // the names stay) and every message still reads right; mail arriving after it shows.
    d.force_uidvalidity_change("Lists");
    let e = d.append("Lists", b"Subject: e\r\n\r\ne\r\n");
    wait_for(
        &lists,
        Duration::from_secs(20),
        "mail after a new UIDVALIDITY",
        |n| n.iter().any(|x| x.ends_with(&format!("[u{}].eml", e.uid))),
    );
    let now = names(&lists);
    assert_eq!(now.len(), 3, "{now:?}");
    for (uid, body) in [
        (b.uid, &b"Subject: b\r\n\r\nb\r\n"[..]),
        (c.uid, b"Subject: c\r\n\r\nc\r\n"),
        (e.uid, b"Subject: e\r\n\r\ne\r\n"),
    ] {
        assert_eq!(fs::read(lists.join(named(&now, uid))).unwrap(), body);
    }
}

/// `auth = "xoauth2"` through the config, the token vault and the daemon: the login's
/// access token (saved in the vault as `cloudmount login imap` would) goes to Dovecot's
/// oauth2 passdb, and `connections` counts the connection as one that logs in.
#[test]
fn xoauth2_login_from_the_token_vault() {
    use cloudmount::accounts::{AccountId, Secret, StoredTokens, TokenVault};
    let d = Dovecot::start_with(dovecot::DovecotOptions {
        xoauth2_introspection_url: Some(dovecot::start_introspection_endpoint()),
        ..Default::default()
    });
    d.append(
        "INBOX",
        b"Subject: by oauth\r\n\r\nsigned in with a token\r\n",
    );
    let dirs = TestDirs::new();
    let accounts = dirs.tmp.path().join("accounts");
    let expires = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
        + 3600;
    TokenVault::open(&accounts)
        .unwrap()
        .save(
            &AccountId::new("imap", "mail").unwrap(),
            &StoredTokens {
                access_token: Some(Secret::new("good-token")),
                access_expires_at: Some(expires),
                refresh_token: Some(Secret::new("a-refresh-token")),
                scopes: vec!["https://mail.google.com/".into()],
                needs_login: None,
            },
        )
        .unwrap();
    let cfg = dirs.tmp.path().join("config.toml");
    fs::write(
        &cfg,
        format!(
            "accounts_dir = \"{}\"\n[[connection]]\nname = \"mail\"\ntype = \"imap\"\n\
             settings = {{ host = \"127.0.0.1\", port = {}, tls = \"none\", user = \"{}\", \
             auth = \"xoauth2\", client_id = \"test-client\", token_url = \"http://127.0.0.1:9/token\" }}\n",
            accounts.display(),
            d.port,
            d.user
        ),
    )
    .unwrap();
    // At trace level: nothing the IMAP library logs may carry the token.
    let m = DaemonMount::start_traced(&dirs, &cfg);
    let inbox = names(&dirs.mnt.join("mail/INBOX"));
    assert_eq!(inbox.len(), 1, "{inbox:?}");
    assert_eq!(
        fs::read(dirs.mnt.join("mail/INBOX").join(&inbox[0])).unwrap(),
        b"Subject: by oauth\r\n\r\nsigned in with a token\r\n"
    );
    let listed = m.cli(&["connections", "--config", cfg.to_str().unwrap()]);
    let text = String::from_utf8_lossy(&listed.stdout);
    assert!(
        text.contains("mail") && text.contains("logged in"),
        "{text}"
    );
    let log = m.log_text();
    assert!(log.contains("TRACE"), "the daemon logged at trace level");
    // Sent base64-encoded (SASL): neither form may appear.
    let sasl = {
        use base64::Engine;
        base64::engine::general_purpose::STANDARD
            .encode(format!("user={}\x01auth=Bearer good-token\x01\x01", d.user))
    };
    assert!(
        !log.contains("good-token") && !log.contains(&sasl),
        "the access token must never be logged"
    );
}

/// Servers whose RFC822.SIZE is wrong (a proxy in front of Dovecot adds to every size,
/// or takes from it): the listing shows the server's number, and opening a message finds
/// its true size, which wins — the whole message reads, nothing cut and nothing padded —
/// and stays for later listings.
#[test]
fn a_wrong_rfc822_size_gives_way_to_the_true_size_when_a_message_is_opened() {
    let d = Dovecot::start();
    let body: &[u8] = b"Subject: sized wrong\r\n\r\nthe server's size for this is not its size\r\n";
    let uid = d.append("INBOX", body).uid;
    for delta in [40i64, -20] {
        let port = dovecot::ImapProxy::start(d.port, delta).port;
        let tmp = tempfile::tempdir().unwrap();
        let pw = tmp.path().join("pw");
        fs::write(&pw, &d.password).unwrap();
        fs::set_permissions(&pw, fs::Permissions::from_mode(0o600)).unwrap();
        let rt = tokio::runtime::Runtime::new().unwrap();
        let provider: std::sync::Arc<dyn cloudmount::provider::Provider> = {
            let _inside = rt.enter();
            std::sync::Arc::new(
                cloudmount::provider::imap::ImapProvider::new(
                    cloudmount::provider::imap::ImapConfig::loopback(port, &d.user, pw.clone()),
                    Some(tmp.path().join("index")),
                    None,
                )
                .unwrap(),
            )
        };
        let m = common::InProcessMount::new(provider, common::test_config(|_| {}));
        let inbox = m.path("INBOX");
        let name = named(&names(&inbox), uid);
        let file = inbox.join(&name);
        let listed = fs::metadata(&file).unwrap().len();
        assert_eq!(
            listed as i64,
            body.len() as i64 + delta,
            "the server's number first"
        );
        assert_eq!(fs::read(&file).unwrap(), body, "delta {delta}");
        assert_eq!(fs::metadata(&file).unwrap().len(), body.len() as u64);
        // A second open needs no second look, and reads the same.
        assert_eq!(fs::read(&file).unwrap(), body);
        drop(m);
        // The next listing (here, a restart over the same index) shows the true size.
        let again = cloudmount::provider::imap::ImapProvider::new(
            cloudmount::provider::imap::ImapConfig::loopback(port, &d.user, pw),
            Some(tmp.path().join("index")),
            None,
        )
        .unwrap();
        let listed = rt.block_on(async {
            use cloudmount::provider::Provider;
            use futures::StreamExt;
            again.list("/INBOX").next().await.unwrap().unwrap()
        });
        let entry = listed.iter().find(|e| e.name == name).unwrap();
        assert_eq!(entry.size, body.len() as u64);
    }
}
