//! The `cloudmount` command line.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use clap::{Parser, Subcommand};

use cloudmount::config::{ByteSize, Config, ConnectionConfig};
use cloudmount::control::{self, Request};
use cloudmount::daemon::{self, DynResult, MountSpec};

#[derive(Parser)]
#[command(
    name = "cloudmount",
    version,
    about = "Mount cloud storage as ordinary folders"
)]
struct Cli {
    /// More log output (-v info, -vv debug); RUST_LOG overrides.
    #[arg(short, long, action = clap::ArgAction::Count, global = true)]
    verbose: u8,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Mount every configured connection (or one local folder with --local).
    Mount(Box<MountArgs>),
    /// Unmount, uploading what is queued first (within --drain-timeout seconds).
    Unmount {
        /// The mount point (or give --config to use the mount_point it names).
        mount_point: Option<PathBuf>,
        #[arg(long)]
        config: Option<PathBuf>,
        #[arg(long)]
        drain_timeout: Option<f64>,
    },
    /// Install the mount(8) helper (mount.cloudmount, mount.fuse.cloudmount) into DIR.
    InstallHelpers {
        #[arg(long, default_value = "/sbin")]
        dir: PathBuf,
    },
    /// Connections, queued uploads, cache use, conflicts and recent errors.
    Status {
        mount_point: Option<PathBuf>,
        #[arg(long)]
        json: bool,
        /// Refresh every second until interrupted.
        #[arg(long)]
        watch: bool,
    },
    /// List the kept versions of a file.
    Versions { path: PathBuf },
    /// Bring back an earlier version of a file (it is uploaded as a new version).
    Restore {
        path: PathBuf,
        #[arg(long)]
        version: usize,
    },
    /// Compare two versions of a file: size change and, for text, a unified diff.
    Diff { path: PathBuf, a: usize, b: usize },
    /// Keep a file or folder available offline: download it whole and never evict it.
    Pin {
        path: PathBuf,
        /// Stop keeping it offline (it becomes evictable again).
        #[arg(long)]
        unpin: bool,
    },
    /// Retry uploads that failed permanently.
    Retry { mount_point: PathBuf },
    /// Upload everything queued now, without waiting for the upload delay.
    Sync {
        mount_point: PathBuf,
        /// How long to wait for the queue to drain.
        #[arg(long, default_value_t = 600.0)]
        wait: f64,
    },
    /// Fetch directory listings again on next access.
    Refresh { mount_point: PathBuf },
    /// Log in to an account (OAuth in your browser) for a connection of the config.
    Login {
        /// Provider type, e.g. gdrive.
        kind: String,
        /// The connection's name in the config.
        #[arg(long)]
        name: String,
        #[arg(long)]
        config: Option<PathBuf>,
        /// No browser here: open the URL elsewhere and paste the address it lands on.
        #[arg(long)]
        paste: bool,
        /// Use the device code flow (where the provider allows it for the scopes needed).
        #[arg(long)]
        device: bool,
    },
    /// Revoke a connection's tokens at the provider and delete them here.
    Logout {
        name: String,
        #[arg(long)]
        config: Option<PathBuf>,
    },
    /// List the configured connections and whether they are logged in.
    Connections {
        #[arg(long)]
        config: Option<PathBuf>,
    },
    /// Create a sample local "cloud" folder with a few files and mount it.
    Demo {
        #[arg(default_value = "~/cloudmount-demo")]
        mount_point: String,
    },
}

#[derive(clap::Args, Clone)]
struct MountArgs {
    /// Where to mount (default: mount_point from the config).
    mount_point: Option<PathBuf>,
    /// Config file (default: $XDG_CONFIG_HOME/cloudmount/config.toml).
    #[arg(long)]
    config: Option<PathBuf>,
    /// Mount this local folder as "the cloud", without a config file.
    #[arg(long)]
    local: Option<PathBuf>,
    /// Mount only this connection of the config, directly at the mount point.
    #[arg(long)]
    connection: Option<String>,
    /// Stay in the foreground (for systemd); otherwise return once the mount is ready.
    #[arg(short, long)]
    foreground: bool,
    #[arg(long)]
    state_dir: Option<PathBuf>,
    #[arg(long)]
    cache_dir: Option<PathBuf>,
    /// Chunk cache quota, e.g. 5GiB.
    #[arg(long)]
    cache_size: Option<ByteSize>,
    #[arg(long)]
    chunk_size: Option<ByteSize>,
    /// Seconds an upload waits after close (coalesces save-then-rename).
    #[arg(long)]
    upload_delay: Option<f64>,
    #[arg(long)]
    dir_ttl: Option<f64>,
    /// Seconds between looks for remote changes.
    #[arg(long)]
    poll_interval: Option<f64>,
    #[arg(long)]
    retry_backoff: Option<f64>,
    #[arg(long)]
    read_only: bool,
    /// Let other users access the mount (needs user_allow_other in /etc/fuse.conf).
    #[arg(long)]
    allow_other: bool,
    /// Mount options as for mount(8): ro, allow_other, cache_size=, config=, ...
    #[arg(short = 'o')]
    options: Vec<String>,
    /// Log file for the background daemon.
    #[arg(long)]
    log_file: Option<PathBuf>,
}

