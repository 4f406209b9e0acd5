//! Private by default: what the daemon keeps on disk (cached contents, the metadata store,
//! staging copies, the log, the control socket) is its user's alone, and no secret
//! (password, token, client secret, authorization code, PKCE verifier) is written to any
//! file, log or status output.

mod common;
#[path = "support/drive_emulator.rs"]
mod drive_emulator;
#[path = "support/drive_harness.rs"]
mod drive_harness;
#[path = "support/emu/mod.rs"]
mod emu;
#[path = "support/webdav_servers.rs"]
mod webdav_servers;

use std::fs;
use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::*;
use drive_emulator::{DriveEmulator, EmulatorConfig};

fn text_of(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

fn ok(out: Output, what: &str) -> String {
    assert!(out.status.success(), "{what} failed: {}", text_of(&out));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Every path below `root` (itself included), not following symlinks.
fn walk(root: &Path) -> Vec<PathBuf> {
    let mut out = vec![root.to_path_buf()];
    if fs::symlink_metadata(root).is_ok_and(|m| m.is_dir()) {
        for e in fs::read_dir(root).unwrap() {
            out.extend(walk(&e.unwrap().path()));
        }
    }
    out
}

/// Every folder below `root` is 0700 and every file and socket 0600, all owned by `uid`.
fn assert_private_tree(root: &Path, uid: u32) -> usize {
    let paths = walk(root);
    for p in &paths {
        let m = fs::symlink_metadata(p).unwrap();
        let mode = m.mode() & 0o7777;
        let want = if m.is_dir() { 0o700 } else { 0o600 };
        assert!(
            m.is_dir() || m.is_file() || m.file_type().is_socket(),
            "{}: unexpected file type",
            p.display()
        );
        assert_eq!(mode, want, "{} has mode {mode:o}", p.display());
        assert_eq!(m.uid(), uid, "{} is owned by uid {}", p.display(), m.uid());
    }
    paths.len()
}

/// Give `root` and everything below it the modes a umask of 022 would have: what an
/// earlier version left behind.
fn loosen_tree(root: &Path) {
    for p in walk(root) {
        let m = fs::symlink_metadata(&p).unwrap();
        let mode = if m.is_dir() { 0o755 } else { 0o644 };
        fs::set_permissions(&p, fs::Permissions::from_mode(mode)).unwrap();
    }
}

/// Every secret that appears in any file below `root`, with the file.
fn secrets_in_files(root: &Path, secrets: &[String]) -> Vec<(PathBuf, String)> {
    let mut found = Vec::new();
    for p in walk(root) {
        if !fs::symlink_metadata(&p).unwrap().is_file() {
            continue;
        }
        let bytes = fs::read(&p).unwrap();
        for s in secrets {
            if bytes.windows(s.len()).any(|w| w == s.as_bytes()) {
                found.push((p.clone(), s.clone()));
            }
        }
    }
    found
}

fn chown_to(p: &Path, uid: u32) {
    nix::unistd::chown(p, Some(uid.into()), Some(uid.into())).unwrap();
}

fn mkdir_as(p: &Path, uid: u32, mode: u32) {
    fs::create_dir_all(p).unwrap();
    fs::set_permissions(p, fs::Permissions::from_mode(mode)).unwrap();
    chown_to(p, uid);
}

/// What another user gets when trying `cmd args`: it must fail with EACCES.
fn denied_to_other(args: &[&std::ffi::OsStr], what: &str) {
    let out = as_user(OTHER).args(args).output().unwrap();
    let text = text_of(&out);
    assert!(
        !out.status.success() && text.contains("Permission denied"),
        "another user could {what}: {text}"
    );
}

/// An unprivileged user's home with the usual layout (0755 folders others can traverse),
/// a runtime dir, and the environment a login session gives the daemon.
struct UserHome {
    home: PathBuf,
    run: PathBuf,
    uid: u32,
}

impl UserHome {
    fn new(base: &Path, uid: u32) -> Self {
        let home = base.join("home");
        let run = base.join("run");
        // Folders others may enter, as is common: only cloudmount's own keep them out.
        for d in [
            &home,
            &home.join(".config/cloudmount"),
            &home.join(".cache"),
            &home.join(".local/state"),
            &home.join(".local/share"),
            &run,
        ] {
            mkdir_as(d, uid, 0o755);
        }
        for d in [&home.join(".config"), &home.join(".local")] {
            chown_to(d, uid);
        }
        UserHome { home, run, uid }
    }

    fn cmd(&self) -> Command {
        let mut c = as_user(self.uid);
        self.env(&mut c);
        c
    }

    fn env(&self, c: &mut Command) {
        c.env("HOME", &self.home)
            .env("XDG_RUNTIME_DIR", &self.run)
            .env_remove("XDG_CONFIG_HOME")
            .env_remove("XDG_STATE_HOME")
            .env_remove("XDG_CACHE_HOME")
            .env_remove("XDG_DATA_HOME")
            .env("RUST_LOG", "trace");
    }

    fn state(&self) -> PathBuf {
        self.home.join(".local/state/cloudmount")
    }
    fn cache(&self) -> PathBuf {
        self.home.join(".cache/cloudmount")
    }
    fn data(&self) -> PathBuf {
        self.home.join(".local/share/cloudmount")
    }
    fn runtime(&self) -> PathBuf {
        self.run.join("cloudmount")
    }

    /// The one mount's own state (or cache) folder: <base>/cloudmount/<mount key>.
    fn only_child(dir: &Path) -> PathBuf {
        let kids: Vec<_> = fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect();
        assert_eq!(kids.len(), 1, "{kids:?}");
        kids[0].clone()
    }
}

/// A background mount (as `cloudmount mount` without --foreground runs it) by `user`,
/// detached when dropped.
fn mount_as(user: &UserHome, mnt: &Path) -> UnmountOnDrop {
    let out = user.cmd().arg(BIN).arg("mount").arg(mnt).output().unwrap();
    ok(out, "mount");
    assert!(is_mounted(mnt));
    UnmountOnDrop(mnt.to_path_buf())
}

fn unmount_as(user: &UserHome, mnt: &Path) {
    ok(
        user.cmd()
            .arg(BIN)
            .arg("unmount")
            .arg(mnt)
            .output()
            .unwrap(),
        "unmount",
    );
    wait_until("the daemon to leave", Duration::from_secs(20), || {
        !is_mounted(mnt) && fs::read_dir(user.runtime()).unwrap().next().is_none()
    });
}

/// A user's daemon over a password-protected WebDAV server, logging at trace level: after
/// reads and writes, another user can read nothing it keeps, every folder is 0700 and every
/// file 0600, no file and no status output holds the password; folders an earlier version
/// left open are tightened at the next start, and the log says so once.
#[test]
fn another_user_reads_nothing_the_daemon_keeps() {
    if !nix::unistd::geteuid().is_root() {
        eprintln!("skipped: needs root to switch to unprivileged users");
        return;
    }
    let _dev_fuse = DevFuseOpenToAll::ensure();
    let dirs = TestDirs::new();
    fs::set_permissions(dirs.tmp.path(), fs::Permissions::from_mode(0o755)).unwrap();
    let user = UserHome::new(dirs.tmp.path(), NOBODY);
    chown_to(&dirs.mnt, NOBODY);
    let password = "Pr1vate-dav-pa55word";
    let server = webdav_servers::start_rclone_webdav_with_auth(&dirs.cloud, "alice", password);
    fs::write(
        dirs.cloud.join("existing.txt"),
        b"contents others must not see",
    )
    .unwrap();
    let pass_file = user.home.join(".config/cloudmount/dav.pass");
    fs::write(&pass_file, password).unwrap();
    fs::set_permissions(&pass_file, fs::Permissions::from_mode(0o600)).unwrap();
    chown_to(&pass_file, NOBODY);
    let config = user.home.join(".config/cloudmount/config.toml");
    fs::write(
        &config,
        format!(
            "upload_delay_secs = 0.05\nupload_limit = \"1MiB\"\n[[connection]]\nname = \"dav\"\n\
             type = \"webdav\"\nsettings = {{ url = \"{}\", user = \"alice\", password_file = \"{}\" }}\n",
            server.url,
            pass_file.display()
        ),
    )
    .unwrap();
    chown_to(&config, NOBODY);
    // An earlier version's cache folder, open to all.
    mkdir_as(&user.cache(), NOBODY, 0o755);

    let _mounted = mount_as(&user, &dirs.mnt);
    let state = UserHome::only_child(&user.state());
    let cache = UserHome::only_child(&user.cache());
    let log = state.join("daemon.log");
    let text = fs::read_to_string(&log).unwrap();
    let reports: Vec<&str> = text
        .lines()
        .filter(|l| l.contains("were made private"))
        .collect();
    assert_eq!(reports.len(), 1, "{text}");
    assert!(
        reports[0].contains(&format!("{} (1)", user.cache().display())),
        "the loose cache folder is reported: {}",
        reports[0]
    );
    assert_private_tree(&user.cache(), NOBODY);

    // Reads and writes through the mount, as the user.
    let dav = dirs.mnt.join("dav");
    let read = user
        .cmd()
        .arg("cat")
        .arg(dav.join("existing.txt"))
        .output()
        .unwrap();
    assert_eq!(ok(read, "read"), "contents others must not see");
    let script = format!(
        "set -e; mkdir '{d}/plans'; echo 'the secret plan' > '{d}/plans/plan.txt'; \
         cat '{d}/plans/plan.txt' >/dev/null",
        d = dav.display()
    );
    ok(
        user.cmd().args(["sh", "-c", &script]).output().unwrap(),
        "write",
    );
    // A staging copy: an upload while the file is still open for writing copies it first,
    // and the bandwidth limit keeps the copy there for a few seconds.
    let big = dav.join("big.bin");
    let mut writer = user
        .cmd()
        .args([
            "sh",
            "-c",
            "exec 3>>\"$1\"; head -c 3000000 /dev/zero > \"$1\"; sleep 6",
            "sh",
        ])
        .arg(&big)
        .spawn()
        .unwrap();
    let staging = state.join("staging");
    let start = Instant::now();
    let copy = loop {
        let found = walk(&staging)
            .into_iter()
            .find(|p| fs::symlink_metadata(p).is_ok_and(|m| m.is_file()));
        if let Some(p) = found {
            break p;
        }
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "no staging copy appeared"
        );
        std::thread::sleep(Duration::from_millis(5));
    };
    let mode = fs::metadata(&copy).unwrap().mode() & 0o7777;
    assert_eq!(mode, 0o600, "{} has mode {mode:o}", copy.display());
    denied_to_other(&["cat".as_ref(), copy.as_os_str()], "read a staging copy");
    denied_to_other(&["ls".as_ref(), staging.as_os_str()], "list staging copies");
    assert!(writer.wait().unwrap().success());
    ok(
        user.cmd()
            .arg(BIN)
            .args(["sync", "--wait", "60"])
            .arg(&dirs.mnt)
            .output()
            .unwrap(),
        "sync",
    );
    assert_eq!(
        fs::read(dirs.cloud.join("plans/plan.txt")).unwrap(),
        b"the secret plan\n"
    );
    let status = ok(
        user.cmd()
            .arg(BIN)
            .args(["status", "--json"])
            .arg(&dirs.mnt)
            .output()
            .unwrap(),
        "status",
    );
    assert!(status.contains("\"dav\""), "{status}");

    // Another user of the machine, who can traverse the home and runtime folders.
    let cached: Vec<PathBuf> = walk(&cache).into_iter().filter(|p| p.is_file()).collect();
    assert!(!cached.is_empty(), "reads left nothing in the cache");
    for f in &cached {
        denied_to_other(&["cat".as_ref(), f.as_os_str()], "read a cached file");
    }
    denied_to_other(&["ls".as_ref(), cache.as_os_str()], "list the cache");
    let metadata = state.join("metadata");
    denied_to_other(&["ls".as_ref(), metadata.as_os_str()], "list the metadata");
    denied_to_other(
        &["cat".as_ref(), metadata.join("db").as_os_str()],
        "read the metadata store",
    );
    denied_to_other(&["cat".as_ref(), log.as_os_str()], "read the log");
    let mut other_status = as_user(OTHER);
    user.env(&mut other_status);
    other_status
        .env("HOME", "/tmp")
        .arg(BIN)
        .arg("status")
        .arg(&dirs.mnt);
    let out = other_status.output().unwrap();
    assert!(
        !out.status.success() && text_of(&out).contains("Permission denied"),
        "another user reached the control socket: {}",
        text_of(&out)
    );

    // Every folder and file the daemon made, with the modes it should have.
    let sockets = walk(&user.runtime())
        .into_iter()
        .filter(|p| fs::symlink_metadata(p).unwrap().file_type().is_socket())
        .count();
    assert_eq!(sockets, 1, "the control socket is in the runtime folder");
    for root in [user.state(), user.cache(), user.runtime()] {
        assert_private_tree(&root, NOBODY);
    }
    assert!(
        !user.data().exists(),
        "a WebDAV mount has nothing to keep in the data folder"
    );

    unmount_as(&user, &dirs.mnt);
    let secrets = [password.to_string(), basic_auth("alice", password)];
    for root in [&user.state(), &user.cache(), &user.run] {
        assert_eq!(secrets_in_files(root, &secrets), vec![]);
    }
    for s in &secrets {
        assert!(!status.contains(s.as_str()), "status --json holds a secret");
    }
    let text = fs::read_to_string(&log).unwrap();
    assert!(text.contains("TRACE"), "the log is at trace level");

    // An earlier version (or a umask of 022) left everything open: the next start tightens
    // it all, and says so in one line.
    for root in [user.state(), user.cache(), user.runtime()] {
        loosen_tree(&root);
    }
    let before = text.len();
    let _mounted = mount_as(&user, &dirs.mnt);
    let added = fs::read_to_string(&log).unwrap()[before..].to_string();
    let reports: Vec<&str> = added
        .lines()
        .filter(|l| l.contains("were made private"))
        .collect();
    assert_eq!(reports.len(), 1, "{added}");
    for p in [
        user.state(),
        state.clone(),
        state.join("metadata"),
        state.join("staging"),
        user.cache(),
        cache.clone(),
        cache.join("conn-1"),
    ] {
        assert!(
            reports[0].contains(&format!("{} (", p.display())),
            "{} is not reported: {}",
            p.display(),
            reports[0]
        );
    }
    assert!(
        added.contains("the log file was readable by other users"),
        "{added}"
    );
    assert!(
        added.contains("the control socket folder was open to other users"),
        "{added}"
    );
    for root in [user.state(), user.cache(), user.runtime()] {
        assert_private_tree(&root, NOBODY);
    }
    assert_eq!(
        ok(
            user.cmd()
                .arg("cat")
                .arg(dav.join("plans/plan.txt"))
                .output()
                .unwrap(),
            "read after restart"
        ),
        "the secret plan\n"
    );
    unmount_as(&user, &dirs.mnt);
    drop(server);
}

/// Folders the user names in the config stay as the user made them, with a warning when
/// others may enter them; what cloudmount creates inside is private.
#[test]
fn named_folders_are_warned_about_and_their_contents_are_private() {
    let dirs = TestDirs::new();
    for d in [&dirs.state, &dirs.cache] {
        fs::create_dir_all(d).unwrap();
        fs::set_permissions(d, fs::Permissions::from_mode(0o755)).unwrap();
    }
    fs::write(dirs.cloud.join("a.txt"), b"cached").unwrap();
    let m = DaemonMount::start(&dirs, &["--upload-delay", "0.05"]);
    assert_eq!(fs::read(m.mnt.join("a.txt")).unwrap(), b"cached");
    fs::write(m.mnt.join("b.txt"), b"written").unwrap();
    m.sync();
    let log = m.log_text();
    for key in ["state_dir", "cache_dir"] {
        assert!(
            log.contains(&format!("the {key} you chose is open to other users")),
            "{log}"
        );
    }
    let me = nix::unistd::geteuid().as_raw();
    for d in [&dirs.state, &dirs.cache] {
        assert_eq!(
            fs::metadata(d).unwrap().mode() & 0o7777,
            0o755,
            "left as chosen"
        );
        for e in fs::read_dir(d).unwrap() {
            assert_private_tree(&e.unwrap().path(), me);
        }
    }
    assert_eq!(
        fs::metadata(&m.log).unwrap().mode() & 0o7777,
        0o600,
        "the log"
    );
    assert!(m.unmount().status.success());
}

/// Google Drive (the emulator) at trace level: login, mount, reads and writes, token
/// refreshes, a refused refresh, metrics, status and logout. No token, client secret,
/// authorization code or PKCE verifier appears in any file under the state, cache, data and
/// runtime folders, nor in anything the commands print.
#[test]
fn oauth_secrets_stay_out_of_files_logs_and_status() {
    let rt = drive_harness::runtime();
    let emu = rt.block_on(DriveEmulator::start(EmulatorConfig::default()));
    let root_id = emu.root_id();
    emu.add_file(&root_id, "hello.txt", b"hello from Drive");
    let dirs = TestDirs::new();
    let home = dirs.tmp.path().join("home");
    let run = dirs.tmp.path().join("run");
    for d in [&home, &run] {
        fs::create_dir_all(d).unwrap();
    }
    let env = |c: &mut Command| {
        c.env("HOME", &home)
            .env("XDG_RUNTIME_DIR", &run)
            .env_remove("XDG_CONFIG_HOME")
            .env_remove("XDG_STATE_HOME")
            .env_remove("XDG_CACHE_HOME")
            .env_remove("XDG_DATA_HOME")
            .env("RUST_LOG", "trace");
    };
    let cli = |args: &[&str]| {
        let mut c = Command::new(BIN);
        env(&mut c);
        c.args(args);
        c
    };
    let secret_file = dirs.tmp.path().join("client-secret");
    fs::write(&secret_file, emu.config().client_secret).unwrap();
    fs::set_permissions(&secret_file, fs::Permissions::from_mode(0o600)).unwrap();
    let metrics_port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let cfg_path = dirs.tmp.path().join("config.toml");
    fs::write(
        &cfg_path,
        format!(
            r#"upload_delay_secs = 0.05
poll_interval_secs = 0.5
metrics_addr = "127.0.0.1:{metrics_port}"
[[connection]]
name = "drive"
type = "gdrive"
settings = {{ client_id = "{client_id}", client_secret_file = "{secret}", auth_url = "{auth}", token_url = "{token}", revoke_url = "{revoke}", api_base = "{api}", upload_base = "{upload}", retry_base_delay_ms = 10 }}
"#,
            client_id = emu.config().client_id,
            secret = secret_file.display(),
            auth = emu.auth_url(),
            token = emu.token_url(),
            revoke = emu.revoke_url(),
            api = emu.api_base(),
            upload = emu.upload_base(),
        ),
    )
    .unwrap();
    let cfg = cfg_path.to_str().unwrap();
    let mut printed = String::new();

    // Login, the test playing the browser: the code and the verifier cross the CLI.
    let mut login = cli(&["-vv", "login", "gdrive", "--name", "drive", "--paste"])
        .args(["--config", cfg])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdout = BufReader::new(login.stdout.take().unwrap());
    let mut auth_url = None;
    let mut line = String::new();
    while stdout.read_line(&mut line).unwrap() > 0 {
        printed.push_str(&line);
        if let Some(u) = line
            .split_whitespace()
            .find(|w| w.starts_with("http://127.0.0.1") && w.contains("code_challenge"))
        {
            auth_url = Some(u.to_string());
        }
        if line.contains("copy that whole address") {
            break;
        }
        line.clear();
    }
    let auth_url = auth_url.expect("the login printed an authorization URL");
    let landed = rt.block_on(drive_harness::redirect_location(&auth_url));
    writeln!(login.stdin.take().unwrap(), "{landed}").unwrap();
    let mut rest = String::new();
    stdout.read_to_string(&mut rest).unwrap();
    let mut err = String::new();
    login
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut err)
        .unwrap();
    assert!(login.wait().unwrap().success(), "login: {rest}{err}");
    printed.push_str(&rest);
    printed.push_str(&err);

    // Tokens that expire at once: the daemon refreshes them over and over.
    emu.set_access_token_lifetime(Duration::from_secs(1));
    let out = cli(&["-vv", "mount"])
        .arg(&dirs.mnt)
        .args(["--config", cfg])
        .output()
        .unwrap();
    printed.push_str(&ok(out, "mount"));
    let _guard = UnmountOnDrop(dirs.mnt.clone());
    let drive = dirs.mnt.join("drive");
    assert_eq!(
        fs::read(drive.join("hello.txt")).unwrap(),
        b"hello from Drive"
    );
    // The login's access token dies: the daemon refreshes, then its short-lived successors.
    emu.expire_all_access_tokens();
    fs::write(drive.join("new.txt"), b"written through cloudmount").unwrap();
    std::thread::sleep(Duration::from_millis(1500));
    printed.push_str(&ok(cli(&["sync"]).arg(&dirs.mnt).output().unwrap(), "sync"));
    assert_eq!(
        emu.file(&emu.find(&root_id, "new.txt")[0]).unwrap().content,
        b"written through cloudmount"
    );
    printed.push_str(&ok(
        cli(&["status", "--json"]).arg(&dirs.mnt).output().unwrap(),
        "status",
    ));
    printed.push_str(&http_get(metrics_port));

    // The provider refuses the refresh token: errors are logged and shown in the status.
    emu.revoke_all_refresh_tokens();
    emu.expire_all_access_tokens();
    let _ = fs::write(drive.join("after-revoke.txt"), b"queued");
    let _ = fs::read_dir(&drive).map(|d| d.count());
    std::thread::sleep(Duration::from_millis(1500));
    let status = ok(
        cli(&["status", "--json"]).arg(&dirs.mnt).output().unwrap(),
        "status",
    );
    printed.push_str(&status);
    printed.push_str(&text_of(&cli(&["status"]).arg(&dirs.mnt).output().unwrap()));
    printed.push_str(&http_get(metrics_port));
    let out = cli(&["unmount", "--drain-timeout", "0"])
        .arg(&dirs.mnt)
        .output()
        .unwrap();
    printed.push_str(&ok(out, "unmount"));
    printed.push_str(&text_of(
        &cli(&["-vv", "logout", "drive", "--config", cfg])
            .output()
            .unwrap(),
    ));

    let secrets = emu.secrets();
    assert!(
        secrets.iter().any(|s| s.starts_with("4/0Ab-code-"))
            && secrets.iter().filter(|s| s.starts_with("ya29.")).count() >= 3
            && secrets.len() > 6,
        "the run exercised codes, verifiers and refreshes: {} secrets",
        secrets.len()
    );
    let leaked: Vec<&String> = secrets.iter().filter(|s| printed.contains(*s)).collect();
    assert!(leaked.is_empty(), "printed: {leaked:?}\n{printed}");
    let log = walk(&home)
        .into_iter()
        .find(|p| p.ends_with("daemon.log"))
        .expect("the daemon log");
    let log_text = fs::read_to_string(&log).unwrap();
    assert!(log_text.contains("TRACE"), "the log is at trace level");
    assert!(
        log_text.contains("token") || log_text.contains("oauth"),
        "the log covers the token traffic"
    );
    let me = nix::unistd::geteuid().as_raw();
    for root in [
        home.join(".local/state/cloudmount"),
        home.join(".cache/cloudmount"),
        home.join(".local/share/cloudmount"),
        run.join("cloudmount"),
    ] {
        assert!(root.exists(), "{}", root.display());
        assert_private_tree(&root, me);
        assert_eq!(secrets_in_files(&root, &secrets), vec![]);
    }
}

