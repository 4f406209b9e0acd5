//! The control socket: how the CLI talks to a running daemon. One JSON request per line,
//! one JSON response per line, over a Unix socket only the owner can open (0600).

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Request {
    Status,
    /// `path` is relative to the mount point ("/conn/dir/file" or "/dir/file" for a
    /// single-connection mount).
    Versions {
        path: String,
    },
    Restore {
        path: String,
        version: usize,
    },
    Diff {
        path: String,
        a: usize,
        b: usize,
    },
    Retry,
    /// Keep a file or folder available offline (or stop, with `keep: false`).
    Pin {
        path: String,
        keep: bool,
    },
    /// Upload everything now; wait up to `wait_secs` for the queue to drain.
    Sync {
        wait_secs: f64,
    },
    /// Forget listings so the next access fetches them again.
    Refresh,
    Unmount {
        drain_secs: Option<f64>,
    },
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Response {
    pub ok: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    #[serde(default)]
    pub data: serde_json::Value,
}

impl Response {
    pub fn ok(data: serde_json::Value) -> Self {
        Response {
            ok: true,
            error: None,
            data,
        }
    }
    pub fn err(msg: impl Into<String>) -> Self {
        Response {
            ok: false,
            error: Some(msg.into()),
            data: serde_json::Value::Null,
        }
    }
}

/// Where sockets of this user's daemons live.
pub fn runtime_dir() -> PathBuf {
    let base = std::env::var_os("XDG_RUNTIME_DIR")
        .map(PathBuf::from)
        .filter(|p| p.is_dir())
        .unwrap_or_else(|| PathBuf::from(format!("/tmp/cloudmount-{}", nix::unistd::getuid())));
    if base.ends_with(format!("cloudmount-{}", nix::unistd::getuid())) {
        base
    } else {
        base.join("cloudmount")
    }
}

/// The socket of the daemon serving `mount_point` (an absolute, canonical path).
pub fn socket_for(mount_point: &Path) -> PathBuf {
    runtime_dir().join(format!("{}.sock", mount_id(mount_point)))
}

/// A file-name-safe identity of a mount point.
pub fn mount_id(mount_point: &Path) -> String {
    let s = mount_point.to_string_lossy();
    let mut out: String = s
        .trim_matches('/')
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '_'
            }
        })
        .collect();
    if out.len() > 80 {
        out.truncate(80);
    }
    if out.is_empty() {
        out.push_str("root");
    }
    out
}

pub fn bind(path: &Path) -> std::io::Result<UnixListener> {
    use std::os::unix::fs::PermissionsExt;
    if let Some(dir) = path.parent() {
        // Whoever can enter this folder can ask the daemon for file names, or unmount it.
        crate::private_fs::create_private_dir(dir)?;
        crate::private_fs::check_owned(dir)?;
        let old = crate::private_fs::tighten(dir)?;
        if let Some(mode) = old {
            tracing::warn!(
                folder = %dir.display(),
                mode = format!("{mode:o}"),
                "the control socket folder was open to other users; tightened to 0700"
            );
        }
    }
    // A socket left by a daemon that was killed: nothing listens on it any more.
    if path.exists() && std::os::unix::net::UnixStream::connect(path).is_err() {
        std::fs::remove_file(path)?;
    }
    // Under the daemon's umask (077) the socket is born private; the chmod is for library
    // callers that did not narrow theirs.
    let listener = UnixListener::bind(path)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
    Ok(listener)
}

pub async fn serve_connection<F, Fut>(stream: UnixStream, handler: F)
where
    F: Fn(Request) -> Fut,
    Fut: std::future::Future<Output = Response>,
{
    let (r, mut w) = stream.into_split();
    let mut lines = BufReader::new(r).lines();
    while let Ok(Some(line)) = lines.next_line().await {
        let resp = match serde_json::from_str::<Request>(&line) {
            Ok(req) => handler(req).await,
            Err(e) => Response::err(format!("bad request: {e}")),
        };
        let mut out = serde_json::to_vec(&resp).unwrap_or_default();
        out.push(b'\n');
        if w.write_all(&out).await.is_err() {
            break;
        }
    }
}

pub async fn call(socket: &Path, req: &Request) -> std::io::Result<Response> {
    let stream = UnixStream::connect(socket).await?;
    let (r, mut w) = stream.into_split();
    let mut line = serde_json::to_vec(req)?;
    line.push(b'\n');
    w.write_all(&line).await?;
    let mut lines = BufReader::new(r).lines();
    let resp = lines
        .next_line()
        .await?
        .ok_or_else(|| std::io::Error::other("daemon closed the connection"))?;
    serde_json::from_str(&resp).map_err(std::io::Error::other)
}
