//! The Dovecot test harness (tests/support/dovecot.rs) against the real server, pinning the
//! server facts the IMAP provider's tests rely on: capabilities, byte-exact round trips,
//! partial fetches, `\Seen` left alone by PEEK, UIDVALIDITY changes, and XOAUTH2.
//! Needs the dovecot-imapd package (scripts/install-deps.sh).

#[path = "support/dovecot.rs"]
mod dovecot;

use base64::Engine;
use dovecot::{mutf7_encode, number_after, Dovecot, DovecotOptions, Imap};
use std::time::{Duration, Instant};

/// The attachment: bytes 0..=255, base64 in 76-column lines.
const ATTACHMENT_BASE64: &str = "\
AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8gISIjJCUmJygpKissLS4vMDEyMzQ1Njc4\r\n\
OTo7PD0+P0BBQkNERUZHSElKS0xNTk9QUVJTVFVWV1hZWltcXV5fYGFiY2RlZmdoaWprbG1ub3Bx\r\n\
cnN0dXZ3eHl6e3x9fn+AgYKDhIWGh4iJiouMjY6PkJGSk5SVlpeYmZqbnJ2en6ChoqOkpaanqKmq\r\n\
q6ytrq+wsbKztLW2t7i5uru8vb6/wMHCw8TFxsfIycrLzM3Oz9DR0tPU1dbX2Nna29zd3t/g4eLj\r\n\
5OXm5+jp6uvs7e7v8PHy8/T19vf4+fr7/P3+/w==\r\n";

/// multipart/mixed: 8-bit UTF-8 text and a binary attachment with an RFC 2231 file name;
/// the subject "Grüße – Bericht €" as an RFC 2047 encoded word. CRLF line ends.
fn multipart_message() -> Vec<u8> {
    let mut m = String::new();
    m.push_str("From: =?UTF-8?Q?J=C3=BCrgen?= <j@example.org>\r\n");
    m.push_str("To: alice@example.org\r\n");
    m.push_str("Subject: =?UTF-8?B?R3LDvMOfZSDigJMgQmVyaWNodCDigqw=?=\r\n");
    m.push_str("Date: Tue, 02 Jan 2024 11:30:00 +0100\r\n");
    m.push_str("Message-ID: <multipart@example.org>\r\n");
    m.push_str("MIME-Version: 1.0\r\n");
    m.push_str("Content-Type: multipart/mixed; boundary=\"XYZ\"\r\n\r\n");
    m.push_str("--XYZ\r\nContent-Type: text/plain; charset=utf-8\r\n");
    m.push_str("Content-Transfer-Encoding: 8bit\r\n\r\nSiehe Anhang: äöü\r\n");
    m.push_str("--XYZ\r\nContent-Type: application/octet-stream\r\n");
    m.push_str("Content-Disposition: attachment; filename*=UTF-8''r%C3%A9sum%C3%A9.bin\r\n");
    m.push_str("Content-Transfer-Encoding: base64\r\n\r\n");
    m.push_str(ATTACHMENT_BASE64);
    m.push_str("--XYZ--\r\n");
    m.into_bytes()
}

fn plain_message(subject: &str) -> Vec<u8> {
    format!(
        "From: Alice <alice@example.org>\r\nTo: bob@example.org\r\nSubject: {subject}\r\n\
         Date: Mon, 01 Jan 2024 10:00:00 +0000\r\n\r\nHello {subject}\r\n"
    )
    .into_bytes()
}

