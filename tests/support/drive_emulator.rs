//! A strict, in-process emulator of the Google Drive v3 API and Google's OAuth endpoints, for
//! tests. It follows the behaviour documented in shared/reference/provider-apis.md §1 rather
//! than being lenient: unsupported `q` forms, bad page sizes, misaligned resumable chunks,
//! `about.get` without `fields`, alt=media on Google Docs, ... are all refused the way Drive
//! refuses them, with the v1 error body shape.
//!
//! Fault injection (rate limits, 5xx, dropped upload connections, expired tokens, revoked
//! refresh tokens, expired upload sessions) is driven from the test through [`DriveEmulator`].
//! Google's OAuth endpoints are the emulator kit's OAuth server (`emu/oauth.rs`) set up as
//! Google behaves (`oauth_settings`).
#![allow(dead_code)]
// Handlers return ready-made error responses as their `Err`; boxing them buys nothing here.
#![allow(clippy::result_large_err)]

use std::collections::{BTreeMap, HashMap, VecDeque};

use crate::emu::oauth::{OAuthReply, OAuthServer, OAuthSettings, TokenPrefixes};
use crate::emu::server::{Reply, Request, Response as KitResponse, Server};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use hyper::header::HeaderValue;
use hyper::{Method, Response, StatusCode};
use md5::{Digest, Md5};
use serde_json::{json, Map, Value};

pub const FOLDER_MIME: &str = "application/vnd.google-apps.folder";
pub const DOC_MIME: &str = "application/vnd.google-apps.document";
pub const SHEET_MIME: &str = "application/vnd.google-apps.spreadsheet";
const CHUNK_ALIGN: usize = 256 * 1024;

#[derive(Clone, Debug)]
pub struct EmulatorConfig {
    pub client_id: String,
    pub client_secret: String,
    pub access_token_lifetime: Duration,
    /// Issue a new refresh token on every refresh, invalidating the old one.
    pub rotate_refresh_tokens: bool,
    /// The largest page the server returns, whatever pageSize asks (Drive may return less).
    pub max_page_size: usize,
    /// Insert an empty page (with a nextPageToken) after every non-empty one.
    pub empty_pages: bool,
    pub export_size_limit: usize,
    pub storage_limit: Option<u64>,
    /// Scopes the device flow accepts (Google: drive.file and drive.appdata only).
    pub device_scopes: Vec<String>,
}

impl Default for EmulatorConfig {
    fn default() -> Self {
        EmulatorConfig {
            client_id: "test-client.apps.googleusercontent.com".into(),
            client_secret: "GOCSPX-test-client-secret-9f8e7d".into(),
            access_token_lifetime: Duration::from_secs(3599),
            rotate_refresh_tokens: false,
            max_page_size: 1000,
            empty_pages: false,
            export_size_limit: 10 * 1024 * 1024,
            storage_limit: Some(15 * 1024 * 1024 * 1024),
            device_scopes: vec![
                "https://www.googleapis.com/auth/drive.file".into(),
                "https://www.googleapis.com/auth/drive.appdata".into(),
            ],
        }
    }
}

/// A failure the next API call(s) will see.
#[derive(Clone, Debug, PartialEq)]
pub enum Fault {
    /// 403 `userRateLimitExceeded` (domain usageLimits).
    UserRateLimit403,
    /// 429 `rateLimitExceeded` with an optional Retry-After (seconds).
    RateLimit429 { retry_after: Option<u64> },
    /// A 5xx `backendError`.
    ServerError(u16),
    /// The next resumable chunk PUT: keep this many bytes of its body, then drop the
    /// connection without answering. Other requests pass this fault by.
    DropUploadAfter(usize),
    /// The next resumable chunk PUT finds its session expired (404), as after a week.
    ExpireUploadSession,
    /// A terminal 403 (`insufficientPermissions`) that must not be retried.
    Forbidden403,
}

#[derive(Clone, Debug, Default)]
pub struct Stats {
    pub api_calls: u64,
    pub unauthorized: u64,
    pub token_grants: u64,
    pub refresh_grants: u64,
    pub revocations: u64,
    pub faults_served: u64,
    pub multipart_uploads: u64,
    pub resumable_sessions: u64,
    pub chunk_puts: u64,
    pub status_queries: u64,
    pub exports: u64,
    pub list_calls: u64,
}

#[derive(Clone, Debug)]
pub struct Revision {
    pub id: String,
    pub modified: SystemTime,
    pub content: Vec<u8>,
}

#[derive(Clone, Debug)]
pub struct FileRec {
    pub id: String,
    pub name: String,
    pub mime: String,
    pub parents: Vec<String>,
    pub content: Vec<u8>,
    /// Bytes every export of a Google-native doc returns.
    pub export: Option<Vec<u8>>,
    pub trashed: bool,
    pub created: SystemTime,
    pub modified: SystemTime,
    pub version: u64,
    pub revisions: Vec<Revision>,
    /// The shared drive holding the item (`None`: My Drive). A drive's root folder has the
    /// drive's id as both `id` and `drive_id`.
    pub drive_id: Option<String>,
}

impl FileRec {
    fn is_folder(&self) -> bool {
        self.mime == FOLDER_MIME
    }
    fn is_native(&self) -> bool {
        self.mime.starts_with("application/vnd.google-apps.")
    }
}

struct Session {
    file_id: Option<String>,
    metadata: Value,
    total: Option<u64>,
    data: Vec<u8>,
    expired: bool,
    fields: Option<String>,
}

struct State {
    cfg: EmulatorConfig,
    base: String,
    root_id: String,
    files: BTreeMap<String, FileRec>,
    next_id: u64,
    oauth: OAuthServer,
    /// (change number, file id)
    changes: Vec<(u64, String)>,
    next_change: u64,
    sessions: HashMap<String, Session>,
    faults: VecDeque<Fault>,
    stats: Stats,
    /// Shared drives (id, name), in creation order.
    drives: Vec<(String, String)>,
    /// Whether the request being served passed `supportsAllDrives=true`.
    all_drives: bool,
}

impl State {
    fn new_id(&mut self) -> String {
        self.next_id += 1;
        // Ids sort in creation order, and look vaguely like Drive's.
        format!("1Dx{:08}q{}", self.next_id, random_suffix(8))
    }

    fn record_change(&mut self, id: &str) {
        self.next_change += 1;
        self.changes.push((self.next_change, id.to_owned()));
    }

    fn resolve_id<'a>(&'a self, id: &'a str) -> &'a str {
        if id == "root" {
            &self.root_id
        } else {
            id
        }
    }

    /// The shared drive of a (resolved) folder id, to give to its new children.
    fn drive_of(&self, id: &str) -> Option<String> {
        self.files.get(id).and_then(|f| f.drive_id.clone())
    }

    /// Whether `id` is a shared-drive item the current request may not see: Drive answers
    /// 404 "File not found" for shared-drive items unless `supportsAllDrives=true` is passed
    /// ("Implement shared drive support", developers.google.com/drive/api/guides/enable-shareddrives).
    fn hidden(&self, id: &str) -> bool {
        !self.all_drives && self.drive_of(id).is_some()
    }

    fn usage(&self) -> (u64, u64) {
        let mut drive = 0;
        let mut trash = 0;
        for f in self.files.values() {
            if f.trashed {
                trash += f.content.len() as u64;
            } else {
                drive += f.content.len() as u64;
            }
        }
        (drive, trash)
    }
}

fn random_suffix(n: usize) -> String {
    use rand::Rng;
    const CHARS: &[u8] = b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_-";
    let mut rng = rand::rng();
    (0..n)
        .map(|_| CHARS[rng.random_range(0..CHARS.len())] as char)
        .collect()
}

