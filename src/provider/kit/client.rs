//! One API client per connection: the HTTP client, credentials, pacing, retries and error
//! classification every HTTP provider shares.
//!
//! A provider describes a request ([`Call`]: its name for messages, whether sending it twice
//! is harmless, whether it carries credentials) and builds it afresh for every attempt (a
//! body streamed from a file cannot be replayed). [`ApiClient`] then
//!
//! 1. waits for the connection's request-rate cap ([`RateCap`]),
//! 2. adds the credential, and after a 401 asks the [`Authenticator`] once for a new one,
//! 3. sends, and on a transport failure or a status retrying may fix (429, 503, 5xx, 408,
//!    423, or whatever the service's [`ServiceErrors`] classifies as rate limiting, such as
//!    Drive's `rateLimitExceeded` 403) tries again as [`super::retry`] allows,
//! 4. hands back the reply: [`ApiClient::send`] turns a non-2xx reply into the service's
//!    [`ProviderError`]; [`ApiClient::send_raw`] returns every reply it did not retry, for
//!    protocols where a 207, 404 or 412 is an answer to read rather than a failure (WebDAV).
//!
//! Transport errors never carry the URL (a session URI or a pre-authenticated link is a
//! credential in itself) and never the `Authorization` header (marked sensitive).

use std::future::Future;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use reqwest::header::AUTHORIZATION;
use reqwest::{Request, Response, StatusCode};
use tracing::debug;

use super::auth::{Authenticator, Credential};
use super::errors::ServiceErrors;
use super::retry::{self, retry_after, Attempt, Effect, Failure, Idempotency, RetryPolicy};
use crate::provider::{ProviderError, ProviderResult};

/// Largest error body read for classification; the rest is dropped with the connection.
const MAX_ERROR_BODY: usize = 64 * 1024;

/// How the connection's HTTP client is set up.
#[derive(Debug, Clone)]
pub struct HttpSettings {
    /// Bounds each wait (connecting, and between bytes of a reply), not whole transfers.
    pub timeout: Duration,
    /// A PEM bundle of extra root certificates (self-signed or company CAs).
    pub extra_ca_file: Option<PathBuf>,
    /// Follow redirects (JSON APIs, download links) or refuse them (WebDAV, where reqwest
    /// would turn a redirected PROPFIND or MOVE into a GET).
    pub follow_redirects: bool,
}

impl HttpSettings {
    pub fn new(timeout: Duration) -> Self {
        HttpSettings {
            timeout,
            extra_ca_file: None,
            follow_redirects: true,
        }
    }

    /// The reqwest client; the error says what in the settings is wrong.
    pub fn build(&self) -> Result<reqwest::Client, String> {
        let timeout = self.timeout.max(Duration::from_secs(1));
        let mut builder = reqwest::Client::builder()
            .user_agent(concat!("cloudmount/", env!("CARGO_PKG_VERSION")))
            // A whole-request timeout would cut long transfers; bound each wait instead.
            .connect_timeout(timeout)
            .read_timeout(timeout)
            .redirect(if self.follow_redirects {
                reqwest::redirect::Policy::limited(10)
            } else {
                reqwest::redirect::Policy::none()
            });
        if let Some(ca) = &self.extra_ca_file {
            let pem =
                std::fs::read(ca).map_err(|e| format!("cannot read {}: {e}", ca.display()))?;
            let certs = reqwest::Certificate::from_pem_bundle(&pem)
                .map_err(|e| format!("bad PEM in {}: {e}", ca.display()))?;
            if certs.is_empty() {
                return Err(format!("no certificate in {}", ca.display()));
            }
            for cert in certs {
                builder = builder.add_root_certificate(cert);
            }
        }
        builder.build().map_err(|e| format!("HTTP client: {e}"))
    }
}

/// A cap on requests per second for one connection, shared by all its tasks: requests are
/// spaced evenly rather than let through in bursts, which is what per-user quotas such as
/// Drive's count.
pub struct RateCap {
    interval: Option<Duration>,
    next: std::sync::Mutex<Instant>,
}

