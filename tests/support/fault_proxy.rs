//! A fault-injecting HTTP reverse proxy on loopback, put between cloudmount and a real
//! server (rclone serve webdav, Apache mod_dav, the Drive emulator) to reproduce what
//! flaky networks and overloaded servers do to a client:
//!
//! - `503` without forwarding (half of them with `Retry-After: 1`), `429` with
//!   `Retry-After`, `500`: the server refused, nothing happened upstream;
//! - a cut **mid-request**: part of the request body reaches the server, then both
//!   connections are aborted. `rclone serve webdav` keeps such a partial body under the
//!   real name, which is exactly the hazard a client must survive;
//! - a cut **mid-response**: the whole request is forwarded (the server acts on it), then
//!   the client connection is dropped after part or none of the reply: "it landed but the
//!   reply was lost", so a retry meets the effect of its own first attempt;
//! - a stall of a few seconds before forwarding, and optionally a fixed delay on every
//!   request.
//!
//! Decisions come from a seeded generator. Requests run concurrently, so which request
//! gets which fault depends on timing; the seed fixes the sequence of decisions.
//!
//! The proxy forwards path and query unchanged to the upstream origin, so a base URL with
//! a path prefix (Apache's `/dav%20root/`) works by swapping only the origin. Headers
//! that carry absolute URLs are rewritten: `Destination` (WebDAV MOVE/COPY) from the
//! proxy's origin to the upstream's, `Location` in replies (Drive's resumable sessions,
//! `201 Created`) back to the proxy's, so that follow-up requests also pass through it.
//!
//! Include with `#[path = "support/fault_proxy.rs"] mod fault_proxy;`.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use futures::StreamExt;
use http_body_util::{combinators::BoxBody, BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::header::{HeaderName, HeaderValue};
use hyper::{Request, Response, StatusCode};

/// The kinds of fault the proxy injects, for counting and for tests that want one kind.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum FaultKind {
    /// 503 answered by the proxy, nothing forwarded.
    Unavailable503,
    /// 503 with `Retry-After: 1`, nothing forwarded.
    Unavailable503RetryAfter,
    /// 429 with `Retry-After: 1`, nothing forwarded.
    TooMany429,
    /// 500 answered by the proxy, nothing forwarded.
    Internal500,
    /// Part of the request body forwarded, then both connections aborted.
    CutMidRequest,
    /// Request forwarded whole, the client connection dropped before any reply.
    CutBeforeResponse,
    /// Request forwarded whole, the client gets the headers and part of the body.
    CutMidResponse,
    /// A few seconds of silence, then the request is forwarded normally.
    Stall,
}

impl FaultKind {
    pub const ALL: [FaultKind; 8] = [
        FaultKind::Unavailable503,
        FaultKind::Unavailable503RetryAfter,
        FaultKind::TooMany429,
        FaultKind::Internal500,
        FaultKind::CutMidRequest,
        FaultKind::CutBeforeResponse,
        FaultKind::CutMidResponse,
        FaultKind::Stall,
    ];

    fn index(self) -> usize {
        Self::ALL.iter().position(|k| *k == self).unwrap()
    }
}

/// What the proxy is told to do; everything can be changed while it runs.
#[derive(Clone, Debug)]
pub struct FaultConfig {
    pub seed: u64,
    /// Probability in [0, 1] that a request gets a fault.
    pub fault_rate: f64,
    /// Relative weights of the kinds among the faulted requests (missing kind: weight 0).
    pub weights: Vec<(FaultKind, u32)>,
    /// Added to every request before it is handled.
    pub delay: Duration,
    /// How long a `Stall` lasts (it is drawn between half of this and all of it).
    pub stall: Duration,
}

impl FaultConfig {
    /// Every kind with equal weight.
    pub fn new(seed: u64, fault_rate: f64) -> Self {
        FaultConfig {
            seed,
            fault_rate,
            weights: FaultKind::ALL.iter().map(|k| (*k, 1)).collect(),
            delay: Duration::ZERO,
            stall: Duration::from_secs(3),
        }
    }
}

/// splitmix64: tiny, seedable, and stable across crate versions (so a seed printed by a
/// failing run means the same sequence of decisions next time).
struct SplitMix(u64);

