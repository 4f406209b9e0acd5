//! Accounts of OAuth2 cloud providers: logging in, keeping tokens, handing out access tokens.
//!
//! Provider-neutral: Google Drive uses it today, OneDrive and Dropbox can reuse it with their
//! own [`OAuthClientConfig`]. The pieces:
//! - [`login`]: authorization-code flow with PKCE (S256) on a loopback redirect listener, a
//!   "paste the redirect URL" fallback, and the device authorization grant (RFC 8628);
//! - [`vault`]: tokens encrypted at rest (ChaCha20-Poly1305) under a random key file;
//! - [`token_source`]: valid access tokens on demand, refreshing before expiry and after a 401,
//!   and turning a dead refresh token into a "log in again" error;
//! - [`logout`]: revoke at the provider and forget locally.
//!
//! Secrets (tokens, authorization codes, PKCE verifiers, client secrets) never reach logs:
//! they are held in [`Secret`] (from [`crate::secrets`]), whose `Debug`/`Display` print
//! `<redacted>`. This module imports nothing of the providers: they build on it, not the
//! other way round.

pub mod connection;
pub mod login;
pub mod token_source;
pub mod vault;

use std::fmt;

use oauth2::basic::BasicClient;
use oauth2::{
    AuthType, AuthUrl, ClientId, ClientSecret, DeviceAuthorizationUrl, EndpointMaybeSet,
    EndpointNotSet, EndpointSet, TokenUrl,
};
use serde::{Deserialize, Serialize};

pub use login::{
    login_device, login_loopback, login_paste, system_browser_opener, DevicePrompt, LoginOptions,
    PendingLogin,
};
pub use token_source::{BearerTokens, StaticToken, TokenSource};
pub use vault::{StoredTokens, TokenVault};

/// Kept here too: account code and its users have always found it under `accounts`.
pub use crate::secrets::Secret;

/// Which account: the provider kind ("gdrive", "onedrive", ...) and the user's name for it.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct AccountId {
    pub provider: String,
    pub name: String,
}

impl AccountId {
    /// Both parts end up in a file name, so they are restricted to `[A-Za-z0-9._-]`.
    pub fn new(provider: &str, name: &str) -> Result<Self, AccountError> {
        for part in [provider, name] {
            let ok = !part.is_empty()
                && part.len() <= 64
                && !part.starts_with('.')
                && part
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'));
            if !ok {
                return Err(AccountError::InvalidName(part.to_owned()));
            }
        }
        Ok(AccountId {
            provider: provider.to_owned(),
            name: name.to_owned(),
        })
    }

    /// The command that fixes an account whose login is no longer valid.
    pub fn login_command(&self) -> String {
        format!("cloudmount login {} --name {}", self.provider, self.name)
    }
}

impl fmt::Display for AccountId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.provider, self.name)
    }
}

/// Everything needed to talk OAuth2 to one provider. Every endpoint is configurable so tests
/// can point them at an emulator.
#[derive(Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OAuthClientConfig {
    pub client_id: String,
    /// Desktop ("installed") apps get a secret that is not really secret; still never logged.
    #[serde(default)]
    pub client_secret: Option<Secret>,
    pub auth_url: String,
    pub token_url: String,
    #[serde(default)]
    pub revoke_url: Option<String>,
    /// How `revoke_url` is called: `false` is RFC 7009 (the token in a form), `true` is
    /// Dropbox's `auth/token/revoke` (a valid access token in `Authorization`, no body;
    /// it revokes the refresh token behind it too).
    #[serde(default)]
    pub revoke_with_bearer: bool,
    /// Set only for providers that allow the device grant for the scopes requested.
    #[serde(default)]
    pub device_auth_url: Option<String>,
    pub scopes: Vec<String>,
    /// Fixed port for the loopback redirect listener; `None` picks a free one.
    #[serde(default)]
    pub redirect_port: Option<u16>,
    /// Provider-specific extra authorization parameters (Google: `access_type=offline`,
    /// `prompt=consent`, without which no refresh token is issued).
    #[serde(default)]
    pub extra_auth_params: Vec<(String, String)>,
}

