//! Dropbox API v2's wire types and error body (provider-apis §3, the Stone spec's
//! `files.stone`, `users.stone`, `auth.stone`).
//!
//! Dropbox serialises a union as an object with a `".tag"` and, for a member with a
//! value, that value under the tag's name (a union) or inline beside the tag (a struct).
//! Where the spec returns the union `Metadata` (listings, `get_metadata`, moves) entries
//! carry `".tag"`; where it returns the struct `FileMetadata` (uploads, `finish`,
//! `list_revisions`) they do not. [`Metadata`] reads both.

use std::time::{Duration, SystemTime};

use reqwest::header::HeaderMap;
use reqwest::StatusCode;
use serde::Deserialize;
use serde_json::Value;

use super::hash::HASH_NAME;
use crate::provider::kit::errors::{classify_status, ErrorDetail, ServiceErrors};
use crate::provider::kit::retry::retry_after;
use crate::provider::{EntryKind, ProviderError, RemoteEntry};

/// A file, folder or deleted entry: `Metadata` with its tag, or a bare `FileMetadata`.
#[derive(Debug, Clone, Deserialize)]
pub(crate) struct Metadata {
    /// `file`, `folder` or `deleted`; absent on a bare `FileMetadata`.
    #[serde(rename = ".tag", default)]
    pub tag: Option<String>,
    pub name: String,
    /// `id:…`, kept across renames (absent on deleted entries).
    #[serde(default)]
    pub id: Option<String>,
    /// The case-insensitive key; absent for entries outside the caller's view.
    #[serde(default)]
    pub path_lower: Option<String>,
    #[serde(default)]
    pub rev: Option<String>,
    #[serde(default)]
    pub size: Option<u64>,
    #[serde(default)]
    pub client_modified: Option<String>,
    #[serde(default)]
    pub server_modified: Option<String>,
    #[serde(default)]
    pub content_hash: Option<String>,
    /// False for Paper docs and other cloud documents: `files/download` refuses them.
    #[serde(default = "yes")]
    pub is_downloadable: bool,
}

fn yes() -> bool {
    true
}

/// Dropbox's timestamps: `%Y-%m-%dT%H:%M:%SZ` (whole seconds, UTC).
pub(crate) fn time(s: &Option<String>) -> Option<SystemTime> {
    let s = s.as_deref()?;
    chrono::DateTime::parse_from_rfc3339(s).ok().map(Into::into)
}

/// A time as Dropbox takes it: whole seconds, UTC (it refuses fractions).
pub(crate) fn timestamp(t: SystemTime) -> String {
    chrono::DateTime::<chrono::Utc>::from(t)
        .format("%Y-%m-%dT%H:%M:%SZ")
        .to_string()
}

impl Metadata {
    /// Whether this is a folder (a bare `FileMetadata` is a file).
    pub fn is_folder(&self) -> bool {
        self.tag.as_deref() == Some("folder")
    }

    pub fn is_deleted(&self) -> bool {
        self.tag.as_deref() == Some("deleted")
    }

    /// The entry for it, named `name` (the local name). A file's revision is its `rev`,
    /// which commits in `update` mode check; a folder has none and stands for itself by id.
    /// The modification time is `client_modified`, which the uploads set from the local
    /// file; `server_modified` when it is missing.
    pub fn entry(&self, name: &str) -> RemoteEntry {
        let folder = self.is_folder();
        RemoteEntry {
            id: self.id.clone().unwrap_or_default(),
            name: name.to_owned(),
            kind: if folder {
                EntryKind::Dir
            } else {
                EntryKind::File
            },
            size: if folder { 0 } else { self.size.unwrap_or(0) },
            mtime: time(&self.client_modified)
                .or_else(|| time(&self.server_modified))
                .unwrap_or(SystemTime::UNIX_EPOCH),
            revision: if folder {
                self.id.clone().unwrap_or_default()
            } else {
                self.rev.clone().unwrap_or_default()
            },
            hash: self
                .content_hash
                .as_ref()
                .filter(|_| !folder)
                .map(|h| format!("{HASH_NAME}:{}", h.to_ascii_lowercase())),
            mode: None,
            symlink_target: None,
        }
    }
}

