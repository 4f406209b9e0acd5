//! Mapping between remote paths ("/dir/a b#c.txt") and the URLs / hrefs a WebDAV server
//! speaks.

use percent_encoding::{percent_decode_str, utf8_percent_encode, AsciiSet, NON_ALPHANUMERIC};

/// Everything but RFC 3986 "unreserved" characters is encoded. Sub-delims such as `&`, `+`
/// and `:` would be legal in a path segment, but servers disagree on how to decode them
/// (`+` as space, `:` making "http:x" look like a scheme), so encoding them is the one
/// spelling every server reads back the same way.
const SEGMENT: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~');

/// Percent-encodes every segment of an absolute remote path, keeping the separators.
/// "/" stays "/".
pub(crate) fn encode_path(path: &str) -> String {
    let mut out = String::with_capacity(path.len() + 8);
    for seg in path.split('/').filter(|s| !s.is_empty()) {
        out.push('/');
        out.extend(utf8_percent_encode(seg, SEGMENT));
    }
    if out.is_empty() {
        out.push('/');
    }
    out
}

pub(crate) fn encode_segment(seg: &str) -> String {
    utf8_percent_encode(seg, SEGMENT).to_string()
}

/// The decoded segments of an href, which may be an absolute URL ("https://h/a%20b/") or an
/// absolute path ("/a%20b"), percent-encoded or not, with or without a trailing slash.
/// `None` when a segment does not decode to UTF-8: such a name cannot be a remote path.
pub(crate) fn href_segments(href: &str) -> Option<Vec<String>> {
    let path = match href.find("://") {
        // Only a scheme before "://" makes it a URL; a path segment like "a://b" cannot
        // start an href because hrefs from servers are absolute.
        Some(i) if !href.starts_with('/') && href[..i].bytes().all(|b| b.is_ascii_alphabetic()) => {
            let rest = &href[i + 3..];
            rest.find('/').map_or("/", |j| &rest[j..])
        }
        _ => href,
    };
    path.split('/')
        .filter(|s| !s.is_empty())
        .map(|s| {
            percent_decode_str(s)
                .decode_utf8()
                .ok()
                .map(|c| c.into_owned())
        })
        .collect()
}

/// The decoded segments of an absolute remote path.
pub(crate) fn path_segments(path: &str) -> Vec<String> {
    path.split('/')
        .filter(|s| !s.is_empty())
        .map(str::to_owned)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encodes_reserved_and_unicode() {
        assert_eq!(encode_path("/"), "/");
        assert_eq!(encode_path("/a b#c%.txt"), "/a%20b%23c%25.txt");
        assert_eq!(encode_path("/d/q?x=1&y+z"), "/d/q%3Fx%3D1%26y%2Bz");
        assert_eq!(encode_path("/http:x"), "/http%3Ax");
        assert_eq!(encode_path("/é"), "/%C3%A9");
        assert_eq!(encode_path("/a-b_c.d~e"), "/a-b_c.d~e");
    }

    #[test]
    fn decodes_hrefs() {
        let s = |v: &[&str]| v.iter().map(|x| x.to_string()).collect::<Vec<_>>();
        assert_eq!(href_segments("/dav/a%20b/").unwrap(), s(&["dav", "a b"]));
        assert_eq!(
            href_segments("https://h:8080/dav/x%2By").unwrap(),
            s(&["dav", "x+y"])
        );
        assert_eq!(href_segments("http://h").unwrap(), Vec::<String>::new());
        // Unencoded servers: a raw space and '#' are kept as part of the name.
        assert_eq!(href_segments("/dav/a b#c").unwrap(), s(&["dav", "a b#c"]));
        assert_eq!(href_segments("/http:x").unwrap(), s(&["http:x"]));
        assert_eq!(href_segments("/%C3%A9").unwrap(), s(&["é"]));
        assert_eq!(href_segments("/%FF"), None);
    }
}
