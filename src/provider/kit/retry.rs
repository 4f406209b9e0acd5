//! Retrying one request: backoff, `Retry-After`, and when sending again is safe at all.
//!
//! A provider call retries *its own request* a few times within a small time budget so that
//! a passing 503 or a dropped connection does not surface as an error; anything longer is
//! the write-back queue's job (it keeps the operation and tries again later), which is why
//! the budget is short and why a `Retry-After` beyond it is handed back as
//! [`ProviderError::RateLimited`] instead of being slept through.
//!
//! What may be sent again depends on whether the failed attempt may have *taken effect*:
//!
//! - **Certainly not applied** ([`Effect::NotApplied`]): 429 and 503 (the server says it
//!   did not process the request), 408, 423 (the target is locked, typically by a request
//!   of ours the server is still finishing after its connection was cut), and a connection
//!   that could not be opened, so the request never left. Such requests are retried
//!   whatever their method.
//! - **Uncertain** ([`Effect::Uncertain`]): the reply was cut or never came (a timeout
//!   after sending), or a 5xx other than 503 (500, 502, 504: a proxy or the server may have
//!   acted before failing). Retried only for [`Idempotency::Idempotent`] requests: GET,
//!   HEAD, OPTIONS, PROPFIND, REPORT, DELETE, and a PUT whose target nobody else uses (a
//!   fresh temporary name, or an upload-session chunk). A MOVE, COPY, MKCOL or conditional
//!   PUT that is sent twice can fail the second time *because* the first one worked (404 on
//!   the vanished source, 405 on the existing folder, 412 on the now-different target), so
//!   for those the failure goes back to the caller as it is, normally
//!   [`ProviderError::Transient`]; the write-back executor then resolves it by looking at
//!   the remote again rather than by repeating the request blindly.
//!
//! Waits use "full jitter" exponential backoff: retry `n` sleeps a uniformly random time in
//! `[0, min(cap, base * 2^n)]`, so that many clients hit by the same outage do not come back
//! in lockstep. A `Retry-After` (delta-seconds or HTTP-date) replaces the computed wait.

use std::future::Future;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use reqwest::header::{HeaderMap, RETRY_AFTER};
use reqwest::{Method, StatusCode};
use tracing::{debug, warn};

use crate::provider::{ProviderError, ProviderResult};

/// How often and how long one request is retried.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Attempts in all, the first included (at least 1).
    pub max_attempts: u32,
    /// Upper bound of the first retry's wait; doubles with each retry.
    pub base_delay: Duration,
    /// No single computed wait is longer than this.
    pub max_delay: Duration,
    /// No retry starts once this much time has passed since the first attempt, and no
    /// wait (computed or asked for) may run past it.
    pub budget: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            max_attempts: 4,
            base_delay: Duration::from_millis(250),
            max_delay: Duration::from_secs(8),
            budget: Duration::from_secs(20),
        }
    }
}

/// The defaults of the request settings (`max_retries`, `retry_base_delay_ms`,
/// `retry_budget_secs`, `timeout_secs`) that the cloud APIs' connections share (Drive,
/// Graph, Dropbox): services that rate-limit and ask for waits of seconds. WebDAV servers
/// answer at once or not at all and keep their own, shorter ones.
pub mod cloud_api {
    pub fn max_retries() -> u32 {
        5
    }
    pub fn retry_base_ms() -> u64 {
        500
    }
    pub fn retry_budget_secs() -> u64 {
        60
    }
    pub fn timeout_secs() -> u64 {
        60
    }
}

impl RetryPolicy {
    /// The policy from the retry settings every HTTP connection's config spells the same
    /// way (`max_retries`, `retry_base_delay_ms`, `retry_budget_secs`; defaults are each
    /// provider's), with the provider's cap on one wait.
    pub fn from_settings(
        max_retries: u32,
        retry_base_delay_ms: u64,
        retry_budget_secs: u64,
        max_delay: Duration,
    ) -> Self {
        RetryPolicy {
            max_attempts: max_retries.saturating_add(1),
            base_delay: Duration::from_millis(retry_base_delay_ms),
            max_delay,
            budget: Duration::from_secs(retry_budget_secs),
        }
    }

    /// The longest wait before retry number `retry` (0 = the first retry).
    pub fn ceiling(&self, retry: u32) -> Duration {
        // 2^20 times any sensible base is far beyond any cap; stop doubling there.
        let factor = 1u32 << retry.min(20);
        self.base_delay.saturating_mul(factor).min(self.max_delay)
    }

    /// A random wait in `[0, ceiling(retry)]` (full jitter).
    pub fn backoff(&self, retry: u32) -> Duration {
        self.ceiling(retry).mul_f64(rand::random::<f64>())
    }