fn rfc3339(t: SystemTime) -> String {
    chrono::DateTime::<chrono::Utc>::from(t).to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

fn md5_hex(data: &[u8]) -> String {
    hex::encode(Md5::digest(data))
}

/// A running emulator; stops when dropped.
/// The emulator on the emulator kit's server (its own runtime thread: it serves sync and
/// async tests alike, and stops when dropped).
pub struct DriveEmulator {
    addr: SocketAddr,
    state: Arc<Mutex<State>>,
    server: Server,
}

/// A response as the handlers build it; the server sends it as a [`emu::server::Response`].
type Resp = Response<Bytes>;

/// The connection closed without an answer (the server kit's [`Reply::Drop`]).
struct DropConnection;

impl DriveEmulator {
    /// Starts the emulator (async only for the callers' convenience: nothing is awaited).
    pub async fn start(cfg: EmulatorConfig) -> Self {
        Self::start_now(cfg)
    }

    pub fn start_now(cfg: EmulatorConfig) -> Self {
        let now = SystemTime::now();
        let oauth = OAuthServer::new(oauth_settings(&cfg));
        let mut st = State {
            oauth,
            cfg,
            base: String::new(),
            root_id: String::new(),
            files: BTreeMap::new(),
            next_id: 0,
            changes: Vec::new(),
            next_change: 100,
            sessions: HashMap::new(),
            faults: VecDeque::new(),
            stats: Stats::default(),
            drives: Vec::new(),
            all_drives: false,
        };
        let root = st.new_id();
        st.root_id = root.clone();
        st.files.insert(
            root.clone(),
            FileRec {
                id: root,
                name: "My Drive".into(),
                mime: FOLDER_MIME.into(),
                parents: vec![],
                content: vec![],
                export: None,
                trashed: false,
                created: now,
                modified: now,
                version: 1,
                revisions: vec![],
                drive_id: None,
            },
        );
        let state = Arc::new(Mutex::new(st));
        let served = state.clone();
        let server = Server::start(move |req| match handle(&served, req) {
            Ok(resp) => Reply::Send(to_kit_response(resp)),
            Err(DropConnection) => Reply::Drop,
        });
        let addr = server.addr;
        state.lock().unwrap().base = server.base.clone();
        DriveEmulator {
            addr,
            state,
            server,
        }
    }

    pub fn base_url(&self) -> String {
        format!("http://{}", self.addr)
    }
    pub fn api_base(&self) -> String {
        format!("{}/drive/v3", self.base_url())
    }
    pub fn upload_base(&self) -> String {
        format!("{}/upload/drive/v3", self.base_url())
    }
    pub fn auth_url(&self) -> String {
        format!("{}/o/oauth2/v2/auth", self.base_url())
    }
    pub fn token_url(&self) -> String {
        format!("{}/token", self.base_url())
    }
    pub fn revoke_url(&self) -> String {
        format!("{}/revoke", self.base_url())
    }
    pub fn device_url(&self) -> String {
        format!("{}/device/code", self.base_url())
    }

    fn st(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap()
    }

    pub fn config(&self) -> EmulatorConfig {
        self.st().cfg.clone()
    }
    pub fn set_access_token_lifetime(&self, d: Duration) {
        let mut st = self.st();
        st.cfg.access_token_lifetime = d;
        st.oauth.settings.access_token_lifetime = d;
    }
    pub fn set_max_page_size(&self, n: usize) {
        self.st().cfg.max_page_size = n;
    }
    pub fn set_empty_pages(&self, on: bool) {
        self.st().cfg.empty_pages = on;
    }
    pub fn set_export_size_limit(&self, n: usize) {
        self.st().cfg.export_size_limit = n;
    }
    pub fn set_storage_limit(&self, n: Option<u64>) {
        self.st().cfg.storage_limit = n;
    }
    pub fn set_rotate_refresh_tokens(&self, on: bool) {
        let mut st = self.st();
        st.cfg.rotate_refresh_tokens = on;
        st.oauth.settings.rotate_refresh_tokens = on;
    }

    pub fn root_id(&self) -> String {
        self.st().root_id.clone()
    }

    pub fn stats(&self) -> Stats {
        let st = self.st();
        let oauth = &st.oauth.stats;
        Stats {
            unauthorized: oauth.unauthorized,
            token_grants: oauth.token_grants,
            refresh_grants: oauth.refresh_grants,
            revocations: oauth.revocations,
            ..st.stats.clone()
        }
    }

    /// Every token, code, verifier and client secret seen or issued.
    pub fn secrets(&self) -> Vec<String> {
        self.st().oauth.secrets().to_vec()
    }

    /// Tokens for a session that skipped the browser: (access, refresh).
    pub fn issue_tokens(&self) -> (String, String) {
        self.st()
            .oauth
            .issue_tokens("https://www.googleapis.com/auth/drive")
    }

    /// Every access token issued so far stops working (as if they all reached their hour).
    pub fn expire_all_access_tokens(&self) {
        self.st().oauth.expire_all_access_tokens();
    }

    /// The user revoked the app: refresh tokens and their access tokens die.
    pub fn revoke_all_refresh_tokens(&self) {
        self.st().oauth.revoke_all_refresh_tokens();
    }

    pub fn refresh_token_valid(&self, token: &str) -> bool {
        self.st().oauth.refresh_token_valid(token)
    }

    pub fn inject(&self, fault: Fault, times: usize) {
        let mut st = self.st();
        for _ in 0..times {
            st.faults.push_back(fault.clone());
        }
    }

    pub fn pending_faults(&self) -> usize {
        self.st().faults.len()
    }

    pub fn expire_upload_sessions(&self) {
        for s in self.st().sessions.values_mut() {
            s.expired = true;
        }
    }

    pub fn approve_device(&self, user_code: &str) {
        self.st().oauth.approve_device(user_code);
    }

    fn insert(
        &self,
        parent: &str,
        name: &str,
        mime: &str,
        content: Vec<u8>,
        export: Option<Vec<u8>>,
    ) -> String {
        let mut st = self.st();
        let parent = st.resolve_id(parent).to_owned();
        let drive_id = st.drive_of(&parent);
        let id = st.new_id();
        let now = SystemTime::now();
        let revisions = if mime.starts_with("application/vnd.google-apps.") {
            vec![]
        } else {
            vec![Revision {
                id: format!("0B{}", random_suffix(12)),
                modified: now,
                content: content.clone(),
            }]
        };
        st.files.insert(
            id.clone(),
            FileRec {
                id: id.clone(),
                name: name.into(),
                mime: mime.into(),
                parents: vec![parent],
                content,
                export,
                trashed: false,
                created: now,
                modified: now,
                version: 1,
                revisions,
                drive_id,
            },
        );
        st.record_change(&id);
        id
    }

    /// A new shared drive the user is a member of; returns its id, which is also the id of
    /// its root folder (pass it as `parent` to `add_file`/`add_folder`).
    pub fn add_shared_drive(&self, name: &str) -> String {
        let mut st = self.st();
        let id = format!("0A{}", random_suffix(17));
        let now = SystemTime::now();
        st.files.insert(
            id.clone(),
            FileRec {
                id: id.clone(),
                name: name.into(),
                mime: FOLDER_MIME.into(),
                parents: vec![],
                content: vec![],
                export: None,
                trashed: false,
                created: now,
                modified: now,
                version: 1,
                revisions: vec![],
                drive_id: Some(id.clone()),
            },
        );
        st.drives.push((id.clone(), name.into()));
        id
    }

    pub fn add_folder(&self, parent: &str, name: &str) -> String {
        self.insert(parent, name, FOLDER_MIME, vec![], None)
    }

    pub fn add_file(&self, parent: &str, name: &str, content: &[u8]) -> String {
        self.insert(
            parent,
            name,
            "application/octet-stream",
            content.to_vec(),
            None,
        )
    }

    pub fn add_native(&self, parent: &str, name: &str, mime: &str, export: &[u8]) -> String {
        self.insert(parent, name, mime, vec![], Some(export.to_vec()))
    }

    /// An edit made by someone else: new content, new revision.
    pub fn set_content(&self, id: &str, content: &[u8]) {
        let mut st = self.st();
        let f = st.files.get_mut(id).expect("no such file");
        set_content(f, content.to_vec(), None);
        st.record_change(id);
    }

    pub fn rename(&self, id: &str, name: &str) {
        let mut st = self.st();
        let f = st.files.get_mut(id).expect("no such file");
        f.name = name.into();
        f.version += 1;
        st.record_change(id);
    }

    pub fn trash(&self, id: &str) {
        let mut st = self.st();
        let f = st.files.get_mut(id).expect("no such file");
        f.trashed = true;
        f.version += 1;
        st.record_change(id);
    }

    pub fn delete_forever(&self, id: &str) {
        let mut st = self.st();
        delete_tree(&mut st, id);
    }

    pub fn file(&self, id: &str) -> Option<FileRec> {
        let st = self.st();
        let id = st.resolve_id(id).to_owned();
        st.files.get(&id).cloned()
    }

    /// Ids of the non-trashed children of `parent` called `name`, in id order.
    pub fn find(&self, parent: &str, name: &str) -> Vec<String> {
        let st = self.st();
        let parent = st.resolve_id(parent).to_owned();
        st.files
            .values()
            .filter(|f| !f.trashed && f.name == name && f.parents.contains(&parent))
            .map(|f| f.id.clone())
            .collect()
    }

    pub fn open_sessions(&self) -> usize {
        self.st().sessions.len()
    }

    /// The live (not trashed) children of `parent`, in id order: lets a test read the whole
    /// tree without knowing the names in it.
    pub fn children(&self, parent: &str) -> Vec<FileRec> {
        let st = self.st();
        let parent = st.resolve_id(parent).to_owned();
        st.files
            .values()
            .filter(|f| !f.trashed && f.parents.contains(&parent))
            .cloned()
            .collect()
    }
}

fn set_content(f: &mut FileRec, content: Vec<u8>, modified: Option<SystemTime>) {
    let now = SystemTime::now();
    f.content = content.clone();
    f.modified = modified.unwrap_or(now);
    f.version += 1;
    f.revisions.push(Revision {
        id: format!("0B{}", random_suffix(12)),
        modified: f.modified,
        content,
    });
}

fn set_drive_tree(st: &mut State, id: &str, drive: Option<String>) {
    let children: Vec<String> = st
        .files
        .values()
        .filter(|f| f.parents.iter().any(|p| p == id))
        .map(|f| f.id.clone())
        .collect();
    for c in children {
        set_drive_tree(st, &c, drive.clone());
    }
    if let Some(f) = st.files.get_mut(id) {
        f.drive_id = drive;
    }
}

fn delete_tree(st: &mut State, id: &str) {
    let children: Vec<String> = st
        .files
        .values()
        .filter(|f| f.parents.iter().any(|p| p == id))
        .map(|f| f.id.clone())
        .collect();
    for c in children {
        delete_tree(st, &c);
    }
    st.files.remove(id);
    st.record_change(id);
}

// ---------------------------------------------------------------------------------------
// HTTP plumbing

fn to_kit_response(resp: Resp) -> KitResponse {
    let mut out = KitResponse::new(resp.status().as_u16(), resp.body().to_vec());
    for (name, value) in resp.headers() {
        out = out.header(name.as_str(), String::from_utf8_lossy(value.as_bytes()));
    }
    out
}

fn respond(status: StatusCode, body: impl Into<Bytes>, ctype: &str) -> Resp {
    let mut r = Response::new(body.into());
    *r.status_mut() = status;
    r.headers_mut()
        .insert("content-type", HeaderValue::from_str(ctype).unwrap());
    r
}

fn json_resp(status: StatusCode, v: Value) -> Resp {
    respond(status, v.to_string(), "application/json; charset=UTF-8")
}

/// The v1 error shape of the Drive API.
fn api_error(
    code: u16,
    domain: &str,
    reason: &str,
    message: &str,
    location: Option<(&str, &str)>,
) -> Resp {
    let mut item = json!({"domain": domain, "reason": reason, "message": message});
    if let Some((ltype, loc)) = location {
        item["locationType"] = json!(ltype);
        item["location"] = json!(loc);
    }
    json_resp(
        StatusCode::from_u16(code).unwrap(),
        json!({"error": {"errors": [item], "code": code, "message": message}}),
    )
}

fn invalid_param(param: &str, message: &str) -> Resp {
    api_error(
        400,
        "global",
        "invalid",
        message,
        Some(("parameter", param)),
    )
}

fn not_found(id: &str) -> Resp {
    api_error(
        404,
        "global",
        "notFound",
        &format!("File not found: {id}."),
        Some(("parameter", "fileId")),
    )
}

/// Google's authorization server, as the emulator kit's OAuth server is told to be.
fn oauth_settings(cfg: &EmulatorConfig) -> OAuthSettings {
    OAuthSettings {
        client_id: cfg.client_id.clone(),
        client_secret: cfg.client_secret.clone(),
        access_token_lifetime: cfg.access_token_lifetime,
        rotate_refresh_tokens: cfg.rotate_refresh_tokens,
        device_scopes: Some(cfg.device_scopes.clone()),
        prefixes: TokenPrefixes {
            code: "4/0Ab-code-",
            access: "ya29.a0-access-",
            refresh: "1//0e-refresh-",
            device: "AH-device-",
        },
        // Google's device endpoint says `verification_url`, and 428 while pending.
        verification_field: "verification_url",
        verification_url: "https://www.google.com/device".into(),
        pending_status: 428,
        device_interval: Duration::from_secs(1),
        enforce_interval: false,
        device_code_lifetime: Duration::from_secs(1800),
        revoke_unknown_status: 400,
        aad_errors: false,
    }
}

fn oauth_resp(reply: OAuthReply) -> Resp {
    match reply {
        OAuthReply::Json(status, v) => json_resp(StatusCode::from_u16(status).unwrap(), v),
        OAuthReply::Page(status, text) => {
            respond(StatusCode::from_u16(status).unwrap(), text, "text/html")
        }
        OAuthReply::Redirect(to) => {
            let mut r = respond(StatusCode::FOUND, "", "text/html");
            r.headers_mut()
                .insert("location", HeaderValue::from_str(&to).unwrap());
            r
        }
    }
}

fn query_map(req_query: Option<&str>) -> HashMap<String, String> {
    req_query
        .map(|q| {
            url::form_urlencoded::parse(q.as_bytes())
                .into_owned()
                .collect()
        })
        .unwrap_or_default()
}

fn handle(state: &Mutex<State>, req: &Request) -> Result<Resp, DropConnection> {
    let Ok(method) = Method::from_bytes(req.method.as_bytes()) else {
        return Ok(respond(StatusCode::METHOD_NOT_ALLOWED, "", "text/plain"));
    };
    let path = req.path_only().to_owned();
    let query = query_map(req.path.split_once('?').map(|(_, q)| q));
    let mut headers = hyper::HeaderMap::new();
    for (name, value) in &req.headers {
        if let (Ok(n), Ok(v)) = (
            hyper::header::HeaderName::from_bytes(name.as_bytes()),
            HeaderValue::from_str(value),
        ) {
            headers.append(n, v);
        }
    }
    let body = req.body.clone();

    let is_session = path == "/upload/drive/v3/files" && query.contains_key("upload_id");
    if is_session && (method == Method::PUT || method == Method::POST) {
        return handle_chunk(state, &headers, body, query);
    }

    let mut st = state.lock().unwrap();
    let resp = match (method.clone(), path.as_str()) {
        (Method::GET, "/o/oauth2/v2/auth") => oauth_resp(st.oauth.authorize(&query)),
        (Method::POST, "/token") => {
            let authorization = header(&headers, "authorization");
            oauth_resp(st.oauth.token(authorization, &body))
        }
        (Method::POST, "/revoke") => oauth_resp(st.oauth.revoke(&query, &body)),
        (Method::POST, "/device/code") => oauth_resp(st.oauth.device_code(&body)),
        _ if path.starts_with("/drive/v3/") || path.starts_with("/upload/drive/v3/") => {
            api(&mut st, &method, &path, &query, &headers, &body)
        }
        _ => respond(StatusCode::NOT_FOUND, "Not Found", "text/plain"),
    };
    Ok(resp)
}

fn form(body: &[u8]) -> HashMap<String, String> {
    url::form_urlencoded::parse(body).into_owned().collect()
}

// ---------------------------------------------------------------------------------------
// API

fn check_bearer(st: &mut State, headers: &hyper::HeaderMap) -> Option<Resp> {
    if st.oauth.bearer_ok(header(headers, "authorization")) {
        return None;
    }
    let mut r = api_error(
        401,
        "global",
        "authError",
        "Invalid Credentials",
        Some(("header", "Authorization")),
    );
    r.headers_mut().insert(
        "www-authenticate",
        HeaderValue::from_static(
            "Bearer realm=\"https://accounts.google.com/\", error=\"invalid_token\"",
        ),
    );
    Some(r)
}

/// A fault due now for a non-chunk request, if any.
fn take_fault(st: &mut State) -> Option<Resp> {
    match st.faults.front() {
        None | Some(Fault::DropUploadAfter(_)) | Some(Fault::ExpireUploadSession) => None,
        Some(_) => {
            let f = st.faults.pop_front().unwrap();
            st.stats.faults_served += 1;
            Some(fault_response(&f))
        }
    }
}

fn fault_response(f: &Fault) -> Resp {
    match f {
        Fault::UserRateLimit403 => api_error(
            403,
            "usageLimits",
            "userRateLimitExceeded",
            "User Rate Limit Exceeded",
            None,
        ),
        Fault::RateLimit429 { retry_after } => {
            let mut r = api_error(
                429,
                "usageLimits",
                "rateLimitExceeded",
                "Rate Limit Exceeded",
                None,
            );
            if let Some(s) = retry_after {
                r.headers_mut().insert(
                    "retry-after",
                    HeaderValue::from_str(&s.to_string()).unwrap(),
                );
            }
            r
        }
        Fault::ServerError(code) => {
            api_error(*code, "global", "backendError", "Backend Error", None)
        }
        Fault::Forbidden403 => api_error(
            403,
            "global",
            "insufficientPermissions",
            "Insufficient Permission: Request had insufficient authentication scopes.",
            None,
        ),
        Fault::DropUploadAfter(_) | Fault::ExpireUploadSession => unreachable!(),
    }
}

fn api(
    st: &mut State,
    method: &Method,
    path: &str,
    q: &HashMap<String, String>,
    headers: &hyper::HeaderMap,
    body: &[u8],
) -> Resp {
    st.stats.api_calls += 1;
    if let Some(r) = take_fault(st) {
        return r;
    }
    if let Some(r) = check_bearer(st, headers) {
        return r;
    }
    let segs: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    let fields = q.get("fields").map(String::as_str);
    st.all_drives = q.get("supportsAllDrives").is_some_and(|v| v == "true");
    // Items in shared drives are invisible to callers that do not declare support for them.
    let item = match segs.as_slice() {
        // The methods with a supportsAllDrives parameter (export and revisions have none).
        ["drive", "v3", "files", id]
        | ["drive", "v3", "files", id, "copy"]
        | ["upload", "drive", "v3", "files", id] => Some(st.resolve_id(id).to_owned()),
        _ => None,
    };
    if let Some(id) = item {
        if st.hidden(&id) {
            return not_found(&id);
        }
        if st.drives.iter().any(|(d, _)| *d == id)
            && (*method == Method::DELETE || *method == Method::PATCH)
        {
            // A shared drive is managed with drives.delete / drives.update, not as a file.
            return api_error(
                403,
                "global",
                "insufficientFilePermissions",
                "The user does not have sufficient permissions for this file.",
                None,
            );
        }
    }
    match (method.clone(), segs.as_slice()) {
        (Method::GET, ["drive", "v3", "drives"]) => drives_list(st, q),
        (Method::GET, ["drive", "v3", "files"]) => files_list(st, q),
        (Method::POST, ["drive", "v3", "files"]) => {
            let meta: Value = match serde_json::from_slice(body) {
                Ok(v) => v,
                Err(_) => return api_error(400, "global", "parseError", "Parse Error", None),
            };
            create_file(st, &meta, None, fields)
        }
        (Method::GET, ["drive", "v3", "files", id]) => files_get(st, id, q, headers),
        (Method::PATCH, ["drive", "v3", "files", id]) => files_patch(st, id, q, body, None),
        (Method::DELETE, ["drive", "v3", "files", id]) => {
            let id = st.resolve_id(id).to_owned();
            if !st.files.contains_key(&id) || id == st.root_id {
                return not_found(&id);
            }
            delete_tree(st, &id);
            respond(StatusCode::NO_CONTENT, "", "text/plain")
        }
        (Method::POST, ["drive", "v3", "files", id, "copy"]) => files_copy(st, id, q, body),
        (Method::GET, ["drive", "v3", "files", id, "export"]) => files_export(st, id, q),
        (Method::GET, ["drive", "v3", "files", id, "revisions"]) => revisions_list(st, id, q),
        (Method::GET, ["drive", "v3", "files", id, "revisions", rev]) => {
            revisions_get(st, id, rev, q, headers)
        }
        (Method::GET, ["drive", "v3", "changes", "startPageToken"]) => json_resp(
            StatusCode::OK,
            json!({"kind": "drive#startPageToken", "startPageToken": (st.next_change + 1).to_string()}),
        ),
        (Method::GET, ["drive", "v3", "changes"]) => changes_list(st, q),
        (Method::GET, ["drive", "v3", "about"]) => about(st, q),
        (Method::POST, ["upload", "drive", "v3", "files"]) => upload(st, None, q, headers, body),
        (Method::PATCH, ["upload", "drive", "v3", "files", id]) => {
            let id = st.resolve_id(id).to_owned();
            upload(st, Some(id), q, headers, body)
        }
        _ => api_error(404, "global", "notFound", "Not Found", None),
    }
}

// ----- fields selection

#[derive(Debug)]
struct FieldSel(Vec<(String, Option<FieldSel>)>);

fn parse_fields(s: &str) -> Result<FieldSel, String> {
    fn parse(chars: &[char], i: &mut usize) -> Result<FieldSel, String> {
        let mut out = Vec::new();
        let mut name = String::new();
        while *i < chars.len() {
            let c = chars[*i];
            *i += 1;
            match c {
                ',' => {
                    if !name.trim().is_empty() {
                        out.push((name.trim().to_owned(), None));
                    }
                    name.clear();
                }
                '(' => {
                    let sub = parse(chars, i)?;
                    out.push((name.trim().to_owned(), Some(sub)));
                    name.clear();
                    // Skip a following comma.
                    if *i < chars.len() && chars[*i] == ',' {
                        *i += 1;
                    }
                }
                ')' => {
                    if !name.trim().is_empty() {
                        out.push((name.trim().to_owned(), None));
                    }
                    return Ok(FieldSel(out));
                }
                _ => name.push(c),
            }
        }
        if !name.trim().is_empty() {
            out.push((name.trim().to_owned(), None));
        }
        Ok(FieldSel(out))
    }
    let chars: Vec<char> = s.chars().collect();
    let mut i = 0;
    parse(&chars, &mut i)
}

const FILE_FIELDS: &[&str] = &[
    "kind",
    "id",
    "name",
    "mimeType",
    "parents",
    "size",
    "md5Checksum",
    "sha256Checksum",
    "modifiedTime",
    "createdTime",
    "version",
    "trashed",
    "headRevisionId",
    "shortcutDetails",
    "quotaBytesUsed",
    "capabilities",
    "exportLinks",
    "description",
    "starred",
    "driveId",
];

/// Apply a selection to a value, checking names against the known ones of each resource.
fn select(
    v: &Value,
    sel: &FieldSel,
    known: &dyn Fn(&str) -> Option<&'static [&'static str]>,
    ctx: &str,
) -> Result<Value, String> {
    if let Value::Array(items) = v {
        return items
            .iter()
            .map(|it| select(it, sel, known, ctx))
            .collect::<Result<Vec<_>, _>>()
            .map(Value::Array);
    }
    let Value::Object(map) = v else {
        return Ok(v.clone());
    };
    let mut out = Map::new();
    for (name, sub) in &sel.0 {
        if name == "*" {
            return Ok(v.clone());
        }
        let allowed = known(ctx).is_none_or(|k| k.contains(&name.as_str()));
        if !allowed {
            return Err(name.clone());
        }
        if let Some(val) = map.get(name) {
            let val = match sub {
                Some(s) => select(val, s, known, name)?,
                None => val.clone(),
            };
            out.insert(name.clone(), val);
        }
    }
    Ok(Value::Object(out))
}

