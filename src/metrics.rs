//! Prometheus metrics on a loopback HTTP endpoint (off unless `metrics_addr` is set).

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::mount_root::MountRoot;
use crate::provider::instrumented::LATENCY_BUCKETS;

fn label(s: &str) -> String {
    s.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// The text exposition format of every connection's counters.
pub fn render(root: &MountRoot) -> String {
    let mut out = String::new();
    let mut section = |name: &str, kind: &str, help: &str, lines: Vec<String>| {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
        for l in lines {
            let _ = writeln!(out, "{l}");
        }
    };
    let conns: Vec<_> = root.connections.values().collect();
    let mut requests = Vec::new();
    let mut latency = Vec::new();
    let mut bytes = Vec::new();
    let mut cache = Vec::new();
    let mut queue = Vec::new();
    let mut retries = Vec::new();
    let mut transfers = Vec::new();
    for c in &conns {
        let n = label(&c.vfs.name);
        let p = c.vfs.provider.kind();
        let m = &c.io.metrics;
        for ((op, outcome), count) in m.requests.lock().unwrap().iter() {
            requests.push(format!(
                "cloudmount_requests_total{{connection=\"{n}\",provider=\"{p}\",op=\"{op}\",outcome=\"{outcome}\"}} {count}"
            ));
        }
        for (op, h) in m.latency.lock().unwrap().iter() {
            for (i, le) in LATENCY_BUCKETS.iter().enumerate() {
                latency.push(format!(
                    "cloudmount_request_duration_seconds_bucket{{connection=\"{n}\",op=\"{op}\",le=\"{le}\"}} {}",
                    h.buckets[i]
                ));
            }
            latency.push(format!(
                "cloudmount_request_duration_seconds_bucket{{connection=\"{n}\",op=\"{op}\",le=\"+Inf\"}} {}",
                h.count
            ));
            latency.push(format!(
                "cloudmount_request_duration_seconds_sum{{connection=\"{n}\",op=\"{op}\"}} {}",
                h.sum
            ));
            latency.push(format!(
                "cloudmount_request_duration_seconds_count{{connection=\"{n}\",op=\"{op}\"}} {}",
                h.count
            ));
        }
        bytes.push(format!(
            "cloudmount_bytes_total{{connection=\"{n}\",direction=\"down\"}} {}",
            m.bytes_down.load(Ordering::Relaxed)
        ));
        bytes.push(format!(
            "cloudmount_bytes_total{{connection=\"{n}\",direction=\"up\"}} {}",
            m.bytes_up.load(Ordering::Relaxed)
        ));
        let st = c.vfs.cache.stats();
        cache.push(format!(
            "cloudmount_cache_hits_total{{connection=\"{n}\"}} {}",
            st.hits
        ));
        cache.push(format!(
            "cloudmount_cache_misses_total{{connection=\"{n}\"}} {}",
            st.misses
        ));
        cache.push(format!(
            "cloudmount_cache_used_bytes{{connection=\"{n}\"}} {}",
            st.used
        ));
        cache.push(format!(
            "cloudmount_cache_quota_bytes{{connection=\"{n}\"}} {}",
            st.quota
        ));
        let jobs = c.vfs.queue.status();
        let running = jobs.iter().filter(|j| j.running).count();
        let failed = jobs.iter().filter(|j| j.failed.is_some()).count();
        let pending = jobs.len() - running - failed;
        for (state, v) in [
            ("pending", pending),
            ("running", running),
            ("failed", failed),
        ] {
            queue.push(format!(
                "cloudmount_queue_jobs{{connection=\"{n}\",state=\"{state}\"}} {v}"
            ));
        }
        retries.push(format!(
            "cloudmount_upload_retries_total{{connection=\"{n}\"}} {}",
            c.vfs.queue.retries()
        ));
        transfers.push(format!(
            "cloudmount_transfers_in_flight{{connection=\"{n}\"}} {}",
            c.io.transfers_in_flight()
        ));
    }
    section(
        "cloudmount_requests_total",
        "counter",
        "Provider requests by operation and outcome.",
        requests,
    );
    section(
        "cloudmount_request_duration_seconds",
        "histogram",
        "Provider request latency.",
        latency,
    );
    section(
        "cloudmount_bytes_total",
        "counter",
        "Bytes transferred to and from the provider.",
        bytes,
    );
    section(
        "cloudmount_cache",
        "gauge",
        "Chunk cache hits, misses and use.",
        cache,
    );
    section(
        "cloudmount_queue_jobs",
        "gauge",
        "Write-back jobs by state.",
        queue,
    );
    section(
        "cloudmount_upload_retries_total",
        "counter",
        "Write-back jobs retried after a failure.",
        retries,
    );
    section(
        "cloudmount_transfers_in_flight",
        "gauge",
        "Reads and uploads running now.",
        transfers,
    );
    out
}

/// Serve `GET /metrics` on `addr`, which must be a loopback address: metrics name files
/// and accounts, and are nobody else's business.
pub async fn serve(addr: SocketAddr, root: Arc<MountRoot>) -> std::io::Result<()> {
    if !addr.ip().is_loopback() {
        return Err(std::io::Error::other(format!(
            "metrics_addr {addr} is not a loopback address"
        )));
    }
    let listener = tokio::net::TcpListener::bind(addr).await?;
    tracing::info!(%addr, "metrics endpoint listening");
    loop {
        let (mut sock, _) = listener.accept().await?;
        let root = Arc::clone(&root);
        tokio::spawn(async move {
            // Read the whole request head: it may arrive in pieces.
            let mut buf = Vec::with_capacity(1024);
            let mut piece = [0u8; 1024];
            while !buf.windows(4).any(|w| w == b"\r\n\r\n") && buf.len() < 16 * 1024 {
                match sock.read(&mut piece).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => buf.extend_from_slice(&piece[..n]),
                }
            }
            let req = String::from_utf8_lossy(&buf);
            let (status, body) = if req.starts_with("GET /metrics ") {
                ("200 OK", render(&root))
            } else {
                ("404 Not Found", "not found\n".to_string())
            };
            let resp = format!(
                "HTTP/1.1 {status}\r\nContent-Type: text/plain; version=0.0.4\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            );
            let _ = sock.write_all(resp.as_bytes()).await;
        });
    }
}
