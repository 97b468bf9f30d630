//! The operator's side of a node's admin API: one HTTP/1.0 request per call on a fresh
//! connection, bounded in time, with the pool's admin token. Small on purpose: the nodes
//! answer JSON on a pod IP, nothing more is needed.

use std::net::SocketAddr;
use std::time::Duration;

use serde::de::DeserializeOwned;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Largest answer read: a queue report is a few hundred bytes.
const MAX_ANSWER: u64 = 1 << 20;

#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    #[error("no answer from {addr} within {timeout:?}")]
    Timeout { addr: SocketAddr, timeout: Duration },
    #[error("cannot reach {addr}: {source}")]
    Io {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("{addr} answered {status}: {body}")]
    Status {
        addr: SocketAddr,
        status: u16,
        body: String,
    },
    #[error("{addr} answered something that is not a queue report: {reason}")]
    Malformed { addr: SocketAddr, reason: String },
}

/// `method path` on the node at `addr`; the status code and the decoded JSON body.
pub async fn call<T: DeserializeOwned>(
    addr: SocketAddr,
    method: &str,
    path: &str,
    token: &str,
    timeout: Duration,
) -> Result<(u16, T), AdminError> {
    let exchange = async {
        let mut stream = TcpStream::connect(addr).await?;
        let request = format!(
            "{method} {path} HTTP/1.0\r\nHost: {addr}\r\nAuthorization: Bearer {token}\r\n\
             Content-Length: 0\r\n\r\n"
        );
        stream.write_all(request.as_bytes()).await?;
        let mut answer = Vec::new();
        stream.take(MAX_ANSWER).read_to_end(&mut answer).await?;
        Ok::<_, std::io::Error>(answer)
    };
    let answer = tokio::time::timeout(timeout, exchange)
        .await
        .map_err(|_| AdminError::Timeout { addr, timeout })?
        .map_err(|source| AdminError::Io { addr, source })?;
    let (status, body) = parse(&answer).ok_or_else(|| AdminError::Malformed {
        addr,
        reason: "not an HTTP response".into(),
    })?;
    if !(200..300).contains(&status) {
        return Err(AdminError::Status {
            addr,
            status,
            body: String::from_utf8_lossy(body)
                .trim()
                .chars()
                .take(200)
                .collect(),
        });
    }
    let value = serde_json::from_slice(body).map_err(|e| AdminError::Malformed {
        addr,
        reason: e.to_string(),
    })?;
    Ok((status, value))
}

/// The status code and body of an HTTP/1.x response.
fn parse(answer: &[u8]) -> Option<(u16, &[u8])> {
    let end = answer.windows(4).position(|w| w == b"\r\n\r\n")?;
    let head = std::str::from_utf8(&answer[..end]).ok()?;
    let status = head.split(' ').nth(1)?.parse().ok()?;
    Some((status, &answer[end + 4..]))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn responses_are_split_into_status_and_body() {
        let (status, body) =
            parse(b"HTTP/1.1 202 Accepted\r\ncontent-type: application/json\r\n\r\n{\"a\":1}")
                .expect("parsed");
        assert_eq!(status, 202);
        assert_eq!(body, b"{\"a\":1}");
        assert_eq!(parse(b"garbage"), None);
    }

    #[tokio::test]
    async fn a_silent_port_is_a_timeout_not_a_hang() {
        // A listener that accepts and never answers.
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        let _held = tokio::spawn(async move {
            let _conn = listener.accept().await;
            tokio::time::sleep(Duration::from_secs(30)).await;
        });
        let result: Result<(u16, serde_json::Value), _> =
            call(addr, "GET", "/admin/queue", "t", Duration::from_millis(300)).await;
        assert!(
            matches!(result, Err(AdminError::Timeout { .. })),
            "{result:?}"
        );
    }
}
