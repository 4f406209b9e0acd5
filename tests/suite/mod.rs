//! The functional suite shared by the mount tests: every filesystem operation through a
//! real kernel mount, asserting contents and errno. Backend differences (what the provider
//! can store) come in as `Backend` facts rather than per-provider special cases.
//!
//! Include with `#[path = "suite/mod.rs"] mod suite;` next to `mod common;`.

use std::ffi::CString;
use std::fs::{self, File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use cloudmount::provider::Capabilities;

use crate::common::errno_of;

/// What the backend under the mount can hold, as far as the suite's expectations go.
#[derive(Debug, Clone, Copy)]
pub struct Backend {
    /// Symbolic links are stored; otherwise creating one fails with EPERM.
    pub symlinks: bool,
}

impl Backend {
    /// Every provider holds symbolic links: natively, or as portable link files.
    pub fn from_capabilities(_caps: &Capabilities) -> Self {
        Backend { symlinks: true }
    }
}

pub fn expect_errno<T: std::fmt::Debug>(r: std::io::Result<T>, errno: i32, what: &str) {
    match r {
        Ok(v) => panic!("{what}: expected errno {errno}, got Ok({v:?})"),
        Err(e) => assert_eq!(errno_of(&e), errno, "{what}: got {e}"),
    }
}

pub fn cpath(p: &Path) -> CString {
    CString::new(p.as_os_str().as_bytes()).unwrap()
}

/// The functional suite, over any mounted directory.
pub fn posix_suite(root: &Path, backend: Backend) {
    // create, write at offsets, read back
    let f = root.join("file.bin");
    {
        let mut h = File::create(&f).unwrap();
        h.write_all(b"hello world").unwrap();
        h.seek(SeekFrom::Start(20)).unwrap();
        h.write_all(b"tail").unwrap();
    }
    let data = fs::read(&f).unwrap();
    assert_eq!(data.len(), 24);
    assert_eq!(&data[..11], b"hello world");
    assert_eq!(&data[11..20], &[0u8; 9]);
    assert_eq!(&data[20..], b"tail");

    // overwrite in the middle with a read-write handle
    {
        let mut h = OpenOptions::new().read(true).write(true).open(&f).unwrap();
        h.seek(SeekFrom::Start(6)).unwrap();
        h.write_all(b"WORLD").unwrap();
        let mut buf = [0u8; 11];
        h.seek(SeekFrom::Start(0)).unwrap();
        h.read_exact(&mut buf).unwrap();
        assert_eq!(&buf, b"hello WORLD");
    }
    // append
    {
        let mut h = OpenOptions::new().append(true).open(&f).unwrap();
        h.write_all(b"!").unwrap();
    }
    assert_eq!(fs::read(&f).unwrap().last(), Some(&b'!'));

    // truncate shrink and grow
    let h = OpenOptions::new().write(true).open(&f).unwrap();
    h.set_len(5).unwrap();
    assert_eq!(fs::read(&f).unwrap(), b"hello");
    h.set_len(8).unwrap();
    assert_eq!(fs::read(&f).unwrap(), b"hello\0\0\0");
    drop(h);
    // O_TRUNC
    fs::write(&f, b"short").unwrap();
    assert_eq!(fs::read(&f).unwrap(), b"short");
    assert_eq!(fs::metadata(&f).unwrap().len(), 5);

    // times: explicit and UTIME_NOW, and UTIME_OMIT keeps the other
    let when = UNIX_EPOCH + Duration::from_secs(1_000_000_000);
    let times = [
        libc::timespec {
            tv_sec: 0,
            tv_nsec: libc::UTIME_OMIT,
        },
        libc::timespec {
            tv_sec: 1_000_000_000,
            tv_nsec: 0,
        },
    ];
    assert_eq!(
        unsafe { libc::utimensat(libc::AT_FDCWD, cpath(&f).as_ptr(), times.as_ptr(), 0) },
        0
    );
    assert_eq!(fs::metadata(&f).unwrap().modified().unwrap(), when);
    let now_times = [
        libc::timespec {
            tv_sec: 0,
            tv_nsec: libc::UTIME_OMIT,
        },
        libc::timespec {
            tv_sec: 0,
            tv_nsec: libc::UTIME_NOW,
        },
    ];
    assert_eq!(
        unsafe { libc::utimensat(libc::AT_FDCWD, cpath(&f).as_ptr(), now_times.as_ptr(), 0) },
        0
    );
    let m = fs::metadata(&f).unwrap().modified().unwrap();
    assert!(SystemTime::now().duration_since(m).unwrap() < Duration::from_secs(60));

    // chmod is kept
    fs::set_permissions(&f, fs::Permissions::from_mode(0o600)).unwrap();
    assert_eq!(fs::metadata(&f).unwrap().mode() & 0o777, 0o600);
    // owned by the mounting user
    assert_eq!(
        fs::metadata(&f).unwrap().uid(),
        nix::unistd::getuid().as_raw()
    );

    // directories
    let d = root.join("dir");
    fs::create_dir(&d).unwrap();
    expect_errno(fs::create_dir(&d), libc::EEXIST, "mkdir existing");
    fs::write(d.join("inner.txt"), b"inner").unwrap();
    expect_errno(fs::remove_dir(&d), libc::ENOTEMPTY, "rmdir non-empty");
    expect_errno(fs::remove_file(&d), libc::EISDIR, "unlink a directory");
    expect_errno(fs::remove_dir(&f), libc::ENOTDIR, "rmdir a file");
    expect_errno(fs::read(root.join("missing")), libc::ENOENT, "open missing");
    expect_errno(
        fs::read(f.join("below-a-file")),
        libc::ENOTDIR,
        "path through a file",
    );
    expect_errno(
        OpenOptions::new().write(true).create_new(true).open(&f),
        libc::EEXIST,
        "O_EXCL on existing",
    );
    expect_errno(
        OpenOptions::new().write(true).open(&d),
        libc::EISDIR,
        "open dir for write",
    );
    let long = "x".repeat(256);
    expect_errno(
        fs::write(root.join(&long), b""),
        libc::ENAMETOOLONG,
        "name too long",
    );
    let mut names: Vec<_> = fs::read_dir(root)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    names.sort();
    assert_eq!(names, vec!["dir", "file.bin"]);

    // rename: plain, over an existing file, RENAME_NOREPLACE, directories
    fs::write(root.join("a.txt"), b"AAA").unwrap();
    fs::write(root.join("b.txt"), b"BBB").unwrap();
    fs::rename(root.join("a.txt"), root.join("b.txt")).unwrap();
    assert_eq!(fs::read(root.join("b.txt")).unwrap(), b"AAA");
    expect_errno(
        fs::metadata(root.join("a.txt")),
        libc::ENOENT,
        "old name after rename",
    );
    fs::write(root.join("c.txt"), b"CCC").unwrap();
    let r = unsafe {
        libc::renameat2(
            libc::AT_FDCWD,
            cpath(&root.join("c.txt")).as_ptr(),
            libc::AT_FDCWD,
            cpath(&root.join("b.txt")).as_ptr(),
            libc::RENAME_NOREPLACE,
        )
    };
    assert_eq!(r, -1);
    assert_eq!(
        std::io::Error::last_os_error().raw_os_error(),
        Some(libc::EEXIST)
    );
    assert_eq!(fs::read(root.join("b.txt")).unwrap(), b"AAA");
    fs::rename(&d, root.join("dir2")).unwrap();
    assert_eq!(fs::read(root.join("dir2/inner.txt")).unwrap(), b"inner");
    fs::create_dir(root.join("dir3")).unwrap();
    fs::create_dir(root.join("dir3/sub")).unwrap();
    expect_errno(
        fs::rename(root.join("dir3"), root.join("dir3/sub/x")),
        libc::EINVAL,
        "dir into itself",
    );
    expect_errno(
        fs::rename(root.join("dir2"), root.join("dir3")),
        libc::ENOTEMPTY,
        "dir over non-empty dir",
    );
    expect_errno(
        fs::rename(root.join("b.txt"), root.join("dir3")),
        libc::EISDIR,
        "file over dir",
    );

    // symlinks: stored when the provider can, otherwise a clear EPERM and nothing left
    if backend.symlinks {
        std::os::unix::fs::symlink("b.txt", root.join("link")).unwrap();
        assert_eq!(
            fs::read_link(root.join("link")).unwrap(),
            Path::new("b.txt")
        );
        assert_eq!(fs::read(root.join("link")).unwrap(), b"AAA");
    } else {
        expect_errno(
            std::os::unix::fs::symlink("b.txt", root.join("link")),
            libc::EPERM,
            "symlink on a provider without symlinks",
        );
        expect_errno(
            fs::symlink_metadata(root.join("link")),
            libc::ENOENT,
            "refused symlink left nothing behind",
        );
    }

    // what a cloud cannot hold: a clear EPERM
    expect_errno(
        fs::hard_link(root.join("b.txt"), root.join("hard")),
        libc::EPERM,
        "hard link",
    );
    let fifo = cpath(&root.join("fifo"));
    assert_eq!(unsafe { libc::mkfifo(fifo.as_ptr(), 0o644) }, -1);
    assert_eq!(
        std::io::Error::last_os_error().raw_os_error(),
        Some(libc::EPERM)
    );
    expect_errno(
        fs::create_dir(root.join(".cloudmount-versions")),
        libc::EPERM,
        "reserved name",
    );

    // unlink while open: the open handle still reads its content
    fs::write(root.join("open.txt"), b"still here").unwrap();
    let mut h = File::open(root.join("open.txt")).unwrap();
    fs::remove_file(root.join("open.txt")).unwrap();
    expect_errno(
        fs::metadata(root.join("open.txt")),
        libc::ENOENT,
        "unlinked name",
    );
    let mut s = String::new();
    h.read_to_string(&mut s).unwrap();
    assert_eq!(s, "still here");

    // a handle opened before another file is renamed over its name keeps its own content
    fs::write(root.join("victim.txt"), b"old content").unwrap();
    fs::write(root.join("newer.txt"), b"new content").unwrap();
    let mut old = File::open(root.join("victim.txt")).unwrap();
    fs::rename(root.join("newer.txt"), root.join("victim.txt")).unwrap();
    let mut s = String::new();
    old.read_to_string(&mut s).unwrap();
    assert_eq!(s, "old content");
    assert_eq!(fs::read(root.join("victim.txt")).unwrap(), b"new content");

    // shared mmap: write through the mapping, read back through read()
    let mm = root.join("mmap.bin");
    fs::write(&mm, vec![b'.'; 8192]).unwrap();
    {
        let h = OpenOptions::new().read(true).write(true).open(&mm).unwrap();
        use std::os::fd::AsRawFd;
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                8192,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                h.as_raw_fd(),
                0,
            )
        };
        assert_ne!(p, libc::MAP_FAILED);
        let slice = unsafe { std::slice::from_raw_parts_mut(p as *mut u8, 8192) };
        assert_eq!(slice[100], b'.');
        slice[4096..4101].copy_from_slice(b"MMAP!");
        assert_eq!(unsafe { libc::msync(p, 8192, libc::MS_SYNC) }, 0);
        assert_eq!(unsafe { libc::munmap(p, 8192) }, 0);
        h.sync_all().unwrap();
    }
    assert_eq!(&fs::read(&mm).unwrap()[4096..4101], b"MMAP!");

    // statfs reports a size
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    assert_eq!(unsafe { libc::statvfs(cpath(root).as_ptr(), &mut st) }, 0);
    assert!(st.f_blocks > 0);
    assert_eq!(st.f_namemax, 255);

    // read-only state xattrs
    let name = CString::new("user.cloudmount.state").unwrap();
    let mut buf = [0u8; 64];
    let n = unsafe {
        libc::getxattr(
            cpath(&root.join("b.txt")).as_ptr(),
            name.as_ptr(),
            buf.as_mut_ptr() as *mut _,
            buf.len(),
        )
    };
    assert!(n > 0, "getxattr: {}", std::io::Error::last_os_error());
    let state = std::str::from_utf8(&buf[..n as usize]).unwrap();
    assert!(
        ["queued", "uploading", "cached", "dirty", "synced"].contains(&state),
        "state {state}"
    );
    let r = unsafe {
        libc::setxattr(
            cpath(&root.join("b.txt")).as_ptr(),
            name.as_ptr(),
            b"x".as_ptr() as *const _,
            1,
            0,
        )
    };
    assert_eq!(r, -1);
    assert_eq!(
        std::io::Error::last_os_error().raw_os_error(),
        Some(libc::EPERM)
    );

    // fsync
    let h = OpenOptions::new()
        .write(true)
        .open(root.join("b.txt"))
        .unwrap();
    h.sync_all().unwrap();
}
