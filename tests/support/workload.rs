//! A seeded file workload run through a mount, with a model of what the tree must hold
//! afterwards, and the comparison of any tree (a server's directory, an emulator's files)
//! with that model.
//!
//! The workload mixes what programs really do: create files of 0 B to a few MiB in nested
//! folders, overwrite, append, save by writing a temporary file and renaming it over the
//! original, rename files (also over existing ones) and folders, delete files, folders and
//! whole subtrees, create a file again under a name just deleted, and read and list
//! through the mount, checking against the model as it goes.
//!
//! Include with `#[path = "support/workload.rs"] mod workload;` (needs `mod common;`).
#![allow(dead_code)]

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

/// cloudmount's reserved folders at the root of a remote; never part of the model.
pub const RESERVED: &[&str] = &[".cloudmount-versions", ".cloudmount-tmp"];

/// splitmix64: seedable and independent of crate versions, so that a seed printed by a
/// failing run replays the same operations.
#[derive(Clone)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Rng(seed)
    }
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    /// Uniform in `0..n` (0 when n is 0).
    pub fn below(&mut self, n: usize) -> usize {
        if n == 0 {
            0
        } else {
            (self.next_u64() % n as u64) as usize
        }
    }
    pub fn range(&mut self, lo: usize, hi: usize) -> usize {
        lo + self.below(hi - lo + 1)
    }
    pub fn chance(&mut self, p: f64) -> bool {
        ((self.next_u64() >> 11) as f64 / (1u64 << 53) as f64) < p
    }
    pub fn pick<'a, T>(&mut self, v: &'a [T]) -> Option<&'a T> {
        if v.is_empty() {
            None
        } else {
            Some(&v[self.below(v.len())])
        }
    }
}

/// A size for a new file: mostly small, a tenth of them between 512 KiB and `max`.
pub fn file_size(rng: &mut Rng, max: usize) -> usize {
    match rng.below(20) {
        0 => 0,
        1..=6 => rng.range(1, 1024),
        7..=13 => rng.range(1025, 64 << 10),
        14..=17 => rng.range((64 << 10) + 1, 512 << 10),
        _ => rng.range((512 << 10) + 1, max.max((512 << 10) + 2)),
    }
}

/// Relative path ("a/b/c.bin") -> content, and the set of folders.
#[derive(Clone, Default)]
pub struct Model {
    pub files: BTreeMap<String, Vec<u8>>,
    pub dirs: BTreeSet<String>,
    /// Where every content ever written came from (sha256 -> "op #12 write a/b.bin"), to
    /// name the origin of wrong or extra contents found on a remote.
    pub origins: HashMap<String, String>,
}

impl Model {
    pub fn note_origin(&mut self, data: &[u8], what: String) {
        self.origins
            .entry(crate::common::sha256(data))
            .or_insert(what);
    }

    fn children_of(&self, dir: &str) -> impl Iterator<Item = String> + '_ {
        let prefix = if dir.is_empty() {
            String::new()
        } else {
            format!("{dir}/")
        };
        let p2 = prefix.clone();
        self.files
            .keys()
            .chain(self.dirs.iter())
            .filter(move |k| k.starts_with(&p2) && !k[p2.len()..].contains('/'))
            .map(move |k| k[prefix.len()..].to_string())
    }

    pub fn is_empty_dir(&self, dir: &str) -> bool {
        self.children_of(dir).next().is_none()
    }

    /// Moves everything at or below `from` to `to`.
    fn move_tree(&mut self, from: &str, to: &str) {
        let under = |k: &String| k == from || k.starts_with(&format!("{from}/"));
        let moved_files: Vec<String> = self.files.keys().filter(|k| under(k)).cloned().collect();
        for k in moved_files {
            let v = self.files.remove(&k).unwrap();
            self.files.insert(format!("{to}{}", &k[from.len()..]), v);
        }
        let moved_dirs: Vec<String> = self.dirs.iter().filter(|k| under(k)).cloned().collect();
        for k in moved_dirs {
            self.dirs.remove(&k);
            self.dirs.insert(format!("{to}{}", &k[from.len()..]));
        }
    }

    fn remove_tree(&mut self, dir: &str) {
        let prefix = format!("{dir}/");
        self.files.retain(|k, _| !k.starts_with(&prefix));
        self.dirs.retain(|k| k != dir && !k.starts_with(&prefix));
    }

    pub fn total_bytes(&self) -> u64 {
        self.files.values().map(|v| v.len() as u64).sum()
    }
}

