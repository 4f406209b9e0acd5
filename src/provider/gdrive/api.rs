//! Drive on the provider kit: its error body, which of its requests may be repeated, and
//! the request style the rest of the module uses. Sending, pacing, retries and the token
//! refresh after a 401 are the kit's (`provider::kit::client`).

use std::sync::Arc;

use reqwest::header::HeaderMap;
use reqwest::{RequestBuilder, Response, StatusCode};
use serde::Deserialize;

use crate::accounts::BearerTokens;
use crate::provider::kit::auth::OAuthBearer;
use crate::provider::kit::client::{ApiClient, Call};
use crate::provider::kit::errors::{classify_status, ErrorDetail, ServiceErrors};
use crate::provider::kit::retry::{retry_after, Idempotency, RetryPolicy};
use crate::provider::{ProviderError, ProviderResult};

/// The v1 error body: `{"error":{"errors":[{"domain","reason","message",...}],"code","message"}}`.
#[derive(Deserialize)]
struct ErrorBody {
    error: ErrorInner,
}

#[derive(Deserialize)]
struct ErrorInner {
    #[serde(default)]
    errors: Vec<ErrorItem>,
    #[serde(default)]
    message: String,
}

#[derive(Deserialize)]
struct ErrorItem {
    #[serde(default)]
    reason: String,
}

/// Drive's error body and the 403s whose meaning depends on its `reason`.
pub(crate) struct DriveErrors;

impl ServiceErrors for DriveErrors {
    fn detail(&self, body: &[u8]) -> ErrorDetail {
        match serde_json::from_slice::<ErrorBody>(body) {
            Ok(b) => ErrorDetail {
                message: (!b.error.message.is_empty()).then_some(b.error.message),
                code: b
                    .error
                    .errors
                    .into_iter()
                    .map(|e| e.reason)
                    .find(|r| !r.is_empty()),
                ..ErrorDetail::default()
            },
            Err(_) => ErrorDetail::default(),
        }
    }

    fn classify(
        &self,
        status: StatusCode,
        headers: &HeaderMap,
        detail: &ErrorDetail,
        what: &str,
    ) -> ProviderError {
        let message = detail.describe(what, status);
        match (status.as_u16(), detail.code.as_deref()) {
            // Only these two 403s are about pacing; every other 403 is final.
            (403, Some("userRateLimitExceeded" | "rateLimitExceeded")) => {
                ProviderError::RateLimited {
                    retry_after: retry_after(headers),
                }
            }
            (403, Some("storageQuotaExceeded")) => ProviderError::InsufficientStorage,
            // Drive's backend errors are all worth another try, with or without a
            // `Retry-After` (its guidance: exponential backoff).
            (500..=599, _) => ProviderError::Transient(message),
            _ => classify_status(status, retry_after(headers), message),
        }
    }
}

/// Which Drive requests may be sent twice. Drive's PATCHes (files.update) set fields to
/// given values, so repeating one changes nothing more; its POSTs create something
/// (files.create, files.copy) and are not repeated when their outcome is unknown, except
/// where the caller knows better (see `send_as`).
fn drive_idempotency(method: &reqwest::Method) -> Idempotency {
    if method == reqwest::Method::PATCH {
        Idempotency::Idempotent
    } else {
        Idempotency::of_method(method)
    }
}

/// Drive's replies that are answers although not 2xx: 308 (a resumable session wants
/// more) and 416 (a range past the end, read by the ranged-read code).
const ACCEPTED: &[StatusCode] = &[
    StatusCode::PERMANENT_REDIRECT,
    StatusCode::RANGE_NOT_SATISFIABLE,
];

/// The kit's client with Drive's request style: requests built from the HTTP client by a
/// closure, authenticated with the account's OAuth tokens.
pub(crate) struct Api {
    pub(crate) client: ApiClient,
}

impl Api {
    pub(crate) fn new(
        http: reqwest::Client,
        tokens: Arc<dyn BearerTokens>,
        per_second: f64,
        retry: RetryPolicy,
    ) -> Self {
        Api {
            client: ApiClient::new(
                http,
                Arc::new(OAuthBearer(tokens)),
                Arc::new(DriveErrors),
                retry,
                per_second,
            ),
        }
    }

    /// Send an authenticated request, built afresh for every attempt by `build`; whether it
    /// may be repeated after an unknown outcome follows from its method (see
    /// `drive_idempotency`). Returns the successful response (2xx, or 308 for uploads, or
    /// 416).
    pub(crate) async fn send<F>(&self, what: &str, build: F) -> ProviderResult<Response>
    where
        F: Fn(&reqwest::Client) -> RequestBuilder,
    {
        let probe = build(self.client.http())
            .build()
            .map_err(|e| ProviderError::Protocol(format!("{what}: {}", e.without_url())))?;
        self.send_as(what, drive_idempotency(probe.method()), build)
            .await
    }

    /// `send`, saying whether the request may be repeated after an unknown outcome.
    pub(crate) async fn send_as<F>(
        &self,
        what: &str,
        idempotency: Idempotency,
        build: F,
    ) -> ProviderResult<Response>
    where
        F: Fn(&reqwest::Client) -> RequestBuilder,
    {
        let call = Call::new(what).idempotency(idempotency).accept(ACCEPTED);
        self.client
            .send(call, || {
                let req = build(self.client.http()).build();
                async move {
                    req.map_err(|e| ProviderError::Protocol(format!("{what}: {}", e.without_url())))
                }
            })
            .await
    }

    /// `send` and decode a JSON reply.
    pub(crate) async fn json<T, F>(&self, what: &str, build: F) -> ProviderResult<T>
    where
        T: serde::de::DeserializeOwned,
        F: Fn(&reqwest::Client) -> RequestBuilder,
    {
        let probe = build(self.client.http())
            .build()
            .map_err(|e| ProviderError::Protocol(format!("{what}: {}", e.without_url())))?;
        let call = Call::new(what)
            .idempotency(drive_idempotency(probe.method()))
            .accept(ACCEPTED);
        // The kit reads the body within the attempt: a reply cut halfway is asked again.
        self.client
            .json(call, || {
                let req = build(self.client.http()).build();
                async move {
                    req.map_err(|e| ProviderError::Protocol(format!("{what}: {}", e.without_url())))
                }
            })
            .await
    }
}
