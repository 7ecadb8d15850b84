//! Every transform against the same computation done in plain Rust, on
//! random data cut into random blocks.

use std::collections::BTreeMap;
use std::sync::{Arc, OnceLock};

use arrow_array::{Array, ArrayRef, Float64Array, Int64Array, RecordBatch};
use arrow_schema::{DataType, Field, Schema};
use proptest::prelude::*;
use troupe::prelude::{Config, Runtime};
use troupe_data::{Aggregation, DataError, DataOptions, Dataset, SortKey};

/// One runtime for every case: starting one per case would only slow them.
fn runtime() -> &'static Runtime {
    static RT: OnceLock<Runtime> = OnceLock::new();
    RT.get_or_init(|| match Runtime::start(Config::default()) {
        Ok(rt) => rt,
        Err(e) => panic!("cannot start a runtime: {e}"),
    })
}

#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
struct Row {
    k: i64,
    v: i64,
    x: f64,
}

fn batch_of(rows: &[Row]) -> RecordBatch {
    let schema = Arc::new(Schema::new(vec![
        Field::new("k", DataType::Int64, false),
        Field::new("v", DataType::Int64, false),
        Field::new("x", DataType::Float64, false),
    ]));
    let columns: Vec<ArrayRef> = vec![
        Arc::new(Int64Array::from_iter_values(rows.iter().map(|r| r.k))),
        Arc::new(Int64Array::from_iter_values(rows.iter().map(|r| r.v))),
        Arc::new(Float64Array::from_iter_values(rows.iter().map(|r| r.x))),
    ];
    RecordBatch::try_new(schema, columns).expect("a valid batch")
}

/// `rows` cut into blocks of `block` rows.
fn dataset(rows: &[Row], block: usize) -> Dataset {
    let batches = rows.chunks(block.max(1)).map(batch_of).collect();
    Dataset::from_batches(runtime(), batches).with_options(DataOptions::new().parallelism(3))
}

fn rows_of(batches: &[RecordBatch]) -> Vec<Row> {
    let mut out = Vec::new();
    for b in batches {
        let col = |name: &str| b.column_by_name(name).cloned().expect("the column");
        let (k, v, x) = (col("k"), col("v"), col("x"));
        let k = k.as_any().downcast_ref::<Int64Array>().expect("k is Int64");
        let v = v.as_any().downcast_ref::<Int64Array>().expect("v is Int64");
        let x = x
            .as_any()
            .downcast_ref::<Float64Array>()
            .expect("x is Float64");
        for i in 0..b.num_rows() {
            out.push(Row {
                k: k.value(i),
                v: v.value(i),
                x: x.value(i),
            });
        }
    }
    out
}

fn run<T>(f: impl std::future::Future<Output = T>) -> T {
    runtime().block_on(f)
}

