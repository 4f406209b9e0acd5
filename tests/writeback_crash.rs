//! The write-back queue across `kill -9`: the daemon serves a local folder as "the
//! cloud"; a seeded workload (writes, overwrites, appends, save-by-rename, renames of files
//! and folders, rename over existing files, deletes, rmdirs) runs through the mount and the
//! daemon is SIGKILLed at 20 seeded moments, right after a close or rename while its upload
//! is queued or already running, then restarted on the same state directory. At the end
//! the queue is drained and the cloud folder must equal the model byte for byte, with
//! nothing extra.
//!
//! Knobs (environment): `CLOUDMOUNT_CRASH_OPS` (operations, default 300),
//! `CLOUDMOUNT_CRASH_KILLS` (default 20), `CLOUDMOUNT_CRASH_SEED`.
//! The daemon logs (one per start) are kept in `$TMPDIR/cloudmount-test-logs/writeback_crash/`.

mod common;
#[path = "support/workload.rs"]
mod workload;

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use common::*;
use workload::{compare, disk_tree, env_u64, env_usize, Did, Workload};

const MAX_SIZE: usize = 1 << 20;

/// Uploads start 100 ms after close: a kill soon after an operation finds its upload
/// queued, a kill a little later finds it running.
const DAEMON_ARGS: &[&str] = &["--upload-delay", "0.1", "--retry-backoff", "0.1"];

#[test]
fn kill9_at_random_moments_loses_nothing() {
    let seed = env_u64("CLOUDMOUNT_CRASH_SEED", 0x8_0C01);
    let ops = env_usize("CLOUDMOUNT_CRASH_OPS", 300);
    let kills = env_usize("CLOUDMOUNT_CRASH_KILLS", 20).min(ops);
    let dirs = TestDirs::new();
    let logs = workload::KeepLogs::new(dirs.tmp.path(), "writeback_crash");
    let mut w = Workload::new(&dirs.mnt, seed, MAX_SIZE);
    w.context = format!("seed {seed:#x}; daemon logs: {}", logs.to.display());

    // The moments: after which operations, and how long after.
    let mut plan_rng = workload::Rng::new(seed ^ 0xC4A5);
    let mut kill_after = BTreeSet::new();
    while kill_after.len() < kills {
        kill_after.insert(plan_rng.range(5, ops));
    }

    let start = Instant::now();
    let mut m = DaemonMount::start(&dirs, DAEMON_ARGS);
    let mut kill_notes = Vec::new();
    for i in 1..=ops {
        let did = w.step();
        if !kill_after.contains(&i) {
            continue;
        }
        // A third at once (upload still queued), the rest while it may be running.
        let wait = match plan_rng.below(3) {
            0 => 0,
            1 => plan_rng.range(90, 200),
            _ => plan_rng.range(200, 600),
        };
        std::thread::sleep(Duration::from_millis(wait as u64));
        let queued = workload::queue_of(&dirs.mnt)
            .map(|(p, r, f, _)| format!("{p} pending, {r} running, {f} failed"))
            .unwrap_or_else(|e| e);
        kill_notes.push(format!(
            "after op #{i} ({did:?}: {}) + {wait} ms: queue {queued}",
            w.log.last().cloned().unwrap_or_default()
        ));
        w.log
            .push(format!("-- kill -9 {wait} ms after op #{i}, restart"));
        m.kill9();
        assert!(!is_mounted(&dirs.mnt), "the mount outlived its daemon");
        m = DaemonMount::start(&dirs, DAEMON_ARGS);
        // What was closed before the kill must read back at once after the restart.
        let files: Vec<String> = w.model.files.keys().cloned().collect();
        for _ in 0..3 {
            if let Some(f) = w.rng.pick(&files).cloned() {
                w.check_file(&f, &format!("after the restart following op #{i}"));
            }
        }
        if did != Did::Read {
            // The root lists exactly what the model holds there.
            w.check_listing("", &format!("after the restart following op #{i}"));
        }
    }
    let workload_took = start.elapsed();

    let drain_start = Instant::now();
    let mut problems = Vec::new();
    let sync = m.cli(&["sync", dirs.mnt.to_str().unwrap(), "--wait", "60"]);
    if !sync.status.success() {
        problems.push(format!(
            "cloudmount sync: {}{}",
            String::from_utf8_lossy(&sync.stdout).trim(),
            String::from_utf8_lossy(&sync.stderr).trim()
        ));
    }
    if let Err(e) = workload::wait_queue_empty(&dirs.mnt, Duration::from_secs(30)) {
        problems.push(format!("the queue did not empty: {e}"));
    }
    let drain_took = drain_start.elapsed();
    w.check_all("after the drain");

    let cloud = compare(&disk_tree(&dirs.cloud), &w.model);
    let mount = compare(&disk_tree(&dirs.mnt), &w.model);
    let s = &w.stats;
    let figures = format!(
        "{} ops, {} kill -9 and restarts in {:.1}s, drained in {:.1}s: {} files created, {} renames, {} deletes, {:.1} MiB written; model: {} files, {} folders, {:.1} MiB\n  cloud folder vs model: {}\n  mount vs model: {}",
        s.ops,
        kills,
        workload_took.as_secs_f64(),
        drain_took.as_secs_f64(),
        s.creates,
        s.renames,
        s.deletes,
        s.bytes_written as f64 / 1048576.0,
        w.model.files.len(),
        w.model.dirs.len(),
        w.model.total_bytes() as f64 / 1048576.0,
        cloud.counts(),
        mount.counts()
    );
    println!("== writeback_crash (seed {seed:#x})\n  {figures}");
    if !cloud.is_empty() {
        problems.push(format!("cloud folder vs model: {}", cloud.report(30)));
    }
    if !mount.is_empty() {
        problems.push(format!("mount vs model: {}", mount.report(30)));
    }
    for (what, v) in [
        ("changes through the mount failed at first", &s.op_errors),
        ("reads or listings failed or differed", &s.read_errors),
    ] {
        if !v.is_empty() {
            problems.push(format!(
                "{} {what}:\n  {}",
                v.len(),
                v.iter().take(25).cloned().collect::<Vec<_>>().join("\n  ")
            ));
        }
    }
    let out = m.unmount();
    if !out.status.success() {
        problems.push(format!("unmount: {}", String::from_utf8_lossy(&out.stderr)));
    }
    logs.copy_now();
    if !problems.is_empty() {
        let telling = workload::telling_log_lines(&logs.text(), 40);
        panic!(
            "writeback_crash (seed {seed:#x}) failed:\n{}\n\nfigures:\n  {figures}\n\nkills:\n  {}\n\ndaemon log lines (first {}):\n  {}\n\ndaemon logs: {}",
            problems.join("\n"),
            kill_notes.join("\n  "),
            telling.len(),
            telling.join("\n  "),
            logs.to.display()
        );
    }
}
