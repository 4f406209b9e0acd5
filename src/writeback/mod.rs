//! The persistent write-back queue.
//!
//! Every change that must reach the remote (upload, mkdir, symlink, rename, delete) is a
//! job persisted in the metadata store, so it survives `kill -9`, reboots and offline
//! periods. Jobs run in parallel except where their paths overlap: a job waits for every
//! earlier job on the same path, an ancestor or a descendant, which keeps the remote tree
//! consistent (a directory is created before its files, a rename lands before the upload
//! to the new name). The queue does not know how to run a job; an executor does.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use tokio::sync::Notify;

use crate::metadata::{Batch, Ino, Store, StoreError};
use crate::provider::is_same_or_below;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum JobKind {
    Upload,
    Mkdir,
    Symlink {
        target: String,
    },
    /// Move the remote object at `from` to the job's path.
    Rename {
        from: String,
        overwrite: bool,
    },
    Delete,
    /// Give the remote object the inode's permission bits (a chmod). The bits are read
    /// from the inode when the job runs, so a burst of chmods needs one request, and the
    /// job runs after every earlier job on its path (the upload that creates the file).
    /// Queued only for providers that store Unix modes.
    SetMode,
}

impl JobKind {
    /// Jobs that act on the inode where it is, and follow it when it is renamed before
    /// anything of it reached the remote: creations, and attribute changes.
    fn follows_inode(&self) -> bool {
        matches!(
            self,
            JobKind::Upload | JobKind::Mkdir | JobKind::Symlink { .. } | JobKind::SetMode
        )
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Job {
    pub ino: Ino,
    pub kind: JobKind,
    /// The remote path the job acts on (for a rename: the destination).
    pub path: String,
    pub not_before_ms: u64,
    pub attempts: u32,
    /// Parked after a permanent error or too many attempts; `retry` revives it.
    pub failed: Option<String>,
    pub last_error: Option<String>,
    pub size: u64,
    /// Uploads: the content generation the job was queued for. A close that changed
    /// nothing since (a RELEASE after a flush) must not push the upload back.
    #[serde(default)]
    pub generation: u64,
    /// Size and mtime of the content an upload attempt sent (older queues; see `sent`).
    #[serde(default)]
    pub in_flight: Option<(u64, SystemTime)>,
    /// What the attempts of this upload sent (size and hashes), persisted before each
    /// attempt goes out. When an attempt's outcome is uncertain (its reply was cut, the
    /// daemon died), finding one of these on the remote means the attempt landed: it is
    /// ours, never a conflicting edit. Compared with what was *sent*, not with today's
    /// local file, which may have changed since.
    #[serde(default)]
    pub sent: Vec<SentContent>,
    /// The name of this job's conflict copy, fixed before the copy is first uploaded so
    /// that a repeated attempt (lost reply, crash) makes no second copy.
    #[serde(default)]
    pub conflict_copy: Option<String>,
}

/// The fingerprint of content an upload attempt sent.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SentContent {
    pub size: u64,
    /// Hex SHA-256 and MD5 of the bytes (MD5 because Drive and many WebDAV servers report it).
    pub sha256: String,
    pub md5: String,
}

impl SentContent {
    /// Whether a provider hash ("algo:hex") proves the remote holds exactly this content.
    /// `None` when the hash says nothing either way (absent, or an algorithm we do not keep).
    pub fn matches_hash(&self, hash: &str) -> Option<bool> {
        let (algo, hex) = hash.split_once(':')?;
        match algo.to_ascii_lowercase().as_str() {
            "sha256" => Some(hex.eq_ignore_ascii_case(&self.sha256)),
            "md5" => Some(hex.eq_ignore_ascii_case(&self.md5)),
            _ => None,
        }
    }
}

/// How many attempts' fingerprints a job remembers.
const SENT_KEPT: usize = 8;

impl Job {
    fn paths(&self) -> impl Iterator<Item = &str> {
        let from = match &self.kind {
            JobKind::Rename { from, .. } => Some(from.as_str()),
            _ => None,
        };
        std::iter::once(self.path.as_str()).chain(from)
    }

    fn rewrite_prefix(&mut self, from: &str, to: &str) -> bool {
        let mut changed = false;
        if let Some(p) = rewrite(&self.path, from, to) {
            self.path = p;
            changed = true;
        }
        if let JobKind::Rename { from: f, .. } = &mut self.kind {
            if let Some(p) = rewrite(f, from, to) {
                *f = p;
                changed = true;
            }
        }
        changed
    }
}

/// `path` with the prefix `from` replaced by `to`, when `path` is at or below `from`.
pub fn rewrite(path: &str, from: &str, to: &str) -> Option<String> {
    if is_same_or_below(path, from) && from != "/" {
        Some(format!("{to}{}", &path[from.len()..]))
    } else {
        None
    }
}

#[derive(Debug, Clone)]
pub struct QueueConfig {
    /// How long after close an upload waits, so that save-then-rename sequences coalesce.
    pub upload_delay: Duration,
    pub concurrency: usize,
    pub max_attempts: u32,
    pub backoff_base: Duration,
    pub backoff_max: Duration,
    /// The remote compares names without case (OneDrive, Dropbox): jobs on paths that
    /// differ only in case wait for each other too (`rm Plan.txt; echo > PLAN.TXT` deletes
    /// before it uploads, or the upload would meet the old file under the name).
    pub fold_case: bool,
}

impl Default for QueueConfig {
    fn default() -> Self {
        QueueConfig {
            upload_delay: Duration::from_secs(2),
            concurrency: 16,
            max_attempts: 12,
            backoff_base: Duration::from_secs(1),
            backoff_max: Duration::from_secs(300),
            fold_case: false,
        }
    }
}

/// How a job ended.
#[derive(Debug)]
pub enum JobOutcome {
    Done,
    /// Try again later (network down, rate limited, server error).
    Retry(String),
    /// Will not succeed by retrying; park it for the user.
    Permanent(String),
}

#[async_trait]
pub trait JobExecutor: Send + Sync + 'static {
    async fn execute(&self, seq: u64, job: &Job, progress: &Progress) -> JobOutcome;
}