fn known_fields(ctx: &str) -> Option<&'static [&'static str]> {
    match ctx {
        "file" | "files" => Some(FILE_FIELDS),
        "fileList" => Some(&["kind", "nextPageToken", "incompleteSearch", "files"]),
        "driveList" => Some(&["kind", "nextPageToken", "drives"]),
        "drives" => Some(&[
            "kind",
            "id",
            "name",
            "createdTime",
            "hidden",
            "capabilities",
            "restrictions",
            "colorRgb",
            "backgroundImageLink",
            "themeId",
            "orgUnitId",
        ]),
        "changeList" => Some(&["kind", "nextPageToken", "newStartPageToken", "changes"]),
        "changes" => Some(&[
            "kind",
            "changeType",
            "time",
            "removed",
            "fileId",
            "file",
            "driveId",
            "drive",
        ]),
        "revisionList" => Some(&["kind", "nextPageToken", "revisions"]),
        "revisions" | "revision" => Some(&[
            "kind",
            "id",
            "mimeType",
            "modifiedTime",
            "keepForever",
            "md5Checksum",
            "size",
            "originalFilename",
            "published",
        ]),
        "about" => Some(&[
            "kind",
            "storageQuota",
            "user",
            "exportFormats",
            "importFormats",
            "maxUploadSize",
        ]),
        _ => None,
    }
}

