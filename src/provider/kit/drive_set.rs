//! Several drives of one account side by side under one connection.
//!
//! An account can reach more than one drive — OneDrive: the user's own and the SharePoint
//! libraries of the sites they follow. A [`DriveSet`] shows each drive as a folder of the
//! connection, at the place its [`DriveCatalog`] gives (`OneDrive/`,
//! `SharePoint/<site>/<library>/`), and hands every operation to that drive's own provider
//! with the path inside the drive. The drive providers know nothing of the layout.
//!
//! The folders above the drives (the connection's root, `SharePoint/`, a site) are the
//! *layout*:
//! - listed from the catalog, without a request to any drive; shown with mode 0555 so that
//!   the kernel refuses changes in them to ordinary users;
//! - nothing can be created, renamed or removed in them, and a drive's own folder cannot be
//!   renamed or removed: [`Provider::fixed_folder`] lets the VFS refuse that up front (EACCES),
//!   and the operations here refuse it too (`PermissionDenied`) for whatever comes another
//!   way;
//! - a move between two drives is EXDEV ([`Provider::same_space`]): `mv` then copies.
//!
//! The layout is discovered again when a layout folder is listed or the change feed is read
//! and the last discovery is older than the refresh interval; drives known without asking
//! (the user's own) are routed at once, also when the service cannot be reached.
//!
//! Locks: `layout` is a std mutex, never held across an `.await`; `discovery` (tokio) makes
//! one discovery at a time and is never taken while `layout` is held.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use async_trait::async_trait;
use futures::StreamExt;
use serde::{Deserialize, Serialize};

use crate::provider::{
    ByteStream, Capabilities, Change, ChangeBatch, EntryKind, ListStream, NativeVersion, Provider,
    ProviderError, ProviderResult, Quota, RemoteEntry, UploadOptions,
};

/// Where one drive sits: the folders leading to it (its own folder last), and the key its
/// catalog opens it by.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DriveSlot {
    pub folders: Vec<String>,
    pub key: String,
}

/// What a service says about the drives an account reaches.
#[async_trait]
pub trait DriveCatalog: Send + Sync + 'static {
    fn kind(&self) -> &'static str;
    /// Drives known without asking the service (the user's own drive). They lead every
    /// discovery's answer too.
    fn fixed(&self) -> Vec<DriveSlot>;
    /// Every drive to show, as the service says now. Folder names must be valid names of
    /// the mount (no `/`), unique where they share a parent, and no drive's folders may lie
    /// inside another drive's.
    async fn discover(&self) -> ProviderResult<Vec<DriveSlot>>;
    /// The provider of one drive. Called once per key while the drive stays in the layout
    /// (a drive provider keeps its own state, such as where its change feed placed items).
    fn open(&self, key: &str) -> ProviderResult<Arc<dyn Provider>>;
    /// What every drive of this service can do; `max_path_len` counts from the drive's root.
    fn capabilities(&self) -> Capabilities;
}

struct Drive {
    slot: DriveSlot,
    provider: Arc<dyn Provider>,
}

impl Drive {
    fn path(&self) -> String {
        format!("/{}", self.slot.folders.join("/"))
    }
}

struct Layout {
    drives: Vec<Arc<Drive>>,
    /// When the service last told us its drives; `None`: only the fixed ones are known.
    discovered: Option<Instant>,
    /// The last discovery failed (when, why): not asked again before
    /// [`RETRY_AFTER_FAILURE`], so that many callers offline do not each wait for one.
    failed: Option<(Instant, String)>,
    /// Counts finished discoveries, so that a caller that waited for another's answer
    /// takes it instead of asking again.
    generation: u64,
}

/// How long a failed discovery is not tried again.
const RETRY_AFTER_FAILURE: Duration = Duration::from_secs(30);

/// What the layout needs before it can be trusted.
enum Need {
    Nothing,
    Discovery,
    /// A discovery failed a moment ago (its error).
    Wait(String),
}

/// Where a path of the connection leads.
enum Place {
    /// A folder of the layout (the connection's root is `[]`), by its canonical names.
    Layout(Vec<String>),
    /// Inside a drive (`inner` is `/` for the drive's own folder).
    Drive { drive: Arc<Drive>, inner: String },
    /// Nothing there. `in_layout`: the parent is a layout folder (so nothing can be made
    /// there either).
    Nowhere { in_layout: bool },
}

