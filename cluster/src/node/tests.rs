//! The node's frame handling, driven by a peer joined in memory
//! (`transport/memory.rs`): what each request is answered, which notices
//! are acted on, and what a malformed frame costs (nothing but itself).

use tokio::sync::mpsc;
use troupe_core::remote::RemoteOutcome;
use troupe_core::task::{Returns, TaskArgs, TaskSpec, TraceContext};
use troupe_core::{ActorError, ActorId, Encoded, ObjectId, TaskId, TaskOptions};
use troupe_test_kit::{eventually, within};

use super::*;
use crate::transport::{LinkSetup, Timeouts};

const NODE: NodeId = NodeId(1);
const PEER: NodeId = NodeId(2);
const HEAD: NodeId = NodeId(3);

/// A worker node (`NODE`, whose head is `head`) with a runtime, and a peer
/// (`PEER`) joined to it in memory. Frames the peer receives other than
/// replies come out of `frames`.
struct Harness {
    node: Arc<Shared>,
    peer: Arc<Transport>,
    frames: mpsc::UnboundedReceiver<Frame>,
    rt: Runtime,
}

impl Harness {
    async fn new(head: NodeId) -> Harness {
        let rt = troupe_core::init(Config::default())
            .await
            .expect("a runtime");
        let node = ClusterNode::new(ClusterOptions::worker("127.0.0.1:1")).shared;
        let _ = node.runtime.set(rt.downgrade());
        let _ = node.head.set(head);
        let transport = Transport::new(NODE, Timeouts::default());
        let handler = Arc::downgrade(&node);
        transport.set_link(setup(Arc::new(move |message| {
            if let Some(node) = handler.upgrade() {
                node.handle(message);
            }
        })));
        let _ = node.transport.set(transport.clone());
        tokio::spawn(node.clone().dispatch(Duration::ZERO));

        let peer = Transport::new(PEER, Timeouts::default());
        let (to_test, frames) = mpsc::unbounded_channel();
        let replies = Arc::downgrade(&peer);
        peer.set_link(setup(Arc::new(move |message| {
            if let Inbound::Frame(frame) = message {
                match *frame {
                    Frame::Reply { id, body } => {
                        if let Some(peer) = replies.upgrade() {
                            peer.complete(id, body);
                        }
                    }
                    other => {
                        let _ = to_test.send(other);
                    }
                }
            }
        })));
        Transport::join_in_memory(&transport, &peer);
        Harness {
            node,
            peer,
            frames,
            rt,
        }
    }

    async fn ask(&self, body: Request) -> Reply {
        within("the node's reply", self.peer.request(NODE, body))
            .await
            .expect("a reply")
    }
}

fn setup(inbound: Arc<dyn Fn(Inbound) + Send + Sync>) -> LinkSetup {
    LinkSetup {
        addr: "127.0.0.1:9".parse().expect("an address"),
        cookie: Arc::from(&b"cookie"[..]),
        inbound,
    }
}

fn spec_of(function: &str) -> TaskSpec {
    let id = TaskId { node: PEER, seq: 1 };
    TaskSpec {
        id,
        function: function.to_owned().into(),
        args: TaskArgs::Encoded(Encoded::default()),
        deps: Vec::new(),
        options: TaskOptions::default(),
        owner: PEER,
        attempt: 1,
        results: vec![ObjectId { node: PEER, seq: 1 }],
        returns: Returns::One,
        trace: TraceContext {
            root: id,
            parent: None,
        },
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_task_of_a_function_this_build_lacks_is_refused_not_failed() {
    let h = Harness::new(HEAD).await;
    let reply = h.ask(Request::RunTask(spec_of("no::such::function"))).await;
    assert!(
        matches!(reply, Reply::Task(RemoteOutcome::Refused(_))),
        "{reply:?}"
    );
    h.rt.shutdown().await.expect("shut down");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_to_an_actor_that_is_not_here_answers_that_it_died() {
    let h = Harness::new(HEAD).await;
    let reply = h
        .ask(Request::CallActor {
            actor: ActorId {
                node: NODE,
                seq: 77,
            },
            method: "incr".to_owned(),
            args: Encoded::default(),
        })
        .await;
    assert!(
        matches!(reply, Reply::Actor(Err(ActorError::ActorDied { .. }))),
        "{reply:?}"
    );
    h.rt.shutdown().await.expect("shut down");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_the_head_stops_a_member_and_only_the_head_keeps_the_directory() {
    let h = Harness::new(HEAD).await;
    for request in [Request::Stop, Request::Leave, Request::StopCluster] {
        let reply = h.ask(request).await;
        assert!(matches!(reply, Reply::Refused(_)), "{reply:?}");
    }
    assert!(
        !h.node.is_ended(),
        "a stop from a peer that is not the head"
    );
    h.rt.shutdown().await.expect("shut down");

    // From its head, a stop is answered, then carried out.
    let h = Harness::new(PEER).await;
    assert!(matches!(h.ask(Request::Stop).await, Reply::Ok));
    eventually("the node ends once its answer is out", || h.node.is_ended()).await;
    h.rt.shutdown().await.expect("shut down");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_malformed_frame_is_dropped_and_the_frames_after_it_are_handled() {
    let h = Harness::new(HEAD).await;
    h.peer.send_raw(NODE, &[0xff, 0x01, 0x02]);
    h.peer.send_raw(NODE, &[]);
    assert!(matches!(h.ask(Request::Status).await, Reply::Status(_)));
    h.rt.shutdown().await.expect("shut down");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_probe_for_requests_the_node_does_not_work_on_is_answered_unknown() {
    let mut h = Harness::new(HEAD).await;
    h.peer
        .notify(NODE, Notice::Probe { ids: vec![41, 42] })
        .expect("sent");
    let frame = within("the answer to a probe", h.frames.recv())
        .await
        .expect("a frame");
    assert!(
        matches!(&frame, Frame::Notice { from: NODE, body: Notice::Unknown { ids } } if *ids == [41, 42]),
        "{frame:?}"
    );
    h.rt.shutdown().await.expect("shut down");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_located_object_is_answered_once_it_is_made() {
    let h = Harness::new(HEAD).await;
    let (pending, done) = h.rt.objects().pending::<u64>();
    let id = pending.id();
    let peer = h.peer.clone();
    let locate = tokio::spawn(async move { peer.request(NODE, Request::Locate(id)).await });
    done.complete(5).expect("completed");
    let reply = within("the location", locate)
        .await
        .expect("joined")
        .expect("a reply");
    assert!(matches!(reply, Reply::Location(Ok(_))), "{reply:?}");
    h.rt.shutdown().await.expect("shut down");
}
