//! Bounds on what one authenticated peer can make a node hold through its
//! ractor_cluster session.
//!
//! ractor_cluster queues without bound: its session reader reads frames as
//! fast as they come and casts each one on (unbounded mailboxes), its
//! writer queues every outgoing message while a write is pending, and a
//! peer's `Spawn` or `PgJoin` makes the node spawn a proxy actor per pid it
//! names. A Troupe node shows its peers exactly one remotable actor (its
//! agent, in one process group), and sessions carry a few small frames a
//! minute (pings, group changes, where a control link listens), so the
//! stream handed to ractor is wrapped in both directions:
//!
//! - [`GuardedRead`] hands ractor whole frames only, each at most
//!   [`SessionLimits::frame_bytes`], at a bounded rate of frames and bytes
//!   (past it the node stops reading: TCP's backpressure, not memory), and
//!   ends the session when the peer names more live remote actors or
//!   process groups than the bound;
//! - [`DeadlineWrite`] ends the session when a write makes no progress for
//!   [`SessionLimits::write_stall`]: a peer that never reads cannot make
//!   the node queue for it forever.
//!
//! Ending a session is what a dropped connection does: the node dials a
//! live member again (and the peer meets the same bounds).

use std::collections::HashSet;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::task::{ready, Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::{Instant, Sleep};

/// What one session's peer may make this node hold.
#[derive(Clone, Debug)]
pub(crate) struct SessionLimits {
    /// The largest frame read (ractor's own framing: `len: u64` + body).
    pub(crate) frame_bytes: usize,
    /// Frames read per second, sustained, and in one burst.
    pub(crate) frames_per_s: f64,
    pub(crate) frame_burst: f64,
    /// Bytes read per second, sustained, and in one burst.
    pub(crate) bytes_per_s: f64,
    pub(crate) byte_burst: f64,
    /// Live remote actors the peer may announce (`Spawn`, `PgJoin`).
    pub(crate) remote_actors: usize,
    /// Process groups the peer may join actors to.
    pub(crate) groups: usize,
    /// How long a write may make no progress before the session ends.
    pub(crate) write_stall: Duration,
}

impl SessionLimits {
    /// The limits of every session: far above what Troupe sends (a frame
    /// of a few hundred bytes every few seconds; a group listing every
    /// node, a few dozen KiB at a thousand nodes).
    pub(crate) const fn standard() -> SessionLimits {
        SessionLimits {
            frame_bytes: 1 << 20,
            frames_per_s: 2_000.0,
            frame_burst: 10_000.0,
            bytes_per_s: 4.0 * (1 << 20) as f64,
            byte_burst: 16.0 * (1 << 20) as f64,
            remote_actors: 64,
            groups: 16,
            write_stall: Duration::from_secs(10),
        }
    }
}

/// Which bound a peer hit (the label of `troupe_cluster_session_cut_total`).
fn cut(peer: &str, limit: &'static str, why: String) -> io::Error {
    metrics::counter!("troupe_cluster_session_cut_total", "limit" => limit).increment(1);
    tracing::warn!(%peer, limit, %why, "ending a control session past its bound");
    io::Error::new(io::ErrorKind::InvalidData, why)
}

/// Tokens refilled at a rate, up to a burst.
#[derive(Debug)]
struct Bucket {
    tokens: f64,
    burst: f64,
    per_s: f64,
    at: Instant,
}

impl Bucket {
    fn new(per_s: f64, burst: f64) -> Bucket {
        Bucket {
            tokens: burst,
            burst,
            per_s,
            at: Instant::now(),
        }
    }

    /// Takes `n` tokens, or says how long until there are enough (nothing
    /// taken then).
    fn take(&mut self, n: f64) -> Result<(), Duration> {
        // More than a burst would never fit: it waits for a full bucket.
        let n = n.min(self.burst);
        let now = Instant::now();
        let refill = now.saturating_duration_since(self.at).as_secs_f64() * self.per_s;
        self.tokens = (self.tokens + refill).min(self.burst);
        self.at = now;
        if self.tokens >= n {
            self.tokens -= n;
            return Ok(());
        }
        Err(Duration::from_secs_f64((n - self.tokens) / self.per_s))
    }
}

/// The read half ractor gets: whole frames, within the limits.
pub(crate) struct GuardedRead<R> {
    inner: R,
    limits: SessionLimits,
    peer: String,
    /// The frame being read: header, then body, up to `want` bytes.
    frame: Vec<u8>,
    want: usize,
    filled: usize,
    /// A checked frame being handed to ractor, from `handed`.
    handed: usize,
    checked: bool,
    frames: Bucket,
    bytes: Bucket,
    throttle: Option<Pin<Box<Sleep>>>,
    actors: HashSet<u64>,
    groups: HashSet<(String, String)>,
}

const HEADER: usize = 8;

impl<R> GuardedRead<R> {
    pub(crate) fn new(inner: R, limits: SessionLimits, peer: String) -> GuardedRead<R> {
        GuardedRead {
            frames: Bucket::new(limits.frames_per_s, limits.frame_burst),
            bytes: Bucket::new(limits.bytes_per_s, limits.byte_burst),
            inner,
            limits,
            peer,
            frame: vec![0; HEADER],
            want: HEADER,
            filled: 0,
            handed: 0,
            checked: false,
            throttle: None,
            actors: HashSet::new(),
            groups: HashSet::new(),
        }
    }

    /// Checks a whole frame against the bounds on remote actors and groups.
    fn check(&mut self) -> io::Result<()> {
        let Some(announced) = Announced::of(&self.frame[HEADER..]) else {
            // Not a message this guard follows, or not protobuf at all:
            // ractor decodes it (and ends the session if it is garbage).
            return Ok(());
        };
        for pid in announced.ended {
            self.actors.remove(&pid);
        }
        if let Some(group) = announced.group {
            if !self.groups.contains(&group) && self.groups.len() >= self.limits.groups {
                return Err(cut(
                    &self.peer,
                    "groups",
                    format!(
                        "the peer joined actors to more than {} process groups (a Troupe node joins one)",
                        self.limits.groups
                    ),
                ));
            }
            self.groups.insert(group);
        }
        for pid in announced.actors {
            self.actors.insert(pid);
            if self.actors.len() > self.limits.remote_actors {
                return Err(cut(
                    &self.peer,
                    "remote_actors",
                    format!(
                        "the peer announced more than {} live remote actors (a Troupe node has one)",
                        self.limits.remote_actors
                    ),
                ));
            }
        }
        Ok(())
    }
}

impl<R: AsyncRead + Unpin> AsyncRead for GuardedRead<R> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        loop {
            if this.checked {
                let rest = &this.frame[this.handed..this.want];
                let n = rest.len().min(buf.remaining());
                buf.put_slice(&rest[..n]);
                this.handed += n;
                if this.handed == this.want {
                    this.checked = false;
                    this.handed = 0;
                    this.filled = 0;
                    this.want = HEADER;
                    this.frame.truncate(HEADER);
                    this.frame.shrink_to(64 << 10);
                }
                return Poll::Ready(Ok(()));
            }
            if let Some(throttle) = this.throttle.as_mut() {
                ready!(throttle.as_mut().poll(cx));
                this.throttle = None;
            }
            if this.filled == this.want {
                if this.want == HEADER {
                    let mut len = [0u8; HEADER];
                    len.copy_from_slice(&this.frame[..HEADER]);
                    let len = u64::from_be_bytes(len);
                    if len > this.limits.frame_bytes as u64 {
                        return Poll::Ready(Err(cut(
                            &this.peer,
                            "frame_bytes",
                            format!(
                                "a session frame of {len} bytes, over the limit of {}",
                                this.limits.frame_bytes
                            ),
                        )));
                    }
                    // At most `frame_bytes`, checked above.
                    this.want = HEADER + len as usize;
                    this.frame.resize(this.want, 0);
                    if len > 0 {
                        continue;
                    }
                }
                let wait = match (this.frames.take(1.0), this.bytes.take(this.want as f64)) {
                    (Ok(()), Ok(())) => None,
                    // Give back what one bucket gave: the frame waits whole.
                    (Ok(()), Err(wait)) => {
                        this.frames.tokens += 1.0;
                        Some(wait)
                    }
                    (Err(wait), Ok(())) => {
                        this.bytes.tokens += this.want as f64;
                        Some(wait)
                    }
                    (Err(a), Err(b)) => Some(a.max(b)),
                };
                if let Some(wait) = wait {
                    metrics::counter!("troupe_cluster_session_throttled_total").increment(1);
                    tracing::debug!(peer = %this.peer, ?wait, "a control session's peer sends faster than its bound");
                    this.throttle = Some(Box::pin(tokio::time::sleep(wait)));
                    continue;
                }
                this.check()?;
                this.checked = true;
                continue;
            }
            let mut into = ReadBuf::new(&mut this.frame[this.filled..this.want]);
            ready!(Pin::new(&mut this.inner).poll_read(cx, &mut into))?;
            let n = into.filled().len();
            if n == 0 {
                // The end of the stream: ractor reads what it is (a clean
                // end between frames, or a frame cut short).
                return Poll::Ready(Ok(()));
            }
            this.filled += n;
        }
    }
}

