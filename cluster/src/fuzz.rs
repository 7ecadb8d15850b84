//! Fuzz targets for the crate-private framing: a session's batch of frames
//! (`agent::split_batch`), the handshake both ports open with (each side
//! fed a peer's arbitrary or mutated bytes), and the control link's read
//! loop (a `LinkServer` on loopback fed arbitrary streams after a real
//! handshake). Seeds are in `fuzz/corpus/{batch,handshake_greeting,
//! handshake_proof,link_stream}/`; see `fuzz/README.md`.

use std::sync::{Arc, Mutex};

use hmac::{Hmac, Mac};
use proptest::prelude::*;
use proptest::strategy::ValueTree;
use proptest::test_runner::TestRunner;
use sha2::Sha256;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use troupe_core::NodeId;
use troupe_test_kit::fuzz::{self, Recording};

use crate::agent::split_batch;
use crate::handshake::{self, HandshakeError, Purpose, GREETING_BYTES, PROOF_BYTES};
use crate::link::LinkServer;
use crate::protocol::MAX_FRAME_BYTES;

// Records each thread's largest allocation for every test of this crate
// (per thread: other tests' large buffers do not count here).
#[global_allocator]
static ALLOC: Recording = Recording;

/// Cases per target by default (a few seconds of a debug build).
const CASES: u32 = 256;
const COOKIE: &[u8] = b"the fuzzed cluster's cookie";

fn batch_of(frames: &[Vec<u8>]) -> Vec<u8> {
    let mut out = Vec::new();
    for f in frames {
        out.extend_from_slice(&(f.len() as u32).to_le_bytes());
        out.extend_from_slice(f);
    }
    out
}

/// The frames a reader of `(len: u32 | frame)*` may deliver from `bytes`,
/// in order, stopping at a length over `cap` or one not all there.
fn model_frames(mut bytes: &[u8], cap: usize) -> Vec<&[u8]> {
    let mut out = Vec::new();
    while bytes.len() >= 4 {
        let len = u32::from_le_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]) as usize;
        if len > cap || bytes.len() - 4 < len {
            break;
        }
        out.push(&bytes[4..4 + len]);
        bytes = &bytes[4 + len..];
    }
    out
}

fn frames() -> impl Strategy<Value = Vec<Vec<u8>>> {
    prop::collection::vec(fuzz::bytes(40), 0..6)
}

fn check_batch(bytes: &[u8]) {
    let (got, whole) =
        fuzz::within_allocation(4096 + bytes.len() * 2, "split_batch", || split_batch(bytes));
    assert_eq!(got, model_frames(bytes, usize::MAX));
    let consumed: usize = got.iter().map(|f| 4 + f.len()).sum();
    assert_eq!(whole, consumed == bytes.len());
}

