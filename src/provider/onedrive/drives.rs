//! The drives a Microsoft account reaches, side by side under one connection:
//!
//! ```text
//! OneDrive/                      the user's own drive (/me/drive)
//! SharePoint/<site>/<library>/   work accounts: each document library of each site the
//!                                user follows, and of the sites named in the settings
//! Shared/<folder>/               folders others shared that the user added to their
//!                                drive ("Add to My files"), in their owners' drives
//! ```
//!
//! Discovery (Microsoft Graph v1.0, delegated permissions):
//! - `GET /me/drive` tells personal from work accounts (`driveType`: `personal`,
//!   `business`); SharePoint exists for work accounts only.
//! - `GET /me/followedSites` (paged; needs `Sites.Read.All`), and for each configured URL
//!   `GET /sites/{hostname}:/{server-relative-path}` ("Get site by path",
//!   learn.microsoft.com/graph/api/site-getbypath).
//! - `GET /sites/{site-id}/drives` (paged): the site's document libraries, each its own
//!   drive, opened by drive id on the connection's one HTTP client.
//!
//! Site folders are named by the site's `displayName`, library folders by the drive's
//! `name`; a `/` in either shows as `∕`. Names stick: a site or library keeps the name it
//! was first shown under (kept in the connection's state folder, so across restarts too),
//! and one that arrives later with a name already taken — ignoring case, as OneDrive does —
//! becomes `Name (2)`, `Name (3)`, ... A place in the mount therefore always means the same
//! drive, and what was queued for it lands there.
//!
//! A site whose record or libraries cannot be read (refused, gone, a bad URL in the
//! settings) is logged and shown as last seen (or left out if never seen), so one bad site
//! does not hide the rest; a refused `followedSites` (the scope was not granted) keeps the
//! followed sites last seen. Only an expired login and network trouble fail a discovery.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use serde::{Deserialize, Serialize};

use super::{encode_segment, OneDriveProvider};
use crate::provider::kit::drive_set::{DriveCatalog, DriveSlot};
use crate::provider::kit::names;
use crate::provider::{Capabilities, Provider, ProviderError, ProviderResult};

/// The folder of the user's own drive.
pub const OWN_DRIVE_DIR: &str = "OneDrive";
/// The folder holding the SharePoint sites.
pub const SHAREPOINT_DIR: &str = "SharePoint";
/// The folder holding the folders others shared with the user.
pub const SHARED_DIR: &str = "Shared";
const OWN_KEY: &str = "me";
/// Keys of shared folders: `shared|{drive id}|{item id}` (`|` is in neither).
const SHARED_KEY: &str = "shared|";

/// A child of the user's drive root; shortcuts to shared folders carry `remoteItem`: the
/// folder as shared, in its owner's drive.
#[derive(Debug, Clone, Deserialize)]
struct SharedRecord {
    #[serde(default)]
    name: Option<String>,
    #[serde(rename = "remoteItem", default)]
    remote: Option<RemoteRecord>,
}

#[derive(Debug, Clone, Deserialize)]
struct RemoteRecord {
    id: String,
    #[serde(default)]
    name: Option<String>,
    #[serde(default)]
    folder: Option<serde_json::Value>,
    #[serde(rename = "parentReference", default)]
    parent: Option<RemoteParent>,
}

#[derive(Debug, Clone, Deserialize)]
struct RemoteParent {
    #[serde(rename = "driveId", default)]
    drive_id: Option<String>,
}

/// A OneDrive Personal item id (`{DRIVEID}!{n}`) whose drive part lost its leading zero
/// like the drive id does (abraunegg/onedrive#3115): padded back the same way.
fn normalise_item_id(id: &str) -> String {
    match id.split_once('!') {
        Some((drive, rest)) => format!("{}!{rest}", normalise_drive_id(drive)),
        None => id.to_owned(),
    }
}

