//! A strict emulator of Atlassian Cloud's read paths: Confluence REST v2 (plus the two v1
//! attachment download routes), Jira REST v3, the `api.atlassian.com` gateway, the
//! `auth.atlassian.com` OAuth 2.0 (3LO) server and the media host attachments redirect to.
//! It follows `shared/reference/readonly-sources.md` §2–3 and `provider-apis.md` §6–7, the
//! Confluence v2 OpenAPI document (`alexhokl/confluence-cli:swagger/api/openapi.yaml`
//! @c63894d = https://developer.atlassian.com/cloud/confluence/rest/v2/), the Jira v3 docs
//! mirrored in `MrRefactoring/jira.js` (@ef1506e) and `salto-io/jira-swaggers`, and replies
//! observed on real sites and quoted in public issue threads (cited where used).
//!
//! Four servers, each its own host (port): the site (`https://<site>.atlassian.net`: `/wiki/…`
//! and `/rest/…`, HTTP Basic `email:api_token` only), the gateway (`https://api.atlassian.com`:
//! `/ex/confluence/{cloudId}/wiki/…`, `/ex/jira/{cloudId}/rest/…` with OAuth bearer tokens or
//! Basic scoped API tokens, and `/oauth/token/accessible-resources`), the authorization server
//! (`/authorize`, `/oauth/token`) and the media host (`/file/{fileId}/binary?token=…`).
//!
//! What it reproduces, in short:
//! - auth refusals per host and product (401 bodies as the real ones, 403 for a bearer on the
//!   site, "scope does not match" for an OAuth token lacking the endpoint's scope);
//! - OAuth 3LO: `audience=api.atlassian.com`, PKCE optional (Atlassian does not require it),
//!   JSON or form token requests, refresh tokens only with `offline_access`, rotating refresh
//!   tokens (a used one is refused with 403 `invalid_grant`), refresh needs the client secret;
//! - Confluence v2 cursor paging (`limit` 1..=250, opaque cursors, next page in `Link` and
//!   `_links.next`, `_links.base` the site's `/wiki` on the gateway too), enum validation with
//!   the v2 error envelope, pages with ADF or storage bodies, the content tree (pages, folders,
//!   whiteboards, databases, embeds) with `childPosition`, trashed pages, pages the user may not
//!   see (404, absent from listings), attachments and their downloads via the media host;
//! - Jira v3 enhanced search (`search/jql`, token paging, `id`-only default, a JQL subset with
//!   the real error messages, unbounded queries refused), the removed `search` (410), projects,
//!   issues (old keys of moved issues resolve), attachments (303 to media, or bytes with Range);
//! - faults on demand: 429 with `Retry-After`/`X-RateLimit-Reset`/`RateLimit-Reason`, 503, 500,
//!   a dropped connection, a cut body.
#![allow(dead_code)]

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use base64::Engine;
use serde_json::{json, Map, Value};
use sha2::{Digest, Sha256};

use crate::emu::faults::FaultQueue;
use crate::emu::oauth::{BearerState, OAuthReply, OAuthServer, OAuthSettings, TokenPrefixes};
use crate::emu::range::{wanted, Wanted};
use crate::emu::server::{LoggedRequest, Reply, Request, Response, Server};
use crate::emu::text::{random_of, ALNUM, URL_SAFE};

/// The Confluence v2 listings' default page size for attachments is twice the others' (50
/// against 25 in the spec); the emulator keeps that ratio when `default_limit` changes.
const ATTACHMENT_LIMIT_FACTOR: usize = 2;
/// `search/jql` takes `maxResults` in 1..=5000 (jira.js `searchAndReconsileIssuesUsingJql.ts`:
/// "It returns max 5000 issues"; 0, -1 and 5001 refused, brekkylab/backlot errors/atlassian.py).
const JIRA_MAX_RESULTS_CEILING: i64 = 5000;
/// How long a media link's token works.
const MEDIA_TOKEN_LIFETIME: Duration = Duration::from_secs(600);
/// The account every piece of content is by (an Atlassian account id).
const ACCOUNT_ID: &str = "712020:5e3c1f52-7b8e-4c4d-9d55-0f2f6a1b9c01";
const DISPLAY_NAME: &str = "Dev User";

#[derive(Clone, Debug)]
pub struct AtlassianConfig {
    pub email: String,
    pub api_token: String,
    /// The OAuth 2.0 (3LO) app.
    pub client_id: String,
    pub client_secret: String,
    pub access_token_lifetime: Duration,
    /// Confluence's default page size (25 in the spec; attachments default to twice this).
    pub default_limit: usize,
    /// The largest `limit` Confluence takes (250 in the spec); above it answers 400.
    pub max_limit: usize,
    /// The most issues one `search/jql` page holds, whatever `maxResults` asks (the service
    /// "may return fewer items per page"); small in tests to force paging.
    pub jira_max_results: usize,
    /// Whether the media host answers `Range` with 206 (else 200 with the whole file).
    pub media_honours_range: bool,
    /// Every space gets its homepage (a root page titled like the space) when added, as real
    /// spaces have; `homepageId` names it. Off: spaces without a homepage.
    pub space_homepages: bool,
    /// Whether the web download servlet (`/wiki/download/attachments/…`, the attachments'
    /// `downloadLink`) takes API-token Basic auth. Atlassian stopped that in 2026 (CHANGE-2735:
    /// 401 with an OAuth challenge; Sanofi-IADC/konviw#671, epam/dm.ai#252,
    /// pchuri/confluence-cli#198), so off by default: the v1 REST download route works.
    pub download_servlet_accepts_basic: bool,
}

impl Default for AtlassianConfig {
    fn default() -> Self {
        AtlassianConfig {
            email: "dev@example.com".into(),
            api_token: format!("ATATT3xFfGF0{}", random_of(ALNUM, 48)),
            client_id: random_of(ALNUM, 32),
            client_secret: format!("ATOA{}", random_of(ALNUM, 56)),
            access_token_lifetime: Duration::from_secs(3600),
            default_limit: 25,
            max_limit: 250,
            jira_max_results: 100,
            media_honours_range: true,
            space_homepages: true,
            download_servlet_accepts_basic: false,
        }
    }
}

/// A failure the next API request of the site or the gateway (either product; not the OAuth
/// endpoints, not the media host) sees, once it is authenticated.
#[derive(Clone, Debug, PartialEq)]
pub enum Fault {
    /// 429 with `Retry-After`, `X-RateLimit-Reset` and, when given, `RateLimit-Reason`
    /// (Jira: `jira-burst-based`, `jira-per-issue-on-write`, quota reasons).
    RateLimited {
        retry_after_secs: u64,
        reason: Option<&'static str>,
    },
    /// 503, with `Retry-After` when given ("some transient 5XX errors are accompanied by a
    /// Retry-After header", JRACLOUD-69262 quoting the rate-limiting page).
    ServiceUnavailable { retry_after_secs: Option<u64> },
    /// The connection closes before a reply.
    Drop,
    /// The headers and half the body, then the connection closes.
    CutBody,
    /// 500.
    ServerError,
}

// ---------------------------------------------------------------------------------------
// State

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Page,
    Folder,
    Whiteboard,
    Database,
    Embed,
}

impl Kind {
    fn name(self) -> &'static str {
        match self {
            Kind::Page => "page",
            Kind::Folder => "folder",
            Kind::Whiteboard => "whiteboard",
            Kind::Database => "database",
            Kind::Embed => "embed",
        }
    }
    fn from_name(s: &str) -> Option<Kind> {
        Some(match s {
            "page" => Kind::Page,
            "folder" => Kind::Folder,
            "whiteboard" => Kind::Whiteboard,
            "database" => Kind::Database,
            "embed" => Kind::Embed,
            _ => return None,
        })
    }
    /// The v2 path segment of the kind (`/folders/{id}`).
    fn collection(self) -> &'static str {
        match self {
            Kind::Page => "pages",
            Kind::Folder => "folders",
            Kind::Whiteboard => "whiteboards",
            Kind::Database => "databases",
            Kind::Embed => "embeds",
        }
    }
    fn from_collection(s: &str) -> Option<Kind> {
        Some(match s {
            "pages" => Kind::Page,
            "folders" => Kind::Folder,
            "whiteboards" => Kind::Whiteboard,
            "databases" => Kind::Database,
            "embeds" => Kind::Embed,
            _ => return None,
        })
    }
}

struct Space {
    id: u64,
    key: String,
    name: String,
    created: SystemTime,
    homepage: Option<u64>,
}

#[derive(Clone)]
struct Revision {
    number: u32,
    title: String,
    adf: Value,
    at: SystemTime,
}

struct Node {
    id: u64,
    kind: Kind,
    space: u64,
    parent: Option<u64>,
    title: String,
    position: i64,
    trashed: bool,
    visible: bool,
    created: SystemTime,
    version: u32,
    version_at: SystemTime,
    adf: Value,
    /// Every published version of a page, oldest first (the current one last).
    history: Vec<Revision>,
    embed_url: Option<String>,
}

struct ConfAttachment {
    id: u64,
    page: u64,
    title: String,
    media_type: String,
    file_id: String,
    size: usize,
    created: SystemTime,
    trashed: bool,
}

struct Blob {
    data: Vec<u8>,
    mime: String,
    name: String,
}

struct Project {
    id: u64,
    key: String,
    name: String,
    next_number: u64,
}

struct Issue {
    id: u64,
    key: String,
    project: u64,
    summary: String,
    created: SystemTime,
    updated: SystemTime,
    deleted: bool,
    old_keys: Vec<String>,
}

struct JiraAttachment {
    id: u64,
    issue: u64,
    filename: String,
    mime: String,
    file_id: String,
    size: usize,
    created: SystemTime,
    removed: bool,
}

struct MediaToken {
    file_id: String,
    client: String,
    expires: Instant,
}

struct JqlPage {
    jql: String,
    offset: usize,
}

struct State {
    cfg: AtlassianConfig,
    site: String,
    gateway: String,
    auth: String,
    media: String,
    cloud_id: String,
    media_client: String,
    oauth: OAuthServer,
    /// Scopes of each access token issued (the kit keeps them for refresh tokens only).
    token_scopes: HashMap<String, String>,
    /// Authorization codes issued to a client that sent no PKCE challenge → the verifier the
    /// emulator made up for it (Atlassian does not require PKCE; the kit's server does).
    pkce_stand_ins: HashMap<String, String>,
    clock_base: SystemTime,
    clock_start: Instant,
    clock_offset: Duration,
    next_space_id: u64,
    next_content_id: u64,
    next_position: HashMap<(u64, Option<u64>), i64>,
    spaces: BTreeMap<u64, Space>,
    nodes: BTreeMap<u64, Node>,
    conf_attachments: BTreeMap<u64, ConfAttachment>,
    blobs: HashMap<String, Blob>,
    next_project_id: u64,
    next_issue_id: u64,
    next_jira_attachment_id: u64,
    projects: BTreeMap<u64, Project>,
    issues: BTreeMap<u64, Issue>,
    jira_attachments: BTreeMap<u64, JiraAttachment>,
    media_tokens: HashMap<String, MediaToken>,
    jql_pages: HashMap<String, JqlPage>,
}

struct Shared {
    state: Mutex<State>,
    faults: FaultQueue<Fault>,
    log: Mutex<Vec<LoggedRequest>>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Host {
    Site,
    Gateway,
    Auth,
    Media,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Product {
    Confluence,
    Jira,
}

#[derive(Clone, Debug)]
enum Principal {
    Basic,
    Bearer,
}

/// The emulator; its four servers stop when it is dropped.
pub struct AtlassianEmulator {
    cfg: AtlassianConfig,
    shared: Arc<Shared>,
    site: Server,
    gateway: Server,
    auth: Server,
    media: Server,
}

fn uuid() -> String {
    let h = random_of(b"0123456789abcdef", 32);
    format!(
        "{}-{}-4{}-a{}-{}",
        &h[0..8],
        &h[8..12],
        &h[13..16],
        &h[17..20],
        &h[20..32]
    )
}

fn millis(t: SystemTime) -> i64 {
    t.duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// Confluence's timestamps: "YYYY-MM-DDTHH:mm:ss.sssZ" (spec, `createdAt`).
fn conf_time(t: SystemTime) -> String {
    chrono::DateTime::<chrono::Utc>::from(t)
        .format("%Y-%m-%dT%H:%M:%S%.3fZ")
        .to_string()
}

/// Jira's timestamps: "2022-07-15T09:19:44.990+0000" (v3 spec examples).
fn jira_time(t: SystemTime) -> String {
    chrono::DateTime::<chrono::Utc>::from(t)
        .format("%Y-%m-%dT%H:%M:%S%.3f+0000")
        .to_string()
}

fn enc_component(s: &str) -> String {
    percent_encoding::utf8_percent_encode(s, percent_encoding::NON_ALPHANUMERIC)
        .to_string()
        .replace("%2D", "-")
        .replace("%2E", ".")
        .replace("%5F", "_")
        .replace("%7E", "~")
}

fn dec_component(s: &str) -> String {
    percent_encoding::percent_decode_str(s)
        .decode_utf8_lossy()
        .into_owned()
}

/// The query of a request target as ordered pairs (parameters may repeat).
fn query_pairs(target: &str) -> Vec<(String, String)> {
    target
        .split_once('?')
        .map(|(_, q)| {
            url::form_urlencoded::parse(q.as_bytes())
                .into_owned()
                .collect()
        })
        .unwrap_or_default()
}

fn q1<'a>(q: &'a [(String, String)], name: &str) -> Option<&'a str> {
    q.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str())
}

fn qall<'a>(q: &'a [(String, String)], name: &str) -> Vec<&'a str> {
    q.iter()
        .filter(|(k, _)| k == name)
        .map(|(_, v)| v.as_str())
        .collect()
}

/// Every value of a list parameter, whether repeated or comma-separated.
fn qlist(q: &[(String, String)], name: &str) -> Vec<String> {
    qall(q, name)
        .into_iter()
        .flat_map(|v| v.split(','))
        .map(|s| s.trim().to_owned())
        .filter(|s| !s.is_empty())
        .collect()
}

fn json_resp(status: u16, v: Value) -> Response {
    Response::new(status, v.to_string()).header("Content-Type", "application/json")
}

/// Jira names the charset on its JSON bodies ("application/json;charset=UTF-8", measured in
/// brekkylab/backlot errors/atlassian.py `JIRA_JSON_MEDIA_TYPE`).
fn jira_json(status: u16, v: Value) -> Response {
    Response::new(status, v.to_string()).header("Content-Type", "application/json;charset=UTF-8")
}

/// Jira's error collection: `{"errorMessages":[…],"errors":{}}`.
fn jira_error(status: u16, message: &str) -> Response {
    jira_json(status, json!({"errorMessages": [message], "errors": {}}))
}

/// Jira's RFC 7807 refusals (unknown endpoint, unconvertible parameter, media type), measured
/// in brekkylab/backlot errors/atlassian.py `no_endpoint`, `integer_conversion_failure`.
fn jira_problem(status: u16, title: &str, detail: &str, instance: &str) -> Response {
    Response::new(
        status,
        json!({"type": "about:blank", "title": title, "status": status, "detail": detail, "instance": instance})
            .to_string(),
    )
    .header("Content-Type", "application/problem+json;charset=UTF-8")
}

/// Confluence v2's error envelope, as observed: `{"errors":[{"status":404,"code":"NOT_FOUND",
/// "title":"Not Found","detail":null}]}` (hunyadi/md2conf#113; the 409 in
/// community.developer.atlassian.com/t/98344; the cursor 400 in PipedreamHQ/pipedream#15776).
fn conf_error(status: u16, code: &str, title: &str, detail: Option<&str>) -> Response {
    json_resp(
        status,
        json!({"errors": [{"status": status, "code": code, "title": title, "detail": detail}]}),
    )
}

fn conf_not_found() -> Response {
    conf_error(404, "NOT_FOUND", "Not Found", None)
}

fn conf_bad_param(title: String, detail: Option<&str>) -> Response {
    conf_error(400, "INVALID_REQUEST_PARAMETER", &title, detail)
}

fn conf_bad_type(name: &str, type_name: &str) -> Response {
    conf_bad_param(
        format!(
            "Provided value for '{name}' is not the correct type. Expected type is {type_name}."
        ),
        None,
    )
}

