//! The control link's tests: order, bursts, flushing, refusals, caps,
//! backpressure, readiness.

use super::*;
use std::sync::Mutex as StdMutex;
use tokio::io::AsyncWriteExt;
use troupe_test_kit::eventually;

type Got = Arc<StdMutex<Vec<(NodeId, Vec<u8>)>>>;

async fn server(cookie: &[u8]) -> (LinkServer, Got, Arc<StdMutex<Vec<NodeId>>>) {
    let got: Got = Arc::default();
    let ended: Arc<StdMutex<Vec<NodeId>>> = Arc::default();
    let (g, e) = (got.clone(), ended.clone());
    let server = LinkServer::bind(
        "127.0.0.1:0".parse().unwrap(),
        NodeId(2),
        Credentials::cookie(cookie),
        Arc::new(move |from, frame: &[u8]| g.lock().unwrap().push((from, frame.to_vec()))),
        Arc::new(move |from, _, up| {
            if !up {
                e.lock().unwrap().push(from)
            }
        }),
    )
    .await
    .unwrap();
    (server, got, ended)
}

/// A link from node 1 to `to` at `server`, proving `cookie`.
async fn try_connect(
    server: &LinkServer,
    to: NodeId,
    cookie: &[u8],
) -> Result<LinkWriter, LinkError> {
    LinkWriter::connect(
        server.local_addr(),
        NodeId(1),
        to,
        &Credentials::cookie(cookie),
        Box::new(|_| {}),
    )
    .await
}

