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

pub(crate) mod across_nodes;
