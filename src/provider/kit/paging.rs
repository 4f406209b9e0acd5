//! Paged listings: the loop every service's list call needs, written once. A service
//! says where the next page is as a token (Drive's `nextPageToken`, Jira's search), a URL
//! (Graph's `@odata.nextLink`), a cursor with a `has_more` flag (Dropbox), a `Link`
//! header (Confluence's v2 API, RFC 8288: [`next_from_link_header`]), or an offset with
//! a total (Jira's `startAt`/`maxResults`/`total`/`isLast`: [`next_offset`]); each fits
//! [`Page`] with the token, URL, cursor or offset as `next`.

use std::collections::HashSet;

use std::future::Future;

use crate::provider::{ProviderError, ProviderResult};

/// One page and where the next one is (`None`, or an empty string: this was the last).
pub struct Page<T> {
    pub items: Vec<T>,
    pub next: Option<String>,
}

/// Every item of every page. `fetch(None)` gets the first page, `fetch(Some(next))` the
/// following ones. An empty page with a `next` is legal and the walk goes on; a `next`
/// seen before is a server loop and an error, not an endless listing.
pub async fn collect_all<T, F, Fut>(what: &str, mut fetch: F) -> ProviderResult<Vec<T>>
where
    F: FnMut(Option<String>) -> Fut,
    Fut: Future<Output = ProviderResult<Page<T>>>,
{
    let mut out = Vec::new();
    let mut seen = HashSet::new();
    let mut next = None;
    loop {
        let page = fetch(next.take()).await?;
        out.extend(page.items);
        match page.next {
            Some(n) if !n.is_empty() => {
                if !seen.insert(n.clone()) {
                    return Err(ProviderError::Protocol(format!(
                        "{what}: the server sent the same next-page marker twice"
                    )));
                }
                next = Some(n);
            }
            _ => return Ok(out),
        }
    }
}

/// The `rel="next"` target of the `Link` headers (RFC 8288 §3), made absolute against
/// the URL the reply came from (after redirects: `Response::url`): Confluence sends a path
/// (`</wiki/api/v2/spaces?cursor=…>; rel="next"`), others a whole URL. `None` when
/// there is no next page; an unreadable target is an error rather than the end of a
/// listing that would then look complete.
pub fn next_from_link_header(
    headers: &reqwest::header::HeaderMap,
    request_url: &reqwest::Url,
) -> ProviderResult<Option<String>> {
    for value in headers.get_all(reqwest::header::LINK) {
        let value = value
            .to_str()
            .map_err(|_| ProviderError::Protocol("Link header is not ASCII".into()))?;
        for link in split_links(value) {
            let Some((target, params)) = link
                .trim()
                .strip_prefix('<')
                .and_then(|rest| rest.split_once('>'))
            else {
                return Err(ProviderError::Protocol(format!(
                    "Link header entry without <target>: {link:?}"
                )));
            };
            let is_next = split_outside_quotes(params, ';').into_iter().any(|param| {
                let Some((name, value)) = param.split_once('=') else {
                    return false;
                };
                // rel may be a quoted, space-separated list ("next last"), any case.
                name.trim().eq_ignore_ascii_case("rel")
                    && value
                        .trim()
                        .trim_matches('"')
                        .split_ascii_whitespace()
                        .any(|rel| rel.eq_ignore_ascii_case("next"))
            });
            if is_next {
                let next = request_url.join(target).map_err(|e| {
                    ProviderError::Protocol(format!("Link header target {target:?}: {e}"))
                })?;
                return Ok(Some(next.into()));
            }
        }
    }
    Ok(None)
}

/// The entries of one `Link` header value: commas inside `<…>` or quoted strings do not
/// split.
fn split_links(value: &str) -> Vec<&str> {
    split_outside_quotes(value, ',')
        .into_iter()
        .filter(|l| !l.trim().is_empty())
        .collect()
}