fn init_logging(verbose: u8, file: Option<&Path>) {
    use tracing_subscriber::EnvFilter;
    let default = match verbose {
        0 => "warn",
        1 => "info,fuser=warn",
        _ => "debug,sled=info,fuser=info",
    };
    let filter = EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| EnvFilter::new(default))
        // async-imap logs every command it sends at trace level, LOGIN's password and the
        // XOAUTH2 bearer token included, and every message it receives: never, whatever
        // RUST_LOG asks.
        .add_directive("async_imap=off".parse().expect("a valid directive"))
        .add_directive("imap_proto=off".parse().expect("a valid directive"));
    let builder = tracing_subscriber::fmt().with_env_filter(filter);
    // Under systemd, stderr goes to the journal, which timestamps and colours by itself.
    if file.is_none() && std::env::var_os("JOURNAL_STREAM").is_some() {
        builder
            .without_time()
            .with_ansi(false)
            .with_target(false)
            .with_writer(std::io::stderr)
            .init();
        return;
    }
    if let Some(path) = file {
        // The log names files and folders of the account: it is for its user only.
        if let Ok((f, loose)) = cloudmount::private_fs::open_private_append(path) {
            builder
                .with_ansi(false)
                .with_writer(std::sync::Mutex::new(f))
                .init();
            if let Some(mode) = loose {
                tracing::warn!(
                    log = %path.display(),
                    mode = format!("{mode:o}"),
                    "the log file was readable by other users; tightened to 0600"
                );
            }
            return;
        }
    }
    builder.with_writer(std::io::stderr).init();
}

fn expand_home(p: &str) -> PathBuf {
    match p.strip_prefix("~/") {
        Some(rest) => dirs::home_dir()
            .unwrap_or_else(|| PathBuf::from("/"))
            .join(rest),
        None => PathBuf::from(p),
    }
}

fn short_hash(s: &str) -> String {
    use sha2::Digest;
    hex::encode(&sha2::Sha256::digest(s.as_bytes())[..6])
}

/// Apply mount(8)-style options; unknown ones are an error rather than silently ignored.
fn apply_options(cfg: &mut Config, args: &mut MountArgs) -> DynResult<()> {
    for group in args.options.clone() {
        for opt in group.split(',').filter(|o| !o.is_empty()) {
            let (k, v) = opt
                .split_once('=')
                .map_or((opt, None), |(k, v)| (k, Some(v)));
            match (k, v) {
                ("ro", None) => cfg.read_only = true,
                ("rw", None) => cfg.read_only = false,
                ("allow_other", None) => cfg.allow_other = true,
                ("cache_size", Some(v)) => cfg.cache_size = v.parse()?,
                ("chunk_size", Some(v)) => cfg.chunk_size = v.parse()?,
                ("upload_delay", Some(v)) => cfg.upload_delay_secs = v.parse()?,
                ("dir_ttl", Some(v)) => cfg.dir_ttl_secs = v.parse()?,
                ("poll_interval", Some(v)) => cfg.poll_interval_secs = v.parse()?,
                ("drain_timeout", Some(v)) => cfg.drain_timeout_secs = v.parse()?,
                // mount.fuse's name for "run the filesystem as this user".
                ("setuid", Some(v)) => cfg.run_as = Some(v.to_string()),
                ("state_dir", Some(v)) => args.state_dir = Some(PathBuf::from(v)),
                ("cache_dir", Some(v)) => args.cache_dir = Some(PathBuf::from(v)),
                ("config", Some(_)) | ("local", Some(_)) => {} // handled before the config loads
                // Options mount(8) and systemd pass along that concern them, not us.
                (
                    "defaults" | "auto" | "noauto" | "user" | "users" | "nouser" | "_netdev"
                    | "nofail" | "dev" | "nodev" | "suid" | "nosuid" | "exec" | "noexec" | "atime"
                    | "noatime" | "relatime",
                    None,
                ) => {}
                (k, _) if k.starts_with("x-") || k.starts_with("comment=") => {}
                _ => return Err(format!("unknown mount option {opt:?}").into()),
            }
        }
    }
    Ok(())
}

fn mount_spec(args: MountArgs) -> DynResult<MountSpec> {
    mount_spec_named(args).map(|(spec, _)| spec)
}

