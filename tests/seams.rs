//! The seams a cluster plugs into, exercised by two real runtimes in one
//! process: a placement hook that sends work to the other node, an executor
//! that runs it there by name, and an object directory that fetches and
//! releases across them. The cluster crate replaces these in-process links
//! with a network; what each runtime does with them is what is tested here.

mod common;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use common::{eventually, within};
use futures::future::BoxFuture;
use troupe::prelude::*;
use troupe::remote::{
    ClusterEvent, Placement, PlacementDecision, PlacementRequest, RemoteExecutor, RemoteOutcome,
};
use troupe::{ActorId, ClusterSeams, NodeId, ObjectId};

/// Where the task ran.
#[troupe::remote]
fn node_of(x: u64) -> (u64, NodeId) {
    let node = troupe::task::current().expect("in a task").node;
    (x * 2, node)
}

/// A result too large to travel inline.
#[troupe::remote]
fn large(n: usize) -> Vec<u8> {
    (0..n).map(|i| (i % 251) as u8).collect()
}

/// Reads an object the caller made, on whichever node it runs.
#[troupe::remote]
fn sum_of(values: Vec<u64>) -> u64 {
    values.iter().sum()
}

#[troupe::remote]
async fn slow(ms: u64) -> u64 {
    tokio::time::sleep(Duration::from_millis(ms)).await;
    ms
}

/// A link to the other runtime, set once both exist.
#[derive(Default, Clone)]
struct Peer(Arc<OnceLock<Runtime>>);

impl Peer {
    fn rt(&self) -> Option<Runtime> {
        self.0.get().cloned()
    }
}

/// Sends what needs the "special" resource to the peer, unless it is dead;
/// holds what needs "later" until `later` is true.
struct ToPeer {
    peer: Peer,
    dead: Arc<AtomicBool>,
    later: Arc<AtomicBool>,
}

impl Placement for ToPeer {
    fn place(&self, request: &PlacementRequest<'_>) -> PlacementDecision {
        let needs = &request.needs.custom;
        if needs.contains_key("later") && !self.later.load(Ordering::SeqCst) {
            return PlacementDecision::Wait;
        }
        // A task pinned to a node that left.
        if needs.contains_key("gone") {
            return PlacementDecision::NodeGone(NodeId(42));
        }
        match self.peer.rt() {
            Some(peer) if !self.dead.load(Ordering::SeqCst) => {
                PlacementDecision::Node(peer.node_id())
            }
            _ if request.feasible_here => PlacementDecision::Here,
            _ => PlacementDecision::Infeasible,
        }
    }
}

/// Runs specs and calls on the peer.
struct OnPeer(Peer);

impl RemoteExecutor for OnPeer {
    fn run_task(
        &self,
        node: NodeId,
        spec: troupe::task::TaskSpec,
    ) -> BoxFuture<'static, RemoteOutcome> {
        let peer = self.0.rt();
        Box::pin(async move {
            match peer.filter(|p| p.node_id() == node) {
                Some(peer) => peer.run_spec(spec).await,
                None => RemoteOutcome::Failed(troupe::error::Failure::NodeDied(node)),
            }
        })
    }

    fn call_actor(
        &self,
        _node: NodeId,
        actor: ActorId,
        method: &str,
        args: troupe::Encoded,
    ) -> BoxFuture<'static, Result<troupe::Encoded, ActorError>> {
        match self.0.rt() {
            Some(peer) => peer.call_by_name(actor, method, &args.bytes),
            None => Box::pin(async { unreachable!("the peer exists") }),
        }
    }
}

/// Fetches from, and releases to, the peer.
struct PeerObjects {
    peer: Peer,
    me: Peer,
}

impl troupe::ObjectDirectory for PeerObjects {
    fn fetch(
        &self,
        id: ObjectId,
        _location: Option<NodeId>,
    ) -> BoxFuture<'static, Result<troupe::Fetched, ObjectError>> {
        let peer = self.peer.rt();
        Box::pin(async move {
            match peer {
                Some(peer) => {
                    let (bytes, refs) = peer.objects().export(id).await?;
                    let refs = refs.iter().map(|r| r.id()).collect();
                    Ok(troupe::Fetched { bytes, refs })
                }
                None => Err(ObjectError::Unknown(id)),
            }
        })
    }

    fn released(&self, id: ObjectId, to: NodeId, times: u32) {
        if let (Some(peer), Some(me)) = (self.peer.rt(), self.me.rt()) {
            if peer.node_id() == to {
                peer.objects().remove_borrower(id, me.node_id(), times);
            }
        }
    }
}

struct Pair {
    a: Runtime,
    b: Runtime,
    dead: Arc<AtomicBool>,
    later: Arc<AtomicBool>,
}

