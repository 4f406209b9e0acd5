//! The daemon: builds every connection from the configuration, mounts them under one
//! mount point, serves the control socket, and shuts down cleanly (draining the
//! write-back queue within a bounded time, or leaving it persisted and saying so).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use serde_json::json;

use crate::cache::ChunkCache;
use crate::config::{secs, Config, ConnectionConfig};
use crate::control::{self, Request, Response};
use crate::metadata::Store;
use crate::mount_root::{Connection, MountRoot};
use crate::provider::Provider;
use crate::vfs::{Vfs, VfsConfig};
use crate::writeback::{QueueConfig, WriteBackQueue};

pub type DynError = Box<dyn std::error::Error + Send + Sync>;
pub type DynResult<T> = Result<T, DynError>;

/// Everything needed to run one mount.
#[derive(Debug, Clone)]
pub struct MountSpec {
    pub config: Config,
    pub mount_point: PathBuf,
    /// Show the only connection directly at the mount point.
    pub single: bool,
    pub state_dir: PathBuf,
    pub cache_dir: PathBuf,
}

/// What a connection points at, as stored in the metadata store. A password written into
/// the URL (`https://user:pass@host/`) is left out: the store must hold no secret.
fn identity(c: &ConnectionConfig) -> String {
    let url = c.settings.get("url").map(|u| match u.as_str() {
        Some(text) => match reqwest::Url::parse(text) {
            Ok(mut parsed) if parsed.password().is_some() => {
                let _ = parsed.set_password(None);
                toml::Value::String(parsed.to_string()).to_string()
            }
            _ => u.to_string(),
        },
        None => u.to_string(),
    });
    identity_with_url(c, url)
}

/// The identity earlier versions stored, URL password included: still recognised, and
/// replaced by [`identity`] when met.
fn legacy_identity(c: &ConnectionConfig) -> String {
    identity_with_url(c, c.settings.get("url").map(|u| u.to_string()))
}

fn identity_with_url(c: &ConnectionConfig, url: Option<String>) -> String {
    format!(
        "{}:{}:{}",
        c.kind,
        c.path
            .as_ref()
            .map(|p| p.display().to_string())
            .unwrap_or_default(),
        url.unwrap_or_default()
    )
}

/// The persistent slot of a connection (its inode-number prefix).
fn slot_for(db: &sled::Db, c: &ConnectionConfig) -> DynResult<u16> {
    let slots = db.open_tree("slots")?;
    let ids = db.open_tree("identities")?;
    if let Some(v) = slots.get(c.name.as_bytes())? {
        let slot = u16::from_be_bytes([v[0], v[1]]);
        let known = ids
            .get(c.name.as_bytes())?
            .map(|v| String::from_utf8_lossy(&v).into_owned());
        if known.as_deref() == Some(legacy_identity(c).as_str()) {
            ids.insert(c.name.as_bytes(), identity(c).as_bytes())?;
        } else if known.as_deref() != Some(identity(c).as_str()) {
            return Err(format!(
                "connection {:?} now points somewhere else than when its metadata was stored \
                 ({}); use another state_dir, or another connection name",
                c.name,
                known.unwrap_or_default()
            )
            .into());
        }
        return Ok(slot);
    }
    let max = slots
        .iter()
        .filter_map(|r| r.ok())
        .map(|(_, v)| u16::from_be_bytes([v[0], v[1]]))
        .max()
        .unwrap_or(0);
    let slot = max + 1;
    slots.insert(c.name.as_bytes(), &slot.to_be_bytes())?;
    ids.insert(c.name.as_bytes(), identity(c).as_bytes())?;
    Ok(slot)
}

/// The metadata store's page cache: enough for the hot part of a few hundred thousand
/// entries; the rest is read from disk (the OS page cache keeps it close).
const METADATA_CACHE_BYTES: u64 = 64 << 20;

/// How long opening the metadata store waits for a lock held by another process: a
/// daemon that was just told to unmount holds it until it has exited.
const METADATA_LOCK_WAIT: Duration = Duration::from_secs(10);