/// The mount to run, and which of its folders the user named (rather than the defaults).
fn mount_spec_named(mut args: MountArgs) -> DynResult<(MountSpec, daemon::NamedFolders)> {
    for group in &args.options {
        for opt in group.split(',') {
            if let Some(v) = opt.strip_prefix("config=") {
                args.config = Some(PathBuf::from(v));
            }
            if let Some(v) = opt.strip_prefix("local=") {
                args.local = Some(PathBuf::from(v));
            }
        }
    }
    let (mut cfg, single) = if let Some(dir) = &args.local {
        let dir = std::fs::canonicalize(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        let mut cfg = Config::default();
        cfg.connections.push(ConnectionConfig {
            name: "local".into(),
            kind: "local".into(),
            path: Some(dir),
            settings: Default::default(),
            read_only: false,
        });
        (cfg, true)
    } else {
        let path = args.config.clone().unwrap_or_else(Config::default_path);
        let mut cfg = Config::load(&path)?;
        match &args.connection {
            Some(name) => {
                cfg.connections.retain(|c| &c.name == name);
                if cfg.connections.is_empty() {
                    return Err(
                        format!("{} has no connection named {name:?}", path.display()).into(),
                    );
                }
                (cfg, true)
            }
            None => (cfg, false),
        }
    };
    apply_options(&mut cfg, &mut args)?;
    // Before any default folder is worked out: they are the user's, under their home.
    if let Some(user) = &cfg.run_as {
        become_user(user)?;
    }
    if let Some(v) = args.cache_size {
        cfg.cache_size = v;
    }
    if let Some(v) = args.chunk_size {
        cfg.chunk_size = v;
    }
    if let Some(v) = args.upload_delay {
        cfg.upload_delay_secs = v;
    }
    if let Some(v) = args.dir_ttl {
        cfg.dir_ttl_secs = v;
    }
    if let Some(v) = args.poll_interval {
        cfg.poll_interval_secs = v;
    }
    if let Some(v) = args.retry_backoff {
        cfg.retry_backoff_secs = v;
    }
    cfg.read_only |= args.read_only;
    cfg.allow_other |= args.allow_other;
    cfg.validate()?;
    let mount_point = args
        .mount_point
        .clone()
        .or_else(|| cfg.mount_point.clone())
        .ok_or("no mount point given (argument or mount_point in the config)")?;
    let mount_point = std::fs::canonicalize(&mount_point)
        .map_err(|e| format!("mount point {}: {e}", mount_point.display()))?;
    // Each mount keeps its own metadata and cache, keyed by where it is mounted and what.
    let key = format!(
        "{}-{}",
        control::mount_id(&mount_point),
        short_hash(&format!(
            "{:?}",
            cfg.connections
                .iter()
                .map(|c| (&c.name, &c.kind, &c.path))
                .collect::<Vec<_>>()
        ))
    );
    let named = daemon::NamedFolders {
        state_dir: args.state_dir.is_some() || cfg.state_dir.is_some(),
        cache_dir: args.cache_dir.is_some() || cfg.cache_dir.is_some(),
    };
    let state_dir = args
        .state_dir
        .clone()
        .or_else(|| cfg.state_dir.clone())
        .unwrap_or_else(|| {
            dirs::state_dir()
                .or_else(dirs::data_local_dir)
                .unwrap_or_else(|| PathBuf::from("/var/lib"))
                .join("cloudmount")
                .join(&key)
        });
    let cache_dir = args
        .cache_dir
        .clone()
        .or_else(|| cfg.cache_dir.clone())
        .unwrap_or_else(|| {
            dirs::cache_dir()
                .unwrap_or_else(|| PathBuf::from("/var/cache"))
                .join("cloudmount")
                .join(&key)
        });
    Ok((
        MountSpec {
            config: cfg,
            mount_point,
            single,
            state_dir,
            cache_dir,
        },
        named,
    ))
}

/// Run as `name` from now on, for good (real, effective and saved ids, and groups), when
/// started by root on that user's behalf: every folder and file the daemon creates, and the
/// mount itself (through fusermount3), are then the user's. A no-op when already that user.
fn become_user(name: &str) -> DynResult<()> {
    use nix::unistd::{geteuid, initgroups, setgid, setuid, User};
    let user = User::from_name(name)
        .map_err(|e| format!("run_as {name:?}: {e}"))?
        .ok_or_else(|| format!("run_as {name:?}: no such user"))?;
    if geteuid() == user.uid {
        return Ok(());
    }
    if !geteuid().is_root() {
        return Err(
            format!("run_as {name:?}: only root can run cloudmount as another user").into(),
        );
    }
    let cname = std::ffi::CString::new(name).map_err(|e| format!("run_as {name:?}: {e}"))?;
    initgroups(&cname, user.gid).map_err(|e| format!("run_as {name:?}: initgroups: {e}"))?;
    setgid(user.gid).map_err(|e| format!("run_as {name:?}: setgid: {e}"))?;
    setuid(user.uid).map_err(|e| format!("run_as {name:?}: setuid: {e}"))?;
    // Root's folders are not the user's: the defaults follow the user's home, and the
    // control socket goes where the user's own `cloudmount status` looks for it.
    // Still single-threaded here, so changing the environment races with nothing.
    std::env::set_var("HOME", &user.dir);
    std::env::set_var("USER", name);
    std::env::set_var("LOGNAME", name);
    for var in [
        "XDG_CONFIG_HOME",
        "XDG_STATE_HOME",
        "XDG_CACHE_HOME",
        "XDG_DATA_HOME",
        "XDG_RUNTIME_DIR",
    ] {
        std::env::remove_var(var);
    }
    let run = PathBuf::from(format!("/run/user/{}", user.uid));
    if std::fs::metadata(&run).is_ok_and(|m| {
        use std::os::unix::fs::MetadataExt;
        m.is_dir() && m.uid() == user.uid.as_raw()
    }) {
        std::env::set_var("XDG_RUNTIME_DIR", run);
    }
    Ok(())
}

/// Whether process `pid` still runs, or is still letting go of its files. A zombie (exited,
/// not yet reaped by a parent that may never reap it) counts as gone once it is alone:
/// while the main thread is a zombie its other threads may still be exiting, and the open
/// files (the metadata store's lock) are closed only when the last of them has.
fn process_alive(pid: i32) -> bool {
    if nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), None)
        == Err(nix::errno::Errno::ESRCH)
    {
        return false;
    }
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return false;
    };
    // The state follows the command name, which is in parentheses and may hold any
    // character: look after the last ')'.
    let zombie = stat
        .rsplit_once(')')
        .is_some_and(|(_, rest)| rest.trim_start().starts_with(['Z', 'X']));
    if !zombie {
        return true;
    }
    std::fs::read_dir(format!("/proc/{pid}/task")).is_ok_and(|tasks| tasks.count() > 1)
}