fn with_fields(v: Value, fields: Option<&str>, default: &str, ctx: &str) -> Resp {
    let sel = parse_fields(fields.unwrap_or(default)).unwrap();
    match select(&v, &sel, &known_fields, ctx) {
        Ok(v) => json_resp(StatusCode::OK, v),
        Err(bad) => invalid_param("fields", &format!("Invalid field selection {bad}")),
    }
}

fn file_json(f: &FileRec) -> Value {
    let mut v = json!({
        "kind": "drive#file",
        "id": f.id,
        "name": f.name,
        "mimeType": f.mime,
        "parents": f.parents,
        "trashed": f.trashed,
        "createdTime": rfc3339(f.created),
        "modifiedTime": rfc3339(f.modified),
        "version": f.version.to_string(),
    });
    if !f.is_native() {
        v["size"] = json!(f.content.len().to_string());
        v["md5Checksum"] = json!(md5_hex(&f.content));
        v["quotaBytesUsed"] = json!(f.content.len().to_string());
        if let Some(r) = f.revisions.last() {
            v["headRevisionId"] = json!(r.id);
        }
    }
    if f.parents.is_empty() {
        v.as_object_mut().unwrap().remove("parents");
    }
    if let Some(d) = &f.drive_id {
        v["driveId"] = json!(d);
    }
    v
}

const FILE_DEFAULT: &str = "kind,id,name,mimeType";

// ----- files.list

#[derive(Default)]
struct Query {
    parent: Option<String>,
    trashed: Option<bool>,
    name: Option<String>,
}

/// The `q` forms this emulator understands; anything else is refused with 400 like Drive
/// refuses a query it cannot parse.
fn parse_q(q: &str) -> Result<Query, ()> {
    let mut out = Query::default();
    // Tokenise into quoted strings and bare words.
    let mut toks: Vec<(bool, String)> = Vec::new();
    let mut it = q.chars().peekable();
    while let Some(c) = it.next() {
        match c {
            ' ' | '\t' => {}
            '\'' => {
                let mut s = String::new();
                loop {
                    match it.next() {
                        Some('\\') => s.push(it.next().ok_or(())?),
                        Some('\'') => break,
                        Some(c) => s.push(c),
                        None => return Err(()),
                    }
                }
                toks.push((true, s));
            }
            '=' => toks.push((false, "=".into())),
            '!' if it.peek() == Some(&'=') => {
                it.next();
                toks.push((false, "!=".into()));
            }
            _ => {
                let mut s = String::from(c);
                while let Some(&n) = it.peek() {
                    if n == ' ' || n == '=' || n == '\'' || n == '!' {
                        break;
                    }
                    s.push(n);
                    it.next();
                }
                toks.push((false, s));
            }
        }
    }
    let mut i = 0;
    loop {
        let rest = &toks[i..];
        match rest {
            [(true, id), (false, kw), (false, p), ..] if kw == "in" && p == "parents" => {
                out.parent = Some(id.clone());
                i += 3;
            }
            [(false, t), (false, eq), (false, v), ..]
                if t == "trashed" && eq == "=" && (v == "true" || v == "false") =>
            {
                out.trashed = Some(v == "true");
                i += 3;
            }
            [(false, t), (false, eq), (true, v), ..] if t == "name" && eq == "=" => {
                out.name = Some(v.clone());
                i += 3;
            }
            _ => return Err(()),
        }
        if i == toks.len() {
            return Ok(out);
        }
        match &toks[i] {
            (false, and) if and == "and" => i += 1,
            _ => return Err(()),
        }
        if i == toks.len() {
            return Err(());
        }
    }
}

