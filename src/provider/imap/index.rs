//! What the provider remembers of each mailbox: for one UIDVALIDITY, every message's UID,
//! file name, size, date and attachments. A message never changes under its UID (RFC 3501
//! §2.3.1.1), so a listing after the first one asks the server only which UIDs exist now
//! (`UID SEARCH ALL`) and fetches the metadata of the new ones; a changed UIDVALIDITY
//! throws the mailbox's index away.
//!
//! Kept on disk (one JSON file per mailbox, in the connection's state folder, private to
//! the user), so a restart does not fetch a large mailbox again.

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::Mutex;

use serde::{Deserialize, Serialize};

use super::parts::Attachment;

/// One message, as listed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Message {
    pub name: String,
    /// RFC822.SIZE, until `exact`: then the size of the message's bytes.
    pub size: u64,
    /// `size` was checked against the message's bytes (RFC822.SIZE is wrong on some
    /// servers).
    #[serde(default)]
    pub exact: bool,
    /// INTERNALDATE, seconds since the epoch.
    pub date: i64,
    /// From BODYSTRUCTURE; empty when the message has none (or they are not shown).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub attachments: Vec<Attachment>,
}

/// One mailbox at one UIDVALIDITY.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct MailboxIndex {
    pub uidvalidity: u32,
    pub messages: BTreeMap<u32, Message>,
}

/// Every mailbox's index, loaded from disk when first needed.
pub struct Indexes {
    dir: Option<PathBuf>,
    loaded: Mutex<HashMap<String, MailboxIndex>>,
}

impl Indexes {
    /// `dir`: where the indexes are kept (`None`: in memory only).
    pub fn new(dir: Option<PathBuf>) -> Self {
        Indexes {
            dir,
            loaded: Mutex::new(HashMap::new()),
        }
    }

    /// File name of a mailbox's index: the server's name in hex (any byte is safe).
    fn file(&self, mailbox: &str) -> Option<PathBuf> {
        let hex: String = mailbox.bytes().map(|b| format!("{b:02x}")).collect();
        self.dir
            .as_ref()
            .map(|d| d.join(format!("mailbox-{hex}.json")))
    }

    /// The index of `mailbox` (empty when never listed).
    pub fn get(&self, mailbox: &str) -> MailboxIndex {
        let mut loaded = self.loaded.lock().unwrap();
        if let Some(ix) = loaded.get(mailbox) {
            return ix.clone();
        }
        let ix: MailboxIndex = self
            .file(mailbox)
            .and_then(|f| std::fs::read(&f).ok().map(|bytes| (f, bytes)))
            .and_then(|(f, bytes)| match serde_json::from_slice::<MailboxIndex>(&bytes) {
                Ok(ix) => Some(ix),
                Err(e) => {
                    // Only a cache: listing again rebuilds it.
                    tracing::warn!(file = %f.display(), error = %e, "unreadable IMAP index; listing again");
                    None
                }
            })
            .unwrap_or_default();
        loaded.insert(mailbox.to_owned(), ix.clone());
        ix
    }

    /// Just the one message, without copying the whole index.
    pub fn message(&self, mailbox: &str, uid: u32) -> Option<(u32, Message)> {
        if !self.loaded.lock().unwrap().contains_key(mailbox) {
            self.get(mailbox);
        }
        let loaded = self.loaded.lock().unwrap();
        let ix = loaded.get(mailbox)?;
        ix.messages.get(&uid).map(|m| (ix.uidvalidity, m.clone()))
    }

    /// Change the index of `mailbox` in place; kept on disk when `change` says it changed
    /// something.
    pub fn update(&self, mailbox: &str, change: impl FnOnce(&mut MailboxIndex) -> bool) {
        let mut ix = self.get(mailbox);
        if change(&mut ix) {
            self.put(mailbox, ix);
        }
    }

    /// Replace the index of `mailbox`, on disk too (written whole, then renamed over the
    /// old file, so a crash leaves the old or the new one).
    pub fn put(&self, mailbox: &str, ix: MailboxIndex) {
        if let Some(f) = self.file(mailbox) {
            if let Err(e) = write_private(&f, &ix) {
                tracing::warn!(file = %f.display(), error = %e, "could not keep the IMAP index");
            }
        }
        self.loaded.lock().unwrap().insert(mailbox.to_owned(), ix);
    }
}

fn write_private(file: &std::path::Path, ix: &MailboxIndex) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    if let Some(dir) = file.parent() {
        crate::private_fs::create_private_dir(dir)?;
    }
    let tmp = file.with_extension("json.tmp");
    let mut out = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)?;
    out.write_all(&serde_json::to_vec(ix)?)?;
    out.sync_all()?;
    std::fs::rename(&tmp, file)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn indexes_survive_a_restart_and_stay_private() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let mut ix = MailboxIndex {
            uidvalidity: 7,
            ..Default::default()
        };
        ix.messages.insert(
            3,
            Message {
                name: "2024-01-02 1030 hi [u3].eml".into(),
                size: 10,
                exact: false,
                date: 1_704_191_400,
                attachments: vec![],
            },
        );
        Indexes::new(Some(dir.path().join("imap"))).put("Archive/ß", ix);
        let again = Indexes::new(Some(dir.path().join("imap")));
        let (validity, m) = again.message("Archive/ß", 3).unwrap();
        assert_eq!((validity, m.size), (7, 10));
        assert!(again.message("Archive/ß", 4).is_none());
        assert_eq!(again.get("INBOX").messages.len(), 0);
        for entry in std::fs::read_dir(dir.path().join("imap")).unwrap() {
            let mode = entry.unwrap().metadata().unwrap().permissions().mode();
            assert_eq!(mode & 0o077, 0, "{mode:o}");
        }
    }
}