/// The change feed's cursor: each drive's own cursor, and where the drive was shown, so a
/// drive that left the layout is reported removed from there.
#[derive(Serialize, Deserialize, Default)]
struct SetCursor {
    drives: BTreeMap<String, DriveCursor>,
}

#[derive(Serialize, Deserialize)]
struct DriveCursor {
    at: String,
    cursor: String,
}

pub struct DriveSet {
    catalog: Arc<dyn DriveCatalog>,
    layout: Mutex<Layout>,
    discovery: tokio::sync::Mutex<()>,
    refresh: Duration,
    /// The time shown for layout folders (they have none of their own).
    shown_since: SystemTime,
}

fn components(path: &str) -> Vec<&str> {
    path.split('/').filter(|c| !c.is_empty()).collect()
}

fn denied(path: &str) -> ProviderError {
    ProviderError::PermissionDenied(format!(
        "{path} is part of the connection's layout of drives: nothing can be created, renamed \
         or removed there, only inside a drive's folder"
    ))
}

impl DriveSet {
    /// A set starting with the catalog's fixed drives; the others come with the first
    /// discovery, and again when one is older than `refresh`.
    pub fn new(catalog: Arc<dyn DriveCatalog>, refresh: Duration) -> ProviderResult<Self> {
        let mut drives = Vec::new();
        for slot in catalog.fixed() {
            let provider = catalog.open(&slot.key)?;
            drives.push(Arc::new(Drive { slot, provider }));
        }
        if drives.is_empty() {
            return Err(ProviderError::Protocol(format!(
                "{}: a set of drives needs at least one fixed drive",
                catalog.kind()
            )));
        }
        Ok(DriveSet {
            catalog,
            layout: Mutex::new(Layout {
                drives,
                discovered: None,
                failed: None,
                generation: 0,
            }),
            discovery: tokio::sync::Mutex::new(()),
            refresh,
            shown_since: SystemTime::now(),
        })
    }

    /// The layout's own names match exactly (they are ours, and a case variant of one must
    /// not look like a second folder); what is below a drive's folder is the drive's.
    fn starts_with(&self, comps: &[&str], prefix: &[String]) -> bool {
        comps.len() >= prefix.len() && prefix.iter().zip(comps).all(|(p, c)| p == c)
    }

    /// Where `path` leads in the layout as known now.
    fn route(&self, path: &str) -> Place {
        let comps = components(path);
        let layout = self.layout.lock().unwrap();
        for d in &layout.drives {
            if self.starts_with(&comps, &d.slot.folders) {
                let rest = &comps[d.slot.folders.len()..];
                return Place::Drive {
                    drive: d.clone(),
                    inner: format!("/{}", rest.join("/")),
                };
            }
        }
        let folder_of = |comps: &[&str]| {
            layout
                .drives
                .iter()
                .find(|d| {
                    d.slot.folders.len() > comps.len()
                        && self.starts_with(comps, &d.slot.folders[..comps.len()])
                })
                .map(|d| d.slot.folders[..comps.len()].to_vec())
        };
        if let Some(canonical) = folder_of(&comps) {
            return Place::Layout(canonical);
        }
        let in_layout = !comps.is_empty() && folder_of(&comps[..comps.len() - 1]).is_some();
        Place::Nowhere { in_layout }
    }

    fn need(&self) -> (Need, u64) {
        let layout = self.layout.lock().unwrap();
        let need = match (&layout.failed, layout.discovered) {
            (Some((at, why)), _) if at.elapsed() < RETRY_AFTER_FAILURE => Need::Wait(why.clone()),
            (_, Some(at)) if at.elapsed() < self.refresh => Need::Nothing,
            _ => Need::Discovery,
        };
        (need, layout.generation)
    }

