//! What IMAP things are called in the mount (issue 12): a message is the file
//! `YYYY-MM-DD HHMM <subject> [u<UID>].eml` — INTERNALDATE in UTC, the subject decoded
//! (RFC 2047), `/` shown as `∕` (U+2215), control characters dropped, shortened so the whole
//! name fits in 255 bytes — and a mailbox's name is decoded from IMAP's modified UTF-7
//! (RFC 3501 §5.1.3).
//!
//! The UID in the name makes it unique and stable: for one UIDVALIDITY a UID names one
//! immutable message forever (RFC 3501 §2.3.1.1), so the name never changes.

use std::time::SystemTime;

/// Longest file name, in bytes.
pub const MAX_NAME: usize = 255;

/// The subject as people read it: RFC 2047 encoded words decoded (in any charset
/// `mail-parser` knows), folded lines joined.
pub fn decode_subject(raw: &[u8]) -> String {
    // mail-parser decodes a header in the context of a message: give it one.
    let mut msg = b"Subject: ".to_vec();
    msg.extend_from_slice(raw);
    msg.extend_from_slice(b"\r\n\r\n");
    mail_parser::MessageParser::default()
        .parse_headers(&msg)
        .and_then(|m| m.subject().map(str::to_owned))
        .unwrap_or_else(|| String::from_utf8_lossy(raw).into_owned())
}

/// The subject as it can stand in a file name: `/` as `∕`, control characters (line
/// breaks included) dropped, runs of spaces as one, no leading or trailing space.
fn clean(subject: &str) -> String {
    let mut out = String::with_capacity(subject.len());
    let mut space = false;
    for c in subject.chars() {
        // Tabs and line breaks separate words; other control characters are dropped.
        let c = match c {
            '/' => '∕',
            c if c.is_whitespace() => ' ',
            c if c.is_control() => continue,
            c => c,
        };
        if c == ' ' {
            space = true;
            continue;
        }
        if space && !out.is_empty() {
            out.push(' ');
        }
        space = false;
        out.push(c);
    }
    out
}

/// The first `max` bytes of `s`, cut at a character boundary.
fn truncate(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    s[..end].trim_end()
}

/// The file name of the message with `uid`, received at `internal_date`, whose raw
/// `Subject` header value is `subject` (`None`: no subject).
pub fn message_file_name(internal_date: SystemTime, subject: Option<&[u8]>, uid: u32) -> String {
    let when = chrono::DateTime::<chrono::Utc>::from(internal_date).format("%Y-%m-%d %H%M");
    let tail = format!(" [u{uid}].eml");
    let subject = clean(&subject.map(decode_subject).unwrap_or_default());
    let head = format!("{when} ");
    let room = MAX_NAME - head.len() - tail.len();
    let subject = truncate(&subject, room);
    if subject.is_empty() {
        format!("{when}{tail}")
    } else {
        format!("{head}{subject}{tail}")
    }
}

/// The folder beside a message holding its attachments: the message's name without
/// `.eml`, plus `.d`.
pub fn attachments_dir_name(message_file: &str) -> String {
    format!("{}.d", message_file.trim_end_matches(".eml"))
}

/// An attachment's file name as it can stand in the mount: made safe like a subject (`/`
/// as `∕`, control characters dropped), never `.` or `..`, and cut to 255 bytes keeping
/// its extension.
pub fn attachment_file_name(decoded: &str) -> String {
    let name = clean(decoded);
    let name = match name.as_str() {
        "" => return String::new(),
        "." | ".." => format!("_{name}"),
        _ => name,
    };
    fit_keeping_extension(&name, MAX_NAME)
}

/// `name` cut to `max` bytes; the extension (up to 16 bytes) is kept.
pub fn fit_keeping_extension(name: &str, max: usize) -> String {
    if name.len() <= max {
        return name.to_owned();
    }
    let ext = name
        .rfind('.')
        .map(|i| &name[i..])
        .filter(|e| e.len() <= 16)
        .unwrap_or("");
    let stem = truncate(&name[..name.len() - ext.len()], max - ext.len());
    format!("{stem}{ext}")
}

