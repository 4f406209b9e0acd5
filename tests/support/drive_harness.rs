//! Shared setup for the Drive tests: an emulator, a token vault with a logged-in account,
//! and a provider wired to both.
#![allow(dead_code)]

use std::sync::Arc;
use std::time::Duration;

use cloudmount::accounts::{
    login_loopback, AccountId, LoginOptions, OAuthClientConfig, Secret, StoredTokens, TokenSource,
    TokenVault,
};
use cloudmount::provider::gdrive::{GdriveConfig, GdriveProvider};

use crate::drive_emulator::{DriveEmulator, EmulatorConfig};

/// The runtime a synchronous (mounting) test keeps for the emulator and the provider: they
/// live as long as it does.
pub fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

pub fn oauth_config(emu: &DriveEmulator) -> OAuthClientConfig {
    let cfg = emu.config();
    let mut o = OAuthClientConfig::google(cfg.client_id, Some(cfg.client_secret));
    o.auth_url = emu.auth_url();
    o.token_url = emu.token_url();
    o.revoke_url = Some(emu.revoke_url());
    o
}

pub fn gdrive_config(emu: &DriveEmulator) -> GdriveConfig {
    GdriveConfig {
        api_base: emu.api_base(),
        upload_base: emu.upload_base(),
        retry_base_delay_ms: 10,
        max_requests_per_second: 0.0,
        ..GdriveConfig::default()
    }
}

/// Acts as the user's browser: follows the authorization redirect to the loopback listener.
pub async fn browser(url: String) {
    let resp = reqwest::get(url).await.expect("browser request");
    assert!(
        resp.status().is_success(),
        "loopback page: {}",
        resp.status()
    );
}

/// The authorization redirect, without following it.
pub async fn redirect_location(url: &str) -> reqwest::Url {
    let client = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let resp = client.get(url).send().await.unwrap();
    assert_eq!(resp.status(), 302, "authorize endpoint");
    reqwest::Url::parse(resp.headers()["location"].to_str().unwrap()).unwrap()
}

pub async fn browser_login(emu: &DriveEmulator) -> StoredTokens {
    login_loopback(&oauth_config(emu), &LoginOptions::default(), browser)
        .await
        .expect("login")
}

pub struct Harness {
    pub emu: DriveEmulator,
    pub dir: tempfile::TempDir,
    pub vault: Arc<TokenVault>,
    pub account: AccountId,
    pub tokens: Arc<TokenSource>,
    pub provider: GdriveProvider,
}

/// An emulator and a provider logged in without the browser dance.
pub async fn harness(emu_cfg: EmulatorConfig, tweak: impl FnOnce(&mut GdriveConfig)) -> Harness {
    let emu = DriveEmulator::start(emu_cfg).await;
    let dir = tempfile::tempdir().unwrap();
    let vault = Arc::new(TokenVault::open(&dir.path().join("accounts")).unwrap());
    let account = AccountId::new("gdrive", "test").unwrap();
    let (access, refresh) = emu.issue_tokens();
    let mut t = StoredTokens {
        access_token: Some(Secret::new(access)),
        refresh_token: Some(Secret::new(refresh)),
        ..Default::default()
    };
    t.set_expires_in(Some(emu.config().access_token_lifetime));
    vault.save(&account, &t).unwrap();
    let tokens = Arc::new(
        TokenSource::new(vault.clone(), account.clone(), &oauth_config(&emu))
            .unwrap()
            .with_refresh_margin(Duration::ZERO),
    );
    let mut cfg = gdrive_config(&emu);
    tweak(&mut cfg);
    let provider = GdriveProvider::new(cfg, tokens.clone()).unwrap();
    Harness {
        emu,
        dir,
        vault,
        account,
        tokens,
        provider,
    }
}