/// `value` split at `sep` where it is outside `<…>` and outside quoted strings (with
/// their backslash escapes, RFC 9110 §5.6.4).
fn split_outside_quotes(value: &str, sep: char) -> Vec<&str> {
    let (mut out, mut start) = (Vec::new(), 0);
    let (mut in_target, mut in_quotes, mut escaped) = (false, false, false);
    for (i, c) in value.char_indices() {
        if escaped {
            escaped = false;
            continue;
        }
        match c {
            '\\' if in_quotes => escaped = true,
            '<' if !in_quotes => in_target = true,
            '>' if !in_quotes => in_target = false,
            '"' if !in_target => in_quotes = !in_quotes,
            c if c == sep && !in_target && !in_quotes => {
                out.push(&value[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    out.push(&value[start..]);
    out
}

/// The marker of the page after an offset-paged one (Jira's `startAt` style), or `None`
/// at the end. The end is `is_last`, or the total reached, or an empty page; a page
/// shorter than asked for is *not* the end by itself (Jira may cap `maxResults` lower
/// than requested).
pub fn next_offset(
    start_at: u64,
    returned: usize,
    total: Option<u64>,
    is_last: Option<bool>,
) -> Option<String> {
    let next = start_at + returned as u64;
    let done = is_last == Some(true) || returned == 0 || total.is_some_and(|t| next >= t);
    (!done).then(|| next.to_string())
}

/// The offset a marker from [`next_offset`] stands for (`None`: the first page).
pub fn offset_of(marker: Option<&str>) -> ProviderResult<u64> {
    marker.map_or(Ok(0), |m| {
        m.parse()
            .map_err(|_| ProviderError::Protocol(format!("not a page offset: {m:?}")))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn links(values: &[&str]) -> reqwest::header::HeaderMap {
        let mut h = reqwest::header::HeaderMap::new();
        for v in values {
            h.append(reqwest::header::LINK, v.parse().unwrap());
        }
        h
    }

    #[test]
    fn link_header_next_relative_absolute_and_absent() {
        let base =
            reqwest::Url::parse("https://x.atlassian.net/wiki/api/v2/spaces?limit=2").unwrap();
        // Confluence's form: a path with the cursor, resolved against the site.
        let h = links(&[r#"</wiki/api/v2/spaces?cursor=abc%3D&limit=2>; rel="next""#]);
        assert_eq!(
            next_from_link_header(&h, &base).unwrap().as_deref(),
            Some("https://x.atlassian.net/wiki/api/v2/spaces?cursor=abc%3D&limit=2")
        );
        // Several links in one value (commas inside the target), unquoted and listed rels,
        // and a second header.
        let h = links(&[
            r#"<https://api.example/items?page=1,2>; rel=prev, <https://api.example/items?page=3>; rel="last next""#,
        ]);
        assert_eq!(
            next_from_link_header(&h, &base).unwrap().as_deref(),
            Some("https://api.example/items?page=3")
        );
        let h = links(&[
            r#"<https://a/p1>; rel="first""#,
            r#"<https://a/p2>; REL=Next"#,
        ]);
        assert_eq!(
            next_from_link_header(&h, &base).unwrap().as_deref(),
            Some("https://a/p2")
        );
        // The last page: no next.
        assert_eq!(next_from_link_header(&links(&[]), &base).unwrap(), None);
        let h = links(&[r#"<https://a/p1>; rel="prev""#]);
        assert_eq!(next_from_link_header(&h, &base).unwrap(), None);
        // A quoted parameter holding "; rel=next" or an escaped quote is not a rel.
        let h = links(&[
            r#"<https://a/p1>; title="x; rel=next", <https://a/p2>; title="a \"q\", b"; rel=next"#,
        ]);
        assert_eq!(
            next_from_link_header(&h, &base).unwrap().as_deref(),
            Some("https://a/p2")
        );
        // Garbage is an error, not the end of the listing.
        assert!(next_from_link_header(&links(&["rel=next"]), &base).is_err());
    }

    #[test]
    fn offsets_end_at_the_total_is_last_or_an_empty_page() {
        assert_eq!(next_offset(0, 50, Some(120), None).as_deref(), Some("50"));
        // Fewer than asked for is not the end while the total says more is there.
        assert_eq!(next_offset(50, 20, Some(120), None).as_deref(), Some("70"));
        assert_eq!(next_offset(100, 20, Some(120), None), None);
        assert_eq!(next_offset(0, 50, None, Some(false)).as_deref(), Some("50"));
        assert_eq!(next_offset(0, 50, None, Some(true)), None);
        assert_eq!(next_offset(50, 0, None, None), None);
        assert_eq!(offset_of(None).unwrap(), 0);
        assert_eq!(offset_of(Some("70")).unwrap(), 70);
        assert!(offset_of(Some("x")).is_err());
    }

    #[tokio::test]
    async fn an_offset_paged_listing_walks_to_the_total() {
        let all: Vec<u64> = (0..7).collect();
        let got = collect_all("test", |marker| {
            let all = all.clone();
            async move {
                let start = offset_of(marker.as_deref())?;
                // The server caps pages at 3 whatever was asked.
                let items: Vec<u64> = all.iter().copied().skip(start as usize).take(3).collect();
                let next = next_offset(start, items.len(), Some(all.len() as u64), None);
                Ok(Page { items, next })
            }
        })
        .await
        .unwrap();
        assert_eq!(got, all);
    }

    #[tokio::test]
    async fn walks_every_page_including_empty_ones() {
        let pages = [
            (vec![1, 2], Some("a")),
            (vec![], Some("b")),
            (vec![3], None),
        ];
        let all = collect_all("test", |next| {
            let i = match next.as_deref() {
                None => 0,
                Some("a") => 1,
                Some("b") => 2,
                other => panic!("unexpected marker {other:?}"),
            };
            let (items, next) = pages[i].clone();
            async move {
                Ok(Page {
                    items,
                    next: next.map(str::to_owned),
                })
            }
        })
        .await
        .unwrap();
        assert_eq!(all, vec![1, 2, 3]);
    }

    #[tokio::test]
    async fn a_repeated_marker_is_an_error() {
        let r = collect_all("test", |_| async {
            Ok(Page {
                items: vec![0u8],
                next: Some("same".to_owned()),
            })
        })
        .await;
        assert!(matches!(r, Err(ProviderError::Protocol(_))));
    }

    #[tokio::test]
    async fn an_error_ends_the_walk() {
        let r: ProviderResult<Vec<u8>> = collect_all("test", |_| async {
            Err(ProviderError::Transient("down".into()))
        })
        .await;
        assert!(matches!(r, Err(ProviderError::Transient(_))));
    }
}
