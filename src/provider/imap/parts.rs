//! A message's attachments, as the files of its `<message>.d/` folder: found in the
//! BODYSTRUCTURE the listing fetches (no body is read to list them), named from their
//! `Content-Disposition` filename or `Content-Type` name (RFC 2231 and RFC 2047 decoded by
//! mail-parser), made unique within the message, and read by fetching only their own part
//! (`BODY.PEEK[<part>]`) and undoing its transfer encoding.
//!
//! Which parts are attachments: every leaf part marked `attachment`, and every leaf part
//! that carries a file name (an inline image with a name is one too); an attached message
//! (`message/rfc822`) is one `.eml` file. The message's own text and HTML bodies, having
//! no file name, are not.
//!
//! Sizes: a part without transfer encoding is its BODYSTRUCTURE size. A base64 or
//! quoted-printable part's decoded size is not in BODYSTRUCTURE, and async-imap cannot
//! read the `BINARY.SIZE` answer that would tell it (RFC 3516), so such an attachment
//! lists with size 0 — the core's "size not known yet" — and its true size is found by
//! fetching it when it is opened (as Google Docs are).

use async_imap::imap_proto::types::{
    BodyContentCommon, BodyStructure, ContentEncoding, ContentType,
};
use serde::{Deserialize, Serialize};

use super::names;

/// How a part's bytes are encoded in the message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Encoding {
    /// 7bit, 8bit, binary: the bytes are the content.
    Identity,
    Base64,
    QuotedPrintable,
}

/// One attachment of a message.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Attachment {
    /// Its file name in the message's folder (unique there).
    pub name: String,
    /// The IMAP part specifier, e.g. "2" or "1.3".
    pub part: String,
    pub encoding: Encoding,
    /// Its size as encoded in the message.
    pub octets: u64,
    /// Its content's size: known at once without a transfer encoding, else once it has
    /// been fetched and decoded.
    #[serde(default)]
    pub size: Option<u64>,
}

impl Attachment {
    fn new(name: String, part: String, encoding: Encoding, octets: u64) -> Self {
        let size = (encoding == Encoding::Identity).then_some(octets);
        Attachment {
            name,
            part,
            encoding,
            octets,
            size,
        }
    }

    /// The decoded size, when known without fetching.
    pub fn known_size(&self) -> Option<u64> {
        self.size
    }
}

/// The attachments in a message's BODYSTRUCTURE.
pub fn attachments(body: &BodyStructure<'_>) -> Vec<Attachment> {
    let mut found = Vec::new();
    match body {
        BodyStructure::Multipart { bodies, .. } => {
            for (i, child) in bodies.iter().enumerate() {
                walk(child, &[i as u32 + 1], &mut found);
            }
        }
        // A message that is a single part: that part is "1" (RFC 3501 §6.4.5).
        single => walk(single, &[1], &mut found),
    }
    unique_names(found)
}

fn walk(body: &BodyStructure<'_>, path: &[u32], out: &mut Vec<Attachment>) {
    let part = path
        .iter()
        .map(u32::to_string)
        .collect::<Vec<_>>()
        .join(".");
    match body {
        BodyStructure::Multipart { bodies, .. } => {
            for (i, child) in bodies.iter().enumerate() {
                let mut p = path.to_vec();
                p.push(i as u32 + 1);
                walk(child, &p, out);
            }
        }
        BodyStructure::Message { common, other, .. } => {
            let name = file_name(common).unwrap_or_else(|| format!("message {part}"));
            let name = if name.to_ascii_lowercase().ends_with(".eml") {
                name
            } else {
                format!("{name}.eml")
            };
            out.push(Attachment::new(
                name,
                part,
                encoding(&other.transfer_encoding),
                other.octets as u64,
            ));
        }
        BodyStructure::Basic { common, other, .. } | BodyStructure::Text { common, other, .. } => {
            let marked = common
                .disposition
                .as_ref()
                .is_some_and(|d| d.ty.eq_ignore_ascii_case("attachment"));
            let name = file_name(common);
            if !marked && name.is_none() {
                return; // the message's own text
            }
            let name = name.unwrap_or_else(|| format!("part {part}{}", extension(&common.ty)));
            out.push(Attachment::new(
                name,
                part,
                encoding(&other.transfer_encoding),
                other.octets as u64,
            ));
        }
    }
}

fn encoding(e: &ContentEncoding<'_>) -> Encoding {
    match e {
        ContentEncoding::Base64 => Encoding::Base64,
        ContentEncoding::QuotedPrintable => Encoding::QuotedPrintable,
        ContentEncoding::SevenBit
        | ContentEncoding::EightBit
        | ContentEncoding::Binary
        | ContentEncoding::Other(_) => Encoding::Identity,
    }
}

