//! Group-by aggregations over blocks sorted by their keys.

use std::sync::Arc;

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};

use arrow_array::{Array, ArrayRef, Float64Array, Int64Array, RecordBatch};
use arrow_cast::cast::{cast_with_options, CastOptions};
use arrow_row::{RowConverter, SortField};
use arrow_schema::{DataType, Field, Schema};

use crate::error::DataError;
use crate::shuffle::column_names;

/// One aggregate of a group (Ray Data's `Count`, `Sum`, `Mean`, `Min`, `Max`).
///
/// Its output column is named as Ray names it: `count()`, `sum(x)`,
/// `mean(x)`, `min(x)`, `max(x)`. Nulls are skipped; a group with no value
/// gets null. Integer columns sum, min and max as `Int64` (an overflow is
/// an error, not a wrap), floating ones as `Float64`; `mean` is `Float64`,
/// `count` (rows, nulls included) `Int64`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Aggregation {
    /// Rows in the group.
    Count,
    /// The sum of a column.
    Sum(String),
    /// The mean of a column.
    Mean(String),
    /// The least value of a column.
    Min(String),
    /// The greatest value of a column.
    Max(String),
}

impl Aggregation {
    /// Rows per group.
    pub fn count() -> Self {
        Aggregation::Count
    }
    /// `sum(column)`.
    pub fn sum(column: impl Into<String>) -> Self {
        Aggregation::Sum(column.into())
    }
    /// `mean(column)`.
    pub fn mean(column: impl Into<String>) -> Self {
        Aggregation::Mean(column.into())
    }
    /// `min(column)`.
    pub fn min(column: impl Into<String>) -> Self {
        Aggregation::Min(column.into())
    }
    /// `max(column)`.
    pub fn max(column: impl Into<String>) -> Self {
        Aggregation::Max(column.into())
    }

    /// The output column's name.
    pub fn output_name(&self) -> String {
        match self {
            Aggregation::Count => "count()".into(),
            Aggregation::Sum(c) => format!("sum({c})"),
            Aggregation::Mean(c) => format!("mean({c})"),
            Aggregation::Min(c) => format!("min({c})"),
            Aggregation::Max(c) => format!("max({c})"),
        }
    }

    fn column(&self) -> Option<&str> {
        match self {
            Aggregation::Count => None,
            Aggregation::Sum(c)
            | Aggregation::Mean(c)
            | Aggregation::Min(c)
            | Aggregation::Max(c) => Some(c),
        }
    }
}

/// A column's values as the aggregates read them.
enum Values {
    Int(Int64Array),
    Float(Float64Array),
}

fn values(batch: &RecordBatch, column: &str) -> Result<Values, DataError> {
    let schema = batch.schema();
    let index = schema.index_of(column).map_err(|_| DataError::Column {
        column: column.into(),
        message: format!(
            "no such column; the columns are {:?}",
            column_names(&schema)
        ),
    })?;
    let array = batch.column(index);
    let options = CastOptions {
        safe: false,
        ..CastOptions::default()
    };
    let cast = |to: &DataType| {
        cast_with_options(array, to, &options).map_err(|e| DataError::Column {
            column: column.into(),
            message: e.to_string(),
        })
    };
    let dt = array.data_type();
    if dt.is_integer() {
        let a = cast(&DataType::Int64)?;
        Ok(Values::Int(
            a.as_any()
                .downcast_ref::<Int64Array>()
                .cloned()
                .ok_or_else(|| bad(column, dt))?,
        ))
    } else if dt.is_floating() {
        let a = cast(&DataType::Float64)?;
        Ok(Values::Float(
            a.as_any()
                .downcast_ref::<Float64Array>()
                .cloned()
                .ok_or_else(|| bad(column, dt))?,
        ))
    } else {
        Err(bad(column, dt))
    }
}

fn bad(column: &str, dt: &DataType) -> DataError {
    DataError::Column {
        column: column.into(),
        message: format!("is {dt}; aggregates need numbers"),
    }
}

/// One group's running value of one aggregate.
#[derive(Clone, Copy, Debug)]
enum Acc {
    Count(i64),
    SumInt(Option<i64>),
    SumFloat(Option<f64>),
    Mean(f64, u64),
    MinInt(Option<i64>),
    MaxInt(Option<i64>),
    MinFloat(Option<f64>),
    MaxFloat(Option<f64>),
}