fn parent_of(p: &str) -> &str {
    p.rfind('/').map_or("", |i| &p[..i])
}

fn join(dir: &str, name: &str) -> String {
    if dir.is_empty() {
        name.to_string()
    } else {
        format!("{dir}/{name}")
    }
}

/// One entry of a tree read back from somewhere.
#[derive(Clone, Debug, PartialEq)]
pub enum Entry {
    Dir,
    File(Vec<u8>),
}

/// Relative path -> entry; a name seen twice in one folder (Drive allows that) is kept as
/// "name#2", "name#3", ... so that duplicates show up as extras.
pub type Tree = BTreeMap<String, Entry>;

/// Every entry below `root`, without the reserved folders at its top.
pub fn disk_tree(root: &Path) -> Tree {
    fn walk(root: &Path, dir: &Path, out: &mut Tree) {
        let rd = fs::read_dir(dir).unwrap_or_else(|e| panic!("read_dir {}: {e}", dir.display()));
        for e in rd {
            let e = e.unwrap();
            let path = e.path();
            let rel = path
                .strip_prefix(root)
                .unwrap()
                .to_string_lossy()
                .into_owned();
            if RESERVED.contains(&rel.as_str()) {
                continue;
            }
            let meta = fs::symlink_metadata(&path).unwrap();
            if meta.is_dir() {
                out.insert(rel, Entry::Dir);
                walk(root, &path, out);
            } else {
                let data = fs::read(&path).unwrap_or_default();
                out.insert(rel, Entry::File(data));
            }
        }
    }
    let mut out = Tree::new();
    walk(root, root, &mut out);
    out
}

/// What differs between a tree and the model.
#[derive(Default, Debug)]
pub struct Diff {
    pub missing: Vec<String>,
    pub wrong: Vec<String>,
    pub extra: Vec<String>,
}

impl Diff {
    pub fn is_empty(&self) -> bool {
        self.missing.is_empty() && self.wrong.is_empty() && self.extra.is_empty()
    }
    pub fn counts(&self) -> String {
        format!(
            "{} missing, {} wrong, {} extra",
            self.missing.len(),
            self.wrong.len(),
            self.extra.len()
        )
    }
    /// At most `limit` lines per category.
    pub fn report(&self, limit: usize) -> String {
        let mut out = self.counts();
        for (what, v) in [
            ("missing", &self.missing),
            ("wrong", &self.wrong),
            ("extra", &self.extra),
        ] {
            for l in v.iter().take(limit) {
                out.push_str(&format!("\n  {what}: {l}"));
            }
            if v.len() > limit {
                out.push_str(&format!("\n  ... and {} more {what}", v.len() - limit));
            }
        }
        out
    }
}

fn describe_content(model: &Model, data: &[u8]) -> String {
    if data.is_empty() {
        return "empty".into();
    }
    match model.origins.get(&crate::common::sha256(data)) {
        Some(o) => format!("content of {o}"),
        None => "content never written by the workload".into(),
    }
}

