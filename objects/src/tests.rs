use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use crate::{GetSize, ObjectError, ObjectStore, StoreConfig};

pub(crate) fn store() -> ObjectStore {
    ObjectStore::new(StoreConfig::default())
}

fn small_store(budget: u64, dir: &std::path::Path) -> ObjectStore {
    ObjectStore::new(StoreConfig {
        memory_budget: budget,
        spill_threshold: 0.5,
        spill_dir: dir.to_path_buf(),
        buffer_pool: budget,
    })
}

fn temp_dir(name: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("troupe-test-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    dir
}

#[tokio::test]
async fn exporting_a_byte_vector_shares_its_buffer_and_a_typed_value_is_encoded() {
    let s = store();
    let r = s.put(vec![7u8; 1 << 20]).await.unwrap();
    let held = s.get(&r).await.unwrap();
    let (exported, refs) = s.export(r.id()).await.unwrap();
    assert!(refs.is_empty());
    assert_eq!(
        exported.as_ptr(),
        held.as_ptr(),
        "sent from the value's own buffer"
    );
    assert_eq!(exported.len(), 1 << 20);
    // The copy happens only when the vector is wanted while still shared.
    assert_eq!(exported.clone().into_vec(), *held);
    let typed = s.put((1u32, "two".to_owned())).await.unwrap();
    let (bytes, _) = s.export(typed.id()).await.unwrap();
    assert_eq!(
        postcard::from_bytes::<(u32, String)>(&bytes).unwrap(),
        (1, "two".to_owned())
    );
    // A value holding refs lists them, each once.
    let holder = s.put(vec![typed.clone(), typed.clone()]).await.unwrap();
    let (_, refs) = s.export(holder.id()).await.unwrap();
    assert_eq!(
        refs.iter().map(|r| r.id()).collect::<Vec<_>>(),
        vec![typed.id()]
    );
}

#[tokio::test]
async fn reads_share_the_value_without_copying() {
    let s = store();
    let r = s.put(vec![7u8; 1 << 20]).await.unwrap();
    let a = s.get(&r).await.unwrap();
    let b = s.get(&r).await.unwrap();
    assert!(Arc::ptr_eq(&a, &b));
    assert_eq!(
        s.in_memory_bytes(),
        (1 << 20) as u64 + std::mem::size_of::<Vec<u8>>() as u64
    );
}

#[tokio::test]
async fn the_last_ref_frees_the_object() {
    let s = store();
    let r = s.put(String::from("hello")).await.unwrap();
    let r2 = r.clone();
    drop(r);
    assert_eq!(*s.get(&r2).await.unwrap(), "hello");
    assert_eq!(s.len(), 1);
    drop(r2);
    assert_eq!(s.len(), 0);
    assert_eq!(s.in_memory_bytes(), 0);
}

#[tokio::test]
async fn a_value_read_outlives_its_object() {
    let s = store();
    let r = s.put(vec![1u64, 2, 3]).await.unwrap();
    let v = s.get(&r).await.unwrap();
    drop(r);
    assert_eq!(*v, vec![1, 2, 3]);
}

#[tokio::test]
async fn wrong_type_is_a_typed_error() {
    let s = store();
    let r = s.put(5u32).await.unwrap();
    let wrong = r.unchecked_cast::<String>();
    match s.get(&wrong).await {
        Err(ObjectError::WrongType {
            expected, actual, ..
        }) => {
            assert!(expected.contains("String"));
            assert_eq!(actual, "u32");
        }
        other => panic!("expected WrongType, got {other:?}"),
    }
}

#[tokio::test]
async fn pending_objects_complete_fail_or_time_out() {
    let s = store();
    let (r, done) = s.pending::<u64>();
    assert!(s.try_get(&r).is_none());
    let err = s
        .get_timeout(&r, Some(Duration::from_millis(20)))
        .await
        .unwrap_err();
    assert!(matches!(err, ObjectError::Timeout { .. }), "{err}");
    let reader = {
        let s = s.clone();
        let r = r.clone();
        tokio::spawn(async move { s.get(&r).await })
    };
    done.complete(42).unwrap();
    assert_eq!(*reader.await.unwrap().unwrap(), 42);

    let (r, done) = s.pending::<u64>();
    done.fail(crate::Cause::new(std::io::Error::other("task exploded")));
    let err = s.get(&r).await.unwrap_err();
    assert!(err.to_string().contains("task exploded"), "{err}");

    let (r, done) = s.pending::<u64>();
    drop(done);
    let err = s.get(&r).await.unwrap_err();
    assert!(matches!(err, ObjectError::ProducerDropped(_)), "{err}");
}

#[tokio::test]
async fn wait_returns_ready_and_not_ready_in_order() {
    let s = store();
    let mut refs = Vec::new();
    let mut completers = Vec::new();
    for _ in 0..5 {
        let (r, c) = s.pending::<u32>();
        refs.push(r);
        completers.push(Some(c));
    }
    completers[3].take().unwrap().complete(3).unwrap();
    completers[1].take().unwrap().complete(1).unwrap();
    let ids: Vec<_> = refs.iter().map(|r| r.id()).collect();
    let (ready, not_ready) = s.wait(refs.clone(), 2, None).await;
    assert_eq!(
        ready.iter().map(|r| r.id()).collect::<Vec<_>>(),
        [ids[1], ids[3]]
    );
    assert_eq!(
        not_ready.iter().map(|r| r.id()).collect::<Vec<_>>(),
        [ids[0], ids[2], ids[4]]
    );

    let (ready, not_ready) = s
        .wait(refs.clone(), 5, Some(Duration::from_millis(20)))
        .await;
    assert_eq!((ready.len(), not_ready.len()), (2, 3));

    let waiter = {
        let s = s.clone();
        let refs = refs.clone();
        tokio::spawn(async move { s.wait(refs, 3, None).await })
    };
    completers[4].take().unwrap().complete(4).unwrap();
    let (ready, _) = waiter.await.unwrap();
    assert_eq!(ready.len(), 3);
}

#[tokio::test]
async fn freed_objects_say_so() {
    let s = store();
    let r = s.put(1u8).await.unwrap();
    s.free(std::slice::from_ref(&r));
    assert!(matches!(s.get(&r).await, Err(ObjectError::Freed(_))));
    assert_eq!(s.in_memory_bytes(), 0);
}

#[tokio::test]
async fn an_object_larger_than_the_budget_is_refused() {
    let s = small_store(1000, &temp_dir("large"));
    let err = s.put(vec![0u8; 2000]).await.unwrap_err();
    assert!(
        matches!(err, ObjectError::TooLarge { budget: 1000, .. }),
        "{err}"
    );
    assert!(err.to_string().contains("memory_budget"));
    assert_eq!(s.len(), 0);
    let (r, done) = s.pending::<Vec<u8>>();
    assert!(done.complete(vec![0u8; 2000]).is_err());
    assert!(matches!(s.get(&r).await, Err(ObjectError::TooLarge { .. })));
}

#[derive(serde::Serialize, serde::Deserialize, GetSize, PartialEq, Debug)]
struct Sample {
    name: String,
    values: Vec<f32>,
    flags: Vec<bool>,
}

#[tokio::test]
async fn spilled_objects_come_back_identical() {
    let dir = temp_dir("spill");
    let s = small_store(128 * 1024, &dir);
    let mut refs = Vec::new();
    for i in 0..20u32 {
        let bytes: Vec<u8> = (0..4096u32)
            .map(|b| (b.wrapping_mul(31) ^ i) as u8)
            .collect();
        refs.push((s.put(bytes.clone()).await.unwrap(), bytes));
    }
    let sample = Sample {
        name: "nested".into(),
        values: (0..100).map(|v| v as f32 * 0.5).collect(),
        flags: vec![true, false, true],
    };
    let sample_ref = s.put(sample_clone(&sample)).await.unwrap();
    assert!(s.over_threshold());
    let report = s.spill().unwrap();
    assert!(report.objects > 0, "{report:?}");
    assert!(!s.over_threshold());
    let files = std::fs::read_dir(&dir).unwrap().count();
    assert_eq!(files as u64, report.objects);
    assert_eq!(
        s.spilled(),
        (report.bytes, report.objects),
        "what is on disk"
    );
    // The oldest went first.
    let oldest = s
        .spill_file(refs[0].0.id())
        .expect("the oldest was spilled");
    assert!(oldest.starts_with(&dir) && oldest.exists());

    for (r, bytes) in &refs {
        assert_eq!(&*s.get(r).await.unwrap(), bytes);
    }
    assert_eq!(*s.get(&sample_ref).await.unwrap(), sample);
    // Restored objects left the disk; dropping refs frees the rest.
    assert_eq!(s.spilled(), (0, 0), "every object was read back");
    let again = s.spill().unwrap();
    assert_eq!(s.spilled(), (again.bytes, again.objects));
    assert!(again.objects > 0);
    drop(refs);
    drop(sample_ref);
    s.spill().unwrap();
    assert_eq!(s.len(), 0);
    assert_eq!(s.spilled(), (0, 0), "freed spilled objects count too");
    assert_eq!(std::fs::read_dir(&dir).map(|d| d.count()).unwrap_or(0), 0);
    let _ = std::fs::remove_dir_all(&dir);
}

fn sample_clone(s: &Sample) -> Sample {
    Sample {
        name: s.name.clone(),
        values: s.values.clone(),
        flags: s.flags.clone(),
    }
}

#[tokio::test]
async fn a_spill_that_cannot_write_loses_nothing() {
    // A spill directory below a regular file can never be created.
    let blocker = temp_dir("blocker");
    std::fs::write(&blocker, b"not a directory").unwrap();
    let s = small_store(10_000, &blocker.join("spill"));
    let refs: Vec<_> = (0..10u8)
        .map(|i| s.try_put(vec![i; 900]).unwrap())
        .collect();
    let err = s.spill().unwrap_err();
    assert!(
        matches!(
            err,
            ObjectError::Spill {
                op: crate::SpillOp::Spilling,
                ..
            }
        ),
        "{err}"
    );
    assert!(err.to_string().contains("unchanged"));
    for (i, r) in refs.iter().enumerate() {
        assert_eq!(*s.get(r).await.unwrap(), vec![i as u8; 900]);
    }
    let _ = std::fs::remove_file(&blocker);
}

#[tokio::test]
async fn ten_thousand_refs_in_one_get() {
    let s = store();
    let refs: Vec<_> = (0..10_000u32).map(|i| s.try_put(i).unwrap()).collect();
    let values = s
        .get_many(&refs, Some(Duration::from_secs(10)))
        .await
        .unwrap();
    assert!(values.iter().enumerate().all(|(i, v)| **v == i as u32));
}

#[tokio::test]
async fn a_value_holding_refs_keeps_their_objects_alive() {
    let s = store();
    let inner: Vec<_> = (0..100u64).map(|i| s.try_put(i).unwrap()).collect();
    let holder = s.put(inner.clone()).await.unwrap();
    drop(inner);
    assert_eq!(s.len(), 101);
    let refs = s.get(&holder).await.unwrap();
    for (i, r) in refs.iter().enumerate() {
        assert_eq!(*s.get(r).await.unwrap(), i as u64);
    }
    drop(refs);
    drop(holder);
    assert_eq!(s.len(), 0, "the holder took its refs with it");
}

#[tokio::test]
async fn values_holding_refs_are_never_spilled() {
    let dir = temp_dir("pinned");
    let s = small_store(32 * 1024, &dir);
    let inner: Vec<_> = (0..10u64).map(|i| s.try_put(i).unwrap()).collect();
    let holder = s.put(inner.clone()).await.unwrap();
    drop(inner);
    let filler: Vec<_> = (0..10u8)
        .map(|i| s.try_put(vec![i; 2000]).unwrap())
        .collect();
    s.spill().unwrap();
    // The plain blobs went to disk; the holder stayed, so its refs still work.
    assert!(s.spill_file(holder.id()).is_none());
    let refs = s.get(&holder).await.unwrap();
    assert_eq!(*s.get(&refs[7]).await.unwrap(), 7);
    assert_eq!(*s.get(&filler[0]).await.unwrap(), vec![0u8; 2000]);
    drop((refs, holder, filler));
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn a_decoded_ref_shares_the_live_handle() {
    let s = store();
    let r = s.put(String::from("shared")).await.unwrap();
    let bytes = postcard::to_allocvec(&r).unwrap();
    let decoded = s.decode::<crate::ObjectRef<String>>(&bytes).unwrap();
    assert_eq!(decoded.id(), r.id());
    drop(r);
    // The decoded ref keeps it alive: it is the same handle.
    assert_eq!(*s.get(&decoded).await.unwrap(), "shared");
    drop(decoded);
    assert_eq!(s.len(), 0);
    // Decoding a ref to a gone object gives a ref that says so.
    let gone = s.decode::<crate::ObjectRef<String>>(&bytes).unwrap();
    assert!(matches!(s.get(&gone).await, Err(ObjectError::Freed(_))));
}

#[test]
fn a_ref_cannot_be_decoded_outside_a_store() {
    let s = ObjectStore::new(StoreConfig::default());
    let r = s.try_put(1u8).unwrap();
    let bytes = postcard::to_allocvec(&r).unwrap();
    // An error, not a panic (postcard reports custom errors generically).
    assert!(postcard::from_bytes::<crate::ObjectRef<u8>>(&bytes).is_err());
}

#[tokio::test]
async fn an_id_never_seen_is_unknown_and_never_ready() {
    let s = store();
    let other = store();
    let foreign = other.try_put(7u32).unwrap();
    let bytes = postcard::to_allocvec(&foreign).unwrap();
    // Decoded here with no directory: this node never saw it.
    let r = s.decode::<crate::ObjectRef<u32>>(&bytes).unwrap();
    assert!(matches!(s.get(&r).await, Err(ObjectError::Unknown(_))));
    let (ready, not_ready) = s
        .wait(vec![r.clone()], 1, Some(Duration::from_millis(20)))
        .await;
    assert!(ready.is_empty(), "an unknown object is never ready");
    assert_eq!(not_ready.len(), 1);
    // One made here and dropped is freed, and wait says so at once.
    let mine = s.try_put(1u8).unwrap();
    let mine_bytes = postcard::to_allocvec(&mine).unwrap();
    drop(mine);
    let gone = s.decode::<crate::ObjectRef<u8>>(&mine_bytes).unwrap();
    assert!(matches!(s.get(&gone).await, Err(ObjectError::Freed(_))));
    let (ready, _) = s.wait(vec![gone], 1, None).await;
    assert_eq!(ready.len(), 1);
}

#[tokio::test]
async fn put_waits_for_the_spiller_and_try_put_refuses() {
    let dir = temp_dir("backpressure");
    let s = small_store(64 * 1024, &dir);
    // No spiller attached: a put that does not fit fails at once.
    let first = s.try_put(vec![1u8; 40 * 1024]).unwrap();
    let err = s.put(vec![2u8; 40 * 1024]).await.unwrap_err();
    assert!(matches!(err, ObjectError::StoreFull { .. }), "{err}");
    assert!(err.to_string().contains("try_put does not"), "{err}");
    // A spiller that runs when asked: the put waits, then fits.
    let guard = s.attach_spiller();
    let spiller = {
        let s = s.clone();
        tokio::spawn(async move {
            loop {
                s.spill_wanted().await;
                let s = s.clone();
                tokio::task::spawn_blocking(move || s.spill())
                    .await
                    .unwrap()
                    .unwrap();
            }
        })
    };
    assert!(matches!(
        s.try_put(vec![3u8; 40 * 1024]),
        Err(ObjectError::StoreFull { .. })
    ));
    let second = s.put(vec![4u8; 40 * 1024]).await.unwrap();
    assert!(s.in_memory_bytes() <= 64 * 1024, "the budget held");
    assert_eq!(*s.get(&first).await.unwrap(), vec![1u8; 40 * 1024]);
    assert_eq!(*s.get(&second).await.unwrap(), vec![4u8; 40 * 1024]);
    spiller.abort();
    drop(guard);
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn a_put_that_nothing_can_make_room_for_fails_instead_of_hanging() {
    let s = small_store(32 * 1024, &temp_dir("stuck"));
    let _guard = s.attach_spiller();
    // Values holding refs are pinned: nothing can be spilled.
    let inner: Vec<_> = (0..10u64).map(|i| s.try_put(i).unwrap()).collect();
    let holders: Vec<_> = (0..3)
        .map(|_| {
            let mut v = inner.clone();
            v.extend((0..100).map(|_| inner[0].clone()));
            s.try_put(v).unwrap()
        })
        .collect();
    let big = s.try_put(vec![0u8; 20 * 1024]);
    let spiller = {
        let s = s.clone();
        tokio::spawn(async move {
            loop {
                s.spill_wanted().await;
                let s = s.clone();
                let _ = tokio::task::spawn_blocking(move || s.spill()).await;
            }
        })
    };
    drop(big);
    // 20 KiB cannot fit next to 24 KiB that cannot move.
    let filler = s.try_put(vec![0u8; 8 * 1024]).unwrap();
    let err = tokio::time::timeout(Duration::from_secs(10), s.put(vec![0u8; 20 * 1024]))
        .await
        .expect("a put with no way to make room fails, it does not hang");
    // The filler is spillable, so it may fit after all; either way no hang.
    match err {
        Ok(_) => {}
        Err(e) => assert!(matches!(e, ObjectError::StoreFull { .. }), "{e}"),
    }
    spiller.abort();
    drop((holders, filler));
}

#[tokio::test]
async fn byte_objects_reuse_store_buffers_and_spill_raw() {
    let dir = temp_dir("blobs");
    let s = small_store(32 << 20, &dir);
    let data: Vec<u8> = (0..(8 << 20)).map(|i| (i % 251) as u8).collect();
    let first = s.put_bytes(&data).await.unwrap();
    let ptr = s.get(&first).await.unwrap().as_ptr();
    drop(first);
    assert!(s.pooled_bytes() >= 8 << 20, "the buffer was kept");
    let second = s.put_bytes(&data).await.unwrap();
    let blob = s.get(&second).await.unwrap();
    assert_eq!(blob.as_ptr(), ptr, "and handed out again");
    assert_eq!(&blob[..], &data[..]);
    drop(blob);
    // Spilled as raw bytes: the file is exactly the data.
    let _third = s.put_bytes(&data).await.unwrap();
    let _fourth = s.put_bytes(&data).await.unwrap();
    s.spill().unwrap();
    let file = s.spill_file(second.id()).expect("spilled");
    assert_eq!(std::fs::metadata(&file).unwrap().len(), data.len() as u64);
    assert_eq!(&s.get(&second).await.unwrap()[..], &data[..]);
    drop(second);
    let _ = std::fs::remove_dir_all(&dir);
}

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
