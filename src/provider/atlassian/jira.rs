//! Jira Cloud issue attachments as read-only folders, through the REST v3 API.
//!
//! Layout: one folder per project, `<KEY> <project name>`; in it one folder per issue
//! that has attachments, `<KEY-123> <summary>`, holding the attachments under their file
//! names (a name two attachments of one issue share gets ` [<attachment id>]` before its
//! extension on all but the first). Issues are known by id: a key changes when an issue
//! moves to another project, and the folder's name follows.
//!
//! - Projects: those named in `projects` (`/project/{key}`), else every project the
//!   account can browse (`/project/search`, offset paging).
//! - Issues: `GET /search/jql` with `nextPageToken` paging and the fields asked for
//!   explicitly (the default is ids only); `project = "KEY" AND attachments IS NOT EMPTY`,
//!   and the connection's `jql` (in brackets) when set. The old `/search` is gone (410).
//! - Reads: `/attachment/content/{id}?redirect=false` with `Range` (without
//!   `redirect=false` Jira answers 303 to a media URL where Range is not promised).
//! - Changes: `updated >= "-<n>m"` (minutes back from the server's own clock, read from
//!   its `Date` header: JQL's absolute dates are in the user's time zone, which the API
//!   does not hand out in a form we can use) over the watched projects, *without* the
//!   attachments filter (removing an issue's last attachment must be seen), deduplicated
//!   by issue and `updated`; a changed project's listed folders are listed again. Every
//!   `full_walk_secs` every listed folder is looked at again, which is how deleted issues
//!   and lost permissions are seen.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use async_trait::async_trait;
use serde::Deserialize;

use super::{
    check_keys, folders_to_relist, id, instant, millis, now_secs, title_to_name, unique_names, Gen,
    Invalidations, Modified, Product, Site, SiteConfig, Watermark, OVERLAP,
};
use crate::accounts::BearerTokens;
use crate::provider::kit::client::Call;
use crate::provider::kit::paging::{self, Page};
use crate::provider::kit::relist::Served;
use crate::provider::kit::retry::Idempotency;
use crate::provider::{
    is_same_or_below, join_path, split_path, ByteStream, Capabilities, ChangeBatch, EntryKind,
    ListStream, Provider, ProviderError, ProviderResult, Quota, RemoteEntry,
};

/// Issues asked for per search request (Jira may hand out fewer).
const SEARCH_PAGE: u32 = 100;
/// Projects per `/project/search` request.
const PROJECT_PAGE: u64 = 50;

/// `[connection.settings]` of a `type = "jira"` connection, besides the site's.
#[derive(Debug, Clone, Deserialize)]
pub struct JiraConfig {
    #[serde(flatten)]
    pub site: SiteConfig,
    /// Project keys to show; empty: every project the account can browse.
    #[serde(default)]
    pub projects: Vec<String>,
    /// More JQL every issue shown must match (`status != Done`), ANDed to the project.
    #[serde(default)]
    pub jql: Option<String>,
    /// How often every listed folder is looked at again (deleted issues).
    #[serde(default = "default_full_walk")]
    pub full_walk_secs: u64,
}

const OWN_KEYS: &[&str] = &["projects", "jql", "full_walk_secs"];

fn default_full_walk() -> u64 {
    600
}

impl JiraConfig {
    pub fn from_settings(settings: &toml::Table) -> Result<Self, String> {
        check_keys(settings, OWN_KEYS)?;
        settings
            .clone()
            .try_into()
            .map_err(|e: toml::de::Error| e.to_string())
    }
}

#[derive(Debug, Clone, Deserialize)]
struct ProjectWire {
    #[serde(deserialize_with = "id")]
    id: String,
    key: String,
    name: String,
}

