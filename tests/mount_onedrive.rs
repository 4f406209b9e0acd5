//! OneDrive (Microsoft Graph) through the kernel: the account lifecycle through the real
//! CLI (device-code login against the emulator's identity platform, a mount by the
//! daemon, logout), and Graph's own behaviour on the mounted emulator (the functional
//! suite runs over it in tests/mount_suite.rs, the provider contract in
//! tests/provider_contract.rs).

mod common;
#[path = "support/drive_emulator.rs"]
mod drive_emulator;
#[path = "support/drive_harness.rs"]
mod drive_harness;
#[path = "support/emu/mod.rs"]
mod emu;
#[path = "support/graph_emulator.rs"]
mod graph_emulator;
#[path = "support/graph_harness.rs"]
mod graph_harness;

use std::fs;
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use cloudmount::provider::Provider;
use common::*;
use graph_emulator::{Fault, GraphConfig, GraphEmulator};

/// A runtime and a Graph emulator with a provider logged in, made inside it (the
/// provider's HTTP client belongs to that runtime).
fn harness_in_runtime() -> (tokio::runtime::Runtime, graph_harness::Harness) {
    harness_in_runtime_with(GraphConfig::default(), |_| {})
}

fn harness_in_runtime_with(
    emu_cfg: GraphConfig,
    tweak: impl FnOnce(&mut cloudmount::provider::onedrive::OneDriveConfig),
) -> (tokio::runtime::Runtime, graph_harness::Harness) {
    let rt = drive_harness::runtime();
    let h = {
        let _inside = rt.enter();
        graph_harness::harness(emu_cfg, tweak)
    };
    (rt, h)
}