    /// Ask the service for its drives again, unless a discovery finished while this one
    /// waited for its turn (its outcome is then this one's). Drives still there keep their
    /// provider (and with it their change feed's bookkeeping).
    async fn rediscover(&self, seen: u64) -> ProviderResult<()> {
        let _one = self.discovery.lock().await;
        {
            let layout = self.layout.lock().unwrap();
            if layout.generation != seen {
                return match &layout.failed {
                    Some((_, why)) => Err(ProviderError::Transient(why.clone())),
                    None => Ok(()),
                };
            }
        }
        let found = self.catalog.discover().await;
        let mut layout = self.layout.lock().unwrap();
        layout.generation += 1;
        let slots = match found {
            Ok(s) => s,
            Err(e) => {
                layout.failed =
                    Some((Instant::now(), format!("listing the account's drives: {e}")));
                return Err(e);
            }
        };
        let old = layout.drives.clone();
        let mut drives: Vec<Arc<Drive>> = Vec::new();
        for slot in slots {
            if drives
                .iter()
                .any(|d| d.slot.key == slot.key || overlaps(&d.slot, &slot))
            {
                tracing::warn!(kind = self.catalog.kind(), folders = ?slot.folders,
                    "a drive that would share its place with another is not shown");
                continue;
            }
            let drive = match old.iter().find(|d| d.slot == slot) {
                Some(d) => d.clone(),
                None => Arc::new(Drive {
                    provider: match old.iter().find(|d| d.slot.key == slot.key) {
                        // The same drive shown at a new place.
                        Some(d) => d.provider.clone(),
                        None => match self.catalog.open(&slot.key) {
                            Ok(p) => p,
                            Err(e) => {
                                tracing::warn!(folders = ?slot.folders, error = %e,
                                    "a drive that cannot be opened is not shown");
                                continue;
                            }
                        },
                    },
                    slot,
                }),
            };
            drives.push(drive);
        }
        layout.drives = drives;
        layout.discovered = Some(Instant::now());
        layout.failed = None;
        Ok(())
    }

    /// Discover when stale. A failed discovery keeps the layout known before (logged), unless
    /// nothing but the fixed drives was ever known, or the account itself is refused.
    async fn refresh_layout(&self) -> ProviderResult<()> {
        let (need, seen) = self.need();
        let outcome = match need {
            Need::Nothing => return Ok(()),
            Need::Wait(why) => Err(ProviderError::Transient(why)),
            Need::Discovery => self.rediscover(seen).await,
        };
        match outcome {
            Ok(()) => Ok(()),
            Err(e @ ProviderError::Auth(_)) => Err(e),
            Err(e) => {
                if self.layout.lock().unwrap().discovered.is_none() {
                    return Err(e);
                }
                tracing::debug!(kind = self.catalog.kind(), error = %e,
                    "could not list the account's drives again; showing the ones known");
                Ok(())
            }
        }
    }

    /// Where `path` leads; a path outside the drives known so far waits for a discovery
    /// (only when the last one is stale, so that looking up missing names stays cheap).
    async fn place(&self, path: &str) -> ProviderResult<Place> {
        match self.route(path) {
            p @ Place::Drive { .. } => Ok(p),
            _ => {
                self.refresh_layout().await?;
                Ok(self.route(path))
            }
        }
    }

    fn layout_entry(&self, name: &str, id: String, drive_root: bool) -> RemoteEntry {
        RemoteEntry {
            id,
            name: name.to_owned(),
            kind: EntryKind::Dir,
            size: 0,
            mtime: self.shown_since,
            revision: "layout".into(),
            hash: None,
            // A drive's folder takes what the mount gives folders; the layout is read-only.
            mode: (!drive_root).then_some(0o555),
            symlink_target: None,
        }
    }

    fn layout_children(&self, folder: &[String]) -> Vec<RemoteEntry> {
        let layout = self.layout.lock().unwrap();
        let mut seen = BTreeSet::new();
        let mut out = Vec::new();
        for d in &layout.drives {
            let f = &d.slot.folders;
            if f.len() > folder.len() && f[..folder.len()] == *folder {
                let name = &f[folder.len()];
                if seen.insert(name.clone()) {
                    let drive_root = f.len() == folder.len() + 1;
                    let id = if drive_root {
                        format!("drive:{}", d.slot.key)
                    } else {
                        format!("layout:/{}", f[..=folder.len()].join("/"))
                    };
                    out.push(self.layout_entry(name, id, drive_root));
                }
            }
        }
        out
    }

    /// The drive and the path inside it, for an operation that changes something at
    /// `path` (never the drive's own folder, nor the layout).
    async fn inside_drive(&self, path: &str) -> ProviderResult<(Arc<Drive>, String)> {
        match self.place(path).await? {
            Place::Drive { drive, inner } if inner != "/" => Ok((drive, inner)),
            Place::Drive { .. } | Place::Layout(_) | Place::Nowhere { in_layout: true } => {
                Err(denied(path))
            }
            Place::Nowhere { in_layout: false } => Err(ProviderError::NotFound(path.to_owned())),
        }
    }

