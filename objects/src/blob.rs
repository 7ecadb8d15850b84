//! Byte objects in buffers the store owns and reuses.
//!
//! Why a pool: glibc's malloc serves every allocation over 32 MB with a
//! fresh `mmap`, whose pages fault in (and are zeroed by the kernel) on
//! first touch, so copying 100 MB into a new `Vec` runs at a fraction of
//! memory speed. Ray avoids this by copying into shared memory it mapped at
//! start. The store keeps the large buffers of freed byte objects and hands
//! them out again, so a steady stream of large puts copies at memcpy speed
//! without asking the user's binary to change its global allocator.

use std::collections::BTreeMap;
use std::fmt;
use std::ops::Deref;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};

use get_size2::GetSize;
use serde::{Deserialize, Serialize};
use std::pin::Pin;
use tokio::io::{AsyncRead, ReadBuf};

/// Buffers smaller than this are plain allocations: malloc reuses them well.
pub(crate) const MIN_POOLED: usize = 1 << 20;

/// Immutable bytes, usually in a buffer the object store owns and reuses
/// ([`ObjectStore::put_bytes`](crate::ObjectStore::put_bytes)). Cloning is
/// cheap (the bytes are shared); the buffer goes back to its pool when the
/// last clone is dropped.
///
/// ```
/// # #[tokio::main] async fn main() -> Result<(), troupe_objects::ObjectError> {
/// let store = troupe_objects::ObjectStore::new(Default::default());
/// let r = store.put_bytes(b"hello").await?;
/// assert_eq!(&store.get(&r).await?[..], b"hello");
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct Blob {
    inner: Backing,
}

/// Whose memory the bytes are in.
#[derive(Clone)]
enum Backing {
    /// A buffer of its own (pooled, or taken from a vector).
    Own(Arc<Buffer>),
    /// A byte vector the store holds as a value (`Vec<u8>` objects), shared
    /// as it is: exporting one to another node copies nothing.
    Shared(Arc<Vec<u8>>),
}

struct Buffer {
    bytes: Vec<u8>,
    pool: Weak<Pool>,
}

impl Drop for Buffer {
    fn drop(&mut self) {
        if let Some(pool) = self.pool.upgrade() {
            pool.give_back(std::mem::take(&mut self.bytes));
        }
    }
}

impl Blob {
    pub(crate) fn pooled(bytes: Vec<u8>, pool: &Arc<Pool>) -> Self {
        Blob {
            inner: Backing::Own(Arc::new(Buffer {
                bytes,
                pool: Arc::downgrade(pool),
            })),
        }
    }

    /// The bytes of a vector shared with its owner (no copy).
    pub(crate) fn shared(bytes: Arc<Vec<u8>>) -> Self {
        Blob {
            inner: Backing::Shared(bytes),
        }
    }

    fn bytes(&self) -> &Vec<u8> {
        match &self.inner {
            Backing::Own(buffer) => &buffer.bytes,
            Backing::Shared(bytes) => bytes,
        }
    }

    /// The number of bytes.
    pub fn len(&self) -> usize {
        self.bytes().len()
    }

    /// Whether it holds no bytes.
    pub fn is_empty(&self) -> bool {
        self.bytes().is_empty()
    }

    /// The bytes as a vector: its buffer when this is the only handle to
    /// it (the buffer then leaves the pool), a copy otherwise.
    pub fn into_vec(self) -> Vec<u8> {
        match self.inner {
            Backing::Own(buffer) => match Arc::try_unwrap(buffer) {
                Ok(mut buffer) => std::mem::take(&mut buffer.bytes),
                Err(shared) => shared.bytes.clone(),
            },
            Backing::Shared(bytes) => Arc::try_unwrap(bytes).unwrap_or_else(|v| (*v).clone()),
        }
    }
}

impl From<Vec<u8>> for Blob {
    /// Takes the vector as is (no copy); its buffer is not pooled.
    fn from(bytes: Vec<u8>) -> Self {
        Blob {
            inner: Backing::Own(Arc::new(Buffer {
                bytes,
                pool: Weak::new(),
            })),
        }
    }
}

impl Deref for Blob {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        self.bytes()
    }
}

impl AsRef<[u8]> for Blob {
    fn as_ref(&self) -> &[u8] {
        self
    }
}

impl PartialEq for Blob {
    fn eq(&self, other: &Self) -> bool {
        self[..] == other[..]
    }
}

impl Eq for Blob {}

impl fmt::Debug for Blob {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Blob({} bytes)", self.len())
    }
}

impl GetSize for Blob {
    fn get_heap_size(&self) -> usize {
        self.bytes().capacity()
    }
}

impl Serialize for Blob {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_bytes(self)
    }
}

impl<'de> Deserialize<'de> for Blob {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer
            .deserialize_bytes(crate::bytes_field::BytesVisitor)
            .map(Blob::from)
    }
}

