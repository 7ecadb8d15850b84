//! The data path's tests: round trips, waits, malformed requests,
//! bounds, timeouts, and a throughput check beside raw TCP (ignored).

use std::time::Instant;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinSet;

use super::*;
use crate::handshake::{self, Purpose};
use crate::tls::Credentials;
use troupe_objects::{Blob, NodeId, ObjectStore, StoreConfig};
use troupe_test_kit::eventually_within;

fn store() -> ObjectStore {
    ObjectStore::new(StoreConfig::with_budget(4 << 30))
}

fn any_port() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 0))
}

const COOKIE: &[u8] = b"the cluster's cookie";

async fn serve(store: &ObjectStore, limits: DataLimits) -> DataServer {
    DataServer::bind(
        any_port(),
        store.clone(),
        limits,
        Credentials::cookie(COOKIE),
    )
    .await
    .unwrap()
}

fn client_for(store: ObjectStore, limits: DataLimits) -> DataClient {
    DataClient::new(store, limits, Credentials::cookie(COOKIE))
}

/// A raw connection to `addr` that has proved the cookie as node 9.
async fn proven(addr: SocketAddr) -> TcpStream {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    handshake::connect(&mut stream, Purpose::Data, NodeId(9), COOKIE, None)
        .await
        .unwrap();
    stream
}

fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed) ^ (i >> 13) as u8)
        .collect()
}

