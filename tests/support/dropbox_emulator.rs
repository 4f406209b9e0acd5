//! A strict emulator of Dropbox API v2 and its OAuth endpoints, on the emulator kit. It
//! follows `shared/reference/provider-apis.md` §3, `readonly-sources.md` §4.6 and the
//! Stone examples in `shared/fixtures/dropbox/` (the ones in `tests/fixtures/dropbox/`),
//! and refuses what Dropbox refuses:
//!
//! - three hosts on one server, each route only on its own: RPC under `/2/`, content
//!   (downloads, uploads) under `/content/2/`, notify (longpoll) under `/notify/2/`;
//! - RPC bodies are JSON with `Content-Type: application/json`; a route without an
//!   argument takes no body (a JSON content type with an empty body is a 400); content
//!   routes take their argument in `Dropbox-API-Arg`, which must be ASCII (everything from
//!   DEL up escaped); unknown fields, a root written as `/` and malformed paths are 400s
//!   with plain-text bodies;
//! - bearer tokens expire (401 `expired_access_token`), refresh tokens do not rotate, a
//!   refresh token is issued only for `token_access_type=offline`, `auth/token/revoke`
//!   ends the token, its refresh token and its siblings; longpoll refuses an
//!   `Authorization` header;
//! - a case-insensitive, case-preserving namespace (`path_lower`, `path_display`); names
//!   Dropbox refuses; parents made on demand by uploads, folders and moves, as Dropbox
//!   does; a move that changes only the case is refused (`to/conflict`); deletes take
//!   folders with their contents;
//! - union tags as the spec serialises them: `Metadata` tagged (listings, `get_metadata`,
//!   moves, copies, deletes), `FileMetadata`/`FolderMetadata` bare (uploads, `finish`,
//!   `create_folder_v2`, `list_revisions`); errors as `{"error_summary", "error"}` with
//!   409 for endpoint errors, 429 as a `RateLimitError` (`reason`, `retry_after`) plus
//!   `Retry-After`;
//! - uploads: `files/upload` and session requests up to the request cap (150 MiB),
//!   `content_hash` checked when sent, commit modes `add`/`overwrite`/`update` with
//!   `strict_conflict`; sessions with offset checks (`incorrect_offset` +
//!   `correct_offset`), gone once finished; `finish_batch_v2` of closed sessions, each
//!   entry a `success` or a `failure`; a namespace that takes only so many commits a
//!   second (429 `too_many_write_operations`) when asked to;
//! - cursors: listings paged by `limit` with `has_more`, recursive cursors continued with
//!   the changes since (a deleted folder is one `deleted` entry), `reset` on demand;
//!   longpoll that holds until a change or its time, with `backoff` on demand (and a
//!   count of clients that did not wait it out);
//! - revisions (`list_revisions`, `download` of `rev:…`, `restore`), space usage
//!   (individual or team), a team account whose root namespace differs from the home
//!   namespace (`Dropbox-API-Path-Root`), Paper docs that cannot be downloaded;
//! - on-demand faults: 429 of both reasons, 5xx, a reply lost after the work was done,
//!   a connection dropped before it.
#![allow(dead_code)]

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use serde_json::{json, Map, Value};

use crate::emu::faults::FaultQueue;
use crate::emu::oauth::{BearerState, OAuthReply, OAuthServer, OAuthSettings, TokenPrefixes};
use crate::emu::range::{wanted, Wanted};
use crate::emu::server::{Reply, Request, Response, Server};
use crate::emu::text::{json_response, query_map, random_of, URL_SAFE};
use cloudmount::provider::dropbox::hash::content_hash;

/// No request body may be larger (`files/upload`, each session request).
pub const REQUEST_CAP: usize = 150 * 1024 * 1024;

#[derive(Clone, Debug)]
pub struct DropboxConfig {
    pub client_id: String,
    pub client_secret: String,
    pub access_token_lifetime: Duration,
    /// A team member: the root namespace (team folders) differs from the home one.
    pub team: bool,
    /// The largest request body accepted (150 MiB at Dropbox; smaller in tests).
    pub request_cap: usize,
    /// How long a longpoll waits for changes when none come (Dropbox: the requested
    /// timeout plus up to 90 s); `None` is the requested timeout.
    pub longpoll_hold: Option<Duration>,
    /// The account's (or the member's) space.
    pub allocated: u64,
    /// Commits (uploads, finishes, batches, folder changes, moves, deletes) the namespace
    /// takes within a window before answering 429 `too_many_write_operations`, with a
    /// `retry_after` of when a slot frees up; `None`: any.
    pub write_limit: Option<(usize, Duration)>,
}

impl Default for DropboxConfig {
    fn default() -> Self {
        DropboxConfig {
            client_id: "dbxappkey0abc12".into(),
            client_secret: "dbxappsecret0xyz".into(),
            access_token_lifetime: Duration::from_secs(14400),
            team: false,
            request_cap: REQUEST_CAP,
            longpoll_hold: None,
            allocated: 2 * 1024 * 1024 * 1024,
            write_limit: None,
        }
    }
}

