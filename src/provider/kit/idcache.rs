//! Paths ↔ ids for services that address items by id (Drive, Jira, Confluence).
//!
//! The filesystem speaks paths; such a service wants an id for every request. The cache
//! keeps, per folder id, the folder's last listing with the local name of each child (see
//! [`super::names`]), and, per item id, the path it was last seen at. So:
//!
//! - a path resolves folder by folder through cached listings, and a missing listing is
//!   fetched by the provider and [`IdCache::store`]d;
//! - a change feed that reports ids finds where each item *was* ([`IdCache::last_path`]),
//!   including items this provider itself deleted or moved since the last poll
//!   ([`IdCache::forget_below`] remembers them until the feed reported them);
//! - after a change through the provider, or an outcome that is uncertain (a lost reply
//!   may hide a move that happened), the listings involved are dropped and fetched again
//!   rather than patched by guesswork; only an update of an item in place (same id, same
//!   name) is written into the cached listing ([`IdCache::replace`]).
//!
//! The cache holds no lock of its own: the provider keeps it behind its mutex, never held
//! across a request.

use std::collections::HashMap;
use std::sync::Arc;

use crate::provider::{is_same_or_below, join_path};

/// Something with a service id.
pub trait Identified {
    fn id(&self) -> &str;
}

/// One folder's children as last listed: (local name, item), names unique.
#[derive(Debug)]
pub struct Listing<T> {
    /// The folder's path when it was listed.
    pub path: String,
    pub children: Vec<(String, T)>,
}

impl<T: Identified> Listing<T> {
    /// The child with local name `local`.
    pub fn find(&self, local: &str) -> Option<&T> {
        self.children
            .iter()
            .find(|(n, _)| n == local)
            .map(|(_, item)| item)
    }

    /// The child with id `id`, with its local name.
    pub fn find_id(&self, id: &str) -> Option<(&str, &T)> {
        self.children
            .iter()
            .find(|(_, item)| item.id() == id)
            .map(|(n, item)| (n.as_str(), item))
    }
}

/// Bound on remembered deletions and moves, for a mount whose change feed is never polled.
const MAX_FORGOTTEN: usize = 100_000;

pub struct IdCache<T> {
    /// Folder id → its listing.
    listings: HashMap<String, Arc<Listing<T>>>,
    /// Item id → the path it was last seen at.
    paths: HashMap<String, String>,
    /// Item id → where an item forgotten since the last change poll was.
    forgotten: HashMap<String, String>,
}

impl<T> Default for IdCache<T> {
    fn default() -> Self {
        IdCache {
            listings: HashMap::new(),
            paths: HashMap::new(),
            forgotten: HashMap::new(),
        }
    }
}

impl<T: Identified + Clone> IdCache<T> {
    /// Records that item `id` is at `path` (the root, or a move the change feed reported).
    pub fn set_path(&mut self, id: &str, path: &str) {
        self.paths.insert(id.to_owned(), path.to_owned());
    }

    /// The path item `id` was last seen at in a listing.
    pub fn path(&self, id: &str) -> Option<&str> {
        self.paths.get(id).map(String::as_str)
    }

    /// Where item `id` was before the changes being reported: forgotten first (the
    /// provider deleted or moved it), else where it was last listed.
    pub fn last_path(&self, id: &str) -> Option<&str> {
        self.forgotten
            .get(id)
            .or_else(|| self.paths.get(id))
            .map(String::as_str)
    }

    /// The change feed reported item `id`: its forgotten place is no longer needed.
    pub fn reported(&mut self, id: &str) {
        self.forgotten.remove(id);
    }

    /// The cached listing of folder `folder_id`, if it was listed at `path` (a folder
    /// seen at another path since is listed again, so that its children's paths are
    /// right).
    pub fn listing(&self, folder_id: &str, path: &str) -> Option<Arc<Listing<T>>> {
        self.listings
            .get(folder_id)
            .filter(|l| l.path == path)
            .cloned()
    }

    /// The cached listing of folder `folder_id`, wherever it was listed.
    pub fn any_listing(&self, folder_id: &str) -> Option<Arc<Listing<T>>> {
        self.listings.get(folder_id).cloned()
    }

    /// Stores a fresh listing of folder `folder_id`, and where each child now is.
    pub fn store(&mut self, folder_id: &str, listing: Listing<T>) -> Arc<Listing<T>> {
        for (name, item) in &listing.children {
            self.paths
                .insert(item.id().to_owned(), join_path(&listing.path, name));
        }
        let listing = Arc::new(listing);
        self.listings.insert(folder_id.to_owned(), listing.clone());
        listing
    }