/// The refusal of a cursor the service cannot read (PipedreamHQ/pipedream#15776, verbatim).
fn conf_bad_cursor() -> Response {
    conf_bad_param(
        "Provided value for 'cursor' is not the correct type. Expected type is Cursor.".into(),
        Some("The provided cursor was not valid. You can get a new valid cursor by making the original pagination request again."),
    )
}

fn media_type_description(mime: &str) -> &'static str {
    match mime {
        "application/pdf" => "PDF Document",
        "image/png" => "PNG Image",
        "image/jpeg" => "JPEG Image",
        "image/gif" => "GIF Image",
        "text/plain" => "Text File",
        "application/zip" => "Zip Archive",
        "application/json" => "JSON File",
        _ => "File",
    }
}

fn mime_of(filename: &str) -> &'static str {
    let ext = filename
        .rsplit_once('.')
        .map(|(_, e)| e.to_ascii_lowercase())
        .unwrap_or_default();
    match ext.as_str() {
        "png" => "image/png",
        "jpg" | "jpeg" => "image/jpeg",
        "gif" => "image/gif",
        "pdf" => "application/pdf",
        "txt" | "log" => "text/plain",
        "json" => "application/json",
        "zip" => "application/zip",
        "csv" => "text/csv",
        _ => "application/octet-stream",
    }
}

fn xml_escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

impl State {
    fn now(&self) -> SystemTime {
        let t = self.clock_base + self.clock_start.elapsed() + self.clock_offset;
        // Millisecond precision, as both products report.
        SystemTime::UNIX_EPOCH + Duration::from_millis(millis(t) as u64)
    }

    fn wiki_base(&self) -> String {
        format!("{}/wiki", self.site)
    }

    fn next_content(&mut self) -> u64 {
        self.next_content_id += 1;
        self.next_content_id
    }

    fn take_position(&mut self, space: u64, parent: Option<u64>) -> i64 {
        let p = self.next_position.entry((space, parent)).or_insert(0);
        let v = *p;
        *p += 1;
        v
    }

    /// A node is visible when it and every ancestor are (view restrictions are inherited).
    fn node_visible(&self, id: u64) -> bool {
        let mut cur = Some(id);
        let mut hops = 0;
        while let Some(c) = cur {
            let Some(n) = self.nodes.get(&c) else {
                return false;
            };
            if !n.visible {
                return false;
            }
            cur = n.parent;
            hops += 1;
            if hops > 10_000 {
                return false;
            }
        }
        true
    }

    fn live(&self, n: &Node) -> bool {
        !n.trashed && self.node_visible(n.id)
    }

    fn insert_node(
        &mut self,
        kind: Kind,
        space: u64,
        parent: Option<u64>,
        title: &str,
        adf: Value,
    ) -> u64 {
        assert!(self.spaces.contains_key(&space), "no space {space}");
        if let Some(p) = parent {
            let pn = self.nodes.get(&p).expect("no such parent");
            assert_eq!(pn.space, space, "the parent is in another space");
        }
        let id = self.next_content();
        let now = self.now();
        let position = self.take_position(space, parent);
        let history = if kind == Kind::Page {
            vec![Revision {
                number: 1,
                title: title.to_owned(),
                adf: adf.clone(),
                at: now,
            }]
        } else {
            Vec::new()
        };
        self.nodes.insert(
            id,
            Node {
                id,
                kind,
                space,
                parent,
                title: title.to_owned(),
                position,
                trashed: false,
                visible: true,
                created: now,
                version: 1,
                version_at: now,
                adf,
                history,
                embed_url: (kind == Kind::Embed)
                    .then(|| format!("https://www.example.com/embedded/{id}")),
            },
        );
        id
    }

    fn bump(&mut self, id: u64) {
        let now = self.now();
        let n = self.nodes.get_mut(&id).expect("node");
        n.version += 1;
        n.version_at = now;
        if n.kind == Kind::Page {
            n.history.push(Revision {
                number: n.version,
                title: n.title.clone(),
                adf: n.adf.clone(),
                at: now,
            });
        }
    }

    fn move_node(&mut self, id: u64, parent: Option<u64>) {
        let space = self.nodes[&id].space;
        if let Some(p) = parent {
            assert_eq!(
                self.nodes[&p].space, space,
                "the new parent is in another space"
            );
            let mut cur = Some(p);
            while let Some(c) = cur {
                assert_ne!(c, id, "a page cannot move below itself");
                cur = self.nodes[&c].parent;
            }
        }
        let position = self.take_position(space, parent);
        let n = self.nodes.get_mut(&id).unwrap();
        n.parent = parent;
        n.position = position;
        self.bump(id);
    }

    fn space_key(&self, space: u64) -> String {
        self.spaces
            .get(&space)
            .map(|s| s.key.clone())
            .unwrap_or_default()
    }