/// A failure the next matching request sees.
#[derive(Clone, Debug, PartialEq)]
pub enum Fault {
    /// 429 with a `RateLimitError` of this reason (`too_many_requests`,
    /// `too_many_write_operations`) and `retry_after` (body and header).
    RateLimit {
        reason: &'static str,
        retry_after: u64,
    },
    /// This status (500, 503) with a plain body, on the next RPC or content call.
    ServerError(u16),
    /// The next `list_folder/continue`: 409 `reset`.
    ResetCursor,
    /// The next longpoll: 409 `reset`.
    ResetLongpoll,
    /// The next longpoll answers at once with `backoff` seconds.
    LongpollBackoff(u64),
    /// The next call to `route` does its work, then the connection drops (lost reply).
    LoseReply(&'static str),
    /// The next call to `route` is dropped before it does anything.
    DropRequest(&'static str),
}

#[derive(Clone, Debug, Default)]
pub struct Stats {
    pub api_calls: u64,
    pub list_calls: u64,
    pub downloads: u64,
    pub ranged_downloads: u64,
    pub simple_uploads: u64,
    pub session_appends: u64,
    pub session_finishes: u64,
    pub longpolls: u64,
    /// Longpolls that came before the `backoff` a previous one asked for had passed.
    pub backoff_violations: u64,
    pub throttled: u64,
    /// `finish_batch_v2` calls, and the commits they carried.
    pub batch_commits: u64,
    pub batched_entries: u64,
    /// Writes refused with `too_many_write_operations` by the write-rate limit.
    pub write_limited: u64,
    /// Calls that carried `Dropbox-API-Path-Root`.
    pub path_root_calls: u64,
}

#[derive(Clone, Debug)]
struct Node {
    id: String,
    /// The full display path from the root namespace ("/Alice Smith/a.txt").
    display: String,
    folder: bool,
    content: Vec<u8>,
    rev: String,
    client_modified: SystemTime,
    server_modified: SystemTime,
    /// False for a Paper doc: listed only on request, never downloaded.
    downloadable: bool,
}

/// One revision of a file, kept after it is replaced or deleted.
#[derive(Clone, Debug)]
struct Revision {
    id: String,
    display: String,
    content: Vec<u8>,
    client_modified: SystemTime,
    server_modified: SystemTime,
}

/// What the change log records: the entry as it was after the change, or its removal.
#[derive(Clone, Debug)]
enum Logged {
    Upsert(Node),
    Deleted { display: String },
}

#[derive(Clone, Debug)]
struct CursorState {
    /// The namespace base the cursor was made in (lowercase, "" for the root namespace).
    base: String,
    /// The listed folder, full lowercase path ("" for the namespace's root).
    scope: String,
    recursive: bool,
    include_deleted: bool,
    include_non_downloadable: bool,
    limit: usize,
    /// Entries of the first listing not handed out yet.
    pending: Vec<Value>,
    /// Changes after this log position are reported.
    seq: usize,
}

struct Session {
    data: Vec<u8>,
    closed: bool,
}

struct State {
    cfg: DropboxConfig,
    oauth: OAuthServer,
    /// Codes issued without `token_access_type=offline`: their grants get no refresh token.
    online_codes: Vec<String>,
    /// By full lowercase path ("" is the root, never stored).
    nodes: BTreeMap<String, Node>,
    revisions: HashMap<String, Revision>,
    /// Every revision of each file id, oldest first.
    history: HashMap<String, Vec<String>>,
    /// Where the file last seen under each lowercase path went (for list_revisions of
    /// deleted files).
    last_id_at: HashMap<String, String>,
    log: Vec<(String, Logged)>,
    cursors: HashMap<String, CursorState>,
    sessions: HashMap<String, Session>,
    issued_sessions: Vec<String>,
    /// The member's folder in a team space ("/Alice Smith"), or "" for a personal account.
    home_path: String,
    root_ns: String,
    home_ns: String,
    next_id: u64,
    backoff_until: Option<Instant>,
    /// When the recent writes happened, for `write_limit`.
    recent_writes: std::collections::VecDeque<Instant>,
    stats: Stats,
}

/// The emulator. Not reproduced: shared links, `ns:` paths, the older asynchronous
/// `finish_batch` (with `finish_batch/check`), file
/// properties, `files/export`, upload-session concurrency (`session_type`), the web
/// pages behind `/oauth2/authorize` (it consents at once).
pub struct DropboxEmulator {
    state: Arc<Mutex<State>>,
    faults: Arc<FaultQueue<Fault>>,
    server: Server,
}

fn random(n: usize) -> String {
    random_of(URL_SAFE, n)
}

/// Dropbox's time format: whole seconds, UTC.
fn timestamp(t: SystemTime) -> String {
    chrono::DateTime::<chrono::Utc>::from(t)
        .format("%Y-%m-%dT%H:%M:%SZ")
        .to_string()
}

fn json_resp(status: u16, v: Value) -> Response {
    json_response(status, v)
}

/// A 400: Dropbox answers bad input in plain text.
fn bad_input(route: &str, what: &str) -> Response {
    Response::new(
        400,
        format!("Error in call to API function \"{route}\": {what}"),
    )
    .header("Content-Type", "text/plain; charset=utf-8")
}

/// The summary Dropbox writes beside an error (for logs; clients must not parse it).
fn summary(error: &Value) -> String {
    let mut parts = Vec::new();
    let mut v = error;
    while let Some(tag) = v.get(".tag").and_then(Value::as_str) {
        parts.push(tag.to_owned());
        match v
            .get(tag)
            .filter(|n| n.get(".tag").is_some())
            .or_else(|| v.get("reason"))
        {
            Some(n) => v = n,
            None => break,
        }
    }
    format!("{}/..{}", parts.join("/"), random(1))
}

/// A 409 endpoint error with this union value.
fn endpoint_error(error: Value) -> Response {
    json_resp(
        409,
        json!({"error_summary": summary(&error), "error": error}),
    )
}

/// `{".tag": a, a: {".tag": b, b: {".tag": c}}}` for the chain `[a, b, c]`.
fn tags(chain: &[&str]) -> Value {
    let mut v = json!({".tag": chain[chain.len() - 1]});
    for t in chain[..chain.len() - 1].iter().rev() {
        v = json!({".tag": t, *t: v});
    }
    v
}

fn lookup_error(member: &str, what: &str) -> Response {
    endpoint_error(tags(&[member, what]))
}

fn conflict(member: &str, folder: bool) -> Response {
    endpoint_error(tags(&[
        member,
        "conflict",
        if folder { "folder" } else { "file" },
    ]))
}

fn auth_error(tag: &str) -> Response {
    let error = json!({".tag": tag});
    json_resp(
        401,
        json!({"error_summary": format!("{tag}/"), "error": error}),
    )
}

/// Why Dropbox refuses a name (`disallowed_name`), if it does.
fn disallowed(name: &str) -> bool {
    let lower = name.to_lowercase();
    matches!(
        lower.as_str(),
        "desktop.ini" | "thumbs.db" | ".dropbox" | ".dropbox.attr" | "icon\r"
    ) || name.starts_with("~$")
}

/// Why a path component is malformed, if it is.
fn malformed(name: &str) -> bool {
    name.is_empty()
        || name == "."
        || name == ".."
        || name.ends_with(' ')
        || name
            .chars()
            .any(|c| c == '\\' || c == '\0' || c == '\u{7f}')
        || name.len() > 255
}

fn parent_of(lower: &str) -> &str {
    match lower.rfind('/') {
        Some(i) => &lower[..i],
        None => "",
    }
}

fn name_of(display: &str) -> &str {
    display.rsplit('/').next().unwrap_or(display)
}

/// Whether `path` is `dir` or below it (lowercase, "" is the root).
fn within(path: &str, dir: &str) -> bool {
    dir.is_empty() || path == dir || path.starts_with(&format!("{dir}/"))
}

/// The fields a route's argument may have.
fn allowed_fields(route: &str) -> Option<&'static [&'static str]> {
    Some(match route {
        "files/get_metadata" => &[
            "path",
            "include_media_info",
            "include_deleted",
            "include_has_explicit_shared_members",
            "include_property_groups",
        ],
        "files/list_folder" | "files/list_folder/get_latest_cursor" => &[
            "path",
            "recursive",
            "include_media_info",
            "include_deleted",
            "include_has_explicit_shared_members",
            "include_mounted_folders",
            "limit",
            "shared_link",
            "include_property_groups",
            "include_non_downloadable_files",
        ],
        "files/list_folder/continue" => &["cursor"],
        "files/list_folder/longpoll" => &["cursor", "timeout"],
        "files/create_folder_v2" => &["path", "autorename"],
        "files/delete_v2" => &["path", "parent_rev"],
        "files/move_v2" | "files/copy_v2" => &[
            "from_path",
            "to_path",
            "allow_shared_folder",
            "autorename",
            "allow_ownership_transfer",
        ],
        "files/list_revisions" => &["path", "mode", "limit", "before_rev"],
        "files/restore" => &["path", "rev"],
        "files/download" => &["path", "rev"],
        "files/upload" => &[
            "path",
            "mode",
            "autorename",
            "client_modified",
            "mute",
            "property_groups",
            "strict_conflict",
            "content_hash",
        ],
        "files/upload_session/start" => &["close", "session_type", "content_hash"],
        "files/upload_session/append_v2" => &["cursor", "close", "content_hash"],
        "files/upload_session/finish" => &["cursor", "commit", "content_hash"],
        "files/upload_session/finish_batch_v2" => &["entries"],
        _ => return None,
    })
}

/// Routes that commit a change (each takes the namespace's lock once).
const WRITES: [&str; 8] = [
    "files/upload",
    "files/upload_session/finish",
    "files/upload_session/finish_batch_v2",
    "files/create_folder_v2",
    "files/delete_v2",
    "files/move_v2",
    "files/copy_v2",
    "files/restore",
];

/// Routes without an argument.
const NO_ARG: [&str; 3] = [
    "users/get_current_account",
    "users/get_space_usage",
    "auth/token/revoke",
];
const CONTENT_ROUTES: [&str; 5] = [
    "files/download",
    "files/upload",
    "files/upload_session/start",
    "files/upload_session/append_v2",
    "files/upload_session/finish",
];

impl State {
    fn new_id(&mut self) -> String {
        self.next_id += 1;
        format!("id:{}{}", random(12), self.next_id)
    }

    fn new_rev(&mut self) -> String {
        self.next_id += 1;
        format!("{:x}{:09x}", 0x5a0 + self.next_id, self.next_id * 7919)
    }

    /// The namespace base of a request (lowercase display prefix), from its
    /// `Dropbox-API-Path-Root`, or the error to answer.
    fn base_of(&mut self, req: &Request) -> Result<String, Response> {
        let home = self.home_path.to_lowercase();
        let Some(h) = req.header("dropbox-api-path-root") else {
            return Ok(home);
        };
        self.stats.path_root_calls += 1;
        let v: Value = serde_json::from_str(h).map_err(|_| {
            bad_input(
                req.path_only(),
                "HTTP header \"Dropbox-API-Path-Root\": could not decode input as JSON",
            )
        })?;
        let invalid_root = || {
            let info = if self.cfg.team {
                json!({".tag": "team", "root_namespace_id": self.root_ns, "home_namespace_id": self.home_ns, "home_path": self.home_path})
            } else {
                json!({".tag": "user", "root_namespace_id": self.root_ns, "home_namespace_id": self.home_ns})
            };
            json_resp(
                422,
                json!({"error_summary": "invalid_root/..", "error": {".tag": "invalid_root", "invalid_root": info}}),
            )
        };
        match v.get(".tag").and_then(Value::as_str) {
            Some("home") => Ok(home),
            Some("root") if v.get("root").and_then(Value::as_str) == Some(&self.root_ns) => {
                Ok(String::new())
            }
            Some("root") => Err(invalid_root()),
            Some("namespace_id") => match v.get("namespace_id").and_then(Value::as_str) {
                Some(ns) if ns == self.root_ns => Ok(String::new()),
                Some(ns) if ns == self.home_ns => Ok(home),
                _ => Err(json_resp(
                    422,
                    json!({"error_summary": "no_permission/..", "error": {".tag": "no_permission"}}),
                )),
            },
            _ => Err(bad_input(
                req.path_only(),
                "HTTP header \"Dropbox-API-Path-Root\": unknown tag",
            )),
        }
    }