/// `files/list_folder` and `list_folder/continue`.
#[derive(Debug, Deserialize)]
pub(crate) struct ListFolderResult {
    pub entries: Vec<Metadata>,
    pub cursor: String,
    pub has_more: bool,
}

#[derive(Debug, Deserialize)]
pub(crate) struct Cursor {
    pub cursor: String,
}

/// `files/list_folder/longpoll`.
#[derive(Debug, Deserialize)]
pub(crate) struct LongpollResult {
    pub changes: bool,
    /// Seconds to wait before the next longpoll.
    #[serde(default)]
    pub backoff: Option<u64>,
}

/// Results that wrap one `Metadata` (`create_folder_v2`, `move_v2`, `copy_v2`,
/// `delete_v2`).
#[derive(Debug, Deserialize)]
pub(crate) struct MetadataResult {
    pub metadata: Metadata,
}

#[derive(Debug, Deserialize)]
pub(crate) struct UploadSessionStart {
    pub session_id: String,
}

#[derive(Debug, Deserialize)]
pub(crate) struct ListRevisionsResult {
    #[serde(default)]
    pub entries: Vec<Metadata>,
}

/// `users/get_current_account`, as much as the mount needs.
#[derive(Debug, Deserialize)]
pub(crate) struct Account {
    pub root_info: RootInfo,
}

/// `UserRootInfo` (`.tag` `user`) or `TeamRootInfo` (`.tag` `team`, with `home_path`).
#[derive(Debug, Deserialize)]
pub(crate) struct RootInfo {
    pub root_namespace_id: String,
    pub home_namespace_id: String,
}

/// `users/get_space_usage`.
#[derive(Debug, Deserialize)]
pub(crate) struct SpaceUsage {
    pub used: u64,
    pub allocation: Allocation,
}

/// `individual {allocated}` or `team {used, allocated, user_within_team_space_allocated,
/// …}` (0 there: no limit for this member).
#[derive(Debug, Deserialize)]
pub(crate) struct Allocation {
    #[serde(rename = ".tag")]
    pub tag: String,
    #[serde(default)]
    pub allocated: Option<u64>,
    #[serde(default)]
    pub used: Option<u64>,
    #[serde(default)]
    pub user_within_team_space_allocated: Option<u64>,
}

/// The chain of union tags from the top of an error value: `{".tag":"path","path":
/// {".tag":"not_found"}}` is `["path", "not_found"]`. A member whose value is a struct
/// carries its fields inline; the union inside it sits under `reason` (`UploadWriteFailed`)
/// or under the tag's name.
pub(crate) fn tag_chain(mut v: &Value) -> Vec<String> {
    let mut chain = Vec::new();
    while let Some(tag) = v.get(".tag").and_then(Value::as_str) {
        chain.push(tag.to_owned());
        match v
            .get(tag)
            .filter(|n| n.get(".tag").is_some())
            .or_else(|| v.get("reason").filter(|n| n.get(".tag").is_some()))
        {
            Some(next) => v = next,
            None => break,
        }
    }
    chain
}

/// `incorrect_offset`'s `correct_offset`, wherever it sits in the error value.
pub(crate) fn correct_offset(v: &Value) -> Option<u64> {
    if let Some(n) = v.get("correct_offset").and_then(Value::as_u64) {
        return Some(n);
    }
    let tag = v.get(".tag")?.as_str()?;
    correct_offset(v.get(tag)?)
}

/// Dropbox's error bodies: 409 and 401 carry `{"error_summary", "error": union}`, 429
/// `{"error": {"reason": {".tag"}, "retry_after"}}`, 400 plain text. Decisions are made on
/// the union's tags, never on `error_summary` (for logs only, its form varies).
pub(crate) struct DropboxErrors;

impl DropboxErrors {
    /// The `error` value of an error body, if it is JSON.
    pub fn error_value(body: &[u8]) -> Option<Value> {
        let v: Value = serde_json::from_slice(body).ok()?;
        v.get("error").cloned()
    }
}

