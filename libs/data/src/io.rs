//! Files: Parquet, CSV and JSON-lines readers (one read task per Parquet
//! row group, per CSV or JSON file, or per byte range of a large one: see
//! `text_split`) and writers (one file per block, written to a temporary
//! name and renamed, so a reader never sees half a file).

use std::fs::File;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use arrow_array::RecordBatch;
use arrow_schema::SchemaRef;
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use parquet::arrow::{ArrowWriter, ProjectionMask};
use parquet::basic::Compression;
use parquet::file::properties::WriterProperties;

use crate::error::DataError;
use crate::plan::{Batches, ReadSpec, ReadTask};
use crate::text_split::{self, RangeReader, SplitCheck};

/// The files `paths` name: files as given, every file of a directory
/// (sorted), and glob patterns (`data/*.parquet`) expanded and sorted.
pub(crate) fn expand(paths: &[PathBuf]) -> Result<Vec<PathBuf>, DataError> {
    let mut files = Vec::new();
    for path in paths {
        let text = path.to_string_lossy();
        if text.contains(['*', '?', '[']) {
            let matches = glob::glob(&text).map_err(|e| DataError::io(&text, e))?;
            let mut found: Vec<PathBuf> = matches
                .filter_map(Result::ok)
                .filter(|p| p.is_file())
                .collect();
            if found.is_empty() {
                return Err(DataError::io(&text, "the pattern matches no file"));
            }
            found.sort();
            files.extend(found);
        } else if path.is_dir() {
            let entries = std::fs::read_dir(path).map_err(|e| DataError::io(path.display(), e))?;
            let mut found: Vec<PathBuf> = entries
                .filter_map(Result::ok)
                .map(|e| e.path())
                .filter(|p| {
                    p.is_file()
                        && !p
                            .file_name()
                            .is_some_and(|n| n.to_string_lossy().starts_with('.'))
                })
                .collect();
            found.sort();
            files.extend(found);
        } else if path.is_file() {
            files.push(path.clone());
        } else {
            return Err(DataError::io(path.display(), "no such file or directory"));
        }
    }
    if files.is_empty() {
        return Err(DataError::Invalid(format!("no files in {paths:?}")));
    }
    Ok(files)
}

fn open(path: &Path) -> Result<File, DataError> {
    File::open(path).map_err(|e| DataError::io(path.display(), e))
}

/// One read task per row group of every file, each cut into batches of
/// at most `rows_per_block` rows.
pub(crate) fn parquet_tasks(files: &[PathBuf]) -> Result<Vec<ReadTask>, DataError> {
    let mut tasks = Vec::new();
    for path in files {
        let builder = ParquetRecordBatchReaderBuilder::try_new(open(path)?)
            .map_err(|e| DataError::io(path.display(), e))?;
        let mut first_row = 0u64;
        for (group, meta) in builder.metadata().row_groups().iter().enumerate() {
            let path = Arc::new(path.clone());
            let start = first_row;
            first_row += meta.num_rows().max(0) as u64;
            tasks.push(ReadTask {
                source: format!("{} row group {group}", path.display()).into(),
                open: Arc::new(move |spec: &ReadSpec| {
                    let rows_per_block = spec.rows_per_block;
                    let reader = ParquetRecordBatchReaderBuilder::try_new(open(&path)?)
                        .and_then(|b| {
                            let b = b
                                .with_row_groups(vec![group])
                                .with_batch_size(rows_per_block);
                            // Decode only the selected columns (the executor
                            // puts them in the order asked, and names any
                            // that is missing).
                            let b = match &spec.columns {
                                Some(columns) => {
                                    let mask = ProjectionMask::columns(
                                        b.parquet_schema(),
                                        columns.iter().map(String::as_str),
                                    );
                                    b.with_projection(mask)
                                }
                                None => b,
                            };
                            b.build()
                        })
                        .map_err(|e| DataError::io(path.display(), e))?;
                    let path = path.clone();
                    let mut row = start;
                    Ok(Box::new(reader.map(move |batch| {
                        let batch = batch.map_err(|e| DataError::io(path.display(), e))?;
                        let rows = row..row + batch.num_rows() as u64;
                        row = rows.end;
                        Ok((batch, Some(rows)))
                    })) as Batches)
                }),
            });
        }
    }
    Ok(tasks)
}

/// How a text format's reader is built from a file's bytes, its schema,
/// the rows per batch and whether the bytes start with a CSV header.
type TextReader = fn(
    Box<dyn BufRead + Send>,
    SchemaRef,
    usize,
    bool,
) -> Result<
    Box<dyn Iterator<Item = Result<RecordBatch, arrow_schema::ArrowError>> + Send>,
    arrow_schema::ArrowError,
>;

