//! PROPFIND multistatus and error-body parsing.
//!
//! Servers disagree on prefixes (`D:`, `d:`, `lp1:`, a default namespace...), so every
//! element is matched on its resolved namespace URI and local name, never on its prefix.

use quick_xml::events::{BytesRef, Event};
use quick_xml::name::ResolveResult;
use quick_xml::NsReader;

pub(crate) const DAV_NS: &str = "DAV:";
pub(crate) const OC_NS: &str = "http://owncloud.org/ns";
const SABRE_NS: &str = "http://sabredav.org/ns";

/// The body we send with every PROPFIND. Asking for the ownCloud properties explicitly is
/// what makes Nextcloud return them; generic servers answer them in a 404 propstat that
/// the parser ignores.
pub(crate) const PROPFIND_ENTRY_BODY: &str = concat!(
    r#"<?xml version="1.0" encoding="utf-8"?>"#,
    r#"<d:propfind xmlns:d="DAV:" xmlns:oc="http://owncloud.org/ns"><d:prop>"#,
    "<d:resourcetype/><d:getcontentlength/><d:getlastmodified/><d:getetag/>",
    "<d:getcontenttype/><oc:fileid/><oc:checksums/><oc:size/>",
    "</d:prop></d:propfind>"
);

pub(crate) const PROPFIND_QUOTA_BODY: &str = concat!(
    r#"<?xml version="1.0" encoding="utf-8"?>"#,
    r#"<d:propfind xmlns:d="DAV:"><d:prop>"#,
    "<d:quota-available-bytes/><d:quota-used-bytes/>",
    "</d:prop></d:propfind>"
);

/// The properties of one `<response>` that came back with a 2xx propstat status.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct DavProps {
    pub etag: Option<String>,
    pub last_modified: Option<String>,
    pub content_length: Option<u64>,
    pub is_collection: bool,
    pub content_type: Option<String>,
    pub file_id: Option<String>,
    /// The raw `oc:checksum` values, e.g. "SHA1:abc MD5:def".
    pub checksums: Vec<String>,
    pub oc_size: Option<u64>,
    pub quota_available: Option<i64>,
    pub quota_used: Option<i64>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct DavResponse {
    /// The href exactly as sent (still percent-encoded, possibly an absolute URL).
    pub href: String,
    pub props: DavProps,
}

/// Elements whose text content we keep.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Field {
    Href,
    Status,
    Etag,
    LastModified,
    ContentLength,
    ContentType,
    FileId,
    Checksum,
    OcSize,
    QuotaAvailable,
    QuotaUsed,
}

fn field_of(ns: Option<&str>, local: &str) -> Option<Field> {
    match (ns?, local) {
        (DAV_NS, "href") => Some(Field::Href),
        (DAV_NS, "status") => Some(Field::Status),
        (DAV_NS, "getetag") => Some(Field::Etag),
        (DAV_NS, "getlastmodified") => Some(Field::LastModified),
        (DAV_NS, "getcontentlength") => Some(Field::ContentLength),
        (DAV_NS, "getcontenttype") => Some(Field::ContentType),
        (DAV_NS, "quota-available-bytes") => Some(Field::QuotaAvailable),
        (DAV_NS, "quota-used-bytes") => Some(Field::QuotaUsed),
        (OC_NS, "fileid") => Some(Field::FileId),
        (OC_NS, "checksum") => Some(Field::Checksum),
        (OC_NS, "size") => Some(Field::OcSize),
        _ => None,
    }
}

pub(crate) fn namespace_of(r: &ResolveResult<'_>) -> Option<String> {
    match r {
        ResolveResult::Bound(ns) => Some(ns.0.to_owned()),
        _ => None,
    }
}

/// Appends an entity or character reference; quick-xml reports them as separate events.
pub(crate) fn push_ref(out: &mut String, r: &BytesRef<'_>) -> Result<(), String> {
    if let Some(ch) = r.resolve_char_ref().map_err(|e| e.to_string())? {
        out.push(ch);
        return Ok(());
    }
    match quick_xml::escape::resolve_predefined_entity(r) {
        Some(s) => {
            out.push_str(s);
            Ok(())
        }
        None => Err(format!("unknown XML entity &{};", &**r)),
    }
}

