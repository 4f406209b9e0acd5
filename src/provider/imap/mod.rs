//! IMAP mail as read-only folders (issue 12). One connection is one account; each
//! selectable mailbox is a folder (the server's hierarchy delimiter gives the tree, a
//! `\Noselect` mailbox is a plain folder), each message a file named by
//! [`names::message_file_name`], and, beside a message with attachments, a folder
//! `<same name>.d/` holding them ([`parts`]).
//!
//! Nothing here changes the mailbox: mailboxes are opened with `EXAMINE` (never
//! `SELECT`), bodies fetched with `BODY.PEEK` (so `\Seen` stays as it was), and every
//! write operation is refused (`Capabilities::writable` is false, so the mount is
//! read-only and the core answers EROFS).
//!
//! - Connections ([`conn`]): implicit TLS, STARTTLS, or plain text on loopback only;
//!   LOGIN with a password from a 0600 file or a command.
//! - Listings never fetch bodies: `EXAMINE`, `UID SEARCH ALL`, and `UID FETCH` of UID,
//!   INTERNALDATE, RFC822.SIZE, the Subject header and BODYSTRUCTURE for the UIDs not in
//!   the mailbox's [`index`] yet (kept on disk per UIDVALIDITY), in chunks.
//! - Reads: `BODY.PEEK[]<offset.length>` for messages, `BODY.PEEK[<part>]` for attachments.
//! - Changes: the cursor is every mailbox's (UIDVALIDITY, UIDNEXT, MESSAGES) from
//!   `STATUS`; a mailbox whose triple moved is listed again (new mail appears, expunged
//!   mail goes, a new UIDVALIDITY replaces the index). Between polls, `IDLE` on INBOX on
//!   a second connection wakes the poller as soon as mail arrives (re-issued every 25
//!   minutes, inside RFC 2177's 29).

pub mod conn;
pub mod index;
pub mod names;
pub mod parts;

use std::collections::{BTreeMap, HashSet, VecDeque};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use async_imap::types::Fetch;
use async_trait::async_trait;
use bytes::Bytes;
use futures::TryStreamExt;
use serde::{Deserialize, Serialize};

use conn::{io_error, Connector, Session};
pub use conn::{AuthMethod, ImapConfig, TlsMode};
use index::{Indexes, MailboxIndex, Message};

use super::{
    ByteStream, Capabilities, Change, ChangeBatch, EntryKind, ListStream, Provider, ProviderError,
    ProviderResult, Quota, RemoteEntry,
};

/// UIDs fetched per `UID FETCH` when listing.
const FETCH_CHUNK: usize = 500;
/// How long one IDLE lasts before it is re-issued (RFC 2177: servers may drop an idle
/// client after 30 minutes).
const IDLE_FOR: Duration = Duration::from_secs(25 * 60);
/// Longest any one exchange with the server may take (a read of a few MiB, a listing
/// chunk): a connection that stops answering (a flow a NAT forgot) is given up then,
/// instead of holding every read and listing behind it until TCP gives up.
const OP_TIMEOUT: Duration = Duration::from_secs(120);
/// Longest the check of an idle connection may take.
const CHECK_TIMEOUT: Duration = Duration::from_secs(20);
/// Decoded attachments kept in memory between the chunk reads of one file.
const DECODED_BUDGET: usize = 64 << 20;

/// A mailbox as LIST reports it.
#[derive(Debug, Clone)]
struct MailboxInfo {
    /// Its name as the server writes it.
    server: String,
    selectable: bool,
}

/// The account's mailboxes, by their path in the mount ("/Archive/2024").
#[derive(Debug, Default)]
struct Tree {
    boxes: BTreeMap<String, MailboxInfo>,
}

impl Tree {
    /// Whether `path` is a folder in the mount: a mailbox, or a level of the hierarchy
    /// the server did not list by itself.
    fn is_folder(&self, path: &str) -> bool {
        path == "/"
            || self.boxes.contains_key(path)
            || self
                .boxes
                .range(format!("{path}/")..)
                .next()
                .is_some_and(|(p, _)| p.starts_with(&format!("{path}/")))
    }

    /// The folders directly inside `dir`.
    fn children(&self, dir: &str) -> Vec<String> {
        let prefix = if dir == "/" {
            "/".to_owned()
        } else {
            format!("{dir}/")
        };
        let mut out: Vec<String> = self
            .boxes
            .keys()
            .filter_map(|p| p.strip_prefix(&prefix))
            .map(|rest| rest.split('/').next().unwrap_or(rest).to_owned())
            .filter(|n| !n.is_empty())
            .collect();
        out.dedup();
        out
    }
}

/// The mount path of a mailbox named `server` with hierarchy `delimiter`: each level
/// decoded from modified UTF-7, a `/` inside a level shown as `∕`.
fn display_path(server: &str, delimiter: Option<&str>) -> String {
    let levels: Vec<&str> = match delimiter {
        Some(d) if !d.is_empty() => server.split(d).collect(),
        _ => vec![server],
    };
    let mut out = String::new();
    for level in levels {
        let shown = names::decode_mailbox(level).unwrap_or_else(|| level.to_owned());
        out.push('/');
        out.push_str(&shown.replace('/', "∕"));
    }
    out
}

/// What a path in the mount is.
#[derive(Debug)]
enum Target {
    /// A folder with no messages of its own (the root, a `\Noselect` mailbox, a level).
    Folder,
    Mailbox(MailboxInfo),
    Message {
        mailbox: MailboxInfo,
        uid: u32,
    },
    Attachments {
        mailbox: MailboxInfo,
        uid: u32,
    },
    Attachment {
        mailbox: MailboxInfo,
        uid: u32,
        name: String,
    },
}

/// The UID in a message file's name (`… [u42].eml`) or attachments folder's (`… [u42].d`).
fn uid_of(name: &str, suffix: &str) -> Option<u32> {
    let rest = name.strip_suffix(suffix)?.strip_suffix(']')?;
    let start = rest.rfind("[u")?;
    rest[start + 2..].parse().ok()
}

/// The listing/reading connection, and the mailbox it has open.
struct Conn {
    session: Session,
    examined: Option<(String, u32)>,
    /// QRESYNC is enabled on it (RFC 7162 §3.2.3).
    qresync: bool,
    last_used: std::time::Instant,
}