/// Compares `got` with the model: every difference, with sizes, the first differing
/// offset, and where a wrong content came from when the workload wrote it somewhere.
pub fn compare(got: &Tree, model: &Model) -> Diff {
    let mut d = Diff::default();
    for dir in &model.dirs {
        match got.get(dir) {
            None => d.missing.push(format!("{dir}/ (folder)")),
            Some(Entry::File(g)) => d.wrong.push(format!(
                "{dir}: a file of {} bytes, expected a folder",
                g.len()
            )),
            Some(Entry::Dir) => {}
        }
    }
    for (p, want) in &model.files {
        match got.get(p) {
            None => d.missing.push(format!("{p} ({} bytes)", want.len())),
            Some(Entry::Dir) => d.wrong.push(format!("{p}: a folder, expected a file")),
            Some(Entry::File(g)) if g != want => {
                let first = g
                    .iter()
                    .zip(want.iter())
                    .position(|(a, b)| a != b)
                    .unwrap_or(g.len().min(want.len()));
                let shape = if g.len() < want.len() && want.starts_with(g) {
                    " (a truncated prefix of the expected content)"
                } else if g.len() > want.len() && g.starts_with(want) {
                    " (the expected content plus more)"
                } else {
                    ""
                };
                d.wrong.push(format!(
                    "{p}: {} bytes, expected {}; first difference at offset {first}{shape}; {}",
                    g.len(),
                    want.len(),
                    describe_content(model, g)
                ));
            }
            Some(_) => {}
        }
    }
    for (p, e) in got {
        if !model.files.contains_key(p) && !model.dirs.contains(p) {
            match e {
                Entry::Dir => d.extra.push(format!("{p}/ (folder)")),
                Entry::File(g) => d.extra.push(format!(
                    "{p} ({} bytes, {})",
                    g.len(),
                    describe_content(model, g)
                )),
            }
        }
    }
    d
}

/// Figures of one run, for the test output.
#[derive(Default, Debug, Clone)]
pub struct Stats {
    pub ops: usize,
    pub creates: usize,
    pub bytes_written: u64,
    pub reads: usize,
    pub bytes_read: u64,
    pub renames: usize,
    pub deletes: usize,
    /// Reads or listings through the mount that failed or did not match the model.
    pub read_errors: Vec<String>,
    /// Changes through the mount that failed at first (they are retried until they take
    /// effect, so that the model stays exact; each failure is still a finding).
    pub op_errors: Vec<String>,
}

/// The workload over a mounted folder `base`.
pub struct Workload {
    pub base: PathBuf,
    pub rng: Rng,
    pub model: Model,
    pub stats: Stats,
    pub max_size: usize,
    /// Files created so far; the run ends when it reaches the target.
    next_name: usize,
    /// Recently deleted file paths, to create again (name reuse is where stale queued
    /// deletes and renames bite).
    deleted: Vec<String>,
    /// Log of the operations done, for failure messages ("#12 rename a -> b").
    pub log: Vec<String>,
    /// Added to a panic message (where the daemon logs are kept, the seed).
    pub context: String,
}

/// What one step did, so a caller can decide to act right after specific operations.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Did {
    Write,
    Rename,
    Delete,
    Mkdir,
    Read,
}

impl Workload {
    pub fn new(base: &Path, seed: u64, max_size: usize) -> Self {
        Workload {
            base: base.to_path_buf(),
            rng: Rng::new(seed),
            model: Model::default(),
            stats: Stats::default(),
            max_size,
            next_name: 0,
            deleted: Vec::new(),
            log: Vec::new(),
            context: String::new(),
        }
    }

    fn at(&self, rel: &str) -> PathBuf {
        self.base.join(rel)
    }

    fn fresh(&mut self, prefix: &str, ext: &str) -> String {
        self.next_name += 1;
        format!("{prefix}{}{ext}", self.next_name)
    }

    fn content(&mut self, len: usize) -> Vec<u8> {
        let seed = self.rng.next_u64();
        crate::common::pattern(len, seed)
    }

