//! Atlassian Cloud as read-only folders (issue 13): Confluence spaces and pages
//! ([`confluence`]) and Jira issue attachments ([`jira`]). What both share is here: the
//! site and how to sign in, the API client (one per connection, on the provider kit), and
//! how Atlassian reports errors and rate limits.
//!
//! Signing in (reference: `shared/reference/readonly-sources.md` §2.2):
//! - **API token** (the default for a desktop mount): HTTP Basic with the account's email
//!   and a token from a 0600 file or a command, sent to the site
//!   (`https://<site>.atlassian.net`). A *scoped* API token only works through the API
//!   gateway: set `cloud_id`, and requests go to
//!   `https://api.atlassian.com/ex/{confluence|jira}/{cloudId}`.
//! - **OAuth 2.0 (3LO)**, `auth = "oauth"`: `cloudmount login` through Atlassian's
//!   authorization server (rotating refresh tokens, kept in the token vault); requests go
//!   through the gateway, the cloud id found with `GET /oauth/token/accessible-resources`
//!   (the resource whose `url` is the site) unless `cloud_id` is set.
//!
//! Every base URL can be set (`api_base`, `gateway_url`), which is how the tests point a
//! connection at the emulator.

pub mod adf;
pub mod confluence;
pub mod jira;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use reqwest::header::HeaderMap;
use reqwest::StatusCode;
use serde::Deserialize;
use serde_json::Value;
use tokio::sync::OnceCell;

use super::kit::auth::{Authenticator, Credential, FixedAuth, OAuthBearer};
use super::kit::client::{ApiClient, Call, HttpSettings};
use super::kit::errors::{classify_status, ErrorDetail, ServiceErrors};
use super::kit::retry::{cloud_api, retry_after, Idempotency, RetryPolicy};
use super::{ProviderError, ProviderResult};
use crate::accounts::BearerTokens;
use crate::secrets::{read_secret_file, run_secret_command, Secret};

/// The Atlassian API gateway (OAuth and scoped API tokens).
pub const GATEWAY: &str = "https://api.atlassian.com";

/// Which product a connection reads: its part of the gateway's path and its API's path.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Product {
    Confluence,
    Jira,
}

impl Product {
    fn gateway_segment(self) -> &'static str {
        match self {
            Product::Confluence => "confluence",
            Product::Jira => "jira",
        }
    }

    /// The API's path below the site.
    fn api_path(self) -> &'static str {
        match self {
            Product::Confluence => "/wiki/api/v2",
            Product::Jira => "/rest/api/3",
        }
    }
}

/// How a connection signs in.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AuthKind {
    /// HTTP Basic with the account email and an API token.
    #[default]
    Token,
    /// OAuth 2.0 (3LO) bearer tokens from `cloudmount login`.
    Oauth,
}

/// The settings both products share (the `[connection.settings]` keys).
#[derive(Debug, Clone, Deserialize)]
pub struct SiteConfig {
    /// The site, `https://<name>.atlassian.net`.
    pub site: String,
    #[serde(default)]
    pub auth: AuthKind,
    /// The account's email (API-token sign-in).
    #[serde(default)]
    pub email: Option<String>,
    /// A file only its owner may read, holding the API token.
    #[serde(default)]
    pub token_file: Option<PathBuf>,
    /// A command printing the API token (`pass show atlassian`), when there is no file.
    #[serde(default)]
    pub token_command: Option<String>,
    /// The site's cloud id: requests go through the API gateway (scoped API tokens; OAuth
    /// finds it by itself when unset).
    #[serde(default)]
    pub cloud_id: Option<String>,
    #[serde(default = "default_gateway")]
    pub gateway_url: String,
    /// The API base itself (`…/wiki/api/v2`, `…/rest/api/3`), overriding all the above.
    #[serde(default)]
    pub api_base: Option<String>,
    #[serde(default = "default_rps")]
    pub max_requests_per_second: f64,
    #[serde(default = "cloud_api::max_retries")]
    pub max_retries: u32,
    #[serde(default = "cloud_api::retry_base_ms")]
    pub retry_base_delay_ms: u64,
    #[serde(default = "cloud_api::retry_budget_secs")]
    pub retry_budget_secs: u64,
    #[serde(default = "cloud_api::timeout_secs")]
    pub timeout_secs: u64,
}