#[derive(Debug, Deserialize)]
struct ProjectPage {
    #[serde(default)]
    values: Vec<ProjectWire>,
    #[serde(default, rename = "startAt")]
    start_at: u64,
    #[serde(default, rename = "isLast")]
    is_last: Option<bool>,
    #[serde(default)]
    total: Option<u64>,
}

#[derive(Debug, Deserialize)]
struct SearchPage {
    issues: Vec<IssueWire>,
    #[serde(default, rename = "nextPageToken")]
    next_page_token: Option<String>,
    #[serde(default, rename = "isLast")]
    is_last: Option<bool>,
}

#[derive(Debug, Clone, Deserialize)]
struct IssueWire {
    #[serde(deserialize_with = "id")]
    id: String,
    key: String,
    #[serde(default)]
    fields: IssueFields,
}

#[derive(Debug, Clone, Default, Deserialize)]
struct IssueFields {
    #[serde(default)]
    summary: Option<String>,
    #[serde(default)]
    updated: Option<String>,
    #[serde(default)]
    project: Option<ProjectWire>,
    #[serde(default)]
    attachment: Vec<AttachmentWire>,
}

#[derive(Debug, Clone, Deserialize)]
struct AttachmentWire {
    #[serde(deserialize_with = "id")]
    id: String,
    filename: String,
    #[serde(default)]
    size: u64,
    #[serde(default)]
    created: Option<String>,
}

#[derive(Clone)]
enum Node {
    Project(Arc<ProjectWire>),
    Issue(Arc<IssueWire>),
    Attachment { id: String },
}

struct Item {
    entry: RemoteEntry,
    node: Node,
}

#[derive(Default)]
struct Listing {
    items: Vec<Item>,
}

impl Listing {
    fn find(&self, name: &str) -> Option<&Item> {
        self.items.iter().find(|i| i.entry.name == name)
    }
}

/// Lock order: `cache` is never held across an await.
#[derive(Default)]
struct Cache {
    projects: Option<Arc<Vec<Arc<ProjectWire>>>>,
    /// Issues with attachments, per project id.
    issues: HashMap<String, Arc<Vec<Arc<IssueWire>>>>,
    listings: HashMap<String, Arc<Listing>>,
    /// The project each issue was last listed in (kept across cache drops: a moved issue
    /// must be looked for where it was).
    homes: HashMap<String, String>,
    /// What was dropped when (see [`Invalidations`]).
    inval: Invalidations,
}

pub struct JiraProvider {
    site: Site,
    cfg: JiraConfig,
    cache: Mutex<Cache>,
    served: Served,
    /// The server's clock as its last `Date` header gave it, against ours then.
    server_clock: Mutex<Option<(SystemTime, SystemTime)>>,
}

/// A folder; its revision is what it stands for (`issue:<id>`), so that another issue
/// taking the same name reads as a change of the folder.
fn dir_entry(name: &str, id: &str, mtime: SystemTime) -> RemoteEntry {
    RemoteEntry {
        id: id.to_owned(),
        name: name.to_owned(),
        kind: EntryKind::Dir,
        size: 0,
        mtime,
        revision: id.to_owned(),
        hash: None,
        mode: Some(0o555),
        symlink_target: None,
    }
}

/// A JQL string literal.
fn quoted(s: &str) -> String {
    format!("\"{}\"", s.replace('\\', "\\\\").replace('"', "\\\""))
}

/// `name` split before its extension (a leading dot is not one).
fn split_ext(name: &str) -> (&str, &str) {
    match name.rfind('.') {
        Some(i) if i > 0 => (&name[..i], &name[i..]),
        _ => (name, ""),
    }
}

impl JiraProvider {
    pub fn new(cfg: JiraConfig, tokens: Option<Arc<dyn BearerTokens>>) -> Result<Self, String> {
        if let Some(j) = &cfg.jql {
            if j.to_ascii_lowercase().contains("order by") {
                return Err("`jql` filters issues; it cannot have ORDER BY".into());
            }
        }
        let site = Site::new(cfg.site.clone(), Product::Jira, tokens)?;
        Ok(JiraProvider {
            site,
            cfg,
            cache: Mutex::new(Cache::default()),
            served: Served::new(),
            server_clock: Mutex::new(None),
        })
    }