impl ServiceErrors for DropboxErrors {
    fn detail(&self, body: &[u8]) -> ErrorDetail {
        let Some(error) = Self::error_value(body) else {
            // 400s are plain text ("Error in call to API function …").
            return ErrorDetail::plain(body);
        };
        let (chain, retry) = match error.get("reason") {
            // RateLimitError: a struct, its union under `reason`.
            Some(reason) if error.get(".tag").is_none() => (
                tag_chain(reason),
                error
                    .get("retry_after")
                    .and_then(Value::as_u64)
                    .map(Duration::from_secs),
            ),
            _ => (tag_chain(&error), None),
        };
        ErrorDetail {
            // The tags are the message: Dropbox's `user_message` is rare and localised.
            message: None,
            code: (!chain.is_empty()).then(|| chain.join("/")),
            retry_after: retry,
        }
    }

    fn classify(
        &self,
        status: StatusCode,
        headers: &HeaderMap,
        detail: &ErrorDetail,
        what: &str,
    ) -> ProviderError {
        let message = detail.describe(what, status);
        let code = detail.code.as_deref().unwrap_or("");
        let has = |tag: &str| code.split('/').any(|t| t == tag);
        let wait = retry_after(headers).or(detail.retry_after);
        match status.as_u16() {
            429 => ProviderError::RateLimited { retry_after: wait },
            // Endpoint errors: what happened is in the tags.
            409 if has("too_many_write_operations") => {
                ProviderError::RateLimited { retry_after: wait }
            }
            // "Too many files in one request": asking again cannot help.
            409 if has("too_many_files") => ProviderError::Unsupported(message),
            // "Verify … and if not, try again": the outcome is not known.
            409 if has("internal_error") => ProviderError::Transient(message),
            409 if has("not_found") => ProviderError::NotFound(message),
            409 if has("not_folder") => ProviderError::NotADirectory(message),
            409 if has("not_file") => ProviderError::IsADirectory(message),
            409 if has("conflict") => ProviderError::AlreadyExists(message),
            409 if has("insufficient_space") || has("insufficient_quota") => {
                ProviderError::InsufficientStorage
            }
            409 if has("disallowed_name") || has("malformed_path") => {
                ProviderError::InvalidName(message)
            }
            409 if has("no_write_permission")
                || has("team_folder")
                || has("restricted_content")
                || has("cant_copy_shared_folder")
                || has("cant_nest_shared_folder")
                || has("cant_move_shared_folder")
                || has("cant_transfer_ownership") =>
            {
                ProviderError::PermissionDenied(message)
            }
            // A cursor the server forgot: the caller starts over.
            409 if has("reset") => ProviderError::PreconditionFailed(message),
            409 => ProviderError::Protocol(message),
            _ => classify_status(status, wait, message),
        }
    }
}