/// The keys of [`SiteConfig`], for the check against misspelt settings.
pub const SITE_KEYS: &[&str] = &[
    "site",
    "auth",
    "email",
    "token_file",
    "token_command",
    "cloud_id",
    "gateway_url",
    "api_base",
    "max_requests_per_second",
    "max_retries",
    "retry_base_delay_ms",
    "retry_budget_secs",
    "timeout_secs",
];

fn default_gateway() -> String {
    GATEWAY.into()
}

/// Atlassian's burst limits allow more, but a mount has no hurry: ten a second keeps a
/// full walk of a big space from drawing 429s for everybody else on the account.
fn default_rps() -> f64 {
    10.0
}

/// Refuses keys neither the site settings nor the product's own (`own`) know: a misspelt
/// `spaces` would otherwise mount every space without a word.
pub fn check_keys(settings: &toml::Table, own: &[&str]) -> Result<(), String> {
    let unknown: Vec<&str> = settings
        .keys()
        .map(String::as_str)
        .filter(|k| !SITE_KEYS.contains(k) && !own.contains(k))
        .collect();
    if unknown.is_empty() {
        Ok(())
    } else {
        Err(format!("unknown setting(s): {}", unknown.join(", ")))
    }
}

/// A `/` in a title shown as `∕` (U+2215), control characters dropped, `.` and `..` and
/// empty titles never names: what a title becomes as a name (before making it unique).
pub fn title_to_name(title: &str) -> String {
    let name: String = title
        .chars()
        .filter(|c| !c.is_control())
        .map(|c| if c == '/' { '∕' } else { c })
        .collect();
    let name = name.trim().to_owned();
    match name.as_str() {
        "" => "Untitled".into(),
        "." | ".." => name.replace('.', "․"),
        _ => name,
    }
}

/// `stem` cut (at a character boundary) so that `stem + suffix` fits in 255 bytes.
pub fn fit_name(stem: &str, suffix: &str) -> String {
    let room = 255usize.saturating_sub(suffix.len());
    let mut end = stem.len().min(room);
    while !stem.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}{suffix}", stem[..end].trim_end())
}

/// Unique names for siblings, in their order: the first of a group of equal names keeps
/// it, the others get ` [<id>]` before `ext`. `reserved` names are never given plainly.
pub fn unique_names(items: &[(String, String, &str)], reserved: &[&str]) -> Vec<String> {
    let mut taken: std::collections::BTreeSet<String> =
        reserved.iter().map(|s| s.to_string()).collect();
    let mut out = Vec::with_capacity(items.len());
    for (id, stem, ext) in items {
        let name = first_free(stem, id, ext, |n| taken.contains(n));
        taken.insert(name.clone());
        out.push(name);
    }
    out
}

/// `stem + ext` unless `taken`; else `stem [id] + ext`, then `stem [id] 2 + ext` and on
/// (a title may itself end in ` [id]`). Only letters, digits, `-` and `_` of the id are
/// used, so a name never gets a `/` from it.
pub fn first_free(stem: &str, id: &str, ext: &str, taken: impl Fn(&str) -> bool) -> String {
    let plain = fit_name(stem, ext);
    if !taken(&plain) {
        return plain;
    }
    let id: String = id
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || *c == '-' || *c == '_')
        .collect();
    let mut n = 1;
    loop {
        let suffix = if n == 1 {
            format!(" [{id}]{ext}")
        } else {
            format!(" [{id}] {n}{ext}")
        };
        let name = fit_name(stem, &suffix);
        if !taken(&name) {
            return name;
        }
        n += 1;
    }
}

/// An RFC 3339 / ISO 8601 instant as Confluence (`2026-12-01T10:15:30.123Z`) and Jira
/// (`2026-12-01T10:15:30.123+0000`) write them.
pub fn parse_instant(s: &str) -> Option<SystemTime> {
    let t = chrono::DateTime::parse_from_rfc3339(s)
        .or_else(|_| chrono::DateTime::parse_from_str(s, "%Y-%m-%dT%H:%M:%S%.f%z"))
        .ok()?;
    let ms = t.timestamp_millis();
    Some(if ms >= 0 {
        SystemTime::UNIX_EPOCH + Duration::from_millis(ms as u64)
    } else {
        SystemTime::UNIX_EPOCH
    })
}