    async fn projects(&self) -> ProviderResult<Arc<Vec<Arc<ProjectWire>>>> {
        if let Some(p) = self.cache.lock().unwrap().projects.clone() {
            return Ok(p);
        }
        let gen = self.generation(None);
        let base = self.site.base().await?.to_owned();
        let list: Vec<ProjectWire> = if self.cfg.projects.is_empty() {
            let url = format!("{base}/project/search");
            paging::collect_all("list projects", |marker: Option<String>| {
                let url = url.clone();
                async move {
                    let start = paging::offset_of(marker.as_deref())?;
                    let page: ProjectPage = self
                        .site
                        .get_json(
                            "list projects",
                            &url,
                            &[
                                ("startAt", start.to_string()),
                                ("maxResults", PROJECT_PAGE.to_string()),
                            ],
                        )
                        .await?;
                    let n = page.values.len();
                    Ok(Page {
                        next: paging::next_offset(page.start_at, n, page.total, page.is_last),
                        items: page.values,
                    })
                }
            })
            .await?
        } else {
            let mut out = Vec::new();
            for key in &self.cfg.projects {
                let url = format!("{base}/project/{key}");
                out.push(
                    self.site
                        .get_json(&format!("get project {key}"), &url, &[])
                        .await?,
                );
            }
            out
        };
        let list = Arc::new(list.into_iter().map(Arc::new).collect::<Vec<_>>());
        self.store(&gen, |c| c.projects = Some(list.clone()));
        Ok(list)
    }

    /// One page of what `jql` finds, with `fields`; remembers the server's clock.
    async fn search_page(
        &self,
        jql: &str,
        fields: &str,
        max: u32,
        token: Option<String>,
    ) -> ProviderResult<Page<IssueWire>> {
        let url = format!("{}/search/jql", self.site.base().await?);
        let what = "search issues";
        let mut q: Vec<(&str, String)> = vec![
            ("jql", jql.to_owned()),
            ("fields", fields.to_owned()),
            ("maxResults", max.to_string()),
        ];
        if let Some(t) = token {
            q.push(("nextPageToken", t));
        }
        let reply = self
            .site
            .api
            .send_whole(Call::new(what).idempotency(Idempotency::Idempotent), || {
                let r = self.site.api.http().get(&url).query(&q).build();
                async move { r.map_err(|e| ProviderError::Protocol(e.to_string())) }
            })
            .await?;
        if let Some(date) = reply
            .headers
            .get(reqwest::header::DATE)
            .and_then(|v| v.to_str().ok())
            .and_then(crate::provider::kit::retry::parse_http_date)
        {
            *self.server_clock.lock().unwrap() = Some((date, SystemTime::now()));
        }
        let page: SearchPage = serde_json::from_slice(&reply.body)
            .map_err(|e| ProviderError::Protocol(format!("{what}: unexpected reply: {e}")))?;
        let next = if page.is_last == Some(true) {
            None
        } else {
            page.next_page_token
        };
        Ok(Page {
            items: page.issues,
            next,
        })
    }

    /// Every issue `jql` finds, with `fields`.
    async fn search(&self, jql: &str, fields: &str) -> ProviderResult<Vec<IssueWire>> {
        paging::collect_all("search issues", |token: Option<String>| {
            self.search_page(jql, fields, SEARCH_PAGE, token)
        })
        .await
    }