/// The MAC a client proves the cookie with (as `handshake.rs` computes it).
fn client_mac(cookie: &[u8], server: u64, client: u64, nonces: &[u8], purpose: Purpose) -> Vec<u8> {
    let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(cookie).unwrap();
    mac.update(b"troupe-client");
    mac.update(&[purpose as u8]);
    mac.update(&server.to_le_bytes());
    mac.update(&client.to_le_bytes());
    mac.update(nonces);
    mac.finalize().into_bytes().to_vec()
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

/// The server's side fed a client's proof: a valid one for the greeting it
/// sent, changed by `mutate`; the peer hangs up after it. Accepted exactly
/// when the proof's bytes are unchanged.
async fn accept_against(mutate: impl FnOnce(&mut Vec<u8>)) {
    let (mut server, mut peer) = tokio::io::duplex(4096);
    let accepting = tokio::spawn(async move {
        handshake::accept(&mut server, Purpose::Link, NodeId(1), COOKIE).await
    });
    peer.write_all(&handshake::CLIENT_MAGIC).await.unwrap();
    let mut greeting = [0u8; GREETING_BYTES];
    peer.read_exact(&mut greeting).await.unwrap();
    let mut proof = 77u64.to_le_bytes().to_vec();
    proof.extend_from_slice(&[9u8; 16]);
    let mut nonces = greeting[14..].to_vec();
    nonces.extend_from_slice(&[9u8; 16]);
    proof.extend(client_mac(COOKIE, 1, 77, &nonces, Purpose::Link));
    let valid = proof.clone();
    mutate(&mut proof);
    let _ = peer.write_all(&proof).await;
    // Hung up for writing, still reading: an answer finds it there.
    peer.shutdown().await.unwrap();
    let got = accepting.await.unwrap();
    drop(peer);
    let intact = proof.len() >= PROOF_BYTES && proof[..PROOF_BYTES] == valid[..];
    match got {
        Ok(node) => {
            assert!(intact, "a changed proof was accepted");
            assert_eq!(node, NodeId(77));
        }
        Err(HandshakeError::WrongCookie) => {
            assert!(!intact && proof.len() >= PROOF_BYTES, "{proof:02x?}")
        }
        Err(HandshakeError::Io(_)) => assert!(proof.len() < PROOF_BYTES, "{proof:02x?}"),
        Err(other) => panic!("{other}"),
    }
}

/// The client's side fed a server's bytes (greeting, then answer); the
/// peer hangs up after them. Never connected: no bytes prove the cookie
/// without it.
async fn connect_against(bytes: Vec<u8>) {
    let (mut client, mut peer) = tokio::io::duplex(4096);
    let connecting = tokio::spawn(async move {
        handshake::connect(
            &mut client,
            Purpose::Link,
            NodeId(2),
            COOKIE,
            Some(NodeId(1)),
        )
        .await
    });
    let _ = peer.write_all(&bytes).await;
    peer.shutdown().await.unwrap();
    // Drain what the client sends, until it gives up.
    let draining = tokio::spawn(async move {
        let mut sink = Vec::new();
        let _ = peer.read_to_end(&mut sink).await;
    });
    let got = connecting.await.unwrap();
    draining.await.unwrap();
    match got {
        Err(HandshakeError::Timeout) | Ok(_) => panic!("{got:?} from {bytes:02x?}"),
        Err(_) => {}
    }
}

/// A greeting as a server sends it (`server` 1), with the MAC that follows.
fn greeting(purpose: u8, version: u8, server: u64, nonce: [u8; 16], mac: [u8; 32]) -> Vec<u8> {
    let mut g = b"TRHS".to_vec();
    g.extend_from_slice(&[version, purpose]);
    g.extend_from_slice(&server.to_le_bytes());
    g.extend_from_slice(&nonce);
    g.extend_from_slice(&mac);
    g
}

/// A link server on loopback, and what it delivered and ended.
struct Loopback {
    server: LinkServer,
    got: Arc<Mutex<Vec<Vec<u8>>>>,
    ended: tokio::sync::mpsc::UnboundedReceiver<()>,
}

async fn loopback() -> Loopback {
    let got: Arc<Mutex<Vec<Vec<u8>>>> = Arc::default();
    let (tx, ended) = tokio::sync::mpsc::unbounded_channel();
    let g = got.clone();
    let server = LinkServer::bind(
        "127.0.0.1:0".parse().unwrap(),
        NodeId(1),
        crate::tls::Credentials::cookie(COOKIE),
        Arc::new(move |_, frame: &[u8]| g.lock().unwrap().push(frame.to_vec())),
        Arc::new(move |_, _, up| {
            if !up {
                let _ = tx.send(());
            }
        }),
    )
    .await
    .unwrap();
    Loopback { server, got, ended }
}

/// Sends `bytes` on a proven link and hangs up: the server delivers the
/// whole frames before a length over the cap or the end, in order.
async fn stream_to(link: &mut Loopback, bytes: &[u8]) {
    link.got.lock().unwrap().clear();
    let mut raw = tokio::net::TcpStream::connect(link.server.local_addr())
        .await
        .unwrap();
    handshake::connect(&mut raw, Purpose::Link, NodeId(5), COOKIE, Some(NodeId(1)))
        .await
        .unwrap();
    // The server may close first (a length over the cap): that is its answer.
    let _ = raw.write_all(bytes).await;
    let _ = raw.shutdown().await;
    troupe_test_kit::within("the link ends", link.ended.recv())
        .await
        .unwrap();
    let got = link.got.lock().unwrap().clone();
    // An empty frame is the writer's "ready" marker, never delivered.
    let want: Vec<Vec<u8>> = model_frames(bytes, MAX_FRAME_BYTES)
        .into_iter()
        .filter(|frame| !frame.is_empty())
        .map(<[u8]>::to_vec)
        .collect();
    assert_eq!(got, want);
}

/// Valid inputs, the same on every run, for the corpus.
fn seeds() -> Vec<(&'static str, Vec<Vec<u8>>)> {
    let mut runner = TestRunner::deterministic();
    let batches: Vec<Vec<u8>> = (0..24)
        .map(|_| batch_of(&frames().new_tree(&mut runner).unwrap().current()))
        .chain([Vec::new(), batch_of(&[Vec::new()])])
        .collect();
    let mut greetings = Vec::new();
    for i in 0..24u8 {
        let purpose = if i % 4 == 3 { 2 } else { 1 };
        let version = if i % 6 == 5 { 2 } else { 1 };
        let server = if i % 5 == 4 { 9 } else { 1 };
        greetings.push(greeting(
            purpose,
            version,
            server,
            [i; 16],
            [i.wrapping_mul(7); 32],
        ));
    }
    greetings.push(greeting(1, 1, 1, [0; 16], [0; 32])[..GREETING_BYTES].to_vec());
    let proofs: Vec<Vec<u8>> = (0..24u8)
        .map(|i| {
            let mut p = u64::from(i).to_le_bytes().to_vec();
            p.extend_from_slice(&[i; 16]);
            p.extend(client_mac(COOKIE, 1, u64::from(i), &[i; 32], Purpose::Link));
            p
        })
        .collect();
    let streams: Vec<Vec<u8>> = batches
        .iter()
        .take(20)
        .cloned()
        .chain([{
            let mut over = batch_of(&[b"ok".to_vec()]);
            over.extend_from_slice(&((MAX_FRAME_BYTES as u32) + 1).to_le_bytes());
            over
        }])
        .collect();
    vec![
        ("batch", batches),
        ("handshake_greeting", greetings),
        ("handshake_proof", proofs),
        ("link_stream", streams),
    ]
}

#[test]
#[ignore = "writes fuzz/corpus: run it to regenerate the seeds"]
fn write_seed_corpus() {
    for (target, seeds) in seeds() {
        fuzz::write_corpus(target, &seeds);
    }
}

#[test]
fn every_seed_replays_and_the_generated_ones_are_current() {
    for seed in fuzz::corpus("batch") {
        check_batch(&seed);
    }
    let rt = runtime();
    rt.block_on(async {
        for seed in fuzz::corpus("handshake_greeting") {
            connect_against(seed).await;
        }
        for seed in fuzz::corpus("handshake_proof") {
            accept_against(|p| *p = seed.clone()).await;
        }
        let mut link = loopback().await;
        for seed in fuzz::corpus("link_stream") {
            stream_to(&mut link, &seed).await;
        }
    });
    for (target, seeds) in seeds() {
        let on_disk = fuzz::corpus(target);
        for seed in &seeds {
            assert!(on_disk.contains(seed), "{target}: the corpus is stale");
        }
    }
}

#[test]
fn an_intact_proof_is_accepted() {
    // The harness's own check: what the fuzz targets change is valid as is.
    runtime().block_on(accept_against(|_| {}));
}

proptest! {
    #![proptest_config(fuzz::config(CASES))]

    #[test]
    fn fuzz_batch(bytes in fuzz::inputs(fuzz::corpus("batch"), 256)) {
        check_batch(&bytes);
    }

    #[test]
    fn batches_round_trip(frames in frames()) {
        let batch = batch_of(&frames);
        let (got, whole) = split_batch(&batch);
        prop_assert!(whole);
        prop_assert_eq!(got, frames.iter().map(Vec::as_slice).collect::<Vec<_>>());
    }

    #[test]
    fn fuzz_handshake_accept(
        changes in prop::collection::vec(fuzz::mutation(), 0..4),
        replace in prop::option::weighted(0.2, fuzz::bytes(80)),
    ) {
        runtime().block_on(accept_against(|proof| {
            if let Some(bytes) = replace {
                *proof = bytes;
            }
            for change in &changes {
                change.apply(proof);
            }
        }));
    }

    #[test]
    fn fuzz_handshake_connect(bytes in fuzz::inputs(fuzz::corpus("handshake_greeting"), 96)) {
        runtime().block_on(connect_against(bytes));
    }
}

proptest! {
    // Each case opens a TCP connection and proves the cookie: fewer cases.
    #![proptest_config(fuzz::config(CASES / 4))]

    #[test]
    fn fuzz_link_stream(inputs in prop::collection::vec(
        fuzz::inputs(fuzz::corpus("link_stream"), 256), 1..8)
    ) {
        let rt = runtime();
        rt.block_on(async {
            let mut link = loopback().await;
            for bytes in &inputs {
                stream_to(&mut link, bytes).await;
            }
        });
    }
}
