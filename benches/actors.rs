//! Criterion benches of the actor hot paths: a call, a pipelined batch, a
//! spawn, a supervised restart. `cargo bench -p troupe --bench actors`.

use std::time::Duration;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use troupe::prelude::*;

struct Noop;

#[troupe::actor]
impl Noop {
    pub fn noop(&self) -> u64 {
        1
    }

    pub fn crash(&self) {
        panic!("bench crash")
    }
}

fn actor_paths(c: &mut Criterion) {
    // Quiet the intentional panics of the restart bench.
    // (the panic hook stays: a silent failure would hide a real bug)
    let rt = Runtime::start(Config::default()).expect("runtime starts");
    let tokio = rt.clone();
    let actor = rt
        .block_on(rt.spawn_actor(ActorOptions::new(), || Noop))
        .expect("spawn");

    let mut group = c.benchmark_group("actor");
    group
        .measurement_time(Duration::from_secs(3))
        .sample_size(30);

    group.throughput(Throughput::Elements(1));
    group.bench_function("call", |b| {
        b.iter(|| tokio.block_on(actor.noop()).expect("reply"));
    });

    group.throughput(Throughput::Elements(1000));
    group.bench_function("pipelined_1000_calls", |b| {
        b.iter(|| {
            tokio.block_on(async {
                let pending: Vec<_> = (0..1000).map(|_| actor.noop()).collect();
                for p in pending {
                    p.await.expect("reply");
                }
            })
        });
    });

    group.throughput(Throughput::Elements(1));
    group.bench_function("spawn_call_drop", |b| {
        b.iter(|| {
            tokio.block_on(async {
                let a = rt
                    .spawn_actor(ActorOptions::new(), || Noop)
                    .await
                    .expect("spawn");
                a.noop().await.expect("reply");
            })
        });
    });

    let restarting = rt
        .block_on(rt.spawn_actor(ActorOptions::new().max_restarts(None), || Noop))
        .expect("spawn");
    group.bench_function("panic_restart_call", |b| {
        b.iter(|| {
            tokio.block_on(async {
                let _ = restarting.crash().await;
                restarting.noop().await.expect("reply after restart");
            })
        });
    });
    group.finish();
    let _ = rt.block_on(rt.shutdown());
}

criterion_group!(benches, actor_paths);
criterion_main!(benches);