fn http_get(port: u16) -> String {
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    assert!(out.contains("cloudmount_requests_total"), "{out}");
    out
}

/// The value a Basic Authorization header carries for `user:password`.
fn basic_auth(user: &str, password: &str) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"))
}

/// mount(8) runs the helper as root on a user's behalf (`user=NAME` for an fstab entry
/// with the `user` option): the daemon runs as that user, so every folder and file it
/// creates, its control socket and the mount itself are the user's, not root's.
#[test]
fn mount_helper_run_by_root_for_a_user_creates_everything_as_that_user() {
    if !nix::unistd::geteuid().is_root() {
        eprintln!("skipped: needs root to act for another user");
        return;
    }
    let _dev_fuse = DevFuseOpenToAll::ensure();
    let dirs = TestDirs::new();
    fs::set_permissions(dirs.tmp.path(), fs::Permissions::from_mode(0o755)).unwrap();
    let helpers = dirs.tmp.path().join("sbin");
    fs::create_dir(&helpers).unwrap();
    ok(
        Command::new(BIN)
            .arg("install-helpers")
            .arg("--dir")
            .arg(&helpers)
            .output()
            .unwrap(),
        "install-helpers",
    );
    let own = dirs.tmp.path().join("nobody");
    mkdir_as(&own, NOBODY, 0o755);
    for d in [&dirs.cloud, &dirs.mnt] {
        chown_to(d, NOBODY);
    }
    let (state, cache) = (own.join("state"), own.join("cache"));
    let out = Command::new(helpers.join("mount.cloudmount"))
        .arg(format!("local:{}", dirs.cloud.display()))
        .arg(&dirs.mnt)
        .arg("-o")
        .arg(format!(
            "user=nobody,upload_delay=0.05,state_dir={},cache_dir={}",
            state.display(),
            cache.display()
        ))
        .env("HOME", "/root")
        .env_remove("XDG_RUNTIME_DIR")
        .output()
        .unwrap();
    ok(out, "mount.cloudmount");
    let _guard = UnmountOnDrop(dirs.mnt.clone());
    let info = fs::read_to_string("/proc/self/mountinfo").unwrap();
    let line = info
        .lines()
        .find(|l| l.split(' ').nth(4) == Some(dirs.mnt.to_str().unwrap()))
        .expect("mounted");
    assert!(line.contains(&format!("user_id={NOBODY}")), "{line}");

    let file = dirs.mnt.join("mine.txt");
    let mut c = as_user(NOBODY);
    c.args(["sh", "-c", "echo 'by nobody' > \"$1\" && cat \"$1\"", "sh"])
        .arg(&file);
    assert_eq!(ok(c.output().unwrap(), "write as nobody"), "by nobody\n");
    let mut c = as_user(NOBODY);
    c.arg(BIN).args(["sync", "--wait", "30"]).arg(&dirs.mnt);
    ok(c.output().unwrap(), "sync as nobody");
    assert_eq!(
        fs::read(dirs.cloud.join("mine.txt")).unwrap(),
        b"by nobody\n"
    );

    let runtime = PathBuf::from(format!("/tmp/cloudmount-{NOBODY}"));
    for root in [&state, &cache] {
        assert!(assert_private_tree(root, NOBODY) > 1, "{}", root.display());
    }
    let socket = runtime.join(format!("{}.sock", cloudmount::control::mount_id(&dirs.mnt)));
    assert!(fs::symlink_metadata(&socket)
        .unwrap()
        .file_type()
        .is_socket());
    for p in [&runtime, &socket] {
        let m = fs::symlink_metadata(p).unwrap();
        assert_eq!(m.uid(), NOBODY, "{} is the user's", p.display());
    }
    assert_eq!(fs::metadata(&runtime).unwrap().mode() & 0o7777, 0o700);
    assert_eq!(
        fs::symlink_metadata(&socket).unwrap().mode() & 0o7777,
        0o600
    );

    let mut c = as_user(NOBODY);
    c.arg(BIN).arg("unmount").arg(&dirs.mnt);
    ok(c.output().unwrap(), "unmount as nobody");
    assert!(!is_mounted(&dirs.mnt));
}

