//! Sources in a run: read tasks on blocking threads, in order, each
//! admitted block by block.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use arrow_array::{ArrayRef, Int64Array, RecordBatch};
use arrow_schema::{DataType, Field, Schema};
use tokio::sync::mpsc;

use crate::error::{BlockOrigin, DataError};
use crate::exec::{Exec, Flow, FlowTx, Operator};
use crate::plan::{ReadSpec, ReadTask};

/// Blocks a read task may have read ahead of the one forwarded now: the
/// budget bounds their bytes; this, their number (tiny blocks). One task's
/// blocks wait behind the task before it, so a bound of one would leave
/// every reader but the front one idle (a file read in splits, Parquet row
/// groups: one task at a time).
const READ_AHEAD: usize = 64;

impl Exec {
    /// Runs read tasks, `parallelism` at once, forwarding their blocks in
    /// task order. Each task reads on a blocking thread, one batch per
    /// admission, so a slow consumer stops the readers.
    pub(crate) async fn read(
        self: Arc<Self>,
        name: &'static str,
        tasks: Arc<Vec<ReadTask>>,
        columns: Option<Arc<[String]>>,
        tx: FlowTx,
    ) {
        let op = Arc::new(self.operator(name));
        let mut started: VecDeque<mpsc::Receiver<Result<Flow, DataError>>> = VecDeque::new();
        let mut next = 0;
        // The task whose blocks are forwarded now.
        let front_task = Arc::new(AtomicUsize::new(0));
        let mut forwarded = 0;
        loop {
            while started.len() < self.options.parallelism.max(1) && next < tasks.len() {
                let (task_tx, task_rx) = mpsc::channel(READ_AHEAD);
                let (op, task, columns) = (op.clone(), tasks[next].clone(), columns.clone());
                let handle = self.rt.tokio_handle().clone();
                let (front, downstream, me) = (front_task.clone(), tx.clone(), next);
                // The front task may always read while the operator after
                // this one has nothing queued: no deadlock behind blocks
                // read ahead.
                let exempt = move || {
                    front.load(Ordering::Acquire) == me
                        && downstream.capacity() == downstream.max_capacity()
                };
                handle.clone().spawn_blocking(move || {
                    read_task(&handle, &op, &task, columns.as_ref(), &task_tx, &exempt)
                });
                started.push_back(task_rx);
                next += 1;
            }
            let Some(front) = started.front_mut() else {
                return;
            };
            match front.recv().await {
                Some(flow) => {
                    // Readers number blocks within their task; the source's
                    // order is known here.
                    let flow = flow.map(|mut flow| {
                        let mut origin = (*flow.block.origin).clone();
                        origin.index = forwarded;
                        flow.block.origin = Arc::new(origin);
                        flow
                    });
                    forwarded += 1;
                    let failed = flow.is_err();
                    if tx.send(flow).await.is_err() || failed {
                        return;
                    }
                }
                None => {
                    started.pop_front();
                    front_task.fetch_add(1, Ordering::AcqRel);
                }
            }
        }
    }
}

/// Reads one task's batches on a blocking thread, one admission each.
fn read_task(
    handle: &tokio::runtime::Handle,
    op: &Operator,
    task: &ReadTask,
    columns: Option<&Arc<[String]>>,
    tx: &FlowTx,
    exempt: &(dyn Fn() -> bool + Sync),
) {
    let fail = |e: DataError| {
        let _ = tx.blocking_send(Err(e));
    };
    let per_block = op.exec.options.rows_per_block.max(1);
    let spec = ReadSpec {
        rows_per_block: per_block,
        columns: columns.cloned(),
    };
    let batches = match (task.open)(&spec) {
        Ok(batches) => batches,
        Err(e) => return fail(e),
    };
    // The selected columns, in the order asked (a reader may give others,
    // or the file's order).
    let source = task.source.clone();
    let batches = batches.map(move |next| match (next, &spec.columns) {
        (Ok((batch, rows)), Some(columns)) => {
            let schema = batch.schema();
            let indices = columns
                .iter()
                .map(|c| {
                    schema.index_of(c).map_err(|_| DataError::Column {
                        column: c.clone(),
                        message: format!(
                            "no such column in {source}; the columns are {:?}",
                            crate::shuffle::column_names(&schema)
                        ),
                    })
                })
                .collect::<Result<Vec<_>, _>>()?;
            let batch = batch
                .project(&indices)
                .map_err(|e| DataError::arrow("selecting columns", e))?;
            Ok((batch, rows))
        }
        (next, _) => next,
    });
    // Cut batches larger than a block (a range, the user's batches).
    let mut batches = batches.flat_map(move |next| -> Vec<crate::plan::ReadBatch> {
        match next {
            Ok((batch, rows)) if batch.num_rows() > per_block => (0..batch.num_rows())
                .step_by(per_block)
                .map(|start| {
                    let len = per_block.min(batch.num_rows() - start);
                    let cut = rows
                        .as_ref()
                        .map(|r| r.start + start as u64..r.start + (start + len) as u64);
                    Ok((batch.slice(start, len), cut))
                })
                .collect(),
            other => vec![other],
        }
    });
    let mut estimate = 0;
    for index in 0.. {
        let wanted = estimate.max(op.typical.load(Ordering::Relaxed));
        let charge = handle.block_on(op.exec.budget.admit_unless(op.id, wanted, exempt));
        let Some(next) = batches.next() else { return };
        let (batch, rows) = match next {
            Ok(next) => next,
            Err(e) => return fail(e),
        };
        estimate = crate::block::batch_bytes(&batch);
        let origin = BlockOrigin {
            index,
            source: task.source.to_string(),
            rows,
        };
        let flow = op.put(batch, origin, charge);
        let failed = flow.is_err();
        if tx.blocking_send(flow).is_err() || failed {
            return;
        }
    }
}