    /// A path argument as a full lowercase path and the display path it names, or the
    /// error to answer. `""` is the namespace's root.
    fn resolve(&self, route: &str, base: &str, path: &str) -> Result<(String, String), Response> {
        if path == "/" {
            return Err(bad_input(
                route,
                "request body: path: Specify the root folder as an empty string rather than as \"/\".",
            ));
        }
        if let Some(id) = path.strip_prefix("id:") {
            let found = self
                .nodes
                .iter()
                .find(|(k, n)| n.id == format!("id:{id}") && within(k, base));
            return match found {
                Some((k, n)) => Ok((k.clone(), n.display.clone())),
                None => Err(lookup_error("path", "not_found")),
            };
        }
        if !path.is_empty() && !path.starts_with('/') {
            return Err(bad_input(
                route,
                &format!("request body: path: '{path}' did not match pattern '(/(.|[\\r\\n])*)|(ns:[0-9]+(/.*)?)|(id:.*)'"),
            ));
        }
        if path.ends_with('/') || path.contains("//") {
            return Err(lookup_error("path", "malformed_path"));
        }
        let base_display = self.display_of(base);
        Ok((
            format!("{base}{}", path.to_lowercase()),
            format!("{base_display}{path}"),
        ))
    }

    fn display_of(&self, lower: &str) -> String {
        if lower.is_empty() {
            return String::new();
        }
        self.nodes
            .get(lower)
            .map(|n| n.display.clone())
            .unwrap_or_else(|| lower.to_owned())
    }

    /// The entry as the client sees it: paths relative to its namespace base.
    fn metadata(&self, node: &Node, base: &str, tagged: bool) -> Value {
        let base_len = base.len();
        let display = &node.display[base_len.min(node.display.len())..];
        let lower = display.to_lowercase();
        let mut v = Map::new();
        if tagged {
            v.insert(
                ".tag".into(),
                json!(if node.folder { "folder" } else { "file" }),
            );
        }
        v.insert("name".into(), json!(name_of(&node.display)));
        v.insert("id".into(), json!(node.id));
        if !node.folder {
            v.insert(
                "client_modified".into(),
                json!(timestamp(node.client_modified)),
            );
            v.insert(
                "server_modified".into(),
                json!(timestamp(node.server_modified)),
            );
            v.insert("rev".into(), json!(node.rev));
            v.insert("size".into(), json!(node.content.len()));
        }
        v.insert("path_lower".into(), json!(lower));
        // Only the last component's case is sure: Dropbox may show ancestors lowercased.
        let shown = match display.rfind('/') {
            Some(i) => format!("{}{}", display[..i].to_lowercase(), &display[i..]),
            None => display.to_owned(),
        };
        v.insert("path_display".into(), json!(shown));
        if !node.folder {
            v.insert("is_downloadable".into(), json!(node.downloadable));
            if node.downloadable {
                v.insert("content_hash".into(), json!(content_hash(&node.content)));
            }
        }
        Value::Object(v)
    }

    fn deleted_metadata(display: &str, base: &str) -> Value {
        let d = &display[base.len().min(display.len())..];
        json!({".tag": "deleted", "name": name_of(display), "path_lower": d.to_lowercase(), "path_display": d})
    }

    fn record(&mut self, lower: &str, what: Logged) {
        self.log.push((lower.to_owned(), what));
    }

    /// Makes the missing folders above `lower` (Dropbox does, for every write).
    fn make_parents(&mut self, lower: &str, display: &str) -> Result<(), Response> {
        let lowers: Vec<&str> = lower.split('/').collect();
        let displays: Vec<&str> = display.split('/').collect();
        for i in 1..lowers.len().saturating_sub(1) {
            let l = lowers[..=i].join("/");
            match self.nodes.get(&l) {
                Some(n) if n.folder => {}
                Some(_) => return Err(conflict("path", false)),
                None => {
                    let d = displays[..=i].join("/");
                    self.create(&l, &d, true, Vec::new(), SystemTime::now());
                }
            }
        }
        Ok(())
    }

    fn create(
        &mut self,
        lower: &str,
        display: &str,
        folder: bool,
        content: Vec<u8>,
        modified: SystemTime,
    ) -> Node {
        let id = self.new_id();
        let rev = if folder {
            String::new()
        } else {
            self.new_rev()
        };
        let node = Node {
            id,
            display: display.to_owned(),
            folder,
            content,
            rev,
            client_modified: modified,
            server_modified: SystemTime::now(),
            downloadable: true,
        };
        self.put(lower, node.clone());
        node
    }

    /// Stores `node` at `lower`, keeps its revision, logs it.
    fn put(&mut self, lower: &str, node: Node) {
        if !node.folder {
            self.revisions.insert(
                node.rev.clone(),
                Revision {
                    id: node.id.clone(),
                    display: node.display.clone(),
                    content: node.content.clone(),
                    client_modified: node.client_modified,
                    server_modified: node.server_modified,
                },
            );
            let h = self.history.entry(node.id.clone()).or_default();
            if h.last() != Some(&node.rev) {
                h.push(node.rev.clone());
            }
            self.last_id_at.insert(lower.to_owned(), node.id.clone());
        }
        self.nodes.insert(lower.to_owned(), node.clone());
        self.record(lower, Logged::Upsert(node));
    }

    /// Replaces a file's content: a new revision.
    fn replace(&mut self, lower: &str, content: Vec<u8>, modified: SystemTime) -> Node {
        let rev = self.new_rev();
        let mut node = self.nodes[lower].clone();
        node.content = content;
        node.rev = rev;
        node.client_modified = modified;
        node.server_modified = SystemTime::now();
        self.put(lower, node.clone());
        node
    }

    /// Removes `lower` and everything below it; one `deleted` entry in the log.
    fn remove_tree(&mut self, lower: &str) -> Option<Node> {
        let node = self.nodes.remove(lower)?;
        let below = format!("{lower}/");
        self.nodes.retain(|k, _| !k.starts_with(&below));
        self.record(
            lower,
            Logged::Deleted {
                display: node.display.clone(),
            },
        );
        Some(node)
    }

    fn children(&self, dir: &str, recursive: bool) -> Vec<(String, Node)> {
        let prefix = if dir.is_empty() {
            "/".to_owned()
        } else {
            format!("{dir}/")
        };
        self.nodes
            .range(prefix.clone()..)
            .take_while(|(k, _)| k.starts_with(&prefix))
            .filter(|(k, _)| recursive || !k[prefix.len()..].contains('/'))
            .map(|(k, n)| (k.clone(), n.clone()))
            .collect()
    }

    fn new_cursor(&mut self, c: CursorState) -> String {
        let token = format!("AAE{}", random(40));
        self.cursors.insert(token.clone(), c);
        token
    }

    /// A page of a cursor: first its pending listing, then the changes since its place.
    fn page(&mut self, token: &str) -> Result<Value, Response> {
        let Some(mut c) = self.cursors.get(token).cloned() else {
            return Err(bad_input(
                "files/list_folder/continue",
                "request body: cursor: invalid cursor",
            ));
        };
        let mut entries: Vec<Value> = Vec::new();
        if !c.pending.is_empty() {
            let take = c.limit.min(c.pending.len());
            entries.extend(c.pending.drain(..take));
        } else {
            while c.seq < self.log.len() && entries.len() < c.limit {
                let (lower, what) = self.log[c.seq].clone();
                c.seq += 1;
                let in_scope = if c.recursive {
                    within(&lower, &c.scope) && lower != c.scope
                } else {
                    parent_of(&lower) == c.scope
                };
                if !in_scope || !within(&lower, &c.base) {
                    continue;
                }
                match what {
                    Logged::Upsert(n) if n.downloadable || c.include_non_downloadable => {
                        entries.push(self.metadata(&n, &c.base, true));
                    }
                    Logged::Upsert(_) => {}
                    // Continue results carry deletions whatever `include_deleted` says.
                    Logged::Deleted { display } => {
                        entries.push(Self::deleted_metadata(&display, &c.base));
                    }
                }
            }
        }
        let has_more = !c.pending.is_empty() || c.seq < self.log.len() && entries.len() >= c.limit;
        let cursor = self.new_cursor(c);
        Ok(json!({"entries": entries, "cursor": cursor, "has_more": has_more}))
    }
}

impl DropboxEmulator {
    pub fn start(cfg: DropboxConfig) -> DropboxEmulator {
        let oauth = OAuthServer::new(OAuthSettings {
            client_id: cfg.client_id.clone(),
            client_secret: cfg.client_secret.clone(),
            access_token_lifetime: cfg.access_token_lifetime,
            rotate_refresh_tokens: false,
            device_scopes: None,
            prefixes: TokenPrefixes {
                code: "dbxcode-",
                access: "sl.u.AFw",
                refresh: "dbxrefresh-",
                device: "unused-",
            },
            verification_field: "verification_uri",
            verification_url: String::new(),
            pending_status: 400,
            device_interval: Duration::from_secs(5),
            enforce_interval: false,
            device_code_lifetime: Duration::from_secs(600),
            revoke_unknown_status: 200,
            aad_errors: false,
        });
        let (root_ns, home_ns, home_path) = if cfg.team {
            (
                "3235641".to_owned(),
                "3235642".to_owned(),
                "/Alice Smith".to_owned(),
            )
        } else {
            ("1406525".to_owned(), "1406525".to_owned(), String::new())
        };
        let mut st = State {
            cfg,
            oauth,
            online_codes: Vec::new(),
            nodes: BTreeMap::new(),
            revisions: HashMap::new(),
            history: HashMap::new(),
            last_id_at: HashMap::new(),
            log: Vec::new(),
            cursors: HashMap::new(),
            sessions: HashMap::new(),
            issued_sessions: Vec::new(),
            home_path: home_path.clone(),
            root_ns,
            home_ns,
            next_id: 0,
            backoff_until: None,
            recent_writes: Default::default(),
            stats: Stats::default(),
        };
        if st.cfg.team {
            let lower = home_path.to_lowercase();
            st.create(&lower, &home_path, true, Vec::new(), SystemTime::now());
        }
        let state = Arc::new(Mutex::new(st));
        let faults: Arc<FaultQueue<Fault>> = Arc::default();
        let (s, f) = (state.clone(), faults.clone());
        let server = Server::start(move |req| handle(&s, &f, req));
        DropboxEmulator {
            state,
            faults,
            server,
        }
    }

