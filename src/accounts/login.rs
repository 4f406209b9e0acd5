//! Interactive logins.
//!
//! - [`login_loopback`]: authorization-code flow with PKCE (S256) and a `state` check, the
//!   redirect landing on a one-shot listener at `http://127.0.0.1:PORT/`. This is what Google
//!   wants from desktop apps (the out-of-band flow is blocked since 2022).
//! - [`login_paste`]: the same flow for machines whose browser is elsewhere: the user opens
//!   the URL anywhere, the browser fails to reach the loopback address, and the user pastes
//!   the URL from its address bar back to us.
//! - [`login_device`]: the device authorization grant (RFC 8628), for providers and scopes that
//!   allow it (Google does not for the full Drive scope).

use std::future::Future;
use std::time::Duration;

use oauth2::basic::{BasicErrorResponse, BasicErrorResponseType, BasicTokenResponse};
use oauth2::url::Url;
use oauth2::{
    AuthorizationCode, CsrfToken, HttpClientError, PkceCodeChallenge, PkceCodeVerifier,
    RedirectUrl, RequestTokenError, Scope, StandardDeviceAuthorizationResponse,
    StandardErrorResponse, TokenResponse,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tracing::{debug, info};

use super::{oauth_http_client, AccountError, OAuthClient, OAuthClientConfig, StoredTokens};

#[derive(Debug, Clone)]
pub struct LoginOptions {
    /// How long to wait for the user to finish in the browser.
    pub timeout: Duration,
}

impl Default for LoginOptions {
    fn default() -> Self {
        LoginOptions {
            timeout: Duration::from_secs(300),
        }
    }
}

/// An authorization request sent to the user's browser, waiting for its redirect.
pub struct PendingLogin {
    client: OAuthClient,
    verifier: PkceCodeVerifier,
    state: CsrfToken,
    auth_url: Url,
}

impl std::fmt::Debug for PendingLogin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The URL carries only the challenge and state, but the state is what protects the
        // redirect, so it is not printed either.
        f.debug_struct("PendingLogin").finish_non_exhaustive()
    }
}

impl PendingLogin {
    /// Prepare an authorization URL that redirects to `redirect_uri`.
    pub fn new(cfg: &OAuthClientConfig, redirect_uri: &str) -> Result<Self, AccountError> {
        let client = cfg.client()?.set_redirect_uri(
            RedirectUrl::new(redirect_uri.to_owned())
                .map_err(|e| AccountError::Config(format!("bad redirect URI: {e}")))?,
        );
        let (challenge, verifier) = PkceCodeChallenge::new_random_sha256();
        let mut req = client
            .authorize_url(CsrfToken::new_random)
            .add_scopes(cfg.scopes.iter().cloned().map(Scope::new))
            .set_pkce_challenge(challenge);
        for (k, v) in &cfg.extra_auth_params {
            req = req.add_extra_param(k.clone(), v.clone());
        }
        let (auth_url, state) = req.url();
        Ok(PendingLogin {
            client,
            verifier,
            state,
            auth_url,
        })
    }

    /// The URL the user must open.
    pub fn auth_url(&self) -> &str {
        self.auth_url.as_str()
    }

    /// Finish from the full URL the browser was redirected to.
    pub async fn finish_with_redirect_url(self, url: &str) -> Result<StoredTokens, AccountError> {
        let url = Url::parse(url.trim())
            .map_err(|e| AccountError::Protocol(format!("not a URL: {e}")))?;
        let (code, state) = code_and_state(&url)?;
        self.finish(code, &state).await
    }

    /// Finish with the code and state from the redirect.
    pub async fn finish(self, code: String, state: &str) -> Result<StoredTokens, AccountError> {
        // Constant-time compare is unnecessary here: the state is single-use and the attacker
        // cannot probe it repeatedly.
        if state != self.state.secret() {
            return Err(AccountError::StateMismatch);
        }
        let http = oauth_http_client();
        let resp = self
            .client
            .exchange_code(AuthorizationCode::new(code))
            .set_pkce_verifier(self.verifier)
            .request_async(&http)
            .await
            .map_err(map_token_error)?;
        info!("authorization code exchanged for tokens");
        Ok(tokens_from_response(&resp, None))
    }
}

/// The code and state of a redirect URL, or the error the authorization server put there.
fn code_and_state(url: &Url) -> Result<(String, String), AccountError> {
    let mut code = None;
    let mut state = None;
    let mut error = None;
    let mut description = None;
    for (k, v) in url.query_pairs() {
        match &*k {
            "code" => code = Some(v.into_owned()),
            "state" => state = Some(v.into_owned()),
            "error" => error = Some(v.into_owned()),
            "error_description" => description = Some(v.into_owned()),
            _ => {}
        }
    }
    if let Some(error) = error {
        return Err(AccountError::Denied(match description {
            Some(d) => format!("{error}: {d}"),
            None => error,
        }));
    }
    match (code, state) {
        (Some(c), Some(s)) => Ok((c, s)),
        (_, None) => Err(AccountError::StateMismatch),
        (None, _) => Err(AccountError::Protocol(
            "redirect URL has no authorization code".into(),
        )),
    }
}

