//! Real WebDAV servers on loopback for integration tests: `rclone serve webdav` and Apache
//! httpd with mod_dav_fs. Each serves a directory given by the test; dropping the returned
//! `WebdavServer` stops the server.
//!
//! Include with `#[path = "support/webdav_servers.rs"] mod webdav_servers;`.

#![allow(dead_code)]

use std::fs;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const APACHE_BIN: &str = "/usr/sbin/apache2";
const APACHE_MODULES: &str = "/usr/lib/apache2/modules";
const APACHE_TEMPLATE: &str = include_str!("apache-webdav.conf.in");
/// Where Apache serves the directory; the encoded space tests base URLs with a prefix.
pub const APACHE_PREFIX: &str = "/dav%20root/";

pub struct WebdavServer {
    /// Base URL of the served directory, with a trailing slash.
    pub url: String,
    /// The directory being served.
    pub root: PathBuf,
    /// "rclone" or "apache".
    pub name: &'static str,
    /// The loopback port the server listens on (kept across `stop`/`restart`).
    pub port: u16,
    /// `None` while stopped.
    child: Option<Child>,
    /// Starts the server again on `port`.
    respawn: Box<dyn Fn(u16) -> Child + Send + Sync>,
    /// When set, files under `root` must belong to this uid:gid for the server to write them.
    owner: Option<(u32, u32)>,
    /// Logs and runtime files; removed on drop.
    state: tempfile::TempDir,
}

impl WebdavServer {
    /// Gives everything under `root` to the account the server runs as. Tests that create
    /// files directly on disk call this before asking the server to change them (a no-op
    /// unless the server had to drop root privileges).
    pub fn fix_ownership(&self) {
        if let Some((uid, gid)) = self.owner {
            chown_tree(&self.root, uid, gid);
        }
    }

