//! Valid access tokens on demand.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use oauth2::RefreshToken;
use tokio::sync::Mutex;
use tracing::{debug, info, warn};

use super::login::{is_invalid_grant, map_token_error, tokens_from_response};
use super::{
    oauth_http_client, AccountError, AccountId, OAuthClient, OAuthClientConfig, Secret,
    StoredTokens, TokenVault,
};

/// Something that hands out bearer tokens to an API client.
#[async_trait]
pub trait BearerTokens: Send + Sync + 'static {
    /// A token believed to be valid now.
    async fn access_token(&self) -> Result<Secret, AccountError>;

    /// The server answered 401 to `rejected`: return a new token. Concurrent callers that saw
    /// the same rejected token share a single refresh.
    async fn token_rejected(&self, rejected: &Secret) -> Result<Secret, AccountError>;
}

/// A fixed token (for tools and tests that got one elsewhere). A 401 is final.
pub struct StaticToken {
    token: Secret,
    account: AccountId,
}

impl StaticToken {
    pub fn new(account: AccountId, token: Secret) -> Self {
        StaticToken { token, account }
    }
}

#[async_trait]
impl BearerTokens for StaticToken {
    async fn access_token(&self) -> Result<Secret, AccountError> {
        Ok(self.token.clone())
    }

    async fn token_rejected(&self, _rejected: &Secret) -> Result<Secret, AccountError> {
        Err(AccountError::NeedsLogin {
            account: self.account.clone(),
            reason: "access token rejected".into(),
        })
    }
}

/// Access tokens of one account, refreshed from the vault's refresh token as needed.
pub struct TokenSource {
    account: AccountId,
    client: OAuthClient,
    http: reqwest::Client,
    vault: Arc<TokenVault>,
    /// Held across a refresh, so that concurrent callers wait for one refresh instead of
    /// racing several (which, with rotating refresh tokens, would invalidate each other).
    state: Mutex<StoredTokens>,
    refresh_margin: Duration,
}

impl std::fmt::Debug for TokenSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenSource")
            .field("account", &self.account)
            .finish_non_exhaustive()
    }
}

impl TokenSource {
    /// The account must have logged in (its tokens are in the vault).
    pub fn new(
        vault: Arc<TokenVault>,
        account: AccountId,
        oauth: &OAuthClientConfig,
    ) -> Result<Self, AccountError> {
        let tokens = vault
            .load(&account)?
            .ok_or_else(|| AccountError::NotLoggedIn {
                account: account.clone(),
            })?;
        Ok(TokenSource {
            client: oauth.client()?,
            http: oauth_http_client(),
            vault,
            account,
            state: Mutex::new(tokens),
            refresh_margin: Duration::from_secs(60),
        })
    }

    /// Refresh this long before the access token expires (default 60 s), so that a request
    /// does not leave with a token that dies on the way.
    pub fn with_refresh_margin(mut self, margin: Duration) -> Self {
        self.refresh_margin = margin;
        self
    }

    pub fn account(&self) -> &AccountId {
        &self.account
    }

    /// Refresh now, whatever the expiry says.
    pub async fn refresh_now(&self) -> Result<Secret, AccountError> {
        let mut state = self.state.lock().await;
        self.refresh_locked(&mut state).await
    }

    fn usable(&self, t: &StoredTokens) -> Option<Secret> {
        let token = t.access_token.clone()?;
        match t.expires_at() {
            Some(exp) if exp <= SystemTime::now() + self.refresh_margin => None,
            _ => Some(token),
        }
    }

    /// After a failed refresh, a `cloudmount login` in another process may have fixed things.
    fn reload_if_dead(&self, state: &mut StoredTokens) -> Result<(), AccountError> {
        if let Some(reason) = &state.needs_login {
            match self.vault.load(&self.account)? {
                Some(fresh) if fresh.needs_login.is_none() => *state = fresh,
                _ => {
                    return Err(AccountError::NeedsLogin {
                        account: self.account.clone(),
                        reason: reason.clone(),
                    })
                }
            }
        }
        Ok(())
    }

    async fn refresh_locked(&self, state: &mut StoredTokens) -> Result<Secret, AccountError> {
        self.reload_if_dead(state)?;
        let Some(refresh) = state.refresh_token.clone() else {
            return Err(AccountError::NeedsLogin {
                account: self.account.clone(),
                reason: "no refresh token stored".into(),
            });
        };
        debug!(account = %self.account, "refreshing access token");
        let result = self
            .client
            .exchange_refresh_token(&RefreshToken::new(refresh.expose().to_owned()))
            .request_async(&self.http)
            .await;
        match result {
            Ok(resp) => {
                let mut fresh = tokens_from_response(&resp, Some(&refresh));
                if fresh.scopes.is_empty() {
                    fresh.scopes = std::mem::take(&mut state.scopes);
                }
                let rotated = fresh.refresh_token != state.refresh_token;
                // Save before using: a rotated refresh token that is lost means a dead login.
                self.vault.save(&self.account, &fresh)?;
                *state = fresh;
                info!(account = %self.account, rotated, "access token refreshed");
                Ok(state.access_token.clone().expect("just set"))
            }
            Err(e) if is_invalid_grant(&e) => {
                let reason = match map_token_error(e) {
                    AccountError::Denied(d) => d,
                    other => other.to_string(),
                };
                warn!(account = %self.account, %reason, "refresh token refused; a new login is needed");
                state.access_token = None;
                state.access_expires_at = None;
                state.needs_login = Some(reason.clone());
                self.vault.save(&self.account, state)?;
                Err(AccountError::NeedsLogin {
                    account: self.account.clone(),
                    reason,
                })
            }
            Err(e) => Err(map_token_error(e)),
        }
    }
}

#[async_trait]
impl BearerTokens for TokenSource {
    async fn access_token(&self) -> Result<Secret, AccountError> {
        let mut state = self.state.lock().await;
        self.reload_if_dead(&mut state)?;
        if let Some(t) = self.usable(&state) {
            return Ok(t);
        }
        self.refresh_locked(&mut state).await
    }

    async fn token_rejected(&self, rejected: &Secret) -> Result<Secret, AccountError> {
        let mut state = self.state.lock().await;
        self.reload_if_dead(&mut state)?;
        match &state.access_token {
            // Someone else already replaced the rejected token.
            Some(current) if current != rejected && self.usable(&state).is_some() => {
                Ok(current.clone())
            }
            _ => self.refresh_locked(&mut state).await,
        }
    }
}
