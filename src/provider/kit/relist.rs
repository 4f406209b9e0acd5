//! A change feed for services that have none: look again at the folders the mount has
//! listed, and report what differs.
//!
//! Confluence and Jira say *that* something changed (pages by modification date, issues
//! by `updated`), not what it means for a tree of derived names: a page moved under
//! another page, an issue whose summary (and so its folder name) changed, an attachment
//! removed. A provider built on [`Served`] records each listing it hands out; when the
//! service says a part of the tree may have changed, the provider drops its own caches
//! and calls [`Served::relist`] for that part, which lists every recorded folder there
//! again (parents first) and turns the differences into [`Change`]s. The filesystem then
//! lists the parents of those changes again, as for any other change feed.
//!
//! Only folders the mount has listed are looked at: nothing else can be stale in it.
//! After a restart nothing is recorded, so a provider answers a change it cannot place
//! with `PreconditionFailed` (every listing is fetched again).

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::Mutex;

use crate::provider::{
    is_same_or_below, join_path, Change, EntryKind, ProviderError, ProviderResult, RemoteEntry,
};

/// The listings a provider has handed out, by folder path.
#[derive(Default)]
pub struct Served {
    dirs: Mutex<BTreeMap<String, BTreeMap<String, RemoteEntry>>>,
}

impl Served {
    pub fn new() -> Self {
        Served::default()
    }

    /// Remember that `dir` was listed with `entries`.
    pub fn record(&self, dir: &str, entries: &[RemoteEntry]) {
        let listing = entries
            .iter()
            .map(|e| (e.name.clone(), e.clone()))
            .collect();
        self.dirs.lock().unwrap().insert(dir.to_owned(), listing);
    }

    /// Whether nothing has been listed yet (since this process started).
    pub fn is_empty(&self) -> bool {
        self.dirs.lock().unwrap().is_empty()
    }

    /// Whether `dir` has been listed.
    pub fn has(&self, dir: &str) -> bool {
        self.dirs.lock().unwrap().contains_key(dir)
    }

    /// The recorded folders at or below any of `tops`, parents before children.
    pub fn dirs_at_or_below(&self, tops: &[String]) -> Vec<String> {
        self.dirs
            .lock()
            .unwrap()
            .keys()
            .filter(|d| tops.iter().any(|t| is_same_or_below(d, t)))
            .cloned()
            .collect()
    }

    /// Lists every recorded folder at or below `tops` again with `list` (the provider's
    /// fresh listing, its caches already dropped) and returns what changed. A folder whose
    /// listing fails with `NotFound`, `NotADirectory` or `PermissionDenied` is gone. When
    /// the service cannot be reached (an error worth retrying) nothing is recorded and the
    /// error is returned: the same differences are found next time. Any other error (a
    /// reply that cannot be read) leaves that one folder as it was recorded, so that one
    /// bad folder does not hold up every other change; it is looked at again next time.
    pub async fn relist<F, Fut>(&self, tops: &[String], list: F) -> ProviderResult<Vec<Change>>
    where
        F: Fn(String) -> Fut,
        Fut: Future<Output = ProviderResult<Vec<RemoteEntry>>>,
    {
        self.relist_dirs(self.dirs_at_or_below(tops), list).await
    }

    /// [`Served::relist`] for exactly these folders (those recorded), not what is below
    /// them: for a provider that knows which listings a change touches. What was recorded
    /// below a folder that went is forgotten.
    pub async fn relist_exact<F, Fut>(
        &self,
        dirs: &[String],
        list: F,
    ) -> ProviderResult<Vec<Change>>
    where
        F: Fn(String) -> Fut,
        Fut: Future<Output = ProviderResult<Vec<RemoteEntry>>>,
    {
        let mut dirs: Vec<String> = dirs.iter().filter(|d| self.has(d)).cloned().collect();
        dirs.sort();
        dirs.dedup();
        self.relist_dirs(dirs, list).await
    }

    /// The paths of the recorded entries whose id is `id`.
    pub fn paths_of(&self, id: &str) -> Vec<String> {
        self.dirs
            .lock()
            .unwrap()
            .iter()
            .flat_map(|(dir, entries)| {
                entries
                    .values()
                    .filter(|e| e.id == id)
                    .map(|e| join_path(dir, &e.name))
                    .collect::<Vec<_>>()
            })
            .collect()
    }

