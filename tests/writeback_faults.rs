//! The write-back queue under a hostile network: the daemon mounts a WebDAV server
//! (`rclone serve webdav`, Apache mod_dav) or the Drive emulator through our fault proxy,
//! which refuses, cuts and stalls requests at random (seeded). A seeded workload of files
//! and folders runs through the mount while faults fly; reads must keep working. Then the
//! queue is drained, the faults are turned off and what ended up on the server is compared
//! with the model of the workload: nothing missing, nothing wrong, nothing extra.
//!
//! Knobs (environment):
//! - `CLOUDMOUNT_FAULT_FILES`: files the workload creates (default 200);
//! - `CLOUDMOUNT_FAULT_SEED`: seed of the workload and of the proxy;
//! - `CLOUDMOUNT_FAULT_RATE`: share of requests that get a fault, in percent (default 15).
//!
//! The daemon logs are kept in `$TMPDIR/cloudmount-test-logs/<test>/`.

mod common;
#[path = "support/drive_emulator.rs"]
mod drive_emulator;
#[path = "support/drive_harness.rs"]
mod drive_harness;
#[path = "support/emu/mod.rs"]
mod emu;
#[path = "support/fault_proxy.rs"]
mod fault_proxy;
#[path = "support/webdav_servers.rs"]
mod webdav_servers;
#[path = "support/workload.rs"]
mod workload;

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::time::{Duration, Instant};

use common::*;
use drive_emulator::{EmulatorConfig, Fault};
use fault_proxy::{FaultConfig, FaultProxy};
use workload::{compare, disk_tree, env_u64, env_usize, Entry, Tree, Workload};

/// The largest file the workload writes.
const MAX_SIZE: usize = 3 << 20;

struct Knobs {
    files: usize,
    seed: u64,
    rate: f64,
}

fn knobs(default_seed: u64) -> Knobs {
    Knobs {
        files: env_usize("CLOUDMOUNT_FAULT_FILES", 200),
        seed: env_u64("CLOUDMOUNT_FAULT_SEED", default_seed),
        rate: env_usize("CLOUDMOUNT_FAULT_RATE", 15) as f64 / 100.0,
    }
}

/// Settings shared by every connection of these tests: uploads start soon after close so
/// that they overlap the renames and deletes of the workload, and retries come quickly
/// (the attempt limit stays the default one users get).
const DAEMON_SETTINGS: &str = "upload_delay_secs = 0.3\n\
                               retry_backoff_secs = 0.2\n\
                               retry_backoff_max_secs = 2\n";

/// What one run saw, printed at its end and used for the verdict.
struct Outcome {
    name: String,
    seed: u64,
    log_dir: std::path::PathBuf,
    lines: Vec<String>,
    problems: Vec<String>,
}

impl Outcome {
    fn new(name: &str, seed: u64, log_dir: &Path) -> Self {
        Outcome {
            name: name.into(),
            seed,
            log_dir: log_dir.to_path_buf(),
            lines: Vec::new(),
            problems: Vec::new(),
        }
    }

    fn finish(self, log_text: &str) {
        println!("== {} (seed {:#x})", self.name, self.seed);
        for l in &self.lines {
            println!("   {l}");
        }
        if self.problems.is_empty() {
            return;
        }
        let telling = workload::telling_log_lines(log_text, 40);
        panic!(
            "{} (seed {:#x}) failed:\n{}\n\nfigures:\n  {}\n\ndaemon log lines (first {}):\n  {}\n\ndaemon logs: {}",
            self.name,
            self.seed,
            self.problems.join("\n"),
            self.lines.join("\n  "),
            telling.len(),
            telling.join("\n  "),
            self.log_dir.display()
        );
    }
}

/// Runs the workload through `base` (a connection's folder in the mount) until it has
/// created `files` files, with a check of every file at the end.
fn run_workload(w: &mut Workload, files: usize) -> Duration {
    let start = Instant::now();
    while w.files_created() < files {
        w.step();
    }
    start.elapsed()
}

/// Drains the daemon under faults, then turns them off; records what did not drain.
fn drain(m: &DaemonMount, mnt: &Path, out: &mut Outcome, faults_off: impl FnOnce()) -> Duration {
    let start = Instant::now();
    let sync = m.cli(&["sync", mnt.to_str().unwrap(), "--wait", "60"]);
    if !sync.status.success() {
        out.lines.push(format!(
            "cloudmount sync under faults: {}{}",
            String::from_utf8_lossy(&sync.stdout).trim(),
            String::from_utf8_lossy(&sync.stderr).trim()
        ));
    }
    if let Err(e) = workload::wait_queue_empty(mnt, Duration::from_secs(30)) {
        out.problems
            .push(format!("the queue did not empty under faults: {e}"));
    }
    faults_off();
    let took = start.elapsed();
    // Whatever is still queued goes up now that the network is fine, so that the
    // comparison shows the end state rather than a half-done queue.
    if !out.problems.is_empty() {
        let _ = m.cli(&["sync", mnt.to_str().unwrap(), "--wait", "30"]);
    }
    took
}