    fn st(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap()
    }

    pub fn base_url(&self) -> String {
        self.server.base.clone()
    }
    pub fn api_base(&self) -> String {
        format!("{}/2", self.server.base)
    }
    pub fn content_base(&self) -> String {
        format!("{}/content/2", self.server.base)
    }
    pub fn notify_base(&self) -> String {
        format!("{}/notify/2", self.server.base)
    }
    pub fn auth_url(&self) -> String {
        format!("{}/oauth2/authorize", self.server.base)
    }
    pub fn token_url(&self) -> String {
        format!("{}/oauth2/token", self.server.base)
    }
    pub fn revoke_url(&self) -> String {
        format!("{}/2/auth/token/revoke", self.server.base)
    }
    pub fn config(&self) -> DropboxConfig {
        self.st().cfg.clone()
    }
    pub fn stats(&self) -> Stats {
        self.st().stats.clone()
    }
    pub fn oauth_stats(&self) -> crate::emu::oauth::OAuthStats {
        self.st().oauth.stats.clone()
    }
    pub fn requests(&self) -> Vec<crate::emu::server::LoggedRequest> {
        self.server.requests()
    }
    pub fn inject(&self, fault: Fault, times: usize) {
        self.faults.inject(fault, times);
    }
    pub fn pending_faults(&self) -> usize {
        self.faults.pending()
    }
    pub fn set_longpoll_hold(&self, hold: Option<Duration>) {
        self.st().cfg.longpoll_hold = hold;
    }

    // --- OAuth -------------------------------------------------------------------------

    /// Tokens for a session that skipped the browser: (access, refresh).
    pub fn issue_tokens(&self) -> (String, String) {
        self.st().oauth.issue_tokens(
            "account_info.read files.content.read files.content.write files.metadata.read files.metadata.write",
        )
    }
    pub fn expire_all_access_tokens(&self) {
        self.st().oauth.expire_all_access_tokens();
    }
    pub fn refresh_token_valid(&self, token: &str) -> bool {
        self.st().oauth.refresh_token_valid(token)
    }
    /// Every credential issued or seen (OAuth's, and upload-session ids).
    pub fn secrets(&self) -> Vec<String> {
        let st = self.st();
        let mut all = st.oauth.secrets().to_vec();
        all.extend(st.issued_sessions.iter().cloned());
        all
    }

    // --- the account's contents, as someone else changes them --------------------------