/// A OneDrive Personal drive id as it should be: since 2025 `remoteItem` may give it with
/// its leading zero dropped (15 hex digits) and in either case (readonly-sources §4.4,
/// onedrive-api-docs#1890/#1902): padded back to 16. Ids are compared without case.
fn normalise_drive_id(id: &str) -> String {
    if !id.is_empty() && id.len() < 16 && id.bytes().all(|b| b.is_ascii_hexdigit()) {
        format!("{id:0>16}")
    } else {
        id.to_owned()
    }
}

#[derive(Debug, Clone, Deserialize)]
struct DriveRecord {
    id: String,
    #[serde(default)]
    name: Option<String>,
    #[serde(rename = "driveType", default)]
    drive_type: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
struct SiteRecord {
    id: String,
    #[serde(rename = "displayName", default)]
    display_name: Option<String>,
    #[serde(default)]
    name: Option<String>,
}

impl SiteRecord {
    fn shown_name(&self) -> String {
        self.display_name
            .clone()
            .or_else(|| self.name.clone())
            .unwrap_or_else(|| self.id.clone())
    }
}

/// The names given so far, by lowercased id (Graph compares ids without case).
#[derive(Debug, Default, Clone, PartialEq, Serialize, Deserialize)]
struct Names {
    sites: BTreeMap<String, String>,
    /// Shared folders: `drive|item` (lowercased) → name.
    #[serde(default)]
    shared: BTreeMap<String, String>,
    /// Per site id: library drive id → name.
    libraries: BTreeMap<String, BTreeMap<String, String>>,
}

/// What the last discovery saw, shown again for what cannot be read now.
#[derive(Default)]
struct Seen {
    followed: Vec<SiteRecord>,
    shared: Vec<(String, String, String)>,
    libraries: HashMap<String, Vec<DriveRecord>>,
}

pub struct GraphDrives {
    own: Arc<OneDriveProvider>,
    followed_sites: bool,
    site_urls: Vec<String>,
    /// Where the names are kept across restarts (`None`: only while running).
    names_file: Option<PathBuf>,
    names: Mutex<Names>,
    seen: Mutex<Seen>,
}

/// Whether a failure says something about one site (left out, or shown as last seen)
/// rather than about the account or the network (the whole discovery fails and is tried
/// again).
fn about_the_site(e: &ProviderError) -> bool {
    !matches!(
        e,
        ProviderError::Auth(_)
            | ProviderError::Transient(_)
            | ProviderError::RateLimited { .. }
            | ProviderError::Io(_)
    )
}

/// `name`, or `name (2)`, `name (3)`... : the first not in `taken` (lowercased).
fn free_name(name: &str, taken: &HashSet<String>) -> String {
    let mut candidate = name.to_owned();
    let mut n = 2;
    while taken.contains(&candidate.to_lowercase()) {
        candidate = format!("{name} ({n})");
        n += 1;
    }
    candidate
}

/// Names for the `(id, shown name)` items of one folder: each keeps its remembered name
/// unless another item of this round already has it; the others get free ones, in id
/// order, and are remembered. A name remembered for an item not here now stays its own
/// (a newcomer does not get it), so a place never passes to another owner's folder while
/// something may still be queued for it.
fn sticky_names(
    items: &[(String, String)],
    remembered: &mut BTreeMap<String, String>,
) -> Vec<String> {
    let mut taken: HashSet<String> = HashSet::new();
    let mut out: Vec<Option<String>> = vec![None; items.len()];
    for (i, (id, _)) in items.iter().enumerate() {
        if let Some(name) = remembered.get(&id.to_lowercase()) {
            if taken.insert(name.to_lowercase()) {
                out[i] = Some(name.clone());
            }
        }
    }
    let present: HashSet<String> = items.iter().map(|(id, _)| id.to_lowercase()).collect();
    for (id, name) in remembered.iter() {
        if !present.contains(id) {
            taken.insert(name.to_lowercase());
        }
    }
    let mut rest: Vec<usize> = (0..items.len()).filter(|i| out[*i].is_none()).collect();
    rest.sort_by(|a, b| items[*a].0.cmp(&items[*b].0));
    for i in rest {
        let name = free_name(&names::encode(&items[i].1), &taken);
        taken.insert(name.to_lowercase());
        remembered.insert(items[i].0.to_lowercase(), name.clone());
        out[i] = Some(name);
    }
    out.into_iter().map(Option::unwrap_or_default).collect()
}

impl GraphDrives {
    /// `names_file`: where the names given to sites and libraries are kept (the
    /// connection's state folder).
    pub fn new(own: OneDriveProvider, names_file: Option<PathBuf>) -> Self {
        let followed_sites = own.cfg.followed_sites;
        let site_urls = own.cfg.sharepoint_sites.clone();
        let names = names_file
            .as_ref()
            .and_then(|f| std::fs::read(f).ok())
            .and_then(|b| match serde_json::from_slice(&b) {
                Ok(n) => Some(n),
                Err(e) => {
                    tracing::warn!(error = %e,
                        "the kept SharePoint folder names are unreadable; named again");
                    None
                }
            })
            .unwrap_or_default();
        GraphDrives {
            own: Arc::new(own),
            followed_sites,
            site_urls,
            names_file,
            names: Mutex::new(names),
            seen: Mutex::new(Seen::default()),
        }
    }

