//! Fuzz targets for the object codec: values (`decode_value`), `Encoded`,
//! `ObjectError`, `Cause` (typed causes nested in bytes), `RemoteError`
//! (a bounded list of messages), and the store's own decoding paths (refs
//! inside values, bytes fetched from another node).
//!
//! Each target feeds its decoder arbitrary bytes, mutations of its seeds
//! (`fuzz/corpus/<target>/`) and splices of two seeds: the decoder returns a
//! value or an error, never panics, and never asks for an allocation much
//! larger than its input. Values generated here round-trip. See
//! `fuzz/README.md` for longer sessions and for regenerating the seeds.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use futures::future::BoxFuture;
use proptest::prelude::*;
use proptest::strategy::ValueTree;
use proptest::test_runner::TestRunner;
use serde::{Deserialize, Serialize};
use troupe_objects::{
    decode_value, encode_value, Blob, Cause, Encoded, Fetched, NodeId, ObjectDirectory,
    ObjectError, ObjectId, ObjectRef, ObjectStore, RemoteError, SpillOp, StoreConfig,
    MAX_CAUSE_CHAIN, MAX_TYPED_CAUSE_DEPTH,
};
use troupe_test_kit::fuzz::{self, Recording};

#[global_allocator]
static ALLOC: Recording = Recording;

/// Cases per target by default: the whole file runs in a few seconds of a
/// debug build.
const CASES: u32 = 256;
/// The largest single allocation a decode of a few KiB may ask for: serde
/// preallocates at most 1 MiB for a sequence, whatever length it claims.
const CAP: usize = 2 << 20;
/// The longest arbitrary input.
const MAX_RANDOM: usize = 1024;

/// A value with most of serde's data model in it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
struct Sample {
    id: u64,
    name: String,
    bytes: Vec<u8>,
    values: Vec<i64>,
    ratio: f64,
    map: BTreeMap<String, u32>,
    shape: Shape,
    flag: Option<bool>,
    letter: char,
    ids: Vec<ObjectId>,
    wide: (u8, i128, Option<String>),
}

impl troupe_objects::GetSize for Sample {}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
enum Shape {
    Unit,
    Pair(i32, String),
    Named { id: ObjectId, tags: Vec<String> },
}

fn object_id() -> impl Strategy<Value = ObjectId> {
    (any::<u64>(), any::<u64>()).prop_map(|(n, seq)| ObjectId {
        node: NodeId(n),
        seq,
    })
}

fn text() -> impl Strategy<Value = String> {
    prop_oneof![
        "[a-z ]{0,12}".prop_map(String::from),
        any::<String>().prop_map(|s| s.chars().take(24).collect()),
    ]
}

fn shape() -> impl Strategy<Value = Shape> {
    prop_oneof![
        Just(Shape::Unit),
        (any::<i32>(), text()).prop_map(|(a, b)| Shape::Pair(a, b)),
        (object_id(), prop::collection::vec(text(), 0..4))
            .prop_map(|(id, tags)| Shape::Named { id, tags }),
    ]
}

fn sample() -> impl Strategy<Value = Sample> {
    (
        (any::<u64>(), text(), fuzz::bytes(32)),
        prop::collection::vec(any::<i64>(), 0..8),
        -1e12f64..1e12,
        prop::collection::btree_map(text(), any::<u32>(), 0..4),
        shape(),
        any::<Option<bool>>(),
        any::<char>(),
        prop::collection::vec(object_id(), 0..4),
        (any::<u8>(), any::<i128>(), prop::option::of(text())),
    )
        .prop_map(
            |((id, name, bytes), values, ratio, map, shape, flag, letter, ids, wide)| Sample {
                id,
                name,
                bytes,
                values,
                ratio,
                map,
                shape,
                flag,
                letter,
                ids,
                wide,
            },
        )
}

fn encoded() -> impl Strategy<Value = Encoded> {
    (fuzz::bytes(64), prop::collection::vec(object_id(), 0..6)).prop_map(|(bytes, refs)| {
        let mut e = Encoded::plain(bytes);
        e.refs = refs;
        e
    })
}

fn messages(max: usize) -> impl Strategy<Value = Vec<String>> {
    prop::collection::vec(text(), 0..=max)
}