    /// The wait before retry `retry` after `err`, for callers that drive their own loop
    /// (resumable uploads): what a rate limit asked for, within the budget, or backoff.
    pub fn wait_after(&self, retry: u32, err: &ProviderError) -> Duration {
        match err {
            ProviderError::RateLimited {
                retry_after: Some(d),
            } => (*d).min(self.budget),
            _ => self.backoff(retry),
        }
    }
}

/// Whether sending a request twice has the same effect as sending it once.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Idempotency {
    Idempotent,
    NotIdempotent,
}

impl Idempotency {
    /// The default for a method. PUT counts as idempotent, which holds only for an
    /// unconditional PUT of a whole body: callers sending `If-Match` / `If-None-Match` must
    /// say [`Idempotency::NotIdempotent`] themselves.
    pub fn of_method(method: &Method) -> Idempotency {
        match method.as_str() {
            "GET" | "HEAD" | "OPTIONS" | "PROPFIND" | "REPORT" | "PUT" | "DELETE" => {
                Idempotency::Idempotent
            }
            _ => Idempotency::NotIdempotent,
        }
    }
}

/// Whether a failed attempt may have changed anything on the server.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Effect {
    NotApplied,
    Uncertain,
}

impl Effect {
    /// How a reply status bears on retrying: `None` for statuses that retrying cannot fix
    /// (all of 1xx-4xx but 408/423/429, and 501, 505, 507, 508...).
    pub fn of_status(status: StatusCode) -> Option<Effect> {
        match status.as_u16() {
            408 | 423 | 429 | 503 => Some(Effect::NotApplied),
            500 | 502 | 504 => Some(Effect::Uncertain),
            _ => None,
        }
    }

    /// A transport failure: only one that happened while connecting is known to have
    /// sent nothing.
    pub fn of_transport(e: &reqwest::Error) -> Effect {
        if e.is_connect() {
            Effect::NotApplied
        } else {
            Effect::Uncertain
        }
    }
}

/// A failed attempt that sending again might fix.
#[derive(Debug)]
pub struct Failure<T> {
    pub effect: Effect,
    /// What the server asked for in `Retry-After`.
    pub retry_after: Option<Duration>,
    /// Why, for logs.
    pub reason: String,
    /// What the caller gets if this attempt is the last: the reply itself (so it is
    /// diagnosed like any other failed reply) or an error.
    pub outcome: ProviderResult<T>,
}

/// The result of one attempt, as the attempt itself judges it.
#[derive(Debug)]
pub enum Attempt<T> {
    /// Final, good or bad: handed to the caller as it is.
    Done(ProviderResult<T>),
    Failed(Failure<T>),
}

/// Runs `send` until it is done, it failed in a way that must not or need not be retried,
/// or the policy's attempts or budget are spent. `what` names the request in logs.
pub async fn run<T, F, Fut>(
    policy: &RetryPolicy,
    idempotency: Idempotency,
    what: &str,
    mut send: F,
) -> ProviderResult<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Attempt<T>>,
{
    let started = Instant::now();
    let mut retry = 0u32;
    loop {
        let failure = match send().await {
            Attempt::Done(result) => return result,
            Attempt::Failed(f) => f,
        };
        if failure.effect == Effect::Uncertain && idempotency == Idempotency::NotIdempotent {
            debug!(what, reason = %failure.reason, "outcome unknown; not repeating a non-idempotent request");
            return failure.outcome;
        }
        if retry + 1 >= policy.max_attempts.max(1) {
            return failure.outcome;
        }
        let left = policy.budget.saturating_sub(started.elapsed());
        let wait = match failure.retry_after {
            // The server knows best, but waiting that long here would hold up the caller
            // (often a FUSE request): let the queue wait instead.
            Some(asked) if asked > left => {
                debug!(what, ?asked, ?left, "Retry-After beyond the retry budget");
                return Err(ProviderError::RateLimited {
                    retry_after: Some(asked),
                });
            }
            Some(asked) => asked,
            None => policy.backoff(retry),
        };
        if wait >= left {
            return failure.outcome;
        }
        warn!(what, retry, ?wait, reason = %failure.reason, "retrying");
        drop(failure);
        tokio::time::sleep(wait).await;
        retry += 1;
    }
}

/// The `Retry-After` of a reply, as a wait from now.
pub fn retry_after(headers: &HeaderMap) -> Option<Duration> {
    let v = headers.get(RETRY_AFTER)?.to_str().ok()?;
    parse_retry_after(v, SystemTime::now())
}