fn is_mounted(mount_point: &Path) -> bool {
    let Ok(info) = std::fs::read_to_string("/proc/self/mountinfo") else {
        return false;
    };
    let target = mount_point.to_string_lossy();
    info.lines().any(|l| {
        let mut f = l.split(' ');
        f.nth(4).map(unescape_mount) == Some(target.to_string()) && l.contains(" - fuse")
    })
}

fn unescape_mount(s: &str) -> String {
    s.replace("\\040", " ")
        .replace("\\011", "\t")
        .replace("\\012", "\n")
        .replace("\\134", "\\")
}

/// Start the daemon in the background and return once the mount is usable.
fn mount_background(args: MountArgs, verbose: u8) -> DynResult<()> {
    let spec = mount_spec(args.clone())?;
    if is_mounted(&spec.mount_point) {
        return Err(format!("{} is already mounted", spec.mount_point.display()).into());
    }
    cloudmount::private_fs::create_private_dir(&spec.state_dir)?;
    let log = args
        .log_file
        .clone()
        .unwrap_or_else(|| spec.state_dir.join("daemon.log"));
    let exe = std::env::current_exe()?;
    let mut cmd = std::process::Command::new(exe);
    cmd.arg("mount")
        .arg("--foreground")
        .arg("--log-file")
        .arg(&log);
    for _ in 0..verbose.max(1) {
        cmd.arg("-v");
    }
    let argv: Vec<std::ffi::OsString> = std::env::args_os().collect();
    let after_mount = argv
        .iter()
        .position(|a| a == "mount")
        .map_or(argv.len(), |i| i + 1);
    // The rest of our own arguments, less those the daemon was given above (a
    // `--log-file` of the user's is the `log` it got; repeated, clap refuses it).
    let mut rest = argv[after_mount..].iter();
    while let Some(a) = rest.next() {
        if a == "-f" || a == "--foreground" || a.to_string_lossy().starts_with("--log-file=") {
            continue;
        }
        if a == "--log-file" {
            rest.next();
            continue;
        }
        cmd.arg(a);
    }
    // The daemon outlives this command: its stderr goes to the log, not to a pipe that
    // closes when we exit.
    // Created private; an older, looser log is tightened (and reported) by the daemon.
    let log_out = {
        use std::os::unix::fs::OpenOptionsExt;
        std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .mode(cloudmount::private_fs::FILE_MODE)
            .open(&log)
            .map_err(|e| format!("{}: {e}", log.display()))?
    };
    let log_start = log_out.metadata()?.len();
    cmd.stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(log_out);
    unsafe {
        use std::os::unix::process::CommandExt;
        // A session of its own: the daemon outlives the shell that started it.
        cmd.pre_exec(|| {
            nix::unistd::setsid().map_err(std::io::Error::from)?;
            Ok(())
        });
    }
    let mut child = cmd.spawn()?;
    let start = Instant::now();
    // Usable means the mount answers and so does the daemon: a `status` or `sync` right
    // after this command returns must find both (the daemon binds its control socket
    // before it mounts).
    let socket = cloudmount::control::socket_for(&spec.mount_point);
    let ready = || {
        is_mounted(&spec.mount_point) && std::os::unix::net::UnixStream::connect(&socket).is_ok()
    };
    while start.elapsed() < Duration::from_secs(30) {
        if ready() {
            println!(
                "mounted {} (log: {})",
                spec.mount_point.display(),
                log.display()
            );
            return Ok(());
        }
        if let Some(status) = child.try_wait()? {
            // What it said before it gave up: the last lines it added to the log.
            let text = std::fs::read(&log).unwrap_or_default();
            let added =
                String::from_utf8_lossy(&text[(log_start as usize).min(text.len())..]).into_owned();
            let last: Vec<&str> = added
                .lines()
                .filter(|l| l.contains("cloudmount:") || l.contains("ERROR"))
                .collect();
            let msg = last.last().copied().unwrap_or(added.trim());
            return Err(format!("the daemon exited ({status}): {}", msg.trim()).into());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Err(format!(
        "{} did not appear within 30s; see {}",
        spec.mount_point.display(),
        log.display()
    )
    .into())
}

/// The mount point of the cloudmount mount that contains `path`, and the path inside it.
fn locate(path: &Path) -> DynResult<(PathBuf, String)> {
    let abs = if path.exists() {
        std::fs::canonicalize(path)?
    } else {
        let parent = path
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        std::fs::canonicalize(parent)?.join(path.file_name().ok_or("bad path")?)
    };
    let info = std::fs::read_to_string("/proc/self/mountinfo")?;
    let mut best: Option<PathBuf> = None;
    for l in info.lines() {
        if !l.contains(" - fuse.cloudmount ") && !l.contains(" - fuse ") {
            continue;
        }
        let mp = PathBuf::from(unescape_mount(l.split(' ').nth(4).unwrap_or("")));
        if abs.starts_with(&mp)
            && best
                .as_ref()
                .is_none_or(|b| mp.as_os_str().len() > b.as_os_str().len())
            && control::socket_for(&mp).exists()
        {
            best = Some(mp);
        }
    }
    let mp = best.ok_or_else(|| format!("{} is not inside a cloudmount mount", abs.display()))?;
    let rel = abs.strip_prefix(&mp)?.to_string_lossy().into_owned();
    Ok((mp, format!("/{rel}")))
}

fn call(mount_point: &Path, req: Request) -> DynResult<serde_json::Value> {
    let mp = std::fs::canonicalize(mount_point).unwrap_or_else(|_| mount_point.to_path_buf());
    let socket = control::socket_for(&mp);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let resp = rt
        .block_on(control::call(&socket, &req))
        .map_err(|e| format!("no cloudmount daemon answers for {} ({e})", mp.display()))?;
    if resp.ok {
        Ok(resp.data)
    } else {
        Err(resp.error.unwrap_or_else(|| "failed".into()).into())
    }
}

fn human(n: u64) -> String {
    let units = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n as f64;
    let mut i = 0;
    while v >= 1024.0 && i < units.len() - 1 {
        v /= 1024.0;
        i += 1;
    }
    if i == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", units[i])
    }
}

fn print_status(v: &serde_json::Value) {
    println!(
        "{}  (pid {})",
        v["mount_point"].as_str().unwrap_or("?"),
        v["pid"]
    );
    for c in v["connections"].as_array().into_iter().flatten() {
        let q = &c["queue"];
        println!(
            "  {} [{}]: {}{}",
            c["name"].as_str().unwrap_or("?"),
            c["type"].as_str().unwrap_or("?"),
            c["state"].as_str().unwrap_or("?").to_lowercase(),
            c["message"]
                .as_str()
                .map(|m| format!(" ({m})"))
                .unwrap_or_default()
        );
        let t = &c["transfers"];
        let limit = |v: &serde_json::Value| {
            v.as_u64()
                .map(|b| format!("{}/s", human(b)))
                .unwrap_or_else(|| "unlimited".into())
        };
        println!(
            "    transfers: {} of {} in flight; down {} ({}), up {} ({})",
            t["in_flight"],
            t["max"],
            human(t["bytes_down"].as_u64().unwrap_or(0)),
            limit(&t["download_limit"]),
            human(t["bytes_up"].as_u64().unwrap_or(0)),
            limit(&t["upload_limit"]),
        );
        if let (Some(used), Some(total)) =
            (c["quota"]["used"].as_u64(), c["quota"]["total"].as_u64())
        {
            println!("    storage: {} used of {}", human(used), human(total));
        }
        println!(
            "    cache: {} of {} in {} files",
            human(c["cache"]["used"].as_u64().unwrap_or(0)),
            human(c["cache"]["quota"].as_u64().unwrap_or(0)),
            c["cache"]["files"]
        );
        println!(
            "    uploads: {} queued, {} in flight, {} failed, {} blocked behind failed; {} done / {} pending; {} completed",
            q["pending"],
            q["running"],
            q["failed"],
            q["blocked"],
            human(q["bytes_done"].as_u64().unwrap_or(0)),
            human(q["bytes_pending"].as_u64().unwrap_or(0)),
            q["completed"]
        );
        for j in q["jobs"].as_array().into_iter().flatten().take(20) {
            let state = if j["failed"].is_string() {
                "FAILED"
            } else if j["running"].as_bool() == Some(true) {
                "running"
            } else if j["blocked_by"].is_u64() {
                // Waits behind a parked job on the same path: say so, or it looks hung.
                "blocked"
            } else if j["stuck"].as_bool() == Some(true) {
                "stuck"
            } else {
                "queued"
            };
            println!(
                "      {state:7} {:7} {} {}{}",
                j["kind"].as_str().unwrap_or(""),
                j["path"].as_str().unwrap_or(""),
                human(j["size"].as_u64().unwrap_or(0)),
                j["last_error"]
                    .as_str()
                    .map(|e| format!("  last error: {e}"))
                    .unwrap_or_default()
            );
        }
        for k in c["conflicts"].as_array().into_iter().flatten() {
            println!(
                "    conflict: {} -> local edit saved as {}",
                k["path"].as_str().unwrap_or(""),
                k["conflict_copy"].as_str().unwrap_or("")
            );
        }
        for e in c["recent_errors"].as_array().into_iter().flatten() {
            println!(
                "    error {}: {}",
                e["at"].as_str().unwrap_or(""),
                e["message"].as_str().unwrap_or("")
            );
        }
    }
}

fn all_sockets() -> Vec<PathBuf> {
    std::fs::read_dir(control::runtime_dir())
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|e| e == "sock"))
        .collect()
}

