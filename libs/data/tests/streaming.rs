//! The executor: a memory budget that holds while data four times its size
//! flows through, early stops, actor pools that grow under load, and tasks
//! that hold the CPUs they ask for.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use arrow_array::{ArrayRef, Int64Array, RecordBatch};
use arrow_schema::{DataType, Field, Schema};
use futures::StreamExt;
use troupe::prelude::{Config, Resources, Runtime};
use troupe_data::{ActorPoolStrategy, DataError, DataOptions, Dataset};

/// Four CPUs whatever the machine: the pool and CPU tests count on them.
fn runtime() -> &'static Runtime {
    static RT: OnceLock<Runtime> = OnceLock::new();
    RT.get_or_init(
        || match Runtime::start(Config::default().resources(Resources::cpus(4.0))) {
            Ok(rt) => rt,
            Err(e) => panic!("cannot start a runtime: {e}"),
        },
    )
}

/// Adds a column `twice` = 2 * id (doubling a block's bytes).
fn with_twice(b: RecordBatch) -> Result<RecordBatch, DataError> {
    let id = b
        .column(0)
        .as_any()
        .downcast_ref::<Int64Array>()
        .cloned()
        .ok_or_else(|| DataError::Invalid("id".into()))?;
    let twice: ArrayRef = Arc::new(Int64Array::from_iter_values(
        id.values().iter().map(|v| v * 2),
    ));
    let schema = Arc::new(Schema::new(vec![
        Field::new("id", DataType::Int64, false),
        Field::new("twice", DataType::Int64, false),
    ]));
    RecordBatch::try_new(schema, vec![b.column(0).clone(), twice])
        .map_err(|e| DataError::Invalid(e.to_string()))
}

