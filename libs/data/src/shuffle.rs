//! The all-to-all operators: repartition, random shuffle, sort, group-by
//! and zip. Each runs as a map phase (every input block cut into one piece
//! per output partition) and a reduce phase (every partition's pieces
//! made into one block), each phase on `parallelism` threads.

use std::sync::Arc;

use arrow_array::{RecordBatch, UInt32Array};
use arrow_row::{OwnedRow, RowConverter, Rows, SortField};
use arrow_schema::{Field, Schema, SortOptions};
use arrow_select::concat::concat_batches;
use arrow_select::take::take_record_batch;
use rand_xoshiro::rand_core::{RngCore, SeedableRng};
use rand_xoshiro::Xoshiro256PlusPlus;
use troupe::Runtime;

use crate::block::BlockRef;
use crate::error::DataError;
use crate::plan::AllToAll;

/// A sort key: a column, ascending unless `descending`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SortKey {
    /// The column.
    pub column: String,
    /// Largest first.
    pub descending: bool,
}

impl SortKey {
    /// Ascending by `column`.
    pub fn asc(column: impl Into<String>) -> Self {
        SortKey {
            column: column.into(),
            descending: false,
        }
    }

    /// Descending by `column`.
    pub fn desc(column: impl Into<String>) -> Self {
        SortKey {
            column: column.into(),
            descending: true,
        }
    }
}

/// Runs `op` over `blocks` on the calling (blocking) thread and `parallelism` helpers.
pub(crate) fn run(
    rt: &Runtime,
    op: &AllToAll,
    blocks: Vec<BlockRef>,
    parallelism: usize,
) -> Result<Vec<RecordBatch>, DataError> {
    let mut batches = Vec::with_capacity(blocks.len());
    for block in &blocks {
        let got = rt
            .get_blocking(&block.object)
            .map_err(|e| DataError::Store {
                what: block.origin.to_string(),
                message: e.to_string(),
            })?;
        batches.push(got.0.clone());
    }
    drop(blocks);
    let Some(schema) = batches.first().map(|b| b.schema()) else {
        return Ok(Vec::new());
    };
    match op {
        AllToAll::Repartition(n) => repartition(&schema, &batches, *n),
        AllToAll::RandomShuffle { seed, partitions } => {
            let n = partitions.unwrap_or(batches.len()).max(1);
            random_shuffle(&schema, &batches, *seed, n, parallelism)
        }
        AllToAll::Sort { keys } => {
            let sort = RangeSort::new(&schema, keys)?;
            let n = batches.len().max(1);
            let parts = sort.partition(&batches, n, parallelism)?;
            par_map(parts, parallelism, |pieces| sort.sorted(&schema, &pieces))
        }
    }
}

fn concat(schema: &Arc<Schema>, pieces: &[RecordBatch]) -> Result<RecordBatch, DataError> {
    concat_batches(schema, pieces)
        .map_err(|e| DataError::arrow("concatenating blocks (do their schemas match?)", e))
}

/// `n` blocks of nearly equal rows, in order (slices: no copy of rows).
fn repartition(
    schema: &Arc<Schema>,
    batches: &[RecordBatch],
    n: usize,
) -> Result<Vec<RecordBatch>, DataError> {
    if n == 0 {
        return Err(DataError::Invalid("repartition into 0 blocks".into()));
    }
    let all = concat(schema, batches)?;
    let rows = all.num_rows();
    Ok((0..n)
        .map(|i| {
            let (start, end) = (rows * i / n, rows * (i + 1) / n);
            all.slice(start, end - start)
        })
        .collect())
}

/// Runs `f` on each item on up to `threads` scoped threads, in order.
fn par_map<T: Send, R: Send>(
    items: Vec<T>,
    threads: usize,
    f: impl Fn(T) -> Result<R, DataError> + Sync,
) -> Result<Vec<R>, DataError> {
    let threads = threads.clamp(1, items.len().max(1));
    let mut slots: Vec<Option<T>> = items.into_iter().map(Some).collect();
    let chunk = slots.len().div_ceil(threads).max(1);
    let f = &f;
    std::thread::scope(|scope| {
        let handles: Vec<_> = slots
            .chunks_mut(chunk)
            .map(|chunk| {
                scope.spawn(move || {
                    chunk
                        .iter_mut()
                        .filter_map(Option::take)
                        .map(f)
                        .collect::<Result<Vec<R>, DataError>>()
                })
            })
            .collect();
        let mut out = Vec::new();
        for handle in handles {
            match handle.join() {
                Ok(part) => out.extend(part?),
                Err(panic) => {
                    return Err(DataError::Stopped(format!(
                        "a shuffle thread panicked: {}",
                        crate::worker::panic_message(&panic)
                    )))
                }
            }
        }
        Ok(out)
    })
}

