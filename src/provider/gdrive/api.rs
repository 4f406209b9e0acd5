//! The HTTP layer: authentication, request-rate cap and error mapping; retries follow the
//! provider kit's rules (`provider::kit::retry`).

use std::sync::Arc;
use std::time::{Duration, Instant};

use reqwest::header::HeaderMap;
use reqwest::{RequestBuilder, Response, StatusCode};
use serde::Deserialize;
use tracing::debug;

use crate::accounts::BearerTokens;
use crate::provider::kit::retry::{
    self, retry_after, Attempt, Effect, Failure, Idempotency, RetryPolicy,
};
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

/// Map a failed reply onto a provider error. `what` names the operation for messages.
pub(crate) fn map_error(
    status: StatusCode,
    headers: &HeaderMap,
    body: &[u8],
    what: &str,
) -> ProviderError {
    let (reason, message) = match serde_json::from_slice::<ErrorBody>(body) {
        Ok(b) => (
            b.error
                .errors
                .first()
                .map(|e| e.reason.clone())
                .unwrap_or_default(),
            b.error.message,
        ),
        Err(_) => (
            String::new(),
            status.canonical_reason().unwrap_or("").to_owned(),
        ),
    };
    let detail = if reason.is_empty() {
        format!("{what}: {message}")
    } else {
        format!("{what}: {message} ({reason})")
    };
    match status.as_u16() {
        401 => ProviderError::Auth(detail),
        403 => match reason.as_str() {
            // Only these two 403s are about pacing; every other 403 is final.
            "userRateLimitExceeded" | "rateLimitExceeded" => ProviderError::RateLimited {
                retry_after: retry_after(headers),
            },
            "storageQuotaExceeded" => ProviderError::InsufficientStorage,
            _ => ProviderError::PermissionDenied(detail),
        },
        404 => ProviderError::NotFound(detail),
        412 => ProviderError::PreconditionFailed(detail),
        429 => ProviderError::RateLimited {
            retry_after: retry_after(headers),
        },
        500..=599 => ProviderError::Transient(detail),
        _ => ProviderError::Protocol(format!("HTTP {status}: {detail}")),
    }
}

pub(crate) fn network_error(e: &reqwest::Error, what: &str) -> ProviderError {
    // Without the URL: session URIs carry an upload capability.
    ProviderError::Transient(format!("{what}: {}", strip_url(e)))
}

fn strip_url(e: &reqwest::Error) -> String {
    let mut s = e.to_string();
    if let Some(url) = e.url() {
        s = s.replace(url.as_str(), "<url>");
    }
    s
}

/// A cap on requests per second for one connection, shared by all its tasks.
pub(crate) struct RateCap {
    interval: Option<Duration>,
    next: std::sync::Mutex<Instant>,
}

impl RateCap {
    pub(crate) fn new(per_second: f64) -> Self {
        RateCap {
            interval: (per_second > 0.0).then(|| Duration::from_secs_f64(1.0 / per_second)),
            next: std::sync::Mutex::new(Instant::now()),
        }
    }

    pub(crate) async fn wait(&self) {
        let Some(interval) = self.interval else {
            return;
        };
        let slot = {
            let mut next = self.next.lock().unwrap();
            let now = Instant::now();
            let slot = (*next).max(now);
            *next = slot + interval;
            slot
        };
        tokio::time::sleep_until(slot.into()).await;
    }
}

pub(crate) struct Api {
    pub(crate) http: reqwest::Client,
    tokens: Arc<dyn BearerTokens>,
    pub(crate) cap: RateCap,
    pub(crate) retry: RetryPolicy,
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

impl Api {
    pub(crate) fn new(
        http: reqwest::Client,
        tokens: Arc<dyn BearerTokens>,
        per_second: f64,
        retry: RetryPolicy,
    ) -> Self {
        Api {
            http,
            tokens,
            cap: RateCap::new(per_second),
            retry,
        }
    }

    /// Send an authenticated request, built afresh for every attempt by `build`; whether it
    /// may be repeated after an unknown outcome follows from its method (see
    /// `drive_idempotency`). Handles a 401 by refreshing the token once, and retries rate
    /// limits, 5xx and network errors as `kit::retry` allows. Returns the successful
    /// response (2xx, or 308 for uploads, or 416).
    pub(crate) async fn send<F>(&self, what: &str, build: F) -> ProviderResult<Response>
    where
        F: Fn(&reqwest::Client) -> RequestBuilder,
    {
        let probe = build(&self.http)
            .build()
            .map_err(|e| ProviderError::Protocol(format!("{what}: {}", strip_url(&e))))?;
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
        // The token and whether it was refreshed already carry over between attempts.
        let token = tokio::sync::Mutex::new((self.tokens.access_token().await?, false));
        retry::run(&self.retry, idempotency, what, || async {
            let mut token = token.lock().await;
            loop {
                self.cap.wait().await;
                let result = build(&self.http).bearer_auth(token.0.expose()).send().await;
                let resp = match result {
                    Ok(resp) => resp,
                    Err(e) => {
                        let err = network_error(&e, what);
                        return Attempt::Failed(Failure {
                            effect: Effect::of_transport(&e),
                            retry_after: None,
                            reason: err.to_string(),
                            outcome: Err(err),
                        });
                    }
                };
                let status = resp.status();
                if status.is_success()
                    || status.as_u16() == 308
                    || status == StatusCode::RANGE_NOT_SATISFIABLE
                {
                    return Attempt::Done(Ok(resp));
                }
                if status == StatusCode::UNAUTHORIZED && !token.1 {
                    debug!(what, "access token refused; refreshing once");
                    let fresh = match self.tokens.token_rejected(&token.0).await {
                        Ok(t) => t,
                        Err(e) => return Attempt::Done(Err(e.into())),
                    };
                    *token = (fresh, true);
                    continue;
                }
                let headers = resp.headers().clone();
                let body = resp.bytes().await.unwrap_or_default();
                let err = map_error(status, &headers, &body, what);
                return match err {
                    // Drive's pacing 403s and 429 both say "not processed, slow down".
                    ProviderError::RateLimited { retry_after } => Attempt::Failed(Failure {
                        effect: Effect::NotApplied,
                        retry_after,
                        reason: err.to_string(),
                        outcome: Err(err),
                    }),
                    _ => match Effect::of_status(status) {
                        Some(effect) => Attempt::Failed(Failure {
                            effect,
                            retry_after: None,
                            reason: err.to_string(),
                            outcome: Err(err),
                        }),
                        None => Attempt::Done(Err(err)),
                    },
                };
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
        let resp = self.send(what, build).await?;
        let body = resp.bytes().await.map_err(|e| network_error(&e, what))?;
        serde_json::from_slice(&body)
            .map_err(|e| ProviderError::Protocol(format!("{what}: unexpected reply: {e}")))
    }
}