impl fmt::Debug for OAuthClientConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("OAuthClientConfig")
            .field("client_id", &self.client_id)
            .field("client_secret", &self.client_secret)
            .field("auth_url", &self.auth_url)
            .field("token_url", &self.token_url)
            .field("revoke_url", &self.revoke_url)
            .field("revoke_with_bearer", &self.revoke_with_bearer)
            .field("device_auth_url", &self.device_auth_url)
            .field("scopes", &self.scopes)
            .field("redirect_port", &self.redirect_port)
            .finish()
    }
}

/// The full-Drive scope a mount needs.
pub const GOOGLE_DRIVE_SCOPE: &str = "https://www.googleapis.com/auth/drive";
/// What a OneDrive / SharePoint mount asks Microsoft for: read and write every file the
/// user can reach, find the SharePoint sites they follow (`Sites.Read.All`; personal
/// accounts consent to it too and simply have no sites), and a refresh token
/// (`offline_access`).
pub const MICROSOFT_SCOPES: [&str; 3] = ["Files.ReadWrite.All", "Sites.Read.All", "offline_access"];
/// IMAP with XOAUTH2 at Gmail: the one scope Google has for IMAP (full mail access).
pub const GOOGLE_MAIL_SCOPE: &str = "https://mail.google.com/";
/// IMAP with XOAUTH2 at Exchange Online / Outlook.com, and a refresh token.
pub const MICROSOFT_IMAP_SCOPES: [&str; 2] = [
    "https://outlook.office.com/IMAP.AccessAsUser.All",
    "offline_access",
];
/// What a Dropbox mount asks for (a scoped app with these permissions ticked).
pub const DROPBOX_SCOPES: [&str; 5] = [
    "account_info.read",
    "files.metadata.read",
    "files.metadata.write",
    "files.content.read",
    "files.content.write",
];
/// The loopback port of the redirect URI registered for a Dropbox app
/// (`http://127.0.0.1:53682/`): Dropbox matches redirect URIs exactly.
pub const DROPBOX_REDIRECT_PORT: u16 = 53682;
/// Atlassian's authorization server (OAuth 2.0 3LO). Sites are reached through the API
/// gateway by cloud id (`https://api.atlassian.com/ex/{product}/{cloudId}`); refresh tokens
/// rotate, and refreshing needs the app's client secret
/// (developer.atlassian.com/cloud/oauth/getting-started/refresh-tokens).
pub const ATLASSIAN_AUTH_URL: &str = "https://auth.atlassian.com/authorize";
pub const ATLASSIAN_TOKEN_URL: &str = "https://auth.atlassian.com/oauth/token";
/// What a Confluence mount reads: spaces, pages, the page tree, folders, attachments
/// (Confluence's granular scopes), and a refresh token.
pub const CONFLUENCE_SCOPES: [&str; 6] = [
    "read:space:confluence",
    "read:page:confluence",
    "read:hierarchical-content:confluence",
    "read:folder:confluence",
    "read:attachment:confluence",
    "offline_access",
];
/// What a Jira mount reads: projects, issues and their attachments (`read:jira-work`),
/// and a refresh token.
pub const JIRA_SCOPES: [&str; 2] = ["read:jira-work", "offline_access"];
/// Any work, school or personal Microsoft account; a tenant id or `organizations` /
/// `consumers` go into `auth_url` / `token_url` / `device_auth_url` of the settings.
pub const MICROSOFT_AUTHORITY: &str = "https://login.microsoftonline.com/common/oauth2/v2.0";

impl OAuthClientConfig {
    /// Google's endpoints with the full Drive scope. Google does not allow the device grant
    /// for that scope, so `device_auth_url` stays unset (set it yourself together with the
    /// `drive.file` scope if that is enough).
    pub fn google(client_id: impl Into<String>, client_secret: Option<String>) -> Self {
        OAuthClientConfig {
            client_id: client_id.into(),
            client_secret: client_secret.map(Secret::new),
            auth_url: "https://accounts.google.com/o/oauth2/v2/auth".into(),
            token_url: "https://oauth2.googleapis.com/token".into(),
            revoke_url: Some("https://oauth2.googleapis.com/revoke".into()),
            revoke_with_bearer: false,
            device_auth_url: None,
            scopes: vec![GOOGLE_DRIVE_SCOPE.into()],
            redirect_port: None,
            extra_auth_params: vec![
                ("access_type".into(), "offline".into()),
                ("prompt".into(), "consent".into()),
            ],
        }
    }

