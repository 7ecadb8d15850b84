//! The store across nodes: borrowers and releases, remote objects fetched
//! through a directory of other stores, nodes that die, and error causes
//! that cross the wire.

use std::sync::Arc;
use std::time::Duration;

use super::*;

#[tokio::test]
async fn borrowers_keep_an_object_alive_until_they_release_or_die() {
    let s = store();
    let peer = crate::NodeId(42);
    let other = crate::NodeId(43);
    let r = s.put(String::from("lent")).await.unwrap();
    let id = r.id();
    s.add_borrower(id, peer).unwrap();
    s.add_borrower(id, other).unwrap();
    s.add_borrower(id, peer).unwrap();
    drop(r);
    assert_eq!(s.len(), 1, "borrowed: still here");
    s.remove_borrower(id, peer, 2);
    assert_eq!(s.borrowers(id), vec![other]);
    s.node_died(other);
    assert_eq!(s.len(), 0, "the last borrower died: freed");
    assert!(s.add_borrower(id, peer).is_err());
}

#[tokio::test]
async fn a_release_that_overtakes_its_registration_frees_nothing_early() {
    let s = store();
    let (sender, receiver) = (crate::NodeId(42), crate::NodeId(43));
    let r = s.put(1u64).await.unwrap();
    let id = r.id();
    s.add_borrower(id, sender).unwrap();
    drop(r);
    // The receiver lets go before the sender's registration of it arrives.
    s.remove_borrower(id, receiver, 1);
    assert_eq!(s.len(), 1, "the sender still holds it");
    s.add_borrower(id, receiver).unwrap();
    assert_eq!(
        s.borrowers(id),
        vec![sender],
        "the receiver's count is back to 0"
    );
    s.remove_borrower(id, sender, 1);
    assert!(s.is_empty(), "nobody holds it: freed");
}

#[tokio::test]
async fn a_producer_here_takes_over_an_id_known_first_as_a_remote_ref() {
    let owner = store();
    let runner = store();
    let peers = Arc::new(Peers::new(vec![owner.clone()]));
    runner.set_directory(peers.clone());
    // The owner mints a result id; a ref to it reaches the runner (inside
    // another task's arguments) before the task that makes it does.
    let id = owner.new_id();
    let bytes = postcard::to_allocvec(&id).unwrap();
    let early = runner.decode::<crate::ObjectRef<u64>>(&bytes).unwrap();
    assert_eq!(runner.list()[0].state, "remote");
    let (made, done) = runner
        .pending_at::<u64>(id)
        .expect("taken over, not refused");
    assert_eq!(made, early);
    assert_eq!(runner.list()[0].state, "pending");
    let reader = {
        let runner = runner.clone();
        let early = early.clone();
        tokio::spawn(async move { runner.get(&early).await })
    };
    done.complete(7).unwrap();
    assert_eq!(*reader.await.unwrap().unwrap(), 7);
    // A retry landing here again finds the value and keeps it; one of
    // another type is refused.
    let (again, retry) = runner.pending_at::<u64>(id).unwrap();
    drop(retry);
    assert_eq!(*runner.get(&again).await.unwrap(), 7);
    assert!(matches!(
        runner.pending_at::<String>(id),
        Err(ObjectError::WrongType { .. })
    ));
    // A failed attempt's entry is pending again for the next attempt.
    let (failed, fails) = runner.pending_at::<u64>(runner.new_id()).unwrap();
    drop(fails);
    assert!(runner.get(&failed).await.is_err());
    let (retried, succeeds) = runner.pending_at::<u64>(failed.id()).unwrap();
    succeeds.complete(9).unwrap();
    assert_eq!(*runner.get(&retried).await.unwrap(), 9);
    assert!(
        peers.fetches() <= 1,
        "at most the fetch begun before the take-over"
    );
}

#[tokio::test]
async fn a_failed_fetch_fails_its_readers_and_the_next_read_fetches_again() {
    let owner = store();
    let reader = store();
    let peers = Arc::new(Peers::new(vec![owner.clone()]));
    peers.fail_next(1);
    reader.set_directory(peers.clone());
    let r = owner.put(5u64).await.unwrap();
    let bytes = postcard::to_allocvec(&r).unwrap();
    let remote = reader.decode::<crate::ObjectRef<u64>>(&bytes).unwrap();
    match reader.get(&remote).await {
        Err(ObjectError::Fetch { .. }) => {}
        other => panic!("expected the fetch's error, got {other:?}"),
    }
    assert_eq!(*reader.get(&remote).await.unwrap(), 5, "fetched again");
    assert_eq!(peers.fetches(), 2);
}

