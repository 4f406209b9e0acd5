//! Shared setup for the Confluence and Jira tests: the Atlassian emulator, the API token in
//! a 0600 file, an OAuth login in a token vault (tokens issued by the emulator, refreshed
//! through its token endpoint), and providers wired to them through their settings.
#![allow(dead_code)]

use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use cloudmount::accounts::{
    AccountId, BearerTokens, OAuthClientConfig, Secret, StoredTokens, TokenSource, TokenVault,
};
use cloudmount::provider::atlassian::confluence::{ConfluenceConfig, ConfluenceProvider};
use cloudmount::provider::atlassian::jira::{JiraConfig, JiraProvider};

use crate::atlassian_emulator::AtlassianEmulator;

/// The API token in a file only its owner may read.
pub fn token_file(emu: &AtlassianEmulator, dir: &std::path::Path) -> PathBuf {
    let path = dir.join("atlassian-token");
    std::fs::write(&path, &emu.config().api_token).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
    path
}

/// Settings for API-token sign-in on the emulated site, quick retries; `extra` is TOML
/// added to them.
pub fn token_settings(emu: &AtlassianEmulator, dir: &std::path::Path, extra: &str) -> toml::Table {
    let text = format!(
        "site = \"{}\"\nemail = \"{}\"\ntoken_file = \"{}\"\ngateway_url = \"{}\"\n\
         retry_base_delay_ms = 10\nmax_requests_per_second = 0.0\n{extra}",
        emu.site_url(),
        emu.config().email,
        token_file(emu, dir).display(),
        emu.gateway_url(),
    );
    toml::from_str(&text).unwrap()
}

/// Settings for OAuth sign-in (the gateway, the cloud id found by the provider).
pub fn oauth_settings(emu: &AtlassianEmulator, extra: &str) -> toml::Table {
    let text = format!(
        "site = \"{}\"\nauth = \"oauth\"\ngateway_url = \"{}\"\n\
         retry_base_delay_ms = 10\nmax_requests_per_second = 0.0\n{extra}",
        emu.site_url(),
        emu.gateway_url(),
    );
    toml::from_str(&text).unwrap()
}

pub fn confluence(
    settings: &toml::Table,
    tokens: Option<Arc<dyn BearerTokens>>,
) -> ConfluenceProvider {
    ConfluenceProvider::new(ConfluenceConfig::from_settings(settings).unwrap(), tokens).unwrap()
}

pub fn jira(settings: &toml::Table, tokens: Option<Arc<dyn BearerTokens>>) -> JiraProvider {
    JiraProvider::new(JiraConfig::from_settings(settings).unwrap(), tokens).unwrap()
}

/// The emulator's OAuth endpoints as the client config of `product` ("confluence" or
/// "jira": their scopes).
pub fn oauth_config(emu: &AtlassianEmulator, product: &str) -> OAuthClientConfig {
    let cfg = emu.config();
    let secret = Some(cfg.client_secret.clone());
    let mut o = match product {
        "jira" => OAuthClientConfig::jira(cfg.client_id.clone(), secret),
        _ => OAuthClientConfig::confluence(cfg.client_id.clone(), secret),
    };
    o.auth_url = emu.auth_url();
    o.token_url = emu.token_url();
    o.redirect_port = None;
    o
}

/// A vault with an account of `product` logged in with that product's scopes (as after
/// `cloudmount login`), and its token source.
pub fn logged_in(
    emu: &AtlassianEmulator,
    dir: &std::path::Path,
    product: &str,
) -> (Arc<TokenVault>, Arc<TokenSource>) {
    let vault = Arc::new(TokenVault::open(&dir.join("accounts")).unwrap());
    let account = AccountId::new(product, "test").unwrap();
    let oauth = oauth_config(emu, product);
    let (access, refresh) = emu.issue_tokens(&oauth.scopes.join(" "));
    let mut t = StoredTokens {
        access_token: Some(Secret::new(access)),
        refresh_token: Some(Secret::new(refresh)),
        ..Default::default()
    };
    t.set_expires_in(Some(emu.config().access_token_lifetime));
    vault.save(&account, &t).unwrap();
    let tokens = Arc::new(
        TokenSource::new(vault.clone(), account, &oauth)
            .unwrap()
            .with_refresh_margin(Duration::ZERO),
    );
    (vault, tokens)
}

/// A one-paragraph ADF document.
pub fn paragraph(text: &str) -> serde_json::Value {
    serde_json::json!({
        "type": "doc",
        "version": 1,
        "content": [{"type": "paragraph", "content": [{"type": "text", "text": text}]}]
    })
}

/// Deterministic bytes that look random, so a read from a wrong offset shows.
pub fn pattern(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect()
}

/// Plays the browser: follows the authorization URL to where it redirects (the loopback
/// address with the code).
pub async fn redirect_location(url: &str) -> String {
    let client = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let resp = client.get(url).send().await.unwrap();
    assert_eq!(resp.status(), 302, "authorize endpoint");
    resp.headers()["location"].to_str().unwrap().to_owned()
}
