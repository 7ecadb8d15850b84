//! Random DAGs (seeded) of tasks, actor calls and refs, evaluated once in
//! plain Rust ([`Dag::expected`]) and once on a runtime ([`Dag::submit`],
//! [`Dag::check`]): every answer must match exactly, and every error must
//! be the planned one.
//!
//! A node of the DAG is a task with 0 to 4 ref arguments (resolved before
//! it runs), and maybe refs inside its arguments (read by its body); it
//! makes bytes of a planned size (8 bytes to 64 MB) from a digest of
//! everything it read, returns them, or puts them and returns the ref
//! (`return ray.put(x)`), or fails on purpose with a known error. Some
//! nodes are calls to a [`Keeper`] actor (through a task that holds the
//! actor's handle), which keeps the refs it is given, and the ref it made,
//! in its state. Shared by `tests/cluster_correctness.rs` and
//! `benches/cluster_perf.rs`.
#![allow(dead_code)]

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

use serde::{Deserialize, Serialize};
use troupe::prelude::*;
use troupe::TaskCause;

/// What a node makes.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub enum Payload {
    /// Its bytes.
    Bytes(Vec<u8>),
    /// A ref to its bytes, put by whatever made them (on its node).
    Ref(ObjectRef<Payload>),
}

impl GetSize for Payload {
    fn get_heap_size_with_tracker<T: get_size2::GetSizeTracker>(&self, tracker: T) -> (usize, T) {
        match self {
            Payload::Bytes(bytes) => (bytes.capacity(), tracker),
            Payload::Ref(_) => (0, tracker),
        }
    }
}

/// Why a node has no value: it failed on purpose, or something
/// unplanned happened (which fails the check).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum DagError {
    /// Node `0` failed on purpose (or this node read one that did).
    Planned(u32),
    /// Not planned.
    Unplanned(String),
}

impl std::fmt::Display for DagError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            DagError::Planned(node) => write!(f, "node {node} failed on purpose"),
            DagError::Unplanned(why) => write!(f, "unplanned: {why}"),
        }
    }
}

impl std::error::Error for DagError {}

/// What the bodies of this process are waiting for now (a stalled DAG's
/// report names them, and the awaited objects' state here).
static AWAITING: Mutex<BTreeMap<u64, String>> = Mutex::new(BTreeMap::new());
static NEXT_WAIT: AtomicU64 = AtomicU64::new(0);

/// Names one wait in [`AWAITING`] while it lasts.
struct Awaiting(u64);

impl Awaiting {
    fn on(who: &str, r: &ObjectRef<Payload>) -> Awaiting {
        let token = NEXT_WAIT.fetch_add(1, Ordering::Relaxed);
        let task = troupe::task::current().map(|c| c.task_id.to_string());
        let what = format!(
            "{who} awaits {} since {:?} in {task:?}",
            r.id(),
            std::time::Instant::now()
        );
        AWAITING
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(token, what);
        Awaiting(token)
    }
}

impl Drop for Awaiting {
    fn drop(&mut self) {
        AWAITING
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&self.0);
    }
}

/// The waits of this process, and what this node knows of each awaited
/// object.
fn waits(rt: &Runtime) -> String {
    let waits: Vec<String> = AWAITING
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .values()
        .take(20)
        .cloned()
        .collect();
    let objects = rt.objects().list();
    let known: Vec<String> = waits
        .iter()
        .filter_map(|w| {
            let id = w.split(" awaits ").nth(1)?.split(' ').next()?;
            let o = objects.iter().find(|o| o.id.to_string() == id)?;
            Some(format!(
                "{} {} refs={} borrowers={:?} at {:?}",
                o.id, o.state, o.refs, o.borrowers, o.location
            ))
        })
        .collect();
    format!("waits {waits:#?}; awaited objects here {known:#?}")
}

troupe::register_cause!(DagError, "tests::dag::DagError");