fn rows_strategy() -> impl Strategy<Value = (Vec<Row>, usize)> {
    let row = (0i64..6, -1000i64..1000, -100.0f64..100.0).prop_map(|(k, v, x)| Row { k, v, x });
    (prop::collection::vec(row, 0..300), 1usize..80)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]

    #[test]
    fn map_batches_and_filters_equal_the_same_code_on_a_vec((rows, block) in rows_strategy(), cut in -1000i64..1000) {
        let out = run(
            dataset(&rows, block)
                .map_batches(|b: RecordBatch| -> Result<RecordBatch, DataError> {
                    let v = b.column_by_name("v").cloned().expect("v");
                    let v = v.as_any().downcast_ref::<Int64Array>().expect("Int64");
                    let doubled: ArrayRef = Arc::new(Int64Array::from_iter_values(v.values().iter().map(|x| x * 2)));
                    let mut cols = b.columns().to_vec();
                    cols[1] = doubled;
                    Ok(RecordBatch::try_new(b.schema(), cols).expect("same schema"))
                })
                .filter(move |r: &Row| r.v > cut)
                .filter_batches(|b: &RecordBatch| {
                    let x = b.column_by_name("x").cloned().expect("x");
                    arrow_ord::cmp::gt(&x, &Float64Array::new_scalar(0.0))
                })
                .collect(),
        )
        .expect("the pipeline runs");
        let expected: Vec<Row> = rows
            .iter()
            .map(|r| Row { v: r.v * 2, ..r.clone() })
            .filter(|r| r.v > cut && r.x > 0.0)
            .collect();
        prop_assert_eq!(rows_of(&out), expected);
    }

    #[test]
    fn sort_equals_a_stable_sort_of_the_vec((rows, block) in rows_strategy(), descending in any::<bool>()) {
        let key = if descending { SortKey::desc("k") } else { SortKey::asc("k") };
        let out = run(dataset(&rows, block).sort(vec![key, SortKey::asc("v")]).collect()).expect("sorts");
        let mut expected = rows.clone();
        expected.sort_by(|a, b| {
            let by_k = if descending { b.k.cmp(&a.k) } else { a.k.cmp(&b.k) };
            by_k.then(a.v.cmp(&b.v))
        });
        let got = rows_of(&out);
        // Rows equal in (k, v) may come in any order across blocks: compare keys, then the multiset.
        prop_assert_eq!(got.iter().map(|r| (r.k, r.v)).collect::<Vec<_>>(), expected.iter().map(|r| (r.k, r.v)).collect::<Vec<_>>());
        prop_assert_eq!(sorted_bits(&got), sorted_bits(&expected));
    }

    #[test]
    fn a_sort_by_one_key_is_stable((rows, block) in rows_strategy(), by_float in any::<bool>()) {
        let column = if by_float { "x" } else { "k" };
        let out = run(dataset(&rows, block).sort_by(column).collect()).expect("sorts");
        let mut expected = rows.clone();
        if by_float {
            expected.sort_by(|a, b| a.x.total_cmp(&b.x));
        } else {
            expected.sort_by_key(|r| r.k);
        }
        prop_assert_eq!(rows_of(&out), expected);
    }

    #[test]
    fn random_shuffle_is_a_permutation_fixed_by_its_seed((rows, block) in rows_strategy(), seed in any::<u64>()) {
        let ds = dataset(&rows, block);
        let once = rows_of(&run(ds.random_shuffle(seed).collect()).expect("shuffles"));
        let again = rows_of(&run(ds.random_shuffle(seed).collect()).expect("shuffles"));
        prop_assert_eq!(&once, &again);
        prop_assert_eq!(sorted_bits(&once), sorted_bits(&rows));
    }

    #[test]
    fn groupby_aggregates_equal_a_btreemap((rows, block) in rows_strategy()) {
        let out = run(
            dataset(&rows, block)
                .groupby(["k"])
                .aggregate([Aggregation::count(), Aggregation::sum("v"), Aggregation::min("v"), Aggregation::max("x"), Aggregation::mean("v")])
                .collect(),
        )
        .expect("groups");
        let mut expected: BTreeMap<i64, Vec<&Row>> = BTreeMap::new();
        for r in &rows {
            expected.entry(r.k).or_default().push(r);
        }
        let mut got = Vec::new();
        for b in &out {
            let int = |name: &str| b.column_by_name(name).expect(name).as_any().downcast_ref::<Int64Array>().expect("Int64").clone();
            let float = |name: &str| b.column_by_name(name).expect(name).as_any().downcast_ref::<Float64Array>().expect("Float64").clone();
            let (k, count, sum, min, max, mean) = (int("k"), int("count()"), int("sum(v)"), int("min(v)"), float("max(x)"), float("mean(v)"));
            for i in 0..b.num_rows() {
                got.push((k.value(i), count.value(i), sum.value(i), min.value(i), max.value(i), mean.value(i)));
            }
        }
        prop_assert_eq!(got.len(), expected.len());
        for ((k, count, sum, min, max, mean), (ek, group)) in got.iter().zip(&expected) {
            prop_assert_eq!(k, ek);
            prop_assert_eq!(*count as usize, group.len());
            prop_assert_eq!(*sum, group.iter().map(|r| r.v).sum::<i64>());
            prop_assert_eq!(*min, group.iter().map(|r| r.v).min().expect("a row"));
            prop_assert_eq!(*max, group.iter().map(|r| r.x).fold(f64::MIN, f64::max));
            let emean = group.iter().map(|r| r.v as f64).sum::<f64>() / group.len() as f64;
            prop_assert!((mean - emean).abs() < 1e-9, "mean {} vs {}", mean, emean);
        }
    }

    #[test]
    fn repartition_union_zip_and_limit_keep_rows_in_order((rows, block) in rows_strategy(), parts in 1usize..7, n in 0usize..400) {
        let ds = dataset(&rows, block);
        let re = run(ds.repartition(parts).collect()).expect("repartitions");
        if !rows.is_empty() {
            prop_assert_eq!(re.len(), parts);
        }
        prop_assert_eq!(rows_of(&re), rows.clone());
        let twice = rows_of(&run(ds.union([ds.clone()]).collect()).expect("unions"));
        prop_assert_eq!(twice, rows.iter().chain(&rows).cloned().collect::<Vec<_>>());
        let limited = rows_of(&run(ds.limit(n).collect()).expect("limits"));
        prop_assert_eq!(limited, rows.iter().take(n).cloned().collect::<Vec<_>>());
        prop_assert_eq!(run(ds.count()).expect("counts"), rows.len());
        if !rows.is_empty() {
            let other = dataset(&rows, block + 3).select_columns(&["v"]);
            let zipped = run(ds.zip(&other).collect()).expect("zips");
            let v1: Vec<i64> = zipped.iter().flat_map(|b| b.column_by_name("v_1").expect("v_1").as_any().downcast_ref::<Int64Array>().expect("Int64").values().to_vec()).collect();
            prop_assert_eq!(v1, rows.iter().map(|r| r.v).collect::<Vec<_>>());
        }
    }
}

