//! Fuzz targets for the data path's wire: the server's request parsing
//! (`read_request`, fed a connection's bytes), the client's reply parsing
//! (a `DataClient` pulling from a fake holder that answers with arbitrary
//! or mutated replies), and a real `DataServer` fed arbitrary requests,
//! which must keep serving. Seeds are in `fuzz/corpus/{data_request,
//! data_reply}/`; see `fuzz/README.md`.

use proptest::prelude::*;
use proptest::strategy::ValueTree;
use proptest::test_runner::TestRunner;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use troupe_objects::{ObjectStore, StoreConfig};
use troupe_test_kit::fuzz;

use super::server::{read_request, RequestError};
use super::*;
use crate::handshake::{self, Purpose};

/// Cases per target by default (a few seconds of a debug build).
const CASES: u32 = 256;
const COOKIE: &[u8] = b"the fuzzed data path's cookie";
/// The pulling store's memory budget: the largest object a reply may
/// announce before the client refuses it unread.
const BUDGET: u64 = 1 << 20;
const ZERO: ObjectId = ObjectId {
    node: NodeId(0),
    seq: 0,
};

fn object_id() -> impl Strategy<Value = ObjectId> {
    (any::<u64>(), any::<u64>()).prop_map(|(n, seq)| ObjectId {
        node: NodeId(n),
        seq,
    })
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

fn limits() -> DataLimits {
    DataLimits {
        io_timeout: Duration::from_secs(5),
        ..DataLimits::default()
    }
}

/// Reads requests from `bytes` as a server would, until one fails or the
/// bytes end: the ids read, and whether it ended cleanly.
async fn requests_in(mut bytes: &[u8]) -> (Vec<ObjectId>, bool) {
    let limits = limits();
    let mut ids = Vec::new();
    loop {
        match read_request(&mut bytes, &limits).await {
            Ok(Some(id)) => ids.push(id),
            Ok(None) => return (ids, true),
            Err(RequestError::Io(_) | RequestError::Malformed(_)) => return (ids, false),
        }
    }
}

fn check_requests(bytes: &[u8]) {
    let cap = limits().max_request_bytes.max(4096);
    let rt = runtime();
    let (ids, clean) =
        fuzz::within_allocation(cap, "read_request", || rt.block_on(requests_in(bytes)));
    // Every id read is a request as a client encodes it, in order.
    let mut rest = bytes;
    for id in &ids {
        let head = &rest[..REQUEST_HEAD];
        assert_eq!(&head[..4], &MAGIC);
        assert_eq!(head[4], VERSION);
        let len = u32::from_le_bytes([head[5], head[6], head[7], head[8]]) as usize;
        let body: Request = postcard::from_bytes(&rest[REQUEST_HEAD..REQUEST_HEAD + len]).unwrap();
        assert_eq!(body.id, *id);
        rest = &rest[REQUEST_HEAD + len..];
    }
    assert_eq!(clean, rest.is_empty());
}

/// What a client must make of a reply (the module's wire, read by hand).
#[derive(Debug, PartialEq)]
enum Expect {
    Object(Vec<u8>, Vec<ObjectId>),
    Remote,
    Protocol,
    TooLarge,
    Io,
}

fn expect(reply: &[u8]) -> Expect {
    let mut at = reply
        .iter()
        .position(|b| *b != STATUS_WAIT)
        .unwrap_or(reply.len());
    let take = |at: &mut usize, n: usize| -> Option<&[u8]> {
        let got = reply.get(*at..*at + n)?;
        *at += n;
        Some(got)
    };
    match reply.get(at) {
        None => Expect::Io,
        Some(&STATUS_OK) => {
            at += 1;
            let Some(head) = take(&mut at, 12) else {
                return Expect::Io;
            };
            let len = u64::from_le_bytes(head[..8].try_into().unwrap());
            let nrefs = u32::from_le_bytes(head[8..].try_into().unwrap());
            if nrefs > MAX_REFS {
                return Expect::Protocol;
            }
            let Some(listed) = take(&mut at, nrefs as usize * 16) else {
                return Expect::Io;
            };
            let refs = listed
                .chunks_exact(16)
                .map(|r| ObjectId {
                    node: NodeId(u64::from_le_bytes(r[..8].try_into().unwrap())),
                    seq: u64::from_le_bytes(r[8..].try_into().unwrap()),
                })
                .collect();
            if len > BUDGET {
                return Expect::TooLarge;
            }
            match take(&mut at, len as usize) {
                Some(bytes) => Expect::Object(bytes.to_vec(), refs),
                None => Expect::Io,
            }
        }
        Some(&STATUS_ERR) => {
            at += 1;
            let Some(len) = take(&mut at, 4) else {
                return Expect::Io;
            };
            let len = u32::from_le_bytes(len.try_into().unwrap());
            if len > MAX_ERROR_BYTES {
                return Expect::Protocol;
            }
            match take(&mut at, len as usize) {
                None => Expect::Io,
                Some(body) if postcard::from_bytes::<ObjectError>(body).is_ok() => Expect::Remote,
                Some(_) => Expect::Protocol,
            }
        }
        Some(_) => Expect::Protocol,
    }
}

/// A holder that proves the cookie, reads one request and answers it with
/// `reply`, then hangs up.
async fn fake_holder(listener: &TcpListener, reply: &[u8]) {
    let (mut stream, _) = listener.accept().await.unwrap();
    handshake::accept(&mut stream, Purpose::Data, NodeId(3), COOKIE)
        .await
        .unwrap();
    let mut head = [0u8; REQUEST_HEAD];
    stream.read_exact(&mut head).await.unwrap();
    let len = u32::from_le_bytes([head[5], head[6], head[7], head[8]]) as usize;
    let mut body = vec![0u8; len];
    stream.read_exact(&mut body).await.unwrap();
    // A client that stopped reading (it refused the reply) may close first.
    let _ = stream.write_all(reply).await;
    let _ = stream.shutdown().await;
}

async fn pull_against(reply: &[u8]) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let store = ObjectStore::with_node(NodeId(4), StoreConfig::with_budget(BUDGET));
    let client = DataClient::new(store, limits(), crate::tls::Credentials::cookie(COOKIE));
    let id = ObjectId {
        node: NodeId(3),
        seq: 1,
    };
    let (_, pulled) = tokio::join!(fake_holder(&listener, reply), client.pull(addr, id));
    let got = match pulled {
        Ok(fetched) => Expect::Object(fetched.bytes.to_vec(), fetched.refs),
        Err(DataError::Remote(_)) => Expect::Remote,
        Err(DataError::Protocol { .. }) => Expect::Protocol,
        Err(DataError::TooLarge { .. }) => Expect::TooLarge,
        Err(DataError::Io { source, .. }) => {
            assert_ne!(source.kind(), io::ErrorKind::TimedOut, "the holder hung up");
            Expect::Io
        }
        Err(other) => panic!("{other}"),
    };
    assert_eq!(got, expect(reply), "reply {reply:02x?}");
}

