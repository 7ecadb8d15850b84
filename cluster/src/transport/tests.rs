//! The transport's tests: pending requests, peers going and coming,
//! links that cannot take a frame, deadlines and probes.

use super::*;
use crate::tls::Credentials;

fn waiting(
    node: u64,
    patience: Patience,
) -> (Waiting, oneshot::Receiver<Result<Reply, TransportError>>) {
    let (tx, rx) = oneshot::channel();
    (
        Waiting {
            node: NodeId(node),
            reply: Completion::Channel(tx),
            sent: Instant::now(),
            patience,
            probed: None,
        },
        rx,
    )
}

#[tokio::test]
async fn a_peer_going_down_fails_its_waiting_requests() {
    let t = Transport::new(NodeId(1), Timeouts::default());
    let (w, rx) = waiting(2, Patience::WhileAlive);
    t.pending.insert(7, w);
    let (w2, rx2) = waiting(3, Patience::WhileAlive);
    t.pending.insert(8, w2);
    t.peer_down(NodeId(2));
    assert!(matches!(
        rx.await,
        Ok(Err(TransportError::NodeDied(NodeId(2))))
    ));
    assert_eq!(t.pending.len(), 1, "another peer's request still waits");
    // Only the node asked may answer.
    t.complete(NodeId(4), 8, Reply::Ok);
    assert_eq!(t.pending.len(), 1, "a reply from another node is dropped");
    t.complete(NodeId(3), 8, Reply::Ok);
    assert!(matches!(rx2.await, Ok(Ok(Reply::Ok))));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_change_handler_may_change_the_links_again() {
    // As the head does: a peer's end makes it broadcast the directory,
    // and a write that fails there ends another link (another change)
    // from inside the handler. Told under a lock, it deadlocked.
    let t = Transport::new(NodeId(1), Timeouts::default());
    let seen = Arc::new(std::sync::Mutex::new(Vec::new()));
    let (weak, log) = (Arc::downgrade(&t), seen.clone());
    t.set_link(LinkSetup {
        addr: "127.0.0.1:9".parse().unwrap(),
        credentials: Credentials::cookie(b"k"),
        inbound: Arc::new(move |event| {
            if let Inbound::PeerDown(node) = event {
                log.lock().unwrap().push(node);
                if let (Some(t), NodeId(2)) = (weak.upgrade(), node) {
                    t.update(NodeId(3), |_| ((), true));
                }
            }
        }),
    });
    t.update(NodeId(2), |_| ((), true));
    let deadline = Instant::now() + Duration::from_secs(10);
    while seen.lock().unwrap().len() < 2 {
        assert!(
            Instant::now() < deadline,
            "the second change was never told"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert_eq!(*seen.lock().unwrap(), vec![NodeId(2), NodeId(3)]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frame_that_cannot_be_queued_closes_the_link_instead_of_vanishing() {
    let (addr, _peer) = crate::link::tests::peer_that_never_reads().await;
    let t = Transport::new(NodeId(1), Timeouts::default());
    let weak = Arc::downgrade(&t);
    let writer = LinkWriter::connect(
        addr,
        NodeId(1),
        NodeId(2),
        &Credentials::cookie(b"k"),
        Box::new(move |err| {
            if let Some(t) = weak.upgrade() {
                t.outbound_lost(NodeId(2), 7, &err.to_string());
            }
        }),
    )
    .await
    .unwrap();
    t.peers.insert(
        NodeId(2),
        Peer {
            outbound: Some(Arc::new(Outbound {
                writer: Writer::Link(writer),
                serial: 7,
            })),
            inbound: Some(1),
            ..Peer::default()
        },
    );
    assert!(t.connected(NodeId(2)));
    let big = || Notice::Probe {
        ids: (0..100_000u64).map(|i| i << 40).collect(),
    };
    let mut refused = false;
    for _ in 0..10_000 {
        match t.notify(NodeId(2), big()) {
            Ok(()) => tokio::task::yield_now().await,
            Err(_) => {
                refused = true;
                break;
            }
        }
    }
    assert!(refused, "sending stops succeeding");
    assert!(
        !t.connected(NodeId(2)),
        "the link is closed, not left up with frames lost"
    );
}

#[tokio::test]
async fn no_session_is_an_error_after_the_timeout() {
    let t = Transport::new(
        NodeId(1),
        Timeouts {
            connect: Duration::from_millis(20),
            request: Duration::from_secs(1),
        },
    );
    let err = t.request(NodeId(9), Request::Status).await.unwrap_err();
    assert!(matches!(err, TransportError::NoSession(NodeId(9))));
}

#[tokio::test]
async fn a_control_request_past_its_deadline_times_out() {
    let t = Transport::new(NodeId(1), Timeouts::default());
    let (w, rx) = waiting(2, Patience::Within(Duration::from_millis(10)));
    t.pending.insert(7, w);
    let (w2, mut rx2) = waiting(2, Patience::Within(Duration::from_secs(60)));
    t.pending.insert(8, w2);
    t.watch_pending(Instant::now() + Duration::from_millis(20));
    assert!(matches!(
        rx.await,
        Ok(Err(TransportError::Timeout(NodeId(2), _)))
    ));
    assert!(rx2.try_recv().is_err(), "the other one still waits");
}

#[tokio::test]
async fn a_request_its_peer_no_longer_knows_is_lost_and_others_wait_on() {
    let t = Transport::new(NodeId(1), Timeouts::default());
    let (w, rx) = waiting(2, Patience::WhileAlive);
    t.pending.insert(7, w);
    let (w2, mut rx2) = waiting(2, Patience::WhileAlive);
    t.pending.insert(8, w2);
    // Probed after PROBE_AFTER (no link here: the probe is not sent).
    t.watch_pending(Instant::now() + PROBE_AFTER);
    assert!(t.pending.get(&7).is_some_and(|w| w.probed.is_some()));
    // Another node's answer about these ids changes nothing.
    t.unknown_to(NodeId(3), &[7]);
    t.unknown_to(NodeId(2), &[7]);
    assert!(matches!(rx.await, Ok(Err(TransportError::Lost(NodeId(2))))));
    assert!(rx2.try_recv().is_err(), "still worked on: still waiting");
    // The responder's side: what it works on is not unknown.
    t.working_on(NodeId(5), 1);
    assert_eq!(t.not_working_on(NodeId(5), vec![1, 2]), vec![2]);
    t.reply(NodeId(5), 1, Reply::Ok);
    assert_eq!(t.not_working_on(NodeId(5), vec![1]), vec![1]);
}

/// `t` connected to node 2 by a link whose frames go to the returned
/// receiver and never arrive: a silent, half-open connection.
fn silent_link_to_2(t: &Transport) -> mpsc::UnboundedReceiver<Vec<u8>> {
    let (tx, rx) = mpsc::unbounded_channel();
    t.update(NodeId(2), |peer| {
        peer.outbound = Some(Arc::new(Outbound {
            writer: Writer::Memory(tx),
            serial: 1,
        }));
        peer.inbound = Some(1);
        ((), false)
    });
    rx
}

#[tokio::test]
async fn a_probe_unanswered_fails_what_waits_on_that_peer_and_an_answer_clears_it() {
    let t = Transport::new(NodeId(1), Timeouts::default());
    let mut wire = silent_link_to_2(&t);
    let (w, rx) = waiting(2, Patience::WhileAlive);
    t.pending.insert(7, w);
    let (w3, mut rx3) = waiting(3, Patience::WhileAlive);
    t.pending.insert(8, w3);
    let start = Instant::now(); // not before they were sent

    // Probed; answered (with no ids: it works on all of them) in time.
    t.watch_pending(start + PROBE_AFTER);
    let probe = Frame::decode(&wire.recv().await.unwrap()).unwrap();
    assert!(matches!(
        probe,
        Frame::Notice { body: Notice::Probe { ref ids }, .. } if ids == &[7]
    ));
    t.unknown_to(NodeId(2), &[]);

    // Probed again; this time nothing comes back.
    let probed_again = start + PROBE_AFTER * 2;
    t.watch_pending(probed_again);
    assert!(wire.recv().await.is_some(), "a second probe went out");
    t.watch_pending(probed_again + PROBE_ANSWER_WITHIN - Duration::from_millis(1));
    assert!(t.pending.contains_key(&7), "not yet past the limit");
    t.watch_pending(probed_again + PROBE_ANSWER_WITHIN);
    let answer = rx.await;
    assert!(
        matches!(
            answer,
            Ok(Err(TransportError::Unanswered(NodeId(2), waited))) if waited == PROBE_ANSWER_WITHIN
        ),
        "{answer:?}"
    );
    assert!(
        rx3.try_recv().is_err(),
        "another peer's request still waits"
    );
    assert!(
        t.peers
            .get(&NodeId(2))
            .is_some_and(|p| p.unanswered_probe.is_none()),
        "counted once: the redialed link starts afresh"
    );
}

#[tokio::test]
async fn a_probe_left_on_a_link_that_ended_does_not_close_the_next_one() {
    let t = Transport::new(NodeId(1), Timeouts::default());
    let _old = silent_link_to_2(&t);
    let (w, _rx) = waiting(2, Patience::WhileAlive);
    t.pending.insert(7, w);
    let start = Instant::now();
    t.watch_pending(start + PROBE_AFTER);
    assert!(t
        .peers
        .get(&NodeId(2))
        .is_some_and(|p| p.unanswered_probe.is_some()));
    // The link ends (its waiting request fails), and a new one comes up.
    t.update(NodeId(2), |peer| {
        peer.outbound = None;
        ((), false)
    });
    let _new = silent_link_to_2(&t);
    let (w, mut rx) = waiting(2, Patience::WhileAlive);
    t.pending.insert(8, w);
    t.watch_pending(start + PROBE_AFTER + PROBE_ANSWER_WITHIN);
    assert!(rx.try_recv().is_err(), "the new link's request still waits");
}