fn page_size(q: &HashMap<String, String>, default: usize) -> Result<usize, Resp> {
    match q.get("pageSize") {
        None => Ok(default),
        Some(s) => match s.parse::<i64>() {
            Ok(n) if (1..=1000).contains(&n) => Ok(n as usize),
            _ => Err(invalid_param(
                "pageSize",
                &format!("Invalid value '{s}'. Values must be within the range: [1, 1000]"),
            )),
        },
    }
}

fn files_list(st: &mut State, q: &HashMap<String, String>) -> Resp {
    st.stats.list_calls += 1;
    let size = match page_size(q, 100) {
        Ok(n) => n.min(st.cfg.max_page_size),
        Err(r) => return r,
    };
    let query = match q.get("q") {
        Some(s) => match parse_q(s) {
            Ok(p) => p,
            Err(()) => return invalid_param("q", "Invalid Value"),
        },
        None => Query::default(),
    };
    // Page tokens: "<offset>" or "<offset>e" (an empty page comes first).
    let (offset, empty) = match q.get("pageToken") {
        None => (0, false),
        Some(t) => {
            let (num, empty) = match t.strip_suffix('e') {
                Some(n) => (n, true),
                None => (t.as_str(), false),
            };
            match num.strip_prefix("LT").and_then(|n| n.parse::<usize>().ok()) {
                Some(n) => (n, empty),
                None => return invalid_param("pageToken", "Invalid Value"),
            }
        }
    };
    let parent = query.parent.as_deref().map(|p| st.resolve_id(p).to_owned());
    let include_all = st.all_drives
        && q.get("includeItemsFromAllDrives")
            .is_some_and(|v| v == "true");
    let corpora = q.get("corpora").map(String::as_str).unwrap_or("user");
    let drive = q.get("driveId").cloned();
    match (corpora, &drive) {
        ("user" | "allDrives", None) => {}
        ("drive", Some(d)) => {
            if !st.drives.iter().any(|(id, _)| id == d) {
                return api_error(
                    404,
                    "global",
                    "notFound",
                    &format!("Shared drive not found: {d}"),
                    Some(("parameter", "driveId")),
                );
            }
        }
        ("drive", None) | (_, Some(_)) => {
            return invalid_param(
                "driveId",
                "The driveId parameter must be specified if and only if corpora is set to drive.",
            )
        }
        (other, None) => return invalid_param("corpora", &format!("Invalid value '{other}'")),
    }
    if let Some(p) = &parent {
        // A parent in a shared drive is not found by a caller that does not support shared
        // drives (as files.get answers); a caller that supports them but does not ask for
        // their items gets none (includeItemsFromAllDrives, default false).
        if st.hidden(p) {
            return not_found(p);
        }
    }
    // Drive promises no order; newest-first keeps clients from assuming one.
    let mut all: Vec<&FileRec> = st
        .files
        .values()
        .filter(|f| f.id != st.root_id)
        .filter(|f| f.drive_id.is_none() || include_all)
        .filter(|f| drive.is_none() || f.drive_id == drive)
        .filter(|f| parent.as_ref().is_none_or(|p| f.parents.contains(p)))
        .filter(|f| query.trashed.is_none_or(|t| f.trashed == t))
        .filter(|f| query.name.as_ref().is_none_or(|n| &f.name == n))
        .collect();
    all.reverse();
    let mut v = json!({"kind": "drive#fileList", "incompleteSearch": false});
    if empty {
        v["files"] = json!([]);
        v["nextPageToken"] = json!(format!("LT{offset}"));
    } else {
        let page: Vec<Value> = all
            .iter()
            .skip(offset)
            .take(size)
            .map(|f| file_json(f))
            .collect();
        let next = offset + page.len();
        v["files"] = Value::Array(page);
        if next < all.len() {
            let e = if st.cfg.empty_pages { "e" } else { "" };
            v["nextPageToken"] = json!(format!("LT{next}{e}"));
        }
    }
    with_fields(
        v,
        q.get("fields").map(String::as_str),
        "kind,incompleteSearch,nextPageToken,files(kind,id,name,mimeType)",
        "fileList",
    )
}

// ----- files.get / media

fn parse_range(h: &str, total: usize) -> Result<Option<(usize, usize)>, ()> {
    let Some(spec) = h.strip_prefix("bytes=") else {
        return Ok(None);
    };
    let (a, b) = spec.split_once('-').ok_or(())?;
    if a.is_empty() {
        // Suffix range.
        let n: usize = b.parse().map_err(|_| ())?;
        if n == 0 {
            return Err(());
        }
        return Ok(Some((total.saturating_sub(n), total.saturating_sub(1))));
    }
    let a: usize = a.parse().map_err(|_| ())?;
    if a >= total {
        return Err(());
    }
    let b: usize = if b.is_empty() {
        total - 1
    } else {
        b.parse::<usize>().map_err(|_| ())?.min(total - 1)
    };
    if b < a {
        return Err(());
    }
    Ok(Some((a, b)))
}

fn media(content: &[u8], headers: &hyper::HeaderMap) -> Resp {
    let total = content.len();
    match headers.get("range").and_then(|v| v.to_str().ok()) {
        None => respond(StatusCode::OK, content.to_vec(), "application/octet-stream"),
        Some(r) => match parse_range(r, total) {
            Ok(None) => respond(StatusCode::OK, content.to_vec(), "application/octet-stream"),
            Ok(Some((a, b))) => {
                let mut resp = respond(
                    StatusCode::PARTIAL_CONTENT,
                    content[a..=b].to_vec(),
                    "application/octet-stream",
                );
                resp.headers_mut().insert(
                    "content-range",
                    HeaderValue::from_str(&format!("bytes {a}-{b}/{total}")).unwrap(),
                );
                resp
            }
            Err(()) => {
                let mut resp = api_error(
                    416,
                    "global",
                    "requestedRangeNotSatisfiable",
                    "Request range not satisfiable",
                    None,
                );
                resp.headers_mut().insert(
                    "content-range",
                    HeaderValue::from_str(&format!("bytes */{total}")).unwrap(),
                );
                resp
            }
        },
    }
}

fn files_get(
    st: &mut State,
    id: &str,
    q: &HashMap<String, String>,
    headers: &hyper::HeaderMap,
) -> Resp {
    let id = st.resolve_id(id).to_owned();
    let Some(f) = st.files.get(&id) else {
        return not_found(&id);
    };
    match q.get("alt").map(String::as_str) {
        None | Some("json") => with_fields(
            file_json(f),
            q.get("fields").map(String::as_str),
            FILE_DEFAULT,
            "file",
        ),
        Some("media") => {
            if f.is_native() {
                return api_error(
                    403,
                    "global",
                    "fileNotDownloadable",
                    "Only files with binary content can be downloaded. Use Export with Docs Editors files.",
                    Some(("parameter", "alt")),
                );
            }
            media(&f.content, headers)
        }
        Some(other) => invalid_param("alt", &format!("Invalid value '{other}'")),
    }
}

fn export_allowed(src: &str, target: &str) -> bool {
    let allowed: &[&str] = match src {
        DOC_MIME => &[
            "application/vnd.openxmlformats-officedocument.wordprocessingml.document",
            "application/pdf",
            "text/plain",
            "application/vnd.oasis.opendocument.text",
            "text/html",
        ],
        SHEET_MIME => &[
            "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet",
            "application/pdf",
            "text/csv",
            "application/x-vnd.oasis.opendocument.spreadsheet",
        ],
        "application/vnd.google-apps.presentation" => &[
            "application/vnd.openxmlformats-officedocument.presentationml.presentation",
            "application/pdf",
            "text/plain",
        ],
        "application/vnd.google-apps.drawing" => &[
            "application/pdf",
            "image/png",
            "image/jpeg",
            "image/svg+xml",
        ],
        _ => &[],
    };
    allowed.contains(&target)
}

fn files_export(st: &mut State, id: &str, q: &HashMap<String, String>) -> Resp {
    let id = st.resolve_id(id).to_owned();
    let limit = st.cfg.export_size_limit;
    let Some(f) = st.files.get(&id) else {
        return not_found(&id);
    };
    let Some(target) = q.get("mimeType") else {
        return api_error(
            400,
            "global",
            "required",
            "Required parameter: mimeType",
            Some(("parameter", "mimeType")),
        );
    };
    if !f.is_native() || f.is_folder() {
        return api_error(
            403,
            "global",
            "fileNotExportable",
            "Export only supports Docs Editors files.",
            None,
        );
    }
    if !export_allowed(&f.mime, target) {
        return api_error(
            400,
            "global",
            "badRequest",
            "The requested conversion is not supported.",
            Some(("parameter", "convertTo")),
        );
    }
    let data = f.export.clone().unwrap_or_default();
    if data.len() > limit {
        return api_error(
            403,
            "global",
            "exportSizeLimitExceeded",
            "This file is too large to be exported.",
            None,
        );
    }
    st.stats.exports += 1;
    respond(StatusCode::OK, data, target)
}