/// Bytes done of the running jobs, for `status`.
#[derive(Default)]
pub struct Progress {
    bytes: Mutex<HashMap<u64, u64>>,
}

impl Progress {
    pub fn set(&self, seq: u64, done: u64) {
        self.bytes.lock().unwrap().insert(seq, done);
    }
    fn get(&self, seq: u64) -> u64 {
        self.bytes.lock().unwrap().get(&seq).copied().unwrap_or(0)
    }
    fn clear(&self, seq: u64) {
        self.bytes.lock().unwrap().remove(&seq);
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct JobStatus {
    pub seq: u64,
    pub kind: String,
    pub path: String,
    pub size: u64,
    pub done_bytes: u64,
    pub running: bool,
    pub attempts: u32,
    pub failed: Option<String>,
    pub last_error: Option<String>,
    /// A parked job this one waits for (same path, an ancestor or a descendant): it
    /// cannot run until that one is retried or its path changes.
    #[serde(default)]
    pub blocked_by: Option<u64>,
    /// Tried `max_attempts` times or more without success; still retrying.
    #[serde(default)]
    pub stuck: bool,
}

struct State {
    jobs: BTreeMap<u64, Job>,
    /// While a `QueueTxn` is open: the job writes that go into its batch, so they land
    /// in the metadata store atomically with the namespace change that caused them.
    txn: Option<Batch>,
    running: HashSet<u64>,
    /// Paths whose remote state changes while a job on them runs or waits.
    completed: u64,
    retries: u64,
    recent_errors: Vec<(SystemTime, String)>,
}

pub struct WriteBackQueue {
    store: Store,
    config: QueueConfig,
    state: Mutex<State>,
    next_seq: AtomicU64,
    wake: Notify,
    idle: Notify,
    pub progress: Progress,
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_millis() as u64
}

impl WriteBackQueue {
    /// Load the persisted jobs. Cheap even with thousands queued: the mount does not wait
    /// for them, they drain in the background.
    pub fn load(store: Store, config: QueueConfig) -> Result<Arc<Self>, StoreError> {
        let mut jobs: BTreeMap<u64, Job> = BTreeMap::new();
        for item in store.all_jobs::<Job>() {
            let (seq, job) = item?;
            jobs.insert(seq, job);
        }
        // A restart is a fresh start: nothing waits longer than today's upload delay
        // (not an old, longer one, nor a backoff from before a reboot).
        let soon = now_ms() + config.upload_delay.as_millis() as u64;
        for job in jobs.values_mut() {
            job.not_before_ms = job.not_before_ms.min(soon);
        }
        let next = jobs.keys().next_back().map(|s| s + 1).unwrap_or(1);
        Ok(Arc::new(WriteBackQueue {
            store,
            config,
            state: Mutex::new(State {
                jobs,
                txn: None,
                running: HashSet::new(),
                completed: 0,
                retries: 0,
                recent_errors: Vec::new(),
            }),
            next_seq: AtomicU64::new(next),
            wake: Notify::new(),
            idle: Notify::new(),
            progress: Progress::default(),
        }))
    }

    pub fn config(&self) -> &QueueConfig {
        &self.config
    }

    fn persist(&self, st: &mut State, seq: u64, job: &Job) {
        if let Some(b) = st.txn.as_mut() {
            b.put_job(seq, job);
        } else if let Err(e) = self.store.put_job(seq, job) {
            tracing::error!(seq, error = %e, "could not persist write-back job");
        }
    }

    fn unpersist(&self, st: &mut State, seq: u64) {
        if let Some(b) = st.txn.as_mut() {
            b.remove_job(seq);
        } else if let Err(e) = self.store.remove_job(seq) {
            tracing::error!(seq, error = %e, "could not remove write-back job");
        }
    }

    fn push(&self, st: &mut State, job: Job) -> u64 {
        let seq = self.next_seq.fetch_add(1, Ordering::SeqCst);
        self.persist(st, seq, &job);
        st.jobs.insert(seq, job);
        seq
    }

    /// Start a change of the queue that lands in the metadata store together with
    /// `batch` (a namespace change): after a crash either both are there or neither.
    /// Jobs queued through the transaction cannot start before `commit`.
    pub fn begin(&self, batch: Batch) -> QueueTxn<'_> {
        let mut st = self.state.lock().unwrap();
        st.txn = Some(batch);
        QueueTxn {
            queue: self,
            st: Some(st),
        }
    }

    fn new_job(&self, ino: Ino, kind: JobKind, path: &str, delay: Duration, size: u64) -> Job {
        Job {
            ino,
            kind,
            path: path.to_string(),
            not_before_ms: now_ms() + delay.as_millis() as u64,
            attempts: 0,
            failed: None,
            last_error: None,
            size,
            generation: 0,
            in_flight: None,
            sent: Vec::new(),
            conflict_copy: None,
        }
    }

    pub fn enqueue_upload(&self, ino: Ino, path: &str, size: u64, generation: u64) {
        let mut t = self.begin(Batch::default());
        t.enqueue_upload(ino, path, size, generation);
        t.commit_logged();
    }

    pub fn enqueue_mkdir(&self, ino: Ino, path: &str) {
        let mut t = self.begin(Batch::default());
        t.enqueue_mkdir(ino, path);
        t.commit_logged();
    }

    pub fn enqueue_set_mode(&self, ino: Ino, path: &str) {
        let mut t = self.begin(Batch::default());
        t.enqueue_set_mode(ino, path);
        t.commit_logged();
    }

    pub fn enqueue_symlink(&self, ino: Ino, path: &str, target: &str) {
        let mut t = self.begin(Batch::default());
        t.enqueue_symlink(ino, path, target);
        t.commit_logged();
    }

    /// Remember what an upload attempt is about to send (see `Job::sent`). Returns every
    /// fingerprint the job's attempts sent so far, this one included.
    pub fn mark_sending(&self, seq: u64, sent: SentContent) -> Vec<SentContent> {
        let mut st = self.state.lock().unwrap();
        let Some(job) = st.jobs.get_mut(&seq) else {
            return vec![sent];
        };
        if !job.sent.contains(&sent) {
            job.sent.push(sent);
            if job.sent.len() > SENT_KEPT {
                job.sent.remove(0);
            }
        }
        let all = job.sent.clone();
        let job = job.clone();
        self.persist(&mut st, seq, &job);
        all
    }

    /// Fix the name of the job's conflict copy (see `Job::conflict_copy`), or return the
    /// one fixed by an earlier attempt.
    pub fn conflict_copy_name(&self, seq: u64, proposed: String) -> String {
        let mut st = self.state.lock().unwrap();
        let Some(job) = st.jobs.get_mut(&seq) else {
            return proposed;
        };
        if let Some(name) = &job.conflict_copy {
            return name.clone();
        }
        job.conflict_copy = Some(proposed.clone());
        let job = job.clone();
        self.persist(&mut st, seq, &job);
        proposed
    }

    /// Replace the job's conflict-copy name (the fixed one turned out to be taken).
    pub fn conflict_copy_name_replace(&self, seq: u64, name: String) -> String {
        let mut st = self.state.lock().unwrap();
        if let Some(job) = st.jobs.get_mut(&seq) {
            job.conflict_copy = Some(name.clone());
            let job = job.clone();
            self.persist(&mut st, seq, &job);
        }
        name
    }

    /// Record an error for `status` that no job carries any more.
    pub fn note_error(&self, msg: String) {
        push_error(&mut self.state.lock().unwrap(), msg);
    }

    /// Whether a job for this inode is running now (so it may be on the remote soon).
    pub fn is_running(&self, ino: Ino) -> bool {
        Self::running_for(&self.state.lock().unwrap(), ino)
    }

    pub fn on_rename(
        &self,
        ino: Ino,
        moved: &HashSet<Ino>,
        from: &str,
        to: &str,
        on_remote: bool,
        replaced: Option<Ino>,
    ) {
        let mut t = self.begin(Batch::default());
        let on_remote = t.rename_is_move(ino, moved, from, on_remote);
        t.on_rename(ino, moved, from, to, on_remote, replaced);
        t.commit_logged();
    }

    pub fn enqueue_remote_delete(&self, path: &str) {
        let mut t = self.begin(Batch::default());
        t.enqueue_remote_delete(path);
        t.commit_logged();
    }

    /// Whether a job of another inode (not `mine`), queued after job `after`, acts at or
    /// below where the object that job `after` made at `path` is by then (followed
    /// through the moves queued in between). Such a job needs the object to exist on the
    /// remote at that point of the replay, so the creation must not be dropped or moved.
    fn needed_by_others(st: &State, after: u64, path: &str, mine: &dyn Fn(Ino) -> bool) -> bool {
        let mut at = path.to_string();
        for j in st.jobs.range(after + 1..).map(|(_, j)| j) {
            if !mine(j.ino) && j.paths().any(|p| is_same_or_below(p, &at)) {
                return true;
            }
            if let JobKind::Rename { from, .. } = &j.kind {
                if let Some(moved) = rewrite(&at, from, &j.path) {
                    at = moved;
                }
            }
        }
        false
    }

    /// The inode's mkdir job that has not started, with its path.
    /// Only a folder can be needed by other inodes' jobs (things moved into or out of it).
    fn pending_creation(st: &State, ino: Ino) -> Option<(u64, String)> {
        st.jobs
            .iter()
            .find(|(seq, j)| j.ino == ino && !st.running.contains(seq) && j.kind == JobKind::Mkdir)
            .map(|(s, j)| (*s, j.path.clone()))
    }

    /// Whether a creation of the inode was tried already: its outcome may have been
    /// uncertain (a cut reply), so the object may exist at that job's path.
    fn creation_attempted(st: &State, ino: Ino) -> bool {
        st.jobs.values().any(|j| {
            j.ino == ino
                && (j.attempts > 0 || !j.sent.is_empty())
                && matches!(
                    j.kind,
                    JobKind::Upload | JobKind::Mkdir | JobKind::Symlink { .. }
                )
        })
    }

    /// Whether a job that tells the inode is (or is about to be) on the remote is running:
    /// its creation, a move or a delete. A running chmod says nothing: it may run before
    /// the file's first upload was even queued (`fchmod` on a file still open after
    /// `O_CREAT`), and finds nothing there.
    fn running_for(st: &State, ino: Ino) -> bool {
        st.running.iter().any(|s| {
            st.jobs
                .get(s)
                .is_some_and(|j| j.ino == ino && j.kind != JobKind::SetMode)
        })
    }

    fn drop_content_jobs(&self, st: &mut State, ino: Ino) {
        let doomed: Vec<u64> = st
            .jobs
            .iter()
            .filter(|(seq, j)| j.ino == ino && !st.running.contains(seq) && j.kind.follows_inode())
            .map(|(s, _)| *s)
            .collect();
        for seq in doomed {
            st.jobs.remove(&seq);
            self.unpersist(st, seq);
        }
    }

    pub fn on_delete(&self, ino: Ino, path: &str, on_remote: bool) {
        let mut t = self.begin(Batch::default());
        t.on_delete(ino, path, on_remote);
        t.commit_logged();
    }

    /// Whether a queued job will act on the remote object now at `path`: followed
    /// through the queued moves (each job's paths are those at the moment it runs, after
    /// every earlier job), is it ever the subject of a job, or inside a folder that is
    /// deleted? A listing must not bring back such an object: the local view, which
    /// already shows the outcome, wins until the queue has run.
    pub fn touches(&self, path: &str) -> bool {
        let st = self.state.lock().unwrap();
        let mut at = path.to_string();
        for job in st.jobs.values() {
            match &job.kind {
                JobKind::Rename { from, .. } => {
                    if at == *from || job.path == at {
                        return true;
                    }
                    if let Some(moved) = rewrite(&at, from, &job.path) {
                        at = moved;
                    }
                }
                JobKind::Delete if is_same_or_below(&at, &job.path) => return true,
                _ if job.path == at => return true,
                _ => {}
            }
        }
        false
    }

    /// Inodes with queued jobs.
    pub fn busy_inodes(&self) -> HashSet<Ino> {
        self.state
            .lock()
            .unwrap()
            .jobs
            .values()
            .map(|j| j.ino)
            .collect()
    }

    pub fn has_jobs_for(&self, ino: Ino) -> bool {
        self.state
            .lock()
            .unwrap()
            .jobs
            .values()
            .any(|j| j.ino == ino)
    }

    pub fn job_state_of(&self, ino: Ino) -> Option<&'static str> {
        let st = self.state.lock().unwrap();
        let mut state = None;
        for (seq, j) in &st.jobs {
            if j.ino != ino {
                continue;
            }
            if j.failed.is_some() {
                return Some("failed");
            }
            if st.running.contains(seq) {
                state = Some("uploading");
            } else if state.is_none() {
                state = Some("queued");
            }
        }
        state
    }

