//! One fresh, empty backend per test, reached only through the `Provider` trait, plus the
//! few helpers the cases share (scratch files to upload from, whole listings, whole reads).

use std::any::Any;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use cloudmount::provider::gdrive::GdriveProvider;
use cloudmount::provider::local::LocalProvider;
use cloudmount::provider::memory::MemoryProvider;
use cloudmount::provider::webdav::{ChunkedMode, WebdavConfig, WebdavProvider};
use cloudmount::provider::{
    collect_stream, Provider, ProviderError, ProviderResult, RemoteEntry, UploadOptions,
};
use futures::StreamExt;

use crate::drive_emulator::EmulatorConfig;
use crate::drive_harness::{harness, Harness};
use crate::graph_emulator::GraphConfig;
use crate::nextcloud_emulator::NextcloudEmulator;
use crate::webdav_servers::{start_apache_webdav, start_rclone_webdav};

/// The page size the Drive backend asks for and the emulator enforces: small, so that every
/// listing of more than two entries takes several `files.list` requests.
pub const DRIVE_PAGE: usize = 2;
/// The Nextcloud account's storage limit.
pub const NEXTCLOUD_QUOTA: u64 = 10_000_000;
/// The Drive account's storage limit.
pub const DRIVE_QUOTA: u64 = 50_000_000;
/// The OneDrive backend's page size (`$top`) and its drive's size.
pub const ONEDRIVE_PAGE: usize = 2;
pub const ONEDRIVE_QUOTA: u64 = 40_000_000;
/// The Dropbox backend's page size (`limit`) and its account's space.
pub const DROPBOX_PAGE: usize = 2;
pub const DROPBOX_QUOTA: u64 = 30_000_000;

pub struct Fixture {
    pub p: Box<dyn Provider>,
    scratch: tempfile::TempDir,
    scratch_seq: AtomicU64,
    /// How many listing requests the server has answered, for backends that page on the
    /// wire (the provider hands the assembled listing over as one page).
    list_requests: Option<Box<dyn Fn() -> u64 + Send + Sync>>,
    /// The local backend's folder.
    pub local_root: Option<PathBuf>,
    /// Servers, emulators and folders that must live as long as the provider.
    _keep: Vec<Box<dyn Any + Send>>,
}

impl Fixture {
    fn new(p: Box<dyn Provider>, keep: Vec<Box<dyn Any + Send>>) -> Fixture {
        Fixture {
            p,
            scratch: tempfile::tempdir().expect("scratch tempdir"),
            scratch_seq: AtomicU64::new(0),
            list_requests: None,
            local_root: None,
            _keep: keep,
        }
    }

    pub fn list_requests(&self) -> Option<u64> {
        self.list_requests.as_ref().map(|f| f())
    }

    /// A local file with these contents, to upload from.
    pub fn local(&self, data: &[u8]) -> PathBuf {
        let n = self.scratch_seq.fetch_add(1, Ordering::Relaxed);
        let path = self.scratch.path().join(format!("src-{n}"));
        std::fs::write(&path, data).expect("write scratch file");
        path
    }

    /// Uploads unconditionally (setting up a case, not testing uploads).
    pub async fn put(&self, path: &str, data: &[u8]) -> RemoteEntry {
        let src = self.local(data);
        self.p
            .upload(path, &src, &UploadOptions::default())
            .await
            .unwrap_or_else(|e| panic!("{}: upload {path}: {e:?}", self.p.kind()))
    }

    pub async fn upload_if(
        &self,
        path: &str,
        data: &[u8],
        expected_revision: Option<Option<String>>,
    ) -> ProviderResult<RemoteEntry> {
        let src = self.local(data);
        let opts = UploadOptions {
            expected_revision,
            ..Default::default()
        };
        self.p.upload(path, &src, &opts).await
    }

    pub async fn mkdir(&self, path: &str) -> RemoteEntry {
        self.p
            .mkdir(path)
            .await
            .unwrap_or_else(|e| panic!("{}: mkdir {path}: {e:?}", self.p.kind()))
    }

    /// Every page of a listing, as the provider hands them over.
    pub async fn pages(&self, dir: &str) -> ProviderResult<Vec<Vec<RemoteEntry>>> {
        let mut out = Vec::new();
        let mut s = self.p.list(dir);
        while let Some(page) = s.next().await {
            out.push(page?);
        }
        Ok(out)
    }

    /// A whole listing, sorted by name.
    pub async fn list(&self, dir: &str) -> Vec<RemoteEntry> {
        let mut all: Vec<RemoteEntry> = self
            .pages(dir)
            .await
            .unwrap_or_else(|e| panic!("{}: list {dir}: {e:?}", self.p.kind()))
            .into_iter()
            .flatten()
            .collect();
        all.sort_by(|a, b| a.name.cmp(&b.name));
        all
    }

