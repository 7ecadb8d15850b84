//! Parquet, CSV and JSON lines: what a dataset writes, it reads back the same.

use std::path::Path;
use std::sync::{Arc, OnceLock};

use arrow_array::{
    Array, ArrayRef, BooleanArray, Float64Array, Int64Array, RecordBatch, StringArray,
};
use arrow_schema::{DataType, Field, Schema};
use proptest::prelude::*;
use troupe::prelude::{Config, Runtime};
use troupe_data::{DataError, DataOptions, Dataset, TextReadOptions};

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

/// A header-only CSV file, or an empty JSON file, first in the list: the
/// schema comes from the next file with rows, so its values read as they
/// are (they read as nulls when the empty file's all-Null schema won).
#[test]
fn an_empty_first_file_does_not_decide_the_schema() {
    for (format, empty, full) in [
        ("csv", "id,name\n", "id,name\n1,a\n2,b\n"),
        (
            "json",
            "",
            "{\"id\":1,\"name\":\"a\"}\n{\"id\":2,\"name\":\"b\"}\n",
        ),
    ] {
        let dir = tempfile::tempdir().expect("a temp dir");
        std::fs::write(dir.path().join(format!("a.{format}")), empty).expect("writes");
        std::fs::write(dir.path().join(format!("b.{format}")), full).expect("writes");
        let rt = runtime();
        let ds = match format {
            "csv" => Dataset::read_csv(rt, &[dir.path()]),
            _ => Dataset::read_json(rt, &[dir.path()]),
        }
        .expect("reads the schema");
        let read = concat(&rt.block_on(ds.collect()).expect("reads"));
        let ids = read
            .column_by_name("id")
            .and_then(|c| c.as_any().downcast_ref::<Int64Array>())
            .unwrap_or_else(|| panic!("{format}: an Int64 id column in {:?}", read.schema()));
        assert_eq!(ids.values().to_vec(), vec![1, 2], "{format}");
        let names = read
            .column_by_name("name")
            .and_then(|c| c.as_any().downcast_ref::<StringArray>())
            .unwrap_or_else(|| panic!("{format}: a Utf8 name column in {:?}", read.schema()));
        assert_eq!(
            names.iter().collect::<Vec<_>>(),
            vec![Some("a"), Some("b")],
            "{format}"
        );
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

// Byte-range splits of CSV and JSON lines.

/// Rows as strings (`id`, `name`), whatever types the schema inferred.
fn text_rows(batches: &[RecordBatch]) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for b in batches.iter().filter(|b| b.num_rows() > 0) {
        let column = |name: &str| {
            let column = b.column_by_name(name).expect(name);
            arrow_cast::cast(column, &DataType::Utf8).expect("casts to text")
        };
        let (ids, names) = (column("id"), column("name"));
        let ids = ids.as_any().downcast_ref::<StringArray>().expect("Utf8");
        let names = names.as_any().downcast_ref::<StringArray>().expect("Utf8");
        assert_eq!((ids.null_count(), names.null_count()), (0, 0));
        for i in 0..b.num_rows() {
            out.push((ids.value(i).to_string(), names.value(i).to_string()));
        }
    }
    out
}

fn csv_field(s: &str) -> String {
    if s.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s.to_string()
    }
}

/// A CSV file (with its header) or a JSON-lines file of these rows.
fn text_file(format: &str, rows: &[(i64, String)], crlf: bool, trailing: bool) -> String {
    let mut lines: Vec<String> = if format == "csv" {
        vec!["id,name".into()]
    } else {
        vec![]
    };
    for (id, name) in rows {
        lines.push(match format {
            "csv" => format!("{id},{}", csv_field(name)),
            _ => serde_json::json!({"id": id, "name": name}).to_string(),
        });
    }
    let newline = if crlf { "\r\n" } else { "\n" };
    let mut text = lines.join(newline);
    if trailing && !lines.is_empty() {
        text.push_str(newline);
    }
    text
}

/// Blocks of at most 16 rows: a range's rows span several blocks (and
/// Arrow's readers, which allocate a batch's worth when made, start fast).
fn read_text(format: &str, dir: &Path, options: TextReadOptions) -> Dataset {
    let rt = runtime();
    match format {
        "csv" => Dataset::read_csv_with(rt, &[dir], options),
        _ => Dataset::read_json_with(rt, &[dir], options),
    }
    .expect("reads the schema")
    .with_options(DataOptions::new().rows_per_block(16))
}

