//! Plain HTTP/1.1 requests to a node (health endpoints, status codes,
//! metrics).

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use tokio::net::TcpStream as TokioTcpStream;

/// The status code of `GET PATH` (plain HTTP/1.1, blocking, 2 s at most).
pub(super) fn http_status_blocking(addr: SocketAddr, path: &str) -> Result<u16, String> {
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(2))
        .map_err(|e| format!("connect: {e}"))?;
    let _ = stream.set_read_timeout(Some(Duration::from_secs(2)));
    let request = format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
    stream
        .write_all(request.as_bytes())
        .map_err(|e| format!("write: {e}"))?;
    let mut line = String::new();
    BufReader::new(stream)
        .read_line(&mut line)
        .map_err(|e| format!("read: {e}"))?;
    line.split_whitespace()
        .nth(1)
        .and_then(|code| code.parse().ok())
        .filter(|_| line.starts_with("HTTP/1."))
        .ok_or_else(|| format!("not an HTTP status line: {line:?}"))
}

/// The status code of `GET PATH` on a node's port (plain HTTP/1.1), or the
/// reason there was none (refused, closed, timed out, unparsable).
pub async fn http_status(addr: SocketAddr, path: &str) -> Result<u16, String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let exchange = async {
        let mut stream = TokioTcpStream::connect(addr)
            .await
            .map_err(|e| format!("connect: {e}"))?;
        let request = format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
        stream
            .write_all(request.as_bytes())
            .await
            .map_err(|e| format!("write: {e}"))?;
        let mut head = Vec::new();
        let mut buf = [0u8; 512];
        while !head.windows(2).any(|w| w == b"\r\n") {
            let n = stream
                .read(&mut buf)
                .await
                .map_err(|e| format!("read: {e}"))?;
            if n == 0 {
                return Err(format!(
                    "closed before a status line: {:?}",
                    String::from_utf8_lossy(&head)
                ));
            }
            head.extend_from_slice(&buf[..n]);
        }
        let text = String::from_utf8_lossy(&head).into_owned();
        let line = text.lines().next().unwrap_or_default().to_owned();
        line.split_whitespace()
            .nth(1)
            .and_then(|code| code.parse::<u16>().ok())
            .filter(|_| line.starts_with("HTTP/1."))
            .ok_or_else(|| format!("not an HTTP status line: {line:?}"))
    };
    match tokio::time::timeout(Duration::from_secs(2), exchange).await {
        Ok(result) => result,
        Err(_) => Err("timed out after 2s".to_owned()),
    }
}

/// Polls `GET PATH` until it answers `status`; returns how long that took,
/// or panics with the last answer after `timeout`.
pub async fn wait_for_status(
    addr: SocketAddr,
    path: &str,
    status: u16,
    timeout: Duration,
) -> Duration {
    let start = tokio::time::Instant::now();
    loop {
        let got = http_status(addr, path).await;
        if got == Ok(status) {
            return start.elapsed();
        }
        if start.elapsed() >= timeout {
            panic!("GET {path} on {addr}: still {got:?} after {timeout:?}, expected {status}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// `GET /metrics` of a node (blocking, 5 s at most): the body, after
/// checking the answer is 200.
pub fn scrape_metrics(addr: SocketAddr) -> String {
    let mut stream = TcpStream::connect(addr).expect("connect");
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .expect("timeout");
    stream
        .write_all(b"GET /metrics HTTP/1.1\r\nHost: relay\r\nConnection: close\r\n\r\n")
        .expect("request");
    let mut response = String::new();
    stream.read_to_string(&mut response).expect("response");
    assert!(response.starts_with("HTTP/1.1 200"), "{response}");
    let (_, body) = response.split_once("\r\n\r\n").expect("a response head");
    body.to_owned()
}