pub(crate) fn tokens_from_response(
    resp: &BasicTokenResponse,
    previous_refresh: Option<&super::Secret>,
) -> StoredTokens {
    let mut t = StoredTokens {
        access_token: Some(super::Secret::new(resp.access_token().secret().clone())),
        // A refresh response without a refresh token (Google never rotates) keeps the old one.
        refresh_token: resp
            .refresh_token()
            .map(|r| super::Secret::new(r.secret().clone()))
            .or_else(|| previous_refresh.cloned()),
        scopes: resp
            .scopes()
            .map(|s| s.iter().map(|s| s.to_string()).collect())
            .unwrap_or_default(),
        ..Default::default()
    };
    t.set_expires_in(resp.expires_in());
    t
}

type TokenError = RequestTokenError<HttpClientError<reqwest::Error>, BasicErrorResponse>;

/// Turn an `oauth2` error into ours without ever printing a response body (it could hold
/// tokens) or request details.
pub(crate) fn map_token_error(e: TokenError) -> AccountError {
    match e {
        RequestTokenError::ServerResponse(r) => AccountError::Denied(describe(&r)),
        RequestTokenError::Request(e) => AccountError::Network(http_error_text(&e)),
        RequestTokenError::Parse(_, _) => {
            AccountError::Protocol("token endpoint reply is not a valid token response".into())
        }
        RequestTokenError::Other(s) => AccountError::Protocol(s),
    }
}

/// Whether the token endpoint said the grant (refresh token) is dead.
pub(crate) fn is_invalid_grant(e: &TokenError) -> bool {
    matches!(e, RequestTokenError::ServerResponse(r) if *r.error() == BasicErrorResponseType::InvalidGrant)
}

fn describe<T: oauth2::ErrorResponseType + std::fmt::Display>(
    r: &StandardErrorResponse<T>,
) -> String {
    match r.error_description() {
        Some(d) => format!("{}: {d}", r.error()),
        None => r.error().to_string(),
    }
}

fn http_error_text(e: &HttpClientError<reqwest::Error>) -> String {
    match e {
        // reqwest errors name the URL, never the form body; token endpoints carry no secrets
        // in their URL.
        HttpClientError::Reqwest(e) => e.to_string(),
        other => other.to_string(),
    }
}

/// Log in through the user's browser and a loopback redirect listener.
///
/// `open` gets the authorization URL and must make a browser visit it; it runs concurrently
/// with the listener, so it may also drive the whole browser side itself (tests do that).
pub async fn login_loopback<F, Fut>(
    cfg: &OAuthClientConfig,
    options: &LoginOptions,
    open: F,
) -> Result<StoredTokens, AccountError>
where
    F: FnOnce(String) -> Fut,
    Fut: Future<Output = ()>,
{
    let port = cfg.redirect_port.unwrap_or(0);
    let listener = TcpListener::bind(("127.0.0.1", port))
        .await
        .map_err(|e| AccountError::Config(format!("cannot listen on 127.0.0.1:{port}: {e}")))?;
    let port = listener
        .local_addr()
        .map_err(|e| AccountError::Config(e.to_string()))?
        .port();
    let redirect_uri = format!("http://127.0.0.1:{port}/");
    let pending = PendingLogin::new(cfg, &redirect_uri)?;
    debug!(port, "waiting for the OAuth redirect");
    let url = pending.auth_url().to_owned();
    let wait = tokio::time::timeout(options.timeout, wait_for_redirect(&listener, port));
    let ((), redirect) = tokio::join!(open(url), wait);
    let (code, state) = redirect.map_err(|_| AccountError::Timeout)??;
    pending.finish(code, &state).await
}