/// What a node's body is told.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Step {
    /// The node's index.
    pub node: u32,
    /// Mixed into its digest first.
    pub salt: u64,
    /// Bytes it makes.
    pub len: u32,
    /// Fails on purpose (once its inputs are read).
    pub fail: bool,
    /// Puts its bytes and returns the ref.
    pub indirect: bool,
    /// Refs inside its arguments (read by the body, not before it runs).
    pub nested: Vec<ObjectRef<Payload>>,
}

impl GetSize for Step {
    fn get_heap_size_with_tracker<T: get_size2::GetSizeTracker>(&self, tracker: T) -> (usize, T) {
        (
            self.nested.capacity() * std::mem::size_of::<ObjectRef<Payload>>(),
            tracker,
        )
    }
}

/// A node of the DAG, as planned.
#[derive(Clone, Debug)]
pub struct Node {
    /// A call to a keeper actor (through a task) rather than a plain task.
    pub keeper: bool,
    /// Ref arguments (earlier nodes), resolved before the task runs.
    pub inputs: Vec<usize>,
    /// Refs inside its arguments (earlier nodes).
    pub nested: Vec<usize>,
    pub salt: u64,
    pub len: u32,
    pub fail: bool,
    pub indirect: bool,
    /// Copies of its result kept on distinct nodes (`TaskOptions::replicas`).
    pub replicas: u8,
}

/// What a random DAG is made of.
#[derive(Clone, Debug)]
pub struct Shape {
    /// Nodes.
    pub tasks: usize,
    /// The longest line of ref arguments.
    pub max_depth: usize,
    /// Nodes that make `large_min` bytes or more (up to `large_max`).
    pub large: usize,
    pub large_min: u32,
    pub large_max: u32,
    /// Whether keeper actor calls are mixed in.
    pub keepers: bool,
    /// Whether some nodes put their bytes and return the ref: an object
    /// owned by the node that ran them, lost for good with that node.
    pub puts: bool,
    /// Planned failures, per thousand nodes.
    pub fail_per_mille: u64,
    /// Whether half the large nodes keep a replica of their result (the
    /// other half, only the copy where it was made).
    pub replicas: bool,
}

impl Default for Shape {
    fn default() -> Self {
        Shape {
            tasks: 400,
            max_depth: 100,
            large: 1,
            large_min: 4 << 20,
            large_max: 64 << 20,
            keepers: true,
            puts: true,
            fail_per_mille: 30,
            replicas: false,
        }
    }
}