    async fn relist_dirs<F, Fut>(&self, dirs: Vec<String>, list: F) -> ProviderResult<Vec<Change>>
    where
        F: Fn(String) -> Fut,
        Fut: Future<Output = ProviderResult<Vec<RemoteEntry>>>,
    {
        let mut gone: Vec<String> = Vec::new();
        let mut changes = Vec::new();
        let mut fresh: Vec<(String, Option<BTreeMap<String, RemoteEntry>>)> = Vec::new();
        for dir in dirs {
            if gone.iter().any(|g| is_same_or_below(&dir, g)) {
                fresh.push((dir, None));
                continue;
            }
            let new: BTreeMap<String, RemoteEntry> = match list(dir.clone()).await {
                Ok(entries) => entries.into_iter().map(|e| (e.name.clone(), e)).collect(),
                Err(
                    ProviderError::NotFound(_)
                    | ProviderError::NotADirectory(_)
                    | ProviderError::PermissionDenied(_),
                ) => {
                    // Its parent's listing says so too when the parent was listed; when it
                    // was not, this is the only word of it.
                    changes.push(Change::Removed { path: dir.clone() });
                    gone.push(dir.clone());
                    fresh.push((dir, None));
                    continue;
                }
                Err(e) if e.is_retryable() || matches!(e, ProviderError::Auth(_)) => return Err(e),
                Err(e) => {
                    tracing::warn!(dir = %dir, error = %e, "listing again failed; kept as it was");
                    continue;
                }
            };
            let old = self
                .dirs
                .lock()
                .unwrap()
                .get(&dir)
                .cloned()
                .unwrap_or_default();
            for (name, was) in &old {
                let path = join_path(&dir, name);
                match new.get(name) {
                    None => {
                        changes.push(Change::Removed { path: path.clone() });
                        if was.kind == EntryKind::Dir {
                            gone.push(path);
                        }
                    }
                    Some(now) if now.kind != was.kind || now.id != was.id => {
                        // Another object under the same name: the old one went first.
                        changes.push(Change::Removed { path: path.clone() });
                        if was.kind == EntryKind::Dir {
                            gone.push(path.clone());
                        }
                        changes.push(Change::Upserted {
                            path,
                            entry: now.clone(),
                        });
                    }
                    Some(now) if differs(was, now) => changes.push(Change::Upserted {
                        path,
                        entry: now.clone(),
                    }),
                    Some(_) => {}
                }
            }
            for (name, now) in &new {
                if !old.contains_key(name) {
                    changes.push(Change::Upserted {
                        path: join_path(&dir, name),
                        entry: now.clone(),
                    });
                }
            }
            fresh.push((dir, Some(new)));
        }
        let mut dirs = self.dirs.lock().unwrap();
        dirs.retain(|d, _| !gone.iter().any(|g| is_same_or_below(d, g)));
        for (dir, listing) in fresh {
            match listing {
                Some(l) => {
                    dirs.insert(dir, l);
                }
                None => {
                    dirs.remove(&dir);
                }
            }
        }
        Ok(changes)
    }
}

