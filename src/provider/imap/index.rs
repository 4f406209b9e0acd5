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
use std::sync::{Arc, Mutex};

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
    /// BODYSTRUCTURE was read (`attachments` is what the message has); a listing asks
    /// again for messages without it.
    #[serde(default)]
    pub structure: bool,
}

/// One mailbox at one UIDVALIDITY.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct MailboxIndex {
    pub uidvalidity: u32,
    /// The mailbox's HIGHESTMODSEQ when it was last listed (servers with QRESYNC, RFC
    /// 7162): the next listing asks only for what changed since.
    #[serde(default)]
    pub highest_modseq: Option<u64>,
    pub messages: BTreeMap<u32, Message>,
}

/// Every mailbox's index, loaded from disk when first needed. Handed out shared: a large
/// mailbox's index is copied only when it changes while someone holds it.
pub struct Indexes {
    dir: Option<PathBuf>,
    loaded: Mutex<HashMap<String, Arc<MailboxIndex>>>,
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
    pub fn get(&self, mailbox: &str) -> Arc<MailboxIndex> {
        let mut loaded = self.loaded.lock().unwrap();
        Self::loaded_entry(&mut loaded, self.file(mailbox), mailbox).clone()
    }

    fn loaded_entry<'m>(
        loaded: &'m mut HashMap<String, Arc<MailboxIndex>>,
        file: Option<PathBuf>,
        mailbox: &str,
    ) -> &'m mut Arc<MailboxIndex> {
        loaded.entry(mailbox.to_owned()).or_insert_with(|| {
            let read = file.and_then(|f| std::fs::read(&f).ok().map(|bytes| (f, bytes)));
            let ix = read.and_then(|(f, bytes)| match serde_json::from_slice(&bytes) {
                Ok(ix) => Some(ix),
                Err(e) => {
                    // Only a cache: listing again rebuilds it.
                    tracing::warn!(file = %f.display(), error = %e, "unreadable IMAP index; listing again");
                    None
                }
            });
            Arc::new(ix.unwrap_or_default())
        })
    }

    /// Change the index of `mailbox` in place; kept on disk when `change` says it changed
    /// something.
    pub fn update(&self, mailbox: &str, change: impl FnOnce(&mut MailboxIndex) -> bool) {
        let file = self.file(mailbox);
        let mut loaded = self.loaded.lock().unwrap();
        let ix = Self::loaded_entry(&mut loaded, file.clone(), mailbox);
        if change(Arc::make_mut(ix)) {
            Self::save(file, ix);
        }
    }

    /// Replace the index of `mailbox`, on disk too (written whole, then renamed over the
    /// old file, so a crash leaves the old or the new one).
    pub fn put(&self, mailbox: &str, ix: Arc<MailboxIndex>) {
        // Written under the lock, as `update` does: two writers never share the temp file,
        // and the file on disk is never older than the index in memory.
        let mut loaded = self.loaded.lock().unwrap();
        Self::save(self.file(mailbox), &ix);
        loaded.insert(mailbox.to_owned(), ix);
    }

    fn save(file: Option<PathBuf>, ix: &MailboxIndex) {
        if let Some(f) = file {
            if let Err(e) = write_private(&f, ix) {
                tracing::warn!(file = %f.display(), error = %e, "could not keep the IMAP index");
            }
        }
    }
}

fn write_private(file: &std::path::Path, ix: &MailboxIndex) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    if let Some(dir) = file.parent() {
        crate::private_fs::create_private_dir(dir)?;
    }
    let tmp = file.with_extension("json.tmp");
    let out = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)?;
    let mut out = std::io::BufWriter::new(out);
    serde_json::to_writer(&mut out, ix)?;
    out.flush()?;
    out.get_ref().sync_all()?;
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
                structure: true,
            },
        );
        Indexes::new(Some(dir.path().join("imap"))).put("Archive/ß", Arc::new(ix));
        let again = Indexes::new(Some(dir.path().join("imap")));
        let ix = again.get("Archive/ß");
        assert_eq!((ix.uidvalidity, ix.messages[&3].size), (7, 10));
        assert!(!ix.messages.contains_key(&4));
        assert_eq!(again.get("INBOX").messages.len(), 0);
        for entry in std::fs::read_dir(dir.path().join("imap")).unwrap() {
            let mode = entry.unwrap().metadata().unwrap().permissions().mode();
            assert_eq!(mode & 0o077, 0, "{mode:o}");
        }
    }
}