/// Causes of every kind the codec knows: registered types (nested inside
/// each other), and a chain of messages.
fn cause() -> impl Strategy<Value = Cause> {
    let leaf = prop_oneof![
        messages(4).prop_map(|m| Cause::new(RemoteError::from_messages(m))),
        object_id().prop_map(|id| Cause::new(ObjectError::Freed(id))),
        text().prop_map(|m| Cause::new(std::io::Error::other(m))),
    ];
    leaf.prop_recursive(4, 8, 1, |inner| {
        (object_id(), inner).prop_map(|(id, cause)| Cause::new(ObjectError::Failed { id, cause }))
    })
}

fn object_error() -> impl Strategy<Value = ObjectError> {
    let id = object_id;
    prop_oneof![
        (any::<u64>(), any::<u64>())
            .prop_map(|(size, budget)| ObjectError::TooLarge { size, budget }),
        (any::<u64>(), any::<u64>(), any::<u64>()).prop_map(|(size, in_memory, budget)| {
            ObjectError::StoreFull {
                size,
                in_memory,
                budget,
            }
        }),
        (id(), text(), text()).prop_map(|(id, e, a)| ObjectError::WrongType {
            id,
            expected: e.into(),
            actual: a.into(),
        }),
        (id(), any::<u64>(), 0u32..1_000_000_000).prop_map(|(id, s, n)| ObjectError::Timeout {
            id,
            after: std::time::Duration::new(s, n),
        }),
        id().prop_map(ObjectError::Freed),
        id().prop_map(ObjectError::Unknown),
        (id(), cause()).prop_map(|(id, cause)| ObjectError::Failed { id, cause }),
        id().prop_map(ObjectError::ProducerDropped),
        (id(), any::<bool>(), text(), text()).prop_map(|(id, s, p, cause)| ObjectError::Spill {
            op: if s {
                SpillOp::Spilling
            } else {
                SpillOp::Restoring
            },
            id,
            path: p.into(),
            cause,
        }),
        (id(), any::<u64>(), text()).prop_map(|(id, n, why)| ObjectError::Lost {
            id,
            node: NodeId(n),
            why,
        }),
        (id(), text()).prop_map(|(id, reason)| ObjectError::Fetch { id, reason }),
        id().prop_map(|id| ObjectError::WouldDeadlock { id }),
    ]
}

/// How many typed `ObjectError::Failed` levels a cause holds, outermost
/// first, and what is left below them.
fn typed_depth(cause: &Cause) -> (usize, Cause) {
    let mut depth = 0;
    let mut at = cause.clone();
    while let Some(ObjectError::Failed { cause, .. }) = at.downcast_ref::<ObjectError>() {
        depth += 1;
        let next = cause.clone();
        at = next;
    }
    (depth, at)
}