/// A mailbox name in IMAP's modified UTF-7 (RFC 3501 §5.1.3) as text; `None` when it is
/// not valid modified UTF-7 (the caller shows the raw name, escaped).
pub fn decode_mailbox(name: &str) -> Option<String> {
    let mut out = String::with_capacity(name.len());
    let mut rest = name;
    while let Some(amp) = rest.find('&') {
        out.push_str(&rest[..amp]);
        let after = &rest[amp + 1..];
        let end = after.find('-')?;
        let encoded = &after[..end];
        if encoded.is_empty() {
            // "&-" is a literal "&".
            out.push('&');
        } else {
            out.push_str(&decode_utf7_run(encoded)?);
        }
        rest = &after[end + 1..];
    }
    out.push_str(rest);
    Some(out)
}

/// One `&…-` run: modified base64 (`,` for `/`, no padding) of UTF-16BE.
fn decode_utf7_run(run: &str) -> Option<String> {
    use base64::Engine;
    let std = run.replace(',', "/");
    let bytes = base64::engine::general_purpose::STANDARD_NO_PAD
        .decode(std.as_bytes())
        .ok()?;
    if bytes.len() % 2 != 0 {
        return None;
    }
    let units: Vec<u16> = bytes
        .chunks(2)
        .map(|p| u16::from_be_bytes([p[0], p[1]]))
        .collect();
    String::from_utf16(&units).ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, UNIX_EPOCH};

    fn at(secs: u64) -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(secs)
    }

    #[test]
    fn names_carry_date_subject_and_uid() {
        // 2024-03-05 14:07:09 UTC
        let t = at(1_709_647_629);
        assert_eq!(
            message_file_name(t, Some(b"Quarterly report"), 42),
            "2024-03-05 1407 Quarterly report [u42].eml"
        );
        assert_eq!(message_file_name(t, None, 7), "2024-03-05 1407 [u7].eml");
        assert_eq!(
            attachments_dir_name("2024-03-05 1407 Quarterly report [u42].eml"),
            "2024-03-05 1407 Quarterly report [u42].d"
        );
    }

    #[test]
    fn subjects_are_decoded_and_made_safe() {
        let t = at(0);
        assert_eq!(
            message_file_name(
                t,
                Some(b"=?UTF-8?B?R3LDvMOfZQ==?= aus =?ISO-8859-1?Q?K=F6ln?="),
                1
            ),
            "1970-01-01 0000 Grüße aus Köln [u1].eml"
        );
        assert_eq!(
            message_file_name(t, Some(b"a/b\tc\r\n  folded"), 2),
            "1970-01-01 0000 a∕b c folded [u2].eml"
        );
        assert_eq!(
            message_file_name(t, Some(b"  \x07 "), 3),
            "1970-01-01 0000 [u3].eml"
        );
    }

    #[test]
    fn long_subjects_are_cut_to_fit_255_bytes_on_a_character() {
        let long = "é".repeat(400);
        let name = message_file_name(at(0), Some(long.as_bytes()), 4_294_967_295);
        assert!(name.len() <= MAX_NAME, "{}", name.len());
        assert!(name.ends_with(" [u4294967295].eml"));
        assert!(name.starts_with("1970-01-01 0000 éé"));
    }

    #[test]
    fn attachment_names_are_safe_and_fit() {
        assert_eq!(attachment_file_name("a/b.pdf"), "a∕b.pdf");
        assert_eq!(attachment_file_name(".."), "_..");
        assert_eq!(attachment_file_name(" \x01 "), "");
        let long = format!("{}.tar.gz", "ü".repeat(200));
        let fit = attachment_file_name(&long);
        assert!(fit.len() <= MAX_NAME && fit.ends_with(".gz") && fit.starts_with("üü"));
    }

    #[test]
    fn mailbox_names_in_modified_utf7() {
        assert_eq!(decode_mailbox("INBOX").as_deref(), Some("INBOX"));
        assert_eq!(decode_mailbox("Entw&APw-rfe").as_deref(), Some("Entwürfe"));
        assert_eq!(
            decode_mailbox("Tom &- Jerry").as_deref(),
            Some("Tom & Jerry")
        );
        // RFC 3501's example: "~peter/mail/台北/日本語".
        assert_eq!(
            decode_mailbox("~peter/mail/&U,BTFw-/&ZeVnLIqe-").as_deref(),
            Some("~peter/mail/台北/日本語")
        );
        assert_eq!(decode_mailbox("bad&AAA"), None);
    }
}
