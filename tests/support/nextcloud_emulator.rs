//! A small, strict emulation of the parts of Nextcloud's WebDAV API that the provider uses
//! beyond RFC 4918, written from Nextcloud's developer documentation (client_apis/WebDAV
//! basic.rst and chunking.rst):
//!
//! - files under `/remote.php/dav/files/USER/` with `oc:fileid`, `oc:checksums`, `oc:size`
//!   and RFC 4331 quota properties (`-3` = unlimited);
//! - chunked upload v2: `MKCOL /remote.php/dav/uploads/USER/ID` with `Destination`, chunks
//!   `PUT .../ID/N` with N in 1..=10000, each 5 MiB..5 GiB except the last, assembled in
//!   name order by `MOVE .../ID/.file` to `Destination`, with `OC-Total-Length` checked
//!   against the quota (507);
//! - HTTP Basic authentication.
//!
//! Anything the documentation calls an error is answered with the documented status, and
//! a request body sent with chunked transfer encoding is refused (411), so that clients
//! are held to sending `Content-Length`.
//!
//! Faults are injected on demand (`inject`): the next requests can be answered 503 (with or
//! without `Retry-After`) without being processed, or processed with their reply cut off,
//! as when a connection drops after the server acted.
//!
//! Serving, the request log and the fault queue are the emulator kit's (`tests/support/emu`);
//! this file holds only Nextcloud's semantics.

#![allow(dead_code)]

use std::collections::{BTreeMap, HashMap};
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::UNIX_EPOCH;

use crate::emu::faults::FaultQueue;
use crate::emu::range::{self, Wanted};
pub use crate::emu::server::LoggedRequest;
use crate::emu::server::{Reply, Request, Response, Server};

const MIN_CHUNK: u64 = 5 * 1024 * 1024;
const MAX_CHUNK: u64 = 5 * 1024 * 1024 * 1024;

/// A fault served instead of (or on top of) the normal reply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Fault {
    /// The next request is answered 503 without being processed.
    Unavailable { retry_after: Option<u64> },
    /// The next request with this method is processed, then the connection is closed
    /// without a reply.
    CutReply { method: &'static str },
}

struct Upload {
    destination: String,
    /// Chunk name → size, as stored.
    chunks: BTreeMap<String, u64>,
}

struct State {
    files_root: PathBuf,
    uploads_root: PathBuf,
    user: String,
    password: String,
    /// Bytes the user may still use; `None` = unlimited (reported as -3).
    quota_total: Option<u64>,
    file_ids: HashMap<String, u64>,
    next_id: u64,
    /// What a client declared with `OC-Checksum`, or what a test seeded.
    checksums: HashMap<String, String>,
    uploads: HashMap<String, Upload>,
    /// RFC 6578: what the tree looked like (path -> ETag) when each sync token was issued.
    sync_snapshots: Vec<HashMap<String, String>>,
    /// Answer sync-collection REPORTs (Nextcloud does on its DAV endpoints).
    sync_collection: bool,
}

pub struct NextcloudEmulator {
    /// `http://127.0.0.1:PORT/remote.php/dav/files/USER/`
    pub files_url: String,
    pub base: String,
    state: Arc<Mutex<State>>,
    /// Served in order; see `Fault`.
    faults: Arc<FaultQueue<Fault>>,
    server: Server,
    _dir: tempfile::TempDir,
}

impl NextcloudEmulator {
    pub fn start(user: &str, password: &str, quota_total: Option<u64>) -> NextcloudEmulator {
        let dir = tempfile::tempdir().expect("tempdir");
        let files_root = dir.path().join("files");
        let uploads_root = dir.path().join("uploads");
        fs::create_dir_all(&files_root).unwrap();
        fs::create_dir_all(&uploads_root).unwrap();
        let state = Arc::new(Mutex::new(State {
            files_root,
            uploads_root,
            user: user.to_owned(),
            password: password.to_owned(),
            quota_total,
            file_ids: HashMap::new(),
            next_id: 100,
            checksums: HashMap::new(),
            uploads: HashMap::new(),
            sync_snapshots: Vec::new(),
            sync_collection: true,
        }));
        let faults: Arc<FaultQueue<Fault>> = Arc::default();
        let (st, f) = (state.clone(), faults.clone());
        let server = Server::start(move |req| handle(&st, &f, req));
        let base = server.base.clone();
        NextcloudEmulator {
            files_url: format!("{base}/remote.php/dav/files/{}/", encode(user)),
            base,
            state,
            faults,
            server,
            _dir: dir,
        }
    }