    /// Panics with the operation, the error and the recent history.
    fn fail(&self, what: &str, e: std::io::Error) -> ! {
        let recent: Vec<&String> = self.log.iter().rev().take(12).collect();
        panic!(
            "op #{} {what} failed through the mount: {e} (errno {:?})\nrecent ops (newest first): {recent:#?}\nearlier failures: {:#?}\nreads and listings that failed or differed: {:#?}\n{}",
            self.stats.ops,
            e.raw_os_error(),
            self.stats.op_errors.iter().rev().take(10).collect::<Vec<_>>(),
            self.stats.read_errors.iter().take(20).collect::<Vec<_>>(),
            self.context
        );
    }

    /// Runs a change through the mount until it succeeds or `done` says it took effect
    /// anyway; every failure is recorded. Gives up (panics) after ten tries.
    fn attempt(
        &mut self,
        what: &str,
        f: impl Fn(&Self) -> std::io::Result<()>,
        done: impl Fn(&Self) -> bool,
    ) {
        for i in 0..10 {
            match f(self) {
                Ok(()) => return,
                Err(e) => {
                    self.stats.op_errors.push(format!(
                        "op #{} {what}: {e} (errno {:?}, try {})",
                        self.stats.ops,
                        e.raw_os_error(),
                        i + 1
                    ));
                    if done(self) {
                        return;
                    }
                    std::thread::sleep(std::time::Duration::from_millis(300));
                }
            }
        }
        self.fail(what, std::io::Error::other("failed ten times"));
    }

    fn random_dir(&mut self) -> String {
        let dirs: Vec<String> = std::iter::once(String::new())
            .chain(self.model.dirs.iter().cloned())
            .collect();
        self.rng.pick(&dirs).cloned().unwrap()
    }

    fn random_file(&mut self) -> Option<String> {
        let files: Vec<String> = self.model.files.keys().cloned().collect();
        self.rng.pick(&files).cloned()
    }

    fn write_file(&mut self, rel: &str, data: &[u8]) {
        self.attempt(
            &format!("write {rel} ({} bytes)", data.len()),
            |w| {
                let mut f = fs::File::create(w.at(rel))?;
                // Several writes, as programs do, rather than one call.
                for chunk in data.chunks(128 << 10) {
                    f.write_all(chunk)?;
                }
                Ok(())
            },
            |_| false,
        );
        self.stats.bytes_written += data.len() as u64;
    }

    fn rename(&mut self, from: &str, to: &str) {
        self.attempt(
            &format!("rename {from} -> {to}"),
            |w| fs::rename(w.at(from), w.at(to)),
            |w| !w.at(from).exists() && w.at(to).exists(),
        );
    }

    /// Creates a folder in the model and through the mount.
    pub fn mkdir(&mut self, rel: &str) {
        self.attempt(
            &format!("mkdir {rel}"),
            |w| fs::create_dir(w.at(rel)),
            |w| w.at(rel).is_dir(),
        );
        self.model.dirs.insert(rel.to_string());
    }

    /// One seeded operation; returns what kind it was.
    pub fn step(&mut self) -> Did {
        self.stats.ops += 1;
        let n = self.stats.ops;
        loop {
            let roll = self.rng.below(100);
            let did = match roll {
                0..=29 => self.op_create(n),
                30..=35 => self.op_mkdir(n),
                36..=45 => self.op_overwrite(n),
                46..=52 => self.op_append(n),
                53..=60 => self.op_save_by_rename(n),
                61..=68 => self.op_rename_file(n),
                69..=72 => self.op_rename_dir(n),
                73..=79 => self.op_delete(n),
                80..=83 => self.op_recreate(n),
                84..=85 => self.op_remove_tree(n),
                86..=87 => self.op_rmdir(n),
                88..=96 => self.op_read(n),
                _ => self.op_list(n),
            };
            if let Some(d) = did {
                return d;
            }
        }
    }

    pub fn files_created(&self) -> usize {
        self.stats.creates
    }

