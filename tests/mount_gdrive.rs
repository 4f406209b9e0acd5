//! Google Drive through the kernel: Drive's own behaviour on the mounted emulator (the
//! functional suite runs over it in tests/mount_suite.rs), and the account lifecycle
//! through the real CLI (login, connections, mount, logout).

mod common;
#[path = "support/drive_emulator.rs"]
mod drive_emulator;
#[path = "support/drive_harness.rs"]
mod drive_harness;
#[path = "support/emu/mod.rs"]
mod emu;

use std::fs;
use std::io::{BufRead, BufReader, Write};
use std::os::unix::fs::PermissionsExt;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use cloudmount::provider::Provider;
use common::*;
use drive_emulator::{DriveEmulator, EmulatorConfig, Fault, DOC_MIME};

#[test]
fn drive_specifics_through_the_mount() {
    let rt = drive_harness::runtime();
    let h = rt.block_on(drive_harness::harness(EmulatorConfig::default(), |_| {}));
    let root = h.emu.root_id();
    h.emu.add_file(&root, "twin.txt", b"first");
    h.emu.add_file(&root, "twin.txt", b"second");
    h.emu.add_file(&root, "a/b.txt", b"slash in the name");
    h.emu
        .add_native(&root, "Plan", DOC_MIME, b"exported document bytes");
    let watched = h.emu.add_file(&root, "watched.txt", b"old");
    let provider: Arc<dyn Provider> = Arc::new(h.provider);
    let m = InProcessMount::new(
        provider,
        test_config(|c| {
            c.dir_ttl_secs = 0.2;
        }),
    );
    let vfs = m.vfs();
    m.rt.spawn({
        let vfs = vfs.clone();
        async move {
            loop {
                let _ = vfs.poll_once().await;
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    });

    let mut names: Vec<String> = fs::read_dir(m.mnt())
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    names.sort();
    // Two files of one name get distinct, stable names; '/' is shown as a lookalike.
    assert!(names.contains(&"twin.txt".to_string()), "{names:?}");
    assert!(names.contains(&"twin (2).txt".to_string()), "{names:?}");
    assert!(names.contains(&"a\u{2215}b.txt".to_string()), "{names:?}");
    let mut twins = vec![
        fs::read(m.path("twin.txt")).unwrap(),
        fs::read(m.path("twin (2).txt")).unwrap(),
    ];
    twins.sort();
    assert_eq!(twins, vec![b"first".to_vec(), b"second".to_vec()]);
    assert_eq!(
        fs::read(m.path("a\u{2215}b.txt")).unwrap(),
        b"slash in the name"
    );
    // A Google Doc is shown exported, read-only.
    let doc = names
        .iter()
        .find(|n| n.starts_with("Plan"))
        .expect("the doc is listed");
    assert!(doc.ends_with(".docx"), "{doc}");
    assert_eq!(fs::read(m.path(doc)).unwrap(), b"exported document bytes");

    // A change made on Drive shows up through the mount (changes feed + invalidation).
    assert_eq!(fs::read(m.path("watched.txt")).unwrap(), b"old");
    h.emu.set_content(&watched, b"changed on Drive");
    wait_until("the remote edit to show", Duration::from_secs(20), || {
        fs::read(m.path("watched.txt")).ok().as_deref() == Some(&b"changed on Drive"[..])
    });

    // Rate limits while uploading: everything lands, nothing twice.
    h.emu.inject(Fault::UserRateLimit403, 3);
    h.emu.inject(
        Fault::RateLimit429 {
            retry_after: Some(1),
        },
        1,
    );
    for i in 0..5 {
        fs::write(m.path(&format!("burst-{i}.txt")), format!("payload {i}")).unwrap();
    }
    assert!(m.drain(Duration::from_secs(60)));
    for i in 0..5 {
        let ids = h.emu.find(&root, &format!("burst-{i}.txt"));
        assert_eq!(ids.len(), 1, "burst-{i}.txt once on Drive");
        assert_eq!(
            h.emu.file(&ids[0]).unwrap().content,
            format!("payload {i}").as_bytes()
        );
    }

    // Drive's own revisions are the version history; restore uploads a new revision.
    for v in ["v1", "v2", "v3"] {
        fs::write(m.path("history.txt"), v).unwrap();
        assert!(m.drain(Duration::from_secs(30)));
    }
    let versions = m.rt.block_on(vfs.versions.list("/history.txt")).unwrap();
    assert!(versions.len() >= 3, "{versions:?}");
    m.rt.block_on(vfs.restore_version("/history.txt", 1))
        .unwrap();
    assert!(m.drain(Duration::from_secs(30)));
    assert_eq!(fs::read(m.path("history.txt")).unwrap(), b"v1");
    let id = h.emu.find(&root, "history.txt");
    assert_eq!(id.len(), 1, "the file keeps its id");
    assert_eq!(h.emu.file(&id[0]).unwrap().content, b"v1");
}

/// Shared drives through the kernel: `Shared drives/<name>/...` is listed, read, written,
/// renamed within the drive and deleted from; `Shared drives` and the drive folders stay.
#[test]
fn shared_drives_through_the_mount() {
    let rt = drive_harness::runtime();
    let h = rt.block_on(drive_harness::harness(EmulatorConfig::default(), |_| {}));
    let team = h.emu.add_shared_drive("Team");
    let empty = h.emu.add_shared_drive("Empty");
    let a = h.emu.add_file(&team, "a.txt", b"alpha");
    let watched = h.emu.add_file(&team, "watched.txt", b"old");
    let provider: Arc<dyn Provider> = Arc::new(h.provider);
    let m = InProcessMount::new(
        provider,
        test_config(|c| {
            c.dir_ttl_secs = 0.2;
        }),
    );
    let vfs = m.vfs();
    m.rt.spawn({
        let vfs = vfs.clone();
        async move {
            loop {
                let _ = vfs.poll_once().await;
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    });
    let ls = |p: &str| {
        let mut v: Vec<String> = fs::read_dir(m.path(p))
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        v.sort();
        v
    };
    assert!(ls("").contains(&"Shared drives".to_string()));
    assert_eq!(ls("Shared drives"), vec!["Empty", "Team"]);
    assert_eq!(ls("Shared drives/Team"), vec!["a.txt", "watched.txt"]);
    assert_eq!(
        fs::read(m.path("Shared drives/Team/a.txt")).unwrap(),
        b"alpha"
    );

    // Write a new file and rename an existing one, within the drive.
    fs::write(m.path("Shared drives/Team/new.txt"), b"written here").unwrap();
    fs::rename(
        m.path("Shared drives/Team/a.txt"),
        m.path("Shared drives/Team/renamed.txt"),
    )
    .unwrap();
    assert!(m.drain(Duration::from_secs(60)), "uploads did not drain");
    let new = h.emu.find(&team, "new.txt");
    assert_eq!(new.len(), 1, "new.txt once in the shared drive");
    let rec = h.emu.file(&new[0]).unwrap();
    assert_eq!(rec.content, b"written here");
    assert_eq!(rec.drive_id.as_deref(), Some(team.as_str()));
    assert_eq!(h.emu.file(&a).unwrap().name, "renamed.txt");

    // Delete inside the drive.
    fs::remove_file(m.path("Shared drives/Team/renamed.txt")).unwrap();
    assert!(m.drain(Duration::from_secs(60)));
    assert!(h.emu.file(&a).unwrap().trashed);

    // A change made in the shared drive shows up (changes feed).
    assert_eq!(
        fs::read(m.path("Shared drives/Team/watched.txt")).unwrap(),
        b"old"
    );
    h.emu.set_content(&watched, b"changed in the shared drive");
    wait_until(
        "the shared-drive edit to show",
        Duration::from_secs(20),
        || {
            fs::read(m.path("Shared drives/Team/watched.txt"))
                .ok()
                .as_deref()
                == Some(&b"changed in the shared drive"[..])
        },
    );

    // `Shared drives` cannot be removed, and is read-only for the kernel's checks.
    assert!(fs::remove_dir(m.path("Shared drives")).is_err());
    assert!(ls("").contains(&"Shared drives".to_string()));
    let mode = fs::metadata(m.path("Shared drives"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o555);
    // Root bypasses those checks, and the write-back layer accepts removing an empty drive
    // folder locally; the provider refuses the remote delete, so the drive stays on Drive
    // and comes back in the mount.
    let _ = fs::remove_dir(m.path("Shared drives/Empty"));
    m.drain(Duration::from_secs(30));
    assert!(h.emu.file(&empty).is_some_and(|f| !f.trashed));
    assert!(h.emu.file(&team).is_some_and(|f| !f.trashed));
    wait_until(
        "the refused delete to be undone",
        Duration::from_secs(10),
        || ls("Shared drives").contains(&"Empty".to_string()),
    );
    assert!(
        m.vfs().queue.is_empty(),
        "no job parked for the refused delete"
    );
}

/// The account lifecycle as a user runs it: `login --paste` (the test plays the browser),
/// `connections`, a mount by the daemon, `logout` revoking the token.
#[test]
fn login_mount_logout_through_the_cli() {
    let rt = drive_harness::runtime();
    let emu: DriveEmulator = rt.block_on(DriveEmulator::start(EmulatorConfig::default()));
    let root_id = emu.root_id();
    emu.add_file(&root_id, "hello.txt", b"hello from Drive");
    let dirs = TestDirs::new();
    let secret_file = dirs.tmp.path().join("client-secret");
    fs::write(&secret_file, emu.config().client_secret).unwrap();
    fs::set_permissions(&secret_file, fs::Permissions::from_mode(0o600)).unwrap();
    let cfg_path = dirs.tmp.path().join("config.toml");
    fs::write(
        &cfg_path,
        format!(
            r#"upload_delay_secs = 0.05
poll_interval_secs = 0.5
accounts_dir = "{accounts}"
[[connection]]
name = "drive"
type = "gdrive"
settings = {{ client_id = "{client_id}", client_secret_file = "{secret}", auth_url = "{auth}", token_url = "{token}", revoke_url = "{revoke}", api_base = "{api}", upload_base = "{upload}", retry_base_delay_ms = 10 }}
"#,
            accounts = dirs.tmp.path().join("accounts").display(),
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

    let out = Command::new(BIN)
        .args(["connections", "--config"])
        .arg(&cfg_path)
        .output()
        .unwrap();
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("not logged in"),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );

    let mut login = Command::new(BIN)
        .args(["login", "gdrive", "--name", "drive", "--paste", "--config"])
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
    // The user signs in; the browser lands on the (dead) loopback address, which is pasted.
    let landed = rt.block_on(drive_harness::redirect_location(&auth_url));
    writeln!(login.stdin.take().unwrap(), "{landed}").unwrap();
    let status = login.wait().unwrap();
    let mut rest = String::new();
    std::io::Read::read_to_string(&mut stdout, &mut rest).unwrap();
    assert!(status.success(), "login failed: {rest}");
    assert!(rest.contains("logged in"), "{rest}");

    let out = Command::new(BIN)
        .args(["connections", "--config"])
        .arg(&cfg_path)
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&out.stdout).contains("logged in"));
    // The stored token is encrypted: no token the emulator issued appears in the vault.
    for entry in fs::read_dir(dirs.tmp.path().join("accounts")).unwrap() {
        let p = entry.unwrap().path();
        let bytes = fs::read(&p).unwrap();
        assert_eq!(
            fs::metadata(&p).unwrap().permissions().mode() & 0o077,
            0,
            "{} is private",
            p.display()
        );
        for s in emu.secrets() {
            assert!(
                !String::from_utf8_lossy(&bytes).contains(&s),
                "{} holds a token in clear",
                p.display()
            );
        }
    }

    let daemon = DaemonMount::start_traced(&dirs, &cfg_path);
    assert_eq!(
        fs::read(dirs.mnt.join("drive/hello.txt")).unwrap(),
        b"hello from Drive"
    );
    fs::write(
        dirs.mnt.join("drive/from-mount.txt"),
        b"written through cloudmount",
    )
    .unwrap();
    daemon.sync();
    let ids = emu.find(&root_id, "from-mount.txt");
    assert_eq!(
        emu.file(&ids[0]).unwrap().content,
        b"written through cloudmount"
    );
    let log = daemon.log.clone();
    assert!(daemon.unmount().status.success());
    let text = fs::read_to_string(&log).unwrap();
    for s in emu.secrets() {
        assert!(!text.contains(&s), "the daemon log contains a secret");
    }

    let out = Command::new(BIN)
        .args(["logout", "drive", "--config"])
        .arg(&cfg_path)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = Command::new(BIN)
        .args(["connections", "--config"])
        .arg(&cfg_path)
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&out.stdout).contains("not logged in"));
}

/// A revoked login: the connection shows auth-error with the command that fixes it,
/// cached files still read, changes wait in the queue, and go up after a new login.
#[test]
fn revoked_login_keeps_serving_and_queues_until_login() {
    let rt = drive_harness::runtime();
    let h = rt.block_on(drive_harness::harness(EmulatorConfig::default(), |_| {}));
    let root = h.emu.root_id();
    h.emu.add_file(&root, "cached.txt", b"read me offline");
    let (vault, account, emu) = (h.vault.clone(), h.account.clone(), &h.emu);
    let provider: Arc<dyn Provider> = Arc::new(h.provider);
    let m = InProcessMount::new(provider, test_config(|_| {}));
    assert_eq!(fs::read(m.path("cached.txt")).unwrap(), b"read me offline");

    emu.revoke_all_refresh_tokens();
    emu.expire_all_access_tokens();
    fs::write(m.path("written-meanwhile.txt"), b"kept in the queue").unwrap();
    let vfs = m.vfs();
    wait_until("the auth error to show", Duration::from_secs(20), || {
        vfs.connection_state().0 == cloudmount::vfs::ConnectionState::AuthError
    });
    let message = vfs.connection_state().1.unwrap_or_default();
    assert!(
        message.contains("cloudmount login gdrive --name test"),
        "{message}"
    );
    // Cached data still reads; the change is queued, not parked or lost.
    assert_eq!(fs::read(m.path("cached.txt")).unwrap(), b"read me offline");
    assert!(vfs.queue.status().iter().all(|j| j.failed.is_none()));
    assert!(emu.find(&root, "written-meanwhile.txt").is_empty());

    // The user logs in again (new tokens in the vault); the queue goes through.
    let (access, refresh) = emu.issue_tokens();
    let mut t = cloudmount::accounts::StoredTokens {
        access_token: Some(cloudmount::accounts::Secret::new(access)),
        refresh_token: Some(cloudmount::accounts::Secret::new(refresh)),
        ..Default::default()
    };
    t.set_expires_in(Some(Duration::from_secs(3600)));
    vault.save(&account, &t).unwrap();
    vfs.queue.retry_failed();
    assert!(
        m.drain(Duration::from_secs(60)),
        "the queue drained after the new login"
    );
    let ids = emu.find(&root, "written-meanwhile.txt");
    assert_eq!(emu.file(&ids[0]).unwrap().content, b"kept in the queue");
    assert_eq!(
        vfs.connection_state().0,
        cloudmount::vfs::ConnectionState::Online
    );
}