    /// Where the user's files live on disk.
    pub fn files_root(&self) -> PathBuf {
        self.state.lock().unwrap().files_root.clone()
    }

    /// Puts a file in the user's storage, with the checksum a client would have declared.
    pub fn seed(&self, rel: &str, data: &[u8], checksum: Option<&str>) {
        let mut st = self.state.lock().unwrap();
        let path = st.files_root.join(rel.trim_start_matches('/'));
        fs::create_dir_all(path.parent().unwrap()).unwrap();
        fs::write(&path, data).unwrap();
        let key = format!("/{}", rel.trim_start_matches('/'));
        if let Some(c) = checksum {
            st.checksums.insert(key, c.to_owned());
        }
    }

    /// Behave like a server without RFC 6578 (REPORT answered 501).
    pub fn disable_sync_collection(&self) {
        self.state.lock().unwrap().sync_collection = false;
    }

    pub fn requests(&self) -> Vec<LoggedRequest> {
        self.server.requests()
    }

    /// Serves `fault` `times` times, after any faults injected before.
    pub fn inject(&self, fault: Fault, times: usize) {
        self.faults.inject(fault, times);
    }

    pub fn pending_faults(&self) -> usize {
        self.faults.pending()
    }

    pub fn faults_served(&self) -> usize {
        self.faults.served()
    }

    /// Upload folders not yet assembled or deleted.
    pub fn pending_uploads(&self) -> usize {
        let st = self.state.lock().unwrap();
        fs::read_dir(&st.uploads_root)
            .map(|d| d.count())
            .unwrap_or(0)
    }
}

fn resp(status: u16, body: impl Into<Vec<u8>>) -> Response {
    Response::new(status, body)
}

fn sabre_error(status: u16, exception: &str, message: &str) -> Response {
    let body = format!(
        "<?xml version=\"1.0\" encoding=\"utf-8\"?>\n<d:error xmlns:d=\"DAV:\" \
         xmlns:s=\"http://sabredav.org/ns\"><s:exception>Sabre\\DAV\\Exception\\{exception}\
         </s:exception><s:message>{}</s:message></d:error>",
        xml_escape(message)
    );
    let mut r = resp(status, body);
    r.headers.push((
        "Content-Type".into(),
        "application/xml; charset=utf-8".into(),
    ));
    r
}

/// One request: a transfer-encoded body is refused, then an injected fault or the route.
fn handle(state: &Mutex<State>, faults: &FaultQueue<Fault>, req: &Request) -> Reply {
    if req.header("transfer-encoding").is_some() {
        return resp(411, "Length Required").into();
    }
    let mut st = state.lock().unwrap();
    let fault = faults.take(|f| match f {
        Fault::Unavailable { .. } => true,
        Fault::CutReply { method } => *method == req.method,
    });
    match fault {
        Some(Fault::Unavailable { retry_after }) => {
            let mut r = sabre_error(503, "ServiceUnavailable", "System in maintenance mode.");
            if let Some(secs) = retry_after {
                r.headers.push(("Retry-After".into(), secs.to_string()));
            }
            r.into()
        }
        Some(Fault::CutReply { .. }) => {
            route(&mut st, req, req.body.to_vec());
            // Dropping the connection is all the client sees.
            Reply::Drop
        }
        None => route(&mut st, req, req.body.to_vec()).into(),
    }
}