/// What `EXAMINE` said of a mailbox.
struct Examined {
    uidvalidity: u32,
    exists: u32,
    /// Present with CONDSTORE / QRESYNC.
    highest_modseq: Option<u64>,
}

impl Conn {
    /// `EXAMINE` `mailbox` (again: that also shows what arrived since).
    async fn examine(&mut self, mailbox: &str) -> ProviderResult<Examined> {
        self.examined = None;
        let mb = self.session.examine(mailbox).await.map_err(|e| match e {
            async_imap::error::Error::No(m) => {
                ProviderError::NotFound(format!("mailbox {mailbox}: {m}"))
            }
            e => io_error("EXAMINE", e),
        })?;
        // async-imap answers a connection that ended mid-way with an empty mailbox: a
        // mailbox without UIDVALIDITY is that, not a mailbox whose messages all went.
        let uidvalidity = mb.uid_validity.ok_or_else(|| {
            io_error("EXAMINE", "no UIDVALIDITY in the answer (connection lost?)")
        })?;
        self.examined = Some((mailbox.to_owned(), uidvalidity));
        Ok(Examined {
            uidvalidity,
            exists: mb.exists,
            highest_modseq: mb.highest_modseq,
        })
    }

    /// What changed in the open mailbox since `modseq` (QRESYNC): the UIDs of messages
    /// new or changed since, and the UIDs expunged since (`VANISHED (EARLIER)`).
    async fn changed_since(&mut self, modseq: u64) -> ProviderResult<(Vec<u32>, Vec<(u32, u32)>)> {
        // VANISHED arrives as an unsolicited response: start from an empty queue (it
        // holds only so many, and keeps whatever earlier commands left in it).
        while self.session.unsolicited_responses.try_recv().is_ok() {}
        let fetches = uid_fetch(
            &mut self.session,
            "1:*",
            &format!("(UID) (CHANGEDSINCE {modseq} VANISHED)"),
        )
        .await?;
        // Everything the fetch brought has arrived once a later command is answered.
        self.confirm().await?;
        // Kept as ranges: a server may name every gap up to the highest UID at once.
        let mut vanished = Vec::new();
        while let Ok(r) = self.session.unsolicited_responses.try_recv() {
            if let async_imap::types::UnsolicitedResponse::Other(data) = r {
                if let async_imap::imap_proto::Response::Vanished { uids, .. } = data.parsed() {
                    for range in uids {
                        // imap-proto keeps "9:3" as written (an empty range in Rust).
                        let (a, b) = (*range.start(), *range.end());
                        vanished.push((a.min(b), a.max(b)));
                    }
                }
            }
        }
        Ok((fetches.iter().filter_map(|f| f.uid).collect(), vanished))
    }

    /// A tagged OK to NOOP: the connection carried everything asked before it. async-imap
    /// ends a FETCH, SEARCH or LIST quietly when the connection ends (and takes a tagged
    /// NO or BAD for their end), so an answer is trusted only after this.
    async fn confirm(&mut self) -> ProviderResult<()> {
        self.session
            .run_command_and_check_ok("NOOP")
            .await
            .map_err(|e| io_error("NOOP", e))
    }

    /// Open `mailbox` unless it is open; its UIDVALIDITY.
    async fn ensure_examined(&mut self, mailbox: &str) -> ProviderResult<u32> {
        match &self.examined {
            Some((m, v)) if m == mailbox => Ok(*v),
            _ => Ok(self.examine(mailbox).await?.uidvalidity),
        }
    }
}

type ConnFuture<'c, T> =
    std::pin::Pin<Box<dyn std::future::Future<Output = ProviderResult<T>> + Send + 'c>>;

/// Decoded attachments, newest last, within [`DECODED_BUDGET`] bytes.
#[derive(Default)]
struct Decoded {
    entries: VecDeque<(String, Bytes)>,
    bytes: usize,
}

impl Decoded {
    fn get(&self, key: &str) -> Option<Bytes> {
        self.entries
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, b)| b.clone())
    }

    fn put(&mut self, key: String, data: Bytes) {
        self.bytes += data.len();
        self.entries.push_back((key, data));
        while self.bytes > DECODED_BUDGET && self.entries.len() > 1 {
            if let Some((_, old)) = self.entries.pop_front() {
                self.bytes -= old.len();
            }
        }
    }
}

/// The change cursor: each selectable mailbox (by its server name) with its path in the
/// mount and its (UIDVALIDITY, UIDNEXT, MESSAGES). New mail moves UIDNEXT, an expunge
/// lowers MESSAGES (or, with mail arriving too, moves UIDNEXT); flags move none of them.
#[derive(Debug, Default, PartialEq, Serialize, Deserialize)]
struct Cursor {
    boxes: BTreeMap<String, (String, (u32, u32, u32))>,
}

pub struct ImapProvider {
    connector: Connector,
    conn: tokio::sync::Mutex<Option<Conn>>,
    /// The connection that IDLEs on INBOX (taken while it waits).
    idler: tokio::sync::Mutex<Option<Session>>,
    tree: std::sync::Mutex<Option<Arc<Tree>>>,
    indexes: Indexes,
    decoded: std::sync::Mutex<Decoded>,
}

fn folder(name: &str, id: &str) -> RemoteEntry {
    RemoteEntry {
        id: id.to_owned(),
        name: name.to_owned(),
        kind: EntryKind::Dir,
        size: 0,
        mtime: SystemTime::UNIX_EPOCH,
        revision: String::new(),
        hash: None,
        mode: Some(0o555),
        symlink_target: None,
    }
}

fn when(m: &Message) -> SystemTime {
    SystemTime::UNIX_EPOCH + Duration::from_secs(m.date.max(0) as u64)
}

impl ImapProvider {
    /// `index_dir`: where mailbox indexes are kept across restarts (`None`: memory only);
    /// `tokens`: the OAuth login's access tokens, for `auth = "xoauth2"`.
    pub fn new(
        cfg: ImapConfig,
        index_dir: Option<PathBuf>,
        tokens: Option<Arc<dyn crate::accounts::BearerTokens>>,
    ) -> ProviderResult<Self> {
        Ok(ImapProvider {
            connector: Connector::new(cfg, tokens)?,
            conn: tokio::sync::Mutex::new(None),
            idler: tokio::sync::Mutex::new(None),
            tree: std::sync::Mutex::new(None),
            indexes: Indexes::new(index_dir),
            decoded: std::sync::Mutex::new(Decoded::default()),
        })
    }