    /// Stops the server (the directory stays): clients now get connection refused.
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            stop_child(&mut c);
        }
    }

    /// Starts the server again on the same port and directory, after `stop`.
    pub fn restart(&mut self) {
        self.stop();
        self.fix_ownership();
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let mut child = (self.respawn)(self.port);
            let until = Instant::now() + Duration::from_secs(10);
            while Instant::now() < until {
                if answers_http(self.port) {
                    self.child = Some(child);
                    return;
                }
                if let Ok(Some(_)) = child.try_wait() {
                    break; // most likely the port is still held; try again
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            stop_child(&mut child);
            if Instant::now() > deadline {
                panic!(
                    "{} did not come back on port {}: {}",
                    self.name,
                    self.port,
                    self.log()
                );
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// The server's own log, for failure messages.
    pub fn log(&self) -> String {
        let mut out = String::new();
        for name in ["error.log", "stderr.log"] {
            if let Ok(s) = fs::read_to_string(self.state.path().join(name)) {
                out.push_str(&s);
            }
        }
        out
    }
}

impl Drop for WebdavServer {
    fn drop(&mut self) {
        self.stop();
    }
}

/// SIGTERM first so that Apache's parent takes its worker processes down with it.
fn stop_child(child: &mut Child) {
    let pid = child.id() as libc::pid_t;
    // SAFETY: plain kill(2) on a child we spawned and have not reaped yet.
    unsafe {
        libc::kill(pid, libc::SIGTERM);
    }
    let deadline = Instant::now() + Duration::from_secs(5);
    while Instant::now() < deadline {
        if let Ok(Some(_)) = child.try_wait() {
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = child.kill();
    let _ = child.wait();
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .expect("bind 127.0.0.1:0")
        .local_addr()
        .expect("local addr")
        .port()
}

/// True once something on `port` answers an HTTP request (any status).
fn answers_http(port: u16) -> bool {
    let Ok(mut s) = TcpStream::connect(("127.0.0.1", port)) else {
        return false;
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
    let req = "OPTIONS / HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n";
    if s.write_all(req.as_bytes()).is_err() {
        return false;
    }
    let mut buf = [0u8; 12];
    matches!(s.read(&mut buf), Ok(n) if n >= 8 && buf.starts_with(b"HTTP/1."))
}

/// Starts a server with `spawn(port)` until one binds: another process may grab the free
/// port between our probe and the server's bind.
fn start_on_free_port(what: &str, state: &Path, spawn: impl Fn(u16) -> Child) -> (Child, u16) {
    let mut last_log = String::new();
    for _ in 0..3 {
        let port = free_port();
        let mut child = spawn(port);
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if answers_http(port) {
                return (child, port);
            }
            if let Ok(Some(status)) = child.try_wait() {
                last_log = format!("{what} exited with {status}");
                break;
            }
            if Instant::now() > deadline {
                stop_child(&mut child);
                last_log = format!("{what} did not answer on port {port} within 20 s");
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
    for name in ["error.log", "stderr.log"] {
        if let Ok(s) = fs::read_to_string(state.join(name)) {
            last_log.push('\n');
            last_log.push_str(&s);
        }
    }
    panic!("could not start {what}: {last_log}");
}

fn stderr_file(state: &Path) -> Stdio {
    // Appends, so that a restarted server keeps the log of the first run.
    let f = fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(state.join("stderr.log"))
        .expect("create stderr.log");
    Stdio::from(f)
}

/// `rclone serve webdav ROOT` on 127.0.0.1, with directory caching off so that files the
/// test creates on disk are visible at once.
pub fn start_rclone_webdav(root: &Path) -> WebdavServer {
    rclone(root, None)
}

/// Like `start_rclone_webdav`, requiring HTTP Basic authentication.
pub fn start_rclone_webdav_with_auth(root: &Path, user: &str, password: &str) -> WebdavServer {
    rclone(root, Some((user, password)))
}

fn rclone(root: &Path, auth: Option<(&str, &str)>) -> WebdavServer {
    let state = tempfile::tempdir().expect("tempdir");
    let config = state.path().join("rclone.conf");
    fs::write(&config, "").expect("write rclone.conf");
    let auth: Vec<String> = auth.map_or(vec![], |(u, p)| {
        vec!["--user".into(), u.into(), "--pass".into(), p.into()]
    });
    let (state_dir, root_dir) = (state.path().to_path_buf(), root.to_path_buf());
    let spawn = move |port: u16| {
        Command::new("rclone")
            .arg("serve")
            .arg("webdav")
            .arg("--config")
            .arg(&config)
            .arg("--addr")
            .arg(format!("127.0.0.1:{port}"))
            .args(["--dir-cache-time", "0s", "--poll-interval", "0"])
            .args(&auth)
            .arg(&root_dir)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(stderr_file(&state_dir))
            .spawn()
            .expect("spawn rclone (is the rclone package installed?)")
    };
    let (child, port) = start_on_free_port("rclone serve webdav", state.path(), &spawn);
    WebdavServer {
        url: format!("http://127.0.0.1:{port}/"),
        root: root.to_path_buf(),
        name: "rclone",
        port,
        child: Some(child),
        respawn: Box::new(spawn),
        owner: None,
        state,
    }
}

/// Looks up a user's uid and primary gid in /etc/passwd.
fn passwd_ids(user: &str) -> Option<(u32, u32)> {
    let passwd = fs::read_to_string("/etc/passwd").ok()?;
    passwd.lines().find_map(|line| {
        let f: Vec<&str> = line.split(':').collect();
        (f.len() > 3 && f[0] == user).then(|| Some((f[2].parse().ok()?, f[3].parse().ok()?)))?
    })
}

fn chown_tree(path: &Path, uid: u32, gid: u32) {
    std::os::unix::fs::lchown(path, Some(uid), Some(gid))
        .unwrap_or_else(|e| panic!("chown {}: {e}", path.display()));
    if fs::symlink_metadata(path).is_ok_and(|m| m.is_dir()) {
        for entry in fs::read_dir(path).expect("read_dir") {
            chown_tree(&entry.expect("dir entry").path(), uid, gid);
        }
    }
}

/// Apache httpd (`-DFOREGROUND`, generated config) serving ROOT with mod_dav_fs at
/// `http://127.0.0.1:PORT/dav%20root/`.
///
/// httpd will not serve as root, so when the tests run as root the worker processes run as
/// the owner of ROOT, or as www-data (falling back to nobody) if ROOT belongs to root; in
/// that case ROOT's tree is handed to that account (see `WebdavServer::fix_ownership`).
pub fn start_apache_webdav(root: &Path) -> WebdavServer {
    let state = tempfile::tempdir().expect("tempdir");
    let root = fs::canonicalize(root).expect("canonicalize root");
    // SAFETY: geteuid has no preconditions.
    let is_root = unsafe { libc::geteuid() } == 0;
    let meta = fs::metadata(&root).expect("stat root");
    let owner = if !is_root {
        None
    } else if meta.uid() != 0 {
        Some((meta.uid(), meta.gid()))
    } else {
        Some(
            passwd_ids("www-data")
                .or_else(|| passwd_ids("nobody"))
                .expect("no www-data or nobody account"),
        )
    };
    // When not root, httpd ignores User/Group; any value that parses will do.
    let (uid, gid) = owner.unwrap_or((meta.uid(), meta.gid()));
    if let Some((uid, gid)) = owner {
        chown_tree(&root, uid, gid);
        // The lock database is opened by the worker processes.
        std::os::unix::fs::chown(state.path(), Some(uid), Some(gid)).expect("chown state");
    }
    let conf_path = state.path().join("httpd.conf");
    let state_dir = state.path().to_path_buf();
    let doc_root = root.clone();
    let spawn = move |port: u16| {
        let conf = APACHE_TEMPLATE
            .replace("@STATE_DIR@", &state_dir.display().to_string())
            .replace("@PORT@", &port.to_string())
            .replace("@DOC_ROOT@", &doc_root.display().to_string())
            .replace("@MODULES@", APACHE_MODULES)
            .replace("@USER@", &format!("#{uid}"))
            .replace("@GROUP@", &format!("#{gid}"));
        fs::write(&conf_path, conf).expect("write httpd.conf");
        Command::new(APACHE_BIN)
            .arg("-DFOREGROUND")
            .arg("-f")
            .arg(&conf_path)
            .env_clear()
            .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
            .env("LANG", "C")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(stderr_file(&state_dir))
            .spawn()
            .expect("spawn apache2 (is the apache2 package installed?)")
    };
    let (child, port) = start_on_free_port("apache2", state.path(), &spawn);
    WebdavServer {
        url: format!("http://127.0.0.1:{port}{APACHE_PREFIX}"),
        root,
        name: "apache",
        port,
        child: Some(child),
        respawn: Box::new(spawn),
        owner,
        state,
    }
}