    pub fn len(&self) -> usize {
        self.state.lock().unwrap().jobs.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn status(&self) -> Vec<JobStatus> {
        let st = self.state.lock().unwrap();
        let mut parked: Vec<(u64, &Job)> = Vec::new();
        st.jobs
            .iter()
            .map(|(seq, j)| {
                let blocked_by = parked
                    .iter()
                    .find(|(_, p)| {
                        p.paths().any(|pp| {
                            j.paths()
                                .any(|jp| is_same_or_below(jp, pp) || is_same_or_below(pp, jp))
                        })
                    })
                    .map(|(s, _)| *s);
                if j.failed.is_some() {
                    parked.push((*seq, j));
                }
                (seq, j, blocked_by)
            })
            .map(|(seq, j, blocked_by)| JobStatus {
                seq: *seq,
                kind: match &j.kind {
                    JobKind::Upload => "upload",
                    JobKind::Mkdir => "mkdir",
                    JobKind::Symlink { .. } => "symlink",
                    JobKind::Rename { .. } => "rename",
                    JobKind::Delete => "delete",
                    JobKind::SetMode => "chmod",
                }
                .to_string(),
                path: j.path.clone(),
                size: j.size,
                done_bytes: self.progress.get(*seq),
                running: st.running.contains(seq),
                attempts: j.attempts,
                failed: j.failed.clone(),
                last_error: j.last_error.clone(),
                blocked_by,
                stuck: j.failed.is_none() && j.attempts >= self.config.max_attempts,
            })
            .collect()
    }

    pub fn recent_errors(&self) -> Vec<(SystemTime, String)> {
        self.state.lock().unwrap().recent_errors.clone()
    }

    pub fn completed(&self) -> u64 {
        self.state.lock().unwrap().completed
    }

    /// How many times a job failed and was scheduled again.
    pub fn retries(&self) -> u64 {
        self.state.lock().unwrap().retries
    }

    /// Revive parked jobs. Returns how many.
    pub fn retry_failed(&self) -> usize {
        let mut st = self.state.lock().unwrap();
        let mut n = 0;
        let seqs: Vec<u64> = st.jobs.keys().copied().collect();
        for seq in seqs {
            let job = st.jobs.get_mut(&seq).expect("key listed");
            if job.failed.is_some() {
                job.failed = None;
                job.attempts = 0;
                job.not_before_ms = 0;
                let job = job.clone();
                self.persist(&mut st, seq, &job);
                n += 1;
            }
        }
        drop(st);
        self.wake.notify_one();
        n
    }

    /// Skip the upload delay and any backoff: run everything now.
    pub fn expedite(&self) {
        let mut st = self.state.lock().unwrap();
        for job in st.jobs.values_mut() {
            job.not_before_ms = 0;
        }
        drop(st);
        self.wake.notify_one();
    }

    /// What `cloudmount sync` asks: every job runs now, until none is left (parked
    /// failures excepted) or `timeout`; true when drained. The upload delay is skipped
    /// again for whatever is queued while it waits (a RELEASE the kernel sends after
    /// close() returned re-arms a still-dirty file's delay), which a single `expedite` at
    /// the start would leave to wait out its full delay.
    pub async fn drain_now(&self, timeout: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + timeout;
        self.expedite();
        loop {
            // Jobs waiting out their upload delay only: a retry keeps its backoff, so a
            // sync during an outage does not hammer the server attempt after attempt.
            {
                let mut st = self.state.lock().unwrap();
                for job in st.jobs.values_mut() {
                    if job.attempts == 0 && job.failed.is_none() {
                        job.not_before_ms = 0;
                    }
                }
            }
            self.wake.notify_one();
            let step = (tokio::time::Instant::now() + Duration::from_millis(200)).min(deadline);
            let left = step.saturating_duration_since(tokio::time::Instant::now());
            if self.wait_drained(left).await {
                return true;
            }
            if tokio::time::Instant::now() >= deadline {
                return false;
            }
        }
    }

    /// Wait until no job is pending or running (parked failures excepted), or timeout.
    /// Returns true when drained.
    pub async fn wait_drained(&self, timeout: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let notified = self.idle.notified();
            {
                let st = self.state.lock().unwrap();
                if st.jobs.values().all(|j| j.failed.is_some()) {
                    return true;
                }
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                return false;
            }
        }
    }

