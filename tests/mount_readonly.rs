//! The mount suite's read-only part: what a read-only connection must do through the
//! kernel, the same for every read-only provider. Each case is a named test per backend
//! (Confluence and Jira on the emulator, IMAP on a real Dovecot), on a fresh mount of a
//! seeded tree: listings and attributes, whole, ranged and `mmap` reads, `statfs` and the
//! state attribute, and `EROFS` for every change — after which nothing is queued for the
//! remote and the tree reads as before.

#[path = "support/atlassian_emulator.rs"]
mod atlassian_emulator;
#[path = "support/atlassian_harness.rs"]
mod atlassian_harness;
mod common;
#[path = "support/dovecot.rs"]
mod dovecot;
#[path = "support/emu/mod.rs"]
mod emu;

use std::any::Any;
use std::ffi::CString;
use std::fs::{self, OpenOptions};
use std::io::Write;
use std::os::fd::AsRawFd;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use atlassian_emulator::{AtlassianConfig, AtlassianEmulator};
use atlassian_harness::{paragraph, pattern, token_settings};
use common::*;

/// A read-only backend mounted in process, and what it was seeded with.
pub struct Seeded {
    m: InProcessMount,
    /// A folder (relative to the mount) and the names in it, sorted.
    dir: String,
    names: Vec<String>,
    /// A file in that folder, and its bytes.
    file: String,
    bytes: Vec<u8>,
    _keep: Vec<Box<dyn Any>>,
}

impl Seeded {
    fn path(&self, rel: &str) -> PathBuf {
        self.m.path(rel)
    }
}

const LEN: usize = 300_000;

fn emulator() -> AtlassianEmulator {
    AtlassianEmulator::start(AtlassianConfig {
        space_homepages: false,
        ..AtlassianConfig::default()
    })
}

fn confluence() -> Seeded {
    let emu = emulator();
    let dir = tempfile::tempdir().unwrap();
    let space = emu.add_space("KB", "Knowledge");
    let page = emu.add_page(&space, None, "Manual", paragraph("read me"));
    let bytes = pattern(LEN, 31);
    emu.add_attachment(&page, "manual.bin", "application/octet-stream", &bytes);
    emu.add_attachment(&page, "notes.txt", "text/plain", b"notes");
    let p = atlassian_harness::confluence(&token_settings(&emu, dir.path(), ""), None);
    Seeded {
        m: InProcessMount::new(Arc::new(p), test_config(|_| {})),
        dir: "KB Knowledge/Manual/_attachments".into(),
        names: vec!["manual.bin".into(), "notes.txt".into()],
        file: "KB Knowledge/Manual/_attachments/manual.bin".into(),
        bytes,
        _keep: vec![Box::new(emu), Box::new(dir)],
    }
}

fn jira() -> Seeded {
    let emu = emulator();
    let dir = tempfile::tempdir().unwrap();
    emu.add_project("SUP", "Support");
    let (issue, key) = emu.add_issue("SUP", "Printer on fire");
    let bytes = pattern(LEN, 32);
    emu.add_jira_attachment(&issue, "dump.bin", &bytes);
    emu.add_jira_attachment(&issue, "photo.jpg", b"\xff\xd8 tiny");
    let p = atlassian_harness::jira(&token_settings(&emu, dir.path(), ""), None);
    let folder = format!("SUP Support/{key} Printer on fire");
    Seeded {
        m: InProcessMount::new(Arc::new(p), test_config(|_| {})),
        file: format!("{folder}/dump.bin"),
        dir: folder,
        names: vec!["dump.bin".into(), "photo.jpg".into()],
        bytes,
        _keep: vec![Box::new(emu), Box::new(dir)],
    }
}