/// The messages of an error and its sources.
fn chain(err: &(dyn std::error::Error + 'static)) -> Vec<String> {
    let mut out = Vec::new();
    let mut next = Some(err);
    while let Some(e) = next {
        out.push(e.to_string());
        next = e.source();
    }
    out
}

/// A cause `depth` typed levels deep, built by hand on the wire (as a peer
/// could send it, whatever the sender's own encoder would do): each level
/// is a `CauseRepr` whose typed part is an `ObjectError::Failed` holding
/// the level below.
fn nested_cause_bytes(depth: usize, tag: &str) -> Vec<u8> {
    let mut inner = encode_value(&Cause::new(RemoteError::from_messages(vec![
        "bottom".into()
    ])))
    .expect("encodes");
    for level in 0..depth {
        // ObjectError::Failed is variant 6: its index, the id, the cause.
        let mut failed = vec![6u8];
        failed.extend(
            encode_value(&ObjectId {
                node: NodeId(1),
                seq: level as u64,
            })
            .expect("encodes"),
        );
        failed.extend_from_slice(&inner);
        let repr = (
            Some((tag.to_owned(), failed)),
            vec![format!("level {level}")],
        );
        inner = encode_value(&repr).expect("encodes");
    }
    inner
}

/// Decodes `bytes` as everything this file fuzzes, checking what must
/// hold of whatever decodes.
fn decode_all(bytes: &[u8]) {
    fuzz::within_allocation(CAP, "decoding", || {
        if let Ok(v) = decode_value::<Sample>(bytes) {
            // What decodes re-encodes to a value that decodes the same.
            let again = encode_value(&v).expect("a decoded sample encodes");
            let back: Sample = decode_value(&again).expect("its encoding decodes");
            assert_eq!(format!("{back:?}"), format!("{v:?}"));
        }
        let _ = decode_value::<Vec<u8>>(bytes);
        let _ = decode_value::<Blob>(bytes);
        let _ = decode_value::<String>(bytes);
        if let Ok(e) = decode_value::<Encoded>(bytes) {
            let back: Encoded = decode_value(&encode_value(&e).expect("encodes")).expect("decodes");
            assert_eq!((back.bytes, back.refs), (e.bytes, e.refs));
        }
        if let Ok(err) = decode_value::<ObjectError>(bytes) {
            let _ = (err.to_string(), format!("{err:?}"), err.object());
        }
        if let Ok(r) = decode_value::<RemoteError>(bytes) {
            assert!(r.messages().len() <= MAX_CAUSE_CHAIN, "{r:?}");
        }
        if let Ok(c) = decode_value::<Cause>(bytes) {
            check_cause(&c);
        }
    });
}

/// What holds of any decoded cause: bounded depth and chain, and it shows.
fn check_cause(c: &Cause) {
    let (depth, _) = typed_depth(c);
    assert!(
        depth <= MAX_TYPED_CAUSE_DEPTH as usize,
        "{depth} typed levels"
    );
    let _ = (c.to_string(), format!("{c:?}"), chain(c));
    if let Some(r) = c.downcast_ref::<RemoteError>() {
        assert!(r.messages().len() <= MAX_CAUSE_CHAIN);
    }
}

/// A directory that answers every fetch with the bytes it was given.
struct Canned(Mutex<(Vec<u8>, Vec<ObjectId>)>);

impl ObjectDirectory for Canned {
    fn fetch(
        &self,
        _: ObjectId,
        _: Option<NodeId>,
    ) -> BoxFuture<'static, Result<Fetched, ObjectError>> {
        let (bytes, refs) = self.0.lock().expect("not poisoned").clone();
        Box::pin(async move {
            Ok(Fetched {
                bytes: Blob::from(bytes),
                refs,
            })
        })
    }

    fn released(&self, _: ObjectId, _: NodeId, _: u32) {}
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a runtime")
}

/// The store's paths for bytes from elsewhere: values holding refs, and an
/// object fetched from another node (typed, and as raw bytes).
fn store_paths(rt: &tokio::runtime::Runtime, bytes: &[u8], refs: Vec<ObjectId>) {
    let store = || {
        let store = ObjectStore::with_node(NodeId(1), StoreConfig::with_budget(64 << 20));
        let canned = Arc::new(Canned(Mutex::new((bytes.to_vec(), refs.clone()))));
        store.set_directory(canned);
        store
    };
    let decoding = store();
    fuzz::within_allocation(CAP, "ObjectStore::decode", || {
        if let Ok((held, _)) = decoding.decode::<(Vec<ObjectRef<String>>, Sample)>(bytes) {
            for r in &held {
                assert!(
                    decoding.location(r.id()).is_some(),
                    "a decoded ref is known"
                );
            }
        }
    });
    // A store of its own: the refs decoded above cannot be what it fetches.
    let store = store();
    let remote = |seq| ObjectId {
        node: NodeId(2),
        seq,
    };
    rt.block_on(async {
        let typed = store.remote::<Sample>(remote(1), Some(NodeId(2)));
        match store.get(&typed).await {
            Ok(v) => assert_eq!(Some(&*v), decode_value::<Sample>(bytes).ok().as_ref()),
            Err(ObjectError::Fetch { .. }) => {}
            Err(other) => panic!("a fetched value that does not decode: {other:?}"),
        }
        let raw = store.remote::<Vec<u8>>(remote(2), Some(NodeId(2)));
        let got = store.get(&raw).await.expect("bytes are bytes");
        assert_eq!(&got[..], bytes);
    });
}

/// `n` values of `strategy`, the same on every run.
fn examples<S: Strategy>(runner: &mut TestRunner, strategy: S, n: usize) -> Vec<S::Value> {
    (0..n)
        .map(|_| strategy.new_tree(runner).expect("a value").current())
        .collect()
}