/// The verdict on one tree: figures and differences.
/// Unmount (its failure is a problem too), keep the daemon logs, and give the verdict.
fn unmount_and_finish(m: DaemonMount, logs: &workload::KeepLogs, mut out: Outcome) {
    let unmount = m.unmount();
    if !unmount.status.success() {
        out.problems.push(format!(
            "unmount: {}",
            String::from_utf8_lossy(&unmount.stderr)
        ));
    }
    logs.copy_now();
    out.finish(&logs.text());
}

fn judge(out: &mut Outcome, what: &str, got: &Tree, w: &Workload) {
    // The operations themselves, beside the daemon logs, for reading a failure.
    let _ = std::fs::write(out.log_dir.join("workload-ops.txt"), w.log.join("\n"));
    let d = compare(got, &w.model);
    out.lines.push(format!("{what}: {}", d.counts()));
    if !d.is_empty() {
        out.problems.push(format!("{what}: {}", d.report(25)));
    }
}

fn workload_figures(out: &mut Outcome, w: &Workload, took: Duration) {
    let s = &w.stats;
    out.lines.push(format!(
        "workload: {} ops in {:.1}s: {} files created, {} renames, {} deletes, {:.1} MiB written, {} reads ({:.1} MiB); model: {} files, {} folders, {:.1} MiB",
        s.ops,
        took.as_secs_f64(),
        s.creates,
        s.renames,
        s.deletes,
        s.bytes_written as f64 / 1048576.0,
        s.reads,
        s.bytes_read as f64 / 1048576.0,
        w.model.files.len(),
        w.model.dirs.len(),
        w.model.total_bytes() as f64 / 1048576.0
    ));
    if !s.op_errors.is_empty() {
        out.problems.push(format!(
            "{} changes through the mount failed at first (retried until they took effect):\n  {}",
            s.op_errors.len(),
            s.op_errors
                .iter()
                .take(25)
                .cloned()
                .collect::<Vec<_>>()
                .join("\n  ")
        ));
    }
    if !s.read_errors.is_empty() {
        out.problems.push(format!(
            "{} reads or listings through the mount failed or differed during the faults:\n  {}",
            s.read_errors.len(),
            s.read_errors
                .iter()
                .take(25)
                .cloned()
                .collect::<Vec<_>>()
                .join("\n  ")
        ));
    }
}

#[derive(Clone, Copy, Debug)]
enum Server {
    Rclone,
    Apache,
}

fn webdav_under_faults(server: Server, default_seed: u64) {
    let k = knobs(default_seed);
    let name = format!("writeback_faults_{server:?}").to_lowercase();
    // Under /tmp directly: Apache's workers (www-data when the tests run as root) must
    // reach it.
    let root = tempfile::Builder::new()
        .prefix("cloudmount-faults")
        .tempdir()
        .unwrap();
    let mut w_rng = workload::Rng::new(k.seed);
    let mut seeded = workload::Model::default();
    // Files already on the server: the first reads of these go over the faulty network.
    workload::seed_remote(root.path(), &mut w_rng, 20, MAX_SIZE, &mut seeded);
    let srv = match server {
        Server::Rclone => webdav_servers::start_rclone_webdav(root.path()),
        Server::Apache => webdav_servers::start_apache_webdav(root.path()),
    };
    // No faults until the mount is up: this test is about the write-back, not startup.
    let proxy = FaultProxy::start(&srv.url, FaultConfig::new(k.seed, 0.0));
    let dirs = TestDirs::new();
    let logs = workload::KeepLogs::new(dirs.tmp.path(), &name);
    let config = dirs.tmp.path().join("config.toml");
    fs::write(
        &config,
        format!(
            "{DAEMON_SETTINGS}[[connection]]\nname = \"dav\"\ntype = \"webdav\"\n\
             settings = {{ url = \"{}\", timeout_secs = 20 }}\n",
            proxy.url
        ),
    )
    .unwrap();
    let m = DaemonMount::start_with_config(&dirs, &config, &[]);
    let mnt = dirs.mnt.join("dav");
    let mut out = Outcome::new(&name, k.seed, &logs.to);
    out.lines.push(format!(
        "{} behind the fault proxy at {} ({}% of requests faulted)",
        srv.name,
        proxy.url,
        k.rate * 100.0
    ));

    let mut w = Workload::new(&mnt, w_rng.next_u64(), MAX_SIZE);
    w.model = seeded;
    w.context = format!("seed {:#x}; daemon logs: {}", k.seed, logs.to.display());
    proxy.set_fault_rate(k.rate);
    let took = run_workload(&mut w, k.files);
    // Every file once more, still under faults: reads must not fail for a transient error.
    w.check_all("after the workload, under faults");
    workload_figures(&mut out, &w, took);

    let drain_took = drain(&m, &dirs.mnt, &mut out, || proxy.set_fault_rate(0.0));
    out.lines.push(format!(
        "proxy: {}; drained in {:.1}s",
        proxy.summary(),
        drain_took.as_secs_f64()
    ));
    judge(&mut out, "server disk vs model", &disk_tree(&srv.root), &w);
    judge(&mut out, "mount vs model", &disk_tree(&mnt), &w);
    unmount_and_finish(m, &logs, out);
    drop(proxy);
    drop(srv);
}