    /// The member's folder in a team space ("/Alice Smith"), "" for a personal account.
    pub fn home_path(&self) -> String {
        self.st().home_path.clone()
    }
    /// Paths here are full display paths from the root namespace ("/a/b.txt"; in a team
    /// space, "/Alice Smith/a.txt" is in the member's folder).
    pub fn add_folder(&self, path: &str) {
        let mut st = self.st();
        let lower = path.to_lowercase();
        st.make_parents(&lower, path).unwrap();
        st.create(&lower, path, true, Vec::new(), SystemTime::now());
    }
    pub fn add_file(&self, path: &str, content: &[u8]) {
        let mut st = self.st();
        let lower = path.to_lowercase();
        st.make_parents(&lower, path).unwrap();
        match st.nodes.get(&lower) {
            Some(n) if !n.folder => {
                st.replace(&lower, content.to_vec(), SystemTime::now());
            }
            Some(_) => panic!("{path} is a folder"),
            None => {
                st.create(&lower, path, false, content.to_vec(), SystemTime::now());
            }
        }
    }
    /// A Paper doc: listed only when asked for, never downloadable.
    pub fn add_paper_doc(&self, path: &str) {
        let mut st = self.st();
        let lower = path.to_lowercase();
        st.make_parents(&lower, path).unwrap();
        let mut n = st.create(&lower, path, false, b"<paper/>".to_vec(), SystemTime::now());
        n.downloadable = false;
        st.put(&lower, n);
    }
    pub fn delete(&self, path: &str) {
        self.st()
            .remove_tree(&path.to_lowercase())
            .expect("delete: no such entry");
    }
    /// Someone renames `from` to `to` (full display paths).
    pub fn rename(&self, from: &str, to: &str) {
        let mut st = self.st();
        relocate(&mut st, &from.to_lowercase(), &to.to_lowercase(), to, true).unwrap();
    }
    pub fn exists(&self, path: &str) -> bool {
        self.st().nodes.contains_key(&path.to_lowercase())
    }
    pub fn content(&self, path: &str) -> Option<Vec<u8>> {
        self.st()
            .nodes
            .get(&path.to_lowercase())
            .filter(|n| !n.folder)
            .map(|n| n.content.clone())
    }
    /// The display name of the entry at `path` (as the case it was stored with).
    pub fn display(&self, path: &str) -> Option<String> {
        self.st()
            .nodes
            .get(&path.to_lowercase())
            .map(|n| n.display.clone())
    }
    /// Everything below `dir` (a full display path, "" for the root), by display path
    /// relative to it ("a/b.txt"), with file contents (`None` for folders).
    pub fn tree(&self, dir: &str) -> BTreeMap<String, Option<Vec<u8>>> {
        let st = self.st();
        let lower = dir.to_lowercase();
        st.children(&lower, true)
            .into_iter()
            .map(|(_, n)| {
                let rel = n.display[dir.len()..].trim_start_matches('/').to_owned();
                (rel, (!n.folder).then_some(n.content))
            })
            .collect()
    }
    pub fn open_sessions(&self) -> usize {
        self.st().sessions.values().filter(|s| !s.closed).count()
    }
    /// Revisions kept of the file at `path`, oldest first.
    pub fn revision_count(&self, path: &str) -> usize {
        let st = self.st();
        st.last_id_at
            .get(&path.to_lowercase())
            .and_then(|id| st.history.get(id))
            .map_or(0, Vec::len)
    }
}

/// Moves (or with `keep == false`, copies) `from` to `to`, making parents; logs the old
/// place deleted and everything at the new place. Returns the moved node.
fn relocate(
    st: &mut State,
    from: &str,
    to: &str,
    to_display: &str,
    keep_ids: bool,
) -> Result<Node, Response> {
    st.make_parents(to, to_display)?;
    let moved: Vec<(String, Node)> = std::iter::once((from.to_owned(), st.nodes[from].clone()))
        .chain(st.children(from, true))
        .collect();
    if keep_ids {
        st.remove_tree(from);
    }
    let from_display = moved[0].1.display.clone();
    let mut first = None;
    for (k, mut n) in moved {
        let rest_lower = &k[from.len()..];
        let rest_display = &n.display[from_display.len()..];
        let new_lower = format!("{to}{rest_lower}");
        n.display = format!("{to_display}{rest_display}");
        if !keep_ids {
            n.id = st.new_id();
            if !n.folder {
                n.rev = st.new_rev();
            }
        }
        n.server_modified = SystemTime::now();
        st.put(&new_lower, n.clone());
        first.get_or_insert(n);
    }
    Ok(first.expect("the moved entry itself"))
}

// ---------------------------------------------------------------------------------------
// Routing

fn handle(state: &Mutex<State>, faults: &FaultQueue<Fault>, req: &Request) -> Reply {
    let path = req.path_only().to_owned();
    let q = query_map(&req.path);

    // OAuth: www.dropbox.com/oauth2/authorize and api.dropboxapi.com/oauth2/token.
    if path == "/oauth2/authorize" && req.method == "GET" {
        let mut st = state.lock().unwrap();
        let offline = q.get("token_access_type").map(String::as_str) == Some("offline");
        let reply = st.oauth.authorize(&q);
        if let OAuthReply::Redirect(location) = &reply {
            if !offline {
                if let Some(code) = query_map(location).get("code") {
                    st.online_codes.push(code.clone());
                }
            }
        }
        return oauth_reply(reply).into();
    }
    if path == "/oauth2/token" && req.method == "POST" {
        let mut st = state.lock().unwrap();
        let code = url::form_urlencoded::parse(&req.body)
            .find(|(k, _)| k == "code")
            .map(|(_, v)| v.into_owned());
        let online = code.is_some_and(|c| st.online_codes.contains(&c));
        let mut reply = st.oauth.token(req.header("authorization"), &req.body);
        if let OAuthReply::Json(200, v) = &mut reply {
            if online {
                // Without `token_access_type=offline`: a short-lived token and no way to
                // renew it.
                if let Some(Value::String(rt)) =
                    v.as_object_mut().and_then(|o| o.remove("refresh_token"))
                {
                    st.oauth
                        .revoke(&HashMap::new(), format!("token={rt}").as_bytes());
                }
            }
        }
        return oauth_reply(reply).into();
    }

    let (host, route) = if let Some(r) = path.strip_prefix("/content/2/") {
        ("content", r.to_owned())
    } else if let Some(r) = path.strip_prefix("/notify/2/") {
        ("notify", r.to_owned())
    } else if let Some(r) = path.strip_prefix("/2/") {
        ("api", r.to_owned())
    } else {
        return Response::new(404, "").into();
    };
    if req.method != "POST" {
        return bad_input(&route, "Expected POST.").into();
    }
    let content_route = CONTENT_ROUTES.contains(&route.as_str());
    let notify_route = route == "files/list_folder/longpoll";
    if (host == "content") != content_route || (host == "notify") != notify_route {
        return bad_input(&route, "Unknown API function on this host.").into();
    }

    if notify_route {
        return longpoll(state, faults, req).into();
    }

    {
        let mut st = state.lock().unwrap();
        st.stats.api_calls += 1;
        match st.oauth.bearer_state(req.header("authorization")) {
            BearerState::Live => {}
            BearerState::Missing => return bad_input(
                &route,
                "Must provide HTTP header \"Authorization\" or URL parameter \"authorization\".",
            )
            .into(),
            BearerState::Unknown => return auth_error("invalid_access_token").into(),
            BearerState::Expired => return auth_error("expired_access_token").into(),
        }
    }
    if let Some(f) = faults.take(|f| {
        matches!(f, Fault::RateLimit { .. } | Fault::ServerError(_))
            || matches!(f, Fault::DropRequest(r) if *r == route)
    }) {
        let mut st = state.lock().unwrap();
        match f {
            Fault::RateLimit {
                reason,
                retry_after,
            } => {
                st.stats.throttled += 1;
                return json_resp(
                    429,
                    json!({"error_summary": format!("{reason}/..."), "error": {"reason": {".tag": reason}, "retry_after": retry_after}}),
                )
                .header("Retry-After", retry_after.to_string())
                .into();
            }
            Fault::ServerError(status) => {
                return Response::new(status, "Internal Server Error")
                    .header("Content-Type", "text/plain")
                    .into()
            }
            _ => return Reply::Drop,
        }
    }

    // The argument: a JSON body, or the Dropbox-API-Arg header on the content host.
    let arg: Value = if NO_ARG.contains(&route.as_str()) {
        let ct = req.header("content-type");
        match (ct, req.body.is_empty()) {
            (None, true) => Value::Null,
            (Some(ct), _) if ct.starts_with("application/json") => {
                match serde_json::from_slice::<Value>(&req.body) {
                    Ok(Value::Null) => Value::Null,
                    _ => {
                        return bad_input(&route, "request body: could not decode input as JSON")
                            .into()
                    }
                }
            }
            _ => {
                return bad_input(
                    &route,
                    &format!(
                        "Bad HTTP \"Content-Type\" header: \"{}\". Expecting one of \"application/json\", \"application/json; charset=utf-8\", \"text/plain; charset=dropbox-cors-hack\".",
                        ct.unwrap_or("")
                    ),
                )
                .into()
            }
        }
    } else if content_route {
        let Some(h) = req.header("dropbox-api-arg") else {
            return bad_input(
                &route,
                "Must provide HTTP header \"Dropbox-API-Arg\" or URL parameter \"arg\".",
            )
            .into();
        };
        if !h.is_ascii() {
            return bad_input(
                &route,
                "HTTP header \"Dropbox-API-Arg\": could not decode input as JSON",
            )
            .into();
        }
        let upload = route != "files/download";
        let ct = req.header("content-type").unwrap_or("");
        if upload
            && ct != "application/octet-stream"
            && ct != "text/plain; charset=dropbox-cors-hack"
        {
            return bad_input(&route, &format!("Bad HTTP \"Content-Type\" header: \"{ct}\". Expecting one of \"application/octet-stream\", \"text/plain; charset=dropbox-cors-hack\".")).into();
        }
        if !upload && !req.body.is_empty() {
            return bad_input(&route, "This function does not take a request body.").into();
        }
        match serde_json::from_str(h) {
            Ok(v) => v,
            Err(_) => {
                return bad_input(
                    &route,
                    "HTTP header \"Dropbox-API-Arg\": could not decode input as JSON",
                )
                .into()
            }
        }
    } else {
        let ct = req.header("content-type").unwrap_or("");
        if !ct.starts_with("application/json") {
            return bad_input(&route, &format!("Bad HTTP \"Content-Type\" header: \"{ct}\". Expecting one of \"application/json\", \"application/json; charset=utf-8\", \"text/plain; charset=dropbox-cors-hack\".")).into();
        }
        match serde_json::from_slice(&req.body) {
            Ok(v) => v,
            Err(_) => {
                return bad_input(&route, "request body: could not decode input as JSON").into()
            }
        }
    };
    if let Some(fields) = allowed_fields(&route) {
        let Some(obj) = arg.as_object() else {
            return bad_input(&route, "request body: expected an object").into();
        };
        if let Some(k) = obj.keys().find(|k| !fields.contains(&k.as_str())) {
            return bad_input(&route, &format!("request body: unknown field '{k}'")).into();
        }
    }

    let lose = faults
        .take(|f| matches!(f, Fault::LoseReply(r) if *r == route))
        .is_some();
    let mut st = state.lock().unwrap();
    if WRITES.contains(&route.as_str()) {
        if let Some((limit, window)) = st.cfg.write_limit {
            let now = Instant::now();
            while st
                .recent_writes
                .front()
                .is_some_and(|t| now.duration_since(*t) >= window)
            {
                st.recent_writes.pop_front();
            }
            if st.recent_writes.len() >= limit {
                st.stats.write_limited += 1;
                let oldest = *st.recent_writes.front().expect("a limit above zero");
                let wait = (window.saturating_sub(now.duration_since(oldest)))
                    .as_secs_f64()
                    .ceil()
                    .max(1.0) as u64;
                return json_resp(
                    429,
                    json!({"error_summary": "too_many_write_operations/...", "error": {"reason": {".tag": "too_many_write_operations"}, "retry_after": wait}}),
                )
                .header("Retry-After", wait.to_string())
                .into();
            }
            st.recent_writes.push_back(now);
        }
    }
    let base = match st.base_of(req) {
        Ok(b) => b,
        Err(r) => return r.into(),
    };
    let reply = route_call(&mut st, faults, req, &route, &arg, &base);
    if lose {
        return Reply::Drop;
    }
    reply
}

fn oauth_reply(reply: OAuthReply) -> Response {
    match reply {
        OAuthReply::Json(status, v) => json_resp(status, v),
        OAuthReply::Page(status, text) => {
            Response::new(status, text).header("Content-Type", "text/html")
        }
        OAuthReply::Redirect(location) => Response::new(302, "").header("Location", location),
    }
}

fn str_arg<'a>(arg: &'a Value, k: &str) -> Option<&'a str> {
    arg.get(k).and_then(Value::as_str)
}

fn bool_arg(arg: &Value, k: &str, default: bool) -> bool {
    arg.get(k).and_then(Value::as_bool).unwrap_or(default)
}

