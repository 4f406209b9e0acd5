//! A real Dovecot IMAP server (Debian 12's `dovecot-imapd`, Dovecot 2.3) on loopback for
//! integration tests, and a tiny synchronous IMAP client to seed and inspect its mailboxes.
//!
//! Each `Dovecot` is a throw-away instance: its config, sockets, state, log and the user's
//! Maildir all live in one temp directory; it listens on 127.0.0.1 only, on a free port, in
//! clear text (no TLS), with one user from a passwd-file. Dropping it stops every Dovecot
//! process of the instance.
//!
//! Privileges: Dovecot runs "rootless", every one of its processes as one account. When the
//! tests run as root (CI) that account is `nobody`: Dovecot will not give mail access to uid 0
//! and wants its login processes unprivileged, and a rootless instance needs no system users
//! or writable /var. Otherwise it is the account running the tests. The temp directory belongs
//! to that account (see `fix_ownership` for files a root test writes there itself).
//!
//! Mailbox names taken by the helpers here are UTF-8 (`"Entwürfe/2024"`); the client sends
//! them in modified UTF-7 (`mutf7_encode`). The hierarchy delimiter is `/`.
//!
//! Include with `#[path = "support/dovecot.rs"] mod dovecot;`.

#![allow(dead_code)]

use std::fs;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const DOVECOT_BIN: &str = "/usr/sbin/dovecot";
const DOVEADM_BIN: &str = "/usr/bin/doveadm";
const PATH_ENV: &str = "/usr/sbin:/usr/bin:/sbin:/bin";

/// dovecot.conf for one instance. `@...@` are filled in by `Dovecot::write_config`.
const CONFIG_TEMPLATE: &str = r#"# Throw-away Dovecot 2.3 for one test (written by tests/support/dovecot.rs).
protocols = imap
listen = 127.0.0.1
# Everything under the test's temp dir: sockets and master.pid, state, log (no syslog).
base_dir = @DIR@/run
state_dir = @DIR@/state
instance_name = dovecot-test-@PORT@
log_path = @DIR@/dovecot.log
auth_verbose = yes

# Rootless: all processes run as the account that started dovecot. Dovecot chowns its
# login socket directory to default_login_user and stats sockets to default_internal_group,
# which only works for our own account; chroot needs root.
default_internal_user = @RUN_USER@
default_internal_group = @RUN_GROUP@
default_login_user = @RUN_USER@
first_valid_uid = 1
service anvil {
  chroot =
  # No auth penalty (2, 4, 8, 15 s waits for everyone on 127.0.0.1 after a failed login):
  # auth only uses the penalty socket when "anvil-auth-penalty" exists, so move it away.
  # (mode = 0 delays the first greeting by 5 s while auth retries the socket, and
  # login_trusted_networks no longer skips the penalty in 2.3.)
  unix_listener anvil-auth-penalty {
    path = anvil-auth-penalty-unused
  }
}
service imap-login {
  chroot =
  inet_listener imap {
    port = @PORT@
  }
  # imaps on a free port of its own when TLS is on (0: none).
  inet_listener imaps {
    port = @IMAPS_PORT@
  }
}

# Loopback: passwords allowed in clear, a failed login answered at once. TLS only when
# the test asks for it (a certificate made for the test, signed by a test CA).
@SSL@
disable_plaintext_auth = no
auth_failure_delay = 0
auth_mechanisms = @AUTH_MECHANISMS@
passdb {
  driver = passwd-file
  mechanisms = plain login
  args = scheme=PLAIN username_format=%u @DIR@/users
}
@OAUTH2_PASSDB@userdb {
  driver = passwd-file
  args = username_format=%u @DIR@/users
}

# Maildir with one directory per mailbox ("a/b" is ~/Maildir/a/b), so names may hold dots.
mail_location = maildir:~/Maildir:LAYOUT=fs
mail_fsync = never
# The provider keeps a connection per IDLEd mailbox.
mail_max_userip_connections = 100
# IDLE notices changes through inotify; poll every second where inotify is short.
mailbox_idle_check_interval = 1 secs
namespace inbox {
  inbox = yes
  separator = /
  mailbox Trash {
    special_use = \Trash
  }
  mailbox Junk {
    special_use = \Junk
  }
  mailbox Sent {
    special_use = \Sent
  }
}
protocol imap {
  # COMPRESS=DEFLATE
  mail_plugins = $mail_plugins imap_zlib
}
"#;

/// How `Dovecot::start_with` sets up the instance.
pub struct DovecotOptions {
    pub user: String,
    /// Kept in a passwd-file: no ':' or newline.
    pub password: String,
    /// Adds `AUTHENTICATE XOAUTH2` and `OAUTHBEARER`: Dovecot POSTs
    /// `token=<access token>&client_id=&client_secret=` (form-encoded) to this URL and wants
    /// JSON back; the token is good when `"active": true` and `"username"` is the user.
    pub xoauth2_introspection_url: Option<String>,
    /// TLS: STARTTLS on `port` and implicit TLS on `imaps_port`, with a certificate for
    /// `localhost` and 127.0.0.1 signed by a CA made for the test (`ca_file`).
    pub tls: bool,
}

impl Default for DovecotOptions {
    fn default() -> Self {
        DovecotOptions {
            user: "alice".into(),
            password: "imap-test-password".into(),
            xoauth2_introspection_url: None,
            tls: false,
        }
    }
}

