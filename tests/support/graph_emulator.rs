//! A strict emulator of Microsoft Graph v1.0 for OneDrive and SharePoint document
//! libraries, and of the Microsoft identity platform's OAuth endpoints, on the emulator
//! kit. It follows `shared/reference/provider-apis.md` §2, the corrections in
//! `shared/reference/readonly-sources.md` §4 and the verbatim examples in
//! `shared/fixtures/onedrive/`, and refuses what Graph refuses:
//!
//! - bearer tokens expire; refresh tokens rotate (a used one is rejected); the device flow
//!   answers `authorization_pending` and `slow_down` (the kit's OAuth server, set up as
//!   Microsoft's);
//! - `/content` answers 302 to a short-lived pre-authenticated URL on a "CDN" path that
//!   refuses an `Authorization` header and expired links; `Range` is honoured there (206)
//!   but ignored on request (200 with the whole body), never on `/content` itself;
//! - simple uploads up to 4 MiB; upload sessions with fragments in order, each a multiple
//!   of 320 KiB but the last, under 60 MiB, the same total every time, 416 on overlap,
//!   401 when `Authorization` is sent to the upload URL, 404 once expired or cancelled;
//! - names: `" * : < > ? / \ |`, leading/trailing spaces, a trailing dot and reserved
//!   names are refused; names are case-insensitive within a folder;
//! - `If-Match` against the item's eTag (412), `@microsoft.graph.conflictBehavior`
//!   fail/replace/rename, `$select` of known properties only, `$top` up to 1000, paging
//!   with opaque `@odata.nextLink`s;
//! - `root/delta`: `token=latest`, the latest state of each changed item (optionally
//!   repeated), no `parentReference.path`, folder renames without their children,
//!   deleted items with the `deleted` facet (Business: no `name`, no `cTag`; Personal: no
//!   `size`, no `cTag`), Business entries without `cTag`, and 410 with a `Location` to
//!   restart on demand;
//! - async copy (202 + a monitor URL polled without auth), versions (list, content,
//!   `restoreVersion` → 204), the drive's quota facet;
//! - throttling on demand: 429 or 503, with or without `Retry-After`, with Graph's
//!   `activityLimitReached` body.
//!
//! Two flavours: Personal (one drive, ids like `ABC123!101`, quickXorHash and sha256) and
//! Business (ids like `01BYE5RZ…`, quickXorHash only, SharePoint sites with libraries).
//! What it does not reproduce yet is listed at [`GraphEmulator`].
#![allow(dead_code)]

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use serde_json::{json, Map, Value};

use crate::emu::faults::FaultQueue;
use crate::emu::oauth::{OAuthReply, OAuthServer, OAuthSettings, TokenPrefixes};
use crate::emu::range::{wanted, Wanted};
use crate::emu::server::{Reply, Request, Response, Server};
use crate::emu::text::{json_response, query_map, random_of, UPPER_DIGITS};
use cloudmount::provider::onedrive::quickxor::quick_xor_base64;

/// Simple uploads take at most this much ("only supports files up to 4MB").
pub const SIMPLE_UPLOAD_LIMIT: usize = 4 * 1024 * 1024;
/// Upload-session fragments are multiples of this, but the last.
pub const FRAGMENT_UNIT: usize = 320 * 1024;
/// Each fragment request must stay below this.
pub const FRAGMENT_MAX: usize = 60 * 1024 * 1024;
const DEFAULT_PAGE: usize = 200;
const MAX_TOP: usize = 1000;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Flavour {
    Personal,
    Business,
}

#[derive(Clone, Debug)]
pub struct GraphConfig {
    pub flavour: Flavour,
    pub client_id: String,
    pub access_token_lifetime: Duration,
    /// How long a pre-authenticated download link works.
    pub download_link_lifetime: Duration,
    /// How long an upload session lives without activity.
    pub upload_session_lifetime: Duration,
    /// Serve every n-th ranged read on a download link whole (200) instead of 206.
    pub ignore_range_every: Option<u64>,
    /// Repeat every changed item in the next delta page (the feed may list an item twice).
    pub repeat_in_delta: bool,
    /// Items per delta page.
    pub delta_page: usize,
    /// Every drive's size.
    pub quota: u64,
    /// OneDrive Personal since its 2025 migration: listings and the delta feed leave out
    /// shortcuts to shared folders unless the request says
    /// `Prefer: deltashowremoteitemsaliasid` (readonly-sources §4.4).
    pub personal_2025: bool,
}

impl Default for GraphConfig {
    fn default() -> Self {
        GraphConfig {
            flavour: Flavour::Business,
            client_id: "9c2b0d6e-4a4f-4d1c-9e7a-3f2b1c0d5e6f".into(),
            access_token_lifetime: Duration::from_secs(3599),
            download_link_lifetime: Duration::from_secs(300),
            upload_session_lifetime: Duration::from_secs(3600),
            ignore_range_every: None,
            repeat_in_delta: false,
            delta_page: 200,
            quota: 1024 * 1024 * 1024 * 1024,
            personal_2025: false,
        }
    }
}

/// A failure the next matching request sees.
#[derive(Clone, Debug, PartialEq)]
pub enum Fault {
    /// 429 (or 503) with `Retry-After` seconds, or none.
    Throttle {
        status: u16,
        retry_after: Option<u64>,
    },
    /// 410 on the next delta call, with a `Location` that restarts enumeration.
    ResyncDelta,
    /// The next upload-session fragment: the connection drops after `n` bytes arrived;
    /// the session keeps them.
    DropFragmentAfter(usize),
    /// The next download through a link is refused as expired (403), whatever its age:
    /// links can die between being handed out and being used.
    ExpireLinkOnUse,
}

#[derive(Clone, Debug, Default)]
pub struct Stats {
    pub api_calls: u64,
    pub downloads: u64,
    pub ranged_downloads: u64,
    pub fragments: u64,
    pub simple_uploads: u64,
    pub delta_calls: u64,
    pub throttled: u64,
    pub list_calls: u64,
}

#[derive(Clone, Debug)]
pub struct Item {
    pub id: String,
    pub drive: String,
    pub name: String,
    pub parent: Option<String>,
    pub folder: bool,
    /// A OneNote notebook: a `package` facet, neither file nor folder.
    pub package: bool,
    /// A shortcut to a folder another user shared ("Add to My files"): a `remoteItem` facet
    /// pointing at that folder (this id) in the other user's drive; neither file nor
    /// folder here.
    pub shortcut: Option<String>,
    pub content: Vec<u8>,
    pub deleted: bool,
    /// Bumped on every change (eTag) and on content changes (cTag).
    pub etag_n: u64,
    pub ctag_n: u64,
    pub created: SystemTime,
    pub modified: SystemTime,
    /// Older contents, oldest first; the current content is the newest version.
    pub versions: Vec<(Vec<u8>, SystemTime)>,
}

impl Item {
    pub fn etag(&self) -> String {
        format!("\"{{{}}},{}\"", self.id, self.etag_n)
    }
    pub fn ctag(&self) -> String {
        format!("\"c:{{{}}},{}\"", self.id, self.ctag_n)
    }
}

struct Drive {
    id: String,
    name: String,
    root: String,
    site: Option<String>,
    quota_total: u64,
}

struct Site {
    id: String,
    name: String,
    web_url: String,
    drives: Vec<String>,
    /// Listed by `/me/followedSites`.
    followed: bool,
}

struct Session {
    drive: String,
    parent: String,
    name: String,
    /// The item a session replaces, when it was made for an existing file.
    target: Option<String>,
    conflict: String,
    total: Option<usize>,
    data: Vec<u8>,
    expires: Instant,
}

struct Link {
    item: String,
    version: Option<usize>,
    expires: Instant,
}

struct Copy {
    result: String,
    polled: bool,
}

struct State {
    cfg: GraphConfig,
    base: String,
    oauth: OAuthServer,
    items: HashMap<String, Item>,
    drives: BTreeMap<String, Drive>,
    me_drive: String,
    sites: Vec<Site>,
    /// (change number, item id) for `delta`.
    changes: Vec<(u64, String)>,
    next_change: u64,
    /// Opaque page tokens of listings → (parent, offset, top, select).
    pages: HashMap<String, (String, usize, usize, Option<String>)>,
    /// Opaque delta tokens → (drive, change number it starts after, offset within).
    deltas: HashMap<String, (String, u64, usize)>,
    sessions: HashMap<String, Session>,
    links: HashMap<String, Link>,
    copies: HashMap<String, Copy>,
    /// Every upload-session id handed out (they stay secrets after the session ends).
    issued_sessions: Vec<String>,
    next_id: u64,
    ranged_reads: u64,
    stats: Stats,
}