impl SplitMix {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    fn unit(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }
    fn below(&mut self, n: u64) -> u64 {
        if n == 0 {
            0
        } else {
            self.next() % n
        }
    }
}

struct Shared {
    cfg: Mutex<FaultConfig>,
    rng: Mutex<SplitMix>,
    counts: [AtomicU64; 8],
    requests: AtomicU64,
    /// `http://127.0.0.1:PORT` of the proxy and of the upstream, without a slash.
    proxy_origin: String,
    upstream_origin: String,
    client: reqwest::Client,
}

/// What one request was chosen to suffer.
struct Decision {
    fault: Option<FaultKind>,
    /// For cuts: the fraction of the body that gets through.
    fraction: f64,
    stall: Duration,
    delay: Duration,
}

impl Shared {
    fn decide(&self) -> Decision {
        let cfg = self.cfg.lock().unwrap().clone();
        let mut rng = self.rng.lock().unwrap();
        let mut d = Decision {
            fault: None,
            fraction: rng.unit(),
            stall: cfg.stall / 2
                + Duration::from_millis(rng.below(cfg.stall.as_millis() as u64 / 2 + 1)),
            delay: cfg.delay,
        };
        if rng.unit() < cfg.fault_rate {
            let total: u64 = cfg.weights.iter().map(|(_, w)| *w as u64).sum();
            let mut pick = rng.below(total);
            for (k, w) in &cfg.weights {
                if pick < *w as u64 {
                    d.fault = Some(*k);
                    break;
                }
                pick -= *w as u64;
            }
        }
        d
    }

    fn count(&self, k: FaultKind) {
        self.counts[k.index()].fetch_add(1, Ordering::Relaxed);
    }
}

/// A running proxy. Stops (and aborts what it has in flight) when dropped.
pub struct FaultProxy {
    /// The upstream base URL with the origin swapped for the proxy's: give this to the
    /// client instead of the server's own URL.
    pub url: String,
    pub addr: SocketAddr,
    shared: Arc<Shared>,
    /// The proxy's own runtime, so it works the same under sync and async tests.
    rt: Option<tokio::runtime::Runtime>,
}

/// Hop-by-hop headers (RFC 9110 §7.6.1) and those the HTTP stacks set themselves.
const NOT_FORWARDED: &[&str] = &[
    "connection",
    "keep-alive",
    "proxy-connection",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
    "host",
    "content-length",
];

type ProxyBody = BoxBody<Bytes, std::io::Error>;
type BoxError = Box<dyn std::error::Error + Send + Sync>;

fn full(b: impl Into<Bytes>) -> ProxyBody {
    Full::new(b.into())
        .map_err(|never: Infallible| match never {})
        .boxed()
}

/// Returned by the service to make hyper close the client connection without a reply.
#[derive(Debug)]
struct CutConnection;
impl std::fmt::Display for CutConnection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("connection cut by the fault proxy")
    }
}
impl std::error::Error for CutConnection {}

fn origin_of(url: &str) -> String {
    let u = url::Url::parse(url).expect("upstream URL");
    format!(
        "{}://{}:{}",
        u.scheme(),
        u.host_str().expect("upstream host"),
        u.port_or_known_default().expect("upstream port")
    )
}

