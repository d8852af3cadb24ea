//! The one probe of the product: a TCP connect, or an HTTP/1.1 GET (hyper's client, `Connection:
//! close`) whose status must fall into a range. Used by the health checks of services and by
//! `lb register --check`. Every probe ends within its timeout, whatever the backend does.

use std::future::Future;
use std::net::SocketAddr;
use std::time::Duration;

use http_body_util::Empty;
use hyper::body::Bytes;
use hyper::header::{CONNECTION, HOST, USER_AGENT};
use hyper_util::rt::TokioIo;
use thiserror::Error;
use tokio::net::TcpStream;

use crate::model::{HealthCheckKind, HealthCheckSpec};

/// Why a probe failed (logged on a transition, so it says what the operator would check).
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum ProbeError {
    #[error("no answer within {0:?}")]
    Timeout(Duration),
    #[error("connect failed: {0}")]
    Connect(String),
    #[error("HTTP exchange failed: {0}")]
    Io(String),
    #[error("not an HTTP response: {0}")]
    BadResponse(String),
    #[error("HTTP status {status} is outside the expected {low}-{high}")]
    Status { status: u16, low: u16, high: u16 },
}

/// An HTTP probe: `GET path` from `addr` with `Host: host`; up when the status is in `expect`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HttpProbe {
    pub addr: SocketAddr,
    pub host: String,
    pub path: String,
    /// Accepted status codes, both ends included.
    pub expect: (u16, u16),
}

/// Probes `addr` once as `check` says, within `check.timeout_ms`.
pub async fn probe(addr: SocketAddr, check: &HealthCheckSpec) -> Result<(), ProbeError> {
    let timeout = Duration::from_millis(u64::from(check.timeout_ms));
    match check.kind {
        HealthCheckKind::Tcp => within(timeout, probe_tcp(addr)).await,
        HealthCheckKind::Http => {
            let http = HttpProbe {
                addr,
                host: addr.to_string(),
                path: check.path.clone(),
                expect: check.expect,
            };
            within(timeout, http.run()).await
        }
    }
}

/// Runs `probe`, failing with [`ProbeError::Timeout`] when it takes longer than `timeout`.
pub async fn within(
    timeout: Duration,
    probe: impl Future<Output = Result<(), ProbeError>>,
) -> Result<(), ProbeError> {
    tokio::time::timeout(timeout, probe)
        .await
        .unwrap_or(Err(ProbeError::Timeout(timeout)))
}

/// A TCP connect (the connection is closed at once).
pub async fn probe_tcp(addr: SocketAddr) -> Result<(), ProbeError> {
    TcpStream::connect(addr)
        .await
        .map(drop)
        .map_err(|e| ProbeError::Connect(format!("{addr}: {e}")))
}

impl HttpProbe {
    /// One GET on a new connection; unbounded in time (see [`within`]).
    pub async fn run(&self) -> Result<(), ProbeError> {
        let status = self.status().await?;
        let (low, high) = self.expect;
        if (low..=high).contains(&status) {
            Ok(())
        } else {
            Err(ProbeError::Status { status, low, high })
        }
    }

    async fn status(&self) -> Result<u16, ProbeError> {
        let stream = TcpStream::connect(self.addr)
            .await
            .map_err(|e| ProbeError::Connect(format!("{}: {e}", self.addr)))?;
        let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(exchange_error)?;
        let request = hyper::Request::get(self.path.as_str())
            .header(HOST, self.host.as_str())
            .header(USER_AGENT, "lb-health-check")
            .header(CONNECTION, "close")
            .body(Empty::<Bytes>::new())
            .map_err(|e| ProbeError::Io(format!("GET {}: {e}", self.path)))?;
        // The connection is driven here, not spawned, so nothing outlives the probe; the status line
        // is all a probe needs, so the body is never read.
        let status = |r: Result<hyper::Response<_>, hyper::Error>| {
            r.map(|r| r.status().as_u16()).map_err(exchange_error)
        };
        let response = sender.send_request(request);
        tokio::pin!(connection, response);
        tokio::select! {
            biased;
            r = &mut response => status(r),
            // A connection that ends cleanly has handed its response over (or has none).
            ended = &mut connection => match ended {
                Ok(()) => status(response.await),
                Err(e) => Err(exchange_error(e)),
            },
        }
    }
}

fn exchange_error(e: hyper::Error) -> ProbeError {
    if e.is_parse() || e.is_incomplete_message() {
        ProbeError::BadResponse(e.to_string())
    } else {
        ProbeError::Io(e.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
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

    #[tokio::test]
    async fn status_lines() {
        let check = spec(HealthCheckKind::Http);
        for (answer, up) in [
            ("HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n", true),
            ("HTTP/1.0 503 Service Unavailable\r\n\r\n", false),
        ] {
            assert_eq!(
                probe(http_server(answer).await, &check).await.is_ok(),
                up,
                "{answer:?}"
            );
        }
        for junk in ["b0\n", "HTTP/1.1 2000 OK\r\n\r\n", ""] {
            let result = probe(http_server(junk).await, &check).await;
            assert!(
                matches!(result, Err(ProbeError::BadResponse(_))),
                "{junk:?}: {result:?}"
            );
        }
    }

    #[tokio::test]
    async fn the_request_is_a_get_of_the_path_that_asks_to_close() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let server = tokio::spawn(async move {
            let (mut s, _) = listener.accept().await.unwrap();
            let mut head = Vec::new();
            let mut buf = [0u8; 1024];
            while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                let n = s.read(&mut buf).await.unwrap();
                assert!(n > 0, "the request ended early");
                head.extend_from_slice(&buf[..n]);
            }
            s.write_all(b"HTTP/1.1 200 OK\r\n\r\n").await.unwrap();
            String::from_utf8(head).unwrap().to_ascii_lowercase()
        });
        let check = HealthCheckSpec {
            path: "/ready?deep=1".into(),
            ..spec(HealthCheckKind::Http)
        };
        assert_eq!(probe(addr, &check).await, Ok(()));
        let head = server.await.unwrap();
        assert!(head.starts_with("get /ready?deep=1 http/1.1\r\n"), "{head}");
        assert!(head.contains("connection: close\r\n"), "{head}");
        assert!(head.contains(&format!("host: {addr}\r\n")), "{head}");
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