    fn cfg(&self) -> &ImapConfig {
        self.connector.config()
    }

    /// Runs `f` on the connection (made on first use, made again after a failure).
    async fn with_conn<T>(
        &self,
        f: impl for<'c> FnOnce(&'c mut Conn) -> ConnFuture<'c, T>,
    ) -> ProviderResult<T> {
        let mut guard = self.conn.lock().await;
        // A connection unused for a while is checked first: servers log idle clients out
        // (RFC 3501 §5.4 allows it after 30 minutes, many do it sooner), NATs forget idle
        // flows, and the first command on such a connection would fail.
        let check_after = Duration::from_secs(self.cfg().idle_check_secs);
        if let Some(c) = guard.as_mut() {
            let alive = c.last_used.elapsed() < check_after
                || matches!(
                    tokio::time::timeout(CHECK_TIMEOUT, c.confirm()).await,
                    Ok(Ok(()))
                );
            if !alive {
                tracing::debug!("IMAP connection went away while idle; connecting again");
                *guard = None;
            }
        }
        if guard.is_none() {
            let mut session = tokio::time::timeout(OP_TIMEOUT, self.connector.connect())
                .await
                .map_err(|_| io_error("connect", "no answer"))??;
            let caps = session
                .capabilities()
                .await
                .map_err(|e| io_error("CAPABILITY", e))?;
            // Listing again then asks only for what changed (RFC 7162 §3.2.3).
            let qresync = caps.has_str("QRESYNC")
                && session
                    .run_command_and_check_ok("ENABLE QRESYNC")
                    .await
                    .is_ok();
            *guard = Some(Conn {
                session,
                examined: None,
                qresync,
                last_used: std::time::Instant::now(),
            });
        }
        let conn = guard.as_mut().expect("just made");
        conn.last_used = std::time::Instant::now();
        let result = match tokio::time::timeout(OP_TIMEOUT, f(conn)).await {
            Ok(r) => r,
            Err(_) => Err(io_error(
                "request",
                format!("no answer within {OP_TIMEOUT:?}"),
            )),
        };
        if matches!(result, Err(ProviderError::Transient(_))) {
            // The connection may be broken, or out of step after a reply it could not
            // parse: a new one next time.
            *guard = None;
        }
        result
    }

    /// LIST every mailbox, and remember the tree.
    async fn list_tree(&self) -> ProviderResult<Arc<Tree>> {
        let listed = self
            .with_conn(|c| {
                Box::pin(async move {
                    let names: Vec<_> = c
                        .session
                        .list(Some(""), Some("*"))
                        .await
                        .map_err(|e| io_error("LIST", e))?
                        .try_collect()
                        .await
                        .map_err(|e| io_error("LIST", e))?;
                    Ok(names
                        .iter()
                        .map(|n| {
                            let selectable = !n.attributes().iter().any(|a| {
                                // RFC 5258's \NonExistent comes as an extension.
                                match a {
                                    async_imap::types::NameAttribute::NoSelect => true,
                                    async_imap::types::NameAttribute::Extension(x) => {
                                        x.eq_ignore_ascii_case("\\NonExistent")
                                    }
                                    _ => false,
                                }
                            });
                            (
                                display_path(n.name(), n.delimiter()),
                                MailboxInfo {
                                    server: n.name().to_owned(),
                                    selectable,
                                },
                            )
                        })
                        .collect::<Vec<_>>())
                })
            })
            .await?;
        if listed.is_empty() {
            // Every account has INBOX: an empty LIST is a connection that ended.
            *self.conn.lock().await = None;
            return Err(io_error(
                "LIST",
                "no mailbox in the answer (connection lost?)",
            ));
        }
        let tree = Arc::new(Tree {
            boxes: listed.into_iter().collect(),
        });
        *self.tree.lock().unwrap() = Some(tree.clone());
        Ok(tree)
    }

    /// The tree as last listed (listed now if never).
    async fn tree(&self) -> ProviderResult<Arc<Tree>> {
        let known = self.tree.lock().unwrap().clone();
        match known {
            Some(t) => Ok(t),
            None => self.list_tree().await,
        }
    }

    /// What `path` is; the tree is listed again once when it does not know the path.
    async fn resolve(&self, path: &str) -> ProviderResult<Target> {
        if let Some(t) = Self::resolve_in(&*self.tree().await?, path) {
            return Ok(t);
        }
        Self::resolve_in(&*self.list_tree().await?, path)
            .ok_or_else(|| ProviderError::NotFound(path.to_owned()))
    }

    fn resolve_in(tree: &Tree, path: &str) -> Option<Target> {
        if let Some(info) = tree.boxes.get(path) {
            return Some(if info.selectable {
                Target::Mailbox(info.clone())
            } else {
                Target::Folder
            });
        }
        if tree.is_folder(path) {
            return Some(Target::Folder);
        }
        let selectable = |dir: &str| tree.boxes.get(dir).filter(|i| i.selectable).cloned();
        let (dir, name) = super::split_path(path);
        if let Some(mailbox) = selectable(dir) {
            if let Some(uid) = uid_of(name, ".eml") {
                return Some(Target::Message { mailbox, uid });
            }
            if let Some(uid) = uid_of(name, ".d") {
                return Some(Target::Attachments { mailbox, uid });
            }
            return None;
        }
        let (mailbox_dir, folder) = super::split_path(dir);
        let mailbox = selectable(mailbox_dir)?;
        let uid = uid_of(folder, ".d")?;
        Some(Target::Attachment {
            mailbox,
            uid,
            name: name.to_owned(),
        })
    }

    /// Bring the index of `mailbox` up to date with the server: forget expunged UIDs,
    /// fetch what is new, start over on a new UIDVALIDITY.
    async fn refresh(&self, mailbox: &str) -> ProviderResult<Arc<MailboxIndex>> {
        let old = self.indexes.get(mailbox);
        let name = mailbox.to_owned();
        let (mut ix, new, changed) = self
            .with_conn(move |c| {
                Box::pin(async move {
                    let seen = c.examine(&name).await?;
                    let validity = seen.uidvalidity;
                    let renumbered = old.uidvalidity != validity;
                    if !renumbered && c.qresync {
                        if let (Some(then), Some(now)) = (old.highest_modseq, seen.highest_modseq) {
                            return refresh_since(c, old, then, now).await;
                        }
                    }
                    let mut ix = if renumbered {
                        // Every UID of the old validity means nothing now.
                        Arc::new(MailboxIndex {
                            uidvalidity: validity,
                            ..Default::default()
                        })
                    } else {
                        old
                    };
                    let modseq_moved = ix.highest_modseq != seen.highest_modseq;
                    if modseq_moved {
                        Arc::make_mut(&mut ix).highest_modseq = seen.highest_modseq;
                    }
                    let exists = seen.exists;
                    let now: HashSet<u32> = if exists == 0 {
                        HashSet::new()
                    } else {
                        let found = c
                            .session
                            .uid_search("ALL")
                            .await
                            .map_err(|e| io_error("UID SEARCH", e))?;
                        // Not a mailbox emptied by a cut answer: the connection carried it.
                        c.confirm().await?;
                        found
                    };
                    let gone = ix.messages.keys().any(|uid| !now.contains(uid));
                    let mut new: Vec<u32> = now
                        .iter()
                        .copied()
                        .filter(|u| !ix.messages.contains_key(u))
                        .collect();
                    new.sort_unstable();
                    if gone || !new.is_empty() {
                        // Copied only now, and only if someone else still holds it.
                        let edit = Arc::make_mut(&mut ix);
                        edit.messages.retain(|uid, _| now.contains(uid));
                        for chunk in new.chunks(FETCH_CHUNK) {
                            fetch_metadata(&mut c.session, chunk, edit).await?;
                        }
                        c.confirm().await?;
                    }
                    Ok((ix, new, renumbered || gone || modseq_moved))
                })
            })
            .await?;
        // Structures still to read: the new messages', and any an earlier listing could
        // not read (a network failure) or did not ask for (attachments were off).
        let pending: Vec<u32> = if self.cfg().attachments {
            ix.messages
                .iter()
                .filter(|(_, m)| !m.structure)
                .map(|(uid, _)| *uid)
                .collect()
        } else {
            Vec::new()
        };
        if !changed && new.is_empty() && pending.is_empty() {
            return Ok(ix);
        }
        if !pending.is_empty() {
            let validity = ix.uidvalidity;
            self.fetch_attachments(mailbox, validity, &pending, Arc::make_mut(&mut ix))
                .await;
        }
        self.indexes.put(mailbox, ix.clone());
        Ok(ix)
    }

    /// BODYSTRUCTUREs of `uids`, a chunk at a time; a chunk the parser cannot read is
    /// asked for message by message, and a message whose structure cannot be read shows
    /// no attachments (its `.eml` still has them).
    async fn fetch_attachments(
        &self,
        mailbox: &str,
        validity: u32,
        uids: &[u32],
        ix: &mut MailboxIndex,
    ) {
        for chunk in uids.chunks(FETCH_CHUNK) {
            match self.bodystructures(mailbox, validity, chunk).await {
                Ok(found) => merge_attachments(ix, found),
                Err(e) => {
                    tracing::debug!(mailbox, error = %e, "BODYSTRUCTURE of a chunk; one by one");
                    for uid in chunk {
                        match self.bodystructures(mailbox, validity, &[*uid]).await {
                            Ok(found) => merge_attachments(ix, found),
                            Err(e) => tracing::warn!(
                                mailbox, uid, error = %e,
                                "could not read the message's structure; its attachments are not shown"
                            ),
                        }
                    }
                }
            }
        }
    }

    /// The attachments of `uids` (those of `validity`; an answer about other UIDs, such
    /// as a flag change announced meanwhile, is not taken).
    async fn bodystructures(
        &self,
        mailbox: &str,
        validity: u32,
        uids: &[u32],
    ) -> ProviderResult<Vec<(u32, Vec<parts::Attachment>)>> {
        let name = mailbox.to_owned();
        let set = uid_set(uids);
        let wanted: HashSet<u32> = uids.iter().copied().collect();
        self.with_conn(move |c| {
            Box::pin(async move {
                if c.ensure_examined(&name).await? != validity {
                    return Err(ProviderError::PreconditionFailed(format!(
                        "{name}: UIDVALIDITY changed"
                    )));
                }
                let fetches = uid_fetch(&mut c.session, &set, "(UID BODYSTRUCTURE)").await?;
                c.confirm().await?;
                Ok(fetches
                    .iter()
                    .filter(|f| f.uid.is_some_and(|u| wanted.contains(&u)))
                    .filter_map(|f| Some((f.uid?, parts::attachments(f.bodystructure()?))))
                    .collect())
            })
        })
        .await
    }

    fn message_id(mailbox: &MailboxInfo, validity: u32, uid: u32) -> String {
        format!("{}\u{0}{validity}:{uid}", mailbox.server)
    }

    fn message_entry(mailbox: &MailboxInfo, validity: u32, uid: u32, m: &Message) -> RemoteEntry {
        RemoteEntry {
            id: Self::message_id(mailbox, validity, uid),
            name: m.name.clone(),
            kind: EntryKind::File,
            size: m.size,
            mtime: when(m),
            // A message never changes under its UID (RFC 3501 §2.3.1.1).
            revision: format!("{validity}:{uid}"),
            hash: None,
            mode: Some(0o444),
            symlink_target: None,
        }
    }

    fn attachments_entry(
        mailbox: &MailboxInfo,
        validity: u32,
        uid: u32,
        m: &Message,
    ) -> RemoteEntry {
        RemoteEntry {
            mtime: when(m),
            ..folder(
                &names::attachments_dir_name(&m.name),
                &format!("{}.d", Self::message_id(mailbox, validity, uid)),
            )
        }
    }

    fn attachment_entry(
        mailbox: &MailboxInfo,
        validity: u32,
        uid: u32,
        m: &Message,
        a: &parts::Attachment,
    ) -> RemoteEntry {
        RemoteEntry {
            id: format!("{}:{}", Self::message_id(mailbox, validity, uid), a.part),
            name: a.name.clone(),
            kind: EntryKind::File,
            size: a.known_size().unwrap_or(0),
            mtime: when(m),
            revision: format!("{validity}:{uid}:{}", a.part),
            hash: None,
            mode: Some(0o444),
            symlink_target: None,
        }
    }

    /// The message `uid` of `mailbox` as indexed (the mailbox listed first if it is not).
    ///
    /// A UID below the highest one indexed that the index lacks is gone: UIDs only grow
    /// (RFC 3501 §2.3.1.1), so no listing could bring it back. That keeps the core's
    /// "is it really gone?" look after an expunge (one per message) off the network.
    async fn message(&self, mailbox: &MailboxInfo, uid: u32) -> ProviderResult<(u32, Message)> {
        let known = self.indexes.get(&mailbox.server);
        if let Some(m) = known.messages.get(&uid) {
            return Ok((known.uidvalidity, m.clone()));
        }
        if known
            .messages
            .last_key_value()
            .is_some_and(|(max, _)| uid < *max)
        {
            return Err(ProviderError::NotFound(format!(
                "{} UID {uid}",
                mailbox.server
            )));
        }
        drop(known);
        let ix = self.refresh(&mailbox.server).await?;
        ix.messages
            .get(&uid)
            .map(|m| (ix.uidvalidity, m.clone()))
            .ok_or_else(|| ProviderError::NotFound(format!("{} UID {uid}", mailbox.server)))
    }

    async fn entries(&self, dir: &str) -> ProviderResult<Vec<RemoteEntry>> {
        let tree = self.list_tree().await?;
        let target =
            Self::resolve_in(&tree, dir).ok_or_else(|| ProviderError::NotFound(dir.to_owned()))?;
        let mut out: Vec<RemoteEntry> = tree
            .children(dir)
            .iter()
            .map(|n| folder(n, &super::join_path(dir, n)))
            .collect();
        match target {
            Target::Folder => {}
            Target::Mailbox(mailbox) => {
                let ix = self.refresh(&mailbox.server).await?;
                let show = self.cfg().attachments;
                for (uid, m) in &ix.messages {
                    out.push(Self::message_entry(&mailbox, ix.uidvalidity, *uid, m));
                    if show && !m.attachments.is_empty() {
                        out.push(Self::attachments_entry(&mailbox, ix.uidvalidity, *uid, m));
                    }
                }
            }
            Target::Attachments { mailbox, uid } => {
                let (validity, m) = self.message(&mailbox, uid).await?;
                if !self.cfg().attachments || m.attachments.is_empty() {
                    return Err(ProviderError::NotFound(dir.to_owned()));
                }
                out.extend(
                    m.attachments
                        .iter()
                        .map(|a| Self::attachment_entry(&mailbox, validity, uid, &m, a)),
                );
            }
            Target::Message { .. } | Target::Attachment { .. } => {
                return Err(ProviderError::NotADirectory(dir.to_owned()))
            }
        }
        Ok(out)
    }

    /// An attachment's decoded content: from memory, or its part fetched and decoded.
    /// The decoded size is remembered in the index, so later listings show it.
    async fn attachment_bytes(
        &self,
        mailbox: &MailboxInfo,
        uid: u32,
        name: &str,
        path: &str,
    ) -> ProviderResult<(u32, Message, parts::Attachment, Bytes)> {
        let (validity, m) = self.message(mailbox, uid).await?;
        let a = m
            .attachments
            .iter()
            .find(|a| a.name == name)
            .cloned()
            .ok_or_else(|| ProviderError::NotFound(path.to_owned()))?;
        let key = format!("{}\u{0}{validity}:{uid}:{}", mailbox.server, a.part);
        if let Some(data) = self.decoded.lock().unwrap().get(&key) {
            return Ok((validity, m, a, data));
        }
        let server = mailbox.server.clone();
        let section = a.part.clone();
        let missing = path.to_owned();
        let raw = self
            .with_conn(move |c| {
                Box::pin(async move {
                    if c.ensure_examined(&server).await? != validity {
                        return Err(ProviderError::NotFound(missing));
                    }
                    let path = async_imap::imap_proto::types::SectionPath::Part(
                        section.split('.').filter_map(|n| n.parse().ok()).collect(),
                        None,
                    );
                    let items = format!("BODY.PEEK[{section}]");
                    let f = uid_fetch_one(c, uid, &items, |f| f.section(&path).is_some())
                        .await?
                        .ok_or(ProviderError::NotFound(missing))?;
                    Ok(f.section(&path).unwrap_or_default().to_vec())
                })
            })
            .await?;
        let data = Bytes::from(parts::decode(a.encoding, &raw));
        self.decoded.lock().unwrap().put(key, data.clone());
        if a.size != Some(data.len() as u64) {
            // The true size, for every listing from now on.
            let size = data.len() as u64;
            self.indexes.update(&mailbox.server, |ix| {
                let found = (ix.uidvalidity == validity)
                    .then(|| ix.messages.get_mut(&uid))
                    .flatten()
                    .and_then(|m| m.attachments.iter_mut().find(|x| x.part == a.part));
                match found {
                    Some(x) => {
                        x.size = Some(size);
                        true
                    }
                    None => false,
                }
            });
        }
        Ok((validity, m, a, data))
    }

    /// The size of message `uid`'s bytes, checked against `listed` (its RFC822.SIZE) with
    /// one small fetch of the two bytes around where it should end: one byte back means it
    /// ends there; none or two, that RFC822.SIZE was wrong, and the whole message is
    /// fetched once to measure it. Remembered in the index, and listings show it.
    async fn true_size(
        &self,
        mailbox: &MailboxInfo,
        validity: u32,
        uid: u32,
        listed: u64,
        path: &str,
    ) -> ProviderResult<u64> {
        let server = mailbox.server.clone();
        let missing = path.to_owned();
        let size = self
            .with_conn(move |c| {
                Box::pin(async move {
                    if c.ensure_examined(&server).await? != validity {
                        return Err(ProviderError::NotFound(missing));
                    }
                    let (from, want) = if listed == 0 { (0, 1) } else { (listed - 1, 2) };
                    let got = body_len(c, uid, &format!("BODY.PEEK[]<{from}.{want}>"))
                        .await?
                        .ok_or_else(|| ProviderError::NotFound(missing.clone()))?;
                    if listed > 0 && got == 1 {
                        return Ok(listed);
                    }
                    if listed == 0 && got == 0 {
                        return Ok(0);
                    }
                    tracing::info!(
                        mailbox = %server, uid, listed,
                        "the server's RFC822.SIZE is wrong; measuring the message"
                    );
                    body_len(c, uid, "BODY.PEEK[]")
                        .await?
                        .ok_or(ProviderError::NotFound(missing))
                })
            })
            .await?;
        self.indexes.update(&mailbox.server, |ix| {
            match (ix.uidvalidity == validity)
                .then(|| ix.messages.get_mut(&uid))
                .flatten()
            {
                Some(m) => {
                    m.size = size;
                    m.exact = true;
                    true
                }
                None => false,
            }
        });
        Ok(size)
    }

    /// Every selectable mailbox's (UIDVALIDITY, UIDNEXT, MESSAGES).
    async fn snapshot(&self) -> ProviderResult<(Arc<Tree>, Cursor)> {
        let tree = self.list_tree().await?;
        let boxes: Vec<(String, String)> = tree
            .boxes
            .iter()
            .filter(|(_, i)| i.selectable)
            .map(|(path, i)| (i.server.clone(), path.clone()))
            .collect();
        let cursor = self
            .with_conn(move |c| {
                Box::pin(async move {
                    if c.examined.take().is_some() {
                        // STATUS of the open mailbox answers what this session has seen of
                        // it, not what is there now (RFC 3501 §6.3.10): close it first.
                        // CLOSE expunges nothing after EXAMINE (§6.4.2).
                        c.session.close().await.map_err(|e| io_error("CLOSE", e))?;
                    }
                    let mut cursor = Cursor::default();
                    for (name, path) in boxes {
                        let st = match c
                            .session
                            .status(&name, "(MESSAGES UIDNEXT UIDVALIDITY)")
                            .await
                        {
                            Ok(st) => st,
                            // Deleted between LIST and STATUS: the next look sees it gone.
                            Err(async_imap::error::Error::No(_)) => continue,
                            Err(e) => return Err(io_error("STATUS", e)),
                        };
                        // An answer cut off reads as all zeros: not a mailbox that changed.
                        let (Some(validity), Some(next)) = (st.uid_validity, st.uid_next) else {
                            return Err(io_error("STATUS", "incomplete answer (connection lost?)"));
                        };
                        let state = (validity, next, st.exists);
                        cursor.boxes.insert(name, (path, state));
                    }
                    Ok(cursor)
                })
            })
            .await?;
        Ok((tree, cursor))
    }

    /// One IDLE on INBOX: true when the server reported something (or INBOX already
    /// differs from `cursor`), false when the IDLE ran its time.
    async fn idle_once(&self, cursor: &Cursor) -> ProviderResult<bool> {
        let mut slot = self.idler.lock().await;
        let mut session = match slot.take() {
            Some(s) => s,
            None => {
                let mut s = tokio::time::timeout(OP_TIMEOUT, self.connector.connect())
                    .await
                    .map_err(|_| io_error("connect", "no answer"))??;
                let caps = s
                    .capabilities()
                    .await
                    .map_err(|e| io_error("CAPABILITY", e))?;
                if !caps.has_str("IDLE") {
                    return Err(ProviderError::Unsupported(
                        "the IMAP server has no IDLE".into(),
                    ));
                }
                s
            }
        };
        let mb = tokio::time::timeout(OP_TIMEOUT, session.examine("INBOX"))
            .await
            .map_err(|_| io_error("EXAMINE INBOX", "no answer"))?
            .map_err(|e| io_error("EXAMINE INBOX", e))?;
        // Mail that came since the cursor was taken: say so at once rather than wait.
        // Only when both sides are known (INBOX is case-insensitive; a server may leave
        // UIDNEXT out): otherwise waiting is right, and never a loop of "changed".
        let known = cursor
            .boxes
            .iter()
            .find(|(name, _)| name.eq_ignore_ascii_case("INBOX"))
            .map(|(_, (_, state))| *state);
        if let (Some(then), Some(validity), Some(next)) = (known, mb.uid_validity, mb.uid_next) {
            if then != (validity, next, mb.exists) {
                *slot = Some(session);
                return Ok(true);
            }
        }
        let mut handle = session.idle();
        handle.init().await.map_err(|e| io_error("IDLE", e))?;
        let (wait, _stop) = handle.wait_with_timeout(IDLE_FOR);
        // async-imap restarts its timeout at every response, keep-alives included: this
        // one ends the IDLE after IDLE_FOR whatever the server sends meanwhile.
        let changed = match tokio::time::timeout(IDLE_FOR, wait).await {
            Ok(woke) => matches!(
                woke.map_err(|e| io_error("IDLE", e))?,
                async_imap::extensions::idle::IdleResponse::NewData(_)
            ),
            Err(_) => false,
        };
        let session = handle.done().await.map_err(|e| io_error("IDLE DONE", e))?;
        *slot = Some(session);
        Ok(changed)
    }
}

