//! Shared setup for the OneDrive tests: the Graph emulator, a token vault with a
//! logged-in account (tokens issued by the emulator, refreshed through its token
//! endpoint), and a provider wired to both.
#![allow(dead_code)]

use std::sync::Arc;
use std::time::Duration;

use cloudmount::accounts::{
    AccountId, OAuthClientConfig, Secret, StoredTokens, TokenSource, TokenVault,
};
use cloudmount::provider::onedrive::{OneDriveConfig, OneDriveProvider};

use crate::graph_emulator::{GraphConfig, GraphEmulator};

/// The emulator's identity platform as an OAuth client sees it (a public client).
pub fn oauth_config(emu: &GraphEmulator) -> OAuthClientConfig {
    let authority = emu.authority("common");
    OAuthClientConfig {
        client_id: emu.config().client_id,
        client_secret: None,
        auth_url: format!("{authority}/authorize"),
        token_url: format!("{authority}/token"),
        revoke_url: None,
        revoke_with_bearer: false,
        device_auth_url: Some(format!("{authority}/devicecode")),
        scopes: vec!["Files.ReadWrite.All".into(), "offline_access".into()],
        redirect_port: None,
        extra_auth_params: vec![],
    }
}

pub struct Harness {
    pub emu: GraphEmulator,
    pub dir: tempfile::TempDir,
    pub vault: Arc<TokenVault>,
    pub tokens: Arc<TokenSource>,
    pub provider: OneDriveProvider,
}

/// An emulator and a provider logged in without the browser dance.
pub fn harness(emu_cfg: GraphConfig, tweak: impl FnOnce(&mut OneDriveConfig)) -> Harness {
    let emu = GraphEmulator::start(emu_cfg);
    let dir = tempfile::tempdir().unwrap();
    let vault = Arc::new(TokenVault::open(&dir.path().join("accounts")).unwrap());
    let account = AccountId::new("onedrive", "test").unwrap();
    let (access, refresh) = emu.issue_tokens();
    let mut t = StoredTokens {
        access_token: Some(Secret::new(access)),
        refresh_token: Some(Secret::new(refresh)),
        ..Default::default()
    };
    t.set_expires_in(Some(emu.config().access_token_lifetime));
    vault.save(&account, &t).unwrap();
    let tokens = Arc::new(
        TokenSource::new(vault.clone(), account, &oauth_config(&emu))
            .unwrap()
            .with_refresh_margin(Duration::ZERO),
    );
    let mut cfg = OneDriveConfig {
        api_base: emu.api_base(),
        retry_base_delay_ms: 10,
        max_requests_per_second: 0.0,
        ..OneDriveConfig::default()
    };
    tweak(&mut cfg);
    let provider = OneDriveProvider::new(cfg, tokens.clone()).unwrap();
    Harness {
        emu,
        dir,
        vault,
        tokens,
        provider,
    }
}
