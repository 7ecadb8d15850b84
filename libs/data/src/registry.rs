//! Batch functions registered by name ([`register_batch_fn!`]): what a
//! dataset's stages run on other nodes of a cluster, since a closure cannot
//! travel between processes but a name can (every node runs the same
//! program).

use std::panic::{catch_unwind, AssertUnwindSafe};

use arrow_array::RecordBatch;

use crate::block::Block;
use crate::error::BoxError;

type BatchFnPtr = fn(RecordBatch) -> Result<RecordBatch, BoxError>;

/// A registered batch function. Made by
/// [`register_batch_fn!`](crate::register_batch_fn); collected when the
/// program is linked.
#[doc(hidden)]
#[derive(Debug)]
pub struct BatchFnRegistration {
    name: &'static str,
    f: BatchFnPtr,
}

impl BatchFnRegistration {
    #[doc(hidden)]
    pub const fn new(name: &'static str, f: BatchFnPtr) -> Self {
        BatchFnRegistration { name, f }
    }
}

inventory::collect!(BatchFnRegistration);

/// Registers a batch function under a name, when the program is linked, so
/// that [`Dataset::map_batches_registered`](crate::Dataset::map_batches_registered)
/// runs it as tasks on any node of a cluster.
///
/// The function is a closure that captures nothing, from a `RecordBatch` to
/// `Result<RecordBatch, E>` with `E: Into<BoxError>`. Write it at the top
/// level of a module; the name must be unique.
///
/// ```
/// use troupe_data::{arrow_array::RecordBatch, DataError};
///
/// troupe_data::register_batch_fn!("identity", |b: RecordBatch| Ok::<_, DataError>(b));
///
/// assert!(troupe_data::registered_batch_fns().contains(&"identity"));
/// ```
#[macro_export]
macro_rules! register_batch_fn {
    ($name:expr, $f:expr $(,)?) => {
        const _: () = {
            fn __troupe_data_batch_fn(
                batch: $crate::arrow_array::RecordBatch,
            ) -> ::std::result::Result<$crate::arrow_array::RecordBatch, $crate::BoxError> {
                let f = $f;
                f(batch).map_err(::std::convert::Into::into)
            }
            $crate::__private::inventory::submit! {
                $crate::__private::BatchFnRegistration::new($name, __troupe_data_batch_fn)
            }
        };
    };
}

/// The names of every batch function registered in this program, sorted.
pub fn registered_batch_fns() -> Vec<&'static str> {
    let mut names: Vec<&'static str> = inventory::iter::<BatchFnRegistration>()
        .map(|r| r.name)
        .collect();
    names.sort_unstable();
    names
}

/// The function registered as `name`, or why there is none to use.
pub(crate) fn lookup(name: &str) -> Result<BatchFnPtr, String> {
    let mut found = inventory::iter::<BatchFnRegistration>().filter(|r| r.name == name);
    match (found.next(), found.next()) {
        (Some(one), None) => Ok(one.f),
        (Some(_), Some(_)) => Err(format!(
            "the batch function {name:?} is registered more than once (register_batch_fn!); give each a name of its own"
        )),
        (None, _) => Err(format!(
            "no batch function is registered as {name:?} in this program (known: {}); register it with troupe_data::register_batch_fn!, and run the same program on every node",
            registered_batch_fns().join(", ")
        )),
    }
}

/// A block a task made, and its size: the driver reads only this, the
/// block stays where it was made until a consumer reads it.
pub(crate) type Made = (usize, usize);

/// Runs the batch function registered as `name` on `block`, on whichever
/// node the cluster placed the task. A panic is the function's error (not
/// retried: it would panic again); a lost node is retried by the runtime.
#[troupe::remote(num_returns = 2)]
pub(crate) fn apply_registered(name: String, block: Block) -> Result<(Block, Made), String> {
    let f = lookup(&name)?;
    let out = match catch_unwind(AssertUnwindSafe(|| f(block.0))) {
        Ok(out) => out.map_err(|e| e.to_string())?,
        Err(panic) => {
            return Err(format!(
                "panicked: {}",
                crate::worker::panic_message(&panic)
            ))
        }
    };
    let out = Block(out);
    let made = (out.num_rows(), out.bytes());
    Ok((out, made))
}

/// Runs one block through the registered function `name` as a task the
/// cluster places, and wraps its output as a flow (the block stays on the
/// node that made it; only its size comes here).
pub(crate) async fn apply_remote(
    rt: &troupe::Runtime,
    op_name: &std::sync::Arc<str>,
    name: &str,
    options: troupe::TaskOptions,
    input: crate::exec::Flow,
    mut charge: crate::budget::Charge,
) -> Result<crate::exec::Flow, crate::DataError> {
    let origin = input.block.origin.clone();
    let (object, made) =
        apply_registered::options(options).remote(rt, name.to_string(), &input.block.object);
    let (rows, bytes) = match rt.get(&made).await {
        Ok(made) => *made,
        Err(e) => {
            return Err(crate::DataError::UserFunction {
                operator: op_name.to_string(),
                origin: (*origin).clone(),
                message: e.to_string(),
            })
        }
    };
    charge.settle(bytes);
    drop(input);
    Ok(crate::exec::Flow {
        block: crate::BlockRef {
            object,
            rows,
            bytes,
            origin,
        },
        _charge: Some(charge),
    })
}
