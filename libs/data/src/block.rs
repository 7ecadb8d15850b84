//! Blocks: Arrow record batches kept in Troupe's object store.
//!
//! In one process a block is shared, not copied: `put` moves the batch into
//! the store and `get` hands back an `Arc` to the same buffers. Between
//! processes a block travels as an Arrow IPC stream (its schema, then the
//! batch), which the reader maps onto its buffers without parsing rows.

use std::sync::Arc;

use arrow_array::RecordBatch;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use troupe::{GetSize, ObjectRef};

use crate::error::BlockOrigin;

/// One block of a dataset: an Arrow record batch stored as an object.
#[derive(Clone, Debug)]
pub struct Block(pub RecordBatch);

impl Block {
    /// The batch.
    pub fn batch(&self) -> &RecordBatch {
        &self.0
    }

    /// Rows in the block.
    pub fn num_rows(&self) -> usize {
        self.0.num_rows()
    }

    /// The memory its buffers take (what the memory budget counts).
    pub fn bytes(&self) -> usize {
        batch_bytes(&self.0)
    }
}

/// The memory an Arrow batch's buffers take. A slice counts the bytes it
/// views, not its whole buffers: a block cut from another must not be
/// charged for rows it does not hold.
pub(crate) fn batch_bytes(batch: &RecordBatch) -> usize {
    batch
        .columns()
        .iter()
        .map(|column| {
            column
                .to_data()
                .get_slice_memory_size()
                .unwrap_or_else(|_| column.get_array_memory_size())
        })
        .sum()
}

impl GetSize for Block {
    fn get_heap_size(&self) -> usize {
        self.bytes()
    }
}

impl Serialize for Block {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let bytes = encode_ipc(&self.0).map_err(serde::ser::Error::custom)?;
        serializer.serialize_bytes(&bytes)
    }
}

impl<'de> Deserialize<'de> for Block {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let bytes = deserializer.deserialize_byte_buf(BytesVisitor)?;
        decode_ipc(&bytes)
            .map(Block)
            .map_err(serde::de::Error::custom)
    }
}

/// Takes a byte string however the format hands it over.
struct BytesVisitor;

impl<'de> serde::de::Visitor<'de> for BytesVisitor {
    type Value = Vec<u8>;
    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("an Arrow IPC stream")
    }
    fn visit_bytes<E: serde::de::Error>(self, v: &[u8]) -> Result<Vec<u8>, E> {
        Ok(v.to_vec())
    }
    fn visit_byte_buf<E: serde::de::Error>(self, v: Vec<u8>) -> Result<Vec<u8>, E> {
        Ok(v)
    }
    fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<Vec<u8>, A::Error> {
        let mut out = Vec::with_capacity(seq.size_hint().unwrap_or(0));
        while let Some(b) = seq.next_element()? {
            out.push(b);
        }
        Ok(out)
    }
}

/// A batch as an Arrow IPC stream: its schema, then the batch.
pub(crate) fn encode_ipc(batch: &RecordBatch) -> Result<Vec<u8>, arrow_schema::ArrowError> {
    let mut out = Vec::with_capacity(batch_bytes(batch) + 1024);
    {
        let mut writer = arrow_ipc::writer::StreamWriter::try_new(&mut out, &batch.schema())?;
        writer.write(batch)?;
        writer.finish()?;
    }
    Ok(out)
}

/// The batch of an IPC stream written by [`encode_ipc`].
pub(crate) fn decode_ipc(bytes: &[u8]) -> Result<RecordBatch, arrow_schema::ArrowError> {
    let mut reader = arrow_ipc::reader::StreamReader::try_new(std::io::Cursor::new(bytes), None)?;
    match reader.next() {
        Some(batch) => batch,
        None => Ok(RecordBatch::new_empty(reader.schema())),
    }
}

/// A block in the store with what the executor knows of it without
/// reading it: its size, its rows, and where its rows came from.
#[derive(Clone, Debug)]
pub struct BlockRef {
    /// The object.
    pub object: ObjectRef<Block>,
    /// Rows in the block.
    pub rows: usize,
    /// Bytes of its buffers.
    pub bytes: usize,
    /// Where its rows came from.
    pub origin: Arc<BlockOrigin>,
}