    /// Pick the jobs that may start now and mark them running.
    fn take_runnable(&self, free: usize) -> (Vec<(u64, Job)>, Option<u64>) {
        let mut st = self.state.lock().unwrap();
        let now = now_ms();
        let mut earlier: BTreeSet<String> = BTreeSet::new();
        let mut picked = Vec::new();
        let mut next_wake: Option<u64> = None;
        let key = |p: &str| {
            if self.config.fold_case {
                crate::provider::fold_case(p)
            } else {
                p.to_owned()
            }
        };
        for (seq, job) in st.jobs.iter() {
            if picked.len() >= free {
                break;
            }
            let blocked = job.paths().any(|p| overlaps_any(&earlier, &key(p)));
            let ready =
                !st.running.contains(seq) && job.failed.is_none() && job.not_before_ms <= now;
            if !blocked && ready {
                picked.push((*seq, job.clone()));
            } else if !blocked && job.failed.is_none() && !st.running.contains(seq) {
                next_wake = Some(next_wake.map_or(job.not_before_ms, |w| w.min(job.not_before_ms)));
            }
            for p in job.paths() {
                earlier.insert(key(p));
            }
        }
        for (seq, _) in &picked {
            st.running.insert(*seq);
        }
        (picked, next_wake)
    }

    fn finish(&self, seq: u64, outcome: JobOutcome) {
        let mut st = self.state.lock().unwrap();
        st.running.remove(&seq);
        self.progress.clear(seq);
        match outcome {
            JobOutcome::Done => {
                st.jobs.remove(&seq);
                st.completed += 1;
                self.unpersist(&mut st, seq);
            }
            JobOutcome::Retry(msg) | JobOutcome::Permanent(msg) if !st.jobs.contains_key(&seq) => {
                tracing::debug!(seq, %msg, "job vanished while running");
            }
            JobOutcome::Retry(msg) => {
                st.retries += 1;
                let cfg = &self.config;
                let job = st.jobs.get_mut(&seq).expect("checked above");
                job.attempts += 1;
                job.last_error = Some(msg.clone());
                // A retryable error is never a reason to give up: the network, the server
                // or a login comes back, and parking would leave the remote behind the
                // mount (and every later job on the same paths stuck behind this one).
                // Past `max_attempts` the job keeps trying at the longest backoff, and
                // `status` shows it as stuck with its last error.
                let exp = if job.attempts >= cfg.max_attempts {
                    cfg.backoff_max
                } else {
                    cfg.backoff_base
                        .saturating_mul(1u32 << job.attempts.min(16))
                        .min(cfg.backoff_max)
                };
                // Jitter keeps many clients (or many jobs) from retrying in lockstep.
                let jitter = 0.5 + rand::random::<f64>();
                job.not_before_ms = now_ms() + (exp.as_millis() as f64 * jitter) as u64;
                let job = job.clone();
                self.persist(&mut st, seq, &job);
                push_error(&mut st, format!("{}: {msg}", job.path));
            }
            JobOutcome::Permanent(msg) => {
                let job = st.jobs.get_mut(&seq).expect("checked above");
                job.attempts += 1;
                job.last_error = Some(msg.clone());
                job.failed = Some(msg.clone());
                let job = job.clone();
                self.persist(&mut st, seq, &job);
                push_error(&mut st, format!("{}: {msg}", job.path));
            }
        }
        drop(st);
        self.wake.notify_one();
        self.idle.notify_waiters();
    }

