//! Accounts against the Drive emulator's OAuth endpoints: loopback login with PKCE and state,
//! the paste and device fallbacks, the encrypted vault, refresh, revocation and logout.

#[path = "support/drive_emulator.rs"]
mod drive_emulator;
#[path = "support/drive_harness.rs"]
mod drive_harness;
#[path = "support/emu/mod.rs"]
mod emu;

use std::os::unix::fs::PermissionsExt;
use std::sync::Arc;
use std::time::Duration;

use cloudmount::accounts::{
    login_device, login_paste, logout, AccountError, AccountId, BearerTokens, OAuthClientConfig,
    PendingLogin, TokenSource, TokenVault,
};
use drive_emulator::{DriveEmulator, EmulatorConfig};
use drive_harness::{browser_login, oauth_config, redirect_location};

fn mode(p: &std::path::Path) -> u32 {
    std::fs::metadata(p).unwrap().permissions().mode() & 0o777
}

#[tokio::test]
async fn loopback_login_stores_encrypted_tokens() {
    let emu = DriveEmulator::start(EmulatorConfig::default()).await;
    let tokens = browser_login(&emu).await;
    let access = tokens.access_token.clone().unwrap();
    let refresh = tokens.refresh_token.clone().unwrap();
    assert!(emu.refresh_token_valid(refresh.expose()));
    assert_eq!(tokens.scopes, vec!["https://www.googleapis.com/auth/drive"]);
    assert_eq!(emu.stats().token_grants, 1);

    let dir = tempfile::tempdir().unwrap();
    let vdir = dir.path().join("accounts");
    let vault = TokenVault::open(&vdir).unwrap();
    let account = AccountId::new("gdrive", "me").unwrap();
    vault.save(&account, &tokens).unwrap();
    let path = vault.path_for(&account);
    let raw = std::fs::read(&path).unwrap();
    for secret in [access.expose(), refresh.expose()] {
        assert!(
            !raw.windows(secret.len()).any(|w| w == secret.as_bytes()),
            "token in clear in the vault file"
        );
    }
    assert_eq!(mode(&path), 0o600);
    assert_eq!(mode(&vdir.join("vault.key")), 0o600);
    assert_eq!(mode(&vdir), 0o700);
    assert_eq!(vault.load(&account).unwrap().unwrap(), tokens);
    // Debug output never shows tokens.
    let dbg = format!("{tokens:?}");
    assert!(!dbg.contains(access.expose()) && !dbg.contains(refresh.expose()));

    // A world-readable token file is refused rather than used.
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
    assert!(matches!(vault.load(&account), Err(AccountError::Vault(_))));
}

#[tokio::test]
async fn authorization_url_carries_pkce_and_state() {
    let emu = DriveEmulator::start(EmulatorConfig::default()).await;
    let pending = PendingLogin::new(&oauth_config(&emu), "http://127.0.0.1:9/").unwrap();
    let url = reqwest::Url::parse(pending.auth_url()).unwrap();
    let q: std::collections::HashMap<_, _> = url.query_pairs().into_owned().collect();
    assert_eq!(q["code_challenge_method"], "S256");
    assert_eq!(q["code_challenge"].len(), 43);
    assert!(q["state"].len() >= 16);
    assert_eq!(q["access_type"], "offline");
    assert_eq!(q["response_type"], "code");
}

#[tokio::test]
async fn tampered_state_is_refused() {
    let emu = DriveEmulator::start(EmulatorConfig::default()).await;
    let cfg = oauth_config(&emu);
    let res = cloudmount::accounts::login_loopback(&cfg, &Default::default(), |url| async move {
        let mut loc = redirect_location(&url).await;
        let pairs: Vec<(String, String)> = loc
            .query_pairs()
            .into_owned()
            .map(|(k, v)| {
                if k == "state" {
                    (k, "forged".into())
                } else {
                    (k, v)
                }
            })
            .collect();
        loc.query_pairs_mut().clear().extend_pairs(pairs);
        let _ = reqwest::get(loc).await;
    })
    .await;
    assert_eq!(res.unwrap_err(), AccountError::StateMismatch);
    assert_eq!(emu.stats().token_grants, 0);
}

#[tokio::test]
async fn code_needs_its_own_pkce_verifier() {
    let emu = DriveEmulator::start(EmulatorConfig::default()).await;
    let cfg = oauth_config(&emu);
    let a = PendingLogin::new(&cfg, "http://127.0.0.1:9/").unwrap();
    let b = PendingLogin::new(&cfg, "http://127.0.0.1:9/").unwrap();
    let code_a = redirect_location(a.auth_url())
        .await
        .query_pairs()
        .find(|(k, _)| k == "code")
        .unwrap()
        .1
        .into_owned();
    let state_b = reqwest::Url::parse(b.auth_url())
        .unwrap()
        .query_pairs()
        .find(|(k, _)| k == "state")
        .unwrap()
        .1
        .into_owned();
    // Code of A with the verifier of B: the emulator's S256 check fails.
    let err = b.finish(code_a, &state_b).await.unwrap_err();
    assert!(
        matches!(&err, AccountError::Denied(m) if m.contains("invalid_grant")),
        "{err:?}"
    );
}

#[tokio::test]
async fn paste_fallback_logs_in() {
    let emu = DriveEmulator::start(EmulatorConfig::default()).await;
    let tokens = login_paste(&oauth_config(&emu), |url| async move {
        // The browser cannot reach the loopback address; the user copies the URL.
        redirect_location(&url).await.to_string()
    })
    .await
    .unwrap();
    assert!(tokens.refresh_token.is_some());
}

