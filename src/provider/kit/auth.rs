//! Who a request says it is: none, basic, a fixed bearer token, or OAuth with one refresh
//! after a 401.
//!
//! The API client ([`super::client`]) asks an [`Authenticator`] for a [`Credential`] before a
//! request and tells it when the server answered 401 to one; whether a fresh credential is
//! worth a second try is the authenticator's call (OAuth: yes, once; a fixed password or
//! token: no, a 401 is final). A request can also go out *without* credentials
//! ([`super::client::Call::unauthenticated`]): pre-authenticated URLs (Drive's resumable
//! session URI, Graph's upload and download URLs, Dropbox's temporary links) carry their
//! own capability, and some of those services refuse or mis-route a request that also
//! carries an `Authorization` header.
//!
//! The `Authorization` value is marked sensitive so that reqwest never prints it, and no
//! credential is ever formatted into a message: [`Credential`]'s `Debug` says only which
//! kind it is.

use std::fmt;
use std::sync::Arc;

use async_trait::async_trait;
use base64::Engine;
use reqwest::header::HeaderValue;

use crate::accounts::BearerTokens;
use crate::provider::{ProviderError, ProviderResult};
use crate::secrets::Secret;

/// What goes into one request's `Authorization` header.
#[derive(Clone, PartialEq, Eq)]
pub enum Credential {
    None,
    Basic {
        user: String,
        password: Option<Secret>,
    },
    Bearer(Secret),
}

impl fmt::Debug for Credential {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Credential::None => "Credential::None",
            Credential::Basic { .. } => "Credential::Basic(<redacted>)",
            Credential::Bearer(_) => "Credential::Bearer(<redacted>)",
        })
    }
}

impl Credential {
    /// The header value, marked sensitive; `None` for no credential.
    pub fn header(&self) -> ProviderResult<Option<HeaderValue>> {
        let raw = match self {
            Credential::None => return Ok(None),
            Credential::Basic { user, password } => {
                let pair = format!(
                    "{user}:{}",
                    password.as_ref().map(Secret::expose).unwrap_or("")
                );
                format!(
                    "Basic {}",
                    base64::engine::general_purpose::STANDARD.encode(pair)
                )
            }
            Credential::Bearer(token) => format!("Bearer {}", token.expose()),
        };
        let mut value = HeaderValue::from_str(&raw).map_err(|_| {
            // Never echo the value: it is the secret.
            ProviderError::Auth("the credential holds characters a header cannot carry".into())
        })?;
        value.set_sensitive(true);
        Ok(Some(value))
    }
}

/// Hands out credentials for requests.
#[async_trait]
pub trait Authenticator: Send + Sync + 'static {
    /// The credential to send now.
    async fn credential(&self) -> ProviderResult<Credential>;

    /// The server answered 401 to a request sent with `used`: a credential worth one more
    /// try, or `None` when the 401 stands (the default).
    async fn rejected(&self, _used: &Credential) -> ProviderResult<Option<Credential>> {
        Ok(None)
    }
}

/// No credentials (public servers, or the capability is in the URL).
pub struct NoAuth;

#[async_trait]
impl Authenticator for NoAuth {
    async fn credential(&self) -> ProviderResult<Credential> {
        Ok(Credential::None)
    }
}

/// A fixed credential (user and password, or an app token); a 401 is final.
pub struct FixedAuth(pub Credential);

#[async_trait]
impl Authenticator for FixedAuth {
    async fn credential(&self) -> ProviderResult<Credential> {
        Ok(self.0.clone())
    }
}

/// OAuth bearer tokens from a token source, which refreshes them before they expire and,
/// once per request, after a 401.
pub struct OAuthBearer(pub Arc<dyn BearerTokens>);

#[async_trait]
impl Authenticator for OAuthBearer {
    async fn credential(&self) -> ProviderResult<Credential> {
        Ok(Credential::Bearer(self.0.access_token().await?))
    }

    async fn rejected(&self, used: &Credential) -> ProviderResult<Option<Credential>> {
        match used {
            Credential::Bearer(token) => Ok(Some(Credential::Bearer(
                self.0.token_rejected(token).await?,
            ))),
            _ => Ok(None),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn headers_are_sensitive_and_debug_hides_secrets() {
        let basic = Credential::Basic {
            user: "anna".into(),
            password: Some(Secret::new("s3cret")),
        };
        let h = basic.header().unwrap().unwrap();
        assert!(h.is_sensitive());
        // base64("anna:s3cret")
        assert_eq!(h.to_str().unwrap(), "Basic YW5uYTpzM2NyZXQ=");
        assert!(!format!("{basic:?}").contains("s3cret"));

        let bearer = Credential::Bearer(Secret::new("tok"));
        assert_eq!(
            bearer.header().unwrap().unwrap().to_str().unwrap(),
            "Bearer tok"
        );
        assert!(!format!("{bearer:?}").contains("tok"));
        assert_eq!(Credential::None.header().unwrap(), None);

        let bad = Credential::Bearer(Secret::new("line\nbreak"));
        let err = bad.header().unwrap_err().to_string();
        assert!(!err.contains("line"), "{err}");
    }
}