fn status(mount_point: Option<PathBuf>, json: bool, watch: bool) -> DynResult<()> {
    loop {
        let mut results = Vec::new();
        match &mount_point {
            Some(mp) => results.push(call(mp, Request::Status)?),
            None => {
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()?;
                for s in all_sockets() {
                    if let Ok(r) = rt.block_on(control::call(&s, &Request::Status)) {
                        results.push(r.data);
                    }
                }
            }
        }
        if watch && !json {
            print!("\x1b[2J\x1b[H");
        }
        if json {
            println!("{}", serde_json::to_string_pretty(&results)?);
        } else if results.is_empty() {
            println!("no cloudmount mounts are running");
        } else {
            for r in &results {
                print_status(r);
            }
        }
        if !watch {
            return Ok(());
        }
        std::thread::sleep(Duration::from_secs(1));
    }
}

const DEMO_FILES: &[(&str, &str)] = &[
    ("README.txt", "This folder is served by cloudmount from a local directory acting as the cloud.\nEdit, copy, rename: changes are uploaded in the background.\n"),
    ("notes/ideas.md", "# Ideas\n\n- mount every account under one folder\n- keep 30 versions of each file\n"),
    ("notes/todo.txt", "try: cloudmount status\ntry: cloudmount versions notes/todo.txt\n"),
    ("photos/README.txt", "Put pictures here.\n"),
];