/// A directory over other in-process stores: the seam exercised with real
/// stores on both sides (the cluster's transport replaces the lookup).
pub(crate) struct Peers {
    stores: Vec<ObjectStore>,
    pub(crate) released: std::sync::Mutex<Vec<(crate::ObjectId, crate::NodeId, u32)>>,
    fetches: std::sync::atomic::AtomicUsize,
    /// Fetches still to fail on the way (a dropped connection, say).
    failing: std::sync::atomic::AtomicUsize,
}

impl Peers {
    pub(crate) fn new(stores: Vec<ObjectStore>) -> Self {
        Peers {
            stores,
            released: Default::default(),
            fetches: Default::default(),
            failing: Default::default(),
        }
    }

    fn fail_next(&self, n: usize) {
        self.failing.store(n, Ordering::SeqCst);
    }

    fn fetches(&self) -> usize {
        self.fetches.load(Ordering::SeqCst)
    }
}

impl crate::ObjectDirectory for Peers {
    fn fetch(
        &self,
        id: crate::ObjectId,
        location: Option<crate::NodeId>,
    ) -> futures::future::BoxFuture<'static, Result<crate::Fetched, ObjectError>> {
        self.fetches.fetch_add(1, Ordering::SeqCst);
        let fail = self
            .failing
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
            .is_ok();
        let holder = self
            .stores
            .iter()
            .find(|p| Some(p.node()) == location)
            .cloned();
        Box::pin(async move {
            if fail {
                return Err(ObjectError::Fetch {
                    id,
                    reason: "the connection dropped".into(),
                });
            }
            match holder {
                Some(holder) => {
                    let (bytes, refs) = holder.export(id).await?;
                    let refs = refs.iter().map(|r| r.id()).collect();
                    Ok(crate::Fetched { bytes, refs })
                }
                None => Err(ObjectError::Unknown(id)),
            }
        })
    }

    fn released(&self, id: crate::ObjectId, to: crate::NodeId, times: u32) {
        self.released.lock().unwrap().push((id, to, times));
    }
}

#[tokio::test]
async fn remote_objects_are_fetched_once_and_released_when_dropped() {
    let owner = store();
    let reader = store();
    let peers = Arc::new(Peers::new(vec![owner.clone()]));
    assert!(reader.set_directory(peers.clone()));
    let (pending, done) = owner.pending::<Sample>();
    let blob = owner.put_bytes(b"raw bytes").await.unwrap();
    // As a message carries them: the refs listed, held on arrival.
    let sent = crate::Encoded::of(&(pending.clone(), blob.clone())).unwrap();
    assert_eq!(sent.refs, vec![pending.id(), blob.id()]);
    let mut message: crate::Encoded =
        postcard::from_bytes(&postcard::to_allocvec(&sent).unwrap()).unwrap();
    reader.receive(&mut message);
    let (remote, remote_blob) = reader
        .decode::<(crate::ObjectRef<Sample>, crate::ObjectRef<crate::Blob>)>(&message.bytes)
        .unwrap();
    drop(message);
    assert_eq!(reader.list()[0].state, "remote");
    assert_eq!(reader.credits(pending.id()), 1);
    let readers: Vec<_> = (0..3)
        .map(|_| {
            let reader = reader.clone();
            let remote = remote.clone();
            tokio::spawn(async move { reader.get(&remote).await })
        })
        .collect();
    let sample = Sample {
        name: "far".into(),
        values: vec![1.0, 2.0],
        flags: vec![true],
    };
    done.complete(sample_clone(&sample)).unwrap();
    for r in readers {
        assert_eq!(*r.await.unwrap().unwrap(), sample);
    }
    assert_eq!(&reader.get(&remote_blob).await.unwrap()[..], b"raw bytes");
    assert_eq!(
        peers.fetches(),
        2,
        "one fetch per object, whatever the readers"
    );
    drop((remote, remote_blob));
    let mut released = peers.released.lock().unwrap().clone();
    released.sort();
    let mut expected = vec![
        (pending.id(), owner.node(), 1),
        (blob.id(), owner.node(), 1),
    ];
    expected.sort();
    assert_eq!(released, expected, "the owner hears of both releases");
    assert!(reader.is_empty());
}