/// A multiset of rows, comparable (floats by their bits).
fn sorted_bits(rows: &[Row]) -> Vec<(i64, i64, u64)> {
    let mut v: Vec<_> = rows.iter().map(|r| (r.k, r.v, r.x.to_bits())).collect();
    v.sort();
    v
}

#[test]
fn map_flat_map_and_add_column_work_on_typed_rows() {
    #[derive(serde::Serialize, serde::Deserialize, Debug, PartialEq)]
    struct Pair {
        id: i64,
        half: f64,
    }
    let out = run(Dataset::range(runtime(), 10)
        .map(|r: serde_json::Value| Pair {
            id: r["id"].as_i64().unwrap_or(-1),
            half: 0.5,
        })
        .flat_map(|p: Pair| {
            if p.id % 2 == 0 {
                vec![Pair {
                    half: p.id as f64 / 2.0,
                    ..p
                }]
            } else {
                vec![]
            }
        })
        .add_column("twice", |b: &RecordBatch| -> Result<ArrayRef, DataError> {
            let id = b
                .column_by_name("id")
                .expect("id")
                .as_any()
                .downcast_ref::<Int64Array>()
                .expect("Int64")
                .clone();
            Ok(Arc::new(Int64Array::from_iter_values(
                id.values().iter().map(|v| v * 2),
            )))
        })
        .collect_rows::<serde_json::Value>())
    .expect("runs");
    let ids: Vec<i64> = out.iter().map(|r| r["id"].as_i64().expect("id")).collect();
    assert_eq!(ids, vec![0, 2, 4, 6, 8]);
    assert!(out
        .iter()
        .all(|r| r["twice"].as_i64() == r["id"].as_i64().map(|v| v * 2)));
    assert_eq!(out[2]["half"].as_f64(), Some(2.0));
}

#[test]
fn a_failing_function_names_its_operator_and_the_rows_of_its_block() {
    let rows: Vec<Row> = (0..100).map(|i| Row { k: i, v: i, x: 0.0 }).collect();
    let err = run(dataset(&rows, 10)
        .map_batches(|b: RecordBatch| {
            let v = b
                .column_by_name("v")
                .expect("v")
                .as_any()
                .downcast_ref::<Int64Array>()
                .expect("Int64")
                .clone();
            if v.values().contains(&42) {
                return Err("bad value 42".to_string());
            }
            Ok(b)
        })
        .collect())
    .expect_err("the block with 42 fails");
    let message = err.to_string();
    assert!(matches!(err, DataError::UserFunction { .. }), "{message}");
    assert!(
        message.contains("map_batches")
            && message.contains("rows 40..50")
            && message.contains("bad value 42"),
        "{message}"
    );
}

#[test]
fn a_panicking_function_fails_the_dataset_not_the_runtime() {
    let rows: Vec<Row> = (0..30).map(|i| Row { k: i, v: i, x: 0.0 }).collect();
    let err = run(dataset(&rows, 10)
        .filter(|r: &Row| if r.v == 25 { panic!("row 25") } else { true })
        .count())
    .expect_err("fails");
    assert!(
        err.to_string().contains("panicked: row 25") && err.to_string().contains("rows 20..30"),
        "{err}"
    );
    // The runtime still runs datasets.
    assert_eq!(run(dataset(&rows, 10).count()).expect("runs"), 30);
}

#[test]
fn a_missing_column_is_named_with_the_columns_there_are() {
    let rows = vec![Row { k: 1, v: 2, x: 3.0 }];
    let err = run(dataset(&rows, 1).sort_by("nope").collect()).expect_err("no such column");
    assert!(
        err.to_string().contains("\"nope\"") && err.to_string().contains("[\"k\", \"v\", \"x\"]"),
        "{err}"
    );
    let err =
        run(dataset(&rows, 1).select_columns(&["k", "w"]).collect()).expect_err("no such column");
    assert!(err.to_string().contains("\"w\""), "{err}");
}