#[test]
fn the_handles_are_shareable_across_tasks() {
    fn shareable<T: Send + Sync + 'static>() {}
    fn cloneable<T: Clone>() {}
    shareable::<DataClient>();
    cloneable::<DataClient>();
    shareable::<DataServer>();
    shareable::<DataError>();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn small_and_large_objects_round_trip_with_identical_bytes() {
    let holder = store();
    let server = serve(&holder, DataLimits::default()).await;
    let client = client_for(store(), DataLimits::default());
    let addr = server.local_addr();

    let small = holder.put_bytes(b"hello, node").await.unwrap();
    let got = client.pull_bytes(addr, small.id()).await.unwrap();
    assert_eq!(&got[..], b"hello, node");

    let empty = holder.put_bytes(b"").await.unwrap();
    assert!(client
        .pull_bytes(addr, empty.id())
        .await
        .unwrap()
        .is_empty());

    let bytes = pattern(200_000_000, 7);
    let large = holder.put_bytes(&bytes).await.unwrap();
    let got = client.pull_bytes(addr, large.id()).await.unwrap();
    assert_eq!(got.len(), bytes.len());
    assert!(got[..] == bytes[..], "the 200 MB object's bytes differ");

    // Any other object comes as its encoding.
    let value = holder.put(vec![1u32, 2, 3]).await.unwrap();
    let got = client.pull_bytes(addr, value.id()).await.unwrap();
    assert_eq!(
        &got[..],
        &postcard::to_allocvec(&vec![1u32, 2, 3]).unwrap()[..]
    );

    // One connection served them all, one after another.
    assert_eq!(server.connections_accepted(), 1);
    assert_eq!(client.idle_connections(addr), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_small_pulls_share_a_few_connections() {
    let holder = store();
    let server = serve(&holder, DataLimits::default()).await;
    let limits = DataLimits {
        max_connections_per_peer: 4,
        ..DataLimits::default()
    };
    let client = client_for(store(), limits);
    let addr = server.local_addr();
    let mut refs = Vec::new();
    for i in 0..100u32 {
        refs.push(holder.put_bytes(&i.to_le_bytes()).await.unwrap());
    }
    let mut pulls = JoinSet::new();
    for round in 0..20 {
        for (i, r) in refs.iter().enumerate() {
            let (client, id) = (client.clone(), r.id());
            pulls.spawn(async move {
                let got = client.pull_bytes(addr, id).await.unwrap();
                assert_eq!(&got[..], &(i as u32).to_le_bytes(), "round {round}");
            });
        }
    }
    while let Some(done) = pulls.join_next().await {
        done.unwrap();
    }
    assert!(
        server.connections_accepted() <= 4,
        "{} sockets",
        server.connections_accepted()
    );
    assert!(client.idle_connections(addr) <= 4);
    client.forget(addr);
    assert_eq!(client.idle_connections(addr), 0);
    eventually_within(
        Duration::from_secs(5),
        "the server sees them closed",
        || server.open_connections() == 0,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unknown_object_is_the_holders_error() {
    let holder = store();
    let server = serve(&holder, DataLimits::default()).await;
    let client = client_for(store(), DataLimits::default());
    let id = ObjectId {
        node: NodeId::random(),
        seq: 12,
    };
    match client.pull_bytes(server.local_addr(), id).await {
        Err(DataError::Remote(ObjectError::Unknown(unknown))) => assert_eq!(unknown, id),
        other => panic!("expected Remote(Unknown), got {other:?}"),
    }
    // A failed object's cause crosses too, and the connection is reused.
    let (r, completer) = holder.pending::<Blob>();
    completer.fail(troupe_objects::Cause::new(io::Error::other("disk on fire")));
    match client.pull_bytes(server.local_addr(), r.id()).await {
        Err(DataError::Remote(err @ ObjectError::Failed { .. })) => {
            assert!(err.to_string().contains("disk on fire"), "{err}")
        }
        other => panic!("expected Remote(Failed), got {other:?}"),
    }
    assert_eq!(server.connections_accepted(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pull_of_a_pending_object_waits_until_it_is_complete() {
    let holder = store();
    // A short timeout: the wait outlasts it many times over, kept alive
    // by the holder's WAIT bytes.
    let limits = DataLimits {
        io_timeout: Duration::from_millis(100),
        ..DataLimits::default()
    };
    let server = serve(&holder, limits.clone()).await;
    let client = client_for(store(), limits);
    let (r, completer) = holder.pending::<Blob>();
    let addr = server.local_addr();
    let mut pull = tokio::spawn({
        let client = client.clone();
        async move { client.pull_bytes(addr, r.id()).await }
    });
    let early = tokio::time::timeout(Duration::from_millis(600), &mut pull).await;
    assert!(early.is_err(), "finished before the object was: {early:?}");
    let bytes = pattern(3 << 20, 1);
    completer.complete(Blob::from(bytes.clone())).unwrap();
    let got = tokio::time::timeout(Duration::from_secs(10), pull)
        .await
        .expect("done once the object is")
        .unwrap()
        .unwrap();
    assert!(got[..] == bytes[..]);
}

async fn expect_closed(stream: &mut TcpStream) {
    let mut buf = [0u8; 64];
    let deadline = Duration::from_secs(5);
    match tokio::time::timeout(deadline, stream.read(&mut buf)).await {
        Err(_) => panic!("the server did not close the connection within {deadline:?}"),
        Ok(Ok(0)) => {}
        Ok(Ok(n)) => panic!("the server answered {n} bytes to a bad request"),
        Ok(Err(e)) if e.kind() == io::ErrorKind::ConnectionReset => {}
        Ok(Err(e)) => panic!("unexpected error: {e}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_malformed_request_closes_its_connection_and_others_are_served() {
    let holder = store();
    let server = serve(&holder, DataLimits::default()).await;
    let addr = server.local_addr();
    let client = client_for(store(), DataLimits::default());
    let r = holder.put_bytes(b"still here").await.unwrap();

    let mut bad_frames: Vec<Vec<u8>> = vec![b"GET / HTTP/1.1\r\nHost: x\r\n\r\n".to_vec()];
    // Oversize: a body of 1 MiB announced.
    let mut oversize = MAGIC.to_vec();
    oversize.push(VERSION);
    oversize.extend_from_slice(&(1u32 << 20).to_le_bytes());
    bad_frames.push(oversize);
    // Another version.
    let mut future = encode_request(r.id());
    future[4] = 99;
    bad_frames.push(future);
    // A body that does not decode, and one with trailing bytes.
    let mut garbage = MAGIC.to_vec();
    garbage.push(VERSION);
    garbage.extend_from_slice(&3u32.to_le_bytes());
    garbage.extend_from_slice(&[0xff, 0xff, 0xff]);
    bad_frames.push(garbage);
    let mut trailing = encode_request(r.id());
    let body_len = trailing.len() - REQUEST_HEAD + 1;
    trailing[5..9].copy_from_slice(&(body_len as u32).to_le_bytes());
    trailing.push(0);
    bad_frames.push(trailing);

    // A client in the middle of a pull while the bad ones arrive.
    let mut idle = proven(addr).await;
    for frame in bad_frames {
        let mut raw = proven(addr).await;
        raw.write_all(&frame).await.unwrap();
        expect_closed(&mut raw).await;
        let got = client.pull_bytes(addr, r.id()).await.unwrap();
        assert_eq!(&got[..], b"still here");
    }
    // A good raw request on the connection opened before.
    idle.write_all(&encode_request(r.id())).await.unwrap();
    let mut reply = [0u8; 13 + 10];
    idle.read_exact(&mut reply).await.unwrap();
    assert_eq!(reply[0], STATUS_OK);
    assert_eq!(&reply[9..13], &0u32.to_le_bytes(), "no refs");
    assert_eq!(&reply[13..], b"still here");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_refs_a_value_holds_are_listed_and_the_puller_is_registered_for_them() {
    let holder = store();
    let inner = holder.put(7u64).await.unwrap();
    let outer = holder
        .put(vec![inner.clone(), inner.clone()])
        .await
        .unwrap();
    type Lent = Vec<(NodeId, Vec<ObjectId>, bool)>;
    let lent: Arc<Mutex<Lent>> = Arc::default();
    let seen = lent.clone();
    let server = DataServer::bind_lending(
        any_port(),
        holder.clone(),
        DataLimits::default(),
        Credentials::cookie(COOKIE),
        Arc::new(move |to, refs: &[ObjectId], register| {
            seen.lock().unwrap().push((to, refs.to_vec(), register));
        }),
    )
    .await
    .unwrap();
    let puller = store();
    let client = client_for(puller.clone(), DataLimits::default());
    let fetched = client.pull(server.local_addr(), outer.id()).await.unwrap();
    assert_eq!(fetched.refs, vec![inner.id()], "listed once");
    assert_eq!(
        *lent.lock().unwrap(),
        vec![(puller.node(), vec![inner.id()], true)],
        "the puller is registered before the bytes leave"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nothing_listening_fails_within_seconds() {
    let addr = {
        let listener = TcpListener::bind(any_port()).await.unwrap();
        listener.local_addr().unwrap()
    };
    let client = client_for(store(), DataLimits::default());
    let id = ObjectId {
        node: NodeId::random(),
        seq: 1,
    };
    let result = tokio::time::timeout(Duration::from_secs(6), client.pull_bytes(addr, id))
        .await
        .expect("an error within seconds");
    assert!(
        matches!(result, Err(DataError::Connect { addr: a, .. }) if a == addr),
        "{result:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_that_stops_sending_is_dropped() {
    let listener = TcpListener::bind(any_port()).await.unwrap();
    let addr = listener.local_addr().unwrap();
    // Answers a header of 1 MiB, sends 10 bytes, then nothing.
    let silent = tokio::spawn(async move {
        let (mut stream, _) = listener.accept().await.unwrap();
        handshake::accept(&mut stream, Purpose::Data, NodeId(5), COOKIE)
            .await
            .unwrap();
        let mut request = [0u8; 64];
        let _ = stream.read(&mut request).await.unwrap();
        let mut head = vec![STATUS_OK];
        head.extend_from_slice(&(1u64 << 20).to_le_bytes());
        head.extend_from_slice(&[0u8; 10]);
        stream.write_all(&head).await.unwrap();
        // Held open, silent, until the client gives up.
        let _ = stream.read(&mut request).await;
    });
    let limits = DataLimits {
        io_timeout: Duration::from_millis(300),
        ..DataLimits::default()
    };
    let client = client_for(store(), limits);
    let id = ObjectId {
        node: NodeId::random(),
        seq: 1,
    };
    let result = tokio::time::timeout(Duration::from_secs(5), client.pull_bytes(addr, id))
        .await
        .expect("dropped within seconds");
    match result {
        Err(DataError::Io { source, .. }) => assert_eq!(source.kind(), io::ErrorKind::TimedOut),
        other => panic!("expected a timeout, got {other:?}"),
    }
    assert_eq!(
        client.idle_connections(addr),
        0,
        "a failed connection is not kept"
    );
    assert_eq!(client.in_flight_bytes(), 0);
    silent.await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_reply_is_a_protocol_error() {
    let listener = TcpListener::bind(any_port()).await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let (mut stream, _) = listener.accept().await.unwrap();
        handshake::accept(&mut stream, Purpose::Data, NodeId(5), COOKIE)
            .await
            .unwrap();
        let mut request = [0u8; 64];
        let _ = stream.read(&mut request).await.unwrap();
        stream
            .write_all(b"HTTP/1.1 400 Bad Request\r\n\r\n")
            .await
            .unwrap();
        let _ = stream.read(&mut request).await;
    });
    let client = client_for(store(), DataLimits::default());
    let id = ObjectId {
        node: NodeId::random(),
        seq: 1,
    };
    let result = client.pull_bytes(addr, id).await;
    assert!(
        matches!(result, Err(DataError::Protocol { .. })),
        "{result:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_object_over_the_receivers_budget_is_refused_unread() {
    let holder = store();
    let server = serve(&holder, DataLimits::default()).await;
    let client = client_for(
        ObjectStore::new(StoreConfig::with_budget(1 << 20)),
        DataLimits::default(),
    );
    let r = holder.put_bytes(&pattern(2 << 20, 3)).await.unwrap();
    match client.pull_bytes(server.local_addr(), r.id()).await {
        Err(DataError::TooLarge { len, limit, id, .. }) => {
            assert_eq!((len, limit, id), (2 << 20, 1 << 20, r.id()))
        }
        other => panic!("expected TooLarge, got {other:?}"),
    }
    assert_eq!(client.idle_connections(server.local_addr()), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_pulls_finish_within_the_in_flight_bound() {
    let holder = store();
    let server = serve(&holder, DataLimits::default()).await;
    let limits = DataLimits {
        chunk_bytes: 64 << 10,
        max_in_flight_bytes: 256 << 10,
        max_connections_per_peer: 32,
        ..DataLimits::default()
    };
    let client = client_for(store(), limits);
    let addr = server.local_addr();
    let mut expected = Vec::new();
    for i in 0..32u8 {
        let bytes = pattern((1 << 20) + i as usize * 1000, i);
        let r = holder.put_bytes(&bytes).await.unwrap();
        expected.push((r, bytes));
    }
    let mut pulls = JoinSet::new();
    for (r, bytes) in &expected {
        let (client, id, bytes) = (client.clone(), r.id(), bytes.clone());
        pulls.spawn(async move {
            let got = client.pull_bytes(addr, id).await.unwrap();
            assert!(got[..] == bytes[..], "{id}");
        });
    }
    let all = async {
        while let Some(done) = pulls.join_next().await {
            done.unwrap();
        }
    };
    tokio::time::timeout(Duration::from_secs(60), all)
        .await
        .expect("all pulls finish");
    let peak = client.peak_in_flight_bytes();
    assert!(peak > 0 && peak <= 256 << 10, "peak {peak}");
    assert_eq!(client.in_flight_bytes(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pooled_connection_the_server_closed_is_replaced() {
    let holder = store();
    let server = serve(
        &holder,
        DataLimits {
            idle_timeout: Duration::from_millis(50),
            ..DataLimits::default()
        },
    )
    .await;
    // The client thinks its idle connections live much longer.
    let client = client_for(store(), DataLimits::default());
    let addr = server.local_addr();
    let r = holder.put_bytes(b"again").await.unwrap();
    assert_eq!(
        &client.pull_bytes(addr, r.id()).await.unwrap()[..],
        b"again"
    );
    assert_eq!(client.idle_connections(addr), 1);
    eventually_within(
        Duration::from_secs(5),
        "the server closes the idle one",
        || server.open_connections() == 0,
    )
    .await;
    assert_eq!(
        &client.pull_bytes(addr, r.id()).await.unwrap()[..],
        b"again"
    );
    assert_eq!(server.connections_accepted(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_shut_down_serves_no_more() {
    let holder = store();
    let server = serve(&holder, DataLimits::default()).await;
    let client = client_for(store(), DataLimits::default());
    let addr = server.local_addr();
    let r = holder.put_bytes(b"x").await.unwrap();
    client.pull_bytes(addr, r.id()).await.unwrap();
    server.shutdown();
    eventually_within(Duration::from_secs(5), "its connections are closed", || {
        server.open_connections() == 0
    })
    .await;
    let result = client.pull_bytes(addr, r.id()).await;
    assert!(result.is_err(), "{result:?}");
    drop(server);
    let result = client.pull_bytes(addr, r.id()).await;
    assert!(
        matches!(result, Err(DataError::Connect { .. })),
        "{result:?}"
    );
}

/// Throughput on loopback: a 1 GB pull beside a plain TCP copy of the
/// same bytes (one request byte per round, the same chunks, a receive
/// buffer reused across rounds), rounds interleaved, best of 3:
/// `cargo test --release -- --ignored --nocapture throughput`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore]
async fn throughput_of_a_1gb_pull_beside_raw_tcp() {
    const LEN: usize = 1 << 30;
    const ROUNDS: usize = 3;
    let holder = store();
    let r = holder.put_bytes(&pattern(LEN, 5)).await.unwrap();
    let (source, _) = holder.export(r.id()).await.unwrap();
    let chunk = DataLimits::default().chunk_bytes;

    let listener = TcpListener::bind(any_port()).await.unwrap();
    let raw_addr = listener.local_addr().unwrap();
    let sender = tokio::spawn({
        let source = source.clone();
        async move {
            let (mut stream, _) = listener.accept().await.unwrap();
            stream.set_nodelay(true).unwrap();
            let mut ask = [0u8; 1];
            while stream.read_exact(&mut ask).await.is_ok() {
                for piece in source.chunks(chunk) {
                    stream.write_all(piece).await.unwrap();
                }
            }
        }
    });
    let mut raw_stream = TcpStream::connect(raw_addr).await.unwrap();
    raw_stream.set_nodelay(true).unwrap();
    let mut sink = vec![0u8; LEN];

    let server = serve(&holder, DataLimits::default()).await;
    let client = client_for(store(), DataLimits::default());
    let (mut raw, mut pull) = (Vec::new(), Vec::new());
    for _ in 0..ROUNDS {
        let started = Instant::now();
        raw_stream.write_all(&[1]).await.unwrap();
        for piece in sink.chunks_mut(chunk) {
            raw_stream.read_exact(piece).await.unwrap();
        }
        raw.push(LEN as f64 / started.elapsed().as_secs_f64() / 1e9);

        let started = Instant::now();
        let got = client
            .pull_bytes(server.local_addr(), r.id())
            .await
            .unwrap();
        pull.push(LEN as f64 / started.elapsed().as_secs_f64() / 1e9);
        assert_eq!(got.len(), LEN);
    }
    assert!(sink[..] == source[..]);
    drop(raw_stream);
    sender.await.unwrap();
    let best = |v: &[f64]| v.iter().cloned().fold(0.0, f64::max);
    println!("raw TCP copy: {raw:.2?} GB/s (best {:.2})", best(&raw));
    println!("pull:         {pull:.2?} GB/s (best {:.2})", best(&pull));
    println!("pull / raw:   {:.2}", best(&pull) / best(&raw));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_members_are_served_and_a_wrong_cookie_is_refused_clearly() {
    let holder = store();
    let server = serve(&holder, DataLimits::default()).await;
    let addr = server.local_addr();
    let secret = holder.put_bytes(b"members only").await.unwrap();

    // A raw request with no handshake: the server's greeting, then the
    // connection ends without a byte of the object. The server may reset the
    // connection before the bogus proof is written, so a failed write is a
    // refusal too.
    let mut raw = TcpStream::connect(addr).await.unwrap();
    let _ = raw.write_all(&encode_request(secret.id())).await;
    let _ = raw.write_all(&[0u8; handshake::PROOF_BYTES]).await;
    let mut got = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(10), raw.read_to_end(&mut got)).await;
    assert!(read.is_ok(), "closed within the handshake's deadline");
    let object = b"members only";
    assert!(
        !got.windows(object.len()).any(|w| w == object),
        "an unauthenticated client read the object"
    );

    // A client with another cookie: refused, with an error that says so.
    let outsider = DataClient::new(
        store(),
        DataLimits::default(),
        Credentials::cookie(b"guess"),
    );
    let err = outsider.pull_bytes(addr, secret.id()).await.unwrap_err();
    assert!(matches!(err, DataError::Refused { .. }), "{err}");

    // A server with another cookie cannot pass for a holder either.
    let impostor = DataServer::bind(
        any_port(),
        store(),
        DataLimits::default(),
        Credentials::cookie(b"guess"),
    )
    .await
    .unwrap();
    let member = client_for(store(), DataLimits::default());
    let err = member
        .pull_bytes(impostor.local_addr(), secret.id())
        .await
        .unwrap_err();
    assert!(matches!(err, DataError::Refused { .. }), "{err}");

    // Members are served all along.
    let got = member.pull_bytes(addr, secret.id()).await.unwrap();
    assert_eq!(&got[..], object);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_connections_that_never_prove_the_cookie_take_no_members_slot() {
    let holder = store();
    let limits = DataLimits {
        max_connections: 2,
        ..DataLimits::default()
    };
    let server = serve(&holder, limits).await;
    let addr = server.local_addr();
    let r = holder.put_bytes(b"for members").await.unwrap();
    // Twenty clients connect and say nothing.
    let mut idle = Vec::new();
    for _ in 0..20 {
        idle.push(TcpStream::connect(addr).await.unwrap());
    }
    let client = client_for(store(), DataLimits::default());
    let got = tokio::time::timeout(Duration::from_secs(4), client.pull_bytes(addr, r.id()))
        .await
        // Within the handshake's deadline: the idle ones are still there.
        .expect("served without waiting for the idle ones to time out")
        .unwrap();
    assert_eq!(&got[..], b"for members");
    assert_eq!(server.open_connections(), 1, "only the member's");
}