pub fn open_db(state_dir: &Path) -> DynResult<sled::Db> {
    crate::private_fs::create_private_dir(state_dir)?;
    let config = sled::Config::new()
        .path(state_dir.join("metadata"))
        // sled's default page cache is 1 GiB: with a large folder it filled up to that
        // (522 MiB resident after listing a 50,000-message mailbox, bench/imap.py).
        .cache_capacity(METADATA_CACHE_BYTES);
    let start = std::time::Instant::now();
    loop {
        match config.open() {
            Ok(db) => return Ok(db),
            // sled reports a held lock only in its message (kind `Other`).
            Err(sled::Error::Io(e))
                if e.to_string().contains("could not acquire lock")
                    && start.elapsed() < METADATA_LOCK_WAIT =>
            {
                std::thread::sleep(Duration::from_millis(50));
            }
            Err(e) => {
                return Err(format!(
                    "cannot open the metadata store in {} ({e}); is another cloudmount using it?",
                    state_dir.display()
                )
                .into())
            }
        }
    }
}

/// Build the filesystem of every connection (no kernel involved): used by the daemon and
/// by tests that drive the filesystem logic directly.
pub fn build_connections(spec: &MountSpec, db: &sled::Db) -> DynResult<Vec<Connection>> {
    let cfg = &spec.config;
    let mut out = Vec::new();
    for c in &cfg.connections {
        let provider = crate::provider::registry::build(cfg, c, &spec.state_dir)?;
        out.push(build_connection(spec, db, c, provider)?);
    }
    Ok(out)
}

pub fn build_connection(
    spec: &MountSpec,
    db: &sled::Db,
    c: &ConnectionConfig,
    provider: Arc<dyn Provider>,
) -> DynResult<Connection> {
    let cfg = &spec.config;
    let slot = slot_for(db, c)?;
    let writable = provider.capabilities().writable;
    let io = Arc::new(crate::provider::instrumented::InstrumentedProvider::new(
        provider,
        crate::provider::instrumented::TransferLimits {
            download_bytes_per_sec: cfg.download_limit.map(|b| b.0),
            upload_bytes_per_sec: cfg.upload_limit.map(|b| b.0),
            max_transfers: cfg.max_transfers,
        },
    ));
    let provider: Arc<dyn Provider> = io.clone();
    let store = Store::open(db, slot)?;
    let queue = WriteBackQueue::load(
        store.clone(),
        QueueConfig {
            upload_delay: secs(cfg.upload_delay_secs),
            concurrency: cfg.upload_concurrency,
            max_attempts: cfg.max_attempts,
            backoff_base: secs(cfg.retry_backoff_secs),
            backoff_max: secs(cfg.retry_backoff_max_secs),
            fold_case: provider.capabilities().case_insensitive,
        },
    )?;
    let cache = ChunkCache::open(
        spec.cache_dir.join(format!("conn-{slot}")),
        store.clone(),
        Arc::clone(&provider),
        cfg.chunk_size.0,
        cfg.cache_size.0,
        cfg.inflight_budget.0,
    )?;
    let vfs = Vfs::new(
        c.name.clone(),
        provider,
        store,
        cache,
        queue,
        spec.state_dir.join("staging").join(format!("conn-{slot}")),
        VfsConfig {
            dir_ttl: secs(cfg.dir_ttl_secs),
            // A provider that cannot change the remote is mounted read-only: every change
            // is EROFS at once, instead of being queued for an upload that cannot land.
            read_only: cfg.read_only || c.read_only || !writable,
            readahead_max: cfg.readahead_max.0,
            versions_to_keep: cfg.versions,
            ..VfsConfig::default()
        },
        Arc::clone(&io.metrics.health),
    )?;
    Ok(Connection { slot, vfs, io })
}

/// Which of the daemon's folders the user named (config or command line). Those are the
/// user's: only what cloudmount creates inside them is tightened, and the folder itself is
/// warned about when others may enter it. The default ones are cloudmount's own.
#[derive(Debug, Clone, Copy, Default)]
pub struct NamedFolders {
    pub state_dir: bool,
    pub cache_dir: bool,
}