/// A seeded generator (SplitMix64): the same seed, the same DAG.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Rng(seed ^ 0x6a09_e667_f3bc_c909)
    }

    pub fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n` (n > 0).
    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }

    /// True with probability `per_mille` / 1000.
    pub fn chance(&mut self, per_mille: u64) -> bool {
        self.below(1000) < per_mille
    }

    pub fn range(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.below(hi - lo + 1)
    }
}

/// A DAG, in topological order.
#[derive(Clone, Debug)]
pub struct Dag {
    pub seed: u64,
    pub nodes: Vec<Node>,
}

/// A digest of bytes (eight at a time: fast in a debug build too).
pub fn digest(bytes: &[u8]) -> u64 {
    let mut h = 0xcbf2_9ce4_8422_2325u64 ^ bytes.len() as u64;
    let mut words = bytes.chunks_exact(8);
    for w in &mut words {
        let mut word = [0u8; 8];
        word.copy_from_slice(w);
        h = (h ^ u64::from_le_bytes(word))
            .wrapping_mul(0x0100_0000_01b3)
            .rotate_left(29);
    }
    for b in words.remainder() {
        h = (h ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3);
    }
    h
}

fn mix(h: u64, x: u64) -> u64 {
    (h ^ x).wrapping_mul(0x9e37_79b9_7f4a_7c15).rotate_left(31)
}

/// `len` bytes that only `seed` makes.
pub fn pattern(seed: u64, len: usize) -> Vec<u8> {
    let mut out = vec![0u8; len];
    let mut x = seed | 1;
    let mut words = out.chunks_exact_mut(8);
    for w in &mut words {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        w.copy_from_slice(&x.to_le_bytes());
    }
    for (i, b) in words.into_remainder().iter_mut().enumerate() {
        *b = (x >> (8 * i)) as u8;
    }
    out
}

impl Dag {
    /// The DAG that `seed` makes, of `shape`.
    pub fn generate(seed: u64, shape: &Shape) -> Dag {
        let mut rng = Rng::new(seed);
        let n = shape.tasks;
        let mut nodes: Vec<Node> = Vec::with_capacity(n);
        let mut depth: Vec<usize> = Vec::with_capacity(n);
        let mut large: Vec<usize> = (0..shape.large.min(n))
            .map(|_| rng.below(n as u64) as usize)
            .collect();
        large.sort_unstable();
        for i in 0..n {
            let keeper = shape.keepers && i > 0 && rng.chance(60);
            let mut inputs = Vec::new();
            let mut nested = Vec::new();
            if i > 0 {
                let want = if keeper {
                    0
                } else {
                    match rng.below(100) {
                        0..=9 => 0,
                        10..=49 => 1,
                        50..=74 => 2,
                        75..=89 => 3,
                        _ => 4,
                    }
                };
                // A chain goes on from the previous node half the time,
                // until it is as deep as allowed.
                if want > 0 && depth[i - 1] < shape.max_depth && rng.chance(500) {
                    inputs.push(i - 1);
                }
                while inputs.len() < want {
                    // Mostly recent nodes (fan-out from them), sometimes any.
                    let pick = if rng.chance(700) {
                        i - 1 - rng.below((i as u64).min(20)) as usize
                    } else {
                        rng.below(i as u64) as usize
                    };
                    if depth[pick] < shape.max_depth {
                        inputs.push(pick);
                    } else if inputs.is_empty() && i > 1 {
                        inputs.push(rng.below(i as u64 / 2) as usize);
                    } else {
                        break;
                    }
                }
                let wanted_nested = if keeper {
                    1 + rng.below(3)
                } else {
                    match rng.below(100) {
                        0..=69 => 0,
                        70..=89 => 1,
                        _ => 2,
                    }
                };
                for _ in 0..wanted_nested {
                    nested.push(rng.below(i as u64) as usize);
                }
            }
            let is_large = large.binary_search(&i).is_ok();
            let len = if is_large {
                let min = u64::from(shape.large_min);
                rng.range(min, u64::from(shape.large_max).max(min)) as u32
            } else {
                match rng.below(100) {
                    0..=74 => rng.range(8, 256) as u32,
                    75..=91 => rng.range(1 << 10, 64 << 10) as u32,
                    _ => rng.range(100 << 10, 1 << 20) as u32,
                }
            };
            let d = inputs
                .iter()
                .chain(nested.iter())
                .map(|j| depth[*j] + 1)
                .max()
                .unwrap_or(1);
            depth.push(d);
            let salt = rng.next();
            nodes.push(Node {
                keeper,
                inputs,
                nested,
                salt,
                len,
                fail: rng.chance(shape.fail_per_mille),
                indirect: keeper || (rng.chance(200) && shape.puts),
                replicas: if is_large && shape.replicas && salt % 2 == 0 {
                    2
                } else {
                    1
                },
            });
        }
        Dag { seed, nodes }
    }

    /// Each node's answer, in plain Rust: the digest of the bytes it makes,
    /// or the node whose planned failure it ends with.
    pub fn expected(&self) -> Vec<Result<u64, u32>> {
        let mut made: Vec<Result<(u64, u64), u32>> = Vec::with_capacity(self.nodes.len());
        for (i, node) in self.nodes.iter().enumerate() {
            let answer = (|| {
                for j in &node.inputs {
                    made[*j]?;
                }
                for j in &node.nested {
                    made[*j]?;
                }
                if node.fail {
                    return Err(i as u32);
                }
                let h = node
                    .inputs
                    .iter()
                    .chain(node.nested.iter())
                    .fold(node.salt, |h, j| {
                        mix(h, made[*j].map(|(d, _)| d).unwrap_or(0))
                    });
                let bytes = pattern(h, node.len as usize);
                Ok((digest(&bytes), h))
            })();
            made.push(answer);
        }
        made.into_iter().map(|m| m.map(|(d, _)| d)).collect()
    }

    /// The longest line of ref arguments.
    pub fn depth(&self) -> usize {
        let mut depth = vec![0usize; self.nodes.len()];
        for (i, node) in self.nodes.iter().enumerate() {
            depth[i] = node
                .inputs
                .iter()
                .chain(node.nested.iter())
                .map(|j| depth[*j] + 1)
                .max()
                .unwrap_or(1);
        }
        depth.into_iter().max().unwrap_or(0)
    }

    /// Submits every node at once (nothing is awaited): one ref per node.
    pub fn submit(&self, rt: &Runtime, keepers: &[KeeperHandle]) -> Vec<ObjectRef<Payload>> {
        let mut refs: Vec<ObjectRef<Payload>> = Vec::with_capacity(self.nodes.len());
        for (i, node) in self.nodes.iter().enumerate() {
            let plan = Step {
                node: i as u32,
                salt: node.salt,
                len: node.len,
                fail: node.fail,
                indirect: node.indirect,
                nested: node.nested.iter().map(|j| refs[*j].clone()).collect(),
            };
            let r = if node.keeper && !keepers.is_empty() {
                let keeper = keepers[i % keepers.len()].clone();
                via_keeper::remote(rt, plan, keeper)
            } else {
                let a = |k: usize| &refs[node.inputs[k]];
                let options = TaskOptions::default().replicas(node.replicas);
                match node.inputs.len() {
                    0 => step0::options(options).remote(rt, plan),
                    1 => step1::options(options).remote(rt, plan, a(0)),
                    2 => step2::options(options).remote(rt, plan, a(0), a(1)),
                    3 => step3::options(options).remote(rt, plan, a(0), a(1), a(2)),
                    _ => step4::options(options).remote(rt, plan, a(0), a(1), a(2), a(3)),
                }
            };
            refs.push(r);
        }
        refs
    }

    /// Reads every node's answer and compares it with `expected`; the first
    /// difference, said with the seed that replays it.
    pub async fn check(
        &self,
        rt: &Runtime,
        refs: &[ObjectRef<Payload>],
        expected: &[Result<u64, u32>],
    ) -> Result<(), String> {
        for (i, (r, want)) in refs.iter().zip(expected).enumerate() {
            let answer = tokio::time::timeout(std::time::Duration::from_secs(60), rt.get(r)).await;
            let Ok(answer) = answer else {
                return Err(format!("{}\n{}", self.stuck(rt, i), self.stalled(rt, refs)));
            };
            let got = match answer {
                Ok(payload) => {
                    let inner = std::time::Duration::from_secs(60);
                    let Ok(read) = tokio::time::timeout(inner, read(rt, &payload)).await else {
                        let what = match &*payload {
                            Payload::Ref(r) => {
                                let objects = rt.objects().list();
                                let known = objects.iter().find(|o| o.id == r.id()).map(|o| {
                                    format!(
                                        "{} refs={} borrowers={:?} at {:?}",
                                        o.state, o.refs, o.borrowers, o.location
                                    )
                                });
                                format!("{}: {known:?}", r.id())
                            }
                            Payload::Bytes(_) => "bytes".to_owned(),
                        };
                        return Err(format!(
                            "{}\nits inner ref ({what}) was not read within a minute\n{}",
                            self.stuck(rt, i),
                            self.stalled(rt, refs)
                        ));
                    };
                    read.map(Ok).map_err(|e| format!("reading it: {e}"))
                }
                Err(err) => root(&err).map(Err),
            };
            match got {
                Ok(got) => compare(self.seed, i, got, *want)?,
                Err(why) => {
                    return Err(format!(
                        "seed {}: node {i}: expected {want:?}, got an unplanned error: {why}",
                        self.seed
                    ))
                }
            }
        }
        Ok(())
    }
}

impl Dag {
    /// The nodes whose result is still pending here although everything
    /// they read is made: what holds the DAG up.
    fn stalled(&self, rt: &Runtime, refs: &[ObjectRef<Payload>]) -> String {
        let objects: HashMap<troupe::ObjectId, String> = rt
            .objects()
            .list()
            .into_iter()
            .map(|o| (o.id, o.state.to_string()))
            .collect();
        let state = |j: usize| {
            objects
                .get(&refs[j].id())
                .cloned()
                .unwrap_or_else(|| "gone".to_owned())
        };
        let mut pending = 0;
        let mut stalled = Vec::new();
        for (j, node) in self.nodes.iter().enumerate() {
            if state(j) != "pending" {
                continue;
            }
            pending += 1;
            let deps: Vec<String> = node
                .inputs
                .iter()
                .chain(&node.nested)
                .map(|k| format!("{k} {}", state(*k)))
                .collect();
            if node
                .inputs
                .iter()
                .chain(&node.nested)
                .all(|k| state(*k) != "pending")
            {
                stalled.push(format!(
                    "node {j} ({}, {}) reads {deps:?}",
                    if node.keeper { "keeper" } else { "task" },
                    refs[j].id()
                ));
            }
        }
        let count = stalled.len();
        stalled.truncate(20);
        format!("{pending} nodes pending here, {count} of them with everything they read made: {stalled:#?}")
    }

    /// What is known of node `i`, which did not answer within a minute.
    fn stuck(&self, rt: &Runtime, i: usize) -> String {
        let node = &self.nodes[i];
        let unfinished: Vec<String> = rt
            .tasks(&troupe::TaskFilter::default())
            .into_iter()
            .filter(|t| !t.state.is_final())
            .take(12)
            .map(|t| {
                format!(
                    "{} {} {:?} attempt {} on {:?}",
                    t.id, t.function, t.state, t.attempt, t.node
                )
            })
            .collect();
        // Where the unfinished tasks stand, by state and node: a task
        // delegated to a node that died and was never failed shows here.
        let mut by_place = std::collections::BTreeMap::<String, usize>::new();
        let of = |state| troupe::TaskFilter {
            state: Some(state),
            limit: usize::MAX,
            ..troupe::TaskFilter::default()
        };
        let delegated = rt.tasks(&of(troupe::TaskState::Delegated));
        let unplaced = rt.tasks(&of(troupe::TaskState::Unplaced));
        for t in delegated.iter().chain(&unplaced) {
            if !t.state.is_final() {
                *by_place
                    .entry(format!("{:?} on {:?}", t.state, t.node))
                    .or_default() += 1;
            }
        }
        format!(
            "seed {}: node {i} ({node:?}) did not answer within a minute; the driver's unfinished tasks: {unfinished:#?}; by state and node: {by_place:#?}; summary {:?}",
            self.seed,
            rt.task_summary()
        )
    }
}

/// This process's threads, by name and state (Linux).
fn threads() -> String {
    let Ok(dir) = std::fs::read_dir("/proc/self/task") else {
        return "unknown".into();
    };
    let mut out: Vec<String> = dir
        .flatten()
        .filter_map(|t| {
            let stat = std::fs::read_to_string(t.path().join("stat")).ok()?;
            let name = stat.split('(').nth(1)?.split(')').next()?.to_owned();
            let state = stat
                .rsplit(')')
                .next()?
                .split_whitespace()
                .next()?
                .to_owned();
            let wchan = std::fs::read_to_string(t.path().join("wchan")).unwrap_or_default();
            Some(format!("{name} {state} {wchan}"))
        })
        .collect();
    out.sort();
    format!("{out:?}")
}

/// What this node (the driver, the owner of most objects) knows of the
/// objects the nodes' reports say they await.
pub fn awaited_here(rt: &Runtime, reports: &[String]) -> String {
    let objects = rt.objects().list();
    let mut seen = std::collections::BTreeSet::new();
    for report in reports {
        for part in report.split(" awaits ").skip(1) {
            if let Some(id) = part.split(' ').next() {
                seen.insert(id.to_owned());
            }
        }
    }
    let known: Vec<String> = seen
        .iter()
        .map(
            |id| match objects.iter().find(|o| o.id.to_string() == *id) {
                Some(o) => format!(
                    "{} {} refs={} borrowers={:?} at {:?}",
                    o.id, o.state, o.refs, o.borrowers, o.location
                ),
                None => format!("{id}: not in this store"),
            },
        )
        .collect();
    format!(
        "the awaited objects, seen from here: {known:#?}; {}",
        waits(rt)
    )
}

/// What a node is doing: its unfinished tasks, objects and counts (asked
/// of every node when a DAG stalls).
#[troupe::remote]
pub async fn node_report() -> String {
    let Some(rt) = Runtime::current() else {
        return "no runtime".into();
    };
    let tasks: Vec<String> = rt
        .tasks(&troupe::TaskFilter::default())
        .into_iter()
        .filter(|t| !t.state.is_final())
        .take(10)
        .map(|t| {
            format!(
                "{} {} {:?} attempt {}",
                t.id, t.function, t.state, t.attempt
            )
        })
        .collect();
    let objects: Vec<String> = rt
        .objects()
        .list_some(10)
        .into_iter()
        .map(|o| {
            format!(
                "{} {} refs={} borrowers={:?} at {:?}",
                o.id, o.state, o.refs, o.borrowers, o.location
            )
        })
        .collect();
    let waits = waits(&rt);
    let not_waiting: Vec<String> = rt
        .tasks(&troupe::TaskFilter::default())
        .into_iter()
        .filter(|t| t.state == troupe::TaskState::Running && !waits.contains(&t.id.to_string()))
        .map(|t| format!("{} {}", t.id, t.function))
        .collect();
    format!(
        "node {}: {:?}; tasks {tasks:#?}; {} objects {objects:#?}; {waits}; running, not waiting: {not_waiting:#?}; threads {}",
        rt.node_id(),
        rt.task_summary(),
        rt.objects().len(),
        threads()
    )
}

/// Every node's report, each within a few seconds.
pub async fn reports(rt: &Runtime, nodes: &[troupe::NodeId]) -> Vec<String> {
    let mut out = Vec::new();
    for node in nodes {
        let options = TaskOptions::default()
            .num_cpus(0.0)
            .max_retries(0)
            .scheduling_strategy(troupe::SchedulingStrategy::NodeAffinity {
                node: *node,
                soft: false,
            });
        let r = node_report::options(options).remote(rt);
        match tokio::time::timeout(std::time::Duration::from_secs(5), rt.get(&r)).await {
            Ok(Ok(report)) => out.push((*report).clone()),
            Ok(Err(err)) => out.push(format!("node {node}: {err}")),
            Err(_) => out.push(format!("node {node}: no report within 5 s")),
        }
    }
    out
}

fn compare(
    seed: u64,
    i: usize,
    got: Result<u64, u32>,
    want: Result<u64, u32>,
) -> Result<(), String> {
    if got == want {
        Ok(())
    } else {
        Err(format!(
            "seed {seed}: node {i}: expected {want:?}, got {got:?}"
        ))
    }
}

/// The node whose planned failure `err` ends with, or what else it is.
pub fn root(err: &ObjectError) -> Result<u32, String> {
    let Some(task) = err.failure::<TaskError>() else {
        return Err(format!("not a task's failure: {err}"));
    };
    match task.root_cause() {
        TaskError::Failed {
            cause: TaskCause::Error(cause),
            ..
        } => match cause.downcast_ref::<DagError>() {
            Some(DagError::Planned(node)) => Ok(*node),
            Some(other) => Err(other.to_string()),
            None => Err(format!("an error of another type: {cause}")),
        },
        other => Err(other.to_string()),
    }
}

/// The digest of what `payload` holds (its bytes, or the bytes its ref
/// points to).
pub async fn read(rt: &Runtime, payload: &Payload) -> Result<u64, ObjectError> {
    match payload {
        Payload::Bytes(bytes) => Ok(digest(bytes)),
        Payload::Ref(r) => match &*rt.get(r).await? {
            Payload::Bytes(bytes) => Ok(digest(bytes)),
            Payload::Ref(_) => Ok(0),
        },
    }
}

fn read_blocking(rt: &Runtime, payload: &Payload) -> Result<u64, DagError> {
    match payload {
        Payload::Bytes(bytes) => Ok(digest(bytes)),
        Payload::Ref(r) => match &*{
            let _waiting = Awaiting::on("a task, an input's inner ref", r);
            rt.get_blocking(r).map_err(upstream)?
        } {
            Payload::Bytes(bytes) => Ok(digest(bytes)),
            Payload::Ref(_) => Err(DagError::Unplanned("a ref to a ref".into())),
        },
    }
}

/// A read of another node's value failed: its planned failure, passed on.
fn upstream(err: ObjectError) -> DagError {
    match root(&err) {
        Ok(node) => DagError::Planned(node),
        Err(why) => DagError::Unplanned(why),
    }
}

fn runtime() -> Result<Runtime, DagError> {
    Runtime::current().ok_or_else(|| DagError::Unplanned("not inside a runtime".into()))
}

/// A node's body: reads its inputs, then its nested refs, then makes its
/// bytes (or fails on purpose).
fn run(plan: &Step, inputs: &[Payload]) -> Result<Payload, DagError> {
    let rt = runtime()?;
    let mut h = plan.salt;
    for p in inputs {
        h = mix(h, read_blocking(&rt, p)?);
    }
    for r in &plan.nested {
        let p = {
            let _waiting = Awaiting::on("a task, a nested ref", r);
            rt.get_blocking(r).map_err(upstream)?
        };
        h = mix(h, read_blocking(&rt, &p)?);
    }
    if plan.fail {
        return Err(DagError::Planned(plan.node));
    }
    let bytes = pattern(h, plan.len as usize);
    if plan.indirect {
        let r = rt
            .put_blocking(Payload::Bytes(bytes))
            .map_err(|e| DagError::Unplanned(e.to_string()))?;
        Ok(Payload::Ref(r))
    } else {
        Ok(Payload::Bytes(bytes))
    }
}

#[troupe::remote]
pub fn step0(plan: Step) -> Result<Payload, DagError> {
    run(&plan, &[])
}

#[troupe::remote]
pub fn step1(plan: Step, a: Payload) -> Result<Payload, DagError> {
    run(&plan, &[a])
}

#[troupe::remote]
pub fn step2(plan: Step, a: Payload, b: Payload) -> Result<Payload, DagError> {
    run(&plan, &[a, b])
}

#[troupe::remote]
pub fn step3(plan: Step, a: Payload, b: Payload, c: Payload) -> Result<Payload, DagError> {
    run(&plan, &[a, b, c])
}

#[troupe::remote]
pub fn step4(
    plan: Step,
    a: Payload,
    b: Payload,
    c: Payload,
    d: Payload,
) -> Result<Payload, DagError> {
    run(&plan, &[a, b, c, d])
}

/// A node made by a keeper actor: the task holds the actor's handle and
/// calls it; the actor keeps the refs it is given and the one it made.
#[troupe::remote]
pub async fn via_keeper(plan: Step, keeper: KeeperHandle) -> Result<Payload, DagError> {
    // Everything it reads is made before the keeper is asked: a keeper
    // busy waiting for a node that waits for the keeper would never move.
    let rt = runtime()?;
    for r in &plan.nested {
        let _waiting = Awaiting::on("via_keeper, a nested ref", r);
        rt.get(r).await.map_err(upstream)?;
    }
    let _waiting = plan
        .nested
        .first()
        .map(|r| Awaiting::on(&format!("via_keeper, the keeper's step {}", plan.node), r));
    match keeper.step(plan).await {
        Ok(made) => made.map(Payload::Ref),
        Err(err) => Err(DagError::Unplanned(format!("the keeper: {err}"))),
    }
}

/// An actor that makes nodes like a task does, keeping in its state every
/// ref it was given and the ref of what it made (until it is stopped).
#[derive(Default)]
pub struct Keeper {
    held: HashMap<u32, Vec<ObjectRef<Payload>>>,
}

#[troupe::actor]
impl Keeper {
    pub fn new() -> Self {
        Keeper::default()
    }

    pub async fn step(&mut self, plan: Step) -> Result<ObjectRef<Payload>, DagError> {
        let rt = runtime()?;
        let mut h = plan.salt;
        for r in &plan.nested {
            let p = {
                let _waiting = Awaiting::on("the keeper, a nested ref", r);
                rt.get(r).await.map_err(upstream)?
            };
            let d = match &*p {
                Payload::Bytes(bytes) => digest(bytes),
                Payload::Ref(inner) => match &*{
                    let _waiting = Awaiting::on("the keeper, an inner ref", inner);
                    rt.get(inner).await.map_err(upstream)?
                } {
                    Payload::Bytes(bytes) => digest(bytes),
                    Payload::Ref(_) => return Err(DagError::Unplanned("a ref to a ref".into())),
                },
            };
            h = mix(h, d);
        }
        let mut kept = plan.nested.clone();
        if plan.fail {
            self.held.insert(plan.node, kept);
            return Err(DagError::Planned(plan.node));
        }
        let made = rt
            .put(Payload::Bytes(pattern(h, plan.len as usize)))
            .await
            .map_err(|e| DagError::Unplanned(e.to_string()))?;
        kept.push(made.clone());
        self.held.insert(plan.node, kept);
        Ok(made)
    }

    /// Refs it holds.
    pub fn held(&self) -> usize {
        self.held.values().map(Vec::len).sum()
    }
}

/// Keepers on the cluster (as it places them), one per `count`.
pub async fn keepers(rt: &Runtime, count: usize) -> Vec<KeeperHandle> {
    keepers_with(rt, count, ActorOptions::new()).await
}

/// Keepers spawned with `options` (on one node, say), one per `count`.
pub async fn keepers_with(rt: &Runtime, count: usize, options: ActorOptions) -> Vec<KeeperHandle> {
    let mut out = Vec::with_capacity(count);
    for _ in 0..count {
        let keeper = Keeper::remote(rt, options.clone())
            .new()
            .await
            .expect("a keeper spawns on the cluster");
        out.push(keeper);
    }
    out
}

/// What a run of one DAG found.
pub struct Ran {
    pub tasks: usize,
    pub depth: usize,
    pub elapsed: std::time::Duration,
    /// The DAG, and each node's result object (to name what a node made).
    pub dag: Dag,
    pub results: Vec<troupe::ObjectId>,
}

impl Ran {
    /// The nodes whose results `text` names.
    pub fn named_in(&self, text: &str) -> Vec<String> {
        self.results
            .iter()
            .enumerate()
            .filter(|(_, id)| text.contains(&format!("{id} ")))
            .map(|(i, id)| format!("{id}: node {i} {:?}", self.dag.nodes[i]))
            .collect()
    }
}

/// Generates, submits and checks the DAG of `seed`.
pub async fn run_seed(
    rt: &Runtime,
    seed: u64,
    shape: &Shape,
    keepers: &[KeeperHandle],
) -> Result<Ran, String> {
    let dag = Dag::generate(seed, shape);
    let expected = dag.expected();
    let started = std::time::Instant::now();
    let refs = dag.submit(rt, keepers);
    dag.check(rt, &refs, &expected).await?;
    let elapsed = started.elapsed();
    Ok(Ran {
        tasks: dag.nodes.len(),
        depth: dag.depth(),
        elapsed,
        results: refs.iter().map(|r| r.id()).collect(),
        dag,
    })
}
