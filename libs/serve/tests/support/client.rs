//! A small HTTP/1.1 client on one keep-alive connection, for the tests and
//! the load generator of the bench: no client library, so the load it
//! adds is the same for every server measured.

use std::io;
use std::net::SocketAddr;

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

/// A response: its status and body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    pub status: u16,
    pub body: Vec<u8>,
}

impl Reply {
    /// The body as text (lossy).
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// One connection.
pub struct Conn {
    stream: BufReader<TcpStream>,
    request: Vec<u8>,
    line: String,
}

fn bad(what: impl Into<String>) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, what.into())
}

impl Conn {
    /// Connects to `addr`.
    pub async fn connect(addr: SocketAddr) -> io::Result<Self> {
        let stream = TcpStream::connect(addr).await?;
        stream.set_nodelay(true)?;
        Ok(Self {
            stream: BufReader::new(stream),
            request: Vec::with_capacity(256),
            line: String::with_capacity(128),
        })
    }

    /// Sends one request and reads its response.
    pub async fn send(&mut self, method: &str, path: &str, body: &[u8]) -> io::Result<Reply> {
        self.request.clear();
        self.request.extend_from_slice(
            format!(
                "{method} {path} HTTP/1.1\r\nhost: test\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n",
                body.len()
            )
            .as_bytes(),
        );
        self.request.extend_from_slice(body);
        self.stream.get_mut().write_all(&self.request).await?;
        self.read_reply().await
    }

    /// `POST path` with a JSON body.
    pub async fn post(&mut self, path: &str, body: &str) -> io::Result<Reply> {
        self.send("POST", path, body.as_bytes()).await
    }

    /// `GET path`.
    pub async fn get(&mut self, path: &str) -> io::Result<Reply> {
        self.send("GET", path, b"").await
    }

    async fn read_reply(&mut self) -> io::Result<Reply> {
        self.line.clear();
        if self.stream.read_line(&mut self.line).await? == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "the server closed the connection",
            ));
        }
        let status: u16 = self
            .line
            .split(' ')
            .nth(1)
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| bad(format!("bad status line {:?}", self.line)))?;
        let mut length = None;
        let mut chunked = false;
        loop {
            self.line.clear();
            self.stream.read_line(&mut self.line).await?;
            let header = self.line.trim_end();
            if header.is_empty() {
                break;
            }
            if let Some((name, value)) = header.split_once(':') {
                let (name, value) = (name.trim(), value.trim());
                if name.eq_ignore_ascii_case("content-length") {
                    length = Some(value.parse::<usize>().map_err(|e| bad(e.to_string()))?);
                } else if name.eq_ignore_ascii_case("transfer-encoding")
                    && value.eq_ignore_ascii_case("chunked")
                {
                    chunked = true;
                }
            }
        }
        let mut body = Vec::new();
        if let Some(n) = length {
            body.resize(n, 0);
            self.stream.read_exact(&mut body).await?;
        } else if chunked {
            loop {
                self.line.clear();
                self.stream.read_line(&mut self.line).await?;
                let n = usize::from_str_radix(self.line.trim(), 16)
                    .map_err(|e| bad(format!("bad chunk size: {e}")))?;
                let start = body.len();
                body.resize(start + n + 2, 0);
                self.stream.read_exact(&mut body[start..]).await?;
                body.truncate(start + n);
                if n == 0 {
                    break;
                }
            }
        }
        Ok(Reply { status, body })
    }
}

/// One request on a fresh connection.
pub async fn post(addr: SocketAddr, path: &str, body: &str) -> io::Result<Reply> {
    Conn::connect(addr).await?.post(path, body).await
}

/// One GET on a fresh connection.
pub async fn get(addr: SocketAddr, path: &str) -> io::Result<Reply> {
    Conn::connect(addr).await?.get(path).await
}