/// Reads the files of `dir` whole, and split every `split` bytes for each
/// of `splits`: each must give `want`, the split reads one task per range.
fn check_splits(format: &str, dir: &Path, want: &[(String, String)], splits: &[u64]) {
    let whole = read_text(format, dir, TextReadOptions::new().whole_files());
    let got = text_rows(&runtime().block_on(whole.collect()).expect("reads whole"));
    assert_eq!(got, want, "{format} whole");
    let mut lens: Vec<_> = std::fs::read_dir(dir)
        .expect("lists")
        .map(|e| e.expect("an entry").metadata().expect("a file").len())
        .collect();
    lens.sort();
    for &split in splits {
        let tasks: u64 = lens
            .iter()
            .map(|&len| if len > split { len.div_ceil(split) } else { 1 })
            .sum();
        let split_ds = read_text(format, dir, TextReadOptions::new().split_bytes(split));
        assert_eq!(split_ds.describe(), format!("read_{format}({tasks} tasks)"));
        let got = text_rows(
            &runtime()
                .block_on(split_ds.collect())
                .expect("reads splits"),
        );
        assert_eq!(got, want, "{format} split every {split} bytes");
    }
}

fn name_strategy() -> impl Strategy<Value = String> {
    // Short names with commas and quotes, and lines far longer than a split.
    prop_oneof![4 => "[a-z ,\"]{0,30}", 1 => "[a-z]{200,700}"].prop_map(|s| format!("x-{s}"))
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    #[test]
    fn split_reads_give_the_rows_of_whole_reads_in_file_order(
        rows in prop::collection::vec((any::<i64>(), name_strategy()), 0..40),
        cut in any::<prop::sample::Index>(),
        crlf in any::<bool>(),
        trailing in any::<bool>(),
        split in 5u64..300,
    ) {
        let want: Vec<(String, String)> =
            rows.iter().map(|(id, name)| (id.to_string(), name.clone())).collect();
        let cut = cut.index(rows.len() + 1);
        for format in ["csv", "json"] {
            let dir = tempfile::tempdir().expect("a temp dir");
            // Two files, the second perhaps empty after its header (not the
            // first: the schema is inferred from it, all `Null` without rows).
            for (name, part) in [("a", &rows[..cut]), ("b", &rows[cut..])] {
                if name == "a" && part.is_empty() {
                    continue;
                }
                let path = dir.path().join(format!("{name}.{format}"));
                std::fs::write(&path, text_file(format, part, crlf, trailing)).expect("writes");
            }
            let total: u64 = std::fs::read_dir(dir.path())
                .expect("lists")
                .map(|e| e.expect("an entry").metadata().expect("a file").len())
                .sum();
            check_splits(format, dir.path(), &want, &[split, 1 + total / 3, total.max(1)]);
        }
    }
}

#[test]
fn edge_files_read_the_same_at_every_split_size() {
    let long = format!("x-{}", "q".repeat(150));
    let ab = || vec![("1", "x-a".to_string()), ("2", "x-b".to_string())];
    let cases = [
        // Empty after the header, with and without its newline.
        ("csv", "id,name\n".to_string(), vec![]),
        ("csv", "id,name".to_string(), vec![]),
        ("csv", "id,name\r\n1,x-a\r\n2,x-b".to_string(), ab()),
        ("csv", "id,name\n1,x-a\n2,x-b\n".to_string(), ab()),
        // A last line longer than most splits, without a newline.
        (
            "csv",
            format!("id,name\n1,x-a\n2,{long}"),
            vec![("1", "x-a".to_string()), ("2", long.clone())],
        ),
        (
            "csv",
            format!("id,name\n1,{long}\r\n2,x-b\r\n\r\n"),
            vec![("1", long.clone()), ("2", "x-b".to_string())],
        ),
        (
            "json",
            "{\"id\":1,\"name\":\"x-a\"}\r\n\n{\"id\":2,\"name\":\"x-b\"}".to_string(),
            ab(),
        ),
        (
            "json",
            format!("{{\"id\":1,\"name\":\"{long}\"}}\n{{\"id\":2,\"name\":\"x-b\"}}\n"),
            vec![("1", long.clone()), ("2", "x-b".to_string())],
        ),
    ];
    for (format, text, want) in cases {
        let dir = tempfile::tempdir().expect("a temp dir");
        std::fs::write(dir.path().join(format!("f.{format}")), &text).expect("writes");
        let want: Vec<(String, String)> =
            want.into_iter().map(|(a, b)| (a.to_string(), b)).collect();
        // Every split size: boundaries fall on every byte (a newline, inside
        // `\r\n`, inside the long line), up to one split for the file.
        let splits: Vec<u64> = (1..=text.len() as u64 + 1).collect();
        check_splits(format, dir.path(), &want, &splits);
    }
}

