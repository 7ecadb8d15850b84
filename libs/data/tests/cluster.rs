//! Stages on other nodes (`map_batches_registered`), across real processes
//! on loopback: a head and two worker nodes are this test binary
//! re-launched in node mode (`node_process`); the test is the driver. The
//! head and the driver offer no CPUs, so every block is transformed on one
//! of the two nodes. Every output is checked against the same function
//! run here. Every process a test starts is killed when its cluster drops.
//!
//! Run with `cargo test -p troupe-data --features cluster --test cluster`.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use troupe::cluster::local::{run_node_if_asked, test_binary, LocalCluster, LocalNode};
use troupe::prelude::*;
use troupe_data::arrow_array::{Array, ArrayRef, Int64Array, RecordBatch, UInt32Array};
use troupe_data::arrow_schema::{DataType, Field, Schema};
use troupe_data::{DataError, DataOptions, Dataset};
use troupe_test_kit::within_for;

/// One cluster per test at a time: each test joins as the driver.
static DRIVER: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// How long a cluster test may take at most (they take seconds).
const DEADLINE: Duration = Duration::from_secs(120);

/// `id` → `id`, `twice` = 2·id, `pid` = the process that ran it; 20 ms a
/// block, so that a pipeline is still running when a node is killed.
fn double(b: RecordBatch) -> Result<RecordBatch, DataError> {
    std::thread::sleep(Duration::from_millis(20));
    let id = b
        .column(0)
        .as_any()
        .downcast_ref::<Int64Array>()
        .cloned()
        .ok_or_else(|| DataError::Invalid("id".into()))?;
    let twice: ArrayRef = Arc::new(Int64Array::from_iter_values(
        id.values().iter().map(|v| v * 2),
    ));
    let pid: ArrayRef = Arc::new(UInt32Array::from(vec![std::process::id(); id.len()]));
    let schema = Schema::new(vec![
        Field::new("id", DataType::Int64, false),
        Field::new("twice", DataType::Int64, false),
        Field::new("pid", DataType::UInt32, false),
    ]);
    RecordBatch::try_new(Arc::new(schema), vec![b.column(0).clone(), twice, pid])
        .map_err(|e| DataError::Invalid(e.to_string()))
}

troupe_data::register_batch_fn!("ClusterTest-Double", double);
troupe_data::register_batch_fn!("ClusterTest-Fails", |b: RecordBatch| {
    let id = b
        .column(0)
        .as_any()
        .downcast_ref::<Int64Array>()
        .cloned()
        .ok_or("id")?;
    if id.values().contains(&4321) {
        return Err("4321 is not welcome".to_string());
    }
    Ok(b)
});

/// Node mode: when this binary is re-launched as a node, runs it.
#[test]
fn node_process() {
    run_node_if_asked();
}

/// A head with no CPUs and two nodes of one CPU.
fn head_and_two_nodes(test: &str) -> (LocalCluster, LocalNode, [LocalNode; 2]) {
    let mut p =
        LocalCluster::new(test, test_binary("node_process", &[])).expect("a temporary directory");
    let head = p.head(&["--num-cpus", "0"]).expect("the head starts");
    let a = p
        .worker(&head, &["--num-cpus", "1"])
        .expect("node a starts");
    let b = p
        .worker(&head, &["--num-cpus", "1"])
        .expect("node b starts");
    (p, head, [a, b])
}

/// This process as a driver (no CPUs), once it sees the three nodes alive.
async fn join_as_driver(p: &LocalCluster, head: &LocalNode) -> Runtime {
    let rt = p
        .join_as_driver(head, 3, DEADLINE)
        .await
        .expect("the driver joins");
    rt
}

fn column(b: &RecordBatch, name: &str) -> Vec<i64> {
    b.column_by_name(name)
        .expect(name)
        .as_any()
        .downcast_ref::<Int64Array>()
        .expect("Int64")
        .values()
        .to_vec()
}