    fn new_media_link(&mut self, file_id: &str, name: &str) -> String {
        let header = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .encode(br#"{"alg":"HS256","typ":"JWT"}"#);
        let claims = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(
            json!({"iss": self.media_client, "access": {format!("urn:filestore:file:{file_id}"): ["read"]}, "nbf": millis(self.now()) / 1000})
                .to_string(),
        );
        let token = format!("{header}.{claims}.{}", random_of(URL_SAFE, 43));
        self.media_tokens.insert(
            token.clone(),
            MediaToken {
                file_id: file_id.to_owned(),
                client: self.media_client.clone(),
                expires: Instant::now() + MEDIA_TOKEN_LIFETIME,
            },
        );
        format!(
            "{}/file/{file_id}/binary?token={}&client={}&dl=true&name={}",
            self.media,
            enc_component(&token),
            self.media_client,
            enc_component(name)
        )
    }

    // --- Confluence JSON --------------------------------------------------------------

    fn tiny(id: u64) -> String {
        let bytes = id.to_le_bytes();
        let len = bytes.iter().rposition(|b| *b != 0).map_or(1, |i| i + 1);
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(&bytes[..len])
    }

    fn node_webui(&self, n: &Node) -> String {
        let key = self.space_key(n.space);
        match n.kind {
            Kind::Page => {
                let title: String =
                    url::form_urlencoded::byte_serialize(n.title.as_bytes()).collect();
                format!("/spaces/{key}/pages/{}/{title}", n.id)
            }
            other => format!("/spaces/{key}/{}/{}", other.name(), n.id),
        }
    }

    fn version_json(number: u32, at: SystemTime) -> Value {
        json!({"createdAt": conf_time(at), "message": "", "number": number, "minorEdit": false, "authorId": ACCOUNT_ID})
    }

    fn parent_fields(&self, n: &Node) -> (Value, Value) {
        match n.parent.and_then(|p| self.nodes.get(&p)) {
            Some(p) => (json!(p.id.to_string()), json!(p.kind.name())),
            None => (Value::Null, Value::Null),
        }
    }

    fn body_json(&self, adf: &Value, format: Option<&str>) -> Value {
        let Some(f) = format else {
            return json!({});
        };
        let value = match f {
            "atlas_doc_format" => adf.to_string(),
            _ => self.render_storage(adf),
        };
        let mut m = Map::new();
        m.insert(f.to_owned(), json!({"value": value, "representation": f}));
        Value::Object(m)
    }

    /// A page as the v2 API has it (`PageBulk` in listings, `PageSingle` alone).
    fn page_json(
        &self,
        n: &Node,
        body_format: Option<&str>,
        include_version: bool,
        revision: Option<&Revision>,
    ) -> Value {
        let (parent_id, parent_type) = self.parent_fields(n);
        let (title, adf, number, at) = match revision {
            Some(r) => (r.title.clone(), &r.adf, r.number, r.at),
            None => (n.title.clone(), &n.adf, n.version, n.version_at),
        };
        let mut v = json!({
            "id": n.id.to_string(),
            "status": if n.trashed { "trashed" } else { "current" },
            "title": title,
            "spaceId": n.space.to_string(),
            "parentId": parent_id,
            "parentType": parent_type,
            "position": n.position,
            "authorId": ACCOUNT_ID,
            "ownerId": ACCOUNT_ID,
            "lastOwnerId": Value::Null,
            "createdAt": conf_time(n.created),
            "body": self.body_json(adf, body_format),
            "_links": {
                "webui": self.node_webui(n),
                "editui": format!("/pages/resumedraft.action?draftId={}", n.id),
                "tinyui": format!("/x/{}", Self::tiny(n.id)),
            },
        });
        if include_version {
            v["version"] = Self::version_json(number, at);
        }
        v
    }

    /// A folder, whiteboard, database or embed (`FolderSingle` and its siblings).
    fn node_json(&self, n: &Node) -> Value {
        let (parent_id, parent_type) = self.parent_fields(n);
        let mut links = json!({"webui": self.node_webui(n)});
        if n.kind == Kind::Whiteboard {
            links["editui"] = json!(self.node_webui(n));
        }
        let mut v = json!({
            "id": n.id.to_string(),
            "type": n.kind.name(),
            "status": if n.trashed { "trashed" } else { "current" },
            "title": n.title,
            "parentId": parent_id,
            "parentType": parent_type,
            "position": n.position,
            "authorId": ACCOUNT_ID,
            "ownerId": ACCOUNT_ID,
            "createdAt": conf_time(n.created),
            "spaceId": n.space.to_string(),
            "version": Self::version_json(n.version, n.version_at),
            "_links": links,
        });
        if let Some(u) = &n.embed_url {
            v["embedUrl"] = json!(u);
        }
        v
    }

    fn child_json(&self, n: &Node) -> Value {
        json!({
            "id": n.id.to_string(),
            "status": "current",
            "title": n.title,
            "type": n.kind.name(),
            "spaceId": n.space.to_string(),
            "childPosition": n.position,
        })
    }

    fn space_json(&self, s: &Space, description: Option<&str>, icon: bool) -> Value {
        let personal = s.key.starts_with('~');
        let mut v = json!({
            "id": s.id.to_string(),
            "key": s.key,
            "name": s.name,
            "type": if personal { "personal" } else { "global" },
            "status": "current",
            "authorId": ACCOUNT_ID,
            "createdAt": conf_time(s.created),
            "homepageId": s.homepage.map(|h| h.to_string()),
            "spaceOwnerId": ACCOUNT_ID,
            "currentActiveAlias": s.key,
            "_links": {"webui": format!("/spaces/{}", s.key)},
        });
        if let Some(f) = description {
            v["description"] = json!({f: {"value": "", "representation": f}});
        }
        if icon {
            v["icon"] = json!({
                "path": "/wiki/aa-avatar/default-space-icon.png",
                "apiDownloadLink": format!("/wiki/rest/api/space/{}/icon", s.key),
            });
        }
        v
    }

    fn download_link(a: &ConfAttachment) -> String {
        format!(
            "/download/attachments/{}/{}?version=1&modificationDate={}&cacheVersion=1&api=v2",
            a.page,
            enc_component(&a.title),
            millis(a.created)
        )
    }

    fn conf_attachment_json(&self, a: &ConfAttachment) -> Value {
        let webui = format!(
            "/pages/viewpageattachments.action?pageId={}&preview=%2F{}%2Fatt{}%2F{}",
            a.page,
            a.page,
            a.id,
            enc_component(&a.title)
        );
        let download = Self::download_link(a);
        json!({
            "id": format!("att{}", a.id),
            "status": if a.trashed { "trashed" } else { "current" },
            "title": a.title,
            "createdAt": conf_time(a.created),
            "pageId": a.page.to_string(),
            "mediaType": a.media_type,
            "mediaTypeDescription": media_type_description(&a.media_type),
            "comment": "",
            "fileId": a.file_id,
            "fileSize": a.size,
            "webuiLink": webui,
            "downloadLink": download,
            "version": Self::version_json(1, a.created),
            "_links": {"webui": webui, "download": download},
        })
    }

    /// A plausible storage-format (XHTML) rendering of an ADF document.
    fn render_storage(&self, adf: &Value) -> String {
        let mut out = String::new();
        self.render_children(adf, &mut out);
        out
    }

    fn render_children(&self, node: &Value, out: &mut String) {
        if let Some(children) = node.get("content").and_then(Value::as_array) {
            for c in children {
                self.render_node(c, out);
            }
        }
    }

    fn render_node(&self, n: &Value, out: &mut String) {
        let wrap = |tag: &str, out: &mut String, this: &Self| {
            out.push_str(&format!("<{tag}>"));
            this.render_children(n, out);
            out.push_str(&format!("</{tag}>"));
        };
        match n.get("type").and_then(Value::as_str).unwrap_or("") {
            "paragraph" => wrap("p", out, self),
            "heading" => {
                let level = n["attrs"]["level"].as_u64().unwrap_or(1).clamp(1, 6);
                wrap(&format!("h{level}"), out, self)
            }
            "bulletList" => wrap("ul", out, self),
            "orderedList" => wrap("ol", out, self),
            "listItem" => wrap("li", out, self),
            "blockquote" => wrap("blockquote", out, self),
            "table" => {
                out.push_str("<table><tbody>");
                self.render_children(n, out);
                out.push_str("</tbody></table>");
            }
            "tableRow" => wrap("tr", out, self),
            "tableHeader" => wrap("th", out, self),
            "tableCell" => wrap("td", out, self),
            "rule" => out.push_str("<hr />"),
            "hardBreak" => out.push_str("<br />"),
            "codeBlock" => {
                let mut text = String::new();
                if let Some(children) = n.get("content").and_then(Value::as_array) {
                    for c in children {
                        text.push_str(c["text"].as_str().unwrap_or(""));
                    }
                }
                out.push_str("<ac:structured-macro ac:name=\"code\"><ac:plain-text-body><![CDATA[");
                out.push_str(&text.replace("]]>", "]]]]><![CDATA[>"));
                out.push_str("]]></ac:plain-text-body></ac:structured-macro>");
            }
            "media" => {
                let file_id = n["attrs"]["id"].as_str().unwrap_or("");
                let name = self
                    .conf_attachments
                    .values()
                    .find(|a| a.file_id == file_id)
                    .map(|a| a.title.clone())
                    .unwrap_or_else(|| file_id.to_owned());
                out.push_str(&format!(
                    "<ac:image><ri:attachment ri:filename=\"{}\" /></ac:image>",
                    xml_escape(&name)
                ));
            }
            "text" => {
                let mut text = xml_escape(n["text"].as_str().unwrap_or(""));
                if let Some(marks) = n.get("marks").and_then(Value::as_array) {
                    for m in marks {
                        text = match m["type"].as_str().unwrap_or("") {
                            "strong" => format!("<strong>{text}</strong>"),
                            "em" => format!("<em>{text}</em>"),
                            "code" => format!("<code>{text}</code>"),
                            "strike" => format!("<s>{text}</s>"),
                            "underline" => format!("<u>{text}</u>"),
                            "link" => format!(
                                "<a href=\"{}\">{text}</a>",
                                xml_escape(m["attrs"]["href"].as_str().unwrap_or(""))
                            ),
                            _ => text,
                        };
                    }
                }
                out.push_str(&text);
            }
            _ => self.render_children(n, out),
        }
    }

    // --- Jira JSON --------------------------------------------------------------------

    fn user_json(base: &str) -> Value {
        let avatar = "https://avatar-management--avatars.us-west-2.prod.public.atl-paas.net/initials/DU-5.png";
        json!({
            "self": format!("{base}/rest/api/3/user?accountId={ACCOUNT_ID}"),
            "accountId": ACCOUNT_ID,
            "avatarUrls": {"48x48": avatar, "24x24": avatar, "16x16": avatar, "32x32": avatar},
            "displayName": DISPLAY_NAME,
            "active": true,
            "timeZone": "Etc/UTC",
            "accountType": "atlassian",
        })
    }

    fn project_json(base: &str, p: &Project) -> Value {
        let avatar = |size: &str| {
            format!("{base}/rest/api/3/universal_avatar/view/type/project/avatar/10400?size={size}")
        };
        json!({
            "expand": "description,lead,issueTypes,url,projectKeys,permissions,insight",
            "self": format!("{base}/rest/api/3/project/{}", p.id),
            "id": p.id.to_string(),
            "key": p.key,
            "name": p.name,
            "avatarUrls": {"48x48": avatar("large"), "24x24": avatar("small"), "16x16": avatar("xsmall"), "32x32": avatar("medium")},
            "projectTypeKey": "software",
            "simplified": false,
            "style": "classic",
            "isPrivate": false,
            "properties": {},
        })
    }

    /// An attachment as issues carry it (`Attachment`: the id a string); the metadata
    /// endpoint's `AttachmentMetadata` has it as a number (jira.js models, v3 spec example).
    fn jira_attachment_json(base: &str, a: &JiraAttachment, numeric_id: bool) -> Value {
        let mut v = json!({
            "self": format!("{base}/rest/api/3/attachment/{}", a.id),
            "id": if numeric_id { json!(a.id) } else { json!(a.id.to_string()) },
            "filename": a.filename,
            "author": Self::user_json(base),
            "created": jira_time(a.created),
            "size": a.size,
            "mimeType": a.mime,
            "content": format!("{base}/rest/api/3/attachment/content/{}", a.id),
        });
        if a.mime.starts_with("image/") {
            v["thumbnail"] = json!(format!("{base}/rest/api/3/attachment/thumbnail/{}", a.id));
        }
        v
    }

    fn issue_attachments(&self, issue: u64) -> Vec<&JiraAttachment> {
        self.jira_attachments
            .values()
            .filter(|a| a.issue == issue && !a.removed)
            .collect()
    }

    fn issue_json(&self, base: &str, i: &Issue, fields: &FieldSelection) -> Value {
        if fields.id_only {
            return json!({"id": i.id.to_string()});
        }
        let mut f = Map::new();
        for name in &fields.names {
            let v = match name.as_str() {
                "summary" => json!(i.summary),
                "updated" => json!(jira_time(i.updated)),
                "created" => json!(jira_time(i.created)),
                "project" => {
                    let p = &self.projects[&i.project];
                    let mut pj = Self::project_json(base, p);
                    let o = pj.as_object_mut().unwrap();
                    o.remove("expand");
                    o.remove("properties");
                    o.remove("isPrivate");
                    o.remove("style");
                    pj
                }
                "attachment" => Value::Array(
                    self.issue_attachments(i.id)
                        .into_iter()
                        .map(|a| Self::jira_attachment_json(base, a, false))
                        .collect(),
                ),
                _ => continue,
            };
            f.insert(name.clone(), v);
        }
        json!({
            "expand": "renderedFields,names,schema,operations,editmeta,changelog,versionedRepresentations",
            "id": i.id.to_string(),
            "self": format!("{base}/rest/api/3/issue/{}", i.id),
            "key": i.key,
            "fields": Value::Object(f),
        })
    }

    /// An issue by id or key (current or any old key of a moved issue), case-insensitively.
    fn find_issue(&self, id_or_key: &str) -> Option<u64> {
        if let Ok(n) = id_or_key.parse::<u64>() {
            return self.issues.get(&n).filter(|i| !i.deleted).map(|i| i.id);
        }
        let k = id_or_key.to_ascii_uppercase();
        self.issues
            .values()
            .filter(|i| !i.deleted)
            .find(|i| i.key == k || i.old_keys.contains(&k))
            .map(|i| i.id)
    }

    fn find_project(&self, id_key_or_name: &str) -> Option<u64> {
        if let Ok(n) = id_key_or_name.parse::<u64>() {
            if self.projects.contains_key(&n) {
                return Some(n);
            }
        }
        self.projects
            .values()
            .find(|p| {
                p.key.eq_ignore_ascii_case(id_key_or_name)
                    || p.name.eq_ignore_ascii_case(id_key_or_name)
            })
            .map(|p| p.id)
    }

    fn add_blob(&mut self, file_id: &str, data: &[u8], mime: &str, name: &str) {
        self.blobs.insert(
            file_id.to_owned(),
            Blob {
                data: data.to_vec(),
                mime: mime.to_owned(),
                name: name.to_owned(),
            },
        );
    }
}

// ---------------------------------------------------------------------------------------
// The emulator's public face

impl AtlassianEmulator {
    pub fn start(cfg: AtlassianConfig) -> Self {
        let oauth = OAuthServer::new(OAuthSettings {
            client_id: cfg.client_id.clone(),
            client_secret: cfg.client_secret.clone(),
            access_token_lifetime: cfg.access_token_lifetime,
            // "Rotating refresh tokens": a new refresh token with every refresh, the old one
            // invalid (https://developer.atlassian.com/cloud/oauth/getting-started/refresh-tokens).
            rotate_refresh_tokens: true,
            device_scopes: None,
            prefixes: TokenPrefixes {
                code: "eyJhbGciOiJkaXIiLCJjb2RlIjp9.",
                access: "eyJraWQiOiJhdXRoLmF0bGFzc2lhbi5jb20tQUNDRVNTIn0.",
                refresh: "eyJraWQiOiJhdXRoLmF0bGFzc2lhbi5jb20tUkVGUkVTSCJ9.",
                device: "device-",
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
        let st = State {
            cfg: cfg.clone(),
            site: String::new(),
            gateway: String::new(),
            auth: String::new(),
            media: String::new(),
            cloud_id: uuid(),
            media_client: uuid(),
            oauth,
            token_scopes: HashMap::new(),
            pkce_stand_ins: HashMap::new(),
            clock_base: SystemTime::now(),
            clock_start: Instant::now(),
            clock_offset: Duration::ZERO,
            next_space_id: 32_768,
            next_content_id: 98_304,
            next_position: HashMap::new(),
            spaces: BTreeMap::new(),
            nodes: BTreeMap::new(),
            conf_attachments: BTreeMap::new(),
            blobs: HashMap::new(),
            next_project_id: 10_000,
            next_issue_id: 10_000,
            next_jira_attachment_id: 10_000,
            projects: BTreeMap::new(),
            issues: BTreeMap::new(),
            jira_attachments: BTreeMap::new(),
            media_tokens: HashMap::new(),
            jql_pages: HashMap::new(),
        };
        let shared = Arc::new(Shared {
            state: Mutex::new(st),
            faults: FaultQueue::default(),
            log: Mutex::new(Vec::new()),
        });
        let serve = |host: Host| {
            let s = shared.clone();
            Server::start(move |req| handle(&s, host, req))
        };
        let site = serve(Host::Site);
        let gateway = serve(Host::Gateway);
        let auth = serve(Host::Auth);
        let media = serve(Host::Media);
        {
            let mut st = shared.state.lock().unwrap();
            st.site = site.base.clone();
            st.gateway = gateway.base.clone();
            st.auth = auth.base.clone();
            st.media = media.base.clone();
        }
        AtlassianEmulator {
            cfg,
            shared,
            site,
            gateway,
            auth,
            media,
        }
    }

    fn st(&self) -> std::sync::MutexGuard<'_, State> {
        self.shared.state.lock().unwrap()
    }

    pub fn config(&self) -> &AtlassianConfig {
        &self.cfg
    }
    /// `https://<site>.atlassian.net`'s stand-in.
    pub fn site_url(&self) -> String {
        self.site.base.clone()
    }
    /// `https://api.atlassian.com`'s stand-in.
    pub fn gateway_url(&self) -> String {
        self.gateway.base.clone()
    }
    /// `https://auth.atlassian.com/authorize`'s stand-in.
    pub fn auth_url(&self) -> String {
        format!("{}/authorize", self.auth.base)
    }
    /// `https://auth.atlassian.com/oauth/token`'s stand-in.
    pub fn token_url(&self) -> String {
        format!("{}/oauth/token", self.auth.base)
    }
    /// The media host (`https://api.media.atlassian.com`'s stand-in).
    pub fn media_url(&self) -> String {
        self.media.base.clone()
    }
    pub fn cloud_id(&self) -> String {
        self.st().cloud_id.clone()
    }
    /// Tokens as after a login with `scope` (space-separated): (access, refresh).
    pub fn issue_tokens(&self, scope: &str) -> (String, String) {
        let mut st = self.st();
        let (access, refresh) = st.oauth.issue_tokens(scope);
        st.token_scopes.insert(access.clone(), scope.to_owned());
        (access, refresh)
    }
    pub fn expire_all_access_tokens(&self) {
        self.st().oauth.expire_all_access_tokens();
    }
    /// Every code, token and verifier the authorization server handed out or saw, for
    /// tests that look for them where they must not be (logs, the vault in clear).
    pub fn secrets(&self) -> Vec<String> {
        self.st().oauth.secrets().to_vec()
    }
    pub fn refresh_token_valid(&self, token: &str) -> bool {
        self.st().oauth.refresh_token_valid(token)
    }
    /// Every request to the four hosts, in arrival order (the `host` header tells which).
    pub fn requests(&self) -> Vec<LoggedRequest> {
        self.shared.log.lock().unwrap().clone()
    }
    pub fn inject(&self, fault: Fault, times: usize) {
        self.shared.faults.inject(fault, times);
    }
    pub fn pending_faults(&self) -> usize {
        self.shared.faults.pending()
    }

    // --- Confluence content -------------------------------------------------------------

    pub fn add_space(&self, key: &str, name: &str) -> String {
        let mut st = self.st();
        st.next_space_id += 1;
        let id = st.next_space_id;
        let now = st.now();
        st.spaces.insert(
            id,
            Space {
                id,
                key: key.to_owned(),
                name: name.to_owned(),
                created: now,
                homepage: None,
            },
        );
        if st.cfg.space_homepages {
            let home = st.insert_node(
                Kind::Page,
                id,
                None,
                name,
                json!({"type": "doc", "version": 1, "content": []}),
            );
            st.spaces.get_mut(&id).unwrap().homepage = Some(home);
        }
        id.to_string()
    }
    /// The space's homepage (made with it when `space_homepages` is on).
    pub fn homepage_id(&self, space_id: &str) -> Option<String> {
        let st = self.st();
        st.spaces
            .get(&space_id.parse().ok()?)
            .and_then(|s| s.homepage)
            .map(|h| h.to_string())
    }
    pub fn add_page(
        &self,
        space_id: &str,
        parent: Option<&str>,
        title: &str,
        adf: Value,
    ) -> String {
        let mut st = self.st();
        let parent = parent.map(|p| p.parse::<u64>().expect("numeric parent id"));
        st.insert_node(
            Kind::Page,
            space_id.parse().expect("space id"),
            parent,
            title,
            adf,
        )
        .to_string()
    }
    pub fn update_page(&self, page_id: &str, title: Option<&str>, adf: Option<Value>) {
        let mut st = self.st();
        let id: u64 = page_id.parse().expect("page id");
        {
            let n = st.nodes.get_mut(&id).expect("page");
            if let Some(t) = title {
                n.title = t.to_owned();
            }
            if let Some(a) = adf {
                n.adf = a;
            }
        }
        st.bump(id);
    }
    pub fn move_page(&self, page_id: &str, new_parent: Option<&str>) {
        let mut st = self.st();
        let parent = new_parent.map(|p| p.parse::<u64>().expect("parent id"));
        st.move_node(page_id.parse().expect("page id"), parent);
    }
    /// The page goes to the trash (status "trashed", version + 1). Its children stay live and
    /// move up to its parent — Confluence trashes a page, not its subtree (clients that want a
    /// whole tree gone delete the children first, psmodule.io Remove-ConfluencePage -Recurse;
    /// pages left behind "will be moved to their closest parents which are not deleted",
    /// bitbucket.org/andyng90/delete-child-pages) — each with version + 1, as a move.
    pub fn trash_page(&self, page_id: &str) {
        let mut st = self.st();
        let id: u64 = page_id.parse().expect("page id");
        st.nodes.get_mut(&id).expect("page").trashed = true;
        st.bump(id);
        let parent = st.nodes[&id].parent;
        let kids: Vec<u64> = st
            .nodes
            .values()
            .filter(|n| n.parent == Some(id))
            .map(|n| (n.position, n.id))
            .collect::<BTreeSet<_>>()
            .into_iter()
            .map(|(_, i)| i)
            .collect();
        for k in kids {
            st.move_node(k, parent);
        }
    }
    pub fn add_folder(&self, space_id: &str, parent: Option<&str>, title: &str) -> String {
        self.add_content(space_id, parent, "folder", title)
    }
    pub fn add_content(
        &self,
        space_id: &str,
        parent: Option<&str>,
        kind: &str,
        title: &str,
    ) -> String {
        let kind = Kind::from_name(kind).expect("folder, whiteboard, database or embed");
        let mut st = self.st();
        let parent = parent.map(|p| p.parse::<u64>().expect("parent id"));
        st.insert_node(
            kind,
            space_id.parse().expect("space id"),
            parent,
            title,
            Value::Null,
        )
        .to_string()
    }
    /// (attachment id "att…", fileId).
    pub fn add_attachment(
        &self,
        page_id: &str,
        title: &str,
        media_type: &str,
        data: &[u8],
    ) -> (String, String) {
        let mut st = self.st();
        let page: u64 = page_id.parse().expect("page id");
        assert!(st.nodes.contains_key(&page), "no page {page}");
        let id = st.next_content();
        let file_id = uuid();
        let now = st.now();
        st.add_blob(&file_id, data, media_type, title);
        st.conf_attachments.insert(
            id,
            ConfAttachment {
                id,
                page,
                title: title.to_owned(),
                media_type: media_type.to_owned(),
                file_id: file_id.clone(),
                size: data.len(),
                created: now,
                trashed: false,
            },
        );
        (format!("att{id}"), file_id)
    }
    /// The attachment goes to the trash (listed only with `status=trashed`).
    pub fn remove_attachment(&self, attachment_id: &str) {
        let id: u64 = attachment_id
            .trim_start_matches("att")
            .parse()
            .expect("attachment id");
        self.st()
            .conf_attachments
            .get_mut(&id)
            .expect("attachment")
            .trashed = true;
    }
    /// A page the user may not see (view restriction, inherited by its descendants): 404
    /// everywhere, absent from listings.
    pub fn set_page_visible(&self, page_id: &str, visible: bool) {
        let id: u64 = page_id.parse().expect("page id");
        self.st().nodes.get_mut(&id).expect("page").visible = visible;
    }

    // --- Jira content -------------------------------------------------------------------

    pub fn add_project(&self, key: &str, name: &str) -> String {
        let mut st = self.st();
        st.next_project_id += 1;
        let id = st.next_project_id;
        st.projects.insert(
            id,
            Project {
                id,
                key: key.to_ascii_uppercase(),
                name: name.to_owned(),
                next_number: 1,
            },
        );
        id.to_string()
    }
    /// (id, key).
    pub fn add_issue(&self, project_key: &str, summary: &str) -> (String, String) {
        let mut st = self.st();
        let pid = st.find_project(project_key).expect("project");
        st.next_issue_id += 1;
        let id = st.next_issue_id;
        let p = st.projects.get_mut(&pid).unwrap();
        let key = format!("{}-{}", p.key, p.next_number);
        p.next_number += 1;
        let now = st.now();
        st.issues.insert(
            id,
            Issue {
                id,
                key: key.clone(),
                project: pid,
                summary: summary.to_owned(),
                created: now,
                updated: now,
                deleted: false,
                old_keys: Vec::new(),
            },
        );
        (id.to_string(), key)
    }
    pub fn set_summary(&self, issue_id: &str, summary: &str) {
        let mut st = self.st();
        let now = st.now();
        let i = st
            .issues
            .get_mut(&issue_id.parse().expect("issue id"))
            .expect("issue");
        i.summary = summary.to_owned();
        i.updated = now;
    }
    /// The issue moves to another project: a new key, the same id; the old key still resolves.
    pub fn move_issue(&self, issue_id: &str, project_key: &str) -> String {
        let mut st = self.st();
        let pid = st.find_project(project_key).expect("project");
        let p = st.projects.get_mut(&pid).unwrap();
        let key = format!("{}-{}", p.key, p.next_number);
        p.next_number += 1;
        let now = st.now();
        let i = st
            .issues
            .get_mut(&issue_id.parse().expect("issue id"))
            .expect("issue");
        let old = std::mem::replace(&mut i.key, key.clone());
        i.old_keys.push(old);
        i.project = pid;
        i.updated = now;
        key
    }
    pub fn delete_issue(&self, issue_id: &str) {
        let mut st = self.st();
        st.issues
            .get_mut(&issue_id.parse().expect("issue id"))
            .expect("issue")
            .deleted = true;
    }
    pub fn add_jira_attachment(&self, issue_id: &str, filename: &str, data: &[u8]) -> String {
        let mut st = self.st();
        let issue: u64 = issue_id.parse().expect("issue id");
        let now = st.now();
        st.issues.get_mut(&issue).expect("issue").updated = now;
        st.next_jira_attachment_id += 1;
        let id = st.next_jira_attachment_id;
        let file_id = uuid();
        let mime = mime_of(filename).to_owned();
        st.add_blob(&file_id, data, &mime, filename);
        st.jira_attachments.insert(
            id,
            JiraAttachment {
                id,
                issue,
                filename: filename.to_owned(),
                mime,
                file_id,
                size: data.len(),
                created: now,
                removed: false,
            },
        );
        id.to_string()
    }
    pub fn remove_jira_attachment(&self, attachment_id: &str) {
        let mut st = self.st();
        let now = st.now();
        let a = st
            .jira_attachments
            .get_mut(&attachment_id.parse().expect("attachment id"))
            .expect("attachment");
        a.removed = true;
        let issue = a.issue;
        st.issues.get_mut(&issue).unwrap().updated = now;
    }
    /// Moves the emulator's clock (every `createdAt`, `updated`, JQL's relative dates).
    pub fn advance_clock(&self, by: Duration) {
        self.st().clock_offset += by;
    }
    /// The emulator's clock now.
    pub fn now(&self) -> SystemTime {
        self.st().now()
    }
}

// ---------------------------------------------------------------------------------------
// Routing

fn handle(sh: &Shared, host: Host, req: &Request) -> Reply {
    sh.log.lock().unwrap().push(LoggedRequest {
        method: req.method.clone(),
        path: req.path.clone(),
        headers: req.headers.clone(),
        body_len: req.body.len(),
    });
    let mut st = sh.state.lock().unwrap();
    match host {
        Host::Auth => auth_host(&mut st, req).into(),
        Host::Media => media_host(&mut st, req).into(),
        Host::Site | Host::Gateway => {
            let now = st.now();
            with_date(api_host(&mut st, &sh.faults, host, req), now)
        }
    }
}

/// The `Date` header from the emulator's own clock (RFC 9110 §6.6.1), so that a client
/// reading the server's time (Jira's relative JQL dates count from it) sees the clock the
/// emulator's `updated` stamps come from, advanced or not.
fn with_date(reply: Reply, now: SystemTime) -> Reply {
    let date = chrono::DateTime::<chrono::Utc>::from(now)
        .format("%a, %d %b %Y %H:%M:%S GMT")
        .to_string();
    match reply {
        Reply::Send(r) => Reply::Send(r.header("Date", date)),
        Reply::Cut(r, n) => Reply::Cut(r.header("Date", date), n),
        Reply::After(d, inner) => Reply::After(d, Box::new(with_date(*inner, now))),
        other => other,
    }
}

/// What an API handler needs to know of the request.
struct Cx<'a> {
    req: &'a Request,
    /// The product's own path: `/wiki/…` or `/rest/…`.
    path: String,
    /// The raw query (no `?`).
    raw_query: String,
    q: Vec<(String, String)>,
    /// Where Jira's `self` links point: the site, or `{gateway}/ex/jira/{cloudId}`.
    api_base: String,
    via_gateway: bool,
    principal: Principal,
}

fn html_not_found() -> Response {
    Response::new(
        404,
        "<!DOCTYPE html><html><head><title>Oops, you've found a dead link.</title></head><body></body></html>",
    )
    .header("Content-Type", "text/html;charset=utf-8")
}

fn api_host(st: &mut State, faults: &FaultQueue<Fault>, host: Host, req: &Request) -> Reply {
    let path = req.path_only().to_owned();
    let raw_query = req
        .path
        .split_once('?')
        .map(|(_, q)| q.to_owned())
        .unwrap_or_default();
    let (product, product_path, api_base, via_gateway) = match host {
        Host::Site => {
            let product = if path == "/wiki" || path.starts_with("/wiki/") {
                Product::Confluence
            } else if path.starts_with("/rest/") {
                Product::Jira
            } else {
                return html_not_found().into();
            };
            (product, path.clone(), st.site.clone(), false)
        }
        _ => {
            if path == "/oauth/token/accessible-resources" {
                return accessible_resources(st, req).into();
            }
            let segs: Vec<&str> = path.trim_start_matches('/').splitn(4, '/').collect();
            if segs.len() < 4 || segs[0] != "ex" {
                return gateway_not_found().into();
            }
            let product = match segs[1] {
                "confluence" => Product::Confluence,
                "jira" => Product::Jira,
                _ => return gateway_not_found().into(),
            };
            if segs[2] != st.cloud_id {
                return gateway_not_found().into();
            }
            let rest = format!("/{}", segs[3]);
            let fits = match product {
                Product::Confluence => rest.starts_with("/wiki/"),
                Product::Jira => rest.starts_with("/rest/"),
            };
            if !fits {
                return gateway_not_found().into();
            }
            let base = format!("{}/ex/{}/{}", st.gateway, segs[1], st.cloud_id);
            (product, rest, base, true)
        }
    };
    let principal = match authenticate(st, host, product, &product_path, req) {
        Ok(p) => p,
        Err(r) => return r.into(),
    };
    let cut = match faults.take(|_| true) {
        None => false,
        Some(Fault::CutBody) => true,
        Some(Fault::Drop) => return Reply::Drop,
        Some(f) => return fault_response(st, product, &f).into(),
    };
    let cx = Cx {
        req,
        path: product_path,
        q: query_pairs(&req.path),
        raw_query,
        api_base,
        via_gateway,
        principal,
    };
    let resp = match product {
        Product::Confluence => confluence(st, &cx),
        Product::Jira => jira(st, &cx),
    };
    if cut {
        // Headers and half the body, then the connection closes. (The kit's `Reply::Cut`
        // streams the part and then an error; hyper drops the connection on that error before
        // flushing, so clients see the reply end early, usually before the head arrives.)
        let n = resp.body.len() / 2;
        Reply::Cut(resp, n)
    } else {
        Reply::Send(resp)
    }
}

fn fault_response(st: &State, product: Product, f: &Fault) -> Response {
    match f {
        Fault::RateLimited {
            retry_after_secs,
            reason,
        } => {
            // "X-RateLimit-Reset … the timestamp (in ISO 8601 format) when the rate limit will
            // reset … yyyy-MM-ddTHH:mmZ" (rate-limiting page, quoted in JRACLOUD-69262).
            let reset = st.now() + Duration::from_secs(*retry_after_secs);
            let reset = chrono::DateTime::<chrono::Utc>::from(reset)
                .format("%Y-%m-%dT%H:%MZ")
                .to_string();
            let mut r = match product {
                // As a Jira Cloud site answered in 2026 (raycast/extensions#29015).
                Product::Jira => jira_json(
                    429,
                    json!({"errorMessages": ["The request has been rate-limited. Please try again later."], "errors": {}, "status": 429}),
                ),
                Product::Confluence => {
                    conf_error(429, "TOO_MANY_REQUESTS", "Too Many Requests", None)
                }
            };
            r = r
                .header("Retry-After", retry_after_secs.to_string())
                .header("X-RateLimit-Reset", reset);
            if let Some(reason) = reason {
                r = r.header("RateLimit-Reason", *reason);
            }
            r
        }
        Fault::ServiceUnavailable { retry_after_secs } => {
            let mut r = match product {
                Product::Jira => jira_error(503, "Service Unavailable"),
                Product::Confluence => {
                    conf_error(503, "SERVICE_UNAVAILABLE", "Service Unavailable", None)
                }
            };
            if let Some(s) = retry_after_secs {
                r = r.header("Retry-After", s.to_string());
            }
            r
        }
        _ => match product {
            Product::Jira => jira_json(
                500,
                json!({"errorMessages": ["Internal server error"], "errors": {}}),
            ),
            Product::Confluence => {
                conf_error(500, "INTERNAL_SERVER_ERROR", "Internal Server Error", None)
            }
        },
    }
}

fn gateway_not_found() -> Response {
    json_resp(404, json!({"code": 404, "message": "Not Found"}))
}

/// The gateway's refusal of a missing, unknown or expired bearer token.
fn gateway_unauthorized() -> Response {
    json_resp(401, json!({"code": 401, "message": "Unauthorized"}))
}

fn basic_ok(st: &State, header: &str) -> bool {
    let Some(b64) = header
        .strip_prefix("Basic ")
        .or_else(|| header.strip_prefix("basic "))
    else {
        return false;
    };
    let Ok(raw) = base64::engine::general_purpose::STANDARD.decode(b64.trim()) else {
        return false;
    };
    let s = String::from_utf8_lossy(&raw);
    match s.split_once(':') {
        Some((email, token)) => {
            email.eq_ignore_ascii_case(&st.cfg.email) && token == st.cfg.api_token
        }
        None => false,
    }
}

fn is_bearer(h: &str) -> bool {
    h.len() > 7 && h[..7].eq_ignore_ascii_case("bearer ")
}

/// The scopes an OAuth token needs for a route (any one of them), per the v2 spec's
/// `x-atlassian-oauth2-scopes`; Jira routes take the classic `read:jira-work` or a granular
/// `read:…:jira` scope.
fn route_scopes(product: Product, path: &str) -> Vec<&'static str> {
    match product {
        Product::Jira => vec!["read:jira-work"],
        Product::Confluence => {
            let v2 = path.strip_prefix("/wiki/api/v2/").unwrap_or("");
            let segs: Vec<&str> = v2.split('/').collect();
            if path.starts_with("/wiki/download/") || path.contains("/child/attachment/") {
                return vec![
                    "read:attachment:confluence",
                    "readonly:content.attachment:confluence",
                ];
            }
            if path.starts_with("/wiki/rest/api/user/") {
                return vec!["read:confluence-user", "read:user:confluence", "read:me"];
            }
            match segs.as_slice() {
                [_, _, "direct-children" | "descendants" | "children"] => {
                    vec!["read:hierarchical-content:confluence"]
                }
                ["pages", _, "attachments"] => vec!["read:attachment:confluence"],
                ["spaces", _, "pages"] | ["pages", ..] => vec!["read:page:confluence"],
                ["spaces", ..] => vec!["read:space:confluence"],
                ["folders", ..] => vec!["read:folder:confluence"],
                ["whiteboards", ..] => vec!["read:whiteboard:confluence"],
                ["databases", ..] => vec!["read:database:confluence"],
                ["embeds", ..] => vec!["read:embed:confluence"],
                _ => vec![],
            }
        }
    }
}

fn scope_ok(product: Product, path: &str, granted: &str) -> bool {
    let needed = route_scopes(product, path);
    if needed.is_empty() {
        return true;
    }
    granted.split_whitespace().any(|g| {
        needed.contains(&g)
            || (product == Product::Jira && g.starts_with("read:") && g.ends_with(":jira"))
    })
}

fn authenticate(
    st: &mut State,
    host: Host,
    product: Product,
    path: &str,
    req: &Request,
) -> Result<Principal, Response> {
    let authz = req.header("authorization").map(str::to_owned);
    if host == Host::Site {
        return match authz.as_deref() {
            Some(h) if is_bearer(h) => {
                // The site's edge reads a bearer as a Connect session JWT and refuses one it
                // cannot parse: 403, this body, bare application/json (measured on Jira
                // routes 2026-09, brekkylab/backlot errors/atlassian.py `connect_token_body`).
                Err(json_resp(
                    403,
                    json!({"error": "Failed to parse Connect Session Auth Token"}),
                ))
            }
            Some(h) if basic_ok(st, h) => Ok(Principal::Basic),
            other => Err(site_unauthorized(st, product, req, other.is_some())),
        };
    }
    match authz.as_deref() {
        Some(h) if is_bearer(h) => match st.oauth.bearer_state(Some(h)) {
            BearerState::Live => {
                let token = h[7..].trim();
                let scopes = st.token_scopes.get(token).cloned().unwrap_or_default();
                if scope_ok(product, path, &scopes) {
                    Ok(Principal::Bearer)
                } else {
                    // atlassian-api/atlassian-python-api#1618, Spenhouet/confluence-markdown-exporter#210.
                    Err(json_resp(
                        401,
                        json!({"code": 401, "message": "Unauthorized; scope does not match"}),
                    ))
                }
            }
            _ => Err(gateway_unauthorized()),
        },
        Some(h) if basic_ok(st, h) => Ok(Principal::Basic),
        _ => Err(gateway_unauthorized()),
    }
}

/// The site's 401s. Jira: "Client must be authenticated to access this resource." alone (53
/// bytes), `WWW-Authenticate: OAuth realm="<site, percent-encoded>"`, the media type following
/// `Accept` (backlot `JIRA_UNAUTHENTICATED`, measured 2026-09; gajira-login#59 shows the
/// `x-seraph-loginreason` beside it). Confluence: a credential it rejects gets the edge's
/// text/plain notice (community.developer.atlassian.com/t/55894, kovetskiy-style reports);
/// none at all gets the v2 envelope (the spec documents 401 for "missing" credentials; the body
/// is not documented).
fn site_unauthorized(st: &State, product: Product, req: &Request, presented: bool) -> Response {
    match product {
        Product::Jira => {
            let json = req
                .header("accept")
                .is_some_and(|a| a.contains("application/json"));
            let mut r = Response::new(401, "Client must be authenticated to access this resource.")
                .header(
                    "Content-Type",
                    if json {
                        "application/json;charset=UTF-8"
                    } else {
                        "text/plain;charset=UTF-8"
                    },
                )
                .header(
                    "WWW-Authenticate",
                    format!("OAuth realm=\"{}\"", enc_component(&st.site)),
                );
            if presented {
                r = r.header("X-Seraph-LoginReason", "AUTHENTICATED_FAILED");
            }
            r
        }
        Product::Confluence if presented => Response::new(
            401,
            "Basic authentication with passwords is deprecated.  For more information, see: https://developer.atlassian.com/cloud/confluence/deprecation-notice-basic-auth/\n",
        )
        .header("Content-Type", "text/plain"),
        Product::Confluence => conf_error(401, "UNAUTHORIZED", "Unauthorized", None),
    }
}

fn accessible_resources(st: &mut State, req: &Request) -> Response {
    let authz = req.header("authorization");
    if req.method != "GET" {
        return json_resp(405, json!({"code": 405, "message": "Method Not Allowed"}));
    }
    match authz {
        Some(h) if is_bearer(h) && st.oauth.bearer_state(Some(h)) == BearerState::Live => {
            let scopes: Vec<String> = st
                .token_scopes
                .get(h[7..].trim())
                .map(|s| s.split_whitespace().map(str::to_owned).collect())
                .unwrap_or_default();
            // https://developer.atlassian.com/cloud/jira/platform/oauth-2-3lo-apps/ (step 3.1).
            json_resp(
                200,
                json!([{
                    "id": st.cloud_id,
                    "url": st.site,
                    "name": "example",
                    "scopes": scopes,
                    "avatarUrl": "https://site-admin-avatar-cdn.prod.public.atl-paas.net/avatars/240/rocket.png",
                }]),
            )
        }
        _ => gateway_unauthorized(),
    }
}

// ---------------------------------------------------------------------------------------
// auth.atlassian.com

fn oauth_response(reply: OAuthReply) -> Response {
    match reply {
        OAuthReply::Json(status, v) => json_resp(status, v),
        OAuthReply::Page(status, text) => {
            Response::new(status, text).header("Content-Type", "text/html")
        }
        OAuthReply::Redirect(to) => Response::new(302, "").header("Location", to),
    }
}

fn auth_host(st: &mut State, req: &Request) -> Response {
    match (req.method.as_str(), req.path_only()) {
        ("GET", "/authorize") => authorize(st, req),
        ("POST", "/oauth/token") => token(st, req),
        _ => Response::new(404, "Not Found"),
    }
}

/// `GET /authorize?audience=api.atlassian.com&client_id=…&scope=…&redirect_uri=…&state=…
/// &response_type=code&prompt=consent` (OAuth 2.0 (3LO) apps, "1. Direct the user to the
/// authorization URL"); the user consents at once.
fn authorize(st: &mut State, req: &Request) -> Response {
    let mut q: HashMap<String, String> = query_pairs(&req.path).into_iter().collect();
    if q.get("audience").map(String::as_str) != Some("api.atlassian.com") {
        return Response::new(
            400,
            "Error: invalid audience (audience=api.atlassian.com is required)",
        )
        .header("Content-Type", "text/html");
    }
    // Atlassian does not require PKCE (bobmatnyc/trusty-tools#2920 on the public threads); the
    // kit's server does, so a client that sends no challenge gets one made up for it.
    let stand_in = if q.contains_key("code_challenge") {
        None
    } else {
        let verifier = random_of(URL_SAFE, 64);
        let challenge = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .encode(Sha256::digest(verifier.as_bytes()));
        q.insert("code_challenge".into(), challenge);
        q.insert("code_challenge_method".into(), "S256".into());
        Some(verifier)
    };
    let reply = st.oauth.authorize(&q);
    if let (Some(verifier), OAuthReply::Redirect(to)) = (&stand_in, &reply) {
        if let Some(code) = query_pairs(to)
            .into_iter()
            .find(|(k, _)| k == "code")
            .map(|(_, v)| v)
        {
            st.pkce_stand_ins.insert(code, verifier.clone());
        }
    }
    oauth_response(reply)
}

/// `POST /oauth/token`: JSON (as Atlassian's examples send) or a form. Refresh tokens come
/// only with `offline_access`, rotate, and a used or unknown one is refused with 403
/// `invalid_grant` "Unknown or invalid refresh token." (the 3LO page's FAQ, quoted in
/// microsoft/generative-ai-for-beginners#342).
fn token(st: &mut State, req: &Request) -> Response {
    let json_body = req
        .header("content-type")
        .is_some_and(|c| c.starts_with("application/json"));
    let mut form: Vec<(String, String)> = if json_body {
        match serde_json::from_slice::<Value>(&req.body) {
            Ok(Value::Object(o)) => o
                .into_iter()
                .map(|(k, v)| {
                    let s = match v {
                        Value::String(s) => s,
                        other => other.to_string(),
                    };
                    (k, s)
                })
                .collect(),
            _ => {
                return json_resp(
                    400,
                    json!({"error": "invalid_request", "error_description": "Malformed JSON body"}),
                )
            }
        }
    } else {
        url::form_urlencoded::parse(&req.body)
            .into_owned()
            .collect()
    };
    let get =
        |f: &[(String, String)], k: &str| f.iter().find(|(a, _)| a == k).map(|(_, v)| v.clone());
    let grant = get(&form, "grant_type").unwrap_or_default();
    if grant == "authorization_code" {
        if let Some(v) = get(&form, "code").and_then(|c| st.pkce_stand_ins.remove(&c)) {
            form.retain(|(k, _)| k != "code_verifier");
            form.push(("code_verifier".into(), v));
        }
    }
    let body: String = url::form_urlencoded::Serializer::new(String::new())
        .extend_pairs(form.iter())
        .finish();
    let reply = st.oauth.token(req.header("authorization"), body.as_bytes());
    match reply {
        OAuthReply::Json(200, mut v) => {
            let scope = v["scope"].as_str().unwrap_or_default().to_owned();
            if let Some(a) = v["access_token"].as_str() {
                st.token_scopes.insert(a.to_owned(), scope.clone());
            }
            if !scope.split_whitespace().any(|s| s == "offline_access") {
                if let Some(o) = v.as_object_mut() {
                    o.remove("refresh_token");
                }
            }
            json_resp(200, v)
        }
        OAuthReply::Json(_, v) if grant == "refresh_token" && v["error"] == "invalid_grant" => {
            json_resp(
                403,
                json!({"error": "invalid_grant", "error_description": "Unknown or invalid refresh token."}),
            )
        }
        other => oauth_response(other),
    }
}

// ---------------------------------------------------------------------------------------
// The media host

/// `GET /file/{fileId}/binary?token=…&client=…`: the token and client from the redirect, no
/// `Authorization` (the redirect target authenticates by the JWT in its query,
/// pchuri/confluence-cli#198); a request that brings an `Authorization` header is refused with
/// 401 (what the real host answers to one is not documented).
fn media_host(st: &mut State, req: &Request) -> Response {
    let segs: Vec<&str> = req.path_only().trim_start_matches('/').split('/').collect();
    let ["file", file_id, "binary"] = segs.as_slice() else {
        return json_resp(
            404,
            json!({"error": {"code": "NotFound", "title": "Not Found"}}),
        );
    };
    if req.method != "GET" && req.method != "HEAD" {
        return Response::new(405, "");
    }
    let unauthorized = |why: &str| {
        json_resp(
            401,
            json!({"error": {"code": "Unauthorized", "title": why}}),
        )
    };
    if req.header("authorization").is_some() {
        return unauthorized("Authorization header not accepted here; the token is in the query");
    }
    let q = query_pairs(&req.path);
    let (Some(token), Some(client)) = (q1(&q, "token"), q1(&q, "client")) else {
        return unauthorized("Missing token or client");
    };
    match st.media_tokens.get(token) {
        Some(t) if t.expires > Instant::now() && t.client == client && t.file_id == *file_id => {}
        Some(t) if t.expires <= Instant::now() => return unauthorized("Token expired"),
        _ => return unauthorized("Invalid token"),
    }
    let Some(blob) = st.blobs.get(*file_id) else {
        return json_resp(
            404,
            json!({"error": {"code": "NotFound", "title": "File not found"}}),
        );
    };
    let total = blob.data.len();
    let mut r = match (
        st.cfg.media_honours_range,
        wanted(req.header("range"), total),
    ) {
        (true, Wanted::Part { start, end }) => Response::new(206, blob.data[start..=end].to_vec())
            .header("Content-Range", format!("bytes {start}-{end}/{total}")),
        (true, Wanted::Unsatisfiable) => {
            Response::new(416, "").header("Content-Range", format!("bytes */{total}"))
        }
        _ => Response::new(200, blob.data.clone()),
    };
    r = r.header("Content-Type", blob.mime.clone());
    if st.cfg.media_honours_range {
        r = r.header("Accept-Ranges", "bytes");
    }
    if q1(&q, "dl") == Some("true") {
        r = r.header(
            "Content-Disposition",
            format!("attachment; filename*=UTF-8''{}", enc_component(&blob.name)),
        );
    }
    r
}

// ---------------------------------------------------------------------------------------
// Confluence

fn confluence(st: &mut State, cx: &Cx) -> Response {
    let path = cx.path.clone();
    if let Some(rest) = path.strip_prefix("/wiki/download/attachments/") {
        return download_servlet(st, cx, rest);
    }
    if let Some(rest) = path.strip_prefix("/wiki/rest/api/") {
        return confluence_v1(st, cx, rest);
    }
    let Some(rest) = path.strip_prefix("/wiki/api/v2/") else {
        return conf_not_found();
    };
    let segs: Vec<&str> = rest.trim_end_matches('/').split('/').collect();
    if cx.req.method != "GET" {
        // What Confluence answers a method a route does not take (backlot `method_not_allowed`).
        return json_resp(
            405,
            json!({"errors": [{"status": 405, "code": "METHOD_NOT_ALLOWED", "title": format!("org.springframework.web.HttpRequestMethodNotSupportedException: Request method '{}' not supported", cx.req.method)}]}),
        );
    }
    let r = match segs.as_slice() {
        ["spaces"] => list_spaces(st, cx),
        ["spaces", id] => parse_id(id).and_then(|id| get_space(st, cx, id)),
        ["spaces", id, "pages"] => parse_id(id).and_then(|id| list_pages(st, cx, Some(id))),
        ["pages"] => list_pages(st, cx, None),
        ["pages", id] => parse_id(id).and_then(|id| get_page(st, cx, id)),
        ["pages", id, "children"] => parse_id(id).and_then(|id| child_pages(st, cx, id)),
        ["pages", id, "attachments"] => parse_id(id).and_then(|id| page_attachments(st, cx, id)),
        [coll, id] if Kind::from_collection(coll).is_some() => {
            let kind = Kind::from_collection(coll).unwrap();
            parse_id(id).and_then(|id| get_node(st, kind, id))
        }
        [coll, id, "direct-children"] if Kind::from_collection(coll).is_some() => {
            let kind = Kind::from_collection(coll).unwrap();
            parse_id(id).and_then(|id| direct_children(st, cx, kind, id))
        }
        [coll, id, "descendants"] if Kind::from_collection(coll).is_some() => {
            let kind = Kind::from_collection(coll).unwrap();
            parse_id(id).and_then(|id| descendants(st, cx, kind, id))
        }
        _ => Err(conf_not_found()),
    };
    r.unwrap_or_else(|e| e)
}

fn parse_id(s: &str) -> Result<u64, Response> {
    s.parse::<u64>().map_err(|_| conf_bad_type("id", "Long"))
}

/// `limit`: an integer in 1..=max (spec: `minimum: 1`, `maximum: 250`); anything else is a 400.
fn conf_limit(st: &State, cx: &Cx, default: usize) -> Result<usize, Response> {
    let Some(raw) = q1(&cx.q, "limit") else {
        return Ok(default);
    };
    let n: i64 = raw
        .trim()
        .parse()
        .map_err(|_| conf_bad_type("limit", "Integer"))?;
    if n < 1 || n as usize > st.cfg.max_limit {
        return Err(conf_bad_param(
            format!(
                "Provided value for 'limit' is not valid. It must be between 1 and {}.",
                st.cfg.max_limit
            ),
            None,
        ));
    }
    Ok(n as usize)
}

fn conf_enum(
    cx: &Cx,
    name: &str,
    type_name: &str,
    allowed: &[&str],
) -> Result<Option<String>, Response> {
    match q1(&cx.q, name) {
        None => Ok(None),
        Some(v) if allowed.contains(&v) => Ok(Some(v.to_owned())),
        Some(_) => Err(conf_bad_type(name, type_name)),
    }
}

fn conf_enum_list(
    cx: &Cx,
    name: &str,
    type_name: &str,
    allowed: &[&str],
) -> Result<Option<Vec<String>>, Response> {
    let values = qlist(&cx.q, name);
    if values.is_empty() {
        return Ok(None);
    }
    if values.iter().any(|v| !allowed.contains(&v.as_str())) {
        return Err(conf_bad_type(name, type_name));
    }
    Ok(Some(values))
}

fn conf_id_list(cx: &Cx, name: &str, max: usize) -> Result<Option<Vec<u64>>, Response> {
    let values = qlist(&cx.q, name);
    if values.is_empty() {
        return Ok(None);
    }
    if values.len() > max {
        return Err(conf_bad_param(
            format!("Provided value for '{name}' is not valid. At most {max} values are allowed."),
            None,
        ));
    }
    values
        .iter()
        .map(|v| v.parse::<u64>().map_err(|_| conf_bad_type(name, "Long")))
        .collect::<Result<Vec<_>, _>>()
        .map(Some)
}

#[derive(Clone, Debug, PartialEq, PartialOrd)]
enum SortKey {
    Num(i64),
    Str(String),
}

impl SortKey {
    fn json(&self) -> Value {
        match self {
            SortKey::Num(n) => json!(n),
            SortKey::Str(s) => json!(s),
        }
    }
    fn from_json(v: &Value) -> Option<SortKey> {
        match v {
            Value::Number(n) => n.as_i64().map(SortKey::Num),
            Value::String(s) => Some(SortKey::Str(s.clone())),
            _ => None,
        }
    }
}

struct Entry {
    key: SortKey,
    id: u64,
    json: Value,
}

/// An opaque cursor like the real ones: base64 of `{"id":…,"contentOrder":…,
/// "contentOrderValue":…}` (a real one decoded in docToolchain/docToolchain#1459), the item the
/// page ended with; the next page starts after it, so pages hold still while content changes.
fn encode_cursor(order: &str, key: &SortKey, id: u64) -> String {
    base64::engine::general_purpose::URL_SAFE.encode(
        json!({"id": id.to_string(), "contentOrder": order, "contentOrderValue": key.json()})
            .to_string(),
    )
}

fn decode_cursor(s: &str) -> Option<(String, SortKey, u64)> {
    let raw = base64::engine::general_purpose::URL_SAFE
        .decode(s)
        .or_else(|_| base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(s))
        .ok()?;
    let v: Value = serde_json::from_slice(&raw).ok()?;
    Some((
        v["contentOrder"].as_str()?.to_owned(),
        SortKey::from_json(&v["contentOrderValue"])?,
        v["id"].as_str()?.parse().ok()?,
    ))
}

/// One page of `entries` in `order` ("id", "-modified-date", …): (results, next cursor).
fn page_of(
    cx: &Cx,
    mut entries: Vec<Entry>,
    order: &str,
    limit: usize,
) -> Result<(Vec<Value>, Option<String>), Response> {
    let desc = order.starts_with('-');
    let cmp = |ak: &SortKey, ai: u64, bk: &SortKey, bi: u64| {
        let o = ak
            .partial_cmp(bk)
            .unwrap_or(std::cmp::Ordering::Equal)
            .then(ai.cmp(&bi));
        if desc {
            o.reverse()
        } else {
            o
        }
    };
    entries.sort_by(|a, b| cmp(&a.key, a.id, &b.key, b.id));
    let start = match q1(&cx.q, "cursor") {
        None => 0,
        Some(c) => {
            let (o, k, i) = decode_cursor(c).ok_or_else(conf_bad_cursor)?;
            if o != order {
                return Err(conf_bad_cursor());
            }
            entries
                .iter()
                .position(|e| cmp(&e.key, e.id, &k, i) == std::cmp::Ordering::Greater)
                .unwrap_or(entries.len())
        }
    };
    let end = (start + limit).min(entries.len());
    let next = (end < entries.len()).then(|| {
        let last = &entries[end - 1];
        encode_cursor(order, &last.key, last.id)
    });
    let results = entries
        .drain(start..end)
        .map(|e| e.json)
        .collect::<Vec<_>>();
    Ok((results, next))
}

/// The list reply: `results`, `_links` (`next` only when there is more, `base` the site's
/// `/wiki` — also on the gateway, whose `/ex/confluence/{cloudId}` the links leave out:
/// atlassian-api/atlassian-python-api#1655), and the same two in `Link` (spec: `Link:
/// </wiki/api/v2/pages?cursor=…>; rel="next", <https://site.atlassian.net/wiki>; rel="base"`).
/// The next URL is the request's with the cursor first (docToolchain#1459 shows
/// `?cursor=…&depth=all&limit=100`).
fn conf_list(st: &State, cx: &Cx, results: Vec<Value>, next: Option<String>) -> Response {
    let base = st.wiki_base();
    let next_url = next.map(|c| {
        let mut url = format!("{}?cursor={c}", cx.path);
        for part in cx.raw_query.split('&') {
            if part.is_empty() || part.starts_with("cursor=") || part == "cursor" {
                continue;
            }
            url.push('&');
            url.push_str(part);
        }
        url
    });
    let mut links = json!({"base": base});
    let link_header = match &next_url {
        Some(n) => {
            links["next"] = json!(n);
            format!("<{n}>; rel=\"next\", <{base}>; rel=\"base\"")
        }
        None => format!("<{base}>; rel=\"base\""),
    };
    json_resp(200, json!({"results": results, "_links": links})).header("Link", link_header)
}

const PAGE_SORT: &[&str] = &[
    "id",
    "-id",
    "created-date",
    "-created-date",
    "modified-date",
    "-modified-date",
    "title",
    "-title",
];
const CONTENT_SORT: &[&str] = &[
    "created-date",
    "-created-date",
    "id",
    "-id",
    "modified-date",
    "-modified-date",
    "child-position",
    "-child-position",
    "title",
    "-title",
];
const CHILD_PAGE_SORT: &[&str] = &[
    "created-date",
    "-created-date",
    "id",
    "-id",
    "child-position",
    "-child-position",
    "modified-date",
    "-modified-date",
];

fn node_key(n: &Node, order: &str) -> SortKey {
    match order.trim_start_matches('-') {
        "title" => SortKey::Str(n.title.clone()),
        "created-date" => SortKey::Num(millis(n.created)),
        "modified-date" => SortKey::Num(millis(n.version_at)),
        "child-position" => SortKey::Num(n.position),
        _ => SortKey::Num(n.id as i64),
    }
}

fn list_spaces(st: &mut State, cx: &Cx) -> Result<Response, Response> {
    let limit = conf_limit(st, cx, st.cfg.default_limit)?;
    let ids = conf_id_list(cx, "ids", 250)?;
    let keys = qlist(&cx.q, "keys");
    if keys.len() > 250 {
        return Err(conf_bad_param(
            "Provided value for 'keys' is not valid. At most 250 values are allowed.".into(),
            None,
        ));
    }
    let kind = conf_enum(
        cx,
        "type",
        "SpaceType",
        &[
            "global",
            "collaboration",
            "knowledge_base",
            "personal",
            "system",
            "onboarding",
            "xflow_sample_space",
        ],
    )?;
    let status = conf_enum(cx, "status", "SpaceStatus", &["current", "archived"])?;
    let order = conf_enum(
        cx,
        "sort",
        "SpaceSortOrder",
        &["id", "-id", "key", "-key", "name", "-name"],
    )?
    .unwrap_or_else(|| "id".into());
    let description = conf_enum(
        cx,
        "description-format",
        "SpaceDescriptionBodyRepresentation",
        &["plain", "view"],
    )?;
    let icon = q1(&cx.q, "include-icon") == Some("true");
    let entries = st
        .spaces
        .values()
        .filter(|s| ids.as_ref().is_none_or(|ids| ids.contains(&s.id)))
        .filter(|s| keys.is_empty() || keys.contains(&s.key))
        .filter(|s| {
            kind.as_deref().is_none_or(|k| {
                k == if s.key.starts_with('~') {
                    "personal"
                } else {
                    "global"
                }
            })
        })
        .filter(|_| status.as_deref().is_none_or(|s| s == "current"))
        .map(|s| Entry {
            key: match order.trim_start_matches('-') {
                "key" => SortKey::Str(s.key.clone()),
                "name" => SortKey::Str(s.name.clone()),
                _ => SortKey::Num(s.id as i64),
            },
            id: s.id,
            json: st.space_json(s, description.as_deref(), icon),
        })
        .collect();
    let (results, next) = page_of(cx, entries, &order, limit)?;
    Ok(conf_list(st, cx, results, next))
}

fn get_space(st: &mut State, cx: &Cx, id: u64) -> Result<Response, Response> {
    let description = conf_enum(
        cx,
        "description-format",
        "SpaceDescriptionBodyRepresentation",
        &["plain", "view"],
    )?;
    let icon = q1(&cx.q, "include-icon") == Some("true");
    let s = st.spaces.get(&id).ok_or_else(conf_not_found)?;
    Ok(json_resp(
        200,
        st.space_json(s, description.as_deref(), icon),
    ))
}

/// `GET /pages` (space_id None) and `GET /spaces/{id}/pages`.
fn list_pages(st: &mut State, cx: &Cx, space: Option<u64>) -> Result<Response, Response> {
    if let Some(s) = space {
        if !st.spaces.contains_key(&s) {
            return Err(conf_not_found());
        }
    }
    let limit = conf_limit(st, cx, st.cfg.default_limit)?;
    let order = conf_enum(cx, "sort", "PageSortOrder", PAGE_SORT)?.unwrap_or_else(|| "id".into());
    let body = conf_enum(
        cx,
        "body-format",
        "PrimaryBodyRepresentation",
        &["storage", "atlas_doc_format"],
    )?;
    // "By default, `current` and `archived` are used."
    let status = conf_enum_list(
        cx,
        "status",
        "ContentStatus",
        &["current", "archived", "deleted", "trashed"],
    )?
    .unwrap_or_else(|| vec!["current".into(), "archived".into()]);
    let title = q1(&cx.q, "title").map(str::to_owned);
    let (root_only, space_ids, page_ids) = match space {
        Some(s) => {
            let depth = conf_enum(cx, "depth", "Depth", &["all", "root"])?;
            (depth.as_deref() == Some("root"), Some(vec![s]), None)
        }
        None => {
            conf_enum(cx, "subtype", "Subtype", &["live", "page"])?;
            (
                false,
                conf_id_list(cx, "space-id", 100)?,
                conf_id_list(cx, "id", 250)?,
            )
        }
    };
    let entries = st
        .nodes
        .values()
        .filter(|n| n.kind == Kind::Page && st.node_visible(n.id))
        .filter(|n| {
            let s = if n.trashed { "trashed" } else { "current" };
            status.iter().any(|x| x == s)
        })
        .filter(|n| space_ids.as_ref().is_none_or(|v| v.contains(&n.space)))
        .filter(|n| page_ids.as_ref().is_none_or(|v| v.contains(&n.id)))
        .filter(|n| !root_only || n.parent.is_none())
        .filter(|n| title.as_ref().is_none_or(|t| *t == n.title))
        .map(|n| Entry {
            key: node_key(n, &order),
            id: n.id,
            json: st.page_json(n, body.as_deref(), true, None),
        })
        .collect();
    let (results, next) = page_of(cx, entries, &order, limit)?;
    Ok(conf_list(st, cx, results, next))
}

/// `GET /pages/{id}`: trashed pages too (status "trashed"); a page the user may not see, or
/// one of another kind, is a 404 ("404 (not 403) when the page exists but the user cannot
/// see it", readonly-sources §2.1).
fn get_page(st: &mut State, cx: &Cx, id: u64) -> Result<Response, Response> {
    let body = conf_enum(
        cx,
        "body-format",
        "PrimaryBodyRepresentationSingle",
        &[
            "storage",
            "atlas_doc_format",
            "view",
            "export_view",
            "anonymous_export_view",
            "styled_view",
            "editor",
        ],
    )?;
    let status = conf_enum_list(
        cx,
        "status",
        "ContentStatus",
        &[
            "current",
            "archived",
            "trashed",
            "deleted",
            "historical",
            "draft",
        ],
    )?;
    let version = match q1(&cx.q, "version") {
        None => None,
        Some(v) => Some(
            v.parse::<u32>()
                .map_err(|_| conf_bad_type("version", "Integer"))?,
        ),
    };
    let include_version = q1(&cx.q, "include-version") != Some("false");
    let n = st
        .nodes
        .get(&id)
        .filter(|n| n.kind == Kind::Page && st.node_visible(n.id))
        .ok_or_else(conf_not_found)?;
    if let Some(s) = status {
        let mine = if n.trashed { "trashed" } else { "current" };
        if !s.iter().any(|x| x == mine) {
            return Err(conf_not_found());
        }
    }
    let revision = match version {
        None => None,
        Some(v) => Some(
            n.history
                .iter()
                .find(|r| r.number == v)
                .ok_or_else(conf_not_found)?,
        ),
    };
    Ok(json_resp(
        200,
        st.page_json(n, body.as_deref(), include_version, revision),
    ))
}

fn get_node(st: &mut State, kind: Kind, id: u64) -> Result<Response, Response> {
    let n = st
        .nodes
        .get(&id)
        .filter(|n| n.kind == kind && st.node_visible(n.id))
        .ok_or_else(conf_not_found)?;
    Ok(json_resp(200, st.node_json(n)))
}

fn parent_node(st: &State, kind: Kind, id: u64) -> Result<&Node, Response> {
    st.nodes
        .get(&id)
        .filter(|n| n.kind == kind && st.node_visible(n.id))
        .ok_or_else(conf_not_found)
}

/// `GET /{pages|folders|whiteboards|databases|embeds}/{id}/direct-children`: the current
/// children of every kind, by `childPosition` unless sorted otherwise.
fn direct_children(st: &mut State, cx: &Cx, kind: Kind, id: u64) -> Result<Response, Response> {
    parent_node(st, kind, id)?;
    let limit = conf_limit(st, cx, st.cfg.default_limit)?;
    let order = conf_enum(cx, "sort", "ContentSortOrder", CONTENT_SORT)?
        .unwrap_or_else(|| "child-position".into());
    let entries = st
        .nodes
        .values()
        .filter(|n| n.parent == Some(id) && st.live(n))
        .map(|n| Entry {
            key: node_key(n, &order),
            id: n.id,
            json: st.child_json(n),
        })
        .collect();
    let (results, next) = page_of(cx, entries, &order, limit)?;
    Ok(conf_list(st, cx, results, next))
}

/// The deprecated `GET /pages/{id}/children`: child pages only (`ChildPage`), still served.
fn child_pages(st: &mut State, cx: &Cx, id: u64) -> Result<Response, Response> {
    parent_node(st, Kind::Page, id)?;
    let limit = conf_limit(st, cx, st.cfg.default_limit)?;
    let order = conf_enum(cx, "sort", "ChildPageSortOrder", CHILD_PAGE_SORT)?
        .unwrap_or_else(|| "child-position".into());
    let entries = st
        .nodes
        .values()
        .filter(|n| n.parent == Some(id) && n.kind == Kind::Page && st.live(n))
        .map(|n| Entry {
            key: node_key(n, &order),
            id: n.id,
            json: json!({"id": n.id.to_string(), "status": "current", "title": n.title, "spaceId": n.space.to_string(), "childPosition": n.position}),
        })
        .collect();
    let (results, next) = page_of(cx, entries, &order, limit)?;
    Ok(conf_list(st, cx, results, next))
}

/// `GET /…/{id}/descendants?depth=1..5` (default 2), top to bottom: level by level, each
/// level in tree order.
fn descendants(st: &mut State, cx: &Cx, kind: Kind, id: u64) -> Result<Response, Response> {
    parent_node(st, kind, id)?;
    let limit = conf_limit(st, cx, st.cfg.default_limit)?;
    let depth = match q1(&cx.q, "depth") {
        None => 2,
        Some(d) => {
            let d: i64 = d.parse().map_err(|_| conf_bad_type("depth", "Integer"))?;
            if !(1..=5).contains(&d) {
                return Err(conf_bad_param(
                    "Provided value for 'depth' is not valid. It must be between 1 and 5.".into(),
                    None,
                ));
            }
            d as u32
        }
    };
    let mut out = Vec::new();
    let mut level = vec![id];
    for d in 1..=depth {
        let mut next_level = Vec::new();
        for p in &level {
            let mut kids: Vec<&Node> = st
                .nodes
                .values()
                .filter(|n| n.parent == Some(*p) && st.live(n))
                .collect();
            kids.sort_by_key(|n| (n.position, n.id));
            for k in kids {
                out.push(json!({
                    "id": k.id.to_string(),
                    "status": "current",
                    "title": k.title,
                    "type": k.kind.name(),
                    "parentId": p.to_string(),
                    "depth": d,
                    "childPosition": k.position,
                }));
                next_level.push(k.id);
            }
        }
        level = next_level;
    }
    let entries = out
        .into_iter()
        .enumerate()
        .map(|(i, json)| Entry {
            key: SortKey::Num(i as i64),
            id: i as u64,
            json,
        })
        .collect();
    let (results, next) = page_of(cx, entries, "tree-order", limit)?;
    Ok(conf_list(st, cx, results, next))
}

/// `GET /pages/{id}/attachments` (default limit 50 in the spec).
fn page_attachments(st: &mut State, cx: &Cx, id: u64) -> Result<Response, Response> {
    parent_node(st, Kind::Page, id)?;
    let limit = conf_limit(st, cx, st.cfg.default_limit * ATTACHMENT_LIMIT_FACTOR)?;
    let order = conf_enum(
        cx,
        "sort",
        "AttachmentSortOrder",
        &[
            "created-date",
            "-created-date",
            "modified-date",
            "-modified-date",
        ],
    )?
    .unwrap_or_else(|| "created-date".into());
    let status = conf_enum_list(
        cx,
        "status",
        "AttachmentStatus",
        &["current", "archived", "trashed"],
    )?
    .unwrap_or_else(|| vec!["current".into(), "archived".into()]);
    let media_type = q1(&cx.q, "mediaType").map(str::to_owned);
    let filename = q1(&cx.q, "filename").map(str::to_owned);
    let entries = st
        .conf_attachments
        .values()
        .filter(|a| a.page == id)
        .filter(|a| {
            let s = if a.trashed { "trashed" } else { "current" };
            status.iter().any(|x| x == s)
        })
        .filter(|a| media_type.as_ref().is_none_or(|m| *m == a.media_type))
        .filter(|a| filename.as_ref().is_none_or(|f| *f == a.title))
        .map(|a| Entry {
            key: SortKey::Num(millis(a.created)),
            id: a.id,
            json: st.conf_attachment_json(a),
        })
        .collect();
    let (results, next) = page_of(cx, entries, &order, limit)?;
    Ok(conf_list(st, cx, results, next))
}

/// The v1 error body ("Status codes" of the v1 reference, as quoted in
/// community.developer.atlassian.com/t/55894).
fn v1_error(status: u16, message: &str) -> Response {
    let reason = match status {
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        _ => "Not Found",
    };
    json_resp(
        status,
        json!({"statusCode": status, "data": {"authorized": status != 401, "valid": true, "errors": [], "successful": false}, "message": message, "reason": reason}),
    )
}

/// `/wiki/rest/api/…`: only the attachment download ("Redirects the client to a URL that
/// serves an attachment's binary data", v1 reference via MrRefactoring/confluence.js) and the
/// current user.
fn confluence_v1(st: &mut State, cx: &Cx, rest: &str) -> Response {
    let segs: Vec<&str> = rest.trim_end_matches('/').split('/').collect();
    if cx.req.method != "GET" {
        return v1_error(405, "Method not allowed");
    }
    match segs.as_slice() {
        ["user", "current"] => json_resp(
            200,
            json!({"type": "known", "accountId": ACCOUNT_ID, "accountType": "atlassian", "email": st.cfg.email, "publicName": DISPLAY_NAME, "displayName": DISPLAY_NAME, "isExternalCollaborator": false, "_links": {"base": st.wiki_base(), "context": "/wiki", "self": format!("{}/rest/api/user?accountId={ACCOUNT_ID}", st.wiki_base())}}),
        ),
        ["content", page, "child", "attachment", att, "download"] => {
            let page_id = page.parse::<u64>().ok();
            let att_id = att.trim_start_matches("att").parse::<u64>().ok();
            // `status` defaults to current; `version` must name one the attachment has.
            let statuses = qlist(&cx.q, "status");
            let want_trashed = statuses.iter().any(|s| s == "trashed");
            let found = match (page_id, att_id) {
                (Some(p), Some(a)) => st
                    .conf_attachments
                    .get(&a)
                    .filter(|x| x.page == p && (!x.trashed || want_trashed))
                    .filter(|_| st.nodes.get(&p).is_some_and(|n| st.node_visible(n.id))),
                _ => None,
            };
            let version_ok = q1(&cx.q, "version").is_none_or(|v| v == "1");
            match found {
                Some(a) if version_ok => {
                    let (file_id, title) = (a.file_id.clone(), a.title.clone());
                    let to = st.new_media_link(&file_id, &title);
                    Response::new(302, "").header("Location", to)
                }
                _ => v1_error(
                    404,
                    &format!("No attachment with id {att} found in content {page}"),
                ),
            }
        }
        _ => v1_error(404, &format!("null for uri: {}{}", st.site, cx.req.path)),
    }
}

/// The web download servlet, `{base}{downloadLink}`. API-token Basic auth is refused there
/// since 2026 with 401 and an OAuth challenge (CHANGE-2735; `www-authenticate: OAuth
/// realm="https://<site>.atlassian.net/wiki"`, epam/dm.ai#252), unless configured otherwise;
/// a scoped token on the gateway gets "scope does not match" (Spenhouet/…#210). An OAuth bearer
/// on the gateway is redirected.
fn download_servlet(st: &mut State, cx: &Cx, rest: &str) -> Response {
    if matches!(cx.principal, Principal::Basic) && !st.cfg.download_servlet_accepts_basic {
        return if cx.via_gateway {
            json_resp(
                401,
                json!({"code": 401, "message": "Unauthorized; scope does not match"}),
            )
        } else {
            Response::new(401, "").header(
                "WWW-Authenticate",
                format!("OAuth realm=\"{}\"", st.wiki_base()),
            )
        };
    }
    let Some((page, name)) = rest.split_once('/') else {
        return Response::new(404, "");
    };
    let name = dec_component(name);
    let found = page.parse::<u64>().ok().and_then(|p| {
        st.conf_attachments
            .values()
            .find(|a| a.page == p && a.title == name && !a.trashed)
            .filter(|_| st.node_visible(p))
    });
    match found {
        Some(a) => {
            let (file_id, title) = (a.file_id.clone(), a.title.clone());
            let to = st.new_media_link(&file_id, &title);
            Response::new(302, "").header("Location", to)
        }
        None => Response::new(404, ""),
    }
}

// ---------------------------------------------------------------------------------------
// Jira

fn jira(st: &mut State, cx: &Cx) -> Response {
    let path = cx.path.clone();
    let method = cx.req.method.as_str();
    // The removed offset search, on both API versions: 410 with this body (verbatim from
    // ComposioHQ/Rube#9, QIntegration/Qualys-Jira-Connector#14; CHANGE-2046).
    if path == "/rest/api/3/search" || path == "/rest/api/2/search" {
        return jira_error(
            410,
            "The requested API has been removed. Please migrate to the /rest/api/3/search/jql API. A full migration guideline is available at https://developer.atlassian.com/changelog/#CHANGE-2046",
        );
    }
    let no_endpoint = || {
        jira_problem(
            404,
            "Not Found",
            &format!("No endpoint {method} {path}."),
            &path,
        )
    };
    let Some(rest) = path.strip_prefix("/rest/api/3/") else {
        return no_endpoint();
    };
    let segs: Vec<&str> = rest.trim_end_matches('/').split('/').collect();
    let not_allowed = |allow: &str| {
        jira_problem(
            405,
            "Method Not Allowed",
            &format!("Method '{method}' is not supported."),
            &path,
        )
        .header("Allow", allow.to_owned())
    };
    match (segs.as_slice(), method) {
        (["search", "jql"], "GET" | "POST") => search_jql(st, cx),
        (["search", "jql"], _) => not_allowed("GET, POST"),
        (["project", "search"], "GET") => project_search(st, cx),
        (["project", key], "GET") => match st.find_project(key) {
            Some(id) => jira_json(200, State::project_json(&cx.api_base, &st.projects[&id])),
            None => jira_error(404, &format!("No project could be found with key '{key}'.")),
        },
        (["issue", key], "GET") => get_issue(st, cx, key),
        (["attachment", "content", id], "GET") => attachment_content(st, cx, id),
        (["attachment", id], "GET") => match id.parse::<u64>().ok().and_then(|i| {
            st.jira_attachments
                .get(&i)
                .filter(|a| !a.removed && !st.issues[&a.issue].deleted)
        }) {
            Some(a) => jira_json(200, State::jira_attachment_json(&cx.api_base, a, true)),
            None => jira_error(
                404,
                &format!("The attachment with id '{id}' does not exist"),
            ),
        },
        (["myself"], "GET") => {
            let mut u = State::user_json(&cx.api_base);
            u["emailAddress"] = json!(st.cfg.email);
            jira_json(200, u)
        }
        _ => no_endpoint(),
    }
}

fn get_issue(st: &mut State, cx: &Cx, key: &str) -> Response {
    let fields: Vec<String> = qlist(&cx.q, "fields");
    let sel = FieldSelection::parse(&fields, true);
    match st.find_issue(key) {
        Some(id) => jira_json(200, st.issue_json(&cx.api_base, &st.issues[&id], &sel)),
        None => jira_error(
            404,
            "Issue does not exist or you do not have permission to see it.",
        ),
    }
}

fn project_search(st: &mut State, cx: &Cx) -> Response {
    let start_at = match q1(&cx.q, "startAt").map(|v| v.trim().parse::<i64>()) {
        None => 0,
        Some(Ok(n)) => n.max(0) as usize,
        Some(Err(_)) => {
            return jira_problem(
                400,
                "Bad Request",
                &format!(
                    "Failed to convert 'startAt' with value: '{}'",
                    q1(&cx.q, "startAt").unwrap_or("")
                ),
                &cx.path,
            )
        }
    };
    let max = match q1(&cx.q, "maxResults").map(|v| v.trim().parse::<i64>()) {
        None => 50,
        Some(Ok(n)) => n.clamp(1, 100) as usize,
        Some(Err(_)) => {
            return jira_problem(
                400,
                "Bad Request",
                &format!(
                    "Failed to convert 'maxResults' with value: '{}'",
                    q1(&cx.q, "maxResults").unwrap_or("")
                ),
                &cx.path,
            )
        }
    };
    let keys: Vec<String> = qlist(&cx.q, "keys")
        .into_iter()
        .map(|k| k.to_ascii_uppercase())
        .collect();
    let ids: Vec<String> = qlist(&cx.q, "id");
    let mut all: Vec<&Project> = st
        .projects
        .values()
        .filter(|p| keys.is_empty() || keys.contains(&p.key))
        .filter(|p| ids.is_empty() || ids.contains(&p.id.to_string()))
        .collect();
    all.sort_by(|a, b| a.key.cmp(&b.key));
    let total = all.len();
    let values: Vec<Value> = all
        .iter()
        .skip(start_at)
        .take(max)
        .map(|p| State::project_json(&cx.api_base, p))
        .collect();
    let is_last = start_at + values.len() >= total;
    let url = |start: usize| {
        let mut u = format!(
            "{}/rest/api/3/project/search?startAt={start}&maxResults={max}",
            cx.api_base
        );
        for k in &keys {
            u.push_str(&format!("&keys={}", enc_component(k)));
        }
        u
    };
    let mut v = json!({
        "self": url(start_at),
        "maxResults": max,
        "startAt": start_at,
        "total": total,
        "isLast": is_last,
        "values": values,
    });
    if !is_last {
        v["nextPage"] = json!(url(start_at + max));
    }
    jira_json(200, v)
}

/// `GET /rest/api/3/attachment/content/{id}`: `redirect` defaults to true → 303 to the media
/// host; `redirect=false` → the bytes, `Range` honoured (206, 416 past the end, 400 for a
/// malformed range) — v3 spec responses 200/206/303/400/404/416.
fn attachment_content(st: &mut State, cx: &Cx, id: &str) -> Response {
    let Some(a) = id.parse::<u64>().ok().and_then(|i| {
        st.jira_attachments
            .get(&i)
            .filter(|a| !a.removed && !st.issues[&a.issue].deleted)
    }) else {
        return jira_error(
            404,
            &format!("The attachment with id '{id}' does not exist"),
        );
    };
    let (file_id, filename) = (a.file_id.clone(), a.filename.clone());
    let redirect = match q1(&cx.q, "redirect") {
        None | Some("true") => true,
        Some("false") => false,
        Some(other) => {
            return jira_problem(
                400,
                "Bad Request",
                &format!("Failed to convert 'redirect' with value: '{other}'"),
                &cx.path,
            )
        }
    };
    if redirect {
        let to = st.new_media_link(&file_id, &filename);
        return Response::new(303, "").header("Location", to);
    }
    let blob = &st.blobs[&file_id];
    let total = blob.data.len();
    let range = cx.req.header("range");
    if let Some(r) = range {
        let well_formed = r.trim().strip_prefix("bytes=").is_some_and(|spec| {
            spec.split(',').all(|part| {
                let Some((a, b)) = part.trim().split_once('-') else {
                    return false;
                };
                let a_ok = a.is_empty() || a.parse::<u64>().is_ok();
                let b_ok = b.is_empty() || b.parse::<u64>().is_ok();
                a_ok && b_ok && !(a.is_empty() && b.is_empty())
            })
        });
        if !well_formed {
            return jira_error(400, "The range supplied in the Range header is malformed.");
        }
    }
    let r = match wanted(range, total) {
        Wanted::Part { start, end } => Response::new(206, blob.data[start..=end].to_vec())
            .header("Content-Range", format!("bytes {start}-{end}/{total}")),
        Wanted::Unsatisfiable => {
            Response::new(416, "").header("Content-Range", format!("bytes */{total}"))
        }
        Wanted::Whole => Response::new(200, blob.data.clone()),
    };
    r.header("Content-Type", blob.mime.clone())
        .header("Accept-Ranges", "bytes")
        .header(
            "Content-Disposition",
            format!("attachment; filename*=UTF-8''{}", enc_component(&blob.name)),
        )
}

/// Which fields an issue carries: `fields` as a list (`*all`, `*navigable`, `-name`, names).
struct FieldSelection {
    id_only: bool,
    names: Vec<String>,
}

const KNOWN_FIELDS: &[&str] = &["summary", "project", "created", "updated", "attachment"];

impl FieldSelection {
    /// `default_all`: GET issue's default is every field; `search/jql`'s is `id` only
    /// ("The default is `id`", jira.js `searchAndReconsileIssuesUsingJql.ts`).
    fn parse(list: &[String], default_all: bool) -> FieldSelection {
        if list.is_empty() {
            return if default_all {
                FieldSelection {
                    id_only: false,
                    names: KNOWN_FIELDS.iter().map(|s| s.to_string()).collect(),
                }
            } else {
                FieldSelection {
                    id_only: true,
                    names: Vec::new(),
                }
            };
        }
        let mut names: Vec<String> = Vec::new();
        let mut excluded: Vec<&str> = Vec::new();
        let mut only_id = true;
        for f in list {
            let f = f.trim();
            if f != "id" {
                only_id = false;
            }
            match f {
                "*all" | "*navigable" => {
                    for k in KNOWN_FIELDS {
                        if !names.iter().any(|n| n == k) {
                            names.push(k.to_string());
                        }
                    }
                }
                x if x.starts_with('-') => excluded.push(&x[1..]),
                "id" | "key" => {}
                x => {
                    if !names.iter().any(|n| n == x) {
                        names.push(x.to_owned());
                    }
                }
            }
        }
        if excluded.len() == list.len() {
            // "-description": every navigable field but the excluded ones.
            names = KNOWN_FIELDS.iter().map(|s| s.to_string()).collect();
        }
        names.retain(|n| !excluded.contains(&n.as_str()));
        FieldSelection {
            id_only: only_id,
            names,
        }
    }
}

struct SearchParams {
    jql: Option<String>,
    next_page_token: Option<String>,
    max_results: Option<i64>,
    fields: Vec<String>,
}

fn search_params(cx: &Cx) -> Result<SearchParams, Response> {
    if cx.req.method == "POST" {
        let ct = cx.req.header("content-type").unwrap_or("");
        if !ct.to_ascii_lowercase().starts_with("application/json") {
            // Measured on `POST search/jql` (backlot `unsupported_media_type`).
            return Err(jira_problem(
                415,
                "Unsupported Media Type",
                &format!(
                    "Content-Type '{}' is not supported.",
                    if ct.is_empty() { "null" } else { ct }
                ),
                &cx.path,
            )
            .header("Accept", "application/json"));
        }
        let v: Value = match serde_json::from_slice(&cx.req.body) {
            Ok(v @ Value::Object(_)) => v,
            Ok(_) => {
                return Err(jira_json(
                    400,
                    json!({"errorMessages": ["Invalid request payload. Refer to the REST API documentation and try again."]}),
                ))
            }
            Err(_) => {
                return Err(jira_json(
                    400,
                    json!({"errorMessages": ["There was an error parsing JSON. Check that your request body is valid."]}),
                ))
            }
        };
        let fields = match &v["fields"] {
            Value::Array(a) => a
                .iter()
                .filter_map(|x| x.as_str().map(str::to_owned))
                .collect(),
            _ => Vec::new(),
        };
        return Ok(SearchParams {
            jql: v["jql"].as_str().map(str::to_owned),
            next_page_token: v["nextPageToken"].as_str().map(str::to_owned),
            max_results: match &v["maxResults"] {
                Value::Null => None,
                Value::Number(n) => n.as_i64(),
                _ => {
                    return Err(jira_json(
                        400,
                        json!({"errorMessages": ["Invalid request payload. Refer to the REST API documentation and try again."]}),
                    ))
                }
            },
            fields,
        });
    }
    let max_results = match q1(&cx.q, "maxResults") {
        None => None,
        Some(raw) => Some(raw.trim().parse::<i64>().map_err(|_| {
            jira_problem(
                400,
                "Bad Request",
                &format!("Failed to convert 'maxResults' with value: '{raw}'"),
                &cx.path,
            )
        })?),
    };
    Ok(SearchParams {
        jql: q1(&cx.q, "jql").map(str::to_owned),
        next_page_token: q1(&cx.q, "nextPageToken").map(str::to_owned),
        max_results,
        fields: qlist(&cx.q, "fields"),
    })
}

/// `GET|POST /rest/api/3/search/jql`: `{"issues":[…],"nextPageToken":…,"isLast":…}`, no
/// `total`; the token is opaque, bound to its query, absent on the last page.
fn search_jql(st: &mut State, cx: &Cx) -> Response {
    let p = match search_params(cx) {
        Ok(p) => p,
        Err(r) => return r,
    };
    let max = match p.max_results {
        None => 50,
        Some(n) if (1..=JIRA_MAX_RESULTS_CEILING).contains(&n) => n as usize,
        Some(_) => return jira_error(400, "The maxResults parameter must be between 1 and 5,000."),
    };
    let per_page = max.min(st.cfg.jira_max_results.max(1));
    let jql = p.jql.unwrap_or_default().trim().to_owned();
    let now = st.now();
    let query = match jql::parse(&jql, st, now) {
        Ok(q) => q,
        Err(msg) => return jira_error(400, &msg),
    };
    if !query.bounded() {
        // raycast/extensions#21425, verbatim.
        return jira_error(
            400,
            "Unbounded JQL queries are not allowed here. Please add a search restriction to your query.",
        );
    }
    let offset = match &p.next_page_token {
        None => 0,
        Some(t) => match st.jql_pages.get(t) {
            Some(page) if page.jql == jql => page.offset,
            _ => return jira_error(400, "The provided nextPageToken is invalid or has expired."),
        },
    };
    let mut hits: Vec<&Issue> = st
        .issues
        .values()
        .filter(|i| !i.deleted && query.matches(st, i))
        .collect();
    query.sort(st, &mut hits);
    let total = hits.len();
    let sel = FieldSelection::parse(&p.fields, false);
    let issues: Vec<Value> = hits
        .iter()
        .skip(offset)
        .take(per_page)
        .map(|i| st.issue_json(&cx.api_base, i, &sel))
        .collect();
    let end = offset + issues.len();
    let is_last = end >= total;
    let mut v = json!({"issues": issues, "isLast": is_last});
    if !is_last {
        let token = format!("Ch{}", random_of(URL_SAFE, 54));
        st.jql_pages.insert(
            token.clone(),
            JqlPage {
                jql: jql.clone(),
                offset: end,
            },
        );
        v["nextPageToken"] = json!(token);
    }
    jira_json(200, v)
}

/// The JQL subset: `project`, `attachments IS [NOT] EMPTY`, `updated`/`created` against dates
/// ("yyyy/MM/dd HH:mm", "yyyy-MM-dd HH:mm", "yyyy/MM/dd", "yyyy-MM-dd", relative "-5m" — minute
/// precision, UTC as the user's zone: "JQL Date Time Formats"), `key`/`issuekey`/`id`,
/// `summary ~`, joined by AND/OR/NOT and parentheses, `ORDER BY` up to 7 fields.
mod jql {
    use super::{Issue, State};
    use std::cmp::Ordering;
    use std::time::{Duration, SystemTime};

