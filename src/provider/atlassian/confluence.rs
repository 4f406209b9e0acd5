//! Confluence Cloud as read-only folders, through the REST v2 API.
//!
//! Layout: one folder per space, `<KEY> <space name>`; in it, each top-level page as
//! `<title>.md` with a folder `<title>/` beside it holding the page's children and, when
//! the page has attachments, `_attachments/` with them. Confluence folders are folders;
//! whiteboards, databases and embeds are small `.url` files (Internet shortcuts to the
//! item in the browser; their own children are not shown). Siblings come in the order
//! of `childPosition`; titles that collide among siblings get ` [<id>]` after every one
//! but the first; a `/` in a title is shown as `∕`.
//!
//! A page's `.md` is Markdown rendered here from its `atlas_doc_format` body ([`super::adf`]),
//! fetched with the bulk listing of the space (`/spaces/{id}/pages`, 250 pages a request,
//! bodies included): rendering is deterministic, so the size is exact when the folder is
//! listed, and reading the file needs no further request. Images link to the files in
//! the page's `_attachments/`.
//!
//! The tree: top-level pages come from the bulk listing (`parentId` empty), with the
//! folders the listing's pages sit in (`/folders/{id}`, walked up to the top); each page's
//! or folder's folder is its `direct-children` (`children` is deprecated, `descendants`
//! stops at depth 5). Paging follows the cursor of `Link: <…>; rel="next"` (or
//! `_links.next`), re-applied to our own base URL, which also works through the gateway.
//!
//! Changes: pages sorted by `-modified-date` (current, trashed and archived, with their
//! bodies) down to a watermark (minus a two-minute overlap, deduplicated by version and
//! status) are taken into the caches one by one, and only the folders each was and is in
//! are listed again ([`crate::provider::kit::relist`]); the rest of the space stays
//! cached. Every `full_walk_secs` every listed folder is looked at again with the caches
//! dropped: that catches moves that made no version, attachments, new spaces and lost
//! permissions.

use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use async_trait::async_trait;
use bytes::Bytes;
use serde::Deserialize;
use serde_json::Value;

use super::adf::{self, RenderContext};
use super::{
    check_keys, first_free, folders_to_relist, id, instant, millis, now_secs, opt_id,
    title_to_name, unique_names, Gen, Invalidations, Modified, Product, Site, SiteConfig,
    Watermark, OVERLAP,
};
use crate::accounts::BearerTokens;
use crate::provider::kit::client::Call;
use crate::provider::kit::paging::{self, Page};
use crate::provider::kit::relist::Served;
use crate::provider::kit::retry::Idempotency;
use crate::provider::{
    join_path, split_path, ByteStream, Capabilities, Change, ChangeBatch, EntryKind, ListStream,
    Provider, ProviderError, ProviderResult, Quota, RemoteEntry,
};

/// Most entries Confluence's v2 API hands out per request.
const MAX_LIMIT: u32 = 250;
/// The folder of a page's attachments.
pub const ATTACHMENTS: &str = "_attachments";

/// `[connection.settings]` of a `type = "confluence"` connection, besides the site's.
#[derive(Debug, Clone, Deserialize)]
pub struct ConfluenceConfig {
    #[serde(flatten)]
    pub site: SiteConfig,
    /// Space keys to show; empty: every space the account can see.
    #[serde(default)]
    pub spaces: Vec<String>,
    /// How often every listed folder is looked at again (moves, attachments, new spaces).
    #[serde(default = "default_full_walk")]
    pub full_walk_secs: u64,
    /// Entries asked for per listing request (`limit`, 1..=250).
    #[serde(default = "default_page_size")]
    pub page_size: u32,
}

const OWN_KEYS: &[&str] = &["spaces", "full_walk_secs", "page_size"];

fn default_page_size() -> u32 {
    MAX_LIMIT
}

/// An hour: a walk lists again every folder the mount has listed (about two requests a
/// page folder), which for a space browsed through is thousands of requests.
fn default_full_walk() -> u64 {
    3600
}

impl ConfluenceConfig {
    pub fn from_settings(settings: &toml::Table) -> Result<Self, String> {
        check_keys(settings, OWN_KEYS)?;
        let cfg: ConfluenceConfig = settings
            .clone()
            .try_into()
            .map_err(|e: toml::de::Error| e.to_string())?;
        if !(1..=MAX_LIMIT).contains(&cfg.page_size) {
            return Err(format!("page_size must be within 1..={MAX_LIMIT}"));
        }
        Ok(cfg)
    }
}

#[derive(Debug, Deserialize)]
struct Paged<T> {
    results: Vec<T>,
    #[serde(default, rename = "_links")]
    links: Option<Links>,
}