    /// `https://contoso.sharepoint.com/sites/Team` → `sites/contoso.sharepoint.com:/sites/Team`;
    /// the root site (no path) → `sites/contoso.sharepoint.com` ("Get a site resource").
    fn site_by_url(url: &str) -> ProviderResult<String> {
        let bad = |why: String| {
            ProviderError::InvalidName(format!(
                "OneDrive settings: sharepoint_sites {url:?}: {why}"
            ))
        };
        let parsed = reqwest::Url::parse(url).map_err(|e| bad(e.to_string()))?;
        let host = parsed.host_str().ok_or_else(|| bad("no host".into()))?;
        let path: Vec<String> = parsed
            .path_segments()
            .map(|s| {
                s.filter(|x| !x.is_empty())
                    .map(|x| {
                        let x = percent_encoding::percent_decode_str(x).decode_utf8_lossy();
                        encode_segment(&x)
                    })
                    .collect()
            })
            .unwrap_or_default();
        if path.is_empty() {
            return Ok(format!("sites/{host}"));
        }
        Ok(format!("sites/{host}:/{}", path.join("/")))
    }

    /// The sites to show: followed ones, then configured ones, each once.
    async fn sites(&self) -> ProviderResult<Vec<SiteRecord>> {
        let mut sites: Vec<SiteRecord> = Vec::new();
        if self.followed_sites {
            match self
                .own
                .graph_get_all::<SiteRecord>("followed sites", "me/followedSites")
                .await
            {
                Ok(v) => {
                    self.seen.lock().unwrap().followed = v.clone();
                    sites.extend(v)
                }
                Err(e) if about_the_site(&e) => {
                    tracing::warn!(error = %e,
                        "SharePoint: the followed sites cannot be listed (the login needs the \
                         Sites.Read.All scope: log in again, or grant it to the app); showing \
                         the ones seen before");
                    sites.extend(self.seen.lock().unwrap().followed.clone());
                }
                Err(e) => return Err(e),
            }
        }
        for url in &self.site_urls {
            let what = format!("site {url}");
            let found = match Self::site_by_url(url) {
                Ok(path) => self.own.graph_get::<SiteRecord>(&what, &path).await,
                Err(e) => Err(e),
            };
            match found {
                Ok(site) => sites.push(site),
                Err(e) if about_the_site(&e) => {
                    tracing::warn!(site = %url, error = %e, "SharePoint: site left out")
                }
                Err(e) => return Err(e),
            }
        }
        let mut unique = HashSet::new();
        sites.retain(|s| unique.insert(s.id.to_lowercase()));
        Ok(sites)
    }

