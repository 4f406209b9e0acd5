//! What a failed reply means: status + headers + the service's error body → [`ProviderError`].
//!
//! Every HTTP service says "not found", "slow down" or "try again" with the same few status
//! codes, so the table from status to error is written once ([`classify_status`]). What
//! differs is the body: Drive sends `{"error":{"errors":[{"reason"}],"message"}}`, Graph
//! `{"error":{"code","message"}}`, Dropbox `{"error":{".tag"}}`, Atlassian
//! `{"errorMessages":[...]}`, sabre/dav `<s:message>`. A service implements
//! [`ServiceErrors`] to read its body into an [`ErrorDetail`] and, where its codes change
//! the meaning of a status (Drive's rate-limit 403s, WebDAV's 409 for a missing parent),
//! to override the table for those cases and defer to it for the rest.
//!
//! A message built here never carries a URL or a credential: only the operation's name, the
//! status and the server's own words, shortened.

use std::time::Duration;

use reqwest::header::HeaderMap;
use reqwest::StatusCode;

use super::retry::retry_after;
use crate::provider::ProviderError;

/// Longest server message kept in an error (error bodies can be whole HTML pages).
const MAX_MESSAGE: usize = 300;

/// What the service said about a failure, read from its error body.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ErrorDetail {
    /// Human-readable words, for messages.
    pub message: Option<String>,
    /// A machine-readable code (Drive `reason`, Graph `code`, Dropbox `.tag`), for decisions.
    pub code: Option<String>,
    /// When the body says when to come back (Dropbox's `retry_after`); the `Retry-After`
    /// header, where there is one, is read separately.
    pub retry_after: Option<Duration>,
}

impl ErrorDetail {
    /// A short plain-text body taken as the message; markup and long pages are not.
    pub fn plain(body: &[u8]) -> ErrorDetail {
        let text = String::from_utf8_lossy(body);
        let t = text.trim();
        let message =
            (!t.is_empty() && t.len() <= MAX_MESSAGE && !t.starts_with('<')).then(|| t.to_owned());
        ErrorDetail {
            message,
            code: None,
            retry_after: None,
        }
    }

    /// "`what`: `status`: message (code)", with whatever of message and code is known.
    pub fn describe(&self, what: &str, status: StatusCode) -> String {
        let mut s = format!("{what}: {status}");
        if let Some(m) = &self.message {
            s.push_str(": ");
            s.push_str(&shorten(m));
        }
        if let Some(c) = &self.code {
            s.push_str(&format!(" ({c})"));
        }
        s
    }
}

fn shorten(m: &str) -> String {
    if m.len() <= MAX_MESSAGE {
        return m.to_owned();
    }
    let mut end = MAX_MESSAGE;
    while !m.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &m[..end])
}

/// One service's way of reporting errors.
pub trait ServiceErrors: Send + Sync + 'static {
    /// Reads the service's error body. The default takes a short plain-text body as the
    /// message.
    fn detail(&self, body: &[u8]) -> ErrorDetail {
        ErrorDetail::plain(body)
    }

    /// The error a failed reply stands for. The default is [`classify_status`]; override
    /// it for the statuses whose meaning depends on the service's codes and call
    /// `classify_status` for the rest.
    fn classify(
        &self,
        status: StatusCode,
        headers: &HeaderMap,
        detail: &ErrorDetail,
        what: &str,
    ) -> ProviderError {
        classify_status(status, retry_after(headers), detail.describe(what, status))
    }
}

/// A service with nothing to add to the common table.
pub struct PlainErrors;

impl ServiceErrors for PlainErrors {}

/// The common table from status to error; `message` goes into the error.
pub fn classify_status(
    status: StatusCode,
    retry_after: Option<Duration>,
    message: String,
) -> ProviderError {
    match status.as_u16() {
        401 => ProviderError::Auth(message),
        403 => ProviderError::PermissionDenied(message),
        404 | 410 => ProviderError::NotFound(message),
        // Most JSON APIs (Graph among them) answer 409 for a name that is taken; WebDAV
        // (missing parent) and Dropbox (every endpoint error) override this.
        409 => ProviderError::AlreadyExists(message),
        412 => ProviderError::PreconditionFailed(message),
        // The target is locked or the server gave up waiting for our body: nothing happened.
        408 | 423 => ProviderError::Transient(message),
        429 => ProviderError::RateLimited { retry_after },
        // A 503 that says when to come back is pacing, like a 429.
        503 if retry_after.is_some() => ProviderError::RateLimited { retry_after },
        507 => ProviderError::InsufficientStorage,
        // The server does not do this at all: asking again cannot help.
        501 | 505 => ProviderError::Unsupported(message),
        500..=599 => ProviderError::Transient(message),
        _ => ProviderError::Protocol(message),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_common_table() {
        let c = |s: u16, ra: Option<u64>| {
            classify_status(
                StatusCode::from_u16(s).unwrap(),
                ra.map(Duration::from_secs),
                "m".into(),
            )
        };
        assert_eq!(c(401, None), ProviderError::Auth("m".into()));
        assert_eq!(c(403, None), ProviderError::PermissionDenied("m".into()));
        assert_eq!(c(404, None), ProviderError::NotFound("m".into()));
        assert_eq!(c(410, None), ProviderError::NotFound("m".into()));
        assert_eq!(c(409, None), ProviderError::AlreadyExists("m".into()));
        assert_eq!(c(412, None), ProviderError::PreconditionFailed("m".into()));
        assert_eq!(c(423, None), ProviderError::Transient("m".into()));
        assert_eq!(
            c(429, None),
            ProviderError::RateLimited { retry_after: None }
        );
        assert_eq!(c(503, None), ProviderError::Transient("m".into()));
        assert_eq!(
            c(503, Some(3)),
            ProviderError::RateLimited {
                retry_after: Some(Duration::from_secs(3))
            }
        );
        assert_eq!(c(507, None), ProviderError::InsufficientStorage);
        assert_eq!(c(501, None), ProviderError::Unsupported("m".into()));
        assert_eq!(c(502, None), ProviderError::Transient("m".into()));
        assert_eq!(c(400, None), ProviderError::Protocol("m".into()));
    }

    #[test]
    fn details_are_short_and_never_markup() {
        assert_eq!(
            ErrorDetail::plain(b"  quota exceeded \n")
                .message
                .as_deref(),
            Some("quota exceeded")
        );
        assert_eq!(ErrorDetail::plain(b"<html>oops</html>").message, None);
        assert_eq!(ErrorDetail::plain(&[b'x'; 400]).message, None);
        assert_eq!(ErrorDetail::plain(b"").message, None);
        let d = ErrorDetail {
            message: Some("é".repeat(400)),
            code: Some("tooBig".into()),
            retry_after: None,
        };
        let s = d.describe("files.get", StatusCode::BAD_REQUEST);
        assert!(s.starts_with("files.get: 400 Bad Request: éé"), "{s}");
        assert!(s.ends_with("… (tooBig)"), "{s}");
    }
}