/// Which OAuth client endpoints an IMAP connection's login uses: none with a password;
/// Google's or Microsoft's (with their IMAP scopes) with `auth = "xoauth2"`.
pub fn oauth_defaults(
    settings: &toml::Table,
) -> Option<crate::accounts::connection::OAuthDefaults> {
    use crate::accounts::OAuthClientConfig;
    if settings.get("auth").and_then(|v| v.as_str()) != Some("xoauth2") {
        return None;
    }
    match settings.get("oauth_provider").and_then(|v| v.as_str()) {
        Some("microsoft") => Some(OAuthClientConfig::microsoft_mail),
        // Google is the default: its endpoints stand in for any other when every URL is
        // given in the settings (as the tests do).
        _ => Some(OAuthClientConfig::google_mail),
    }
}

/// "/a", "/a/b", "/a/b/c" for "/a/b/c".
fn levels(path: &str) -> impl Iterator<Item = &str> {
    path.match_indices('/')
        .skip(1)
        .map(|(i, _)| &path[..i])
        .chain(std::iter::once(path))
}

/// "1:3,7,9:10" for the sorted `uids`.
fn uid_set(uids: &[u32]) -> String {
    let mut out = String::new();
    let mut i = 0;
    while i < uids.len() {
        let start = uids[i];
        let mut end = start;
        while i + 1 < uids.len() && uids[i + 1] == end + 1 {
            i += 1;
            end = uids[i];
        }
        if !out.is_empty() {
            out.push(',');
        }
        if start == end {
            out.push_str(&start.to_string());
        } else {
            out.push_str(&format!("{start}:{end}"));
        }
        i += 1;
    }
    out
}