    /// The dispatcher: runs until the executor is dropped (the task is aborted on unmount).
    pub async fn run(self: Arc<Self>, executor: Arc<dyn JobExecutor>) {
        let running = Arc::new(AtomicU64::new(0));
        loop {
            let free = self
                .config
                .concurrency
                .saturating_sub(running.load(Ordering::SeqCst) as usize);
            let notified = self.wake.notified();
            let (batch, next_wake) = if free > 0 {
                self.take_runnable(free)
            } else {
                (vec![], None)
            };
            if !batch.is_empty() {
                // The local change behind a job must be durable before the remote sees it:
                // after a kill -9 the mount must never come back older than the remote
                // (a rename that reached the server but was lost here). One flush covers
                // the whole batch.
                if let Err(e) = self.store.flush().await {
                    tracing::error!(error = %e, "could not flush the metadata store");
                }
            }
            for (seq, job) in batch {
                let this = Arc::clone(&self);
                let exec = Arc::clone(&executor);
                let running = Arc::clone(&running);
                running.fetch_add(1, Ordering::SeqCst);
                tokio::spawn(async move {
                    let outcome = exec.execute(seq, &job, &this.progress).await;
                    if let JobOutcome::Done = outcome {
                        tracing::debug!(seq, path = %job.path, "write-back job done");
                    } else {
                        tracing::warn!(seq, path = %job.path, ?outcome, "write-back job did not complete");
                    }
                    running.fetch_sub(1, Ordering::SeqCst);
                    this.finish(seq, outcome);
                });
            }
            let sleep = match next_wake {
                Some(at) => Duration::from_millis(at.saturating_sub(now_ms()).max(5)),
                None => Duration::from_secs(3600),
            };
            let _ = tokio::time::timeout(sleep, notified).await;
        }
    }
}

