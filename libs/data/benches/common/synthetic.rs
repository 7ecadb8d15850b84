//! The synthetic table the bench and the example write as Parquet:
//! 10 columns (`id` Int64, `key` Int32 in 0..1000, `f0`..`f7` Float32 in
//! -1..1), 44 bytes a row in memory, every value a function of `id`; and
//! the transforms both run on it.

use std::sync::Arc;

use arrow_array::{ArrayRef, BooleanArray, Float32Array, Int32Array, Int64Array, RecordBatch};
use arrow_schema::{DataType, Field, Schema};
use troupe_data::{DataError, Dataset};

/// SplitMix64: a well-mixed hash of `x`.
fn mix(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    x = (x ^ (x >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    x ^ (x >> 31)
}

/// The rows of `ids` (the `id` column of a `Dataset::range` block).
pub fn rows(ids: RecordBatch) -> Result<RecordBatch, DataError> {
    let id = ids
        .column(0)
        .as_any()
        .downcast_ref::<Int64Array>()
        .cloned()
        .ok_or_else(|| DataError::Invalid("range blocks hold Int64 ids".into()))?;
    let mut fields = vec![
        Field::new("id", DataType::Int64, false),
        Field::new("key", DataType::Int32, false),
    ];
    let mut columns: Vec<ArrayRef> = vec![
        Arc::new(id.clone()),
        Arc::new(Int32Array::from_iter_values(
            id.values().iter().map(|v| (mix(*v as u64) % 1000) as i32),
        )),
    ];
    for c in 0..8u64 {
        fields.push(Field::new(format!("f{c}"), DataType::Float32, false));
        let values = id.values().iter().map(|v| {
            let bits = mix((*v as u64) << 3 | c) >> 40; // 24 random bits
            (bits as f32 / (1u64 << 23) as f32) - 1.0
        });
        columns.push(Arc::new(Float32Array::from_iter_values(values)));
    }
    RecordBatch::try_new(Arc::new(Schema::new(fields)), columns)
        .map_err(|e| DataError::Invalid(e.to_string()))
}

/// `rows` rows of the table, in blocks of the dataset's rows per block.
pub fn table(rt: &troupe::Runtime, rows_total: u64) -> Dataset {
    Dataset::range(rt, rows_total).map_batches(rows)
}

/// A `Float32` column by name.
pub fn f32_column(b: &RecordBatch, name: &str) -> Result<Float32Array, DataError> {
    b.column_by_name(name)
        .and_then(|c| c.as_any().downcast_ref::<Float32Array>().cloned())
        .ok_or_else(|| DataError::Column {
            column: name.into(),
            message: "missing or not Float32".into(),
        })
}

/// Adds `score = f0 * f1 + f2`.
pub fn with_score(b: RecordBatch) -> Result<RecordBatch, DataError> {
    let (f0, f1, f2) = (
        f32_column(&b, "f0")?,
        f32_column(&b, "f1")?,
        f32_column(&b, "f2")?,
    );
    let score: Float32Array = f0
        .values()
        .iter()
        .zip(f1.values().iter())
        .zip(f2.values().iter())
        .map(|((a, b), c)| a * b + c)
        .collect();
    let mut fields: Vec<Arc<Field>> = b.schema().fields().iter().cloned().collect();
    fields.push(Arc::new(Field::new("score", DataType::Float32, false)));
    let mut columns = b.columns().to_vec();
    columns.push(Arc::new(score) as ArrayRef);
    RecordBatch::try_new(Arc::new(Schema::new(fields)), columns)
        .map_err(|e| DataError::Invalid(e.to_string()))
}

/// The rows whose `score` is positive.
pub fn positive(b: &RecordBatch) -> Result<BooleanArray, DataError> {
    Ok(f32_column(b, "score")?
        .values()
        .iter()
        .map(|v| Some(*v > 0.0))
        .collect())
}