    #[derive(Clone, Debug, PartialEq)]
    enum Tok {
        Word(String),
        Str(String),
        Op(String),
        LParen,
        RParen,
        Comma,
    }

    #[derive(Clone, Debug)]
    struct Token {
        tok: Tok,
        /// 1-based character where it starts.
        at: usize,
    }

    fn lex(s: &str) -> Result<Vec<Token>, String> {
        let chars: Vec<char> = s.chars().collect();
        let mut out = Vec::new();
        let mut i = 0;
        while i < chars.len() {
            let c = chars[i];
            let at = i + 1;
            if c.is_whitespace() {
                i += 1;
                continue;
            }
            match c {
                '(' => {
                    out.push(Token {
                        tok: Tok::LParen,
                        at,
                    });
                    i += 1;
                }
                ')' => {
                    out.push(Token {
                        tok: Tok::RParen,
                        at,
                    });
                    i += 1;
                }
                ',' => {
                    out.push(Token {
                        tok: Tok::Comma,
                        at,
                    });
                    i += 1;
                }
                '"' | '\'' => {
                    let quote = c;
                    let mut j = i + 1;
                    let mut text = String::new();
                    loop {
                        if j >= chars.len() {
                            return Err(format!(
                                "Error in the JQL Query: The quoted string '{text}' has not been completed. (line 1, character {at})"
                            ));
                        }
                        if chars[j] == '\\' && j + 1 < chars.len() {
                            text.push(chars[j + 1]);
                            j += 2;
                            continue;
                        }
                        if chars[j] == quote {
                            break;
                        }
                        text.push(chars[j]);
                        j += 1;
                    }
                    out.push(Token {
                        tok: Tok::Str(text),
                        at,
                    });
                    i = j + 1;
                }
                '!' | '>' | '<' | '=' | '~' => {
                    let two: String = chars[i..(i + 2).min(chars.len())].iter().collect();
                    let op = if ["!=", ">=", "<=", "!~"].contains(&two.as_str()) {
                        two
                    } else if c == '!' {
                        return Err(format!(
                            "Error in the JQL Query: The character '!' is a reserved JQL character. You must enclose it in a string or use the escape '\\u0021' instead. (line 1, character {at})"
                        ));
                    } else {
                        c.to_string()
                    };
                    i += op.chars().count();
                    out.push(Token {
                        tok: Tok::Op(op),
                        at,
                    });
                }
                _ => {
                    let mut j = i;
                    let mut word = String::new();
                    while j < chars.len() {
                        let d = chars[j];
                        if d.is_whitespace() || "()\",'=!<>~".contains(d) {
                            break;
                        }
                        word.push(d);
                        j += 1;
                    }
                    out.push(Token {
                        tok: Tok::Word(word),
                        at,
                    });
                    i = j;
                }
            }
        }
        Ok(out)
    }