/// A change of the queue that lands together with a namespace change (see
/// `WriteBackQueue::begin`). It holds the queue's lock until `commit`.
pub struct QueueTxn<'a> {
    queue: &'a WriteBackQueue,
    st: Option<std::sync::MutexGuard<'a, State>>,
}

impl<'a> QueueTxn<'a> {
    fn parts(&mut self) -> (&'a WriteBackQueue, &mut State) {
        (self.queue, self.st.as_mut().expect("open transaction"))
    }

    /// The batch of the namespace change this transaction lands with.
    pub fn batch(&mut self) -> &mut Batch {
        self.st
            .as_mut()
            .expect("open transaction")
            .txn
            .get_or_insert_with(Batch::default)
    }

    /// Whether a job for this inode is running now.
    pub fn is_running(&mut self, ino: Ino) -> bool {
        let (_, st) = self.parts();
        WriteBackQueue::running_for(st, ino)
    }

    /// Whether a rename of `ino` (with `moved`, everything below it, from `from`) needs a
    /// move on the remote, rather than renaming its queued creations: `on_remote` says
    /// the entry exists there already. Ask this inside the transaction that then calls
    /// `on_rename` with the answer, so that nothing starts in between.
    pub fn rename_is_move(
        &mut self,
        ino: Ino,
        moved: &HashSet<Ino>,
        from: &str,
        on_remote: bool,
    ) -> bool {
        let (_, st) = self.parts();
        // The upload that creates it may be running.
        let mut on_remote = on_remote || WriteBackQueue::running_for(st, ino);
        if !on_remote {
            // Renaming creations that have not run yet is only right when no other
            // queued job relies on the old names; otherwise the remote replays the
            // creation and then the move.
            let first = st
                .jobs
                .iter()
                .find(|(seq, j)| {
                    moved.contains(&j.ino)
                        && !st.running.contains(seq)
                        && j.paths().any(|p| is_same_or_below(p, from))
                })
                .map(|(s, _)| *s);
            if let Some(first) = first {
                on_remote =
                    WriteBackQueue::needed_by_others(st, first, from, &|i| moved.contains(&i));
            }
            // Something below that exists on the remote elsewhere (a file moved into a
            // folder not created yet) is moved by a queued job whose source other jobs
            // may follow: that job keeps its place, so the folder is created and moved.
            // Likewise when a creation of something below is running, or was queued
            // under an older name (before a move of a folder above it): it lands where
            // the replay puts it, and only a move takes it on from there.
            on_remote |= st.jobs.iter().any(|(seq, j)| {
                moved.contains(&j.ino)
                    && (st.running.contains(seq)
                        || j.attempts > 0
                        || !j.sent.is_empty()
                        || !j.kind.follows_inode()
                        || !j.paths().all(|p| is_same_or_below(p, from)))
            });
        }
        on_remote
    }