#[test]
fn data_four_times_the_budget_flows_through_a_slow_consumer_within_it() {
    const ROWS: u64 = 4 << 20; // 32 MiB of ids, 64 MiB once doubled
    const BUDGET: usize = 2 << 20;
    const BLOCK_ROWS: usize = 32 << 10; // 256 KiB of ids, 512 KiB doubled

    // A runtime of its own: its store then holds this data set's blocks
    // only (the other tests run beside it on the shared one).
    let rt = Runtime::start(Config::default().resources(Resources::cpus(4.0))).expect("a runtime");
    let ds = Dataset::range(&rt, ROWS)
        .with_options(
            DataOptions::new()
                .memory_budget(BUDGET)
                .rows_per_block(BLOCK_ROWS)
                .parallelism(8),
        )
        .map_batches(with_twice);
    let (rows, sum) = rt.block_on(async {
        let mut stream = Box::pin(ds.stream());
        let (mut rows, mut sum) = (0u64, 0i128);
        while let Some(batch) = stream.next().await {
            let batch = batch.expect("a block");
            rows += batch.num_rows() as u64;
            let twice = batch
                .column(1)
                .as_any()
                .downcast_ref::<Int64Array>()
                .expect("Int64")
                .clone();
            sum += twice.values().iter().map(|v| *v as i128).sum::<i128>();
            // A consumer slower than the producers: without backpressure
            // the whole data set would pile up in the store.
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        (rows, sum)
    });
    assert_eq!(rows, ROWS);
    assert_eq!(
        sum,
        (ROWS as i128) * (ROWS as i128 - 1),
        "sum of 2*id over 0..ROWS"
    );
    let stats = ds.last_stats().expect("the run's stats");
    let made: usize = stats.operators.iter().map(|o| o.bytes).sum();
    assert!(
        made >= 4 * BUDGET,
        "the data set ({made} B) is at least 4x the budget"
    );
    // Budget, plus at most one block per operator (see the budget's docs).
    let block = 2 * 8 * BLOCK_ROWS;
    assert!(
        stats.peak_bytes_in_flight <= BUDGET + stats.operators.len() * block,
        "peak {} B in flight over a budget of {BUDGET} B: {stats:?}",
        stats.peak_bytes_in_flight
    );
    // Frees reach the store just after the stream ends.
    rt.block_on(troupe_test_kit::eventually_within(
        Duration::from_secs(10),
        "every block was freed once consumed",
        || rt.objects().is_empty(),
    ));
}

#[test]
fn a_limit_stops_the_sources_early() {
    let ds = Dataset::range(runtime(), 1 << 30)
        .with_options(DataOptions::new().rows_per_block(1000).parallelism(2));
    let first = runtime().block_on(ds.take(2500)).expect("takes");
    assert_eq!(first.iter().map(|b| b.num_rows()).sum::<usize>(), 2500);
    let ids: Vec<i64> = first
        .iter()
        .flat_map(|b| {
            b.column(0)
                .as_any()
                .downcast_ref::<Int64Array>()
                .expect("Int64")
                .values()
                .to_vec()
        })
        .collect();
    assert_eq!(ids, (0..2500).collect::<Vec<i64>>());
    let limited = ds.limit(2500);
    runtime().block_on(limited.count()).expect("counts");
    let stats = limited.last_stats().expect("stats");
    assert!(
        stats.operators[0].blocks < 20,
        "the source read only a few blocks past the limit: {stats:?}"
    );
}

#[test]
fn iter_batches_feeds_synchronous_code() {
    let ds =
        Dataset::range(runtime(), 100_000).with_options(DataOptions::new().rows_per_block(10_000));
    let total = std::thread::spawn(move || {
        ds.iter_batches()
            .map(|b| b.expect("a block").num_rows())
            .sum::<usize>()
    })
    .join()
    .expect("the thread");
    assert_eq!(total, 100_000);
}

#[test]
fn an_actor_pool_grows_to_its_max_under_load_and_builds_each_actor_once() {
    let built = Arc::new(AtomicUsize::new(0));
    let counted = built.clone();
    let ds = Dataset::range(runtime(), 40 * 100)
        .with_options(DataOptions::new().rows_per_block(100).parallelism(4))
        .map_batches_on_actors(
            ActorPoolStrategy::new(1, 3),
            move || -> Result<i64, DataError> {
                counted.fetch_add(1, Ordering::SeqCst);
                Ok(2) // the "model": a factor, loaded once per actor
            },
            |factor: &mut i64, b: RecordBatch| {
                std::thread::sleep(Duration::from_millis(15)); // a slow model
                let id = b
                    .column(0)
                    .as_any()
                    .downcast_ref::<Int64Array>()
                    .cloned()
                    .ok_or("id")?;
                let out: ArrayRef = Arc::new(Int64Array::from_iter_values(
                    id.values().iter().map(|v| v * *factor),
                ));
                RecordBatch::try_new(b.schema(), vec![out]).map_err(|e| e.to_string())
            },
        );
    let out = runtime().block_on(ds.collect()).expect("runs");
    let values: Vec<i64> = out
        .iter()
        .flat_map(|b| {
            b.column(0)
                .as_any()
                .downcast_ref::<Int64Array>()
                .expect("Int64")
                .values()
                .to_vec()
        })
        .collect();
    assert_eq!(
        values,
        (0..4000).map(|v| v * 2).collect::<Vec<i64>>(),
        "in order, each block once"
    );
    let stats = ds.last_stats().expect("stats");
    let pool = stats
        .operators
        .iter()
        .find(|o| o.name == "map_batches_on_actors")
        .expect("the pool's operator");
    assert_eq!(pool.max_actors, 3, "{stats:?}");
    assert_eq!(
        built.load(Ordering::SeqCst),
        3,
        "one construction per actor, none per block"
    );
}

#[test]
fn a_pool_whose_actors_cannot_be_built_fails_with_the_constructors_error() {
    let ds = Dataset::range(runtime(), 10).map_batches_on_actors(
        ActorPoolStrategy::fixed(2),
        || -> Result<(), String> { Err("no model file at /models/x".into()) },
        |_: &mut (), b: RecordBatch| Ok::<_, String>(b),
    );
    let err = runtime().block_on(ds.count()).expect_err("cannot build");
    assert!(
        matches!(err, DataError::Pool { .. })
            && err.to_string().contains("no model file at /models/x"),
        "{err}"
    );
}

#[test]
fn tasks_hold_the_cpus_they_ask_for() {
    let (now, most) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let (n, m) = (now.clone(), most.clone());
    let ds = Dataset::range(runtime(), 16 * 10)
        .with_options(DataOptions::new().rows_per_block(10).parallelism(8))
        .map_batches_with_cpus(2.0, move |b: RecordBatch| {
            let running = n.fetch_add(1, Ordering::SeqCst) + 1;
            m.fetch_max(running, Ordering::SeqCst);
            std::thread::sleep(Duration::from_millis(10));
            n.fetch_sub(1, Ordering::SeqCst);
            Ok::<_, DataError>(b)
        });
    assert_eq!(runtime().block_on(ds.count()).expect("runs"), 160);
    let most = most.load(Ordering::SeqCst);
    assert!(
        (1..=2).contains(&most),
        "4 CPUs fit two 2-CPU tasks at once; {most} ran at once"
    );
}