impl FaultProxy {
    /// A proxy in front of `upstream_base` (e.g. `http://127.0.0.1:8080/dav%20root/`).
    pub fn start(upstream_base: &str, cfg: FaultConfig) -> FaultProxy {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("fault-proxy")
            .enable_all()
            .build()
            .expect("proxy runtime");
        let listener = rt
            .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
            .expect("bind proxy");
        let addr = listener.local_addr().unwrap();
        let upstream_origin = origin_of(upstream_base);
        let proxy_origin = format!("http://{addr}");
        let url = format!("{proxy_origin}{}", &upstream_base[upstream_origin.len()..]);
        let client = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            // A stalled upstream must not hold the test forever; the client's own
            // timeout is what matters, this only bounds a runaway.
            .timeout(Duration::from_secs(120))
            .build()
            .expect("proxy client");
        let shared = Arc::new(Shared {
            rng: Mutex::new(SplitMix(cfg.seed)),
            cfg: Mutex::new(cfg),
            counts: Default::default(),
            requests: AtomicU64::new(0),
            proxy_origin,
            upstream_origin,
            client,
        });
        let sh = shared.clone();
        rt.spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let sh = sh.clone();
                tokio::spawn(async move {
                    let svc = hyper::service::service_fn(move |req| handle(sh.clone(), req));
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(hyper_util::rt::TokioIo::new(stream), svc)
                        .await;
                });
            }
        });
        FaultProxy {
            url,
            addr,
            shared,
            rt: Some(rt),
        }
    }

    pub fn set_fault_rate(&self, rate: f64) {
        self.shared.cfg.lock().unwrap().fault_rate = rate;
    }

    pub fn set_weights(&self, weights: &[(FaultKind, u32)]) {
        self.shared.cfg.lock().unwrap().weights = weights.to_vec();
    }

    pub fn set_delay(&self, delay: Duration) {
        self.shared.cfg.lock().unwrap().delay = delay;
    }

    pub fn set_stall(&self, stall: Duration) {
        self.shared.cfg.lock().unwrap().stall = stall;
    }

    /// Faults injected so far, by kind (kinds never injected are left out).
    pub fn counts(&self) -> BTreeMap<FaultKind, u64> {
        FaultKind::ALL
            .iter()
            .map(|k| (*k, self.shared.counts[k.index()].load(Ordering::Relaxed)))
            .filter(|(_, n)| *n > 0)
            .collect()
    }

    pub fn total_faults(&self) -> u64 {
        self.counts().values().sum()
    }

    pub fn requests(&self) -> u64 {
        self.shared.requests.load(Ordering::Relaxed)
    }

    /// One line for test output: requests and faults by kind.
    pub fn summary(&self) -> String {
        let kinds: Vec<String> = self
            .counts()
            .iter()
            .map(|(k, n)| format!("{k:?}={n}"))
            .collect();
        format!(
            "{} requests, {} faults [{}]",
            self.requests(),
            self.total_faults(),
            kinds.join(" ")
        )
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        if let Some(rt) = self.rt.take() {
            rt.shutdown_background();
        }
    }
}