    /// Apply the namespace change and the job writes as one atomic batch, then let the
    /// dispatcher see the new jobs.
    pub fn commit(mut self) -> Result<(), StoreError> {
        self.finish()
    }

    /// `commit` for callers with no way to report a store error (it is logged).
    pub fn commit_logged(self) {
        if let Err(e) = self.commit() {
            tracing::error!(error = %e, "could not persist write-back jobs");
        }
    }

    fn finish(&mut self) -> Result<(), StoreError> {
        let Some(mut st) = self.st.take() else {
            return Ok(());
        };
        let batch = st.txn.take().unwrap_or_default();
        let result = self.queue.store.apply(batch);
        drop(st);
        self.queue.wake.notify_one();
        result
    }

    /// Queue (or postpone the already queued) upload of an inode's content.
    pub fn enqueue_upload(&mut self, ino: Ino, path: &str, size: u64, generation: u64) {
        let (q, st) = self.parts();
        let delay = q.config.upload_delay;
        // Only a waiting upload to the same path absorbs this one: one queued before a
        // rename of the file (or of a folder above it) must run before that move.
        let existing = st
            .jobs
            .iter()
            .rev()
            .find(|(seq, j)| {
                j.ino == ino
                    && j.kind == JobKind::Upload
                    && j.path == path
                    && !st.running.contains(seq)
            })
            .map(|(s, _)| *s);
        if let Some(seq) = existing {
            let job = st.jobs.get_mut(&seq).expect("found above");
            if job.generation != generation {
                // Changed again: wait the delay anew, so a burst of saves uploads once.
                job.not_before_ms = now_ms() + delay.as_millis() as u64;
                job.failed = None;
                job.attempts = 0;
                job.generation = generation;
            }
            job.size = size;
            let job = job.clone();
            q.persist(st, seq, &job);
        } else {
            let mut job = q.new_job(ino, JobKind::Upload, path, delay, size);
            job.generation = generation;
            q.push(st, job);
        }
    }

    pub fn enqueue_mkdir(&mut self, ino: Ino, path: &str) {
        let (q, st) = self.parts();
        let job = q.new_job(ino, JobKind::Mkdir, path, Duration::ZERO, 0);
        q.push(st, job);
    }

    /// Queue a chmod of the remote object (see `JobKind::SetMode`), unless one that has
    /// not started is queued for the inode at that path already. (A waiting upload does
    /// not stand in for it: an upload that finds its content already there sends nothing.)
    pub fn enqueue_set_mode(&mut self, ino: Ino, path: &str) {
        let (q, st) = self.parts();
        let waiting = st
            .jobs
            .iter()
            .find(|(seq, j)| {
                j.ino == ino
                    && j.path == path
                    && !st.running.contains(seq)
                    && j.kind == JobKind::SetMode
            })
            .map(|(s, _)| *s);
        if let Some(seq) = waiting {
            // It reads the bits when it runs; it runs now, not after an old backoff.
            let job = st.jobs.get_mut(&seq).expect("found above");
            job.failed = None;
            job.attempts = 0;
            job.not_before_ms = 0;
            let job = job.clone();
            q.persist(st, seq, &job);
        } else {
            let job = q.new_job(ino, JobKind::SetMode, path, Duration::ZERO, 0);
            q.push(st, job);
        }
    }

    pub fn enqueue_symlink(&mut self, ino: Ino, path: &str, target: &str) {
        let (q, st) = self.parts();
        let job = q.new_job(
            ino,
            JobKind::Symlink {
                target: target.to_string(),
            },
            path,
            Duration::ZERO,
            0,
        );
        q.push(st, job);
    }