/// What a frame says about the peer's remote actors, read from
/// ractor_cluster's protobuf without decoding the rest.
#[derive(Debug, Default, PartialEq)]
struct Announced {
    actors: Vec<u64>,
    ended: Vec<u64>,
    group: Option<(String, String)>,
}

impl Announced {
    /// `NetworkMessage { control (3): ControlMessage { spawn (1) |
    /// terminate (2) | pg_join (5) } }`; `None` for anything else.
    fn of(frame: &[u8]) -> Option<Announced> {
        let control = field(frame, 3)?;
        let mut announced = Announced::default();
        if let Some(spawn) = field(control, 1) {
            announced.actors = actor_pids(spawn, 1)?;
        } else if let Some(terminate) = field(control, 2) {
            announced.ended = uint64s(terminate, 1)?;
        } else if let Some(join) = field(control, 5) {
            announced.actors = actor_pids(join, 2)?;
            let group = string(join, 1)?;
            let scope = string(join, 3)?;
            announced.group = Some((scope, group));
        } else {
            return None;
        }
        Some(announced)
    }
}

/// One protobuf field as the wire has it.
enum Value<'a> {
    Varint(u64),
    Bytes(&'a [u8]),
    Fixed,
}

fn varint(bytes: &mut &[u8]) -> Option<u64> {
    let mut value = 0u64;
    for shift in (0..64).step_by(7) {
        let (&byte, rest) = bytes.split_first()?;
        *bytes = rest;
        value |= u64::from(byte & 0x7f) << shift;
        if byte & 0x80 == 0 {
            return Some(value);
        }
    }
    None
}