fn reply_ok(bytes: &[u8], refs: &[ObjectId], waits: usize) -> Vec<u8> {
    let mut r = vec![STATUS_WAIT; waits];
    r.push(STATUS_OK);
    r.extend_from_slice(&(bytes.len() as u64).to_le_bytes());
    r.extend_from_slice(&(refs.len() as u32).to_le_bytes());
    for id in refs {
        r.extend_from_slice(&id.node.0.to_le_bytes());
        r.extend_from_slice(&id.seq.to_le_bytes());
    }
    r.extend_from_slice(bytes);
    r
}

fn reply_err(err: &ObjectError, waits: usize) -> Vec<u8> {
    let body = encode_error(ZERO, err);
    let mut r = vec![STATUS_WAIT; waits];
    r.push(STATUS_ERR);
    r.extend_from_slice(&(body.len() as u32).to_le_bytes());
    r.extend_from_slice(&body);
    r
}

/// Valid requests and replies, the same on every run, for the corpus.
fn seeds() -> Vec<(&'static str, Vec<Vec<u8>>)> {
    let mut runner = TestRunner::deterministic();
    let mut ids = |n: usize| -> Vec<ObjectId> {
        (0..n)
            .map(|_| object_id().new_tree(&mut runner).unwrap().current())
            .collect()
    };
    let mut requests: Vec<Vec<u8>> = ids(20).into_iter().map(encode_request).collect();
    requests.push(ids(4).into_iter().flat_map(encode_request).collect());
    requests.push(encode_request(ZERO));
    let mut replies = Vec::new();
    for (i, id) in ids(12).into_iter().enumerate() {
        let refs: Vec<ObjectId> = (0..i % 3)
            .map(|k| ObjectId {
                seq: k as u64,
                ..id
            })
            .collect();
        replies.push(reply_ok(&vec![i as u8; i * 5], &refs, i % 2));
        replies.push(reply_err(&ObjectError::Unknown(id), i % 3));
    }
    replies.push(reply_err(
        &ObjectError::Fetch {
            id: ZERO,
            reason: "gone".into(),
        },
        0,
    ));
    replies.push(reply_ok(b"", &[], 0));
    vec![("data_request", requests), ("data_reply", replies)]
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
    for seed in fuzz::corpus("data_request") {
        check_requests(&seed);
    }
    let rt = runtime();
    for seed in fuzz::corpus("data_reply") {
        rt.block_on(pull_against(&seed));
    }
    for (target, seeds) in seeds() {
        let on_disk = fuzz::corpus(target);
        for seed in &seeds {
            assert!(on_disk.contains(seed), "{target}: the corpus is stale");
        }
    }
}

