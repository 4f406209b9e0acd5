//! A Confluence site and a Jira site mounted by the real daemon from a config file, against
//! the Atlassian emulator, through the kernel: pages as Markdown and attachments as files,
//! read byte-exact (whole and by range) and found by `grep -r`; every change EROFS; an
//! edited page, a moved page and a new Jira attachment reaching the mount by polling; and
//! an OAuth (3LO) login through the CLI, then a mount through the API gateway.

#[path = "support/atlassian_emulator.rs"]
mod atlassian_emulator;
#[path = "support/atlassian_harness.rs"]
mod atlassian_harness;
mod common;
#[path = "support/emu/mod.rs"]
mod emu;

use std::fs;
use std::io::{BufRead, BufReader, Write};
use std::os::unix::fs::{FileExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use atlassian_emulator::{AtlassianConfig, AtlassianEmulator};
use atlassian_harness::{paragraph, pattern, redirect_location, token_file};
use common::{DaemonMount, TestDirs, BIN};

fn config(emu: &AtlassianEmulator, dirs: &TestDirs) -> PathBuf {
    let token = token_file(emu, dirs.tmp.path());
    let site = |kind: &str, name: &str| {
        format!(
            "[[connection]]\nname = \"{name}\"\ntype = \"{kind}\"\n[connection.settings]\n\
             site = \"{}\"\nemail = \"{}\"\ntoken_file = \"{}\"\nretry_base_delay_ms = 10\n",
            emu.site_url(),
            emu.config().email,
            token.display()
        )
    };
    let path = dirs.tmp.path().join("config.toml");
    fs::write(
        &path,
        format!(
            "poll_interval_secs = 0.5\n{}{}",
            site("confluence", "wiki"),
            site("jira", "tickets")
        ),
    )
    .unwrap();
    path
}

fn names(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("read_dir {}: {e}", dir.display()))
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    v.sort();
    v
}