/// `Dropbox-API-Arg` (and `Dropbox-API-Path-Root`) values: JSON in an HTTP header, so
/// every character from DEL (0x7f) up is escaped as `\uXXXX` (UTF-16, surrogate pairs
/// beyond the BMP), as Dropbox's HTTP documentation requires.
pub(crate) fn header_json(v: &Value) -> String {
    let s = v.to_string();
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        if (c as u32) < 0x7f {
            out.push(c);
        } else {
            let mut units = [0u16; 2];
            for u in c.encode_utf16(&mut units) {
                out.push_str(&format!("\\u{u:04x}"));
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn union_tags_are_read_from_the_structure() {
        let e = json!({".tag": "path", "path": {".tag": "not_found"}});
        assert_eq!(tag_chain(&e), ["path", "not_found"]);
        let e = json!({".tag": "path", "reason": {".tag": "conflict", "conflict": {".tag": "file"}}, "upload_session_id": "x"});
        assert_eq!(tag_chain(&e), ["path", "conflict", "file"]);
        let e = json!({".tag": "lookup_failed", "lookup_failed": {".tag": "incorrect_offset", "correct_offset": 42}});
        assert_eq!(correct_offset(&e), Some(42));
        assert_eq!(
            correct_offset(&json!({".tag": "incorrect_offset", "correct_offset": 7})),
            Some(7)
        );
    }

    #[test]
    fn errors_by_tag_never_by_summary() {
        let classify = |status: u16, body: &str| {
            let d = DropboxErrors.detail(body.as_bytes());
            DropboxErrors.classify(
                StatusCode::from_u16(status).unwrap(),
                &HeaderMap::new(),
                &d,
                "op",
            )
        };
        // A summary that says something else is not read.
        let e = classify(
            409,
            r#"{"error_summary": "path/conflict/..", "error": {".tag": "path", "path": {".tag": "not_found"}}}"#,
        );
        assert!(matches!(e, ProviderError::NotFound(_)), "{e:?}");
        let e = classify(
            409,
            r#"{"error_summary": "x", "error": {".tag": "to", "to": {".tag": "conflict", "conflict": {".tag": "folder"}}}}"#,
        );
        assert!(matches!(e, ProviderError::AlreadyExists(_)), "{e:?}");
        let e = classify(
            429,
            r#"{"error_summary": "too_many_requests/..", "error": {"reason": {".tag": "too_many_write_operations"}, "retry_after": 3}}"#,
        );
        assert_eq!(
            e,
            ProviderError::RateLimited {
                retry_after: Some(Duration::from_secs(3))
            }
        );
        let e = classify(
            409,
            r#"{"error_summary": "x", "error": {".tag": "path", "reason": {".tag": "too_many_write_operations"}, "upload_session_id": "s"}}"#,
        );
        assert!(matches!(e, ProviderError::RateLimited { .. }), "{e:?}");
        let e = classify(
            409,
            r#"{"error_summary": "reset/", "error": {".tag": "reset"}}"#,
        );
        assert!(matches!(e, ProviderError::PreconditionFailed(_)), "{e:?}");
        let e = classify(
            400,
            "Error in call to API function \"files/list_folder\": request body: unknown field 'x'",
        );
        match e {
            ProviderError::Protocol(m) => assert!(m.contains("unknown field"), "{m}"),
            e => panic!("{e:?}"),
        }
        let e = classify(
            401,
            r#"{"error_summary": "expired_access_token/", "error": {".tag": "expired_access_token"}}"#,
        );
        assert!(matches!(e, ProviderError::Auth(_)), "{e:?}");
    }

    #[test]
    fn header_json_escapes_everything_from_del_up() {
        let v = json!({"path": "/Ünï\u{7f}/😀"});
        let h = header_json(&v);
        assert!(h.is_ascii());
        assert_eq!(h, r#"{"path":"/\u00dcn\u00ef\u007f/\ud83d\ude00"}"#);
        let back: Value = serde_json::from_str(&h).unwrap();
        assert_eq!(back, v);
    }

    #[test]
    fn tagged_and_bare_metadata() {
        let tagged: Metadata = serde_json::from_str(
            r#"{".tag": "folder", "name": "math", "id": "id:a4ayc_80_OEAAAAAAAAAXz", "path_lower": "/homework/math", "path_display": "/Homework/math"}"#,
        )
        .unwrap();
        assert!(tagged.is_folder());
        assert_eq!(tagged.entry("math").kind, EntryKind::Dir);
        let bare: Metadata = serde_json::from_str(
            r#"{"name": "Prime_Numbers.txt", "id": "id:a", "client_modified": "2015-05-12T15:50:38Z", "server_modified": "2015-05-12T15:50:38Z", "rev": "a1c10ce0dd78", "size": 7212, "content_hash": "E3B0"}"#,
        )
        .unwrap();
        let e = bare.entry("p");
        assert_eq!(
            (e.kind, e.size, e.revision.as_str()),
            (EntryKind::File, 7212, "a1c10ce0dd78")
        );
        assert_eq!(e.hash.as_deref(), Some("dropbox:e3b0"));
        assert_eq!(timestamp(e.mtime), "2015-05-12T15:50:38Z");
    }
}