/// `0..n` in an `Int64` column `id`, one read task per block.
pub(crate) fn range_tasks(n: u64, per_block: u64) -> Vec<ReadTask> {
    (0..n.div_ceil(per_block))
        .map(|i| {
            let rows = i * per_block..((i + 1) * per_block).min(n);
            ReadTask {
                source: "range".into(),
                open: Arc::new(move |_: &ReadSpec| {
                    let schema =
                        Arc::new(Schema::new(vec![Field::new("id", DataType::Int64, false)]));
                    let ids: ArrayRef =
                        Arc::new(Int64Array::from_iter_values(rows.clone().map(|v| v as i64)));
                    let batch = RecordBatch::try_new(schema, vec![ids])
                        .map_err(|e| DataError::arrow("range", e))?;
                    Ok(Box::new(std::iter::once(Ok((batch, Some(rows.clone())))))
                        as crate::plan::Batches)
                }),
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;
    use std::time::Duration;

    use troupe::prelude::{Config, Runtime};

    use super::*;
    use crate::{DataOptions, Dataset};

    /// Tasks after the front one read ahead (within the budget) rather
    /// than wait for it: of four tasks of ten slow batches, read four at a
    /// time, the second has read most of its batches before the first
    /// reads its last (with room for one block each, it could read two).
    #[test]
    fn read_tasks_behind_the_front_one_read_ahead() {
        const PAUSE: Duration = Duration::from_millis(20);
        let rt = Runtime::start(Config::default()).expect("a runtime");
        // (task, batch) in the order the batches were read.
        let reads: Arc<Mutex<Vec<(i64, i64)>>> = Arc::default();
        let tasks = (0..4)
            .map(|task| {
                let reads = reads.clone();
                ReadTask {
                    source: "slow".into(),
                    open: Arc::new(move |_: &ReadSpec| {
                        let reads = reads.clone();
                        let batches = (0..10i64).map(move |i| {
                            std::thread::sleep(PAUSE);
                            reads
                                .lock()
                                .unwrap_or_else(|e| e.into_inner())
                                .push((task, i));
                            let ids: ArrayRef = Arc::new(Int64Array::from(vec![task * 10 + i]));
                            let batch = RecordBatch::try_from_iter([("id", ids)])
                                .map_err(|e| DataError::arrow("slow", e))?;
                            Ok((batch, None))
                        });
                        Ok(Box::new(batches) as crate::plan::Batches)
                    }),
                }
            })
            .collect();
        let ds = Dataset::reads(&rt, "slow", tasks).with_options(DataOptions::new().parallelism(4));
        let batches = rt.block_on(ds.collect()).expect("reads");
        let ids: Vec<i64> = batches
            .iter()
            .flat_map(|b| {
                let ids = b.column(0).as_any().downcast_ref::<Int64Array>();
                ids.expect("Int64").values().to_vec()
            })
            .collect();
        assert_eq!(ids, (0..40).collect::<Vec<_>>(), "in task order");
        let reads = reads.lock().unwrap_or_else(|e| e.into_inner()).clone();
        let first_done = reads
            .iter()
            .position(|r| *r == (0, 9))
            .expect("the first task read its last batch");
        let second_ahead = reads[..first_done].iter().filter(|r| r.0 == 1).count();
        assert!(
            second_ahead >= 5,
            "the second task read {second_ahead} batches while the first read: {reads:?}"
        );
    }
}