fn encodings<T: Serialize>(values: &[T]) -> Vec<Vec<u8>> {
    values
        .iter()
        .map(|v| encode_value(v).expect("encodes"))
        .collect()
}

/// Valid encodings of interesting values, per target, for the corpus.
fn seeds() -> Vec<(&'static str, Vec<Vec<u8>>)> {
    let mut runner = TestRunner::deterministic();
    let mut value = encodings(&examples(&mut runner, sample(), 24));
    value.push(encode_value("").unwrap());
    value.push(encode_value(&vec![0u8; 300]).unwrap());
    let encoded = encodings(&examples(&mut runner, encoded(), 24));
    let errors = encodings(&examples(&mut runner, object_error(), 32));
    let mut causes = encodings(&examples(&mut runner, cause(), 20));
    for depth in [1, 15, 16, 17, 40] {
        causes.push(nested_cause_bytes(depth, "troupe::ObjectError"));
    }
    causes.push(nested_cause_bytes(3, "troupe::RemoteError"));
    causes.push(nested_cause_bytes(3, "not::Registered"));
    let mut remote: Vec<Vec<u8>> = examples(&mut runner, messages(8), 20)
        .into_iter()
        .map(|m| encode_value(&RemoteError::from_messages(m)).unwrap())
        .collect();
    let long: Vec<String> = (0..100).map(|i| format!("m{i}")).collect();
    remote.push(encode_value(&long).unwrap());
    remote.push(encode_value(&Vec::<String>::new()).unwrap());
    vec![
        ("value", value),
        ("encoded", encoded),
        ("object_error", errors),
        ("cause", causes),
        ("remote_error", remote),
    ]
}

const TARGETS: [&str; 5] = ["value", "encoded", "object_error", "cause", "remote_error"];

/// Regenerates the seed corpus: `cargo test -p troupe-objects --test
/// fuzz_codec -- --ignored write_seed_corpus`.
#[test]
#[ignore = "writes fuzz/corpus: run it to regenerate the seeds"]
fn write_seed_corpus() {
    for (target, seeds) in seeds() {
        fuzz::write_corpus(target, &seeds);
    }
}

#[test]
fn every_seed_replays_and_the_generated_ones_are_current() {
    let rt = runtime();
    for target in TARGETS {
        for seed in fuzz::corpus(target) {
            decode_all(&seed);
            store_paths(&rt, &seed, Vec::new());
        }
    }
    // The corpus decodes as what it was generated from.
    for (target, seeds) in seeds() {
        let on_disk = fuzz::corpus(target);
        for seed in &seeds {
            assert!(
                on_disk.contains(seed),
                "{target}: the corpus is stale (regenerate it)"
            );
        }
    }
}

fn all_seeds() -> Vec<Vec<u8>> {
    TARGETS.iter().flat_map(|t| fuzz::corpus(t)).collect()
}