#[tokio::test]
async fn a_remote_object_on_a_dead_node_is_lost() {
    let owner = store();
    let reader = store();
    reader.set_directory(Arc::new(Peers::new(vec![])));
    let r = owner.put(5u64).await.unwrap();
    let bytes = postcard::to_allocvec(&r).unwrap();
    let remote = reader.decode::<crate::ObjectRef<u64>>(&bytes).unwrap();
    reader.node_died(owner.node());
    match reader.get(&remote).await {
        Err(ObjectError::Lost { node, .. }) => assert_eq!(node, owner.node()),
        other => panic!("expected Lost, got {other:?}"),
    }
}

#[derive(Debug, thiserror::Error, serde::Serialize, serde::Deserialize)]
#[error("typed failure {code}")]
struct TypedFailure {
    code: u32,
    #[source]
    inner: ObjectError,
}

crate::register_cause!(TypedFailure, "tests::TypedFailure");

#[test]
fn causes_cross_the_wire_typed_with_their_chain() {
    let id = crate::ObjectId {
        node: crate::NodeId(1),
        seq: 2,
    };
    let err = ObjectError::Failed {
        id,
        cause: crate::Cause::new(TypedFailure {
            code: 7,
            inner: ObjectError::Freed(id),
        }),
    };
    let bytes = postcard::to_allocvec(&err).unwrap();
    let back: ObjectError = postcard::from_bytes(&bytes).unwrap();
    let typed = back.failure::<TypedFailure>().expect("decoded as itself");
    assert_eq!(typed.code, 7);
    assert!(matches!(typed.inner, ObjectError::Freed(_)));
    // An unregistered type keeps its messages, source chain included.
    let io = crate::Cause::new(std::io::Error::other("outer"));
    let back: crate::Cause = postcard::from_bytes(&postcard::to_allocvec(&io).unwrap()).unwrap();
    assert_eq!(back.to_string(), "outer");
}

/// A chain of causes any length: a peer's bytes cannot make the decoder
/// (or a drop) recurse without bound, and what is kept says what was left.
#[test]
fn hostile_cause_chains_decode_flat_and_bounded() {
    use crate::{RemoteError, MAX_CAUSE_CHAIN, MAX_TYPED_CAUSE_DEPTH};
    // 200,000 messages, as a peer could send in one frame.
    let messages: Vec<String> = (0..200_000).map(|i| format!("m{i}")).collect();
    let bytes = postcard::to_allocvec(&messages).unwrap();
    let chain: RemoteError = postcard::from_bytes(&bytes).unwrap();
    let kept = chain.messages();
    assert_eq!(kept.len(), MAX_CAUSE_CHAIN);
    assert_eq!(kept[0], "m0");
    assert!(
        kept[MAX_CAUSE_CHAIN - 1].contains("more causes, left out"),
        "{kept:?}"
    );
    // Round trip of a short chain keeps every message.
    let short = RemoteError::from_messages(vec!["a".into(), "b".into()]);
    let back: RemoteError = postcard::from_bytes(&postcard::to_allocvec(&short).unwrap()).unwrap();
    assert_eq!(back, short);

    // Typed causes nested far deeper than the limit: inner levels decode as
    // messages only, and nothing overflows.
    let id = crate::ObjectId {
        node: crate::NodeId(1),
        seq: 2,
    };
    let mut err = ObjectError::Freed(id);
    for code in 0..200 {
        err = ObjectError::Failed {
            id,
            cause: crate::Cause::new(TypedFailure { code, inner: err }),
        };
    }
    let bytes = postcard::to_allocvec(&err).unwrap();
    let back: ObjectError = postcard::from_bytes(&bytes).unwrap();
    let mut typed_levels = 0;
    let mut next = Some(&back);
    while let Some(ObjectError::Failed { cause, .. }) = next {
        match cause.downcast_ref::<TypedFailure>() {
            Some(typed) => {
                typed_levels += 1;
                next = Some(&typed.inner);
            }
            None => break,
        }
    }
    assert_eq!(typed_levels, MAX_TYPED_CAUSE_DEPTH);
}