#[tokio::test]
async fn device_flow_where_allowed() {
    let emu = Arc::new(DriveEmulator::start(EmulatorConfig::default()).await);
    let mut cfg = oauth_config(&emu);
    cfg.device_auth_url = Some(emu.device_url());
    // Google refuses the device grant for the full Drive scope.
    let err = login_device(&cfg, |_| {}).await.unwrap_err();
    assert!(
        matches!(&err, AccountError::Denied(m) if m.contains("invalid_scope")),
        "{err:?}"
    );

    cfg.scopes = vec!["https://www.googleapis.com/auth/drive.file".into()];
    let emu2 = emu.clone();
    let tokens = login_device(&cfg, move |p| {
        assert_eq!(p.verification_uri, "https://www.google.com/device");
        emu2.approve_device(&p.user_code);
    })
    .await
    .unwrap();
    assert!(tokens.refresh_token.is_some());

    // Without a device endpoint configured: a clear configuration error.
    let plain: OAuthClientConfig = oauth_config(&emu);
    assert!(matches!(
        login_device(&plain, |_| {}).await,
        Err(AccountError::Config(_))
    ));
}

async fn logged_in(emu: &DriveEmulator) -> (tempfile::TempDir, Arc<TokenVault>, AccountId) {
    let tokens = browser_login(emu).await;
    let dir = tempfile::tempdir().unwrap();
    let vault = Arc::new(TokenVault::open(dir.path()).unwrap());
    let account = AccountId::new("gdrive", "work").unwrap();
    vault.save(&account, &tokens).unwrap();
    (dir, vault, account)
}

#[tokio::test]
async fn refresh_rotation_revocation_and_relogin() {
    let emu = DriveEmulator::start(EmulatorConfig {
        rotate_refresh_tokens: true,
        ..Default::default()
    })
    .await;
    let (_dir, vault, account) = logged_in(&emu).await;
    let ts = TokenSource::new(vault.clone(), account.clone(), &oauth_config(&emu)).unwrap();
    let first = ts.access_token().await.unwrap();
    let old_refresh = vault
        .load(&account)
        .unwrap()
        .unwrap()
        .refresh_token
        .unwrap();

    // A 401 on the current token refreshes; the rotated refresh token is saved at once.
    let second = ts.token_rejected(&first).await.unwrap();
    assert_ne!(first, second);
    let saved = vault.load(&account).unwrap().unwrap();
    assert_ne!(saved.refresh_token.as_ref().unwrap(), &old_refresh);
    assert!(!emu.refresh_token_valid(old_refresh.expose()));
    // A stale rejection (someone already refreshed) does not refresh again.
    assert_eq!(ts.token_rejected(&first).await.unwrap(), second);
    assert_eq!(emu.stats().refresh_grants, 1);

    // The user revokes access: the next refresh says invalid_grant → log in again.
    emu.revoke_all_refresh_tokens();
    let err = ts.token_rejected(&second).await.unwrap_err();
    assert!(err.needs_login());
    assert_eq!(
        err.fix_command().as_deref(),
        Some("cloudmount login gdrive --name work")
    );
    assert!(err
        .to_string()
        .contains("cloudmount login gdrive --name work"));
    // It sticks (no more token requests) and is persisted.
    let grants = emu.stats().refresh_grants;
    assert!(ts.access_token().await.unwrap_err().needs_login());
    assert_eq!(emu.stats().refresh_grants, grants);
    assert!(vault.load(&account).unwrap().unwrap().needs_login.is_some());

    // A new login (say from the CLI) is picked up without restarting.
    let fresh = browser_login(&emu).await;
    vault.save(&account, &fresh).unwrap();
    assert_eq!(
        ts.access_token().await.unwrap(),
        fresh.access_token.unwrap()
    );
}

#[tokio::test]
async fn expiry_triggers_refresh_before_use() {
    let emu = DriveEmulator::start(EmulatorConfig {
        access_token_lifetime: Duration::from_secs(3),
        ..Default::default()
    })
    .await;
    let (_dir, vault, account) = logged_in(&emu).await;
    // Expiry is stored in whole seconds, rounded down: never later than the real one.
    let ts = TokenSource::new(vault, account, &oauth_config(&emu))
        .unwrap()
        .with_refresh_margin(Duration::from_millis(500));
    let a = ts.access_token().await.unwrap();
    assert_eq!(emu.stats().refresh_grants, 0);
    tokio::time::sleep(Duration::from_millis(3000)).await;
    let b = ts.access_token().await.unwrap();
    assert_ne!(a, b);
    assert_eq!(emu.stats().refresh_grants, 1);
}

#[tokio::test]
async fn logout_revokes_and_forgets() {
    let emu = DriveEmulator::start(EmulatorConfig::default()).await;
    let (_dir, vault, account) = logged_in(&emu).await;
    let refresh = vault
        .load(&account)
        .unwrap()
        .unwrap()
        .refresh_token
        .unwrap();
    logout(&vault, &account, &oauth_config(&emu)).await.unwrap();
    assert!(!emu.refresh_token_valid(refresh.expose()));
    assert_eq!(emu.stats().revocations, 1);
    assert!(vault.load(&account).unwrap().is_none());
    assert!(!vault.path_for(&account).exists());
    let err = TokenSource::new(vault, account, &oauth_config(&emu)).unwrap_err();
    assert!(err.needs_login());
}

#[test]
fn account_names_are_restricted() {
    assert!(AccountId::new("gdrive", "../etc").is_err());
    assert!(AccountId::new("gdrive", "").is_err());
    assert!(AccountId::new("gdrive", "a.b-c_1").is_ok());
}