    /// The folders others shared that the user added to their drive ("Add to My files":
    /// shortcuts in the drive's root), as (owner's drive id, item id, name). Not
    /// `/me/drive/sharedWithMe`: Microsoft deprecated it and it stops returning data after
    /// November 2026 (learn.microsoft.com/graph/api/drive-sharedwithme). Files shared alone
    /// are not shown (a drive is a folder). As last seen when they cannot be read now.
    async fn shared(&self) -> ProviderResult<Vec<(String, String, String)>> {
        match self
            .own
            .graph_get_all::<SharedRecord>(
                "shortcuts to shared folders",
                "me/drive/root/children?$select=id,name,remoteItem&$top=1000",
            )
            .await
        {
            Ok(v) => {
                let folders: Vec<(String, String, String)> = v
                    .into_iter()
                    .filter_map(|r| {
                        let remote = r.remote?;
                        remote.folder.as_ref()?;
                        let drive = normalise_drive_id(remote.parent?.drive_id.as_deref()?);
                        // The shortcut's own name: unique in the root, renamed by the user.
                        let name = r.name.or(remote.name).unwrap_or_else(|| remote.id.clone());
                        Some((drive, normalise_item_id(&remote.id), name))
                    })
                    .collect();
                self.seen.lock().unwrap().shared = folders.clone();
                Ok(folders)
            }
            Err(e) if about_the_site(&e) => {
                tracing::warn!(error = %e,
                    "the shortcuts to shared folders cannot be listed; shown as last seen");
                Ok(self.seen.lock().unwrap().shared.clone())
            }
            Err(e) => Err(e),
        }
    }

    /// A site's document libraries; as last seen when they cannot be read now.
    async fn libraries(&self, site: &SiteRecord) -> ProviderResult<Vec<DriveRecord>> {
        let what = format!("libraries of {}", site.shown_name());
        let path = format!(
            "sites/{}/drives?$select=id,name,driveType",
            encode_site_id(&site.id)
        );
        match self.own.graph_get_all::<DriveRecord>(&what, &path).await {
            Ok(v) => {
                self.seen
                    .lock()
                    .unwrap()
                    .libraries
                    .insert(site.id.to_lowercase(), v.clone());
                Ok(v)
            }
            Err(e) if about_the_site(&e) => {
                tracing::warn!(site = %site.shown_name(), error = %e,
                    "SharePoint: the site's libraries cannot be listed; shown as last seen");
                let seen = self.seen.lock().unwrap();
                Ok(seen
                    .libraries
                    .get(&site.id.to_lowercase())
                    .cloned()
                    .unwrap_or_default())
            }
            Err(e) => Err(e),
        }
    }

    /// Keep the names given, for the next start (logged when it cannot be written: the
    /// names then hold until the daemon stops).
    fn save_names(&self, names: &Names) {
        let Some(file) = &self.names_file else { return };
        let write = || -> std::io::Result<()> {
            use std::io::Write;
            use std::os::unix::fs::OpenOptionsExt;
            if let Some(dir) = file.parent() {
                crate::private_fs::create_private_dir(dir)?;
            }
            let tmp = file.with_extension("json.tmp");
            let bytes = serde_json::to_vec_pretty(names).map_err(std::io::Error::other)?;
            let mut f = std::fs::OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(true)
                .mode(0o600)
                .open(&tmp)?;
            f.write_all(&bytes)?;
            f.sync_all()?;
            std::fs::rename(&tmp, file)
        };
        if let Err(e) = write() {
            tracing::warn!(file = %file.display(), error = %e,
                "could not keep the SharePoint folder names");
        }
    }
}

/// A site id (`host,site-guid,web-guid`) in a URL path, its commas as Graph writes them.
fn encode_site_id(id: &str) -> String {
    id.split(',')
        .map(encode_segment)
        .collect::<Vec<_>>()
        .join(",")
}

#[async_trait]
impl DriveCatalog for GraphDrives {
    fn kind(&self) -> &'static str {
        "onedrive"
    }

    fn fixed(&self) -> Vec<DriveSlot> {
        vec![DriveSlot {
            folders: vec![OWN_DRIVE_DIR.into()],
            key: OWN_KEY.into(),
        }]
    }