fn pids(batches: &[RecordBatch]) -> BTreeSet<u32> {
    batches
        .iter()
        .flat_map(|b| {
            b.column_by_name("pid")
                .expect("pid")
                .as_any()
                .downcast_ref::<UInt32Array>()
                .expect("UInt32")
                .values()
                .to_vec()
        })
        .collect()
}

const ROWS: u64 = 40_000;

fn dataset(rt: &Runtime) -> Dataset {
    Dataset::range(rt, ROWS)
        .with_options(DataOptions::new().rows_per_block(1000).parallelism(4))
        .map_batches_registered("ClusterTest-Double")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn registered_stages_run_on_the_nodes_and_give_what_they_give_here() {
    let _turn = DRIVER.lock().await;
    let (p, head, [a, b]) = head_and_two_nodes("data-two-nodes");
    let rt = join_as_driver(&p, &head).await;
    let out = within_for(DEADLINE, "the pipeline", dataset(&rt).collect())
        .await
        .expect("runs");
    let ids: Vec<i64> = out.iter().flat_map(|b| column(b, "id")).collect();
    assert_eq!(
        ids,
        (0..ROWS as i64).collect::<Vec<_>>(),
        "every row once, in order"
    );
    let twice: Vec<i64> = out.iter().flat_map(|b| column(b, "twice")).collect();
    let here: Vec<i64> = (0..ROWS as i64).map(|v| v * 2).collect();
    assert_eq!(twice, here);
    assert_eq!(
        pids(&out),
        BTreeSet::from([a.pid, b.pid]),
        "both nodes worked, nothing ran here"
    );
    // An unknown name and a failing function fail the run, saying why.
    let err = within_for(
        DEADLINE,
        "unknown",
        Dataset::range(&rt, 10)
            .map_batches_registered("nope")
            .count(),
    )
    .await
    .expect_err("unknown");
    assert!(err.to_string().contains("ClusterTest-Double"), "{err}");
    let fails = Dataset::range(&rt, ROWS)
        .with_options(DataOptions::new().rows_per_block(1000))
        .map_batches_registered("ClusterTest-Fails");
    let err = within_for(DEADLINE, "failing", fails.count())
        .await
        .expect_err("fails");
    assert!(
        err.to_string().contains("4321 is not welcome")
            && err.to_string().contains("rows 4000..5000"),
        "{err}"
    );
    rt.shutdown().await.expect("shuts down");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_killed_mid_pipeline_loses_no_row() {
    let _turn = DRIVER.lock().await;
    let (mut p, head, [a, b]) = head_and_two_nodes("data-kill");
    let rt = join_as_driver(&p, &head).await;
    let ds = dataset(&rt);
    let mut stream = Box::pin(ds.stream());
    let mut out = Vec::new();
    let run = async {
        while let Some(batch) = stream.next().await {
            out.push(batch?);
            if out.len() == 8 {
                // Blocks made on `a` and not read yet are lost with it; its
                // running tasks fail: both are made again on `b`.
                p.kill(&a);
            }
        }
        Ok::<_, DataError>(())
    };
    within_for(DEADLINE, "the pipeline through a node's death", run)
        .await
        .expect("the output is complete");
    let ids: Vec<i64> = out.iter().flat_map(|b| column(b, "id")).collect();
    assert_eq!(
        ids,
        (0..ROWS as i64).collect::<Vec<_>>(),
        "every row once, in order"
    );
    let twice: Vec<i64> = out.iter().flat_map(|b| column(b, "twice")).collect();
    assert_eq!(twice, (0..ROWS as i64).map(|v| v * 2).collect::<Vec<_>>());
    let later: BTreeSet<u32> = pids(&out[out.len() - 5..]);
    assert_eq!(
        later,
        BTreeSet::from([b.pid]),
        "after the kill, only b works"
    );
    rt.shutdown().await.expect("shuts down");
}
