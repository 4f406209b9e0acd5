//! The HTTP layer: authentication, request-rate cap, retries and error mapping.

use std::sync::Arc;
use std::time::{Duration, Instant};

use reqwest::header::HeaderMap;
use reqwest::{RequestBuilder, Response, StatusCode};
use serde::Deserialize;
use tracing::{debug, warn};

use crate::accounts::BearerTokens;
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

fn retry_after(headers: &HeaderMap) -> Option<Duration> {
    headers
        .get(reqwest::header::RETRY_AFTER)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok())
        .map(Duration::from_secs)
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
    max_retries: u32,
    retry_base: Duration,
}

impl Api {
    pub(crate) fn new(
        http: reqwest::Client,
        tokens: Arc<dyn BearerTokens>,
        per_second: f64,
        max_retries: u32,
        retry_base: Duration,
    ) -> Self {
        Api {
            http,
            tokens,
            cap: RateCap::new(per_second),
            max_retries,
            retry_base,
        }
    }

    /// The wait before retry number `attempt` (0-based): exponential with full jitter, or
    /// what the server asked for, capped so that a hostile Retry-After cannot hang us.
    pub(crate) fn backoff(&self, attempt: u32, err: &ProviderError) -> Duration {
        if let ProviderError::RateLimited {
            retry_after: Some(d),
        } = err
        {
            return (*d).min(Duration::from_secs(60));
        }
        let exp = self.retry_base.saturating_mul(1 << attempt.min(10));
        let jitter = rand::random::<f64>();
        exp.mul_f64(0.5 + jitter * 0.5).min(Duration::from_secs(60))
    }

    pub(crate) fn max_retries(&self) -> u32 {
        self.max_retries
    }

    /// Send an authenticated request, built afresh for every attempt by `build`. Handles a
    /// 401 by refreshing the token once, and retries rate limits, 5xx and network errors
    /// with backoff. Returns the successful response (2xx, or 308 for uploads, or 416).
    pub(crate) async fn send<F>(&self, what: &str, build: F) -> ProviderResult<Response>
    where
        F: Fn(&reqwest::Client) -> RequestBuilder,
    {
        let mut token = self.tokens.access_token().await?;
        let mut refreshed = false;
        let mut attempt = 0;
        loop {
            self.cap.wait().await;
            let result = build(&self.http).bearer_auth(token.expose()).send().await;
            let err = match result {
                Ok(resp) => {
                    let status = resp.status();
                    if status.is_success()
                        || status.as_u16() == 308
                        || status == StatusCode::RANGE_NOT_SATISFIABLE
                    {
                        return Ok(resp);
                    }
                    if status == StatusCode::UNAUTHORIZED && !refreshed {
                        debug!(what, "access token refused; refreshing once");
                        refreshed = true;
                        token = self.tokens.token_rejected(&token).await?;
                        continue;
                    }
                    let headers = resp.headers().clone();
                    let body = resp.bytes().await.unwrap_or_default();
                    map_error(status, &headers, &body, what)
                }
                Err(e) => network_error(&e, what),
            };
            let retry = matches!(
                err,
                ProviderError::RateLimited { .. } | ProviderError::Transient(_)
            );
            if !retry || attempt >= self.max_retries {
                return Err(err);
            }
            let wait = self.backoff(attempt, &err);
            warn!(what, attempt, ?wait, error = %err, "retrying");
            tokio::time::sleep(wait).await;
            attempt += 1;
        }
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