/// Bring `old` up to date with QRESYNC: nothing asked when HIGHESTMODSEQ has not moved;
/// else the UIDs changed since `then` and those expunged since, and the metadata of the
/// new ones. Returns (index, new UIDs, changed).
async fn refresh_since(
    c: &mut Conn,
    mut ix: Arc<MailboxIndex>,
    then: u64,
    now: u64,
) -> ProviderResult<(Arc<MailboxIndex>, Vec<u32>, bool)> {
    if then == now {
        return Ok((ix, Vec::new(), false));
    }
    let (changed, vanished) = c.changed_since(then).await?;
    let mut new: Vec<u32> = changed
        .into_iter()
        .filter(|u| !ix.messages.contains_key(u))
        .collect();
    new.sort_unstable();
    new.dedup();
    let edit = Arc::make_mut(&mut ix);
    edit.messages
        .retain(|uid, _| !vanished.iter().any(|(a, b)| (*a..=*b).contains(uid)));
    for chunk in new.chunks(FETCH_CHUNK) {
        fetch_metadata(&mut c.session, chunk, edit).await?;
    }
    c.confirm().await?;
    // Moved on only now that everything since `then` is in.
    edit.highest_modseq = Some(now);
    Ok((ix, new, true))
}

/// `UID FETCH <set> <items>`: every reply.
async fn uid_fetch(session: &mut Session, set: &str, items: &str) -> ProviderResult<Vec<Fetch>> {
    session
        .uid_fetch(set, items)
        .await
        .map_err(|e| io_error("UID FETCH", e))?
        .try_collect()
        .await
        .map_err(|e| io_error("UID FETCH", e))
}

