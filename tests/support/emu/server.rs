//! An HTTP/1.1 server for emulators: requests in, [`Reply`]s out, everything logged.
//!
//! The server runs on its own runtime thread, so synchronous and asynchronous tests use it
//! alike; the handler is a plain closure called off the runtime's workers (emulators keep
//! their state behind a mutex and may touch the disk). Connections are kept alive between
//! requests as a real server's are, since clients pool them.

use std::convert::Infallible;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{combinators::BoxBody, BodyExt, Full, StreamBody};
use hyper::body::Frame;

/// One request as the handler sees it: the body read in full.
#[derive(Debug, Clone)]
pub struct Request {
    pub method: String,
    /// The raw request target: percent-encoded path and query.
    pub path: String,
    pub headers: Vec<(String, String)>,
    pub body: Bytes,
}

/// The first value of header `name` (case-insensitive) in a header list.
fn first_header<'a>(headers: &'a [(String, String)], name: &str) -> Option<&'a str> {
    headers
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.as_str())
}

impl Request {
    /// The first value of header `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        first_header(&self.headers, name)
    }

    /// The path without the query.
    pub fn path_only(&self) -> &str {
        self.path.split('?').next().unwrap_or("")
    }
}

/// What the request log keeps of a request (not its body, which can be megabytes).
#[derive(Debug, Clone)]
pub struct LoggedRequest {
    pub method: String,
    pub path: String,
    pub headers: Vec<(String, String)>,
    pub body_len: usize,
}

impl LoggedRequest {
    /// The first value of header `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        first_header(&self.headers, name)
    }
}

/// A response: status, headers, body. `Content-Length` is set from the body.
#[derive(Debug, Clone)]
pub struct Response {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Response {
    pub fn new(status: u16, body: impl Into<Vec<u8>>) -> Response {
        Response {
            status,
            headers: Vec::new(),
            body: body.into(),
        }
    }

    pub fn header(mut self, name: &str, value: impl Into<String>) -> Response {
        self.headers.push((name.to_owned(), value.into()));
        self
    }
}

/// What the server does with a request.
#[derive(Debug, Clone)]
pub enum Reply {
    Send(Response),
    /// Close the connection without a reply (as when a server or a proxy dies mid-request).
    Drop,
    /// Send the status, the headers (with the full `Content-Length`) and the first `n`
    /// bytes of the body, then close the connection.
    Cut(Response, usize),
    /// Wait, then reply.
    After(Duration, Box<Reply>),
}

impl From<Response> for Reply {
    fn from(r: Response) -> Reply {
        Reply::Send(r)
    }
}

type Handler = dyn Fn(&Request) -> Reply + Send + Sync;
type Body = BoxBody<Bytes, std::io::Error>;

/// Makes hyper close the connection instead of answering.
#[derive(Debug)]
struct CloseConnection;

impl std::fmt::Display for CloseConnection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("connection closed by the emulator")
    }
}

impl std::error::Error for CloseConnection {}

/// A running server; stops when dropped.
pub struct Server {
    /// `http://127.0.0.1:PORT`
    pub base: String,
    pub addr: std::net::SocketAddr,
    log: Arc<Mutex<Vec<LoggedRequest>>>,
    rt: Option<tokio::runtime::Runtime>,
}

