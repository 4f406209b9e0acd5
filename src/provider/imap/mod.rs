//! IMAP mail as read-only folders (issue 12) — a first version. One connection is one
//! account; each selectable mailbox is a folder (the server's hierarchy delimiter gives
//! the tree), each message a file named by [`names::message_file_name`].
//!
//! Nothing here changes the mailbox: mailboxes are opened with `EXAMINE` (never
//! `SELECT`), bodies fetched with `BODY.PEEK` (so `\Seen` stays as it was), and every
//! write operation is refused (`Capabilities::writable` is false, so the mount is
//! read-only).
//!
//! This first version: plain-text connections to loopback only (TLS, STARTTLS and XOAUTH2
//! next), one connection, listings fetched whole (no persisted UID cache yet), reads
//! through `BODY.PEEK[]<offset.length>`. Still to come (issue 12): TLS, attachments
//! folders, CONDSTORE/QRESYNC and IDLE, UIDVALIDITY handling across restarts.

pub mod names;

use std::path::PathBuf;
use std::time::SystemTime;

use async_trait::async_trait;
use bytes::Bytes;
use futures::TryStreamExt;
use serde::{Deserialize, Serialize};
use tokio::net::TcpStream;

use super::{
    ByteStream, Capabilities, EntryKind, ListStream, Provider, ProviderError, ProviderResult,
    Quota, RemoteEntry,
};

/// One IMAP account.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ImapConfig {
    pub host: String,
    pub port: u16,
    pub user: String,
    /// A 0600 file holding the password.
    pub password_file: PathBuf,
}

type Session = async_imap::Session<TcpStream>;

pub struct ImapProvider {
    cfg: ImapConfig,
    password: crate::secrets::Secret,
    session: tokio::sync::Mutex<Option<Session>>,
}

fn io_error(what: &str, e: impl std::fmt::Display) -> ProviderError {
    ProviderError::Transient(format!("IMAP {what}: {e}"))
}

/// A mailbox path ("/Archive/2024") as the server names it ("Archive" + delimiter + "2024").
fn mailbox_name(dir: &str, delimiter: &str) -> String {
    dir.trim_start_matches('/').replace('/', delimiter)
}

/// The UID in a message file's name (`… [u42].eml`).
fn uid_of(name: &str) -> Option<u32> {
    let rest = name.strip_suffix("].eml")?;
    let start = rest.rfind("[u")?;
    rest[start + 2..].parse().ok()
}

impl ImapProvider {
    pub fn new(cfg: ImapConfig) -> ProviderResult<Self> {
        let loopback = matches!(cfg.host.as_str(), "127.0.0.1" | "::1" | "localhost");
        if !loopback {
            // Never send a password in clear over a network.
            return Err(ProviderError::Unsupported(format!(
                "IMAP to {}: only loopback without TLS in this version",
                cfg.host
            )));
        }
        let password = crate::secrets::read_secret_file(&cfg.password_file)
            .map_err(|e| ProviderError::Auth(e.to_string()))?;
        Ok(ImapProvider {
            cfg,
            password,
            session: tokio::sync::Mutex::new(None),
        })
    }

    async fn connect(&self) -> ProviderResult<Session> {
        let stream = TcpStream::connect((self.cfg.host.as_str(), self.cfg.port))
            .await
            .map_err(|e| io_error("connect", e))?;
        let mut client = async_imap::Client::new(stream);
        client
            .read_response()
            .await
            .map_err(|e| io_error("greeting", e))?;
        client
            .login(&self.cfg.user, self.password.expose())
            .await
            .map_err(|(e, _)| ProviderError::Auth(format!("IMAP login: {e}")))
    }

