//! Shared setup for the Dropbox tests: the Dropbox emulator, a token vault with a
//! logged-in account (tokens issued by the emulator, refreshed through its token
//! endpoint), and a provider wired to both.
#![allow(dead_code)]

use std::sync::Arc;
use std::time::Duration;

use cloudmount::accounts::{
    AccountId, OAuthClientConfig, Secret, StoredTokens, TokenSource, TokenVault,
};
use cloudmount::provider::dropbox::{DropboxConfig as ProviderConfig, DropboxProvider};

use crate::dropbox_emulator::{DropboxConfig, DropboxEmulator};

/// The emulator's OAuth endpoints as the Dropbox client config names them.
pub fn oauth_config(emu: &DropboxEmulator) -> OAuthClientConfig {
    let cfg = emu.config();
    let mut o = OAuthClientConfig::dropbox(cfg.client_id, Some(cfg.client_secret));
    o.auth_url = emu.auth_url();
    o.token_url = emu.token_url();
    o.revoke_url = Some(emu.revoke_url());
    // Any free port: the emulator does not hold redirect URIs to a registered list.
    o.redirect_port = None;
    o
}

/// The provider's settings for the emulator's three hosts.
pub fn provider_config(emu: &DropboxEmulator) -> ProviderConfig {
    ProviderConfig {
        api_base: emu.api_base(),
        content_base: emu.content_base(),
        notify_base: emu.notify_base(),
        retry_base_delay_ms: 10,
        max_requests_per_second: 0.0,
        ..ProviderConfig::default()
    }
}

pub struct Harness {
    pub emu: DropboxEmulator,
    pub dir: tempfile::TempDir,
    pub vault: Arc<TokenVault>,
    pub tokens: Arc<TokenSource>,
    pub provider: DropboxProvider,
}

/// An emulator and a provider logged in without the browser dance.
pub fn harness(emu_cfg: DropboxConfig, tweak: impl FnOnce(&mut ProviderConfig)) -> Harness {
    let emu = DropboxEmulator::start(emu_cfg);
    let dir = tempfile::tempdir().unwrap();
    let vault = Arc::new(TokenVault::open(&dir.path().join("accounts")).unwrap());
    let account = AccountId::new("dropbox", "test").unwrap();
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
    let mut cfg = provider_config(&emu);
    tweak(&mut cfg);
    let provider = DropboxProvider::new(cfg, tokens.clone()).unwrap();
    Harness {
        emu,
        dir,
        vault,
        tokens,
        provider,
    }
}