/// The emulator. The Personal "2025" behaviours are a mode (`personal_2025`: shortcuts to
/// shared folders only with `Prefer: deltashowremoteitemsaliasid`; on Personal a
/// shortcut's owner drive id always comes without its leading zero and upper-cased).
/// Not reproduced yet: root ids with `sea8cc6beffdb43d7976fbc7da445c639`, a shared
/// folder's own delta, `$expand`, `If-None-Match` → 304, 507/509, `token=<timestamp>` on
/// Business, delta below the root on Personal.
pub struct GraphEmulator {
    state: Arc<Mutex<State>>,
    faults: Arc<FaultQueue<Fault>>,
    server: Server,
}

fn random(n: usize) -> String {
    random_of(UPPER_DIGITS, n)
}

fn rfc3339(t: SystemTime) -> String {
    chrono::DateTime::<chrono::Utc>::from(t).to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

/// Graph's error body (`errors.md`): a code, a message, and an `innerError` with ids.
fn error(status: u16, code: &str, message: &str) -> Response {
    error_with_inner(status, code, message, None)
}

fn error_with_inner(status: u16, code: &str, message: &str, inner: Option<&str>) -> Response {
    let mut inner_error = json!({
        "date": rfc3339(SystemTime::now()),
        "request-id": "4c0c5e2a-0000-4000-8000-000000000000",
        "client-request-id": "4c0c5e2a-0000-4000-8000-000000000001",
    });
    if let Some(c) = inner {
        inner_error["code"] = json!(c);
    }
    json_resp(
        status,
        json!({"error": {"code": code, "message": message, "innerError": inner_error}}),
    )
}

fn json_resp(status: u16, v: Value) -> Response {
    json_response(status, v)
}

fn not_found() -> Response {
    error(404, "itemNotFound", "The resource could not be found.")
}

fn decode(segment: &str) -> String {
    percent_encoding::percent_decode_str(segment)
        .decode_utf8_lossy()
        .into_owned()
}

/// Why OneDrive refuses a name, if it does.
fn bad_name(name: &str) -> Option<&'static str> {
    const RESERVED: [&str; 5] = [".lock", "CON", "PRN", "AUX", "NUL"];
    let upper = name.to_ascii_uppercase();
    if name.is_empty() {
        return Some("empty name");
    }
    if name.chars().any(|c| "\"*:<>?/\\|".contains(c)) {
        return Some("a character OneDrive does not allow");
    }
    if name.starts_with(' ') || name.ends_with(' ') || name.ends_with('.') {
        return Some("a leading or trailing space, or a trailing dot");
    }
    let stem = upper.split('.').next().unwrap_or("");
    let numbered = (stem.starts_with("COM") || stem.starts_with("LPT"))
        && stem.len() == 4
        && stem.as_bytes()[3].is_ascii_digit();
    if RESERVED.iter().any(|r| upper == r.to_ascii_uppercase())
        || (RESERVED[1..].contains(&stem) && !stem.is_empty())
        || numbered
        || upper == "DESKTOP.INI"
        || name.starts_with("~$")
        || upper.contains("_VTI_")
    {
        return Some("a reserved name");
    }
    None
}

impl State {
    fn new_item_id(&mut self) -> String {
        self.next_id += 1;
        match self.cfg.flavour {
            Flavour::Personal => format!("D4648F06C91D9D3D!{}", 100 + self.next_id),
            Flavour::Business => format!("01BYE5RZ{:06}{}", self.next_id, random(20)),
        }
    }

    /// A new item's id in `drive`: Personal item ids start with their drive's id.
    fn new_item_id_in(&mut self, drive: &str) -> String {
        match self.cfg.flavour {
            Flavour::Personal => {
                self.next_id += 1;
                format!("{}!{}", drive.to_uppercase(), 100 + self.next_id)
            }
            Flavour::Business => self.new_item_id(),
        }
    }

    fn record(&mut self, id: &str) {
        self.next_change += 1;
        self.changes.push((self.next_change, id.to_owned()));
    }

    fn children(&self, parent: &str) -> Vec<&Item> {
        let mut v: Vec<&Item> = self
            .items
            .values()
            .filter(|i| !i.deleted && i.parent.as_deref() == Some(parent))
            .collect();
        v.sort_by_key(|i| i.name.to_lowercase());
        v
    }

    /// The live child of `parent` named `name`, case-insensitively.
    fn child_named(&self, parent: &str, name: &str) -> Option<String> {
        let lower = name.to_lowercase();
        self.children(parent)
            .into_iter()
            .find(|i| i.name.to_lowercase() == lower)
            .map(|i| i.id.clone())
    }

    fn path_of(&self, id: &str) -> String {
        let mut parts = Vec::new();
        let mut cur = self.items.get(id);
        while let Some(i) = cur {
            match &i.parent {
                Some(p) => {
                    parts.push(i.name.clone());
                    cur = self.items.get(p);
                }
                None => break,
            }
        }
        parts.reverse();
        parts.join("/")
    }

    fn is_below(&self, id: &str, ancestor: &str) -> bool {
        let mut cur = Some(id.to_owned());
        while let Some(c) = cur {
            if c == ancestor {
                return true;
            }
            cur = self.items.get(&c).and_then(|i| i.parent.clone());
        }
        false
    }

    fn insert(
        &mut self,
        drive: &str,
        parent: &str,
        name: &str,
        folder: bool,
        content: Vec<u8>,
    ) -> String {
        let id = self.new_item_id_in(drive);
        let now = SystemTime::now();
        self.items.insert(
            id.clone(),
            Item {
                id: id.clone(),
                drive: drive.to_owned(),
                name: name.to_owned(),
                parent: Some(parent.to_owned()),
                folder,
                package: false,
                shortcut: None,
                content,
                deleted: false,
                etag_n: 1,
                ctag_n: 1,
                created: now,
                modified: now,
                versions: Vec::new(),
            },
        );
        self.record(&id);
        id
    }

    fn set_content(&mut self, id: &str, content: Vec<u8>) {
        let item = self.items.get_mut(id).expect("item");
        let old = std::mem::replace(&mut item.content, content);
        item.versions.push((old, item.modified));
        item.etag_n += 1;
        item.ctag_n += 1;
        item.modified = SystemTime::now();
        self.record(id);
    }

    fn delete_tree(&mut self, id: &str) {
        let kids: Vec<String> = self.children(id).iter().map(|i| i.id.clone()).collect();
        for k in kids {
            self.delete_tree(&k);
        }
        if let Some(i) = self.items.get_mut(id) {
            i.deleted = true;
            i.etag_n += 1;
        }
        self.record(id);
    }

    fn used(&self, drive: &str) -> u64 {
        self.items
            .values()
            .filter(|i| i.drive == drive && !i.deleted)
            .map(|i| i.content.len() as u64)
            .sum()
    }

    fn hashes(&self, item: &Item) -> Value {
        let mut h = json!({"quickXorHash": quick_xor_base64(&item.content)});
        if self.cfg.flavour == Flavour::Personal {
            // Personal also has the newer sha256Hash (Business has quickXorHash only).
            use sha2::Digest;
            h["sha256Hash"] = json!(hex::encode_upper(sha2::Sha256::digest(&item.content)));
        }
        h
    }

