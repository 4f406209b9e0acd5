//! RFC 6578 collection synchronisation: a `sync-collection` REPORT returns what changed
//! below a folder since a token, and a new token.

use quick_xml::events::Event;
use quick_xml::NsReader;

use super::xml::{namespace_of, push_ref, status_code, DAV_NS};

/// The REPORT body; an empty token asks for every member (the initial sync).
pub(crate) fn request_body(token: &str) -> String {
    let token = token
        .replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;");
    format!(
        concat!(
            r#"<?xml version="1.0" encoding="utf-8"?>"#,
            r#"<d:sync-collection xmlns:d="DAV:"><d:sync-token>{}</d:sync-token>"#,
            "<d:sync-level>infinite</d:sync-level><d:prop><d:getetag/></d:prop>",
            "</d:sync-collection>"
        ),
        token
    )
}

/// One member in a sync report.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct SyncChange {
    /// As sent: percent-encoded, absolute path or URL.
    pub href: String,
    /// Reported with a 404: the member is gone.
    pub removed: bool,
}

/// The changed members and the new sync token of a 207 reply.
pub(crate) fn parse_report(body: &str) -> Result<(Vec<SyncChange>, String), String> {
    let mut reader = NsReader::from_str(body);
    let mut stack: Vec<String> = Vec::new();
    let mut out = Vec::new();
    let mut token = None;
    let mut href: Option<String> = None;
    let mut removed = false;
    let mut text = String::new();
    loop {
        let (resolved, event) = reader
            .read_resolved_event()
            .map_err(|e| format!("XML error: {e}"))?;
        let in_dav = namespace_of(&resolved).as_deref() == Some(DAV_NS);
        match event {
            Event::Start(e) => {
                let local = e.local_name().as_ref().to_owned();
                if in_dav && local == "response" {
                    href = None;
                    removed = false;
                }
                stack.push(if in_dav { local } else { String::new() });
                text.clear();
            }
            Event::Text(t) => text.push_str(&t),
            Event::GeneralRef(r) => push_ref(&mut text, &r)?,
            Event::End(_) => {
                let local = stack.pop().unwrap_or_default();
                let parent = stack.last().map(String::as_str).unwrap_or("");
                match (local.as_str(), parent) {
                    ("href", "response") => href = Some(text.trim().to_owned()),
                    // A status directly in the response (not in a propstat) is about the
                    // member itself: 404 means removed.
                    ("status", "response") => removed = status_code(text.trim()) == Some(404),
                    ("sync-token", "multistatus") => token = Some(text.trim().to_owned()),
                    ("response", _) => {
                        if let Some(h) = href.take() {
                            out.push(SyncChange { href: h, removed });
                        }
                    }
                    _ => {}
                }
                text.clear();
            }
            Event::Eof => break,
            _ => {}
        }
    }
    let token = token.ok_or("sync report without a sync-token")?;
    Ok((out, token))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn report_with_changes_and_removals() {
        let body = r#"<?xml version="1.0"?>
<D:multistatus xmlns:D="DAV:">
  <D:response><D:href>/dav/a%20b.txt</D:href>
    <D:propstat><D:prop><D:getetag>"1"</D:getetag></D:prop><D:status>HTTP/1.1 200 OK</D:status></D:propstat>
  </D:response>
  <D:response><D:href>/dav/gone/</D:href><D:status>HTTP/1.1 404 Not Found</D:status></D:response>
  <D:sync-token>http://example.com/sync/12</D:sync-token>
</D:multistatus>"#;
        let (changes, token) = parse_report(body).unwrap();
        assert_eq!(token, "http://example.com/sync/12");
        assert_eq!(
            changes,
            vec![
                SyncChange {
                    href: "/dav/a%20b.txt".into(),
                    removed: false
                },
                SyncChange {
                    href: "/dav/gone/".into(),
                    removed: true
                },
            ]
        );
        assert!(parse_report("<D:multistatus xmlns:D=\"DAV:\"/>").is_err());
        assert!(request_body("a<b").contains("a&lt;b"));
    }
}
