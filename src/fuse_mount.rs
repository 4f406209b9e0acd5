//! Getting a FUSE session onto a mount point: directly when running as root, through the
//! setuid `fusermount3` helper otherwise (the way every unprivileged FUSE filesystem
//! mounts), and unmounting again either way.

use std::io::{self, IoSliceMut};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::Command;

use nix::sys::socket::{recvmsg, ControlMessageOwned, MsgFlags, UnixAddr};

use crate::fuse::CloudFs;

/// A mounted filesystem whose requests are served on a background thread.
pub struct KernelMount {
    session: Option<fuser::BackgroundSession>,
    mount_point: PathBuf,
    /// Mounted by fusermount3: unmounting goes through it as well.
    via_fusermount: bool,
}

impl KernelMount {
    /// Whether the session ended (the kernel unmounted it, e.g. `umount` from outside).
    pub fn is_finished(&self) -> bool {
        self.session.as_ref().is_none_or(|s| s.guard.is_finished())
    }

    pub fn unmount(mut self) -> io::Result<()> {
        self.unmount_inner()
    }

    fn unmount_inner(&mut self) -> io::Result<()> {
        let Some(session) = self.session.take() else {
            return Ok(());
        };
        if self.via_fusermount {
            let status = Command::new("fusermount3")
                .args(["-u", "-q", "--"])
                .arg(&self.mount_point)
                .status()?;
            if !status.success() && !session.guard.is_finished() {
                self.session = Some(session);
                return Err(io::Error::other(format!(
                    "fusermount3 -u {} failed (busy?)",
                    self.mount_point.display()
                )));
            }
            session.join()
        } else {
            session.umount_and_join()
        }
    }
}

impl Drop for KernelMount {
    fn drop(&mut self) {
        if let Err(e) = self.unmount_inner() {
            tracing::warn!(error = %e, "unmount on drop failed");
        }
    }
}

/// Mount `fs` and start serving it. `connect` gets the notifier before the first
/// request can arrive.
pub fn mount(
    fs: CloudFs,
    mount_point: &Path,
    config: &fuser::Config,
    connect: impl FnOnce(fuser::Notifier),
) -> io::Result<KernelMount> {
    if nix::unistd::geteuid().is_root() {
        let session = fuser::Session::new(fs, mount_point, config)?;
        connect(session.notifier());
        return Ok(KernelMount {
            session: Some(session.spawn()?),
            mount_point: mount_point.to_path_buf(),
            via_fusermount: false,
        });
    }
    let fd = fusermount(mount_point, &options_string(config))?;
    let session = fuser::Session::from_fd(fs, fd, config.acl, config.clone())?;
    connect(session.notifier());
    Ok(KernelMount {
        session: Some(session.spawn()?),
        mount_point: mount_point.to_path_buf(),
        via_fusermount: true,
    })
}

/// The `-o` string fusermount3 understands for our mount options.
fn options_string(config: &fuser::Config) -> String {
    use fuser::MountOption::*;
    let mut opts: Vec<String> = config
        .mount_options
        .iter()
        .filter_map(|o| match o {
            FSName(n) => Some(format!("fsname={n}")),
            Subtype(s) => Some(format!("subtype={s}")),
            DefaultPermissions => Some("default_permissions".into()),
            NoDev => Some("nodev".into()),
            NoSuid => Some("nosuid".into()),
            RO => Some("ro".into()),
            RW => Some("rw".into()),
            NoExec => Some("noexec".into()),
            NoAtime => Some("noatime".into()),
            CUSTOM(c) => Some(c.clone()),
            _ => None,
        })
        .collect();
    if config.acl != fuser::SessionACL::Owner {
        opts.push("allow_other".into());
    }
    opts.join(",")
}

/// Ask fusermount3 to mount, and receive the /dev/fuse descriptor it opened for us over
/// the socket named by `_FUSE_COMMFD` (libfuse's protocol).
fn fusermount(mount_point: &Path, options: &str) -> io::Result<OwnedFd> {
    let (ours, theirs) = UnixStream::pair()?;
    // The child must inherit its end: clear close-on-exec on it.
    nix::fcntl::fcntl(
        &theirs,
        nix::fcntl::FcntlArg::F_SETFD(nix::fcntl::FdFlag::empty()),
    )
    .map_err(io::Error::from)?;
    let mut child = Command::new("fusermount3")
        .arg("-o")
        .arg(options)
        .arg("--")
        .arg(mount_point)
        .env("_FUSE_COMMFD", theirs.as_raw_fd().to_string())
        .spawn()
        .map_err(|e| io::Error::new(e.kind(), format!("cannot run fusermount3: {e}")))?;
    drop(theirs);
    let received = receive_fd(&ours);
    let status = child.wait()?;
    match received {
        Ok(fd) => Ok(fd),
        Err(e) if !status.success() => Err(io::Error::other(format!(
            "fusermount3 could not mount {} ({status}): {e}",
            mount_point.display()
        ))),
        Err(e) => Err(e),
    }
}

fn receive_fd(socket: &UnixStream) -> io::Result<OwnedFd> {
    let mut byte = [0u8; 1];
    let mut iov = [IoSliceMut::new(&mut byte)];
    let mut cmsg = nix::cmsg_space!(RawFd);
    let msg = recvmsg::<UnixAddr>(
        socket.as_raw_fd(),
        &mut iov,
        Some(&mut cmsg),
        MsgFlags::empty(),
    )
    .map_err(io::Error::from)?;
    for c in msg.cmsgs().map_err(io::Error::from)? {
        if let ControlMessageOwned::ScmRights(fds) = c {
            if let Some(&fd) = fds.first() {
                // SAFETY: the kernel just gave us this descriptor; nobody else owns it.
                return Ok(unsafe { OwnedFd::from_raw_fd(fd) });
            }
        }
    }
    Err(io::Error::other("fusermount3 sent no file descriptor"))
}