/// Whether the filesystem must hear about an entry again: its contents or size changed.
fn differs(was: &RemoteEntry, now: &RemoteEntry) -> bool {
    was.revision != now.revision || was.size != now.size || was.mtime != now.mtime
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;
    use std::time::{Duration, SystemTime};

    fn entry(name: &str, kind: EntryKind, rev: &str) -> RemoteEntry {
        RemoteEntry {
            id: format!("id-{name}"),
            name: name.into(),
            kind,
            size: rev.len() as u64,
            mtime: SystemTime::UNIX_EPOCH + Duration::from_secs(1),
            revision: rev.into(),
            hash: None,
            mode: None,
            symlink_target: None,
        }
    }

    fn paths(changes: &[Change]) -> Vec<String> {
        changes
            .iter()
            .map(|c| match c {
                Change::Upserted { path, .. } => format!("+{path}"),
                Change::Removed { path } => format!("-{path}"),
            })
            .collect()
    }

    #[tokio::test]
    async fn differences_of_the_folders_listed_become_changes() {
        let served = Served::new();
        served.record(
            "/",
            &[
                entry("a", EntryKind::Dir, "1"),
                entry("b.md", EntryKind::File, "1"),
                entry("c.md", EntryKind::File, "1"),
            ],
        );
        served.record("/a", &[entry("x", EntryKind::Dir, "1")]);
        served.record("/a/x", &[entry("deep.md", EntryKind::File, "1")]);
        served.record("/other", &[entry("o", EntryKind::File, "1")]);
        let now: HashMap<&str, Vec<RemoteEntry>> = HashMap::from([
            (
                "/",
                vec![
                    entry("a", EntryKind::Dir, "1"),
                    entry("b.md", EntryKind::File, "2"),
                    entry("d.md", EntryKind::File, "1"),
                ],
            ),
            // "x" went away with what was in it.
            ("/a", vec![]),
        ]);
        let changes = served
            .relist(&["/".to_owned()], |dir| {
                let r = now
                    .get(dir.as_str())
                    .cloned()
                    .ok_or(ProviderError::NotFound(dir));
                async move { r }
            })
            .await
            .unwrap();
        assert_eq!(
            paths(&changes),
            ["+/b.md", "-/c.md", "+/d.md", "-/a/x", "-/other"]
        );
        assert!(!served.has("/a/x"), "a folder that went is forgotten");
        assert!(!served.has("/other"));
        // Nothing changed since: nothing to report.
        let again = served
            .relist(&["/".to_owned()], |dir| {
                let r = now
                    .get(dir.as_str())
                    .cloned()
                    .ok_or(ProviderError::NotFound(dir));
                async move { r }
            })
            .await
            .unwrap();
        assert!(again.is_empty(), "{:?}", paths(&again));
    }

    #[tokio::test]
    async fn a_failed_listing_records_nothing_so_the_change_is_found_next_time() {
        let served = Served::new();
        served.record("/", &[entry("a.md", EntryKind::File, "1")]);
        served.record("/s", &[]);
        let err = served
            .relist(&["/".to_owned()], |dir| async move {
                if dir == "/" {
                    Ok(vec![entry("a.md", EntryKind::File, "2")])
                } else {
                    Err(ProviderError::Transient("cut".into()))
                }
            })
            .await;
        assert!(matches!(err, Err(ProviderError::Transient(_))));
        let changes = served
            .relist(&["/".to_owned()], |dir| async move {
                Ok(if dir == "/" {
                    vec![entry("a.md", EntryKind::File, "2")]
                } else {
                    vec![]
                })
            })
            .await
            .unwrap();
        assert_eq!(paths(&changes), ["+/a.md"]);
    }

    #[tokio::test]
    async fn exactly_the_folders_named_are_listed_again() {
        let served = Served::new();
        served.record("/", &[entry("a", EntryKind::Dir, "1")]);
        served.record("/a", &[entry("b", EntryKind::Dir, "1")]);
        served.record("/a/b", &[entry("c.md", EntryKind::File, "1")]);
        assert_eq!(served.paths_of("id-b"), ["/a/b"]);
        let asked = std::sync::Mutex::new(Vec::new());
        let changes = served
            .relist_exact(&["/a".to_owned(), "/never-listed".to_owned()], |dir| {
                asked.lock().unwrap().push(dir.clone());
                async move { Ok(vec![]) }
            })
            .await
            .unwrap();
        assert_eq!(paths(&changes), ["-/a/b"]);
        assert_eq!(*asked.lock().unwrap(), ["/a"]);
        assert!(
            !served.has("/a/b"),
            "what was below a folder that went is forgotten"
        );
        assert!(served.has("/"));
    }

    #[tokio::test]
    async fn one_unreadable_folder_does_not_hold_up_the_others() {
        let served = Served::new();
        served.record("/", &[entry("a.md", EntryKind::File, "1")]);
        served.record("/bad", &[entry("x", EntryKind::File, "1")]);
        served.record("/secret", &[entry("y", EntryKind::File, "1")]);
        let changes = served
            .relist(&["/".to_owned()], |dir| async move {
                match dir.as_str() {
                    "/" => Ok(vec![entry("a.md", EntryKind::File, "2")]),
                    "/bad" => Err(ProviderError::Protocol("garbage".into())),
                    _ => Err(ProviderError::PermissionDenied("no".into())),
                }
            })
            .await
            .unwrap();
        assert_eq!(paths(&changes), ["+/a.md", "-/secret"]);
        assert!(served.has("/bad"), "kept as it was, to be looked at again");
        assert!(!served.has("/secret"));
    }

    #[tokio::test]
    async fn a_file_replaced_by_a_folder_of_the_same_name_is_removed_then_added() {
        let served = Served::new();
        served.record("/", &[entry("n", EntryKind::File, "1")]);
        let changes = served
            .relist(&["/".to_owned()], |_| async {
                Ok(vec![entry("n", EntryKind::Dir, "1")])
            })
            .await
            .unwrap();
        assert_eq!(paths(&changes), ["-/n", "+/n"]);
    }
}