    /// Both ends of a move or copy inside one drive.
    async fn within_one_drive(
        &self,
        from: &str,
        to: &str,
    ) -> ProviderResult<(Arc<Drive>, String, String)> {
        let (a, from_inner) = self.inside_drive(from).await?;
        let (b, to_inner) = self.inside_drive(to).await?;
        if a.slot.key != b.slot.key {
            return Err(ProviderError::Unsupported(format!(
                "moving or copying {from} to {to}: they are on different drives"
            )));
        }
        Ok((a, from_inner, to_inner))
    }

    fn drives(&self) -> Vec<Arc<Drive>> {
        self.layout.lock().unwrap().drives.clone()
    }
}

/// Whether one drive's place lies in (or is) the other's, ignoring case: two places that
/// differ only in case would look like one folder to a case-insensitive service's users.
fn overlaps(a: &DriveSlot, b: &DriveSlot) -> bool {
    let n = a.folders.len().min(b.folders.len());
    a.folders[..n]
        .iter()
        .zip(&b.folders[..n])
        .all(|(x, y)| x.to_lowercase() == y.to_lowercase())
}

/// `path` of a drive's change, as the connection shows it.
fn under(drive_path: &str, inner: &str) -> String {
    if inner == "/" || inner.is_empty() {
        drive_path.to_owned()
    } else {
        format!("{drive_path}{inner}")
    }
}

/// Every proper ancestor folder of each path (`/a/b/c` gives `/a` and `/a/b`).
fn layout_folders<'a>(paths: impl Iterator<Item = &'a String>) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    for p in paths {
        let comps = components(p);
        for n in 1..comps.len() {
            out.insert(format!("/{}", comps[..n].join("/")));
        }
    }
    out
}