    #[derive(Clone, Copy, Debug, PartialEq)]
    enum Cmp {
        Eq,
        Ne,
        Gt,
        Ge,
        Lt,
        Le,
    }

    #[derive(Clone, Copy, Debug, PartialEq)]
    enum DateField {
        Updated,
        Created,
    }

    #[derive(Debug)]
    enum Expr {
        And(Box<Expr>, Box<Expr>),
        Or(Box<Expr>, Box<Expr>),
        Not(Box<Expr>),
        Projects(Vec<u64>, bool),
        Attachments { empty: bool },
        Date(DateField, Cmp, SystemTime),
        Issues(Vec<u64>, bool),
        Summary(String, bool),
    }

    #[derive(Clone, Copy, Debug)]
    enum OrderField {
        Updated,
        Created,
        Id,
        Key,
        Project,
        Summary,
    }

    pub struct Query {
        filter: Option<Expr>,
        order: Vec<(OrderField, bool)>,
    }

    struct Parser<'a> {
        toks: Vec<Token>,
        pos: usize,
        st: &'a State,
        now: SystemTime,
        len: usize,
    }

    fn kw(t: &Tok, word: &str) -> bool {
        matches!(t, Tok::Word(w) if w.eq_ignore_ascii_case(word))
    }

    fn shown(t: &Tok) -> String {
        match t {
            Tok::Word(w) | Tok::Op(w) => w.clone(),
            Tok::Str(s) => s.clone(),
            Tok::LParen => "(".into(),
            Tok::RParen => ")".into(),
            Tok::Comma => ",".into(),
        }
    }

