//! The drives a Microsoft account reaches, side by side under one connection:
//!
//! ```text
//! OneDrive/                      the user's own drive (/me/drive)
//! SharePoint/<site>/<library>/   work accounts: each document library of each site the
//!                                user follows, and of the sites named in the settings
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
//! `name`; a `/` in either shows as `∕`, and equal names are told apart as `Name (2)` in id
//! order ([`kit::names`](crate::provider::kit::names)). A site or library that cannot be
//! read (403, 404) is left out and logged, so one refused site does not hide the rest; a
//! refused `followedSites` (the scope was not granted) is logged with the scope to add.

use std::sync::Arc;

use async_trait::async_trait;
use serde::Deserialize;

use super::{encode_segment, OneDriveProvider};
use crate::provider::kit::drive_set::{DriveCatalog, DriveSlot};
use crate::provider::kit::names;
use crate::provider::{Capabilities, Provider, ProviderError, ProviderResult};

/// The folder of the user's own drive.
pub const OWN_DRIVE_DIR: &str = "OneDrive";
/// The folder holding the SharePoint sites.
pub const SHAREPOINT_DIR: &str = "SharePoint";
const OWN_KEY: &str = "me";

#[derive(Debug, Deserialize)]
struct DriveRecord {
    id: String,
    #[serde(default)]
    name: Option<String>,
    #[serde(rename = "driveType", default)]
    drive_type: Option<String>,
}

#[derive(Debug, Deserialize)]
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

pub struct GraphDrives {
    own: Arc<OneDriveProvider>,
    followed_sites: bool,
    site_urls: Vec<String>,
}

impl GraphDrives {
    pub fn new(own: OneDriveProvider) -> Self {
        let followed_sites = own.cfg.followed_sites;
        let site_urls = own.cfg.sharepoint_sites.clone();
        GraphDrives {
            own: Arc::new(own),
            followed_sites,
            site_urls,
        }
    }

    /// `https://contoso.sharepoint.com/sites/Team` → `sites/contoso.sharepoint.com:/sites/Team`.
    fn site_by_url(url: &str) -> ProviderResult<String> {
        let parsed = reqwest::Url::parse(url).map_err(|e| {
            ProviderError::Protocol(format!("OneDrive settings: sharepoint_sites {url:?}: {e}"))
        })?;
        let host = parsed.host_str().ok_or_else(|| {
            ProviderError::Protocol(format!(
                "OneDrive settings: sharepoint_sites {url:?} has no host"
            ))
        })?;
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
                Ok(v) => sites.extend(v),
                Err(ProviderError::PermissionDenied(m)) => tracing::warn!(error = %m,
                    "SharePoint: the followed sites cannot be listed (the login needs the \
                     Sites.Read.All scope: log in again, or grant it to the app); showing \
                     configured sites only"),
                Err(e) => return Err(e),
            }
        }
        for url in &self.site_urls {
            let what = format!("site {url}");
            match self
                .own
                .graph_get::<SiteRecord>(&what, &Self::site_by_url(url)?)
                .await
            {
                Ok(site) => sites.push(site),
                Err(e @ (ProviderError::NotFound(_) | ProviderError::PermissionDenied(_))) => {
                    tracing::warn!(site = %url, error = %e, "SharePoint: site left out")
                }
                Err(e) => return Err(e),
            }
        }
        let mut seen = std::collections::HashSet::new();
        sites.retain(|s| seen.insert(s.id.to_lowercase()));
        Ok(sites)
    }
}

/// Unique, path-safe folder names for `(id, name)` pairs.
fn folder_names(items: &[(String, String)]) -> Vec<String> {
    let encoded: Vec<(String, String)> = items
        .iter()
        .map(|(id, name)| (id.clone(), names::encode(name)))
        .collect();
    names::assign_unique(&encoded)
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
        if me.drive_type.as_deref() == Some("personal") {
            return Ok(slots); // no SharePoint for personal accounts
        }
        let sites = self.sites().await?;
        let site_names = folder_names(
            &sites
                .iter()
                .map(|s| (s.id.clone(), s.shown_name()))
                .collect::<Vec<_>>(),
        );
        for (site, site_name) in sites.iter().zip(site_names) {
            let what = format!("libraries of {}", site.shown_name());
            let path = format!(
                "sites/{}/drives?$select=id,name,driveType",
                encode_segment(&site.id)
            );
            let libraries = match self.own.graph_get_all::<DriveRecord>(&what, &path).await {
                Ok(v) => v,
                Err(e @ (ProviderError::NotFound(_) | ProviderError::PermissionDenied(_))) => {
                    tracing::warn!(site = %site.shown_name(), error = %e,
                        "SharePoint: the site's libraries cannot be listed; left out");
                    continue;
                }
                Err(e) => return Err(e),
            };
            let lib_names = folder_names(
                &libraries
                    .iter()
                    .map(|d| (d.id.clone(), d.name.clone().unwrap_or_else(|| d.id.clone())))
                    .collect::<Vec<_>>(),
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
        Ok(slots)
    }

    fn open(&self, key: &str) -> ProviderResult<Arc<dyn Provider>> {
        if key == OWN_KEY {
            return Ok(self.own.clone());
        }
        Ok(Arc::new(self.own.on_drive(key)))
    }

    fn capabilities(&self) -> Capabilities {
        self.own.capabilities()
    }
}
