//! Running cloudmount as a system service: the systemd units are valid, the daemon tells
//! systemd READY only once the mount works, and mount(8)/fstab can mount it.

mod common;

use std::fs;
use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use common::*;

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn bin_dir() -> PathBuf {
    Path::new(BIN).parent().unwrap().to_path_buf()
}

#[test]
fn unit_files_pass_systemd_analyze_verify() {
    let tmp = tempfile::tempdir().unwrap();
    let units = [
        ("cloudmount.service", "cloudmount.service"),
        ("cloudmount@.service", "cloudmount@work.service"),
        (
            "cloudmount-system@.service",
            "cloudmount-system@boot.service",
        ),
    ];
    for (src, instance) in units {
        let text = fs::read_to_string(repo().join("systemd").join(src)).unwrap();
        assert!(text.contains("Type=notify"), "{src} must use Type=notify");
        assert!(text.contains("ExecStop="), "{src} must unmount cleanly");
        for ns_directive in [
            "PrivateTmp=",
            "ProtectSystem=",
            "ProtectHome=",
            "PrivateMounts=",
        ] {
            assert!(
                !text.lines().any(|l| l.starts_with(ns_directive)),
                "{src}: {ns_directive} creates a mount namespace, which would hide the mount"
            );
        }
        let unit = tmp.path().join(instance);
        fs::write(&unit, text.replace("@BINDIR@", bin_dir().to_str().unwrap())).unwrap();
        let out = Command::new("systemd-analyze")
            .arg("verify")
            .arg(&unit)
            .output()
            .expect("systemd-analyze (package systemd) is needed");
        assert!(
            out.status.success() && out.stderr.is_empty(),
            "{src}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

/// Stand in for systemd: a datagram socket as NOTIFY_SOCKET.
#[test]
fn ready_is_sent_only_once_the_mount_works_and_stopping_on_shutdown() {
    let dirs = TestDirs::new();
    fs::write(dirs.cloud.join("hello.txt"), b"hello from the cloud").unwrap();
    let sock_path = dirs.tmp.path().join("notify.sock");
    let sock = UnixDatagram::bind(&sock_path).unwrap();
    sock.set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    let mut child = Command::new(BIN)
        .arg("mount")
        .arg(&dirs.mnt)
        .args(["--local"])
        .arg(&dirs.cloud)
        .arg("--state-dir")
        .arg(&dirs.state)
        .arg("--cache-dir")
        .arg(&dirs.cache)
        .args(["--foreground", "--upload-delay", "30"])
        .env("NOTIFY_SOCKET", &sock_path)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let guard = scopeguard(&dirs.mnt);
    let mut buf = [0u8; 256];
    let n = sock.recv(&mut buf).expect("no READY notification");
    assert_eq!(&buf[..n], b"READY=1");
    // At READY the mount must already answer.
    assert!(is_mounted(&dirs.mnt));
    assert_eq!(
        fs::read(dirs.mnt.join("hello.txt")).unwrap(),
        b"hello from the cloud"
    );
    // A write queued with a long delay is still uploaded by the clean stop.
    fs::write(dirs.mnt.join("queued.txt"), b"drained on stop").unwrap();
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    let n = sock.recv(&mut buf).expect("no STOPPING notification");
    assert_eq!(&buf[..n], b"STOPPING=1");
    let status = child.wait().unwrap();
    assert!(status.success(), "daemon exit: {status}");
    assert!(!is_mounted(&dirs.mnt));
    assert_eq!(
        fs::read(dirs.cloud.join("queued.txt")).unwrap(),
        b"drained on stop"
    );
    drop(guard);
}

fn scopeguard(p: &Path) -> UnmountOnDrop {
    UnmountOnDrop(p.to_path_buf())
}

/// `mount -t cloudmount` through the installed helper, then `umount`.
#[test]
fn mount_t_cloudmount_and_umount() {
    if !nix::unistd::geteuid().is_root() {
        eprintln!("needs root to install the helper into /sbin; CI runs as root");
        return;
    }
    let out = Command::new(BIN)
        .args(["install-helpers", "--dir", "/sbin"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let dirs = TestDirs::new();
    fs::write(dirs.cloud.join("from-cloud.txt"), b"via mount(8)").unwrap();
    let _guard = scopeguard(&dirs.mnt);

    let bad = Command::new("mount")
        .args(["-t", "cloudmount"])
        .arg(format!("local:{}", dirs.cloud.display()))
        .arg(&dirs.mnt)
        .args(["-o", "no_such_option=1"])
        .output()
        .unwrap();
    assert!(!bad.status.success());
    assert!(
        String::from_utf8_lossy(&bad.stderr).contains("unknown mount option"),
        "{}",
        String::from_utf8_lossy(&bad.stderr)
    );
    assert!(!is_mounted(&dirs.mnt));

    let opts = format!(
        "noauto,_netdev,x-systemd.automount,cache_size=20MiB,upload_delay=0.1,state_dir={},cache_dir={}",
        dirs.state.display(),
        dirs.cache.display()
    );
    let out = Command::new("mount")
        .args(["-t", "cloudmount"])
        .arg(format!("local:{}", dirs.cloud.display()))
        .arg(&dirs.mnt)
        .args(["-o", &opts])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "mount: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(is_mounted(&dirs.mnt));
    assert_eq!(
        fs::read(dirs.mnt.join("from-cloud.txt")).unwrap(),
        b"via mount(8)"
    );
    fs::write(dirs.mnt.join("written.txt"), b"through fstab-style mount").unwrap();

    let out = Command::new("umount").arg(&dirs.mnt).output().unwrap();
    assert!(
        out.status.success(),
        "umount: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!is_mounted(&dirs.mnt));
    // After the kernel unmount the daemon still drains its queue, then exits.
    wait_until(
        "the write to reach the folder",
        Duration::from_secs(30),
        || {
            fs::read(dirs.cloud.join("written.txt")).ok().as_deref()
                == Some(&b"through fstab-style mount"[..])
        },
    );
}

/// A reboot as systemd does it: stop (SIGTERM) with uploads still waiting and no time to
/// drain them, start again: the mount comes back, the queue is intact and drains.
#[test]
fn stop_and_start_keeps_the_queue() {
    let dirs = TestDirs::new();
    let start = |extra: &[&str]| {
        let mut child = Command::new(BIN)
            .arg("mount")
            .arg(&dirs.mnt)
            .arg("--local")
            .arg(&dirs.cloud)
            .arg("--state-dir")
            .arg(&dirs.state)
            .arg("--cache-dir")
            .arg(&dirs.cache)
            .arg("--foreground")
            .args(extra)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let started = std::time::Instant::now();
        while !is_mounted(&dirs.mnt) {
            assert!(child.try_wait().unwrap().is_none(), "daemon exited early");
            assert!(started.elapsed() < Duration::from_secs(20), "no mount");
            std::thread::sleep(Duration::from_millis(20));
        }
        child
    };
    let _guard = scopeguard(&dirs.mnt);
    let mut first = start(&["--upload-delay", "3600", "-o", "drain_timeout=0"]);
    for i in 0..5 {
        fs::write(dirs.mnt.join(format!("f{i}.txt")), format!("queued {i}")).unwrap();
    }
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(first.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    assert!(first.wait().unwrap().success());
    assert!(!is_mounted(&dirs.mnt));
    for i in 0..5 {
        assert!(
            !dirs.cloud.join(format!("f{i}.txt")).exists(),
            "uploaded although no time to drain"
        );
    }
    let mut second = start(&["--upload-delay", "0.05"]);
    // The files read back at once, before any upload, and then reach the folder.
    assert_eq!(fs::read(dirs.mnt.join("f3.txt")).unwrap(), b"queued 3");
    wait_until(
        "the queue to drain after the restart",
        Duration::from_secs(30),
        || {
            (0..5).all(|i| {
                fs::read(dirs.cloud.join(format!("f{i}.txt"))).ok()
                    == Some(format!("queued {i}").into_bytes())
            })
        },
    );
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(second.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    assert!(second.wait().unwrap().success());
}