    /// The project's issues that have attachments, in key order.
    async fn issues(&self, project: &ProjectWire) -> ProviderResult<Arc<Vec<Arc<IssueWire>>>> {
        if let Some(i) = self.cache.lock().unwrap().issues.get(&project.id).cloned() {
            return Ok(i);
        }
        let gen = self.generation(Some(&project.id));
        let mut jql = format!(
            "project = {} AND attachments IS NOT EMPTY",
            quoted(&project.key)
        );
        if let Some(extra) = &self.cfg.jql {
            jql.push_str(&format!(" AND ({extra})"));
        }
        jql.push_str(" ORDER BY key ASC");
        let list = self
            .search(&jql, "summary,attachment,updated,project")
            .await?;
        let list = Arc::new(
            list.into_iter()
                .filter(|i| !i.fields.attachment.is_empty())
                .map(Arc::new)
                .collect::<Vec<_>>(),
        );
        self.store(&gen, |c| {
            for i in list.iter() {
                c.homes.insert(i.id.clone(), project.id.clone());
            }
            c.issues.insert(project.id.clone(), list.clone());
        });
        Ok(list)
    }

    fn listing<'a>(
        &'a self,
        dir: &'a str,
    ) -> futures::future::BoxFuture<'a, ProviderResult<Arc<Listing>>> {
        Box::pin(async move {
            if let Some(l) = self.cache.lock().unwrap().listings.get(dir).cloned() {
                return Ok(l);
            }
            // Before the parent is looked at: a parent fetched across an invalidation
            // must not make a listing that is kept.
            let start = self.cache.lock().unwrap().inval.now();
            let (gen, listing) = if dir == "/" {
                let gen = Gen { start, part: None };
                let projects = self.projects().await?;
                let names: Vec<(String, String, &str)> = projects
                    .iter()
                    .map(|p| {
                        (
                            p.id.clone(),
                            title_to_name(&format!("{} {}", p.key, p.name)),
                            "",
                        )
                    })
                    .collect();
                let listing = Listing {
                    items: projects
                        .iter()
                        .zip(unique_names(&names, &[]))
                        .map(|(p, name)| Item {
                            entry: dir_entry(
                                &name,
                                &format!("project:{}", p.id),
                                SystemTime::UNIX_EPOCH,
                            ),
                            node: Node::Project(p.clone()),
                        })
                        .collect(),
                };
                (gen, listing)
            } else {
                let (parent, name) = split_path(dir);
                let up = self.listing(parent).await?;
                let node = match up.find(name) {
                    Some(item) if item.entry.kind == EntryKind::Dir => item.node.clone(),
                    Some(_) => return Err(ProviderError::NotADirectory(dir.to_owned())),
                    None => return Err(ProviderError::NotFound(dir.to_owned())),
                };
                let project = match &node {
                    Node::Project(p) => p.id.clone(),
                    Node::Issue(i) => i
                        .fields
                        .project
                        .as_ref()
                        .map(|p| p.id.clone())
                        .unwrap_or_default(),
                    Node::Attachment { .. } => {
                        return Err(ProviderError::NotADirectory(dir.to_owned()))
                    }
                };
                let gen = Gen {
                    start,
                    part: Some(project.clone()),
                };
                let listing = match node {
                    Node::Project(p) => {
                        let issues = self.issues(&p).await?;
                        let names: Vec<(String, String, &str)> = issues
                            .iter()
                            .map(|i| {
                                let summary = i.fields.summary.as_deref().unwrap_or("");
                                (
                                    i.id.clone(),
                                    title_to_name(&format!("{} {summary}", i.key)),
                                    "",
                                )
                            })
                            .collect();
                        Listing {
                            items: issues
                                .iter()
                                .zip(unique_names(&names, &[]))
                                .map(|(i, name)| Item {
                                    entry: dir_entry(
                                        &name,
                                        &format!("issue:{}", i.id),
                                        instant(&i.fields.updated),
                                    ),
                                    node: Node::Issue(i.clone()),
                                })
                                .collect(),
                        }
                    }
                    Node::Issue(issue) => {
                        let names: Vec<(String, String, String)> = issue
                            .fields
                            .attachment
                            .iter()
                            .map(|a| {
                                let shown = title_to_name(&a.filename);
                                let (stem, ext) = split_ext(&shown);
                                (a.id.clone(), stem.to_owned(), ext.to_owned())
                            })
                            .collect();
                        let borrowed: Vec<(String, String, &str)> = names
                            .iter()
                            .map(|(i, s, e)| (i.clone(), s.clone(), e.as_str()))
                            .collect();
                        Listing {
                            items: issue
                                .fields
                                .attachment
                                .iter()
                                .zip(unique_names(&borrowed, &[]))
                                .map(|(a, name)| Item {
                                    entry: RemoteEntry {
                                        id: format!("attachment:{}", a.id),
                                        name,
                                        kind: EntryKind::File,
                                        size: a.size,
                                        mtime: instant(&a.created),
                                        // Jira attachments never change: a new file is
                                        // a new attachment.
                                        revision: a.id.clone(),
                                        hash: None,
                                        mode: Some(0o444),
                                        symlink_target: None,
                                    },
                                    node: Node::Attachment { id: a.id.clone() },
                                })
                                .collect(),
                        }
                    }
                    Node::Attachment { .. } => {
                        return Err(ProviderError::NotADirectory(dir.to_owned()))
                    }
                };
                (gen, listing)
            };
            let listing = Arc::new(listing);
            self.store(&gen, |c| {
                c.listings.insert(dir.to_owned(), listing.clone());
            });
            Ok(listing)
        })
    }

    async fn item(&self, path: &str) -> ProviderResult<(RemoteEntry, Node)> {
        let (parent, name) = split_path(path);
        let listing = self.listing(parent).await?;
        listing
            .find(name)
            .map(|i| (i.entry.clone(), i.node.clone()))
            .ok_or_else(|| ProviderError::NotFound(path.to_owned()))
    }

    /// Issues of the watched projects updated since `since_ms` (less the overlap), with
    /// or without attachments; `None`: the most recently updated one alone.
    async fn updated_since(&self, since_ms: Option<u64>) -> ProviderResult<Vec<IssueWire>> {
        let mut clauses = Vec::new();
        if !self.cfg.projects.is_empty() {
            // Every project the account can browse needs no clause: the date bounds the
            // query (and a site's every key would not fit in a URL).
            let keys: Vec<String> = self.cfg.projects.iter().map(|k| quoted(k)).collect();
            clauses.push(format!("project in ({})", keys.join(", ")));
        }
        // Not the connection's `jql`: an issue that stops matching it (resolved, say) must
        // be seen to change, so that its folder goes.
        let since = since_ms.unwrap_or(0);
        let floor = since.saturating_sub(OVERLAP.as_millis() as u64);
        // Without a mark yet: the last month (a bound Jira accepts) for the newest issue.
        let minutes = if since_ms.is_some() {
            self.minutes_since(floor)
        } else {
            31 * 24 * 60
        };
        clauses.push(format!("updated >= \"-{minutes}m\""));
        let jql = format!("{} ORDER BY updated DESC", clauses.join(" AND "));
        let fields = "updated,project";
        if since_ms.is_none() {
            return Ok(self.search_page(&jql, fields, 1, None).await?.items);
        }
        self.search(&jql, fields).await
    }

    /// The server's clock now, as its last `Date` header and ours since say (ours alone
    /// before any reply).
    fn server_now(&self) -> SystemTime {
        match *self.server_clock.lock().unwrap() {
            Some((server, ours)) => {
                server + SystemTime::now().duration_since(ours).unwrap_or_default()
            }
            None => SystemTime::now(),
        }
    }

    /// Whole minutes, rounded up, from `floor_ms` to the server's now (JQL's relative
    /// dates count back from the server's clock).
    fn minutes_since(&self, floor_ms: u64) -> u64 {
        let span = millis(self.server_now()).saturating_sub(floor_ms);
        span.div_ceil(60_000).max(1) + 1
    }

    /// Where the caches stand, for a fetch about to begin (in `project`, or above the
    /// projects).
    fn generation(&self, project: Option<&str>) -> Gen {
        Gen {
            start: self.cache.lock().unwrap().inval.now(),
            part: project.map(str::to_owned),
        }
    }

    /// Stores what a fetch that began at `gen` got, unless what it depends on was
    /// invalidated since.
    fn store(&self, gen: &Gen, f: impl FnOnce(&mut Cache)) {
        let mut c = self.cache.lock().unwrap();
        if c.inval.fresh(gen.start, gen.part.as_deref()) {
            f(&mut c);
        }
    }

    fn forget(&self, projects: &[String], all: bool) {
        let mut c = self.cache.lock().unwrap();
        if all {
            let homes = std::mem::take(&mut c.homes);
            let mut inval = std::mem::take(&mut c.inval);
            inval.all();
            *c = Cache {
                homes,
                inval,
                ..Cache::default()
            };
            return;
        }
        for path in projects {
            c.listings.retain(|p, _| !is_same_or_below(p, path));
        }
    }

    /// Drops the cached issues of these projects (by id), and returns their folders.
    async fn forget_projects(&self, ids: &[String]) -> ProviderResult<Vec<String>> {
        let root = self.listing("/").await?;
        let paths: Vec<String> = root
            .items
            .iter()
            .filter_map(|i| match &i.node {
                Node::Project(p) if ids.contains(&p.id) => Some(join_path("/", &i.entry.name)),
                _ => None,
            })
            .collect();
        {
            let mut c = self.cache.lock().unwrap();
            for id in ids {
                c.inval.part(id);
                c.issues.remove(id);
            }
        }
        self.forget(&paths, false);
        Ok(paths)
    }
}