/// The invalidations of a provider's caches, in order: a fetch notes when it began
/// ([`Invalidations::now`]) and keeps what it got only if nothing it depends on was
/// invalidated since ([`Invalidations::fresh`]) — else it could put back what the
/// invalidation dropped. Per part (a space, a project), so that news elsewhere does not
/// keep a slow fetch from ever being kept. A listing notes when it began before it looks
/// at its parent's listing, so that one built from a parent fetched across an
/// invalidation is not kept either.
#[derive(Debug, Default)]
pub struct Invalidations {
    seq: u64,
    all: u64,
    parts: std::collections::HashMap<String, u64>,
}

impl Invalidations {
    pub fn now(&self) -> u64 {
        self.seq
    }

    /// Everything cached was dropped.
    pub fn all(&mut self) {
        self.seq += 1;
        self.all = self.seq;
    }

    /// What was cached of `part` was dropped.
    pub fn part(&mut self, part: &str) {
        self.seq += 1;
        self.parts.insert(part.to_owned(), self.seq);
    }

    /// Whether what a fetch begun at `start` got (of `part`, or above the parts) may be
    /// kept.
    pub fn fresh(&self, start: u64, part: Option<&str>) -> bool {
        self.all <= start && part.is_none_or(|p| self.parts.get(p).copied().unwrap_or(0) <= start)
    }
}

/// When a fetch began, and what it fetched (a part, or above the parts).
pub struct Gen {
    pub start: u64,
    pub part: Option<String>,
}

/// How far below the watermark a change query looks again: clock skew, items saved in the
/// same second as the last one seen, and Jira's minute precision.
pub const OVERLAP: Duration = Duration::from_secs(120);

/// One item a change query returned.
pub struct Modified {
    pub id: String,
    /// What changes with every change of the item (a page's version number, an issue's
    /// `updated` in milliseconds).
    pub stamp: u64,
    /// When it was modified, milliseconds since the epoch.
    pub at_ms: u64,
    /// What it belongs to (its space or project id): the part of the tree to look at again.
    pub group: String,
}

/// Where a change feed left off: the newest modification seen, what was seen within the
/// overlap below it (so that looking again there reports nothing twice), and when every
/// listed folder was last looked at again. The change cursor, as JSON.
#[derive(Debug, Clone, Default, serde::Serialize, Deserialize)]
pub struct Watermark {
    pub since_ms: u64,
    pub seen: std::collections::BTreeMap<String, u64>,
    /// Seconds since the epoch.
    pub walked: u64,
}

/// What a change query means: the groups with news, and whether a full walk is due.
pub struct Advance {
    pub next: Watermark,
    pub changed: std::collections::BTreeSet<String>,
    pub walk: bool,
}

impl Watermark {
    /// A cursor at the newest of `recent` (`at_least` when that is later: the service's
    /// now when nothing changed lately), with what is within the overlap already seen.
    pub fn start(recent: &[Modified], at_least: u64, now_secs: u64) -> Watermark {
        let since_ms = recent
            .iter()
            .map(|m| m.at_ms)
            .max()
            .unwrap_or(0)
            .max(at_least);
        let mut w = Watermark {
            since_ms,
            seen: Default::default(),
            walked: now_secs,
        };
        w.remember(recent);
        w
    }

    /// The lowest modification time a change query must return.
    pub fn floor(&self) -> u64 {
        self.since_ms.saturating_sub(OVERLAP.as_millis() as u64)
    }

    fn remember(&mut self, recent: &[Modified]) {
        let floor = self.floor();
        self.seen = recent
            .iter()
            .filter(|m| m.at_ms >= floor)
            .map(|m| (m.id.clone(), m.stamp))
            .collect();
    }

    /// What in `recent` this watermark has not seen. What lies below the overlap was
    /// seen when it was above it (a query at minute precision returns some of it again).
    pub fn news<'a>(&'a self, recent: &'a [Modified]) -> impl Iterator<Item = &'a Modified> {
        let floor = self.floor();
        recent
            .iter()
            .filter(move |m| m.at_ms >= floor && self.seen.get(&m.id) != Some(&m.stamp))
    }