/// Node A (1 CPU) sends what needs "special" to node B (which has it).
async fn pair() -> Pair {
    let (a_link, b_link) = (Peer::default(), Peer::default());
    let dead = Arc::new(AtomicBool::new(false));
    let later = Arc::new(AtomicBool::new(false));
    let b = troupe::init(
        Config::default()
            .name("b")
            .resources(Resources::cpus(2.0).with("special", 1.0).with("later", 1.0))
            .cluster(ClusterSeams {
                objects: Some(Arc::new(PeerObjects {
                    peer: a_link.clone(),
                    me: b_link.clone(),
                })),
                ..ClusterSeams::default()
            }),
    )
    .await
    .unwrap();
    let _ = b_link.0.set(b.clone());
    let a = troupe::init(
        Config::default()
            .name("a")
            .resources(Resources::cpus(1.0))
            .cluster(ClusterSeams {
                placement: Some(Arc::new(ToPeer {
                    peer: b_link.clone(),
                    dead: dead.clone(),
                    later: later.clone(),
                })),
                executor: Some(Arc::new(OnPeer(b_link.clone()))),
                objects: Some(Arc::new(PeerObjects {
                    peer: b_link.clone(),
                    me: a_link.clone(),
                })),
                ..ClusterSeams::default()
            }),
    )
    .await
    .unwrap();
    let _ = a_link.0.set(a.clone());
    Pair { a, b, dead, later }
}