fn seeded(seed: u64, stream: u64) -> Xoshiro256PlusPlus {
    // Distinct, well-mixed streams per block and per partition.
    Xoshiro256PlusPlus::seed_from_u64(
        seed ^ stream.wrapping_mul(0x9E37_79B9_7F4A_7C15).rotate_left(17),
    )
}

fn take_rows(batch: &RecordBatch, indices: Vec<u32>) -> Result<RecordBatch, DataError> {
    take_record_batch(batch, &UInt32Array::from(indices))
        .map_err(|e| DataError::arrow("taking rows", e))
}

/// A seeded, push-based shuffle: each block's rows go to random partitions
/// (map), then each partition's rows are permuted (reduce). The same seed
/// and input give the same output.
fn random_shuffle(
    schema: &Arc<Schema>,
    batches: &[RecordBatch],
    seed: u64,
    n: usize,
    parallelism: usize,
) -> Result<Vec<RecordBatch>, DataError> {
    let indexed: Vec<(usize, &RecordBatch)> = batches.iter().enumerate().collect();
    let pieces = par_map(indexed, parallelism, |(i, batch)| {
        let mut rng = seeded(seed, i as u64);
        let mut parts: Vec<Vec<u32>> = vec![Vec::new(); n];
        for row in 0..batch.num_rows() {
            parts[(rng.next_u64() % n as u64) as usize].push(row as u32);
        }
        parts
            .into_iter()
            .map(|rows| take_rows(batch, rows))
            .collect::<Result<Vec<_>, _>>()
    })?;
    let partitions = transpose(pieces, n);
    let indexed: Vec<(usize, Vec<RecordBatch>)> = partitions.into_iter().enumerate().collect();
    par_map(indexed, parallelism, |(j, pieces)| {
        let all = concat(schema, &pieces)?;
        let mut order: Vec<u32> = (0..all.num_rows() as u32).collect();
        let mut rng = seeded(seed, (1 << 40) + j as u64);
        for k in (1..order.len()).rev() {
            let r = (rng.next_u64() % (k as u64 + 1)) as usize;
            order.swap(k, r);
        }
        take_rows(&all, order)
    })
}

/// `pieces[block][partition]` into `partitions[partition][block]`.
fn transpose(pieces: Vec<Vec<RecordBatch>>, n: usize) -> Vec<Vec<RecordBatch>> {
    let mut partitions: Vec<Vec<RecordBatch>> =
        (0..n).map(|_| Vec::with_capacity(pieces.len())).collect();
    for block in pieces {
        for (j, piece) in block.into_iter().enumerate() {
            if piece.num_rows() > 0 {
                partitions[j].push(piece);
            }
        }
    }
    partitions
}

/// Sorting by keys of any Arrow type, through Arrow's row format (whose
/// bytes compare as the keys do, descending and nulls included).
pub(crate) struct RangeSort {
    columns: Vec<usize>,
    converter: RowConverter,
}

impl RangeSort {
    pub(crate) fn new(schema: &Schema, keys: &[SortKey]) -> Result<Self, DataError> {
        if keys.is_empty() {
            return Err(DataError::Invalid("sort or group by no columns".into()));
        }
        let mut columns = Vec::with_capacity(keys.len());
        let mut fields = Vec::with_capacity(keys.len());
        for key in keys {
            let index = schema
                .index_of(&key.column)
                .map_err(|_| DataError::Column {
                    column: key.column.clone(),
                    message: format!("no such column; the columns are {:?}", column_names(schema)),
                })?;
            let field: &Field = schema.field(index);
            let options = SortOptions {
                descending: key.descending,
                nulls_first: !key.descending,
            };
            fields.push(SortField::new_with_options(
                field.data_type().clone(),
                options,
            ));
            columns.push(index);
        }
        let converter = RowConverter::new(fields).map_err(|e| DataError::arrow("sort keys", e))?;
        Ok(RangeSort { columns, converter })
    }

    pub(crate) fn rows(&self, batch: &RecordBatch) -> Result<Rows, DataError> {
        let keys: Vec<_> = self
            .columns
            .iter()
            .map(|i| batch.column(*i).clone())
            .collect();
        self.converter
            .convert_columns(&keys)
            .map_err(|e| DataError::arrow("sort keys", e))
    }