    /// Runs `f` on the connection (made on first use, made again after a failure).
    async fn with_session<T>(
        &self,
        f: impl for<'s> FnOnce(
            &'s mut Session,
        ) -> std::pin::Pin<
            Box<dyn std::future::Future<Output = ProviderResult<T>> + Send + 's>,
        >,
    ) -> ProviderResult<T> {
        let mut guard = self.session.lock().await;
        if guard.is_none() {
            *guard = Some(self.connect().await?);
        }
        let result = f(guard.as_mut().expect("just made")).await;
        if matches!(result, Err(ProviderError::Transient(_))) {
            // The connection may be broken: a new one next time.
            *guard = None;
        }
        result
    }

    /// Every mailbox: (name as the server writes it, delimiter, selectable).
    async fn mailboxes(&self) -> ProviderResult<Vec<(String, String, bool)>> {
        self.with_session(|s| {
            Box::pin(async move {
                let names: Vec<_> = s
                    .list(Some(""), Some("*"))
                    .await
                    .map_err(|e| io_error("LIST", e))?
                    .try_collect()
                    .await
                    .map_err(|e| io_error("LIST", e))?;
                Ok(names
                    .iter()
                    .map(|n| {
                        let noselect = n
                            .attributes()
                            .iter()
                            .any(|a| matches!(a, async_imap::types::NameAttribute::NoSelect));
                        (
                            n.name().to_owned(),
                            n.delimiter().unwrap_or("/").to_owned(),
                            !noselect,
                        )
                    })
                    .collect())
            })
        })
        .await
    }

    /// The messages of mailbox `name`: (file name, UID, size, INTERNALDATE).
    async fn messages(&self, name: String) -> ProviderResult<Vec<RemoteEntry>> {
        self.with_session(move |s| {
            Box::pin(async move {
                let mb = s.examine(&name).await.map_err(|e| io_error("EXAMINE", e))?;
                if mb.exists == 0 {
                    return Ok(Vec::new());
                }
                let fetches: Vec<_> = s
                    .uid_fetch(
                        "1:*",
                        "(UID INTERNALDATE RFC822.SIZE BODY.PEEK[HEADER.FIELDS (SUBJECT)])",
                    )
                    .await
                    .map_err(|e| io_error("UID FETCH", e))?
                    .try_collect()
                    .await
                    .map_err(|e| io_error("UID FETCH", e))?;
                let validity = mb.uid_validity.unwrap_or(0);
                Ok(fetches
                    .iter()
                    .filter_map(|f| {
                        let uid = f.uid?;
                        let when: SystemTime = f
                            .internal_date()
                            .map(|d| d.with_timezone(&chrono::Utc).into())
                            .unwrap_or(SystemTime::UNIX_EPOCH);
                        let subject = f.header().and_then(|h| {
                            let text = std::str::from_utf8(h).ok()?;
                            let (_, v) = text.split_once(':')?;
                            Some(v.trim().as_bytes().to_vec())
                        });
                        let file = names::message_file_name(when, subject.as_deref(), uid);
                        Some(RemoteEntry {
                            id: format!("{validity}:{uid}"),
                            name: file,
                            kind: EntryKind::File,
                            size: f.size.unwrap_or(0) as u64,
                            mtime: when,
                            // A message never changes under its UID (RFC 3501 §2.3.1.1).
                            revision: format!("{validity}:{uid}"),
                            hash: None,
                            mode: Some(0o444),
                            symlink_target: None,
                        })
                    })
                    .collect())
            })
        })
        .await
    }

    fn folder(name: &str) -> RemoteEntry {
        RemoteEntry {
            id: name.to_owned(),
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

    /// What `dir` holds: its child mailboxes, and its messages when it is selectable.
    async fn entries(&self, dir: &str) -> ProviderResult<Vec<RemoteEntry>> {
        let boxes = self.mailboxes().await?;
        let delimiter = boxes.first().map(|b| b.1.clone()).unwrap_or("/".into());
        let me = mailbox_name(dir, &delimiter);
        let prefix = if me.is_empty() {
            String::new()
        } else {
            format!("{me}{delimiter}")
        };
        let mut out = Vec::new();
        let mut found = me.is_empty();
        let mut selectable = false;
        for (name, _, sel) in &boxes {
            if *name == me {
                found = true;
                selectable = *sel;
            } else if let Some(child) = name.strip_prefix(&prefix) {
                if !child.contains(delimiter.as_str()) {
                    let shown = names::decode_mailbox(child).unwrap_or_else(|| child.to_owned());
                    out.push(Self::folder(&shown));
                }
            }
        }
        if !found {
            return Err(ProviderError::NotFound(dir.to_owned()));
        }
        if selectable {
            out.extend(self.messages(me).await?);
        }
        Ok(out)
    }
}

#[async_trait]
impl Provider for ImapProvider {
    fn kind(&self) -> &'static str {
        "imap"
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities {
            writable: false,
            ..Capabilities::default()
        }
    }

    fn list<'a>(&'a self, dir: &'a str) -> ListStream<'a> {
        Box::pin(futures::stream::once(
            async move { self.entries(dir).await },
        ))
    }

    async fn stat(&self, path: &str) -> ProviderResult<RemoteEntry> {
        if path == "/" {
            return Ok(Self::folder("/"));
        }
        let (dir, name) = super::split_path(path);
        self.entries(dir)
            .await?
            .into_iter()
            .find(|e| e.name == name)
            .ok_or_else(|| ProviderError::NotFound(path.to_owned()))
    }

    async fn read_range(
        &self,
        path: &str,
        _revision: Option<&str>,
        offset: u64,
        len: u64,
    ) -> ProviderResult<ByteStream> {
        let (dir, name) = super::split_path(path);
        let uid = uid_of(name).ok_or_else(|| ProviderError::NotFound(path.to_owned()))?;
        let boxes = self.mailboxes().await?;
        let delimiter = boxes.first().map(|b| b.1.clone()).unwrap_or("/".into());
        let mailbox = mailbox_name(dir, &delimiter);
        // A partial fetch of up to u32::MAX octets: the server answers what there is.
        let want = len.min(u32::MAX as u64);
        let missing = path.to_owned();
        let data = self
            .with_session(move |s| {
                Box::pin(async move {
                    s.examine(&mailbox)
                        .await
                        .map_err(|e| io_error("EXAMINE", e))?;
                    let fetches: Vec<_> = s
                        .uid_fetch(uid.to_string(), format!("BODY.PEEK[]<{offset}.{want}>"))
                        .await
                        .map_err(|e| io_error("UID FETCH", e))?
                        .try_collect()
                        .await
                        .map_err(|e| io_error("UID FETCH", e))?;
                    let f = fetches
                        .iter()
                        .find(|f| f.uid == Some(uid))
                        .ok_or(ProviderError::NotFound(missing))?;
                    Ok(Bytes::copy_from_slice(f.body().unwrap_or_default()))
                })
            })
            .await?;
        Ok(Box::pin(futures::stream::once(async move { Ok(data) })))
    }

    async fn quota(&self) -> ProviderResult<Quota> {
        Ok(Quota::default())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uids_come_back_from_names() {
        assert_eq!(uid_of("2024-03-05 1407 Report [u42].eml"), Some(42));
        assert_eq!(uid_of("2024-03-05 1407 [u7] odd [u9].eml"), Some(9));
        assert_eq!(uid_of("notes.txt"), None);
        assert_eq!(mailbox_name("/Archive/2024", "."), "Archive.2024");
    }
}