impl RateCap {
    /// `per_second` ≤ 0 means no cap.
    pub fn new(per_second: f64) -> Self {
        RateCap {
            interval: (per_second > 0.0).then(|| Duration::from_secs_f64(1.0 / per_second)),
            next: std::sync::Mutex::new(Instant::now()),
        }
    }

    /// Waits for this request's slot.
    pub async fn wait(&self) {
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

/// What the client needs to know about one request besides the request itself.
#[derive(Debug, Clone, Copy)]
pub struct Call<'a> {
    /// The operation, for messages ("files.list", "PROPFIND /a/b").
    pub what: &'a str,
    /// Whether it may be sent again when the first outcome is unknown; `None` derives it
    /// from the method and any `If-Match`/`If-None-Match` ([`idempotency_of`]).
    pub idempotency: Option<Idempotency>,
    /// Whether it carries the connection's credential.
    pub authenticated: bool,
    /// Non-2xx statuses [`ApiClient::send`] hands back as replies (Drive's 308 "resume
    /// incomplete", a 416 the ranged-read code reads itself).
    pub accept: &'a [StatusCode],
}

impl<'a> Call<'a> {
    pub fn new(what: &'a str) -> Self {
        Call {
            what,
            idempotency: None,
            authenticated: true,
            accept: &[],
        }
    }

    pub fn idempotency(mut self, idempotency: Idempotency) -> Self {
        self.idempotency = Some(idempotency);
        self
    }

    /// Without the `Authorization` header: for pre-authenticated URLs.
    pub fn unauthenticated(mut self) -> Self {
        self.authenticated = false;
        self
    }

    pub fn accept(mut self, statuses: &'a [StatusCode]) -> Self {
        self.accept = statuses;
        self
    }
}

/// What `kit::retry` may assume about repeating `req`: a conditional request can fail the
/// second time because the first one worked, whatever its method.
pub fn idempotency_of(req: &Request) -> Idempotency {
    let h = req.headers();
    if h.contains_key(reqwest::header::IF_MATCH) || h.contains_key(reqwest::header::IF_NONE_MATCH) {
        Idempotency::NotIdempotent
    } else {
        Idempotency::of_method(req.method())
    }
}

/// A transport failure as an error: without the URL, with the causes that say what broke
/// ("connection reset", "operation timed out").
pub fn transport_error(e: &reqwest::Error, what: &str) -> ProviderError {
    let mut msg = e.to_string();
    if let Some(url) = e.url() {
        msg = msg.replace(url.as_str(), "<url>");
    }
    let mut src = std::error::Error::source(e);
    while let Some(s) = src {
        msg.push_str(": ");
        msg.push_str(&s.to_string());
        src = s.source();
    }
    ProviderError::Transient(format!("{what}: {msg}"))
}

/// Whether `send` returns the reply or the error it stands for.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Mode {
    Raw,
    Checked,
}

/// The HTTP side of one connection.
pub struct ApiClient {
    http: reqwest::Client,
    auth: Arc<dyn Authenticator>,
    errors: Arc<dyn ServiceErrors>,
    cap: RateCap,
    retry: RetryPolicy,
}

impl ApiClient {
    pub fn new(
        http: reqwest::Client,
        auth: Arc<dyn Authenticator>,
        errors: Arc<dyn ServiceErrors>,
        retry: RetryPolicy,
        requests_per_second: f64,
    ) -> Self {
        ApiClient {
            http,
            auth,
            errors,
            cap: RateCap::new(requests_per_second),
            retry,
        }
    }

    /// The underlying HTTP client, for building requests.
    pub fn http(&self) -> &reqwest::Client {
        &self.http
    }

    pub fn retry_policy(&self) -> &RetryPolicy {
        &self.retry
    }