fn route_call(
    st: &mut State,
    faults: &FaultQueue<Fault>,
    req: &Request,
    route: &str,
    arg: &Value,
    base: &str,
) -> Reply {
    match route {
        "users/get_current_account" => {
            let root_info = if st.cfg.team {
                json!({".tag": "team", "root_namespace_id": st.root_ns, "home_namespace_id": st.home_ns, "home_path": st.home_path})
            } else {
                json!({".tag": "user", "root_namespace_id": st.root_ns, "home_namespace_id": st.home_ns})
            };
            json_resp(
                200,
                json!({
                    "account_id": "dbid:AAH4f99T0taONIb-OurWxbNQ6ywGRopQngc",
                    "name": {"given_name": "Alice", "surname": "Smith", "familiar_name": "Alice", "display_name": "Alice Smith", "abbreviated_name": "AS"},
                    "email": "alice@example.com",
                    "email_verified": true,
                    "disabled": false,
                    "locale": "en",
                    "referral_link": "https://db.tt/ZITNuhtI",
                    "is_paired": false,
                    "account_type": {".tag": if st.cfg.team { "business" } else { "basic" }},
                    "root_info": root_info,
                    "country": "US",
                }),
            )
            .into()
        }
        "users/get_space_usage" => {
            let used: u64 = st
                .nodes
                .values()
                .filter(|n| !n.folder)
                .map(|n| n.content.len() as u64)
                .sum();
            let allocation = if st.cfg.team {
                json!({".tag": "team", "used": used + 27_182_818_284u64, "allocated": 100_000_000_000u64,
                       "user_within_team_space_allocated": st.cfg.allocated,
                       "user_within_team_space_limit_type": {".tag": "stop_sync"},
                       "user_within_team_space_used_cached": used})
            } else {
                json!({".tag": "individual", "allocated": st.cfg.allocated})
            };
            json_resp(200, json!({"used": used, "allocation": allocation})).into()
        }
        "auth/token/revoke" => {
            st.oauth.revoke_bearer(req.header("authorization"));
            json_resp(200, Value::Null).into()
        }
        "files/get_metadata" => get_metadata(st, route, arg, base).into(),
        "files/list_folder" | "files/list_folder/get_latest_cursor" => {
            list_folder(st, route, arg, base).into()
        }
        "files/list_folder/continue" => {
            st.stats.list_calls += 1;
            if faults.take(|f| *f == Fault::ResetCursor).is_some() {
                return endpoint_error(json!({".tag": "reset"})).into();
            }
            let Some(cursor) = str_arg(arg, "cursor") else {
                return bad_input(route, "request body: missing field 'cursor'").into();
            };
            match st.page(cursor) {
                Ok(v) => json_resp(200, v).into(),
                Err(r) => r.into(),
            }
        }
        "files/create_folder_v2" => create_folder(st, route, arg, base).into(),
        "files/delete_v2" => delete(st, route, arg, base).into(),
        "files/move_v2" | "files/copy_v2" => relocate_call(st, route, arg, base).into(),
        "files/list_revisions" => list_revisions(st, route, arg, base).into(),
        "files/restore" => restore(st, route, arg, base).into(),
        "files/download" => download(st, req, route, arg, base).into(),
        "files/upload" => {
            st.stats.simple_uploads += 1;
            if req.body.len() > st.cfg.request_cap {
                return endpoint_error(json!({".tag": "payload_too_large"})).into();
            }
            if let Some(h) = str_arg(arg, "content_hash") {
                if h != content_hash(&req.body) {
                    return endpoint_error(json!({".tag": "content_hash_mismatch"})).into();
                }
            }
            upload_write_failed(commit(st, route, arg, base, req.body.to_vec(), "path")).into()
        }
        "files/upload_session/start" => {
            if req.body.len() > st.cfg.request_cap {
                return endpoint_error(json!({".tag": "payload_too_large"})).into();
            }
            if str_arg(arg, "content_hash").is_some_and(|h| h != content_hash(&req.body)) {
                return endpoint_error(json!({".tag": "content_hash_mismatch"})).into();
            }
            let id = format!("pid_upload_session:{}", random(48));
            st.issued_sessions.push(id.clone());
            st.sessions.insert(
                id.clone(),
                Session {
                    data: req.body.to_vec(),
                    closed: bool_arg(arg, "close", false),
                },
            );
            json_resp(200, json!({"session_id": id})).into()
        }
        "files/upload_session/append_v2" => {
            st.stats.session_appends += 1;
            let close = bool_arg(arg, "close", false);
            if str_arg(arg, "content_hash").is_some_and(|h| h != content_hash(&req.body)) {
                return endpoint_error(json!({".tag": "content_hash_mismatch"})).into();
            }
            match session_at(st, arg.get("cursor"), req.body.len(), true) {
                Err(e) => endpoint_error(e).into(),
                Ok(id) => {
                    let s = st.sessions.get_mut(&id).unwrap();
                    s.data.extend_from_slice(&req.body);
                    s.closed = close;
                    json_resp(200, Value::Null).into()
                }
            }
        }
        "files/upload_session/finish" => {
            st.stats.session_finishes += 1;
            let id = match session_at(st, arg.get("cursor"), req.body.len(), false) {
                Err(e) => {
                    return endpoint_error(json!({".tag": "lookup_failed", "lookup_failed": e}))
                        .into()
                }
                Ok(id) => id,
            };
            // `content_hash` covers the bytes sent in this call.
            if str_arg(arg, "content_hash").is_some_and(|h| h != content_hash(&req.body)) {
                return endpoint_error(json!({".tag": "content_hash_mismatch"})).into();
            }
            let mut data = st.sessions[&id].data.clone();
            data.extend_from_slice(&req.body);
            let Some(commit_arg) = arg.get("commit") else {
                return bad_input(route, "request body: missing field 'commit'").into();
            };
            let reply = commit(st, route, commit_arg, base, data, "path");
            if reply.status == 200 {
                // A finished session is gone; a refused commit leaves it as it was.
                st.sessions.remove(&id);
            }
            reply.into()
        }
        "files/upload_session/finish_batch_v2" => finish_batch(st, route, arg, base).into(),
        _ => bad_input(route, "Unknown API function.").into(),
    }
}

/// `finish_batch_v2`: each entry's session must be closed and complete; each commits on
/// its own (one may fail while others succeed), the whole batch as one write.
fn finish_batch(st: &mut State, route: &str, arg: &Value, base: &str) -> Response {
    let Some(entries) = arg.get("entries").and_then(Value::as_array) else {
        return bad_input(route, "request body: missing field 'entries'");
    };
    if entries.len() > 1000 {
        return bad_input(route, "request body: entries: more than 1000 items");
    }
    st.stats.batch_commits += 1;
    st.stats.batched_entries += entries.len() as u64;
    let mut results = Vec::new();
    for e in entries {
        let failure = |v: Value| json!({".tag": "failure", "failure": v});
        let id = match session_at(st, e.get("cursor"), 0, false) {
            Err(v) => {
                results.push(failure(
                    json!({".tag": "lookup_failed", "lookup_failed": v}),
                ));
                continue;
            }
            Ok(id) => id,
        };
        if !st.sessions[&id].closed {
            results.push(failure(
                json!({".tag": "lookup_failed", "lookup_failed": {".tag": "not_closed"}}),
            ));
            continue;
        }
        let data = st.sessions[&id].data.clone();
        // A batch sends no bytes: a hash there can only be of nothing.
        if str_arg(e, "content_hash").is_some_and(|h| h != content_hash(b"")) {
            results.push(failure(json!({".tag": "content_hash_mismatch"})));
            continue;
        }
        let Some(c) = e.get("commit") else {
            return bad_input(route, "request body: entries: missing field 'commit'");
        };
        let r = commit(st, route, c, base, data, "path");
        let body: Value = serde_json::from_slice(&r.body).unwrap_or(Value::Null);
        match r.status {
            200 => {
                st.sessions.remove(&id);
                let mut m = body;
                m[".tag"] = json!("success");
                results.push(m);
            }
            409 => results.push(failure(body["error"].clone())),
            _ => return r,
        }
    }
    json_resp(200, json!({ "entries": results }))
}

/// The session a cursor names, if its offset is where the session stands; else the
/// `UploadSessionLookupError` to answer.
fn session_at(
    st: &mut State,
    cursor: Option<&Value>,
    body_len: usize,
    append: bool,
) -> Result<String, Value> {
    let id = cursor
        .and_then(|c| c.get("session_id"))
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_owned();
    let offset = cursor
        .and_then(|c| c.get("offset"))
        .and_then(Value::as_u64)
        .unwrap_or(u64::MAX);
    let cap = st.cfg.request_cap;
    let Some(s) = st.sessions.get(&id) else {
        return Err(json!({".tag": "not_found"}));
    };
    if s.closed && (append || body_len > 0) {
        return Err(json!({".tag": "closed"}));
    }
    if offset != s.data.len() as u64 {
        return Err(json!({".tag": "incorrect_offset", "correct_offset": s.data.len()}));
    }
    if body_len > cap {
        return Err(json!({".tag": "payload_too_large"}));
    }
    Ok(id)
}