    /// The driveItem resource as Graph returns it.
    fn item_json(&mut self, item: &Item, in_delta: bool) -> Value {
        let drive = &self.drives[&item.drive];
        let mut v = json!({
            "id": item.id,
            "name": item.name,
            "eTag": item.etag(),
            "cTag": item.ctag(),
            "createdDateTime": rfc3339(item.created),
            "lastModifiedDateTime": rfc3339(item.modified),
            "size": item.content.len(),
            "fileSystemInfo": {
                "createdDateTime": rfc3339(item.created),
                "lastModifiedDateTime": rfc3339(item.modified),
            },
        });
        if let Some(parent) = &item.parent {
            let mut pr = json!({
                "driveId": drive.id,
                "driveType": match self.cfg.flavour {
                    Flavour::Personal => "personal",
                    Flavour::Business => "business",
                },
                "id": parent,
            });
            if !in_delta {
                let parent_path = self.path_of(parent);
                pr["path"] = if parent_path.is_empty() {
                    json!("/drive/root:")
                } else {
                    json!(format!("/drive/root:/{parent_path}"))
                };
            }
            v["parentReference"] = pr;
        } else {
            v["root"] = json!({});
        }
        if item.folder {
            let count = self.children(&item.id).len();
            v["folder"] = json!({"childCount": count});
            v["size"] = json!(self.subtree_size(&item.id));
        } else if item.package {
            v["package"] = json!({"type": "oneNote"});
        } else if let Some(target) = &item.shortcut {
            // The shared folder lives in its owner's drive. OneDrive Personal gives that
            // drive's id without its leading zero and upper-cased since 2025
            // (readonly-sources §4.4).
            let t = &self.items[target];
            let drive = match self.cfg.flavour {
                Flavour::Personal => t.drive.trim_start_matches('0').to_uppercase(),
                Flavour::Business => t.drive.clone(),
            };
            let count = self.children(target).len();
            let id = match self.cfg.flavour {
                Flavour::Personal => t.id.trim_start_matches('0').to_owned(),
                Flavour::Business => t.id.clone(),
            };
            v["remoteItem"] = json!({
                "id": id,
                "name": t.name,
                "folder": {"childCount": count},
                "parentReference": {
                    "driveId": drive,
                    "driveType": match self.cfg.flavour {
                        Flavour::Personal => "personal",
                        Flavour::Business => "business",
                    },
                },
            });
        } else {
            v["file"] =
                json!({"mimeType": "application/octet-stream", "hashes": self.hashes(item)});
            if !in_delta {
                let link = self.new_link(&item.id, None);
                v["@microsoft.graph.downloadUrl"] = json!(link);
            }
        }
        if in_delta && self.cfg.flavour == Flavour::Business {
            // Business delta entries carry no cTag (readonly-sources §4.1).
            v.as_object_mut().unwrap().remove("cTag");
        }
        if item.deleted {
            let o = v.as_object_mut().unwrap();
            o.remove("file");
            o.remove("folder");
            o.remove("cTag");
            o.insert("deleted".into(), json!({"state": "deleted"}));
            match self.cfg.flavour {
                Flavour::Business => {
                    o.remove("name");
                }
                Flavour::Personal => {
                    o.remove("size");
                }
            }
        }
        v
    }

    fn subtree_size(&self, id: &str) -> usize {
        self.children(id)
            .iter()
            .map(|c| {
                if c.folder {
                    self.subtree_size(&c.id)
                } else {
                    c.content.len()
                }
            })
            .sum()
    }

    fn new_link(&mut self, item: &str, version: Option<usize>) -> String {
        let token = random(40).to_lowercase();
        self.links.insert(
            token.clone(),
            Link {
                item: item.to_owned(),
                version,
                expires: Instant::now() + self.cfg.download_link_lifetime,
            },
        );
        format!("{}/cdn/{token}", self.base)
    }

    fn drive_json(&self, d: &Drive) -> Value {
        let used = self.used(&d.id);
        let remaining = d.quota_total.saturating_sub(used);
        let state = match remaining * 100 / d.quota_total.max(1) {
            0 => "exceeded",
            1..=2 => "critical",
            3..=9 => "nearing",
            _ => "normal",
        };
        let mut quota = json!({
            "deleted": 0,
            "remaining": remaining,
            "state": state,
            "total": d.quota_total,
            "used": used,
        });
        if self.cfg.flavour == Flavour::Business {
            let files = self
                .items
                .values()
                .filter(|i| i.drive == d.id && !i.deleted && !i.folder)
                .count();
            quota["fileCount"] = json!(files);
        }
        json!({
            "id": d.id,
            "name": d.name,
            "driveType": match (self.cfg.flavour, &d.site) {
                (Flavour::Personal, _) => "personal",
                (Flavour::Business, None) => "business",
                (Flavour::Business, Some(_)) => "documentLibrary",
            },
            "owner": {"user": {"id": "efee1b77-fb3b-4f65-99d6-274c11914d12", "displayName": "Test User"}},
            "quota": quota,
        })
    }
}

/// The properties `$select` may name.
const SELECTABLE: &[&str] = &[
    "id",
    "name",
    "eTag",
    "cTag",
    "size",
    "createdDateTime",
    "lastModifiedDateTime",
    "fileSystemInfo",
    "parentReference",
    "file",
    "folder",
    "package",
    "root",
    "deleted",
    "remoteItem",
    "webUrl",
    "@microsoft.graph.downloadUrl",
];

/// `v` with only the `$select`ed properties, or the OData error for an unknown one.
fn select(v: Value, select: Option<&str>) -> Result<Value, Response> {
    let Some(sel) = select.filter(|s| !s.is_empty()) else {
        return Ok(v);
    };
    let wanted: Vec<&str> = sel.split(',').map(str::trim).collect();
    for w in &wanted {
        if !SELECTABLE.contains(w) {
            return Err(error(
                400,
                "invalidRequest",
                &format!(
                    "Could not find a property named '{w}' on type 'microsoft.graph.driveItem'."
                ),
            ));
        }
    }
    let Value::Object(o) = v else { return Ok(v) };
    let kept: Map<String, Value> = o
        .into_iter()
        .filter(|(k, _)| wanted.contains(&k.as_str()))
        .collect();
    Ok(Value::Object(kept))
}