/// Create the state and cache folders private, and tighten what an earlier version (or
/// another umask) left open to other users: the metadata store, staging copies, the log,
/// cached contents. Everything tightened is reported in one log line.
pub fn secure_folders(spec: &MountSpec, named: NamedFolders) -> DynResult<()> {
    use crate::private_fs::{create_private_dir, ensure_private_dir, open_to_others, tighten_tree};
    let mut tightened: Vec<String> = Vec::new();
    let mut note = |path: &Path, changed: usize| {
        if changed > 0 {
            tightened.push(format!("{} ({changed})", path.display()));
        }
    };
    for (dir, is_named, key) in [
        (&spec.state_dir, named.state_dir, "state_dir"),
        (&spec.cache_dir, named.cache_dir, "cache_dir"),
    ] {
        if is_named {
            create_private_dir(dir)?;
            if let Some(mode) = open_to_others(dir) {
                tracing::warn!(
                    folder = %dir.display(),
                    mode = format!("{mode:o}"),
                    "the {key} you chose is open to other users: what cloudmount keeps in it \
                     is private, but its names are listable; consider chmod 700"
                );
            }
        } else {
            // The default place is <base>/cloudmount/<mount key>: both levels are ours.
            if let Some(parent) = dir.parent() {
                note(parent, usize::from(ensure_private_dir(parent)?.is_some()));
            }
            note(dir, usize::from(ensure_private_dir(dir)?.is_some()));
        }
    }
    for name in ["metadata", "staging", "daemon.log"] {
        let p = spec.state_dir.join(name);
        note(&p, tighten_tree(&p)?);
    }
    for entry in std::fs::read_dir(&spec.cache_dir)? {
        let p = entry?.path();
        if p.file_name()
            .and_then(|n| n.to_str())
            .is_some_and(|n| n.starts_with("conn-"))
        {
            note(&p, tighten_tree(&p)?);
        }
    }
    // The data folder: the token vault (which guards its own folder) and the demo cloud.
    if spec.config.accounts_dir.is_none() {
        if let Some(p) = dirs::data_dir().map(|d| d.join("cloudmount")) {
            if p.is_dir() {
                note(&p, usize::from(crate::private_fs::tighten(&p)?.is_some()));
            }
        }
    }
    if !tightened.is_empty() {
        tracing::warn!(
            "folders and files other users could read were made private (0700 folders, \
             0600 files); tightened (entries): {}",
            tightened.join(", ")
        );
    }
    Ok(())
}

/// Tell systemd (Type=notify) about our state, when started by it.
pub fn sd_notify(state: &str) {
    let Some(path) = std::env::var_os("NOTIFY_SOCKET") else {
        return;
    };
    let sock = match std::os::unix::net::UnixDatagram::unbound() {
        Ok(s) => s,
        Err(_) => return,
    };
    let bytes = path.as_encoded_bytes();
    let res = if let Some(name) = bytes.strip_prefix(b"@") {
        use std::os::linux::net::SocketAddrExt;
        std::os::unix::net::SocketAddr::from_abstract_name(name)
            .and_then(|addr| sock.send_to_addr(state.as_bytes(), &addr))
    } else {
        sock.send_to(state.as_bytes(), Path::new(&path))
    };
    if let Err(e) = res {
        tracing::warn!(error = %e, "could not notify systemd");
    }
}

pub fn status_json(root: &MountRoot, mount_point: &Path) -> serde_json::Value {
    let mut conns = Vec::new();
    for c in root.connections.values() {
        let v = &c.vfs;
        let (state, message) = v.connection_state();
        let cache = v.cache.stats();
        let jobs = v.queue.status();
        let pending_bytes: u64 = jobs
            .iter()
            .filter(|j| j.failed.is_none())
            .map(|j| j.size)
            .sum();
        let done_bytes: u64 = jobs.iter().map(|j| j.done_bytes).sum();
        conns.push(json!({
            "name": v.name,
            "type": v.provider.kind(),
            "state": state,
            "message": message,
            "transfers": {"in_flight": c.io.transfers_in_flight(), "max": c.io.limits.max_transfers,
                          "download_limit": c.io.limits.download_bytes_per_sec,
                          "upload_limit": c.io.limits.upload_bytes_per_sec,
                          "bytes_down": c.io.metrics.bytes_down.load(std::sync::atomic::Ordering::Relaxed),
                          "bytes_up": c.io.metrics.bytes_up.load(std::sync::atomic::Ordering::Relaxed)},
            "cache": {"used": cache.used, "quota": cache.quota, "files": cache.files,
                      "hits": cache.hits, "misses": cache.misses},
            "queue": {
                "pending": jobs.iter().filter(|j| j.failed.is_none() && !j.running).count(),
                "running": jobs.iter().filter(|j| j.running).count(),
                "failed": jobs.iter().filter(|j| j.failed.is_some()).count(),
                "blocked": jobs.iter().filter(|j| j.blocked_by.is_some()).count(),
                "bytes_pending": pending_bytes,
                "bytes_done": done_bytes,
                "completed": v.queue.completed(),
                "jobs": jobs,
            },
            "quota": v.cached_quota(),
            "conflicts": v.conflicts(),
            "pin": v.pin_progress.lock().unwrap().clone(),
            "recent_errors": v.queue.recent_errors().iter().map(|(t, m)| json!({
                "at": chrono::DateTime::<chrono::Local>::from(*t).to_rfc3339(), "message": m
            })).collect::<Vec<_>>(),
        }));
    }
    json!({"mount_point": mount_point, "pid": std::process::id(), "connections": conns})
}