    impl Parser<'_> {
        fn peek(&self) -> Option<&Token> {
            self.toks.get(self.pos)
        }
        fn peek_kw(&self, word: &str) -> bool {
            self.peek().is_some_and(|t| kw(&t.tok, word))
        }
        fn next(&mut self) -> Option<Token> {
            let t = self.toks.get(self.pos).cloned();
            self.pos += 1;
            t
        }
        fn unexpected(&self, expecting: &str) -> String {
            match self.peek() {
                Some(t) => format!(
                    "Error in the JQL Query: Expecting {expecting} but got '{}'. (line 1, character {})",
                    shown(&t.tok),
                    t.at
                ),
                None => format!(
                    "Error in the JQL Query: Expecting {expecting} before the end of the query. (line 1, character {})",
                    self.len + 1
                ),
            }
        }

        fn query(&mut self) -> Result<Query, String> {
            let filter = if self.peek().is_none() || self.peek_kw("order") {
                None
            } else {
                Some(self.or()?)
            };
            let mut order = Vec::new();
            if self.peek_kw("order") {
                self.next();
                if !self.peek_kw("by") {
                    return Err(self.unexpected("'by'"));
                }
                self.next();
                loop {
                    let Some(Token { tok, .. }) = self.next() else {
                        return Err(self.unexpected("a field name"));
                    };
                    let name = match tok {
                        Tok::Word(w) | Tok::Str(w) => w,
                        _ => {
                            self.pos -= 1;
                            return Err(self.unexpected("a field name"));
                        }
                    };
                    let field = match name.to_ascii_lowercase().as_str() {
                        "updated" | "updateddate" => OrderField::Updated,
                        "created" | "createddate" => OrderField::Created,
                        "id" => OrderField::Id,
                        "key" | "issuekey" => OrderField::Key,
                        "project" => OrderField::Project,
                        "summary" => OrderField::Summary,
                        _ => {
                            return Err(format!(
                                "Field '{name}' does not exist or you do not have permission to view it."
                            ))
                        }
                    };
                    let mut desc = false;
                    if self.peek_kw("asc") {
                        self.next();
                    } else if self.peek_kw("desc") {
                        self.next();
                        desc = true;
                    }
                    order.push((field, desc));
                    if self.peek().is_some_and(|t| t.tok == Tok::Comma) {
                        self.next();
                        continue;
                    }
                    break;
                }
                if order.len() > 7 {
                    return Err("The ORDER BY clause can contain a maximum of 7 fields.".into());
                }
            }
            if self.peek().is_some() {
                return Err(self.unexpected("either 'OR' or 'AND'"));
            }
            Ok(Query { filter, order })
        }