    fn op_create(&mut self, n: usize) -> Option<Did> {
        let dir = self.random_dir();
        let name = self.fresh("f", ".bin");
        let rel = join(&dir, &name);
        let len = file_size(&mut self.rng, self.max_size);
        let data = self.content(len);
        self.write_file(&rel, &data);
        self.model
            .note_origin(&data, format!("op #{n} create {rel}"));
        self.model.files.insert(rel.clone(), data);
        self.stats.creates += 1;
        self.log.push(format!("#{n} create {rel} ({len} B)"));
        Some(Did::Write)
    }

    fn op_mkdir(&mut self, n: usize) -> Option<Did> {
        let parent = self.random_dir();
        if parent.matches('/').count() >= 3 {
            return None;
        }
        let rel = join(&parent, &self.fresh("d", ""));
        self.mkdir(&rel);
        self.log.push(format!("#{n} mkdir {rel}"));
        Some(Did::Mkdir)
    }

    fn op_overwrite(&mut self, n: usize) -> Option<Did> {
        let rel = self.random_file()?;
        let len = file_size(&mut self.rng, self.max_size);
        let data = self.content(len);
        self.write_file(&rel, &data);
        self.model
            .note_origin(&data, format!("op #{n} overwrite {rel}"));
        self.model.files.insert(rel.clone(), data);
        self.log.push(format!("#{n} overwrite {rel} ({len} B)"));
        Some(Did::Write)
    }

    fn op_append(&mut self, n: usize) -> Option<Did> {
        let rel = self.random_file()?;
        let len = self.rng.range(1, 64 << 10);
        let extra = self.content(len);
        let r = (|| {
            let mut f = fs::OpenOptions::new().append(true).open(self.at(&rel))?;
            f.write_all(&extra)
        })();
        self.stats.bytes_written += len as u64;
        let data = self.model.files.get_mut(&rel).unwrap();
        data.extend_from_slice(&extra);
        let data = data.clone();
        if let Err(e) = r {
            // How much of the append landed is unknown: write the whole file again.
            self.stats.op_errors.push(format!(
                "op #{n} append {len} B to {rel}: {e} (errno {:?})",
                e.raw_os_error()
            ));
            self.write_file(&rel, &data);
        }
        self.model
            .note_origin(&data, format!("op #{n} append to {rel}"));
        self.log.push(format!("#{n} append {len} B to {rel}"));
        Some(Did::Write)
    }

    /// What editors do: write the new content to a temporary name, rename it over.
    fn op_save_by_rename(&mut self, n: usize) -> Option<Did> {
        let rel = self.random_file()?;
        let dir = parent_of(&rel).to_string();
        let tmp = join(&dir, &format!(".{}.tmp", self.fresh("save", "")));
        let len = file_size(&mut self.rng, self.max_size);
        let data = self.content(len);
        self.write_file(&tmp, &data);
        self.rename(&tmp, &rel);
        self.model
            .note_origin(&data, format!("op #{n} save-by-rename {rel}"));
        self.model.files.insert(rel.clone(), data);
        self.stats.renames += 1;
        self.log
            .push(format!("#{n} save {rel} via {tmp} ({len} B)"));
        Some(Did::Rename)
    }

    fn op_rename_file(&mut self, n: usize) -> Option<Did> {
        let from = self.random_file()?;
        // A third of the renames replace another existing file.
        let to = if self.rng.chance(0.33) {
            let to = self.random_file()?;
            if to == from {
                return None;
            }
            to
        } else {
            let dir = self.random_dir();
            join(&dir, &self.fresh("r", ".bin"))
        };
        self.rename(&from, &to);
        let data = self.model.files.remove(&from).unwrap();
        let over = self.model.files.insert(to.clone(), data).is_some();
        self.deleted.push(from.clone());
        self.stats.renames += 1;
        self.log.push(format!(
            "#{n} rename {from} -> {to}{}",
            if over { " (over an existing file)" } else { "" }
        ));
        Some(Did::Rename)
    }