/// The command lines of `systemd/cloudmount-system@.service` (ExecStart, ExecStop) for
/// instance `name`, with the config folder `etc` standing in for /etc/cloudmount.
fn system_unit_commands(name: &str, etc: &Path) -> (Vec<String>, Vec<String>) {
    let unit = fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("systemd/cloudmount-system@.service"),
    )
    .unwrap();
    let bin_dir = Path::new(BIN).parent().unwrap().display().to_string();
    let command = |key: &str| -> Vec<String> {
        let line = unit
            .lines()
            .find_map(|l| l.strip_prefix(key))
            .unwrap_or_else(|| panic!("{key} in the system unit"));
        line.replace("@BINDIR@", &bin_dir)
            .replace("/etc/cloudmount/", &format!("{}/", etc.display()))
            .replace("%i", name)
            .split_whitespace()
            .map(str::to_string)
            .collect()
    };
    (command("ExecStart="), command("ExecStop="))
}

/// The system-wide unit started by root for one user (`run_as` in the config), run with
/// its own ExecStart and ExecStop lines and a stand-in for systemd's notify socket (not
/// under systemd, so without the unit's sandbox; the `NoNewPrivileges=no` drop-in that
/// `run_as` needs there is documented in the unit): the
/// daemon becomes the user before it creates anything, so its folders, files, log,
/// control socket and the mount are the user's, private, and not root's; READY comes once
/// the mount works; root's ExecStop unmounts it after the queue drained.
#[test]
fn system_unit_with_run_as_creates_everything_as_that_user() {
    if !nix::unistd::geteuid().is_root() {
        eprintln!("skipped: needs root to act for another user");
        return;
    }
    let _dev_fuse = DevFuseOpenToAll::ensure();
    let dirs = TestDirs::new();
    fs::set_permissions(dirs.tmp.path(), fs::Permissions::from_mode(0o755)).unwrap();
    let own = dirs.tmp.path().join("nobody");
    mkdir_as(&own, NOBODY, 0o755);
    for d in [&dirs.cloud, &dirs.mnt] {
        chown_to(d, NOBODY);
    }
    fs::write(dirs.cloud.join("hello.txt"), b"hello").unwrap();
    chown_to(&dirs.cloud.join("hello.txt"), NOBODY);
    let (state, cache) = (own.join("state"), own.join("cache"));
    let etc = dirs.tmp.path().join("etc");
    fs::create_dir(&etc).unwrap();
    fs::write(
        etc.join("alice.toml"),
        format!(
            "mount_point = {:?}\nstate_dir = {:?}\ncache_dir = {:?}\nrun_as = \"nobody\"\n\
             upload_delay_secs = 0.05\n\n[[connection]]\nname = \"files\"\ntype = \"local\"\n\
             path = {:?}\n",
            dirs.mnt, state, cache, dirs.cloud
        ),
    )
    .unwrap();
    let (start, stop) = system_unit_commands("alice", &etc);

    // systemd's notify socket is writable by every service, whoever it runs as.
    let notify_path = dirs.tmp.path().join("notify.sock");
    let notify = std::os::unix::net::UnixDatagram::bind(&notify_path).unwrap();
    fs::set_permissions(&notify_path, fs::Permissions::from_mode(0o777)).unwrap();
    notify
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    // Its output to a file, not a pipe nobody reads while it runs (which could fill).
    let output = dirs.tmp.path().join("daemon-output");
    let mut daemon = Command::new(&start[0])
        .args(&start[1..])
        .env("NOTIFY_SOCKET", &notify_path)
        .env("HOME", "/root")
        .env_remove("XDG_RUNTIME_DIR")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(fs::File::create(&output).unwrap())
        .spawn()
        .unwrap();
    let output_text = || fs::read_to_string(&output).unwrap_or_default();
    let _guard = UnmountOnDrop(dirs.mnt.clone());
    let mut buf = [0u8; 256];
    let n = match notify.recv(&mut buf) {
        Ok(n) => n,
        Err(e) => {
            let _ = daemon.kill();
            let _ = daemon.wait();
            panic!("no READY ({e}): {}", output_text());
        }
    };
    assert_eq!(&buf[..n], b"READY=1");
    let info = fs::read_to_string("/proc/self/mountinfo").unwrap();
    let line = info
        .lines()
        .find(|l| l.split(' ').nth(4) == Some(dirs.mnt.to_str().unwrap()))
        .expect("mounted");
    assert!(line.contains(&format!("user_id={NOBODY}")), "{line}");
    let status = fs::read_to_string(format!("/proc/{}/status", daemon.id())).unwrap();
    let uids = status.lines().find(|l| l.starts_with("Uid:")).unwrap();
    assert!(
        uids.split_whitespace()
            .skip(1)
            .all(|u| u == NOBODY.to_string()),
        "the daemon runs as the user: {uids}"
    );

    let file = dirs.mnt.join("files/mine.txt");
    let mut c = as_user(NOBODY);
    c.args([
        "sh",
        "-c",
        "cat \"$1\" && echo ' by nobody' > \"$2\" && cat \"$2\"",
        "sh",
    ])
    .arg(dirs.mnt.join("files/hello.txt"))
    .arg(&file);
    assert_eq!(
        ok(c.output().unwrap(), "read and write as nobody"),
        "hello by nobody\n"
    );
    let mut c = as_user(NOBODY);
    c.arg(BIN).args(["sync", "--wait", "30"]).arg(&dirs.mnt);
    ok(c.output().unwrap(), "sync as nobody");
    assert_eq!(
        fs::read(dirs.cloud.join("mine.txt")).unwrap(),
        b" by nobody\n"
    );

    for root in [&state, &cache] {
        assert!(assert_private_tree(root, NOBODY) > 1, "{}", root.display());
    }
    let runtime = PathBuf::from(format!("/tmp/cloudmount-{NOBODY}"));
    let socket = runtime.join(format!("{}.sock", cloudmount::control::mount_id(&dirs.mnt)));
    for p in [&runtime, &socket] {
        let m = fs::symlink_metadata(p).unwrap();
        assert_eq!(m.uid(), NOBODY, "{} is the user's", p.display());
    }
    assert_eq!(
        fs::symlink_metadata(&socket).unwrap().mode() & 0o7777,
        0o600
    );

    // ExecStop, run by root as systemd does.
    ok(
        Command::new(&stop[0]).args(&stop[1..]).output().unwrap(),
        "ExecStop",
    );
    let status = daemon.wait().unwrap();
    assert!(status.success(), "daemon exit {status}: {}", output_text());
    assert!(!is_mounted(&dirs.mnt));
}