impl Acc {
    fn new(agg: &Aggregation, values: Option<&Values>) -> Acc {
        let int = matches!(values, Some(Values::Int(_)));
        match agg {
            Aggregation::Count => Acc::Count(0),
            Aggregation::Sum(_) if int => Acc::SumInt(None),
            Aggregation::Sum(_) => Acc::SumFloat(None),
            Aggregation::Mean(_) => Acc::Mean(0.0, 0),
            Aggregation::Min(_) if int => Acc::MinInt(None),
            Aggregation::Max(_) if int => Acc::MaxInt(None),
            Aggregation::Min(_) => Acc::MinFloat(None),
            Aggregation::Max(_) => Acc::MaxFloat(None),
        }
    }

    /// Adds row `i` of `values` (nulls skipped; `Count` counts rows).
    fn add(&mut self, values: Option<&Values>, i: usize) -> Result<(), String> {
        if let Acc::Count(n) = self {
            *n += 1;
            return Ok(());
        }
        let (int, float) = match values {
            Some(Values::Int(a)) if a.is_valid(i) => (Some(a.value(i)), a.value(i) as f64),
            Some(Values::Float(a)) if a.is_valid(i) => (None, a.value(i)),
            _ => return Ok(()),
        };
        self.merge(&match (*self, int) {
            (Acc::SumInt(_), Some(v)) => Acc::SumInt(Some(v)),
            (Acc::MinInt(_), Some(v)) => Acc::MinInt(Some(v)),
            (Acc::MaxInt(_), Some(v)) => Acc::MaxInt(Some(v)),
            (Acc::SumFloat(_), _) => Acc::SumFloat(Some(float)),
            (Acc::MinFloat(_), _) => Acc::MinFloat(Some(float)),
            (Acc::MaxFloat(_), _) => Acc::MaxFloat(Some(float)),
            (Acc::Mean(..), _) => Acc::Mean(float, 1),
            _ => return Err("the column changed type between blocks".into()),
        })
    }

    /// Folds another partial value of the same aggregate into this one.
    fn merge(&mut self, other: &Acc) -> Result<(), String> {
        fn pick<T: Copy>(a: Option<T>, b: Option<T>, f: fn(T, T) -> T) -> Option<T> {
            match (a, b) {
                (Some(a), Some(b)) => Some(f(a, b)),
                (a, b) => a.or(b),
            }
        }
        *self = match (*self, *other) {
            (Acc::Count(a), Acc::Count(b)) => Acc::Count(a + b),
            (Acc::SumInt(a), Acc::SumInt(b)) => match (a, b) {
                (Some(a), Some(b)) => Acc::SumInt(Some(a.checked_add(b).ok_or("overflows i64")?)),
                (a, b) => Acc::SumInt(a.or(b)),
            },
            (Acc::SumFloat(a), Acc::SumFloat(b)) => Acc::SumFloat(pick(a, b, |a, b| a + b)),
            (Acc::Mean(s, n), Acc::Mean(t, m)) => Acc::Mean(s + t, n + m),
            (Acc::MinInt(a), Acc::MinInt(b)) => Acc::MinInt(pick(a, b, i64::min)),
            (Acc::MaxInt(a), Acc::MaxInt(b)) => Acc::MaxInt(pick(a, b, i64::max)),
            (Acc::MinFloat(a), Acc::MinFloat(b)) => Acc::MinFloat(pick(a, b, f64::min)),
            (Acc::MaxFloat(a), Acc::MaxFloat(b)) => Acc::MaxFloat(pick(a, b, f64::max)),
            _ => return Err("the column changed type between blocks".into()),
        };
        Ok(())
    }
}

/// FxHash (rustc's) over a group key's row bytes: keys are short and come
/// from the user's own data, so a fast hash beats SipHash's protection
/// against chosen collisions, which costs more than the rest of the fold.
#[derive(Default)]
struct KeyHasher(u64);

impl Hasher for KeyHasher {
    fn write(&mut self, bytes: &[u8]) {
        const K: u64 = 0x51_7c_c1_b7_27_22_0a_95;
        let mut chunks = bytes.chunks_exact(8);
        for chunk in &mut chunks {
            let mut word = [0u8; 8];
            word.copy_from_slice(chunk);
            self.0 = (self.0.rotate_left(5) ^ u64::from_le_bytes(word)).wrapping_mul(K);
        }
        for byte in chunks.remainder() {
            self.0 = (self.0.rotate_left(5) ^ u64::from(*byte)).wrapping_mul(K);
        }
    }

    fn finish(&self) -> u64 {
        self.0
    }
}