/// The fields of a message, in order; `None` at the first malformed one.
fn fields(mut bytes: &[u8]) -> impl Iterator<Item = Option<(u64, Value<'_>)>> {
    let mut broken = false;
    std::iter::from_fn(move || {
        if broken || bytes.is_empty() {
            return None;
        }
        let next = (|| {
            let key = varint(&mut bytes)?;
            let value = match key & 7 {
                0 => Value::Varint(varint(&mut bytes)?),
                1 => {
                    bytes = bytes.get(8..)?;
                    Value::Fixed
                }
                2 => {
                    let len = usize::try_from(varint(&mut bytes)?).ok()?;
                    let (value, rest) = (bytes.get(..len)?, bytes.get(len..)?);
                    bytes = rest;
                    Value::Bytes(value)
                }
                5 => {
                    bytes = bytes.get(4..)?;
                    Value::Fixed
                }
                _ => return None,
            };
            Some((key >> 3, value))
        })();
        broken = next.is_none();
        Some(next)
    })
}

/// The last length-delimited field `number` (protobuf's rule for a message
/// field seen twice is to merge; the last one wins for what is read here).
fn field(bytes: &[u8], number: u64) -> Option<&[u8]> {
    let mut found = None;
    for entry in fields(bytes) {
        if let (n, Value::Bytes(value)) = entry? {
            if n == number {
                found = Some(value);
            }
        }
    }
    found
}