    /// Reads what a change query from [`Watermark::floor`] returned. An item that moved
    /// between groups changes both: `homes` says where each item was last listed.
    pub fn advance(
        &self,
        recent: &[Modified],
        homes: &std::collections::HashMap<String, String>,
        now_secs: u64,
        walk_every: u64,
    ) -> Advance {
        let changed = self
            .news(recent)
            .flat_map(|m| std::iter::once(m.group.clone()).chain(homes.get(&m.id).cloned()))
            .collect();
        let mut next = Watermark {
            since_ms: recent
                .iter()
                .map(|m| m.at_ms)
                .max()
                .unwrap_or(0)
                .max(self.since_ms),
            seen: Default::default(),
            walked: self.walked,
        };
        next.remember(recent);
        let walk = now_secs.saturating_sub(self.walked) >= walk_every;
        if walk {
            next.walked = now_secs;
        }
        Advance {
            next,
            changed,
            walk,
        }
    }
}

/// Seconds since the epoch, now.
pub fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// Milliseconds since the epoch of `t` (0 before it).
pub fn millis(t: SystemTime) -> u64 {
    t.duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// What to look at again after a change query: `None` when nothing; `Err` when there is
/// news but nothing has been listed since this process started (the changes are from
/// before, and which folders they touch is unknown: every listing is fetched again).
pub fn folders_to_relist(
    advance: &Advance,
    served: &super::kit::relist::Served,
    product: &str,
) -> ProviderResult<Option<bool>> {
    if advance.changed.is_empty() && !advance.walk {
        return Ok(None);
    }
    if served.is_empty() {
        if advance.changed.is_empty() {
            return Ok(None);
        }
        return Err(ProviderError::PreconditionFailed(format!(
            "{product} changed while the mount was not watching"
        )));
    }
    Ok(Some(advance.walk))
}

/// How Atlassian reports failures. Jira: `{"errorMessages":[…],"errors":{field: msg}}`;
/// Confluence v2: `{"errors":[{"status","code","title","detail"}]}`; the gateway and
/// Confluence v1: `{"code":401,"message":"…"}` or `{"statusCode":…,"message":…}`.
/// Rate limits: 429 (and some 503s) with `Retry-After` in seconds, or only
/// `X-RateLimit-Reset` (an ISO 8601 instant), and Jira's `RateLimit-Reason`
/// (developer.atlassian.com/cloud/jira/platform/rate-limiting).
pub struct AtlassianErrors;

impl ServiceErrors for AtlassianErrors {
    fn detail(&self, body: &[u8]) -> ErrorDetail {
        let Ok(v) = serde_json::from_slice::<Value>(body) else {
            return ErrorDetail::plain(body);
        };
        let mut messages: Vec<String> = Vec::new();
        let mut code = None;
        if let Some(list) = v.get("errorMessages").and_then(Value::as_array) {
            messages.extend(list.iter().filter_map(Value::as_str).map(str::to_owned));
        }
        match v.get("errors") {
            Some(Value::Object(fields)) => messages.extend(
                fields
                    .iter()
                    .filter_map(|(k, m)| m.as_str().map(|m| format!("{k}: {m}"))),
            ),
            Some(Value::Array(list)) => {
                for e in list {
                    let text = [e.get("title"), e.get("detail")]
                        .into_iter()
                        .flatten()
                        .filter_map(Value::as_str)
                        .collect::<Vec<_>>()
                        .join(": ");
                    if !text.is_empty() {
                        messages.push(text);
                    }
                    if code.is_none() {
                        code = e.get("code").and_then(Value::as_str).map(str::to_owned);
                    }
                }
            }
            _ => {}
        }
        if let Some(m) = v.get("message").and_then(Value::as_str) {
            messages.push(m.to_owned());
        }
        ErrorDetail {
            message: (!messages.is_empty()).then(|| messages.join("; ")),
            code,
            retry_after: None,
        }
    }

    fn classify(
        &self,
        status: StatusCode,
        headers: &HeaderMap,
        detail: &ErrorDetail,
        what: &str,
    ) -> ProviderError {
        let mut message = detail.describe(what, status);
        if let Some(reason) = headers
            .get("RateLimit-Reason")
            .and_then(|v| v.to_str().ok())
        {
            message.push_str(&format!(" [{reason}]"));
        }
        let wait = retry_after(headers).or_else(|| reset_in(headers, SystemTime::now()));
        match status.as_u16() {
            // A removed API (Jira's old /search): asking again cannot help.
            410 => ProviderError::Unsupported(message),
            _ => classify_status(status, wait, message),
        }
    }
}

/// How long until `X-RateLimit-Reset` (an ISO 8601 instant), for a 429 without
/// `Retry-After`.
/// Atlassian documents the header to the minute (`yyyy-MM-ddTHH:mmZ`, JRACLOUD-69262):
/// such a reset is waited for to the end of its minute.
fn reset_in(headers: &HeaderMap, now: SystemTime) -> Option<Duration> {
    let value = headers.get("X-RateLimit-Reset")?.to_str().ok()?.trim();
    let at = match parse_instant(value) {
        Some(t) => t,
        None => {
            let minute = chrono::NaiveDateTime::parse_from_str(value, "%Y-%m-%dT%H:%MZ").ok()?;
            let secs = u64::try_from(minute.and_utc().timestamp()).ok()?;
            SystemTime::UNIX_EPOCH + Duration::from_secs(secs + 60)
        }
    };
    Some(at.duration_since(now).unwrap_or(Duration::ZERO))
}

/// One connection's way to the site: the API client, and where its API is (found on first
/// use when OAuth has to look the cloud id up).
pub struct Site {
    pub api: Arc<ApiClient>,
    cfg: SiteConfig,
    product: Product,
    base: OnceCell<String>,
}

impl Site {
    /// The API client for `cfg`; `tokens` for OAuth connections. The API token is read
    /// here, once: from its file (which must be private to its owner) or its command.
    pub fn new(
        cfg: SiteConfig,
        product: Product,
        tokens: Option<Arc<dyn BearerTokens>>,
    ) -> Result<Site, String> {
        reqwest::Url::parse(&cfg.site).map_err(|e| format!("bad site URL {:?}: {e}", cfg.site))?;
        for u in [Some(&cfg.gateway_url), cfg.api_base.as_ref()]
            .into_iter()
            .flatten()
        {
            reqwest::Url::parse(u).map_err(|e| format!("bad URL {u:?}: {e}"))?;
        }
        let auth: Arc<dyn Authenticator> = match cfg.auth {
            AuthKind::Token => {
                let email = cfg
                    .email
                    .clone()
                    .ok_or("API-token sign-in needs `email` (the Atlassian account's)")?;
                let token = match (&cfg.token_file, &cfg.token_command) {
                    (Some(f), _) => read_secret_file(f).map_err(|e| e.to_string())?,
                    (None, Some(c)) => run_secret_command(c).map_err(|e| e.to_string())?,
                    (None, None) => {
                        return Err("API-token sign-in needs `token_file` or `token_command` \
                                    (or auth = \"oauth\")"
                            .into())
                    }
                };
                Arc::new(FixedAuth(Credential::Basic {
                    user: email,
                    password: Some(Secret::new(token.expose())),
                }))
            }
            AuthKind::Oauth => Arc::new(OAuthBearer(
                tokens.ok_or("auth = \"oauth\" needs `cloudmount login` for this connection")?,
            )),
        };
        let http = HttpSettings::new(Duration::from_secs(cfg.timeout_secs)).build()?;
        let retry = RetryPolicy::from_settings(
            cfg.max_retries,
            cfg.retry_base_delay_ms,
            cfg.retry_budget_secs,
            Duration::from_secs(300),
        );
        let api = Arc::new(ApiClient::new(
            http,
            auth,
            Arc::new(AtlassianErrors),
            retry,
            cfg.max_requests_per_second,
        ));
        Ok(Site {
            api,
            cfg,
            product,
            base: OnceCell::new(),
        })
    }

    pub fn config(&self) -> &SiteConfig {
        &self.cfg
    }

    /// The site URL without a trailing slash.
    pub fn site_url(&self) -> &str {
        self.cfg.site.trim_end_matches('/')
    }

    /// The API base (`…/wiki/api/v2` or `…/rest/api/3`).
    pub async fn base(&self) -> ProviderResult<&str> {
        self.base
            .get_or_try_init(|| async {
                if let Some(b) = &self.cfg.api_base {
                    return Ok(b.trim_end_matches('/').to_owned());
                }
                let path = self.product.api_path();
                let cloud_id = match (&self.cfg.cloud_id, self.cfg.auth) {
                    (Some(id), _) => id.clone(),
                    (None, AuthKind::Token) => return Ok(format!("{}{path}", self.site_url())),
                    (None, AuthKind::Oauth) => self.find_cloud_id().await?,
                };
                Ok(format!(
                    "{}/ex/{}/{cloud_id}{path}",
                    self.cfg.gateway_url.trim_end_matches('/'),
                    self.product.gateway_segment()
                ))
            })
            .await
            .map(String::as_str)
    }

    /// The cloud id of the site among those the OAuth grant reaches.
    async fn find_cloud_id(&self) -> ProviderResult<String> {
        #[derive(Deserialize)]
        struct Resource {
            id: String,
            url: String,
        }
        let url = format!(
            "{}/oauth/token/accessible-resources",
            self.cfg.gateway_url.trim_end_matches('/')
        );
        let resources: Vec<Resource> = self
            .api
            .json(Call::new("accessible-resources"), || {
                let r = self.api.http().get(&url).build();
                async move { r.map_err(|e| ProviderError::Protocol(e.to_string())) }
            })
            .await?;
        let site = self.site_url().to_ascii_lowercase();
        resources
            .iter()
            .find(|r| r.url.trim_end_matches('/').to_ascii_lowercase() == site)
            .map(|r| r.id.clone())
            .ok_or_else(|| {
                let known: Vec<&str> = resources.iter().map(|r| r.url.as_str()).collect();
                ProviderError::PermissionDenied(format!(
                    "the OAuth grant does not reach {}; it reaches: {}",
                    self.site_url(),
                    if known.is_empty() {
                        "no site".to_owned()
                    } else {
                        known.join(", ")
                    }
                ))
            })
    }

    /// GET `url` (with `query`) and decode the JSON reply. Reads are idempotent: a reply
    /// cut short is asked for again.
    pub async fn get_json<T: serde::de::DeserializeOwned>(
        &self,
        what: &str,
        url: &str,
        query: &[(&str, String)],
    ) -> ProviderResult<T> {
        self.api
            .json(Call::new(what).idempotency(Idempotency::Idempotent), || {
                let r = self.api.http().get(url).query(query).build();
                async move { r.map_err(|e| ProviderError::Protocol(e.to_string())) }
            })
            .await
    }
}

impl Site {
    /// Bytes `[offset, offset + len)` of the file at `url` (with `query`): a ranged GET,
    /// redirects followed (to a media host, without our `Authorization`); a server that
    /// ignores `Range` sends the whole file, of which the window asked for is kept. `path`
    /// names the file in errors (a 404 is the file's `NotFound`).
    pub async fn ranged_get(
        &self,
        path: &str,
        url: &str,
        query: &[(&str, &str)],
        offset: u64,
        len: u64,
    ) -> ProviderResult<super::ByteStream> {
        use super::kit::ranged::{self, Ranged};
        use futures::StreamExt;
        if len == 0 {
            return Ok(Box::pin(futures::stream::empty()));
        }
        let what = format!("download {path}");
        let range = ranged::range_header(offset, len);
        let resp = self
            .api
            .send_raw(
                Call::new(&what).idempotency(Idempotency::Idempotent),
                || {
                    let r = self
                        .api
                        .http()
                        .get(url)
                        .query(query)
                        .header(reqwest::header::RANGE, &range)
                        .build();
                    async move { r.map_err(|e| ProviderError::Protocol(e.to_string())) }
                },
            )
            .await?;
        let skip = match ranged::interpret(resp.status(), resp.headers(), offset, &what) {
            Some(Ok(Ranged::PastEnd)) => return Ok(Box::pin(futures::stream::empty())),
            Some(Ok(Ranged::Body { skip, .. })) => skip,
            Some(Err(e)) => return Err(e),
            None => {
                return Err(match self.api.error_of(resp, &what).await {
                    ProviderError::NotFound(_) => ProviderError::NotFound(path.to_owned()),
                    e => e,
                })
            }
        };
        let body = resp
            .bytes_stream()
            .map(move |r| r.map_err(|e| super::kit::client::transport_error(&e, "download")));
        Ok(ranged::window(body, skip, len))
    }
}

/// An id as the APIs write it: a string (v2, Jira), or a number (some v1 and Jira replies).
pub fn id<'de, D: serde::Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    match Value::deserialize(d)? {
        Value::String(s) => Ok(s),
        Value::Number(n) => Ok(n.to_string()),
        other => Err(serde::de::Error::custom(format!("bad id {other}"))),
    }
}