/// `login onedrive --device` (the test plays the user entering the code), `connections`,
/// a mount by the daemon that reads and writes, and `logout`; no token in the vault in
/// clear nor in the trace-level daemon log.
#[test]
fn device_login_mount_logout_through_the_cli() {
    let emu = GraphEmulator::start(GraphConfig::default());
    let (_, root) = emu.my_drive();
    emu.add_file(&root, "hello.txt", b"hello from OneDrive");
    let dirs = TestDirs::new();
    let authority = emu.authority("organizations");
    let cfg_path = dirs.tmp.path().join("config.toml");
    fs::write(
        &cfg_path,
        format!(
            r#"upload_delay_secs = 0.05
accounts_dir = "{accounts}"
[[connection]]
name = "work"
type = "onedrive"
settings = {{ client_id = "{client_id}", auth_url = "{authority}/authorize", token_url = "{authority}/token", device_auth_url = "{authority}/devicecode", api_base = "{api}", retry_base_delay_ms = 10 }}
"#,
            accounts = dirs.tmp.path().join("accounts").display(),
            client_id = emu.config().client_id,
            api = emu.api_base(),
        ),
    )
    .unwrap();

    let mut login = Command::new(BIN)
        .args([
            "login", "onedrive", "--name", "work", "--device", "--config",
        ])
        .arg(&cfg_path)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdout = BufReader::new(login.stdout.take().unwrap());
    let mut line = String::new();
    let mut code = None;
    while stdout.read_line(&mut line).unwrap() > 0 {
        if let Some(rest) = line.split("enter the code ").nth(1) {
            code = Some(rest.trim().to_owned());
            break;
        }
        line.clear();
    }
    let code = code.expect("the login printed a code to enter");
    assert!(line.contains("https://microsoft.com/devicelogin"), "{line}");
    emu.approve_device(&code);
    let status = login.wait().unwrap();
    let mut rest = String::new();
    std::io::Read::read_to_string(&mut stdout, &mut rest).unwrap();
    assert!(status.success(), "login failed: {rest}");
    assert!(rest.contains("logged in"), "{rest}");

    let daemon = DaemonMount::start_traced(&dirs, &cfg_path);
    assert_eq!(
        fs::read(dirs.mnt.join("work/OneDrive/hello.txt")).unwrap(),
        b"hello from OneDrive"
    );
    fs::write(
        dirs.mnt.join("work/OneDrive/from-mount.txt"),
        b"written through cloudmount",
    )
    .unwrap();
    daemon.sync();
    assert_eq!(
        emu.tree(&root)["from-mount.txt"].as_deref(),
        Some(&b"written through cloudmount"[..])
    );
    let log = daemon.log.clone();
    assert!(daemon.unmount().status.success());
    let text = fs::read_to_string(&log).unwrap();
    let vault_files: Vec<Vec<u8>> = fs::read_dir(dirs.tmp.path().join("accounts"))
        .unwrap()
        .map(|e| fs::read(e.unwrap().path()).unwrap())
        .collect();
    for s in emu.secrets() {
        assert!(!text.contains(&s), "the daemon log contains a secret");
        for f in &vault_files {
            assert!(
                !String::from_utf8_lossy(f).contains(&s),
                "a token in clear in the vault"
            );
        }
    }

    let out = Command::new(BIN)
        .args(["logout", "work", "--config"])
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

/// Graph's quirks through the mount: a file of several upload-session fragments (one of
/// them cut mid-way, so the upload resumes from `nextExpectedRanges`), reads while the
/// download links expire and while Graph throttles with and without `Retry-After`, a
/// ranged read answered whole; the remote ends up as the mount says.
#[test]
fn large_files_throttling_and_expiring_links_through_the_mount() {
    let (_rt, h) = harness_in_runtime_with(GraphConfig::default(), |c| {
        c.fragment_size = 2 * cloudmount::provider::onedrive::FRAGMENT_UNIT
    });
    let (_, root) = h.emu.my_drive();
    let emu = &h.emu;
    // On the remote before the mount first lists the root.
    let file = emu.add_file(&root, "remote.bin", &pattern(3 * 1024 * 1024, 9));
    let provider: Arc<dyn Provider> = Arc::new(h.provider);
    let m = InProcessMount::new(provider, test_config(|_| {}));

    // 5 MiB: above the 4 MiB simple-upload limit, so an upload session of 8 fragments.
    let big = pattern(5 * 1024 * 1024 + 123, 7);
    emu.inject(Fault::DropFragmentAfter(100_000), 1);
    fs::write(m.path("big.bin"), &big).unwrap();
    assert!(
        m.drain(Duration::from_secs(60)),
        "{:?}",
        m.vfs().queue.status()
    );
    assert!(
        emu.tree(&root)["big.bin"].as_deref() == Some(&big[..]),
        "remote big.bin"
    );
    assert!(emu.stats().fragments >= 8);
    assert_eq!(emu.open_upload_sessions(), 0);

    // Cold reads through links that die on first use (the provider fetches new ones),
    // throttling, and a range answered whole.
    emu.inject(Fault::ExpireLinkOnUse, 2);
    emu.inject(
        Fault::Throttle {
            status: 429,
            retry_after: Some(1),
        },
        1,
    );
    emu.inject(
        Fault::Throttle {
            status: 503,
            retry_after: None,
        },
        1,
    );
    emu.set_ignore_range_every(Some(3));
    let want = emu.item(&file).unwrap().content;
    assert!(
        fs::read(m.path("remote.bin")).unwrap() == want,
        "remote.bin read back"
    );
    assert!(emu.stats().throttled >= 2);
    assert_eq!(emu.pending_faults(), 0, "every injected fault was met");
}

/// Remote changes come through Graph's delta feed, with its quirks: items without paths
/// (placed by their parent's id), each repeated, a folder renamed without its children in
/// the feed (they follow it), a delete without a name (Business), and a 410 resync in
/// the middle. Listings never expire here, so only the feed can bring the changes; the
/// test polls by hand (what the daemon's poller does every `poll_interval_secs`).
#[test]
fn remote_changes_arrive_through_delta() {
    // The runtime lives as long as the test: the provider's connections belong to it.
    let (_rt, h) = harness_in_runtime();
    let (_, root) = h.emu.my_drive();
    let emu = &h.emu;
    let dir = emu.add_folder(&root, "dir");
    emu.add_file(&dir, "inner.txt", b"inner");
    let doomed = emu.add_file(&root, "doomed.txt", b"doomed");
    let edited = emu.add_file(&root, "edited.txt", b"v1");
    // A folder someone shared, added to My files: its content is in the sharer's drive,
    // which this drive's paths do not reach — not shown (neither as a file nor a folder).
    emu.add_shortcut(&root, "Ann", "Shared with me");
    let provider: Arc<dyn Provider> = Arc::new(h.provider);
    let m = InProcessMount::new(provider, test_config(|c| c.dir_ttl_secs = 3600.0));
    let vfs = m.vfs();
    let poll = || m.rt.block_on(vfs.poll_once()).unwrap();
    assert_eq!(fs::read(m.path("dir/inner.txt")).unwrap(), b"inner");
    assert_eq!(fs::read(m.path("edited.txt")).unwrap(), b"v1");
    assert!(m.path("doomed.txt").exists());
    poll(); // takes the cursor (token=latest)

    emu.set_repeat_in_delta(true);
    emu.set_content(&edited, b"version 2");
    emu.rename(&dir, "renamed");
    emu.delete(&doomed);
    emu.add_file(&root, "new.txt", b"new");
    emu.add_shortcut(&root, "Bob", "Another shared folder");
    poll();
    assert_eq!(fs::read(m.path("edited.txt")).unwrap(), b"version 2");
    assert_eq!(fs::read(m.path("renamed/inner.txt")).unwrap(), b"inner");
    assert!(!m.path("dir").exists(), "the old folder name is gone");
    assert!(!m.path("doomed.txt").exists(), "the deleted file is gone");
    assert_eq!(fs::read(m.path("new.txt")).unwrap(), b"new");
    assert_eq!(
        names_in(m.mnt()),
        vec!["edited.txt", "new.txt", "renamed"],
        "shortcuts into other drives are not shown"
    );

    // The feed forgets our place (410): the mount starts over (new cursor, listings
    // fetched again) and the feed, not a listing, brings what changes after.
    emu.inject(Fault::ResyncDelta, 1);
    poll();
    assert_eq!(
        fs::read_dir(m.mnt()).unwrap().count(),
        3,
        "listed again after the 410"
    );
    emu.add_file(&root, "after-resync.txt", b"after");
    poll();
    assert_eq!(fs::read(m.path("after-resync.txt")).unwrap(), b"after");
    assert!(emu.stats().delta_calls >= 4);
}

/// OneDrive keeps versions itself: `versions` lists Graph's history (no copies of ours on
/// the drive), any version reads back through its download link, and a restore makes the
/// old content current again (a new version, as Graph's restore does).
#[test]
fn versions_come_from_onedrive_itself() {
    // The runtime lives as long as the test: the provider's connections belong to it.
    let (_rt, h) = harness_in_runtime();
    let (_, root) = h.emu.my_drive();
    let emu = &h.emu;
    let provider: Arc<dyn Provider> = Arc::new(h.provider);
    let m = InProcessMount::new(provider, test_config(|_| {}));
    let contents: [&[u8]; 3] = [b"first", b"second version", b"third and last"];
    for c in contents {
        fs::write(m.path("doc.txt"), c).unwrap();
        assert!(m.drain(Duration::from_secs(30)));
        // Versions are told apart by their times.
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(
        emu.tree(&root).keys().collect::<Vec<_>>(),
        ["doc.txt"],
        "no version copies on the drive"
    );
    let vfs = m.vfs();
    let list = m.rt.block_on(vfs.versions.list("/doc.txt")).unwrap();
    assert_eq!(
        list.iter().map(|v| (v.number, v.size)).collect::<Vec<_>>(),
        vec![(1, 5), (2, 14), (3, 14)]
    );
    for (v, want) in list.iter().zip(contents) {
        assert_eq!(m.rt.block_on(vfs.versions.read(v)).unwrap(), want);
    }
    m.rt.block_on(vfs.restore_version("/doc.txt", 1)).unwrap();
    assert_eq!(fs::read(m.path("doc.txt")).unwrap(), b"first");
    assert!(m.drain(Duration::from_secs(30)));
    assert_eq!(emu.tree(&root)["doc.txt"].as_deref(), Some(&b"first"[..]));
    let list = m.rt.block_on(vfs.versions.list("/doc.txt")).unwrap();
    assert_eq!(list.len(), 4);
    assert_eq!(
        m.rt.block_on(vfs.versions.read(&list[3])).unwrap(),
        b"first"
    );
}

/// Graph's `replace` would replace a whole folder: a move over an existing entry is
/// decided by the provider as rename(2) does, and nothing below a folder is ever lost.
#[tokio::test]
async fn moves_never_replace_a_folder_with_contents() {
    let h = graph_harness::harness(GraphConfig::default(), |_| {});
    let (_, root) = h.emu.my_drive();
    let p = &h.provider;
    let full = h.emu.add_folder(&root, "full");
    h.emu.add_file(&full, "keep.txt", b"keep");
    h.emu.add_folder(&root, "empty");
    h.emu.add_folder(&root, "src");
    h.emu.add_file(&root, "f.txt", b"f");
    let err = p.rename("/f.txt", "/full", true).await.unwrap_err();
    assert!(
        matches!(err, cloudmount::provider::ProviderError::IsADirectory(_)),
        "{err:?}"
    );
    let err = p.rename("/src", "/full", true).await.unwrap_err();
    assert!(
        matches!(
            err,
            cloudmount::provider::ProviderError::DirectoryNotEmpty(_)
        ),
        "{err:?}"
    );
    let err = p.rename("/src", "/f.txt", true).await.unwrap_err();
    assert!(
        matches!(err, cloudmount::provider::ProviderError::NotADirectory(_)),
        "{err:?}"
    );
    let err = p.rename("/src", "/empty", false).await.unwrap_err();
    assert!(
        matches!(err, cloudmount::provider::ProviderError::AlreadyExists(_)),
        "{err:?}"
    );
    p.rename("/src", "/empty", true).await.unwrap();
    let err = p.delete("/full").await.unwrap_err();
    assert!(
        matches!(
            err,
            cloudmount::provider::ProviderError::DirectoryNotEmpty(_)
        ),
        "{err:?}"
    );
    let err = p.copy("/f.txt", "/F.TXT").await.unwrap_err();
    assert!(
        matches!(err, cloudmount::provider::ProviderError::AlreadyExists(_)),
        "{err:?}"
    );
    let tree = h.emu.tree(&root);
    assert_eq!(tree["full/keep.txt"].as_deref(), Some(&b"keep"[..]));
    assert_eq!(tree["f.txt"].as_deref(), Some(&b"f"[..]));
    assert!(
        tree.contains_key("empty") && !tree.contains_key("src"),
        "{tree:?}"
    );
}

/// The account's drives side by side, as the registry builds them without a `drive_id`;
/// the list of drives is asked again when older than `refresh_secs`.
fn account_drives(
    own: cloudmount::provider::onedrive::OneDriveProvider,
    names_file: Option<std::path::PathBuf>,
    refresh_secs: u64,
) -> Arc<dyn Provider> {
    use cloudmount::provider::kit::drive_set::DriveSet;
    use cloudmount::provider::onedrive::drives::GraphDrives;
    Arc::new(
        DriveSet::new(
            Arc::new(GraphDrives::new(own, names_file)),
            Duration::from_secs(refresh_secs),
        )
        .unwrap(),
    )
}

/// Sorted names in a folder of the mount.
fn names_in(p: &std::path::Path) -> Vec<String> {
    let mut v: Vec<String> = fs::read_dir(p)
        .unwrap_or_else(|e| panic!("list {}: {e}", p.display()))
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    v.sort();
    v
}

fn errno_of(r: std::io::Result<impl std::fmt::Debug>) -> i32 {
    r.expect_err("the operation should fail")
        .raw_os_error()
        .unwrap()
}

/// A work account's drives side by side under one connection, as the registry builds it
/// when no `drive_id` is set: `OneDrive/` and `SharePoint/<site>/<library>/` for the
/// followed sites and the sites named in the settings. Each library is its own drive on
/// the remote; the folders above the drives cannot be changed (EACCES), a move between
/// drives is EXDEV (and `mv` copies instead); remote changes in a library and newly
/// followed or unfollowed sites come through the change feed.
#[test]
fn onedrive_and_sharepoint_libraries_side_by_side() {
    let (rt, h) = harness_in_runtime_with(GraphConfig::default(), |c| {
        // Not followed: shown because the settings name it.
        c.sharepoint_sites = vec!["https://contoso.sharepoint.com/sites/Archive".into()];
    });
    let emu = &h.emu;
    let (_, own) = emu.my_drive();
    emu.add_file(&own, "mine.txt", b"my own file");
    let team = emu.add_site("Team", &["Documents", "Reports"]);
    let archive = emu.add_site("Archive", &["Documents"]);
    emu.set_followed("Archive", false);
    emu.add_site("Team", &["Documents"]); // a second site of the same name
    let (docs, reports) = (emu.drive_root(&team[0]), emu.drive_root(&team[1]));
    let archived = emu.drive_root(&archive[0]);
    emu.add_file(&docs, "plan.txt", b"the plan");
    let names_file = h.dir.path().join("sharepoint-names.json");

    let provider = account_drives(h.provider, Some(names_file.clone()), 0); // asked again at every listing of the layout
    let m = InProcessMount::new(provider, test_config(|c| c.dir_ttl_secs = 3600.0));
    let ls = |p: &str| names_in(&m.path(p));
    assert_eq!(ls(""), vec!["OneDrive", "SharePoint"]);
    assert_eq!(ls("SharePoint"), vec!["Archive", "Team", "Team (2)"]);
    // Equal site names are told apart in id order: which one is "Team" is not known here.
    let team_dir = if ls("SharePoint/Team").len() == 2 {
        "SharePoint/Team"
    } else {
        "SharePoint/Team (2)"
    };
    let other = if team_dir == "SharePoint/Team" {
        "SharePoint/Team (2)"
    } else {
        "SharePoint/Team"
    };
    assert_eq!(ls(team_dir), vec!["Documents", "Reports"]);
    assert_eq!(ls(other), vec!["Documents"]);
    let team_path = |rel: &str| m.path(&format!("{team_dir}/{rel}"));
    assert_eq!(
        fs::read(m.path("OneDrive/mine.txt")).unwrap(),
        b"my own file"
    );
    assert_eq!(
        fs::read(team_path("Documents/plan.txt")).unwrap(),
        b"the plan"
    );
    use std::os::unix::fs::PermissionsExt;
    let mode = fs::metadata(m.path("SharePoint"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o555, "the layout is read-only to the kernel");

    // Writes land in the right drive, under the right name.
    fs::write(m.path("OneDrive/new.txt"), b"new in my drive").unwrap();
    fs::write(team_path("Reports/q1.txt"), b"first quarter").unwrap();
    fs::create_dir(m.path("SharePoint/Archive/Documents/2025")).unwrap();
    fs::write(m.path("SharePoint/Archive/Documents/2025/old.txt"), b"old").unwrap();
    fs::rename(
        team_path("Documents/plan.txt"),
        team_path("Documents/plan-v2.txt"),
    )
    .unwrap();

    // The layout cannot be changed; drives do not share moves.
    assert_eq!(errno_of(fs::create_dir(m.path("Extra"))), libc::EACCES);
    assert_eq!(
        errno_of(fs::write(m.path("SharePoint/notes.txt"), b"x")),
        libc::EACCES
    );
    assert_eq!(errno_of(fs::remove_dir(m.path("OneDrive"))), libc::EACCES);
    assert_eq!(
        errno_of(fs::rename(m.path(team_dir), m.path("SharePoint/Crew"))),
        libc::EACCES
    );
    assert_eq!(
        errno_of(fs::rename(
            m.path("OneDrive/mine.txt"),
            team_path("Reports/mine.txt")
        )),
        libc::EXDEV
    );
    // mv copies across the drives when rename(2) says EXDEV.
    let out = Command::new("mv")
        .arg(m.path("OneDrive/mine.txt"))
        .arg(team_path("Reports/"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        m.drain(Duration::from_secs(60)),
        "{:?}",
        m.vfs().queue.status()
    );

    let file = |c: &[u8]| Some(c.to_vec());
    assert_eq!(
        emu.tree(&own),
        [("new.txt".to_string(), file(b"new in my drive"))].into()
    );
    assert_eq!(
        emu.tree(&docs),
        [("plan-v2.txt".to_string(), file(b"the plan"))].into()
    );
    assert_eq!(
        emu.tree(&reports),
        [
            ("mine.txt".to_string(), file(b"my own file")),
            ("q1.txt".to_string(), file(b"first quarter")),
        ]
        .into()
    );
    assert_eq!(
        emu.tree(&archived),
        [
            ("2025".to_string(), None),
            ("2025/old.txt".to_string(), file(b"old")),
        ]
        .into()
    );
    assert_eq!(ls(""), vec!["OneDrive", "SharePoint"], "nothing left over");

    // Remote changes: a file added in a library (its feed), a site followed, then left.
    let vfs = m.vfs();
    let poll = || m.rt.block_on(vfs.poll_once()).unwrap();
    poll(); // takes the cursors
    emu.add_file(&reports, "from-web.txt", b"added in the browser");
    emu.add_site("Later", &["Shared Documents"]);
    poll();
    assert_eq!(
        fs::read(team_path("Reports/from-web.txt")).unwrap(),
        b"added in the browser"
    );
    assert_eq!(
        ls("SharePoint"),
        vec!["Archive", "Later", "Team", "Team (2)"]
    );
    assert_eq!(ls("SharePoint/Later"), vec!["Shared Documents"]);
    emu.set_followed("Later", false);
    poll();
    assert_eq!(ls("SharePoint"), vec!["Archive", "Team", "Team (2)"]);
    // One more site of that name: the shown ones keep their names (whatever its id), so
    // every place still means the same library.
    emu.add_site("Team", &["Wiki"]);
    poll();
    assert_eq!(
        ls("SharePoint"),
        vec!["Archive", "Team", "Team (2)", "Team (3)"]
    );
    assert_eq!(ls(team_dir), vec!["Documents", "Reports"]);
    assert_eq!(ls("SharePoint/Team (3)"), vec!["Wiki"]);

    // A restart: the mount knows the folders from its store, the new provider has not
    // asked Graph for the sites yet — the layout is still refused, and a move between
    // drives still EXDEV, not a queued move that could never land.
    drop(vfs);
    let old = m.unmount();
    // The store and cache as a restart finds them, in folders of their own (the in-process
    // mount's store is not always closed yet when `unmount` returns; its lock would refuse
    // a second opening in this process).
    let dirs = TestDirs::new();
    for (from, to) in [(&old.state, &dirs.state), (&old.cache, &dirs.cache)] {
        let st = Command::new("cp")
            .arg("-a")
            .arg(from)
            .arg(to)
            .status()
            .unwrap();
        assert!(st.success(), "copy {}", from.display());
    }
    let own_again = {
        let _inside = rt.enter();
        cloudmount::provider::onedrive::OneDriveProvider::new(
            cloudmount::provider::onedrive::OneDriveConfig {
                api_base: emu.api_base(),
                retry_base_delay_ms: 10,
                max_requests_per_second: 0.0,
                ..Default::default()
            },
            h.tokens.clone(),
        )
        .unwrap()
    };
    let provider = account_drives(own_again, Some(names_file.clone()), 300);
    let before = emu.requests().len();
    let m = InProcessMount::with_dirs(dirs, provider, test_config(|c| c.dir_ttl_secs = 3600.0));
    // The connection's own folder is known to hold drives without asking (offline too).
    assert_eq!(errno_of(fs::write(m.path("x.txt"), b"x")), libc::EACCES);
    assert_eq!(emu.requests().len(), before, "answered without the network");
    assert_eq!(
        errno_of(fs::write(m.path("SharePoint/notes.txt"), b"x")),
        libc::EACCES
    );
    assert_eq!(
        errno_of(fs::rename(
            m.path("OneDrive/new.txt"),
            m.path(&format!("{team_dir}/Reports/new.txt"))
        )),
        libc::EXDEV
    );
    assert!(
        emu.requests()[before..]
            .iter()
            .any(|r| r.path.contains("followedSites")),
        "the sites were asked for to answer"
    );
    // The names were kept: the same place is the same library after the restart.
    fs::write(
        m.path(&format!("{team_dir}/Reports/after-restart.txt")),
        b"still the right library",
    )
    .unwrap();
    assert!(m.drain(Duration::from_secs(30)));
    assert_eq!(
        emu.tree(&reports)["after-restart.txt"].as_deref(),
        Some(&b"still the right library"[..])
    );
    assert_eq!(
        emu.tree(&own),
        [("new.txt".to_string(), file(b"new in my drive"))].into(),
        "nothing moved"
    );
}

/// A personal account has no SharePoint: `OneDrive/` and `Shared/<folder>/` for the folders
/// others shared that the user added to their drive, each in its owner's drive; the
/// followed sites are never asked for (Graph refuses them for personal accounts).
#[test]
fn a_personal_account_shows_its_own_drive_and_shared_folders() {
    // OneDrive Personal as it is since 2025: shortcuts only with the Prefer header, the
    // owner's drive id without its leading zero.
    let (_rt, h) = harness_in_runtime_with(
        GraphConfig {
            flavour: graph_emulator::Flavour::Personal,
            personal_2025: true,
            ..GraphConfig::default()
        },
        |_| {},
    );
    let (_, own) = h.emu.my_drive();
    let emu = &h.emu;
    emu.add_file(&own, "photo.jpg", b"jpeg");
    let shared = emu.add_shortcut(&own, "Ann", "Holiday photos");
    emu.add_file(&shared, "beach.jpg", b"sand");
    let provider = account_drives(h.provider, None, 300);
    let m = InProcessMount::new(provider, test_config(|_| {}));
    assert_eq!(names_in(m.mnt()), vec!["OneDrive", "Shared"]);
    assert_eq!(names_in(&m.path("OneDrive")), vec!["photo.jpg"]);
    assert_eq!(fs::read(m.path("OneDrive/photo.jpg")).unwrap(), b"jpeg");
    // The shared folder, from its owner's drive: read, written, and nothing in OneDrive/.
    assert_eq!(names_in(&m.path("Shared")), vec!["Holiday photos"]);
    assert_eq!(
        fs::read(m.path("Shared/Holiday photos/beach.jpg")).unwrap(),
        b"sand"
    );
    fs::write(m.path("Shared/Holiday photos/from-me.txt"), b"thanks").unwrap();
    assert_eq!(
        errno_of(fs::create_dir(m.path("Shared/Mine"))),
        libc::EACCES
    );
    assert!(
        m.drain(Duration::from_secs(60)),
        "{:?}",
        m.vfs().queue.status()
    );
    let file = |c: &[u8]| Some(c.to_vec());
    assert_eq!(
        emu.tree(&shared),
        [
            ("beach.jpg".to_string(), file(b"sand")),
            ("from-me.txt".to_string(), file(b"thanks")),
        ]
        .into()
    );
    // The user's drive: the photo, and the shortcut left as it was.
    let mut mine = emu.tree(&own);
    assert!(
        mine.remove("Holiday photos").is_some(),
        "the shortcut stays"
    );
    assert_eq!(mine, [("photo.jpg".to_string(), file(b"jpeg"))].into());
    assert!(
        !emu.requests()
            .iter()
            .any(|r| r.path.contains("followedSites")),
        "no SharePoint request for a personal account"
    );
}

/// Names OneDrive refuses are stored under full-width look-alikes and show as themselves
/// (`10:30?.txt` is `10：30？.txt` on OneDrive, a trailing dot or space has its own), look-alikes
/// typed on the web show with the ASCII character and stay reachable, names that could not
/// show as themselves or that OneDrive reserves are EINVAL, and a name that differs from
/// another only in case is EEXIST (a case-only rename is fine).
#[test]
fn names_onedrive_refuses_are_mapped_reversibly() {
    // The runtime lives as long as the test: the provider's connections belong to it.
    let (_rt, h) = harness_in_runtime();
    let (_, root) = h.emu.my_drive();
    let emu = &h.emu;
    emu.add_file(&root, "会議\u{FF1A}メモ.txt", b"typed on the web");
    emu.add_file(&root, "plan.txt", b"plan");
    let provider: Arc<dyn Provider> = Arc::new(h.provider);
    let m = InProcessMount::new(provider, test_config(|c| c.dir_ttl_secs = 3600.0));

    assert_eq!(
        names_in(m.mnt()),
        vec!["plan.txt", "会議:メモ.txt"],
        "the web's look-alike shows as ASCII"
    );
    assert_eq!(
        fs::read(m.path("会議:メモ.txt")).unwrap(),
        b"typed on the web"
    );
    fs::write(m.path("10:30 meeting?.txt"), b"agenda").unwrap();
    fs::create_dir(m.path("a|b")).unwrap();
    fs::write(m.path("a|b/\"quoted\" <x>*.txt"), b"inside").unwrap();
    fs::write(m.path("notes."), b"trailing dot").unwrap();
    fs::write(m.path(" spaced "), b"spaces at both ends").unwrap();
    fs::rename(m.path("会議:メモ.txt"), m.path("会議:議事録.txt")).unwrap();
    fs::rename(m.path("plan.txt"), m.path("Plan.txt")).unwrap(); // case only

    // Chinese punctuation that is part of the name is kept as it is.
    fs::write(m.path("第一章\u{FF1A}简介.txt"), b"chapter one").unwrap();
    for bad in [
        "\u{2420}x",
        "x\u{FF0E}",
        "CON",
        "desktop.ini",
        "~$lock.docx",
    ] {
        assert_eq!(
            errno_of(fs::write(m.path(bad), b"x")),
            libc::EINVAL,
            "{bad:?}"
        );
    }
    assert_eq!(errno_of(fs::write(m.path("PLAN.TXT"), b"x")), libc::EEXIST);
    assert_eq!(errno_of(fs::create_dir(m.path("plan.TXT"))), libc::EEXIST);

    assert!(
        m.drain(Duration::from_secs(60)),
        "{:?}",
        m.vfs().queue.status()
    );
    let file = |c: &[u8]| Some(c.to_vec());
    assert_eq!(
        emu.tree(&root),
        [
            (
                "10\u{FF1A}30 meeting\u{FF1F}.txt".to_string(),
                file(b"agenda")
            ),
            ("Plan.txt".to_string(), file(b"plan")),
            ("a\u{FF5C}b".to_string(), None),
            (
                "a\u{FF5C}b/\u{FF02}quoted\u{FF02} \u{FF1C}x\u{FF1E}\u{FF0A}.txt".to_string(),
                file(b"inside")
            ),
            ("notes\u{FF0E}".to_string(), file(b"trailing dot")),
            (
                "\u{2420}spaced\u{2420}".to_string(),
                file(b"spaces at both ends")
            ),
            (
                "会議\u{FF1A}議事録.txt".to_string(),
                file(b"typed on the web")
            ),
            (
                "第一章\u{201B}\u{FF1A}简介.txt".to_string(),
                file(b"chapter one")
            ),
        ]
        .into(),
        "what OneDrive holds"
    );
    // A name freed and taken again in another case: the delete lands first, so the new
    // file is not met by the old one under its name (no conflict copy, nothing left).
    // Graph throttles the delete's first request (waited out for a second inside the
    // job): the upload must wait for it rather than meet the old file.
    emu.inject(
        Fault::Throttle {
            status: 503,
            retry_after: Some(1),
        },
        1,
    );
    fs::remove_file(m.path("Plan.txt")).unwrap();
    fs::write(m.path("PLAN.TXT"), b"new plan").unwrap();
    assert!(
        m.drain(Duration::from_secs(60)),
        "{:?}",
        m.vfs().queue.status()
    );
    let tree = emu.tree(&root);
    let plans: Vec<&String> = tree
        .keys()
        .filter(|k| k.to_lowercase().starts_with("plan"))
        .collect();
    assert_eq!(plans, vec!["PLAN.TXT"], "{tree:?}");
    assert_eq!(tree["PLAN.TXT"].as_deref(), Some(&b"new plan"[..]));
    // A change made on the web comes through the feed under the mount's name.
    let vfs = m.vfs();
    let poll = || m.rt.block_on(vfs.poll_once()).unwrap();
    poll();
    emu.add_file(&root, "web\u{FF1F}.txt", b"asked on the web");
    poll();
    assert_eq!(fs::read(m.path("web?.txt")).unwrap(), b"asked on the web");
    assert_eq!(
        names_in(m.mnt()),
        vec![
            " spaced ",
            "10:30 meeting?.txt",
            "PLAN.TXT",
            "a|b",
            "notes.",
            "web?.txt",
            "会議:議事録.txt",
            "第一章\u{FF1A}简介.txt"
        ]
    );
}

/// A work account's "Add shortcut to My files" folders (listed only with
/// `Prefer: Include-Feature=AddToOneDrive`) under `Shared/`: read, renamed in, written to —
/// all in the owner's drive — and a shortcut added while mounted announced by the feed.
#[test]
fn a_work_accounts_shortcuts_show_under_shared() {
    let (_rt, h) = harness_in_runtime();
    let (_, own) = h.emu.my_drive();
    let emu = &h.emu;
    let budget = emu.add_shortcut(&own, "Carol", "Budget");
    emu.add_file(&budget, "q1.xlsx", b"numbers");
    let provider = account_drives(h.provider, None, 0); // asked again whenever the layout is looked at
    let m = InProcessMount::new(provider, test_config(|c| c.dir_ttl_secs = 3600.0));
    assert_eq!(names_in(m.mnt()), vec!["OneDrive", "Shared"]);
    assert!(
        names_in(&m.path("OneDrive")).is_empty(),
        "the shortcut is not here"
    );
    assert_eq!(
        fs::read(m.path("Shared/Budget/q1.xlsx")).unwrap(),
        b"numbers"
    );
    fs::rename(
        m.path("Shared/Budget/q1.xlsx"),
        m.path("Shared/Budget/q1-final.xlsx"),
    )
    .unwrap();
    fs::create_dir(m.path("Shared/Budget/2027")).unwrap();
    fs::write(m.path("Shared/Budget/2027/plan.txt"), b"plan").unwrap();
    fs::copy(
        m.path("Shared/Budget/q1-final.xlsx"),
        m.path("Shared/Budget/2027/q1-copy.xlsx"),
    )
    .unwrap();
    assert!(
        m.drain(Duration::from_secs(60)),
        "{:?}",
        m.vfs().queue.status()
    );
    let file = |c: &[u8]| Some(c.to_vec());
    assert_eq!(
        emu.tree(&budget),
        [
            ("2027".to_string(), None),
            ("2027/plan.txt".to_string(), file(b"plan")),
            ("2027/q1-copy.xlsx".to_string(), file(b"numbers")),
            ("q1-final.xlsx".to_string(), file(b"numbers")),
        ]
        .into(),
        "everything landed in the owner's folder"
    );
    let mut mine = emu.tree(&own);
    assert!(mine.remove("Budget").is_some(), "the shortcut stays");
    assert!(
        mine.is_empty(),
        "nothing landed in the user's own drive: {mine:?}"
    );

    let vfs = m.vfs();
    let poll = || m.rt.block_on(vfs.poll_once()).unwrap();
    poll(); // takes the cursors
    emu.add_shortcut(&own, "Dan", "Minutes");
    poll();
    assert_eq!(names_in(&m.path("Shared")), vec!["Budget", "Minutes"]);
}