#[test]
fn rclone_webdav_under_faults() {
    webdav_under_faults(Server::Rclone, 0x8_0001);
}

#[test]
fn apache_webdav_under_faults() {
    webdav_under_faults(Server::Apache, 0x8_0002);
}

/// The Drive emulator's tree below My Drive, read back over its own API (straight, not
/// through the proxy), as relative path -> entry. A name held by several live files of
/// one folder is listed as `name`, `name#2`, ...
fn drive_tree(rt: &tokio::runtime::Runtime, emu: &drive_emulator::DriveEmulator) -> Tree {
    let (token, _) = emu.issue_tokens();
    let client = reqwest::Client::new();
    let mut out = Tree::new();
    let mut todo = vec![(emu.root_id(), String::new())];
    while let Some((id, prefix)) = todo.pop() {
        let mut page: Option<String> = None;
        loop {
            let mut q = vec![
                (
                    "q".to_string(),
                    format!("'{id}' in parents and trashed = false"),
                ),
                (
                    "fields".to_string(),
                    "nextPageToken,files(id,name,mimeType)".to_string(),
                ),
                ("pageSize".to_string(), "1000".to_string()),
            ];
            if let Some(p) = &page {
                q.push(("pageToken".to_string(), p.clone()));
            }
            // Faults fed to the emulator may still wait in its queue: retry past them.
            let v: serde_json::Value = rt.block_on(async {
                for _ in 0..10 {
                    let r = client
                        .get(format!("{}/files", emu.api_base()))
                        .bearer_auth(&token)
                        .query(&q)
                        .send()
                        .await
                        .expect("list the emulator");
                    if r.status().is_success() {
                        return r.json().await.unwrap();
                    }
                }
                panic!("the emulator refused listing {id} ten times");
            });
            for f in v["files"].as_array().into_iter().flatten() {
                let name = f["name"].as_str().unwrap();
                let mut rel = format!("{prefix}{name}");
                let mut n = 1;
                while out.contains_key(&rel) {
                    n += 1;
                    rel = format!("{prefix}{name}#{n}");
                }
                if prefix.is_empty() && workload::RESERVED.contains(&name) {
                    continue;
                }
                let fid = f["id"].as_str().unwrap().to_string();
                if f["mimeType"] == drive_emulator::FOLDER_MIME {
                    out.insert(rel.clone(), Entry::Dir);
                    todo.push((fid, format!("{rel}/")));
                } else {
                    let content = emu.file(&fid).map(|r| r.content).unwrap_or_default();
                    out.insert(rel, Entry::File(content));
                }
            }
            match v["nextPageToken"].as_str() {
                Some(p) => page = Some(p.to_string()),
                None => break,
            }
        }
    }
    out
}

