//! Paged listings: the loop every service's list call needs, written once. A service
//! says where the next page is as a token (Drive's `nextPageToken`), a URL (Graph's
//! `@odata.nextLink`), or a cursor with a `has_more` flag (Dropbox); each fits [`Page`]
//! with the token, URL or cursor as `next`.

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

#[cfg(test)]
mod tests {
    use super::*;

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