fn get_metadata(st: &mut State, route: &str, arg: &Value, base: &str) -> Response {
    let path = str_arg(arg, "path").unwrap_or_default();
    if path.is_empty() {
        return bad_input(
            route,
            "request body: path: Metadata for the root folder is unsupported.",
        );
    }
    let (lower, _) = match st.resolve(route, base, path) {
        Ok(r) => r,
        Err(r) => return r,
    };
    match st.nodes.get(&lower) {
        Some(n) => json_resp(200, st.metadata(n, base, true)),
        None if parent_of(&lower) != base
            && st.nodes.get(parent_of(&lower)).is_some_and(|p| !p.folder) =>
        {
            lookup_error("path", "not_folder")
        }
        None => lookup_error("path", "not_found"),
    }
}

fn list_folder(st: &mut State, route: &str, arg: &Value, base: &str) -> Response {
    if route == "files/list_folder" {
        st.stats.list_calls += 1;
    }
    let Some(path) = str_arg(arg, "path") else {
        return bad_input(route, "request body: missing field 'path'");
    };
    let (lower, _) = match st.resolve(route, base, path) {
        Ok(r) => r,
        Err(r) => return r,
    };
    let limit = match arg.get("limit") {
        None => 2000,
        Some(v) => match v.as_u64() {
            Some(n @ 1..=2000) => n as usize,
            _ => return bad_input(route, "request body: limit: must be between 1 and 2000"),
        },
    };
    let scope = if path.is_empty() {
        base.to_owned()
    } else {
        lower.clone()
    };
    if !scope.is_empty() {
        match st.nodes.get(&scope) {
            Some(n) if n.folder => {}
            Some(_) => return lookup_error("path", "not_folder"),
            None => return lookup_error("path", "not_found"),
        }
    }
    let recursive = bool_arg(arg, "recursive", false);
    let include_non_downloadable = bool_arg(arg, "include_non_downloadable_files", true);
    let cursor = CursorState {
        base: base.to_owned(),
        scope: scope.clone(),
        recursive,
        include_deleted: bool_arg(arg, "include_deleted", false),
        include_non_downloadable,
        limit,
        pending: Vec::new(),
        seq: st.log.len(),
    };
    if route == "files/list_folder/get_latest_cursor" {
        let token = st.new_cursor(cursor);
        return json_resp(200, json!({ "cursor": token }));
    }
    let entries: Vec<Value> = st
        .children(&scope, recursive)
        .iter()
        .filter(|(_, n)| n.downloadable || include_non_downloadable)
        .map(|(_, n)| st.metadata(n, base, true))
        .collect();
    let token = st.new_cursor(CursorState {
        pending: entries,
        ..cursor
    });
    match st.page(&token) {
        Ok(v) => json_resp(200, v),
        Err(r) => r,
    }
}

/// Checks a new entry's name and the place above it (`member` names the argument in
/// errors). Returns the lower and display paths.
fn writable_path(
    st: &State,
    route: &str,
    base: &str,
    path: &str,
    member: &str,
) -> Result<(String, String), Response> {
    if path.is_empty() {
        return Err(endpoint_error(tags(&[member, "malformed_path"])));
    }
    let (lower, display) = st.resolve(route, base, path)?;
    let name = name_of(&display);
    if malformed(name) {
        return Err(endpoint_error(tags(&[member, "malformed_path"])));
    }
    if disallowed(name) {
        return Err(endpoint_error(tags(&[member, "disallowed_name"])));
    }
    Ok((lower, display))
}

fn create_folder(st: &mut State, route: &str, arg: &Value, base: &str) -> Response {
    let path = str_arg(arg, "path").unwrap_or_default();
    let (lower, display) = match writable_path(st, route, base, path, "path") {
        Ok(r) => r,
        Err(r) => return r,
    };
    if let Some(n) = st.nodes.get(&lower) {
        return conflict("path", n.folder);
    }
    if let Err(r) = st.make_parents(&lower, &display) {
        return r;
    }
    let node = st.create(&lower, &display, true, Vec::new(), SystemTime::now());
    json_resp(200, json!({"metadata": st.metadata(&node, base, false)}))
}

fn delete(st: &mut State, route: &str, arg: &Value, base: &str) -> Response {
    let path = str_arg(arg, "path").unwrap_or_default();
    let (lower, _) = match st.resolve(route, base, path) {
        Ok(r) => r,
        Err(r) => return r,
    };
    if path.is_empty() {
        return lookup_error("path_lookup", "malformed_path");
    }
    let Some(node) = st.nodes.get(&lower).cloned() else {
        return lookup_error("path_lookup", "not_found");
    };
    if let Some(rev) = str_arg(arg, "parent_rev") {
        if node.folder || node.rev != rev {
            return conflict("path_write", node.folder);
        }
    }
    st.remove_tree(&lower);
    json_resp(200, json!({"metadata": st.metadata(&node, base, true)}))
}

fn relocate_call(st: &mut State, route: &str, arg: &Value, base: &str) -> Response {
    let (Some(from), Some(to)) = (str_arg(arg, "from_path"), str_arg(arg, "to_path")) else {
        return bad_input(
            route,
            "request body: missing field 'from_path' or 'to_path'",
        );
    };
    let (from_lower, _) = match st.resolve(route, base, from) {
        Ok(r) => r,
        Err(r) => return r,
    };
    if !st.nodes.contains_key(&from_lower) {
        return lookup_error("from_lookup", "not_found");
    }
    let (to_lower, to_display) = match writable_path(st, route, base, to, "to") {
        Ok(r) => r,
        Err(r) => return r,
    };
    if within(&to_lower, &from_lower) && to_lower != from_lower {
        return endpoint_error(json!({".tag": "cant_move_folder_into_itself"}));
    }
    // A taken name, the moved entry's own included: a change of case alone is refused.
    if let Some(n) = st.nodes.get(&to_lower) {
        return conflict("to", n.folder);
    }
    let copy = route == "files/copy_v2";
    match relocate(st, &from_lower, &to_lower, &to_display, !copy) {
        Ok(node) => json_resp(200, json!({"metadata": st.metadata(&node, base, true)})),
        Err(r) => r,
    }
}

fn list_revisions(st: &mut State, route: &str, arg: &Value, base: &str) -> Response {
    let path = str_arg(arg, "path").unwrap_or_default();
    let (lower, _) = match st.resolve(route, base, path) {
        Ok(r) => r,
        Err(r) => return r,
    };
    let limit = arg.get("limit").and_then(Value::as_u64).unwrap_or(10);
    if !(1..=100).contains(&limit) {
        return bad_input(route, "request body: limit: must be between 1 and 100");
    }
    let (id, is_deleted) = match st.nodes.get(&lower) {
        Some(n) if n.folder => return lookup_error("path", "not_file"),
        Some(n) => (n.id.clone(), false),
        None => match st.last_id_at.get(&lower) {
            Some(id) => (id.clone(), true),
            None => return lookup_error("path", "not_found"),
        },
    };
    let revs = st.history.get(&id).cloned().unwrap_or_default();
    let entries: Vec<Value> = revs
        .iter()
        .rev()
        .take(limit as usize)
        .map(|rev| {
            let r = &st.revisions[rev];
            let node = Node {
                id: r.id.clone(),
                display: r.display.clone(),
                folder: false,
                content: r.content.clone(),
                rev: rev.clone(),
                client_modified: r.client_modified,
                server_modified: r.server_modified,
                downloadable: true,
            };
            st.metadata(&node, base, false)
        })
        .collect();
    json_resp(
        200,
        json!({"is_deleted": is_deleted, "entries": entries, "has_more": revs.len() > limit as usize}),
    )
}

fn restore(st: &mut State, route: &str, arg: &Value, base: &str) -> Response {
    let (Some(path), Some(rev)) = (str_arg(arg, "path"), str_arg(arg, "rev")) else {
        return bad_input(route, "request body: missing field 'path' or 'rev'");
    };
    let (lower, display) = match st.resolve(route, base, path) {
        Ok(r) => r,
        Err(r) => return r,
    };
    let known = st
        .nodes
        .get(&lower)
        .map(|n| n.id.clone())
        .or_else(|| st.last_id_at.get(&lower).cloned());
    // Unknown, or a revision of another file.
    let Some(r) = st
        .revisions
        .get(rev)
        .filter(|r| Some(&r.id) == known.as_ref())
        .cloned()
    else {
        return endpoint_error(json!({".tag": "invalid_revision"}));
    };
    let node = match st.nodes.get(&lower) {
        Some(n) if n.folder => return conflict("path_write", true),
        Some(_) => st.replace(&lower, r.content, r.client_modified),
        None => st.create(&lower, &display, false, r.content, r.client_modified),
    };
    json_resp(200, st.metadata(&node, base, false))
}

