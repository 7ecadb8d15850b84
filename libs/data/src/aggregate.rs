//! Group-by aggregations over blocks sorted by their keys.

use std::sync::Arc;

use arrow_array::{Array, ArrayRef, Float64Array, Int64Array, RecordBatch, UInt32Array};
use arrow_cast::cast::{cast_with_options, CastOptions};
use arrow_schema::{DataType, Field, Schema};
use arrow_select::take::take;

use crate::error::DataError;
use crate::shuffle::{column_names, RangeSort};

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

/// One output row per group of `sorted` (rows sorted by `keys`, so each
/// group's rows are contiguous): its keys, then each aggregate.
pub(crate) fn sorted_groups(
    sorted: &RecordBatch,
    keys: &[String],
    aggregations: &[Aggregation],
    sort: &RangeSort,
) -> Result<RecordBatch, DataError> {
    let rows = sorted.num_rows();
    let key_rows = sort.rows(sorted)?;
    let mut starts: Vec<usize> = Vec::new();
    for i in 0..rows {
        if i == 0 || key_rows.row(i) != key_rows.row(i - 1) {
            starts.push(i);
        }
    }
    let ranges: Vec<(usize, usize)> = starts
        .iter()
        .enumerate()
        .map(|(g, s)| (*s, starts.get(g + 1).copied().unwrap_or(rows)))
        .collect();
    let first = UInt32Array::from(starts.iter().map(|s| *s as u32).collect::<Vec<_>>());
    let schema = sorted.schema();
    let mut fields = Vec::new();
    let mut columns: Vec<ArrayRef> = Vec::new();
    for key in keys {
        let index = schema.index_of(key).map_err(|_| DataError::Column {
            column: key.clone(),
            message: "no such column".into(),
        })?;
        fields.push(Arc::new(schema.field(index).clone()));
        columns.push(
            take(sorted.column(index), &first, None)
                .map_err(|e| DataError::arrow("group keys", e))?,
        );
    }
    for agg in aggregations {
        let name = agg.output_name();
        let column: ArrayRef = match (agg, agg.column().map(|c| values(sorted, c)).transpose()?) {
            (Aggregation::Count, _) => Arc::new(Int64Array::from_iter_values(
                ranges.iter().map(|(s, e)| (e - s) as i64),
            )),
            (_, None) => return Err(DataError::Invalid(format!("{name} names no column"))),
            (Aggregation::Mean(_), Some(v)) => Arc::new(Float64Array::from(
                ranges.iter().map(|r| mean(&v, *r)).collect::<Vec<_>>(),
            )),
            (agg, Some(Values::Int(a))) => {
                let mut out = Vec::with_capacity(ranges.len());
                for (s, e) in &ranges {
                    let vals = (*s..*e).filter(|i| a.is_valid(*i)).map(|i| a.value(i));
                    out.push(match agg {
                        Aggregation::Sum(_) => {
                            let mut sum: Option<i64> = None;
                            for v in vals {
                                sum = Some(sum.unwrap_or(0).checked_add(v).ok_or_else(|| {
                                    DataError::Column {
                                        column: name.clone(),
                                        message: "overflows i64".into(),
                                    }
                                })?);
                            }
                            sum
                        }
                        Aggregation::Min(_) => vals.min(),
                        _ => vals.max(),
                    });
                }
                Arc::new(Int64Array::from(out))
            }
            (agg, Some(Values::Float(a))) => {
                let out: Vec<Option<f64>> = ranges
                    .iter()
                    .map(|(s, e)| {
                        let vals = (*s..*e).filter(|i| a.is_valid(*i)).map(|i| a.value(i));
                        match agg {
                            Aggregation::Sum(_) => {
                                vals.fold(None, |acc: Option<f64>, v| Some(acc.unwrap_or(0.0) + v))
                            }
                            Aggregation::Min(_) => vals.fold(None, |acc: Option<f64>, v| {
                                Some(acc.map_or(v, |m| m.min(v)))
                            }),
                            _ => vals.fold(None, |acc: Option<f64>, v| {
                                Some(acc.map_or(v, |m| m.max(v)))
                            }),
                        }
                    })
                    .collect();
                Arc::new(Float64Array::from(out))
            }
        };
        fields.push(Arc::new(Field::new(name, column.data_type().clone(), true)));
        columns.push(column);
    }
    RecordBatch::try_new(Arc::new(Schema::new(fields)), columns)
        .map_err(|e| DataError::arrow("group-by output", e))
}

fn mean(values: &Values, (s, e): (usize, usize)) -> Option<f64> {
    let (mut sum, mut n) = (0.0, 0u64);
    for i in s..e {
        let v = match values {
            Values::Int(a) if a.is_valid(i) => a.value(i) as f64,
            Values::Float(a) if a.is_valid(i) => a.value(i),
            _ => continue,
        };
        sum += v;
        n += 1;
    }
    (n > 0).then(|| sum / n as f64)
}