/// Drive: our proxy in front of the emulator's API and upload endpoints, and the
/// emulator's own faults (rate limits, backend errors, upload connections dropped after
/// part of a chunk, expired upload sessions) fed in while the workload runs.
///
/// (It used to end with duplicates `name#2`: a resumable session that had completed
/// looked "expired" after its last chunk's reply was lost and was started again; and with
/// the mount's view off after listings taken while jobs finished. Both are fixed.)
#[test]
fn drive_emulator_under_faults() {
    let k = knobs(0x8_0003);
    let name = "writeback_faults_drive".to_string();
    let rt = drive_harness::runtime();
    let h = rt.block_on(drive_harness::harness(EmulatorConfig::default(), |_| {}));
    let emu = &h.emu;
    let root_id = emu.root_id();

    let mut w_rng = workload::Rng::new(k.seed);
    let mut seeded = workload::Model::default();
    {
        // The same shape as seed_remote, created in the emulator.
        let pre = emu.add_folder(&root_id, "pre");
        let deep = emu.add_folder(&pre, "deep");
        seeded.dirs.insert("pre".into());
        seeded.dirs.insert("pre/deep".into());
        for i in 0..20 {
            let (parent, dir) = [(&root_id, ""), (&pre, "pre/"), (&deep, "pre/deep/")][i % 3];
            let len = workload::file_size(&mut w_rng, MAX_SIZE);
            let data = pattern(len, w_rng.next_u64());
            let file = format!("seeded{i}.bin");
            emu.add_file(parent, &file, &data);
            seeded.note_origin(&data, format!("seeded {dir}{file}"));
            seeded.files.insert(format!("{dir}{file}"), data);
        }
    }

    let proxy = FaultProxy::start(&emu.base_url(), FaultConfig::new(k.seed, 0.0));
    let dirs = TestDirs::new();
    let logs = workload::KeepLogs::new(dirs.tmp.path(), &name);
    let secret_file = dirs.tmp.path().join("client-secret");
    fs::write(&secret_file, emu.config().client_secret).unwrap();
    fs::set_permissions(&secret_file, fs::Permissions::from_mode(0o600)).unwrap();
    let config = dirs.tmp.path().join("config.toml");
    // Files above 1 MiB go up in resumable sessions of 512 KiB chunks, so that the
    // emulator's dropped-chunk and expired-session faults have something to hit. The
    // OAuth endpoints are not behind the proxy: the tokens outlive the test.
    fs::write(
        &config,
        format!(
            "{DAEMON_SETTINGS}accounts_dir = \"{accounts}\"\n\
             [[connection]]\nname = \"test\"\ntype = \"gdrive\"\n\
             settings = {{ client_id = \"{client_id}\", client_secret_file = \"{secret}\", \
             auth_url = \"{auth}\", token_url = \"{token}\", revoke_url = \"{revoke}\", \
             api_base = \"{proxy}/drive/v3\", upload_base = \"{proxy}/upload/drive/v3\", \
             retry_base_delay_ms = 50, max_requests_per_second = 0.0, \
             small_upload_limit = 1048576, resumable_chunk_size = 524288 }}\n",
            accounts = h.dir.path().join("accounts").display(),
            client_id = emu.config().client_id,
            secret = secret_file.display(),
            auth = emu.auth_url(),
            token = emu.token_url(),
            revoke = emu.revoke_url(),
            proxy = proxy.url.trim_end_matches('/'),
        ),
    )
    .unwrap();
    let m = DaemonMount::start_with_config(&dirs, &config, &[]);
    let mnt = dirs.mnt.join("test");
    let mut out = Outcome::new(&name, k.seed, &logs.to);
    out.lines.push(format!(
        "Drive emulator behind the fault proxy at {} ({}% of requests faulted) plus its own faults",
        proxy.url,
        k.rate * 100.0
    ));

    // The emulator's own faults, fed between operations every 200 ms while fewer than two
    // wait in its queue (upload faults wait there for the next resumable chunk).
    let mut f_rng = workload::Rng::new(k.seed ^ 0xD81E);
    let mut fed = std::collections::BTreeMap::<&'static str, u64>::new();
    let mut next_feed = Instant::now();
    let mut w = Workload::new(&mnt, w_rng.next_u64(), MAX_SIZE);
    w.model = seeded;
    w.context = format!("seed {:#x}; daemon logs: {}", k.seed, logs.to.display());
    proxy.set_fault_rate(k.rate);
    let start = Instant::now();
    while w.files_created() < k.files {
        w.step();
        if k.rate > 0.0 && Instant::now() >= next_feed && emu.pending_faults() < 2 {
            next_feed = Instant::now() + Duration::from_millis(200);
            let (kind, f) = match f_rng.below(7) {
                0 => ("UserRateLimit403", Fault::UserRateLimit403),
                1 => (
                    "RateLimit429",
                    Fault::RateLimit429 {
                        retry_after: Some(1),
                    },
                ),
                2 => ("ServerError500", Fault::ServerError(500)),
                3 => ("ServerError503", Fault::ServerError(503)),
                4 => ("ServerError502", Fault::ServerError(502)),
                5 => (
                    "DropUploadAfter",
                    Fault::DropUploadAfter(f_rng.range(0, 400 << 10)),
                ),
                _ => ("ExpireUploadSession", Fault::ExpireUploadSession),
            };
            emu.inject(f, 1);
            *fed.entry(kind).or_default() += 1;
        }
    }
    let took = start.elapsed();
    w.check_all("after the workload, under faults");
    workload_figures(&mut out, &w, took);

    let drain_took = drain(&m, &dirs.mnt, &mut out, || proxy.set_fault_rate(0.0));
    out.lines.push(format!(
        "proxy: {}; emulator faults fed: {:?} (served: {}); drained in {:.1}s",
        proxy.summary(),
        fed,
        emu.stats().faults_served,
        drain_took.as_secs_f64()
    ));
    judge(
        &mut out,
        "Drive emulator vs model",
        &drive_tree(&rt, emu),
        &w,
    );
    judge(&mut out, "mount vs model", &disk_tree(&mnt), &w);
    unmount_and_finish(m, &logs, out);
    drop(proxy);
}
