//! Dropbox through the kernel: the account lifecycle through the real CLI (`login
//! --paste` with PKCE against the emulator, a mount by the daemon, `logout` revoking the
//! login), remote changes brought by the longpoll, and large files through upload
//! sessions while Dropbox throttles (the functional suite runs over the emulator in
//! tests/mount_suite.rs, the provider contract in tests/provider_contract.rs).

mod common;
#[path = "support/drive_emulator.rs"]
mod drive_emulator;
#[path = "support/drive_harness.rs"]
mod drive_harness;
#[path = "support/dropbox_emulator.rs"]
mod dropbox_emulator;
#[path = "support/dropbox_harness.rs"]
mod dropbox_harness;
#[path = "support/emu/mod.rs"]
mod emu;

use std::fs;
use std::io::{BufRead, BufReader, Write};
use std::os::unix::fs::PermissionsExt;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use cloudmount::provider::dropbox::CHUNK_UNIT;
use cloudmount::provider::Provider;
use common::*;
use dropbox_emulator::{DropboxConfig, DropboxEmulator, Fault};

/// `login dropbox --paste` (the test plays the browser and pastes where it landed),
/// `connections`, a mount by the daemon that reads and writes, and `logout`, which revokes
/// the login at Dropbox; no token in clear in the vault or in the trace-level daemon log.
#[test]
fn paste_login_mount_logout_through_the_cli() {
    let rt = drive_harness::runtime();
    let emu = DropboxEmulator::start(DropboxConfig::default());
    emu.add_file("/hello.txt", b"hello from Dropbox");
    let dirs = TestDirs::new();
    let secret_file = dirs.tmp.path().join("app-secret");
    fs::write(&secret_file, emu.config().client_secret).unwrap();
    fs::set_permissions(&secret_file, fs::Permissions::from_mode(0o600)).unwrap();
    let cfg_path = dirs.tmp.path().join("config.toml");
    fs::write(
        &cfg_path,
        format!(
            r#"upload_delay_secs = 0.05
accounts_dir = "{accounts}"
[[connection]]
name = "box"
type = "dropbox"
settings = {{ client_id = "{client_id}", client_secret_file = "{secret}", auth_url = "{auth}", token_url = "{token}", revoke_url = "{revoke}", api_base = "{api}", content_base = "{content}", notify_base = "{notify}", retry_base_delay_ms = 10 }}
"#,
            accounts = dirs.tmp.path().join("accounts").display(),
            client_id = emu.config().client_id,
            secret = secret_file.display(),
            auth = emu.auth_url(),
            token = emu.token_url(),
            revoke = emu.revoke_url(),
            api = emu.api_base(),
            content = emu.content_base(),
            notify = emu.notify_base(),
        ),
    )
    .unwrap();

    let mut login = Command::new(BIN)
        .args(["login", "dropbox", "--name", "box", "--paste", "--config"])
        .arg(&cfg_path)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdout = BufReader::new(login.stdout.take().unwrap());
    let mut auth_url = None;
    let mut line = String::new();
    while stdout.read_line(&mut line).unwrap() > 0 {
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
    assert!(
        auth_url.contains("token_access_type=offline"),
        "a refresh token is asked for: {auth_url}"
    );
    assert!(
        auth_url.contains("redirect_uri=http%3A%2F%2F127.0.0.1%3A53682%2F"),
        "{auth_url}"
    );
    let landed = rt.block_on(drive_harness::redirect_location(&auth_url));
    writeln!(login.stdin.take().unwrap(), "{landed}").unwrap();
    let status = login.wait().unwrap();
    let mut rest = String::new();
    std::io::Read::read_to_string(&mut stdout, &mut rest).unwrap();
    assert!(status.success(), "login failed: {rest}");
    assert!(rest.contains("logged in"), "{rest}");

    let daemon = DaemonMount::start_traced(&dirs, &cfg_path);
    assert_eq!(
        fs::read(dirs.mnt.join("box/hello.txt")).unwrap(),
        b"hello from Dropbox"
    );
    fs::create_dir(dirs.mnt.join("box/Ünï")).unwrap();
    fs::write(
        dirs.mnt.join("box/Ünï/from-mount.txt"),
        b"written through cloudmount",
    )
    .unwrap();
    daemon.sync();
    assert_eq!(
        emu.content("/Ünï/from-mount.txt").as_deref(),
        Some(&b"written through cloudmount"[..])
    );
    let log = daemon.log.clone();
    assert!(daemon.unmount().status.success());
    let text = fs::read_to_string(&log).unwrap();
    let vault_files: Vec<Vec<u8>> = fs::read_dir(dirs.tmp.path().join("accounts"))
        .unwrap()
        .map(|e| fs::read(e.unwrap().path()).unwrap())
        .collect();
    let secrets = emu.secrets();
    assert!(secrets.len() >= 3, "code, tokens, verifier at least");
    for s in &secrets {
        assert!(!text.contains(s), "the daemon log contains a secret");
        for f in &vault_files {
            assert!(
                !String::from_utf8_lossy(f).contains(s),
                "a token in clear in the vault"
            );
        }
    }

    let out = Command::new(BIN)
        .args(["logout", "box", "--config"])
        .arg(&cfg_path)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        emu.oauth_stats().revocations,
        1,
        "logout revoked at Dropbox"
    );
    let out = Command::new(BIN)
        .args(["connections", "--config"])
        .arg(&cfg_path)
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&out.stdout).contains("not logged in"));
}

