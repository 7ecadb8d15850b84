//! The node's frame handling, driven by a peer joined in memory
//! (`transport/memory.rs`): what each request is answered, which notices
//! are acted on, and what a malformed frame costs (nothing but itself).

use tokio::sync::mpsc;
use troupe_core::remote::RemoteOutcome;
use troupe_core::task::{Returns, TaskArgs, TaskSpec, TraceContext};
use troupe_core::{ActorError, ActorId, Encoded, ObjectId, TaskId, TaskOptions};
use troupe_test_kit::{eventually, within};

use super::frames::Assembly;
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
        *write(&node.head) = Some(head);
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
            if let Inbound::Frame { from, frame } = message {
                match *frame {
                    Frame::Reply { id, body } => {
                        if let Some(peer) = replies.upgrade() {
                            peer.complete(from, id, body);
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
        credentials: crate::tls::Credentials::cookie(b"cookie"),
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

fn member(node: NodeId) -> Member {
    Member {
        hello: crate::protocol::Hello {
            protocol: crate::protocol::PROTOCOL_VERSION,
            build_id: 0,
            node,
            name: "forged".to_owned(),
            role: Role::Worker,
            control_addr: "127.0.0.1:1".to_owned(),
            data_addr: "127.0.0.1:1".parse().expect("an address"),
            resources: troupe_core::Resources::cpus(1.0),
            pid: 1,
            metrics: None,
        },
        state: crate::protocol::MemberState::Alive,
        available: troupe_core::Resources::cpus(1.0),
        load: Default::default(),
    }
}

fn directory(epoch: u64, part: u32, parts: u32, members: Vec<Member>) -> Notice {
    Notice::Directory {
        epoch,
        part,
        parts,
        members,
    }
}

#[test]
fn a_directory_in_parts_is_taken_whole_in_order_and_never_half() {
    let ids = |members: &[Member]| members.iter().map(|m| m.hello.node.0).collect::<Vec<_>>();
    let mut slot = None;
    // Three parts, in order: nothing until the last, then all of them.
    assert!(Assembly::add(&mut slot, 1, 0, 3, vec![member(NodeId(1))]).is_none());
    assert!(Assembly::add(&mut slot, 1, 1, 3, vec![member(NodeId(2))]).is_none());
    let whole = Assembly::add(&mut slot, 1, 2, 3, vec![member(NodeId(3))]).expect("whole");
    assert_eq!(ids(&whole), [1, 2, 3]);
    // A part missing: the directory is dropped, and the next one whole.
    assert!(Assembly::add(&mut slot, 2, 0, 3, vec![member(NodeId(1))]).is_none());
    assert!(Assembly::add(&mut slot, 2, 2, 3, vec![member(NodeId(3))]).is_none());
    assert!(Assembly::add(&mut slot, 3, 0, 1, vec![member(NodeId(9))]).is_some());
    // A newer directory replaces an unfinished older one.
    assert!(Assembly::add(&mut slot, 4, 0, 2, vec![member(NodeId(1))]).is_none());
    assert!(Assembly::add(&mut slot, 5, 0, 2, vec![member(NodeId(5))]).is_none());
    assert!(Assembly::add(&mut slot, 4, 1, 2, vec![member(NodeId(2))]).is_none());
    assert!(Assembly::add(&mut slot, 5, 0, 2, vec![member(NodeId(5))]).is_none());
    let whole = Assembly::add(&mut slot, 5, 1, 2, vec![member(NodeId(6))]).expect("whole");
    assert_eq!(ids(&whole), [5, 6]);
    // Nonsense counts are refused.
    assert!(Assembly::add(&mut slot, 6, 0, 0, vec![]).is_none());
    assert!(Assembly::add(&mut slot, 6, 3, 2, vec![]).is_none());
    assert!(Assembly::add(&mut slot, 6, 0, u32::MAX, vec![]).is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frame_claiming_another_sender_than_its_link_is_dropped() {
    let h = Harness::new(HEAD).await;
    // The peer holds the cookie, and claims to be the head: a directory
    // and a stop in the head's name.
    for body in [
        Frame::Notice {
            from: HEAD,
            body: directory(1, 0, 1, vec![member(NodeId(66))]),
        },
        Frame::Request {
            id: 1,
            from: HEAD,
            body: Request::Stop,
        },
    ] {
        h.peer.send_raw(NODE, &body.encode().expect("encodes"));
    }
    // Handled in order: by the time this is answered, both were dropped.
    let Reply::Status(view) = h.ask(Request::Status).await else {
        panic!("a status");
    };
    assert!(view.is_empty(), "a forged directory was taken: {view:?}");
    assert!(!h.node.is_ended());
    // The real head's directory is taken.
    let head = Transport::new(HEAD, Timeouts::default());
    head.set_link(setup(Arc::new(|_| {})));
    Transport::join_in_memory(&head, h.node.transport.get().expect("a transport"));
    head.notify(NODE, directory(1, 0, 1, vec![member(NodeId(66))]))
        .expect("sent");
    // The head's link and the peer's are two connections: wait for it.
    eventually("the head's directory is taken", || {
        read(&h.node.view)
            .iter()
            .any(|m| m.hello.node == NodeId(66))
    })
    .await;
    h.rt.shutdown().await.expect("shut down");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_joins_the_head_only_as_the_node_its_link_proved() {
    // This node is the head here.
    let h = Harness::new(NODE).await;
    *lock(&h.node.directory) = Some(Directory::new(
        member(NODE).hello,
        None,
        Detector::default(),
        Instant::now(),
    ));
    for claimed in [NODE, NodeId(5)] {
        let reply = h.ask(Request::Join(member(claimed).hello)).await;
        assert!(
            matches!(reply, Reply::Refused(_)),
            "as {claimed}: {reply:?}"
        );
    }
    let reply = h.ask(Request::Join(member(PEER).hello)).await;
    assert!(matches!(reply, Reply::Welcome(_)), "{reply:?}");
    h.rt.shutdown().await.expect("shut down");
}

/// A member suspected (its heartbeats came late) and then heard from again
/// is told to the runtime, whose tasks that found no node meanwhile are
/// placed again: before, they waited for a node to join, which in a
/// cluster that lost its other workers never came.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_suspected_member_heard_from_again_is_published_as_recovered() {
    let h = Harness::new(PEER).await;
    let mut events = h.rt.cluster_events();
    let worker = NodeId(77);
    let mut suspect = member(worker);
    suspect.state = MemberState::Suspect;
    let mut epoch = 0;
    let mut send = |members: Vec<Member>| {
        epoch += 1;
        h.peer
            .notify(NODE, directory(epoch, 0, 1, members))
            .expect("sent");
    };
    send(vec![member(PEER), member(worker)]);
    send(vec![member(PEER), suspect]);
    send(vec![member(PEER), member(worker)]);
    let recovered = within("the recovery is published", async {
        loop {
            match events.recv().await {
                Ok(ClusterEvent::NodeRecovered { node }) => return node,
                Ok(_) => continue,
                Err(err) => panic!("events ended: {err}"),
            }
        }
    })
    .await;
    assert_eq!(recovered, worker);
    h.rt.shutdown().await.expect("shut down");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_the_directory_lists_as_dead_is_fenced_its_frames_dropped() {
    // The peer is the head here: its directory declares another node dead.
    let h = Harness::new(PEER).await;
    let mut dead = member(NodeId(66));
    dead.state = MemberState::Dead;
    h.peer
        .notify(NODE, directory(1, 0, 1, vec![member(PEER), dead]))
        .expect("sent");
    let transport = h.node.transport.get().expect("a transport").clone();
    eventually("the dead node is fenced", || {
        transport.is_fenced(NodeId(66))
    })
    .await;
    assert!(
        matches!(
            transport.notify(NodeId(66), Notice::Probe { ids: vec![1] }),
            Err(TransportError::NodeDied(NodeId(66)))
        ),
        "nothing is sent to a fenced node"
    );
    assert!(!transport.is_fenced(PEER) && !h.node.is_ended());

    // Now the head itself is declared dead in a directory some other way
    // would send: a fenced sender is not heard, whatever it says.
    transport.fence(PEER, None);
    let unanswered = tokio::time::timeout(
        Duration::from_millis(300),
        h.peer.request(NODE, Request::Status),
    )
    .await;
    assert!(
        !matches!(unanswered, Ok(Ok(_))),
        "a fenced node's request was answered: {unanswered:?}"
    );
    h.rt.shutdown().await.expect("shut down");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_the_head_fences_is_told_first_and_then_cut_off() {
    // This node is the head: it declares the peer dead.
    let mut h = Harness::new(NODE).await;
    *lock(&h.node.directory) = Some(Directory::new(
        member(NODE).hello,
        None,
        Detector::default(),
        Instant::now(),
    ));
    h.node
        .head_changes(vec![Change::Dead(PEER, "no heartbeat".to_owned())]);
    let told = within("the fenced notice", h.frames.recv())
        .await
        .expect("a frame");
    assert!(
        matches!(&told, Frame::Notice { body: Notice::Fenced { why }, .. } if why == "no heartbeat"),
        "{told:?}"
    );
    assert!(h.node.transport.get().expect("a transport").is_fenced(PEER));
    h.rt.shutdown().await.expect("shut down");

    // A member hearing it from a node that is not its head ignores it; from
    // its head, it leaves the cluster, cut off.
    let h = Harness::new(HEAD).await;
    let fenced = Notice::Fenced {
        why: "forged".to_owned(),
    };
    h.peer.notify(NODE, fenced).expect("sent");
    assert!(matches!(h.ask(Request::Status).await, Reply::Status(_)));
    assert!(!h.node.is_ended(), "a peer that is not the head fenced it");
    h.rt.shutdown().await.expect("shut down");
    let h = Harness::new(PEER).await;
    let fenced = Notice::Fenced {
        why: "stalled".to_owned(),
    };
    h.peer.notify(NODE, fenced).expect("sent");
    eventually("the member is cut off", || h.node.is_ended()).await;
    let node = ClusterNode {
        shared: h.node.clone(),
    };
    assert!(node.was_cut_off());
    assert!(node.ended().await.contains("stalled"));
    h.rt.shutdown().await.expect("shut down");
}