    /// Google's endpoints for reading mail over IMAP (XOAUTH2).
    pub fn google_mail(client_id: impl Into<String>, client_secret: Option<String>) -> Self {
        OAuthClientConfig {
            scopes: vec![GOOGLE_MAIL_SCOPE.into()],
            ..Self::google(client_id, client_secret)
        }
    }

    /// Microsoft's endpoints for reading mail over IMAP (XOAUTH2).
    pub fn microsoft_mail(client_id: impl Into<String>, client_secret: Option<String>) -> Self {
        OAuthClientConfig {
            scopes: MICROSOFT_IMAP_SCOPES
                .iter()
                .map(|s| s.to_string())
                .collect(),
            ..Self::microsoft(client_id, client_secret)
        }
    }

    /// The Microsoft identity platform (OneDrive, SharePoint): a public client (no secret)
    /// registered as "Mobile and desktop" with a loopback redirect and public client flows
    /// allowed, so both the browser and the device code flow work. Microsoft has no
    /// endpoint to revoke a refresh token: `logout` forgets it.
    pub fn microsoft(client_id: impl Into<String>, client_secret: Option<String>) -> Self {
        OAuthClientConfig {
            client_id: client_id.into(),
            client_secret: client_secret.map(Secret::new),
            auth_url: format!("{MICROSOFT_AUTHORITY}/authorize"),
            token_url: format!("{MICROSOFT_AUTHORITY}/token"),
            revoke_url: None,
            revoke_with_bearer: false,
            device_auth_url: Some(format!("{MICROSOFT_AUTHORITY}/devicecode")),
            scopes: MICROSOFT_SCOPES.iter().map(|s| s.to_string()).collect(),
            redirect_port: None,
            extra_auth_params: vec![],
        }
    }

    /// Dropbox: the authorization code grant with PKCE and `token_access_type=offline` (a
    /// refresh token that does not rotate; access tokens live about 4 h). Dropbox has no
    /// device grant; a machine without a browser uses `login --paste`. Redirect URIs must be
    /// registered exactly, port included: the app's settings list
    /// `http://127.0.0.1:53682/`. `logout` revokes through `auth/token/revoke`.
    pub fn dropbox(client_id: impl Into<String>, client_secret: Option<String>) -> Self {
        OAuthClientConfig {
            client_id: client_id.into(),
            client_secret: client_secret.map(Secret::new),
            auth_url: "https://www.dropbox.com/oauth2/authorize".into(),
            token_url: "https://api.dropboxapi.com/oauth2/token".into(),
            revoke_url: Some("https://api.dropboxapi.com/2/auth/token/revoke".into()),
            revoke_with_bearer: true,
            device_auth_url: None,
            scopes: DROPBOX_SCOPES.iter().map(|s| s.to_string()).collect(),
            redirect_port: Some(DROPBOX_REDIRECT_PORT),
            extra_auth_params: vec![("token_access_type".into(), "offline".into())],
        }
    }

    /// Atlassian Cloud (Confluence or Jira) with these scopes: the code grant with the
    /// `api.atlassian.com` audience and `prompt=consent` Atlassian asks for; no device
    /// grant and no revocation endpoint (`logout` forgets the tokens).
    fn atlassian(client_id: String, client_secret: Option<String>, scopes: &[&str]) -> Self {
        OAuthClientConfig {
            client_id,
            client_secret: client_secret.map(Secret::new),
            auth_url: ATLASSIAN_AUTH_URL.into(),
            token_url: ATLASSIAN_TOKEN_URL.into(),
            revoke_url: None,
            revoke_with_bearer: false,
            device_auth_url: None,
            scopes: scopes.iter().map(|s| s.to_string()).collect(),
            redirect_port: None,
            extra_auth_params: vec![
                ("audience".into(), "api.atlassian.com".into()),
                ("prompt".into(), "consent".into()),
            ],
        }
    }

    /// Confluence Cloud through OAuth 2.0 (3LO).
    pub fn confluence(client_id: impl Into<String>, client_secret: Option<String>) -> Self {
        Self::atlassian(client_id.into(), client_secret, &CONFLUENCE_SCOPES)
    }