#[tokio::test]
async fn a_cancelled_put_stops_counting_as_a_waiter() {
    let dir = temp_dir("cancelled-put");
    let s = small_store(64 * 1024, &dir);
    let _guard = s.attach_spiller();
    let held = s.try_put(vec![1u8; 20 * 1024]).unwrap();
    // No spiller runs: the put waits until the timeout drops it.
    let put = tokio::time::timeout(Duration::from_millis(20), s.put(vec![2u8; 50 * 1024])).await;
    assert!(put.is_err(), "the put waited for room");
    assert_eq!(s.inner.room_waiters.load(Ordering::Acquire), 0);
    assert!(
        !s.needs_spill(),
        "no put waits, and memory is under the threshold"
    );
    drop(held);
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn a_fetch_in_flight_from_a_node_that_dies_fails_as_lost_at_once_for_its_owner() {
    let holder = store();
    let owner = store();
    owner.set_directory(Arc::new(Peers::new(vec![holder.clone()])));
    // A result of this node, kept on the holder, which never finishes it:
    // the fetch waits there.
    let id = owner.new_id();
    let (_kept, _never) = holder.pending_at::<u64>(id).unwrap();
    let ours = owner.remote::<u64>(id, Some(holder.node()));
    let reader = owner.clone();
    let read = tokio::spawn(async move { reader.get(&ours).await });
    troupe_test_kit::eventually("the fetch is in flight", || {
        owner.inner.fetching_from.contains_key(&id)
    })
    .await;
    assert_eq!(
        owner.node_died(holder.node()),
        vec![id],
        "lost here, to make again"
    );
    let read = troupe_test_kit::within("the read", read).await.unwrap();
    match read {
        Err(ObjectError::Lost { node, .. }) => assert_eq!(node, holder.node()),
        other => panic!("expected Lost, got {other:?}"),
    }
    assert!(owner.inner.fetching_from.is_empty());
}

#[tokio::test]
async fn a_dead_node_loses_the_results_this_node_kept_there_and_sends_others_to_their_owner() {
    let owner = store();
    let reader = store();
    reader.set_directory(Arc::new(Peers::new(vec![owner.clone()])));
    let forgotten = Arc::new(std::sync::Mutex::new(Vec::new()));
    let seen = forgotten.clone();
    reader.on_forget(Arc::new(move |id| seen.lock().unwrap().push(id)));
    let dead = crate::NodeId(0xdead);
    // A result of this node kept on the dead node, and another node's
    // object last heard of there.
    let ours = reader.remote::<u64>(reader.new_id(), Some(dead));
    let value = owner.put(5u64).await.unwrap();
    let theirs = reader.remote::<u64>(value.id(), Some(dead));

    // Told of its own lost results before any reader can see them fail.
    let told = reader.node_died_and_tell(dead, |own| {
        assert_eq!(own, &[ours.id()][..]);
        assert!(reader.failure(ours.id()).is_none(), "failed before told");
    });
    assert_eq!(told, vec![ours.id()]);
    match reader.get(&ours).await {
        Err(ObjectError::Lost { node, .. }) => assert_eq!(node, dead),
        other => panic!("expected Lost, got {other:?}"),
    }
    assert!(reader.failure(theirs.id()).is_none(), "not lost here");
    assert_eq!(
        reader.location(theirs.id()),
        Some(None),
        "asked of its owner again"
    );

    let why = ObjectError::Lost {
        id: ours.id(),
        node: dead,
        why: "no lineage".into(),
    };
    assert!(reader.replace_failure(ours.id(), why));
    let (pending, _completer) = reader.pending_at::<u64>(reader.new_id()).unwrap();
    assert!(!reader.replace_failure(pending.id(), ObjectError::Unknown(pending.id())));
    let err = reader.get(&ours).await.unwrap_err();
    assert!(err.to_string().ends_with("; no lineage"), "{err}");

    // A copy from a node that has none: still lost, unchanged. One from a
    // node that has it: kept here.
    assert!(reader.fetch_copy(ours.id(), dead).await.is_err());
    assert_eq!(
        reader.failure(ours.id()).map(|e| e.to_string()),
        Some(err.to_string())
    );
    let (copy, completer) = owner.pending_at::<u64>(ours.id()).unwrap();
    completer.complete(7).unwrap();
    reader.fetch_copy(ours.id(), owner.node()).await.unwrap();
    assert_eq!(*reader.get(&ours).await.unwrap(), 7);
    assert!(reader.failure(ours.id()).is_none());
    drop((pending, copy));

    let id = ours.id();
    drop((ours, theirs));
    let told = forgotten.lock().unwrap().clone();
    assert!(told.contains(&id), "told of its own");
    assert!(!told.contains(&value.id()), "not of another node's");
}
