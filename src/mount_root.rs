//! One mount point, every connection: a read-only top directory with one folder per
//! connection, and the mapping between kernel inode numbers and (connection, inode).
//!
//! Kernel inode = connection slot << 48 | the connection's own inode number. Slots are
//! persisted per connection name, so inode numbers stay stable across remounts even when
//! connections are added or reordered.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::SystemTime;

use crate::metadata::{Ino, ROOT_LOCAL_INO};
use crate::vfs::{Attr, Vfs};

pub const TOP_INO: u64 = 1;
const SLOT_SHIFT: u32 = 48;
const LOCAL_MASK: u64 = (1 << SLOT_SHIFT) - 1;

pub struct Connection {
    pub slot: u16,
    pub vfs: Arc<Vfs>,
    /// The connection's provider as seen through the metering and limiting wrapper.
    pub io: Arc<crate::provider::instrumented::InstrumentedProvider>,
}

pub enum Route<'a> {
    /// The top directory listing the connections.
    Top,
    Conn(&'a Connection, Ino),
}

pub struct MountRoot {
    /// By name, for the top directory's listing.
    pub connections: BTreeMap<String, Connection>,
    /// Show the only connection directly at the mount point (no per-connection folder).
    pub single: bool,
    pub created: SystemTime,
    pub uid: u32,
    pub gid: u32,
}

impl MountRoot {
    pub fn new(connections: Vec<Connection>, single: bool) -> Self {
        assert!(
            !single || connections.len() == 1,
            "single layout needs exactly one connection"
        );
        MountRoot {
            connections: connections
                .into_iter()
                .map(|c| (c.vfs.name.clone(), c))
                .collect(),
            single,
            created: SystemTime::now(),
            uid: nix::unistd::getuid().as_raw(),
            gid: nix::unistd::getgid().as_raw(),
        }
    }

    pub fn route(&self, ino: u64) -> Option<Route<'_>> {
        if ino == TOP_INO {
            if self.single {
                return self
                    .connections
                    .values()
                    .next()
                    .map(|c| Route::Conn(c, ROOT_LOCAL_INO));
            }
            return Some(Route::Top);
        }
        let slot = (ino >> SLOT_SHIFT) as u16;
        self.connections
            .values()
            .find(|c| c.slot == slot)
            .map(|c| Route::Conn(c, ino & LOCAL_MASK))
    }

    pub fn global(&self, conn: &Connection, local: Ino) -> u64 {
        if self.single && local == ROOT_LOCAL_INO {
            TOP_INO
        } else {
            ((conn.slot as u64) << SLOT_SHIFT) | local
        }
    }

    pub fn top_attr(&self) -> Attr {
        Attr {
            ino: TOP_INO,
            kind: crate::provider::EntryKind::Dir,
            special: None,
            size: 0,
            perm: 0o555,
            nlink: 2 + self.connections.len() as u32,
            uid: self.uid,
            gid: self.gid,
            atime: self.created,
            mtime: self.created,
            ctime: self.created,
        }
    }

    pub fn by_name(&self, name: &str) -> Option<&Connection> {
        self.connections.get(name)
    }

    /// Split a path inside the mount ("/gdrive/a/b") into the connection and its own path.
    pub fn split_mount_path<'a>(&'a self, path: &'a str) -> Option<(&'a Connection, String)> {
        let trimmed = path.trim_start_matches('/');
        if self.single {
            let conn = self.connections.values().next()?;
            return Some((conn, format!("/{trimmed}")));
        }
        let (name, rest) = trimmed.split_once('/').unwrap_or((trimmed, ""));
        let conn = self.connections.get(name)?;
        Some((conn, format!("/{rest}")))
    }
}