/// Accept connections on the loopback listener until one carries the OAuth redirect.
async fn wait_for_redirect(
    listener: &TcpListener,
    port: u16,
) -> Result<(String, String), AccountError> {
    loop {
        let (mut sock, _) = listener
            .accept()
            .await
            .map_err(|e| AccountError::Network(format!("loopback listener: {e}")))?;
        let mut buf = Vec::with_capacity(2048);
        let mut chunk = [0u8; 1024];
        // Read the request head only; browsers send GET without a body.
        let head_ok = loop {
            match tokio::time::timeout(Duration::from_secs(10), sock.read(&mut chunk)).await {
                Ok(Ok(0)) | Ok(Err(_)) | Err(_) => break false,
                Ok(Ok(n)) => {
                    buf.extend_from_slice(&chunk[..n]);
                    if buf.windows(4).any(|w| w == b"\r\n\r\n") {
                        break true;
                    }
                    if buf.len() > 16 * 1024 {
                        break false;
                    }
                }
            }
        };
        if !head_ok {
            continue;
        }
        let head = String::from_utf8_lossy(&buf);
        let target = head
            .lines()
            .next()
            .and_then(|l| l.split_whitespace().nth(1))
            .unwrap_or("/");
        let url = match Url::parse(&format!("http://127.0.0.1:{port}{target}")) {
            Ok(u) => u,
            Err(_) => continue,
        };
        let relevant = url.query_pairs().any(|(k, _)| k == "code" || k == "error");
        if url.path() != "/" || !relevant {
            // favicon.ico and friends.
            let _ = respond(&mut sock, "404 Not Found", "Not found").await;
            continue;
        }
        let result = code_and_state(&url);
        let page = match &result {
            Ok(_) => "cloudmount: login complete. You can close this tab.",
            Err(AccountError::Denied(_)) => "cloudmount: login was refused.",
            Err(_) => "cloudmount: login failed; see the terminal.",
        };
        let status = if result.is_ok() {
            "200 OK"
        } else {
            "400 Bad Request"
        };
        let _ = respond(&mut sock, status, page).await;
        return result;
    }
}

async fn respond(
    sock: &mut tokio::net::TcpStream,
    status: &str,
    text: &str,
) -> std::io::Result<()> {
    let body = format!("<!doctype html><meta charset=utf-8><title>cloudmount</title><p>{text}</p>");
    let msg = format!(
        "HTTP/1.1 {status}\r\nContent-Type: text/html; charset=utf-8\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    sock.write_all(msg.as_bytes()).await?;
    sock.shutdown().await
}

/// The default "open": print the URL, and start a browser when a display is available.
pub async fn system_browser_opener(url: String) {
    eprintln!("Open this URL in a browser to log in:\n\n  {url}\n");
    let has_display =
        std::env::var_os("DISPLAY").is_some() || std::env::var_os("WAYLAND_DISPLAY").is_some();
    if has_display {
        let spawned = tokio::process::Command::new("xdg-open")
            .arg(&url)
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn();
        if let Ok(mut child) = spawned {
            let _ = child.wait().await;
        }
    }
}

/// Log in without a listener: `prompt` shows the URL and returns the redirect URL the user
/// pasted back (the browser cannot load it, which is expected).
pub async fn login_paste<F, Fut>(
    cfg: &OAuthClientConfig,
    prompt: F,
) -> Result<StoredTokens, AccountError>
where
    F: FnOnce(String) -> Fut,
    Fut: Future<Output = String>,
{
    let port = cfg.redirect_port.unwrap_or(1);
    let pending = PendingLogin::new(cfg, &format!("http://127.0.0.1:{port}/"))?;
    let pasted = prompt(pending.auth_url().to_owned()).await;
    pending.finish_with_redirect_url(&pasted).await
}

/// What the user must do to approve a device login.
#[derive(Debug, Clone)]
pub struct DevicePrompt {
    pub verification_uri: String,
    pub verification_uri_complete: Option<String>,
    /// Not a secret worth hiding: it is shown to the user and useless without the device code.
    pub user_code: String,
    pub expires_in: Duration,
}

/// Log in with the device authorization grant (RFC 8628). `show` tells the user where to go;
/// this then polls the token endpoint at the interval the server asks for.
pub async fn login_device<F>(cfg: &OAuthClientConfig, show: F) -> Result<StoredTokens, AccountError>
where
    F: FnOnce(&DevicePrompt),
{
    let client = cfg.client()?;
    let http = oauth_http_client();
    let details: StandardDeviceAuthorizationResponse = client
        .exchange_device_code()
        .map_err(|_| {
            AccountError::Config(
                "this provider has no device authorization endpoint configured (not allowed for these scopes?)"
                    .into(),
            )
        })?
        .add_scopes(cfg.scopes.iter().cloned().map(Scope::new))
        .request_async(&http)
        .await
        .map_err(map_token_error)?;
    show(&DevicePrompt {
        verification_uri: details.verification_uri().to_string(),
        verification_uri_complete: details
            .verification_uri_complete()
            .map(|u| u.secret().clone()),
        user_code: details.user_code().secret().clone(),
        expires_in: details.expires_in(),
    });
    let resp = client
        .exchange_device_access_token(&details)
        .request_async(&http, tokio::time::sleep, None)
        .await
        .map_err(|e| match e {
            RequestTokenError::ServerResponse(r) => {
                AccountError::Denied(match r.error_description() {
                    Some(d) => format!("{}: {d}", r.error()),
                    None => r.error().to_string(),
                })
            }
            RequestTokenError::Request(e) => AccountError::Network(http_error_text(&e)),
            RequestTokenError::Parse(_, _) => {
                AccountError::Protocol("token endpoint reply is not a valid token response".into())
            }
            RequestTokenError::Other(s) => AccountError::Protocol(s),
        })?;
    info!("device login approved");
    Ok(tokens_from_response(&resp, None))
}