// ----- create / patch / copy

fn parent_ok(st: &State, id: &str) -> Result<(), Resp> {
    match st.files.get(id).filter(|_| !st.hidden(id)) {
        Some(p) if p.is_folder() => Ok(()),
        Some(_) => Err(api_error(
            400,
            "global",
            "invalid",
            "The parent is not a folder.",
            None,
        )),
        None => Err(api_error(
            404,
            "global",
            "notFound",
            &format!("File not found: {id}."),
            Some(("parameter", "parents")),
        )),
    }
}

fn time_from(v: &Value) -> Option<SystemTime> {
    v.as_str()
        .and_then(|s| chrono::DateTime::parse_from_rfc3339(s).ok())
        .map(SystemTime::from)
}

fn create_file(
    st: &mut State,
    meta: &Value,
    content: Option<Vec<u8>>,
    fields: Option<&str>,
) -> Resp {
    let parents: Vec<String> = match meta.get("parents") {
        Some(Value::Array(p)) => p
            .iter()
            .filter_map(|x| x.as_str())
            .map(|x| st.resolve_id(x).to_owned())
            .collect(),
        None => vec![st.root_id.clone()],
        _ => return api_error(400, "global", "invalid", "Invalid parents", None),
    };
    if parents.len() != 1 {
        return api_error(
            403,
            "global",
            "cannotAddParent",
            "Increasing the number of parents is not allowed.",
            None,
        );
    }
    if let Err(r) = parent_ok(st, &parents[0]) {
        return r;
    }
    let drive_id = st.drive_of(&parents[0]);
    let mime = meta
        .get("mimeType")
        .and_then(|v| v.as_str())
        .unwrap_or("application/octet-stream")
        .to_owned();
    let is_folder = mime == FOLDER_MIME;
    if content.is_some() && mime.starts_with("application/vnd.google-apps.") {
        return api_error(
            400,
            "global",
            "badRequest",
            "Conversion to Google Docs is not supported by this emulator.",
            None,
        );
    }
    let data = content.unwrap_or_default();
    if let Some(limit) = st.cfg.storage_limit {
        let (d, t) = st.usage();
        if d + t + data.len() as u64 > limit {
            return api_error(
                403,
                "usageLimits",
                "storageQuotaExceeded",
                "The user's Drive storage quota has been exceeded.",
                None,
            );
        }
    }
    let id = st.new_id();
    let now = SystemTime::now();
    let modified = meta.get("modifiedTime").and_then(time_from).unwrap_or(now);
    let revisions = if is_folder || mime.starts_with("application/vnd.google-apps.") {
        vec![]
    } else {
        vec![Revision {
            id: format!("0B{}", random_suffix(12)),
            modified,
            content: data.clone(),
        }]
    };
    let f = FileRec {
        id: id.clone(),
        name: meta
            .get("name")
            .and_then(|v| v.as_str())
            .unwrap_or("Untitled")
            .to_owned(),
        mime,
        parents,
        content: data,
        export: None,
        trashed: false,
        created: now,
        modified,
        version: 1,
        revisions,
        drive_id,
    };
    let v = file_json(&f);
    st.files.insert(id.clone(), f);
    st.record_change(&id);
    with_fields(v, fields, FILE_DEFAULT, "file")
}

fn files_patch(
    st: &mut State,
    id: &str,
    q: &HashMap<String, String>,
    body: &[u8],
    content: Option<Vec<u8>>,
) -> Resp {
    let id = st.resolve_id(id).to_owned();
    if !st.files.contains_key(&id) {
        return not_found(&id);
    }
    let meta: Value = if body.is_empty() {
        json!({})
    } else {
        match serde_json::from_slice(body) {
            Ok(v) => v,
            Err(_) => return api_error(400, "global", "parseError", "Parse Error", None),
        }
    };
    patch_file(st, &id, &meta, q, content)
}

fn patch_file(
    st: &mut State,
    id: &str,
    meta: &Value,
    q: &HashMap<String, String>,
    content: Option<Vec<u8>>,
) -> Resp {
    let split = |k: &str| -> Vec<String> {
        q.get(k)
            .map(|s| {
                s.split(',')
                    .filter(|x| !x.is_empty())
                    .map(|x| st.resolve_id(x).to_owned())
                    .collect()
            })
            .unwrap_or_default()
    };
    let add = split("addParents");
    let remove = split("removeParents");
    for p in &add {
        if let Err(r) = parent_ok(st, p) {
            return r;
        }
        // Moving a folder under itself would make a cycle.
        let mut cur = Some(p.clone());
        while let Some(c) = cur {
            if c == id {
                return api_error(
                    400,
                    "global",
                    "invalid",
                    "A folder cannot be moved into itself or its descendants.",
                    None,
                );
            }
            cur = st.files.get(&c).and_then(|f| f.parents.first().cloned());
        }
    }
    let f = st.files.get(id).unwrap();
    for p in &remove {
        if !f.parents.contains(p) {
            return api_error(
                400,
                "global",
                "invalid",
                "The parent to remove is not a parent of the file.",
                Some(("parameter", "removeParents")),
            );
        }
    }
    let mut parents: Vec<String> = f
        .parents
        .iter()
        .filter(|p| !remove.contains(p))
        .cloned()
        .collect();
    for p in add {
        if !parents.contains(&p) {
            parents.push(p);
        }
    }
    if parents.len() > 1 {
        return api_error(
            403,
            "global",
            "cannotAddParent",
            "Increasing the number of parents is not allowed.",
            None,
        );
    }
    if content.is_some() && f.is_native() {
        return api_error(
            400,
            "global",
            "badRequest",
            "Google Docs content cannot be replaced by an upload in this emulator.",
            None,
        );
    }
    if let (Some(c), Some(limit)) = (&content, st.cfg.storage_limit) {
        let (d, t) = st.usage();
        if d + t - f.content.len() as u64 + c.len() as u64 > limit {
            return api_error(
                403,
                "usageLimits",
                "storageQuotaExceeded",
                "The user's Drive storage quota has been exceeded.",
                None,
            );
        }
    }
    let new_drive = parents.first().map(|p| st.drive_of(p));
    if let Some(d) = new_drive.filter(|d| *d != st.drive_of(id)) {
        // Moved into or out of a shared drive: the whole subtree goes along.
        set_drive_tree(st, id, d);
    }
    let f = st.files.get_mut(id).unwrap();
    if !parents.is_empty() {
        f.parents = parents;
    }
    if let Some(n) = meta.get("name").and_then(|v| v.as_str()) {
        f.name = n.to_owned();
    }
    if let Some(t) = meta.get("trashed").and_then(|v| v.as_bool()) {
        f.trashed = t;
    }
    let mtime = meta.get("modifiedTime").and_then(time_from);
    match content {
        Some(c) => set_content(f, c, mtime),
        None => {
            if let Some(t) = mtime {
                f.modified = t;
            }
            f.version += 1;
        }
    }
    let v = file_json(f);
    st.record_change(id);
    with_fields(v, q.get("fields").map(String::as_str), FILE_DEFAULT, "file")
}

fn files_copy(st: &mut State, id: &str, q: &HashMap<String, String>, body: &[u8]) -> Resp {
    let id = st.resolve_id(id).to_owned();
    let Some(src) = st.files.get(&id).cloned() else {
        return not_found(&id);
    };
    if src.is_folder() {
        // Drive documents "Folders cannot be copied."; the exact reason string is a guess.
        return api_error(
            403,
            "global",
            "cannotCopyFile",
            "This file cannot be copied by the user.",
            None,
        );
    }
    let meta: Value = serde_json::from_slice(body).unwrap_or(json!({}));
    let mut m =
        json!({"name": meta.get("name").cloned().unwrap_or(json!(src.name)), "mimeType": src.mime});
    m["parents"] = meta.get("parents").cloned().unwrap_or(json!(src.parents));
    if src.is_native() {
        let r = create_file(st, &m, None, Some("id"));
        // Copy the export payload too.
        if r.status() == StatusCode::OK {
            let new_id = st.files.values().last().map(|f| f.id.clone()).unwrap();
            let export = src.export.clone();
            st.files.get_mut(&new_id).unwrap().export = export;
            let v = file_json(&st.files[&new_id]);
            return with_fields(v, q.get("fields").map(String::as_str), FILE_DEFAULT, "file");
        }
        return r;
    }
    create_file(
        st,
        &m,
        Some(src.content),
        q.get("fields").map(String::as_str),
    )
}

// ----- uploads

fn header<'a>(headers: &'a hyper::HeaderMap, name: &str) -> Option<&'a str> {
    headers.get(name).and_then(|v| v.to_str().ok())
}