/// The reply about `uid` that carries what was asked (`answers`); `None`: there is no
/// such message — said only once the connection is known to have carried the whole
/// answer (an unsolicited FETCH about the same UID, a flag change, does not count).
async fn uid_fetch_one(
    c: &mut Conn,
    uid: u32,
    items: &str,
    answers: impl Fn(&Fetch) -> bool,
) -> ProviderResult<Option<Fetch>> {
    let mut fetches: Vec<Fetch> = uid_fetch(&mut c.session, &uid.to_string(), items)
        .await?
        .into_iter()
        .filter(|f| f.uid == Some(uid))
        .collect();
    if let Some(i) = fetches.iter().position(&answers) {
        return Ok(Some(fetches.swap_remove(i)));
    }
    // Nothing with the item: the server said it is empty (a range past the end), or the
    // connection ended before it came. Only a later command's answer tells which.
    c.confirm().await?;
    Ok(fetches.into_iter().next())
}

/// How many bytes `UID FETCH <uid> (<section>)` brings (`None`: no such message).
async fn body_len(c: &mut Conn, uid: u32, section: &str) -> ProviderResult<Option<u64>> {
    Ok(uid_fetch_one(c, uid, section, |f| f.body().is_some())
        .await?
        .map(|f| f.body().map_or(0, |b| b.len() as u64)))
}