    /// Jira Cloud through OAuth 2.0 (3LO).
    pub fn jira(client_id: impl Into<String>, client_secret: Option<String>) -> Self {
        Self::atlassian(client_id.into(), client_secret, &JIRA_SCOPES)
    }

    /// The `oauth2` client for these endpoints.
    pub(crate) fn client(&self) -> Result<OAuthClient, AccountError> {
        let bad = |what: &str, e: oauth2::url::ParseError| {
            AccountError::Config(format!("bad {what} URL: {e}"))
        };
        let mut client = BasicClient::new(ClientId::new(self.client_id.clone()))
            .set_auth_uri(AuthUrl::new(self.auth_url.clone()).map_err(|e| bad("auth", e))?)
            .set_token_uri(TokenUrl::new(self.token_url.clone()).map_err(|e| bad("token", e))?)
            .set_device_authorization_url_option(
                self.device_auth_url
                    .clone()
                    .map(DeviceAuthorizationUrl::new)
                    .transpose()
                    .map_err(|e| bad("device authorization", e))?,
            )
            // Google (and most providers for installed apps) expect the credentials in the
            // form body rather than HTTP Basic.
            .set_auth_type(AuthType::RequestBody);
        if let Some(secret) = &self.client_secret {
            client = client.set_client_secret(ClientSecret::new(secret.expose().to_owned()));
        }
        Ok(client)
    }
}

pub(crate) type OAuthClient =
    BasicClient<EndpointSet, EndpointMaybeSet, EndpointNotSet, EndpointNotSet, EndpointSet>;

/// An HTTP client for token endpoints. Redirects are refused: following them with a form body
/// full of secrets to wherever a server points is how credentials leak (SSRF).
pub(crate) fn oauth_http_client() -> reqwest::Client {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .user_agent(concat!("cloudmount/", env!("CARGO_PKG_VERSION")))
        .connect_timeout(std::time::Duration::from_secs(30))
        .timeout(std::time::Duration::from_secs(60))
        .build()
        .expect("static reqwest configuration")
}

#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum AccountError {
    /// The stored login is no longer usable (refresh token revoked or expired): the user must
    /// log in again. Shown by the daemon as an auth error with the fix command.
    #[error("account {account} needs a new login ({reason}); run `{}`", account.login_command())]
    NeedsLogin { account: AccountId, reason: String },
    #[error("account {account} is not logged in; run `{}`", account.login_command())]
    NotLoggedIn { account: AccountId },
    #[error("invalid account name {0:?}: use letters, digits, '.', '_' and '-'")]
    InvalidName(String),
    #[error("OAuth configuration: {0}")]
    Config(String),
    /// The authorization server refused (access_denied, invalid_scope, ...).
    #[error("authorization refused: {0}")]
    Denied(String),
    #[error("login aborted: the redirect's state did not match (possible CSRF)")]
    StateMismatch,
    #[error("login timed out")]
    Timeout,
    /// Network trouble or a 5xx: worth retrying.
    #[error("network error talking to the authorization server: {0}")]
    Network(String),
    #[error("unexpected reply from the authorization server: {0}")]
    Protocol(String),
    #[error("token vault: {0}")]
    Vault(String),
}

impl AccountError {
    /// Whether the daemon should show this as "auth error, log in again".
    pub fn needs_login(&self) -> bool {
        matches!(
            self,
            AccountError::NeedsLogin { .. } | AccountError::NotLoggedIn { .. }
        )
    }

    /// The command that fixes it, when there is one.
    pub fn fix_command(&self) -> Option<String> {
        match self {
            AccountError::NeedsLogin { account, .. } | AccountError::NotLoggedIn { account } => {
                Some(account.login_command())
            }
            _ => None,
        }
    }
}