    pub async fn names(&self, dir: &str) -> Vec<String> {
        self.list(dir).await.into_iter().map(|e| e.name).collect()
    }

    pub async fn read(
        &self,
        path: &str,
        revision: Option<&str>,
        offset: u64,
        len: u64,
    ) -> ProviderResult<Vec<u8>> {
        let s = self.p.read_range(path, revision, offset, len).await?;
        collect_stream(s).await
    }

    /// The whole file: a length far past any file these cases write.
    pub async fn read_all(&self, path: &str) -> Vec<u8> {
        self.read(path, None, 0, 1 << 32)
            .await
            .unwrap_or_else(|e| panic!("{}: read {path}: {e:?}", self.p.kind()))
    }

    pub async fn exists(&self, path: &str) -> bool {
        match self.p.stat(path).await {
            Ok(_) => true,
            Err(ProviderError::NotFound(_)) => false,
            Err(e) => panic!("{}: stat {path}: {e:?}", self.p.kind()),
        }
    }
}

pub async fn memory() -> Fixture {
    Fixture::new(Box::new(MemoryProvider::new()), vec![])
}

pub async fn local() -> Fixture {
    let root = tempfile::tempdir().expect("tempdir");
    let p = LocalProvider::new(root.path()).expect("local provider");
    let path = root.path().to_path_buf();
    let mut fx = Fixture::new(Box::new(p), vec![Box::new(root)]);
    fx.local_root = Some(path);
    fx
}

pub async fn rclone() -> Fixture {
    let root = tempfile::tempdir().expect("tempdir");
    let srv = start_rclone_webdav(root.path());
    let p = WebdavProvider::new(WebdavConfig::new(srv.url.clone())).expect("webdav provider");
    // The server goes first so that it stops before its folder is removed.
    Fixture::new(Box::new(p), vec![Box::new(srv), Box::new(root)])
}

pub async fn apache() -> Fixture {
    let root = tempfile::tempdir().expect("tempdir");
    let srv = start_apache_webdav(root.path());
    let p = WebdavProvider::new(WebdavConfig::new(srv.url.clone())).expect("webdav provider");
    Fixture::new(Box::new(p), vec![Box::new(srv), Box::new(root)])
}

pub async fn nextcloud() -> Fixture {
    let nc = NextcloudEmulator::start("alice", "app-password", Some(NEXTCLOUD_QUOTA));
    let mut cfg = WebdavConfig::new(nc.files_url.clone());
    cfg.user = Some("alice".into());
    cfg.password = Some("app-password".into());
    cfg.chunked_upload = ChunkedMode::Auto;
    let p = WebdavProvider::new(cfg).expect("webdav provider");
    Fixture::new(Box::new(p), vec![Box::new(nc)])
}

pub async fn drive() -> Fixture {
    let emu_cfg = EmulatorConfig {
        max_page_size: DRIVE_PAGE,
        storage_limit: Some(DRIVE_QUOTA),
        ..Default::default()
    };
    let Harness {
        emu,
        dir,
        vault,
        tokens,
        provider,
        ..
    } = harness(emu_cfg, |c| c.page_size = DRIVE_PAGE as u32).await;
    let emu = Arc::new(emu);
    let counter = emu.clone();
    let p: GdriveProvider = provider;
    let mut fx = Fixture::new(
        Box::new(p),
        vec![
            Box::new(emu),
            Box::new(tokens),
            Box::new(vault),
            Box::new(dir),
        ],
    );
    fx.list_requests = Some(Box::new(move || counter.stats().list_calls));
    fx
}

pub async fn onedrive() -> Fixture {
    let h = crate::graph_harness::harness(
        GraphConfig {
            quota: ONEDRIVE_QUOTA,
            ..GraphConfig::default()
        },
        |c| c.page_size = ONEDRIVE_PAGE as u32,
    );
    let emu = Arc::new(h.emu);
    let counter = emu.clone();
    let mut fx = Fixture::new(
        Box::new(h.provider),
        vec![
            Box::new(emu),
            Box::new(h.tokens),
            Box::new(h.vault),
            Box::new(h.dir),
        ],
    );
    fx.list_requests = Some(Box::new(move || counter.stats().list_calls));
    fx
}

pub async fn dropbox() -> Fixture {
    let h = crate::dropbox_harness::harness(
        crate::dropbox_emulator::DropboxConfig {
            allocated: DROPBOX_QUOTA,
            ..Default::default()
        },
        |c| c.page_size = DROPBOX_PAGE as u32,
    );
    let emu = Arc::new(h.emu);
    let counter = emu.clone();
    let mut fx = Fixture::new(
        Box::new(h.provider),
        vec![
            Box::new(emu),
            Box::new(h.tokens),
            Box::new(h.vault),
            Box::new(h.dir),
        ],
    );
    fx.list_requests = Some(Box::new(move || counter.stats().list_calls));
    fx
}