pub struct Dovecot {
    /// The loopback port of the IMAP listener (kept across `stop`/`restart`).
    pub port: u16,
    /// The implicit-TLS listener's port (0 unless `DovecotOptions::tls`).
    pub imaps_port: u16,
    /// The test CA that signed the server's certificate (with `DovecotOptions::tls`).
    pub ca_file: Option<PathBuf>,
    pub user: String,
    pub password: String,
    /// The user's Maildir, created at the first login: INBOX is this directory itself and
    /// mailbox `a/b` is `maildir/a/b`, names in modified UTF-7 on disk.
    pub maildir: PathBuf,
    /// `None` while stopped.
    child: Option<Child>,
    /// The account every Dovecot process runs as.
    account: Account,
    oauth2: bool,
    conf: PathBuf,
    /// Config, sockets, state, log and mail; removed on drop.
    dir: tempfile::TempDir,
}

#[derive(Clone)]
struct Account {
    user: String,
    group: String,
    uid: u32,
    gid: u32,
}

/// A mailbox's state from SELECT or EXAMINE.
#[derive(Debug, Clone, PartialEq)]
pub struct Selected {
    pub exists: u32,
    pub uidvalidity: u32,
    pub uidnext: u32,
    pub highestmodseq: Option<u64>,
    pub read_only: bool,
}

/// A mailbox's STATUS.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Status {
    pub messages: u32,
    pub uidnext: u32,
    pub uidvalidity: u32,
}

/// Where APPEND put a message (from the UIDPLUS `APPENDUID` response code).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Appended {
    pub uidvalidity: u32,
    pub uid: u32,
}

impl Dovecot {
    /// Starts an instance with user "alice" and a password (see `DovecotOptions::default`).
    pub fn start() -> Dovecot {
        Dovecot::start_with(DovecotOptions::default())
    }

    pub fn start_with(opts: DovecotOptions) -> Dovecot {
        assert!(
            Path::new(DOVECOT_BIN).exists(),
            "{DOVECOT_BIN} is missing: install dovecot-imapd (scripts/install-deps.sh)"
        );
        for (what, value) in [("user", &opts.user), ("password", &opts.password)] {
            assert!(
                !value.is_empty() && !value.contains([':', '\n', '\r']),
                "a Dovecot passwd-file cannot hold the {what} {value:?}"
            );
        }
        let account = run_as();
        let dir = tempfile::Builder::new()
            .prefix("dovecot-")
            .tempdir()
            .expect("create temp dir for Dovecot");
        let home = dir.path().join("home").join(&opts.user);
        fs::create_dir_all(&home).expect("create the user's home");
        // name:password:uid:gid:gecos:home:shell
        let users = format!(
            "{}:{{PLAIN}}{}:{}:{}::{}::\n",
            opts.user,
            opts.password,
            account.uid,
            account.gid,
            home.display()
        );
        fs::write(dir.path().join("users"), users).expect("write users");
        if let Some(url) = &opts.xoauth2_introspection_url {
            let oauth2 = format!(
                "introspection_mode = post\n\
                 introspection_url = {url}\n\
                 force_introspection = yes\n\
                 username_attribute = username\n\
                 active_attribute = active\n\
                 active_value = true\n\
                 timeout_msecs = 5000\n"
            );
            fs::write(dir.path().join("oauth2.conf.ext"), oauth2).expect("write oauth2.conf.ext");
        }
        let ca_file = opts.tls.then(|| make_certificates(dir.path()));
        let mut dovecot = Dovecot {
            port: 0,
            imaps_port: 0,
            ca_file,
            user: opts.user,
            password: opts.password,
            maildir: home.join("Maildir"),
            child: None,
            account,
            oauth2: opts.xoauth2_introspection_url.is_some(),
            conf: dir.path().join("dovecot.conf"),
            dir,
        };
        dovecot.start_on_free_port();
        dovecot
    }

    /// Dovecot's log and anything it printed before its log process was up.
    pub fn log(&self) -> String {
        let mut out = String::new();
        for name in ["stderr.log", "dovecot.log"] {
            if let Ok(s) = fs::read_to_string(self.dir.path().join(name)) {
                out.push_str(&s);
            }
        }
        out
    }