fn wait_until(within: Duration, what: &str, cond: impl Fn() -> bool) {
    let start = Instant::now();
    while !cond() {
        assert!(start.elapsed() < within, "{what}: not after {within:?}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn confluence_and_jira_read_grep_refuse_changes_and_follow_edits() {
    let emu = AtlassianEmulator::start(AtlassianConfig {
        space_homepages: false,
        ..AtlassianConfig::default()
    });
    let space = emu.add_space("ENG", "Engineering");
    let home = emu.add_page(&space, None, "Home", paragraph("Start here."));
    let runbook = emu.add_page(
        &space,
        Some(&home),
        "Runbook",
        paragraph("Restart the flux capacitor."),
    );
    let spec = pattern(3 << 20, 11);
    emu.add_attachment(&runbook, "spec.bin", "application/octet-stream", &spec);
    emu.add_project("OPS", "Operations");
    let (issue, key) = emu.add_issue("OPS", "Outage report");
    let trace = pattern(700_000, 12);
    emu.add_jira_attachment(&issue, "trace.log", &trace);
    emu.add_jira_attachment(&issue, "notes.txt", b"the flux capacitor overheated\n");

    let dirs = TestDirs::new();
    let cfg = config(&emu, &dirs);
    let m = DaemonMount::start_with_config(&dirs, &cfg, &[]);
    let wiki = dirs.mnt.join("wiki/ENG Engineering");
    let tickets = dirs
        .mnt
        .join(format!("tickets/OPS Operations/{key} Outage report"));

    assert_eq!(names(&dirs.mnt), ["tickets", "wiki"]);
    assert_eq!(names(&wiki), ["Home", "Home.md"]);
    assert_eq!(
        fs::read_to_string(wiki.join("Home/Runbook.md")).unwrap(),
        "# Runbook\n\nRestart the flux capacitor.\n"
    );
    let meta = fs::metadata(wiki.join("Home/Runbook.md")).unwrap();
    assert_eq!(
        meta.len(),
        "# Runbook\n\nRestart the flux capacitor.\n".len() as u64
    );
    assert_eq!(meta.permissions().mode() & 0o222, 0, "read-only files");
    let att = wiki.join("Home/Runbook/_attachments/spec.bin");
    assert!(fs::read(&att).unwrap() == spec, "the attachment differs");
    let f = fs::File::open(&att).unwrap();
    let mut middle = vec![0u8; 100_000];
    f.read_exact_at(&mut middle, 2_000_001).unwrap();
    assert!(
        middle == spec[2_000_001..2_100_001],
        "a ranged read differs"
    );
    assert_eq!(names(&tickets), ["notes.txt", "trace.log"]);
    assert!(fs::read(tickets.join("trace.log")).unwrap() == trace);

    let out = std::process::Command::new("grep")
        .args(["-rl", "flux capacitor"])
        .arg(&dirs.mnt)
        .output()
        .unwrap();
    let mut hits: Vec<String> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| {
            l.strip_prefix(&format!("{}/", dirs.mnt.display()))
                .unwrap_or(l)
                .to_owned()
        })
        .collect();
    hits.sort();
    assert_eq!(
        hits,
        [
            format!("tickets/OPS Operations/{key} Outage report/notes.txt"),
            "wiki/ENG Engineering/Home/Runbook.md".to_owned(),
        ]
    );

    for r in [
        fs::write(wiki.join("new.md"), b"x"),
        fs::write(wiki.join("Home.md"), b"changed"),
        fs::create_dir(wiki.join("sub")),
        fs::remove_file(wiki.join("Home.md")),
        fs::rename(wiki.join("Home.md"), wiki.join("Start.md")),
        fs::remove_file(tickets.join("notes.txt")),
        fs::write(tickets.join("more.txt"), b"x"),
    ] {
        assert_eq!(r.unwrap_err().raw_os_error(), Some(libc::EROFS));
    }

    // Edits on the site reach the mount by polling, contents and sizes with them.
    emu.advance_clock(Duration::from_secs(5));
    emu.update_page(&runbook, None, Some(paragraph("Restart it twice.")));
    let runbook_md = wiki.join("Home/Runbook.md");
    wait_until(Duration::from_secs(20), "the edited page", || {
        fs::read_to_string(&runbook_md).ok().as_deref() == Some("# Runbook\n\nRestart it twice.\n")
    });
    emu.advance_clock(Duration::from_secs(5));
    emu.move_page(&runbook, None);
    wait_until(Duration::from_secs(20), "the moved page", || {
        names(&wiki) == ["Home", "Home.md", "Runbook", "Runbook.md"]
    });
    assert!(!wiki.join("Home/Runbook.md").exists());
    emu.advance_clock(Duration::from_secs(61));
    emu.add_jira_attachment(&issue, "fix.patch", b"--- a\n+++ b\n");
    wait_until(Duration::from_secs(20), "the new attachment", || {
        names(&tickets).contains(&"fix.patch".to_owned())
    });
    assert_eq!(
        fs::read(tickets.join("fix.patch")).unwrap(),
        b"--- a\n+++ b\n"
    );
    drop(m);
}

/// `login confluence --paste` against the emulator's authorization server (the test plays
/// the browser), then a mount that finds the cloud id and reads through the gateway with
/// the vault's tokens; no token in clear in the vault or in the trace-level daemon log.
#[test]
fn oauth_login_through_the_cli_then_a_mount_through_the_gateway() {
    let emu = AtlassianEmulator::start(AtlassianConfig {
        space_homepages: false,
        ..AtlassianConfig::default()
    });
    let space = emu.add_space("ENG", "Engineering");
    emu.add_page(&space, None, "Home", paragraph("Signed in with OAuth."));
    let dirs = TestDirs::new();
    let secret_file = dirs.tmp.path().join("app-secret");
    fs::write(&secret_file, &emu.config().client_secret).unwrap();
    fs::set_permissions(&secret_file, fs::Permissions::from_mode(0o600)).unwrap();
    let cfg_path = dirs.tmp.path().join("config.toml");
    fs::write(
        &cfg_path,
        format!(
            "accounts_dir = \"{accounts}\"\n[[connection]]\nname = \"wiki\"\ntype = \"confluence\"\n\
             [connection.settings]\nsite = \"{site}\"\nauth = \"oauth\"\nclient_id = \"{client}\"\n\
             client_secret_file = \"{secret}\"\nauth_url = \"{auth}\"\ntoken_url = \"{token}\"\n\
             gateway_url = \"{gateway}\"\nretry_base_delay_ms = 10\n",
            accounts = dirs.tmp.path().join("accounts").display(),
            site = emu.site_url(),
            client = emu.config().client_id,
            secret = secret_file.display(),
            auth = emu.auth_url(),
            token = emu.token_url(),
            gateway = emu.gateway_url(),
        ),
    )
    .unwrap();

    let mut login = Command::new(BIN)
        .args([
            "login",
            "confluence",
            "--name",
            "wiki",
            "--paste",
            "--config",
        ])
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
            .find(|w| w.starts_with("http://127.0.0.1") && w.contains("client_id"))
        {
            auth_url = Some(u.to_string());
        }
        if line.contains("copy that whole address") {
            break;
        }
        line.clear();
    }
    let auth_url = auth_url.expect("the login printed an authorization URL");
    for wanted in [
        "audience=api.atlassian.com",
        "prompt=consent",
        "offline_access",
        "read%3Apage%3Aconfluence",
    ] {
        assert!(auth_url.contains(wanted), "{wanted} missing: {auth_url}");
    }
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let landed = rt.block_on(redirect_location(&auth_url));
    writeln!(login.stdin.take().unwrap(), "{landed}").unwrap();
    let status = login.wait().unwrap();
    let mut rest = String::new();
    std::io::Read::read_to_string(&mut stdout, &mut rest).unwrap();
    assert!(status.success(), "login failed: {rest}");

    let daemon = DaemonMount::start_traced(&dirs, &cfg_path);
    let home = dirs.mnt.join("wiki/ENG Engineering/Home.md");
    assert_eq!(
        fs::read_to_string(&home).unwrap(),
        "# Home\n\nSigned in with OAuth.\n"
    );
    let cloud = emu.cloud_id();
    assert!(emu.requests().iter().any(|r| r
        .path
        .starts_with(&format!("/ex/confluence/{cloud}/wiki/api/v2/"))));
    let log = daemon.log.clone();
    assert!(daemon.unmount().status.success());
    let text = fs::read_to_string(&log).unwrap();
    let vault: Vec<Vec<u8>> = fs::read_dir(dirs.tmp.path().join("accounts"))
        .unwrap()
        .map(|e| fs::read(e.unwrap().path()).unwrap())
        .collect();
    let secrets = emu.secrets();
    assert!(secrets.len() >= 3, "code, tokens, verifier at least");
    for s in secrets.iter().chain([&emu.config().client_secret]) {
        assert!(
            !text.contains(s.as_str()),
            "the daemon log contains a secret"
        );
        for f in &vault {
            assert!(
                !String::from_utf8_lossy(f).contains(s.as_str()),
                "a secret in clear in the vault"
            );
        }
    }
}