/// Freed large buffers, by capacity, kept for reuse up to a limit.
pub(crate) struct Pool {
    free: Mutex<BTreeMap<usize, Vec<Vec<u8>>>>,
    /// Bytes held in `free`.
    held: AtomicU64,
    limit: u64,
    /// Registered once (a lookup per take would cost on the hot path).
    reused: metrics::Counter,
}

/// Rounds a size up to one of eight classes per power of two, so that a
/// buffer is reused for sizes within 12.5% of each other.
pub(crate) fn class_of(len: usize) -> usize {
    if len <= MIN_POOLED {
        return len;
    }
    let power = usize::BITS - 1 - len.leading_zeros();
    let step = 1usize << power.saturating_sub(3);
    len.div_ceil(step) * step
}

impl Pool {
    pub(crate) fn new(limit: u64) -> Arc<Self> {
        Arc::new(Pool {
            free: Mutex::new(BTreeMap::new()),
            held: AtomicU64::new(0),
            limit,
            reused: metrics::counter!("troupe_object_store_buffers_reused_total"),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<usize, Vec<Vec<u8>>>> {
        // Each critical section is one map update: a panic cannot leave it
        // half-done.
        self.free.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// An empty buffer with room for `len` bytes: a kept one if one fits.
    pub(crate) fn take(&self, len: usize) -> Vec<u8> {
        if len < MIN_POOLED {
            return Vec::with_capacity(len);
        }
        let class = class_of(len);
        {
            let mut free = self.lock();
            let found = free
                .range_mut(class..=class.saturating_add(class / 8))
                .find_map(|(cap, list)| list.pop().map(|buf| (*cap, buf)));
            if let Some((cap, buf)) = found {
                if free.get(&cap).is_some_and(Vec::is_empty) {
                    free.remove(&cap);
                }
                self.held.fetch_sub(cap as u64, Ordering::Relaxed);
                self.reused.increment(1);
                return buf;
            }
        }
        Vec::with_capacity(class)
    }

    /// Keeps `buf`'s allocation for reuse, if it is large and the pool has
    /// room (else it is freed).
    pub(crate) fn give_back(&self, mut buf: Vec<u8>) {
        let cap = buf.capacity();
        if cap < MIN_POOLED {
            return;
        }
        if self.held.load(Ordering::Relaxed) + cap as u64 > self.limit {
            return; // dropped: the pool is full
        }
        buf.clear();
        self.held.fetch_add(cap as u64, Ordering::Relaxed);
        self.lock().entry(cap).or_default().push(buf);
    }

    /// Frees every kept buffer (memory is wanted for objects).
    pub(crate) fn trim(&self) {
        let drained = std::mem::take(&mut *self.lock());
        let bytes: usize = drained.iter().map(|(cap, l)| cap * l.len()).sum();
        self.held.fetch_sub(bytes as u64, Ordering::Relaxed);
    }

    /// Bytes kept for reuse.
    pub(crate) fn held(&self) -> u64 {
        self.held.load(Ordering::Relaxed)
    }
}

/// Builds a [`Blob`] in a store buffer from chunks, in order (how bytes
/// that arrive from another node land in the store without a second copy).
///
/// Bytes can be copied in ([`write`](Self::write)) or received in place:
/// [`unfilled`](Self::unfilled) lends the next region of the buffer (a
/// socket reads straight into it), [`advance`](Self::advance) commits what
/// was filled.
pub struct BlobWriter {
    /// `bytes[..filled]` is written; `bytes[filled..]` is zeroed (lent by
    /// `unfilled`, not yet committed; `read_from` lends nothing). Its length
    /// never exceeds `expected`.
    bytes: Vec<u8>,
    filled: usize,
    expected: usize,
    pool: Arc<Pool>,
}

impl BlobWriter {
    pub(crate) fn new(len: usize, pool: Arc<Pool>) -> Self {
        BlobWriter {
            bytes: pool.take(len),
            filled: 0,
            expected: len,
            pool,
        }
    }

    fn over(&self, more: usize) -> Result<usize, BlobWriteError> {
        match self.filled.checked_add(more) {
            Some(end) if end <= self.expected => Ok(end),
            _ => Err(BlobWriteError {
                expected: self.expected,
                got: self.filled.saturating_add(more),
            }),
        }
    }

    /// Appends a chunk. More bytes than announced is an error, and the
    /// writer is unchanged.
    pub fn write(&mut self, chunk: &[u8]) -> Result<(), BlobWriteError> {
        let end = self.over(chunk.len())?;
        // Drops the zeroed tail lent by `unfilled`, if any (no deallocation).
        self.bytes.truncate(self.filled);
        self.bytes.extend_from_slice(chunk);
        self.filled = end;
        Ok(())
    }

    /// The next unwritten region of the buffer, `max` bytes long (fewer at
    /// the end of the blob), to fill in place, then commit with
    /// [`advance`](Self::advance): bytes from a socket land in the store
    /// buffer with no copy in between. The region is zeroed the first time
    /// it is lent (never uninitialised memory); lent again (after a short
    /// read), it is not zeroed twice. Not committed, its contents count for
    /// nothing.
    pub fn unfilled(&mut self, max: usize) -> &mut [u8] {
        let end = self.filled + max.min(self.expected - self.filled);
        self.zero_to(end);
        &mut self.bytes[self.filled..end]
    }

    /// Commits the next `n` bytes of the buffer as written (filled in place
    /// through [`unfilled`](Self::unfilled); bytes never lent are zeros).
    /// More bytes than announced is an error, and the writer is unchanged.
    pub fn advance(&mut self, n: usize) -> Result<(), BlobWriteError> {
        let end = self.over(n)?;
        self.zero_to(end);
        self.filled = end;
        Ok(())
    }

    /// Extends the buffer with zeros to `end` bytes: one memset when
    /// optimized. Unoptimized, `resize` writes byte by byte (a debug-build
    /// pull of a large object ran at a tenth of the socket's speed), so it
    /// copies from a static block instead: one memcpy per 64 KiB.
    fn zero_to(&mut self, end: usize) {
        static ZEROS: [u8; 1 << 16] = [0; 1 << 16];
        if !cfg!(debug_assertions) {
            if self.bytes.len() < end {
                self.bytes.resize(end, 0);
            }
            return;
        }
        while self.bytes.len() < end {
            let n = (end - self.bytes.len()).min(ZEROS.len());
            self.bytes.extend_from_slice(&ZEROS[..n]);
        }
    }

    /// Reads up to `max` of the bytes still expected from `reader` straight
    /// into the buffer, and commits them: no zeroing first (a fresh buffer's
    /// pages are touched once, by the copy from the socket). Returns how
    /// many were read: 0 at the reader's end, or when nothing is expected.
    pub async fn read_from<R: AsyncRead + Unpin>(
        &mut self,
        reader: &mut R,
        max: usize,
    ) -> std::io::Result<usize> {
        let want = max.min(self.expected - self.filled);
        if want == 0 {
            return Ok(0);
        }
        if self.bytes.len() > self.filled {
            // A region lent by `unfilled` and not committed: initialized.
            let end = (self.filled + want).min(self.bytes.len());
            let mut buf = ReadBuf::new(&mut self.bytes[self.filled..end]);
            std::future::poll_fn(|cx| Pin::new(&mut *reader).poll_read(cx, &mut buf)).await?;
            let n = buf.filled().len();
            self.filled += n;
            return Ok(n);
        }
        // The capacity holds `expected` bytes (the pool's class), so this
        // never reallocates.
        self.bytes.reserve(want);
        let mut buf = ReadBuf::uninit(&mut self.bytes.spare_capacity_mut()[..want]);
        std::future::poll_fn(|cx| Pin::new(&mut *reader).poll_read(cx, &mut buf)).await?;
        let n = buf.filled().len();
        // SAFETY: `ReadBuf` counts as filled only bytes the reader wrote,
        // the first `n` of the spare capacity, now initialized.
        #[allow(unsafe_code)]
        unsafe {
            self.bytes.set_len(self.filled + n)
        };
        self.filled += n;
        Ok(n)
    }

    /// Bytes written so far.
    pub fn written(&self) -> usize {
        self.filled
    }

    /// The number of bytes announced.
    pub fn expected(&self) -> usize {
        self.expected
    }

    /// The blob, once every announced byte has been written.
    pub fn finish(mut self) -> Result<Blob, BlobWriteError> {
        if self.filled != self.expected {
            return Err(BlobWriteError {
                expected: self.expected,
                got: self.filled,
            });
        }
        self.bytes.truncate(self.filled); // a no-op: the length never exceeds `expected`
        Ok(Blob::pooled(self.bytes, &self.pool))
    }
}

/// A [`BlobWriter`] got more or fewer bytes than announced.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("a blob of {expected} bytes was announced, but {got} were written")]
pub struct BlobWriteError {
    /// Bytes announced.
    pub expected: usize,
    /// Bytes written (or that would have been).
    pub got: usize,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn read_from_fills_the_buffer_straight_from_a_reader() {
        let pool = Pool::new(64 << 20);
        let data: Vec<u8> = (0..(3 << 20) + 17).map(|i| (i % 251) as u8).collect();
        let mut writer = BlobWriter::new(data.len(), pool.clone());
        // A region lent by `unfilled` first, then reads into fresh capacity.
        writer.unfilled(1000)[..10].copy_from_slice(&data[..10]);
        writer.advance(10).unwrap();
        let mut reader: &[u8] = &data[10..];
        loop {
            let n = writer.read_from(&mut reader, 1 << 20).await.unwrap();
            if n == 0 {
                break;
            }
        }
        assert_eq!(writer.written(), data.len());
        assert_eq!(writer.read_from(&mut reader, 1).await.unwrap(), 0);
        assert_eq!(&writer.finish().unwrap()[..], &data[..]);
        // A short reader leaves the blob unfinished: an error, not zeros.
        let mut short = BlobWriter::new(100, pool);
        let mut few: &[u8] = &[1, 2, 3];
        while short.read_from(&mut few, 64).await.unwrap() > 0 {}
        assert_eq!(short.finish().unwrap_err().got, 3);
    }

    #[test]
    fn classes_waste_at_most_an_eighth() {
        for len in [MIN_POOLED + 1, 3 << 20, 100_000_000, 1 << 30] {
            let class = class_of(len);
            assert!(class >= len);
            assert!((class - len) as f64 <= len as f64 / 8.0, "{len} -> {class}");
        }
    }

    #[test]
    fn a_freed_buffer_is_reused_and_the_pool_is_bounded() {
        let pool = Pool::new(8 << 20);
        let first = pool.take(3 << 20);
        let ptr = first.as_ptr();
        let blob = Blob::pooled(first, &pool);
        drop(blob);
        assert!(pool.held() >= 3 << 20);
        let again = pool.take(3 << 20);
        assert_eq!(again.as_ptr(), ptr, "the same buffer comes back");
        assert_eq!(pool.held(), 0);
        // Over the limit: dropped, not kept.
        drop(Blob::pooled(Vec::with_capacity(16 << 20), &pool));
        assert_eq!(pool.held(), 0);
    }

    #[test]
    fn a_writer_refuses_more_or_fewer_bytes_than_announced() {
        let pool = Pool::new(1 << 30);
        let mut w = BlobWriter::new(4, pool.clone());
        w.write(b"ab").unwrap();
        assert!(w.write(b"abc").is_err());
        assert_eq!(w.written(), 2);
        let short = BlobWriter::new(4, pool);
        assert!(short.finish().is_err());
        w.write(b"cd").unwrap();
        assert_eq!(&w.finish().unwrap()[..], b"abcd");
    }

    #[test]
    fn a_writer_is_filled_in_place_and_mixes_with_write() {
        let pool = Pool::new(1 << 30);
        let mut w = BlobWriter::new(10, pool.clone());
        assert_eq!(w.expected(), 10);
        // Lent zeroed, bounded by what is left.
        let region = w.unfilled(4);
        assert_eq!(region, &[0u8; 4][..]);
        region[..3].copy_from_slice(b"abc");
        // A short fill: commit 2; the third byte lent is not written yet.
        w.advance(2).unwrap();
        assert_eq!(w.written(), 2);
        // Lent again from where the writer is: the uncommitted byte shows
        // what was put there, and the region is not re-zeroed.
        let region = w.unfilled(100);
        assert_eq!(region.len(), 8, "never past the announced length");
        assert_eq!(region[0], b'c');
        region[1] = b'd';
        w.advance(2).unwrap();
        // `write` after a lent region overwrites its tail.
        w.write(b"ef").unwrap();
        assert_eq!(w.written(), 6);
        assert!(w.advance(5).is_err(), "more than announced");
        assert_eq!(w.written(), 6, "unchanged after an error");
        // Advancing past what was lent commits zeros.
        w.advance(4).unwrap();
        assert!(w.unfilled(1).is_empty(), "nothing left to lend");
        assert!(w.write(b"x").is_err());
        assert_eq!(&w.finish().unwrap()[..], b"abcdef\0\0\0\0");
    }

    #[test]
    fn a_writer_filled_in_place_must_be_complete_and_uses_a_pooled_buffer() {
        let pool = Pool::new(1 << 30);
        let len = 3 << 20;
        let mut w = BlobWriter::new(len, pool.clone());
        let region = w.unfilled(len);
        assert_eq!(region.len(), len);
        region.fill(7);
        w.advance(len - 1).unwrap();
        let short = w;
        assert_eq!(
            short.finish().unwrap_err(),
            BlobWriteError {
                expected: len,
                got: len - 1
            }
        );
        let mut w = BlobWriter::new(len, pool.clone());
        let ptr = {
            let region = w.unfilled(usize::MAX);
            region.fill(9);
            region.as_ptr()
        };
        w.advance(len).unwrap();
        assert!(w.advance(usize::MAX).is_err(), "no overflow");
        let blob = w.finish().unwrap();
        assert_eq!(blob.as_ptr(), ptr, "the bytes were not moved");
        assert!(blob.iter().all(|b| *b == 9));
        drop(blob);
        assert!(
            pool.held() >= len as u64,
            "its buffer goes back to the pool"
        );
    }
}