fn merge_attachments(ix: &mut MailboxIndex, found: Vec<(u32, Vec<parts::Attachment>)>) {
    for (uid, attachments) in found {
        if let Some(m) = ix.messages.get_mut(&uid) {
            m.attachments = attachments;
            m.structure = true;
        }
    }
}

/// UID, INTERNALDATE, RFC822.SIZE and Subject of `uids` (sorted) into `ix`.
async fn fetch_metadata(
    session: &mut Session,
    uids: &[u32],
    ix: &mut MailboxIndex,
) -> ProviderResult<()> {
    let fetches = uid_fetch(
        session,
        &uid_set(uids),
        "(UID INTERNALDATE RFC822.SIZE BODY.PEEK[HEADER.FIELDS (SUBJECT)])",
    )
    .await?;
    let wanted: HashSet<u32> = uids.iter().copied().collect();
    for f in &fetches {
        // Only answers to this request: with QRESYNC on, a flag change elsewhere is
        // announced as a FETCH with a UID too, without the items asked for.
        let Some(uid) = f.uid.filter(|u| wanted.contains(u)) else {
            continue;
        };
        let Some(when) = f.internal_date() else {
            continue;
        };
        let date = when.timestamp();
        let at = SystemTime::UNIX_EPOCH + Duration::from_secs(date.max(0) as u64);
        let subject = f.header().and_then(|h| {
            let text = String::from_utf8_lossy(h);
            let (_, v) = text.split_once(':')?;
            Some(v.trim().as_bytes().to_vec())
        });
        ix.messages.insert(
            uid,
            Message {
                name: names::message_file_name(at, subject.as_deref(), uid),
                size: f.size.unwrap_or(0) as u64,
                exact: false,
                date,
                attachments: Vec::new(),
                structure: false,
            },
        );
    }
    Ok(())
}