    fn op_rename_dir(&mut self, n: usize) -> Option<Did> {
        let dirs: Vec<String> = self.model.dirs.iter().cloned().collect();
        let from = self.rng.pick(&dirs)?.clone();
        let parent = self.random_dir();
        // Not into itself or below itself.
        if parent == from || parent.starts_with(&format!("{from}/")) {
            return None;
        }
        if parent.matches('/').count() + from.matches('/').count() >= 4 {
            return None;
        }
        let to = join(&parent, &self.fresh("m", ""));
        self.rename(&from, &to);
        self.model.move_tree(&from, &to);
        self.stats.renames += 1;
        self.log.push(format!("#{n} rename folder {from} -> {to}"));
        Some(Did::Rename)
    }

    fn op_delete(&mut self, n: usize) -> Option<Did> {
        let rel = self.random_file()?;
        self.attempt(
            &format!("unlink {rel}"),
            |w| fs::remove_file(w.at(&rel)),
            |w| !w.at(&rel).exists(),
        );
        self.model.files.remove(&rel);
        self.deleted.push(rel.clone());
        self.stats.deletes += 1;
        self.log.push(format!("#{n} unlink {rel}"));
        Some(Did::Delete)
    }

    fn op_recreate(&mut self, n: usize) -> Option<Did> {
        // The most recent deleted names whose folder still exists and is free again.
        let candidates: Vec<String> = self
            .deleted
            .iter()
            .rev()
            .take(10)
            .filter(|p| {
                let parent = parent_of(p);
                (parent.is_empty() || self.model.dirs.contains(parent))
                    && !self.model.files.contains_key(*p)
                    && !self.model.dirs.contains(*p)
            })
            .cloned()
            .collect();
        let rel = self.rng.pick(&candidates)?.clone();
        let len = file_size(&mut self.rng, self.max_size);
        let data = self.content(len);
        self.write_file(&rel, &data);
        self.model
            .note_origin(&data, format!("op #{n} re-create {rel}"));
        self.model.files.insert(rel.clone(), data);
        self.stats.creates += 1;
        self.log
            .push(format!("#{n} re-create deleted name {rel} ({len} B)"));
        Some(Did::Write)
    }

    fn op_remove_tree(&mut self, n: usize) -> Option<Did> {
        // Only small subtrees: removing half the workload at once teaches nothing more.
        let dirs: Vec<String> = self
            .model
            .dirs
            .iter()
            .filter(|d| {
                let prefix = format!("{d}/");
                self.model
                    .files
                    .keys()
                    .filter(|k| k.starts_with(&prefix))
                    .count()
                    <= 6
            })
            .cloned()
            .collect();
        let dir = self.rng.pick(&dirs)?.clone();
        self.attempt(
            &format!("rm -r {dir}"),
            |w| fs::remove_dir_all(w.at(&dir)),
            |w| !w.at(&dir).exists(),
        );
        self.model.remove_tree(&dir);
        self.stats.deletes += 1;
        self.log.push(format!("#{n} rm -r {dir}"));
        Some(Did::Delete)
    }

    fn op_rmdir(&mut self, n: usize) -> Option<Did> {
        let empty: Vec<String> = self
            .model
            .dirs
            .iter()
            .filter(|d| self.model.is_empty_dir(d))
            .cloned()
            .collect();
        let dir = self.rng.pick(&empty)?.clone();
        self.attempt(
            &format!("rmdir {dir}"),
            |w| fs::remove_dir(w.at(&dir)),
            |w| !w.at(&dir).exists(),
        );
        self.model.dirs.remove(&dir);
        self.stats.deletes += 1;
        self.log.push(format!("#{n} rmdir {dir}"));
        Some(Did::Delete)
    }

