//! Private by default: what cloudmount keeps on disk (the metadata store with every file
//! name of an account, cached contents, staging copies, logs, the control socket) is for
//! its user only, whatever the umask it was started with.
//!
//! Two layers, because neither is enough alone:
//! - the process umask is narrowed to 077 first thing, so every file and folder created
//!   afterwards is 0600/0700 whichever code path creates it (sled makes its own files, the
//!   cache, staging and versions code theirs);
//! - folders left looser by an earlier version or another umask are tightened at start,
//!   and the log says so once per folder.

use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::Path;

/// Mode of every folder cloudmount creates for itself.
pub const DIR_MODE: u32 = 0o700;
/// Mode of every file (and socket) in them.
pub const FILE_MODE: u32 = 0o600;

/// Narrow the process umask so nothing created from now on is open to group or others.
/// Bits the caller's umask already removes stay removed.
pub fn restrict_umask() {
    use nix::sys::stat::{umask, Mode};
    let old = umask(Mode::from_bits_truncate(0o077));
    umask(old | Mode::from_bits_truncate(0o077));
}

/// Create `dir` and missing parents with mode 0700; an existing `dir` is left as it is
/// (for folders the user chose).
pub fn create_private_dir(dir: &Path) -> io::Result<()> {
    fs::DirBuilder::new()
        .recursive(true)
        .mode(DIR_MODE)
        .create(dir)
        .map_err(|e| with_path(e, "creating", dir))
}

/// Create `dir` like [`create_private_dir`], and tighten it when it existed looser (for
/// folders of our own): returns its old mode then.
pub fn ensure_private_dir(dir: &Path) -> io::Result<Option<u32>> {
    create_private_dir(dir)?;
    tighten(dir)
}

/// Remove the group and other bits of `path` (never following a symlink). Returns the old
/// mode when it changed anything.
pub fn tighten(path: &Path) -> io::Result<Option<u32>> {
    let meta = fs::symlink_metadata(path).map_err(|e| with_path(e, "stat", path))?;
    if meta.file_type().is_symlink() {
        return Ok(None);
    }
    let mode = meta.mode() & 0o7777;
    if mode & 0o077 == 0 {
        return Ok(None);
    }
    // Setgid and sticky bits go too: they only matter for sharing with a group.
    fs::set_permissions(path, fs::Permissions::from_mode(mode & 0o700))
        .map_err(|e| with_path(e, "tightening", path))?;
    Ok(Some(mode))
}

/// Tighten `path` and everything below it; returns how many entries changed. Entries that
/// vanish meanwhile (a cache file evicted, a staging copy uploaded) are skipped.
pub fn tighten_tree(path: &Path) -> io::Result<usize> {
    let mut changed = match tighten(path) {
        Ok(old) => usize::from(old.is_some()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(0),
        Err(e) => return Err(e),
    };
    let meta = match fs::symlink_metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(changed),
        Err(e) => return Err(with_path(e, "stat", path)),
    };
    if meta.is_dir() {
        let entries = fs::read_dir(path).map_err(|e| with_path(e, "listing", path))?;
        for entry in entries {
            let entry = entry.map_err(|e| with_path(e, "listing", path))?;
            changed += tighten_tree(&entry.path())?;
        }
    }
    Ok(changed)
}

/// Open `path` for appending, created with mode 0600. An existing file looser than that is
/// tightened: its old mode is returned with it.
pub fn open_private_append(path: &Path) -> io::Result<(File, Option<u32>)> {
    let f = OpenOptions::new()
        .create(true)
        .append(true)
        .mode(FILE_MODE)
        .open(path)
        .map_err(|e| with_path(e, "opening", path))?;
    let mode = f.metadata()?.mode() & 0o7777;
    if mode & 0o077 == 0 {
        return Ok((f, None));
    }
    f.set_permissions(fs::Permissions::from_mode(mode & 0o700))
        .map_err(|e| with_path(e, "tightening", path))?;
    Ok((f, Some(mode)))
}

/// The mode of a folder the user chose, when group or others may enter or list it.
pub fn open_to_others(path: &Path) -> Option<u32> {
    let mode = fs::metadata(path).ok()?.mode() & 0o7777;
    (mode & 0o077 != 0).then_some(mode)
}

/// Fail unless `path` belongs to the user running us: a folder someone else created where
/// ours belongs (a predictable name in /tmp) could be read, or swapped, by them.
pub fn check_owned(path: &Path) -> io::Result<()> {
    let meta = fs::symlink_metadata(path).map_err(|e| with_path(e, "stat", path))?;
    let me = nix::unistd::geteuid().as_raw();
    if meta.uid() != me || meta.file_type().is_symlink() {
        return Err(io::Error::new(
            io::ErrorKind::PermissionDenied,
            format!(
                "{} belongs to uid {}, not to us (uid {me}); remove it or choose another folder",
                path.display(),
                meta.uid()
            ),
        ));
    }
    Ok(())
}

/// Keep the kind of the error (callers match on NotFound) and add which path it was.
fn with_path(e: io::Error, what: &str, path: &Path) -> io::Error {
    io::Error::new(e.kind(), format!("{what} {}: {e}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mode(p: &Path) -> u32 {
        fs::symlink_metadata(p).unwrap().mode() & 0o7777
    }

    #[test]
    fn creates_private_and_tightens_loose_trees() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("a/b");
        assert_eq!(ensure_private_dir(&dir).unwrap(), None);
        assert_eq!(mode(&dir), 0o700);
        assert_eq!(mode(&tmp.path().join("a")), 0o700);

        fs::set_permissions(&dir, fs::Permissions::from_mode(0o2755)).unwrap();
        let file = dir.join("f");
        fs::write(&file, b"x").unwrap();
        fs::set_permissions(&file, fs::Permissions::from_mode(0o644)).unwrap();
        assert_eq!(tighten_tree(&dir).unwrap(), 2);
        assert_eq!((mode(&dir), mode(&file)), (0o700, 0o600));
        assert_eq!(tighten_tree(&dir).unwrap(), 0, "nothing left to do");
        assert_eq!(tighten_tree(&dir.join("gone")).unwrap(), 0);

        let log = dir.join("log");
        let (_, old) = open_private_append(&log).unwrap();
        assert_eq!((old, mode(&log)), (None, 0o600));
        fs::set_permissions(&log, fs::Permissions::from_mode(0o644)).unwrap();
        let (_, old) = open_private_append(&log).unwrap();
        assert_eq!((old, mode(&log)), (Some(0o644), 0o600));
        check_owned(&dir).unwrap();
    }
}
