use std::sync::Arc;
use std::time::Duration;

use crate::{GetSize, ObjectError, ObjectStore, StoreConfig};

fn store() -> ObjectStore {
    ObjectStore::new(StoreConfig::default())
}

fn small_store(budget: u64, dir: &std::path::Path) -> ObjectStore {
    ObjectStore::new(StoreConfig {
        memory_budget: budget,
        spill_threshold: 0.5,
        spill_dir: dir.to_path_buf(),
    })
}

fn temp_dir(name: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("troupe-test-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    dir
}

#[tokio::test]
async fn reads_share_the_value_without_copying() {
    let s = store();
    let r = s.put(vec![7u8; 1 << 20]).unwrap();
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
    let r = s.put(String::from("hello")).unwrap();
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
    let r = s.put(vec![1u64, 2, 3]).unwrap();
    let v = s.get(&r).await.unwrap();
    drop(r);
    assert_eq!(*v, vec![1, 2, 3]);
}

#[tokio::test]
async fn wrong_type_is_a_typed_error() {
    let s = store();
    let r = s.put(5u32).unwrap();
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
    done.fail(Arc::new(std::io::Error::other("task exploded")));
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
    let r = s.put(1u8).unwrap();
    s.free(std::slice::from_ref(&r));
    assert!(matches!(s.get(&r).await, Err(ObjectError::Freed(_))));
    assert_eq!(s.in_memory_bytes(), 0);
}

#[tokio::test]
async fn an_object_larger_than_the_budget_is_refused() {
    let s = small_store(1000, &temp_dir("large"));
    let err = s.put(vec![0u8; 2000]).unwrap_err();
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
    let s = small_store(64 * 1024, &dir);
    let mut refs = Vec::new();
    for i in 0..20u32 {
        let bytes: Vec<u8> = (0..4096u32)
            .map(|b| (b.wrapping_mul(31) ^ i) as u8)
            .collect();
        refs.push((s.put(bytes.clone()).unwrap(), bytes));
    }
    let sample = Sample {
        name: "nested".into(),
        values: (0..100).map(|v| v as f32 * 0.5).collect(),
        flags: vec![true, false, true],
    };
    let sample_ref = s.put(sample_clone(&sample)).unwrap();
    assert!(s.over_threshold());
    let report = s.spill().unwrap();
    assert!(report.objects > 0, "{report:?}");
    assert!(!s.over_threshold());
    let files = std::fs::read_dir(&dir).unwrap().count();
    assert_eq!(files, report.objects);
    // The oldest went first.
    assert!(dir.join(format!("{}.obj", refs[0].0.id())).exists());

    for (r, bytes) in &refs {
        assert_eq!(&*s.get(r).await.unwrap(), bytes);
    }
    assert_eq!(*s.get(&sample_ref).await.unwrap(), sample);
    // Restored objects left the disk; dropping refs frees the rest.
    drop(refs);
    drop(sample_ref);
    s.spill().unwrap();
    assert_eq!(s.len(), 0);
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
    let refs: Vec<_> = (0..10u8).map(|i| s.put(vec![i; 900]).unwrap()).collect();
    let err = s.spill().unwrap_err();
    assert!(
        matches!(err, ObjectError::Spill { op: "spilling", .. }),
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
    let refs: Vec<_> = (0..10_000u32).map(|i| s.put(i).unwrap()).collect();
    let values = s
        .get_many(&refs, Some(Duration::from_secs(10)))
        .await
        .unwrap();
    assert!(values.iter().enumerate().all(|(i, v)| **v == i as u32));
}

#[tokio::test]
async fn a_value_holding_refs_keeps_their_objects_alive() {
    let s = store();
    let inner: Vec<_> = (0..100u64).map(|i| s.put(i).unwrap()).collect();
    let holder = s.put(inner.clone()).unwrap();
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
    let s = small_store(16 * 1024, &dir);
    let inner: Vec<_> = (0..10u64).map(|i| s.put(i).unwrap()).collect();
    let holder = s.put(inner.clone()).unwrap();
    drop(inner);
    let filler: Vec<_> = (0..10u8).map(|i| s.put(vec![i; 2000]).unwrap()).collect();
    s.spill().unwrap();
    // The plain blobs went to disk; the holder stayed, so its refs still work.
    assert!(!dir.join(format!("{}.obj", holder.id())).exists());
    let refs = s.get(&holder).await.unwrap();
    assert_eq!(*s.get(&refs[7]).await.unwrap(), 7);
    assert_eq!(*s.get(&filler[0]).await.unwrap(), vec![0u8; 2000]);
    drop((refs, holder, filler));
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn a_decoded_ref_shares_the_live_handle() {
    let s = store();
    let r = s.put(String::from("shared")).unwrap();
    let bytes = postcard::to_allocvec(&r).unwrap();
    let decoded = s.decode_ref_for_test::<String>(&bytes).unwrap();
    assert_eq!(decoded.id(), r.id());
    drop(r);
    // The decoded ref keeps it alive: it is the same handle.
    assert_eq!(*s.get(&decoded).await.unwrap(), "shared");
    drop(decoded);
    assert_eq!(s.len(), 0);
    // Decoding a ref to a gone object gives a ref that says so.
    let gone = s.decode_ref_for_test::<String>(&bytes).unwrap();
    assert!(matches!(s.get(&gone).await, Err(ObjectError::Freed(_))));
}

#[test]
fn a_ref_cannot_be_decoded_outside_a_store() {
    let s = ObjectStore::new(StoreConfig::default());
    let r = s.put(1u8).unwrap();
    let bytes = postcard::to_allocvec(&r).unwrap();
    // An error, not a panic (postcard reports custom errors generically).
    assert!(postcard::from_bytes::<crate::ObjectRef<u8>>(&bytes).is_err());
}
