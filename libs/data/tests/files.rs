//! Parquet, CSV and JSON lines: what a dataset writes, it reads back the same.

use std::sync::{Arc, OnceLock};

use arrow_array::{ArrayRef, BooleanArray, Float64Array, Int64Array, RecordBatch, StringArray};
use arrow_schema::{DataType, Field, Schema};
use troupe::prelude::{Config, Runtime};
use troupe_data::{DataError, DataOptions, Dataset};

fn runtime() -> &'static Runtime {
    static RT: OnceLock<Runtime> = OnceLock::new();
    RT.get_or_init(|| match Runtime::start(Config::default()) {
        Ok(rt) => rt,
        Err(e) => panic!("cannot start a runtime: {e}"),
    })
}

/// Rows `start..start+n` with a column of each common type (some nulls).
fn batch(start: i64, n: i64) -> RecordBatch {
    let ids: Vec<i64> = (start..start + n).collect();
    let schema = Arc::new(Schema::new(vec![
        Field::new("id", DataType::Int64, false),
        Field::new("score", DataType::Float64, false),
        Field::new("name", DataType::Utf8, true),
        Field::new("flag", DataType::Boolean, false),
    ]));
    let columns: Vec<ArrayRef> = vec![
        Arc::new(Int64Array::from(ids.clone())),
        Arc::new(Float64Array::from_iter_values(
            ids.iter().map(|i| *i as f64 * 0.25),
        )),
        Arc::new(StringArray::from_iter(
            ids.iter()
                .map(|i| (i % 7 != 0).then(|| format!("n,\"{i}\""))),
        )),
        Arc::new(BooleanArray::from_iter(
            ids.iter().map(|i| Some(i % 3 == 0)),
        )),
    ];
    RecordBatch::try_new(schema, columns).expect("a valid batch")
}

fn source() -> (Dataset, RecordBatch) {
    let parts: Vec<RecordBatch> = (0..5).map(|i| batch(i * 200, 200)).collect();
    let all =
        arrow_select::concat::concat_batches(&parts[0].schema(), &parts).expect("same schema");
    (Dataset::from_batches(runtime(), parts), all)
}

fn concat(batches: &[RecordBatch]) -> RecordBatch {
    arrow_select::concat::concat_batches(&batches[0].schema(), batches).expect("same schema")
}

#[test]
fn parquet_round_trips_every_column_and_splits_by_row_group() {
    let dir = tempfile::tempdir().expect("a temp dir");
    let (ds, all) = source();
    let written = runtime()
        .block_on(ds.write_parquet(dir.path()))
        .expect("writes");
    assert_eq!((written.files.len(), written.rows), (5, 1000));
    assert!(written
        .files
        .iter()
        .all(|f| f.extension().is_some_and(|e| e == "parquet")));
    let back = Dataset::read_parquet(runtime(), &[dir.path()]).expect("finds the files");
    assert_eq!(back.describe(), "read_parquet(5 tasks)");
    let read = runtime().block_on(back.collect()).expect("reads");
    assert_eq!(concat(&read), all);
    // A glob, and blocks cut to rows_per_block.
    let glob = dir.path().join("part-0000[01].parquet");
    let small = Dataset::read_parquet(runtime(), &[glob])
        .expect("matches")
        .with_options(DataOptions::new().rows_per_block(64));
    let read = runtime().block_on(small.collect()).expect("reads");
    assert_eq!(
        read.len(),
        8,
        "two files of 200 rows in blocks of at most 64"
    );
    assert_eq!(concat(&read), all.slice(0, 400));
}

#[test]
fn csv_and_json_round_trip_with_inferred_schemas() {
    let (ds, all) = source();
    for format in ["csv", "json"] {
        let dir = tempfile::tempdir().expect("a temp dir");
        let rt = runtime();
        let written = match format {
            "csv" => rt.block_on(ds.write_csv(dir.path())),
            _ => rt.block_on(ds.write_json(dir.path())),
        }
        .expect("writes");
        assert_eq!(written.rows, 1000);
        let back = match format {
            "csv" => Dataset::read_csv(rt, &[dir.path()]),
            _ => Dataset::read_json(rt, &[dir.path()]),
        }
        .expect("reads the schema");
        let read = concat(&rt.block_on(back.collect()).expect("reads"));
        assert_eq!(read.num_rows(), 1000, "{format}");
        for column in ["id", "score", "name", "flag"] {
            let (got, want) = (
                read.column_by_name(column).expect(column),
                all.column_by_name(column).expect(column),
            );
            // JSON drops null fields and CSV writes them empty: both read back as nulls.
            assert_eq!(got.as_ref(), want.as_ref(), "{format}: column {column}");
        }
    }
}

#[test]
fn a_missing_path_or_an_unmatched_glob_is_an_error_naming_it() {
    let err = Dataset::read_parquet(runtime(), &["/nonexistent/data.parquet"])
        .err()
        .expect("no such file");
    assert!(
        matches!(err, DataError::Io { .. })
            && err.to_string().contains("/nonexistent/data.parquet"),
        "{err}"
    );
    let dir = tempfile::tempdir().expect("a temp dir");
    let err = Dataset::read_csv(runtime(), &[dir.path().join("*.csv")])
        .err()
        .expect("no match");
    assert!(err.to_string().contains("matches no file"), "{err}");
}

#[test]
fn a_corrupt_parquet_file_is_an_error_naming_the_file() {
    let dir = tempfile::tempdir().expect("a temp dir");
    let path = dir.path().join("bad.parquet");
    std::fs::write(&path, b"PAR1 this is not parquet").expect("writes");
    let err = Dataset::read_parquet(runtime(), &[&path])
        .err()
        .expect("not parquet");
    assert!(err.to_string().contains("bad.parquet"), "{err}");
}

#[test]
fn a_selection_right_after_read_parquet_decodes_only_its_columns_in_its_order() {
    let dir = tempfile::tempdir().expect("a temp dir");
    let (ds, all) = source();
    runtime()
        .block_on(ds.write_parquet(dir.path()))
        .expect("writes");
    let read = Dataset::read_parquet(runtime(), &[dir.path()]).expect("finds the files");
    let selected = read.select_columns(&["flag", "id"]);
    assert_eq!(
        selected.describe(),
        "read_parquet(5 tasks, columns flag, id)"
    );
    let got = concat(&runtime().block_on(selected.collect()).expect("reads"));
    let names: Vec<String> = got
        .schema()
        .fields()
        .iter()
        .map(|f| f.name().clone())
        .collect();
    assert_eq!(names, ["flag", "id"]);
    assert_eq!(
        got.column(0).as_ref(),
        all.column_by_name("flag").expect("flag").as_ref()
    );
    assert_eq!(
        got.column(1).as_ref(),
        all.column_by_name("id").expect("id").as_ref()
    );
    let err = runtime()
        .block_on(read.select_columns(&["id", "nope"]).count())
        .expect_err("no such column");
    assert!(
        err.to_string().contains("\"nope\"") && err.to_string().contains("row group"),
        "{err}"
    );
}