fn authorized(st: &State, req: &Request) -> bool {
    let want = format!("{}:{}", st.user, st.password);
    req.header("authorization")
        .and_then(|v| v.strip_prefix("Basic "))
        .and_then(base64_decode)
        .is_some_and(|got| got == want.as_bytes())
}

fn route(st: &mut State, req: &Request, body: Vec<u8>) -> Response {
    if !authorized(st, req) {
        let mut r = sabre_error(
            401,
            "NotAuthenticated",
            "No public access to this resource.",
        );
        r.headers.push((
            "WWW-Authenticate".into(),
            "Basic realm=\"Nextcloud\"".into(),
        ));
        return r;
    }
    let Some(segments) = decode_path(&req.path) else {
        return resp(400, "bad path");
    };
    let user = st.user.clone();
    match segments
        .iter()
        .map(String::as_str)
        .collect::<Vec<_>>()
        .as_slice()
    {
        ["remote.php", "dav", "files", u, rest @ ..] if *u == user => {
            let rel = format!("/{}", rest.join("/"));
            files_request(st, req, &rel, body)
        }
        ["remote.php", "dav", "uploads", u, rest @ ..] if *u == user => {
            let rest: Vec<String> = rest.iter().map(|s| s.to_string()).collect();
            uploads_request(st, req, &rest, body)
        }
        _ => sabre_error(404, "NotFound", "Principal not found"),
    }
}

/// The remote path a `Destination` header designates in this user's files.
fn destination_rel(st: &State, req: &Request) -> Result<String, Response> {
    let dest = req
        .header("destination")
        .ok_or_else(|| sabre_error(400, "BadRequest", "Destination header is missing"))?;
    let path = dest
        .find("://")
        .map(|i| &dest[i + 3..])
        .map(|rest| rest.find('/').map_or("/", |j| &rest[j..]))
        .unwrap_or(dest);
    let segs = decode_path(path).ok_or_else(|| resp(400, "bad destination"))?;
    match segs
        .iter()
        .map(String::as_str)
        .collect::<Vec<_>>()
        .as_slice()
    {
        ["remote.php", "dav", "files", u, rest @ ..] if *u == st.user => {
            Ok(format!("/{}", rest.join("/")))
        }
        _ => Err(sabre_error(
            400,
            "BadRequest",
            "Destination is not in the user's files",
        )),
    }
}

fn disk(st: &State, rel: &str) -> PathBuf {
    st.files_root.join(rel.trim_start_matches('/'))
}

fn used_bytes(dir: &Path) -> u64 {
    fs::read_dir(dir)
        .map(|d| {
            d.flatten()
                .map(|e| match e.metadata() {
                    Ok(m) if m.is_dir() => used_bytes(&e.path()),
                    Ok(m) => m.len(),
                    Err(_) => 0,
                })
                .sum()
        })
        .unwrap_or(0)
}

fn file_id(st: &mut State, rel: &str) -> u64 {
    if let Some(id) = st.file_ids.get(rel) {
        return *id;
    }
    st.next_id += 1;
    let id = st.next_id;
    st.file_ids.insert(rel.to_owned(), id);
    id
}

