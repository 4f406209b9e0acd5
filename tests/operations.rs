//! What an operator relies on: status, metrics, pinning for offline use, bandwidth limits,
//! and logs that never contain secrets.

mod common;
#[path = "support/webdav_servers.rs"]
mod webdav_servers;

use std::fs;
use std::io::{Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::*;

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn http_get(addr: &str, path: &str) -> String {
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    s.write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes())
        .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    out
}

fn write_config(dirs: &TestDirs, extra: &str) -> std::path::PathBuf {
    let cfg = dirs.tmp.path().join("config.toml");
    fs::write(
        &cfg,
        format!(
            "upload_delay_secs = 0.05\n{extra}\n[[connection]]\nname = \"files\"\ntype = \"local\"\npath = \"{}\"\n",
            dirs.cloud.display()
        ),
    )
    .unwrap();
    cfg
}

fn start_with_config(
    dirs: &TestDirs,
    cfg: &std::path::Path,
    log: &std::path::Path,
    extra_args: &[&str],
) -> std::process::Child {
    let child = Command::new(BIN)
        .arg("mount")
        .arg(&dirs.mnt)
        .arg("--config")
        .arg(cfg)
        .arg("--state-dir")
        .arg(&dirs.state)
        .arg("--cache-dir")
        .arg(&dirs.cache)
        .args(["--foreground", "-vv", "--log-file"])
        .arg(log)
        .args(extra_args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    wait_until("mount", Duration::from_secs(20), || is_mounted(&dirs.mnt));
    child
}

fn stop(mut child: std::process::Child, dirs: &TestDirs) {
    let out = Command::new(BIN)
        .arg("unmount")
        .arg(&dirs.mnt)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let _ = child.wait();
}

#[test]
fn status_json_metrics_and_pin() {
    let dirs = TestDirs::new();
    fs::write(dirs.cloud.join("big.bin"), pattern(6 << 20, 7)).unwrap();
    fs::create_dir(dirs.cloud.join("album")).unwrap();
    for i in 0..3 {
        fs::write(
            dirs.cloud.join(format!("album/{i}.jpg")),
            pattern(100_000, i),
        )
        .unwrap();
    }
    let port = free_port();
    let cfg = write_config(
        &dirs,
        &format!(
            "metrics_addr = \"127.0.0.1:{port}\"\ncache_size = \"4MiB\"\nchunk_size = \"1MiB\""
        ),
    );
    let log = dirs.tmp.path().join("daemon.log");
    let child = start_with_config(&dirs, &cfg, &log, &[]);
    let _guard = scopeguard_unmount(&dirs.mnt);
    let mnt = dirs.mnt.join("files");

    // Before pinning, nothing is cached.
    assert_eq!(
        xattr(&mnt.join("big.bin"), "user.cloudmount.state"),
        "remote"
    );
    let out = Command::new(BIN)
        .arg("pin")
        .arg(mnt.join("big.bin"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("1 file(s)"));
    let out = Command::new(BIN)
        .arg("pin")
        .arg(mnt.join("album"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("3 file(s)"));
    // Pinned content stays whole although it is larger than the 4 MiB quota.
    assert_eq!(
        xattr(&mnt.join("big.bin"), "user.cloudmount.state"),
        "cached"
    );
    assert_eq!(
        xattr(&mnt.join("big.bin"), "user.cloudmount.cached_bytes"),
        (6u64 << 20).to_string()
    );
    assert_eq!(
        sha256(&fs::read(mnt.join("big.bin")).unwrap()),
        sha256(&pattern(6 << 20, 7))
    );

    fs::write(mnt.join("new.txt"), b"status me").unwrap();
    let out = Command::new(BIN)
        .arg("sync")
        .arg(&dirs.mnt)
        .output()
        .unwrap();
    assert!(out.status.success());
    let out = Command::new(BIN)
        .args(["status", "--json"])
        .arg(&dirs.mnt)
        .output()
        .unwrap();
    assert!(out.status.success());
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let c = &v[0]["connections"][0];
    assert_eq!(c["name"], "files");
    assert_eq!(c["state"], "Online");
    assert_eq!(c["queue"]["pending"], 0);
    assert!(c["queue"]["completed"].as_u64().unwrap() >= 1);
    assert_eq!(c["cache"]["quota"], 4 << 20);
    assert!(c["cache"]["used"].as_u64().unwrap() >= 6 << 20);
    assert_eq!(c["transfers"]["max"], 32);

    let metrics = http_get(&format!("127.0.0.1:{port}"), "/metrics");
    assert!(metrics.starts_with("HTTP/1.1 200"), "{metrics}");
    assert!(metrics.contains("cloudmount_requests_total{connection=\"files\",provider=\"local\",op=\"read\",outcome=\"ok\"}"));
    assert!(metrics.contains("cloudmount_requests_total{connection=\"files\",provider=\"local\",op=\"upload\",outcome=\"ok\"} 1"));
    let down: u64 = metrics
        .lines()
        .find(|l| l.starts_with("cloudmount_bytes_total{connection=\"files\",direction=\"down\"}"))
        .and_then(|l| l.rsplit(' ').next())
        .unwrap()
        .parse()
        .unwrap();
    assert!(down >= (6 << 20) + 300_000, "bytes down {down}");
    assert!(metrics.contains("cloudmount_queue_jobs{connection=\"files\",state=\"pending\"} 0"));
    assert!(metrics.contains(
        "cloudmount_request_duration_seconds_bucket{connection=\"files\",op=\"read\",le=\"+Inf\"}"
    ));
    assert!(http_get(&format!("127.0.0.1:{port}"), "/other").starts_with("HTTP/1.1 404"));
    stop(child, &dirs);
}

#[test]
fn download_bandwidth_limit_is_respected() {
    let dirs = TestDirs::new();
    let data = pattern(3 << 20, 11);
    fs::write(dirs.cloud.join("file.bin"), &data).unwrap();
    let cfg = write_config(&dirs, "download_limit = \"1MiB\"\nchunk_size = \"256KiB\"");
    let log = dirs.tmp.path().join("daemon.log");
    let child = start_with_config(&dirs, &cfg, &log, &[]);
    let _guard = scopeguard_unmount(&dirs.mnt);
    let started = Instant::now();
    let read = fs::read(dirs.mnt.join("files/file.bin")).unwrap();
    let took = started.elapsed();
    assert_eq!(sha256(&read), sha256(&data));
    // 3 MiB at 1 MiB/s with a one-second bucket: at least two seconds.
    assert!(
        took >= Duration::from_millis(1800),
        "3 MiB read in {took:?} despite a 1 MiB/s limit"
    );
    let out = Command::new(BIN)
        .args(["status", "--json"])
        .arg(&dirs.mnt)
        .output()
        .unwrap();
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        v[0]["connections"][0]["transfers"]["download_limit"],
        1 << 20
    );
    stop(child, &dirs);
}

/// A whole session over an authenticated WebDAV server, logged at debug level: neither
/// the password nor the Authorization header value may appear anywhere in the log.
#[test]
fn logs_never_contain_the_password() {
    let dirs = TestDirs::new();
    let password = "s3cr3t-Pa55word-never-logged";
    let server = webdav_servers::start_rclone_webdav_with_auth(&dirs.cloud, "alice", password);
    let pass_file = dirs.tmp.path().join("dav.pass");
    fs::write(&pass_file, format!("{password}\n")).unwrap();
    fs::set_permissions(&pass_file, fs::Permissions::from_mode(0o644)).unwrap();
    let cfg = dirs.tmp.path().join("config.toml");
    fs::write(
        &cfg,
        format!(
            "upload_delay_secs = 0.05\n[[connection]]\nname = \"dav\"\ntype = \"webdav\"\nsettings = {{ url = \"{}\", user = \"alice\", password_file = \"{}\" }}\n",
            server.url,
            pass_file.display()
        ),
    )
    .unwrap();
    // A secrets file others can read is refused, with the fix in the message.
    let out = Command::new(BIN)
        .arg("mount")
        .arg(&dirs.mnt)
        .arg("--config")
        .arg(&cfg)
        .arg("--state-dir")
        .arg(&dirs.state)
        .arg("--foreground")
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("chmod 600"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    fs::set_permissions(&pass_file, fs::Permissions::from_mode(0o600)).unwrap();

    let log = dirs.tmp.path().join("daemon.log");
    let child = Command::new(BIN)
        .arg("mount")
        .arg(&dirs.mnt)
        .arg("--config")
        .arg(&cfg)
        .arg("--state-dir")
        .arg(&dirs.state)
        .arg("--cache-dir")
        .arg(&dirs.cache)
        .args(["--foreground", "--log-file"])
        .arg(&log)
        .env("RUST_LOG", "trace")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let _guard = scopeguard_unmount(&dirs.mnt);
    wait_until("mount", Duration::from_secs(20), || is_mounted(&dirs.mnt));
    fs::write(dirs.mnt.join("dav/hello.txt"), b"hello").unwrap();
    fs::create_dir(dirs.mnt.join("dav/sub")).unwrap();
    fs::rename(
        dirs.mnt.join("dav/hello.txt"),
        dirs.mnt.join("dav/sub/hello.txt"),
    )
    .unwrap();
    let out = Command::new(BIN)
        .arg("sync")
        .arg(&dirs.mnt)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        fs::read(dirs.cloud.join("sub/hello.txt")).unwrap(),
        b"hello"
    );
    assert_eq!(
        fs::read(dirs.mnt.join("dav/sub/hello.txt")).unwrap(),
        b"hello"
    );
    stop(child, &dirs);
    drop(server);

    let text = fs::read_to_string(&log).unwrap();
    assert!(
        text.len() > 1000,
        "the trace log is suspiciously short: {text}"
    );
    use base64_check::basic_auth;
    for secret in [password.to_string(), basic_auth("alice", password)] {
        assert!(
            !text.contains(&secret),
            "the log contains a secret ({secret})"
        );
    }
}

mod base64_check {
    /// The value a Basic Authorization header would carry.
    pub fn basic_auth(user: &str, password: &str) -> String {
        const T: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
        let input = format!("{user}:{password}").into_bytes();
        let mut out = String::new();
        for chunk in input.chunks(3) {
            let b = [
                chunk[0],
                *chunk.get(1).unwrap_or(&0),
                *chunk.get(2).unwrap_or(&0),
            ];
            let n = (b[0] as u32) << 16 | (b[1] as u32) << 8 | b[2] as u32;
            for i in 0..4 {
                if i <= chunk.len() {
                    out.push(T[(n >> (18 - 6 * i) & 63) as usize] as char);
                } else {
                    out.push('=');
                }
            }
        }
        out
    }
}

fn xattr(path: &std::path::Path, name: &str) -> String {
    let out = Command::new("getfattr")
        .args(["--only-values", "-n", name])
        .arg(path)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "getfattr {name}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

fn scopeguard_unmount(p: &std::path::Path) -> UnmountOnDrop {
    UnmountOnDrop(p.to_path_buf())
}