    /// Cuts every block into `n` key ranges (bounds from a sample of each
    /// block's keys): `partitions[j]` holds the rows of range `j`.
    fn partition(
        &self,
        batches: &[RecordBatch],
        n: usize,
        parallelism: usize,
    ) -> Result<Vec<Vec<RecordBatch>>, DataError> {
        let mut sample: Vec<OwnedRow> = Vec::new();
        for batch in batches {
            let rows = self.rows(batch)?;
            let step = (rows.num_rows() / 64).max(1);
            sample.extend(
                (0..rows.num_rows())
                    .step_by(step)
                    .map(|i| rows.row(i).owned()),
            );
        }
        sample.sort();
        let bounds: Vec<OwnedRow> = (1..n)
            .filter_map(|j| sample.get(j * sample.len() / n).cloned())
            .collect();
        let bounds = &bounds;
        let pieces = par_map(
            batches.iter().collect(),
            parallelism,
            |batch: &RecordBatch| {
                let rows = self.rows(batch)?;
                let mut parts: Vec<Vec<u32>> = vec![Vec::new(); n];
                for i in 0..rows.num_rows() {
                    let row = rows.row(i);
                    let j = bounds.partition_point(|b| b.row() <= row);
                    parts[j].push(i as u32);
                }
                parts
                    .into_iter()
                    .map(|rows| take_rows(batch, rows))
                    .collect::<Result<Vec<_>, _>>()
            },
        )?;
        Ok(transpose(pieces, n))
    }

    /// A partition's pieces as one block sorted by the keys (stable).
    fn sorted(
        &self,
        schema: &Arc<Schema>,
        pieces: &[RecordBatch],
    ) -> Result<RecordBatch, DataError> {
        let all = concat(schema, pieces)?;
        let rows = self.rows(&all)?;
        let order = match packed_keys(&rows) {
            // Keys of at most 16 bytes each (a number or two, a date): sort
            // (key, index) pairs, which is stable and several times
            // faster than comparing rows.
            Some(mut keyed) => {
                keyed.sort_unstable();
                keyed.into_iter().map(|(_, i)| i).collect()
            }
            None => {
                let mut order: Vec<u32> = (0..all.num_rows() as u32).collect();
                order.sort_by(|a, b| rows.row(*a as usize).cmp(&rows.row(*b as usize)));
                order
            }
        };
        take_rows(&all, order)
    }
}

/// Each row's key bytes as a big-endian `u128` (equal-length rows of at
/// most 16 bytes, zero-padded, compare as their bytes do), with its index.
fn packed_keys(rows: &Rows) -> Option<Vec<(u128, u32)>> {
    let width = rows.iter().next().map_or(0, |r| r.as_ref().len());
    if width == 0 || width > 16 {
        return None;
    }
    let mut keyed = Vec::with_capacity(rows.num_rows());
    for (i, row) in rows.iter().enumerate() {
        let bytes = row.as_ref();
        if bytes.len() != width {
            return None;
        }
        let mut buf = [0u8; 16];
        buf[..width].copy_from_slice(bytes);
        keyed.push((u128::from_be_bytes(buf), i as u32));
    }
    Some(keyed)
}

pub(crate) fn column_names(schema: &Schema) -> Vec<String> {
    schema.fields().iter().map(|f| f.name().clone()).collect()
}

/// Joins two equally long inputs column-wise, in the left's blocks; a
/// right column whose name the left has gets the suffix `_1`.
pub(crate) fn zip(
    left: Vec<RecordBatch>,
    right: Vec<RecordBatch>,
) -> Result<Vec<RecordBatch>, DataError> {
    let rows = |v: &[RecordBatch]| v.iter().map(|b| b.num_rows()).sum::<usize>();
    let (l, r) = (rows(&left), rows(&right));
    if l != r {
        return Err(DataError::Invalid(format!(
            "zip of datasets with {l} and {r} rows; they must have as many"
        )));
    }
    let Some(right_schema) = right.first().map(|b| b.schema()) else {
        return Ok(left);
    };
    let right_all = concat(&right_schema, &right)?;
    let mut out = Vec::with_capacity(left.len());
    let mut offset = 0;
    for batch in left {
        let other = right_all.slice(offset, batch.num_rows());
        offset += batch.num_rows();
        let mut fields: Vec<Arc<Field>> = batch.schema().fields().iter().cloned().collect();
        let mut columns = batch.columns().to_vec();
        for (field, column) in other.schema().fields().iter().zip(other.columns()) {
            let mut name = field.name().clone();
            while fields.iter().any(|f| f.name() == &name) {
                name.push_str("_1");
            }
            fields.push(Arc::new(field.as_ref().clone().with_name(name)));
            columns.push(column.clone());
        }
        let schema = Arc::new(Schema::new(fields));
        out.push(RecordBatch::try_new(schema, columns).map_err(|e| DataError::arrow("zip", e))?);
    }
    Ok(out)
}