fn files_request(st: &mut State, req: &Request, rel: &str, body: Vec<u8>) -> Response {
    let path = disk(st, rel);
    match req.method.as_str() {
        "PROPFIND" => propfind(st, req, rel),
        "GET" => {
            let Ok(data) = fs::read(&path) else {
                return sabre_error(404, "NotFound", &format!("File {rel} not found"));
            };
            let mut r = match range::wanted(req.header("range"), data.len()) {
                Wanted::Unsatisfiable => {
                    resp(416, "").header("Content-Range", format!("bytes */{}", data.len()))
                }
                Wanted::Part { start, end } => resp(206, data[start..=end].to_vec()).header(
                    "Content-Range",
                    format!("bytes {start}-{end}/{}", data.len()),
                ),
                Wanted::Whole => resp(200, data),
            };
            r.headers.push(("ETag".into(), etag(&path)));
            r
        }
        "PUT" => {
            if path.is_dir() {
                return sabre_error(409, "Conflict", "A folder exists with this name");
            }
            if !path.parent().is_some_and(Path::is_dir) {
                return sabre_error(409, "Conflict", "Parent folder does not exist");
            }
            let avail = st
                .quota_total
                .map(|t| t.saturating_sub(used_bytes(&st.files_root)));
            if avail.is_some_and(|a| body.len() as u64 > a) {
                return sabre_error(507, "InsufficientStorage", "Insufficient space");
            }
            let existed = path.exists();
            fs::write(&path, &body).unwrap();
            if let Some(c) = req.header("oc-checksum") {
                st.checksums.insert(rel.to_owned(), c.to_owned());
            }
            let id = file_id(st, rel);
            let mut r = resp(if existed { 204 } else { 201 }, "");
            r.headers.push(("OC-Etag".into(), etag(&path)));
            r.headers
                .push(("OC-FileId".into(), format!("{id:08}ocemulator")));
            r
        }
        "MKCOL" => {
            if path.exists() {
                return sabre_error(
                    405,
                    "MethodNotAllowed",
                    "The resource you tried to create already exists",
                );
            }
            if !path.parent().is_some_and(Path::is_dir) {
                return sabre_error(409, "Conflict", "Parent node does not exist");
            }
            fs::create_dir(&path).unwrap();
            resp(201, "")
        }
        "DELETE" => {
            if path.is_dir() {
                fs::remove_dir_all(&path).unwrap();
            } else if path.exists() {
                fs::remove_file(&path).unwrap();
            } else {
                return sabre_error(404, "NotFound", &format!("File {rel} not found"));
            }
            resp(204, "")
        }
        "MOVE" => move_file(st, req, rel),
        "COPY" => copy_file(st, req, rel),
        "REPORT" if st.sync_collection => sync_collection(st, req, rel, &body),
        _ => sabre_error(501, "NotImplemented", "not emulated"),
    }
}

/// RFC 4918 MOVE within the user's files: 201 for a new name, 204 when replacing,
/// 412 with `Overwrite: F` onto an existing name, 409 without the destination's folder.
fn move_file(st: &mut State, req: &Request, rel: &str) -> Response {
    let from = disk(st, rel);
    if !from.exists() {
        return sabre_error(404, "NotFound", &format!("File {rel} not found"));
    }
    let to_rel = match destination_rel(st, req) {
        Ok(r) => r,
        Err(r) => return r,
    };
    let to = disk(st, &to_rel);
    if !to.parent().is_some_and(Path::is_dir) {
        return sabre_error(409, "Conflict", "Destination parent does not exist");
    }
    let existed = to.exists();
    if existed {
        if req
            .header("overwrite")
            .is_some_and(|v| v.eq_ignore_ascii_case("F"))
        {
            return sabre_error(412, "PreconditionFailed", "Destination exists");
        }
        if to.is_dir() {
            fs::remove_dir_all(&to).unwrap();
        } else {
            fs::remove_file(&to).unwrap();
        }
    }
    fs::rename(&from, &to).unwrap();
    if let Some(id) = st.file_ids.remove(rel) {
        st.file_ids.insert(to_rel, id);
    }
    resp(if existed { 204 } else { 201 }, "")
}