fn parse_multipart(ctype: &str, body: &[u8]) -> Result<(Value, Vec<u8>), String> {
    let (mime, params) = ctype.split_once(';').ok_or("no boundary")?;
    if mime.trim() != "multipart/related" {
        return Err(format!("content type {mime} is not multipart/related"));
    }
    let boundary = params
        .split(';')
        .filter_map(|p| p.trim().strip_prefix("boundary="))
        .next()
        .ok_or("no boundary")?
        .trim_matches('"')
        .to_owned();
    let delim = format!("--{boundary}");
    let find = |hay: &[u8], needle: &[u8], from: usize| -> Option<usize> {
        hay[from..]
            .windows(needle.len())
            .position(|w| w == needle)
            .map(|p| p + from)
    };
    if !body.starts_with(format!("{delim}\r\n").as_bytes()) {
        return Err("body does not start with the boundary".into());
    }
    let mut pos = delim.len() + 2;
    let mut parts = Vec::new();
    loop {
        let next = find(body, format!("\r\n{delim}").as_bytes(), pos).ok_or("unterminated part")?;
        parts.push(&body[pos..next]);
        pos = next + 2 + delim.len();
        if body[pos..].starts_with(b"--") {
            let rest = &body[pos + 2..];
            if !(rest.is_empty() || rest == b"\r\n") {
                return Err("data after the closing boundary".into());
            }
            break;
        }
        if !body[pos..].starts_with(b"\r\n") {
            return Err("bad boundary line".into());
        }
        pos += 2;
    }
    if parts.len() != 2 {
        return Err(format!("expected 2 parts, got {}", parts.len()));
    }
    let split = |p: &[u8]| -> Result<(String, Vec<u8>), String> {
        let i = find(p, b"\r\n\r\n", 0).ok_or("part without headers")?;
        Ok((
            String::from_utf8_lossy(&p[..i]).to_lowercase(),
            p[i + 4..].to_vec(),
        ))
    };
    let (h1, meta) = split(parts[0])?;
    if !h1.contains("content-type: application/json") {
        return Err("first part must be application/json metadata".into());
    }
    let (h2, data) = split(parts[1])?;
    if !h2.contains("content-type:") {
        return Err("media part without Content-Type".into());
    }
    let meta = serde_json::from_slice(&meta).map_err(|e| format!("metadata is not JSON: {e}"))?;
    Ok((meta, data))
}

fn upload(
    st: &mut State,
    id: Option<String>,
    q: &HashMap<String, String>,
    headers: &hyper::HeaderMap,
    body: &[u8],
) -> Resp {
    if let Some(id) = &id {
        if !st.files.contains_key(id) {
            return not_found(id);
        }
    }
    let fields = q.get("fields").map(String::as_str);
    match q.get("uploadType").map(String::as_str) {
        Some("multipart") => {
            let ctype = header(headers, "content-type").unwrap_or("");
            let (meta, data) = match parse_multipart(ctype, body) {
                Ok(x) => x,
                Err(e) => {
                    return api_error(
                        400,
                        "global",
                        "badContent",
                        &format!("Malformed multipart body: {e}"),
                        None,
                    )
                }
            };
            st.stats.multipart_uploads += 1;
            match id {
                None => create_file(st, &meta, Some(data), fields),
                Some(id) => patch_file(st, &id, &meta, q, Some(data)),
            }
        }
        Some("media") => {
            st.stats.multipart_uploads += 1;
            match id {
                None => create_file(st, &json!({}), Some(body.to_vec()), fields),
                Some(id) => patch_file(st, &id, &json!({}), q, Some(body.to_vec())),
            }
        }
        Some("resumable") => {
            let meta: Value = if body.is_empty() {
                json!({})
            } else {
                match serde_json::from_slice(body) {
                    Ok(v) => v,
                    Err(_) => return api_error(400, "global", "parseError", "Parse Error", None),
                }
            };
            let total = match header(headers, "x-upload-content-length") {
                Some(s) => match s.parse::<u64>() {
                    Ok(n) => Some(n),
                    Err(_) => {
                        return api_error(
                            400,
                            "global",
                            "badRequest",
                            "Invalid X-Upload-Content-Length",
                            None,
                        )
                    }
                },
                None => None,
            };
            if id.is_none() {
                if let Some(p) = meta
                    .get("parents")
                    .and_then(|p| p.get(0))
                    .and_then(|p| p.as_str())
                {
                    let p = st.resolve_id(p).to_owned();
                    if let Err(r) = parent_ok(st, &p) {
                        return r;
                    }
                }
            }
            let sid = format!("ADPycd{}", random_suffix(20));
            st.sessions.insert(
                sid.clone(),
                Session {
                    file_id: id,
                    metadata: meta,
                    total,
                    data: vec![],
                    expired: false,
                    fields: fields.map(str::to_owned),
                },
            );
            st.stats.resumable_sessions += 1;
            let mut r = respond(StatusCode::OK, "", "text/plain");
            let loc = format!(
                "{}/upload/drive/v3/files?uploadType=resumable&upload_id={sid}",
                st.base
            );
            r.headers_mut()
                .insert("location", HeaderValue::from_str(&loc).unwrap());
            r
        }
        _ => invalid_param("uploadType", "Invalid uploadType"),
    }
}

enum ChunkRange {
    Status(Option<u64>),
    Bytes {
        first: u64,
        last: u64,
        total: Option<u64>,
    },
}

fn parse_content_range(h: &str) -> Option<ChunkRange> {
    let spec = h.strip_prefix("bytes ")?;
    let (range, total) = spec.split_once('/')?;
    let total = if total == "*" {
        None
    } else {
        Some(total.parse().ok()?)
    };
    if range == "*" {
        return Some(ChunkRange::Status(total));
    }
    let (a, b) = range.split_once('-')?;
    Some(ChunkRange::Bytes {
        first: a.parse().ok()?,
        last: b.parse().ok()?,
        total,
    })
}

fn incomplete(received: usize) -> Resp {
    let mut r = respond(StatusCode::from_u16(308).unwrap(), "", "text/plain");
    // No Range header at all when nothing has been received yet.
    if received > 0 {
        r.headers_mut().insert(
            "range",
            HeaderValue::from_str(&format!("bytes=0-{}", received - 1)).unwrap(),
        );
    }
    r
}

fn handle_chunk(
    state: &Mutex<State>,
    headers: &hyper::HeaderMap,
    data: Bytes,
    q: HashMap<String, String>,
) -> Result<Resp, DropConnection> {
    let sid = q.get("upload_id").cloned().unwrap_or_default();
    let crange = header(headers, "content-range").map(str::to_owned);
    // Decide on a fault before reading the body.
    let drop_after = {
        let mut st = state.lock().unwrap();
        st.stats.api_calls += 1;
        match st.faults.front() {
            Some(Fault::DropUploadAfter(n))
                if crange
                    .as_deref()
                    .is_some_and(|c| !c.starts_with("bytes */")) =>
            {
                let n = *n;
                st.faults.pop_front();
                st.stats.faults_served += 1;
                Some(n)
            }
            Some(Fault::ExpireUploadSession)
                if crange
                    .as_deref()
                    .is_some_and(|c| !c.starts_with("bytes */")) =>
            {
                st.faults.pop_front();
                st.stats.faults_served += 1;
                for s in st.sessions.values_mut() {
                    s.expired = true;
                }
                None
            }
            Some(Fault::DropUploadAfter(_)) | Some(Fault::ExpireUploadSession) | None => None,
            Some(_) => {
                let f = st.faults.pop_front().unwrap();
                st.stats.faults_served += 1;
                return Ok(fault_response(&f));
            }
        }
    };
    if let Some(n) = drop_after {
        // The connection breaks after `n` bytes of the chunk reached the server: Drive
        // keeps them, and the client, which gets no reply, must ask before resuming.
        let got = &data[..n.min(data.len())];
        let mut st = state.lock().unwrap();
        if let (Some(s), Some(ChunkRange::Bytes { first, .. })) = (
            st.sessions.get_mut(&sid),
            crange.as_deref().and_then(parse_content_range),
        ) {
            if first as usize == s.data.len() {
                s.data.extend_from_slice(got);
            }
        }
        return Err(DropConnection);
    }
    let mut st = state.lock().unwrap();
    st.stats.chunk_puts += 1;
    let Some(sess) = st.sessions.get(&sid) else {
        return Ok(api_error(
            404,
            "global",
            "notFound",
            "Upload session not found.",
            None,
        ));
    };
    if sess.expired {
        st.sessions.remove(&sid);
        return Ok(api_error(
            404,
            "global",
            "notFound",
            "Upload session expired.",
            None,
        ));
    }
    let Some(range) = crange.as_deref().and_then(parse_content_range) else {
        return Ok(api_error(
            400,
            "global",
            "badRequest",
            "Missing or invalid Content-Range header.",
            None,
        ));
    };
    let received = sess.data.len();
    let total = match range {
        ChunkRange::Status(total) => {
            st.stats.status_queries += 1;
            if !data.is_empty() {
                return Ok(api_error(
                    400,
                    "global",
                    "badRequest",
                    "A status query must have an empty body.",
                    None,
                ));
            }
            if total.is_some_and(|t| t as usize == received) {
                return Ok(finish_session(&mut st, &sid));
            }
            return Ok(incomplete(received));
        }
        ChunkRange::Bytes { first, last, total } => {
            let len = (last + 1).saturating_sub(first) as usize;
            if last < first || len != data.len() {
                return Ok(api_error(
                    400,
                    "global",
                    "badRequest",
                    "Content-Range does not match the body length.",
                    None,
                ));
            }
            if first as usize != received {
                return Ok(api_error(
                    400,
                    "global",
                    "badRequest",
                    &format!("Invalid chunk offset {first}: the server has {received} bytes."),
                    None,
                ));
            }
            let is_last = total.is_some_and(|t| last + 1 == t);
            if total.is_some_and(|t| last + 1 > t) {
                return Ok(api_error(
                    400,
                    "global",
                    "badRequest",
                    "Chunk goes past the declared total.",
                    None,
                ));
            }
            if let (Some(t), Some(declared)) = (total, sess.total) {
                if t != declared {
                    return Ok(api_error(
                        400,
                        "global",
                        "badRequest",
                        "Total size differs from X-Upload-Content-Length.",
                        None,
                    ));
                }
            }
            if !is_last && len % CHUNK_ALIGN != 0 {
                return Ok(api_error(
                    400,
                    "global",
                    "badRequest",
                    "Invalid request. The number of bytes uploaded is required to be a multiple of 262144 bytes except for the final request.",
                    None,
                ));
            }
            total
        }
    };
    let sess = st.sessions.get_mut(&sid).unwrap();
    sess.data.extend_from_slice(&data);
    if total.is_some_and(|t| t as usize == sess.data.len()) {
        return Ok(finish_session(&mut st, &sid));
    }
    let n = sess.data.len();
    Ok(incomplete(n))
}