fn imap() -> Seeded {
    let d = dovecot::Dovecot::start();
    let dir = tempfile::tempdir().unwrap();
    let mut bytes = b"Subject: mounted\r\nContent-Type: text/plain\r\n\r\n".to_vec();
    while bytes.len() < LEN {
        bytes.extend_from_slice(format!("line {:06} of the message\r\n", bytes.len()).as_bytes());
    }
    let uid = d.append("INBOX", &bytes).uid;
    d.append("INBOX", b"Subject: second\r\n\r\nsecond\r\n");
    let pw = dir.path().join("password");
    fs::write(&pw, &d.password).unwrap();
    fs::set_permissions(&pw, fs::Permissions::from_mode(0o600)).unwrap();
    let cfg = cloudmount::provider::imap::ImapConfig::loopback(d.port, &d.user, pw);
    let p =
        cloudmount::provider::imap::ImapProvider::new(cfg, Some(dir.path().join("index")), None)
            .unwrap();
    let m = InProcessMount::new(Arc::new(p), test_config(|_| {}));
    // Names carry the arrival time: read from the mount, found by UID.
    let names = sorted_names(&m.path("INBOX"));
    let name = names
        .iter()
        .find(|n| n.ends_with(&format!("[u{uid}].eml")))
        .expect("the message is listed")
        .clone();
    Seeded {
        m,
        dir: "INBOX".into(),
        file: format!("INBOX/{name}"),
        names,
        bytes,
        _keep: vec![Box::new(d), Box::new(dir)],
    }
}

fn sorted_names(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("read_dir {}: {e}", dir.display()))
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    v.sort();
    v
}

fn cpath(p: &Path) -> CString {
    CString::new(p.as_os_str().as_bytes()).unwrap()
}

fn assert_erofs<T: std::fmt::Debug>(what: &str, r: std::io::Result<T>) {
    match r {
        Err(e) => assert_eq!(errno_of(&e), libc::EROFS, "{what}: {e}"),
        Ok(v) => panic!("{what}: expected EROFS, it succeeded ({v:?})"),
    }
}

mod cases {
    use super::*;

    pub fn listings_and_attributes(s: &Seeded) {
        assert_eq!(sorted_names(&s.path(&s.dir)), s.names);
        let meta = fs::metadata(s.path(&s.file)).unwrap();
        assert!(meta.is_file());
        assert_eq!(meta.len(), s.bytes.len() as u64);
        assert_eq!(
            meta.permissions().mode() & 0o222,
            0,
            "no write bits on files"
        );
        assert!(meta.modified().unwrap() > SystemTime::UNIX_EPOCH);
        let dir = fs::metadata(s.path(&s.dir)).unwrap();
        assert!(dir.is_dir());
        assert_eq!(
            dir.permissions().mode() & 0o222,
            0,
            "no write bits on folders"
        );
        let missing = fs::metadata(s.path(&format!("{}/no such file", s.dir)));
        assert_eq!(errno_of(&missing.unwrap_err()), libc::ENOENT);
        let not_dir = fs::read_dir(s.path(&format!("{}/x", s.file)));
        assert_eq!(errno_of(&not_dir.unwrap_err()), libc::ENOTDIR);
    }