impl GraphEmulator {
    pub fn start(cfg: GraphConfig) -> GraphEmulator {
        let oauth = OAuthServer::new(OAuthSettings {
            client_id: cfg.client_id.clone(),
            // A public client: no secret (the Microsoft identity platform's desktop apps).
            client_secret: String::new(),
            access_token_lifetime: cfg.access_token_lifetime,
            rotate_refresh_tokens: true,
            device_scopes: None,
            prefixes: TokenPrefixes {
                code: "M.C5_BAY.2.U.",
                access: "EwB4A8l6BAAU-access-",
                refresh: "M.C5_BL2.0.U.-refresh-",
                device: "DAQABIQEAAAD-device-",
            },
            verification_field: "verification_uri",
            verification_url: "https://microsoft.com/devicelogin".into(),
            pending_status: 400,
            device_interval: Duration::from_secs(5),
            enforce_interval: true,
            device_code_lifetime: Duration::from_secs(900),
            revoke_unknown_status: 200,
            aad_errors: true,
        });
        let me_drive = match cfg.flavour {
            Flavour::Personal => "d4648f06c91d9d3d".to_owned(),
            Flavour::Business => format!("b!{}", random(64)),
        };
        let mut st = State {
            cfg,
            base: String::new(),
            oauth,
            items: HashMap::new(),
            drives: BTreeMap::new(),
            me_drive: me_drive.clone(),
            sites: Vec::new(),
            changes: Vec::new(),
            next_change: 0,
            pages: HashMap::new(),
            deltas: HashMap::new(),
            sessions: HashMap::new(),
            links: HashMap::new(),
            copies: HashMap::new(),
            issued_sessions: Vec::new(),
            next_id: 0,
            ranged_reads: 0,
            stats: Stats::default(),
        };
        add_drive(&mut st, &me_drive, "OneDrive", None);
        let state = Arc::new(Mutex::new(st));
        let faults: Arc<FaultQueue<Fault>> = Arc::default();
        let (s, f) = (state.clone(), faults.clone());
        let server = Server::start(move |req| handle(&s, &f, req));
        state.lock().unwrap().base = server.base.clone();
        GraphEmulator {
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
    /// The Graph base (`https://graph.microsoft.com/v1.0`'s stand-in).
    pub fn api_base(&self) -> String {
        format!("{}/v1.0", self.server.base)
    }
    /// The identity platform for `tenant` (`common`, `organizations`, `consumers`, an id).
    pub fn authority(&self, tenant: &str) -> String {
        format!("{}/{tenant}/oauth2/v2.0", self.server.base)
    }
    pub fn config(&self) -> GraphConfig {
        self.st().cfg.clone()
    }
    pub fn stats(&self) -> Stats {
        self.st().stats.clone()
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
    pub fn set_ignore_range_every(&self, n: Option<u64>) {
        self.st().cfg.ignore_range_every = n;
    }
    pub fn set_repeat_in_delta(&self, on: bool) {
        self.st().cfg.repeat_in_delta = on;
    }

    // --- OAuth -------------------------------------------------------------------------

    /// Tokens for a session that skipped the browser: (access, refresh).
    pub fn issue_tokens(&self) -> (String, String) {
        self.st()
            .oauth
            .issue_tokens("Files.ReadWrite.All Sites.ReadWrite.All offline_access")
    }
    pub fn expire_all_access_tokens(&self) {
        self.st().oauth.expire_all_access_tokens();
    }
    pub fn refresh_token_valid(&self, token: &str) -> bool {
        self.st().oauth.refresh_token_valid(token)
    }
    pub fn approve_device(&self, user_code: &str) {
        self.st().oauth.approve_device(user_code);
    }
    /// Every credential issued or seen: OAuth's, and the tokens in download links and
    /// upload URLs (each is a credential in itself).
    pub fn secrets(&self) -> Vec<String> {
        let st = self.st();
        let mut all = st.oauth.secrets().to_vec();
        all.extend(st.links.keys().cloned());
        all.extend(st.issued_sessions.iter().cloned());
        all
    }

    // --- the drive's contents, as someone else changes them ------------------------------

    /// The user's own drive id and its root item id.
    pub fn my_drive(&self) -> (String, String) {
        let st = self.st();
        let d = &st.drives[&st.me_drive];
        (d.id.clone(), d.root.clone())
    }
    /// The root folder's item id of a drive (a SharePoint library, by drive id).
    pub fn drive_root(&self, drive: &str) -> String {
        self.st().drives[drive].root.clone()
    }
    pub fn add_folder(&self, parent: &str, name: &str) -> String {
        let mut st = self.st();
        let drive = st.items[parent].drive.clone();
        st.insert(&drive, parent, name, true, Vec::new())
    }
    pub fn add_file(&self, parent: &str, name: &str, content: &[u8]) -> String {
        let mut st = self.st();
        let drive = st.items[parent].drive.clone();
        st.insert(&drive, parent, name, false, content.to_vec())
    }
    /// A OneNote notebook (a `package`, neither file nor folder).
    pub fn add_notebook(&self, parent: &str, name: &str) -> String {
        let mut st = self.st();
        let drive = st.items[parent].drive.clone();
        let id = st.insert(&drive, parent, name, false, Vec::new());
        st.items.get_mut(&id).unwrap().package = true;
        id
    }
    /// A folder `name` in a drive of another user (`owner`), shared with this user and
    /// added to `parent` as a shortcut ("Add to My files"); returns the shared folder's id
    /// (in the owner's drive: `add_file` into it is the owner adding a file). On Personal
    /// the owner's drive id starts with a zero, which the shortcut then drops.
    pub fn add_shortcut(&self, parent: &str, owner: &str, name: &str) -> String {
        let mut st = self.st();
        let owner_drive = match st.cfg.flavour {
            Flavour::Personal => format!("0{}", random_of(b"0123456789abcdef", 15)),
            Flavour::Business => format!("b!{}", random(64)),
        };
        add_drive(&mut st, &owner_drive, &format!("OneDrive of {owner}"), None);
        let owner_root = st.drives[&owner_drive].root.clone();
        let target = st.insert(&owner_drive, &owner_root, name, true, Vec::new());
        let drive = st.items[parent].drive.clone();
        let id = st.insert(&drive, parent, name, false, Vec::new());
        st.items.get_mut(&id).unwrap().shortcut = Some(target.clone());
        target
    }
    pub fn set_content(&self, id: &str, content: &[u8]) {
        self.st().set_content(id, content.to_vec());
    }
    pub fn rename(&self, id: &str, name: &str) {
        let mut st = self.st();
        let item = st.items.get_mut(id).unwrap();
        item.name = name.to_owned();
        item.etag_n += 1;
        st.record(id);
    }
    pub fn delete(&self, id: &str) {
        self.st().delete_tree(id);
    }
    /// The live child of `parent` named `name` (case-insensitively), as Graph finds it.
    pub fn child(&self, parent: &str, name: &str) -> Option<String> {
        self.st().child_named(parent, name)
    }
    pub fn item(&self, id: &str) -> Option<Item> {
        self.st().items.get(id).cloned()
    }
    /// The live items below `folder`, by path relative to it ("a/b.txt"), with the
    /// content of files (`None` for folders).
    pub fn tree(&self, folder: &str) -> BTreeMap<String, Option<Vec<u8>>> {
        let st = self.st();
        let mut out = BTreeMap::new();
        let mut todo = vec![(folder.to_owned(), String::new())];
        while let Some((id, at)) = todo.pop() {
            for c in st.children(&id) {
                let path = if at.is_empty() {
                    c.name.clone()
                } else {
                    format!("{at}/{}", c.name)
                };
                if c.folder {
                    out.insert(path.clone(), None);
                    todo.push((c.id.clone(), path));
                } else {
                    out.insert(path, Some(c.content.clone()));
                }
            }
        }
        out
    }
    /// A SharePoint site with document libraries (Business only); returns the drive ids.
    pub fn add_site(&self, name: &str, libraries: &[&str]) -> Vec<String> {
        let mut st = self.st();
        assert_eq!(
            st.cfg.flavour,
            Flavour::Business,
            "SharePoint is Business only"
        );
        let site_id = format!(
            "contoso.sharepoint.com,{},{}",
            uuid_like(&random(32)),
            uuid_like(&random(32))
        );
        let mut drives = Vec::new();
        for lib in libraries {
            let id = format!("b!{}", random(64));
            add_drive(&mut st, &id, lib, Some(site_id.clone()));
            drives.push(id);
        }
        let web_url = format!(
            "https://contoso.sharepoint.com/sites/{}",
            name.replace(' ', "")
        );
        st.sites.push(Site {
            id: site_id,
            name: name.to_owned(),
            web_url,
            drives: drives.clone(),
            followed: true,
        });
        drives
    }
    /// Follow or stop following a site (by name): what `/me/followedSites` lists.
    pub fn set_followed(&self, name: &str, followed: bool) {
        let mut st = self.st();
        let site = st.sites.iter_mut().find(|s| s.name == name).expect("site");
        site.followed = followed;
    }
    /// A site's URL (`webUrl`), as a user would copy it from the browser.
    pub fn site_url(&self, name: &str) -> String {
        let st = self.st();
        st.sites
            .iter()
            .find(|s| s.name == name)
            .expect("site")
            .web_url
            .clone()
    }
    pub fn open_upload_sessions(&self) -> usize {
        self.st().sessions.len()
    }
    pub fn expire_upload_sessions(&self) {
        for s in self.st().sessions.values_mut() {
            s.expires = Instant::now() - Duration::from_secs(1);
        }
    }
    pub fn expire_download_links(&self) {
        for l in self.st().links.values_mut() {
            l.expires = Instant::now() - Duration::from_secs(1);
        }
    }
}

fn site_json(s: &Site) -> Value {
    json!({"id": s.id, "displayName": s.name, "name": s.name, "webUrl": s.web_url})
}

fn uuid_like(hex32: &str) -> String {
    let h = hex32.to_lowercase();
    format!(
        "{}-{}-{}-{}-{}",
        &h[0..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..32]
    )
}

fn add_drive(st: &mut State, id: &str, name: &str, site: Option<String>) {
    let root = st.new_item_id();
    let now = SystemTime::now();
    st.items.insert(
        root.clone(),
        Item {
            id: root.clone(),
            drive: id.to_owned(),
            name: "root".into(),
            parent: None,
            folder: true,
            package: false,
            shortcut: None,
            content: Vec::new(),
            deleted: false,
            etag_n: 1,
            ctag_n: 1,
            created: now,
            modified: now,
            versions: Vec::new(),
        },
    );
    st.drives.insert(
        id.to_owned(),
        Drive {
            id: id.to_owned(),
            name: name.to_owned(),
            root,
            site,
            quota_total: st.cfg.quota,
        },
    );
}

// ---------------------------------------------------------------------------------------
// Routing

fn handle(state: &Mutex<State>, faults: &FaultQueue<Fault>, req: &Request) -> Reply {
    let path = req.path_only().to_owned();
    let q = query_map(&req.path);
    let segs: Vec<String> = path
        .trim_start_matches('/')
        .split('/')
        .map(str::to_owned)
        .collect();
    let mut st = state.lock().unwrap();

    // The identity platform: /{tenant}/oauth2/v2.0/{authorize,token,devicecode}.
    if segs.len() == 4 && segs[1] == "oauth2" && segs[2] == "v2.0" {
        let tenant = segs[0].as_str();
        let known = matches!(tenant, "common" | "organizations" | "consumers")
            || (tenant.len() == 36 && tenant.chars().all(|c| c.is_ascii_hexdigit() || c == '-'));
        if !known {
            return oauth_reply(OAuthReply::Json(
                400,
                json!({"error": "invalid_request", "error_description": format!("AADSTS90002: Tenant '{tenant}' not found."), "error_codes": [90002]}),
            ))
            .into();
        }
        let reply = match (req.method.as_str(), segs[3].as_str()) {
            ("GET", "authorize") => st.oauth.authorize(&q),
            ("POST", "token") => st.oauth.token(req.header("authorization"), &req.body),
            ("POST", "devicecode") => st.oauth.device_code(&req.body),
            _ => return Response::new(404, "").into(),
        };
        return oauth_reply(reply).into();
    }

    // Pre-authenticated downloads and upload sessions: no bearer token, and none wanted.
    if segs.len() == 2 && segs[0] == "cdn" {
        if faults.take(|f| *f == Fault::ExpireLinkOnUse).is_some() {
            return Response::new(403, "Forbidden: the link has expired").into();
        }
        return cdn(&mut st, &segs[1], req).into();
    }
    if segs.len() == 2 && segs[0] == "up" {
        let drop_after = match faults.take(|f| matches!(f, Fault::DropFragmentAfter(_))) {
            Some(Fault::DropFragmentAfter(n)) if req.method == "PUT" => Some(n),
            Some(other) => {
                faults.inject(other, 1);
                None
            }
            None => None,
        };
        return upload_url(&mut st, &segs[1], req, drop_after);
    }
    if segs.len() == 2 && segs[0] == "monitor" {
        return monitor(&mut st, &segs[1]).into();
    }

    if segs.first().map(String::as_str) != Some("v1.0") {
        return Response::new(404, "").into();
    }
    st.stats.api_calls += 1;
    if !st.oauth.bearer_ok(req.header("authorization")) {
        let message = if req.header("authorization").is_none() {
            "Access token is empty."
        } else {
            "Lifetime validation failed, the token is expired."
        };
        return error(401, "InvalidAuthenticationToken", message)
            .header("WWW-Authenticate", "Bearer realm=\"\", authorization_uri=\"https://login.microsoftonline.com/common/oauth2/authorize\"")
            .into();
    }
    if let Some(f) = faults.take(|f| matches!(f, Fault::Throttle { .. })) {
        st.stats.throttled += 1;
        if let Fault::Throttle {
            status,
            retry_after,
        } = f
        {
            let mut r = error_with_inner(
                status,
                "activityLimitReached",
                "The request has been throttled",
                Some("throttledRequest"),
            );
            if let Some(s) = retry_after {
                r = r.header("Retry-After", s.to_string());
            }
            return r.into();
        }
    }
    api(&mut st, faults, req, &segs[1..], &q).into()
}

fn oauth_reply(reply: OAuthReply) -> Response {
    match reply {
        OAuthReply::Json(status, v) => json_resp(status, v),
        OAuthReply::Page(status, text) => {
            Response::new(status, text).header("Content-Type", "text/html")
        }
        OAuthReply::Redirect(to) => Response::new(302, "").header("Location", to),
    }
}

/// Where a request's item address leads: the drive, the item, and what follows it.
struct Address {
    drive: String,
    item: String,
    rest: Vec<String>,
    /// A path-addressed name that does not exist yet (`…/{parent-id}:/{name}:/content`).
    new_name: Option<String>,
    /// Addressed by a path (`root:/a:`, `items/{id}:/name:`) rather than by id.
    by_path: bool,
}

/// Resolves `/me/drive/…`, `/drives/{d}/…`, `/sites/{s}/drive/…` followed by `root`,
/// `root:/a/b:`, `items/{id}` or `items/{id}:/name:`.
fn address(st: &State, segs: &[String]) -> Result<Address, Response> {
    let (drive, rest) = match segs {
        [me, d, rest @ ..] if me == "me" && d == "drive" => (st.me_drive.clone(), rest),
        [d, id, rest @ ..] if d == "drives" => {
            let id = decode(id);
            let found = st
                .drives
                .keys()
                .find(|k| k.eq_ignore_ascii_case(&id))
                .cloned()
                .ok_or_else(not_found)?;
            (found, rest)
        }
        [s, site, d, rest @ ..] if s == "sites" && d == "drive" => {
            let site = st
                .sites
                .iter()
                .find(|x| x.id == decode(site))
                .ok_or_else(not_found)?;
            (site.drives[0].clone(), rest)
        }
        _ => return Err(error(400, "invalidRequest", "Invalid request")),
    };
    let root = st.drives[&drive].root.clone();
    let joined = rest.join("/");
    // Path addressing: `root:/a/b:` or `items/{id}:/a:` then optional `/rest`.
    let (base, tail) = match joined.split_once(':') {
        None => (joined.clone(), None),
        Some((b, t)) => (b.to_owned(), Some(t.to_owned())),
    };
    let base_segs: Vec<&str> = base.split('/').filter(|s| !s.is_empty()).collect();
    let mut item = match base_segs.as_slice() {
        ["root", ..] => root.clone(),
        ["items", id, ..] => {
            let id = decode(id);
            match st.items.get(&id) {
                Some(i) if !i.deleted && i.drive == drive => id,
                _ => return Err(not_found()),
            }
        }
        _ => return Err(error(400, "invalidRequest", "Invalid request")),
    };
    let after_base: Vec<String> = base_segs
        .iter()
        .skip(if base_segs[0] == "root" { 1 } else { 2 })
        .map(|s| s.to_string())
        .collect();
    let mut new_name = None;
    let mut rest: Vec<String> = after_base;
    let by_path = tail.is_some();
    if let Some(tail) = tail {
        // `/a/b:` then `/children` etc.
        let (path, after) = match tail.split_once(':') {
            Some((p, a)) => (p.to_owned(), a.to_owned()),
            None => (tail.clone(), String::new()),
        };
        let names: Vec<String> = path
            .split('/')
            .filter(|s| !s.is_empty())
            .map(decode)
            .collect();
        for (i, name) in names.iter().enumerate() {
            match st.child_named(&item, name) {
                Some(c) => item = c,
                None if i + 1 == names.len() => new_name = Some(name.clone()),
                None => return Err(not_found()),
            }
        }
        rest = after
            .split('/')
            .filter(|s| !s.is_empty())
            .map(str::to_owned)
            .collect();
    }
    Ok(Address {
        drive,
        item,
        rest,
        new_name,
        by_path,
    })
}

fn api(
    st: &mut State,
    faults: &FaultQueue<Fault>,
    req: &Request,
    segs: &[String],
    q: &HashMap<String, String>,
) -> Response {
    let m = req.method.as_str();
    // Drives and sites.
    match segs {
        [me, d] if me == "me" && d == "drive" && m == "GET" => {
            let d = &st.drives[&st.me_drive];
            return json_resp(200, st.drive_json(d));
        }
        [d, id] if d == "drives" && m == "GET" => {
            let id = decode(id);
            return match st.drives.keys().find(|k| k.eq_ignore_ascii_case(&id)) {
                Some(k) => json_resp(200, st.drive_json(&st.drives[k])),
                None => not_found(),
            };
        }
        [me, f] if me == "me" && f == "followedSites" && m == "GET" => {
            let v: Vec<Value> = st
                .sites
                .iter()
                .filter(|s| s.followed)
                .map(site_json)
                .collect();
            return json_resp(200, json!({"value": v}));
        }
        // Get site by path: /sites/{hostname}:/{server-relative-path}.
        [s, host, rest @ ..] if s == "sites" && host.ends_with(':') && m == "GET" => {
            let rel: Vec<String> = rest.iter().map(|x| decode(x)).collect();
            let url = format!(
                "https://{}/{}",
                host.trim_end_matches(':'),
                rel.join("/").trim_end_matches(':')
            );
            return match st
                .sites
                .iter()
                .find(|x| x.web_url.eq_ignore_ascii_case(&url))
            {
                Some(site) => json_resp(200, site_json(site)),
                None => not_found(),
            };
        }
        [s, id, d] if s == "sites" && d == "drives" && m == "GET" => {
            let id = decode(id);
            let Some(site) = st.sites.iter().find(|x| x.id == id) else {
                return not_found();
            };
            let v: Vec<Value> = site
                .drives
                .iter()
                .map(|d| st.drive_json(&st.drives[d]))
                .collect();
            return json_resp(200, json!({"value": v}));
        }
        _ => {}
    }
    let addr = match address(st, segs) {
        Ok(a) => a,
        Err(r) => return r,
    };
    let rest: Vec<&str> = addr.rest.iter().map(String::as_str).collect();
    match (m, rest.as_slice(), &addr.new_name) {
        ("GET", [], None) => {
            let item = st.items[&addr.item].clone();
            let v = st.item_json(&item, false);
            match select(v, q.get("$select").map(String::as_str)) {
                Ok(v) => json_resp(200, v),
                Err(r) => r,
            }
        }
        ("GET", ["children"], None) => {
            let shortcuts = shows_shortcuts(st, req);
            list_children(st, &addr.item, q, shortcuts)
        }
        ("GET", ["content"], None) => {
            let item = &st.items[&addr.item];
            if item.folder || item.package {
                return error(400, "invalidRequest", "The item is not a file.");
            }
            if req.header("range").is_some() {
                // Range belongs on the download URL, not here.
            }
            let link = st.new_link(&addr.item, None);
            Response::new(302, "").header("Location", link)
        }
        ("PUT", ["content"], new_name) => simple_upload(st, req, q, &addr, new_name.clone()),
        ("POST", ["createUploadSession"], new_name) => {
            create_session(st, req, &addr, new_name.clone())
        }
        ("POST", ["children"], None) => create_folder(st, req, &addr),
        ("PATCH", [], None) => patch(st, req, &addr),
        ("DELETE", [], None) => {
            if let Some(r) = check_if_match(st, req, &addr.item) {
                return r;
            }
            if st.items[&addr.item].parent.is_none() {
                return error(
                    403,
                    "accessDenied",
                    "The root of a drive cannot be deleted.",
                );
            }
            st.delete_tree(&addr.item);
            Response::new(204, "")
        }
        ("POST", ["copy"], None) => copy(st, req, &addr),
        ("GET", ["delta"], None) => {
            let shortcuts = shows_shortcuts(st, req);
            delta(st, faults, &addr, q, shortcuts)
        }
        ("GET", ["versions"], None) => versions(st, &addr.item),
        ("GET", ["versions", v, "content"], None) => match version_index(st, &addr.item, v) {
            Some(i) => {
                let link = st.new_link(&addr.item, Some(i));
                Response::new(302, "").header("Location", link)
            }
            None if is_current_version(st, &addr.item, v) => {
                let link = st.new_link(&addr.item, None);
                Response::new(302, "").header("Location", link)
            }
            None => not_found(),
        },
        ("POST", ["versions", v, "restoreVersion"], None) => {
            match version_index(st, &addr.item, v) {
                Some(i) => {
                    let old = st.items[&addr.item].versions[i].0.clone();
                    st.set_content(&addr.item, old);
                    Response::new(204, "")
                }
                None => not_found(),
            }
        }
        (_, _, Some(_)) => not_found(),
        _ => error(400, "invalidRequest", "Invalid request"),
    }
}

fn check_if_match(st: &State, req: &Request, id: &str) -> Option<Response> {
    let want = req.header("if-match")?;
    let item = &st.items[id];
    if want == "*" || want == item.etag() || want == item.ctag() {
        return None;
    }
    Some(error(
        412,
        "resourceModified",
        "ETag does not match current item's value",
    ))
}

/// Whether shortcuts to shared folders are in listings and the delta feed for this request:
/// on work accounts only with `Prefer: Include-Feature=AddToOneDrive`, on Personal since
/// 2025 only with `Prefer: deltashowremoteitemsaliasid`.
fn shows_shortcuts(st: &State, req: &Request) -> bool {
    let prefers = |what: &str| req.header("prefer").is_some_and(|p| p.contains(what));
    match st.cfg.flavour {
        Flavour::Business => prefers("Include-Feature=AddToOneDrive"),
        Flavour::Personal => !st.cfg.personal_2025 || prefers("deltashowremoteitemsaliasid"),
    }
}

fn list_children(
    st: &mut State,
    parent: &str,
    q: &HashMap<String, String>,
    shortcuts: bool,
) -> Response {
    st.stats.list_calls += 1;
    if !st.items[parent].folder {
        return error(400, "invalidRequest", "The item is not a folder.");
    }
    let (offset, top, sel) = match q.get("$skiptoken") {
        Some(tok) => match st.pages.get(tok) {
            Some((p, off, top, sel)) if p == parent => (*off, *top, sel.clone()),
            _ => return error(400, "invalidRequest", "Invalid skip token."),
        },
        None => {
            let top = match q.get("$top").map(|t| t.parse::<usize>()) {
                None => DEFAULT_PAGE,
                Some(Ok(t)) if (1..=MAX_TOP).contains(&t) => t,
                Some(_) => {
                    return error(400, "invalidRequest", "Invalid value for $top.");
                }
            };
            (0, top, q.get("$select").cloned())
        }
    };
    let kids: Vec<Item> = st
        .children(parent)
        .into_iter()
        .filter(|k| shortcuts || k.shortcut.is_none())
        .cloned()
        .collect();
    let mut values = Vec::new();
    for k in kids.iter().skip(offset).take(top) {
        let v = st.item_json(k, false);
        match select(v, sel.as_deref()) {
            Ok(v) => values.push(v),
            Err(r) => return r,
        }
    }
    let mut out = json!({"value": values});
    if offset + top < kids.len() {
        let tok = random(32);
        st.pages
            .insert(tok.clone(), (parent.to_owned(), offset + top, top, sel));
        let drive = st.items[parent].drive.clone();
        out["@odata.nextLink"] = json!(format!(
            "{}/v1.0/drives/{drive}/items/{parent}/children?$skiptoken={tok}",
            st.base
        ));
    }
    json_resp(200, out)
}

fn cdn(st: &mut State, token: &str, req: &Request) -> Response {
    if req.header("authorization").is_some() {
        // The download host is not Graph: a bearer token there is refused.
        return Response::new(401, "Unauthorized");
    }
    let Some(link) = st.links.get(token) else {
        return Response::new(404, "Not Found");
    };
    if link.expires <= Instant::now() {
        return Response::new(403, "Forbidden: the link has expired");
    }
    let (id, version) = (link.item.clone(), link.version);
    let Some(item) = st.items.get(&id).filter(|i| !i.deleted) else {
        return Response::new(404, "Not Found");
    };
    let content = match version {
        Some(i) => item.versions[i].0.clone(),
        None => item.content.clone(),
    };
    st.stats.downloads += 1;
    let range = req.header("range");
    if range.is_some() {
        st.ranged_reads += 1;
        let n = st.ranged_reads;
        if st
            .cfg
            .ignore_range_every
            .is_some_and(|every| n % every == 0)
        {
            return Response::new(200, content).header("Content-Type", "application/octet-stream");
        }
    }
    match wanted(range, content.len()) {
        Wanted::Whole => {
            Response::new(200, content).header("Content-Type", "application/octet-stream")
        }
        Wanted::Part { start, end } => {
            st.stats.ranged_downloads += 1;
            Response::new(206, content[start..=end].to_vec())
                .header("Content-Type", "application/octet-stream")
                .header(
                    "Content-Range",
                    format!("bytes {start}-{end}/{}", content.len()),
                )
        }
        Wanted::Unsatisfiable => {
            Response::new(416, "").header("Content-Range", format!("bytes */{}", content.len()))
        }
    }
}

/// Where a new item of `name` goes under `parent` with `behaviour`: its name, the item it
/// replaces, or the 409 Graph answers.
fn place(
    st: &State,
    parent: &str,
    name: &str,
    behaviour: &str,
) -> Result<(String, Option<String>), Response> {
    let existing = st.child_named(parent, name);
    match (existing, behaviour) {
        (None, _) => Ok((name.to_owned(), None)),
        (Some(id), "replace") => Ok((name.to_owned(), Some(id))),
        (Some(_), "rename") => {
            let (stem, ext) = match name.rfind('.') {
                Some(i) if i > 0 => (&name[..i], &name[i..]),
                _ => (name, ""),
            };
            let free = (1..)
                .map(|n| format!("{stem} {n}{ext}"))
                .find(|n| st.child_named(parent, n).is_none())
                .unwrap();
            Ok((free, None))
        }
        (Some(_), _) => Err(error(
            409,
            "nameAlreadyExists",
            "The specified item name already exists.",
        )),
    }
}

fn simple_upload(
    st: &mut State,
    req: &Request,
    q: &HashMap<String, String>,
    addr: &Address,
    new_name: Option<String>,
) -> Response {
    if req.body.len() > SIMPLE_UPLOAD_LIMIT {
        return error(
            413,
            "invalidRequest",
            "The request is too large for a simple upload; use an upload session.",
        );
    }
    st.stats.simple_uploads += 1;
    let behaviour = q
        .get("@microsoft.graph.conflictBehavior")
        .map(String::as_str)
        .unwrap_or("replace");
    if new_name.is_some() && req.header("if-match").is_some() {
        // If-Match names a version of something that is not there.
        return error(
            412,
            "resourceModified",
            "ETag does not match current item's value",
        );
    }
    let (target, created) = match new_name {
        Some(name) => {
            if let Some(why) = bad_name(&name) {
                return error(400, "invalidRequest", &format!("Invalid name: {why}."));
            }
            if !st.items[&addr.item].folder {
                return error(400, "invalidRequest", "The parent is not a folder.");
            }
            match place(st, &addr.item, &name, behaviour) {
                Err(r) => return r,
                Ok((name, Some(existing))) => {
                    let _ = name;
                    (existing, false)
                }
                Ok((name, None)) => {
                    let id = st.insert(&addr.drive, &addr.item, &name, false, req.body.to_vec());
                    (id, true)
                }
            }
        }
        // By path onto an existing item: the conflict behaviour decides.
        None if addr.by_path && behaviour == "fail" => {
            return error(
                409,
                "nameAlreadyExists",
                "The specified item name already exists.",
            );
        }
        None => (addr.item.clone(), false),
    };
    if !created {
        if st.items[&target].folder {
            return error(400, "invalidRequest", "The item is a folder.");
        }
        if let Some(r) = check_if_match(st, req, &target) {
            return r;
        }
        st.set_content(&target, req.body.to_vec());
    }
    let item = st.items[&target].clone();
    json_resp(if created { 201 } else { 200 }, st.item_json(&item, false))
}

fn create_session(
    st: &mut State,
    req: &Request,
    addr: &Address,
    new_name: Option<String>,
) -> Response {
    let body: Value = if req.body.is_empty() {
        json!({})
    } else {
        match serde_json::from_slice(&req.body) {
            Ok(v) => v,
            Err(_) => return error(400, "invalidRequest", "Invalid JSON body."),
        }
    };
    let behaviour = body["item"]["@microsoft.graph.conflictBehavior"]
        .as_str()
        .unwrap_or("replace")
        .to_owned();
    if new_name.is_some() && req.header("if-match").is_some() {
        return error(
            412,
            "resourceModified",
            "ETag does not match current item's value",
        );
    }
    let (parent, name, target) = match new_name {
        Some(name) => {
            if let Some(why) = bad_name(&name) {
                return error(400, "invalidRequest", &format!("Invalid name: {why}."));
            }
            (addr.item.clone(), name, None)
        }
        None => {
            let item = &st.items[&addr.item];
            if item.folder {
                return error(400, "invalidRequest", "The item is a folder.");
            }
            if let Some(r) = check_if_match(st, req, &addr.item) {
                return r;
            }
            // By id, the session replaces that item; by path, the name is what counts,
            // and the conflict behaviour decides at commit (409 `upload_name_conflict`).
            let target = (!addr.by_path || behaviour == "replace").then(|| addr.item.clone());
            (
                item.parent.clone().unwrap_or_default(),
                item.name.clone(),
                target,
            )
        }
    };
    let sid = random(40);
    st.issued_sessions.push(sid.clone());
    let expires = Instant::now() + st.cfg.upload_session_lifetime;
    st.sessions.insert(
        sid.clone(),
        Session {
            drive: addr.drive.clone(),
            parent,
            name,
            target,
            conflict: behaviour,
            total: None,
            data: Vec::new(),
            expires,
        },
    );
    let expiry = SystemTime::now() + st.cfg.upload_session_lifetime;
    json_resp(
        200,
        json!({
            "uploadUrl": format!("{}/up/{sid}", st.base),
            "expirationDateTime": rfc3339(expiry),
            "nextExpectedRanges": ["0-"],
        }),
    )
}

fn session_status(s: &Session) -> Value {
    let expiry = SystemTime::now() + s.expires.saturating_duration_since(Instant::now());
    json!({
        "expirationDateTime": rfc3339(expiry),
        "nextExpectedRanges": [format!("{}-", s.data.len())],
    })
}

fn upload_url(st: &mut State, sid: &str, req: &Request, drop_after: Option<usize>) -> Reply {
    if req.header("authorization").is_some() {
        // "Including the Authorization header … may result in a HTTP 401."
        return error(401, "unauthenticated", "Unauthorized").into();
    }
    match st.sessions.get(sid) {
        None => return error(404, "itemNotFound", "The upload session was not found.").into(),
        Some(s) if s.expires <= Instant::now() => {
            st.sessions.remove(sid);
            return error(404, "itemNotFound", "The upload session has expired.").into();
        }
        Some(_) => {}
    }
    match req.method.as_str() {
        "GET" => json_resp(200, session_status(&st.sessions[sid])).into(),
        "DELETE" => {
            st.sessions.remove(sid);
            Response::new(204, "").into()
        }
        "PUT" => fragment(st, sid, req, drop_after),
        _ => error(405, "invalidRequest", "Method not allowed").into(),
    }
}

fn fragment(st: &mut State, sid: &str, req: &Request, drop_after: Option<usize>) -> Reply {
    st.stats.fragments += 1;
    let range = req
        .header("content-range")
        .and_then(|h| h.strip_prefix("bytes "))
        .and_then(|r| {
            let (span, total) = r.split_once('/')?;
            let (a, b) = span.split_once('-')?;
            Some((
                a.parse::<usize>().ok()?,
                b.parse::<usize>().ok()?,
                total.parse::<usize>().ok()?,
            ))
        });
    let Some((first, last, total)) = range else {
        return error(
            400,
            "invalidRequest",
            "Missing or invalid Content-Range header.",
        )
        .into();
    };
    let body = &req.body;
    if last < first || last - first + 1 != body.len() || last >= total {
        return error(
            400,
            "invalidRequest",
            "The Content-Range does not match the body.",
        )
        .into();
    }
    if body.len() >= FRAGMENT_MAX {
        return error(413, "invalidRequest", "The fragment is too large.").into();
    }
    if last + 1 < total && body.len() % FRAGMENT_UNIT != 0 {
        return error(
            400,
            "invalidRequest",
            "Fragment sizes must be a multiple of 320 KiB.",
        )
        .into();
    }
    let s = st.sessions.get_mut(sid).expect("checked");
    if s.total.is_some_and(|t| t != total) {
        return error(400, "invalidRequest", "The declared file size changed.").into();
    }
    s.total = Some(total);
    let received = s.data.len();
    if first < received {
        return error_with_inner(
            416,
            "invalidRange",
            "Uploaded fragment overlaps with existing data.",
            Some("fragmentOverlap"),
        )
        .into();
    }
    if first > received {
        return error(416, "invalidRange", "Fragments must be uploaded in order.").into();
    }
    if let Some(n) = drop_after {
        s.data.extend_from_slice(&body[..n.min(body.len())]);
        return Reply::Drop;
    }
    s.data.extend_from_slice(body);
    s.expires = Instant::now() + st.cfg.upload_session_lifetime;
    if s.data.len() < total {
        return json_resp(202, session_status(s)).into();
    }
    // Complete: the file is committed under the session's name.
    let s = st.sessions.remove(sid).expect("checked");
    let (id, created) = match s.target {
        Some(t) if st.items.get(&t).is_some_and(|i| !i.deleted) => {
            st.set_content(&t, s.data);
            (t, false)
        }
        Some(_) => return error(404, "itemNotFound", "The item was deleted.").into(),
        None => match place(st, &s.parent, &s.name, &s.conflict) {
            Err(_) => {
                return error(
                    409,
                    "upload_name_conflict",
                    "Another file exists with the same name as the uploaded session.",
                )
                .into()
            }
            Ok((_, Some(existing))) => {
                st.set_content(&existing, s.data);
                (existing, false)
            }
            Ok((name, None)) => (st.insert(&s.drive, &s.parent, &name, false, s.data), true),
        },
    };
    let item = st.items[&id].clone();
    json_resp(if created { 201 } else { 200 }, st.item_json(&item, false)).into()
}

fn create_folder(st: &mut State, req: &Request, addr: &Address) -> Response {
    let Ok(body) = serde_json::from_slice::<Value>(&req.body) else {
        return error(400, "invalidRequest", "Invalid JSON body.");
    };
    let Some(name) = body["name"].as_str() else {
        return error(400, "invalidRequest", "A name is required.");
    };
    if body.get("folder").is_none() {
        return error(400, "invalidRequest", "Only folders can be created here.");
    }
    if let Some(why) = bad_name(name) {
        return error(400, "invalidRequest", &format!("Invalid name: {why}."));
    }
    if !st.items[&addr.item].folder {
        return error(400, "invalidRequest", "The parent is not a folder.");
    }
    let behaviour = body["@microsoft.graph.conflictBehavior"]
        .as_str()
        .unwrap_or("fail");
    let name = match place(st, &addr.item, name, behaviour) {
        Err(r) => return r,
        Ok((_, Some(existing))) => {
            // Replacing a folder with a new one: the old one goes.
            st.delete_tree(&existing);
            name.to_owned()
        }
        Ok((name, None)) => name,
    };
    let id = st.insert(&addr.drive, &addr.item, &name, true, Vec::new());
    let item = st.items[&id].clone();
    json_resp(201, st.item_json(&item, false))
}

fn patch(st: &mut State, req: &Request, addr: &Address) -> Response {
    let Ok(body) = serde_json::from_slice::<Value>(&req.body) else {
        return error(400, "invalidRequest", "Invalid JSON body.");
    };
    if let Some(r) = check_if_match(st, req, &addr.item) {
        return r;
    }
    let item = st.items[&addr.item].clone();
    if item.parent.is_none() {
        return error(
            400,
            "invalidRequest",
            "The root cannot be moved or renamed.",
        );
    }
    let new_parent = match body["parentReference"]["id"].as_str() {
        Some(p) => match st.items.get(p) {
            Some(i) if !i.deleted && i.folder => {
                if i.drive != item.drive {
                    return error(
                        400,
                        "invalidRequest",
                        "Items cannot be moved between drives.",
                    );
                }
                if st.is_below(p, &item.id) {
                    return error(
                        400,
                        "invalidRequest",
                        "A folder cannot be moved into itself.",
                    );
                }
                p.to_owned()
            }
            _ => return not_found(),
        },
        None => item.parent.clone().unwrap(),
    };
    let new_name = body["name"].as_str().unwrap_or(&item.name).to_owned();
    if let Some(why) = bad_name(&new_name) {
        return error(400, "invalidRequest", &format!("Invalid name: {why}."));
    }
    if let Some(other) = st.child_named(&new_parent, &new_name) {
        if other != item.id {
            match query_map(&req.path)
                .get("@microsoft.graph.conflictBehavior")
                .map(String::as_str)
            {
                Some("replace") => st.delete_tree(&other),
                _ => {
                    return error(
                        409,
                        "nameAlreadyExists",
                        "The specified item name already exists.",
                    )
                }
            }
        }
    }
    if let Some(t) = body["fileSystemInfo"]["lastModifiedDateTime"].as_str() {
        if let Ok(t) = chrono::DateTime::parse_from_rfc3339(t) {
            st.items.get_mut(&item.id).unwrap().modified = t.into();
        }
    }
    let i = st.items.get_mut(&item.id).unwrap();
    i.name = new_name;
    i.parent = Some(new_parent);
    i.etag_n += 1;
    // A folder's move is one change: its children are not listed again (delta).
    st.record(&item.id);
    let item = st.items[&item.id].clone();
    json_resp(200, st.item_json(&item, false))
}

fn copy(st: &mut State, req: &Request, addr: &Address) -> Response {
    let Ok(body) = serde_json::from_slice::<Value>(&req.body) else {
        return error(400, "invalidRequest", "Invalid JSON body.");
    };
    let src = st.items[&addr.item].clone();
    let parent = body["parentReference"]["id"]
        .as_str()
        .map(str::to_owned)
        .or(src.parent.clone())
        .unwrap_or_default();
    if !st
        .items
        .get(&parent)
        .is_some_and(|p| p.folder && !p.deleted)
    {
        return not_found();
    }
    let name = body["name"].as_str().unwrap_or(&src.name).to_owned();
    if let Some(existing) = st.child_named(&parent, &name) {
        let behaviour = query_map(&req.path)
            .get("@microsoft.graph.conflictBehavior")
            .cloned();
        match behaviour.as_deref() {
            Some("replace") if existing != src.id => st.delete_tree(&existing),
            _ => {
                return error(
                    409,
                    "nameAlreadyExists",
                    "The specified item name already exists.",
                )
            }
        }
    }
    fn copy_tree(st: &mut State, src: &Item, parent: &str, name: &str) -> String {
        let drive = st.items[parent].drive.clone();
        let id = st.insert(&drive, parent, name, src.folder, src.content.clone());
        let kids: Vec<Item> = st.children(&src.id).into_iter().cloned().collect();
        for k in kids {
            copy_tree(st, &k, &id, &k.name);
        }
        id
    }
    let result = copy_tree(st, &src, &parent, &name);
    let mid = random(36);
    st.copies.insert(
        mid.clone(),
        Copy {
            result,
            polled: false,
        },
    );
    Response::new(202, "").header("Location", format!("{}/monitor/{mid}", st.base))
}

fn monitor(st: &mut State, mid: &str) -> Response {
    let Some(c) = st.copies.get_mut(mid) else {
        return not_found();
    };
    // The first look finds it in progress, as a real copy would be for a moment.
    if !c.polled {
        c.polled = true;
        return json_resp(
            202,
            json!({"operation": "itemCopy", "percentageComplete": 50.0, "status": "inProgress"}),
        );
    }
    json_resp(
        200,
        json!({"operation": "itemCopy", "percentageComplete": 100.0, "status": "completed", "resourceId": c.result}),
    )
}

fn delta(
    st: &mut State,
    faults: &FaultQueue<Fault>,
    addr: &Address,
    q: &HashMap<String, String>,
    shortcuts: bool,
) -> Response {
    st.stats.delta_calls += 1;
    if st.items[&addr.item].parent.is_some() && st.cfg.flavour == Flavour::Business {
        return error(
            400,
            "invalidRequest",
            "Delta is only supported on the root of a drive.",
        );
    }
    let drive = addr.drive.clone();
    if faults.take(|f| *f == Fault::ResyncDelta).is_some() {
        let restart = format!("{}/v1.0/drives/{drive}/root/delta", st.base);
        return error_with_inner(
            410,
            "resyncRequired",
            "Resync required. Replace any local items with the server's version.",
            Some("resyncChangesApplyDifferences"),
        )
        .header("Location", restart);
    }
    let link = |st: &mut State, after: u64, offset: usize| {
        let tok = random(32);
        st.deltas
            .insert(tok.clone(), (drive.clone(), after, offset));
        format!("{}/v1.0/drives/{drive}/root/delta?token={tok}", st.base)
    };
    let latest = st.next_change;
    let (after, offset) = match q.get("token").map(String::as_str) {
        Some("latest") => {
            let l = link(st, latest, 0);
            return json_resp(200, json!({"value": [], "@odata.deltaLink": l}));
        }
        Some(tok) => match st.deltas.get(tok) {
            Some((d, after, off)) if *d == drive => (*after, *off),
            _ => {
                return error_with_inner(
                    410,
                    "resyncRequired",
                    "The delta token is not valid.",
                    Some("resyncChangesApplyDifferences"),
                )
            }
        },
        // No token: the whole drive, root first.
        None => (0, 0),
    };
    // The latest state of each item changed since `after`, in the order of its last change.
    let mut last: Vec<(u64, String)> = Vec::new();
    let mut seen = std::collections::HashSet::new();
    for (n, id) in st.changes.iter().rev() {
        if *n <= after {
            break;
        }
        if st.items.get(id).is_some_and(|i| i.drive == drive) && seen.insert(id.clone()) {
            last.push((*n, id.clone()));
        }
    }
    last.reverse();
    if after == 0 {
        let root = st.drives[&drive].root.clone();
        if seen.insert(root.clone()) {
            last.insert(0, (0, root));
        }
    }
    let page = st.cfg.delta_page.max(1);
    let chunk: Vec<String> = last
        .iter()
        .skip(offset)
        .take(page)
        .map(|(_, id)| id.clone())
        .collect();
    let mut values = Vec::new();
    for id in &chunk {
        let item = st.items[id].clone();
        if item.shortcut.is_some() && !shortcuts {
            continue;
        }
        values.push(st.item_json(&item, true));
        if st.cfg.repeat_in_delta {
            values.push(st.item_json(&item, true));
        }
    }
    let mut out = json!({"value": values});
    if offset + page < last.len() {
        out["@odata.nextLink"] = json!(link(st, after, offset + page));
    } else {
        out["@odata.deltaLink"] = json!(link(st, latest, 0));
    }
    json_resp(200, out)
}

fn versions(st: &mut State, id: &str) -> Response {
    let item = &st.items[id];
    if item.folder {
        return error(400, "invalidRequest", "Folders have no versions.");
    }
    // Newest first, the current content being the newest version.
    let mut v = vec![json!({
        "id": format!("{}.0", item.versions.len() + 1),
        "lastModifiedDateTime": rfc3339(item.modified),
        "size": item.content.len(),
        "lastModifiedBy": {"user": {"id": "efee1b77-fb3b-4f65-99d6-274c11914d12", "displayName": "Test User"}},
    })];
    for (i, (content, at)) in item.versions.iter().enumerate().rev() {
        v.push(json!({
            "id": format!("{}.0", i + 1),
            "lastModifiedDateTime": rfc3339(*at),
            "size": content.len(),
            "lastModifiedBy": {"user": {"id": "efee1b77-fb3b-4f65-99d6-274c11914d12", "displayName": "Test User"}},
        }));
    }
    json_resp(200, json!({"value": v}))
}

/// The index into `Item::versions` of version id "N.0" (the current one is not there).
fn version_index(st: &State, id: &str, vid: &str) -> Option<usize> {
    let n: usize = vid.strip_suffix(".0")?.parse().ok()?;
    let item = st.items.get(id)?;
    (n >= 1 && n <= item.versions.len()).then(|| n - 1)
}

/// Whether version id "N.0" is the item's current version (listed first, readable too).
fn is_current_version(st: &State, id: &str, vid: &str) -> bool {
    let n: Option<usize> = vid.strip_suffix(".0").and_then(|n| n.parse().ok());
    st.items
        .get(id)
        .is_some_and(|i| n == Some(i.versions.len() + 1))
}
