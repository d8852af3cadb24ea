//! One probe of one backend: a TCP connect, or an HTTP GET whose status must fall into a range.
//! Every probe ends within its timeout, whatever the backend does.

use std::net::SocketAddr;
use std::time::Duration;

use thiserror::Error;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;

use crate::model::{HealthCheckKind, HealthCheckSpec};

/// The most of an HTTP response a probe reads: the status line is all it needs.
const MAX_RESPONSE_HEAD: usize = 1024;

/// Why a probe failed (logged on a transition, so it says what the operator would check).
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum ProbeError {
    #[error("no answer within {0:?}")]
    Timeout(Duration),
    #[error("connect failed: {0}")]
    Connect(String),
    #[error("HTTP exchange failed: {0}")]
    Io(String),
    #[error("not an HTTP response: {0:?}")]
    BadResponse(String),
    #[error("HTTP status {status} is outside the expected {low}-{high}")]
    Status { status: u16, low: u16, high: u16 },
}

/// Probes `addr` once as `check` says, within `check.timeout_ms`.
pub async fn probe(addr: SocketAddr, check: &HealthCheckSpec) -> Result<(), ProbeError> {
    let timeout = Duration::from_millis(u64::from(check.timeout_ms));
    match tokio::time::timeout(timeout, probe_unbounded(addr, check)).await {
        Ok(result) => result,
        Err(_) => Err(ProbeError::Timeout(timeout)),
    }
}

async fn probe_unbounded(addr: SocketAddr, check: &HealthCheckSpec) -> Result<(), ProbeError> {
    let mut stream = TcpStream::connect(addr)
        .await
        .map_err(|e| ProbeError::Connect(e.to_string()))?;
    match check.kind {
        HealthCheckKind::Tcp => Ok(()),
        HealthCheckKind::Http => {
            let request = format!(
                "GET {} HTTP/1.0\r\nHost: {addr}\r\nUser-Agent: lb-health-check\r\nConnection: close\r\n\r\n",
                check.path
            );
            stream
                .write_all(request.as_bytes())
                .await
                .map_err(|e| ProbeError::Io(e.to_string()))?;
            let head = read_status_line(&mut stream).await?;
            let status = parse_status(&head)?;
            let (low, high) = check.expect;
            if (low..=high).contains(&status) {
                Ok(())
            } else {
                Err(ProbeError::Status { status, low, high })
            }
        }
    }
}

/// Reads until the end of the first line (or [`MAX_RESPONSE_HEAD`] bytes, or the end of the stream).
async fn read_status_line(stream: &mut TcpStream) -> Result<String, ProbeError> {
    let mut head = Vec::with_capacity(128);
    let mut buf = [0u8; 256];
    while !head.contains(&b'\n') && head.len() < MAX_RESPONSE_HEAD {
        let n = stream
            .read(&mut buf)
            .await
            .map_err(|e| ProbeError::Io(e.to_string()))?;
        if n == 0 {
            break;
        }
        head.extend_from_slice(&buf[..n]);
    }
    let line = head.split(|b| *b == b'\n').next().unwrap_or_default();
    Ok(String::from_utf8_lossy(line).trim_end().to_owned())
}

/// The status code of an HTTP status line (`HTTP/1.1 200 OK`).
pub fn parse_status(line: &str) -> Result<u16, ProbeError> {
    let bad = || ProbeError::BadResponse(line.chars().take(80).collect());
    let mut parts = line.split_ascii_whitespace();
    let version = parts.next().ok_or_else(bad)?;
    if !version.starts_with("HTTP/") {
        return Err(bad());
    }
    let code = parts.next().ok_or_else(bad)?;
    if code.len() != 3 {
        return Err(bad());
    }
    code.parse().map_err(|_| bad())
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::net::TcpListener;

    fn spec(kind: HealthCheckKind) -> HealthCheckSpec {
        HealthCheckSpec {
            kind,
            timeout_ms: 300,
            ..HealthCheckSpec::default()
        }
    }

    /// A loopback server answering every connection with `response` (after reading the request).
    async fn http_server(response: &'static str) -> SocketAddr {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            while let Ok((mut s, _)) = listener.accept().await {
                let mut buf = [0u8; 1024];
                let _ = s.read(&mut buf).await;
                let _ = s.write_all(response.as_bytes()).await;
            }
        });
        addr
    }

    #[test]
    fn status_lines() {
        assert_eq!(parse_status("HTTP/1.1 200 OK"), Ok(200));
        assert_eq!(parse_status("HTTP/1.0 503 Service Unavailable"), Ok(503));
        assert!(parse_status("b0").is_err());
        assert!(parse_status("HTTP/1.1 2000 OK").is_err());
        assert!(parse_status("").is_err());
    }

    #[tokio::test]
    async fn tcp_probe_passes_on_a_listener_and_fails_on_a_closed_port() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        assert_eq!(probe(addr, &spec(HealthCheckKind::Tcp)).await, Ok(()));
        drop(listener);
        assert!(matches!(
            probe(addr, &spec(HealthCheckKind::Tcp)).await,
            Err(ProbeError::Connect(_))
        ));
    }

    #[tokio::test]
    async fn http_probe_checks_the_status_range() {
        let ok = http_server("HTTP/1.1 204 No Content\r\n\r\n").await;
        let bad = http_server("HTTP/1.1 503 Service Unavailable\r\n\r\n").await;
        let junk = http_server("b0\n").await;
        let check = spec(HealthCheckKind::Http);
        assert_eq!(probe(ok, &check).await, Ok(()));
        assert_eq!(
            probe(bad, &check).await,
            Err(ProbeError::Status {
                status: 503,
                low: 200,
                high: 399
            })
        );
        assert!(matches!(
            probe(junk, &check).await,
            Err(ProbeError::BadResponse(_))
        ));
    }

    #[tokio::test]
    async fn a_silent_server_times_out() {
        // Accepts (the kernel completes the handshake) but never answers.
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let started = std::time::Instant::now();
        let result = probe(addr, &spec(HealthCheckKind::Http)).await;
        assert_eq!(result, Err(ProbeError::Timeout(Duration::from_millis(300))));
        assert!(started.elapsed() < Duration::from_secs(2));
        drop(listener);
    }
}