/// RFC 4918 COPY within the user's files (Nextcloud's Sabre server has it): the same
/// statuses as MOVE; a folder is copied with everything below it (Depth: infinity). The
/// copy gets new file ids, as on Nextcloud.
fn copy_file(st: &mut State, req: &Request, rel: &str) -> Response {
    fn copy_tree(from: &Path, to: &Path) {
        if from.is_dir() {
            fs::create_dir(to).unwrap();
            for e in fs::read_dir(from).unwrap().flatten() {
                copy_tree(&e.path(), &to.join(e.file_name()));
            }
        } else {
            fs::copy(from, to).unwrap();
        }
    }
    let from = disk(st, rel);
    if !from.exists() {
        return sabre_error(404, "NotFound", &format!("File {rel} not found"));
    }
    let to_rel = match destination_rel(st, req) {
        Ok(r) => r,
        Err(r) => return r,
    };
    let to = disk(st, &to_rel);
    if !to.parent().is_some_and(Path::is_dir) {
        return sabre_error(409, "Conflict", "Destination parent does not exist");
    }
    let existed = to.exists();
    if existed {
        if req
            .header("overwrite")
            .is_some_and(|v| v.eq_ignore_ascii_case("F"))
        {
            return sabre_error(412, "PreconditionFailed", "Destination exists");
        }
        if to.is_dir() {
            fs::remove_dir_all(&to).unwrap();
        } else {
            fs::remove_file(&to).unwrap();
        }
        st.file_ids.remove(&to_rel);
    }
    copy_tree(&from, &to);
    resp(if existed { 204 } else { 201 }, "")
}

const SYNC_TOKEN_PREFIX: &str = "http://sabre.io/ns/sync/";

/// Every path below `rel` with its ETag.
fn tree_etags(st: &State, rel: &str) -> HashMap<String, String> {
    fn walk(root: &Path, dir: &Path, out: &mut HashMap<String, String>) {
        for e in fs::read_dir(dir).unwrap().flatten() {
            let p = e.path();
            let rel = format!("/{}", p.strip_prefix(root).unwrap().to_string_lossy());
            out.insert(rel, etag(&p));
            if p.is_dir() {
                walk(root, &p, out);
            }
        }
    }
    let mut out = HashMap::new();
    let root = st.files_root.clone();
    let start = disk(st, rel);
    if start.is_dir() {
        walk(&root, &start, &mut out);
    }
    out
}