    /// Writes `item` over the child of the same id in folder `folder_id`'s listing (an
    /// update in place: same id, same name). Nothing happens if the folder is not cached.
    pub fn replace(&mut self, folder_id: &str, item: &T) {
        let Some(old) = self.listings.get(folder_id) else {
            return;
        };
        let children = old
            .children
            .iter()
            .map(|(n, c)| match c.id() == item.id() {
                true => (n.clone(), item.clone()),
                false => (n.clone(), c.clone()),
            })
            .collect();
        let path = old.path.clone();
        self.listings
            .insert(folder_id.to_owned(), Arc::new(Listing { path, children }));
    }

    /// Drops folder `folder_id`'s listing: the next look lists it again.
    pub fn invalidate(&mut self, folder_id: &str) {
        self.listings.remove(folder_id);
    }

    /// Drops the listing that holds item `id`, if one does.
    pub fn invalidate_holder_of(&mut self, id: &str) {
        let holder = self
            .listings
            .iter()
            .find(|(_, l)| l.children.iter().any(|(_, c)| c.id() == id))
            .map(|(folder, _)| folder.clone());
        if let Some(folder) = holder {
            self.listings.remove(&folder);
        }
    }

    /// Forgets everything at or below `path` (a delete or a move through the provider),
    /// remembering where the forgotten items were for the change feed.
    pub fn forget_below(&mut self, path: &str) {
        self.listings
            .retain(|_, l| !is_same_or_below(&l.path, path));
        let forgotten = &mut self.forgotten;
        self.paths.retain(|id, p| {
            let keep = !is_same_or_below(p, path);
            if !keep {
                forgotten.insert(id.clone(), p.clone());
            }
            keep
        });
        if self.forgotten.len() > MAX_FORGOTTEN {
            self.forgotten.clear();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Clone, Debug, PartialEq)]
    struct Item(&'static str, u32);

    impl Identified for Item {
        fn id(&self) -> &str {
            self.0
        }
    }

    fn listing(path: &str, children: &[(&str, Item)]) -> Listing<Item> {
        Listing {
            path: path.into(),
            children: children
                .iter()
                .map(|(n, i)| (n.to_string(), i.clone()))
                .collect(),
        }
    }

    #[test]
    fn paths_follow_listings_and_forgotten_items_stay_known_until_reported() {
        let mut c = IdCache::default();
        c.set_path("root", "/");
        c.store("root", listing("/", &[("docs", Item("d", 1))]));
        c.store(
            "d",
            listing("/docs", &[("a.txt", Item("a", 1)), ("b.txt", Item("b", 1))]),
        );
        assert_eq!(c.path("a"), Some("/docs/a.txt"));
        assert_eq!(
            c.listing("d", "/docs").unwrap().find("b.txt"),
            Some(&Item("b", 1))
        );
        // Listed at another path: not served for this one.
        assert!(c.listing("d", "/elsewhere").is_none());
        assert!(c.any_listing("d").is_some());

        c.forget_below("/docs");
        assert_eq!(c.path("a"), None);
        assert!(c.any_listing("d").is_none());
        assert!(c.any_listing("root").is_some(), "the parent stays");
        assert_eq!(c.last_path("a"), Some("/docs/a.txt"));
        assert_eq!(c.last_path("d"), Some("/docs"));
        c.reported("a");
        assert_eq!(c.last_path("a"), None);
        // "/docsx" is not below "/docs".
        c.store("x", listing("/docsx", &[("y", Item("y", 1))]));
        c.forget_below("/docs");
        assert_eq!(c.path("y"), Some("/docsx/y"));
    }

    #[test]
    fn replace_in_place_and_invalidate_the_holder() {
        let mut c = IdCache::default();
        c.store(
            "d",
            listing("/d", &[("a", Item("a", 1)), ("b", Item("b", 1))]),
        );
        c.replace("d", &Item("b", 2));
        let l = c.listing("d", "/d").unwrap();
        assert_eq!(l.find_id("b"), Some(("b", &Item("b", 2))));
        assert_eq!(l.find("a"), Some(&Item("a", 1)));
        c.replace("nope", &Item("a", 9));
        c.invalidate_holder_of("a");
        assert!(c.any_listing("d").is_none());
    }
}
