//! Sinks that write files: one file per block, `parallelism` at a time.

use std::path::{Path, PathBuf};

use futures::stream::{FuturesOrdered, StreamExt};

use crate::dataset::{record, Dataset};
use crate::error::DataError;
use crate::io::{self, Format};

/// What a write made.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct WriteSummary {
    /// The files, in block order.
    pub files: Vec<PathBuf>,
    /// Rows written.
    pub rows: usize,
    /// Bytes of the files.
    pub bytes: u64,
}

/// One block written: its file, the file's size, the block's rows.
type Written = Result<(PathBuf, u64, usize), DataError>;

impl WriteSummary {
    fn add(&mut self, done: Result<Written, tokio::task::JoinError>) -> Result<(), DataError> {
        let (path, size, rows) =
            done.map_err(|e| DataError::Stopped(format!("a writer: {e}")))??;
        self.files.push(path);
        self.rows += rows;
        self.bytes += size;
        Ok(())
    }
}

impl Dataset {
    async fn write(&self, dir: &Path, format: Format) -> Result<WriteSummary, DataError> {
        std::fs::create_dir_all(dir).map_err(|e| DataError::io(dir.display(), e))?;
        let (exec, mut rx) = self.start();
        let mut summary = WriteSummary::default();
        let mut writing = FuturesOrdered::new();
        let parallelism = self.options.parallelism.max(1);
        let outcome: Result<(), DataError> = async {
            let mut index = 0;
            while let Some(flow) = rx.recv().await {
                let flow = flow?;
                let (dir, rt) = (dir.to_path_buf(), self.rt.clone());
                writing.push_back(self.rt.tokio_handle().spawn_blocking(move || -> Written {
                    let block =
                        rt.get_blocking(&flow.block.object)
                            .map_err(|e| DataError::Store {
                                what: flow.block.origin.to_string(),
                                message: e.to_string(),
                            })?;
                    let (path, size) = io::write_block(&dir, index, &block.0, format)?;
                    Ok((path, size, flow.block.rows))
                }));
                index += 1;
                if writing.len() >= parallelism {
                    if let Some(done) = writing.next().await {
                        summary.add(done)?;
                    }
                }
            }
            while let Some(done) = writing.next().await {
                summary.add(done)?;
            }
            Ok(())
        }
        .await;
        record(&self.last, &exec);
        outcome.map(|()| summary)
    }

    /// Writes every block as `dir/part-NNNNN.parquet` (snappy), each file
    /// through a temporary name, fsynced, then renamed.
    pub async fn write_parquet(&self, dir: impl AsRef<Path>) -> Result<WriteSummary, DataError> {
        self.write(dir.as_ref(), Format::Parquet).await
    }

    /// Writes every block as `dir/part-NNNNN.csv` with a header.
    pub async fn write_csv(&self, dir: impl AsRef<Path>) -> Result<WriteSummary, DataError> {
        self.write(dir.as_ref(), Format::Csv).await
    }

    /// Writes every block as `dir/part-NNNNN.json`, one object per line.
    pub async fn write_json(&self, dir: impl AsRef<Path>) -> Result<WriteSummary, DataError> {
        self.write(dir.as_ref(), Format::Json).await
    }
}
