//! A minimal HTTP/1.1 client for the dashboard's tests and bench: GET with
//! a chosen `Host`, and a reader of server-sent events. Enough for a
//! local server; not a general client.

use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

/// A response: status, headers (lower-cased names), body.
#[derive(Debug)]
pub struct Response {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: String,
}

impl Response {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }
}

/// `http://127.0.0.1:port/` → `127.0.0.1:port`.
pub fn authority(url: &str) -> String {
    url.trim_start_matches("http://")
        .split('/')
        .next()
        .unwrap_or_default()
        .to_owned()
}

/// GET `path` from `authority` with its own `Host`.
pub async fn get(authority: &str, path: &str) -> std::io::Result<Response> {
    get_as(authority, path, authority).await
}

/// GET `path` from `authority` with extra header lines (`Name: value`).
pub async fn get_with(authority: &str, path: &str, headers: &[&str]) -> std::io::Result<Response> {
    let extra: String = headers.iter().map(|h| format!("{h}\r\n")).collect();
    match tokio::time::timeout(TIMEOUT, request(authority, path, authority, &extra)).await {
        Ok(response) => response,
        Err(_) => Err(std::io::Error::other(format!(
            "GET {path} from {authority}: no answer within {TIMEOUT:?}"
        ))),
    }
}

/// How long one request may take.
const TIMEOUT: Duration = Duration::from_secs(30);

async fn head(stream: &mut BufReader<TcpStream>) -> std::io::Result<(u16, Vec<(String, String)>)> {
    let mut line = String::new();
    stream.read_line(&mut line).await?;
    let status = line
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| std::io::Error::other(format!("bad status line {line:?}")))?;
    let mut headers = Vec::new();
    loop {
        let mut line = String::new();
        if stream.read_line(&mut line).await? == 0 {
            break;
        }
        let line = line.trim_end();
        if line.is_empty() {
            break;
        }
        if let Some((name, value)) = line.split_once(':') {
            headers.push((name.trim().to_ascii_lowercase(), value.trim().to_owned()));
        }
    }
    Ok((status, headers))
}

async fn send(
    authority: &str,
    path: &str,
    host: &str,
    extra: &str,
) -> std::io::Result<BufReader<TcpStream>> {
    let mut stream = TcpStream::connect(authority).await?;
    let request = format!(
        "GET {path} HTTP/1.1\r\nHost: {host}\r\nAccept: */*\r\n{extra}Connection: close\r\n\r\n"
    );
    stream.write_all(request.as_bytes()).await?;
    Ok(BufReader::new(stream))
}

/// GET `path` from `authority`, saying `Host: host`.
pub async fn get_as(authority: &str, path: &str, host: &str) -> std::io::Result<Response> {
    match tokio::time::timeout(TIMEOUT, request(authority, path, host, "")).await {
        Ok(response) => response,
        Err(_) => Err(std::io::Error::other(format!(
            "GET {path} from {authority}: no answer within {TIMEOUT:?}"
        ))),
    }
}

async fn request(
    authority: &str,
    path: &str,
    host: &str,
    extra: &str,
) -> std::io::Result<Response> {
    let mut stream = send(authority, path, host, extra).await?;
    let (status, headers) = head(&mut stream).await?;
    let chunked = headers
        .iter()
        .any(|(n, v)| n == "transfer-encoding" && v.contains("chunked"));
    let length = headers
        .iter()
        .find(|(n, _)| n == "content-length")
        .and_then(|(_, v)| v.parse::<usize>().ok());
    let mut body = Vec::new();
    if chunked {
        let mut chunks = Chunks { stream };
        while let Some(chunk) = chunks.next().await? {
            body.extend_from_slice(&chunk);
        }
    } else if let Some(length) = length {
        // Some servers keep the connection open despite `Connection: close`.
        body.resize(length, 0);
        stream.read_exact(&mut body).await?;
    } else {
        stream.read_to_end(&mut body).await?;
    }
    Ok(Response {
        status,
        headers,
        body: String::from_utf8_lossy(&body).into_owned(),
    })
}

/// The chunks of a chunked body.
struct Chunks {
    stream: BufReader<TcpStream>,
}

impl Chunks {
    async fn next(&mut self) -> std::io::Result<Option<Vec<u8>>> {
        let mut size = String::new();
        if self.stream.read_line(&mut size).await? == 0 {
            return Ok(None);
        }
        let size = usize::from_str_radix(size.trim().split(';').next().unwrap_or(""), 16)
            .map_err(|_| std::io::Error::other(format!("bad chunk size {size:?}")))?;
        if size == 0 {
            return Ok(None);
        }
        let mut chunk = vec![0; size + 2];
        self.stream.read_exact(&mut chunk).await?;
        chunk.truncate(size);
        Ok(Some(chunk))
    }
}

/// A stream of server-sent events.
pub struct Events {
    chunks: Chunks,
    /// Bytes received and not yet returned (a chunk may split a character).
    pending: Vec<u8>,
}

impl Events {
    /// Opens `path` (`/api/events`) on `authority`.
    pub async fn open(authority: &str, path: &str) -> std::io::Result<Events> {
        let mut stream = send(authority, path, authority, "").await?;
        let (status, headers) = head(&mut stream).await?;
        let is_events = headers
            .iter()
            .any(|(n, v)| n == "content-type" && v.starts_with("text/event-stream"));
        if status != 200 || !is_events {
            return Err(std::io::Error::other(format!(
                "not an event stream: {status} {headers:?}"
            )));
        }
        Ok(Events {
            chunks: Chunks { stream },
            pending: Vec::new(),
        })
    }

    /// The next event: its name and data (comments and keep-alives skipped).
    pub async fn next(&mut self) -> std::io::Result<Option<(String, String)>> {
        loop {
            while let Some(end) = self.pending.windows(2).position(|w| w == b"\n\n") {
                let bytes: Vec<u8> = self.pending.drain(..end + 2).collect();
                let block = String::from_utf8_lossy(&bytes);
                let mut name = String::from("message");
                let mut data = Vec::new();
                for line in block.lines() {
                    if let Some(v) = line.strip_prefix("event:") {
                        name = v.trim().to_owned();
                    } else if let Some(v) = line.strip_prefix("data:") {
                        data.push(v.strip_prefix(' ').unwrap_or(v).to_owned());
                    }
                }
                if !data.is_empty() {
                    return Ok(Some((name, data.join("\n"))));
                }
            }
            match self.chunks.next().await? {
                Some(chunk) => self.pending.extend_from_slice(&chunk),
                None => return Ok(None),
            }
        }
    }

    /// The next event, or an error after `within`.
    pub async fn next_within(&mut self, within: Duration) -> std::io::Result<(String, String)> {
        match tokio::time::timeout(within, self.next()).await {
            Ok(Ok(Some(event))) => Ok(event),
            Ok(Ok(None)) => Err(std::io::Error::other("the event stream ended")),
            Ok(Err(err)) => Err(err),
            Err(_) => Err(std::io::Error::other(format!("no event within {within:?}"))),
        }
    }
}