/// An id that may be absent, null or empty (a page at the top of its space).
pub fn opt_id<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    match Option::<Value>::deserialize(d)? {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) if s.is_empty() => Ok(None),
        Some(Value::String(s)) => Ok(Some(s)),
        Some(Value::Number(n)) => Ok(Some(n.to_string())),
        Some(other) => Err(serde::de::Error::custom(format!("bad id {other}"))),
    }
}

/// An optional instant as an mtime (the epoch when absent or unreadable).
pub fn instant(s: &Option<String>) -> SystemTime {
    s.as_deref()
        .and_then(parse_instant)
        .unwrap_or(SystemTime::UNIX_EPOCH)
}

#[cfg(test)]
mod tests {
    use super::*;
    use reqwest::header::HeaderValue;

    #[test]
    fn error_bodies_of_both_products_read() {
        let e = AtlassianErrors;
        let jira = e.detail(
            br#"{"errorMessages":["Issue does not exist or you do not have permission to see it."],"errors":{}}"#,
        );
        assert_eq!(
            jira.message.as_deref(),
            Some("Issue does not exist or you do not have permission to see it.")
        );
        let jira_field = e.detail(br#"{"errorMessages":[],"errors":{"jql":"bad"}}"#);
        assert_eq!(jira_field.message.as_deref(), Some("jql: bad"));
        let conf = e.detail(
            br#"{"errors":[{"status":404,"code":"NOT_FOUND","title":"Not Found","detail":null}]}"#,
        );
        assert_eq!(conf.message.as_deref(), Some("Not Found"));
        assert_eq!(conf.code.as_deref(), Some("NOT_FOUND"));
        let gw = e.detail(br#"{"code":401,"message":"Unauthorized"}"#);
        assert_eq!(gw.message.as_deref(), Some("Unauthorized"));
        assert_eq!(
            e.detail(b"Bad gateway").message.as_deref(),
            Some("Bad gateway")
        );
    }

    #[test]
    fn rate_limits_wait_for_retry_after_or_the_reset_instant() {
        let e = AtlassianErrors;
        let mut h = HeaderMap::new();
        h.insert("Retry-After", HeaderValue::from_static("7"));
        h.insert(
            "RateLimit-Reason",
            HeaderValue::from_static("jira-burst-based"),
        );
        assert_eq!(
            e.classify(
                StatusCode::TOO_MANY_REQUESTS,
                &h,
                &ErrorDetail::default(),
                "search"
            ),
            ProviderError::RateLimited {
                retry_after: Some(Duration::from_secs(7))
            }
        );
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000);
        let mut reset = HeaderMap::new();
        reset.insert(
            "X-RateLimit-Reset",
            HeaderValue::from_static("2027-01-15T08:00:05Z"),
        );
        assert_eq!(
            reset_in(&reset, now),
            Some(Duration::from_secs(5)),
            "2027-01-15T08:00:00Z is 1,800,000,000"
        );
        // As documented: to the minute, waited for to its end; alone, without Retry-After.
        let mut minute = HeaderMap::new();
        minute.insert(
            "X-RateLimit-Reset",
            HeaderValue::from_static("2027-01-15T08:01Z"),
        );
        assert_eq!(reset_in(&minute, now), Some(Duration::from_secs(120)));
        match e.classify(
            StatusCode::TOO_MANY_REQUESTS,
            &minute,
            &ErrorDetail::default(),
            "x",
        ) {
            // The reset lies in 2027: a wait of weeks, not the default backoff.
            ProviderError::RateLimited {
                retry_after: Some(d),
            } => assert!(d > Duration::from_secs(86_400), "{d:?}"),
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            e.classify(
                StatusCode::GONE,
                &HeaderMap::new(),
                &ErrorDetail::default(),
                "search"
            ),
            ProviderError::Unsupported(_)
        ));
        assert!(matches!(
            e.classify(
                StatusCode::NOT_FOUND,
                &HeaderMap::new(),
                &ErrorDetail::default(),
                "page"
            ),
            ProviderError::NotFound(_)
        ));
    }