#[async_trait]
impl Provider for DriveSet {
    fn kind(&self) -> &'static str {
        self.catalog.kind()
    }

    fn capabilities(&self) -> Capabilities {
        let mut caps = self.catalog.capabilities();
        // Paths are checked whole by the VFS; the drive's limit counts from its own folder.
        // The shortest place of a drive keeps the check conservative for all of them.
        let shortest = self
            .layout
            .lock()
            .unwrap()
            .drives
            .iter()
            .map(|d| d.path().len())
            .min()
            .unwrap_or(0);
        caps.max_path_len += shortest;
        caps.long_poll = false;
        caps.propagated_dir_revisions = false;
        caps
    }

    /// Every drive of one service takes the same names: the first one's rules.
    fn refuses_name(&self, name: &str) -> Option<String> {
        let first = self.drives().first().cloned();
        first.and_then(|d| d.provider.refuses_name(name))
    }

    async fn fixed_folder(&self, dir: &str) -> Option<String> {
        // What is known already answers without the network (offline after a restart).
        let known = match self.route(dir) {
            Place::Layout(_) => Ok(Place::Layout(Vec::new())),
            Place::Drive { .. } => return None,
            Place::Nowhere { .. } => self.place(dir).await,
        };
        match known {
            Ok(Place::Layout(_)) => Some(format!(
                "{dir} holds the connection's drives: files and folders go inside a drive"
            )),
            Ok(_) => None,
            // Not known now (offline before the first discovery): the change is queued, and
            // refused when it runs if it was in the layout after all.
            Err(e) => {
                tracing::debug!(dir, error = %e, "layout unknown; change let through");
                None
            }
        }
    }

    async fn same_space(&self, a: &str, b: &str) -> bool {
        let outside =
            |p: &Place| matches!(p, Place::Layout(_) | Place::Nowhere { in_layout: true });
        match (self.place(a).await, self.place(b).await) {
            (Ok(Place::Drive { drive: x, .. }), Ok(Place::Drive { drive: y, .. })) => {
                x.slot.key == y.slot.key
            }
            // Changes in the layout itself are refused there (EACCES).
            (Ok(x), Ok(y)) if outside(&x) || outside(&y) => true,
            // A drive and a place that leads nowhere (a drive that left), or not known
            // now: a copy is always right, a move that cannot land never is.
            _ => false,
        }
    }

    fn list<'a>(&'a self, dir: &'a str) -> ListStream<'a> {
        Box::pin(futures::stream::once(async move {
            match self.place(dir).await? {
                Place::Layout(folder) => {
                    // A listing of the layout is when new drives are looked for.
                    self.refresh_layout().await?;
                    Ok(self.layout_children(&folder))
                }
                // A drive's pages, gathered: the drive's stream borrows its provider,
                // which this future owns only while it runs.
                Place::Drive { drive, inner } => {
                    let mut all = Vec::new();
                    let mut pages = drive.provider.list(&inner);
                    while let Some(page) = pages.next().await {
                        all.extend(page?);
                    }
                    Ok(all)
                }
                Place::Nowhere { .. } => Err(ProviderError::NotFound(dir.to_owned())),
            }
        }))
    }

    async fn stat(&self, path: &str) -> ProviderResult<RemoteEntry> {
        match self.place(path).await? {
            Place::Layout(folder) => {
                let name = folder.last().map(String::as_str).unwrap_or("");
                Ok(self.layout_entry(name, format!("layout:/{}", folder.join("/")), false))
            }
            Place::Drive { drive, inner } if inner == "/" => {
                let name = drive.slot.folders.last().cloned().unwrap_or_default();
                Ok(self.layout_entry(&name, format!("drive:{}", drive.slot.key), true))
            }
            Place::Drive { drive, inner } => drive.provider.stat(&inner).await,
            Place::Nowhere { .. } => Err(ProviderError::NotFound(path.to_owned())),
        }
    }

    async fn read_range(
        &self,
        path: &str,
        revision: Option<&str>,
        offset: u64,
        len: u64,
    ) -> ProviderResult<ByteStream> {
        match self.place(path).await? {
            Place::Drive { drive, inner } if inner != "/" => {
                drive
                    .provider
                    .read_range(&inner, revision, offset, len)
                    .await
            }
            Place::Nowhere { .. } => Err(ProviderError::NotFound(path.to_owned())),
            _ => Err(ProviderError::IsADirectory(path.to_owned())),
        }
    }

    async fn upload(
        &self,
        path: &str,
        source: &Path,
        options: &UploadOptions,
    ) -> ProviderResult<RemoteEntry> {
        let (drive, inner) = self.inside_drive(path).await?;
        drive.provider.upload(&inner, source, options).await
    }

    async fn mkdir(&self, path: &str) -> ProviderResult<RemoteEntry> {
        if self.place(path).await?.is_folder() {
            return Err(ProviderError::AlreadyExists(path.to_owned()));
        }
        let (drive, inner) = self.inside_drive(path).await?;
        drive.provider.mkdir(&inner).await
    }

    async fn rename(&self, from: &str, to: &str, overwrite: bool) -> ProviderResult<RemoteEntry> {
        let (drive, a, b) = self.within_one_drive(from, to).await?;
        drive.provider.rename(&a, &b, overwrite).await
    }

    async fn delete(&self, path: &str) -> ProviderResult<()> {
        let (drive, inner) = self.inside_drive(path).await?;
        drive.provider.delete(&inner).await
    }

    async fn copy(&self, from: &str, to: &str) -> ProviderResult<RemoteEntry> {
        let (drive, a, b) = self.within_one_drive(from, to).await?;
        drive.provider.copy(&a, &b).await
    }

    async fn symlink(&self, path: &str, target: &str) -> ProviderResult<RemoteEntry> {
        let (drive, inner) = self.inside_drive(path).await?;
        drive.provider.symlink(&inner, target).await
    }

    async fn set_mode(&self, path: &str, mode: u32) -> ProviderResult<()> {
        let (drive, inner) = self.inside_drive(path).await?;
        drive.provider.set_mode(&inner, mode).await
    }

    async fn set_mtime(&self, path: &str, mtime: SystemTime) -> ProviderResult<()> {
        let (drive, inner) = self.inside_drive(path).await?;
        drive.provider.set_mtime(&inner, mtime).await
    }

    /// The first fixed drive's (the user's own): what `df` shows for the connection.
    async fn quota(&self) -> ProviderResult<Quota> {
        let first = self.drives().first().cloned();
        match first {
            Some(d) => d.provider.quota().await,
            None => Ok(Quota::default()),
        }
    }

    async fn changes_cursor(&self) -> ProviderResult<String> {
        self.refresh_layout().await?;
        let mut cursor = SetCursor::default();
        for d in self.drives() {
            // A drive without a feed is kept with an empty cursor: where it is shown.
            if !d.provider.capabilities().delta {
                cursor.drives.insert(
                    d.slot.key.clone(),
                    DriveCursor {
                        at: d.path(),
                        cursor: String::new(),
                    },
                );
                continue;
            }
            // A drive whose feed cannot start now is started by a later `changes_since`.
            let c = match d.provider.changes_cursor().await {
                Ok(c) => c,
                Err(e @ ProviderError::Auth(_)) => return Err(e),
                Err(e) => {
                    tracing::warn!(drive = %d.path(), error = %e,
                        "could not start the drive's change feed; tried again next time");
                    continue;
                }
            };
            cursor.drives.insert(
                d.slot.key.clone(),
                DriveCursor {
                    at: d.path(),
                    cursor: c,
                },
            );
        }
        serde_json::to_string(&cursor)
            .map_err(|e| ProviderError::Protocol(format!("drive set cursor: {e}")))
    }

    /// Each drive's changes under its folder. A drive that joined the layout is reported
    /// (with its new layout folders) and its feed starts from now; one that left is reported
    /// removed. A drive whose feed fails keeps its cursor and is asked again next time
    /// (logged), so that one unreachable library does not hide the others' changes; a feed
    /// that forgot its place (`PreconditionFailed`) starts them all over.
    async fn changes_since(&self, cursor: &str) -> ProviderResult<ChangeBatch> {
        // Not ours (a cursor kept from when the connection showed one drive alone): the
        // caller starts the feed over, with fresh listings.
        let old: SetCursor = serde_json::from_str(cursor).map_err(|e| {
            ProviderError::PreconditionFailed(format!("not a cursor of this set of drives: {e}"))
        })?;
        self.refresh_layout().await?;
        let drives = self.drives();
        let mut changes = Vec::new();
        let mut next = SetCursor::default();

        let now_paths: Vec<String> = drives.iter().map(|d| d.path()).collect();
        let old_paths: Vec<String> = old.drives.values().map(|c| c.at.clone()).collect();
        let now_folders = layout_folders(now_paths.iter());
        let old_folders = layout_folders(old_paths.iter());
        // Gone: drives no longer shown where they were, then layout folders left empty.
        let mut gone: Vec<String> = old_paths
            .iter()
            .filter(|p| !now_paths.contains(p))
            .cloned()
            .collect();
        gone.extend(old_folders.difference(&now_folders).cloned());
        gone.sort();
        for p in &gone {
            let covered = gone
                .iter()
                .any(|g| g != p && p.starts_with(&format!("{g}/")));
            if !covered {
                changes.push(Change::Removed { path: p.clone() });
            }
        }
        // New layout folders, then each drive.
        for f in now_folders.difference(&old_folders) {
            let comps: Vec<String> = components(f).iter().map(|s| s.to_string()).collect();
            let name = comps.last().cloned().unwrap_or_default();
            changes.push(Change::Upserted {
                path: f.clone(),
                entry: self.layout_entry(&name, format!("layout:{f}"), false),
            });
        }
        for d in drives {
            let at = d.path();
            let has_feed = d.provider.capabilities().delta;
            match old.drives.get(&d.slot.key).filter(|c| c.at == at) {
                // No feed (its listings show its changes): only where it is, so that it is
                // reported when it leaves or comes.
                Some(_) if !has_feed => {
                    next.drives.insert(
                        d.slot.key.clone(),
                        DriveCursor {
                            at,
                            cursor: String::new(),
                        },
                    );
                }
                Some(c) => match d.provider.changes_since(&c.cursor).await {
                    Ok(batch) => {
                        for change in batch.changes {
                            changes.push(match change {
                                Change::Upserted { path, entry } => Change::Upserted {
                                    path: under(&at, &path),
                                    entry,
                                },
                                Change::Removed { path } => Change::Removed {
                                    path: under(&at, &path),
                                },
                            });
                        }
                        next.drives.insert(
                            d.slot.key.clone(),
                            DriveCursor {
                                at,
                                cursor: batch.cursor,
                            },
                        );
                    }
                    // The account refused, or a feed forgot our place: the caller starts
                    // every feed over (one drive cannot be started over alone).
                    Err(e @ (ProviderError::Auth(_) | ProviderError::PreconditionFailed(_))) => {
                        return Err(e)
                    }
                    Err(e) => {
                        tracing::warn!(drive = %at, error = %e,
                            "the drive's change feed failed; asked again next time");
                        next.drives.insert(
                            d.slot.key.clone(),
                            DriveCursor {
                                at,
                                cursor: c.cursor.clone(),
                            },
                        );
                    }
                },
                // New here (or moved in the layout): what it holds comes with the listing
                // of its folder; its feed starts now.
                None => {
                    let name = d.slot.folders.last().cloned().unwrap_or_default();
                    let cursor = if has_feed {
                        d.provider.changes_cursor().await
                    } else {
                        Ok(String::new())
                    };
                    let cursor = match cursor {
                        Ok(c) => c,
                        Err(e @ ProviderError::Auth(_)) => return Err(e),
                        Err(e) => {
                            tracing::warn!(drive = %at, error = %e,
                                "could not start the drive's change feed; tried again next time");
                            continue;
                        }
                    };
                    changes.push(Change::Upserted {
                        path: at.clone(),
                        entry: self.layout_entry(&name, format!("drive:{}", d.slot.key), true),
                    });
                    next.drives
                        .insert(d.slot.key.clone(), DriveCursor { at, cursor });
                }
            }
        }
        let cursor = serde_json::to_string(&next)
            .map_err(|e| ProviderError::Protocol(format!("drive set cursor: {e}")))?;
        Ok(ChangeBatch { changes, cursor })
    }

    async fn list_versions(&self, path: &str) -> ProviderResult<Vec<NativeVersion>> {
        let (drive, inner) = self.inside_drive(path).await?;
        drive.provider.list_versions(&inner).await
    }

    async fn read_version(&self, path: &str, version_id: &str) -> ProviderResult<ByteStream> {
        let (drive, inner) = self.inside_drive(path).await?;
        drive.provider.read_version(&inner, version_id).await
    }
}