/// One read task per file, or per byte range of a file larger than the
/// split (see `text_split`), files in order and each file's ranges in order.
fn text_tasks(
    files: &[PathBuf],
    schema: SchemaRef,
    reader: TextReader,
    check: SplitCheck,
    split: Option<u64>,
) -> Result<Vec<ReadTask>, DataError> {
    let mut tasks = Vec::new();
    for path in files {
        let len = std::fs::metadata(path)
            .map_err(|e| DataError::io(path.display(), e))?
            .len();
        let ranges = text_split::ranges(len, split);
        let whole = ranges.len() == 1;
        for range in ranges {
            let (path, schema) = (Arc::new(path.clone()), schema.clone());
            // A split's rows are counted from its first line: its label names it.
            let label: Arc<str> = if whole {
                path.display().to_string().into()
            } else {
                format!("{} bytes {}..{}", path.display(), range.start, range.end).into()
            };
            tasks.push(ReadTask {
                source: label.clone(),
                open: Arc::new(move |spec: &ReadSpec| {
                    let rows_per_block = spec.rows_per_block;
                    let bytes: Box<dyn BufRead + Send> = if whole {
                        Box::new(BufReader::new(open(&path)?))
                    } else {
                        Box::new(
                            RangeReader::open(&path, range.clone(), check)
                                .map_err(|e| DataError::io(&label, e))?,
                        )
                    };
                    let header = range.start == 0;
                    let batches = reader(bytes, schema.clone(), rows_per_block, header)
                        .map_err(|e| DataError::io(&label, e))?;
                    let label = label.clone();
                    let mut row = 0u64;
                    Ok(Box::new(batches.map(move |batch| {
                        let batch = batch.map_err(|e| match text_split::split_error(&e) {
                            Some(message) => DataError::io(&label, message),
                            None => DataError::io(
                                &label,
                                format!(
                                    "{e} (the schema was inferred from the first file with rows; \
                                     every file must match it)"
                                ),
                            ),
                        })?;
                        let rows = row..row + batch.num_rows() as u64;
                        row = rows.end;
                        Ok((batch, Some(rows)))
                    })) as Batches)
                }),
            });
        }
    }
    Ok(tasks)
}

/// Rows a schema is inferred from, at the start of the first file with
/// rows.
const INFER_ROWS: usize = 10_000;

/// The schema `infer` finds in the first of `files` that has a row (a
/// header-only or empty first file would type every column `Null`, and
/// every later value would read as null); the first file's when none has.
fn infer_from_first_with_rows(
    files: &[PathBuf],
    format: &str,
    infer: impl Fn(File) -> Result<(arrow_schema::Schema, usize), arrow_schema::ArrowError>,
) -> Result<arrow_schema::Schema, DataError> {
    let mut first = None;
    for path in files {
        let (schema, rows) = infer(open(path)?).map_err(|e| DataError::io(path.display(), e))?;
        if rows > 0 {
            return Ok(schema);
        }
        first.get_or_insert(schema);
    }
    first.ok_or_else(|| DataError::Invalid(format!("no {format} files")))
}

/// CSV with a header row (in the first range of each file only); the
/// schema is inferred from the first file with a row.
pub(crate) fn csv_tasks(files: &[PathBuf], split: Option<u64>) -> Result<Vec<ReadTask>, DataError> {
    let format = arrow_csv::reader::Format::default().with_header(true);
    let schema = infer_from_first_with_rows(files, "CSV", |file| {
        format.infer_schema(file, Some(INFER_ROWS))
    })?;
    let reader: TextReader = |bytes, schema, rows, header| {
        let reader = arrow_csv::ReaderBuilder::new(schema)
            .with_header(header)
            .with_batch_size(rows)
            .build_buffered(bytes)?;
        Ok(Box::new(reader))
    };
    text_tasks(files, Arc::new(schema), reader, SplitCheck::Csv, split)
}

/// JSON lines (one object per line); the schema is inferred from the
/// first file with a record.
pub(crate) fn json_tasks(
    files: &[PathBuf],
    split: Option<u64>,
) -> Result<Vec<ReadTask>, DataError> {
    let schema = infer_from_first_with_rows(files, "JSON", |file| {
        arrow_json::reader::infer_json_schema(&mut BufReader::new(file), Some(INFER_ROWS))
    })?;
    let reader: TextReader = |bytes, schema, rows, _header| {
        let reader = arrow_json::ReaderBuilder::new(schema)
            .with_batch_size(rows)
            .build(bytes)?;
        Ok(Box::new(reader))
    };
    text_tasks(files, Arc::new(schema), reader, SplitCheck::Json, split)
}

/// A file format a dataset can be written in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Format {
    Parquet,
    Csv,
    Json,
}

impl Format {
    fn extension(self) -> &'static str {
        match self {
            Format::Parquet => "parquet",
            Format::Csv => "csv",
            Format::Json => "json",
        }
    }
}

/// Writes one block as `dir/part-NNNNN.ext` (through a hidden temporary
/// file, fsynced, then renamed). Returns the file's path and size.
pub(crate) fn write_block(
    dir: &Path,
    index: usize,
    batch: &RecordBatch,
    format: Format,
) -> Result<(PathBuf, u64), DataError> {
    let name = format!("part-{index:05}.{}", format.extension());
    let path = dir.join(&name);
    let tmp = dir.join(format!(".{name}.tmp"));
    let err = |e: &dyn std::fmt::Display| DataError::io(tmp.display(), e);
    let file = File::create(&tmp).map_err(|e| err(&e))?;
    match format {
        Format::Parquet => {
            let props = WriterProperties::builder()
                .set_compression(Compression::SNAPPY)
                .build();
            let mut writer =
                ArrowWriter::try_new(file, batch.schema(), Some(props)).map_err(|e| err(&e))?;
            writer.write(batch).map_err(|e| err(&e))?;
            let file = writer.into_inner().map_err(|e| err(&e))?;
            file.sync_all().map_err(|e| err(&e))?;
        }
        Format::Csv => {
            let mut writer = arrow_csv::WriterBuilder::new()
                .with_header(true)
                .build(file);
            writer.write(batch).map_err(|e| err(&e))?;
            writer.into_inner().sync_all().map_err(|e| err(&e))?;
        }
        Format::Json => {
            let mut writer = arrow_json::LineDelimitedWriter::new(file);
            writer.write(batch).map_err(|e| err(&e))?;
            writer.finish().map_err(|e| err(&e))?;
            writer.into_inner().sync_all().map_err(|e| err(&e))?;
        }
    }
    std::fs::rename(&tmp, &path).map_err(|e| DataError::io(path.display(), e))?;
    let size = std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
    Ok((path, size))
}