/// What control requests share with the daemon's main loop.
pub struct ControlState {
    pub shutdown: tokio::sync::Notify,
    /// `unmount --drain-timeout` overrides the configured wait.
    pub drain_override: std::sync::Mutex<Option<f64>>,
    /// Set once the queue drained (or the wait ran out): how many jobs are left.
    pub drained: tokio::sync::watch::Sender<Option<usize>>,
}

pub async fn handle_request(
    root: &Arc<MountRoot>,
    mount_point: &Path,
    req: Request,
    control: &ControlState,
) -> Response {
    match req {
        Request::Status => {
            // Quota as statfs reports it (fetched at most every 30 s).
            for c in root.connections.values() {
                let _ = tokio::time::timeout(Duration::from_secs(2), c.vfs.statfs()).await;
            }
            Response::ok(status_json(root, mount_point))
        }
        Request::Versions { path } => {
            let Some((conn, p)) = root.split_mount_path(&path) else {
                return Response::err(format!("{path}: not inside a connection"));
            };
            match conn.vfs.versions.list(&p).await {
                Ok(list) => Response::ok(json!(list)),
                Err(e) => Response::err(e.to_string()),
            }
        }
        Request::Restore { path, version } => {
            let Some((conn, p)) = root.split_mount_path(&path) else {
                return Response::err(format!("{path}: not inside a connection"));
            };
            match conn.vfs.restore_version(&p, version).await {
                Ok(()) => Response::ok(json!({"restored": version})),
                Err(e) => Response::err(e.to_string()),
            }
        }
        Request::Diff { path, a, b } => {
            let Some((conn, p)) = root.split_mount_path(&path) else {
                return Response::err(format!("{path}: not inside a connection"));
            };
            match diff_versions(&conn.vfs, &p, a, b).await {
                Ok(v) => Response::ok(v),
                Err(e) => Response::err(e),
            }
        }
        Request::Pin { path, keep } => {
            let Some((conn, p)) = root.split_mount_path(&path) else {
                return Response::err(format!("{path}: not inside a connection"));
            };
            match conn.vfs.pin(&p, keep).await {
                Ok(progress) => Response::ok(json!(progress)),
                Err(e) => Response::err(e.to_string()),
            }
        }
        Request::Retry => {
            let n: usize = root
                .connections
                .values()
                .map(|c| c.vfs.queue.retry_failed())
                .sum();
            Response::ok(json!({"retried": n}))
        }
        Request::Sync { wait_secs } => {
            for c in root.connections.values() {
                c.vfs.queue.expedite();
            }
            let mut drained = true;
            for c in root.connections.values() {
                drained &= c.vfs.queue.drain_now(secs(wait_secs)).await;
            }
            Response::ok(json!({"drained": drained}))
        }
        Request::Refresh => {
            for c in root.connections.values() {
                if let Err(e) = c.vfs.expire_listings() {
                    return Response::err(e.to_string());
                }
            }
            Response::ok(json!({}))
        }
        Request::Unmount { drain_secs } => {
            *control.drain_override.lock().unwrap() = drain_secs;
            control.shutdown.notify_one();
            // Answer once the queue drained (or the wait ran out), with what is left.
            let mut done = control.drained.subscribe();
            let left = match done.wait_for(|v| v.is_some()).await {
                Ok(v) => v.unwrap_or(0),
                Err(_) => 0,
            };
            Response::ok(json!({"unmounted": true, "left": left}))
        }
    }
}

async fn diff_versions(
    vfs: &Vfs,
    path: &str,
    a: usize,
    b: usize,
) -> Result<serde_json::Value, String> {
    let list = vfs.versions.list(path).await.map_err(|e| e.to_string())?;
    let find = |n: usize| {
        list.iter()
            .find(|v| v.number == n)
            .ok_or_else(|| format!("{path} has no version {n}"))
    };
    let (va, vb) = (find(a)?, find(b)?);
    let da = vfs.versions.read(va).await.map_err(|e| e.to_string())?;
    let db = vfs.versions.read(vb).await.map_err(|e| e.to_string())?;
    let diff = match (std::str::from_utf8(&da), std::str::from_utf8(&db)) {
        (Ok(ta), Ok(tb)) => Some(
            similar::TextDiff::from_lines(ta, tb)
                .unified_diff()
                .header(
                    &format!("{path} (version {a})"),
                    &format!("{path} (version {b})"),
                )
                .to_string(),
        ),
        _ => None,
    };
    Ok(
        json!({"size_a": da.len(), "size_b": db.len(), "size_change": db.len() as i64 - da.len() as i64, "unified_diff": diff}),
    )
}