#[test]
fn a_reply_announcing_more_than_the_budget_is_refused_unread() {
    // 4 GiB announced, none of it sent: refused at once, nothing allocated.
    let mut reply = vec![STATUS_OK];
    reply.extend_from_slice(&(4u64 << 30).to_le_bytes());
    reply.extend_from_slice(&0u32.to_le_bytes());
    let rt = runtime();
    fuzz::within_allocation(BUDGET as usize, "a huge reply", || {
        rt.block_on(pull_against(&reply))
    });
}

proptest! {
    #![proptest_config(fuzz::config(CASES))]

    #[test]
    fn fuzz_data_request(bytes in fuzz::inputs(fuzz::corpus("data_request"), 64)) {
        check_requests(&bytes);
    }

    #[test]
    fn requests_round_trip(ids in prop::collection::vec(object_id(), 0..5)) {
        let bytes: Vec<u8> = ids.iter().copied().flat_map(encode_request).collect();
        let (got, clean) = runtime().block_on(requests_in(&bytes));
        prop_assert!(clean);
        prop_assert_eq!(got, ids);
    }
}

proptest! {
    // Each case opens a TCP connection and proves the cookie: fewer cases.
    #![proptest_config(fuzz::config(CASES / 4))]

    #[test]
    fn fuzz_data_reply(reply in fuzz::inputs(fuzz::corpus("data_reply"), 128)) {
        // The client allocates what a reply announces within its bounds:
        // refs (MAX_REFS of 16 bytes) and an object within the budget.
        let cap = (MAX_REFS as usize * 16).max(BUDGET as usize) + 4096;
        let rt = runtime();
        fuzz::within_allocation(cap, "a pull", || rt.block_on(pull_against(&reply)));
    }

    #[test]
    fn replies_round_trip(bytes in fuzz::bytes(64), refs in prop::collection::vec(object_id(), 0..4), waits in 0usize..3) {
        let reply = reply_ok(&bytes, &refs, waits);
        prop_assert_eq!(expect(&reply), Expect::Object(bytes, refs));
        runtime().block_on(pull_against(&reply));
    }

    #[test]
    fn a_server_fed_bad_requests_keeps_serving(
        inputs in prop::collection::vec(fuzz::inputs(fuzz::corpus("data_request"), 64), 1..4)
    ) {
        runtime().block_on(async {
            let store = ObjectStore::with_node(NodeId(6), StoreConfig::with_budget(BUDGET));
            let kept = store.put_bytes(b"still here").await.unwrap();
            let server = DataServer::bind("127.0.0.1:0".parse().unwrap(), store, limits(), crate::tls::Credentials::cookie(COOKIE))
                .await
                .unwrap();
            for bytes in &inputs {
                let mut raw = TcpStream::connect(server.local_addr()).await.unwrap();
                handshake::connect(&mut raw, Purpose::Data, NodeId(7), COOKIE, None).await.unwrap();
                let _ = raw.write_all(bytes).await;
                let _ = raw.shutdown().await;
                // It answers what parsed, then closes: never hangs up late.
                let mut rest = Vec::new();
                let _ = troupe_test_kit::within("the server closes", raw.read_to_end(&mut rest)).await;
            }
            let puller = ObjectStore::with_node(NodeId(8), StoreConfig::with_budget(BUDGET));
            let client = DataClient::new(puller, limits(), crate::tls::Credentials::cookie(COOKIE));
            let got = client.pull(server.local_addr(), kept.id()).await.unwrap();
            assert_eq!(&got.bytes[..], b"still here");
        });
    }
}