/// RFC 6578 sync-collection on a folder: with an empty token every member, else the
/// members changed (200) or removed (404) since the token; always a new token. Depth must
/// be 0 and sync-level 1 or infinite, as the RFC requires; an unknown token is refused
/// with the DAV:valid-sync-token precondition.
fn sync_collection(st: &mut State, req: &Request, rel: &str, body: &[u8]) -> Response {
    let text = String::from_utf8_lossy(body);
    if !text.contains("sync-collection") {
        return sabre_error(
            415,
            "UnsupportedMediaType",
            "only sync-collection is supported",
        );
    }
    if req.header("depth").is_some_and(|d| d != "0") {
        return sabre_error(400, "BadRequest", "sync-collection requires Depth: 0");
    }
    if !text.contains("infinite") && !text.contains(">1<") {
        return sabre_error(400, "BadRequest", "missing or invalid sync-level");
    }
    let token = text
        .split_once("sync-token>")
        .and_then(|(_, rest)| rest.split_once('<').map(|(t, _)| t.trim().to_owned()))
        .unwrap_or_default();
    let now = tree_etags(st, rel);
    let before = if token.is_empty() {
        HashMap::new()
    } else {
        let n = token
            .strip_prefix(SYNC_TOKEN_PREFIX)
            .and_then(|n| n.parse::<usize>().ok())
            .filter(|n| *n < st.sync_snapshots.len());
        match n {
            Some(n) => st.sync_snapshots[n].clone(),
            None => {
                return resp(
                    403,
                    r#"<?xml version="1.0" encoding="utf-8"?><d:error xmlns:d="DAV:"><d:valid-sync-token/></d:error>"#,
                )
            }
        }
    };
    let href_of = |st: &State, p: &str| {
        let mut h = format!("/remote.php/dav/files/{}", encode(&st.user));
        for seg in p.split('/').filter(|s| !s.is_empty()) {
            h.push('/');
            h.push_str(&encode(seg));
        }
        if disk(st, p).is_dir() {
            h.push('/');
        }
        h
    };
    let mut xml =
        String::from(r#"<?xml version="1.0" encoding="utf-8"?><d:multistatus xmlns:d="DAV:">"#);
    let mut changed: Vec<&String> = now
        .iter()
        .filter(|(p, e)| before.get(*p) != Some(*e))
        .map(|(p, _)| p)
        .collect();
    changed.sort();
    for p in changed {
        xml.push_str(&format!(
            "<d:response><d:href>{}</d:href><d:propstat><d:prop><d:getetag>{}</d:getetag></d:prop><d:status>HTTP/1.1 200 OK</d:status></d:propstat></d:response>",
            href_of(st, p),
            now[p]
        ));
    }
    let mut removed: Vec<&String> = before.keys().filter(|p| !now.contains_key(*p)).collect();
    removed.sort();
    for p in removed {
        xml.push_str(&format!(
            "<d:response><d:href>{}</d:href><d:status>HTTP/1.1 404 Not Found</d:status></d:response>",
            href_of(st, p)
        ));
    }
    st.sync_snapshots.push(now);
    xml.push_str(&format!(
        "<d:sync-token>{SYNC_TOKEN_PREFIX}{}</d:sync-token></d:multistatus>",
        st.sync_snapshots.len() - 1
    ));
    resp(207, xml)
}

/// Like Nextcloud, a folder's ETag changes whenever anything below it changes: it is
/// derived from the newest modification time, entry count and total size of its subtree.
fn etag(path: &Path) -> String {
    fn walk(p: &Path, acc: &mut (u128, u64, u64)) {
        let m = fs::metadata(p).unwrap();
        let nanos = m
            .modified()
            .unwrap()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_nanos();
        acc.0 = acc.0.max(nanos);
        acc.1 += 1;
        if m.is_dir() {
            for e in fs::read_dir(p).unwrap().flatten() {
                walk(&e.path(), acc);
            }
        } else {
            acc.2 += m.len();
        }
    }
    let mut acc = (0u128, 0u64, 0u64);
    walk(path, &mut acc);
    format!("\"{:x}{:x}{:x}\"", acc.0, acc.1, acc.2)
}

fn propfind(st: &mut State, req: &Request, rel: &str) -> Response {
    let path = disk(st, rel);
    if !path.exists() {
        return sabre_error(
            404,
            "NotFound",
            &format!("File with name {rel} could not be located"),
        );
    }
    let depth = req.header("depth").unwrap_or("1");
    if depth == "infinity" {
        return sabre_error(403, "Forbidden", "Depth infinity is disabled");
    }
    let mut items = vec![rel.to_owned()];
    if depth == "1" && path.is_dir() {
        let mut names: Vec<String> = fs::read_dir(&path)
            .unwrap()
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        for n in names {
            items.push(if rel == "/" {
                format!("/{n}")
            } else {
                format!("{rel}/{n}")
            });
        }
    }
    let mut xml = String::from(
        "<?xml version=\"1.0\"?>\n<d:multistatus xmlns:d=\"DAV:\" xmlns:s=\"http://sabredav.org/ns\" \
         xmlns:oc=\"http://owncloud.org/ns\" xmlns:nc=\"http://nextcloud.org/ns\">",
    );
    let used = used_bytes(&st.files_root);
    for item in items {
        let p = disk(st, &item);
        let meta = fs::metadata(&p).unwrap();
        let id = file_id(st, &item);
        let mut href = format!("/remote.php/dav/files/{}", encode(&st.user));
        for seg in item.split('/').filter(|s| !s.is_empty()) {
            href.push('/');
            href.push_str(&encode(seg));
        }
        if meta.is_dir() {
            href.push('/');
        }
        let mtime = meta.modified().unwrap();
        let mut ok = format!(
            "<d:getlastmodified>{}</d:getlastmodified><d:getetag>{}</d:getetag><oc:fileid>{id}</oc:fileid>",
            http_date(mtime),
            etag(&p)
        );
        let mut missing = String::new();
        if meta.is_dir() {
            ok.push_str("<d:resourcetype><d:collection/></d:resourcetype>");
            ok.push_str(&format!("<oc:size>{}</oc:size>", used_bytes(&p)));
            missing.push_str("<d:getcontentlength/><oc:checksums/>");
            let avail = st.quota_total.map_or(-3, |t| t.saturating_sub(used) as i64);
            ok.push_str(&format!(
                "<d:quota-used-bytes>{used}</d:quota-used-bytes>\
                 <d:quota-available-bytes>{avail}</d:quota-available-bytes>"
            ));
        } else {
            ok.push_str(&format!(
                "<d:resourcetype/><d:getcontentlength>{0}</d:getcontentlength><oc:size>{0}</oc:size>\
                 <d:getcontenttype>application/octet-stream</d:getcontenttype>",
                meta.len()
            ));
            match st.checksums.get(&item) {
                Some(c) => ok.push_str(&format!(
                    "<oc:checksums><oc:checksum>{}</oc:checksum></oc:checksums>",
                    xml_escape(c)
                )),
                None => missing.push_str("<oc:checksums/>"),
            }
            missing.push_str("<d:quota-used-bytes/><d:quota-available-bytes/>");
        }
        xml.push_str(&format!(
            "<d:response><d:href>{href}</d:href><d:propstat><d:prop>{ok}</d:prop>\
             <d:status>HTTP/1.1 200 OK</d:status></d:propstat><d:propstat><d:prop>{missing}\
             </d:prop><d:status>HTTP/1.1 404 Not Found</d:status></d:propstat></d:response>"
        ));
    }
    xml.push_str("</d:multistatus>");
    let mut r = resp(207, xml);
    r.headers.push((
        "Content-Type".into(),
        "application/xml; charset=utf-8".into(),
    ));
    r
}

fn uploads_request(st: &mut State, req: &Request, rest: &[String], body: Vec<u8>) -> Response {
    let dest = match destination_rel(st, req) {
        Ok(d) => d,
        Err(r) if req.method != "DELETE" => return r,
        Err(_) => String::new(),
    };
    match (req.method.as_str(), rest) {
        ("MKCOL", [id]) => {
            if st.uploads.contains_key(id) {
                return sabre_error(405, "MethodNotAllowed", "Upload folder exists");
            }
            fs::create_dir(st.uploads_root.join(id)).unwrap();
            st.uploads.insert(
                id.clone(),
                Upload {
                    destination: dest,
                    chunks: BTreeMap::new(),
                },
            );
            resp(201, "")
        }
        ("PUT", [id, chunk]) => {
            let Some(upload) = st.uploads.get(id) else {
                return sabre_error(404, "NotFound", "Upload folder not found");
            };
            if upload.destination != dest {
                return sabre_error(400, "BadRequest", "Destination differs from the MKCOL's");
            }
            let number_ok = !chunk.is_empty()
                && chunk.bytes().all(|b| b.is_ascii_digit())
                && chunk
                    .parse::<u32>()
                    .is_ok_and(|n| (1..=10_000).contains(&n));
            if !number_ok {
                return sabre_error(400, "BadRequest", "Chunk name must be a number in 1..10000");
            }
            if req.header("content-length").is_none() {
                return resp(411, "Length Required");
            }
            let len = body.len() as u64;
            if len > MAX_CHUNK {
                return sabre_error(400, "BadRequest", "Chunk larger than 5 GiB");
            }
            if let Some(total) = req
                .header("oc-total-length")
                .and_then(|v| v.parse::<u64>().ok())
            {
                let avail = st
                    .quota_total
                    .map(|t| t.saturating_sub(used_bytes(&st.files_root)));
                if avail.is_some_and(|a| total > a) {
                    return sabre_error(507, "InsufficientStorage", "Insufficient space");
                }
            }
            fs::write(st.uploads_root.join(id).join(chunk), &body).unwrap();
            st.uploads
                .get_mut(id)
                .unwrap()
                .chunks
                .insert(chunk.clone(), len);
            resp(201, "")
        }
        ("GET", [_, _]) => sabre_error(403, "Forbidden", "Chunks cannot be downloaded"),
        ("MOVE", [id, dotfile]) if dotfile == ".file" => {
            let Some(upload) = st.uploads.get(id) else {
                return sabre_error(404, "NotFound", "Upload folder not found");
            };
            if upload.destination != dest {
                return sabre_error(400, "BadRequest", "Destination differs from the MKCOL's");
            }
            // Name order, as the documentation specifies.
            let sizes: Vec<(&String, &u64)> = upload.chunks.iter().collect();
            if sizes.is_empty() {
                return sabre_error(400, "BadRequest", "No chunks uploaded");
            }
            for (name, size) in &sizes[..sizes.len() - 1] {
                if **size < MIN_CHUNK {
                    return sabre_error(
                        400,
                        "BadRequest",
                        &format!("Chunk {name} is smaller than 5 MiB and not the last one"),
                    );
                }
            }
            let total: u64 = sizes.iter().map(|(_, s)| **s).sum();
            if let Some(declared) = req
                .header("oc-total-length")
                .and_then(|v| v.parse::<u64>().ok())
            {
                if declared != total {
                    return sabre_error(
                        400,
                        "BadRequest",
                        "OC-Total-Length does not match the chunks",
                    );
                }
            }
            let target = disk(st, &dest);
            if target.is_dir() {
                return sabre_error(409, "Conflict", "A folder exists at the destination");
            }
            if !target.parent().is_some_and(Path::is_dir) {
                return sabre_error(409, "Conflict", "Destination folder does not exist");
            }
            let mut assembled = Vec::with_capacity(total as usize);
            for (name, _) in &sizes {
                assembled.extend(fs::read(st.uploads_root.join(id).join(name)).unwrap());
            }
            let existed = target.exists();
            fs::write(&target, assembled).unwrap();
            fs::remove_dir_all(st.uploads_root.join(id)).unwrap();
            st.uploads.remove(id);
            let fid = file_id(st, &dest);
            let mut r = resp(if existed { 204 } else { 201 }, "");
            r.headers.push(("OC-Etag".into(), etag(&target)));
            r.headers
                .push(("OC-FileId".into(), format!("{fid:08}ocemulator")));
            r
        }
        ("DELETE", [id]) => {
            if st.uploads.remove(id).is_none() {
                return sabre_error(404, "NotFound", "Upload folder not found");
            }
            fs::remove_dir_all(st.uploads_root.join(id)).unwrap();
            resp(204, "")
        }
        _ => sabre_error(
            400,
            "BadRequest",
            "Unexpected request in the uploads folder",
        ),
    }
}

fn encode(seg: &str) -> String {
    let mut out = String::new();
    for b in seg.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

fn decode_path(path: &str) -> Option<Vec<String>> {
    path.split('/')
        .filter(|s| !s.is_empty())
        .map(|seg| {
            let bytes = seg.as_bytes();
            let mut out = Vec::with_capacity(bytes.len());
            let mut i = 0;
            while i < bytes.len() {
                if bytes[i] == b'%' && i + 2 < bytes.len() {
                    let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).ok()?;
                    out.push(u8::from_str_radix(hex, 16).ok()?);
                    i += 3;
                } else {
                    out.push(bytes[i]);
                    i += 1;
                }
            }
            String::from_utf8(out).ok()
        })
        .collect()
}

fn xml_escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

fn http_date(t: std::time::SystemTime) -> String {
    let secs = t.duration_since(UNIX_EPOCH).unwrap().as_secs() as i64;
    let days = secs.div_euclid(86_400);
    let rem = secs.rem_euclid(86_400);
    // Civil-from-days (proleptic Gregorian), to avoid a date dependency in a test helper.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    const MONTHS: [&str; 12] = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    const WEEKDAYS: [&str; 7] = ["Thu", "Fri", "Sat", "Sun", "Mon", "Tue", "Wed"];
    format!(
        "{}, {:02} {} {} {:02}:{:02}:{:02} GMT",
        WEEKDAYS[days.rem_euclid(7) as usize],
        day,
        MONTHS[(month - 1) as usize],
        year,
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

fn base64_decode(s: &str) -> Option<Vec<u8>> {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD
        .decode(s.trim())
        .ok()
}