/// The status code in a `<d:status>` line such as "HTTP/1.1 404 Not Found".
pub(crate) fn status_code(line: &str) -> Option<u16> {
    line.split_whitespace().nth(1)?.parse().ok()
}

#[derive(Default)]
struct ResponseBuilder {
    href: Option<String>,
    /// A `<d:status>` directly inside `<d:response>` (no propstat): the whole member failed.
    status: Option<u16>,
    props: DavProps,
}

/// Parses a 207 multistatus body. Responses whose own status is not 2xx are dropped, and
/// so are the properties of non-2xx propstat blocks.
pub(crate) fn parse_multistatus(body: &str) -> Result<Vec<DavResponse>, String> {
    let mut reader = NsReader::from_str(body);
    // (namespace, local name) of every open element.
    let mut stack: Vec<(Option<String>, String)> = Vec::new();
    let mut out = Vec::new();
    let mut saw_multistatus = false;
    let mut response: Option<ResponseBuilder> = None;
    // Properties of the propstat being read, and its status once seen.
    let mut propstat: Option<(DavProps, Option<u16>)> = None;
    let mut text = String::new();
    let mut capturing: Option<Field> = None;

    loop {
        let pos = reader.buffer_position();
        let (resolved, event) = reader
            .read_resolved_event()
            .map_err(|e| format!("XML error after byte {pos}: {e}"))?;
        let ns = namespace_of(&resolved);
        match event {
            Event::Start(ref e) | Event::Empty(ref e) => {
                let local = e.local_name().as_ref().to_owned();
                let is_empty = matches!(event, Event::Empty(_));
                match (ns.as_deref(), local.as_str()) {
                    (Some(DAV_NS), "multistatus") => saw_multistatus = true,
                    (Some(DAV_NS), "response") => response = Some(ResponseBuilder::default()),
                    (Some(DAV_NS), "propstat") if response.is_some() => {
                        propstat = Some((DavProps::default(), None))
                    }
                    (Some(DAV_NS), "collection") => {
                        let in_resourcetype = stack.last().is_some_and(|(pns, pl)| {
                            pns.as_deref() == Some(DAV_NS) && pl == "resourcetype"
                        });
                        if in_resourcetype {
                            if let Some((props, _)) = propstat.as_mut() {
                                props.is_collection = true;
                            }
                        }
                    }
                    _ => {}
                }
                if is_empty {
                    // An empty element has no text but still counts as a present field
                    // (e.g. `<getetag/>`); nothing to record.
                    continue;
                }
                capturing = field_of(ns.as_deref(), &local);
                text.clear();
                stack.push((ns, local));
            }
            Event::Text(t) if capturing.is_some() => text.push_str(&t),
            Event::CData(t) if capturing.is_some() => text.push_str(&t),
            Event::GeneralRef(r) if capturing.is_some() => push_ref(&mut text, &r)?,
            Event::End(_) => {
                let Some((ens, elocal)) = stack.pop() else {
                    return Err("unbalanced XML".into());
                };
                if let Some(field) = capturing.take() {
                    let value = text.trim().to_owned();
                    text.clear();
                    store_field(field, value, response.as_mut(), propstat.as_mut())?;
                }
                match (ens.as_deref(), elocal.as_str()) {
                    (Some(DAV_NS), "propstat") => {
                        if let (Some((props, status)), Some(resp)) =
                            (propstat.take(), response.as_mut())
                        {
                            // A propstat without status is malformed, but accepting it is
                            // kinder than dropping the entry.
                            if status.is_none_or(|s| (200..300).contains(&s)) {
                                merge_props(&mut resp.props, props);
                            }
                        }
                    }
                    (Some(DAV_NS), "response") => {
                        if let Some(resp) = response.take() {
                            let href = resp.href.ok_or("response without href")?;
                            if resp.status.is_none_or(|s| (200..300).contains(&s)) {
                                out.push(DavResponse {
                                    href,
                                    props: resp.props,
                                });
                            }
                        }
                    }
                    _ => {}
                }
            }
            Event::Eof => break,
            _ => {}
        }
    }
    if !stack.is_empty() {
        return Err("truncated XML".into());
    }
    if !saw_multistatus {
        return Err("no DAV:multistatus element".into());
    }
    Ok(out)
}