/// A hash aggregation: each block folds into its own `Groups` (in
/// parallel), which then merge; only one row of state per group is kept,
/// never the input.
pub(crate) struct Groups {
    keys: Vec<String>,
    aggregations: Vec<Aggregation>,
    converter: Option<RowConverter>,
    key_fields: Vec<Field>,
    /// Each group's key, in Arrow's row format (bytes that compare as the
    /// keys do), and its index in `accs` (a stride of one per aggregate).
    index: HashMap<Box<[u8]>, usize, BuildHasherDefault<KeyHasher>>,
    accs: Vec<Acc>,
}

impl Groups {
    pub(crate) fn new(keys: &[String], aggregations: &[Aggregation]) -> Result<Groups, DataError> {
        if keys.is_empty() {
            return Err(DataError::Invalid("group by no columns".into()));
        }
        Ok(Groups {
            keys: keys.to_vec(),
            aggregations: aggregations.to_vec(),
            converter: None,
            key_fields: Vec::new(),
            index: HashMap::default(),
            accs: Vec::new(),
        })
    }

    fn column_error(&self, aggregation: &Aggregation, message: String) -> DataError {
        DataError::Column {
            column: aggregation.output_name(),
            message,
        }
    }

    /// Folds one block in.
    pub(crate) fn add(&mut self, batch: &RecordBatch) -> Result<(), DataError> {
        let schema = batch.schema();
        let mut key_columns = Vec::with_capacity(self.keys.len());
        for key in &self.keys {
            let index = schema.index_of(key).map_err(|_| DataError::Column {
                column: key.clone(),
                message: format!(
                    "no such column; the columns are {:?}",
                    column_names(&schema)
                ),
            })?;
            key_columns.push(batch.column(index).clone());
        }
        if self.converter.is_none() {
            let fields = key_columns
                .iter()
                .map(|c| SortField::new(c.data_type().clone()))
                .collect();
            self.converter =
                Some(RowConverter::new(fields).map_err(|e| DataError::arrow("group keys", e))?);
            self.key_fields = self
                .keys
                .iter()
                .zip(&key_columns)
                .map(|(k, c)| Field::new(k, c.data_type().clone(), true))
                .collect();
        }
        let Some(converter) = &self.converter else {
            return Ok(());
        };
        let rows = converter
            .convert_columns(&key_columns)
            .map_err(|e| DataError::arrow("group keys", e))?;
        let values: Vec<Option<Values>> = self
            .aggregations
            .iter()
            .map(|a| a.column().map(|c| values(batch, c)).transpose())
            .collect::<Result<_, _>>()?;
        let stride = self.aggregations.len();
        for i in 0..rows.num_rows() {
            let row = rows.row(i);
            let group = match self.index.get(row.as_ref()) {
                Some(g) => *g,
                None => {
                    let g = self.index.len();
                    self.index.insert(row.as_ref().into(), g);
                    self.accs.extend(
                        self.aggregations
                            .iter()
                            .zip(&values)
                            .map(|(a, v)| Acc::new(a, v.as_ref())),
                    );
                    g
                }
            };
            for (k, value) in values.iter().enumerate() {
                let acc = &mut self.accs[group * stride + k];
                acc.add(value.as_ref(), i)
                    .map_err(|m| self.column_error(&self.aggregations[k], m))?;
            }
        }
        Ok(())
    }

    /// Folds another block's groups in.
    pub(crate) fn merge(&mut self, other: Groups) -> Result<(), DataError> {
        if self.converter.is_none() {
            *self = other;
            return Ok(());
        }
        let stride = self.aggregations.len();
        for (key, g) in other.index {
            let theirs = &other.accs[g * stride..(g + 1) * stride];
            match self.index.get(&key) {
                Some(mine) => {
                    for (k, acc) in theirs.iter().enumerate() {
                        let m = mine * stride + k;
                        self.accs[m].merge(acc).map_err(|e| DataError::Column {
                            column: self.aggregations[k].output_name(),
                            message: e,
                        })?;
                    }
                }
                None => {
                    self.index.insert(key, self.index.len());
                    self.accs.extend_from_slice(theirs);
                }
            }
        }
        Ok(())
    }