fn demo(mount_point: &str, verbose: u8) -> DynResult<()> {
    let mp = expand_home(mount_point);
    let cloud = dirs::data_local_dir()
        .unwrap_or_else(|| PathBuf::from("/tmp"))
        .join("cloudmount")
        .join("demo-cloud");
    if !cloud.exists() {
        for (name, content) in DEMO_FILES {
            let p = cloud.join(name);
            std::fs::create_dir_all(p.parent().expect("has parent"))?;
            std::fs::write(&p, content)?;
        }
    }
    std::fs::create_dir_all(&mp)?;
    if is_mounted(&std::fs::canonicalize(&mp)?) {
        println!("{} is already mounted", mp.display());
        return Ok(());
    }
    // Re-enter as a normal `mount` so the background daemon gets the same arguments.
    let exe = std::env::current_exe()?;
    let status = std::process::Command::new(exe)
        .args(["mount"])
        .arg(&mp)
        .arg("--local")
        .arg(&cloud)
        .args(std::iter::repeat_n("-v", verbose as usize))
        .status()?;
    if !status.success() {
        return Err("mount failed".into());
    }
    println!("the demo cloud folder is {}", cloud.display());
    println!(
        "try: ls {0}; echo hello > {0}/hello.txt; cloudmount status {0}",
        mp.display()
    );
    println!("unmount with: cloudmount unmount {}", mp.display());
    Ok(())
}

fn unmount(mount_point: &Path, drain: Option<f64>) -> DynResult<()> {
    let mp = std::fs::canonicalize(mount_point)?;
    if !control::socket_for(&mp).exists() {
        if is_mounted(&mp) {
            // No daemon (it was killed): detach the dead mount.
            eprintln!(
                "cloudmount: no daemon serves {}; detaching the mount",
                mp.display()
            );
            daemon::lazy_unmount(&mp);
            return Ok(());
        }
        return Err(format!("{} is not a cloudmount mount", mp.display()).into());
    }
    // The daemon answers once its queue drained (or the wait ran out); meanwhile the
    // bar follows the queue.
    let status = call(&mp, Request::Status)?;
    let daemon_pid = status["pid"].as_u64().and_then(|p| i32::try_from(p).ok());
    SYNC_START.store(
        queue_remaining(&status),
        std::sync::atomic::Ordering::Relaxed,
    );
    let mp2 = mp.clone();
    let v = with_progress(
        &mp,
        "uploading queued changes",
        |s| {
            let start = SYNC_START.load(std::sync::atomic::Ordering::Relaxed);
            (start.saturating_sub(queue_remaining(s)), start)
        },
        move || call(&mp2, Request::Unmount { drain_secs: drain }),
    )?;
    // The daemon exits right after answering.
    let start = Instant::now();
    while (is_mounted(&mp) || control::socket_for(&mp).exists())
        && start.elapsed() < Duration::from_secs(10)
    {
        std::thread::sleep(Duration::from_millis(50));
    }
    if is_mounted(&mp) {
        return Err(format!("{} is still mounted (busy?)", mp.display()).into());
    }
    // The daemon still closes its metadata store after the socket went: return only once
    // it is gone, so a `mount` of the same state folder right after us finds it free.
    if let Some(pid) = daemon_pid {
        let start = Instant::now();
        while process_alive(pid) && start.elapsed() < Duration::from_secs(30) {
            std::thread::sleep(Duration::from_millis(20));
        }
        if process_alive(pid) {
            eprintln!("cloudmount: the daemon (pid {pid}) is still closing its state");
        }
    }
    println!("unmounted {}", mp.display());
    let left = v["left"].as_u64().unwrap_or(0);
    if left > 0 {
        println!(
            "{left} change(s) did not reach the remote in time: they are kept and upload at \
             the next mount"
        );
    }
    Ok(())
}

