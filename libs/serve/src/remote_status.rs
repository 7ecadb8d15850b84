//! `serve status` from another process: reads a running proxy's
//! `/-/status` over HTTP/1.1, for a binary's command line.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::error::ServeError;
use crate::status::ServeStatus;

/// The largest status answer read.
const MAX_STATUS_BYTES: u64 = 16 << 20;

/// Asks the proxy at `addr` for its [`ServeStatus`], within `timeout`:
/// what a binary's `serve status` command calls.
pub async fn fetch_status(addr: SocketAddr, timeout: Duration) -> Result<ServeStatus, ServeError> {
    let failed = |problem: String| ServeError::Status {
        addr: addr.to_string(),
        problem,
    };
    let exchange = async {
        let mut stream = tokio::net::TcpStream::connect(addr)
            .await
            .map_err(|e| failed(format!("cannot connect: {e}")))?;
        stream
            .write_all(b"GET /-/status HTTP/1.1\r\nhost: troupe\r\nconnection: close\r\n\r\n")
            .await
            .map_err(|e| failed(format!("cannot send the request: {e}")))?;
        let mut answer = Vec::new();
        stream
            .take(MAX_STATUS_BYTES)
            .read_to_end(&mut answer)
            .await
            .map_err(|e| failed(format!("cannot read the answer: {e}")))?;
        Ok::<_, ServeError>(answer)
    };
    let answer = tokio::time::timeout(timeout, exchange)
        .await
        .map_err(|_| failed(format!("no answer within {timeout:?}")))??;
    parse(&answer).map_err(failed)
}

/// The status from a whole HTTP/1.1 answer (`connection: close`).
fn parse(answer: &[u8]) -> Result<ServeStatus, String> {
    let split = answer
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or("the answer has no end of headers (is this a troupe-serve proxy?)")?;
    let head = String::from_utf8_lossy(&answer[..split]);
    let status_line = head.lines().next().unwrap_or_default();
    if status_line.split(' ').nth(1) != Some("200") {
        return Err(format!("the proxy answered {status_line:?}"));
    }
    let mut body = answer[split + 4..].to_vec();
    if head.lines().any(|l| {
        l.to_ascii_lowercase().starts_with("transfer-encoding:")
            && l.to_ascii_lowercase().contains("chunked")
    }) {
        body = dechunk(&body)?;
    }
    serde_json::from_slice(&body).map_err(|e| format!("the status is not valid JSON: {e}"))
}

/// Joins a chunked body.
fn dechunk(mut body: &[u8]) -> Result<Vec<u8>, String> {
    let mut out = Vec::new();
    loop {
        let line_end = body
            .windows(2)
            .position(|w| w == b"\r\n")
            .ok_or("a chunk size line is cut short")?;
        let size = std::str::from_utf8(&body[..line_end])
            .ok()
            .and_then(|s| usize::from_str_radix(s.trim(), 16).ok())
            .ok_or("a chunk size is not hexadecimal")?;
        body = &body[line_end + 2..];
        if size == 0 {
            return Ok(out);
        }
        let chunk = body.get(..size).ok_or("a chunk is cut short")?;
        out.extend_from_slice(chunk);
        body = body.get(size + 2..).ok_or("a chunk is cut short")?;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_plain_and_chunked_answers_and_refuses_others() {
        let json = r#"{"proxy":null,"deployments":[]}"#;
        let plain = format!(
            "HTTP/1.1 200 OK\r\ncontent-length: {}\r\n\r\n{json}",
            json.len()
        );
        assert_eq!(parse(plain.as_bytes()).unwrap().deployments, vec![]);
        let chunked = format!(
            "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\n{}\r\n{:x}\r\n{}\r\n0\r\n\r\n",
            &json[..5],
            json.len() - 5,
            &json[5..]
        );
        assert_eq!(parse(chunked.as_bytes()).unwrap().proxy, None);
        let refused = parse(b"HTTP/1.1 404 Not Found\r\n\r\n").unwrap_err();
        assert!(refused.contains("404"), "{refused}");
        assert!(parse(b"garbage").unwrap_err().contains("end of headers"));
    }
}