#[async_trait]
impl Provider for ImapProvider {
    fn kind(&self) -> &'static str {
        "imap"
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities {
            delta: true,
            long_poll: self.cfg().idle,
            writable: false,
            size_hints: true,
            ..Capabilities::default()
        }
    }

    fn list<'a>(&'a self, dir: &'a str) -> ListStream<'a> {
        Box::pin(futures::stream::once(
            async move { self.entries(dir).await },
        ))
    }

    async fn stat(&self, path: &str) -> ProviderResult<RemoteEntry> {
        let (_, name) = super::split_path(path);
        match self.resolve(path).await? {
            Target::Folder | Target::Mailbox(_) => Ok(folder(name, path)),
            Target::Message { mailbox, uid } => {
                let (validity, mut m) = self.message(&mailbox, uid).await?;
                if m.name != name {
                    return Err(ProviderError::NotFound(path.to_owned()));
                }
                if !m.exact {
                    // Asked when the file is opened (`size_hints`): check the size now.
                    m.size = self
                        .true_size(&mailbox, validity, uid, m.size, path)
                        .await?;
                }
                Ok(Self::message_entry(&mailbox, validity, uid, &m))
            }
            Target::Attachments { mailbox, uid } => {
                let (validity, m) = self.message(&mailbox, uid).await?;
                if names::attachments_dir_name(&m.name) != name || m.attachments.is_empty() {
                    return Err(ProviderError::NotFound(path.to_owned()));
                }
                Ok(Self::attachments_entry(&mailbox, validity, uid, &m))
            }
            Target::Attachment { mailbox, uid, name } => {
                let (validity, m) = self.message(&mailbox, uid).await?;
                let a = m
                    .attachments
                    .iter()
                    .find(|a| a.name == name)
                    .ok_or_else(|| ProviderError::NotFound(path.to_owned()))?;
                let mut entry = Self::attachment_entry(&mailbox, validity, uid, &m, a);
                if a.known_size().is_none() {
                    // Asked when the size matters (the file is opened): decode it now.
                    let (_, _, _, data) = self.attachment_bytes(&mailbox, uid, &name, path).await?;
                    entry.size = data.len() as u64;
                }
                Ok(entry)
            }
        }
    }

    async fn read_range(
        &self,
        path: &str,
        revision: Option<&str>,
        offset: u64,
        len: u64,
    ) -> ProviderResult<ByteStream> {
        let data = match self.resolve(path).await? {
            Target::Message { mailbox, uid } => {
                let expected = revision.and_then(|r| r.split(':').next()?.parse::<u32>().ok());
                // A partial fetch of up to u32::MAX octets: the server answers what there is.
                let want = len.min(u32::MAX as u64);
                let missing = path.to_owned();
                self.with_conn(move |c| {
                    Box::pin(async move {
                        let validity = c.ensure_examined(&mailbox.server).await?;
                        if expected.is_some_and(|v| v != validity) {
                            // The UIDs were renumbered: this name is not that message any more.
                            return Err(ProviderError::NotFound(missing));
                        }
                        let section = format!("BODY.PEEK[]<{offset}.{want}>");
                        let f = uid_fetch_one(c, uid, &section, |f| f.body().is_some())
                            .await?
                            .ok_or(ProviderError::NotFound(missing))?;
                        Ok(Bytes::copy_from_slice(f.body().unwrap_or_default()))
                    })
                })
                .await?
            }
            Target::Attachment { mailbox, uid, name } => {
                let (_, _, _, data) = self.attachment_bytes(&mailbox, uid, &name, path).await?;
                let start = (offset as usize).min(data.len());
                let end = start.saturating_add(len as usize).min(data.len());
                data.slice(start..end)
            }
            _ => return Err(ProviderError::IsADirectory(path.to_owned())),
        };
        Ok(Box::pin(futures::stream::once(async move { Ok(data) })))
    }

    async fn quota(&self) -> ProviderResult<Quota> {
        Ok(Quota::default())
    }

    async fn changes_cursor(&self) -> ProviderResult<String> {
        let (_, cursor) = self.snapshot().await?;
        Ok(serde_json::to_string(&cursor).expect("a cursor serializes"))
    }

    /// Which mailboxes changed since `cursor`. The core lists the folder holding each
    /// reported path again; for a mailbox whose content changed that is the mailbox
    /// itself (reported as the path of a name inside it), for a mailbox made or deleted
    /// its parent.
    async fn changes_since(&self, cursor: &str) -> ProviderResult<ChangeBatch> {
        let old: Cursor = serde_json::from_str(cursor).map_err(|e| {
            ProviderError::PreconditionFailed(format!("IMAP change cursor unreadable: {e}"))
        })?;
        let (_, new) = self.snapshot().await?;
        let mut changes = Vec::new();
        for (server, (path, now)) in &new.boxes {
            match old.boxes.get(server) {
                Some((_, then)) if then == now => {}
                Some(_) => changes.push(Change::Removed {
                    path: super::join_path(path, "(changed)"),
                }),
                // Every level, so that a new level above it is listed where it appears.
                None => changes.extend(levels(path).map(|level| {
                    let (_, name) = super::split_path(level);
                    Change::Upserted {
                        entry: folder(name, level),
                        path: level.to_owned(),
                    }
                })),
            }
        }
        for (server, (path, _)) in &old.boxes {
            if !new.boxes.contains_key(server) {
                changes.extend(levels(path).map(|level| Change::Removed {
                    path: level.to_owned(),
                }));
            }
        }
        Ok(ChangeBatch {
            changes,
            cursor: serde_json::to_string(&new).expect("a cursor serializes"),
        })
    }

    async fn wait_for_changes(&self, cursor: &str) -> ProviderResult<bool> {
        if !self.cfg().idle {
            return Err(ProviderError::Unsupported("IDLE is off".into()));
        }
        let cursor: Cursor = serde_json::from_str(cursor).map_err(|e| {
            ProviderError::PreconditionFailed(format!("IMAP change cursor unreadable: {e}"))
        })?;
        let result = self.idle_once(&cursor).await;
        if matches!(result, Err(ProviderError::Transient(_))) {
            *self.idler.lock().await = None;
        }
        result
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uids_come_back_from_names() {
        assert_eq!(uid_of("2024-03-05 1407 Report [u42].eml", ".eml"), Some(42));
        assert_eq!(uid_of("2024-03-05 1407 [u7] odd [u9].eml", ".eml"), Some(9));
        assert_eq!(uid_of("2024-03-05 1407 Report [u42].d", ".d"), Some(42));
        assert_eq!(uid_of("notes.txt", ".eml"), None);
    }

    #[test]
    fn mailbox_paths_follow_the_delimiter_and_decode_names() {
        assert_eq!(display_path("Archive.2024", Some(".")), "/Archive/2024");
        assert_eq!(display_path("Entw&APw-rfe", Some("/")), "/Entwürfe");
        assert_eq!(display_path("a/b.c", Some(".")), "/a∕b/c");
        assert_eq!(display_path("INBOX", None), "/INBOX");
    }

    #[test]
    fn levels_of_a_path() {
        assert_eq!(
            levels("/a/b/c").collect::<Vec<_>>(),
            ["/a", "/a/b", "/a/b/c"]
        );
        assert_eq!(levels("/INBOX").collect::<Vec<_>>(), ["/INBOX"]);
    }

    #[test]
    fn uid_sets_are_ranges() {
        assert_eq!(uid_set(&[1, 2, 3, 7, 9, 10]), "1:3,7,9:10");
        assert_eq!(uid_set(&[5]), "5");
    }

    #[test]
    fn the_tree_knows_levels_nobody_listed() {
        let mut t = Tree::default();
        for (p, s) in [("/INBOX", true), ("/a/b/c", true)] {
            t.boxes.insert(
                p.into(),
                MailboxInfo {
                    server: p.into(),
                    selectable: s,
                },
            );
        }
        assert!(t.is_folder("/a") && t.is_folder("/a/b") && !t.is_folder("/ab"));
        assert_eq!(t.children("/"), ["INBOX", "a"]);
        assert_eq!(t.children("/a"), ["b"]);
    }
}