#[test]
fn read_tasks_grow_with_the_file_size() {
    let dir = tempfile::tempdir().expect("a temp dir");
    let path = dir.path().join("f.csv");
    let mut tasks = Vec::new();
    for rows in [10, 100, 1000] {
        let text: String = std::iter::once("id,name\n".to_string())
            .chain((0..rows).map(|i| format!("{i},x-{i}\n")))
            .collect();
        std::fs::write(&path, &text).expect("writes");
        let ds =
            Dataset::read_csv_with(runtime(), &[&path], TextReadOptions::new().split_bytes(256))
                .expect("reads the schema");
        tasks.push(ds.describe());
        let len = text.len() as u64;
        assert_eq!(
            ds.describe(),
            format!("read_csv({} tasks)", len.div_ceil(256).max(1))
        );
        let blocks = runtime().block_on(ds.collect()).expect("reads");
        assert_eq!(blocks.iter().map(|b| b.num_rows()).sum::<usize>(), rows);
        // The default split (64 MiB) reads a small file in one task.
        let whole = Dataset::read_csv(runtime(), &[&path]).expect("reads the schema");
        assert_eq!(whole.describe(), "read_csv(1 tasks)");
    }
    assert_eq!(
        tasks,
        [
            "read_csv(1 tasks)",
            "read_csv(4 tasks)",
            "read_csv(39 tasks)"
        ]
    );
}

#[test]
fn a_failing_function_on_a_split_names_the_file_and_its_byte_range() {
    let dir = tempfile::tempdir().expect("a temp dir");
    let path = dir.path().join("f.csv");
    let lines: Vec<String> = std::iter::once("id,name".to_string())
        .chain((0..100).map(|i| format!("{i},x-{i}")))
        .collect();
    std::fs::write(&path, lines.join("\n") + "\n").expect("writes");
    // The range that owns row 50's line: the one whose (start, end] holds its start.
    let start: usize = lines[..51].iter().map(|l| l.len() + 1).sum();
    let range = (start - 1) / 200;
    let ds = Dataset::read_csv_with(runtime(), &[&path], TextReadOptions::new().split_bytes(200))
        .expect("reads the schema")
        .map_batches(|b: RecordBatch| {
            let ids = b.column_by_name("id").expect("id");
            let ids = ids.as_any().downcast_ref::<Int64Array>().expect("Int64");
            if ids.values().contains(&50) {
                Err("boom")
            } else {
                Ok(b)
            }
        });
    let err = runtime().block_on(ds.count()).expect_err("fails on row 50");
    let want = format!("f.csv bytes {}..{}", range * 200, range * 200 + 200);
    assert!(
        err.to_string().contains(&want) && err.to_string().contains("boom"),
        "{err}"
    );
}

/// Whether splits of `split` bytes put a split point (the first `\n` at
/// or after each range's end but the file's) on one of `bad`.
fn cuts(text: &str, split: u64, bad: &[usize]) -> bool {
    let len = text.len() as u64;
    (1..len.div_ceil(split)).any(|k| {
        let end = (k * split) as usize;
        let newline = text.as_bytes()[end..].iter().position(|&b| b == b'\n');
        newline.is_some_and(|i| bad.contains(&(end + i)))
    })
}