pub struct KernelMountOptions {
    pub read_only: bool,
    pub allow_other: bool,
    pub attr_ttl: Duration,
}

/// Mount the tree through the kernel; requests are served on `rt`. Dropping (or
/// `umount_and_join`) the returned session unmounts.
pub fn mount_root(
    root: Arc<MountRoot>,
    mount_point: &Path,
    rt: tokio::runtime::Handle,
    opts: &KernelMountOptions,
) -> DynResult<crate::fuse_mount::KernelMount> {
    let fs = crate::fuse::CloudFs::new(Arc::clone(&root), rt, opts.attr_ttl);
    let mut options = vec![
        fuser::MountOption::FSName(format!(
            "cloudmount:{}",
            root.connections
                .keys()
                .cloned()
                .collect::<Vec<_>>()
                .join(",")
        )),
        fuser::MountOption::Subtype("cloudmount".into()),
        // The kernel checks permissions against the modes we report.
        fuser::MountOption::DefaultPermissions,
        fuser::MountOption::NoDev,
        fuser::MountOption::NoSuid,
    ];
    if opts.read_only {
        options.push(fuser::MountOption::RO);
    }
    let mut fuse_cfg = fuser::Config::default();
    fuse_cfg.mount_options = options;
    fuse_cfg.acl = if opts.allow_other {
        fuser::SessionACL::All
    } else {
        fuser::SessionACL::Owner
    };
    fuse_cfg.n_threads = Some(2);
    let mounted = crate::fuse_mount::mount(fs, mount_point, &fuse_cfg, |notifier| {
        crate::fuse::connect_invalidators(&root, notifier)
    })
    .map_err(|e| format!("cannot mount on {}: {e}", mount_point.display()))?;
    Ok(mounted)
}

/// Mount and serve until unmounted or signalled. Blocks the calling thread.
pub fn run(spec: MountSpec) -> DynResult<()> {
    // Also here for callers of the library that did not set it: sled and the cache create
    // files on their own from now on.
    crate::private_fs::restrict_umask();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(4)
        .enable_all()
        .thread_name("cloudmount-worker")
        .build()?;
    let _guard = rt.enter();
    let db = open_db(&spec.state_dir)?;
    let connections = build_connections(&spec, &db)?;
    if connections.is_empty() {
        return Err(
            "no connections configured: add a [[connection]] to the config, or use --local DIR"
                .into(),
        );
    }
    let single = spec.single && connections.len() == 1;
    let root = Arc::new(MountRoot::new(connections, single));
    let mut writeback_tasks = Vec::new();
    for c in root.connections.values() {
        writeback_tasks.push(c.vfs.start_writeback());
        writeback_tasks.push(
            c.vfs
                .start_poller(secs(spec.config.poll_interval_secs.max(0.1))),
        );
        let pending = c.vfs.queue.len();
        if pending > 0 {
            tracing::info!(connection = %c.vfs.name, pending, "resuming queued uploads in the background");
        }
    }

    // The control socket answers before the mount appears: whoever sees the mount (a
    // script waiting for it, `cloudmount sync` right after) finds the daemon too.
    let ctl = Arc::new(ControlState {
        shutdown: tokio::sync::Notify::new(),
        drain_override: std::sync::Mutex::new(None),
        drained: tokio::sync::watch::channel(None).0,
    });
    let socket = control::socket_for(&spec.mount_point);
    let listener = control::bind(&socket)?;
    {
        let root = Arc::clone(&root);
        let ctl = Arc::clone(&ctl);
        let mp = spec.mount_point.clone();
        rt.spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let root = Arc::clone(&root);
                let ctl = Arc::clone(&ctl);
                let mp = mp.clone();
                tokio::spawn(async move {
                    control::serve_connection(stream, |req| {
                        let root = Arc::clone(&root);
                        let ctl = Arc::clone(&ctl);
                        let mp = mp.clone();
                        async move { handle_request(&root, &mp, req, &ctl).await }
                    })
                    .await
                });
            }
        });
    }
    let mounted = mount_root(
        Arc::clone(&root),
        &spec.mount_point,
        rt.handle().clone(),
        &KernelMountOptions {
            read_only: spec.config.read_only,
            allow_other: spec.config.allow_other,
            attr_ttl: secs(spec.config.attr_ttl_secs),
        },
    );
    let bg = match mounted {
        Ok(bg) => bg,
        Err(e) => {
            let _ = std::fs::remove_file(&socket);
            return Err(e);
        }
    };
    tracing::info!(mount_point = %spec.mount_point.display(), "mounted");
    if let Some(addr) = spec.config.metrics_addr {
        let root = Arc::clone(&root);
        rt.spawn(async move {
            if let Err(e) = crate::metrics::serve(addr, root).await {
                tracing::error!(error = %e, "metrics endpoint failed");
            }
        });
    }
    sd_notify("READY=1");

    let external_unmount = rt.block_on(async {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
        let mut int = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::interrupt())?;
        let mut tick = tokio::time::interval(Duration::from_millis(300));
        loop {
            tokio::select! {
                _ = term.recv() => return Ok::<bool, std::io::Error>(false),
                _ = int.recv() => return Ok(false),
                _ = ctl.shutdown.notified() => return Ok(false),
                _ = tick.tick() => {
                    if bg.is_finished() {
                        return Ok(true);
                    }
                }
            }
        }
    })?;
    sd_notify("STOPPING=1");
    tracing::info!("unmounting");
    if !external_unmount {
        if let Err(e) = bg.unmount() {
            tracing::warn!(error = %e, "unmount failed; detaching lazily");
            lazy_unmount(&spec.mount_point);
        }
    }
    let drain = ctl
        .drain_override
        .lock()
        .unwrap()
        .unwrap_or(spec.config.drain_timeout_secs);
    // The control socket stays up while draining, so `unmount` can show progress, and
    // gets its answer (what is left) before the daemon goes.
    let left = rt.block_on(drain_queues(&root, secs(drain)));
    for t in writeback_tasks {
        t.abort();
    }
    ctl.drained.send_replace(Some(left));
    // Let the waiting `unmount` get its answer before the socket goes.
    std::thread::sleep(Duration::from_millis(200));
    let _ = std::fs::remove_file(&socket);
    db.flush()?;
    Ok(())
}

