//! A head and two nodes on loopback (this bench binary re-launched as
//! nodes), driven from this process; prints `metric value unit` lines, as
//! `perf` does, for `benches/ray/compare.sh`'s cluster section.
//!
//! ```sh
//! cargo bench -p troupe --features cluster --bench cluster_perf            # all
//! cargo bench -p troupe --features cluster --bench cluster_perf -- remote  # a filter
//! TROUPE_BENCH_IDLE_MINUTES=10 cargo bench ... -- false_suspicions          # idle run
//! TROUPE_BENCH_NODES=32 cargo bench ... -- scale                            # 32 light nodes
//! TROUPE_BENCH_TLS=1 cargo bench ...       # the same cluster with TLS: names end in `_tls`
//! ```

#[path = "../tests/dag/mod.rs"]
mod dag;
#[path = "harness/mod.rs"]
mod harness;
#[path = "../tests/common/cluster.rs"]
mod kit;

use std::time::{Duration, Instant};

use harness::{quick, timeit, Timing};
use kit::join_as_driver;
use troupe::cluster::local::{this_program, LocalCluster, LocalNode};
use troupe::cluster::{ClusterNode, MemberState, Role};
use troupe::prelude::*;
use troupe::remote::ClusterEvent;
use troupe::SchedulingStrategy;

#[troupe::remote]
fn noop() -> u8 {
    1
}

#[troupe::remote]
fn bytes(n: usize) -> Vec<u8> {
    vec![7u8; n]
}

#[troupe::remote]
fn len_of(bytes: Vec<u8>) -> usize {
    bytes.len()
}

/// An actor for the remote call loops.
#[derive(Default)]
pub struct Echo;

#[troupe::actor]
impl Echo {
    pub fn new() -> Self {
        Echo
    }

    pub fn ping(&self, x: u64) -> u64 {
        x
    }
}

fn wanted(filters: &[String], metric: &str) -> bool {
    filters.is_empty() || filters.iter().any(|f| metric.contains(f.as_str()))
}

/// Whether the cluster runs with TLS (`TROUPE_BENCH_TLS`): every figure's
/// name then ends in `_tls`, beside the same figure without it.
fn with_tls() -> bool {
    std::env::var_os("TROUPE_BENCH_TLS").is_some()
}

fn print(metric: &str, value: f64, unit: &str) {
    let suffix = if with_tls() { "_tls" } else { "" };
    println!("{metric}{suffix} {value:.3} {unit}");
}

