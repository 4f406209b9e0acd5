//! The `Range` request header as a server reads it (RFC 9110 §14.1.2, §14.2): one
//! `bytes=` range; several ranges, other units or a malformed value are ignored (the
//! whole body is served, as servers do); a range starting past the end is unsatisfiable.

/// What a `Range` header asks of a body of `total` bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Wanted {
    /// No usable range: the whole body, 200.
    Whole,
    /// Bytes `start..=end` (clamped to the body), 206 with `Content-Range`.
    Part { start: usize, end: usize },
    /// 416 with `Content-Range: bytes */total`.
    Unsatisfiable,
}

pub fn wanted(header: Option<&str>, total: usize) -> Wanted {
    let Some(spec) = header.and_then(|h| h.trim().strip_prefix("bytes=")) else {
        return Wanted::Whole;
    };
    if spec.contains(',') {
        return Wanted::Whole;
    }
    let Some((a, b)) = spec.split_once('-') else {
        return Wanted::Whole;
    };
    let (a, b) = (a.trim(), b.trim());
    let (start, end) = match (a.parse::<usize>(), b.parse::<usize>()) {
        // bytes=a-b
        (Ok(s), Ok(e)) if s <= e => (s, e),
        (Ok(_), Ok(_)) => return Wanted::Whole,
        // bytes=a-
        (Ok(s), Err(_)) if b.is_empty() => (s, usize::MAX),
        // bytes=-n: the last n bytes
        (Err(_), Ok(n)) if a.is_empty() => {
            if n == 0 {
                return Wanted::Unsatisfiable;
            }
            (total.saturating_sub(n), usize::MAX)
        }
        _ => return Wanted::Whole,
    };
    if start >= total {
        return Wanted::Unsatisfiable;
    }
    Wanted::Part {
        start,
        end: end.min(total - 1),
    }
}