/// A name for a nameless part, from its type.
fn extension(ty: &ContentType<'_>) -> &'static str {
    let sub = ty.subtype.to_ascii_lowercase();
    match (ty.ty.to_ascii_lowercase().as_str(), sub.as_str()) {
        ("text", "html") => ".html",
        ("text", _) => ".txt",
        ("image", "png") => ".png",
        ("image", "jpeg") => ".jpg",
        ("image", "gif") => ".gif",
        ("application", "pdf") => ".pdf",
        ("message", _) => ".eml",
        _ => ".bin",
    }
}

/// The part's file name: the disposition's `filename`, else the type's `name`, decoded
/// (RFC 2231 parameters, RFC 2047 words) and made safe for the mount.
fn file_name(common: &BodyContentCommon<'_>) -> Option<String> {
    // BODYSTRUCTURE hands the parameters over as the header had them; mail-parser
    // decodes them when they stand in a header again.
    let mut header = String::new();
    let params = |params: &Option<Vec<(std::borrow::Cow<'_, str>, std::borrow::Cow<'_, str>)>>| {
        let mut out = String::new();
        for (k, v) in params.iter().flatten() {
            let v = v.replace(['\\', '"', '\r', '\n'], "");
            out.push_str(&format!(";\r\n {k}=\"{v}\""));
        }
        out
    };
    header.push_str(&format!(
        "Content-Type: {}/{}{}\r\n",
        common.ty.ty,
        common.ty.subtype,
        params(&common.ty.params)
    ));
    if let Some(d) = &common.disposition {
        header.push_str(&format!(
            "Content-Disposition: {}{}\r\n",
            d.ty,
            params(&d.params)
        ));
    }
    header.push_str("\r\n");
    let parsed = mail_parser::MessageParser::default().parse_headers(header.as_bytes())?;
    use mail_parser::MimeHeaders;
    let raw = parsed.attachment_name()?;
    let name = names::attachment_file_name(raw);
    (!name.is_empty()).then_some(name)
}

/// Two attachments called the same get "name (2).ext", "name (3).ext", … in order.
fn unique_names(mut found: Vec<Attachment>) -> Vec<Attachment> {
    let mut taken = std::collections::HashSet::new();
    for a in &mut found {
        let key = |n: &str| n.to_lowercase();
        if taken.insert(key(&a.name)) {
            continue;
        }
        let (stem, ext) = match a.name.rfind('.') {
            Some(i) if i > 0 => (a.name[..i].to_owned(), a.name[i..].to_owned()),
            _ => (a.name.clone(), String::new()),
        };
        let mut n = 2;
        loop {
            let candidate =
                names::fit_keeping_extension(&format!("{stem} ({n}){ext}"), names::MAX_NAME);
            if taken.insert(key(&candidate)) {
                a.name = candidate;
                break;
            }
            n += 1;
        }
    }
    found
}

/// The content of a part fetched whole, its transfer encoding undone. A part that does not
/// decode (broken base64) is shown as it is in the message rather than not at all.
pub fn decode(encoding: Encoding, raw: &[u8]) -> Vec<u8> {
    let decoded = match encoding {
        Encoding::Identity => None,
        Encoding::Base64 => {
            // Line breaks and stray whitespace are not part of the data.
            let clean: Vec<u8> = raw
                .iter()
                .copied()
                .filter(|b| !b.is_ascii_whitespace())
                .collect();
            mail_parser::decoders::base64::base64_decode(&clean)
        }
        Encoding::QuotedPrintable => Some(quoted_printable(raw)),
    };
    decoded.unwrap_or_else(|| raw.to_vec())
}

/// Quoted-printable (RFC 2045 §6.7) undone, line breaks kept as the message has them
/// (mail-parser's decoder turns them into bare LFs, which changes a text file's bytes).
fn quoted_printable(raw: &[u8]) -> Vec<u8> {
    let hex = |b: u8| (b as char).to_digit(16).map(|d| d as u8);
    let mut out = Vec::with_capacity(raw.len());
    for line in raw.split_inclusive(|b| *b == b'\n') {
        let (body, brk): (&[u8], &[u8]) = if let Some(b) = line.strip_suffix(b"\r\n") {
            (b, b"\r\n")
        } else if let Some(b) = line.strip_suffix(b"\n") {
            (b, b"\n")
        } else {
            (line, b"")
        };
        // Trailing whitespace was added in transport (rule 3).
        let end = body
            .iter()
            .rposition(|b| *b != b' ' && *b != b'\t')
            .map_or(0, |i| i + 1);
        let body = &body[..end];
        let (body, soft) = match body.strip_suffix(b"=") {
            Some(b) => (b, true),
            None => (body, false),
        };
        let mut i = 0;
        while i < body.len() {
            let escaped = (body[i] == b'=')
                .then(|| Some((hex(*body.get(i + 1)?)?, hex(*body.get(i + 2)?)?)))
                .flatten();
            if let Some((h, l)) = escaped {
                out.push(h << 4 | l);
                i += 3;
            } else {
                // A '=' not followed by two hex digits stays as it is (RFC 2045 §6.7's
                // advice to a robust decoder), rather than the whole part undecoded.
                out.push(body[i]);
                i += 1;
            }
        }
        if !soft {
            out.extend_from_slice(brk);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use async_imap::imap_proto::types::{BodyContentSinglePart, ContentDisposition};
    use std::borrow::Cow;

    fn leaf(
        ty: &str,
        sub: &str,
        type_params: &[(&str, &str)],
        disposition: Option<(&str, &[(&str, &str)])>,
        enc: ContentEncoding<'static>,
        octets: u32,
    ) -> BodyStructure<'static> {
        let own = |ps: &[(&str, &str)]| {
            (!ps.is_empty()).then(|| {
                ps.iter()
                    .map(|(k, v)| (Cow::Owned(k.to_string()), Cow::Owned(v.to_string())))
                    .collect()
            })
        };
        BodyStructure::Basic {
            common: BodyContentCommon {
                ty: ContentType {
                    ty: Cow::Owned(ty.into()),
                    subtype: Cow::Owned(sub.into()),
                    params: own(type_params),
                },
                disposition: disposition.map(|(d, ps)| ContentDisposition {
                    ty: Cow::Owned(d.into()),
                    params: own(ps),
                }),
                language: None,
                location: None,
            },
            other: BodyContentSinglePart {
                id: None,
                md5: None,
                description: None,
                transfer_encoding: enc,
                octets,
            },
            extension: None,
        }
    }

    #[test]
    fn attachments_are_named_numbered_and_made_unique() {
        let body = BodyStructure::Multipart {
            common: BodyContentCommon {
                ty: ContentType {
                    ty: "multipart".into(),
                    subtype: "mixed".into(),
                    params: None,
                },
                disposition: None,
                language: None,
                location: None,
            },
            bodies: vec![
                leaf(
                    "text",
                    "plain",
                    &[("charset", "utf-8")],
                    None,
                    ContentEncoding::SevenBit,
                    10,
                ),
                leaf(
                    "application",
                    "pdf",
                    &[("name", "report.pdf")],
                    Some(("attachment", &[("filename", "report.pdf")])),
                    ContentEncoding::Base64,
                    400,
                ),
                leaf(
                    "application",
                    "pdf",
                    &[],
                    Some(("attachment", &[("filename", "Report.pdf")])),
                    ContentEncoding::Base64,
                    400,
                ),
                leaf(
                    "text",
                    "plain",
                    &[],
                    Some((
                        "attachment",
                        &[("filename*", "utf-8''Gr%C3%BC%C3%9Fe%2Ftext.txt")],
                    )),
                    ContentEncoding::SevenBit,
                    33,
                ),
                leaf(
                    "image",
                    "png",
                    &[("name", "=?UTF-8?B?w6TDtsO8LnBuZw==?=")],
                    Some(("inline", &[])),
                    ContentEncoding::Base64,
                    90,
                ),
                leaf(
                    "application",
                    "octet-stream",
                    &[],
                    Some(("attachment", &[])),
                    ContentEncoding::Binary,
                    5,
                ),
            ],
            extension: None,
        };
        let got: Vec<(String, String, Option<u64>)> = attachments(&body)
            .into_iter()
            .map(|a| (a.name.clone(), a.part.clone(), a.known_size()))
            .collect();
        assert_eq!(
            got,
            [
                ("report.pdf".into(), "2".into(), None),
                ("Report (2).pdf".into(), "3".into(), None),
                ("Grüße∕text.txt".into(), "4".into(), Some(33)),
                ("äöü.png".into(), "5".into(), None),
                ("part 6.bin".into(), "6".into(), Some(5)),
            ]
        );
    }

    #[test]
    fn a_single_part_message_is_part_1() {
        let body = leaf(
            "application",
            "pdf",
            &[],
            Some(("attachment", &[("filename", "a.pdf")])),
            ContentEncoding::Base64,
            8,
        );
        assert_eq!(attachments(&body)[0].part, "1");
        let text = leaf("text", "plain", &[], None, ContentEncoding::SevenBit, 8);
        assert!(attachments(&text).is_empty());
    }

    #[test]
    fn transfer_encodings_are_undone() {
        assert_eq!(
            decode(Encoding::Base64, b"aGVsbG8g\r\nd29ybGQ=\r\n"),
            b"hello world"
        );
        assert_eq!(
            decode(
                Encoding::QuotedPrintable,
                b"caf=C3=A9 =\r\nau lait  \r\nx=3D1\n"
            ),
            "café au lait\r\nx=1\n".as_bytes()
        );
        assert_eq!(
            decode(Encoding::QuotedPrintable, b"bad=G1 but caf=C3=A9"),
            "bad=G1 but café".as_bytes()
        );
        assert_eq!(decode(Encoding::Identity, b"as is"), b"as is");
        assert_eq!(decode(Encoding::Base64, b"!!!"), b"!!!");
    }
}