    /// Reads a file through the mount and checks it; a failure is recorded, not fatal, so
    /// that the run still reaches the comparison of the remote.
    pub fn check_file(&mut self, rel: &str, when: &str) {
        let want = &self.model.files[rel];
        self.stats.reads += 1;
        match fs::read(self.at(rel)) {
            Ok(got) if &got == want => self.stats.bytes_read += got.len() as u64,
            Ok(got) => {
                let first = got
                    .iter()
                    .zip(want.iter())
                    .position(|(a, b)| a != b)
                    .unwrap_or(got.len().min(want.len()));
                self.stats.read_errors.push(format!(
                    "{when}: read {rel}: {} bytes, expected {}, first difference at {first}",
                    got.len(),
                    want.len()
                ))
            }
            Err(e) => self.stats.read_errors.push(format!(
                "{when}: read {rel}: {e} (errno {:?})",
                e.raw_os_error()
            )),
        }
    }

    fn op_read(&mut self, n: usize) -> Option<Did> {
        let rel = self.random_file()?;
        self.check_file(&rel, &format!("op #{n}"));
        self.log.push(format!("#{n} read {rel}"));
        Some(Did::Read)
    }

    /// Lists a folder through the mount and checks the names.
    pub fn check_listing(&mut self, dir: &str, when: &str) {
        let mut want: Vec<String> = self.model.children_of(dir).collect();
        want.sort();
        match fs::read_dir(self.at(dir)) {
            Ok(rd) => {
                let mut got: Vec<String> = rd
                    .filter_map(|e| e.ok())
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .filter(|name| !(dir.is_empty() && RESERVED.contains(&name.as_str())))
                    .collect();
                got.sort();
                if got != want {
                    let extra: Vec<&String> = got.iter().filter(|g| !want.contains(g)).collect();
                    let missing: Vec<&String> = want.iter().filter(|w| !got.contains(w)).collect();
                    self.stats.read_errors.push(format!(
                        "{when}: listing of /{dir}: extra {extra:?}, missing {missing:?}"
                    ));
                }
            }
            Err(e) => self
                .stats
                .read_errors
                .push(format!("{when}: list /{dir}: {e}")),
        }
    }

    fn op_list(&mut self, n: usize) -> Option<Did> {
        let dir = self.random_dir();
        self.check_listing(&dir, &format!("op #{n}"));
        self.log.push(format!("#{n} list /{dir}"));
        Some(Did::Read)
    }

    /// Reads every file of the model through the mount.
    pub fn check_all(&mut self, when: &str) {
        let files: Vec<String> = self.model.files.keys().cloned().collect();
        for f in files {
            self.check_file(&f, when);
        }
    }
}

/// Puts `count` files (and a few folders) straight into a remote's directory before the
/// mount starts, so that reads through the mount must fetch them over the network.
pub fn seed_remote(root: &Path, rng: &mut Rng, count: usize, max_size: usize, model: &mut Model) {
    for d in ["pre", "pre/deep"] {
        fs::create_dir_all(root.join(d)).unwrap();
        model.dirs.insert(d.into());
    }
    for i in 0..count {
        let dir = ["", "pre", "pre/deep"][i % 3];
        let rel = join(dir, &format!("seeded{i}.bin"));
        let len = file_size(rng, max_size);
        let data = crate::common::pattern(len, rng.next_u64());
        fs::write(root.join(&rel), &data).unwrap();
        model.note_origin(&data, format!("seeded {rel}"));
        model.files.insert(rel, data);
    }
}

/// An environment variable as a number, or the default.
pub fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