        fn or(&mut self) -> Result<Expr, String> {
            let mut e = self.and()?;
            while self.peek_kw("or") {
                self.next();
                e = Expr::Or(Box::new(e), Box::new(self.and()?));
            }
            Ok(e)
        }

        fn and(&mut self) -> Result<Expr, String> {
            let mut e = self.factor()?;
            while self.peek_kw("and") {
                self.next();
                e = Expr::And(Box::new(e), Box::new(self.factor()?));
            }
            Ok(e)
        }

        fn factor(&mut self) -> Result<Expr, String> {
            if self.peek_kw("not") {
                self.next();
                return Ok(Expr::Not(Box::new(self.factor()?)));
            }
            if self.peek().is_some_and(|t| t.tok == Tok::LParen) {
                self.next();
                let e = self.or()?;
                if !self.peek().is_some_and(|t| t.tok == Tok::RParen) {
                    return Err(self.unexpected("')'"));
                }
                self.next();
                return Ok(e);
            }
            self.clause()
        }

        /// A value or a parenthesised list of values.
        fn values(&mut self, list: bool) -> Result<Vec<String>, String> {
            if list {
                if !self.peek().is_some_and(|t| t.tok == Tok::LParen) {
                    return Err(self.unexpected("'('"));
                }
                self.next();
                let mut out = Vec::new();
                loop {
                    match self.next() {
                        Some(Token {
                            tok: Tok::Word(w) | Tok::Str(w),
                            ..
                        }) => out.push(w),
                        _ => {
                            self.pos -= 1;
                            return Err(self.unexpected("either a value, list or function"));
                        }
                    }
                    match self.next() {
                        Some(Token {
                            tok: Tok::Comma, ..
                        }) => continue,
                        Some(Token {
                            tok: Tok::RParen, ..
                        }) => break,
                        _ => {
                            self.pos -= 1;
                            return Err(self.unexpected("')'"));
                        }
                    }
                }
                return Ok(out);
            }
            match self.next() {
                Some(Token {
                    tok: Tok::Word(w) | Tok::Str(w),
                    ..
                }) if !w.eq_ignore_ascii_case("and") && !w.eq_ignore_ascii_case("or") => {
                    Ok(vec![w])
                }
                _ => {
                    self.pos -= 1;
                    Err(self.unexpected("either a value, list or function"))
                }
            }
        }