impl Place {
    /// A folder that already exists: a layout folder or a drive's own.
    fn is_folder(&self) -> bool {
        match self {
            Place::Layout(_) => true,
            Place::Drive { inner, .. } => inner == "/",
            Place::Nowhere { .. } => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::provider::memory::MemoryProvider;

    /// A fixed drive `Own`, and whatever `found` says the service has.
    struct Catalog {
        drives: BTreeMap<String, Arc<MemoryProvider>>,
        found: Mutex<Vec<DriveSlot>>,
        /// The service cannot be reached.
        offline: std::sync::atomic::AtomicBool,
        asked: std::sync::atomic::AtomicUsize,
    }

    fn slot(folders: &[&str], key: &str) -> DriveSlot {
        DriveSlot {
            folders: folders.iter().map(|s| s.to_string()).collect(),
            key: key.into(),
        }
    }

    #[async_trait]
    impl DriveCatalog for Catalog {
        fn kind(&self) -> &'static str {
            "test"
        }
        fn fixed(&self) -> Vec<DriveSlot> {
            vec![slot(&["Own"], "own")]
        }
        async fn discover(&self) -> ProviderResult<Vec<DriveSlot>> {
            use std::sync::atomic::Ordering::SeqCst;
            self.asked.fetch_add(1, SeqCst);
            if self.offline.load(SeqCst) {
                return Err(ProviderError::Transient("offline".into()));
            }
            Ok(self.found.lock().unwrap().clone())
        }
        fn open(&self, key: &str) -> ProviderResult<Arc<dyn Provider>> {
            Ok(self.drives[key].clone())
        }
        fn capabilities(&self) -> Capabilities {
            Capabilities::default()
        }
    }

    fn set() -> (DriveSet, Arc<MemoryProvider>, Arc<MemoryProvider>) {
        let (set, _, own, lib) = set_with_catalog(false);
        (set, own, lib)
    }

    fn set_with_catalog(
        offline: bool,
    ) -> (
        DriveSet,
        Arc<Catalog>,
        Arc<MemoryProvider>,
        Arc<MemoryProvider>,
    ) {
        let own = Arc::new(MemoryProvider::new());
        let lib = Arc::new(MemoryProvider::new());
        let catalog = Catalog {
            drives: [("own".into(), own.clone()), ("lib".into(), lib.clone())].into(),
            found: Mutex::new(vec![
                slot(&["Own"], "own"),
                slot(&["Sites", "Team", "Docs"], "lib"),
                // Would lie inside the user's own drive, and a second place for one drive:
                // neither is shown.
                slot(&["Own", "inner"], "lib"),
                slot(&["Sites", "Other", "Docs"], "lib"),
            ]),
            offline: offline.into(),
            asked: 0.into(),
        };
        let catalog = Arc::new(catalog);
        let set = DriveSet::new(catalog.clone(), Duration::from_secs(3600)).unwrap();
        (set, catalog, own, lib)
    }

    async fn names(set: &DriveSet, dir: &str) -> Vec<(String, Option<u32>)> {
        let mut out = Vec::new();
        let mut pages = set.list(dir);
        while let Some(p) = pages.next().await {
            out.extend(p.unwrap().into_iter().map(|e| (e.name, e.mode)));
        }
        out.sort();
        out
    }

    #[tokio::test]
    async fn paths_lead_into_the_right_drive_and_the_layout_stays_fixed() {
        let (set, own, lib) = set();
        // The fixed drive is routed before any discovery.
        own.put_remote("/a.txt", b"mine");
        assert_eq!(set.stat("/Own/a.txt").await.unwrap().size, 4);
        assert_eq!(
            names(&set, "/").await,
            vec![("Own".into(), None), ("Sites".into(), Some(0o555))]
        );
        assert_eq!(
            names(&set, "/Sites").await,
            vec![("Team".into(), Some(0o555))]
        );
        assert_eq!(
            names(&set, "/Sites/Team").await,
            vec![("Docs".into(), None)]
        );

        let src = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(src.path(), b"report").unwrap();
        let opts = UploadOptions::default();
        set.upload("/Sites/Team/Docs/r.txt", src.path(), &opts)
            .await
            .unwrap();
        assert_eq!(lib.get_remote("/r.txt").as_deref(), Some(&b"report"[..]));
        assert!(own.get_remote("/r.txt").is_none());

        for path in ["/x.txt", "/Sites/y.txt", "/Sites/Team/z.txt"] {
            let e = set.upload(path, src.path(), &opts).await.unwrap_err();
            assert!(
                matches!(e, ProviderError::PermissionDenied(_)),
                "{path}: {e:?}"
            );
        }
        for path in ["/Own", "/Sites", "/Sites/Team/Docs"] {
            let e = set.delete(path).await.unwrap_err();
            assert!(
                matches!(e, ProviderError::PermissionDenied(_)),
                "{path}: {e:?}"
            );
            let e = set.mkdir(path).await.unwrap_err();
            assert!(
                matches!(e, ProviderError::AlreadyExists(_)),
                "{path}: {e:?}"
            );
        }
        let e = set
            .rename("/Own/a.txt", "/Sites/Team/Docs/a.txt", false)
            .await
            .unwrap_err();
        assert!(matches!(e, ProviderError::Unsupported(_)), "{e:?}");
        set.rename("/Sites/Team/Docs/r.txt", "/Sites/Team/Docs/s.txt", false)
            .await
            .unwrap();
        assert!(lib.exists_remote("/s.txt") && !lib.exists_remote("/r.txt"));

        assert!(set.fixed_folder("/").await.is_some());
        assert!(set.fixed_folder("/Sites/Team").await.is_some());
        assert!(set.fixed_folder("/Own").await.is_none());
        assert!(set.fixed_folder("/Sites/Team/Docs/sub").await.is_none());
        assert!(!set.same_space("/Own/a.txt", "/Sites/Team/Docs/a.txt").await);
        assert!(set.same_space("/Own/a.txt", "/Own/b.txt").await);
        assert!(matches!(
            set.stat("/Nothing").await.unwrap_err(),
            ProviderError::NotFound(_)
        ));
        // The path limit counts from the shortest drive folder ("/Own").
        assert_eq!(
            set.capabilities().max_path_len,
            Capabilities::default().max_path_len + 4
        );
    }

    #[tokio::test]
    async fn offline_the_known_layout_answers_and_a_failed_discovery_is_not_repeated() {
        use std::sync::atomic::Ordering::SeqCst;
        let (set, catalog, own, _) = set_with_catalog(true);
        own.put_remote("/a.txt", b"mine");
        // Known without asking: the root holds drives, the fixed drive is routed.
        assert!(set.fixed_folder("/").await.is_some());
        assert_eq!(set.stat("/Own/a.txt").await.unwrap().size, 4);
        assert_eq!(catalog.asked.load(SeqCst), 0);
        // Not known: the discovery fails once, and callers meanwhile get its error at once.
        assert!(set.stat("/Sites").await.is_err());
        assert!(set.stat("/Sites/Team").await.is_err());
        assert!(set.changes_cursor().await.is_err());
        assert_eq!(catalog.asked.load(SeqCst), 1);
        // A move between a known drive and an unknown place is not let through.
        assert!(!set.same_space("/Own/a.txt", "/Sites/Team/Docs/a.txt").await);
        // A creation in an unknown place is let through (offline work goes on).
        assert!(set.fixed_folder("/Sites/Team/Docs").await.is_none());
        assert_eq!(catalog.asked.load(SeqCst), 1);
    }
}
