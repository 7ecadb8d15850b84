//! Replicas of a task's result: kept for its owner on another node, read
//! from there once the node that made it dies, freed with the owner's last
//! ref or with the owner. Real stores on every side (`Peers` stands in for
//! the cluster's transport).

use std::sync::Arc;

use crate::tests::across_nodes::Peers;
use crate::tests::store;
use crate::{Fetched, ObjectError, ObjectRef, ObjectStore};

/// `value` made on `maker` under an id `owner` minted, kept there for the
/// owner (as a node that ran the owner's task keeps its large result),
/// with a replica on each of `replicas`; the owner's ref, pointing at all.
async fn made_elsewhere(
    owner: &ObjectStore,
    maker: &ObjectStore,
    replicas: &[&ObjectStore],
    value: Vec<u8>,
) -> ObjectRef<Vec<u8>> {
    let (r, completer) = owner.pending::<Vec<u8>>();
    let (made, done) = maker.pending_at::<Vec<u8>>(r.id()).unwrap();
    done.complete(value).unwrap();
    maker.add_borrower(r.id(), owner.node()).unwrap();
    drop(made);
    let mut keepers = vec![maker.node()];
    for replica in replicas {
        let (bytes, _) = maker.export(r.id()).await.unwrap();
        let fetched = Fetched {
            bytes,
            refs: Vec::new(),
        };
        replica
            .keep_copy::<Vec<u8>>(r.id(), owner.node(), fetched)
            .await
            .unwrap();
        keepers.push(replica.node());
    }
    completer.relocate(&keepers);
    r
}

#[tokio::test]
async fn a_result_with_a_replica_is_read_from_it_once_its_maker_dies_and_freed_with_its_ref() {
    let (owner, maker, replica) = (store(), store(), store());
    let peers = Arc::new(Peers::new(vec![maker.clone(), replica.clone()]));
    assert!(owner.set_directory(peers.clone()));
    let r = made_elsewhere(&owner, &maker, &[&replica], vec![1, 2, 3]).await;
    assert_eq!(owner.location(r.id()), Some(Some(maker.node())));
    assert_eq!(replica.borrowers(r.id()), vec![owner.node()]);

    // A node that knows the object already keeps no second copy.
    let (bytes, _) = maker.export(r.id()).await.unwrap();
    let again = Fetched {
        bytes,
        refs: Vec::new(),
    };
    match replica
        .keep_copy::<Vec<u8>>(r.id(), owner.node(), again)
        .await
    {
        Err(ObjectError::Fetch { reason, .. }) => assert!(reason.contains("already"), "{reason}"),
        other => panic!("expected a refusal, got {other:?}"),
    }

    let lost = owner.node_died(maker.node());
    assert!(lost.is_empty(), "not lost while a replica lives: {lost:?}");
    assert_eq!(owner.location(r.id()), Some(Some(replica.node())));
    assert_eq!(*owner.get(&r).await.unwrap(), vec![1, 2, 3]);

    let id = r.id();
    drop(r);
    let released = peers.released.lock().unwrap().clone();
    assert_eq!(
        released,
        vec![(id, replica.node(), 1)],
        "released where it is kept, not on the dead node"
    );
    replica.remove_borrower(id, owner.node(), 1);
    assert!(replica.is_empty(), "the replica is freed once released");
}

#[tokio::test]
async fn a_result_whose_every_keeper_died_is_lost_and_a_replica_goes_with_its_owner() {
    let (owner, maker, replica) = (store(), store(), store());
    assert!(owner.set_directory(Arc::new(Peers::new(vec![maker.clone(), replica.clone()]))));
    let r = made_elsewhere(&owner, &maker, &[&replica], vec![9; 64]).await;

    // The replica's node dies first: reads stay with the maker.
    assert!(owner.node_died(replica.node()).is_empty());
    assert_eq!(owner.location(r.id()), Some(Some(maker.node())));
    // Then the maker: nothing is left to read from.
    assert_eq!(owner.node_died(maker.node()), vec![r.id()]);
    match owner.get(&r).await {
        Err(ObjectError::Lost { node, .. }) => assert_eq!(node, maker.node()),
        other => panic!("expected Lost, got {other:?}"),
    }

    // On the replica's side: its owner's death frees it.
    let id = r.id();
    assert!(!replica.is_empty());
    assert!(replica.node_died(owner.node()).is_empty());
    assert!(replica.is_empty(), "freed with its owner");
    assert!(maker.node_died(owner.node()).is_empty());
    assert!(maker.is_empty(), "{id}: the maker's copy too");
}