/// A change on the remote reaches the mount through the longpoll: the poller's own tick is
/// an hour here, so only the longpoll can bring it, within seconds.
#[test]
fn remote_changes_arrive_by_longpoll() {
    let rt = drive_harness::runtime();
    let h = {
        let _inside = rt.enter();
        dropbox_harness::harness(
            DropboxConfig {
                longpoll_hold: Some(Duration::from_secs(2)),
                ..DropboxConfig::default()
            },
            |_| {},
        )
    };
    h.emu.add_file("/Reports/q1.txt", b"q1");
    let emu = &h.emu;
    let provider: Arc<dyn Provider> = Arc::new(h.provider);
    let m = InProcessMount::new(provider, test_config(|c| c.dir_ttl_secs = 3600.0));
    assert_eq!(fs::read(m.path("Reports/q1.txt")).unwrap(), b"q1");
    let poller = {
        let _inside = m.rt.enter();
        m.vfs().start_poller(Duration::from_secs(3600))
    };
    // The first tick takes the cursor; the longpoll then waits on it.
    wait_until("a longpoll", Duration::from_secs(10), || {
        emu.stats().longpolls >= 1
    });
    emu.add_file("/Reports/q2.txt", b"q2 from elsewhere");
    emu.add_file("/Reports/q1.txt", b"q1, revised");
    let started = Instant::now();
    wait_until("the new file in the mount", Duration::from_secs(15), || {
        m.path("Reports/q2.txt").exists()
    });
    assert_eq!(
        fs::read(m.path("Reports/q2.txt")).unwrap(),
        b"q2 from elsewhere"
    );
    assert_eq!(fs::read(m.path("Reports/q1.txt")).unwrap(), b"q1, revised");
    emu.delete("/Reports");
    wait_until("the folder gone", Duration::from_secs(15), || {
        !m.path("Reports").exists()
    });
    assert!(started.elapsed() < Duration::from_secs(30));
    poller.abort();
}

/// Files larger than the upload cutoff go through sessions while Dropbox throttles (both
/// reasons) and loses a reply; a cold read while it answers 503; the remote ends up as the
/// mount says.
#[test]
fn large_files_and_throttling_through_the_mount() {
    let rt = drive_harness::runtime();
    let h = {
        let _inside = rt.enter();
        dropbox_harness::harness(DropboxConfig::default(), |c| {
            c.upload_cutoff = CHUNK_UNIT;
            c.chunk_size = CHUNK_UNIT;
        })
    };
    let emu = &h.emu;
    emu.add_file("/remote.bin", &pattern(3 * 1024 * 1024, 9));
    let provider: Arc<dyn Provider> = Arc::new(h.provider);
    let m = InProcessMount::new(provider, test_config(|_| {}));

    let big = pattern(2 * CHUNK_UNIT as usize + 4321, 7);
    emu.inject(Fault::LoseReply("files/upload_session/append_v2"), 1);
    emu.inject(
        Fault::RateLimit {
            reason: "too_many_write_operations",
            retry_after: 1,
        },
        1,
    );
    fs::write(m.path("big.bin"), &big).unwrap();
    fs::write(m.path("small.txt"), b"small").unwrap();
    assert!(
        m.drain(Duration::from_secs(60)),
        "{:?}",
        m.vfs().queue.status()
    );
    assert!(
        emu.content("/big.bin").as_deref() == Some(&big[..]),
        "remote big.bin"
    );
    assert_eq!(emu.content("/small.txt").as_deref(), Some(&b"small"[..]));
    assert!(emu.stats().session_appends >= 2);
    assert_eq!(emu.open_sessions(), 0);

    emu.inject(Fault::ServerError(503), 1);
    emu.inject(
        Fault::RateLimit {
            reason: "too_many_requests",
            retry_after: 1,
        },
        1,
    );
    assert!(
        fs::read(m.path("remote.bin")).unwrap() == pattern(3 * 1024 * 1024, 9),
        "remote.bin read back"
    );
    assert_eq!(emu.pending_faults(), 0, "every injected fault was met");
}