fn store_field(
    field: Field,
    value: String,
    response: Option<&mut ResponseBuilder>,
    propstat: Option<&mut (DavProps, Option<u16>)>,
) -> Result<(), String> {
    let Some(resp) = response else {
        return Ok(());
    };
    let Some((props, status)) = propstat else {
        match field {
            Field::Href => resp.href = Some(value),
            Field::Status => resp.status = status_code(&value),
            _ => {}
        }
        return Ok(());
    };
    let parse_u64 = |v: &str| {
        v.parse::<u64>()
            .map_err(|_| format!("bad number {v:?} in {field:?}"))
    };
    let parse_i64 = |v: &str| {
        v.parse::<i64>()
            .map_err(|_| format!("bad number {v:?} in {field:?}"))
    };
    let non_empty = |v: String| (!v.is_empty()).then_some(v);
    match field {
        Field::Href => {}
        Field::Status => *status = status_code(&value),
        Field::Etag => props.etag = non_empty(value),
        Field::LastModified => props.last_modified = non_empty(value),
        Field::ContentType => props.content_type = non_empty(value),
        Field::FileId => props.file_id = non_empty(value),
        Field::Checksum => {
            if !value.is_empty() {
                props.checksums.push(value)
            }
        }
        // Empty numeric elements show up in 404 propstats; those are discarded anyway,
        // but a 200 block with an empty number is treated as absent rather than fatal.
        Field::ContentLength if !value.is_empty() => {
            props.content_length = Some(parse_u64(&value)?)
        }
        Field::OcSize if !value.is_empty() => props.oc_size = Some(parse_u64(&value)?),
        Field::QuotaAvailable if !value.is_empty() => {
            props.quota_available = Some(parse_i64(&value)?)
        }
        Field::QuotaUsed if !value.is_empty() => props.quota_used = Some(parse_i64(&value)?),
        Field::ContentLength | Field::OcSize | Field::QuotaAvailable | Field::QuotaUsed => {}
    }
    Ok(())
}

fn merge_props(into: &mut DavProps, from: DavProps) {
    into.etag = into.etag.take().or(from.etag);
    into.last_modified = into.last_modified.take().or(from.last_modified);
    into.content_length = into.content_length.or(from.content_length);
    into.is_collection |= from.is_collection;
    into.content_type = into.content_type.take().or(from.content_type);
    into.file_id = into.file_id.take().or(from.file_id);
    into.checksums.extend(from.checksums);
    into.oc_size = into.oc_size.or(from.oc_size);
    into.quota_available = into.quota_available.or(from.quota_available);
    into.quota_used = into.quota_used.or(from.quota_used);
}