fn modified(issues: &[IssueWire]) -> Vec<Modified> {
    issues
        .iter()
        .map(|i| {
            let at = millis(instant(&i.fields.updated));
            Modified {
                id: i.id.clone(),
                stamp: at,
                at_ms: at,
                group: i
                    .fields
                    .project
                    .as_ref()
                    .map(|p| p.id.clone())
                    .unwrap_or_default(),
            }
        })
        .collect()
}

#[async_trait]
impl Provider for JiraProvider {
    fn kind(&self) -> &'static str {
        "jira"
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities {
            delta: true,
            writable: false,
            ..Capabilities::default()
        }
    }

    fn list<'a>(&'a self, dir: &'a str) -> ListStream<'a> {
        Box::pin(futures::stream::once(async move {
            let listing = self.listing(dir).await?;
            let entries: Vec<RemoteEntry> = listing.items.iter().map(|i| i.entry.clone()).collect();
            self.served.record(dir, &entries);
            Ok(entries)
        }))
    }

    async fn stat(&self, path: &str) -> ProviderResult<RemoteEntry> {
        if path == "/" {
            return Ok(dir_entry("", "root", SystemTime::UNIX_EPOCH));
        }
        Ok(self.item(path).await?.0)
    }

    async fn read_range(
        &self,
        path: &str,
        revision: Option<&str>,
        offset: u64,
        len: u64,
    ) -> ProviderResult<ByteStream> {
        let (entry, node) = self.item(path).await?;
        let Node::Attachment { id } = node else {
            return Err(ProviderError::IsADirectory(path.to_owned()));
        };
        if let Some(r) = revision.filter(|r| !r.is_empty()) {
            if r != entry.revision {
                return Err(ProviderError::PreconditionFailed(format!(
                    "{path}: another attachment has this name now"
                )));
            }
        }
        if len == 0 || offset >= entry.size {
            return Ok(Box::pin(futures::stream::empty()));
        }
        let url = format!("{}/attachment/content/{id}", self.site.base().await?);
        // `redirect=false`: the bytes from Jira itself, which honours Range (the media URL
        // a redirect leads to does not promise it).
        self.site
            .ranged_get(path, &url, &[("redirect", "false")], offset, len)
            .await
    }

    async fn quota(&self) -> ProviderResult<Quota> {
        Ok(Quota::default())
    }

    async fn changes_cursor(&self) -> ProviderResult<String> {
        let newest = self.updated_since(None).await?;
        // Nothing updated lately: the mark is the server's now, not the epoch (which would
        // ask for every issue ever at each look).
        let since_ms = modified(&newest)
            .iter()
            .map(|m| m.at_ms)
            .max()
            .unwrap_or_else(|| millis(self.server_now()));
        let recent = self.updated_since(Some(since_ms)).await?;
        let w = Watermark::start(&modified(&recent), since_ms, now_secs());
        Ok(serde_json::to_string(&w).expect("a cursor serializes"))
    }

    async fn changes_since(&self, cursor: &str) -> ProviderResult<ChangeBatch> {
        let old: Watermark = serde_json::from_str(cursor).map_err(|e| {
            ProviderError::PreconditionFailed(format!("Jira change cursor unreadable: {e}"))
        })?;
        let recent = self.updated_since(Some(old.since_ms)).await?;
        let homes = self.cache.lock().unwrap().homes.clone();
        let advance = old.advance(
            &modified(&recent),
            &homes,
            now_secs(),
            self.cfg.full_walk_secs,
        );
        let cursor = serde_json::to_string(&advance.next).expect("a cursor serializes");
        let walk = match folders_to_relist(&advance, &self.served, "Jira") {
            Ok(w) => w,
            Err(e) => {
                // Every listing is fetched again: from Jira, not from here.
                self.forget(&[], true);
                return Err(e);
            }
        };
        let Some(walk) = walk else {
            return Ok(ChangeBatch {
                changes: vec![],
                cursor,
            });
        };
        let tops = if walk {
            self.forget(&[], true);
            vec!["/".to_owned()]
        } else {
            let ids: Vec<String> = advance.changed.iter().cloned().collect();
            self.forget_projects(&ids).await?
        };
        let changes = self
            .served
            .relist(&tops, |dir| async move {
                let l = self.listing(&dir).await?;
                Ok(l.items.iter().map(|i| i.entry.clone()).collect())
            })
            .await?;
        Ok(ChangeBatch { changes, cursor })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn jql_literals_are_quoted_and_extensions_kept() {
        assert_eq!(quoted(r#"A"B\C"#), r#""A\"B\\C""#);
        assert_eq!(split_ext("report.pdf"), ("report", ".pdf"));
        assert_eq!(split_ext(".env"), (".env", ""));
        let names = unique_names(
            &[
                ("10".into(), "report".into(), ".pdf"),
                ("11".into(), "report".into(), ".pdf"),
            ],
            &[],
        );
        assert_eq!(names, ["report.pdf", "report [11].pdf"]);
    }

    #[test]
    fn minutes_back_count_from_the_servers_clock() {
        let cfg = JiraConfig::from_settings(
            &toml::from_str(
                "site = \"https://x.atlassian.net\"\nemail = \"a@b\"\ntoken_command = \"echo t\"",
            )
            .unwrap(),
        )
        .unwrap();
        let p = JiraProvider::new(cfg, None).unwrap();
        let server_now = SystemTime::UNIX_EPOCH + Duration::from_secs(10_000_000);
        *p.server_clock.lock().unwrap() = Some((server_now, SystemTime::now()));
        // 90 s back: two whole minutes, plus one for the second the clock moves on.
        assert_eq!(p.minutes_since(millis(server_now) - 90_000), 3);
        assert!(JiraConfig::from_settings(
            &toml::from_str("site = \"https://x\"\nproject = [\"A\"]").unwrap()
        )
        .is_err_and(|e| e.contains("project")));
    }
}