#[test]
fn a_record_over_lines_reads_inside_a_split_and_fails_across_one() {
    let dir = tempfile::tempdir().expect("a temp dir");
    let csv = dir.path().join("notes.csv");
    // Rows 30 and 40 hold line breaks in quoted fields (`bad`).
    let (mut text, mut bad) = ("id,name\n".to_string(), vec![]);
    let mut want = vec![];
    for i in 0..50 {
        let name = match i {
            30 => "x-two\nor \"three\"\nlines".to_string(),
            40 => "x-two\r\nlines".to_string(),
            _ => format!("x-{i}"),
        };
        let line = format!("{i},{}\n", csv_field(&name));
        let inner = line.match_indices('\n').map(|(at, _)| text.len() + at);
        bad.extend(inner.take(line.matches('\n').count() - 1));
        text += &line;
        want.push((i.to_string(), name));
    }
    std::fs::write(&csv, &text).expect("writes");
    let (mut failed, mut read) = (0, 0);
    for split in 1..=text.len() as u64 + 1 {
        let options = TextReadOptions::new().split_bytes(split);
        let ds = Dataset::read_csv_with(runtime(), &[&csv], options)
            .expect("reads the schema")
            .with_options(DataOptions::new().rows_per_block(16));
        let got = runtime().block_on(ds.collect());
        if cuts(&text, split, &bad) {
            let message = got
                .expect_err("a split point in a quoted field")
                .to_string();
            assert!(
                message.contains("notes.csv bytes ")
                    && message.contains("odd number of '\"'")
                    && message.contains("whole_files"),
                "{message}"
            );
            failed += 1;
        } else {
            assert_eq!(text_rows(&got.expect("reads")), want, "split {split}");
            read += 1;
        }
    }
    assert!(
        failed > 0 && read > 0,
        "{failed} splits failed, {read} read"
    );
    // Whole, and at the default split (the file is smaller).
    for options in [TextReadOptions::new().whole_files(), TextReadOptions::new()] {
        let ds = Dataset::read_csv_with(runtime(), &[&csv], options).expect("reads the schema");
        assert_eq!(
            text_rows(&runtime().block_on(ds.collect()).expect("reads")),
            want
        );
    }

    // JSON: objects over several lines in a second file (the schema is
    // inferred line by line, from the first).
    let json = dir.path().join("json");
    std::fs::create_dir(&json).expect("a dir");
    std::fs::write(json.join("a.json"), "{\"id\": 0, \"name\": \"x-0\"}\n").expect("writes");
    let text: String = (1..20)
        .map(|i| match i % 3 {
            0 => format!("{{\"id\": {i}, \"name\": \"x-{i}\"}}\n"),
            1 => format!("{{\n  \"id\": {i},\n  \"name\": \"x-{i}\"\n}}\r\n"),
            _ => format!("{{\"id\": {i},\n \"name\": \"x-{i}\", \"o\": {{\"a\": 1}}\n}}\n"),
        })
        .collect();
    std::fs::write(json.join("b.json"), &text).expect("writes");
    // Line breaks inside an object: those after a line not ending in `}`,
    // or before one that starts with it.
    let bad: Vec<usize> = text
        .match_indices('\n')
        .map(|(at, _)| at)
        .filter(|&at| {
            let (before, after) = (text[..at].trim_end(), text[at + 1..].trim_start());
            !before.ends_with('}') || after.starts_with('}')
        })
        .collect();
    let want: Vec<(String, String)> = (0..20).map(|i| (i.to_string(), format!("x-{i}"))).collect();
    let (mut failed, mut read) = (0, 0);
    for split in 1..=text.len() as u64 + 1 {
        let ds = Dataset::read_json_with(
            runtime(),
            &[&json],
            TextReadOptions::new().split_bytes(split),
        )
        .expect("reads the schema")
        .with_options(DataOptions::new().rows_per_block(16));
        let got = runtime().block_on(ds.collect());
        if cuts(&text, split, &bad) {
            let message = got.expect_err("a split point in an object").to_string();
            assert!(
                message.contains("b.json bytes ")
                    && message.contains("JSON object goes on over several lines")
                    && message.contains("whole_files"),
                "split {split}: {message}"
            );
            failed += 1;
        } else {
            assert_eq!(text_rows(&got.expect("reads")), want, "split {split}");
            read += 1;
        }
    }
    assert!(
        failed > 0 && read > 0,
        "{failed} splits failed, {read} read"
    );
}