proptest! {
    #![proptest_config(fuzz::config(CASES))]

    #[test]
    fn fuzz_value(bytes in fuzz::inputs(fuzz::corpus("value"), MAX_RANDOM)) {
        decode_all(&bytes);
    }

    #[test]
    fn fuzz_encoded(bytes in fuzz::inputs(fuzz::corpus("encoded"), MAX_RANDOM)) {
        decode_all(&bytes);
    }

    #[test]
    fn fuzz_object_error(bytes in fuzz::inputs(fuzz::corpus("object_error"), MAX_RANDOM)) {
        decode_all(&bytes);
    }

    #[test]
    fn fuzz_cause(bytes in fuzz::inputs(fuzz::corpus("cause"), MAX_RANDOM)) {
        decode_all(&bytes);
    }

    #[test]
    fn fuzz_remote_error(bytes in fuzz::inputs(fuzz::corpus("remote_error"), MAX_RANDOM)) {
        decode_all(&bytes);
    }

    #[test]
    fn fuzz_store_paths(
        bytes in fuzz::inputs(all_seeds(), MAX_RANDOM),
        refs in prop::collection::vec(object_id(), 0..4),
    ) {
        store_paths(&runtime(), &bytes, refs);
    }

    #[test]
    fn samples_round_trip(v in sample()) {
        let bytes = encode_value(&v).unwrap();
        prop_assert_eq!(decode_value::<Sample>(&bytes).unwrap(), v);
    }

    #[test]
    fn encoded_round_trips(e in encoded()) {
        let back: Encoded = decode_value(&encode_value(&e).unwrap()).unwrap();
        prop_assert_eq!((back.bytes, back.refs), (e.bytes, e.refs));
    }

    #[test]
    fn object_errors_round_trip(err in object_error()) {
        let back: ObjectError = decode_value(&encode_value(&err).unwrap()).unwrap();
        prop_assert_eq!(back.to_string(), err.to_string());
        prop_assert_eq!(back.object(), err.object());
    }

    #[test]
    fn causes_round_trip_with_their_chain(c in cause()) {
        let back: Cause = decode_value(&encode_value(&c).unwrap()).unwrap();
        prop_assert_eq!(chain(&back), chain(&c));
        prop_assert_eq!(typed_depth(&back).0, typed_depth(&c).0);
    }

    #[test]
    fn remote_errors_keep_at_most_the_bound(m in messages(3 * MAX_CAUSE_CHAIN)) {
        // As a peer would send it: a plain list, however long.
        let back: RemoteError = decode_value(&encode_value(&m).unwrap()).unwrap();
        let got = back.messages();
        if m.len() <= MAX_CAUSE_CHAIN {
            let want: Vec<&str> = if m.is_empty() { vec![""] } else { m.iter().map(String::as_str).collect() };
            prop_assert_eq!(got, want);
        } else {
            prop_assert_eq!(got.len(), MAX_CAUSE_CHAIN);
            let kept: Vec<&str> = m[..MAX_CAUSE_CHAIN - 1].iter().map(String::as_str).collect();
            prop_assert_eq!(&got[..MAX_CAUSE_CHAIN - 1], &kept[..]);
            let left_out = m.len() - (MAX_CAUSE_CHAIN - 1);
            prop_assert_eq!(got[MAX_CAUSE_CHAIN - 1], format!("... and {left_out} more causes, left out"));
        }
    }

    #[test]
    fn typed_causes_nest_at_most_the_bound(depth in 0usize..200) {
        let bytes = nested_cause_bytes(depth, "troupe::ObjectError");
        let c: Cause = fuzz::within_allocation(CAP, "a nested cause", || decode_value(&bytes)).unwrap();
        let (typed, below) = typed_depth(&c);
        prop_assert_eq!(typed, depth.min(MAX_TYPED_CAUSE_DEPTH as usize));
        // Past the bound, the level keeps its messages.
        let messages = chain(&below);
        if depth > MAX_TYPED_CAUSE_DEPTH as usize {
            let level = depth - 1 - MAX_TYPED_CAUSE_DEPTH as usize;
            prop_assert_eq!(messages, vec![format!("level {level}")]);
        } else {
            prop_assert_eq!(messages, vec!["bottom".to_owned()]);
        }
    }
}

#[test]
fn a_failed_decode_leaves_the_depth_bound_as_it_was() {
    // Errors at every depth unwind the nesting count: a full-depth cause
    // still decodes fully afterwards.
    let full = nested_cause_bytes(MAX_TYPED_CAUSE_DEPTH as usize, "troupe::ObjectError");
    for cut in (1..full.len()).step_by(7) {
        let _ = decode_value::<Cause>(&full[..cut]);
    }
    let c: Cause = decode_value(&full).unwrap();
    assert_eq!(typed_depth(&c).0, MAX_TYPED_CAUSE_DEPTH as usize);
}

#[test]
fn a_length_claiming_gigabytes_is_refused_without_allocating_them() {
    // A byte string, a list of messages, and a list of refs, each claiming
    // u32::MAX elements that are not there.
    let huge = [0xff, 0xff, 0xff, 0xff, 0x0f];
    fuzz::within_allocation(CAP, "huge lengths", || {
        assert!(decode_value::<Vec<u8>>(&huge).is_err());
        assert!(decode_value::<Blob>(&huge).is_err());
        assert!(decode_value::<RemoteError>(&huge).is_err());
        assert!(decode_value::<Encoded>(&huge).is_err());
        assert!(decode_value::<Vec<ObjectId>>(&huge).is_err());
    });
}