async fn wait_for(what: &str, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while !check() {
        if Instant::now() >= deadline {
            let view = ClusterNode::current().map(|c| {
                let members: Vec<_> = c
                    .members()
                    .iter()
                    .map(|m| (m.hello.node, m.hello.role, m.state))
                    .collect();
                (members, c.connected())
            });
            panic!("timed out: {what}; members, and nodes connected: {view:?}");
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

fn alive_nodes() -> usize {
    ClusterNode::current()
        .map(|c| {
            let connected = c.connected();
            c.members()
                .iter()
                .filter(|m| {
                    m.state == MemberState::Alive
                        && matches!(m.hello.role, Role::Head | Role::Worker)
                        && connected.contains(&m.hello.node)
                })
                .count()
        })
        .unwrap_or(0)
}

/// SIGKILLs `victim` and resolves once this driver hears it is down.
async fn kill_and_wait(cluster: &mut LocalCluster, rt: &Runtime, victim: &LocalNode) {
    let mut events = rt.cluster_events();
    // LocalCluster blocks (it waits for the process): off the runtime's
    // workers, which the driver's links and heartbeats run on.
    tokio::task::block_in_place(|| cluster.kill(victim));
    loop {
        match events.recv().await {
            Ok(ClusterEvent::NodeDown { node, .. }) if node == victim.node => return,
            Ok(_) => {}
            Err(err) => panic!("events: {err}"),
        }
    }
}

/// A plain TCP copy of `total` bytes over loopback, sent in the chunks the
/// data path uses: the bar the cross-node read is compared with.
/// SIGKILLs `victim`, then calls `echo` until an answer comes (from its
/// restart elsewhere): the seconds from the kill to that answer.
async fn kill_until_answered(
    cluster: &mut LocalCluster,
    victim: &LocalNode,
    echo: &EchoHandle,
    never: &str,
) -> f64 {
    let killed = Instant::now();
    tokio::task::block_in_place(|| cluster.kill(victim));
    while echo.ping(2).await.is_err() {
        assert!(killed.elapsed() < Duration::from_secs(60), "{never}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    killed.elapsed().as_secs_f64()
}

async fn tcp_copy(total: usize) -> f64 {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let sender = tokio::spawn(async move {
        let (mut s, _) = listener.accept().await.expect("accept");
        let chunk = vec![7u8; 5 << 20];
        let mut sent = 0;
        while sent < total {
            let n = chunk.len().min(total - sent);
            s.write_all(&chunk[..n]).await.expect("write");
            sent += n;
        }
    });
    // The best case for plain TCP: a receive buffer already mapped (the
    // cross-node read lands in a fresh object: a Vec<u8> leaves the store's
    // buffer pool with its buffer).
    let mut into = vec![1u8; total];
    into.fill(0);
    let began = Instant::now();
    let mut s = tokio::net::TcpStream::connect(addr).await.expect("connect");
    s.read_exact(&mut into).await.expect("read");
    let secs = began.elapsed().as_secs_f64();
    sender.await.expect("sender");
    total as f64 / secs / 1e9
}

/// The other end of `tcp_pingpong_round_trips_per_s`: this program
/// re-launched with `TROUPE_BENCH_ECHO` set echoes 64-byte messages on
/// loopback, one at a time, with blocking reads (a process of its own, as
/// a node is).
fn echo_if_requested() {
    use std::io::{Read, Write};
    if std::env::var_os(ECHO).is_none() {
        return;
    }
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    println!("{}", listener.local_addr().expect("addr").port());
    let (mut stream, _) = listener.accept().expect("accept");
    stream.set_nodelay(true).expect("nodelay");
    let mut message = [0u8; 64];
    while stream.read_exact(&mut message).is_ok() {
        if stream.write_all(&message).is_err() {
            break;
        }
    }
    std::process::exit(0);
}

const ECHO: &str = "TROUPE_BENCH_ECHO";

/// Round trips per second of 64-byte messages over loopback TCP between
/// this process and another, blocking reads on both sides: what one
/// request at a time can reach here at best, the bar the sync remote
/// task and call rates are compared with.
fn tcp_pingpong(seconds: f64) -> f64 {
    use std::io::{BufRead, Read, Write};
    let mut child = std::process::Command::new(std::env::current_exe().expect("this program"))
        .env(ECHO, "1")
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("the echo process");
    let mut port = String::new();
    std::io::BufReader::new(child.stdout.take().expect("its stdout"))
        .read_line(&mut port)
        .expect("its port");
    let port: u16 = port.trim().parse().expect("a port");
    let mut stream = std::net::TcpStream::connect(("127.0.0.1", port)).expect("connect");
    stream.set_nodelay(true).expect("nodelay");
    let mut message = [7u8; 64];
    let began = Instant::now();
    let mut trips = 0u64;
    while began.elapsed().as_secs_f64() < seconds {
        for _ in 0..100 {
            stream.write_all(&message).expect("ping");
            stream.read_exact(&mut message).expect("pong");
        }
        trips += 100;
    }
    let rate = trips as f64 / began.elapsed().as_secs_f64();
    drop(stream);
    let _ = child.wait();
    rate
}

/// What opening one authenticated connection costs (TCP, TLS with the
/// cluster's certificates when on, the mutual cookie handshake): a pull of
/// a 64-byte object over a fresh data-path connection, less the same pull
/// over the connection it left open; the medians of 200 of each.
async fn connection_handshake_ms(tls_dir: &std::path::Path) -> f64 {
    use troupe::cluster::tls::{Credentials, Tls};
    use troupe::cluster::{DataClient, DataLimits, DataServer};
    let mut credentials = Credentials::cookie(b"a bench cookie");
    if with_tls() {
        credentials = credentials.with_tls(Tls::load(tls_dir).expect("the bench's certificates"));
    }
    let holder = troupe::ObjectStore::new(troupe::StoreConfig::with_budget(1 << 26));
    let any = "127.0.0.1:0".parse().expect("an address");
    let server = DataServer::bind(
        any,
        holder.clone(),
        DataLimits::default(),
        credentials.clone(),
    )
    .await
    .expect("a data server");
    let small = holder.put_bytes(&[7u8; 64]).await.expect("put");
    let client = DataClient::new(
        troupe::ObjectStore::new(troupe::StoreConfig::with_budget(1 << 26)),
        DataLimits::default(),
        credentials,
    );
    let addr = server.local_addr();
    let rounds = if quick() { 20 } else { 200 };
    let (mut fresh, mut reused) = (Vec::new(), Vec::new());
    for _ in 0..rounds {
        client.forget(addr);
        let began = Instant::now();
        client
            .pull(addr, small.id())
            .await
            .expect("a pull on a new connection");
        fresh.push(began.elapsed().as_secs_f64());
        let began = Instant::now();
        client
            .pull(addr, small.id())
            .await
            .expect("a pull on an open connection");
        reused.push(began.elapsed().as_secs_f64());
    }
    let median = |mut v: Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    server.shutdown();
    (median(fresh) - median(reused)) * 1e3
}

fn main() {
    echo_if_requested();
    troupe::node::main_if_requested();
    let filters: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with('-'))
        .collect();
    let tokio = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio");
    tokio.block_on(async { tokio::spawn(run(filters)).await.expect("the bench") });
}

async fn run(filters: Vec<String>) {
    let timing = Timing::from_env();
    if std::env::var_os("TROUPE_BENCH_NODES").is_some() && wanted(&filters, "scale") {
        scale().await;
        return;
    }
    let began = Instant::now();
    let mut cluster = LocalCluster::new("bench", this_program()).expect("a state directory");
    let tls_dir = cluster.home().join("tls");
    let tls_path = tls_dir.to_str().expect("a UTF-8 path").to_owned();
    let mut tls_flags: Vec<&str> = Vec::new();
    if with_tls() {
        troupe::cluster::tls::init_ca(&tls_dir).expect("a CA");
        troupe::cluster::tls::issue(&tls_dir, &tls_dir, 1).expect("a node certificate");
        tls_flags = vec!["--tls-dir", &tls_path];
    }
    let flags = |extra: &[&'static str]| -> Vec<&str> {
        let mut flags = vec!["--num-cpus", "2"];
        flags.extend_from_slice(extra);
        flags.extend_from_slice(&tls_flags);
        flags
    };
    let head = cluster.head(&flags(&[])).expect("the head starts");
    let light: Vec<&str> = ["--num-cpus", "1"]
        .into_iter()
        .chain(tls_flags.iter().copied())
        .collect();
    let a = cluster
        .worker(&head, &flags(&["--resources", "a=1"]))
        .expect("node a");
    let _b = cluster
        .worker(&head, &flags(&["--resources", "b=1"]))
        .expect("node b");
    let rt = if with_tls() {
        let mut options = troupe::cluster::ClusterOptions::driver(&head.address);
        options.cookie = Some(cluster.cookie().to_owned());
        options.state_dir = Some(cluster.home().clone());
        options.tls_dir = Some(tls_dir.clone());
        troupe::init(
            Config::default()
                .resources(Resources::default())
                .cluster_node(options),
        )
        .await
        .expect("the driver joins over TLS")
    } else {
        join_as_driver(&cluster, &head).await
    };
    wait_for("three nodes", || alive_nodes() == 3).await;
    print("cluster_start_seconds", began.elapsed().as_secs_f64(), "s");

    if wanted(&filters, "connection_handshake_ms") {
        let ms = connection_handshake_ms(&tls_dir).await;
        print("connection_handshake_ms", ms, "ms");
    }
    if wanted(&filters, "tcp_pingpong_round_trips_per_s") {
        let seconds = if quick() { 0.3 } else { 2.0 };
        let rate = tokio::task::block_in_place(|| tcp_pingpong(seconds));
        print("tcp_pingpong_round_trips_per_s", rate, "trips/s");
    }
    // The driver offers no CPUs: every task runs on another node.
    if wanted(&filters, "remote_tasks_sync_per_s") {
        let (rate, _) = timeit(&timing, 1, || async {
            rt.get(&noop::remote(&rt)).await.expect("a remote task");
        })
        .await;
        print("remote_tasks_sync_per_s", rate, "tasks/s");
    }
    if wanted(&filters, "remote_tasks_async_per_s") {
        let n = if quick() { 1_000 } else { 10_000 };
        let (rate, _) = timeit(&timing, n, || async {
            let refs: Vec<_> = (0..n).map(|_| noop::remote(&rt)).collect();
            for r in &refs {
                rt.get(r).await.expect("a remote task");
            }
        })
        .await;
        print("remote_tasks_async_per_s", rate, "tasks/s");
    }
    if wanted(&filters, "remote_actor_calls") {
        let on_a = ActorOptions::new().scheduling_strategy(SchedulingStrategy::NodeAffinity {
            node: a.node,
            soft: false,
        });
        let echo = Echo::remote(&rt, on_a)
            .new()
            .await
            .expect("an actor on node a");
        if wanted(&filters, "remote_actor_calls_sync_per_s") {
            let (rate, _) = timeit(&timing, 1, || async {
                echo.ping(1).await.expect("a remote call");
            })
            .await;
            print("remote_actor_calls_sync_per_s", rate, "calls/s");
        }
        if wanted(&filters, "remote_actor_calls_async_per_s") {
            let n = if quick() { 1_000 } else { 10_000 };
            let (rate, _) = timeit(&timing, n, || async {
                let calls: Vec<_> = (0..n).map(|i| echo.ping(i)).collect();
                for call in calls {
                    call.await.expect("a remote call");
                }
            })
            .await;
            print("remote_actor_calls_async_per_s", rate, "calls/s");
        }
    }
    if wanted(&filters, "cross_node_get_gigabytes_per_s") {
        let n: usize = if quick() { 100 << 20 } else { 1 << 30 };
        let runs = if quick() { 2 } else { 5 };
        let mut rates = Vec::new();
        for _ in 0..runs {
            let big = bytes::options(TaskOptions::default().resource("a", 1.0)).remote(&rt, n);
            wait_for("made on node a", || {
                rt.objects().location(big.id()) == Some(Some(a.node))
            })
            .await;
            let began = Instant::now();
            let got = rt.get(&big).await.expect("the bytes");
            let secs = began.elapsed().as_secs_f64();
            assert_eq!(got.len(), n);
            rates.push(n as f64 / secs / 1e9);
        }
        // The first read lands in fresh memory (its pages fault in as
        // they fill); later ones in the buffer the store kept from the one
        // before (as a loop fetching weights every iteration does).
        print("cross_node_get_fresh_gigabytes_per_s", rates[0], "GB/s");
        let mut later = rates[1..].to_vec();
        later.sort_by(f64::total_cmp);
        print(
            "cross_node_get_gigabytes_per_s",
            later[later.len() / 2],
            "GB/s",
        );
        let mut tcp: Vec<f64> = Vec::new();
        for _ in 0..runs {
            tcp.push(tcp_copy(n).await);
        }
        tcp.sort_by(f64::total_cmp);
        print("tcp_loopback_gigabytes_per_s", tcp[tcp.len() / 2], "GB/s");
    }
    if wanted(&filters, "random_dag_tasks_per_s") {
        // The random DAG of tests/cluster_correctness.rs (seed 1): tasks with
        // 0 to 4 ref arguments, chains, refs inside arguments, keeper
        // actors, planned failures; from submitting the first task to
        // having checked every answer at the driver.
        let shape = dag::Shape {
            tasks: if quick() { 1_000 } else { 10_000 },
            ..dag::Shape::default()
        };
        let keepers = dag::keepers(&rt, 2).await;
        let ran = dag::run_seed(&rt, 1, &shape, &keepers)
            .await
            .expect("the random DAG gives the local answers");
        for keeper in &keepers {
            keeper.stop().await;
        }
        print(
            "random_dag_tasks_per_s",
            ran.tasks as f64 / ran.elapsed.as_secs_f64(),
            "tasks/s",
        );
    }
    if wanted(&filters, "node_dead_after_sigkill_s") {
        // LocalCluster blocks (it waits for the process): off the runtime's
        // workers, which the driver's links and heartbeats run on.
        let before = alive_nodes();
        let victim =
            tokio::task::block_in_place(|| cluster.worker(&head, &light)).expect("a node to kill");
        wait_for("the victim", || alive_nodes() == before + 1).await;
        let killed = Instant::now();
        kill_and_wait(&mut cluster, &rt, &victim).await;
        print(
            "node_dead_after_sigkill_s",
            killed.elapsed().as_secs_f64(),
            "s",
        );
    }
    if wanted(&filters, "placement_group_create_ms") {
        // 4 bundles SPREAD over the three nodes: from `placement_group` to
        // ready (the median of many), and creations with removals per
        // second (Ray's microbenchmark loop).
        let n = if quick() { 20 } else { 300 };
        let mut ready_ms = Vec::with_capacity(n);
        let began = Instant::now();
        for _ in 0..n {
            let start = Instant::now();
            let group = rt
                .placement_group(
                    PlacementGroupOptions::new(vec![Resources::cpus(0.1); 4])
                        .strategy(PlacementStrategy::Spread),
                )
                .expect("a valid group");
            group.ready(Duration::from_secs(10)).await.expect("placed");
            ready_ms.push(start.elapsed().as_secs_f64() * 1e3);
            rt.remove_placement_group(&group).await;
        }
        let per_s = n as f64 / began.elapsed().as_secs_f64();
        ready_ms.sort_by(f64::total_cmp);
        print("placement_group_create_ms", ready_ms[n / 2], "ms");
        print("placement_group_create_remove_per_s", per_s, "groups/s");
    }
    if wanted(&filters, "rejoin_after_stall_s") {
        // A node stopped (SIGSTOP) past the detector's limit, then let run
        // again: from SIGCONT until its process is a live member again (a
        // new node: it was declared dead and fenced meanwhile).
        let before = alive_nodes();
        let victim =
            tokio::task::block_in_place(|| cluster.worker(&head, &light)).expect("a node to stall");
        wait_for("the victim", || alive_nodes() == before + 1).await;
        cluster.pause(&victim).expect("SIGSTOP");
        wait_for("the victim declared dead", || {
            ClusterNode::current().is_some_and(|c| {
                c.members()
                    .iter()
                    .any(|m| m.hello.node == victim.node && m.state == MemberState::Dead)
            })
        })
        .await;
        let resumed = Instant::now();
        cluster.resume(&victim).expect("SIGCONT");
        wait_for("the victim back as a new node", || {
            alive_nodes() == before + 1
                && ClusterNode::current().is_some_and(|c| {
                    c.members().iter().any(|m| {
                        m.hello.pid == victim.pid
                            && m.hello.node != victim.node
                            && m.state == MemberState::Alive
                    })
                })
        })
        .await;
        print("rejoin_after_stall_s", resumed.elapsed().as_secs_f64(), "s");
    }
    if wanted(&filters, "reconstruct_100mb_s") {
        // 100 MB made by a task on a node that is then SIGKILLed: from the
        // driver's `get` (after the death is known) to the value, made again
        // from its lineage on another node and pulled here; beside it, the
        // same task's first run and pull, for the ratio.
        let before = alive_nodes();
        let victim =
            tokio::task::block_in_place(|| cluster.worker(&head, &light)).expect("a node to kill");
        wait_for("the victim", || alive_nodes() == before + 1).await;
        let there = TaskOptions::default().scheduling_strategy(SchedulingStrategy::NodeAffinity {
            node: victim.node,
            soft: true,
        });
        let first = Instant::now();
        let warm = bytes::options(there.clone()).remote(&rt, 100 << 20);
        drop(rt.get(&warm).await.expect("100 MB"));
        let first_run = first.elapsed().as_secs_f64();
        drop(warm);
        let made = bytes::options(there).remote(&rt, 100 << 20);
        // Known made there once a task there read it (`wait` would pull
        // it here).
        let on_victim =
            TaskOptions::default().scheduling_strategy(SchedulingStrategy::NodeAffinity {
                node: victim.node,
                soft: false,
            });
        let read = len_of::options(on_victim).remote(&rt, &made);
        assert_eq!(*rt.get(&read).await.expect("read there"), 100 << 20);
        kill_and_wait(&mut cluster, &rt, &victim).await;
        let asked = Instant::now();
        let value = rt.get(&made).await.expect("made again");
        let rebuilt = asked.elapsed().as_secs_f64();
        assert_eq!(value.len(), 100 << 20);
        print("reconstruct_100mb_s", rebuilt, "s");
        print("reconstruct_100mb_vs_first_run", rebuilt / first_run, "x");
    }
    if wanted(&filters, "actor_restarted_elsewhere_s") {
        // An actor (max_restarts 1) on a node that is SIGKILLed: from the
        // kill to the first call answered by its restart on another node.
        let before = alive_nodes();
        let victim =
            tokio::task::block_in_place(|| cluster.worker(&head, &light)).expect("a node to kill");
        wait_for("the victim", || alive_nodes() == before + 1).await;
        let options = ActorOptions::new().max_restarts(1).scheduling_strategy(
            SchedulingStrategy::NodeAffinity {
                node: victim.node,
                soft: true,
            },
        );
        let echo = Echo::remote(&rt, options).new().await.expect("spawned");
        assert_eq!(echo.ping(1).await.expect("answers"), 1);
        let answered = kill_until_answered(
            &mut cluster,
            &victim,
            &echo,
            "the actor was never restarted elsewhere",
        )
        .await;
        print("actor_restarted_elsewhere_s", answered, "s");
    }
    if wanted(&filters, "supervised_child_restarted_elsewhere_s") {
        // A supervisor here whose child lives on a node that is SIGKILLed:
        // from the kill to the first call answered by the child restarted
        // (by the supervisor, per its strategy) on another node.
        let before = alive_nodes();
        let victim =
            tokio::task::block_in_place(|| cluster.worker(&head, &light)).expect("a node to kill");
        wait_for("the victim", || alive_nodes() == before + 1).await;
        let options = ActorOptions::new().scheduling_strategy(SchedulingStrategy::NodeAffinity {
            node: victim.node,
            soft: true,
        });
        let (child, echo) = rt
            .remote_child::<Echo>("echo", options, "new", &())
            .expect("a child spec");
        let sup = rt
            .spawn_supervisor(SupervisorSpec::new("bench", Strategy::OneForOne).child(child))
            .await
            .expect("the supervisor starts");
        assert_eq!(echo.ping(1).await.expect("answers"), 1);
        let answered = kill_until_answered(
            &mut cluster,
            &victim,
            &echo,
            "the child was never restarted elsewhere",
        )
        .await;
        print("supervised_child_restarted_elsewhere_s", answered, "s");
        sup.stop(Duration::from_secs(5)).await;
    }
    if let Some(minutes) = std::env::var("TROUPE_BENCH_IDLE_MINUTES")
        .ok()
        .and_then(|m| m.parse::<u64>().ok())
    {
        if wanted(&filters, "false_suspicions") {
            let mut events = rt.cluster_events();
            let downs = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
            let counted = downs.clone();
            let watcher = tokio::spawn(async move {
                while let Ok(event) = events.recv().await {
                    if matches!(event, ClusterEvent::NodeDown { .. }) {
                        counted.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    }
                }
            });
            // Every suspicion the head reports shows in the directory it
            // sends every 200 ms: count each Alive -> Suspect seen here.
            let mut suspected = std::collections::HashSet::new();
            let mut suspicions = 0u64;
            let until = Instant::now() + Duration::from_secs(minutes * 60);
            while Instant::now() < until {
                if let Some(node) = ClusterNode::current() {
                    for m in node.members() {
                        if m.state == MemberState::Suspect {
                            if suspected.insert(m.hello.node) {
                                suspicions += 1;
                            }
                        } else {
                            suspected.remove(&m.hello.node);
                        }
                    }
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            watcher.abort();
            print(
                &format!("false_suspicions_{minutes}min"),
                (downs.load(std::sync::atomic::Ordering::Relaxed) + suspicions) as f64,
                "events",
            );
        }
    }
    if let Some(rss) = harness::rss_bytes() {
        print("driver_rss_mib", rss / (1 << 20) as f64, "MiB");
    }
    let workers = alive_nodes().saturating_sub(1);
    rt.shutdown().await.expect("shutdown");
    if wanted(&filters, "head_restart_recovered_s") && !with_tls() {
        // The head SIGKILLed and started again at its address: from the
        // kill until `troupe status` lists every worker alive again.
        let port = head.address.rsplit(':').next().expect("a port").to_owned();
        let killed = Instant::now();
        tokio::task::block_in_place(|| cluster.kill(&head));
        let args = [
            "start",
            "--head",
            "--block",
            "--num-cpus",
            "2",
            "--port",
            &port,
        ];
        let head = tokio::task::block_in_place(|| cluster.start_with(&this_program(), &args))
            .expect("the head starts again");
        // Every worker taken back (under its id) and the new head; the old
        // head is listed as dead.
        let all = format!("({} alive)", workers + 1);
        loop {
            let (ok, status) = tokio::task::block_in_place(|| {
                cluster.run(&["status", "--address", &head.address])
            })
            .expect("troupe status runs");
            if ok && status.contains(&all) {
                break;
            }
            assert!(
                killed.elapsed() < Duration::from_secs(60),
                "not every worker rejoined the restarted head: {status}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        print(
            "head_restart_recovered_s",
            killed.elapsed().as_secs_f64(),
            "s",
        );
    }
}

/// CPU seconds and resident memory of a process (Linux).
fn proc_usage(pid: u32) -> Option<(f64, f64)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let fields: Vec<&str> = stat.rsplit_once(") ")?.1.split_whitespace().collect();
    let ticks: f64 = fields.get(11)?.parse::<f64>().ok()? + fields.get(12)?.parse::<f64>().ok()?;
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let rss_kib: f64 = status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()?;
    Some((ticks / 100.0, rss_kib * 1024.0))
}

/// `TROUPE_BENCH_NODES=N`: N light nodes (one CPU each) and a head; the
/// head's CPU and memory per node, membership convergence after joins and
/// after a death, scheduling throughput across them.
async fn scale() {
    let n: usize = std::env::var("TROUPE_BENCH_NODES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(32);
    let mut cluster = LocalCluster::new("scale", this_program()).expect("a state directory");
    cluster.start_timeout = Duration::from_secs(120);
    let head = cluster.head(&["--num-cpus", "1"]).expect("the head starts");
    let (cpu0, rss0) = proc_usage(head.pid).unwrap_or_default();
    let began = Instant::now();
    let mut nodes = Vec::new();
    for _ in 0..n {
        nodes.push(
            tokio::task::block_in_place(|| cluster.worker(&head, &["--num-cpus", "1"]))
                .expect("a node"),
        );
    }
    let rt = join_as_driver(&cluster, &head).await;
    wait_for("every node", || alive_nodes() == n + 1).await;
    print("scale_nodes", n as f64, "nodes");
    print("scale_join_all_seconds", began.elapsed().as_secs_f64(), "s");

    // Idle for 10 s: the head's steady cost.
    let (cpu1, _) = proc_usage(head.pid).unwrap_or_default();
    tokio::time::sleep(Duration::from_secs(10)).await;
    let (cpu2, rss2) = proc_usage(head.pid).unwrap_or_default();
    print(
        "scale_head_idle_cpu_percent",
        (cpu2 - cpu1) / 10.0 * 100.0,
        "%",
    );
    print(
        "scale_head_idle_cpu_percent_per_node",
        (cpu2 - cpu1) / 10.0 * 100.0 / n as f64,
        "%",
    );
    print("scale_head_rss_mib", rss2 / (1 << 20) as f64, "MiB");
    print(
        "scale_head_rss_kib_per_node",
        (rss2 - rss0) / 1024.0 / n as f64,
        "KiB",
    );
    let _ = cpu0;

    // One more joins: how long until the driver can use it.
    let joined = Instant::now();
    let extra = tokio::task::block_in_place(|| cluster.worker(&head, &["--num-cpus", "1"]))
        .expect("one more");
    wait_for("the new node", || alive_nodes() == n + 2).await;
    print(
        "scale_converged_after_join_seconds",
        joined.elapsed().as_secs_f64(),
        "s",
    );

    // One dies: how long until the driver hears.
    let mut events = rt.cluster_events();
    let killed = Instant::now();
    tokio::task::block_in_place(|| cluster.kill(&extra));
    loop {
        match events.recv().await {
            Ok(ClusterEvent::NodeDown { node, .. }) if node == extra.node => break,
            Ok(_) => {}
            Err(err) => panic!("events: {err}"),
        }
    }
    print(
        "scale_converged_after_death_seconds",
        killed.elapsed().as_secs_f64(),
        "s",
    );

    // Throughput across all of them.
    let tasks = 20_000;
    let began = Instant::now();
    let refs: Vec<_> = (0..tasks).map(|_| noop::remote(&rt)).collect();
    for r in &refs {
        rt.get(r).await.expect("a task");
    }
    print(
        "scale_tasks_per_s",
        tasks as f64 / began.elapsed().as_secs_f64(),
        "tasks/s",
    );
    let _ = nodes;
    rt.shutdown().await.expect("shutdown");
}