    pub fn reads_whole_ranged_and_mapped(s: &Seeded) {
        let path = s.path(&s.file);
        assert!(fs::read(&path).unwrap() == s.bytes, "whole read differs");
        let f = fs::File::open(&path).unwrap();
        for (offset, len) in [
            (0usize, 1usize),
            (123_457, 65_536),
            (s.bytes.len() - 10, 10),
        ] {
            let mut buf = vec![0u8; len];
            f.read_exact_at(&mut buf, offset as u64).unwrap();
            assert!(buf == s.bytes[offset..offset + len], "pread at {offset}");
        }
        let mut past = [0u8; 16];
        assert_eq!(f.read_at(&mut past, s.bytes.len() as u64 + 5).unwrap(), 0);
        let len = s.bytes.len();
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ,
                libc::MAP_SHARED,
                f.as_raw_fd(),
                0,
            )
        };
        assert_ne!(p, libc::MAP_FAILED, "{}", std::io::Error::last_os_error());
        let mapped = unsafe { std::slice::from_raw_parts(p as *const u8, len) };
        assert!(mapped == &s.bytes[..], "mmap read differs");
        assert_eq!(unsafe { libc::munmap(p, len) }, 0);
        // A writable shared mapping needs a file open for writing: refused at open.
        assert_erofs(
            "open O_RDWR for a shared mapping",
            OpenOptions::new().read(true).write(true).open(&path),
        );
    }

    pub fn statfs_and_the_state_attribute(s: &Seeded) {
        let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
        assert_eq!(
            unsafe { libc::statvfs(cpath(s.m.mnt()).as_ptr(), &mut st) },
            0
        );
        assert_eq!(st.f_namemax, 255);
        fs::read(s.path(&s.file)).unwrap();
        let name = CString::new("user.cloudmount.state").unwrap();
        let mut buf = [0u8; 64];
        let n = unsafe {
            libc::getxattr(
                cpath(&s.path(&s.file)).as_ptr(),
                name.as_ptr(),
                buf.as_mut_ptr() as *mut _,
                buf.len(),
            )
        };
        assert!(n > 0, "getxattr: {}", std::io::Error::last_os_error());
        let state = std::str::from_utf8(&buf[..n as usize]).unwrap();
        assert!(["cached", "synced"].contains(&state), "state {state}");
    }

    pub fn every_change_is_erofs_and_nothing_is_queued(s: &Seeded) {
        let file = s.path(&s.file);
        let dir = s.path(&s.dir);
        assert_erofs("create", fs::File::create(dir.join("new.txt")));
        assert_erofs(
            "create_new",
            OpenOptions::new()
                .write(true)
                .create_new(true)
                .open(dir.join("n2")),
        );
        assert_erofs(
            "write",
            OpenOptions::new()
                .write(true)
                .open(&file)
                .and_then(|mut f| f.write_all(b"x")),
        );
        assert_erofs("append", OpenOptions::new().append(true).open(&file));
        assert_erofs(
            "truncate",
            nix::unistd::truncate(&file, 0).map_err(std::io::Error::from),
        );
        assert_erofs(
            "O_TRUNC",
            OpenOptions::new().write(true).truncate(true).open(&file),
        );
        assert_erofs("mkdir", fs::create_dir(dir.join("sub")));
        assert_erofs("unlink", fs::remove_file(&file));
        assert_erofs("rmdir", fs::remove_dir(&dir));
        assert_erofs("rename", fs::rename(&file, dir.join("renamed")));
        assert_erofs("symlink", std::os::unix::fs::symlink("x", dir.join("link")));
        assert_erofs("hard link", fs::hard_link(&file, dir.join("hard")));
        assert_erofs(
            "chmod",
            fs::set_permissions(&file, fs::Permissions::from_mode(0o600)),
        );
        assert_erofs(
            "utimes",
            fs::File::open(&file).and_then(|f| {
                f.set_times(
                    fs::FileTimes::new()
                        .set_modified(SystemTime::UNIX_EPOCH + Duration::from_secs(1)),
                )
            }),
        );
        let name = CString::new("user.note").unwrap();
        let r = unsafe {
            libc::setxattr(
                cpath(&file).as_ptr(),
                name.as_ptr(),
                b"x".as_ptr() as *const _,
                1,
                0,
            )
        };
        assert_eq!(r, -1);
        // No connection keeps extended attributes of its own: refused as unsupported.
        assert_eq!(
            std::io::Error::last_os_error().raw_os_error(),
            Some(libc::EOPNOTSUPP)
        );
        // Nothing changed, nothing waits for the remote.
        assert_eq!(sorted_names(&dir), s.names);
        assert!(fs::read(&file).unwrap() == s.bytes);
        assert_eq!(s.m.vfs().queue.len(), 0);
    }
}

macro_rules! readonly_mount_suite {
    (cases $cases:tt backends [$($(#[$doc:meta])* $backend:ident),* $(,)?]) => {
        $(readonly_mount_suite!(@backend $(#[$doc])* $backend, $cases);)*
    };
    (@backend $(#[$doc:meta])* $backend:ident, [$($case:ident),* $(,)?]) => {
        $(#[$doc])*
        mod $backend {
            $(
                #[test]
                fn $case() {
                    let s = super::$backend();
                    super::cases::$case(&s);
                }
            )*
        }
    };
}

readonly_mount_suite! {
    cases [
        listings_and_attributes,
        reads_whole_ranged_and_mapped,
        statfs_and_the_state_attribute,
        every_change_is_erofs_and_nothing_is_queued,
    ]
    backends [
        /// Confluence on the emulator: a page's attachments.
        confluence,
        /// Jira on the emulator: an issue's attachments.
        jira,
        /// IMAP on a real Dovecot: INBOX.
        imap,
    ]
}