    /// One row per group, sorted by the keys: the keys, then each aggregate.
    pub(crate) fn finish(self) -> Result<Option<RecordBatch>, DataError> {
        let Some(converter) = self.converter else {
            return Ok(None);
        };
        let mut groups: Vec<(Box<[u8]>, usize)> = self.index.into_iter().collect();
        groups.sort_unstable_by(|a, b| a.0.cmp(&b.0));
        let parser = converter.parser();
        let key_arrays = converter
            .convert_rows(groups.iter().map(|(key, _)| parser.parse(key)))
            .map_err(|e| DataError::arrow("group keys", e))?;
        let stride = self.aggregations.len();
        let mut fields: Vec<Field> = self.key_fields;
        let mut columns: Vec<ArrayRef> = key_arrays;
        for (k, agg) in self.aggregations.iter().enumerate() {
            let accs = groups.iter().map(|(_, g)| self.accs[g * stride + k]);
            let column: ArrayRef = match agg {
                Aggregation::Count => Arc::new(Int64Array::from_iter_values(accs.map(|a| {
                    if let Acc::Count(n) = a {
                        n
                    } else {
                        0
                    }
                }))),
                Aggregation::Mean(_) => Arc::new(
                    accs.map(|a| match a {
                        Acc::Mean(s, n) if n > 0 => Some(s / n as f64),
                        _ => None,
                    })
                    .collect::<Float64Array>(),
                ),
                _ => {
                    let accs: Vec<Acc> = accs.collect();
                    if accs
                        .iter()
                        .any(|a| matches!(a, Acc::SumInt(_) | Acc::MinInt(_) | Acc::MaxInt(_)))
                    {
                        Arc::new(
                            accs.iter()
                                .map(|a| match a {
                                    Acc::SumInt(v) | Acc::MinInt(v) | Acc::MaxInt(v) => *v,
                                    _ => None,
                                })
                                .collect::<Int64Array>(),
                        )
                    } else {
                        Arc::new(
                            accs.iter()
                                .map(|a| match a {
                                    Acc::SumFloat(v) | Acc::MinFloat(v) | Acc::MaxFloat(v) => *v,
                                    _ => None,
                                })
                                .collect::<Float64Array>(),
                        )
                    }
                }
            };
            fields.push(Field::new(
                agg.output_name(),
                column.data_type().clone(),
                true,
            ));
            columns.push(column);
        }
        RecordBatch::try_new(Arc::new(Schema::new(fields)), columns)
            .map(Some)
            .map_err(|e| DataError::arrow("group-by output", e))
    }
}

impl crate::exec::Exec {
    /// Folds every block into its own groups as it arrives (`parallelism`
    /// at once, on blocking threads; each block freed once folded), merges
    /// them, and emits one row per group, sorted by the keys.
    pub(crate) async fn group_by(
        self: Arc<Self>,
        mut input: crate::exec::FlowRx,
        keys: Vec<String>,
        aggregations: Vec<Aggregation>,
        tx: crate::exec::FlowTx,
    ) {
        use futures::stream::{FuturesUnordered, StreamExt};
        let op = self.operator("groupby");
        let parallelism = self.options.parallelism.max(1);
        let folded = async {
            let mut total = Groups::new(&keys, &aggregations)?;
            let mut running = FuturesUnordered::new();
            let mut input_done = false;
            loop {
                while !input_done && running.len() < parallelism {
                    let Some(flow) = input.recv().await else {
                        input_done = true;
                        break;
                    };
                    let flow = flow?;
                    let (rt, keys, aggregations) =
                        (self.rt.clone(), keys.clone(), aggregations.clone());
                    running.push(self.rt.tokio_handle().spawn_blocking(move || {
                        let block =
                            rt.get_blocking(&flow.block.object)
                                .map_err(|e| DataError::Store {
                                    what: flow.block.origin.to_string(),
                                    message: e.to_string(),
                                })?;
                        let mut groups = Groups::new(&keys, &aggregations)?;
                        groups.add(&block.0)?;
                        Ok::<_, DataError>(groups)
                    }));
                }
                match running.next().await {
                    Some(done) => total
                        .merge(done.map_err(|e| DataError::Stopped(format!("groupby: {e}")))??)?,
                    None => break,
                }
            }
            total.finish()
        };
        match folded.await {
            Ok(Some(batch)) => {
                let per_block = self.options.rows_per_block.max(1);
                let blocks = (0..batch.num_rows())
                    .step_by(per_block)
                    .map(|start| batch.slice(start, per_block.min(batch.num_rows() - start)))
                    .collect();
                op.emit_all(blocks, &tx).await;
            }
            Ok(None) => {}
            Err(e) => {
                let _ = tx.send(Err(e)).await;
            }
        }
    }
}
