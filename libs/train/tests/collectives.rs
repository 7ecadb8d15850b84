//! The collectives against one process's arithmetic: all-reduce sum and
//! mean bitwise equal to the sequential sum in rank order, for random
//! tensors of several sizes and kinds on 2 to 4 workers; broadcast;
//! mismatched calls fail instead of hanging.

mod common;

use common::input;

use std::sync::{Arc, Mutex};

use tch::{Kind, Tensor};
use troupe_train::{ReduceOp, TrainError, Trainer, TrainerConfig};

const SIZES: [usize; 4] = [1, 7, 1000, 100_003];
const KINDS: [Kind; 4] = [Kind::Float, Kind::Double, Kind::Int64, Kind::Int];

/// (rank, size, kind, op, exact) for every case run.
type Cases = Arc<Mutex<Vec<(usize, usize, Kind, ReduceOp, bool)>>>;

fn expected(world: usize, size: usize, kind: Kind, op: ReduceOp) -> Tensor {
    let mut sum = input(0, size, kind);
    for r in 1..world {
        sum = &sum + input(r, size, kind);
    }
    match op {
        ReduceOp::Sum => sum,
        ReduceOp::Mean => sum / world as f64,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn all_reduce_is_exactly_the_sequential_sum_on_2_to_4_workers() {
    let rt = common::runtime(4.0).await;
    for world in 2..=4 {
        let seen: Cases = Arc::default();
        let out = seen.clone();
        Trainer::new(&rt, TrainerConfig::new(world))
            .fit(move |ctx| {
                for size in SIZES {
                    for kind in KINDS {
                        let mut ops = vec![ReduceOp::Sum];
                        if matches!(kind, Kind::Float | Kind::Double) {
                            ops.push(ReduceOp::Mean);
                        }
                        for op in ops {
                            let mut t = input(ctx.rank(), size, kind);
                            ctx.all_reduce(&mut t, op)?;
                            let want = expected(ctx.world_size(), size, kind, op);
                            let equal = t.kind() == kind && t.equal(&want);
                            out.lock()
                                .unwrap()
                                .push((ctx.rank(), size, kind, op, equal));
                        }
                    }
                }
                // A non-contiguous tensor is reduced in place too.
                let mut t = Tensor::from_slice(&[1.0f64, 2.0, 3.0, 4.0])
                    .view([2, 2])
                    .tr();
                let want = &t * ctx.world_size() as f64;
                ctx.all_reduce(&mut t, ReduceOp::Sum)?;
                out.lock().unwrap().push((
                    ctx.rank(),
                    4,
                    Kind::Double,
                    ReduceOp::Sum,
                    t.equal(&want),
                ));
                Ok(())
            })
            .await
            .expect("fit succeeds");
        let seen = seen.lock().unwrap();
        let per_rank = SIZES.len() * (KINDS.len() + 2) + 1;
        assert_eq!(
            seen.len(),
            world * per_rank,
            "world {world}: every case on every rank"
        );
        let wrong: Vec<_> = seen.iter().filter(|c| !c.4).collect();
        assert!(wrong.is_empty(), "world {world}: not exact: {wrong:?}");
    }
    rt.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broadcast_copies_the_root_and_mismatches_fail_fast() {
    let rt = common::runtime(3.0).await;
    let seen: Arc<Mutex<Vec<Vec<f32>>>> = Arc::default();
    let out = seen.clone();
    Trainer::new(&rt, TrainerConfig::new(3))
        .fit(move |ctx| {
            let mut t = Tensor::from_slice(&[ctx.rank() as f32; 5]);
            ctx.broadcast(&mut t, 2)?;
            ctx.barrier()?;
            out.lock().unwrap().push(Vec::<f32>::try_from(&t)?);
            Ok(())
        })
        .await
        .expect("fit succeeds");
    assert_eq!(*seen.lock().unwrap(), vec![vec![2.0f32; 5]; 3]);

    // Rank 1 passes another size: the attempt fails with a mismatch, no hang.
    let err = Trainer::new(&rt, TrainerConfig::new(2))
        .fit(|ctx| {
            let mut t = Tensor::zeros([3 + ctx.rank() as i64], (Kind::Float, tch::Device::Cpu));
            ctx.all_reduce(&mut t, ReduceOp::Sum)?;
            Ok(())
        })
        .await
        .expect_err("mismatched sizes fail");
    match err {
        TrainError::Failed {
            message,
            failures: 1,
            ..
        } => {
            assert!(message.contains("elements"), "says what differs: {message}")
        }
        other => panic!("expected Failed, got {other}"),
    }
    rt.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rank_that_leaves_early_times_out_the_others_and_the_group_retries() {
    let rt = common::runtime(2.0).await;
    let started = std::time::Instant::now();
    // 2 s: a timeout of the second attempt on a loaded machine would be a
    // further restart, which the budget of 3 allows.
    let config = TrainerConfig::new(2)
        .max_failures(3)
        .collective_timeout(std::time::Duration::from_secs(2));
    let result = Trainer::new(&rt, config)
        .fit(|ctx| {
            // On the first attempt rank 1 returns at once: rank 0 would
            // wait for it in the barrier forever without the timeout.
            if ctx.attempt() == 0 && ctx.rank() == 1 {
                return Ok(());
            }
            ctx.barrier()?;
            let mut t = Tensor::from_slice(&[1i64]);
            ctx.all_reduce(&mut t, ReduceOp::Sum)?;
            ctx.report(
                troupe_train::Metrics::new().with("sum", t.int64_value(&[0]) as f64),
                None,
            )?;
            Ok(())
        })
        .await
        .expect("the second attempt succeeds");
    assert!((1..=3).contains(&result.restarts), "{}", result.restarts);
    assert!(
        result.failures[0].starts_with("rank 0: a collective waited more than 2s"),
        "the first failure is the timeout: {:?}",
        result.failures
    );
    assert_eq!(result.history.len(), 1);
    assert_eq!(result.history[0].metrics.get("sum"), Some(2.0));
    assert!(started.elapsed() < std::time::Duration::from_secs(60));

    // Rank 1 skips the barrier: its all-reduce meets rank 0's barrier, and
    // both see at once that their calls differ.
    let err = Trainer::new(
        &rt,
        TrainerConfig::new(2).collective_timeout(std::time::Duration::from_secs(2)),
    )
    .fit(|ctx| {
        if ctx.rank() == 0 {
            ctx.barrier()?;
        }
        let mut t = Tensor::from_slice(&[1i64]);
        ctx.all_reduce(&mut t, ReduceOp::Sum)?;
        Ok(())
    })
    .await
    .expect_err("the calls do not match");
    let message = err.to_string();
    assert!(
        message.contains("rank 0's collective call #1 is barrier, rank 1's is #1 all_reduce"),
        "{message}"
    );
    rt.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancelled_fit_stops_its_workers_and_gives_back_its_bundles() {
    use std::sync::atomic::{AtomicUsize, Ordering};

    let rt = common::runtime(2.0).await;
    let (steps, ended) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let (s, e) = (steps.clone(), ended.clone());
    let trainer = Trainer::new(&rt, TrainerConfig::new(2));
    let train_loop =
        move |ctx: &mut troupe_train::WorkerContext| -> Result<(), troupe_train::LoopError> {
            // Endless: only the cancellation ends it (an Aborted collective).
            let outcome = loop {
                if let Err(err) = ctx.barrier() {
                    break err;
                }
                s.fetch_add(1, Ordering::SeqCst);
            };
            e.fetch_add(1, Ordering::SeqCst);
            Err(outcome.into())
        };
    let fit = tokio::spawn(async move { trainer.fit(train_loop).await });
    troupe_test_kit::eventually("the workers are stepping", || {
        steps.load(Ordering::SeqCst) > 100
    })
    .await;
    assert_eq!(
        rt.available_resources().num_cpus,
        0.0,
        "2 bundles of 1 CPU held"
    );
    fit.abort();
    let _ = fit.await;
    troupe_test_kit::eventually("both loops end and the bundles are given back", || {
        ended.load(Ordering::SeqCst) == 2 && rt.available_resources().num_cpus == 2.0
    })
    .await;
    rt.shutdown().await.unwrap();
}