fn special() -> TaskOptions {
    TaskOptions::default()
        .resource("special", 1.0)
        .max_retries(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_task_that_does_not_fit_here_runs_on_the_node_the_hook_picks() {
    let Pair { a, b, .. } = pair().await;
    // Fits here: runs here, the hook is not asked.
    let (value, node) = *within("local", a.get(&node_of::remote(&a, 1)))
        .await
        .unwrap();
    assert_eq!((value, node), (2, a.node_id()));
    // Needs "special": runs on B, and A reads the (inline) result.
    let r = node_of::options(special()).remote(&a, 21);
    let (value, node) = *within("remote", a.get(&r)).await.unwrap();
    assert_eq!((value, node), (42, b.node_id()));
    // The delegation ends as the result lands: the count follows it.
    eventually("the delegation ended", || a.task_summary().delegated == 0).await;
    a.shutdown().await.unwrap();
    b.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_large_result_stays_where_it_was_made_until_its_owner_lets_go() {
    let Pair { a, b, .. } = pair().await;
    let n = 300 * 1024; // over the inline limit
    let r = large::options(special()).remote(&a, n);
    let bytes = within("fetched", a.get(&r)).await.unwrap();
    assert_eq!(bytes.len(), n);
    assert!(bytes.iter().enumerate().all(|(i, b)| *b == (i % 251) as u8));
    // B keeps it for A (a borrower) until A drops its last ref.
    assert_eq!(b.objects().borrowers(r.id()), vec![a.node_id()]);
    drop((r, bytes));
    eventually("released on the node that made it", || {
        b.objects().is_empty()
    })
    .await;
    a.shutdown().await.unwrap();
    b.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refs_in_arguments_are_fetched_from_their_owner() {
    let Pair { a, b, .. } = pair().await;
    let values = a.put((1..=100u64).collect::<Vec<_>>()).await.unwrap();
    let r = sum_of::options(special()).remote(&a, &values);
    assert_eq!(
        *within("sum on B of A's object", a.get(&r)).await.unwrap(),
        5050
    );
    a.shutdown().await.unwrap();
    b.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_task_on_a_node_that_dies_fails_with_the_node_named() {
    let Pair { a, b, dead, .. } = pair().await;
    let r = slow::options(special()).remote(&a, 10_000);
    eventually("delegated", || a.task_summary().delegated == 1).await;
    dead.store(true, Ordering::SeqCst);
    a.publish(ClusterEvent::NodeDown {
        node: b.node_id(),
        reason: "test".to_owned(),
    });
    let err = within("the lost task answers", a.get(&r))
        .await
        .unwrap_err();
    match err.failure::<TaskError>() {
        Some(TaskError::Failed {
            cause: troupe::TaskCause::NodeDied(node),
            ..
        }) => assert_eq!(*node, b.node_id()),
        other => panic!("expected a node death, got {other:?}"),
    }
    a.shutdown().await.unwrap();
    b.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_task_no_node_fits_waits_until_one_joins() {
    let Pair { a, b, later, .. } = pair().await;
    let r = node_of::options(TaskOptions::default().resource("later", 1.0)).remote(&a, 4);
    eventually("unplaced", || a.task_summary().unplaced == 1).await;
    assert!(a.get_timeout(&r, Duration::from_millis(50)).await.is_err());
    later.store(true, Ordering::SeqCst);
    a.publish(ClusterEvent::NodeUp {
        node: b.node_id(),
        resources: Resources::cpus(2.0).with("later", 1.0),
    });
    let (value, node) = *within("placed once a node fits", a.get(&r)).await.unwrap();
    assert_eq!((value, node), (8, b.node_id()));
    a.shutdown().await.unwrap();
    b.shutdown().await.unwrap();
}

/// A task the hook says must run on a node that is gone fails naming that
/// node, not as a task that asked for too much.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_task_pinned_to_a_node_that_is_gone_fails_naming_it() {
    let Pair { a, b, .. } = pair().await;
    let pinned = TaskOptions::default().resource("gone", 1.0).max_retries(0);
    let err = within("a failure", a.get(&node_of::options(pinned).remote(&a, 1)))
        .await
        .unwrap_err();
    assert!(
        matches!(
            err.failure::<TaskError>(),
            Some(TaskError::NodeGone {
                node: NodeId(42),
                ..
            })
        ),
        "{err}"
    );
    a.shutdown().await.unwrap();
    b.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_hook_a_task_that_does_not_fit_is_infeasible() {
    let rt = troupe::init(Config::default().resources(Resources::cpus(1.0)))
        .await
        .unwrap();
    let r = node_of::options(special()).remote(&rt, 1);
    let err = rt.get(&r).await.unwrap_err();
    assert!(
        matches!(
            err.failure::<TaskError>(),
            Some(TaskError::Infeasible { .. })
        ),
        "{err}"
    );
    rt.shutdown().await.unwrap();
}

/// Sends every task first to a node that refuses it (another build), then,
/// once that node is excluded, to B.
struct ToRefuserFirst {
    refuser: NodeId,
    peer: Peer,
    asked: Arc<std::sync::Mutex<Vec<Vec<NodeId>>>>,
}

impl Placement for ToRefuserFirst {
    fn place(&self, request: &PlacementRequest<'_>) -> PlacementDecision {
        self.asked.lock().unwrap().push(request.excluded.to_vec());
        if !request.excluded.contains(&self.refuser) {
            return PlacementDecision::Node(self.refuser);
        }
        match self.peer.rt() {
            Some(peer) => PlacementDecision::Node(peer.node_id()),
            None => PlacementDecision::Wait,
        }
    }
}

/// The refuser answers `Refused`; B runs the spec.
struct RefuserThenPeer {
    refuser: NodeId,
    peer: Peer,
}

impl RemoteExecutor for RefuserThenPeer {
    fn run_task(
        &self,
        node: NodeId,
        spec: troupe::task::TaskSpec,
    ) -> BoxFuture<'static, RemoteOutcome> {
        let peer = self.peer.rt();
        let refuser = self.refuser;
        Box::pin(async move {
            if node == refuser {
                return RemoteOutcome::Refused(format!("no function {} here", spec.function));
            }
            match peer {
                Some(peer) => peer.run_spec(spec).await,
                None => RemoteOutcome::Failed(troupe::error::Failure::NodeDied(node)),
            }
        })
    }

    fn call_actor(
        &self,
        _node: NodeId,
        _actor: ActorId,
        _method: &str,
        _args: troupe::Encoded,
    ) -> BoxFuture<'static, Result<troupe::Encoded, ActorError>> {
        Box::pin(async { unreachable!("no actors here") })
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_task_a_node_refuses_is_placed_elsewhere_without_spending_an_attempt() {
    let b_link = Peer::default();
    let b = troupe::init(Config::default().name("b").resources(Resources::cpus(1.0)))
        .await
        .unwrap();
    let _ = b_link.0.set(b.clone());
    let refuser = NodeId(0xdead);
    let asked = Arc::new(std::sync::Mutex::new(Vec::new()));
    let a = troupe::init(
        Config::default()
            .name("a")
            .resources(Resources::default())
            .cluster(ClusterSeams {
                placement: Some(Arc::new(ToRefuserFirst {
                    refuser,
                    peer: b_link.clone(),
                    asked: asked.clone(),
                })),
                executor: Some(Arc::new(RefuserThenPeer {
                    refuser,
                    peer: b_link.clone(),
                })),
                ..ClusterSeams::default()
            }),
    )
    .await
    .unwrap();
    // No retries at all: a refusal must not count as an attempt.
    let r = node_of::options(TaskOptions::default().max_retries(0)).remote(&a, 4);
    let (value, node) = *within("placed elsewhere", a.get(&r)).await.unwrap();
    assert_eq!((value, node), (8, b.node_id()));
    assert_eq!(
        *asked.lock().unwrap(),
        vec![vec![], vec![refuser]],
        "asked again, with the refuser excluded"
    );
    a.shutdown().await.unwrap();
    b.shutdown().await.unwrap();
}
