//! Typed rows: a block's rows as serde values of your type, and back.
//! Column names are field names; a row-wise function is convenient, a
//! batch-wise one (`map_batches`) is an order of magnitude faster.

use std::sync::Arc;

use arrow_array::RecordBatch;
use arrow_schema::Schema;
use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::error::BoxError;

/// The rows of `batch` as `T`s (through JSON: Arrow's writer, serde's reader).
pub(crate) fn from_batch<T: DeserializeOwned>(batch: &RecordBatch) -> Result<Vec<T>, BoxError> {
    if batch.num_rows() == 0 {
        return Ok(Vec::new());
    }
    let mut writer = arrow_json::ArrayWriter::new(Vec::new());
    writer.write(batch)?;
    writer.finish()?;
    let json = writer.into_inner();
    Ok(serde_json::from_slice(&json)
        .map_err(|e| format!("reading rows as {}: {e}", std::any::type_name::<T>()))?)
}

/// `rows` as a batch, its schema inferred from them (numbers become
/// `Int64` or `Float64`, strings `Utf8`, nested values lists and structs).
/// No rows make an empty batch of `empty_schema`.
pub(crate) fn to_batch<U: Serialize>(
    rows: &[U],
    empty_schema: &Arc<Schema>,
) -> Result<RecordBatch, BoxError> {
    if rows.is_empty() {
        return Ok(RecordBatch::new_empty(empty_schema.clone()));
    }
    let values: Vec<serde_json::Value> = rows
        .iter()
        .map(serde_json::to_value)
        .collect::<Result<_, _>>()?;
    let schema = arrow_json::reader::infer_json_schema_from_iterator(values.iter().map(Ok))?;
    let mut decoder = arrow_json::ReaderBuilder::new(Arc::new(schema)).build_decoder()?;
    decoder.serialize(&values)?;
    match decoder.flush()? {
        Some(batch) => Ok(batch),
        None => Ok(RecordBatch::new_empty(empty_schema.clone())),
    }
}