/// The human-readable message of an error body: sabre/dav's `<s:message>`, else RFC 4918's
/// `<d:responsedescription>`. `None` when the body is not such XML.
pub(crate) fn error_message(body: &str) -> Option<String> {
    let mut reader = NsReader::from_str(body);
    let mut capturing = false;
    let mut text = String::new();
    loop {
        let (resolved, event) = reader.read_resolved_event().ok()?;
        match event {
            Event::Start(e) => {
                let local = e.local_name();
                capturing = matches!(
                    (namespace_of(&resolved).as_deref(), local.as_ref()),
                    (Some(SABRE_NS), "message") | (Some(DAV_NS), "responsedescription")
                );
                text.clear();
            }
            Event::Text(t) if capturing => text.push_str(&t),
            Event::CData(t) if capturing => text.push_str(&t),
            Event::GeneralRef(r) if capturing => push_ref(&mut text, &r).ok()?,
            Event::End(_) if capturing => {
                let msg = text.trim();
                if !msg.is_empty() {
                    return Some(msg.to_owned());
                }
                capturing = false;
            }
            Event::Eof => return None,
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn apache_style_prefixes_and_split_propstat() {
        let body = r#"<?xml version="1.0" encoding="utf-8"?>
<D:multistatus xmlns:D="DAV:" xmlns:ns0="DAV:">
<D:response xmlns:lp1="DAV:" xmlns:lp2="http://apache.org/dav/props/" xmlns:g0="DAV:">
<D:href>/dav/a%20b&amp;c.txt</D:href>
<D:propstat><D:prop>
<lp1:resourcetype/>
<lp1:getcontentlength>6</lp1:getcontentlength>
<lp1:getlastmodified>Sat, 21 Nov 2026 23:52:34 GMT</lp1:getlastmodified>
<lp1:getetag>"6-660d20dfe9b71"</lp1:getetag>
<D:getcontenttype>text/plain</D:getcontenttype>
</D:prop><D:status>HTTP/1.1 200 OK</D:status></D:propstat>
<D:propstat><D:prop><g0:quota-used-bytes/><g0:getcontentlength>99</g0:getcontentlength></D:prop>
<D:status>HTTP/1.1 404 Not Found</D:status></D:propstat>
</D:response>
</D:multistatus>"#;
        let r = parse_multistatus(body).unwrap();
        assert_eq!(r.len(), 1);
        assert_eq!(r[0].href, "/dav/a%20b&c.txt");
        let p = &r[0].props;
        assert_eq!(p.content_length, Some(6));
        assert_eq!(p.etag.as_deref(), Some("\"6-660d20dfe9b71\""));
        assert!(!p.is_collection);
        assert_eq!(p.content_type.as_deref(), Some("text/plain"));
        assert_eq!(p.quota_used, None);
    }

    #[test]
    fn default_namespace_and_collections() {
        let body = r#"<multistatus xmlns="DAV:"><response><href>http://h/x/</href>
<propstat><prop><resourcetype><collection/></resourcetype></prop>
<status>HTTP/1.1 200 OK</status></propstat></response>
<response><href>/x/gone</href><status>HTTP/1.1 404 Not Found</status></response>
</multistatus>"#;
        let r = parse_multistatus(body).unwrap();
        assert_eq!(r.len(), 1);
        assert_eq!(r[0].href, "http://h/x/");
        assert!(r[0].props.is_collection);
    }

    #[test]
    fn collection_outside_resourcetype_is_ignored() {
        let body = r#"<d:multistatus xmlns:d="DAV:"><d:response><d:href>/f</d:href>
<d:propstat><d:prop><d:supportedlock><d:collection/></d:supportedlock></d:prop>
<d:status>HTTP/1.1 200 OK</d:status></d:propstat></d:response></d:multistatus>"#;
        assert!(!parse_multistatus(body).unwrap()[0].props.is_collection);
    }

    #[test]
    fn owncloud_checksums_fixture() {
        let body = include_str!("testdata/propfind_checksums.xml");
        let r = parse_multistatus(body).unwrap();
        assert_eq!(r[0].href, "/remote.php/dav/files/admin/hello.txt");
        assert_eq!(
            r[0].props.checksums,
            vec!["SHA1:f572d396fae9206628714fb2ce00f72e94f2258f MD5:b1946ac92492d2347c6235b4d2611184 ADLER32:084b021f"]
        );
    }

    #[test]
    fn quota_fixture() {
        let body = include_str!("testdata/propfind_quota_depth0.xml");
        let r = parse_multistatus(body).unwrap();
        assert_eq!(r[0].props.quota_available, Some(-3));
        assert_eq!(r[0].props.quota_used, Some(376461895));
    }

    #[test]
    fn garbage_is_an_error() {
        assert!(parse_multistatus("<html><body>oops</body></html>").is_err());
        assert!(parse_multistatus("<d:multistatus xmlns:d=\"DAV:\"><d:response>").is_err());
        assert!(parse_multistatus("not xml at all <<<").is_err());
    }

    #[test]
    fn sabre_error_message() {
        let body = include_str!("testdata/error_404_sabre.xml");
        assert_eq!(
            error_message(body).as_deref(),
            Some("File with name Photo could not be located")
        );
        assert_eq!(error_message("Not Found"), None);
    }
}