/// `Retry-After` is either delta-seconds or an HTTP-date; a date in the past means "now".
pub fn parse_retry_after(value: &str, now: SystemTime) -> Option<Duration> {
    let v = value.trim();
    if !v.is_empty() && v.bytes().all(|b| b.is_ascii_digit()) {
        // Absurdly many digits still mean "a very long time", not "no header".
        return Some(Duration::from_secs(v.parse::<u64>().unwrap_or(u64::MAX)));
    }
    let when = parse_http_date(v)?;
    Some(when.duration_since(now).unwrap_or(Duration::ZERO))
}

/// Parses the three date formats HTTP allows (RFC 1123 first, as servers send it).
pub fn parse_http_date(s: &str) -> Option<SystemTime> {
    let s = s.trim();
    let secs = if let Ok(dt) = chrono::DateTime::parse_from_rfc2822(s) {
        dt.timestamp()
    } else if let Ok(dt) = chrono::NaiveDateTime::parse_from_str(s, "%A, %d-%b-%y %H:%M:%S GMT") {
        dt.and_utc().timestamp()
    } else if let Ok(dt) = chrono::NaiveDateTime::parse_from_str(s, "%a %b %e %H:%M:%S %Y") {
        dt.and_utc().timestamp()
    } else {
        return None;
    };
    let secs = u64::try_from(secs).ok()?;
    Some(UNIX_EPOCH + Duration::from_secs(secs))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU32, Ordering};

    #[test]
    fn retry_after_seconds_and_dates() {
        let now = UNIX_EPOCH + Duration::from_secs(784111777); // Sun, 06 Nov 1994 08:49:37
        assert_eq!(
            parse_retry_after("120", now),
            Some(Duration::from_secs(120))
        );
        assert_eq!(parse_retry_after(" 0 ", now), Some(Duration::ZERO));
        assert_eq!(
            parse_retry_after("Sun, 06 Nov 1994 08:50:07 GMT", now),
            Some(Duration::from_secs(30))
        );
        assert_eq!(
            parse_retry_after("Sunday, 06-Nov-94 08:49:47 GMT", now),
            Some(Duration::from_secs(10))
        );
        assert_eq!(
            parse_retry_after("Sun Nov  6 08:49:38 1994", now),
            Some(Duration::from_secs(1))
        );
        // A date already past: go ahead now.
        assert_eq!(
            parse_retry_after("Sun, 06 Nov 1994 08:00:00 GMT", now),
            Some(Duration::ZERO)
        );
        assert_eq!(
            parse_retry_after("99999999999999999999999", now),
            Some(Duration::from_secs(u64::MAX))
        );
        assert_eq!(parse_retry_after("-5", now), None);
        assert_eq!(parse_retry_after("soon", now), None);
        assert_eq!(parse_retry_after("", now), None);

        let mut h = HeaderMap::new();
        assert_eq!(retry_after(&h), None);
        h.insert(RETRY_AFTER, "7".parse().unwrap());
        assert_eq!(retry_after(&h), Some(Duration::from_secs(7)));
    }

    #[test]
    fn backoff_stays_within_doubling_ceilings_and_the_cap() {
        let p = RetryPolicy {
            max_attempts: 10,
            base_delay: Duration::from_millis(100),
            max_delay: Duration::from_secs(1),
            budget: Duration::from_secs(60),
        };
        assert_eq!(p.ceiling(0), Duration::from_millis(100));
        assert_eq!(p.ceiling(1), Duration::from_millis(200));
        assert_eq!(p.ceiling(3), Duration::from_millis(800));
        assert_eq!(p.ceiling(4), Duration::from_secs(1));
        assert_eq!(p.ceiling(u32::MAX), Duration::from_secs(1));
        for retry in 0..8 {
            let mut lowest = Duration::MAX;
            for _ in 0..200 {
                let d = p.backoff(retry);
                assert!(d <= p.ceiling(retry), "{d:?} > {:?}", p.ceiling(retry));
                lowest = lowest.min(d);
            }
            // Full jitter: waits spread down towards zero, not only near the ceiling.
            assert!(lowest < p.ceiling(retry) / 4, "retry {retry}: {lowest:?}");
        }
        let huge = RetryPolicy {
            base_delay: Duration::MAX,
            ..p.clone()
        };
        assert_eq!(huge.ceiling(5), Duration::from_secs(1));
        assert_eq!(
            p.wait_after(
                0,
                &ProviderError::RateLimited {
                    retry_after: Some(Duration::from_secs(600))
                }
            ),
            Duration::from_secs(60)
        );
    }

    #[test]
    fn methods_and_statuses() {
        for m in [
            "GET", "HEAD", "PROPFIND", "OPTIONS", "PUT", "DELETE", "REPORT",
        ] {
            let m = Method::from_bytes(m.as_bytes()).unwrap();
            assert_eq!(Idempotency::of_method(&m), Idempotency::Idempotent, "{m}");
        }
        for m in ["MOVE", "COPY", "MKCOL", "POST", "PATCH", "PROPPATCH"] {
            let m = Method::from_bytes(m.as_bytes()).unwrap();
            assert_eq!(
                Idempotency::of_method(&m),
                Idempotency::NotIdempotent,
                "{m}"
            );
        }
        let s = |n| StatusCode::from_u16(n).unwrap();
        assert_eq!(Effect::of_status(s(503)), Some(Effect::NotApplied));
        assert_eq!(Effect::of_status(s(429)), Some(Effect::NotApplied));
        assert_eq!(Effect::of_status(s(500)), Some(Effect::Uncertain));
        assert_eq!(Effect::of_status(s(502)), Some(Effect::Uncertain));
        assert_eq!(Effect::of_status(s(423)), Some(Effect::NotApplied));
        for n in [200, 207, 404, 409, 412, 501, 507] {
            assert_eq!(Effect::of_status(s(n)), None, "{n}");
        }
    }

    fn quick() -> RetryPolicy {
        RetryPolicy {
            max_attempts: 4,
            base_delay: Duration::from_millis(1),
            max_delay: Duration::from_millis(5),
            budget: Duration::from_secs(5),
        }
    }

    fn failure(effect: Effect, retry_after: Option<Duration>) -> Attempt<&'static str> {
        Attempt::Failed(Failure {
            effect,
            retry_after,
            reason: "test".into(),
            outcome: Err(ProviderError::Transient("gave up".into())),
        })
    }

    #[tokio::test]
    async fn run_follows_the_rules() {
        // Certain failures are retried for any request, until one succeeds.
        let calls = AtomicU32::new(0);
        let r = run(&quick(), Idempotency::NotIdempotent, "t", || async {
            match calls.fetch_add(1, Ordering::SeqCst) {
                0 | 1 => failure(Effect::NotApplied, None),
                _ => Attempt::Done(Ok("ok")),
            }
        })
        .await;
        assert_eq!(r, Ok("ok"));
        assert_eq!(calls.load(Ordering::SeqCst), 3);

        // An uncertain outcome is not repeated for a non-idempotent request...
        let calls = AtomicU32::new(0);
        let r = run(&quick(), Idempotency::NotIdempotent, "t", || async {
            calls.fetch_add(1, Ordering::SeqCst);
            failure(Effect::Uncertain, None)
        })
        .await;
        assert_eq!(r, Err(ProviderError::Transient("gave up".into())));
        assert_eq!(calls.load(Ordering::SeqCst), 1);

        // ...but is for an idempotent one, up to the attempt limit.
        let calls = AtomicU32::new(0);
        let r = run(&quick(), Idempotency::Idempotent, "t", || async {
            calls.fetch_add(1, Ordering::SeqCst);
            failure(Effect::Uncertain, None)
        })
        .await;
        assert_eq!(r, Err(ProviderError::Transient("gave up".into())));
        assert_eq!(calls.load(Ordering::SeqCst), 4);

        // Final answers are never retried.
        let calls = AtomicU32::new(0);
        let r: ProviderResult<&str> = run(&quick(), Idempotency::Idempotent, "t", || async {
            calls.fetch_add(1, Ordering::SeqCst);
            Attempt::Done(Err(ProviderError::NotFound("x".into())))
        })
        .await;
        assert_eq!(r, Err(ProviderError::NotFound("x".into())));
        assert_eq!(calls.load(Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn run_honours_retry_after_within_the_budget_only() {
        let calls = AtomicU32::new(0);
        let started = Instant::now();
        let r = run(&quick(), Idempotency::Idempotent, "t", || async {
            match calls.fetch_add(1, Ordering::SeqCst) {
                0 => failure(Effect::NotApplied, Some(Duration::from_millis(300))),
                _ => Attempt::Done(Ok("ok")),
            }
        })
        .await;
        assert_eq!(r, Ok("ok"));
        assert!(started.elapsed() >= Duration::from_millis(300));

        // Longer than the budget: no sleeping, the caller learns how long to wait.
        let calls = AtomicU32::new(0);
        let started = Instant::now();
        let r = run(&quick(), Idempotency::Idempotent, "t", || async {
            calls.fetch_add(1, Ordering::SeqCst);
            failure(Effect::NotApplied, Some(Duration::from_secs(3600)))
        })
        .await;
        assert_eq!(
            r,
            Err(ProviderError::RateLimited {
                retry_after: Some(Duration::from_secs(3600))
            })
        );
        assert_eq!(calls.load(Ordering::SeqCst), 1);
        assert!(started.elapsed() < Duration::from_secs(1));
    }
}
