//! Ranged reads over HTTP, the same for every service: the `Range` header to send, how
//! to read the reply (206 with or without `Content-Range`, a 200 whose body is the whole
//! file because the server ignored the range, 416 past the end), and the stream that
//! yields exactly the bytes asked for, however the body is split.
//!
//! A provider sends the GET its own way (auth, URL, what else the service wants), then
//! hands the reply's status and headers to [`interpret`] and the body to [`window`].

use bytes::Bytes;
use futures::{Stream, StreamExt};
use reqwest::header::HeaderMap;
use reqwest::StatusCode;

use crate::provider::{ByteStream, ProviderError, ProviderResult};

/// The `Range` header value for `len` (> 0) bytes from `offset`. Open-ended when the last
/// byte would not fit a signed 64-bit number (servers parse it as one), which covers
/// "the rest of the file" asked for as `u64::MAX`.
pub fn range_header(offset: u64, len: u64) -> String {
    let last = offset.saturating_add(len.max(1) - 1);
    if last > i64::MAX as u64 {
        format!("bytes={offset}-")
    } else {
        format!("bytes={offset}-{last}")
    }
}

/// `bytes a-b/total` → (a, total); the total may be `*` (unknown).
pub fn parse_content_range(v: &str) -> Option<(u64, Option<u64>)> {
    let rest = v.trim().strip_prefix("bytes")?.trim_start();
    let (range, total) = rest.split_once('/')?;
    let (start, _) = range.split_once('-')?;
    Some((start.trim().parse().ok()?, total.trim().parse().ok()))
}

/// What the reply to a ranged GET holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ranged {
    /// A body from which `skip` bytes are dropped to reach the offset asked for; `total`
    /// is the file's length where the reply says it.
    Body { skip: u64, total: Option<u64> },
    /// The offset is at or past the end of the file: nothing to read.
    PastEnd,
}

/// Read the status and headers of a reply to a GET for bytes from `offset`. `None` for
/// any other status: the provider maps it with its own error parser.
pub fn interpret(
    status: StatusCode,
    headers: &HeaderMap,
    offset: u64,
    what: &str,
) -> Option<ProviderResult<Ranged>> {
    match status {
        StatusCode::PARTIAL_CONTENT => {
            let cr = headers
                .get(reqwest::header::CONTENT_RANGE)
                .and_then(|v| v.to_str().ok())
                .and_then(parse_content_range);
            Some(match cr {
                Some((start, total)) if start <= offset => Ok(Ranged::Body {
                    skip: offset - start,
                    total,
                }),
                Some((start, _)) => Err(ProviderError::Protocol(format!(
                    "{what}: asked for bytes from {offset}, the server sent from {start}"
                ))),
                // A single-range 206 without Content-Range breaks the protocol, but its body
                // can only be the range asked for.
                None => Ok(Ranged::Body {
                    skip: 0,
                    total: None,
                }),
            })
        }
        // The server ignored the range: the body is the whole file.
        StatusCode::OK => Some(Ok(Ranged::Body {
            skip: offset,
            total: headers
                .get(reqwest::header::CONTENT_LENGTH)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.trim().parse().ok()),
        })),
        StatusCode::RANGE_NOT_SATISFIABLE => Some(Ok(Ranged::PastEnd)),
        _ => None,
    }
}

/// The bytes `[skip, skip + take)` of `inner`, in the pieces it arrives in; the stream ends
/// as soon as they are through (the rest of the body is not waited for).
pub fn window<S>(inner: S, skip: u64, take: u64) -> ByteStream
where
    S: Stream<Item = ProviderResult<Bytes>> + Send + 'static,
{
    let stream = futures::stream::unfold(
        (Box::pin(inner), skip, take),
        |(mut inner, mut skip, mut take)| async move {
            while take > 0 {
                let mut chunk = match inner.next().await? {
                    Ok(c) => c,
                    Err(e) => return Some((Err(e), (inner, skip, 0))),
                };
                if skip > 0 {
                    let drop = skip.min(chunk.len() as u64);
                    skip -= drop;
                    let _ = chunk.split_to(drop as usize);
                }
                if chunk.is_empty() {
                    continue;
                }
                if chunk.len() as u64 > take {
                    chunk.truncate(take as usize);
                }
                take -= chunk.len() as u64;
                return Some((Ok(chunk), (inner, skip, take)));
            }
            None
        },
    );
    Box::pin(stream)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn range_headers() {
        assert_eq!(range_header(0, 10), "bytes=0-9");
        assert_eq!(range_header(5, 1), "bytes=5-5");
        assert_eq!(range_header(0, u64::MAX), "bytes=0-");
        assert_eq!(range_header(7, u64::MAX), "bytes=7-");
        assert_eq!(
            range_header(1, i64::MAX as u64),
            "bytes=1-9223372036854775807"
        );
        assert_eq!(range_header(2, i64::MAX as u64), "bytes=2-");
    }

    #[test]
    fn content_range() {
        assert_eq!(parse_content_range("bytes 1-1/2"), Some((1, Some(2))));
        assert_eq!(parse_content_range("bytes 5-9/*"), Some((5, None)));
        assert_eq!(parse_content_range("items 1-2/3"), None);
    }

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.insert(*k, v.parse().unwrap());
        }
        h
    }

    #[test]
    fn replies() {
        let partial = headers(&[("content-range", "bytes 100-199/1000")]);
        assert_eq!(
            interpret(StatusCode::PARTIAL_CONTENT, &partial, 150, "x")
                .unwrap()
                .unwrap(),
            Ranged::Body {
                skip: 50,
                total: Some(1000)
            }
        );
        assert!(matches!(
            interpret(StatusCode::PARTIAL_CONTENT, &partial, 50, "x").unwrap(),
            Err(ProviderError::Protocol(_))
        ));
        let whole = headers(&[("content-length", "1000")]);
        assert_eq!(
            interpret(StatusCode::OK, &whole, 150, "x")
                .unwrap()
                .unwrap(),
            Ranged::Body {
                skip: 150,
                total: Some(1000)
            }
        );
        assert_eq!(
            interpret(StatusCode::RANGE_NOT_SATISFIABLE, &HeaderMap::new(), 5, "x")
                .unwrap()
                .unwrap(),
            Ranged::PastEnd
        );
        assert!(interpret(StatusCode::NOT_FOUND, &HeaderMap::new(), 0, "x").is_none());
    }

    #[tokio::test]
    async fn window_cuts_across_pieces() {
        let pieces: Vec<ProviderResult<Bytes>> = vec![
            Ok(Bytes::from_static(b"abc")),
            Ok(Bytes::from_static(b"defg")),
            Ok(Bytes::from_static(b"hij")),
        ];
        let out: Vec<u8> = window(futures::stream::iter(pieces), 2, 6)
            .map(|p| p.unwrap().to_vec())
            .concat()
            .await;
        assert_eq!(out, b"cdefgh");
        let pieces: Vec<ProviderResult<Bytes>> = vec![
            Ok(Bytes::from_static(b"0123")),
            Ok(Bytes::from_static(b"4567")),
            Ok(Bytes::from_static(b"89")),
        ];
        let rest = crate::provider::collect_stream(window(futures::stream::iter(pieces), 9, 100));
        assert_eq!(rest.await.unwrap(), b"9");
    }
}