    async fn discover(&self) -> ProviderResult<Vec<DriveSlot>> {
        let mut slots = self.fixed();
        let me: DriveRecord = self
            .own
            .graph_get("drive", "me/drive?$select=id,driveType")
            .await?;
        let shared = self.shared().await?;
        // No SharePoint for personal accounts.
        let personal = me.drive_type.as_deref() == Some("personal");
        let sites = if personal {
            Vec::new()
        } else {
            self.sites().await?
        };
        let mut per_site = Vec::new();
        for site in &sites {
            per_site.push(self.libraries(site).await?);
        }
        let before = self.names.lock().unwrap().clone();
        let mut names = before.clone();
        let shared_names = sticky_names(
            &shared
                .iter()
                .map(|(d, i, n)| (format!("{d}|{i}"), n.clone()))
                .collect::<Vec<_>>(),
            &mut names.shared,
        );
        for ((drive, item, _), name) in shared.iter().zip(shared_names) {
            slots.push(DriveSlot {
                folders: vec![SHARED_DIR.into(), name],
                key: format!("{SHARED_KEY}{drive}|{item}"),
            });
        }
        let site_names = sticky_names(
            &sites
                .iter()
                .map(|s| (s.id.clone(), s.shown_name()))
                .collect::<Vec<_>>(),
            &mut names.sites,
        );
        for ((site, site_name), libraries) in sites.iter().zip(site_names).zip(per_site) {
            let lib_names = sticky_names(
                &libraries
                    .iter()
                    .map(|d| (d.id.clone(), d.name.clone().unwrap_or_else(|| d.id.clone())))
                    .collect::<Vec<_>>(),
                names.libraries.entry(site.id.to_lowercase()).or_default(),
            );
            for (lib, lib_name) in libraries.iter().zip(lib_names) {
                if lib.id.eq_ignore_ascii_case(&me.id) {
                    continue; // the user's own drive is OneDrive/ already
                }
                slots.push(DriveSlot {
                    folders: vec![SHAREPOINT_DIR.into(), site_name.clone(), lib_name],
                    key: lib.id.clone(),
                });
            }
        }
        if names != before {
            self.save_names(&names);
            *self.names.lock().unwrap() = names;
        }
        Ok(slots)
    }

    fn open(&self, key: &str) -> ProviderResult<Arc<dyn Provider>> {
        if key == OWN_KEY {
            return Ok(self.own.clone());
        }
        if let Some(rest) = key.strip_prefix(SHARED_KEY) {
            let (drive, item) = rest.split_once('|').ok_or_else(|| {
                ProviderError::Protocol(format!("not a shared folder's key: {key}"))
            })?;
            return Ok(Arc::new(self.own.on_item(drive, item)));
        }
        Ok(Arc::new(self.own.on_drive(key)))
    }

    fn capabilities(&self) -> Capabilities {
        self.own.capabilities()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn personal_drive_ids_get_their_leading_zero_back() {
        assert_eq!(normalise_drive_id("F1E2D3C4B5A6978"), "0F1E2D3C4B5A6978");
        assert_eq!(normalise_drive_id("0f1e2d3c4b5a6978"), "0f1e2d3c4b5a6978");
        // Business drive ids are left alone.
        assert_eq!(normalise_drive_id("b!abc"), "b!abc");
        assert_eq!(normalise_drive_id(""), "");
        assert_eq!(
            normalise_item_id("F1E2D3C4B5A6978!12"),
            "0F1E2D3C4B5A6978!12"
        );
        assert_eq!(normalise_item_id("01BYE5RZ6Q"), "01BYE5RZ6Q");
    }

    #[test]
    fn a_name_stays_with_its_folder_while_it_is_away() {
        let mut kept = BTreeMap::new();
        let ann = ("ann".to_string(), "Reports".to_string());
        let bob = ("bob".to_string(), "Reports".to_string());
        assert_eq!(
            sticky_names(std::slice::from_ref(&ann), &mut kept),
            vec!["Reports"]
        );
        // Ann's folder is gone for now: Bob's of the same name does not take her place.
        assert_eq!(
            sticky_names(std::slice::from_ref(&bob), &mut kept),
            vec!["Reports (2)"]
        );
        assert_eq!(
            sticky_names(&[bob, ann], &mut kept),
            vec!["Reports (2)", "Reports"]
        );
    }
}