/// A name Dropbox refuses only when it arrives: the file stays in the mount, its upload is
/// parked with Dropbox's reason in the queue's status, and everything else uploads. A
/// character Dropbox never takes is refused at once.
#[test]
fn a_name_dropbox_refuses_stays_local_and_says_why() {
    let rt = drive_harness::runtime();
    let h = {
        let _inside = rt.enter();
        dropbox_harness::harness(DropboxConfig::default(), |_| {})
    };
    let emu = &h.emu;
    let provider: Arc<dyn Provider> = Arc::new(h.provider);
    let m = InProcessMount::new(provider, test_config(|_| {}));
    let err = fs::write(m.path("back\\slash.txt"), b"x").unwrap_err();
    assert_eq!(err.raw_os_error(), Some(libc::EINVAL));
    fs::write(m.path("desktop.ini"), b"[.ShellClassInfo]").unwrap();
    fs::write(m.path("fine.txt"), b"fine").unwrap();
    let vfs = m.vfs();
    wait_until("the refusal in status", Duration::from_secs(20), || {
        vfs.queue.status().iter().any(|j| {
            j.path == "/desktop.ini"
                && j.failed
                    .as_deref()
                    .is_some_and(|f| f.contains("disallowed_name"))
        })
    });
    wait_until("fine.txt uploaded", Duration::from_secs(20), || {
        emu.content("/fine.txt").as_deref() == Some(&b"fine"[..])
    });
    assert_eq!(
        fs::read(m.path("desktop.ini")).unwrap(),
        b"[.ShellClassInfo]"
    );
    assert!(!emu.exists("/desktop.ini"));
}

/// Dropbox keeps revisions itself: `versions` lists them (nothing of ours on the
/// account), each reads back through `rev:…`, and a restore makes old content current
/// again as a new revision.
#[test]
fn versions_are_dropboxs_revisions() {
    let rt = drive_harness::runtime();
    let h = {
        let _inside = rt.enter();
        dropbox_harness::harness(DropboxConfig::default(), |_| {})
    };
    let emu = &h.emu;
    let provider: Arc<dyn Provider> = Arc::new(h.provider);
    let m = InProcessMount::new(provider, test_config(|_| {}));
    let contents: [&[u8]; 3] = [b"first", b"second version", b"third and last"];
    for c in contents {
        fs::write(m.path("doc.txt"), c).unwrap();
        assert!(m.drain(Duration::from_secs(30)));
    }
    assert_eq!(
        emu.tree("").keys().collect::<Vec<_>>(),
        ["doc.txt"],
        "no version copies on the account"
    );
    assert_eq!(emu.revision_count("/doc.txt"), 3);
    let vfs = m.vfs();
    let list = m.rt.block_on(vfs.versions.list("/doc.txt")).unwrap();
    let mut sizes: Vec<u64> = list.iter().map(|v| v.size).collect();
    sizes.sort();
    assert_eq!(sizes, [5, 14, 14]);
    let mut read: Vec<Vec<u8>> = list
        .iter()
        .map(|v| m.rt.block_on(vfs.versions.read(v)).unwrap())
        .collect();
    read.sort();
    let mut want: Vec<Vec<u8>> = contents.iter().map(|c| c.to_vec()).collect();
    want.sort();
    assert_eq!(read, want);
    let first = list.iter().find(|v| v.size == 5).unwrap().number;
    m.rt.block_on(vfs.restore_version("/doc.txt", first))
        .unwrap();
    assert_eq!(fs::read(m.path("doc.txt")).unwrap(), b"first");
    assert!(m.drain(Duration::from_secs(30)));
    assert_eq!(emu.content("/doc.txt").as_deref(), Some(&b"first"[..]));
    assert_eq!(emu.revision_count("/doc.txt"), 4);
}

/// A rename that changes only the case, through the mount, while Dropbox loses the reply to
/// the first of its two moves: the remote ends with the new name only, nothing under the
/// provider's own in-between name.
#[test]
fn a_case_only_rename_survives_a_lost_reply() {
    let rt = drive_harness::runtime();
    let h = {
        let _inside = rt.enter();
        dropbox_harness::harness(DropboxConfig::default(), |_| {})
    };
    let emu = &h.emu;
    emu.add_file("/report.txt", b"the report");
    emu.add_file("/Photos/a.jpg", b"jpg");
    let provider: Arc<dyn Provider> = Arc::new(h.provider);
    let m = InProcessMount::new(provider, test_config(|_| {}));
    assert_eq!(fs::read(m.path("report.txt")).unwrap(), b"the report");
    assert!(m.path("Photos/a.jpg").exists());
    emu.inject(Fault::LoseReply("files/move_v2"), 1);
    fs::rename(m.path("report.txt"), m.path("Report.txt")).unwrap();
    assert!(
        m.drain(Duration::from_secs(60)),
        "{:?}",
        m.vfs().queue.status()
    );
    emu.inject(Fault::LoseReply("files/move_v2"), 1);
    fs::rename(m.path("Photos"), m.path("photos")).unwrap();
    assert!(
        m.drain(Duration::from_secs(60)),
        "{:?}",
        m.vfs().queue.status()
    );
    assert_eq!(emu.pending_faults(), 0);
    let tree = emu.tree("");
    assert_eq!(
        tree.keys().cloned().collect::<Vec<_>>(),
        ["Report.txt", "photos", "photos/a.jpg"],
        "{tree:?}"
    );
    assert_eq!(tree["Report.txt"].as_deref(), Some(&b"the report"[..]));
}