    #[test]
    fn a_fetch_across_an_invalidation_is_not_kept() {
        let mut i = Invalidations::default();
        let before = i.now();
        i.part("A");
        assert!(
            !i.fresh(before, Some("A")),
            "its part was dropped meanwhile"
        );
        assert!(i.fresh(before, Some("B")), "news elsewhere does not matter");
        assert!(i.fresh(before, None));
        assert!(i.fresh(i.now(), Some("A")), "begun after: kept");
        let before = i.now();
        i.all();
        assert!(!i.fresh(before, Some("B")) && !i.fresh(before, None));
    }

    #[test]
    fn names_made_unique_never_collide() {
        let items = [
            ("9".to_owned(), "Notes [2]".to_owned(), ".md"),
            ("1".to_owned(), "Notes".to_owned(), ".md"),
            ("2".to_owned(), "Notes".to_owned(), ".md"),
            ("a/b".to_owned(), "Notes".to_owned(), ".md"),
        ];
        assert_eq!(
            unique_names(&items, &[]),
            [
                "Notes [2].md",
                "Notes.md",
                "Notes [2] 2.md",
                "Notes [ab].md"
            ]
        );
    }

    #[test]
    fn titles_become_names() {
        assert_eq!(title_to_name("a/b"), "a∕b");
        assert_eq!(title_to_name(" x\u{7}y "), "xy");
        assert_eq!(title_to_name(""), "Untitled");
        assert_eq!(title_to_name(".."), "․․");
        let long = "é".repeat(200);
        let fitted = fit_name(&long, ".md");
        assert!(fitted.len() <= 255 && fitted.ends_with(".md"));
    }