#[test]
fn dovecot_round_trips_messages_byte_exact() {
    let dovecot = Dovecot::start();
    let mut imap = dovecot.connect();
    let caps = imap.capabilities();
    for cap in [
        "IMAP4rev1",
        "IDLE",
        "ENABLE",
        "CONDSTORE",
        "QRESYNC",
        "BINARY",
        "UIDPLUS",
        "MOVE",
        "LITERAL+",
        "SPECIAL-USE",
        "COMPRESS=DEFLATE",
    ] {
        assert!(caps.iter().any(|c| c == cap), "no {cap} in {caps:?}");
    }

    dovecot.create_mailbox("Archive/2024");
    let list = imap.command(r#"LIST "" "*""#);
    assert!(
        list.find(r#""/" Archive/2024"#).is_some(),
        "LIST: {:?}",
        list.untagged
    );
    let multipart = multipart_message();
    let plain = plain_message("plain one");
    let a = dovecot.append("Archive/2024", &multipart);
    let b = dovecot.append_with(
        "Archive/2024",
        &["\\Seen"],
        Some("01-Jan-2024 10:00:00 +0000"),
        &plain,
    );
    assert_eq!((a.uid, b.uid), (1, 2));
    assert_eq!(a.uidvalidity, b.uidvalidity);
    assert_eq!(dovecot.fetch_message("Archive/2024", a.uid), multipart);
    assert_eq!(dovecot.fetch_message("Archive/2024", b.uid), plain);
    // BODY.PEEK[] left \Seen alone.
    assert!(!dovecot.is_seen("Archive/2024", a.uid));
    assert!(dovecot.is_seen("Archive/2024", b.uid));

    let selected = imap.examine("Archive/2024");
    assert_eq!((selected.exists, selected.uidnext), (2, 3));
    assert_eq!(selected.uidvalidity, a.uidvalidity);
    assert!(selected.read_only);
    let head = imap.fetch_literal(&format!("UID FETCH {} (BODY.PEEK[]<0.100>)", a.uid));
    assert_eq!(head, &multipart[..100]);
    // Past the end: an empty literal, not an error.
    let past = imap.fetch_literal(&format!("UID FETCH {} (BODY.PEEK[]<100000.10>)", a.uid));
    assert!(past.is_empty());
    let sizes = imap.command(&format!("UID FETCH {} (RFC822.SIZE BINARY.SIZE[2])", a.uid));
    let line = &sizes.find(" FETCH (").expect("FETCH").text;
    assert_eq!(
        number_after(line, "RFC822.SIZE "),
        Some(multipart.len() as u64)
    );
    // The attachment decoded (RFC 3516): 256 bytes.
    assert_eq!(number_after(line, "BINARY.SIZE[2] "), Some(256));
    assert!(!dovecot.is_seen("Archive/2024", a.uid));

    dovecot.set_flags("Archive/2024", a.uid, &["\\Seen", "\\Flagged"], true);
    assert!(dovecot.is_seen("Archive/2024", a.uid));
    dovecot.delete_message("Archive/2024", b.uid);
    assert_eq!(dovecot.status("Archive/2024").messages, 1);
    imap.logout();
}

#[test]
fn dovecot_uidvalidity_change_keeps_uids_and_ends_selected_sessions() {
    let dovecot = Dovecot::start();
    let first = plain_message("first");
    dovecot.append("INBOX", &first);
    dovecot.append("INBOX", &plain_message("second"));
    let before = dovecot.status("INBOX");
    let mut held = dovecot.connect();
    held.examine("INBOX");

    let new = dovecot.force_uidvalidity_change("INBOX");

    assert!(new > before.uidvalidity);
    let after = dovecot.status("INBOX");
    assert_eq!(
        (after.messages, after.uidnext),
        (before.messages, before.uidnext)
    );
    assert_eq!(after.uidvalidity, new);
    // Same UIDs, same messages, new UIDVALIDITY.
    assert_eq!(dovecot.fetch_message("INBOX", 1), first);
    // A session that had the mailbox selected is thrown out at its next command.
    match held.try_command("NOOP") {
        Err(e) => assert!(e.contains("BYE"), "{e}"),
        Ok(reply) => panic!("NOOP after the UIDVALIDITY change: {reply:?}"),
    }
    assert_eq!(dovecot.connect().examine("INBOX").uidvalidity, new);
}

#[test]
fn dovecot_answers_failed_logins_at_once_and_names_mailboxes_in_modified_utf7() {
    let dovecot = Dovecot::start();
    let mut imap = Imap::connect(dovecot.port);
    // No auth penalty: without the config's anvil trick these would take 0, 4, 8 s.
    for attempt in 0..3 {
        let started = Instant::now();
        let reply = imap
            .try_command(&format!("LOGIN {} wrong-{attempt}", dovecot.user))
            .expect("LOGIN reply");
        assert_eq!(reply.status, "NO", "{}", reply.tagged);
        assert!(
            started.elapsed() < Duration::from_secs(2),
            "{:?}",
            started.elapsed()
        );
    }
    imap.login(&dovecot.user, &dovecot.password);

    // RFC 3501 §5.1.3's examples.
    assert_eq!(
        mutf7_encode("~peter/mail/台北/日本語"),
        "~peter/mail/&U,BTFw-/&ZeVnLIqe-"
    );
    assert_eq!(mutf7_encode("Entwürfe & Co"), "Entw&APw-rfe &- Co");
    imap.create("Entwürfe/a.b c");
    let list = imap.command(r#"LIST "" "*""#);
    assert!(
        list.find(r#""/" "Entw&APw-rfe/a.b c""#).is_some(),
        "LIST: {:?}",
        list.untagged
    );
    assert!(dovecot.maildir.join("Entw&APw-rfe/a.b c/cur").is_dir());
    let appended = dovecot.append("Entwürfe/a.b c", &plain_message("umlaut box"));
    assert_eq!(dovecot.status("Entwürfe/a.b c").messages, 1);
    // doveadm wants UTF-8 names.
    dovecot.force_uidvalidity_change("Entwürfe/a.b c");
    assert_ne!(
        dovecot.status("Entwürfe/a.b c").uidvalidity,
        appended.uidvalidity
    );
}

#[test]
fn dovecot_checks_xoauth2_tokens_with_the_introspection_endpoint() {
    let url = dovecot::start_introspection_endpoint();
    let dovecot = Dovecot::start_with(DovecotOptions {
        xoauth2_introspection_url: Some(url),
        ..DovecotOptions::default()
    });
    let xoauth2 = |token: &str| {
        base64::engine::general_purpose::STANDARD.encode(format!(
            "user={}\x01auth=Bearer {token}\x01\x01",
            dovecot.user
        ))
    };

    let mut imap = Imap::connect(dovecot.port);
    assert!(imap.capabilities().iter().any(|c| c == "AUTH=XOAUTH2"));
    let refused = imap.authenticate("XOAUTH2", &xoauth2("stale-token"));
    assert_eq!(refused.status, "NO", "{}", refused.tagged);
    // The challenge Gmail also sends: base64 JSON with status 401.
    let challenge = refused.find("+ ").expect("XOAUTH2 error challenge");
    let json = base64::engine::general_purpose::STANDARD
        .decode(challenge.text[2..].trim())
        .expect("base64 challenge");
    assert!(
        String::from_utf8_lossy(&json).contains("\"401\""),
        "{json:?}"
    );

    let accepted = imap.authenticate("XOAUTH2", &xoauth2("good-token"));
    assert_eq!(accepted.status, "OK", "{}", accepted.tagged);
    imap.examine("INBOX");
    // Password logins keep working next to XOAUTH2.
    dovecot.connect().logout();
}