fn finish_session(st: &mut State, sid: &str) -> Resp {
    let s = st.sessions.remove(sid).unwrap();
    // The session URI is the capability: its parameters were checked when it was opened.
    st.all_drives = true;
    let fields = s.fields.clone();
    let r = match s.file_id {
        None => create_file(st, &s.metadata, Some(s.data), fields.as_deref()),
        Some(id) => {
            let mut q = HashMap::new();
            if let Some(f) = fields {
                q.insert("fields".to_owned(), f);
            }
            if !st.files.contains_key(&id) {
                return not_found(&id);
            }
            patch_file(st, &id, &s.metadata, &q, Some(s.data))
        }
    };
    r
}

// ----- revisions

fn revision_json(r: &Revision) -> Value {
    json!({
        "kind": "drive#revision",
        "id": r.id,
        "mimeType": "application/octet-stream",
        "modifiedTime": rfc3339(r.modified),
        "keepForever": false,
        "md5Checksum": md5_hex(&r.content),
        "size": r.content.len().to_string(),
    })
}

fn revisions_list(st: &mut State, id: &str, q: &HashMap<String, String>) -> Resp {
    let id = st.resolve_id(id).to_owned();
    let Some(f) = st.files.get(&id) else {
        return not_found(&id);
    };
    let size = match page_size(q, 200) {
        Ok(n) => n.min(st.cfg.max_page_size),
        Err(r) => return r,
    };
    let offset = match q.get("pageToken") {
        None => 0,
        Some(t) => match t.strip_prefix("RT").and_then(|n| n.parse::<usize>().ok()) {
            Some(n) => n,
            None => return invalid_param("pageToken", "Invalid Value"),
        },
    };
    let page: Vec<Value> = f
        .revisions
        .iter()
        .skip(offset)
        .take(size)
        .map(revision_json)
        .collect();
    let next = offset + page.len();
    let mut v = json!({"kind": "drive#revisionList", "revisions": page});
    if next < f.revisions.len() {
        v["nextPageToken"] = json!(format!("RT{next}"));
    }
    with_fields(
        v,
        q.get("fields").map(String::as_str),
        "kind,nextPageToken,revisions(kind,id,mimeType,modifiedTime)",
        "revisionList",
    )
}

fn revisions_get(
    st: &mut State,
    id: &str,
    rev: &str,
    q: &HashMap<String, String>,
    headers: &hyper::HeaderMap,
) -> Resp {
    let id = st.resolve_id(id).to_owned();
    let Some(f) = st.files.get(&id) else {
        return not_found(&id);
    };
    let Some(r) = f.revisions.iter().find(|r| r.id == rev) else {
        return api_error(
            404,
            "global",
            "notFound",
            &format!("Revision not found: {rev}."),
            Some(("parameter", "revisionId")),
        );
    };
    match q.get("alt").map(String::as_str) {
        Some("media") => media(&r.content, headers),
        _ => with_fields(
            revision_json(r),
            q.get("fields").map(String::as_str),
            "kind,id,mimeType,modifiedTime",
            "revision",
        ),
    }
}

// ----- changes / about

fn changes_list(st: &mut State, q: &HashMap<String, String>) -> Resp {
    let Some(tok) = q.get("pageToken") else {
        return api_error(
            400,
            "global",
            "required",
            "Required parameter: pageToken",
            Some(("parameter", "pageToken")),
        );
    };
    let Ok(start) = tok.parse::<u64>() else {
        return invalid_param("pageToken", "Invalid Value");
    };
    let size = match page_size(q, 100) {
        Ok(n) => n.min(st.cfg.max_page_size),
        Err(r) => return r,
    };
    let include_removed = q.get("includeRemoved").is_none_or(|v| v == "true");
    // Shared-drive items only with both flags (each defaults to false).
    let all_drives = st.all_drives
        && q.get("includeItemsFromAllDrives")
            .is_some_and(|v| v == "true");
    let pending: Vec<(u64, String)> = st
        .changes
        .iter()
        .filter(|(n, _)| *n >= start)
        .cloned()
        .collect();
    let page: Vec<(u64, String)> = pending.iter().take(size).cloned().collect();
    let mut out = Vec::new();
    let mut seen = std::collections::HashSet::new();
    // Latest state per file, at the position of its last change in the page.
    for (n, id) in page.iter().rev() {
        if !seen.insert(id.clone()) {
            continue;
        }
        let time = rfc3339(SystemTime::now());
        let _ = n;
        let file = st.files.get(id);
        if file.is_some_and(|f| f.drive_id.is_some()) && !all_drives {
            continue;
        }
        match file {
            Some(f) => out.push(json!({"kind": "drive#change", "changeType": "file", "time": time, "removed": false, "fileId": id, "file": file_json(f)})),
            None if include_removed => out.push(json!({"kind": "drive#change", "changeType": "file", "time": time, "removed": true, "fileId": id})),
            None => {}
        }
    }
    out.reverse();
    let mut v = json!({"kind": "drive#changeList", "changes": out});
    if pending.len() > page.len() {
        v["nextPageToken"] = json!((page.last().unwrap().0 + 1).to_string());
    } else {
        v["newStartPageToken"] = json!((st.next_change + 1).to_string());
    }
    with_fields(
        v,
        q.get("fields").map(String::as_str),
        "kind,nextPageToken,newStartPageToken,changes(kind,changeType,time,removed,fileId,file(kind,id,name,mimeType))",
        "changeList",
    )
}

// ----- drives.list

fn drives_list(st: &mut State, q: &HashMap<String, String>) -> Resp {
    // drives.list: "Acceptable values are 1 to 100, inclusive. (Default: 10)".
    let size = match q.get("pageSize") {
        None => 10,
        Some(s) => match s.parse::<i64>() {
            Ok(n) if (1..=100).contains(&n) => n as usize,
            _ => {
                return invalid_param(
                    "pageSize",
                    &format!("Invalid value '{s}'. Values must be within the range: [1, 100]"),
                )
            }
        },
    };
    let size = size.min(st.cfg.max_page_size);
    let offset = match q.get("pageToken") {
        None => 0,
        Some(t) => match t.strip_prefix("DT").and_then(|n| n.parse::<usize>().ok()) {
            Some(n) => n,
            None => return invalid_param("pageToken", "Invalid Value"),
        },
    };
    let page: Vec<Value> = st
        .drives
        .iter()
        .skip(offset)
        .take(size)
        .map(|(id, name)| json!({"kind": "drive#drive", "id": id, "name": name, "hidden": false}))
        .collect();
    let next = offset + page.len();
    let mut v = json!({"kind": "drive#driveList", "drives": page});
    if next < st.drives.len() {
        v["nextPageToken"] = json!(format!("DT{next}"));
    }
    with_fields(
        v,
        q.get("fields").map(String::as_str),
        "kind,nextPageToken,drives(kind,id,name)",
        "driveList",
    )
}

fn about(st: &mut State, q: &HashMap<String, String>) -> Resp {
    let Some(fields) = q.get("fields") else {
        return api_error(
            400,
            "global",
            "required",
            "The 'fields' parameter is required for this operation.",
            Some(("parameter", "fields")),
        );
    };
    let (drive, trash) = st.usage();
    let mut quota = json!({
        "usage": (drive + trash).to_string(),
        "usageInDrive": drive.to_string(),
        "usageInDriveTrash": trash.to_string(),
    });
    if let Some(l) = st.cfg.storage_limit {
        quota["limit"] = json!(l.to_string());
    }
    let v = json!({
        "kind": "drive#about",
        "storageQuota": quota,
        "user": {"kind": "drive#user", "displayName": "Test User", "emailAddress": "test@example.com"},
        "maxUploadSize": "5242880000000",
    });
    with_fields(v, Some(fields), "", "about")
}