pub fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// The write-back queue of a daemon mount as `cloudmount status --json` reports it:
/// (pending, running, failed, one line per job).
pub fn queue_of(mount_point: &Path) -> Result<(u64, u64, u64, Vec<String>), String> {
    let out = std::process::Command::new(crate::common::BIN)
        .arg("status")
        .arg(mount_point)
        .arg("--json")
        .output()
        .map_err(|e| format!("run status: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "status failed: {}",
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    let v: serde_json::Value = serde_json::from_slice(&out.stdout)
        .map_err(|e| format!("status --json is not JSON: {e}"))?;
    let (mut pending, mut running, mut failed, mut jobs) = (0, 0, 0, Vec::new());
    for m in v.as_array().into_iter().flatten() {
        for c in m["connections"].as_array().into_iter().flatten() {
            let q = &c["queue"];
            pending += q["pending"].as_u64().unwrap_or(0);
            running += q["running"].as_u64().unwrap_or(0);
            failed += q["failed"].as_u64().unwrap_or(0);
            for j in q["jobs"].as_array().into_iter().flatten() {
                jobs.push(j.to_string());
            }
        }
    }
    Ok((pending, running, failed, jobs))
}

/// Waits until the queue is empty (nothing pending, running or parked as failed).
/// Returns a description of what is left when `timeout` runs out.
pub fn wait_queue_empty(mount_point: &Path, timeout: std::time::Duration) -> Result<(), String> {
    let start = std::time::Instant::now();
    loop {
        let q = queue_of(mount_point);
        match &q {
            Ok((0, 0, 0, _)) => return Ok(()),
            // Parked jobs stay parked: no point waiting for them.
            Ok((0, 0, failed, jobs)) if *failed > 0 => {
                return Err(format!(
                    "{failed} job(s) parked as failed:\n    {}",
                    jobs.join("\n    ")
                ))
            }
            _ => {}
        }
        if start.elapsed() > timeout {
            return Err(match q {
                Ok((p, r, f, jobs)) => format!(
                    "after {timeout:?}: {p} pending, {r} running, {f} failed:\n    {}",
                    jobs.iter()
                        .take(30)
                        .cloned()
                        .collect::<Vec<_>>()
                        .join("\n    ")
                ),
                Err(e) => e,
            });
        }
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
}

/// Lines of a daemon log that tell how the write-back went wrong (conflicts, parked
/// jobs, errors), at most `limit` of them, for failure messages.
pub fn telling_log_lines(log: &str, limit: usize) -> Vec<String> {
    // Retries of transient failures are expected under faults; what tells the story is
    // the rest: conflicts, refusals, parked jobs, errors.
    const BORING: &[&str] = &[
        "write-back job did not complete",
        "could not record a version",
    ];
    log.lines()
        .filter(|l| {
            l.contains("conflict")
                || l.contains(" ERROR ")
                || l.contains("parked")
                || (l.contains(" WARN ") && !BORING.iter().any(|b| l.contains(b)))
                || (l.contains("did not complete") && l.contains("Permanent"))
        })
        .take(limit)
        .map(|l| l.chars().take(400).collect())
        .collect()
}

/// Copies the daemon logs of a test (every `daemon-*.log` in its temporary directory) to
/// a directory that outlives the test, also when it panics, so that a failure message can
/// point at them.
pub struct KeepLogs {
    pub from: PathBuf,
    pub to: PathBuf,
}

impl KeepLogs {
    pub fn new(from: &Path, name: &str) -> Self {
        let to = std::env::temp_dir().join("cloudmount-test-logs").join(name);
        let _ = fs::remove_dir_all(&to);
        fs::create_dir_all(&to).unwrap();
        KeepLogs {
            from: from.to_path_buf(),
            to,
        }
    }

    /// Every kept log, oldest first (names end in a start time).
    pub fn text(&self) -> String {
        let mut names: Vec<PathBuf> = fs::read_dir(&self.to)
            .into_iter()
            .flatten()
            .flatten()
            .map(|e| e.path())
            .collect();
        names.sort();
        names
            .iter()
            // Lossy: a log may hold raw bytes of odd file names.
            .map(|p| String::from_utf8_lossy(&fs::read(p).unwrap_or_default()).into_owned())
            .collect::<Vec<_>>()
            .join("\n")
    }

    pub fn copy_now(&self) {
        for e in fs::read_dir(&self.from).into_iter().flatten().flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if name.starts_with("daemon") && name.ends_with(".log") {
                let _ = fs::copy(e.path(), self.to.join(&name));
            }
        }
    }
}

impl Drop for KeepLogs {
    fn drop(&mut self) {
        self.copy_now();
    }
}