impl Server {
    pub fn start(handler: impl Fn(&Request) -> Reply + Send + Sync + 'static) -> Server {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .max_blocking_threads(16)
            .thread_name("emulator")
            .enable_all()
            .build()
            .expect("emulator runtime");
        // Bound without `block_on`, which a test already inside a runtime cannot call.
        let std_listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind emulator");
        std_listener.set_nonblocking(true).unwrap();
        let addr = std_listener.local_addr().unwrap();
        let listener = {
            let _inside = rt.enter();
            tokio::net::TcpListener::from_std(std_listener).unwrap()
        };
        let log = Arc::new(Mutex::new(Vec::new()));
        let handler: Arc<Handler> = Arc::new(handler);
        let (h, l) = (handler.clone(), log.clone());
        rt.spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let (h, l) = (h.clone(), l.clone());
                tokio::spawn(async move {
                    let svc =
                        hyper::service::service_fn(move |req| serve(h.clone(), l.clone(), req));
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(hyper_util::rt::TokioIo::new(stream), svc)
                        .await;
                });
            }
        });
        Server {
            base: format!("http://{addr}"),
            addr,
            log,
            rt: Some(rt),
        }
    }

    /// Every request so far, in arrival order.
    pub fn requests(&self) -> Vec<LoggedRequest> {
        self.log.lock().unwrap().clone()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(rt) = self.rt.take() {
            rt.shutdown_background();
        }
    }
}

async fn serve(
    handler: Arc<Handler>,
    log: Arc<Mutex<Vec<LoggedRequest>>>,
    req: hyper::Request<hyper::body::Incoming>,
) -> Result<hyper::Response<Body>, CloseConnection> {
    let (parts, body) = req.into_parts();
    // A client that stops sending mid-body: nothing to answer.
    let body = body
        .collect()
        .await
        .map_err(|_| CloseConnection)?
        .to_bytes();
    let request = Request {
        method: parts.method.as_str().to_owned(),
        path: parts
            .uri
            .path_and_query()
            .map(|p| p.as_str().to_owned())
            .unwrap_or_else(|| "/".into()),
        headers: parts
            .headers
            .iter()
            .map(|(k, v)| {
                (
                    k.as_str().to_owned(),
                    String::from_utf8_lossy(v.as_bytes()).into_owned(),
                )
            })
            .collect(),
        body,
    };
    log.lock().unwrap().push(LoggedRequest {
        method: request.method.clone(),
        path: request.path.clone(),
        headers: request.headers.clone(),
        body_len: request.body.len(),
    });
    let is_head = request.method == "HEAD";
    let mut reply = tokio::task::spawn_blocking(move || handler(&request))
        .await
        .expect("emulator handler panicked");
    loop {
        match reply {
            Reply::After(wait, next) => {
                tokio::time::sleep(wait).await;
                reply = *next;
            }
            Reply::Drop => return Err(CloseConnection),
            Reply::Send(r) => return Ok(build(r, None, is_head)),
            Reply::Cut(r, n) => return Ok(build(r, Some(n), is_head)),
        }
    }
}

fn build(r: Response, cut_after: Option<usize>, is_head: bool) -> hyper::Response<Body> {
    let mut builder = hyper::Response::builder().status(r.status);
    let mut has_length = false;
    for (k, v) in &r.headers {
        has_length |= k.eq_ignore_ascii_case("content-length");
        builder = builder.header(k.as_str(), v.as_str());
    }
    let no_body = r.status == 204 || r.status == 304 || (100..200).contains(&r.status);
    if !has_length && !no_body {
        builder = builder.header("content-length", r.body.len());
    }
    let body: Body = match cut_after {
        _ if is_head || no_body => Full::new(Bytes::new())
            .map_err(|never: Infallible| match never {})
            .boxed(),
        None => Full::new(Bytes::from(r.body))
            .map_err(|never: Infallible| match never {})
            .boxed(),
        Some(n) => {
            let part = Bytes::from(r.body[..n.min(r.body.len())].to_vec());
            // The error that closes the connection comes a moment after the bytes: hyper
            // flushes what it holds while the body is pending, so the client really gets
            // the headers and the first `n` bytes (an error right behind them made hyper
            // drop the connection with the bytes unsent: a cut before the reply).
            let frames = futures::StreamExt::chain(
                futures::stream::iter(vec![Ok(Frame::data(part))]),
                futures::stream::once(async {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    Err(std::io::Error::other("reply cut by the emulator"))
                }),
            );
            StreamBody::new(frames).boxed()
        }
    };
    builder.body(body).expect("valid response")
}