fn string(bytes: &[u8], number: u64) -> Option<String> {
    let mut found = String::new();
    for entry in fields(bytes) {
        if let (n, Value::Bytes(value)) = entry? {
            if n == number {
                found = String::from_utf8_lossy(value).into_owned();
            }
        }
    }
    Some(found)
}

/// The pids of the repeated `Actor { pid (1), name (2) }` field `number`.
fn actor_pids(bytes: &[u8], number: u64) -> Option<Vec<u64>> {
    let mut pids = Vec::new();
    for entry in fields(bytes) {
        if let (n, Value::Bytes(actor)) = entry? {
            if n == number {
                let mut pid = 0;
                for entry in fields(actor) {
                    if let (1, Value::Varint(value)) = entry? {
                        pid = value;
                    }
                }
                pids.push(pid);
            }
        }
    }
    Some(pids)
}

/// A repeated `uint64` field, packed or not.
fn uint64s(bytes: &[u8], number: u64) -> Option<Vec<u64>> {
    let mut values = Vec::new();
    for entry in fields(bytes) {
        match entry? {
            (n, Value::Varint(value)) if n == number => values.push(value),
            (n, Value::Bytes(mut packed)) if n == number => {
                while !packed.is_empty() {
                    values.push(varint(&mut packed)?);
                }
            }
            _ => {}
        }
    }
    Some(values)
}

/// The write half ractor gets: a write that makes no progress for the
/// limit fails, and ractor ends the session.
pub(crate) struct DeadlineWrite<W> {
    inner: W,
    limit: Duration,
    peer: String,
    stalled: Option<Pin<Box<Sleep>>>,
}

impl<W> DeadlineWrite<W> {
    pub(crate) fn new(inner: W, limit: Duration, peer: String) -> DeadlineWrite<W> {
        DeadlineWrite {
            inner,
            limit,
            peer,
            stalled: None,
        }
    }

    /// What the inner writer answered, unless it has been pending for the
    /// limit: then an error.
    fn watch<T>(
        &mut self,
        cx: &mut Context<'_>,
        polled: Poll<io::Result<T>>,
    ) -> Poll<io::Result<T>> {
        if polled.is_ready() {
            self.stalled = None;
            return polled;
        }
        let limit = self.limit;
        let stalled = self
            .stalled
            .get_or_insert_with(|| Box::pin(tokio::time::sleep(limit)));
        ready!(stalled.as_mut().poll(cx));
        self.stalled = None;
        metrics::counter!("troupe_cluster_session_cut_total", "limit" => "write_stall")
            .increment(1);
        tracing::warn!(peer = %self.peer, ?limit, "ending a control session whose peer reads nothing");
        Poll::Ready(Err(io::Error::new(
            io::ErrorKind::TimedOut,
            format!("the peer read nothing for {limit:?}"),
        )))
    }
}

impl<W: AsyncWrite + Unpin> AsyncWrite for DeadlineWrite<W> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let polled = Pin::new(&mut self.inner).poll_write(cx, buf);
        self.watch(cx, polled)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let polled = Pin::new(&mut self.inner).poll_flush(cx);
        self.watch(cx, polled)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let polled = Pin::new(&mut self.inner).poll_shutdown(cx);
        self.watch(cx, polled)
    }
}

#[cfg(test)]
mod tests;