fn download(st: &mut State, req: &Request, route: &str, arg: &Value, base: &str) -> Response {
    st.stats.downloads += 1;
    let path = str_arg(arg, "path").unwrap_or_default();
    let node = if let Some(rev) = path.strip_prefix("rev:") {
        match st.revisions.get(rev) {
            Some(r) => Node {
                id: r.id.clone(),
                display: r.display.clone(),
                folder: false,
                content: r.content.clone(),
                rev: rev.to_owned(),
                client_modified: r.client_modified,
                server_modified: r.server_modified,
                downloadable: true,
            },
            None => return lookup_error("path", "not_found"),
        }
    } else {
        let (lower, _) = match st.resolve(route, base, path) {
            Ok(r) => r,
            Err(r) => return r,
        };
        match st.nodes.get(&lower) {
            Some(n) if n.folder => return lookup_error("path", "not_file"),
            Some(n) if !n.downloadable => {
                return endpoint_error(json!({".tag": "unsupported_file"}))
            }
            Some(n) => n.clone(),
            None => return lookup_error("path", "not_found"),
        }
    };
    let result = header_escaped(&st.metadata(&node, base, false));
    let total = node.content.len();
    match wanted(req.header("range"), total) {
        Wanted::Whole => Response::new(200, node.content)
            .header("Content-Type", "application/octet-stream")
            .header("Dropbox-API-Result", result),
        Wanted::Part { start, end } => {
            st.stats.ranged_downloads += 1;
            let end = end.min(total.saturating_sub(1));
            Response::new(206, node.content[start..=end].to_vec())
                .header("Content-Type", "application/octet-stream")
                .header("Content-Range", format!("bytes {start}-{end}/{total}"))
                .header("Dropbox-API-Result", result)
        }
        Wanted::Unsatisfiable => {
            Response::new(416, "").header("Content-Range", format!("bytes */{total}"))
        }
    }
}

/// A JSON value escaped for an HTTP header, as Dropbox escapes `Dropbox-API-Result`.
fn header_escaped(v: &Value) -> String {
    let mut out = String::new();
    for c in v.to_string().chars() {
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

/// Commits `data` under `CommitInfo` `c` (`files/upload`, `finish`): the write mode,
/// `strict_conflict`, `client_modified`; the new file's bare `FileMetadata`.
fn commit(
    st: &mut State,
    route: &str,
    c: &Value,
    base: &str,
    data: Vec<u8>,
    member: &str,
) -> Response {
    let path = str_arg(c, "path").unwrap_or_default();
    let (lower, display) = match writable_path(st, route, base, path, member) {
        Ok(r) => r,
        Err(r) => return r,
    };
    let strict = bool_arg(c, "strict_conflict", false);
    let modified = match c.get("client_modified") {
        None => SystemTime::now(),
        Some(v) => match v
            .as_str()
            .and_then(|s| chrono::NaiveDateTime::parse_from_str(s, "%Y-%m-%dT%H:%M:%SZ").ok())
        {
            Some(t) => t.and_utc().into(),
            None => {
                return bad_input(
                    route,
                    &format!("request body: client_modified: time data '{v}' does not match format '%Y-%m-%dT%H:%M:%SZ'"),
                )
            }
        },
    };
    let mode = c.get("mode").cloned().unwrap_or(json!("add"));
    let (tag, rev) = match &mode {
        Value::String(s) => (s.clone(), None),
        v => (
            str_arg(v, ".tag").unwrap_or_default().to_owned(),
            str_arg(v, "update").map(str::to_owned),
        ),
    };
    if tag == "update" {
        let ok = rev
            .as_deref()
            .is_some_and(|r| r.len() >= 9 && r.chars().all(|c| c.is_ascii_hexdigit()));
        if !ok {
            return bad_input(
                route,
                &format!(
                    "request body: mode: update: '{}' did not match pattern '[0-9a-f]+'",
                    rev.unwrap_or_default()
                ),
            );
        }
    }
    let existing = st.nodes.get(&lower).cloned();
    let conflict_reason = |folder: bool| conflict("path", folder);
    match (tag.as_str(), &existing) {
        (_, Some(n)) if n.folder => return conflict_reason(true),
        ("add", Some(n)) => {
            if !strict && n.content == data {
                return json_resp(200, st.metadata(n, base, false));
            }
            return conflict_reason(false);
        }
        ("update", Some(n)) if Some(&n.rev) != rev.as_ref() => {
            if !strict && n.content == data {
                return json_resp(200, st.metadata(n, base, false));
            }
            return conflict_reason(false);
        }
        ("update", None) if strict => return conflict_reason(false),
        ("add" | "overwrite" | "update", _) => {}
        _ => return bad_input(route, &format!("request body: mode: unknown tag '{tag}'")),
    }
    if let Err(r) = st.make_parents(&lower, &display) {
        return r;
    }
    let node = match existing {
        Some(_) => st.replace(&lower, data, modified),
        None => st.create(&lower, &display, false, data, modified),
    };
    json_resp(200, st.metadata(&node, base, false))
}

/// `files/upload`'s path errors come as `UploadWriteFailed`: the `WriteError` under
/// `reason` (`finish` and batch entries carry it under `path`).
fn upload_write_failed(r: Response) -> Response {
    if r.status != 409 {
        return r;
    }
    let v: Value = serde_json::from_slice(&r.body).unwrap_or(Value::Null);
    let inner = v["error"]["path"].clone();
    json_resp(
        409,
        json!({"error_summary": v["error_summary"], "error": {".tag": "path", "reason": inner, "upload_session_id": ""}}),
    )
}

fn longpoll(state: &Mutex<State>, faults: &FaultQueue<Fault>, req: &Request) -> Response {
    let route = "files/list_folder/longpoll";
    if req.header("authorization").is_some() {
        return bad_input(
            route,
            "This endpoint does not take an \"Authorization\" header.",
        );
    }
    if !req
        .header("content-type")
        .is_some_and(|c| c.starts_with("application/json"))
    {
        return bad_input(
            route,
            "Bad HTTP \"Content-Type\" header: expecting \"application/json\".",
        );
    }
    let arg: Value = match serde_json::from_slice(&req.body) {
        Ok(v) => v,
        Err(_) => return bad_input(route, "request body: could not decode input as JSON"),
    };
    if let Some(k) = arg.as_object().and_then(|o| {
        o.keys()
            .find(|k| !["cursor", "timeout"].contains(&k.as_str()))
    }) {
        return bad_input(route, &format!("request body: unknown field '{k}'"));
    }
    let timeout = arg.get("timeout").and_then(Value::as_u64).unwrap_or(30);
    if !(30..=480).contains(&timeout) {
        return bad_input(
            route,
            &format!("request body: timeout: {timeout} is not within 30..480"),
        );
    }
    let token = str_arg(&arg, "cursor").unwrap_or_default().to_owned();
    let hold = {
        let mut st = state.lock().unwrap();
        st.stats.longpolls += 1;
        if st.backoff_until.is_some_and(|t| Instant::now() < t) {
            st.stats.backoff_violations += 1;
        }
        if faults.take(|f| *f == Fault::ResetLongpoll).is_some() {
            return endpoint_error(json!({".tag": "reset"}));
        }
        if let Some(Fault::LongpollBackoff(secs)) =
            faults.take(|f| matches!(f, Fault::LongpollBackoff(_)))
        {
            st.backoff_until = Some(Instant::now() + Duration::from_secs(secs));
            return json_resp(200, json!({"changes": false, "backoff": secs}));
        }
        if !st.cursors.contains_key(&token) {
            return endpoint_error(json!({".tag": "reset"}));
        }
        st.cfg.longpoll_hold.unwrap_or(Duration::from_secs(timeout))
    };
    let until = Instant::now() + hold;
    loop {
        {
            let st = state.lock().unwrap();
            let c = &st.cursors[&token];
            let changed = st.log[c.seq.min(st.log.len())..].iter().any(|(lower, _)| {
                within(lower, &c.base)
                    && if c.recursive {
                        within(lower, &c.scope) && *lower != c.scope
                    } else {
                        parent_of(lower) == c.scope
                    }
            });
            if changed {
                return json_resp(200, json!({"changes": true}));
            }
        }
        if Instant::now() >= until {
            return json_resp(200, json!({"changes": false}));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}