/// Upload what is queued, for at most `timeout`. Returns how many jobs are left.
async fn drain_queues(root: &MountRoot, timeout: Duration) -> usize {
    if !timeout.is_zero() {
        for c in root.connections.values() {
            c.vfs.queue.expedite();
        }
    }
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        let left: usize = root
            .connections
            .values()
            .map(|c| {
                c.vfs
                    .queue
                    .status()
                    .iter()
                    .filter(|j| j.failed.is_none())
                    .count()
            })
            .sum();
        if left == 0 {
            tracing::info!("all uploads done");
            return 0;
        }
        if tokio::time::Instant::now() >= deadline {
            tracing::warn!(
                pending = left,
                "uploads still queued; they stay persisted and resume at the next mount"
            );
            return left;
        }
        tracing::info!(pending = left, "waiting for uploads");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

pub fn lazy_unmount(mount_point: &Path) {
    if nix::unistd::geteuid().is_root() {
        let _ = nix::mount::umount2(mount_point, nix::mount::MntFlags::MNT_DETACH);
    } else {
        let _ = std::process::Command::new("fusermount3")
            .args(["-u", "-z"])
            .arg(mount_point)
            .status();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identity_leaves_a_url_password_out_and_knows_the_old_form() {
        let c: ConnectionConfig = toml::from_str(
            r#"
            name = "dav"
            type = "webdav"
            settings = { url = "https://alice:hunter2@dav.example/remote.php/" }
            "#,
        )
        .unwrap();
        let id = identity(&c);
        assert!(!id.contains("hunter2"), "{id}");
        assert!(id.contains("alice@dav.example/remote.php/"), "{id}");
        assert!(legacy_identity(&c).contains("hunter2"));

        let db = sled::Config::new().temporary(true).open().unwrap();
        db.open_tree("slots")
            .unwrap()
            .insert("dav", &1u16.to_be_bytes())
            .unwrap();
        let ids = db.open_tree("identities").unwrap();
        ids.insert("dav", legacy_identity(&c).as_bytes()).unwrap();
        assert_eq!(slot_for(&db, &c).unwrap(), 1);
        assert_eq!(ids.get("dav").unwrap().unwrap(), id.as_bytes());
    }
}