    /// Stops the server (mail stays): clients now get connection refused.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            stop_group(&mut child);
        }
    }

    /// Starts the server again on the same port and mail, after `stop`.
    pub fn restart(&mut self) {
        self.stop();
        self.fix_ownership();
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let mut child = self.spawn();
            match wait_ready(&mut child, self.port) {
                Ok(()) => {
                    self.child = Some(child);
                    return;
                }
                // Most likely the port is still held; try again.
                Err(_) if Instant::now() < deadline => {
                    stop_group(&mut child);
                    std::thread::sleep(Duration::from_millis(200));
                }
                Err(why) => {
                    stop_group(&mut child);
                    panic!(
                        "Dovecot did not come back on port {}: {why}\n{}",
                        self.port,
                        self.log()
                    );
                }
            }
        }
    }

    /// Gives everything under the temp dir to the account Dovecot runs as. Tests running as
    /// root that write files into `maildir` themselves call this before Dovecot reads them.
    pub fn fix_ownership(&self) {
        if is_root() {
            chown_tree(self.dir.path(), self.account.uid, self.account.gid);
        }
    }

    /// A new connection, logged in as the user.
    pub fn connect(&self) -> Imap {
        let mut imap = Imap::connect(self.port);
        imap.login(&self.user, &self.password);
        imap
    }

    /// Creates `mailbox` (and its parents, which Dovecot makes `\Noselect` when missing).
    pub fn create_mailbox(&self, mailbox: &str) {
        let mut imap = self.connect();
        imap.create(mailbox);
        imap.logout();
    }

    /// APPENDs `message` to `mailbox` without flags; INTERNALDATE is now.
    pub fn append(&self, mailbox: &str, message: &[u8]) -> Appended {
        self.append_with(mailbox, &[], None, message)
    }

    /// APPEND with flags (e.g. `"\\Seen"`) and an INTERNALDATE such as
    /// `"02-Jan-2024 11:30:00 +0100"`.
    pub fn append_with(
        &self,
        mailbox: &str,
        flags: &[&str],
        internal_date: Option<&str>,
        message: &[u8],
    ) -> Appended {
        let mut imap = self.connect();
        let appended = imap.append(mailbox, flags, internal_date, message);
        imap.logout();
        appended
    }

    /// The message as stored (`BODY.PEEK[]`, so `\Seen` is left alone). Dovecot hands back
    /// exactly what was appended when its lines end in CRLF; bare LFs come back as CRLF.
    pub fn fetch_message(&self, mailbox: &str, uid: u32) -> Vec<u8> {
        let mut imap = self.connect();
        imap.examine(mailbox);
        let body = imap.fetch_message(uid);
        imap.logout();
        body
    }

    /// The message's flags (through EXAMINE, which changes nothing).
    pub fn flags(&self, mailbox: &str, uid: u32) -> Vec<String> {
        let mut imap = self.connect();
        imap.examine(mailbox);
        let flags = imap.flags(uid);
        imap.logout();
        flags
    }

    pub fn is_seen(&self, mailbox: &str, uid: u32) -> bool {
        self.flags(mailbox, uid).iter().any(|f| f == "\\Seen")
    }

    /// Sets (`add`) or clears flags on one message.
    pub fn set_flags(&self, mailbox: &str, uid: u32, flags: &[&str], add: bool) {
        let mut imap = self.connect();
        imap.select(mailbox);
        imap.store_flags(uid, flags, add);
        imap.logout();
    }

    /// Removes one message (`\Deleted` then `UID EXPUNGE`).
    pub fn delete_message(&self, mailbox: &str, uid: u32) {
        let mut imap = self.connect();
        imap.select(mailbox);
        imap.store_flags(uid, &["\\Deleted"], true);
        imap.uid_expunge(uid);
        imap.logout();
    }

    pub fn status(&self, mailbox: &str) -> Status {
        let mut imap = self.connect();
        let status = imap.status(mailbox);
        imap.logout();
        status
    }

    /// Gives `mailbox` a new, larger UIDVALIDITY while its messages keep their UIDs (so a
    /// cache keyed by UID alone would now serve the wrong message). Returns the new value.
    ///
    /// Runs `doveadm mailbox update --uid-validity` against the live instance; no restart.
    /// New SELECT / EXAMINE / STATUS see the new value at once. A connection that has the
    /// mailbox selected gets `* BYE IMAP session state is inconsistent, please relogin.` and
    /// is closed at its next command; an IDLE in progress is not woken.
    ///
    /// (Deleting `dovecot-uidlist` plus `dovecot.index*` in the mailbox's directory also gives
    /// a new UIDVALIDITY, with UIDs renumbered from 1, but a connection holding the mailbox is
    /// not told. Deleting only `dovecot-uidlist` keeps UIDVALIDITY and gives the messages new
    /// UIDs.)
    pub fn force_uidvalidity_change(&self, mailbox: &str) -> u32 {
        let old = self.status(mailbox).uidvalidity;
        let new = old.checked_add(1).expect("UIDVALIDITY is already u32::MAX");
        let out = Command::new(DOVEADM_BIN)
            .arg("-c")
            .arg(&self.conf)
            .args(["mailbox", "update", "-u", &self.user, "--uid-validity"])
            .arg(new.to_string())
            // doveadm takes mailbox names in UTF-8.
            .arg(mailbox)
            .env_clear()
            .env("PATH", PATH_ENV)
            .stdin(Stdio::null())
            .output()
            .unwrap_or_else(|e| panic!("run {DOVEADM_BIN}: {e}"));
        assert!(
            out.status.success(),
            "doveadm mailbox update --uid-validity {new} {mailbox:?}: {}\n{}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        let now = self.status(mailbox).uidvalidity;
        assert_eq!(now, new, "UIDVALIDITY of {mailbox:?} did not change");
        new
    }

    fn write_config(&self, port: u16) {
        let dir = self.dir.path().display().to_string();
        let (mechanisms, oauth2_passdb) = if self.oauth2 {
            (
                "plain login xoauth2 oauthbearer",
                format!(
                    "passdb {{\n  driver = oauth2\n  mechanisms = xoauth2 oauthbearer\n  \
                     args = {dir}/oauth2.conf.ext\n}}\n"
                ),
            )
        } else {
            ("plain login", String::new())
        };
        let conf = CONFIG_TEMPLATE
            .replace("@DIR@", &dir)
            .replace("@PORT@", &port.to_string())
            .replace("@RUN_USER@", &self.account.user)
            .replace("@RUN_GROUP@", &self.account.group)
            .replace("@AUTH_MECHANISMS@", mechanisms)
            .replace("@IMAPS_PORT@", &self.imaps_port.to_string())
            .replace(
                "@SSL@",
                &if self.ca_file.is_some() {
                    format!("ssl = yes\nssl_cert = <{dir}/cert.pem\nssl_key = <{dir}/key.pem\n")
                } else {
                    "ssl = no\n".to_owned()
                },
            )
            .replace("@OAUTH2_PASSDB@", &oauth2_passdb);
        fs::write(&self.conf, conf).expect("write dovecot.conf");
        self.fix_ownership();
    }

    fn spawn(&self) -> Child {
        let stderr = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join("stderr.log"))
            .expect("create stderr.log");
        let mut cmd = Command::new(DOVECOT_BIN);
        cmd.arg("-F")
            .arg("-c")
            .arg(&self.conf)
            .env_clear()
            .env("PATH", PATH_ENV)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(stderr)
            // Its own process group, so that `stop_group` reaches every Dovecot process.
            .process_group(0);
        if is_root() {
            // std also drops root's supplementary groups.
            cmd.uid(self.account.uid).gid(self.account.gid);
        }
        cmd.spawn()
            .unwrap_or_else(|e| panic!("spawn {DOVECOT_BIN}: {e} (is dovecot-imapd installed?)"))
    }

    /// Another process may grab the free port between our probe and Dovecot's bind.
    fn start_on_free_port(&mut self) {
        let mut why = String::new();
        for _ in 0..3 {
            let port = free_port();
            if self.ca_file.is_some() {
                self.imaps_port = free_port();
            }
            self.write_config(port);
            let mut child = self.spawn();
            match wait_ready(&mut child, port) {
                Ok(()) => {
                    self.port = port;
                    self.child = Some(child);
                    return;
                }
                Err(e) => {
                    stop_group(&mut child);
                    why = e;
                    if !self.log().contains("Address already in use") {
                        break;
                    }
                }
            }
        }
        panic!(
            "could not start Dovecot: {why} (as {}; its temp dir {} must be reachable by that \
             account)\n{}",
            self.account.user,
            self.dir.path().display(),
            self.log()
        );
    }
}