    /// A local rename of `ino` (and, for a directory, of `moved`: every inode below it).
    /// `on_remote`: the entry exists (or is being created) on the remote, so the remote
    /// needs a move; otherwise only the queued creations of the moved inodes change names.
    /// `replaced`: the inode a rename overwrote, whose queued uploads are now moot.
    pub fn on_rename(
        &mut self,
        ino: Ino,
        moved: &HashSet<Ino>,
        from: &str,
        to: &str,
        on_remote: bool,
        replaced: Option<Ino>,
    ) {
        let (q, st) = self.parts();
        // `on_remote` is `rename_is_move`'s answer, asked in this same transaction.
        if let Some(victim) = replaced {
            let needed = WriteBackQueue::pending_creation(st, victim).is_some_and(|(seq, p)| {
                WriteBackQueue::needed_by_others(st, seq, &p, &|i| i == victim)
            });
            if needed || WriteBackQueue::creation_attempted(st, victim) {
                // Created, used by other queued jobs (or maybe created already by an
                // attempt whose reply was lost), then replaced: replayed as such.
                let job = q.new_job(victim, JobKind::Delete, to, Duration::ZERO, 0);
                q.push(st, job);
            } else {
                q.drop_content_jobs(st, victim);
            }
        }
        let under_from = |st: &State, seq: &u64, j: &Job| {
            !st.running.contains(seq) && j.paths().any(|p| is_same_or_below(p, from))
        };
        if on_remote {
            // The remote object moves after everything queued before this rename has
            // run, and everything queued later follows it: the remote replays the
            // user's operations in order. Jobs already queued below `from` keep their
            // paths (they act on the object before it moves), and a second rename of the
            // same object chains after the first (`mv c d; mv d b` is two moves), so no
            // job ever changes places with another.
            let job = q.new_job(
                ino,
                JobKind::Rename {
                    from: from.to_string(),
                    overwrite: true,
                },
                to,
                Duration::ZERO,
                0,
            );
            q.push(st, job);
        } else {
            // Only the moved inodes' own queued creations change names; jobs on the same
            // path that belong to an earlier occupant stay as they are. They go to the end,
            // after whatever the rename itself queued (the delete of a replaced directory).
            let affected: Vec<u64> = st
                .jobs
                .iter()
                .filter(|(seq, j)| moved.contains(&j.ino) && under_from(st, seq, j))
                .map(|(s, _)| *s)
                .collect();
            for seq in affected {
                let mut job = st.jobs.remove(&seq).expect("listed above");
                q.unpersist(st, seq);
                job.rewrite_prefix(from, to);
                q.push(st, job);
            }
        }
    }

    /// Queue the removal of a remote object no inode stands for any more (what a renamed
    /// file had replaced before it was uploaded).
    pub fn enqueue_remote_delete(&mut self, path: &str) {
        let (q, st) = self.parts();
        let job = q.new_job(0, JobKind::Delete, path, Duration::ZERO, 0);
        q.push(st, job);
    }

    /// A local unlink/rmdir. Queued creations of the inode are dropped (a file deleted
    /// while queued is not resurrected); if it exists remotely, a delete is queued.
    pub fn on_delete(&mut self, ino: Ino, path: &str, on_remote: bool) {
        let (q, st) = self.parts();
        // Decided again under the lock: the upload that creates it may have started
        // since the caller looked.
        let on_remote = on_remote
            || WriteBackQueue::running_for(st, ino)
            || WriteBackQueue::creation_attempted(st, ino);
        // A folder that later queued jobs move things into or out of must be created
        // and then deleted, as it happened: dropping its creation would strand them.
        let needed = WriteBackQueue::pending_creation(st, ino)
            .is_some_and(|(seq, p)| WriteBackQueue::needed_by_others(st, seq, &p, &|i| i == ino));
        if !needed {
            q.drop_content_jobs(st, ino);
        }
        if on_remote || needed {
            let job = q.new_job(ino, JobKind::Delete, path, Duration::ZERO, 0);
            q.push(st, job);
        }
    }
}

impl Drop for QueueTxn<'_> {
    /// A transaction dropped without `commit` (an early return) still lands: the
    /// in-memory queue already holds its jobs, and the store must not disagree.
    fn drop(&mut self) {
        if let Err(e) = self.finish() {
            tracing::error!(error = %e, "could not persist write-back jobs");
        }
    }
}

fn push_error(st: &mut State, msg: String) {
    st.recent_errors.push((SystemTime::now(), msg));
    if st.recent_errors.len() > 20 {
        st.recent_errors.remove(0);
    }
}

/// Whether `path` equals, lies below, or lies above any path in `set`.
fn overlaps_any(set: &BTreeSet<String>, path: &str) -> bool {
    if set.is_empty() {
        return false;
    }
    // Same path or an ancestor.
    let mut p = path;
    loop {
        if set.contains(p) {
            return true;
        }
        match p.rfind('/') {
            Some(0) if p.len() > 1 => p = "/",
            Some(0) | None => break,
            Some(i) => p = &p[..i],
        }
        if p == "/" {
            if set.contains("/") {
                return true;
            }
            break;
        }
    }
    // A descendant.
    let prefix = if path == "/" {
        "/".to_string()
    } else {
        format!("{path}/")
    };
    set.range(prefix.clone()..)
        .next()
        .map(|s| s.starts_with(&prefix))
        .unwrap_or(false)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn overlap_detection() {
        let mut set = BTreeSet::new();
        set.insert("/a/b".to_string());
        assert!(overlaps_any(&set, "/a/b"));
        assert!(overlaps_any(&set, "/a/b/c"));
        assert!(overlaps_any(&set, "/a"));
        assert!(!overlaps_any(&set, "/a/bc"));
        assert!(!overlaps_any(&set, "/x"));
        assert_eq!(rewrite("/a/b/c", "/a/b", "/z"), Some("/z/c".into()));
        assert_eq!(rewrite("/a/bc", "/a/b", "/z"), None);
    }
}