#[derive(Debug, Default, Deserialize)]
struct Links {
    next: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
struct SpaceWire {
    #[serde(deserialize_with = "id")]
    id: String,
    key: String,
    name: String,
}

#[derive(Debug, Clone, Deserialize)]
struct VersionWire {
    number: u64,
    #[serde(rename = "createdAt")]
    created_at: Option<String>,
}

#[derive(Debug, Clone, Default, Deserialize)]
struct BodyWire {
    atlas_doc_format: Option<BodyValue>,
}

#[derive(Debug, Clone, Deserialize)]
struct BodyValue {
    value: String,
}

#[derive(Debug, Clone, Deserialize)]
struct PageWire {
    #[serde(deserialize_with = "id")]
    id: String,
    #[serde(default)]
    status: String,
    title: String,
    #[serde(rename = "spaceId", deserialize_with = "id")]
    space_id: String,
    #[serde(default, rename = "parentId", deserialize_with = "opt_id")]
    parent_id: Option<String>,
    #[serde(default, rename = "parentType")]
    parent_type: Option<String>,
    #[serde(default)]
    position: Option<i64>,
    version: Option<VersionWire>,
    #[serde(default)]
    body: Option<BodyWire>,
    #[serde(default, rename = "createdAt")]
    created_at: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
struct ChildWire {
    #[serde(deserialize_with = "id")]
    id: String,
    #[serde(default)]
    status: Option<String>,
    #[serde(default)]
    title: String,
    #[serde(rename = "type")]
    kind: String,
    #[serde(default, rename = "childPosition")]
    child_position: Option<i64>,
}

#[derive(Debug, Clone, Deserialize)]
struct FolderWire {
    #[serde(deserialize_with = "id")]
    id: String,
    #[serde(default)]
    title: String,
    #[serde(default, rename = "parentId", deserialize_with = "opt_id")]
    parent_id: Option<String>,
    #[serde(default)]
    position: Option<i64>,
    #[serde(default, rename = "createdAt")]
    created_at: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
struct AttachmentWire {
    id: String,
    title: String,
    #[serde(default, rename = "fileId")]
    file_id: Option<String>,
    #[serde(default, rename = "fileSize")]
    file_size: Option<u64>,
    #[serde(default)]
    version: Option<VersionWire>,
    #[serde(default, rename = "createdAt")]
    created_at: Option<String>,
}

/// A page of the bulk listing, its body parsed.
struct Page_ {
    wire: PageWire,
    adf: Option<Value>,
}

/// What the mount shows at one name, and what it stands for.
#[derive(Clone)]
enum Node {
    Space(Arc<SpaceWire>),
    PageMd {
        body: Arc<Vec<u8>>,
    },
    PageDir {
        space: Arc<SpaceWire>,
        page: String,
    },
    FolderDir {
        space: Arc<SpaceWire>,
        folder: String,
    },
    /// A `.url` shortcut (whiteboard, database, embed).
    Url(Arc<Vec<u8>>),
    Attachments {
        page: String,
    },
    Attachment {
        download: String,
    },
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

/// What one space has cached: its pages (bulk listing) and, per page or folder, its
/// children, folders' own details and attachments.
#[derive(Default)]
struct SpaceCache {
    pages: Option<Arc<HashMap<String, Arc<Page_>>>>,
    children: HashMap<String, Arc<Vec<ChildWire>>>,
    folders: HashMap<String, Arc<FolderWire>>,
    attachments: HashMap<String, Arc<Vec<AttachmentWire>>>,
}

/// Lock order: `cache` is never held across an await, and nothing else is taken with it.
#[derive(Default)]
struct Cache {
    spaces: Option<Arc<Vec<Arc<SpaceWire>>>>,
    per_space: HashMap<String, SpaceCache>,
    listings: HashMap<String, Arc<Listing>>,
    /// The space each page was last listed in (kept across cache drops: a page moved to
    /// another space must be looked for where it was).
    homes: HashMap<String, String>,
    /// What was dropped when (see [`Invalidations`]).
    inval: Invalidations,
}

pub struct ConfluenceProvider {
    site: Site,
    cfg: ConfluenceConfig,
    cache: Mutex<Cache>,
    served: Served,
}

/// A folder; its revision is what it stands for (`pagedir:<id>`), so that another page
/// taking the same name (titles that collide, a rename) reads as a change of the folder.
fn folder_entry(name: &str, id: &str, mtime: SystemTime) -> RemoteEntry {
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

fn file_entry(name: &str, id: &str, size: u64, mtime: SystemTime, revision: String) -> RemoteEntry {
    RemoteEntry {
        id: id.to_owned(),
        name: name.to_owned(),
        kind: EntryKind::File,
        size,
        mtime,
        revision,
        hash: None,
        mode: Some(0o444),
        symlink_target: None,
    }
}

/// The names of a page's attachments in its `_attachments/`, in the order given.
fn attachment_names(list: &[AttachmentWire]) -> Vec<String> {
    let items: Vec<(String, String, &str)> = list
        .iter()
        .map(|a| (a.id.clone(), title_to_name(&a.title), ""))
        .collect();
    unique_names(&items, &[])
}

impl ConfluenceProvider {
    pub fn new(
        cfg: ConfluenceConfig,
        tokens: Option<Arc<dyn BearerTokens>>,
    ) -> Result<Self, String> {
        let site = Site::new(cfg.site.clone(), Product::Confluence, tokens)?;
        Ok(ConfluenceProvider {
            site,
            cfg,
            cache: Mutex::new(Cache::default()),
            served: Served::new(),
        })
    }

    /// Where the caches stand, for a fetch about to begin (in `space`, or above the
    /// spaces).
    fn generation(&self, space: Option<&str>) -> Gen {
        Gen {
            start: self.cache.lock().unwrap().inval.now(),
            part: space.map(str::to_owned),
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

    /// The wiki as people open it (`https://<site>/wiki`), for links in pages and `.url`
    /// files: the API base may be the gateway, which no browser can open.
    fn site_wiki(&self) -> String {
        format!("{}/wiki", self.site.site_url())
    }

    /// The wiki base of the API (`…/wiki`): the API base less `/api/v2`; the download
    /// route is below it.
    async fn wiki(&self) -> ProviderResult<String> {
        let base = self.site.base().await?;
        Ok(base.strip_suffix("/api/v2").unwrap_or(base).to_owned())
    }

    /// One page of a cursor-paged listing at `url` (`cursor`: where the previous one said
    /// the next begins): its items and the next cursor, taken from `Link: <…>; rel="next"`
    /// or `_links.next`.
    async fn get_page<T: serde::de::DeserializeOwned>(
        &self,
        what: &str,
        url: &str,
        query: &[(&str, String)],
        cursor: Option<String>,
    ) -> ProviderResult<Page<T>> {
        let mut q: Vec<(&str, String)> = query.to_vec();
        if let Some(c) = cursor {
            q.push(("cursor", c));
        }
        let reply = self
            .site
            .api
            .send_whole(Call::new(what).idempotency(Idempotency::Idempotent), || {
                let r = self.site.api.http().get(url).query(&q).build();
                async move { r.map_err(|e| ProviderError::Protocol(e.to_string())) }
            })
            .await?;
        let page: Paged<T> = serde_json::from_slice(&reply.body)
            .map_err(|e| ProviderError::Protocol(format!("{what}: unexpected reply: {e}")))?;
        let request_url =
            reqwest::Url::parse(url).map_err(|e| ProviderError::Protocol(e.to_string()))?;
        let next = paging::next_from_link_header(&reply.headers, &request_url)?
            .or(page.links.and_then(|l| l.next))
            .map(|n| cursor_of(&n, what))
            .transpose()?;
        Ok(Page {
            items: page.results,
            next,
        })
    }

    /// Every item of a cursor-paged listing at `path` below the API base.
    async fn get_all<T: serde::de::DeserializeOwned>(
        &self,
        what: &str,
        path: &str,
        query: &[(&str, String)],
    ) -> ProviderResult<Vec<T>> {
        let url = format!("{}{path}", self.site.base().await?);
        paging::collect_all(what, |cursor: Option<String>| {
            self.get_page(what, &url, query, cursor)
        })
        .await
    }

    async fn spaces(&self) -> ProviderResult<Arc<Vec<Arc<SpaceWire>>>> {
        if let Some(s) = self.cache.lock().unwrap().spaces.clone() {
            return Ok(s);
        }
        let gen = self.generation(None);
        let mut query = vec![("limit", self.cfg.page_size.to_string())];
        if !self.cfg.spaces.is_empty() {
            query.push(("keys", self.cfg.spaces.join(",")));
        }
        let list: Vec<SpaceWire> = self.get_all("list spaces", "/spaces", &query).await?;
        let spaces = Arc::new(list.into_iter().map(Arc::new).collect::<Vec<_>>());
        self.store(&gen, |c| c.spaces = Some(spaces.clone()));
        Ok(spaces)
    }

    /// The folder name of each space, in the order listed (`<KEY> <name>`).
    fn space_names(spaces: &[Arc<SpaceWire>]) -> Vec<String> {
        let items: Vec<(String, String, &str)> = spaces
            .iter()
            .map(|s| {
                (
                    s.id.clone(),
                    title_to_name(&format!("{} {}", s.key, s.name)),
                    "",
                )
            })
            .collect();
        unique_names(&items, &[])
    }

    /// The space's pages with their bodies (one request per 250 pages).
    async fn pages(&self, space: &SpaceWire) -> ProviderResult<Arc<HashMap<String, Arc<Page_>>>> {
        if let Some(p) = self
            .cache
            .lock()
            .unwrap()
            .per_space
            .get(&space.id)
            .and_then(|c| c.pages.clone())
        {
            return Ok(p);
        }
        let gen = self.generation(Some(&space.id));
        let list: Vec<PageWire> = self
            .get_all(
                &format!("list pages of space {}", space.key),
                &format!("/spaces/{}/pages", space.id),
                &[
                    ("depth", "all".into()),
                    ("status", "current".into()),
                    ("body-format", "atlas_doc_format".into()),
                    ("limit", self.cfg.page_size.to_string()),
                ],
            )
            .await?;
        let map: HashMap<String, Arc<Page_>> = list
            .into_iter()
            .map(|w| (w.id.clone(), Arc::new(parse_page(w))))
            .collect();
        let map = Arc::new(map);
        self.store(&gen, |c| {
            for id in map.keys() {
                c.homes.insert(id.clone(), space.id.clone());
            }
            c.per_space.entry(space.id.clone()).or_default().pages = Some(map.clone());
        });
        Ok(map)
    }

    /// One page by id (a child the bulk listing did not have yet).
    async fn page(&self, id: &str) -> ProviderResult<Arc<Page_>> {
        let url = format!("{}/pages/{id}", self.site.base().await?);
        let wire: PageWire = self
            .site
            .get_json(
                &format!("get page {id}"),
                &url,
                &[("body-format", "atlas_doc_format".into())],
            )
            .await?;
        Ok(Arc::new(parse_page(wire)))
    }

    async fn folder(&self, space: &SpaceWire, id: &str) -> ProviderResult<Arc<FolderWire>> {
        if let Some(f) = self
            .cache
            .lock()
            .unwrap()
            .per_space
            .get(&space.id)
            .and_then(|c| c.folders.get(id).cloned())
        {
            return Ok(f);
        }
        let gen = self.generation(Some(&space.id));
        let url = format!("{}/folders/{id}", self.site.base().await?);
        let f: FolderWire = self
            .site
            .get_json(&format!("get folder {id}"), &url, &[])
            .await?;
        let f = Arc::new(f);
        self.store(&gen, |c| {
            let sc = c.per_space.entry(space.id.clone()).or_default();
            sc.folders.insert(id.to_owned(), f.clone());
        });
        Ok(f)
    }

    /// The direct children of a page or folder (`kind` "pages" or "folders"), in
    /// `childPosition` order.
    async fn children(
        &self,
        space: &SpaceWire,
        kind: &str,
        id: &str,
    ) -> ProviderResult<Arc<Vec<ChildWire>>> {
        let key = format!("{kind}/{id}");
        if let Some(c) = self
            .cache
            .lock()
            .unwrap()
            .per_space
            .get(&space.id)
            .and_then(|c| c.children.get(&key).cloned())
        {
            return Ok(c);
        }
        let gen = self.generation(Some(&space.id));
        let mut list: Vec<ChildWire> = self
            .get_all(
                &format!("list children of {key}"),
                &format!("/{kind}/{id}/direct-children"),
                &[("limit", self.cfg.page_size.to_string())],
            )
            .await?;
        list.retain(|c| c.status.as_deref().is_none_or(|s| s == "current"));
        list.sort_by_key(|c| c.child_position.unwrap_or(i64::MAX));
        let list = Arc::new(list);
        self.store(&gen, |c| {
            let sc = c.per_space.entry(space.id.clone()).or_default();
            sc.children.insert(key, list.clone());
        });
        Ok(list)
    }

    async fn attachments(
        &self,
        space: &SpaceWire,
        page: &str,
    ) -> ProviderResult<Arc<Vec<AttachmentWire>>> {
        if let Some(a) = self
            .cache
            .lock()
            .unwrap()
            .per_space
            .get(&space.id)
            .and_then(|c| c.attachments.get(page).cloned())
        {
            return Ok(a);
        }
        let gen = self.generation(Some(&space.id));
        let list: Vec<AttachmentWire> = self
            .get_all(
                &format!("list attachments of page {page}"),
                &format!("/pages/{page}/attachments"),
                &[("limit", self.cfg.page_size.to_string())],
            )
            .await?;
        let list = Arc::new(list);
        self.store(&gen, |c| {
            let sc = c.per_space.entry(space.id.clone()).or_default();
            sc.attachments.insert(page.to_owned(), list.clone());
        });
        Ok(list)
    }

    /// The Markdown of a page shown as `<stem>.md`: its title as a heading, then its body.
    /// Images link to `<stem>/_attachments/<name>`.
    async fn render(&self, space: &SpaceWire, page: &Page_, stem: &str) -> ProviderResult<Vec<u8>> {
        let mut links = HashMap::new();
        if let Some(doc) = &page.adf {
            if !adf::media_file_ids(doc).is_empty() {
                let list = self.attachments(space, &page.wire.id).await?;
                for (a, name) in list.iter().zip(attachment_names(&list)) {
                    if let Some(file) = &a.file_id {
                        links.insert(
                            file.clone(),
                            adf::link_target(&format!("{stem}/{ATTACHMENTS}/{name}")),
                        );
                    }
                }
            }
        }
        let wiki = self.site_wiki();
        let ctx = RenderContext {
            attachments: &links,
            base_url: &wiki,
        };
        // The title as a heading, escaped like any text (a `*` or a trailing ` #`).
        let heading = serde_json::json!({
            "type": "doc",
            "content": [{
                "type": "heading",
                "attrs": {"level": 1},
                "content": [{"type": "text", "text": page.wire.title.replace('\n', " ")}]
            }]
        });
        let mut out = adf::to_markdown(&heading, &ctx);
        if out.is_empty() {
            out.push_str("#\n");
        }
        if let Some(doc) = &page.adf {
            let body = adf::to_markdown(doc, &ctx);
            if !body.is_empty() {
                out.push('\n');
                out.push_str(&body);
            }
        }
        Ok(out.into_bytes())
    }

    /// `<stem>.md` and `<stem>/` of a page.
    async fn page_items(
        &self,
        space: &Arc<SpaceWire>,
        page: &Page_,
        stem: &str,
    ) -> ProviderResult<[Item; 2]> {
        let body = self.render(space, page, stem).await?;
        let version = page.wire.version.as_ref().map_or(0, |v| v.number);
        let mtime = instant(
            &page
                .wire
                .version
                .as_ref()
                .and_then(|v| v.created_at.clone())
                .or(page.wire.created_at.clone()),
        );
        let revision = format!("v{version}-{}", short_hash(&body));
        Ok([
            Item {
                entry: file_entry(
                    &format!("{stem}.md"),
                    &format!("page:{}", page.wire.id),
                    body.len() as u64,
                    mtime,
                    revision,
                ),
                node: Node::PageMd {
                    body: Arc::new(body),
                },
            },
            Item {
                entry: folder_entry(stem, &format!("pagedir:{}", page.wire.id), mtime),
                node: Node::PageDir {
                    space: space.clone(),
                    page: page.wire.id.clone(),
                },
            },
        ])
    }

    /// The items of a folder whose children are `children` (in order): pages, folders and
    /// shortcuts, named uniquely. `reserved`: names the folder already uses.
    async fn child_items(
        &self,
        space: &Arc<SpaceWire>,
        children: Vec<Child>,
        reserved: &[&str],
    ) -> ProviderResult<Vec<Item>> {
        let pages = self.pages(space).await?;
        let wiki = self.site_wiki();
        let names = sibling_names(&children, reserved);
        let mut items = Vec::new();
        for (child, name) in children.into_iter().zip(names) {
            match child {
                Child::Page { id, .. } => {
                    let page = match pages.get(&id) {
                        Some(p) => p.clone(),
                        // Newer than the bulk listing: fetched by itself.
                        None => match self.page(&id).await {
                            Ok(p) if p.wire.status == "current" => p,
                            Ok(_) | Err(ProviderError::NotFound(_)) => continue,
                            Err(e) => return Err(e),
                        },
                    };
                    items.extend(self.page_items(space, &page, &name).await?);
                }
                Child::Folder { id, created, .. } => items.push(Item {
                    entry: folder_entry(&name, &format!("folder:{id}"), created),
                    node: Node::FolderDir {
                        space: space.clone(),
                        folder: id,
                    },
                }),
                Child::Other { id, kind, .. } => {
                    let body = format!(
                        "[InternetShortcut]\nURL={wiki}/spaces/{}/{kind}/{id}\n",
                        space.key
                    )
                    .into_bytes();
                    items.push(Item {
                        entry: file_entry(
                            &name,
                            &format!("{kind}:{id}"),
                            body.len() as u64,
                            SystemTime::UNIX_EPOCH,
                            format!("{kind}:{id}"),
                        ),
                        node: Node::Url(Arc::new(body)),
                    });
                }
            }
        }
        Ok(items)
    }

    /// The top of a space: pages without a parent, and the folders pages sit in whose own
    /// parent is the space (found by walking up from the pages).
    async fn space_listing(&self, space: &Arc<SpaceWire>) -> ProviderResult<Listing> {
        let pages = self.pages(space).await?;
        let mut top: Vec<(i64, String, Child)> = Vec::new();
        let mut folders_seen: BTreeSet<String> = BTreeSet::new();
        let mut to_walk: Vec<String> = Vec::new();
        for p in pages.values() {
            match (&p.wire.parent_id, p.wire.parent_type.as_deref()) {
                (None, _) => top.push((
                    p.wire.position.unwrap_or(i64::MAX),
                    p.wire.id.clone(),
                    Child::Page {
                        id: p.wire.id.clone(),
                        title: p.wire.title.clone(),
                    },
                )),
                (Some(f), Some("folder")) => to_walk.push(f.clone()),
                _ => {}
            }
        }
        while let Some(f) = to_walk.pop() {
            if !folders_seen.insert(f.clone()) {
                continue;
            }
            let folder = match self.folder(space, &f).await {
                Ok(folder) => folder,
                Err(ProviderError::NotFound(_)) => continue,
                Err(e) => return Err(e),
            };
            match &folder.parent_id {
                None => top.push((
                    folder.position.unwrap_or(i64::MAX),
                    folder.id.clone(),
                    Child::Folder {
                        id: folder.id.clone(),
                        title: folder.title.clone(),
                        created: instant(&folder.created_at),
                    },
                )),
                Some(parent) if !pages.contains_key(parent) => to_walk.push(parent.clone()),
                Some(_) => {}
            }
        }
        top.sort_by(|a, b| (a.0, &a.1).cmp(&(b.0, &b.1)));
        let children = top.into_iter().map(|(_, _, c)| c).collect();
        Ok(Listing {
            items: self.child_items(space, children, &[]).await?,
        })
    }

    /// A page's folder: its children, and `_attachments/` when it has any.
    async fn page_listing(&self, space: &Arc<SpaceWire>, page: &str) -> ProviderResult<Listing> {
        let children = self.children(space, "pages", page).await?;
        let attachments = self.attachments(space, page).await?;
        let mut items = self
            .child_items(
                space,
                children.iter().map(Child::from_wire).collect(),
                &[ATTACHMENTS],
            )
            .await?;
        if !attachments.is_empty() {
            let newest = attachments
                .iter()
                .map(attachment_mtime)
                .max()
                .unwrap_or(SystemTime::UNIX_EPOCH);
            items.push(Item {
                entry: folder_entry(ATTACHMENTS, &format!("attachments:{page}"), newest),
                node: Node::Attachments {
                    page: page.to_owned(),
                },
            });
        }
        Ok(Listing { items })
    }

    async fn attachments_listing(
        &self,
        space: &Arc<SpaceWire>,
        page: &str,
    ) -> ProviderResult<Listing> {
        let list = self.attachments(space, page).await?;
        let items = list
            .iter()
            .zip(attachment_names(&list))
            .map(|(a, name)| {
                let version = a.version.as_ref().map_or(0, |v| v.number);
                Item {
                    entry: file_entry(
                        &name,
                        &format!("attachment:{}", a.id),
                        a.file_size.unwrap_or(0),
                        attachment_mtime(a),
                        format!("v{version}"),
                    ),
                    // The v1 download route (it redirects to the media service): the
                    // attachment's own `downloadLink` (the web servlet) stopped taking
                    // API-token Basic auth in 2026 (Atlassian CHANGE-2735).
                    node: Node::Attachment {
                        download: format!(
                            "/rest/api/content/{page}/child/attachment/{}/download",
                            a.id
                        ),
                    },
                }
            })
            .collect();
        Ok(Listing { items })
    }

    /// The listing of folder `dir`, from the cache or built (its parents first).
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
                let spaces = self.spaces().await?;
                let names = Self::space_names(&spaces);
                let listing = Listing {
                    items: spaces
                        .iter()
                        .zip(names)
                        .map(|(s, name)| Item {
                            entry: folder_entry(
                                &name,
                                &format!("space:{}", s.id),
                                SystemTime::UNIX_EPOCH,
                            ),
                            node: Node::Space(s.clone()),
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
                let space = match &node {
                    Node::Space(s) => s.clone(),
                    Node::PageDir { space, .. } | Node::FolderDir { space, .. } => space.clone(),
                    Node::Attachments { .. } => self.space_of(dir).await?,
                    _ => return Err(ProviderError::NotADirectory(dir.to_owned())),
                };
                let gen = Gen {
                    start,
                    part: Some(space.id.clone()),
                };
                let listing = match node {
                    Node::Space(space) => self.space_listing(&space).await?,
                    Node::PageDir { space, page } => self.page_listing(&space, &page).await?,
                    Node::FolderDir { space, folder } => {
                        let children = self.children(&space, "folders", &folder).await?;
                        Listing {
                            items: self
                                .child_items(
                                    &space,
                                    children.iter().map(Child::from_wire).collect(),
                                    &[],
                                )
                                .await?,
                        }
                    }
                    Node::Attachments { page } => self.attachments_listing(&space, &page).await?,
                    _ => return Err(ProviderError::NotADirectory(dir.to_owned())),
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

    /// The space a path lies in.
    async fn space_of(&self, path: &str) -> ProviderResult<Arc<SpaceWire>> {
        let top = path.split('/').nth(1).unwrap_or_default();
        match self.listing("/").await?.find(top).map(|i| i.node.clone()) {
            Some(Node::Space(s)) => Ok(s),
            _ => Err(ProviderError::NotFound(path.to_owned())),
        }
    }

    async fn item(&self, path: &str) -> ProviderResult<(RemoteEntry, Node)> {
        let (parent, name) = split_path(path);
        let listing = self.listing(parent).await?;
        listing
            .find(name)
            .map(|i| (i.entry.clone(), i.node.clone()))
            .ok_or_else(|| ProviderError::NotFound(path.to_owned()))
    }

    /// The folder path of each space, by id.
    async fn space_paths(&self) -> ProviderResult<HashMap<String, String>> {
        let root = self.listing("/").await?;
        Ok(root
            .items
            .iter()
            .filter_map(|i| match &i.node {
                Node::Space(s) => Some((s.id.clone(), join_path("/", &i.entry.name))),
                _ => None,
            })
            .collect())
    }

    /// Takes changed pages (with their new bodies) into the caches, and returns the
    /// folders whose listings they touch: where each page was (its parent's folder, its
    /// own folder) and where it is now (its new parent's folder, or the top of its space).
    /// Only folders the mount has listed count; their cached listings are dropped, the
    /// rest of the space stays cached.
    async fn absorb(
        &self,
        pages: &[&PageWire],
        homes: &HashMap<String, String>,
    ) -> ProviderResult<Vec<String>> {
        let space_paths = self.space_paths().await?;
        let mut dirs: BTreeSet<String> = BTreeSet::new();
        // The folders of the changed pages as the mount knew them.
        let mut old_dirs: Vec<String> = Vec::new();
        for p in pages {
            for path in self.served.paths_of(&format!("page:{}", p.id)) {
                dirs.insert(split_path(&path).0.to_owned());
            }
            let own = self.served.paths_of(&format!("pagedir:{}", p.id));
            dirs.extend(own.iter().cloned());
            old_dirs.extend(own);
            // An edit may add an image: its attachments are looked at again.
            dirs.extend(self.served.paths_of(&format!("attachments:{}", p.id)));
            // The top of its space: built from the pages (and the folders they are in), a
            // page arriving or leaving there, or leaving a folder there, changes it.
            dirs.extend(space_paths.get(&p.space_id).cloned());
            if let Some(home) = homes.get(&p.id) {
                dirs.extend(space_paths.get(home).cloned());
            }
            if let Some(parent) = &p.parent_id {
                dirs.extend(self.served.paths_of(&format!("pagedir:{parent}")));
                dirs.extend(self.served.paths_of(&format!("folder:{parent}")));
            }
        }
        let mut c = self.cache.lock().unwrap();
        for p in pages {
            let mut spaces = vec![p.space_id.clone()];
            // Moved from another space: gone from that one's pages.
            spaces.extend(homes.get(&p.id).filter(|h| **h != p.space_id).cloned());
            for space in spaces {
                c.inval.part(&space);
                let Some(sc) = c.per_space.get_mut(&space) else {
                    continue;
                };
                if let Some(map) = &sc.pages {
                    let mut map = (**map).clone();
                    if p.status == "current" && space == p.space_id {
                        map.insert(p.id.clone(), Arc::new(parse_page((*p).clone())));
                    } else {
                        map.remove(&p.id);
                    }
                    sc.pages = Some(Arc::new(map));
                }
                // Which children lists hold it (or will) is not known by id: all go.
                sc.children.clear();
                sc.attachments.remove(&p.id);
            }
            c.homes.insert(p.id.clone(), p.space_id.clone());
        }
        for d in &dirs {
            c.listings.remove(d);
        }
        // A page renamed, moved or gone: what was cached below its old folder is not there.
        for old in &old_dirs {
            c.listings
                .retain(|path, _| !crate::provider::is_same_or_below(path, old));
        }
        Ok(dirs.into_iter().collect())
    }

    /// Drops what is cached of these spaces (and of the list of spaces with `all`).
    fn forget(&self, spaces: &[(String, String)], all: bool) {
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
        for (id, path) in spaces {
            c.inval.part(id);
            c.per_space.remove(id);
            c.listings
                .retain(|p, _| !crate::provider::is_same_or_below(p, path));
        }
    }

    /// Pages modified at or after `since_ms` (less the overlap), newest first, in the
    /// watched spaces; trashed ones included. `None`: the newest page alone.
    async fn modified_since(&self, since_ms: Option<u64>) -> ProviderResult<Vec<PageWire>> {
        let newest_only = since_ms.is_none();
        let since_ms = since_ms.unwrap_or(u64::MAX);
        let spaces = self.spaces().await?;
        let floor = since_ms.saturating_sub(OVERLAP.as_millis() as u64);
        let base = self.site.base().await?.to_owned();
        let mut out = Vec::new();
        for chunk in spaces.chunks(100) {
            let ids: Vec<&str> = chunk.iter().map(|s| s.id.as_str()).collect();
            let url = format!("{base}/pages");
            // No bodies: a quiet look is one short reply. The bodies of what changed are
            // asked for by id afterwards (`bodies`).
            let query = vec![
                ("space-id", ids.join(",")),
                ("sort", "-modified-date".to_owned()),
                // Trashed and archived pages leave the mount: their change is news too.
                ("status", "current,trashed,archived".to_owned()),
                (
                    "limit",
                    if newest_only { 1 } else { self.cfg.page_size }.to_string(),
                ),
            ];
            let what = "list recently modified pages";
            let mut cursor: Option<String> = None;
            let mut cursors_seen = BTreeSet::new();
            'pages: loop {
                let page: Page<PageWire> = self.get_page(what, &url, &query, cursor.take()).await?;
                // The server sorts by its own modification date, which an operation that
                // makes no version (a trash, a move) may set while `version.createdAt`
                // stays old: such an item is skipped, not taken for the end; a reply
                // wholly below the floor is.
                let mut any_above = false;
                for p in page.items {
                    if newest_only {
                        out.push(p);
                        break 'pages;
                    }
                    if page_millis(&p) >= floor {
                        any_above = true;
                        out.push(p);
                    }
                }
                match page.next {
                    Some(c) if any_above => {
                        if !cursors_seen.insert(c.clone()) {
                            return Err(ProviderError::Protocol(format!(
                                "{what}: the server sent the same cursor twice"
                            )));
                        }
                        cursor = Some(c);
                    }
                    _ => break,
                }
            }
        }
        Ok(out)
    }
}

impl ConfluenceProvider {
    /// The changed pages again, with their bodies (`/pages?id=…`, 250 a request); a page
    /// not returned (deleted, or hidden from the user since) comes back with the status
    /// "gone", so that it leaves the mount.
    async fn bodies(&self, changed: &[&PageWire]) -> ProviderResult<Vec<PageWire>> {
        let mut out = Vec::new();
        for chunk in changed.chunks(250) {
            let ids: Vec<&str> = chunk.iter().map(|p| p.id.as_str()).collect();
            let mut got: Vec<PageWire> = self
                .get_all(
                    "get changed pages",
                    "/pages",
                    &[
                        ("id", ids.join(",")),
                        ("status", "current,trashed,archived".into()),
                        ("body-format", "atlas_doc_format".into()),
                        ("limit", "250".into()),
                    ],
                )
                .await?;
            for p in chunk {
                if !got.iter().any(|g| g.id == p.id) {
                    let mut gone = (*p).clone();
                    gone.status = "gone".into();
                    got.push(gone);
                }
            }
            out.extend(got);
        }
        Ok(out)
    }
}

/// Unique names for the children of one folder, in their order: a page takes its stem
/// (its folder) and `<stem>.md`, a shortcut `<stem>.url`, a folder its stem. The first
/// of colliding titles keeps its name, the others get ` [<id>]`; `reserved` names (the
/// folder's own `_attachments`) are never given.
fn sibling_names(children: &[Child], reserved: &[&str]) -> Vec<String> {
    let mut taken: BTreeSet<String> = reserved.iter().map(|s| s.to_string()).collect();
    let mut out = Vec::with_capacity(children.len());
    for c in children {
        let stem = title_to_name(c.title());
        let (ext, also_md) = match c {
            Child::Page { .. } => (".md", true),
            Child::Folder { .. } => ("", false),
            Child::Other { .. } => (".url", false),
        };
        // What the child would occupy under `name` (its stem plus `.md` for a page).
        let occupies = |name: &str| -> Vec<String> {
            if also_md {
                let stem = name.strip_suffix(ext).unwrap_or(name);
                vec![stem.to_owned(), name.to_owned()]
            } else {
                vec![name.to_owned()]
            }
        };
        let name = first_free(&stem, c.id(), ext, |n| {
            occupies(n).iter().any(|o| taken.contains(o))
        });
        taken.extend(occupies(&name));
        out.push(if also_md {
            name.strip_suffix(ext).unwrap_or(&name).to_owned()
        } else {
            name
        });
    }
    out
}

/// A child of a page or folder, as the tree says.
enum Child {
    Page {
        id: String,
        title: String,
    },
    Folder {
        id: String,
        title: String,
        created: SystemTime,
    },
    Other {
        id: String,
        kind: String,
        title: String,
    },
}

impl Child {
    fn from_wire(c: &ChildWire) -> Child {
        match c.kind.as_str() {
            "page" => Child::Page {
                id: c.id.clone(),
                title: c.title.clone(),
            },
            "folder" => Child::Folder {
                id: c.id.clone(),
                title: c.title.clone(),
                created: SystemTime::UNIX_EPOCH,
            },
            other => Child::Other {
                id: c.id.clone(),
                kind: other.to_owned(),
                title: c.title.clone(),
            },
        }
    }

    fn id(&self) -> &str {
        match self {
            Child::Page { id, .. } | Child::Folder { id, .. } | Child::Other { id, .. } => id,
        }
    }

    fn title(&self) -> &str {
        match self {
            Child::Page { title, .. }
            | Child::Folder { title, .. }
            | Child::Other { title, .. } => title,
        }
    }
}

fn parse_page(wire: PageWire) -> Page_ {
    let adf = wire
        .body
        .as_ref()
        .and_then(|b| b.atlas_doc_format.as_ref())
        .and_then(|v| serde_json::from_str(&v.value).ok());
    Page_ { wire, adf }
}

/// When a page was last modified (its version's time), in milliseconds.
fn page_millis(p: &PageWire) -> u64 {
    millis(instant(
        &p.version.as_ref().and_then(|v| v.created_at.clone()),
    ))
}

fn attachment_mtime(a: &AttachmentWire) -> SystemTime {
    instant(
        &a.version
            .as_ref()
            .and_then(|v| v.created_at.clone())
            .or(a.created_at.clone()),
    )
}

/// The `cursor` parameter of a next-page link: applied to our own base URL, because the
/// link is relative to the site even when the request went through the gateway.
fn cursor_of(next: &str, what: &str) -> ProviderResult<String> {
    let url = reqwest::Url::parse("http://x.invalid/")
        .and_then(|b| b.join(next))
        .map_err(|e| ProviderError::Protocol(format!("{what}: next link {next:?}: {e}")))?;
    url.query_pairs()
        .find(|(k, _)| k == "cursor")
        .map(|(_, v)| v.into_owned())
        .ok_or_else(|| ProviderError::Protocol(format!("{what}: next link without a cursor")))
}

fn short_hash(data: &[u8]) -> String {
    use sha2::Digest;
    hex::encode(&sha2::Sha256::digest(data)[..8])
}

#[async_trait]
impl Provider for ConfluenceProvider {
    fn kind(&self) -> &'static str {
        "confluence"
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
            return Ok(folder_entry("", "root", SystemTime::UNIX_EPOCH));
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
        if entry.kind == EntryKind::Dir {
            return Err(ProviderError::IsADirectory(path.to_owned()));
        }
        if let Some(r) = revision.filter(|r| !r.is_empty()) {
            if r != entry.revision {
                return Err(ProviderError::PreconditionFailed(format!(
                    "{path}: changed on Confluence since it was listed"
                )));
            }
        }
        let whole = match node {
            Node::PageMd { body, .. } | Node::Url(body) => body,
            Node::Attachment { download, .. } => {
                let url = format!("{}{download}", self.wiki().await?);
                return self.site.ranged_get(path, &url, &[], offset, len).await;
            }
            _ => return Err(ProviderError::IsADirectory(path.to_owned())),
        };
        let start = (offset as usize).min(whole.len());
        let end = start
            .saturating_add(len.min(usize::MAX as u64) as usize)
            .min(whole.len());
        let piece = Bytes::copy_from_slice(&whole[start..end]);
        Ok(Box::pin(futures::stream::iter([Ok(piece)])))
    }

    async fn quota(&self) -> ProviderResult<Quota> {
        Ok(Quota::default())
    }

    async fn changes_cursor(&self) -> ProviderResult<String> {
        let newest = self.modified_since(None).await?;
        let since_ms = newest.iter().map(page_millis).max().unwrap_or(0);
        let recent = self.modified_since(Some(since_ms)).await?;
        let w = Watermark::start(&modified(&recent), since_ms, now_secs());
        Ok(serde_json::to_string(&w).expect("a cursor serializes"))
    }

    async fn changes_since(&self, cursor: &str) -> ProviderResult<ChangeBatch> {
        let old: Watermark = serde_json::from_str(cursor).map_err(|e| {
            ProviderError::PreconditionFailed(format!("Confluence change cursor unreadable: {e}"))
        })?;
        let recent = self.modified_since(Some(old.since_ms)).await?;
        let homes = self.cache.lock().unwrap().homes.clone();
        let advance = old.advance(
            &modified(&recent),
            &homes,
            now_secs(),
            self.cfg.full_walk_secs,
        );
        let cursor = serde_json::to_string(&advance.next).expect("a cursor serializes");
        let walk = match folders_to_relist(&advance, &self.served, "Confluence") {
            Ok(w) => w,
            Err(e) => {
                // Every listing is fetched again: from Confluence, not from here.
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
        let list = |dir: String| async move {
            let l = self.listing(&dir).await?;
            Ok(l.items.iter().map(|i| i.entry.clone()).collect())
        };
        let changes = if walk {
            self.forget(&[], true);
            self.served.relist(&["/".to_owned()], list).await?
        } else {
            let mods = modified(&recent);
            let news: BTreeSet<&str> = old.news(&mods).map(|m| m.id.as_str()).collect();
            let changed: Vec<&PageWire> = recent
                .iter()
                .filter(|p| news.contains(p.id.as_str()))
                .collect();
            let pages = self.bodies(&changed).await?;
            let pages: Vec<&PageWire> = pages.iter().collect();
            let dirs = self.absorb(&pages, &homes).await?;
            self.served.relist_exact(&dirs, list).await?
        };
        // A folder whose name went (or passed to another page): nothing cached below it
        // stands any more.
        {
            let mut c = self.cache.lock().unwrap();
            for change in &changes {
                if let Change::Removed { path } = change {
                    c.listings
                        .retain(|p, _| !crate::provider::is_same_or_below(p, path));
                }
            }
        }
        Ok(ChangeBatch { changes, cursor })
    }
}

/// What changes with every change of a page: its version, and its status (trashing or
/// archiving need not make a version).
fn stamp(p: &PageWire) -> u64 {
    let status = match p.status.as_str() {
        "current" => 0,
        "archived" => 1,
        "trashed" => 2,
        _ => 3,
    };
    p.version.as_ref().map_or(0, |v| v.number) * 4 + status
}

/// Pages as the watermark sees them: versions, grouped by space.
fn modified(pages: &[PageWire]) -> Vec<Modified> {
    pages
        .iter()
        .map(|p| Modified {
            id: p.id.clone(),
            stamp: stamp(p),
            at_ms: page_millis(p),
            group: p.space_id.clone(),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn page(id: &str, title: &str) -> Child {
        Child::Page {
            id: id.into(),
            title: title.into(),
        }
    }

    #[test]
    fn colliding_titles_get_their_id_and_reserved_names_are_kept_free() {
        let children = vec![
            page("1", "Notes"),
            page("2", "Notes"),
            page("3", "_attachments"),
            Child::Other {
                id: "4".into(),
                kind: "whiteboard".into(),
                title: "Board".into(),
            },
            // Its folder would be "Notes.md", which page 1 has taken.
            page("5", "Notes.md"),
            Child::Folder {
                id: "6".into(),
                title: "a/b".into(),
                created: SystemTime::UNIX_EPOCH,
            },
        ];
        assert_eq!(
            sibling_names(&children, &[ATTACHMENTS]),
            [
                "Notes",
                "Notes [2]",
                "_attachments [3]",
                "Board.url",
                "Notes.md [5]",
                "a∕b"
            ]
        );
    }

    #[test]
    fn the_cursor_of_a_next_link_is_kept_whatever_its_base() {
        assert_eq!(
            cursor_of("/wiki/api/v2/spaces?limit=2&cursor=abc%3D%3D", "t").unwrap(),
            "abc=="
        );
        assert!(cursor_of("/wiki/api/v2/spaces?limit=2", "t").is_err());
    }
}