impl Drop for Dovecot {
    fn drop(&mut self) {
        self.stop();
    }
}

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

/// `nobody` as root, else ourselves; Dovecot's config wants the names.
fn run_as() -> Account {
    let passwd = fs::read_to_string("/etc/passwd").expect("read /etc/passwd");
    let entries: Vec<Vec<&str>> = passwd
        .lines()
        .map(|l| l.split(':').collect::<Vec<_>>())
        .filter(|f| f.len() > 3)
        .collect();
    let (user, uid, gid) = if is_root() {
        let f = entries
            .iter()
            .find(|f| f[0] == "nobody")
            .expect("no `nobody` account in /etc/passwd to run Dovecot as");
        (
            f[0].to_string(),
            f[2].parse().expect("uid"),
            f[3].parse().expect("gid"),
        )
    } else {
        // SAFETY: geteuid and getegid have no preconditions.
        let (uid, gid) = unsafe { (libc::geteuid(), libc::getegid()) };
        let f = entries
            .iter()
            .find(|f| f[2] == uid.to_string())
            .unwrap_or_else(|| panic!("uid {uid} has no name in /etc/passwd: Dovecot needs one"));
        (f[0].to_string(), uid, gid)
    };
    let groups = fs::read_to_string("/etc/group").expect("read /etc/group");
    let group = groups
        .lines()
        .map(|l| l.split(':').collect::<Vec<_>>())
        .find(|f| f.len() > 2 && f[2] == gid.to_string())
        .map(|f| f[0].to_string())
        .unwrap_or_else(|| panic!("gid {gid} has no name in /etc/group: Dovecot needs one"));
    Account {
        user,
        group,
        uid,
        gid,
    }
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

/// A CA and a server certificate for `localhost` / 127.0.0.1 signed by it (openssl CLI,
/// P-256 keys): `cert.pem` and `key.pem` for Dovecot; returns the CA's `ca.pem`.
fn make_certificates(dir: &Path) -> PathBuf {
    let run = |args: &[&str]| {
        let out = Command::new("openssl")
            .args(args)
            .current_dir(dir)
            .stdin(Stdio::null())
            .output()
            .unwrap_or_else(|e| panic!("run openssl (install it: scripts/install-deps.sh): {e}"));
        assert!(
            out.status.success(),
            "openssl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    let ec = [
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:prime256v1",
        "-nodes",
    ];
    let mut ca = vec![
        "req",
        "-x509",
        "-days",
        "2",
        "-subj",
        "/CN=cloudmount test CA",
    ];
    ca.extend(ec);
    ca.extend(["-keyout", "ca.key", "-out", "ca.pem"]);
    run(&ca);
    let mut csr = vec!["req", "-subj", "/CN=localhost"];
    csr.extend(ec);
    csr.extend(["-keyout", "key.pem", "-out", "server.csr"]);
    run(&csr);
    fs::write(
        dir.join("server.ext"),
        "subjectAltName=DNS:localhost,IP:127.0.0.1\nbasicConstraints=CA:FALSE\n\
         extendedKeyUsage=serverAuth\n",
    )
    .expect("write server.ext");
    run(&[
        "x509",
        "-req",
        "-in",
        "server.csr",
        "-CA",
        "ca.pem",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-days",
        "2",
        "-extfile",
        "server.ext",
        "-out",
        "cert.pem",
    ]);
    dir.join("ca.pem")
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .expect("bind 127.0.0.1:0")
        .local_addr()
        .expect("local addr")
        .port()
}

/// Waits until Dovecot greets on `port` with `* OK`.
fn wait_ready(child: &mut Child, port: u16) -> Result<(), String> {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Ok(s) = TcpStream::connect(("127.0.0.1", port)) {
            let _ = s.set_read_timeout(Some(Duration::from_secs(10)));
            let mut greeting = String::new();
            let _ = BufReader::new(s).read_line(&mut greeting);
            if greeting.starts_with("* OK") {
                return Ok(());
            }
        }
        if let Ok(Some(status)) = child.try_wait() {
            return Err(format!("dovecot exited with {status}"));
        }
        if Instant::now() > deadline {
            return Err(format!("no `* OK` greeting on port {port} within 20 s"));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// SIGTERM to the whole process group: the master and its children (auth, log, imap, ...)
/// all quit at once (~10 ms). Signalling only the master takes a second and leaves
/// children with open connections behind for many more. SIGKILL if that did not work.
fn stop_group(child: &mut Child) {
    if let Ok(Some(_)) = child.try_wait() {
        return;
    }
    let pgid = child.id() as libc::pid_t;
    // SAFETY: kill(2) on the process group of a child spawned with process_group(0) whose
    // leader we have not reaped, so the group id is still ours.
    unsafe {
        libc::killpg(pgid, libc::SIGTERM);
    }
    let deadline = Instant::now() + Duration::from_secs(5);
    while Instant::now() < deadline {
        if let Ok(Some(_)) = child.try_wait() {
            return;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    // SAFETY: as above; the leader is still unreaped.
    unsafe {
        libc::killpg(pgid, libc::SIGKILL);
    }
    let _ = child.wait();
}

/// A one-route RFC 7662-style introspection endpoint: `token=good-token` is alice's.
pub fn start_introspection_endpoint() -> String {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind introspection endpoint");
    let url = format!("http://{}/introspect", listener.local_addr().expect("addr"));
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(stream) = stream else { continue };
            std::thread::spawn(move || {
                let mut writer = stream.try_clone().expect("clone");
                let mut reader = BufReader::new(stream);
                // Dovecot keeps the connection alive between requests.
                loop {
                    let mut content_length = 0;
                    let mut line = String::new();
                    loop {
                        line.clear();
                        if reader.read_line(&mut line).unwrap_or(0) == 0 {
                            return;
                        }
                        if line == "\r\n" {
                            break;
                        }
                        if let Some((k, v)) = line.split_once(':') {
                            if k.eq_ignore_ascii_case("content-length") {
                                content_length = v.trim().parse().unwrap_or(0);
                            }
                        }
                    }
                    let mut body = vec![0; content_length];
                    if reader.read_exact(&mut body).is_err() {
                        return;
                    }
                    let body = String::from_utf8_lossy(&body);
                    let good = body.split('&').any(|kv| kv == "token=good-token");
                    let json = if good {
                        r#"{"active":true,"username":"alice","scope":"imap"}"#
                    } else {
                        r#"{"active":false}"#
                    };
                    let reply = format!(
                        "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n\
                         Content-Length: {}\r\n\r\n{json}",
                        json.len()
                    );
                    if writer.write_all(reply.as_bytes()).is_err() {
                        return;
                    }
                }
            });
        }
    });
    url
}

/// A proxy in front of Dovecot that records the client's command lines and can lie about
/// sizes as some servers do (hMailServer, OVH Hosted Exchange: RFC822.SIZE not matching
/// the bytes served): with `size_delta`, every `RFC822.SIZE n` in the server's replies
/// becomes `n + size_delta`; everything else, message bytes included, passes unchanged.
pub struct ImapProxy {
    /// Its loopback port.
    pub port: u16,
    commands: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
    /// Set: the next server line containing this ends that connection (both ways) before
    /// the line reaches the client. Used once, then cleared.
    cut_at: std::sync::Arc<std::sync::Mutex<Option<String>>>,
}

impl ImapProxy {
    /// The next server reply line containing `needle` is not delivered: the connection
    /// ends there, as a network failure would end it.
    pub fn cut_once_at(&self, needle: &str) {
        *self.cut_at.lock().unwrap() = Some(needle.to_owned());
    }

    pub fn start(upstream: u16, size_delta: i64) -> ImapProxy {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind IMAP proxy");
        let port = listener.local_addr().expect("addr").port();
        let commands = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let log = commands.clone();
        let cut_at: std::sync::Arc<std::sync::Mutex<Option<String>>> = Default::default();
        let cuts = cut_at.clone();
        std::thread::spawn(move || {
            for client in listener.incoming() {
                let Ok(client) = client else { continue };
                let Ok(server) = TcpStream::connect(("127.0.0.1", upstream)) else {
                    continue;
                };
                let c_read = client.try_clone().expect("clone");
                let mut s_write = server.try_clone().expect("clone");
                let log = log.clone();
                let cuts = cuts.clone();
                std::thread::spawn(move || {
                    let mut from = BufReader::new(c_read);
                    loop {
                        let mut line = Vec::new();
                        if from.read_until(b'\n', &mut line).unwrap_or(0) == 0
                            || s_write.write_all(&line).is_err()
                        {
                            let _ = s_write.shutdown(std::net::Shutdown::Write);
                            return;
                        }
                        log.lock()
                            .unwrap()
                            .push(String::from_utf8_lossy(&line).trim_end().to_owned());
                    }
                });
                std::thread::spawn(move || {
                    let mut from = BufReader::new(server);
                    let mut to = client;
                    loop {
                        let mut line = Vec::new();
                        if from.read_until(b'\n', &mut line).unwrap_or(0) == 0 {
                            let _ = to.shutdown(std::net::Shutdown::Both);
                            return;
                        }
                        let text = String::from_utf8_lossy(&line).into_owned();
                        let cut = {
                            let mut at = cuts.lock().unwrap();
                            let hit = at.as_deref().is_some_and(|n| text.contains(n));
                            if hit {
                                *at = None;
                            }
                            hit
                        };
                        if cut {
                            let _ = to.shutdown(std::net::Shutdown::Both);
                            let _ = from.get_ref().shutdown(std::net::Shutdown::Both);
                            return;
                        }
                        let rewritten = if size_delta == 0 {
                            text.clone()
                        } else {
                            lie_about_sizes(&text, size_delta)
                        };
                        if to.write_all(rewritten.as_bytes()).is_err() {
                            return;
                        }
                        // A literal follows the line: its bytes pass as they are.
                        let literal = text
                            .trim_end()
                            .strip_suffix('}')
                            .and_then(|t| t.rsplit_once('{'))
                            .and_then(|(_, n)| n.trim_end_matches('+').parse::<u64>().ok());
                        if let Some(n) = literal {
                            let mut bytes = (&mut from).take(n);
                            if std::io::copy(&mut bytes, &mut to).is_err() {
                                return;
                            }
                        }
                    }
                });
            }
        });
        ImapProxy {
            port,
            commands,
            cut_at,
        }
    }

    /// The client's command lines so far (literal data sent by the client included, line
    /// by line), and forget them.
    pub fn take_commands(&self) -> Vec<String> {
        std::mem::take(&mut *self.commands.lock().unwrap())
    }
}

fn lie_about_sizes(line: &str, delta: i64) -> String {
    let key = "RFC822.SIZE ";
    let mut out = String::with_capacity(line.len());
    let mut rest = line;
    while let Some(at) = rest.find(key) {
        out.push_str(&rest[..at + key.len()]);
        rest = &rest[at + key.len()..];
        let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
        let n: i64 = rest[..digits].parse().unwrap_or(0);
        out.push_str(&(n + delta).max(0).to_string());
        rest = &rest[digits..];
    }
    out.push_str(rest);
    out
}

/// A mailbox name in modified UTF-7 (RFC 3501 §5.1.3), as IMAP wants it without UTF8=ACCEPT.
pub fn mutf7_encode(name: &str) -> String {
    fn flush(pending: &mut Vec<u16>, out: &mut String) {
        if pending.is_empty() {
            return;
        }
        const ALPHABET: &[u8; 64] =
            b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+,";
        let bytes: Vec<u8> = pending.iter().flat_map(|u| u.to_be_bytes()).collect();
        out.push('&');
        for chunk in bytes.chunks(3) {
            let n = (u32::from(chunk[0]) << 16)
                | (u32::from(*chunk.get(1).unwrap_or(&0)) << 8)
                | u32::from(*chunk.get(2).unwrap_or(&0));
            // 1 byte gives 2 characters, 2 give 3, 3 give 4; no padding.
            for i in 0..=chunk.len() {
                out.push(ALPHABET[(n >> (18 - 6 * i)) as usize & 63] as char);
            }
        }
        out.push('-');
        pending.clear();
    }
    let mut out = String::new();
    let mut pending = Vec::new();
    for c in name.chars() {
        if (' '..='~').contains(&c) {
            flush(&mut pending, &mut out);
            if c == '&' {
                out.push_str("&-");
            } else {
                out.push(c);
            }
        } else {
            let mut units = [0u16; 2];
            pending.extend_from_slice(c.encode_utf16(&mut units));
        }
    }
    flush(&mut pending, &mut out);
    out
}

/// An IMAP quoted string.
pub fn quote(s: &str) -> String {
    format!("\"{}\"", s.replace('\\', "\\\\").replace('"', "\\\""))
}

/// A mailbox name as a command argument: modified UTF-7, quoted.
pub fn mailbox_arg(name: &str) -> String {
    quote(&mutf7_encode(name))
}

/// One response line with its literals cut out: `text` keeps the `{N}` (or `~{N}`) where
/// each literal was, `literals` holds their bytes in order.
#[derive(Debug, Clone)]
pub struct Line {
    pub text: String,
    pub literals: Vec<Vec<u8>>,
}

/// The answer to one command.
#[derive(Debug, Clone)]
pub struct Reply {
    pub untagged: Vec<Line>,
    /// `OK`, `NO` or `BAD`.
    pub status: String,
    /// The tagged line after the tag, e.g. `OK [APPENDUID 7 1] Append completed.`
    pub tagged: String,
}

impl Reply {
    /// The first untagged line whose text contains `needle`.
    pub fn find(&self, needle: &str) -> Option<&Line> {
        self.untagged.iter().find(|l| l.text.contains(needle))
    }
}

/// A minimal synchronous IMAP client: one command at a time, literals read into memory.
pub struct Imap {
    reader: BufReader<TcpStream>,
    writer: TcpStream,
    next_tag: u32,
    /// The server's greeting line.
    pub greeting: String,
}

impl Imap {
    /// Connects and reads the `* OK` greeting (not logged in).
    pub fn connect(port: u16) -> Imap {
        let stream = TcpStream::connect(("127.0.0.1", port))
            .unwrap_or_else(|e| panic!("connect to IMAP on 127.0.0.1:{port}: {e}"));
        // A stuck test fails instead of hanging.
        stream
            .set_read_timeout(Some(Duration::from_secs(30)))
            .expect("set_read_timeout");
        let writer = stream.try_clone().expect("clone TcpStream");
        let mut imap = Imap {
            reader: BufReader::new(stream),
            writer,
            next_tag: 1,
            greeting: String::new(),
        };
        let greeting = imap
            .read_line()
            .expect("IMAP server closed before its greeting");
        assert!(
            greeting.text.starts_with("* OK"),
            "IMAP greeting: {}",
            greeting.text
        );
        imap.greeting = greeting.text;
        imap
    }

    pub fn login(&mut self, user: &str, password: &str) {
        self.command(&format!("LOGIN {} {}", quote(user), quote(password)));
    }

    /// Sends `cmd` and reads up to its tagged reply; panics unless that is OK.
    pub fn command(&mut self, cmd: &str) -> Reply {
        let reply = self
            .try_command(cmd)
            .unwrap_or_else(|e| panic!("IMAP `{}`: {e}", redact(cmd)));
        assert_eq!(
            reply.status,
            "OK",
            "IMAP `{}`: {}",
            redact(cmd),
            reply.tagged
        );
        reply
    }

    /// Sends `cmd` and reads up to its tagged reply, whatever its status. Err when the server
    /// closed the connection first; the message holds the untagged lines seen (e.g. a BYE).
    pub fn try_command(&mut self, cmd: &str) -> Result<Reply, String> {
        let tag = self.tag();
        self.send(format!("{tag} {cmd}\r\n").as_bytes());
        self.read_reply(&tag)
    }

    /// Sends `<prefix> {N}`, waits for the continuation, then the literal and `<suffix>`.
    pub fn command_with_literal(&mut self, prefix: &str, literal: &[u8], suffix: &str) -> Reply {
        let tag = self.tag();
        self.send(format!("{tag} {prefix} {{{}}}\r\n", literal.len()).as_bytes());
        let cont = self.read_line().expect("IMAP server closed instead of `+`");
        assert!(
            cont.text.starts_with('+'),
            "IMAP `{prefix}`: wanted a continuation request, got {}",
            cont.text
        );
        self.send(literal);
        self.send(format!("{suffix}\r\n").as_bytes());
        let reply = self
            .read_reply(&tag)
            .unwrap_or_else(|e| panic!("IMAP `{prefix}`: {e}"));
        assert_eq!(reply.status, "OK", "IMAP `{prefix}`: {}", reply.tagged);
        reply
    }

    pub fn capabilities(&mut self) -> Vec<String> {
        let reply = self.command("CAPABILITY");
        let line = reply.find("* CAPABILITY ").expect("no CAPABILITY line");
        line.text["* CAPABILITY ".len()..]
            .split(' ')
            .map(str::to_string)
            .collect()
    }

    pub fn create(&mut self, mailbox: &str) {
        self.command(&format!("CREATE {}", mailbox_arg(mailbox)));
    }

    pub fn select(&mut self, mailbox: &str) -> Selected {
        let reply = self.command(&format!("SELECT {}", mailbox_arg(mailbox)));
        selected(&reply)
    }

    /// Read-only select: changes no flags, keeps `\Recent`.
    pub fn examine(&mut self, mailbox: &str) -> Selected {
        let reply = self.command(&format!("EXAMINE {}", mailbox_arg(mailbox)));
        selected(&reply)
    }

    pub fn status(&mut self, mailbox: &str) -> Status {
        let reply = self.command(&format!(
            "STATUS {} (MESSAGES UIDNEXT UIDVALIDITY)",
            mailbox_arg(mailbox)
        ));
        let line = reply.find("* STATUS ").expect("no STATUS line");
        let items = &line.text[line.text.rfind('(').expect("STATUS items")..];
        Status {
            messages: number_after(items, "MESSAGES ").expect("MESSAGES") as u32,
            uidnext: number_after(items, "UIDNEXT ").expect("UIDNEXT") as u32,
            uidvalidity: number_after(items, "UIDVALIDITY ").expect("UIDVALIDITY") as u32,
        }
    }

    /// APPEND with a synchronizing literal; flags like `"\\Seen"`, date like
    /// `"02-Jan-2024 11:30:00 +0100"`.
    pub fn append(
        &mut self,
        mailbox: &str,
        flags: &[&str],
        internal_date: Option<&str>,
        message: &[u8],
    ) -> Appended {
        let mut prefix = format!("APPEND {}", mailbox_arg(mailbox));
        if !flags.is_empty() {
            prefix.push_str(&format!(" ({})", flags.join(" ")));
        }
        if let Some(date) = internal_date {
            prefix.push_str(&format!(" {}", quote(date)));
        }
        let reply = self.command_with_literal(&prefix, message, "");
        Appended {
            uidvalidity: number_after(&reply.tagged, "[APPENDUID ").expect("APPENDUID") as u32,
            uid: reply
                .tagged
                .split("[APPENDUID ")
                .nth(1)
                .and_then(|s| s.split([' ', ']']).nth(1))
                .and_then(|s| s.parse().ok())
                .unwrap_or_else(|| panic!("no APPENDUID uid in {}", reply.tagged)),
        }
    }

    /// `UID STORE uid +FLAGS/-FLAGS (...)` in the selected mailbox.
    pub fn store_flags(&mut self, uid: u32, flags: &[&str], add: bool) {
        let op = if add {
            "+FLAGS.SILENT"
        } else {
            "-FLAGS.SILENT"
        };
        self.command(&format!("UID STORE {uid} {op} ({})", flags.join(" ")));
    }

    /// Expunges every `\Deleted` message of the selected mailbox.
    pub fn expunge(&mut self) {
        self.command("EXPUNGE");
    }

    /// Expunges one `\Deleted` message (UIDPLUS).
    pub fn uid_expunge(&mut self, uid: u32) {
        self.command(&format!("UID EXPUNGE {uid}"));
    }

    /// The flags of one message of the selected mailbox.
    pub fn flags(&mut self, uid: u32) -> Vec<String> {
        let reply = self.command(&format!("UID FETCH {uid} (FLAGS)"));
        let line = reply
            .find(" FETCH (")
            .unwrap_or_else(|| panic!("no message with UID {uid}"));
        let start = line.text.find("FLAGS (").expect("FLAGS") + "FLAGS (".len();
        let end = start + line.text[start..].find(')').expect("FLAGS )");
        line.text[start..end]
            .split(' ')
            .filter(|f| !f.is_empty())
            .map(str::to_string)
            .collect()
    }

    /// `BODY.PEEK[]` of one message of the selected mailbox.
    pub fn fetch_message(&mut self, uid: u32) -> Vec<u8> {
        self.fetch_literal(&format!("UID FETCH {uid} (BODY.PEEK[])"))
    }

    /// The literal of the single FETCH line `cmd` answers with, e.g.
    /// `UID FETCH 3 (BODY.PEEK[]<0.100>)`.
    pub fn fetch_literal(&mut self, cmd: &str) -> Vec<u8> {
        let reply = self.command(cmd);
        let mut fetched = reply
            .untagged
            .into_iter()
            .filter(|l| l.text.contains(" FETCH ("));
        let line = fetched
            .next()
            .unwrap_or_else(|| panic!("`{cmd}`: no FETCH response (no such UID?)"));
        line.literals
            .into_iter()
            .next()
            .unwrap_or_else(|| panic!("`{cmd}`: FETCH without a literal: {}", line.text))
    }

    /// `AUTHENTICATE <mechanism> <initial response>` (SASL-IR). A `+` challenge (how
    /// XOAUTH2 reports a refused token) is answered with an empty line, as clients do, and
    /// the tagged NO then follows; the challenges are kept as untagged lines.
    pub fn authenticate(&mut self, mechanism: &str, initial_response_base64: &str) -> Reply {
        let tag = self.tag();
        self.send(
            format!("{tag} AUTHENTICATE {mechanism} {initial_response_base64}\r\n").as_bytes(),
        );
        let tagged_prefix = format!("{tag} ");
        let mut untagged = Vec::new();
        loop {
            let line = self
                .read_line()
                .unwrap_or_else(|| panic!("connection closed during AUTHENTICATE {mechanism}"));
            if let Some(rest) = line.text.strip_prefix(&tagged_prefix) {
                return Reply {
                    untagged,
                    status: rest.split(' ').next().unwrap_or_default().to_string(),
                    tagged: rest.to_string(),
                };
            }
            if line.text.starts_with('+') {
                self.send(b"\r\n");
            }
            untagged.push(line);
        }
    }

    /// `UID SEARCH ALL` in the selected mailbox.
    pub fn uids(&mut self) -> Vec<u32> {
        let reply = self.command("UID SEARCH ALL");
        let line = reply.find("* SEARCH").expect("no SEARCH line");
        line.text["* SEARCH".len()..]
            .split_whitespace()
            .map(|n| n.parse().expect("UID"))
            .collect()
    }

    pub fn logout(mut self) {
        let _ = self.try_command("LOGOUT");
    }

    fn tag(&mut self) -> String {
        let tag = format!("t{}", self.next_tag);
        self.next_tag += 1;
        tag
    }

    fn send(&mut self, bytes: &[u8]) {
        self.writer
            .write_all(bytes)
            .unwrap_or_else(|e| panic!("IMAP write: {e}"));
    }

    fn read_reply(&mut self, tag: &str) -> Result<Reply, String> {
        let tagged_prefix = format!("{tag} ");
        let mut untagged = Vec::new();
        loop {
            let Some(line) = self.read_line() else {
                let seen: Vec<&str> = untagged.iter().map(|l: &Line| l.text.as_str()).collect();
                return Err(format!("connection closed; it said: {seen:?}"));
            };
            if let Some(rest) = line.text.strip_prefix(&tagged_prefix) {
                return Ok(Reply {
                    untagged,
                    status: rest.split(' ').next().unwrap_or_default().to_string(),
                    tagged: rest.to_string(),
                });
            }
            untagged.push(line);
        }
    }

    /// One response line with its literals; None at end of stream.
    fn read_line(&mut self) -> Option<Line> {
        let mut text = Vec::new();
        let mut literals = Vec::new();
        loop {
            let mut part = Vec::new();
            let n = self
                .reader
                .read_until(b'\n', &mut part)
                .unwrap_or_else(|e| panic!("IMAP read: {e}"));
            if n == 0 {
                return None;
            }
            assert!(
                part.ends_with(b"\r\n"),
                "IMAP line without CRLF: {:?}",
                String::from_utf8_lossy(&part)
            );
            part.truncate(part.len() - 2);
            let literal = literal_len(&part);
            text.extend_from_slice(&part);
            match literal {
                Some(len) => {
                    let mut bytes = vec![0; len];
                    self.reader
                        .read_exact(&mut bytes)
                        .unwrap_or_else(|e| panic!("IMAP read of a {len}-byte literal: {e}"));
                    literals.push(bytes);
                }
                None => {
                    return Some(Line {
                        text: String::from_utf8_lossy(&text).into_owned(),
                        literals,
                    })
                }
            }
        }
    }
}

/// `{N}` (or literal8 `~{N}`) ending a line announces N bytes of literal.
fn literal_len(line: &[u8]) -> Option<usize> {
    let inner = line.strip_suffix(b"}")?;
    let open = inner.iter().rposition(|&c| c == b'{')?;
    let digits = &inner[open + 1..];
    if digits.is_empty() || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    std::str::from_utf8(digits).ok()?.parse().ok()
}

/// The decimal number right after `key` in `text`.
pub fn number_after(text: &str, key: &str) -> Option<u64> {
    let rest = &text[text.find(key)? + key.len()..];
    let end = rest
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(rest.len());
    rest[..end].parse().ok()
}

fn selected(reply: &Reply) -> Selected {
    let exists = reply
        .untagged
        .iter()
        .find_map(|l| {
            let mut words = l.text.split(' ');
            match (words.next(), words.next(), words.next()) {
                (Some("*"), Some(n), Some("EXISTS")) => n.parse().ok(),
                _ => None,
            }
        })
        .expect("no EXISTS");
    let code = |key: &str| {
        reply
            .untagged
            .iter()
            .find_map(|l| number_after(&l.text, key))
    };
    Selected {
        exists,
        uidvalidity: code("[UIDVALIDITY ").expect("no UIDVALIDITY") as u32,
        uidnext: code("[UIDNEXT ").expect("no UIDNEXT") as u32,
        highestmodseq: code("[HIGHESTMODSEQ "),
        read_only: reply.tagged.contains("[READ-ONLY]"),
    }
}

/// A command for a panic message, without the password of a LOGIN.
fn redact(cmd: &str) -> String {
    if cmd
        .get(..6)
        .is_some_and(|c| c.eq_ignore_ascii_case("LOGIN "))
    {
        "LOGIN ...".to_string()
    } else {
        cmd.to_string()
    }
}