async fn handle(sh: Arc<Shared>, req: Request<Incoming>) -> Result<Response<ProxyBody>, BoxError> {
    sh.requests.fetch_add(1, Ordering::Relaxed);
    let d = sh.decide();
    if !d.delay.is_zero() {
        tokio::time::sleep(d.delay).await;
    }
    let refuse = |status: StatusCode, retry_after: bool| {
        let mut r = Response::new(full(format!("fault proxy: {status}\n")));
        *r.status_mut() = status;
        if retry_after {
            r.headers_mut()
                .insert("retry-after", HeaderValue::from_static("1"));
        }
        Ok(r)
    };
    match d.fault {
        Some(k @ FaultKind::Unavailable503) => {
            sh.count(k);
            return refuse(StatusCode::SERVICE_UNAVAILABLE, false);
        }
        Some(k @ FaultKind::Unavailable503RetryAfter) => {
            sh.count(k);
            return refuse(StatusCode::SERVICE_UNAVAILABLE, true);
        }
        Some(k @ FaultKind::TooMany429) => {
            sh.count(k);
            return refuse(StatusCode::TOO_MANY_REQUESTS, true);
        }
        Some(k @ FaultKind::Internal500) => {
            sh.count(k);
            return refuse(StatusCode::INTERNAL_SERVER_ERROR, false);
        }
        Some(k @ FaultKind::Stall) => {
            sh.count(k);
            tokio::time::sleep(d.stall).await;
        }
        _ => {}
    }

    let (parts, body) = req.into_parts();
    // The whole request body first: the largest files of the tests are a few MiB, and a
    // buffered body makes "forward exactly this much of it" simple.
    let body = body.collect().await?.to_bytes();
    let path = parts
        .uri
        .path_and_query()
        .map(|p| p.as_str())
        .unwrap_or("/");
    let target = format!("{}{path}", sh.upstream_origin);
    let method = reqwest::Method::from_bytes(parts.method.as_str().as_bytes())?;
    let mut headers = reqwest::header::HeaderMap::new();
    for (name, value) in parts.headers.iter() {
        if NOT_FORWARDED.contains(&name.as_str()) {
            continue;
        }
        let value = if name.as_str() == "destination" {
            let v = value.to_str().unwrap_or_default();
            match v.strip_prefix(&sh.proxy_origin) {
                Some(rest) => HeaderValue::from_str(&format!("{}{rest}", sh.upstream_origin))?,
                None => value.clone(),
            }
        } else {
            value.clone()
        };
        headers.append(
            reqwest::header::HeaderName::from_bytes(name.as_str().as_bytes())?,
            reqwest::header::HeaderValue::from_bytes(value.as_bytes())?,
        );
    }

    if d.fault == Some(FaultKind::CutMidRequest) {
        sh.count(FaultKind::CutMidRequest);
        // Announce the full length, send a prefix, then fail the body stream: the
        // upstream connection is aborted with the request incomplete.
        let keep = ((body.len() as f64) * d.fraction) as usize;
        let prefix = body.slice(..keep.min(body.len()));
        headers.insert(
            reqwest::header::CONTENT_LENGTH,
            reqwest::header::HeaderValue::from(body.len() as u64),
        );
        let chunks: Vec<Result<Bytes, std::io::Error>> = vec![
            Ok(prefix),
            Err(std::io::Error::other("cut by the fault proxy")),
        ];
        let stream = futures::stream::iter(chunks).then(|c| async move {
            // Give the prefix time to leave before the abort.
            if c.is_err() {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            c
        });
        let _ = sh
            .client
            .request(method, &target)
            .headers(headers)
            .body(reqwest::Body::wrap_stream(stream))
            .send()
            .await;
        return Err(Box::new(CutConnection));
    }

    let upstream = match sh
        .client
        .request(method, &target)
        .headers(headers)
        .body(body)
        .send()
        .await
    {
        Ok(r) => r,
        // The upstream is down or broke the connection: the client sees the same.
        Err(_) => return Err(Box::new(CutConnection)),
    };
    let status = upstream.status().as_u16();
    let mut out_headers = Vec::new();
    for (name, value) in upstream.headers().iter() {
        if NOT_FORWARDED.contains(&name.as_str()) && name.as_str() != "content-length" {
            continue;
        }
        let value = if name.as_str() == "location" {
            let v = value.to_str().unwrap_or_default();
            match v.strip_prefix(&sh.upstream_origin) {
                Some(rest) => HeaderValue::from_str(&format!("{}{rest}", sh.proxy_origin))?,
                None => HeaderValue::from_bytes(value.as_bytes())?,
            }
        } else {
            HeaderValue::from_bytes(value.as_bytes())?
        };
        out_headers.push((HeaderName::from_bytes(name.as_str().as_bytes())?, value));
    }
    let bytes = match upstream.bytes().await {
        Ok(b) => b,
        Err(_) => return Err(Box::new(CutConnection)),
    };

    let cut_at = match d.fault {
        Some(FaultKind::CutBeforeResponse) => {
            sh.count(FaultKind::CutBeforeResponse);
            return Err(Box::new(CutConnection));
        }
        // A body-less reply cannot be cut in its middle: it is lost whole.
        Some(FaultKind::CutMidResponse) if bytes.is_empty() => {
            sh.count(FaultKind::CutMidResponse);
            return Err(Box::new(CutConnection));
        }
        Some(FaultKind::CutMidResponse) => {
            sh.count(FaultKind::CutMidResponse);
            Some(((bytes.len() as f64) * d.fraction) as usize)
        }
        _ => None,
    };
    let body = match cut_at {
        None => full(bytes),
        Some(n) => {
            // The headers and the first part go out (a pause lets them reach the client)
            // before the connection breaks: the client sees a reply cut in its body.
            let head =
                futures::stream::iter(vec![Ok::<_, std::io::Error>(Frame::data(bytes.slice(..n)))]);
            let cut = futures::stream::once(async {
                tokio::time::sleep(Duration::from_millis(30)).await;
                Err(std::io::Error::other("cut by the fault proxy"))
            });
            BodyExt::boxed(StreamBody::new(head.chain(cut)))
        }
    };
    let mut resp = Response::new(body);
    *resp.status_mut() = StatusCode::from_u16(status)?;
    for (n, v) in out_headers {
        resp.headers_mut().append(n, v);
    }
    Ok(resp)
}