        fn clause(&mut self) -> Result<Expr, String> {
            const RESERVED: &[&str] = &["and", "or", "not", "in", "is", "empty", "null", "order"];
            if self
                .peek()
                .is_some_and(|t| RESERVED.iter().any(|r| kw(&t.tok, r)))
            {
                return Err(self.unexpected("a field name"));
            }
            let field = match self.next() {
                Some(Token {
                    tok: Tok::Word(w) | Tok::Str(w),
                    ..
                }) => w,
                _ => {
                    self.pos -= 1;
                    return Err(self.unexpected("a field name"));
                }
            };
            // The operator.
            enum Op {
                Cmp(Cmp),
                In(bool),
                Is(bool),
                Like(bool),
            }
            let op_at = self.peek().map(|t| t.at).unwrap_or(self.len + 1);
            let op = match self.next().map(|t| t.tok) {
                Some(Tok::Op(o)) => match o.as_str() {
                    "=" => Op::Cmp(Cmp::Eq),
                    "!=" => Op::Cmp(Cmp::Ne),
                    ">" => Op::Cmp(Cmp::Gt),
                    ">=" => Op::Cmp(Cmp::Ge),
                    "<" => Op::Cmp(Cmp::Lt),
                    "<=" => Op::Cmp(Cmp::Le),
                    "~" => Op::Like(false),
                    _ => Op::Like(true),
                },
                Some(Tok::Word(w)) if w.eq_ignore_ascii_case("in") => Op::In(false),
                Some(Tok::Word(w)) if w.eq_ignore_ascii_case("not") => {
                    if self.peek_kw("in") {
                        self.next();
                        Op::In(true)
                    } else {
                        return Err(self.unexpected("'IN'"));
                    }
                }
                Some(Tok::Word(w)) if w.eq_ignore_ascii_case("is") => {
                    let negate = if self.peek_kw("not") {
                        self.next();
                        true
                    } else {
                        false
                    };
                    if self.peek_kw("empty") || self.peek_kw("null") {
                        self.next();
                        Op::Is(negate)
                    } else {
                        return Err(self.unexpected("'EMPTY'"));
                    }
                }
                _ => {
                    self.pos -= 1;
                    return Err(self.unexpected("operator"));
                }
            };
            let lower = field.to_ascii_lowercase();
            let unsupported =
                |op: &str| format!("The operator '{op}' is not supported by the '{field}' field.");
            let _ = op_at;
            match lower.as_str() {
                "project" => {
                    let (values, negate) = match op {
                        Op::Cmp(Cmp::Eq) => (self.values(false)?, false),
                        Op::Cmp(Cmp::Ne) => (self.values(false)?, true),
                        Op::In(n) => (self.values(true)?, n),
                        _ => return Err(unsupported("the given")),
                    };
                    let mut ids = Vec::new();
                    for v in values {
                        match self.st.find_project(&v) {
                            Some(id) => ids.push(id),
                            None => {
                                return Err(format!(
                                    "The value '{v}' does not exist for the field 'project'."
                                ))
                            }
                        }
                    }
                    Ok(Expr::Projects(ids, negate))
                }
                "attachments" => match op {
                    Op::Is(negate) => Ok(Expr::Attachments { empty: !negate }),
                    _ => Err(unsupported("=")),
                },
                "updated" | "updateddate" | "created" | "createddate" => {
                    let df = if lower.starts_with("updated") {
                        DateField::Updated
                    } else {
                        DateField::Created
                    };
                    let Op::Cmp(c) = op else {
                        return Err(unsupported("~"));
                    };
                    let v = self.values(false)?.remove(0);
                    let at = parse_date(&v, self.now).ok_or_else(|| {
                        format!(
                            "Date value '{v}' for field '{field}' is invalid. Valid formats include: 'yyyy/MM/dd HH:mm', 'yyyy-MM-dd HH:mm', 'yyyy/MM/dd', 'yyyy-MM-dd', or a period format e.g. '-5d', '4w 2d'."
                        )
                    })?;
                    Ok(Expr::Date(df, c, at))
                }
                "key" | "issuekey" | "issue" | "id" => {
                    let (values, negate) = match op {
                        Op::Cmp(Cmp::Eq) => (self.values(false)?, false),
                        Op::Cmp(Cmp::Ne) => (self.values(false)?, true),
                        Op::In(n) => (self.values(true)?, n),
                        _ => return Err(unsupported("the given")),
                    };
                    let mut ids = Vec::new();
                    for v in values {
                        match self.st.find_issue(&v) {
                            Some(id) => ids.push(id),
                            None => {
                                return Err(format!(
                                    "An issue with key '{v}' does not exist for field '{field}'."
                                ))
                            }
                        }
                    }
                    Ok(Expr::Issues(ids, negate))
                }
                "summary" | "text" => match op {
                    Op::Like(negate) => {
                        let v = self.values(false)?.remove(0);
                        Ok(Expr::Summary(v.to_lowercase(), negate))
                    }
                    _ => Err(unsupported("=")),
                },
                _ => Err(format!(
                    "Field '{field}' does not exist or you do not have permission to view it."
                )),
            }
        }
    }

    fn parse_date(v: &str, now: SystemTime) -> Option<SystemTime> {
        let v = v.trim();
        // Relative: "-5m", "-2h", "-3d", "-1w", "4w 2d" (minutes, hours, days, weeks).
        let rel = |s: &str| -> Option<i64> {
            let (sign, body) = match s.strip_prefix('-') {
                Some(b) => (-1, b),
                None => (1, s.strip_prefix('+').unwrap_or(s)),
            };
            let mut total = 0i64;
            for part in body.split_whitespace() {
                let unit = part.chars().last()?;
                let n: i64 = part[..part.len() - 1].parse().ok()?;
                total += n * match unit {
                    'm' => 60,
                    'h' => 3600,
                    'd' => 86_400,
                    'w' => 604_800,
                    _ => return None,
                };
            }
            Some(sign * total)
        };
        if let Some(secs) = rel(v) {
            return Some(if secs < 0 {
                now - Duration::from_secs((-secs) as u64)
            } else {
                now + Duration::from_secs(secs as u64)
            });
        }
        let formats_dt = ["%Y/%m/%d %H:%M", "%Y-%m-%d %H:%M"];
        for f in formats_dt {
            if let Ok(dt) = chrono::NaiveDateTime::parse_from_str(v, f) {
                return Some(SystemTime::from(dt.and_utc()));
            }
        }
        for f in ["%Y/%m/%d", "%Y-%m-%d"] {
            if let Ok(d) = chrono::NaiveDate::parse_from_str(v, f) {
                return Some(SystemTime::from(d.and_hms_opt(0, 0, 0)?.and_utc()));
            }
        }
        None
    }

    pub fn parse(jql: &str, st: &State, now: SystemTime) -> Result<Query, String> {
        let toks = lex(jql)?;
        let mut p = Parser {
            toks,
            pos: 0,
            st,
            now,
            len: jql.chars().count(),
        };
        p.query()
    }

    fn cmp_time(a: SystemTime, c: Cmp, b: SystemTime) -> bool {
        match c {
            Cmp::Eq => a == b,
            Cmp::Ne => a != b,
            Cmp::Gt => a > b,
            Cmp::Ge => a >= b,
            Cmp::Lt => a < b,
            Cmp::Le => a <= b,
        }
    }

    fn eval(e: &Expr, st: &State, i: &Issue) -> bool {
        match e {
            Expr::And(a, b) => eval(a, st, i) && eval(b, st, i),
            Expr::Or(a, b) => eval(a, st, i) || eval(b, st, i),
            Expr::Not(a) => !eval(a, st, i),
            Expr::Projects(ids, negate) => ids.contains(&i.project) != *negate,
            Expr::Attachments { empty } => st.issue_attachments(i.id).is_empty() == *empty,
            Expr::Date(f, c, at) => {
                let t = match f {
                    DateField::Updated => i.updated,
                    DateField::Created => i.created,
                };
                cmp_time(t, *c, *at)
            }
            Expr::Issues(ids, negate) => ids.contains(&i.id) != *negate,
            Expr::Summary(text, negate) => i.summary.to_lowercase().contains(text) != *negate,
        }
    }

    fn key_parts(k: &str) -> (String, u64) {
        match k.rsplit_once('-') {
            Some((p, n)) => (p.to_owned(), n.parse().unwrap_or(0)),
            None => (k.to_owned(), 0),
        }
    }

    impl Query {
        /// "A bounded query is a query with a search restriction" (jira.js docs): any clause.
        pub fn bounded(&self) -> bool {
            self.filter.is_some()
        }

        pub fn matches(&self, st: &State, i: &Issue) -> bool {
            self.filter.as_ref().is_none_or(|e| eval(e, st, i))
        }

        /// In `ORDER BY` order; without one, newest first (`created DESC`), ties by id.
        pub fn sort(&self, st: &State, hits: &mut [&Issue]) {
            let order: Vec<(OrderField, bool)> = if self.order.is_empty() {
                vec![(OrderField::Created, true), (OrderField::Id, true)]
            } else {
                self.order.clone()
            };
            hits.sort_by(|a, b| {
                for (f, desc) in &order {
                    let o = match f {
                        OrderField::Updated => a.updated.cmp(&b.updated),
                        OrderField::Created => a.created.cmp(&b.created),
                        OrderField::Id => a.id.cmp(&b.id),
                        OrderField::Key => key_parts(&a.key).cmp(&key_parts(&b.key)),
                        OrderField::Project => st.projects[&a.project]
                            .key
                            .cmp(&st.projects[&b.project].key),
                        OrderField::Summary => a.summary.cmp(&b.summary),
                    };
                    let o = if *desc { o.reverse() } else { o };
                    if o != Ordering::Equal {
                        return o;
                    }
                }
                a.id.cmp(&b.id)
            });
        }
    }
}