    fn modified(id: &str, stamp: u64, at_ms: u64, group: &str) -> Modified {
        Modified {
            id: id.into(),
            stamp,
            at_ms,
            group: group.into(),
        }
    }

    #[test]
    fn the_watermark_reports_each_change_once_and_walks_when_due() {
        let homes = std::collections::HashMap::from([("3".to_owned(), "C".to_owned())]);
        // Nothing lately: the mark is the bound given, not the epoch.
        assert_eq!(Watermark::start(&[], 777_000, 50).since_ms, 777_000);
        let w = Watermark::start(&[modified("1", 3, 1_000_000, "A")], 0, 50);
        assert_eq!(w.since_ms, 1_000_000);
        // The same page again within the overlap: no news.
        let a = w.advance(&[modified("1", 3, 1_000_000, "A")], &homes, 60, 600);
        assert!(a.changed.is_empty() && !a.walk);
        // A new version of it, and another page in another space.
        let a = a.next.advance(
            &[
                modified("1", 4, 1_050_000, "A"),
                modified("2", 1, 1_060_000, "B"),
            ],
            &homes,
            70,
            600,
        );
        assert_eq!(a.changed.iter().collect::<Vec<_>>(), ["A", "B"]);
        assert_eq!(a.next.since_ms, 1_060_000);
        // Below the overlap: seen before, whatever the query returns.
        let a = a
            .next
            .advance(&[modified("9", 1, 900_000, "Z")], &homes, 75, 600);
        assert!(a.changed.is_empty());
        // Item 3 was listed in C and is in B now: both changed.
        let a = a
            .next
            .advance(&[modified("3", 1, 1_070_000, "B")], &homes, 80, 600);
        assert_eq!(a.changed.iter().collect::<Vec<_>>(), ["B", "C"]);
        let a = a.next.advance(&[], &homes, 700, 600);
        assert!(a.changed.is_empty() && a.walk);
        assert_eq!(a.next.walked, 700);
        assert_eq!(a.next.since_ms, 1_070_000, "nothing new keeps the mark");
    }

    #[test]
    fn instants_of_both_products_parse() {
        let a = parse_instant("2026-12-01T10:15:30.123Z").unwrap();
        let b = parse_instant("2026-12-01T10:15:30.123+0000").unwrap();
        assert_eq!(a, b);
        assert!(parse_instant("yesterday").is_none());
    }
}