async fn connect(server: &LinkServer, to: NodeId, cookie: &[u8]) -> LinkWriter {
    try_connect(server, to, cookie).await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn frames_arrive_whole_and_in_order_from_the_proven_sender() {
    let (server, got, ended) = server(b"secret").await;
    let writer = connect(&server, NodeId(2), b"secret").await;
    // A burst (queued, batched) with frames of every size up to the cap.
    let frames: Vec<Vec<u8>> = (0..2000u32)
        .map(|i| {
            let len = if i % 500 == 7 {
                MAX_FRAME_BYTES
            } else {
                (i % 97) as usize + 1
            };
            vec![(i % 251) as u8; len]
        })
        .collect();
    for f in &frames {
        writer.send(f).unwrap();
    }
    eventually("every frame", || got.lock().unwrap().len() == frames.len()).await;
    let got = got.lock().unwrap().clone();
    for (i, (from, bytes)) in got.iter().enumerate() {
        assert_eq!(*from, NodeId(1));
        assert_eq!(bytes, &frames[i], "frame {i}");
    }
    drop(writer);
    eventually("the end is reported", || !ended.lock().unwrap().is_empty()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn frames_sent_one_at_a_time_from_many_tasks_all_arrive() {
    let (server, got, _) = server(b"secret").await;
    let writer = Arc::new(connect(&server, NodeId(2), b"secret").await);
    let senders: Vec<_> = (0..4u8)
        .map(|t| {
            let writer = writer.clone();
            tokio::spawn(async move {
                for i in 0..3000u32 {
                    writer.send(&[t; 8]).unwrap();
                    match i % 7 {
                        0 => tokio::time::sleep(Duration::from_micros(50)).await,
                        1 | 2 => tokio::task::yield_now().await,
                        _ => {}
                    }
                }
            })
        })
        .collect();
    for s in senders {
        s.await.unwrap();
    }
    eventually("every frame", || got.lock().unwrap().len() == 12_000).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lone_frames_bursts_and_partial_writes_keep_their_order() {
    let (server, got, _) = server(b"secret").await;
    let writer = connect(&server, NodeId(2), b"secret").await;
    let quiet = || tokio::time::sleep(BURST_HOLD + Duration::from_millis(2));
    let mut sent: Vec<Vec<u8>> = Vec::new();
    let mut send = |frame: Vec<u8>| {
        writer.send(&frame).unwrap();
        sent.push(frame);
    };
    for round in 0..5u8 {
        // Lone, written by the sender itself.
        send(vec![round; 16]);
        quiet().await;
        // Too large for one write: the rest goes to the writer task,
        // and the small frame right after it queues behind it.
        send(vec![round.wrapping_add(100); MAX_FRAME_BYTES]);
        send(vec![round; 3]);
        quiet().await;
        // A burst.
        for i in 0..200u32 {
            send(vec![round; (i % 50) as usize + 1]);
        }
        quiet().await;
    }
    let expected = sent.len();
    eventually("every frame", || got.lock().unwrap().len() == expected).await;
    let got = got.lock().unwrap().clone();
    for (i, (_, bytes)) in got.iter().enumerate() {
        assert_eq!(bytes, &sent[i], "frame {i}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flushed_resolves_once_what_was_queued_is_written() {
    let (server, got, _) = server(b"secret").await;
    let writer = connect(&server, NodeId(2), b"secret").await;
    // A frame too large for one write, and a burst behind it: queued.
    writer.send(&vec![7u8; MAX_FRAME_BYTES]).unwrap();
    for i in 0..100u8 {
        writer.send(&[i; 10]).unwrap();
    }
    tokio::time::timeout(Duration::from_secs(10), writer.flushed())
        .await
        .expect("flushed within 10 s");
    {
        let state = writer.inner.lock();
        assert!(!state.busy && state.queued.is_empty());
    }
    eventually("every frame", || got.lock().unwrap().len() == 101).await;
    // A closed link is flushed at once.
    writer.abort("test");
    tokio::time::timeout(Duration::from_secs(1), writer.flushed())
        .await
        .expect("at once");
}

/// The server counts a link as up only once the writer says it is
/// ready (its owner stored it and can answer), not when the handshake
/// ends on the server's side.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_link_is_up_once_its_writer_is_ready() {
    let ups = Arc::new(StdMutex::new(Vec::new()));
    let seen = ups.clone();
    let server = LinkServer::bind(
        "127.0.0.1:0".parse().unwrap(),
        NodeId(2),
        Credentials::cookie(b"k"),
        Arc::new(|_, _: &[u8]| {}),
        Arc::new(move |from, _, up| seen.lock().unwrap().push((from, up))),
    )
    .await
    .unwrap();
    let writer = connect(&server, NodeId(2), b"k").await;
    writer.send(b"a frame before ready").unwrap();
    // The frame is read (and the server would have said "up" by now).
    let marker = connect(&server, NodeId(2), b"k").await;
    marker.ready().unwrap();
    eventually("the ready link is up", || ups.lock().unwrap().len() == 1).await;
    assert_eq!(*ups.lock().unwrap(), vec![(NodeId(1), true)]);
    writer.ready().unwrap();
    eventually("both are up", || ups.lock().unwrap().len() == 2).await;
}

#[tokio::test]
async fn a_wrong_cookie_or_another_target_is_refused_and_the_server_keeps_serving() {
    let (server, got, _) = server(b"secret").await;
    let wrong_cookie = try_connect(&server, NodeId(2), b"guess").await.err();
    assert!(
        matches!(
            wrong_cookie,
            Some(LinkError::Handshake {
                source: HandshakeError::WrongCookie,
                ..
            })
        ),
        "{wrong_cookie:?}"
    );
    let wrong_node = try_connect(&server, NodeId(3), b"secret").await.err();
    assert!(
        matches!(
            wrong_node,
            Some(LinkError::Handshake {
                source: HandshakeError::WrongNode { .. },
                ..
            })
        ),
        "{wrong_node:?}"
    );
    // Garbage instead of a proof.
    let mut raw = TcpStream::connect(server.local_addr()).await.unwrap();
    raw.write_all(&handshake::CLIENT_MAGIC).await.unwrap();
    let mut greeting = [0u8; handshake::GREETING_BYTES];
    raw.read_exact(&mut greeting).await.unwrap();
    raw.write_all(&[0xAB; handshake::PROOF_BYTES])
        .await
        .unwrap();
    let mut rest = Vec::new();
    let _ = raw.read_to_end(&mut rest).await; // closed by the server
    assert!(rest.is_empty(), "no answer to a wrong proof");
    let good = connect(&server, NodeId(2), b"secret").await;
    good.send(b"hello").unwrap();
    eventually("the good frame", || !got.lock().unwrap().is_empty()).await;
    assert_eq!(*got.lock().unwrap(), vec![(NodeId(1), b"hello".to_vec())]);
}

#[tokio::test]
async fn an_oversize_frame_closes_the_link() {
    let (server, got, ended) = server(b"k").await;
    let mut raw = TcpStream::connect(server.local_addr()).await.unwrap();
    handshake::connect(&mut raw, Purpose::Link, NodeId(7), b"k", Some(NodeId(2)))
        .await
        .unwrap();
    raw.write_all(&((MAX_FRAME_BYTES as u32) + 1).to_le_bytes())
        .await
        .unwrap();
    eventually("the link ends", || {
        ended.lock().unwrap().contains(&NodeId(7))
    })
    .await;
    assert!(got.lock().unwrap().is_empty());
}

/// A link server for node 2 (cookie `k`) that completes the handshake,
/// then never reads: what a peer that stops reading looks like.
pub(crate) async fn peer_that_never_reads() -> (SocketAddr, tokio::task::JoinHandle<()>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let peer = tokio::spawn(async move {
        let (mut s, _) = listener.accept().await.unwrap();
        handshake::accept(&mut s, Purpose::Link, NodeId(2), b"k")
            .await
            .unwrap();
        tokio::time::sleep(Duration::from_secs(60)).await;
        drop(s);
    });
    (addr, peer)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_that_stops_reading_hits_backpressure_not_unbounded_memory() {
    let (addr, _peer) = peer_that_never_reads().await;
    let w = LinkWriter::connect(
        addr,
        NodeId(1),
        NodeId(2),
        &Credentials::cookie(b"k"),
        Box::new(|_| {}),
    )
    .await
    .unwrap();
    let frame = vec![0u8; MAX_FRAME_BYTES];
    let mut refused = None;
    for i in 0..(MAX_QUEUED_BYTES / MAX_FRAME_BYTES) * 4 {
        if let Err(err) = w.send(&frame) {
            refused = Some((i, err));
            break;
        }
        tokio::task::yield_now().await;
    }
    let (_, err) = refused.expect("sending stops succeeding");
    assert!(matches!(err, LinkError::Backpressure), "{err}");
    assert!(w.inner.lock().queued.len() <= MAX_QUEUED_BYTES);
}