/// Revoke the account's tokens at the provider (when it has a revocation endpoint) and delete
/// them locally. The local copy is deleted even if revocation fails, since a user logging out
/// wants the credentials gone from this machine; the revocation error is still returned.
pub async fn logout(
    vault: &TokenVault,
    account: &AccountId,
    oauth: &OAuthClientConfig,
) -> Result<(), AccountError> {
    let stored = vault.load(account)?;
    let mut result = Ok(());
    if let (Some(_), Some(url), true) = (&stored, &oauth.revoke_url, oauth.revoke_with_bearer) {
        result = revoke_with_bearer(vault, account, oauth, url).await;
    } else if let (Some(tokens), Some(url)) = (&stored, &oauth.revoke_url) {
        // Revoking the refresh token also invalidates the access tokens minted from it
        // (Google documents this); fall back to the access token when there is no refresh.
        let token = match (&tokens.refresh_token, &tokens.access_token) {
            (Some(r), _) => Some((r, "refresh_token")),
            (None, Some(a)) => Some((a, "access_token")),
            _ => None,
        };
        if let Some((token, hint)) = token {
            result = revoke(oauth, url, token, hint).await;
        }
    }
    vault.delete(account)?;
    tracing::info!(%account, "logged out");
    result
}

/// Dropbox's revocation: a valid access token (refreshed first if it expired) sent to the
/// endpoint, which revokes it and the refresh token behind it. A login the provider no
/// longer honours is revoked already.
async fn revoke_with_bearer(
    vault: &TokenVault,
    account: &AccountId,
    oauth: &OAuthClientConfig,
    url: &str,
) -> Result<(), AccountError> {
    // The same store opened again: the token source needs one of its own.
    let own = std::sync::Arc::new(TokenVault::open(vault.dir())?);
    let source = TokenSource::new(own, account.clone(), oauth)?;
    let token = match source.access_token().await {
        Ok(t) => t,
        Err(AccountError::NeedsLogin { .. }) => return Ok(()),
        Err(e) => return Err(e),
    };
    let send = |token: Secret| async move {
        oauth_http_client()
            .post(url)
            .bearer_auth(token.expose())
            .send()
            .await
            .map_err(|e| AccountError::Network(e.to_string()))
    };
    let mut resp = send(token.clone()).await?;
    if resp.status().as_u16() == 401 {
        // Expired after all (a stored expiry can be wrong): with a fresh token, once. A
        // refresh the provider refuses means the login is revoked already.
        match source.token_rejected(&token).await {
            Ok(fresh) => resp = send(fresh).await?,
            Err(AccountError::NeedsLogin { .. }) => return Ok(()),
            Err(e) => return Err(e),
        }
    }
    let status = resp.status();
    match status.as_u16() {
        200..=299 => Ok(()),
        // Refused with a token just issued: the login behind it is gone, which is the goal.
        401 => Ok(()),
        500..=599 => Err(AccountError::Network(format!(
            "revocation endpoint: HTTP {status}"
        ))),
        _ => Err(AccountError::Protocol(format!(
            "revocation endpoint: HTTP {status}"
        ))),
    }
}

/// RFC 7009 revocation. Written out rather than through `oauth2::Client::revoke_token`,
/// which insists on an https endpoint and so cannot be tested against a loopback emulator.
async fn revoke(
    oauth: &OAuthClientConfig,
    url: &str,
    token: &Secret,
    hint: &str,
) -> Result<(), AccountError> {
    let mut form = vec![
        ("token", token.expose()),
        ("token_type_hint", hint),
        ("client_id", oauth.client_id.as_str()),
    ];
    if let Some(s) = &oauth.client_secret {
        form.push(("client_secret", s.expose()));
    }
    let resp = oauth_http_client()
        .post(url)
        .form(&form)
        .send()
        .await
        .map_err(|e| AccountError::Network(e.to_string()))?;
    let status = resp.status();
    if status.is_success() {
        return Ok(());
    }
    #[derive(Deserialize)]
    struct OAuthErr {
        error: String,
    }
    let body = resp.bytes().await.unwrap_or_default();
    match serde_json::from_slice::<OAuthErr>(&body) {
        // Already revoked or expired: the goal is reached.
        Ok(e) if e.error == "invalid_token" => Ok(()),
        Ok(e) => Err(AccountError::Denied(format!(
            "revocation refused: {}",
            e.error
        ))),
        Err(_) if status.is_server_error() => Err(AccountError::Network(format!(
            "revocation endpoint: HTTP {status}"
        ))),
        Err(_) => Err(AccountError::Protocol(format!(
            "revocation endpoint: HTTP {status}"
        ))),
    }
}