/// Run `work` (a call to the daemon) while a progress bar follows `measure(status)`,
/// which gives (done, total). The bar hides itself when stderr is not a terminal.
fn with_progress<T: Send + 'static>(
    mount_point: &Path,
    what: &str,
    measure: fn(&serde_json::Value) -> (u64, u64),
    work: impl FnOnce() -> DynResult<T> + Send + 'static,
) -> DynResult<T> {
    let handle = std::thread::spawn(move || work().map_err(|e| e.to_string()));
    let bar = indicatif::ProgressBar::new(0);
    bar.set_style(
        indicatif::ProgressStyle::with_template("{msg} [{bar:30}] {pos}/{len} ({elapsed})")
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    bar.set_message(what.to_string());
    while !handle.is_finished() {
        if let Ok(status) = call(mount_point, Request::Status) {
            let (done, total) = measure(&status);
            bar.set_length(total.max(done));
            bar.set_position(done);
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    bar.finish_and_clear();
    handle
        .join()
        .map_err(|_| "worker thread panicked")?
        .map_err(Into::into)
}

fn queue_remaining(status: &serde_json::Value) -> u64 {
    status["connections"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|c| {
            c["queue"]["pending"].as_u64().unwrap_or(0)
                + c["queue"]["running"].as_u64().unwrap_or(0)
        })
        .sum()
}

/// Jobs queued when `sync` began, for its progress bar.
static SYNC_START: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

fn find_connection(config: Option<PathBuf>, name: &str) -> DynResult<(Config, ConnectionConfig)> {
    let path = config.unwrap_or_else(Config::default_path);
    let cfg = Config::load(&path)?;
    let conn = cfg
        .connections
        .iter()
        .find(|c| c.name == name)
        .cloned()
        .ok_or_else(|| format!("{} has no connection named {name:?}", path.display()))?;
    Ok((cfg, conn))
}

fn login(
    kind: &str,
    name: &str,
    config: Option<PathBuf>,
    paste: bool,
    device: bool,
) -> DynResult<()> {
    use cloudmount::accounts::{self, connection};
    let (cfg, conn) = match find_connection(config.clone(), name) {
        Ok(x) => x,
        Err(e) => {
            return Err(format!(
                "{e}\nadd it to {} first, e.g.:\n\n[[connection]]\nname = \"{name}\"\ntype = \"{kind}\"\nsettings = {{ client_id = \"YOUR-CLIENT-ID.apps.googleusercontent.com\", client_secret_file = \"/path/to/secret\" }}\n",
                config.unwrap_or_else(Config::default_path).display()
            )
            .into())
        }
    };
    if conn.kind != kind {
        return Err(format!(
            "connection {name:?} is of type {:?}, not {kind:?}",
            conn.kind
        )
        .into());
    }
    let (oauth, _) = cloudmount::provider::registry::oauth_client(&conn)?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let tokens = rt.block_on(async {
        if device {
            accounts::login::login_device(&oauth, |p| {
                println!("To sign in, visit {} and enter the code {}", p.verification_uri, p.user_code);
            })
            .await
        } else if paste {
            accounts::login::login_paste(&oauth, |url| async move {
                println!("Open this address in a browser on any machine and sign in:\n\n  {url}\n");
                println!("The browser then fails to load a 127.0.0.1 address: copy that whole address here and press Enter:");
                let mut line = String::new();
                let _ = std::io::stdin().read_line(&mut line);
                line.trim().to_string()
            })
            .await
        } else {
            accounts::login::login_loopback(&oauth, &Default::default(), accounts::login::system_browser_opener).await
        }
    })?;
    let vault = accounts::TokenVault::open(&connection::vault_dir(&cfg)?)?;
    vault.save(&connection::account_id(&conn)?, &tokens)?;
    println!("logged in: connection {name:?} is ready to mount");
    Ok(())
}

fn logout(name: &str, config: Option<PathBuf>) -> DynResult<()> {
    use cloudmount::accounts::{self, connection};
    let (cfg, conn) = find_connection(config, name)?;
    let (oauth, _) = cloudmount::provider::registry::oauth_client(&conn)?;
    let vault = accounts::TokenVault::open(&connection::vault_dir(&cfg)?)?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(accounts::logout(
        &vault,
        &connection::account_id(&conn)?,
        &oauth,
    ))?;
    println!("logged out of {name:?}: tokens revoked and deleted");
    Ok(())
}

fn connections(config: Option<PathBuf>) -> DynResult<()> {
    use cloudmount::accounts::{self, connection};
    let path = config.unwrap_or_else(Config::default_path);
    let cfg = Config::load(&path)?;
    let vault = connection::vault_dir(&cfg)
        .and_then(|d| accounts::TokenVault::open(&d))
        .ok();
    for c in &cfg.connections {
        let login = if !cloudmount::provider::registry::uses_oauth(c) {
            "no login needed".to_string()
        } else {
            match (&vault, connection::account_id(c)) {
                (Some(v), Ok(id)) => match v.load(&id) {
                    Ok(Some(_)) => "logged in".to_string(),
                    Ok(None) => format!("not logged in: run `{}`", id.login_command()),
                    Err(e) => format!("token vault: {e}"),
                },
                _ => "token vault unavailable".to_string(),
            }
        };
        println!("{:20} {:10} {login}", c.name, c.kind);
    }
    Ok(())
}

const MOUNT_HELPER: &str = include_str!("../mount-helpers/mount.cloudmount");

fn install_helpers(dir: &Path) -> DynResult<()> {
    use std::os::unix::fs::PermissionsExt;
    let exe = std::env::current_exe()?;
    let script = MOUNT_HELPER.replace("@CLOUDMOUNT@", &exe.to_string_lossy());
    // mount(8) looks for mount.TYPE: "cloudmount" and "fuse.cloudmount" both work.
    for name in ["mount.cloudmount", "mount.fuse.cloudmount"] {
        let path = dir.join(name);
        let tmp = dir.join(format!(".{name}.tmp"));
        std::fs::write(&tmp, &script)?;
        std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o755))?;
        std::fs::rename(&tmp, &path)?;
        println!("installed {}", path.display());
    }
    Ok(())
}

fn run(cli: Cli) -> DynResult<()> {
    match cli.command {
        Command::Mount(args) => {
            if args.foreground {
                let log_file = args.log_file.clone();
                // The spec first: with run_as it switches users, and the log must be theirs.
                let (spec, named) = mount_spec_named(*args)?;
                init_logging(cli.verbose, log_file.as_deref());
                daemon::secure_folders(&spec, named)?;
                daemon::run(spec)
            } else {
                init_logging(cli.verbose, None);
                mount_background(*args, cli.verbose)
            }
        }
        Command::Unmount {
            mount_point,
            config,
            drain_timeout,
        } => {
            let mp = match (mount_point, config) {
                (Some(mp), _) => mp,
                (None, config) => {
                    let path = config.unwrap_or_else(Config::default_path);
                    Config::load(&path)?
                        .mount_point
                        .ok_or_else(|| format!("{} names no mount_point", path.display()))?
                }
            };
            unmount(&mp, drain_timeout)
        }
        Command::InstallHelpers { dir } => install_helpers(&dir),
        Command::Status {
            mount_point,
            json,
            watch,
        } => status(mount_point, json, watch),
        Command::Versions { path } => {
            let (mp, rel) = locate(&path)?;
            let v = call(&mp, Request::Versions { path: rel })?;
            println!("{:>4}  {:25}  {:>12}  hash", "#", "time", "size");
            for e in v.as_array().into_iter().flatten() {
                let t: std::time::SystemTime = serde_json::from_value(e["time"].clone())?;
                println!(
                    "{:>4}  {:25}  {:>12}  {}",
                    e["number"],
                    chrono::DateTime::<chrono::Local>::from(t)
                        .format("%Y-%m-%d %H:%M:%S%.3f")
                        .to_string(),
                    e["size"],
                    e["hash"].as_str().unwrap_or("")
                );
            }
            Ok(())
        }
        Command::Restore { path, version } => {
            let (mp, rel) = locate(&path)?;
            call(&mp, Request::Restore { path: rel, version })?;
            println!("restored version {version} of {}", path.display());
            Ok(())
        }
        Command::Diff { path, a, b } => {
            let (mp, rel) = locate(&path)?;
            let v = call(&mp, Request::Diff { path: rel, a, b })?;
            println!(
                "size: {} -> {} bytes ({:+})",
                v["size_a"],
                v["size_b"],
                v["size_change"].as_i64().unwrap_or(0)
            );
            match v["unified_diff"].as_str() {
                Some(d) => print!("{d}"),
                None => println!("(binary content: no text diff)"),
            }
            Ok(())
        }
        Command::Retry { mount_point } => {
            let v = call(&mount_point, Request::Retry)?;
            println!("retrying {} upload(s)", v["retried"]);
            Ok(())
        }
        Command::Sync { mount_point, wait } => {
            let queued = call(&mount_point, Request::Status).map(|s| queue_remaining(&s))?;
            SYNC_START.store(queued, std::sync::atomic::Ordering::Relaxed);
            let mp = mount_point.clone();
            let v = with_progress(
                &mount_point,
                "uploading",
                |s| {
                    let start = SYNC_START.load(std::sync::atomic::Ordering::Relaxed);
                    (start.saturating_sub(queue_remaining(s)), start)
                },
                move || call(&mp, Request::Sync { wait_secs: wait }),
            )?;
            if v["drained"].as_bool() == Some(true) {
                println!("everything is uploaded");
                Ok(())
            } else {
                Err("uploads are still queued (see cloudmount status)".into())
            }
        }
        Command::Pin { path, unpin } => {
            let (mp, rel) = locate(&path)?;
            let mp2 = mp.clone();
            let v = with_progress(
                &mp,
                if unpin { "unpinning" } else { "downloading" },
                |s| {
                    s["connections"]
                        .as_array()
                        .into_iter()
                        .flatten()
                        .fold((0, 0), |(d, t), c| {
                            (
                                d + c["pin"]["bytes_done"].as_u64().unwrap_or(0),
                                t + c["pin"]["bytes_total"].as_u64().unwrap_or(0),
                            )
                        })
                },
                move || {
                    call(
                        &mp2,
                        Request::Pin {
                            path: rel,
                            keep: !unpin,
                        },
                    )
                },
            )?;
            println!(
                "{} {} file(s), {}",
                if unpin { "unpinned" } else { "kept offline:" },
                v["files_done"],
                human(v["bytes_done"].as_u64().unwrap_or(0))
            );
            Ok(())
        }
        Command::Refresh { mount_point } => call(&mount_point, Request::Refresh).map(|_| ()),
        Command::Login {
            kind,
            name,
            config,
            paste,
            device,
        } => login(&kind, &name, config, paste, device),
        Command::Logout { name, config } => logout(&name, config),
        Command::Connections { config } => connections(config),
        Command::Demo { mount_point } => {
            init_logging(cli.verbose, None);
            demo(&mount_point, cli.verbose)
        }
    }
}

/// glibc gives each thread that allocates under contention an arena of its own (up to 8
/// per core), and memory freed in one is not reused by another: listing a 50,000-message
/// mailbox again peaked at 152 MiB resident with the default and at 104 MiB with two
/// arenas, for the same work in the same time (bench/imap.py). `MALLOC_ARENA_MAX` in the
/// environment still wins.
fn limit_malloc_arenas() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    if std::env::var_os("MALLOC_ARENA_MAX").is_none() {
        // SAFETY: mallopt only sets an allocator tunable; called before any thread exists.
        unsafe {
            libc::mallopt(libc::M_ARENA_MAX, 2);
        }
    }
}

fn main() -> ExitCode {
    // Before anything is created: the state, cache, data and runtime folders, the log and
    // the vault are for this user only, whatever umask the shell or service manager set.
    cloudmount::private_fs::restrict_umask();
    limit_malloc_arenas();
    let cli = Cli::parse();
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("cloudmount: {e}");
            ExitCode::FAILURE
        }
    }
}
