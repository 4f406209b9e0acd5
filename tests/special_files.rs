//! FIFOs, Unix sockets and device nodes through the kernel (issue 14): made with mknod,
//! mkfifo and bind, listed and stat'ed with their type, mode and device number, working
//! as the kernel makes them work (a FIFO is a pipe between two processes, a socket
//! connects), renamed, chmod'ed and removed — and never on the remote: the backing
//! folder stays without them, and they survive a remount and a kill -9.

mod common;

use std::ffi::CString;
use std::fs;
use std::io::{Read, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::path::Path;

use common::*;

fn mknod(path: &Path, mode: libc::mode_t, dev: libc::dev_t) -> std::io::Result<()> {
    let c = CString::new(path.as_os_str().as_bytes()).unwrap();
    // SAFETY: a valid NUL-terminated path; mknod has no other preconditions.
    if unsafe { libc::mknod(c.as_ptr(), mode, dev) } == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

/// What the backing folder (the "remote") holds, recursively, by relative path.
fn remote_names(root: &Path) -> Vec<String> {
    let mut out = Vec::new();
    let mut todo = vec![root.to_path_buf()];
    while let Some(dir) = todo.pop() {
        for e in fs::read_dir(&dir).unwrap() {
            let p = e.unwrap().path();
            let rel = p.strip_prefix(root).unwrap().to_string_lossy().into_owned();
            if rel.starts_with('.') {
                continue; // cloudmount's own hidden folders (versions)
            }
            if p.is_dir() {
                todo.push(p.clone());
            }
            out.push(rel);
        }
    }
    out.sort();
    out
}

#[test]
fn a_fifo_in_the_mount_is_a_pipe_between_two_processes() {
    let dirs = TestDirs::new();
    let m = DaemonMount::start(&dirs, &["--upload-delay", "0.05"]);
    let fifo = m.mnt.join("queue.fifo");
    mknod(&fifo, libc::S_IFIFO | 0o640, 0).unwrap();
    let meta = fs::symlink_metadata(&fifo).unwrap();
    assert!(meta.file_type().is_fifo());
    assert_eq!(meta.permissions().mode() & 0o7777, 0o640);
    assert_eq!(meta.len(), 0);
    // Making it again: EEXIST, as for any name.
    assert_eq!(
        mknod(&fifo, libc::S_IFIFO | 0o640, 0)
            .unwrap_err()
            .raw_os_error(),
        Some(libc::EEXIST)
    );

    // A writer and a reader in two processes (a shell writes, we read).
    let writer = std::process::Command::new("sh")
        .arg("-c")
        .arg(format!("printf 'through the pipe' > '{}'", fifo.display()))
        .spawn()
        .unwrap();
    let mut got = String::new();
    fs::File::open(&fifo)
        .unwrap()
        .read_to_string(&mut got)
        .unwrap();
    assert!(writer.wait_with_output().unwrap().status.success());
    assert_eq!(got, "through the pipe");

    // chmod, rename into a folder, and it stays a FIFO; nothing of it on the remote.
    fs::set_permissions(&fifo, fs::Permissions::from_mode(0o600)).unwrap();
    fs::create_dir(m.mnt.join("pipes")).unwrap();
    let moved = m.mnt.join("pipes/moved.fifo");
    fs::rename(&fifo, &moved).unwrap();
    let meta = fs::symlink_metadata(&moved).unwrap();
    assert!(meta.file_type().is_fifo());
    assert_eq!(meta.permissions().mode() & 0o7777, 0o600);
    assert_eq!(
        fs::symlink_metadata(&fifo).unwrap_err().raw_os_error(),
        Some(libc::ENOENT)
    );
    let names: Vec<String> = fs::read_dir(m.mnt.join("pipes"))
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    assert_eq!(names, ["moved.fifo"]);
    // The folder that holds it is not empty.
    assert_eq!(
        fs::remove_dir(m.mnt.join("pipes"))
            .unwrap_err()
            .raw_os_error(),
        Some(libc::ENOTEMPTY)
    );
    m.sync();
    assert_eq!(remote_names(&dirs.cloud), ["pipes"]);

    // It outlives a remount and a kill -9.
    assert!(m.unmount().status.success());
    let m = DaemonMount::start(&dirs, &["--upload-delay", "0.05"]);
    assert!(fs::symlink_metadata(&moved).unwrap().file_type().is_fifo());
    m.kill9();
    let m = DaemonMount::start(&dirs, &["--upload-delay", "0.05"]);
    let meta = fs::symlink_metadata(&moved).unwrap();
    assert!(meta.file_type().is_fifo());
    assert_eq!(meta.permissions().mode() & 0o7777, 0o600);

    fs::remove_file(&moved).unwrap();
    fs::remove_dir(m.mnt.join("pipes")).unwrap();
    m.sync();
    assert!(remote_names(&dirs.cloud).is_empty());
}

#[test]
fn a_unix_socket_bound_in_the_mount_accepts_connections() {
    let dirs = TestDirs::new();
    let m = DaemonMount::start(&dirs, &["--upload-delay", "0.05"]);
    let path = m.mnt.join("agent.sock");
    let listener = std::os::unix::net::UnixListener::bind(&path).unwrap();
    assert!(fs::symlink_metadata(&path).unwrap().file_type().is_socket());
    let server = std::thread::spawn(move || {
        let (mut s, _) = listener.accept().unwrap();
        let mut buf = [0u8; 5];
        s.read_exact(&mut buf).unwrap();
        s.write_all(b"pong:").unwrap();
        s.write_all(&buf).unwrap();
    });
    let mut client = std::os::unix::net::UnixStream::connect(&path).unwrap();
    client.write_all(b"hello").unwrap();
    let mut answer = [0u8; 10];
    client.read_exact(&mut answer).unwrap();
    server.join().unwrap();
    assert_eq!(&answer, b"pong:hello");
    // Binding again over the existing name: EADDRINUSE, as on any file system.
    assert_eq!(
        std::os::unix::net::UnixListener::bind(&path)
            .unwrap_err()
            .raw_os_error(),
        Some(libc::EADDRINUSE)
    );
    m.sync();
    assert!(remote_names(&dirs.cloud).is_empty());
    fs::remove_file(&path).unwrap();
    assert_eq!(
        fs::symlink_metadata(&path).unwrap_err().raw_os_error(),
        Some(libc::ENOENT)
    );
}

/// Device nodes need CAP_MKNOD (the kernel refuses others with EPERM before the mount
/// is asked). As root: type, mode and device number kept, across a remount too.
#[test]
fn device_nodes_keep_their_type_and_number() {
    if !is_root() {
        // CI runs as root; as a user the kernel refuses before the mount is asked.
        let dirs = TestDirs::new();
        let m = DaemonMount::start(&dirs, &[]);
        let err = mknod(
            &m.mnt.join("null"),
            libc::S_IFCHR | 0o666,
            libc::makedev(1, 3),
        );
        assert_eq!(err.unwrap_err().raw_os_error(), Some(libc::EPERM));
        return;
    }
    let dirs = TestDirs::new();
    let m = DaemonMount::start(&dirs, &["--upload-delay", "0.05"]);
    let chr = m.mnt.join("null");
    let blk = m.mnt.join("loop9");
    mknod(&chr, libc::S_IFCHR | 0o640, libc::makedev(1, 3)).unwrap();
    mknod(&blk, libc::S_IFBLK | 0o660, libc::makedev(7, 9)).unwrap();
    let check = |m: &DaemonMount| {
        let c = fs::symlink_metadata(m.mnt.join("null")).unwrap();
        assert!(c.file_type().is_char_device());
        assert_eq!(c.rdev(), libc::makedev(1, 3));
        assert_eq!(c.permissions().mode() & 0o7777, 0o640);
        let b = fs::symlink_metadata(m.mnt.join("loop9")).unwrap();
        assert!(b.file_type().is_block_device());
        assert_eq!(b.rdev(), libc::makedev(7, 9));
    };
    check(&m);
    m.sync();
    assert!(remote_names(&dirs.cloud).is_empty());
    assert!(m.unmount().status.success());
    let m = DaemonMount::start(&dirs, &["--upload-delay", "0.05"]);
    check(&m);
}

/// A special file renamed over a file that is on the remote replaces it: the remote
/// file goes (a special file is never uploaded), and the mount shows the special file.
#[test]
fn a_special_file_renamed_over_a_remote_file_removes_it_there() {
    let dirs = TestDirs::new();
    fs::write(dirs.cloud.join("target"), b"remote content").unwrap();
    let m = DaemonMount::start(&dirs, &["--upload-delay", "0.05"]);
    assert_eq!(fs::read(m.mnt.join("target")).unwrap(), b"remote content");
    let fifo = m.mnt.join("new.fifo");
    mknod(&fifo, libc::S_IFIFO | 0o644, 0).unwrap();
    fs::rename(&fifo, m.mnt.join("target")).unwrap();
    assert!(fs::symlink_metadata(m.mnt.join("target"))
        .unwrap()
        .file_type()
        .is_fifo());
    m.sync();
    assert!(
        remote_names(&dirs.cloud).is_empty(),
        "{:?}",
        remote_names(&dirs.cloud)
    );
    // Still a FIFO after the remote was listed again.
    let out = m.cli(&["refresh", m.mnt.to_str().unwrap()]);
    assert!(out.status.success());
    assert!(fs::symlink_metadata(m.mnt.join("target"))
        .unwrap()
        .file_type()
        .is_fifo());
}
