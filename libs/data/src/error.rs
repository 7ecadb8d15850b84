//! What can go wrong in a dataset, and where.

use std::fmt;

/// A boxed error from user code (a map function, a pool actor's constructor).
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// Where a block came from: enough for a user to find the rows that failed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BlockOrigin {
    /// The block's position in its operator's input, from 0.
    pub index: usize,
    /// The source the rows were read from (a file, `range`, `from_iter`).
    pub source: String,
    /// The rows of that source the block holds, when the source knows them
    /// (a file's rows, a range's values; for a byte range of a CSV or JSON
    /// file, `data.csv bytes 67108864..134217728`, its rows counted from the
    /// first line it reads); `None` after a shuffle or a sort.
    pub rows: Option<std::ops::Range<u64>>,
}

impl fmt::Display for BlockOrigin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "block {} (from {}", self.index, self.source)?;
        if let Some(rows) = &self.rows {
            write!(f, ", rows {}..{}", rows.start, rows.end)?;
        }
        write!(f, ")")
    }
}

/// Why a dataset operation failed.
#[derive(Debug, thiserror::Error)]
pub enum DataError {
    /// A user function returned an error or panicked on a block: the
    /// dataset stops, and this names the operator and the block's rows.
    #[error("{operator} failed on {origin}: {message}")]
    UserFunction {
        /// The operator, as the plan names it (`map_batches`, `filter`, ...).
        operator: String,
        /// Which block, and which rows of its source.
        origin: BlockOrigin,
        /// The function's error (or its panic message).
        message: String,
    },
    /// Reading or writing a file failed.
    #[error("{path}: {message}")]
    Io {
        /// The file or directory.
        path: String,
        /// What went wrong.
        message: String,
    },
    /// An Arrow operation failed (a schema mismatch, a bad cast...).
    #[error("{context}: {source}")]
    Arrow {
        /// What was being done.
        context: String,
        /// Arrow's error.
        #[source]
        source: arrow_schema::ArrowError,
    },
    /// The object store refused or lost a block.
    #[error("block {what}: {message}; raise the store's capacity (Config::objects) or lower the memory budget")]
    Store {
        /// Which block.
        what: String,
        /// The store's error.
        message: String,
    },
    /// A column a transform names does not exist, or has a type it cannot use.
    #[error("column {column:?}: {message}")]
    Column {
        /// The column.
        column: String,
        /// What is wrong with it.
        message: String,
    },
    /// An argument is out of range (an empty key list, zero partitions...).
    #[error("invalid argument: {0}")]
    Invalid(String),
    /// An actor of a pool could not be started, or died.
    #[error("actor pool of {operator}: {message}")]
    Pool {
        /// The operator the pool runs.
        operator: String,
        /// What happened.
        message: String,
    },
    /// The runtime is shutting down, or a worker went away mid-block.
    #[error("the dataset's execution stopped: {0}")]
    Stopped(String),
}

impl DataError {
    pub(crate) fn arrow(context: impl Into<String>, source: arrow_schema::ArrowError) -> Self {
        DataError::Arrow {
            context: context.into(),
            source,
        }
    }

    pub(crate) fn io(path: impl fmt::Display, e: impl fmt::Display) -> Self {
        DataError::Io {
            path: path.to_string(),
            message: e.to_string(),
        }
    }
}