    /// Sends `call`, built by `build` for each attempt; a non-2xx reply (other than those
    /// the call accepts) becomes the service's error.
    pub async fn send<F, Fut>(&self, call: Call<'_>, build: F) -> ProviderResult<Response>
    where
        F: Fn() -> Fut,
        Fut: Future<Output = ProviderResult<Request>>,
    {
        self.run(call, Mode::Checked, build).await
    }

    /// Sends `call` and returns whatever reply retrying did not improve on, non-2xx
    /// included; transport failures are errors. See [`ApiClient::error_of`].
    pub async fn send_raw<F, Fut>(&self, call: Call<'_>, build: F) -> ProviderResult<Response>
    where
        F: Fn() -> Fut,
        Fut: Future<Output = ProviderResult<Request>>,
    {
        self.run(call, Mode::Raw, build).await
    }

    /// `send_raw` for a request that exists already: it is cloned for each attempt, or, if
    /// its body is a stream, sent once.
    pub async fn send_raw_request(&self, call: Call<'_>, req: Request) -> ProviderResult<Response> {
        if req.try_clone().is_none() {
            // One attempt; a reply retrying could have improved on is returned as it is.
            let once = RetryPolicy {
                max_attempts: 1,
                ..self.retry.clone()
            };
            let req = std::sync::Mutex::new(Some(req));
            let what = call.what;
            return self
                .run_with(&once, call, Mode::Raw, || {
                    let next = req.lock().unwrap().take().ok_or_else(|| {
                        ProviderError::Transient(format!(
                            "{what}: a streamed body cannot be sent twice"
                        ))
                    });
                    std::future::ready(next)
                })
                .await;
        }
        self.run(call, Mode::Raw, || {
            let next = req.try_clone().expect("checked above");
            async move { Ok(next) }
        })
        .await
    }

    /// `send` with a single attempt: for callers with their own recovery, such as an upload
    /// session that asks the server where it stands before sending more.
    pub async fn send_once<F>(&self, call: Call<'_>, build: F) -> ProviderResult<Response>
    where
        F: Fn() -> ProviderResult<Request>,
    {
        let once = RetryPolicy {
            max_attempts: 1,
            ..self.retry.clone()
        };
        self.run_with(&once, call, Mode::Checked, || std::future::ready(build()))
            .await
    }

    /// `send` and decode a JSON reply (read whole, as [`ApiClient::send_whole`] does).
    pub async fn json<T, F, Fut>(&self, call: Call<'_>, build: F) -> ProviderResult<T>
    where
        T: serde::de::DeserializeOwned,
        F: Fn() -> Fut,
        Fut: Future<Output = ProviderResult<Request>>,
    {
        let what = call.what;
        let reply = self.send_whole(call, build).await?;
        serde_json::from_slice(&reply.body)
            .map_err(|e| ProviderError::Protocol(format!("{what}: unexpected reply: {e}")))
    }

    /// `send`, with the body read as part of each attempt. A reply cut in its body leaves
    /// the outcome as uncertain as a connection cut before the headers: it is asked for
    /// again when the request may be repeated, under the same retry policy, instead of
    /// failing the caller (a listing or a ranged read during a flaky network).
    pub async fn send_whole<F, Fut>(&self, call: Call<'_>, build: F) -> ProviderResult<WholeReply>
    where
        F: Fn() -> Fut,
        Fut: Future<Output = ProviderResult<Request>>,
    {
        let what = call.what;
        self.attempts(&self.retry, call, Mode::Checked, build, |a| {
            read_whole(a, what)
        })
        .await
    }

    /// `send_raw` with the body read as part of each attempt (see `send_whole`): any
    /// status retrying did not improve on is returned, with its body.
    pub async fn send_raw_whole<F, Fut>(
        &self,
        call: Call<'_>,
        build: F,
    ) -> ProviderResult<WholeReply>
    where
        F: Fn() -> Fut,
        Fut: Future<Output = ProviderResult<Request>>,
    {
        let what = call.what;
        self.attempts(&self.retry, call, Mode::Raw, build, |a| read_whole(a, what))
            .await
    }

    /// The error a non-2xx reply stands for, read with the service's error parser.
    pub async fn error_of(&self, resp: Response, what: &str) -> ProviderError {
        let status = resp.status();
        let headers = resp.headers().clone();
        let body = if status.is_redirection() {
            Bytes::new()
        } else {
            match read_error_body(resp, what).await {
                Ok(b) => b,
                Err(cut) => return cut,
            }
        };
        self.error_from(status, &headers, &body, what)
    }

    /// [`ApiClient::error_of`] for a reply read whole.
    pub fn error_of_whole(&self, reply: &WholeReply, what: &str) -> ProviderError {
        self.error_from(reply.status, &reply.headers, &reply.body, what)
    }

    fn error_from(
        &self,
        status: StatusCode,
        headers: &reqwest::header::HeaderMap,
        body: &[u8],
        what: &str,
    ) -> ProviderError {
        if status.is_redirection() {
            // Only the origin: a redirect's path or query may be a credential of its own
            // (pre-authenticated download links carry their token in the path).
            let to = headers
                .get(reqwest::header::LOCATION)
                .and_then(|v| v.to_str().ok())
                .and_then(|l| reqwest::Url::parse(l).ok())
                .map(|u| u.origin().ascii_serialization())
                .unwrap_or_else(|| "elsewhere".into());
            return ProviderError::Protocol(format!(
                "{what}: server redirected ({status}) to {to}; check the configured url"
            ));
        }
        self.classify(status, headers, body, what)
    }

    /// Status, headers and body → error, by the service's rules.
    pub fn classify(
        &self,
        status: StatusCode,
        headers: &reqwest::header::HeaderMap,
        body: &[u8],
        what: &str,
    ) -> ProviderError {
        let detail = self.errors.detail(body);
        self.errors.classify(status, headers, &detail, what)
    }

    async fn run<F, Fut>(&self, call: Call<'_>, mode: Mode, build: F) -> ProviderResult<Response>
    where
        F: Fn() -> Fut,
        Fut: Future<Output = ProviderResult<Request>>,
    {
        self.run_with(&self.retry, call, mode, build).await
    }

    async fn run_with<F, Fut>(
        &self,
        policy: &RetryPolicy,
        call: Call<'_>,
        mode: Mode,
        build: F,
    ) -> ProviderResult<Response>
    where
        F: Fn() -> Fut,
        Fut: Future<Output = ProviderResult<Request>>,
    {
        self.attempts(policy, call, mode, build, |attempt| async { attempt })
            .await
    }

    /// The retry loop. `finish` completes each attempt that got a reply: as it is, or
    /// with its body read (see [`ApiClient::send_whole`]).
    async fn attempts<T, F, Fut, G, GFut>(
        &self,
        policy: &RetryPolicy,
        call: Call<'_>,
        mode: Mode,
        build: F,
        finish: G,
    ) -> ProviderResult<T>
    where
        F: Fn() -> Fut,
        Fut: Future<Output = ProviderResult<Request>>,
        G: Fn(Attempt<Response>) -> GFut,
        GFut: Future<Output = Attempt<T>>,
    {
        let what = call.what;
        // The credential, and whether it was refreshed already, carry over between attempts:
        // one refresh per request, however often it is retried.
        let credential = if call.authenticated {
            self.auth.credential().await?
        } else {
            Credential::None
        };
        let credential = tokio::sync::Mutex::new((credential, false));
        // Known once the first request is built (it may depend on headers the builder sets).
        let idempotency = std::sync::Mutex::new(call.idempotency);
        let first = {
            let req = build().await?;
            let mut idem = idempotency.lock().unwrap();
            if idem.is_none() {
                *idem = Some(idempotency_of(&req));
            }
            std::sync::Mutex::new(Some(req))
        };
        let idem = idempotency.lock().unwrap().expect("set above");
        retry::run(policy, idem, what, || async {
            let mut credential = credential.lock().await;
            loop {
                let ready = first.lock().unwrap().take();
                let mut req = match ready {
                    Some(req) => req,
                    None => match build().await {
                        Ok(req) => req,
                        Err(e) => return Attempt::Done(Err(e)),
                    },
                };
                match credential.0.header() {
                    Ok(Some(value)) => {
                        req.headers_mut().insert(AUTHORIZATION, value);
                    }
                    Ok(None) => {}
                    Err(e) => return Attempt::Done(Err(e)),
                }
                self.cap.wait().await;
                let method = req.method().clone();
                let resp = match self.http.execute(req).await {
                    Ok(resp) => resp,
                    Err(e) => {
                        debug!(what, %method, error = %transport_error(&e, ""), "request failed");
                        let err = transport_error(&e, what);
                        return Attempt::Failed(Failure {
                            effect: Effect::of_transport(&e),
                            retry_after: None,
                            reason: err.to_string(),
                            outcome: Err(err),
                        });
                    }
                };
                let status = resp.status();
                debug!(what, %method, status = status.as_u16(), "reply");
                if status == StatusCode::UNAUTHORIZED && call.authenticated && !credential.1 {
                    match self.auth.rejected(&credential.0).await {
                        Ok(Some(fresh)) => {
                            debug!(
                                what,
                                "credential refused; trying once more with a fresh one"
                            );
                            *credential = (fresh, true);
                            continue;
                        }
                        Ok(None) => {}
                        Err(e) => return Attempt::Done(Err(e)),
                    }
                }
                return finish(self.judge(resp, &call, mode).await).await;
            }
        })
        .await
    }

    /// Whether a reply is the answer, a failure worth retrying, or a final error.
    async fn judge(&self, resp: Response, call: &Call<'_>, mode: Mode) -> Attempt<Response> {
        let status = resp.status();
        let wanted = status.is_success() || call.accept.contains(&status);
        if wanted || (mode == Mode::Raw && status.is_redirection()) {
            return Attempt::Done(Ok(resp));
        }
        match mode {
            // Raw replies keep their body for the caller; only the status decides.
            Mode::Raw => match Effect::of_status(status) {
                Some(effect) => Attempt::Failed(Failure {
                    effect,
                    retry_after: retry_after(resp.headers()),
                    reason: format!("{}: {status}", call.what),
                    outcome: Ok(resp),
                }),
                None => Attempt::Done(Ok(resp)),
            },
            Mode::Checked => {
                let headers = resp.headers().clone();
                let body = match read_error_body(resp, call.what).await {
                    Ok(b) => b,
                    Err(cut) => {
                        return Attempt::Failed(Failure {
                            effect: Effect::Uncertain,
                            retry_after: retry_after(&headers),
                            reason: cut.to_string(),
                            outcome: Err(cut),
                        })
                    }
                };
                let err = self.classify(status, &headers, &body, call.what);
                let effect = match &err {
                    // However the service says "slow down", it did not process the request.
                    ProviderError::RateLimited { .. } => Some(Effect::NotApplied),
                    _ => Effect::of_status(status),
                };
                match effect {
                    Some(effect) => Attempt::Failed(Failure {
                        effect,
                        retry_after: match &err {
                            ProviderError::RateLimited { retry_after } => *retry_after,
                            _ => retry_after(&headers),
                        },
                        reason: err.to_string(),
                        outcome: Err(err),
                    }),
                    None => Attempt::Done(Err(err)),
                }
            }
        }
    }
}

/// A reply read to its end.
#[derive(Debug)]
pub struct WholeReply {
    pub status: StatusCode,
    pub headers: reqwest::header::HeaderMap,
    pub body: Bytes,
}

/// Completes an attempt by reading its reply's body; a body that stops short is a failed
/// attempt whose effect is unknown (the server may have acted before the cut).
async fn read_whole(attempt: Attempt<Response>, what: &str) -> Attempt<WholeReply> {
    async fn read(resp: Response, what: &str) -> ProviderResult<WholeReply> {
        let status = resp.status();
        let headers = resp.headers().clone();
        // A failed reply's body is only read for its error message: capped, as `error_of`.
        let body = if status.is_success() {
            resp.bytes().await.map_err(|e| transport_error(&e, what))?
        } else {
            read_error_body(resp, what).await?
        };
        Ok(WholeReply {
            status,
            headers,
            body,
        })
    }
    match attempt {
        Attempt::Done(Ok(resp)) => match read(resp, what).await {
            Ok(reply) => Attempt::Done(Ok(reply)),
            Err(err) => {
                debug!(what, error = %err, "reply cut in its body");
                Attempt::Failed(Failure {
                    effect: Effect::Uncertain,
                    retry_after: None,
                    reason: err.to_string(),
                    outcome: Err(err),
                })
            }
        },
        Attempt::Done(Err(e)) => Attempt::Done(Err(e)),
        Attempt::Failed(f) => Attempt::Failed(Failure {
            effect: f.effect,
            retry_after: f.retry_after,
            reason: f.reason,
            outcome: match f.outcome {
                Ok(resp) => read(resp, what).await,
                Err(e) => Err(e),
            },
        }),
    }
}

/// At most [`MAX_ERROR_BODY`] bytes of a failed reply's body, or the error saying it was
/// cut before its end: then what the reply meant is unknown (Drive's 403 is a rate limit
/// or a refusal depending on its body), so it is an uncertain outcome like a cut
/// connection, never a classified refusal.
async fn read_error_body(mut resp: Response, what: &str) -> ProviderResult<Bytes> {
    let status = resp.status();
    let mut body = Vec::new();
    while body.len() < MAX_ERROR_BODY {
        match resp.chunk().await {
            Ok(Some(chunk)) => body.extend_from_slice(&chunk),
            Ok(None) => break,
            Err(e) => {
                return Err(ProviderError::Transient(format!(
                    "{what}: {status} reply cut before its body ended: {}",
                    transport_error(&e, "")
                )))
            }
        }
    }
    body.truncate(MAX_ERROR_BODY);
    Ok(Bytes::from(body))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::provider::kit::auth::Authenticator;
    use crate::provider::kit::errors::PlainErrors;
    use async_trait::async_trait;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// A server answering each connection with the next canned reply, recording the
    /// `Authorization` header (or its absence) of each request.
    async fn server(replies: Vec<&'static str>) -> (String, Arc<std::sync::Mutex<Vec<String>>>) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let seen = Arc::new(std::sync::Mutex::new(Vec::new()));
        let log = seen.clone();
        tokio::spawn(async move {
            for reply in replies {
                let (mut sock, _) = listener.accept().await.unwrap();
                let mut buf = vec![0u8; 8192];
                let mut got = Vec::new();
                while !got.windows(4).any(|w| w == b"\r\n\r\n") {
                    let n = sock.read(&mut buf).await.unwrap();
                    if n == 0 {
                        break;
                    }
                    got.extend_from_slice(&buf[..n]);
                }
                let head = String::from_utf8_lossy(&got).to_lowercase();
                let auth = head
                    .lines()
                    .find_map(|l| l.strip_prefix("authorization: "))
                    .unwrap_or("-")
                    .trim()
                    .to_owned();
                log.lock().unwrap().push(auth);
                sock.write_all(reply.as_bytes()).await.unwrap();
                sock.shutdown().await.ok();
            }
        });
        (format!("http://{addr}/x"), seen)
    }

    /// Tokens "t1", "t2", ... : each refusal mints the next.
    struct Minting(AtomicUsize);

    #[async_trait]
    impl Authenticator for Minting {
        async fn credential(&self) -> ProviderResult<Credential> {
            let n = self.0.load(Ordering::SeqCst);
            Ok(Credential::Bearer(crate::secrets::Secret::new(format!(
                "t{n}"
            ))))
        }
        async fn rejected(&self, _used: &Credential) -> ProviderResult<Option<Credential>> {
            let n = self.0.fetch_add(1, Ordering::SeqCst) + 1;
            Ok(Some(Credential::Bearer(crate::secrets::Secret::new(
                format!("t{n}"),
            ))))
        }
    }

    fn client(auth: Arc<dyn Authenticator>) -> ApiClient {
        ApiClient::new(
            HttpSettings::new(Duration::from_secs(5)).build().unwrap(),
            auth,
            Arc::new(PlainErrors),
            RetryPolicy {
                max_attempts: 3,
                base_delay: Duration::from_millis(1),
                max_delay: Duration::from_millis(5),
                budget: Duration::from_secs(5),
            },
            0.0,
        )
    }

    const OK: &str = "HTTP/1.1 200 OK\r\ncontent-length: 2\r\nconnection: close\r\n\r\nhi";
    const UNAUTHORIZED: &str =
        "HTTP/1.1 401 Unauthorized\r\ncontent-length: 0\r\nconnection: close\r\n\r\n";
    const BUSY: &str =
        "HTTP/1.1 503 Service Unavailable\r\ncontent-length: 4\r\nconnection: close\r\n\r\nbusy";
    const MISSING: &str =
        "HTTP/1.1 404 Not Found\r\ncontent-length: 7\r\nconnection: close\r\n\r\nno such";

    fn get(c: &ApiClient, url: &str) -> impl Future<Output = ProviderResult<Request>> {
        let req = c.http().get(url).build();
        async move { req.map_err(|e| ProviderError::Protocol(e.to_string())) }
    }

    /// A POST: not safe to repeat after an uncertain outcome.
    fn post(c: &ApiClient, url: &str) -> impl Future<Output = ProviderResult<Request>> {
        let req = c.http().post(url).build();
        async move { req.map_err(|e| ProviderError::Protocol(e.to_string())) }
    }

    #[tokio::test]
    async fn a_401_gets_one_fresh_credential_and_then_stands() {
        let (url, seen) = server(vec![UNAUTHORIZED, OK]).await;
        let c = client(Arc::new(Minting(AtomicUsize::new(1))));
        let resp = c.send(Call::new("get"), || get(&c, &url)).await.unwrap();
        assert_eq!(resp.text().await.unwrap(), "hi");
        assert_eq!(*seen.lock().unwrap(), vec!["bearer t1", "bearer t2"]);

        let (url, seen) = server(vec![UNAUTHORIZED, UNAUTHORIZED, OK]).await;
        let err = c
            .send(Call::new("get"), || get(&c, &url))
            .await
            .unwrap_err();
        assert!(matches!(err, ProviderError::Auth(_)), "{err:?}");
        assert_eq!(seen.lock().unwrap().len(), 2, "one refresh per request");
    }

    #[tokio::test]
    async fn unauthenticated_calls_carry_no_authorization() {
        let (url, seen) = server(vec![OK]).await;
        let c = client(Arc::new(Minting(AtomicUsize::new(1))));
        c.send(Call::new("get").unauthenticated(), || get(&c, &url))
            .await
            .unwrap();
        assert_eq!(*seen.lock().unwrap(), vec!["-"]);
    }

    #[tokio::test]
    async fn a_503_is_retried_and_errors_are_classified_without_the_url() {
        let (url, seen) = server(vec![BUSY, OK]).await;
        let c = client(Arc::new(crate::provider::kit::auth::NoAuth));
        let resp = c.send(Call::new("get"), || get(&c, &url)).await.unwrap();
        assert_eq!(resp.status(), 200);
        assert_eq!(seen.lock().unwrap().len(), 2);

        let (url, _) = server(vec![MISSING]).await;
        let err = c
            .send(Call::new("get"), || get(&c, &url))
            .await
            .unwrap_err();
        assert_eq!(
            err,
            ProviderError::NotFound("get: 404 Not Found: no such".into())
        );

        // Raw mode hands the reply back, body intact.
        let (url, _) = server(vec![MISSING]).await;
        let resp = c
            .send_raw(Call::new("get"), || get(&c, &url))
            .await
            .unwrap();
        assert_eq!(resp.status(), 404);
        assert_eq!(resp.text().await.unwrap(), "no such");

        // Nobody listens: the error names the operation, not the URL.
        let dead = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            format!("http://{}/secret-path?sig=abc", l.local_addr().unwrap())
        };
        let err = c
            .send(Call::new("get"), || get(&c, &dead))
            .await
            .unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains("get: "), "{msg}");
        assert!(
            !msg.contains("secret-path") && !msg.contains("sig=abc"),
            "{msg}"
        );
    }

    /// Headers promising 10 bytes, then 3 and the connection closed.
    const CUT_BODY: &str = "HTTP/1.1 200 OK\r\ncontent-length: 10\r\nconnection: close\r\n\r\n{\"a";
    const JSON: &str =
        "HTTP/1.1 200 OK\r\ncontent-length: 8\r\nconnection: close\r\n\r\n{\"a\": 1}";

    #[derive(serde::Deserialize, Debug, PartialEq)]
    struct A {
        a: u32,
    }

    #[tokio::test]
    async fn a_body_cut_halfway_is_asked_again_only_when_that_is_safe() {
        let c = client(Arc::new(crate::provider::kit::auth::NoAuth));
        // A GET whose reply stops short is sent again, and the second reply is read.
        let (url, seen) = server(vec![CUT_BODY, JSON]).await;
        let a: A = c.json(Call::new("get"), || get(&c, &url)).await.unwrap();
        assert_eq!(a, A { a: 1 });
        assert_eq!(seen.lock().unwrap().len(), 2);

        // Raw mode too (WebDAV's PROPFIND), with the body in the reply.
        let (url, seen) = server(vec![CUT_BODY, MISSING]).await;
        let reply = c
            .send_raw_whole(Call::new("get"), || get(&c, &url))
            .await
            .unwrap();
        assert_eq!(
            (reply.status.as_u16(), &reply.body[..]),
            (404, &b"no such"[..])
        );
        assert_eq!(seen.lock().unwrap().len(), 2);

        // A POST may have acted before the cut: not repeated, the caller learns why.
        let (url, seen) = server(vec![CUT_BODY, JSON]).await;
        let err = c
            .json::<A, _, _>(Call::new("create"), || post(&c, &url))
            .await
            .unwrap_err();
        assert!(matches!(err, ProviderError::Transient(_)), "{err:?}");
        assert_eq!(seen.lock().unwrap().len(), 1);

        // Cut every time: the retry policy's attempts, then the error.
        let (url, seen) = server(vec![CUT_BODY, CUT_BODY, CUT_BODY]).await;
        let err = c
            .json::<A, _, _>(Call::new("get"), || get(&c, &url))
            .await
            .unwrap_err();
        assert!(matches!(err, ProviderError::Transient(_)), "{err:?}");
        assert_eq!(seen.lock().unwrap().len(), 3);
    }

    /// A 403 whose body stops short: the reason (rate limit or refusal) never arrived.
    const CUT_403: &str =
        "HTTP/1.1 403 Forbidden\r\ncontent-length: 60\r\nconnection: close\r\n\r\n{\"error\": {\"errors\"";

    #[tokio::test]
    async fn an_error_reply_cut_in_its_body_is_uncertain_not_a_refusal() {
        let c = client(Arc::new(crate::provider::kit::auth::NoAuth));
        // Safe to repeat: asked again, and the second answer counts.
        let (url, seen) = server(vec![CUT_403, OK]).await;
        let resp = c.send(Call::new("get"), || get(&c, &url)).await.unwrap();
        assert_eq!(resp.status(), 200);
        assert_eq!(seen.lock().unwrap().len(), 2);
        // Not safe to repeat: the caller hears "uncertain", never "permission denied".
        let (url, seen) = server(vec![CUT_403, OK]).await;
        let err = c
            .send(Call::new("create"), || post(&c, &url))
            .await
            .unwrap_err();
        assert!(matches!(err, ProviderError::Transient(_)), "{err:?}");
        assert_eq!(seen.lock().unwrap().len(), 1);
        // Raw replies read for their error say the same.
        let (url, _) = server(vec![CUT_403]).await;
        let resp = c
            .send_raw(
                Call::new("get").idempotency(Idempotency::NotIdempotent),
                || get(&c, &url),
            )
            .await
            .unwrap();
        let err = c.error_of(resp, "get").await;
        assert!(matches!(err, ProviderError::Transient(_)), "{err:?}");
    }
}
